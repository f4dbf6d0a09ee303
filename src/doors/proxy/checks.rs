//! The checks that can refuse a request before it is decided, and the session cookie as
//! Console will read it.

use http::{Method, Request, Version};
use hyper::body::Incoming;

use crate::dataplane::sniff::RawHead;
use crate::policy::target::{self, Refusal, Seen, Target};

/// What happens to the request's `Cookie` headers on the way to Console.
pub(super) enum CookieRewrite {
    /// The one header, unchanged.
    Keep,
    /// None at all.
    Drop,
    /// Exactly this one value (repeated headers joined as gunicorn would).
    Set(Vec<u8>),
}

/// The session cookie as Console will read it ([`crate::policy::cookie::session`]) from every `Cookie`
/// value of a request in order, and what to forward.
pub(super) fn read_cookie<'a>(
    values: &[&'a [u8]],
    name: &str,
) -> Result<(Option<&'a str>, CookieRewrite), Refusal> {
    if values.is_empty() {
        return Ok((None, CookieRewrite::Keep));
    }
    let s =
        crate::policy::cookie::session(values, name).map_err(|r| Refusal::Cookie(r.as_str()))?;
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
pub(super) fn check_request<'r>(
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
    // What hyper hands on must be the target decided on, byte for byte. When it is, its text is
    // checked (hyper validated those bytes as UTF-8 already); when not, the bytes received are,
    // so that a refusal of theirs answers first, as before.
    let uri = req.uri();
    let t = match uri.path_and_query() {
        Some(p)
            if uri.scheme().is_none()
                && uri.authority().is_none()
                && p.as_str().as_bytes() == raw.target() =>
        {
            target::parse_target_text(p.as_str())?
        }
        _ => {
            target::parse_target(raw.target())?;
            return Err(Refusal::Unparsed);
        }
    };
    raw.framing.clone()?;
    let seen = target::check_headers(req.headers(), req.version() == Version::HTTP_11)?;
    Ok((t, seen))
}
