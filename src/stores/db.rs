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
    pool: &PgPool,
    mapping: &crate::policy::mapping::Mapping,
) -> Result<Vec<UnknownName>, sqlx::Error> {
    let names = |sql: &'static str| async move {
        let all: Vec<String> = sqlx::query_scalar(sql).fetch_all(pool).await?;
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
pub async fn why_unreachable(pool: &PgPool, within: Duration) -> Option<String> {
    use sqlx::{ConnectOptions, Connection};
    let opts = pool.connect_options();
    match tokio::time::timeout(within, opts.connect()).await {
        Ok(Ok(conn)) => {
            if let Err(e) = conn.close().await {
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

/// A lazily connecting pool whose statements time out after `timeout`.
pub fn pool(url: &str, size: u32, timeout: Duration) -> Result<PgPool, sqlx::Error> {
    let ms = timeout.as_millis().max(1).to_string();
    let opts = PgConnectOptions::from_str(url)?
        .application_name("rbac-gateway")
        .options([("statement_timeout", ms.as_str())]);
    Ok(PgPoolOptions::new()
        .max_connections(size)
        .min_connections(0)
        .acquire_timeout(timeout)
        .idle_timeout(Some(Duration::from_secs(60)))
        .test_before_acquire(false)
        .before_acquire(|_, meta| Box::pin(async move { Ok(!idle_since_broken(meta.idle_for)) }))
        // A connection given back that was opened before the last connection error may be the
        // one that failed, or a silent one a timeout gave up on: closed, not pinged (sqlx's
        // ping on release has no timeout of its own; its close has none either, but only
        // waits when more is unsent than the socket's buffer holds).
        .after_release(|_, meta| Box::pin(async move { Ok(!idle_since_broken(meta.age)) }))
        .connect_lazy_with(opts))
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
