//! The database pool. The pool connects lazily: the gateway starts
//! (and answers 503 where it must) while PostgreSQL is down, and recovers by itself.
//!
//! # Connection storms
//! When PostgreSQL terminates every backend at once (failover, `pg_terminate_backend`, a
//! PgBouncer restart), every idle connection in the pool is dead, and nothing notices until a
//! statement is sent on one. Pinging each connection before handing it out
//! (`test_before_acquire`) would cost a round trip on every cache miss and ticket check, so
//! instead: the first connection error anyone sees ([`note_error`]) marks the time
//! ([`super::pool::mark_broken`]), and the pool ([`super::pool`]) closes every connection that
//! has been idle since before that mark (no round trip: an atomic load and a clock read), so the
//! next acquire opens a fresh one. Callers on the request path retry a statement once after a connection error
//! ([`retry_once`]), which then runs on a fresh connection.

use std::future::Future;
use std::str::FromStr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use sqlx::postgres::PgConnectOptions;

use super::lookup::{Lookup, STANDBY_GUARD};
/// What [`Db::acquire`] hands out.
pub use super::pool::Conn;
use super::pool::{mark_broken, Pool};

/// Why the database cannot be reached, as a connection attempt of its own reports it. The pool
/// only says "pool timed out while waiting for an open connection" whatever the cause (refused,
/// unknown host, wrong password, no such database); an operator needs the cause. One direct
/// connection, outside the pool, closed at once; None when it succeeds.
pub async fn why_unreachable(db: &Db, within: Duration) -> Option<String> {
    use sqlx::{ConnectOptions, Connection};
    let opts = db.pool.connect_options();
    match tokio::time::timeout(within, opts.connect()).await {
        Ok(Ok(conn)) => {
            // Bounded as well: a peer may accept and then go silent.
            if let Err(e) = self::within(within, conn.close()).await {
                tracing::debug!(error = %e, "closing the probe connection");
            }
            None
        }
        Ok(Err(e)) => Some(e.to_string()),
        Err(_) => Some(format!("no answer within {} ms", within.as_millis())),
    }
}

/// `lookup`, or a timed-out error after `limit`: a database whose connections stay open and
/// carry nothing (a partition, a stopped server) answers nothing, and no server-side timeout
/// fires. A timeout marks the pool's connections stale ([`mark_broken`]) before `lookup`, and
/// the connection it holds, is dropped: the pool closes a connection dropped mid-use (it
/// never waits on it), and opens fresh ones instead of those idle since.
pub async fn within<T>(
    limit: Duration,
    lookup: impl std::future::Future<Output = Result<T, sqlx::Error>>,
) -> Result<T, sqlx::Error> {
    // Pinned here, so that a timeout drops it only when this returns, after the mark.
    let mut lookup = std::pin::pin!(lookup);
    match tokio::time::timeout(limit, lookup.as_mut()).await {
        Ok(answer) => answer,
        Err(_) => {
            mark_broken();
            Err(sqlx::Error::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!(
                    "the database did not answer within {} ms",
                    limit.as_millis()
                ),
            )))
        }
    }
}

/// [`within`] as a method, for a chain of statements: `.fetch_one(&mut *tx).bounded(limit)`.
pub trait Bounded<T>: std::future::Future<Output = Result<T, sqlx::Error>> + Sized {
    fn bounded(self, limit: Duration) -> impl std::future::Future<Output = Result<T, sqlx::Error>> {
        within(limit, self)
    }
}

impl<T, F: std::future::Future<Output = Result<T, sqlx::Error>>> Bounded<T> for F {}

/// The gateway's database: a lazily connecting pool, used only in ways that stay correct when a
/// transaction-pooling PgBouncer stands between the gateway and PostgreSQL (issue 44).
///
/// # Architecture Invariant: no statement or session state outlives a transaction a pooler sees
/// Behind transaction pooling, a client's server connection is its own only from `BEGIN` to
/// `COMMIT`; between two transactions (or, outside one, between two of a statement's protocol
/// round trips: sqlx parses and describes, syncs, then binds and executes) the pooler may hand it
/// to another client. sqlx's named prepared statements (`sqlx_s_N`) live on a server connection,
/// so another client's `sqlx_s_14` could run with our parameters: a session resolved to someone
/// else's answer. Hence:
/// - every statement runs inside a transaction: [`Db`] as an executor (`.fetch_one(&db)`) wraps
///   each statement in one, [`Db::begin`] opens one for several, and [`Db::one_round_trip`]
///   sends one statement with its values written in as one simple query (an implicit
///   transaction that ends with the message: the request path's lookups and the audit batches
///   unless they are named, one round trip each, issue 51);
/// - every statement is unnamed (`.persistent(false)`, checked on the source by
///   `tests/architecture.rs`; [`Db`] as an executor also forces it, and a simple query has no
///   statement to name), so nothing is left behind on the server connection; the one exception
///   is [`Db::named_on`] (the request path's lookups, [`Db::lookup`], and the audit writer's
///   INSERT of fresh rows), whose statements are named only once the pool's connections are
///   known to be the gateway's own sessions (see [`Statements`]);
/// - no startup parameter a pooler must be told to ignore: `statement_timeout` is set with
///   `SET LOCAL` in each transaction's `BEGIN` (and, on a connection of the gateway's own that
///   runs named statements, once for its session), and `extra_float_digits` is not sent;
/// - what needs a session (`LISTEN`, the sweep's session-level advisory lock) uses
///   [`Db::direct_options`], `--direct-database-url`, a connection that bypasses the pooler.
///
/// # Architecture Invariant: no pool slot waits on a silent peer past the timeout
/// Every use is bounded by `limit` through [`within`], which marks the pool's connections stale
/// before dropping the work in progress; the pool ([`super::pool`]) does no I/O when a
/// connection is given back (sqlx's own pool pings it then, with no timeout), and closes one
/// given back mid-use.
#[derive(Clone, Debug)]
pub struct Db {
    pool: Pool,
    direct: std::sync::Arc<PgConnectOptions>,
    limit: Duration,
    /// Whether [`Db::direct_options`] reaches a session of its own (None: not known yet).
    sessions: std::sync::Arc<tokio::sync::OnceCell<bool>>,
    /// How [`Db::lookup`] and the audit writer send their statements ([`Db::named_on`]):
    /// [`UNKNOWN`], [`NAMED`] or [`SIMPLE`].
    verdict: std::sync::Arc<AtomicU8>,
    /// Whether the pool connects where [`Db::direct_options`] does (no `--direct-database-url`):
    /// only then does the probe's answer speak for the pool's connections.
    pool_is_direct: bool,
    /// Whether every transaction begins `READ ONLY` ([`Db::connect_read_only`]).
    read_only: bool,
    /// Whether every transaction fails on a standby ([`Db::connect_lookups`]: `STANDBY_GUARD`).
    primary_only: bool,
}

/// How [`Db::lookup`] and the audit writer's INSERT of fresh rows send their statements
/// (`--db-statements`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Statements {
    /// Named when the pool's URL is the direct one (no `--direct-database-url`) and
    /// [`Db::has_sessions`] found sessions; simple queries until then, and for good after a
    /// named statement failed as only a pooler makes it fail.
    Auto,
    /// Always one simple query (a pooler the probe cannot see).
    Simple,
    /// Named from the start, without the probe (the operator says the connections are
    /// sessions: PostgreSQL itself, or a pooler in session mode); still simple queries for good
    /// after a named statement failed as only a pooler makes it fail.
    Named,
}

/// [`Db::lookup`]'s verdict: not known yet (simple queries meanwhile).
const UNKNOWN: u8 = 0;
/// Named statements, on connections whose session has the statement timeout set.
const NAMED: u8 = 1;
/// One simple query each.
const SIMPLE: u8 = 2;

impl Db {
    /// A lazily connecting pool of `size` connections to `url` whose statements time out after
    /// `timeout`; `direct` (None: `url`) is where session-level work connects.
    pub fn connect(
        url: &str,
        direct: Option<&str>,
        size: u32,
        timeout: Duration,
    ) -> Result<Db, sqlx::Error> {
        Self::with_options(connect_options(url)?, direct, size, timeout, false)
    }

    /// The cockpit's pool: as [`Db::connect`]'s, but every transaction says it is read-only
    /// (`BEGIN READ ONLY`, or a `SET` in a simple query's message: a write fails, 25006), which
    /// no pooler drops; the startup option `default_transaction_read_only=on` too, which a
    /// PgBouncer with `ignore_startup_parameters = options` drops (issue 66, `pooler.rs`).
    pub fn connect_read_only(url: &str, size: u32, timeout: Duration) -> Result<Db, sqlx::Error> {
        let opts = connect_options(url)?.options([("default_transaction_read_only", "on")]);
        Self::with_options(opts, None, size, timeout, true)
    }

    /// `--lookup-database-url`'s pool: every transaction read-only as [`Db::connect_read_only`]'s,
    /// said by each transaction itself only. Without the startup option, which a PgBouncer
    /// refuses unless `ignore_startup_parameters` names `options`: the lookups may go through
    /// one as the main pool's do. Its lookups are simple queries ([`Statements::Simple`]),
    /// each its own read-only transaction from its first statement, failing on a server in
    /// recovery (`lookup::STANDBY_GUARD`).
    pub fn connect_lookups(url: &str, size: u32, timeout: Duration) -> Result<Db, sqlx::Error> {
        let db = Self::with_options(connect_options(url)?, None, size, timeout, true)?;
        Ok(Db {
            primary_only: true,
            ..db.with_statements(Statements::Simple)
        })
    }

    fn with_options(
        opts: PgConnectOptions,
        direct: Option<&str>,
        size: u32,
        timeout: Duration,
        read_only: bool,
    ) -> Result<Db, sqlx::Error> {
        let pool_is_direct = direct.is_none();
        // sqlx warns of a statement past a second by default: the alert pass's lock waits
        // (half the timeout, `stores::alerts`) would be said at every pass. A statement is slow
        // here when it reaches the timeout, which every step is bounded by and says itself.
        let slow = |o: PgConnectOptions| {
            sqlx::ConnectOptions::log_slow_statements(o, log::LevelFilter::Warn, timeout)
        };
        let direct = slow(match direct {
            Some(d) => connect_options(d)?,
            None => opts.clone(),
        });
        let pool = Pool::new(slow(opts), size, timeout);
        Ok(Db {
            pool,
            direct: std::sync::Arc::new(direct),
            limit: timeout,
            sessions: Default::default(),
            verdict: std::sync::Arc::new(AtomicU8::new(if pool_is_direct {
                UNKNOWN
            } else {
                SIMPLE
            })),
            pool_is_direct,
            read_only,
            primary_only: false,
        })
    }

    /// This pool with [`Db::lookup`]'s statements sent as `mode` says.
    pub fn with_statements(self, mode: Statements) -> Db {
        let verdict = match mode {
            Statements::Auto if self.pool_is_direct => UNKNOWN,
            Statements::Auto | Statements::Simple => SIMPLE,
            Statements::Named => NAMED,
        };
        self.verdict.store(verdict, Ordering::Relaxed);
        self
    }

    /// Whether [`Db::lookup`] sends named statements now.
    pub fn named_statements(&self) -> bool {
        self.verdict.load(Ordering::Relaxed) == NAMED
    }

    /// The pool itself (its size and idle count for `/metrics`).
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// Where a session-level connection (LISTEN, the sweep's lock) connects: never through a
    /// transaction pooler when `--direct-database-url` is set.
    pub fn direct_options(&self) -> &PgConnectOptions {
        &self.direct
    }

    /// A connection of the pool, for a caller that keeps one across batches (the audit
    /// writer): its statements still run in [`begin_on`]'s transactions, and it goes back to
    /// the pool only if [`Conn::done`] was called after the last of them.
    pub async fn acquire(&self) -> Result<Conn, sqlx::Error> {
        within(self.limit, self.pool.acquire()).await
    }

    /// A new connection, never an idle one ([`crate::stores::pool::Pool::acquire_new`]).
    pub async fn acquire_new(&self) -> Result<Conn, sqlx::Error> {
        within(self.limit, self.pool.acquire_new()).await
    }

    /// Whether a connection to [`Db::direct_options`] is a session of its own, so that session
    /// state (`LISTEN`, a session-level advisory lock) means what it says. Behind a transaction
    /// pooler it is not: a `LISTEN` stays on a server connection the pooler then hands to other
    /// clients, whose statements fail on the notifications it receives, and a session lock stays
    /// with that server connection after the gateway is gone. Asked once, then remembered.
    ///
    /// Two connections, A and B, ask for their backend's pid (simple queries: one message each,
    /// so nothing is split over two server connections), in `PROBE_ROUNDS` rounds. Direct, A
    /// always asks its own backend and B never reaches it. A pooler hands a released server
    /// connection to the next client (PgBouncer by default the most recently released one), and
    /// cannot hand out one inside another client's transaction. In each round A asks right
    /// after B's last COMMIT (a pooler gives A the backend B released), B opens a transaction
    /// right after A's question (a pooler gives B the backend A released), and A asks again
    /// while B holds its backend. Any answer shared by A and B, or A answered by two backends,
    /// is a pooler. A round can be fooled by other clients releasing server connections in
    /// between (CI saw a single question fooled, with four gateways starting side by side
    /// through one PgBouncer); every question of every round has to be.
    pub async fn has_sessions(&self) -> Result<bool, sqlx::Error> {
        let probe = async {
            use sqlx::{ConnectOptions, Connection, Row};
            async fn pid(c: &mut sqlx::PgConnection, sql: &str) -> Result<i32, sqlx::Error> {
                sqlx::Executor::fetch_one(c, sqlx::raw_sql(sql))
                    .await?
                    .try_get(0)
            }
            const PID: &str = "SELECT pg_catalog.pg_backend_pid()";
            let mut a = self.direct.connect().await?;
            let mut b = self.direct.connect().await?;
            let first = pid(&mut a, PID).await?;
            let mut sessions = true;
            for _ in 0..PROBE_ROUNDS {
                // Right after B's COMMIT: a pooler gives A the backend B just released.
                let asked = pid(&mut a, PID).await?;
                // Right after A's question: a pooler gives B the backend A just released.
                let held = pid(&mut b, "BEGIN; SELECT pg_catalog.pg_backend_pid()").await?;
                // While B holds its backend: a pooler cannot give it to A.
                let again = pid(&mut a, PID).await?;
                sqlx::Executor::execute(&mut b, sqlx::raw_sql("COMMIT")).await?;
                if asked != first || held == first || again != first {
                    sessions = false;
                    break;
                }
            }
            for c in [a, b] {
                if let Err(e) = c.close().await {
                    tracing::debug!(error = %e, "closing a probe connection");
                }
            }
            Ok::<_, sqlx::Error>(sessions)
        };
        let sessions = self
            .sessions
            .get_or_try_init(|| within(self.limit * 3, probe))
            .await
            .copied()?;
        let to = if sessions { NAMED } else { SIMPLE };
        if self
            .verdict
            .compare_exchange(UNKNOWN, to, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            if sessions {
                tracing::info!("database: the pool's connections are sessions of the gateway's own: lookups run as named statements, prepared once per connection");
            } else {
                tracing::info!("database: the database URL is served by a transaction pooler: lookups run as one simple query each");
            }
        }
        Ok(sessions)
    }

    /// A lookup on the request path, one round trip: the statement with its values bound, as a
    /// named prepared statement when the verdict says the pool's connections are the gateway's
    /// own sessions ([`Statements`]); otherwise the same statement with its values written in
    /// ([`Lookup::render`]), as [`Db::one_round_trip`]. The rows, in binary or text format
    /// alike for `sqlx::Row::try_get`.
    ///
    /// Named: sqlx's statement cache prepares the statement once per connection
    /// (Parse/Describe, one round trip), then each lookup is Bind/Execute/Sync, one round trip,
    /// and is planned as the server's plan cache decides rather than on every call. It runs
    /// only on a connection whose session has `statement_timeout` set (`SET`, once per
    /// connection, marked on it: [`Conn::set_bounded`]), since an extended-protocol statement
    /// ends with its own Sync and a `SET LOCAL` cannot share its transaction; bounded on the
    /// client's side as every step is.
    ///
    /// A named statement that fails with SQLSTATE 26000 (no such prepared statement) or 42P05
    /// (it exists already) met a server connection that is not this connection's own: a pooler
    /// the probe missed. The verdict then turns to simple queries for good (said once, a
    /// warning), the lookup runs once more as a simple query on the same connection, and that
    /// connection is closed (its statement cache no longer matches its server connection).
    pub async fn lookup(
        &self,
        lookup: Lookup<'_>,
    ) -> Result<Vec<sqlx::postgres::PgRow>, sqlx::Error> {
        if !self.named_statements() {
            return self.one_round_trip(&lookup.render()?).await;
        }
        within(self.limit, async {
            let mut conn = self.pool.acquire().await?;
            let (rows, kept) = self
                .named_on(&mut conn, &lookup, || lookup.render())
                .await?;
            if kept {
                conn.done();
            } else {
                conn.close();
            }
            Ok(rows)
        })
        .await
    }

    /// `lookup` as a named statement on `conn`, a connection the caller holds ([`Db::lookup`]'s,
    /// the audit writer's kept one), whose session's `statement_timeout` is set first if it was
    /// not; the caller bounds the wait ([`within`]) and checks [`Db::named_statements`] first.
    /// `(rows, true)`; or, when the named statement met a server connection not this one's own
    /// (`is_shared_server_connection`: the verdict turns to simple queries for good), `simple`'s
    /// text run as one simple query on it and `(rows, false)`: the caller closes `conn` (its
    /// statement cache no longer matches its server connection).
    pub async fn named_on(
        &self,
        conn: &mut Conn,
        lookup: &Lookup<'_>,
        simple: impl FnOnce() -> Result<String, super::sql_text::Unquotable>,
    ) -> Result<(Vec<sqlx::postgres::PgRow>, bool), sqlx::Error> {
        // Encoded first: a value that cannot be sent costs no round trip.
        let (sql, arguments) = (lookup.sql, lookup.arguments()?);
        if !conn.bounded() {
            let mut set = settings("", "SET", self.limit, READ_ONLY.len());
            if self.read_only {
                set.push_str(READ_ONLY);
            }
            sqlx::Executor::execute(&mut **conn, sqlx::raw_sql(&set)).await?;
            conn.set_bounded();
        }
        let named = sqlx::query_with(sql, arguments)
            .persistent(true)
            .fetch_all(&mut **conn)
            .await;
        match named {
            Ok(rows) => Ok((rows, true)),
            Err(e) if is_shared_server_connection(&e) => {
                self.no_more_named(&e);
                let rows = one_round_trip_on(conn, self.limit, &self.ro(&simple()?)).await?;
                Ok((rows, false))
            }
            Err(e) => Err(e),
        }
    }

    /// Named statements no more: `e` said a pooler shares the pool's server connections.
    fn no_more_named(&self, e: &sqlx::Error) {
        if self.verdict.swap(SIMPLE, Ordering::Relaxed) == NAMED {
            tracing::warn!(
                error = %e,
                "database: a named prepared statement met a server connection not the gateway's own (it was not prepared there, or another client prepared that name), so a pooler shares the pool's connections: lookups run as one simple query each from now on (set --direct-database-url to the database itself, or --db-statements simple)"
            );
        }
    }

    /// Runs `sql`, statements with their values written in ([`super::sql_text`]), as one simple
    /// query: one message and one round trip, after `SET LOCAL statement_timeout` in the same
    /// message, its statements one implicit transaction that ends with the message. No prepared
    /// statement and no session state stays on the server connection, so it is safe behind a
    /// transaction pooler; bounded by the limit on the client's side, as every step is. The
    /// rows of every statement, in order (simple queries answer in text).
    pub async fn one_round_trip(
        &self,
        sql: &str,
    ) -> Result<Vec<sqlx::postgres::PgRow>, sqlx::Error> {
        within(self.limit, async {
            let mut conn = self.pool.acquire().await?;
            let rows = one_round_trip_on(&mut conn, self.limit, &self.ro(sql)).await?;
            conn.done();
            Ok(rows)
        })
        .await
    }

    /// Whether the database answers a statement: `SELECT 1`, in a transaction of its own like
    /// every statement through [`Db`] (the readiness check's, which bounds it).
    pub async fn ping(&self) -> Result<(), sqlx::Error> {
        sqlx::query_scalar::<_, i32>("SELECT 1")
            .persistent(false)
            .fetch_one(self)
            .await
            .map(|_| ())
    }

    /// The bound of every database step.
    pub fn limit(&self) -> Duration {
        self.limit
    }

    /// `sql` for one simple query: on a read-only pool, its implicit transaction made so first.
    fn ro<'s>(&self, sql: &'s str) -> std::borrow::Cow<'s, str> {
        match (self.read_only, self.primary_only) {
            (_, true) => {
                format!("SET LOCAL transaction_read_only = on; {STANDBY_GUARD}; {sql}").into()
            }
            (true, false) => format!("SET LOCAL transaction_read_only = on; {sql}").into(),
            (false, false) => sql.into(),
        }
    }

    /// A transaction whose statements time out after the limit (`SET LOCAL`, sent with `BEGIN`
    /// in one round trip). Bounded, like every step after it must be (`.bounded(db.limit())`).
    pub async fn begin(&self) -> Result<Tx, sqlx::Error> {
        within(self.limit, async {
            let mut conn = self.pool.acquire().await?;
            let mut begin = begin_sql(self.limit, self.read_only);
            if self.primary_only {
                begin = format!("{begin}; {STANDBY_GUARD}");
            }
            sqlx::Executor::execute(&mut *conn, sqlx::raw_sql(&begin)).await?;
            Ok(Tx {
                conn: Some(conn),
                limit: self.limit,
                began: Instant::now(),
            })
        })
        .await
    }
}

/// A transaction [`Db::begin`] opened, on a connection of its own: `&mut *tx` runs a statement
/// in it. Dropped without [`Tx::commit`] or [`Tx::rollback`] (an early return, an error), it is
/// rolled back by a task of its own within the database timeout and its connection then goes
/// back to the pool, as sqlx's transactions do; never handed to another caller mid-transaction.
/// After a connection error or timeout since it began (the connection may be silent, or a
/// statement still in flight on it), its connection is closed instead (the server rolls back).
pub struct Tx {
    /// Always `Some` until it ends.
    conn: Option<Conn>,
    limit: Duration,
    began: Instant,
}

impl Tx {
    /// Commits, within the database timeout; the connection then goes back to the pool.
    pub async fn commit(self) -> Result<(), sqlx::Error> {
        self.end("COMMIT").await
    }

    /// Rolls back, within the database timeout; the connection then goes back to the pool.
    pub async fn rollback(self) -> Result<(), sqlx::Error> {
        self.end("ROLLBACK").await
    }

    async fn end(mut self, sql: &'static str) -> Result<(), sqlx::Error> {
        let mut conn = self
            .conn
            .take()
            .expect("a connection until the transaction ends");
        within(
            self.limit,
            sqlx::Executor::execute(&mut *conn, sqlx::raw_sql(sql)),
        )
        .await?;
        conn.done();
        Ok(())
    }
}

impl Drop for Tx {
    fn drop(&mut self) {
        let Some(mut conn) = self.conn.take() else {
            return;
        };
        if super::pool::idle_since_broken(self.began.elapsed()) {
            // Closed by its drop: nothing is waited for on a connection that may be silent.
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let limit = self.limit;
        rt.spawn(async move {
            let rollback = sqlx::Executor::execute(&mut *conn, sqlx::raw_sql("ROLLBACK"));
            match within(limit, rollback).await {
                Ok(_) => conn.done(),
                Err(e) => {
                    note_error(&e);
                    tracing::debug!(error = %e, "rolling back a transaction left open");
                }
            }
        });
    }
}

impl std::ops::Deref for Tx {
    type Target = sqlx::PgConnection;

    fn deref(&self) -> &sqlx::PgConnection {
        self.conn
            .as_ref()
            .expect("a connection until the transaction ends")
    }
}

impl std::ops::DerefMut for Tx {
    fn deref_mut(&mut self) -> &mut sqlx::PgConnection {
        self.conn
            .as_mut()
            .expect("a connection until the transaction ends")
    }
}

/// How many rounds [`Db::has_sessions`] asks before it believes it has sessions of its own.
const PROBE_ROUNDS: usize = 6;

/// `BEGIN` (`READ ONLY` if so) with the statement timeout of `limit` and the pinned
/// `search_path` for the transaction only.
fn begin_sql(limit: Duration, read_only: bool) -> String {
    let begin = if read_only {
        "BEGIN READ ONLY; "
    } else {
        "BEGIN; "
    };
    settings(begin, "SET LOCAL", limit, 0)
}

/// The settings every statement of the gateway runs under, as `set` (`SET LOCAL` for a
/// transaction, `SET` for a session of the gateway's own) says: `statement_timeout`, the bound
/// of every statement (at least 1 ms: 0 would disable it), and `search_path`, pinned to
/// `pg_catalog` first and then the schema of the gateway's tables ([`schema`]). After `before`
/// (what the caller sends first in the same message), in one allocation with room for the
/// `after` bytes the caller appends.
///
/// # Architecture Invariant: no statement of the gateway resolves a name as another role chose
/// A role that owns the database may set everyone's `search_path` (`ALTER DATABASE ... SET`),
/// putting a schema it writes before `pg_catalog`; a role that may create in the schema may
/// define an operator or function there. Pinned here, in the same message as `BEGIN` (no round
/// trip, pooler-safe: a transaction's own setting), `pg_catalog` comes first, so a definition
/// with a built-in's exact argument types never wins, and every built-in function the
/// gateway's statements call is written `pg_catalog.name(...)`, so no better-matching one does
/// either (docs/design/security.md; `tests/api/trust_boundary.rs` plants both kinds).
///
/// # Architecture Invariant: no policy of another role's runs in a statement of the gateway
/// The owner of Console's tables may enable row-level security on one, and its policies run
/// as the role that reads it. `row_security = off`, pinned here and by every function of the
/// gateway's (migration 0034), makes a statement a policy would filter fail (42501) instead:
/// a lookup answers 503, and `check` names the table (`tests/api/planted.rs`).
///
/// # Architecture Invariant: no view of another role's opens in a statement of the gateway
/// A view Console's role puts in place of one of its tables runs its code as whoever reads
/// it. On a server that can refuse it (as the server answered when the pool opened a
/// connection: [`super::pool::refuses_views`]), every transaction and session of the
/// gateway's, as every function of its (migration 0036), sets
/// `restrict_nonsystem_relation_kind`: a statement that would open a view or foreign table
/// that is not PostgreSQL's own fails (55000) before any of its code runs
/// (`tests/api/planted.rs`, `a_view_in_place_of_consoles_table_never_runs_*`).
fn settings(before: &str, set: &str, limit: Duration, after: usize) -> String {
    use std::fmt::Write as _;
    let schema = quoted_schema();
    let mut text =
        String::with_capacity(before.len() + SETTINGS_ROOM + 4 * set.len() + schema.len() + after);
    text.push_str(before);
    // Ignored: writing to a `String` cannot fail (its `fmt::Write` always returns `Ok`).
    let _ = write!(
        text,
        "{set} statement_timeout = {}; {set} search_path = pg_catalog, {schema}; {set} row_security = off",
        limit.as_millis().max(1),
    );
    if super::pool::refuses_views() {
        text.push_str("; ");
        text.push_str(set);
        text.push_str(concat!(
            " restrict_nonsystem_relation_kind = '",
            super::pool::restricted_kinds!(),
            "'"
        ));
    }
    text
}

/// The bytes of [`settings`]' text besides its `set`, schema and what comes before or after
/// it, with the longest millisecond count a `Duration` has (23 digits): the text is written
/// into one allocation, on the path of every transaction (a cold lookup, an audit batch).
const SETTINGS_ROOM: usize = 200;

/// What a read-only pool's sessions of the gateway's own set besides [`settings`].
const READ_ONLY: &str = "; SET default_transaction_read_only = on";

/// The schema that holds Console's and the gateway's tables: `RBAC_GATEWAY_DATABASE_SCHEMA`,
/// `public` when unset (where `rbac-gateway migrate` makes them unless the role's
/// `search_path` says otherwise). Read once.
pub fn schema() -> &'static str {
    static SCHEMA: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SCHEMA.get_or_init(|| match std::env::var("RBAC_GATEWAY_DATABASE_SCHEMA") {
        Ok(s) if !s.is_empty() => s,
        _ => "public".to_string(),
    })
}

/// [`schema`] as an SQL identifier (double-quoted, a `"` in it doubled). Made once: every
/// transaction's `BEGIN` names it.
pub(crate) fn quoted_schema() -> &'static str {
    static QUOTED: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    QUOTED.get_or_init(|| quote_ident(schema()))
}

/// `name` as an SQL identifier: double-quoted, a `"` in it doubled.
pub(crate) fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// [`Db::one_round_trip`] on a connection the caller keeps (the audit writer's), bounded by
/// `limit`; the caller marks it [`Conn::done`] once it succeeded.
pub async fn one_round_trip_on(
    conn: &mut sqlx::PgConnection,
    limit: Duration,
    sql: &str,
) -> Result<Vec<sqlx::postgres::PgRow>, sqlx::Error> {
    let mut text = settings("", "SET LOCAL", limit, 2 + sql.len());
    text.push_str("; ");
    text.push_str(sql);
    within(limit, sqlx::Executor::fetch_all(conn, sqlx::raw_sql(&text))).await
}

/// [`Db::begin`] on a connection the caller keeps.
pub async fn begin_on(
    conn: &mut sqlx::PgConnection,
    limit: Duration,
) -> Result<sqlx::Transaction<'_, sqlx::Postgres>, sqlx::Error> {
    use sqlx::Connection;
    within(limit, conn.begin_with(begin_sql(limit, false))).await
}

/// The connection options of `url`, with nothing a transaction pooler must be told to ignore.
/// A URL that does not parse is said with the form it needs, never echoed: it may hold a
/// password.
fn connect_options(url: &str) -> Result<PgConnectOptions, sqlx::Error> {
    let parsed = PgConnectOptions::from_str(url).map_err(|e| match e {
        sqlx::Error::Configuration(why) => sqlx::Error::Configuration(
            format!("not a PostgreSQL URL (postgres://USER:PASSWORD@HOST:PORT/DATABASE): {why}")
                .into(),
        ),
        e => e,
    })?;
    Ok(parsed
        .application_name("rbac-gateway")
        .extra_float_digits(None))
}

/// The connection itself failed (as opposed to the statement): the server closed it, the
/// socket broke, or PostgreSQL said it is shutting the session down (SQLSTATE class 08
/// connection exception, 57P01..57P03 admin/crash shutdown, cannot connect now).
pub fn is_connection_error(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_) | sqlx::Error::Tls(_) | sqlx::Error::Protocol(_) => true,
        sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(d) => d
            .code()
            .is_some_and(|c| c.starts_with("08") || c.starts_with("57P")),
        _ => false,
    }
}

/// `e` is what PostgreSQL answers a named statement on a server connection it was not
/// prepared on (26000, no such prepared statement), or a name prepared there by another client
/// (42P05, it exists already; 08P01 "bind message supplies N parameters, but prepared statement
/// ... requires M": the name is another statement of another client's, as the lookups' and the
/// audit INSERT's names, numbered per connection, may be): a pooler between the gateway and
/// PostgreSQL.
fn is_shared_server_connection(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(d) => match d.code().as_deref() {
            Some("26000" | "42P05") => true,
            Some("08P01") => d.message().starts_with("bind message supplies"),
            _ => false,
        },
        _ => false,
    }
}

/// Marks the pool's idle connections stale when `e` is a connection error; true when it was.
pub fn note_error(e: &sqlx::Error) -> bool {
    let broken = is_connection_error(e);
    if broken {
        mark_broken();
    }
    broken
}

/// Runs `f`, and once more when it failed on a connection error: the second run draws a fresh
/// connection (the first error made every older idle connection stale).
pub async fn retry_once<T, F, Fut>(mut f: F) -> Result<T, sqlx::Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, sqlx::Error>>,
{
    match f().await {
        Err(e) if note_error(&e) => {
            tracing::warn!(error = %e, "database connection lost; retrying once on a fresh one");
            f().await.inspect_err(|e| {
                note_error(e);
            })
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The text of [`settings`] fits the one allocation it is written into, with the longest
    /// limit, either `set`, and the restriction of views, which this process's server answer
    /// may or may not add.
    #[test]
    fn settings_fit_their_room() {
        let restrict = concat!(
            " restrict_nonsystem_relation_kind = '",
            crate::stores::pool::restricted_kinds!(),
            "'"
        );
        for set in ["SET", "SET LOCAL"] {
            for limit in [Duration::ZERO, Duration::from_secs(5), Duration::MAX] {
                let text = settings("BEGIN READ ONLY; ", set, limit, 0);
                let room = text.capacity();
                let most = if super::super::pool::refuses_views() {
                    text.len()
                } else {
                    text.len() + 2 + set.len() + restrict.len()
                };
                assert!(most <= room, "{most} bytes in a room of {room}: {text}");
                assert!(text.starts_with(&format!("BEGIN READ ONLY; {set} statement_timeout = ")));
            }
        }
        // 0 would disable the bound.
        assert!(settings("", "SET", Duration::ZERO, 0).contains("statement_timeout = 1;"));
    }
}
