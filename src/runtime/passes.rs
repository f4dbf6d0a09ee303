//! The data plane's passes: when its worker threads go idle, for the audit writer's batches.
//!
//! A worker thread runs every request that is ready, then parks in tokio's driver (its park
//! hook). The denials one pass decides queue their rows one after the other; a writer that sent
//! the first row the moment it arrived sent it nearly alone, and the pass's other rows in the
//! next statement: about 11 rows per INSERT at 32 connections, with PostgreSQL's fixed cost per
//! statement (and the writer's) paid by those few (docs/performance-log.md, 2026-11-28 late,
//! "the writer beside the data plane"). [`Passes::settled`] lets the writer wait until as many
//! passes have ended as workers were running, at most a bound, and then take every row queued:
//! no fixed delay (a pass that has ended is not waited for, and with every worker idle nothing
//! is). With one worker (the default up to three cores) that is its pass; with more, the passes
//! counted are any worker's, the writer's own included: the bound is what holds then.
//!
//! The workers call [`Passes::started`] and [`Passes::stopped`] around their runtime, and
//! [`Passes::park`] and [`Passes::unpark`] from tokio's park hooks (`dataplane/workers.rs`).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

use tokio::sync::Notify;

/// The process's worker threads' passes (see the module).
pub static PASSES: Passes = Passes::new();

#[derive(Debug)]
pub struct Passes {
    /// Worker threads not parked.
    running: AtomicUsize,
    /// Passes ended (parks) since the process started, all workers together.
    ended: AtomicU64,
    /// Callers of [`Passes::settled`] waiting: only then does a park notify.
    waiting: AtomicUsize,
    notify: Notify,
}

impl Passes {
    pub const fn new() -> Passes {
        Passes {
            running: AtomicUsize::new(0),
            ended: AtomicU64::new(0),
            waiting: AtomicUsize::new(0),
            notify: Notify::const_new(),
        }
    }

    /// A worker thread starts (running until it first parks).
    pub fn started(&self) {
        self.running.fetch_add(1, SeqCst);
    }

    /// A worker thread has stopped (its runtime returned, not parked).
    pub fn stopped(&self) {
        self.park();
    }

    /// A worker ends its pass (tokio's `on_thread_park`).
    pub fn park(&self) {
        self.running.fetch_sub(1, SeqCst);
        self.ended.fetch_add(1, SeqCst);
        if self.waiting.load(SeqCst) > 0 {
            self.notify.notify_waiters();
        }
    }

    /// A worker starts a pass (tokio's `on_thread_unpark`).
    pub fn unpark(&self) {
        self.running.fetch_add(1, SeqCst);
    }

    /// Returns once as many passes have ended as workers were running when called (each of
    /// them, where one worker runs), or no worker runs, or `bound` has passed.
    pub async fn settled(&self, bound: Duration) {
        let running = self.running.load(SeqCst) as u64;
        if running == 0 {
            return;
        }
        let from = self.ended.load(SeqCst);
        self.waiting.fetch_add(1, SeqCst);
        let _waiting = Waiting(&self.waiting);
        let deadline = tokio::time::Instant::now() + bound;
        loop {
            let notified = self.notify.notified();
            let mut notified = std::pin::pin!(notified);
            // Registered before the check: a park between the check and the wait wakes it.
            notified.as_mut().enable();
            if self.ended.load(SeqCst).wrapping_sub(from) >= running
                || self.running.load(SeqCst) == 0
            {
                return;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return;
            }
        }
    }
}

impl Default for Passes {
    fn default() -> Passes {
        Passes::new()
    }
}

/// One caller of [`Passes::settled`] waiting, until dropped.
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::Passes;
    use std::sync::Arc;
    use std::time::Duration;

    #[tokio::test]
    async fn with_no_worker_running_nothing_is_waited_for() {
        let p = Passes::new();
        tokio::time::timeout(Duration::from_secs(5), p.settled(Duration::from_secs(3600)))
            .await
            .expect("settled at once");
        p.started();
        p.park();
        tokio::time::timeout(Duration::from_secs(5), p.settled(Duration::from_secs(3600)))
            .await
            .expect("the worker is parked");
    }

    #[tokio::test]
    async fn a_running_worker_is_waited_for_until_it_parks() {
        let p = Arc::new(Passes::new());
        p.started();
        let waiting = tokio::spawn({
            let p = p.clone();
            async move { p.settled(Duration::from_secs(3600)).await }
        });
        // Until the writer waits, its wait could not be woken by the park.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while p.waiting.load(std::sync::atomic::Ordering::SeqCst) == 0 {
            assert!(std::time::Instant::now() < deadline, "never waited");
            tokio::task::yield_now().await;
        }
        assert!(!waiting.is_finished(), "returned while the worker ran");
        // A pass ends on another thread, as a worker's park hook runs.
        let parker = p.clone();
        std::thread::spawn(move || parker.park()).join().unwrap();
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("woken by the park")
            .unwrap();
        assert_eq!(p.waiting.load(std::sync::atomic::Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn a_worker_that_never_parks_is_waited_for_at_most_the_bound() {
        let p = Passes::new();
        p.started();
        let started = std::time::Instant::now();
        p.settled(Duration::from_millis(50)).await;
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(50), "{took:?}");
        assert!(took < Duration::from_secs(5), "{took:?}");
    }
}
