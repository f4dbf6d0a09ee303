//! Ending grants in the database (004 §5; I-9), shared by the sweep (`jobs/sweep.rs`) and
//! FreeScout's webhook (a ticket's grants through `jobs/ticket_ended.rs`): one ticket grant revoked
//! with its `ticket_expire` row first, in a transaction of its own ([`revoke_grant`]); every active
//! grant of a ticket, each on its own ([`revoke_ticket`]); and the items whose rows could not be
//! written, counted in `rbac_gateway_sweep_failures` ([`record_failure`]), retried by the next
//! sweep and named by `/readyz` ([`stuck`]).
//!
//! A grant is read again under a row lock before its audit row, whose id is derived from what it
//! records ([`audit_row_id`] of `ticket_expire` and the grant's id) and inserted with
//! `ON CONFLICT DO NOTHING`: a grant revoked meanwhile (by an operator, another replica, the
//! webhook) gets no second row. A grant ended again after Console restored it gets a row of its
//! own for that end ([`episode`]), as does a break-glass session whose end Console moved after
//! its row (`stores::sweep`).

use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::stores::db::{Bounded, Db};

/// The id of the `rbac_grants_audit` row the gateway writes when it records `kind`
/// (`ticket_expire`, `break_glass_expire`) of the grant or session `of`: a UUID, as Console's
/// ids are (interface.md: "Ids are TEXT UUIDs"; 004 §3.2), derived from what it records so a
/// retry or a second replica writes the same row: the first 128 bits of SHA-256 of `kind:of`,
/// with a name-based UUID's version (5) and variant digits. [`crate::break_glass_expire_id`]
/// spells it in SQL (`tests/api/lifecycle.rs` holds the two equal). Until 2026-11-27 the id was
/// `kind:of` itself, which is not a UUID; rows written so are still recognised
/// ([`crate::legacy_break_glass_expire_id`]).
pub fn audit_row_id(kind: &str, of: &str) -> String {
    let digest = Sha256::digest(format!("{kind}:{of}").as_bytes());
    let mut h = hex::encode(&digest[..16]).into_bytes();
    h[12] = b'5';
    h[16] = b'8';
    let h = String::from_utf8(h).expect("hex is ASCII");
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// SQL text: [`audit_row_id`] of the text the SQL expressions `parts` make (`kind:of`), as
/// PostgreSQL computes it.
#[macro_export]
macro_rules! audit_row_id_of {
    ($($part:expr),+) => {
        concat!(
            "overlay(overlay(pg_catalog.left(pg_catalog.encode(pg_catalog.sha256(pg_catalog.convert_to(",
            $($part),+,
            ", 'UTF8')), 'hex'), 32) placing '5' from 13) placing '8' from 17)::uuid::text"
        )
    };
}

/// SQL text: [`audit_row_id`]`("break_glass_expire", b.id)` of a row `b` of
/// `rbac_break_glass_sessions`.
#[macro_export]
macro_rules! break_glass_expire_id {
    () => {
        $crate::audit_row_id_of!("'break_glass_expire:' || b.id")
    };
}

/// SQL text: the `kind:of` time of an episode after the first, `@` and an instant in UTC to the
/// microsecond (`YYYY-MM-DDTHH:MI:SS.US`), as [`episode`] writes it in Rust (`-` for no instant,
/// a session with neither an expiry nor a start).
#[macro_export]
macro_rules! episode_at {
    ($instant:expr) => {
        concat!(
            " || '@' || coalesce(pg_catalog.to_char((",
            $instant,
            ") AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US'), '-')"
        )
    };
}

/// The `of` of [`audit_row_id`] for a grant's or session's end after its first: `of@instant`,
/// the instant in UTC to the microsecond ([`crate::episode_at`] in SQL). The first end's row
/// keeps `of` alone (the id every release wrote).
pub fn episode(of: &str, instant: chrono::DateTime<chrono::Utc>) -> String {
    format!("{of}@{}", instant.format("%Y-%m-%dT%H:%M:%S%.6f"))
}

/// SQL text: the id a `break_glass_expire` row of session `b` was given before 2026-11-27.
#[macro_export]
macro_rules! legacy_break_glass_expire_id {
    () => {
        "'break_glass_expire:' || b.id"
    };
}

/// One thing the sweep or a revocation did (or failed to do).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Done {
    /// (grant id, ticket id, reason).
    Revoked(String, String, String),
    /// A break-glass session's expiry row was written.
    BreakGlassExpired(String),
    /// (ticket, error): FreeScout did not answer; the ticket's grants are kept.
    FreeScout(String, String),
    /// (item, error): a grant's or session's rows could not be written; retried next sweep.
    Failed(String, String),
}

/// Revokes one grant with `reason`, its `ticket_expire` row first (I-9), in a transaction of its
/// own. Ok(false): it was revoked meanwhile, or (for `expired`) given a later expiry.
pub async fn revoke_grant(
    pool: &Db,
    id: &str,
    reason: &str,
    limit: Duration,
) -> Result<bool, sqlx::Error> {
    let mut tx = pool.begin().bounded(limit).await?;
    // First, a statement of its own that names no table of Console's (a statement that does is
    // expanded, a view in a table's place with it, before anything in it runs): both of
    // Console's tables this transaction reads and writes are locked (until it ends), and
    // nothing of another role's that the reads or writes would run as the gateway may be on
    // them (migration 0034's guard: it fails otherwise, and the sweep names it).
    sqlx::query(
        "SELECT rbac_gateway_guard_writes('{rbac_grants_audit,rbac_ticket_grants}'::pg_catalog.text[])",
    )
    .persistent(false)
    .execute(&mut *tx)
    .bounded(limit)
    .await?;
    // Read again under a row lock: a grant revoked (by an operator, another replica, the
    // webhook) or given a later expiry since it was listed gets no audit row of a revocation
    // that does not happen.
    type Row = (String, String, String, i32, bool);
    let row: Option<Row> = sqlx::query_as(
        "SELECT user_id, role_id, ticket_id, customer_id, \
                (expires_at_utc IS NOT NULL AND expires_at_utc <= pg_catalog.now()) \
         FROM rbac_ticket_grants WHERE id = $1 AND revoked_at_utc IS NULL FOR UPDATE",
    )
    .persistent(false)
    .bind(id)
    .fetch_optional(&mut *tx)
    .bounded(limit)
    .await?;
    let Some((user, role, ticket, customer, expired)) = row else {
        return Ok(false);
    };
    if reason == "expired" && !expired {
        return Ok(false);
    }
    // I-9: the audit row first; a failure rolls back this grant's transaction only. I-5: the
    // same statement owes it to Console's audit writer (`rbac_gateway_audit_outbox`, delivered
    // by `jobs/audit_outbox.rs`): the row and its delivery commit or roll back together.
    //
    // I-5 for every end: where the grant's first row exists (Console revoked it before, then
    // cleared `revoked_at_utc`; or wrote a row under that id itself), this end's row is its own,
    // `ticket_expire:<grant>@<this transaction's time>` ([`episode`]); a retry of a rolled-back
    // transaction writes under its own time, and a committed one leaves the grant revoked.
    sqlx::query(concat!(
        "WITH prior AS (SELECT EXISTS (SELECT 1 FROM rbac_grants_audit x WHERE x.id = $1) AS seen), \
         written AS (INSERT INTO rbac_grants_audit (id, event_type, target_user_id, role_id, ticket_id, customer_id, justification, granted_by) \
         SELECT CASE WHEN p.seen THEN ",
        crate::audit_row_id_of!("'ticket_expire:' || $7", crate::episode_at!("pg_catalog.now()")),
        " ELSE $1 END, 'ticket_expire', $2, $3, $4, $5, $6, 'rbac-gateway' FROM prior p \
         ON CONFLICT (id) DO NOTHING RETURNING id) \
         INSERT INTO rbac_gateway_audit_outbox (audit_id) SELECT id FROM written ON CONFLICT (audit_id) DO NOTHING",
    )).persistent(false)
    .bind(audit_row_id("ticket_expire", id))
    .bind(&user)
    .bind(&role)
    .bind(&ticket)
    .bind(customer)
    .bind(reason)
    .bind(id)
    .execute(&mut *tx)
    .bounded(limit)
    .await?;
    let n = sqlx::query(
        "UPDATE rbac_ticket_grants SET revoked_at_utc = pg_catalog.now(), revoke_reason = $2 \
         WHERE id = $1 AND revoked_at_utc IS NULL",
    )
    .persistent(false)
    .bind(id)
    .bind(reason)
    .execute(&mut *tx)
    .bounded(limit)
    .await?
    .rows_affected();
    sqlx::query("DELETE FROM rbac_gateway_sweep_failures WHERE item = $1")
        .persistent(false)
        .bind(format!("grant:{id}"))
        .execute(&mut *tx)
        .bounded(limit)
        .await?;
    tx.commit().bounded(limit).await?;
    Ok(n == 1)
}

/// Counts one more failure of `item` (its own statement: the item's transaction rolled back).
pub async fn record_failure(pool: &Db, item: &str, error: &str, limit: Duration) {
    let recorded = sqlx::query(
        "INSERT INTO rbac_gateway_sweep_failures (item, failures, last_error) VALUES ($1, 1, $2) \
         ON CONFLICT (item) DO UPDATE SET failures = rbac_gateway_sweep_failures.failures + 1, \
         last_error = EXCLUDED.last_error, last_failed_at = pg_catalog.now()",
    )
    .persistent(false)
    .bind(item)
    .bind(error)
    .execute(pool)
    .bounded(limit)
    .await;
    if let Err(e) = recorded {
        // The failure itself is logged by the caller; only its count is lost (the database is
        // likely down, and /readyz says so).
        tracing::error!(item, error = %e, "sweep: the failure could not be counted in rbac_gateway_sweep_failures");
    }
}

/// Who revokes, as the log lines of its revocations name it: the caller, and who tries again
/// what failed (the webhook's depends on whether its process sweeps).
#[derive(Debug, Clone, Copy)]
pub struct Caller<'a> {
    pub name: &'a str,
    pub retry: &'a str,
}

/// Revokes one grant, recording a failure: what the sweep and the webhook do per grant.
pub async fn revoke_or_record(
    pool: &Db,
    id: &str,
    ticket: &str,
    reason: &str,
    limit: Duration,
    by: Caller<'_>,
) -> Option<Done> {
    match revoke_grant(pool, id, reason, limit).await {
        Ok(true) => Some(Done::Revoked(
            id.to_string(),
            ticket.to_string(),
            reason.to_string(),
        )),
        Ok(false) => None,
        Err(e) => {
            let item = format!("grant:{id}");
            let error = e.to_string();
            tracing::error!(grant = %id, ticket = %ticket, error = %error, "{}: the grant's audit row or revocation failed; nothing of it was committed, {}", by.name, by.retry);
            record_failure(pool, &item, &error, limit).await;
            Some(Done::Failed(item, error))
        }
    }
}

/// Every active grant of `ticket`, revoked as `ticket_closed`, each on its own. None active (or
/// all revoked meanwhile by another replica): an empty list.
pub async fn revoke_ticket(
    pool: &Db,
    ticket: &str,
    limit: Duration,
    by: Caller<'_>,
) -> Result<Vec<Done>, sqlx::Error> {
    let mut tx = pool.begin().bounded(limit).await?;
    crate::stores::schema::plain(&mut tx, &["rbac_ticket_grants"], limit).await?;
    let ids: Vec<String> = sqlx::query_scalar(
        "SELECT id FROM rbac_ticket_grants WHERE ticket_id = $1 AND revoked_at_utc IS NULL ORDER BY id",
    ).persistent(false)
    .bind(ticket)
    .fetch_all(&mut *tx)
    .bounded(limit)
    .await?;
    tx.commit().bounded(limit).await?;
    let mut out = Vec::new();
    for id in ids {
        out.extend(revoke_or_record(pool, &id, ticket, "ticket_closed", limit, by).await);
    }
    Ok(out)
}

/// The items (`grant:<id>`, `break_glass:<id>`) that failed at least `threshold` sweeps, with
/// their count and last error (at most `max`), for `/readyz`.
pub async fn stuck(
    pool: &Db,
    threshold: u32,
    max: i64,
) -> Result<(Vec<(String, i32, String)>, i64), sqlx::Error> {
    let rows: Vec<(String, i32, String, i64)> = sqlx::query_as(
        "SELECT item, failures, last_error, pg_catalog.count(*) OVER () FROM rbac_gateway_sweep_failures \
         WHERE failures >= $1 ORDER BY item LIMIT $2",
    )
    .persistent(false)
    .bind(threshold as i32)
    .bind(max)
    .fetch_all(pool)
    .await?;
    let total = rows.first().map(|r| r.3).unwrap_or(0);
    Ok((
        rows.into_iter().map(|(i, f, e, _)| (i, f, e)).collect(),
        total,
    ))
}
