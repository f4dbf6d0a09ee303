//! The alert pass's statements (RV-12; `jobs/alerts.rs` decides what to raise and delivers it):
//! one [`AlertPass`] is one transaction under the alert job's advisory transaction lock, and
//! every statement of the pass runs in it, in the order the job calls them: the alerts of
//! break-glass sessions and deploy windows (their text written by the statement), the changes
//! the triggers recorded in `rbac_gateway_group_changes` (migration 0007) and the alert of each
//! transaction, the daily snapshot of what the break-glass group grants, and the delivery state
//! of each alert (`rbac_gateway_alerts`). Every statement is unnamed and bounded by the pass's
//! limit; the pass ends with [`AlertPass::commit`] (dropped, it is rolled back).

use std::time::Duration;

use crate::stores::db::{Bounded, Db, Tx};

/// The advisory lock key of the alert job.
const ALERT_LOCK_KEY: i64 = 0x7262_6163_616c_7274;

/// A change the triggers recorded: (txid, what, db user, actor, application, client address,
/// when, deploy window).
pub type Change = (
    String,
    String,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    String,
    Option<String>,
);

/// What the break-glass group grants: roles after inheritance, permissions, permanent members.
pub type Grants = (Vec<String>, Vec<String>, Vec<String>);

/// The last snapshot of what the break-glass group grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub taken_at: chrono::DateTime<chrono::Utc>,
    pub grants: Grants,
    /// Taken a day ago or more: a new one is due.
    pub due: bool,
}

/// What an alert pass found wrong with the schema, and the alert that names it: code of another
/// role's that would run as the gateway on Console's tables
/// ([`AlertPass::raise_console_code`]), triggers of the gateway's that do not fire
/// ([`AlertPass::raise_silent_triggers`]), or Console's tables not readable
/// ([`AlertPass::raise_unread`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// The alert that names it: its kind (`console_code`, `silent_triggers`,
    /// `console_unread`), a digest, of the findings (Console's code, the database's error), or
    /// of each silent trigger with its state (its table's oid, its `pg_trigger` row's version:
    /// a trigger disabled again, or its table made again, is a new alert), and the UTC day
    /// (`finding_key`).
    pub key: String,
    /// The findings, joined.
    pub found: String,
    /// Whether this pass recorded the alert (false: an earlier pass, of this process or
    /// another, did).
    pub recorded: bool,
}

/// What one look of an alert pass saw.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub enum Look {
    /// The pass did not look (the function it needs is missing, or not this role's to run; the
    /// schema is another release's).
    #[default]
    NotLooked,
    /// Nothing is wrong.
    Nothing,
    /// This is.
    Found(Finding),
}

/// What the pass does with an error met in a step of its reads of Console's tables
/// ([`AlertPass::step`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Met {
    /// It stands until someone acts: a table dropped or renamed (42P01), a privilege taken
    /// (42501), a column gone or of another type (class 42, class 22, a value the gateway
    /// cannot decode), Console's code found under the lock. The step is undone, and the refusal
    /// alerted ([`AlertPass::raise_unread`]).
    Stands,
    /// It passes: a lock waited on past the pass's `lock_timeout` (55P03: [`AlertPass::begin`]),
    /// a statement the server cancelled (57014), a lost conflict (class 40). The step is undone
    /// and said in the log, once while it lasts; the next pass tries again.
    Passes,
    /// The connection, the client or the server failed (a broken connection, a timeout on the
    /// client's side, class 53, 58, XX): the pass fails, and the next one tries again.
    Fails,
}

impl Met {
    pub fn of(e: &sqlx::Error) -> Met {
        use sqlx::Error::{ColumnDecode, ColumnNotFound, Database, Decode, TypeNotFound};
        match e {
            Database(d) if !crate::stores::db::is_connection_error(e) => {
                let code = d.code().unwrap_or_default();
                if ["57014", "55P03"].contains(&&*code) || code.starts_with("40") {
                    Met::Passes
                } else if ["42", "22", "21", "0A"].iter().any(|c| code.starts_with(c))
                    || code == "55000"
                {
                    Met::Stands
                } else {
                    Met::Fails
                }
            }
            ColumnDecode { .. } | Decode(_) | TypeNotFound { .. } | ColumnNotFound(_) => {
                Met::Stands
            }
            _ => Met::Fails,
        }
    }
}

/// One alert pass: its transaction, holding the alert job's advisory lock.
pub struct AlertPass {
    tx: Tx,
    limit: Duration,
    /// When the pass's transaction began, by the database's clock.
    pub at: chrono::DateTime<chrono::Utc>,
}

/// A finding a process saw, then saw gone: its key, and when the pass that saw it gone began
/// (the database's clock). Found again, its alert is raised again unless it was raised since
/// (by another replica that saw it come back first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GoneAt {
    pub key: String,
    pub at: chrono::DateTime<chrono::Utc>,
}

impl AlertPass {
    /// Opens the pass's transaction and takes the alert job's lock in it; None when another
    /// replica holds it (the transaction is then rolled back). In the same statement, the
    /// transaction's `lock_timeout` is set to half the limit: a lock Console holds on its
    /// tables (a migration, a session idle in a transaction after DDL) is answered by the
    /// server (55P03, [`Met::Passes`]) before the client gives up on the pass at the limit.
    /// And `jit` is off for it: its reads of the catalogue (`schema::SILENT_ROWS`) are planned
    /// from statistics, and where those are missing (a new database, autovacuum behind
    /// Console's DDL) the estimate of thousands of partitions passed `jit_above_cost`, and the
    /// server compiled, each pass, a statement that runs in milliseconds.
    pub async fn begin(pool: &Db, limit: Duration) -> Result<Option<AlertPass>, sqlx::Error> {
        let mut tx = pool.begin().bounded(limit).await?;
        let (locked, at): (bool, chrono::DateTime<chrono::Utc>) = sqlx::query_as(
            "SELECT pg_catalog.pg_try_advisory_xact_lock($1), pg_catalog.now() \
              FROM (SELECT pg_catalog.set_config('lock_timeout', $2, true), \
                           pg_catalog.set_config('jit', 'off', true)) s",
        )
        .persistent(false)
        .bind(ALERT_LOCK_KEY)
        .bind(format!("{}ms", (limit.as_millis() / 2).max(1)))
        .fetch_one(&mut *tx)
        .bounded(limit)
        .await?;
        Ok(locked.then_some(AlertPass { tx, limit, at }))
    }

    /// Records an alert for each break-glass session that is active, or was active and ended
    /// within a day of being granted, with the session as it alerts it (its admin, its start,
    /// its end: a revocation's time where it was revoked first, `break_glass_ended!`); and
    /// raises again, undelivered, the alert of a session changed since (another admin, another
    /// start, a later end: migration 0033), which counts again once that is delivered
    /// (`break_glass_alerted!`). A session alerted as ended and then restored (its revocation
    /// cleared) has a later end than its alert told, so it is alerted again as live before it
    /// counts; and so is one whose alert says it ended (the text's last sentence, which no
    /// justification can follow) and that is live now, as where the previous release recorded
    /// the expiry as the end such an alert told (migration 0039 mends only those of sessions
    /// still revoked). One row a session id, whatever Console's rows hold twice (an admin's id
    /// or a session's, their keys dropped: a review; two rows of one key failed the statement
    /// and stopped every break-glass alert), ids compared under the database's default
    /// collation (migration 0043). The keys recorded or raised again now.
    pub async fn raise_break_glass_sessions(&mut self) -> Result<Vec<String>, sqlx::Error> {
        sqlx::query_scalar(concat!(
            "INSERT INTO rbac_gateway_alerts (key, text, erasure_keys, session_user_id, session_granted_at_utc, session_ends_at_utc) \
             SELECT DISTINCT ON (('break_glass:' || b.id) COLLATE pg_catalog.\"default\") 'break_glass:' || b.id, \
                    pg_catalog.format('Break-glass session opened for %s (%s). Justification: %s. Expires %s UTC.%s', \
                           a.email, b.user_id, b.justification, pg_catalog.to_char(",
            crate::break_glass_end!(),
            " AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS'), \
                           CASE WHEN ",
            crate::break_glass_ended!(),
            " <= pg_catalog.now() THEN ' It ended before this alert was raised.' ELSE '' END), \
                    ARRAY[b.user_id], b.user_id, b.granted_at_utc, ",
            crate::break_glass_ended!(),
            " \
             FROM rbac_break_glass_sessions b JOIN admins a ON a.id = b.user_id COLLATE pg_catalog.\"default\" \
             WHERE (b.revoked_at_utc IS NULL AND ",
            crate::break_glass_end!(),
            " > pg_catalog.now()) \
                OR (b.granted_at_utc > pg_catalog.now() - interval '1 day' AND b.expires_at_utc > b.granted_at_utc \
                    AND (b.revoked_at_utc IS NULL OR b.revoked_at_utc > b.granted_at_utc)) \
             ORDER BY ('break_glass:' || b.id) COLLATE pg_catalog.\"default\", b.user_id COLLATE pg_catalog.\"default\", a.email COLLATE pg_catalog.\"default\" \
             ON CONFLICT (key) DO UPDATE SET \
                 text = 'Break-glass session changed after its alert; it counts again once this one is delivered. ' \
                        || EXCLUDED.text, \
                 erasure_keys = EXCLUDED.erasure_keys, session_user_id = EXCLUDED.session_user_id, \
                 session_granted_at_utc = EXCLUDED.session_granted_at_utc, session_ends_at_utc = EXCLUDED.session_ends_at_utc, \
                 delivered_at_utc = NULL, attempts = 0, next_attempt_utc = pg_catalog.now(), last_error = NULL \
               WHERE rbac_gateway_alerts.session_user_id IS DISTINCT FROM EXCLUDED.session_user_id \
                  OR rbac_gateway_alerts.session_granted_at_utc IS DISTINCT FROM EXCLUDED.session_granted_at_utc \
                  OR rbac_gateway_alerts.session_ends_at_utc < EXCLUDED.session_ends_at_utc \
                  OR rbac_gateway_alerts.session_ends_at_utc IS NULL \
                  OR (rbac_gateway_alerts.text LIKE '% It ended before this alert was raised.' \
                      AND EXCLUDED.session_ends_at_utc > pg_catalog.now()) \
             RETURNING key"
        )).persistent(false)
        .fetch_all(&mut *self.tx)
        .bounded(self.limit)
        .await
    }

    /// What of another role's would run as the gateway where it reads or writes Console's tables
    /// (`rbac_gateway_console_code`, migration 0034, over `schema::CONSOLE_TABLES`), with the
    /// alert that names it, recorded now or before ([`Finding`]). [`Look::NotLooked`] where the
    /// function is missing (a database `migrate` has not brought to 0034) or not this role's
    /// to run. Read before anything of Console's, in the pass's transaction; where nothing is
    /// found, Console's tables stay locked (ACCESS SHARE) until the pass ends. `gone`: as
    /// [`AlertPass::raise_silent_triggers`]'s (the same code planted again).
    pub async fn raise_console_code(&mut self, gone: Option<&GoneAt>) -> Result<Look, sqlx::Error> {
        use crate::stores::schema::{
            console_columns, CONSOLE_CODE, CONSOLE_CODE_RUNNABLE, CONSOLE_TABLES, CONSOLE_WRITTEN,
        };
        let tables: Vec<&str> = CONSOLE_TABLES.iter().map(|(t, _)| *t).collect();
        let runnable: Option<bool> = sqlx::query_scalar(CONSOLE_CODE_RUNNABLE)
            .persistent(false)
            .fetch_optional(&mut *self.tx)
            .bounded(self.limit)
            .await?;
        if runnable != Some(true) {
            return Ok(Look::NotLooked);
        }
        let findings: Vec<String> = sqlx::query_scalar(CONSOLE_CODE)
            .persistent(false)
            .bind(crate::stores::db::schema())
            .bind(&tables)
            .bind(console_columns(&tables))
            .bind(CONSOLE_WRITTEN)
            .fetch_all(&mut *self.tx)
            .bounded(self.limit)
            .await?;
        if findings.is_empty() {
            // Nothing found: the tables are locked for the rest of the pass (and checked again
            // under the lock), so none changes shape before the pass has read it.
            crate::stores::schema::plain(&mut self.tx, &tables, self.limit).await?;
            return Ok(Look::Nothing);
        }
        let found = findings.join("; ");
        let text = format!(
            "Console's tables carry code that would run as the gateway's roles where the gateway reads or writes them; the gateway's sweep and alert pass read none of them until it is gone (alerted again each day while it stands, and again when it comes back after it was gone), and its lookups may run it: {found}"
        );
        let key = finding_key("console_code", &found);
        self.raise_finding(key, found, &text, gone).await
    }

    /// The gateway's triggers that do not fire as `migrate` made them
    /// (`schema::silent_trigger_states`: dropped with a table Console's migration made again,
    /// disabled or changed by the owner of Console's tables), with the alert that names them.
    /// The caller asks only of a schema whose migrations are exactly this binary's: another
    /// release's has other triggers. `gone`: the key of this kind's finding that the caller saw,
    /// then saw gone; found again, its alert is raised again, undelivered (a trigger dropped
    /// again after a fix has the state it had: a missing trigger has no row).
    pub async fn raise_silent_triggers(
        &mut self,
        gone: Option<&GoneAt>,
    ) -> Result<Look, sqlx::Error> {
        let silent = crate::stores::schema::silent_trigger_states(&mut *self.tx)
            .bounded(self.limit)
            .await?;
        if silent.is_empty() {
            return Ok(Look::Nothing);
        }
        // Sorted here, by bytes: the server's order follows its collation, which an upgrade
        // of the C library may change.
        let mut states: Vec<String> = silent
            .iter()
            .map(|(t, state)| format!("{t} {state}"))
            .collect();
        states.sort_unstable();
        let key = finding_key("silent_triggers", &states.join(", "));
        let found: Vec<String> = silent.into_iter().map(|(trigger, _)| trigger).collect();
        let found = found.join(", ");
        let text = format!(
            "Triggers of the gateway's do not fire as `rbac-gateway migrate` made them: {found}. Until they do, what each records or refuses goes unrecorded or unrefused: without rbac_gateway_change, a change to a session, an admin, a ticket grant, a break-glass session, a group or a role reaches the gateway's caches only when its entry expires (--cache-ttl); without rbac_gateway_break_glass, a change to the break-glass group is alerted only by the daily comparison; without rbac_gateway_erase_admin, an admin's erasure leaves the gateway's rows; without an append-only guard, access_audit_events or the mapping store may be changed. `rbac-gateway migrate`, run again as the role that first ran it (acting as the table's owner), makes them again; `rbac-gateway check --database-url` gives each one's statements. Alerted again each day while it stands, and again when it comes back after it was gone."
        );
        self.raise_finding(key, found, &text, gone).await
    }

    /// Marks where a step of the pass's reads of Console's tables begins (a savepoint): an
    /// error met in the step is undone to here ([`AlertPass::undo_step`]), and what the pass
    /// recorded before (a silent trigger's alert, another step's alerts) and the deliveries
    /// after stay.
    pub async fn step(&mut self) -> Result<(), sqlx::Error> {
        self.run("SAVEPOINT consoles_tables").await
    }

    /// Undoes the step begun last ([`AlertPass::step`]) after an error that left the
    /// connection answering ([`Met`]).
    pub async fn undo_step(&mut self) -> Result<(), sqlx::Error> {
        self.run("ROLLBACK TO SAVEPOINT consoles_tables").await
    }

    async fn run(&mut self, sql: &'static str) -> Result<(), sqlx::Error> {
        sqlx::query(sql)
            .persistent(false)
            .execute(&mut *self.tx)
            .bounded(self.limit)
            .await
            .map(drop)
    }

    /// Records the alert that names the refusals of Console's tables met in this pass (kind
    /// `console_unread`, a digest of what the database said, the UTC day): until the tables
    /// can be read, what the refused steps alert (a new break-glass session, a change to the
    /// break-glass group, a deploy window) goes unalerted, while alerts already recorded are
    /// still delivered. `gone`: as [`AlertPass::raise_silent_triggers`]'s.
    pub async fn raise_unread(
        &mut self,
        refused: &[String],
        gone: Option<&GoneAt>,
    ) -> Result<Look, sqlx::Error> {
        let found = refused.join("; ");
        let text = format!(
            "The database refused the alert pass's read of Console's tables: {found}. Until it answers, what that read alerts goes unalerted (a new break-glass session, a change to the break-glass group, a deploy window; where --break-glass-requires-alert is on, a new break-glass session's roles do not count); alerts already recorded are still delivered. `rbac-gateway check --database-url` names what the gateway needs of Console's tables. Alerted again each day while it stands, and again when it comes back after it was gone."
        );
        let key = finding_key("console_unread", &found);
        self.raise_finding(key, found, &text, gone).await
    }

    /// Records the alert `key` of a finding unless it exists; where it exists and is `gone`
    /// (this process saw it, then saw it gone: it came back), raises it again, undelivered,
    /// stamped (`raised_at_utc`, migration 0037), unless it was raised since the pass that saw
    /// it gone began (another replica that saw it gone raised it again first) or still waits
    /// for its delivery (raised again, its backoff would start over).
    async fn raise_finding(
        &mut self,
        key: String,
        found: String,
        text: &str,
        gone: Option<&GoneAt>,
    ) -> Result<Look, sqlx::Error> {
        let mut recorded = self.raise(&key, text).await?;
        if let Some(gone) = gone.filter(|g| !recorded && g.key == key) {
            recorded = sqlx::query(
                "UPDATE rbac_gateway_alerts SET text = $2, delivered_at_utc = NULL, attempts = 0, \
                 next_attempt_utc = pg_catalog.now(), last_error = NULL, raised_at_utc = pg_catalog.now() \
                 WHERE key = $1 AND delivered_at_utc IS NOT NULL \
                   AND coalesce(raised_at_utc, created_at_utc) < $3",
            )
            .persistent(false)
            .bind(&key)
            .bind(text)
            .bind(gone.at)
            .execute(&mut *self.tx)
            .bounded(self.limit)
            .await?
            .rows_affected()
                == 1;
        }
        Ok(Look::Found(Finding {
            key,
            found,
            recorded,
        }))
    }

    /// Records an alert for each deploy window declared in the last day; the keys recorded now.
    pub async fn raise_deploy_windows(&mut self) -> Result<Vec<String>, sqlx::Error> {
        sqlx::query_scalar(
            "INSERT INTO rbac_gateway_alerts (key, text, erasure_keys) \
             SELECT 'deploy_window:' || d.id::text, \
                    pg_catalog.format('Deploy window declared by %s: %s, from %s to %s UTC. Break-glass group changes in it are alerted as during deploy.', \
                           d.declared_by, d.reason, \
                           pg_catalog.to_char(d.starts_at_utc AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS'), \
                           pg_catalog.to_char(d.ends_at_utc AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS')), \
                    '{}'::text[] \
             FROM rbac_gateway_deploy_windows d WHERE d.created_at_utc > pg_catalog.now() - interval '1 day' \
             ON CONFLICT (key) DO NOTHING RETURNING key",
        ).persistent(false)
        .fetch_all(&mut *self.tx)
        .bounded(self.limit)
        .await
    }

    /// Records the alert `key` with `text` unless it exists; true when this call recorded it.
    pub async fn raise(&mut self, key: &str, text: &str) -> Result<bool, sqlx::Error> {
        let inserted = sqlx::query(
            "INSERT INTO rbac_gateway_alerts (key, text, erasure_keys) VALUES ($1, $2, '{}') ON CONFLICT (key) DO NOTHING",
        ).persistent(false)
        .bind(key)
        .bind(text)
        .execute(&mut *self.tx)
        .bounded(self.limit)
        .await?
        .rows_affected();
        Ok(inserted == 1)
    }

    /// The recorded changes no alert names yet, whole transactions only (those of the first 100
    /// rows), in the order they were recorded.
    pub async fn pending_changes(&mut self) -> Result<Vec<Change>, sqlx::Error> {
        // Whole transactions only: a transaction's rows are all visible once it committed.
        sqlx::query_as(
            "SELECT txid::text, what, db_user, actor, application, client_addr, \
                    pg_catalog.to_char(changed_at_utc AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.MS'), deploy_window \
             FROM rbac_gateway_group_changes \
             WHERE alert_key IS NULL AND txid IN ( \
                 SELECT txid FROM rbac_gateway_group_changes WHERE alert_key IS NULL ORDER BY id LIMIT 100) \
             ORDER BY id",
        ).persistent(false)
        .fetch_all(&mut *self.tx)
        .bounded(self.limit)
        .await
    }

    /// The roles the break-glass group is given directly, by name.
    pub async fn break_glass_roles(&mut self) -> Result<Vec<String>, sqlx::Error> {
        sqlx::query_scalar(
            "SELECT r.name FROM rbac_group_roles gr JOIN rbac_groups g ON g.id = gr.group_id \
             JOIN rbac_roles r ON r.id = gr.role_id WHERE g.name = 'break-glass' ORDER BY 1",
        )
        .persistent(false)
        .fetch_all(&mut *self.tx)
        .bounded(self.limit)
        .await
    }

    /// Marks the changes of transaction `txid` as alerted by `key`, and gives the alert their
    /// erasure keys (the admins they name and their actors, migration 0025), or none (NULL: its
    /// text is searched) where one of them has none.
    pub async fn mark_alerted(&mut self, key: &str, txid: &str) -> Result<(), sqlx::Error> {
        sqlx::query(
            "WITH marked AS (UPDATE rbac_gateway_group_changes SET alert_key = $1 \
                              WHERE txid = $2::xid8 AND alert_key IS NULL RETURNING erasure_keys) \
             UPDATE rbac_gateway_alerts a SET erasure_keys = CASE \
                 WHEN a.erasure_keys IS NULL OR EXISTS (SELECT FROM marked WHERE erasure_keys IS NULL) THEN NULL \
                 ELSE (SELECT coalesce(pg_catalog.array_agg(DISTINCT k), '{}') FROM ( \
                           SELECT pg_catalog.unnest(a.erasure_keys) AS k \
                           UNION ALL SELECT pg_catalog.unnest(m.erasure_keys) FROM marked m) u) END \
             WHERE a.key = $1",
        ).persistent(false)
        .bind(key)
        .bind(txid)
        .execute(&mut *self.tx)
        .bounded(self.limit)
        .await?;
        Ok(())
    }

    /// The latest snapshot of what the break-glass group grants, if any.
    pub async fn last_snapshot(&mut self) -> Result<Option<Snapshot>, sqlx::Error> {
        type Last = (
            chrono::DateTime<chrono::Utc>,
            Vec<String>,
            Vec<String>,
            Vec<String>,
            bool,
        );
        let last: Option<Last> = sqlx::query_as(
            "SELECT taken_at_utc, roles, permissions, members, taken_at_utc <= pg_catalog.now() - interval '1 day' \
             FROM rbac_gateway_break_glass_snapshots ORDER BY taken_at_utc DESC LIMIT 1",
        ).persistent(false)
        .fetch_optional(&mut *self.tx)
        .bounded(self.limit)
        .await?;
        Ok(
            last.map(|(taken_at, roles, permissions, members, due)| Snapshot {
                taken_at,
                grants: (roles, permissions, members),
                due,
            }),
        )
    }

    /// What the break-glass group grants now.
    pub async fn break_glass_grants(&mut self) -> Result<Grants, sqlx::Error> {
        sqlx::query_as(
            // The break-glass group's roles after inheritance, as rbac_gateway_break_glass_roles()
            // reads them, written out: a call of it by name is made ambiguous (an error, and the
            // whole pass with it) by an overload with defaulted arguments that Console's role
            // may add where it may create (`check` names such a function).
            "WITH RECURSIVE e(role_id) AS ( \
                 SELECT gr.role_id FROM rbac_group_roles gr JOIN rbac_groups g ON g.id = gr.group_id \
                  WHERE g.name = 'break-glass' \
                 UNION \
                 SELECT ri.parent_role_id FROM rbac_role_inheritance ri JOIN e ON ri.child_role_id = e.role_id) \
             SELECT \
               COALESCE((SELECT pg_catalog.array_agg(r.name ORDER BY r.name COLLATE pg_catalog.\"default\") FROM rbac_roles r \
                         WHERE r.id IN (SELECT role_id FROM e)), '{}'), \
               COALESCE((SELECT pg_catalog.array_agg(DISTINCT p.name COLLATE pg_catalog.\"default\" \
                         ORDER BY p.name COLLATE pg_catalog.\"default\") FROM rbac_role_permissions rp \
                         JOIN rbac_permissions p ON p.id = rp.permission_id \
                         WHERE rp.role_id IN (SELECT role_id FROM e)), '{}'), \
               COALESCE((SELECT pg_catalog.array_agg(ug.user_id ORDER BY ug.user_id COLLATE pg_catalog.\"default\") FROM rbac_user_groups ug \
                         JOIN rbac_groups g ON g.id = ug.group_id WHERE g.name = 'break-glass'), '{}')",
        ).persistent(false)
        .fetch_one(&mut *self.tx)
        .bounded(self.limit)
        .await
    }

    /// How many changes the triggers recorded after `taken`.
    pub async fn changes_since(
        &mut self,
        taken: chrono::DateTime<chrono::Utc>,
    ) -> Result<i64, sqlx::Error> {
        sqlx::query_scalar(
            "SELECT pg_catalog.count(*) FROM rbac_gateway_group_changes WHERE changed_at_utc > $1",
        )
        .persistent(false)
        .bind(taken)
        .fetch_one(&mut *self.tx)
        .bounded(self.limit)
        .await
    }

    /// Stores `grants` as the snapshot taken now (once per transaction time).
    pub async fn take_snapshot(&mut self, grants: &Grants) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO rbac_gateway_break_glass_snapshots (roles, permissions, members) VALUES ($1, $2, $3) \
             ON CONFLICT (taken_at_utc) DO NOTHING",
        ).persistent(false)
        .bind(&grants.0)
        .bind(&grants.1)
        .bind(&grants.2)
        .execute(&mut *self.tx)
        .bounded(self.limit)
        .await?;
        Ok(())
    }

    /// The alerts due for delivery, (key, text), oldest first, at most 50, locked for the pass
    /// (`FOR UPDATE SKIP LOCKED`): one whose row another transaction holds (Console's erasure
    /// of its admin rewriting its text, `rbac_gateway_erase_admin`) is left for a later pass,
    /// so the pass never waits on it after the webhook was called (a wait past the lock
    /// timeout would fail the pass and deliver the alert again, with the admin it was erasing).
    pub async fn due(&mut self) -> Result<Vec<(String, String)>, sqlx::Error> {
        sqlx::query_as(
            "SELECT key, text FROM rbac_gateway_alerts \
             WHERE delivered_at_utc IS NULL AND next_attempt_utc <= pg_catalog.now() ORDER BY created_at_utc LIMIT 50 \
             FOR UPDATE SKIP LOCKED",
        ).persistent(false)
        .fetch_all(&mut *self.tx)
        .bounded(self.limit)
        .await
    }

    /// Marks `key` delivered, and has the change feed re-resolve the admin of its break-glass
    /// session (if it is one) on every replica, which `--break-glass-requires-alert` waits for.
    pub async fn delivered(&mut self, key: &str) -> Result<(), sqlx::Error> {
        sqlx::query(
            "UPDATE rbac_gateway_alerts SET delivered_at_utc = pg_catalog.now(), attempts = attempts + 1 WHERE key = $1",
        ).persistent(false)
        .bind(key)
        .execute(&mut *self.tx)
        .bounded(self.limit)
        .await?;
        // The session's admin is re-resolved at once on every replica (the change
        // feed), which --break-glass-requires-alert waits for. The admin is the one the alert
        // recorded (migration 0033): nothing of Console's is read here, as this runs in a pass
        // that may have found Console's tables unfit to read (migration 0034).
        sqlx::query(
            "INSERT INTO rbac_change_log (table_name, admin_id) \
             SELECT 'rbac_gateway_alerts', a.session_user_id FROM rbac_gateway_alerts a \
             WHERE a.key = $1 AND a.key LIKE 'break\\_glass:%' AND a.session_user_id IS NOT NULL",
        )
        .persistent(false)
        .bind(key)
        .execute(&mut *self.tx)
        .bounded(self.limit)
        .await?;
        sqlx::query("SELECT pg_catalog.pg_notify('rbac_gateway_changes', '')")
            .persistent(false)
            .execute(&mut *self.tx)
            .bounded(self.limit)
            .await?;
        Ok(())
    }

    /// Counts a failed delivery of `key` with its `error`, and puts the next attempt off:
    /// 1, 2, 4 ... seconds, at most 5 minutes between attempts.
    pub async fn delivery_failed(&mut self, key: &str, error: &str) -> Result<(), sqlx::Error> {
        sqlx::query(
            "UPDATE rbac_gateway_alerts SET attempts = attempts + 1, last_error = $2, \
             next_attempt_utc = pg_catalog.now() + pg_catalog.make_interval(secs => least(300, pg_catalog.power(2, attempts)::int)) WHERE key = $1",
        ).persistent(false)
        .bind(key)
        .bind(error)
        .execute(&mut *self.tx)
        .bounded(self.limit)
        .await?;
        Ok(())
    }

    /// Commits the pass.
    pub async fn commit(self) -> Result<(), sqlx::Error> {
        self.tx.commit().bounded(self.limit).await
    }
}

/// The key of a finding's alert: its kind, the first 16 hex digits of the SHA-256 of `of`, and
/// the UTC day. A finding that stands is alerted again each day; one found again after it was
/// gone, in the same state (a trigger dropped again: a missing row has no version; the same
/// code planted again), is raised again at once by a process that saw it gone ([`GoneAt`]),
/// and otherwise alerted by the next day at the latest
/// (no state of its own is kept in the database, and a count of the alerts of a kind would read
/// the whole table).
fn finding_key(kind: &str, of: &str) -> String {
    let digest = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(of.as_bytes()));
    let day = chrono::Utc::now().format("%Y-%m-%d");
    format!("{kind}:{}:{day}", &digest[..16])
}

#[cfg(test)]
mod tests {
    /// A finding's key: its kind, the digest of what was found, and the UTC day, so one that
    /// stands is alerted again each day.
    #[test]
    fn a_findings_key_is_its_kind_digest_and_day() {
        let today = || chrono::Utc::now().format("%Y-%m-%d").to_string();
        // Read before and after: around midnight the day may turn between them.
        let (before, key, after) = (
            today(),
            super::finding_key("silent_triggers", "rbac_gateway_change on admins 1:"),
            today(),
        );
        let parts: Vec<&str> = key.split(':').collect();
        assert_eq!(parts.len(), 3, "{key}");
        assert_eq!(parts[0], "silent_triggers");
        assert_eq!(parts[1].len(), 16);
        assert!(parts[2] == before || parts[2] == after, "{key}");
        assert_ne!(
            key,
            super::finding_key("silent_triggers", "rbac_gateway_change on admins 2:")
        );
    }
}
