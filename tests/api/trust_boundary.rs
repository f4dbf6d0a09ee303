//! The trust boundary in the shared database (docs/design/security.md): Console's database role
//! may create in the schema (PostgreSQL before 15, Heroku's default credential) and may own the
//! database (so set everyone's `search_path`). Nothing it plants there runs as the gateway, and
//! nothing of the gateway's is PUBLIC's to run.
//!
//! - Every built-in the gateway's statements call is written `pg_catalog.name(...)`, and is in
//!   `stores::schema::BUILTINS` (what `check` lints for); every operator they use is in
//!   `stores::schema::OPERATORS`. Both lists are read from the source here, so a new unqualified
//!   call fails this suite.
//! - A shadow of each of those functions and operators (the built-in's own argument types, and
//!   types that match a call better), planted by Console's role with the gateway's login's path
//!   set to put `public` first, never runs: `serve`, `sweep` and `check` answer, write and alert
//!   exactly as on a clean database.
//! - Every function of the gateway's is refused to a login with no grants.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use rbac_gateway::stores::schema::{BUILTINS, OPERATORS};

use crate::helpers::*;
use crate::tickets::grant;

/// Names the SQL grammar turns into a qualified call or that are no function at all: a call of
/// one of these is not resolved through the path.
const SYNTAX: &[&str] = &[
    "any",
    "all",
    "array",
    "coalesce",
    "exists",
    "extract",
    "greatest",
    "in",
    "least",
    "nullif",
    "overlay",
    "position",
    "row",
    "substring",
    "trim",
    "values",
];

/// The text of every string literal in `src/stores/` outside comments: the SQL the gateway
/// sends (only `stores/` speaks SQL: tests/architecture.rs), with the log and error text beside
/// it, which names no built-in followed directly by `(`.
fn store_literals() -> Vec<String> {
    let mut out = Vec::new();
    let mut files = vec![root().join("src/stores")];
    while let Some(path) = files.pop() {
        if path.is_dir() {
            for entry in std::fs::read_dir(&path).unwrap() {
                files.push(entry.unwrap().path());
            }
            continue;
        }
        if path.extension().is_some_and(|e| e == "rs") {
            literals(&std::fs::read_to_string(&path).unwrap(), &mut out);
        }
    }
    out
}

/// The string literals of Rust source `src` (plain and `r#"..."#`), comments skipped.
fn literals(src: &str, out: &mut Vec<String>) {
    let b = src.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i..].starts_with(b"//") {
            i += src[i..].find('\n').unwrap_or(b.len() - i);
        } else if b[i..].starts_with(b"r#\"") {
            let end = src[i + 3..].find("\"#").unwrap() + i + 3;
            out.push(src[i + 3..end].to_string());
            i = end + 2;
        } else if b[i] == b'\'' && i + 2 < b.len() && (b[i + 2] == b'\'' || b[i + 1] == b'\\') {
            // A char literal ('"', '\'', '\\'), not the start of a string.
            i += src[i + 1..].find('\'').unwrap() + 2;
        } else if b[i] == b'"' {
            let mut j = i + 1;
            let mut text = String::new();
            while b[j] != b'"' {
                if b[j] == b'\\' {
                    j += 1;
                }
                text.push(b[j] as char);
                j += 1;
            }
            out.push(text);
            i = j + 1;
        } else {
            i += 1;
        }
    }
}

/// Each `name(` in `sql`: (qualified with `pg_catalog.`, name), SQL string literals skipped.
fn calls(sql: &str) -> Vec<(bool, String)> {
    let sql = without_quoted(sql);
    let b = sql.as_bytes();
    let mut out = Vec::new();
    for (k, _) in sql.match_indices('(') {
        let mut s = k;
        while s > 0 && (b[s - 1].is_ascii_alphanumeric() || b[s - 1] == b'_') {
            s -= 1;
        }
        if s == k || b[s].is_ascii_digit() {
            continue;
        }
        let name = sql[s..k].to_ascii_lowercase();
        let qualified = sql[..s].ends_with("pg_catalog.");
        if !qualified && s > 0 && b[s - 1] == b'.' {
            continue; // another schema's or a column's: not a built-in
        }
        out.push((qualified, name));
    }
    out
}

/// `sql` with its '...' literals emptied.
fn without_quoted(sql: &str) -> String {
    let mut out = String::new();
    let mut quoted = false;
    for c in sql.chars() {
        if c == '\'' {
            quoted = !quoted;
            out.push(c);
        } else if !quoted {
            out.push(c);
        }
    }
    out
}

/// The operator tokens of `sql` (runs of operator characters), SQL string literals skipped.
fn operator_tokens(sql: &str) -> Vec<String> {
    let sql = without_quoted(sql);
    let mut out = Vec::new();
    let mut cur = String::new();
    for c in sql.chars().chain(std::iter::once(' ')) {
        if "+-*/<>=~!@#%^&|`?".contains(c) {
            cur.push(c);
        } else if !cur.is_empty() {
            out.push(std::mem::take(&mut cur));
        }
    }
    out
}

async fn strings(db: &TestDb, sql: &str) -> BTreeSet<String> {
    sqlx::query_scalar::<_, String>(sql)
        .fetch_all(&db.pool)
        .await
        .unwrap()
        .into_iter()
        .collect()
}

/// The names are read from the source: a built-in called without `pg_catalog.` fails here, and
/// so does one missing from `BUILTINS` (which `check` lints shadows of), or an operator missing
/// from `OPERATORS`.
#[tokio::test]
async fn every_builtin_the_gateways_statements_call_is_qualified_and_listed() {
    let db = TestDb::new().await;
    let catalog_functions = strings(
        &db,
        "SELECT DISTINCT proname::text FROM pg_proc WHERE pronamespace = 'pg_catalog'::regnamespace",
    )
    .await;
    let catalog_operators = strings(
        &db,
        "SELECT DISTINCT oprname::text FROM pg_operator WHERE oprnamespace = 'pg_catalog'::regnamespace",
    )
    .await;
    let mut qualified = BTreeSet::new();
    let mut bare = BTreeMap::new();
    let mut operators = BTreeSet::new();
    for sql in store_literals() {
        for (is_qualified, name) in calls(&sql) {
            if is_qualified {
                qualified.insert(name);
            } else if catalog_functions.contains(&name) && !SYNTAX.contains(&name.as_str()) {
                bare.insert(name, sql.clone());
            }
        }
        // Operators: in SQL text only (log and error text beside it uses '/' and '?').
        let sql_like = [
            " FROM ", "SELECT", "WHERE", " AND ", " THEN ", "INSERT", "UPDATE", "DELETE",
        ]
        .iter()
        .any(|k| sql.contains(k));
        operators.extend(
            operator_tokens(if sql_like { &sql } else { "" })
                .into_iter()
                .filter(|t| catalog_operators.contains(t)),
        );
    }
    assert!(
        bare.is_empty(),
        "built-ins called without pg_catalog. (a better match in a schema another role writes would run instead): {bare:#?}"
    );
    let listed: BTreeSet<String> = BUILTINS.iter().map(|s| s.to_string()).collect();
    assert_eq!(
        qualified, listed,
        "stores::schema::BUILTINS must list exactly the built-ins the statements call"
    );
    let listed: BTreeSet<String> = OPERATORS.iter().map(|s| s.to_string()).collect();
    let missing: Vec<&String> = operators.difference(&listed).collect();
    assert!(
        missing.is_empty(),
        "operators the statements use that stores::schema::OPERATORS lacks: {missing:?}"
    );
    // The scan sees what it must: the lookups' and the alert pass's calls.
    assert!(qualified.contains("now") && qualified.contains("format"));
    assert!(operators.contains("=") && operators.contains("||"));
}

/// Types a planted overload is given where the built-in's are polymorphic, and the operand
/// types of planted operators: what the gateway's statements pass, and neighbours that a call
/// would reach by an implicit cast.
const TYPES: &[&str] = &[
    "text",
    "character varying",
    "name",
    "\"char\"",
    "smallint",
    "integer",
    "bigint",
    "double precision",
    "numeric",
    "boolean",
    "timestamp with time zone",
    "timestamp without time zone",
    "interval",
    "xid8",
    "jsonb",
    "json",
    "text[]",
    "oid",
    "regnamespace",
    "regclass",
    "regprocedure",
    "regtype",
    "uuid",
    "bytea",
];

/// One overload of a built-in, as `pg_proc` describes it.
#[derive(sqlx::FromRow)]
struct Overload {
    name: String,
    kind: String,
    args: Vec<String>,
    arg_names: Option<Vec<String>>,
    modes: Option<Vec<String>>,
    defaults: i16,
    result: String,
    set: bool,
}

fn polymorphic(t: &str) -> bool {
    t.starts_with("any") || t == "\"any\""
}

/// `t` with its polymorphic type made `c` (an array type where `t` is one).
fn substitute(t: &str, c: &str) -> String {
    match t {
        "anyarray" | "anycompatiblearray" => {
            if c.ends_with("[]") {
                c.to_string()
            } else {
                format!("{c}[]")
            }
        }
        t if polymorphic(t) => c.to_string(),
        t => t.to_string(),
    }
}

/// The statements that plant every shadow: for each overload of each name in `BUILTINS`, one
/// with its own argument types, one per type of [`TYPES`] in place of its polymorphic ones, and
/// one with its numeric arguments made `integer` or `bigint`; for each operator in `OPERATORS`,
/// one per pg_catalog overload and one per pair of [`TYPES`]. Each logs to `public.shadow_ran`
/// that it ran (or fails its statement where it may not write) and answers NULL.
fn shadow_statements(
    overloads: &[Overload],
    operators: &[(String, String, String, String)],
) -> Vec<String> {
    let mut out = Vec::new();
    let mut n = 0;
    let log = |sig: &str| {
        format!(
            "BEGIN INSERT INTO public.shadow_ran VALUES ({sig:?}, session_user::text, current_setting('application_name')); \
             EXCEPTION WHEN OTHERS THEN RAISE EXCEPTION 'shadow % ran', {sig:?}; END;"
        )
        .replace('"', "'")
    };
    for o in overloads {
        if o.modes
            .as_ref()
            .is_some_and(|m| m.iter().any(|m| m != "i" && m != "v"))
        {
            continue; // OUT arguments: a row type of its own
        }
        let variadic = o
            .modes
            .as_ref()
            .is_some_and(|m| m.last().is_some_and(|m| m == "v"));
        let mut variants: Vec<(Vec<String>, String)> = vec![(o.args.clone(), o.result.clone())];
        if o.args.iter().any(|a| polymorphic(a)) || polymorphic(&o.result) {
            for c in TYPES {
                variants.push((
                    o.args.iter().map(|a| substitute(a, c)).collect(),
                    substitute(&o.result, c),
                ));
            }
        }
        for narrow in ["integer", "bigint"] {
            if o.args
                .iter()
                .any(|a| ["bigint", "double precision", "numeric", "integer"].contains(&a.as_str()))
            {
                let args = o
                    .args
                    .iter()
                    .map(|a| {
                        if ["bigint", "double precision", "numeric", "integer"]
                            .contains(&a.as_str())
                        {
                            narrow.to_string()
                        } else {
                            a.clone()
                        }
                    })
                    .collect();
                variants.push((args, o.result.clone()));
            }
        }
        if variadic && o.args.last().is_some_and(|a| a == "\"any\"") {
            // format(text, VARIADIC "any"): a fixed number of arguments of one type matches better.
            for k in 1..=7 {
                for c in ["text", "integer", "timestamp with time zone"] {
                    let mut args: Vec<String> = o.args[..o.args.len() - 1].to_vec();
                    args.extend(std::iter::repeat_n(c.to_string(), k));
                    variants.push((args, o.result.clone()));
                }
            }
        }
        for (args, result) in variants {
            n += 1;
            let named = args.len() == o.args.len() && !(variadic && args.len() != o.args.len());
            let params: Vec<String> = args
                .iter()
                .enumerate()
                .map(|(i, t)| {
                    let name = o
                        .arg_names
                        .as_ref()
                        .filter(|_| named)
                        .and_then(|ns| ns.get(i))
                        .filter(|s| !s.is_empty())
                        .map(|s| format!("\"{s}\" "))
                        .unwrap_or_default();
                    let is_variadic = variadic && named && i == args.len() - 1;
                    let default = if named && i + (o.defaults as usize) >= args.len() {
                        " DEFAULT NULL"
                    } else {
                        ""
                    };
                    let t = if is_variadic && t == "\"any\"" {
                        "\"any\""
                    } else {
                        t
                    };
                    format!(
                        "{}{name}{t}{default}",
                        if is_variadic { "VARIADIC " } else { "" }
                    )
                })
                .collect();
            let sig = format!("{}({})", o.name, args.join(", "));
            if o.kind == "a" {
                let state = result.trim_start_matches("SETOF ").to_string();
                let sfunc = format!("public.shadow_sfunc_{n}");
                let sargs: Vec<String> = std::iter::once(format!("s {state}"))
                    .chain(args.iter().enumerate().map(|(i, t)| format!("a{i} {t}")))
                    .collect();
                out.push(format!(
                    "CREATE FUNCTION {sfunc}({}) RETURNS {state} LANGUAGE plpgsql AS $s$ BEGIN {} RETURN s; END $s$",
                    sargs.join(", "),
                    log(&sig)
                ));
                let on = if args.is_empty() {
                    "*".to_string()
                } else {
                    args.join(", ")
                };
                out.push(format!(
                    "CREATE AGGREGATE public.\"{}\"({on}) (SFUNC = {sfunc}, STYPE = {state})",
                    o.name
                ));
            } else if o.kind == "f" {
                let ret = if o.set {
                    format!("SETOF {}", result.trim_start_matches("SETOF "))
                } else {
                    result.clone()
                };
                let end = if o.set || result == "void" {
                    "RETURN;"
                } else {
                    "RETURN NULL;"
                };
                out.push(format!(
                    "CREATE FUNCTION public.\"{}\"({}) RETURNS {ret} LANGUAGE plpgsql AS $s$ BEGIN {} {end} END $s$",
                    o.name,
                    params.join(", "),
                    log(&sig)
                ));
            }
        }
    }
    let mut pairs: Vec<(String, String, String, String)> = operators.to_vec();
    for op in OPERATORS {
        for l in TYPES {
            for r in TYPES {
                let result = match *op {
                    "||" => "text".to_string(),
                    "+" | "-" | "*" => l.to_string(),
                    _ => "boolean".to_string(),
                };
                pairs.push((op.to_string(), l.to_string(), r.to_string(), result));
            }
        }
    }
    for (op, l, r, result) in pairs {
        n += 1;
        let f = format!("public.shadow_op_{n}");
        let sig = format!("operator {op}({l}, {r})");
        if l == "-" {
            out.push(format!(
                "CREATE FUNCTION {f}(b {r}) RETURNS {result} LANGUAGE plpgsql AS $s$ BEGIN {} RETURN NULL; END $s$",
                log(&sig)
            ));
            out.push(format!(
                "CREATE OPERATOR public.{op} (RIGHTARG = {r}, FUNCTION = {f})"
            ));
        } else {
            out.push(format!(
                "CREATE FUNCTION {f}(a {l}, b {r}) RETURNS {result} LANGUAGE plpgsql AS $s$ BEGIN {} RETURN NULL; END $s$",
                log(&sig)
            ));
            out.push(format!(
                "CREATE OPERATOR public.{op} (LEFTARG = {l}, RIGHTARG = {r}, FUNCTION = {f})"
            ));
        }
    }
    out
}

/// As Console's role (CREATE on public, as before PostgreSQL 15): a shadow of every built-in
/// function and operator the gateway calls; then, as the database's owner may, the login
/// `login`'s path set to search `public` before `pg_catalog`. How many statements planted.
async fn plant(db: &TestDb, login: &str) -> usize {
    let mut conn = db.pool.acquire().await.unwrap();
    console_app_role(&mut conn).await;
    let overloads: Vec<Overload> = sqlx::query_as(
        "SELECT p.proname::text AS name, p.prokind::text AS kind, \
                ARRAY(SELECT format_type(t, NULL) FROM unnest(p.proargtypes::oid[]) WITH ORDINALITY u(t, i) ORDER BY i) AS args, \
                p.proargnames::text[] AS arg_names, p.proargmodes::text[] AS modes, p.pronargdefaults AS defaults, \
                format_type(p.prorettype, NULL) AS result, p.proretset AS set \
           FROM pg_proc p WHERE p.pronamespace = 'pg_catalog'::regnamespace AND p.proname = ANY($1)",
    )
    .bind(BUILTINS)
    .fetch_all(&mut *conn)
    .await
    .unwrap();
    let operators: Vec<(String, String, String, String)> = sqlx::query_as(
        "SELECT oprname::text, CASE WHEN oprleft = 0 THEN '-' ELSE format_type(oprleft, NULL) END, \
                format_type(oprright, NULL), format_type(oprresult, NULL) \
           FROM pg_operator WHERE oprnamespace = 'pg_catalog'::regnamespace AND oprname = ANY($1)",
    )
    .bind(OPERATORS)
    .fetch_all(&mut *conn)
    .await
    .unwrap();
    sqlx::raw_sql(
        "GRANT CREATE ON SCHEMA public TO console_app; SET ROLE console_app; \
         CREATE TABLE public.shadow_ran (what text, who text, application text); \
         GRANT INSERT ON public.shadow_ran TO PUBLIC",
    )
    .execute(&mut *conn)
    .await
    .unwrap();
    let mut planted = 0;
    for sql in shadow_statements(&overloads, &operators) {
        if sqlx::raw_sql(&sql).execute(&mut *conn).await.is_ok() {
            planted += 1;
        }
    }
    sqlx::raw_sql(&format!(
        "RESET ROLE; ALTER ROLE \"{login}\" SET search_path = public, pg_catalog"
    ))
    .execute(&mut *conn)
    .await
    .unwrap();
    planted
}

/// What `serve`, `sweep` and `check` did on one database, its ids made labels: the same on a
/// clean database and on one planted with shadows.
#[derive(Debug, PartialEq, Eq)]
struct Observed {
    answers: Vec<(String, u16, String)>,
    audit: Vec<String>,
    alerts: Vec<String>,
    grants: Vec<String>,
    sweep_code: Option<i32>,
    check_code: Option<i32>,
    /// The other commands' exit codes and output (digits made `#`), run as the tables' owner.
    commands: Vec<(String, Option<i32>, String)>,
}

/// The same scenario on `db`, with `login` (holding only `rbac_gateway_serve`) as the gateway's
/// login; with `planted`, the shadows are planted (as `login`) once the data is in place.
async fn scenario(db: &TestDb, login_url: &str, planted: bool, login: &str) -> Observed {
    let up = Upstream::start().await;
    let hook = Upstream::start().await;
    let mut labels: Vec<(String, String)> = Vec::new();
    // Alice may reach /ops; Bob may not, and holds an expired ticket grant and a live one for
    // customer 7; Carol opened a break-glass session; the break-glass group gained a role.
    let alice = db.admin("alice@corp.example").await;
    let manager = db.group_with_roles(&["console-manager"]).await;
    db.join_group(&alice, &manager).await;
    let alice_token = db.session(&alice).await;
    let bob = db.admin("bob@corp.example").await;
    let bob_token = db.session(&bob).await;
    let carol = db.admin("carol@corp.example").await;
    let carol_session = db.break_glass(&carol, 600.0).await;
    let expired = grant(db, &bob, "console-user", 7, "T-1").await;
    sqlx::query(
        "UPDATE rbac_ticket_grants SET expires_at_utc = now() - interval '1 minute' WHERE id = $1",
    )
    .bind(&expired)
    .execute(&db.pool)
    .await
    .unwrap();
    let live = grant(db, &bob, "console-user", 7, "T-2").await;
    sqlx::query(
        "INSERT INTO rbac_group_roles (group_id, role_id) SELECT g.id, r.id FROM rbac_groups g, rbac_roles r \
         WHERE g.name = 'break-glass' AND r.name = 'console-user' ON CONFLICT DO NOTHING",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    for (id, label) in [
        (&alice, "ALICE"),
        (&bob, "BOB"),
        (&carol, "CAROL"),
        (&carol_session, "CAROL-SESSION"),
        (&expired, "EXPIRED"),
        (&live, "LIVE"),
        (&manager, "MANAGER"),
        (&format!("{login}_owner"), "OWNER"),
    ] {
        labels.push((id.clone(), label.to_string()));
    }
    let label = |s: &str| {
        let mut s = s.to_string();
        for (id, l) in &labels {
            s = s.replace(id.as_str(), l);
        }
        s
    };
    if planted {
        let n = plant(db, login).await;
        assert!(n > 1000, "only {n} shadows could be planted");
    }

    // `sweep --once`: the expired grant revoked, the alerts delivered.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_rbac-gateway"))
        .args(["sweep", "--once", "--database-url", login_url])
        .arg("--alert-webhook-url")
        .arg(format!("http://{}/hook", hook.addr))
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), out)
        .await
        .expect("sweep ended within 60 s")
        .unwrap();
    let (sweep_code, sweep_out) = code_and_output(&out);

    // `check` as the login (what README's upgrade step runs).
    let out = crate::cli::bin()
        .args(["check", "--routes"])
        .arg(root().join("routes.toml"))
        .args(["--database-url", login_url])
        .output()
        .unwrap();
    let (check_code, check_out) = code_and_output(&out);
    if planted {
        assert!(
            check_out.contains("function unnest(text[]) in schema public (owner console_app) has the name of a built-in the gateway calls")
                && check_out.contains("schema public is on the gateway's path and console_app may create in it"),
            "check names the shadows and the open schema: {check_out}"
        );
    }

    // `serve`: allowed (cold, then cached), denied, no session, the reader API, a revocation.
    let mut opts = GatewayOpts::new(core_routes(), db, up.addr)
        .arg("--cache-ttl")
        .arg("60")
        .arg("--alert-webhook-url")
        .arg(&format!("http://{}/hook", hook.addr));
    opts.database_url = login_url.to_string();
    let gw = Gateway::start(opts).await;
    let mut answers = Vec::new();
    for (what, path, token) in [
        ("alice cold", "/ops", Some(&alice_token)),
        ("alice cached", "/ops", Some(&alice_token)),
        ("bob", "/ops", Some(&bob_token)),
        ("no session", "/ops", None),
        ("alice me", "/api/rbac/me", Some(&alice_token)),
        (
            "bob customer 7",
            "/api/rbac/permissions/check?permission=console:audit:read&customer_id=7",
            Some(&bob_token),
        ),
    ] {
        let r = gw.get(path, token.map(|t| t.as_str())).await;
        let body = if path.starts_with("/api/") {
            label(&r.body_str())
        } else {
            String::new()
        };
        answers.push((what.to_string(), r.status, body));
    }
    let t0 = Instant::now();
    db.revoke_session(&alice_token).await;
    let s = until_all(
        std::slice::from_ref(&gw),
        "/ops",
        &alice_token,
        302,
        t0,
        Duration::from_secs(5),
    )
    .await;
    answers.push((
        "alice revoked".into(),
        302,
        format!("{}", s[0] < Duration::from_secs(5)),
    ));
    eventually(Duration::from_secs(5), "bob's denial stored", || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM access_audit_events")
            .fetch_one(&db.pool)
            .await
            .unwrap()
            >= 1
    })
    .await;
    let audit: Vec<String> = sqlx::query_scalar(
        "SELECT concat_ws(' ', event_type, admin_id, route, reason) FROM access_audit_events \
         ORDER BY event_type, route",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let audit = audit.iter().map(|r| label(r)).collect();
    let mut alerts: Vec<String> = hook
        .requests()
        .iter()
        .map(|s| label(&String::from_utf8_lossy(&s.body)))
        .map(|s| {
            // Times and transaction ids differ between the runs.
            s.split(" Expires ")
                .next()
                .unwrap_or(&s)
                .chars()
                .map(|c| if c.is_ascii_digit() { '#' } else { c })
                .collect()
        })
        .collect();
    alerts.sort();
    let grants: Vec<(String, Option<String>)> =
        sqlx::query_as("SELECT id, revoke_reason FROM rbac_ticket_grants ORDER BY ticket_id")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    let grants = grants
        .into_iter()
        .map(|g| label(&format!("{g:?}")))
        .collect();
    assert_eq!(sweep_code, Some(0), "sweep: {sweep_out}");

    // The commands an operator runs as the tables' owner, whose path the database's owner set
    // too: a login of its own (roles are cluster-wide; the test's own server login stays as it is).
    let owner = format!("{login}_owner");
    sqlx::raw_sql(&format!("CREATE ROLE \"{owner}\" LOGIN SUPERUSER"))
        .execute(&db.pool)
        .await
        .unwrap();
    if planted {
        sqlx::raw_sql(&format!(
            "ALTER ROLE \"{owner}\" SET search_path = public, pg_catalog"
        ))
        .execute(&db.pool)
        .await
        .unwrap();
    }
    let owner_url = db.url_as(&owner);
    let routes = root().join("routes.toml");
    let routes = routes.to_str().unwrap();
    let mut commands = Vec::new();
    for args in [
        vec!["mapping", "push", routes, "-m", "shadows"],
        vec!["mapping", "history"],
        vec![
            "explain", "--routes", routes, "--admin", &bob, "GET", "/ops",
        ],
        vec!["matrix", "--routes", routes],
        vec!["rollout", "--routes", routes],
        vec!["drift", "--routes", routes],
    ] {
        let out = crate::cli::bin()
            .args(&args)
            .args(["--database-url", &owner_url])
            .output()
            .unwrap();
        let (code, text) = code_and_output(&out);
        // The warnings differ, and must: `mapping push` checks the database and names the
        // shadows on the planted one.
        let text: String = label(&text)
            .lines()
            .filter(|l| !l.contains("warning"))
            .collect::<Vec<_>>()
            .join("\n")
            .chars()
            .map(|c| if c.is_ascii_digit() { '#' } else { c })
            .collect();
        commands.push((args[..2].join(" "), code, text));
    }
    Observed {
        answers,
        audit,
        alerts,
        grants,
        sweep_code,
        check_code,
        commands,
    }
}

/// Console's role plants a shadow of every built-in function and operator the gateway calls
/// (the names read from `BUILTINS` and `OPERATORS`, which the test above holds to the source),
/// with the built-ins' own argument types and with types that match a call better, and the
/// database's owner puts `public` first on the gateway's login's path. `serve` (a cold and a
/// cached lookup, a denial and its row, the reader API with a ticket grant, a revocation through
/// the change feed), `sweep --once` (a grant revoked, alerts delivered) and `check` answer,
/// write and alert exactly as on a clean database, and no shadow ran.
#[tokio::test]
async fn shadows_planted_by_consoles_role_never_run_as_the_gateway() {
    let _alone = timed_alone().await;
    let clean = TestDb::new().await;
    let clean_url = crate::grants::serve_login(&clean).await;
    let planted = TestDb::new().await;
    let planted_url = crate::grants::serve_login(&planted).await;
    let login = TestDb::user_of(&planted_url);
    let clean_login = TestDb::user_of(&clean_url);
    let expected = scenario(&clean, &clean_url, false, &clean_login).await;
    let seen = scenario(&planted, &planted_url, true, &login).await;
    let ran: Vec<(String, String, String)> =
        sqlx::query_as("SELECT what, who, application FROM public.shadow_ran")
            .fetch_all(&planted.pool)
            .await
            .unwrap();
    assert!(ran.is_empty(), "shadows ran: {ran:#?}");
    assert_eq!(seen, expected);
    // The scenario saw what it must, on both.
    assert_eq!(
        expected.answers.iter().map(|a| a.1).collect::<Vec<_>>(),
        vec![200, 200, 403, 302, 200, 200, 302]
    );
    assert!(
        expected.alerts.iter().any(|a| a.contains("CAROL")),
        "{:?}",
        expected.alerts
    );
    for (command, code, out) in &expected.commands {
        assert!(
            code.is_some_and(|c| c <= 1),
            "{command} ran ({code:?}): {out}"
        );
    }
}

/// Every function and procedure of the gateway's (in its schema, `rbac_gateway_*`,
/// `rbac_mapping_*`, `access_audit_events_append_only`) is refused to a login with no grants:
/// none is PUBLIC's (docs/design/security.md names none as callable), so no login can record a
/// group change and have a forged break-glass alert delivered, or read the break-glass group's
/// roles.
#[tokio::test]
async fn no_function_of_the_gateways_runs_for_a_login_with_no_grants() {
    let db = TestDb::new().await;
    let url = db.login_in_role("pg_read_all_settings", "").await;
    let user = TestDb::user_of(&url);
    let functions: Vec<(String, String, String, bool)> = sqlx::query_as(
        "SELECT p.oid::regprocedure::text, p.proname::text, p.prokind::text, \
                p.prorettype = 'trigger'::regtype \
           FROM pg_proc p WHERE p.pronamespace = current_schema()::regnamespace \
            AND (p.proname LIKE 'rbac\\_gateway\\_%' OR p.proname LIKE 'rbac\\_mapping\\_%' \
                 OR p.proname = 'access_audit_events_append_only') ORDER BY 1",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert!(functions.len() >= 15, "{functions:?}");
    let conn = sqlx::PgPool::connect(&url).await.unwrap();
    for (signature, name, kind, trigger) in &functions {
        let may: bool =
            sqlx::query_scalar("SELECT has_function_privilege($1, $2::regprocedure, 'EXECUTE')")
                .bind(&user)
                .bind(signature)
                .fetch_one(&db.pool)
                .await
                .unwrap();
        assert!(!may, "{signature} may be run by a login with no grants");
        if *trigger {
            continue; // a trigger function cannot be called at all
        }
        let args: Vec<String> = sqlx::query_scalar(
            "SELECT format_type(t, NULL) FROM pg_proc p, unnest(p.proargtypes::oid[]) WITH ORDINALITY u(t, i) \
             WHERE p.oid = $1::regprocedure ORDER BY i",
        )
        .bind(signature)
        .fetch_all(&db.pool)
        .await
        .unwrap();
        let nulls: Vec<String> = args.iter().map(|t| format!("NULL::{t}")).collect();
        let verb = if kind == "p" { "CALL" } else { "SELECT * FROM" };
        let call = format!("{verb} {name}({})", nulls.join(", "));
        let err = sqlx::raw_sql(&call)
            .execute(&conn)
            .await
            .expect_err(&format!("{call} ran for a login with no grants"));
        let code = err
            .as_database_error()
            .and_then(|d| d.code())
            .map(|c| c.to_string());
        assert_eq!(
            code.as_deref(),
            Some("42501"),
            "{call}: refused for its privilege, not for anything else: {err}"
        );
    }
}
