//! Grants that end by themselves (004 §3.2, §5, §6; I-9; RV-4, RV-12 in part): the sweep
//!
//! - revokes every active `rbac_ticket_grants` row whose ticket FreeScout reports RESOLVED or
//!   CLOSED (`revoke_reason = 'ticket_closed'`) or whose `expires_at_utc` passed (`'expired'`),
//!   writing its `rbac_grants_audit` row (`ticket_expire`) **first**, in the same transaction
//!   (I-9: if the audit insert fails, that grant is not revoked);
//! - writes one `break_glass_expire` row for every break-glass session that expired or was
//!   revoked (a session ends 4 hours after it was granted at the latest, I-4, whatever expiry
//!   its row was given: [`crate::break_glass_end`], as the principal reads it).
//!
//! Each grant and each session is handled on its own, in a transaction of its own (issue 40):
//! one whose row cannot be written is retried on every later sweep and counted in
//! `rbac_gateway_sweep_failures` (which `/readyz` names after N failures), while every other one
//! proceeds. FreeScout is asked once per ticket, at most `concurrency` tickets at a time, each
//! with its own deadline, and a ticket's grants are revoked as soon as its answer comes: a ticket
//! whose request hangs delays only itself, and later sweeps do not ask about it again while its
//! request is in flight.
//!
//! Each row's id is a UUID derived from what it records
//! ([`crate::stores::revocation::audit_row_id`]) and inserted with `ON CONFLICT DO NOTHING`; a grant is read
//! again under a row lock before its audit row. One replica sweeps at a time: the one holding
//! the sweep's session-level advisory lock, on a connection it keeps for that; a replica that
//! dies releases the lock with its connection and another takes over at its next tick.
//! FreeScout unreachable: nothing is revoked on a guess for that ticket. A ticket FreeScout does
//! not know (404) or reports in another state is left to the per-request check (which fails
//! closed on it).
//!
//! A ticket FreeScout is asked about is ended as FreeScout's webhook ends one
//! ([`crate::jobs::ticket_ended::ask_and_end`]: FreeScout asked, each grant revoked, counted and
//! logged). The revocation of a grant and the count of an item's failures are store operations
//! ([`crate::stores::revocation`]); the sweep's own statements (its lock, the grants and
//! sessions it lists, the `break_glass_expire` row) are [`crate::stores::sweep`]'s. This module
//! issues none.

use std::collections::{BTreeSet, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::{Connection, PgConnection};

use crate::jobs::ticket_ended::{self, ask_and_end, Ender, Ending};
use crate::runtime::metrics::Metrics;
use crate::stores::db::{Bounded, Db};
use crate::stores::revocation::{record_failure, revoke_or_record, Caller, Done};
use crate::stores::sweep as store;

/// How the sweep asks FreeScout and bounds its database steps.
#[derive(Debug, Clone)]
pub struct SweepSettings {
    /// FreeScout's status URL template (`{ticket_id}`); None: only expired grants are revoked.
    pub validation_url: Option<String>,
    /// The deadline of one ticket's status request.
    pub freescout_timeout: Duration,
    /// Most FreeScout requests in flight.
    pub concurrency: usize,
    /// The bound of each database step.
    pub limit: Duration,
}

/// What one sweep did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    /// Another replica held the lock: this one did nothing.
    pub skipped: bool,
    /// (grant id, ticket id, reason) of every grant revoked.
    pub revoked: Vec<(String, String, String)>,
    /// Break-glass sessions whose expiry row was written.
    pub break_glass_expired: Vec<String>,
    /// (ticket, error) of every ticket FreeScout could not answer for.
    pub freescout_failures: Vec<(String, String)>,
    /// (item, error) of every grant (`grant:<id>`) or session (`break_glass:<id>`) whose rows
    /// could not be written (retried on the next sweep).
    pub failures: Vec<(String, String)>,
}

impl Report {
    pub fn add(&mut self, d: Done) {
        match d {
            Done::Revoked(g, t, r) => self.revoked.push((g, t, r)),
            Done::BreakGlassExpired(s) => self.break_glass_expired.push(s),
            Done::FreeScout(t, e) => self.freescout_failures.push((t, e)),
            Done::Failed(i, e) => self.failures.push((i, e)),
        }
    }
}

/// The sweep: it retries what failed at its next sweep.
pub const SWEEP: Caller<'static> = Caller {
    name: "sweep",
    retry: "retried next sweep",
};

/// Removes `ticket` from the in-flight set when its task ends, however it ends.
struct InFlight {
    set: Arc<Mutex<HashSet<String>>>,
    ticket: String,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.set
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.ticket);
    }
}

/// The sweep of one process: the lock it may hold, and the FreeScout requests in flight.
pub struct Sweeper {
    pool: Db,
    settings: Arc<SweepSettings>,
    /// The sweeper's own connection, outside the pool: it holds the sweep's advisory lock
    /// when `leader` (this process sweeps while it lives).
    lease: Option<PgConnection>,
    leader: bool,
    /// Sweep without the lock (`sweep --once --force`): an operator's sweep while a serving
    /// gateway leads. Each grant is still revoked once (row lock, `ON CONFLICT DO NOTHING`), as
    /// behind a transaction pooler, where every replica sweeps.
    unlocked: bool,
    in_flight: Arc<Mutex<HashSet<String>>>,
    permits: Arc<tokio::sync::Semaphore>,
    /// Where a ticket's revocations are counted and logged as they are made (`serve`). None:
    /// they are only reported (`sweep --once`).
    metrics: Option<Arc<Metrics>>,
    /// One task per ticket being asked; each yields what it did.
    pub tasks: tokio::task::JoinSet<Vec<Done>>,
}

impl Sweeper {
    pub fn new(pool: Db, settings: SweepSettings, metrics: Option<Arc<Metrics>>) -> Sweeper {
        let permits = Arc::new(tokio::sync::Semaphore::new(settings.concurrency.max(1)));
        Sweeper {
            pool,
            settings: Arc::new(settings),
            lease: None,
            leader: false,
            unlocked: false,
            in_flight: Default::default(),
            permits,
            metrics,
            tasks: tokio::task::JoinSet::new(),
        }
    }

    /// Whether this process holds the sweep's lock (taking it when free). The lock lives on a
    /// connection of the sweeper's own, outside the pool (the requests' connections stay
    /// theirs); a connection that fails is dropped, its socket closes and the server releases
    /// the lock with it, and the next tick opens another.
    async fn lead(&mut self) -> Result<bool, sqlx::Error> {
        let limit = self.settings.limit;
        if self.unlocked {
            return Ok(true);
        }
        if !self.pool.has_sessions().await? {
            // Behind a transaction pooler a session lock would stay with a server connection
            // the pooler shares (and outlive this process): every replica sweeps instead. Each
            // grant is still revoked once (row lock, ON CONFLICT DO NOTHING); FreeScout may be
            // asked once per replica. `--direct-database-url` gives the lock back.
            if !self.leader {
                tracing::info!("sweep: the database URL is served by a transaction pooler: this replica sweeps without the lock (set --direct-database-url for one sweeper)");
                self.leader = true;
            }
            return Ok(true);
        }
        let conn = match self.lease.as_mut() {
            Some(conn) => conn,
            None => {
                // Session state: never through a transaction pooler (`--direct-database-url`).
                let options = self.pool.direct_options();
                let conn = PgConnection::connect_with(options).bounded(limit).await?;
                self.leader = false;
                self.lease.insert(conn)
            }
        };
        let answer: Result<bool, sqlx::Error> = if self.leader {
            // Still ours while the connection answers.
            store::still_held(conn, limit).await
        } else {
            store::try_lock(conn, limit).await
        };
        match answer {
            Ok(lead) => {
                self.leader = lead;
                Ok(lead)
            }
            Err(e) => {
                if self.leader {
                    tracing::warn!(error = %e, "sweep: the connection holding the sweep's lock failed; it is given up");
                }
                self.lease = None;
                self.leader = false;
                Err(e)
            }
        }
    }

    /// Gives the lock up: its connection is closed, and the lock goes with it.
    pub async fn release(&mut self) {
        self.leader = false;
        if let Some(conn) = self.lease.take() {
            if let Err(e) = crate::stores::db::within(self.settings.limit, conn.close()).await {
                tracing::debug!(error = %e, "sweep: the lock's connection did not close cleanly (dropped: closed all the same)");
            }
        }
    }

    /// One tick: expired grants and break-glass expiry rows are handled at once, each on its
    /// own; FreeScout's answers come through [`Sweeper::tasks`] (a ticket already being asked
    /// is not asked again).
    pub async fn tick(&mut self) -> Result<Report, sqlx::Error> {
        let mut report = Report::default();
        if !self.lead().await? {
            report.skipped = true;
            return Ok(report);
        }
        let limit = self.settings.limit;
        let pool = self.pool.clone();
        // Nothing of Console's is read or written where its role's code would run as the gateway
        // (migration 0034; the alert pass alerts it): the sweep waits until it is gone.
        if let Some(found) = crate::stores::schema::console_code_anywhere(&pool).await? {
            if !found.is_empty() {
                let found = found.join("; ");
                tracing::error!(findings = %found, "sweep: Console's tables carry code that would run as the gateway; nothing of them is read or written until it is gone");
                report.add(Done::Failed("Console's tables".to_string(), found));
                return Ok(report);
            }
        }
        // Failures of items that no longer wait (revoked by someone else, ended otherwise) are
        // no longer named.
        store::clear_settled_failures(&pool, limit).await?;
        let grants = store::active_grants(&pool, limit).await?;
        let (expired, live): (Vec<_>, Vec<_>) = grants.into_iter().partition(|g| g.expired);
        let live: BTreeSet<String> = live.into_iter().map(|g| g.ticket_id).collect();
        // FreeScout first (its answers take longest), then the expired grants meanwhile.
        if let Some(url) = self.settings.validation_url.clone() {
            for ticket in live {
                let guard = {
                    let mut set = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
                    if !set.insert(ticket.clone()) {
                        continue;
                    }
                    InFlight {
                        set: self.in_flight.clone(),
                        ticket: ticket.clone(),
                    }
                };
                let (pool, permits, url) = (pool.clone(), self.permits.clone(), url.clone());
                let metrics = self.metrics.clone();
                let timeout = self.settings.freescout_timeout;
                self.tasks.spawn(async move {
                    let _guard = guard;
                    let Ok(_permit) = permits.acquire_owned().await else {
                        return vec![];
                    };
                    let ender = Ender {
                        pool: &pool,
                        validation_url: &url,
                        freescout_timeout: timeout,
                        limit,
                        by: SWEEP,
                        metrics: metrics.as_deref(),
                    };
                    match ask_and_end(&ender, &ticket).await {
                        Ending::Ended(_, done) => done,
                        Ending::Unlisted(_, e) => {
                            tracing::error!(ticket = %ticket, error = %e, "sweep: the ticket's grants could not be read; retried next sweep");
                            vec![Done::Failed(format!("ticket:{ticket}"), e.to_string())]
                        }
                        Ending::Unknown | Ending::Open(_) => vec![],
                        Ending::Unanswered(e) => {
                            tracing::error!(ticket = %ticket, error = %e, "sweep: FreeScout did not answer; the ticket's grants are kept");
                            vec![Done::FreeScout(ticket, e.to_string())]
                        }
                    }
                });
            }
        }
        for g in expired {
            if let Some(d) =
                revoke_or_record(&pool, &g.id, &g.ticket_id, "expired", limit, SWEEP).await
            {
                report.add(d);
            }
        }
        // Break-glass sessions that ended and have no expiry row yet, each on its own.
        let ended_sessions = store::ended_break_glass_sessions(&pool, limit).await?;
        for session in ended_sessions {
            let item = format!("break_glass:{session}");
            let written = store::write_break_glass_expire(&pool, &session, &item, limit).await;
            match written {
                Ok(Some(s)) => report.add(Done::BreakGlassExpired(s)),
                Ok(None) => {}
                Err(e) => {
                    let error = e.to_string();
                    tracing::error!(session = %session, error = %error, "sweep: the break_glass_expire row could not be written; retried next sweep");
                    record_failure(&pool, &item, &error, limit).await;
                    report.add(Done::Failed(item, error));
                }
            }
        }
        Ok(report)
    }
}

/// One sweep to the end (`sweep --once`): one tick, then every FreeScout answer it waited for;
/// the lock is given up afterwards.
pub async fn sweep_once(
    pool: &Db,
    settings: SweepSettings,
    force: bool,
) -> Result<Report, sqlx::Error> {
    let mut sweeper = Sweeper::new(pool.clone(), settings, None);
    sweeper.unlocked = force;
    let mut report = sweeper.tick().await;
    if let Ok(r) = &mut report {
        while let Some(joined) = sweeper.tasks.join_next().await {
            match joined {
                Ok(done) => done.into_iter().for_each(|d| r.add(d)),
                Err(e) => r.add(Done::Failed("freescout task".into(), e.to_string())),
            }
        }
    }
    sweeper.release().await;
    report
}

/// Counts what the sweep did in the metrics and logs it.
fn account(metrics: &Metrics, done: &Done) {
    match done {
        Done::Revoked(grant, ticket, reason) => {
            ticket_ended::revoked(metrics, SWEEP, grant, ticket, reason)
        }
        Done::BreakGlassExpired(s) => {
            metrics
                .sweep_revocations
                .with_label_values(&["break_glass_expire"])
                .inc();
            tracing::info!(session = %s, "sweep: break-glass session ended (break_glass_expire row written)");
        }
        Done::FreeScout(..) => metrics.sweep_failures.inc(),
        Done::Failed(..) => metrics.sweep_item_failures.inc(),
    }
}

/// Counts a sweep's tick in the metrics. `answers_clean`: no FreeScout answer acted on since the
/// previous tick failed (the last-success time moves only when nothing failed).
pub fn count(metrics: &Metrics, result: &Result<Report, sqlx::Error>, answers_clean: bool) {
    match result {
        Ok(r) if r.skipped => metrics.sweeps.with_label_values(&["skipped"]).inc(),
        Ok(r) => {
            metrics.sweeps.with_label_values(&["done"]).inc();
            let mut clean = answers_clean;
            for (g, t, reason) in &r.revoked {
                account(
                    metrics,
                    &Done::Revoked(g.clone(), t.clone(), reason.clone()),
                );
            }
            for s in &r.break_glass_expired {
                account(metrics, &Done::BreakGlassExpired(s.clone()));
            }
            for (t, e) in &r.freescout_failures {
                clean = false;
                account(metrics, &Done::FreeScout(t.clone(), e.clone()));
            }
            for (i, e) in &r.failures {
                clean = false;
                account(metrics, &Done::Failed(i.clone(), e.clone()));
            }
            if clean {
                metrics
                    .sweep_last_success
                    .set(chrono::Utc::now().timestamp());
            }
        }
        Err(_) => {
            metrics.sweeps.with_label_values(&["failed"]).inc();
            metrics.sweep_failures.inc();
        }
    }
}

enum Event {
    Tick,
    Done(Result<Vec<Done>, tokio::task::JoinError>),
}

/// Sweeps every `interval` until the process ends (every replica runs this; the lock lets one
/// sweep at a time). FreeScout's answers are acted on as they come, between ticks.
pub async fn run_forever(
    pool: Db,
    settings: SweepSettings,
    interval: Duration,
    metrics: std::sync::Arc<Metrics>,
) {
    let mut sweeper = Sweeper::new(pool, settings, Some(metrics.clone()));
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut answers_clean = true;
    loop {
        let event = tokio::select! {
            _ = ticker.tick() => Event::Tick,
            Some(joined) = sweeper.tasks.join_next() => Event::Done(joined),
        };
        match event {
            Event::Tick => {
                let result = sweeper.tick().await;
                count(&metrics, &result, answers_clean);
                answers_clean = true;
                if let Err(e) = &result {
                    tracing::error!(error = %e, "sweep failed; grants already handled stay handled, the rest is retried next sweep");
                }
            }
            Event::Done(Ok(done)) => {
                for d in &done {
                    answers_clean &= matches!(d, Done::Revoked(..) | Done::BreakGlassExpired(..));
                    // A ticket's revocations were counted and logged as they were made.
                    if !matches!(d, Done::Revoked(..)) {
                        account(&metrics, d);
                    }
                }
            }
            Event::Done(Err(e)) => {
                answers_clean = false;
                metrics.sweep_item_failures.inc();
                tracing::error!(error = %e, "sweep: a FreeScout task failed");
            }
        }
    }
}
