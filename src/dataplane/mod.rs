//! Wire mechanics under the doors. Where a module replaces a standard part, its doc names the
//! crate, the measured gain, and the differential test that pins its behaviour to the crate's
//! or to a reference.

pub mod header_timer;
pub mod listen;
pub mod sniff;
pub mod upstream;
pub mod workers;

use std::pin::Pin;

/// `kept`, a tokio timer kept from an earlier wait, set to `deadline`, or a new timer when none
/// was kept. The deadline is later than the kept timer's last, so tokio only moves the expiry of
/// the entry already in its wheel (a compare-and-swap), where a new timer a wait is registered
/// in the wheel and removed again. The upstream connections' exchanges (`upstream/pool.rs`) and
/// hyper's header reads ([`header_timer`]) keep their timers this way.
pub(crate) fn rearm(
    kept: Option<Pin<Box<tokio::time::Sleep>>>,
    deadline: tokio::time::Instant,
) -> Pin<Box<tokio::time::Sleep>> {
    match kept {
        Some(mut timer) => {
            timer.as_mut().reset(deadline);
            timer
        }
        None => Box::pin(tokio::time::sleep_until(deadline)),
    }
}
