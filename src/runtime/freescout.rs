//! FreeScout's client: a conversation's status over HTTP (`--ticket-validation-url`, T-PEN-6).
//! The per-request re-validation asks whether a ticket is still open ([`ticket_open`]); the sweep
//! and FreeScout's webhook ask for its status ([`ticket_status`]) and end its grants when it
//! [`ended`] (`jobs/ticket_ended.rs`).

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};

use crate::runtime::https_client::{self, Unanswered};

#[derive(Debug, thiserror::Error)]
pub enum TicketCheckError {
    #[error("ticket validation endpoint unreachable: {0}")]
    Unreachable(String),
    #[error("ticket validation endpoint answered {0}")]
    BadAnswer(String),
}

/// Everything but RFC 3986 unreserved characters is escaped in the ticket id.
const UNRESERVED: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Statuses of a FreeScout conversation that keep a ticket grant alive, in any case (the sweep
/// reads the ending ones in any case too: FreeScout's API and its webhooks differ in case).
const OPEN: &[&str] = &["active", "pending"];

/// FreeScout statuses that end a ticket grant (read in any case): the sweep and FreeScout's
/// webhook revoke a ticket's grants on them.
pub const ENDED: &[&str] = &["closed", "resolved"];

/// Whether FreeScout's `status` ends a ticket grant.
pub fn ended(status: &str) -> bool {
    ENDED.iter().any(|e| e.eq_ignore_ascii_case(status))
}

/// The largest validator answer read; a longer one is a bad answer (fails closed).
pub const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// Asks `url_template` (with `{ticket_id}` replaced) whether the ticket is still open.
/// The endpoint answers 200 with JSON `{"status": "active" | "pending" | "closed" | ...}`;
/// 404 means the ticket does not exist (not open). Only `http://host:port/...` is supported:
/// the validator is expected on a local or sidecar address.
///
/// hyper's HTTP/1.1 client reads the answer, so any framing the validator picks (Content-Length,
/// chunked, keep-alive or close) is read correctly; the whole exchange, body included, is bounded
/// by `timeout` and the body by [`MAX_ANSWER_BYTES`]. One client per call
/// ([`https_client::plain`]): validations are rare (ticket-scoped routes only).
pub async fn ticket_open(
    url_template: &str,
    ticket_id: &str,
    timeout: Duration,
) -> Result<bool, TicketCheckError> {
    Ok(ticket_status(url_template, ticket_id, timeout)
        .await?
        .is_some_and(|st| OPEN.iter().any(|o| o.eq_ignore_ascii_case(&st))))
}

/// The ticket's status as the validator reports it (`{"status": ...}`), or None when it answers
/// 404 (no such ticket).
pub async fn ticket_status(
    url_template: &str,
    ticket_id: &str,
    timeout: Duration,
) -> Result<Option<String>, TicketCheckError> {
    let encoded: String = percent_encoding::utf8_percent_encode(ticket_id, UNRESERVED).to_string();
    let url = url_template.replace("{ticket_id}", &encoded);
    let uri: hyper::Uri = url
        .parse()
        .map_err(|e| TicketCheckError::Unreachable(format!("bad URL {url}: {e}")))?;
    if uri.scheme_str() != Some("http") {
        return Err(TicketCheckError::Unreachable(format!(
            "only http:// is supported: {url}"
        )));
    }
    let req = hyper::Request::get(uri)
        .header(hyper::header::ACCEPT, "application/json")
        .body(Empty::<Bytes>::new())
        .map_err(|e| TicketCheckError::Unreachable(format!("bad request for {url}: {e}")))?;
    // One deadline for the whole exchange: the head within it, the body by its end.
    let deadline = tokio::time::Instant::now() + timeout;
    let timed_out = || TicketCheckError::Unreachable("timed out".into());
    let client = https_client::plain::<Empty<Bytes>>();
    let resp = https_client::exchange(&client, req, timeout)
        .await
        .map_err(|e| match e {
            Unanswered::TimedOut => timed_out(),
            Unanswered::Failed(e) => TicketCheckError::Unreachable(e),
        })?;
    let status = resp.status().as_u16();
    let body = tokio::time::timeout_at(
        deadline,
        Limited::new(resp.into_body(), MAX_ANSWER_BYTES).collect(),
    )
    .await
    .map_err(|_| timed_out())?
    .map_err(|e| TicketCheckError::BadAnswer(format!("body: {e}")))?
    .to_bytes();
    match status {
        404 => Ok(None),
        200 => {
            let v: serde_json::Value = serde_json::from_slice(&body)
                .map_err(|e| TicketCheckError::BadAnswer(format!("not JSON: {e}")))?;
            let st = v
                .get("status")
                .and_then(|s| s.as_str())
                .ok_or_else(|| TicketCheckError::BadAnswer("no status".into()))?;
            Ok(Some(st.to_string()))
        }
        other => Err(TicketCheckError::BadAnswer(format!("HTTP {other}"))),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn ended_statuses_are_read_in_any_case() {
        assert!(super::ended("CLOSED"));
        assert!(super::ended("Resolved"));
        assert!(!super::ended("active"));
        assert!(!super::ended("pending"));
        assert!(!super::ended(""));
    }
}
