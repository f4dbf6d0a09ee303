//! What Console receives: the request written in one pass (the target as received, the
//! client's headers filtered, the gateway's identity headers added, the body read whole), sent
//! on a pooled connection, and Console's answer handed back.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request, Response, Version};
use hyper::body::{Body, Incoming};

use crate::dataplane::upstream::{GatewayBody, UpstreamError};
use crate::policy::answer::{
    carry_out_shadow, BodyRefusal, Identity, Records, BAD_GATEWAY, GATEWAY_TIMEOUT,
};
use crate::policy::headers::{X_RBAC_ADMIN_ID, X_RBAC_ROLES, X_RBAC_SHADOW, X_REQUEST_ID};
use crate::policy::outcome::Forward;
use crate::policy::target::{is_header_value, is_hop_by_hop};

use super::body::{read_body, BodyError, Held};
use super::checks::CookieRewrite;
use super::{text_response, Ctx, Worker};

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

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

/// The method as an attribute value without an allocation for the usual ones.
fn method_value(m: &Method) -> opentelemetry::Value {
    match m.as_str() {
        "GET" => "GET".into(),
        "HEAD" => "HEAD".into(),
        "POST" => "POST".into(),
        "PUT" => "PUT".into(),
        "PATCH" => "PATCH".into(),
        "DELETE" => "DELETE".into(),
        other => other.to_string().into(),
    }
}

/// Console's address as text, made once (it is the same for every request of the process).
fn upstream_address(upstream: std::net::SocketAddr) -> opentelemetry::Value {
    static SHOWN: std::sync::OnceLock<(std::net::IpAddr, opentelemetry::StringValue)> =
        std::sync::OnceLock::new();
    let (ip, text) = SHOWN.get_or_init(|| (upstream.ip(), upstream.ip().to_string().into()));
    if *ip == upstream.ip() {
        opentelemetry::Value::String(text.clone())
    } else {
        upstream.ip().to_string().into()
    }
}

/// Console's exchange as a CLIENT span of the request's (traced requests only, out of line).
#[cold]
#[inline(never)]
fn exchange_span_of(
    s: &crate::runtime::telemetry::ServerSpan,
    parts: &http::request::Parts,
    upstream: std::net::SocketAddr,
) -> crate::runtime::telemetry::ChildSpan {
    s.client(
        parts.method.as_str(),
        vec![
            opentelemetry::KeyValue::new("http.request.method", method_value(&parts.method)),
            opentelemetry::KeyValue::new("server.address", upstream_address(upstream)),
            opentelemetry::KeyValue::new("server.port", i64::from(upstream.port())),
            opentelemetry::KeyValue::new("url.path", parts.uri.path().to_string()),
        ],
    )
}

#[allow(clippy::too_many_arguments)]
pub(super) async fn forward_request(
    w: &Arc<Worker>,
    ctx: &mut Ctx,
    forward: Forward,
    identity: Option<Identity>,
    shadow: bool,
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
            Err(e) => {
                ctx.unread_body = true;
                let refusal = match e {
                    BodyError::Busy => {
                        tracing::warn!(request_id = %ctx.request_id, limit = w.bodies.left(), "request bodies being read hold --max-buffered-body-bytes: 503, not forwarded");
                        BodyRefusal::Busy
                    }
                    BodyError::TimedOut => {
                        tracing::warn!(request_id = %ctx.request_id, timeout_ms = w.body_read_timeout.as_millis() as u64, "request body stalled: 408, not forwarded");
                        BodyRefusal::TimedOut
                    }
                    BodyError::Read(e) if e.is::<http_body_util::LengthLimitError>() => {
                        tracing::warn!(request_id = %ctx.request_id, limit = w.max_body_bytes, "request body too large: 413");
                        BodyRefusal::TooLarge
                    }
                    BodyError::Read(e) => {
                        tracing::warn!(request_id = %ctx.request_id, error = %e, "request body malformed or incomplete: 400, not forwarded");
                        BodyRefusal::Malformed
                    }
                };
                Records::refused(&**gw, refusal.as_str());
                let mut resp = text_response(ctx, refusal.status(), true);
                if refusal == BodyRefusal::Busy {
                    resp.headers_mut()
                        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                }
                return resp;
            }
        }
    };
    ctx.unread_body = false;
    // What Console receives, written in one pass over the request's headers: the target decided
    // on, byte for byte (checked equal to the bytes received); the client's headers without the
    // hop-by-hop ones, spoofed identity headers, framing headers and what the gateway sets
    // itself; then the gateway's own; then the body read whole.
    let h = &parts.headers;
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut request = Vec::with_capacity(512 + bytes.len());
    request.extend_from_slice(parts.method.as_str().as_bytes());
    request.push(b' ');
    request.extend_from_slice(target.as_bytes());
    request.extend_from_slice(b" HTTP/1.1\r\n");
    // Traced: Console's exchange is a CLIENT span, and Console's `traceparent` names it (the
    // client's own, if any, is the server span's parent and is not passed on).
    let mut exchange_span = ctx
        .trace
        .as_deref()
        .map(|(s, _)| exchange_span_of(s, &parts, gw.upstream));
    let traced = exchange_span.is_some();
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
            || (traced && *name == TRACEPARENT)
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
    if let Some(id) = &identity {
        put_header(
            &mut request,
            X_RBAC_ADMIN_ID.as_str().as_bytes(),
            id.admin_id().as_bytes(),
        );
        put_header(
            &mut request,
            X_RBAC_ROLES.as_str().as_bytes(),
            id.roles().as_bytes(),
        );
    }
    if shadow {
        put_header(&mut request, X_RBAC_SHADOW.as_str().as_bytes(), b"deny");
    }
    put_header(
        &mut request,
        X_REQUEST_ID.as_str().as_bytes(),
        ctx.request_id.as_bytes(),
    );
    if forwarded_for.is_empty() {
        put_header(
            &mut request,
            X_FORWARDED_FOR.as_str().as_bytes(),
            ctx.peer_ip.as_bytes(),
        );
    } else {
        let mut v = Vec::with_capacity(64);
        for prev in forwarded_for {
            v.extend_from_slice(prev);
            v.extend_from_slice(b", ");
        }
        v.extend_from_slice(ctx.peer_ip.as_bytes());
        put_header(&mut request, X_FORWARDED_FOR.as_str().as_bytes(), &v);
    }
    if let Some(span) = &exchange_span {
        put_header(&mut request, b"traceparent", span.traceparent().as_bytes());
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
        Ok(Ok(r)) => {
            if let Some(span) = exchange_span.take() {
                span.end(Some(r.status().as_u16()));
            }
            r
        }
        Ok(Err(e)) => {
            if let Some(span) = exchange_span.take() {
                span.end(None);
            }
            let status = match e {
                UpstreamError::ConnectTimeout => 504,
                _ => 502,
            };
            tracing::warn!(request_id = %ctx.request_id, status, error = %e, "upstream failure");
            return text_response(
                ctx,
                if status == 504 {
                    GATEWAY_TIMEOUT
                } else {
                    BAD_GATEWAY
                },
                true,
            );
        }
        Err(_) => {
            if let Some(span) = exchange_span.take() {
                span.end(None);
            }
            tracing::warn!(request_id = %ctx.request_id, status = 504, "upstream read timed out");
            return text_response(ctx, GATEWAY_TIMEOUT, true);
        }
    };
    let status = resp.status().as_u16();
    w.upstream_seconds[(status / 100).clamp(1, 5) as usize - 1]
        .observe(sent.elapsed().as_secs_f64());
    if let Some(row) = carry_out_shadow(&**gw, &forward, status, ctx.request_id.as_str()) {
        // Console's answer does not wait for the drift row.
        let gw = gw.clone();
        tokio::task::spawn(async move {
            if let Err(e) = Records::record(&*gw, row).await {
                tracing::error!(error = %e, "cannot record a drift event");
            }
        });
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
