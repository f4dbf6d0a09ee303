//! The data plane, on hyper (HTTP/1.1 both ways). Each worker thread runs one current-thread
//! runtime with its own SO_REUSEPORT listener and its own upstream pool ([`crate::dataplane::upstream`]).
//!
//! For each request: the checks of [`crate::policy::target`] on what hyper parsed, the session cookie,
//! then [`crate::policy::outcome::decide`], and [`respond`] turns the outcome into the answer: the one
//! place where outcomes become HTTP. What is forwarded is exactly what was decided on: the target
//! as received (hyper keeps its bytes), the one session cookie resolved, the request body read
//! completely first.
//!
//! What hyper does before the handler runs, and what the gateway adds (docs/design/security.md has the table):
//! hyper answers 400 itself to a malformed request line or header (obs-fold included), 431 to a
//! head over the size limit; it drops a `#fragment`; with `Transfer-Encoding` it drops any
//! `Content-Length` and reads the body as chunked (the gateway refuses the pair when it can see
//! it, and otherwise forwards the chunked reading it decided on, with an exact `Content-Length`,
//! on a connection hyper closes after the answer); identical repeated `Content-Length`s are
//! merged. The gateway itself refuses a missing (HTTP/1.1), repeated, empty or path-holding
//! `Host`, non-origin-form targets (`*`, authority and absolute form, `CONNECT`), lower-case
//! methods and `Upgrade`.
//!
//! Here: the workers, `handle` and `respond`. Beside it: `checks.rs` (the refusals before a
//! request is decided, and the session cookie), `body.rs` (the shared body budget and reading a
//! body whole), `forward.rs` (`forward_request`: the bytes Console receives, and its answer).

mod body;
mod checks;
mod forward;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper::body::{Body, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::sync::watch;

use crate::dataplane::deadline::Deadlines;
use crate::dataplane::sniff::{Heads, RawHead, Sniff};
use crate::dataplane::upstream::{GatewayBody, Pool};
use crate::doors::rbac_api;
use crate::gateway::state::Gateway;
use crate::policy::answer::{carry_out, Answer, DecisionCounts, Reply, RequestId};
use crate::policy::outcome::{decide, Facts, Forward, Outcome, Via};

pub use body::BodyBudget;
use checks::{check_request, read_cookie, CookieRewrite};
use forward::forward_request;

/// The data plane's `rbac_gateway_connections_accepted_total{listener}` label.
pub const LISTENER: &str = "data plane";

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
    /// Forward-auth (`--authz-listen`): served by the same workers, on a socket of its own.
    pub authz_listen: Option<SocketAddr>,
    /// The router in front sets `X-Request-Id` (`--trust-request-id`): a valid one is the
    /// request's id ([`RequestId::trusted`]).
    pub trust_request_id: bool,
    /// Proxies in front that each append the address they saw to `X-Forwarded-For`
    /// (`--trusted-proxies`): the client's address is the one the outermost of them appended
    /// ([`forwarded_client`]). 0: the peer's address.
    pub trusted_proxies: usize,
}

/// The client's address when `trusted` proxies in front each appended the address they saw to
/// `X-Forwarded-For` (Heroku's router: one): the `trusted`-th address from the end of all its
/// lines taken together, the one the outermost trusted proxy saw. Anything before it was sent
/// by the client and is never taken. None (the peer's address serves): fewer addresses than
/// trusted proxies, or that one is not an IP address.
pub fn forwarded_client(h: &http::HeaderMap, trusted: usize) -> Option<std::net::IpAddr> {
    if trusted == 0 {
        return None;
    }
    let mut hops: Vec<&[u8]> = Vec::new();
    for line in h.get_all("x-forwarded-for") {
        hops.extend(line.as_bytes().split(|&c| c == b','));
    }
    let hop = hops.len().checked_sub(trusted).map(|i| hops[i])?;
    std::str::from_utf8(hop).ok()?.trim().parse().ok()
}

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

/// Starts the workers; each returns when `shutdown` turns true and its connections finished
/// (or the grace period ran out). The listeners are bound before this returns, so a port in
/// use is reported to the caller.
pub fn start_workers(
    gw: Arc<Gateway>,
    settings: Settings,
    shutdown: watch::Receiver<bool>,
) -> Result<Started, StartError> {
    let threads = settings.threads.max(1);
    let (listen, listeners) = crate::dataplane::listen::bind_workers(settings.listen, threads)
        .map_err(StartError::Listen)?;
    let (authz, mut authz_listeners) = match settings.authz_listen {
        None => (None, Vec::new()),
        Some(addr) => {
            let (bound, all) =
                crate::dataplane::listen::bind_workers(addr, threads).map_err(StartError::Authz)?;
            (Some(bound), all)
        }
    };
    let mut handles = Vec::new();
    let bodies = BodyBudget::new(settings.max_buffered_body_bytes);
    for (i, listener) in listeners.into_iter().enumerate() {
        let (gw, settings, shutdown) = (gw.clone(), settings.clone(), shutdown.clone());
        let authz_listener = authz_listeners.pop();
        let bodies = bodies.clone();
        let handle = std::thread::Builder::new()
            .name(format!("rbac-gateway-w{i}"))
            .spawn(move || {
                // This worker's log lines are written when it goes idle (`crate::runtime::log_sink`).
                crate::runtime::log_sink::gather_on_this_thread();
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_io()
                    .enable_time()
                    .on_thread_park(crate::runtime::log_sink::flush)
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
                rt.block_on(worker(
                    gw,
                    settings,
                    bodies,
                    listener,
                    authz_listener,
                    shutdown,
                ));
            })
            .map_err(StartError::Thread)?;
        handles.push(handle);
    }
    Ok(Started {
        handles,
        listen,
        authz,
    })
}

/// The running workers and the addresses they listen on (port 0 resolved).
pub struct Started {
    pub handles: Vec<std::thread::JoinHandle<()>>,
    pub listen: SocketAddr,
    pub authz: Option<SocketAddr>,
}

/// Why the workers could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on --listen: {0}")]
    Listen(std::io::Error),
    #[error("cannot listen on --authz-listen: {0}")]
    Authz(std::io::Error),
    #[error("cannot start a worker thread: {0}")]
    Thread(std::io::Error),
}

/// One worker: accepts connections and serves them until shutdown.
async fn worker(
    gw: Arc<Gateway>,
    settings: Settings,
    bodies: Arc<BodyBudget>,
    listener: std::net::TcpListener,
    authz: Option<std::net::TcpListener>,
    shutdown: watch::Receiver<bool>,
) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "cannot register the listener");
            return;
        }
    };
    let counts = DecisionCounts::new(&gw.metrics.requests, &gw.metrics.decision_seconds);
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
        trust_request_id: settings.trust_request_id,
        trusted_proxies: settings.trusted_proxies,
        bodies,
        body_read_timeout: settings.body_read_timeout,
        counts,
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
    // Forward-auth, on this worker's runtime beside the data plane.
    let authz = match authz.map(tokio::net::TcpListener::from_std) {
        None => None,
        Some(Ok(l)) => Some(tokio::task::spawn(crate::doors::forward_auth::serve(
            w.gw.clone(),
            l,
            builder.clone(),
            shutdown.clone(),
            settings.shutdown_grace,
        ))),
        Some(Err(e)) => {
            tracing::error!(error = %e, "cannot register the forward-auth listener");
            None
        }
    };
    crate::dataplane::listen::accept_until_shutdown(
        listener,
        shutdown,
        settings.shutdown_grace,
        "data plane",
        w.gw.metrics.connections.with_label_values(&[LISTENER]),
        move |stream, peer| {
            let w = w.clone();
            let heads = Heads::new(settings.max_headers, settings.max_header_bytes);
            let io = TokioIo::new(Sniff::new(stream, heads.clone()));
            // The client's address as text, once per connection.
            let peer_ip: Arc<str> = peer.ip().to_string().into();
            let service =
                service_fn(move |req| handle(w.clone(), peer_ip.clone(), heads.next(), req));
            builder.serve_connection(io, service)
        },
    )
    .await;
    if let Some(Err(e)) = match authz {
        Some(task) => Some(task.await),
        None => None,
    } {
        tracing::error!(error = %e, "the forward-auth listener's task failed");
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
    /// The request counter and decision-time histogram of each decision label.
    counts: DecisionCounts,
    /// Console's answer time by status class (1xx..5xx), looked up once per worker.
    upstream_seconds: [prometheus::Histogram; 5],
    /// [`Settings::trust_request_id`].
    trust_request_id: bool,
    /// [`Settings::trusted_proxies`].
    trusted_proxies: usize,
}

/// Per-request facts the answer needs besides the outcome.
struct Ctx {
    request_id: RequestId,
    /// The client's address as text (audit rows, log lines): the peer's, or with
    /// `--trusted-proxies` the one the trusted router saw.
    client_ip: Arc<str>,
    /// The peer's address as text: the hop the gateway appends to X-Forwarded-For.
    peer_ip: Arc<str>,
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

async fn handle(
    w: Arc<Worker>,
    peer_ip: Arc<str>,
    raw: Option<RawHead>,
    req: Request<Incoming>,
) -> Result<Response<GatewayBody>, Infallible> {
    let request_id = match w.trust_request_id {
        true => RequestId::trusted(req.headers()).unwrap_or_else(RequestId::next),
        false => RequestId::next(),
    };
    let client_ip = match forwarded_client(req.headers(), w.trusted_proxies) {
        Some(ip) => ip.to_string().into(),
        None => peer_ip.clone(),
    };
    let mut ctx = Ctx {
        request_id,
        client_ip,
        peer_ip,
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
            if let Some(call) = gw.rbac_api.then(|| rbac_api::Call::of(&target)).flatten() {
                let close = ctx.unread_body || ctx.close;
                let resp = rbac_api::respond(
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

/// The one place where an outcome becomes the data plane's answer: carried out
/// ([`carry_out`]), then sent to Console or answered here.
async fn respond(
    w: &Arc<Worker>,
    ctx: &mut Ctx,
    outcome: Outcome,
    req: Request<Incoming>,
    cookie: CookieRewrite,
) -> Response<GatewayBody> {
    let carried = carry_out(
        &*w.gw,
        &w.counts,
        outcome,
        ctx.request_id.as_str(),
        ctx.started,
    )
    .await;
    let decided = carried.decided_at;
    match carried.answer {
        Answer::Forward {
            forward,
            identity,
            shadow,
        } => forward_request(w, ctx, forward, identity, shadow, req, cookie, decided).await,
        Answer::Reply(reply) => {
            let (status, body, close) = match &reply {
                Reply::Refused => (400, "Bad Request\n", true),
                Reply::Login { .. } => (302, "Found\n", false),
                Reply::Denied => (403, "Forbidden\n", false),
                Reply::Gone => (404, "Not Found\n", false),
                Reply::Unavailable => (503, "Service Unavailable\n", false),
            };
            let mut resp = text_response(ctx, status, body, close);
            if let Reply::Login { location } = &reply {
                match HeaderValue::from_str(location) {
                    Ok(v) => {
                        resp.headers_mut().insert(header::LOCATION, v);
                    }
                    // Built from a checked, percent-encoded target: cannot happen.
                    Err(e) => tracing::error!(error = %e, "login location is not a header value"),
                }
            }
            resp
        }
    }
}

#[cfg(test)]
mod tests {
    use super::forwarded_client;

    fn xff(lines: &[&str]) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        for l in lines {
            h.append("x-forwarded-for", http::HeaderValue::from_str(l).unwrap());
        }
        h
    }

    #[test]
    fn the_client_is_the_address_the_outermost_trusted_proxy_appended() {
        // The client forged the first two; the router appended the last.
        let h = xff(&["6.6.6.6, 7.7.7.7", "203.0.113.9"]);
        assert_eq!(forwarded_client(&h, 0), None, "no trust: the peer");
        assert_eq!(forwarded_client(&h, 1).unwrap().to_string(), "203.0.113.9");
        assert_eq!(forwarded_client(&h, 2).unwrap().to_string(), "7.7.7.7");
        let h = xff(&["  2001:db8::1 "]);
        assert_eq!(forwarded_client(&h, 1).unwrap().to_string(), "2001:db8::1");
        // Too few hops, or not an address: the peer.
        assert_eq!(forwarded_client(&xff(&["203.0.113.9"]), 2), None);
        assert_eq!(forwarded_client(&xff(&[]), 1), None);
        assert_eq!(forwarded_client(&xff(&["1.2.3.4, unknown"]), 1), None);
        assert_eq!(forwarded_client(&xff(&["1.2.3.4,"]), 1), None);
    }
}
