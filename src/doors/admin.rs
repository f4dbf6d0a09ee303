//! The admin listener: `/healthz` (process alive), `/readyz` (mapping loaded, the database
//! answered, each of this binary's migrations applied as it has it, as last read, and the change
//! feed read its log within [`crate::stores::feed::STALE`]; a newer release's migrations, a routes
//! file on disk that was not applied, role or permission names the database lacks, and an audit spool
//! that cannot be written or emptied, and I-5's state (no `--audit-writer-url`, rows owed to the
//! audit writer past `--audit-writer-alert-after`) are named, the status stays 200),
//! `/metrics` (Prometheus text). Served by hyper, GET only.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use tokio::net::TcpListener;

use crate::gateway::state::Gateway;

pub async fn serve(listener: TcpListener, gw: Arc<Gateway>) {
    crate::dataplane::listen::serve_side(listener, "admin", move |req, _peer| {
        let gw = gw.clone();
        async move { handle(req, &gw).await }
    })
    .await;
}

async fn handle(req: Request<Incoming>, gw: &Gateway) -> Response<Full<Bytes>> {
    let (status, ctype, body) = match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz") => (200, "text/plain", "ok\n".to_string()),
        (&Method::GET, "/readyz") => ready(gw).await,
        (&Method::GET, "/metrics") => {
            gw.refresh_gauges();
            (200, "text/plain; version=0.0.4", gw.metrics.render())
        }
        (&Method::GET, _) => (404, "text/plain", "not found\n".to_string()),
        _ => (405, "text/plain", "method not allowed\n".to_string()),
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = StatusCode::from_u16(status).expect("a valid status");
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(ctype),
    );
    resp
}

/// Whether the database answers, within [`READY_LIMIT`]; why not, as well as can be told. The
/// pool's own error says only "pool timed out" whatever the cause, so a database that has not
/// answered after [`PROBE_AFTER`] is also tried with a connection of its own
/// ([`crate::stores::db::why_unreachable`]), at the same time, within the same limit: the answer
/// comes within the probes' timeouts (3 s in `deploy/`) and names the cause.
async fn database_state(pool: &crate::stores::db::Db) -> Result<(), String> {
    // `db::within`, not a bare timeout: a timeout marks the pool's connections stale, so the
    // one it gave up on is closed, not pinged with no timeout.
    let select = crate::stores::db::within(READY_LIMIT, pool.ping());
    tokio::pin!(select);
    let (outcome, cause) = match tokio::time::timeout(PROBE_AFTER, &mut select).await {
        Ok(outcome) => (outcome, None),
        Err(_) => {
            let probe = crate::stores::db::why_unreachable(pool, READY_LIMIT - PROBE_AFTER);
            let (outcome, cause) = tokio::join!(select, probe);
            (outcome, Some(cause))
        }
    };
    let pool_error = match outcome {
        Ok(_) => return Ok(()),
        Err(e) if !matches!(e, sqlx::Error::PoolTimedOut | sqlx::Error::Io(_)) => {
            return Err(e.to_string())
        }
        Err(e) => e.to_string(),
    };
    // A pool that failed fast (a --db-timeout-ms below PROBE_AFTER) was not probed yet.
    let cause = match cause {
        Some(cause) => cause,
        None => crate::stores::db::why_unreachable(pool, READY_LIMIT - PROBE_AFTER).await,
    };
    Err(cause.unwrap_or(pool_error))
}

/// The longest `/readyz` waits for the mapping's role and permission names to be checked.
const UNKNOWN_NAMES_LIMIT: Duration = Duration::from_millis(500);

/// The longest `/readyz` waits for the database.
const READY_LIMIT: Duration = Duration::from_secs(2);
/// How long the database may take before `/readyz` also tries a connection of its own.
const PROBE_AFTER: Duration = Duration::from_millis(300);

/// I-5, named with the status unchanged (the gateway serves; what is owed waits, nothing is
/// lost): no `--audit-writer-url`, or rows owed to the audit writer past the bound.
async fn audit_writer_state(gw: &Gateway, body: &mut String) {
    let after = gw.audit_writer_alert_after;
    let state = crate::stores::audit_outbox::outbox_state(gw.identity.pool(), after, READY_LIMIT);
    let state = match crate::stores::db::within(UNKNOWN_NAMES_LIMIT, state).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "readyz: the audit outbox could not be read");
            body.push_str(&format!(
                "audit writer: what is owed to it was not read: {e}\n"
            ));
            return;
        }
    };
    if !gw.audit_writer_configured {
        body.push_str(&format!(
            "audit writer: I-5 not met: no --audit-writer-url; {} rbac_grants_audit row(s) undelivered to customer_audit_events\n",
            state.undelivered
        ));
    } else if state.overdue > 0 {
        body.push_str(&format!(
            "audit writer: {} rbac_grants_audit row(s) undelivered for more than {}s (oldest {}s, {} owed in all); last error: {}\n",
            state.overdue,
            after.as_secs(),
            state.oldest_seconds as i64,
            state.undelivered,
            state.last_error.as_deref().unwrap_or("none")
        ));
    }
}

/// `/readyz`: 503 naming what stops the gateway from deciding, else the database's state and
/// every problem an operator must see, each named with the status unchanged.
async fn ready(gw: &Gateway) -> (u16, &'static str, String) {
    let pool = gw.identity.pool();
    if let Some(mut why) = not_deciding(gw) {
        // A schema without this binary's migrations may be why (a mapping it cannot load from
        // the database): read here, since the start-up check waits for the mapping.
        let read = crate::stores::db::within(
            UNKNOWN_NAMES_LIMIT,
            crate::stores::migrations::schema_state(pool),
        );
        let (blocking, noted) = gw.schema_read(read.await);
        for line in blocking.into_iter().chain(noted) {
            why.push_str(&line);
            why.push('\n');
        }
        return (503, "text/plain", why);
    }
    let version = gw.mapping.load().version.clone();
    let source = if gw.mapping_from_db {
        "mapping version from the database"
    } else {
        "routes file"
    };
    let rejected = gw.file_rejected().map(|why| {
        // The live mapping serves; the operator who just saved a file (or activated a version)
        // sees here that it is not the one in force.
        format!("{source} not applied (mapping={version} stays live): {why}\n")
    });
    // The schema is read beside the database's check, not after it: a slow database costs
    // the probe one wait, not two.
    let schema =
        crate::stores::db::within(READY_LIMIT, crate::stores::migrations::schema_state(pool));
    // `--lookup-database-url`'s pool, where set: every cold lookup reads through it.
    let lookups = async {
        match gw.identity.own_lookups() {
            Some(lookups) => database_state(lookups).await,
            None => Ok(()),
        }
    };
    let (database, schema, lookups) = tokio::join!(database_state(pool), schema, lookups);
    let (status, mut body) = match database {
        Ok(()) => {
            let (blocking, noted) = gw.schema_read(schema);
            let mut why: String = blocking.into_iter().map(|line| line + "\n").collect();
            if let Err(e) = lookups {
                why.push_str(&format!(
                    "--lookup-database-url unavailable (every cold lookup fails): {e}\n"
                ));
            }
            let noted: String = noted.into_iter().map(|line| line + "\n").collect();
            // The database answers, but changes to it are not applied: a revocation would wait
            // for the cache TTL.
            if let Some(stale) = gw.feed.stale() {
                why.push_str(&format!("{stale}\n"));
            }
            match why.is_empty() {
                true => (200, format!("ready mapping={version}\n{noted}")),
                false => (503, why + &noted),
            }
        }
        Err(why) => (503, format!("database unavailable: {why}\n")),
    };
    if let Some(line) = rejected {
        body.push_str(&line);
    }
    if status == 200 {
        unknown_names_state(gw, &version, &mut body).await;
    }
    if status == 200 {
        sweep_failures_state(gw, &mut body).await;
    }
    promotion_state(gw, &mut body);
    // Named, the status unchanged: what the settings break or leave unreachable (I-4, T-PEN-6).
    for line in &gw.weakened {
        body.push_str(line);
        body.push('\n');
    }
    if status == 200 {
        audit_writer_state(gw, &mut body).await;
    }
    // Named, the status unchanged: with the database up, denials are recorded in it.
    for line in gw.audit.spool_problems() {
        body.push_str(&line);
        body.push('\n');
    }
    (status, "text/plain", body)
}

/// Why nothing is decided, if so: a background task stopped, or no mapping loaded yet.
fn not_deciding(gw: &Gateway) -> Option<String> {
    let dead = gw.tasks.dead();
    if !dead.is_empty() {
        return Some(format!(
            "background task stopped: {}\n",
            dead.iter()
                .map(|t| t.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    // No mapping yet (--mapping-source database at start-up): nothing is decided.
    gw.mapping_missing()
        .map(|why| format!("no mapping loaded: {why}\n"))
}

/// The role and permission names the mapping uses that the database lacks, named with the status
/// unchanged: a name can be created after the file ships. Read at every probe (two small
/// catalogue tables), so it is as current as the database.
async fn unknown_names_state(gw: &Gateway, version: &str, body: &mut String) {
    let mapping = gw.mapping.load_full();
    let unknown = crate::stores::catalogue::unknown_names(gw.identity.lookups(), &mapping);
    match crate::stores::db::within(UNKNOWN_NAMES_LIMIT, unknown).await {
        // The status stays 200 (the database answered the probe above): the check of the
        // mapping's names is said not to have run, not left out without a word.
        Err(e) => {
            tracing::warn!(error = %e, "readyz: cannot read the role and permission names the mapping uses");
            body.push_str(&format!(
                "mapping={version}: its role and permission names were not checked against the database: {e}\n"
            ));
        }
        Ok(unknown) if !unknown.is_empty() => {
            let shown: Vec<String> = unknown.iter().take(5).map(|u| u.to_string()).collect();
            let more = unknown.len().saturating_sub(shown.len());
            body.push_str(&format!(
                "mapping={version} names what the database lacks (no session can hold it, its rules deny): {}{}\n",
                shown.join("; "),
                if more > 0 { format!("; and {more} more") } else { String::new() }
            ));
        }
        Ok(_) => {}
    }
}

/// The grants and sessions the sweep failed on too often, named with the status unchanged: one
/// whose rows cannot be written is retried every sweep while every other one proceeds; an
/// operator must look at it.
async fn sweep_failures_state(gw: &Gateway, body: &mut String) {
    let stuck = crate::stores::revocation::stuck(gw.identity.pool(), gw.sweep_failure_threshold, 5);
    match crate::stores::db::within(UNKNOWN_NAMES_LIMIT, stuck).await {
        Ok((items, total)) => {
            for (item, failures, error) in &items {
                body.push_str(&format!(
                    "sweep: {item} failed {failures} sweeps in a row (retried every sweep): {error}\n"
                ));
            }
            if total > items.len() as i64 {
                body.push_str(&format!(
                    "sweep: and {} more failing (rbac_gateway_sweep_failures)\n",
                    total - items.len() as i64
                ));
            }
        }
        Err(e) => tracing::warn!(error = %e, "readyz: the sweep's failures could not be read"),
    }
}

/// I-11, named with the status unchanged: FLAG_RBAC_V2 on in production without its promotion
/// row. The gateway keeps enforcing the mapping: treating the flag as off would open every
/// route to Console's legacy checks, refusing to start would take Console down.
fn promotion_state(gw: &Gateway, body: &mut String) {
    if gw.promoted_in.is_some() {
        // The watch reads the row again; a probe never waits for it.
        gw.promotion_asked.notify_one();
    }
    if let Some(line) = gw
        .promotion
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .as_ref()
    {
        body.push_str(line);
        body.push('\n');
    }
}
