//! The data plane's worker threads, and the doors they serve. Each worker is a thread with a
//! current-thread tokio runtime of its own and one SO_REUSEPORT socket of every door's address
//! ([`super::listen::bind_workers`]): the kernel spreads connections over the workers, and a
//! connection, its tasks and its upstream connections never leave the thread that accepted it
//! (no cross-thread wake-ups: docs/performance-log.md). That is why the doors are fast, and it is
//! this module's alone: a door ([`Door`]) only serves one worker's socket until shutdown, in
//! mini-redis's `serve(listener, shutdown)` shape, so it can be started and tested alone, and a
//! new door (a gRPC ext_authz, say) is one more [`Door`] handed to [`start`].

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

/// The default number of worker threads: half the cores, at least one. The gateway is a sidecar:
/// it shares its host with Console, whose gunicorn workers need the other cores, and one worker
/// thread serves far more requests than Console can (docs/performance-log.md: about 90,000 allowed
/// requests/s on this 2-core machine). Measured here with wrk, the nginx upstream and the gateway
/// on two cores: two workers answered no faster than one, at more CPU per request and a p99
/// two to three times higher (a worker preempted with its connections waiting). `--threads`
/// sets it.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1))
}

/// The HTTP/1 server settings every door's connections are held to.
#[derive(Clone, Debug)]
pub struct Http1Settings {
    /// A client must send a whole request head within this time (slow clients cannot hold a
    /// worker); also the longest idle time of a keep-alive connection.
    pub header_read_timeout: Duration,
    /// Largest request head (request line and headers), in bytes: over it, 431.
    pub max_header_bytes: usize,
    /// Most header lines in a request: over it, 431.
    pub max_headers: usize,
    /// In-flight requests get this long to finish after SIGTERM.
    pub shutdown_grace: Duration,
}

impl Http1Settings {
    /// hyper's HTTP/1 server as every door runs it, its timeouts kept by tokio's timer (the
    /// data plane's doors give each connection a timer of its own that is set again for each
    /// head: [`super::header_timer::HeaderTimer`]).
    pub fn builder(&self) -> hyper::server::conn::http1::Builder {
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(Some(self.header_read_timeout))
            .max_header_size(self.max_header_bytes)
            .max_buf_size((self.max_header_bytes + 8192).max(16 * 1024))
            .max_headers(self.max_headers)
            .keep_alive(true)
            // A client may send its requests and then close its side (`nc -N`, some HTTP/1.0
            // clients): each request is still decided and answered. Without this, hyper reads
            // once more after each head to notice such a close and drops the request unanswered;
            // that read also made hyper take a fresh read buffer per request while the request
            // still held the old one (measured: 700 instructions per request). A client that goes
            // away does not cancel its request: Console's answer is read and dropped (the write to
            // the client fails).
            .half_close(true);
        builder
    }
}

/// A door the workers serve: what it answers on one address.
pub trait Door: Send + Sync + 'static {
    /// The flag its address comes from (`--listen`), named when it cannot listen.
    fn flag(&self) -> &'static str;

    /// Serves `listener`, this worker's socket of the door's address, until `shutdown` turns
    /// true and its connections have finished (or the grace period ran out). Runs on the
    /// worker's runtime: whatever it spawns stays on the worker's thread.
    fn serve(
        self: Arc<Self>,
        listener: tokio::net::TcpListener,
        shutdown: watch::Receiver<bool>,
    ) -> Pin<Box<dyn Future<Output = ()>>>;
}

/// The running workers and the address each door listens on (port 0 resolved), in the order
/// the doors were given.
pub struct Started {
    pub handles: Vec<std::thread::JoinHandle<()>>,
    pub bound: Vec<SocketAddr>,
}

/// Why the workers could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {flag}: {error}")]
    Listen {
        flag: &'static str,
        addr: SocketAddr,
        error: std::io::Error,
    },
    #[error("cannot start a worker thread: {0}")]
    Thread(std::io::Error),
}

/// A task the first worker runs beside its doors (`serve`'s audit writer, whose rows come from
/// the doors: `stores/audit/writing.rs`). Called with a future that is ready once that worker's
/// doors have finished, it returns once it has wound down, and the worker thread ends after
/// it. Dropped without being called if the worker cannot start its runtime.
pub type Beside = Box<
    dyn FnOnce(Pin<Box<dyn Future<Output = ()> + Send>>) -> Pin<Box<dyn Future<Output = ()> + Send>>
        + Send,
>;

/// Starts `threads` workers (at least one), each serving a socket of every door's address; each
/// returns when `shutdown` turns true and its doors have finished. Every address is bound before
/// this returns, so a port in use is reported to the caller. The first worker also runs
/// `beside`.
pub fn start(
    threads: usize,
    doors: Vec<(SocketAddr, Arc<dyn Door>)>,
    shutdown: watch::Receiver<bool>,
    mut beside: Option<Beside>,
) -> Result<Started, StartError> {
    let threads = threads.max(1);
    let mut bound = Vec::new();
    let mut sockets = Vec::new();
    for (addr, door) in &doors {
        let (at, all) =
            super::listen::bind_workers(*addr, threads).map_err(|error| StartError::Listen {
                flag: door.flag(),
                addr: *addr,
                error,
            })?;
        bound.push(at);
        sockets.push(all.into_iter());
    }
    let mut handles = Vec::new();
    for i in 0..threads {
        let mine: Vec<(Arc<dyn Door>, std::net::TcpListener)> = doors
            .iter()
            .zip(sockets.iter_mut())
            .filter_map(|((_, door), s)| Some((door.clone(), s.next()?)))
            .collect();
        let shutdown = shutdown.clone();
        let beside = beside.take();
        let handle = std::thread::Builder::new()
            .name(format!("rbac-gateway-w{i}"))
            .spawn(move || worker(mine, shutdown, beside))
            .map_err(StartError::Thread)?;
        handles.push(handle);
    }
    Ok(Started { handles, bound })
}

/// One worker thread: its runtime serves its socket of every door until they have all ended.
fn worker(
    doors: Vec<(Arc<dyn Door>, std::net::TcpListener)>,
    shutdown: watch::Receiver<bool>,
    beside: Option<Beside>,
) {
    // This worker's log lines are written when it goes idle (`crate::runtime::log_sink`).
    crate::runtime::log_sink::gather_on_this_thread();
    // Its passes, for the audit writer's batches (`runtime/passes.rs`).
    let passes = &crate::runtime::passes::PASSES;
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .on_thread_park(|| {
            crate::runtime::log_sink::flush();
            passes.park();
        })
        .on_thread_unpark(|| passes.unpark())
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot start a worker runtime");
            return;
        }
    };
    // Tasks are spawned on this runtime itself (not a LocalSet): a task woken by this thread is
    // queued without waking the driver through its eventfd. The doors' accept loops run in
    // `block_on` itself.
    passes.started();
    // Ended however the runtime ends (a panic included): a pass left open would hold every
    // later batch of the audit writer for its whole wait.
    let _running = Running(passes);
    rt.block_on(async move {
        let mut serving = Vec::new();
        for (door, listener) in doors {
            match tokio::net::TcpListener::from_std(listener) {
                Ok(l) => serving.push(door.serve(l, shutdown.clone())),
                Err(e) => {
                    tracing::error!(error = %e, door = door.flag(), "cannot register the listener")
                }
            }
        }
        let (finished, doors_done) = tokio::sync::oneshot::channel::<()>();
        let serving = async move {
            futures_util::future::join_all(serving).await;
            drop(finished);
        };
        match beside {
            Some(beside) => {
                // Its sender is dropped, never used to send: the receiver's error is the signal.
                let done = Box::pin(async move {
                    let _ = doors_done.await;
                });
                futures_util::future::join(serving, beside(done)).await;
            }
            None => serving.await,
        }
    });
}

/// A worker thread running, for [`crate::runtime::passes`], until dropped.
struct Running(&'static crate::runtime::passes::Passes);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.stopped();
    }
}
