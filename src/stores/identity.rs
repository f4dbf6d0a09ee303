//! Who is asking: session cookie -> admin (`admin_sessions`, by the SHA-256 of the cookie) ->
//! effective roles and permissions (004 §3.4: groups -> group roles -> the inheritance DAG walked
//! transitively -> permissions, plus the `break-glass` group while an active break-glass row
//! exists), each resolved in one SQL round trip and cached with moka.
//!
//! A cache entry never outlives the TTL, the session's expiry, or the earliest expiry of a
//! break-glass row behind it. Concurrent misses for one key share one query. A cached answer
//! costs no database query. The answer is the decision's [`Principal`]
//! (`policy/principal.rs`), filled here.

use crate::runtime::telemetry;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::stores::db::Db;
use crate::stores::lookup::{Lookup, Value};
use crate::stores::session_batch::{Batches, Found};
use moka::future::Cache;
use moka::Expiry;
use sha2::{Digest, Sha256};

use crate::policy::principal::Principal;
use crate::runtime::metrics::Metrics;

/// A live session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub admin_id: String,
    /// Until when the cached answer may be reused.
    until: Instant,
}

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The cause in the message (logged as `%e`, once: sqlx's error repeats its own source).
    #[error("database unavailable: {0}")]
    DatabaseUnavailable(Arc<sqlx::Error>),
}

/// Expires each entry at its own `until`.
struct OwnExpiry;

/// What is left of a cached answer's life, from its insertion (now).
fn remaining(until: Instant) -> Duration {
    until.saturating_duration_since(Instant::now())
}

impl Expiry<String, Option<Arc<Session>>> for OwnExpiry {
    fn expire_after_create(
        &self,
        _: &String,
        v: &Option<Arc<Session>>,
        _: Instant,
    ) -> Option<Duration> {
        v.as_ref()
            .map(|s| remaining(s.until))
            .or(Some(NEGATIVE_TTL))
    }
}

impl Expiry<String, Arc<Principal>> for OwnExpiry {
    fn expire_after_create(&self, _: &String, v: &Arc<Principal>, _: Instant) -> Option<Duration> {
        Some(remaining(v.until))
    }
}

/// Unknown, expired and revoked tokens are remembered this long, so a flood of bad cookies does
/// not become a flood of queries. Denying longer is the safe direction.
const NEGATIVE_TTL: Duration = Duration::from_secs(1);

pub struct Identity {
    pool: Db,
    /// Where the request path reads Console's tables, if not `pool` ([`Identity::lookups`]).
    lookups: Option<Db>,
    ttl: Duration,
    sessions: Cache<String, Option<Arc<Session>>>,
    principals: Cache<String, Arc<Principal>>,
    metrics: Arc<Metrics>,
    /// Hit counters of the two caches, looked up once (not hashed by label per request).
    hits: [prometheus::IntCounter; 2],
    break_glass_requires_alert: bool,
    /// The longest a lookup waits for the database (`--db-timeout-ms`), on the client's side:
    /// the server's statement timeout cannot fire while the connection carries nothing.
    query_timeout: Duration,
    /// Tells this identity's remembered answers from another's on the same thread.
    id: u64,
    /// Advanced after every invalidation: remembered answers read before it are stale.
    generation: AtomicU64,
    /// Advanced by the change feed before it invalidates: a cache fill that saw it move kept a
    /// value read before the change (see [`Identity::drop_if_changed`]).
    changes: AtomicU64,
    /// Cold lookups sent together (started at the first one).
    batches: std::sync::OnceLock<Batches>,
    /// Where their sending task runs: the runtime this identity was made on, if any.
    runtime: Option<tokio::runtime::Handle>,
}

/// Lowercase hex SHA-256 of a cookie value: the key `admin_sessions.token_sha256` holds.
pub fn token_hash(token: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digest = Sha256::digest(token.as_bytes());
    let mut out = String::with_capacity(64);
    for b in digest {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 15)]));
    }
    out
}

/// When a break-glass session ends, as SQL over a row `b` of `rbac_break_glass_sessions`: its
/// `expires_at_utc`, but 4 hours after it was granted at the latest (I-4: "1h default, 4h max"),
/// whatever expiry the row was given. The one definition in Rust: `explain`, the sweep's
/// `break_glass_expire` rows and the alerts read a session's end through it; the principal's
/// function in `migrations/` spells the same text (a unit test below holds them equal).
#[macro_export]
macro_rules! break_glass_end {
    () => {
        "least(b.expires_at_utc, b.granted_at_utc + interval '4 hours')"
    };
}

/// SQL text: when session `b` ended, or ends: its revocation, where that comes before its
/// capped end ([`break_glass_end`]), else that end (`least` passes over a NULL revocation). The
/// sweep's `break_glass_expire` rows date an episode by it, and a break-glass alert records it as
/// the end it told (a session revoked before its alert was raised is told as ended).
#[macro_export]
macro_rules! break_glass_ended {
    () => {
        concat!("least(b.revoked_at_utc, ", $crate::break_glass_end!(), ")")
    };
}

/// SQL text: whether break-glass session `b`'s alert was delivered, and told the session as it
/// stands: its admin, its start and no later end than [`break_glass_end`] gives it now (I-4,
/// migration 0033: a row changed after its alert counts again once the alert the pass raises
/// again for it is delivered). The principal's function in `migrations/` spells the same text
/// (a unit test below holds them equal).
#[macro_export]
macro_rules! break_glass_alerted {
    () => {
        concat!(
            "EXISTS (SELECT 1 FROM rbac_gateway_alerts a \
             WHERE a.key = 'break_glass:' || b.id AND a.delivered_at_utc IS NOT NULL \
             AND a.session_user_id = b.user_id COLLATE pg_catalog.\"default\" AND a.session_granted_at_utc = b.granted_at_utc \
             AND ",
            $crate::break_glass_end!(),
            " <= a.session_ends_at_utc)"
        )
    };
}

/// SQL text: whether break-glass session `b` has started. It counts from `granted_at_utc`: a row
/// dated later grants nothing yet (else it would run from now until its expiry, past the 4 hours
/// of [`break_glass_end`]). Every read of whether a session is active pairs the two; the
/// principal's function in `migrations/` spells the same text (a unit test below holds it).
#[macro_export]
macro_rules! break_glass_started {
    () => {
        "b.granted_at_utc <= pg_catalog.now()"
    };
}

/// The resolution algorithm of 004 §3.4: one call of `rbac_gateway_principal`, the function
/// `migrations/0011_principal_function.sql` defines (roles, permissions, seconds left of a live
/// break-glass session and when it ends), for an admin whose session is cached. A function,
/// because its plan stays with the server connection. Sent by [`Db::lookup`]: a named
/// statement on the gateway's own sessions, else one simple query with its values written in
/// that leaves nothing on a server connection a pooler may share; one round trip either way.
const PRINCIPAL_SQL: &str = "SELECT roles, permissions, break_glass_seconds, break_glass_until \
                             FROM rbac_gateway_principal($1, $2)";

/// Whether `key` is what [`token_hash`] makes (64 lowercase hex digits): the only form of a
/// session token that reaches SQL, checked before it does.
pub fn is_token_hash(key: &str) -> bool {
    key.len() == 64 && key.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// A principal from the four columns of `rbac_gateway_principal` (roles, permissions, seconds
/// left of a live break-glass session, when it ends).
fn principal_from(
    admin_id: &str,
    row: &sqlx::postgres::PgRow,
    ttl: Duration,
) -> Result<Arc<Principal>, sqlx::Error> {
    use sqlx::Row;
    Ok(principal_of(
        admin_id,
        row.try_get(0)?,
        row.try_get(1)?,
        row.try_get(2)?,
        row.try_get(3)?,
        ttl,
    ))
}

/// The principal the cache holds, valid for the TTL or until its break-glass session ends.
fn principal_of(
    admin_id: &str,
    roles: Vec<String>,
    permissions: Vec<String>,
    break_glass_seconds: Option<f64>,
    break_glass_until: Option<chrono::DateTime<chrono::Utc>>,
    ttl: Duration,
) -> Arc<Principal> {
    let valid_for = match break_glass_seconds {
        Some(left) => ttl.min(seconds(left)),
        None => ttl,
    };
    Arc::new(Principal::new(
        admin_id,
        roles,
        permissions,
        break_glass_until,
        valid_for,
    ))
}

fn seconds(s: f64) -> Duration {
    Duration::from_secs_f64(s.max(0.0))
}

impl Identity {
    /// Made on the runtime that will send its cold lookups (`serve`: the background runtime).
    /// Break-glass sessions count only once their alert was delivered (I-4) unless
    /// [`Identity::with_break_glass_requires_alert`] says otherwise: the safe default is the
    /// library's too, not only `serve`'s.
    pub fn new(pool: Db, ttl: Duration, capacity: u64, metrics: Arc<Metrics>) -> Identity {
        Identity {
            lookups: None,
            pool,
            ttl,
            // Invalidation closures: `invalidate_admin` drops every session of one admin.
            sessions: Cache::builder()
                .max_capacity(capacity)
                .expire_after(OwnExpiry)
                .support_invalidation_closures()
                .build(),
            principals: Cache::builder()
                .max_capacity(capacity)
                .expire_after(OwnExpiry)
                .build(),
            hits: [
                metrics.cache_hits.with_label_values(&["session"]),
                metrics.cache_hits.with_label_values(&["principal"]),
            ],
            metrics,
            break_glass_requires_alert: true,
            query_timeout: Duration::from_secs(2),
            id: {
                static IDS: AtomicU64 = AtomicU64::new(0);
                IDS.fetch_add(1, Ordering::Relaxed)
            },
            generation: AtomicU64::new(0),
            changes: AtomicU64::new(0),
            batches: std::sync::OnceLock::new(),
            runtime: tokio::runtime::Handle::try_current().ok(),
        }
    }

    /// The longest a session or role lookup waits for the database (default 2 s); then the
    /// request gets 503, as when the database refuses.
    pub fn with_query_timeout(mut self, timeout: Duration) -> Identity {
        self.query_timeout = timeout;
        self
    }

    /// Whether break-glass sessions count only once their alert was delivered (I-4; the
    /// default). Off only for `--break-glass-requires-alert=false`.
    pub fn with_break_glass_requires_alert(mut self, on: bool) -> Identity {
        self.break_glass_requires_alert = on;
        self
    }

    /// [`Identity::lookups`] on a login of their own (`--lookup-database-url`).
    pub fn with_lookups(mut self, lookups: Db) -> Identity {
        self.lookups = Some(lookups);
        self
    }

    pub fn pool(&self) -> &Db {
        &self.pool
    }

    /// Where the request path reads Console's tables with no look first (cold lookups, ticket
    /// grants, the reader API, the mapping's names): [`Identity::pool`] by default.
    pub fn lookups(&self) -> &Db {
        self.lookups.as_ref().unwrap_or(&self.pool)
    }

    /// The login of their own [`Identity::with_lookups`] gave the lookups, if any.
    pub fn own_lookups(&self) -> Option<&Db> {
        self.lookups.as_ref()
    }

    /// The live session behind a cookie value, or None (unknown, expired, revoked).
    pub async fn session(&self, token: &str) -> Result<Option<Arc<Session>>, IdentityError> {
        self.session_and_principal(token).await.map(|(s, _)| s)
    }

    /// [`Identity::session`], and the admin's principal when the session was not cached: a cold
    /// request's session and principal are read in one round trip
    /// ([`Identity::cold_lookup`]), and the principal is cached with the session.
    async fn session_and_principal(
        &self,
        token: &str,
    ) -> Result<(Option<Arc<Session>>, Option<Arc<Principal>>), IdentityError> {
        let key = token_hash(token);
        if let Some(hit) = self.sessions.get(&key).await {
            self.hits[0].inc();
            telemetry::note_cache(telemetry::Cache::Shared);
            return Ok((hit, None));
        }
        telemetry::note_cache(telemetry::Cache::Miss);
        self.metrics
            .cache_misses
            .with_label_values(&["session"])
            .inc();
        if !is_token_hash(&key) {
            // token_hash makes nothing else: a bug, refused before it reaches SQL.
            return Err(IdentityError::DatabaseUnavailable(Arc::new(
                sqlx::Error::Protocol("a session key that is not a SHA-256 hex digest".into()),
            )));
        }
        let changes = self.changes.load(Ordering::SeqCst);
        // The principal read with the session, by whichever caller ran the lookup.
        let fetched: std::sync::Mutex<Option<Arc<Principal>>> = std::sync::Mutex::new(None);
        let init = async {
            let span = telemetry::db_span("SELECT session principal");
            let found = crate::stores::db::within(self.query_timeout, self.cold_lookup(&key)).await;
            if let Some(span) = span {
                span.done(found.is_ok());
            }
            let Some(found) = found? else {
                return Ok::<_, sqlx::Error>(None);
            };
            let principal = principal_of(
                &found.admin_id,
                found.roles,
                found.permissions,
                found.break_glass_seconds,
                found.break_glass_until,
                self.ttl,
            );
            self.metrics
                .cache_misses
                .with_label_values(&["principal"])
                .inc();
            self.principals
                .insert(found.admin_id.clone(), principal.clone())
                .await;
            *fetched.lock().unwrap_or_else(|p| p.into_inner()) = Some(principal);
            Ok(Some(Arc::new(Session {
                admin_id: found.admin_id,
                until: Instant::now() + self.ttl.min(seconds(found.seconds_left)),
            })))
        };
        let found = self
            .sessions
            .try_get_with(key.clone(), init)
            .await
            .map_err(IdentityError::DatabaseUnavailable)?;
        self.drop_if_changed(changes, &self.sessions, &key).await;
        let principal = fetched.into_inner().unwrap_or_else(|p| p.into_inner());
        if let (Some(s), Some(_)) = (&found, &principal) {
            self.drop_if_changed(changes, &self.principals, &s.admin_id)
                .await;
        }
        Ok((found, principal))
    }

    /// A cold request's session and principal, in one round trip: the statement of every cold
    /// lookup waiting at the time ([`session_batch`]). Unbounded here: the caller bounds it.
    async fn cold_lookup(&self, key: &str) -> Result<Option<Found>, sqlx::Error> {
        let batches = self.batches.get_or_init(|| {
            Batches::start(
                self.runtime.as_ref(),
                self.lookups().clone(),
                self.break_glass_requires_alert,
                self.metrics.clone(),
            )
        });
        // The statement's error, shared by every lookup in it: its text when others hold it.
        batches.lookup(key).await.map_err(|e| {
            Arc::try_unwrap(e).unwrap_or_else(|e| sqlx::Error::Protocol(e.to_string()))
        })
    }

    /// A session from the cache only (no query): used to name the admin in a `no_route` row.
    pub async fn cached_session(&self, token: &str) -> Option<Arc<Session>> {
        self.sessions.get(&token_hash(token)).await.flatten()
    }

    /// The admin's effective roles and permissions.
    pub async fn principal(&self, admin_id: &str) -> Result<Arc<Principal>, IdentityError> {
        if let Some(hit) = self.principals.get(admin_id).await {
            self.hits[1].inc();
            telemetry::note_cache(telemetry::Cache::Shared);
            return Ok(hit);
        }
        telemetry::note_cache(telemetry::Cache::Miss);
        self.metrics
            .cache_misses
            .with_label_values(&["principal"])
            .inc();
        let changes = self.changes.load(Ordering::SeqCst);
        let init = async {
            self.metrics.db_queries.inc();
            let lookup = resolve_with(
                self.lookups(),
                admin_id,
                self.ttl,
                self.break_glass_requires_alert,
            );
            let span = telemetry::db_span("SELECT principal");
            let found = crate::stores::db::within(self.query_timeout, lookup)
                .await
                .inspect_err(|_| {
                    self.metrics.db_errors.inc();
                });
            if let Some(span) = span {
                span.done(found.is_ok());
            }
            found
        };
        let found = self
            .principals
            .try_get_with(admin_id.to_string(), init)
            .await
            .map_err(IdentityError::DatabaseUnavailable)?;
        self.drop_if_changed(changes, &self.principals, admin_id)
            .await;
        Ok(found)
    }

    /// Called after a cache fill that began when the feed's counter read `since`. If the feed
    /// invalidated anything since, the value just cached may have been read before that change
    /// committed and stored after the feed's invalidation ran (finding nothing to drop): it
    /// would then outlive the change until its TTL. So it is dropped, and the remembered
    /// answers with it. The request that made the fill still uses it: it was read no earlier
    /// than the request's own arrival, as any answer given before the feed saw the change.
    async fn drop_if_changed<V>(&self, since: u64, cache: &Cache<String, V>, key: &str)
    where
        V: Clone + Send + Sync + 'static,
    {
        // Pairs with the fence in `changing`: either the feed's invalidation saw this fill's
        // insert, or this load sees the feed's counter move.
        std::sync::atomic::fence(Ordering::SeqCst);
        if self.changes.load(Ordering::SeqCst) != since {
            cache.invalidate(key).await;
            self.advance();
        }
    }

    /// Marks the start of an invalidation by the change feed (before the caches are touched).
    fn changing(&self) {
        self.changes.fetch_add(1, Ordering::SeqCst);
        std::sync::atomic::fence(Ordering::SeqCst);
    }

    /// Who holds this session cookie: `None` when no live session has it.
    ///
    /// A worker thread remembers its recent answers (`Recent`); one is reused only while the
    /// caches have not been invalidated since it was read and neither the session nor the
    /// principal behind it has expired, so it is never staler than the caches themselves.
    ///
    /// `at` is when the request arrived (a clock read the caller already made, one fewer per
    /// request): a remembered answer is reused only if the session and principal were still
    /// live then.
    pub async fn principal_for_token(
        &self,
        token: &str,
        at: Instant,
    ) -> Result<Option<Arc<Principal>>, IdentityError> {
        // Read before the caches: an invalidation after this makes what is read now stale.
        let generation = self.generation.load(Ordering::Acquire);
        let recent = RECENT.with(|r| {
            r.borrow()
                .get(token)
                .filter(|e| e.identity == self.id && e.generation == generation && at < e.until)
                .map(|e| e.principal.clone())
        });
        if let Some(p) = recent {
            self.hits[0].inc();
            self.hits[1].inc();
            telemetry::note_cache(telemetry::Cache::Worker);
            return Ok(Some(p));
        }
        // Boxed: the caches' and the database's futures are kilobytes, and a future inline here
        // is inline in every request handler, whose size hyper allocates once per client
        // connection and keeps while it is open (issue 51). Remembered answers, above, allocate
        // nothing.
        Box::pin(self.principal_not_remembered(token, generation)).await
    }

    /// [`Identity::principal_for_token`] past the worker's remembered answers: the caches, then
    /// PostgreSQL; the answer is remembered.
    async fn principal_not_remembered(
        &self,
        token: &str,
        generation: u64,
    ) -> Result<Option<Arc<Principal>>, IdentityError> {
        let (Some(s), fetched) = self.session_and_principal(token).await? else {
            return Ok(None);
        };
        let p = match fetched {
            Some(p) => p,
            None => self.principal(&s.admin_id).await?,
        };
        RECENT.with(|r| {
            let mut r = r.borrow_mut();
            if r.len() >= RECENT_MAX {
                r.clear();
            }
            r.insert(
                token.to_string(),
                Recent {
                    identity: self.id,
                    generation,
                    until: s.until.min(p.until),
                    principal: p.clone(),
                },
            );
        });
        Ok(Some(p))
    }

    /// Marks every answer read before now stale: called after the caches were invalidated.
    fn advance(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// (sessions, principals) cached right now.
    pub fn cache_sizes(&self) -> (u64, u64) {
        (self.sessions.entry_count(), self.principals.entry_count())
    }

    /// Drops every cached answer (a catalogue change, or the gateway cannot tell what changed).
    pub fn invalidate_all(&self) {
        self.changing();
        self.sessions.invalidate_all();
        self.principals.invalidate_all();
        self.advance();
    }

    /// Drops what is cached for one admin: their principal, and the session `token_sha256`
    /// when a session row changed. A change to the admin row itself drops all their sessions.
    pub async fn invalidate_admin(&self, admin_id: &str, token_sha256: Option<&str>) {
        self.changing();
        self.principals.invalidate(admin_id).await;
        match token_sha256 {
            Some(t) => self.sessions.invalidate(t).await,
            None => {
                let admin = admin_id.to_string();
                let dropped = self.sessions.invalidate_entries_if(move |_, v| {
                    v.as_ref().is_some_and(|s| s.admin_id == admin)
                });
                if let Err(e) = dropped {
                    // Cannot happen with the builder above; if it ever does, the safe
                    // direction is to drop everything rather than keep a stale session.
                    self.metrics.cache_invalidation_errors.inc();
                    tracing::error!(error = %e, admin = admin_id, "cannot drop one admin's sessions; clearing the session cache");
                    self.sessions.invalidate_all();
                }
            }
        }
        self.advance();
    }
}

/// One answer a worker thread remembers: the principal behind a cookie, read from the caches of
/// one [`Identity`] at one generation, reusable until `until`.
struct Recent {
    identity: u64,
    generation: u64,
    until: Instant,
    principal: Arc<Principal>,
}

/// Answers remembered per thread; the map is emptied when full.
const RECENT_MAX: usize = 16 * 1024;

thread_local! {
    // A cookie is inserted only once it named a live session: an attacker cannot fill this map,
    // so it uses rustc's unkeyed FxHasher (rustc-hash) rather than std's keyed SipHash (measured
    // about 400 instructions per proxied request, scripts/bench/instructions.sh).
    static RECENT: std::cell::RefCell<std::collections::HashMap<String, Recent, rustc_hash::FxBuildHasher>> =
        std::cell::RefCell::new(std::collections::HashMap::default());
}

/// Resolves a principal with one query, break-glass sessions counted only once their alert was
/// delivered (I-4; [`resolve_with`] chooses).
pub async fn resolve(
    pool: &Db,
    admin_id: &str,
    ttl: Duration,
) -> Result<Arc<Principal>, sqlx::Error> {
    resolve_with(pool, admin_id, ttl, true).await
}

/// [`resolve`], with break-glass sessions counted only once their alert was delivered when
/// `requires_alert` (`--break-glass-requires-alert`). One round trip.
pub async fn resolve_with(
    pool: &Db,
    admin_id: &str,
    ttl: Duration,
    requires_alert: bool,
) -> Result<Arc<Principal>, sqlx::Error> {
    // A dead pooled connection (after a connection storm) costs one retry, not a 503.
    let rows = crate::stores::db::retry_once(|| async {
        pool.lookup(Lookup {
            sql: PRINCIPAL_SQL,
            values: &[Value::Text(admin_id), Value::Boolean(requires_alert)],
        })
        .await
    })
    .await?;
    let row = rows.first().ok_or(sqlx::Error::RowNotFound)?;
    principal_from(admin_id, row, ttl)
}

pub async fn provenance(
    pool: &Db,
    admin_id: &str,
    requires_alert: bool,
) -> Result<Vec<String>, sqlx::Error> {
    let groups: Vec<(String, String, bool)> = sqlx::query_as(
        concat!(
            r#"SELECT g.id, g.name, false FROM rbac_user_groups ug JOIN rbac_groups g ON g.id = ug.group_id WHERE ug.user_id = $1 COLLATE pg_catalog."default"
           UNION
           SELECT g.id, g.name, true FROM rbac_groups g WHERE g.name = 'break-glass' AND EXISTS (
               SELECT 1 FROM rbac_break_glass_sessions b WHERE b.user_id = $1 COLLATE pg_catalog."default" AND b.revoked_at_utc IS NULL AND "#,
            break_glass_end!(),
            " > pg_catalog.now() AND ",
            break_glass_started!(),
            " AND (NOT $2::bool OR ",
            break_glass_alerted!(),
            r#"))
           ORDER BY 2"#
        ),
    ).persistent(false)
    .bind(admin_id)
    .bind(requires_alert)
    .fetch_all(pool)
    .await?;
    let group_roles: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT gr.group_id, r.id, r.name FROM rbac_group_roles gr JOIN rbac_roles r ON r.id = gr.role_id ORDER BY r.name",
    ).persistent(false)
    .fetch_all(pool)
    .await?;
    let edges: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT ri.child_role_id, p.id, p.name FROM rbac_role_inheritance ri JOIN rbac_roles p ON p.id = ri.parent_role_id ORDER BY p.name",
    ).persistent(false)
    .fetch_all(pool)
    .await?;
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    let mut queue = std::collections::VecDeque::new();
    for (gid, gname, via_bg) in &groups {
        let origin = if *via_bg {
            format!("break-glass session -> group {gname}")
        } else {
            format!("group {gname}")
        };
        for (_, rid, rname) in group_roles.iter().filter(|(g, _, _)| g == gid) {
            queue.push_back((rid.clone(), rname.clone(), format!("{origin} -> {rname}")));
        }
    }
    while let Some((rid, rname, path)) = queue.pop_front() {
        if !seen.insert(rid.clone()) {
            continue;
        }
        out.push(format!("{rname}: {path}"));
        for (_, pid, pname) in edges.iter().filter(|(c, _, _)| *c == rid) {
            queue.push_back((
                pid.clone(),
                pname.clone(),
                format!("{path} -> inherits {pname}"),
            ));
        }
    }
    out.sort();
    Ok(out)
}

/// Whether an admin exists and has sessions: what `explain --admin` says before it decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionState {
    /// `admins` has the admin.
    pub known: bool,
    /// The admin has a session row, live or not.
    pub any: bool,
    /// The admin has a session neither expired nor revoked.
    pub live: bool,
}

/// The [`SessionState`] of `admin` (one statement).
pub async fn session_state(pool: &Db, admin: &str) -> Result<SessionState, sqlx::Error> {
    let (known, any, live): (bool, bool, bool) = sqlx::query_as(
        "SELECT EXISTS (SELECT 1 FROM admins WHERE id = $1 COLLATE pg_catalog.\"default\"), \
         EXISTS (SELECT 1 FROM admin_sessions WHERE admin_id = $1 COLLATE pg_catalog.\"default\"), \
         EXISTS (SELECT 1 FROM admin_sessions WHERE admin_id = $1 COLLATE pg_catalog.\"default\" \
                 AND revoked_at_utc IS NULL AND expires_at_utc > pg_catalog.now())",
    )
    .persistent(false)
    .bind(admin)
    .fetch_one(pool)
    .await?;
    Ok(SessionState { known, any, live })
}

/// Whether `admin` has an active break-glass session (revoked or past its end: not), whether or
/// not its alert was delivered (`explain` says one waits for its alert).
pub async fn break_glass_active(pool: &Db, admin: &str) -> Result<bool, sqlx::Error> {
    let active: Option<i32> = sqlx::query_scalar(concat!(
        "SELECT 1 FROM rbac_break_glass_sessions b WHERE b.user_id = $1 COLLATE pg_catalog.\"default\" \
             AND b.revoked_at_utc IS NULL AND ",
        crate::break_glass_end!(),
        " > pg_catalog.now() AND ",
        crate::break_glass_started!(),
        " LIMIT 1"
    ))
    .persistent(false)
    .bind(admin)
    .fetch_optional(pool)
    .await?;
    Ok(active.is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_hash_is_lowercase_hex_sha256() {
        for t in ["", "abc", "a-long-cookie-value-\u{e9}"] {
            assert_eq!(token_hash(t), hex::encode(Sha256::digest(t.as_bytes())));
        }
        let abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        assert_eq!(token_hash("abc"), abc);
    }

    /// The principal's function (the last migration that defines it) ends a break-glass
    /// session exactly where `break_glass_end!()` does, everywhere it reads an end, starts it
    /// where `break_glass_started!()` does, and asks for its alert as `break_glass_alerted!()`.
    #[test]
    fn the_principal_function_ends_break_glass_as_break_glass_end_does() {
        let sql = crate::stores::migrations::latest_definition("rbac_gateway_principal");
        // The function's body alone (the migration may define others after it).
        let from = sql
            .find("FUNCTION @s.rbac_gateway_principal(")
            .expect("the principal's definition");
        let body = &sql[from..];
        let body = &body[body.find("$fn$").expect("a $fn$ body")..];
        let body = &body[..body.find("$fn$;").expect("the body's end")];
        let end = break_glass_end!();
        assert_eq!(body.matches(end).count(), 4, "{body}");
        assert_eq!(
            body.matches("b.expires_at_utc").count(),
            4,
            "every read of a session's end goes through the expression: {body}"
        );
        // The alert's condition as `explain` reads it (migration 0033), whitespace aside.
        let words = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
        let alerted = words(break_glass_alerted!())
            .replace("FROM rbac_gateway_alerts", "FROM @s.rbac_gateway_alerts");
        assert!(words(body).contains(&alerted), "{alerted}\n{body}");
        // The statements call `pg_catalog.now()`; the function, whose path is pinned to
        // pg_catalog (migration 0022), calls `now()`.
        let started = break_glass_started!().replace("pg_catalog.", "");
        assert_eq!(
            body.matches(started.as_str()).count(),
            1,
            "a session counts from when it was granted: {body}"
        );
        let lookup = Lookup {
            sql: PRINCIPAL_SQL,
            values: &[Value::Text("a'b"), Value::Boolean(true)],
        };
        assert!(lookup
            .render()
            .unwrap()
            .ends_with("rbac_gateway_principal(E'a''b', true)"));
        assert!(is_token_hash(&token_hash("any cookie")));
        assert!(!is_token_hash("E'; DROP TABLE admins; --"));
    }
}
