//! The database pool and the embedded migrations. The pool connects lazily: the gateway starts
//! (and answers 503 where it must) while PostgreSQL is down, and recovers by itself.

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

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
        .connect_lazy_with(opts))
}

/// Applies `migrations/` (idempotent: applied versions are recorded in `_sqlx_migrations`).
pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    MIGRATOR.run(pool).await
}
