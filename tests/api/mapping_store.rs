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
fn mapping(url: &str, args: &[&str]) -> Output {
    bin()
        .arg("mapping")
        .args(args)
        .arg("--database-url")
        .arg(url)
        .output()
        .unwrap()
}

fn ok(out: Output) -> String {
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
        assert_eq!(
            String::from_utf8_lossy(&pushed.stdout),
            String::from_utf8_lossy(&checked.stdout),
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
    let admin_port = free_port();
    let mut opts = GatewayOpts::new(core_routes(), &db, up.addr)
        .arg("--mapping-source")
        .arg("database");
    opts.admin_port = Some(admin_port);
    let early = tokio::spawn(Gateway::start(opts));
    let admin: std::net::SocketAddr = ([127, 0, 0, 1], admin_port).into();
    eventually(Duration::from_secs(10), "/readyz says why", || async {
        match send(
            admin,
            b"GET /readyz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        )
        .await
        {
            Ok(r) => r.status == 503 && r.body_str().contains("no mapping version is active"),
            Err(_) => false,
        }
    })
    .await;
    ok(mapping(&db.url, &["push", a.to_str().unwrap()]));
    let g1 = early.await.unwrap();
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
    let mut opts = GatewayOpts::new(core_routes(), &db, up.addr)
        .arg("--mapping-source")
        .arg("database");
    let admin_port = free_port();
    opts.admin_port = Some(admin_port);
    let late = tokio::spawn(Gateway::start(opts));
    let admin: std::net::SocketAddr = ([127, 0, 0, 1], admin_port).into();
    eventually(
        Duration::from_secs(10),
        "the late replica says why",
        || async {
            match send(
                admin,
                b"GET /readyz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
            )
            .await
            {
                Ok(r) => r.status == 503 && r.body_str().contains("does not hash to it"),
                Err(_) => false,
            }
        },
    )
    .await;
    // Another activation that loads: the late replica starts on it (and is stopped when dropped).
    let va = version_of(&a);
    ok(mapping(&db.url, &["activate", &va]));
    let late = late.await.unwrap();
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
