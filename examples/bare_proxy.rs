//! The gateway's data plane with no authorization: the same workers, connection handling,
//! target checks, outcome function and upstream pool as `serve` (`rbac_gateway::doors::proxy`), with a
//! mapping in which every path is `public` (no session is resolved, no database is reached).
//! `scripts/bench/load.sh` runs it as a reference row: the gateway minus this is what authorization
//! costs; this minus nginx is what the data plane costs.
//!
//!   cargo run --release --example bare_proxy -- LISTEN UPSTREAM [THREADS]
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use rbac_gateway::doors::proxy::{start_workers, Settings};
use rbac_gateway::gateway::state::Gateway;
use rbac_gateway::policy::mapping::Mapping;
use rbac_gateway::runtime::metrics::Metrics;
use rbac_gateway::stores::audit::AuditWriter;
use rbac_gateway::stores::identity::Identity;

// The gateway's own allocator set-up, so the two compare like for like.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const PUBLIC: &str = r#"
[[route]]
methods = ["GET", "POST", "PUT", "PATCH", "DELETE"]
path = "/"
access = "public"

[[route]]
methods = ["GET", "POST", "PUT", "PATCH", "DELETE"]
path = "/<path:rest>"
access = "public"
"#;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        eprintln!("usage: bare_proxy LISTEN UPSTREAM [THREADS]");
        std::process::exit(64);
    }
    let listen: SocketAddr = args[1].parse().expect("LISTEN must be IP:PORT");
    let upstream: SocketAddr = args[2].parse().expect("UPSTREAM must be IP:PORT");
    let threads = args
        .get(3)
        .map_or_else(rbac_gateway::doors::proxy::default_threads, |t| {
            t.parse().expect("THREADS must be a number")
        });
    let mapping = Mapping::from_str("public.toml", Path::new("public.toml"), PUBLIC)
        .expect("the public mapping is valid");
    let bg = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a runtime");
    let gw = bg.block_on(async {
        let metrics = Arc::new(Metrics::new());
        // Never used: public routes resolve no session and write no audit row.
        let pool = rbac_gateway::stores::db::Db::connect(
            "postgres://bare@127.0.0.1:9/none",
            None,
            1,
            Duration::from_secs(1),
        )
        .expect("a lazy pool");
        let spool = std::env::temp_dir().join(format!("bare-proxy-{}.spool", std::process::id()));
        Arc::new(Gateway {
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
            // A bare proxy: every path forwarded, the reader API included.
            rbac_api: false,
            file_rejected: Default::default(),
            mapping_from_db: false,
            mapping_missing: Default::default(),
            feed: Default::default(),
            sweep_failure_threshold: 3,
        })
    });
    let settings = Settings {
        listen,
        threads,
        header_read_timeout: Duration::from_secs(10),
        body_read_timeout: Duration::from_secs(10),
        max_header_bytes: 32 * 1024,
        max_headers: 100,
        max_body_bytes: 16 << 20,
        max_buffered_body_bytes: 256 << 20,
        shutdown_grace: Duration::from_secs(1),
        authz_listen: None,
        trust_request_id: false,
        trusted_proxies: 0,
    };
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let workers = start_workers(gw, settings, stopped).expect("listen");
    bg.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("a SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    });
    // The workers may all have ended already: nothing is left to tell then.
    let _ = stop.send(true);
    for w in workers.handles {
        if w.join().is_err() {
            eprintln!("a worker panicked");
        }
    }
}
