//! The data plane, on hyper (HTTP/1.1 both ways). Each worker thread runs one current-thread
//! runtime with its own SO_REUSEPORT listener and its own upstream pool ([`crate::dataplane::upstream`]).
//!
//! For each request: the checks of [`crate::policy::target`] on what hyper parsed, the session cookie,
//! then [`crate::policy::outcome::decide`], and the handler's end turns the outcome into the answer: the one
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
//! Here: the workers and `handle`. Beside it: `checks.rs` (the refusals before a
//! request is decided, and the session cookie), `body.rs` (the shared body budget and reading a
//! body whole), `forward.rs` (the bytes Console receives, and its answer).

mod body;
mod checks;
mod forward;

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper::body::{Body, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::sync::watch;

use crate::dataplane::header_timer::HeaderTimer;
use crate::dataplane::sniff::{Heads, RawHead, Sniff};
use crate::dataplane::upstream::{GatewayBody, Pool};
use crate::dataplane::workers::{Door, Http1Settings};
use crate::doors::rbac_api;
use crate::doors::trace::Trace;
use crate::gateway::counts::DecisionCounts;
use crate::gateway::state::Gateway;
use crate::policy::answer::{carry_out, Answer, Asked, DecidedOn, Reply, RequestId};
use crate::policy::headers::X_REQUEST_ID;
use crate::policy::outcome::{decide, Facts, Outcome};
use crate::policy::reader;

pub use body::BodyBudget;
use checks::{check_request, read_cookie, CookieRewrite};
use forward::Forwarding;

/// The data plane's `rbac_gateway_connections_accepted_total{listener}` label.
pub const LISTENER: &str = "data plane";

/// The data plane's settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// What its connections are held to, as forward-auth's are.
    pub http: Http1Settings,
    /// The longest pause between two parts of a request body (a client that stops sending its
    /// body cannot hold the connection): over it, 408.
    pub body_read_timeout: Duration,
    /// Largest request body, in bytes: over it, 413.
    pub max_body_bytes: usize,
    /// Most request-body bytes held by all workers together while bodies are read whole: a
    /// request whose body would go over it gets 503.
    pub max_buffered_body_bytes: usize,
    /// The router in front sets `X-Request-Id` (`--trust-request-id`): a valid one is the
    /// request's id ([`RequestId::trusted`]).
    pub trust_request_id: bool,
    /// Proxies in front that each append the address they saw to `X-Forwarded-For`
    /// (`--trusted-proxies`): the client's address is the one the outermost of them appended
    /// ([`forwarded_client`]). 0: the peer's address.
    pub trusted_proxies: usize,
}

/// The data plane: Console's traffic on `--listen`, decided and forwarded or answered. Served
/// by every worker ([`crate::dataplane::workers`]); the body budget is shared by all of them.
pub struct ProxyDoor {
    gw: Arc<Gateway>,
    settings: Settings,
    bodies: Arc<BodyBudget>,
}

impl ProxyDoor {
    pub fn new(gw: Arc<Gateway>, settings: Settings) -> ProxyDoor {
        let bodies = BodyBudget::new(settings.max_buffered_body_bytes);
        ProxyDoor {
            gw,
            settings,
            bodies,
        }
    }
}

impl Door for ProxyDoor {
    fn flag(&self) -> &'static str {
        "--listen"
    }

    fn serve(
        self: Arc<Self>,
        listener: tokio::net::TcpListener,
        shutdown: watch::Receiver<bool>,
    ) -> Pin<Box<dyn Future<Output = ()>>> {
        Box::pin(worker(self, listener, shutdown))
    }
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

/// One worker's share of the data plane: accepts connections on its socket and serves them
/// until shutdown.
async fn worker(
    door: Arc<ProxyDoor>,
    listener: tokio::net::TcpListener,
    shutdown: watch::Receiver<bool>,
) {
    let (gw, settings) = (door.gw.clone(), &door.settings);
    let counts = DecisionCounts::new(&gw.metrics.requests, &gw.metrics.decision_seconds)
        .with_console(&gw.metrics.upstream_seconds);
    let w = Arc::new(Worker {
        pool: Pool::new(gw.upstream, gw.connect_timeout, gw.read_timeout),
        gw,
        max_body_bytes: settings.max_body_bytes,
        trust_request_id: settings.trust_request_id,
        trusted_proxies: settings.trusted_proxies,
        bodies: door.bodies.clone(),
        body_read_timeout: settings.body_read_timeout,
        counts,
    });
    let builder = settings.http.builder();
    let (max_headers, max_header_bytes) =
        (settings.http.max_headers, settings.http.max_header_bytes);
    crate::dataplane::listen::accept_until_shutdown(
        listener,
        shutdown,
        settings.http.shutdown_grace,
        "data plane",
        w.gw.metrics.connections.with_label_values(&[LISTENER]),
        move |stream, peer| {
            let w = w.clone();
            let heads = Heads::new(max_headers, max_header_bytes);
            let io = TokioIo::new(Sniff::new(stream, heads.clone()));
            // The client's address as text, once per connection.
            let peer_ip: Arc<str> = peer.ip().to_string().into();
            let service =
                service_fn(move |req| handle(w.clone(), peer_ip.clone(), heads.next(), req));
            HeaderTimer::for_connection(&builder).serve_connection(io, service)
        },
    )
    .await;
}

/// A worker's share of the gateway.
struct Worker {
    gw: Arc<Gateway>,
    pool: Arc<Pool>,
    max_body_bytes: usize,
    /// Shared by every worker of the process.
    bodies: Arc<BodyBudget>,
    body_read_timeout: Duration,
    /// The request counter and decision-time histogram of each decision label.
    counts: DecisionCounts,
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
    /// The request's span, when it is traced (one word).
    trace: Trace,
}

/// The gateway's own answer: `status` with its plain-text `body` (none to a HEAD request), from
/// the one status table ([`Reply::status`], [`crate::policy::answer::BodyRefusal::status`]).
fn text_response(
    ctx: &Ctx,
    request_id: HeaderValue,
    (status, body): (u16, &'static str),
    close: bool,
) -> Response<GatewayBody> {
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
    h.insert(X_REQUEST_ID, request_id);
    if close || ctx.unread_body || ctx.close {
        // An unread request body must not be taken for the next request.
        h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

/// One request, traced or not: one handler, its span's steps calls of [`Trace`]. The lookups
/// behind the decision (and the reader API) are the span's children ([`Trace::around`]). Only
/// those are polled under the span: polling the whole handler from a wrapper made hyper's
/// dispatcher copy the handler's arguments and answer (docs/performance-log.md).
async fn handle(
    w: Arc<Worker>,
    peer_ip: Arc<str>,
    raw: Option<RawHead>,
    req: Request<Incoming>,
) -> Result<Response<GatewayBody>, Infallible> {
    let trace = Trace::start(req.method().as_str(), req.uri().path(), req.headers());
    let request_id = trace.request_id(match w.trust_request_id {
        true => RequestId::trusted(req.headers()),
        false => None,
    });
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
        trace,
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
    // The target and the mapping decided by, for the aftermath's lines.
    let mut decided = None;
    let outcome = match checked {
        // Logged and counted by `carry_out`, like every outcome's aftermath.
        Err(refusal) => Outcome::Refuse(refusal),
        Ok((target, user_agent, (token, rewrite))) => {
            cookie = rewrite;
            // The reader API is answered here, never decided as a route nor forwarded.
            if let Some(call) = gw.rbac_api.then(|| reader::Call::of(&target)).flatten() {
                let close = ctx.unread_body || ctx.close;
                ctx.trace.reader_api(req.method().as_str(), target.path());
                // Boxed, as the database reads behind it: inline, its future would be in every
                // request handler, whose size hyper keeps per client connection (issue 51).
                let resp = {
                    let mut resp = Box::pin(rbac_api::respond(
                        gw,
                        &call,
                        req.method(),
                        token,
                        &ctx.request_id,
                        close,
                        &ctx.trace,
                    ));
                    ctx.trace.around(resp.as_mut()).await
                };
                ctx.trace.end(resp.status().as_u16());
                return Ok(resp);
            }
            let mapping = gw.mapping.load();
            let facts = Facts {
                method: req.method().as_str(),
                target: &target,
                token,
                client_ip: Some(&ctx.client_ip),
                user_agent: user_agent.as_deref(),
                request_id: ctx.request_id.as_str(),
                at: ctx.started,
            };
            let outcome = {
                let deciding = std::pin::pin!(decide(&**gw, &mapping, gw.switches(), &facts));
                ctx.trace.around(deciding).await
            };
            ctx.trace
                .outcome(req.method().as_str(), &outcome, &mapping.version);
            decided = Some((req.method().clone(), target, mapping));
            outcome
        }
    };
    let on = decided.as_ref().map(|(method, target, mapping)| DecidedOn {
        method: method.as_str(),
        path: target.path(),
        mapping_version: &mapping.version,
    });
    // The one place where an outcome becomes the data plane's answer: carried out
    // (`carry_out`), then sent to Console or answered here, its header values written as
    // `carry_out` made them. In the handler itself, not an async fn of its own: each async call
    // moved the request and its own future once more (docs/performance-log.md).
    ctx.trace.refusal(&outcome);
    let asked = Asked {
        request_id: &ctx.request_id,
        trace_id: ctx.trace.trace_id(),
        client_ip: &ctx.client_ip,
        started: ctx.started,
        decided: on,
    };
    let carried = carry_out(&**gw, &w.counts, outcome, &asked).await;
    ctx.trace.decision(carried.decision.as_str());
    let resp = match carried.answer {
        Answer::Forward {
            forward,
            identity,
            shadow,
        } => {
            let f = Forwarding {
                forward,
                identity,
                shadow,
                decided_at: carried.decided_at,
                request_id: carried.request_id,
            };
            let (parts, body) = req.into_parts();
            // The body is read completely before Console sees the request (like nginx's
            // request buffering): a body that turns out malformed or cut short never reaches
            // Console. No body to wait for: nothing awaited between the decision and sending.
            let body_was_done = body.is_end_stream();
            // Held until this request is over: the body is in memory until Console has it.
            let read = if body_was_done {
                Ok((bytes::Bytes::new(), body::Held::new(&w.bodies)))
            } else {
                body::read_body(&w, body).await
            };
            match read {
                Err(e) => {
                    ctx.unread_body = true;
                    let failed = e.not_forwarded(&w);
                    forward::not_forwarded(&w, &ctx, f.request_id, failed)
                }
                Ok((bytes, _held)) => {
                    ctx.unread_body = false;
                    let out =
                        forward::outgoing(&w, &ctx, &f, &parts, &cookie, &bytes, body_was_done);
                    // Pinned here, in this future, not moved into one of its own (a copy of it).
                    let exchange = std::pin::pin!(w.pool.send(
                        &out.request,
                        parts.method == Method::HEAD,
                        out.deadline
                    ));
                    let result = exchange.await;
                    forward::exchanged(&w, &ctx, f, result, out.sent, out.span)
                }
            }
        }
        Answer::Reply(reply) => {
            // A refused request's connection is not read again.
            let close = reply == Reply::Refused;
            let mut resp = text_response(&ctx, carried.request_id, reply.status(), close);
            if let Reply::Login { location } = reply {
                resp.headers_mut().insert(header::LOCATION, location);
            }
            resp
        }
    };
    ctx.trace.end(resp.status().as_u16());
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::forwarded_client;

    /// The size of the future an async fn returns, from the fn itself (nothing is called).
    fn future_size<F, A, B, C, D, Fut>(_: F) -> usize
    where
        F: FnOnce(A, B, C, D) -> Fut,
    {
        std::mem::size_of::<Fut>()
    }

    /// The most bytes of the request handler's future in the test build (unoptimised).
    const HANDLER_FUTURE_MAX: usize = 4096;

    /// hyper allocates the request handler's future once per client connection, at its size,
    /// and keeps it while the connection is open: the database's and the caches' futures are
    /// boxed where they are awaited, so they are not part of it (issue 51: 8,424 bytes in the
    /// test build before, 3,640 after; 8,432 and 3,600 in the release build).
    #[test]
    fn the_request_handler_future_is_small() {
        let size = future_size(super::handle);
        assert!(
            size <= HANDLER_FUTURE_MAX,
            "handle's future is {size} bytes"
        );
    }

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
