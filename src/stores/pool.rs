//! The gateway's connection pool: a semaphore of `--db-pool-size` permits and a stack of idle
//! connections, opened lazily with sqlx's own `PgConnection`.
//!
//! # Why not sqlx's pool
//! sqlx's pool (sqlx-core 0.8, `Floating::return_to_pool`) tests every connection given back to
//! it with a ping that has no timeout, after any `after_release` hook the gateway installs. A
//! connection whose peer goes silent between the hook's bounded ping and sqlx's own (a NAT or
//! load balancer dropping its state, a partition) held its slot until the kernel gave the
//! connection up, many minutes later; with a small pool every uncached lookup then waited for a
//! slot and was answered 503 (`tests/api/blackhole.rs` caught it: 2 runs in 8 on CI's machine).
//! No setting of sqlx's pool removes that ping, hence this one, which does no I/O when a
//! connection is given back:
//! - a connection goes back to the idle stack only when the last thing done on it completed
//!   ([`Conn::done`]: a committed transaction); any other ([`Conn`] dropped mid-statement, a
//!   transaction never committed, an error) is closed: `Terminate` is sent within the database
//!   timeout by a task of its own, and the socket dropped either way (the server rolls back);
//! - what sqlx's pool did for the gateway it does alike: a connection idle since before the
//!   last connection error anyone saw ([`mark_broken`], called by [`super::db::note_error`];
//!   [`idle_since_broken`]) or idle for a minute is closed instead of handed out; opening
//!   retries a refused connection and PostgreSQL's "starting up" / "too many connections" with
//!   a doubling backoff, and gives up with `PoolTimedOut` at the acquire timeout; waiters are
//!   served in arrival order (tokio's semaphore is fair).
//!
//! The idle stack is last in, first out: the connection used most recently has the warmest
//! backend (docs/performance-log.md, case d, for what rotating backends costs).
//!
//! **Replaces** sqlx's own pool for the gateway's statements (the feed's `LISTEN` keeps one of
//! its own). **Guarantee** sqlx's cannot give: no wait on the server when a connection is given
//! back, so no pool slot is held by a silent peer. **Pinned by** `tests/api/blackhole.rs` (with
//! sqlx's pool it failed 2 runs in 8: two slots held for good, every lookup 503), and by the
//! tests every statement goes through (`tests/api/pooler.rs`, `durability.rs`, `coherence.rs`).

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{ConnectOptions, Connection};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// A connection idle this long is closed rather than handed out.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// A lazily connecting pool of at most `size` connections.
#[derive(Clone)]
pub struct Pool {
    inner: Arc<Inner>,
}

struct Inner {
    opts: PgConnectOptions,
    permits: Arc<Semaphore>,
    idle: Mutex<Vec<Idle>>,
    /// Connections open: idle ones and those handed out.
    open: AtomicU32,
    /// How long an acquire waits for a permit and a connection together.
    acquire_timeout: Duration,
}

struct Idle {
    conn: PgConnection,
    since: Instant,
    bounded: bool,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("size", &self.size())
            .field("idle", &self.num_idle())
            .finish()
    }
}

impl Pool {
    /// A pool of at most `size` connections to `opts`; nothing is opened until asked for.
    pub fn new(opts: PgConnectOptions, size: u32, acquire_timeout: Duration) -> Pool {
        Pool {
            inner: Arc::new(Inner {
                opts,
                permits: Arc::new(Semaphore::new(size.max(1) as usize)),
                idle: Mutex::new(Vec::new()),
                open: AtomicU32::new(0),
                acquire_timeout,
            }),
        }
    }

    /// Where its connections connect.
    pub fn connect_options(&self) -> &PgConnectOptions {
        &self.inner.opts
    }

    /// Connections open (idle and in use).
    pub fn size(&self) -> u32 {
        self.inner.open.load(Ordering::Relaxed)
    }

    /// Connections idle in the pool.
    pub fn num_idle(&self) -> usize {
        self.inner.idle.lock().unwrap().len()
    }

    /// A connection: an idle one, or a new one. `PoolTimedOut` when neither came within the
    /// acquire timeout (all in use, or the server refuses or does not answer).
    pub async fn acquire(&self) -> Result<Conn, sqlx::Error> {
        match tokio::time::timeout(self.inner.acquire_timeout, self.acquire_unbounded()).await {
            Ok(answer) => answer,
            Err(_) => Err(sqlx::Error::PoolTimedOut),
        }
    }

    /// A new connection, never an idle one, within the acquire timeout: its socket is
    /// registered with the runtime of the task that asks (the audit writer's, on the data
    /// plane's first worker: `stores/audit/writer.rs`), where an idle one is with the runtime
    /// that opened it.
    pub async fn acquire_new(&self) -> Result<Conn, sqlx::Error> {
        let opened = async {
            let permit = self.permit().await?;
            // Idle connections hold no permit: one is closed first (waited for), so that no
            // more than `size` are open, as an ordinary acquire keeps it.
            let idle = self.inner.idle.lock().unwrap().pop();
            if let Some(idle) = idle {
                self.inner.open.fetch_sub(1, Ordering::Relaxed);
                close(idle.conn, self.inner.acquire_timeout).await;
            }
            let conn = self.inner.open_one().await?;
            Ok(self.handed_out(conn, false, permit))
        };
        match tokio::time::timeout(self.inner.acquire_timeout, opened).await {
            Ok(answer) => answer,
            Err(_) => Err(sqlx::Error::PoolTimedOut),
        }
    }

    async fn acquire_unbounded(&self) -> Result<Conn, sqlx::Error> {
        let permit = self.permit().await?;
        loop {
            let Some(idle) = self.inner.idle.lock().unwrap().pop() else {
                break;
            };
            let idle_for = idle.since.elapsed();
            if idle_for >= IDLE_TIMEOUT || idle_since_broken(idle_for) {
                self.inner.retire(idle.conn, None);
                continue;
            }
            return Ok(self.handed_out(idle.conn, idle.bounded, permit));
        }
        let conn = self.inner.open_one().await?;
        Ok(self.handed_out(conn, false, permit))
    }

    /// A slot of the pool, waited for in arrival order.
    async fn permit(&self) -> Result<OwnedSemaphorePermit, sqlx::Error> {
        self.inner
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| sqlx::Error::PoolClosed)
    }

    /// `conn` handed out in the slot `permit`.
    fn handed_out(&self, conn: PgConnection, bounded: bool, permit: OwnedSemaphorePermit) -> Conn {
        Conn {
            conn: Some(conn),
            clean: None,
            bounded,
            inner: self.inner.clone(),
            permit: Some(permit),
        }
    }
}

impl Inner {
    async fn open_one(&self) -> Result<PgConnection, sqlx::Error> {
        let mut backoff = Duration::from_millis(10);
        let max_backoff = (self.acquire_timeout / 5).max(backoff);
        loop {
            match self.opts.connect().await {
                Ok(mut conn) => {
                    if ASK_VIEWS.load(Ordering::Acquire) {
                        ask_refuses_views(&mut conn).await?;
                    }
                    self.open.fetch_add(1, Ordering::Relaxed);
                    return Ok(conn);
                }
                // The server is (re)starting: try again until the acquire timeout.
                Err(sqlx::Error::Io(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {}
                Err(sqlx::Error::Database(d))
                    if matches!(d.code().as_deref(), Some("53300" | "57P03")) => {}
                Err(e) => return Err(e),
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(max_backoff);
        }
    }

    /// Closes `conn`: `Terminate` sent by a task of its own within the acquire timeout when a
    /// runtime is there to run it, the socket dropped in any case. Never waits on the peer.
    /// `permit`, the slot it held, is given back only once it is closed: the pool never has
    /// more connections open than its size (a pooler in session mode counts closing ones).
    fn retire(&self, conn: PgConnection, permit: Option<OwnedSemaphorePermit>) {
        self.open.fetch_sub(1, Ordering::Relaxed);
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let limit = self.acquire_timeout;
            rt.spawn(async move {
                close(conn, limit).await;
                drop(permit);
            });
        }
    }
}

/// Closes `conn` (`Terminate` sent), waiting at most `limit` for it.
async fn close(conn: PgConnection, limit: Duration) {
    if let Ok(Err(e)) = tokio::time::timeout(limit, conn.close()).await {
        tracing::debug!(error = %e, "closing a database connection");
    }
}

/// A connection handed out by [`Pool::acquire`]. Dropped, it goes back to the pool if
/// [`Conn::done`] was called after its last use, and is closed otherwise.
pub struct Conn {
    /// Always `Some` until dropped.
    conn: Option<PgConnection>,
    /// Since when nothing is in flight on it and no transaction is open (None: something may
    /// be): it may be handed out again, and counts as idle from then.
    clean: Option<Instant>,
    /// Whether its session's `statement_timeout` was set ([`Conn::set_bounded`]): only such a
    /// connection runs a named statement ([`super::db::Db::named_on`]).
    bounded: bool,
    inner: Arc<Inner>,
    /// Released after the connection is back on the idle stack (fields drop after `drop`), or
    /// once it is closed.
    permit: Option<OwnedSemaphorePermit>,
}

impl Conn {
    /// The last thing done on this connection completed, and no transaction is open: it may go
    /// back to the pool. Any later use (`&mut *conn`) makes it unfit again until the next call.
    pub fn done(&mut self) {
        self.clean = Some(Instant::now());
    }

    /// Whether this connection's session has the statement timeout set ([`Conn::set_bounded`]).
    pub fn bounded(&self) -> bool {
        self.bounded
    }

    /// Its session's `statement_timeout` was set (`SET statement_timeout`, outside any
    /// transaction): it stays with the connection, idle or handed out, until it is closed.
    pub fn set_bounded(&mut self) {
        self.bounded = true;
    }

    /// Closes the connection instead of giving it back (it may be mid-statement, or presumed
    /// dead).
    pub fn close(mut self) {
        self.clean = None;
    }
}

impl std::ops::Deref for Conn {
    type Target = PgConnection;

    fn deref(&self) -> &PgConnection {
        self.conn.as_ref().expect("a connection until dropped")
    }
}

impl std::ops::DerefMut for Conn {
    fn deref_mut(&mut self) -> &mut PgConnection {
        self.clean = None;
        self.conn.as_mut().expect("a connection until dropped")
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        let Some(conn) = self.conn.take() else {
            return;
        };
        let Some(since) = self.clean else {
            self.inner.retire(conn, self.permit.take());
            return;
        };
        let now = Instant::now();
        let mut idle = self.inner.idle.lock().unwrap();
        // The oldest idle ones are at the bottom: those idle past the limit are closed here,
        // so a pool that shrank under lighter load does not keep them open for ever.
        let expired = idle
            .iter()
            .take_while(|i| now.duration_since(i.since) >= IDLE_TIMEOUT)
            .count();
        let stale: Vec<Idle> = idle.drain(..expired).collect();
        idle.push(Idle {
            conn,
            since,
            bounded: self.bounded,
        });
        drop(idle);
        for i in stale {
            self.inner.retire(i.conn, None);
        }
    }
}

/// When a connection error was last seen: nanoseconds since [`epoch`] plus one (0: never).
/// Process-wide: a second pool in the same process only reconnects a little more.
static BROKEN_AT: AtomicU64 = AtomicU64::new(0);

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_ns() -> u64 {
    epoch().elapsed().as_nanos() as u64 + 1
}

/// Connections idle since before this moment are presumed dead, and the next connection opened
/// asks the server again whether it refuses views ([`refuses_views`]: it may be another server).
pub fn mark_broken() {
    BROKEN_AT.fetch_max(now_ns(), Ordering::AcqRel);
    ASK_VIEWS.store(true, Ordering::Release);
}

/// Whether the server has `restrict_nonsystem_relation_kind` (PostgreSQL's fix of
/// CVE-2024-7348: 17, and the minor releases of August 2024, 16.4, 15.8, 14.13, 13.16, 12.20),
/// as it last answered a connection this process opened: [`super::db`]'s settings set it in
/// every transaction where it has (a view in place of a table of Console's then fails to open
/// before its code runs as the gateway). Asked of the server, not read from the version it
/// reports: a pooler reports the version it first saw (PgBouncer keeps it until its connect
/// string changes), and a backport keeps the older number. Process-wide, as `BROKEN_AT` is.
pub fn refuses_views() -> bool {
    REFUSES_VIEWS.load(Ordering::Acquire)
}

/// The value of `restrict_nonsystem_relation_kind` that every function, transaction and session
/// of the gateway's runs with where the server has the setting ([`refuses_views`]): a view or
/// foreign table that is not PostgreSQL's own fails to open, so a view Console's role puts in
/// place of one of its tables is refused before any code of its runs as the function's caller
/// (the serve login on a cold lookup) or owner. Migration 0036 sets it on the functions,
/// `migrate` again where a function lacks it (`schema::restrict_functions`), `db`'s settings in
/// every transaction. A macro, not a `const`, so that each SQL text is one literal
/// (`concat!`); a unit test holds migration 0036's text to it.
macro_rules! restricted_kinds {
    () => {
        "view, foreign-table"
    };
}
pub(crate) use restricted_kinds;

/// Whether the server's encoding is UTF-8, as it last answered a connection this process opened
/// (asked with [`refuses_views`]); true until an answer came. Where it is, [`super::sql_text`]
/// writes a character beyond ASCII as its code point (`\u00E9`), so every byte of the gateway's
/// SQL text is ASCII whatever `client_encoding` a session was left with; a server of another
/// encoding refuses such an escape beyond `\u007F` (all of them before PostgreSQL 13,
/// `SQL_ASCII` always), so there the character is written as sqlx's UTF-8 bytes, as before
/// 2026-12-02.
pub fn server_utf8() -> bool {
    SERVER_UTF8.load(Ordering::Acquire)
}

/// [`server_utf8`]'s answer.
static SERVER_UTF8: AtomicBool = AtomicBool::new(true);

/// The server's last answer ([`refuses_views`]); false until one came.
static REFUSES_VIEWS: AtomicBool = AtomicBool::new(false);

/// Every connection opened asks ([`ask_refuses_views`]) until one has had an answer: at first,
/// and after a connection error ([`mark_broken`]: a failover may have put another server
/// there). Several opened at once each ask before their first transaction; a connection open
/// already runs with the last answer.
static ASK_VIEWS: AtomicBool = AtomicBool::new(true);

/// Asks the server on `conn`, a connection just opened, whether it has the setting, and keeps
/// the answer ([`REFUSES_VIEWS`]). One simple query: one message, no statement prepared, so a
/// transaction pooler cannot hand its parts to two server connections (an unnamed statement
/// outside a transaction can be: it broke other clients' statements behind PgBouncer,
/// `tests/api/pooler.rs`).
async fn ask_refuses_views(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    use sqlx::Row;
    let row = sqlx::Executor::fetch_one(
        &mut *conn,
        sqlx::raw_sql(
            "SELECT pg_catalog.current_setting('restrict_nonsystem_relation_kind', true) IS NOT NULL, \
             pg_catalog.current_setting('server_encoding') OPERATOR(pg_catalog.=) 'UTF8'",
        ),
    )
    .await?;
    let has: bool = row.try_get(0)?;
    let utf8: bool = row.try_get(1)?;
    REFUSES_VIEWS.store(has, Ordering::Release);
    SERVER_UTF8.store(utf8, Ordering::Release);
    ASK_VIEWS.store(false, Ordering::Release);
    Ok(())
}

/// A connection idle for `idle_for` went idle before the last connection error (with its age:
/// it was opened before it).
pub fn idle_since_broken(idle_for: Duration) -> bool {
    let at = BROKEN_AT.load(Ordering::Acquire);
    at != 0 && idle_for.as_nanos() as u64 > now_ns().saturating_sub(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_connections_idle_since_before_the_error_are_stale() {
        mark_broken();
        std::thread::sleep(Duration::from_millis(20));
        assert!(idle_since_broken(Duration::from_secs(1)));
        assert!(!idle_since_broken(Duration::from_millis(1)));
    }
}
