//! The data plane, on hyper (HTTP/1.1 both ways). Each worker thread runs one current-thread
//! runtime with its own SO_REUSEPORT listener and its own upstream pool ([`crate::upstream`]).
//!
//! For each request: the checks of [`crate::target`] on what hyper parsed, the session cookie,
//! then [`crate::outcome::decide`], and [`respond`] turns the outcome into the answer: the one
//! place where outcomes become HTTP. What is forwarded is exactly what was decided on: the target
//! as received (hyper keeps its bytes), the one session cookie resolved, the request body read
//! completely first.
//!
//! What hyper does before the handler runs, and what the gateway adds (the README has the table):
//! hyper answers 400 itself to a malformed request line or header (obs-fold included), 431 to a
//! head over the size limit; it drops a `#fragment`; with `Transfer-Encoding` it drops any
//! `Content-Length` and reads the body as chunked (the gateway refuses the pair when it can see
//! it, and otherwise forwards the chunked reading it decided on, with an exact `Content-Length`,
//! on a connection hyper closes after the answer); identical repeated `Content-Length`s are
//! merged. The gateway itself refuses a missing (HTTP/1.1), repeated, empty or path-holding
//! `Host`, non-origin-form targets (`*`, authority and absolute form, `CONNECT`), lower-case
//! methods and `Upgrade`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Method, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Limited};
use hyper::body::{Body, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::sync::watch;

use crate::deadline::Deadlines;
use crate::outcome::{decide, Facts, Forward, Outcome, Unavailable, Via};
use crate::reader;
use crate::sniff::{Heads, RawHead, Sniff};
use crate::state::Gateway;
use crate::target::{self, is_header_value, is_hop_by_hop, Refusal, Seen, Target};
use crate::upstream::{GatewayBody, Pool, UpstreamError};

/// The data plane's settings.
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    pub threads: usize,
    /// A client must send a whole request head within this time (slow clients cannot hold a
    /// worker); also the longest idle time of a keep-alive connection.
    pub header_read_timeout: Duration,
    /// The longest pause between two parts of a request body (a client that stops sending its
    /// body cannot hold the connection): over it, 408.
    pub body_read_timeout: Duration,
    /// Largest request head (request line and headers), in bytes: over it, 431.
    pub max_header_bytes: usize,
    /// Most header lines in a request: over it, 431.
    pub max_headers: usize,
    /// Largest request body, in bytes: over it, 413.
    pub max_body_bytes: usize,
    /// Most request-body bytes held by all workers together while bodies are read whole: a
    /// request whose body would go over it gets 503.
    pub max_buffered_body_bytes: usize,
    /// In-flight requests get this long to finish after SIGTERM.
    pub shutdown_grace: Duration,
}

/// A request id: [`crate::outcome::unique_id`] in 32 hex digits. Unique without a getrandom
/// syscall per request (measured in the load benchmark's profile), and kept on the stack (the
/// answer's header value is its one allocation).
#[derive(Clone, Copy)]
struct RequestId([u8; 32]);

impl RequestId {
    fn next() -> RequestId {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut id = [0u8; 32];
        for (pair, byte) in id.chunks_exact_mut(2).zip(crate::outcome::unique_id()) {
            pair[0] = HEX[usize::from(byte >> 4)];
            pair[1] = HEX[usize::from(byte & 15)];
        }
        RequestId(id)
    }

    fn as_str(&self) -> &str {
        // Hex digits only: never the fallback.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    fn header(&self) -> HeaderValue {
        HeaderValue::from_bytes(&self.0).expect("hex digits")
    }
}

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The default number of worker threads: half the cores, at least one. The gateway is a sidecar:
/// it shares its host with Console, whose gunicorn workers need the other cores, and one worker
/// thread serves far more requests than Console can (README, Performance: about 90,000 allowed
/// requests/s on this 2-core machine). Measured here with wrk, the nginx upstream and the gateway
/// on two cores: two workers answered no faster than one, at more CPU per request and a p99
/// two to three times higher (a worker preempted with its connections waiting). `--threads`
/// sets it.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1))
}

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
fn refuse_shared_port(addr: SocketAddr) -> std::io::Result<()> {
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

/// Starts the workers; each returns when `shutdown` turns true and its connections finished
/// (or the grace period ran out). The listeners are bound before this returns, so a port in
/// use is reported to the caller.
pub fn start_workers(
    gw: Arc<Gateway>,
    settings: Settings,
    shutdown: watch::Receiver<bool>,
) -> std::io::Result<Vec<std::thread::JoinHandle<()>>> {
    refuse_shared_port(settings.listen)?;
    let mut listeners = Vec::with_capacity(settings.threads);
    for _ in 0..settings.threads.max(1) {
        listeners.push(bind(settings.listen)?);
    }
    let mut handles = Vec::new();
    let bodies = BodyBudget::new(settings.max_buffered_body_bytes);
    for (i, listener) in listeners.into_iter().enumerate() {
        let (gw, settings, shutdown) = (gw.clone(), settings.clone(), shutdown.clone());
        let bodies = bodies.clone();
        let handle = std::thread::Builder::new()
            .name(format!("rbac-gateway-w{i}"))
            .spawn(move || {
                // This worker's log lines are written when it goes idle (`crate::logout`).
                crate::logout::gather_on_this_thread();
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_io()
                    .enable_time()
                    .on_thread_park(crate::logout::flush)
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot start a worker runtime");
                        return;
                    }
                };
                // Tasks are spawned on this runtime itself (not a LocalSet): a task woken by
                // this thread is queued without waking the driver through its eventfd.
                rt.block_on(worker(gw, settings, bodies, listener, shutdown));
            })?;
        handles.push(handle);
    }
    Ok(handles)
}

/// One worker: accepts connections and serves them until shutdown.
async fn worker(
    gw: Arc<Gateway>,
    settings: Settings,
    bodies: Arc<BodyBudget>,
    listener: std::net::TcpListener,
    shutdown: watch::Receiver<bool>,
) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "cannot register the listener");
            return;
        }
    };
    let by_decision = crate::metrics::DECISIONS
        .iter()
        .map(|d| {
            (
                *d,
                gw.metrics.requests.with_label_values(&[d]),
                gw.metrics.decision_seconds.with_label_values(&[d]),
            )
        })
        .collect();
    let upstream_seconds = ["1xx", "2xx", "3xx", "4xx", "5xx"]
        .map(|class| gw.metrics.upstream_seconds.with_label_values(&[class]));
    let deadlines = Deadlines::for_timeouts(&[
        settings.header_read_timeout,
        settings.body_read_timeout,
        gw.read_timeout,
    ]);
    tokio::task::spawn(deadlines.clone().run_ticker());
    let w = Arc::new(Worker {
        pool: Pool::new(gw.upstream, gw.connect_timeout),
        deadlines: deadlines.clone(),
        gw,
        max_body_bytes: settings.max_body_bytes,
        bodies,
        body_read_timeout: settings.body_read_timeout,
        by_decision,
        upstream_seconds,
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(deadlines)
        .header_read_timeout(Some(settings.header_read_timeout))
        .max_header_size(settings.max_header_bytes)
        .max_buf_size((settings.max_header_bytes + 8192).max(16 * 1024))
        .max_headers(settings.max_headers)
        .keep_alive(true)
        // A client may send its requests and then close its side (`nc -N`, some HTTP/1.0
        // clients): each request is still decided and answered. Without this, hyper reads
        // once more after each head to notice such a close and drops the request unanswered;
        // that read also made hyper take a fresh read buffer per request while the request
        // still held the old one (measured: 700 instructions per request). A client that goes
        // away does not cancel its request: Console's answer is read and dropped (the write to
        // the client fails).
        .half_close(true);
    accept_until_shutdown(
        listener,
        shutdown,
        settings.shutdown_grace,
        "data plane",
        move |stream, peer| {
            let w = w.clone();
            let heads = Heads::new(settings.max_headers, settings.max_header_bytes);
            let io = TokioIo::new(Sniff::new(stream, heads.clone()));
            // The client's address as text, once per connection.
            let client_ip: Arc<str> = peer.ip().to_string().into();
            let service =
                service_fn(move |req| handle(w.clone(), client_ip.clone(), heads.next(), req));
            builder.serve_connection(io, service)
        },
    )
    .await;
}

/// Accepts connections until `shutdown` turns true, serving each with the connection `serve`
/// makes of it (on its own task), then gives the open ones `grace` to finish. Shared by the
/// data plane's workers and the forward-auth listener; `what` names the listener in logs.
pub(crate) async fn accept_until_shutdown<C>(
    listener: tokio::net::TcpListener,
    mut shutdown: watch::Receiver<bool>,
    grace: Duration,
    what: &'static str,
    mut serve: impl FnMut(tokio::net::TcpStream, SocketAddr) -> C,
) where
    C: crate::drain::GracefulConnection<Output = Result<(), hyper::Error>> + Send + 'static,
{
    let drain = crate::drain::Drain::new();
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
                if let Err(e) = stream.set_nodelay(true) {
                    tracing::debug!(error = %e, "cannot set TCP_NODELAY");
                }
                let conn = drain.watch(serve(stream, peer));
                tokio::task::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, listener = what, "client connection ended with an error");
                    }
                });
            }
            _ = shutdown.changed() => break,
        }
    }
    drop(listener);
    if tokio::time::timeout(grace, drain.shutdown()).await.is_err() {
        tracing::warn!(
            listener = what,
            "shutdown grace period over: closing the connections still open"
        );
    }
}

/// The request-body bytes all workers may hold at once (`--max-buffered-body-bytes`). Bodies
/// are read whole before Console sees them; without a bound, many slow uploads at once (each
/// within `--max-body-bytes`, each sending a byte before the body-read timeout) could take all
/// of the host's memory.
#[derive(Debug)]
pub struct BodyBudget {
    left: std::sync::atomic::AtomicUsize,
}

impl BodyBudget {
    pub fn new(bytes: usize) -> Arc<BodyBudget> {
        Arc::new(BodyBudget {
            left: std::sync::atomic::AtomicUsize::new(bytes),
        })
    }

    /// Bytes not held by any request right now.
    pub fn left(&self) -> usize {
        self.left.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// The part of the [`BodyBudget`] one request holds; given back when it is dropped.
struct Held {
    budget: Arc<BodyBudget>,
    bytes: usize,
}

impl Held {
    fn new(budget: &Arc<BodyBudget>) -> Held {
        Held {
            budget: budget.clone(),
            bytes: 0,
        }
    }

    /// Holds `n` more bytes, or nothing more when the budget has not that many left.
    fn grow(&mut self, n: usize) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        let took = self
            .budget
            .left
            .fetch_update(Relaxed, Relaxed, |left| left.checked_sub(n));
        if took.is_ok() {
            self.bytes += n;
        }
        took.is_ok()
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.budget
            .left
            .fetch_add(self.bytes, std::sync::atomic::Ordering::Relaxed);
    }
}

/// A worker's share of the gateway.
struct Worker {
    gw: Arc<Gateway>,
    pool: Arc<Pool>,
    /// The per-request timeouts (header read, body read, upstream read), swept by one ticker.
    deadlines: Deadlines,
    max_body_bytes: usize,
    /// Shared by every worker of the process.
    bodies: Arc<BodyBudget>,
    body_read_timeout: Duration,
    /// The request counter and decision-time histogram of each decision label, looked up once
    /// per worker instead of hashed per request.
    by_decision: Vec<(&'static str, prometheus::IntCounter, prometheus::Histogram)>,
    /// Console's answer time by status class (1xx..5xx), looked up once per worker.
    upstream_seconds: [prometheus::Histogram; 5],
}

/// Per-request facts the answer needs besides the outcome.
struct Ctx {
    request_id: RequestId,
    /// The client's address as text (audit rows, X-Forwarded-For).
    client_ip: Arc<str>,
    started: Instant,
    /// HEAD: answers carry no body.
    head: bool,
    /// The request has a body the gateway has not read: its own answers close the connection.
    unread_body: bool,
    /// Every answer to this request closes the connection.
    close: bool,
    /// The headers the request's `Connection` headers name: not forwarded.
    connection_named: Vec<HeaderName>,
}

/// The session cookie as Console will read it, for the doors that forward nothing themselves
/// (the reader API, forward-auth): a `Cookie` header Console could read differently is refused.
pub(crate) fn session_token<'a>(
    headers: &'a HeaderMap,
    name: &str,
) -> Result<Option<&'a str>, Refusal> {
    let values: Vec<&[u8]> = headers
        .get_all(header::COOKIE)
        .iter()
        .map(HeaderValue::as_bytes)
        .collect();
    read_cookie(&values, name).map(|(token, _)| token)
}

/// What happens to the request's `Cookie` headers on the way to Console.
enum CookieRewrite {
    /// The one header, unchanged.
    Keep,
    /// None at all.
    Drop,
    /// Exactly this one value (repeated headers joined as gunicorn would).
    Set(Vec<u8>),
}

/// The session cookie as Console will read it ([`crate::cookie::session`]) from every `Cookie`
/// value of a request in order, and what to forward.
fn read_cookie<'a>(
    values: &[&'a [u8]],
    name: &str,
) -> Result<(Option<&'a str>, CookieRewrite), Refusal> {
    if values.is_empty() {
        return Ok((None, CookieRewrite::Keep));
    }
    let s = crate::cookie::session(values, name).map_err(|r| Refusal::Cookie(r.as_str()))?;
    let rewrite = match s.forward {
        None => CookieRewrite::Drop,
        Some(std::borrow::Cow::Borrowed(_)) => CookieRewrite::Keep,
        Some(std::borrow::Cow::Owned(v)) => CookieRewrite::Set(v),
    };
    Ok((s.token, rewrite))
}

/// Every check that can refuse a request before it is decided: on the head as received
/// (`raw`), and on what hyper parsed of it, which must be the same request. Also returns what
/// the header checks saw of the headers read later.
fn check_request<'r>(
    req: &'r Request<Incoming>,
    raw: Option<&RawHead>,
) -> Result<(Target, Seen<'r>), Refusal> {
    let raw = raw.ok_or(Refusal::Unparsed)?;
    target::check_method(raw.method())?;
    if raw.method() != req.method().as_str().as_bytes() {
        return Err(Refusal::Unparsed);
    }
    if req.method() == Method::CONNECT {
        return Err(Refusal::NotOriginForm);
    }
    let t = target::parse_target(raw.target())?;
    let uri = req.uri();
    if uri.scheme().is_some()
        || uri.authority().is_some()
        || uri.path_and_query().map(|p| p.as_str().as_bytes()) != Some(raw.target())
    {
        // What hyper hands on must be the target decided on, byte for byte.
        return Err(Refusal::Unparsed);
    }
    raw.framing.clone()?;
    let seen = target::check_headers(req.headers(), req.version() == Version::HTTP_11)?;
    Ok((t, seen))
}

fn text_response(ctx: &Ctx, status: u16, body: &'static str, close: bool) -> Response<GatewayBody> {
    let mut resp = Response::new(if ctx.head {
        GatewayBody::Own(None)
    } else {
        GatewayBody::text(body)
    });
    *resp.status_mut() = StatusCode::from_u16(status).expect("a valid status");
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(X_REQUEST_ID, ctx.request_id.header());
    if close || ctx.unread_body || ctx.close {
        // An unread request body must not be taken for the next request.
        h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const X_RBAC_ADMIN_ID: HeaderName = HeaderName::from_static("x-rbac-admin-id");
const X_RBAC_ROLES: HeaderName = HeaderName::from_static("x-rbac-roles");
const X_RBAC_SHADOW: HeaderName = HeaderName::from_static("x-rbac-shadow-decision");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

async fn handle(
    w: Arc<Worker>,
    client_ip: Arc<str>,
    raw: Option<RawHead>,
    req: Request<Incoming>,
) -> Result<Response<GatewayBody>, Infallible> {
    let mut ctx = Ctx {
        request_id: RequestId::next(),
        client_ip,
        started: Instant::now(),
        head: req.method() == Method::HEAD,
        unread_body: !req.body().is_end_stream(),
        // Nothing after a request with a body was sniffed: the connection ends with its answer.
        close: raw.as_ref().is_none_or(|r| r.has_body),
        connection_named: Vec::new(),
    };
    let gw = &w.gw;
    let checked = check_request(&req, raw.as_ref()).and_then(|(t, mut seen)| {
        ctx.connection_named = std::mem::take(&mut seen.connection_named);
        let cookie = match seen.cookie {
            None => read_cookie(&[], &gw.cookie),
            Some(first) if seen.more_cookies.is_empty() => read_cookie(&[first], &gw.cookie),
            Some(first) => {
                let mut all = vec![first];
                all.extend_from_slice(&seen.more_cookies);
                read_cookie(&all, &gw.cookie)
            }
        }?;
        Ok((t, seen.user_agent, cookie))
    });
    let mut cookie = CookieRewrite::Keep;
    let outcome = match checked {
        Err(refusal) => {
            tracing::warn!(request_id = %ctx.request_id, reason = %refusal, client_ip = %ctx.client_ip, "refused");
            gw.metrics
                .refusals
                .with_label_values(&[refusal.as_str()])
                .inc();
            Outcome::Refuse(refusal)
        }
        Ok((target, user_agent, (token, rewrite))) => {
            cookie = rewrite;
            // The reader API is answered here, never decided as a route nor forwarded.
            if let Some(call) = gw.rbac_api.then(|| reader::Call::of(&target)).flatten() {
                let close = ctx.unread_body || ctx.close;
                let resp = reader::respond(
                    gw,
                    &call,
                    req.method(),
                    token,
                    ctx.request_id.as_str(),
                    close,
                );
                return Ok(resp.await);
            }
            let mapping = gw.mapping.load();
            let facts = Facts {
                method: req.method().as_str(),
                target: &target,
                token,
                client_ip: Some(&ctx.client_ip),
                user_agent: user_agent.and_then(|v| v.to_str().ok()),
                request_id: ctx.request_id.as_str(),
                at: ctx.started,
            };
            let outcome = decide(&**gw, &mapping, gw.switches(), &facts).await;
            let (method, path, version) = (req.method(), &target.path, &mapping.version);
            match &outcome {
                Outcome::Forward(Forward {
                    via: Via::Allowed(by),
                    principal: Some(p),
                    rule,
                    ..
                }) => {
                    tracing::debug!(request_id = %ctx.request_id, admin_id = %p.admin_id, %method, %path, rule = rule.as_deref().unwrap_or("-"), granted_by = ?by, mapping_version = %version, "allowed")
                }
                Outcome::Forward(f) => {
                    tracing::debug!(request_id = %ctx.request_id, %method, %path, rule = f.rule.as_deref().unwrap_or("-"), decision = outcome.label(), mapping_version = %version, "forward")
                }
                Outcome::Redirect { .. } => {
                    tracing::debug!(request_id = %ctx.request_id, %method, %path, mapping_version = %version, "redirected to login: no valid session")
                }
                _ => {}
            }
            outcome
        }
    };
    Ok(respond(&w, &mut ctx, outcome, req, cookie).await)
}

/// Counts the request's outcome and how long it took to reach it; returns the time it read.
fn count(w: &Worker, ctx: &Ctx, label: &str) -> Instant {
    let now = Instant::now();
    let secs = now.saturating_duration_since(ctx.started).as_secs_f64();
    match w.by_decision.iter().find(|(d, _, _)| *d == label) {
        Some((_, n, t)) => {
            n.inc();
            t.observe(secs);
        }
        None => {
            let m = &w.gw.metrics;
            m.requests.with_label_values(&[label]).inc();
            m.decision_seconds.with_label_values(&[label]).observe(secs);
        }
    }
    now
}

/// The one place where an outcome becomes an answer.
async fn respond(
    w: &Arc<Worker>,
    ctx: &mut Ctx,
    outcome: Outcome,
    req: Request<Incoming>,
    cookie: CookieRewrite,
) -> Response<GatewayBody> {
    let gw = &w.gw;
    match outcome {
        Outcome::Refuse(_) => {
            count(w, ctx, "refused");
            text_response(ctx, 400, "Bad Request\n", true)
        }
        Outcome::Gone => {
            count(w, ctx, "gone");
            text_response(ctx, 404, "Not Found\n", false)
        }
        Outcome::Redirect { location } => {
            count(w, ctx, "redirected");
            let mut resp = text_response(ctx, 302, "Found\n", false);
            match HeaderValue::from_str(&location) {
                Ok(v) => {
                    resp.headers_mut().insert(header::LOCATION, v);
                }
                // Built from a checked, percent-encoded target: cannot happen.
                Err(e) => tracing::error!(error = %e, "login location is not a header value"),
            }
            resp
        }
        Outcome::Unavailable(why) => unavailable(w, ctx, why),
        Outcome::Deny { row } => {
            if let Err(e) = gw.audit.record(row.clone()).await {
                tracing::error!(request_id = %ctx.request_id, error = %e, "cannot record the denial: answering 503");
                return unavailable(w, ctx, Unavailable::Audit);
            }
            let label = row.route.as_deref().unwrap_or("-");
            gw.metrics
                .denials_by_route
                .with_label_values(&[label, row.reason.as_str()])
                .inc();
            tracing::info!(
                request_id = %ctx.request_id, admin_id = row.admin_id.as_deref().unwrap_or("-"), method = %row.method,
                path = %row.path, rule = %label, required = row.required.as_deref().unwrap_or("-"),
                reason = %row.reason, mapping_version = row.mapping_version.as_deref().unwrap_or("-"), "denied"
            );
            count(w, ctx, "denied");
            text_response(ctx, 403, "Forbidden\n", false)
        }
        Outcome::ShadowDeny { forward, row } => {
            if let Err(e) = gw.audit.record(row.clone()).await {
                tracing::error!(request_id = %ctx.request_id, error = %e, "cannot record a shadow denial");
            }
            gw.metrics
                .shadow_denials
                .with_label_values(&[row.route.as_deref().unwrap_or("-")])
                .inc();
            tracing::info!(request_id = %ctx.request_id, admin_id = row.admin_id.as_deref().unwrap_or("-"), rule = row.route.as_deref().unwrap_or("-"), "shadow: would deny, forwarding");
            let decided = count(w, ctx, "shadow_denied");
            forward_request(w, ctx, forward, req, cookie, decided).await
        }
        Outcome::Forward(forward) => {
            let decided = count(w, ctx, outcome_label(&forward));
            forward_request(w, ctx, forward, req, cookie, decided).await
        }
    }
}

fn outcome_label(f: &Forward) -> &'static str {
    match f.via {
        Via::Open(k) => k.as_str(),
        Via::Allowed(_) => "allowed",
        Via::ShadowDenied => "shadow_denied",
    }
}

fn unavailable(w: &Worker, ctx: &Ctx, why: Unavailable) -> Response<GatewayBody> {
    tracing::warn!(request_id = %ctx.request_id, cause = why.as_str(), "answering 503");
    count(w, ctx, "unavailable");
    text_response(ctx, 503, "Service Unavailable\n", false)
}

enum BodyError {
    /// The client paused longer than the body-read timeout.
    TimedOut,
    /// Over the size limit, malformed, or cut short.
    Read(Box<dyn std::error::Error + Send + Sync>),
    /// The bodies being read by all workers hold `--max-buffered-body-bytes` already.
    Busy,
}

/// Reads a request body whole, up to the worker's size limit, each part within the body-read
/// timeout of the one before (like nginx's `client_body_timeout`: a slow upload that keeps
/// sending is read; a client that stops is not waited for). Trailers are dropped.
async fn read_body(w: &Worker, body: Incoming) -> Result<(Bytes, Held), BodyError> {
    // With a Content-Length, the buffer is made that size once, not grown by doubling.
    let declared = body.size_hint().exact().map_or(0, |n| n as usize);
    let mut held = Held::new(&w.bodies);
    let mut body = Limited::new(body, w.max_body_bytes);
    let mut first: Option<Bytes> = None;
    let mut more: Option<BytesMut> = None;
    loop {
        let next = std::pin::pin!(body.frame());
        let frame = match w
            .deadlines
            .timeout_at(Instant::now() + w.body_read_timeout, next)
            .await
        {
            Err(_) => return Err(BodyError::TimedOut),
            Ok(None) => break,
            Ok(Some(Err(e))) => return Err(BodyError::Read(e)),
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if !held.grow(data.len()) {
            return Err(BodyError::Busy);
        }
        if let Some(m) = more.as_mut() {
            m.extend_from_slice(&data);
        } else if let Some(f) = first.take() {
            let size = (f.len() + data.len()).max(declared.min(w.max_body_bytes));
            let mut m = BytesMut::with_capacity(size);
            m.extend_from_slice(&f);
            m.extend_from_slice(&data);
            more = Some(m);
        } else {
            first = Some(data);
        }
    }
    let bytes = more.map(BytesMut::freeze).or(first).unwrap_or_default();
    Ok((bytes, held))
}

/// Identity headers come from the gateway only, whatever spelling the client used.
fn is_identity_header(n: &HeaderName) -> bool {
    let k = n.as_str().as_bytes();
    k.len() >= 7
        && (k[..7].eq_ignore_ascii_case(b"x-rbac-") || k[..7].eq_ignore_ascii_case(b"x_rbac_"))
}

/// Writes one header line.
fn put_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

async fn forward_request(
    w: &Arc<Worker>,
    ctx: &mut Ctx,
    forward: Forward,
    req: Request<Incoming>,
    cookie: CookieRewrite,
    decided: Instant,
) -> Response<GatewayBody> {
    let gw = &w.gw;
    let (parts, body) = req.into_parts();
    // The body is read completely before Console sees the request (like nginx's request
    // buffering): a body that turns out malformed or cut short never reaches Console.
    // No body to wait for: nothing awaited between the decision and sending to Console.
    let body_was_done = body.is_end_stream();
    // Held until this request is over: the body is in memory until Console has it.
    let (bytes, _held) = if body_was_done {
        (Bytes::new(), Held::new(&w.bodies))
    } else {
        match read_body(w, body).await {
            Ok(b) => b,
            Err(BodyError::Busy) => {
                ctx.unread_body = true;
                tracing::warn!(request_id = %ctx.request_id, limit = w.bodies.left(), "request bodies being read hold --max-buffered-body-bytes: 503, not forwarded");
                gw.metrics
                    .refusals
                    .with_label_values(&["body_budget"])
                    .inc();
                let mut resp = text_response(ctx, 503, "Service Unavailable\n", true);
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                return resp;
            }
            Err(BodyError::TimedOut) => {
                ctx.unread_body = true;
                tracing::warn!(request_id = %ctx.request_id, timeout_ms = w.body_read_timeout.as_millis() as u64, "request body stalled: 408, not forwarded");
                gw.metrics
                    .refusals
                    .with_label_values(&["body_timeout"])
                    .inc();
                return text_response(ctx, 408, "Request Timeout\n", true);
            }
            Err(BodyError::Read(e)) => {
                ctx.unread_body = true;
                if e.is::<http_body_util::LengthLimitError>() {
                    tracing::warn!(request_id = %ctx.request_id, limit = w.max_body_bytes, "request body too large: 413");
                    return text_response(ctx, 413, "Payload Too Large\n", true);
                }
                tracing::warn!(request_id = %ctx.request_id, error = %e, "request body malformed or incomplete: 400, not forwarded");
                gw.metrics
                    .refusals
                    .with_label_values(&["malformed_body"])
                    .inc();
                return text_response(ctx, 400, "Bad Request\n", true);
            }
        }
    };
    ctx.unread_body = false;
    // What Console receives, written in one pass over the request's headers: the target decided
    // on, byte for byte (checked equal to the bytes received); the client's headers without the
    // hop-by-hop ones, spoofed identity headers, framing headers and what the gateway sets
    // itself; then the gateway's own; then the body read whole.
    let h = &parts.headers;
    let (admin_id, roles) = match &forward.principal {
        Some(p) => {
            let (id, roles) = (p.admin_id.as_bytes(), p.roles_header().as_bytes());
            if !p.forwardable() {
                tracing::error!(request_id = %ctx.request_id, admin_id = %p.admin_id, "admin id or role names are not valid header values: answering 503");
                return unavailable(w, ctx, Unavailable::Identity);
            }
            (Some(id), Some(roles))
        }
        None => (None, None),
    };
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut request = Vec::with_capacity(512 + bytes.len());
    request.extend_from_slice(parts.method.as_str().as_bytes());
    request.push(b' ');
    request.extend_from_slice(target.as_bytes());
    request.extend_from_slice(b" HTTP/1.1\r\n");
    // What the loop sees of the headers it does not copy (no lookup by name afterwards).
    let mut had_length = false;
    let mut had_host = false;
    // Every X-Forwarded-For line, in order: gunicorn joins repeated ones with ','.
    let mut forwarded_for: Vec<&[u8]> = Vec::new();
    for (name, value) in h {
        if *name == header::CONTENT_LENGTH {
            had_length = true;
            continue;
        }
        if *name == X_FORWARDED_FOR {
            // Joined and extended below.
            if !value.is_empty() {
                forwarded_for.push(value.as_bytes());
            }
            continue;
        }
        had_host |= *name == header::HOST;
        if is_hop_by_hop(name)
            || is_identity_header(name)
            || *name == header::EXPECT
            || *name == X_REQUEST_ID
            || (*name == header::COOKIE && !matches!(cookie, CookieRewrite::Keep))
            || ctx.connection_named.contains(name)
        {
            continue;
        }
        put_header(&mut request, name.as_str().as_bytes(), value.as_bytes());
    }
    if !had_host {
        // HTTP/1.0 without Host: Console gets its own address.
        put_header(&mut request, b"host", gw.upstream.to_string().as_bytes());
    }
    if let CookieRewrite::Set(v) = &cookie {
        // Joined from header values hyper accepted.
        if is_header_value(v) {
            put_header(&mut request, b"cookie", v);
        } else {
            tracing::error!(request_id = %ctx.request_id, "joined Cookie is not a header value: none forwarded");
        }
    }
    // Any body the client framed (a Content-Length, or chunks, even none) is sent with its
    // exact length: `Content-Length: 0` for an empty chunked one, so Console never infers it.
    if had_length || !body_was_done {
        put_header(
            &mut request,
            b"content-length",
            bytes.len().to_string().as_bytes(),
        );
    }
    if let (Some(id), Some(roles)) = (admin_id, roles) {
        put_header(&mut request, X_RBAC_ADMIN_ID.as_str().as_bytes(), id);
        put_header(&mut request, X_RBAC_ROLES.as_str().as_bytes(), roles);
    }
    if forward.via == Via::ShadowDenied {
        put_header(&mut request, X_RBAC_SHADOW.as_str().as_bytes(), b"deny");
    }
    put_header(
        &mut request,
        X_REQUEST_ID.as_str().as_bytes(),
        &ctx.request_id.0,
    );
    if forwarded_for.is_empty() {
        put_header(
            &mut request,
            X_FORWARDED_FOR.as_str().as_bytes(),
            ctx.client_ip.as_bytes(),
        );
    } else {
        let mut v = Vec::with_capacity(64);
        for prev in forwarded_for {
            v.extend_from_slice(prev);
            v.extend_from_slice(b", ");
        }
        v.extend_from_slice(ctx.client_ip.as_bytes());
        put_header(&mut request, X_FORWARDED_FOR.as_str().as_bytes(), &v);
    }
    request.extend_from_slice(b"\r\n");
    request.extend_from_slice(&bytes);

    // Console's time starts when the request goes out: after the body was read, if there was
    // one to wait for (otherwise the decision's clock reading serves, one clock read less per
    // request). A body can be empty and still have been waited for (chunked, its last chunk
    // held back): then the clock is read now, or the read timeout would start too early.
    let sent = if body_was_done {
        decided
    } else {
        Instant::now()
    };
    let exchange = std::pin::pin!(w.pool.send(&request, parts.method == Method::HEAD));
    let result = w
        .deadlines
        .timeout_at(sent + gw.read_timeout, exchange)
        .await;
    let resp = match result {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            let status = match e {
                UpstreamError::ConnectTimeout => 504,
                _ => 502,
            };
            tracing::warn!(request_id = %ctx.request_id, status, error = %e, "upstream failure");
            return text_response(
                ctx,
                status,
                if status == 504 {
                    "Gateway Timeout\n"
                } else {
                    "Bad Gateway\n"
                },
                true,
            );
        }
        Err(_) => {
            tracing::warn!(request_id = %ctx.request_id, status = 504, "upstream read timed out");
            return text_response(ctx, 504, "Gateway Timeout\n", true);
        }
    };
    let status = resp.status().as_u16();
    w.upstream_seconds[(status / 100).clamp(1, 5) as usize - 1]
        .observe(sent.elapsed().as_secs_f64());
    if let Some(mut drift) = forward.drift.clone() {
        let route = drift.route.clone().unwrap_or_default();
        if forward.drifts(status) {
            gw.metrics
                .drift
                .with_label_values(&[route.as_str(), drift.reason.as_str()])
                .inc();
            tracing::warn!(request_id = %ctx.request_id, rule = %route, kind = %drift.reason, console_status = status, "drift: the gateway and Console disagree");
            drift.id = crate::outcome::row_id();
            let audit = gw.audit.clone();
            tokio::task::spawn(async move {
                if let Err(e) = audit.record(Arc::from(drift)).await {
                    tracing::error!(error = %e, "cannot record a drift event");
                }
            });
        } else {
            gw.metrics
                .shadow_agreements
                .with_label_values(&[route.as_str()])
                .inc();
        }
    }
    // Console's hop-by-hop headers were left out when its answer was read.
    let (mut rparts, rbody) = resp.into_parts();
    rparts.headers.insert(X_REQUEST_ID, ctx.request_id.header());
    rparts.version = Version::HTTP_11;
    if ctx.close {
        rparts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    Response::from_parts(rparts, rbody)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_a_process_prefix_and_a_counter_in_hex() {
        let (a, b) = (RequestId::next(), RequestId::next());
        for id in [a, b] {
            assert_eq!(id.as_str().len(), 32);
            assert!(id
                .as_str()
                .bytes()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
            assert_eq!(id.header().as_bytes(), id.as_str().as_bytes());
            assert_eq!(id.to_string(), id.as_str());
        }
        assert_eq!(a.as_str()[..16], b.as_str()[..16], "one prefix per process");
        let counter = |id: RequestId| u64::from_str_radix(&id.as_str()[16..], 16).unwrap();
        // Other tests may take ids in between, never the same one.
        assert!(counter(b) > counter(a));
        let c = RequestId::next();
        assert_ne!(c.as_str(), b.as_str());
    }

    #[test]
    fn identity_headers_in_any_spelling() {
        for n in [
            "x-rbac-admin-id",
            "X-RBAC-ROLES",
            "x_rbac_roles",
            "X_Rbac_x",
        ] {
            assert!(
                is_identity_header(&HeaderName::from_bytes(n.as_bytes()).unwrap()),
                "{n}"
            );
        }
        for n in ["x-rbac", "x-rbacx-a", "x-request-id"] {
            assert!(
                !is_identity_header(&HeaderName::from_bytes(n.as_bytes()).unwrap()),
                "{n}"
            );
        }
        assert!(is_header_value(b"raxx-admin,console-user"));
        assert!(!is_header_value(b"a\r\nx-rbac-roles: all"));
        assert!(!is_header_value(b"a\x7f"));
    }
}
