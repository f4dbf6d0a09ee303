//! The request line and headers, checked before anything is matched: the gateway decides from
//! exactly the path Console will route, or refuses with 400.
//!
//! Console runs under gunicorn + Werkzeug, which percent-decode the path once and route on the
//! result. A proxy that matches one string while Console routes another is the classic
//! authorization bypass, so every target whose routed form is not certain is refused here:
//! non-origin-form targets, fragments, encoded `/` or `\`, dot and empty segments, malformed
//! escapes, escapes that decode to control characters or invalid UTF-8, raw bytes outside visible
//! ASCII, and headers that make Console (or a proxy in front of it) route somewhere else.
//! The original target is forwarded unchanged; only the decoded path is matched.

use std::fmt;

use crate::runtime::words;

/// Why a request was refused with 400. The `as_str` form is what logs and metrics carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    NotOriginForm,
    Fragment,
    RawByte(u8),
    RawBackslash,
    MalformedEscape,
    EncodedSlash,
    EncodedBackslash,
    ControlChar,
    /// An escape decoding to a character the gateway cannot tell from a raw one it was sent
    /// (space, `<`, `>`, `"`: the proxy layer escapes those when it receives them raw).
    AmbiguousChar,
    InvalidUtf8,
    /// A non-ASCII digit: Werkzeug's `int` converter (`\d`) would accept it.
    UnicodeDigit,
    DotSegment,
    EmptySegment,
    /// A method with a lower-case letter: Console's routing is case-sensitive (`get` is not `GET`).
    MethodNotUppercase,
    /// A method with a byte other than a letter (`M-SEARCH`, `GET2`): no rule can name it, since
    /// the mapping's methods are upper-case letters.
    MethodNotLetters,
    RewriteHeader(String),
    UnderscoreHeader(String),
    ObsFold,
    MalformedRequestLine,
    /// Message framing two parsers could read differently (request smuggling): Content-Length
    /// with Transfer-Encoding, repeated or malformed Content-Length, a Transfer-Encoding other
    /// than a single `chunked`.
    AmbiguousFraming,
    MissingHost,
    /// A `Host` that is empty or holds more than a host and port (a path, user info).
    InvalidHost,
    /// `Upgrade` (WebSocket, h2c): the gateway decides on HTTP/1.1 requests only.
    Upgrade,
    /// A `Connection` header names `Host` or `Cookie`: as hop-by-hop headers they would not be
    /// forwarded, so Console would not receive the session or host the gateway decided on.
    ConnectionNamesHeader(String),
    /// The request as received and as parsed cannot be shown to be the same request (or its
    /// head could not be read as received).
    Unparsed,
    /// `Cookie` headers Console could read differently from the gateway (`src/policy/cookie.rs`);
    /// the reason is one of `CookieRefusal`'s.
    Cookie(&'static str),
    /// Forward-auth: the edge's report of the request (`X-Forwarded-Method` + `X-Forwarded-Uri`
    /// or `X-Original-*`) is missing, incomplete, repeated or contradicts itself; what is wrong.
    TargetHeaders(String),
}

impl Refusal {
    /// Every `as_str` label, so `/metrics` shows each refusal counter at 0 from start-up.
    pub const REASONS: &'static [&'static str] = &[
        "not_origin_form",
        "fragment",
        "raw_byte",
        "raw_backslash",
        "malformed_escape",
        "encoded_slash",
        "encoded_backslash",
        "encoded_control_char",
        "encoded_ambiguous_char",
        "invalid_utf8",
        "unicode_digit",
        "dot_segment",
        "empty_segment",
        "method_not_uppercase",
        "method_not_letters",
        "rewrite_header",
        "underscore_header",
        "obs_fold",
        "malformed_request_line",
        "ambiguous_framing",
        "missing_host",
        "invalid_host",
        "upgrade",
        "connection_names_header",
        "unparsed",
        "target_headers",
    ];

    pub fn as_str(&self) -> &'static str {
        match self {
            Refusal::NotOriginForm => "not_origin_form",
            Refusal::Fragment => "fragment",
            Refusal::RawByte(_) => "raw_byte",
            Refusal::RawBackslash => "raw_backslash",
            Refusal::MalformedEscape => "malformed_escape",
            Refusal::EncodedSlash => "encoded_slash",
            Refusal::EncodedBackslash => "encoded_backslash",
            Refusal::ControlChar => "encoded_control_char",
            Refusal::AmbiguousChar => "encoded_ambiguous_char",
            Refusal::InvalidUtf8 => "invalid_utf8",
            Refusal::UnicodeDigit => "unicode_digit",
            Refusal::DotSegment => "dot_segment",
            Refusal::EmptySegment => "empty_segment",
            Refusal::MethodNotUppercase => "method_not_uppercase",
            Refusal::MethodNotLetters => "method_not_letters",
            Refusal::RewriteHeader(_) => "rewrite_header",
            Refusal::UnderscoreHeader(_) => "underscore_header",
            Refusal::ObsFold => "obs_fold",
            Refusal::MalformedRequestLine => "malformed_request_line",
            Refusal::AmbiguousFraming => "ambiguous_framing",
            Refusal::MissingHost => "missing_host",
            Refusal::InvalidHost => "invalid_host",
            Refusal::Upgrade => "upgrade",
            Refusal::ConnectionNamesHeader(_) => "connection_names_header",
            Refusal::Unparsed => "unparsed",
            Refusal::Cookie(reason) => reason,
            Refusal::TargetHeaders(_) => "target_headers",
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::RawByte(b) => write!(f, "raw_byte 0x{b:02x}"),
            Refusal::RewriteHeader(h)
            | Refusal::UnderscoreHeader(h)
            | Refusal::ConnectionNamesHeader(h) => {
                write!(f, "{} {h}", self.as_str())
            }
            Refusal::TargetHeaders(what) => write!(f, "target_headers: {what}"),
            other => f.write_str(other.as_str()),
        }
    }
}

/// A target that passed every check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    original: String,
    /// Where the path ends in `original` (its `?`, or its end).
    path_end: usize,
    /// The path decoded, if it held an escape; else `original[..path_end]` as it is (one
    /// allocation a request less: docs/performance-log.md, 2026-11-28, late night).
    decoded: Option<String>,
}

impl Target {
    /// The path, percent-decoded exactly once: what Werkzeug routes on.
    pub fn path(&self) -> &str {
        self.decoded.as_deref().unwrap_or(self.raw_path())
    }

    /// Path and query as sent (what is forwarded and what `next=` carries).
    pub fn original(&self) -> &str {
        &self.original
    }

    /// The path as sent, not decoded (what an audit row records).
    pub fn raw_path(&self) -> &str {
        &self.original[..self.path_end]
    }

    /// The query as sent, after the `?`, if there was one.
    pub fn query(&self) -> Option<&str> {
        self.original.get(self.path_end + 1..)
    }
}

/// Characters that may not appear in a decoded path (see [`Refusal::AmbiguousChar`]).
pub fn refused_decoded_char(c: char) -> bool {
    c.is_control() || matches!(c, ' ' | '<' | '>' | '"' | '\\')
}

/// Validates the method token: Console's routing is case-sensitive, so only upper-case letters
/// pass (the mapping names no other method).
pub fn check_method(method: &[u8]) -> Result<(), Refusal> {
    if !method.is_empty() && method.iter().all(|b| b.is_ascii_uppercase()) {
        Ok(())
    } else if method.iter().any(|b| b.is_ascii_lowercase()) {
        Err(Refusal::MethodNotUppercase)
    } else {
        Err(Refusal::MethodNotLetters)
    }
}

/// Validates a raw request target and decodes its path once.
pub fn parse_target(raw: &[u8]) -> Result<Target, Refusal> {
    checked_target(raw, || {
        String::from_utf8(raw.to_vec()).map_err(|_| Refusal::InvalidUtf8)
    })
}

/// [`parse_target`] of a target the HTTP parser already holds as text (the data plane's: hyper
/// read the same bytes as UTF-8): the same checks and answers, without validating the bytes
/// as UTF-8 once more (property-tested against [`parse_target`]).
pub fn parse_target_text(text: &str) -> Result<Target, Refusal> {
    checked_target(text.as_bytes(), || Ok(text.to_owned()))
}

/// The checks of [`parse_target`] on `raw`; `original` makes its text once they pass.
fn checked_target(
    raw: &[u8],
    original: impl FnOnce() -> Result<String, Refusal>,
) -> Result<Target, Refusal> {
    if raw.first() != Some(&b'/') {
        return Err(Refusal::NotOriginForm);
    }
    // One pass for what the checks below look for; the refusals keep their order.
    let Scan {
        bad_byte,
        fragment,
        path_end,
        backslash,
        escaped,
    } = scan(raw);
    if let Some(b) = bad_byte {
        return Err(Refusal::RawByte(b));
    }
    if fragment {
        return Err(Refusal::Fragment);
    }
    if backslash {
        return Err(Refusal::RawBackslash);
    }
    // Visible ASCII (checked above): never the error.
    let original = original()?;
    // Nothing to decode without a '%': visible ASCII holds no control character and no Unicode
    // digit.
    let decoded = escaped.then(|| decode_path(&raw[..path_end])).transpose()?;
    let target = Target {
        original,
        path_end,
        decoded,
    };
    // The first segment is the empty text before the leading '/'; only the last may be empty.
    // Split by bytes ('/' is one byte and never part of another character's UTF-8).
    let path = target.path().as_bytes();
    let mut segments = path.split(|&b| b == b'/').skip(1).peekable();
    while let Some(seg) = segments.next() {
        if seg.is_empty() && segments.peek().is_some() {
            return Err(Refusal::EmptySegment);
        }
        if seg == b"." || seg == b".." {
            return Err(Refusal::DotSegment);
        }
    }
    Ok(target)
}

/// What [`checked_target`]'s checks look for in a target, found in one pass ([`scan`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Scan {
    /// The first byte outside visible ASCII (0x21..=0x7e): the pass ends there.
    bad_byte: Option<u8>,
    /// A `#` before it.
    fragment: bool,
    /// Where the path ends: the first `?`, or the target's length.
    path_end: usize,
    /// A `\` in the path (before `path_end`).
    backslash: bool,
    /// A `%` in the path.
    escaped: bool,
}

impl Scan {
    /// Nothing found yet in a target of `len` bytes: the path is all of it.
    fn nothing_in(len: usize) -> Scan {
        Scan {
            bad_byte: None,
            fragment: false,
            path_end: len,
            backslash: false,
            escaped: false,
        }
    }

    /// Takes the byte `b` at `at` into account: false where the pass ends (a byte outside
    /// visible ASCII, kept in `bad_byte`).
    fn take(&mut self, at: usize, b: u8) -> bool {
        if !(0x21..=0x7e).contains(&b) {
            self.bad_byte = Some(b);
            return false;
        }
        self.fragment |= b == b'#';
        if at < self.path_end {
            match b {
                b'?' => self.path_end = at,
                b'\\' => self.backslash = true,
                b'%' => self.escaped = true,
                _ => {}
            }
        }
        true
    }
}

/// Whether the eight bytes of `w` hold one [`Scan::take`] must look at: any outside visible
/// ASCII, `#`, `?`, `\` or `%` (the tests of `runtime::words`, exact for the word as a whole,
/// which is all [`scan`] asks).
fn notable(w: u64) -> bool {
    let found = words::below(w, 0x21)
        | words::above_ascii_visible(w)
        | words::equal(w, b'#')
        | words::equal(w, b'?')
        | words::equal(w, b'\\')
        | words::equal(w, b'%');
    found & words::HIGH != 0
}

/// One pass over a target for [`checked_target`]: eight bytes at a time where none of them is
/// [`notable`] (most of a path), one at a time in the eight that hold one and in the last few.
/// Until 2026-11-29 every byte was looked at on its own (about 14 instructions a byte, some
/// 350 of a denial whose path is 25 bytes, 1.3%: docs/performance-log.md); the property test
/// `the_scan_finds_what_its_spec_finds` holds it equal to a spec of what the pass finds.
fn scan(raw: &[u8]) -> Scan {
    let mut s = Scan::nothing_in(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let end = match raw[i..].first_chunk() {
            Some(eight) => {
                if !notable(words::word(eight)) {
                    i += 8;
                    continue;
                }
                i + 8
            }
            None => raw.len(),
        };
        for (at, &b) in (i..).zip(&raw[i..end]) {
            if !s.take(at, b) {
                return s;
            }
        }
        i = end;
    }
    s
}

/// Percent-decodes a path once, refusing what decodes to a separator, a control character, an
/// ambiguous character, invalid UTF-8 or a non-ASCII digit.
fn decode_path(raw_path: &[u8]) -> Result<String, Refusal> {
    let mut decoded = Vec::with_capacity(raw_path.len());
    let mut i = 0;
    while i < raw_path.len() {
        let b = raw_path[i];
        if b != b'%' {
            decoded.push(b);
            i += 1;
            continue;
        }
        let hex = raw_path.get(i + 1..i + 3).ok_or(Refusal::MalformedEscape)?;
        let v = match (hex_val(hex[0]), hex_val(hex[1])) {
            (Some(h), Some(l)) => h * 16 + l,
            _ => return Err(Refusal::MalformedEscape),
        };
        match v {
            b'/' => return Err(Refusal::EncodedSlash),
            b'\\' => return Err(Refusal::EncodedBackslash),
            0x00..=0x1f | 0x7f => return Err(Refusal::ControlChar),
            b' ' | b'<' | b'>' | b'"' => return Err(Refusal::AmbiguousChar),
            _ => decoded.push(v),
        }
        i += 3;
    }
    let path = String::from_utf8(decoded).map_err(|_| Refusal::InvalidUtf8)?;
    if path.chars().any(|c| c.is_control()) {
        // C1 controls (U+0080..U+009F) arrive as valid UTF-8 escapes.
        return Err(Refusal::ControlChar);
    }
    if path.chars().any(|c| !c.is_ascii() && c.is_numeric()) {
        return Err(Refusal::UnicodeDigit);
    }
    Ok(path)
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Header names that rewrite the route or the method somewhere behind the gateway.
const REWRITE_HEADERS: &[&str] = &[
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    "x-original-url",
    "x-rewrite-url",
    "x-original-uri",
    "x-forwarded-prefix",
    "x-script-name",
];

/// Whether bytes can be sent as a header value (what `HeaderValue::from_bytes` accepts).
pub fn is_header_value(v: &[u8]) -> bool {
    v.iter().all(|&b| (b >= 0x20 && b != 0x7f) || b == b'\t')
}

/// Validates one header name (any case).
pub fn check_header_name(name: &str) -> Result<(), Refusal> {
    if name.as_bytes().contains(&b'_') {
        return Err(Refusal::UnderscoreHeader(name.to_ascii_lowercase()));
    }
    if REWRITE_HEADERS.iter().any(|h| name.eq_ignore_ascii_case(h)) {
        return Err(Refusal::RewriteHeader(name.to_ascii_lowercase()));
    }
    Ok(())
}

/// Every check on a request's headers, in one pass over them (a lookup by name hashes the
/// name; five lookups cost more than the pass). In order of precedence: each name
/// ([`check_header_name`]); `Upgrade`; framing Console's server could read differently from the
/// gateway (`Transfer-Encoding` with `Content-Length`, either repeated, a `Transfer-Encoding`
/// other than `chunked`, a `Content-Length` that is not digits); a missing (HTTP/1.1) or
/// repeated `Host`; a `Host` that is empty or holds anything but a host name or address and a
/// port.
///
/// Returns what the pass saw of the headers the gateway reads itself, so that nothing looks
/// them up by name again.
pub fn check_headers(headers: &http::HeaderMap, http11: bool) -> Result<Seen<'_>, Refusal> {
    use http::header::{
        CONNECTION, CONTENT_LENGTH, COOKIE, HOST, TRANSFER_ENCODING, UPGRADE, USER_AGENT,
    };
    let mut seen = Seen::default();
    let (mut te, mut te_ok) = (0usize, true);
    let (mut cl, mut cl_ok) = (0usize, true);
    let mut hosts: Option<(usize, &http::HeaderValue)> = None;
    let mut upgrade = false;
    for (name, value) in headers {
        check_header_name(name.as_str())?;
        if *name == TRANSFER_ENCODING {
            te += 1;
            te_ok &= value.as_bytes() == b"chunked";
        } else if *name == CONTENT_LENGTH {
            cl += 1;
            cl_ok &= !value.is_empty() && value.as_bytes().iter().all(u8::is_ascii_digit);
        } else if *name == HOST {
            hosts = Some(match hosts {
                None => (1, value),
                Some((n, first)) => (n + 1, first),
            });
        } else if *name == UPGRADE {
            upgrade = true;
        } else if *name == COOKIE {
            match seen.cookie {
                None => seen.cookie = Some(value.as_bytes()),
                Some(_) => seen.more_cookies.push(value.as_bytes()),
            }
        } else if *name == USER_AGENT {
            seen.user_agent = Some(join_user_agent(seen.user_agent.take(), value.as_bytes()));
        } else if *name == CONNECTION {
            connection_tokens(value.as_bytes(), &mut seen.connection_named);
        }
    }
    if upgrade {
        return Err(Refusal::Upgrade);
    }
    if (te > 0 && cl > 0) || te > 1 || !te_ok || cl > 1 || !cl_ok {
        return Err(Refusal::AmbiguousFraming);
    }
    match hosts {
        None if http11 => return Err(Refusal::MissingHost),
        None => {}
        Some((n, _)) if n > 1 => return Err(Refusal::MissingHost),
        Some((_, host)) => {
            let host = host.as_bytes();
            let allowed = |b: &u8| {
                b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':' | b'[' | b']')
            };
            if host.is_empty() || !host.iter().all(allowed) {
                return Err(Refusal::InvalidHost);
            }
        }
    }
    if let Some(named) = seen
        .connection_named
        .iter()
        .find(|n| **n == HOST || **n == COOKIE)
    {
        return Err(Refusal::ConnectionNamesHeader(named.as_str().to_string()));
    }
    Ok(seen)
}

/// `User-Agent` so far with one more such header's value: gunicorn joins a repeated header's
/// values with `,` in the order sent (`HTTP_USER_AGENT` of the environ), and Werkzeug hands that
/// string on, so a denial's row keeps what Console's own code would read.
pub fn join_user_agent<'a>(
    so_far: Option<std::borrow::Cow<'a, [u8]>>,
    value: &'a [u8],
) -> std::borrow::Cow<'a, [u8]> {
    match so_far {
        None => std::borrow::Cow::Borrowed(value),
        Some(first) => {
            let mut joined = first.into_owned();
            joined.push(b',');
            joined.extend_from_slice(value);
            std::borrow::Cow::Owned(joined)
        }
    }
}

const KEEP_ALIVE: http::HeaderName = http::HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: http::HeaderName = http::HeaderName::from_static("proxy-connection");

/// Hop-by-hop headers (RFC 9110 §7.6.1) besides those a `Connection` header names: never
/// handed on, in either direction.
pub fn is_hop_by_hop(n: &http::HeaderName) -> bool {
    use http::header::{CONNECTION, TE, TRAILER, TRANSFER_ENCODING, UPGRADE};
    *n == CONNECTION
        || *n == KEEP_ALIVE
        || *n == PROXY_CONNECTION
        || *n == TE
        || *n == TRAILER
        || *n == TRANSFER_ENCODING
        || *n == UPGRADE
}

/// Adds the header names one `Connection` value lists (hop-by-hop as well) to `named`.
/// `keep-alive`, the usual one, is left out: that header is hop-by-hop anyway.
pub fn connection_tokens(value: &[u8], named: &mut Vec<http::HeaderName>) {
    // The usual whole value, without splitting it (as written first: a plain comparison).
    if value == b"keep-alive" || value.eq_ignore_ascii_case(b"keep-alive") {
        return;
    }
    for token in value.split(|&b| b == b',') {
        let token = token.trim_ascii();
        if token.is_empty() || token.eq_ignore_ascii_case(b"keep-alive") {
            continue;
        }
        if let Ok(name) = http::HeaderName::from_bytes(token) {
            named.push(name);
        }
    }
}

/// What [`check_headers`] saw of the headers the gateway reads itself.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Seen<'a> {
    /// The first `Cookie` header's value, and any more in order (most requests have one: no
    /// allocation then).
    pub cookie: Option<&'a [u8]>,
    pub more_cookies: Vec<&'a [u8]>,
    /// The `User-Agent` as gunicorn hands it to Console ([`join_user_agent`]): borrowed when
    /// there is one such header.
    pub user_agent: Option<std::borrow::Cow<'a, [u8]>>,
    /// The header names the `Connection` headers list ([`connection_tokens`]): hop-by-hop,
    /// not forwarded. Empty (no allocation) without a `Connection` header.
    pub connection_named: Vec<http::HeaderName>,
}

#[cfg(test)]
mod tests;
