//! `rbac-gateway serve`: runs the gateway.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::anyhow;
use arc_swap::ArcSwap;
use pingora::server::configuration::ServerConf;
use pingora::server::Server;

use super::{failure, init_logging, load_mapping, resolve, usage, Exit};
use crate::audit::AuditWriter;
use crate::config::ServeArgs;
use crate::db;
use crate::identity::Identity;
use crate::metrics::Metrics;
use crate::proxy::Proxy;
use crate::state::Gateway;

pub fn serve(args: ServeArgs) -> Result<(), Exit> {
    init_logging(&args.log_format);
    if args.log_format != "json" && args.log_format != "text" {
        return Err(usage(anyhow!("--log-format must be json or text")));
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
    // Fail before pingora does (it panics on a port it cannot bind).
    drop(
        std::net::TcpListener::bind(listen)
            .map_err(|e| failure(anyhow!("cannot listen on {listen}: {e}")))?,
    );
    let threads = args.threads.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });

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
    let gw = bg.block_on(async {
        let pool = db::pool(&args.database_url, args.db_pool_size, db_timeout).map_err(usage)?;
        let identity = Arc::new(Identity::new(
            pool.clone(),
            Duration::from_secs_f64(args.cache_ttl),
            args.cache_capacity,
            metrics.clone(),
        ));
        tokio::spawn(crate::feed::follow(pool.clone(), identity.clone(), metrics.clone()));
        let audit = AuditWriter::start(
            pool.clone(),
            args.audit_spool.clone(),
            args.audit_spool_max_bytes,
            db_timeout,
            metrics.clone(),
        );
        metrics.mapping_info.with_label_values(&[&mapping.version]).set(1);
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
        });
        let admin = tokio::net::TcpListener::bind(admin_addr)
            .await
            .map_err(|e| failure(anyhow!("cannot listen on {admin_addr}: {e}")))?;
        tokio::spawn(crate::admin::serve(admin, gw.clone()));
        tokio::spawn(audit.replay_forever(Duration::from_millis(500)));
        tokio::spawn(crate::reload::watch(gw.clone(), args.routes.clone()));
        Ok::<_, Exit>(gw)
    })?;

    let conf = ServerConf {
        threads,
        work_stealing: args.work_stealing,
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(args.shutdown_grace),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    add_proxy_services(&mut server, listen, threads, args.work_stealing, || Proxy {
        gw: gw.clone(),
    });
    server.run(pingora::server::RunArgs::default());
    tracing::info!("shut down");
    drop(bg);
    Ok(())
}

/// Adds the proxy to `server` the way `serve` runs it (also used by `examples/bare_proxy.rs`, so
/// the load benchmark's pingora baseline is set up exactly like the gateway).
///
/// One single-threaded proxy service per worker, all on the listening port (SO_REUSEPORT: the
/// kernel spreads connections over them). Each has its own upstream connection pool, so a pooled
/// connection is never handed between threads: pingora parks an idle connection in a task on a
/// random worker of its service, and with several workers per service every reuse woke another
/// thread twice (measured: 2.2 eventfd writes and ~1 context switch per request). With
/// `work_stealing`, one service shares a work-stealing runtime instead.
pub fn add_proxy_services<SV: pingora::proxy::ProxyHttp + Send + Sync + 'static>(
    server: &mut Server,
    listen: SocketAddr,
    threads: usize,
    work_stealing: bool,
    app: impl Fn() -> SV,
) where
    SV::CTX: Send + Sync,
{
    let services = if work_stealing { 1 } else { threads };
    for _ in 0..services {
        let mut svc = pingora::proxy::http_proxy_service(&server.configuration, app());
        // Let CONNECT reach request_filter, which refuses it with 400 like every other
        // non-origin-form target (pingora would answer 405 on its own).
        if let Some(proxy) = svc.app_logic_mut() {
            let mut opts = pingora::apps::HttpServerOptions::default();
            opts.allow_connect_method_proxying = true;
            proxy.server_options = Some(opts);
        }
        if work_stealing {
            svc.add_tcp(&listen.to_string());
        } else {
            svc.threads = Some(1);
            let mut sock = pingora::listeners::TcpSocketOptions::default();
            sock.so_reuseport = Some(true);
            svc.add_tcp_with_settings(&listen.to_string(), sock);
        }
        server.add_service(svc);
    }
}
