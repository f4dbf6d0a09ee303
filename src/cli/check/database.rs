//! `check --database-url`'s lints of the gateway's own objects in the shared database: its
//! functions and triggers as the migrations leave them, and the trust boundary (what another
//! role may plant where the gateway's names resolve, and what of the gateway's it may run).

use anyhow::Context;

use super::{diag, failure, Exit, Severity};
use crate::stores::schema as db_schema;

/// The schema against this binary's migrations, as `/readyz` compares them: one not applied as
/// this binary has it, or failed, is an error (this binary's statements need it); a newer
/// release's, or a table this role may not read, a warning. `check` only: a `mapping push`
/// needs none of it. Where the table was refused to this role, the warning's place in `out`
/// and the error, for a better fix than the grant file's once the membership is known
/// ([`unreadable_as_no_member`]).
pub(super) async fn migrations(
    pool: &crate::stores::db::Db,
    file: &str,
    out: &mut Vec<crate::policy::mapping::Diagnostic>,
) -> Option<(usize, sqlx::Error)> {
    match crate::stores::migrations::schema_state(pool).await {
        Ok(state) => {
            for line in state.blocking() {
                out.push(diag(file, 0, 0, Severity::Error, line));
            }
            if let Some(ahead) = state.ahead() {
                out.push(diag(file, 0, 0, Severity::Warning, ahead));
            }
            None
        }
        Err(e) => {
            out.push(diag(
                file,
                0,
                0,
                Severity::Warning,
                crate::stores::migrations::schema_unreadable(&e),
            ));
            let refused =
                matches!(&e, sqlx::Error::Database(d) if d.code().as_deref() == Some("42501"));
            refused.then(|| (out.len() - 1, e))
        }
    }
}

/// The warning of [`migrations`] said again for a role that holds none of `serve`'s role's
/// privileges (no member, a role on the way that does not inherit): the grant file's `SELECT`
/// would change nothing for it; the membership's error names the fix.
pub(super) fn unreadable_as_no_member(e: &sqlx::Error) -> String {
    format!(
        "database schema: its migrations were not read, so not compared with this binary's: {e} (this role holds none of rbac_gateway_serve's privileges: the error on its membership names the fix)"
    )
}

/// The gateway's functions: the triggers' run as their owner with a pinned search_path, the
/// lookups' exist; each that does not is an error in `out`.
pub(super) async fn functions(
    pool: &crate::stores::db::Db,
    file: &str,
    out: &mut Vec<crate::policy::mapping::Diagnostic>,
) -> Result<(), Exit> {
    // The triggers on Console's tables write the gateway's tables for Console's role, which has
    // no grant there: they run as their owner, with a search_path of pg_catalog and pg_temp only,
    // so nothing the caller creates stands in for a name they use (migrations 0017, 0019).
    for function in [
        "rbac_gateway_log_change()",
        "rbac_gateway_record_group_change(text, text, text)",
        "rbac_gateway_record_group_change(text, text, text, text[])",
        "rbac_gateway_break_glass_roles()",
        "rbac_gateway_break_glass_change()",
        "rbac_gateway_erase_admin()",
    ] {
        let pinned = db_schema::runs_as_owner_pinned(pool, function)
            .await
            .context("cannot read the functions")
            .map_err(failure)?;
        if !pinned {
            out.push(diag(
                file,
                0,
                0,
                Severity::Error,
                format!("database: function {function} is missing, or not SECURITY DEFINER with search_path exactly pg_catalog, pg_temp (Console's writes to the tables it watches then fail, or what a caller creates can stand in for a name it uses and run as its owner; run `rbac-gateway migrate`?)"),
            ));
        }
    }
    // Every trigger of the gateway's, as migrate made it: the owner of Console's tables may
    // drop, disable or re-create those on its tables.
    let silent = db_schema::silenced_triggers_without_jit(pool)
        .await
        .context("cannot read the triggers")
        .map_err(failure)?;
    let tables: Vec<&str> = silent
        .iter()
        .filter_map(|s| s.trigger.split_once(" on ").map(|(_, table)| table))
        .collect();
    let kinds = crate::stores::privileges::relation_kinds(pool, &tables)
        .await
        .context("cannot read the tables")
        .map_err(failure)?;
    for silenced in &silent {
        let trigger = &silenced.trigger;
        // A trigger whose table is gone, or is no table, is made only once the table is back.
        let table = trigger.split_once(" on ").map_or("", |(_, t)| t);
        let kind = kinds
            .iter()
            .find(|(t, _)| t == table)
            .map(|(_, k)| k.as_str());
        if !matches!(kind, Some("r" | "p")) {
            let what = match kind {
                None => "is missing".to_string(),
                Some(k) => format!("is not a table ({})", super::grants::relation_kind(k)),
            };
            out.push(diag(
                file,
                0,
                0,
                Severity::Error,
                format!("database: trigger {trigger} is missing: its table {what}, so what it records or refuses goes unrecorded or unrefused (once the table is back in its place, `rbac-gateway migrate`, run again as the role that first ran it, makes the trigger again)"),
            ));
            continue;
        }
        let how = match silenced.silence {
            db_schema::Silence::Missing => "is missing",
            db_schema::Silence::Off => "does not fire (disabled, or for replicas only, on its table or one of its partitions)",
            db_schema::Silence::Altered => "is not as migrate made it (another function, other events or arguments, a WHEN condition or an UPDATE OF list)",
            db_schema::Silence::Constraint => "is not as migrate made it (a constraint trigger under its name)",
            db_schema::Silence::Clone => {
                out.push(diag(
                    file,
                    0,
                    0,
                    Severity::Error,
                    format!("database: trigger {trigger} is not as migrate made it, and is a clone of the trigger of its name on {} (Console made the table its partition): what it records or refuses goes unrecorded or unrefused; only that trigger changes it (drop it, or detach the table, then run `rbac-gateway migrate`)", silenced.parent.as_deref().unwrap_or("the table's parent")),
                ));
                continue;
            }
        };
        out.push(diag(
            file,
            0,
            0,
            Severity::Error,
            format!("database: trigger {trigger} {how}: what it records or refuses goes unrecorded or unrefused (`rbac-gateway migrate`, run again as the role that first ran it, which owns the trigger's function and must act as the table's owner, makes it again; or, as that role: `{}`)", silenced.remake_trigger().unwrap_or_default()),
        ));
    }
    // The functions the lookups call (migrations 0011, 0012, 0014), and the guard of the
    // writes to Console's tables (0034). 0015's generic plan is
    // speed, not correctness: a database without it answers alike, so it is not checked.
    for function in [
        "rbac_gateway_principal(text, boolean)",
        "rbac_gateway_ticket_grants(text, integer, text[])",
        "rbac_gateway_session_principals(text[], boolean)",
        "rbac_gateway_console_code(oid, text[], text[], text[])",
        "rbac_gateway_guard_writes(text[])",
        "rbac_gateway_plain(text[], text[])",
    ] {
        let found = db_schema::function_exists(pool, function)
            .await
            .context("cannot read the functions")
            .map_err(failure)?;
        if !found {
            out.push(diag(
                file,
                0,
                0,
                Severity::Error,
                format!("database: function {function} is missing (run `rbac-gateway migrate`?)"),
            ));
        }
    }
    Ok(())
}

/// What of another role's would run as the gateway where it reads Console's tables (the
/// columns it reads: `db_schema::CONSOLE_TABLES`) or writes them (`db_schema::CONSOLE_WRITTEN`):
/// each an error in `out`. The owner of Console's tables may attach code to them that runs as
/// whoever reads or writes them (migration 0034): the gateway's lookups then fail closed (row
/// security), or its writes refuse to run (`rbac_gateway_guard_writes`); either way named here.
/// A role that may not look is an error too: the catalogue is read only after the look.
pub(super) async fn console_code(
    pool: &crate::stores::db::Db,
    file: &str,
    out: &mut Vec<crate::policy::mapping::Diagnostic>,
) -> Result<(), Exit> {
    let Some(findings) = db_schema::console_code_anywhere(pool)
        .await
        .context("cannot read what runs on Console's tables")
        .map_err(failure)?
    else {
        // No look, no read: the catalogue's names (`unknown_names`) are read only after it.
        out.push(diag(
            file,
            0,
            0,
            Severity::Error,
            "database: Console's tables are not read here: this role may not run rbac_gateway_console_code, which looks first for code of another role's on them that a read would run as this role, so the mapping's role and permission names are not checked against Console's catalogue (deploy/mapping-grants.sql grants it to rbac_gateway_reader and rbac_mapping_pusher; deploy/gateway-grants.sql to rbac_gateway_serve)".to_string(),
        ));
        return Ok(());
    };
    for finding in findings {
        out.push(diag(
            file,
            0,
            0,
            Severity::Error,
            format!("database: {finding}"),
        ));
    }
    Ok(())
}

/// `check --database-url`'s lints of the trust boundary in the shared database: each finding
/// named, with its fix. Errors: a function of the gateway's whose `search_path` is not pinned,
/// or that PUBLIC may run; a function under one of the gateway's names that another role owns.
/// Warnings: a `SECURITY DEFINER` function of another's that PUBLIC may run, a function or
/// operator named as a built-in the gateway calls in a schema on its path, a schema on the path
/// that a role other than its owner may create in.
pub(super) async fn trust_boundary(
    pool: &crate::stores::db::Db,
    file: &str,
) -> Result<Vec<crate::policy::mapping::Diagnostic>, Exit> {
    let mut out = Vec::new();
    let schemas = db_schema::path_schemas(pool)
        .await
        .context("cannot read the search_path")
        .map_err(failure)?;
    for function in db_schema::unpinned_functions(pool)
        .await
        .context("cannot read the functions")
        .map_err(failure)?
    {
        out.push(diag(file, 0, 0, Severity::Error, format!(
            "database: function {function} has no pinned search_path or runs with row-level security: its unqualified names resolve through the caller's path, where another role may define a better match, or a policy on a table of Console's it reads runs as its caller or owner (run `rbac-gateway migrate`, or `ALTER FUNCTION {function} SET search_path = pg_catalog, pg_temp` and `SET row_security = off`, and name its tables with their schema)"
        )));
    }
    for function in db_schema::unrestricted_functions(pool)
        .await
        .context("cannot read the functions")
        .map_err(failure)?
    {
        out.push(diag(file, 0, 0, Severity::Error, format!(
            concat!("database: function {0} would open a view or foreign table in place of a table it reads: code of Console's role in that view runs as the function's caller or owner (run `rbac-gateway migrate` as the function's owner, or `ALTER ROUTINE {0} SET restrict_nonsystem_relation_kind = '", crate::stores::pool::restricted_kinds!(), "'` as that role)"),
            function
        )));
    }
    if !db_schema::restricts_relation_kinds(pool)
        .await
        .context("cannot read the server's settings")
        .map_err(failure)?
    {
        out.push(diag(file, 0, 0, Severity::Warning, "database: this PostgreSQL has no restrict_nonsystem_relation_kind (it came with 17, 16.4, 15.8, 14.13, 13.16 and 12.20, August 2024): a view Console's role puts in place of one of its tables runs as the serve login on cold lookups, unseen until the alert pass raises an alert; install the server's latest minor release (standbys first), then run `rbac-gateway migrate`".to_string()));
    }
    for function in db_schema::foreign_functions(pool)
        .await
        .context("cannot read the functions")
        .map_err(failure)?
    {
        out.push(diag(file, 0, 0, Severity::Error, format!(
            "database: function {function} has one of the gateway's names but not the owner of its tables: where it matches a call of the gateway's better it runs in its place, and where it has more arguments with defaults the call fails as ambiguous; drop it once you know who made it and why"
        )));
    }
    for (function, definer) in db_schema::public_functions(pool, &schemas)
        .await
        .context("cannot read the functions' privileges")
        .map_err(failure)?
    {
        let gateways = function.starts_with("rbac_gateway_")
            || function.starts_with("rbac_mapping_")
            || function.starts_with("access_audit_events_append_only");
        let runs_as = if definer {
            "runs as its owner and "
        } else {
            ""
        };
        out.push(diag(file, 0, 0, if gateways { Severity::Error } else { Severity::Warning }, format!(
            "database: function {function} {runs_as}may be run by every role (PUBLIC){}: `REVOKE EXECUTE ON FUNCTION {function} FROM PUBLIC`{}",
            if gateways { "; only the roles of deploy/gateway-grants.sql and deploy/mapping-grants.sql need it" } else { "" },
            if gateways { ", or run `rbac-gateway migrate` and those files again" } else { " and grant it to the roles that need it" },
        )));
    }
    for shadow in db_schema::shadows(pool, &schemas)
        .await
        .context("cannot read the functions and operators")
        .map_err(failure)?
    {
        out.push(diag(file, 0, 0, Severity::Warning, format!(
            "database: {shadow} has the name of a built-in the gateway calls: it runs instead of the built-in wherever it matches a call better or its schema comes first on a path (the gateway pins pg_catalog first and qualifies its calls, but other clients may not); drop it unless you know who made it and why"
        )));
    }
    if let Some((console, tables)) = db_schema::console_writes_deliveries(pool)
        .await
        .context("cannot read the privileges on the gateway's tables")
        .map_err(failure)?
    {
        out.push(diag(file, 0, 0, Severity::Warning, format!(
            "database: {console}, the owner of Console's tables, may write {}: it owns them, is a superuser or a member of their owner, or was granted it (one login for Console and the gateway, as a single Heroku credential is): Console's role can then mark a break-glass alert delivered that was never sent (the session proceeds unalerted, I-4) or an audit event delivered that never reached the writer (I-5), and nothing of the gateway's can tell; give the gateway's tables an owner that role is not a member of (README, Upgrade; on Heroku a credential of its own, `heroku pg:credentials:create`)",
            tables.join(" and ")
        )));
    }
    for open in db_schema::open_schemas(pool, &schemas)
        .await
        .context("cannot read the schemas' privileges")
        .map_err(failure)?
    {
        let schema = &open.schema;
        if !open.creators.is_empty() {
            let who = open.creators.join(", ");
            out.push(diag(file, 0, 0, Severity::Warning, format!(
                "database: schema {schema} is on the gateway's path and {who} may create in it: a function or operator made there can stand in for a built-in another client calls (CVE-2018-1058); `REVOKE CREATE ON SCHEMA {schema} FROM {who}` (PostgreSQL 15 gives PUBLIC no CREATE on public)"
            )));
        }
        if let Some(owner) = &open.foreign_owner {
            out.push(diag(file, 0, 0, Severity::Warning, format!(
                "database: schema {schema} is on the gateway's path and owned by {owner}, whom the owner of the gateway's tables is not: {owner} may create in it, and drop or replace what is in it; keep the gateway's tables in a schema their owner owns (`ALTER SCHEMA {schema} OWNER TO` that role)"
            )));
        }
    }
    Ok(out)
}
