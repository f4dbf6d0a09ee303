//! Wire mechanics under the doors. Where a module replaces a standard part, its doc names the
//! crate, the measured gain, and the differential test that pins its behaviour to the crate's
//! or to a reference.

pub mod header_timer;
pub mod listen;
pub mod sniff;
pub mod upstream;
pub mod workers;

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

/// A tokio timer kept from one wait to the next, for deadlines that move later: the upstream
/// connections' exchanges (`upstream/pool.rs`) and hyper's header reads ([`header_timer`]).
///
/// A new timer a wait is registered in the driver's wheel and removed again (about 300
/// instructions a request). Moving a kept one to each later deadline (`Sleep::reset`) still
/// cost about 117 instructions a wait, twice a request (docs/performance-log.md, 2026-11-29).
/// So the kept timer is left where it is when the new deadline is later than the one it
/// holds, and only the deadline is written down: once the timer fires, it is set to the
/// deadline written down and waits again. A wait still ends at its own deadline, never before
/// it; a connection used over more than one timeout has its timer fire about once per timeout
/// at a deadline already past, and set again (a wake-up and a new entry in the wheel). A
/// deadline earlier than the timer's moves the timer at once (an upstream exchange whose
/// deadline was taken before a later one's can take the connection after it).
pub(crate) struct KeptTimer(Box<Kept>);

/// Behind a pointer, so that what keeps a [`KeptTimer`] (an upstream connection, moved in and
/// out of its pool each request) is no larger than with the bare timer it replaced.
struct Kept {
    sleep: Pin<Box<tokio::time::Sleep>>,
    /// The deadline of the wait under way; never earlier than `sleep`'s.
    deadline: tokio::time::Instant,
}

impl KeptTimer {
    /// `kept`, set to `deadline`, or a new timer when none was kept.
    pub(crate) fn set(kept: Option<KeptTimer>, deadline: tokio::time::Instant) -> KeptTimer {
        match kept {
            Some(mut timer) => {
                let kept = &mut *timer.0;
                if deadline < kept.sleep.deadline() {
                    kept.sleep.as_mut().reset(deadline);
                }
                kept.deadline = deadline;
                timer
            }
            None => KeptTimer(Box::new(Kept {
                sleep: Box::pin(tokio::time::sleep_until(deadline)),
                deadline,
            })),
        }
    }

    /// The deadline of the wait under way.
    #[cfg(test)]
    pub(crate) fn deadline(&self) -> tokio::time::Instant {
        self.0.deadline
    }
}

/// Ready once the deadline last set has passed.
impl Future for KeptTimer {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let kept = &mut *self.0;
        loop {
            std::task::ready!(kept.sleep.as_mut().poll(cx));
            if kept.sleep.deadline() >= kept.deadline {
                return Poll::Ready(());
            }
            // Fired at an earlier deadline it was left at: on to this wait's own.
            kept.sleep.as_mut().reset(kept.deadline);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::KeptTimer;
    use std::time::Duration;
    use tokio::time::Instant;

    #[tokio::test]
    async fn a_wait_ends_at_its_own_deadline_whatever_the_timer_held() {
        let start = Instant::now();
        let bound = Duration::from_secs(5);
        // Left at an earlier deadline: it fires there, and still waits for its own.
        let mut timer = KeptTimer::set(None, start + Duration::from_millis(20));
        timer = KeptTimer::set(Some(timer), start + Duration::from_millis(150));
        assert_eq!(timer.deadline(), start + Duration::from_millis(150));
        tokio::time::timeout(bound, &mut timer)
            .await
            .expect("the wait ends");
        assert!(
            start.elapsed() >= Duration::from_millis(150),
            "not before its deadline"
        );
        // A deadline earlier than the one the timer holds, still to come, moves it at once (a
        // new timer holds its first deadline: 60 s here).
        let again = Instant::now();
        let mut timer = KeptTimer::set(None, again + Duration::from_secs(60));
        timer = KeptTimer::set(Some(timer), again + Duration::from_millis(30));
        tokio::time::timeout(bound, &mut timer)
            .await
            .expect("the earlier deadline ends the wait");
        assert!(again.elapsed() >= Duration::from_millis(30));
        assert!(again.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn an_earlier_deadline_the_timer_held_does_not_end_a_later_wait() {
        let start = Instant::now();
        let mut timer = KeptTimer::set(None, start + Duration::from_millis(10));
        timer = KeptTimer::set(Some(timer), start + Duration::from_millis(300));
        let cut = tokio::time::timeout(Duration::from_millis(150), &mut timer).await;
        assert!(
            cut.is_err(),
            "still waiting past the deadline the timer held"
        );
        assert!(start.elapsed() >= Duration::from_millis(150));
    }
}
