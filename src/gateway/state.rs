//! The state every request shares: the active mapping, the identity resolver and its caches, the
//! audit writer, metrics, and the settings of the data plane. [`Gateway`] is also the
//! [`Authority`] the decision asks: sessions and roles from the cache or PostgreSQL, ticket
//! grants live.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::policy::mapping::Mapping;
use crate::policy::outcome::{Authority, Switches, Unavailable};
use crate::policy::principal::Principal;
use crate::runtime::metrics::Metrics;
use crate::stores::audit::AuditWriter;
use crate::stores::identity::Identity;

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
    /// The supervised background tasks (`/readyz` names the dead ones).
    pub tasks: Arc<crate::runtime::supervise::Tasks>,
    /// The reader API (`/api/rbac/me`, `/api/rbac/permissions/check`) is answered by the gateway.
    pub rbac_api: bool,
    /// Why the routes file on disk is not the live mapping (rejected, unreadable), until a file
    /// is applied again; `/readyz` shows it.
    pub file_rejected: std::sync::Mutex<Option<String>>,
    /// The mapping comes from the database (`--mapping-source database`), not a file.
    pub mapping_from_db: bool,
    /// Why no mapping is loaded yet (`--mapping-source database` at start-up: no active version,
    /// the database unreachable, the active version unloadable); `/readyz` answers 503 with it.
    pub mapping_missing: std::sync::Mutex<Option<String>>,
    /// The change feed's last read (`/readyz` answers 503 while it is stale).
    pub feed: Arc<crate::stores::feed::Health>,
    /// Sweep failures after which `/readyz` names a grant or break-glass session.
    pub sweep_failure_threshold: u32,
    /// The invariants the settings break or make unreachable, said on every `/readyz` (the
    /// status unchanged: [`crate::runtime::posture::weakened`]).
    pub weakened: Vec<String>,
    /// The environment's name when it is production (or says neither) and FLAG_RBAC_V2 is on:
    /// [`crate::gateway::promotion::watch`] then reads FLAG_RBAC_V2's `console_flag_promotions`
    /// row (I-11).
    pub promoted_in: Option<String>,
    /// What the last read of that row found, when it is missing or unreadable (`/readyz`).
    pub promotion: std::sync::Mutex<Option<String>>,
    /// `/readyz` asks the watch for a fresh read.
    pub promotion_asked: tokio::sync::Notify,
    /// I-5: whether `--audit-writer-url` is set (without it `/readyz` says I-5 is not met), and
    /// the bound past which an undelivered row is named there.
    pub audit_writer_configured: bool,
    pub audit_writer_alert_after: Duration,
    /// What denials without a session may write (`--anonymous-denial-window`).
    pub anonymous: Arc<crate::gateway::anonymous::Coalescer>,
    /// The schema's migrations as the start-up check and `/readyz` last read them.
    pub schema: std::sync::Mutex<SchemaSeen>,
}

/// The schema's migrations against this binary's, as last read ([`Gateway::schema`]): a read
/// that fails (a slow database, a refused grant) answers from the last state read, so a schema
/// that lacked a migration is not taken for ready on a timeout.
#[derive(Debug, Default)]
pub struct SchemaSeen {
    /// The last state read.
    pub state: Option<crate::stores::migrations::SchemaState>,
    /// Why the latest read failed, until one succeeds (logged when it changes).
    pub error: Option<String>,
}

impl Gateway {
    /// Records a read of the schema's migrations ([`SchemaSeen`]): the lines that stop this
    /// binary from serving (the last state read's, when this read failed) and those named with
    /// the status unchanged (a newer release's migrations; why this read failed).
    pub fn schema_read(
        &self,
        read: Result<crate::stores::migrations::SchemaState, sqlx::Error>,
    ) -> (Vec<String>, Vec<String>) {
        let mut seen = self
            .schema
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match read {
            Ok(state) => {
                seen.error = None;
                let lines = (state.blocking(), state.ahead().into_iter().collect());
                seen.state = Some(state);
                lines
            }
            Err(e) => {
                let why = crate::stores::migrations::schema_unreadable(&e);
                if seen.error.as_deref() != Some(why.as_str()) {
                    tracing::warn!("{why}");
                    seen.error = Some(why.clone());
                }
                let last = seen.state.as_ref().map(|s| s.blocking());
                let last = last.unwrap_or_default().into_iter();
                (
                    last.map(|line| line + " (as last read)").collect(),
                    vec![why],
                )
            }
        }
    }

    /// Updates the gauges that are read, not counted (cache entries, pool connections): before
    /// `/metrics` is rendered and before each OTLP metrics export.
    pub fn refresh_gauges(&self) {
        let (sessions, principals) = self.identity.cache_sizes();
        let m = &self.metrics;
        m.cache_entries
            .with_label_values(&["session"])
            .set(sessions as i64);
        m.cache_entries
            .with_label_values(&["principal"])
            .set(principals as i64);
        let pool = self.identity.pool();
        m.db_pool
            .with_label_values(&["open"])
            .set(pool.pool().size() as i64);
        m.db_pool
            .with_label_values(&["idle"])
            .set(pool.pool().num_idle() as i64);
    }

    /// A gateway whose database is never reached: for `mapping`s whose routes resolve no session
    /// and write no row (public and machine routes), as the bare data plane of
    /// `examples/bare_proxy.rs` and a door started alone in a test use it. Call it inside a
    /// tokio runtime (the audit writer's task starts on it).
    pub fn without_database(mapping: Mapping, upstream: SocketAddr) -> Gateway {
        let metrics = Arc::new(Metrics::new());
        // Lazy: nothing connects until a session is resolved or a row written.
        let pool = crate::stores::db::Db::connect(
            "postgres://unused@127.0.0.1:9/none",
            None,
            1,
            Duration::from_secs(1),
        )
        .expect("a lazy pool from a valid URL");
        let spool = std::env::temp_dir().join(format!("rbac-gateway-{}.spool", std::process::id()));
        Gateway {
            mapping: ArcSwap::from_pointee(mapping),
            identity: Arc::new(Identity::new(
                pool.clone(),
                Duration::from_secs(5),
                1000,
                metrics.clone(),
            )),
            audit: AuditWriter::start(
                pool,
                spool,
                1 << 20,
                Duration::from_secs(1),
                metrics.clone(),
            ),
            metrics,
            kill_switch: false,
            cookie: "console_session".into(),
            upstream,
            connect_timeout: Duration::from_secs(2),
            read_timeout: Duration::from_secs(30),
            ticket_grants: false,
            ticket_validation_url: None,
            tasks: Default::default(),
            rbac_api: false,
            file_rejected: Default::default(),
            mapping_from_db: false,
            mapping_missing: Default::default(),
            feed: Default::default(),
            sweep_failure_threshold: 3,
            weakened: Vec::new(),
            promoted_in: None,
            promotion: Default::default(),
            schema: Default::default(),
            promotion_asked: Default::default(),
            audit_writer_configured: false,
            audit_writer_alert_after: Duration::from_secs(300),
            anonymous: Arc::new(crate::gateway::anonymous::Coalescer::new(Duration::ZERO, 1)),
        }
    }

    /// Records why the file on disk was not applied (None: it was).
    pub fn set_file_rejected(&self, why: Option<String>) {
        *self
            .file_rejected
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = why;
    }

    pub fn file_rejected(&self) -> Option<String> {
        self.file_rejected
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Records why no mapping is loaded yet (None: one is).
    pub fn set_mapping_missing(&self, why: Option<String>) {
        *self
            .mapping_missing
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = why;
    }

    pub fn mapping_missing(&self) -> Option<String> {
        self.mapping_missing
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    pub fn switches(&self) -> Switches {
        Switches {
            kill_switch: self.kill_switch,
            ticket_grants: self.ticket_grants,
        }
    }
}

impl Authority for Gateway {
    async fn principal_for_token(
        &self,
        token: &str,
        at: std::time::Instant,
    ) -> Result<Option<Arc<Principal>>, Unavailable> {
        self.identity
            .principal_for_token(token, at)
            .await
            .map_err(|e| {
                // The cause is in the message: a refused grant, a timeout (style.md).
                tracing::error!(error = %e, "cannot resolve the session: answering 503");
                Unavailable::Identity
            })
    }

    async fn known_admin(&self, token: &str) -> Option<String> {
        self.identity
            .cached_session(token)
            .await
            .map(|s| s.admin_id.clone())
    }

    async fn with_ticket_grants(
        &self,
        principal: &Principal,
        customer: i32,
        request_id: &str,
    ) -> Result<Option<Principal>, Unavailable> {
        // Boxed: a database read (and maybe FreeScout's) each time anyway, and inline its
        // future would be in every request handler hyper keeps per client connection.
        Box::pin(crate::stores::ticket::ticket_principal(
            self.identity.pool(),
            &self.metrics,
            self.ticket_validation_url.as_deref(),
            principal,
            customer,
            request_id,
        ))
        .await
    }
}

/// `route_info` for a newly live mapping (the series of the rules it no longer has go), and
/// its rules' shadow-denial, shadow-agreement and drift counters.
pub fn set_route_metrics(
    m: &Metrics,
    mapping: &crate::policy::mapping::Mapping,
    kill_switch: bool,
) {
    m.route_info.reset();
    for r in &mapping.routes {
        let mode = match r.access {
            crate::policy::mapping::Access::Protected => {
                crate::policy::verdict::effective_mode(r, kill_switch).as_str()
            }
            other => other.as_str(),
        };
        m.route_info
            .with_label_values(&[r.label(), r.meta.cluster.as_deref().unwrap_or("-"), mode])
            .set(1);
        // The per-cluster panels' series exist at 0 from the load on (a reload that puts a
        // rule in shadow finds them there for `rate()`); a rule dropped keeps its counters.
        if r.access == crate::policy::mapping::Access::Protected {
            m.shadow_denials.with_label_values(&[r.label()]);
            m.shadow_agreements.with_label_values(&[r.label()]);
            for kind in crate::policy::outcome::DriftKind::ALL {
                m.drift.with_label_values(&[r.label(), kind.as_str()]);
            }
        }
    }
}

/// The aftermath of every door writes through the audit writer and counts in the metrics.
impl crate::policy::answer::Records for Gateway {
    async fn record(&self, row: Arc<crate::policy::audit_event::AuditEvent>) -> Result<(), String> {
        use crate::gateway::anonymous::Admit;
        if self.anonymous.admit(&row, std::time::Instant::now()) == Admit::Counted {
            self.metrics.anonymous_denials_counted.inc();
            return Ok(());
        }
        self.audit.record(row).await.map_err(|e| e.to_string())
    }

    fn denied(&self, rule: &str, reason: &str) {
        self.metrics
            .denials_by_route
            .with_label_values(&[rule, reason])
            .inc();
    }

    fn shadow_denied(&self, rule: &str) {
        self.metrics.shadow_denials.with_label_values(&[rule]).inc();
    }

    fn refused(&self, reason: &str) {
        self.metrics.refusals.with_label_values(&[reason]).inc();
    }

    fn record_later(&self, row: Arc<crate::policy::audit_event::AuditEvent>) {
        let audit = self.audit.clone();
        tokio::task::spawn(async move {
            if let Err(e) = audit.record(row).await {
                tracing::error!(error = %e, "cannot record a drift event");
            }
        });
    }

    fn shadowed(&self, rule: &str, drifted: Option<&str>) {
        match drifted {
            Some(kind) => self.metrics.drift.with_label_values(&[rule, kind]).inc(),
            None => self
                .metrics
                .shadow_agreements
                .with_label_values(&[rule])
                .inc(),
        }
    }
}
