//! Alerts (RV-12): a new break-glass session, or a change to the break-glass group's roles, is
//! recorded in `rbac_gateway_alerts` (exactly once, by key) and delivered to the webhook as a
//! Slack-compatible `{"text": ...}` POST, retried with exponential backoff until delivered. A
//! session that was active at some point and ended before a pass saw it (revoked or expired within
//! a second) is alerted too, when it was granted in the last day (its text says it ended); a row
//! that was never active (inserted already expired or revoked) is not.
//!
//! This module decides what an alert says (a transaction's changes, the snapshot's difference),
//! delivers it and counts it; every statement of the pass is [`crate::stores::alerts`]'s, in the
//! one transaction of an [`AlertPass`] that holds the alert job's lock while the pass runs.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::runtime::https_client::{self, Unanswered};
use crate::runtime::metrics::Metrics;
use crate::stores::alerts::{AlertPass, GoneAt, Grants, Look, Met, Snapshot};
use crate::stores::db::Db;

use crate::stores::alerts::Change;

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
    /// Code of another role's on Console's tables: where found, the pass read none of them.
    /// Its alert is in `raised` only in the pass that recorded it.
    pub console_code: Look,
    /// Triggers of the gateway's that do not fire as `migrate` made them. Its alert is in
    /// `raised` only in the pass that recorded it (not looked at on a schema of another
    /// release's: `this_binarys_schema`).
    pub silent_triggers: Look,
    /// Whether the pass could read Console's tables: `Found` where the database refused a read
    /// (a table dropped or renamed; the step was undone and the refusal alerted), `NotLooked`
    /// where Console's code kept the pass from reading them, or a step waited on a lock past
    /// the pass's `lock_timeout` (`waited`). Its alert is in `raised` only in the pass that
    /// recorded it.
    pub consoles_tables: Look,
    /// What the server said of a step undone because it waited on a lock of Console's, or was
    /// cancelled ([`Met::Passes`]).
    pub waited: Option<String>,
    /// When the pass began, by the database's clock (None: skipped).
    pub at: Option<chrono::DateTime<chrono::Utc>>,
}

/// How long the webhook may take to answer (its status line and headers).
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(5);

/// POSTs `{"text": text}` to the webhook; Ok on a 2xx answer. The status decides, as soon as the
/// answer's head arrives: a 2xx's body is never read (a slow or endless one cannot turn a
/// delivery into a timeout, and the alert into a second delivery), and of a failure's body only
/// its start, for its error text ([`https_client::accepted`]). The connection is closed with
/// the answer.
async fn deliver(url: &str, text: &str) -> Result<(), String> {
    use http_body_util::Full;
    let body = serde_json::json!({ "text": text }).to_string();
    let req = hyper::Request::post(url)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(bytes::Bytes::from(body)))
        .map_err(|e| format!("bad webhook request: {e}"))?;
    let client = https_client::plain::<Full<bytes::Bytes>>();
    let resp = https_client::exchange(&client, req, DELIVERY_TIMEOUT)
        .await
        .map_err(|e| match e {
            Unanswered::TimedOut => "timed out".to_string(),
            Unanswered::Failed(e) => e,
        })?;
    https_client::accepted(resp).await
}

/// The findings a process saw, then saw gone (`say`), by kind: found again, each is raised
/// again at once, undelivered, though its key (the same state, the same UTC day) exists, unless
/// it was raised since ([`GoneAt`]).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Gone {
    pub console_code: Option<GoneAt>,
    pub silent_triggers: Option<GoneAt>,
    pub consoles_tables: Option<GoneAt>,
}

/// One alert pass: record new alerts, then deliver what is due, in one transaction
/// ([`AlertPass`]) that commits when the pass ends. `gone`: [`Gone`] (the sweep's one pass
/// knows none).
pub async fn alerts_once(
    pool: &Db,
    webhook: Option<&str>,
    limit: Duration,
    gone: &Gone,
) -> Result<AlertReport, sqlx::Error> {
    let mut report = AlertReport::default();
    // The gateway's own triggers are looked at on a schema whose migrations are exactly this
    // binary's, as those of another release differ. Asked before the pass holds a connection
    // and its lock: on a pool of one, asked inside, it would wait for the pass's own.
    let this_binarys = this_binarys_schema(pool, limit).await;
    let Some(mut pass) = AlertPass::begin(pool, limit).await? else {
        report.skipped = true;
        return Ok(report);
    };
    // Read from the catalogue: nothing of Console's runs.
    if this_binarys {
        report.silent_triggers = pass
            .raise_silent_triggers(gone.silent_triggers.as_ref())
            .await?;
    }
    report.at = Some(pass.at);
    // A finding raised again is stamped (migration 0037): on another release's schema, found
    // again, it waits for the next day's key as before.
    let none = Gone::default();
    let gone = if this_binarys { gone } else { &none };
    let mut raised = consoles_tables(&mut pass, &mut report, gone, this_binarys).await?;
    for look in [
        &report.silent_triggers,
        &report.console_code,
        &report.consoles_tables,
    ] {
        if let Look::Found(found) = look {
            if found.recorded {
                raised.push(found.key.clone());
            }
        }
    }
    report.raised = raised;
    if let Some(url) = webhook {
        let due = pass.due().await?;
        for (key, text) in due {
            match deliver(url, &text).await {
                Ok(()) => {
                    pass.delivered(&key).await?;
                    report.delivered.push(key);
                }
                Err(e) => {
                    // Backoff: 1, 2, 4 ... seconds, at most 5 minutes between attempts.
                    pass.delivery_failed(&key, &e).await?;
                    report.failed.push((key, e));
                }
            }
        }
    }
    pass.commit().await?;
    Ok(report)
}

/// The pass's reads of Console's tables, each step undone on its own where it meets an error
/// that leaves the connection answering ([`Met`]), so that what the pass recorded before and
/// the deliveries after stay: first, code of another role's on them (Console's code found, the
/// finding is alerted and nothing of Console's is read until it is gone: migration 0034); then
/// break-glass sessions, changes to the break-glass group, the daily snapshot and deploy
/// windows. The refusals that stand are alerted together (`report.consoles_tables`); the keys
/// of the other alerts recorded now are returned.
async fn consoles_tables(
    pass: &mut AlertPass,
    report: &mut AlertReport,
    gone: &Gone,
    this_binarys: bool,
) -> Result<Vec<String>, sqlx::Error> {
    let (mut raised, mut refused) = (Vec::new(), Vec::new());
    let mut met = Answer {
        refused: &mut refused,
        waited: &mut report.waited,
        this_binarys,
    };
    pass.step().await?;
    match pass.raise_console_code(gone.console_code.as_ref()).await {
        Ok(code) => report.console_code = code,
        Err(e) => met.undo(pass, e).await?,
    }
    if !met.refused.is_empty()
        || met.waited.is_some()
        || matches!(report.console_code, Look::Found(_))
    {
        // Console's tables were not looked at: nothing of them is read.
    } else {
        for step in [Step::Sessions, Step::Changes, Step::Snapshot, Step::Windows] {
            pass.step().await?;
            let keys = match step {
                Step::Sessions => pass.raise_break_glass_sessions().await,
                // Changes to the break-glass group, as the triggers recorded them with the
                // change itself (migration 0007): one alert per committed transaction.
                Step::Changes => group_change_alerts(pass).await,
                // The daily snapshot: the second net, for changes the triggers could not see.
                Step::Snapshot => daily_snapshot(pass).await,
                // A declared deploy window is said when it is declared: changes in it are
                // alerted "during deploy", and whoever reads them should know who opened it.
                Step::Windows => pass.raise_deploy_windows().await,
            };
            match keys {
                Ok(keys) => raised.extend(keys),
                Err(e) => met.undo(pass, e).await?,
            }
        }
    }
    // A wait that passed (a lock, a cancel) left a step undone: not "nothing found".
    let passed = report.waited.is_some();
    report.consoles_tables = if !refused.is_empty() {
        pass.raise_unread(&refused, gone.consoles_tables.as_ref())
            .await?
    } else if passed || matches!(report.console_code, Look::Found(_)) {
        Look::NotLooked
    } else {
        Look::Nothing
    };
    Ok(raised)
}

/// The steps of the pass's reads of Console's tables after the look for Console's code.
#[derive(Debug, Clone, Copy)]
enum Step {
    Sessions,
    Changes,
    Snapshot,
    Windows,
}

/// How the pass answers an error met in a step of its reads of Console's tables ([`Met`]).
struct Answer<'a> {
    /// What the database said of each refusal that stands, for the alert that names them.
    refused: &'a mut Vec<String>,
    /// What the server said of the last step that waited past the lock timeout, or was
    /// cancelled.
    waited: &'a mut Option<String>,
    /// The schema's migrations are this binary's: a refusal is then Console's tables' (on
    /// another release's schema it may be the gateway's own, and fails the pass as before).
    this_binarys: bool,
}

impl Answer<'_> {
    /// Undoes the step after `e`, keeping what the server said; or fails the pass.
    async fn undo(&mut self, pass: &mut AlertPass, e: sqlx::Error) -> Result<(), sqlx::Error> {
        let said = |e: &sqlx::Error| match e {
            sqlx::Error::Database(d) => d.message().to_string(),
            other => other.to_string(),
        };
        match Met::of(&e) {
            Met::Stands if self.this_binarys => self.refused.push(said(&e)),
            Met::Passes => *self.waited = Some(said(&e)),
            Met::Stands | Met::Fails => return Err(e),
        }
        pass.undo_step().await
    }
}

/// Whether the schema's migrations are exactly this binary's (none missing, failed, of another
/// text or newer): the triggers it knows are then the ones `migrate` made. Not known (the
/// serve login may not read `_sqlx_migrations`, the database is slow: `/readyz` names both)
/// counts as not. Read on the pool, not in the pass's transaction, which an error would end.
async fn this_binarys_schema(pool: &Db, limit: Duration) -> bool {
    let state = crate::stores::migrations::schema_state(pool);
    match crate::stores::db::within(limit, state).await {
        Ok(state) => {
            UNREAD_SAID.store(false, std::sync::atomic::Ordering::Relaxed);
            state.blocking().is_empty() && state.ahead().is_none()
        }
        Err(e) => {
            // Said once until a read succeeds again, not each second.
            if !UNREAD_SAID.swap(true, std::sync::atomic::Ordering::Relaxed) {
                tracing::warn!(error = %e, "alert pass: the schema's migrations were not read, so the gateway's triggers are not looked at until they are (/readyz names why)");
            }
            false
        }
    }
}

/// Whether [`this_binarys_schema`] said that it could not read the migrations.
static UNREAD_SAID: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

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
async fn group_change_alerts(pass: &mut AlertPass) -> Result<Vec<String>, sqlx::Error> {
    let changes = pass.pending_changes().await?;
    if changes.is_empty() {
        return Ok(vec![]);
    }
    let roles_now = pass.break_glass_roles().await?;
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
        let inserted = pass
            .raise(&key, &change_text(&txid, &changes, &roles_now))
            .await?;
        pass.mark_alerted(&key, &txid).await?;
        if inserted {
            raised.push(key);
        }
    }
    Ok(raised)
}

/// Once a day, what the group grants is compared with the last snapshot and any difference is
/// alerted (`snapshot:<time>`), saying whether the triggers recorded changes meanwhile (none
/// recorded: they were bypassed or disabled).
async fn daily_snapshot(pass: &mut AlertPass) -> Result<Vec<String>, sqlx::Error> {
    let last = pass.last_snapshot().await?;
    if matches!(&last, Some(l) if !l.due) {
        return Ok(vec![]);
    }
    let now: Grants = pass.break_glass_grants().await?;
    let mut raised = Vec::new();
    if let Some(Snapshot {
        taken_at: taken,
        grants: before,
        ..
    }) = last
    {
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
            let recorded = pass.changes_since(taken).await?;
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
            pass.raise(&key, &text).await?;
            raised.push(key);
        }
    }
    pass.take_snapshot(&now).await?;
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
    // The key of each finding last logged: said once when found (or found otherwise) and once
    // when gone, not at every pass while it stands; and the key of each seen gone, raised
    // again if it comes back.
    let (mut said_code, mut said_triggers, mut said_unread) = (None, None, None);
    let mut gone = Gone::default();
    let mut waiting = false;
    loop {
        tokio::time::sleep(interval).await;
        match alerts_once(&pool, webhook.as_deref(), limit, &gone).await {
            Ok(r) => {
                let pass = if r.skipped { "skipped" } else { "done" };
                metrics.alert_passes.with_label_values(&[pass]).inc();
                if !r.skipped {
                    say(
                        &CONSOLE_CODE,
                        &r.console_code,
                        &mut said_code,
                        &mut gone.console_code,
                        r.at,
                    );
                    say(
                        &SILENT_TRIGGERS,
                        &r.silent_triggers,
                        &mut said_triggers,
                        &mut gone.silent_triggers,
                        r.at,
                    );
                    say(
                        &CONSOLE_UNREAD,
                        &r.consoles_tables,
                        &mut said_unread,
                        &mut gone.consoles_tables,
                        r.at,
                    );
                    match (&r.waited, waiting) {
                        (Some(e), false) => {
                            tracing::warn!(error = %e, "alert pass: a read of Console's tables waited past the lock timeout or was cancelled; undone, and tried again by each pass (alerts already due are still delivered; said once while it lasts)")
                        }
                        (None, true) if r.consoles_tables == Look::Nothing => tracing::info!(
                            "alert pass: Console's tables are read again after a wait"
                        ),
                        _ => {}
                    }
                    waiting = r.waited.is_some();
                }
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

/// What the log says of a kind of finding (`stores::alerts::Finding`) when found, and when gone.
struct Saying {
    found: &'static str,
    gone: &'static str,
}

const CONSOLE_CODE: Saying = Saying {
    found: "alert pass: Console's tables carry code that would run as the gateway; the pass reads none of them until it is gone (said once; the alert names it)",
    gone: "alert pass: Console's tables carry no code that would run as the gateway any more; the pass reads them again",
};

const SILENT_TRIGGERS: Saying = Saying {
    found: "alert pass: triggers of the gateway's do not fire as migrate made them; what they record goes unrecorded until they do (said once; the alert names them)",
    gone: "alert pass: the gateway's triggers fire as migrate made them again",
};

const CONSOLE_UNREAD: Saying = Saying {
    found: "alert pass: the database refused a read of Console's tables; new break-glass sessions, group changes and deploy windows go unalerted until it answers, and alerts already recorded are still delivered (said once; the alert names the error)",
    gone: "alert pass: Console's tables are read again",
};

/// Logs what a pass saw where it differs from what was `said` last: an error when found (each
/// new alert), and once when it is gone; nothing where the pass did not look. The key said
/// last is `gone` once the finding is, with when the pass that saw it gone began (`at`),
/// until it is found again (and raised again: [`Gone`]).
fn say(
    saying: &Saying,
    look: &Look,
    said: &mut Option<String>,
    gone: &mut Option<GoneAt>,
    at: Option<chrono::DateTime<chrono::Utc>>,
) {
    match (look, said.as_deref()) {
        (Look::Found(f), last) if last != Some(f.key.as_str()) => {
            tracing::error!(alert = %f.key, findings = %f.found, "{}", saying.found);
            *said = Some(f.key.clone());
            if gone.as_ref().is_some_and(|g| g.key == f.key) {
                *gone = None;
            }
        }
        (Look::Nothing, Some(last)) => {
            tracing::info!(alert = %last, "{}", saying.gone);
            let key = said.take();
            *gone = key.zip(at).map(|(key, at)| GoneAt { key, at });
        }
        _ => {}
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
