//! `rbac-gateway serve`: runs the gateway.

use std::sync::Arc;
use std::time::Duration;

use anyhow::anyhow;
use arc_swap::ArcSwap;

use super::{failure, init_logging, load_mapping, resolve, usage, Exit};
use crate::audit::AuditWriter;
use crate::config::ServeArgs;
use crate::db;
use crate::identity::Identity;
use crate::metrics::Metrics;
use crate::proxy::{self, Settings};
use crate::state::Gateway;
use crate::supervise::{self, Tasks};

/// A supervised background task.
type Task = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

pub fn serve(args: ServeArgs) -> Result<(), Exit> {
    init_logging(&args.log_format);
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
    let mapping = load_mapping(&args.routes)?;
    let upstream = resolve(&args.upstream, "--upstream")?;
    let listen = resolve(&args.listen, "--listen")?;
    if listen.port() == 0 {
        // Each worker binds the port itself: port 0 would give every worker a different one.
        return Err(usage(anyhow!("--listen needs a fixed port, not 0")));
    }
    let admin_addr = resolve(&args.admin_listen, "--admin-listen")?;
    let authz_addr = match &args.authz_listen {
        None => None,
        Some(a) => Some(resolve(a, "--authz-listen")?),
    };
    // Two listeners on one port: the second bind would fail only after the 1 s retry meant for
    // a restart, with a message about another process. Said here instead, before anything runs.
    let named = [
        ("--listen", Some(listen)),
        ("--admin-listen", Some(admin_addr)),
        ("--authz-listen", authz_addr),
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
    let threads = args.threads.unwrap_or_else(crate::proxy::default_threads);

    let metrics = Arc::new(Metrics::new());
    let db_timeout = Duration::from_millis(args.db_timeout_ms);
    // The runtime for everything that is not request handling: admin listener, spool replay,
    // signals. It lives as long as the process.
    let bg = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("rbac-gateway-bg")
        .enable_all()
        .build()
        .map_err(failure)?;
    let (gw, admin) = bg.block_on(async {
        let pool = db::pool(&args.database_url, args.db_pool_size, db_timeout).map_err(usage)?;
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
        let feed = Arc::new(crate::feed::Health::default());
        supervised("feed", Box::pin(crate::feed::follow(pool.clone(), identity.clone(), metrics.clone(), feed.clone(), db_timeout)) as Task);
        let (audit, writer) = AuditWriter::new(
            pool.clone(),
            args.audit_spool.clone(),
            args.audit_spool_max_bytes,
            db_timeout,
            metrics.clone(),
        );
        supervised("audit_writer", Box::pin(writer));
        metrics.mapping_info.with_label_values(&[&mapping.version]).set(1);
        metrics.set_routes(&mapping, args.kill_switch());
        for w in &mapping.warnings {
            tracing::warn!(warning = %w, "mapping warning");
        }
        tracing::info!(
            routes = mapping.routes.len(), mapping_version = %mapping.version, file = %args.routes.display(),
            upstream = %upstream, listen = %listen, threads, kill_switch = args.kill_switch(), "mapping loaded"
        );
        if args.kill_switch() {
            tracing::warn!("FLAG_RBAC_V2=0: kill switch on, every route is off (forwarded; Console decides)");
        }
        if args.flag_ticket_scoped_grants == "1" && args.ticket_validation_url.is_none() {
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
            ticket_grants: args.flag_ticket_scoped_grants == "1",
            ticket_validation_url: args.ticket_validation_url.clone(),
            tasks: tasks.clone(),
            rbac_api: args.rbac_api,
            file_rejected: Default::default(),
            feed: feed.clone(),
        });
        if args.rbac_api {
            metrics.requests.with_label_values(&[crate::reader::LABEL]);
        }
        // Bound now, so a port in use is found before anything else starts; served only once the
        // data plane (and the forward-auth listener) listen: `/readyz` never answers 200 for a
        // gateway that cannot take requests.
        let admin = proxy::retry_in_use(|| std::net::TcpListener::bind(admin_addr))
            .and_then(|l| {
                l.set_nonblocking(true)?;
                tokio::net::TcpListener::from_std(l)
            })
            .map_err(|e| failure(anyhow!("cannot listen on {admin_addr}: {e}")))?;
        supervised("audit_replay", Box::pin(audit.replay_forever(Duration::from_millis(500))));
        supervised("reload", Box::pin(crate::reload::watch(gw.clone(), args.routes.clone())));
        tokio::spawn(crate::reload::check_database_at_start(
            gw.clone(),
            db_timeout.max(Duration::from_secs(2)),
        ));
        supervised(
            "alerts",
            Box::pin(crate::lifecycle::alerts_forever(
                pool.clone(),
                args.alert_webhook_url.clone(),
                Duration::from_secs(1),
                db_timeout,
                metrics.clone(),
            )),
        );
        if args.sweep_interval > 0.0 {
            supervised(
                "sweeper",
                Box::pin(crate::lifecycle::run_forever(
                    pool.clone(),
                    args.ticket_validation_url.clone(),
                    Duration::from_secs_f64(args.sweep_interval),
                    db_timeout,
                    metrics.clone(),
                )),
            );
        }
        Ok::<_, Exit>((gw, admin))
    })?;

    let settings = Settings {
        listen,
        threads: threads.max(1),
        header_read_timeout: Duration::from_millis(args.header_read_timeout_ms.max(1)),
        body_read_timeout: Duration::from_millis(args.body_read_timeout_ms.max(1)),
        max_header_bytes: args.max_header_bytes,
        max_headers: args.max_headers,
        max_body_bytes: args.max_body_bytes,
        max_buffered_body_bytes: args.max_buffered_body_bytes,
        shutdown_grace: Duration::from_secs(args.shutdown_grace),
    };
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let workers = proxy::start_workers(gw.clone(), settings, stopped)
        .map_err(|e| failure(anyhow!("cannot listen on {listen}: {e}")))?;
    tracing::info!(listen = %listen, threads, "listening");
    // ---- Forward-auth listener for edge proxies (issue 13): off unless --authz-listen. ----
    let authz = match authz_addr {
        None => None,
        Some(addr) => {
            let handle = crate::authz::start(gw.clone(), addr, threads, stop.subscribe())
                .map_err(|e| failure(anyhow!("cannot listen on {addr} (--authz-listen): {e}")))?;
            for label in ["allowed", "redirected", "denied", "refused", "unavailable"] {
                gw.metrics.authz_requests.with_label_values(&[label]);
            }
            tracing::info!(authz_listen = %addr, "forward-auth listening");
            Some(handle)
        }
    };
    // ---- end of the forward-auth block ----
    {
        let _runtime = bg.enter();
        supervise::spawn(
            gw.tasks.clone(),
            gw.metrics.clone(),
            "admin",
            crate::admin::serve(admin, gw.clone()),
        );
    }
    bg.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).map_err(failure)?;
        let mut int = signal(SignalKind::interrupt()).map_err(failure)?;
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        Ok::<_, Exit>(())
    })?;
    tracing::info!(
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
    if authz.is_some_and(|a| a.join().is_err()) {
        tracing::error!("the forward-auth thread panicked");
    }
    tracing::info!("shut down");
    drop(bg);
    Ok(())
}

/// Whether listeners on `a` and `b` would take the same port: the same address, or the same
/// port where one is a wildcard covering the other (`[::]` also takes IPv4 on Linux).
fn overlap(a: std::net::SocketAddr, b: std::net::SocketAddr) -> bool {
    let covers = |w: std::net::SocketAddr, o: std::net::SocketAddr| {
        w.ip().is_unspecified() && (w.is_ipv6() || o.is_ipv4())
    };
    a.port() == b.port() && (a.ip() == b.ip() || covers(a, b) || covers(b, a))
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
    }
}
