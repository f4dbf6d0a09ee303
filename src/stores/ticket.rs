//! Ticket-scoped grants (004 §3.2, §5, §9.3; RV-4): on a rule that names the path variable
//! holding the customer id (`customer_param`), an admin also holds the roles of their active
//! `rbac_ticket_grants` rows for that customer. Checked live on every request, never cached:
//! a ticket can close between two requests.
//!
//! Optionally each granting ticket is re-validated against an HTTP endpoint (FreeScout's
//! conversation status, T-PEN-6). When that endpoint is configured and does not answer, the
//! request fails closed with 503. [`ticket_principal`] is the lookup the gateway's `Authority`
//! and `explain` share; [`open_tickets`] the re-validation the reader API shares with it;
//! [`active_grants`] the reader API's list of an admin's grants, [`customers_with_grants`] the
//! customers `matrix` reviews an admin for.

use std::time::Duration;

use crate::policy::outcome::Unavailable;
use crate::policy::principal::Principal;
use crate::runtime::metrics::Metrics;
use crate::stores::db::Db;
use crate::stores::lookup::{Lookup, Value};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// Roles and permissions granted through active ticket grants, with the tickets behind them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TicketGrants {
    pub roles: Vec<String>,
    pub permissions: Vec<String>,
    /// (ticket id, role name) of every active grant row.
    pub tickets: Vec<(String, String)>,
}

/// The admin's live ticket grants for one customer: one call of `rbac_gateway_ticket_grants`
/// (migration 0012), one round trip, sent by [`Db::lookup`] (a named statement on the gateway's
/// own sessions, else one simple query with its values written in).
const GRANTS_SQL: &str =
    "SELECT roles, permissions, tickets FROM rbac_gateway_ticket_grants($1, $2, $3)";

/// The admin's live ticket grants for one customer (one round trip, inheritance expanded),
/// restricted to `only` tickets when given.
pub async fn grants(
    pool: &Db,
    admin_id: &str,
    customer_id: i32,
    only: Option<&[String]>,
) -> Result<TicketGrants, sqlx::Error> {
    // A child span of the request's when traced (issue 53): the live grants of a rule with
    // `customer_param`, the lookup a cached principal still makes.
    let span = crate::runtime::telemetry::db_span("SELECT live ticket grants");
    // A dead pooled connection (after a connection storm) costs one retry, not a 503.
    let rows = crate::stores::db::retry_once(|| async {
        pool.lookup(Lookup {
            sql: GRANTS_SQL,
            values: &[
                Value::Text(admin_id),
                Value::Integer(customer_id),
                Value::OptTexts(only),
            ],
        })
        .await
    })
    .await;
    if let Some(span) = span {
        span.done(rows.is_ok());
    }
    let rows = rows?;
    let row = rows.first().ok_or(sqlx::Error::RowNotFound)?;
    let roles: Vec<String> = sqlx::Row::try_get(row, 0)?;
    let permissions: Vec<String> = sqlx::Row::try_get(row, 1)?;
    let pairs: Vec<String> = sqlx::Row::try_get(row, 2)?;
    let tickets = pairs
        .into_iter()
        .filter_map(|p| {
            p.split_once(' ')
                .map(|(t, r)| (t.to_string(), r.to_string()))
        })
        .collect();
    Ok(TicketGrants {
        roles,
        permissions,
        tickets,
    })
}

/// One active ticket-scoped grant, as the reader API's `/me` lists it.
pub use crate::policy::reader::TicketGrant;

const TICKET_GRANTS_SQL: &str = r#"
SELECT tg.ticket_id, tg.customer_id, r.name, tg.expires_at_utc
FROM rbac_ticket_grants tg JOIN rbac_roles r ON r.id = tg.role_id
WHERE tg.user_id = $1 AND tg.revoked_at_utc IS NULL
  AND (tg.expires_at_utc IS NULL OR tg.expires_at_utc > pg_catalog.now())
ORDER BY tg.customer_id, tg.ticket_id, r.name
"#;

/// The admin's active ticket-scoped grants (not revoked, not expired), by customer, ticket and
/// role; a child span of the request's when traced.
pub async fn active_grants(pool: &Db, admin_id: &str) -> Result<Vec<TicketGrant>, sqlx::Error> {
    let span = crate::runtime::telemetry::db_span("SELECT ticket grants");
    type Row = (String, i32, String, Option<chrono::DateTime<chrono::Utc>>);
    let rows: Result<Vec<Row>, _> = sqlx::query_as(TICKET_GRANTS_SQL)
        .persistent(false)
        .bind(admin_id)
        .fetch_all(pool)
        .await;
    if let Some(span) = span {
        span.done(rows.is_ok());
    }
    Ok(rows?
        .into_iter()
        .map(
            |(ticket_id, customer_id, role, expires_at_utc)| TicketGrant {
                ticket_id,
                customer_id,
                role,
                expires_at_utc,
            },
        )
        .collect())
}

/// The customers the admin holds an active (not revoked, not expired) ticket grant for, in
/// order.
pub async fn customers_with_grants(pool: &Db, admin_id: &str) -> Result<Vec<i32>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT DISTINCT customer_id FROM rbac_ticket_grants WHERE user_id = $1 \
         AND revoked_at_utc IS NULL AND (expires_at_utc IS NULL OR expires_at_utc > pg_catalog.now()) ORDER BY 1",
    ).persistent(false)
    .bind(admin_id)
    .fetch_all(pool)
    .await
}

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
/// by `timeout` and the body by [`MAX_ANSWER_BYTES`]. One client per call: validations are rare
/// (ticket-scoped routes only) and a client shared across the proxy's runtimes would hand out
/// connections whose tasks live on another runtime.
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
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let fetch = async {
        let resp = client
            .request(req)
            .await
            .map_err(|e| TicketCheckError::Unreachable(format!("{e:#}")))?;
        let status = resp.status().as_u16();
        let body = Limited::new(resp.into_body(), MAX_ANSWER_BYTES)
            .collect()
            .await
            .map_err(|e| TicketCheckError::BadAnswer(format!("body: {e}")))?
            .to_bytes();
        Ok::<_, TicketCheckError>((status, body))
    };
    let (status, body) = tokio::time::timeout(timeout, fetch)
        .await
        .map_err(|_| TicketCheckError::Unreachable("timed out".into()))??;
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

/// The principal with its live ticket grants for `customer` (re-validated against
/// `validation_url` when given), or None when there are none. Shared by the gateway and
/// `explain`.
pub async fn ticket_principal(
    pool: &Db,
    metrics: &Metrics,
    validation_url: Option<&str>,
    principal: &Principal,
    customer: i32,
    request_id: &str,
) -> Result<Option<Principal>, Unavailable> {
    let read = |only: Option<Vec<String>>| async move {
        metrics.db_queries.inc();
        grants(pool, &principal.admin_id, customer, only.as_deref())
            .await
            .map_err(|e| {
                metrics.db_errors.inc();
                tracing::error!(request_id, error = %e, "cannot read ticket grants: answering 503");
                Unavailable::Tickets
            })
    };
    let all = read(None).await?;
    if all.tickets.is_empty() {
        return Ok(None);
    }
    let grants = match validation_url {
        None => all,
        Some(url) => {
            let ids: Vec<String> = all.tickets.into_iter().map(|(t, _)| t).collect();
            let open = open_tickets(url, ids, request_id).await?;
            if open.is_empty() {
                return Ok(None);
            }
            read(Some(open)).await?
        }
    };
    Ok(Some(
        principal.with_extra(&grants.roles, &grants.permissions),
    ))
}

/// The tickets of `tickets` the validator at `url` reports open, each asked once. One it cannot
/// answer for fails the whole request closed (503), whichever ticket the decision would have
/// used: the proxy and the reader API ask the same tickets and agree on when to answer 503.
pub async fn open_tickets(
    url: &str,
    mut tickets: Vec<String>,
    request_id: &str,
) -> Result<Vec<String>, Unavailable> {
    tickets.sort();
    tickets.dedup();
    let mut open = Vec::new();
    for t in tickets {
        match ticket_open(url, &t, Duration::from_secs(2)).await {
            Ok(true) => open.push(t),
            Ok(false) => {
                tracing::info!(request_id, ticket = %t, "ticket closed: its grant is ignored")
            }
            Err(e) => {
                tracing::error!(request_id, ticket = %t, error = %e, "ticket re-validation failed: answering 503 (fail closed)");
                return Err(Unavailable::Tickets);
            }
        }
    }
    Ok(open)
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
