//! Graceful shutdown of one listener's connections: on shutdown every open connection is asked
//! to finish (hyper answers the request in flight, then closes; an idle keep-alive connection
//! closes at once), and [`Drain::shutdown`] waits until all of them have.
//!
//! hyper-util's `GracefulShutdown` does the same through a `watch` channel whose `changed()` it
//! polls on every poll of every connection (about 300 instructions per proxied request, a
//! `Notify` registration each time). Here a poll costs one atomic load and a waker comparison:
//! a connection's waker is stored once, in a slot of the drain, and shutdown wakes the slots.
//!
//! **Replaces** hyper-util's `GracefulShutdown`. **Gain**: about 300 instructions per proxied
//! request (callgrind, docs/performance-log.md). **Pinned by** `tests/api/framing.rs`
//! (`sigterm_lets_in_flight_requests_finish`, `sigterm_closes_idle_keep_alive_connections_at_once`)
//! and `tests/api/core.rs` (`sigterm_shuts_down_within_a_few_seconds`): the behaviour
//! hyper-util's documents, on the real binary.

use std::error::Error as StdError;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Poll, Waker};

use hyper::body::{Body, Incoming};
use hyper::rt::{Read, Write};
use hyper::service::HttpService;

/// A connection that can be asked to finish: it answers what it is answering, then ends.
pub trait GracefulConnection: Future {
    fn graceful_shutdown(self: Pin<&mut Self>);
}

impl<I, B, S> GracefulConnection for hyper::server::conn::http1::Connection<I, S>
where
    S: HttpService<Incoming, ResBody = B>,
    S::Error: Into<Box<dyn StdError + Send + Sync>>,
    I: Read + Write + Unpin,
    B: Body + 'static,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    fn graceful_shutdown(self: Pin<&mut Self>) {
        hyper::server::conn::http1::Connection::graceful_shutdown(self)
    }
}

#[derive(Debug, Default)]
struct Slots {
    /// One per open connection: its task's waker once it was polled.
    wakers: Vec<Option<Waker>>,
    /// Indices of `wakers` no connection holds.
    free: Vec<usize>,
    /// [`Drain::shutdown`], waiting for no connection to be open.
    closed: Option<Waker>,
}

impl Slots {
    /// Connections holding a slot.
    fn open(&self) -> usize {
        self.wakers.len() - self.free.len()
    }
}

#[derive(Debug, Default)]
struct Inner {
    draining: AtomicBool,
    slots: Mutex<Slots>,
}

impl Inner {
    /// The slots; a panic while they were held leaves them consistent (each change is one step).
    fn slots(&self) -> MutexGuard<'_, Slots> {
        self.slots
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The open connections of one listener.
#[derive(Debug, Clone, Default)]
pub struct Drain {
    inner: Arc<Inner>,
}

impl Drain {
    pub fn new() -> Drain {
        Drain::default()
    }

    /// Connections open now (watched and not yet finished).
    pub fn open(&self) -> usize {
        self.inner.slots().open()
    }

    /// Serves `conn` until it finishes; once [`Drain::shutdown`] was called (before or during),
    /// the connection is asked to shut down gracefully. It counts as open from this call on, so
    /// a shutdown waits for it even if its task has not run yet.
    pub fn watch<C: GracefulConnection>(&self, conn: C) -> impl Future<Output = C::Output> {
        let mut slot = Slot::new(self.inner.clone());
        async move {
            let mut conn = std::pin::pin!(conn);
            let mut asked = false;
            std::future::poll_fn(|cx| {
                if !asked && slot.draining(cx.waker()) {
                    asked = true;
                    conn.as_mut().graceful_shutdown();
                }
                conn.as_mut().poll(cx)
            })
            .await
        }
    }

    /// Asks every open connection (and any watched later) to finish, then waits until none is
    /// open. Bound it with a timeout: a connection whose client never reads its answer stays.
    pub async fn shutdown(&self) {
        self.inner.draining.store(true, Ordering::SeqCst);
        let wakers: Vec<Waker> = {
            let mut slots = self.inner.slots();
            slots.wakers.iter_mut().filter_map(Option::take).collect()
        };
        // Woken outside the lock: a woken task may poll (and lock) at once.
        for w in wakers {
            w.wake();
        }
        std::future::poll_fn(|cx| {
            let mut slots = self.inner.slots();
            if slots.open() == 0 {
                Poll::Ready(())
            } else {
                slots.closed = Some(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }
}

/// One watched connection's place in its [`Drain`]; freed when the connection's future is
/// dropped (finished or not).
struct Slot {
    inner: Arc<Inner>,
    index: usize,
    /// The waker stored in the slot (compared on each poll, so the lock is taken only when the
    /// task's waker changes: once per connection on tokio).
    stored: Option<Waker>,
}

impl Slot {
    fn new(inner: Arc<Inner>) -> Slot {
        let index = {
            let mut slots = inner.slots();
            match slots.free.pop() {
                Some(i) => i,
                None => {
                    slots.wakers.push(None);
                    slots.wakers.len() - 1
                }
            }
        };
        Slot {
            inner,
            index,
            stored: None,
        }
    }

    /// Whether the connection must shut down; keeps `waker` where a shutdown will wake it.
    fn draining(&mut self, waker: &Waker) -> bool {
        if self.inner.draining.load(Ordering::Acquire) {
            return true;
        }
        if !self.stored.as_ref().is_some_and(|w| w.will_wake(waker)) {
            self.inner.slots().wakers[self.index] = Some(waker.clone());
            self.stored = Some(waker.clone());
            // A shutdown that took the wakers before this one was stored set the flag first
            // (and this store happened after its lock): seen here.
            return self.inner.draining.load(Ordering::Acquire);
        }
        false
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let closed = {
            let mut slots = self.inner.slots();
            slots.wakers[self.index] = None;
            slots.free.push(self.index);
            if slots.open() == 0 {
                slots.closed.take()
            } else {
                None
            }
        };
        if let Some(w) = closed {
            w.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::task::Context;
    use std::time::Duration;

    /// A connection that runs until asked to shut down, then finishes after `linger` polls.
    struct Fake {
        asked: Arc<AtomicUsize>,
        shutting: bool,
        linger: usize,
    }

    impl Fake {
        fn new(asked: &Arc<AtomicUsize>, linger: usize) -> Fake {
            Fake {
                asked: asked.clone(),
                shutting: false,
                linger,
            }
        }
    }

    impl Future for Fake {
        type Output = ();
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            if !self.shutting {
                return Poll::Pending;
            }
            if self.linger == 0 {
                return Poll::Ready(());
            }
            self.linger -= 1;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }

    impl GracefulConnection for Fake {
        fn graceful_shutdown(mut self: Pin<&mut Self>) {
            self.asked.fetch_add(1, Ordering::SeqCst);
            self.shutting = true;
        }
    }

    #[tokio::test]
    async fn shutdown_asks_every_connection_once_and_waits_for_all() {
        let drain = Drain::new();
        let asked = Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = [0, 3, 50]
            .into_iter()
            .map(|linger| tokio::spawn(drain.watch(Fake::new(&asked, linger))))
            .collect();
        // Each has been polled (and parked) before the shutdown.
        tokio::task::yield_now().await;
        assert_eq!(drain.open(), 3);
        assert_eq!(asked.load(Ordering::SeqCst), 0);
        tokio::time::timeout(Duration::from_secs(5), drain.shutdown())
            .await
            .expect("shutdown ends once the connections have");
        assert_eq!(drain.open(), 0);
        assert_eq!(asked.load(Ordering::SeqCst), 3);
        for t in tasks {
            t.await.expect("the connection task ended");
        }
    }

    #[tokio::test]
    async fn a_connection_not_yet_polled_counts_and_is_asked_at_its_first_poll() {
        let drain = Drain::new();
        let asked = Arc::new(AtomicUsize::new(0));
        let conn = drain.watch(Fake::new(&asked, 0));
        assert_eq!(drain.open(), 1);
        let mut shutdown = std::pin::pin!(drain.shutdown());
        // Not done while the watched connection has not run.
        assert!(futures_poll_once(shutdown.as_mut()).await.is_pending());
        conn.await;
        assert_eq!(asked.load(Ordering::SeqCst), 1);
        tokio::time::timeout(Duration::from_secs(5), shutdown)
            .await
            .expect("shutdown ends");
    }

    #[tokio::test]
    async fn a_connection_that_ends_by_itself_frees_its_slot_for_the_next() {
        let drain = Drain::new();
        let asked = Arc::new(AtomicUsize::new(0));
        for _ in 0..3 {
            let mut fake = Fake::new(&asked, 0);
            fake.shutting = true; // ends at its first poll, never asked
            drain.watch(fake).await;
        }
        assert_eq!(drain.open(), 0);
        assert_eq!(drain.inner.slots().wakers.len(), 1);
        assert_eq!(asked.load(Ordering::SeqCst), 0);
        // With nothing open, shutdown ends at once.
        tokio::time::timeout(Duration::from_millis(100), drain.shutdown())
            .await
            .expect("nothing to wait for");
    }

    #[tokio::test]
    async fn shutdown_is_not_done_while_a_connection_lingers() {
        let drain = Drain::new();
        let asked = Arc::new(AtomicUsize::new(0));
        // Never finishes: asked, but its poll keeps answering pending without a wake-up.
        let stuck = tokio::spawn(
            drain.watch(std::future::poll_fn(|_| Poll::<()>::Pending).then_asked(&asked)),
        );
        tokio::task::yield_now().await;
        let r = tokio::time::timeout(Duration::from_millis(50), drain.shutdown()).await;
        assert!(r.is_err(), "shutdown waited for the open connection");
        assert_eq!(asked.load(Ordering::SeqCst), 1);
        stuck.abort();
        assert!(stuck.await.unwrap_err().is_cancelled());
        assert_eq!(drain.open(), 0, "an aborted connection frees its slot");
    }

    /// Polls a future once.
    async fn futures_poll_once<F: Future + Unpin>(f: F) -> Poll<F::Output> {
        let mut f = f;
        std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut f).poll(cx))).await
    }

    /// A pending-forever future that counts the shutdown requests it gets.
    struct Stuck<F> {
        inner: Pin<Box<F>>,
        asked: Arc<AtomicUsize>,
    }

    trait ThenAsked: Future + Sized {
        fn then_asked(self, asked: &Arc<AtomicUsize>) -> Stuck<Self> {
            Stuck {
                inner: Box::pin(self),
                asked: asked.clone(),
            }
        }
    }

    impl<F: Future> ThenAsked for F {}

    impl<F: Future> Future for Stuck<F> {
        type Output = F::Output;
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
            self.inner.as_mut().poll(cx)
        }
    }

    impl<F: Future> GracefulConnection for Stuck<F> {
        fn graceful_shutdown(self: Pin<&mut Self>) {
            self.asked.fetch_add(1, Ordering::SeqCst);
        }
    }
}
