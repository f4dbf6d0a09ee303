//! `check --database-url`'s look at the privileges of the role it runs as: each that
//! deploy/gateway-grants.sql gives `serve`'s login (`rbac_gateway_serve`) and the role lacks is
//! an error. The file is read into the binary, so what `check` asks is what the file grants: a
//! grant added there is checked without a second list to keep.

use super::{diag, failure, Exit, Severity};
use crate::policy::mapping::Diagnostic;
use crate::stores::db::quote_ident;
use crate::stores::privileges::{Found, On, Privilege};

/// The grants an operator runs as the tables' owner (README, "Grants").
const GRANTS_SQL: &str = include_str!("../../../deploy/gateway-grants.sql");

/// The role the file grants to.
const ROLE: &str = "rbac_gateway_serve";

/// Objects whose privileges another part of `check` names: the schema's migrations (a warning:
/// `migrate` grants it), and Console's flag promotions (granted only where the table exists,
/// said by the invariants' section).
const SAID_ELSEWHERE: &[&str] = &["_sqlx_migrations", "console_flag_promotions"];

/// One `GRANT ... TO rbac_gateway_serve` of the file, as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Grant {
    pub on: On,
    /// The tables, sequences or function signatures it names.
    pub objects: Vec<String>,
    /// Each privilege, with the columns it is limited to (none: the whole table).
    pub privileges: Vec<(String, Vec<String>)>,
}

/// Every `GRANT ... TO rbac_gateway_serve` of deploy/gateway-grants.sql, in its order.
pub(super) fn grants() -> Vec<Grant> {
    grants_in(GRANTS_SQL, ROLE)
}

/// Every `GRANT ... TO role` of `sql`, in its order.
fn grants_in(sql: &str, role: &str) -> Vec<Grant> {
    statements(sql)
        .iter()
        .filter_map(|s| parse(&s[grant_at(s)?..], role))
        .collect()
}

/// The file's statements, `--` comments taken out, whitespace made single spaces, empty ones
/// left out (a `DO` block's inner statements are statements here too).
fn statements(sql: &str) -> Vec<String> {
    let text: String = sql
        .lines()
        .map(|l| l.split("--").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join(" ");
    text.split(';')
        .map(|s| s.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|s| !s.is_empty())
        .collect()
}

/// Where in `statement` its `GRANT` begins, the keyword in any case (a `GRANT` inside a `DO`
/// block's `IF` follows its `THEN`).
fn grant_at(statement: &str) -> Option<usize> {
    statement.to_ascii_uppercase().find("GRANT ")
}

/// `GRANT <privileges> ON [FUNCTION|SEQUENCE] <objects> TO <role>`; `None` for a statement to
/// another role.
fn parse(statement: &str, role: &str) -> Option<Grant> {
    // Keywords in any case; names as written.
    let upper = statement.to_ascii_uppercase();
    let to = format!(" TO {}", role.to_ascii_uppercase());
    if !upper.starts_with("GRANT ") || !upper.ends_with(&to) {
        return None;
    }
    let on_at = upper.find(" ON ")?;
    let privileges = &statement["GRANT ".len()..on_at];
    let objects = &statement[on_at + " ON ".len()..statement.len() - to.len()];
    let keyword = |kw: &str| {
        objects
            .get(..kw.len())
            .filter(|w| w.eq_ignore_ascii_case(kw))
            .map(|_| &objects[kw.len()..])
    };
    let (on, objects) = if let Some(f) = keyword("FUNCTION ") {
        (On::Function, f)
    } else if let Some(s) = keyword("SEQUENCE ") {
        (On::Sequence, s)
    } else {
        (On::Table, objects)
    };
    let privileges = split_top(privileges)
        .into_iter()
        .map(|p| match p.split_once('(') {
            None => (p.to_ascii_uppercase(), Vec::new()),
            Some((name, cols)) => (
                name.trim().to_ascii_uppercase(),
                cols.trim_end_matches(')')
                    .split(',')
                    .map(|c| c.trim().to_string())
                    .collect(),
            ),
        })
        .collect();
    Some(Grant {
        on,
        objects: split_top(objects).into_iter().map(str::to_string).collect(),
        privileges,
    })
}

/// `s` split at each comma outside parentheses, each part trimmed.
fn split_top(s: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0usize, 0);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                parts.push(s[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(s[start..].trim());
    parts
}

/// Each privilege of [`grants`] one by one: a column's privilege per column.
fn asked() -> Vec<Privilege> {
    asked_of(grants())
}

/// Each privilege of `grants` one by one, but those [`SAID_ELSEWHERE`].
fn asked_of(grants: Vec<Grant>) -> Vec<Privilege> {
    let mut out = Vec::new();
    for grant in grants {
        for object in &grant.objects {
            if SAID_ELSEWHERE.contains(&object.as_str()) {
                continue;
            }
            for (privilege, columns) in &grant.privileges {
                let one = |column: Option<&String>| Privilege {
                    on: grant.on,
                    object: object.clone(),
                    privilege: privilege.clone(),
                    column: column.cloned(),
                };
                if columns.is_empty() {
                    out.push(one(None));
                } else {
                    out.extend(columns.iter().map(|c| one(Some(c))));
                }
            }
        }
    }
    out
}

/// Whether deploy/gateway-grants.sql grants `serve`'s login a privilege on `table`.
pub(super) fn granted_on(table: &str) -> bool {
    grants()
        .iter()
        .any(|g| g.on == On::Table && g.objects.iter().any(|o| o == table))
}

/// What PostgreSQL's `relkind` names, said.
pub(super) fn relation_kind(relkind: &str) -> &'static str {
    match relkind {
        "v" => "a view",
        "f" => "a foreign table",
        "c" => "a composite type",
        "i" | "I" => "an index",
        "S" => "a sequence",
        "m" => "a materialized view",
        "t" => "a TOAST table",
        _ => "a relation of another kind",
    }
}

/// `message` about the database, an error of `file` in `out`.
fn error(out: &mut Vec<Diagnostic>, file: &str, message: String) {
    out.push(diag(
        file,
        0,
        0,
        Severity::Error,
        format!("database: {message}"),
    ));
}

/// A read of this role's privileges that failed: `check` cannot go on.
fn unread(e: sqlx::Error) -> Exit {
    failure(anyhow::Error::new(e).context("cannot read this role's privileges"))
}

/// Each privilege deploy/gateway-grants.sql gives `serve`'s login that this role lacks, an error
/// in `out`, one per object and privilege (a column privilege's columns together), with the
/// `GRANT` that mends it. Where this role does not hold `rbac_gateway_serve`'s privileges at all
/// (the role does not exist, this one is no member of it, or a role on the way does not inherit),
/// that one error with its fix instead: a `GRANT` to the role would change nothing. A sequence
/// missing or a table's name held by another kind of relation is named as such. Whether this
/// role holds none of the role's privileges (that one error said).
pub(super) async fn lacking(
    pool: &crate::stores::db::Db,
    file: &str,
    out: &mut Vec<Diagnostic>,
) -> Result<bool, Exit> {
    let asked = asked();
    // (on, object, privilege, columns): a column privilege's columns together.
    let mut said: Vec<(On, &str, &str, Vec<&str>)> = Vec::new();
    let mut not_tables: Vec<&str> = Vec::new();
    for (i, found) in crate::stores::privileges::lacking(pool, &asked)
        .await
        .map_err(unread)?
    {
        let p = &asked[i];
        match found {
            Found::NoSequence => error(out, file, format!(
                "sequence {} is missing, or is not a sequence: `serve`'s writes that take a value of it fail (make it again as the role that ran `migrate`, as its migration made it)",
                p.object
            )),
            // Console's: named by `rbac_gateway_console_code` (`database::console_code`).
            Found::NotATable(_)
                if crate::stores::schema::CONSOLE_TABLES
                    .iter()
                    .any(|(t, _)| *t == p.object) => {}
            Found::NotATable(relkind) => {
                if !not_tables.contains(&p.object.as_str()) {
                    error(out, file, format!(
                        "{} is {}, not the table `serve` uses: `serve`'s statements on it fail, or run what its owner wrote (the gateway's table must be put back in its place, as the role that ran `migrate`: its migration made it, and `migrate` does not make it again)",
                        p.object,
                        relation_kind(&relkind)
                    ));
                    not_tables.push(&p.object);
                }
            }
            Found::Lacking => {
                let column = p.column.as_deref();
                match said
                    .iter_mut()
                    .find(|s| s.0 == p.on && s.1 == p.object && s.2 == p.privilege)
                {
                    Some(s) => s.3.extend(column),
                    None => said.push((p.on, &p.object, &p.privilege, column.into_iter().collect())),
                }
            }
        }
    }
    if said.is_empty() {
        return Ok(false);
    }
    let m = crate::stores::privileges::membership(pool, ROLE)
        .await
        .map_err(unread)?;
    if let Some(why) = holds_none(&m) {
        error(
            out,
            file,
            format!(
                "this role lacks {} of the privileges deploy/gateway-grants.sql gives {ROLE}: {why}",
                said.len()
            ),
        );
        return Ok(true);
    }
    let schema = crate::stores::db::quoted_schema();
    for (on, object, privilege, columns) in said {
        let columns = if columns.is_empty() {
            String::new()
        } else {
            format!(" ({})", columns.join(", "))
        };
        let on = match on {
            On::Table => "",
            On::Function => "function ",
            On::Sequence => "sequence ",
        };
        error(out, file, format!(
            "this role lacks {privilege}{columns} on {on}{object}, which `serve` uses: `GRANT {privilege}{columns} ON {}{schema}.{object} TO {ROLE}` (deploy/gateway-grants.sql)",
            on.to_uppercase()
        ));
    }
    Ok(false)
}

/// Whether this role may use the gateway's schema; where it may not, that error in `out`, with
/// its fix: the schema named, `USAGE` granted to `rbac_gateway_serve`, or this role given that
/// role's privileges.
pub(super) async fn uses_schema(
    pool: &crate::stores::db::Db,
    file: &str,
    out: &mut Vec<Diagnostic>,
) -> Result<bool, Exit> {
    let (exists, uses) = crate::stores::privileges::uses_schema(pool)
        .await
        .map_err(unread)?;
    if uses {
        return Ok(true);
    }
    let schema = crate::stores::db::quoted_schema();
    let message = if !exists {
        format!("schema {schema} does not exist, or this role may not see it: RBAC_GATEWAY_DATABASE_SCHEMA names the schema that holds the gateway's tables (default public)")
    } else {
        let m = crate::stores::privileges::membership(pool, ROLE)
            .await
            .map_err(unread)?;
        let grant = format!("`GRANT USAGE ON SCHEMA {schema} TO {ROLE}` as the schema's owner");
        match holds_none(&m) {
            Some(why) => format!("this role may not use schema {schema}, where `serve` finds every table and function, and {why}; then, where {ROLE} lacks it too, {grant}"),
            None => format!("this role may not use schema {schema}, where `serve` finds every table and function: {grant}"),
        }
    };
    error(out, file, message);
    Ok(false)
}

/// Why this role holds none of `rbac_gateway_serve`'s privileges, with the fix; `None` where it
/// holds them. A `GRANT` to that role would change nothing for it.
fn holds_none(m: &crate::stores::privileges::Membership) -> Option<String> {
    let login = quote_ident(&m.login);
    let admin = "by a role with ADMIN OPTION on it (before PostgreSQL 16, CREATEROLE is enough)";
    if !m.exists {
        return Some(format!(
            "role {ROLE} does not exist: make it by running deploy/gateway-grants.sql as the tables' owner (it creates the role where the owner has CREATEROLE; otherwise first `CREATE ROLE {ROLE} NOLOGIN` as a role that has), then `GRANT {ROLE} TO {login}` {admin}"
        ));
    }
    if !m.member {
        return Some(format!(
            "this role ({}) is not a member of {ROLE}: `GRANT {ROLE} TO {login}` {admin}",
            m.login
        ));
    }
    if m.inherits {
        return None;
    }
    let fix = if m.per_grant {
        format!("a grant on the way is WITH INHERIT FALSE: `GRANT {ROLE} TO {login} WITH INHERIT TRUE` {admin} (and so for each role between)")
    } else {
        let alter: Vec<String> = m
            .noinherit
            .iter()
            .map(|r| format!("`ALTER ROLE {} INHERIT`", quote_ident(r)))
            .collect();
        format!(
            "NOINHERIT on {}: {}",
            m.noinherit.join(", "),
            alter.join(", ")
        )
    };
    Some(format!(
        "this role ({}) is a member of {ROLE} that does not inherit its privileges, and `serve` never sets its role ({fix})",
        m.login
    ))
}

/// deploy/lookup-grants.sql, read into the binary as deploy/gateway-grants.sql is.
const LOOKUP_GRANTS_SQL: &str = include_str!("../../../deploy/lookup-grants.sql");

/// The role deploy/lookup-grants.sql grants to.
const LOOKUP_ROLE: &str = "rbac_gateway_lookup";

/// `check --lookup-database-url`, connected as that login: each thing of the gateway's it may
/// write or run that the owner of Console's tables may not
/// ([`crate::stores::privileges::beyond_consoles`]: Console's code on a cold lookup could, so
/// the login fences nothing), each privilege deploy/lookup-grants.sql gives
/// `rbac_gateway_lookup` that it lacks (a cold lookup would fail), and a URL that reaches a
/// standby or another database than `main`, `--database-url`'s where it was given
/// ([`crate::stores::reach::misplaced`]), an error each in `out`.
pub(super) async fn lookup_login(
    pool: &crate::stores::db::Db,
    main: Option<&crate::stores::reach::Reach>,
    file: &str,
    out: &mut Vec<Diagnostic>,
) -> Result<(), Exit> {
    match crate::stores::reach::reach(pool).await {
        Ok(reach) => {
            for wrong in crate::stores::reach::misplaced(main, &reach) {
                error(out, file, wrong);
            }
        }
        Err(e) => out.push(diag(file, 0, 0, Severity::Warning, format!(
            "database: cannot ask which server --lookup-database-url reaches ({e}): not checked that it is the primary's, and --database-url's database"
        ))),
    }
    let beyond = crate::stores::privileges::beyond_consoles(pool)
        .await
        .map_err(unread)?;
    for what in beyond {
        error(out, file, format!(
            "--lookup-database-url's login may {what}, which the owner of Console's tables may not: Console's code that runs on a cold lookup (a retyped column's cast, an index expression) could use it, forging a delivered break-glass alert (I-4) or audit row (I-5); give that login `{LOOKUP_ROLE}` alone (deploy/lookup-grants.sql), not the serve login's roles"
        ));
    }
    let asked = asked_of(grants_in(LOOKUP_GRANTS_SQL, LOOKUP_ROLE));
    let lacking = crate::stores::privileges::lacking(pool, &asked)
        .await
        .map_err(unread)?;
    for (i, found) in lacking {
        if found != Found::Lacking {
            continue;
        }
        let p = &asked[i];
        let column = p
            .column
            .as_deref()
            .map(|c| format!(" ({c})"))
            .unwrap_or_default();
        error(out, file, format!(
            "--lookup-database-url's login lacks {}{column} on {}, which a lookup uses: run deploy/lookup-grants.sql as the tables' owner and `GRANT {LOOKUP_ROLE} TO` the login",
            p.privilege, p.object
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every statement of the file is one this parse knows: a `GRANT` to `serve`'s role it reads,
    /// or one that grants nothing (the transaction, the role made, the privileges revoked before
    /// the grants, the `DO` block granting Console's flag promotions where they exist). A
    /// statement of another kind added to the file (a `REVOKE` after the grants, a block
    /// comment) fails here rather than being asked or missed.
    #[test]
    fn every_statement_of_the_file_is_read() {
        assert!(!GRANTS_SQL.contains("/*"));
        let mut read = 0;
        for statement in statements(GRANTS_SQL) {
            let upper = statement.to_ascii_uppercase();
            if let Some(at) = grant_at(&statement) {
                let grant = parse(&statement[at..], ROLE)
                    .unwrap_or_else(|| panic!("not read: {statement}"));
                if at > 0 {
                    assert!(
                        upper.starts_with("DO $$ BEGIN IF TO_REGCLASS('CONSOLE_FLAG_PROMOTIONS')"),
                        "{statement}"
                    );
                    assert_eq!(grant.objects, ["console_flag_promotions"]);
                }
                read += 1;
            } else {
                let known = [
                    "BEGIN",
                    "COMMIT",
                    "END IF",
                    "END",
                    "END $$",
                    "END IF; END $$",
                ];
                let made = upper.starts_with("DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM PG_ROLES")
                    || upper.starts_with("EXCEPTION WHEN DUPLICATE_OBJECT")
                    || upper.starts_with("DO $$ BEGIN EXECUTE FORMAT('REVOKE ALL ON ALL")
                    || upper.starts_with("EXECUTE FORMAT('REVOKE ALL ON ALL");
                assert!(
                    known.contains(&upper.as_str()) || made,
                    "not read: {statement}"
                );
            }
        }
        assert!(read >= 25, "{read}");
        assert_eq!(grants().len(), read);
        // Keywords in any case; a statement to another role is not asked.
        assert_eq!(
            parse("grant select, Insert on t to rbac_gateway_serve", ROLE),
            Some(Grant {
                on: On::Table,
                objects: vec!["t".into()],
                privileges: vec![("SELECT".into(), vec![]), ("INSERT".into(), vec![])],
            })
        );
        assert_eq!(
            parse("GRANT SELECT ON t TO rbac_gateway_reader", ROLE),
            None
        );
    }

    /// What `check` asks is what the database can answer: each privilege one PostgreSQL names
    /// on its own (not `ALL`), each function's arguments types alone (`to_regprocedure` refuses
    /// an argument's name).
    #[test]
    fn each_privilege_asked_is_one_the_database_answers() {
        let known = ["SELECT", "INSERT", "UPDATE", "DELETE", "EXECUTE", "USAGE"];
        for p in asked() {
            assert!(known.contains(&p.privilege.as_str()), "{p:?}");
            if p.on == On::Function {
                let (_, args) = p.object.split_once('(').expect("a signature");
                for arg in args.trim_end_matches(')').split(',') {
                    let arg = arg.trim();
                    assert!(
                        !arg.is_empty()
                            && arg
                                .chars()
                                .all(|c| c.is_ascii_alphanumeric() || "_[]".contains(c)),
                        "{p:?}"
                    );
                }
            }
        }
    }

    /// A function's signature keeps its commas, a table list is split, a column list is kept
    /// with its privilege; the alert pass's column grants are among those asked.
    #[test]
    fn grants_are_read_as_written() {
        let grants = grants();
        let plain = grants
            .iter()
            .find(|g| g.objects == ["rbac_gateway_plain(TEXT[], TEXT[])"])
            .expect("the function's grant");
        assert_eq!(plain.on, On::Function);
        assert_eq!(plain.privileges, [("EXECUTE".to_string(), vec![])]);
        let two = grants
            .iter()
            .find(|g| g.objects.len() == 2 && g.on == On::Function)
            .expect("two functions in one grant");
        assert_eq!(
            two.objects,
            [
                "rbac_gateway_guard_writes(TEXT[])",
                "rbac_gateway_console_code(OID, TEXT[], TEXT[], TEXT[])"
            ]
        );
        let catalogue = grants
            .iter()
            .find(|g| g.objects.first().map(String::as_str) == Some("rbac_groups"))
            .expect("the catalogue's grant");
        assert_eq!(catalogue.objects.len(), 7);
        assert!(grants.iter().any(|g| g.on == On::Sequence
            && g.objects == ["rbac_change_log_id_seq"]
            && g.privileges == [("USAGE".to_string(), vec![])]));
        let asked = asked();
        for column in ["raised_at_utc", "erasure_keys", "session_ends_at_utc"] {
            assert!(
                asked.iter().any(|p| p.object == "rbac_gateway_alerts"
                    && p.privilege == "UPDATE"
                    && p.column.as_deref() == Some(column)),
                "{column}"
            );
        }
        assert!(asked.iter().any(|p| p.object == "access_audit_events"
            && p.privilege == "INSERT"
            && p.column.is_none()));
        assert!(!asked
            .iter()
            .any(|p| SAID_ELSEWHERE.contains(&p.object.as_str())));
    }

    /// Every table the file grants on (but those said elsewhere) is one `check` looks at, and
    /// every column a grant names is among that table's columns: the lists of `check` keep up
    /// with the grants.
    #[test]
    fn each_table_and_column_granted_is_one_check_looks_at() {
        for p in asked().iter().filter(|p| p.on == On::Table) {
            let (_, columns) = super::super::all_tables()
                .find(|(t, _)| *t == p.object)
                .unwrap_or_else(|| panic!("{} is not in check's tables", p.object));
            if let Some(c) = &p.column {
                assert!(columns.contains(&c.as_str()), "{}.{c}", p.object);
            }
        }
    }
}
