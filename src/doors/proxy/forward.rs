//! What Console receives: the request written in one pass (the target as received, the
//! client's headers filtered, the gateway's identity headers added, the body read whole:
//! [`outgoing`]), and Console's answer, or its failure, carried out and handed back
//! ([`exchanged`], [`not_forwarded`]). Reading the body and the exchange on a pooled connection
//! are awaited by the handler itself (`mod.rs`).

use std::time::Instant;

use http::header::{self, HeaderName, HeaderValue};
use http::{Response, Version};

use crate::dataplane::upstream::{GatewayBody, UpstreamError};
use crate::policy::answer::Identity;
use crate::policy::forwarded::{carry_out_console, carry_out_not_forwarded, NotForwarded};
use crate::policy::headers::X_REQUEST_ID;
use crate::policy::outcome::Forward;
use crate::policy::target::{is_header_value, is_hop_by_hop};

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

/// Writes one of the client's header lines.
fn put_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Writes one of the gateway's own header lines, its name and ": " one constant (`own`):
/// inlined, the constant is copied without a call.
#[inline(always)]
fn put_own(out: &mut Vec<u8>, name_colon: &'static [u8], value: &[u8]) {
    out.extend_from_slice(name_colon);
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// The header lines the gateway writes itself to Console, each name with its ": " (the test
/// `own_header_lines_are_their_names` holds them to the names in `http` and `policy::headers`).
mod own {
    pub const ADMIN_ID: &[u8] = b"x-rbac-admin-id: ";
    pub const ROLES: &[u8] = b"x-rbac-roles: ";
    pub const SHADOW: &[u8] = b"x-rbac-shadow-decision: ";
    pub const REQUEST_ID: &[u8] = b"x-request-id: ";
    pub const FORWARDED_FOR: &[u8] = b"x-forwarded-for: ";
    pub const CONTENT_LENGTH: &[u8] = b"content-length: ";
    pub const HOST: &[u8] = b"host: ";
    pub const COOKIE: &[u8] = b"cookie: ";
    pub const TRACEPARENT: &[u8] = b"traceparent: ";
}

/// Console's address as text, made once (it is the same for every request of the process).
fn upstream_address(upstream: std::net::SocketAddr) -> Option<&'static str> {
    static SHOWN: std::sync::OnceLock<(std::net::SocketAddr, String)> = std::sync::OnceLock::new();
    let (addr, text) = SHOWN.get_or_init(|| (upstream, upstream.ip().to_string()));
    (*addr == upstream).then_some(text.as_str())
}

/// Console's exchange as a CLIENT span of the request's (traced requests only, out of line).
#[cold]
#[inline(never)]
fn exchange_span_of(
    s: &crate::runtime::telemetry::ServerSpan,
    parts: &http::request::Parts,
    upstream: std::net::SocketAddr,
) -> crate::runtime::telemetry::ChildSpan {
    let mut span = s.client(parts.method.as_str());
    span.set("http.request.method", parts.method.as_str());
    match upstream_address(upstream) {
        Some(shown) => span.set("server.address", shown),
        None => span.set("server.address", &upstream.ip().to_string()),
    }
    span.set("server.port", i64::from(upstream.port()));
    span.set("url.path", parts.uri.path());
    span
}

/// A request let through, as `carry_out` answered it: what the decision forwards, the identity
/// and shadow flag Console is told, when it was counted, the `X-Request-Id` value.
pub(super) struct Forwarding {
    pub forward: Forward,
    pub identity: Option<Identity>,
    pub shadow: bool,
    pub decided_at: Instant,
    pub request_id: HeaderValue,
}

/// What goes to Console for a request let through, once its body was read whole
/// ([`super::body::read_body`]): the bytes ([`request_bytes`]), when Console's time starts,
/// the exchange's deadline and its span. The awaits around it (the body, the exchange on a
/// pooled connection) are the handler's own, not a future of their own: each async call in
/// the chain moved its arguments and its future once more (docs/performance-log.md).
pub(super) struct Outgoing {
    pub request: Vec<u8>,
    pub sent: Instant,
    pub deadline: tokio::time::Instant,
    pub span: Option<crate::runtime::telemetry::ChildSpan>,
}

/// [`Outgoing`] for `parts` with its body `body` (`body_was_done`: the request had no body to
/// wait for).
pub(super) fn outgoing(
    w: &Worker,
    ctx: &Ctx,
    f: &Forwarding,
    parts: &http::request::Parts,
    cookie: &CookieRewrite,
    body: &[u8],
    body_was_done: bool,
) -> Outgoing {
    // Traced: Console's exchange is a CLIENT span, and Console's `traceparent` names it (the
    // client's own, if any, is the server span's parent and is not passed on).
    let span = ctx
        .trace
        .span()
        .map(|s| exchange_span_of(s, parts, w.gw.upstream));
    let traceparent = span.as_ref().and_then(|s| s.traceparent());
    let request = request_bytes(
        &Head {
            parts,
            cookie,
            connection_named: &ctx.connection_named,
            identity: f.identity.as_ref(),
            shadow: f.shadow,
            request_id: &f.request_id,
            peer_ip: &ctx.peer_ip,
            upstream: w.gw.upstream,
            traceparent: traceparent.as_ref().map(|t| t.as_str()),
            body_framed: !body_was_done,
        },
        body,
    );
    // Console's time starts when the request goes out: after the body was read, if there was
    // one to wait for (otherwise the decision's clock reading serves, one clock read less per
    // request). A body can be empty and still have been waited for (chunked, its last chunk
    // held back): then the clock is read now, or the read timeout would start too early.
    let sent = if body_was_done {
        f.decided_at
    } else {
        Instant::now()
    };
    // The exchange runs under the upstream read deadline (the connection's own timer,
    // `Pool::send`).
    let deadline = tokio::time::Instant::from_std(sent + w.gw.read_timeout);
    Outgoing {
        request,
        sent,
        deadline,
        span,
    }
}

/// Console's answer (or its failure) to the exchange, carried out: its time by status class
/// and a shadow rule's comparison ([`carry_out_console`]), or the 502/504
/// ([`carry_out_not_forwarded`]); the answer handed back with the request's id.
pub(super) fn exchanged(
    w: &Worker,
    ctx: &Ctx,
    f: Forwarding,
    result: Result<Response<GatewayBody>, UpstreamError>,
    sent: Instant,
    mut span: Option<crate::runtime::telemetry::ChildSpan>,
) -> Response<GatewayBody> {
    let gw = &w.gw;
    let mut resp = match result {
        Ok(r) => {
            if let Some(span) = span.take() {
                span.end(Some(r.status().as_u16()));
            }
            r
        }
        Err(e) => {
            if let Some(span) = span.take() {
                span.end(None);
            }
            let failed = match e {
                UpstreamError::ReadTimeout => NotForwarded::UpstreamTimedOut,
                e => NotForwarded::Upstream {
                    timed_out: matches!(e, UpstreamError::ConnectTimeout),
                    error: e.to_string(),
                },
            };
            return not_forwarded(w, ctx, f.request_id, failed);
        }
    };
    let status = resp.status().as_u16();
    carry_out_console(
        &**gw,
        &w.counts,
        &f.forward,
        status,
        sent.elapsed().as_secs_f64(),
        ctx.request_id.as_str(),
    );
    // Console's hop-by-hop headers were left out when its answer was read. The id is moved, not
    // cloned: a clone of a header value made from a copied slice allocates its shared count.
    // Edited in place: taking the answer apart and back together copied it twice.
    resp.headers_mut().insert(X_REQUEST_ID, f.request_id);
    *resp.version_mut() = Version::HTTP_11;
    if ctx.close {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

/// The gateway's answer to a request whose forwarding failed, carried out first; its
/// connection is not read again.
pub(super) fn not_forwarded(
    w: &Worker,
    ctx: &Ctx,
    request_id: HeaderValue,
    failure: NotForwarded,
) -> Response<GatewayBody> {
    let failed = carry_out_not_forwarded(&*w.gw, failure, ctx.request_id.as_str());
    let mut resp = text_response(ctx, request_id, failed.status, true);
    if let Some(v) = failed.retry_after {
        resp.headers_mut().insert(header::RETRY_AFTER, v);
    }
    resp
}

/// What [`request_bytes`] writes the request head from.
pub(super) struct Head<'a> {
    pub parts: &'a http::request::Parts,
    pub cookie: &'a CookieRewrite,
    /// The headers the request's `Connection` headers name: not forwarded.
    pub connection_named: &'a [HeaderName],
    pub identity: Option<&'a Identity>,
    pub shadow: bool,
    pub request_id: &'a HeaderValue,
    /// The peer's address: the hop appended to `X-Forwarded-For`.
    pub peer_ip: &'a str,
    /// Console's address: the `Host` of a request that had none.
    pub upstream: std::net::SocketAddr,
    /// The exchange's span, when traced.
    pub traceparent: Option<&'a str>,
    /// The client framed a body (chunks, even none): it is sent with its exact length.
    pub body_framed: bool,
}

/// The bytes Console receives, written in one pass over the request's headers: the target
/// decided on, byte for byte (checked equal to the bytes received); the client's headers without
/// the hop-by-hop ones, spoofed identity headers, framing headers and what the gateway sets
/// itself; then the gateway's own; then the body read whole. No I/O: tested without a socket.
pub(super) fn request_bytes(head: &Head<'_>, body: &[u8]) -> Vec<u8> {
    let (parts, h) = (head.parts, &head.parts.headers);
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    // Traced: room for `traceparent` and the longer request id too (without it the buffer
    // grew once per traced request, a reallocation and a copy of the head).
    let traced_room = if head.traceparent.is_some() { 128 } else { 0 };
    let mut request = Vec::with_capacity(512 + traced_room + body.len());
    request.extend_from_slice(parts.method.as_str().as_bytes());
    request.push(b' ');
    request.extend_from_slice(target.as_bytes());
    request.extend_from_slice(b" HTTP/1.1\r\n");
    let traced = head.traceparent.is_some();
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
            || (*name == header::COOKIE && !matches!(head.cookie, CookieRewrite::Keep))
            || head.connection_named.contains(name)
            || (traced && *name == TRACEPARENT)
        {
            continue;
        }
        put_header(&mut request, name.as_str().as_bytes(), value.as_bytes());
    }
    if !had_host {
        // HTTP/1.0 without Host: Console gets its own address.
        put_own(
            &mut request,
            own::HOST,
            head.upstream.to_string().as_bytes(),
        );
    }
    if let CookieRewrite::Set(v) = head.cookie {
        // Joined from header values hyper accepted.
        if is_header_value(v) {
            put_own(&mut request, own::COOKIE, v);
        } else {
            tracing::error!(request_id = %String::from_utf8_lossy(head.request_id.as_bytes()), "joined Cookie is not a header value: none forwarded");
        }
    }
    // Any body the client framed (a Content-Length, or chunks, even none) is sent with its
    // exact length: `Content-Length: 0` for an empty chunked one, so Console never infers it.
    if had_length || head.body_framed {
        put_own(
            &mut request,
            own::CONTENT_LENGTH,
            body.len().to_string().as_bytes(),
        );
    }
    if let Some(id) = head.identity {
        put_own(&mut request, own::ADMIN_ID, id.admin_id().as_bytes());
        put_own(&mut request, own::ROLES, id.roles().as_bytes());
    }
    if head.shadow {
        put_own(&mut request, own::SHADOW, b"deny");
    }
    put_own(&mut request, own::REQUEST_ID, head.request_id.as_bytes());
    if forwarded_for.is_empty() {
        put_own(&mut request, own::FORWARDED_FOR, head.peer_ip.as_bytes());
    } else {
        let mut v = Vec::with_capacity(64);
        for prev in forwarded_for {
            v.extend_from_slice(prev);
            v.extend_from_slice(b", ");
        }
        v.extend_from_slice(head.peer_ip.as_bytes());
        put_own(&mut request, own::FORWARDED_FOR, &v);
    }
    if let Some(tp) = head.traceparent {
        put_own(&mut request, own::TRACEPARENT, tp.as_bytes());
    }
    request.extend_from_slice(b"\r\n");
    request.extend_from_slice(body);
    request
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::headers::{X_RBAC_ADMIN_ID, X_RBAC_ROLES, X_RBAC_SHADOW};
    use http::Request;

    fn head_of(req: &Request<()>) -> http::request::Parts {
        let mut b = Request::builder().method(req.method()).uri(req.uri());
        for (k, v) in req.headers() {
            b = b.header(k, v);
        }
        b.body(()).unwrap().into_parts().0
    }

    #[test]
    fn the_bytes_console_receives_are_written_without_a_socket() {
        let req = Request::builder()
            .method("POST")
            .uri("/a/b?c=1")
            .header("x-custom", "kept")
            .header("connection", "keep-alive, x-gone")
            .header("x-gone", "named by Connection")
            .header("x_rbac_roles", "forged")
            .header("X-Rbac-Admin-Id", "forged")
            .header("expect", "100-continue")
            .header("x-request-id", "client-chosen")
            .header("content-length", "3")
            .header("x-forwarded-for", "198.51.100.1")
            .header("x-forwarded-for", "198.51.100.2")
            .header("traceparent", "00-client-span")
            .header("cookie", "session=a")
            .body(())
            .unwrap();
        let parts = head_of(&req);
        let principal = crate::policy::principal::Principal::new(
            "admin-7",
            vec!["b-role".into(), "a-role".into()],
            vec![],
            None,
            std::time::Duration::from_secs(1),
        );
        let identity = principal.identity().unwrap().clone();
        let request_id = HeaderValue::from_static("0123456789abcdef0123456789abcdef");
        let named = [HeaderName::from_static("x-gone")];
        let head = |traceparent, identity, cookie| Head {
            parts: &parts,
            cookie,
            connection_named: &named,
            identity,
            shadow: true,
            request_id: &request_id,
            peer_ip: "203.0.113.5",
            upstream: "127.0.0.1:5000".parse().unwrap(),
            traceparent,
            body_framed: false,
        };
        let bytes = request_bytes(
            &head(
                Some("00-gateway-span"),
                Some(&identity),
                &CookieRewrite::Keep,
            ),
            b"xyz",
        );
        assert_eq!(
            String::from_utf8(bytes).unwrap(),
            "POST /a/b?c=1 HTTP/1.1\r\n\
             x-custom: kept\r\n\
             cookie: session=a\r\n\
             host: 127.0.0.1:5000\r\n\
             content-length: 3\r\n\
             x-rbac-admin-id: admin-7\r\n\
             x-rbac-roles: a-role,b-role\r\n\
             x-rbac-shadow-decision: deny\r\n\
             x-request-id: 0123456789abcdef0123456789abcdef\r\n\
             x-forwarded-for: 198.51.100.1, 198.51.100.2, 203.0.113.5\r\n\
             traceparent: 00-gateway-span\r\n\
             \r\n\
             xyz"
        );
        // Untraced: the client's traceparent goes through; no identity: none is sent; the
        // cookie rewritten to the one the gateway read.
        let rewritten = CookieRewrite::Set(b"session=b".to_vec());
        let text = String::from_utf8(request_bytes(&head(None, None, &rewritten), b"")).unwrap();
        assert!(text.contains("traceparent: 00-client-span\r\n"), "{text}");
        assert!(text.contains("cookie: session=b\r\n"), "{text}");
        assert!(!text.contains("session=a"), "{text}");
        assert!(
            !text.to_ascii_lowercase().contains("x-rbac-admin-id"),
            "{text}"
        );
        assert!(text.contains("content-length: 0\r\n"), "{text}");
    }

    #[test]
    fn own_header_lines_are_their_names() {
        for (line, name) in [
            (own::ADMIN_ID, X_RBAC_ADMIN_ID),
            (own::ROLES, X_RBAC_ROLES),
            (own::SHADOW, X_RBAC_SHADOW),
            (own::REQUEST_ID, X_REQUEST_ID),
            (own::FORWARDED_FOR, X_FORWARDED_FOR),
            (own::CONTENT_LENGTH, header::CONTENT_LENGTH),
            (own::HOST, header::HOST),
            (own::COOKIE, header::COOKIE),
            (own::TRACEPARENT, TRACEPARENT),
        ] {
            assert_eq!(line, format!("{}: ", name.as_str()).as_bytes());
        }
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
