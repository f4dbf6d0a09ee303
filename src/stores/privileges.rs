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

/// The indexes of those of `asked` this role does not hold, by itself or a role it inherits.
/// An object or column that does not exist is not counted as lacking: `check` names it as
/// missing.
pub async fn lacking(pool: &Db, asked: &[Privilege]) -> Result<Vec<usize>, sqlx::Error> {
    let kinds: Vec<&str> = asked.iter().map(|p| p.on.kind()).collect();
    let objects: Vec<&str> = asked.iter().map(|p| p.object.as_str()).collect();
    let privileges: Vec<&str> = asked.iter().map(|p| p.privilege.as_str()).collect();
    let columns: Vec<&str> = asked
        .iter()
        .map(|p| p.column.as_deref().unwrap_or(""))
        .collect();
    // A column by its number: `has_column_privilege` by name raises an error for a column that
    // does not exist; by a number it finds no column for, NULL.
    let found: Vec<i64> = sqlx::query_scalar(
        "SELECT w.i FROM ROWS FROM (pg_catalog.unnest($1::text[]), pg_catalog.unnest($2::text[]), \
           pg_catalog.unnest($3::text[]), pg_catalog.unnest($4::text[])) WITH ORDINALITY AS w(kind, object, privilege, col, i) \
         WHERE NOT coalesce(CASE \
           WHEN w.kind OPERATOR(pg_catalog.=) 'function' THEN \
             pg_catalog.has_function_privilege(pg_catalog.to_regprocedure(w.object), w.privilege) \
           WHEN w.kind OPERATOR(pg_catalog.=) 'sequence' THEN \
             pg_catalog.has_sequence_privilege(pg_catalog.to_regclass(w.object), w.privilege) \
           WHEN w.col OPERATOR(pg_catalog.=) '' THEN \
             pg_catalog.has_table_privilege(pg_catalog.to_regclass(w.object), w.privilege) \
           ELSE pg_catalog.has_column_privilege(pg_catalog.to_regclass(w.object), \
             (SELECT a.attnum FROM pg_catalog.pg_attribute a \
               WHERE a.attrelid OPERATOR(pg_catalog.=) pg_catalog.to_regclass(w.object) \
                 AND a.attname::text OPERATOR(pg_catalog.=) w.col AND NOT a.attisdropped), w.privilege) END, true) \
         ORDER BY w.i",
    )
    .persistent(false)
    .bind(&kinds)
    .bind(&objects)
    .bind(&privileges)
    .bind(&columns)
    .fetch_all(pool)
    .await?;
    Ok(found.into_iter().map(|i| i as usize - 1).collect())
}
