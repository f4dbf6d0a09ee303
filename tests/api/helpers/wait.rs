//! Waiting on a condition with a deadline, never on a fixed sleep.

use std::time::{Duration, Instant};

/// Polls `ready` until it holds, failing the test with `what` after `limit`: the one way tests
/// wait (on a metric, `/readyz`, a row), never a fixed sleep.
pub async fn eventually<F, Fut>(limit: Duration, what: &str, mut ready: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !ready().await {
        assert!(Instant::now() < deadline, "not within {limit:?}: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
