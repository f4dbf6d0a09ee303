//! The one place the gateway is assembled from its [`Config`]: the metric labels primed (one
//! list), the shared state, the supervised background tasks, the admin listener, the doors the
//! workers serve. Each layer fills a type of the layer below (linkerd2-proxy's stacks): the
//! stores' handles fill the `Gateway`, the `Gateway` fills the doors.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::anyhow;
use arc_swap::ArcSwap;

use super::super::toolbox::{failure, usage};
use super::super::Exit;
use super::config::{Config, Source};
use crate::dataplane::workers::Door;
use crate::doors::forward_auth::ForwardAuthDoor;
use crate::doors::proxy::ProxyDoor;
use crate::gateway::state::Gateway;
use crate::runtime::metrics::Metrics;
use crate::runtime::signals::Signals;
use crate::runtime::supervise::{self, Task, Tasks};
use crate::stores::audit::{AuditWriter, Writing};
use crate::stores::db::Db;
use crate::stores::identity::Identity;

/// A supervised background task's future.
type Job = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// Every labelled series whose labels are known before the first request, created at 0 so a
/// dashboard's query (and `rate()`) finds them from start-up, whether or not the door that
/// counts them listens. The runtime's own vocabulary (cache kinds, audit sinks, ...) is primed
/// by `Metrics::new`; the live mapping's rules by `set_route_metrics` on every swap.
pub fn prime_labels(m: &Metrics, config: &Config) {
    use crate::policy::answer::{BodyRefusal, Decision};
    for d in Decision::ALL {
        m.requests.with_label_values(&[d.as_str()]);
        m.decision_seconds.with_label_values(&[d.as_str()]);
        m.authz_requests.with_label_values(&[d.as_str()]);
    }
    if config.rbac_api {
        m.requests
            .with_label_values(&[crate::policy::reader::LABEL]);
    }
    // Refused before the decision (the request line and headers, the session cookie), or by the
    // data plane after it: a request body that is malformed or cut, stopped arriving, is too
    // large, or would go over the bodies' budget.
    let refusals = crate::policy::target::Refusal::REASONS
        .iter()
        .copied()
        .chain(BodyRefusal::ALL.iter().map(|r| r.as_str()))
        .chain(
            crate::policy::cookie::CookieRefusal::ALL
                .iter()
                .map(|r| r.as_str()),
        );
    for r in refusals {
        m.refusals.with_label_values(&[r]);
    }
    for task in Task::ALL {
        m.task_failures.with_label_values(&[task.as_str()]);
    }
    // Route labels are the mapping's; `no_route` (route "-") is the one known up front.
    m.denials_by_route
        .with_label_values(&["-", crate::policy::verdict::REASON_NO_ROUTE]);
    for l in [
        crate::doors::proxy::LISTENER,
        crate::doors::forward_auth::LISTENER,
    ] {
        m.connections.with_label_values(&[l]);
    }
    for r in crate::doors::freescout_webhook::RESULTS {
        m.freescout_webhooks.with_label_values(&[r]);
    }
}

/// How `/readyz` and `/metrics` come to be served.
pub enum Admin {
    /// File mode: bound, served once the data plane listens (`/readyz` never answers 200 for
    /// a gateway that cannot take requests).
    Bound(tokio::net::TcpListener),
    /// Database mode: served since start-up, saying why it is not ready until the active
    /// version is loaded.
    Serving,
}

/// The gateway assembled: its state and tasks running, its admin listener bound.
pub struct Assembled {
    pub gw: Arc<Gateway>,
    pub admin: Admin,
    pub admin_bound: SocketAddr,
    /// The audit writer's queue end, for the data plane's first worker to write from
    /// (`cli/serve/mod.rs`, `audit_writer_beside`).
    pub writing: Writing,
}

/// The state and every background task. `Ok(None)`: stopped by a signal before a mapping
/// version was loaded from the database (nothing was served).
pub async fn gateway(
    config: &Config,
    metrics: Arc<Metrics>,
    signals: &Signals,
) -> Result<Option<Assembled>, Exit> {
    let db_timeout = config.db_timeout;
    let pool = Db::connect(
        &config.database.url,
        config.database.direct_url.as_deref(),
        config.database.pool_size,
        db_timeout,
    )
    .map_err(usage)?
    .with_statements(config.database.statements);
    // The request path's reads of Console's tables as a login of their own, each in a
    // transaction that is read-only from its first statement (one simple query, its
    // `SET LOCAL transaction_read_only` in the same message; `BEGIN READ ONLY`): code of
    // Console's that runs on such a read can write nothing, whatever the login may, and cannot
    // turn it read-write once the read began (docs/design/security.md). Simple queries only: a
    // named statement's transaction would take the session's default, which that code could
    // change for the next one.
    let lookups = match config.database.lookup_url.as_deref() {
        None => None,
        Some(url) => Some(
            Db::connect_lookups(url, config.database.pool_size, db_timeout)
                .map_err(|e| usage(anyhow!("--lookup-database-url: {e}")))?,
        ),
    };
    let tasks = Arc::new(Tasks::default());
    let supervised = |name, task| supervise::spawn(tasks.clone(), metrics.clone(), name, task);
    let (gw, active_rx, writing) = state(config, &pool, lookups, &metrics, &tasks, &supervised);
    if !config.mapping_in_database() {
        report_loaded(config, &gw);
    }
    // I-11: read beside the start (never delaying it) and every 30 s, said on /readyz.
    if let Some(env) = gw.promoted_in.clone() {
        supervised(
            Task::Promotion,
            Box::pin(crate::gateway::promotion::watch(
                gw.clone(),
                env,
                db_timeout,
            )),
        );
    }
    // Bound now, so a port in use is found before anything else starts.
    let admin_addr = config.admin;
    let admin = crate::dataplane::listen::bind_side(admin_addr)
        .map_err(|e| failure(anyhow!("cannot listen on {admin_addr}: {e}")))?;
    let admin_bound = admin.local_addr().map_err(failure)?;
    let audit = gw.audit.clone();
    let writer = audit.clone();
    supervised(
        Task::AuditReplay,
        Box::pin(audit.replay_forever(Duration::from_millis(500))),
    );
    supervised(
        Task::AnonymousDenials,
        Box::pin(crate::gateway::anonymous::flush_forever(
            gw.anonymous.clone(),
            move |row| {
                let writer = writer.clone();
                async move { writer.record(row).await.map_err(|e| e.to_string()) }
            },
        )),
    );
    let loading = Loading {
        pool: &pool,
        active_rx,
        signals,
        supervised: &supervised,
    };
    let Some(admin) = live_mapping(config, &gw, admin, admin_bound, loading).await else {
        return Ok(None);
    };
    tokio::spawn(crate::gateway::reload::check_database_at_start(
        gw.clone(),
        db_timeout.max(Duration::from_secs(2)),
    ));
    jobs(config, &pool, &metrics, supervised)?;
    Ok(Some(Assembled {
        gw,
        admin,
        admin_bound,
        writing,
    }))
}

/// The shared state over the stores: the identity cache, the change feed (supervised) and the
/// audit writer, and the `Gateway` every door answers through. With the mapping in the
/// database, the receiver of the active versions the feed reports; and the audit writer's
/// queue end, which `serve` hands to the data plane.
fn state(
    config: &Config,
    pool: &Db,
    lookups: Option<Db>,
    metrics: &Arc<Metrics>,
    tasks: &Arc<Tasks>,
    supervised: &impl Fn(Task, Job),
) -> (Arc<Gateway>, Active, Writing) {
    let db_timeout = config.db_timeout;
    let identity = Identity::new(
        pool.clone(),
        config.cache_ttl,
        config.cache_capacity,
        metrics.clone(),
    )
    .with_break_glass_requires_alert(config.decision.break_glass_requires_alert)
    .with_query_timeout(db_timeout);
    let identity = Arc::new(match lookups {
        Some(lookups) => identity.with_lookups(lookups),
        None => identity,
    });
    let feed = Arc::new(crate::stores::feed::Health::default());
    // With the mapping in the database, the feed's read also reports the active version.
    let (active_tx, active_rx) = tokio::sync::watch::channel(None);
    let active_tx = config.mapping_in_database().then_some(active_tx);
    supervised(
        Task::Feed,
        Box::pin(
            crate::stores::feed::Feed {
                pool: pool.clone(),
                identity: identity.clone(),
                metrics: metrics.clone(),
                health: feed.clone(),
                limit: db_timeout,
                mapping: active_tx,
            }
            .follow(),
        ) as Job,
    );
    let (audit, writing) = AuditWriter::new(
        pool.clone(),
        config.spool.path.clone(),
        config.spool.max_bytes,
        db_timeout,
        metrics.clone(),
    );
    warn_of_settings(config);
    // From the database, the mapping is read once the pool exists; until then a placeholder
    // that no request ever sees (the data plane listens only once the real one is loaded).
    let mapping = match &config.source {
        Source::File { mapping, .. } => mapping.clone(),
        Source::Database { .. } => Arc::new(placeholder()),
    };
    let from_db = config.mapping_in_database();
    let gw = Gateway {
        mapping: ArcSwap::new(mapping),
        identity,
        audit,
        metrics: metrics.clone(),
        kill_switch: config.kill_switch(),
        cookie: config.session_cookie.clone(),
        upstream: config.upstream,
        connect_timeout: config.upstream_connect_timeout,
        read_timeout: config.upstream_read_timeout,
        ticket_grants: config.decision.ticket_grants(),
        ticket_validation_url: config.decision.ticket_validation_url.clone(),
        tasks: tasks.clone(),
        rbac_api: config.rbac_api,
        file_rejected: Default::default(),
        mapping_from_db: from_db,
        mapping_missing: std::sync::Mutex::new(
            from_db.then(|| "loading the active mapping version from the database".to_string()),
        ),
        feed,
        sweep_failure_threshold: config.sweep.failure_threshold,
        weakened: crate::runtime::posture::weakened(&config.decision, &config.posture),
        promotion: Default::default(),
        schema: Default::default(),
        promotion_asked: Default::default(),
        promoted_in: config
            .posture
            .environment()
            .filter(|e| {
                e.kind() != crate::runtime::posture::Kind::NotProduction && !config.kill_switch()
            })
            .map(|e| e.name),
        audit_writer_configured: config.audit_writer.is_some(),
        audit_writer_alert_after: config.audit_writer_alert_after,
        anonymous: Arc::new(crate::gateway::anonymous::Coalescer::new(
            config.anonymous.window,
            config.anonymous.keys,
        )),
    };
    (Arc::new(gw), active_rx, writing)
}

/// The active versions the change feed reports (read with the mapping in the database).
type Active = tokio::sync::watch::Receiver<crate::stores::feed::ActiveMapping>;

/// What loading the mapping from the database waits with.
struct Loading<'a, F> {
    pool: &'a Db,
    active_rx: Active,
    signals: &'a Signals,
    supervised: &'a F,
}

/// The live mapping kept current: the file watched, or the active version loaded from the
/// database (the admin listener served meanwhile, saying why it is not ready) and followed.
/// None: stopped by a signal before a version was loaded.
async fn live_mapping<F: Fn(Task, Job)>(
    config: &Config,
    gw: &Arc<Gateway>,
    admin: tokio::net::TcpListener,
    admin_bound: SocketAddr,
    loading: Loading<'_, F>,
) -> Option<Admin> {
    let Loading {
        pool,
        active_rx,
        signals,
        supervised,
    } = loading;
    let public_key = match &config.source {
        Source::File { path, .. } => {
            supervised(
                Task::Reload,
                Box::pin(crate::gateway::reload::watch(
                    gw.clone(),
                    path.clone(),
                    signals.hangups(),
                )),
            );
            return Some(Admin::Bound(admin));
        }
        Source::Database { public_key } => *public_key,
    };
    // Served now: until the active version is loaded, /readyz answers 503 saying why (nothing
    // listens on --listen, so no request is decided without a mapping).
    tracing::info!(admin_listen = %admin_bound, "loading the mapping from the database (--mapping-source database): not ready until the active version is loaded");
    supervised(
        Task::Admin,
        Box::pin(crate::doors::admin::serve(admin, gw.clone())),
    );
    if let Some(key) = &public_key {
        tracing::info!(public_key = %crate::stores::mapping_store::signing::fingerprint(key),
            "--mapping-public-key: only versions signed by this key are applied");
    }
    // One receiver from the wait through the following: a SIGHUP in between is not lost.
    let mut hup = signals.hangups();
    let loading = crate::gateway::reload::load_active_at_start(
        pool,
        public_key.as_ref(),
        |why| gw.set_mapping_missing(Some(why)),
        &mut hup,
    );
    let loaded = tokio::select! {
        loaded = loading => loaded,
        signal = signals.stopped() => {
            tracing::info!(signal, "stopped before a mapping version was loaded: nothing was served");
            return None;
        }
    };
    gw.mapping.store(Arc::new(loaded));
    report_loaded(config, gw);
    supervised(
        Task::Reload,
        Box::pin(crate::gateway::reload::follow_database(
            gw.clone(),
            pool.clone(),
            public_key,
            active_rx,
            hup,
        )),
    );
    Some(Admin::Serving)
}

/// The jobs beside the requests: the alerts, the sweep (unless `--sweep-interval 0`) and the
/// FreeScout webhook's receiver (with `--freescout-webhook-listen`).
fn jobs(
    config: &Config,
    pool: &Db,
    metrics: &Arc<Metrics>,
    supervised: impl Fn(Task, Job),
) -> Result<(), Exit> {
    supervised(
        Task::Alerts,
        Box::pin(crate::jobs::alerts::alerts_forever(
            pool.clone(),
            config.posture.alert_webhook_url.clone(),
            Duration::from_secs(1),
            config.db_timeout,
            metrics.clone(),
        )),
    );
    // I-5: the gateway's rbac_grants_audit rows delivered to Console's audit writer (every
    // replica; a row is claimed by one at a time). Without a writer it counts and alerts.
    supervised(
        Task::AuditOutbox,
        Box::pin(crate::jobs::audit_outbox::run_forever(
            pool.clone(),
            crate::jobs::audit_outbox::OutboxSettings {
                writer: config.audit_writer.clone(),
                alert_after: config.audit_writer_alert_after,
                interval: Duration::from_secs(1),
                limit: config.db_timeout,
            },
            metrics.clone(),
        )),
    );
    let sweeping = !config.sweep.interval.is_zero();
    if sweeping {
        supervised(
            Task::Sweeper,
            Box::pin(crate::jobs::sweep::run_forever(
                pool.clone(),
                crate::jobs::sweep::SweepSettings {
                    validation_url: config.decision.ticket_validation_url.clone(),
                    freescout_timeout: config.sweep.freescout_timeout,
                    concurrency: config.sweep.freescout_concurrency,
                    limit: config.db_timeout,
                },
                config.sweep.interval,
                metrics.clone(),
            )),
        );
    }
    if let Some(webhook) = &config.webhook {
        let addr = webhook.addr;
        let listener = crate::dataplane::listen::bind_side(addr).map_err(|e| {
            failure(anyhow!(
                "cannot listen on {addr} (--freescout-webhook-listen): {e}"
            ))
        })?;
        let receiver = Arc::new(crate::doors::freescout_webhook::Receiver {
            pool: pool.clone(),
            auth: webhook.auth.clone(),
            validation_url: webhook.validation_url.clone(),
            freescout_timeout: config.sweep.freescout_timeout,
            db_limit: config.db_timeout,
            metrics: metrics.clone(),
            sweep_interval: sweeping.then_some(config.sweep.interval),
        });
        // The address bound (port 0 resolved): tests read it from this line.
        let bound = listener.local_addr().map_err(failure)?;
        tracing::info!(freescout_webhook_listen = %bound, path = crate::doors::freescout_webhook::PATH, "FreeScout webhook receiver listening");
        supervised(
            Task::FreescoutWebhook,
            Box::pin(crate::doors::freescout_webhook::serve(listener, receiver)),
        );
    }
    Ok(())
}

/// Settings that run but weaken what the gateway does, said once at start-up.
fn warn_of_settings(config: &Config) {
    if config.audit_writer.is_none() {
        tracing::warn!(
            setting = "--audit-writer-url",
            "I-5 is NOT met: no --audit-writer-url, so the rbac_grants_audit rows the gateway writes \
             (ticket_expire, break_glass_expire) never reach customer_audit_events; they wait in \
             rbac_gateway_audit_outbox, counted (rbac_gateway_audit_outbox_undelivered) and alerted"
        );
    }
    if config.kill_switch() {
        tracing::warn!(
            "FLAG_RBAC_V2=0: kill switch on, every route is off (forwarded; Console decides)"
        );
    }
    // Each invariant a setting breaks, or a missing setting makes unreachable (also on /readyz).
    for line in crate::runtime::posture::weakened(&config.decision, &config.posture) {
        tracing::warn!("{line}");
    }
}

/// The live mapping's metrics, warnings and `mapping loaded` line: from the file before the
/// admin port is bound (as ever: a supervisor reads the line), from the database once the
/// active version is loaded.
fn report_loaded(config: &Config, gw: &Gateway) {
    let mapping = gw.mapping.load_full();
    let metrics = &gw.metrics;
    metrics
        .mapping_info
        .with_label_values(&[&mapping.version])
        .set(1);
    crate::gateway::state::set_route_metrics(metrics, &mapping, gw.kill_switch);
    for w in &mapping.warnings {
        tracing::warn!(warning = %w, "mapping warning");
    }
    let source = match &config.source {
        Source::Database { .. } => crate::gateway::reload::db_name(&mapping.version),
        Source::File { path, .. } => path.display().to_string(),
    };
    tracing::info!(
        routes = mapping.routes.len(), mapping_version = %mapping.version, file = %source,
        upstream = %config.upstream, listen = %config.listen, threads = config.threads,
        kill_switch = gw.kill_switch, "mapping loaded"
    );
}

/// Every door the workers serve, each on its address: the proxy, and forward-auth with
/// `--authz-listen`.
pub fn doors(config: &Config, gw: &Arc<Gateway>) -> Vec<(SocketAddr, Arc<dyn Door>)> {
    let mut doors: Vec<(SocketAddr, Arc<dyn Door>)> = vec![(
        config.listen,
        Arc::new(ProxyDoor::new(gw.clone(), config.proxy.clone())),
    )];
    if let Some(addr) = config.authz {
        doors.push((
            addr,
            Arc::new(ForwardAuthDoor::new(gw.clone(), config.proxy.http.clone())),
        ));
    }
    doors
}

/// A valid mapping that no request is decided by: `--mapping-source database` before the active
/// version is loaded (the data plane does not listen yet).
fn placeholder() -> crate::policy::mapping::Mapping {
    let text = "[[route]]\nmethods = [\"GET\"]\npath = \"/\"\naccess = \"gone\"\n";
    crate::policy::mapping::Mapping::from_str("database", std::path::Path::new("database"), text)
        .expect("the placeholder mapping loads")
}
