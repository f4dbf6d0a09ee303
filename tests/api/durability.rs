//! Never lose an audit row, never fail open: PostgreSQL stopped during a denial flood, the
//! gateway SIGKILLed, a slow database, a full spool, a misbehaving upstream.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::helpers::*;

#[tokio::test]
async fn postgres_stopped_during_a_denial_flood_and_gateway_killed_loses_no_row() {
    let (pg, db) = PrivatePg::start().await;
    let up = Upstream::start().await;
    let opts = || {
        GatewayOpts::new(core_routes(), &db, up.addr)
            .arg("--cache-ttl")
            .arg("120")
            .arg("--db-timeout-ms")
            .arg("300")
    };
    let mut gw = Gateway::start(opts()).await;
    let token = cached_denied_session(&db, &gw).await;

    let stop = Arc::new(AtomicBool::new(false));
    let sent_403 = Arc::new(Mutex::new(vec![gw
        .get("/ops", Some(&token))
        .await
        .request_id()]));
    let other = Arc::new(AtomicUsize::new(0));
    let mut flood = Vec::new();
    for _ in 0..6 {
        let (stop, sent, other, addr, token) = (
            stop.clone(),
            sent_403.clone(),
            other.clone(),
            gw.addr,
            token.clone(),
        );
        flood.push(tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let req = format!("GET /ops HTTP/1.1\r\nHost: c\r\nCookie: console_session={token}\r\nConnection: close\r\n\r\n");
                match send(addr, req.as_bytes()).await {
                    Ok(r) if r.status == 403 => sent.lock().unwrap().push(r.request_id()),
                    Ok(_) => {
                        other.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
        }));
    }
    eventually(
        Duration::from_secs(10),
        "the flood gets 403s (rows stored)",
        || async { sent_403.lock().unwrap().len() >= 20 },
    )
    .await;
    pg.pg("stop");
    // Denials go on during the outage, their rows in the spool.
    let before_outage = sent_403.lock().unwrap().len();
    let spool = gw.dir.path().join("audit.spool");
    eventually(
        Duration::from_secs(10),
        "403s answered with their rows spooled while PostgreSQL is down",
        || async {
            let spooled = std::fs::metadata(&spool).map(|m| m.len()).unwrap_or(0);
            spooled > 0 && sent_403.lock().unwrap().len() >= before_outage + 20
        },
    )
    .await;
    // SIGKILL mid-flood, with PostgreSQL still down.
    gw.child.kill().unwrap();
    gw.child.wait().unwrap();
    stop.store(true, Ordering::SeqCst);
    for f in flood {
        f.await.unwrap();
    }
    let spooled = std::fs::metadata(gw.dir.path().join("audit.spool"))
        .map(|m| m.len())
        .unwrap_or(0);
    assert!(spooled > 0, "denials during the outage went to the spool");

    pg.pg("start");
    let dir = std::mem::replace(&mut gw.dir, tempfile::tempdir().unwrap());
    let routes = gw.routes.clone();
    drop(gw);
    let pool = sqlx::PgPool::connect(&pg.url).await.unwrap();
    let db = TestDb {
        url: pg.url.clone(),
        pool,
    };
    let gw = Gateway::start_in(GatewayOpts::new(core_routes(), &db, up.addr), dir, routes).await;

    let sent = sent_403.lock().unwrap().clone();
    let recovery = std::time::Instant::now();
    let mut stored = 0;
    for _ in 0..100 {
        stored = db.audit_count().await;
        if stored as usize >= sent.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ids: Vec<String> = sqlx::query_scalar("SELECT request_id FROM access_audit_events")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    let mut missing = 0;
    for id in &sent {
        let n = ids.iter().filter(|x| *x == id).count();
        if n != 1 {
            missing += 1;
        }
    }
    println!(
        "durability: 403s sent {}, rows stored {stored}, other answers (503 or else) {}, all rows stored {:.0} ms after the restarted gateway was ready",
        sent.len(),
        other.load(Ordering::SeqCst),
        recovery.elapsed().as_secs_f64() * 1e3
    );
    assert_eq!(
        missing,
        0,
        "every 403 that was sent has exactly one row ({} sent, {stored} stored); log:\n{}",
        sent.len(),
        gw.log()
    );
    assert!(
        sent.len() > 20,
        "the flood produced denials: {}",
        sent.len()
    );
    // Rows may exceed answered 403s by the requests in flight at the SIGKILL (the row was durable,
    // the answer never left) and the priming request: never by more.
    assert!(
        stored as usize <= sent.len() + 7,
        "{stored} rows for {} answered 403s",
        sent.len()
    );
}

#[tokio::test]
async fn a_full_spool_answers_503_instead_of_denying_without_a_record() {
    let LinkedEnv { db, up, link, gw } =
        LinkedEnv::start(&["--db-timeout-ms", "300", "--audit-spool-max-bytes", "1500"]).await;
    let (_, token) = db.admin_with_roles(&["console-user"]).await;
    settle(&[&gw]).await;
    assert_eq!(gw.get("/ops", Some(&token)).await.status, 403);
    link.cut();
    let mut statuses = Vec::new();
    for _ in 0..8 {
        statuses.push(gw.get("/ops", Some(&token)).await.status);
    }
    assert!(statuses.contains(&403), "{statuses:?}; log:\n{}", gw.log());
    assert_eq!(
        statuses.last(),
        Some(&503),
        "spool full: 503 ({statuses:?}); log:\n{}",
        gw.log()
    );
    let spool = std::fs::read_to_string(gw.dir.path().join("audit.spool")).unwrap();
    let spooled = spool.lines().count();
    assert_eq!(
        spooled,
        statuses.iter().filter(|s| **s == 403).count(),
        "every 403 has its spooled row"
    );
    assert_eq!(up.count(), 0);
}

#[tokio::test]
async fn a_slow_database_spools_denials_and_503s_uncached_sessions() {
    let db = TestDb::new().await;
    let up = Upstream::start().await;
    let gw = Gateway::start(
        GatewayOpts::new(core_routes(), &db, up.addr)
            .arg("--cache-ttl")
            .arg("60")
            .arg("--db-timeout-ms")
            .arg("400"),
    )
    .await;
    let (_, cached) = db.admin_with_roles(&["console-user"]).await;
    settle(&[&gw]).await;
    assert_eq!(gw.get("/ops", Some(&cached)).await.status, 403);
    // Hold locks so that audit inserts and session lookups block past the statement timeout.
    let mut tx = db.pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE access_audit_events, admin_sessions IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *tx)
        .await
        .unwrap();
    let r = gw.get("/ops", Some(&cached)).await;
    assert_eq!(
        r.status, 403,
        "cached principal: still decided, row spooled"
    );
    let (_, fresh) = {
        // Created before the lock would block it: use a token the gateway has never seen.
        (String::new(), "never-seen-token".to_string())
    };
    assert_eq!(
        gw.get("/ops", Some(&fresh)).await.status,
        503,
        "uncached session: fail closed"
    );
    tx.rollback().await.unwrap();
    let mut n = 0;
    for _ in 0..50 {
        n = db.audit_rows(&r.request_id()).await.len();
        if n == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        n, 1,
        "the spooled row reached the database once the lock was released"
    );
    assert_eq!(up.count(), 0);
}

#[tokio::test]
async fn allowed_traffic_is_not_starved_by_a_denial_flood() {
    let env = Env::with(core_routes(), |o| o.arg("--cache-ttl").arg("60")).await;
    let (_, denied) = env.db.admin_with_roles(&["console-user"]).await;
    let (_, allowed) = env.db.admin_with_roles(&["console-manager"]).await;
    let stop = Arc::new(AtomicBool::new(false));
    let mut flood = Vec::new();
    for _ in 0..8 {
        let (stop, addr, token) = (stop.clone(), env.gw.addr, denied.clone());
        flood.push(tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) {
                let req = format!("GET /ops HTTP/1.1\r\nHost: c\r\nCookie: console_session={token}\r\nConnection: close\r\n\r\n");
                if let Ok(r) = send(addr, req.as_bytes()).await {
                    assert_eq!(r.status, 403);
                    n += 1;
                }
            }
            n
        }));
    }
    for _ in 0..50 {
        assert_eq!(env.gw.get("/ops", Some(&allowed)).await.status, 200);
    }
    stop.store(true, Ordering::SeqCst);
    let mut denials = 0;
    for f in flood {
        denials += f.await.unwrap();
    }
    let rows = env.db.audit_count().await;
    assert_eq!(rows as usize, denials, "one row per 403");
    let batches = env.gw.metric("rbac_gateway_audit_batches_total").await;
    assert!(
        batches > 0.0 && batches <= denials as f64,
        "group commit: {batches} batches for {denials} rows"
    );
}

#[tokio::test]
async fn misbehaving_upstreams_leak_no_connections() {
    // An upstream that accepts and resets mid-response, and one that hangs.
    let reset = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let reset_addr = reset.local_addr().unwrap();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        loop {
            let Ok((mut s, _)) = reset.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\npartial")
                    .await;
                // Abort mid-body (the promised 1000 bytes never come).
                drop(s);
            });
        }
    });
    let db = TestDb::new().await;
    let gw = Gateway::start(GatewayOpts::new(core_routes(), &db, reset_addr)).await;
    let (_, token) = db.admin_with_roles(&["console-user"]).await;
    let fds = |pid: u32| {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    // Warm up (pools, caches), then measure. The gateway reads the promised length from the
    // upstream while relaying: the client may see the head and part of the body, or (when the
    // abort is read before the head was flushed) a closed connection; never a complete answer.
    let upload = format!("POST /upload HTTP/1.1\r\nHost: c\r\nCookie: console_session={token}\r\nContent-Length: 1\r\nConnection: close\r\n\r\nx");
    for _ in 0..5 {
        if let Ok(r) = send(gw.addr, upload.as_bytes()).await {
            assert!(r.status == 200 || r.status == 502, "{}", r.status);
        }
    }
    let before = fds(gw.pid());
    for _ in 0..100 {
        // An Err is fine: the abort may reach the client after the headers were relayed.
        if let Ok(r) = send(gw.addr, format!("POST /upload HTTP/1.1\r\nHost: c\r\nCookie: console_session={token}\r\nContent-Length: 1\r\nConnection: close\r\n\r\nx").as_bytes()).await {
            assert!(r.status == 200 || r.status == 502, "{}", r.status);
        }
    }
    // The aborted connections are closed (a leak would never get there).
    eventually(
        Duration::from_secs(5),
        "the gateway's file descriptors are back to what they were",
        || async { fds(gw.pid()) <= before + 5 },
    )
    .await;
    let after = fds(gw.pid());
    assert!(
        after <= before + 5,
        "file descriptors leaked: {before} -> {after}"
    );
    assert_eq!(gw.admin_get("/healthz").await.status, 200);
}

/// A tmpfs mounted at a fresh directory, unmounted when dropped; None where this process may
/// not mount (not root).
struct Mounted(tempfile::TempDir);

impl Mounted {
    fn tmpfs() -> Option<Mounted> {
        let dir = tempfile::tempdir().unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=4m", "none"])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(Mounted(dir))
    }

    fn read_only(&self) {
        self.remount("remount,ro");
    }

    fn read_write(&self) {
        self.remount("remount,rw");
    }

    fn remount(&self, how: &str) {
        let ok = std::process::Command::new("mount")
            .args(["-o", how])
            .arg(self.0.path())
            .status()
            .unwrap()
            .success();
        assert!(ok, "mount -o {how}");
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        // Best effort at the end of a test: a mount left behind is only a tmpfs of 4 MiB.
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.0.path())
            .status();
    }
}

/// A spool left with rows on a volume that became read-only (or a file the gateway may not
/// write): its rows are still stored, new denials go to the database (403, not 503), and
/// `/readyz` and the spool gauge say what is wrong. Before, every denial got 503 with the
/// database up, and the rows never reached it.
#[tokio::test]
async fn a_spool_that_cannot_be_written_is_replayed_and_denials_go_to_the_database() {
    let Some(mnt) = Mounted::tmpfs() else {
        eprintln!("skipped: mounting a tmpfs needs root (CI runs as root)");
        return;
    };
    let spool = mnt.0.path().join("audit.spool");
    let db = TestDb::new().await;
    let up = Upstream::start().await;
    let link = PgLink::new(&db.url).await;
    let mut opts = GatewayOpts::new(core_routes(), &db, up.addr)
        .arg("--cache-ttl")
        .arg("60")
        .arg("--db-timeout-ms")
        .arg("300")
        .via(&link);
    opts.spool = Some(spool.clone());
    let first = Gateway::start(opts).await;
    let token = cached_denied_session(&db, &first).await;
    link.cut();
    let r = first.get("/ops", Some(&token)).await;
    assert_eq!(r.status, 403);
    let spooled = r.request_id();
    drop(first);
    assert!(std::fs::metadata(&spool).unwrap().len() > 0, "row spooled");
    mnt.read_only();

    let mut opts = GatewayOpts::new(core_routes(), &db, up.addr).arg("--db-timeout-ms");
    opts = opts.arg("300");
    opts.spool = Some(spool.clone());
    let gw = Gateway::start(opts).await;
    replayed_within_5s(&db, &gw, &spooled).await;
    let (_, other) = db.admin_with_roles(&["console-user"]).await;
    let r = gw.get("/ops", Some(&other)).await;
    assert_eq!(r.status, 403, "log:\n{}", gw.log());
    assert_eq!(db.audit_rows(&r.request_id()).await.len(), 1);
    let ready = gw.admin_get("/readyz").await;
    assert_eq!(ready.status, 200);
    assert!(
        ready.body_str().contains("cannot be emptied"),
        "{}",
        ready.body_str()
    );
    assert!(gw.metric("rbac_gateway_audit_spool_bytes").await > 0.0);
    // Replayed once, not every half second. Time itself is what is tested here: the spool
    // cannot be emptied (read-only), so a replay runs every 500 ms; after more than two of
    // them, the row must still have been stored once. No event marks "a replay found nothing
    // new", so the test waits the periods out.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(gw.metric("rbac_gateway_audit_replayed_total").await, 1.0);
    assert_eq!(db.audit_rows(&spooled).await.len(), 1);
}

#[tokio::test]
async fn a_denial_flood_is_written_on_one_kept_connection() {
    let env = Env::with(core_routes(), |o| o.arg("--cache-ttl").arg("60")).await;
    let token = cached_denied_session(&env.db, &env.gw).await;
    // The writer's connection exists once a row was written.
    assert_eq!(env.gw.get("/ops", Some(&token)).await.status, 403);
    // Which backends run the writer's INSERT, sampled while the flood lasts (pg_stat_activity
    // keeps a backend's last statement while it waits for the COMMIT or the next batch).
    let sampling = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let (pool, sampling) = (env.db.pool.clone(), sampling.clone());
        tokio::spawn(async move {
            let mut writers = std::collections::BTreeSet::new();
            let mut samples = 0;
            while sampling.load(std::sync::atomic::Ordering::SeqCst) {
                let pids: Vec<i32> = sqlx::query_scalar(
                    "SELECT pid FROM pg_stat_activity WHERE datname = current_database() \
                     AND application_name = 'rbac-gateway' AND query LIKE '%INSERT INTO access_audit_events%' \
                     AND query NOT LIKE '%ON CONFLICT%'",
                )
                .fetch_all(&pool)
                .await
                .unwrap();
                writers.extend(pids);
                samples += 1;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            (writers, samples)
        })
    };
    // 32 keep-alive clients: rows keep arriving while each batch is written.
    let mut flood = Vec::new();
    for _ in 0..32 {
        let (gw, token) = (env.gw.addr, token.clone());
        flood.push(tokio::spawn(async move {
            let mut s = tokio::net::TcpStream::connect(gw).await.unwrap();
            let req =
                format!("GET /ops HTTP/1.1\r\nHost: c\r\nCookie: console_session={token}\r\n\r\n");
            for _ in 0..300 {
                tokio::io::AsyncWriteExt::write_all(&mut s, req.as_bytes())
                    .await
                    .unwrap();
                assert_eq!(read_response(&mut s).await.unwrap().status, 403);
            }
        }));
    }
    for f in flood {
        f.await.unwrap();
    }
    sampling.store(false, std::sync::atomic::Ordering::SeqCst);
    let (writers, samples) = sampler.await.unwrap();
    let batches = env.gw.metric("rbac_gateway_audit_batches_total").await;
    assert!(batches > 2.0, "the flood took several batches: {batches}");
    assert_eq!(env.db.audit_count().await, 2 + 32 * 300, "one row per 403");
    // Drawn from the pool per batch, each connection went back through a task that pings the
    // server first: the next batch found none idle and the pool opened more (seven in load runs).
    // Counted by the backends that ran the INSERT, not by the gateway's connections: the feed's
    // reads (every 250 ms) and the alert pass (every second) draw pool connections of their own,
    // and when they overlap the pool rightly opens one more.
    assert_eq!(
        writers.len(),
        1,
        "every batch on one connection: backends seen running the writer's INSERT {writers:?} in {samples} samples ({batches} batches)"
    );
    assert_eq!(
        env.gw
            .metric("rbac_gateway_audit_rows_total{sink=\"spool\"}")
            .await,
        0.0
    );
}

#[tokio::test]
async fn a_kept_audit_connection_cut_while_idle_is_replaced_without_spooling() {
    let LinkedEnv { db, up, link, gw } = LinkedEnv::start(&["--db-timeout-ms", "2000"]).await;
    let token = cached_denied_session(&db, &gw).await;
    assert_eq!(gw.get("/ops", Some(&token)).await.status, 403);
    // Every connection through the link ends (the server restarted, a proxy in between
    // dropped them); new ones are accepted again. Whether the writer learns it from the change
    // feed's failure first or from its own INSERT, the row goes to the database.
    link.cut();
    link.restore();
    let r = gw.get("/ops", Some(&token)).await;
    assert_eq!(r.status, 403);
    assert_eq!(
        db.audit_rows(&r.request_id()).await.len(),
        1,
        "the row is in the database when the 403 is sent"
    );
    assert_eq!(
        gw.metric("rbac_gateway_audit_rows_total{sink=\"spool\"}")
            .await,
        0.0,
        "written again on a fresh connection, not spooled"
    );
    assert_eq!(up.count(), 0);
}

/// A spool row as the gateway writes it (`src/stores/audit/spool.rs`, `AuditEvent` of `src/policy/audit_event.rs`), with this user agent.
fn spool_line(id: &str, user_agent: &str) -> String {
    serde_json::json!({
        "id": id, "event_type": "access_denied", "admin_id": null, "method": "GET",
        "path": "/spooled", "route": null, "required": null, "reason": "no_route",
        "request_id": id, "client_ip": "127.0.0.1", "user_agent": user_agent,
        "created_at_utc": "2026-11-25T18:00:00Z", "mapping_version": null,
    })
    .to_string()
}

/// A spool row the database refuses (a NUL byte: PostgreSQL's text cannot hold it) and a whole
/// line that is not a row: both are set aside beside the spool, every other row is stored, and
/// the spool is emptied. Before, the replay failed every half second for good, every later
/// denial went to the spool behind it (none reached the database), and nothing but the spool
/// gauge said so.
#[tokio::test]
async fn a_spooled_row_the_database_refuses_is_set_aside_not_holding_the_others() {
    let db = TestDb::new().await;
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("audit.spool");
    let ids: Vec<String> = (0..4)
        .map(|i| format!("0000000{i}-aaaa-4000-8000-{:012}", std::process::id()))
        .collect();
    let mut text = String::new();
    for (i, id) in ids.iter().enumerate() {
        let agent = if i == 1 { "bad\u{0}agent" } else { "curl" };
        text.push_str(&spool_line(id, agent));
        text.push('\n');
        if i == 2 {
            text.push_str("this is not a row {\n");
        }
    }
    std::fs::write(&spool, &text).unwrap();
    let mut opts = GatewayOpts::new(core_routes(), &db, up.addr);
    opts.spool = Some(spool.clone());
    let gw = Gateway::start(opts).await;
    let t0 = std::time::Instant::now();
    while std::fs::metadata(&spool).unwrap().len() > 0 {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "the spool was not emptied; log:\n{}",
            gw.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (i, id) in ids.iter().enumerate() {
        let stored = db.audit_rows(id).await.len();
        assert_eq!(stored, usize::from(i != 1), "row {i} stored {stored} times");
    }
    let rejected = std::fs::read_to_string(dir.path().join("audit.spool.rejected")).unwrap();
    let kept: Vec<serde_json::Value> = rejected
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(kept.len(), 2, "{rejected}");
    assert!(
        kept.iter().any(|k| k["row"]["id"] == ids[1].as_str()),
        "{rejected}"
    );
    assert!(
        kept.iter().any(|k| k["line"] == "this is not a row {"),
        "{rejected}"
    );
    // A new denial goes to the database, and /readyz names the set-aside file.
    let r = gw.get("/nowhere", None).await;
    assert_eq!(r.status, 403);
    assert_eq!(db.audit_rows(&r.request_id()).await.len(), 1);
    assert_eq!(
        gw.metric("rbac_gateway_audit_rows_total{sink=\"rejected\"}")
            .await,
        2.0
    );
    let ready = gw.admin_get("/readyz").await;
    assert_eq!(ready.status, 200);
    assert!(
        ready.body_str().contains("audit.spool.rejected"),
        "{}",
        ready.body_str()
    );
}

/// A database that answers but refuses the gateway's inserts (its role lost INSERT on the
/// table): denials are still answered 403 with their rows spooled, and `/readyz` says why they
/// do not reach the database; when INSERT is granted again, the rows are stored and the line
/// goes.
#[tokio::test]
async fn a_database_that_refuses_audit_rows_is_named_by_readyz() {
    let db = TestDb::new().await;
    let up = Upstream::start().await;
    let role = format!("gw_{}", uuid::Uuid::new_v4().simple());
    for sql in [
        format!("CREATE ROLE {role} LOGIN"),
        format!("GRANT pg_read_all_data TO {role}"),
    ] {
        sqlx::query(&sql).execute(&db.pool).await.unwrap();
    }
    // The same server and database as this role, without a password (the test server trusts
    // local connections).
    let (scheme, rest) = db.url.split_once("://").unwrap();
    let host = rest.split_once('@').map_or(rest, |(_, host)| host);
    let url = format!("{scheme}://{role}@{host}");
    let mut opts = GatewayOpts::new(core_routes(), &db, up.addr);
    opts.database_url = url;
    let gw = Gateway::start(opts).await;
    let r = gw.get("/nowhere", None).await;
    assert_eq!(r.status, 403, "log:\n{}", gw.log());
    let spooled = r.request_id();
    assert!(db.audit_rows(&spooled).await.is_empty());
    let ready = gw.admin_get("/readyz").await;
    assert!(
        ready.body_str().contains("the database refuses audit rows"),
        "{}",
        ready.body_str()
    );
    sqlx::query(&format!("GRANT INSERT ON access_audit_events TO {role}"))
        .execute(&db.pool)
        .await
        .unwrap();
    replayed_within_5s(&db, &gw, &spooled).await;
    let ready = gw.admin_get("/readyz").await;
    assert!(
        !ready.body_str().contains("refuses"),
        "{}",
        ready.body_str()
    );
}

/// `/readyz` names a spool that cannot be written (a read-only volume) and stops naming it once
/// the volume is writable again, without waiting for the next outage's append to find out.
#[tokio::test]
async fn a_spool_made_writable_again_is_no_longer_named_by_readyz() {
    let Some(mnt) = Mounted::tmpfs() else {
        eprintln!("skipped: mounting a tmpfs needs root (CI runs as root)");
        return;
    };
    mnt.read_only();
    let db = TestDb::new().await;
    let up = Upstream::start().await;
    let mut opts = GatewayOpts::new(core_routes(), &db, up.addr);
    opts.spool = Some(mnt.0.path().join("audit.spool"));
    let gw = Gateway::start(opts).await;
    let ready = gw.admin_get("/readyz").await;
    assert!(
        ready.body_str().contains("cannot be written"),
        "{}",
        ready.body_str()
    );
    mnt.read_write();
    let t0 = std::time::Instant::now();
    loop {
        let ready = gw.admin_get("/readyz").await;
        if !ready.body_str().contains("cannot be written") {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "still named after the volume was made writable: {}",
            ready.body_str()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits up to 5 s for the spooled row `id` to be replayed into the database.
async fn replayed_within_5s(db: &TestDb, gw: &Gateway, id: &str) {
    let t0 = std::time::Instant::now();
    while db.audit_rows(id).await.is_empty() {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "the spooled row never reached the database; log:\n{}",
            gw.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A spool another process holds (a gateway frozen mid-replay; the test holds its lock) costs
/// one bounded wait, not one a denial (issue 66): with the spool marked as holding rows, every
/// batch waited `--db-timeout-ms` for it again (five denials 2.01 s each, 40 at once up to
/// 4.05 s), and with the database refusing too the 503 came after five times the timeout.
/// Once the holder has held it past one replay attempt, denials go straight to the database
/// while the lock stays held; refused there, they are answered 503 within twice the timeout.
#[tokio::test]
async fn a_spool_another_process_holds_costs_one_bounded_wait_not_one_a_denial() {
    const TIMEOUT: Duration = Duration::from_millis(1000);
    let _alone = timed_alone().await;
    let db = TestDb::new().await;
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("audit.spool");
    let id = format!("00000000-dddd-4000-8000-{:012}", std::process::id());
    std::fs::write(&spool, spool_line(&id, "curl") + "\n").unwrap();
    let held = std::fs::OpenOptions::new()
        .append(true)
        .open(&spool)
        .unwrap();
    held.lock().unwrap();
    let mut opts = GatewayOpts::new(core_routes(), &db, up.addr)
        .arg("--db-timeout-ms")
        .arg(&TIMEOUT.as_millis().to_string());
    opts.spool = Some(spool.clone());
    let gw = Gateway::start(opts).await;
    let deny = || async {
        let t0 = std::time::Instant::now();
        let r = gw.get("/nowhere", None).await;
        (r, t0.elapsed())
    };
    // The one bounded wait (or none, if the gateway's replay found the spool held first).
    let (first, took) = deny().await;
    eprintln!("the first denial with the spool held: {took:?}");
    assert_eq!(first.status, 403);
    assert!(took < 2 * TIMEOUT, "the first denial took {took:?}");
    // Then none: each denial goes to the database while the lock stays held.
    for i in 0..5 {
        let (r, took) = deny().await;
        eprintln!("denial {i} with the spool held: {took:?}");
        assert_eq!(r.status, 403);
        assert!(took < TIMEOUT / 2, "denial {i} took {took:?}");
        assert_eq!(db.audit_rows(&r.request_id()).await.len(), 1);
    }
    let at_once: Vec<(Resp, Duration)> =
        futures_util::future::join_all((0..40).map(|_| deny())).await;
    let slowest = at_once.iter().map(|(_, t)| *t).max().unwrap();
    eprintln!("40 denials at once with the spool held: slowest {slowest:?}");
    assert!(at_once.iter().all(|(r, _)| r.status == 403));
    assert!(
        slowest < TIMEOUT / 2,
        "40 at once: the slowest took {slowest:?}"
    );
    assert!(
        db.audit_rows(&id).await.is_empty(),
        "replayed through a held lock"
    );
    // The database refusing too (its table locked past the timeout): 503 within twice the
    // timeout, each row kept for the database.
    let mut locker = db.pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE access_audit_events IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *locker)
        .await
        .unwrap();
    let mut refused = Vec::new();
    for i in 0..3 {
        let (r, took) = deny().await;
        eprintln!("denial {i} with the spool held and the database refusing: {took:?}");
        assert_eq!(r.status, 503, "{}", r.body_str());
        assert!(took < 2 * TIMEOUT, "refused denial {i} took {took:?}");
        refused.push(r.request_id());
    }
    locker.rollback().await.unwrap();
    drop(held);
    for request_id in std::iter::once(id).chain(refused) {
        eventually(
            Duration::from_secs(10),
            &format!("the row of {request_id} stored"),
            || async { db.audit_rows(&request_id).await.len() == 1 },
        )
        .await;
    }
    eventually(Duration::from_secs(10), "the spool emptied", || async {
        std::fs::metadata(&spool).unwrap().len() == 0
    })
    .await;
}

/// A denial answered 503 gets its row all the same (docs/design/durability.md, "A denial
/// answered 503"): no durable spool (Heroku's setting), PostgreSQL frozen past
/// `--db-timeout-ms` (the INSERT in flight commits when it resumes) and then stopped (the INSERT
/// never reached it): through both doors, every such denial's row is stored once PostgreSQL
/// answers, exactly once, and `explain --request-id` says the row records the decision, not
/// the answer.
#[tokio::test]
async fn a_denial_answered_503_gets_its_row_once_the_database_answers_through_both_doors() {
    let _alone = timed_alone().await;
    let (pg, db) = PrivatePg::start().await;
    let up = Upstream::start().await;
    let gw = Gateway::start(
        GatewayOpts::new(core_routes(), &db, up.addr)
            .env("GATEWAY_AUDIT_SPOOL_DURABLE", "false")
            .arg("--db-timeout-ms")
            .arg("300")
            .arg("--cache-ttl")
            .arg("600")
            .arg("--authz-listen")
            .arg("127.0.0.1:0"),
    )
    .await;
    let token = cached_denied_session(&db, &gw).await;
    let authz = gw.authz_addr();
    let ask_authz = |token: String| async move {
        send(
            authz,
            format!(
                "GET /authz HTTP/1.1\r\nHost: gw\r\nConnection: close\r\nCookie: console_session={token}\r\n\
                 X-Forwarded-Method: GET\r\nX-Forwarded-Uri: /ops\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap()
    };
    let r = ask_authz(token.clone()).await;
    assert_eq!(r.status, 403, "forward-auth denies with the cached session");
    let mut answered_503 = Vec::new();
    for outage in ["frozen", "stopped"] {
        match outage {
            "frozen" => pg.freeze(),
            _ => {
                db.pool.close().await;
                pg.pg("stop");
            }
        }
        let proxy = gw.get("/ops", Some(&token)).await;
        let door = ask_authz(token.clone()).await;
        for (name, r) in [("proxy", &proxy), ("forward-auth", &door)] {
            assert_eq!(
                r.status,
                503,
                "{outage}, {name}: {}; log:\n{}",
                r.body_str(),
                gw.log()
            );
            answered_503.push(r.request_id());
        }
        assert!(up.count() == 0, "nothing denied was forwarded");
        let ready = gw.admin_get("/readyz").await;
        assert!(
            ready
                .body_str()
                .contains("audit row(s) of denials answered 503 wait in memory"),
            "{outage}: {}",
            ready.body_str()
        );
        match outage {
            "frozen" => pg.thaw(),
            _ => pg.pg("start"),
        }
    }
    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    let db = TestDb {
        url: db.url.clone(),
        pool,
    };
    eventually(
        Duration::from_secs(15),
        "every denial answered 503 has its row",
        || async { db.denied_rows(&answered_503).await.len() >= answered_503.len() },
    )
    .await;
    for id in &answered_503 {
        assert_eq!(db.audit_rows(id).await.len(), 1, "exactly one row for {id}");
    }
    eventually(
        Duration::from_secs(5),
        "/readyz no longer names them",
        || async {
            !gw.admin_get("/readyz")
                .await
                .body_str()
                .contains("denials answered 503")
        },
    )
    .await;
    // The row records the decision; explain does not claim the client got a 403.
    let out = crate::cli::bin()
        .arg("explain")
        .arg("--routes")
        .arg(core_routes())
        .arg("--database-url")
        .arg(&db.url)
        .arg("--request-id")
        .arg(&answered_503[0])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("answer: not forwarded; 403 if this row was durable"),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A denial that comes while a long replay holds the spool is answered within the database's
/// bound, not after the whole replay: its row goes to the database the replay is reaching, and
/// every spooled row is stored too. Before, the append waited for the replay's lock, and with it
/// the 403 (30 s in the review's run: 10,240 spooled rows, a database taking 1.5 s a statement).
#[tokio::test]
async fn a_denial_during_a_long_replay_does_not_wait_for_it() {
    let db = TestDb::new().await;
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("audit.spool");
    let pid = std::process::id();
    let spooled = 20 * 512;
    let mut text = String::new();
    for i in 0..spooled {
        text.push_str(&spool_line(
            &format!("{i:08}-bbbb-4000-8000-{pid:012}"),
            "curl",
        ));
        text.push('\n');
    }
    std::fs::write(&spool, &text).unwrap();
    // Every INSERT into the audit table takes 0.6 s: the replay's 20 statements, 12 s at least.
    sqlx::raw_sql(
        "CREATE FUNCTION slow_audit() RETURNS trigger LANGUAGE plpgsql AS \
         $$ BEGIN PERFORM pg_sleep(0.6); RETURN NULL; END $$; \
         CREATE TRIGGER slow_audit BEFORE INSERT ON access_audit_events \
         FOR EACH STATEMENT EXECUTE FUNCTION slow_audit();",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let mut opts = GatewayOpts::new(core_routes(), &db, up.addr);
    opts.spool = Some(spool.clone());
    let gw = Gateway::start(opts).await;
    let replayed = "rbac_gateway_audit_replayed_total";
    eventually(Duration::from_secs(20), "the replay started", || async {
        gw.metric(replayed).await >= 512.0
    })
    .await;
    let t1 = std::time::Instant::now();
    let r = gw.get("/nowhere", None).await;
    let took = t1.elapsed();
    let during = gw.metric(replayed).await;
    assert_eq!(r.status, 403);
    assert!(
        took < Duration::from_secs(5),
        "the denial waited {took:?}, for the replay ({during} of {spooled} rows replayed)"
    );
    assert!(
        during < spooled as f64,
        "the replay ended before the denial was answered: the test showed nothing"
    );
    assert_eq!(db.audit_rows(&r.request_id()).await.len(), 1);
    eventually(Duration::from_secs(60), "the spool emptied", || async {
        std::fs::metadata(&spool).unwrap().len() == 0
    })
    .await;
    let stored: i64 =
        sqlx::query_scalar("SELECT count(*) FROM access_audit_events WHERE path = '/spooled'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(stored, spooled as i64, "every spooled row stored once");
}

/// A denial that finds the spool held by a replay that is not storing rows (here another
/// gateway's, which the test stands in for by holding the spool's lock) waits at most
/// `--db-timeout-ms` for it, then goes to the database: before, it waited as long as the other
/// gateway held the spool (for ever, for one frozen mid-replay). With the database refusing as
/// well, the denial gets 503 within a bound and its row later. The spooled row is stored once
/// the lock is let go.
#[tokio::test]
async fn a_denial_waits_for_another_gateways_replay_at_most_the_database_timeout() {
    let db = TestDb::new().await;
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("audit.spool");
    let id = format!("00000000-cccc-4000-8000-{:012}", std::process::id());
    std::fs::write(&spool, spool_line(&id, "curl") + "\n").unwrap();
    let held = std::fs::OpenOptions::new()
        .append(true)
        .open(&spool)
        .unwrap();
    held.lock().unwrap();
    let mut opts = GatewayOpts::new(core_routes(), &db, up.addr)
        .arg("--db-timeout-ms")
        .arg("1000");
    opts.spool = Some(spool.clone());
    let gw = Gateway::start(opts).await;
    let t0 = std::time::Instant::now();
    let r = gw.get("/nowhere", None).await;
    let took = t0.elapsed();
    assert_eq!(r.status, 403);
    assert!(
        took < Duration::from_secs(5),
        "the denial waited {took:?} for a spool another process holds"
    );
    assert_eq!(db.audit_rows(&r.request_id()).await.len(), 1);
    assert!(
        db.audit_rows(&id).await.is_empty(),
        "replayed through a held lock"
    );
    // The database refusing too (its table locked past --db-timeout-ms): the denial is answered
    // 503 within a bound, its row kept for the database, not held behind the spool for as long
    // as the other gateway holds it (before: until it let go, and shutdown with it).
    let mut locker = db.pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE access_audit_events IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *locker)
        .await
        .unwrap();
    let t1 = std::time::Instant::now();
    let refused = gw.get("/nowhere", None).await;
    let took = t1.elapsed();
    assert_eq!(refused.status, 503, "{}", refused.body_str());
    assert!(
        took < Duration::from_secs(8),
        "the refused denial waited {took:?} for a spool another process holds"
    );
    locker.rollback().await.unwrap();
    drop(held);
    replayed_within_5s(&db, &gw, &id).await;
    replayed_within_5s(&db, &gw, &refused.request_id()).await;
}

/// The audit writer opens its own connection (`Db::acquire_new`, so its socket is the runtime's
/// that asks: the data plane's first worker); an idle connection of the pool is closed first,
/// so the pool never has more open than its size (a pooler in session mode sized to
/// `--db-pool-size` would otherwise make the writer wait).
#[tokio::test]
async fn a_new_connection_for_the_writer_keeps_the_pool_within_its_size() {
    let db = TestDb::new().await;
    let pool =
        rbac_gateway::stores::db::Db::connect(&db.url, None, 1, Duration::from_secs(5)).unwrap();
    {
        let mut idle = pool.acquire().await.unwrap();
        sqlx::Executor::execute(&mut *idle, "SELECT 1")
            .await
            .unwrap();
        idle.done();
    }
    assert_eq!((pool.pool().size(), pool.pool().num_idle()), (1, 1));
    let mut own = tokio::time::timeout(Duration::from_secs(10), pool.acquire_new())
        .await
        .expect("not waiting for a slot the idle connection held")
        .unwrap();
    sqlx::Executor::execute(&mut *own, "SELECT 1")
        .await
        .unwrap();
    assert_eq!(
        (pool.pool().size(), pool.pool().num_idle()),
        (1, 0),
        "the idle one closed, one open"
    );
}
