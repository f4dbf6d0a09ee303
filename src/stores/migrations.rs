//! The embedded migrations (`migrations/`) and `migrate`: the session's path pinned, no lock
//! waited for longer than [`MIGRATE_LOCK_TIMEOUT`] (tried again instead), the indexes of
//! migrations 0001 and 0016 on Console's tables built beforehand without blocking writes where
//! they have not run yet (`before_migrations`), and, after the migrations, the erasure's
//! indexes built the same way and the rows written before migration 0025 given their erasure
//! keys in short batches (`after_migrations`). docs/design/migrations.md.

use std::time::Duration;

mod ahead;
mod triggers;

use super::db::{quoted_schema, Db};

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// How the database's schema stands against this binary's migrations, read from
/// `_sqlx_migrations` ([`schema_state`]): `/readyz` answers 503 while [`SchemaState::blocking`]
/// says anything, `check` reports it, `serve` logs it at start-up.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SchemaState {
    /// This binary's migrations not recorded at all, in order: statements of this binary's need
    /// what they make (a function, a column, a grant), so they would fail.
    pub missing: Vec<i64>,
    /// Migrations recorded as failed (`success` false): sqlx's `migrate` refuses to go on until
    /// the row is dealt with by hand.
    pub failed: Vec<i64>,
    /// This binary's migrations applied with another text (checksum) than its own: another
    /// build migrated the schema (`migrate` refuses it too).
    pub differs: Vec<i64>,
    /// Migrations applied that this binary does not know: a newer release migrated, as during a
    /// rolling upgrade's old processes. Migrations only add, so this binary serves as before.
    pub newer: Vec<i64>,
}

impl SchemaState {
    /// `applied`'s (version, success, checksum) rows against the binary's `known` (version,
    /// checksum) pairs.
    pub fn compare<'a>(
        known: impl IntoIterator<Item = (i64, &'a [u8])>,
        applied: &[(i64, bool, Vec<u8>)],
    ) -> SchemaState {
        let known: std::collections::BTreeMap<i64, &[u8]> = known.into_iter().collect();
        let mut state = SchemaState::default();
        for (version, success, checksum) in applied {
            match (success, known.get(version)) {
                (false, _) => state.failed.push(*version),
                (true, None) => state.newer.push(*version),
                (true, Some(ours)) if *ours != checksum.as_slice() => state.differs.push(*version),
                (true, Some(_)) => {}
            }
        }
        let recorded: std::collections::BTreeSet<i64> =
            applied.iter().map(|(version, ..)| *version).collect();
        state.missing = known
            .keys()
            .filter(|v| !recorded.contains(v))
            .copied()
            .collect();
        for list in [&mut state.failed, &mut state.differs, &mut state.newer] {
            list.sort_unstable();
        }
        state
    }

    /// What stops this binary from serving, one line each, for `/readyz` and `check`: none when
    /// each of its migrations is applied as it has it and none failed.
    pub fn blocking(&self) -> Vec<String> {
        let mut lines = Vec::new();
        if !self.missing.is_empty() {
            lines.push(format!(
                "database schema: this binary's migration(s) {} not applied (its statements need them): run `rbac-gateway migrate` with this binary",
                versions(&self.missing)
            ));
        }
        if !self.failed.is_empty() {
            lines.push(format!(
                "database schema: migration(s) {} recorded as failed in _sqlx_migrations (`migrate` will not go on: repair what it left, delete its row, then run `rbac-gateway migrate` with this binary)",
                versions(&self.failed)
            ));
        }
        if !self.differs.is_empty() {
            lines.push(format!(
                "database schema: migration(s) {} applied with another text than this binary's (another build migrated this database; `migrate` refuses it too): run the build that migrated it, or restore the schema",
                versions(&self.differs)
            ));
        }
        lines
    }

    /// A newer release's migrations, named with the status unchanged.
    pub fn ahead(&self) -> Option<String> {
        (!self.newer.is_empty()).then(|| {
            format!(
                "database schema: migration(s) {} applied by a newer release than this binary (this one serves as before; roll it forward)",
                versions(&self.newer)
            )
        })
    }
}

fn versions(versions: &[i64]) -> String {
    let shown: Vec<String> = versions.iter().take(5).map(|v| format!("{v:04}")).collect();
    match versions.len() - shown.len() {
        0 => shown.join(", "),
        more => format!("{} and {more} more", shown.join(", ")),
    }
}

/// The schema's migrations against this binary's ([`SchemaState`]); a database never migrated
/// (no `_sqlx_migrations`) lacks all of them. The login needs SELECT on the table's `version`,
/// `success` and `checksum` (`deploy/gateway-grants.sql`; [`schema_unreadable`] tells).
pub async fn schema_state(db: &Db) -> Result<SchemaState, sqlx::Error> {
    let applied: Vec<(i64, bool, Vec<u8>)> =
        match sqlx::query_as("SELECT version, success, checksum FROM _sqlx_migrations")
            .persistent(false)
            .fetch_all(db)
            .await
        {
            Ok(rows) => rows,
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P01") => Vec::new(),
            Err(e) => return Err(e),
        };
    let known = MIGRATOR
        .iter()
        .filter(|m| !m.migration_type.is_down_migration())
        .map(|m| (m.version, &m.checksum[..]));
    Ok(SchemaState::compare(known, &applied))
}

/// Why [`schema_state`] failed, as `/readyz`, `check` and the start-up log say it: a refusal
/// names the grant `serve`'s login lacks; anything else (a timeout, a lost connection) is said
/// as it is.
pub fn schema_unreadable(e: &sqlx::Error) -> String {
    let refused = matches!(e, sqlx::Error::Database(d) if d.code().as_deref() == Some("42501"));
    format!(
        "database schema: its migrations were not read, so not compared with this binary's: {e}{}",
        if refused {
            " (`serve`'s login needs SELECT on _sqlx_migrations: deploy/gateway-grants.sql)"
        } else {
            ""
        }
    )
}

/// The text of the latest migration that defines `function` (for tests that hold a function's
/// SQL to the Rust beside it).
#[cfg(test)]
pub(crate) fn latest_definition(function: &str) -> String {
    let heads = [
        format!("CREATE FUNCTION {function}("),
        format!("CREATE OR REPLACE FUNCTION {function}("),
        // Written into the migration's schema (`@s.`: migrations 0017, 0019, 0020, 0022).
        format!("CREATE OR REPLACE FUNCTION @s.{function}("),
    ];
    MIGRATOR
        .iter()
        .rev()
        .find(|m| heads.iter().any(|head| m.sql.contains(head.as_str())))
        .unwrap_or_else(|| panic!("no migration defines {function}"))
        .sql
        .to_string()
}

/// Applies `migrations/` (idempotent: applied versions are recorded in `_sqlx_migrations`), on
/// one connection of `db` (the migrator holds a session-level lock while it runs; the
/// connection is closed after it).
///
/// The session's `search_path` is the gateway's schema alone ([`super::db::schema`]): the tables are made
/// there, `pg_catalog` is searched before it (implicitly), and no schema another role chose
/// (`ALTER DATABASE ... SET search_path`, a schema named as the login) is searched.
///
/// The session reads with `row_security = off` (a policy on a table of Console's the migrations
/// or the backfills read would run as the migrating role; it fails instead: migration 0034),
/// opens no view in a table's place where the server can refuse it (`RESTRICT_SESSION`),
/// and a transaction of its left idle (`migrate` killed or cut off between a migration's
/// statements) ends after [`MIGRATE_IDLE_TIMEOUT`], its locks with it, not when TCP gives up.
///
/// No statement waits for a lock longer than [`MIGRATE_LOCK_TIMEOUT`] (`lock_timeout`): Console's
/// writes queue behind a lock `migrate` waits for, so a wait is cut short, the migration rolled
/// back, and tried again after a pause ([`MIGRATE_ATTEMPTS`] times), rather than stall Console.
pub async fn migrate(db: &Db) -> Result<(), MigrateFailed> {
    let mut attempt = 1;
    loop {
        let mut conn = db.pool().acquire().await.map_err(MigrateFailed::Before)?;
        before_migrating(&mut conn)
            .await
            .map_err(MigrateFailed::Before)?;
        match MIGRATOR.run(&mut *conn).await {
            Ok(()) => {
                use MigrateFailed::After;
                let restricting = "giving the gateway's functions restrict_nonsystem_relation_kind";
                restrict_functions(&mut conn)
                    .await
                    .map_err(|e| After(restricting, e))?;
                triggers::remake_silent(&mut conn)
                    .await
                    .map_err(|e| After("making the gateway's triggers again", e))?;
                return after_migrations(&mut conn)
                    .await
                    .map_err(|e| After("building the erasure's indexes and keying its rows", e));
            }
            Err(e) if lock_timed_out(&e) && attempt < MIGRATE_ATTEMPTS => {
                tracing::warn!(error = %e, attempt, "migrate: a lock was not granted within {} ms (Console's writes are not kept waiting behind it); trying again", MIGRATE_LOCK_TIMEOUT.as_millis());
                drop(conn);
                tokio::time::sleep(pause(attempt)).await;
                attempt += 1;
            }
            Err(e) if lock_timed_out(&e) => {
                let oldest = oldest_transactions(&mut conn).await.unwrap_or_default();
                tracing::error!(
                    attempts = attempt,
                    "migrate: gave up: a lock the migration needs was held past {} ms at each of {attempt} tries (about {} s): by a transaction of another session, which Console's writes were not kept waiting behind; run `rbac-gateway migrate` again once it has ended (the oldest open transactions: {})",
                    MIGRATE_LOCK_TIMEOUT.as_millis(),
                    (1..attempt).map(|a| pause(a) + MIGRATE_LOCK_TIMEOUT).sum::<Duration>().as_secs(),
                    if oldest.is_empty() { "none now".to_string() } else { oldest.join("; ") },
                );
                return Err(MigrateFailed::Migrations(e));
            }
            Err(e) => return Err(MigrateFailed::Migrations(e)),
        }
    }
}

/// Why `migrate` failed, told by where: whether this run's migrations were applied.
#[derive(Debug)]
pub enum MigrateFailed {
    /// Before the migrations ran: the connection, the session's settings, the migration lock,
    /// a schema `migrate` refuses, the indexes built ahead of them.
    Before(sqlx::Error),
    /// A migration failed (rolled back; those before it stay applied), or sqlx refused them.
    Migrations(sqlx::migrate::MigrateError),
    /// Every migration is applied; the step after them that is named failed.
    After(&'static str, sqlx::Error),
}

impl std::fmt::Display for MigrateFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Each of sqlx's errors writes its cause into its own text: said once, here.
        match self {
            MigrateFailed::Before(e) => write!(f, "migration failed before the migrations ran: {e}"),
            MigrateFailed::Migrations(e) => write!(f, "migration failed: {e}"),
            MigrateFailed::After(step, e) => write!(
                f,
                "the migrations are applied, but {step} failed: {e} (run `rbac-gateway migrate` again)"
            ),
        }
    }
}

impl std::error::Error for MigrateFailed {}

/// What `migrate` does on its connection before the migrations: the session pinned and bound
/// (its path, `lock_timeout`, row security, idle timeout, relation kinds; `jit` off, as its
/// reads of the catalogue are planned from statistics a new table's partitions have not
/// reached yet: `schema::SILENT_ROWS`; PostgreSQL's notices not sent, a first run's 45 "does
/// not exist, skipping" of its `IF EXISTS` drops among them, its warnings still), the migration lock
/// taken, the schema checked for planted namesakes before and after the indexes built ahead of
/// the migrations.
async fn before_migrating(conn: &mut sqlx::PgConnection) -> Result<(), sqlx::Error> {
    same_schema(conn).await?;
    let pin = format!(
        "SET search_path = {}; SET lock_timeout = {}; SET row_security = off; \
         SET idle_in_transaction_session_timeout = {}; SET jit = off; \
         SET client_min_messages = warning",
        quoted_schema(),
        MIGRATE_LOCK_TIMEOUT.as_millis(),
        MIGRATE_IDLE_TIMEOUT.as_millis()
    );
    sqlx::Executor::execute(&mut *conn, sqlx::raw_sql(&pin)).await?;
    sqlx::Executor::execute(&mut *conn, sqlx::raw_sql(RESTRICT_SESSION)).await?;
    // One migrate at a time builds indexes: another's build in progress is not taken for a
    // cancelled one (dropped and built again) nor for a finished one.
    migrate_lock(conn).await?;
    no_planted_namesakes(conn).await?;
    let applied = before_migrations(conn).await?;
    no_planted_namesakes(conn).await?;
    ahead::alert_sessions(conn, &applied).await
}

/// The key of the session lock one `migrate` holds while it runs.
const MIGRATE_LOCK: i64 = 7285402519317433201;

/// Takes the session lock one `migrate` holds while it runs ([`MIGRATE_LOCK`]), trying again
/// after a pause while another session holds it (the same pauses and attempts as a migration's
/// lock: a second `migrate` waits for the first, and says so), never waiting in the server past
/// `lock_timeout`. An error names the session holding it.
async fn migrate_lock(conn: &mut sqlx::PgConnection) -> Result<(), sqlx::Error> {
    for attempt in 1..=MIGRATE_ATTEMPTS {
        let taken: bool = sqlx::query_scalar("SELECT pg_catalog.pg_try_advisory_lock($1)")
            .persistent(false)
            .bind(MIGRATE_LOCK)
            .fetch_one(&mut *conn)
            .await?;
        if taken {
            return Ok(());
        }
        let holder = lock_holder(conn).await?;
        if attempt == MIGRATE_ATTEMPTS {
            return Err(sqlx::Error::InvalidArgument(format!(
                "another `rbac-gateway migrate` ({holder}) still holds the migration lock after {attempt} tries: run `migrate` again once it has ended"
            )));
        }
        tracing::warn!(
            attempt,
            "migrate: another `rbac-gateway migrate` ({holder}) is running; waiting for it"
        );
        tokio::time::sleep(pause(attempt)).await;
    }
    unreachable!("the last attempt returns")
}

/// Who holds [`MIGRATE_LOCK`]: `pid N (application, state since TIME)`, or that it was let go.
async fn lock_holder(conn: &mut sqlx::PgConnection) -> Result<String, sqlx::Error> {
    let holder: Option<String> = sqlx::query_scalar(
        "SELECT pg_catalog.format('pid %s (%s, %s since %s)', a.pid, a.application_name, a.state, \
                                  pg_catalog.to_char(a.state_change AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS UTC')) \
           FROM pg_catalog.pg_locks l JOIN pg_catalog.pg_stat_activity a ON a.pid OPERATOR(pg_catalog.=) l.pid \
          WHERE l.locktype OPERATOR(pg_catalog.=) 'advisory' AND l.granted \
            AND l.classid::int8 OPERATOR(pg_catalog.=) $1 AND l.objid::int8 OPERATOR(pg_catalog.=) $2 \
            AND l.objsubid OPERATOR(pg_catalog.=) 1 \
          LIMIT 1",
    )
    .persistent(false)
    // A bigint key is shown in pg_locks as its high and low 32 bits.
    .bind(MIGRATE_LOCK >> 32)
    .bind(MIGRATE_LOCK & 0xffff_ffff)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(holder.unwrap_or_else(|| "a session that has just let it go".to_string()))
}

/// The three oldest open transactions of other sessions, each as `pid N (application, state,
/// open since TIME)`: where a lock the migration waited for is likely held. A session of a role
/// whose activity this role may not see (its start, state and application hidden) is named
/// too, after them, by the lock every transaction holds on its own id (`pg_locks` hides
/// nothing): a review found the blocker left out ("none now") where `migrate` ran as no
/// superuser.
pub async fn oldest_transactions(
    conn: &mut sqlx::PgConnection,
) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT CASE WHEN a.xact_start IS NULL \
                     THEN pg_catalog.format('pid %s (role %s: its transaction is not this role''s to see)', a.pid, a.usename) \
                     ELSE pg_catalog.format('pid %s (%s, %s, open since %s)', a.pid, a.application_name, a.state, \
                                  pg_catalog.to_char(a.xact_start AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS UTC')) END \
           FROM pg_catalog.pg_stat_activity a \
          WHERE a.pid OPERATOR(pg_catalog.<>) pg_catalog.pg_backend_pid() \
            AND (a.xact_start IS NOT NULL \
                 OR (a.usename IS NOT NULL \
                     AND EXISTS (SELECT FROM pg_catalog.pg_locks l \
                                  WHERE l.pid OPERATOR(pg_catalog.=) a.pid AND l.locktype OPERATOR(pg_catalog.=) 'virtualxid' \
                                    AND l.granted))) \
          ORDER BY a.xact_start NULLS LAST, a.pid LIMIT 3",
    )
    .persistent(false)
    .fetch_all(&mut *conn)
    .await
}

/// Refuses to migrate where the gateway's schema holds a function or operator named as one of
/// `pg_catalog`'s (with other argument types, or a `VARIADIC` or defaults of its own: an equal
/// match goes to `pg_catalog`, searched first) or as one of the gateway's (`rbac_gateway_*`,
/// `rbac_mapping_*`, `access_audit_events_append_only`), or a table, sequence or index under the
/// gateway's names (`rbac_change_log`, `access_audit_events`, `_sqlx_migrations`,
/// `rbac_gateway_*`, `rbac_mapping_*`: a migration's `CREATE TABLE IF NOT EXISTS` keeps one made
/// before it, and the gateway's functions that run as their owner would then write a table whose
/// triggers another role chose), whose owner is not trusted: neither the migrating role,
/// nor a member of it (which may act as it already), nor a superuser (which owns an extension's
/// objects, a trusted one's too). Not the owner of the gateway's tables as such: before
/// migration 0004 runs, a role that may create in the schema may make `rbac_change_log` itself,
/// and 0004 (`CREATE TABLE IF NOT EXISTS`) keeps it; the tables' owner is trusted where it is the
/// migrating role, which it is wherever the migrations can run but as a superuser. The
/// migrations written before 0022 call built-ins by their bare names, and once applied a
/// migration cannot be edited (sqlx checks its checksum): a function there that matches such a
/// call better than the built-in (`format(text, text)` against `format(text, VARIADIC "any")`)
/// would run with the migrating role's privileges, which own the gateway's tables, and could
/// leave a function behind that runs as them. Run before the indexes are built and again just
/// before the migrations (the builds may wait long); the path [`migrate`] pins holds that
/// schema alone, after `pg_catalog`, so no other schema's functions are searched.
async fn no_planted_namesakes(conn: &mut sqlx::PgConnection) -> Result<(), sqlx::Error> {
    let found: Vec<String> = sqlx::query_scalar(
        "WITH RECURSIVE members(oid) AS ( \
                  SELECT r.oid FROM pg_catalog.pg_roles r WHERE r.rolname OPERATOR(pg_catalog.=) pg_catalog.current_user() \
                  UNION SELECT m.member FROM pg_catalog.pg_auth_members m JOIN members ON m.roleid OPERATOR(pg_catalog.=) members.oid), \
              trusted AS (SELECT oid FROM members UNION SELECT r.oid FROM pg_catalog.pg_roles r WHERE r.rolsuper), \
              s AS (SELECT pg_catalog.to_regnamespace(pg_catalog.quote_ident($1))::oid AS oid) \
         SELECT pg_catalog.format('function %s (owner %s)', p.oid::regprocedure, pg_catalog.pg_get_userbyid(p.proowner)) \
           FROM pg_catalog.pg_proc p, s \
          WHERE p.pronamespace OPERATOR(pg_catalog.=) s.oid \
            AND p.pronamespace OPERATOR(pg_catalog.<>) 'pg_catalog'::regnamespace::oid \
            AND (p.proname::text OPERATOR(pg_catalog.~~) 'rbac\\_gateway\\_%' \
                 OR p.proname::text OPERATOR(pg_catalog.~~) 'rbac\\_mapping\\_%' \
                 OR p.proname::text OPERATOR(pg_catalog.=) 'access_audit_events_append_only' \
                 OR (EXISTS (SELECT FROM pg_catalog.pg_proc b \
                              WHERE b.pronamespace OPERATOR(pg_catalog.=) 'pg_catalog'::regnamespace::oid \
                                AND b.proname OPERATOR(pg_catalog.=) p.proname) \
                     AND NOT EXISTS (SELECT FROM pg_catalog.pg_proc b \
                                      WHERE b.pronamespace OPERATOR(pg_catalog.=) 'pg_catalog'::regnamespace::oid \
                                        AND b.proname OPERATOR(pg_catalog.=) p.proname \
                                        AND b.proargtypes OPERATOR(pg_catalog.=) p.proargtypes \
                                        AND b.provariadic OPERATOR(pg_catalog.=) p.provariadic \
                                        AND p.pronargdefaults OPERATOR(pg_catalog.=) 0))) \
            AND p.proowner OPERATOR(pg_catalog.<>) ALL (ARRAY(SELECT oid FROM trusted)) \
         UNION ALL \
         SELECT pg_catalog.format('operator %s (owner %s)', o.oid::regoperator, pg_catalog.pg_get_userbyid(o.oprowner)) \
           FROM pg_catalog.pg_operator o, s \
          WHERE o.oprnamespace OPERATOR(pg_catalog.=) s.oid \
            AND o.oprnamespace OPERATOR(pg_catalog.<>) 'pg_catalog'::regnamespace::oid \
            AND EXISTS (SELECT FROM pg_catalog.pg_operator b \
                         WHERE b.oprnamespace OPERATOR(pg_catalog.=) 'pg_catalog'::regnamespace::oid \
                           AND b.oprname OPERATOR(pg_catalog.=) o.oprname) \
            AND NOT EXISTS (SELECT FROM pg_catalog.pg_operator b \
                             WHERE b.oprnamespace OPERATOR(pg_catalog.=) 'pg_catalog'::regnamespace::oid \
                               AND b.oprname OPERATOR(pg_catalog.=) o.oprname \
                               AND b.oprleft OPERATOR(pg_catalog.=) o.oprleft AND b.oprright OPERATOR(pg_catalog.=) o.oprright) \
            AND o.oprowner OPERATOR(pg_catalog.<>) ALL (ARRAY(SELECT oid FROM trusted)) \
         UNION ALL \
         SELECT pg_catalog.format('relation %s (owner %s)', c.oid::regclass, pg_catalog.pg_get_userbyid(c.relowner)) \
           FROM pg_catalog.pg_class c, s \
          WHERE c.relnamespace OPERATOR(pg_catalog.=) s.oid \
            AND (c.relname::text OPERATOR(pg_catalog.=) ANY ('{rbac_change_log,access_audit_events,_sqlx_migrations}'::text[]) \
                 OR c.relname::text OPERATOR(pg_catalog.~~) 'rbac\\_gateway\\_%' \
                 OR c.relname::text OPERATOR(pg_catalog.~~) 'rbac\\_mapping\\_%') \
            AND c.relowner OPERATOR(pg_catalog.<>) ALL (ARRAY(SELECT oid FROM trusted)) \
          ORDER BY 1",
    )
    .persistent(false)
    .bind(super::db::schema())
    .fetch_all(&mut *conn)
    .await?;
    if found.is_empty() {
        return Ok(());
    }
    Err(sqlx::Error::InvalidArgument(
        format!(
            "nothing was migrated: schema {} holds {}, named as a built-in or as one of the gateway's functions or tables, owned by a role that is neither this one nor a member of it nor a superuser: a migration's call of that name could run it with this role's privileges. Drop it once you know who made it and why (one of the gateway's own, made by another login of yours: run `migrate` as that login, or `ALTER FUNCTION ... OWNER TO` this one), and run `migrate` again; keep the gateway's tables in a schema no other role may create in",
            super::db::schema(),
            found.join(", ")
        ),
    ))
}

/// The longest `migrate` waits for a lock before it lets Console's writes go first.
pub const MIGRATE_LOCK_TIMEOUT: Duration = Duration::from_millis(200);
/// The longest a transaction of `migrate`'s may sit idle (its client gone between two of its
/// statements) before the server ends it and releases its locks.
pub const MIGRATE_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// How many times `migrate` tries a migration whose lock was not granted in time.
pub const MIGRATE_ATTEMPTS: u32 = 60;

/// `e` is a migration's statement cut short by `lock_timeout` ([`lock_timeout`]).
fn lock_timed_out(e: &sqlx::migrate::MigrateError) -> bool {
    use sqlx::migrate::MigrateError;
    match e {
        MigrateError::Execute(e) | MigrateError::ExecuteMigration(e, _) => lock_timeout(e),
        _ => false,
    }
}

/// `e` is a statement cut short by `lock_timeout` (SQLSTATE 55P03).
fn lock_timeout(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.code().as_deref() == Some("55P03"))
}

/// The pause before the `attempt`th try again of a statement whose lock was not granted: 100 ms
/// more each time, 2 s at the most.
fn pause(attempt: u32) -> Duration {
    Duration::from_millis(100 * u64::from(attempt.min(20)))
}

/// The indexes migrations 0001 and 0016 build on Console's tables, built before a migration
/// that has not run yet runs, each with `CREATE INDEX CONCURRENTLY` (outside a transaction; it
/// takes no lock that blocks a write, and waits for the transactions in progress without
/// holding one). The migration's `CREATE INDEX IF NOT EXISTS` then finds it, and holds its locks
/// only for as long as that takes, instead of building an index while Console's writes to the
/// table wait: 0001 on a first install in front of a Console whose tables already hold its
/// sessions (a build of 4 million sessions held their writes 3.5 s), 0016 on an upgrade (where
/// it also deadlocked with Console's ticket grants, which take its two tables in the other
/// order). Skipped where the table does not exist (a new database: the migration makes it
/// empty) or the migrating role is no member of its owner (where the migrations skip it or fail
/// anyway). An index a cancelled build left invalid is dropped (also concurrently) and built
/// again. The definitions are the migrations'. The versions applied, for [`ahead`]'s work.
async fn before_migrations(conn: &mut sqlx::PgConnection) -> Result<Vec<i64>, sqlx::Error> {
    const INDEXES: [(i64, &str, &str, &str); 8] = [
        (
            1,
            "idx_admin_sessions_admin",
            "admin_sessions",
            "(admin_id)",
        ),
        (
            1,
            "idx_rga_target",
            "rbac_grants_audit",
            "(target_user_id, created_at_utc DESC)",
        ),
        (
            1,
            "idx_rtg_user",
            "rbac_ticket_grants",
            "(user_id) WHERE revoked_at_utc IS NULL",
        ),
        (
            1,
            "idx_rbg_user",
            "rbac_break_glass_sessions",
            "(user_id) WHERE revoked_at_utc IS NULL",
        ),
        (
            16,
            "idx_rga_ticket",
            "rbac_grants_audit",
            "(ticket_id) WHERE ticket_id IS NOT NULL",
        ),
        (
            16,
            "idx_rga_expires",
            "rbac_grants_audit",
            "(expires_at_utc) WHERE expires_at_utc IS NOT NULL",
        ),
        (
            16,
            "idx_rtg_ticket",
            "rbac_ticket_grants",
            "(ticket_id) WHERE revoked_at_utc IS NULL",
        ),
        (
            16,
            "idx_rtg_customer",
            "rbac_ticket_grants",
            "(customer_id) WHERE revoked_at_utc IS NULL",
        ),
    ];
    let migrated: bool =
        sqlx::query_scalar("SELECT pg_catalog.to_regclass('_sqlx_migrations') IS NOT NULL")
            .persistent(false)
            .fetch_one(&mut *conn)
            .await?;
    let applied: Vec<i64> = if migrated {
        sqlx::query_scalar("SELECT version FROM _sqlx_migrations")
            .persistent(false)
            .fetch_all(&mut *conn)
            .await?
    } else {
        Vec::new()
    };
    for (version, index, table, columns) in INDEXES {
        if !applied.contains(&version) {
            ensure_index(conn, index, table, columns).await?;
        }
    }
    Ok(applied)
}

/// `index` on `table` (`columns`: the rest of the definition), built with `CREATE INDEX
/// CONCURRENTLY` unless a valid one of the name exists, where the migrating role is a member of
/// the table's owner (else left, as the migrations leave such a table). A build waits for the
/// transactions in progress and blocks no write meanwhile, so it waits without a bound; an
/// index a cancelled build left invalid is dropped (concurrently) and built again.
async fn ensure_index(
    conn: &mut sqlx::PgConnection,
    index: &str,
    table: &str,
    columns: &str,
) -> Result<(), sqlx::Error> {
    let (owned, valid): (bool, Option<bool>) = sqlx::query_as(
        "SELECT coalesce(pg_catalog.pg_has_role((SELECT c.relowner FROM pg_catalog.pg_class c \
                WHERE c.oid OPERATOR(pg_catalog.=) pg_catalog.to_regclass($1)::oid), 'USAGE'), false), \
                (SELECT i.indisvalid FROM pg_catalog.pg_index i \
                  WHERE i.indexrelid OPERATOR(pg_catalog.=) pg_catalog.to_regclass($2)::oid)",
    )
    .persistent(false)
    .bind(table)
    .bind(index)
    .fetch_one(&mut *conn)
    .await?;
    if !owned || valid == Some(true) {
        return Ok(());
    }
    sqlx::Executor::execute(&mut *conn, sqlx::raw_sql("SET lock_timeout = 0")).await?;
    if valid == Some(false) {
        let drop = format!("DROP INDEX CONCURRENTLY IF EXISTS {index}");
        sqlx::Executor::execute(&mut *conn, sqlx::raw_sql(&drop)).await?;
    }
    tracing::info!(
        index,
        table,
        "migrate: building an index concurrently (Console's writes go on; it first waits for the transactions open on the table to end, however long)"
    );
    let build = format!("CREATE INDEX CONCURRENTLY IF NOT EXISTS {index} ON {table} {columns}");
    sqlx::Executor::execute(&mut *conn, sqlx::raw_sql(&build)).await?;
    let valid: Option<bool> = sqlx::query_scalar(
        "SELECT i.indisvalid FROM pg_catalog.pg_index i \
          WHERE i.indexrelid OPERATOR(pg_catalog.=) pg_catalog.to_regclass($1)::oid",
    )
    .persistent(false)
    .bind(index)
    .fetch_optional(&mut *conn)
    .await?
    .flatten();
    if valid != Some(true) {
        return Err(sqlx::Error::Protocol(format!(
            "index {index} on {table} is not valid after its build: run `rbac-gateway migrate` again"
        )));
    }
    let bound = format!("SET lock_timeout = {}", MIGRATE_LOCK_TIMEOUT.as_millis());
    sqlx::Executor::execute(&mut *conn, sqlx::raw_sql(&bound)).await?;
    Ok(())
}

/// What follows the migrations, outside their transactions: the indexes the erasure finds its
/// rows by (migration 0025), built concurrently, then the rows written before 0025 given their
/// erasure keys, 5,000 a statement (each a short transaction of its own: Console's admin
/// deletes and the alert pass wait for no long one).
async fn after_migrations(conn: &mut sqlx::PgConnection) -> Result<(), sqlx::Error> {
    const INDEXES: [(&str, &str, &str); 4] = [
        (
            "idx_rggc_erasure",
            "rbac_gateway_group_changes",
            "USING gin (erasure_keys)",
        ),
        (
            "idx_rgal_erasure",
            "rbac_gateway_alerts",
            "USING gin (erasure_keys)",
        ),
        (
            "idx_rggc_unkeyed",
            "rbac_gateway_group_changes",
            "(id) WHERE erasure_keys IS NULL",
        ),
        (
            "idx_rgal_unkeyed",
            "rbac_gateway_alerts",
            "(key) WHERE erasure_keys IS NULL",
        ),
    ];
    for (index, table, columns) in INDEXES {
        ensure_index(conn, index, table, columns).await?;
    }
    for backfill in [
        "UPDATE rbac_gateway_group_changes g \
            SET erasure_keys = rbac_gateway_erasure_keys_of(g.what, g.actor) \
          WHERE g.id OPERATOR(pg_catalog.=) ANY (ARRAY(SELECT u.id FROM rbac_gateway_group_changes u \
                                                  WHERE u.erasure_keys IS NULL LIMIT 5000))",
        "UPDATE rbac_gateway_alerts a \
            SET erasure_keys = rbac_gateway_erasure_keys_of(a.text, NULL::text) \
                OPERATOR(pg_catalog.||) coalesce((SELECT ARRAY[b.user_id] FROM rbac_break_glass_sessions b \
                          WHERE a.key OPERATOR(pg_catalog.~~) 'break\\_glass:%' \
                            AND b.id OPERATOR(pg_catalog.=) pg_catalog.substr(a.key, 13)), '{}') \
          WHERE a.key OPERATOR(pg_catalog.=) ANY (ARRAY(SELECT u.key FROM rbac_gateway_alerts u \
                                                   WHERE u.erasure_keys IS NULL LIMIT 5000))",
    ] {
        let mut waited = 0;
        loop {
            let done = match sqlx::Executor::execute(&mut *conn, sqlx::raw_sql(backfill)).await {
                Ok(done) => done,
                // A row another transaction holds (the alert pass's, an erasure): its lock is
                // not waited for past the bound; the batch is tried again.
                Err(e) if lock_timeout(&e) && waited < MIGRATE_ATTEMPTS => {
                    waited += 1;
                    tokio::time::sleep(pause(waited)).await;
                    continue;
                }
                Err(e) => return Err(e),
            };
            if done.rows_affected() == 0 {
                break;
            }
            tracing::info!(rows = done.rows_affected(), "migrate: erasure keys given to rows written before migration 0025");
        }
    }
    // `serve`'s login compares the schema's migrations with its binary's ([`schema_state`]):
    // granted here as well as in deploy/gateway-grants.sql, so a fleet whose operators do not
    // run that file again at each upgrade still reads them. A role that may not grant it (not
    // the table's owner) gets PostgreSQL's warning, not an error.
    sqlx::Executor::execute(&mut *conn, sqlx::raw_sql(SERVE_READS_MIGRATIONS)).await?;
    Ok(())
}

/// [`super::schema::restrict_functions`], logged: right after the migrations, before the
/// longer steps of [`after_migrations`], so that a function a migration re-created is not left
/// without the setting by a step that fails after it.
async fn restrict_functions(conn: &mut sqlx::PgConnection) -> Result<(), sqlx::Error> {
    // Migration 0036 said this as a notice, which the session no longer receives
    // ([`before_migrating`]): said at each run instead, until the server is upgraded.
    if !super::schema::restricts_relation_kinds(&mut *conn).await? {
        tracing::warn!("migrate: this PostgreSQL has no restrict_nonsystem_relation_kind (it came with the minor releases of August 2024: 17, 16.4, 15.8, 14.13, 13.16, 12.20): a view in place of a table of Console's runs as the gateway's login, unseen until the alert pass raises an alert; install the server's latest minor release, then run `rbac-gateway migrate` again");
    }
    let (restricted, left) = super::schema::restrict_functions(conn).await?;
    if !restricted.is_empty() {
        tracing::info!(functions = %restricted.join(", "), "migrate: these functions now refuse a view or foreign table in a table's place (restrict_nonsystem_relation_kind)");
    }
    for (function, owner) in left {
        tracing::warn!(function = %function, owner = %owner, concat!("migrate: this function of the gateway's still opens a view or foreign table in a table's place, and this role may not change it: run `rbac-gateway migrate` as its owner, or `ALTER ROUTINE ... SET restrict_nonsystem_relation_kind = '", super::pool::restricted_kinds!(), "'` as that role"));
    }
    Ok(())
}

/// The migrating session opens no view or foreign table but PostgreSQL's own where the server
/// can refuse them (`restrict_nonsystem_relation_kind`, `pool::restricted_kinds!`): a view
/// Console's role puts in place of a table a migration or backfill reads fails instead of
/// running its code as the migrating role.
const RESTRICT_SESSION: &str = concat!(
    "SELECT pg_catalog.set_config('restrict_nonsystem_relation_kind', '",
    super::pool::restricted_kinds!(),
    "', false) WHERE pg_catalog.current_setting('restrict_nonsystem_relation_kind', true) IS NOT NULL"
);

/// The grant of `_sqlx_migrations`' columns that [`schema_state`] reads to the serve role,
/// where that role exists.
const SERVE_READS_MIGRATIONS: &str = "DO $$ BEGIN \
    IF EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname OPERATOR(pg_catalog.=) 'rbac_gateway_serve') THEN \
        GRANT SELECT (version, success, checksum) ON _sqlx_migrations TO rbac_gateway_serve; \
    END IF; END $$";

/// Refuses to migrate a schema other than the one the tables are in: where the role's own
/// `search_path` finds `_sqlx_migrations` in another schema than `RBAC_GATEWAY_DATABASE_SCHEMA`
/// (default `public`), `migrate` would make a second, empty set of tables there and `serve`
/// would read them.
async fn same_schema(conn: &mut sqlx::PgConnection) -> Result<(), sqlx::Error> {
    let found: Option<String> = sqlx::query_scalar(
        "SELECT n.nspname::text FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n \
             ON n.oid OPERATOR(pg_catalog.=) c.relnamespace \
          WHERE c.oid OPERATOR(pg_catalog.=) pg_catalog.to_regclass('_sqlx_migrations')::oid",
    )
    .persistent(false)
    .fetch_optional(&mut *conn)
    .await?;
    match found {
        Some(found) if found != super::db::schema() => Err(sqlx::Error::Configuration(
            format!(
                "the gateway's tables are in schema {found} (its _sqlx_migrations), not {}: set RBAC_GATEWAY_DATABASE_SCHEMA={found}",
                super::db::schema()
            )
            .into(),
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::SchemaState;

    #[test]
    fn a_schema_lacks_the_versions_not_recorded_and_names_failed_other_and_newer_ones() {
        let (a, b) = (b"a".as_slice(), b"b".as_slice());
        let known = [(1, a), (2, a), (3, a), (4, a), (6, a)];
        let applied = [
            (1, true, a.to_vec()),
            (2, false, a.to_vec()),
            (6, true, b.to_vec()),
            (5, true, a.to_vec()),
            (7, false, a.to_vec()),
        ];
        let state = SchemaState::compare(known, &applied);
        assert_eq!(
            state,
            SchemaState {
                missing: vec![3, 4],
                failed: vec![2, 7],
                differs: vec![6],
                newer: vec![5],
            }
        );
        let lines = state.blocking();
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert!(lines[0].contains("0003, 0004 not applied"), "{lines:?}");
        assert!(
            lines[1].contains("0002, 0007 recorded as failed"),
            "{lines:?}"
        );
        assert!(
            lines[2].contains("0006 applied with another text"),
            "{lines:?}"
        );
        assert!(state
            .ahead()
            .unwrap()
            .contains("0005 applied by a newer release"));
        let current = SchemaState::compare(
            [(1, a), (2, b)],
            &[(1, true, a.to_vec()), (2, true, b.to_vec())],
        );
        assert_eq!((current.blocking(), current.ahead()), (vec![], None));
        let never = SchemaState::compare((1..=7).map(|v| (v, a)), &[]);
        assert!(never.blocking()[0].contains("0001, 0002, 0003, 0004, 0005 and 2 more"));
    }
}
