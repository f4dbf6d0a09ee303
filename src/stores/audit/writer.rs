//! The writer task: rows queued by [`AuditWriter::record`] go to the database in batches (group
//! commit, one INSERT a batch on the one connection it keeps), or to the spool (`spool.rs`) while
//! the database does not answer; the rows of denials answered 503 wait in memory ([`LATE_MAX`])
//! until the database takes them, and are logged in full if the gateway stops first.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, Mutex};

use super::spool::Wait;
use super::writing::{Job, Writing};
use super::{
    insert_sql, lock, row_refused, AuditError, Columns, Inner, INSERT_ARRAYS_SQL, LATE_MAX,
    LATE_MAX_BYTES, MAX_BATCH,
};
use crate::policy::audit_event::AuditEvent;
use crate::runtime::metrics::Metrics;
use crate::stores::db::Db;
use crate::stores::lookup::Lookup;

/// Rows waiting for the writer before `record` itself waits (backpressure on denials only).
const QUEUE: usize = 16_384;

/// The writer's connection, kept from one batch to the next. Drawn from the pool for each
/// batch, a connection went back through a task that pings the server first, so the next batch
/// found none idle, the pool opened more, and the batches went round seven backends in turn:
/// a round trip more per batch and every backend's caches cold (docs/performance-log.md, case d).
pub(super) struct Held {
    /// Always `Some` until dropped.
    conn: Option<crate::stores::db::Conn>,
    used: std::time::Instant,
}

/// A kept connection idle this long is closed (the pool's own idle limit is as long), and the
/// next batch opens another.
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

    pub(super) fn discard(mut self) {
        self.close();
    }
}

/// The rows of denials answered 503 waiting for the database, and the bytes of their JSON.
#[derive(Default)]
pub(super) struct Late {
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
    pub(super) inner: Arc<Inner>,
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
        let (writer, writing) = Self::new(pool, spool, max_spool, timeout, metrics);
        tokio::spawn(writing.run());
        writer
    }

    /// The writer and the queue's end its task writes from (the caller runs [`Writing::run`],
    /// e.g. supervised, or hands it to the data plane, as `serve` does).
    /// `spool`: None where no file outlives the process (a Heroku dyno): a row the database
    /// does not take within `timeout` fails, and the caller answers 503.
    pub fn new(
        pool: Db,
        spool: impl Into<Option<PathBuf>>,
        max_spool: u64,
        timeout: Duration,
        metrics: Arc<Metrics>,
    ) -> (Arc<Self>, Writing) {
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
            replay_progressing: std::sync::atomic::AtomicBool::new(false),
            append_problem: Default::default(),
            stuck: Default::default(),
            refused: Default::default(),
            late: Default::default(),
            peer: Default::default(),
        });
        let (tx, rx) = mpsc::channel(QUEUE);
        let writing = Writing::new(inner.clone(), rx);
        (Arc::new(AuditWriter { tx, inner }), writing)
    }

    /// Returns once the row is durable (database or spool). Dropped before then, the row is
    /// written all the same: once queued, by the writer; dropped while it waits for room in a
    /// full queue (a request cancelled: a connection dropped past the shutdown's grace), it is
    /// kept in memory for the database as a denial answered 503 is (`Inner::keep_late`),
    /// never lost unsaid.
    pub async fn record(&self, event: Arc<AuditEvent>) -> Result<(), AuditError> {
        use tokio::sync::mpsc::error::TrySendError;
        let (done, wait) = oneshot::channel();
        self.inner.metrics.audit_queue_depth.inc();
        let queued = match self.tx.try_send((event, done)) {
            Ok(()) => true,
            Err(TrySendError::Full((event, done))) => {
                let pending = NotQueued {
                    row: Some(event.clone()),
                    inner: &self.inner,
                };
                let sent = self.tx.send((event, done)).await.is_ok();
                pending.queued();
                sent
            }
            Err(TrySendError::Closed(_)) => false,
        };
        if !queued {
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

/// A row waiting for room in the writer's queue: if it is dropped before the row got there,
/// the row is kept for the database ([`AuditWriter::record`]).
struct NotQueued<'a> {
    row: Option<Arc<AuditEvent>>,
    inner: &'a Inner,
}

impl NotQueued<'_> {
    /// The row is in the queue (or the writer stopped, and the caller answers so).
    fn queued(mut self) {
        self.row = None;
    }
}

impl Drop for NotQueued<'_> {
    fn drop(&mut self) {
        if let Some(row) = self.row.take() {
            self.inner.metrics.audit_queue_depth.dec();
            tracing::warn!(request_id = %row.request_id, "a denial's request ended while its audit row waited for room in the writer's queue: the row is kept for the database");
            self.inner.keep_late(std::slice::from_ref(&row));
        }
    }
}

impl Inner {
    /// Keeps the rows of a batch answered 503 for [`Inner::store_late`], up to [`LATE_MAX`] rows
    /// and [`LATE_MAX_BYTES`] of their JSON.
    pub(super) fn keep_late(&self, rows: &[Arc<AuditEvent>]) {
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
            // Closed, not given back: a connection the writer opened for itself is registered
            // with its runtime (`Db::acquire_new`), which may not be the pool's other users'.
            if let Some(h) = held.take() {
                h.discard();
            }
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

    /// The INSERT of `rows` on the kept connection (opened first if there is none, never one
    /// of the pool's idle ones: its socket is then this runtime's): fresh rows
    /// on the gateway's own sessions as the named statement of arrays ([`INSERT_ARRAYS_SQL`]),
    /// otherwise [`insert_sql`]'s text as one simple query. Bounded by the caller.
    async fn insert_on(
        &self,
        held: &mut Option<Held>,
        rows: &[Arc<AuditEvent>],
        replay: bool,
    ) -> Result<(), sqlx::Error> {
        let h = match held {
            Some(h) => h,
            None => held.insert(Held {
                conn: Some(self.pool.acquire_new().await?),
                used: std::time::Instant::now(),
            }),
        };
        let conn = h.conn.as_mut().expect("a held connection until dropped");
        let mut kept = true;
        let result = if !replay && self.pool.named_statements() {
            let columns = Columns::of(rows);
            let values = columns.values();
            let insert = Lookup {
                sql: INSERT_ARRAYS_SQL,
                values: &values,
            };
            self.pool
                .named_on(conn, &insert, || insert_sql(rows, false))
                .await
                .map(|(_, own)| kept = own)
        } else {
            let sql = insert_sql(rows, replay)?;
            crate::stores::db::one_round_trip_on(conn, self.timeout, &sql)
                .await
                .map(|_| ())
        };
        if result.is_ok() && kept {
            conn.done();
        }
        h.used = std::time::Instant::now();
        if !kept {
            // A pooler's server connection: its statement cache no longer matches it.
            if let Some(h) = held.take() {
                h.discard();
            }
        }
        result
    }

    /// How long rows the database refused wait for a replay that holds the spool: longer than
    /// one replay attempt can hold it in an outage ([`Inner::attempt_limit`]). A replay of
    /// another process is waited for no longer than that attempt from when this process first
    /// found it holding the spool ([`super::spool::PeerHold`]).
    fn spool_wait(&self) -> Duration {
        self.attempt_limit() * 2
    }

    /// `rows` to the database while a replay holds the spool; refused there, to the spool once
    /// the replay is done: Ok(true) when they went to the spool.
    async fn database_then_spool(&self, rows: &[Arc<AuditEvent>]) -> Result<bool, AuditError> {
        match self.to_database(rows).await {
            Ok(()) => Ok(false),
            Err(e) => {
                tracing::warn!(error = %e, rows = rows.len(), "audit insert failed while the spool is replayed; spooling the rows after the replay");
                self.append(rows, Wait::Up(self.spool_wait()))
                    .await
                    .map(|()| true)
            }
        }
    }

    pub(super) async fn write(&self, rows: &[Arc<AuditEvent>]) -> Result<(), AuditError> {
        use std::sync::atomic::Ordering;
        if !self.durable {
            return self.to_database(rows).await.map_err(|e| {
                tracing::warn!(error = %e, rows = rows.len(), "audit insert failed and there is no durable spool: answering 503");
                AuditError::NotSpooled(e)
            });
        }
        // While rows wait in the spool (the database is likely still down), new rows join
        // them, without waiting for the database first; replay keeps their order. Unless
        // another process has held the spool longer than one failing replay attempt can: it is
        // storing rows (the database answers) or frozen mid-replay, and every batch would wait
        // for it again (issue 66: 2 s a denial while a frozen peer held a spool of one row).
        let empty = !self.spooled.load(Ordering::Acquire) || self.spool_len().await == 0;
        let database_first = empty || self.peer_holds_long();
        // Ok(true): the rows went to the spool; Ok(false): to the database. And whether the
        // database was tried (and refused them).
        let (spooled, tried) = if database_first {
            if empty {
                self.spooled.store(false, Ordering::Release);
            }
            match self.to_database(rows).await {
                Ok(()) => return Ok(()),
                Err(e) => {
                    tracing::warn!(error = %e, rows = rows.len(), "audit insert failed; spooling the rows")
                }
            }
            // Refused: the spool, after a replay of this process that holds it (at most
            // spool_wait()), after another process's no longer than PeerHold allows; past that
            // the rows are answered 503 and kept in memory for the database, within twice
            // --db-timeout-ms in all (a peer frozen mid-replay must not hold every denial, nor
            // shutdown, behind it).
            let appended = self.append(rows, Wait::Up(self.spool_wait())).await;
            (appended.map(|()| true), true)
        } else {
            // Unless a replay holds the spool and is storing it (this process's has stored a
            // chunk): each of its statements is bounded, the whole replay is not (minutes, for
            // a full spool), and the denials waiting for these rows would wait with it. The
            // database the replay is reaching takes them, bounded by --db-timeout-ms; refused
            // there, they wait for the spool. A replay that has stored nothing yet (in an
            // outage each attempt holds the spool up to --db-timeout-ms and fails) is waited
            // for at most --db-timeout-ms first, another process's no longer than PeerHold
            // allows: then the database.
            match self.append(rows, Wait::Not).await {
                Err(AuditError::SpoolBusy) if self.replay_progressing.load(Ordering::Acquire) => {
                    (self.database_then_spool(rows).await, true)
                }
                Err(AuditError::SpoolBusy) => match self.append(rows, Wait::Up(self.timeout)).await
                {
                    Err(AuditError::SpoolBusy) => (self.database_then_spool(rows).await, true),
                    appended => (appended.map(|()| true), false),
                },
                appended => (appended.map(|()| true), false),
            }
        };
        match spooled {
            Ok(false) => Ok(()),
            Ok(true) => {
                self.metrics
                    .audit_rows
                    .with_label_values(&["spool"])
                    .inc_by(rows.len() as u64);
                Ok(())
            }
            // The spool cannot take them (full, read-only, not ours): the database may.
            Err(spool) if !tried => match self.to_database(rows).await {
                Ok(()) => Ok(()),
                Err(e) => {
                    tracing::warn!(error = %e, rows = rows.len(), "audit insert failed too");
                    Err(spool)
                }
            },
            Err(spool) => Err(spool),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{refused_writer, row};
    use super::*;
    use std::sync::atomic::Ordering;

    /// Without a durable spool (`--audit-spool-durable=false`), a row the database does not take
    /// fails (the caller answers 503), no file is written, and the row waits in memory for the
    /// database (named by `/readyz`).
    #[tokio::test]
    async fn without_a_durable_spool_a_row_the_database_refuses_fails() {
        let dir = tempfile::tempdir().unwrap();
        let spool = dir.path().join("spool");
        let (durable, _) = refused_writer(&spool, Duration::from_secs(2));
        let (writer, writing) = AuditWriter::new(
            durable.inner.pool.clone(),
            None,
            1 << 20,
            Duration::from_millis(200),
            Arc::new(Metrics::new()),
        );
        tokio::spawn(writing.run());
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

    /// A row whose request ends while it waits for room in a full queue is kept for the
    /// database, not lost: `record` dropped mid-wait (before, the row went with it, unsaid).
    #[tokio::test]
    async fn a_row_dropped_while_the_queue_is_full_is_kept_for_the_database() {
        let dir = tempfile::tempdir().unwrap();
        // The writer's task is not run: nothing leaves the queue.
        let (writer, _task) = refused_writer(&dir.path().join("spool"), Duration::from_secs(2));
        for i in 0..QUEUE {
            let (done, _) = oneshot::channel();
            writer.tx.try_send((row(&format!("q{i}")), done)).unwrap();
        }
        let cancelled =
            tokio::time::timeout(Duration::from_millis(50), writer.record(row("left"))).await;
        assert!(cancelled.is_err(), "the queue is full: record waits");
        let late = lock(&writer.inner.late);
        assert_eq!(late.rows.len(), 1, "the row is kept");
        assert_eq!(late.rows[0].id, "left");
        drop(late);
        let problems = writer.spool_problems();
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
}
