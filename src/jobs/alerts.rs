//! Alerts (RV-12): a new break-glass session, or a change to the break-glass group's roles, is
//! recorded in `rbac_gateway_alerts` (exactly once, by key) and delivered to the webhook as a
//! Slack-compatible `{"text": ...}` POST, retried with exponential backoff until delivered. A
//! session that was active at some point and ended before a pass saw it (revoked or expired within
//! a second) is alerted too, when it was granted in the last day (its text says it ended); a row
//! that was never active (inserted already expired or revoked) is not.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::runtime::metrics::Metrics;
use crate::stores::db::{Bounded, Db, Tx};

/// The advisory lock key of the alert job.
const ALERT_LOCK_KEY: i64 = 0x7262_6163_616c_7274;

/// What one alert pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct AlertReport {
    pub skipped: bool,
    /// Keys of alerts recorded in this pass.
    pub raised: Vec<String>,
    /// Keys delivered in this pass.
    pub delivered: Vec<String>,
    /// (key, error) of deliveries that failed (retried later).
    pub failed: Vec<(String, String)>,
}

/// POSTs `{"text": text}` to the webhook; Ok on a 2xx answer.
async fn deliver(url: &str, text: &str) -> Result<(), String> {
    use http_body_util::{BodyExt, Full};
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    let body = serde_json::json!({ "text": text }).to_string();
    let req = hyper::Request::post(url)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(bytes::Bytes::from(body)))
        .map_err(|e| format!("bad webhook request: {e}"))?;
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<bytes::Bytes>>();
    let answer = tokio::time::timeout(Duration::from_secs(5), async {
        let resp = client.request(req).await.map_err(|e| format!("{e:#}"))?;
        let status = resp.status();
        // Drained so the connection closes cleanly; the body itself says nothing we need.
        let _ = resp.into_body().collect().await;
        Ok::<_, String>(status)
    })
    .await
    .map_err(|_| "timed out".to_string())??;
    if answer.is_success() {
        Ok(())
    } else {
        Err(format!("HTTP {}", answer.as_u16()))
    }
}

/// One alert pass: record new alerts, then deliver what is due.
pub async fn alerts_once(
    pool: &Db,
    webhook: Option<&str>,
    limit: Duration,
) -> Result<AlertReport, sqlx::Error> {
    let mut report = AlertReport::default();
    let mut tx = pool.begin().bounded(limit).await?;
    let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
        .persistent(false)
        .bind(ALERT_LOCK_KEY)
        .fetch_one(&mut *tx)
        .bounded(limit)
        .await?;
    if !locked {
        report.skipped = true;
        return Ok(report);
    }
    let mut raised: Vec<String> = sqlx::query_scalar(concat!(
        "INSERT INTO rbac_gateway_alerts (key, text) \
         SELECT 'break_glass:' || b.id, \
                format('Break-glass session opened for %s (%s). Justification: %s. Expires %s UTC.%s', \
                       a.email, b.user_id, b.justification, to_char(",
        crate::break_glass_end!(),
        " AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS'), \
                       CASE WHEN b.revoked_at_utc IS NOT NULL OR ",
        crate::break_glass_end!(),
        " <= now() THEN ' It ended before this alert was raised.' ELSE '' END) \
         FROM rbac_break_glass_sessions b JOIN admins a ON a.id = b.user_id \
         WHERE (b.revoked_at_utc IS NULL AND ",
        crate::break_glass_end!(),
        " > now()) \
            OR (b.granted_at_utc > now() - interval '1 day' AND b.expires_at_utc > b.granted_at_utc \
                AND (b.revoked_at_utc IS NULL OR b.revoked_at_utc > b.granted_at_utc)) \
         ON CONFLICT (key) DO NOTHING RETURNING key"
    )).persistent(false)
    .fetch_all(&mut *tx)
    .bounded(limit)
    .await?;
    // Changes to the break-glass group, as the triggers recorded them with the change itself
    // (migration 0007): one alert per committed transaction, keyed by its id.
    raised.extend(group_change_alerts(&mut tx, limit).await?);
    // The daily snapshot: the second net, for changes the triggers could not see.
    raised.extend(daily_snapshot(&mut tx, limit).await?);
    // A declared deploy window is said when it is declared: changes in it are alerted "during
    // deploy", and whoever reads them should know who opened it.
    let windows: Vec<String> = sqlx::query_scalar(
        "INSERT INTO rbac_gateway_alerts (key, text) \
         SELECT 'deploy_window:' || d.id, \
                format('Deploy window declared by %s: %s, from %s to %s UTC. Break-glass group changes in it are alerted as during deploy.', \
                       d.declared_by, d.reason, \
                       to_char(d.starts_at_utc AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS'), \
                       to_char(d.ends_at_utc AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS')) \
         FROM rbac_gateway_deploy_windows d WHERE d.created_at_utc > now() - interval '1 day' \
         ON CONFLICT (key) DO NOTHING RETURNING key",
    ).persistent(false)
    .fetch_all(&mut *tx)
    .bounded(limit)
    .await?;
    raised.extend(windows);
    report.raised = raised;
    if let Some(url) = webhook {
        let due: Vec<(String, String)> = sqlx::query_as(
            "SELECT key, text FROM rbac_gateway_alerts \
             WHERE delivered_at_utc IS NULL AND next_attempt_utc <= now() ORDER BY created_at_utc LIMIT 50",
        ).persistent(false)
        .fetch_all(&mut *tx)
        .bounded(limit)
        .await?;
        for (key, text) in due {
            match deliver(url, &text).await {
                Ok(()) => {
                    sqlx::query(
                        "UPDATE rbac_gateway_alerts SET delivered_at_utc = now(), attempts = attempts + 1 WHERE key = $1",
                    ).persistent(false)
                    .bind(&key)
                    .execute(&mut *tx)
                    .bounded(limit)
                    .await?;
                    // The session's admin is re-resolved at once on every replica (the change
                    // feed), which --break-glass-requires-alert waits for.
                    sqlx::query(
                        "INSERT INTO rbac_change_log (table_name, admin_id) \
                         SELECT 'rbac_gateway_alerts', b.user_id FROM rbac_break_glass_sessions b \
                         WHERE 'break_glass:' || b.id = $1",
                    )
                    .persistent(false)
                    .bind(&key)
                    .execute(&mut *tx)
                    .bounded(limit)
                    .await?;
                    sqlx::query("SELECT pg_notify('rbac_gateway_changes', '')")
                        .persistent(false)
                        .execute(&mut *tx)
                        .bounded(limit)
                        .await?;
                    report.delivered.push(key);
                }
                Err(e) => {
                    // Backoff: 1, 2, 4 ... seconds, at most 5 minutes between attempts.
                    sqlx::query(
                        "UPDATE rbac_gateway_alerts SET attempts = attempts + 1, last_error = $2, \
                         next_attempt_utc = now() + make_interval(secs => least(300, power(2, attempts)::int)) WHERE key = $1",
                    ).persistent(false)
                    .bind(&key)
                    .bind(&e)
                    .execute(&mut *tx)
                    .bounded(limit)
                    .await?;
                    report.failed.push((key, e));
                }
            }
        }
    }
    tx.commit().bounded(limit).await?;
    Ok(report)
}

/// A change the triggers recorded: (txid, what, db user, actor, application, client address,
/// when, deploy window).
type Change = (
    String,
    String,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    String,
    Option<String>,
);

/// The text of the alert for one transaction's changes.
fn change_text(txid: &str, changes: &[Change], roles_now: &[String]) -> String {
    let (_, _, db_user, actor, application, client, when, window) = &changes[0];
    // A bulk change (a re-seed, a TRUNCATE) is summed up, not pasted whole into the chat.
    const SHOWN: usize = 20;
    let mut whats: Vec<String> = changes.iter().take(SHOWN).map(|c| c.1.clone()).collect();
    if changes.len() > SHOWN {
        whats.push(format!(
            "and {} more (rbac_gateway_group_changes, txid {txid})",
            changes.len() - SHOWN
        ));
    }
    let mut who = format!("database user {db_user}");
    if let Some(a) = actor {
        who.push_str(&format!(", actor {a}"));
    }
    if let Some(a) = application {
        who.push_str(&format!(", application {a}"));
    }
    who.push_str(&match client {
        Some(c) => format!(", from {c}"),
        None => ", over a local socket".to_string(),
    });
    let context = match window {
        Some(w) => format!("during deploy window {w}"),
        None => "OUTSIDE any declared deploy window".to_string(),
    };
    format!(
        "Break-glass group changed {context}: {}. By {who}, at {when} UTC (transaction {txid}). \
         Roles the group holds as this alert is raised: {}.",
        whats.join("; "),
        if roles_now.is_empty() {
            "none".to_string()
        } else {
            roles_now.join(", ")
        }
    )
}

/// Turns the changes the triggers recorded into alerts, one per transaction (`composition:<txid>`).
async fn group_change_alerts(tx: &mut Tx, limit: Duration) -> Result<Vec<String>, sqlx::Error> {
    // Whole transactions only: a transaction's rows are all visible once it committed.
    let changes: Vec<Change> = sqlx::query_as(
        "SELECT txid::text, what, db_user, actor, application, client_addr, \
                to_char(changed_at_utc AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.MS'), deploy_window \
         FROM rbac_gateway_group_changes \
         WHERE alert_key IS NULL AND txid IN ( \
             SELECT txid FROM rbac_gateway_group_changes WHERE alert_key IS NULL ORDER BY id LIMIT 100) \
         ORDER BY id",
    ).persistent(false)
    .fetch_all(&mut **tx)
    .bounded(limit)
    .await?;
    if changes.is_empty() {
        return Ok(vec![]);
    }
    let roles_now: Vec<String> = sqlx::query_scalar(
        "SELECT r.name FROM rbac_group_roles gr JOIN rbac_groups g ON g.id = gr.group_id \
         JOIN rbac_roles r ON r.id = gr.role_id WHERE g.name = 'break-glass' ORDER BY 1",
    )
    .persistent(false)
    .fetch_all(&mut **tx)
    .bounded(limit)
    .await?;
    let mut by_tx: Vec<(String, Vec<Change>)> = Vec::new();
    for c in changes {
        match by_tx.iter_mut().find(|(t, _)| *t == c.0) {
            Some((_, v)) => v.push(c),
            None => by_tx.push((c.0.clone(), vec![c])),
        }
    }
    let mut raised = Vec::new();
    for (txid, changes) in by_tx {
        let key = format!("composition:{txid}");
        let inserted = sqlx::query(
            "INSERT INTO rbac_gateway_alerts (key, text) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING",
        ).persistent(false)
        .bind(&key)
        .bind(change_text(&txid, &changes, &roles_now))
        .execute(&mut **tx)
        .bounded(limit)
        .await?
        .rows_affected();
        sqlx::query(
            "UPDATE rbac_gateway_group_changes SET alert_key = $1 WHERE txid = $2::xid8 AND alert_key IS NULL",
        ).persistent(false)
        .bind(&key)
        .bind(&txid)
        .execute(&mut **tx)
        .bounded(limit)
        .await?;
        if inserted == 1 {
            raised.push(key);
        }
    }
    Ok(raised)
}

/// What the break-glass group grants: roles after inheritance, permissions, permanent members.
type Grants = (Vec<String>, Vec<String>, Vec<String>);

/// Once a day, what the group grants is compared with the last snapshot and any difference is
/// alerted (`snapshot:<time>`), saying whether the triggers recorded changes meanwhile (none
/// recorded: they were bypassed or disabled).
async fn daily_snapshot(tx: &mut Tx, limit: Duration) -> Result<Vec<String>, sqlx::Error> {
    type Last = (
        chrono::DateTime<chrono::Utc>,
        Vec<String>,
        Vec<String>,
        Vec<String>,
        bool,
    );
    let last: Option<Last> = sqlx::query_as(
        "SELECT taken_at_utc, roles, permissions, members, taken_at_utc <= now() - interval '1 day' \
         FROM rbac_gateway_break_glass_snapshots ORDER BY taken_at_utc DESC LIMIT 1",
    ).persistent(false)
    .fetch_optional(&mut **tx)
    .bounded(limit)
    .await?;
    if matches!(&last, Some(l) if !l.4) {
        return Ok(vec![]);
    }
    let now: Grants = sqlx::query_as(
        "SELECT \
           COALESCE((SELECT array_agg(r.name ORDER BY r.name) FROM rbac_roles r \
                     WHERE r.id IN (SELECT role_id FROM rbac_gateway_break_glass_roles())), '{}'), \
           COALESCE((SELECT array_agg(DISTINCT p.name ORDER BY p.name) FROM rbac_role_permissions rp \
                     JOIN rbac_permissions p ON p.id = rp.permission_id \
                     WHERE rp.role_id IN (SELECT role_id FROM rbac_gateway_break_glass_roles())), '{}'), \
           COALESCE((SELECT array_agg(ug.user_id ORDER BY ug.user_id) FROM rbac_user_groups ug \
                     JOIN rbac_groups g ON g.id = ug.group_id WHERE g.name = 'break-glass'), '{}')",
    ).persistent(false)
    .fetch_one(&mut **tx)
    .bounded(limit)
    .await?;
    let mut raised = Vec::new();
    if let Some((taken, roles, permissions, members, _)) = last {
        let before: Grants = (roles, permissions, members);
        if before != now {
            let diff = |name: &str, a: &[String], b: &[String]| -> Option<String> {
                let (a, b): (BTreeSet<&String>, BTreeSet<&String>) =
                    (a.iter().collect(), b.iter().collect());
                let added: Vec<&&String> = b.difference(&a).collect();
                let removed: Vec<&&String> = a.difference(&b).collect();
                (!added.is_empty() || !removed.is_empty())
                    .then(|| format!("{name} added {added:?}, removed {removed:?}"))
            };
            let parts: Vec<String> = [
                diff("roles (after inheritance)", &before.0, &now.0),
                diff("permissions", &before.1, &now.1),
                diff("permanent members", &before.2, &now.2),
            ]
            .into_iter()
            .flatten()
            .collect();
            let recorded: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM rbac_gateway_group_changes WHERE changed_at_utc > $1",
            )
            .persistent(false)
            .bind(taken)
            .fetch_one(&mut **tx)
            .bounded(limit)
            .await?;
            let net = if recorded == 0 {
                "No change was recorded as it happened: the triggers were bypassed or disabled \
                 (session_replication_role = replica, a restore, a dropped trigger?)."
                    .to_string()
            } else {
                format!("{recorded} change(s) were recorded and alerted as they happened.")
            };
            let text = format!(
                "Daily snapshot of the break-glass group: since {} UTC, {}. {net}",
                taken.format("%Y-%m-%d %H:%M:%S"),
                parts.join("; ")
            );
            let key = format!(
                "snapshot:{}",
                chrono::Utc::now().format("%Y%m%dT%H%M%S%.3f")
            );
            sqlx::query("INSERT INTO rbac_gateway_alerts (key, text) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING").persistent(false)
                .bind(&key)
                .bind(&text)
                .execute(&mut **tx)
                .bounded(limit)
                .await?;
            raised.push(key);
        }
    }
    sqlx::query(
        "INSERT INTO rbac_gateway_break_glass_snapshots (roles, permissions, members) VALUES ($1, $2, $3) \
         ON CONFLICT (taken_at_utc) DO NOTHING",
    ).persistent(false)
    .bind(&now.0)
    .bind(&now.1)
    .bind(&now.2)
    .execute(&mut **tx)
    .bounded(limit)
    .await?;
    Ok(raised)
}

/// Runs the alert pass every `interval` until the process ends.
pub async fn alerts_forever(
    pool: Db,
    webhook: Option<String>,
    interval: Duration,
    limit: Duration,
    metrics: std::sync::Arc<Metrics>,
) {
    if webhook.is_none() {
        tracing::warn!("no --alert-webhook-url: break-glass alerts are recorded in rbac_gateway_alerts but not delivered");
    }
    loop {
        tokio::time::sleep(interval).await;
        match alerts_once(&pool, webhook.as_deref(), limit).await {
            Ok(r) => {
                let pass = if r.skipped { "skipped" } else { "done" };
                metrics.alert_passes.with_label_values(&[pass]).inc();
                for k in &r.raised {
                    tracing::warn!(alert = %k, "alert raised");
                }
                for k in &r.delivered {
                    metrics.alerts.with_label_values(&["delivered"]).inc();
                    tracing::info!(alert = %k, "alert delivered");
                }
                for (k, e) in &r.failed {
                    metrics.alerts.with_label_values(&["failed"]).inc();
                    tracing::warn!(alert = %k, error = %e, "alert delivery failed; will retry");
                }
            }
            Err(e) => {
                metrics.alert_passes.with_label_values(&["failed"]).inc();
                tracing::error!(error = %e, "alert pass failed; will retry")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    fn change(what: &str, window: Option<&str>) -> super::Change {
        (
            "812".into(),
            what.into(),
            "console_app".into(),
            Some("ops@example.test".into()),
            None,
            Some("10.0.0.5".into()),
            "2026-11-26 02:00:00.000".into(),
            window.map(String::from),
        )
    }

    #[test]
    fn a_change_alert_says_what_who_when_and_whether_during_a_deploy() {
        let roles = vec!["console-manager".to_string()];
        let t = super::change_text(
            "812",
            &[change("role x added to the break-glass group", None)],
            &roles,
        );
        assert!(
            t.starts_with(
                "Break-glass group changed OUTSIDE any declared deploy window: role x added"
            ),
            "{t}"
        );
        assert!(t.contains("By database user console_app, actor ops@example.test, from 10.0.0.5, at 2026-11-26 02:00:00.000 UTC (transaction 812)"), "{t}");
        assert!(
            t.ends_with("as this alert is raised: console-manager."),
            "{t}"
        );
        let t = super::change_text(
            "812",
            &[change(
                "role x added",
                Some("v42 (declared by ci, until ...)"),
            )],
            &[],
        );
        assert!(
            t.starts_with("Break-glass group changed during deploy window v42 (declared by ci"),
            "{t}"
        );
        assert!(t.contains("raised: none."), "{t}");
        // A bulk change is summed up.
        let many: Vec<super::Change> = (0..25)
            .map(|i| change(&format!("change {i}"), None))
            .collect();
        let t = super::change_text("812", &many, &roles);
        assert!(
            t.contains("change 19; and 5 more (rbac_gateway_group_changes, txid 812)"),
            "{t}"
        );
        assert!(!t.contains("change 20"), "{t}");
    }
}
