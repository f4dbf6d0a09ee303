//! What the database's schema holds, for `check --database-url` (which decides what is missing):
//! the tables a role may not read ([`unreadable_tables`]) or holds no privilege on at all
//! ([`invisible_tables`]), the columns of the gateway's schema ([`columns`]), whether a function
//! exists ([`function_exists`]) and runs as its owner ([`runs_as_owner_pinned`]), the gateway's
//! triggers (the change feed's among them) that are missing, not as migrate made them, or do not
//! fire ([`silent_triggers`]); and the trust
//! boundary, as Supabase's splinter lints it: the gateway's functions whose `search_path` is not
//! pinned ([`unpinned_functions`]) or that open a view in a table's place
//! ([`unrestricted_functions`]), the functions PUBLIC may run that it should not
//! ([`public_functions`]), the functions and operators that stand beside a built-in the gateway
//! calls ([`shadows`]), the functions under the gateway's names that another role owns
//! ([`foreign_functions`]), and the schemas another role may create in ([`open_schemas`]). Each is
//! one statement in a transaction of its own through [`Db`], unnamed; like every statement of the
//! gateway's it runs with `pg_catalog` first on its path and calls built-ins by their qualified
//! names, so a check of a database where something was planted does not run what was planted.

use crate::stores::db::{schema, Db};

mod triggers;
pub use triggers::*;

/// Those of `tables` that exist and this role may not read (`has_table_privilege`).
pub async fn unreadable_tables(pool: &Db, tables: &[&str]) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT t FROM pg_catalog.unnest($1::text[]) t \
         WHERE NOT coalesce(pg_catalog.has_table_privilege(pg_catalog.to_regclass(t), 'SELECT'), true)",
    )
    .persistent(false)
    .bind(tables)
    .fetch_all(pool)
    .await
}

/// Those of `tables` that exist and on none of whose columns this role holds a privilege
/// (`has_any_column_privilege`): `check` names such a table once, with its grant. A role that may
/// only insert, or read some columns, sees the table.
pub async fn invisible_tables(pool: &Db, tables: &[&str]) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT t FROM pg_catalog.unnest($1::text[]) t WHERE NOT coalesce(pg_catalog.has_any_column_privilege(\
         pg_catalog.to_regclass(t), 'SELECT, INSERT, UPDATE, REFERENCES'), true)",
    )
    .persistent(false)
    .bind(tables)
    .fetch_all(pool)
    .await
}

/// Every (table, column) of the gateway's schema, whatever this role's privileges on it
/// (`pg_attribute`: `information_schema.columns` leaves out a column this role holds no privilege
/// on, which is not a missing column), of every kind of relation that has columns (one that is
/// not a table `check` names as such, not by its columns).
pub async fn columns(pool: &Db) -> Result<Vec<(String, String)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT c.relname::text, a.attname::text FROM pg_catalog.pg_attribute a \
           JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) a.attrelid \
           JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace \
         WHERE n.nspname::text OPERATOR(pg_catalog.=) $1 AND a.attnum OPERATOR(pg_catalog.>) 0 \
           AND NOT a.attisdropped AND c.relkind OPERATOR(pg_catalog.=) ANY ('{r,p,v,f,m,c}'::\"char\"[])",
    )
    .persistent(false)
    .bind(schema())
    .fetch_all(pool)
    .await
}

/// Whether the function `signature` (`name(type, ...)`) exists, runs as its owner (`SECURITY
/// DEFINER`) and has its own `search_path` of exactly `pg_catalog, pg_temp` (so nothing a caller
/// creates, a temporary table or a function in a schema it may write, stands in for one of its
/// names; it names its tables with their schema: migration 0017); false when it does not exist.
pub async fn runs_as_owner_pinned(pool: &Db, signature: &str) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT coalesce((SELECT p.prosecdef AND 'search_path=pg_catalog, pg_temp' OPERATOR(pg_catalog.=) ANY(p.proconfig) \
         FROM pg_catalog.pg_proc p WHERE p.oid OPERATOR(pg_catalog.=) pg_catalog.to_regprocedure($1)::oid), false)",
    )
    .persistent(false)
    .bind(signature)
    .fetch_one(pool)
    .await
}

/// Whether the function `signature` (`name(type, ...)`, as `to_regprocedure` reads it) exists.
pub async fn function_exists(pool: &Db, signature: &str) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT pg_catalog.to_regprocedure($1) IS NOT NULL")
        .persistent(false)
        .bind(signature)
        .fetch_one(pool)
        .await
}

/// The gateway's functions (in its schema, named `rbac_gateway_*` or `rbac_mapping_*`, and
/// `access_audit_events_append_only`) whose `search_path` is not exactly `pg_catalog, pg_temp`
/// (their unqualified names resolve as the caller's path says: splinter's
/// `function_search_path_mutable`), or that do not run with `row_security = off` (a policy on
/// a table of Console's they read would run as their caller or owner: migration 0034). Their
/// signatures.
pub async fn unpinned_functions(pool: &Db) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(concat!(
        "SELECT p.oid::regprocedure::text FROM pg_catalog.pg_proc p WHERE ",
        gateway_function!(),
        " AND NOT coalesce('search_path=pg_catalog, pg_temp' OPERATOR(pg_catalog.=) ANY (p.proconfig) \
                          AND 'row_security=off' OPERATOR(pg_catalog.=) ANY (p.proconfig), false) \
         ORDER BY 1"
    ))
    .persistent(false)
    .bind(schema())
    .fetch_all(pool)
    .await
}

/// SQL text: `FROM` and `WHERE` of the gateway's functions (of the schema `$1`; aggregates
/// take no settings) that run without `pool::restricted_kinds!`, on a server that has the
/// setting (none on one that does not).
macro_rules! unrestricted {
    () => {
        concat!(
            " FROM pg_catalog.pg_proc p WHERE ",
            gateway_function!(),
            " AND p.prokind OPERATOR(pg_catalog.<>) 'a' \
             AND pg_catalog.current_setting('restrict_nonsystem_relation_kind', true) IS NOT NULL \
             AND NOT coalesce('restrict_nonsystem_relation_kind=",
            super::pool::restricted_kinds!(),
            "' OPERATOR(pg_catalog.=) ANY (p.proconfig), false)"
        )
    };
}

/// The gateway's functions that open a view or foreign table in a table's place
/// (`pool::restricted_kinds!` is not among their settings) on a server that could refuse it.
/// Their signatures.
pub async fn unrestricted_functions(pool: &Db) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(concat!(
        "SELECT p.oid::pg_catalog.regprocedure::pg_catalog.text",
        unrestricted!(),
        " ORDER BY 1"
    ))
    .persistent(false)
    .bind(schema())
    .fetch_all(pool)
    .await
}

/// Whether the server has `restrict_nonsystem_relation_kind` (`pool::restricted_kinds!`): not
/// before the minor releases of August 2024.
pub async fn restricts_relation_kinds<'e>(
    on: impl sqlx::Executor<'e, Database = sqlx::Postgres>,
) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT pg_catalog.current_setting('restrict_nonsystem_relation_kind', true) IS NOT NULL",
    )
    .persistent(false)
    .fetch_one(on)
    .await
}

/// Gives `pool::restricted_kinds!` to every function and procedure of the gateway's that runs
/// without it, on a server that has the setting, as migration 0036 did, where this role may (it
/// acts as the function's owner): `migrate`, right after the migrations at each run, for a
/// function a later migration re-creates (`CREATE OR REPLACE` drops the settings it does not
/// state) and a server upgraded to a minor release that has it. The signatures it changed, and
/// those it may not change, each with its owner (`check` names them too).
pub async fn restrict_functions(
    conn: &mut sqlx::PgConnection,
) -> Result<(Vec<String>, Vec<(String, String)>), sqlx::Error> {
    let all: Vec<(String, String, bool)> = sqlx::query_as(concat!(
        "SELECT p.oid::pg_catalog.regprocedure::pg_catalog.text, \
                pg_catalog.pg_get_userbyid(p.proowner)::pg_catalog.text, \
                pg_catalog.pg_has_role(p.proowner, 'USAGE')",
        unrestricted!(),
        " ORDER BY 1"
    ))
    .persistent(false)
    .bind(schema())
    .fetch_all(&mut *conn)
    .await?;
    let (mine, others): (Vec<_>, Vec<_>) = all.into_iter().partition(|(_, _, mine)| *mine);
    let mut changed = Vec::with_capacity(mine.len());
    for (function, _, _) in mine {
        // The signature as regprocedure prints it: quoted where it needs to be, and qualified
        // where the session's path would not find it.
        let alter = format!(
            concat!(
                "ALTER ROUTINE {} SET restrict_nonsystem_relation_kind = '",
                super::pool::restricted_kinds!(),
                "'"
            ),
            function
        );
        sqlx::Executor::execute(&mut *conn, sqlx::raw_sql(&alter)).await?;
        changed.push(function);
    }
    let left = others.into_iter().map(|(f, owner, _)| (f, owner)).collect();
    Ok((changed, left))
}

/// Console's tables and the columns the gateway reads or writes of each (Console's role owns
/// them): what `check --database-url` looks for, and what [`console_code`] holds to the
/// interface's shape. Every table and column a statement of `serve` (identity, tickets, the
/// change feed, the sweep, `drift`) names of Console's: grep the SQL in src/stores/ and
/// migrations/ when adding one.
pub const CONSOLE_TABLES: &[(&str, &[&str])] = &[
    ("admins", &["id", "email"]),
    (
        "admin_sessions",
        &[
            "id",
            "admin_id",
            "token_sha256",
            "expires_at_utc",
            "revoked_at_utc",
        ],
    ),
    ("rbac_groups", &["id", "name"]),
    ("rbac_roles", &["id", "name"]),
    ("rbac_permissions", &["id", "name"]),
    ("rbac_role_permissions", &["role_id", "permission_id"]),
    (
        "rbac_role_inheritance",
        &["child_role_id", "parent_role_id"],
    ),
    ("rbac_group_roles", &["group_id", "role_id"]),
    ("rbac_user_groups", &["user_id", "group_id"]),
    (
        "rbac_break_glass_sessions",
        &[
            "id",
            "user_id",
            "justification",
            "granted_at_utc",
            "expires_at_utc",
            "revoked_at_utc",
        ],
    ),
    (
        "rbac_ticket_grants",
        &[
            "id",
            "user_id",
            "role_id",
            "customer_id",
            "ticket_id",
            "expires_at_utc",
            "revoked_at_utc",
            "revoke_reason",
        ],
    ),
    (
        "rbac_grants_audit",
        &[
            "id",
            "event_type",
            "target_user_id",
            "role_id",
            "ticket_id",
            "customer_id",
            "justification",
            "granted_by",
            "expires_at_utc",
            "group_id",
            "created_at_utc",
        ],
    ),
];

/// The tables of Console's the gateway writes: the sweep's and a revocation's audit rows
/// (`rbac_grants_audit`), a ticket grant's revocation (`rbac_ticket_grants`). Each write first
/// runs `rbac_gateway_guard_writes` over them (migration 0034) in the writing statement.
pub const CONSOLE_WRITTEN: &[&str] = &["rbac_grants_audit", "rbac_ticket_grants"];

/// What of another role's would run as the gateway where it reads `tables` (the columns
/// `columns`, each `table.column`) or writes [`CONSOLE_WRITTEN`]: a view in a table's place,
/// row-level security, a rule, a column of a type another role owns, and, on a table it
/// writes, a trigger, default, constraint or index whose function runs as the writer
/// (`rbac_gateway_console_code`, migration 0034). Each finding a sentence; none where that
/// function is missing (the caller names it as missing); `None` where this role may not run it
/// (`deploy/gateway-grants.sql` gives it to `rbac_gateway_serve`; the tables' owner has it).
pub async fn console_code(
    pool: &Db,
    tables: &[&str],
    columns: &[&str],
) -> Result<Option<Vec<String>>, sqlx::Error> {
    let runnable: Option<bool> = sqlx::query_scalar(CONSOLE_CODE_RUNNABLE)
        .persistent(false)
        .fetch_optional(pool)
        .await?;
    match runnable {
        None => return Ok(Some(Vec::new())),
        Some(false) => return Ok(None),
        Some(true) => {}
    }
    sqlx::query_scalar(CONSOLE_CODE)
        .persistent(false)
        .bind(schema())
        .bind(tables)
        .bind(columns)
        .bind(CONSOLE_WRITTEN)
        .fetch_all(pool)
        .await
        .map(Some)
}

/// SQL text: whether `rbac_gateway_console_code` exists and this role may run it (no row where
/// it does not exist: a database `migrate` has not brought to 0034).
pub(crate) const CONSOLE_CODE_RUNNABLE: &str =
    "SELECT pg_catalog.has_function_privilege(p.oid, 'EXECUTE') FROM pg_catalog.pg_proc p \
     WHERE p.oid OPERATOR(pg_catalog.=) \
           pg_catalog.to_regprocedure('rbac_gateway_console_code(oid, text[], text[], text[])')::oid";

/// SQL text: `rbac_gateway_console_code`'s findings, one a row, for the schema named `$1`, the
/// tables `$2`, the columns read `$3` and the tables written `$4`.
pub(crate) const CONSOLE_CODE: &str =
    "SELECT f FROM rbac_gateway_console_code(pg_catalog.to_regnamespace(pg_catalog.quote_ident($1))::oid, \
     $2::text[], $3::text[], $4::text[]) f";

/// The columns of [`CONSOLE_TABLES`] of `tables`, each `table.column`. Written once: the alert
/// pass asks for them each second, and formatting them each time was a tenth of an idle
/// gateway's instructions (docs/performance-log.md, 2026-12-01, eighteenth session).
pub fn console_columns(tables: &[&str]) -> Vec<&'static str> {
    static COLUMNS: std::sync::LazyLock<Vec<(&str, String)>> = std::sync::LazyLock::new(|| {
        CONSOLE_TABLES
            .iter()
            .flat_map(|(t, cols)| cols.iter().map(move |c| (*t, format!("{t}.{c}"))))
            .collect()
    });
    COLUMNS
        .iter()
        .filter(|(t, _)| tables.contains(t))
        .map(|(_, column)| column.as_str())
        .collect()
}

/// Locks Console's `tables` (ACCESS SHARE, until `conn`'s transaction ends: a view in a table's
/// place, a column's new type, a policy or a rule waits for it) and fails (42501, naming what it
/// found) unless they are in the interface's shape (`rbac_gateway_plain`, migration 0034): the
/// first statement of a transaction of the gateway's login that reads them.
pub async fn plain(
    conn: &mut sqlx::PgConnection,
    tables: &[&str],
    limit: std::time::Duration,
) -> Result<(), sqlx::Error> {
    use crate::stores::db::Bounded;
    sqlx::query("SELECT rbac_gateway_plain($1::text[], $2::text[])")
        .persistent(false)
        .bind(tables)
        .bind(console_columns(tables))
        .execute(conn)
        .bounded(limit)
        .await
        .map(drop)
}

/// Console's tables held for a command's reads ([`hold_console_tables`]): while it lives, the
/// tables this role may read are locked (ACCESS SHARE, in a transaction of a connection of its
/// own), so a change that needs a stronger lock (an index made in a transaction that holds one,
/// a view in a table's place, a new column type) waits for the reads to end. Dropped, it is
/// rolled back.
pub struct ConsoleHeld {
    _tx: crate::stores::db::Tx,
    /// What [`console_code`] found under the locks (`None`: this role may not look).
    pub findings: Option<Vec<String>>,
}

/// Locks the tables of [`CONSOLE_TABLES`] this role may read, then looks at them as
/// [`console_code_anywhere`] does, in one transaction on a connection of its own: the reads that
/// follow (on other connections of `pool`) see no code of another role's the look did not.
/// Console's index made in a transaction holding a stronger lock (a review: the look ran
/// before it committed, the read after, and ran its function as the pusher) is waited for and
/// seen. Not covered: a `CREATE INDEX` or `CREATE STATISTICS` committed between the look and a
/// read, which ACCESS SHARE does not hold back (docs/design/security.md).
pub async fn hold_console_tables(pool: &Db) -> Result<ConsoleHeld, sqlx::Error> {
    use crate::stores::db::Bounded;
    let limit = pool.limit();
    let mut tx = pool.begin().await?;
    let tables: Vec<&str> = CONSOLE_TABLES.iter().map(|(t, _)| *t).collect();
    let lockable: Vec<String> = sqlx::query_scalar(
        "SELECT pg_catalog.format('%I.%I', n.nspname, c.relname) FROM pg_catalog.pg_class c \
           JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace \
          WHERE n.nspname OPERATOR(pg_catalog.=) $1 AND c.relname OPERATOR(pg_catalog.=) ANY ($2::pg_catalog.name[]) \
            AND c.relkind OPERATOR(pg_catalog.=) ANY ('{r,p}'::pg_catalog.char[]) \
            AND pg_catalog.has_table_privilege(c.oid, 'SELECT') \
          ORDER BY c.relname",
    )
    .persistent(false)
    .bind(schema())
    .bind(&tables)
    .fetch_all(&mut *tx)
    .bounded(limit)
    .await?;
    if !lockable.is_empty() {
        sqlx::raw_sql(&format!(
            "LOCK TABLE {} IN ACCESS SHARE MODE",
            lockable.join(", ")
        ))
        .execute(&mut *tx)
        .bounded(limit)
        .await?;
    }
    let runnable: Option<bool> = sqlx::query_scalar(CONSOLE_CODE_RUNNABLE)
        .persistent(false)
        .fetch_optional(&mut *tx)
        .bounded(limit)
        .await?;
    let findings = match runnable {
        None => Some(Vec::new()),
        Some(false) => None,
        Some(true) => Some(
            sqlx::query_scalar(CONSOLE_CODE)
                .persistent(false)
                .bind(schema())
                .bind(&tables)
                .bind(console_columns(&tables))
                .bind(CONSOLE_WRITTEN)
                .fetch_all(&mut *tx)
                .bounded(limit)
                .await?,
        ),
    };
    Ok(ConsoleHeld { _tx: tx, findings })
}

/// [`console_code`] over every table of [`CONSOLE_TABLES`] and the columns listed there: what
/// `check`, the sweep and the alert pass look for before they read Console's tables.
pub async fn console_code_anywhere(pool: &Db) -> Result<Option<Vec<String>>, sqlx::Error> {
    let tables: Vec<&str> = CONSOLE_TABLES.iter().map(|(t, _)| *t).collect();
    console_code(pool, &tables, &console_columns(&tables)).await
}

/// The functions PUBLIC may run that it should not: every function of the gateway's (only the
/// roles of deploy/gateway-grants.sql and deploy/mapping-grants.sql need any), and every
/// `SECURITY DEFINER` function in `schemas` (splinter's `security_definer_function_executable`):
/// each signature, and whether it runs as its owner.
pub async fn public_functions(
    pool: &Db,
    schemas: &[String],
) -> Result<Vec<(String, bool)>, sqlx::Error> {
    sqlx::query_as(concat!(
        "SELECT p.oid::regprocedure::text, p.prosecdef FROM pg_catalog.pg_proc p \
         WHERE pg_catalog.has_function_privilege('public', p.oid, 'EXECUTE') AND ((",
        gateway_function!(),
        ") OR (p.prosecdef AND p.pronamespace OPERATOR(pg_catalog.=) ANY \
           (SELECT n.oid FROM pg_catalog.pg_namespace n WHERE n.nspname::text OPERATOR(pg_catalog.=) ANY ($2::text[])))) \
         ORDER BY 1"
    ))
    .persistent(false)
    .bind(schema())
    .bind(schemas)
    .fetch_all(pool)
    .await
}

/// The functions and operators in `schemas` (never `pg_catalog`) named as a built-in the
/// gateway calls ([`BUILTINS`], [`OPERATORS`]): one that matches a call better than the
/// built-in, or one on a path that puts its schema first, runs instead of it. Each as
/// `function NAME(ARGS)` or `operator NAME(LEFT, RIGHT)`, with its schema and owner.
pub async fn shadows(pool: &Db, schemas: &[String]) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "WITH s AS (SELECT n.oid FROM pg_catalog.pg_namespace n \
                    WHERE n.nspname::text OPERATOR(pg_catalog.=) ANY ($1::text[]) \
                      AND n.nspname::text OPERATOR(pg_catalog.<>) 'pg_catalog') \
         SELECT pg_catalog.format('function %s in schema %s (owner %s)', p.oid::regprocedure, \
                                  p.pronamespace::regnamespace, pg_catalog.pg_get_userbyid(p.proowner)) \
           FROM pg_catalog.pg_proc p JOIN s ON s.oid OPERATOR(pg_catalog.=) p.pronamespace \
          WHERE p.proname::text OPERATOR(pg_catalog.=) ANY ($2::text[]) \
         UNION ALL \
         SELECT pg_catalog.format('operator %s in schema %s (owner %s)', o.oid::regoperator, \
                                  o.oprnamespace::regnamespace, pg_catalog.pg_get_userbyid(o.oprowner)) \
           FROM pg_catalog.pg_operator o JOIN s ON s.oid OPERATOR(pg_catalog.=) o.oprnamespace \
          WHERE o.oprname::text OPERATOR(pg_catalog.=) ANY ($3::text[]) \
         ORDER BY 1",
    )
    .persistent(false)
    .bind(schemas)
    .bind(BUILTINS)
    .bind(OPERATORS)
    .fetch_all(pool)
    .await
}

/// The functions in the gateway's schema under one of its names (`rbac_gateway_*`,
/// `rbac_mapping_*`, `access_audit_events_append_only`) owned by another role than the owner of
/// its tables: where a call of the gateway's does not match its own function exactly, one of
/// these can run in its place, and one with more arguments that have defaults makes the call
/// ambiguous (migration 0032). Each as `NAME(ARGS) (owner ROLE)`.
pub async fn foreign_functions(pool: &Db) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(concat!(
        "SELECT pg_catalog.format('%s (owner %s)', p.oid::regprocedure, pg_catalog.pg_get_userbyid(p.proowner)) \
           FROM pg_catalog.pg_proc p WHERE ",
        gateway_function!(),
        " AND p.proowner OPERATOR(pg_catalog.<>) (SELECT c.relowner FROM pg_catalog.pg_class c \
               WHERE c.oid OPERATOR(pg_catalog.=) pg_catalog.to_regclass(\
                         pg_catalog.quote_ident($1) OPERATOR(pg_catalog.||) '.rbac_change_log')::oid) \
         ORDER BY 1"
    ))
    .persistent(false)
    .bind(schema())
    .fetch_all(pool)
    .await
}

/// The schemas of `schemas` (that exist, never `pg_catalog`) in which a role other than the
/// schema's owner may create (PUBLIC where PostgreSQL is older than 15, or by a grant), or whose
/// owner is a role the owner of the gateway's tables is not a member of (an owner may create in
/// its schema, and drop what is in it): each schema, who may create there, and that owner.
pub async fn open_schemas(pool: &Db, schemas: &[String]) -> Result<Vec<OpenSchema>, sqlx::Error> {
    let rows: Vec<(String, Vec<String>, Option<String>)> = sqlx::query_as(
        "SELECT n.nspname::text, \
                coalesce((SELECT pg_catalog.array_agg(DISTINCT CASE WHEN a.grantee OPERATOR(pg_catalog.=) 0::oid \
                                 THEN 'PUBLIC' ELSE pg_catalog.pg_get_userbyid(a.grantee)::text END) \
                            FROM pg_catalog.aclexplode(coalesce(n.nspacl, pg_catalog.acldefault('n', n.nspowner))) a \
                           WHERE a.privilege_type OPERATOR(pg_catalog.=) 'CREATE' \
                             AND a.grantee OPERATOR(pg_catalog.<>) n.nspowner), '{}'), \
                (SELECT pg_catalog.pg_get_userbyid(n.nspowner)::text FROM pg_catalog.pg_class c \
                  WHERE c.oid OPERATOR(pg_catalog.=) pg_catalog.to_regclass(\
                            pg_catalog.quote_ident($2) OPERATOR(pg_catalog.||) '.rbac_change_log')::oid \
                    AND NOT pg_catalog.pg_has_role(c.relowner, n.nspowner, 'USAGE')) \
           FROM pg_catalog.pg_namespace n \
          WHERE n.nspname::text OPERATOR(pg_catalog.=) ANY ($1::text[]) \
            AND n.nspname::text OPERATOR(pg_catalog.<>) 'pg_catalog' \
          ORDER BY 1",
    )
    .persistent(false)
    .bind(schemas)
    .bind(schema())
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .filter(|(_, creators, owner)| !creators.is_empty() || owner.is_some())
        .map(|(schema, creators, foreign_owner)| OpenSchema {
            schema,
            creators,
            foreign_owner,
        })
        .collect())
}

/// The owner of Console's tables (`admins`'s), where that role may write the gateway's own
/// records of what it delivered: `rbac_gateway_alerts` (a break-glass session counts once its
/// alert is marked delivered, I-4) or `rbac_gateway_audit_outbox` (an event marked delivered is
/// never sent again, I-5). Owning them, being a member of their owner (or a superuser), or a
/// grant, of the table or of any column: each lets Console's role forge what the gateway reads as
/// done. With each table it may write.
pub async fn console_writes_deliveries(
    pool: &Db,
) -> Result<Option<(String, Vec<String>)>, sqlx::Error> {
    let row: Option<(String, Vec<String>)> = sqlx::query_as(
        "SELECT pg_catalog.pg_get_userbyid(c.relowner)::text, \
                pg_catalog.array_agg(t.name ORDER BY t.name) \
           FROM pg_catalog.pg_class c, \
                pg_catalog.unnest(ARRAY['rbac_gateway_alerts', 'rbac_gateway_audit_outbox']::text[]) t(name) \
          WHERE c.oid OPERATOR(pg_catalog.=) pg_catalog.to_regclass(\
                    pg_catalog.quote_ident($1) OPERATOR(pg_catalog.||) '.admins')::oid \
            AND pg_catalog.to_regclass(pg_catalog.quote_ident($1) OPERATOR(pg_catalog.||) '.' \
                    OPERATOR(pg_catalog.||) t.name) IS NOT NULL \
            AND pg_catalog.has_any_column_privilege(c.relowner, \
                    pg_catalog.quote_ident($1) OPERATOR(pg_catalog.||) '.' OPERATOR(pg_catalog.||) t.name, \
                    'INSERT, UPDATE') \
          GROUP BY c.relowner",
    )
    .persistent(false)
    .bind(schema())
    .fetch_optional(pool)
    .await?;
    Ok(row)
}

/// A schema [`open_schemas`] names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenSchema {
    pub schema: String,
    /// The roles other than its owner that may create in it (`PUBLIC` for every role).
    pub creators: Vec<String>,
    /// Its owner, where the owner of the gateway's tables is not a member of that role.
    pub foreign_owner: Option<String>,
}

/// The schemas a name of the gateway's could resolve through: its own ([`schema`]) and those of
/// the path a session of this role starts with (`ALTER ROLE`/`ALTER DATABASE ... SET
/// search_path`; `$user` read as this role), which `migrate` and anything not pinned resolve
/// through. Names, in path order, each once.
pub async fn path_schemas(pool: &Db) -> Result<Vec<String>, sqlx::Error> {
    let (path, user): (String, String) = sqlx::query_as(
        "SELECT s.reset_val, pg_catalog.current_user()::text FROM pg_catalog.pg_settings s \
         WHERE s.name OPERATOR(pg_catalog.=) 'search_path'",
    )
    .persistent(false)
    .fetch_one(pool)
    .await?;
    let mut out = vec![schema().to_string()];
    for part in path.split(',') {
        let part = part.trim();
        let name = if part == "\"$user\"" || part == "$user" {
            user.clone()
        } else if let Some(quoted) = part.strip_prefix('"').and_then(|p| p.strip_suffix('"')) {
            quoted.replace("\"\"", "\"")
        } else {
            part.to_lowercase()
        };
        if !name.is_empty() && name != "pg_temp" && !out.contains(&name) {
            out.push(name);
        }
    }
    Ok(out)
}

/// The condition on `p` (a `pg_proc` row) that it is one of the gateway's functions, in the
/// schema bound as `$1`.
macro_rules! gateway_function {
    () => {
        "p.pronamespace OPERATOR(pg_catalog.=) pg_catalog.to_regnamespace(pg_catalog.quote_ident($1))::oid \
         AND (p.proname::text OPERATOR(pg_catalog.~~) 'rbac\\_gateway\\_%' \
              OR p.proname::text OPERATOR(pg_catalog.~~) 'rbac\\_mapping\\_%' \
              OR p.proname::text OPERATOR(pg_catalog.=) 'access_audit_events_append_only')"
    };
}
use gateway_function;

/// The built-in functions the gateway's statements call, each written `pg_catalog.name(...)`
/// (`tests/api/trust_boundary.rs` lists them from the source and holds this list equal).
pub const BUILTINS: &[&str] = &[
    "acldefault",
    "aclexplode",
    "array_agg",
    "array_append",
    "concat",
    "convert_to",
    "count",
    "current_database",
    "current_setting",
    "current_user",
    "encode",
    "format",
    "has_any_column_privilege",
    "has_column_privilege",
    "has_function_privilege",
    "has_schema_privilege",
    "has_sequence_privilege",
    "has_table_privilege",
    "hashtext",
    "json_populate_recordset",
    "left",
    "make_interval",
    "max",
    "min",
    "now",
    "pg_advisory_xact_lock",
    "pg_backend_pid",
    "pg_control_system",
    "pg_current_snapshot",
    "pg_get_userbyid",
    "pg_has_role",
    "pg_is_in_recovery",
    "pg_notify",
    "pg_postmaster_start_time",
    "pg_snapshot_xip",
    "pg_snapshot_xmax",
    "pg_try_advisory_lock",
    "pg_try_advisory_xact_lock",
    "power",
    "quote_ident",
    "set_config",
    "sha256",
    "string_agg",
    "substr",
    "sum",
    "to_char",
    "to_regclass",
    "to_regnamespace",
    "to_regprocedure",
    "to_regrole",
    "unnest",
];

/// The operators the gateway's statements use (`IN` and `= ANY` use `=`).
pub const OPERATORS: &[&str] = &[
    "=", "<>", "<", ">", "<=", ">=", "+", "-", "*", "/", "||", "~~",
];

#[cfg(test)]
mod tests {
    use super::*;

    /// `rbac_gateway_guard_writes` (migration 0034) names the columns of the two tables the
    /// gateway writes that must have the interface's types: the same as [`CONSOLE_TABLES`].
    #[test]
    fn the_write_guard_holds_the_columns_this_list_holds() {
        let migration =
            include_str!("../../migrations/0034_console_code_never_runs_as_the_gateway.sql");
        let start = migration
            .find("'{rbac_grants_audit.id,")
            .expect("the guard's list")
            + 1;
        let end = start + migration[start..].find("}'").unwrap();
        let mut guard: Vec<&str> = migration[start + 1..end].split(',').collect();
        guard.sort_unstable();
        let mut listed = console_columns(&["rbac_grants_audit", "rbac_ticket_grants"]);
        listed.sort_unstable();
        assert_eq!(guard, listed);
    }

    /// Migration 0036 gives every function the value the rest of the gateway sets and looks
    /// for (`pool::restricted_kinds!`): a function it restricted otherwise would be found
    /// unrestricted by `check` and altered again at each `migrate`.
    #[test]
    fn migration_0036_sets_the_value_the_gateway_looks_for() {
        let migration = include_str!("../../migrations/0036_no_view_in_a_tables_place.sql");
        let value = crate::stores::pool::restricted_kinds!();
        assert!(migration.contains("SET restrict_nonsystem_relation_kind = %L"));
        assert!(
            migration.contains(&format!("f, '{value}');")),
            "0036 does not set {value:?}"
        );
    }
}
