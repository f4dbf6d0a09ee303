//! `rbac-gateway matrix`: who reaches which route, for an access review. Rows are a request
//! without a session, each group of the catalogue and, with `--database-url`, each admin; every
//! cell is [`crate::policy::outcome::decide`]'s answer for that principal ([`crate::cli::access`]).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use serde::Serialize;

use std::path::Path;

use super::toolbox::{
    command_pool, failure, load_mapping, load_stored_ref, needs_database_url, runtime, say,
    stdout_failed, stored_ref, usage,
};
use super::Exit;
use crate::cli::access::{cell, probes, Catalogue, Cell, InMemory, Probe};
use crate::cli::args::MatrixArgs;
use crate::policy::mapping::Mapping;
use crate::policy::outcome::Switches;
use crate::policy::principal::Principal;
use crate::stores::identity;

/// One column: a method of a rule, and the path it was asked on.
#[derive(Debug, Clone, Serialize)]
pub struct Column {
    pub method: String,
    pub rule: String,
    pub path: Option<String>,
    pub cluster: Option<String>,
    pub access: &'static str,
    pub mode: &'static str,
    pub mode_from: &'static str,
    pub required: String,
}

/// One principal and its cells, in the order of the columns.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// `no-session`, `group` or `admin`.
    pub kind: &'static str,
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// The admin's groups (a group row: itself).
    pub groups: Vec<String>,
    pub break_glass: bool,
    /// Effective roles, after inheritance.
    pub roles: Vec<String>,
    pub cells: Vec<Cell>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Matrix {
    pub mapping: String,
    pub version: String,
    /// Where the groups came from: the database, or the catalogue `migrate` seeds.
    pub catalogue: &'static str,
    pub kill_switch: bool,
    pub ticket_grants: bool,
    pub rbac_api: bool,
    pub columns: Vec<Column>,
    pub rows: Vec<Row>,
}

/// A principal to review: who, and how each of its roles is held.
pub struct Reviewed {
    pub kind: &'static str,
    pub name: String,
    pub email: Option<String>,
    pub groups: Vec<String>,
    pub principal: Option<Arc<Principal>>,
    /// role -> how it is held ("group g -> r -> inherits p").
    pub how: BTreeMap<String, String>,
    /// customer id -> (roles, permissions) of live ticket grants (admins only).
    pub tickets: BTreeMap<i32, (Vec<String>, Vec<String>)>,
}

/// The request without a session, then each group of `catalogue`.
pub fn catalogue_principals(catalogue: &Catalogue) -> Vec<Reviewed> {
    let mut out = vec![Reviewed {
        kind: "no-session",
        name: "(no session)".into(),
        email: None,
        groups: vec![],
        principal: None,
        how: BTreeMap::new(),
        tickets: BTreeMap::new(),
    }];
    for (group, roles) in &catalogue.groups {
        out.push(Reviewed {
            kind: "group",
            name: group.clone(),
            email: None,
            groups: vec![group.clone()],
            principal: Some(Arc::new(catalogue.group_principal(group))),
            how: catalogue.expand(&format!("group {group}"), roles),
            tickets: BTreeMap::new(),
        });
    }
    out
}

/// Who a review asks about, and the catalogue and its source they come from: the groups of the
/// catalogue `migrate` seeds without a database; with one, its catalogue's groups and every
/// admin ([`admin_principals`]). Shared by `matrix` and `diff` (and so the cockpit).
pub async fn reviewed(
    pool: Option<&crate::stores::db::Db>,
    requires_alert: bool,
) -> Result<(Catalogue, &'static str, Vec<Reviewed>), Exit> {
    let (catalogue, source, admins) = match pool {
        None => (Catalogue::seeded(), "the catalogue migrate seeds", vec![]),
        Some(pool) => {
            let _held = super::toolbox::console_looked(pool).await?;
            let catalogue = Catalogue::read(pool)
                .await
                .context("cannot read the role catalogue")
                .map_err(failure)?;
            let admins = admin_principals(pool, requires_alert)
                .await
                .context("cannot read the admins")
                .map_err(failure)?;
            (catalogue, "the database", admins)
        }
    };
    let mut who = catalogue_principals(&catalogue);
    who.extend(admins);
    Ok((catalogue, source, who))
}

/// Every admin of the database, with the roles `serve` would resolve for them now (break-glass
/// included) and their live ticket grants.
pub async fn admin_principals(
    pool: &crate::stores::db::Db,
    requires_alert: bool,
) -> Result<Vec<Reviewed>, sqlx::Error> {
    let admins = crate::stores::catalogue::admins(pool).await?;
    // Each admin's reads in turn, a few admins side by side (the cockpit's pool has several
    // connections; a command's has one, and a few waiting for it stay well within its timeout).
    use futures_util::{StreamExt, TryStreamExt};
    futures_util::stream::iter(admins)
        .map(|a| admin_principal(pool, a.id, a.email, a.groups, requires_alert))
        .buffered(ADMINS_AT_ONCE)
        .try_collect()
        .await
}

/// Admins reviewed at once by [`admin_principals`].
const ADMINS_AT_ONCE: usize = 4;

/// One admin, as [`admin_principals`] reviews them.
pub(crate) async fn admin_principal(
    pool: &crate::stores::db::Db,
    id: String,
    email: String,
    groups: Vec<String>,
    requires_alert: bool,
) -> Result<Reviewed, sqlx::Error> {
    let principal = identity::resolve_with(pool, &id, Duration::ZERO, requires_alert).await?;
    let how = identity::provenance(pool, &id, requires_alert)
        .await?
        .into_iter()
        .filter_map(|line| {
            line.split_once(": ")
                .map(|(r, p)| (r.to_string(), p.to_string()))
        })
        .collect();
    let customers = crate::stores::ticket::customers_with_grants(pool, &id).await?;
    let mut tickets = BTreeMap::new();
    for c in customers {
        let g = crate::stores::ticket::grants(pool, &id, c, None).await?;
        tickets.insert(c, (g.roles, g.permissions));
    }
    Ok(Reviewed {
        kind: "admin",
        name: id,
        email: Some(email),
        groups,
        principal: Some(principal),
        how,
        tickets,
    })
}

/// How the gateway is set up, as `serve` reads it: what a cell depends on besides the mapping
/// and the principal.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub switches: Switches,
    pub rbac_api: bool,
    pub break_glass_requires_alert: bool,
}

/// The matrix of the mapping `routes` names (`file`, already loaded, or a `db:` version read
/// here): with a database, its groups and a row per admin; without, the groups `migrate`
/// seeds. What `matrix` prints and the cockpit's matrix shows.
pub(crate) async fn report(
    pool: Option<&crate::stores::db::Db>,
    routes: &Path,
    file: Option<Mapping>,
    settings: Settings,
) -> Result<Matrix, Exit> {
    let mapping = match (file, stored_ref(routes), pool) {
        (Some(m), _, _) => m,
        (None, Some(what), Some(pool)) => load_stored_ref(pool, what).await?,
        _ => return Err(needs_database_url(routes, "--database-url")),
    };
    let (catalogue, source, who) = reviewed(pool, settings.break_glass_requires_alert).await?;
    Ok(build(
        &mapping,
        settings.switches,
        settings.rbac_api,
        &catalogue,
        source,
        who,
    )
    .await)
}

/// Every cell of `who` x the probes of `mapping`.
pub async fn build(
    mapping: &Mapping,
    switches: Switches,
    rbac_api: bool,
    catalogue: &Catalogue,
    catalogue_source: &'static str,
    who: Vec<Reviewed>,
) -> Matrix {
    let probes = probes(mapping);
    let columns = probes
        .iter()
        .map(|p| Column {
            method: p.method.clone(),
            rule: p.route.label().to_string(),
            path: p.path.clone(),
            cluster: p.route.meta.cluster.clone(),
            access: p.route.access.as_str(),
            mode: p.route.mode.as_str(),
            mode_from: p.route.mode_from.as_str(),
            required: p.route.required(),
        })
        .collect();
    let mut rows = Vec::with_capacity(who.len());
    for r in who {
        let mut cells = Vec::with_capacity(probes.len());
        for probe in &probes {
            cells.push(review(mapping, switches, rbac_api, catalogue, &r, probe).await);
        }
        rows.push(Row {
            kind: r.kind,
            break_glass: r.principal.as_ref().is_some_and(|p| p.break_glass),
            roles: r
                .principal
                .as_ref()
                .map(|p| p.roles().to_vec())
                .unwrap_or_default(),
            name: r.name,
            email: r.email,
            groups: r.groups,
            cells,
        });
    }
    Matrix {
        mapping: mapping.file.display().to_string(),
        version: mapping.version.clone(),
        catalogue: catalogue_source,
        kill_switch: switches.kill_switch,
        ticket_grants: switches.ticket_grants,
        rbac_api,
        columns,
        rows,
    }
}

/// One cell, with how its grant is held and the customers a ticket grant opens it for.
async fn review(
    mapping: &Mapping,
    switches: Switches,
    rbac_api: bool,
    catalogue: &Catalogue,
    r: &Reviewed,
    probe: &Probe<'_>,
) -> Cell {
    let authority = InMemory {
        principal: r.principal.clone(),
        tickets: BTreeMap::new(),
    };
    let mut c = cell(
        mapping,
        switches,
        rbac_api,
        &authority,
        &probe.method,
        probe.path.as_deref(),
    )
    .await;
    c.how = match c.by.as_deref().and_then(|b| b.split_once(':')) {
        Some(("role", role)) => r.how.get(role).cloned(),
        Some(("permission", perm)) => r
            .how
            .iter()
            .find(|(role, _)| {
                catalogue
                    .permissions
                    .get(role.as_str())
                    .is_some_and(|ps| ps.contains(perm))
            })
            .map(|(_, how)| format!("{how} (carries {perm})")),
        _ => None,
    };
    // Ticket-scoped grants open a rule with customer_param for their customers only: asked of
    // decide on the probe's path with each such customer's id.
    if let (Some(param), Some(principal)) = (&probe.route.customer_param, &r.principal) {
        let mut opened = Vec::new();
        for (customer, grants) in &r.tickets {
            let Some(path) = probe.path_with(param, &customer.to_string()) else {
                continue;
            };
            let with = InMemory {
                principal: Some(principal.clone()),
                tickets: BTreeMap::from([(*customer, grants.clone())]),
            };
            let t = cell(
                mapping,
                switches,
                rbac_api,
                &with,
                &probe.method,
                Some(&path),
            )
            .await;
            if t.reach > c.reach {
                opened.push(format!("{customer} ({})", t.by.unwrap_or_default()));
            }
        }
        if !opened.is_empty() {
            c.ticket = Some(format!("ticket grants, customers {}", opened.join(", ")));
        }
    }
    c
}

/// A cell in a Markdown table.
pub(crate) fn short(c: &Cell) -> String {
    let s = match c.outcome {
        "allowed" => "allow",
        "denied" => "403",
        "redirected" => "302",
        "gone" => "404",
        "shadow_denied" => "shadow-deny",
        "refused" => "400",
        "unavailable" => "503",
        "reader_api" if c.status == Some(200) => "reader-api",
        "reader_api" => "reader-api 401",
        other => other,
    };
    match (&c.ticket, c.how.as_deref()) {
        (Some(_), _) => format!("{s} +ticket"),
        (None, Some(how)) if how.starts_with("break-glass") => format!("{s} (break-glass)"),
        _ => s.to_string(),
    }
}

fn markdown(m: &Matrix) {
    say!("# Access matrix: {} (version {})", m.mapping, m.version);
    say!();
    say!(
        "Groups from {}. Kill switch {}; ticket-scoped grants {}. Each cell is the gateway's decision for that principal on the rule's path: allow (a role or permission held), 403, 302 (no session), public / machine (forwarded without a session), off / shadow-deny (forwarded, Console decides), 404 (gone); +ticket: ticket-scoped grants allow it for some customers (see --format json or csv).",
        m.catalogue,
        if m.kill_switch { "ON (every route off)" } else { "off" },
        if m.ticket_grants { "on" } else { "off (FLAG_TICKET_SCOPED_GRANTS=0, or no --ticket-validation-url and no waiver: T-PEN-6)" }
    );
    for (kind, title) in [("group", "Groups"), ("admin", "Admins")] {
        let rows: Vec<&Row> = m
            .rows
            .iter()
            .filter(|r| r.kind == kind || (kind == "group" && r.kind == "no-session"))
            .collect();
        if !rows.iter().any(|r| r.kind == kind) {
            continue;
        }
        say!();
        say!("## {title} x routes");
        say!();
        let names: Vec<String> = rows
            .iter()
            .map(|r| r.email.clone().unwrap_or_else(|| r.name.clone()))
            .collect();
        let names: Vec<String> = names.iter().map(|n| n.replace('|', "\\|")).collect();
        say!("| method | rule | cluster | mode | {} |", names.join(" | "));
        say!("|---|---|---|---|{}", "---|".repeat(rows.len()));
        for (i, col) in m.columns.iter().enumerate() {
            let cells: Vec<String> = rows.iter().map(|r| short(&r.cells[i])).collect();
            say!(
                "| {} | `{}` | {} | {} | {} |",
                col.method,
                // A `|` splits a table's cell even inside a code span (GFM).
                col.rule
                    .split_once(' ')
                    .map_or(col.rule.as_str(), |x| x.1)
                    .replace('|', "\\|"),
                col.cluster.as_deref().unwrap_or("-"),
                col.mode,
                cells.join(" | ")
            );
        }
    }
}

/// One line per cell; the last column is the mapping's version (on every line, as CSV has no
/// header of its own: the version `serve` reports).
fn csv(m: &Matrix) -> Result<(), Exit> {
    let mut w = csv::Writer::from_writer(std::io::stdout());
    let write = |w: &mut csv::Writer<std::io::Stdout>, rec: &[&str]| {
        w.write_record(rec).map_err(|e| match e.into_kind() {
            csv::ErrorKind::Io(io) => stdout_failed(io),
            other => failure(anyhow::anyhow!("cannot write the report: {other:?}")),
        })
    };
    write(
        &mut w,
        &[
            "kind",
            "principal",
            "email",
            "method",
            "rule",
            "path",
            "cluster",
            "mode",
            "outcome",
            "status",
            "reach",
            "decision",
            "by",
            "how",
            "ticket",
            "version",
        ],
    )?;
    for r in &m.rows {
        for (col, c) in m.columns.iter().zip(&r.cells) {
            let status = c.status.map(|s| s.to_string()).unwrap_or_default();
            write(
                &mut w,
                &[
                    r.kind,
                    &r.name,
                    r.email.as_deref().unwrap_or(""),
                    &col.method,
                    &col.rule,
                    col.path.as_deref().unwrap_or(""),
                    col.cluster.as_deref().unwrap_or(""),
                    col.mode,
                    c.outcome,
                    &status,
                    c.reach.as_str(),
                    &c.decision,
                    c.by.as_deref().unwrap_or(""),
                    c.how.as_deref().unwrap_or(""),
                    c.ticket.as_deref().unwrap_or(""),
                    &m.version,
                ],
            )?;
        }
    }
    w.flush().map_err(|e| stdout_failed(e))
}

pub fn matrix(args: MatrixArgs) -> Result<(), Exit> {
    // A file is read (and its errors reported) before any connection.
    let file = match stored_ref(&args.routes) {
        Some(_) if args.database_url.is_none() => {
            return Err(needs_database_url(&args.routes, "--database-url"))
        }
        Some(_) => None,
        None => Some(load_mapping(&args.routes)?),
    };
    let settings = Settings {
        switches: args.decision.switches(),
        rbac_api: args.reader.rbac_api,
        break_glass_requires_alert: args.decision.break_glass_requires_alert,
    };
    let rt = runtime()?;
    let m = rt.block_on(async {
        let pool = match &args.database_url {
            Some(url) => Some(command_pool(url, 2, Duration::from_secs(10)).await?),
            None => None,
        };
        report(pool.as_ref(), &args.routes, file, settings).await
    })?;
    match args.format.as_str() {
        "json" => match serde_json::to_string_pretty(&m) {
            Ok(text) => say!("{text}"),
            Err(e) => return Err(failure(e)),
        },
        "csv" => csv(&m)?,
        "md" => markdown(&m),
        other => return Err(usage(anyhow::anyhow!("--format {other}: md, csv or json"))),
    }
    let unreachable = m.columns.iter().filter(|c| c.path.is_none()).count();
    if unreachable > 0 {
        eprintln!("rbac-gateway: {unreachable} rule method(s) could not be reached by any path tried: their cells say unreachable");
    }
    Ok(())
}
