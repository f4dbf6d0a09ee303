//! What traffic without a session can make the gateway write (issue 66 §5,
//! `src/gateway/anonymous.rs`): one row per client, reason and rule a window, then one row with
//! the count of the rest; a denial of a request with a session always gets its own row.

use std::time::Duration;

use crate::helpers::*;

async fn rows(db: &TestDb, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(&db.pool).await.unwrap()
}

/// 100 denials without a session from one client to a path no rule maps: one row before the
/// first 403, one more with the count of the other 99 once the window ends. Two more clients
/// get a row each; past `--anonymous-denial-keys`, new clients share one row and count. 30
/// denials of an admin's session: 30 rows, each its own, whatever the window.
#[tokio::test]
async fn denials_without_a_session_write_a_row_per_client_reason_and_rule_a_window_then_the_count()
{
    let env = Env::with(core_routes(), |o| {
        o.arg("--trusted-proxies")
            .arg("1")
            .arg("--anonymous-denial-window")
            .arg("2")
            .arg("--anonymous-denial-keys")
            .arg("3")
    })
    .await;
    let (gw, db) = (&env.gw, &env.db);
    let from = |client: &'static str| [("X-Forwarded-For", client)];
    for _ in 0..100 {
        let r = gw
            .request("GET", "/no/such/page", None, &from("203.0.113.1"), b"")
            .await;
        assert_eq!(r.status, 403);
    }
    let anonymous = "SELECT count(*) FROM access_audit_events WHERE admin_id IS NULL";
    assert_eq!(
        rows(db, anonymous).await,
        1,
        "one row for the first denial, before its 403"
    );
    // Two more clients, then three past the three keys a window keeps (they share one key).
    for client in [
        "203.0.113.2",
        "203.0.113.3",
        "203.0.113.4",
        "203.0.113.5",
        "203.0.113.6",
    ] {
        for _ in 0..2 {
            let r = gw
                .request("GET", "/no/such/page", None, &from(client), b"")
                .await;
            assert_eq!(r.status, 403);
        }
    }
    assert_eq!(
        rows(db, anonymous).await,
        4,
        "three keys and the shared one"
    );
    // An admin's denials: a row each.
    let (admin, token) = db.admin_with_roles(&[]).await;
    for _ in 0..30 {
        let r = gw
            .request("GET", "/ops", Some(&token), &from("203.0.113.1"), b"")
            .await;
        assert_eq!(r.status, 403);
    }
    let theirs = format!("SELECT count(*) FROM access_audit_events WHERE admin_id = '{admin}'");
    assert_eq!(rows(db, &theirs).await, 30);
    // An admin whose session the gateway has not seen yet, on a path no rule maps: its session
    // is looked up, and each denial keeps its own row (not counted as one without a session).
    let (fresh, fresh_token) = db.admin_with_roles(&[]).await;
    for _ in 0..5 {
        let r = gw
            .request(
                "GET",
                "/no/such/page",
                Some(&fresh_token),
                &from("203.0.113.1"),
                b"",
            )
            .await;
        assert_eq!(r.status, 403);
    }
    let fresh_rows = format!("SELECT count(*) FROM access_audit_events WHERE admin_id = '{fresh}'");
    assert_eq!(
        rows(db, &fresh_rows).await,
        5,
        "an uncached session's denials, a row each"
    );
    // The window ends: the counts are written, each denial counted once.
    eventually(
        Duration::from_secs(10),
        "the window's counts written",
        || async {
            rows(
            db,
            "SELECT coalesce(sum(occurrences), 0)::int8 FROM access_audit_events WHERE admin_id IS NULL",
        )
        .await
            == 110
        },
    )
    .await;
    let counted: Vec<(Option<String>, i64, i64)> = sqlx::query_as(
        "SELECT client_ip, count(*), sum(occurrences)::int8 FROM access_audit_events \
         WHERE admin_id IS NULL GROUP BY 1 ORDER BY 1",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        counted,
        vec![
            (Some("203.0.113.1".into()), 2, 100),
            (Some("203.0.113.2".into()), 2, 2),
            (Some("203.0.113.3".into()), 2, 2),
            // The shared key: its first row (.4's), then one counting the other 5, which names
            // no client (it counts several).
            (Some("203.0.113.4".into()), 1, 1),
            (None, 1, 5),
        ],
        "per client: its rows, and the denials they stand for"
    );
    assert_eq!(
        gw.metric("rbac_gateway_anonymous_denials_counted_total")
            .await,
        (99 + 1 + 1 + 5) as f64
    );
    assert_eq!(rows(db, &theirs).await, 30);
}

/// `--anonymous-denial-window 0`: every denial writes its row, as before.
#[tokio::test]
async fn a_window_of_zero_writes_every_denial() {
    let env = Env::with(core_routes(), |o| {
        o.arg("--anonymous-denial-window").arg("0")
    })
    .await;
    for _ in 0..20 {
        assert_eq!(env.gw.status("/no/such/page", None).await, 403);
    }
    assert_eq!(
        rows(
            &env.db,
            "SELECT count(*) FROM access_audit_events WHERE admin_id IS NULL AND occurrences = 1"
        )
        .await,
        20
    );
}

/// The counts of a window still open at SIGTERM are written after the data plane has stopped
/// (until 2026-11-28 the shutdown panicked there instead: its timer was made outside the
/// background runtime, "there is no reactor running", and the counts were lost). The audit
/// writer runs on the data plane's first worker while it serves; the background runtime takes
/// it over once the doors have finished, and writes these.
#[tokio::test]
async fn a_window_open_at_sigterm_is_written_after_the_data_plane_stops() {
    let mut env = Env::with(core_routes(), |o| {
        o.arg("--trusted-proxies")
            .arg("1")
            .arg("--anonymous-denial-window")
            .arg("3600")
    })
    .await;
    let from = [("X-Forwarded-For", "203.0.113.7")];
    for _ in 0..20 {
        let r = env
            .gw
            .request("GET", "/no/such/page", None, &from, b"")
            .await;
        assert_eq!(r.status, 403);
    }
    let sum = "SELECT coalesce(sum(occurrences), 0)::int8 FROM access_audit_events WHERE admin_id IS NULL";
    assert_eq!(
        rows(&env.db, sum).await,
        1,
        "the first denial's row, the rest counted"
    );
    env.gw.signal("TERM");
    let status = env
        .gw
        .exited(Duration::from_secs(20), "the gateway did not stop")
        .await;
    assert!(status.success(), "{status:?}; log:\n{}", env.gw.log());
    assert_eq!(
        rows(&env.db, sum).await,
        20,
        "the window's count written at the stop; log:\n{}",
        env.gw.log()
    );
}
