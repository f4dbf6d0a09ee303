//! Mapping versions in the database (issue 46): `mapping push|activate|rollback|history|show`
//! and gateways started with `--mapping-source database`, against real PostgreSQL and real
//! gateway processes.
//!
//! The probe: `GET /ops` without a session. Version A (tests/fixtures/core.toml) protects it
//! (302 to the login page); version B makes it public (the upstream's 200). No session is
//! resolved and no audit row written, so the answer depends on the mapping alone.

use std::process::Output;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::cli::bin;
use crate::helpers::*;

const OPS_PROTECTED: &str = "path = \"/ops\"\nroles = [\"console-manager\"]";
const OPS_PUBLIC: &str = "path = \"/ops\"\naccess = \"public\"";

/// Version A and B of the mapping, written in `dir`: (path of A, path of B).
fn two_versions(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let a = std::fs::read_to_string(core_routes()).unwrap();
    assert!(
        a.contains(OPS_PROTECTED),
        "core.toml changed: adjust the probe"
    );
    let b = a.replace(OPS_PROTECTED, OPS_PUBLIC);
    let (pa, pb) = (dir.join("a.toml"), dir.join("b.toml"));
    std::fs::write(&pa, a).unwrap();
    std::fs::write(&pb, b).unwrap();
    (pa, pb)
}

fn version_of(path: &std::path::Path) -> String {
    rbac_gateway::policy::mapping::version_of(&std::fs::read(path).unwrap())
}

/// `rbac-gateway mapping ARGS... --database-url URL`.
pub(crate) fn mapping(url: &str, args: &[&str]) -> Output {
    bin()
        .arg("mapping")
        .args(args)
        .arg("--database-url")
        .arg(url)
        .output()
        .unwrap()
}

pub(crate) fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

async fn db_gateway(db: &TestDb, up: &Upstream, extra: &[&str]) -> Gateway {
    let mut opts = GatewayOpts::new(core_routes(), db, up.addr)
        .arg("--mapping-source")
        .arg("database");
    for a in extra {
        opts = opts.arg(a);
    }
    Gateway::start(opts).await
}

async fn count(db: &TestDb, table: &str) -> i64 {
    sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
        .fetch_one(&db.pool)
        .await
        .unwrap()
}

/// When the latest activation's transaction started (`now()`, before its commit), in seconds
/// since the epoch: the latency measured from it is an upper bound of the one from the commit.
async fn last_activation_at(db: &TestDb) -> f64 {
    sqlx::query_scalar::<_, f64>(
        "SELECT extract(epoch FROM activated_at_utc)::float8 FROM rbac_mapping_activations ORDER BY id DESC LIMIT 1",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap()
}

fn now_epoch() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// Waits (5 s at most) until every gateway answers `GET /ops` with `status`; per gateway, the
/// seconds from the latest activation's start to the first such answer.
async fn reached(db: &TestDb, gws: &[&Gateway], status: u16, what: &str) -> Vec<f64> {
    let since = last_activation_at(db).await;
    let waits = gws.iter().map(|gw| async move {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let got = gw.status("/ops", None).await;
            let at = now_epoch();
            if got == status {
                return at - since;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: GET /ops still {got}, not {status}, 5 s after the activation; log:\n{}",
                gw.log()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    futures_util::future::join_all(waits).await
}

#[tokio::test]
async fn push_activate_rollback_reach_three_gateways_within_a_second() {
    let _alone = timed_alone().await;
    let db = TestDb::new().await;
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = two_versions(dir.path());
    let (va, vb) = (version_of(&a), version_of(&b));
    let out = ok(mapping(
        &db.url,
        &[
            "push",
            a.to_str().unwrap(),
            "--message",
            "baseline",
            "--actor",
            "alice",
        ],
    ));
    assert!(
        out.contains(&format!("mapping version {va} active")),
        "{out}"
    );
    let g1 = db_gateway(&db, &up, &[]).await;
    let g2 = db_gateway(&db, &up, &[]).await;
    let g3 = db_gateway(&db, &up, &[]).await;
    let gws = [&g1, &g2, &g3];
    for gw in gws {
        assert_eq!(gw.status("/ops", None).await, 302);
        let ready = gw.admin_get("/readyz").await;
        assert_eq!(ready.status, 200);
        assert!(ready.body_str().contains(&format!("mapping={va}")));
    }
    let mut worst: f64 = 0.0;
    let mut report = Vec::new();

    ok(mapping(
        &db.url,
        &[
            "push",
            b.to_str().unwrap(),
            "-m",
            "open /ops",
            "--actor",
            "bob",
        ],
    ));
    let t = reached(&db, &gws, 200, "push").await;
    report.push(("push", t.clone()));

    ok(mapping(&db.url, &["activate", &va, "--actor", "carol"]));
    let t2 = reached(&db, &gws, 302, "activate").await;
    report.push(("activate", t2));

    let out = ok(mapping(&db.url, &["rollback", "--actor", "dave"]));
    assert!(
        out.contains(&format!("mapping version {vb} active")),
        "{out}"
    );
    let t3 = reached(&db, &gws, 200, "rollback").await;
    report.push(("rollback", t3));

    for (what, ts) in &report {
        println!(
            "mapping {what}: applied on 3 gateways after {} ms (from the activation's transaction start)",
            ts.iter()
                .map(|t| format!("{:.0}", t * 1000.0))
                .collect::<Vec<_>>()
                .join(", ")
        );
        for t in ts {
            worst = worst.max(*t);
        }
    }
    println!("mapping activation worst latency: {:.0} ms", worst * 1000.0);
    assert!(
        worst < 1.0,
        "an activation took {worst:.3} s to reach a gateway"
    );

    for gw in gws {
        // The same log line as a file reload, naming the changed rule; the same metrics.
        let log = gw.log();
        assert!(
            log.lines()
                .any(|l| l.contains("mapping reloaded") && l.contains("GET /ops")),
            "{log}"
        );
        assert!(
            gw.metric("rbac_gateway_mapping_reloads_total{result=\"success\"}")
                .await
                >= 3.0
        );
        assert_eq!(
            gw.metric(&format!("rbac_gateway_mapping_info{{version=\"{vb}\"}}"))
                .await,
            1.0
        );
    }

    // History: every activation, who and why, and what it changed in diff's terms.
    let hist = ok(mapping(&db.url, &["history", "--json"]));
    let h: serde_json::Value = serde_json::from_str(&hist).unwrap();
    assert_eq!(h["active"], vb.as_str());
    let acts = h["activations"].as_array().unwrap();
    let kinds: Vec<&str> = acts.iter().map(|a| a["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["push", "push", "activate", "rollback"]);
    assert_eq!(acts[1]["actor"], "bob");
    assert_eq!(acts[1]["message"], "open /ops");
    assert_eq!(acts[1]["previous_version"], va.as_str());
    let rules = acts[1]["changed"]["rules"].to_string();
    assert!(rules.contains("GET /ops"), "{rules}");
    assert_eq!(acts[3]["previous_version"], va.as_str());
    assert_eq!(acts[3]["active"], true);
    let table = ok(mapping(&db.url, &["history"]));
    assert!(table.contains("(rollback) by dave"), "{table}");
    // Show: byte for byte.
    let shown = mapping(&db.url, &["show", &vb]);
    assert!(shown.status.success());
    assert_eq!(shown.stdout, std::fs::read(&b).unwrap());
    // `active` and `previous` name the latest activation's version and the one it replaced;
    // --json gives the version named and its text.
    let previous = mapping(&db.url, &["show", "previous"]);
    assert!(previous.status.success());
    assert_eq!(previous.stdout, std::fs::read(&a).unwrap());
    let j: serde_json::Value =
        serde_json::from_str(&ok(mapping(&db.url, &["show", "active", "--json"]))).unwrap();
    assert_eq!(j["version"], vb.as_str());
    assert_eq!(
        j["text"].as_str().unwrap().as_bytes(),
        std::fs::read(&b).unwrap()
    );
    // An unknown version: bad input (64), named, nothing on stdout.
    let unknown = mapping(&db.url, &["show", "0123456789ab", "--json"]);
    assert_eq!(unknown.status.code(), Some(64));
    assert!(unknown.stdout.is_empty());
    let err = String::from_utf8_lossy(&unknown.stderr);
    assert!(err.contains("0123456789ab"), "{err}");
}

#[tokio::test]
async fn a_file_check_rejects_is_never_stored() {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let core = std::fs::read_to_string(core_routes()).unwrap();
    let cases = [
        // Invalid: an unknown key (usage, 64).
        (
            "invalid.toml",
            core.replacen("[[route]]\n", "[[route]]\ncolour = \"red\"\n", 1),
            64,
        ),
        // Valid TOML, but a role the database lacks (the check's problems, 1).
        (
            "unknown-role.toml",
            core.replace("console-manager", "console-mangaer"),
            1,
        ),
    ];
    for (name, text, code) in cases {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        let pushed = mapping(&db.url, &["push", path.to_str().unwrap()]);
        assert_eq!(pushed.status.code(), Some(code), "{name}");
        // The same messages as `check`.
        let checked = bin()
            .arg("check")
            .arg("--routes")
            .arg(&path)
            .arg("--database-url")
            .arg(&db.url)
            .output()
            .unwrap();
        assert_eq!(checked.status.code(), Some(code));
        // The same messages as `check`, whose invariants section (the gateway's settings and
        // the database, not the file) `push` does not print.
        let checked_text = String::from_utf8_lossy(&checked.stdout);
        let mut in_section = false;
        let checked_file: String = checked_text
            .lines()
            .filter(|l| {
                in_section = *l == "invariants:" || (in_section && l.starts_with("  "));
                !in_section
            })
            .map(|l| format!("{l}\n"))
            .collect();
        assert_eq!(
            String::from_utf8_lossy(&pushed.stdout),
            checked_file,
            "{name}"
        );
        assert_eq!(count(&db, "rbac_mapping_store").await, 0, "{name}");
        assert_eq!(count(&db, "rbac_mapping_activations").await, 0, "{name}");
    }
}

#[tokio::test]
async fn concurrent_pushes_of_one_text_store_it_once() {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = two_versions(dir.path());
    let spawn = |f: &std::path::Path| {
        bin()
            .args(["mapping", "push"])
            .arg(f)
            .arg("--database-url")
            .arg(&db.url)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let racers: Vec<_> = (0..4).map(|_| spawn(&b)).collect();
    for r in racers {
        ok(r.wait_with_output().unwrap());
    }
    assert_eq!(count(&db, "rbac_mapping_store").await, 1);
    assert_eq!(count(&db, "rbac_mapping_activations").await, 1);
    // The active version pushed again: nothing changes, exit 0.
    let out = ok(mapping(&db.url, &["push", b.to_str().unwrap()]));
    assert!(out.contains("already active: nothing changed"), "{out}");
    assert_eq!(count(&db, "rbac_mapping_activations").await, 1);
    // Two different texts racing: both stored, both activated in some order, each activation
    // naming the one before it (history stays a chain).
    let racers: Vec<_> = [&a, &b, &a].iter().map(|f| spawn(f)).collect();
    for r in racers {
        ok(r.wait_with_output().unwrap());
    }
    let chain: Vec<(String, Option<String>)> = sqlx::query_as(
        "SELECT version, previous_version FROM rbac_mapping_activations ORDER BY id",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    for w in chain.windows(2) {
        assert_eq!(w[1].1.as_deref(), Some(w[0].0.as_str()), "{chain:?}");
        assert_ne!(
            w[1].0, w[0].0,
            "an activation of the active version: {chain:?}"
        );
    }
    assert_eq!(count(&db, "rbac_mapping_store").await, 2);
    // Append-only: the tables refuse an UPDATE.
    assert!(sqlx::query("UPDATE rbac_mapping_store SET message = 'x'")
        .execute(&db.pool)
        .await
        .is_err());
}

#[tokio::test]
async fn a_replica_started_later_starts_on_the_active_version() {
    let db = TestDb::new().await;
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = two_versions(dir.path());
    let (va, vb) = (version_of(&a), version_of(&b));
    // Started before any version exists: not ready, saying why, nothing served.
    let opts = GatewayOpts::new(core_routes(), &db, up.addr)
        .arg("--mapping-source")
        .arg("database");
    let early = Gateway::start_unready(opts).await;
    eventually(Duration::from_secs(10), "/readyz says why", || async {
        matches!(early.readyz().await, Some((503, b)) if b.contains("no mapping version is active"))
    })
    .await;
    ok(mapping(&db.url, &["push", a.to_str().unwrap()]));
    let g1 = early.ready().await;
    assert_eq!(g1.status("/ops", None).await, 302);
    // Three activations while the second replica is not running.
    ok(mapping(&db.url, &["push", b.to_str().unwrap()]));
    ok(mapping(&db.url, &["activate", &va]));
    ok(mapping(&db.url, &["activate", &vb]));
    let g2 = db_gateway(&db, &up, &[]).await;
    assert_eq!(g2.status("/ops", None).await, 200);
    assert!(g2
        .admin_get("/readyz")
        .await
        .body_str()
        .contains(&format!("mapping={vb}")));
    reached(&db, &[&g1], 200, "the first replica").await;
}

#[tokio::test]
async fn a_tampered_stored_text_is_never_applied() {
    let db = TestDb::new().await;
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = two_versions(dir.path());
    let vb = version_of(&b);
    ok(mapping(&db.url, &["push", a.to_str().unwrap()]));
    let gw = db_gateway(&db, &up, &[]).await;
    ok(mapping(
        &db.url,
        &["push", b.to_str().unwrap(), "--no-activate"],
    ));
    // Someone with the owner's rights rewrites B's text to open another route.
    let opened = std::fs::read_to_string(&b)
        .unwrap()
        .replace("roles = [\"console-secrets-user\"]", "access = \"public\"");
    sqlx::raw_sql(&format!(
        "ALTER TABLE rbac_mapping_store DISABLE TRIGGER rbac_mapping_append_only; \
         UPDATE rbac_mapping_store SET text = $${opened}$$ WHERE version = '{vb}'; \
         ALTER TABLE rbac_mapping_store ENABLE TRIGGER rbac_mapping_append_only;"
    ))
    .execute(&db.pool)
    .await
    .unwrap();
    let failures = "rbac_gateway_mapping_reloads_total{result=\"failure\"}";
    let before = gw.metric(failures).await;
    ok(mapping(&db.url, &["activate", &vb]));
    eventually(
        Duration::from_secs(5),
        "the tampered version rejected",
        || async { gw.metric(failures).await > before },
    )
    .await;
    let ready = gw.admin_get("/readyz").await;
    assert!(
        ready.body_str().contains("does not hash to it"),
        "{}",
        ready.body_str()
    );
    assert_eq!(gw.status("/ops", None).await, 302, "still on version A");
    assert_eq!(gw.status("/secrets/x/sop", None).await, 302);
    // A replica started now is not ready: the active version does not load.
    let opts = GatewayOpts::new(core_routes(), &db, up.addr)
        .arg("--mapping-source")
        .arg("database");
    let late = Gateway::start_unready(opts).await;
    eventually(
        Duration::from_secs(10),
        "the late replica says why",
        || async {
            matches!(late.readyz().await, Some((503, b)) if b.contains("does not hash to it"))
        },
    )
    .await;
    // Another activation that loads: the late replica starts on it (and is stopped when dropped).
    let va = version_of(&a);
    ok(mapping(&db.url, &["activate", &va]));
    let late = late.ready().await;
    assert_eq!(late.status("/ops", None).await, 302);
}

#[tokio::test]
async fn a_database_restart_keeps_the_mapping_and_later_activations_arrive() {
    let (pg, db) = PrivatePg::start().await;
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = two_versions(dir.path());
    ok(mapping(&db.url, &["push", a.to_str().unwrap()]));
    let gw = db_gateway(&db, &up, &["--db-timeout-ms", "500"]).await;
    assert_eq!(gw.status("/ops", None).await, 302);
    db.pool.close().await;
    pg.pg("stop");
    // Down: the mapping stays (a request without a session needs no database).
    eventually(
        Duration::from_secs(10),
        "/readyz reports the outage",
        || async { gw.admin_get("/readyz").await.status == 503 },
    )
    .await;
    assert_eq!(gw.status("/ops", None).await, 302);
    pg.pg("start");
    eventually(Duration::from_secs(15), "ready again", || async {
        gw.admin_get("/readyz").await.status == 200
    })
    .await;
    let db = TestDb {
        url: db.url.clone(),
        pool: sqlx::PgPool::connect(&db.url).await.unwrap(),
    };
    ok(mapping(&db.url, &["push", b.to_str().unwrap()]));
    let t = reached(&db, &[&gw], 200, "after the restart").await;
    println!(
        "mapping activation after a PostgreSQL restart: applied after {:.0} ms",
        t[0] * 1000.0
    );
    assert!(t[0] < 1.0);
}

#[tokio::test]
async fn fifty_activations_under_keep_alive_load_each_answer_one_version() {
    let _alone = timed_alone().await;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use tokio::io::AsyncWriteExt;
    let db = TestDb::new().await;
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = two_versions(dir.path());
    let (va, vb) = (version_of(&a), version_of(&b));
    ok(mapping(&db.url, &["push", a.to_str().unwrap()]));
    ok(mapping(
        &db.url,
        &["push", b.to_str().unwrap(), "--no-activate"],
    ));
    // A session that A denies on /ops (403, an audit row) and B lets through (public: 200).
    let (_, token) = db.admin_with_roles(&["console-audit-user"]).await;
    let g1 = db_gateway(&db, &up, &[]).await;
    let g2 = db_gateway(&db, &up, &[]).await;
    let g3 = db_gateway(&db, &up, &[]).await;
    let gws = [&g1, &g2, &g3];
    let stop = Arc::new(AtomicBool::new(false));
    let loads: Vec<_> = gws
        .iter()
        .map(|gw| {
            let (addr, stop, token) = (gw.addr, stop.clone(), token.clone());
            tokio::spawn(async move {
                let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
                let req = format!(
                    "GET /ops HTTP/1.1\r\nHost: console.test\r\nCookie: console_session={token}\r\n\r\n"
                );
                let (mut allowed, mut denied, mut other) = (0u64, 0u64, Vec::new());
                while !stop.load(Ordering::Relaxed) {
                    s.write_all(req.as_bytes()).await.unwrap();
                    match read_response(&mut s).await {
                        Ok(r) if r.status == 200 => allowed += 1,
                        Ok(r) if r.status == 403 => denied += 1,
                        Ok(r) => other.push(r.status.to_string()),
                        Err(e) => {
                            other.push(e.to_string());
                            break;
                        }
                    }
                }
                (allowed, denied, other)
            })
        })
        .collect();
    for i in 0..50 {
        let target = if i % 2 == 0 { &vb } else { &va };
        ok(mapping(&db.url, &["activate", target]));
        for gw in gws {
            eventually(Duration::from_secs(2), "the activation applied", || async {
                gw.admin_get("/readyz")
                    .await
                    .body_str()
                    .contains(&format!("mapping={target}"))
            })
            .await;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let (mut allowed, mut denied) = (0, 0);
    for l in loads {
        let (a, d, other) = l.await.unwrap();
        assert!(other.is_empty(), "answers other than 200/403: {other:?}");
        allowed += a;
        denied += d;
    }
    println!("50 activations under keep-alive load on 3 gateways: {allowed} allowed (B), {denied} denied (A), 0 errors");
    assert!(allowed > 0 && denied > 0);
    // Every denial was decided by A, and says so.
    eventually(
        Duration::from_secs(10),
        "every denial's audit row",
        || async {
            let n: i64 =
                sqlx::query_scalar("SELECT count(*) FROM access_audit_events WHERE path = '/ops'")
                    .fetch_one(&db.pool)
                    .await
                    .unwrap();
            n == denied as i64
        },
    )
    .await;
    let versions: Vec<(Option<String>, i64)> = sqlx::query_as(
        "SELECT mapping_version, count(*) FROM access_audit_events WHERE path = '/ops' GROUP BY 1",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(versions, vec![(Some(va.clone()), denied as i64)]);
}

/// `rbac-gateway ARGS...` with its exit code and stdout + stderr.
fn run(args: &[&str]) -> (Option<i32>, String) {
    code_and_output(
        &bin()
            .args(args)
            .env_remove("FLAG_RBAC_V2")
            .output()
            .unwrap(),
    )
}

#[tokio::test]
async fn diff_and_explain_read_versions_from_the_database() {
    let db = TestDb::new().await;
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = two_versions(dir.path());
    let (va, vb) = (version_of(&a), version_of(&b));
    // Versions that `active` and `previous` do not name yet: bad input (64), as an absent file.
    let (code, out) = run(&[
        "diff",
        "db:active",
        a.to_str().unwrap(),
        "--database-url",
        &db.url,
    ]);
    assert_eq!(code, Some(64), "{out}");
    assert!(
        out.contains("no mapping version was ever activated"),
        "{out}"
    );
    ok(mapping(&db.url, &["push", a.to_str().unwrap()]));
    let (code, out) = run(&[
        "matrix",
        "--routes",
        "db:previous",
        "--database-url",
        &db.url,
        "--format",
        "json",
    ]);
    assert_eq!(code, Some(64), "{out}");
    assert!(out.contains("is the first version ever activated"), "{out}");
    // A request decided by A: /ops denied to a session without console-manager (an audit row
    // carrying A's version).
    let (admin, token) = db.admin_with_roles(&["console-audit-user"]).await;
    let gw = db_gateway(&db, &up, &[]).await;
    let r = gw.get("/ops", Some(&token)).await;
    assert_eq!(r.status, 403);
    let id = r.request_id();
    ok(mapping(&db.url, &["push", b.to_str().unwrap()]));

    // diff: either side a stored version.
    let url = db.url.as_str();
    let (code, out) = run(&["diff", "db:previous", "db:active", "--database-url", url]);
    assert_eq!(code, Some(1), "access changes: {out}");
    assert!(
        out.contains(&format!(
            "mapping diff: database:{va} ({va}) -> database:{vb} ({vb})"
        )),
        "{out}"
    );
    assert!(
        out.contains("~ GET /ops: access protected -> public"),
        "{out}"
    );
    let (code, out) = run(&[
        "diff",
        &format!("db:{vb}"),
        b.to_str().unwrap(),
        "--database-url",
        url,
    ]);
    assert_eq!(code, Some(0), "the stored text is the file: {out}");
    assert!(out.contains("no access change"), "{out}");
    let (code, out) = run(&["diff", "db:active", a.to_str().unwrap()]);
    assert_eq!(code, Some(64), "{out}");
    assert!(out.contains("needs --database-url"), "{out}");
    let (code, out) = run(&[
        "diff",
        "db:0123456789ab",
        a.to_str().unwrap(),
        "--database-url",
        url,
    ]);
    assert_eq!(code, Some(64), "bad input, not \"access changes\": {out}");
    assert!(
        out.contains("no stored mapping version \"0123456789ab\""),
        "{out}"
    );
    // `mapping activate` of a version not stored is bad input too (review A: it exited 1).
    let (code, out) = run(&["mapping", "activate", "0123456789ab", "--database-url", url]);
    assert_eq!(code, Some(64), "{out}");
    assert!(
        out.contains("no stored mapping version \"0123456789ab\""),
        "{out}"
    );

    // explain --request-id: the row's version from the store, whatever --routes is (here B,
    // which would forward the request, and then no file at all).
    for routes in [b.clone(), dir.path().join("absent.toml")] {
        let (code, out) = run(&[
            "explain",
            "--routes",
            routes.to_str().unwrap(),
            "--database-url",
            url,
            "--request-id",
            &id,
        ]);
        assert_eq!(code, Some(0), "{out}");
        assert!(
            out.contains(&format!(
                "mapping: version {va}, the row's, from the database's mapping store"
            )),
            "{out}"
        );
        assert!(out.contains(&format!("admin={admin}")), "{out}");
        assert!(
            out.contains(&format!("rule: GET /ops (database:{va}:")),
            "{out}"
        );
        assert!(out.contains("decision: 403 denied (missing_role)"), "{out}");
        assert!(!out.contains("WARNING"), "{out}");
    }
    // A row whose version is not in the store: said so, then --routes as before.
    sqlx::query(
        "INSERT INTO access_audit_events (id, event_type, admin_id, method, path, route, reason, \
         request_id, created_at_utc, mapping_version) \
         VALUES ('x1', 'access_denied', $1, 'GET', '/ops', 'GET /ops', 'missing_role', 'from-a-file', now(), 'ffffffffffff')",
    )
    .bind(&admin)
    .execute(&db.pool)
    .await
    .unwrap();
    let (code, out) = run(&[
        "explain",
        "--routes",
        b.to_str().unwrap(),
        "--database-url",
        url,
        "--request-id",
        "from-a-file",
    ]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains(
            "note: mapping version ffffffffffff, the row's, is not in the database's mapping store"
        ),
        "{out}"
    );
    assert!(
        out.contains("WARNING: the row was decided with mapping version ffffffffffff"),
        "{out}"
    );
}

#[tokio::test]
async fn rollout_counts_soak_time_from_the_activations() {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let (a, _) = two_versions(dir.path());
    let va = version_of(&a);
    // A (GET /shadowed in shadow, cluster "-") activated eight days ago...
    ok(mapping(
        &db.url,
        &["push", a.to_str().unwrap(), "--no-activate"],
    ));
    sqlx::query(
        "INSERT INTO rbac_mapping_activations (version, kind, activated_at_utc) \
         VALUES ($1, 'push', now() - interval '8 days')",
    )
    .bind(&va)
    .execute(&db.pool)
    .await
    .unwrap();
    // ...and a gateway that recorded loading it only now (started today).
    let m = rbac_gateway::policy::mapping::Mapping::load(&a).unwrap();
    assert!(rbac_gateway::stores::rollout::record(&db.gw(), &m, false)
        .await
        .unwrap());
    for routes in [a.to_str().unwrap(), "db:active"] {
        let (code, out) = run(&[
            "rollout",
            "--json",
            "--routes",
            routes,
            "--database-url",
            &db.url,
        ]);
        assert_eq!(code, Some(0), "{out}");
        let r: serde_json::Value = serde_json::from_str(&out).unwrap();
        let c = r["clusters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["cluster"] == "-")
            .unwrap();
        assert_eq!(
            c["verdict"], "ready",
            "soaked 8 days from the activation: {c}"
        );
        assert_eq!(r["version"], va.as_str());
        assert_eq!(r["soak_from"], "activations");
        assert_eq!(r["fleet_version"], va.as_str());
    }
    let (_, out) = run(&[
        "rollout",
        "--routes",
        "db:active",
        "--database-url",
        &db.url,
    ]);
    assert!(
        out.contains("soak counted from: the mapping activations"),
        "{out}"
    );
}

/// Runs deploy/mapping-grants.sql, then makes a login user holding `role` only (and `extra`
/// grants); its URL. Roles are cluster-wide: the users are named after the database.
async fn login_as(db: &TestDb, role: &str, extra: &str) -> String {
    let grants = std::fs::read_to_string(root().join("deploy/mapping-grants.sql")).unwrap();
    sqlx::raw_sql(&grants).execute(&db.pool).await.unwrap();
    db.login_in_role(role, extra).await
}

#[tokio::test]
async fn push_works_with_exactly_the_pusher_grants_and_a_reader_cannot_push() {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = two_versions(dir.path());
    let (va, vb) = (version_of(&a), version_of(&b));
    let pusher = login_as(&db, "rbac_mapping_pusher", "").await;
    let out = ok(mapping(
        &pusher,
        &["push", a.to_str().unwrap(), "--actor", "ci"],
    ));
    assert!(
        out.contains(&format!("mapping version {va} active")),
        "{out}"
    );
    assert!(
        out.contains("database: the schema of ") && out.contains("admin_sessions"),
        "the tables it may not read are named: {out}"
    );
    // The schema's migrations are `check`'s to compare, not a push's: its role reads none.
    assert!(!out.contains("database schema"), "{out}");
    // The role and permission names are still checked.
    let typo = dir.path().join("typo.toml");
    std::fs::write(
        &typo,
        std::fs::read_to_string(&a)
            .unwrap()
            .replace("console-manager", "console-mangaer"),
    )
    .unwrap();
    let refused = mapping(&pusher, &["push", typo.to_str().unwrap()]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&refused.stdout).contains("console-mangaer"),
        "{}",
        String::from_utf8_lossy(&refused.stdout)
    );
    ok(mapping(&pusher, &["push", b.to_str().unwrap()]));
    ok(mapping(&pusher, &["rollback"]));
    ok(mapping(&pusher, &["activate", &vb]));
    ok(mapping(&pusher, &["history"]));
    let pushed_by: Vec<String> =
        sqlx::query_scalar("SELECT DISTINCT pushed_by FROM rbac_mapping_store")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(pushed_by.len(), 1);
    assert!(
        pusher.contains(&format!("://{}@", pushed_by[0])),
        "{pushed_by:?}"
    );
    assert_eq!(count(&db, "rbac_mapping_activations").await, 4);

    // The reader (a gateway's role: the mapping tables and, for serve, the catalogue) reads
    // versions but may not store one: the INSERT is refused, said plainly, nothing stored.
    let reader = login_as(
        &db,
        "rbac_gateway_reader",
        "GRANT SELECT ON rbac_roles, rbac_permissions TO USER",
    )
    .await;
    let shown = mapping(&reader, &["show", &va]);
    assert!(shown.status.success());
    let c = dir.path().join("c.toml");
    std::fs::write(
        &c,
        format!("{}\n# c\n", std::fs::read_to_string(&a).unwrap()),
    )
    .unwrap();
    let refused = mapping(&reader, &["push", c.to_str().unwrap()]);
    assert_eq!(refused.status.code(), Some(1));
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        err.contains("permission denied for table rbac_mapping_store")
            && err.contains("this database role may not change the mapping")
            && err.contains("deploy/mapping-grants.sql (rbac_mapping_pusher)"),
        "{err}"
    );
    let refused = mapping(&reader, &["rollback"]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("may not change the mapping"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    assert_eq!(count(&db, "rbac_mapping_store").await, 2);
    assert_eq!(count(&db, "rbac_mapping_activations").await, 4);
}

#[tokio::test]
async fn a_version_with_a_key_this_binary_does_not_know_leaves_the_previous_mapping() {
    let db = TestDb::new().await;
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = two_versions(dir.path());
    let va = version_of(&a);
    ok(mapping(&db.url, &["push", a.to_str().unwrap()]));
    let gw = db_gateway(&db, &up, &[]).await;
    assert_eq!(gw.status("/ops", None).await, 302);
    // A newer binary's push during a rolling upgrade: B with a top-level key this one does not
    // know, stored with its correct hash (this binary's push would refuse it).
    let newer = format!(
        "signature_required = true\n{}",
        std::fs::read_to_string(&b).unwrap()
    );
    let vn = rbac_gateway::policy::mapping::version_of(newer.as_bytes());
    sqlx::query("INSERT INTO rbac_mapping_store (version, sha256, text) VALUES ($1, $2, $3)")
        .bind(&vn)
        .bind(rbac_gateway::stores::mapping_store::sha256_hex(
            newer.as_bytes(),
        ))
        .bind(&newer)
        .execute(&db.pool)
        .await
        .unwrap();
    let failures = "rbac_gateway_mapping_reloads_total{result=\"failure\"}";
    let before = gw.metric(failures).await;
    ok(mapping(&db.url, &["activate", &vn]));
    eventually(
        Duration::from_secs(5),
        "the newer version rejected",
        || async { gw.metric(failures).await == before + 1.0 },
    )
    .await;
    let ready = gw.admin_get("/readyz").await;
    let body = ready.body_str();
    assert_eq!(ready.status, 200, "{body}");
    assert!(
        body.contains(&format!("mapping={va} stays live"))
            && body.contains(&format!("database:{vn}"))
            && body.contains("signature_required"),
        "the live version, the rejected one and why: {body}"
    );
    assert_eq!(
        gw.metric(&format!("rbac_gateway_mapping_info{{version=\"{va}\"}}"))
            .await,
        1.0
    );
    assert_eq!(gw.status("/ops", None).await, 302, "still on A");
    assert!(gw
        .log()
        .lines()
        .any(|l| l.contains("rejected") && l.contains("signature_required")));
    // The next version that loads clears it.
    ok(mapping(&db.url, &["push", b.to_str().unwrap()]));
    reached(&db, &[&gw], 200, "B after the rejected version").await;
    assert!(!gw.admin_get("/readyz").await.body_str().contains(&vn));
}

/// Writes an Ed25519 key pair as `mapping push --signing-key` and `serve --mapping-public-key`
/// read them (PKCS#8 PEM, SubjectPublicKeyInfo PEM): (private, public). With `openssl`, as the
/// README says to make them; else from `seed`.
fn key_pair(dir: &std::path::Path, name: &str, openssl: bool, seed: u8) -> (String, String) {
    use ed25519_dalek::pkcs8::{spki::der::pem::LineEnding, EncodePrivateKey, EncodePublicKey};
    let (private, public) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.pub.pem")),
    );
    let made = openssl
        && std::process::Command::new("openssl")
            .args(["genpkey", "-algorithm", "ed25519", "-out"])
            .arg(&private)
            .status()
            .is_ok_and(|s| s.success())
        && std::process::Command::new("openssl")
            .args(["pkey", "-pubout", "-in"])
            .arg(&private)
            .arg("-out")
            .arg(&public)
            .status()
            .is_ok_and(|s| s.success());
    if !made {
        let key = ed25519_dalek::SigningKey::from_bytes(&[seed; 32]);
        std::fs::write(
            &private,
            key.to_pkcs8_pem(LineEnding::LF).unwrap().as_bytes(),
        )
        .unwrap();
        std::fs::write(
            &public,
            key.verifying_key()
                .to_public_key_pem(LineEnding::LF)
                .unwrap(),
        )
        .unwrap();
    }
    (
        private.to_str().unwrap().to_string(),
        public.to_str().unwrap().to_string(),
    )
}

#[tokio::test]
async fn only_versions_signed_by_the_public_keys_owner_are_applied() {
    let db = TestDb::new().await;
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = two_versions(dir.path());
    let (va, vb) = (version_of(&a), version_of(&b));
    let (key, public) = key_pair(dir.path(), "release", true, 1);
    let (other_key, _) = key_pair(dir.path(), "other", false, 2);
    let out = ok(mapping(
        &db.url,
        &["push", a.to_str().unwrap(), "--signing-key", &key],
    ));
    assert!(
        out.contains(&format!("mapping version {va} stored (signed)")),
        "{out}"
    );
    let gw = db_gateway(&db, &up, &["--mapping-public-key", &public]).await;
    assert_eq!(gw.status("/ops", None).await, 302, "signed A applied");
    assert!(gw
        .admin_get("/readyz")
        .await
        .body_str()
        .contains(&format!("mapping={va}")));
    let failures = "rbac_gateway_mapping_reloads_total{result=\"failure\"}";

    // B pushed unsigned (by anyone with the pusher grants): activated, never applied.
    let before = gw.metric(failures).await;
    ok(mapping(&db.url, &["push", b.to_str().unwrap()]));
    eventually(Duration::from_secs(5), "unsigned B rejected", || async {
        gw.metric(failures).await == before + 1.0
    })
    .await;
    let ready = gw.admin_get("/readyz").await;
    let body = ready.body_str();
    assert!(
        body.contains(&format!("mapping={va} stays live"))
            && body.contains(&format!("mapping version {vb} is not signed"))
            && body.contains("unsigned"),
        "{body}"
    );
    assert_eq!(gw.status("/ops", None).await, 302, "still on A");

    // A replica started now is not ready: the active version is unsigned.
    let opts = GatewayOpts::new(core_routes(), &db, up.addr)
        .arg("--mapping-source")
        .arg("database")
        .arg("--mapping-public-key")
        .arg(&public);
    let late = Gateway::start_unready(opts).await;
    eventually(
        Duration::from_secs(10),
        "the late replica: unsigned",
        || async { matches!(late.readyz().await, Some((503, b)) if b.contains("unsigned")) },
    )
    .await;

    // B signed now: refused (stored versions never change), nothing activated.
    let activations = count(&db, "rbac_mapping_activations").await;
    let out = mapping(
        &db.url,
        &[
            "push",
            b.to_str().unwrap(),
            "--signing-key",
            &key,
            "--no-activate",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("already stored unsigned"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(count(&db, "rbac_mapping_activations").await, activations);

    // C (B's rules) signed by another key: never applied, here or on the late replica.
    let c = dir.path().join("c.toml");
    std::fs::write(&c, format!("{}# c\n", std::fs::read_to_string(&b).unwrap())).unwrap();
    let before = gw.metric(failures).await;
    ok(mapping(
        &db.url,
        &["push", c.to_str().unwrap(), "--signing-key", &other_key],
    ));
    eventually(
        Duration::from_secs(5),
        "C (another key) rejected",
        || async { gw.metric(failures).await == before + 1.0 },
    )
    .await;
    assert!(gw
        .admin_get("/readyz")
        .await
        .body_str()
        .contains("does not verify"));
    assert_eq!(gw.status("/ops", None).await, 302, "still on A");
    eventually(
        Duration::from_secs(10),
        "the late replica: another key",
        || async { matches!(late.readyz().await, Some((503, b)) if b.contains("does not verify")) },
    )
    .await;

    // D: a valid signature (A's, by the right key) copied onto another text, inserted directly.
    let sig_a: String =
        sqlx::query_scalar("SELECT signature FROM rbac_mapping_store WHERE version = $1")
            .bind(&va)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    let d = format!("{}# d\n", std::fs::read_to_string(&b).unwrap());
    let vd = rbac_gateway::policy::mapping::version_of(d.as_bytes());
    sqlx::query(
        "INSERT INTO rbac_mapping_store (version, sha256, text, signature) VALUES ($1, $2, $3, $4)",
    )
    .bind(&vd)
    .bind(rbac_gateway::stores::mapping_store::sha256_hex(
        d.as_bytes(),
    ))
    .bind(&d)
    .bind(&sig_a)
    .execute(&db.pool)
    .await
    .unwrap();
    let before = gw.metric(failures).await;
    ok(mapping(&db.url, &["activate", &vd]));
    eventually(
        Duration::from_secs(5),
        "D (copied signature) rejected",
        || async { gw.metric(failures).await == before + 1.0 },
    )
    .await;
    let body = gw.admin_get("/readyz").await.body_str().to_string();
    assert!(
        body.contains(&vd) && body.contains("does not verify"),
        "{body}"
    );
    assert_eq!(gw.status("/ops", None).await, 302, "still on A");

    // E (B's rules) signed by the right key: applied everywhere, the late replica starts on it.
    let e = dir.path().join("e.toml");
    std::fs::write(&e, format!("{}# e\n", std::fs::read_to_string(&b).unwrap())).unwrap();
    ok(mapping(
        &db.url,
        &["push", e.to_str().unwrap(), "--signing-key", &key],
    ));
    reached(&db, &[&gw], 200, "signed E").await;
    let late = late.ready().await;
    assert_eq!(late.status("/ops", None).await, 200);
    // Pushing E again, signed by the same key: nothing changes (exit 0).
    let out = ok(mapping(
        &db.url,
        &["push", e.to_str().unwrap(), "--signing-key", &key],
    ));
    assert!(out.contains("already active"), "{out}");
}

#[tokio::test]
async fn a_public_key_needs_the_database_source_and_a_readable_key() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("k.pem");
    std::fs::write(&garbage, "not a key").unwrap();
    let out = bin()
        .args(["serve", "--mapping-public-key"])
        .arg(&garbage)
        .args(["--database-url", "postgres://x@127.0.0.1:1/x"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--mapping-source database"));
    let out = bin()
        .args([
            "serve",
            "--mapping-source",
            "database",
            "--mapping-public-key",
        ])
        .arg(&garbage)
        .args(["--database-url", "postgres://x@127.0.0.1:1/x"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not an Ed25519 public key"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
