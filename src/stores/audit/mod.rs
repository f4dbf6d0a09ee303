//! The durable writer of `access_audit_events` (I-2: a row on every 403).
//!
//! One writer task groups rows (group commit): it takes every row queued while its previous
//! write was in flight, up to [`MAX_BATCH`], and writes them with one INSERT (all or nothing) on
//! the one connection it keeps. Each caller of [`AuditWriter::record`] waits until its row is
//! durable: committed in PostgreSQL, or, while PostgreSQL does not answer, appended to a local
//! spool file and fsynced (once per batch). The spool is replayed into PostgreSQL when it answers
//! again, and at start-up, so it survives a crash; the row id is the primary key and the replay's
//! INSERT says `ON CONFLICT (id) DO NOTHING`, so a replay interrupted half-way, or of rows whose
//! INSERT committed after it had timed out, stores each row exactly once. When the spool is full,
//! `record` fails and the caller answers 503 instead of denying without a record.
//!
//! A row records a decision not to forward, whatever the client was answered: a 403 is sent only
//! once its row is durable, and a denial answered 503 (its row not durable in time: no durable
//! spool, or a full or unwritable one) still gets its row. Such rows are kept in memory (at most
//! [`LATE_MAX`]) and written when the database answers again, with `ON CONFLICT (id) DO NOTHING`,
//! since the INSERT that timed out may itself commit once a frozen server resumes: no client can
//! stop a statement already sent, so "a 503 never has a row" could not be held, and this is the
//! rule that can (docs/design/durability.md, "A denial answered 503"). Rows still in memory when
//! the gateway stops are written to its log in full, never dropped silently.
//!
//! Allowed traffic never waits for this writer, and the writer holds one database connection
//! (the replay one more while it runs), so a flood of denials cannot starve the session and role
//! lookups. The row is the decision's [`AuditEvent`] (`policy/audit_event.rs`), stored here.
//!
//! Three parts, over one shared state (`Inner`, here): `writer.rs`, the writer (the database
//! on the kept connection, the rows of denials answered 503 waiting in memory), `writing.rs`,
//! its task (group commit: the rows queued behind the first as one batch; run by the data
//! plane's first worker while it serves, then by the background runtime), and `spool.rs`, the
//! spool (append, replay, the file of rows set aside). The INSERT both send, and
//! the rows read back for `explain --request-id` and the cockpit, are here.

mod spool;
mod writer;
mod writing;

pub use writer::AuditWriter;
pub use writing::Writing;

use std::borrow::Borrow;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::stores::db::Db;
use crate::stores::lookup::Value;
use crate::stores::sql_text::{self, Unquotable};
use tokio::sync::Mutex;

use crate::policy::audit_event::AuditEvent;
use crate::runtime::metrics::Metrics;

#[derive(Debug, Clone, thiserror::Error)]
pub enum AuditError {
    #[error("audit spool is full ({0} bytes): refusing to deny without a record")]
    SpoolFull(u64),
    #[error("audit spool cannot be written: {0}")]
    SpoolIo(String),
    #[error("audit writer stopped")]
    Stopped,
    /// A replay holds the spool (this gateway's or one sharing the file), and the append was
    /// asked not to wait for it.
    #[error("the audit spool is being replayed")]
    SpoolBusy,
    #[error("the database did not take the row ({0}) and there is no durable spool (--audit-spool-durable=false): refusing to deny without a record")]
    NotSpooled(String),
}

/// Most rows per INSERT.
pub const MAX_BATCH: usize = 512;
/// Most rows of denials answered 503 kept in memory for the database; past it, a row is written
/// to the log in full and counted as `lost`.
pub const LATE_MAX: usize = 65_536;
/// Most bytes (of their JSON, about) of the rows of [`LATE_MAX`]: a path or a user agent may be
/// as long as `--max-header-bytes`.
pub const LATE_MAX_BYTES: usize = 32 * 1024 * 1024;

/// The columns the gateway writes (Console's table may hold more), as a literal for `concat!`.
macro_rules! columns {
    () => {
        "id, event_type, admin_id, method, path, route, required, reason, request_id, \
         client_ip, user_agent, created_at_utc, mapping_version, occurrences"
    };
}

/// The columns the gateway writes (Console's table may hold more).
const COLUMNS: &str = columns!();

/// The INSERT of fresh rows (not a replay) on the gateway's own sessions: one named statement,
/// prepared once per connection ([`Db::named_on`], the verdict of [`Db::lookup`]), each column
/// bound as one array ([`Columns`]) and the rows made by `unnest`: no value written into SQL
/// text, and PostgreSQL neither parses nor plans it per batch (39% less of its CPU a batch of 12
/// than [`insert_sql`]'s text, docs/performance-log.md, 2026-11-28, "named arrays"). The
/// `unnest`s stand in the select list, where PostgreSQL (10 and later) runs them in lockstep
/// row by row; in `FROM` (`ROWS FROM`, until 2026-11-28 midday) it first copied each array into
/// a tuplestore of its own: 10-14% more of the statement's time a batch of 6, 19-45% a batch of
/// 30 (docs/performance-log.md, 2026-11-28 midday). It answers no rows (the writer needs no
/// count, and `RETURNING` into a count cost the server a row kept and counted per row). Behind a transaction pooler, and for a replay, [`insert_sql`].
/// A NUL is refused by the server when bound (SQLSTATE 22021), as the JSON statement's was.
const INSERT_ARRAYS_SQL: &str = concat!(
    "INSERT INTO access_audit_events (",
    columns!(),
    ") SELECT pg_catalog.unnest($1::text[]), pg_catalog.unnest($2::text[]), \
    pg_catalog.unnest($3::text[]), pg_catalog.unnest($4::text[]), pg_catalog.unnest($5::text[]), \
    pg_catalog.unnest($6::text[]), pg_catalog.unnest($7::text[]), pg_catalog.unnest($8::text[]), \
    pg_catalog.unnest($9::text[]), pg_catalog.unnest($10::text[]), \
    pg_catalog.unnest($11::text[]), pg_catalog.unnest($12::timestamptz[]), \
    pg_catalog.unnest($13::text[]), pg_catalog.unnest($14::int8[])"
);

/// The columns of a batch of rows, as [`INSERT_ARRAYS_SQL`] binds them (borrowed from the
/// rows: no copy of their text).
struct Columns<'a> {
    texts: [Vec<&'a str>; 6],
    optional: [Vec<Option<&'a str>>; 6],
    created_at_utc: Vec<chrono::DateTime<chrono::Utc>>,
    occurrences: Vec<i64>,
}

impl<'a> Columns<'a> {
    fn of(rows: &'a [impl Borrow<AuditEvent>]) -> Columns<'a> {
        let n = rows.len();
        let mut c = Columns {
            texts: std::array::from_fn(|_| Vec::with_capacity(n)),
            optional: std::array::from_fn(|_| Vec::with_capacity(n)),
            created_at_utc: Vec::with_capacity(n),
            occurrences: Vec::with_capacity(n),
        };
        for row in rows {
            let r: &AuditEvent = row.borrow();
            let texts = [
                &r.id,
                &r.event_type,
                &r.method,
                &r.path,
                &r.reason,
                &r.request_id,
            ];
            for (column, value) in c.texts.iter_mut().zip(texts) {
                column.push(value.as_str());
            }
            let optional = [
                &r.admin_id,
                &r.route,
                &r.required,
                &r.client_ip,
                &r.user_agent,
                &r.mapping_version,
            ];
            for (column, value) in c.optional.iter_mut().zip(optional) {
                column.push(value.as_deref());
            }
            c.created_at_utc.push(r.created_at_utc);
            c.occurrences.push(r.occurrences);
        }
        c
    }

    /// The values of `$1`..`$14`, in [`COLUMNS`]' order.
    fn values(&self) -> [Value<'_>; 14] {
        let [id, event_type, method, path, reason, request_id] = &self.texts;
        let [admin_id, route, required, client_ip, user_agent, mapping_version] = &self.optional;
        [
            Value::Texts(id),
            Value::Texts(event_type),
            Value::NullableTexts(admin_id),
            Value::Texts(method),
            Value::Texts(path),
            Value::NullableTexts(route),
            Value::NullableTexts(required),
            Value::Texts(reason),
            Value::Texts(request_id),
            Value::NullableTexts(client_ip),
            Value::NullableTexts(user_agent),
            Value::Timestamps(&self.created_at_utc),
            Value::NullableTexts(mapping_version),
            Value::BigInts(&self.occurrences),
        ]
    }
}

/// The INSERT of `rows` as one statement of SQL text, sent in one round trip
/// (`Db::one_round_trip`) behind a transaction pooler, and for a replay or late rows in every
/// mode (fresh rows on the gateway's own sessions go as [`INSERT_ARRAYS_SQL`]): a `VALUES` list,
/// each value written in as a constant (`sql_text`: text as escape strings, copied in runs
/// between the quotes and backslashes it doubles), whose untyped literals take their columns'
/// types; it answers how many rows it inserted. `replay`: some rows may be stored already (a
/// replay cut short, a write that timed out after its commit): each row once,
/// `ON CONFLICT (id) DO NOTHING`; fresh rows: an id already stored is an error (the batch is
/// spooled, and the replay sorts it out).
///
/// A character PostgreSQL's text cannot hold (NUL) cannot be written into SQL text: a batch with
/// one goes as one JSON array instead ([`insert_json_sql`], the statement of every batch until
/// 2026-11-28), where JSON escapes it and the server refuses it with SQLSTATE class 22, as a
/// bound value was: the row is set aside, never written into the statement raw.
fn insert_sql(rows: &[impl Borrow<AuditEvent>], replay: bool) -> Result<String, Unquotable> {
    match insert_values_sql(rows, replay) {
        Err(Unquotable::Nul) => insert_json_sql(rows, replay),
        sql => sql,
    }
}

/// [`insert_sql`] as a `VALUES` list (no value holds a NUL).
fn insert_values_sql(rows: &[impl Borrow<AuditEvent>], replay: bool) -> Result<String, Unquotable> {
    use std::fmt::Write;
    let mut sql = String::with_capacity(256 + rows.len() * 320);
    sql.push_str("WITH ins AS (INSERT INTO access_audit_events (");
    sql.push_str(COLUMNS);
    sql.push_str(") VALUES ");
    for (i, row) in rows.iter().enumerate() {
        let r: &AuditEvent = row.borrow();
        sql.push_str(if i == 0 { "(" } else { ",(" });
        for text in [&r.id, &r.event_type] {
            sql_text::push_text(&mut sql, text)?;
            sql.push(',');
        }
        push_opt(&mut sql, r.admin_id.as_deref())?;
        for text in [&r.method, &r.path] {
            sql_text::push_text(&mut sql, text)?;
            sql.push(',');
        }
        push_opt(&mut sql, r.route.as_deref())?;
        push_opt(&mut sql, r.required.as_deref())?;
        for text in [&r.reason, &r.request_id] {
            sql_text::push_text(&mut sql, text)?;
            sql.push(',');
        }
        push_opt(&mut sql, r.client_ip.as_deref())?;
        push_opt(&mut sql, r.user_agent.as_deref())?;
        sql_text::push_timestamp(&mut sql, &r.created_at_utc);
        sql.push(',');
        push_opt(&mut sql, r.mapping_version.as_deref())?;
        match r.occurrences {
            1 => sql.push_str("1)"),
            n => {
                // Writing into a String cannot fail.
                let _ = write!(sql, "({n}))");
            }
        }
    }
    if replay {
        sql.push_str(" ON CONFLICT (id) DO NOTHING");
    }
    sql.push_str(" RETURNING 1) SELECT pg_catalog.count(*) FROM ins");
    Ok(sql)
}

/// Appends `NULL` or `s` as an escape string constant, then a comma.
fn push_opt(sql: &mut String, s: Option<&str>) -> Result<(), Unquotable> {
    match s {
        None => sql.push_str("NULL"),
        Some(s) => sql_text::push_text(sql, s)?,
    }
    sql.push(',');
    Ok(())
}

/// [`insert_sql`] for a batch with a NUL: the rows go as one JSON array, the only value written
/// in, expanded by the server with `json_populate_recordset`.
fn insert_json_sql(rows: &[impl Borrow<AuditEvent>], replay: bool) -> Result<String, Unquotable> {
    let rows: Vec<&AuditEvent> = rows.iter().map(Borrow::borrow).collect();
    let json = serde_json::to_string(&rows).expect("audit events serialize");
    Ok(format!(
        "WITH ins AS (INSERT INTO access_audit_events ({COLUMNS}) \
         SELECT {COLUMNS} FROM pg_catalog.json_populate_recordset(NULL::access_audit_events, {}::json){} \
         RETURNING 1) SELECT pg_catalog.count(*) FROM ins",
        sql_text::text(&json)?,
        if replay {
            " ON CONFLICT (id) DO NOTHING"
        } else {
            ""
        }
    ))
}

/// The rows a statement of [`insert_sql`] inserted.
fn inserted(rows: &[sqlx::postgres::PgRow]) -> Result<u64, sqlx::Error> {
    let n: i64 = match rows.last() {
        Some(row) => sqlx::Row::try_get(row, 0)?,
        None => return Err(sqlx::Error::RowNotFound),
    };
    Ok(u64::try_from(n).unwrap_or(0))
}

/// The state the writer task, the spool and [`AuditWriter`] share.
struct Inner {
    pool: Db,
    spool: PathBuf,
    /// A spool is kept (`--audit-spool-durable`, the default). false: rows go to the database
    /// or fail, and `spool` is never opened.
    durable: bool,
    max_spool: u64,
    /// Serializes spool appends with replay-and-truncate.
    lock: Mutex<()>,
    /// The writer's connection between batches.
    held: Mutex<Option<writer::Held>>,
    metrics: Arc<Metrics>,
    timeout: Duration,
    /// Rows may wait in the spool (set by an append; cleared when the spool is found empty or
    /// replayed), so most batches skip a file-system round trip.
    spooled: std::sync::atomic::AtomicBool,
    /// This process's replay holds the spool and has stored a chunk of it: the database answers,
    /// so a new row goes there instead of waiting for the rest of the replay. Not while a replay
    /// that has stored nothing yet holds it (in an outage, each attempt holds the spool up to
    /// --db-timeout-ms and fails: a row that tried the database too would wait twice as long).
    replay_progressing: std::sync::atomic::AtomicBool,
    /// Why the last append to the spool failed (cleared by one that succeeds): shown by
    /// `/readyz`, since denials get 503 while the database is down too.
    append_problem: std::sync::Mutex<Option<String>>,
    /// A spool replayed that could not be emptied (a read-only volume, a file this process may
    /// not write): its length and modification time, so it is not replayed again until it
    /// changes, and why, for `/readyz`.
    stuck: std::sync::Mutex<Option<(u64, std::time::SystemTime, String)>>,
    /// Why the database last refused rows it answered for (no permission to insert, a changed
    /// table): cleared when it takes rows again. Such rows wait in the spool, which may fill.
    refused: std::sync::Mutex<Option<String>>,
    /// Rows of denials answered 503, oldest first, until the database takes them.
    late: std::sync::Mutex<writer::Late>,
    /// Since when another process has held the spool, as this one found it.
    peer: spool::PeerHold,
}

impl Inner {
    /// Inserts rows on a connection of the pool in one round trip, within the timeout (at
    /// least a second: a replay of many rows); how many it inserted.
    async fn insert_pooled(
        &self,
        rows: &[impl Borrow<AuditEvent>],
        replay: bool,
    ) -> Result<u64, sqlx::Error> {
        let sql = insert_sql(rows, replay)?;
        let rows = self.pool.one_round_trip(&sql).await?;
        inserted(&rows)
    }

    /// Counts a failed database write and, when the database answered it (not a lost or
    /// silent connection), notes why for `/readyz`.
    fn failed(&self, e: sqlx::Error) -> sqlx::Error {
        self.metrics.db_errors.inc();
        if !crate::stores::db::note_error(&e) && refused(&e) {
            *lock(&self.refused) = Some(e.to_string());
        }
        e
    }
}

/// The database answered and refused the statement (as opposed to a lost connection or a
/// timeout: those are retried).
fn refused(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(d) => {
            !crate::stores::db::is_connection_error(e) && d.code().as_deref() != Some("57014")
        }
        _ => false,
    }
}

/// The database refused a row for what it holds (SQLSTATE class 22, data exception, or 23,
/// integrity constraint violation), not the statement for what it is.
fn row_refused(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(d) => d
            .code()
            .is_some_and(|c| c.starts_with("22") || c.starts_with("23")),
        _ => false,
    }
}

/// A mutex that a panic elsewhere did not make unusable (what it guards is a plain value).
fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// One stored audit row, as `explain --request-id` and the cockpit's denials read it.
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize)]
pub struct StoredRow {
    pub event_type: String,
    pub admin_id: Option<String>,
    pub method: String,
    pub path: String,
    pub route: Option<String>,
    pub reason: String,
    pub request_id: String,
    pub mapping_version: Option<String>,
    pub created_at_utc: chrono::DateTime<chrono::Utc>,
}

const STORED_ROW: &str = "SELECT event_type, admin_id, method, path, route, reason, request_id, \
     mapping_version, created_at_utc FROM access_audit_events";

/// Every row of one request (a denial, or a shadow denial and its drift), oldest first.
pub async fn rows_of_request(db: &Db, request_id: &str) -> Result<Vec<StoredRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "{STORED_ROW} WHERE request_id = $1 ORDER BY created_at_utc, id"
    ))
    .persistent(false)
    .bind(request_id)
    .fetch_all(db)
    .await
}

/// Which rows [`recent`] lists, besides their event type.
#[derive(Clone, Copy, Debug, Default)]
pub struct RowFilter<'a> {
    /// None: any route; `Some(None)`: rows with no route (`no_route`); `Some(Some(r))`: rule `r`.
    pub route: Option<Option<&'a str>>,
    /// None: any reason.
    pub reason: Option<&'a str>,
}

/// The newest `limit` rows of `event_type` that `filter` keeps, newest first (filtered by the
/// statement, then limited: a rule's rows are found however many newer rows other rules left).
pub async fn recent(
    db: &Db,
    event_type: &str,
    filter: RowFilter<'_>,
    limit: i64,
) -> Result<Vec<StoredRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "{STORED_ROW} WHERE event_type = $1 \
         AND (NOT $2 OR route IS NOT DISTINCT FROM $3) \
         AND ($4::text IS NULL OR reason = $4) \
         ORDER BY created_at_utc DESC, id LIMIT $5"
    ))
    .persistent(false)
    .bind(event_type)
    .bind(filter.route.is_some())
    .bind(filter.route.flatten())
    .bind(filter.reason)
    .bind(limit)
    .fetch_all(db)
    .await
}

/// Rows of `event_type` in the last `seconds`, counted per route and reason (most first), with
/// the newest row's time.
pub async fn counts(
    db: &Db,
    event_type: &str,
    seconds: i64,
) -> Result<Vec<(Option<String>, String, i64, chrono::DateTime<chrono::Utc>)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT route, reason, pg_catalog.sum(occurrences)::int8, pg_catalog.max(created_at_utc) FROM access_audit_events \
         WHERE event_type = $1 AND created_at_utc > pg_catalog.now() - pg_catalog.make_interval(secs => $2) \
         GROUP BY route, reason ORDER BY 3 DESC, 1, 2",
    )
    .persistent(false)
    .bind(event_type)
    .bind(seconds as f64)
    .fetch_all(db)
    .await
}

#[cfg(test)]
mod test_support {
    use super::*;
    use chrono::Utc;

    pub(super) fn row(id: &str) -> Arc<AuditEvent> {
        Arc::new(AuditEvent {
            id: id.into(),
            event_type: "access_denied".into(),
            admin_id: None,
            method: "GET".into(),
            path: "/x".into(),
            route: None,
            required: None,
            reason: "no_route".into(),
            request_id: id.into(),
            client_ip: None,
            user_agent: None,
            created_at_utc: Utc::now(),
            mapping_version: None,
            occurrences: 1,
        })
    }

    /// A writer spooling to `spool` in front of a database that refuses at once (nothing
    /// listens on its port): every insert fails (within 200 ms) and is spooled.
    pub(super) fn refused_writer(
        spool: &std::path::Path,
        acquire: Duration,
    ) -> (
        Arc<AuditWriter>,
        impl std::future::Future<Output = ()> + Send + 'static,
    ) {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let pool = Db::connect(
            &format!("postgres://x@127.0.0.1:{port}/x"),
            None,
            8,
            acquire,
        )
        .unwrap();
        let (writer, writing) = AuditWriter::new(
            pool,
            spool.to_path_buf(),
            1 << 20,
            Duration::from_millis(200),
            Arc::new(Metrics::new()),
        );
        (writer, writing.run())
    }
}
