//! The commands: `serve`, `migrate`, `check`, `explain`. Configuration is loaded and checked
//! before any port is bound; an invalid mapping or flag exits 64.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context};
use arc_swap::ArcSwap;
use pingora::server::configuration::ServerConf;
use pingora::server::Server;

use crate::audit::AuditWriter;
use crate::config::{
    CheckArgs, DriftArgs, ExplainArgs, MigrateArgs, ServeArgs, EXIT_PROBLEMS, EXIT_USAGE,
};
use crate::decision::{authorize, route_step, Step, Verdict};
use crate::identity::Identity;
use crate::mapping::{Mapping, Severity};
use crate::metrics::Metrics;
use crate::proxy::{Gateway, Proxy};
use crate::{db, identity, target};

/// A command's failure, with the exit code it maps to.
#[derive(Debug)]
pub struct Exit {
    pub code: i32,
    pub error: anyhow::Error,
}

fn usage(e: impl Into<anyhow::Error>) -> Exit {
    Exit {
        code: EXIT_USAGE,
        error: e.into(),
    }
}

fn failure(e: impl Into<anyhow::Error>) -> Exit {
    Exit {
        code: EXIT_PROBLEMS,
        error: e.into(),
    }
}

pub fn init_logging(format: &str) {
    let mut filter = tracing_subscriber::EnvFilter::try_from_env("RUST_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // pingora's debug and trace records print whole request headers, cookies included: a session
    // token must never reach the log, whatever RUST_LOG asks for.
    for krate in [
        "pingora",
        "pingora_core",
        "pingora_proxy",
        "pingora_http",
        "pingora_pool",
        "pingora_cache",
    ] {
        filter = filter.add_directive(format!("{krate}=info").parse().expect("static directive"));
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "text" {
        let _ = builder.try_init();
    } else {
        let _ = builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init();
    }
}

fn load_mapping(path: &Path) -> Result<Mapping, Exit> {
    Mapping::load(path)
        .map_err(|e| usage(anyhow!("{e}\n{}: the mapping is invalid", path.display())))
}

fn resolve(addr: &str, what: &str) -> Result<SocketAddr, Exit> {
    addr.to_socket_addrs()
        .map_err(|e| usage(anyhow!("{what} {addr:?} cannot be resolved: {e}")))?
        .next()
        .ok_or_else(|| usage(anyhow!("{what} {addr:?} resolves to no address")))
}

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

fn runtime() -> Result<tokio::runtime::Runtime, Exit> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(failure)
}

pub fn migrate(args: MigrateArgs) -> Result<(), Exit> {
    runtime()?.block_on(async {
        let pool = db::pool(&args.database_url, 1, Duration::from_secs(30)).map_err(usage)?;
        db::migrate(&pool)
            .await
            .context("migration failed")
            .map_err(failure)?;
        println!("migrations applied");
        Ok(())
    })
}

/// The columns the gateway reads or writes, per table.
const SCHEMA: &[(&str, &[&str])] = &[
    ("admins", &["id", "email"]),
    (
        "admin_sessions",
        &[
            "id",
            "admin_id",
            "token_sha256",
            "expires_at_utc",
            "revoked_at_utc",
        ],
    ),
    ("rbac_groups", &["id", "name"]),
    ("rbac_roles", &["id", "name"]),
    ("rbac_permissions", &["id", "name"]),
    ("rbac_role_permissions", &["role_id", "permission_id"]),
    (
        "rbac_role_inheritance",
        &["child_role_id", "parent_role_id"],
    ),
    ("rbac_group_roles", &["group_id", "role_id"]),
    ("rbac_user_groups", &["user_id", "group_id"]),
    (
        "rbac_break_glass_sessions",
        &["user_id", "expires_at_utc", "revoked_at_utc"],
    ),
    (
        "rbac_ticket_grants",
        &[
            "user_id",
            "role_id",
            "customer_id",
            "expires_at_utc",
            "revoked_at_utc",
        ],
    ),
    (
        "access_audit_events",
        &[
            "id",
            "event_type",
            "admin_id",
            "method",
            "path",
            "route",
            "required",
            "reason",
            "request_id",
            "client_ip",
            "user_agent",
            "created_at_utc",
        ],
    ),
];

pub fn check(args: CheckArgs) -> Result<(), Exit> {
    let file = args.routes.display().to_string();
    let mapping = match Mapping::load(&args.routes) {
        Ok(m) => m,
        Err(e) => {
            for d in &e.diagnostics {
                println!("{d}");
            }
            return Err(usage(anyhow!("{file}: {} error(s)", e.diagnostics.len())));
        }
    };
    let mut problems = Vec::new();
    for w in &mapping.warnings {
        println!("{w}");
    }
    if let Some(url) = &args.database_url {
        problems.extend(runtime()?.block_on(check_database(&mapping, &file, url))?);
    }
    if let Some(app) = &args.app_routes {
        problems.extend(crate::cli::check_app_routes(&mapping, &file, app)?);
    }
    for p in &problems {
        println!("{p}");
    }
    let errors = problems
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .count();
    println!(
        "{file}: {} routes, version {}, {} warning(s), {} error(s)",
        mapping.routes.len(),
        mapping.version,
        mapping.warnings.len() + problems.len() - errors,
        errors
    );
    if errors > 0 {
        return Err(Exit {
            code: EXIT_PROBLEMS,
            error: anyhow!("{file}: the check found {errors} problem(s)"),
        });
    }
    Ok(())
}

fn diag(
    file: &str,
    line: usize,
    col: usize,
    severity: Severity,
    message: String,
) -> crate::mapping::Diagnostic {
    crate::mapping::Diagnostic {
        file: file.to_string(),
        line,
        col,
        severity,
        message,
    }
}

async fn check_database(
    mapping: &Mapping,
    file: &str,
    url: &str,
) -> Result<Vec<crate::mapping::Diagnostic>, Exit> {
    let pool = db::pool(url, 1, Duration::from_secs(10)).map_err(usage)?;
    let mut out = Vec::new();
    let columns: Vec<(String, String)> = sqlx::query_as(
        "SELECT table_name::text, column_name::text FROM information_schema.columns WHERE table_schema = current_schema()",
    )
    .fetch_all(&pool)
    .await
    .context("cannot read the schema")
    .map_err(failure)?;
    for (table, cols) in SCHEMA {
        for col in *cols {
            if !columns.iter().any(|(t, c)| t == table && c == col) {
                out.push(diag(
                    file,
                    0,
                    0,
                    Severity::Error,
                    format!(
                        "database: column {table}.{col} is missing (run `rbac-gateway migrate`?)"
                    ),
                ));
            }
        }
    }
    if !out.is_empty() {
        return Ok(out);
    }
    let roles: Vec<String> = sqlx::query_scalar("SELECT name FROM rbac_roles")
        .fetch_all(&pool)
        .await
        .map_err(failure)?;
    let perms: Vec<String> = sqlx::query_scalar("SELECT name FROM rbac_permissions")
        .fetch_all(&pool)
        .await
        .map_err(failure)?;
    for route in &mapping.routes {
        for r in route.roles.iter().filter(|r| !roles.contains(r)) {
            out.push(diag(
                file,
                route.line,
                route.col,
                Severity::Error,
                format!(
                    "unknown role {r:?} in {} (not in rbac_roles)",
                    route.label()
                ),
            ));
        }
        for p in route.permissions.iter().filter(|p| !perms.contains(p)) {
            out.push(diag(
                file,
                route.line,
                route.col,
                Severity::Error,
                format!(
                    "unknown permission {p:?} in {} (not in rbac_permissions)",
                    route.label()
                ),
            ));
        }
    }
    Ok(out)
}

/// One route of the upstream's `url_map` dump.
#[derive(Debug, serde::Deserialize)]
struct AppRoute {
    rule: String,
    methods: Vec<String>,
    #[serde(default)]
    endpoint: String,
}

pub fn check_app_routes(
    mapping: &Mapping,
    file: &str,
    app: &Path,
) -> Result<Vec<crate::mapping::Diagnostic>, Exit> {
    let text =
        std::fs::read_to_string(app).map_err(|e| usage(anyhow!("{}: {e}", app.display())))?;
    let routes: Vec<AppRoute> = serde_json::from_str(&text).map_err(|e| {
        usage(anyhow!(
            "{}:{}:{}: {e}",
            app.display(),
            e.line(),
            e.column()
        ))
    })?;
    let mut out = Vec::new();
    let norm = |rule: &str| crate::mapping::rule_signature(rule);
    for ar in &routes {
        let sig = norm(&ar.rule);
        for m in ar
            .methods
            .iter()
            .filter(|m| *m != "HEAD" && *m != "OPTIONS")
        {
            let covered = mapping
                .routes
                .iter()
                .any(|r| norm(&r.path) == sig && r.methods.iter().any(|x| x == m));
            if !covered {
                // Point at the rule in the dump, so the message is clickable too.
                let at = text.find(&format!("\"{}\"", ar.rule)).unwrap_or(0);
                let line = text[..at].matches('\n').count() + 1;
                let col = at - text[..at].rfind('\n').map(|i| i + 1).unwrap_or(0) + 1;
                out.push(diag(
                    &app.display().to_string(),
                    line,
                    col,
                    Severity::Error,
                    format!("Console route {m} {} (endpoint {}) has no gateway rule: it would be denied with no_route", ar.rule, ar.endpoint),
                ));
            }
        }
    }
    for r in &mapping.routes {
        if r.access == crate::mapping::Access::Gone {
            continue;
        }
        let sig = norm(&r.path);
        for m in &r.methods {
            let exists = routes
                .iter()
                .any(|ar| norm(&ar.rule) == sig && ar.methods.iter().any(|x| x == m));
            if !exists {
                out.push(diag(
                    file,
                    r.line,
                    r.col,
                    Severity::Error,
                    format!("gateway rule {m} {} matches no Console route", r.path),
                ));
            }
        }
    }
    Ok(out)
}

pub fn explain(args: ExplainArgs) -> Result<(), Exit> {
    let mapping = load_mapping(&args.routes)?;
    let t = target::check_method(args.method.as_bytes())
        .and_then(|_| target::parse_target(args.path.as_bytes()));
    let t = match t {
        Ok(t) => t,
        Err(r) => {
            println!("decision: 400 refused ({r})");
            return Ok(());
        }
    };
    let found = mapping.find(&args.method, &t.path);
    let route = found.as_ref().map(|(r, _)| *r);
    match route {
        Some(r) => {
            println!(
                "rule: {} ({}:{}:{})",
                r.label(),
                args.routes.display(),
                r.line,
                r.col
            );
            println!(
                "requires: {}",
                if r.required().is_empty() {
                    r.access.as_str().to_string()
                } else {
                    r.required()
                }
            );
            println!("access: {}, mode: {}", r.access.as_str(), r.mode.as_str());
        }
        None => println!("rule: none matches {} {}", args.method, t.path),
    }
    let kill = args.flag_rbac_v2 == "0";
    runtime()?.block_on(async {
        let pool = db::pool(&args.database_url, 1, Duration::from_secs(10)).map_err(usage)?;
        let principal = identity::resolve(&pool, &args.admin, Duration::ZERO)
            .await
            .map_err(failure)?;
        let provenance = identity::provenance(&pool, &args.admin)
            .await
            .map_err(failure)?;
        println!(
            "admin: {}{}",
            args.admin,
            if principal.break_glass {
                " (break-glass active)"
            } else {
                ""
            }
        );
        println!("effective roles:");
        for line in &provenance {
            println!("  {line}");
        }
        if principal.roles().is_empty() {
            println!("  (none)");
        }
        println!(
            "permissions: {}",
            if principal.permissions().is_empty() {
                "(none)".into()
            } else {
                principal.permissions().join(", ")
            }
        );
        let decision = match route_step(route, kill) {
            Step::NoRoute => "403 denied (no_route)".to_string(),
            Step::Gone => "404 gone".to_string(),
            Step::Forward(k) => format!("forward ({})", k.as_str()),
            Step::NeedPrincipal => match authorize(route.unwrap(), &principal) {
                Verdict::Allow { by } => format!("allow (granted by {by:?})"),
                Verdict::Deny => format!(
                    "403 denied (missing_role, mode {})",
                    route.unwrap().mode.as_str()
                ),
            },
        };
        println!("decision: {decision}");
        Ok(())
    })
}

pub fn drift(args: DriftArgs) -> Result<(), Exit> {
    let mapping = load_mapping(&args.routes)?;
    let cluster_of = |label: &str| {
        mapping
            .routes
            .iter()
            .find(|r| r.label() == label)
            .and_then(|r| r.meta.cluster.clone())
            .unwrap_or_else(|| "-".to_string())
    };
    let rows: Vec<(Option<String>, String, String, i64)> = runtime()?.block_on(async {
        let pool = db::pool(&args.database_url, 1, Duration::from_secs(10)).map_err(usage)?;
        sqlx::query_as(
            "SELECT route, event_type, reason, count(*) FROM access_audit_events \
             WHERE event_type IN ('rbac_drift', 'access_denied_shadow') \
               AND created_at_utc > now() - make_interval(hours => $1) \
             GROUP BY 1, 2, 3 ORDER BY 1, 2, 3",
        )
        .bind(args.since_hours as i32)
        .fetch_all(&pool)
        .await
        .context("cannot read drift events")
        .map_err(failure)
    })?;
    let wanted = |c: &str| args.cluster.as_deref().is_none_or(|w| w == c);
    let mut clusters: std::collections::BTreeMap<String, (usize, i64, i64)> = Default::default();
    for r in mapping
        .routes
        .iter()
        .filter(|r| r.mode == crate::mapping::Mode::Shadow)
    {
        let c = r.meta.cluster.clone().unwrap_or_else(|| "-".into());
        clusters.entry(c).or_default().0 += 1;
    }
    println!(
        "drift report: last {} h, mapping {} ({})",
        args.since_hours,
        args.routes.display(),
        mapping.version
    );
    let mut drift_total = 0;
    let mut lines = Vec::new();
    for (route, event, reason, n) in &rows {
        let label = route.clone().unwrap_or_else(|| "-".into());
        let c = cluster_of(&label);
        if !wanted(&c) {
            continue;
        }
        let entry = clusters.entry(c.clone()).or_default();
        if event == crate::audit::EVENT_DRIFT {
            entry.1 += n;
            drift_total += n;
            lines.push(format!("  DRIFT {label} [{c}]: {n} x {reason}"));
        } else {
            entry.2 += n;
        }
    }
    for (c, (rules, drift, would_deny)) in clusters.iter().filter(|(c, _)| wanted(c)) {
        println!("cluster {c}: {rules} shadow rule(s), {drift} drift event(s), {would_deny} would-be denial(s)");
    }
    for l in &lines {
        println!("{l}");
    }
    if drift_total > 0 {
        return Err(Exit {
            code: EXIT_PROBLEMS,
            error: anyhow!("{drift_total} drift event(s) in the window"),
        });
    }
    println!("zero drift");
    Ok(())
}
