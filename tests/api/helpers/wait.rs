//! Waiting on a condition with a deadline, never on a fixed sleep.

use std::time::{Duration, Instant};

/// Polls `ready` until it holds, failing the test with `what` after `limit`: the one way tests
/// wait (on a metric, `/readyz`, a row), never a fixed sleep.
pub async fn eventually<F, Fut>(limit: Duration, what: &str, ready: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    eventually_explained(limit, what, ready, || async { String::new() }).await
}

/// [`eventually`], its failure followed by what `explain` says then (the state that tells why:
/// `/readyz`, a log's errors).
pub async fn eventually_explained<F, Fut, E, EFut>(
    limit: Duration,
    what: &str,
    mut ready: F,
    explain: E,
) where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
    E: FnOnce() -> EFut,
    EFut: std::future::Future<Output = String>,
{
    let deadline = Instant::now() + limit;
    while !ready().await {
        if Instant::now() >= deadline {
            panic!("not within {limit:?}: {what}{}", explain().await);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Tests that hold a time bound (a revocation within 250 ms, a silent connection given up
/// within the timeout) and the heaviest tests (several gateways under load, a pooler, thousands
/// of Werkzeug routings) take this lock and so run one at a time: on two cores, a heavy
/// neighbour turns a bound into a coin toss. Every other test runs beside them as before.
static TIMED: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The lock of [`TIMED`], held until the guard is dropped (at the end of the test).
pub async fn timed_alone() -> tokio::sync::MutexGuard<'static, ()> {
    TIMED.lock().await
}

/// [`timed_alone`] for a test that is not async.
pub fn timed_alone_blocking() -> tokio::sync::MutexGuard<'static, ()> {
    TIMED.blocking_lock()
}

/// [`eventually`] for a value: polls `found` until it gives one, and returns it; after `limit`
/// fails the test with what `what` says then (the wait, and the log that tells why).
pub async fn eventually_some<T, F, Fut, W>(limit: Duration, what: W, found: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
    W: FnOnce() -> String,
{
    match poll_until(limit, found).await {
        Some(v) => v,
        None => panic!("not within {limit:?}: {}", what()),
    }
}

/// Polls `found` until it gives a value, for `limit` at most: the value, or None when the time
/// ran out (for a test that says more than [`eventually_some`] would, or cleans up first).
pub async fn poll_until<T, F, Fut>(limit: Duration, mut found: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = found().await {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits (`limit` at most) for `child` to exit, and returns its status; after `limit` fails the
/// test with what `what` says then.
pub async fn exited_within<W: FnOnce() -> String>(
    child: &mut std::process::Child,
    limit: Duration,
    what: W,
) -> std::process::ExitStatus {
    eventually_some(limit, what, || {
        let status = child.try_wait().unwrap();
        async move { status }
    })
    .await
}

/// For a `Drop`, which cannot wait asynchronously: waits (`limit` at most, blocking the thread)
/// for `child` to exit; whether it did.
pub fn exited_within_blocking(child: &mut std::process::Child, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
