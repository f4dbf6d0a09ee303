//! The gateway's own upstream leg (`rbac_gateway::dataplane::upstream`) against hyper's client (issue 12).
//!
//! Thousands of seeded responses (interim 1xx heads, status lines and reason phrases, HTTP/1.0
//! and 1.1, `Connection` tokens, obs-fold and odd header lines, every framing: `Content-Length`
//! right, short, long, repeated, signed; `Transfer-Encoding` chunked in several spellings, with
//! `Content-Length`, repeated; close-delimited; chunked bodies with extensions, upper-case hex,
//! whitespace, trailers, and broken size lines, data and CRLFs; HEAD requests, 204 and 304) are
//! written, byte for byte and cut into random pieces, by a raw TCP server to each of:
//!
//! * hyper's client connection (`hyper::client::conn::http1`), the reading the gateway used
//!   before, and
//! * the gateway's `upstream::Pool::send`.
//!
//! For every case: when the gateway's leg accepts the response, hyper accepts it and both read
//! the same status, version, reason phrase, headers (in order; the gateway's leg leaves out the
//! hop-by-hop ones, so they are taken out of hyper's reading first) and body; when hyper refuses it,
//! the gateway refuses it; the gateway may refuse what hyper accepts only for the cases its
//! module documentation names (trailers, unusual transfer codings, repeated Content-Length, 101,
//! a chunk-size line over 16 KiB). Chunk-size lines of any length, extensions and trailers are
//! run through both by a test of their own, and an endless chunk-size line through the running
//! gateway.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use rbac_gateway::dataplane::upstream::Pool;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::helpers::{core_routes, eventually, request_bytes, Gateway, GatewayOpts, Rng, TestDb};

/// A deadline for an exchange no case of these tests reaches.
fn later() -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_secs(60)
}

/// One generated response and what is known of it.
struct Case {
    bytes: Vec<u8>,
    head: bool,
    /// Something the gateway's leg refuses by design although hyper reads it.
    strict: Vec<&'static str>,
}

const STATUS: &[&str] = &[
    "HTTP/1.1 200 OK",
    "HTTP/1.1 200 OK",
    "HTTP/1.1 200 OK",
    "HTTP/1.0 200 OK",
    "HTTP/1.1 404 Not Found",
    "HTTP/1.1 403 Forbidden",
    "HTTP/1.1 302 Found",
    "HTTP/1.1 500 Internal Server Error",
    "HTTP/1.1 200 Everything Fine",
    "HTTP/1.1 200 ",
    "HTTP/1.1 200",
    "HTTP/1.1 204 No Content",
    "HTTP/1.1 304 Not Modified",
    "HTTP/1.1 101 Switching Protocols",
    "HTTP/1.1 999 Odd",
    "HTTP/1.1 099 Low",
    "HTTP/1.1 20 Short",
    "HTTP/1.1 2000 Long",
    "http/1.1 200 OK",
    "HTTP/2 200 OK",
    "HTTP/1.1  200 OK",
    "HTTP/1.1 200 OK\u{7f}",
    "HTTP/1.1 200 r\u{e9}sum\u{e9}",
];

const INTERIM: &[&str] = &[
    "HTTP/1.1 100 Continue\r\n\r\n",
    "HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n",
    "HTTP/1.1 102 Processing\r\n\r\n",
];

const HEADERS: &[&str] = &[
    "Content-Type: text/html; charset=utf-8",
    "Set-Cookie: a=1; Path=/",
    "Set-Cookie: b=2; HttpOnly",
    "X-Custom: value",
    "x-custom: second",
    "Connection: close",
    "Connection: keep-alive",
    "Connection: Keep-Alive, Close",
    "Connection: keep-alive, X-Custom",
    "Connection: Vary ,  set-cookie",
    "Keep-Alive: timeout=5",
    "Proxy-Connection: keep-alive",
    "Trailer: X-Sum",
    "Upgrade: h2c",
    "Vary: Cookie",
    "Empty:",
    "Spaces:    padded   ",
    "Tab:\tx",
    "X-Obs: caf\u{e9}",
    "X-Fold: a\r\n folded",
    "X-Space : before colon",
    "Bad Name: x",
    "X-Ctl: a\u{1}b",
    "X-Bare-LF: a\nX-After: b",
    ": no name",
    "Cache-Control: no-store",
    "X-Long: ",
    "Date: Wed, 25 Nov 2026 06:00:00 GMT",
    "date: odd\u{e9}",
];

fn chunked_body(rng: &mut Rng, body: &[u8], strict: &mut Vec<&'static str>) -> Vec<u8> {
    let mut out = Vec::new();
    let mut rest = body;
    while !rest.is_empty() {
        let n = 1 + rng.below(rest.len().min(9));
        let size = match rng.below(6) {
            0 => format!("{n:X}"),
            1 => format!("00{n:x}"),
            _ => format!("{n:x}"),
        };
        out.extend_from_slice(size.as_bytes());
        match rng.below(12) {
            0 => out.extend_from_slice(b";ext=1"),
            1 => out.extend_from_slice(b" ;a"),
            2 => out.extend_from_slice(b"\t"),
            3 if rng.pct(30) => out.extend_from_slice(b";a\nb"),
            4 if rng.pct(30) => out.extend_from_slice(b"x"),
            5 if rng.pct(20) => out.extend_from_slice(b" 1"),
            _ => {}
        }
        out.extend_from_slice(match rng.below(20) {
            0 => b"\n",
            1 => b"\r",
            _ => b"\r\n",
        });
        out.extend_from_slice(&rest[..n]);
        rest = &rest[n..];
        out.extend_from_slice(match rng.below(25) {
            0 => b"\n",
            1 => b"",
            2 => b"\r\r\n",
            _ => b"\r\n",
        });
    }
    if rng.pct(90) {
        out.extend_from_slice(if rng.pct(10) { b"0;last\r\n" } else { b"0\r\n" });
        match rng.below(10) {
            0 => {
                out.extend_from_slice(b"X-Trailer: t\r\n\r\n");
                strict.push("trailers");
            }
            1 => out.extend_from_slice(b"X-Trailer: t\r\n"),
            2 => out.extend_from_slice(b"\n"),
            _ => out.extend_from_slice(b"\r\n"),
        }
    }
    out
}

fn generate(rng: &mut Rng) -> Case {
    let mut strict = Vec::new();
    let head = rng.pct(10);
    let mut out = Vec::new();
    if rng.pct(15) {
        out.extend_from_slice(rng.pick(INTERIM).as_bytes());
        if rng.pct(20) {
            out.extend_from_slice(rng.pick(INTERIM).as_bytes());
        }
    }
    let status = if rng.pct(75) {
        STATUS[0]
    } else {
        *rng.pick(STATUS)
    };
    if status.contains(" 101 ") {
        strict.push("101");
    }
    out.extend_from_slice(status.as_bytes());
    out.extend_from_slice(if rng.pct(97) { b"\r\n" } else { b"\n" });
    for _ in 0..rng.below(5) {
        let h = if rng.pct(70) {
            HEADERS[rng.below(9)]
        } else {
            *rng.pick(HEADERS)
        };
        out.extend_from_slice(h.as_bytes());
        if h == "X-Long: " {
            out.extend(std::iter::repeat_n(b'v', 1 + rng.below(3000)));
        }
        out.extend_from_slice(b"\r\n");
    }
    let body: Vec<u8> = (0..rng.below(40))
        .map(|i| b"abcdefghij\r\n0123456789"[i % 22])
        .collect();
    let mut body_bytes = body.clone();
    match rng.below(14) {
        0..=4 => {
            let len = match rng.below(8) {
                0 => body.len() + 1 + rng.below(5),
                1 => body.len().saturating_sub(1 + rng.below(5)),
                _ => body.len(),
            };
            out.extend_from_slice(format!("Content-Length: {len}\r\n").as_bytes());
            match rng.below(14) {
                0 => {
                    out.extend_from_slice(format!("Content-Length: {len}\r\n").as_bytes());
                    strict.push("repeated content-length");
                }
                1 => out.extend_from_slice(format!("Content-Length: {}\r\n", len + 1).as_bytes()),
                2 => out.extend_from_slice(b"Content-Length: +1\r\n"),
                _ => {}
            }
        }
        5..=9 => {
            let te = match rng.below(12) {
                0 => {
                    strict.push("transfer-encoding spelling");
                    "Transfer-Encoding: gzip, chunked"
                }
                1 => {
                    strict.push("transfer-encoding spelling");
                    "Transfer-Encoding: gzip"
                }
                2 => "Transfer-Encoding: Chunked",
                3 => {
                    strict.push("transfer-encoding spelling");
                    "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked"
                }
                4 => {
                    strict.push("transfer-encoding with content-length");
                    "Transfer-Encoding: chunked\r\nContent-Length: 3"
                }
                _ => "Transfer-Encoding: chunked",
            };
            out.extend_from_slice(te.as_bytes());
            out.extend_from_slice(b"\r\n");
            body_bytes = chunked_body(rng, &body, &mut strict);
        }
        10 => {
            out.extend_from_slice(b"Content-Length: x3\r\n");
        }
        _ => {} // close-delimited
    }
    out.extend_from_slice(if rng.pct(97) { b"\r\n" } else { b"\n" });
    out.extend_from_slice(&body_bytes);
    if rng.pct(5) {
        out.truncate(rng.below(out.len() + 1));
    }
    Case {
        bytes: out,
        head,
        strict,
    }
}

/// What a client read: status, version, reason, headers in order, body; or that it refused.
/// `Content-Length` is compared by its value apart from the other headers, and `Date` not at
/// all: where a body follows, the gateway's leg leaves Console's `Content-Length` for hyper's
/// server to write from the body's exact length (`length`, at the end of the head), and it
/// never hands Console's `Date` on (hyper's server writes the gateway's own).
#[derive(Debug, PartialEq, Eq)]
struct Read {
    status: u16,
    version: http::Version,
    reason: Option<Vec<u8>>,
    headers: Vec<(String, Vec<u8>)>,
    length: Option<u64>,
    body: Vec<u8>,
}

/// `length`: the body's exact length, for a response whose `Content-Length` the reader left to
/// the server writing it on; otherwise the `Content-Length` read is the one compared.
fn read_of<B>(resp: &http::Response<B>, body: Vec<u8>, length: Option<u64>) -> Read {
    let header_length = resp
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| {
            v.to_str()
                .ok()?
                .split(',')
                .next()?
                .trim()
                .parse::<u64>()
                .ok()
        });
    Read {
        length: header_length.or(length),
        status: resp.status().as_u16(),
        version: resp.version(),
        reason: resp
            .extensions()
            .get::<hyper::ext::ReasonPhrase>()
            .map(|r| r.as_bytes().to_vec()),
        headers: resp
            .headers()
            .iter()
            .filter(|(n, _)| **n != http::header::CONTENT_LENGTH && **n != http::header::DATE)
            .map(|(n, v)| (n.as_str().to_string(), v.as_bytes().to_vec()))
            .collect(),
        body,
    }
}

/// A one-shot server: reads a request head, writes `bytes` in random pieces, closes.
/// Reads a request head from `s` (up to its blank line, or until the peer stops sending).
async fn read_head(s: &mut TcpStream) -> Vec<u8> {
    let mut req = Vec::new();
    let mut buf = [0u8; 4096];
    while !req.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => req.extend_from_slice(&buf[..n]),
        }
    }
    req
}

async fn serve_once(bytes: Vec<u8>, seed: u64) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut req = Vec::new();
        let mut buf = [0u8; 1024];
        while !req.windows(4).any(|w| w == b"\r\n\r\n") {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => req.extend_from_slice(&buf[..n]),
            }
        }
        let mut rng = Rng(seed);
        let mut rest = &bytes[..];
        while !rest.is_empty() {
            let piece = if rng.pct(50) { 7 } else { 4096 };
            let n = 1 + rng.below(rest.len().min(piece));
            if s.write_all(&rest[..n]).await.is_err() {
                return;
            }
            rest = &rest[n..];
            if rng.pct(30) {
                tokio::task::yield_now().await;
            }
        }
        // Why ignored: the client may have hung up already (it refused the response).
        let _ = s.shutdown().await;
        // Hold the socket until the client is done, so a reset cannot overtake the bytes.
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await;
    });
    addr
}

async fn via_hyper(case: &Case, seed: u64) -> Result<Read, String> {
    let addr = serve_once(case.bytes.clone(), seed).await;
    let stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        // Why ignored: the result reaches the caller through the response.
        let _ = conn.await;
    });
    let req = http::Request::builder()
        .method(if case.head { "HEAD" } else { "GET" })
        .uri("/x")
        .header("host", "console")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let (mut parts, body) = resp.into_parts();
    let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
    end_to_end_only(&mut parts.headers);
    Ok(read_of(
        &http::Response::from_parts(parts, ()),
        body.to_vec(),
        None,
    ))
}

/// hyper's client hands on every header; the gateway's leg hands on the end-to-end ones only
/// (RFC 9110 §7.6.1), in their order: the hop-by-hop headers and those a `Connection` header
/// names go.
fn end_to_end_only(h: &mut http::HeaderMap) {
    let mut gone: Vec<String> = [
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    ]
    .map(String::from)
    .to_vec();
    for v in h.get_all("connection") {
        for token in String::from_utf8_lossy(v.as_bytes()).split(',') {
            gone.push(token.trim().to_ascii_lowercase());
        }
    }
    let mut kept = http::HeaderMap::new();
    for (name, value) in h.iter() {
        if !gone.iter().any(|g| g == name.as_str()) {
            kept.append(name.clone(), value.clone());
        }
    }
    *h = kept;
}

async fn via_gateway(case: &Case, seed: u64) -> Result<Read, String> {
    let addr = serve_once(case.bytes.clone(), seed).await;
    let pool = Pool::new(addr, Duration::from_secs(5), Duration::from_secs(5));
    let request = format!(
        "{} /x HTTP/1.1\r\nhost: console\r\n\r\n",
        if case.head { "HEAD" } else { "GET" }
    );
    let resp = pool
        .send(request.as_bytes(), case.head, later())
        .await
        .map_err(|e| e.to_string())?;
    let (parts, body) = resp.into_parts();
    assert!(
        parts.headers.get(http::header::DATE).is_none(),
        "Console's Date is never handed on"
    );
    // Where a body may follow, hyper's server writes `content-length` from its exact length.
    let bodiless = case.head || parts.status == 204 || parts.status == 304;
    let length = (!bodiless)
        .then(|| hyper::body::Body::size_hint(&body).exact())
        .flatten();
    let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok(read_of(
        &http::Response::from_parts(parts, ()),
        body.to_vec(),
        length,
    ))
}

fn show(b: &[u8]) -> String {
    String::from_utf8_lossy(b).escape_debug().to_string()
}

#[tokio::test]
async fn the_upstream_leg_reads_responses_as_hyper_does_or_refuses_them() {
    let cases: u64 = std::env::var("UPSTREAM_DIFF_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3000);
    let mut rng = Rng(0x005e_ed12);
    let (mut same_ok, mut same_err, mut stricter) = (0, 0, 0);
    let mut strict_kinds = std::collections::BTreeMap::<&str, usize>::new();
    let mut failures = Vec::new();
    for i in 0..cases {
        let case = generate(&mut rng);
        let seed = rng.next();
        let limit = Duration::from_secs(10);
        let hyper = tokio::time::timeout(limit, via_hyper(&case, seed))
            .await
            .unwrap_or_else(|_| Err("timed out".into()));
        let ours = tokio::time::timeout(limit, via_gateway(&case, seed))
            .await
            .unwrap_or_else(|_| Err("timed out".into()));
        match (&hyper, &ours) {
            (Ok(h), Ok(o)) if h == o => same_ok += 1,
            (Err(_), Err(o)) if o != "timed out" => same_err += 1,
            (Ok(_), Err(_)) if !case.strict.is_empty() => {
                stricter += 1;
                for k in &case.strict {
                    *strict_kinds.entry(k).or_default() += 1;
                }
            }
            _ => failures.push(format!(
                "case {i}: {}{}\n  hyper: {hyper:?}\n  ours:  {ours:?}",
                if case.head { "(HEAD) " } else { "" },
                show(&case.bytes)
            )),
        }
    }
    println!(
        "upstream differential: {cases} responses; both read the same: {same_ok}; both refused: \
         {same_err}; refused by the gateway only (by design): {stricter} {strict_kinds:?}; \
         mismatches: {}",
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{} mismatches, first ones:\n{}",
        failures.len(),
        failures
            .iter()
            .take(8)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    // The corpus exercises both sides: plenty read alike, plenty refused alike.
    assert!(same_ok > cases / 3, "only {same_ok} read alike");
    assert!(same_err > cases / 10, "only {same_err} refused alike");
}

/// A connection goes back to the pool only when its response was read to the end and nothing
/// else came with it; a connection the upstream closed while idle is not used again.
#[tokio::test]
async fn connections_are_reused_only_when_clean() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = accepted.clone();
    // Connections this server closed after /close-after.
    let closed = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let closing = closed.clone();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let closing = closing.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                loop {
                    let n = match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    let req = String::from_utf8_lossy(&buf[..n]).to_string();
                    let resp: &[u8] = if req.contains("/close-after") {
                        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
                    } else if req.contains("/extra") {
                        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA"
                    } else if req.contains("/conn-close") {
                        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"
                    } else if req.contains("/chunked") {
                        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"
                    } else {
                        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
                    };
                    if s.write_all(resp).await.is_err() {
                        return;
                    }
                    if req.contains("/close-after") {
                        // Closes the connection while the gateway holds it idle.
                        drop(s);
                        closing.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        return;
                    }
                }
            });
        }
    });
    let pool = Pool::new(addr, Duration::from_secs(5), Duration::from_secs(5));
    let get = |path: &str| format!("GET {path} HTTP/1.1\r\nhost: console\r\n\r\n");
    let fetch = |path: &'static str| {
        let pool = pool.clone();
        let req = get(path);
        async move {
            let resp = pool.send(req.as_bytes(), false, later()).await.unwrap();
            resp.into_body().collect().await.unwrap().to_bytes()
        }
    };
    let n = || accepted.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(fetch("/a").await, "ok");
    assert_eq!(fetch("/a").await, "ok");
    assert_eq!(fetch("/chunked").await, "ok");
    assert_eq!(fetch("/a").await, "ok");
    assert_eq!(n(), 1, "keep-alive responses reuse one connection");
    assert_eq!(fetch("/extra").await, "ok");
    assert_eq!(fetch("/a").await, "ok");
    assert_eq!(n(), 2, "bytes after a response retire the connection");
    assert_eq!(fetch("/conn-close").await, "ok");
    assert_eq!(fetch("/a").await, "ok");
    assert_eq!(n(), 3, "Connection: close retires the connection");
    assert_eq!(fetch("/close-after").await, "ok");
    eventually(
        Duration::from_secs(5),
        "the upstream closed the idle connection",
        || async { closed.load(std::sync::atomic::Ordering::SeqCst) == 1 },
    )
    .await;
    assert_eq!(
        fetch("/a").await,
        "ok",
        "a connection closed while idle is not used"
    );
    assert_eq!(n(), 4);
}

/// Issue 50, item 4: chunk-size lines, extensions and trailers of any length, through hyper's
/// client and through the gateway's leg. Where they differ the gateway is the stricter by
/// design, and says so: it refuses a chunk-size line over `MAX_CHUNK_LINE` (16 KiB, CRLF
/// included) whatever its bytes, where hyper bounds only the extensions and reads any run of
/// leading `0`s or of spaces and tabs (it buffers nothing, so it reads an endless one forever).
#[tokio::test]
async fn long_chunk_size_lines_extensions_and_trailers_against_hyper() {
    use rbac_gateway::dataplane::upstream::MAX_CHUNK_LINE;
    #[derive(Debug, PartialEq)]
    enum Want {
        Same,
        /// The documented difference: hyper reads it, the gateway refuses a line over 16 KiB.
        GatewayRefusesLineOver16KiB,
        BothRefuse,
    }
    let run = |b: u8, n: usize| vec![b; n];
    let body = b"\r\nhello\r\n0\r\n\r\n";
    let cat = |parts: &[&[u8]]| parts.concat();
    let cases: Vec<(&str, Vec<u8>, Want)> = vec![
        (
            "leading zeros, a line of exactly 16 KiB",
            cat(&[&run(b'0', MAX_CHUNK_LINE - 3), b"5", body]),
            Want::Same,
        ),
        (
            "leading zeros, a line of 20 KiB",
            cat(&[&run(b'0', 20 * 1024), b"5", body]),
            Want::GatewayRefusesLineOver16KiB,
        ),
        (
            "200 KiB of zeros, then the upstream closes",
            run(b'0', 200 * 1024),
            Want::BothRefuse,
        ),
        (
            "spaces, a line of exactly 16 KiB",
            cat(&[b"5", &run(b' ', MAX_CHUNK_LINE - 3), body]),
            Want::Same,
        ),
        (
            "spaces, a line of 20 KiB",
            cat(&[b"5", &run(b' ', 20 * 1024), body]),
            Want::GatewayRefusesLineOver16KiB,
        ),
        (
            "tabs, a line of 20 KiB",
            cat(&[b"5", &run(b'\t', 20 * 1024), body]),
            Want::GatewayRefusesLineOver16KiB,
        ),
        (
            "200 KiB of spaces, then the upstream closes",
            cat(&[b"5", &run(b' ', 200 * 1024)]),
            Want::BothRefuse,
        ),
        (
            "extensions of 20 KiB (hyper's limit is 16 KiB of them)",
            cat(&[b"5;", &run(b'a', 20 * 1024), body]),
            Want::BothRefuse,
        ),
        (
            "a trailer of 20 KiB",
            cat(&[
                b"5\r\nhello\r\n0\r\nX-T: ",
                &run(b'a', 20 * 1024),
                b"\r\n\r\n",
            ]),
            Want::BothRefuse,
        ),
    ];
    let mut failures = Vec::new();
    for (i, (name, chunked, want)) in cases.into_iter().enumerate() {
        let case = Case {
            bytes: cat(&[
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                &chunked,
            ]),
            head: false,
            strict: Vec::new(),
        };
        let seed = 0x0050_0004 + i as u64;
        let limit = Duration::from_secs(20);
        let hyper = tokio::time::timeout(limit, via_hyper(&case, seed))
            .await
            .unwrap_or_else(|_| Err("timed out".into()));
        let ours = tokio::time::timeout(limit, via_gateway(&case, seed))
            .await
            .unwrap_or_else(|_| Err("timed out".into()));
        let got = match (&hyper, &ours) {
            (Ok(h), Ok(o)) if h == o => Want::Same,
            (Ok(h), Err(o)) if h.body == b"hello" && o.contains("chunk size line too long") => {
                Want::GatewayRefusesLineOver16KiB
            }
            (Err(h), Err(o)) if h != "timed out" && o != "timed out" => Want::BothRefuse,
            _ => {
                failures.push(format!("{name}: hyper {hyper:?}, ours {ours:?}"));
                continue;
            }
        };
        if got == Want::GatewayRefusesLineOver16KiB {
            println!("{name}: hyper reads it, the gateway refuses it by design: {ours:?}");
        }
        if got != want {
            failures.push(format!(
                "{name}: want {want:?}, got {got:?}: hyper {hyper:?}, ours {ours:?}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// What the upstream below is told to send after a chunked head: `prefix`, then `unit` again
/// and again until the gateway closes the connection (or `ENDLESS_CAP` bytes, a failure).
struct Filler {
    prefix: Vec<u8>,
    unit: Option<&'static [u8]>,
}

/// How far an endless upstream goes before the test calls it endless.
const ENDLESS_CAP: usize = 64 * 1024 * 1024;

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/<pid>/status")
}

/// Issue 50, item 4, against the running gateway (the real binary): Console answers `200`,
/// chunked, then a chunk-size line that never ends, of `0`s (the case found by fuzzing: the
/// gateway used to buffer it all, rescanning it per read, 331 MB of RSS after 17 s), of spaces,
/// of tabs, of extension bytes; or trailers that never end. The gateway refuses each once the
/// line passes 16 KiB and closes Console's connection: the upstream's writes fail after at most
/// the gateway's bound, one read and the two sockets' kernel buffers (the upstream's send
/// buffer set to 16 KiB), asserted under 1 MiB where the old gateway read on to the cap. The
/// client never gets a complete answer (in these runs its connection is closed before the head
/// is written: no data came before the refusal). The refusal of a body already streaming is not
/// logged by the gateway, so the test reads it from the sockets. A line of 20 KiB of `0`s
/// followed by a valid body is cut too: the documented difference from hyper, which would read
/// it (see `long_chunk_size_lines_extensions_and_trailers_against_hyper`).
#[tokio::test]
async fn the_running_gateway_cuts_an_endless_chunk_size_line_within_its_bound() {
    let db = TestDb::new().await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    let (fill_tx, mut fill_rx) = tokio::sync::mpsc::unbounded_channel::<Filler>();
    // (bytes sent after the head, whether a write failed: the gateway closed the connection)
    let (sent_tx, mut sent_rx) = tokio::sync::mpsc::unbounded_channel::<(usize, bool)>();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            read_head(&mut s).await;
            let mut buf = [0u8; 64];
            let Some(fill) = fill_rx.recv().await else {
                return;
            };
            socket2::SockRef::from(&s)
                .set_send_buffer_size(16 * 1024)
                .unwrap();
            let mut sent = 0;
            let mut closed = s
                .write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                .await
                .is_err()
                || s.write_all(&fill.prefix).await.is_err();
            sent += fill.prefix.len();
            if let Some(unit) = fill.unit {
                let piece = unit.repeat(4096 / unit.len());
                while !closed && sent < ENDLESS_CAP {
                    closed = s.write_all(&piece).await.is_err();
                    sent += piece.len();
                }
            } else {
                // Wait for the gateway to be done with the connection.
                closed = matches!(
                    tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await,
                    Ok(Ok(0) | Err(_))
                );
            }
            sent_tx.send((sent, closed)).unwrap();
        }
    });
    let gw = Gateway::start(GatewayOpts::new(core_routes(), &db, upstream)).await;
    let rss_before = rss_kib(gw.pid());
    let endless = |prefix: &[u8], unit: &'static [u8]| Filler {
        prefix: prefix.to_vec(),
        unit: Some(unit),
    };
    let mut zeros_then_body = vec![b'0'; 20 * 1024];
    zeros_then_body.extend_from_slice(b"5\r\nhello\r\n0\r\n\r\n");
    let scenarios = [
        ("endless 0s", endless(b"", b"0")),
        ("1 then endless spaces", endless(b"1", b" ")),
        ("1 then endless tabs", endless(b"1", b"\t")),
        ("1; then endless extension bytes", endless(b"1;", b"x=y;")),
        (
            "endless trailers after the last chunk",
            endless(b"2\r\nok\r\n0\r\n", b"X-T: a\r\n"),
        ),
        (
            "20 KiB of 0s, then a valid body (hyper reads it: the documented difference)",
            Filler {
                prefix: zeros_then_body,
                unit: None,
            },
        ),
    ];
    for (name, fill) in scenarios {
        fill_tx.send(fill).unwrap();
        let mut client = TcpStream::connect(gw.addr).await.unwrap();
        client
            .write_all(&request_bytes("GET", "/auth/login", None, &[], b""))
            .await
            .unwrap();
        let mut got = Vec::new();
        // Why the result is not needed: a cut answer may end in a reset instead of an EOF.
        let _ = tokio::time::timeout(Duration::from_secs(30), client.read_to_end(&mut got))
            .await
            .unwrap_or_else(|_| panic!("{name}: the client's answer never ended"));
        let (sent, closed) = tokio::time::timeout(Duration::from_secs(30), sent_rx.recv())
            .await
            .unwrap_or_else(|_| panic!("{name}: the upstream never stopped"))
            .unwrap();
        println!(
            "{name}: the upstream sent {sent} bytes after the head before the gateway closed \
             its connection; the client got {} bytes",
            got.len()
        );
        assert!(
            closed,
            "{name}: the gateway never closed the upstream's connection"
        );
        assert!(
            sent < 1024 * 1024,
            "{name}: the gateway read {sent} bytes of one line (cap {ENDLESS_CAP})"
        );
        let text = String::from_utf8_lossy(&got);
        assert!(
            got.is_empty() || text.starts_with("HTTP/1.1 200"),
            "{name}: {text:?}"
        );
        assert!(
            !text.ends_with("0\r\n\r\n") && !text.contains("hello"),
            "{name}: a complete answer: {text:?}"
        );
        assert!(
            got.len() < 4096,
            "{name}: {} bytes to the client",
            got.len()
        );
    }
    let rss_after = rss_kib(gw.pid());
    println!("the gateway's RSS: {rss_before} KiB before, {rss_after} KiB after");
    assert!(
        rss_after < rss_before + 16 * 1024,
        "the gateway's RSS grew from {rss_before} KiB to {rss_after} KiB"
    );
}

/// A Console that sends a head and part of its body and then goes silent holds neither the
/// client's connection nor its own past `--upstream-read-timeout-ms`: each wait for more of a
/// streamed body has that bound (before it, both sockets stayed open until the gateway stopped).
/// The client gets the head and the bytes that came, then its answer ends short.
#[tokio::test]
async fn a_console_that_goes_silent_mid_body_is_cut_after_the_read_timeout() {
    let db = TestDb::new().await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    // When the gateway closed Console's connection, measured from the partial body sent.
    let (closed_tx, mut closed_rx) = tokio::sync::mpsc::unbounded_channel::<Duration>();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            read_head(&mut s).await;
            let mut buf = [0u8; 64];
            s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\npartial")
                .await
                .unwrap();
            let sent = std::time::Instant::now();
            // Silent from here on; the read ends when the gateway closes the connection.
            if let Ok(Ok(0) | Err(_)) =
                tokio::time::timeout(Duration::from_secs(30), s.read(&mut buf)).await
            {
                closed_tx.send(sent.elapsed()).unwrap();
            }
        }
    });
    let gw = Gateway::start(
        GatewayOpts::new(core_routes(), &db, upstream)
            .arg("--upstream-read-timeout-ms")
            .arg("500"),
    )
    .await;
    let mut client = TcpStream::connect(gw.addr).await.unwrap();
    client
        .write_all(&request_bytes("GET", "/auth/login", None, &[], b""))
        .await
        .unwrap();
    let mut got = Vec::new();
    // Why the result is not needed: a cut answer may end in a reset instead of an EOF.
    let _ = tokio::time::timeout(Duration::from_secs(20), client.read_to_end(&mut got))
        .await
        .expect("the client's answer never ended: a silent Console held it");
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.starts_with("HTTP/1.1 200") && text.ends_with("partial"),
        "the head and the bytes that came, then the end: {text:?}"
    );
    let after = tokio::time::timeout(Duration::from_secs(20), closed_rx.recv())
        .await
        .expect("the gateway never closed Console's connection")
        .unwrap();
    assert!(
        after >= Duration::from_millis(400),
        "cut after {after:?}, before the read timeout"
    );
}
