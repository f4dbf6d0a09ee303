//! Console's Heroku web dyno as printed (deploy/heroku): the Procfile run by honcho (which runs
//! Procfiles the way Heroku does) with `PORT` set, the launcher `bin/rbac-gateway-heroku`, the
//! real binary as `bin/rbac-gateway`, the gunicorn Console stand-in, and a PostgreSQL that serves
//! TLS only (`sslmode=require`, as Heroku Postgres).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::helpers::*;

fn run(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A private PostgreSQL that takes TLS connections only (a self-signed certificate, `ssl = on`,
/// `hostssl` the only TCP line of pg_hba.conf), and a migrated database on it reached with
/// `sslmode=require`.
async fn tls_pg() -> (PrivatePg, TestDb) {
    let (pg, plain) = PrivatePg::start().await;
    plain.pool.close().await;
    let data = pg.data_dir();
    let (key, crt) = (data.join("server.key"), data.join("server.crt"));
    run(
        "openssl",
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
            "-keyout",
            key.to_str().unwrap(),
            "-out",
            crt.to_str().unwrap(),
        ],
    );
    run("chmod", &["600", key.to_str().unwrap()]);
    run(
        "chown",
        &["postgres", key.to_str().unwrap(), crt.to_str().unwrap()],
    );
    std::fs::write(
        data.join("pg_hba.conf"),
        "local all all trust\nhostssl all all 127.0.0.1/32 trust\n",
    )
    .unwrap();
    pg.restart_with("ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'");
    let refused = sqlx::PgPool::connect(&format!("{}?sslmode=disable", pg.url)).await;
    assert!(refused.is_err(), "the server must refuse plain text");
    let url = format!("{}?sslmode=require", pg.url);
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    (pg, TestDb { url, pool })
}

/// What Console's repository holds for Heroku: the Procfile and launcher of deploy/heroku, the
/// gateway binary in `bin/`, the app (the stand-in as `app.py`) and its routes.toml.
fn slug() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir(d.join("bin")).unwrap();
    std::fs::copy(root().join("deploy/heroku/Procfile"), d.join("Procfile")).unwrap();
    std::fs::copy(
        root().join("deploy/heroku/bin/rbac-gateway-heroku"),
        d.join("bin/rbac-gateway-heroku"),
    )
    .unwrap();
    std::os::unix::fs::symlink(
        env!("CARGO_BIN_EXE_rbac-gateway"),
        d.join("bin/rbac-gateway"),
    )
    .unwrap();
    std::fs::copy(
        root().join("tests/console_standin/app.py"),
        d.join("app.py"),
    )
    .unwrap();
    std::fs::copy(core_routes(), d.join("routes.toml")).unwrap();
    dir
}

/// A web dyno: `honcho start web` in a slug.
struct Dyno {
    honcho: Child,
    slug: tempfile::TempDir,
    port: u16,
    admin: SocketAddr,
}

/// honcho run in `slug` (`start web`, `start release`), its output in `out`.
fn honcho(slug: &Path, args: &[&str], env: &[(&str, String)], out: &Path) -> Child {
    let log = std::fs::File::create(out).unwrap();
    // As Heroku starts a dyno: SIGHUP at its default, whatever the test runner was started with
    // (nohup ignores it, and a process started with it ignored cannot trap it).
    let mut cmd = Command::new("env");
    cmd.arg("--default-signal=HUP")
        .arg(tool("honcho"))
        .args(args)
        .current_dir(slug)
        // The Procfile's `gunicorn` (and the stand-in's Flask) from the virtual environment.
        .env("PATH", tool_path())
        .env_remove("FLAG_RBAC_V2")
        .env("ROUTES_FILE", slug.join("routes.toml"))
        .env("RUST_LOG", "info")
        .env("GATEWAY_LOG_FORMAT", "json")
        .env("GATEWAY_ADMIN_LISTEN", "127.0.0.1:0")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.spawn()
        .expect("honcho (scripts/setup.sh --tests installs it in .venv/)")
}

impl Dyno {
    /// Runs the release phase, then starts the web process; waits until the gateway is ready.
    async fn start(db: &TestDb, env: &[(&str, &str)]) -> Dyno {
        Dyno::start_in(slug(), db, env).await
    }

    /// [`Dyno::start`] in a given slug.
    async fn start_in(slug: tempfile::TempDir, db: &TestDb, env: &[(&str, &str)]) -> Dyno {
        let (port, console) = (free_port(), free_port());
        let mut vars: Vec<(&str, String)> = vec![
            ("PORT", port.to_string()),
            ("CONSOLE_PORT", console.to_string()),
            ("DATABASE_URL", db.url.clone()),
        ];
        vars.extend(env.iter().map(|(k, v)| (*k, v.to_string())));
        let release_out = slug.path().join("release.out");
        let status = honcho(slug.path(), &["start", "release"], &vars, &release_out)
            .wait()
            .unwrap();
        assert!(
            status.success(),
            "release: {}",
            std::fs::read_to_string(&release_out).unwrap_or_default()
        );
        let out = slug.path().join("web.out");
        let mut honcho = honcho(slug.path(), &["start", "web"], &vars, &out);
        let what = || {
            let text = std::fs::read_to_string(&out).unwrap_or_default();
            format!("never listening:\n{text}")
        };
        let admin: SocketAddr = eventually_some(Duration::from_secs(30), what, || {
            let text = std::fs::read_to_string(&out).unwrap_or_default();
            let admin = json_lines(&text)
                .find(|v| v["message"] == "listening")
                .and_then(|v| v["admin_listen"].as_str().and_then(|a| a.parse().ok()));
            if admin.is_none() {
                if let Ok(Some(s)) = honcho.try_wait() {
                    panic!("the dyno ended ({s}) before listening:\n{text}");
                }
            }
            async move { admin }
        })
        .await;
        let dyno = Dyno {
            honcho,
            slug,
            port,
            admin,
        };
        let console = SocketAddr::from(([127, 0, 0, 1], console));
        eventually(
            Duration::from_secs(30),
            "ready, and Console listening",
            || async move { metric_ready(admin).await && is_listening(console) },
        )
        .await;
        dyno
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    fn output(&self) -> String {
        std::fs::read_to_string(self.slug.path().join("web.out")).unwrap_or_default()
    }

    /// The web process's pid, as honcho reports it (`web.1 started (pid=N)`).
    fn web_pid(&self) -> u32 {
        let out = self.output();
        out.lines()
            .find_map(|l| {
                l.split_once("web.1 started (pid=")
                    .and_then(|(_, r)| r.split(')').next())
                    .and_then(|p| p.parse().ok())
            })
            .unwrap_or_else(|| panic!("no web.1 pid in:\n{out}"))
    }

    /// A request as Heroku's router passes it on: `headers` include what the router set.
    async fn request(&self, path: &str, token: Option<&str>, headers: &[(&str, &str)]) -> Resp {
        let mut req =
            format!("GET {path} HTTP/1.1\r\nHost: console.herokuapp.test\r\nConnection: close\r\n");
        if let Some(t) = token {
            req.push_str(&format!("Cookie: console_session={t}\r\n"));
        }
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        send(self.addr(), req.as_bytes())
            .await
            .unwrap_or_else(|e| panic!("request failed: {e}; output:\n{}", self.output()))
    }

    /// Waits for honcho to end; its status.
    async fn ended_within(&mut self, limit: Duration) -> std::process::ExitStatus {
        let out = self.slug.path().join("web.out");
        let what = || {
            format!(
                "the dyno did not end; its output:\n{}",
                std::fs::read_to_string(&out).unwrap_or_default()
            )
        };
        exited_within(&mut self.honcho, limit, what).await
    }
}

impl Drop for Dyno {
    fn drop(&mut self) {
        if self.honcho.try_wait().ok().flatten().is_none() {
            // honcho stops its processes on SIGTERM (SIGKILL after 5 s).
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(self.honcho.id().to_string())
                .status();
            exited_within_blocking(&mut self.honcho, Duration::from_secs(10));
            let _ = self.honcho.kill();
            let _ = self.honcho.wait();
        }
    }
}

async fn metric_ready(admin: SocketAddr) -> bool {
    send(
        admin,
        b"GET /readyz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await
    .is_ok_and(|r| r.status == 200)
}

/// The JSON lines of honcho's output (each prefixed `HH:MM:SS web.1 | `).
fn json_lines(text: &str) -> impl Iterator<Item = serde_json::Value> + '_ {
    text.lines().filter_map(|l| {
        let (_, json) = l.split_once("| ")?;
        serde_json::from_str(json).ok()
    })
}

/// Descendants of `pid` with their command lines (from /proc).
fn descendants(pid: u32) -> Vec<(u32, String)> {
    let mut out = Vec::new();
    let mut parents = vec![pid];
    while let Some(parent) = parents.pop() {
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(p) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
                continue;
            };
            // pid (comm) state ppid ...
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|s| s.parse::<u32>().ok());
            if ppid == Some(parent) {
                let cmd = std::fs::read_to_string(format!("/proc/{p}/cmdline"))
                    .unwrap_or_default()
                    .replace('\0', " ");
                out.push((p, cmd));
                parents.push(p);
            }
        }
    }
    out
}

/// gunicorn's master process: the web process's child running gunicorn.
fn gunicorn_master(dyno: &Dyno) -> u32 {
    let web = dyno.web_pid();
    let all = descendants(web);
    all.iter()
        .find(|(p, c)| {
            let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
            let ppid: u32 = stat
                .rsplit_once(')')
                .and_then(|(_, r)| r.split_whitespace().nth(1))
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            ppid == web && c.contains("gunicorn")
        })
        .map(|(p, _)| *p)
        .unwrap_or_else(|| panic!("no gunicorn under the web process {web}: {all:?}"))
}

#[tokio::test]
async fn heroku_dyno_as_printed_forwards_denies_with_its_row_and_takes_the_routers_id_and_address()
{
    let (_pg, db) = tls_pg().await;
    let dyno = Dyno::start(&db, &[]).await;
    let (admin, token) = db.admin_with_roles(&["console-audit-user"]).await;
    let (_, denied) = db.admin_with_roles(&["console-user"]).await;

    // Allowed: Console answers, told who asked; the router's id joins, Console sees it too.
    let heroku_id = "f9f4e6d2-0b3e-4c1a-9d55-2f3a1b7c8e90";
    let r = dyno
        .request(
            "/console/customers/7",
            Some(&token),
            &[
                ("X-Request-ID", heroku_id),
                ("X-Forwarded-For", "6.6.6.6, 203.0.113.7"),
            ],
        )
        .await;
    assert_eq!(r.status, 200, "{}\n{}", r.body_str(), dyno.output());
    let view: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(view["x_rbac_admin_id"], admin.as_str());
    assert_eq!(view["x_request_id"], heroku_id);
    assert_eq!(r.request_id(), heroku_id);
    // Console is one hop further: the gateway appended its peer (the router's side).
    assert_eq!(view["x_forwarded_for"], "6.6.6.6, 203.0.113.7, 127.0.0.1");

    // Denied: 403 with its row, carrying the router's id and the address the router appended,
    // never the one the client forged in front of it.
    let r = dyno
        .request(
            "/ops",
            Some(&denied),
            &[
                ("X-Request-ID", heroku_id),
                ("X-Forwarded-For", "6.6.6.6, 203.0.113.7"),
            ],
        )
        .await;
    assert_eq!(r.status, 403);
    assert_eq!(r.request_id(), heroku_id);
    let rows = db.audit_rows(heroku_id).await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].event_type, "access_denied");
    assert_eq!(rows[0].client_ip.as_deref(), Some("203.0.113.7"));
    // The worker writes its log lines when it goes idle: waited for, not read at once.
    eventually(
        Duration::from_secs(5),
        "the denial's log line carries the router's id",
        || async {
            json_lines(&dyno.output())
                .any(|v| v["message"] == "denied" && v["request_id"] == heroku_id)
        },
    )
    .await;

    // An id that is not one the router would pass on is replaced by the gateway's own.
    for bad in ["short", "has;semicolons-and-is-long-enough"] {
        let r = dyno
            .request(
                "/ops",
                Some(&denied),
                &[("X-Request-ID", bad), ("X-Forwarded-For", "203.0.113.8")],
            )
            .await;
        assert_eq!(r.status, 403);
        let id = r.request_id();
        assert_ne!(id, bad);
        assert_eq!(id.len(), 32, "{id}");
        assert!(db.audit_rows(bad).await.is_empty());
        let rows = db.audit_rows(&id).await;
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].client_ip.as_deref(), Some("203.0.113.8"));
    }
}

#[tokio::test]
async fn heroku_dyno_ends_non_zero_when_console_dies() {
    let (_pg, db) = tls_pg().await;
    let mut dyno = Dyno::start(&db, &[]).await;
    let master = gunicorn_master(&dyno);
    run("kill", &["-KILL", &master.to_string()]);
    // The launcher exits at once (its log says so); honcho ends once the orphaned gunicorn worker
    // has seen its parent gone, which a sync worker checks every `--timeout`/2 s (15 s): on a
    // loaded machine a worker still booting when its master died took longer than 10 s.
    let status = dyno.ended_within(Duration::from_secs(40)).await;
    assert!(!status.success(), "{status}:\n{}", dyno.output());
    assert!(
        dyno.output().contains("exited (status 137)"),
        "{}",
        dyno.output()
    );
}

/// An allowed `GET /slow` through the dyno, sent once Console (`SLOW_STARTED` = `marker`) is
/// working on it: the client's answer, when it comes.
async fn slow_request(
    db: &TestDb,
    dyno: &Dyno,
    marker: &Path,
) -> tokio::task::JoinHandle<std::io::Result<Resp>> {
    let (_, token) = db.admin_with_roles(&["console-user"]).await;
    let addr = dyno.addr();
    let slow = tokio::spawn(async move {
        let req = format!("GET /slow HTTP/1.1\r\nHost: a\r\nConnection: close\r\nCookie: console_session={token}\r\n\r\n");
        send(addr, req.as_bytes()).await
    });
    eventually(
        Duration::from_secs(10),
        "Console working on the slow request",
        || async move { std::fs::metadata(marker).is_ok_and(|m| m.len() > 0) },
    )
    .await;
    slow
}

#[tokio::test]
async fn heroku_dyno_drains_in_flight_requests_on_sigterm_and_exits_zero() {
    let _alone = timed_alone().await;
    let (_pg, db) = tls_pg().await;
    let started = tempfile::NamedTempFile::new().unwrap();
    let marker = started.path().to_str().unwrap().to_string();
    let mut dyno = Dyno::start(&db, &[("SLOW_SECONDS", "2"), ("SLOW_STARTED", &marker)]).await;
    // Allowed and forwarded: Console is working on it.
    let slow = slow_request(&db, &dyno, started.path()).await;
    // Heroku's shutdown: SIGTERM to every process of the dyno (the web process's group).
    let web = dyno.web_pid();
    let sent = Instant::now();
    run("kill", &["-TERM", "--", &format!("-{web}")]);
    let r = slow
        .await
        .unwrap()
        .expect("the in-flight request is answered");
    assert_eq!(r.status, 200, "{}\n{}", r.body_str(), dyno.output());
    let status = dyno.ended_within(Duration::from_secs(30)).await;
    assert!(status.success(), "{status}:\n{}", dyno.output());
    assert!(sent.elapsed() < Duration::from_secs(30));
}

/// A Console request that outlives every grace, and SIGTERM sent to the web process alone
/// (`group`: false, as honcho, a supervisor or a test may) or to its whole process group (true,
/// as Heroku does): either way the stop ends within `GATEWAY_STOP_BUDGET` from the signal, the
/// client's connection is cut, and the launcher says so in its output and its status.
async fn a_request_outliving_the_grace_is_cut_within_the_stop_budget(group: bool) {
    let _alone = timed_alone().await;
    let (_pg, db) = tls_pg().await;
    let started = tempfile::NamedTempFile::new().unwrap();
    let marker = started.path().to_str().unwrap().to_string();
    // The defaults are 20 s and 28 s; smaller here, the same arithmetic.
    let budget = Duration::from_secs(6);
    let mut dyno = Dyno::start(
        &db,
        &[
            ("SLOW_SECONDS", "60"),
            ("SLOW_STARTED", &marker),
            ("GATEWAY_SHUTDOWN_GRACE", "2"),
            ("GATEWAY_STOP_BUDGET", "6"),
            ("GATEWAY_UPSTREAM_READ_TIMEOUT_MS", "120000"),
        ],
    )
    .await;
    let slow = slow_request(&db, &dyno, started.path()).await;
    let web = dyno.web_pid();
    let sent = Instant::now();
    if group {
        run("kill", &["-TERM", "--", &format!("-{web}")]);
    } else {
        run("kill", &["-TERM", &web.to_string()]);
    }
    let status = dyno.ended_within(budget + Duration::from_secs(3)).await;
    let took = sent.elapsed();
    let out = dyno.output();
    assert!(
        !status.success(),
        "a stop that cut a request ends non-zero:\n{out}"
    );
    assert!(
        took < budget + Duration::from_millis(1500),
        "stopped {took:?} after SIGTERM, past the {budget:?} budget:\n{out}"
    );
    // The gateway's grace ran out first: it says how many connections it cut.
    assert!(out.contains("1 connection(s) cut"), "{out}");
    assert!(out.contains("stopped with requests cut"), "{out}");
    // Console's request outlived what was left of the budget: killed, and said so.
    assert!(out.contains("did not stop within what was left"), "{out}");
    let r = slow.await.unwrap();
    assert!(
        r.is_err(),
        "the client got no answer: {:?}",
        r.map(|r| r.status)
    );
}

#[tokio::test]
async fn heroku_sigterm_to_the_web_process_alone_stops_within_the_budget_and_says_a_request_was_cut(
) {
    a_request_outliving_the_grace_is_cut_within_the_stop_budget(false).await;
}

#[tokio::test]
async fn heroku_sigterm_to_the_whole_dyno_stops_within_the_budget_and_says_a_request_was_cut() {
    a_request_outliving_the_grace_is_cut_within_the_stop_budget(true).await;
}

/// SIGHUP to the web process (the launcher) is passed on to the gateway, which re-reads its
/// mapping; the dyno lives on, and SIGTERM still stops it cleanly afterwards.
#[tokio::test]
async fn heroku_sighup_to_the_web_process_reloads_the_gateway_and_ends_nothing() {
    let (_pg, db) = tls_pg().await;
    let mut dyno = Dyno::start(&db, &[]).await;
    let web = dyno.web_pid();
    run("kill", &["-HUP", &web.to_string()]);
    eventually(
        Duration::from_secs(10),
        "the gateway re-read its mapping",
        || async { dyno.output().contains("SIGHUP: reloading the mapping") },
    )
    .await;
    assert!(
        dyno.honcho.try_wait().unwrap().is_none(),
        "{}",
        dyno.output()
    );
    let (_, token) = db.admin_with_roles(&["console-user"]).await;
    assert_eq!(dyno.request("/ops", Some(&token), &[]).await.status, 403);
    run("kill", &["-TERM", &web.to_string()]);
    let status = dyno.ended_within(Duration::from_secs(30)).await;
    assert!(status.success(), "{status}:\n{}", dyno.output());
}

/// A launcher started with SIGHUP ignored (under nohup, or a supervisor that ignores it) cannot
/// trap it, so it cannot pass it on to the gateway: it says so at start, and only then.
#[tokio::test]
async fn heroku_launcher_says_when_it_started_with_sighup_ignored() {
    let slug = slug();
    for ignore in [true, false] {
        let out = Command::new("env")
            .arg("--default-signal=TERM")
            .arg(if ignore {
                "--ignore-signal=HUP"
            } else {
                "--default-signal=HUP"
            })
            .arg("bash")
            .arg(slug.path().join("bin/rbac-gateway-heroku"))
            .args(["web", "true"])
            .env("DATABASE_URL", "postgres://u@127.0.0.1:1/d")
            .env("PORT", "1")
            .env("RBAC_GATEWAY_BIN", "true")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            err.contains("SIGHUP was ignored when this launcher started"),
            ignore,
            "ignored: {ignore}: {err}"
        );
        assert!(!err.contains("SIGTERM was ignored"), "{err}");
    }
}

/// A grace that does not fit the budget, or a budget past Heroku's 30 s, is refused at start.
#[tokio::test]
async fn heroku_launcher_refuses_a_grace_that_does_not_fit_the_stop_budget() {
    let slug = slug();
    for (grace, budget) in [
        ("28", "28"),
        ("27", "28"),
        ("20", "30"),
        ("x", "28"),
        ("20", "-1"),
    ] {
        let out = Command::new("bash")
            .arg(slug.path().join("bin/rbac-gateway-heroku"))
            .args(["web", "true"])
            .env("DATABASE_URL", "postgres://u@127.0.0.1:1/d")
            .env("PORT", "1")
            .env("GATEWAY_SHUTDOWN_GRACE", grace)
            .env("GATEWAY_STOP_BUDGET", budget)
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(64),
            "grace {grace}, budget {budget}"
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("GATEWAY_STOP_BUDGET"), "{err}");
    }
}

#[tokio::test]
async fn heroku_denial_during_a_database_outage_is_503_never_a_403_without_its_row_and_its_row_follows(
) {
    let (pg, db) = tls_pg().await;
    // Sessions cached long enough that the denial needs no database read, only its row.
    let dyno = Dyno::start(&db, &[("GATEWAY_CACHE_TTL", "60")]).await;
    let (_, token) = db.admin_with_roles(&["console-user"]).await;
    // The change feed's first cursor clears what was cached before it: primed after it.
    settle_at(&[dyno.admin]).await;
    let r = dyno.request("/ops", Some(&token), &[]).await;
    assert_eq!(r.status, 403, "primes the cache");
    assert_eq!(db.audit_rows(&r.request_id()).await.len(), 1);
    db.pool.close().await;
    pg.pg("stop");
    let r = dyno.request("/ops", Some(&token), &[]).await;
    assert_eq!(r.status, 503, "{}\n{}", r.body_str(), dyno.output());
    let during = r.request_id();
    assert!(
        metric_at(
            dyno.admin,
            "rbac_gateway_requests_total{decision=\"unavailable\"}"
        )
        .await
            >= 1.0
    );
    // Nothing waits on the dyno's disk for a database that may never see it.
    let spooled: Vec<_> = std::fs::read_dir(dyno.slug.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("spool"))
        .collect();
    assert!(spooled.is_empty(), "{spooled:?}");
    pg.pg("start");
    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    let db = TestDb {
        url: db.url.clone(),
        pool,
    };
    // The denial answered 503 gets its row once the database answers (the row records the
    // decision, whatever the answer: docs/design/durability.md), exactly once.
    eventually_explained(
        Duration::from_secs(15),
        "the row of the denial answered 503 stored",
        || async { !db.audit_rows(&during).await.is_empty() },
        || async { format!(":\n{}", dyno.output()) },
    )
    .await;
    assert_eq!(db.audit_rows(&during).await.len(), 1);
    // Back: denied with its row again.
    eventually(
        Duration::from_secs(15),
        "403 with its row once the database is back",
        || {
            let (dyno, db, token) = (&dyno, &db, &token);
            async move {
                let r = dyno.request("/ops", Some(token), &[]).await;
                r.status == 403 && db.audit_rows(&r.request_id()).await.len() == 1
            }
        },
    )
    .await;
}

// ---------------------------------------------------------------------------------------------
// With Heroku's PgBouncer buildpack (docs/deploy/heroku.md, "With Heroku's PgBouncer buildpack").

/// Web dynos, each with its own PgBouncer (the buildpack runs one in every dyno).
const PGB_DYNOS: usize = 2;
const PGB_REVOCATIONS: usize = 3;
const REVOCATION_BOUND: Duration = Duration::from_secs(1);
/// How long the test waits for a revocation, to say how far off the bound it is.
const REVOKE_LIMIT: Duration = Duration::from_secs(7);

/// The `web:` line for the buildpack, as docs/deploy/heroku.md prints it.
fn printed_pgbouncer_web_line() -> String {
    let page = std::fs::read_to_string(root().join("docs/deploy/heroku.md")).unwrap();
    page.lines()
        .find(|l| l.starts_with("web: ") && l.contains("bin/start-pgbouncer"))
        .expect("docs/deploy/heroku.md prints a `web:` line with bin/start-pgbouncer")
        .to_string()
}

/// The slug with the buildpack: the Procfile's `web:` line is docs/deploy/heroku.md's buildpack variant as
/// printed (`release:` as in deploy/heroku/Procfile), and `bin/start-pgbouncer` a stand-in for
/// the buildpack's script, which cannot be run here (it is the buildpack's, not fetched offline).
/// That script starts the dyno's PgBouncer (transaction pooling, TLS to Heroku Postgres) and runs
/// its command with `DATABASE_URL` replaced by `DATABASE_URL_PGBOUNCER`, the PgBouncer on
/// 127.0.0.1 (plain text, no `sslmode`). Here the test starts Debian's pgbouncer with those
/// settings (`server_tls_sslmode = require`), and the stand-in gives the command the same
/// environment the buildpack's script would.
fn pgbouncer_slug() -> tempfile::TempDir {
    let dir = slug();
    let d = dir.path();
    let procfile = std::fs::read_to_string(d.join("Procfile")).unwrap();
    let release = procfile
        .lines()
        .find(|l| l.starts_with("release:"))
        .expect("deploy/heroku/Procfile has a release: line");
    std::fs::write(
        d.join("Procfile"),
        format!("{}\n{release}\n", printed_pgbouncer_web_line()),
    )
    .unwrap();
    let start = d.join("bin/start-pgbouncer");
    std::fs::write(
        &start,
        "#!/usr/bin/env bash\n\
         # Test stand-in for heroku/pgbouncer's bin/start-pgbouncer: the dyno's PgBouncer is the\n\
         # test's; the command gets the environment the buildpack's script gives it.\n\
         set -euo pipefail\n\
         export DATABASE_URL=${DATABASE_URL_PGBOUNCER:?}\n\
         exec \"$@\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&start, std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// The environment of the dyno's `rbac-gateway serve` process.
fn gateway_env(dyno: &Dyno) -> HashMap<String, String> {
    let web = dyno.web_pid();
    let all = descendants(web);
    let (pid, _) = all
        .iter()
        .find(|(_, c)| c.contains("rbac-gateway serve"))
        .unwrap_or_else(|| panic!("no rbac-gateway serve under the web process {web}: {all:?}"));
    std::fs::read(format!("/proc/{pid}/environ"))
        .unwrap()
        .split(|b| *b == 0)
        .filter_map(|kv| {
            let kv = String::from_utf8_lossy(kv);
            let (k, v) = kv.split_once('=')?;
            Some((k.to_string(), v.to_string()))
        })
        .collect()
}

/// honcho's output without its `HH:MM:SS web.1 | ` prefixes: the processes' own lines.
fn unprefixed(text: &str) -> String {
    text.lines()
        .map(|l| l.split_once("| ").map_or(l, |(_, rest)| rest))
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test]
async fn heroku_dynos_with_the_pgbouncer_buildpack_allow_deny_with_its_row_and_revoke_everywhere_within_a_second(
) {
    let _alone = timed_alone().await;
    let started = Instant::now();
    let (_pg, db) = tls_pg().await;
    // Each dyno as docs/deploy/heroku.md's buildpack variant sets it up: DATABASE_URL (Heroku Postgres,
    // TLS) captured as GATEWAY_DIRECT_DATABASE_URL by the Procfile line, then pointed at the
    // dyno's PgBouncer by start-pgbouncer. Heroku's URL names a remote host, to which the
    // launcher adds sslmode=require; this server is on 127.0.0.1, which the launcher leaves as
    // it is (the dyno's PgBouncer), so its URL carries sslmode=require itself.
    let mut bouncers = Vec::new();
    let mut dynos = Vec::new();
    for _ in 0..PGB_DYNOS {
        // The buildpack's pooling: transaction mode, one server connection per dyno
        // (PGBOUNCER_DEFAULT_POOL_SIZE's default), TLS to the server.
        let bouncer =
            PgBouncer::start_with(&db.url, PoolMode::Transaction, 1, ServerTls::Require).await;
        let pooled = bouncer.url(&db);
        let dyno = Dyno::start_in(
            pgbouncer_slug(),
            &db,
            &[
                ("DATABASE_URL_PGBOUNCER", pooled.as_str()),
                // Only the change feed can make a revocation take effect within the bound.
                ("GATEWAY_CACHE_TTL", "60"),
            ],
        )
        .await;
        let env = gateway_env(&dyno);
        assert_eq!(
            env.get("DATABASE_URL"),
            Some(&pooled),
            "the gateway's pool goes through the dyno's PgBouncer"
        );
        assert_eq!(
            env.get("GATEWAY_DIRECT_DATABASE_URL"),
            Some(&db.url),
            "LISTEN and the sweep's lock go to the server itself, over TLS"
        );
        bouncers.push(bouncer);
        dynos.push(dyno);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let readyz = sample_readyz(dynos.iter().map(|d| d.admin).collect(), stop.clone());

    // On every dyno, each session seen for the first time (its lookup through PgBouncer).
    let (admin, token) = db.admin_with_roles(&["console-audit-user"]).await;
    let (denied_admin, denied) = db.admin_with_roles(&["console-user"]).await;
    let router = [("X-Forwarded-For", "203.0.113.7")];
    for (n, dyno) in dynos.iter().enumerate() {
        let r = dyno
            .request(&format!("/console/customers/{n}"), Some(&token), &router)
            .await;
        assert_eq!(
            r.status,
            200,
            "dyno {n}: {}\n{}",
            r.body_str(),
            dyno.output()
        );
        let view: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(view["x_rbac_admin_id"], admin.as_str(), "dyno {n}");
        let r = dyno.request("/ops", Some(&denied), &router).await;
        assert_eq!(
            r.status,
            403,
            "dyno {n}: {}\n{}",
            r.body_str(),
            dyno.output()
        );
        let rows = db.audit_rows(&r.request_id()).await;
        assert_eq!(rows.len(), 1, "dyno {n}: {rows:?}");
        assert_eq!(rows[0].event_type, "access_denied");
        assert_eq!(rows[0].admin_id.as_deref(), Some(denied_admin.as_str()));
        assert_eq!(rows[0].client_ip.as_deref(), Some("203.0.113.7"));
    }

    // Revocations of sessions every dyno has cached, each measured from its commit until every
    // dyno sends it to the login page.
    let mut revocations = Vec::new();
    for n in 0..PGB_REVOCATIONS {
        let token = db.session(&admin).await;
        let path = format!("/console/customers/revoke-{n}");
        for (d, dyno) in dynos.iter().enumerate() {
            let r = dyno.request(&path, Some(&token), &[]).await;
            assert_eq!(r.status, 200, "dyno {d} caches the session to revoke");
        }
        db.revoke_session(&token).await;
        let committed = Instant::now();
        let mut took = vec![None::<Duration>; dynos.len()];
        while took.iter().any(Option::is_none) && committed.elapsed() < REVOKE_LIMIT {
            for (d, dyno) in dynos.iter().enumerate() {
                if took[d].is_none() && dyno.request(&path, Some(&token), &[]).await.status == 302 {
                    took[d] = Some(committed.elapsed());
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        revocations.push(took);
    }
    stop.store(true, Ordering::SeqCst);
    let samples = readyz.await.unwrap();

    let refused: Vec<Duration> = revocations.iter().flatten().flatten().copied().collect();
    let worst = refused.iter().max().copied();
    let not_ready: Vec<&ReadySample> = samples.iter().filter(|s| s.1 != Ok(200)).collect();
    println!(
        "heroku pgbouncer: {PGB_DYNOS} dynos, revocation worst {worst:?} of {} (per revocation, per dyno {revocations:?}), \
         /readyz non-200 {} of {}, {:.1} s",
        refused.len(),
        not_ready.len(),
        samples.len(),
        started.elapsed().as_secs_f64()
    );

    let mut problems = Vec::new();
    for (n, took) in revocations.iter().enumerate() {
        if took.iter().any(|t| t.is_none_or(|t| t >= REVOCATION_BOUND)) {
            problems.push(format!(
                "revoked session {n} refused after (per dyno) {took:?} from the commit (bound {REVOCATION_BOUND:?}; None: not within {REVOKE_LIMIT:?})"
            ));
        }
    }
    if let Some((d, status, body)) = not_ready.first() {
        problems.push(format!(
            "/readyz not 200 in {} of {} samples, e.g. dyno {d} {status:?}: {}",
            not_ready.len(),
            samples.len(),
            body.trim()
        ));
    }
    for (d, dyno) in dynos.iter().enumerate() {
        let lines = database_complaints(&unprefixed(&dyno.output()));
        if !lines.is_empty() {
            problems.push(format!(
                "dyno {d} logged {} database warnings or errors, e.g.:\n    {}",
                lines.len(),
                lines[..lines.len().min(4)].join("\n    ")
            ));
        }
    }
    for (d, bouncer) in bouncers.iter().enumerate() {
        let log = bouncer.log();
        let lines: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("WARNING") || l.contains("ERROR"))
            .collect();
        if !lines.is_empty() {
            problems.push(format!(
                "dyno {d}'s pgbouncer logged {} warnings or errors, e.g.:\n    {}",
                lines.len(),
                lines[..lines.len().min(4)].join("\n    ")
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "Heroku dynos with the PgBouncer buildpack variant:\n- {}",
        problems.join("\n- ")
    );
}
