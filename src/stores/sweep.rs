//! The sweep's statements (`jobs/sweep.rs` decides when and what; its SQL is here): the sweep's
//! session-level advisory lock on the connection it keeps ([`try_lock`], [`still_held`]), the
//! grants still active ([`active_grants`]), the break-glass sessions that ended without their
//! `break_glass_expire` row ([`ended_break_glass_sessions`]) and that row itself
//! ([`write_break_glass_expire`], which removes its failure entry in the same statement), and the
//! failure entries that no longer name a waiting item ([`clear_settled_failures`]). Each runs as
//! one statement in a transaction of its own (through [`Db`]), unnamed and bounded by the
//! caller's `limit`; the revocation of a grant is [`super::revocation`]'s.

use std::time::Duration;

use sqlx::PgConnection;

use crate::stores::db::{Bounded, Db};
use crate::stores::schema::plain;

/// SQL text: the id of the `break_glass_expire` row of session `b` for an end after its first,
/// [`crate::stores::revocation::episode`] of its end ([`crate::break_glass_end`]): Console moved
/// the end of a session whose first end has its row (I-5: every end its own row).
macro_rules! break_glass_episode_id {
    () => {
        crate::audit_row_id_of!(
            "'break_glass_expire:' || b.id",
            crate::episode_at!(crate::break_glass_ended!())
        )
    };
}

/// SQL text: session `b`'s end has its `break_glass_expire` row: the row of this end
/// ([`crate::break_glass_ended`]); or the row of its first end where that recorded the end it has now
/// (its capped end, or the session's own, as a row before the cap may have, or no end at all)
/// and was written after a revocation that ended it (a session revoked, restored and revoked
/// again ended twice; one revoked after its end, once); or a row under the id used before
/// 2026-11-27 (those record no end: the session is taken as ended once). A revocation dated in
/// the future is an end once it comes ([`ended_break_glass_sessions`]): before, the first end's
/// row was written at once and a second at the next sweep, both owed to Console's audit writer.
macro_rules! break_glass_end_recorded {
    () => {
        concat!(
            "EXISTS (SELECT 1 FROM rbac_grants_audit a WHERE a.id = ",
            break_glass_episode_id!(),
            " OR a.id = ",
            crate::legacy_break_glass_expire_id!(),
            " OR (a.id = ",
            crate::break_glass_expire_id!(),
            " AND (a.expires_at_utc IS NULL OR a.expires_at_utc = ",
            crate::break_glass_end!(),
            " OR a.expires_at_utc = b.expires_at_utc) \
               AND (b.revoked_at_utc IS NULL OR b.revoked_at_utc >= ",
            crate::break_glass_end!(),
            " OR a.created_at_utc >= b.revoked_at_utc)))"
        )
    };
}

/// The advisory lock key of the sweep (any constant; "rbacswep" in ASCII).
const LOCK_KEY: i64 = 0x7262_6163_7377_6570;

/// Whether the sweep's session-level advisory lock was free and is now held on `conn` (a direct
/// connection the sweeper keeps: the lock lives as long as it).
pub async fn try_lock(conn: &mut PgConnection, limit: Duration) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT pg_catalog.pg_try_advisory_lock($1)")
        .persistent(false)
        .bind(LOCK_KEY)
        .fetch_one(&mut *conn)
        .bounded(limit)
        .await
}

/// Whether `conn`, which took the lock, still answers (the lock is held while it does).
pub async fn still_held(conn: &mut PgConnection, limit: Duration) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT true")
        .persistent(false)
        .fetch_one(&mut *conn)
        .bounded(limit)
        .await
}

/// Removes the failure entries of items that no longer wait (a grant revoked by someone else, a
/// session whose expiry row exists).
pub async fn clear_settled_failures(pool: &Db, limit: Duration) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().bounded(limit).await?;
    plain(
        &mut tx,
        &[
            "rbac_ticket_grants",
            "rbac_break_glass_sessions",
            "rbac_grants_audit",
        ],
        limit,
    )
    .await?;
    sqlx::query(concat!(
        "DELETE FROM rbac_gateway_sweep_failures f WHERE NOT EXISTS ( \
           SELECT 1 FROM rbac_ticket_grants g WHERE f.item = 'grant:' || g.id AND g.revoked_at_utc IS NULL) \
         AND NOT EXISTS (SELECT 1 FROM rbac_break_glass_sessions b WHERE f.item = 'break_glass:' || b.id \
           AND NOT ",
        break_glass_end_recorded!(),
        ")"
    )).persistent(false)
    .execute(&mut *tx)
    .bounded(limit)
    .await?;
    tx.commit().bounded(limit).await?;
    Ok(())
}

/// An active (not revoked) ticket grant, as the sweep lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActiveGrant {
    pub id: String,
    pub ticket_id: String,
    /// Its `expires_at_utc` has passed.
    pub expired: bool,
}

/// Every active ticket grant, by id.
pub async fn active_grants(pool: &Db, limit: Duration) -> Result<Vec<ActiveGrant>, sqlx::Error> {
    let mut tx = pool.begin().bounded(limit).await?;
    plain(&mut tx, &["rbac_ticket_grants"], limit).await?;
    let grants: Vec<(String, String, bool)> = sqlx::query_as(
        "SELECT id, ticket_id, (expires_at_utc IS NOT NULL AND expires_at_utc <= pg_catalog.now()) \
         FROM rbac_ticket_grants WHERE revoked_at_utc IS NULL ORDER BY id",
    )
    .persistent(false)
    .fetch_all(&mut *tx)
    .bounded(limit)
    .await?;
    tx.commit().bounded(limit).await?;
    Ok(grants
        .into_iter()
        .map(|(id, ticket_id, expired)| ActiveGrant {
            id,
            ticket_id,
            expired,
        })
        .collect())
}

/// The break-glass sessions that ended (revoked, or past [`crate::break_glass_end`]: by
/// [`crate::break_glass_ended`], so a revocation dated in the future is an end once it comes,
/// though the session counts no longer from when it was set) and whose end has no
/// `break_glass_expire` row yet, by id: the first end of each, and an end Console moved after
/// its row was written (the session counted again, and ended again).
pub async fn ended_break_glass_sessions(
    pool: &Db,
    limit: Duration,
) -> Result<Vec<String>, sqlx::Error> {
    let mut tx = pool.begin().bounded(limit).await?;
    plain(
        &mut tx,
        &["rbac_break_glass_sessions", "rbac_grants_audit"],
        limit,
    )
    .await?;
    let ended = sqlx::query_scalar(concat!(
        "SELECT b.id FROM rbac_break_glass_sessions b WHERE ",
        crate::break_glass_ended!(),
        " <= pg_catalog.now() AND NOT ",
        break_glass_end_recorded!(),
        " ORDER BY b.id"
    ))
    .persistent(false)
    .fetch_all(&mut *tx)
    .bounded(limit)
    .await?;
    tx.commit().bounded(limit).await?;
    Ok(ended)
}

/// Writes `session`'s `break_glass_expire` row for its end (`ON CONFLICT DO NOTHING`; under the
/// id of its first end, or, where that row exists, of this end: `break_glass_episode_id!`) and,
/// in the same statement, its entry in `rbac_gateway_audit_outbox` (I-5: owed to Console's audit
/// writer) and the removal of its failure entry `item` (`/readyz` stops naming it as the row
/// appears): Some(session id) when this call wrote it, None when it was there already. First, in
/// the same transaction, migration 0034's guard locks `rbac_grants_audit` and fails where code
/// of another role's would run there as the gateway.
pub async fn write_break_glass_expire(
    pool: &Db,
    session: &str,
    item: &str,
    limit: Duration,
) -> Result<Option<String>, sqlx::Error> {
    let mut tx = pool.begin().bounded(limit).await?;
    sqlx::query("SELECT rbac_gateway_guard_writes('{rbac_grants_audit}'::pg_catalog.text[])")
        .persistent(false)
        .execute(&mut *tx)
        .bounded(limit)
        .await?;
    plain(&mut tx, &["rbac_break_glass_sessions"], limit).await?;
    let written = sqlx::query_scalar(concat!(
        "WITH cleared AS (DELETE FROM rbac_gateway_sweep_failures WHERE item = $2), \
         written AS (INSERT INTO rbac_grants_audit (id, event_type, target_user_id, justification, granted_by, expires_at_utc) \
         SELECT CASE WHEN EXISTS (SELECT 1 FROM rbac_grants_audit f WHERE f.id IN (",
        crate::break_glass_expire_id!(),
        ", ",
        crate::legacy_break_glass_expire_id!(),
        ")) THEN ",
        break_glass_episode_id!(),
        " ELSE ",
        crate::break_glass_expire_id!(),
        " END, 'break_glass_expire', b.user_id, b.justification, 'rbac-gateway', ",
        crate::break_glass_end!(),
        " FROM rbac_break_glass_sessions b WHERE b.id = $1 AND NOT ",
        break_glass_end_recorded!(),
        " ON CONFLICT (id) DO NOTHING RETURNING id) \
         INSERT INTO rbac_gateway_audit_outbox (audit_id) SELECT id FROM written ON CONFLICT (audit_id) DO NOTHING \
         RETURNING $1::text"
    ))
    .persistent(false)
    .bind(session)
    .bind(item)
    .fetch_optional(&mut *tx)
    .bounded(limit)
    .await?;
    tx.commit().bounded(limit).await?;
    Ok(written)
}
