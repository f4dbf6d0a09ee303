//! The privileges this role lacks of those asked ([`lacking`]), for `check --database-url` run
//! as `serve`'s login: a column grant revoked (the alert pass's `UPDATE (raised_at_utc)`, the
//! audit writer's `INSERT`) fails only the statement that needs it, at run time, so `check`
//! names it before. One statement, unnamed, with `pg_catalog` first on its path like every
//! statement of the gateway's.

use crate::stores::db::Db;

/// What a privilege is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum On {
    /// A table (or a column of it, with [`Privilege::column`]).
    Table,
    /// A function, by its signature (`rbac_gateway_plain(TEXT[], TEXT[])`).
    Function,
    /// A sequence.
    Sequence,
}

impl On {
    fn kind(self) -> &'static str {
        match self {
            On::Table => "table",
            On::Function => "function",
            On::Sequence => "sequence",
        }
    }
}

/// One privilege asked of this role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Privilege {
    pub on: On,
    /// The table, sequence or function signature, resolved as the gateway's statements resolve
    /// names.
    pub object: String,
    /// `SELECT`, `INSERT`, `UPDATE`, `DELETE`, `EXECUTE`, `USAGE`.
    pub privilege: String,
    /// The column, for a column's privilege.
    pub column: Option<String>,
}

/// What [`lacking`] found of one privilege asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// The object is there and this role lacks the privilege.
    Lacking,
    /// A sequence that is not there, or not a sequence (no other part of `check` names it;
    /// `has_sequence_privilege` raises an error on what is not a sequence).
    NoSequence,
    /// A table's name held by a relation of another kind (`pg_class.relkind`: a view, a
    /// foreign table, an index, a composite type), which `serve`'s statements cannot use or whose
    /// reads would run what its owner wrote (`serve`'s session refuses to open a view where the
    /// server can: `restrict_nonsystem_relation_kind`).
    NotATable(String),
}

/// Those of `asked` this role does not hold (by itself or a role it inherits, or PUBLIC), by
/// index. A table, function or column that does not exist is not counted as lacking: `check`
/// names it as missing. A table's `SELECT`, `INSERT`, `UPDATE` or `REFERENCES` is held where it
/// is held on each of its columns.
pub async fn lacking(pool: &Db, asked: &[Privilege]) -> Result<Vec<(usize, Found)>, sqlx::Error> {
    let kinds: Vec<&str> = asked.iter().map(|p| p.on.kind()).collect();
    let objects: Vec<&str> = asked.iter().map(|p| p.object.as_str()).collect();
    let privileges: Vec<&str> = asked.iter().map(|p| p.privilege.as_str()).collect();
    let columns: Vec<&str> = asked
        .iter()
        .map(|p| p.column.as_deref().unwrap_or(""))
        .collect();
    // `relkind` of what holds the name ('' for nothing); a table's name held by a relation that
    // is no table is said as such, whatever its privileges. A column by
    // its number: `has_column_privilege` by name raises an error for a column that does not
    // exist; by a number it finds no column for, NULL.
    let found: Vec<(i64, String)> = sqlx::query_as(
        "SELECT w.i, coalesce(o.relkind::text, '') FROM ROWS FROM ( \
           pg_catalog.unnest($1::text[]), pg_catalog.unnest($2::text[]), \
           pg_catalog.unnest($3::text[]), pg_catalog.unnest($4::text[])) WITH ORDINALITY \
           AS w(kind, object, privilege, col, i) \
         CROSS JOIN LATERAL (SELECT x.r, (SELECT c.relkind FROM pg_catalog.pg_class c \
             WHERE c.oid OPERATOR(pg_catalog.=) x.r) AS relkind \
           FROM (SELECT CASE WHEN w.kind OPERATOR(pg_catalog.=) 'function' \
             THEN NULL ELSE pg_catalog.to_regclass(w.object) END AS r) x) o \
         WHERE NOT coalesce(CASE \
           WHEN w.kind OPERATOR(pg_catalog.=) 'function' THEN \
             pg_catalog.has_function_privilege(pg_catalog.to_regprocedure(w.object), w.privilege) \
           WHEN w.kind OPERATOR(pg_catalog.=) 'sequence' THEN \
             CASE WHEN o.relkind OPERATOR(pg_catalog.=) 'S'::\"char\" \
               THEN pg_catalog.has_sequence_privilege(o.r, w.privilege) ELSE false END \
           WHEN NOT o.relkind OPERATOR(pg_catalog.=) ANY ('{r,p}'::\"char\"[]) THEN false \
           WHEN w.col OPERATOR(pg_catalog.=) '' THEN \
             pg_catalog.has_table_privilege(o.r, w.privilege) \
             OR (w.privilege OPERATOR(pg_catalog.=) ANY ('{SELECT,INSERT,UPDATE,REFERENCES}'::text[]) \
                 AND NOT EXISTS (SELECT FROM pg_catalog.pg_attribute a \
                   WHERE a.attrelid OPERATOR(pg_catalog.=) o.r AND a.attnum OPERATOR(pg_catalog.>) 0 \
                     AND NOT a.attisdropped \
                     AND NOT pg_catalog.has_column_privilege(o.r, a.attnum, w.privilege))) \
           ELSE pg_catalog.has_column_privilege(o.r, \
             (SELECT a.attnum FROM pg_catalog.pg_attribute a \
               WHERE a.attrelid OPERATOR(pg_catalog.=) o.r \
                 AND a.attname::text OPERATOR(pg_catalog.=) w.col AND NOT a.attisdropped), \
             w.privilege) END, true) \
         ORDER BY w.i",
    )
    .persistent(false)
    .bind(&kinds)
    .bind(&objects)
    .bind(&privileges)
    .bind(&columns)
    .fetch_all(pool)
    .await?;
    Ok(found
        .into_iter()
        .map(|(i, relkind)| {
            let i = i as usize - 1;
            let found = match asked[i].on {
                On::Sequence if relkind != "S" => Found::NoSequence,
                On::Table if !["r", "p"].contains(&relkind.as_str()) => Found::NotATable(relkind),
                _ => Found::Lacking,
            };
            (i, found)
        })
        .collect())
}

/// How this role stands to a role whose privileges it should hold ([`membership`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Membership {
    /// This role's name.
    pub login: String,
    /// The role exists.
    pub exists: bool,
    /// This role is a member of it, directly or through others.
    pub member: bool,
    /// This role holds its privileges (`pg_has_role(..., 'USAGE')`).
    pub inherits: bool,
    /// The roles between this one and it (this one among them) that do not inherit
    /// (`NOINHERIT`): before PostgreSQL 16, each keeps the privileges from reaching this role.
    pub noinherit: Vec<String>,
    /// The server is PostgreSQL 16 or later, where whether a membership passes on privileges is
    /// its grant's (`WITH INHERIT`), the role's `INHERIT` only the default of new grants.
    pub per_grant: bool,
}

/// How this role stands to `role`: whether it exists, this role is a member, and holds its
/// privileges, and which roles on the way do not inherit.
pub async fn membership(pool: &Db, role: &str) -> Result<Membership, sqlx::Error> {
    type Row = (String, bool, bool, bool, Vec<String>, bool);
    let (login, exists, member, inherits, noinherit, per_grant): Row = sqlx::query_as(
        "SELECT pg_catalog.current_user()::text, g.oid IS NOT NULL, \
           coalesce(pg_catalog.pg_has_role(pg_catalog.current_user(), g.oid, 'MEMBER'), false), \
           coalesce(pg_catalog.pg_has_role(pg_catalog.current_user(), g.oid, 'USAGE'), false), \
           ARRAY(SELECT r.rolname::text FROM pg_catalog.pg_roles r \
                  WHERE NOT r.rolinherit AND r.oid OPERATOR(pg_catalog.<>) g.oid \
                    AND pg_catalog.pg_has_role(pg_catalog.current_user(), r.oid, 'MEMBER') \
                    AND pg_catalog.pg_has_role(r.oid, g.oid, 'MEMBER') ORDER BY 1), \
           pg_catalog.current_setting('server_version_num')::int4 OPERATOR(pg_catalog.>=) 160000 \
         FROM (SELECT pg_catalog.to_regrole($1)::oid AS oid) g",
    )
    .persistent(false)
    .bind(role)
    .fetch_one(pool)
    .await?;
    Ok(Membership {
        login,
        exists,
        member,
        inherits,
        noinherit,
        per_grant,
    })
}

/// Whether the gateway's schema exists, and whether this role may use it (`USAGE`): without
/// it no name of the gateway's resolves for it. PUBLIC holds it on `public` by default; another
/// schema's owner grants it.
pub async fn uses_schema(pool: &Db) -> Result<(bool, bool), sqlx::Error> {
    sqlx::query_as(
        "SELECT n.oid IS NOT NULL, coalesce(pg_catalog.has_schema_privilege(n.oid, 'USAGE'), false) \
           FROM (SELECT pg_catalog.to_regnamespace(pg_catalog.quote_ident($1))::oid AS oid) n",
    )
    .persistent(false)
    .bind(crate::stores::db::schema())
    .fetch_one(pool)
    .await
}

/// The `relkind` of each of `tables` that the gateway's schema holds (one missing is left out).
pub async fn relation_kinds(
    pool: &Db,
    tables: &[&str],
) -> Result<Vec<(String, String)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT c.relname::text, c.relkind::text FROM pg_catalog.pg_class c \
         WHERE c.relnamespace OPERATOR(pg_catalog.=) pg_catalog.to_regnamespace(pg_catalog.quote_ident($2))::oid \
           AND c.relname::text OPERATOR(pg_catalog.=) ANY ($1::text[]) ORDER BY 1",
    )
    .persistent(false)
    .bind(tables)
    .bind(crate::stores::db::schema())
    .fetch_all(pool)
    .await
}

/// What this login may do to the gateway's objects that the owner of Console's tables (`admins`'s)
/// may not, as itself or as any role it may become (a member, inheriting or not: code of
/// Console's running as it may `SET ROLE`): each table of the gateway's schema it may insert
/// into, update, delete from, truncate or put a trigger on, and each function of the gateway's
/// it may run but the request path's three lookups, named (`write table rbac_gateway_alerts`,
/// `run function rbac_gateway_plain(text[],text[])`); and what reaches past a read-only
/// transaction: each role it is or may become that is a superuser or may create roles (`become
/// role postgres (SUPERUSER)`; a superuser login names itself alone), and membership of
/// `pg_execute_server_program` or `pg_write_server_files` (`COPY ... TO PROGRAM` runs in one,
/// and its program connects anew). Empty for a login fit for `--lookup-database-url`: Console's
/// code that runs on its reads (a retyped column's cast, an index expression;
/// docs/design/security.md) then holds no privilege Console's role lacks. Where `admins` is not
/// there, every such table and function is named.
pub async fn beyond_consoles(pool: &Db) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "WITH s(oid) AS (SELECT pg_catalog.to_regnamespace(pg_catalog.quote_ident($1))::oid), \
         console(owner) AS (SELECT (SELECT c.relowner FROM pg_catalog.pg_class c \
             WHERE c.oid OPERATOR(pg_catalog.=) pg_catalog.to_regclass( \
                 pg_catalog.quote_ident($1) OPERATOR(pg_catalog.||) '.admins')::oid)) \
         SELECT 'write table ' OPERATOR(pg_catalog.||) c.relname::text FROM pg_catalog.pg_class c, s, console \
          WHERE c.relnamespace OPERATOR(pg_catalog.=) s.oid \
            AND c.relkind OPERATOR(pg_catalog.=) ANY ('{r,p}'::\"char\"[]) \
            AND EXISTS (SELECT 1 FROM pg_catalog.pg_roles m \
                 WHERE pg_catalog.pg_has_role(m.oid, 'MEMBER') \
                   AND (pg_catalog.has_any_column_privilege(m.oid, c.oid, 'INSERT, UPDATE') \
                        OR pg_catalog.has_table_privilege(m.oid, c.oid, 'DELETE, TRUNCATE, TRIGGER'))) \
            AND (console.owner IS NULL OR NOT ( \
                 pg_catalog.has_any_column_privilege(console.owner, c.oid, 'INSERT, UPDATE') \
                 OR pg_catalog.has_table_privilege(console.owner, c.oid, 'DELETE, TRUNCATE, TRIGGER'))) \
         UNION ALL \
         SELECT 'run function ' OPERATOR(pg_catalog.||) p.oid::pg_catalog.regprocedure::text \
           FROM pg_catalog.pg_proc p, s, console \
          WHERE p.pronamespace OPERATOR(pg_catalog.=) s.oid \
            AND pg_catalog.left(p.proname::text, 13) OPERATOR(pg_catalog.=) 'rbac_gateway_' \
            AND NOT p.proname::text OPERATOR(pg_catalog.=) ANY ('{rbac_gateway_session_principals,rbac_gateway_principal,rbac_gateway_ticket_grants}'::text[]) \
            AND EXISTS (SELECT 1 FROM pg_catalog.pg_roles m \
                 WHERE pg_catalog.pg_has_role(m.oid, 'MEMBER') \
                   AND pg_catalog.has_function_privilege(m.oid, p.oid, 'EXECUTE')) \
            AND (console.owner IS NULL \
                 OR NOT pg_catalog.has_function_privilege(console.owner, p.oid, 'EXECUTE')) \
         UNION ALL \
         SELECT 'become role ' OPERATOR(pg_catalog.||) pg_catalog.quote_ident(r.rolname) \
                OPERATOR(pg_catalog.||) ' (' OPERATOR(pg_catalog.||) a.name OPERATOR(pg_catalog.||) ')' \
           FROM pg_catalog.pg_roles r, (VALUES ('SUPERUSER'), ('CREATEROLE')) a(name) \
          WHERE pg_catalog.pg_has_role(r.oid, 'MEMBER') \
            AND (r.rolname OPERATOR(pg_catalog.=) CURRENT_USER OR NOT (SELECT u.rolsuper \
                 FROM pg_catalog.pg_roles u WHERE u.rolname OPERATOR(pg_catalog.=) CURRENT_USER)) \
            AND (a.name OPERATOR(pg_catalog.=) 'SUPERUSER' AND r.rolsuper \
                 OR a.name OPERATOR(pg_catalog.=) 'CREATEROLE' AND r.rolcreaterole) \
         UNION ALL \
         SELECT 'use role ' OPERATOR(pg_catalog.||) g.name FROM \
             (VALUES ('pg_execute_server_program'), ('pg_write_server_files')) g(name) \
          WHERE pg_catalog.to_regrole(g.name) IS NOT NULL \
            AND pg_catalog.pg_has_role(g.name, 'MEMBER') \
          ORDER BY 1",
    )
    .persistent(false)
    .bind(crate::stores::db::schema())
    .fetch_all(pool)
    .await
}
