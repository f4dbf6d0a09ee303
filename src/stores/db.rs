//! The database pool and the embedded migrations. The pool connects lazily: the gateway starts
//! (and answers 503 where it must) while PostgreSQL is down, and recovers by itself.
//!
//! # Connection storms
//! When PostgreSQL terminates every backend at once (failover, `pg_terminate_backend`, a
//! PgBouncer restart), every idle connection in the pool is dead, and nothing notices until a
//! statement is sent on one. Pinging each connection before handing it out
//! (`test_before_acquire`) would cost a round trip on every cache miss and ticket check, so
//! instead: the first connection error anyone sees ([`note_error`]) marks the time, and the
//! pool's `before_acquire` hook discards every connection that has been idle since before
//! that mark (no round trip: an atomic load and a clock read), so the next acquire opens a
//! fresh one. Callers on the request path retry a statement once after a connection error
//! ([`retry_once`]), which then runs on a fresh connection.

use std::future::Future;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// A role or permission a rule of the mapping names that the database does not have: the rule
/// can never be satisfied by it (a typo makes the route 403 for everyone).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownName {
    /// "role" or "permission".
    pub kind: &'static str,
    pub name: String,
    /// The rule, as [`crate::policy::mapping::Route::label`] names it.
    pub rule: String,
    pub line: usize,
    pub col: usize,
}

impl std::fmt::Display for UnknownName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let table = if self.kind == "role" {
            "rbac_roles"
        } else {
            "rbac_permissions"
        };
        write!(
            f,
            "unknown {} {:?} in {} (not in {table})",
            self.kind, self.name, self.rule
        )
    }
}

/// The role and permission names of `mapping` that `rbac_roles` / `rbac_permissions` lack, in
/// the mapping's order. Used by `check --database-url` (errors) and by `serve` at load and on
/// every reload (warnings: the role may be created after the mapping ships).
pub async fn unknown_names(
    pool: &Db,
    mapping: &crate::policy::mapping::Mapping,
) -> Result<Vec<UnknownName>, sqlx::Error> {
    let names = |sql: &'static str| async move {
        let all: Vec<String> = sqlx::query_scalar(sql)
            .persistent(false)
            .fetch_all(pool)
            .await?;
        Ok::<_, sqlx::Error>(
            all.into_iter()
                .collect::<std::collections::HashSet<String>>(),
        )
    };
    let roles = names("SELECT name FROM rbac_roles").await?;
    let perms = names("SELECT name FROM rbac_permissions").await?;
    let mut out = Vec::new();
    for route in &mapping.routes {
        let unknown = |kind, known: &std::collections::HashSet<String>, names: &[String]| {
            names
                .iter()
                .filter(|n| !known.contains(*n))
                .map(|n| UnknownName {
                    kind,
                    name: n.clone(),
                    rule: route.label().to_string(),
                    line: route.line,
                    col: route.col,
                })
                .collect::<Vec<_>>()
        };
        out.extend(unknown("role", &roles, &route.roles));
        out.extend(unknown("permission", &perms, &route.permissions));
    }
    Ok(out)
}

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
/// the connection it holds, is dropped: the pool then closes that connection instead of
/// testing it with a ping that a silent connection never answers (its slot would be held
/// until the kernel gave the connection up, many minutes later).
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
/// # Architecture Invariant: no statement or session state outlives a transaction
/// Behind transaction pooling, a client's server connection is its own only from `BEGIN` to
/// `COMMIT`; between two transactions (or, outside one, between two of a statement's protocol
/// round trips: sqlx parses and describes, syncs, then binds and executes) the pooler may hand it
/// to another client. sqlx's named prepared statements (`sqlx_s_N`) live on a server connection,
/// so another client's `sqlx_s_14` could run with our parameters: a session resolved to someone
/// else's answer. Hence:
/// - every statement runs inside a transaction: [`Db`] as an executor (`.fetch_one(&db)`) wraps
///   each statement in one, and [`Db::begin`] opens one for several;
/// - every statement is unnamed (`.persistent(false)`, checked on the source by
///   `tests/architecture.rs`; [`Db`] as an executor also forces it), so nothing is left behind on
///   the server connection;
/// - no startup parameter a pooler must be told to ignore: `statement_timeout` is set with
///   `SET LOCAL` in each transaction's `BEGIN`, and `extra_float_digits` is not sent;
/// - what needs a session (`LISTEN`, the sweep's session-level advisory lock) uses
///   [`Db::direct_options`], `--direct-database-url`, a connection that bypasses the pooler.
///
/// # Architecture Invariant: no pool slot waits on a silent peer past the timeout
/// Every use is bounded by `limit` through [`within`], which marks the pool's connections stale
/// before dropping the work in progress, so the pool closes a connection given up on instead of
/// pinging it (sqlx's ping on release has no timeout).
#[derive(Clone, Debug)]
pub struct Db {
    pool: PgPool,
    direct: std::sync::Arc<PgConnectOptions>,
    limit: Duration,
    /// Whether [`Db::direct_options`] reaches a session of its own (None: not known yet).
    sessions: std::sync::Arc<tokio::sync::OnceCell<bool>>,
}

impl Db {
    /// A lazily connecting pool of `size` connections to `url` whose statements time out after
    /// `timeout`; `direct` (None: `url`) is where session-level work connects.
    pub fn connect(
        url: &str,
        direct: Option<&str>,
        size: u32,
        timeout: Duration,
    ) -> Result<Db, sqlx::Error> {
        let opts = connect_options(url)?;
        let direct = match direct {
            Some(d) => connect_options(d)?,
            None => opts.clone(),
        };
        let pool = PgPoolOptions::new()
            .max_connections(size)
            .min_connections(0)
            .acquire_timeout(timeout)
            .idle_timeout(Some(Duration::from_secs(60)))
            .test_before_acquire(false)
            .before_acquire(|_, meta| {
                Box::pin(async move { Ok(!idle_since_broken(meta.idle_for)) })
            })
            // A connection given back that was opened before the last connection error may be
            // the one that failed, or a silent one a timeout gave up on: closed, not pinged
            // (sqlx's ping on release has no timeout of its own; its close has none either, but
            // only waits when more is unsent than the socket's buffer holds). Any other is
            // pinged here first, bounded: one that went silent since its last answer (a NAT
            // dropped its state between a COMMIT and the release) is closed (an error closes it
            // hard), not left to sqlx's ping, which would hold its slot until TCP gives up. What
            // remains is a connection going silent between this ping's answer and sqlx's, sent
            // right after it in the same task.
            .after_release(move |conn, meta| {
                Box::pin(async move {
                    use sqlx::Connection;
                    if idle_since_broken(meta.age) {
                        return Ok(false);
                    }
                    match tokio::time::timeout(timeout, conn.ping()).await {
                        Ok(Ok(())) => Ok(true),
                        Ok(Err(e)) => {
                            note_error(&e);
                            Err(e)
                        }
                        Err(_) => {
                            mark_broken();
                            Ok(false)
                        }
                    }
                })
            })
            .connect_lazy_with(opts);
        Ok(Db {
            pool,
            direct: std::sync::Arc::new(direct),
            limit: timeout,
            sessions: Default::default(),
        })
    }

    /// The pool itself: for the migrator only (`migrate` needs a direct connection: it holds a
    /// session-level lock while it runs).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Where a session-level connection (LISTEN, the sweep's lock) connects: never through a
    /// transaction pooler when `--direct-database-url` is set.
    pub fn direct_options(&self) -> &PgConnectOptions {
        &self.direct
    }

    /// A connection of the pool, for a caller that keeps one across batches (the audit
    /// writer): its statements still run in [`begin_on`]'s transactions.
    pub async fn acquire(&self) -> Result<sqlx::pool::PoolConnection<sqlx::Postgres>, sqlx::Error> {
        within(self.limit, self.pool.acquire()).await
    }

    /// Whether a connection to [`Db::direct_options`] is a session of its own, so that session
    /// state (`LISTEN`, a session-level advisory lock) means what it says. Behind a transaction
    /// pooler it is not: a `LISTEN` stays on a server connection the pooler then hands to other
    /// clients, whose statements fail on the notifications it receives, and a session lock stays
    /// with that server connection after the gateway is gone. Asked once, then remembered.
    ///
    /// Two connections each ask for their backend's pid, the first twice (simple queries: one
    /// message each, so nothing is split over two server connections). Direct, the first asks
    /// its own backend both times and the second another one. A pooler hands a released server
    /// connection to the next client (PgBouncer by default the most recently released one), so
    /// the second connection is served by the first's backend, or the first's second question
    /// by the second's.
    pub async fn has_sessions(&self) -> Result<bool, sqlx::Error> {
        let probe = async {
            use sqlx::{ConnectOptions, Connection, Row};
            async fn pid(c: &mut sqlx::PgConnection) -> Result<i32, sqlx::Error> {
                sqlx::Executor::fetch_one(c, sqlx::raw_sql("SELECT pg_backend_pid()"))
                    .await?
                    .try_get(0)
            }
            let mut first = self.direct.connect().await?;
            let a = pid(&mut first).await?;
            let mut second = self.direct.connect().await?;
            let b = pid(&mut second).await?;
            let a_again = pid(&mut first).await?;
            for c in [first, second] {
                if let Err(e) = c.close().await {
                    tracing::debug!(error = %e, "closing a probe connection");
                }
            }
            Ok::<_, sqlx::Error>(a == a_again && a != b)
        };
        self.sessions
            .get_or_try_init(|| within(self.limit * 3, probe))
            .await
            .copied()
    }

    /// The bound of every database step.
    pub fn limit(&self) -> Duration {
        self.limit
    }

    /// A transaction whose statements time out after the limit (`SET LOCAL`, sent with `BEGIN`
    /// in one round trip). Bounded, like every step after it must be (`.bounded(db.limit())`).
    pub async fn begin(&self) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, sqlx::Error> {
        within(self.limit, self.pool.begin_with(begin_sql(self.limit))).await
    }
}

/// `BEGIN` with the statement timeout of `limit` for the transaction only.
fn begin_sql(limit: Duration) -> String {
    format!(
        "BEGIN; SET LOCAL statement_timeout = {}",
        limit.as_millis().max(1)
    )
}

/// [`Db::begin`] on a connection the caller keeps.
pub async fn begin_on(
    conn: &mut sqlx::PgConnection,
    limit: Duration,
) -> Result<sqlx::Transaction<'_, sqlx::Postgres>, sqlx::Error> {
    use sqlx::Connection;
    within(limit, conn.begin_with(begin_sql(limit))).await
}

/// A statement that leaves no prepared statement behind on its server connection.
pub struct Unnamed<E>(E);

impl<'q, E: sqlx::Execute<'q, sqlx::Postgres>> sqlx::Execute<'q, sqlx::Postgres> for Unnamed<E> {
    fn sql(&self) -> &'q str {
        self.0.sql()
    }

    fn statement(&self) -> Option<&sqlx::postgres::PgStatement<'q>> {
        self.0.statement()
    }

    fn take_arguments(
        &mut self,
    ) -> Result<Option<sqlx::postgres::PgArguments>, sqlx::error::BoxDynError> {
        self.0.take_arguments()
    }

    fn persistent(&self) -> bool {
        false
    }
}

impl<'d> sqlx::Executor<'d> for &'_ Db {
    type Database = sqlx::Postgres;

    fn fetch_many<'e, 'q: 'e, E>(
        self,
        query: E,
    ) -> futures_util::stream::BoxStream<
        'e,
        Result<sqlx::Either<sqlx::postgres::PgQueryResult, sqlx::postgres::PgRow>, sqlx::Error>,
    >
    where
        'd: 'e,
        E: 'q + sqlx::Execute<'q, sqlx::Postgres>,
    {
        use futures_util::{StreamExt, TryStreamExt};
        let db = self.clone();
        // One statement in a transaction of its own, unnamed, bounded as a whole.
        let all = within(self.limit, async move {
            let mut tx = db.begin().await?;
            let items = sqlx::Executor::fetch_many(&mut *tx, Unnamed(query))
                .try_collect::<Vec<_>>()
                .await?;
            tx.commit().await?;
            Ok(items)
        });
        futures_util::stream::once(all)
            .map_ok(|items| futures_util::stream::iter(items.into_iter().map(Ok)))
            .try_flatten()
            .boxed()
    }

    fn fetch_optional<'e, 'q: 'e, E>(
        self,
        query: E,
    ) -> futures_util::future::BoxFuture<'e, Result<Option<sqlx::postgres::PgRow>, sqlx::Error>>
    where
        'd: 'e,
        E: 'q + sqlx::Execute<'q, sqlx::Postgres>,
    {
        let db = self.clone();
        Box::pin(within(self.limit, async move {
            let mut tx = db.begin().await?;
            let row = sqlx::Executor::fetch_optional(&mut *tx, Unnamed(query)).await?;
            tx.commit().await?;
            Ok(row)
        }))
    }

    fn prepare_with<'e, 'q: 'e>(
        self,
        _sql: &'q str,
        _parameters: &'e [sqlx::postgres::PgTypeInfo],
    ) -> futures_util::future::BoxFuture<'e, Result<sqlx::postgres::PgStatement<'q>, sqlx::Error>>
    where
        'd: 'e,
    {
        // A prepared statement is session state: refused rather than left on a server
        // connection another client may be given (nothing in the gateway prepares one).
        Box::pin(async {
            Err(sqlx::Error::Configuration(
                "rbac-gateway prepares no statement outside a transaction".into(),
            ))
        })
    }

    fn describe<'e, 'q: 'e>(
        self,
        sql: &'q str,
    ) -> futures_util::future::BoxFuture<'e, Result<sqlx::Describe<sqlx::Postgres>, sqlx::Error>>
    where
        'd: 'e,
    {
        // Used by sqlx's macros only, which the gateway does not use.
        self.pool.describe(sql)
    }
}

/// The connection options of `url`, with nothing a transaction pooler must be told to ignore.
fn connect_options(url: &str) -> Result<PgConnectOptions, sqlx::Error> {
    Ok(PgConnectOptions::from_str(url)?
        .application_name("rbac-gateway")
        .extra_float_digits(None))
}

/// Applies `migrations/` (idempotent: applied versions are recorded in `_sqlx_migrations`).
pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    MIGRATOR.run(pool).await
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

/// Connections idle since before this moment are presumed dead.
pub fn mark_broken() {
    BROKEN_AT.fetch_max(now_ns(), Ordering::AcqRel);
}

/// A connection idle for `idle_for` went idle before the last connection error (with its age:
/// it was opened before it).
pub fn idle_since_broken(idle_for: Duration) -> bool {
    let at = BROKEN_AT.load(Ordering::Acquire);
    at != 0 && idle_for.as_nanos() as u64 > now_ns().saturating_sub(at)
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

    #[test]
    fn only_connections_idle_since_before_the_error_are_stale() {
        mark_broken();
        std::thread::sleep(Duration::from_millis(20));
        assert!(idle_since_broken(Duration::from_secs(1)));
        assert!(!idle_since_broken(Duration::from_millis(1)));
    }
}
