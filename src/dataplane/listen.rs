//! Listeners, for every door: sockets bound once per worker with SO_REUSEPORT (port 0 gives
//! all of them one port, which is reported), the retry while a restarted process's port is
//! still held, the refusal to share a port with another live process, and the accept loop with
//! its graceful drain. The data plane, forward-auth and (for binding) the admin listener use
//! these; none has its own.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

/// Binds the listening socket of one worker (SO_REUSEPORT: the kernel spreads connections
/// over the workers' sockets).
pub fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    sock.set_reuse_address(true)?;
    sock.set_reuse_port(true)?;
    sock.set_nonblocking(true)?;
    sock.bind(&addr.into())?;
    sock.listen(1024)?;
    Ok(sock.into())
}

/// How long start-up waits for a port that a process which just ended may still hold.
pub const RESTART_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// Binds with `bind`, trying again for up to [`RESTART_GRACE`] while the address
/// is in use: a process that just ended (a SIGKILLed gateway being restarted) may hold its
/// ports for a moment, until the kernel has closed its files. A port still taken after that is
/// another live process's.
pub fn retry_in_use<T>(mut bind: impl FnMut() -> std::io::Result<T>) -> std::io::Result<T> {
    let started = std::time::Instant::now();
    loop {
        match bind() {
            Err(e)
                if e.kind() == std::io::ErrorKind::AddrInUse
                    && started.elapsed() < RESTART_GRACE =>
            {
                std::thread::sleep(std::time::Duration::from_millis(25));
            }
            other => return other,
        }
    }
}

/// SO_REUSEPORT would let this process share a port another process listens on with it (a
/// forgotten gateway, one started with another mapping): each would answer a share of the
/// requests. A socket bound without it is refused while anyone listens on the port, so the
/// port is tried that way first.
pub fn refuse_shared_port(addr: SocketAddr) -> std::io::Result<()> {
    use socket2::{Domain, Socket, Type};
    if addr.port() == 0 {
        return Ok(());
    }
    let bound = retry_in_use(|| {
        let probe = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
        probe.set_reuse_address(true)?;
        probe.bind(&addr.into())
    });
    bound.map_err(|e| {
        if e.kind() == std::io::ErrorKind::AddrInUse {
            std::io::Error::new(
                e.kind(),
                format!("{e}: another process (another gateway?) listens on {addr}"),
            )
        } else {
            e
        }
    })
}

/// One socket on `addr` for a side listener (admin, webhook) on the current runtime, retried
/// while a process that just ended still holds the port ([`retry_in_use`]).
pub fn bind_side(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let l = retry_in_use(|| std::net::TcpListener::bind(addr))?;
    l.set_nonblocking(true)?;
    tokio::net::TcpListener::from_std(l)
}

/// `n` sockets on `addr`, one per worker (SO_REUSEPORT), after checking that no other process
/// listens there. With port 0 the first socket picks a free port and the others take the same;
/// returns the address bound.
pub fn bind_workers(
    addr: SocketAddr,
    n: usize,
) -> std::io::Result<(SocketAddr, Vec<std::net::TcpListener>)> {
    refuse_shared_port(addr)?;
    let first = bind(addr)?;
    let bound = first.local_addr()?;
    let mut all = vec![first];
    for _ in 1..n.max(1) {
        all.push(bind(bound)?);
    }
    Ok((bound, all))
}

/// Accepts connections until `shutdown` turns true, serving each with the connection `serve`
/// makes of it (on its own task), then gives the open ones `grace` to finish. Shared by the
/// data plane's workers and the forward-auth listener; `what` names the listener in logs.
pub(crate) async fn accept_until_shutdown<C>(
    listener: tokio::net::TcpListener,
    mut shutdown: watch::Receiver<bool>,
    grace: Duration,
    what: &'static str,
    connections: prometheus::IntCounter,
    mut serve: impl FnMut(tokio::net::TcpStream, SocketAddr) -> C,
) where
    C: hyper_util::server::graceful::GracefulConnection<Error = hyper::Error> + Send + 'static,
{
    // hyper-util's own: on shutdown every connection is asked to finish (the request in flight
    // is answered, an idle keep-alive connection closes at once) and `shutdown` waits for all.
    // It replaced a private copy: paired, the copy saved less than the bar a copy must clear
    // (docs/performance-log.md).
    let drain = hyper_util::server::graceful::GracefulShutdown::new();
    // Connections still being served: those open when the grace period runs out are cut.
    let open = Arc::new(AtomicUsize::new(0));
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!(error = %e, listener = what, "accept failed");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                };
                connections.inc();
                if let Err(e) = stream.set_nodelay(true) {
                    tracing::debug!(error = %e, "cannot set TCP_NODELAY");
                }
                let conn = drain.watch(serve(stream, peer));
                let open = open.clone();
                open.fetch_add(1, Ordering::Relaxed);
                tokio::task::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, listener = what, "client connection ended with an error");
                    }
                    open.fetch_sub(1, Ordering::Relaxed);
                });
            }
            _ = shutdown.changed() => break,
        }
    }
    drop(listener);
    if tokio::time::timeout(grace, drain.shutdown()).await.is_err() {
        let cut = open.load(Ordering::Relaxed);
        CUT_AT_SHUTDOWN.fetch_add(cut, Ordering::Relaxed);
        tracing::error!(
            listener = what,
            connections = cut,
            grace_seconds = grace.as_secs_f64(),
            "shutdown grace period over: closing the connections still open (their requests get no answer)"
        );
    }
}

/// Connections still open when the shutdown grace period ran out, and closed with it, in every
/// listener of the process: each had a request in progress that got no answer. `serve` reports
/// them in its last line and exit status.
static CUT_AT_SHUTDOWN: AtomicUsize = AtomicUsize::new(0);

/// How many connections the drain cut: still open when the shutdown grace period ran out, in
/// every listener of the process (`CUT_AT_SHUTDOWN`).
pub fn cut_at_shutdown() -> usize {
    CUT_AT_SHUTDOWN.load(Ordering::Relaxed)
}

/// Serves a side listener (the admin listener, FreeScout's webhook) until the process ends:
/// each connection on its own task with a 5 s header-read timeout and a 16 KiB buffer, every
/// request answered by `handler`; `what` names the listener in logs. The data plane and
/// forward-auth use `accept_until_shutdown` instead (per-worker sockets, graceful drain).
pub async fn serve_side<H, Fut>(listener: tokio::net::TcpListener, what: &'static str, handler: H)
where
    H: Fn(http::Request<hyper::body::Incoming>, SocketAddr) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = http::Response<http_body_util::Full<bytes::Bytes>>>
        + Send
        + 'static,
{
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, listener = what, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let handler = handler.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let handler = handler.clone();
                async move { Ok::<_, std::convert::Infallible>(handler(req, peer).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Some(Duration::from_secs(5)))
                .max_buf_size(16 * 1024)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, listener = what, "connection ended with an error");
            }
        });
    }
}
