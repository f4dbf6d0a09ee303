//! The audit writer's task: the writer's end of the queue ([`Writing`]), taking every row queued
//! behind the first as one batch (group commit) and answering each row's caller with the
//! batch's result. The writing itself (database, spool, rows kept late) is `Inner`'s, in
//! `writer.rs`.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::{AuditError, Inner, MAX_BATCH};
use crate::policy::audit_event::AuditEvent;

/// A row shared with the caller that waits for it (no copy of its fields per row).
pub(super) type Job = (Arc<AuditEvent>, oneshot::Sender<Result<(), AuditError>>);

/// How long a batch's first row waits at most for the data plane's passes under way to end
/// ([`crate::runtime::passes`]), as tokio's timer keeps it (a 1 ms tick, looked at when the
/// writer's worker reaches its driver: about 2 ms at worst): a worker that never goes idle
/// delays a denial's answer by about this much.
const GATHER_MAX: Duration = Duration::from_micros(500);

/// The writer's end of the queue, and the task that writes it ([`Writing::run`]) on whichever
/// runtime runs it. In `serve`, the data plane's first worker runs it while its doors serve:
/// that worker's rows reach it without waking another thread, and its connection is that
/// worker's own (docs/performance-log.md, 2026-11-28, "the writer beside the data plane"); once
/// the doors have finished, the background runtime, for what the shutdown still records.
pub struct Writing(Unwritten);

impl Writing {
    pub(super) fn new(inner: Arc<Inner>, rx: mpsc::Receiver<Job>) -> Writing {
        Writing(Unwritten {
            inner,
            rx,
            in_flight: Vec::new(),
        })
    }

    /// Writes batches until every [`super::AuditWriter`] is dropped.
    pub async fn run(mut self) {
        self.run_until(std::future::pending()).await;
    }

    /// Writes batches until every [`super::AuditWriter`] is dropped (false), or until `stop` is
    /// ready (true), looked at between batches (a batch begun is written to its end): then the
    /// kept connection is closed (its socket is this runtime's), and the queue's end may be run
    /// by another runtime. Rows queued meanwhile wait in the queue.
    pub async fn run_until(&mut self, stop: impl Future<Output = ()>) -> bool {
        let mut stop = std::pin::pin!(stop);
        loop {
            let first = tokio::select! {
                biased;
                () = &mut stop => break,
                job = self.0.rx.recv() => match job {
                    Some(job) => job,
                    None => return false,
                },
            };
            self.0.batch(first).await;
        }
        if let Some(h) = self.0.inner.held.lock().await.take() {
            h.discard();
        }
        true
    }

    /// After a run cut short (its task panicked or was dropped mid-batch): the batch it was
    /// writing goes to the rows kept for the database (its callers were answered 503), and the
    /// kept connection, which may be mid-statement, is closed. Then it can run again.
    pub fn recover(&mut self) {
        let rows = std::mem::take(&mut self.0.in_flight);
        if !rows.is_empty() {
            self.0.inner.keep_late(&rows);
        }
        if let Ok(mut held) = self.0.inner.held.try_lock() {
            if let Some(h) = held.take() {
                h.discard();
            }
        }
    }
}

impl Unwritten {
    /// Writes `first` and every row queued behind it (up to [`MAX_BATCH`]) as one batch, and
    /// answers their callers.
    async fn batch(&mut self, first: Job) {
        // Natural group commit: take every row queued while the previous write was in flight
        // and those of the data plane's passes under way when the first arrived, without
        // waiting for more (a fixed gathering delay measured as pure latency on the 403 path:
        // d/c 0.48 with a 2 ms wait). A pass ends when its worker has nothing ready.
        crate::runtime::passes::PASSES.settled(GATHER_MAX).await;
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match self.rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let waiters: Vec<_>;
        (self.in_flight, waiters) = batch.into_iter().unzip();
        self.inner
            .metrics
            .audit_queue_depth
            .sub(self.in_flight.len() as i64);
        // Written from where a drop finds it (no copy of the batch).
        let result = self.inner.write(&self.in_flight).await;
        let rows = std::mem::take(&mut self.in_flight);
        if result.is_err() {
            self.inner.keep_late(&rows);
        }
        self.inner.metrics.audit_batches.inc();
        for waiter in waiters {
            // Err: that caller stopped waiting (its client hung up); the row is durable, or
            // failed, either way.
            let _ = waiter.send(result.clone());
        }
    }
}

/// The writer task's state, so that rows it had not written when it was dropped are kept
/// (dropped with its runtime when the gateway stops: the rows of the batch being written and
/// those still queued go to the late queue, to be written by `finish` or logged in full).
struct Unwritten {
    inner: Arc<Inner>,
    rx: mpsc::Receiver<Job>,
    /// The batch being written (it may have committed: kept rows are written `ON CONFLICT DO
    /// NOTHING`).
    in_flight: Vec<Arc<AuditEvent>>,
}

impl Drop for Unwritten {
    fn drop(&mut self) {
        let mut rows = std::mem::take(&mut self.in_flight);
        while let Ok((row, _)) = self.rx.try_recv() {
            rows.push(row);
        }
        if !rows.is_empty() {
            self.inner.keep_late(&rows);
        }
    }
}
