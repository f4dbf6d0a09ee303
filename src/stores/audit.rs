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

use std::borrow::Borrow;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::stores::db::Db;
use crate::stores::sql_text::{self, Unquotable};
use tokio::sync::{mpsc, oneshot, Mutex};

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
/// Rows waiting for the writer before `record` itself waits (backpressure on denials only).
const QUEUE: usize = 16_384;

/// The columns the gateway writes (Console's table may hold more).
const COLUMNS: &str =
    "id, event_type, admin_id, method, path, route, required, reason, request_id, \
                       client_ip, user_agent, created_at_utc, mapping_version";

/// The INSERT of `rows` as one statement of SQL text, sent in one round trip
/// (`Db::one_round_trip`) in every mode, direct or behind a transaction pooler: the rows go as
/// one JSON array, the only value written in (`sql_text`), expanded by the server with
/// `json_populate_recordset`; it answers how many rows it inserted. `replay`: some rows may be
/// stored already (a replay cut short, a write that timed out after its commit): each row once,
/// `ON CONFLICT (id) DO NOTHING`; fresh rows: an id already stored is an error (the batch is
/// spooled, and the replay sorts it out). A character PostgreSQL's text cannot hold (NUL) is
/// escaped by JSON and refused by the server with SQLSTATE class 22, as a bound value was: the
/// row is set aside, never written into the statement raw.
fn insert_sql(rows: &[impl Borrow<AuditEvent>], replay: bool) -> Result<String, Unquotable> {
    let rows: Vec<&AuditEvent> = rows.iter().map(Borrow::borrow).collect();
    let json = serde_json::to_string(&rows).expect("audit events serialize");
    Ok(format!(
        "WITH ins AS (INSERT INTO access_audit_events ({COLUMNS}) \
         SELECT {COLUMNS} FROM json_populate_recordset(NULL::access_audit_events, {}::json){} \
         RETURNING 1) SELECT count(*) FROM ins",
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

/// The writer's connection, kept from one batch to the next. Drawn from the pool for each
/// batch, a connection went back through a task that pings the server first, so the next batch
/// found none idle, the pool opened more, and the batches went round seven backends in turn:
/// a round trip more per batch and every backend's caches cold (docs/performance-log.md, case d).
struct Held {
    /// Always `Some` until dropped.
    conn: Option<crate::stores::db::Conn>,
    used: std::time::Instant,
}

/// A kept connection idle this long goes back to the pool (whose own idle limit is as long)
/// and the next batch draws one the pool has checked.
const HELD_IDLE: Duration = Duration::from_secs(60);

impl Held {
    /// Idle too long, or since before the last connection error anyone saw: presumed dead.
    fn stale(&self) -> bool {
        let idle = self.used.elapsed();
        idle >= HELD_IDLE || crate::stores::pool::idle_since_broken(idle)
    }

    /// Closes the connection without returning it (it may be mid-statement); the pool may open
    /// another in its place.
    fn close(&mut self) {
        if let Some(c) = self.conn.take() {
            c.close();
        }
    }

    fn discard(mut self) {
        self.close();
    }
}

/// A row shared with the caller that waits for it (no copy of its fields per row).
type Job = (Arc<AuditEvent>, oneshot::Sender<Result<(), AuditError>>);

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
    held: Mutex<Option<Held>>,
    metrics: Arc<Metrics>,
    timeout: Duration,
    /// Rows may wait in the spool (set by an append; cleared when the spool is found empty or
    /// replayed), so most batches skip a file-system round trip.
    spooled: std::sync::atomic::AtomicBool,
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
    late: std::sync::Mutex<Late>,
}

/// The rows of denials answered 503 waiting for the database, and the bytes of their JSON.
#[derive(Default)]
struct Late {
    rows: std::collections::VecDeque<Arc<AuditEvent>>,
    bytes: usize,
}

/// What a row kept late counts against [`LATE_MAX_BYTES`]: about its JSON's length.
fn late_size(row: &AuditEvent) -> usize {
    let opt = |s: &Option<String>| s.as_ref().map_or(0, String::len);
    256 + row.id.len()
        + row.path.len()
        + row.request_id.len()
        + row.reason.len()
        + opt(&row.admin_id)
        + opt(&row.route)
        + opt(&row.required)
        + opt(&row.client_ip)
        + opt(&row.user_agent)
        + opt(&row.mapping_version)
}

impl Drop for Inner {
    fn drop(&mut self) {
        let late = std::mem::take(&mut lock(&self.late).rows);
        for row in late {
            tracing::error!(row = %serde_json::to_string(&*row).unwrap_or_default(), request_id = %row.request_id,
                "audit row of a denial answered 503 not stored: the gateway stopped before the database answered");
        }
    }
}

pub struct AuditWriter {
    tx: mpsc::Sender<Job>,
    inner: Arc<Inner>,
}

impl AuditWriter {
    /// Starts the writer task on the current runtime.
    pub fn start(
        pool: Db,
        spool: impl Into<Option<PathBuf>>,
        max_spool: u64,
        timeout: Duration,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        let (writer, task) = Self::new(pool, spool, max_spool, timeout, metrics);
        tokio::spawn(task);
        writer
    }

    /// The writer and the task that writes for it (the caller runs the task, e.g. supervised).
    /// `spool`: None where no file outlives the process (a Heroku dyno): a row the database
    /// does not take within `timeout` fails, and the caller answers 503.
    pub fn new(
        pool: Db,
        spool: impl Into<Option<PathBuf>>,
        max_spool: u64,
        timeout: Duration,
        metrics: Arc<Metrics>,
    ) -> (
        Arc<Self>,
        impl std::future::Future<Output = ()> + Send + 'static,
    ) {
        let spool = spool.into();
        let inner = Arc::new(Inner {
            pool,
            durable: spool.is_some(),
            spool: spool.unwrap_or_default(),
            max_spool,
            lock: Mutex::new(()),
            held: Mutex::new(None),
            metrics,
            timeout,
            spooled: std::sync::atomic::AtomicBool::new(true),
            append_problem: Default::default(),
            stuck: Default::default(),
            refused: Default::default(),
            late: Default::default(),
        });
        let (tx, rx) = mpsc::channel(QUEUE);
        let task = write_loop(inner.clone(), rx);
        (Arc::new(AuditWriter { tx, inner }), task)
    }

    /// Returns once the row is durable (database or spool).
    pub async fn record(&self, event: Arc<AuditEvent>) -> Result<(), AuditError> {
        let (done, wait) = oneshot::channel();
        self.inner.metrics.audit_queue_depth.inc();
        if self.tx.send((event, done)).await.is_err() {
            self.inner.metrics.audit_queue_depth.dec();
            return Err(AuditError::Stopped);
        }
        wait.await.unwrap_or(Err(AuditError::Stopped))
    }

    /// Moves every spooled row into PostgreSQL, then empties the spool. Returns rows replayed.
    pub async fn replay(&self) -> Result<usize, sqlx::Error> {
        self.inner.replay().await
    }

    /// What is wrong with the spool, for `/readyz`: appends that fail, or a spool that cannot
    /// be emptied after its rows were replayed.
    pub fn spool_problems(&self) -> Vec<String> {
        let path = self.inner.spool.display();
        let mut out = Vec::new();
        let late = lock(&self.inner.late).rows.len();
        if late > 0 {
            out.push(format!(
                "{late} audit row(s) of denials answered 503 wait in memory for the database (written when it answers; logged in full if the gateway stops first)"
            ));
        }
        if !self.inner.durable {
            return out;
        }
        if let Some(why) = lock(&self.inner.append_problem).clone() {
            out.push(format!(
                "audit spool {path} cannot be written ({why}): denials get 503 while the database is down"
            ));
        }
        if let Some((len, _, why)) = lock(&self.inner.stuck).clone() {
            out.push(format!(
                "audit spool {path} cannot be emptied ({why}): its rows ({len} bytes) are in the database; remove the file or make it writable"
            ));
        }
        if let Some(why) = lock(&self.inner.refused).clone() {
            out.push(format!(
                "the database refuses audit rows ({why}): they wait in the audit spool {path}; denials get 503 once it is full"
            ));
        }
        let rejected = self.inner.rejected_path();
        if let Ok(meta) = std::fs::metadata(&rejected) {
            if meta.len() > 0 {
                out.push(format!(
                    "audit rows the database cannot store were set aside in {} ({} bytes): read them, then remove the file",
                    rejected.display(),
                    meta.len()
                ));
            }
        }
        out
    }

    /// At shutdown, after the data plane drained: one last try, within `limit`, to write the
    /// rows of denials answered 503 that still wait in memory (those left are logged in full
    /// when the writer goes).
    pub async fn finish(&self, limit: Duration) {
        if lock(&self.inner.late).rows.is_empty() {
            return;
        }
        if crate::stores::db::within(limit, async {
            self.inner.store_late().await;
            Ok::<_, sqlx::Error>(())
        })
        .await
        .is_err()
        {
            tracing::warn!("the database did not take the kept audit rows before shutdown");
        }
    }

    /// Replays the spool every `every` until the process ends.
    pub async fn replay_forever(self: Arc<Self>, every: Duration) {
        if !self.inner.durable {
            tracing::info!("no durable audit spool (--audit-spool-durable=false): a denial whose row the database does not take in time is answered 503, and its row is written when the database answers");
            loop {
                self.inner.store_late().await;
                tokio::time::sleep(every).await;
            }
        }
        // The spool must be writable before it is needed: found out during an outage, every
        // denial would get 503.
        self.inner.probe_spool().await;
        loop {
            if lock(&self.inner.append_problem).is_some() {
                // Fixed (the volume made writable again, space freed), the next append would
                // say so only during the next outage: until then, /readyz would still warn.
                self.inner.probe_spool().await;
            }
            self.inner.store_late().await;
            // The file, not only this process's mark: a spool may be shared by gateways side
            // by side, and rows another one left there (it ended) are replayed here.
            let len = self.inner.spool_len().await;
            self.inner.metrics.audit_spool_bytes.set(len as i64);
            if len == 0 {
                *lock(&self.inner.stuck) = None;
            } else {
                match self.replay().await {
                    Ok(n) if n > 0 => {
                        tracing::info!(rows = n, "replayed spooled audit rows into the database")
                    }
                    Ok(_) => {}
                    // Database errors were counted where they happened (`failed`); the
                    // spool's own I/O errors are not the database's.
                    Err(e) => tracing::warn!(error = %e, "audit spool replay failed; will retry"),
                }
            }
            tokio::time::sleep(every).await;
        }
    }
}

async fn write_loop(inner: Arc<Inner>, rx: mpsc::Receiver<Job>) {
    // Dropped with its runtime when the gateway stops: the rows of the batch being written and
    // those still queued go to the late queue, to be written by `finish` or logged in full.
    let mut w = Unwritten {
        inner,
        rx,
        in_flight: Vec::new(),
    };
    while let Some(first) = w.rx.recv().await {
        // Natural group commit: take every row queued while the previous write was in flight,
        // without waiting for more (a fixed gathering delay measured as pure latency on the
        // 403 path: d/c 0.48 with a 2 ms wait).
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match w.rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let (rows, waiters): (Vec<Arc<AuditEvent>>, Vec<_>) = batch.into_iter().unzip();
        w.inner.metrics.audit_queue_depth.sub(rows.len() as i64);
        w.in_flight.clone_from(&rows);
        let result = w.inner.write(&rows).await;
        w.in_flight.clear();
        if result.is_err() {
            w.inner.keep_late(&rows);
        }
        w.inner.metrics.audit_batches.inc();
        for waiter in waiters {
            // Err: that caller stopped waiting (its client hung up); the row is durable, or
            // failed, either way.
            let _ = waiter.send(result.clone());
        }
    }
}

/// The writer task's state, so that rows it had not written when it was dropped are kept.
struct Unwritten {
    inner: Arc<Inner>,
    rx: mpsc::Receiver<Job>,
    /// The batch being written (it may have committed: kept rows are written `ON CONFLICT DO
    /// NOTHING`).
    in_flight: Vec<Arc<AuditEvent>>,
}

impl Drop for Unwritten {
    fn drop(&mut self) {
        let mut rows = std::mem::take(&mut self.in_flight);
        while let Ok((row, _)) = self.rx.try_recv() {
            rows.push(row);
        }
        if !rows.is_empty() {
            self.inner.keep_late(&rows);
        }
    }
}

impl Inner {
    async fn spool_len(&self) -> u64 {
        tokio::fs::metadata(&self.spool)
            .await
            .map(|m| m.len())
            .unwrap_or(0)
    }

    /// Keeps the rows of a batch answered 503 for [`Inner::store_late`], up to [`LATE_MAX`] rows
    /// and [`LATE_MAX_BYTES`] of their JSON.
    fn keep_late(&self, rows: &[Arc<AuditEvent>]) {
        let mut late = lock(&self.late);
        let mut kept = 0;
        let mut lost = Vec::new();
        for row in rows {
            let size = late_size(row);
            if late.rows.len() < LATE_MAX && late.bytes + size <= LATE_MAX_BYTES {
                late.bytes += size;
                late.rows.push_back(row.clone());
                kept += 1;
            } else {
                lost.push(row.request_id.as_str());
            }
        }
        drop(late);
        if kept > 0 {
            tracing::warn!(rows = kept, "audit rows of denials answered 503 kept in memory: written when the database answers");
        }
        if !lost.is_empty() {
            self.metrics
                .audit_rows
                .with_label_values(&["lost"])
                .inc_by(lost.len() as u64);
            // One line a batch, naming the requests: never a line of 32 KiB per row.
            tracing::error!(rows = lost.len(), request_ids = %lost.join(","),
                "audit rows of denials answered 503 not kept: {LATE_MAX} rows or {LATE_MAX_BYTES} bytes already wait for the database");
        }
    }

    /// Writes the rows of denials answered 503 that wait in memory, oldest first, a batch at a
    /// time while the database takes them, on a connection of the pool (never the writer's:
    /// a fresh denial does not wait behind this). Each row once: the INSERT that timed out may
    /// have committed after all. A row the database refuses for what it holds (class 22 or 23)
    /// is set aside as the spool's are, not holding the others.
    async fn store_late(&self) {
        loop {
            let rows: Vec<Arc<AuditEvent>> = lock(&self.late)
                .rows
                .iter()
                .take(MAX_BATCH)
                .cloned()
                .collect();
            if rows.is_empty() {
                return;
            }
            match self.insert_pooled(&rows, true).await {
                Ok(_) => {
                    self.late_done(&rows, "late");
                    tracing::info!(
                        rows = rows.len(),
                        "stored the audit rows of denials answered 503"
                    );
                }
                Err(e) if row_refused(&e) => {
                    for row in &rows {
                        let one = std::slice::from_ref(row);
                        match self.insert_pooled(one, true).await {
                            Ok(_) => self.late_done(one, "late"),
                            Err(e) if row_refused(&e) => {
                                let aside = serde_json::json!({"why": e.to_string(), "row": row});
                                if let Err(io) = self.set_aside(std::slice::from_ref(&aside)) {
                                    tracing::error!(error = %io, row = %aside, "cannot set aside an audit row the database refuses");
                                }
                                self.late_done(one, "rejected");
                            }
                            Err(e) => {
                                self.failed(e);
                                return;
                            }
                        }
                    }
                }
                Err(e) => {
                    self.failed(e);
                    return;
                }
            }
        }
    }

    /// The first `rows.len()` rows of the late queue are `rows`, now stored (or set aside):
    /// out of the queue, counted under `sink`.
    fn late_done(&self, rows: &[Arc<AuditEvent>], sink: &str) {
        let mut late = lock(&self.late);
        for row in rows {
            if late.rows.front().is_some_and(|f| Arc::ptr_eq(f, row)) {
                late.rows.pop_front();
                late.bytes = late.bytes.saturating_sub(late_size(row));
            }
        }
        drop(late);
        self.metrics
            .audit_rows
            .with_label_values(&[sink])
            .inc_by(rows.len() as u64);
    }

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

    /// Writes rows to the database within the timeout, on the kept connection.
    async fn to_database(&self, rows: &[Arc<AuditEvent>]) -> Result<(), String> {
        let mut held = self.held.lock().await;
        // A timeout marks the pool stale (`db::within`): the connection may be silent, and
        // the pool's other ones with it.
        let result =
            match crate::stores::db::within(self.timeout, self.insert_held(&mut held, rows, false))
                .await
            {
                Ok(()) => {
                    self.metrics
                        .audit_rows
                        .with_label_values(&["database"])
                        .inc_by(rows.len() as u64);
                    *lock(&self.refused) = None;
                    return Ok(());
                }
                Err(e) => self.failed(e).to_string(),
            };
        // Whatever state the failure left the connection in, the next batch starts afresh.
        if let Some(h) = held.take() {
            h.discard();
        }
        Err(result)
    }

    /// The INSERT on the kept connection (drawn first if there is none or it is stale), and
    /// once more on a fresh one when a kept connection turns out to be broken (the server
    /// restarted while it was idle): rows go to the database, not to the spool. If the first had
    /// committed after all, the second fails on the primary key and the rows are spooled, and
    /// the replay's `ON CONFLICT` stores them once.
    async fn insert_held(
        &self,
        held: &mut Option<Held>,
        rows: &[Arc<AuditEvent>],
        replay: bool,
    ) -> Result<(), sqlx::Error> {
        if held.as_ref().is_some_and(Held::stale) {
            // Back to the pool, which checks it before anyone gets it again.
            *held = None;
        }
        // Not `db::retry_once`: its closure cannot lend the kept connection to both tries, and
        // only a connection kept from before is retried (a fresh one that fails is not).
        let kept = held.is_some();
        let first = self.insert_on(held, rows, replay).await;
        match first {
            Err(e) if kept && crate::stores::db::note_error(&e) => {
                tracing::warn!(error = %e, "audit connection lost; writing the rows on a fresh one");
                if let Some(h) = held.take() {
                    h.discard();
                }
                self.insert_on(held, rows, replay).await
            }
            other => other,
        }
    }

    async fn insert_on(
        &self,
        held: &mut Option<Held>,
        rows: &[Arc<AuditEvent>],
        replay: bool,
    ) -> Result<(), sqlx::Error> {
        let sql = insert_sql(rows, replay)?;
        let h = match held {
            Some(h) => h,
            None => held.insert(Held {
                conn: Some(self.pool.acquire().await?),
                used: std::time::Instant::now(),
            }),
        };
        let conn = h.conn.as_mut().expect("a held connection until dropped");
        let result = crate::stores::db::one_round_trip_on(conn, self.timeout, &sql)
            .await
            .map(|_| conn.done());
        h.used = std::time::Instant::now();
        result
    }

    async fn write(&self, rows: &[Arc<AuditEvent>]) -> Result<(), AuditError> {
        use std::sync::atomic::Ordering;
        if !self.durable {
            return self.to_database(rows).await.map_err(|e| {
                tracing::warn!(error = %e, rows = rows.len(), "audit insert failed and there is no durable spool: answering 503");
                AuditError::NotSpooled(e)
            });
        }
        // While rows wait in the spool (the database is likely still down), new rows join
        // them, without waiting for the database first; replay keeps their order.
        let database_first = !self.spooled.load(Ordering::Acquire) || self.spool_len().await == 0;
        if database_first {
            self.spooled.store(false, Ordering::Release);
            match self.to_database(rows).await {
                Ok(()) => return Ok(()),
                Err(e) => {
                    tracing::warn!(error = %e, rows = rows.len(), "audit insert failed; spooling the rows")
                }
            }
        }
        match self.append(rows).await {
            Ok(()) => {
                self.metrics
                    .audit_rows
                    .with_label_values(&["spool"])
                    .inc_by(rows.len() as u64);
                Ok(())
            }
            // The spool cannot take them (full, read-only, not ours): the database may.
            Err(spool) if !database_first => match self.to_database(rows).await {
                Ok(()) => Ok(()),
                Err(e) => {
                    tracing::warn!(error = %e, rows = rows.len(), "audit insert failed too");
                    Err(spool)
                }
            },
            Err(spool) => Err(spool),
        }
    }

    /// Opens the spool for appending (creating it empty if missing), and writes and syncs a
    /// byte in a file of its own beside it (a full volume opens files but takes no byte); notes
    /// why that fails, or that it works again.
    async fn probe_spool(&self) {
        let path = self.spool.clone();
        // Named for this process: gateways sharing the spool probe at the same moments.
        let probe = self.sibling(&format!(".probe.{}", std::process::id()));
        let opened = tokio::task::spawn_blocking(move || {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)?;
            let written = std::fs::File::create(&probe)
                .and_then(|mut f| f.write_all(b"\n").and_then(|()| f.sync_data()));
            let removed = std::fs::remove_file(&probe);
            written.and(removed)
        })
        .await
        .map_err(std::io::Error::other)
        .and_then(|r| r);
        let mut problem = lock(&self.append_problem);
        match opened {
            Ok(()) => {
                if problem.take().is_some() {
                    tracing::info!(spool = %self.spool.display(), "the audit spool can be written again");
                }
            }
            Err(e) => {
                if problem.is_none() {
                    tracing::error!(spool = %self.spool.display(), error = %e,
                        "the audit spool cannot be written: denials will get 503 while the database is down");
                }
                *problem = Some(e.to_string());
            }
        }
    }

    /// A file beside the spool: its name with `suffix` added.
    fn sibling(&self, suffix: &str) -> PathBuf {
        let mut name = self.spool.clone().into_os_string();
        name.push(suffix);
        PathBuf::from(name)
    }

    /// Where rows the database cannot store, and spool lines that are not rows, are set aside.
    fn rejected_path(&self) -> PathBuf {
        self.sibling(".rejected")
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

    async fn append(&self, rows: &[Arc<AuditEvent>]) -> Result<(), AuditError> {
        let _guard = self.lock.lock().await;
        // Marked under the lock that replay clears it under: marked before taking the lock, a
        // replay finishing in between cleared the mark after it, and rows appended then waited
        // in the spool, unreplayed, until the next outage or restart.
        self.spooled
            .store(true, std::sync::atomic::Ordering::Release);
        let mut lines = Vec::new();
        for e in rows {
            serde_json::to_writer(&mut lines, &**e).expect("audit events serialize");
            lines.push(b'\n');
        }
        let path = self.spool.clone();
        let max = self.max_spool;
        let appended = tokio::task::spawn_blocking(move || -> Result<u64, AuditError> {
            let io = |e: std::io::Error| AuditError::SpoolIo(e.to_string());
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .read(true)
                .append(true)
                .open(&path)
                .map_err(io)?;
            // Other gateways may share the spool: an append waits for one that is replaying
            // it (the lock is released when `f` closes).
            f.lock().map_err(io)?;
            let current = f.metadata().map_err(io)?.len();
            // A last line cut short (a gateway killed mid-append, or a disk that filled where
            // the cut could not be undone) was never answered 403. The rows appended now start
            // a line of their own: appended to the fragment, their first row would be skipped
            // with it at replay, after its 403 was sent.
            let mut torn = [0u8; 1];
            if current > 0 {
                std::os::unix::fs::FileExt::read_exact_at(&f, &mut torn, current - 1)
                    .map_err(io)?;
            }
            let start: &[u8] = if current > 0 && torn[0] != b'\n' { b"\n" } else { b"" };
            let added = (start.len() + lines.len()) as u64;
            if current + added > max {
                return Err(AuditError::SpoolFull(current));
            }
            let written = f
                .write_all(start)
                .and_then(|()| f.write_all(&lines))
                .and_then(|()| f.sync_data());
            if let Err(e) = written {
                // Cut back to what was there (a full disk can take part of the batch, and a torn
                // line would be set aside at replay): the rows of this batch are answered 503 and
                // kept in memory for the database (`keep_late`), so the spool holds none of them.
                if let Err(cut) = f.set_len(current).and_then(|()| f.sync_all()) {
                    tracing::error!(error = %cut, "cannot cut a failed append from the audit spool: rows answered 503 stay in it too (the replay and the late write store each once)");
                }
                return Err(io(e));
            }
            Ok(current + added)
        })
        .await
        .map_err(|e| AuditError::SpoolIo(e.to_string()))
        .and_then(|r| r);
        match appended {
            Ok(len) => {
                self.metrics.audit_spool_bytes.set(len as i64);
                *lock(&self.append_problem) = None;
                Ok(())
            }
            Err(e) => {
                if let AuditError::SpoolIo(why) = &e {
                    *lock(&self.append_problem) = Some(why.clone());
                }
                Err(e)
            }
        }
    }

    async fn replay(&self) -> Result<usize, sqlx::Error> {
        let _guard = self.lock.lock().await;
        // Read and later emptied through one handle, under an exclusive lock held until the
        // rows are committed and the file emptied: a gateway sharing the spool cannot append
        // between the read and the truncate (its rows would be emptied unreplayed), nor replay
        // the same rows at once.
        let path = self.spool.clone();
        let stuck = lock(&self.stuck).as_ref().map(|(l, m, _)| (*l, *m));
        let opened = tokio::task::spawn_blocking(move || -> std::io::Result<Opened> {
            use std::io::Read;
            let (mut f, read_only) = match std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
            {
                Ok(f) => (f, None),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Opened::Missing),
                // Not writable here (a read-only volume, another owner): its rows can still be
                // stored, and new rows go to the database, not to it.
                Err(e) => match std::fs::File::open(&path) {
                    Ok(f) => (f, Some(e.to_string())),
                    Err(_) => return Err(e),
                },
            };
            let meta = f.metadata()?;
            let id = (meta.len(), meta.modified()?);
            if read_only.is_some() && stuck == Some(id) {
                return Ok(Opened::Unchanged);
            }
            f.lock()?;
            let mut text = Vec::new();
            f.read_to_end(&mut text)?;
            Ok(Opened::Spool {
                f,
                text,
                read_only: read_only.map(|why| (id.0, id.1, why)),
            })
        })
        .await
        .map_err(|e| sqlx::Error::Io(std::io::Error::other(e)))?
        .map_err(sqlx::Error::Io)?;
        let (f, text, read_only) = match opened {
            Opened::Missing | Opened::Unchanged => return Ok(0),
            Opened::Spool { f, text, read_only } => (f, text, read_only),
        };
        let (events, unreadable) = spooled_rows(&text);
        let mut aside: Vec<serde_json::Value> = unreadable
            .iter()
            .map(|line| {
                serde_json::json!({
                    "why": "not an audit row",
                    "line": String::from_utf8_lossy(line),
                })
            })
            .collect();
        // Each step bounded: the spool stays locked while this runs, and a database that stops
        // answering mid-replay (its connections open, carrying nothing) would otherwise hold
        // every append here and in the gateways sharing the spool, and the denials waiting on
        // them, for as long as the stall lasts. Each chunk commits on its own: a replay cut
        // short leaves rows stored that the next one skips (`ON CONFLICT`).
        let limit = self.timeout.max(Duration::from_secs(1));
        // Counted as each statement commits, as inserted (not rows an earlier replay, cut
        // short, or another gateway sharing the spool already stored).
        let replayed = |n: u64| self.metrics.audit_replayed.inc_by(n);
        for chunk in events.chunks(MAX_BATCH) {
            match crate::stores::db::within(limit, self.insert_pooled(chunk, true)).await {
                Ok(n) => replayed(n),
                // A row the database cannot store (a byte it refuses, a constraint added to
                // the table): stored one by one, the others go in and it is set aside, instead
                // of holding every row behind it in the spool for good.
                Err(e) if row_refused(&e) => {
                    for row in chunk {
                        let one = std::slice::from_ref(row);
                        match crate::stores::db::within(limit, self.insert_pooled(one, true)).await
                        {
                            Ok(n) => replayed(n),
                            Err(e) if row_refused(&e) => aside.push(serde_json::json!({
                                "why": e.to_string(),
                                "row": row,
                            })),
                            Err(e) => return Err(self.failed(e)),
                        }
                    }
                }
                Err(e) => return Err(self.failed(e)),
            }
        }
        *lock(&self.refused) = None;
        if !aside.is_empty() {
            tracing::error!(rows = aside.len(), file = %self.rejected_path().display(),
                "audit spool lines the database cannot store were set aside");
            if read_only.is_none() {
                // Kept before the spool is emptied: a failure here leaves them in the spool.
                self.set_aside(&aside).map_err(sqlx::Error::Io)?;
                self.metrics
                    .audit_rows
                    .with_label_values(&["rejected"])
                    .inc_by(aside.len() as u64);
            }
        }
        if let Some((len, modified, why)) = read_only {
            // Stored, but the file keeps them: replayed again only if it changes (the primary
            // key makes that a no-op for these rows), and new rows go to the database.
            tracing::error!(spool = %self.spool.display(), error = %why, rows = events.len(),
                "audit spool replayed but cannot be emptied; remove the file or make it writable");
            *lock(&self.stuck) = Some((len, modified, why));
            self.metrics.audit_spool_bytes.set(len as i64);
            self.spooled
                .store(false, std::sync::atomic::Ordering::Release);
            return Ok(events.len());
        }
        *lock(&self.stuck) = None;
        // Truncate only after the commit: a crash in between replays again, and the primary key
        // makes the second replay a no-op.
        f.set_len(0).map_err(sqlx::Error::Io)?;
        f.sync_all().map_err(sqlx::Error::Io)?;
        self.metrics.audit_spool_bytes.set(0);
        self.spooled
            .store(false, std::sync::atomic::Ordering::Release);
        Ok(events.len())
    }
}

impl Inner {
    /// Appends `lines` to the set-aside file, synced.
    fn set_aside(&self, lines: &[serde_json::Value]) -> std::io::Result<()> {
        let mut text = Vec::new();
        for line in lines {
            serde_json::to_writer(&mut text, line).map_err(std::io::Error::other)?;
            text.push(b'\n');
        }
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.rejected_path())?;
        f.write_all(&text)?;
        f.sync_data()
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

/// The spool as [`Inner::replay`] found it.
enum Opened {
    Missing,
    /// Read-only, and unchanged since it was last replayed.
    Unchanged,
    Spool {
        f: std::fs::File,
        text: Vec<u8>,
        /// Why it could not be opened for writing: its length, modification time and the error.
        read_only: Option<(u64, std::time::SystemTime, String)>,
    },
}

/// A mutex that a panic elsewhere did not make unusable (what it guards is a plain value).
fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The rows of a spool, a JSON object a line, and the lines that are not rows. A line cut short
/// (a gateway killed mid-append, a disk that filled) was never answered 403; a whole line that
/// is not a row (a damaged file, a row of another version) may have been: neither is stored,
/// both are set aside, also when a cut fell inside a character (read as text, one invalid byte
/// failed every replay, and every row behind it stayed in the spool until it filled).
fn spooled_rows(spool: &[u8]) -> (Vec<AuditEvent>, Vec<&[u8]>) {
    let mut rows = Vec::new();
    let mut unreadable = Vec::new();
    for line in spool.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        match serde_json::from_slice(line) {
            Ok(e) => rows.push(e),
            Err(err) => {
                tracing::warn!(error = %err, "a spool line is not an audit row: setting it aside");
                unreadable.push(line);
            }
        }
    }
    (rows, unreadable)
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

/// The newest `limit` rows of `event_type`, newest first.
pub async fn recent(db: &Db, event_type: &str, limit: i64) -> Result<Vec<StoredRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "{STORED_ROW} WHERE event_type = $1 ORDER BY created_at_utc DESC, id LIMIT $2"
    ))
    .persistent(false)
    .bind(event_type)
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
        "SELECT route, reason, count(*), max(created_at_utc) FROM access_audit_events \
         WHERE event_type = $1 AND created_at_utc > now() - make_interval(secs => $2) \
         GROUP BY route, reason ORDER BY 3 DESC, 1, 2",
    )
    .persistent(false)
    .bind(event_type)
    .bind(seconds as f64)
    .fetch_all(db)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use std::sync::atomic::Ordering;

    fn row(id: &str) -> Arc<AuditEvent> {
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
        })
    }

    /// A writer spooling to `spool` in front of a database that refuses at once (nothing
    /// listens on its port): every insert fails (within 200 ms) and is spooled.
    fn refused_writer(
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
        AuditWriter::new(
            pool,
            spool.to_path_buf(),
            1 << 20,
            Duration::from_millis(200),
            Arc::new(Metrics::new()),
        )
    }

    /// Without a durable spool (`--audit-spool-durable=false`), a row the database does not take
    /// fails (the caller answers 503), no file is written, and the row waits in memory for the
    /// database (named by `/readyz`).
    #[tokio::test]
    async fn without_a_durable_spool_a_row_the_database_refuses_fails() {
        let dir = tempfile::tempdir().unwrap();
        let spool = dir.path().join("spool");
        let (durable, _) = refused_writer(&spool, Duration::from_secs(2));
        let (writer, task) = AuditWriter::new(
            durable.inner.pool.clone(),
            None,
            1 << 20,
            Duration::from_millis(200),
            Arc::new(Metrics::new()),
        );
        tokio::spawn(task);
        let err = writer.record(row("r1")).await.unwrap_err();
        assert!(matches!(err, AuditError::NotSpooled(_)), "{err}");
        assert!(
            std::fs::read_dir(dir.path()).unwrap().next().is_none(),
            "no file"
        );
        let problems = writer.spool_problems();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].starts_with("1 audit row(s) of denials answered 503 wait in memory"),
            "{problems:?}"
        );
    }

    /// A row spooled while a replay runs is replayed when the database answers: the spool stays
    /// marked. (Before, the replay's end cleared the mark the writer had set before it waited
    /// for the spool, and the row stayed in the spool until the next outage or restart.)
    #[tokio::test]
    async fn rows_spooled_during_a_replay_stay_marked_for_the_next_one() {
        let dir = tempfile::tempdir().unwrap();
        let (writer, _task) = refused_writer(&dir.path().join("spool"), Duration::from_secs(2));
        let inner = writer.inner.clone();
        // A replay is under way (it holds the spool), with the spool found empty so far.
        let replaying = inner.lock.lock().await;
        inner.spooled.store(false, Ordering::Release);
        let writing = tokio::spawn({
            let inner = inner.clone();
            async move { inner.write(&[row("r1")]).await }
        });
        // The insert times out (200 ms), and the write waits for the spool.
        tokio::time::sleep(Duration::from_millis(800)).await;
        assert!(
            !writing.is_finished(),
            "the write waits while the replay holds the spool"
        );
        // The replay ends: it truncated the spool and clears the mark, under the lock.
        inner.spooled.store(false, Ordering::Release);
        drop(replaying);
        writing.await.unwrap().unwrap();
        assert!(inner.spool_len().await > 0, "the row is in the spool");
        assert!(
            inner.spooled.load(Ordering::Acquire),
            "the spool holds a row but is not marked: no replay would take it"
        );
    }

    #[tokio::test]
    async fn appends_and_replays_wait_while_another_gateway_holds_the_spool() {
        // Gateways may share a spool: one replaying it holds its lock from the read to the
        // truncate, and an append in between would be emptied unreplayed.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spool");
        let (writer, task) = refused_writer(&path, Duration::from_millis(200));
        tokio::spawn(task);
        // Another gateway replaying the spool (another open file description's lock conflicts
        // as another process's does).
        let theirs = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap();
        theirs.lock().unwrap();
        let writing = tokio::spawn({
            let writer = writer.clone();
            async move { writer.record(row("r1")).await }
        });
        tokio::time::sleep(Duration::from_millis(800)).await;
        assert!(
            !writing.is_finished(),
            "the append (the database refused) waits for the other gateway's replay"
        );
        let replaying = tokio::spawn({
            let writer = writer.clone();
            async move { writer.replay().await }
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!replaying.is_finished(), "the replay waits too");
        drop(theirs);
        writing.await.unwrap().unwrap();
        // The database still refuses: the replay fails and leaves the row where it is.
        assert!(replaying.await.unwrap().is_err());
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("\"r1\""), "{text}");
    }

    /// A last line cut short (a gateway killed mid-append) was never answered 403 and is
    /// skipped at replay; the rows appended after it start a line of their own. (Before, the
    /// next batch's first row was written onto the fragment and skipped with it, its 403 sent.)
    #[tokio::test]
    async fn rows_appended_after_a_torn_line_are_not_skipped_with_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spool");
        let fragment = "{\"id\":\"torn-00000000-0000-4000-8000-0000";
        std::fs::write(&path, fragment).unwrap();
        let (writer, task) = refused_writer(&path, Duration::from_millis(200));
        tokio::spawn(task);
        writer.record(row("r1")).await.unwrap();
        writer.record(row("r2")).await.unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert_eq!(lines[0], fragment);
        for (line, id) in lines[1..].iter().zip(["r1", "r2"]) {
            let e: AuditEvent = serde_json::from_str(line).expect("a whole row on its own line");
            assert_eq!(e.id, id);
        }
        assert!(text.ends_with('\n'));
    }

    /// Replay skips a line cut short, also inside a multi-byte character, and reads the rows
    /// around it.
    #[test]
    fn replay_reads_the_rows_around_a_torn_line() {
        let mut spool = Vec::new();
        serde_json::to_writer(&mut spool, &*row("r1")).unwrap();
        spool.push(b'\n');
        let mut cut = Vec::new();
        let mut torn = (*row("r2")).clone();
        torn.user_agent = Some("agent \u{e9}t\u{e9}".into());
        serde_json::to_writer(&mut cut, &torn).unwrap();
        let inside = cut.iter().position(|&b| b >= 0x80).unwrap() + 1;
        spool.extend_from_slice(&cut[..inside]); // ends inside the two bytes of \u{e9}
        spool.push(b'\n');
        serde_json::to_writer(&mut spool, &*row("r3")).unwrap();
        spool.push(b'\n');
        assert!(std::str::from_utf8(&spool).is_err());
        let (rows, unreadable) = spooled_rows(&spool);
        let ids: Vec<String> = rows.into_iter().map(|e| e.id).collect();
        assert_eq!(ids, ["r1", "r3"]);
        assert_eq!(unreadable, [&cut[..inside]]);
    }
}
