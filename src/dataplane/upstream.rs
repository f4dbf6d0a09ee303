//! The upstream leg: one pool of HTTP/1.1 connections to Console per worker thread, and the body
//! types the data plane answers with.
//!
//! The leg is the gateway's own, written for the one job it has (a request decided on and read
//! whole, sent to one upstream; a response read back), because hyper's client connection costs a
//! task, a channel and a oneshot per request (the profile of issue 12). It reads responses the way
//! hyper's client does, or refuses them (502): `tests/api/upstream_differential.rs` sends the same
//! responses, byte for byte, to hyper's client and to this leg and compares status, headers and
//! body, and compares the request bytes each writes. Where the two differ this leg is the
//! stricter one, by design:
//! - a response head over [`MAX_HEAD`] bytes or with more than [`MAX_HEADERS`] headers;
//! - `Transfer-Encoding` other than one `chunked` header, or with `Content-Length`;
//! - more than one `Content-Length` (hyper merges identical ones);
//! - chunked trailers (hyper parses them; nothing forwards them to Console's clients);
//! - `101 Switching Protocols` (the gateway never asks for an upgrade).
//!
//! Two of Console's headers are not handed on where hyper's server writes them itself: `Date`
//! (the gateway's, as nginx's `proxy_pass` sends its own) and, where a body follows, the
//! `Content-Length` (hyper writes the exact length of the body it sends, which is the length
//! Console's header gave); the differential test compares that length instead of the header.
//!
//! A pool belongs to one worker thread, so a connection is never handed between threads (no
//! cross-thread wake-ups: see docs/performance-log.md). A connection returns to the pool
//! when its response has been read to the end, framed by length or chunks, on HTTP/1.1 without
//! `Connection: close`, with no byte left over. An idle connection that the upstream closed (or
//! that has bytes nobody asked for) is dropped before use. A request that was written to Console is
//! never sent twice: a connection that fails after the request was written is a 502.
//!
//! **Replaces** hyper's client (`hyper::client::conn::http1` + a pool, or hyper-util's legacy
//! client). **Gain**: the task, channel and oneshot per request hyper's client connection costs
//! (issue 12's profile; docs/performance-log.md has the paired runs that kept it). **Pinned by**
//! `tests/api/upstream_differential.rs` (the same bytes to hyper's client and to this leg).

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Response, StatusCode, Version};
use hyper::body::{Body, Frame, SizeHint};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::policy::target::{connection_tokens, is_hop_by_hop};

/// Idle connections kept per worker; more are closed when they become idle.
const MAX_IDLE: usize = 512;
/// Largest response head read from the upstream, in bytes.
pub const MAX_HEAD: usize = 64 * 1024;
/// Most header lines in a response head (hyper's default).
pub const MAX_HEADERS: usize = 100;
/// Largest chunk-size line (size and extensions), in bytes (hyper allows 16 KiB of extensions).
const MAX_CHUNK_LINE: usize = 16 * 1024;
/// Bytes asked of the kernel per read, at most.
const READ_SIZE: usize = 16 * 1024;
/// Room left in the read buffer below which more is reserved. Heads and short bodies are
/// copied out of it, so the room is reclaimed in place (the unread bytes moved to its start);
/// a long body split off it shares the buffer until sent, and a new one is then taken.
const MIN_READ: usize = 4 * 1024;
/// A whole body at most this long, already read with its head, is copied out of the read
/// buffer rather than split off it (splitting makes the buffer shared: atomic reference counts).
const COPY_BODY_MAX: usize = 4 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("cannot connect to the upstream: {0}")]
    Connect(#[source] io::Error),
    #[error("connecting to the upstream timed out")]
    ConnectTimeout,
    #[error("upstream connection failed: {0}")]
    Io(#[source] io::Error),
    #[error("the upstream closed the connection before a complete response")]
    Closed,
    #[error("the upstream's response is refused: {0}")]
    Malformed(&'static str),
}

fn malformed(why: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, UpstreamError::Malformed(why))
}

/// One connection to the upstream and the bytes read from it but not used yet.
pub struct Conn {
    io: TcpStream,
    buf: BytesMut,
    names: Names,
}

/// The header names already read on one connection, by their bytes as received. Console sends
/// the same few names in every answer; finding one here (a length and a byte comparison) is
/// cheaper than [`HeaderName::from_bytes`], which checks and lower-cases every byte and then
/// looks the name up among the standard ones. A name is only ever cached as `from_bytes` gave
/// it for exactly the same bytes, so the result is the same.
#[derive(Debug, Default)]
pub struct Names(Vec<(Box<[u8]>, HeaderName)>);

impl Names {
    /// Names kept per connection; others are checked each time.
    const MAX: usize = 32;

    fn get(&mut self, raw: &[u8]) -> Result<HeaderName, http::header::InvalidHeaderName> {
        if let Some((_, name)) = self.0.iter().find(|(seen, _)| **seen == *raw) {
            return Ok(name.clone());
        }
        let name = HeaderName::from_bytes(raw)?;
        if self.0.len() < Self::MAX {
            self.0.push((raw.into(), name.clone()));
        }
        Ok(name)
    }
}

impl Conn {
    /// Reads more bytes into the buffer; 0 at the end of the stream.
    async fn fill(&mut self) -> io::Result<usize> {
        std::future::poll_fn(|cx| self.poll_fill(cx)).await
    }

    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < MIN_READ {
            self.buf.reserve(READ_SIZE);
        }
        let read = std::pin::pin!(self.io.read_buf(&mut self.buf));
        std::future::Future::poll(read, cx)
    }

    /// Whether an idle connection can carry a request: not closed by the upstream, nothing
    /// unasked for in it. Readiness the driver has seen costs no system call; only a connection
    /// reported readable is read to find out.
    fn reusable(&self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match self.io.poll_read_ready(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            Poll::Ready(Ok(())) => {
                let mut probe = [0u8; 1];
                matches!(self.io.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            }
        }
    }
}

pub struct Pool {
    addr: SocketAddr,
    connect_timeout: Duration,
    idle: Mutex<Vec<Conn>>,
}

impl Pool {
    pub fn new(addr: SocketAddr, connect_timeout: Duration) -> Arc<Pool> {
        Arc::new(Pool {
            addr,
            connect_timeout,
            idle: Mutex::new(Vec::new()),
        })
    }

    /// The idle list; only its worker thread takes the lock, so it is never contended.
    fn idle(&self) -> MutexGuard<'_, Vec<Conn>> {
        self.idle
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    async fn connect(&self) -> Result<Conn, UpstreamError> {
        let io = tokio::time::timeout(self.connect_timeout, TcpStream::connect(self.addr))
            .await
            .map_err(|_| UpstreamError::ConnectTimeout)?
            .map_err(UpstreamError::Connect)?;
        if let Err(e) = io.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY on an upstream connection");
        }
        Ok(Conn {
            io,
            buf: BytesMut::new(),
            names: Names::default(),
        })
    }

    /// An idle connection that can carry a request, or a new one.
    async fn checkout(&self) -> Result<Conn, UpstreamError> {
        loop {
            let pooled = self.idle().pop();
            match pooled {
                Some(conn) if conn.reusable() => return Ok(conn),
                Some(_) => continue,
                None => return self.connect().await,
            }
        }
    }

    fn give_back(&self, conn: Conn) {
        let mut idle = self.idle();
        if idle.len() < MAX_IDLE {
            idle.push(conn);
        }
    }

    /// Writes a request (head and whole body) and reads the response head. A body read
    /// whole with the head is answered from memory (its connection is back in the pool at once);
    /// a longer one is streamed from the connection by [`UpstreamBody`].
    pub async fn send(
        self: &Arc<Self>,
        request: &[u8],
        head_request: bool,
    ) -> Result<Response<GatewayBody>, UpstreamError> {
        let mut conn = self.checkout().await?;
        conn.io
            .write_all(request)
            .await
            .map_err(UpstreamError::Io)?;
        let parsed = loop {
            if !conn.buf.is_empty() {
                if let Some(p) = parse_response(&mut conn.buf, head_request, &mut conn.names)? {
                    break p;
                }
                if conn.buf.len() > MAX_HEAD {
                    return Err(UpstreamError::Malformed("response head too large"));
                }
            }
            if conn.fill().await.map_err(UpstreamError::Io)? == 0 {
                return Err(UpstreamError::Closed);
            }
        };
        let Parsed {
            mut response,
            framing,
            keep_alive,
        } = parsed;
        let body = match framing {
            Framing::Length(0) => {
                self.finish(conn, keep_alive);
                GatewayBody::Own(None)
            }
            Framing::Length(n) if conn.buf.len() as u64 >= n => {
                let n = n as usize;
                // A small body is copied, so the read buffer is never shared (see
                // parse_response); a large one is split off without a copy.
                let body = if n <= COPY_BODY_MAX {
                    let body = Bytes::copy_from_slice(&conn.buf[..n]);
                    conn.buf.advance(n);
                    body
                } else {
                    conn.buf.split_to(n).freeze()
                };
                self.finish(conn, keep_alive);
                GatewayBody::Own(Some(body))
            }
            framing => GatewayBody::Upstream(UpstreamBody {
                conn: Some(conn),
                pool: self.clone(),
                decode: match framing {
                    Framing::Length(n) => Decode::Length(n),
                    Framing::Chunked => Decode::Chunked(Chunk::Size),
                    Framing::Close => Decode::Close,
                },
                keep_alive,
            }),
        };
        *response.body_mut() = body;
        Ok(response)
    }

    /// A response read to its end: its connection is kept if it can carry the next request.
    fn finish(&self, conn: Conn, keep_alive: bool) {
        if keep_alive && conn.buf.is_empty() {
            self.give_back(conn);
        }
    }
}

/// How a response body is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    Length(u64),
    Chunked,
    /// Read until the upstream closes the connection.
    Close,
}

/// A response head read from the upstream.
pub struct Parsed {
    pub response: Response<GatewayBody>,
    pub framing: Framing,
    /// HTTP/1.1 without `Connection: close`: the connection can carry another request.
    pub keep_alive: bool,
}

/// Parses a response head at the start of `buf`, skipping interim (1xx) responses, and takes
/// what it used out of `buf`. `Ok(None)`: more bytes are needed.
pub fn parse_response(
    buf: &mut BytesMut,
    head_request: bool,
    names: &mut Names,
) -> Result<Option<Parsed>, UpstreamError> {
    loop {
        // Uninitialised slots: filling 100 empty headers cost more than parsing the head.
        let mut slots =
            [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut res = httparse::Response::new(&mut []);
        let len = match httparse::ParserConfig::default()
            .parse_response_with_uninit_headers(&mut res, buf, &mut slots)
        {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => {
                return Err(UpstreamError::Malformed("too many response headers"))
            }
            Err(_) => return Err(UpstreamError::Malformed("malformed response head")),
        };
        if len > MAX_HEAD {
            return Err(UpstreamError::Malformed("response head too large"));
        }
        let code = res.code.unwrap_or(0);
        let status =
            StatusCode::from_u16(code).map_err(|_| UpstreamError::Malformed("invalid status"))?;
        let version = if res.version == Some(1) {
            Version::HTTP_11
        } else {
            Version::HTTP_10
        };
        match code {
            101 => return Err(UpstreamError::Malformed("101 to a request without Upgrade")),
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
        // The names and values are copied out of the read buffer (a few bytes each), not
        // shared with it: a shared buffer cost a split per response and two atomic reference
        // count updates per value (1.5% of the gateway's CPU in perf), and the buffer stays
        // one plain allocation, reused for the next response.
        //
        // The end-to-end headers only, in their order: the hop-by-hop ones, and those a
        // `Connection` header names, are read for the framing and never handed on (left out
        // here rather than removed later: each insertion and removal hashes the name).
        let count = res.headers.len();
        let mut headers = HeaderMap::with_capacity(count);
        let mut named = Vec::new();
        for h in res.headers.iter() {
            if h.name.as_bytes().eq_ignore_ascii_case(b"connection") {
                connection_tokens(h.value, &mut named);
            }
        }
        let mut keep_alive = version == Version::HTTP_11;
        let mut lengths = 0usize;
        let mut length = None;
        let mut encodings = 0usize;
        let mut chunked = false;
        // No body follows this head whatever it says (RFC 9112 §6.3).
        let bodiless = head_request || code == 204 || code == 304;
        for h in res.headers.iter() {
            let (raw_name, raw_value) = (h.name.as_bytes(), h.value);
            let name = names
                .get(raw_name)
                .map_err(|_| UpstreamError::Malformed("invalid header name"))?;
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
            let value = HeaderValue::from_bytes(raw_value)
                .map_err(|_| UpstreamError::Malformed("invalid header value"))?;
            headers.append(name, value);
        }
        let framing = if bodiless {
            Framing::Length(0)
        } else if encodings > 0 {
            if encodings > 1 || !chunked || lengths > 0 || version == Version::HTTP_10 {
                return Err(UpstreamError::Malformed("transfer-encoding"));
            }
            Framing::Chunked
        } else if lengths > 1 {
            return Err(UpstreamError::Malformed("repeated content-length"));
        } else if lengths == 1 {
            Framing::Length(length.ok_or(UpstreamError::Malformed("invalid content-length"))?)
        } else {
            Framing::Close
        };
        if framing == Framing::Close {
            keep_alive = false;
        }
        buf.advance(len);
        let mut response = Response::new(GatewayBody::Own(None));
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

/// `Content-Length`: digits only, as hyper reads it.
fn parse_length(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

/// Whether a comma-separated header value holds `token` (ASCII case-insensitive).
fn has_token(v: &[u8], token: &[u8]) -> bool {
    v.split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

/// Where a chunked body's decoder is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// At a chunk-size line.
    Size,
    /// Inside a chunk's data: this many bytes left, then CRLF.
    Data(u64),
    /// After a chunk's data: CRLF expected.
    DataEnd,
    /// After the last chunk's size line: CRLF expected (no trailers).
    End,
}

enum Decode {
    Length(u64),
    Chunked(Chunk),
    Close,
}

/// Console's response body, streamed to the client from its connection; the connection returns
/// to the pool at the end of the body.
pub struct UpstreamBody {
    conn: Option<Conn>,
    pool: Arc<Pool>,
    decode: Decode,
    keep_alive: bool,
}

/// A chunk-size line at the start of `buf`: the size, and the line's length with its CRLF.
/// `Ok(None)`: the line is not complete yet. The grammar is hyper's: hex digits, optional
/// spaces or tabs, optional `;` extensions (no bare LF), CRLF.
fn chunk_size_line(buf: &[u8]) -> io::Result<Option<(u64, usize)>> {
    let mut size: u64 = 0;
    let mut i = 0;
    let mut digits = 0;
    while i < buf.len() {
        let d = match buf[i] {
            b @ b'0'..=b'9' => b - b'0',
            b @ b'a'..=b'f' => b - b'a' + 10,
            b @ b'A'..=b'F' => b - b'A' + 10,
            _ => break,
        };
        size = size
            .checked_mul(16)
            .and_then(|s| s.checked_add(u64::from(d)))
            .ok_or_else(|| malformed("chunk size overflows"))?;
        digits += 1;
        i += 1;
    }
    if i == buf.len() {
        return Ok(None);
    }
    if digits == 0 {
        return Err(malformed("invalid chunk size"));
    }
    while i < buf.len() && matches!(buf[i], b' ' | b'\t') {
        i += 1;
    }
    if i < buf.len() && buf[i] == b';' {
        while i < buf.len() && buf[i] != b'\r' {
            if buf[i] == b'\n' {
                return Err(malformed("chunk extension contains a newline"));
            }
            i += 1;
        }
    }
    if i >= buf.len() {
        return if buf.len() > MAX_CHUNK_LINE {
            Err(malformed("chunk extensions too long"))
        } else {
            Ok(None)
        };
    }
    if buf[i] != b'\r' {
        return Err(malformed("invalid chunk size line"));
    }
    if i + 1 >= buf.len() {
        return Ok(None);
    }
    if buf[i + 1] != b'\n' {
        return Err(malformed("invalid chunk size line"));
    }
    Ok(Some((size, i + 2)))
}

impl UpstreamBody {
    /// The next piece of body from what is buffered: `Ok(Some(bytes))` (possibly empty when
    /// only framing was used), or `Ok(None)` when more bytes must be read. Sets `done` at the end.
    fn step(&mut self, done: &mut bool) -> io::Result<Option<Bytes>> {
        let conn = self
            .conn
            .as_mut()
            .expect("a body being read has its connection");
        let buf = &mut conn.buf;
        match &mut self.decode {
            Decode::Length(left) => {
                if buf.is_empty() {
                    return Ok(None);
                }
                let n = (*left).min(buf.len() as u64) as usize;
                *left -= n as u64;
                *done = *left == 0;
                Ok(Some(buf.split_to(n).freeze()))
            }
            Decode::Close => {
                if buf.is_empty() {
                    return Ok(None);
                }
                Ok(Some(buf.split().freeze()))
            }
            Decode::Chunked(state) => loop {
                match *state {
                    Chunk::Size => match chunk_size_line(buf)? {
                        None => return Ok(None),
                        Some((0, used)) => {
                            buf.advance(used);
                            *state = Chunk::End;
                        }
                        Some((n, used)) => {
                            buf.advance(used);
                            *state = Chunk::Data(n);
                        }
                    },
                    Chunk::Data(left) => {
                        if buf.is_empty() {
                            return Ok(None);
                        }
                        let n = left.min(buf.len() as u64) as usize;
                        *state = if left == n as u64 {
                            Chunk::DataEnd
                        } else {
                            Chunk::Data(left - n as u64)
                        };
                        return Ok(Some(buf.split_to(n).freeze()));
                    }
                    Chunk::DataEnd | Chunk::End => {
                        let seen = &buf[..buf.len().min(2)];
                        if !b"\r\n".starts_with(seen) {
                            return Err(malformed(if *state == Chunk::End {
                                "chunked trailers are refused"
                            } else {
                                "invalid chunk end"
                            }));
                        }
                        if seen.len() < 2 {
                            return Ok(None);
                        }
                        buf.advance(2);
                        if *state == Chunk::End {
                            *done = true;
                            return Ok(Some(Bytes::new()));
                        }
                        *state = Chunk::Size;
                    }
                }
            },
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
        loop {
            if this.conn.is_none() {
                return Poll::Ready(None);
            }
            let mut done = false;
            let step = this.step(&mut done);
            match step {
                Err(e) => {
                    // A broken body leaves the connection in an unknown state: it is not reused.
                    this.conn = None;
                    return Poll::Ready(Some(Err(e)));
                }
                Ok(Some(bytes)) => {
                    if done {
                        if let Some(conn) = this.conn.take() {
                            this.pool.finish(conn, this.keep_alive);
                        }
                    }
                    if bytes.is_empty() {
                        continue;
                    }
                    return Poll::Ready(Some(Ok(Frame::data(bytes))));
                }
                Ok(None) => {
                    let conn = this.conn.as_mut().expect("checked above");
                    match ready!(conn.poll_fill(cx)) {
                        Ok(0) => {
                            this.conn = None;
                            if matches!(this.decode, Decode::Close) {
                                return Poll::Ready(None);
                            }
                            return Poll::Ready(Some(Err(io::Error::new(
                                io::ErrorKind::UnexpectedEof,
                                UpstreamError::Closed,
                            ))));
                        }
                        Ok(_) => {}
                        Err(e) => {
                            this.conn = None;
                            return Poll::Ready(Some(Err(e)));
                        }
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.conn.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        match self.decode {
            Decode::Length(n) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }
}

/// What the gateway answers with: its own short text (or a body read whole with its head), or
/// Console's streamed body.
pub enum GatewayBody {
    Own(Option<Bytes>),
    Upstream(UpstreamBody),
}

impl GatewayBody {
    pub fn text(s: &'static str) -> GatewayBody {
        GatewayBody::Own(Some(Bytes::from_static(s.as_bytes())))
    }

    pub fn bytes(b: impl Into<Bytes>) -> GatewayBody {
        GatewayBody::Own(Some(b.into()))
    }
}

impl Body for GatewayBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        match self.get_mut() {
            GatewayBody::Own(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            GatewayBody::Upstream(p) => Pin::new(p).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            GatewayBody::Own(b) => b.is_none(),
            GatewayBody::Upstream(p) => p.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            GatewayBody::Own(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            GatewayBody::Upstream(p) => p.size_hint(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(bytes: &[u8], head: bool) -> Result<Option<Parsed>, UpstreamError> {
        parse_response(&mut BytesMut::from(bytes), head, &mut Names::default())
    }

    #[test]
    fn cached_header_names_are_what_from_bytes_gives() {
        let mut names = Names::default();
        for _ in 0..2 {
            for raw in [
                &b"Content-Type"[..],
                b"content-type",
                b"X-Custom",
                b"x-custom",
            ] {
                assert_eq!(
                    names.get(raw).unwrap(),
                    HeaderName::from_bytes(raw).unwrap()
                );
            }
            assert!(names.get(b"bad name").is_err());
            assert!(names.get(b"").is_err());
        }
        assert_eq!(
            names.0.len(),
            4,
            "one entry per spelling, none for a refused name"
        );
        for i in 0..100 {
            let raw = format!("x-{i}");
            assert_eq!(names.get(raw.as_bytes()).unwrap().as_str(), raw);
        }
        assert_eq!(names.0.len(), Names::MAX);
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
    fn chunk_size_lines() {
        assert_eq!(chunk_size_line(b"1a\r\n").unwrap(), Some((26, 4)));
        assert_eq!(chunk_size_line(b"A ;x=y\r\n").unwrap(), Some((10, 8)));
        assert_eq!(chunk_size_line(b"0\r\n").unwrap(), Some((0, 3)));
        assert_eq!(chunk_size_line(b"10").unwrap(), None);
        assert_eq!(chunk_size_line(b"10\r").unwrap(), None);
        for bad in [
            &b"\r\n"[..],
            b"x\r\n",
            b"1;a\nb\r\n",
            b"1 2\r\n",
            b"1\rx",
            b"11111111111111111\r\n",
        ] {
            assert!(chunk_size_line(bad).is_err(), "{bad:?}");
        }
    }
}
