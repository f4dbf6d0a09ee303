//! The upstream leg: one pool of HTTP/1.1 connections to Console per worker thread, the reading
//! of Console's answers, and the body types the data plane answers with.
//!
//! The leg is the gateway's own, written for the one job it has (a request decided on and read
//! whole, sent to one upstream; a response read back), because hyper's client connection costs a
//! task, a channel and a oneshot per request (a CPU profile showed it). It reads responses the way
//! hyper's client does, or refuses them (502): `tests/api/upstream_differential.rs` sends the same
//! responses, byte for byte, to hyper's client and to this leg and compares status, headers and
//! body, and compares the request bytes each writes. Where the two differ this leg is the
//! stricter one, by design:
//! - a response head over [`MAX_HEAD`] bytes or with more than [`MAX_HEADERS`] headers;
//! - `Transfer-Encoding` other than one `chunked` header, or with `Content-Length`;
//! - more than one `Content-Length` (hyper merges identical ones);
//! - chunked trailers (hyper parses them; nothing forwards them to Console's clients);
//! - a chunk-size line over [`MAX_CHUNK_LINE`] (16 KiB) bytes, whatever its bytes: hyper bounds
//!   only the extensions, and reads an endless run of leading `0`s or of spaces forever;
//! - `101 Switching Protocols` (the gateway never asks for an upgrade).
//!
//! Two of Console's headers are not handed on where hyper's server writes them itself: `Date`
//! (the gateway's, as nginx's `proxy_pass` sends its own) and, where a body follows, the
//! `Content-Length` (hyper writes the exact length of the body it sends, which is the length
//! Console's header gave); the differential test compares that length instead of the header.
//!
//! **Memory per connection, whatever Console sends.** A connection's read buffer holds at most
//! [`MAX_BUFFERED`] = [`MAX_HEAD`] + 16 KiB = 80 KiB of bytes read and not yet used: each parser
//! asks for more bytes only while it holds less than its bound, and a read adds at most 16 KiB
//! (`pool.rs`'s `READ_SIZE`). The bounds: a response head (interim ones included, one at a
//! time) is at most [`MAX_HEAD`] bytes, complete or not, whatever its bytes (a header line that
//! never ends, endless whitespace or empty lines: `head.rs`); a chunked body's framing, at most
//! [`MAX_CHUNK_LINE`] (16 KiB): a chunk-size line of any bytes, leading zeros, spaces and
//! extensions included, and two bytes after a chunk's data or the last chunk (trailers are
//! refused: `chunked.rs`); a chunk's data, or a body framed by length or by the connection's
//! end, is handed on as soon as it is read, and the next read waits until hyper's server takes
//! it. The buffer's allocation grows by doubling only while it holds these bytes, so it stays
//! within a small multiple of the bound. A connection holds no buffer at all while it holds no
//! byte: one waiting for Console's answer takes its buffer when the socket is reported readable
//! and gives it up when the read finds nothing, and an idle one in the pool has none (`pool.rs`;
//! with many client connections at Console, buffers held while waiting were a large part of
//! the gateway's memory: docs/performance-log.md). Each bound is checked on what is buffered,
//! complete or not, so whether a response is refused does not depend on how its bytes were cut into reads.
//! Pinned by the property tests of `head.rs` and `chunked.rs` (any bytes in any pieces) and by
//! `tests/api/upstream_differential.rs` (the running gateway against an endless chunk-size line).
//!
//! A pool belongs to one worker thread, so a connection is never handed between threads (no
//! cross-thread wake-ups: see docs/performance-log.md). A connection returns to the pool
//! when its response has been read to the end, framed by length or chunks, on HTTP/1.1 without
//! `Connection: close`, with no byte left over. An idle connection that the upstream closed (or
//! that has bytes nobody asked for) is dropped before use. A request that was written to Console is
//! never sent twice: a connection that fails after the request was written is a 502.
//!
//! The leg is one job in six files. Here: [`Pool::send`], a request written and its answer
//! read (the head parsed, the body framed), and [`UpstreamError`], what a failed exchange says.
//! `pool.rs`: the per-worker connection pool and one connection with its read buffer. `head.rs`:
//! the response-head parser ([`parse_response`]; sans-IO, a [`HeadError`] per refusal).
//! `names.rs`: a connection's header names and last values ([`Names`]), kept between answers.
//! `chunked.rs`: the chunked-body decoder ([`Chunk`]; sans-IO, a [`ChunkError`] per refusal).
//! `body.rs`: [`GatewayBody`], the body of every answer the data plane sends, and
//! [`UpstreamBody`], Console's body streamed from its connection.
//!
//! **Replaces** hyper's client (`hyper::client::conn::http1` + a pool, or hyper-util's legacy
//! client). **Gain**: the task, channel and oneshot per request hyper's client connection costs;
//! paired (the legacy client restored in one build, `scripts/bench/denials.sh` and
//! `scripts/bench/instructions.sh` in turns), the client cost more CPU and about twice the
//! instructions per allowed request (docs/performance-log.md). **Pinned by**
//! `tests/api/upstream_differential.rs` (the same bytes to hyper's client and to this leg).

mod body;
mod chunked;
mod head;
mod names;
mod pool;

use std::future::Future;
use std::io;
use std::sync::Arc;

use bytes::{Buf, Bytes};
use http::Response;
use tokio::io::AsyncWriteExt;

pub use body::{GatewayBody, UpstreamBody};
pub use chunked::{Chunk, ChunkError, MAX_CHUNK_LINE};
pub use head::{parse_response, Framing, HeadError, Parsed, MAX_HEAD, MAX_HEADERS};
pub use names::Names;
pub use pool::{Conn, Pool};

/// The most bytes a connection's read buffer holds, whatever the upstream sends: the largest
/// parser bound ([`MAX_HEAD`]; a chunked body's is [`MAX_CHUNK_LINE`]) plus one read.
pub const MAX_BUFFERED: usize = MAX_HEAD + pool::READ_SIZE;

/// A whole body at most this long, already read with its head, is copied out of the read
/// buffer rather than split off it (splitting makes the buffer shared: atomic reference counts).
const COPY_BODY_MAX: usize = 4 * 1024;

/// Why an exchange with the upstream failed (the proxy answers 504 to `ConnectTimeout`, 502 to
/// the others); its message is what the log line says.
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
    /// A response head refused. Not a `#[source]`: the message names it already (a source would
    /// say it twice wherever the chain is printed).
    #[error("the upstream's response is refused: {0}")]
    Head(HeadError),
    /// A chunked body refused (carried in the body's `io::Error`).
    #[error("the upstream's response is refused: {0}")]
    Chunked(ChunkError),
    /// A streamed body whose next bytes did not come within the read timeout (carried in the
    /// body's `io::Error`).
    #[error("the upstream sent no more of its body for {0:?}")]
    BodyTimeout(std::time::Duration),
    /// No response head by the exchange's deadline (`--upstream-read-timeout-ms` from when the
    /// request went out): the proxy answers 504.
    #[error("the upstream did not answer in time")]
    ReadTimeout,
}

impl Pool {
    /// Writes a request (head and whole body) and reads the response head, both by `deadline`
    /// ([`UpstreamError::ReadTimeout`] past it). A body read whole with the head is answered
    /// from memory (its connection is back in the pool at once); a longer one is streamed from
    /// the connection by [`UpstreamBody`].
    ///
    /// The deadline is the connection's own timer (`Conn::deadline`, a
    /// `dataplane::KeptTimer`), kept from one exchange to the next, where a timer made
    /// per request was registered in the driver's wheel and removed from it again (a lock each,
    /// ~300 instructions a request; docs/performance-log.md, 2026-11-28, "one timer per upstream
    /// connection"). A pooled connection is taken at once; connecting to a new one is bounded
    /// by a timer of its own as well.
    pub async fn send(
        self: &Arc<Self>,
        request: &[u8],
        head_request: bool,
        deadline: tokio::time::Instant,
    ) -> Result<Response<GatewayBody>, UpstreamError> {
        let mut conn = match self.pooled() {
            Some(conn) => conn,
            None => tokio::time::timeout_at(deadline, self.connect())
                .await
                .map_err(|_| UpstreamError::ReadTimeout)??,
        };
        let mut timer = conn.deadline(deadline);
        // Pinned where it is, in this future: moving it into `by` copied it (memcpy).
        let parsed = {
            let work = std::pin::pin!(exchange(&mut conn, request, head_request));
            by(&mut timer, work).await
        };
        conn.timer = Some(timer);
        let Parsed {
            response,
            framing,
            keep_alive,
        } = parsed?;
        let body = match framing {
            Framing::Length(0) => {
                self.finish(conn, keep_alive);
                GatewayBody::Own(None)
            }
            Framing::Length(n) if conn.buf.len() as u64 >= n => {
                let n = n as usize;
                // A small body is copied, so the read buffer is never shared (see
                // `head::parse_response`); a large one is split off without a copy.
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
            framing => {
                GatewayBody::Upstream(UpstreamBody::new(conn, self.clone(), framing, keep_alive))
            }
        };
        Ok(response.map(|()| body))
    }
}

/// The request written on `conn`, and the head of its response read.
async fn exchange(
    conn: &mut Conn,
    request: &[u8],
    head_request: bool,
) -> Result<Parsed, UpstreamError> {
    conn.io
        .write_all(request)
        .await
        .map_err(UpstreamError::Io)?;
    loop {
        if !conn.buf.is_empty() {
            if let Some(p) = parse_response(&mut conn.buf, head_request, &mut conn.names)
                .map_err(UpstreamError::Head)?
            {
                return Ok(p);
            }
        }
        if conn.fill().await.map_err(UpstreamError::Io)? == 0 {
            return Err(UpstreamError::Closed);
        }
    }
}

/// `work`, or [`UpstreamError::ReadTimeout`] once `timer` has elapsed first (`work` is polled
/// first: what is ready is never refused for the time). The timer is polled outside tokio's
/// task budget, as `tokio::time::Timeout` polls its delay: a Console that keeps the reads busy
/// (interim heads without end) spends the budget in `work`, and a budgeted timer would then
/// answer Pending past its deadline for as long as that goes on.
async fn by<T, F: Future<Output = Result<T, UpstreamError>>>(
    timer: &mut crate::dataplane::KeptTimer,
    mut work: std::pin::Pin<&mut F>,
) -> Result<T, UpstreamError> {
    std::future::poll_fn(|cx| {
        if let std::task::Poll::Ready(r) = work.as_mut().poll(cx) {
            return std::task::Poll::Ready(r);
        }
        match std::pin::pin!(tokio::task::unconstrained(&mut *timer)).poll(cx) {
            std::task::Poll::Ready(()) => std::task::Poll::Ready(Err(UpstreamError::ReadTimeout)),
            std::task::Poll::Pending => std::task::Poll::Pending,
        }
    })
    .await
}
