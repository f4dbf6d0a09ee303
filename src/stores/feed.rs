//! The change feed: keeps the caches coherent with the database (004 §3.4).
//!
//! Triggers installed by `migrate` write one `rbac_change_log` row per change (the admin it
//! affects, or NULL for "everyone") and `NOTIFY rbac_gateway_changes`. This task LISTENs (a
//! notification wakes it at once) and, on every wake-up and at least every [`POLL`], reads the
//! log from its cursor and evicts exactly the affected cache entries.
//!
//! The cursor is a transaction id: each read also takes the snapshot's xmin, and the next read
//! asks for rows with `txid >= xmin`, so rows of transactions that commit out of order are never
//! skipped. Of those, only rows the last read could not see are returned ([`Cursor`]: its whole
//! snapshot is kept, and a row whose transaction that snapshot shows committed was read then).
//! So a transaction left open for hours (which holds xmin back) does not make every read return
//! every change since it began, four times a second, until the read outgrows its timeout and the
//! feed stops. A dropped LISTEN connection, a lost notification or a PostgreSQL restart only delays
//! the next read; the read catches up from the durable log. When the gateway cannot tell what it
//! missed (no successful read for longer than [`BLIND_LIMIT`]), it clears every cache.
//!
//! After a connection storm (every backend terminated) the lost LISTEN connection or the first
//! failed read marks the pool's idle connections stale (`pool::mark_broken`) and the read is
//! retried at once on a fresh connection, so a change committed right after the storm is
//! applied within milliseconds, not one POLL per dead connection.
//!
//! With `--mapping-source database`, the same read also returns the latest mapping activation
//! (`rbac_mapping_activations`), handed to the mapping task through a watch channel: an
//! activation reaches every replica within one [`POLL`] (at once when its NOTIFY arrives).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::stores::db::Db;
use sqlx::postgres::PgListener;

use crate::runtime::metrics::Metrics;
use crate::stores::identity::Identity;

pub const CHANNEL: &str = "rbac_gateway_changes";
/// Longest time between two reads of the log, notification or not.
pub const POLL: Duration = Duration::from_millis(250);
/// Without a successful read for this long, the caches are cleared on recovery.
pub const BLIND_LIMIT: Duration = Duration::from_secs(3600);

/// SQL text: the server's token (see [`Cursor`]), or its start time while the table is empty.
macro_rules! server_token {
    () => {
        "coalesce((SELECT token FROM rbac_gateway_feed_epoch), \
         'started ' || extract(epoch FROM pg_catalog.pg_postmaster_start_time())::text)"
    };
}

/// SQL text: the log's rows the snapshot `s.prev` did not show committed (see [`Cursor`]),
/// joined to `s` so that a read that finds none still answers its one row.
macro_rules! unread_rows {
    () => {
        " FROM s LEFT JOIN LATERAL ( \
            SELECT id, admin_id, token_sha256 FROM rbac_change_log \
             WHERE txid >= pg_catalog.pg_snapshot_xmax(s.prev) \
            UNION ALL \
            SELECT id, admin_id, token_sha256 FROM rbac_change_log \
             WHERE txid = ANY (ARRAY(SELECT pg_catalog.pg_snapshot_xip(s.prev))) \
         ) c ON true ORDER BY c.id"
    };
}

const READ_SQL: &str = concat!(
    "WITH s AS (SELECT pg_catalog.pg_current_snapshot() AS snap, $1::text::pg_snapshot AS prev) \
     SELECT s.snap::text, c.id, c.admin_id, c.token_sha256, NULL::bigint, NULL::text, ",
    server_token!(),
    unread_rows!()
);

/// [`READ_SQL`] that also reads the active mapping activation (`--mapping-source database`):
/// the same 250 ms read tells every replica of an activation, through a transaction pooler too.
const READ_WITH_MAPPING_SQL: &str = concat!(
    "WITH s AS (SELECT pg_catalog.pg_current_snapshot() AS snap, $1::text::pg_snapshot AS prev), \
          a AS (SELECT id, version FROM rbac_mapping_activations ORDER BY id DESC LIMIT 1) \
     SELECT s.snap::text, c.id, c.admin_id, c.token_sha256, (SELECT id FROM a), \
            (SELECT version FROM a), ",
    server_token!(),
    unread_rows!()
);

/// Where the next read of the log starts: the last read's snapshot (`xmin:xmax:xip`, as
/// PostgreSQL writes a `pg_snapshot`). A row not read yet is one whose transaction that snapshot
/// did not show committed: at or past its xmax, or among its xip (two index lookups on `txid`,
/// so rows committed long ago behind an open transaction are not even scanned again; the two
/// sets are disjoint, xip lying below xmax). Every row it showed committed
/// was returned by that read or an earlier one. Transaction ids, not row ids: a transaction may
/// take its id before another and write its row after it, so row ids do not follow commits (a
/// cursor of the highest id read skipped such rows).
///
/// A snapshot means something on the server that took it only: with the server's token beside
/// it (`rbac_gateway_feed_epoch`, an unlogged table: emptied by crash recovery and empty on a
/// promoted standby, whose transaction ids may repeat ones the old snapshot shows finished), a
/// read on another server is known, and every cache is cleared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub snapshot: String,
    /// The server's token when the snapshot was taken.
    pub server: String,
}

/// `e`, or what it means on a hot standby: its snapshots do not list the primary's transactions
/// in progress (a row of one would look committed before it was, and be skipped), and it cannot
/// read the unlogged token, so the feed cannot follow it.
async fn standby_or(pool: &Db, e: sqlx::Error) -> sqlx::Error {
    let standby = sqlx::query_scalar::<_, bool>("SELECT pg_catalog.pg_is_in_recovery()")
        .persistent(false)
        .fetch_one(pool)
        .await;
    match standby {
        Ok(true) => sqlx::Error::Protocol(format!(
            "the change feed's database is a hot standby (pg_is_in_recovery): its snapshots cannot say which changes are still to come; give --database-url the primary ({e})"
        )),
        _ => e,
    }
}

/// Makes the server's token if it is missing (first use, or after a crash restart or a
/// failover emptied the table). Best effort: a role without INSERT on the table (deploy/
/// gateway-grants.sql grants it) is warned, and the feed goes on with the server's start time in
/// its place, which a crash restart does not change.
async fn make_token(pool: &Db) {
    let there =
        sqlx::query_scalar::<_, bool>("SELECT EXISTS (SELECT 1 FROM rbac_gateway_feed_epoch)")
            .persistent(false)
            .fetch_one(pool)
            .await;
    if matches!(there, Ok(true)) {
        return;
    }
    let made = sqlx::query(
        "INSERT INTO rbac_gateway_feed_epoch DEFAULT VALUES ON CONFLICT (id) DO NOTHING",
    )
    .persistent(false)
    .execute(pool)
    .await;
    if let Err(e) = made {
        tracing::warn!(error = %e, "change feed: cannot make the database server's token (rbac_gateway_feed_epoch; the gateway's role needs INSERT on it, deploy/gateway-grants.sql): a crash restart of the database is known by the server's start time only, which it does not change");
    }
}

impl Cursor {
    /// The snapshot's xmin: the oldest transaction it saw in progress.
    pub fn xmin(&self) -> &str {
        self.snapshot.split(':').next().unwrap_or_default()
    }
}

/// The active mapping activation as the feed last read it: its id and version (None: no
/// version was ever activated).
pub type ActiveMapping = Option<(i64, String)>;

/// One change: log id, affected admin (None: everyone), session token hash.
pub type Change = (i64, Option<String>, Option<String>);

/// One read of the log: the new cursor and the changes since the old one.
pub struct Batch {
    pub cursor: Cursor,
    pub changes: Vec<Change>,
    /// The active mapping activation, when asked for.
    pub mapping: ActiveMapping,
}

/// Reads the log from `cursor`; with `mapping`, also the active mapping activation.
pub async fn read(pool: &Db, cursor: &Cursor, mapping: bool) -> Result<Batch, sqlx::Error> {
    type Row = (
        String,
        Option<i64>,
        Option<String>,
        Option<String>,
        Option<i64>,
        Option<String>,
        String,
    );
    let sql = if mapping {
        READ_WITH_MAPPING_SQL
    } else {
        READ_SQL
    };
    let rows: Vec<Row> = match sqlx::query_as(sql)
        .persistent(false)
        .bind(&cursor.snapshot)
        .fetch_all(pool)
        .await
    {
        Ok(rows) => rows,
        Err(e) => return Err(standby_or(pool, e).await),
    };
    let active = rows.first().and_then(|r| r.4.zip(r.5.clone()));
    let next = match rows.first() {
        Some(r) => Cursor {
            snapshot: r.0.clone(),
            server: r.6.clone(),
        },
        None => cursor.clone(),
    };
    let changes = rows
        .into_iter()
        .filter_map(|(_, id, a, t, _, _, _)| id.map(|id| (id, a, t)))
        .collect();
    Ok(Batch {
        cursor: next,
        changes,
        mapping: active,
    })
}

/// Rows older than this are deleted from the log (every gateway may do it; it is idempotent).
pub const RETAIN: &str = "1 day";
const PRUNE_EVERY: Duration = Duration::from_secs(600);

async fn prune(pool: &Db, limit: Duration) {
    let sql = format!(
        "DELETE FROM rbac_change_log WHERE created_at_utc < pg_catalog.now() - interval '{RETAIN}'"
    );
    match crate::stores::db::within(limit, sqlx::query(&sql).persistent(false).execute(pool)).await
    {
        Ok(r) if r.rows_affected() > 0 => {
            tracing::info!(rows = r.rows_affected(), "change feed: pruned old log rows")
        }
        Ok(_) => {}
        // A gateway without DELETE on the log still works, but the log grows: said at warn, once
        // per prune (every PRUNE_EVERY), so an operator sees why.
        Err(e) => {
            tracing::warn!(error = %e, "change feed: cannot prune the log's rows older than a day (it grows until a prune succeeds; the gateway's role needs DELETE on rbac_change_log, deploy/gateway-grants.sql)")
        }
    }
}

/// The new xmin is older than the cursor (both are xid8 in text).
pub fn went_backwards(cursor: &str, xmin: &str) -> bool {
    match (cursor.parse::<u64>(), xmin.parse::<u64>()) {
        (Ok(c), Ok(x)) => x < c,
        _ => false,
    }
}

/// The cursor of a read that starts now and has read nothing: the current snapshot.
pub async fn current_cursor(pool: &Db) -> Result<Cursor, sqlx::Error> {
    make_token(pool).await;
    let cursor = sqlx::query_as(concat!(
        "SELECT pg_catalog.pg_current_snapshot()::text AS first_cursor, ",
        server_token!()
    ))
    .persistent(false)
    .fetch_one(pool)
    .await;
    match cursor {
        Ok((snapshot, server)) => Ok(Cursor { snapshot, server }),
        Err(e) => Err(standby_or(pool, e).await),
    }
}

/// Without a successful read for this long, `/readyz` answers 503: changes are not applied
/// within the promised second.
pub const STALE: Duration = Duration::from_secs(3);

/// When the feed last read the log, and why its last attempt failed: `/readyz` reads it.
pub struct Health {
    started: Instant,
    state: std::sync::Mutex<(Option<Instant>, Option<String>)>,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            started: Instant::now(),
            state: Default::default(),
        }
    }
}

impl Health {
    fn state(&self) -> std::sync::MutexGuard<'_, (Option<Instant>, Option<String>)> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn read_ok(&self, metrics: &Metrics) {
        *self.state() = (Some(Instant::now()), None);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        metrics.feed_last_read.set(now as i64);
    }

    fn failed(&self, why: String) {
        self.state().1 = Some(why);
    }

    /// Why the caches may be stale beyond the bound: no read yet, or none for [`STALE`].
    pub fn stale(&self) -> Option<String> {
        let (last, why) = self.state().clone();
        let why = why
            .map(|w| format!(" (last error: {w})"))
            .unwrap_or_default();
        match last {
            None if self.started.elapsed() > STALE || !why.is_empty() => {
                Some(format!("change feed has not read rbac_change_log yet{why}"))
            }
            None => Some("change feed starting".to_string()),
            Some(t) if t.elapsed() > STALE => Some(format!(
                "change feed: no read of rbac_change_log for {:.1} s{why}: changes are not applied",
                t.elapsed().as_secs_f64()
            )),
            Some(_) => None,
        }
    }
}

/// A pool of one connection for a listener, made with `pool`'s options. A listener dropped
/// (its read failed, its LISTEN timed out) sends `UNLISTEN *` before giving its connection
/// back, with no timeout: on a silent connection that never ends. In a pool of its own, only
/// that pool's one slot waits, not one of the slots the request path draws from.
///
/// It connects to [`Db::direct_options`]: LISTEN is session state, which a transaction pooler
/// cannot keep (`--direct-database-url`).
fn listener_pool(db: &Db, limit: Duration) -> sqlx::PgPool {
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(limit)
        .idle_timeout(None)
        .connect_lazy_with(db.direct_options().clone())
}

/// Gives a listener up without waiting on it. sqlx's `PgListener` sends `UNLISTEN *` when it is
/// dropped, in a task with no timeout: on a silent connection (a NAT that dropped its state) that
/// task, and the connection's socket, would live until the kernel gave the connection up, about
/// 15 minutes. Dropped inside a runtime of its own that is shut down at once, the task is
/// cancelled and the connection closed (the backend ends its LISTEN with the session): the
/// listener holds nothing past the moment it is given up.
fn abandon(listener: Option<PgListener>) {
    let Some(listener) = listener else { return };
    let spawned = std::thread::Builder::new()
        .name("rbac-gateway-unlisten".into())
        .spawn(move || {
            match tokio::runtime::Builder::new_current_thread().build() {
                Ok(rt) => {
                    rt.block_on(async move { drop(listener) });
                    rt.shutdown_timeout(Duration::ZERO);
                }
                Err(e) => {
                    // Dropped here, outside any runtime, its UNLISTEN task would panic: left
                    // open instead (the kernel closes it in time).
                    tracing::warn!(error = %e, "change feed: no runtime to close the listener in; left to the kernel");
                    std::mem::forget(listener);
                }
            }
        });
    if let Err(e) = spawned {
        // The closure, listener included, was dropped here: its UNLISTEN runs as sqlx does it.
        tracing::warn!(error = %e, "change feed: no thread to close the listener in; dropped as it is");
    }
}

/// What the change feed works on: the pool it reads through, the caches it keeps coherent, its
/// health and metrics, the bound of each step, and (database mode) where it reports the
/// active mapping.
pub struct Feed {
    pub pool: Db,
    pub identity: Arc<Identity>,
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
    /// The database timeout, every step's bound.
    pub limit: Duration,
    pub mapping: Option<tokio::sync::watch::Sender<ActiveMapping>>,
}

impl Feed {
    /// Follows the feed until the process ends.
    ///
    /// Every database step is bounded by `limit` (the database timeout): a connection that stays
    /// open and carries nothing (a NAT or firewall that dropped its state, a failover behind a
    /// virtual address) fires no timeout of the server's own, and a read waiting on it would stop
    /// the feed until the kernel gave the connection up, many minutes later.
    pub async fn follow(self) {
        Follower {
            feed: self,
            cursor: None,
            seen: HashSet::new(),
            last_ok: Instant::now(),
            last_prune: Instant::now(),
            listener: None,
            listening_since: Instant::now(),
            failures: 0,
            pooled: false,
        }
        .run()
        .await
    }
}

/// The feed's follower: what it reads with, where it is, and its listener. Each turn of
/// [`Follower::run`] is a sequence of steps, one method each.
struct Follower {
    feed: Feed,
    /// Where the next read starts; None until the first cursor is taken. The past does not
    /// matter: the feed starts at the current snapshot and drops whatever was cached before.
    cursor: Option<Cursor>,
    /// The rows the last read returned (a row is applied once whatever the read returns).
    seen: HashSet<i64>,
    /// When the log was last read.
    last_ok: Instant,
    /// When the log was last pruned.
    last_prune: Instant,
    listener: Option<PgListener>,
    /// When the listener's LISTEN was answered.
    listening_since: Instant,
    /// Consecutive failed reads: the first is retried at once (after a connection storm it
    /// drew a dead connection, and the retry gets a fresh one); later ones wait a POLL.
    failures: u32,
    /// The direct URL reaches a transaction pooler, not sessions: no LISTEN (see
    /// [`Follower::check_pooled`]).
    pooled: bool,
}

impl Follower {
    /// The loop: the listener (re)connected, the first cursor taken or the log read and
    /// applied, then a wait for a notification or the poll.
    async fn run(mut self) {
        loop {
            if self.listener.is_none() && !self.pooled {
                self.check_pooled().await;
            }
            // (Re)connect the listener; failures only cost latency, the poll still runs.
            if self.listener.is_none() && !self.pooled {
                self.listen().await;
            }
            let Some(cur) = self.cursor.clone() else {
                self.start().await;
                continue;
            };
            match crate::stores::db::within(
                self.feed.limit,
                read(&self.feed.pool, &cur, self.feed.mapping.is_some()),
            )
            .await
            {
                Ok(batch) => self.apply(cur, batch).await,
                Err(e) => {
                    if self.read_failed(e) {
                        continue;
                    }
                }
            }
            self.drop_silent_listener();
            self.wait().await;
        }
    }

    /// Whether the URL is served by a transaction pooler: then no LISTEN.
    async fn check_pooled(&mut self) {
        match self.feed.pool.has_sessions().await {
            Ok(true) => {}
            Ok(false) => {
                // A LISTEN would stay on a server connection the pooler hands to other
                // clients, whose statements then fail on its notifications.
                self.pooled = true;
                tracing::info!(
                    poll_ms = POLL.as_millis() as u64,
                    "change feed: the database URL is served by a transaction pooler (two connections shared one backend): no LISTEN, the log is read every poll; set --direct-database-url for notifications"
                );
            }
            // The LISTEN fails the same way, and is tried again.
            Err(e) => {
                tracing::debug!(error = %e, "change feed: cannot tell whether the URL has sessions")
            }
        }
    }

    /// LISTENs on a connection of its own, and opens one for the read beside it.
    async fn listen(&mut self) {
        let limit = self.feed.limit;
        let pool = &self.feed.pool;
        let listen = async {
            let mut l = PgListener::connect_with(&listener_pool(pool, limit)).await?;
            // A lost connection is reported at once, not after sqlx has opened another
            // and LISTENed on it, which this loop would drop unused: it reconnects on a
            // pool of its own (see `listener_pool`).
            l.eager_reconnect(false);
            l.listen(CHANNEL).await?;
            Ok(l)
        };
        // After a lost connection the pool's idle ones are stale as well, and the read
        // would start opening a fresh one only once LISTEN is back. Opened side by
        // side, the two backend starts (the slowest steps after a connection storm) cost
        // the time of one; the connection goes back to the pool for the read.
        let (listened, warmed) =
            tokio::join!(crate::stores::db::within(limit, listen), pool.acquire());
        match warmed {
            Ok(mut conn) => conn.done(),
            Err(e) => {
                crate::stores::db::note_error(&e);
                tracing::debug!(error = %e, "change feed: cannot open a connection for the read");
            }
        }
        match listened {
            Ok(l) => {
                tracing::info!("change feed: listening");
                self.listener = Some(l);
                self.listening_since = Instant::now();
            }
            Err(e) => {
                crate::stores::db::note_error(&e);
                tracing::warn!(error = %e, "change feed: cannot LISTEN")
            }
        }
    }

    /// Takes the first cursor, or waits a POLL when it cannot.
    async fn start(&mut self) {
        match crate::stores::db::within(self.feed.limit, current_cursor(&self.feed.pool)).await {
            Ok(c) => {
                self.cursor = Some(c);
                self.last_ok = Instant::now();
                // Requests may have filled the caches before this first cursor (the
                // database answered them first, or this read was slow). A change committed
                // before it is below the cursor and will never be read, so what they cached
                // is dropped: from here on every change is seen.
                self.feed.identity.invalidate_all();
            }
            Err(e) => {
                crate::stores::db::note_error(&e);
                self.feed.health.failed(e.to_string());
                tokio::time::sleep(POLL).await
            }
        }
    }

    /// A read from `cur` applied: the mapping activation told, the caches cleared when the
    /// server changed or went back, the log pruned when due, each new change evicted.
    async fn apply(&mut self, cur: Cursor, batch: Batch) {
        self.failures = 0;
        self.feed.health.read_ok(&self.feed.metrics);
        if let Some(tx) = &self.feed.mapping {
            // Wakes the mapping task only when the activation changed.
            tx.send_if_modified(|seen| {
                let changed = *seen != batch.mapping;
                if changed {
                    seen.clone_from(&batch.mapping);
                }
                changed
            });
        }
        if self.last_ok.elapsed() > BLIND_LIMIT {
            tracing::warn!("change feed: blind for too long; clearing every cache");
            self.feed.identity.invalidate_all();
        }
        let next = batch.cursor;
        if next.server != cur.server {
            // A crash restart or a failover: the old snapshot says nothing of this
            // server's transactions (ids it shows finished may be handed out again).
            tracing::warn!(from = %cur.server, to = %next.server, "change feed: the database server changed (crash restart or failover); clearing every cache");
            self.feed.identity.invalidate_all();
            self.seen.clear();
            if next.server.starts_with("started ") {
                // The table was emptied: a token again, for the next crash.
                make_token(&self.feed.pool).await;
            }
        } else if went_backwards(cur.xmin(), next.xmin()) {
            // A database restored from a backup: the log cannot say what changed since
            // our cursor.
            tracing::warn!(from = %cur.snapshot, to = %next.snapshot, "change feed: transaction ids went backwards; clearing every cache");
            self.feed.identity.invalidate_all();
            self.seen.clear();
        }
        if self.last_prune.elapsed() > PRUNE_EVERY {
            self.last_prune = Instant::now();
            prune(&self.feed.pool, self.feed.limit).await;
        }
        self.last_ok = Instant::now();
        let mut fresh = HashSet::with_capacity(batch.changes.len());
        for (id, admin, token) in &batch.changes {
            fresh.insert(*id);
            if self.seen.contains(id) {
                continue;
            }
            self.feed.metrics.feed_events.inc();
            match admin {
                None => self.feed.identity.invalidate_all(),
                Some(admin) => {
                    self.feed
                        .identity
                        .invalidate_admin(admin, token.as_deref())
                        .await
                }
            }
        }
        // Rows below the new xmin, or read already, will not be returned again (kept
        // one read more: a row is applied once whatever the read returns).
        self.seen = fresh;
        self.cursor = Some(next);
        // Counted once applied: a read counted after a commit has evicted for it.
        self.feed.metrics.feed_reads.inc();
    }

    /// A failed read: said, the listener given up. True when it is the first in a row, to be
    /// retried at once.
    fn read_failed(&mut self, e: sqlx::Error) -> bool {
        crate::stores::db::note_error(&e);
        self.feed.health.failed(e.to_string());
        tracing::warn!(error = %e, "change feed: cannot read the log; will catch up");
        abandon(self.listener.take());
        self.failures += 1;
        self.failures == 1
    }

    /// A connection error or timeout anywhere since the LISTEN (a failover, a partition, a
    /// NAT that dropped its state) may have left the listener's connection silent too, and a
    /// silent listener never says so: it is given up and LISTEN sent again on a fresh one.
    fn drop_silent_listener(&mut self) {
        if self.listener.is_some()
            && crate::stores::pool::idle_since_broken(self.listening_since.elapsed())
        {
            tracing::info!("change feed: a database connection failed since LISTEN; listening again on a fresh one");
            abandon(self.listener.take());
        }
    }

    /// Sleeps until a notification or the poll interval, whichever comes first.
    async fn wait(&mut self) {
        let Some(l) = self.listener.as_mut() else {
            return tokio::time::sleep(POLL).await;
        };
        match tokio::time::timeout(POLL, l.try_recv()).await {
            Ok(Ok(Some(_))) | Err(_) => {}
            Ok(lost) => {
                // The server dropped a connection: the pool's idle ones are likely gone
                // too (failover, pg_terminate_backend, a pooler restart), so none of them
                // is handed out again; the next read runs at once on a fresh one.
                crate::stores::pool::mark_broken();
                match lost {
                    Err(e) => {
                        tracing::warn!(error = %e, "change feed: listener connection lost; reconnecting")
                    }
                    Ok(_) => tracing::warn!(
                        "change feed: listener connection closed by the server; reconnecting"
                    ),
                }
                abandon(self.listener.take());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn detects_a_cursor_from_the_future() {
        assert!(super::went_backwards("1000", "999"));
        assert!(!super::went_backwards("1000", "1000"));
        assert!(!super::went_backwards("1000", "1001"));
    }
}
