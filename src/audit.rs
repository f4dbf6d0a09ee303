//! The durable writer of `access_audit_events` (I-2: a row on every 403).
//!
//! One writer task groups rows (group commit): it takes every row queued while its previous
//! write was in flight, up to [`MAX_BATCH`], and writes them with one multi-row INSERT. Each caller of
//! [`AuditWriter::record`] waits until its row is durable: committed in PostgreSQL, or, while
//! PostgreSQL does not answer, appended to a local spool file and fsynced (once per batch). The
//! spool is replayed into PostgreSQL when it answers again, and at start-up, so it survives a
//! crash; the row id is the primary key and every INSERT says `ON CONFLICT (id) DO NOTHING`, so a
//! replay interrupted half-way stores each row exactly once. When the spool is full, `record`
//! fails and the caller answers 503 instead of denying without a record.
//!
//! Allowed traffic never waits for this writer, and the writer holds at most one database
//! connection, so a flood of denials cannot starve the session and role lookups.

use std::borrow::Borrow;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use tokio::sync::{mpsc, oneshot, Mutex};

use crate::metrics::Metrics;

/// One row of `access_audit_events`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEvent {
    pub id: String,
    pub event_type: String,
    pub admin_id: Option<String>,
    pub method: String,
    pub path: String,
    pub route: Option<String>,
    pub required: Option<String>,
    pub reason: String,
    pub request_id: String,
    pub client_ip: Option<String>,
    pub user_agent: Option<String>,
    pub created_at_utc: DateTime<Utc>,
    /// Version of the mapping that decided.
    #[serde(default)]
    pub mapping_version: Option<String>,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum AuditError {
    #[error("audit spool is full ({0} bytes): refusing to deny without a record")]
    SpoolFull(u64),
    #[error("audit spool cannot be written: {0}")]
    SpoolIo(String),
    #[error("audit writer stopped")]
    Stopped,
}

/// The spool, held for the life of the process: an exclusive lock on the file (`flock`), so a
/// second gateway given the same `--audit-spool` (two instances started from one directory with
/// the default path, say) does not start. Two processes appending to and replaying one spool
/// would lose rows: one replay's truncate drops the rows another process appended after that
/// replay read the file, and their 403s were already sent.
///
/// The writer opens the spool by its path for each append and each replay; each time it checks
/// that the path still names the locked file ([`SpoolClaim::follow`]). A spool deleted or
/// replaced while the gateway runs is locked anew before a row goes into it, and one that
/// another process holds by then is not written (the denial gets 503) nor replayed.
#[derive(Debug)]
pub struct SpoolClaim {
    held: std::sync::Mutex<Option<Held>>,
}

/// The locked file and its identity on disk.
#[derive(Debug)]
struct Held {
    /// Kept open: the lock lasts as long as this handle.
    _file: std::fs::File,
    dev: u64,
    ino: u64,
}

impl Held {
    fn new(file: std::fs::File) -> std::io::Result<Held> {
        use std::os::unix::fs::MetadataExt;
        let meta = file.metadata()?;
        Ok(Held {
            _file: file,
            dev: meta.dev(),
            ino: meta.ino(),
        })
    }
}

/// How long start-up waits for a spool lock or a port that a process which just ended may still
/// hold.
pub const RESTART_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
#[error("the audit spool {0} is in use by another process (another gateway?): give each gateway its own --audit-spool")]
pub struct SpoolInUse(pub String);

impl SpoolClaim {
    /// Takes the spool's lock, creating the (empty) file if it is missing. A spool that cannot
    /// be opened or locked here (a read-only directory, a file system without locks) is logged
    /// and the gateway runs as it did without the claim: a denial it cannot record in the
    /// database or the spool still gets 503, never a 403 without its row.
    pub fn take(path: &std::path::Path) -> Result<SpoolClaim, SpoolInUse> {
        let file = match std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(spool = %path.display(), error = %e,
                    "cannot open the audit spool: while the database is unreachable, requests that would be denied get 503");
                return Ok(SpoolClaim::unheld());
            }
        };
        let started = std::time::Instant::now();
        let locked = loop {
            match file.try_lock() {
                // A gateway restarted right after a SIGKILL may start before the old process
                // has finished exiting (its files close last): a lock still held after the
                // grace is another live process's.
                Err(std::fs::TryLockError::WouldBlock) if started.elapsed() < RESTART_GRACE => {
                    std::thread::sleep(std::time::Duration::from_millis(25));
                }
                other => break other,
            }
        };
        match locked {
            Ok(()) => match Held::new(file) {
                Ok(held) => Ok(SpoolClaim {
                    held: std::sync::Mutex::new(Some(held)),
                }),
                Err(e) => {
                    tracing::warn!(spool = %path.display(), error = %e,
                        "cannot read the audit spool's metadata: make sure no other gateway uses it");
                    Ok(SpoolClaim::unheld())
                }
            },
            Err(std::fs::TryLockError::WouldBlock) => Err(SpoolInUse(path.display().to_string())),
            Err(std::fs::TryLockError::Error(e)) => {
                tracing::warn!(spool = %path.display(), error = %e,
                    "cannot lock the audit spool: make sure no other gateway uses it");
                Ok(SpoolClaim::unheld())
            }
        }
    }

    /// No lock (none could be taken; or a writer in a test): every file is written as it is.
    pub fn unheld() -> SpoolClaim {
        SpoolClaim {
            held: std::sync::Mutex::new(None),
        }
    }

    /// Checks that `opened` (the spool just opened by its path) is the locked file. When the
    /// path names another file now (the spool was deleted or replaced), that file is locked and
    /// followed from then on; Err when another process holds it.
    pub fn follow(&self, opened: &std::fs::File, path: &std::path::Path) -> std::io::Result<()> {
        use std::os::unix::fs::MetadataExt;
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let Some(current) = held.as_ref() else {
            return Ok(());
        };
        let meta = opened.metadata()?;
        if (meta.dev(), meta.ino()) == (current.dev, current.ino) {
            return Ok(());
        }
        match opened.try_lock() {
            Ok(()) => {
                tracing::warn!(spool = %path.display(),
                    "the audit spool was deleted or replaced while the gateway ran: locked the file now at its path");
                *held = Some(Held::new(opened.try_clone()?)?);
                Ok(())
            }
            Err(std::fs::TryLockError::WouldBlock) => Err(std::io::Error::new(
                std::io::ErrorKind::ResourceBusy,
                format!(
                    "the audit spool {} was replaced by a file another process holds",
                    path.display()
                ),
            )),
            Err(std::fs::TryLockError::Error(e)) => Err(e),
        }
    }
}

pub const EVENT_DENIED: &str = "access_denied";
pub const EVENT_SHADOW_DENIED: &str = "access_denied_shadow";
/// Shadow mode: the gateway's decision and Console's own answer disagree.
pub const EVENT_DRIFT: &str = "rbac_drift";

/// Most rows per INSERT.
pub const MAX_BATCH: usize = 512;
/// Rows waiting for the writer before `record` itself waits (backpressure on denials only).
const QUEUE: usize = 16_384;

const INSERT_SQL: &str = "INSERT INTO access_audit_events \
    (id, event_type, admin_id, method, path, route, required, reason, request_id, client_ip, user_agent, created_at_utc, mapping_version) \
    SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], \
                         $8::text[], $9::text[], $10::text[], $11::text[], $12::timestamptz[], $13::text[]) \
    ON CONFLICT (id) DO NOTHING";

/// Inserts rows with one statement (on any executor: the pool or a transaction).
async fn insert<'e, E: sqlx::PgExecutor<'e>>(
    exec: E,
    rows: &[impl Borrow<AuditEvent>],
) -> Result<(), sqlx::Error> {
    fn col<T>(rows: &[impl Borrow<AuditEvent>], f: impl Fn(&AuditEvent) -> T) -> Vec<T> {
        rows.iter().map(|r| f(r.borrow())).collect()
    }
    sqlx::query(INSERT_SQL)
        .bind(col(rows, |e| e.id.clone()))
        .bind(col(rows, |e| e.event_type.clone()))
        .bind(col(rows, |e| e.admin_id.clone()))
        .bind(col(rows, |e| e.method.clone()))
        .bind(col(rows, |e| e.path.clone()))
        .bind(col(rows, |e| e.route.clone()))
        .bind(col(rows, |e| e.required.clone()))
        .bind(col(rows, |e| e.reason.clone()))
        .bind(col(rows, |e| e.request_id.clone()))
        .bind(col(rows, |e| e.client_ip.clone()))
        .bind(col(rows, |e| e.user_agent.clone()))
        .bind(col(rows, |e| e.created_at_utc))
        .bind(col(rows, |e| e.mapping_version.clone()))
        .execute(exec)
        .await
        .map(|_| ())
}

/// The columns, in the order [`copy_text`] writes them.
const COPY_SQL: &str = "COPY access_audit_events \
    (id, event_type, admin_id, method, path, route, required, reason, request_id, client_ip, user_agent, created_at_utc, mapping_version) \
    FROM STDIN";

/// Rows in PostgreSQL's COPY text format: tab-separated, `\N` for NULL, backslash escapes.
fn copy_text(rows: &[impl Borrow<AuditEvent>]) -> Vec<u8> {
    fn field(out: &mut Vec<u8>, v: Option<&str>) {
        match v {
            None => out.extend_from_slice(b"\\N"),
            Some(v) => {
                for b in v.bytes() {
                    match b {
                        b'\\' => out.extend_from_slice(b"\\\\"),
                        b'\t' => out.extend_from_slice(b"\\t"),
                        b'\n' => out.extend_from_slice(b"\\n"),
                        b'\r' => out.extend_from_slice(b"\\r"),
                        _ => out.push(b),
                    }
                }
            }
        }
    }
    let mut out = Vec::with_capacity(rows.len() * 320);
    for e in rows {
        let e: &AuditEvent = e.borrow();
        let created = e.created_at_utc.to_rfc3339();
        let cols = [
            Some(e.id.as_str()),
            Some(e.event_type.as_str()),
            e.admin_id.as_deref(),
            Some(e.method.as_str()),
            Some(e.path.as_str()),
            e.route.as_deref(),
            e.required.as_deref(),
            Some(e.reason.as_str()),
            Some(e.request_id.as_str()),
            e.client_ip.as_deref(),
            e.user_agent.as_deref(),
            Some(created.as_str()),
            e.mapping_version.as_deref(),
        ];
        for (i, c) in cols.iter().enumerate() {
            if i > 0 {
                out.push(b'\t');
            }
            field(&mut out, *c);
        }
        out.push(b'\n');
    }
    out
}

/// Writes fresh rows with COPY (about half the server's CPU per row of the multi-row INSERT,
/// measured with `scripts/load.sh` case d). All or nothing, like the INSERT; rows that may exist
/// already (spool replay) go through [`insert`] and its `ON CONFLICT`.
async fn copy_rows(pool: &PgPool, rows: &[Arc<AuditEvent>]) -> Result<(), sqlx::Error> {
    let mut conn = pool.acquire().await?;
    let mut copy = conn.copy_in_raw(COPY_SQL).await?;
    if let Err(e) = copy.send(copy_text(rows)).await {
        // Ending the COPY is best effort: the connection reports the send error either way.
        let _ = copy.abort("send failed").await;
        return Err(e);
    }
    copy.finish().await.map(|_| ())
}

/// A row shared with the caller that waits for it (no copy of its fields per row).
type Job = (Arc<AuditEvent>, oneshot::Sender<Result<(), AuditError>>);

struct Inner {
    pool: PgPool,
    spool: PathBuf,
    max_spool: u64,
    /// Serializes spool appends with replay-and-truncate.
    lock: Mutex<()>,
    metrics: Arc<Metrics>,
    timeout: Duration,
    /// Rows may wait in the spool (set by an append; cleared when the spool is found empty or
    /// replayed), so most batches skip a file-system round trip.
    spooled: std::sync::atomic::AtomicBool,
    /// The spool's lock ([`AuditWriter::hold_spool`]); unheld until then.
    claim: Arc<std::sync::OnceLock<SpoolClaim>>,
}

pub struct AuditWriter {
    tx: mpsc::Sender<Job>,
    inner: Arc<Inner>,
}

impl AuditWriter {
    /// Starts the writer task on the current runtime.
    pub fn start(
        pool: PgPool,
        spool: PathBuf,
        max_spool: u64,
        timeout: Duration,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        let (writer, task) = Self::new(pool, spool, max_spool, timeout, metrics);
        tokio::spawn(task);
        writer
    }

    /// The writer and the task that writes for it (the caller runs the task, e.g. supervised).
    pub fn new(
        pool: PgPool,
        spool: PathBuf,
        max_spool: u64,
        timeout: Duration,
        metrics: Arc<Metrics>,
    ) -> (
        Arc<Self>,
        impl std::future::Future<Output = ()> + Send + 'static,
    ) {
        let inner = Arc::new(Inner {
            pool,
            spool,
            max_spool,
            lock: Mutex::new(()),
            metrics,
            timeout,
            spooled: std::sync::atomic::AtomicBool::new(true),
            claim: Arc::new(std::sync::OnceLock::new()),
        });
        let (tx, rx) = mpsc::channel(QUEUE);
        let task = write_loop(inner.clone(), rx);
        (Arc::new(AuditWriter { tx, inner }), task)
    }

    /// Keeps the spool's lock for as long as the writer lives, and follows the spool with it
    /// ([`SpoolClaim::follow`]). A second call changes nothing.
    pub fn hold_spool(&self, claim: SpoolClaim) {
        if self.inner.claim.set(claim).is_err() {
            tracing::debug!("the audit spool's lock is held already");
        }
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

    /// Replays the spool every `every` until the process ends.
    pub async fn replay_forever(self: Arc<Self>, every: Duration) {
        loop {
            if self
                .inner
                .spooled
                .load(std::sync::atomic::Ordering::Acquire)
                && self.inner.spool_len().await > 0
            {
                match self.replay().await {
                    Ok(n) if n > 0 => {
                        tracing::info!(rows = n, "replayed spooled audit rows into the database")
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "audit spool replay failed; will retry"),
                }
            }
            tokio::time::sleep(every).await;
        }
    }
}

async fn write_loop(inner: Arc<Inner>, mut rx: mpsc::Receiver<Job>) {
    while let Some(first) = rx.recv().await {
        // Natural group commit: take every row queued while the previous write was in flight,
        // without waiting for more (a fixed gathering delay measured as pure latency on the
        // 403 path: d/c 0.48 with a 2 ms wait).
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let (rows, waiters): (Vec<Arc<AuditEvent>>, Vec<_>) = batch.into_iter().unzip();
        inner.metrics.audit_queue_depth.sub(rows.len() as i64);
        let result = inner.write(&rows).await;
        inner.metrics.audit_batches.inc();
        for w in waiters {
            // Err: that caller stopped waiting (its client hung up); the row is durable, or
            // failed, either way.
            let _ = w.send(result.clone());
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

    async fn write(&self, rows: &[Arc<AuditEvent>]) -> Result<(), AuditError> {
        use std::sync::atomic::Ordering;
        // While rows wait in the spool, new rows join them so that replay keeps their order.
        if !self.spooled.load(Ordering::Acquire) || self.spool_len().await == 0 {
            self.spooled.store(false, Ordering::Release);
            match tokio::time::timeout(self.timeout, copy_rows(&self.pool, rows)).await {
                Ok(Ok(())) => {
                    self.metrics
                        .audit_rows
                        .with_label_values(&["database"])
                        .inc_by(rows.len() as u64);
                    return Ok(());
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, rows = rows.len(), "audit insert failed; spooling the rows")
                }
                Err(_) => tracing::warn!(
                    rows = rows.len(),
                    "audit insert timed out; spooling the rows"
                ),
            }
        }
        self.append(rows).await?;
        self.metrics
            .audit_rows
            .with_label_values(&["spool"])
            .inc_by(rows.len() as u64);
        Ok(())
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
        let claim = self.claim.clone();
        let len = tokio::task::spawn_blocking(move || -> Result<u64, AuditError> {
            let current = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            if current + lines.len() as u64 > max {
                return Err(AuditError::SpoolFull(current));
            }
            let io = |e: std::io::Error| AuditError::SpoolIo(e.to_string());
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(io)?;
            if let Some(claim) = claim.get() {
                claim.follow(&f, &path).map_err(io)?;
            }
            f.write_all(&lines).map_err(io)?;
            f.sync_data().map_err(io)?;
            Ok(current + lines.len() as u64)
        })
        .await
        .map_err(|e| AuditError::SpoolIo(e.to_string()))??;
        self.metrics.audit_spool_bytes.set(len as i64);
        Ok(())
    }

    async fn replay(&self) -> Result<usize, sqlx::Error> {
        let _guard = self.lock.lock().await;
        // Read and later emptied through one handle, checked to be the locked file: a spool
        // another process holds now is neither replayed nor emptied.
        let (path, claim) = (self.spool.clone(), self.claim.clone());
        let opened = tokio::task::spawn_blocking(
            move || -> std::io::Result<Option<(std::fs::File, String)>> {
                use std::io::Read;
                let mut f = match std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&path)
                {
                    Ok(f) => f,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                    Err(e) => return Err(e),
                };
                if let Some(claim) = claim.get() {
                    claim.follow(&f, &path)?;
                }
                let mut text = String::new();
                f.read_to_string(&mut text)?;
                Ok(Some((f, text)))
            },
        )
        .await
        .map_err(|e| sqlx::Error::Io(std::io::Error::other(e)))?
        .map_err(sqlx::Error::Io)?;
        let Some((f, text)) = opened else {
            return Ok(0);
        };
        // A crash mid-append can leave a torn last line; it was never acknowledged (no 403 was
        // sent for it), so it is skipped.
        let events: Vec<AuditEvent> = text
            .lines()
            .filter_map(|l| match serde_json::from_str(l) {
                Ok(e) => Some(e),
                Err(err) => {
                    tracing::warn!(error = %err, "skipping a torn spool line");
                    None
                }
            })
            .collect();
        if !events.is_empty() {
            let mut tx = self.pool.begin().await?;
            for chunk in events.chunks(MAX_BATCH) {
                insert(&mut *tx, chunk).await?;
            }
            tx.commit().await?;
        }
        // Truncate only after the commit: a crash in between replays again, and the primary key
        // makes the second replay a no-op.
        f.set_len(0).map_err(sqlx::Error::Io)?;
        f.sync_all().map_err(sqlx::Error::Io)?;
        self.metrics.audit_spool_bytes.set(0);
        self.spooled
            .store(false, std::sync::atomic::Ordering::Release);
        self.metrics.audit_replayed.inc_by(events.len() as u64);
        Ok(events.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    #[test]
    fn copy_text_escapes_and_marks_nulls() {
        let e = AuditEvent {
            id: "i".into(),
            event_type: "access_denied".into(),
            admin_id: None,
            method: "GET".into(),
            path: "/a\tb\\c".into(),
            route: None,
            required: Some("r1 | r2".into()),
            reason: "missing_role".into(),
            request_id: "rid".into(),
            client_ip: Some("10.0.0.1".into()),
            user_agent: Some("ua\r\nx".into()),
            created_at_utc: chrono::DateTime::parse_from_rfc3339("2026-11-22T10:00:00Z")
                .unwrap()
                .with_timezone(&Utc),
            mapping_version: Some("abc".into()),
        };
        let text = String::from_utf8(copy_text(&[e.clone(), e])).unwrap();
        let line = "i\taccess_denied\t\\N\tGET\t/a\\tb\\\\c\t\\N\tr1 | r2\tmissing_role\trid\t10.0.0.1\tua\\r\\nx\t2026-11-22T10:00:00+00:00\tabc\n";
        assert_eq!(text, format!("{line}{line}"));
    }

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

    /// A row spooled while a replay runs is replayed when the database answers: the spool stays
    /// marked. (Before, the replay's end cleared the mark the writer had set before it waited
    /// for the spool, and the row stayed in the spool until the next outage or restart.)
    #[tokio::test]
    async fn rows_spooled_during_a_replay_stay_marked_for_the_next_one() {
        let dir = tempfile::tempdir().unwrap();
        // A database that refuses at once: every insert fails and is spooled.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let pool = sqlx::postgres::PgPoolOptions::new()
            .acquire_timeout(Duration::from_secs(2))
            .connect_lazy(&format!("postgres://x@127.0.0.1:{port}/x"))
            .unwrap();
        let (writer, _task) = AuditWriter::new(
            pool,
            dir.path().join("spool"),
            1 << 20,
            Duration::from_millis(200),
            Arc::new(Metrics::new()),
        );
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
    async fn a_spool_replaced_while_held_is_followed_and_one_another_process_holds_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spool");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let pool = sqlx::postgres::PgPoolOptions::new()
            .acquire_timeout(Duration::from_millis(200))
            .connect_lazy(&format!("postgres://x@127.0.0.1:{port}/x"))
            .unwrap();
        let (writer, task) = AuditWriter::new(
            pool,
            path.clone(),
            1 << 20,
            Duration::from_millis(200),
            Arc::new(Metrics::new()),
        );
        tokio::spawn(task);
        writer.hold_spool(SpoolClaim::take(&path).unwrap());
        let open = || {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .unwrap()
        };
        let another_process_locks = || match open().try_lock() {
            Ok(()) => false,
            Err(std::fs::TryLockError::WouldBlock) => true,
            Err(std::fs::TryLockError::Error(e)) => panic!("{e}"),
        };
        // The database refuses: the row goes to the spool, the locked file.
        writer.record(row("r1")).await.unwrap();
        assert!(another_process_locks());

        // Deleted while held: the next row creates the file again, and it is locked anew.
        std::fs::remove_file(&path).unwrap();
        assert!(!another_process_locks(), "nobody holds the new path yet");
        std::fs::remove_file(&path).unwrap();
        writer.record(row("r2")).await.unwrap();
        assert!(another_process_locks(), "the new spool is locked");
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.contains("\"r2\"") && !text.contains("\"r1\""),
            "{text}"
        );

        // Replaced by a file another process holds: no row goes into it, and the replay
        // neither reads nor empties it.
        std::fs::remove_file(&path).unwrap();
        let theirs = open();
        theirs.try_lock().unwrap();
        std::io::Write::write_all(&mut &theirs, b"theirs\n").unwrap();
        let refused = writer.record(row("r3")).await;
        assert!(
            matches!(&refused, Err(AuditError::SpoolIo(why)) if why.contains("another process holds")),
            "{refused:?}"
        );
        let replay = writer.replay().await;
        assert!(replay.is_err(), "{replay:?}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "theirs\n");
    }
}
