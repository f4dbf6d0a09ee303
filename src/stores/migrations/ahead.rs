//! Work done ahead of a migration, outside its transaction, so that the migration finds it done
//! and holds its strong lock briefly. Migration 0033 adds three columns to
//! `rbac_gateway_alerts`, which takes `ACCESS EXCLUSIVE` until it commits, and then gives every
//! break-glass alert its session in one `UPDATE` under that lock: 254 ms at 200,000 alerts with
//! 20,000 to give, and Console's admin `DELETE` (whose erasure trigger writes the table) waited
//! up to 1.4 s at 1,000,000 (a review, 2026-12-02). A migration already applied in the field
//! keeps its checksum, so 0033 stays as written: where it has not run, `migrate` first adds the
//! columns (nullable, no default: no rewrite; each `ALTER` waits for its lock no longer than
//! `lock_timeout`, and is tried again) and gives the alerts their sessions in batches of
//! [`BATCH`] break-glass keys, each its own transaction, each session found by its primary key
//! (the batches read the table once in all). 0033's `ADD COLUMN IF NOT EXISTS` then changes
//! nothing, and its `UPDATE` only reads: what a gateway of the previous release recorded since,
//! and an alert whose row was locked when its batch came (skipped, never waited for), is all it
//! gives. It runs after the last look for planted namesakes, on the table 0005 made.

use sqlx::PgConnection;

/// Alerts read per batch (by key, in the primary key's order).
const BATCH: i64 = 5_000;

/// Where migration 0033 is not applied (`applied`) and 0005 is (so `rbac_gateway_alerts` is the
/// one 0005 made, never a table of that name another role put there before a first install),
/// the table owned by a role the migrating role is a member of: its columns added and its
/// break-glass alerts given their sessions, as 0033's `UPDATE` gives them (the session's admin,
/// start, and end at most 4 hours after its start). Called after the last look for planted
/// namesakes (`no_planted_namesakes`), with nothing that waits in between. An alert whose row
/// is locked (an alert pass of the previous release delivering it) is skipped, left to 0033.
pub(super) async fn alert_sessions(
    conn: &mut PgConnection,
    applied: &[i64],
) -> Result<(), sqlx::Error> {
    if applied.contains(&33) || !applied.contains(&5) {
        return Ok(());
    }
    let owned: bool = sqlx::query_scalar(
        "SELECT coalesce(pg_catalog.pg_has_role((SELECT c.relowner FROM pg_catalog.pg_class c \
                WHERE c.oid OPERATOR(pg_catalog.=) pg_catalog.to_regclass('rbac_gateway_alerts')::oid), 'USAGE'), false)",
    )
    .persistent(false)
    .fetch_one(&mut *conn)
    .await?;
    if !owned {
        // Not there yet (its migration makes it, empty), or another role's: 0033 does it all.
        return Ok(());
    }
    let mut attempt = 1;
    loop {
        let add = sqlx::raw_sql(
            "ALTER TABLE rbac_gateway_alerts \
               ADD COLUMN IF NOT EXISTS session_user_id TEXT, \
               ADD COLUMN IF NOT EXISTS session_granted_at_utc TIMESTAMPTZ, \
               ADD COLUMN IF NOT EXISTS session_ends_at_utc TIMESTAMPTZ",
        );
        match sqlx::Executor::execute(&mut *conn, add).await {
            Ok(_) => break,
            Err(e) if super::lock_timeout(&e) && attempt < super::MIGRATE_ATTEMPTS => {
                tracing::warn!(error = %e, attempt, "migrate: rbac_gateway_alerts' lock was not granted in time to add migration 0033's columns ahead of it (Console's writes are not kept waiting behind it); trying again");
                tokio::time::sleep(super::pause(attempt)).await;
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
    let (mut after, mut given) = (String::new(), 0i64);
    loop {
        // The batch holds break-glass keys alone, in the primary key's order, and finds each
        // session by its own primary key (`id` is what follows `break_glass:`, 12 bytes): each
        // batch reads its 5,000 rows, never the whole table.
        let (last, n): (Option<String>, i64) = sqlx::query_as(
            "WITH batch AS (SELECT a.key FROM rbac_gateway_alerts a \
                             WHERE a.key OPERATOR(pg_catalog.>) $1 \
                               AND pg_catalog.left(a.key, 12) OPERATOR(pg_catalog.=) 'break_glass:' \
                             ORDER BY a.key LIMIT $2 FOR UPDATE SKIP LOCKED), \
                  given AS (UPDATE rbac_gateway_alerts a \
                               SET session_user_id = b.user_id, \
                                   session_granted_at_utc = b.granted_at_utc, \
                                   session_ends_at_utc = least(b.expires_at_utc, \
                                       b.granted_at_utc OPERATOR(pg_catalog.+) interval '4 hours') \
                              FROM batch, rbac_break_glass_sessions b \
                             WHERE a.key OPERATOR(pg_catalog.=) batch.key \
                               AND b.id OPERATOR(pg_catalog.=) pg_catalog.substr(batch.key, 13) \
                               AND a.session_user_id IS NULL \
                         RETURNING 1) \
             SELECT (SELECT pg_catalog.max(key) FROM batch), (SELECT pg_catalog.count(*) FROM given)",
        )
        .persistent(false)
        .bind(&after)
        .bind(BATCH)
        .fetch_one(&mut *conn)
        .await?;
        given += n;
        match last {
            Some(last) => after = last,
            None => break,
        }
    }
    if given > 0 {
        tracing::info!(
            alerts = given,
            "migrate: break-glass alerts given their sessions ahead of migration 0033, {BATCH} alerts a transaction (0033's lock on rbac_gateway_alerts is held briefly)"
        );
    }
    Ok(())
}
