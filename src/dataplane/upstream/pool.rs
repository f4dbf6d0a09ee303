//! The per-worker pool of connections to Console: idle connections kept on a stack, checked
//! before use (one the upstream closed, or that holds bytes nobody asked for, is dropped), a new
//! one made when none is left; and [`Conn`], one connection with the bytes read from it but not
//! used yet. Only its worker thread takes a pool's lock, so it is never contended, and a
//! connection is never handed between threads. The leg (`Pool::send`, in `upstream/mod.rs`)
//! checks a connection out and gives it back through [`Pool::finish`] once its response was read
//! to the end.

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use super::head::Names;
use super::UpstreamError;

/// Idle connections kept per worker; more are closed when they become idle.
const MAX_IDLE: usize = 512;
/// Bytes asked of the kernel per read, at most (whatever room the buffer has): the parsers ask
/// for more only while they hold less than their bound, so a read buffer holds at most its
/// parser's bound plus this (`upstream`'s module doc: [`super::MAX_BUFFERED`]).
pub(super) const READ_SIZE: usize = 16 * 1024;
/// Room left in the read buffer below which more is reserved. Heads and short bodies are
/// copied out of it, so the room is reclaimed in place (the unread bytes moved to its start);
/// a long body split off it shares the buffer until sent, and a new one is then taken.
const MIN_READ: usize = 4 * 1024;

/// One connection to the upstream and the bytes read from it but not used yet.
pub struct Conn {
    pub(super) io: TcpStream,
    pub(super) buf: BytesMut,
    pub(super) names: Names,
}

impl Conn {
    /// Reads more bytes into the buffer; 0 at the end of the stream.
    pub(super) async fn fill(&mut self) -> io::Result<usize> {
        std::future::poll_fn(|cx| self.poll_fill(cx)).await
    }

    /// Reads at most [`READ_SIZE`] bytes into the buffer.
    pub(super) fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < MIN_READ {
            self.buf.reserve(READ_SIZE);
        }
        let mut room = (&mut self.buf).limit(READ_SIZE);
        let read = std::pin::pin!(self.io.read_buf(&mut room));
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

/// The connections of one worker thread to the upstream.
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
    pub(super) async fn checkout(&self) -> Result<Conn, UpstreamError> {
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

    /// A response read to its end: its connection is kept if it can carry the next request.
    pub(super) fn finish(&self, conn: Conn, keep_alive: bool) {
        if keep_alive && conn.buf.is_empty() {
            self.give_back(conn);
        }
    }
}
