//! Fail closed: the database unreachable, the audit row kept while it is.

use std::time::Duration;

use crate::helpers::*;

#[tokio::test]
async fn database_down_uncached_is_503_cached_keeps_its_answer() {
    let LinkedEnv { db, up, link, gw } = LinkedEnv::start(&["--db-timeout-ms", "500"]).await;
    let (_, cached) = db.admin_with_roles(&["console-audit-user"]).await;
    let (_, uncached) = db.admin_with_roles(&["console-audit-user"]).await;
    settle(&[&gw]).await;
    assert_eq!(
        gw.get("/console/customers/1", Some(&cached)).await.status,
        200
    );

    link.cut();
    let r = gw.get("/console/customers/1", Some(&uncached)).await;
    assert_eq!(r.status, 503, "uncached session with the database down");
    assert_eq!(
        gw.get("/console/customers/2", Some(&cached)).await.status,
        200,
        "cached answer kept within the TTL"
    );
    assert_eq!(up.count(), 2, "the 503 was not forwarded");
    assert_eq!(gw.admin_get("/readyz").await.status, 503);

    // A denial for a cached principal while the database is down: 403, the row spooled...
    let r = gw.get("/ops", Some(&cached)).await;
    assert_eq!(r.status, 403);
    let rid = r.request_id();
    assert!(db.audit_rows(&rid).await.is_empty());
    assert!(
        gw.metric("rbac_gateway_audit_rows_total{sink=\"spool\"}")
            .await
            >= 1.0
    );

    // ...and written exactly once when the database answers again; the gateway recovers alone.
    link.restore();
    let mut rows = Vec::new();
    for _ in 0..100 {
        rows = db.audit_rows(&rid).await;
        if !rows.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(rows.len(), 1, "spooled row replayed once");
    assert_eq!(rows[0].reason, "missing_role");
    assert_eq!(
        gw.get("/console/customers/3", Some(&uncached)).await.status,
        200,
        "recovered without a restart"
    );
    assert_eq!(gw.admin_get("/readyz").await.status, 200);
}

#[tokio::test]
async fn database_unreachable_from_the_start_fails_closed() {
    let db = TestDb::new().await;
    let up = Upstream::start().await;
    let mut opts = GatewayOpts::new(core_routes(), &db, up.addr)
        .arg("--db-timeout-ms")
        .arg("300");
    let (_closed, port) = closed_port();
    opts.database_url = format!("postgres://postgres@127.0.0.1:{port}/postgres");
    opts.wait_ready = false;
    let gw = Gateway::start(opts).await;
    let ready = gw.admin_get("/readyz").await;
    assert_eq!(ready.status, 503);
    // The cause, not the pool's "pool timed out": here nothing listens on the port.
    assert!(
        ready.body_str().contains("database unavailable: ")
            && ready.body_str().contains("Connection refused"),
        "{}",
        ready.body_str()
    );
    assert_eq!(gw.admin_get("/healthz").await.status, 200);
    let started = std::time::Instant::now();
    while !gw.log().contains("database unreachable at start-up") {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "no start-up error naming the cause; log:\n{}",
            gw.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(gw.log().contains("Connection refused"), "{}", gw.log());
    let r = gw.get("/ops", Some("some-token")).await;
    assert_eq!(r.status, 503);
    assert_eq!(
        gw.get("/auth/login", None).await.status,
        200,
        "public routes need no database"
    );
    assert_eq!(up.count(), 1);
}

#[tokio::test]
async fn spool_survives_a_gateway_kill_and_is_replayed_at_start() {
    let LinkedEnv {
        db,
        up,
        link,
        mut gw,
    } = LinkedEnv::start(&["--db-timeout-ms", "500"]).await;
    let token = cached_denied_session(&db, &gw).await;
    link.cut();
    let mut ids = Vec::new();
    for _ in 0..5 {
        let r = gw.get("/ops", Some(&token)).await;
        assert_eq!(r.status, 403);
        ids.push(r.request_id());
    }
    // SIGKILL: nothing gets a chance to flush.
    gw.child.kill().unwrap();
    gw.child.wait().unwrap();
    link.restore();
    let dir = std::mem::replace(&mut gw.dir, tempfile::tempdir().unwrap());
    let routes = gw.routes.clone();
    drop(gw);
    let gw = Gateway::start_in(GatewayOpts::new(core_routes(), &db, up.addr), dir, routes).await;
    for id in &ids {
        let mut n = 0;
        for _ in 0..100 {
            n = db.audit_rows(id).await.len();
            if n > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(
            n,
            1,
            "row {id} replayed exactly once after restart; log:\n{}",
            gw.log()
        );
    }
}

#[tokio::test]
async fn the_database_connection_can_require_tls() {
    let (pg, db) = PrivatePg::start().await;
    // A self-signed certificate for the private server, then ssl = on.
    let data = pg.data_dir();
    let ok = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
        ])
        .arg("-keyout")
        .arg(data.join("server.key"))
        .arg("-out")
        .arg(data.join("server.crt"))
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    for f in ["server.key", "server.crt"] {
        let _ = std::process::Command::new("chown")
            .arg("postgres")
            .arg(data.join(f))
            .status();
        let _ = std::process::Command::new("chmod")
            .arg("600")
            .arg(data.join(f))
            .status();
    }
    sqlx::query("ALTER SYSTEM SET ssl = on")
        .execute(&db.pool)
        .await
        .unwrap();
    sqlx::query("SELECT pg_reload_conf()")
        .execute(&db.pool)
        .await
        .unwrap();
    // The reload is asynchronous: wait until the server accepts a TLS-only connection.
    let tls_url = format!("{}?sslmode=require", pg.url);
    eventually(
        Duration::from_secs(10),
        "PostgreSQL accepts sslmode=require",
        || async {
            <sqlx::PgConnection as sqlx::Connection>::connect(&tls_url)
                .await
                .is_ok()
        },
    )
    .await;
    let up = Upstream::start().await;
    let mut o = GatewayOpts::new(core_routes(), &db, up.addr);
    o.database_url = tls_url;
    let gw = Gateway::start(o).await;
    let (_, token) = db.admin_with_roles(&["console-audit-user"]).await;
    assert_eq!(
        gw.get("/console/customers/1", Some(&token)).await.status,
        200,
        "{}",
        gw.log()
    );
    let tls: Vec<bool> = sqlx::query_scalar(
        "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a ON a.pid = s.pid WHERE a.application_name = 'rbac-gateway'",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert!(
        !tls.is_empty() && tls.iter().all(|t| *t),
        "every gateway connection uses TLS: {tls:?}"
    );
}

/// Waits up to `limit` for the gateway's log to satisfy `ok`.
async fn log_until(gw: &Gateway, limit: Duration, what: &str, ok: impl Fn(&str) -> bool) {
    let started = std::time::Instant::now();
    while !ok(&gw.log()) {
        assert!(
            started.elapsed() < limit,
            "{what} not logged within {limit:?}; log:\n{}",
            gw.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_stalled_database_holds_up_neither_reloads_nor_readyz() {
    // Connections that stay open and carry nothing (a partition, a hung PgBouncer): no timeout
    // of the server's own can fire. Edits must still be live within a second (the change made
    // after each reload asks the database about the file's role names), and /readyz must
    // answer within the probes' 3 s.
    let LinkedEnv { db, link, gw, .. } = LinkedEnv::start(&["--db-timeout-ms", "500"]).await;
    // Connections in the pool, idle: the check after a reload takes one (and waits on it).
    let (_, token) = db.admin_with_roles(&["console-manager"]).await;
    assert_eq!(gw.get("/ops", Some(&token)).await.status, 200);
    assert_eq!(gw.admin_get("/readyz").await.status, 200);
    let gone = Route::get("/zz").access("gone").to_toml();
    let public = Route::get("/zz").access("public").to_toml();
    link.stall();
    for (i, (text, status)) in [(&gone, 404), (&public, 200), (&gone, 404)]
        .into_iter()
        .enumerate()
    {
        let tmp = gw.routes.with_extension("tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &gw.routes).unwrap();
        let started = std::time::Instant::now();
        while gw.get("/zz", None).await.status != status {
            assert!(
                started.elapsed() < Duration::from_millis(1500),
                "edit {i} not live after 1.5 s with the database stalled; log:\n{}",
                gw.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let started = std::time::Instant::now();
    let ready = gw.admin_get("/readyz").await;
    let took = started.elapsed();
    assert_eq!(ready.status, 503, "{}", ready.body_str());
    assert!(
        ready.body_str().starts_with("database unavailable: "),
        "{}",
        ready.body_str()
    );
    assert!(took < Duration::from_millis(2800), "/readyz took {took:?}");
    link.restore();
}

#[tokio::test]
async fn names_are_checked_once_the_database_answers_after_start() {
    // Started while the database is unreachable: the cause is logged, and the mapping's names
    // are checked when it answers (not only at the next reload).
    let db = TestDb::new().await;
    let up = Upstream::start().await;
    let link = PgLink::new(&db.url).await;
    link.cut();
    let dir = tempfile::tempdir().unwrap();
    let typo = dir.path().join("typo.toml");
    std::fs::write(
        &typo,
        Route::get("/ops").roles(&["console-manger"]).to_toml(),
    )
    .unwrap();
    let mut opts = GatewayOpts::new(&typo, &db, up.addr)
        .via(&link)
        .arg("--db-timeout-ms")
        .arg("300");
    opts.wait_ready = false;
    let gw = Gateway::start(opts).await;
    log_until(&gw, Duration::from_secs(5), "the start-up cause", |l| {
        l.contains("database unreachable at start-up")
    })
    .await;
    assert!(!gw.log().contains("console-manger"), "{}", gw.log());
    link.restore();
    log_until(&gw, Duration::from_secs(10), "the unknown role", |l| {
        l.contains("the database does not have") && l.contains("console-manger")
    })
    .await;
}

#[tokio::test]
async fn a_stalled_database_gets_503_or_a_spooled_row_not_a_hung_request() {
    // A database that stops answering with its connections open (a partition, a stopped
    // server): no server-side timeout fires. An uncached session gets 503 within the database
    // timeout; a cached one's denial is spooled, and the replay that then meets the stall
    // (the spool locked while it writes) does not hold the denials after it.
    let LinkedEnv { db, link, gw, .. } = LinkedEnv::start(&["--db-timeout-ms", "300"]).await;
    let (_, uncached) = db.admin_with_roles(&["console-user"]).await;
    let token = cached_denied_session(&db, &gw).await;
    assert_eq!(gw.admin_get("/readyz").await.status, 200);
    link.stall();
    let timed = |token: String| {
        let gw = &gw;
        async move {
            let started = std::time::Instant::now();
            let r = tokio::time::timeout(Duration::from_secs(6), gw.get("/ops", Some(&token)))
                .await
                .unwrap_or_else(|_| panic!("still waiting after 6 s; log:\n{}", gw.log()));
            (r.status, started.elapsed())
        }
    };
    let (status, took) = timed(uncached.clone()).await;
    assert_eq!(status, 503, "uncached session, database stalled");
    assert!(took < Duration::from_secs(2), "503 after {took:?}");
    // Its insert times out: spooled; the replay that follows meets the stall (and gives up
    // after its bound, counted as a database error; the next one meets it again).
    assert_eq!(timed(token.clone()).await.0, 403);
    let errors = gw.metric("rbac_gateway_db_errors_total").await;
    eventually(
        Duration::from_secs(10),
        "a spool replay met the stalled database",
        || async { gw.metric("rbac_gateway_db_errors_total").await > errors },
    )
    .await;
    for i in 0..3 {
        let (status, took) = timed(token.clone()).await;
        assert_eq!(status, 403, "denial {i}");
        assert!(took < Duration::from_secs(3), "denial {i} took {took:?}");
    }
    link.restore();
    // Every row reaches the database once it answers.
    let started = std::time::Instant::now();
    while db.audit_count().await < 5 {
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "rows not replayed; log:\n{}",
            gw.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(db.audit_count().await, 5);
}

/// The database answers but the change feed cannot read its log (here a lock holds it; a
/// revoked SELECT or a statement timeout do the same): changes would wait for the cache TTL,
/// so `/readyz` says so with 503 until the feed reads again.
#[tokio::test]
async fn readyz_fails_while_the_change_feed_cannot_read_its_log() {
    let env = Env::core().await;
    let gw = &env.gw;
    assert_eq!(gw.admin_get("/readyz").await.status, 200);
    assert!(
        gw.metric("rbac_gateway_feed_last_read_timestamp_seconds")
            .await
            > 1.7e9
    );
    let mut tx = env.db.pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE rbac_change_log IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *tx)
        .await
        .unwrap();
    let t0 = std::time::Instant::now();
    let ready = loop {
        let r = gw.admin_get("/readyz").await;
        if r.status == 503 {
            break r;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "/readyz stayed {} while the feed could not read: {}",
            r.status,
            r.body_str()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        ready.body_str().contains("change feed"),
        "{}",
        ready.body_str()
    );
    tx.rollback().await.unwrap();
    let t0 = std::time::Instant::now();
    eventually(
        Duration::from_secs(5).saturating_sub(t0.elapsed()),
        "not ready again",
        || async { gw.admin_get("/readyz").await.status == 200 },
    )
    .await;
}
