//! I-11 as a running gateway keeps it in view: in production (or an environment whose name says
//! neither), with FLAG_RBAC_V2 on, FLAG_RBAC_V2's `console_flag_promotions` row is read at start,
//! every [`EVERY`] after and after each `/readyz` (which never waits for it), beside the requests;
//! `/readyz` says what the last read found, and a change is logged. The gateway keeps enforcing the mapping either way (docs/invariants.md).

use std::sync::Arc;
use std::time::Duration;

use crate::gateway::state::Gateway;
use crate::stores::invariants::{flag_promotion, Promotion};

/// How often the row is read again.
pub const EVERY: Duration = Duration::from_secs(30);

/// I-11's line for `env` from one read: none when the row is there.
pub async fn line(gw: &Gateway, env: &str, limit: Duration) -> Option<String> {
    let read = flag_promotion(gw.identity.pool(), "FLAG_RBAC_V2");
    match crate::stores::db::within(limit, read).await {
        Ok(Promotion::Present { .. }) => None,
        Ok(p @ (Promotion::Absent | Promotion::NoTable)) => Some(format!(
            "I-11 not met: FLAG_RBAC_V2 is on in {env} without its console_flag_promotions row ({}); the gateway keeps enforcing the mapping",
            p.said("FLAG_RBAC_V2")
        )),
        Ok(p) => Some(format!(
            "I-11 not checked: FLAG_RBAC_V2 is on in {env}, and {}",
            p.said("FLAG_RBAC_V2")
        )),
        Err(e) => Some(format!(
            "I-11 not checked: FLAG_RBAC_V2 is on in {env}, and console_flag_promotions could not be read: {e}"
        )),
    }
}

/// Reads the row now and every [`EVERY`], keeps the line for `/readyz` in `gw.promotion`, and
/// logs each change (an error while I-11 is not met or not checked).
pub async fn watch(gw: Arc<Gateway>, env: String, limit: Duration) {
    let mut last: Option<Option<String>> = None;
    loop {
        let now = line(&gw, &env, limit).await;
        if last.as_ref() != Some(&now) {
            match &now {
                Some(l) => tracing::error!("{l}"),
                None => {
                    tracing::info!(environment = %env, "I-11: FLAG_RBAC_V2 has its console_flag_promotions row")
                }
            }
            *gw.promotion.lock().unwrap_or_else(|p| p.into_inner()) = now.clone();
            last = Some(now);
        }
        // The next read comes when a probe asks for it (the next probe sees it) or after EVERY:
        // the timeout's Err is only "EVERY passed", which is the other way to read again.
        let _ = tokio::time::timeout(EVERY, gw.promotion_asked.notified()).await;
    }
}
