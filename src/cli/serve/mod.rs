//! `rbac-gateway serve`: runs the gateway. This page is the whole start and stop: the flags
//! checked into a [`Config`] (`config.rs`), the gateway assembled from it (`assemble.rs`: its
//! state, tasks, doors and the one list of metric labels), the workers started, the drain.

mod assemble;
mod config;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::anyhow;

use super::toolbox::{failure, init_logging, usage};
use super::Exit;
use crate::cli::args::ServeArgs;
use crate::dataplane::workers::{self, StartError};
use crate::gateway::state::Gateway;
use crate::runtime::metrics::Metrics;
use crate::runtime::signals::Signals;
use crate::runtime::supervise::{self, Task};
use crate::runtime::telemetry::Telemetry;
use crate::stores::audit::Writing;
use assemble::{Admin, Assembled};
use config::Config;

pub fn serve(args: ServeArgs) -> Result<(), Exit> {
    // The runtime for everything that is not request handling: admin listener, spool replay,
    // signals. It lives as long as the process. Made first, so the signal handlers are in place
    // before anything is loaded: SIGHUP never ends the process, SIGTERM never kills it mid-start.
    let bg = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("rbac-gateway-bg")
        .enable_all()
        .build()
        .map_err(failure)?;
    let signals = {
        let _runtime = bg.enter();
        Signals::install()
            .map_err(|e| failure(anyhow!("cannot install the signal handlers: {e}")))?
    };
    // Every flag checked before anything starts or logs.
    let config = Config::check(args)?;
    init_logging(config.log_format);
    let metrics = Arc::new(Metrics::new());
    assemble::prime_labels(&metrics, &config);
    let Some(Assembled {
        gw,
        admin,
        admin_bound,
        writing,
    }) = bg.block_on(assemble::gateway(&config, metrics, &signals))?
    else {
        return Ok(());
    };
    // Export beside the requests, on the background runtime; nothing at all when off.
    let telemetry = match &config.telemetry {
        None => None,
        Some(settings) => {
            let refreshed = gw.clone();
            Some(
                crate::runtime::telemetry::start(
                    settings.clone(),
                    bg.handle(),
                    gw.metrics.clone(),
                    Arc::new(move || refreshed.refresh_gauges()),
                )
                .map_err(|e| usage(anyhow!("OpenTelemetry: {e}")))?,
            )
        }
    };
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let beside = audit_writer_beside(&gw, writing, bg.handle().clone());
    let doors = assemble::doors(&config, &gw);
    let started =
        workers::start(config.threads, doors, stopped, Some(beside)).map_err(|e| match &e {
            StartError::Listen { addr, .. } => failure(anyhow!("{e} ({addr})")),
            StartError::Thread(_) => failure(anyhow!("{e} ({})", config.listen)),
        })?;
    // The addresses bound (port 0 resolved): tests and supervisors read them from this line.
    let (bound, threads) = (started.bound[0], config.threads);
    match started.bound.get(1) {
        Some(authz) => {
            tracing::info!(listen = %bound, admin_listen = %admin_bound, authz_listen = %authz, threads, "listening");
        }
        None => {
            tracing::info!(listen = %bound, admin_listen = %admin_bound, threads, "listening")
        }
    }
    match admin {
        Admin::Bound(admin) => {
            let _runtime = bg.enter();
            supervise::spawn(
                gw.tasks.clone(),
                gw.metrics.clone(),
                Task::Admin,
                crate::doors::admin::serve(admin, gw.clone()),
            );
        }
        // Served since start-up; ready from now on.
        Admin::Serving => gw.set_mapping_missing(None),
    }

    let signal = bg.block_on(signals.stopped());
    shut_down(bg, &config, &gw, stop, started.handles, telemetry, signal)
}

/// The audit writer's task, on the data plane's first worker while its doors serve: the rows of
/// that worker's denials reach it without waking another thread, and its connection is that
/// worker's (`stores/audit/writing.rs`). Once the doors have finished, or if the worker never
/// runs it, panics or is torn down, the background runtime takes it over ([`Handover`]), for
/// what the shutdown still records. Supervised in both places ([`Task::AuditWriter`]).
fn audit_writer_beside(
    gw: &Arc<Gateway>,
    writing: Writing,
    bg: tokio::runtime::Handle,
) -> workers::Beside {
    let over = Handover {
        writing: Some(writing),
        gw: gw.clone(),
        bg,
    };
    Box::new(move |doors_done| {
        let (tasks, metrics) = (over.gw.tasks.clone(), over.gw.metrics.clone());
        let written = async move {
            let mut over = over;
            if let Some(writing) = over.writing.as_mut() {
                if !writing.run_until(doors_done).await {
                    // The queue closed (no writer left): nothing to hand over.
                    over.writing = None;
                }
            }
            // `over` dropped: the background runtime writes from here on.
        };
        Box::pin(supervise::run_watched(
            tasks,
            metrics,
            Task::AuditWriter,
            written,
        ))
    })
}

/// The audit writer's queue end while the data plane's first worker has it: when dropped
/// (the doors finished, the worker never started, or its task panicked or was dropped with its
/// runtime), the background runtime writes from it, after [`Writing::recover`]. Never dropped
/// with the queue's end, which would answer every later denial 503.
struct Handover {
    writing: Option<Writing>,
    gw: Arc<Gateway>,
    bg: tokio::runtime::Handle,
}

impl Drop for Handover {
    fn drop(&mut self) {
        if let Some(mut writing) = self.writing.take() {
            writing.recover();
            let _runtime = self.bg.enter();
            let (tasks, metrics) = (self.gw.tasks.clone(), self.gw.metrics.clone());
            supervise::spawn(tasks, metrics, Task::AuditWriter, writing.run());
        }
    }
}

/// The drain after `signal`: the workers told to `stop` and joined within the grace, what the
/// audit trail and the exporter still hold written out, the background runtime ended. An error
/// when requests were cut.
fn shut_down(
    bg: tokio::runtime::Runtime,
    config: &Config,
    gw: &Gateway,
    stop: tokio::sync::watch::Sender<bool>,
    workers: Vec<std::thread::JoinHandle<()>>,
    telemetry: Option<Telemetry>,
    signal: &str,
) -> Result<(), Exit> {
    let stopping = Instant::now();
    let grace = config.shutdown_grace();
    tracing::info!(
        signal,
        grace_seconds = grace.as_secs(),
        "shutting down: finishing in-flight requests"
    );
    if stop.send(true).is_err() {
        tracing::warn!("every worker had already stopped");
    }
    for w in workers {
        if w.join().is_err() {
            tracing::error!("a worker thread panicked");
        }
    }
    // The count of the denials without a session of the window in progress: all queued at once
    // and waited for within what the drain left of the grace (at least --db-timeout-ms).
    let counts = gw.anonymous.ended(Instant::now(), true);
    if !counts.is_empty() {
        let left = grace
            .saturating_sub(stopping.elapsed())
            .max(config.db_timeout);
        let write = |row| {
            let audit = gw.audit.clone();
            async move { audit.record(row).await.map_err(|e| e.to_string()) }
        };
        let written = crate::gateway::anonymous::write_counts(counts, &write);
        // The timer made inside the runtime (made outside, it panicked: no reactor).
        if bg
            .block_on(async { tokio::time::timeout(left, written).await })
            .is_err()
        {
            tracing::error!(
                "the counts of denials without a session were not all recorded within the grace"
            );
        }
    }
    // Rows of denials answered 503 still in memory: one last bounded try.
    bg.block_on(gw.audit.finish(config.db_timeout));
    // What is queued goes out within what the drain left of the grace (at least 100 ms).
    if let Some(t) = telemetry {
        let left = grace.saturating_sub(stopping.elapsed());
        t.shutdown(&bg, left.max(Duration::from_millis(100)));
    }
    // The background runtime's tasks end at their next await. A blocking thread still busy (a
    // lookup of the collector's name that gets no answer: getaddrinfo, which no timeout stops)
    // is left behind at the end of the grace rather than waited for (issue 66: dropping the
    // runtime waited for it, 30 s past SIGTERM with a silent DNS server).
    let left = grace
        .saturating_sub(stopping.elapsed())
        .max(Duration::from_millis(100));
    let waited = Instant::now();
    bg.shutdown_timeout(left);
    if waited.elapsed() >= left {
        tracing::warn!(
            waited_ms = left.as_millis() as u64,
            "shutdown: a blocking task of the background runtime (a name lookup, a file operation) was still running at the end of the grace and is left behind"
        );
    }
    // A supervisor (the Heroku launcher, systemd) learns from the status that requests were cut.
    match crate::dataplane::listen::cut_at_shutdown() {
        0 => {
            tracing::info!("shut down");
            Ok(())
        }
        cut => Err(failure(anyhow!(
            "shut down with {cut} connection(s) cut: their requests were still in progress when the {} s grace period (--shutdown-grace) ran out and got no answer",
            grace.as_secs()
        ))),
    }
}
