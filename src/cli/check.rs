//! `rbac-gateway check`: validates a mapping, optionally against the database and Console's
//! own routes.

use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, Context};

use super::toolbox::{diag, failure, runtime, say, usage};
use super::Exit;
use crate::cli::{args::CheckArgs, EXIT_PROBLEMS};
use crate::policy::mapping::{Diagnostic, Mapping, Severity};
use crate::stores::schema as db_schema;

mod database;
mod grants;

/// The columns the gateway reads or writes of its own tables, per table (Console's:
/// `db_schema::CONSOLE_TABLES`). Every table and column a statement of `serve` (the audit
/// writer, the change feed, the alerts, the mapping store) names: grep the SQL in src/stores/
/// when adding one.
const GATEWAY_SCHEMA: &[(&str, &[&str])] = &[
    (
        "access_audit_events",
        &[
            "id",
            "event_type",
            "admin_id",
            "method",
            "path",
            "route",
            "required",
            "reason",
            "request_id",
            "client_ip",
            "user_agent",
            "created_at_utc",
            "mapping_version",
            "occurrences",
        ],
    ),
    ("rbac_gateway_feed_epoch", &["id", "token"]),
    (
        "rbac_change_log",
        &[
            "id",
            "txid",
            "table_name",
            "admin_id",
            "token_sha256",
            "created_at_utc",
        ],
    ),
    (
        "rbac_gateway_audit_outbox",
        &[
            "audit_id",
            "created_at_utc",
            "attempts",
            "next_attempt_utc",
            "delivered_at_utc",
            "alerted_at_utc",
            "last_error",
        ],
    ),
    (
        "rbac_gateway_alerts",
        &[
            "key",
            "text",
            "created_at_utc",
            "delivered_at_utc",
            "attempts",
            "next_attempt_utc",
            "last_error",
            "erasure_keys",
            "session_user_id",
            "session_granted_at_utc",
            "session_ends_at_utc",
            "raised_at_utc",
        ],
    ),
    (
        "rbac_gateway_group_changes",
        &[
            "id",
            "txid",
            "what",
            "db_user",
            "actor",
            "application",
            "client_addr",
            "changed_at_utc",
            "deploy_window",
            "alert_key",
            "erasure_keys",
        ],
    ),
    (
        "rbac_gateway_deploy_windows",
        &[
            "id",
            "starts_at_utc",
            "ends_at_utc",
            "declared_by",
            "reason",
            "created_at_utc",
        ],
    ),
    (
        "rbac_gateway_break_glass_snapshots",
        &["taken_at_utc", "roles", "permissions", "members"],
    ),
    (
        "rbac_gateway_sweep_failures",
        &["item", "failures", "last_error", "last_failed_at"],
    ),
    (
        "rbac_gateway_mapping_versions",
        &["id", "version", "kill_switch", "routes", "loaded_at_utc"],
    ),
    (
        "rbac_mapping_store",
        &[
            "version",
            "sha256",
            "text",
            "pushed_by",
            "actor",
            "pushed_at_utc",
            "message",
            "signature",
            "tests_result",
            "tests_sha256",
            "tests_cases",
            "tests_files",
        ],
    ),
    (
        "rbac_mapping_activations",
        &[
            "id",
            "version",
            "previous_version",
            "kind",
            "activated_by",
            "actor",
            "activated_at_utc",
            "message",
        ],
    ),
];

/// Every table `check` looks at, Console's first, and the columns of each.
fn all_tables() -> impl Iterator<Item = &'static (&'static str, &'static [&'static str])> {
    db_schema::CONSOLE_TABLES.iter().chain(GATEWAY_SCHEMA)
}

/// The mapping store's tables (migrations 0009, 0010, 0030): read by `serve --mapping-source database`
/// and the `mapping` commands only.
const MAPPING_STORE: &[&str] = &["rbac_mapping_store", "rbac_mapping_activations"];

/// Rules that map the reader API's paths: with `--rbac-api` on (the default) the gateway answers
/// those paths itself and the rule never applies.
fn reader_paths(mapping: &Mapping, file: &str) -> Vec<Diagnostic> {
    [crate::policy::reader::ME, crate::policy::reader::CHECK]
        .into_iter()
        .filter_map(|path| {
            let (route, _) = mapping.find("GET", path)?;
            Some(Diagnostic {
                file: file.to_string(),
                line: route.line,
                col: route.col,
                severity: Severity::Warning,
                message: format!(
                    "GET {path} is answered by the gateway itself (reader API, --rbac-api, on by default) and never reaches Console: this rule ({}) applies only with --rbac-api=false",
                    route.label()
                ),
            })
        })
        .collect()
}

pub fn check(args: CheckArgs) -> Result<(), Exit> {
    if args.mapping_source == "database" {
        return check_active(&args);
    }
    validate(&args).map(|_| ())
}

/// `check --mapping-source database`: the active version loads as `serve --mapping-source
/// database` would load it on SIGHUP (hash, signature with a key, compiled).
fn check_active(args: &CheckArgs) -> Result<(), Exit> {
    let url = match &args.database_url {
        Some(u) => u.clone(),
        None => std::env::var("DATABASE_URL").map_err(|_| {
            usage(anyhow!(
                "--mapping-source database: the active version is read from --database-url or DATABASE_URL, and neither is set"
            ))
        })?,
    };
    let key = match &args.mapping_public_key {
        None => None,
        Some(path) => Some(
            crate::stores::mapping_store::signing::read_public_key(path)
                .map_err(|e| usage(anyhow!("--mapping-public-key {e}")))?,
        ),
    };
    runtime()?.block_on(async {
        let pool = super::toolbox::command_pool(&url, 2, Duration::from_secs(10)).await?;
        let Some((_, version)) = crate::stores::mapping_store::active(&pool)
            .await
            .map_err(|e| failure(anyhow!(crate::stores::mapping_store::active_unreadable(&e))))?
        else {
            return Err(failure(anyhow!(
                "no mapping version is active in the database (`rbac-gateway mapping push FILE`)"
            )));
        };
        let name = crate::gateway::reload::db_name(&version);
        match crate::gateway::reload::load_verified(&pool, &version, key.as_ref()).await {
            Ok(mapping) => {
                for w in &mapping.warnings {
                    say!("{w}");
                }
                say!(
                    "{name}: {} routes, version {}, {} warning(s), 0 error(s)",
                    mapping.routes.len(),
                    mapping.version,
                    mapping.warnings.len()
                );
                Ok(())
            }
            Err(e) => Err(Exit {
                code: EXIT_PROBLEMS,
                error: anyhow!("{name}: {e}"),
            }),
        }
    })
}

/// `check`: prints every problem and the summary line; the mapping when it passed (`mapping
/// push` stores only such a file).
pub(crate) fn validate(args: &CheckArgs) -> Result<Mapping, Exit> {
    validate_as(args, Schema::Whole)
}

/// How much of the database's schema a check covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Schema {
    /// Every table and column `serve` uses (`check`: run it as the gateway's role).
    Whole,
    /// Only the tables this role may read (`mapping push`: a pusher with the grants of
    /// deploy/mapping-grants.sql reads the mapping store and the role catalogue, not the
    /// sessions or the audit rows). The role and permission names are checked all the same.
    Readable,
}

/// [`validate`], with the schema check `schema` asks for.
pub(crate) fn validate_as(args: &CheckArgs, schema: Schema) -> Result<Mapping, Exit> {
    let file = args.routes.display().to_string();
    let mapping = match Mapping::load(&args.routes) {
        Ok(m) => m,
        Err(e) => {
            for d in &e.diagnostics {
                say!("{d}");
            }
            return Err(usage(anyhow!("{file}: {} error(s)", e.diagnostics.len())));
        }
    };
    let mut problems = Vec::new();
    for w in &mapping.warnings {
        say!("{w}");
    }
    problems.extend(reader_paths(&mapping, &file));
    problems.extend(mapping.stage_problems());
    // One connection for the database's checks and (`check` itself) the invariants section.
    let mut invariants = None;
    // Where `--database-url` reaches, for `--lookup-database-url`'s to be held to.
    let mut main_reach = None;
    if let Some(url) = &args.database_url {
        let (found, held, reach) = runtime()?.block_on(async {
            // Two: the catalogue's names are read while Console's tables are held on the other.
            let pool = super::toolbox::command_pool(url, 2, Duration::from_secs(10)).await?;
            let (found, usable) = check_database(&pool, &mapping, &file, schema).await?;
            let held = match schema {
                // Where the schema cannot be used, every read of the invariants fails alike.
                Schema::Whole if usable => Some(
                    super::invariants::invariants(
                        &pool,
                        &args.decision.settings(),
                        &args.posture.settings(),
                    )
                    .await,
                ),
                _ => None,
            };
            let reach = match args.lookup_database_url {
                Some(_) => crate::stores::reach::reach(&pool).await.map(Some),
                None => Ok(None),
            };
            Ok::<_, Exit>((found, held, reach))
        })?;
        problems.extend(found);
        invariants = held;
        main_reach = match reach {
            Ok(r) => r,
            Err(e) => {
                problems.push(diag(&file, 0, 0, Severity::Warning, format!(
                    "database: cannot ask which server --database-url reaches ({e}): --lookup-database-url is checked for a standby alone"
                )));
                None
            }
        };
    }
    if let Some(url) = &args.lookup_database_url {
        if args.database_url.is_none() {
            problems.push(diag(&file, 0, 0, Severity::Warning, "database: --lookup-database-url is not compared with --database-url's database (not given): only checked that it is not a standby's".to_string()));
        }
        runtime()?.block_on(async {
            let pool = super::toolbox::command_pool(url, 1, Duration::from_secs(10)).await?;
            grants::lookup_login(&pool, main_reach.as_ref(), &file, &mut problems).await
        })?;
    }
    if let Some(app) = &args.app_routes {
        problems.extend(crate::cli::check_app_routes(&mapping, &file, app)?);
    }
    for p in &problems {
        say!("{p}");
    }
    if let Some(found) = &invariants {
        for line in super::invariants::lines(found) {
            say!("{line}");
        }
    }
    let errors = problems
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .count();
    say!(
        "{file}: {} routes, version {}, {} warning(s), {} error(s)",
        mapping.routes.len(),
        mapping.version,
        mapping.warnings.len() + problems.len() - errors,
        errors
    );
    if errors > 0 {
        return Err(Exit {
            code: EXIT_PROBLEMS,
            error: anyhow!("{file}: the check found {errors} problem(s)"),
        });
    }
    Ok(mapping)
}

/// The database's problems for `mapping`, and whether the gateway's schema could be used at all
/// (where it cannot, nothing else of it is read).
async fn check_database(
    pool: &crate::stores::db::Db,
    mapping: &Mapping,
    file: &str,
    schema: Schema,
) -> Result<(Vec<crate::policy::mapping::Diagnostic>, bool), Exit> {
    let mut out = Vec::new();
    // Without USAGE on the schema no name of the gateway's resolves: said alone.
    if schema == Schema::Whole && !grants::uses_schema(pool, file, &mut out).await? {
        return Ok((out, false));
    }
    // First: a migration not applied explains the missing columns and functions named after it.
    let migrations_unread = if schema == Schema::Whole {
        database::migrations(pool, file, &mut out).await
    } else {
        None
    };
    // Tables that exist but this role may not read: each named once, with its grant, rather than
    // by the privileges it lacks.
    let unreadable = unreadable(pool, file, schema, &mut out).await?;
    let columns = db_schema::columns(pool)
        .await
        .context("cannot read the schema")
        .map_err(failure)?;
    // A database none of whose gateway tables exist was never migrated: each missing table is
    // said once, with `migrate` (its first migration makes Console's tables too where Console
    // has none). Elsewhere each missing column is named, and Console's are Console's to make.
    let unmigrated = !GATEWAY_SCHEMA
        .iter()
        .any(|(table, _)| columns.iter().any(|(t, _)| t == table));
    for (table, cols) in all_tables() {
        if unreadable.iter().any(|t| t == table) {
            continue;
        }
        if unmigrated && !columns.iter().any(|(t, _)| t == table) {
            out.push(diag(
                file,
                0,
                0,
                Severity::Error,
                format!("database: table {table} is missing (run `rbac-gateway migrate`: it makes the gateway's tables, and Console's where Console has none yet)"),
            ));
            continue;
        }
        for col in *cols {
            if !columns.iter().any(|(t, c)| t == table && c == col) {
                out.push(diag(
                    file,
                    0,
                    0,
                    Severity::Error,
                    if db_schema::CONSOLE_TABLES.iter().any(|(t, _)| t == table) {
                        format!("database: column {table}.{col} of Console's is missing (004 §3 gives it; Console's migrations make it, `migrate` does not)")
                    } else {
                        format!("database: column {table}.{col} is missing (run `rbac-gateway migrate`?)")
                    },
                ));
            }
        }
    }
    // Run as `serve`'s login: each privilege deploy/gateway-grants.sql gives it, and each table
    // it names a table.
    if schema == Schema::Whole && grants::lacking(pool, file, &mut out).await? {
        if let Some((at, e)) = &migrations_unread {
            out[*at].message = database::unreadable_as_no_member(e);
        }
    }
    // The trust boundary (docs/design/security.md), as Supabase's splinter lints it: what
    // another role may plant where the gateway's names resolve, and what of the gateway's it
    // may run.
    out.extend(database::trust_boundary(pool, file).await?);
    database::console_code(pool, file, &mut out).await?;
    database::functions(pool, file, &mut out).await?;
    if out.iter().any(|d| d.severity == Severity::Error) {
        return Ok((out, true));
    }
    // Console's tables held, and looked at again under the locks, while the names are read.
    let held = crate::stores::schema::hold_console_tables(pool)
        .await
        .context("cannot hold Console's tables to read the catalogue's names")
        .map_err(failure)?;
    if let Some(found) = held.findings.as_ref().filter(|f| !f.is_empty()) {
        out.extend(
            found
                .iter()
                .map(|f| diag(file, 0, 0, Severity::Error, format!("database: {f}"))),
        );
        return Ok((out, true));
    }
    let unknown = crate::stores::catalogue::unknown_names(pool, mapping)
        .await
        .map_err(failure)?;
    drop(held);
    out.extend(
        unknown
            .into_iter()
            .map(|u| diag(file, u.line, u.col, Severity::Error, u.to_string())),
    );
    Ok((out, true))
}

/// The tables of [`all_tables`] this role may not read (their columns are then not checked), each
/// said or, run as the gateway's role (`Whole`), an error in `out`.
async fn unreadable(
    pool: &crate::stores::db::Db,
    file: &str,
    schema: Schema,
    out: &mut Vec<crate::policy::mapping::Diagnostic>,
) -> Result<Vec<String>, Exit> {
    Ok(match schema {
        // Run as the gateway's role: a table it holds no privilege on is named with the grant
        // (each privilege it lacks, by `grants::lacking`, where deploy/gateway-grants.sql
        // grants on it); the mapping store only a gateway with
        // `--mapping-source database` reads.
        Schema::Whole => {
            let tables: Vec<&str> = all_tables().map(|(t, _)| *t).collect();
            let found = db_schema::invisible_tables(pool, &tables)
                .await
                .context("cannot read this role's privileges")
                .map_err(failure)?;
            for table in &found {
                if grants::granted_on(table) {
                    // Each privilege it lacks is named, with its GRANT (`grants::lacking`).
                } else if MAPPING_STORE.contains(&table.as_str()) {
                    say!(
                        "database: {table} is not checked: this role may not read it, and only `serve --mapping-source database` does (deploy/mapping-grants.sql, rbac_gateway_reader)"
                    );
                } else {
                    out.push(diag(
                        file,
                        0,
                        0,
                        Severity::Error,
                        format!("database: this role holds no privilege on {table}, which `serve` uses (deploy/gateway-grants.sql, rbac_gateway_serve)"),
                    ));
                }
            }
            found
        }
        Schema::Readable => {
            let tables: Vec<&str> = all_tables().map(|(t, _)| *t).collect();
            let found = db_schema::unreadable_tables(pool, &tables)
                .await
                .context("cannot read this role's privileges")
                .map_err(failure)?;
            if !found.is_empty() {
                say!(
                    "database: the schema of {} table(s) this role may not read is not checked here (`rbac-gateway check --database-url` as the gateway's role checks it): {}",
                    found.len(),
                    found.join(", ")
                );
            }
            found
        }
    })
}

/// One route of the upstream's `url_map` dump.
#[derive(Debug, serde::Deserialize)]
struct AppRoute {
    rule: String,
    methods: Vec<String>,
    #[serde(default)]
    endpoint: String,
    /// False: Werkzeug matches the rule with or without its trailing slash, which the mapping
    /// cannot express. Absent in older dumps.
    #[serde(default)]
    strict_slashes: Option<bool>,
}

/// The upstream's routes (`--app-routes`) against the mapping, each way.
pub fn check_app_routes(
    mapping: &Mapping,
    file: &str,
    app: &Path,
) -> Result<Vec<Diagnostic>, Exit> {
    let text =
        std::fs::read_to_string(app).map_err(|e| usage(anyhow!("{}: {e}", app.display())))?;
    let routes: Vec<AppRoute> = serde_json::from_str(&text).map_err(|e| {
        usage(anyhow!(
            "{}:{}:{}: {e}",
            app.display(),
            e.line(),
            e.column()
        ))
    })?;
    let dump = Dump { text: &text, app };
    let mut out = inexpressible_routes(&routes, &dump);
    out.extend(uncovered_routes(mapping, &routes, &dump));
    out.extend(unmatched_rules(mapping, file, &routes));
    Ok(out)
}

/// The upstream's `url_map` dump as read, for messages that point into it.
struct Dump<'a> {
    text: &'a str,
    app: &'a Path,
}

impl Dump<'_> {
    /// An error at the rule in the dump, so the message is clickable too.
    fn at_rule(&self, rule: &str, message: String) -> Diagnostic {
        let text = self.text;
        let at = text.find(&format!("\"{rule}\"")).unwrap_or(0);
        let line = text[..at].matches('\n').count() + 1;
        let col = at - text[..at].rfind('\n').map(|i| i + 1).unwrap_or(0) + 1;
        diag(
            &self.app.display().to_string(),
            line,
            col,
            Severity::Error,
            message,
        )
    }
}

/// The Console routes routes.toml cannot express: a rule it cannot parse, two rules only
/// Console's registration order tells apart, `strict_slashes=False`.
fn inexpressible_routes(routes: &[AppRoute], dump: &Dump) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    // Console's rules in its registration order, as Werkzeug builds its state machine.
    let mut console = crate::policy::mapping::matcher::Matcher::default();
    for (i, ar) in routes.iter().enumerate() {
        let methods = ar.methods.join(",");
        let parts = match crate::policy::mapping::rule::parse_rule(&ar.rule) {
            Ok(parts) => parts,
            Err(e) => {
                out.push(dump.at_rule(&ar.rule, format!(
                    "Console route {methods} {} (endpoint {}) cannot be expressed in routes.toml ({e}): its requests are decided by whichever gateway rule matches their path, or denied with no_route",
                    ar.rule, ar.endpoint
                )));
                continue;
            }
        };
        let mut matcher_methods = ar.methods.clone();
        if ar.methods.iter().any(|m| m == "GET") {
            matcher_methods.push("HEAD".to_string());
        }
        if let Err(rival) = console.add(i, &parts, matcher_methods) {
            let j = rival.rule;
            let slash = match rival.slash_of {
                None => String::new(),
                Some(s) => format!(
                    " (a path lacking only the trailing slash of {} is answered with the redirect to it when that rule is tried first, instead of the other rule's view)",
                    routes[s].rule
                ),
            };
            out.push(dump.at_rule(&ar.rule, format!(
                "Console routes {} and {} (endpoints {} and {}) have a segment Werkzeug weighs equally and that can match the same value: Console tries {} first because it was registered first{slash}, an order routes.toml cannot express (the gateway refuses such rules); give one of them a converter or a literal that tells them apart",
                ar.rule, routes[j].rule, ar.endpoint, routes[j].endpoint, routes[j].rule
            )));
        }
        if ar.strict_slashes == Some(false) {
            out.push(dump.at_rule(&ar.rule, format!(
                "Console route {methods} {} (endpoint {}) has strict_slashes=False: Werkzeug also matches it with the trailing slash {}, which routes.toml cannot express (the gateway decides such a request by another rule, or denies it with no_route)",
                ar.rule, ar.endpoint,
                if ar.rule.ends_with('/') { "left out" } else { "added" }
            )));
        }
    }
    out
}

/// Each method of a Console route (but HEAD and OPTIONS) that no gateway rule has, with the
/// rule that decides its requests instead, if any.
fn uncovered_routes(mapping: &Mapping, routes: &[AppRoute], dump: &Dump) -> Vec<Diagnostic> {
    let norm = |rule: &str| crate::policy::mapping::rule_signature(rule);
    let mut out = Vec::new();
    for ar in routes {
        if crate::policy::mapping::rule::parse_rule(&ar.rule).is_err() {
            continue; // reported by inexpressible_routes
        }
        let sig = norm(&ar.rule);
        for m in ar
            .methods
            .iter()
            .filter(|m| *m != "HEAD" && *m != "OPTIONS")
        {
            let covered = mapping
                .routes
                .iter()
                .any(|r| norm(&r.path) == sig && r.methods.iter().any(|x| x == m));
            if !covered {
                // Another rule may take its requests (`/console/<page>` those of
                // `/console/audit`): say which, on a path the Console rule matches.
                let taken = crate::policy::mapping::rule::parse_rule(&ar.rule)
                    .ok()
                    .map(|parts| crate::policy::mapping::rule::example(&parts))
                    .and_then(|path| mapping.find(m, &path).map(|(r, _)| (path, r)));
                let fate = match taken {
                    Some((path, r)) => format!(
                        "its requests (e.g. {m} {path}) are decided by the gateway rule {} (line {})",
                        r.label(),
                        r.line
                    ),
                    None => "it would be denied with no_route".to_string(),
                };
                out.push(dump.at_rule(
                    &ar.rule,
                    format!(
                        "Console route {m} {} (endpoint {}) has no gateway rule: {fate}",
                        ar.rule, ar.endpoint
                    ),
                ));
            }
        }
    }
    out
}

/// Each method of a gateway rule (but `gone`) that no Console route has.
fn unmatched_rules(
    mapping: &Mapping,
    file: &str,
    routes: &[AppRoute],
) -> Vec<crate::policy::mapping::Diagnostic> {
    let norm = |rule: &str| crate::policy::mapping::rule_signature(rule);
    let mut out = Vec::new();
    for r in &mapping.routes {
        if r.access == crate::policy::mapping::Access::Gone {
            continue;
        }
        let sig = norm(&r.path);
        for m in &r.methods {
            let exists = routes
                .iter()
                .any(|ar| norm(&ar.rule) == sig && ar.methods.iter().any(|x| x == m));
            if !exists {
                out.push(diag(
                    file,
                    r.line,
                    r.col,
                    Severity::Error,
                    format!("gateway rule {m} {} matches no Console route", r.path),
                ));
            }
        }
    }
    out
}
