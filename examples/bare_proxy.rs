//! A pingora reverse proxy with no authorization at all, set up by the gateway's own code
//! (`cli::add_proxy_services`, `proxy::upstream_peer`, the same allocator and timeouts as the
//! defaults of `serve`). `scripts/load.sh` runs it as a reference row: the difference between this
//! and the gateway is what the authorization costs; the difference between this and nginx is
//! pingora's.
//!
//!   cargo run --release --example bare_proxy -- LISTEN UPSTREAM [THREADS]
use std::net::SocketAddr;
use std::time::Duration;

use async_trait::async_trait;
use pingora::prelude::*;
use pingora::server::configuration::ServerConf;
use rbac_gateway::cli::add_proxy_services;
use rbac_gateway::proxy::upstream_peer;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Bare {
    upstream: SocketAddr,
}

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();
    fn new_ctx(&self) {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(upstream_peer(
            self.upstream,
            Duration::from_secs(2),
            Duration::from_secs(30),
        )))
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        eprintln!("usage: bare_proxy LISTEN UPSTREAM [THREADS]");
        std::process::exit(64);
    }
    let listen: SocketAddr = args[1].parse().expect("LISTEN must be IP:PORT");
    let upstream: SocketAddr = args[2].parse().expect("UPSTREAM must be IP:PORT");
    let threads = args.get(3).map_or_else(
        || std::thread::available_parallelism().map_or(1, |n| n.get()),
        |t| t.parse().expect("THREADS must be a number"),
    );
    let conf = ServerConf {
        threads,
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    add_proxy_services(&mut server, listen, threads, false, || Bare { upstream });
    server.run_forever();
}
