//! Ticket-scoped grants (004 §3.2, §5, §9.3; RV-4): on a rule that names the path variable
//! holding the customer id (`customer_param`), an admin also holds the roles of their active
//! `rbac_ticket_grants` rows for that customer. Checked live on every request, never cached:
//! a ticket can close between two requests.
//!
//! Optionally each granting ticket is re-validated against an HTTP endpoint (FreeScout's
//! conversation status, T-PEN-6, asked by [`crate::runtime::freescout`]). When that endpoint is
//! configured and does not answer, the request fails closed with 503. [`ticket_principal`] is the
//! lookup the gateway's `Authority` and `explain` share; [`open_tickets`] the re-validation the
//! reader API shares with it; [`active_grants`] the reader API's list of an admin's grants,
//! [`customers_with_grants`] the customers `matrix` reviews an admin for.

use std::time::Duration;

use crate::policy::outcome::Unavailable;
use crate::policy::principal::Principal;
use crate::runtime::freescout::ticket_open;
use crate::runtime::metrics::Metrics;
use crate::stores::db::Db;
use crate::stores::lookup::{Lookup, Value};

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
WHERE tg.user_id = $1 COLLATE pg_catalog."default" AND tg.revoked_at_utc IS NULL
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
        "SELECT DISTINCT customer_id FROM rbac_ticket_grants WHERE user_id = $1 COLLATE pg_catalog.\"default\" \
         AND revoked_at_utc IS NULL AND (expires_at_utc IS NULL OR expires_at_utc > pg_catalog.now()) ORDER BY 1",
    ).persistent(false)
    .bind(admin_id)
    .fetch_all(pool)
    .await
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
