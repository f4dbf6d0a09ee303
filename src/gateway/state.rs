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
    /// What kind of failure the latest read was, until one succeeds: a refusal, a timeout,
    /// else its text (logged when it changes, not at every probe).
    pub failing: Option<String>,
}

/// What a read of the schema's migrations gives `/readyz` ([`SchemaSeen::read`]).
#[derive(Debug, PartialEq, Eq)]
pub struct SchemaLines {
    /// What stops this binary from serving (503).
    pub blocking: Vec<String>,
    /// What is named with the status unchanged.
    pub noted: Vec<String>,
    /// Why this read failed, when it fails otherwise than the one before: to log.
    pub newly_failing: Option<String>,
}

impl SchemaSeen {
    /// Records a read: its lines, or the last state's (" (as last read)") when it failed, with
    /// why it failed.
    pub fn read(
        &mut self,
        read: Result<crate::stores::migrations::SchemaState, sqlx::Error>,
    ) -> SchemaLines {
        match read {
            Ok(state) => {
                self.failing = None;
                let lines = SchemaLines {
                    blocking: state.blocking(),
                    noted: state.ahead().into_iter().collect(),
                    newly_failing: None,
                };
                self.state = Some(state);
                lines
            }
            Err(e) => {
                let why = crate::stores::migrations::schema_unreadable(&e);
                let kind = failure_kind(&e);
                let newly_failing =
                    (self.failing.as_deref() != Some(kind.as_str())).then(|| why.clone());
                self.failing = Some(kind);
                let last = |lines: Vec<String>| -> Vec<String> {
                    lines
                        .into_iter()
                        .map(|line| line + " (as last read)")
                        .collect()
                };
                let (blocking, mut noted) = match &self.state {
                    Some(state) => (
                        last(state.blocking()),
                        last(state.ahead().into_iter().collect()),
                    ),
                    None => (Vec::new(), Vec::new()),
                };
                noted.push(why);
                SchemaLines {
                    blocking,
                    noted,
                    newly_failing,
                }
            }
        }
    }
}

/// A failed read's kind, for the log: a timeout's text varies with which limit came first (the
/// server's statement or lock timeout, the probe's own).
fn failure_kind(e: &sqlx::Error) -> String {
    let code = match e {
        sqlx::Error::Database(d) => d.code().map(|c| c.into_owned()),
        _ => None,
    };
    match (e, code.as_deref()) {
        (_, Some("42501")) => "refused".into(),
        (_, Some("57014" | "55P03")) | (sqlx::Error::PoolTimedOut, _) => "timeout".into(),
        (sqlx::Error::Io(io), _) if io.kind() == std::io::ErrorKind::TimedOut => "timeout".into(),
        _ => e.to_string(),
    }
}

impl Gateway {
    /// Records a read of the schema's migrations ([`SchemaSeen::read`]), logging a failure once
    /// per kind: the lines that stop this binary from serving, and those named with the status
    /// unchanged.
    pub fn schema_read(
        &self,
        read: Result<crate::stores::migrations::SchemaState, sqlx::Error>,
    ) -> (Vec<String>, Vec<String>) {
        let lines = self
            .schema
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .read(read);
        if let Some(why) = lines.newly_failing {
            tracing::warn!("{why}");
        }
        (lines.blocking, lines.noted)
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
        let pools = [
            (&m.db_pool, Some(self.identity.pool())),
            (&m.lookup_pool, self.identity.own_lookups()),
        ];
        for (gauge, db) in pools {
            if let Some(db) = db {
                gauge
                    .with_label_values(&["open"])
                    .set(db.pool().size() as i64);
                gauge
                    .with_label_values(&["idle"])
                    .set(db.pool().num_idle() as i64);
            }
        }
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
            self.identity.lookups(),
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

#[cfg(test)]
mod tests {
    use super::SchemaSeen;
    use crate::stores::migrations::SchemaState;

    fn timeout(limit: &str) -> sqlx::Error {
        sqlx::Error::Io(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("the database did not answer within {limit} ms"),
        ))
    }

    #[test]
    fn a_failed_read_answers_from_the_last_state_and_is_logged_once_per_kind() {
        let behind = SchemaState {
            missing: vec![35],
            newer: vec![99],
            ..SchemaState::default()
        };
        let mut seen = SchemaSeen::default();
        // Never read: nothing blocks, the failure is named and logged.
        let lines = seen.read(Err(timeout("2000")));
        assert!(lines.blocking.is_empty());
        assert!(lines.newly_failing.is_some());
        assert!(lines.noted[0].contains("not read"), "{lines:?}");

        let lines = seen.read(Ok(behind.clone()));
        assert_eq!(lines.blocking, behind.blocking());
        assert_eq!(lines.newly_failing, None);
        // Behind, then a timeout (of either limit's wording): still blocking, as last read;
        // logged once, since it is the same kind of failure each time.
        let lines = seen.read(Err(timeout("2000")));
        assert_eq!(lines.blocking.len(), 1);
        assert!(lines.blocking[0].ends_with(" (as last read)"), "{lines:?}");
        assert!(
            lines.noted[0].contains("0099 applied by a newer release"),
            "{lines:?}"
        );
        assert!(lines.noted[0].ends_with(" (as last read)"), "{lines:?}");
        assert!(lines.newly_failing.is_some());
        let lines = seen.read(Err(timeout("1700")));
        assert_eq!(lines.newly_failing, None, "{lines:?}");
        assert_eq!(lines.blocking.len(), 1);
        // Another kind of failure is logged; a read that succeeds clears it.
        let lines = seen.read(Err(sqlx::Error::Protocol("lost".into())));
        assert!(lines.newly_failing.is_some());
        let lines = seen.read(Ok(SchemaState::default()));
        assert_eq!((lines.blocking, lines.noted), (vec![], vec![]));
        assert_eq!(seen.failing, None);
        // Fine, then a timeout: nothing blocks.
        let lines = seen.read(Err(timeout("2000")));
        assert!(lines.blocking.is_empty(), "{lines:?}");
        assert!(lines.newly_failing.is_some());
    }
}
