//! The per-worker pool of connections to Console: idle connections kept on a stack, checked
//! before use (one the upstream closed, or that holds bytes nobody asked for, is dropped), a new
//! one made when none is left; and [`Conn`], one connection with the bytes read from it but not
//! used yet, whose read buffer exists only while it holds bytes or a read is under way (a
//! connection waiting for Console's answer, or idle, holds none). Only its worker thread takes
//! a pool's lock, so it is never contended, and a connection is never handed between threads. The leg (`Pool::send`, in `upstream/mod.rs`)
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

use super::names::Names;
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

thread_local! {
    /// The read buffer the worker's last connection gave up, for the next one that reads: a
    /// response read at once (the usual case) takes it and gives it back, with no allocation.
    /// One per worker thread (16 KiB), whatever the number of connections.
    static SPARE: std::cell::Cell<Option<BytesMut>> = const { std::cell::Cell::new(None) };
}

/// One connection to the upstream and the bytes read from it but not used yet.
pub struct Conn {
    pub(super) io: TcpStream,
    pub(super) buf: BytesMut,
    pub(super) names: Names,
    /// The timer of its exchanges' deadlines, kept from one to the next (None: none yet, or
    /// one exchange holds it). Idle in the pool, it stays in tokio's wheel until the deadline
    /// it holds (that of an earlier exchange, perhaps: `dataplane::KeptTimer`) with
    /// the waker of the last client task that polled it: that task is woken once for nothing
    /// then (its allocation kept until then), the price of not removing and adding an entry per
    /// request.
    pub(super) timer: Option<crate::dataplane::KeptTimer>,
}

impl Conn {
    /// Its timer, set to `deadline` (`dataplane::KeptTimer`). The caller gives it
    /// back (`timer`) when the exchange is over.
    pub(super) fn deadline(
        &mut self,
        deadline: tokio::time::Instant,
    ) -> crate::dataplane::KeptTimer {
        crate::dataplane::KeptTimer::set(self.timer.take(), deadline)
    }

    /// Reads more bytes into the buffer; 0 at the end of the stream.
    pub(super) async fn fill(&mut self) -> io::Result<usize> {
        std::future::poll_fn(|cx| self.poll_fill(cx)).await
    }

    /// Reads at most [`READ_SIZE`] bytes into the buffer. A connection with nothing buffered
    /// holds no buffer while it waits: the buffer is taken once the socket is reported
    /// readable (the worker's spare, [`SPARE`], when there is one), and given up again when the
    /// read finds nothing after all (readiness the driver saw before the last bytes were read),
    /// so the many connections waiting for Console's answer hold no memory of their own.
    pub(super) fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.buf.is_empty() {
            match self.io.poll_read_ready(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {
                    self.release_if_empty();
                    return Poll::Pending;
                }
            }
        }
        if self.buf.capacity() - self.buf.len() < MIN_READ {
            if self.buf.capacity() == 0 {
                if let Some(spare) = SPARE.take() {
                    self.buf = spare;
                }
            }
            // The spare's room is reclaimed in place (it holds no byte) unless a body split
            // off it is still being sent.
            self.buf.reserve(READ_SIZE);
        }
        let mut room = (&mut self.buf).limit(READ_SIZE);
        let read = std::pin::pin!(self.io.read_buf(&mut room));
        let polled = std::future::Future::poll(read, cx);
        if polled.is_pending() {
            self.release_if_empty();
        }
        polled
    }

    /// Gives the read buffer up when it holds no byte: it becomes the worker's spare (a body
    /// split off it keeps its own share until sent).
    fn release_if_empty(&mut self) {
        if self.buf.is_empty() && self.buf.capacity() > 0 {
            SPARE.set(Some(std::mem::take(&mut self.buf)));
        }
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
    /// How long a streamed body waits for more of Console's bytes (`--upstream-read-timeout-ms`):
    /// [`super::UpstreamBody`] ends with an error past it, and its connection is closed.
    pub(super) body_idle_timeout: Duration,
    idle: Mutex<Vec<Conn>>,
}

impl Pool {
    pub fn new(
        addr: SocketAddr,
        connect_timeout: Duration,
        body_idle_timeout: Duration,
    ) -> Arc<Pool> {
        Arc::new(Pool {
            addr,
            connect_timeout,
            body_idle_timeout,
            idle: Mutex::new(Vec::new()),
        })
    }

    /// The idle list; only its worker thread takes the lock, so it is never contended.
    fn idle(&self) -> MutexGuard<'_, Vec<Conn>> {
        self.idle
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(super) async fn connect(&self) -> Result<Conn, UpstreamError> {
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
            timer: None,
        })
    }

    /// An idle connection that can carry a request, if there is one (those that cannot are
    /// dropped on the way).
    pub(super) fn pooled(&self) -> Option<Conn> {
        loop {
            let pooled = self.idle().pop();
            match pooled {
                Some(conn) if conn.reusable() => return Some(conn),
                Some(_) => continue,
                None => return None,
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
    /// An idle connection holds no read buffer.
    pub(super) fn finish(&self, mut conn: Conn, keep_alive: bool) {
        if keep_alive && conn.buf.is_empty() {
            conn.release_if_empty();
            self.give_back(conn);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::upstream::{HeadError, MAX_BUFFERED, MAX_HEAD};
    use bytes::Buf;
    use http_body_util::BodyExt;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    /// A pool to a listener on loopback, a connection checked out of it, and the upstream's side
    /// of that connection.
    async fn connected() -> (Arc<Pool>, Conn, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let pool = Pool::new(
            listener.local_addr().unwrap(),
            Duration::from_secs(5),
            Duration::from_secs(5),
        );
        let (conn, accepted) = tokio::join!(pool.connect(), listener.accept());
        (pool, conn.unwrap(), accepted.unwrap().0)
    }

    /// Polls `fill` once, without waiting.
    fn poll_once(conn: &mut Conn) -> Poll<io::Result<usize>> {
        conn.poll_fill(&mut Context::from_waker(std::task::Waker::noop()))
    }

    #[tokio::test]
    async fn a_connection_waiting_for_its_answer_holds_no_buffer() {
        // A short read (the driver then knows the socket is drained), and a read that fills
        // the room it had (the socket is still reported readable, so the next fill takes a
        // buffer, finds nothing and gives it up again).
        for size in [17, READ_SIZE] {
            let (_pool, mut conn, mut upstream) = connected().await;
            assert!(poll_once(&mut conn).is_pending());
            assert_eq!(
                conn.buf.capacity(),
                0,
                "a buffer was taken before any byte came"
            );

            let sent = vec![b'x'; size];
            upstream.write_all(&sent).await.unwrap();
            while conn.buf.len() < size {
                assert!(conn.fill().await.unwrap() > 0);
            }
            assert_eq!(&conn.buf[..], &sent[..]);
            assert!(conn.buf.capacity() <= 2 * READ_SIZE);

            conn.buf.advance(size);
            assert!(poll_once(&mut conn).is_pending());
            assert_eq!(
                conn.buf.capacity(),
                0,
                "a buffer was kept while waiting ({size})"
            );
        }
    }

    #[tokio::test]
    async fn the_buffer_given_up_is_the_next_reads_without_an_allocation() {
        let (_pool, mut first, mut upstream) = connected().await;
        upstream.write_all(b"abc").await.unwrap();
        first.fill().await.unwrap();
        let at = first.buf.as_ptr();
        first.buf.advance(3);
        assert!(poll_once(&mut first).is_pending());
        assert_eq!(first.buf.capacity(), 0);

        let (_pool, mut second, mut upstream) = connected().await;
        upstream.write_all(b"defg").await.unwrap();
        second.fill().await.unwrap();
        assert_eq!(&second.buf[..], b"defg");
        assert_eq!(second.buf.as_ptr(), at, "the spare was not reused");
    }

    #[tokio::test]
    async fn bytes_held_keep_their_buffer_while_more_are_awaited() {
        let (_pool, mut conn, mut upstream) = connected().await;
        upstream.write_all(b"HTTP/1.1 2").await.unwrap();
        assert_eq!(conn.fill().await.unwrap(), 10);
        assert!(poll_once(&mut conn).is_pending());
        assert_eq!(&conn.buf[..], b"HTTP/1.1 2", "bytes read were lost");
        upstream.write_all(b"00 OK\r\n").await.unwrap();
        conn.fill().await.unwrap();
        assert_eq!(&conn.buf[..], b"HTTP/1.1 200 OK\r\n");
    }

    #[tokio::test]
    async fn an_idle_connection_holds_no_buffer_and_is_reused() {
        let (pool, mut conn, mut upstream) = connected().await;
        upstream.write_all(b"some bytes").await.unwrap();
        conn.fill().await.unwrap();
        let used = conn.buf.len();
        conn.buf.advance(used);
        assert!(conn.buf.capacity() > 0);
        pool.finish(conn, true);
        let idle = pool.idle().pop().expect("kept in the pool");
        assert_eq!(idle.buf.capacity(), 0, "an idle connection kept its buffer");
        pool.give_back(idle);
        let again = pool.pooled().expect("the idle connection, reused");
        assert_eq!(
            again.io.local_addr().unwrap(),
            upstream.peer_addr().unwrap()
        );
    }

    /// Console's side of one exchange: reads the request head, then writes `answer` in pieces
    /// of `piece` bytes.
    async fn answer_with(mut upstream: TcpStream, answer: Vec<u8>, piece: usize) -> TcpStream {
        let mut got = Vec::new();
        while !got.ends_with(b"\r\n\r\n") {
            let mut b = [0u8; 1024];
            let n = tokio::io::AsyncReadExt::read(&mut upstream, &mut b)
                .await
                .unwrap();
            assert!(n > 0, "the request head did not come");
            got.extend_from_slice(&b[..n]);
        }
        for part in answer.chunks(piece) {
            if upstream.write_all(part).await.is_err() {
                return upstream; // refused and closed by the gateway's side
            }
            tokio::task::yield_now().await;
        }
        upstream
    }

    const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: console\r\n\r\n";

    /// That `send` ends by itself within 5 s, and with [`UpstreamError::ReadTimeout`].
    async fn ends_in_read_timeout<T>(
        send: impl std::future::Future<Output = Result<T, UpstreamError>>,
        what: &str,
    ) {
        let ended = tokio::time::timeout(Duration::from_secs(5), send)
            .await
            .unwrap_or_else(|_| panic!("{what}: not ended by its deadline"));
        assert!(
            matches!(ended, Err(UpstreamError::ReadTimeout)),
            "{what}: {:?}",
            ended.map(|_| ())
        );
    }

    /// A deadline no exchange of these tests reaches.
    fn later() -> tokio::time::Instant {
        tokio::time::Instant::now() + Duration::from_secs(60)
    }

    /// Each exchange is bounded by its own deadline on the connection's one timer: kept with the
    /// connection after an exchange, moved later for the next, and still firing when Console
    /// does not answer (the earlier deadline it held does not cut a later exchange short).
    #[tokio::test]
    async fn each_exchange_is_bounded_by_its_deadline_on_the_connections_timer() {
        let (pool, conn, upstream) = connected().await;
        pool.give_back(conn);
        let answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec();
        let answering = tokio::spawn(answer_with(upstream, answer, 1024));
        let first = tokio::time::Instant::now() + Duration::from_millis(300);
        let resp = pool.send(REQUEST, false, first).await.expect("answered");
        assert_eq!(resp.status(), 200);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"ok");
        let mut upstream = answering.await.unwrap();
        {
            let idle = pool.idle();
            assert_eq!(idle.len(), 1, "given back");
            assert!(idle[0].timer.is_some(), "its timer kept with it");
        }
        // Past the first deadline, a second exchange Console never answers: it ends at its own
        // deadline, on the same timer.
        tokio::time::sleep_until(first).await;
        let silent = tokio::spawn(async move {
            let mut got = Vec::new();
            let mut b = [0u8; 1024];
            while let Ok(n) = tokio::io::AsyncReadExt::read(&mut upstream, &mut b).await {
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&b[..n]);
            }
            got
        });
        let second = tokio::time::Instant::now() + Duration::from_millis(200);
        ends_in_read_timeout(pool.send(REQUEST, false, second), "a silent Console").await;
        assert!(
            tokio::time::Instant::now() >= second,
            "not before its deadline"
        );
        assert!(
            pool.idle().is_empty(),
            "a connection that timed out is not kept"
        );
        assert_eq!(
            silent.await.unwrap(),
            REQUEST,
            "the request went out, then the connection closed"
        );
    }

    /// A Console that sends interim (1xx) heads without end, from a thread of its own: they are
    /// skipped without a bound of their own, so only the deadline ends the exchange, and it
    /// does (when such reads spend the task's whole budget on every poll, the test below).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn endless_interim_heads_still_end_at_the_deadline() {
        let (pool, conn, mut upstream) = connected().await;
        pool.give_back(conn);
        let flood = tokio::spawn(async move {
            let mut got = [0u8; 1024];
            // The request head, read only so that it is not left unread; whatever this read
            // answers, the flood follows (a closed socket ends it at the first write).
            let _ = tokio::io::AsyncReadExt::read(&mut upstream, &mut got).await;
            // On a thread of its own: the socket is never empty when the exchange reads.
            let interim = b"HTTP/1.1 100 Continue\r\n\r\n".repeat(4096);
            while upstream.write_all(&interim).await.is_ok() {}
        });
        let deadline = tokio::time::Instant::now() + Duration::from_millis(200);
        ends_in_read_timeout(pool.send(REQUEST, false, deadline), "endless interim heads").await;
        flood.await.unwrap();
    }

    /// Work that spends tokio's whole task budget on every poll and never ends (what a Console
    /// that keeps every read busy makes of an exchange): the deadline still ends it. With the
    /// timer polled inside the budget, it answered Pending for good.
    #[tokio::test]
    async fn a_deadline_ends_work_that_spends_the_whole_budget() {
        let work = std::pin::pin!(async {
            loop {
                tokio::task::consume_budget().await;
            }
            #[allow(unreachable_code)]
            Ok::<(), UpstreamError>(())
        });
        let mut timer = crate::dataplane::KeptTimer::set(
            None,
            tokio::time::Instant::now() + Duration::from_millis(100),
        );
        let work = crate::dataplane::upstream::by(&mut timer, work);
        ends_in_read_timeout(work, "work spending the whole budget").await;
    }

    #[tokio::test]
    async fn a_large_head_is_read_from_a_small_start() {
        // A head just under MAX_HEAD, sent in reads of every size up to several buffers.
        for piece in [1000, 5000, 70_000] {
            let (pool, conn, upstream) = connected().await;
            pool.give_back(conn);
            let value = "v".repeat(MAX_HEAD - 200);
            let answer =
                format!("HTTP/1.1 200 OK\r\nX-Large: {value}\r\nContent-Length: 5\r\n\r\nhello");
            let answering = tokio::spawn(answer_with(upstream, answer.into_bytes(), piece));
            let resp = pool
                .send(REQUEST, false, later())
                .await
                .expect("a head under the bound");
            assert_eq!(resp.headers()["x-large"].len(), MAX_HEAD - 200);
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(&body[..], b"hello");
            answering.await.unwrap();
            let idle = pool.idle().pop().expect("given back after the body");
            assert_eq!(idle.buf.capacity(), 0, "an idle connection kept its buffer");
        }
    }

    #[tokio::test]
    async fn a_head_over_the_bound_is_still_refused() {
        for piece in [3000, 70_000] {
            let (pool, conn, upstream) = connected().await;
            pool.give_back(conn);
            // A header line that never ends.
            let mut answer = b"HTTP/1.1 200 OK\r\nX-Endless: ".to_vec();
            answer.resize(3 * MAX_BUFFERED, b'a');
            let answering = tokio::spawn(answer_with(upstream, answer, piece));
            let refused = pool.send(REQUEST, false, later()).await;
            assert!(
                matches!(refused, Err(UpstreamError::Head(HeadError::TooLarge))),
                "{:?}",
                refused.map(|_| ())
            );
            answering.await.unwrap();
        }
    }
}
