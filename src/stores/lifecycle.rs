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
//! Each row's id is derived from what it records (`ticket_expire:<grant id>`,
//! `break_glass_expire:<session id>`) and inserted with `ON CONFLICT DO NOTHING`; a grant is read
//! again under a row lock before its audit row. One replica sweeps at a time: the one holding
//! the sweep's session-level advisory lock, on a connection it keeps for that; a replica that
//! dies releases the lock with its connection and another takes over at its next tick.
//! FreeScout unreachable: nothing is revoked on a guess for that ticket. A ticket FreeScout does
//! not know (404) or reports in another state is left to the per-request check (which fails
//! closed on it).

use std::collections::{BTreeSet, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::{Connection, PgConnection};

use crate::stores::db::Db;

use crate::runtime::metrics::Metrics;
use crate::stores::db::Bounded;

/// The advisory lock key of the sweep (any constant; "rbacswep" in ASCII).
const LOCK_KEY: i64 = 0x7262_6163_7377_6570;

/// FreeScout statuses that end a ticket grant (read in any case).
pub const ENDED: &[&str] = &["closed", "resolved"];

/// Whether FreeScout's `status` ends a ticket grant.
pub fn ended(status: &str) -> bool {
    ENDED.iter().any(|e| e.eq_ignore_ascii_case(status))
}

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

/// One thing the sweep did (or failed to do).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Done {
    /// (grant id, ticket id, reason).
    Revoked(String, String, String),
    /// A break-glass session's expiry row was written.
    BreakGlassExpired(String),
    /// (ticket, error): FreeScout did not answer; the ticket's grants are kept.
    FreeScout(String, String),
    /// (item, error): a grant's or session's rows could not be written; retried next sweep.
    Failed(String, String),
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

/// Revokes one grant with `reason`, its `ticket_expire` row first (I-9), in a transaction of its
/// own. Ok(false): it was revoked meanwhile, or (for `expired`) given a later expiry.
pub async fn revoke_grant(
    pool: &Db,
    id: &str,
    reason: &str,
    limit: Duration,
) -> Result<bool, sqlx::Error> {
    let mut tx = pool.begin().bounded(limit).await?;
    // Read again under a row lock: a grant revoked (by an operator, another replica, the
    // webhook) or given a later expiry since it was listed gets no audit row of a revocation
    // that does not happen.
    type Row = (String, String, String, i32, bool);
    let row: Option<Row> = sqlx::query_as(
        "SELECT user_id, role_id, ticket_id, customer_id, \
                (expires_at_utc IS NOT NULL AND expires_at_utc <= now()) \
         FROM rbac_ticket_grants WHERE id = $1 AND revoked_at_utc IS NULL FOR UPDATE",
    )
    .persistent(false)
    .bind(id)
    .fetch_optional(&mut *tx)
    .bounded(limit)
    .await?;
    let Some((user, role, ticket, customer, expired)) = row else {
        return Ok(false);
    };
    if reason == "expired" && !expired {
        return Ok(false);
    }
    // I-9: the audit row first; a failure rolls back this grant's transaction only.
    sqlx::query(
        "INSERT INTO rbac_grants_audit (id, event_type, target_user_id, role_id, ticket_id, customer_id, justification, granted_by) \
         VALUES ($1, 'ticket_expire', $2, $3, $4, $5, $6, 'rbac-gateway') ON CONFLICT (id) DO NOTHING",
    ).persistent(false)
    .bind(format!("ticket_expire:{id}"))
    .bind(&user)
    .bind(&role)
    .bind(&ticket)
    .bind(customer)
    .bind(reason)
    .execute(&mut *tx)
    .bounded(limit)
    .await?;
    let n = sqlx::query(
        "UPDATE rbac_ticket_grants SET revoked_at_utc = now(), revoke_reason = $2 \
         WHERE id = $1 AND revoked_at_utc IS NULL",
    )
    .persistent(false)
    .bind(id)
    .bind(reason)
    .execute(&mut *tx)
    .bounded(limit)
    .await?
    .rows_affected();
    sqlx::query("DELETE FROM rbac_gateway_sweep_failures WHERE item = $1")
        .persistent(false)
        .bind(format!("grant:{id}"))
        .execute(&mut *tx)
        .bounded(limit)
        .await?;
    tx.commit().bounded(limit).await?;
    Ok(n == 1)
}

/// Counts one more failure of `item` (its own statement: the item's transaction rolled back).
pub async fn record_failure(pool: &Db, item: &str, error: &str, limit: Duration) {
    let recorded = sqlx::query(
        "INSERT INTO rbac_gateway_sweep_failures (item, failures, last_error) VALUES ($1, 1, $2) \
         ON CONFLICT (item) DO UPDATE SET failures = rbac_gateway_sweep_failures.failures + 1, \
         last_error = EXCLUDED.last_error, last_failed_at = now()",
    )
    .persistent(false)
    .bind(item)
    .bind(error)
    .execute(pool)
    .bounded(limit)
    .await;
    if let Err(e) = recorded {
        // The failure itself is logged by the caller; only its count is lost (the database is
        // likely down, and /readyz says so).
        tracing::error!(item, error = %e, "sweep: the failure could not be counted in rbac_gateway_sweep_failures");
    }
}

/// Who revokes, as the log line of a grant that could not be revoked names it: the caller, and
/// who tries again (the webhook's depends on whether its process sweeps).
#[derive(Debug, Clone, Copy)]
pub struct Caller<'a> {
    pub name: &'a str,
    pub retry: &'a str,
}

/// The sweep: it retries what failed at its next sweep.
pub const SWEEP: Caller<'static> = Caller {
    name: "sweep",
    retry: "retried next sweep",
};

/// Revokes one grant, recording a failure: what the sweep and the webhook do per grant.
pub async fn revoke_or_record(
    pool: &Db,
    id: &str,
    ticket: &str,
    reason: &str,
    limit: Duration,
    by: Caller<'_>,
) -> Option<Done> {
    match revoke_grant(pool, id, reason, limit).await {
        Ok(true) => Some(Done::Revoked(
            id.to_string(),
            ticket.to_string(),
            reason.to_string(),
        )),
        Ok(false) => None,
        Err(e) => {
            let item = format!("grant:{id}");
            let error = e.to_string();
            tracing::error!(grant = %id, ticket = %ticket, error = %error, "{}: the grant's audit row or revocation failed; nothing of it was committed, {}", by.name, by.retry);
            record_failure(pool, &item, &error, limit).await;
            Some(Done::Failed(item, error))
        }
    }
}

/// Every active grant of `ticket`, revoked as `ticket_closed`, each on its own. None active (or
/// all revoked meanwhile by another replica): an empty list.
pub async fn revoke_ticket(
    pool: &Db,
    ticket: &str,
    limit: Duration,
    by: Caller<'_>,
) -> Result<Vec<Done>, sqlx::Error> {
    let ids: Vec<String> = sqlx::query_scalar(
        "SELECT id FROM rbac_ticket_grants WHERE ticket_id = $1 AND revoked_at_utc IS NULL ORDER BY id",
    ).persistent(false)
    .bind(ticket)
    .fetch_all(pool)
    .bounded(limit)
    .await?;
    let mut out = Vec::new();
    for id in ids {
        out.extend(revoke_or_record(pool, &id, ticket, "ticket_closed", limit, by).await);
    }
    Ok(out)
}

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
    in_flight: Arc<Mutex<HashSet<String>>>,
    permits: Arc<tokio::sync::Semaphore>,
    /// One task per ticket being asked; each yields what it did.
    pub tasks: tokio::task::JoinSet<Vec<Done>>,
}

impl Sweeper {
    pub fn new(pool: Db, settings: SweepSettings) -> Sweeper {
        let permits = Arc::new(tokio::sync::Semaphore::new(settings.concurrency.max(1)));
        Sweeper {
            pool,
            settings: Arc::new(settings),
            lease: None,
            leader: false,
            in_flight: Default::default(),
            permits,
            tasks: tokio::task::JoinSet::new(),
        }
    }

    /// Whether this process holds the sweep's lock (taking it when free). The lock lives on a
    /// connection of the sweeper's own, outside the pool (the requests' connections stay
    /// theirs); a connection that fails is dropped, its socket closes and the server releases
    /// the lock with it, and the next tick opens another.
    async fn lead(&mut self) -> Result<bool, sqlx::Error> {
        let limit = self.settings.limit;
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
            sqlx::query_scalar("SELECT true")
                .persistent(false)
                .fetch_one(&mut *conn)
                .bounded(limit)
                .await
        } else {
            sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
                .persistent(false)
                .bind(LOCK_KEY)
                .fetch_one(&mut *conn)
                .bounded(limit)
                .await
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
        // Failures of items that no longer wait (revoked by someone else, ended otherwise) are
        // no longer named.
        sqlx::query(
            "DELETE FROM rbac_gateway_sweep_failures f WHERE NOT EXISTS ( \
               SELECT 1 FROM rbac_ticket_grants g WHERE f.item = 'grant:' || g.id AND g.revoked_at_utc IS NULL) \
             AND NOT EXISTS (SELECT 1 FROM rbac_break_glass_sessions b WHERE f.item = 'break_glass:' || b.id \
               AND NOT EXISTS (SELECT 1 FROM rbac_grants_audit a WHERE a.id = 'break_glass_expire:' || b.id))",
        ).persistent(false)
        .execute(&pool)
        .bounded(limit)
        .await?;
        let grants: Vec<(String, String, bool)> = sqlx::query_as(
            "SELECT id, ticket_id, (expires_at_utc IS NOT NULL AND expires_at_utc <= now()) \
             FROM rbac_ticket_grants WHERE revoked_at_utc IS NULL ORDER BY id",
        )
        .persistent(false)
        .fetch_all(&pool)
        .bounded(limit)
        .await?;
        let (expired, live): (Vec<_>, Vec<_>) = grants.into_iter().partition(|g| g.2);
        let live: BTreeSet<String> = live.into_iter().map(|g| g.1).collect();
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
                let timeout = self.settings.freescout_timeout;
                self.tasks.spawn(async move {
                    let _guard = guard;
                    let Ok(_permit) = permits.acquire_owned().await else {
                        return vec![];
                    };
                    match crate::stores::ticket::ticket_status(&url, &ticket, timeout).await {
                        Ok(Some(st)) if ended(&st) => match revoke_ticket(&pool, &ticket, limit, SWEEP).await {
                            Ok(done) => done,
                            Err(e) => {
                                tracing::error!(ticket = %ticket, error = %e, "sweep: the ticket's grants could not be read; retried next sweep");
                                vec![Done::Failed(format!("ticket:{ticket}"), e.to_string())]
                            }
                        },
                        Ok(_) => vec![],
                        Err(e) => {
                            tracing::error!(ticket = %ticket, error = %e, "sweep: FreeScout did not answer; the ticket's grants are kept");
                            vec![Done::FreeScout(ticket, e.to_string())]
                        }
                    }
                });
            }
        }
        for (id, ticket, _) in expired {
            if let Some(d) = revoke_or_record(&pool, &id, &ticket, "expired", limit, SWEEP).await {
                report.add(d);
            }
        }
        // Break-glass sessions that ended and have no expiry row yet, each on its own.
        let ended_sessions: Vec<String> = sqlx::query_scalar(concat!(
            "SELECT b.id FROM rbac_break_glass_sessions b WHERE (b.revoked_at_utc IS NOT NULL OR ",
            crate::break_glass_end!(),
            " <= now()) AND NOT EXISTS (SELECT 1 FROM rbac_grants_audit a WHERE a.id = 'break_glass_expire:' || b.id) \
             ORDER BY b.id"
        )).persistent(false)
        .fetch_all(&pool)
        .bounded(limit)
        .await?;
        for session in ended_sessions {
            let written: Result<Option<String>, sqlx::Error> = sqlx::query_scalar(concat!(
                "INSERT INTO rbac_grants_audit (id, event_type, target_user_id, justification, granted_by, expires_at_utc) \
                 SELECT 'break_glass_expire:' || b.id, 'break_glass_expire', b.user_id, b.justification, 'rbac-gateway', ",
                crate::break_glass_end!(),
                " FROM rbac_break_glass_sessions b WHERE b.id = $1 ON CONFLICT (id) DO NOTHING RETURNING substr(id, 20)"
            )).persistent(false)
            .bind(&session)
            .fetch_optional(&pool)
            .bounded(limit)
            .await;
            let item = format!("break_glass:{session}");
            match written {
                Ok(Some(s)) => {
                    let cleared =
                        sqlx::query("DELETE FROM rbac_gateway_sweep_failures WHERE item = $1")
                            .persistent(false)
                            .bind(&item)
                            .execute(&pool)
                            .bounded(limit)
                            .await;
                    if let Err(e) = cleared {
                        // The row is written; its stale failure entry goes at the next tick.
                        tracing::warn!(item = %item, error = %e, "sweep: a cleared failure could not be removed");
                    }
                    report.add(Done::BreakGlassExpired(s));
                }
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
pub async fn sweep_once(pool: &Db, settings: SweepSettings) -> Result<Report, sqlx::Error> {
    let mut sweeper = Sweeper::new(pool.clone(), settings);
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
            metrics
                .sweep_revocations
                .with_label_values(&[reason.as_str()])
                .inc();
            tracing::info!(grant = %grant, ticket = %ticket, reason = %reason, "sweep: ticket grant revoked (audit row written first)");
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
    let mut sweeper = Sweeper::new(pool, settings);
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
                    account(&metrics, d);
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

/// The items (`grant:<id>`, `break_glass:<id>`) that failed at least `threshold` sweeps, with
/// their count and last error (at most `max`), for `/readyz`.
pub async fn stuck(
    pool: &Db,
    threshold: u32,
    max: i64,
) -> Result<(Vec<(String, i32, String)>, i64), sqlx::Error> {
    let rows: Vec<(String, i32, String, i64)> = sqlx::query_as(
        "SELECT item, failures, last_error, count(*) OVER () FROM rbac_gateway_sweep_failures \
         WHERE failures >= $1 ORDER BY item LIMIT $2",
    )
    .persistent(false)
    .bind(threshold as i32)
    .bind(max)
    .fetch_all(pool)
    .await?;
    let total = rows.first().map(|r| r.3).unwrap_or(0);
    Ok((
        rows.into_iter().map(|(i, f, e, _)| (i, f, e)).collect(),
        total,
    ))
}

// ---------------------------------------------------------------------------------------------
// Alerts (RV-12): a new break-glass session, or a change to the break-glass group's roles, is
// recorded in `rbac_gateway_alerts` (exactly once, by key) and delivered to the webhook as a
// Slack-compatible `{"text": ...}` POST, retried with exponential backoff until delivered. A
// session that was active at some point and ended before a pass saw it (revoked or expired within
// a second) is alerted too, when it was granted in the last day (its text says it ended); a row
// that was never active (inserted already expired or revoked) is not.

/// The advisory lock key of the alert job.
const ALERT_LOCK_KEY: i64 = 0x7262_6163_616c_7274;

/// What one alert pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct AlertReport {
    pub skipped: bool,
    /// Keys of alerts recorded in this pass.
    pub raised: Vec<String>,
    /// Keys delivered in this pass.
    pub delivered: Vec<String>,
    /// (key, error) of deliveries that failed (retried later).
    pub failed: Vec<(String, String)>,
}

/// POSTs `{"text": text}` to the webhook; Ok on a 2xx answer.
async fn deliver(url: &str, text: &str) -> Result<(), String> {
    use http_body_util::{BodyExt, Full};
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    let body = serde_json::json!({ "text": text }).to_string();
    let req = hyper::Request::post(url)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(bytes::Bytes::from(body)))
        .map_err(|e| format!("bad webhook request: {e}"))?;
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<bytes::Bytes>>();
    let answer = tokio::time::timeout(Duration::from_secs(5), async {
        let resp = client.request(req).await.map_err(|e| format!("{e:#}"))?;
        let status = resp.status();
        // Drained so the connection closes cleanly; the body itself says nothing we need.
        let _ = resp.into_body().collect().await;
        Ok::<_, String>(status)
    })
    .await
    .map_err(|_| "timed out".to_string())??;
    if answer.is_success() {
        Ok(())
    } else {
        Err(format!("HTTP {}", answer.as_u16()))
    }
}

/// One alert pass: record new alerts, then deliver what is due.
pub async fn alerts_once(
    pool: &Db,
    webhook: Option<&str>,
    limit: Duration,
) -> Result<AlertReport, sqlx::Error> {
    let mut report = AlertReport::default();
    let mut tx = pool.begin().bounded(limit).await?;
    let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
        .persistent(false)
        .bind(ALERT_LOCK_KEY)
        .fetch_one(&mut *tx)
        .bounded(limit)
        .await?;
    if !locked {
        report.skipped = true;
        return Ok(report);
    }
    let mut raised: Vec<String> = sqlx::query_scalar(concat!(
        "INSERT INTO rbac_gateway_alerts (key, text) \
         SELECT 'break_glass:' || b.id, \
                format('Break-glass session opened for %s (%s). Justification: %s. Expires %s UTC.%s', \
                       a.email, b.user_id, b.justification, to_char(",
        crate::break_glass_end!(),
        " AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS'), \
                       CASE WHEN b.revoked_at_utc IS NOT NULL OR ",
        crate::break_glass_end!(),
        " <= now() THEN ' It ended before this alert was raised.' ELSE '' END) \
         FROM rbac_break_glass_sessions b JOIN admins a ON a.id = b.user_id \
         WHERE (b.revoked_at_utc IS NULL AND ",
        crate::break_glass_end!(),
        " > now()) \
            OR (b.granted_at_utc > now() - interval '1 day' AND b.expires_at_utc > b.granted_at_utc \
                AND (b.revoked_at_utc IS NULL OR b.revoked_at_utc > b.granted_at_utc)) \
         ON CONFLICT (key) DO NOTHING RETURNING key"
    )).persistent(false)
    .fetch_all(&mut *tx)
    .bounded(limit)
    .await?;
    // Changes to the break-glass group, as the triggers recorded them with the change itself
    // (migration 0007): one alert per committed transaction, keyed by its id.
    raised.extend(group_change_alerts(&mut tx, limit).await?);
    // The daily snapshot: the second net, for changes the triggers could not see.
    raised.extend(daily_snapshot(&mut tx, limit).await?);
    // A declared deploy window is said when it is declared: changes in it are alerted "during
    // deploy", and whoever reads them should know who opened it.
    let windows: Vec<String> = sqlx::query_scalar(
        "INSERT INTO rbac_gateway_alerts (key, text) \
         SELECT 'deploy_window:' || d.id, \
                format('Deploy window declared by %s: %s, from %s to %s UTC. Break-glass group changes in it are alerted as during deploy.', \
                       d.declared_by, d.reason, \
                       to_char(d.starts_at_utc AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS'), \
                       to_char(d.ends_at_utc AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS')) \
         FROM rbac_gateway_deploy_windows d WHERE d.created_at_utc > now() - interval '1 day' \
         ON CONFLICT (key) DO NOTHING RETURNING key",
    ).persistent(false)
    .fetch_all(&mut *tx)
    .bounded(limit)
    .await?;
    raised.extend(windows);
    report.raised = raised;
    if let Some(url) = webhook {
        let due: Vec<(String, String)> = sqlx::query_as(
            "SELECT key, text FROM rbac_gateway_alerts \
             WHERE delivered_at_utc IS NULL AND next_attempt_utc <= now() ORDER BY created_at_utc LIMIT 50",
        ).persistent(false)
        .fetch_all(&mut *tx)
        .bounded(limit)
        .await?;
        for (key, text) in due {
            match deliver(url, &text).await {
                Ok(()) => {
                    sqlx::query(
                        "UPDATE rbac_gateway_alerts SET delivered_at_utc = now(), attempts = attempts + 1 WHERE key = $1",
                    ).persistent(false)
                    .bind(&key)
                    .execute(&mut *tx)
                    .bounded(limit)
                    .await?;
                    // The session's admin is re-resolved at once on every replica (the change
                    // feed), which --break-glass-requires-alert waits for.
                    sqlx::query(
                        "INSERT INTO rbac_change_log (table_name, admin_id) \
                         SELECT 'rbac_gateway_alerts', b.user_id FROM rbac_break_glass_sessions b \
                         WHERE 'break_glass:' || b.id = $1",
                    )
                    .persistent(false)
                    .bind(&key)
                    .execute(&mut *tx)
                    .bounded(limit)
                    .await?;
                    sqlx::query("SELECT pg_notify('rbac_gateway_changes', '')")
                        .persistent(false)
                        .execute(&mut *tx)
                        .bounded(limit)
                        .await?;
                    report.delivered.push(key);
                }
                Err(e) => {
                    // Backoff: 1, 2, 4 ... seconds, at most 5 minutes between attempts.
                    sqlx::query(
                        "UPDATE rbac_gateway_alerts SET attempts = attempts + 1, last_error = $2, \
                         next_attempt_utc = now() + make_interval(secs => least(300, power(2, attempts)::int)) WHERE key = $1",
                    ).persistent(false)
                    .bind(&key)
                    .bind(&e)
                    .execute(&mut *tx)
                    .bounded(limit)
                    .await?;
                    report.failed.push((key, e));
                }
            }
        }
    }
    tx.commit().bounded(limit).await?;
    Ok(report)
}

use crate::stores::db::Tx;

/// A change the triggers recorded: (txid, what, db user, actor, application, client address,
/// when, deploy window).
type Change = (
    String,
    String,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    String,
    Option<String>,
);

/// The text of the alert for one transaction's changes.
fn change_text(txid: &str, changes: &[Change], roles_now: &[String]) -> String {
    let (_, _, db_user, actor, application, client, when, window) = &changes[0];
    // A bulk change (a re-seed, a TRUNCATE) is summed up, not pasted whole into the chat.
    const SHOWN: usize = 20;
    let mut whats: Vec<String> = changes.iter().take(SHOWN).map(|c| c.1.clone()).collect();
    if changes.len() > SHOWN {
        whats.push(format!(
            "and {} more (rbac_gateway_group_changes, txid {txid})",
            changes.len() - SHOWN
        ));
    }
    let mut who = format!("database user {db_user}");
    if let Some(a) = actor {
        who.push_str(&format!(", actor {a}"));
    }
    if let Some(a) = application {
        who.push_str(&format!(", application {a}"));
    }
    who.push_str(&match client {
        Some(c) => format!(", from {c}"),
        None => ", over a local socket".to_string(),
    });
    let context = match window {
        Some(w) => format!("during deploy window {w}"),
        None => "OUTSIDE any declared deploy window".to_string(),
    };
    format!(
        "Break-glass group changed {context}: {}. By {who}, at {when} UTC (transaction {txid}). \
         Roles the group holds as this alert is raised: {}.",
        whats.join("; "),
        if roles_now.is_empty() {
            "none".to_string()
        } else {
            roles_now.join(", ")
        }
    )
}

/// Turns the changes the triggers recorded into alerts, one per transaction (`composition:<txid>`).
async fn group_change_alerts(tx: &mut Tx, limit: Duration) -> Result<Vec<String>, sqlx::Error> {
    // Whole transactions only: a transaction's rows are all visible once it committed.
    let changes: Vec<Change> = sqlx::query_as(
        "SELECT txid::text, what, db_user, actor, application, client_addr, \
                to_char(changed_at_utc AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.MS'), deploy_window \
         FROM rbac_gateway_group_changes \
         WHERE alert_key IS NULL AND txid IN ( \
             SELECT txid FROM rbac_gateway_group_changes WHERE alert_key IS NULL ORDER BY id LIMIT 100) \
         ORDER BY id",
    ).persistent(false)
    .fetch_all(&mut **tx)
    .bounded(limit)
    .await?;
    if changes.is_empty() {
        return Ok(vec![]);
    }
    let roles_now: Vec<String> = sqlx::query_scalar(
        "SELECT r.name FROM rbac_group_roles gr JOIN rbac_groups g ON g.id = gr.group_id \
         JOIN rbac_roles r ON r.id = gr.role_id WHERE g.name = 'break-glass' ORDER BY 1",
    )
    .persistent(false)
    .fetch_all(&mut **tx)
    .bounded(limit)
    .await?;
    let mut by_tx: Vec<(String, Vec<Change>)> = Vec::new();
    for c in changes {
        match by_tx.iter_mut().find(|(t, _)| *t == c.0) {
            Some((_, v)) => v.push(c),
            None => by_tx.push((c.0.clone(), vec![c])),
        }
    }
    let mut raised = Vec::new();
    for (txid, changes) in by_tx {
        let key = format!("composition:{txid}");
        let inserted = sqlx::query(
            "INSERT INTO rbac_gateway_alerts (key, text) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING",
        ).persistent(false)
        .bind(&key)
        .bind(change_text(&txid, &changes, &roles_now))
        .execute(&mut **tx)
        .bounded(limit)
        .await?
        .rows_affected();
        sqlx::query(
            "UPDATE rbac_gateway_group_changes SET alert_key = $1 WHERE txid = $2::xid8 AND alert_key IS NULL",
        ).persistent(false)
        .bind(&key)
        .bind(&txid)
        .execute(&mut **tx)
        .bounded(limit)
        .await?;
        if inserted == 1 {
            raised.push(key);
        }
    }
    Ok(raised)
}

/// What the break-glass group grants: roles after inheritance, permissions, permanent members.
type Grants = (Vec<String>, Vec<String>, Vec<String>);

/// Once a day, what the group grants is compared with the last snapshot and any difference is
/// alerted (`snapshot:<time>`), saying whether the triggers recorded changes meanwhile (none
/// recorded: they were bypassed or disabled).
async fn daily_snapshot(tx: &mut Tx, limit: Duration) -> Result<Vec<String>, sqlx::Error> {
    type Last = (
        chrono::DateTime<chrono::Utc>,
        Vec<String>,
        Vec<String>,
        Vec<String>,
        bool,
    );
    let last: Option<Last> = sqlx::query_as(
        "SELECT taken_at_utc, roles, permissions, members, taken_at_utc <= now() - interval '1 day' \
         FROM rbac_gateway_break_glass_snapshots ORDER BY taken_at_utc DESC LIMIT 1",
    ).persistent(false)
    .fetch_optional(&mut **tx)
    .bounded(limit)
    .await?;
    if matches!(&last, Some(l) if !l.4) {
        return Ok(vec![]);
    }
    let now: Grants = sqlx::query_as(
        "SELECT \
           COALESCE((SELECT array_agg(r.name ORDER BY r.name) FROM rbac_roles r \
                     WHERE r.id IN (SELECT role_id FROM rbac_gateway_break_glass_roles())), '{}'), \
           COALESCE((SELECT array_agg(DISTINCT p.name ORDER BY p.name) FROM rbac_role_permissions rp \
                     JOIN rbac_permissions p ON p.id = rp.permission_id \
                     WHERE rp.role_id IN (SELECT role_id FROM rbac_gateway_break_glass_roles())), '{}'), \
           COALESCE((SELECT array_agg(ug.user_id ORDER BY ug.user_id) FROM rbac_user_groups ug \
                     JOIN rbac_groups g ON g.id = ug.group_id WHERE g.name = 'break-glass'), '{}')",
    ).persistent(false)
    .fetch_one(&mut **tx)
    .bounded(limit)
    .await?;
    let mut raised = Vec::new();
    if let Some((taken, roles, permissions, members, _)) = last {
        let before: Grants = (roles, permissions, members);
        if before != now {
            let diff = |name: &str, a: &[String], b: &[String]| -> Option<String> {
                let (a, b): (BTreeSet<&String>, BTreeSet<&String>) =
                    (a.iter().collect(), b.iter().collect());
                let added: Vec<&&String> = b.difference(&a).collect();
                let removed: Vec<&&String> = a.difference(&b).collect();
                (!added.is_empty() || !removed.is_empty())
                    .then(|| format!("{name} added {added:?}, removed {removed:?}"))
            };
            let parts: Vec<String> = [
                diff("roles (after inheritance)", &before.0, &now.0),
                diff("permissions", &before.1, &now.1),
                diff("permanent members", &before.2, &now.2),
            ]
            .into_iter()
            .flatten()
            .collect();
            let recorded: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM rbac_gateway_group_changes WHERE changed_at_utc > $1",
            )
            .persistent(false)
            .bind(taken)
            .fetch_one(&mut **tx)
            .bounded(limit)
            .await?;
            let net = if recorded == 0 {
                "No change was recorded as it happened: the triggers were bypassed or disabled \
                 (session_replication_role = replica, a restore, a dropped trigger?)."
                    .to_string()
            } else {
                format!("{recorded} change(s) were recorded and alerted as they happened.")
            };
            let text = format!(
                "Daily snapshot of the break-glass group: since {} UTC, {}. {net}",
                taken.format("%Y-%m-%d %H:%M:%S"),
                parts.join("; ")
            );
            let key = format!(
                "snapshot:{}",
                chrono::Utc::now().format("%Y%m%dT%H%M%S%.3f")
            );
            sqlx::query("INSERT INTO rbac_gateway_alerts (key, text) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING").persistent(false)
                .bind(&key)
                .bind(&text)
                .execute(&mut **tx)
                .bounded(limit)
                .await?;
            raised.push(key);
        }
    }
    sqlx::query(
        "INSERT INTO rbac_gateway_break_glass_snapshots (roles, permissions, members) VALUES ($1, $2, $3) \
         ON CONFLICT (taken_at_utc) DO NOTHING",
    ).persistent(false)
    .bind(&now.0)
    .bind(&now.1)
    .bind(&now.2)
    .execute(&mut **tx)
    .bounded(limit)
    .await?;
    Ok(raised)
}

/// Runs the alert pass every `interval` until the process ends.
pub async fn alerts_forever(
    pool: Db,
    webhook: Option<String>,
    interval: Duration,
    limit: Duration,
    metrics: std::sync::Arc<Metrics>,
) {
    if webhook.is_none() {
        tracing::warn!("no --alert-webhook-url: break-glass alerts are recorded in rbac_gateway_alerts but not delivered");
    }
    loop {
        tokio::time::sleep(interval).await;
        match alerts_once(&pool, webhook.as_deref(), limit).await {
            Ok(r) => {
                let pass = if r.skipped { "skipped" } else { "done" };
                metrics.alert_passes.with_label_values(&[pass]).inc();
                for k in &r.raised {
                    tracing::warn!(alert = %k, "alert raised");
                }
                for k in &r.delivered {
                    metrics.alerts.with_label_values(&["delivered"]).inc();
                    tracing::info!(alert = %k, "alert delivered");
                }
                for (k, e) in &r.failed {
                    metrics.alerts.with_label_values(&["failed"]).inc();
                    tracing::warn!(alert = %k, error = %e, "alert delivery failed; will retry");
                }
            }
            Err(e) => {
                metrics.alert_passes.with_label_values(&["failed"]).inc();
                tracing::error!(error = %e, "alert pass failed; will retry")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn ended_statuses_are_read_in_any_case() {
        assert!(super::ended("CLOSED"));
        assert!(super::ended("Resolved"));
        assert!(!super::ended("active"));
        assert!(!super::ended("pending"));
        assert!(!super::ended(""));
    }

    fn change(what: &str, window: Option<&str>) -> super::Change {
        (
            "812".into(),
            what.into(),
            "console_app".into(),
            Some("ops@example.test".into()),
            None,
            Some("10.0.0.5".into()),
            "2026-11-26 02:00:00.000".into(),
            window.map(String::from),
        )
    }

    #[test]
    fn a_change_alert_says_what_who_when_and_whether_during_a_deploy() {
        let roles = vec!["console-manager".to_string()];
        let t = super::change_text(
            "812",
            &[change("role x added to the break-glass group", None)],
            &roles,
        );
        assert!(
            t.starts_with(
                "Break-glass group changed OUTSIDE any declared deploy window: role x added"
            ),
            "{t}"
        );
        assert!(t.contains("By database user console_app, actor ops@example.test, from 10.0.0.5, at 2026-11-26 02:00:00.000 UTC (transaction 812)"), "{t}");
        assert!(
            t.ends_with("as this alert is raised: console-manager."),
            "{t}"
        );
        let t = super::change_text(
            "812",
            &[change(
                "role x added",
                Some("v42 (declared by ci, until ...)"),
            )],
            &[],
        );
        assert!(
            t.starts_with("Break-glass group changed during deploy window v42 (declared by ci"),
            "{t}"
        );
        assert!(t.contains("raised: none."), "{t}");
        // A bulk change is summed up.
        let many: Vec<super::Change> = (0..25)
            .map(|i| change(&format!("change {i}"), None))
            .collect();
        let t = super::change_text("812", &many, &roles);
        assert!(
            t.contains("change 19; and 5 more (rbac_gateway_group_changes, txid 812)"),
            "{t}"
        );
        assert!(!t.contains("change 20"), "{t}");
    }
}
