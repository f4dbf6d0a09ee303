//! Grants that end by themselves (004 §3.2, §5, §6; I-9; RV-4, RV-12 in part): one sweep
//!
//! - revokes every active `rbac_ticket_grants` row whose ticket FreeScout reports RESOLVED or
//!   CLOSED (`revoke_reason = 'ticket_closed'`) or whose `expires_at_utc` passed (`'expired'`),
//!   writing its `rbac_grants_audit` row (`ticket_expire`) **first**, in the same transaction
//!   (I-9: if the audit insert fails, nothing is revoked);
//! - writes one `break_glass_expire` row for every break-glass session that expired or was
//!   revoked (a session ends 4 hours after it was granted at the latest, I-4, whatever expiry
//!   its row was given: [`crate::break_glass_end`], as the principal reads it).
//!
//! Each row's id is derived from what it records (`ticket_expire:<grant id>`,
//! `break_glass_expire:<session id>`) and inserted with `ON CONFLICT DO NOTHING`, so a sweep
//! repeated by any replica never writes a row twice. A sweep runs inside one transaction that
//! first takes a transaction-level advisory lock: one replica at a time, and a replica that dies
//! mid-sweep releases the lock with its connection. FreeScout unreachable: nothing is revoked on
//! a guess for that ticket; the failure is counted and the sweep reports it. A ticket FreeScout
//! does not know (404) or reports in another state is left to the per-request check (which
//! fails closed on it).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use sqlx::PgPool;

use crate::runtime::metrics::Metrics;
use crate::stores::db::Bounded;

/// The advisory lock key of the sweep (any constant; "rbacswep" in ASCII).
const LOCK_KEY: i64 = 0x7262_6163_7377_6570;

/// FreeScout statuses that end a ticket grant.
const ENDED: &[&str] = &["closed", "resolved"];

/// Most FreeScout requests in flight during a sweep.
const CONCURRENCY: usize = 8;

/// What one sweep did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    /// Another replica held the lock: this one did nothing.
    pub skipped: bool,
    /// (grant id, ticket id, reason) of every grant revoked.
    pub revoked: Vec<(String, String, String)>,
    /// Break-glass sessions whose expiry row was written.
    pub break_glass_expired: Vec<String>,
    /// (ticket, error) of every ticket FreeScout could not answer for.
    pub freescout_failures: Vec<(String, String)>,
}

/// The status of each ticket, asked with at most [`CONCURRENCY`] requests in flight.
async fn statuses(
    url: &str,
    tickets: BTreeSet<String>,
) -> BTreeMap<String, Result<Option<String>, String>> {
    let mut out = BTreeMap::new();
    let mut pending = tickets.into_iter();
    let mut running = tokio::task::JoinSet::new();
    loop {
        while running.len() < CONCURRENCY {
            let Some(t) = pending.next() else { break };
            let url = url.to_string();
            running.spawn(async move {
                let st =
                    crate::stores::ticket::ticket_status(&url, &t, Duration::from_secs(5)).await;
                (t, st.map_err(|e| e.to_string()))
            });
        }
        match running.join_next().await {
            Some(Ok((t, st))) => {
                out.insert(t, st);
            }
            Some(Err(e)) => tracing::error!(error = %e, "sweep: a FreeScout request task failed"),
            None => break,
        }
    }
    out
}

/// One sweep. `validation_url`: FreeScout's status URL template (`{ticket_id}`); without it only
/// expired grants are revoked.
pub async fn sweep_once(
    pool: &PgPool,
    validation_url: Option<&str>,
    limit: Duration,
) -> Result<Report, sqlx::Error> {
    let mut report = Report::default();
    let mut tx = pool.begin().bounded(limit).await?;
    let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
        .bind(LOCK_KEY)
        .fetch_one(&mut *tx)
        .bounded(limit)
        .await?;
    if !locked {
        report.skipped = true;
        return Ok(report);
    }
    type Grant = (String, String, String, String, i32, bool);
    let grants: Vec<Grant> = sqlx::query_as(
        "SELECT id, user_id, role_id, ticket_id, customer_id, \
                (expires_at_utc IS NOT NULL AND expires_at_utc <= now()) \
         FROM rbac_ticket_grants WHERE revoked_at_utc IS NULL ORDER BY id",
    )
    .fetch_all(&mut *tx)
    .bounded(limit)
    .await?;
    let live: BTreeSet<String> = grants
        .iter()
        .filter(|g| !g.5)
        .map(|g| g.3.clone())
        .collect();
    let known = match validation_url {
        Some(url) if !live.is_empty() => statuses(url, live).await,
        _ => BTreeMap::new(),
    };
    for (t, st) in &known {
        if let Err(e) = st {
            tracing::error!(ticket = %t, error = %e, "sweep: FreeScout did not answer; the ticket's grants are kept");
            report.freescout_failures.push((t.clone(), e.clone()));
        }
    }
    for (id, user, role, ticket, customer, expired) in &grants {
        let reason = if *expired {
            "expired"
        } else {
            match known.get(ticket) {
                Some(Ok(Some(st))) if ENDED.contains(&st.to_ascii_lowercase().as_str()) => {
                    "ticket_closed"
                }
                _ => continue,
            }
        };
        // The list above was read without locks, and FreeScout may have taken seconds: the
        // grant is read again under a row lock, so one revoked (by an operator) or given a
        // later expiry meanwhile gets no audit row of a revocation that does not happen.
        let still_expired: Option<bool> = sqlx::query_scalar(
            "SELECT (expires_at_utc IS NOT NULL AND expires_at_utc <= now()) \
             FROM rbac_ticket_grants WHERE id = $1 AND revoked_at_utc IS NULL FOR UPDATE",
        )
        .bind(id)
        .fetch_optional(&mut *tx)
        .bounded(limit)
        .await?;
        match still_expired {
            None => continue,
            Some(false) if reason == "expired" => continue,
            Some(_) => {}
        }
        // I-9: the audit row first; a failure aborts the transaction and revokes nothing.
        sqlx::query(
            "INSERT INTO rbac_grants_audit (id, event_type, target_user_id, role_id, ticket_id, customer_id, justification, granted_by) \
             VALUES ($1, 'ticket_expire', $2, $3, $4, $5, $6, 'rbac-gateway') ON CONFLICT (id) DO NOTHING",
        )
        .bind(format!("ticket_expire:{id}"))
        .bind(user)
        .bind(role)
        .bind(ticket)
        .bind(customer)
        .bind(reason)
        .execute(&mut *tx)
        .bounded(limit)
        .await?;
        let n = sqlx::query(
            "UPDATE rbac_ticket_grants SET revoked_at_utc = now(), revoke_reason = $2 \
             WHERE id = $1 AND revoked_at_utc IS NULL",
        )
        .bind(id)
        .bind(reason)
        .execute(&mut *tx)
        .bounded(limit)
        .await?
        .rows_affected();
        if n == 1 {
            report
                .revoked
                .push((id.clone(), ticket.clone(), reason.to_string()));
        }
    }
    report.break_glass_expired = sqlx::query_scalar(concat!(
        "INSERT INTO rbac_grants_audit (id, event_type, target_user_id, justification, granted_by, expires_at_utc) \
         SELECT 'break_glass_expire:' || b.id, 'break_glass_expire', b.user_id, b.justification, 'rbac-gateway', ",
        crate::break_glass_end!(),
        " FROM rbac_break_glass_sessions b WHERE b.revoked_at_utc IS NOT NULL OR ",
        crate::break_glass_end!(),
        " <= now() ON CONFLICT (id) DO NOTHING RETURNING substr(id, 20)"
    ))
    .fetch_all(&mut *tx)
    .bounded(limit)
    .await?;
    tx.commit().bounded(limit).await?;
    Ok(report)
}

/// Counts a sweep in the metrics.
pub fn count(metrics: &Metrics, result: &Result<Report, sqlx::Error>) {
    match result {
        Ok(r) if r.skipped => metrics.sweeps.with_label_values(&["skipped"]).inc(),
        Ok(r) => {
            metrics.sweeps.with_label_values(&["done"]).inc();
            for (_, _, reason) in &r.revoked {
                metrics
                    .sweep_revocations
                    .with_label_values(&[reason.as_str()])
                    .inc();
            }
            metrics
                .sweep_revocations
                .with_label_values(&["break_glass_expire"])
                .inc_by(r.break_glass_expired.len() as u64);
            metrics
                .sweep_failures
                .inc_by(r.freescout_failures.len() as u64);
            if r.freescout_failures.is_empty() {
                metrics
                    .sweep_last_success
                    .set(chrono::Utc::now().timestamp());
            }
        }
        Err(_) => {
            metrics.sweeps.with_label_values(&["failed"]).inc();
            metrics.sweep_failures.inc();
        }
    }
}

/// Sweeps every `interval` until the process ends (every replica runs this; the lock lets one
/// sweep at a time).
pub async fn run_forever(
    pool: PgPool,
    validation_url: Option<String>,
    interval: Duration,
    limit: Duration,
    metrics: std::sync::Arc<Metrics>,
) {
    loop {
        tokio::time::sleep(interval).await;
        let result = sweep_once(&pool, validation_url.as_deref(), limit).await;
        count(&metrics, &result);
        match &result {
            Ok(r) if r.skipped => {}
            Ok(r) => {
                for (grant, ticket, reason) in &r.revoked {
                    tracing::info!(grant = %grant, ticket = %ticket, reason = %reason, "sweep: ticket grant revoked (audit row written first)");
                }
                for s in &r.break_glass_expired {
                    tracing::info!(session = %s, "sweep: break-glass session ended (break_glass_expire row written)");
                }
            }
            Err(e) => tracing::error!(error = %e, "sweep failed; nothing of it was committed"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Alerts (RV-12): a new break-glass session, or a change to the break-glass group's roles, is
// recorded in `rbac_gateway_alerts` (exactly once, by key) and delivered to the webhook as a
// Slack-compatible `{"text": ...}` POST, retried with exponential backoff until delivered. A
// session that was active at some point and ended before a pass saw it (revoked or expired within
// a second) is alerted too, when it was granted in the last day (its text says it ended); a row
// that was never active (inserted already expired or revoked) is not.

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
    pool: &PgPool,
    webhook: Option<&str>,
    limit: Duration,
) -> Result<AlertReport, sqlx::Error> {
    let mut report = AlertReport::default();
    let mut tx = pool.begin().bounded(limit).await?;
    let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
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
    ))
    .fetch_all(&mut *tx)
    .bounded(limit)
    .await?;
    // The composition of the break-glass group against the snapshot.
    let current: Vec<(String, String)> = sqlx::query_as(
        "SELECT g.name, r.name FROM rbac_group_roles gr JOIN rbac_groups g ON g.id = gr.group_id \
         JOIN rbac_roles r ON r.id = gr.role_id ORDER BY 1, 2",
    )
    .fetch_all(&mut *tx)
    .bounded(limit)
    .await?;
    let snapshot: Vec<(String, String)> = sqlx::query_as(
        "SELECT group_name, role_name FROM rbac_gateway_group_roles_snapshot ORDER BY 1, 2",
    )
    .fetch_all(&mut *tx)
    .bounded(limit)
    .await?;
    if current != snapshot {
        let bg = |v: &[(String, String)]| -> BTreeSet<String> {
            v.iter()
                .filter(|(g, _)| g == "break-glass")
                .map(|(_, r)| r.clone())
                .collect()
        };
        let (now, before) = (bg(&current), bg(&snapshot));
        if !snapshot.is_empty() && now != before {
            let added: Vec<&String> = now.difference(&before).collect();
            let removed: Vec<&String> = before.difference(&now).collect();
            let text = format!(
                "The break-glass group's roles changed: added {added:?}, removed {removed:?}. It now grants {now:?}."
            );
            let key = format!("composition:{}", crate::policy::outcome::row_id());
            sqlx::query("INSERT INTO rbac_gateway_alerts (key, text) VALUES ($1, $2)")
                .bind(&key)
                .bind(&text)
                .execute(&mut *tx)
                .bounded(limit)
                .await?;
            raised.push(key);
        }
        sqlx::query("DELETE FROM rbac_gateway_group_roles_snapshot")
            .execute(&mut *tx)
            .bounded(limit)
            .await?;
        sqlx::query(
            "INSERT INTO rbac_gateway_group_roles_snapshot (group_name, role_name) \
             SELECT g.name, r.name FROM rbac_group_roles gr JOIN rbac_groups g ON g.id = gr.group_id \
             JOIN rbac_roles r ON r.id = gr.role_id ON CONFLICT DO NOTHING",
        )
        .execute(&mut *tx)
        .bounded(limit)
        .await?;
    }
    report.raised = raised;
    if let Some(url) = webhook {
        let due: Vec<(String, String)> = sqlx::query_as(
            "SELECT key, text FROM rbac_gateway_alerts \
             WHERE delivered_at_utc IS NULL AND next_attempt_utc <= now() ORDER BY created_at_utc LIMIT 50",
        )
        .fetch_all(&mut *tx)
        .bounded(limit)
        .await?;
        for (key, text) in due {
            match deliver(url, &text).await {
                Ok(()) => {
                    sqlx::query(
                        "UPDATE rbac_gateway_alerts SET delivered_at_utc = now(), attempts = attempts + 1 WHERE key = $1",
                    )
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
                    .bind(&key)
                    .execute(&mut *tx)
                    .bounded(limit)
                    .await?;
                    sqlx::query("SELECT pg_notify('rbac_gateway_changes', '')")
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
                    )
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

/// Runs the alert pass every `interval` until the process ends.
pub async fn alerts_forever(
    pool: PgPool,
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
            Err(e) => tracing::error!(error = %e, "alert pass failed; will retry"),
        }
    }
}
