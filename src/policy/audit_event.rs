//! What a decision leaves behind: one row of `access_audit_events` ([`AuditEvent`]) and its kinds
//! ([`EVENT_DENIED`], [`EVENT_SHADOW_DENIED`], [`EVENT_DRIFT`]). `decide` builds the row
//! (`audit_row` in `policy/outcome.rs`) and `carry_out` hands it to `Records`; the durable writer
//! and its spool (`stores/audit/`) store it. Spooled rows are JSON lines of this type: a new
//! field gets `#[serde(default)]` so a spool written by the previous version still replays.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

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
    /// How many denials the row stands for: 1, but for the row that counts the denials without
    /// a session of one client, reason and rule in a window after the first
    /// (`gateway/anonymous.rs`).
    #[serde(default = "one")]
    pub occurrences: i64,
}

fn one() -> i64 {
    1
}

/// Now, to the microsecond: what PostgreSQL's `timestamptz` holds, so that a row written with
/// its values bound (the time sent as microseconds) and one written as SQL text (the server
/// rounding nanoseconds) store the same instant, as its spooled and logged forms say.
pub fn now() -> DateTime<Utc> {
    use chrono::SubsecRound;
    Utc::now().trunc_subsecs(6)
}

pub const EVENT_DENIED: &str = "access_denied";
pub const EVENT_SHADOW_DENIED: &str = "access_denied_shadow";
/// Shadow mode: the gateway's decision and Console's own answer disagree.
pub const EVENT_DRIFT: &str = "rbac_drift";

#[cfg(test)]
mod tests {
    #[test]
    fn a_rows_time_is_to_the_microsecond() {
        for _ in 0..1000 {
            let at = super::now();
            assert_eq!(at.timestamp_subsec_nanos() % 1000, 0, "{at:?}");
        }
    }
}
