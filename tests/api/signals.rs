//! Every signal the documents name, in every mapping mode (issue 50): SIGHUP re-reads the mapping
//! (the file, or the active version in the database) and never ends the process; SIGTERM and
//! SIGINT drain and exit 0; the systemd unit's `ExecReload` lines, run as systemd runs them,
//! reload a running gateway in each mode. Each mode with and without the kill switch.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::helpers::*;
use crate::mapping_store::{mapping, ok};

/// Where the gateway's mapping comes from.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    File,
    Database,
    /// `--mapping-source database` before any version is active: not listening yet.
    DatabaseWaiting,
}

/// A gateway process started by these tests (the waiting mode never reaches the "listening"
/// line that `Gateway::start` waits for).
struct Proc {
    child: Child,
    admin: std::net::SocketAddr,
    log: PathBuf,
    routes: PathBuf,
    _dir: tempfile::TempDir,
}

impl Proc {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn signal(&self, sig: &str) {
        signal(self.pid(), sig);
    }

    fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    async fn readyz(&self) -> Option<Resp> {
        admin_get_at(self.admin, "/readyz").await.ok()
    }

    /// Waits (10 s at most) for the process to exit; its exit code.
    async fn exited(&mut self) -> Option<i32> {
        let log = self.log.clone();
        let what = || {
            format!(
                "still running 10 s after the signal; log:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            )
        };
        exited_within(&mut self.child, Duration::from_secs(10), what)
            .await
            .code()
    }

    /// Waits (10 s at most) until the log holds `n` lines containing `what`.
    async fn logged(&self, what: &str, n: usize) {
        eventually(Duration::from_secs(10), what, || async {
            self.log().matches(what).count() >= n
        })
        .await;
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Version A and B of a mapping: A protects `GET /ops` (302 without a session), B makes it
/// public. Written in `dir`; (A, B).
fn versions(dir: &Path) -> (PathBuf, PathBuf) {
    let a = std::fs::read_to_string(core_routes()).unwrap();
    let protected = "path = \"/ops\"\nroles = [\"console-manager\"]";
    assert!(a.contains(protected), "core.toml changed: adjust the test");
    let b = a.replace(protected, "path = \"/ops\"\naccess = \"public\"");
    let (pa, pb) = (dir.join("a.toml"), dir.join("b.toml"));
    std::fs::write(&pa, a).unwrap();
    std::fs::write(&pb, b).unwrap();
    (pa, pb)
}

fn version(path: &Path) -> String {
    rbac_gateway::policy::mapping::version_of(&std::fs::read(path).unwrap())
}

fn push(db: &TestDb, file: &Path) {
    ok(mapping(&db.url, &["push", file.to_str().unwrap()]));
}

/// The environment the systemd unit gives the gateway (its `Environment=` lines and an env
/// file), for `mode`.
fn unit_env(mode: Mode, db: &TestDb, routes: &Path, kill_switch: bool) -> Vec<(String, String)> {
    let mut env = vec![
        ("GATEWAY_ROUTES".to_string(), routes.display().to_string()),
        ("DATABASE_URL".to_string(), db.url.clone()),
    ];
    if mode != Mode::File {
        env.push(("GATEWAY_MAPPING_SOURCE".into(), "database".into()));
    }
    if kill_switch {
        env.push(("FLAG_RBAC_V2".into(), "0".into()));
    }
    env
}

/// Starts a gateway in `mode` with `routes` as its file; waits until it serves, or (waiting
/// mode) until its admin port says why it is not ready.
async fn start(
    mode: Mode,
    db: &TestDb,
    up: &Upstream,
    routes_from: &Path,
    kill_switch: bool,
    extra: &[&str],
) -> Proc {
    let dir = tempfile::tempdir().unwrap();
    let routes = dir.path().join("routes.toml");
    std::fs::copy(routes_from, &routes).unwrap();
    let log = dir.path().join("gateway.log");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rbac-gateway"));
    cmd.arg("serve")
        .args(["--listen", "127.0.0.1:0", "--threads", "1"])
        .args(["--admin-listen", "127.0.0.1:0"])
        .arg("--upstream")
        .arg(up.addr.to_string())
        .arg("--audit-spool")
        .arg(dir.path().join("audit.spool"))
        .args(extra)
        .env_remove("FLAG_RBAC_V2")
        .env_remove("GATEWAY_MAPPING_SOURCE")
        .env("RUST_LOG", "info")
        .env("GATEWAY_LOG_FORMAT", "json")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    for (k, v) in unit_env(mode, db, &routes, kill_switch) {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let admin = admin_listening(&mut child, &log).await;
    let p = Proc {
        child,
        admin,
        log,
        routes,
        _dir: dir,
    };
    let want = if mode == Mode::DatabaseWaiting {
        "no mapping version is active"
    } else {
        "ready"
    };
    eventually(Duration::from_secs(20), "the gateway's /readyz", || async {
        p.readyz()
            .await
            .is_some_and(|r| r.body_str().contains(want))
    })
    .await;
    if kill_switch {
        assert!(p.log().contains("kill switch on"), "{}", p.log());
    }
    p
}

/// Waits until `/readyz` reports mapping `version`.
async fn serves_version(p: &Proc, version: &str) {
    let want = format!("mapping={version}");
    eventually(Duration::from_secs(10), &want, || async {
        p.readyz()
            .await
            .is_some_and(|r| r.status == 200 && r.body_str().contains(&want))
    })
    .await;
}

/// The unit's `ExecReload=` command lines, run in order as systemd runs them (each must succeed
/// before the next runs), with the gateway's environment; the binary and `$MAINPID` are this
/// test's. Ok, or the failing line and its output.
fn exec_reload(p: &Proc, env: &[(String, String)]) -> Result<(), String> {
    let unit = std::fs::read_to_string(root().join("deploy/systemd/rbac-gateway.service")).unwrap();
    let lines: Vec<&str> = unit
        .lines()
        .filter_map(|l| l.strip_prefix("ExecReload="))
        .collect();
    assert!(
        lines.iter().any(|l| l.contains("kill -HUP $MAINPID")),
        "the unit's ExecReload no longer sends SIGHUP: {lines:?}"
    );
    for line in lines {
        let line = line
            .replace(
                "/usr/local/bin/rbac-gateway",
                env!("CARGO_BIN_EXE_rbac-gateway"),
            )
            .replace("$MAINPID", &p.pid().to_string());
        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg(&line).env_remove("FLAG_RBAC_V2");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        if !out.status.success() {
            return Err(format!(
                "{line}: exit {:?}\n{}{}",
                out.status.code(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    Ok(())
}

/// One mode, one kill-switch setting: SIGHUP (twice, and through the unit's `ExecReload`)
/// re-reads and the process lives on; then `stop` (SIGTERM or SIGINT) ends it with status 0.
async fn one_mode(mode: Mode, kill_switch: bool, stop: &str) {
    let db = TestDb::new().await;
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = versions(dir.path());
    let (va, vb) = (version(&a), version(&b));
    if mode == Mode::Database {
        push(&db, &a);
    }
    let mut p = start(mode, &db, &up, &a, kill_switch, &[]).await;
    let env = unit_env(mode, &db, &p.routes, kill_switch);
    match mode {
        Mode::File => {
            serves_version(&p, &va).await;
            p.signal("HUP");
            p.logged("SIGHUP: reloading the mapping", 1).await;
            assert!(p.alive(), "SIGHUP ended the gateway; log:\n{}", p.log());
            // The unit's reload, after the file changed: checked, then applied.
            std::fs::copy(&b, &p.routes).unwrap();
            exec_reload(&p, &env).unwrap();
            p.logged("SIGHUP: reloading the mapping", 2).await;
            serves_version(&p, &vb).await;
            // A broken file: `check` fails the reload and the live mapping stays.
            std::fs::write(&p.routes, "[[route]]\nmethods = [\"GET\"]\n").unwrap();
            let refused = exec_reload(&p, &env).unwrap_err();
            assert!(refused.contains("rbac-gateway check"), "{refused}");
            assert_eq!(p.logged_count("SIGHUP: reloading the mapping"), 2);
        }
        Mode::Database => {
            serves_version(&p, &va).await;
            p.signal("HUP");
            p.logged("SIGHUP: reading the active mapping version", 1)
                .await;
            assert!(p.alive(), "SIGHUP ended the gateway; log:\n{}", p.log());
            push(&db, &b);
            exec_reload(&p, &env).unwrap();
            p.logged("SIGHUP: reading the active mapping version", 2)
                .await;
            serves_version(&p, &vb).await;
        }
        Mode::DatabaseWaiting => {
            p.signal("HUP");
            p.logged("SIGHUP: reading the active mapping version", 1)
                .await;
            assert!(p.alive(), "SIGHUP ended the gateway; log:\n{}", p.log());
            // The unit's reload says why it cannot reload yet, and the gateway waits on.
            let refused = exec_reload(&p, &env).unwrap_err();
            assert!(
                refused.contains("no mapping version is active"),
                "{refused}"
            );
            assert!(p.alive());
            push(&db, &b);
            exec_reload(&p, &env).unwrap();
            serves_version(&p, &vb).await;
            assert!(p.alive());
        }
    }
    assert!(p.log().contains("\"message\":\"mapping loaded\""));
    p.signal(stop);
    let code = p.exited().await;
    assert_eq!(code, Some(0), "{stop}: exit status; log:\n{}", p.log());
    let log = p.log();
    assert!(log.contains("\"message\":\"shut down\""), "{log}");
    assert!(log.contains(&format!("\"signal\":\"SIG{stop}\"")), "{log}");
}

impl Proc {
    fn logged_count(&self, what: &str) -> usize {
        self.log().matches(what).count()
    }
}

#[tokio::test]
async fn file_mode_reloads_on_sighup_and_drains_on_sigterm() {
    one_mode(Mode::File, false, "TERM").await;
}

#[tokio::test]
async fn file_mode_with_the_kill_switch_reloads_on_sighup_and_drains_on_sigint() {
    one_mode(Mode::File, true, "INT").await;
}

#[tokio::test]
async fn database_mode_rereads_on_sighup_and_drains_on_sigint() {
    one_mode(Mode::Database, false, "INT").await;
}

#[tokio::test]
async fn database_mode_with_the_kill_switch_rereads_on_sighup_and_drains_on_sigterm() {
    one_mode(Mode::Database, true, "TERM").await;
}

#[tokio::test]
async fn database_mode_waiting_for_a_version_lives_through_sighup_and_drains_on_sigterm() {
    one_mode(Mode::DatabaseWaiting, false, "TERM").await;
}

#[tokio::test]
async fn database_mode_waiting_with_the_kill_switch_lives_through_sighup_and_drains_on_sigint() {
    one_mode(Mode::DatabaseWaiting, true, "INT").await;
}

/// SIGTERM and SIGINT before any version is active: the gateway stops at once, status 0, having
/// served nothing (it never listened).
#[tokio::test]
async fn a_gateway_waiting_for_its_first_version_stops_cleanly() {
    let db = TestDb::new().await;
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (a, _) = versions(dir.path());
    for (stop, kill_switch) in [("TERM", false), ("INT", true)] {
        let mut p = start(Mode::DatabaseWaiting, &db, &up, &a, kill_switch, &[]).await;
        p.signal(stop);
        assert_eq!(p.exited().await, Some(0), "log:\n{}", p.log());
        let log = p.log();
        assert!(
            log.contains("stopped before a mapping version was loaded"),
            "{log}"
        );
        assert!(!log.contains("\"message\":\"listening\""), "{log}");
    }
}

/// A request still in flight when `--shutdown-grace` runs out is cut: the gateway says so in
/// its log and exits 1, so a supervisor (the Heroku launcher, systemd) can tell.
#[tokio::test]
async fn a_request_cut_by_the_grace_period_is_reported_in_the_exit_status() {
    let db = TestDb::new().await;
    let up = Upstream::start().await;
    let mut p = start(
        Mode::File,
        &db,
        &up,
        &core_routes(),
        false,
        &["--shutdown-grace", "1"],
    )
    .await;
    let listen = {
        let log = p.log();
        let line = log
            .lines()
            .find(|l| l.contains("\"message\":\"listening\""))
            .expect("the listening line")
            .to_string();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        v["listen"].as_str().unwrap().parse().unwrap()
    };
    // A public route held by Console for 8 s: longer than the 1 s grace.
    let slow = tokio::spawn(async move {
        send(
            listen,
            b"GET /auth/login HTTP/1.1\r\nHost: a\r\nX-Test-Delay-Ms: 8000\r\nConnection: close\r\n\r\n",
        )
        .await
    });
    eventually(
        Duration::from_secs(5),
        "Console has the request",
        || async { up.connections.load(std::sync::atomic::Ordering::SeqCst) >= 1 },
    )
    .await;
    p.signal("TERM");
    assert_eq!(p.exited().await, Some(1), "log:\n{}", p.log());
    let log = p.log();
    assert!(log.contains("shutdown grace period over"), "{log}");
    assert!(log.contains("\"connections\":1"), "{log}");
    assert!(log.contains("1 connection(s) cut"), "{log}");
    assert!(
        slow.await.unwrap().is_err(),
        "the cut request got no answer"
    );
}
