//! A response head, read from bytes: sans-IO, as [`crate::policy::target`] reads a request.
//!
//! [`parse_response`] takes the bytes read so far from an upstream connection and returns the
//! head (status, version, the end-to-end headers Console's client receives), how its body is
//! framed and whether the connection can carry another request; or `Ok(None)` while the head is
//! incomplete; or one [`HeadError`] per reason a head is refused (502). It reads no socket and
//! knows no body type: the leg (`upstream/mod.rs`) reads the bytes and attaches the body. The
//! bytes are parsed by httparse and read the way hyper's client reads them, except where the leg
//! is stricter (the module doc of `upstream` lists where).
//!
//! **Bounded whatever the bytes.** `Ok(None)` is answered only while at most [`MAX_HEAD`] bytes
//! are buffered; more, complete or not, is [`HeadError::TooLarge`]: a status or header line that
//! never ends, endless whitespace, empty lines or obs-fold (refused by httparse as soon as it
//! is seen) never grow the buffer past it. Interim (1xx) heads are taken out of the buffer one by
//! one, each under the same bound. httparse reads the head again from its start on each call, so
//! a head cut into many reads is read at most [`MAX_HEAD`] bytes per read.

use bytes::{Buf, BytesMut};
use http::header::{self, HeaderMap};
use http::{Response, StatusCode, Version};

use crate::policy::target::{connection_tokens, is_hop_by_hop};

pub use super::names::Names;

/// Largest response head read from the upstream, in bytes.
pub const MAX_HEAD: usize = 64 * 1024;
/// Most header lines in a response head (hyper's default).
pub const MAX_HEADERS: usize = 100;

/// Why a response head is refused (the leg answers 502). The message is what the log line of
/// the refusal says, after "the upstream's response is refused: ".
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    /// Over [`MAX_HEAD`] bytes, complete or not.
    #[error("response head too large")]
    TooLarge,
    /// More than [`MAX_HEADERS`] header lines.
    #[error("too many response headers")]
    TooManyHeaders,
    /// Not a response head httparse reads (a folded header line, another version, garbage).
    #[error("malformed response head")]
    Malformed,
    /// A status code below 100 (httparse reads three digits).
    #[error("invalid status")]
    InvalidStatus,
    /// `101 Switching Protocols`: the gateway never asks for an upgrade.
    #[error("101 to a request without Upgrade")]
    SwitchingProtocols,
    /// A name `HeaderName` refuses (httparse accepts the same tokens: kept as a guard).
    #[error("invalid header name")]
    InvalidHeaderName,
    /// A value `HeaderValue` refuses (httparse accepts the same bytes: kept as a guard).
    #[error("invalid header value")]
    InvalidHeaderValue,
    /// `Transfer-Encoding` other than one `chunked` header, with `Content-Length`, or on
    /// HTTP/1.0.
    #[error("transfer-encoding")]
    TransferEncoding,
    /// More than one `Content-Length` (hyper merges identical ones).
    #[error("repeated content-length")]
    RepeatedContentLength,
    /// A `Content-Length` other than 1 to 19 digits.
    #[error("invalid content-length")]
    InvalidContentLength,
}

/// How a response body is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    Length(u64),
    Chunked,
    /// Read until the upstream closes the connection.
    Close,
}

/// A response head read from the upstream; its body is the leg's to attach.
pub struct Parsed {
    pub response: Response<()>,
    pub framing: Framing,
    /// HTTP/1.1 without `Connection: close`: the connection can carry another request.
    pub keep_alive: bool,
}

/// Parses a response head at the start of `buf`, skipping interim (1xx) responses, and takes
/// what it used out of `buf`. `Ok(None)`: more bytes are needed (and at most [`MAX_HEAD`] are
/// buffered).
pub fn parse_response(
    buf: &mut BytesMut,
    head_request: bool,
    names: &mut Names,
) -> Result<Option<Parsed>, HeadError> {
    loop {
        // Uninitialised slots: filling 100 empty headers cost more than parsing the head.
        let mut slots =
            [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut res = httparse::Response::new(&mut []);
        let len = match httparse::ParserConfig::default()
            .parse_response_with_uninit_headers(&mut res, buf, &mut slots)
        {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => {
                return Err(HeadError::TooLarge)
            }
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooManyHeaders),
            Err(_) => return Err(HeadError::Malformed),
        };
        if len > MAX_HEAD {
            return Err(HeadError::TooLarge);
        }
        let code = res.code.unwrap_or(0);
        let status = StatusCode::from_u16(code).map_err(|_| HeadError::InvalidStatus)?;
        let version = if res.version == Some(1) {
            Version::HTTP_11
        } else {
            Version::HTTP_10
        };
        match code {
            101 => return Err(HeadError::SwitchingProtocols),
            100..=199 => {
                // An interim response: the final one follows.
                buf.advance(len);
                if buf.is_empty() {
                    return Ok(None);
                }
                continue;
            }
            _ => {}
        }
        let reason = res.reason.unwrap_or("");
        let reason = (Some(reason) != status.canonical_reason())
            .then(|| hyper::ext::ReasonPhrase::try_from(reason.as_bytes().to_vec()).ok())
            .flatten();
        let (headers, framing, keep_alive) = end_to_end(
            res.headers,
            version,
            head_request || code == 204 || code == 304,
            names,
        )?;
        buf.advance(len);
        let mut response = Response::new(());
        *response.status_mut() = status;
        *response.version_mut() = version;
        *response.headers_mut() = headers;
        if let Some(reason) = reason {
            response.extensions_mut().insert(reason);
        }
        return Ok(Some(Parsed {
            response,
            framing,
            keep_alive,
        }));
    }
}

/// The end-to-end headers of a final response head, in their order, its framing and whether
/// the connection can carry another request. `bodiless`: no body follows this head whatever it
/// says (a HEAD request's answer, 204, 304; RFC 9112 §6.3).
#[inline(always)]
fn end_to_end(
    parsed: &[httparse::Header<'_>],
    version: Version,
    bodiless: bool,
    names: &mut Names,
) -> Result<(HeaderMap, Framing, bool), HeadError> {
    // The names and values are copied out of the read buffer (a few bytes each), not
    // shared with it: a shared buffer cost a split per response and two atomic reference
    // count updates per value (1.5% of the gateway's CPU in perf), and the buffer stays
    // one plain allocation, reused for the next response.
    //
    // The end-to-end headers only, in their order: the hop-by-hop ones, and those a
    // `Connection` header names, are read for the framing and never handed on (left out
    // here rather than removed later: each insertion and removal hashes the name).
    let count = parsed.len();
    let mut headers = HeaderMap::with_capacity(count);
    let mut named = Vec::new();
    for h in parsed.iter() {
        if h.name.as_bytes().eq_ignore_ascii_case(b"connection") {
            connection_tokens(h.value, &mut named);
        }
    }
    let mut keep_alive = version == Version::HTTP_11;
    let mut lengths = 0usize;
    let mut length = None;
    let mut encodings = 0usize;
    let mut chunked = false;
    for h in parsed.iter() {
        let (raw_name, raw_value) = (h.name.as_bytes(), h.value);
        let (name, slot) = names
            .get(raw_name)
            .map_err(|_| HeadError::InvalidHeaderName)?;
        if name == header::CONNECTION {
            if has_token(raw_value, b"close") {
                keep_alive = false;
            }
        } else if name == header::CONTENT_LENGTH {
            lengths += 1;
            length = parse_length(raw_value);
            if !bodiless {
                // The body handed on is exactly this long (its size hint says so), and
                // hyper's server writes `content-length` from it: the same header, without
                // a copy of Console's one to make, store and check again.
                continue;
            }
        } else if name == header::TRANSFER_ENCODING {
            encodings += 1;
            chunked = raw_value.eq_ignore_ascii_case(b"chunked");
        } else if name == header::DATE {
            // The gateway's own `Date` goes out (hyper's, cached per second), as nginx's
            // `proxy_pass` sends its own by default.
            continue;
        }
        // Left out, not removed afterwards: a removal would also reorder the others.
        if is_hop_by_hop(&name) || named.contains(&name) {
            continue;
        }
        // Only the values handed on are made: one left out is refused by nothing, as
        // before, since httparse accepted it and the bytes httparse accepts in a value are
        // the bytes `HeaderValue` accepts.
        let value = names
            .value(slot, raw_value)
            .map_err(|_| HeadError::InvalidHeaderValue)?;
        headers.append(name, value);
    }
    let framing = if bodiless {
        Framing::Length(0)
    } else if encodings > 0 {
        if encodings > 1 || !chunked || lengths > 0 || version == Version::HTTP_10 {
            return Err(HeadError::TransferEncoding);
        }
        Framing::Chunked
    } else if lengths > 1 {
        return Err(HeadError::RepeatedContentLength);
    } else if lengths == 1 {
        Framing::Length(length.ok_or(HeadError::InvalidContentLength)?)
    } else {
        Framing::Close
    };
    if framing == Framing::Close {
        keep_alive = false;
    }
    Ok((headers, framing, keep_alive))
}

/// `Content-Length`: digits only, as hyper reads it. Read digit by digit: 19 digits never
/// overflow a `u64` (no text made of it to parse: property-tested against `str::parse`).
fn parse_length(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(v.iter().fold(0, |n, d| n * 10 + u64::from(d - b'0')))
}

/// Whether a comma-separated header value holds `token` (ASCII case-insensitive).
fn has_token(v: &[u8], token: &[u8]) -> bool {
    v.split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::HeaderName;

    fn parse(bytes: &[u8], head: bool) -> Result<Option<Parsed>, HeadError> {
        parse_response(&mut BytesMut::from(bytes), head, &mut Names::default())
    }

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_are_left_out() {
        let head = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nX-Private: secret\r\n\
            Connection: keep-alive, X-Private\r\nKeep-Alive: timeout=5\r\nTrailer: x\r\n\
            Upgrade: h2c\r\nProxy-Connection: keep-alive\r\nTE: trailers\r\n\
            Set-Cookie: a=1\r\nSet-Cookie: b=2\r\nTransfer-Encoding: chunked\r\n\r\n";
        let p = parse(head.as_bytes(), false).unwrap().unwrap();
        assert_eq!(
            p.framing,
            Framing::Chunked,
            "read for the framing all the same"
        );
        assert!(p.keep_alive);
        let h = p.response.headers();
        let names: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        assert_eq!(names, ["content-type", "set-cookie"]);
        assert_eq!(h.get_all("set-cookie").iter().count(), 2);

        let p = parse(
            b"HTTP/1.1 204 No Content\r\nX-Private: b\r\nConnection: close\r\n\r\n",
            false,
        )
        .unwrap()
        .unwrap();
        assert!(!p.keep_alive);
        let names: Vec<&str> = p
            .response
            .headers()
            .keys()
            .map(HeaderName::as_str)
            .collect();
        assert_eq!(names, ["x-private"], "kept when no Connection names it");
    }

    #[test]
    fn console_date_and_content_length_are_left_to_hyper_where_a_body_follows() {
        let names = |p: &Parsed| -> Vec<String> {
            p.response
                .headers()
                .iter()
                .map(|(n, v)| format!("{n}: {}", v.to_str().unwrap()))
                .collect()
        };
        let head = "HTTP/1.1 200 OK\r\nServer: gunicorn\r\nDate: Wed, 25 Nov 2026 06:00:00 GMT\r\n\
            Content-Length: 3\r\nContent-Type: text/plain\r\n\r\nok\n";
        let p = parse(head.as_bytes(), false).unwrap().unwrap();
        assert_eq!(p.framing, Framing::Length(3));
        assert_eq!(names(&p), ["server: gunicorn", "content-type: text/plain"]);
        // Without a body to measure, Console's Content-Length is the only one there is.
        let p = parse(head.as_bytes(), true).unwrap().unwrap();
        assert_eq!(p.framing, Framing::Length(0));
        assert_eq!(
            names(&p),
            [
                "server: gunicorn",
                "content-length: 3",
                "content-type: text/plain"
            ]
        );
        for status in ["204 No Content", "304 Not Modified"] {
            let head = format!("HTTP/1.1 {status}\r\nDate: x\r\nContent-Length: 7\r\n\r\n");
            let p = parse(head.as_bytes(), false).unwrap().unwrap();
            assert_eq!(names(&p), ["content-length: 7"], "{status}");
        }
        // Still read for the framing: two lengths or a length with chunks are refused.
        for bad in [
            "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nok\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\nok\n",
        ] {
            assert!(parse(bad.as_bytes(), false).is_err(), "{bad}");
        }
    }

    #[test]
    fn framing_of_responses() {
        let f =
            |b: &str, head| parse(b.as_bytes(), head).map(|p| p.map(|p| (p.framing, p.keep_alive)));
        for (response, head, expected) in [
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n",
                false,
                Some((Framing::Length(3), true)),
            ),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n",
                true,
                Some((Framing::Length(0), true)),
            ),
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                false,
                Some((Framing::Chunked, true)),
            ),
            (
                "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\n",
                false,
                Some((Framing::Length(1), false)),
            ),
            (
                "HTTP/1.1 200 OK\r\n\r\n",
                false,
                Some((Framing::Close, false)),
            ),
            (
                "HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n",
                false,
                Some((Framing::Length(1), false)),
            ),
            (
                "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n",
                false,
                Some((Framing::Length(0), true)),
            ),
            ("HTTP/1.1 100 Continue\r\n\r\n", false, None),
            ("HTTP/1.1 200 OK\r\nContent-Len", false, None),
        ] {
            assert_eq!(f(response, head).unwrap(), expected, "{response:?}");
        }
        for refused in [
            "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: +3\r\n\r\n",
            "HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            "HTTP/1.1 101 Switching Protocols\r\n\r\n",
            "HTTP/1.1 200 OK\r\nA: b\r\n folded\r\n\r\n",
        ] {
            assert!(f(refused, false).is_err(), "{refused:?}");
        }
    }

    #[test]
    fn every_refused_head_says_why() {
        let cases: &[(&str, HeadError)] = &[
            ("HTTP/1.1 200 OK\r\nA: b\r\n folded\r\n\r\n", HeadError::Malformed),
            ("HTTP/2 200 OK\r\n\r\n", HeadError::Malformed),
            ("HTTP/1.1 2000 OK\r\n\r\n", HeadError::Malformed),
            ("HTTP/1.1 200 OK\r\nNo Colon\r\n\r\n", HeadError::Malformed),
            ("hello\r\n\r\n", HeadError::Malformed),
            ("HTTP/1.1 099 Early\r\n\r\n", HeadError::InvalidStatus),
            ("HTTP/1.1 000 Zero\r\n\r\n", HeadError::InvalidStatus),
            (
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n",
                HeadError::SwitchingProtocols,
            ),
            (
                "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 101 Switching Protocols\r\n\r\n",
                HeadError::SwitchingProtocols,
            ),
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
                HeadError::TransferEncoding,
            ),
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
                HeadError::TransferEncoding,
            ),
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
                HeadError::TransferEncoding,
            ),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
                HeadError::TransferEncoding,
            ),
            (
                "HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                HeadError::TransferEncoding,
            ),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n",
                HeadError::RepeatedContentLength,
            ),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
                HeadError::RepeatedContentLength,
            ),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: +3\r\n\r\n",
                HeadError::InvalidContentLength,
            ),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
                HeadError::InvalidContentLength,
            ),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 3, 3\r\n\r\n",
                HeadError::InvalidContentLength,
            ),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n",
                HeadError::InvalidContentLength,
            ),
        ];
        for (head, want) in cases {
            assert_eq!(
                parse(head.as_bytes(), false).err(),
                Some(*want),
                "head {head:?}"
            );
        }
        // Over the bounds: MAX_HEADERS header lines, MAX_HEAD bytes whether complete or not.
        let many = format!(
            "HTTP/1.1 200 OK\r\n{}\r\n",
            "A: b\r\n".repeat(MAX_HEADERS + 1)
        );
        assert_eq!(
            parse(many.as_bytes(), false).err(),
            Some(HeadError::TooManyHeaders)
        );
        let at_most = format!("HTTP/1.1 200 OK\r\n{}\r\n", "A: b\r\n".repeat(MAX_HEADERS));
        assert!(parse(at_most.as_bytes(), false).unwrap().is_some());
        let long = format!("HTTP/1.1 200 OK\r\nA: {}\r\n\r\n", "b".repeat(MAX_HEAD));
        assert_eq!(
            parse(long.as_bytes(), false).err(),
            Some(HeadError::TooLarge)
        );
        let cut = &long[..MAX_HEAD + 1];
        assert_eq!(
            parse(cut.as_bytes(), false).err(),
            Some(HeadError::TooLarge)
        );
        assert!(parse(&long.as_bytes()[..MAX_HEAD], false)
            .unwrap()
            .is_none());
    }

    #[test]
    fn refusals_keep_their_log_messages() {
        for (e, says) in [
            (HeadError::TooLarge, "response head too large"),
            (HeadError::TooManyHeaders, "too many response headers"),
            (HeadError::Malformed, "malformed response head"),
            (HeadError::InvalidStatus, "invalid status"),
            (
                HeadError::SwitchingProtocols,
                "101 to a request without Upgrade",
            ),
            (HeadError::InvalidHeaderName, "invalid header name"),
            (HeadError::InvalidHeaderValue, "invalid header value"),
            (HeadError::TransferEncoding, "transfer-encoding"),
            (HeadError::RepeatedContentLength, "repeated content-length"),
            (HeadError::InvalidContentLength, "invalid content-length"),
        ] {
            assert_eq!(e.to_string(), says);
            assert_eq!(
                crate::dataplane::upstream::UpstreamError::Head(e).to_string(),
                format!("the upstream's response is refused: {says}")
            );
        }
    }
}

/// Any bytes, in any pieces: the parser reads a head, refuses, or asks for more only while it
/// holds at most `MAX_HEAD` bytes; and whether it reads or refuses a head, and what it reads,
/// does not depend on how the bytes were cut.
#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    /// A head read (status, framing, keep-alive, the bytes after it), `Err(())` for a refusal
    /// (whose reason may depend on where the reads stopped: past the bound, `TooLarge` is found
    /// before what follows), `Ok(None)` for still asking.
    type Outcome = Result<Option<(u16, Framing, bool, Vec<u8>)>, ()>;

    /// Feeds `bytes` as `Pool::send` reads them: a piece only when the parser asks for more.
    fn feed(bytes: &[u8], pieces: &[usize]) -> Outcome {
        let (mut buf, mut names) = (BytesMut::new(), Names::default());
        let (mut fed, mut cut) = (0, pieces.iter().cycle());
        loop {
            if !buf.is_empty() {
                match parse_response(&mut buf, false, &mut names) {
                    Err(_) => return Err(()),
                    Ok(Some(p)) => {
                        let mut rest = buf.to_vec();
                        rest.extend_from_slice(&bytes[fed..]);
                        return Ok(Some((
                            p.response.status().as_u16(),
                            p.framing,
                            p.keep_alive,
                            rest,
                        )));
                    }
                    Ok(None) => assert!(
                        buf.len() <= MAX_HEAD,
                        "asks for more holding {} bytes",
                        buf.len()
                    ),
                }
            }
            if fed == bytes.len() {
                return Ok(None);
            }
            let n = (*cut.next().unwrap()).min(bytes.len() - fed);
            buf.extend_from_slice(&bytes[fed..fed + n]);
            fed += n;
        }
    }

    fn run(unit: &'static [u8], times: std::ops::Range<usize>) -> impl Strategy<Value = Vec<u8>> {
        times.prop_map(move |n| unit.repeat(n))
    }

    /// Heads biased to the hostile shapes: a header line or a status line that never ends,
    /// endless whitespace, empty lines or obs-fold, endless interim heads, near the bound and
    /// past it; and plain arbitrary bytes.
    fn head() -> impl Strategy<Value = Vec<u8>> {
        let end = prop::sample::select(vec![
            &b""[..],
            b"\r\n\r\n",
            b"\r\nContent-Length: 2\r\n\r\nok",
            b"\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        ]);
        let near = MAX_HEAD - 40..MAX_HEAD + 40;
        let hostile = prop_oneof![
            run(b"a", 0..100_000).prop_map(|r| [&b"HTTP/1.1 200 OK\r\nX-Long: "[..], &r].concat()),
            run(b"a", near.clone())
                .prop_map(|r| [&b"HTTP/1.1 200 OK\r\nX-Long: "[..], &r].concat()),
            run(b"r", 0..100_000).prop_map(|r| [&b"HTTP/1.1 200 "[..], &r].concat()),
            run(b" ", 0..100_000).prop_map(|r| [&b"HTTP/1.1 200 OK\r\nX:"[..], &r].concat()),
            run(b"\t ", 0..50_000).prop_map(|r| [&b"HTTP/1.1 200 OK\r\nA: b\r\n"[..], &r].concat()),
            run(b"\r\n", 0..50_000).prop_map(|r| [&r[..], b"HTTP/1.1 200 OK"].concat()),
            run(b"\r\n x", 0..20_000).prop_map(|r| [&b"HTTP/1.1 200 OK\r\nA: b"[..], &r].concat()),
            run(b"HTTP/1.1 100 Continue\r\n\r\n", 0..4_000).prop_map(|r| [
                &r[..],
                b"HTTP/1.1 204 No Content"
            ]
            .concat()),
            run(b"X: y\r\n", 0..200).prop_map(|r| [&b"HTTP/1.1 200 OK\r\n"[..], &r].concat()),
        ];
        prop_oneof![
            3 => (hostile, end).prop_map(|(h, e)| [&h[..], e].concat()),
            1 => prop::collection::vec(any::<u8>(), 0..2048),
            1 => prop::collection::vec(any::<u8>(), 0..512)
                .prop_map(|r| [&b"HTTP/1.1 200 OK\r\n"[..], &r].concat()),
        ]
    }

    /// Every header of a parsed head as (name, value bytes), in order.
    fn lines(p: &Parsed) -> Vec<(String, Vec<u8>)> {
        p.response
            .headers()
            .iter()
            .map(|(n, v)| (n.as_str().to_string(), v.as_bytes().to_vec()))
            .collect()
    }

    /// Response heads drawn from a few names and values, so that they repeat and change.
    fn answers() -> impl Strategy<Value = Vec<Vec<u8>>> {
        let name = prop::sample::select(vec![
            "Content-Type",
            "content-type",
            "Server",
            "Set-Cookie",
            "X-Frame-Options",
            "Vary",
            "X-Bad_Name",
        ]);
        let value = prop::sample::select(vec![
            &b"text/html; charset=utf-8"[..],
            b"text/plain",
            b"",
            b"gunicorn",
            b"s=1; Path=/",
            b"a\x7fb",
            b"\xe9t\xe9",
        ]);
        let head = prop::collection::vec((name, value), 0..6).prop_map(|lines| {
            let mut h = b"HTTP/1.1 200 OK\r\n".to_vec();
            for (n, v) in lines {
                h.extend_from_slice(n.as_bytes());
                h.extend_from_slice(b": ");
                h.extend_from_slice(v);
                h.extend_from_slice(b"\r\n");
            }
            h.extend_from_slice(b"Content-Length: 0\r\n\r\n");
            h
        });
        prop::collection::vec(head, 1..12)
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 96, failure_persistence: None, ..ProptestConfig::default() })]

        /// A connection's cache of names and values changes nothing: each answer of a sequence
        /// read with the connection's [`Names`] is what it is read alone, with none.
        #[test]
        fn a_connections_names_and_values_read_as_a_fresh_parse(heads in answers()) {
            let mut kept = Names::default();
            for head in heads {
                let with = parse_response(&mut BytesMut::from(&head[..]), false, &mut kept);
                let alone = parse_response(&mut BytesMut::from(&head[..]), false, &mut Names::default());
                match (with, alone) {
                    (Ok(Some(a)), Ok(Some(b))) => prop_assert_eq!(lines(&a), lines(&b)),
                    (Err(a), Err(b)) => prop_assert_eq!(a, b),
                    (a, b) => prop_assert!(false, "{:?} against {:?}", a.map(|p| p.map(|p| lines(&p))), b.map(|p| p.map(|p| lines(&p)))),
                }
            }
        }

        /// A `Content-Length` reads as its text parsed did.
        #[test]
        fn a_length_reads_as_its_text_parsed(v in "[0-9]{0,21}|[0-9+ a-]{0,4}") {
            let parsed = (!v.is_empty() && v.len() <= 19 && v.bytes().all(|b| b.is_ascii_digit()))
                .then(|| v.parse::<u64>().ok())
                .flatten();
            prop_assert_eq!(parse_length(v.as_bytes()), parsed);
        }

        #[test]
        fn head_parser_is_bounded_and_cut_independent(
            bytes in head(),
            pieces in prop::collection::vec(1usize..=16 * 1024, 1..8),
        ) {
            // `feed` checks the bound each time the parser asks for more.
            let whole = feed(&bytes, &[bytes.len().max(1)]);
            let cut = feed(&bytes, &pieces);
            prop_assert_eq!(cut, whole);
        }
    }
}
