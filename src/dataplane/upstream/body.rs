//! The body of every answer the data plane sends: [`GatewayBody`], the gateway's own short text
//! (or a body read whole with its head), or Console's body streamed from its connection
//! ([`UpstreamBody`]: framed by length, chunks or the connection's end, its connection given back
//! to the pool at the end of the body).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};

use super::chunked::{Chunk, ChunkError};
use super::head::Framing;
use super::pool::{Conn, Pool};
use super::UpstreamError;

enum Decode {
    Length(u64),
    Chunked(Chunk),
    Close,
}

/// Console's response body, streamed to the client from its connection; the connection returns
/// to the pool at the end of the body. The connection is read only when the decoder has nothing
/// to hand on and asks for more, so a chunked body holds at most `MAX_CHUNK_LINE` (16 KiB) plus
/// one read (16 KiB) whatever Console sends, and a length- or close-delimited one at most one
/// read (see `upstream`'s module doc).
///
/// Bounded in time too: each wait for more of Console's bytes lasts at most the pool's
/// `body_idle_timeout` (`--upstream-read-timeout-ms`, the bound of the head's wait), then the
/// body ends with a `TimedOut` error (hyper's server cuts the client's answer) and the
/// connection is closed: a Console that sends a head and goes silent holds neither socket past
/// it (`tests/api/upstream_differential.rs`). The timer is made at the first wait only, so a body
/// that never waits (the common case: it came with its head or as fast as it is read) costs none.
pub struct UpstreamBody {
    conn: Option<Conn>,
    pool: Arc<Pool>,
    decode: Decode,
    keep_alive: bool,
    /// The deadline of the current wait for Console's bytes (None: no wait yet).
    idle: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Bytes came since `idle` was armed: the next wait starts a new deadline.
    progressed: bool,
}

/// A chunked body refused: the body ends with this error, as a body cut short does.
fn refused(e: ChunkError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, UpstreamError::Chunked(e))
}

impl UpstreamBody {
    /// The rest of a response whose head was read on `conn`, read from the connection as it
    /// comes; `conn` goes back to `pool` at its end when `keep_alive` (and nothing is left over).
    pub(super) fn new(
        conn: Conn,
        pool: Arc<Pool>,
        framing: Framing,
        keep_alive: bool,
    ) -> UpstreamBody {
        UpstreamBody {
            conn: Some(conn),
            pool,
            decode: match framing {
                Framing::Length(n) => Decode::Length(n),
                Framing::Chunked => Decode::Chunked(Chunk::Size(0)),
                Framing::Close => Decode::Close,
            },
            keep_alive,
            idle: None,
            progressed: false,
        }
    }

    /// Whether the current wait for Console's bytes is past its deadline (arming it at the first
    /// wait, and again at the first wait after bytes came); registers `cx` with the timer if not.
    fn wait_expired(&mut self, cx: &mut Context<'_>) -> bool {
        let limit = self.pool.body_idle_timeout;
        let sleep = self
            .idle
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        if std::mem::take(&mut self.progressed) {
            sleep.as_mut().reset(tokio::time::Instant::now() + limit);
        }
        sleep.as_mut().poll(cx).is_ready()
    }

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
            Decode::Chunked(state) => state.step(buf, done).map_err(refused),
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
                    let filled = match conn.poll_fill(cx) {
                        Poll::Ready(filled) => filled,
                        Poll::Pending => {
                            if this.wait_expired(cx) {
                                this.conn = None;
                                return Poll::Ready(Some(Err(io::Error::new(
                                    io::ErrorKind::TimedOut,
                                    UpstreamError::BodyTimeout(this.pool.body_idle_timeout),
                                ))));
                            }
                            return Poll::Pending;
                        }
                    };
                    this.progressed = this.idle.is_some();
                    match filled {
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
