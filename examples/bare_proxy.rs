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

use rbac_gateway::dataplane::workers::{self, Door, Http1Settings};
use rbac_gateway::doors::proxy::{ProxyDoor, Settings};
use rbac_gateway::gateway::state::Gateway;
use rbac_gateway::policy::mapping::Mapping;

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
    let threads = args.get(3).map_or_else(workers::default_threads, |t| {
        t.parse().expect("THREADS must be a number")
    });
    let mapping = Mapping::from_str("public.toml", Path::new("public.toml"), PUBLIC)
        .expect("the public mapping is valid");
    let bg = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a runtime");
    // Public routes resolve no session and write no audit row: the database is never reached.
    let gw = bg.block_on(async { Arc::new(Gateway::without_database(mapping, upstream)) });
    let settings = Settings {
        http: Http1Settings {
            header_read_timeout: Duration::from_secs(10),
            max_header_bytes: 32 * 1024,
            max_headers: 100,
            shutdown_grace: Duration::from_secs(1),
        },
        body_read_timeout: Duration::from_secs(10),
        max_body_bytes: 16 << 20,
        max_buffered_body_bytes: 256 << 20,
        trust_request_id: false,
        trusted_proxies: 0,
    };
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let door: Arc<dyn Door> = Arc::new(ProxyDoor::new(gw, settings));
    let workers = workers::start(threads, vec![(listen, door)], stopped, None).expect("listen");
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
