//! Grants take effect at once: the change feed keeps every replica's cache coherent with the
//! database within 1 s, whatever the TTL (60 s in these tests).

use std::time::{Duration, Instant};

use crate::helpers::*;

const BOUND: Duration = Duration::from_secs(1);

async fn replicas(
    db: &TestDb,
    up: &Upstream,
    n: usize,
    database_url: Option<&str>,
) -> Vec<Gateway> {
    let mut out = Vec::new();
    for _ in 0..n {
        let mut o = GatewayOpts::new(core_routes(), db, up.addr)
            .arg("--cache-ttl")
            .arg("60");
        if let Some(url) = database_url {
            o.database_url = url.to_string();
        }
        out.push(Gateway::start(o).await);
    }
    out
}

/// Polls every replica until each answers `want`; returns the time each took from `since`.
async fn until_all(
    gws: &[Gateway],
    path: &str,
    token: &str,
    want: u16,
    since: Instant,
    limit: Duration,
) -> Vec<Duration> {
    let mut done: Vec<Option<Duration>> = vec![None; gws.len()];
    while done.iter().any(Option::is_none) {
        for (i, gw) in gws.iter().enumerate() {
            if done[i].is_none() && gw.get(path, Some(token)).await.status == want {
                done[i] = Some(since.elapsed());
            }
        }
        assert!(
            since.elapsed() < limit,
            "not all replicas answered {want} within {limit:?}: {done:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    done.into_iter().map(Option::unwrap).collect()
}

/// An admin in raxx-platform-admins, seen allowed on /ops by every replica.
async fn platform_admin(db: &TestDb, gws: &[Gateway]) -> (String, String) {
    let (admin, token) = db.admin_with_roles(&[]).await;
    db.join_group(&admin, "raxx-platform-admins").await;
    until_all(
        gws,
        "/ops",
        &token,
        200,
        Instant::now(),
        Duration::from_secs(5),
    )
    .await;
    (admin, token)
}

fn report(what: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let p50 = samples[samples.len() / 2];
    let max = *samples.last().unwrap();
    // Printed for the README (cargo test -- --nocapture coherence); the bound is asserted.
    println!(
        "staleness {what}: n={} p50={:.1} ms max={:.1} ms",
        samples.len(),
        p50.as_secs_f64() * 1e3,
        max.as_secs_f64() * 1e3
    );
}

#[tokio::test]
async fn revocations_reach_three_replicas_within_a_second() {
    let db = TestDb::new().await;
    let up = Upstream::start().await;
    let gws = replicas(&db, &up, 3, None).await;
    let mut samples = Vec::new();
    for _ in 0..5 {
        // A removed group membership.
        let (admin, token) = platform_admin(&db, &gws).await;
        let t0 = Instant::now();
        db.leave_group(&admin, "raxx-platform-admins").await;
        samples.extend(until_all(&gws, "/ops", &token, 403, t0, Duration::from_secs(5)).await);
    }
    assert!(samples.iter().all(|d| *d < BOUND), "{samples:?}");
    report("group membership removed, 3 replicas", samples.clone());

    // A revoked session: the next request is sent to the login page.
    let (_, token) = db.admin_with_roles(&["console-manager"]).await;
    until_all(
        &gws,
        "/ops",
        &token,
        200,
        Instant::now(),
        Duration::from_secs(5),
    )
    .await;
    let t0 = Instant::now();
    db.revoke_session(&token).await;
    let s = until_all(&gws, "/ops", &token, 302, t0, Duration::from_secs(5)).await;
    assert!(s.iter().all(|d| *d < BOUND), "{s:?}");
    report("session revoked, 3 replicas", s);

    // A role removed from a group (a catalogue change: everyone is evicted).
    let (_, token) = db.admin_with_roles(&["console-manager"]).await;
    until_all(
        &gws,
        "/ops",
        &token,
        200,
        Instant::now(),
        Duration::from_secs(5),
    )
    .await;
    let t0 = Instant::now();
    sqlx::query("DELETE FROM rbac_group_roles WHERE role_id = (SELECT id FROM rbac_roles WHERE name = 'console-manager') AND group_id IN (SELECT id FROM rbac_groups WHERE name LIKE 'test-group-%')")
        .execute(&db.pool)
        .await
        .unwrap();
    let s = until_all(&gws, "/ops", &token, 403, t0, Duration::from_secs(5)).await;
    assert!(s.iter().all(|d| *d < BOUND), "{s:?}");

    // Early revocation of break-glass.
    let admin = db.admin("bg-early@example.test").await;
    let token = db.session(&admin).await;
    let bg = db.break_glass(&admin, 3600.0).await;
    until_all(
        &gws,
        "/ops",
        &token,
        200,
        Instant::now(),
        Duration::from_secs(5),
    )
    .await;
    let t0 = Instant::now();
    sqlx::query("UPDATE rbac_break_glass_sessions SET revoked_at_utc = now() WHERE id = $1")
        .bind(&bg)
        .execute(&db.pool)
        .await
        .unwrap();
    let s = until_all(&gws, "/ops", &token, 403, t0, Duration::from_secs(5)).await;
    assert!(s.iter().all(|d| *d < BOUND), "{s:?}");
    report("break-glass revoked early, 3 replicas", s);
}

#[tokio::test]
async fn a_killed_listen_connection_still_meets_the_bound() {
    let db = TestDb::new().await;
    let up = Upstream::start().await;
    let gws = replicas(&db, &up, 1, None).await;
    let (admin, token) = platform_admin(&db, &gws).await;
    let killed: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() AND query LIKE 'LISTEN%'",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert!(
        !killed.is_empty() && killed.iter().all(|k| *k),
        "the gateway's LISTEN connection was found and killed"
    );
    let t0 = Instant::now();
    db.leave_group(&admin, "raxx-platform-admins").await;
    let s = until_all(&gws, "/ops", &token, 403, t0, Duration::from_secs(5)).await;
    assert!(s[0] < BOUND, "{s:?}");
    report("LISTEN connection killed", s);
}

#[tokio::test]
async fn a_postgres_restart_leaves_no_stale_entry() {
    // A private server, so the restart does not disturb other tests.
    let (pg, db) = PrivatePg::start().await;
    let base = pg.url.clone();
    let up = Upstream::start().await;
    let gws = replicas(&db, &up, 1, None).await;
    let (admin, token) = platform_admin(&db, &gws).await;
    // The change is committed, then the server restarts at once: the notification may be lost,
    // the log is not.
    db.leave_group(&admin, "raxx-platform-admins").await;
    db.pool.close().await;
    pg.pg("restart");
    let t0 = Instant::now();
    let s = until_all(&gws, "/ops", &token, 403, t0, Duration::from_secs(10)).await;
    report("PostgreSQL restarted", s);
    // And the feed works again after the restart.
    let pool = sqlx::PgPool::connect(&base).await.unwrap();
    let db = TestDb { url: base, pool };
    let (admin2, token2) = platform_admin(&db, &gws).await;
    let t0 = Instant::now();
    db.leave_group(&admin2, "raxx-platform-admins").await;
    let s = until_all(&gws, "/ops", &token2, 403, t0, Duration::from_secs(5)).await;
    assert!(s[0] < BOUND, "{s:?}");
}
