//! Console's Heroku web dyno as printed (deploy/heroku): the Procfile run by honcho (which runs
//! Procfiles the way Heroku does) with `PORT` set, the launcher `bin/rbac-gateway-heroku`, the
//! real binary as `bin/rbac-gateway`, the gunicorn Console stand-in, and a PostgreSQL that serves
//! TLS only (`sslmode=require`, as Heroku Postgres).

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
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
    let conf = data.join("postgresql.conf");
    let mut text = std::fs::read_to_string(&conf).unwrap();
    text.push_str("\nssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n");
    std::fs::write(&conf, text).unwrap();
    std::fs::write(
        data.join("pg_hba.conf"),
        "local all all trust\nhostssl all all 127.0.0.1/32 trust\n",
    )
    .unwrap();
    pg.pg("restart");
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
    let mut cmd = Command::new("honcho");
    cmd.args(args)
        .current_dir(slug)
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
    cmd.spawn().expect("honcho (scripts/setup.sh installs it)")
}

impl Dyno {
    /// Runs the release phase, then starts the web process; waits until the gateway is ready.
    async fn start(db: &TestDb, env: &[(&str, &str)]) -> Dyno {
        let slug = slug();
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
        let deadline = Instant::now() + Duration::from_secs(30);
        let admin = loop {
            let text = std::fs::read_to_string(&out).unwrap_or_default();
            if let Some(a) = json_lines(&text)
                .find(|v| v["message"] == "listening")
                .and_then(|v| v["admin_listen"].as_str().and_then(|a| a.parse().ok()))
            {
                break a;
            }
            if let Ok(Some(s)) = honcho.try_wait() {
                panic!("the dyno ended ({s}) before listening:\n{text}");
            }
            assert!(Instant::now() < deadline, "never listening:\n{text}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
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
        let deadline = Instant::now() + limit;
        loop {
            if let Some(s) = self.honcho.try_wait().unwrap() {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "the dyno did not end within {limit:?}:\n{}",
                self.output()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
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
            let deadline = Instant::now() + Duration::from_secs(10);
            while self.honcho.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
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
    let logged = json_lines(&dyno.output())
        .any(|v| v["message"] == "denied" && v["request_id"] == heroku_id);
    assert!(logged, "the denial's log line carries the router's id");

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
    let status = dyno.ended_within(Duration::from_secs(10)).await;
    assert!(!status.success(), "{status}:\n{}", dyno.output());
    assert!(
        dyno.output().contains("exited (status 137)"),
        "{}",
        dyno.output()
    );
}

#[tokio::test]
async fn heroku_dyno_drains_in_flight_requests_on_sigterm_and_exits_zero() {
    let (_pg, db) = tls_pg().await;
    let started = tempfile::NamedTempFile::new().unwrap();
    let marker = started.path().to_str().unwrap().to_string();
    let mut dyno = Dyno::start(&db, &[("SLOW_SECONDS", "2"), ("SLOW_STARTED", &marker)]).await;
    let (_, token) = db.admin_with_roles(&["console-user"]).await;
    let addr = dyno.addr();
    let slow = tokio::spawn(async move {
        let req = format!("GET /slow HTTP/1.1\r\nHost: a\r\nConnection: close\r\nCookie: console_session={token}\r\n\r\n");
        send(addr, req.as_bytes()).await
    });
    // Allowed and forwarded: Console is working on it.
    let path = started.path().to_path_buf();
    eventually(
        Duration::from_secs(10),
        "Console working on the slow request",
        || {
            let path = path.clone();
            async move { std::fs::metadata(&path).is_ok_and(|m| m.len() > 0) }
        },
    )
    .await;
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

#[tokio::test]
async fn heroku_denial_during_a_database_outage_is_503_never_a_403_without_its_row() {
    let (pg, db) = tls_pg().await;
    // Sessions cached long enough that the denial needs no database read, only its row.
    let dyno = Dyno::start(&db, &[("GATEWAY_CACHE_TTL", "60")]).await;
    let (_, token) = db.admin_with_roles(&["console-user"]).await;
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
    assert!(db.audit_rows(&during).await.is_empty());
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
