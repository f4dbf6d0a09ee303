//! hyper's timer for a connection's header-read timeout, its tokio timer used again.
//!
//! hyper's HTTP/1 server arms a timer for each request head it waits for
//! (`Timer::sleep_until`, the idle time of a keep-alive connection included) and drops it once
//! the head is read. With hyper-util's `TokioTimer` each is a new tokio `Sleep`: allocated,
//! registered in the driver's wheel on its first poll and removed from it when dropped, about
//! 650 instructions a request (docs/performance-log.md, 2026-11-28, "hyper's header timer").
//! [`HeaderTimer`] belongs to one connection and keeps the tokio timer hyper dropped; the next
//! head's wait takes it again, set to its deadline (`dataplane::KeptTimer`: a deadline later than
//! the one the timer holds is only written down, and the timer, once it fires, waits on to it).
//! Every deadline is still kept by tokio's timer; only the allocation and the wheel's updates a
//! request are saved. A connection stays on the worker thread (and runtime) that accepted it
//! (`workers.rs`), so its timer is only ever used on the runtime whose driver holds it. A kept
//! timer stays in tokio's wheel until the deadline it holds with the waker of the task that last
//! polled it (this connection's): when that deadline passes, it wakes that task once, for
//! nothing when no head is awaited, and otherwise to be set to the awaited head's deadline, as
//! the upstream connections' kept timers do (`upstream/pool.rs`).
//!
//! **Pinned by** `tests/api/framing.rs`'s slow-client tests (a head that does not come in time
//! is still cut off, on a connection's first request and on a later one) and the tests below.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// The timer of one connection's heads (a hyper [`hyper::rt::Timer`]).
#[derive(Clone, Default)]
pub struct HeaderTimer {
    /// The tokio timer hyper last dropped (None: none yet, or one wait holds it).
    spare: Arc<Mutex<Option<super::KeptTimer>>>,
}

impl HeaderTimer {
    /// `base` (the doors' HTTP/1 settings) for one connection, its heads timed by a timer of
    /// its own.
    pub fn for_connection(
        base: &hyper::server::conn::http1::Builder,
    ) -> hyper::server::conn::http1::Builder {
        let mut builder = base.clone();
        builder.timer(HeaderTimer::default());
        builder
    }

    fn spare(&self) -> MutexGuard<'_, Option<super::KeptTimer>> {
        self.spare
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl hyper::rt::Timer for HeaderTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        self.sleep_until(self.now() + duration)
    }

    /// tokio's clock, as hyper-util's `TokioTimer` answers (the deadlines are tokio's).
    fn now(&self) -> Instant {
        tokio::time::Instant::now().into_std()
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        let deadline = tokio::time::Instant::from_std(deadline);
        let sleep = super::KeptTimer::set(self.spare().take(), deadline);
        Box::pin(Lent {
            sleep: Some(sleep),
            owner: self.clone(),
        })
    }
}

/// A connection's tokio timer while hyper holds it; back to its [`HeaderTimer`] when dropped.
struct Lent {
    /// Always `Some` until dropped.
    sleep: Option<super::KeptTimer>,
    owner: HeaderTimer,
}

impl Future for Lent {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        match self.sleep.as_mut() {
            Some(sleep) => Pin::new(sleep).poll(cx),
            None => Poll::Ready(()),
        }
    }
}

impl hyper::rt::Sleep for Lent {}

impl Drop for Lent {
    fn drop(&mut self) {
        if let Some(sleep) = self.sleep.take() {
            *self.owner.spare() = Some(sleep);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::rt::Timer;

    #[tokio::test]
    async fn each_wait_ends_at_its_own_deadline_on_the_one_timer() {
        let timer = HeaderTimer::default();
        let start = Instant::now();
        let first = timer.sleep(Duration::from_millis(30));
        drop(first);
        assert!(timer.spare().is_some(), "kept once hyper dropped it");
        // The same timer, set later than it was: it waits for the new deadline.
        let second = timer.sleep_until(start + Duration::from_millis(120));
        assert!(timer.spare().is_none(), "lent again");
        let bound = Duration::from_secs(5);
        tokio::time::timeout(bound, second)
            .await
            .expect("the second wait ends");
        assert!(start.elapsed() >= Duration::from_millis(120));
        // Its deadline passed while it was kept; set again, it still waits.
        let again = Instant::now();
        tokio::time::timeout(bound, timer.sleep(Duration::from_millis(50)))
            .await
            .expect("the third wait ends");
        assert!(again.elapsed() >= Duration::from_millis(50));
    }

    #[tokio::test]
    async fn a_wait_is_not_cut_short_by_an_earlier_deadline_the_timer_held() {
        let timer = HeaderTimer::default();
        let start = Instant::now();
        let short = timer.sleep(Duration::from_millis(20));
        drop(short);
        let long = timer.sleep(Duration::from_millis(200));
        let cut = tokio::time::timeout(Duration::from_millis(120), long).await;
        assert!(cut.is_err(), "still waiting past the first deadline");
        assert!(start.elapsed() >= Duration::from_millis(120));
    }
}
