//! Hostile input (issue 6 part 3): a corpus of raw requests, each built to make a naive proxy
//! decide on one thing while Console runs another, sent to the real gateway (production
//! routes.toml) in front of real gunicorn + Flask (tests/console_standin/app.py: one view per
//! rule of routes.toml, each logging that it ran).
//!
//! The session holds only `console-user`. THE INVARIANT: no request of the corpus, however
//! mangled, pipelined, smuggled or slowly sent, runs a view whose rule needs something else.
//! Also: identity headers seen by Console are the gateway's (never a client's), every view that
//! ran was decided by the gateway (it carries the gateway's X-Request-Id), SCRIPT_NAME stays
//! empty, and the rule that ran is the one the gateway matched for the same target.
//!
//! The record of "which views ran" is the stand-in's own log (VIEW_LOG), not only the answers
//! the client got: a smuggled request's answer may never reach the client.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rbac_gateway::policy::mapping::{Access, Mapping};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::*;

// ---------------------------------------------------------------------------------------------
// gunicorn + the Console stand-in

struct Console {
    child: Child,
    addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl Console {
    async fn start(routes: &Path) -> Console {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let log = std::fs::File::create(dir.path().join("gunicorn.log")).unwrap();
        let child = Command::new(tool("python3"))
            .args(["-m", "gunicorn"])
            .arg("-b")
            .arg(addr.to_string())
            .args(["-w", "1"])
            // Threads and keep-alive: the gateway's pooled upstream connections carry several
            // requests, so a request smuggled past the gateway would really be run.
            .args(["-k", "gthread", "--threads", "4", "--keep-alive", "5"])
            .arg("--chdir")
            .arg(root().join("tests/console_standin"))
            .arg("--access-logfile")
            .arg(dir.path().join("access.log"))
            .args([
                "--access-logformat",
                "%(m)s %(U)s?%(q)s %(s)s rid=%({x-request-id}i)s",
            ])
            .args(["--log-level", "warning"])
            .arg("app:app")
            .env("ROUTES_FILE", routes)
            .env("VIEW_LOG", dir.path().join("views.jsonl"))
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("python3 -m gunicorn (scripts/setup.sh --tests installs flask and gunicorn in .venv/)");
        let console = Console { child, addr, dir };
        eventually_explained(
            Duration::from_secs(30),
            "gunicorn did not answer",
            || async {
                let req = b"GET /health HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n";
                send(addr, req).await.is_ok_and(|r| r.status == 200)
            },
            || async { format!("; log:\n{}", console.log()) },
        )
        .await;
        std::fs::write(console.views_file(), b"").unwrap();
        console
    }

    fn views_file(&self) -> PathBuf {
        self.dir.path().join("views.jsonl")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("gunicorn.log")).unwrap_or_default()
    }

    fn access_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("access.log")).unwrap_or_default()
    }

    /// Views run since byte `from` of the view log; returns them and the new offset.
    fn views_since(&self, from: usize) -> (Vec<serde_json::Value>, usize) {
        let text = std::fs::read_to_string(self.views_file()).unwrap_or_default();
        // Only whole lines: a view may be writing right now.
        let end = text[from..]
            .rfind('\n')
            .map(|e| from + e + 1)
            .unwrap_or(from);
        let views = text[from..end]
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("view log line {l:?}: {e}")))
            .collect();
        (views, end)
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        // SIGTERM lets the gunicorn master take its worker down with it.
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        if exited_within_blocking(&mut self.child, Duration::from_secs(5)) {
            return;
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------------
// The corpus

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum How {
    /// All bytes in one write.
    Once,
    /// One byte per write with a short sleep in between (a slow client).
    Slow,
    /// The first n bytes, then (after the gateway had time to answer them) the rest, on the
    /// same connection.
    Split(usize),
}

/// What a corpus entry must do beyond the invariant (which every entry must hold).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// Only the invariant.
    Any,
    /// No view runs at all (the request is refused, denied, or not routable by Werkzeug).
    NoView,
    /// Exactly the view of this rule (routes.toml `path`) runs, and the first answer is 200.
    View(&'static str),
}

struct Case {
    what: String,
    bytes: Vec<u8>,
    how: How,
    expect: Expect,
}

/// A forbidden request smuggled inside another request's body.
fn inner(cookie: &str, line: &str) -> String {
    format!("{line}\r\nHost: console.test\r\n{cookie}X-Request-Id: smuggled\r\nConnection: close\r\n\r\n")
}

fn corpus(token: &str) -> Vec<Case> {
    let cookie = format!("Cookie: console_session={token}\r\n");
    let c = cookie.as_str();
    let mut v: Vec<Case> = Vec::new();
    let mut add = |what: &str, bytes: Vec<u8>, how: How, expect: Expect| {
        v.push(Case {
            what: what.to_string(),
            bytes,
            how,
            expect,
        })
    };
    // A request line plus the usual headers (session cookie, Connection: close).
    let req = |line: &str, extra: &str| -> Vec<u8> {
        format!("{line}\r\nHost: console.test\r\n{c}{extra}Connection: close\r\n\r\n").into_bytes()
    };
    let get = |path: &str| req(&format!("GET {path} HTTP/1.1"), "");

    // --- Controls: the harness sees views run, and denials happen --------------------------
    add(
        "control: allowed view",
        get("/dashboard"),
        How::Once,
        Expect::View("/dashboard"),
    );
    add(
        "control: allowed view 2",
        get("/dashboard/_activity"),
        How::Once,
        Expect::View("/dashboard/_activity"),
    );
    add(
        "reader API: answered by the gateway, never Console's view",
        get("/api/rbac/me"),
        How::Once,
        Expect::NoView,
    );
    add(
        "control: public view without session",
        b"GET /health HTTP/1.1\r\nHost: console.test\r\nConnection: close\r\n\r\n".to_vec(),
        How::Once,
        Expect::View("/health"),
    );
    add(
        "control: forbidden view is denied",
        get("/ops"),
        How::Once,
        Expect::NoView,
    );
    add(
        "control: forbidden secrets",
        get("/secrets"),
        How::Once,
        Expect::NoView,
    );
    add(
        "control: allowed POST",
        req(
            "POST /dashboard/status/7/config HTTP/1.1",
            "Content-Length: 3\r\n",
        )
        .into_iter()
        .chain(b"a=b".iter().copied())
        .collect(),
        How::Once,
        Expect::View("/dashboard/status/<surface_id>/config"),
    );

    // --- Path confusion ------------------------------------------------------------------
    let paths: &[(&str, &str, Expect)] = &[
        (
            "encoded slash (upper)",
            "/dashboard%2F..%2Fops",
            Expect::NoView,
        ),
        (
            "encoded slash (lower)",
            "/dashboard%2f..%2fops",
            Expect::NoView,
        ),
        (
            "dot-dot then encoded slash",
            "/dashboard/..%2Fops",
            Expect::NoView,
        ),
        (
            "encoded slash into a variable",
            "/api/status/sites/1%2F..%2F..%2F..%2Fsecrets",
            Expect::NoView,
        ),
        (
            "encoded slash inside a surface id",
            "/surfaces/x%2F..%2F..%2Fops/p5",
            Expect::NoView,
        ),
        ("encoded backslash", "/dashboard%5C..%5Cops", Expect::NoView),
        (
            "encoded backslash (lower)",
            "/dashboard%5c..%5cops",
            Expect::NoView,
        ),
        (
            "raw backslash dot-dot",
            "/dashboard\\..\\ops",
            Expect::NoView,
        ),
        (
            "raw backslash after dot-dot",
            "/dashboard/..\\ops",
            Expect::NoView,
        ),
        ("raw dot-dot", "/dashboard/../ops", Expect::NoView),
        (
            "raw dot then dot-dot",
            "/dashboard/./../ops",
            Expect::NoView,
        ),
        ("single dot segment", "/./ops", Expect::NoView),
        ("trailing dot segment", "/ops/.", Expect::NoView),
        (
            "encoded dot-dot (lower)",
            "/dashboard/%2e%2e/ops",
            Expect::NoView,
        ),
        (
            "encoded dot-dot (upper)",
            "/dashboard/%2E%2E/ops",
            Expect::NoView,
        ),
        (
            "half-encoded dot-dot",
            "/dashboard/.%2e/ops",
            Expect::NoView,
        ),
        ("encoded single dot", "/%2e/ops", Expect::NoView),
        (
            "double-encoded dot-dot",
            "/dashboard/%252e%252e/ops",
            Expect::NoView,
        ),
        (
            "double-encoded slash",
            "/dashboard%252F..%252Fops",
            Expect::NoView,
        ),
        (
            "dot-dot under a public prefix",
            "/static/../ops",
            Expect::NoView,
        ),
        (
            "encoded dot-dot under a public prefix",
            "/static/%2e%2e/%2e%2e/ops",
            Expect::NoView,
        ),
        (
            "encoded slash under a public path converter",
            "/static/..%2F..%2Fops",
            Expect::NoView,
        ),
        (
            "dot-dot under the webauthn public prefix",
            "/auth/webauthn/../../ops",
            Expect::NoView,
        ),
        (
            "dot-dot under a machine prefix",
            "/internal/api/../../ops",
            Expect::NoView,
        ),
        (
            "encoded dot-dot under a machine prefix",
            "/internal/api/%2e%2e/%2e%2e/secrets",
            Expect::NoView,
        ),
        (
            "dot-dot past a customer id",
            "/console/customers/1/../../../ops",
            Expect::NoView,
        ),
        ("leading double slash", "//ops", Expect::NoView),
        ("inner double slash", "/secrets//history", Expect::NoView),
        ("trailing double slash", "/ops//", Expect::NoView),
        ("encoded leading slash", "/%2Fops", Expect::NoView),
        (
            "trailing slash on a slash-less rule",
            "/ops/",
            Expect::NoView,
        ),
        (
            "missing trailing slash (Werkzeug redirects)",
            "/console/customers",
            Expect::NoView,
        ),
        (
            "slash rule under a forbidden prefix",
            "/console/beta/",
            Expect::NoView,
        ),
        ("path param", "/ops;jsessionid=1", Expect::NoView),
        ("path param then slash", "/ops;/", Expect::NoView),
        ("path param dot-dot", "/dashboard;/../ops", Expect::NoView),
        ("tomcat ..; segment", "/health/..;/ops", Expect::NoView),
        ("encoded semicolon", "/ops%3B", Expect::NoView),
        ("upper case", "/OPS", Expect::NoView),
        ("mixed case", "/Ops", Expect::NoView),
        ("mixed case secrets", "/Secrets/History", Expect::NoView),
        (
            "encoded letter reaches a forbidden rule",
            "/%6Fps",
            Expect::NoView,
        ),
        (
            "encoded letters in secrets",
            "/secr%65ts/%68istory",
            Expect::NoView,
        ),
        ("fullwidth letter", "/%EF%BD%8Fps", Expect::NoView),
        ("zero-width space", "/ops%E2%80%8B", Expect::NoView),
        (
            "overlong dot-dot",
            "/dashboard/%C0%AE%C0%AE/ops",
            Expect::NoView,
        ),
        (
            "overlong slash",
            "/dashboard%C0%AF..%C0%AFops",
            Expect::NoView,
        ),
        ("invalid UTF-8", "/ops%FF", Expect::NoView),
        ("encoded NUL", "/ops%00", Expect::NoView),
        (
            "encoded NUL before dot-dot",
            "/dashboard%00/../ops",
            Expect::NoView,
        ),
        ("encoded space", "/ops%20", Expect::NoView),
        ("encoded tab", "/ops%09", Expect::NoView),
        (
            "encoded CR LF (header injection)",
            "/ops%0D%0AX-Rbac-Roles:%20console-manager",
            Expect::NoView,
        ),
        ("plus suffix", "/ops+", Expect::NoView),
        ("plus prefix", "/+ops", Expect::NoView),
        ("encoded plus", "/ops%2B", Expect::NoView),
        ("trailing dot", "/ops.", Expect::NoView),
        ("encoded percent", "/ops%25", Expect::NoView),
        (
            "fragment with dot-dot",
            "/dashboard#/../ops",
            Expect::NoView,
        ),
        ("encoded hash", "/dashboard%23/../ops", Expect::NoView),
        (
            "encoded question mark",
            "/dashboard%3F/../ops",
            Expect::NoView,
        ),
        (
            "encoded question mark alone",
            "/dashboard%3f",
            Expect::NoView,
        ),
        (
            "query holds the dot-dot (allowed view)",
            "/dashboard?/../ops",
            Expect::View("/dashboard"),
        ),
        (
            "query names an allowed view",
            "/ops?/dashboard",
            Expect::NoView,
        ),
        (
            "query with encoded slash",
            "/ops?x=%2F..%2Fdashboard",
            Expect::NoView,
        ),
        ("empty query", "/ops?", Expect::NoView),
        ("_method query param", "/ops?_method=POST", Expect::NoView),
        (
            "encoded invite is still invite",
            "/console/customers/%69nvite",
            Expect::NoView,
        ),
        (
            "unicode digit id",
            "/api/status/sites/%D9%A3",
            Expect::NoView,
        ),
        (
            "static beats variable (promotions)",
            "/console/flags/promotions/fragment",
            Expect::NoView,
        ),
        (
            "raw double quote in an allowed variable",
            "/api/status/sites/a\"b",
            Expect::Any,
        ),
        (
            "raw angle brackets under a public prefix",
            "/static/<ops>",
            Expect::Any,
        ),
        (
            "raw braces, pipe, caret, backtick",
            "/api/status/sites/{a}|^`",
            Expect::Any,
        ),
        (
            "raw double quote on a forbidden rule",
            "/ops\"",
            Expect::NoView,
        ),
        ("raw space in the path", "/ops /dashboard", Expect::NoView),
        ("raw DEL byte", "/ops\x7f", Expect::NoView),
        ("raw UTF-8 bytes", "/\u{f3}ps", Expect::NoView),
    ];
    for (what, path, expect) in paths {
        add(&format!("path: {what}"), get(path), How::Once, *expect);
    }
    add(
        "path: absolute-form",
        req("GET http://console.test/ops HTTP/1.1", ""),
        How::Once,
        Expect::NoView,
    );
    add(
        "path: absolute-form naming another path than it routes",
        req("GET http://console.test/dashboard/../ops HTTP/1.1", ""),
        How::Once,
        Expect::NoView,
    );
    add(
        "path: absolute-form https with an allowed path",
        req("GET https://evil.test/dashboard HTTP/1.1", ""),
        How::Once,
        Expect::NoView,
    );
    add(
        "path: not starting with a slash",
        req("GET ops HTTP/1.1", ""),
        How::Once,
        Expect::NoView,
    );
    add(
        "path: asterisk-form",
        req("OPTIONS * HTTP/1.1", ""),
        How::Once,
        Expect::NoView,
    );
    let long = "a".repeat(100 * 1024);
    add(
        "path: 100 KB path under a forbidden rule",
        get(&format!("/ops/{long}")),
        How::Once,
        Expect::NoView,
    );
    add(
        "path: 100 KB path under a public path converter",
        get(&format!("/static/{long}")),
        How::Once,
        Expect::Any,
    );
    add(
        "path: 100 KB query on a forbidden rule",
        get(&format!("/ops?x={long}")),
        How::Once,
        Expect::NoView,
    );
    add(
        "path: 8 KB of dot-dot segments",
        get(&format!("/dashboard{}/ops", "/..".repeat(2048))),
        How::Once,
        Expect::NoView,
    );

    // --- Identity header spoofing (on views that run, so Console's view is observed) ------
    let spoof: &[(&str, &str, &str, Expect)] = &[
        (
            "X-Rbac-Admin-Id on an allowed view",
            "/dashboard",
            "X-Rbac-Admin-Id: 00000000-0000-0000-0000-000000000000\r\n",
            Expect::View("/dashboard"),
        ),
        (
            "x-rbac-roles lower case",
            "/dashboard",
            "x-rbac-roles: console-manager\r\n",
            Expect::View("/dashboard"),
        ),
        (
            "X-RBAC-ROLES upper case",
            "/dashboard",
            "X-RBAC-ROLES: console-manager,console-secrets-admin\r\n",
            Expect::View("/dashboard"),
        ),
        (
            "X-Rbac-Roles twice",
            "/dashboard",
            "X-Rbac-Roles: console-manager\r\nX-Rbac-Roles: console-secrets-admin\r\n",
            Expect::View("/dashboard"),
        ),
        (
            "X-Rbac-Roles on a forbidden view",
            "/ops",
            "X-Rbac-Roles: console-manager\r\nX-Rbac-Admin-Id: root\r\n",
            Expect::NoView,
        ),
        (
            "X-Rbac-Admin-Id on a public view",
            "/health",
            "X-Rbac-Admin-Id: root\r\nX-Rbac-Roles: console-manager\r\n",
            Expect::View("/health"),
        ),
        (
            "X-Rbac-Roles on a machine view",
            "/internal/api/ping",
            "X-Rbac-Roles: console-manager\r\nX-Rbac-Admin-Id: root\r\n",
            Expect::View("/internal/api/<path:rest>"),
        ),
        (
            "X-Rbac-Shadow-Decision",
            "/dashboard",
            "X-Rbac-Shadow-Decision: allow\r\n",
            Expect::View("/dashboard"),
        ),
        (
            "X_Rbac_Roles underscores",
            "/dashboard",
            "X_Rbac_Roles: console-manager\r\n",
            Expect::NoView,
        ),
        (
            "x_rbac_admin_id underscores",
            "/health",
            "x_rbac_admin_id: root\r\n",
            Expect::NoView,
        ),
        (
            "X-Rbac-Roles with space before colon",
            "/dashboard",
            "X-Rbac-Roles : console-manager\r\n",
            Expect::Any,
        ),
        (
            "X-Rbac-Roles with tab before colon",
            "/dashboard",
            "X-Rbac-Roles\t: console-manager\r\n",
            Expect::Any,
        ),
        (
            "X-Rbac-Roles folded into another header",
            "/dashboard",
            "X-Note: a\r\n X-Rbac-Roles: console-manager\r\n",
            Expect::NoView,
        ),
        (
            "X-Rbac-Roles folded value",
            "/dashboard",
            "X-Rbac-Roles: console-user\r\n\tconsole-manager\r\n",
            Expect::NoView,
        ),
        (
            "Connection lists X-Rbac-Admin-Id",
            "/dashboard",
            "Connection: X-Rbac-Admin-Id, X-Rbac-Roles\r\n",
            Expect::Any,
        ),
        (
            "X-Forwarded-For spoof",
            "/dashboard",
            "X-Forwarded-For: 10.0.0.1\r\nX-Real-IP: 10.0.0.1\r\n",
            Expect::View("/dashboard"),
        ),
    ];
    for (what, path, extra, expect) in spoof {
        add(
            &format!("spoof: {what}"),
            req(&format!("GET {path} HTTP/1.1"), extra),
            How::Once,
            *expect,
        );
    }

    // --- Method overrides, SCRIPT_NAME and rewrite headers ---------------------------------
    let rewrite: &[(&str, &str, &str)] = &[
        (
            "X-HTTP-Method-Override",
            "POST /_alerts/dismiss-all HTTP/1.1",
            "X-HTTP-Method-Override: DELETE\r\nContent-Length: 0\r\n",
        ),
        (
            "X-HTTP-Method",
            "GET /dashboard HTTP/1.1",
            "X-HTTP-Method: POST\r\n",
        ),
        (
            "X-Method-Override",
            "GET /dashboard HTTP/1.1",
            "X-Method-Override: POST\r\n",
        ),
        (
            "SCRIPT_NAME header",
            "GET /dashboard HTTP/1.1",
            "SCRIPT_NAME: /ops\r\n",
        ),
        (
            "Script-Name header",
            "GET /status HTTP/1.1",
            "Script-Name: /ops\r\n",
        ),
        (
            "X-Script-Name header",
            "GET /dashboard HTTP/1.1",
            "X-Script-Name: /ops\r\n",
        ),
        (
            "X-Forwarded-Prefix header",
            "GET /dashboard HTTP/1.1",
            "X-Forwarded-Prefix: /ops\r\n",
        ),
        (
            "X-Original-URL header",
            "GET /dashboard HTTP/1.1",
            "X-Original-URL: /ops\r\n",
        ),
        (
            "X-Rewrite-URL header",
            "GET /dashboard HTTP/1.1",
            "X-Rewrite-URL: /ops\r\n",
        ),
        (
            "X-Original-URI header",
            "GET /dashboard HTTP/1.1",
            "X-Original-URI: /ops\r\n",
        ),
    ];
    for (what, line, extra) in rewrite {
        let expect = if *what == "Script-Name header" {
            Expect::Any
        } else {
            Expect::NoView
        };
        add(
            &format!("override: {what}"),
            req(line, extra),
            How::Once,
            expect,
        );
    }
    add(
        "override: _method in a form body",
        {
            let body = "_method=GET";
            let mut b = req(
                "POST /ops/dispatch/1 HTTP/1.1",
                &format!(
                    "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n",
                    body.len()
                ),
            );
            b.extend_from_slice(body.as_bytes());
            b
        },
        How::Once,
        Expect::NoView,
    );
    add(
        "override: _method query on an allowed POST",
        req(
            "POST /dashboard/status/1/config?_method=DELETE HTTP/1.1",
            "Content-Length: 0\r\n",
        ),
        How::Once,
        Expect::View("/dashboard/status/<surface_id>/config"),
    );

    // --- Request line and method ----------------------------------------------------------
    let lines: &[(&str, &str)] = &[
        ("lower-case method", "get /ops HTTP/1.1"),
        ("mixed-case method", "pOST /ops/dispatch/1 HTTP/1.1"),
        (
            "lower-case method on an allowed path",
            "get /dashboard HTTP/1.1",
        ),
        ("unknown method", "PROPFIND /ops HTTP/1.1"),
        ("TRACE", "TRACE /ops HTTP/1.1"),
        ("CONNECT", "CONNECT console.test:443 HTTP/1.1"),
        ("double space before the target", "GET  /ops HTTP/1.1"),
        ("double space after the target", "GET /ops  HTTP/1.1"),
        ("tab separators", "GET\t/ops\tHTTP/1.1"),
        ("HTTP/1.2", "GET /ops HTTP/1.2"),
        ("HTTP/2.0 in an HTTP/1 line", "GET /ops HTTP/2.0"),
        ("zero-padded version", "GET /ops HTTP/01.1"),
        ("no version (HTTP/0.9)", "GET /ops"),
        ("trailing junk after the version", "GET /ops HTTP/1.1 x"),
    ];
    for (what, line) in lines {
        add(
            &format!("line: {what}"),
            req(line, ""),
            How::Once,
            Expect::NoView,
        );
    }
    add(
        "line: bare LF line endings",
        format!(
            "GET /ops HTTP/1.1\nHost: console.test\n{}\nConnection: close\n\n",
            c.trim_end()
        )
        .into_bytes(),
        How::Once,
        Expect::NoView,
    );
    add(
        "line: leading empty lines",
        [b"\r\n\r\n".to_vec(), get("/ops")].concat(),
        How::Once,
        Expect::NoView,
    );
    add(
        "http/1.0: forbidden view",
        format!("GET /ops HTTP/1.0\r\n{c}\r\n").into_bytes(),
        How::Once,
        Expect::NoView,
    );
    add(
        "http/1.0: allowed view without Host",
        format!("GET /dashboard HTTP/1.0\r\n{c}\r\n").into_bytes(),
        How::Once,
        Expect::View("/dashboard"),
    );
    add(
        "http/1.0: keep-alive pipelined forbidden second request",
        format!(
            "GET /dashboard HTTP/1.0\r\nConnection: keep-alive\r\n{c}\r\nGET /ops HTTP/1.0\r\n{c}\r\n"
        )
        .into_bytes(),
        How::Once,
        Expect::Any,
    );
    add(
        "host: two Host headers",
        format!("GET /ops HTTP/1.1\r\nHost: console.test\r\nHost: other.test\r\n{c}Connection: close\r\n\r\n").into_bytes(),
        How::Once,
        Expect::NoView,
    );
    add(
        "host: Host header carrying a path",
        format!(
            "GET /ops HTTP/1.1\r\nHost: console.test/dashboard\r\n{c}Connection: close\r\n\r\n"
        )
        .into_bytes(),
        How::Once,
        Expect::NoView,
    );
    add(
        "host: missing in HTTP/1.1",
        format!("GET /ops HTTP/1.1\r\n{c}Connection: close\r\n\r\n").into_bytes(),
        How::Once,
        Expect::NoView,
    );

    // --- Huge headers ---------------------------------------------------------------------
    add(
        "headers: one 64 KB header",
        req(
            "GET /ops HTTP/1.1",
            &format!("X-Pad: {}\r\n", "b".repeat(64 * 1024)),
        ),
        How::Once,
        Expect::NoView,
    );
    add(
        "headers: 1 MB of headers",
        req(
            "GET /ops HTTP/1.1",
            &(0..1024)
                .map(|i| format!("X-Pad-{i}: {}\r\n", "c".repeat(1000)))
                .collect::<String>(),
        ),
        How::Once,
        Expect::NoView,
    );
    add(
        "headers: 500 small headers on an allowed view",
        req(
            "GET /dashboard HTTP/1.1",
            &(0..500)
                .map(|i| format!("X-H{i}: v\r\n"))
                .collect::<String>(),
        ),
        How::Once,
        Expect::Any,
    );
    add(
        "headers: 64 KB cookie header",
        req(
            "GET /ops HTTP/1.1",
            &format!("Cookie: pad={}\r\n", "d".repeat(64 * 1024)),
        ),
        How::Once,
        Expect::NoView,
    );

    // --- Request smuggling ------------------------------------------------------------------
    // The outer request is an allowed POST; the inner one a forbidden view with the session.
    let allowed_post = "POST /dashboard/status/1/config HTTP/1.1";
    let smuggle = |headers: &str, body: &str| -> Vec<u8> {
        format!("{allowed_post}\r\nHost: console.test\r\n{c}{headers}\r\n{body}").into_bytes()
    };
    let get_ops = inner(c, "GET /ops HTTP/1.1");
    let post_ops = inner(c, "POST /ops/dispatch/9 HTTP/1.1");
    let cl_te_body = format!("0\r\n\r\n{get_ops}");
    let te_cl_body = format!("{:x}\r\n{get_ops}\r\n0\r\n\r\n", get_ops.len());
    let smuggling: Vec<(&str, String, String)> = vec![
        (
            "CL.TE: Content-Length covers an inner request, chunked ends before it",
            format!(
                "Content-Length: {}\r\nTransfer-Encoding: chunked\r\n",
                cl_te_body.len()
            ),
            cl_te_body.clone(),
        ),
        (
            "TE.CL: chunk holds an inner request, Content-Length stops before it",
            "Transfer-Encoding: chunked\r\nContent-Length: 4\r\n".to_string(),
            te_cl_body.clone(),
        ),
        (
            "CL.TE pipelined: inner POST to a forbidden view",
            format!(
                "Content-Length: {}\r\nTransfer-Encoding: chunked\r\n",
                5 + post_ops.len()
            ),
            format!("0\r\n\r\n{post_ops}"),
        ),
        (
            "two different Content-Length",
            format!("Content-Length: 0\r\nContent-Length: {}\r\n", get_ops.len()),
            get_ops.clone(),
        ),
        (
            "two equal Content-Length",
            format!(
                "Content-Length: {0}\r\nContent-Length: {0}\r\n",
                get_ops.len()
            ),
            get_ops.clone(),
        ),
        (
            "Content-Length list",
            format!("Content-Length: 0, {}\r\n", get_ops.len()),
            get_ops.clone(),
        ),
        (
            "Content-Length with plus sign",
            "Content-Length: +0\r\n".to_string(),
            get_ops.clone(),
        ),
        (
            "Content-Length negative",
            "Content-Length: -1\r\n".to_string(),
            get_ops.clone(),
        ),
        (
            "Content-Length hex",
            "Content-Length: 0x0\r\n".to_string(),
            get_ops.clone(),
        ),
        (
            "Content-Length overflowing",
            "Content-Length: 99999999999999999999999\r\n".to_string(),
            get_ops.clone(),
        ),
        (
            "Transfer-Encoding with obs-fold",
            format!(
                "Content-Length: {}\r\nTransfer-Encoding:\r\n chunked\r\n",
                cl_te_body.len()
            ),
            cl_te_body.clone(),
        ),
        (
            "Transfer-Encoding: chunked, identity",
            format!(
                "Content-Length: {}\r\nTransfer-Encoding: chunked, identity\r\n",
                cl_te_body.len()
            ),
            cl_te_body.clone(),
        ),
        (
            "Transfer-Encoding: identity, chunked",
            "Transfer-Encoding: identity, chunked\r\nContent-Length: 4\r\n".to_string(),
            te_cl_body.clone(),
        ),
        (
            "Transfer-Encoding: xchunked",
            "Transfer-Encoding: xchunked\r\nContent-Length: 4\r\n".to_string(),
            te_cl_body.clone(),
        ),
        (
            "Transfer-Encoding: Chunked (case)",
            format!(
                "Content-Length: {}\r\nTransfer-Encoding: Chunked\r\n",
                cl_te_body.len()
            ),
            cl_te_body.clone(),
        ),
        (
            "Transfer-Encoding with space before colon",
            format!(
                "Content-Length: {}\r\nTransfer-Encoding : chunked\r\n",
                cl_te_body.len()
            ),
            cl_te_body.clone(),
        ),
        (
            "Transfer-Encoding with tab value",
            format!(
                "Content-Length: {}\r\nTransfer-Encoding:\tchunked\r\n",
                cl_te_body.len()
            ),
            cl_te_body.clone(),
        ),
        (
            "two Transfer-Encoding headers",
            "Transfer-Encoding: identity\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n"
                .to_string(),
            te_cl_body.clone(),
        ),
        (
            "chunked: size overflowing 64 bits",
            "Transfer-Encoding: chunked\r\n".to_string(),
            format!("ffffffffffffffff1\r\n{get_ops}\r\n0\r\n\r\n"),
        ),
        (
            "chunked: negative size",
            "Transfer-Encoding: chunked\r\n".to_string(),
            format!("-1\r\n{get_ops}\r\n0\r\n\r\n"),
        ),
        (
            "chunked: 0x prefix",
            "Transfer-Encoding: chunked\r\n".to_string(),
            format!("0x{:x}\r\n{get_ops}\r\n0\r\n\r\n", get_ops.len()),
        ),
        (
            "chunked: size with leading space",
            "Transfer-Encoding: chunked\r\n".to_string(),
            format!(" {:x}\r\n{get_ops}\r\n0\r\n\r\n", get_ops.len()),
        ),
        (
            "chunked: bare LF after the size",
            "Transfer-Encoding: chunked\r\n".to_string(),
            format!("{:x}\n{get_ops}\r\n0\r\n\r\n", get_ops.len()),
        ),
        (
            "chunked: size too small for the data",
            "Transfer-Encoding: chunked\r\n".to_string(),
            format!("1\r\nx\r\n{get_ops}0\r\n\r\n"),
        ),
        (
            "chunked: extension hiding a CRLF in quotes",
            "Transfer-Encoding: chunked\r\n".to_string(),
            format!("0;a=\"\r\n\r\n{get_ops}\"\r\n\r\n"),
        ),
        (
            "chunked: trailer spoofing X-Rbac-Roles",
            "Transfer-Encoding: chunked\r\nTrailer: X-Rbac-Roles\r\n".to_string(),
            "3\r\na=b\r\n0\r\nX-Rbac-Roles: console-manager\r\nX-Rbac-Admin-Id: root\r\n\r\n"
                .to_string(),
        ),
        (
            "Connection: Content-Length (hop-by-hop strip)",
            format!(
                "Content-Length: {}\r\nConnection: Content-Length\r\n",
                get_ops.len()
            ),
            get_ops.clone(),
        ),
        (
            "Connection: Transfer-Encoding (hop-by-hop strip)",
            "Transfer-Encoding: chunked\r\nConnection: Transfer-Encoding\r\n".to_string(),
            format!("0\r\n\r\n{get_ops}"),
        ),
        (
            "Expect: 100-continue with the inner request right behind",
            format!(
                "Expect: 100-continue\r\nContent-Length: {}\r\n",
                get_ops.len()
            ),
            get_ops.clone(),
        ),
    ];
    for (what, headers, body) in smuggling {
        add(
            &format!("smuggle: {what}"),
            smuggle(&headers, &body),
            How::Once,
            Expect::Any,
        );
    }
    add(
        "smuggle: GET with a Content-Length body holding a request",
        format!(
            "GET /dashboard HTTP/1.1\r\nHost: console.test\r\n{c}Content-Length: {}\r\n\r\n{get_ops}",
            get_ops.len()
        )
        .into_bytes(),
        How::Once,
        Expect::Any,
    );
    add(
        "smuggle: GET with a chunked body holding a request",
        format!(
            "GET /dashboard HTTP/1.1\r\nHost: console.test\r\n{c}Transfer-Encoding: chunked\r\n\r\n{te_cl_body}"
        )
        .into_bytes(),
        How::Once,
        Expect::Any,
    );
    add(
        "smuggle: HTTP/1.0 with Transfer-Encoding",
        format!(
            "POST /dashboard/status/1/config HTTP/1.0\r\n{c}Content-Length: {}\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive\r\n\r\n{cl_te_body}",
            cl_te_body.len()
        )
        .into_bytes(),
        How::Once,
        Expect::Any,
    );
    add(
        "smuggle: websocket upgrade then a forbidden request",
        format!(
            "GET /dashboard HTTP/1.1\r\nHost: console.test\r\n{c}Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n{get_ops}"
        )
        .into_bytes(),
        How::Once,
        Expect::Any,
    );
    add(
        "smuggle: h2c upgrade then a forbidden request",
        format!(
            "GET /health HTTP/1.1\r\nHost: console.test\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n{get_ops}"
        )
        .into_bytes(),
        How::Once,
        Expect::Any,
    );
    add(
        "smuggle: HTTP/2 preface to an HTTP/1 listener",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(),
        How::Once,
        Expect::NoView,
    );

    // --- Pipelining -----------------------------------------------------------------------
    let keep = |line: &str| format!("{line}\r\nHost: console.test\r\n{c}\r\n");
    add(
        "pipeline: allowed then forbidden",
        format!(
            "{}{}",
            keep("GET /dashboard HTTP/1.1"),
            inner(c, "GET /ops HTTP/1.1")
        )
        .into_bytes(),
        How::Once,
        Expect::Any,
    );
    add(
        "pipeline: public without session then forbidden",
        format!(
            "GET /health HTTP/1.1\r\nHost: console.test\r\n\r\n{}",
            inner(c, "GET /secrets HTTP/1.1")
        )
        .into_bytes(),
        How::Once,
        Expect::Any,
    );
    add(
        "pipeline: refused then allowed (connection must close)",
        format!(
            "{}{}",
            keep("GET /dashboard/../ops HTTP/1.1"),
            inner(c, "GET /ops HTTP/1.1")
        )
        .into_bytes(),
        How::Once,
        Expect::NoView,
    );
    add(
        "pipeline: forbidden then allowed",
        format!(
            "{}{}",
            keep("GET /ops HTTP/1.1"),
            inner(c, "GET /status HTTP/1.1")
        )
        .into_bytes(),
        How::Once,
        Expect::Any,
    );
    add(
        "pipeline: allowed POST with body, then forbidden POST",
        format!(
            "{allowed_post}\r\nHost: console.test\r\n{c}Content-Length: 3\r\n\r\na=b{post_ops}"
        )
        .into_bytes(),
        How::Once,
        Expect::Any,
    );
    add(
        "pipeline: HEAD allowed then forbidden GET",
        format!(
            "{}{}",
            keep("HEAD /dashboard HTTP/1.1"),
            inner(c, "GET /replay HTTP/1.1")
        )
        .into_bytes(),
        How::Once,
        Expect::Any,
    );
    add(
        "pipeline: three requests, forbidden in the middle",
        format!(
            "{}{}{}",
            keep("GET /status HTTP/1.1"),
            keep("GET /console/deploy-freeze HTTP/1.1"),
            inner(c, "GET /console/status HTTP/1.1")
        )
        .into_bytes(),
        How::Once,
        Expect::Any,
    );

    // --- Kept-alive connections: the rest arrives after the gateway answered the first part -
    let split = |first: String, rest: String| -> (Vec<u8>, How) {
        let n = first.len();
        ((first + &rest).into_bytes(), How::Split(n))
    };
    let kept: Vec<(&str, String, String)> = vec![
        (
            "allowed, then forbidden",
            keep("GET /dashboard HTTP/1.1"),
            inner(c, "GET /ops HTTP/1.1"),
        ),
        (
            "forbidden, then allowed",
            keep("GET /secrets HTTP/1.1"),
            inner(c, "GET /status HTTP/1.1"),
        ),
        (
            "public without session, then forbidden",
            "GET /health HTTP/1.1\r\nHost: console.test\r\n\r\n".to_string(),
            inner(c, "POST /ops/dispatch/9 HTTP/1.1"),
        ),
        (
            "refused, then forbidden",
            keep("GET /dashboard/%2e%2e/ops HTTP/1.1"),
            inner(c, "GET /ops HTTP/1.1"),
        ),
        (
            "CL.TE, the inner request arriving after the chunked end",
            format!(
                "{allowed_post}\r\nHost: console.test\r\n{c}Content-Length: {}\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
                5 + get_ops.len()
            ),
            get_ops.clone(),
        ),
        (
            "Content-Length body held back, then a request as the body",
            format!(
                "{allowed_post}\r\nHost: console.test\r\n{c}Content-Length: {}\r\n\r\n",
                get_ops.len()
            ),
            get_ops.clone(),
        ),
        (
            "100-continue, then a request as the body",
            format!(
                "{allowed_post}\r\nHost: console.test\r\n{c}Expect: 100-continue\r\nContent-Length: {}\r\n\r\n",
                post_ops.len()
            ),
            post_ops.clone(),
        ),
        (
            "websocket upgrade answered, then raw bytes of a forbidden request",
            format!(
                "GET /dashboard HTTP/1.1\r\nHost: console.test\r\n{c}Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
            ),
            get_ops.clone(),
        ),
    ];
    for (what, first, rest) in kept {
        let (bytes, how) = split(first, rest);
        add(&format!("keep-alive: {what}"), bytes, how, Expect::Any);
    }

    // --- Slow clients -----------------------------------------------------------------------
    add(
        "slow: forbidden view byte by byte",
        get("/ops"),
        How::Slow,
        Expect::NoView,
    );
    add(
        "slow: allowed view byte by byte",
        get("/dashboard"),
        How::Slow,
        Expect::Any,
    );
    add(
        "slow: pipelined allowed then forbidden, byte by byte",
        format!(
            "{}{}",
            keep("GET /dashboard HTTP/1.1"),
            inner(c, "GET /ops HTTP/1.1")
        )
        .into_bytes(),
        How::Slow,
        Expect::Any,
    );
    add(
        "slow: CL.TE smuggling byte by byte",
        smuggle(
            &format!(
                "Content-Length: {}\r\nTransfer-Encoding: chunked\r\n",
                cl_te_body.len()
            ),
            &cl_te_body,
        ),
        How::Slow,
        Expect::Any,
    );
    v
}

// ---------------------------------------------------------------------------------------------
// Sending and reading

/// Sends the bytes and reads everything the gateway answers until it closes or stays silent.
async fn exchange(addr: SocketAddr, bytes: &[u8], how: How) -> (Vec<u8>, Option<String>) {
    let mut s = match TcpStream::connect(addr).await {
        Ok(s) => s,
        Err(e) => return (Vec::new(), Some(format!("connect: {e}"))),
    };
    let mut write_error = None;
    match how {
        How::Once => {
            if let Err(e) = s.write_all(bytes).await {
                write_error = Some(format!("write: {e}"));
            }
        }
        How::Split(n) => {
            if let Err(e) = s.write_all(&bytes[..n]).await {
                write_error = Some(format!("write: {e}"));
            } else {
                // The scenario: the request arrives in two parts, a pause between them.
                tokio::time::sleep(Duration::from_millis(300)).await;
                if let Err(e) = s.write_all(&bytes[n..]).await {
                    write_error = Some(format!("second write: {e}"));
                }
            }
        }
        How::Slow => {
            for b in bytes {
                if let Err(e) = s.write_all(std::slice::from_ref(b)).await {
                    write_error = Some(format!("write: {e}"));
                    break;
                }
                // The scenario: a slow client trickling its request byte by byte.
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    }
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let deadline = Instant::now() + Duration::from_secs(10);
    // Silence this long after the last byte ends the exchange (a kept-alive connection).
    let idle = Duration::from_millis(700);
    while Instant::now() < deadline {
        match tokio::time::timeout(idle, s.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    (buf, write_error)
}

#[derive(Debug)]
struct Reply {
    status: u16,
    endpoint: Option<String>,
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Every response in the bytes, in order (bodies by Content-Length or chunked; a HEAD answer
/// has a Content-Length and no body, recognised by the next response starting right away).
fn replies(mut buf: &[u8]) -> Vec<Reply> {
    let mut out = Vec::new();
    while buf.starts_with(b"HTTP/") {
        let Some(head_end) = find(buf, b"\r\n\r\n").map(|p| p + 4) else {
            break;
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let status: u16 = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let header = |name: &str| {
            head.split("\r\n")
                .skip(1)
                .filter_map(|l| l.split_once(':'))
                .find(|(k, _)| k.trim().eq_ignore_ascii_case(name))
                .map(|(_, v)| v.trim().to_string())
        };
        let rest = &buf[head_end..];
        let (body, used): (Vec<u8>, usize) = if (100..200).contains(&status) {
            (Vec::new(), 0)
        } else if header("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
            let mut body = Vec::new();
            let mut at = 0;
            loop {
                let Some(eol) = find(&rest[at..], b"\r\n") else {
                    at = rest.len();
                    break;
                };
                let size = std::str::from_utf8(&rest[at..at + eol])
                    .ok()
                    .and_then(|s| {
                        usize::from_str_radix(s.split(';').next().unwrap().trim(), 16).ok()
                    })
                    .unwrap_or(0);
                at += eol + 2;
                if size == 0 {
                    at = (at + 2).min(rest.len());
                    break;
                }
                let end = (at + size).min(rest.len());
                body.extend_from_slice(&rest[at..end]);
                at = (end + 2).min(rest.len());
            }
            (body, at)
        } else if let Some(n) = header("content-length").and_then(|v| v.parse::<usize>().ok()) {
            if rest.starts_with(b"HTTP/")
                && !rest
                    .get(n..)
                    .is_some_and(|r| r.is_empty() || r.starts_with(b"HTTP/"))
            {
                (Vec::new(), 0)
            } else {
                let n = n.min(rest.len());
                (rest[..n].to_vec(), n)
            }
        } else {
            (rest.to_vec(), rest.len())
        };
        let endpoint = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| {
                v.get("endpoint")
                    .and_then(|e| e.as_str())
                    .map(str::to_string)
            });
        out.push(Reply { status, endpoint });
        buf = &rest[used..];
    }
    out
}

// ---------------------------------------------------------------------------------------------
// The test

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_corpus_never_runs_a_forbidden_view() {
    let routes_file = root().join("routes.toml");
    let mapping = Mapping::load(&routes_file).unwrap_or_else(|e| panic!("routes.toml: {e}"));
    let db = TestDb::new().await;
    let (admin, token) = db.admin_with_roles(&["console-user"]).await;
    let principal =
        rbac_gateway::stores::identity::resolve(&db.gw(), &admin, Duration::from_secs(60))
            .await
            .unwrap();
    assert_eq!(
        principal.roles(),
        vec!["console-user".to_string()],
        "the session holds only console-user"
    );
    let roles_header = principal.roles().join(",");

    // Which views this session may run: public and machine rules, and protected rules naming a
    // role or permission it holds. Gone rules never run (the gateway answers 404).
    let allowed: BTreeSet<String> = mapping
        .routes
        .iter()
        .filter(|r| match r.access {
            Access::Public | Access::Machine => true,
            Access::Gone => false,
            Access::Protected => {
                // A linear search, not the decision's binary one.
                r.roles
                    .iter()
                    .any(|x| principal.roles().iter().any(|p| **x == **p))
                    || r.permissions
                        .iter()
                        .any(|x| principal.permissions().iter().any(|p| **x == **p))
            }
        })
        .map(|r| format!("r{}", r.index))
        .collect();
    let rule_of = |method: &str, path: &str| {
        mapping
            .find(method, path)
            .map(|(r, _)| format!("r{}", r.index))
    };
    // The corpus relies on these.
    for (m, p, want) in [
        ("GET", "/ops", false),
        ("GET", "/secrets", false),
        ("POST", "/ops/dispatch/9", false),
        ("GET", "/replay", false),
        ("GET", "/console/deploy-freeze", false),
        ("GET", "/dashboard", true),
        ("GET", "/status", true),
        ("GET", "/console/status", true),
        ("POST", "/dashboard/status/1/config", true),
        ("GET", "/health", true),
    ] {
        let r = rule_of(m, p).unwrap_or_else(|| panic!("{m} {p} has a rule"));
        assert_eq!(
            allowed.contains(&r),
            want,
            "{m} {p} ({r}) allowed for console-user"
        );
    }

    let console = Console::start(&routes_file).await;
    let gw = Gateway::start(GatewayOpts::new(&routes_file, &db, console.addr)).await;

    let cases = corpus(&token);
    assert!(
        cases.len() >= 80,
        "the corpus has {} entries, at least 80 wanted",
        cases.len()
    );

    let started = Instant::now();
    let mut offset = 0;
    let mut violations: Vec<String> = Vec::new();
    let mut table: Vec<String> = Vec::new();
    let mut views_total = 0;
    let check_view = |what: &str, view: &serde_json::Value, violations: &mut Vec<String>| {
        let endpoint = view["endpoint"].as_str().unwrap_or("?");
        let rule = view["rule"].as_str().unwrap_or("?");
        let method = view["method"].as_str().unwrap_or("?");
        let raw_uri = view["raw_uri"].as_str().unwrap_or("");
        if !allowed.contains(endpoint) {
            violations.push(format!(
                "[{what}] BYPASS: forbidden view {endpoint} ({method} {rule}) ran for {raw_uri:?}: {view}"
            ));
        }
        match view["x_rbac_admin_id"].as_str() {
            None => {}
            Some(a) if a == admin => {}
            Some(a) => violations.push(format!(
                "[{what}] spoofed X-Rbac-Admin-Id {a:?} reached {endpoint}: {view}"
            )),
        }
        match view["x_rbac_roles"].as_str() {
            None => {}
            Some(r) if r == roles_header => {}
            Some(r) => violations.push(format!(
                "[{what}] spoofed X-Rbac-Roles {r:?} reached {endpoint}: {view}"
            )),
        }
        let rid = view["x_request_id"].as_str().unwrap_or("");
        if rid.len() != 32 || !rid.bytes().all(|b| b.is_ascii_hexdigit()) {
            violations.push(format!(
                "[{what}] SMUGGLED: view {endpoint} ran for a request the gateway did not forward itself (X-Request-Id {rid:?}): {view}"
            ));
        }
        if view["script_name"].as_str() != Some("") {
            violations.push(format!("[{what}] SCRIPT_NAME is not empty: {view}"));
        }
        // The rule that ran is the one the gateway matched for the target it forwarded.
        let gw_rule = rbac_gateway::policy::target::parse_target(raw_uri.as_bytes())
            .ok()
            .and_then(|t| rule_of(method, t.path()));
        if gw_rule.as_deref() != Some(endpoint) {
            violations.push(format!(
                "[{what}] WRONG MATCH: Console ran {endpoint} ({rule}) for {method} {raw_uri:?}, the gateway matches {gw_rule:?}"
            ));
        }
    };

    for case in &cases {
        let (bytes, write_error) = exchange(gw.addr, &case.bytes, case.how).await;
        // Let a request the gateway forwarded late (or gunicorn ran late) land in the log. What
        // is looked for is an event that must NOT happen (a smuggled request run late): no
        // condition marks its absence, so a short window of time is the check.
        tokio::time::sleep(Duration::from_millis(30)).await;
        let (views, next) = console.views_since(offset);
        offset = next;
        views_total += views.len();
        let answers = replies(&bytes);
        for view in &views {
            check_view(&case.what, view, &mut violations);
        }
        for a in &answers {
            if let Some(e) = &a.endpoint {
                if !allowed.contains(e) {
                    violations.push(format!(
                        "[{}] BYPASS: the client got the answer of forbidden view {e}",
                        case.what
                    ));
                }
            }
        }
        let ran: Vec<&str> = views
            .iter()
            .map(|v| v["endpoint"].as_str().unwrap_or("?"))
            .collect();
        let statuses: Vec<u16> = answers.iter().map(|a| a.status).collect();
        match case.expect {
            Expect::Any => {}
            Expect::NoView => {
                if !views.is_empty() {
                    violations.push(format!(
                        "[{}] expected no view to run, ran {ran:?} (answers {statuses:?})",
                        case.what
                    ));
                }
            }
            Expect::View(rule) => {
                let ok = views.len() == 1
                    && views[0]["rule"].as_str() == Some(rule)
                    && statuses.first() == Some(&200);
                if !ok {
                    violations.push(format!(
                        "[{}] expected exactly the view of {rule} with 200, ran {ran:?} (answers {statuses:?}, {} bytes, {write_error:?})",
                        case.what,
                        bytes.len()
                    ));
                }
            }
        }
        table.push(format!(
            "{:<75} answers {:<16} views {:<16} {}",
            case.what,
            format!("{statuses:?}"),
            format!("{ran:?}"),
            write_error.unwrap_or_default()
        ));
    }
    // Anything gunicorn ran after the last exchange. As above, the absence of a late view is
    // what is checked, so the window of time itself is the test.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (late, _) = console.views_since(offset);
    views_total += late.len();
    for view in &late {
        check_view("after the corpus", view, &mut violations);
    }

    eprintln!(
        "hostile corpus: {} entries in {:.1?}, {views_total} views ran\n{}",
        cases.len(),
        started.elapsed(),
        table.join("\n")
    );
    // The gunicorn access log: every request it parsed, with the X-Request-Id it carried.
    let access = console.access_log();
    let foreign: Vec<&str> = access
        .lines()
        .filter(|l| {
            let rid = l.rsplit("rid=").next().unwrap_or("");
            !(rid.len() == 32 && rid.bytes().all(|b| b.is_ascii_hexdigit()))
        })
        .filter(|l| !l.starts_with("GET /health? 200 rid=-"))
        .collect();
    if !foreign.is_empty() {
        eprintln!(
            "gunicorn parsed requests without the gateway's X-Request-Id:\n{}",
            foreign.join("\n")
        );
    }
    assert!(
        violations.is_empty(),
        "{} violation(s) of the hostile-input invariants:\n{}\n\ngateway log tail:\n{}\ngunicorn log:\n{}",
        violations.len(),
        violations.join("\n"),
        gw.log().lines().rev().take(30).collect::<Vec<_>>().join("\n"),
        console.log()
    );
    assert!(views_total >= 10, "the controls ran views ({views_total})");
}

/// A denial's row keeps the `User-Agent` as Console reads it, whatever its bytes: the same
/// header sent on an allowed request is answered by the stand-in with what gunicorn and
/// Werkzeug made of it (latin-1, one character per byte; a repeated header joined with `,`),
/// and the row of the same header on a denied request, through the proxy and through the
/// forward-auth door, holds exactly that. Before, a user agent beyond ASCII left the row's
/// empty, and a repeated one kept only its first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denials_row_keeps_the_user_agent_console_reads() {
    let routes_file = root().join("routes.toml");
    let db = TestDb::new().await;
    let (_admin, token) = db.admin_with_roles(&["console-user"]).await;
    let console = Console::start(&routes_file).await;
    let gw = Gateway::start(
        GatewayOpts::new(&routes_file, &db, console.addr)
            .arg("--authz-listen")
            .arg("127.0.0.1:0"),
    )
    .await;
    let agents: [&[&[u8]]; 5] = [
        &[b"plain/1.0"],
        &[b"caf\xc3\xa9 \xe2\x98\x95 \xf0\x9f\x98\x80"],
        &[b"latin \xe9t\xe9 \xff\x80"],
        &[b"first \xe9", b"second"],
        &[b"a'b\\c", b"", b"d"],
    ];
    for sent in agents {
        let lines: Vec<u8> = sent
            .iter()
            .flat_map(|v| [&b"User-Agent: "[..], v, b"\r\n"].concat())
            .collect();
        let request = |head: &[u8]| -> Vec<u8> {
            [
                head,
                &lines,
                format!("Cookie: console_session={token}\r\nConnection: close\r\n\r\n").as_bytes(),
            ]
            .concat()
        };
        let allowed = send(gw.addr, &request(b"GET /dashboard HTTP/1.1\r\nHost: c\r\n"))
            .await
            .unwrap();
        assert_eq!(allowed.status, 200, "{sent:?}: {}", allowed.body_str());
        let view: serde_json::Value = serde_json::from_slice(&allowed.body).unwrap();
        let console_reads = view["user_agent"]
            .as_str()
            .unwrap_or_else(|| panic!("{sent:?}: the view saw no user agent: {view}"));
        let proxy = send(gw.addr, &request(b"GET /ops HTTP/1.1\r\nHost: c\r\n"))
            .await
            .unwrap();
        let door = send(
            gw.authz_addr(),
            &request(b"GET /authz HTTP/1.1\r\nHost: gw\r\nX-Forwarded-Method: GET\r\nX-Forwarded-Uri: /ops\r\n"),
        )
        .await
        .unwrap();
        for (name, r) in [("proxy", &proxy), ("forward-auth", &door)] {
            assert_eq!(r.status, 403, "{name} {sent:?}: {}", r.body_str());
            let rows = db.audit_rows(&r.request_id()).await;
            assert_eq!(rows.len(), 1, "{name} {sent:?}: {rows:?}");
            assert_eq!(
                rows[0].user_agent.as_deref(),
                Some(console_reads),
                "{name}: the row of {sent:?}"
            );
        }
    }
}
