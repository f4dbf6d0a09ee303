//! A pingora reverse proxy with no authorization at all, set up exactly like `rbac-gateway serve`
//! (same allocator, one single-threaded service per core on a SO_REUSEPORT port, same peer
//! options). `scripts/load.sh` runs it as a reference row: the difference between this and the
//! gateway is what the authorization costs; the difference between this and nginx is pingora's.
//!
//!   cargo run --release --example bare_proxy -- LISTEN UPSTREAM [THREADS]
use std::net::SocketAddr;
use std::time::Duration;

use async_trait::async_trait;
use pingora::prelude::*;
use pingora::server::configuration::ServerConf;

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
        let mut peer = HttpPeer::new(self.upstream, false, String::new());
        peer.options.connection_timeout = Some(Duration::from_secs(2));
        peer.options.read_timeout = Some(Duration::from_secs(30));
        peer.options.write_timeout = Some(Duration::from_secs(30));
        peer.options.idle_timeout = Some(Duration::from_secs(60));
        Ok(Box::new(peer))
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        eprintln!("usage: bare_proxy LISTEN UPSTREAM [THREADS]");
        std::process::exit(64);
    }
    let upstream: SocketAddr = args[2].parse().expect("UPSTREAM must be IP:PORT");
    let threads = args.get(3).map_or_else(
        || std::thread::available_parallelism().map_or(1, |n| n.get()),
        |t| t.parse().expect("THREADS must be a number"),
    );
    let conf = ServerConf {
        threads,
        work_stealing: false,
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    for _ in 0..threads {
        let mut svc = http_proxy_service(&server.configuration, Bare { upstream });
        svc.threads = Some(1);
        let mut sock = pingora::listeners::TcpSocketOptions::default();
        sock.so_reuseport = Some(true);
        svc.add_tcp_with_settings(&args[1], sock);
        server.add_service(svc);
    }
    server.run_forever();
}
