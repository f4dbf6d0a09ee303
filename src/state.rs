//! The state every request shares: the active mapping, the identity resolver and its caches, the
//! audit writer, metrics, and the settings the data plane needs.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::audit::AuditWriter;
use crate::identity::Identity;
use crate::mapping::Mapping;
use crate::metrics::Metrics;

/// Everything a request needs, shared by all workers.
pub struct Gateway {
    pub mapping: ArcSwap<Mapping>,
    pub identity: Arc<Identity>,
    pub audit: Arc<AuditWriter>,
    pub metrics: Arc<Metrics>,
    pub kill_switch: bool,
    pub cookie: String,
    pub upstream: SocketAddr,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    /// Ticket-scoped grants honoured (FLAG_TICKET_SCOPED_GRANTS).
    pub ticket_grants: bool,
    pub ticket_validation_url: Option<String>,
}
