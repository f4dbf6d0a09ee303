//! The audit outbox (I-5, migration 0031): every `rbac_grants_audit` row the gateway writes is
//! owed to Console's audit writer (`customer_audit_events`, SC-A3), and `rbac_gateway_audit_outbox`
//! records the debt in the same statement as the row ([`super::revocation::revoke_grant`],
//! [`super::sweep::write_break_glass_expire`]). This module holds the delivery's statements
//! (`jobs/audit_outbox.rs` sends): one row claimed at a time with its audit row ([`claim`]: a
//! lease of one replica, `FOR UPDATE SKIP LOCKED`), the gateway's rows without an entry
//! (written before the outbox, or by an older binary during an upgrade) entered
//! ([`adopt_unowed`]), its delivery or failure with backoff
//! ([`delivered`], [`failed`]), the ops alert of rows still owed past a bound
//! ([`raise_overdue`]), and what is owed ([`outbox_state`], for the job's metrics, `/readyz` and
//! `check`). Each is one statement in a transaction of its own, unnamed and bounded.

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::stores::db::{Bounded, Db};

/// One `rbac_grants_audit` row owed to the writer, as it is sent.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Owed {
    /// The audit row's id: the idempotency key.
    pub audit_id: String,
    /// Deliveries tried, this one included.
    pub attempts: i32,
    pub event_type: String,
    /// `target_user_id`: the admin whose access changed.
    pub admin_id: String,
    pub role_id: Option<String>,
    pub group_id: Option<String>,
    pub ticket_id: Option<String>,
    pub customer_id: Option<i32>,
    /// `justification`: the reason (`expired`, `ticket_closed`, a break-glass justification).
    pub reason: Option<String>,
    /// `granted_by`: who made the change (`rbac-gateway` for the gateway's own).
    pub actor: String,
    pub expires_at: Option<DateTime<Utc>>,
    pub occurred_at: DateTime<Utc>,
}

/// Claims the oldest due row (not delivered, its next attempt due, its audit row present) for
/// `lease`: no other replica takes it meanwhile (`SKIP LOCKED`, then `next_attempt_utc` moved
/// past the lease). A replica that dies with a claim leaves the row to be tried again when the
/// lease ends; the idempotency key makes that second send harmless. None: nothing is due.
pub async fn claim(
    pool: &Db,
    lease: Duration,
    limit: Duration,
) -> Result<Option<Owed>, sqlx::Error> {
    sqlx::query_as(
        "WITH due AS (SELECT o.audit_id FROM rbac_gateway_audit_outbox o \
            WHERE o.delivered_at_utc IS NULL AND o.next_attempt_utc <= pg_catalog.now() \
              AND EXISTS (SELECT 1 FROM rbac_grants_audit a WHERE a.id = o.audit_id) \
            ORDER BY o.created_at_utc, o.audit_id LIMIT 1 FOR UPDATE OF o SKIP LOCKED), \
         c AS (UPDATE rbac_gateway_audit_outbox o SET attempts = o.attempts + 1, \
                 next_attempt_utc = pg_catalog.now() + pg_catalog.make_interval(secs => $1) \
            FROM due WHERE o.audit_id = due.audit_id RETURNING o.audit_id, o.attempts) \
         SELECT c.audit_id, c.attempts, a.event_type, a.target_user_id AS admin_id, a.role_id, a.group_id, \
                a.ticket_id, a.customer_id, a.justification AS reason, a.granted_by AS actor, \
                a.expires_at_utc AS expires_at, a.created_at_utc AS occurred_at \
           FROM c JOIN rbac_grants_audit a ON a.id = c.audit_id",
    )
    .persistent(false)
    .bind(lease.as_secs_f64())
    .fetch_optional(pool)
    .bounded(limit)
    .await
}

/// Most rows [`adopt_unowed`] enters in one statement.
pub const ADOPT_BATCH: i64 = 5_000;

/// Enters in the outbox every row the gateway wrote (`granted_by = 'rbac-gateway'`, its two
/// event types) that has no entry: the rows written before migration 0031, and those a binary
/// without the outbox writes during a rolling upgrade. Owed from now (their entry's time), so
/// the bound counts from when the gateway took the debt on. At most [`ADOPT_BATCH`] a call,
/// oldest first (a long history is entered over several calls, each statement short). The
/// number entered.
pub async fn adopt_unowed(pool: &Db, limit: Duration) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query(
        "INSERT INTO rbac_gateway_audit_outbox (audit_id) \
         SELECT a.id FROM rbac_grants_audit a \
          WHERE a.granted_by = 'rbac-gateway' AND a.event_type IN ('ticket_expire', 'break_glass_expire') \
            AND NOT EXISTS (SELECT 1 FROM rbac_gateway_audit_outbox o WHERE o.audit_id = a.id) \
          ORDER BY a.created_at_utc LIMIT $1 \
         ON CONFLICT (audit_id) DO NOTHING",
    )
    .persistent(false)
    .bind(ADOPT_BATCH)
    .execute(pool)
    .bounded(limit)
    .await?
    .rows_affected())
}

/// Marks `audit_id` delivered (the writer answered 2xx).
pub async fn delivered(pool: &Db, audit_id: &str, limit: Duration) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE rbac_gateway_audit_outbox SET delivered_at_utc = pg_catalog.now(), last_error = NULL \
         WHERE audit_id = $1 AND delivered_at_utc IS NULL",
    )
    .persistent(false)
    .bind(audit_id)
    .execute(pool)
    .bounded(limit)
    .await?;
    Ok(())
}

/// Records a failed delivery of `audit_id` and backs it off: tried again after 2^(attempts-1)
/// seconds (1, 2, 4, ...), at most `cap` after this failure.
pub async fn failed(
    pool: &Db,
    audit_id: &str,
    error: &str,
    cap: Duration,
    limit: Duration,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE rbac_gateway_audit_outbox SET last_error = $2, \
                next_attempt_utc = pg_catalog.now() + pg_catalog.make_interval(secs => \
                    LEAST($3, pg_catalog.power(2.0::float8, LEAST(attempts, 30) - 1))) \
         WHERE audit_id = $1 AND delivered_at_utc IS NULL",
    )
    .persistent(false)
    .bind(audit_id)
    .bind(error)
    .bind(cap.as_secs_f64())
    .execute(pool)
    .bounded(limit)
    .await?;
    Ok(())
}

/// Raises one ops alert (`rbac_gateway_alerts`, delivered by the alert pass) for the rows still
/// owed `after` their audit row was written that no alert named yet, and marks them named: each
/// row is alerted once, whichever replica sees it first. Some(alert key) when one was raised.
pub async fn raise_overdue(
    pool: &Db,
    after: Duration,
    configured: bool,
    limit: Duration,
) -> Result<Option<String>, sqlx::Error> {
    let why = if configured {
        "Console's audit writer (--audit-writer-url) has not taken them"
    } else {
        "no --audit-writer-url is set: I-5 is not met"
    };
    sqlx::query_scalar(
        "WITH o AS (UPDATE rbac_gateway_audit_outbox SET alerted_at_utc = pg_catalog.now() \
            WHERE delivered_at_utc IS NULL AND alerted_at_utc IS NULL \
              AND created_at_utc <= pg_catalog.now() - pg_catalog.make_interval(secs => $1) \
            RETURNING audit_id, last_error) \
         INSERT INTO rbac_gateway_alerts (key, text) \
         SELECT 'audit_writer:' || pg_catalog.min(audit_id), \
                pg_catalog.format('I-5: %s rbac_grants_audit row(s) written by the gateway are still not in customer_audit_events after %s s (rbac_gateway_audit_outbox; first %s): %s. Last error: %s.', \
                    pg_catalog.count(*), $1, pg_catalog.min(audit_id), $2::text, coalesce(pg_catalog.max(last_error), 'none')) \
           FROM o HAVING pg_catalog.count(*) > 0 \
         ON CONFLICT (key) DO NOTHING RETURNING key",
    )
    .persistent(false)
    .bind(after.as_secs_f64())
    .bind(why)
    .fetch_optional(pool)
    .bounded(limit)
    .await
}

/// What is owed to the audit writer: the rows not delivered, those of them older than the
/// bound, the age of the oldest and the last error of the oldest that failed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OutboxState {
    pub undelivered: i64,
    /// Undelivered for longer than the bound asked about.
    pub overdue: i64,
    /// Seconds since the oldest undelivered row was written (0 when none).
    pub oldest_seconds: f64,
    pub last_error: Option<String>,
}

/// [`OutboxState`], with `after` as the bound of an overdue row. The line `check
/// --database-url` gives I-5 can be made from it: nothing undelivered past the bound.
pub async fn outbox_state(
    pool: &Db,
    after: Duration,
    limit: Duration,
) -> Result<OutboxState, sqlx::Error> {
    let (undelivered, overdue, oldest_seconds, last_error): (i64, i64, f64, Option<String>) =
        sqlx::query_as(
            "SELECT pg_catalog.count(*), \
                    pg_catalog.count(*) FILTER (WHERE created_at_utc <= pg_catalog.now() - pg_catalog.make_interval(secs => $1)), \
                    coalesce(EXTRACT(EPOCH FROM pg_catalog.now() - pg_catalog.min(created_at_utc))::float8, 0), \
                    (pg_catalog.array_agg(last_error ORDER BY created_at_utc) FILTER (WHERE last_error IS NOT NULL))[1] \
               FROM rbac_gateway_audit_outbox WHERE delivered_at_utc IS NULL",
        )
        .persistent(false)
        .bind(after.as_secs_f64())
        .fetch_one(pool)
        .bounded(limit)
        .await?;
    Ok(OutboxState {
        undelivered,
        overdue,
        oldest_seconds,
        last_error,
    })
}
