//! `migrate`'s last look at the gateway's triggers, after the migrations: each that does not
//! fire as the migrations made it (disabled or dropped by the owner of Console's tables, made
//! for replicas only, or gone with a table a migration of Console's made again:
//! [`schema::silent_triggers`]) is made again ([`schema::remake_statements`]). A trigger disabled
//! on purpose is made to fire too: the gateway's guarantees stand on them (README, Upgrade).

use std::collections::BTreeMap;

use super::{lock_timeout, pause};
use crate::stores::schema;

/// How many times one table's triggers are tried where its lock was not granted within
/// `lock_timeout` (200 ms, the wait Console's writes may see at each): about 6.5 s in all, fewer
/// than a migration's tries (a later `migrate`, or `check`'s statements by hand, makes them once
/// the lock is free; `check` and the alert pass name them until then).
const ATTEMPTS: u32 = 10;

/// Makes the silent triggers again, a table's together in one transaction: its `SHARE ROW
/// EXCLUSIVE` lock taken first (`LOCK TABLE`, its partitions with it), then its triggers looked
/// at again and each made by the lightest statement its state asks ([`schema::Fix`]): no
/// other session changes them between the look and the fix, and no write lands between a drop
/// and a creation. Console's reads of the table wait only where a trigger is dropped first.
/// One this role may not make (it does not act as the table's owner, the table is gone) or
/// whose table's lock stayed held is logged with the fix and left, and `migrate` goes on. An
/// error of the connection ends it (the migrations are applied; it says so).
pub(super) async fn remake_silent(conn: &mut sqlx::PgConnection) -> Result<(), sqlx::Error> {
    let mut tables: BTreeMap<String, Vec<String>> = BTreeMap::new();
    // Which tables to visit: each is looked at again under its lock.
    for trigger in schema::silent_triggers(&mut *conn).await? {
        if let Some((_, table)) = trigger.split_once(" on ") {
            tables.entry(table.to_string()).or_default().push(trigger);
        }
    }
    for (table, triggers) in tables {
        let mut attempt = 1;
        loop {
            let e = match remake_table(&mut *conn, &table).await {
                Ok(made) if made.is_empty() => break,
                Ok(made) => {
                    tracing::info!(table, triggers = ?made, "migrate: triggers of the gateway's that did not fire as migrate made them (disabled, dropped, altered, or their table made again) are made again");
                    break;
                }
                Err(e) => e,
            };
            // The server refused: the transaction the error left open is rolled back. Otherwise,
            // or where that fails too, the connection is gone.
            let answers = matches!(e, sqlx::Error::Database(_));
            let rollback = if answers {
                sqlx::Executor::execute(&mut *conn, sqlx::raw_sql("ROLLBACK"))
                    .await
                    .err()
            } else {
                None
            };
            if !answers || rollback.is_some() {
                let rollback = rollback.map_or(String::new(), |r| r.to_string());
                tracing::error!(table, error = %e, rollback = %rollback, "migrate: the connection was lost while the table's triggers were made again (rolled back with it)");
                return Err(e);
            }
            if lock_timeout(&e) && attempt < ATTEMPTS {
                if attempt == 1 {
                    tracing::warn!(table, "migrate: a lock on the table was not granted within {} ms to make the gateway's triggers again (Console's writes are not kept waiting behind it); trying again", super::MIGRATE_LOCK_TIMEOUT.as_millis());
                }
                tokio::time::sleep(pause(attempt)).await;
                attempt += 1;
                continue;
            }
            let holders = if lock_timeout(&e) {
                match lock_holders(&mut *conn, &table).await {
                    Ok(held) if held.is_empty() => "none now".to_string(),
                    Ok(held) => held.join("; "),
                    Err(e) => format!("not read: {e}"),
                }
            } else {
                String::new()
            };
            tracing::warn!(table, triggers = ?triggers, error = %e, held_by = %holders, "migrate: triggers of the gateway's do not fire as migrate made them, and were not made again: run `rbac-gateway migrate` again as a role that acts as the table's owner (with the owner's privileges on it) and owns the gateway's functions (the role that first ran it), once the table is there and no transaction holds it (`rbac-gateway check --database-url` gives the statements)");
            break;
        }
    }
    Ok(())
}

/// One table's silent triggers made again in a transaction: the table locked, its triggers
/// looked at under the lock, each made by its fix behind a savepoint (one the server refuses,
/// such as a trigger of Console's under the name on a partition, is rolled back alone and
/// named, the others made), committed. The triggers made (none where another session made them
/// meanwhile). A lock not granted, or an error of the connection, ends the transaction's work
/// and leaves it for the caller to roll back.
async fn remake_table(
    conn: &mut sqlx::PgConnection,
    table: &str,
) -> Result<Vec<String>, sqlx::Error> {
    // A trigger already gone is no news: its "does not exist, skipping" is not logged.
    let lock = format!(
        "BEGIN; SET LOCAL client_min_messages = warning; LOCK TABLE {}.{} IN SHARE ROW EXCLUSIVE MODE",
        crate::stores::db::quoted_schema(),
        crate::stores::db::quote_ident(table)
    );
    sqlx::Executor::execute(&mut *conn, sqlx::raw_sql(&lock)).await?;
    let on_table = format!(" on {table}");
    let silenced: Vec<schema::Silenced> = schema::silenced_triggers(&mut *conn)
        .await?
        .into_iter()
        .filter(|s| s.trigger.ends_with(&on_table))
        .collect();
    let mut made = Vec::new();
    for silenced in silenced {
        let Some(statements) = silenced.remake_statements() else {
            let parent = silenced.parent.as_deref().unwrap_or("?");
            tracing::warn!(table, trigger = %silenced.trigger, parent, "migrate: a trigger of the gateway's is not as migrate made it, and is a clone of the trigger of its name on {parent} (Console made the table its partition): only that trigger changes it, so it was not made again; drop that trigger, or detach the table, and run `rbac-gateway migrate` again");
            continue;
        };
        let step = format!("SAVEPOINT remake; {statements} RELEASE SAVEPOINT remake");
        match sqlx::Executor::execute(&mut *conn, sqlx::raw_sql(&step)).await {
            Ok(_) => made.push(silenced.trigger),
            Err(e) if matches!(e, sqlx::Error::Database(_)) && !lock_timeout(&e) => {
                sqlx::Executor::execute(&mut *conn, sqlx::raw_sql("ROLLBACK TO SAVEPOINT remake"))
                    .await?;
                tracing::warn!(table, trigger = %silenced.trigger, error = %e, "migrate: a trigger of the gateway's does not fire as migrate made it, and was not made again: the error says why (the migrating role must act as the table's owner; a trigger of Console's under its name on a partition must go first); `rbac-gateway check --database-url` names it until it is made");
            }
            Err(e) => return Err(e),
        }
    }
    sqlx::Executor::execute(&mut *conn, sqlx::raw_sql("COMMIT")).await?;
    Ok(made)
}

/// The sessions of this database holding a lock on `table` (of the gateway's schema) or one of
/// its partitions (`pg_inherits`, followed down without a lock: locking the table locks each),
/// each as `pid N (user U, application A, in a transaction since T)`, and a prepared
/// transaction as such. From `pg_locks`, which any role reads: the migrating role, not a
/// superuser, sees another login's `pg_stat_activity` row without its times (then `?`), but its
/// pid, user and application.
async fn lock_holders(
    conn: &mut sqlx::PgConnection,
    table: &str,
) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT CASE WHEN l.pid IS NULL THEN pg_catalog.format('a prepared transaction (%s)', l.virtualtransaction) \
           ELSE pg_catalog.format('pid %s (user %s, application %s, in a transaction since %s)', l.pid, \
                coalesce(a.usename::text, '?'), coalesce(NULLIF(a.application_name, ''), '?'), \
                coalesce(pg_catalog.to_char(a.xact_start AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS UTC'), '?')) END \
           FROM pg_catalog.pg_locks l LEFT JOIN pg_catalog.pg_stat_activity a ON a.pid OPERATOR(pg_catalog.=) l.pid \
          WHERE l.granted AND l.locktype OPERATOR(pg_catalog.=) 'relation' \
            AND l.database OPERATOR(pg_catalog.=) (SELECT d.oid FROM pg_catalog.pg_database d \
                 WHERE d.datname OPERATOR(pg_catalog.=) pg_catalog.current_database()) \
            AND l.relation OPERATOR(pg_catalog.=) ANY (ARRAY(WITH RECURSIVE p(oid) AS ( \
                   SELECT pg_catalog.to_regclass(pg_catalog.quote_ident($1))::oid \
                   UNION SELECT i.inhrelid FROM pg_catalog.pg_inherits i JOIN p ON i.inhparent OPERATOR(pg_catalog.=) p.oid) \
                 SELECT p.oid FROM p)) \
            AND coalesce(l.pid, 0) OPERATOR(pg_catalog.<>) pg_catalog.pg_backend_pid() \
          ORDER BY l.pid",
    )
    .persistent(false)
    .bind(table)
    .fetch_all(&mut *conn)
    .await
}
