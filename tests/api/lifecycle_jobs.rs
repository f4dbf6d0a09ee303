//! Lifecycle jobs that miss nothing (issue 40), on real PostgreSQL and three replicas:
//! break-glass group changes alerted from the change itself, exactly once; one hanging FreeScout
//! ticket or one poisoned grant delays nobody else; FreeScout's webhook revokes at once, and only
//! for an authenticated caller and a ticket FreeScout itself reports closed.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::Row;

use crate::helpers::*;
use crate::lifecycle::revoked;
use crate::tickets::{freescout, grant};

const SECRET: &str = "test-webhook-secret-0123456789";

async fn count(db: &TestDb, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(&db.pool).await.unwrap()
}

/// Alert passes each replica has run (done or skipped).
async fn passes(gws: &[Gateway]) -> Vec<f64> {
    let mut out = Vec::new();
    for gw in gws {
        out.push(
            gw.metric("rbac_gateway_alert_passes_total{result=\"done\"}")
                .await
                + gw.metric("rbac_gateway_alert_passes_total{result=\"skipped\"}")
                    .await,
        );
    }
    out
}

/// Waits until every replica ran two more alert passes than now: whatever any of them would
/// still raise or deliver, it has.
async fn two_more_passes(gws: &[Gateway]) {
    let before = passes(gws).await;
    eventually(
        Duration::from_secs(10),
        &format!("two more alert passes on every replica after {before:?}"),
        || async {
            let now = passes(gws).await;
            now.iter().zip(&before).all(|(n, b)| *n >= b + 2.0)
        },
    )
    .await;
}

async fn replicas(db: &TestDb, up: &Upstream, extra: &[String]) -> Vec<Gateway> {
    let mut gws = Vec::new();
    for _ in 0..3 {
        let mut o = GatewayOpts::new(core_routes(), db, up.addr);
        for a in extra {
            o = o.arg(a);
        }
        gws.push(Gateway::start(o).await);
    }
    gws
}

fn texts(hook: &Upstream) -> Vec<String> {
    hook.requests()
        .iter()
        .map(|r| {
            let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
            v["text"].as_str().unwrap().to_string()
        })
        .collect()
}

/// Issue 40, case 1: a role added to `break-glass` and removed within 50 ms (two commits) is
/// alerted: the addition once and the removal once, by exactly one of three replicas, naming
/// the role, the database user and the time, "outside any declared deploy window".
#[tokio::test]
async fn a_role_added_and_removed_within_50_ms_is_alerted_once_each_across_three_replicas() {
    let _alone = timed_alone().await;
    let db = TestDb::new().await;
    let up = Upstream::start().await;
    let hook = Upstream::start().await;
    let url = format!("http://{}/services/T000/B000/XXXX", hook.addr);
    let gws = replicas(&db, &up, &["--alert-webhook-url".into(), url]).await;
    two_more_passes(&gws).await;
    // Both commits travel in one simple-query round trip, so the gap between them is the
    // server's, not this test's scheduling on a loaded machine.
    let t0 = Instant::now();
    let stamps = sqlx::raw_sql(
        "BEGIN; \
         INSERT INTO rbac_group_roles (group_id, role_id) SELECT g.id, r.id FROM rbac_groups g, rbac_roles r \
         WHERE g.name = 'break-glass' AND r.name = 'raptor-audit-admin'; \
         COMMIT; \
         SELECT clock_timestamp() AS at; \
         BEGIN; \
         DELETE FROM rbac_group_roles WHERE group_id = (SELECT id FROM rbac_groups WHERE name = 'break-glass') \
         AND role_id = (SELECT id FROM rbac_roles WHERE name = 'raptor-audit-admin'); \
         COMMIT; \
         SELECT clock_timestamp() AS at;",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let at: Vec<chrono::DateTime<chrono::Utc>> = stamps.iter().map(|r| r.get("at")).collect();
    assert_eq!(at.len(), 2, "two commits stamped");
    let gap = (at[1] - at[0]).to_std().unwrap();
    assert!(
        gap < Duration::from_millis(50),
        "added and removed {gap:?} apart"
    );
    let delivered = || async {
        texts(&hook)
            .into_iter()
            .filter(|t| t.contains("raptor-audit-admin"))
            .count()
    };
    eventually(
        Duration::from_secs(10),
        "two composition alerts delivered",
        || async { delivered().await >= 2 },
    )
    .await;
    eprintln!(
        "both alerts delivered {:?} after the first change",
        t0.elapsed()
    );
    two_more_passes(&gws).await;
    let all = texts(&hook);
    assert_eq!(all.len(), 2, "exactly two deliveries: {all:#?}");
    let added: Vec<&String> = all
        .iter()
        .filter(|t| t.contains("role raptor-audit-admin added to the break-glass group"))
        .collect();
    let removed: Vec<&String> = all
        .iter()
        .filter(|t| t.contains("role raptor-audit-admin removed from the break-glass group"))
        .collect();
    assert_eq!((added.len(), removed.len()), (1, 1), "{all:#?}");
    for t in &all {
        assert!(t.contains("OUTSIDE any declared deploy window"), "{t}");
        assert!(t.contains("By database user postgres"), "who: {t}");
        assert!(t.contains(", from 127.0.0.1, at "), "from where: {t}");
        assert!(t.contains(" UTC (transaction "), "when: {t}");
    }
    let rows = count(&db, "SELECT count(*) FROM rbac_gateway_alerts WHERE key LIKE 'composition:%' AND delivered_at_utc IS NOT NULL").await;
    assert_eq!(rows, 2);
    let delivered_metric =
        metric_sum(&gws, "rbac_gateway_alerts_total{result=\"delivered\"}").await;
    assert_eq!(
        delivered_metric, 2.0,
        "one delivery per alert across the replicas"
    );
}

/// Changes inside a declared deploy window are alerted "during deploy", naming the window and
/// the actor Console set; inheritance and permission changes of roles the group holds are
/// alerted (one alert for one transaction); a rolled-back change is not.
#[tokio::test]
async fn deploy_window_inheritance_and_permission_changes_are_alerted_and_rollbacks_are_not() {
    let db = TestDb::new().await;
    let up = Upstream::start().await;
    let gws = replicas(&db, &up, &[]).await;
    two_more_passes(&gws).await;
    // Rolled back: nothing recorded, nothing alerted.
    let mut tx = db.pool.begin().await.unwrap();
    sqlx::query(
        "INSERT INTO rbac_group_roles (group_id, role_id) SELECT g.id, r.id FROM rbac_groups g, rbac_roles r \
         WHERE g.name = 'break-glass' AND r.name = 'raptor-audit-admin'",
    )
    .execute(&mut *tx)
    .await
    .unwrap();
    tx.rollback().await.unwrap();
    // A role outside the group, then (in one transaction, during a deploy window) inherited by a
    // role the group holds and given a permission.
    sqlx::query("INSERT INTO rbac_roles (id, name) VALUES ('r-test-deploy', 'test-deploy-role')")
        .execute(&db.pool)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO rbac_permissions (id, name) VALUES ('p-test-deploy', 'test:deploy:write')",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO rbac_gateway_deploy_windows (ends_at_utc, declared_by, reason) \
         VALUES (now() + interval '10 minutes', 'release-bot', 'console deploy v42')",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let mut tx = db.pool.begin().await.unwrap();
    sqlx::query("SET LOCAL rbac_gateway.actor = 'ops-lead@example.test'")
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO rbac_role_inheritance (child_role_id, parent_role_id) \
         SELECT id, 'r-test-deploy' FROM rbac_roles WHERE name = 'console-manager'",
    )
    .execute(&mut *tx)
    .await
    .unwrap();
    sqlx::query("INSERT INTO rbac_role_permissions (role_id, permission_id) VALUES ('r-test-deploy', 'p-test-deploy')")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let alerts = || async {
        sqlx::query_scalar::<_, String>("SELECT text FROM rbac_gateway_alerts WHERE key LIKE 'composition:%' ORDER BY created_at_utc")
            .fetch_all(&db.pool)
            .await
            .unwrap()
    };
    eventually(
        Duration::from_secs(10),
        "the deploy-window alert",
        || async { !alerts().await.is_empty() },
    )
    .await;
    two_more_passes(&gws).await;
    let all = alerts().await;
    assert_eq!(
        all.len(),
        1,
        "one alert for one transaction, none for the rollback: {all:#?}"
    );
    let t = &all[0];
    assert!(
        t.contains("during deploy window console deploy v42 (declared by release-bot"),
        "{t}"
    );
    assert!(t.contains("role console-manager (held by the break-glass group) now inherits role test-deploy-role"), "{t}");
    assert!(
        t.contains("permission test:deploy:write granted to role test-deploy-role"),
        "{t}"
    );
    assert!(t.contains("actor ops-lead@example.test"), "{t}");
    // The window itself was alerted when declared.
    let window: Vec<String> =
        sqlx::query_scalar("SELECT text FROM rbac_gateway_alerts WHERE key LIKE 'deploy_window:%'")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(window.len(), 1, "{window:?}");
    assert!(
        window[0].starts_with("Deploy window declared by release-bot: console deploy v42"),
        "{window:?}"
    );
    // The change rows stay as the record.
    assert_eq!(
        count(&db, "SELECT count(*) FROM rbac_gateway_group_changes WHERE deploy_window LIKE 'console deploy v42%'").await,
        2
    );
}

/// Issue 40, case 2: with one ticket's FreeScout request hanging, another ticket closed
/// meanwhile is revoked within one sweep interval + 1 s (3 replicas sweeping every 0.5 s).
#[tokio::test]
async fn a_hanging_ticket_does_not_delay_another_ticket_s_revocation() {
    let db = TestDb::new().await;
    let up = Upstream::start().await;
    let statuses = Arc::new(Mutex::new(vec![
        ("T-hang".to_string(), "hang".to_string()),
        ("T-b".to_string(), "active".to_string()),
    ]));
    let fs = freescout(statuses.clone()).await;
    let url = format!("http://{fs}/api/conversations/{{ticket_id}}");
    let (admin, _) = db.admin_with_roles(&[]).await;
    let hanging = grant(&db, &admin, "console-user", 7, "T-hang").await;
    let other = grant(&db, &admin, "console-user", 8, "T-b").await;
    let gws = replicas(
        &db,
        &up,
        &[
            "--sweep-interval".into(),
            "0.5".into(),
            "--ticket-validation-url".into(),
            url,
        ],
    )
    .await;
    // A few sweeps with T-hang's request hanging (the deadline is 5 s).
    let done = || metric_sum(&gws, "rbac_gateway_sweeps_total{result=\"done\"}");
    eventually(Duration::from_secs(10), "three sweeps", || async {
        done().await >= 3.0
    })
    .await;
    statuses.lock().unwrap()[1].1 = "CLOSED".to_string();
    let t0 = Instant::now();
    eventually(
        Duration::from_secs(10),
        "the closed ticket's grant revoked",
        || async { revoked(&db, &other).await.is_some() },
    )
    .await;
    let took = t0.elapsed();
    eprintln!("closed ticket revoked {took:?} after it closed, another ticket's request hanging (interval 0.5 s)");
    assert!(
        took <= Duration::from_millis(1500),
        "revoked {took:?} after the ticket closed: more than one interval (0.5 s) + 1 s"
    );
    assert_eq!(revoked(&db, &other).await.as_deref(), Some("ticket_closed"));
    assert_eq!(
        revoked(&db, &hanging).await,
        None,
        "nothing revoked on a guess"
    );
    assert_eq!(
        count(
            &db,
            &format!(
                "SELECT count(*) FROM rbac_grants_audit WHERE id = '{}'",
                rbac_gateway::stores::revocation::audit_row_id("ticket_expire", &other)
            )
        )
        .await,
        1
    );
}

/// Issue 40, case 3: one grant whose `ticket_expire` row cannot be written stops nobody else: a
/// healthy expired grant and a healthy closed-ticket grant are revoked, a break-glass expiry row
/// is written (another session's cannot be); the poisoned grant stays unrevoked (I-9), both are
/// retried every sweep and, after 3 failures, named on `/readyz` of every replica (status 200);
/// once the cause is fixed they are written and no longer named.
#[tokio::test]
async fn a_poisoned_grant_does_not_stop_another_s_revocation() {
    let db = TestDb::new().await;
    let up = Upstream::start().await;
    let statuses = Arc::new(Mutex::new(vec![(
        "T-closed".to_string(),
        "closed".to_string(),
    )]));
    let fs = freescout(statuses.clone()).await;
    let url = format!("http://{fs}/api/conversations/{{ticket_id}}");
    let (admin, _) = db.admin_with_roles(&[]).await;
    let poisoned = grant(&db, &admin, "console-user", 7, "T-old-1").await;
    let healthy = grant(&db, &admin, "console-user", 8, "T-old-2").await;
    sqlx::query("UPDATE rbac_ticket_grants SET expires_at_utc = now() - interval '1 minute' WHERE id IN ($1, $2)")
        .bind(&poisoned)
        .bind(&healthy)
        .execute(&db.pool)
        .await
        .unwrap();
    // Two break-glass sessions that ended: one's expiry row cannot be written.
    let session = db.break_glass(&admin, -1.0).await;
    let bad_session = db.break_glass(&admin, -1.0).await;
    let (poisoned_row, bad_session_row) = (
        rbac_gateway::stores::revocation::audit_row_id("ticket_expire", &poisoned),
        rbac_gateway::stores::revocation::audit_row_id("break_glass_expire", &bad_session),
    );
    // A CHECK that calls nothing: the one kind of thing the gateway accepts on a table it
    // writes that can refuse a row (migration 0034).
    sqlx::query(&format!(
        "ALTER TABLE rbac_grants_audit ADD CONSTRAINT poisoned_row \
         CHECK (id NOT IN ('{poisoned_row}', '{bad_session_row}'))"
    ))
    .execute(&db.pool)
    .await
    .unwrap();
    let gws = replicas(
        &db,
        &up,
        &[
            "--sweep-interval".into(),
            "0.3".into(),
            "--ticket-validation-url".into(),
            url,
            "--sweep-failure-threshold".into(),
            "3".into(),
        ],
    )
    .await;
    let closed = grant(&db, &admin, "console-user", 9, "T-closed").await;
    eventually(
        Duration::from_secs(10),
        "the healthy grants revoked and the expiry row written",
        || async {
            revoked(&db, &healthy).await.is_some()
                && revoked(&db, &closed).await.is_some()
                && count(
                    &db,
                    &format!(
                        "SELECT count(*) FROM rbac_grants_audit WHERE id = '{}'",
                        rbac_gateway::stores::revocation::audit_row_id(
                            "break_glass_expire",
                            &session
                        )
                    ),
                )
                .await
                    == 1
        },
    )
    .await;
    assert_eq!(revoked(&db, &healthy).await.as_deref(), Some("expired"));
    assert_eq!(
        revoked(&db, &closed).await.as_deref(),
        Some("ticket_closed")
    );
    assert_eq!(
        revoked(&db, &poisoned).await,
        None,
        "revoked without its audit row (I-9)"
    );
    // Named on every replica's /readyz after 3 failures, the status unchanged.
    for gw in &gws {
        eventually(
            Duration::from_secs(10),
            "/readyz naming the poisoned grant",
            || async {
                let r = gw.admin_get("/readyz").await;
                let body = r.body_str();
                r.status == 200
                    && body.contains(&format!("sweep: grant:{poisoned} failed"))
                    && body.contains(&format!("sweep: break_glass:{bad_session} failed"))
            },
        )
        .await;
    }
    let body = gws[2].admin_get("/readyz").await.body_str();
    assert!(body.contains("poisoned_row"), "the error is named: {body}");
    assert!(!body.contains(&healthy), "{body}");
    let failures = metric_sum(&gws, "rbac_gateway_sweep_item_failures_total").await;
    assert!(failures >= 3.0, "{failures} item failures counted");
    // Fixed: retried, revoked, no longer named.
    sqlx::query("ALTER TABLE rbac_grants_audit DROP CONSTRAINT poisoned_row")
        .execute(&db.pool)
        .await
        .unwrap();
    eventually(
        Duration::from_secs(10),
        "the poisoned grant revoked once fixed",
        || async {
            revoked(&db, &poisoned).await.is_some()
                && count(
                    &db,
                    &format!(
                        "SELECT count(*) FROM rbac_grants_audit WHERE id = '{}'",
                        rbac_gateway::stores::revocation::audit_row_id(
                            "break_glass_expire",
                            &bad_session
                        )
                    ),
                )
                .await
                    == 1
        },
    )
    .await;
    // No longer named as soon as its rows are there: each item's rows and the removal of its
    // failure entry commit together.
    for gw in &gws {
        let body = gw.admin_get("/readyz").await.body_str();
        assert!(!body.contains("sweep:"), "{body}");
    }
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM rbac_grants_audit WHERE event_type = 'ticket_expire'"
        )
        .await,
        3,
        "one row per grant"
    );
}

/// A POST to a replica's webhook receiver, signed with `secret` (None: unsigned), plus extra
/// headers.
async fn webhook(port: u16, body: &str, secret: Option<&str>, extra: &[(&str, &str)]) -> Resp {
    let mut req = format!(
        "POST /freescout/webhook HTTP/1.1\r\nHost: gw\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(s) = secret {
        req.push_str(&format!(
            "X-FreeScout-Signature: {}\r\n",
            rbac_gateway::doors::freescout_webhook::sign(s.as_bytes(), body.as_bytes())
        ));
    }
    for (k, v) in extra {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    send(format!("127.0.0.1:{port}").parse().unwrap(), req.as_bytes())
        .await
        .unwrap()
}

/// A gateway with a webhook receiver asking the FreeScout stand-in at `fs`, started with
/// `sweep_interval` (`--sweep-interval`), and the receiver's port.
async fn webhook_gateway(
    db: &TestDb,
    up: &Upstream,
    fs: std::net::SocketAddr,
    sweep_interval: &str,
) -> (Gateway, u16) {
    let url = format!("http://{fs}/api/conversations/{{ticket_id}}");
    let o = GatewayOpts::new(core_routes(), db, up.addr)
        .arg("--sweep-interval")
        .arg(sweep_interval)
        .arg("--ticket-validation-url")
        .arg(&url)
        .arg("--freescout-webhook-listen")
        .arg("127.0.0.1:0")
        .env("GATEWAY_FREESCOUT_WEBHOOK_SECRET", SECRET);
    let gw = Gateway::start(o).await;
    let port = gw.logged_addr("freescout_webhook_listen").port();
    (gw, port)
}

/// Three replicas, each with a webhook receiver and no sweep (only the webhook can revoke).
async fn webhook_replicas(
    db: &TestDb,
    up: &Upstream,
    fs: std::net::SocketAddr,
) -> (Vec<Gateway>, Vec<u16>) {
    let mut gws = Vec::new();
    let mut ports = Vec::new();
    for _ in 0..3 {
        let (gw, port) = webhook_gateway(db, up, fs, "0").await;
        ports.push(port);
        gws.push(gw);
    }
    (gws, ports)
}

fn webhooks(result: &str) -> String {
    format!("rbac_gateway_freescout_webhooks_total{{result=\"{result}\"}}")
}

/// Issue 40, case 4: FreeScout's webhook for a closed ticket, to any replica, revokes the
/// ticket's grants within 0.5 s, audit row first; a repeated call revokes nothing twice.
#[tokio::test]
async fn a_webhook_for_a_closed_ticket_revokes_within_half_a_second_on_any_replica() {
    let db = TestDb::new().await;
    let up = Upstream::start().await;
    let statuses = Arc::new(Mutex::new(vec![("4711".to_string(), "active".to_string())]));
    let fs = freescout(statuses.clone()).await;
    let (admin, _) = db.admin_with_roles(&[]).await;
    let g1 = grant(&db, &admin, "console-user", 7, "4711").await;
    let g2 = grant(&db, &admin, "raptor-audit-support", 7, "4711").await;
    let (gws, ports) = webhook_replicas(&db, &up, fs).await;
    statuses.lock().unwrap()[0].1 = "closed".to_string();
    // FreeScout's conversation JSON: the id is a number.
    let body = r#"{"id": 4711, "number": 311, "status": "closed", "subject": "help"}"#;
    // Sent, and the database watched from the moment it is sent.
    let t0 = Instant::now();
    let port = ports[1];
    let call = tokio::spawn(async move { webhook(port, body, Some(SECRET), &[]).await });
    eventually(Duration::from_secs(10), "both grants revoked", || async {
        revoked(&db, &g1).await.is_some() && revoked(&db, &g2).await.is_some()
    })
    .await;
    let took = t0.elapsed();
    eprintln!("webhook call to revocation: {took:?}");
    assert!(
        took <= Duration::from_millis(500),
        "revoked {took:?} after the call: over 0.5 s"
    );
    let r = call.await.unwrap();
    assert_eq!(r.status, 200, "{}", r.body_str());
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    let mut ids: Vec<&str> = v["revoked"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap())
        .collect();
    ids.sort();
    let mut want = vec![g1.as_str(), g2.as_str()];
    want.sort();
    assert_eq!(ids, want, "{v}");
    assert_eq!(revoked(&db, &g1).await.as_deref(), Some("ticket_closed"));
    // Audit row first (I-9): written in the grant's transaction, before its revocation.
    let ordered = count(
        &db,
        "SELECT count(*) FROM rbac_grants_audit a JOIN rbac_ticket_grants g ON a.ticket_id = g.ticket_id AND a.target_user_id = g.user_id AND a.role_id = g.role_id \
         WHERE g.ticket_id = '4711' AND a.justification = 'ticket_closed' AND a.created_at_utc <= g.revoked_at_utc",
    )
    .await;
    assert_eq!(ordered, 2);
    // Replayed to another replica: nothing more.
    let again = webhook(ports[2], body, Some(SECRET), &[]).await;
    assert_eq!(again.status, 200, "{}", again.body_str());
    let v: serde_json::Value = serde_json::from_slice(&again.body).unwrap();
    assert_eq!(v["revoked"], serde_json::json!([]), "{v}");
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM rbac_grants_audit WHERE event_type = 'ticket_expire'"
        )
        .await,
        2
    );
    assert_eq!(gws[1].metric(&webhooks("revoked")).await, 1.0);
    // The replayed call revoked nothing: not counted as `revoked` (issue 47: 23 counted, 6 revoked).
    assert_eq!(gws[2].metric(&webhooks("revoked")).await, 0.0);
    assert_eq!(gws[2].metric(&webhooks("nothing_to_revoke")).await, 1.0);
}

/// Issue 47: `result="revoked"` counts a call that revoked a grant, nothing else; a call for a
/// closed ticket with no active grant (never given one, or revoked already) is
/// `nothing_to_revoke`, a series that exists at 0 from start-up like every other result.
#[tokio::test]
async fn a_webhook_for_a_closed_ticket_with_no_active_grant_counts_as_nothing_to_revoke() {
    let db = TestDb::new().await;
    let up = Upstream::start().await;
    let statuses = Arc::new(Mutex::new(vec![
        ("T-none".to_string(), "closed".to_string()),
        ("T-one".to_string(), "resolved".to_string()),
    ]));
    let fs = freescout(statuses).await;
    let (admin, _) = db.admin_with_roles(&[]).await;
    let g = grant(&db, &admin, "console-user", 7, "T-one").await;
    let (gw, port) = webhook_gateway(&db, &up, fs, "0").await;
    let metrics = gw.admin_get("/metrics").await.body_str();
    for result in rbac_gateway::doors::freescout_webhook::RESULTS
        .iter()
        .chain(&["nothing_to_revoke"])
    {
        let series = format!("{} 0", webhooks(result));
        assert!(
            metrics.lines().any(|l| l == series),
            "no {series} at start-up"
        );
    }
    // T-none never had a grant: FreeScout says closed, nothing is revoked, nothing counted as
    // revoked.
    let r = webhook(port, r#"{"id": "T-none"}"#, Some(SECRET), &[]).await;
    assert_eq!(r.status, 200, "{}", r.body_str());
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["revoked"], serde_json::json!([]), "{v}");
    assert_eq!(v["status"], "closed", "{v}");
    assert!(
        v["note"]
            .as_str()
            .unwrap_or("")
            .contains("nothing to revoke"),
        "{v}"
    );
    assert_eq!(gw.metric(&webhooks("revoked")).await, 0.0);
    assert_eq!(gw.metric(&webhooks("nothing_to_revoke")).await, 1.0);
    // T-one has one: revoked, counted once; the same call again finds nothing left.
    let body = r#"{"id": "T-one"}"#;
    let r = webhook(port, body, Some(SECRET), &[]).await;
    assert_eq!(r.status, 200, "{}", r.body_str());
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["revoked"], serde_json::json!([g.as_str()]), "{v}");
    assert_eq!(revoked(&db, &g).await.as_deref(), Some("ticket_closed"));
    let r = webhook(port, body, Some(SECRET), &[]).await;
    assert_eq!(r.status, 200, "{}", r.body_str());
    assert_eq!(gw.metric(&webhooks("revoked")).await, 1.0);
    assert_eq!(gw.metric(&webhooks("nothing_to_revoke")).await, 2.0);
}

/// Issue 47: the body is read (at most 256 KiB) before the caller is authenticated, since the
/// signature covers it: one byte over gets 413 even unsigned, at the limit an unsigned call
/// gets 401. A ticket id is at most 200 bytes (400 beyond).
#[tokio::test]
async fn the_webhook_answers_413_before_401_and_bounds_the_ticket_id() {
    use rbac_gateway::doors::freescout_webhook::{MAX_BODY, MAX_TICKET_ID_BYTES};
    let db = TestDb::new().await;
    let up = Upstream::start().await;
    let fs = freescout(Arc::new(Mutex::new(vec![]))).await;
    let (gw, port) = webhook_gateway(&db, &up, fs, "0").await;
    let padded = |len: usize| {
        let head = r#"{"id": "T-1", "pad": ""#;
        format!("{head}{}\"}}", "x".repeat(len - head.len() - 2))
    };
    let over = padded(MAX_BODY + 1);
    assert_eq!(over.len(), MAX_BODY + 1);
    let r = webhook(port, &over, None, &[]).await;
    assert_eq!(r.status, 413, "{}", r.body_str());
    assert_eq!(gw.metric(&webhooks("unauthenticated")).await, 0.0);
    assert_eq!(gw.metric(&webhooks("bad_request")).await, 1.0);
    let at = padded(MAX_BODY);
    let r = webhook(port, &at, None, &[]).await;
    assert_eq!(r.status, 401, "{}", r.body_str());
    // Signed and at the limit: read, authenticated, FreeScout asked (it does not know T-1).
    let r = webhook(port, &at, Some(SECRET), &[]).await;
    assert_eq!(r.status, 200, "{}", r.body_str());
    assert_eq!(gw.metric(&webhooks("unknown_ticket")).await, 1.0);
    // The ticket id: 200 bytes are taken, 201 are not.
    let id = |len: usize| format!(r#"{{"id": "{}"}}"#, "7".repeat(len));
    let r = webhook(port, &id(MAX_TICKET_ID_BYTES), Some(SECRET), &[]).await;
    assert_eq!(r.status, 200, "{}", r.body_str());
    let r = webhook(port, &id(MAX_TICKET_ID_BYTES + 1), Some(SECRET), &[]).await;
    assert_eq!(r.status, 400, "{}", r.body_str());
    assert!(
        r.body_str().contains("at most 200 bytes"),
        "{}",
        r.body_str()
    );
    assert_eq!(gw.metric(&webhooks("bad_request")).await, 2.0);
    assert_eq!(gw.metric(&webhooks("unknown_ticket")).await, 2.0);
}

/// Found by a review: the body is read before the caller is authenticated, and the listener's
/// header read timeout covers only the head, so a peer that announced 200,000 bytes, sent 1,000
/// and went silent held the connection for ever, unauthenticated. The whole body must arrive
/// within `--freescout-timeout-ms`: else 408 and the connection is closed; nothing is asked of
/// FreeScout and nothing changes.
#[tokio::test]
async fn a_webhook_body_that_stops_arriving_gets_408_and_a_close_within_the_freescout_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _alone = timed_alone().await;
    let db = TestDb::new().await;
    let up = Upstream::start().await;
    let fs = freescout(Arc::new(Mutex::new(vec![]))).await;
    let bound = Duration::from_millis(1_000);
    let o = GatewayOpts::new(core_routes(), &db, up.addr)
        .arg("--sweep-interval")
        .arg("0")
        .arg("--ticket-validation-url")
        .arg(&format!("http://{fs}/api/conversations/{{ticket_id}}"))
        .arg("--freescout-webhook-listen")
        .arg("127.0.0.1:0")
        .arg("--freescout-timeout-ms")
        .arg(&bound.as_millis().to_string())
        .env("GATEWAY_FREESCOUT_WEBHOOK_SECRET", SECRET);
    let gw = Gateway::start(o).await;
    let port = gw.logged_addr("freescout_webhook_listen").port();

    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let t0 = Instant::now();
    s.write_all(
        b"POST /freescout/webhook HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\nContent-Length: 200000\r\n\r\n",
    )
    .await
    .unwrap();
    s.write_all(&[b' '; 1_000]).await.unwrap();
    // Silent from here on: the answer, then the close, within a few times the bound.
    let limit = 3 * bound;
    let r = tokio::time::timeout(limit, read_response(&mut s))
        .await
        .unwrap_or_else(|_| panic!("no answer within {limit:?} to a body that stopped arriving"))
        .unwrap();
    let answered = t0.elapsed();
    eprintln!("a body that stopped arriving: answered {answered:?} after the head");
    assert_eq!(r.status, 408, "{}", r.body_str());
    assert_eq!(r.header("connection"), Some("close"));
    assert!(answered >= bound, "answered {answered:?}, before the bound");
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(limit, s.read_to_end(&mut rest)).await;
    assert!(
        closed.is_ok(),
        "the connection is still open {limit:?} after the 408"
    );
    assert_eq!(gw.metric(&webhooks("bad_request")).await, 1.0);
    assert_eq!(gw.metric(&webhooks("unauthenticated")).await, 0.0);
    assert_eq!(gw.metric(&webhooks("unknown_ticket")).await, 0.0);
    // A body that does arrive within the bound is read as before (signed; FreeScout does not
    // know T-1).
    let r = webhook(port, r#"{"id": "T-1"}"#, Some(SECRET), &[]).await;
    assert_eq!(r.status, 200, "{}", r.body_str());
    assert_eq!(gw.metric(&webhooks("unknown_ticket")).await, 1.0);
}

/// Issue 47: when FreeScout cannot say what a ticket's status is, nothing is revoked and the
/// log line says who tries again: the sweep where it runs, and that nobody in this process
/// does with `--sweep-interval 0` (it said "the sweep retries" either way).
#[tokio::test]
async fn the_webhook_log_says_who_retries_whether_this_process_sweeps_or_not() {
    let db = TestDb::new().await;
    let up = Upstream::start().await;
    let fs = freescout(Arc::new(Mutex::new(vec![(
        "T-down".to_string(),
        "500".to_string(),
    )])))
    .await;
    let (admin, _) = db.admin_with_roles(&[]).await;
    let g = grant(&db, &admin, "console-user", 7, "T-down").await;
    let (off, off_port) = webhook_gateway(&db, &up, fs, "0").await;
    let (on, on_port) = webhook_gateway(&db, &up, fs, "3600").await;
    for (gw, port, says, never) in [
        (
            &off,
            off_port,
            "nothing revoked: this process does not sweep (--sweep-interval 0)",
            "the sweep retries",
        ),
        (
            &on,
            on_port,
            "nothing revoked: the sweep retries it (every 3600 s)",
            "does not sweep",
        ),
    ] {
        let r = webhook(port, r#"{"id": "T-down"}"#, Some(SECRET), &[]).await;
        assert_eq!(r.status, 503, "{}", r.body_str());
        assert_eq!(gw.metric(&webhooks("freescout_failed")).await, 1.0);
        eventually(Duration::from_secs(5), says, || async {
            gw.log().contains(says)
        })
        .await;
        let log = gw.log();
        let webhook_lines: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("FreeScout webhook"))
            .collect();
        assert!(
            webhook_lines.iter().all(|l| !l.contains(never)),
            "{never}: {webhook_lines:?}"
        );
    }
    assert_eq!(revoked(&db, &g).await, None);
}

/// Issue 40, case 5: unauthenticated calls get 401 and change nothing; an authenticated call
/// for a ticket FreeScout reports open (a forged or replayed "closed") revokes nothing.
#[tokio::test]
async fn a_forged_or_unauthenticated_webhook_revokes_nothing() {
    let db = TestDb::new().await;
    let up = Upstream::start().await;
    let statuses = Arc::new(Mutex::new(vec![(
        "T-open".to_string(),
        "active".to_string(),
    )]));
    let fs = freescout(statuses.clone()).await;
    let (admin, _) = db.admin_with_roles(&[]).await;
    let g = grant(&db, &admin, "console-user", 7, "T-open").await;
    let (gws, ports) = webhook_replicas(&db, &up, fs).await;
    let body = r#"{"id": "T-open", "status": "closed"}"#;
    // No proof, a wrong key, the secret in the header of the other mode, a body changed after
    // signing: 401 on every replica.
    let signed_other =
        rbac_gateway::doors::freescout_webhook::sign(SECRET.as_bytes(), br#"{"id": "T-other"}"#);
    for (i, port) in ports.iter().enumerate() {
        for (what, secret, extra) in [
            ("unsigned", None, vec![]),
            ("wrong key", Some("another-secret-of-some-length"), vec![]),
            ("secret header", None, vec![("X-Webhook-Secret", SECRET)]),
            (
                "signature of another body",
                None,
                vec![("X-FreeScout-Signature", signed_other.as_str())],
            ),
        ] {
            let r = webhook(*port, body, secret, &extra).await;
            assert_eq!(r.status, 401, "replica {i}, {what}: {}", r.body_str());
        }
    }
    // Authenticated, but FreeScout says the ticket is open: nothing revoked.
    let r = webhook(ports[0], body, Some(SECRET), &[]).await;
    assert_eq!(r.status, 200, "{}", r.body_str());
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["status"], "active", "{v}");
    assert_eq!(v["revoked"], serde_json::json!([]), "{v}");
    // Not JSON, no id: 400; another method: 405.
    assert_eq!(
        webhook(ports[0], "nonsense", Some(SECRET), &[])
            .await
            .status,
        400
    );
    let get = send(
        format!("127.0.0.1:{}", ports[0]).parse().unwrap(),
        b"GET /freescout/webhook HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    assert_eq!(get.status, 405);
    assert_eq!(
        revoked(&db, &g).await,
        None,
        "an open ticket's grant was revoked"
    );
    assert_eq!(
        count(&db, "SELECT count(*) FROM rbac_grants_audit").await,
        0
    );
    let refused = metric_sum(
        &gws,
        "rbac_gateway_freescout_webhooks_total{result=\"unauthenticated\"}",
    )
    .await;
    assert_eq!(refused, 12.0);
}

/// The receiver does not run open: without a secret (or with a short one), or without FreeScout
/// to read the status from, `serve` refuses to start (64).
#[tokio::test]
async fn the_webhook_receiver_refuses_to_run_without_a_secret_or_a_status_url() {
    let db = TestDb::new().await;
    // Refused before anything binds: no port is ever listened on.
    let listen = "127.0.0.1:0".to_string();
    for (env_secret, url, wants) in [
        (
            None,
            Some("http://127.0.0.1:1/{ticket_id}"),
            "needs --freescout-webhook-secret",
        ),
        (
            Some("short"),
            Some("http://127.0.0.1:1/{ticket_id}"),
            "at least 16 bytes",
        ),
        (Some(SECRET), None, "needs --ticket-validation-url"),
    ] {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_rbac-gateway"));
        cmd.args(["serve", "--routes"])
            .arg(core_routes())
            .args([
                "--database-url",
                &db.url,
                "--freescout-webhook-listen",
                &listen,
            ])
            .env_remove("GATEWAY_FREESCOUT_WEBHOOK_SECRET")
            .env_remove("GATEWAY_TICKET_VALIDATION_URL");
        if let Some(s) = env_secret {
            cmd.env("GATEWAY_FREESCOUT_WEBHOOK_SECRET", s);
        }
        if let Some(u) = url {
            cmd.args(["--ticket-validation-url", u]);
        }
        let out = tokio::time::timeout(Duration::from_secs(20), cmd.output())
            .await
            .expect("serve did not refuse")
            .unwrap();
        let text = String::from_utf8_lossy(&out.stderr).to_string()
            + &String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(64), "{text}");
        assert!(text.contains(wants), "{wants}: {text}");
        assert!(
            !text.contains(SECRET),
            "the secret is never printed: {text}"
        );
    }
}

/// The daily snapshot, the second net: a change the triggers did not see (made with
/// `session_replication_role = replica`) is alerted at the next daily comparison, saying that
/// nothing was recorded as it happened.
#[tokio::test]
async fn the_daily_snapshot_alerts_a_change_the_triggers_did_not_see() {
    let db = TestDb::new().await;
    let sweep = || sweep_once(&db.url, &[]);
    sweep().await;
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM rbac_gateway_break_glass_snapshots"
        )
        .await,
        1
    );
    let mut tx = db.pool.begin().await.unwrap();
    sqlx::query("SET LOCAL session_replication_role = replica")
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO rbac_group_roles (group_id, role_id) SELECT g.id, r.id FROM rbac_groups g, rbac_roles r \
         WHERE g.name = 'break-glass' AND r.name = 'raptor-audit-admin'",
    )
    .execute(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
    // Not yet a day: no comparison.
    sweep().await;
    assert_eq!(
        count(&db, "SELECT count(*) FROM rbac_gateway_alerts").await,
        0
    );
    sqlx::query("UPDATE rbac_gateway_break_glass_snapshots SET taken_at_utc = taken_at_utc - interval '25 hours'")
        .execute(&db.pool)
        .await
        .unwrap();
    sweep().await;
    let alerts: Vec<(String, String)> = sqlx::query_as("SELECT key, text FROM rbac_gateway_alerts")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert!(alerts[0].0.starts_with("snapshot:"), "{alerts:?}");
    let t = &alerts[0].1;
    assert!(t.contains("raptor-audit-admin"), "{t}");
    assert!(t.contains("No change was recorded as it happened"), "{t}");
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM rbac_gateway_break_glass_snapshots"
        )
        .await,
        2
    );
}

/// The daily snapshot where Console's admin ids are case-blind (migration 0041 lets it): two
/// permanent members whose ids differ only in case, their rows rewritten in another order with
/// no change to the group, raise no alert. Before (a review), the members were listed in the
/// order Console's collation left them, and the comparison, which is by order, alerted "No change
/// was recorded as it happened" with nothing changed.
#[tokio::test]
async fn case_twin_members_in_another_order_are_no_change_to_the_daily_snapshot() {
    let db = TestDb::new().await;
    sqlx::raw_sql(
        "INSERT INTO admins (id, email) VALUES ('L', 'upper@example.test'), ('l', 'lower@example.test'); \
         CREATE COLLATION public.blind (provider = icu, locale = 'und-u-ks-level2', deterministic = false); \
         ALTER TABLE rbac_user_groups DROP CONSTRAINT rbac_user_groups_pkey; \
         ALTER TABLE rbac_user_groups ALTER COLUMN user_id TYPE text COLLATE public.blind; \
         INSERT INTO rbac_user_groups (user_id, group_id, granted_by) \
         SELECT u, id, 'test' FROM rbac_groups, (VALUES ('L'), ('l')) v(u) WHERE name = 'break-glass';",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let members = || async {
        sqlx::query_scalar::<_, String>(
            "SELECT string_agg(ug.user_id, ',' ORDER BY ug.user_id) FROM rbac_user_groups ug \
             JOIN rbac_groups g ON g.id = ug.group_id WHERE g.name = 'break-glass'",
        )
        .fetch_one(&db.pool)
        .await
        .unwrap()
    };
    let first = members().await;
    sweep_once(&db.url, &[]).await;
    // Console's own rewrite of a row, which changes no membership: the rows come back in
    // another order under its collation.
    sqlx::query(
        "UPDATE rbac_user_groups SET granted_by = 'console' WHERE user_id = $1 COLLATE \"C\"",
    )
    .bind(&first[..1])
    .execute(&db.pool)
    .await
    .unwrap();
    assert_ne!(members().await, first, "the rows are not in another order");
    sqlx::query("UPDATE rbac_gateway_break_glass_snapshots SET taken_at_utc = taken_at_utc - interval '25 hours'")
        .execute(&db.pool)
        .await
        .unwrap();
    sweep_once(&db.url, &[]).await;
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM rbac_gateway_break_glass_snapshots"
        )
        .await,
        2,
        "no second snapshot was taken"
    );
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM rbac_gateway_alerts WHERE key LIKE 'snapshot:%'"
        )
        .await,
        0
    );
}

/// I-6: an admin erased from Console who declared a deploy window (by email, in another letter
/// case) leaves that email nowhere in the gateway's tables: not in the window, not in the line
/// recorded during it, not in the window's alert; a window another admin declared, whose email
/// contains this one's, is untouched. Before migration 0035 all three kept it.
#[tokio::test]
async fn an_erased_admin_who_declared_a_deploy_window_leaves_no_email() {
    let db = TestDb::new().await;
    let email = "window-opener@example.test";
    let admin = db.admin(email).await;
    let other = db.admin(&format!("x{email}")).await;
    sqlx::raw_sql(&format!(
        "INSERT INTO rbac_gateway_deploy_windows (starts_at_utc, ends_at_utc, declared_by, reason) VALUES \
             (now() - interval '1 minute', now() + interval '1 hour', 'Window-Opener@example.test', 'release 7'), \
             (now() - interval '1 minute', now() + interval '1 hour', 'x{email}', 'release 8'); \
         INSERT INTO rbac_user_groups (user_id, group_id, granted_by) \
         SELECT '{other}', id, 'test' FROM rbac_groups WHERE name = 'break-glass';"
    ))
    .execute(&db.pool)
    .await
    .unwrap();
    sweep_once(&db.url, &[]).await;
    // Where `who` (lower-cased) is named as a window's declarer: the window, a line recorded
    // during it, its alert.
    let mentions = |who: String| {
        let pool = db.pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>(
                "SELECT (SELECT count(*) FROM rbac_gateway_deploy_windows WHERE lower(declared_by) = $1) \
                      + (SELECT count(*) FROM rbac_gateway_group_changes \
                          WHERE strpos(lower(deploy_window), ' (declared by ' || $1 || ', until ') > 0) \
                      + (SELECT count(*) FROM rbac_gateway_alerts \
                          WHERE key LIKE 'deploy\\_window:%' AND strpos(lower(text), 'declared by ' || $1 || ': ') > 0)",
            )
            .bind(who)
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    let ours = email.to_string();
    let theirs = format!("x{email}");
    // Both windows and their alerts; the line recorded names the newest window (the other's).
    assert_eq!(mentions(ours.clone()).await, 2);
    assert_eq!(mentions(theirs.clone()).await, 3);
    // A line recorded during this admin's window alone.
    sqlx::raw_sql(&format!(
        "UPDATE rbac_gateway_deploy_windows SET ends_at_utc = now() WHERE declared_by = 'x{email}'; \
         DELETE FROM rbac_user_groups WHERE user_id = '{other}';"
    ))
    .execute(&db.pool)
    .await
    .unwrap();
    assert_eq!(mentions(ours.clone()).await, 3);
    sqlx::query("DELETE FROM admins WHERE id = $1")
        .bind(&admin)
        .execute(&db.pool)
        .await
        .unwrap();
    assert_eq!(mentions(ours).await, 0, "the erased admin's email is kept");
    assert_eq!(mentions("(erased)".to_string()).await, 3);
    assert_eq!(
        mentions(theirs).await,
        3,
        "the other admin's window is touched"
    );
}

/// I-6: an admin erased from Console (their `admins` row deleted) leaves neither their email nor
/// a break-glass justification in the gateway's own tables: the recorded group change, its actor,
/// the alerts raised for them and the daily snapshot's members, even under an email the admin
/// had before and for a session Console deleted first, whatever the id's or the email's characters
/// (spaces, those of regular expressions); another admin's text is untouched. What happened stays
/// recorded, under the pseudonymous id.
#[tokio::test]
async fn an_erased_admin_leaves_no_email_or_justification_in_the_gateways_tables() {
    let db = TestDb::new().await;
    let sweep = || sweep_once(&db.url, &[]);
    let email = "erase-me@example.test";
    let admin = db.admin(email).await;
    sqlx::raw_sql(&format!(
        "BEGIN; SET LOCAL rbac_gateway.actor = '{admin}'; \
         INSERT INTO rbac_user_groups (user_id, group_id, granted_by) \
         SELECT '{admin}', id, 'test' FROM rbac_groups WHERE name = 'break-glass'; COMMIT;"
    ))
    .execute(&db.pool)
    .await
    .unwrap();
    db.break_glass(&admin, 3600.0).await;
    // Another admin whose id and email contain this one's, and one whose id has the characters
    // of regular expressions and their replacements: members too, each recorded with its actor.
    let other = (format!("{admin}0"), format!("x{email}"));
    let odd = (
        r"odd\&\1.*(id)[".to_string(),
        "odd one@example.test".to_string(),
    );
    for (id, mail) in [&other, &odd] {
        sqlx::query("INSERT INTO admins (id, email) VALUES ($1, $2)")
            .bind(id)
            .bind(mail)
            .execute(&db.pool)
            .await
            .unwrap();
        let mut tx = db.pool.begin().await.unwrap();
        sqlx::query("SELECT set_config('rbac_gateway.actor', $1, true)")
            .bind(mail)
            .execute(&mut *tx)
            .await
            .unwrap();
        sqlx::query(
            "INSERT INTO rbac_user_groups (user_id, group_id, granted_by) \
             SELECT $1, id, 'test' FROM rbac_groups WHERE name = 'break-glass'",
        )
        .bind(id)
        .execute(&mut *tx)
        .await
        .unwrap();
        tx.commit().await.unwrap();
    }
    // The changes and the session alerted, and a snapshot taken with the member.
    sweep().await;
    let line = |id: &str, mail: &str| {
        format!("admin {mail} ({id}) made a permanent member of the break-glass group")
    };
    let lines = |db: &TestDb| {
        let pool = db.pool.clone();
        async move {
            sqlx::query_scalar::<_, String>("SELECT what FROM rbac_gateway_group_changes")
                .fetch_all(&pool)
                .await
                .unwrap()
        }
    };
    let mentions = |sql: &'static str| {
        let db = &db;
        let (email, admin) = (email.to_string(), admin.clone());
        async move {
            sqlx::query_scalar::<_, i64>(sql)
                .bind(email)
                .bind(admin)
                .fetch_one(&db.pool)
                .await
                .unwrap()
        }
    };
    let changes = "SELECT count(*) FROM rbac_gateway_group_changes \
                   WHERE strpos(what, ' ' || $1) > 0 OR actor = $1 OR actor = $2";
    let alerts = "SELECT count(*) FROM rbac_gateway_alerts \
                  WHERE (strpos(text, ' ' || $1) > 0 OR strpos(text, 'incident 42') > 0) AND $2 <> ''";
    let snapshots = "SELECT count(*) FROM rbac_gateway_break_glass_snapshots \
                     WHERE $2 = ANY (members) AND $1 <> ''";
    assert!(
        mentions(changes).await >= 1,
        "no change recorded the member"
    );
    assert!(
        mentions(alerts).await >= 2,
        "the change and the session alerted"
    );
    assert!(
        mentions(snapshots).await >= 1,
        "no snapshot holds the member"
    );

    // The admin changes email, and Console deletes the break-glass row, before the erasure:
    // the copies are found by the id, not by the email the admin has last or the session's row.
    sqlx::raw_sql(&format!(
        "UPDATE admins SET email = 'renamed@example.test' WHERE id = '{admin}'; \
         DELETE FROM rbac_break_glass_sessions WHERE user_id = '{admin}';"
    ))
    .execute(&db.pool)
    .await
    .unwrap();
    sqlx::query("DELETE FROM admins WHERE id = $1")
        .bind(&admin)
        .execute(&db.pool)
        .await
        .unwrap();
    assert_eq!(mentions(changes).await, 0, "a change keeps the email");
    assert_eq!(
        mentions(alerts).await,
        0,
        "an alert keeps the email or the justification"
    );
    assert_eq!(mentions(snapshots).await, 0, "a snapshot keeps the member");
    // The other admin's line and actor are untouched, in the table and in its alert.
    let recorded = lines(&db).await;
    assert!(recorded.contains(&line(&other.0, &other.1)), "{recorded:?}");
    let others: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM rbac_gateway_group_changes WHERE actor = $1) \
              + (SELECT count(*) FROM rbac_gateway_alerts WHERE strpos(text, $2) > 0)",
    )
    .bind(&other.1)
    .bind(line(&other.0, &other.1))
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(others, 2, "the other admin's actor and alert");
    // The odd id: erased as written, whatever its characters.
    sqlx::query("DELETE FROM admins WHERE id = $1")
        .bind(&odd.0)
        .execute(&db.pool)
        .await
        .unwrap();
    let recorded = lines(&db).await;
    assert!(
        recorded.contains(&line(&odd.0, "(erased)"))
            && !recorded.iter().any(|l| l.contains(&odd.1)),
        "{recorded:?}"
    );
    // What happened stays recorded, under the id.
    assert!(
        count(
            &db,
            &format!(
                "SELECT count(*) FROM rbac_gateway_group_changes \
                 WHERE what LIKE 'admin (erased) ({admin}) made a permanent member%'"
            )
        )
        .await
            >= 1
    );
}

/// I-6 in two cases the erasure missed (issue 66 §4): in a database whose collation is ICU's,
/// where `lower('İ')` is two characters, an actor written after 30 `İ` is erased, not cut at a
/// position taken in the lower-cased text (which kept the email and garbled the alert); and an
/// email containing `": "` is erased from its recorded line and the alert quoting it (the line's
/// start was looked for after the last `": "`, inside the email).
#[tokio::test]
async fn an_erased_admin_is_erased_in_an_icu_database_and_with_a_colon_in_the_email() {
    let db = TestDb::created_with(
        "TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'und' ENCODING 'UTF8'",
    )
    .await;
    let two: i32 = sqlx::query_scalar("SELECT length(lower('İ'))")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(two, 2, "an ICU database: lower('İ') is two characters");
    let email = "\"Ops: On Call\"@corp.example";
    let admin = db.admin(email).await;
    let role = "İ".repeat(30);
    let mut tx = db.pool.begin().await.unwrap();
    sqlx::query("SELECT set_config('rbac_gateway.actor', $1, true)")
        .bind(email.to_lowercase())
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query("INSERT INTO rbac_roles (id, name) VALUES (gen_random_uuid()::text, $1)")
        .bind(&role)
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO rbac_group_roles (group_id, role_id) SELECT g.id, r.id FROM rbac_groups g, rbac_roles r \
         WHERE g.name = 'break-glass' AND r.name = $1",
    )
    .bind(&role)
    .execute(&mut *tx)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO rbac_user_groups (user_id, group_id, granted_by) \
         SELECT $1, id, 'test' FROM rbac_groups WHERE name = 'break-glass'",
    )
    .bind(&admin)
    .execute(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
    sweep_once(&db.url, &[]).await;
    let texts = || async {
        sqlx::query_scalar::<_, String>(
            "SELECT what || ' | ' || coalesce(actor, '') FROM rbac_gateway_group_changes \
             UNION ALL SELECT text FROM rbac_gateway_alerts",
        )
        .fetch_all(&db.pool)
        .await
        .unwrap()
    };
    let before = texts().await;
    let mentions = |ts: &[String]| {
        ts.iter()
            .filter(|t| t.to_lowercase().contains("ops: on call"))
            .count()
    };
    assert!(
        mentions(&before) >= 3,
        "the line, the actor and the alert name the admin: {before:#?}"
    );
    assert!(
        before
            .iter()
            .any(|t| t.contains(&role) && t.contains(", actor ")),
        "the alert quotes the role before the actor: {before:#?}"
    );
    sqlx::query("DELETE FROM admins WHERE id = $1")
        .bind(&admin)
        .execute(&db.pool)
        .await
        .unwrap();
    let after = texts().await;
    assert_eq!(mentions(&after), 0, "the email survived: {after:#?}");
    // Erased, not garbled: the role's line is whole, the admin's line is there under its id.
    assert!(
        after.iter().any(
            |t| t.contains(&format!("role {role} added to the break-glass group"))
                && t.contains(", actor (erased),")
        ),
        "{after:#?}"
    );
    assert!(
        after
            .iter()
            .any(|t| t.contains(&format!("admin (erased) ({admin}) made a permanent member"))),
        "{after:#?}"
    );
}

/// I-6 and I-4: an admin Console makes to match another admin's break-glass alert (its email is
/// that admin's id, the erasure keys' other kind; its id is quoted by that admin's justification
/// as `(<id>). Justification: `, and as an admin's line and an actor) is erased, and the living
/// admin's alert keeps its text: before migration 0042 it was rewritten as an erased admin's, and
/// an alert the previous release raised as "ended" lost the last sentence that has it raised
/// again once the session is restored. The admin recorded with an alert is what its erasure
/// finds; an alert whose text names another admin than the one recorded with it (as migration
/// 0033 recorded one raised before it) is found by its text, not by a session Console hands to
/// an admin it then erases; an admin whose id Console changed after the alert is erased from it
/// with its session; and the living admin's own erasure rewrites its alert whole.
#[tokio::test]
async fn an_admin_console_erases_leaves_another_admins_break_glass_alert() {
    let db = TestDb::new().await;
    let living = db.admin("living@example.test").await;
    let session = db.break_glass(&living, 3600.0).await;
    sqlx::query(
        "UPDATE rbac_break_glass_sessions SET justification = \
         'ticket (mallory). Justification: paged by admin ' || user_id || ' (mallory2), actor ' || user_id || ',' \
         WHERE id = $1",
    )
    .bind(&session)
    .execute(&db.pool)
    .await
    .unwrap();
    // Another session, whose alert then records an admin its text does not name (as 0033
    // recorded the session as it stood for an alert raised before it).
    let named = db.admin("named@example.test").await;
    let older = db.break_glass(&named, 3600.0).await;
    // And one whose admin's id Console changes after its alert.
    let renamed = db.admin("renamed@example.test").await;
    let moved = db.break_glass(&renamed, 3600.0).await;
    sweep_once(&db.url, &[]).await;
    let text = |key: &str| {
        let (pool, key) = (db.pool.clone(), format!("break_glass:{key}"));
        async move {
            sqlx::query_scalar::<_, String>("SELECT text FROM rbac_gateway_alerts WHERE key = $1")
                .bind(key)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    let console = |sql: String| {
        let pool = db.pool.clone();
        async move { sqlx::raw_sql(&sql).execute(&pool).await.unwrap() }
    };
    let before = text(&session).await;
    assert!(
        before.contains("living@example.test") && before.contains("(mallory2), actor "),
        "{before}"
    );
    // Console's admins made to match the living admin's alert, erased.
    for id in ["mallory", "mallory2"] {
        console(format!(
            "INSERT INTO admins (id, email) VALUES ('{id}', '{living}'); DELETE FROM admins WHERE id = '{id}';"
        ))
        .await;
    }
    assert_eq!(
        text(&session).await,
        before,
        "erasing an admin Console made rewrote a living admin's break-glass alert"
    );
    // The older alert's session handed to an admin Console then erases (the session goes with
    // it): the text names another admin, left as it is.
    console(format!(
        "UPDATE rbac_gateway_alerts SET session_user_id = 'someone else' WHERE key = 'break_glass:{older}'; \
         INSERT INTO admins (id, email) VALUES ('throwaway', 'throwaway@example.test'); \
         UPDATE rbac_break_glass_sessions SET user_id = 'throwaway' WHERE id = '{older}'; \
         DELETE FROM admins WHERE id = 'throwaway';"
    ))
    .await;
    let kept = text(&older).await;
    assert!(kept.contains("named@example.test"), "{kept}");
    // The admin the older alert's text names is erased: found by its text.
    console(format!("DELETE FROM admins WHERE id = '{named}'")).await;
    let erased = text(&older).await;
    assert!(
        erased.contains("since erased") && !erased.contains("named@example.test"),
        "{erased}"
    );
    // The renamed admin (its session with it) is erased: its alert with the session.
    console(format!(
        "WITH a AS (UPDATE admins SET id = '{renamed}-new' WHERE id = '{renamed}') \
         UPDATE rbac_break_glass_sessions SET user_id = '{renamed}-new' WHERE user_id = '{renamed}'; \
         DELETE FROM admins WHERE id = '{renamed}-new';"
    ))
    .await;
    let erased = text(&moved).await;
    assert!(
        erased.contains("since erased") && !erased.contains("renamed@example.test"),
        "{erased}"
    );
    // Console hands the living admin's session to an admin it erases while the living admin's
    // id is away, then puts both back (a review of the second version): the alert, delivered,
    // may read as erased, but vouches for nothing, and the alert pass raises it again whole.
    console(format!(
        "UPDATE rbac_gateway_alerts SET delivered_at_utc = now() WHERE key = 'break_glass:{session}'; \
         BEGIN; CREATE TEMP TABLE keep AS SELECT * FROM rbac_break_glass_sessions WHERE id = '{session}'; \
         INSERT INTO admins (id, email) VALUES ('throwaway2', 't2@example.test'); \
         UPDATE rbac_break_glass_sessions SET user_id = 'throwaway2' WHERE id = '{session}'; \
         UPDATE admins SET id = '{living}-away' WHERE id = '{living}'; \
         DELETE FROM admins WHERE id = 'throwaway2'; \
         UPDATE admins SET id = '{living}' WHERE id = '{living}-away'; \
         INSERT INTO rbac_break_glass_sessions SELECT * FROM keep; COMMIT;"
    ))
    .await;
    let vouches: Option<String> =
        sqlx::query_scalar("SELECT session_user_id FROM rbac_gateway_alerts WHERE key = $1")
            .bind(format!("break_glass:{session}"))
            .fetch_one(&db.pool)
            .await
            .unwrap();
    let now = text(&session).await;
    assert!(
        now == before || vouches.is_none(),
        "a rewritten alert still vouches for {vouches:?}: {now}"
    );
    sweep_once(&db.url, &[]).await;
    let (again, delivered): (String, bool) = sqlx::query_as(
        "SELECT text, delivered_at_utc IS NOT NULL FROM rbac_gateway_alerts WHERE key = $1",
    )
    .bind(format!("break_glass:{session}"))
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert!(
        again.contains("living@example.test") && (again == before || !delivered),
        "delivered {delivered}: {again}"
    );
    // The living admin's own erasure rewrites its alert whole.
    console(format!("DELETE FROM admins WHERE id = '{living}'")).await;
    let after = text(&session).await;
    assert!(
        after.contains("since erased")
            && !after.contains("living@")
            && !after.contains("ticket (mallory)"),
        "{after}"
    );
}

/// I-6 and I-4 where Console makes `admins.id` case-blind (a nondeterministic collation, which
/// migration 0041 lets it have): erasing an admin `l` leaves the living admin `L`'s break-glass
/// alert, its recorded line and its actor as they are, and erasing `L` erases them. Before
/// (a review of 0042's first version), the erasure compared ids under Console's collation: `l`
/// rewrote `L`'s alert, and a search of a text for the id failed and refused Console's DELETE.
#[tokio::test]
async fn a_case_blind_id_of_consoles_erases_only_its_own_admin() {
    let db = TestDb::new().await;
    sqlx::raw_sql(
        "CREATE COLLATION blind (provider = icu, locale = 'und-u-ks-level2', deterministic = false); \
         ALTER TABLE admins DROP CONSTRAINT admins_pkey CASCADE; \
         ALTER TABLE admins ALTER COLUMN id TYPE text COLLATE blind; \
         CREATE UNIQUE INDEX admins_id_exact ON admins (id COLLATE \"C\"); \
         INSERT INTO admins (id, email) VALUES ('L', 'living@example.test'); \
         BEGIN; SET LOCAL rbac_gateway.actor = 'L'; \
         INSERT INTO rbac_user_groups (user_id, group_id, granted_by) \
         SELECT 'L', id, 'test' FROM rbac_groups WHERE name = 'break-glass'; COMMIT;",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let session = db.break_glass("L", 3600.0).await;
    sweep_once(&db.url, &[]).await;
    let texts = || async {
        sqlx::query_scalar::<_, String>(
            "SELECT what || ' | ' || coalesce(actor, '') FROM rbac_gateway_group_changes \
             UNION ALL SELECT key || ' | ' || text FROM rbac_gateway_alerts ORDER BY 1",
        )
        .fetch_all(&db.pool)
        .await
        .unwrap()
    };
    let before = texts().await;
    let living = |ts: &[String]| {
        ts.iter()
            .filter(|t| t.contains("living@example.test") || t.ends_with("| L"))
            .count()
    };
    assert!(
        living(&before) >= 3,
        "the line, its actor and the alert: {before:#?}"
    );
    assert!(
        before.iter().any(|t| t.starts_with(&format!(
            "break_glass:{session} | Break-glass session opened for living@"
        ))),
        "{before:#?}"
    );
    sqlx::raw_sql(
        "INSERT INTO admins (id, email) VALUES ('l', 'other@example.test'); \
         DELETE FROM admins WHERE id = 'l' COLLATE \"C\";",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    assert_eq!(texts().await, before, "erasing l changed L's");
    sqlx::raw_sql("DELETE FROM admins WHERE id = 'L' COLLATE \"C\"")
        .execute(&db.pool)
        .await
        .unwrap();
    let after = texts().await;
    assert_eq!(living(&after), 0, "L's email or actor kept: {after:#?}");
}

/// I-5 for every end: a ticket grant Console restores after the sweep revoked it (its
/// `revoked_at_utc` cleared) and that the sweep revokes again gets a second `ticket_expire` row
/// and outbox entry, under its own id; and a grant whose first row's id Console wrote itself
/// beforehand still gets the gateway's row. A break-glass session whose end Console moves after
/// its row (extended, then ended again), or that Console restores after its revocation and
/// revokes again, gets a second `break_glass_expire` row; one revoked after it expired does
/// not. Before, each second end wrote nothing (`ON CONFLICT DO NOTHING` on the first end's id).
#[tokio::test]
async fn every_end_of_a_grant_or_session_gets_its_own_audit_row() {
    let db = TestDb::new().await;
    let (admin, _) = db.admin_with_roles(&[]).await;
    let expire = |id: String| {
        let pool = db.pool.clone();
        async move {
            sqlx::query(
                "UPDATE rbac_ticket_grants SET expires_at_utc = now() - interval '1 minute' WHERE id = $1",
            )
            .bind(id)
            .execute(&pool)
            .await
            .unwrap();
        }
    };
    let rows = |kind: &'static str, target: String| {
        let pool = db.pool.clone();
        async move {
            sqlx::query_as::<_, (i64, i64)>(
                "SELECT count(*), count(o.audit_id) FROM rbac_grants_audit a \
                 LEFT JOIN rbac_gateway_audit_outbox o ON o.audit_id = a.id \
                 WHERE a.event_type = $1 AND a.target_user_id = $2 AND a.granted_by = 'rbac-gateway'",
            )
            .bind(kind)
            .bind(target)
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    let restored = grant(&db, &admin, "console-user", 7, "T-restored").await;
    expire(restored.clone()).await;
    sweep_once(&db.url, &[]).await;
    assert_eq!(revoked(&db, &restored).await.as_deref(), Some("expired"));
    assert_eq!(rows("ticket_expire", admin.clone()).await, (1, 1));
    sqlx::query(
        "UPDATE rbac_ticket_grants SET revoked_at_utc = NULL, revoke_reason = NULL WHERE id = $1",
    )
    .bind(&restored)
    .execute(&db.pool)
    .await
    .unwrap();
    sweep_once(&db.url, &[]).await;
    assert_eq!(revoked(&db, &restored).await.as_deref(), Some("expired"));
    assert_eq!(rows("ticket_expire", admin.clone()).await, (2, 2));
    let ids: Vec<String> = sqlx::query_scalar(
        "SELECT id FROM rbac_grants_audit WHERE event_type = 'ticket_expire' AND target_user_id = $1 ORDER BY created_at_utc",
    )
    .bind(&admin)
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        ids[0],
        rbac_gateway::stores::revocation::audit_row_id("ticket_expire", &restored)
    );
    // The second end's id, as Rust spells it: the grant and the revoking transaction's time.
    let at: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("SELECT revoked_at_utc FROM rbac_ticket_grants WHERE id = $1")
            .bind(&restored)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(
        ids[1],
        rbac_gateway::stores::revocation::audit_row_id(
            "ticket_expire",
            &rbac_gateway::stores::revocation::episode(&restored, at)
        )
    );

    // Console writes the first row's id itself, before the sweep: the gateway's row is written.
    let (other, _) = db.admin_with_roles(&[]).await;
    let forestalled = grant(&db, &other, "console-user", 7, "T-forestalled").await;
    expire(forestalled.clone()).await;
    sqlx::query(
        "INSERT INTO rbac_grants_audit (id, event_type, target_user_id, granted_by) VALUES ($1, 'ticket_expire', $2, 'console')",
    )
    .bind(rbac_gateway::stores::revocation::audit_row_id("ticket_expire", &forestalled))
    .bind(&other)
    .execute(&db.pool)
    .await
    .unwrap();
    sweep_once(&db.url, &[]).await;
    assert_eq!(revoked(&db, &forestalled).await.as_deref(), Some("expired"));
    assert_eq!(rows("ticket_expire", other.clone()).await, (1, 1));

    // A break-glass session that ended, then was extended by Console and ended again.
    let session = db.break_glass(&admin, -60.0).await;
    sweep_once(&db.url, &[]).await;
    assert_eq!(rows("break_glass_expire", admin.clone()).await, (1, 1));
    sweep_once(&db.url, &[]).await;
    assert_eq!(
        rows("break_glass_expire", admin.clone()).await,
        (1, 1),
        "one end, one row"
    );
    sqlx::query("UPDATE rbac_break_glass_sessions SET expires_at_utc = now() - interval '1 second' WHERE id = $1")
        .bind(&session)
        .execute(&db.pool)
        .await
        .unwrap();
    sweep_once(&db.url, &[]).await;
    assert_eq!(rows("break_glass_expire", admin.clone()).await, (2, 2));
    sweep_once(&db.url, &[]).await;
    assert_eq!(
        rows("break_glass_expire", admin).await,
        (2, 2),
        "that end, one row"
    );
    // Revoked, restored (it counts again), revoked again: two ends, two rows.
    let (again, _) = db.admin_with_roles(&[]).await;
    let revoked_twice = db.break_glass(&again, 600.0).await;
    let set_revoked = |id: String, at: &'static str| {
        let pool = db.pool.clone();
        async move {
            sqlx::query(&format!(
                "UPDATE rbac_break_glass_sessions SET revoked_at_utc = {at} WHERE id = $1"
            ))
            .bind(id)
            .execute(&pool)
            .await
            .unwrap();
        }
    };
    set_revoked(revoked_twice.clone(), "now()").await;
    sweep_once(&db.url, &[]).await;
    assert_eq!(rows("break_glass_expire", again.clone()).await, (1, 1));
    set_revoked(revoked_twice.clone(), "NULL").await;
    sweep_once(&db.url, &[]).await;
    assert_eq!(
        rows("break_glass_expire", again.clone()).await,
        (1, 1),
        "restored: no end"
    );
    set_revoked(revoked_twice, "now()").await;
    sweep_once(&db.url, &[]).await;
    sweep_once(&db.url, &[]).await;
    assert_eq!(rows("break_glass_expire", again).await, (2, 2));
    // Expired, its row written, then revoked by Console's "revoke this admin's sessions":
    // one end, one row.
    let (later, _) = db.admin_with_roles(&[]).await;
    let expired_then_revoked = db.break_glass(&later, -60.0).await;
    sweep_once(&db.url, &[]).await;
    assert_eq!(rows("break_glass_expire", later.clone()).await, (1, 1));
    set_revoked(expired_then_revoked, "now()").await;
    sweep_once(&db.url, &[]).await;
    assert_eq!(
        rows("break_glass_expire", later).await,
        (1, 1),
        "revoked after its end"
    );
}
