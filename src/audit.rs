//! The durable writer of `access_audit_events` (I-2: a row on every 403).
//!
//! [`AuditWriter::record`] returns only once the row is durable: inserted into PostgreSQL, or,
//! while PostgreSQL does not answer, appended to a local spool file and fsynced. The spool is
//! replayed into PostgreSQL when it answers again (at start-up too, so it survives a crash);
//! the row id is the primary key and replay uses `ON CONFLICT DO NOTHING`, so a row is stored
//! exactly once even if a replay is interrupted. When the spool is full, `record` fails and the
//! caller answers 503 instead of denying without a record.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use tokio::sync::Mutex;

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

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit spool is full ({0} bytes): refusing to deny without a record")]
    SpoolFull(u64),
    #[error("audit spool cannot be written")]
    SpoolIo(#[source] std::io::Error),
}

pub const EVENT_DENIED: &str = "access_denied";
pub const EVENT_SHADOW_DENIED: &str = "access_denied_shadow";
/// Shadow mode: the gateway's decision and Console's own answer disagree.
pub const EVENT_DRIFT: &str = "rbac_drift";

const INSERT_SQL: &str = "INSERT INTO access_audit_events \
    (id, event_type, admin_id, method, path, route, required, reason, request_id, client_ip, user_agent, created_at_utc, mapping_version) \
    VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13) ON CONFLICT (id) DO NOTHING";

pub struct AuditWriter {
    pool: PgPool,
    spool: PathBuf,
    max_spool: u64,
    /// Serializes spool appends with replay-and-truncate.
    lock: Mutex<()>,
    metrics: Arc<Metrics>,
    timeout: Duration,
}

async fn insert(pool: &PgPool, e: &AuditEvent) -> Result<(), sqlx::Error> {
    sqlx::query(INSERT_SQL)
        .bind(&e.id)
        .bind(&e.event_type)
        .bind(&e.admin_id)
        .bind(&e.method)
        .bind(&e.path)
        .bind(&e.route)
        .bind(&e.required)
        .bind(&e.reason)
        .bind(&e.request_id)
        .bind(&e.client_ip)
        .bind(&e.user_agent)
        .bind(e.created_at_utc)
        .bind(&e.mapping_version)
        .execute(pool)
        .await
        .map(|_| ())
}

impl AuditWriter {
    pub fn new(
        pool: PgPool,
        spool: PathBuf,
        max_spool: u64,
        timeout: Duration,
        metrics: Arc<Metrics>,
    ) -> Self {
        AuditWriter {
            pool,
            spool,
            max_spool,
            lock: Mutex::new(()),
            metrics,
            timeout,
        }
    }

    /// Makes the row durable (database or spool) before returning.
    pub async fn record(&self, event: &AuditEvent) -> Result<(), AuditError> {
        // While rows wait in the spool, new rows join them so that replay keeps their order.
        let spooled = self.spool_len().await > 0;
        if !spooled {
            match tokio::time::timeout(self.timeout, insert(&self.pool, event)).await {
                Ok(Ok(())) => {
                    self.metrics
                        .audit_rows
                        .with_label_values(&["database"])
                        .inc();
                    return Ok(());
                }
                Ok(Err(e)) => tracing::warn!(error = %e, "audit insert failed; spooling the row"),
                Err(_) => tracing::warn!("audit insert timed out; spooling the row"),
            }
        }
        self.append(event).await?;
        self.metrics.audit_rows.with_label_values(&["spool"]).inc();
        Ok(())
    }

    async fn spool_len(&self) -> u64 {
        tokio::fs::metadata(&self.spool)
            .await
            .map(|m| m.len())
            .unwrap_or(0)
    }

    async fn append(&self, event: &AuditEvent) -> Result<(), AuditError> {
        let _guard = self.lock.lock().await;
        let mut line = serde_json::to_vec(event).expect("audit events serialize");
        line.push(b'\n');
        let path = self.spool.clone();
        let max = self.max_spool;
        let len = tokio::task::spawn_blocking(move || -> Result<u64, AuditError> {
            let current = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            if current + line.len() as u64 > max {
                return Err(AuditError::SpoolFull(current));
            }
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(AuditError::SpoolIo)?;
            f.write_all(&line).map_err(AuditError::SpoolIo)?;
            f.sync_data().map_err(AuditError::SpoolIo)?;
            Ok(current + line.len() as u64)
        })
        .await
        .map_err(|e| AuditError::SpoolIo(std::io::Error::other(e)))??;
        self.metrics.audit_spool_bytes.set(len as i64);
        Ok(())
    }

    /// Moves every spooled row into PostgreSQL, then empties the spool. Returns rows replayed.
    pub async fn replay(&self) -> Result<usize, sqlx::Error> {
        let _guard = self.lock.lock().await;
        let text = match tokio::fs::read_to_string(&self.spool).await {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(sqlx::Error::Io(e)),
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
            for e in &events {
                sqlx::query(INSERT_SQL)
                    .bind(&e.id)
                    .bind(&e.event_type)
                    .bind(&e.admin_id)
                    .bind(&e.method)
                    .bind(&e.path)
                    .bind(&e.route)
                    .bind(&e.required)
                    .bind(&e.reason)
                    .bind(&e.request_id)
                    .bind(&e.client_ip)
                    .bind(&e.user_agent)
                    .bind(e.created_at_utc)
                    .bind(&e.mapping_version)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
        }
        // Truncate only after the commit: a crash in between replays again, and the primary key
        // makes the second replay a no-op.
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&self.spool)
            .map_err(sqlx::Error::Io)?;
        f.set_len(0).map_err(sqlx::Error::Io)?;
        f.sync_all().map_err(sqlx::Error::Io)?;
        self.metrics.audit_spool_bytes.set(0);
        self.metrics.audit_replayed.inc_by(events.len() as u64);
        Ok(events.len())
    }

    /// Replays the spool every `every` until the process ends.
    pub async fn replay_forever(self: Arc<Self>, every: Duration) {
        loop {
            if self.spool_len().await > 0 {
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
