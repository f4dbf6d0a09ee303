//! The cutover's rows: which mapping the fleet ran since when (`rbac_gateway_mapping_versions`,
//! written by [`record`] when a gateway loads a mapping, read back by [`history`] as
//! [`Load`]s) and what shadow mode recorded in a window (`access_audit_events`, [`window`]).
//! The verdict over them is `policy/cutover.rs`'s; `rollout` prints it, `drift` reads the same
//! window.

use crate::stores::db::Db;
use chrono::{DateTime, Utc};

use crate::policy::audit_event::{EVENT_DRIFT, EVENT_SHADOW_DENIED};
use crate::policy::cutover::{Load, WindowRow};
use crate::policy::mapping::Mapping;

/// Records `mapping` as the one the fleet runs, unless the fleet's latest row already names
/// this version with this kill switch. Returns whether a row was written. Replicas starting
/// together are serialised by a transaction-scoped advisory lock: one row, not one each.
pub async fn record(pool: &Db, mapping: &Mapping, kill_switch: bool) -> Result<bool, sqlx::Error> {
    let routes: serde_json::Map<String, serde_json::Value> = mapping
        .routes
        .iter()
        .map(|r| {
            (
                r.label().to_string(),
                serde_json::json!({
                    "mode": r.mode.as_str(),
                    "cluster": r.meta.cluster,
                    "access": r.access.as_str(),
                }),
            )
        })
        .collect();
    let routes = serde_json::Value::Object(routes).to_string();
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtext('rbac_gateway_mapping_versions'))")
        .persistent(false)
        .execute(&mut *tx)
        .await?;
    let done = sqlx::query(
        "INSERT INTO rbac_gateway_mapping_versions (version, kill_switch, routes) \
         SELECT $1, $2, $3::jsonb WHERE NOT EXISTS ( \
             SELECT 1 FROM (SELECT version, kill_switch FROM rbac_gateway_mapping_versions \
                            ORDER BY id DESC LIMIT 1) last \
             WHERE last.version = $1 AND last.kill_switch = $2)",
    )
    .persistent(false)
    .bind(&mapping.version)
    .bind(kill_switch)
    .bind(routes)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(done.rows_affected() == 1)
}

/// The recorded loads, newest first.
pub async fn history(pool: &Db) -> Result<Vec<Load>, sqlx::Error> {
    let rows: Vec<(String, bool, String, DateTime<Utc>)> = sqlx::query_as(
        "SELECT version, kill_switch, routes::text, loaded_at_utc \
         FROM rbac_gateway_mapping_versions ORDER BY id DESC",
    )
    .persistent(false)
    .fetch_all(pool)
    .await?;
    rows.into_iter()
        .map(|(version, kill_switch, routes, at)| {
            let routes =
                serde_json::from_str(&routes).map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
            Ok(Load {
                version,
                kill_switch,
                routes,
                at,
            })
        })
        .collect()
}

/// The database's clock: soak times and windows are counted to it, not to the caller's.
pub async fn now(pool: &Db) -> Result<DateTime<Utc>, sqlx::Error> {
    sqlx::query_scalar("SELECT pg_catalog.now()")
        .persistent(false)
        .fetch_one(pool)
        .await
}

/// Drift and shadow-denial rows recorded in the last `seconds`, by route, type and reason.
pub async fn window(pool: &Db, seconds: i64) -> Result<Vec<WindowRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT route, event_type, reason, pg_catalog.count(*) FROM access_audit_events \
         WHERE event_type IN ($1, $2) \
           AND created_at_utc > pg_catalog.now() - pg_catalog.make_interval(secs => $3) \
         GROUP BY 1, 2, 3 ORDER BY 1, 2, 3",
    )
    .persistent(false)
    .bind(EVENT_DRIFT)
    .bind(EVENT_SHADOW_DENIED)
    .bind(seconds as f64)
    .fetch_all(pool)
    .await
}
