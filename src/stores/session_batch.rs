//! Cold session lookups, several in one statement (issue 51).
//!
//! A statement's fixed cost (its transaction, the round trip, behind a pooler the simple query's
//! parse and analysis and the pooler's own work) is most of a cold lookup's: pgbench on one
//! database, PostgreSQL's CPU per lookup, a simple query alone about 170 µs and PgBouncer's own
//! about 22 µs, the prepared join 125-139 µs; eight in one simple query about 95-111 µs and 5 µs
//! each (docs/performance-log.md, 2026-11-27).
//!
//! So the lookups that arrive while others are in flight wait together and go as one statement,
//! through [`Db::lookup`] (one round trip), a call of `rbac_gateway_session_principals` over the
//! array of their hashes (migration 0014: the live sessions joined with `rbac_gateway_principal`,
//! the reference lookup over an array), [`BATCH_SQL`]: on the gateway's own sessions a
//! named statement, behind a pooler one simple query with the hashes written in, bounded by its
//! `SET LOCAL statement_timeout` as a whole. The join has one owner, the function: its plan is kept
//! by the server connection and made once there (migration 0015: generic; the plan cache otherwise
//! could make a custom plan on every call, 70-93 µs each at four hashes), so the server's work per
//! session is the same in both modes, and only the outer statement, one function scan, differs
//! (bound once and kept when named; parsed and planned on each call as a simple query). A lookup
//! that arrives while no statement runs goes at once, alone: batching adds no wait to a quiet
//! gateway.
//!
//! Architecture Invariant: a waiting lookup gets the row of its own hash or none. The statement
//! answers each row with the hash it was found for, and rows are matched by that hash, never by
//! their position (`tests/api/pooler.rs` holds it under concurrent cold requests).
//!
//! Bounds: one statement at once (`send_batches`; one connection of the pool: the rest stays
//! for the audit writer, ticket checks and the reader API; until 2026-11-27 the bound was meant
//! to be a quarter of the pool but was computed from the connections open when the first cold
//! lookup came, so it was one in practice, and every measurement before then ran with one), at
//! most [`MAX_BATCH`] hashes in each (`tests/api/round_trips.rs` holds that no two overlap on the
//! wire); a lookup whose requester gave up before it was sent is not sent;
//! each requester bounds its own wait (`--db-timeout-ms`, [`super::db::within`]), and a statement
//! that fails answers every lookup in it with the error (503, fail closed).

use std::collections::{hash_map::Entry, HashMap};
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use super::db::Db;
use super::lookup::{Lookup, Value};
use crate::runtime::metrics::Metrics;

/// The most hashes one statement carries (about 70 bytes of SQL text each).
pub const MAX_BATCH: usize = 64;

/// The cold lookup of an array of hashes (`$1`, each a SHA-256 hex digest): a row per hash that
/// has a live session (not revoked, not expired), its columns those of [`Found`] and then the
/// hash (column 6).
pub const BATCH_SQL: &str = "SELECT admin_id, seconds_left, roles, permissions, \
     break_glass_seconds, break_glass_until, token_sha256 \
     FROM rbac_gateway_session_principals($1, $2)";

/// A live session and its admin's principal, as the cold lookup answers it (the named
/// statement and the simple query alike: `admin_id, seconds_left, roles, permissions,
/// break_glass_seconds, break_glass_until` from column 0).
#[derive(Debug, Clone, PartialEq)]
pub struct Found {
    pub admin_id: String,
    /// Seconds until the session expires.
    pub seconds_left: f64,
    pub roles: Vec<String>,
    pub permissions: Vec<String>,
    /// Seconds left of the admin's live break-glass session, if any.
    pub break_glass_seconds: Option<f64>,
    pub break_glass_until: Option<chrono::DateTime<chrono::Utc>>,
}

impl Found {
    /// The session and principal of a row (a live session's: both forms answer no row for a
    /// hash without one, so a NULL admin id is a decoding error, never "no session").
    fn from_row(row: &sqlx::postgres::PgRow) -> Result<Found, sqlx::Error> {
        use sqlx::Row;
        Ok(Found {
            admin_id: row.try_get(0)?,
            seconds_left: row.try_get(1)?,
            roles: row.try_get(2)?,
            permissions: row.try_get(3)?,
            break_glass_seconds: row.try_get(4)?,
            break_glass_until: row.try_get(5)?,
        })
    }
}

/// What a waiting lookup is told: its session, none, or why the statement failed.
pub type Answer = Result<Option<Found>, Arc<sqlx::Error>>;

/// A lookup waiting for its statement.
struct Waiting {
    hash: String,
    reply: oneshot::Sender<Answer>,
}

/// The queue of cold lookups and the task that sends them (started by [`Batches::start`]; it
/// ends when the `Batches` is dropped).
pub struct Batches {
    queue: mpsc::UnboundedSender<Waiting>,
}

impl Batches {
    /// Starts the sending task on `runtime` (the identity's: in `serve` the background runtime,
    /// which lives as long as the process, so a worker that stops first while the others drain
    /// takes no statement with it), or on the current one.
    pub fn start(
        runtime: Option<&tokio::runtime::Handle>,
        db: Db,
        requires_alert: bool,
        metrics: Arc<Metrics>,
    ) -> Batches {
        let (queue, waiting) = mpsc::unbounded_channel();
        let runtime = runtime
            .cloned()
            .unwrap_or_else(tokio::runtime::Handle::current);
        drop(runtime.spawn(send_batches(db, requires_alert, metrics, waiting)));
        Batches { queue }
    }

    /// The session behind `hash`, answered by the next statement that carries it. Unbounded here:
    /// the caller bounds the wait.
    pub async fn lookup(&self, hash: &str) -> Answer {
        let (reply, answer) = oneshot::channel();
        let gone = || {
            Arc::new(sqlx::Error::Protocol(
                "the cold lookup's statement ended without an answer (the gateway is stopping)"
                    .into(),
            ))
        };
        self.queue
            .send(Waiting {
                hash: hash.to_string(),
                reply,
            })
            .map_err(|_| gone())?;
        answer.await.unwrap_or_else(|_| Err(gone()))
    }
}

/// Takes every lookup waiting (up to [`MAX_BATCH`]), sends them as one statement and answers
/// them, then the next: one statement of cold lookups at a time. The lookups that arrive
/// meanwhile wait and go together in the next, so a statement carries as many as the load brings
/// (about 14 at 32 connections on the benchmark's machine). More at once meant smaller
/// statements, and each costs PostgreSQL about 280 µs beyond its sessions' own work: with two or
/// three in flight, PostgreSQL's CPU per cold request rose from 92-97 µs to 113-120 and 127-139 µs
/// and direct cold throughput fell from 8,231-8,525 to 7,195-7,460 and 6,448-7,090 requests/s
/// (docs/performance-log.md, 2026-11-27, "one statement of cold lookups in flight"); two in flight
/// behind a pooler only gave no more throughput for 8-28% more CPU per request (its later entry).
async fn send_batches(
    db: Db,
    requires_alert: bool,
    metrics: Arc<Metrics>,
    mut waiting: mpsc::UnboundedReceiver<Waiting>,
) {
    while let Some(first) = waiting.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match waiting.try_recv() {
                Ok(w) => batch.push(w),
                Err(_) => break,
            }
        }
        // A requester that gave up (its request ended, or its wait timed out) is not asked for.
        batch.retain(|w| !w.reply.is_closed());
        if !batch.is_empty() {
            answer(&db, requires_alert, &metrics, batch).await;
        }
    }
}

/// Sends one statement for `batch` and answers each lookup in it.
async fn answer(db: &Db, requires_alert: bool, metrics: &Metrics, batch: Vec<Waiting>) {
    let hashes: Vec<&str> = batch.iter().map(|w| w.hash.as_str()).collect();
    // A dead pooled connection (after a connection storm) costs one retry, not a 503.
    let rows = super::db::retry_once(|| async {
        metrics.db_queries.inc();
        db.lookup(Lookup {
            sql: BATCH_SQL,
            values: &[Value::Texts(&hashes), Value::Boolean(requires_alert)],
        })
        .await
        .inspect_err(|_| {
            metrics.db_errors.inc();
        })
    })
    .await;
    match rows.and_then(|rows| by_hash(&rows)) {
        Ok(found) => {
            for w in batch {
                let answer = found.get(w.hash.as_str()).cloned();
                // Err: the requester gave up meanwhile; nothing waits for this answer.
                let _ = w.reply.send(Ok(answer));
            }
        }
        Err(e) => {
            let e = Arc::new(e);
            for w in batch {
                // Err: the requester gave up meanwhile; nothing waits for this answer.
                let _ = w.reply.send(Err(e.clone()));
            }
        }
    }
}

/// The statement's rows by the hash each answers for (column 6); the first row of a hash counts,
/// as the single lookup's does.
fn by_hash(rows: &[sqlx::postgres::PgRow]) -> Result<HashMap<String, Found>, sqlx::Error> {
    use sqlx::Row;
    let mut found = HashMap::with_capacity(rows.len());
    for row in rows {
        let hash: String = row.try_get(6)?;
        if let Entry::Vacant(e) = found.entry(hash) {
            e.insert(Found::from_row(row)?);
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Behind a pooler the batch is one simple query with each hash written once, in order.
    #[test]
    fn the_batch_writes_each_hash_once_in_order() {
        let a = "a".repeat(64);
        let b = "b".repeat(64);
        let hashes = [a.as_str(), b.as_str()];
        let lookup = Lookup {
            sql: BATCH_SQL,
            values: &[Value::Texts(&hashes), Value::Boolean(true)],
        };
        assert_eq!(
            lookup.render().unwrap(),
            format!(
                "SELECT admin_id, seconds_left, roles, permissions, break_glass_seconds, \
                 break_glass_until, token_sha256 FROM \
                 rbac_gateway_session_principals(ARRAY[E'{a}',E'{b}']::text[], true)"
            )
        );
    }
}
