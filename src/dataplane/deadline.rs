//! Coarse deadlines for the data plane's per-request timeouts (hyper's header-read timeout and
//! the upstream read timeout), one set per worker thread.
//!
//! tokio's timer registers every sleep in its wheel, and a sleep that ends before the worker's
//! planned wake-up (or the first one after the worker parked with no timer) writes the worker's
//! eventfd to move the wake-up. Here a sleep is a slot in a list: armed when first polled
//! pending, freed when dropped, and one ticker task per worker wakes the slots whose deadline
//! passed, every [`Deadlines::tick`] while any slot is armed (it sleeps without a timer when
//! none is). A sleep never ends before its deadline, and ends within about one tick after it
//! (a tick, plus however long the worker takes to get to the ticker).
//!
//! **Replaces** hyper-util's `TokioTimer` (tokio's timer wheel) for the per-request deadlines.
//! **Gain**, paired on 2026-11-26 (tokio's timer restored in one build, both builds'
//! `scripts/bench/denials.sh` in turns, 7 times; docs/performance-log.md): tokio's timer costs
//! +4.4% gateway CPU per allowed request and +5.0% per denial (means of the pairs' ratios, which
//! ranged 0.83-1.40: this machine's noise is larger than the gain), +708 instructions per request
//! (+3.0%, `scripts/bench/instructions.sh`) and 0.04-0.07 eventfd `write`s per request where this
//! list makes 0.001 (`SYSCALLS=1 scripts/bench/instructions.sh`). At the 3% bar, every measure
//! on the same side of it: kept, to be measured again on a quieter machine.
//! Security-relevant: it enforces the slow-client limits. **Pinned by** the unit tests below
//! (a sleep never ends early and ends within a tick or two) and `tests/api/framing.rs`'s
//! slow-client tests.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// One armed sleep.
#[derive(Debug)]
struct Slot {
    deadline: Instant,
    /// Taken when the ticker found the deadline passed.
    waker: Option<Waker>,
    fired: bool,
}

#[derive(Debug, Default)]
struct List {
    /// None: a free slot (its index is in `free`).
    slots: Vec<Option<Slot>>,
    free: Vec<usize>,
    armed: usize,
    /// The ticker, waiting for a slot to be armed.
    ticker: Option<Waker>,
}

impl List {
    /// After a spike of connections the list would stay as long as the spike was, and every
    /// sweep would walk it: the free slots at its end are dropped, and the free list is rebuilt
    /// so that the lowest free slot is taken first (armed slots gather at the start, and the end
    /// frees up for the next sweep). Only free slots are dropped: an armed sleep's slot index
    /// stays valid. Its cost is one more walk of the list, once per sweep.
    fn compact(&mut self) {
        while matches!(self.slots.last(), Some(None)) {
            self.slots.pop();
        }
        self.free.clear();
        let slots = &self.slots;
        self.free
            .extend((0..slots.len()).rev().filter(|&i| slots[i].is_none()));
        // Memory back after a spike (keeps room to double without reallocating).
        let keep = (self.slots.len() * 2).max(64);
        if self.slots.capacity() > 2 * keep {
            self.slots.shrink_to(keep);
            self.free.shrink_to(keep);
        }
    }
}

/// A worker's deadlines. Only its own thread arms, polls and sweeps them, so the lock is never
/// contended; it is a `Mutex` because hyper's sleeps must be `Send + Sync`.
#[derive(Debug, Clone)]
pub struct Deadlines {
    list: Arc<Mutex<List>>,
    tick: Duration,
}

impl Deadlines {
    /// Deadlines swept every `tick` (clamped to 5 ms..100 ms) while any is armed.
    pub fn new(tick: Duration) -> Deadlines {
        Deadlines {
            list: Arc::new(Mutex::new(List::default())),
            tick: tick.clamp(Duration::from_millis(5), Duration::from_millis(100)),
        }
    }

    /// A tick fine enough for the shortest of `timeouts`: a twentieth of it.
    pub fn for_timeouts(timeouts: &[Duration]) -> Deadlines {
        let shortest = timeouts.iter().min().copied().unwrap_or(Duration::ZERO);
        Deadlines::new(shortest / 20)
    }

    pub fn tick(&self) -> Duration {
        self.tick
    }

    /// The list; a panic while it was held leaves it consistent (each change is one step).
    fn list(&self) -> MutexGuard<'_, List> {
        self.list
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A sleep that ends at `deadline` (about one tick later at most, see the module).
    pub fn sleep_until(&self, deadline: Instant) -> Sleep {
        Sleep {
            deadlines: self.clone(),
            deadline,
            slot: None,
        }
    }

    /// Runs `fut` until it finishes or `deadline` passes (`Err(Elapsed)`). The future is taken
    /// pinned where the caller made it (`std::pin::pin!`): a future as large as a request's
    /// upstream exchange is then not copied into this one's state (measured: three copies per
    /// request before).
    pub async fn timeout_at<F: Future>(
        &self,
        deadline: Instant,
        mut fut: Pin<&mut F>,
    ) -> Result<F::Output, Elapsed> {
        let sleep = self.sleep_until(deadline);
        let mut sleep = std::pin::pin!(sleep);
        std::future::poll_fn(|cx| {
            if let Poll::Ready(v) = fut.as_mut().poll(cx) {
                return Poll::Ready(Ok(v));
            }
            sleep.as_mut().poll(cx).map(|()| Err(Elapsed))
        })
        .await
    }

    /// Wakes the sleeps whose deadline passed, every tick while any is armed; runs until the
    /// worker's runtime ends (spawn it once per worker).
    pub async fn run_ticker(self) {
        loop {
            std::future::poll_fn(|cx| {
                let mut list = self.list();
                if list.armed > 0 {
                    Poll::Ready(())
                } else {
                    list.ticker = Some(cx.waker().clone());
                    Poll::Pending
                }
            })
            .await;
            tokio::time::sleep(self.tick).await;
            self.sweep(Instant::now());
        }
    }

    /// Wakes every armed sleep whose deadline is not after `now`, and compacts the list.
    fn sweep(&self, now: Instant) {
        let mut due = Vec::new();
        {
            let mut list = self.list();
            for slot in list.slots.iter_mut().flatten() {
                if !slot.fired && slot.deadline <= now {
                    slot.fired = true;
                    due.extend(slot.waker.take());
                }
            }
            list.compact();
        }
        // Woken outside the lock: a woken task may poll (and lock) at once.
        for waker in due {
            waker.wake();
        }
    }
}

/// Why [`Deadlines::timeout_at`] gave up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Elapsed;

/// A sleep of [`Deadlines`]: armed when first polled before its deadline, freed when dropped.
#[derive(Debug)]
pub struct Sleep {
    deadlines: Deadlines,
    deadline: Instant,
    slot: Option<usize>,
}

impl Future for Sleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        let mut list = this.deadlines.list();
        match this.slot {
            Some(i) => match list.slots.get_mut(i).and_then(Option::as_mut) {
                Some(slot) if slot.fired => Poll::Ready(()),
                Some(slot) => {
                    if !slot.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                        slot.waker = Some(cx.waker().clone());
                    }
                    Poll::Pending
                }
                // Cannot happen: a slot is freed only by its sleep's drop.
                None => Poll::Ready(()),
            },
            None => {
                // Armed even when the deadline already passed (no clock read here): the next
                // sweep ends it.
                let slot = Slot {
                    deadline: this.deadline,
                    waker: Some(cx.waker().clone()),
                    fired: false,
                };
                let i = match list.free.pop() {
                    Some(i) => {
                        list.slots[i] = Some(slot);
                        i
                    }
                    None => {
                        list.slots.push(Some(slot));
                        list.slots.len() - 1
                    }
                };
                this.slot = Some(i);
                list.armed += 1;
                let ticker = list.ticker.take();
                drop(list);
                if let Some(t) = ticker {
                    t.wake();
                }
                Poll::Pending
            }
        }
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        if let Some(i) = self.slot.take() {
            let mut list = self.deadlines.list();
            if let Some(s) = list.slots.get_mut(i) {
                if s.take().is_some() {
                    list.armed -= 1;
                    list.free.push(i);
                }
            }
        }
    }
}

impl hyper::rt::Sleep for Sleep {}

impl hyper::rt::Timer for Deadlines {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(self.sleep_until(Instant::now() + duration))
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(Deadlines::sleep_until(self, deadline))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap()
    }

    #[test]
    fn a_sleep_ends_after_its_deadline_and_within_a_tick_or_two() {
        rt().block_on(async {
            let d = Deadlines::new(Duration::from_millis(10));
            tokio::spawn(d.clone().run_ticker());
            for ms in [0u64, 30, 120] {
                let start = Instant::now();
                d.sleep_until(start + Duration::from_millis(ms)).await;
                let took = start.elapsed();
                assert!(
                    took >= Duration::from_millis(ms),
                    "{ms} ms ended after {took:?}"
                );
                assert!(
                    took < Duration::from_millis(ms + 200),
                    "{ms} ms ended after {took:?}"
                );
            }
        });
    }

    #[test]
    fn timeout_gives_up_and_finished_work_wins() {
        rt().block_on(async {
            let d = Deadlines::new(Duration::from_millis(5));
            tokio::spawn(d.clone().run_ticker());
            let never = std::future::pending::<()>();
            let soon = Instant::now() + Duration::from_millis(40);
            assert_eq!(
                d.timeout_at(soon, std::pin::pin!(never)).await,
                Err(Elapsed)
            );
            let quick = tokio::time::sleep(Duration::from_millis(5));
            let later = Instant::now() + Duration::from_secs(5);
            assert_eq!(d.timeout_at(later, std::pin::pin!(quick)).await, Ok(()));
        });
    }

    #[test]
    fn dropped_sleeps_free_their_slots_and_the_list_stays_small() {
        rt().block_on(async {
            let d = Deadlines::new(Duration::from_millis(5));
            tokio::spawn(d.clone().run_ticker());
            for _ in 0..1000 {
                // Armed (polled pending) and dropped, like a timeout whose work finished.
                let fut = std::future::ready(());
                let r = d
                    .timeout_at(
                        Instant::now() + Duration::from_secs(60),
                        std::pin::pin!(async {
                            tokio::task::yield_now().await;
                            fut.await
                        }),
                    )
                    .await;
                assert_eq!(r, Ok(()));
            }
            let list = d.list();
            assert_eq!(list.armed, 0);
            assert!(list.slots.len() <= 1, "{} slots", list.slots.len());
        });
    }

    /// Arms a sleep (polled pending once, as hyper and `timeout_at` do) without a runtime.
    fn arm(d: &Deadlines, deadline: Instant) -> Sleep {
        let mut sleep = d.sleep_until(deadline);
        let mut cx = Context::from_waker(Waker::noop());
        assert!(Pin::new(&mut sleep).poll(&mut cx).is_pending());
        sleep
    }

    #[test]
    fn the_list_shrinks_after_a_spike_and_armed_sleeps_keep_their_slots() {
        let d = Deadlines::new(Duration::from_millis(5));
        let later = Instant::now() + Duration::from_secs(60);
        let mut spike: Vec<Option<Sleep>> = (0..10_000).map(|_| Some(arm(&d, later))).collect();
        assert_eq!(d.list().slots.len(), 10_000);
        // Everything but two ends (slot 7 and slot 5000) while the spike passes.
        for (i, s) in spike.iter_mut().enumerate() {
            if i != 7 && i != 5000 {
                *s = None;
            }
        }
        d.sweep(Instant::now());
        {
            let list = d.list();
            assert_eq!(list.slots.len(), 5001, "the free end is dropped");
            assert_eq!(list.armed, 2);
            let bound = 2 * (list.slots.len() * 2).max(64);
            assert!(list.slots.capacity() <= bound, "{}", list.slots.capacity());
        }
        // New sleeps take the lowest free slots, so the end keeps freeing up.
        let fresh: Vec<Sleep> = (0..3).map(|_| arm(&d, later)).collect();
        assert_eq!(
            fresh.iter().map(|s| s.slot).collect::<Vec<_>>(),
            [Some(0), Some(1), Some(2)]
        );
        spike[5000] = None;
        d.sweep(Instant::now());
        {
            let list = d.list();
            assert_eq!(list.slots.len(), 8, "slots 0-2 and 7 are armed");
            assert!(
                list.slots.capacity() <= 128,
                "{} slots of memory kept",
                list.slots.capacity()
            );
        }
        // The sleeps still armed are still woken at their deadline, and free their slots.
        d.sweep(later);
        let mut cx = Context::from_waker(Waker::noop());
        let mut kept = spike[7].take().unwrap();
        assert!(Pin::new(&mut kept).poll(&mut cx).is_ready());
        drop(kept);
        drop(fresh);
        d.sweep(later);
        let list = d.list();
        assert_eq!((list.armed, list.slots.len(), list.free.len()), (0, 0, 0));
    }
}
