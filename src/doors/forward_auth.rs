//! Forward-auth for edge proxies: a separate listener (`--authz-listen`) whose `/authz` answers
//! an edge proxy's question "may this request pass?" from the same [`decide`] as the data plane.
//!
//! The edge proxy reports the original request in headers: `X-Forwarded-Method` +
//! `X-Forwarded-Uri` (Traefik `forwardAuth`, Caddy `forward_auth`) or `X-Original-Method` +
//! `X-Original-URI` (the nginx `auth_request` convention), with the client's `Cookie`. The
//! reported target passes the proxy's own checks ([`target::check_method`],
//! [`target::parse_target`]); a header missing or given twice, or both pairs present and
//! disagreeing (a client can send either pair itself: the edge sets only one), is a 400: never
//! a guess.
//!
//! | outcome | answer |
//! |---|---|
//! | allowed | 200 + `X-Rbac-Admin-Id`, `X-Rbac-Roles` |
//! | public, machine, off, kill switch | 200, no identity headers |
//! | shadow: would deny | 200 + identity headers + `X-Rbac-Shadow-Decision: deny`, after the `access_denied_shadow` row |
//! | no valid session | 401 + `Location` of the login redirect |
//! | denied (no route too) | 403, after the durable audit row (not durable: 503) |
//! | gone | 404 (nginx turns any status but 2xx/401/403 into 500: its configuration maps it back) |
//! | refused target, bad target headers | 400 |
//! | unavailable | 503 |
//!
//! Every answer carries `X-Rbac-Decision` (the outcome's label), which lets nginx map its 500
//! back to the gateway's status. Drift rows are not written in this mode: Console's answer
//! never passes through the gateway.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::sync::watch;

use crate::dataplane::header_timer::HeaderTimer;
use crate::dataplane::workers::Http1Settings;
use crate::doors::trace::Trace;
use crate::gateway::counts::DecisionCounts;
use crate::gateway::state::Gateway;
use crate::policy::answer::{carry_out, Answer, Asked, DecidedOn, Decision, Reply};
use crate::policy::cookie::session_token;
use crate::policy::outcome::{decide, Facts, Outcome};
use crate::policy::target::{self, Refusal, Target};

pub const PATH: &str = "/authz";

const X_FORWARDED_METHOD: HeaderName = HeaderName::from_static("x-forwarded-method");
const X_FORWARDED_URI: HeaderName = HeaderName::from_static("x-forwarded-uri");
const X_ORIGINAL_METHOD: HeaderName = HeaderName::from_static("x-original-method");
const X_ORIGINAL_URI: HeaderName = HeaderName::from_static("x-original-uri");
use crate::policy::headers::{
    X_RBAC_ADMIN_ID, X_RBAC_DECISION, X_RBAC_ROLES, X_RBAC_SHADOW, X_REQUEST_ID,
};

/// Why the reported target cannot be read (all answered 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetHeaderError {
    #[error("no X-Forwarded-Method + X-Forwarded-Uri nor X-Original-Method + X-Original-URI")]
    Missing,
    #[error("{0} without {1}")]
    Incomplete(&'static str, &'static str),
    #[error("{0} given more than once")]
    Duplicated(&'static str),
    #[error("X-Forwarded-* and X-Original-* report different requests")]
    Disagree,
    #[error("the reported target is refused: {0}")]
    Refused(Refusal),
}

/// One header's single value, as bytes.
fn one<'a>(
    h: &'a HeaderMap,
    name: &HeaderName,
    label: &'static str,
) -> Result<Option<&'a [u8]>, TargetHeaderError> {
    let mut all = h.get_all(name).iter();
    let first = all.next();
    if all.next().is_some() {
        return Err(TargetHeaderError::Duplicated(label));
    }
    Ok(first.map(|v| v.as_bytes()))
}

/// A reported (method, target), as bytes.
type Reported<'a> = (&'a [u8], &'a [u8]);

fn pair<'a>(
    h: &'a HeaderMap,
    method: (&HeaderName, &'static str),
    uri: (&HeaderName, &'static str),
) -> Result<Option<Reported<'a>>, TargetHeaderError> {
    match (one(h, method.0, method.1)?, one(h, uri.0, uri.1)?) {
        (Some(m), Some(u)) => Ok(Some((m, u))),
        (None, None) => Ok(None),
        (Some(_), None) => Err(TargetHeaderError::Incomplete(method.1, uri.1)),
        (None, Some(_)) => Err(TargetHeaderError::Incomplete(uri.1, method.1)),
    }
}

/// The method and target the edge proxy reports, checked as the data plane checks its own.
///
/// The edge passes the client's other headers on to Console as they are (Traefik forwards a
/// `SCRIPT_NAME` header, which gunicorn, trusting its local edge, turns into a prefix cut from
/// the path Werkzeug routes). So the names the data plane refuses are refused here too: a name
/// with `_`, and those that rewrite the route or the method. `X-Original-URI` is the edge's own
/// (the nginx convention) and is read below.
pub fn reported(h: &HeaderMap) -> Result<(String, Target), TargetHeaderError> {
    for name in h.keys() {
        if name != X_ORIGINAL_URI {
            target::check_header_name(name.as_str()).map_err(TargetHeaderError::Refused)?;
        }
    }
    let fwd = pair(
        h,
        (&X_FORWARDED_METHOD, "X-Forwarded-Method"),
        (&X_FORWARDED_URI, "X-Forwarded-Uri"),
    )?;
    let orig = pair(
        h,
        (&X_ORIGINAL_METHOD, "X-Original-Method"),
        (&X_ORIGINAL_URI, "X-Original-URI"),
    )?;
    let (method, uri) = match (fwd, orig) {
        (Some(a), Some(b)) if a != b => return Err(TargetHeaderError::Disagree),
        (Some(a), _) | (None, Some(a)) => a,
        (None, None) => return Err(TargetHeaderError::Missing),
    };
    target::check_method(method).map_err(TargetHeaderError::Refused)?;
    if method == b"CONNECT" {
        return Err(TargetHeaderError::Refused(Refusal::NotOriginForm));
    }
    let t = target::parse_target(uri).map_err(TargetHeaderError::Refused)?;
    let method = String::from_utf8(method.to_vec())
        .map_err(|_| TargetHeaderError::Refused(Refusal::MalformedRequestLine))?;
    Ok((method, t))
}

/// This listener's `rbac_gateway_connections_accepted_total{listener}` label.
pub const LISTENER: &str = "forward-auth";

/// Forward-auth on `--authz-listen`: served by every data-plane worker on a SO_REUSEPORT socket
/// of its own ([`crate::dataplane::workers`]; no thread of its own, no cross-thread wake-up),
/// with the data plane's HTTP/1 settings.
pub struct ForwardAuthDoor {
    gw: Arc<Gateway>,
    http: Http1Settings,
}

impl ForwardAuthDoor {
    pub fn new(gw: Arc<Gateway>, http: Http1Settings) -> ForwardAuthDoor {
        ForwardAuthDoor { gw, http }
    }
}

impl crate::dataplane::workers::Door for ForwardAuthDoor {
    fn flag(&self) -> &'static str {
        "--authz-listen"
    }

    fn serve(
        self: Arc<Self>,
        listener: tokio::net::TcpListener,
        shutdown: watch::Receiver<bool>,
    ) -> Pin<Box<dyn Future<Output = ()>>> {
        Box::pin(serve(self, listener, shutdown))
    }
}

/// One worker's share of forward-auth: serves `listener` until `shutdown` turns true.
async fn serve(
    door: Arc<ForwardAuthDoor>,
    listener: tokio::net::TcpListener,
    shutdown: watch::Receiver<bool>,
) {
    let builder = door.http.builder();
    let accepted = door.gw.metrics.connections.with_label_values(&[LISTENER]);
    let answering = Arc::new(Share::new(door.gw.clone()));
    crate::dataplane::listen::accept_until_shutdown(
        listener,
        shutdown,
        door.http.shutdown_grace,
        "forward-auth",
        accepted,
        move |stream, peer| {
            let answering = answering.clone();
            let service = service_fn(move |req| {
                let answering = answering.clone();
                async move { Ok::<_, Infallible>(handle(&answering, peer, req).await) }
            });
            HeaderTimer::for_connection(&builder).serve_connection(TokioIo::new(stream), service)
        },
    )
    .await;
}

/// Forward-auth's share of the gateway: its counters, looked up once.
struct Share {
    gw: Arc<Gateway>,
    counts: DecisionCounts,
}

impl Share {
    fn new(gw: Arc<Gateway>) -> Share {
        let counts = DecisionCounts::new(&gw.metrics.authz_requests, &gw.metrics.decision_seconds);
        Share { gw, counts }
    }
}

/// An answer with no body (`Content-Length: 0`) on every status: nginx keeps its
/// `auth_request` connection only when the answer has none, and Caddy and Traefik read only
/// the status and headers. The edge renders its own error pages.
/// `decision`: None for a request that was not a question (a path other than `/authz`).
fn answer(
    status: u16,
    decision: Option<Decision>,
    request_id: HeaderValue,
) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = StatusCode::from_u16(status).expect("a valid status");
    let h = resp.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Some(d) = decision {
        h.insert(X_RBAC_DECISION, HeaderValue::from_static(d.as_str()));
    }
    h.insert(X_REQUEST_ID, request_id);
    resp
}

/// The client's address as the edge proxy reports it (the last `X-Forwarded-For` hop, the one
/// the edge appended), else the edge's own address. Only ever written into audit rows.
fn client_ip(h: &HeaderMap, peer: SocketAddr) -> String {
    h.get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .rfind(|s| !s.is_empty())
        .map_or_else(|| peer.ip().to_string(), str::to_string)
}

/// The request the edge asks about (method, target, session token), or why it is refused: a
/// CONNECT to the authorizer, target headers missing, repeated or disagreeing, a target the
/// proxy would refuse, or `Cookie` headers Console could read differently from the gateway (the
/// edge forwards the client's own to Console), exactly as in the proxy.
fn question<'r>(
    req: &'r Request<Incoming>,
    cookie: &str,
) -> Result<(String, Target, Option<&'r str>), Refusal> {
    if req.method() == Method::CONNECT {
        return Err(Refusal::NotOriginForm);
    }
    let (method, t) = reported(req.headers()).map_err(|e| match e {
        TargetHeaderError::Refused(r) => r,
        other => Refusal::TargetHeaders(other.to_string()),
    })?;
    let token = session_token(req.headers(), cookie)?;
    Ok((method, t, token))
}

/// One question, traced or not: one handler, its span's steps calls of [`Trace`], as the
/// proxy's are (the decision's lookups are the span's children).
async fn handle(door: &Share, peer: SocketAddr, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let mut trace = Trace::start(req.method().as_str(), req.uri().path(), req.headers());
    let started = Instant::now();
    let gw = &*door.gw;
    let request_id = trace.request_id(None);
    if req.uri().path() != PATH {
        trace.end(404);
        return answer(404, None, request_id.header());
    }
    let headers = req.headers();
    let ip = client_ip(headers, peer);
    let mut decided = None;
    let user_agent = headers
        .get_all(header::USER_AGENT)
        .iter()
        .fold(None, |so_far, v| {
            Some(target::join_user_agent(so_far, v.as_bytes()))
        });
    let outcome = match question(&req, &gw.cookie) {
        // Logged and counted by `carry_out`, as the proxy's refusals are.
        Err(refusal) => Outcome::Refuse(refusal),
        Ok((method, t, token)) => {
            let mapping = gw.mapping.load();
            let facts = Facts {
                method: &method,
                target: &t,
                token,
                client_ip: Some(&ip),
                user_agent: user_agent.as_deref(),
                request_id: request_id.as_str(),
                at: started,
            };
            let outcome = {
                let deciding = std::pin::pin!(decide(gw, &mapping, gw.switches(), &facts));
                trace.around(deciding).await
            };
            trace.target(&method, t.path());
            trace.outcome(&method, &outcome, &mapping.version);
            decided = Some((method, t, mapping));
            outcome
        }
    };
    trace.refusal(&outcome);
    let asked = Asked {
        request_id: &request_id,
        trace_id: trace.trace_id(),
        client_ip: &ip,
        started,
        decided: decided.as_ref().map(|(method, t, mapping)| DecidedOn {
            method,
            path: t.path(),
            mapping_version: &mapping.version,
        }),
    };
    let carried = carry_out(gw, &door.counts, outcome, &asked).await;
    trace.decision(carried.decision.as_str());
    let done = carried.answer;
    let mut resp = answer(
        done.authz_status(),
        Some(carried.decision),
        carried.request_id,
    );
    // The header values as `carry_out` made them.
    let h = resp.headers_mut();
    match done {
        Answer::Forward {
            identity, shadow, ..
        } => {
            if let Some(id) = identity {
                h.insert(X_RBAC_ADMIN_ID, id.admin_id().clone());
                h.insert(X_RBAC_ROLES, id.roles().clone());
            }
            if shadow {
                h.insert(X_RBAC_SHADOW, HeaderValue::from_static("deny"));
            }
        }
        Answer::Reply(Reply::Login { location }) => {
            h.insert(header::LOCATION, location);
        }
        Answer::Reply(_) => {}
    }
    trace.end(resp.status().as_u16());
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn target_headers_are_read_exactly_or_refused() {
        let ok = |pairs: &[(&str, &str)]| {
            reported(&headers(pairs)).map(|(m, t)| (m, t.original().to_string()))
        };
        let fwd = [("x-forwarded-method", "GET"), ("x-forwarded-uri", "/a?b=1")];
        let orig = [("x-original-method", "GET"), ("x-original-uri", "/a?b=1")];
        assert_eq!(ok(&fwd), Ok(("GET".into(), "/a?b=1".into())));
        assert_eq!(ok(&orig), Ok(("GET".into(), "/a?b=1".into())));
        assert_eq!(
            ok(&[fwd[0], fwd[1], orig[0], orig[1]]),
            Ok(("GET".into(), "/a?b=1".into()))
        );
        type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, TargetHeaderError);
        #[rustfmt::skip]
        let table: Vec<Case> = vec![
            ("nothing", vec![], TargetHeaderError::Missing),
            ("method only", vec![fwd[0]], TargetHeaderError::Incomplete("X-Forwarded-Method", "X-Forwarded-Uri")),
            ("uri only", vec![orig[1]], TargetHeaderError::Incomplete("X-Original-URI", "X-Original-Method")),
            ("uri twice", vec![fwd[0], fwd[1], ("x-forwarded-uri", "/b")], TargetHeaderError::Duplicated("X-Forwarded-Uri")),
            ("method twice", vec![orig[0], orig[1], ("x-original-method", "GET")], TargetHeaderError::Duplicated("X-Original-Method")),
            ("pairs disagree", vec![fwd[0], fwd[1], orig[0], ("x-original-uri", "/public")], TargetHeaderError::Disagree),
            ("pair plus half", vec![fwd[0], fwd[1], ("x-original-uri", "/a?b=1")], TargetHeaderError::Incomplete("X-Original-URI", "X-Original-Method")),
            ("lower-case method", vec![("x-forwarded-method", "get"), fwd[1]], TargetHeaderError::Refused(Refusal::MethodNotUppercase)),
            ("connect", vec![("x-forwarded-method", "CONNECT"), fwd[1]], TargetHeaderError::Refused(Refusal::NotOriginForm)),
            ("encoded slash", vec![fwd[0], ("x-forwarded-uri", "/a%2Fb")], TargetHeaderError::Refused(Refusal::EncodedSlash)),
            ("dot segment", vec![fwd[0], ("x-forwarded-uri", "/a/../b")], TargetHeaderError::Refused(Refusal::DotSegment)),
            ("script name", vec![fwd[0], fwd[1], ("script_name", "/static")], TargetHeaderError::Refused(Refusal::UnderscoreHeader("script_name".into()))),
            ("method override", vec![fwd[0], fwd[1], ("x-http-method-override", "DELETE")], TargetHeaderError::Refused(Refusal::RewriteHeader("x-http-method-override".into()))),
            ("prefix", vec![orig[0], orig[1], ("x-forwarded-prefix", "/static")], TargetHeaderError::Refused(Refusal::RewriteHeader("x-forwarded-prefix".into()))),
        ];
        for (what, pairs, want) in table {
            assert_eq!(reported(&headers(&pairs)).map(|_| ()), Err(want), "{what}");
        }
        assert!(
            matches!(
                reported(&headers(&[fwd[0], ("x-forwarded-uri", "http://evil/a")])),
                Err(TargetHeaderError::Refused(_))
            ),
            "absolute form"
        );
    }
}
