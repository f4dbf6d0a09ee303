//! What the database's schema holds, for `check --database-url` (which decides what is missing):
//! the tables a role may not read ([`unreadable_tables`]) or holds no privilege on at all
//! ([`invisible_tables`]), the columns of the current schema ([`columns`]), the tables carrying
//! the change feed's trigger ([`change_feed_triggers`]), whether a function exists
//! ([`function_exists`]) and runs as its owner ([`runs_as_owner_pinned`]), and whether every
//! role may create in the schema ([`open_to_create`]). Each is one statement in a transaction of
//! its own through [`Db`], unnamed.

use crate::stores::db::Db;

/// Those of `tables` that exist and this role may not read (`has_table_privilege`).
pub async fn unreadable_tables(pool: &Db, tables: &[&str]) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT t FROM unnest($1::text[]) t \
         WHERE NOT coalesce(has_table_privilege(to_regclass(t), 'SELECT'), true)",
    )
    .persistent(false)
    .bind(tables)
    .fetch_all(pool)
    .await
}

/// Those of `tables` that exist and on none of whose columns this role holds a privilege
/// (`has_any_column_privilege`): information_schema lists none of their columns, which is not a
/// missing column. A role that may only insert, or read some columns, sees the table.
pub async fn invisible_tables(pool: &Db, tables: &[&str]) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT t FROM unnest($1::text[]) t WHERE NOT coalesce(has_any_column_privilege(\
         to_regclass(t), 'SELECT, INSERT, UPDATE, REFERENCES'), true)",
    )
    .persistent(false)
    .bind(tables)
    .fetch_all(pool)
    .await
}

/// Every (table, column) of the current schema (`information_schema`: a table this role may not
/// read lists none).
pub async fn columns(pool: &Db) -> Result<Vec<(String, String)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT table_name::text, column_name::text FROM information_schema.columns WHERE table_schema = current_schema()",
    ).persistent(false)
    .fetch_all(pool)
    .await
}

/// The tables of the current schema on which the change feed's trigger (`rbac_gateway_change`)
/// exists and is enabled.
pub async fn change_feed_triggers(pool: &Db) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid \
         WHERE t.tgname = 'rbac_gateway_change' AND NOT t.tgisinternal AND t.tgenabled <> 'D' \
         AND c.relnamespace = current_schema()::regnamespace",
    )
    .persistent(false)
    .fetch_all(pool)
    .await
}

/// Whether the function `signature` (`name(type, ...)`) exists, runs as its owner (`SECURITY
/// DEFINER`) and has its own `search_path` of exactly `pg_catalog, pg_temp` (so nothing a caller
/// creates, a temporary table or a function in a schema it may write, stands in for one of its
/// names; it names its tables with their schema: migration 0017); false when it does not exist.
pub async fn runs_as_owner_pinned(pool: &Db, signature: &str) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT coalesce((SELECT prosecdef AND 'search_path=pg_catalog, pg_temp' = ANY(proconfig) \
         FROM pg_proc WHERE oid = to_regprocedure($1)), false)",
    )
    .persistent(false)
    .bind(signature)
    .fetch_one(pool)
    .await
}

/// Whether every role (PUBLIC) may create objects in the current schema: PostgreSQL's default
/// before version 15, which lets any role define a function that an unqualified call of another
/// role's resolves to (CVE-2018-1058).
/// The current schema's name when it is so; None otherwise.
pub async fn open_to_create(pool: &Db) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT current_schema()::text WHERE has_schema_privilege('public', current_schema(), 'CREATE')",
    )
    .persistent(false)
    .fetch_optional(pool)
    .await
}

/// Whether the function `signature` (`name(type, ...)`, as `to_regprocedure` reads it) exists.
pub async fn function_exists(pool: &Db, signature: &str) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT to_regprocedure($1) IS NOT NULL")
        .persistent(false)
        .bind(signature)
        .fetch_one(pool)
        .await
}
