//! The aftermath of a request let through, once the door has tried to forward it: Console's
//! answer (its time by status class, a shadow rule's comparison and drift row) or the failure
//! that kept it from Console (a body that cannot be read whole, Console unreachable or silent),
//! carried out as [`crate::policy::answer::carry_out`] carries out a decision: logged and
//! counted here, never in a door.

use std::sync::Arc;

use crate::policy::answer::{BodyRefusal, Records, Tally, BAD_GATEWAY, GATEWAY_TIMEOUT};
use crate::policy::audit_event::AuditEvent;
use crate::policy::outcome::Forward;

/// A request let through whose forwarding failed before Console answered, found after the
/// decision (the request is counted under it): carried out by [`carry_out_not_forwarded`].
#[derive(Debug)]
pub enum NotForwarded {
    /// The bodies being read hold `--max-buffered-body-bytes` (`left` of it): 503.
    BodyBusy { left: usize },
    /// The body stopped arriving for `timeout_ms`: 408.
    BodyTimedOut { timeout_ms: u64 },
    /// The body is over `--max-body-bytes` (`limit`): 413.
    BodyTooLarge { limit: usize },
    /// The body is malformed or cut short: 400.
    BodyMalformed { error: String },
    /// Console could not be reached: 502, or 504 when connecting timed out.
    Upstream { error: String, timed_out: bool },
    /// Console did not answer within `--upstream-read-timeout-ms`: 504.
    UpstreamTimedOut,
}

/// The gateway's own answer to a request whose forwarding failed, ready to write: its status and
/// plain-text body from the one status table, and `Retry-After` when it says when to retry.
#[derive(Debug)]
pub struct Failed {
    pub status: (u16, &'static str),
    pub retry_after: Option<http::HeaderValue>,
}

/// Carries out a failed forwarding, as [`carry_out`](super::answer::carry_out) does an outcome:
/// the log line, the count of a refused body (`rbac_gateway_refusals_total`); returns the answer
/// the door writes.
pub fn carry_out_not_forwarded(
    gw: &impl Records,
    failure: NotForwarded,
    request_id: &str,
) -> Failed {
    let refused = |refusal: BodyRefusal| {
        gw.refused(refusal.as_str());
        Failed {
            status: refusal.status(),
            retry_after: (refusal == BodyRefusal::Busy)
                .then(|| http::HeaderValue::from_static("1")),
        }
    };
    match failure {
        NotForwarded::BodyBusy { left } => {
            tracing::warn!(
                request_id,
                limit = left,
                "request bodies being read hold --max-buffered-body-bytes: 503, not forwarded"
            );
            refused(BodyRefusal::Busy)
        }
        NotForwarded::BodyTimedOut { timeout_ms } => {
            tracing::warn!(
                request_id,
                timeout_ms,
                "request body stalled: 408, not forwarded"
            );
            refused(BodyRefusal::TimedOut)
        }
        NotForwarded::BodyTooLarge { limit } => {
            tracing::warn!(request_id, limit, "request body too large: 413");
            refused(BodyRefusal::TooLarge)
        }
        NotForwarded::BodyMalformed { error } => {
            tracing::warn!(request_id, error = %error, "request body malformed or incomplete: 400, not forwarded");
            refused(BodyRefusal::Malformed)
        }
        NotForwarded::Upstream { error, timed_out } => {
            let status = if timed_out {
                GATEWAY_TIMEOUT
            } else {
                BAD_GATEWAY
            };
            tracing::warn!(request_id, status = status.0, error = %error, "upstream failure");
            Failed {
                status,
                retry_after: None,
            }
        }
        NotForwarded::UpstreamTimedOut => {
            tracing::warn!(request_id, status = 504, "upstream read timed out");
            Failed {
                status: GATEWAY_TIMEOUT,
                retry_after: None,
            }
        }
    }
}

/// Console's answer to a forwarded request, carried out: its time counted by status class (the
/// door's [`Tally`]) and, on a shadow-mode rule, compared with the decision
/// ([`carry_out_shadow`]); a drift row is recorded without holding up Console's answer.
pub fn carry_out_console(
    gw: &impl Records,
    tally: &impl Tally,
    forward: &Forward,
    status: u16,
    seconds: f64,
    request_id: &str,
) {
    tally.console(status, seconds);
    if let Some(row) = carry_out_shadow(gw, forward, status, request_id) {
        gw.record_later(row);
    }
}

/// Console's answer on a rule in shadow mode, carried out like every other aftermath: counted
/// as drift or agreement, drift logged, and the drift row (a fresh id) returned for the door to
/// record through [`Records::record`] without holding up the answer. None: no drift row.
pub fn carry_out_shadow(
    gw: &impl Records,
    forward: &Forward,
    console_status: u16,
    request_id: &str,
) -> Option<Arc<AuditEvent>> {
    let drift = forward.drift.as_ref()?;
    let route = drift.route.as_deref().unwrap_or_default();
    if !forward.drifts(console_status) {
        gw.shadowed(route, None);
        return None;
    }
    gw.shadowed(route, Some(drift.reason.as_str()));
    tracing::warn!(request_id, rule = %route, kind = %drift.reason, console_status, "drift: the gateway and Console disagree");
    let mut row = AuditEvent::clone(drift);
    row.id = crate::policy::outcome::row_id();
    Some(Arc::new(row))
}
