//! Background tasks under supervision: the change feed, the mapping watcher, the audit writer
//! and its spool replay, the admin listener. Each runs until the process ends; if one returns
//! or panics, the gateway is no longer what it claims to be (caches may go stale, reloads stop,
//! spooled rows wait), so `/readyz` answers 503 naming it, `rbac_gateway_task_failures_total`
//! counts it, and the log says why. A dead task is not restarted behind the operator's back.

use std::future::Future;
use std::sync::{Arc, Mutex};

use crate::metrics::Metrics;

/// The names of the tasks that died.
#[derive(Debug, Default)]
pub struct Tasks {
    dead: Mutex<Vec<&'static str>>,
}

impl Tasks {
    /// The tasks that stopped, in the order they did.
    pub fn dead(&self) -> Vec<&'static str> {
        self.dead.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn mark(&self, name: &'static str) {
        self.dead
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(name);
    }
}

/// Names every supervised task (the label values of `rbac_gateway_task_failures_total`).
pub const TASKS: &[&str] = &[
    "feed",
    "reload",
    "audit_writer",
    "audit_replay",
    "admin",
    "sweeper",
    "alerts",
    "freescout_webhook",
];

/// Spawns `task` on the current runtime and watches it.
pub fn spawn<F>(tasks: Arc<Tasks>, metrics: Arc<Metrics>, name: &'static str, task: F)
where
    F: Future<Output = ()> + Send + 'static,
{
    // In release builds the block only awaits `task` (the fault injection is compiled out).
    #[cfg_attr(not(debug_assertions), allow(clippy::redundant_async_block))]
    let handle = tokio::spawn(async move {
        #[cfg(debug_assertions)]
        if std::env::var("GATEWAY_TEST_PANIC_TASK").as_deref() == Ok(name) {
            // Fault injection for the test suite (debug builds only): this task dies at once.
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            panic!("GATEWAY_TEST_PANIC_TASK={name}");
        }
        task.await
    });
    tokio::spawn(async move {
        let why = match handle.await {
            Ok(()) => "returned".to_string(),
            Err(e) if e.is_panic() => format!("panicked: {}", panic_text(e.into_panic())),
            Err(e) => format!("was cancelled: {e}"),
        };
        tracing::error!(task = name, why = %why, "a background task stopped: /readyz now answers 503");
        metrics.task_failures.with_label_values(&[name]).inc();
        tasks.mark(name);
    });
}

fn panic_text(p: Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "(not a string)".to_string()
    }
}
