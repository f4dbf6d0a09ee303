//! I-5: every `rbac_grants_audit` row the gateway writes reaches Console's audit writer
//! (`customer_audit_events`, SC-A3), which alone writes that chained table. The row's debt is
//! recorded in `rbac_gateway_audit_outbox` by the statement that writes the row
//! ([`crate::stores::audit_outbox`]); this job pays it: every replica runs a pass every second,
//! and each pass claims one due row at a time (a lease: no other replica sends it meanwhile),
//! POSTs it as one event (dimension `operator_interaction`, action `operator.rbac.revoke` or
//! `operator.rbac.grant`, [`payload`]) with `Authorization: Bearer <service token>` and
//! `Idempotency-Key: <audit row id>`, and marks it delivered on a 2xx answer. Anything else (no
//! connection, a timeout, any other status) is a failure: the row is tried again after 1, 2, 4
//! ... seconds, at most [`BACKOFF_CAP`], and the pass ends (a writer that is down is asked once a
//! pass, not once per row). Each request has `--audit-writer-timeout-ms` for the answer's head:
//! a slow writer delays the debt, never the sweep or a request.
//!
//! Rows of the gateway's without an entry (written before the outbox existed, or by an older
//! binary during a rolling upgrade) are entered at the first pass and every [`ADOPT_EVERY`]
//! passes after it (a long history a batch a pass until none is left).
//!
//! A row owed longer than `--audit-writer-alert-after` raises one ops alert (the alert pass
//! delivers it) and is counted on `/readyz` and in `rbac_gateway_audit_outbox_overdue`. Without
//! `--audit-writer-url` nothing is sent: the rows wait, counted and alerted, and the start-up log
//! (`serve`'s warnings of settings) and `/readyz` say that I-5 is not met. docs/audit-writer.md has the payload and semantics.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;

use crate::runtime::https_client::{self, Unanswered};
use crate::runtime::metrics::Metrics;
use crate::stores::audit_outbox::{self as store, Owed};
use crate::stores::db::Db;

/// The longest wait between two tries of one row.
pub const BACKOFF_CAP: Duration = Duration::from_secs(60);
/// Most rows one pass delivers (the next pass goes on a second later).
const MAX_PER_PASS: usize = 200;
/// Passes between two looks for the gateway's rows without an outbox entry (the first pass
/// looks too).
pub const ADOPT_EVERY: u64 = 600;
/// A claim lasts the request's timeout and this much more (the two statements around it).
const LEASE_MARGIN: Duration = Duration::from_secs(30);

/// The `dimension` of every event (004 I-5).
pub const DIMENSION: &str = "operator_interaction";

/// Console's audit writer, as `serve` was told of it.
#[derive(Clone)]
pub struct WriterSettings {
    pub url: hyper::Uri,
    /// The service token (from `--audit-writer-token-file` or `GATEWAY_AUDIT_WRITER_TOKEN`).
    pub token: String,
    /// How long the writer may take to answer (its status line and headers).
    pub timeout: Duration,
}

impl std::fmt::Debug for WriterSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriterSettings")
            .field("url", &self.url)
            .field("token", &"<redacted>")
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// The job's settings.
#[derive(Debug, Clone)]
pub struct OutboxSettings {
    /// None: no `--audit-writer-url`, nothing is sent (I-5 not met).
    pub writer: Option<WriterSettings>,
    /// A row owed longer than this is alerted and counted overdue.
    pub alert_after: Duration,
    /// The time between passes.
    pub interval: Duration,
    /// The bound of each database step.
    pub limit: Duration,
}

/// The action of an `rbac_grants_audit` event type: a grant or a revocation.
pub fn action(event_type: &str) -> &'static str {
    match event_type {
        "grant" | "ticket_grant" | "break_glass_grant" => "operator.rbac.grant",
        _ => "operator.rbac.revoke",
    }
}

/// The event sent for one row (docs/audit-writer.md names each field).
pub fn payload(o: &Owed) -> serde_json::Value {
    serde_json::json!({
        "idempotency_key": o.audit_id,
        "dimension": DIMENSION,
        "action": action(&o.event_type),
        "source": "rbac-gateway",
        "audit_row_id": o.audit_id,
        "event_type": o.event_type,
        "actor": o.actor,
        "admin_id": o.admin_id,
        "customer_id": o.customer_id,
        "ticket_id": o.ticket_id,
        "role_id": o.role_id,
        "group_id": o.group_id,
        "reason": o.reason,
        "expires_at": o.expires_at.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)),
        "occurred_at": o.occurred_at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
    })
}

/// The writer's client: HTTP or HTTPS (rustls on ring, the web PKI's roots).
struct Writer {
    settings: WriterSettings,
    client: https_client::HttpsClient,
}

impl Writer {
    fn new(settings: WriterSettings) -> Writer {
        let client = https_client::client(settings.timeout);
        Writer { settings, client }
    }

    /// POSTs one event; Ok on a 2xx answer (its body never read). An error names the status and
    /// the start of the writer's answer, or why there was none.
    async fn send(&self, o: &Owed) -> Result<(), String> {
        let body = payload(o).to_string();
        let req = hyper::Request::post(self.settings.url.clone())
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header(
                hyper::header::AUTHORIZATION,
                format!("Bearer {}", self.settings.token),
            )
            .header("idempotency-key", o.audit_id.as_str())
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| format!("bad request to the audit writer: {e}"))?;
        let timeout = self.settings.timeout;
        let resp = https_client::exchange(&self.client, req, timeout)
            .await
            .map_err(|e| match e {
                Unanswered::TimedOut => format!("no answer within {timeout:?}"),
                Unanswered::Failed(e) => e,
            })?;
        https_client::accepted(resp).await
    }
}

/// What one pass did.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct PassReport {
    /// Audit row ids delivered.
    pub delivered: Vec<String>,
    /// (audit row id, error) of the delivery that failed (at most one a pass).
    pub failed: Option<(String, String)>,
    /// The ops alert raised for overdue rows.
    pub alerted: Option<String>,
    /// What is still owed, read at the pass's end (None: the pass ended before).
    pub state: Option<store::OutboxState>,
}

/// One pass: deliver what is due until nothing is or a delivery fails, raise the alert of rows
/// overdue, read what is still owed. What it did is in `report` however it ends (a database
/// step that fails ends it: what was delivered before is still counted).
async fn pass(
    pool: &Db,
    writer: Option<&Writer>,
    settings: &OutboxSettings,
    report: &mut PassReport,
) -> Result<(), sqlx::Error> {
    let limit = settings.limit;
    if let Some(w) = writer {
        let lease = w.settings.timeout + LEASE_MARGIN;
        for _ in 0..MAX_PER_PASS {
            let Some(owed) = store::claim(pool, lease, limit).await? else {
                break;
            };
            match w.send(&owed).await {
                Ok(()) => {
                    store::delivered(pool, &owed.audit_id, limit).await?;
                    report.delivered.push(owed.audit_id);
                }
                Err(e) => {
                    store::failed(pool, &owed.audit_id, &e, BACKOFF_CAP, limit).await?;
                    report.failed = Some((owed.audit_id, e));
                    break;
                }
            }
        }
    }
    report.alerted =
        store::raise_overdue(pool, settings.alert_after, writer.is_some(), limit).await?;
    report.state = Some(store::outbox_state(pool, settings.alert_after, limit).await?);
    Ok(())
}

/// Runs a pass every `settings.interval` until the process ends.
pub async fn run_forever(pool: Db, settings: OutboxSettings, metrics: Arc<Metrics>) {
    let writer = settings.writer.clone().map(Writer::new);
    // Without a writer, `serve` says at start that I-5 is not met (`warn_of_settings`).
    if let Some(w) = &writer {
        tracing::info!(url = %w.settings.url, "audit writer: rbac_grants_audit rows the gateway writes are delivered to Console's audit writer (I-5)");
    }
    let (mut passes, mut adopt_at) = (0u64, 0u64);
    loop {
        tokio::time::sleep(settings.interval).await;
        if passes >= adopt_at {
            adopt_at = match store::adopt_unowed(&pool, settings.limit).await {
                Ok(n) => {
                    if n > 0 {
                        tracing::warn!(rows = n, "audit writer: rbac_grants_audit rows of the gateway's without an outbox entry (written before it, or by an older binary) are now owed to the writer");
                    }
                    if n as i64 >= store::ADOPT_BATCH {
                        passes + 1
                    } else {
                        passes + ADOPT_EVERY
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "audit writer: the gateway's rows without an outbox entry could not be looked for; tried again next pass");
                    passes + 1
                }
            };
        }
        passes += 1;
        let mut r = PassReport::default();
        let outcome = pass(&pool, writer.as_ref(), &settings, &mut r).await;
        for id in &r.delivered {
            metrics
                .audit_outbox_deliveries
                .with_label_values(&["delivered"])
                .inc();
            tracing::info!(audit_row = %id, "audit writer: event delivered");
        }
        if let Some((id, e)) = &r.failed {
            metrics
                .audit_outbox_deliveries
                .with_label_values(&["failed"])
                .inc();
            tracing::warn!(audit_row = %id, error = %e, "audit writer: delivery failed; retried with backoff");
        }
        if let Some(key) = &r.alerted {
            tracing::error!(alert = %key, after = ?settings.alert_after, "audit writer: rows still undelivered past the bound; ops alert raised");
        }
        if let Some(state) = &r.state {
            metrics.audit_outbox_undelivered.set(state.undelivered);
            metrics.audit_outbox_overdue.set(state.overdue);
            metrics
                .audit_outbox_oldest_seconds
                .set(state.oldest_seconds as i64);
        }
        if let Err(e) = outcome {
            metrics
                .audit_outbox_deliveries
                .with_label_values(&["db_error"])
                .inc();
            tracing::error!(error = %e, "audit writer: the outbox pass failed; retried next pass (nothing is lost: the rows stay owed)");
        }
    }
}

#[cfg(test)]
mod tests {
    /// The field names docs/audit-writer.md gives Console's team: a rename is a change of the
    /// interface, made there first.
    #[test]
    fn the_payload_has_the_documented_fields() {
        let o = crate::stores::audit_outbox::Owed {
            audit_id: "9ab0b03e-7fba-5052-8747-bebf082fbd65".into(),
            attempts: 1,
            event_type: "ticket_expire".into(),
            admin_id: "a".into(),
            role_id: Some("r".into()),
            group_id: None,
            ticket_id: Some("4711".into()),
            customer_id: Some(42),
            reason: Some("expired".into()),
            actor: "rbac-gateway".into(),
            expires_at: None,
            occurred_at: chrono::DateTime::from_timestamp(1_764_296_346, 661_381_000).unwrap(),
        };
        let p = super::payload(&o);
        let mut keys: Vec<&str> = p.as_object().unwrap().keys().map(|k| k.as_str()).collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "action",
                "actor",
                "admin_id",
                "audit_row_id",
                "customer_id",
                "dimension",
                "event_type",
                "expires_at",
                "group_id",
                "idempotency_key",
                "occurred_at",
                "reason",
                "role_id",
                "source",
                "ticket_id"
            ]
        );
        assert_eq!(p["occurred_at"], "2025-11-28T02:19:06.661381Z");
        assert_eq!(p["action"], "operator.rbac.revoke");
        assert_eq!(p["dimension"], "operator_interaction");
        assert_eq!(p["customer_id"], 42);
        assert_eq!(p["idempotency_key"], p["audit_row_id"]);
    }

    #[test]
    fn revocations_and_grants_have_their_action() {
        for t in ["ticket_expire", "break_glass_expire", "revoke"] {
            assert_eq!(super::action(t), "operator.rbac.revoke");
        }
        for t in ["grant", "ticket_grant", "break_glass_grant"] {
            assert_eq!(super::action(t), "operator.rbac.grant");
        }
    }
}
