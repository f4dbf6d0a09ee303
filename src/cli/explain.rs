//! `rbac-gateway explain`: the decision for one admin, method and path, from the same
//! [`decide`] the proxy calls (shadow mode, ticket grants and the kill switch included).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::toolbox::{command_pool, failure, load_mapping, runtime, say, usage};
use super::Exit;
use crate::cli::access::{doors_target, InMemory};
use crate::cli::args::ExplainArgs;
use crate::policy::answer::{Answer, Reply};
use crate::policy::mapping::Mapping;
use crate::policy::outcome::{decide, Authority, Facts, Outcome, Unavailable};
use crate::policy::principal::Principal;
use crate::runtime::metrics::Metrics;
use crate::stores::identity;

/// The admin being explained holds the (pretend) session; everything is read fresh from the
/// database, nothing is cached.
struct ExplainAuthority {
    pool: crate::stores::db::Db,
    principal: Arc<Principal>,
    metrics: Metrics,
    ticket_validation_url: Option<String>,
}

impl Authority for ExplainAuthority {
    async fn principal_for_token(
        &self,
        _token: &str,
        _at: std::time::Instant,
    ) -> Result<Option<Arc<Principal>>, Unavailable> {
        Ok(Some(self.principal.clone()))
    }

    async fn known_admin(&self, _token: &str) -> Option<String> {
        Some(self.principal.admin_id.clone())
    }

    async fn with_ticket_grants(
        &self,
        principal: &Principal,
        customer: i32,
        request_id: &str,
    ) -> Result<Option<Principal>, Unavailable> {
        crate::stores::ticket::ticket_principal(
            &self.pool,
            &self.metrics,
            self.ticket_validation_url.as_deref(),
            principal,
            customer,
            request_id,
        )
        .await
    }
}

/// What `explain` says, line by line: the command prints it, the cockpit shows it beside a
/// denial.
#[derive(Debug, Default)]
pub struct Said(pub Vec<String>);

/// `say!` into a [`Said`].
macro_rules! put {
    ($out:expr, $($arg:tt)*) => {
        $out.0.push(format!($($arg)*))
    };
}

pub fn explain(args: ExplainArgs) -> Result<(), Exit> {
    let mut out = Said::default();
    let result = explain_into(&args, &mut out);
    // What was said before a failure is printed too, as it was when each line went out at once.
    for line in &out.0 {
        say!("{line}");
    }
    result
}

fn explain_into(args: &ExplainArgs, out: &mut Said) -> Result<(), Exit> {
    match (&args.request_id, &args.admin, &args.method, &args.path) {
        (Some(id), _, _, _) => {
            let url = database_url(args, "--request-id")?;
            runtime()?.block_on(async {
                let pool = command_pool(url, 2, Duration::from_secs(10)).await?;
                from_audit_row(&pool, args, id, out).await
            })
        }
        (None, admin, Some(method), Some(path)) => {
            let mapping = load_mapping(&args.routes)?;
            if admin.is_none() {
                put!(
                    out,
                    "session: none (no --admin): decided as a request without a session"
                );
            }
            // A refused request needs no database, whoever asks.
            let refused = doors_target(method, path).is_err();
            runtime()?.block_on(async {
                let pool = match admin {
                    Some(_) if !refused => Some(
                        command_pool(database_url(args, "--admin")?, 2, Duration::from_secs(10))
                            .await?,
                    ),
                    _ => None,
                };
                let request = Request {
                    mapping: &mapping,
                    routes: &args.routes,
                    admin: admin.as_deref(),
                    method,
                    path,
                    pool: pool.as_ref(),
                };
                explain_request(args, &request, out).await
            })
        }
        _ => Err(usage(anyhow::anyhow!(
            "give [--admin ADMIN_ID] METHOD PATH, or --request-id ID"
        ))),
    }
}

/// What `explain --request-id ID` says about a logged request, line by line (a failure as its
/// last line, `error: ...`): the cockpit's "why" of a denial.
pub(crate) async fn why(
    pool: &crate::stores::db::Db,
    args: &ExplainArgs,
    request_id: &str,
) -> Vec<String> {
    let mut out = Said::default();
    if let Err(e) = from_audit_row(pool, args, request_id, &mut out).await {
        put!(out, "error: {}", e.text());
    }
    out.0
}

/// `--database-url`, which `what` needs (a request without a session needs none).
fn database_url<'a>(args: &'a ExplainArgs, what: &str) -> Result<&'a str, Exit> {
    args.database_url.as_deref().ok_or_else(|| {
        usage(anyhow::anyhow!(
            "{what} needs --database-url (or DATABASE_URL): the admin's roles are read there"
        ))
    })
}

/// `Some(admin)` when the admin has a live session (not expired, not revoked), or none at all
/// yet (explained as the admin would be decided once logged in); None, said so, when every
/// session of the admin expired or was revoked: `serve` answers such a cookie as no session.
/// An admin id that does not exist is a usage error.
async fn live_session<'a>(
    pool: &crate::stores::db::Db,
    admin: &'a str,
    out: &mut Said,
) -> Result<Option<&'a str>, Exit> {
    let identity::SessionState { known, any, live } = identity::session_state(pool, admin)
        .await
        .map_err(failure)?;
    if !known {
        return Err(usage(anyhow::anyhow!(
            "--admin {admin}: no such admin (admins.id)"
        )));
    }
    if live {
        return Ok(Some(admin));
    }
    if !any {
        put!(
            out,
            "session: none yet: explained as the admin would be decided once logged in"
        );
        return Ok(Some(admin));
    }
    put!(
        out,
        "admin: {admin} has no live session (each one expired or was revoked)"
    );
    put!(
        out,
        "session: none: decided as a request without a valid session, as serve decides it"
    );
    Ok(None)
}

/// The mapping file in `dir` whose version is `version`, if any, and why each file looked at
/// before it (or the directory) could not be read: a file of that version that does not load is
/// named, not passed over in silence.
fn find_version(dir: &Path, version: &str) -> (Option<(Mapping, PathBuf)>, Vec<String>) {
    let mut unread = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => return (None, vec![format!("{}: {e}", dir.display())]),
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| match e {
            Ok(e) => Some(e.path()),
            Err(e) => {
                unread.push(format!("{}: {e}", dir.display()));
                None
            }
        })
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    for p in files {
        match Mapping::load(&p) {
            Ok(m) if m.version == version => return (Some((m, p)), unread),
            Ok(_) => {}
            Err(e) => unread.push(format!("{}: {e:#}", p.display())),
        }
    }
    (None, unread)
}

async fn from_audit_row(
    pool: &crate::stores::db::Db,
    args: &ExplainArgs,
    request_id: &str,
    out: &mut Said,
) -> Result<(), Exit> {
    // The row, and the version it names as the database's mapping store holds it (re-hashed and
    // compiled as a gateway loads it).
    let rows = crate::stores::audit::rows_of_request(pool, request_id)
        .await
        .map_err(failure)?;
    let stored = match rows.first().and_then(|r| r.mapping_version.as_deref()) {
        Some(v) => Some(crate::gateway::reload::load_stored(pool, v).await),
        None => None,
    };
    let Some(first) = rows.first() else {
        return Err(Exit {
            code: crate::cli::EXIT_PROBLEMS,
            error: anyhow::anyhow!(
                "request {request_id}: no audit row (only denials, shadow denials and drift are recorded)"
            ),
        });
    };
    for r in &rows {
        put!(
            out,
            "audit row: {} {} {} {} admin={} rule={} reason={} mapping_version={}",
            r.created_at_utc
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            r.event_type,
            r.method,
            r.path,
            r.admin_id.as_deref().unwrap_or("-"),
            r.route.as_deref().unwrap_or("-"),
            r.reason,
            r.mapping_version.as_deref().unwrap_or("-"),
        );
    }
    if rows.iter().any(|r| r.event_type == "access_denied") {
        // The row records the decision, not the answer (docs/design/durability.md).
        put!(out, "answer: not forwarded; 403 if this row was durable within the gateway's --db-timeout-ms, else 503 (a denial answered 503 gets its row when the database answers again)");
    }
    use crate::gateway::reload::{db_name, Unloadable};
    let (mapping, file) = match (first.mapping_version.as_deref(), stored) {
        (Some(v), Some(Ok(m))) => {
            put!(out, "mapping: version {v}, the row's, from the database's mapping store (`rbac-gateway mapping show {v}`)");
            (m, PathBuf::from(db_name(v)))
        }
        (Some(v), Some(Err(e))) => {
            let why = match e {
                Unloadable::Missing(_) => {
                    "is not in the database's mapping store (pushed before `mapping push`, or served from a file)".to_string()
                }
                Unloadable::Db(e) => format!("cannot be read from the database's mapping store ({e})"),
                other => format!("is in the database's mapping store but does not load: {other}"),
            };
            put!(out, "note: mapping version {v}, the row's, {why}: looking for it in --routes and --mapping-history");
            mapping_at_hand(args, Some(v), out)?
        }
        (version, _) => mapping_at_hand(args, version, out)?,
    };
    put!(
        out,
        "note: roles are read as they are now, not as they were at the row's time"
    );
    let request = Request {
        mapping: &mapping,
        routes: &file,
        admin: first.admin_id.as_deref(),
        method: &first.method,
        path: &first.path,
        pool: first.admin_id.as_ref().map(|_| pool),
    };
    explain_request(args, &request, out).await
}

/// The mapping of version `version` (the row's) among the files at hand, `--routes` and
/// `--mapping-history`, and the file it was read from; `--routes`, warned, when none is.
fn mapping_at_hand(
    args: &ExplainArgs,
    version: Option<&str>,
    out: &mut Said,
) -> Result<(Mapping, PathBuf), Exit> {
    let at_hand = load_mapping(&args.routes)?;
    Ok(match version {
        Some(v) if v == at_hand.version => {
            put!(
                out,
                "mapping: {} is version {v}, the row's",
                args.routes.display()
            );
            (at_hand, args.routes.clone())
        }
        Some(v) => match args.mapping_history.as_deref().map(|d| find_version(d, v)) {
            Some((Some((m, p)), _)) => {
                put!(
                    out,
                    "mapping: {} is version {v}, the row's (--routes is {})",
                    p.display(),
                    at_hand.version
                );
                (m, p)
            }
            searched => {
                let unread = match searched {
                    Some((None, unread)) if !unread.is_empty() => {
                        format!(
                            " ({} could not be read: {})",
                            unread.len(),
                            unread.join("; ")
                        )
                    }
                    _ => String::new(),
                };
                put!(
                    out,
                    "WARNING: the row was decided with mapping version {v}; {} is version {} and no file of version {v} is at hand{}{unread}: explained with {}, which may decide differently",
                    args.routes.display(),
                    at_hand.version,
                    if args.mapping_history.is_some() { " in --mapping-history" } else { " (give --mapping-history DIR)" },
                    at_hand.version,
                );
                (at_hand, args.routes.clone())
            }
        },
        None => {
            put!(
                out,
                "WARNING: the row carries no mapping version: explained with {} (version {})",
                args.routes.display(),
                at_hand.version
            );
            (at_hand, args.routes.clone())
        }
    })
}

/// One request to explain: who asks, what, and under which mapping.
struct Request<'a> {
    mapping: &'a Mapping,
    /// Where `mapping` was read (a file, or its name in the mapping store): the rule's place.
    routes: &'a Path,
    /// None: a request without a session.
    admin: Option<&'a str>,
    method: &'a str,
    path: &'a str,
    /// Where the admin's roles are read; needed for an admin.
    pool: Option<&'a crate::stores::db::Db>,
}

/// The decision for `request`, and why.
async fn explain_request(
    args: &ExplainArgs,
    request: &Request<'_>,
    out: &mut Said,
) -> Result<(), Exit> {
    let Request {
        mapping,
        routes,
        admin,
        method,
        path,
        pool,
    } = *request;
    let t = match doors_target(method, path) {
        Ok(t) => t,
        Err(r) => {
            put!(out, "decision: {}", Outcome::Refuse(r).describe());
            put!(out, "answer: 400");
            return Ok(());
        }
    };
    // The admin's sessions, roles and ticket grants are read from Console's tables: looked at
    // first, as this command's role runs what the planner evaluates there.
    let _held = match pool {
        Some(pool) => Some(super::toolbox::console_looked(pool).await?),
        None => None,
    };
    // `serve` decides on a session: an admin whose every session expired or was revoked is a
    // request without one (302, or 401 from the reader API), whatever their roles.
    let admin = match (admin, pool) {
        (Some(a), Some(pool)) if args.request_id.is_none() => live_session(pool, a, out).await?,
        (other, _) => other,
    };
    if let Some(call) = args
        .reader
        .rbac_api
        .then(|| crate::policy::reader::Call::of(&t))
        .flatten()
    {
        return explain_reader_api(admin, method, &call, out);
    }
    let found = mapping.find(method, t.path());
    let route = found.as_ref().map(|(r, _)| *r);
    match route {
        Some(r) => {
            put!(
                out,
                "rule: {} ({}:{}:{})",
                r.label(),
                routes.display(),
                r.line,
                r.col
            );
            put!(
                out,
                "requires: {}",
                if r.required().is_empty() {
                    r.access.as_str().to_string()
                } else {
                    r.required()
                }
            );
            put!(
                out,
                "access: {}, mode: {}",
                r.access.as_str(),
                r.mode.as_str()
            );
        }
        None => put!(out, "rule: none matches {} {}", method, t.path()),
    }
    let switches = args.decision.switches();
    if switches.kill_switch {
        put!(out, "kill switch: on (FLAG_RBAC_V2=0), every route is off");
    }
    let (principal, pool) = principal_of(args, admin, pool, out).await?;
    let facts = Facts {
        method,
        target: &t,
        token: pool.as_ref().map(|_| "explain"),
        client_ip: None,
        user_agent: None,
        request_id: "explain",
        at: std::time::Instant::now(),
    };
    let outcome = match pool {
        Some(pool) => {
            let authority = ExplainAuthority {
                pool: pool.clone(),
                principal: principal.clone(),
                metrics: Metrics::new(),
                ticket_validation_url: args.decision.ticket_validation_url.clone(),
            };
            decide(&authority, mapping, switches, &facts).await
        }
        // No session: nothing is read (the cookie-less request never reaches the authority).
        None => decide(&InMemory::default(), mapping, switches, &facts).await,
    };
    put_decision(&outcome, &principal, out);
    Ok(())
}

/// What `outcome` adds to the admin's roles, decides and answers, as `serve` carries it out.
fn put_decision(outcome: &Outcome, principal: &Principal, out: &mut Said) {
    if let Outcome::Forward(f) | Outcome::ShadowDeny { forward: f, .. } = outcome {
        if let Some(p) = &f.principal {
            // Only what the ticket added: the roles the admin holds without it are listed above.
            let added: Vec<&str> = p
                .roles()
                .iter()
                .filter(|r| !principal.has_role(r))
                .map(String::as_str)
                .collect();
            if !added.is_empty() {
                put!(out, "ticket-scoped grants add: {}", added.join(","));
            }
        }
    }
    // What the doors carry out (src/policy/answer.rs): an admin id or role name that is not
    // a valid header value is never sent to Console, the request gets 503.
    let answer = crate::policy::answer::answer_of(outcome);
    let unsendable = matches!(answer, Answer::Reply(Reply::Unavailable))
        && !matches!(outcome, Outcome::Unavailable(_));
    match outcome {
        Outcome::ShadowDeny { row, .. } if unsendable => put!(
            out,
            "decision: shadow mode: would deny, {}; an {} row is written",
            row.reason,
            row.event_type
        ),
        _ => put!(out, "decision: {}", outcome.describe()),
    }
    if unsendable {
        put!(
            out,
            "not forwarded: the admin id or a role name is not a valid header value"
        );
    }
    put!(
        out,
        "answer: {}",
        answer
            .proxy_status()
            .map_or("forwarded (Console answers)".to_string(), |s| s.to_string())
    );
}

/// The admin's principal as `serve` would read it now, and the pool its ticket grants are read
/// from; an empty one and no pool without an admin (nothing is read).
async fn principal_of<'a>(
    args: &ExplainArgs,
    admin: Option<&str>,
    pool: Option<&'a crate::stores::db::Db>,
    out: &mut Said,
) -> Result<(Arc<Principal>, Option<&'a crate::stores::db::Db>), Exit> {
    Ok(match (admin, pool) {
        (Some(admin), Some(pool)) => {
            // `live_session` refused an --admin that does not exist. From --request-id, the
            // row's admin may have been removed since: explained with the roles it has now
            // (none).
            let requires_alert = args.decision.break_glass_requires_alert;
            let principal = identity::resolve_with(pool, admin, Duration::ZERO, requires_alert)
                .await
                .map_err(failure)?;
            let provenance = identity::provenance(pool, admin, requires_alert)
                .await
                .map_err(failure)?;
            if requires_alert && !principal.break_glass {
                let waiting = identity::break_glass_active(pool, admin)
                    .await
                    .map_err(failure)?;
                if waiting {
                    put!(out, "break-glass: a session is active, not honoured until its alert is delivered (--break-glass-requires-alert)");
                }
            }
            put!(
                out,
                "admin: {}{}",
                admin,
                if principal.break_glass {
                    " (break-glass active)"
                } else {
                    ""
                }
            );
            put!(out, "effective roles:");
            for line in &provenance {
                put!(out, "  {line}");
            }
            if principal.roles().is_empty() {
                put!(out, "  (none)");
            }
            put!(
                out,
                "permissions: {}",
                if principal.permissions().is_empty() {
                    "(none)".into()
                } else {
                    principal.permissions().join(", ")
                }
            );
            (principal, Some(pool))
        }
        _ => {
            // Without --admin, the first line said so already.
            if args.admin.is_some() || args.request_id.is_some() {
                put!(
                    out,
                    "admin: none (the request had no session the gateway knew)"
                );
            }
            (Arc::new(Principal::for_tests("", vec![], vec![])), None)
        }
    })
}

/// A reader API path (`--rbac-api`, on by default as in `serve`): the gateway answers it
/// itself, in the order `serve` does (method, parameters, session), and never forwards it.
fn explain_reader_api(
    admin: Option<&str>,
    method: &str,
    call: &crate::policy::reader::Call,
    out: &mut Said,
) -> Result<(), Exit> {
    put!(
        out,
        "rule: none applies: Console's reader API, answered by the gateway (--rbac-api)"
    );
    // `serve` answers in this order: the method and parameters, then the session.
    let (answer, decision, refused) = crate::policy::reader::outline(call, method, admin.is_some());
    if let Some(body) = refused {
        put!(out, "refused: {body}");
    }
    put!(out, "decision: {decision}");
    put!(out, "answer: {answer}");
    Ok(())
}
