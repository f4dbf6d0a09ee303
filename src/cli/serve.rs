//! `rbac-gateway serve`: runs the gateway.

use std::sync::Arc;
use std::time::Duration;

use anyhow::anyhow;
use arc_swap::ArcSwap;

use super::{failure, init_logging, load_mapping, resolve, usage, Exit};
use crate::dataplane::workers::{self, Door, Http1Settings, StartError};
use crate::doors::forward_auth::ForwardAuthDoor;
use crate::doors::proxy::{self, ProxyDoor, Settings};
use crate::gateway::state::Gateway;
use crate::runtime::config::ServeArgs;
use crate::runtime::metrics::Metrics;
use crate::runtime::signals::Signals;
use crate::runtime::supervise::{self, Task, Tasks};
use crate::stores::audit::AuditWriter;
use crate::stores::db;
use crate::stores::identity::Identity;

/// A supervised background task's future.
type Job = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

pub fn serve(args: ServeArgs) -> Result<(), Exit> {
    init_logging(&args.log_format);
    // The runtime for everything that is not request handling: admin listener, spool replay,
    // signals. It lives as long as the process. Made first, so the signal handlers are in place
    // before anything is loaded: SIGHUP never ends the process, SIGTERM never kills it mid-start.
    let bg = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("rbac-gateway-bg")
        .enable_all()
        .build()
        .map_err(failure)?;
    let signals = {
        let _runtime = bg.enter();
        Signals::install()
            .map_err(|e| failure(anyhow!("cannot install the signal handlers: {e}")))?
    };
    if args.log_format != "json" && args.log_format != "text" {
        return Err(usage(anyhow!("--log-format must be json or text")));
    }
    if !(args.sweep_interval.is_finite() && args.sweep_interval >= 0.0) {
        return Err(usage(anyhow!(
            "--sweep-interval must be a number of seconds >= 0"
        )));
    }
    if !(args.cache_ttl.is_finite() && args.cache_ttl >= 0.0) {
        return Err(usage(anyhow!(
            "--cache-ttl must be a number of seconds >= 0"
        )));
    }
    let from_db = args.mapping_source == "database";
    let public_key = match &args.mapping_public_key {
        None => None,
        Some(_) if !from_db => {
            return Err(usage(anyhow!(
                "--mapping-public-key verifies versions read from the database: it needs --mapping-source database"
            )))
        }
        Some(path) => Some(
            crate::stores::mapping_store::signing::read_public_key(path)
                .map_err(|e| usage(anyhow!("--mapping-public-key {e}")))?,
        ),
    };
    // From the database, the mapping is read once the pool exists; until then a placeholder
    // that no request ever sees (the data plane listens only once the real one is loaded).
    let mapping = if from_db {
        placeholder()
    } else {
        load_mapping(&args.routes)?
    };
    let upstream = resolve(&args.upstream, "--upstream")?;
    let listen = resolve(&args.listen, "--listen")?;
    let admin_addr = resolve(&args.admin_listen, "--admin-listen")?;
    let authz_addr = match &args.authz_listen {
        None => None,
        Some(a) => Some(resolve(a, "--authz-listen")?),
    };
    let webhook_addr = match &args.freescout_webhook_listen {
        None => None,
        Some(a) => Some(resolve(a, "--freescout-webhook-listen")?),
    };
    // The receiver revokes only what FreeScout itself reports closed, and only for callers that
    // know the secret: without either it is refused, not run open.
    let webhook_auth = match (&webhook_addr, &args.freescout_webhook_secret) {
        (None, _) => None,
        (Some(_), None) => {
            return Err(usage(anyhow!(
                "--freescout-webhook-listen needs --freescout-webhook-secret (GATEWAY_FREESCOUT_WEBHOOK_SECRET)"
            )))
        }
        (Some(_), Some(secret)) => Some(
            crate::doors::freescout_webhook::Auth::new(&args.freescout_webhook_auth, secret)
                .map_err(|e| usage(anyhow!(e)))?,
        ),
    };
    if webhook_addr.is_some() && args.ticket_validation_url.is_none() {
        return Err(usage(anyhow!(
            "--freescout-webhook-listen needs --ticket-validation-url: a webhook call is only a hint, the ticket's status is read again from FreeScout"
        )));
    }
    if args.freescout_concurrency == 0
        || args.freescout_timeout_ms == 0
        || args.sweep_failure_threshold == 0
    {
        return Err(usage(anyhow!(
            "--freescout-concurrency, --freescout-timeout-ms and --sweep-failure-threshold must be > 0"
        )));
    }
    // Two listeners on one port: the second bind would fail only after the 1 s retry meant for
    // a restart, with a message about another process. Said here instead, before anything runs.
    let named = [
        ("--listen", Some(listen)),
        ("--admin-listen", Some(admin_addr)),
        ("--authz-listen", authz_addr),
        ("--freescout-webhook-listen", webhook_addr),
    ];
    for (i, (a_flag, a)) in named.iter().enumerate() {
        for (b_flag, b) in &named[i + 1..] {
            if let (Some(a), Some(b)) = (a, b) {
                if overlap(*a, *b) {
                    return Err(usage(anyhow!(
                        "{a_flag} {a} and {b_flag} {b} need different ports: one listener cannot serve both"
                    )));
                }
            }
        }
    }
    if args.max_body_bytes == 0 || args.max_header_bytes < 1024 || args.max_headers == 0 {
        return Err(usage(anyhow!(
            "--max-body-bytes and --max-headers must be > 0, --max-header-bytes >= 1024"
        )));
    }
    if args.max_buffered_body_bytes < args.max_body_bytes {
        return Err(usage(anyhow!(
            "--max-buffered-body-bytes must be at least --max-body-bytes: a body of the largest size allowed could never be read"
        )));
    }
    let threads = args
        .threads
        .unwrap_or_else(crate::dataplane::workers::default_threads);
    // OpenTelemetry (the OTEL_* variables): checked before anything is bound, as a flag is.
    let telemetry_settings =
        crate::runtime::telemetry::config::from_env(&|k| std::env::var(k).ok())
            .map_err(|e| usage(anyhow!("{e}")))?;

    let metrics = Arc::new(Metrics::new());
    crate::gateway::state::prime_metric_labels(&metrics);
    crate::doors::freescout_webhook::prime_metric_labels(&metrics);
    let db_timeout = Duration::from_millis(args.db_timeout_ms);
    let started = bg.block_on(async {
        let pool = db::Db::connect(
            &args.database_url,
            args.direct_database_url.as_deref(),
            args.db_pool_size,
            db_timeout,
        )
        .map_err(usage)?;
        let identity = Arc::new(
            Identity::new(
                pool.clone(),
                Duration::from_secs_f64(args.cache_ttl),
                args.cache_capacity,
                metrics.clone(),
            )
            .with_break_glass_requires_alert(args.break_glass_requires_alert)
            .with_query_timeout(db_timeout),
        );
        let tasks = Arc::new(Tasks::default());
        let supervised = |name, task| supervise::spawn(tasks.clone(), metrics.clone(), name, task);
        let feed = Arc::new(crate::stores::feed::Health::default());
        // With the mapping in the database, the feed's read also reports the active version.
        let (active_tx, active_rx) = tokio::sync::watch::channel(None);
        let active_tx = from_db.then_some(active_tx);
        supervised(Task::Feed, Box::pin(crate::stores::feed::follow(pool.clone(), identity.clone(), metrics.clone(), feed.clone(), db_timeout, active_tx)) as Job);
        let (audit, writer) = AuditWriter::new(
            pool.clone(),
            args.audit_spool_durable.then(|| args.audit_spool.clone()),
            args.audit_spool_max_bytes,
            db_timeout,
            metrics.clone(),
        );
        supervised(Task::AuditWriter, Box::pin(writer));
        if args.kill_switch() {
            tracing::warn!("FLAG_RBAC_V2=0: kill switch on, every route is off (forwarded; Console decides)");
        }
        if args.flag_ticket_scoped_grants && args.ticket_validation_url.is_none() {
            tracing::warn!(
                "no --ticket-validation-url: ticket grants are honoured from rbac_ticket_grants alone; no ticket is \
                 re-checked against FreeScout per request (004 §9.3) and the sweep revokes only expired grants \
                 (set the URL, or FLAG_TICKET_SCOPED_GRANTS=0 to honour none)"
            );
        }
        let gw = Arc::new(Gateway {
            mapping: ArcSwap::from_pointee(mapping),
            identity,
            audit: audit.clone(),
            metrics: metrics.clone(),
            kill_switch: args.kill_switch(),
            cookie: args.session_cookie.clone(),
            upstream,
            connect_timeout: Duration::from_millis(args.upstream_connect_timeout_ms),
            read_timeout: Duration::from_millis(args.upstream_read_timeout_ms),
            ticket_grants: args.flag_ticket_scoped_grants,
            ticket_validation_url: args.ticket_validation_url.clone(),
            tasks: tasks.clone(),
            rbac_api: args.rbac_api,
            file_rejected: Default::default(),
            mapping_from_db: from_db,
            mapping_missing: std::sync::Mutex::new(from_db.then(|| "loading the active mapping version from the database".to_string())),
            feed: feed.clone(),
            sweep_failure_threshold: args.sweep_failure_threshold,
        });
        if args.rbac_api {
            metrics.requests.with_label_values(&[crate::doors::rbac_api::LABEL]);
        }
        // The live mapping's metrics, warnings and `mapping loaded` line: from the file before
        // the admin port is bound (as ever: a supervisor reads the line), from the database once
        // the active version is loaded.
        let report_loaded = || {
            let mapping = gw.mapping.load_full();
            metrics.mapping_info.with_label_values(&[&mapping.version]).set(1);
            crate::gateway::state::set_route_metrics(&metrics, &mapping, args.kill_switch());
            for w in &mapping.warnings {
                tracing::warn!(warning = %w, "mapping warning");
            }
            let source = if from_db { crate::gateway::reload::db_name(&mapping.version) } else { args.routes.display().to_string() };
            tracing::info!(
                routes = mapping.routes.len(), mapping_version = %mapping.version, file = %source,
                upstream = %upstream, listen = %listen, threads, kill_switch = args.kill_switch(), "mapping loaded"
            );
        };
        if !from_db {
            report_loaded();
        }
        // Bound now, so a port in use is found before anything else starts; served only once the
        // data plane (and the forward-auth listener) listen: `/readyz` never answers 200 for a
        // gateway that cannot take requests.
        let admin = crate::dataplane::listen::bind_side(admin_addr)
            .map_err(|e| failure(anyhow!("cannot listen on {admin_addr}: {e}")))?;
        let admin_bound = admin.local_addr().map_err(failure)?;
        supervised(Task::AuditReplay, Box::pin(audit.replay_forever(Duration::from_millis(500))));
        let admin = if from_db {
            // Served now: until the active version is loaded, /readyz answers 503 saying why
            // (nothing listens on --listen, so no request is decided without a mapping).
            tracing::info!(admin_listen = %admin_bound, "loading the mapping from the database (--mapping-source database): not ready until the active version is loaded");
            supervised(Task::Admin, Box::pin(crate::doors::admin::serve(admin, gw.clone())));
            if let Some(key) = &public_key {
                tracing::info!(public_key = %crate::stores::mapping_store::signing::fingerprint(key),
                    "--mapping-public-key: only versions signed by this key are applied");
            }
            // One receiver from the wait through the following: a SIGHUP in between is not lost.
            let mut hup = signals.hangups();
            let loading = crate::gateway::reload::load_active_at_start(&pool, public_key.as_ref(), |why| gw.set_mapping_missing(Some(why)), &mut hup);
            let loaded = tokio::select! {
                loaded = loading => loaded,
                signal = signals.stopped() => {
                    tracing::info!(signal, "stopped before a mapping version was loaded: nothing was served");
                    return Ok(None);
                }
            };
            gw.mapping.store(Arc::new(loaded));
            report_loaded();
            supervised(Task::Reload, Box::pin(crate::gateway::reload::follow_database(gw.clone(), pool.clone(), public_key, active_rx, hup)));
            None
        } else {
            supervised(Task::Reload, Box::pin(crate::gateway::reload::watch(gw.clone(), args.routes.clone(), signals.hangups())));
            Some(admin)
        };
        tokio::spawn(crate::gateway::reload::check_database_at_start(
            gw.clone(),
            db_timeout.max(Duration::from_secs(2)),
        ));
        supervised(
            Task::Alerts,
            Box::pin(crate::jobs::alerts::alerts_forever(
                pool.clone(),
                args.alert_webhook_url.clone(),
                Duration::from_secs(1),
                db_timeout,
                metrics.clone(),
            )),
        );
        if args.sweep_interval > 0.0 {
            supervised(
                Task::Sweeper,
                Box::pin(crate::jobs::sweep::run_forever(
                    pool.clone(),
                    crate::jobs::sweep::SweepSettings {
                        validation_url: args.ticket_validation_url.clone(),
                        freescout_timeout: Duration::from_millis(args.freescout_timeout_ms),
                        concurrency: args.freescout_concurrency,
                        limit: db_timeout,
                    },
                    Duration::from_secs_f64(args.sweep_interval),
                    metrics.clone(),
                )),
            );
        }
        if let (Some(addr), Some(auth), Some(url)) =
            (webhook_addr, webhook_auth, args.ticket_validation_url.clone())
        {
            let listener = crate::dataplane::listen::bind_side(addr)
                .map_err(|e| failure(anyhow!("cannot listen on {addr} (--freescout-webhook-listen): {e}")))?;
            let receiver = Arc::new(crate::doors::freescout_webhook::Receiver {
                pool: pool.clone(),
                auth,
                validation_url: url,
                freescout_timeout: Duration::from_millis(args.freescout_timeout_ms),
                db_limit: db_timeout,
                metrics: metrics.clone(),
                sweep_interval: (args.sweep_interval > 0.0)
                    .then(|| Duration::from_secs_f64(args.sweep_interval)),
            });
            // The address bound (port 0 resolved): tests read it from this line.
            let bound = listener.local_addr().map_err(failure)?;
            tracing::info!(freescout_webhook_listen = %bound, path = crate::doors::freescout_webhook::PATH, "FreeScout webhook receiver listening");
            supervised(Task::FreescoutWebhook, Box::pin(crate::doors::freescout_webhook::serve(listener, receiver)));
        }
        Ok::<_, Exit>(Some((gw, admin, admin_bound)))
    })?;
    let Some((gw, admin, admin_bound)) = started else {
        return Ok(());
    };
    // Export beside the requests, on the background runtime; nothing at all when off.
    let telemetry = match telemetry_settings {
        None => None,
        Some(settings) => {
            let refreshed = gw.clone();
            Some(
                crate::runtime::telemetry::start(
                    settings,
                    bg.handle(),
                    gw.metrics.clone(),
                    Arc::new(move || refreshed.refresh_gauges()),
                )
                .map_err(|e| usage(anyhow!("OpenTelemetry: {e}")))?,
            )
        }
    };

    let http = Http1Settings {
        header_read_timeout: Duration::from_millis(args.header_read_timeout_ms.max(1)),
        max_header_bytes: args.max_header_bytes,
        max_headers: args.max_headers,
        shutdown_grace: Duration::from_secs(args.shutdown_grace),
    };
    let settings = Settings {
        http: http.clone(),
        body_read_timeout: Duration::from_millis(args.body_read_timeout_ms.max(1)),
        max_body_bytes: args.max_body_bytes,
        max_buffered_body_bytes: args.max_buffered_body_bytes,
        trust_request_id: args.trust_request_id,
        trusted_proxies: args.trusted_proxies,
    };
    // Every door the workers serve, each on its address.
    let mut doors: Vec<(std::net::SocketAddr, Arc<dyn Door>)> =
        vec![(listen, Arc::new(ProxyDoor::new(gw.clone(), settings)))];
    if let Some(addr) = authz_addr {
        doors.push((addr, Arc::new(ForwardAuthDoor::new(gw.clone(), http))));
    }
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let started = workers::start(threads, doors, stopped).map_err(|e| match &e {
        StartError::Listen { addr, .. } => failure(anyhow!("{e} ({addr})")),
        StartError::Thread(_) => failure(anyhow!("{e} ({listen})")),
    })?;
    let (bound, authz_bound) = (started.bound[0], started.bound.get(1).copied());
    // The addresses bound (port 0 resolved): tests and supervisors read them from this line.
    // Forward-auth's series exist at 0 whether or not it listens: the dashboard's panels and
    // `rate()` find them, as they find the webhook's.
    for d in crate::policy::answer::Decision::ALL {
        gw.metrics.authz_requests.with_label_values(&[d.as_str()]);
    }
    for l in [proxy::LISTENER, crate::doors::forward_auth::LISTENER] {
        gw.metrics.connections.with_label_values(&[l]);
    }
    match authz_bound {
        Some(authz) => {
            tracing::info!(listen = %bound, admin_listen = %admin_bound, authz_listen = %authz, threads, "listening");
        }
        None => {
            tracing::info!(listen = %bound, admin_listen = %admin_bound, threads, "listening")
        }
    }
    let workers = started.handles;
    match admin {
        Some(admin) => {
            let _runtime = bg.enter();
            supervise::spawn(
                gw.tasks.clone(),
                gw.metrics.clone(),
                Task::Admin,
                crate::doors::admin::serve(admin, gw.clone()),
            );
        }
        // Served since start-up; ready from now on.
        None => gw.set_mapping_missing(None),
    }
    let signal = bg.block_on(signals.stopped());
    let stopping = std::time::Instant::now();
    tracing::info!(
        signal,
        grace_seconds = args.shutdown_grace,
        "shutting down: finishing in-flight requests"
    );
    if stop.send(true).is_err() {
        tracing::warn!("every worker had already stopped");
    }
    for w in workers {
        if w.join().is_err() {
            tracing::error!("a worker thread panicked");
        }
    }
    // Rows of denials answered 503 still in memory: one last bounded try.
    bg.block_on(gw.audit.finish(Duration::from_millis(args.db_timeout_ms)));
    // What is queued goes out within what the drain left of the grace (at least 100 ms).
    if let Some(t) = telemetry {
        let left = Duration::from_secs(args.shutdown_grace).saturating_sub(stopping.elapsed());
        t.shutdown(&bg, left.max(Duration::from_millis(100)));
    }
    drop(bg);
    // A supervisor (the Heroku launcher, systemd) learns from the status that requests were cut.
    match crate::dataplane::listen::cut_at_shutdown() {
        0 => {
            tracing::info!("shut down");
            Ok(())
        }
        cut => Err(failure(anyhow!(
            "shut down with {cut} connection(s) cut: their requests were still in progress when the {} s grace period (--shutdown-grace) ran out and got no answer",
            args.shutdown_grace
        ))),
    }
}

/// A valid mapping that no request is decided by: `--mapping-source database` before the active
/// version is loaded (the data plane does not listen yet).
fn placeholder() -> crate::policy::mapping::Mapping {
    let text = "[[route]]\nmethods = [\"GET\"]\npath = \"/\"\naccess = \"gone\"\n";
    crate::policy::mapping::Mapping::from_str("database", std::path::Path::new("database"), text)
        .expect("the placeholder mapping loads")
}

/// Whether listeners on `a` and `b` would take the same port: the same address, or the same
/// port where one is a wildcard covering the other (`[::]` also takes IPv4 on Linux).
fn overlap(a: std::net::SocketAddr, b: std::net::SocketAddr) -> bool {
    let covers = |w: std::net::SocketAddr, o: std::net::SocketAddr| {
        w.ip().is_unspecified() && (w.is_ipv6() || o.is_ipv4())
    };
    // Port 0: each listener gets a port of its own.
    a.port() != 0 && a.port() == b.port() && (a.ip() == b.ip() || covers(a, b) || covers(b, a))
}

#[cfg(test)]
mod tests {
    use super::overlap;

    #[test]
    fn listeners_overlap_on_one_port_of_one_address_or_a_wildcard() {
        let o = |a: &str, b: &str| overlap(a.parse().unwrap(), b.parse().unwrap());
        assert!(o("127.0.0.1:8080", "127.0.0.1:8080"));
        assert!(o("0.0.0.0:8080", "127.0.0.1:8080"));
        assert!(o("127.0.0.1:8080", "0.0.0.0:8080"));
        assert!(o("[::]:8080", "127.0.0.1:8080"));
        assert!(o("[::1]:8080", "[::]:8080"));
        assert!(!o("127.0.0.1:8080", "127.0.0.1:8081"));
        assert!(!o("127.0.0.1:8080", "127.0.0.2:8080"));
        assert!(!o("0.0.0.0:8080", "[::1]:8080"));
        assert!(!o("127.0.0.1:0", "127.0.0.1:0"));
    }
}
