//! The request heads exactly as received, next to hyper's parse of them.
//!
//! hyper does not expose the request line or the headers it normalised (it drops a
//! `Content-Length` that comes with a `Transfer-Encoding`, merges identical repeated
//! `Content-Length`s, drops a `#fragment`). The gateway decides on the bytes as received, so the
//! client connection is wrapped in [`Sniff`]: every byte hyper reads passes through it, and each
//! complete request head is parsed a second time with the same parser hyper uses (httparse, the
//! same configuration and header limit), giving hyper's boundaries. The handler takes the heads
//! in order ([`Heads::next`]), because hyper calls it in order.
//!
//! Heads are only found while their boundaries are certain: from the start of the connection and
//! after a head whose request has no body. Once a request has a body (or a head cannot be
//! parsed), sniffing stops and the handler answers that request with `Connection: close`, so hyper
//! reads nothing after it; a request that arrives with no recorded head is refused.
//!
//! **Replaces** nothing: it is the guarantee hyper cannot give (the head as received, for the
//! refusals of [`crate::policy::target`]), using hyper's own parser, httparse. **Pinned by** the
//! unit tests below and `tests/api/differential.rs`/`hostile.rs` (Werkzeug's reading of the same
//! bytes). **Bounded:** at most `max_head_bytes` of an unfinished head are held (past it, sniffing
//! stops, as hyper refuses such a head), and the heads found do not depend on how the bytes were
//! cut into reads: the property test `the_sniffer_is_bounded_and_cut_independent` feeds any
//! bytes (heads, bodies' framing, junk) in any pieces.

use std::collections::VecDeque;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::policy::target::Refusal;

/// One request head as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawHead {
    /// The method's bytes, then the target's (one allocation per request).
    line: Vec<u8>,
    method_len: usize,
    /// Framing the raw headers make ambiguous (checked before hyper's normalisation).
    pub framing: Result<(), Refusal>,
    /// A body follows the head: nothing after it is sniffed, and the answer closes the
    /// connection.
    pub has_body: bool,
}

#[derive(Debug, Default)]
struct State {
    heads: VecDeque<RawHead>,
    /// Bytes of a head not complete yet.
    partial: Vec<u8>,
    /// No more heads are looked for on this connection.
    stopped: bool,
    max_headers: usize,
    max_head_bytes: usize,
}

impl RawHead {
    pub fn new(method: &[u8], target: &[u8]) -> RawHead {
        let mut line = Vec::with_capacity(method.len() + target.len());
        line.extend_from_slice(method);
        line.extend_from_slice(target);
        RawHead {
            line,
            method_len: method.len(),
            framing: Ok(()),
            has_body: false,
        }
    }

    pub fn method(&self) -> &[u8] {
        &self.line[..self.method_len]
    }

    pub fn target(&self) -> &[u8] {
        &self.line[self.method_len..]
    }
}

/// The heads recorded on one connection, shared by the reader and the handler.
#[derive(Debug, Clone)]
pub struct Heads(Arc<Mutex<State>>);

impl Heads {
    pub fn new(max_headers: usize, max_head_bytes: usize) -> Heads {
        Heads(Arc::new(Mutex::new(State {
            max_headers,
            max_head_bytes,
            ..State::default()
        })))
    }

    /// The next request's head; None when it was not recorded (the request must be refused).
    pub fn next(&self) -> Option<RawHead> {
        self.state().heads.pop_front()
    }

    /// The state; a panic while it was held leaves nothing half-done that matters (the
    /// connection's next request is refused when its head is missing).
    fn state(&self) -> MutexGuard<'_, State> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Feeds bytes as read from the client.
    pub fn feed(&self, bytes: &[u8]) {
        let mut st = self.state();
        if st.stopped || bytes.is_empty() {
            return;
        }
        if st.partial.is_empty() {
            let used = st.parse_all(bytes);
            if !st.stopped && used < bytes.len() {
                st.partial.extend_from_slice(&bytes[used..]);
            }
        } else {
            let mut buf = std::mem::take(&mut st.partial);
            buf.extend_from_slice(bytes);
            let used = st.parse_all(&buf);
            if !st.stopped {
                buf.drain(..used);
                st.partial = buf;
            }
        }
        if st.partial.len() > st.max_head_bytes {
            // hyper refuses a head this long itself.
            st.stop();
        }
    }
}

impl State {
    fn stop(&mut self) {
        self.stopped = true;
        self.partial = Vec::new();
    }

    /// Parses every complete head in `buf`; returns the bytes used.
    fn parse_all(&mut self, buf: &[u8]) -> usize {
        let mut used = 0;
        // hyper's own default limit fits on the stack; a larger --max-headers uses the heap.
        // The slots are left uninitialised (httparse fills what it uses): initialising 100
        // empty headers per request cost more than the parse.
        let mut on_stack = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; 100];
        let mut on_heap = Vec::new();
        let slots: &mut [MaybeUninit<httparse::Header<'_>>] = if self.max_headers <= on_stack.len()
        {
            &mut on_stack[..self.max_headers]
        } else {
            on_heap.resize_with(self.max_headers, MaybeUninit::uninit);
            &mut on_heap
        };
        while !self.stopped && used < buf.len() {
            let mut req = httparse::Request::new(&mut []);
            match req.parse_with_uninit_headers(&buf[used..], slots) {
                Ok(httparse::Status::Complete(n)) => {
                    let head = head_of(&req);
                    if head.has_body {
                        self.stop();
                    }
                    self.heads.push_back(head);
                    used += n;
                }
                Ok(httparse::Status::Partial) => break,
                Err(_) => {
                    // hyper answers 400 (or 431) itself and closes the connection.
                    self.stop();
                }
            }
        }
        used
    }
}

fn head_of(req: &httparse::Request<'_, '_>) -> RawHead {
    let mut cl = Vec::new();
    let mut te = 0usize;
    let mut te_ok = true;
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            cl.push(h.value);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            te += 1;
            te_ok &= h.value == b"chunked";
        }
    }
    let framing = if (te > 0 && !cl.is_empty())
        || te > 1
        || !te_ok
        || cl.len() > 1
        || cl
            .first()
            .is_some_and(|v| v.is_empty() || !v.iter().all(u8::is_ascii_digit))
    {
        Err(Refusal::AmbiguousFraming)
    } else {
        Ok(())
    };
    let has_body = te > 0 || cl.iter().any(|v| v.iter().any(|&b| b != b'0'));
    RawHead {
        framing,
        has_body,
        ..RawHead::new(
            req.method.unwrap_or_default().as_bytes(),
            req.path.unwrap_or_default().as_bytes(),
        )
    }
}

/// A client connection whose reads are also fed to [`Heads`].
pub struct Sniff<IO> {
    io: IO,
    heads: Heads,
}

impl<IO> Sniff<IO> {
    pub fn new(io: IO, heads: Heads) -> Sniff<IO> {
        Sniff { io, heads }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Sniff<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.io).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = &r {
            this.heads.feed(&buf.filled()[before..]);
        }
        r
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Sniff<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn heads() -> Heads {
        Heads::new(100, 16 * 1024)
    }

    #[test]
    fn pipelined_heads_without_bodies_are_all_recorded() {
        let h = heads();
        h.feed(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b#frag HTTP/1.1\r\nHost: x\r\n\r\nGET /c");
        h.feed(b" HTTP/1.1\r\nHost: x\r\n\r\n");
        let targets: Vec<Vec<u8>> = std::iter::from_fn(|| h.next())
            .map(|h| h.target().to_vec())
            .collect();
        assert_eq!(targets, [&b"/a"[..], b"/b#frag", b"/c"]);
    }

    #[test]
    fn a_head_split_byte_by_byte_is_found() {
        let h = heads();
        for b in
            b"\r\nPOST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\nGET /y HTTP/1.1\r\n\r\n"
        {
            h.feed(&[*b]);
        }
        let a = h.next().unwrap();
        assert_eq!(
            (a.method(), a.target(), a.has_body),
            (&b"POST"[..], &b"/x"[..], false)
        );
        assert_eq!(h.next().unwrap().target(), b"/y");
    }

    #[test]
    fn framing_seen_before_normalisation() {
        for (head, framing, body) in [
            (
                "Content-Length: 5\r\nTransfer-Encoding: chunked",
                false,
                true,
            ),
            (
                "Transfer-Encoding: chunked\r\nContent-Length: 5",
                false,
                true,
            ),
            ("Content-Length: 5\r\nContent-Length: 5", false, true),
            (
                "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked",
                false,
                true,
            ),
            ("Transfer-Encoding: Chunked", false, true),
            ("Content-Length: +5", false, true),
            ("Content-Length: 5", true, true),
            ("Content-Length: 00", true, false),
            ("Transfer-Encoding: chunked", true, true),
            ("X-A: 1", true, false),
        ] {
            let h = heads();
            h.feed(format!("POST / HTTP/1.1\r\nHost: x\r\n{head}\r\n\r\n").as_bytes());
            let got = h.next().unwrap();
            assert_eq!(got.framing.is_ok(), framing, "{head}");
            assert_eq!(got.has_body, body, "{head}");
        }
    }

    #[test]
    fn nothing_after_a_body_is_taken_for_a_head() {
        let h = heads();
        h.feed(b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 28\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(h.next().unwrap().target(), b"/a");
        assert_eq!(h.next(), None);
        h.feed(b"GET /c HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(h.next(), None);
    }

    /// What a connection's sniffer recorded after `bytes` came in reads of `pieces` bytes
    /// (cycled), checking the bound after every read: the bytes of a head not complete yet never
    /// exceed `max_head_bytes`.
    fn sniffed(bytes: &[u8], pieces: &[usize], max_head_bytes: usize) -> (Vec<RawHead>, bool) {
        let h = Heads::new(100, max_head_bytes);
        let mut at = 0;
        for &n in pieces.iter().cycle() {
            if at >= bytes.len() {
                break;
            }
            let end = (at + n).min(bytes.len());
            h.feed(&bytes[at..end]);
            at = end;
            let st = h.state();
            assert!(
                st.partial.len() <= max_head_bytes,
                "{} bytes of a head held, over {max_head_bytes}",
                st.partial.len()
            );
        }
        let heads = std::iter::from_fn(|| h.next()).collect();
        let stopped = h.state().stopped;
        (heads, stopped)
    }

    /// Request heads, some with a body, and bytes that are none.
    fn stream() -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
        use proptest::prelude::*;
        let head = (
            prop::sample::select(vec!["GET", "POST", "HEAD", "DELETE"]),
            "/[a-z0-9/%?#=&.]{0,40}",
            prop::collection::vec(
                prop::sample::select(vec![
                    "Host: x",
                    "Cookie: a=b",
                    "Content-Length: 0",
                    "Content-Length: 3",
                    "Transfer-Encoding: chunked",
                    "X-Long: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
                    " folded",
                ]),
                0..5,
            ),
        )
            .prop_map(|(m, t, hs)| {
                let mut out = format!("{m} {t} HTTP/1.1\r\n");
                for h in hs {
                    out.push_str(h);
                    out.push_str("\r\n");
                }
                out.push_str("\r\n");
                out.into_bytes()
            });
        let piece = prop_oneof![
            4 => head,
            1 => prop::collection::vec(any::<u8>(), 0..64),
            1 => Just(b"\r\n".to_vec()),
        ];
        prop::collection::vec(piece, 0..12).prop_map(|ps| ps.concat())
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 256, failure_persistence: None, ..Default::default() })]

        /// Whatever the client sends, however it is cut into reads: the sniffer holds at most
        /// `max_head_bytes` of an unfinished head (past it, it stops, as hyper refuses such a
        /// head), and with heads within the bound it records the same heads as from one read.
        #[test]
        fn the_sniffer_is_bounded_and_cut_independent(
            bytes in stream(),
            pieces in proptest::collection::vec(1usize..=300, 1..8),
        ) {
            let whole = sniffed(&bytes, &[bytes.len().max(1)], 16 * 1024);
            let cut = sniffed(&bytes, &pieces, 16 * 1024);
            proptest::prop_assert_eq!(cut, whole);
            // A small bound: only the bound is held (a head longer than it may be recorded
            // from one read and refused from several, as hyper's own buffer decides).
            sniffed(&bytes, &pieces, 64);
        }
    }

    #[test]
    fn a_malformed_head_stops_sniffing() {
        let h = heads();
        h.feed(b"GET /a HTTP/1.1\r\nHost: x\r\n folded\r\n\r\nGET /b HTTP/1.1\r\n\r\n");
        assert_eq!(h.next(), None);
    }
}
