//! Background tasks under supervision: the change feed, the mapping watcher, the audit writer
//! and its spool replay, the admin listener. Each runs until the process ends; if one returns
//! or panics, the gateway is no longer what it claims to be (caches may go stale, reloads stop,
//! spooled rows wait), so `/readyz` answers 503 naming it, `rbac_gateway_task_failures_total`
//! counts it, and the log says why. A dead task is not restarted behind the operator's back.

use std::future::Future;
use std::sync::{Arc, Mutex};

use crate::runtime::metrics::Metrics;

/// Every supervised task. Its name is the label value of `rbac_gateway_task_failures_total`
/// and what `/readyz` says of a dead one; a new background task is a new variant here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Task {
    Feed,
    Reload,
    AuditWriter,
    AuditReplay,
    Admin,
    Sweeper,
    Alerts,
    FreescoutWebhook,
    AnonymousDenials,
    Promotion,
    AuditOutbox,
}

impl Task {
    pub const ALL: [Task; 11] = [
        Task::Feed,
        Task::Reload,
        Task::AuditWriter,
        Task::AuditReplay,
        Task::Admin,
        Task::Sweeper,
        Task::Alerts,
        Task::FreescoutWebhook,
        Task::AnonymousDenials,
        Task::Promotion,
        Task::AuditOutbox,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Task::Feed => "feed",
            Task::Reload => "reload",
            Task::AuditWriter => "audit_writer",
            Task::AuditReplay => "audit_replay",
            Task::Admin => "admin",
            Task::Sweeper => "sweeper",
            Task::Alerts => "alerts",
            Task::FreescoutWebhook => "freescout_webhook",
            Task::AnonymousDenials => "anonymous_denials",
            Task::Promotion => "promotion",
            Task::AuditOutbox => "audit_outbox",
        }
    }
}

impl std::fmt::Display for Task {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The tasks that died.
#[derive(Debug, Default)]
pub struct Tasks {
    dead: Mutex<Vec<Task>>,
}

impl Tasks {
    /// The tasks that stopped, in the order they did.
    pub fn dead(&self) -> Vec<Task> {
        self.dead.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn mark(&self, task: Task) {
        self.dead
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(task);
    }
}

/// Spawns `task` on the current runtime and watches it.
pub fn spawn<F>(tasks: Arc<Tasks>, metrics: Arc<Metrics>, name: Task, task: F)
where
    F: Future<Output = ()> + Send + 'static,
{
    let handle = tokio::spawn(faulty(name, task));
    tokio::spawn(async move {
        let why = match handle.await {
            Ok(()) => "returned".to_string(),
            Err(e) => ended(e),
        };
        stopped(&tasks, &metrics, name, &why);
    });
}

/// `task`, which dies at once in a debug build whose `GATEWAY_TEST_PANIC_TASK` names it (fault
/// injection for the test suite; in release builds only `task` is awaited, and `name` unused).
#[cfg_attr(not(debug_assertions), allow(unused_variables))]
async fn faulty<F: Future<Output = ()>>(name: Task, task: F) {
    #[cfg(debug_assertions)]
    if std::env::var("GATEWAY_TEST_PANIC_TASK").as_deref() == Ok(name.as_str()) {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        panic!("GATEWAY_TEST_PANIC_TASK={name}");
    }
    task.await
}

/// How a task that did not return ended.
fn ended(e: tokio::task::JoinError) -> String {
    match e.is_panic() {
        true => format!("panicked: {}", panic_text(e.into_panic())),
        false => format!("was cancelled: {e}"),
    }
}

/// `name` stopped: said, counted, and named by `/readyz`.
fn stopped(tasks: &Tasks, metrics: &Metrics, name: Task, why: &str) {
    tracing::error!(task = name.as_str(), why = %why, "a background task stopped: /readyz now answers 503");
    metrics
        .task_failures
        .with_label_values(&[name.as_str()])
        .inc();
    tasks.mark(name);
}

/// Runs `task` as a task of the current runtime until it ends, for one that ends by design
/// (the audit writer on the data plane, until its doors have finished): a panic is counted and
/// said as [`spawn`] does, and the caller goes on.
pub async fn run_watched<F>(tasks: Arc<Tasks>, metrics: Arc<Metrics>, name: Task, task: F)
where
    F: Future<Output = ()> + Send + 'static,
{
    if let Err(e) = tokio::spawn(faulty(name, task)).await {
        stopped(&tasks, &metrics, name, &ended(e));
    }
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
