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
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::watch;

use crate::outcome::{decide, Facts, Outcome, Via};
use crate::proxy::session_token;
use crate::state::Gateway;
use crate::target::{self, Refusal, Target};

pub const PATH: &str = "/authz";

const X_FORWARDED_METHOD: HeaderName = HeaderName::from_static("x-forwarded-method");
const X_FORWARDED_URI: HeaderName = HeaderName::from_static("x-forwarded-uri");
const X_ORIGINAL_METHOD: HeaderName = HeaderName::from_static("x-original-method");
const X_ORIGINAL_URI: HeaderName = HeaderName::from_static("x-original-uri");
const X_RBAC_DECISION: HeaderName = HeaderName::from_static("x-rbac-decision");
const X_RBAC_ADMIN_ID: HeaderName = HeaderName::from_static("x-rbac-admin-id");
const X_RBAC_ROLES: HeaderName = HeaderName::from_static("x-rbac-roles");
const X_RBAC_SHADOW: HeaderName = HeaderName::from_static("x-rbac-shadow-decision");
const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

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

impl TargetHeaderError {
    fn label(&self) -> &'static str {
        match self {
            TargetHeaderError::Refused(r) => r.as_str(),
            _ => "target_headers",
        }
    }
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

/// Binds the listener and serves it on its own runtime thread until `shutdown` turns true.
pub fn start(
    gw: Arc<Gateway>,
    addr: SocketAddr,
    threads: usize,
    shutdown: watch::Receiver<bool>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let listener = crate::proxy::retry_in_use(|| std::net::TcpListener::bind(addr))?;
    listener.set_nonblocking(true)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .thread_name("rbac-gateway-authz")
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("rbac-gateway-authz".into())
        .spawn(move || rt.block_on(serve(gw, listener, shutdown)))
}

async fn serve(gw: Arc<Gateway>, listener: std::net::TcpListener, shutdown: watch::Receiver<bool>) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "cannot register the forward-auth listener");
            return;
        }
    };
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(Some(Duration::from_secs(10)))
        .keep_alive(true);
    crate::proxy::accept_until_shutdown(
        listener,
        shutdown,
        Duration::from_secs(2),
        "forward-auth",
        move |stream, peer| {
            let gw = gw.clone();
            let service = service_fn(move |req| {
                let gw = gw.clone();
                async move { Ok::<_, Infallible>(handle(&gw, peer, req).await) }
            });
            builder.serve_connection(TokioIo::new(stream), service)
        },
    )
    .await;
}

fn answer(status: u16, decision: &str, request_id: &str) -> Response<Full<Bytes>> {
    let body = match status {
        200 => "OK\n",
        400 => "Bad Request\n",
        401 => "Unauthorized\n",
        403 => "Forbidden\n",
        404 => "Not Found\n",
        _ => "Service Unavailable\n",
    };
    let mut resp = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *resp.status_mut() = StatusCode::from_u16(status).expect("a valid status");
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Ok(v) = HeaderValue::from_str(decision) {
        h.insert(X_RBAC_DECISION, v);
    }
    if let Ok(v) = HeaderValue::from_str(request_id) {
        h.insert(X_REQUEST_ID, v);
    }
    resp
}

fn count(gw: &Gateway, started: Instant, label: &str) {
    gw.metrics.authz_requests.with_label_values(&[label]).inc();
    gw.metrics
        .decision_seconds
        .with_label_values(&[label])
        .observe(started.elapsed().as_secs_f64());
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

async fn handle(gw: &Gateway, peer: SocketAddr, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let started = Instant::now();
    let request_id = uuid::Uuid::new_v4().simple().to_string();
    if req.uri().path() != PATH {
        return answer(404, "not_found", &request_id);
    }
    if req.method() == Method::CONNECT {
        return answer(400, "refused", &request_id);
    }
    let headers = req.headers();
    let (method, t) = match reported(headers) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(request_id = %request_id, reason = %e, edge = %peer, "forward-auth: refused");
            gw.metrics.refusals.with_label_values(&[e.label()]).inc();
            count(gw, started, "refused");
            return answer(400, "refused", &request_id);
        }
    };
    // The edge forwards the client's own Cookie header to Console: one Console could read
    // differently from the gateway is refused, exactly as in the proxy.
    let token = match session_token(headers, &gw.cookie) {
        Ok(t) => t,
        Err(r) => {
            tracing::warn!(request_id = %request_id, reason = %r, edge = %peer, "forward-auth: refused");
            gw.metrics.refusals.with_label_values(&[r.as_str()]).inc();
            count(gw, started, "refused");
            return answer(400, "refused", &request_id);
        }
    };
    let mapping = gw.mapping.load();
    let ip = client_ip(headers, peer);
    let facts = Facts {
        method: &method,
        target: &t,
        token,
        client_ip: Some(&ip),
        user_agent: headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok()),
        request_id: &request_id,
        at: started,
    };
    let outcome = decide(gw, &mapping, gw.switches(), &facts).await;
    let label = outcome.label();
    let (status, principal, shadow) = match outcome {
        Outcome::Refuse(_) => (400, None, false),
        Outcome::Forward(f) => (200, f.principal, f.via == Via::ShadowDenied),
        Outcome::ShadowDeny { forward, row } => {
            gw.metrics
                .shadow_denials
                .with_label_values(&[row.route.as_deref().unwrap_or("-")])
                .inc();
            if let Err(e) = gw.audit.record(row).await {
                tracing::error!(request_id = %request_id, error = %e, "cannot record a shadow denial");
            }
            (200, forward.principal, true)
        }
        Outcome::Redirect { location } => {
            count(gw, started, label);
            let mut resp = answer(401, label, &request_id);
            match HeaderValue::from_str(&location) {
                Ok(v) => {
                    resp.headers_mut().insert(header::LOCATION, v);
                }
                // Built from a checked, percent-encoded target: cannot happen.
                Err(e) => tracing::error!(error = %e, "login location is not a header value"),
            }
            return resp;
        }
        Outcome::Deny { row } => {
            if let Err(e) = gw.audit.record(row.clone()).await {
                tracing::error!(request_id = %request_id, error = %e, "cannot record the denial: answering 503");
                count(gw, started, "unavailable");
                return answer(503, "unavailable", &request_id);
            }
            let rule = row.route.as_deref().unwrap_or("-");
            gw.metrics
                .denials_by_route
                .with_label_values(&[rule, row.reason.as_str()])
                .inc();
            tracing::info!(
                request_id = %request_id, admin_id = row.admin_id.as_deref().unwrap_or("-"), method = %row.method,
                path = %row.path, rule = %rule, reason = %row.reason, mapping_version = row.mapping_version.as_deref().unwrap_or("-"),
                "forward-auth: denied"
            );
            (403, None, false)
        }
        Outcome::Gone => (404, None, false),
        Outcome::Unavailable(u) => {
            tracing::warn!(request_id = %request_id, cause = u.as_str(), "forward-auth: answering 503");
            (503, None, false)
        }
    };
    count(gw, started, label);
    let mut resp = answer(status, label, &request_id);
    if let Some(p) = principal {
        match (
            HeaderValue::from_str(&p.admin_id),
            HeaderValue::from_str(p.roles_header()),
        ) {
            (Ok(id), Ok(roles)) => {
                let h = resp.headers_mut();
                h.insert(X_RBAC_ADMIN_ID, id);
                h.insert(X_RBAC_ROLES, roles);
            }
            _ => {
                tracing::error!(request_id = %request_id, admin_id = %p.admin_id, "admin id or role names are not valid header values: answering 503");
                count(gw, started, "unavailable");
                return answer(503, "unavailable", &request_id);
            }
        }
    }
    if shadow {
        resp.headers_mut()
            .insert(X_RBAC_SHADOW, HeaderValue::from_static("deny"));
    }
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
        let ok = |pairs: &[(&str, &str)]| reported(&headers(pairs)).map(|(m, t)| (m, t.original));
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
