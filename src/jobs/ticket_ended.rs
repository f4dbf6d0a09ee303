//! A ticket ended (004 §5; I-9): FreeScout is asked for the ticket's status, and when it reports
//! the ticket closed or resolved, every active grant of the ticket is revoked with its
//! `ticket_expire` row first, each revocation counted and logged. The sweep (`jobs/sweep.rs`)
//! and FreeScout's webhook (`doors/freescout_webhook.rs`) both go through [`ask_and_end`]; the
//! statements are [`crate::stores::revocation`]'s, FreeScout's client
//! [`crate::runtime::freescout`]'s.
//!
//! What the webhook answers a call, counts and logs is [`webhook_answer`]'s: its door only reads
//! the call and writes the answer.

use std::net::SocketAddr;
use std::time::Duration;

use crate::runtime::freescout::{ended, ticket_status, TicketCheckError};
use crate::runtime::metrics::Metrics;
use crate::stores::db::Db;
use crate::stores::revocation::{revoke_ticket, Caller, Done};

/// What ending a ticket needs.
pub struct Ender<'a> {
    pub pool: &'a Db,
    /// FreeScout's status URL template (`{ticket_id}`).
    pub validation_url: &'a str,
    /// The deadline of the ticket's status request.
    pub freescout_timeout: Duration,
    /// The bound of each database step.
    pub limit: Duration,
    /// Who ends it, for the log lines.
    pub by: Caller<'a>,
    /// Where each revocation is counted and logged. None: it is only returned (`sweep --once`
    /// prints what it did).
    pub metrics: Option<&'a Metrics>,
}

/// What became of a ticket FreeScout was asked about.
#[derive(Debug)]
pub enum Ending {
    /// FreeScout did not say: nothing revoked.
    Unanswered(TicketCheckError),
    /// FreeScout does not know the ticket: nothing revoked.
    Unknown,
    /// The status FreeScout reports keeps the ticket's grants: nothing revoked.
    Open(String),
    /// The ticket ended (its status), but its grants could not be listed: nothing revoked.
    Unlisted(String, sqlx::Error),
    /// The ticket ended (its status): what was revoked and what failed.
    Ended(String, Vec<Done>),
}

/// Asks FreeScout for `ticket`'s status and, when it ended, revokes each of its active grants on
/// its own, its audit row first. Each revocation is counted and logged here.
pub async fn ask_and_end(e: &Ender<'_>, ticket: &str) -> Ending {
    let status = match ticket_status(e.validation_url, ticket, e.freescout_timeout).await {
        Err(err) => return Ending::Unanswered(err),
        Ok(None) => return Ending::Unknown,
        Ok(Some(st)) if !ended(&st) => return Ending::Open(st),
        Ok(Some(st)) => st,
    };
    match revoke_ticket(e.pool, ticket, e.limit, e.by).await {
        Err(err) => Ending::Unlisted(status, err),
        Ok(done) => {
            if let Some(metrics) = e.metrics {
                for d in &done {
                    if let Done::Revoked(grant, ticket, reason) = d {
                        revoked(metrics, e.by, grant, ticket, reason);
                    }
                }
            }
            Ending::Ended(status, done)
        }
    }
}

/// Counts and logs one grant revoked by `by`.
pub fn revoked(metrics: &Metrics, by: Caller<'_>, grant: &str, ticket: &str, reason: &str) {
    metrics.sweep_revocations.with_label_values(&[reason]).inc();
    tracing::info!(grant = %grant, ticket = %ticket, reason = %reason, "{}: ticket grant revoked (audit row written first)", by.name);
}

/// The label values of `rbac_gateway_freescout_webhooks_total` (README, "FreeScout's webhook").
pub const RESULTS: &[&str] = &[
    "revoked",
    "nothing_to_revoke",
    "not_closed",
    "unknown_ticket",
    "unauthenticated",
    "bad_request",
    "freescout_failed",
    "failed",
];

/// FreeScout's webhook call, as its door read it.
#[derive(Debug)]
pub enum Heard {
    /// The body did not all arrive within this deadline: 408, the connection closed.
    Late(Duration),
    /// The body was unreadable or over the door's bound (why): 413.
    Unreadable(String),
    /// The caller did not prove who it is: 401.
    Unauthenticated,
    /// The body names no ticket (why): 400.
    NoTicket(String),
    /// An authenticated call for this ticket.
    Ticket(String),
}

/// What the webhook's door writes.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub body: serde_json::Value,
    /// The connection is closed after the answer.
    pub close: bool,
}

impl Reply {
    fn new(status: u16, body: serde_json::Value) -> Reply {
        Reply {
            status,
            body,
            close: false,
        }
    }
}

/// What the webhook needs beyond the call.
pub struct Webhook<'a> {
    pub pool: &'a Db,
    /// FreeScout's status URL template (`{ticket_id}`).
    pub validation_url: &'a str,
    pub freescout_timeout: Duration,
    pub db_limit: Duration,
    pub metrics: &'a Metrics,
    /// This process's `--sweep-interval`; None: it does not sweep (0).
    pub sweep_interval: Option<Duration>,
}

impl Webhook<'_> {
    /// Who tries again what a call could not do, for its log lines: true whether this process
    /// sweeps or not.
    fn retry(&self) -> String {
        match self.sweep_interval {
            Some(every) => format!(
                "the sweep retries it (every {} s)",
                every.as_secs_f64()
            ),
            None => "this process does not sweep (--sweep-interval 0): only a sweep elsewhere \
                     (another replica, `rbac-gateway sweep --once`) or another webhook call retries it"
                .to_string(),
        }
    }

    fn count(&self, result: &str) {
        self.metrics
            .freescout_webhooks
            .with_label_values(&[result])
            .inc();
    }
}

/// The webhook's answer to a call from `peer`, counted and logged. The call is a hint only: a
/// ticket's grants are revoked only when FreeScout reports it ended ([`ask_and_end`]).
pub async fn webhook_answer(w: &Webhook<'_>, heard: Heard, peer: SocketAddr) -> Reply {
    let ticket = match heard {
        Heard::Late(within) => {
            w.count("bad_request");
            tracing::warn!(peer = %peer, "FreeScout webhook: the body did not arrive within {} ms (--freescout-timeout-ms); refused (408), nothing changed", within.as_millis());
            let error = format!("the body did not arrive within {} ms", within.as_millis());
            let mut reply = Reply::new(408, serde_json::json!({ "error": error }));
            reply.close = true;
            return reply;
        }
        Heard::Unreadable(error) => {
            w.count("bad_request");
            return Reply::new(413, serde_json::json!({ "error": error }));
        }
        Heard::Unauthenticated => {
            w.count("unauthenticated");
            tracing::warn!(peer = %peer, "FreeScout webhook: unauthenticated call refused (401), nothing changed");
            return Reply::new(401, serde_json::json!({"error": "unauthenticated"}));
        }
        Heard::NoTicket(error) => {
            w.count("bad_request");
            return Reply::new(400, serde_json::json!({ "error": error }));
        }
        Heard::Ticket(ticket) => ticket,
    };
    let retry = w.retry();
    let ender = Ender {
        pool: w.pool,
        validation_url: w.validation_url,
        freescout_timeout: w.freescout_timeout,
        limit: w.db_limit,
        by: Caller {
            name: "FreeScout webhook",
            retry: &retry,
        },
        metrics: Some(w.metrics),
    };
    match ask_and_end(&ender, &ticket).await {
        Ending::Unanswered(e) => {
            w.count("freescout_failed");
            tracing::error!(ticket = %ticket, error = %e, "FreeScout webhook: the ticket's status could not be read again; nothing revoked: {retry}");
            Reply::new(
                503,
                serde_json::json!({"ticket_id": ticket, "error": format!("FreeScout did not answer: {e}"), "revoked": []}),
            )
        }
        Ending::Unknown => {
            w.count("unknown_ticket");
            Reply::new(
                200,
                serde_json::json!({"ticket_id": ticket, "status": null, "revoked": [], "note": "FreeScout does not know this ticket: nothing revoked"}),
            )
        }
        Ending::Open(st) => {
            w.count("not_closed");
            tracing::warn!(ticket = %ticket, status = %st, peer = %peer, "FreeScout webhook: the ticket is not closed; nothing revoked");
            Reply::new(
                200,
                serde_json::json!({"ticket_id": ticket, "status": st, "revoked": [], "note": "the ticket is not closed or resolved: nothing revoked"}),
            )
        }
        Ending::Unlisted(st, e) => {
            w.count("failed");
            tracing::error!(ticket = %ticket, error = %e, "FreeScout webhook: the ticket's grants could not be read; nothing revoked: {retry}");
            Reply::new(
                503,
                serde_json::json!({"ticket_id": ticket, "status": st, "error": format!("database: {e}"), "revoked": []}),
            )
        }
        Ending::Ended(st, done) => {
            let mut revoked = Vec::new();
            let mut failed = Vec::new();
            for d in done {
                match d {
                    Done::Revoked(g, _, _) => revoked.push(g),
                    Done::Failed(item, e) => {
                        failed.push(serde_json::json!({"item": item, "error": e}))
                    }
                    _ => {}
                }
            }
            // `revoked` only when a grant was: a closed ticket with no active grant (none given,
            // or revoked already by the sweep or an earlier call) is its own result.
            let (status, result) = if !failed.is_empty() {
                (503, "failed")
            } else if revoked.is_empty() {
                (200, "nothing_to_revoke")
            } else {
                (200, "revoked")
            };
            w.count(result);
            let mut body = serde_json::json!({"ticket_id": ticket, "status": st, "revoked": revoked, "failed": failed});
            if result == "nothing_to_revoke" {
                body["note"] = "the ticket has no active grant: nothing to revoke".into();
            }
            Reply::new(status, body)
        }
    }
}
