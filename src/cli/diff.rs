//! `rbac-gateway diff OLD.toml NEW.toml`: the blast radius of a mapping change before the file
//! is swapped. Every method and rule whose access, required roles or permissions, mode or
//! cluster changes; then, asked of [`crate::policy::outcome::decide`] on both mappings, what each group
//! (and, with `--database-url`, each admin) gains and loses. Exit 0: access does not change;
//! 1: it does; 64: a file is unreadable or invalid; 69: the database cannot be read.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::anyhow;
use serde::Serialize;

use super::matrix::{reviewed, Reviewed};
use super::toolbox::{
    command_pool, failure, load_mapping, load_stored_ref, needs_database_url, runtime, say,
    stored_ref,
};
use super::Exit;
use crate::cli::access::{cell, probes, Cell, InMemory};
use crate::cli::{args::DiffArgs, EXIT_PROBLEMS};
use crate::policy::mapping::{Mapping, Route};
use crate::policy::outcome::Switches;

/// What one method of one rule is, for comparison.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    access: &'static str,
    roles: BTreeSet<String>,
    permissions: BTreeSet<String>,
    mode: &'static str,
    cluster: Option<String>,
    customer_param: Option<String>,
}

impl Rule {
    fn of(r: &Route) -> Rule {
        Rule {
            access: r.access.as_str(),
            roles: r.roles.iter().map(|n| n.to_string()).collect(),
            permissions: r.permissions.iter().map(|n| n.to_string()).collect(),
            // Mode matters only where a session is asked for.
            mode: if r.access == crate::policy::mapping::Access::Protected {
                r.mode.as_str()
            } else {
                "-"
            },
            cluster: r.meta.cluster.clone(),
            customer_param: r.customer_param.clone(),
        }
    }

    fn describe(&self) -> String {
        let mut s = match self.access {
            "protected" => {
                let mut req: Vec<String> = self.roles.iter().map(|r| format!("role:{r}")).collect();
                req.extend(self.permissions.iter().map(|p| format!("permission:{p}")));
                format!("{}, {}", req.join(" | "), self.mode)
            }
            other => other.to_string(),
        };
        if let Some(c) = &self.customer_param {
            s.push_str(&format!(", customer_param {c}"));
        }
        s.push_str(&format!(
            ", cluster {}",
            self.cluster.as_deref().unwrap_or("-")
        ));
        s
    }
}

fn index(m: &Mapping) -> BTreeMap<(String, String), Rule> {
    let mut out = BTreeMap::new();
    for r in &m.routes {
        for method in &r.methods {
            out.insert((method.clone(), r.path.clone()), Rule::of(r));
        }
    }
    out
}

fn set_change(what: &str, a: &BTreeSet<String>, b: &BTreeSet<String>) -> Option<String> {
    let added: Vec<&str> = b.difference(a).map(String::as_str).collect();
    let removed: Vec<&str> = a.difference(b).map(String::as_str).collect();
    if added.is_empty() && removed.is_empty() {
        return None;
    }
    let mut parts = Vec::new();
    if !removed.is_empty() {
        parts.push(format!("-{}", removed.join(" -")));
    }
    if !added.is_empty() {
        parts.push(format!("+{}", added.join(" +")));
    }
    Some(format!("{what} {}", parts.join(" ")))
}

/// One changed method of a rule.
#[derive(Debug, Clone, Serialize)]
pub struct RuleChange {
    pub method: String,
    pub rule: String,
    /// added, removed or changed.
    pub change: &'static str,
    pub what: Vec<String>,
    /// Whether the change can alter a decision (a cluster renamed alone cannot).
    pub access: bool,
}

/// A request whose answer changes for a principal.
#[derive(Debug, Clone, Serialize)]
pub struct Shift {
    pub method: String,
    pub path: String,
    /// The rule that decides it in the new mapping (or the old one when none does now).
    pub rule: String,
    pub before: Cell,
    pub after: Cell,
}

#[derive(Debug, Clone, Serialize)]
pub struct Affected {
    pub kind: &'static str,
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// Requests it reaches further than before (no -> console -> yes).
    pub gains: Vec<Shift>,
    pub losses: Vec<Shift>,
    /// Answers that change without going further or less far (another role allows it).
    pub other: Vec<Shift>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub old: String,
    pub old_version: String,
    pub new: String,
    pub new_version: String,
    pub catalogue: &'static str,
    pub rules: Vec<RuleChange>,
    pub principals: Vec<Affected>,
    pub access_changes: bool,
}

pub fn diff(args: DiffArgs) -> Result<(), Exit> {
    // A side named `db:VERSION` (or `db:active`, `db:previous`) is read from the mapping store;
    // a file is read (and its errors reported) first, before any connection.
    let mut sides = Vec::new();
    for side in [&args.old, &args.new] {
        sides.push(match stored_ref(side) {
            Some(_) if args.database_url.is_none() => {
                return Err(needs_database_url(side, "--database-url"))
            }
            Some(_) => None,
            None => Some(load_mapping(side)?),
        });
    }
    let report = runtime()?
        .block_on(async {
            let pool = match &args.database_url {
                Some(url) => Some(command_pool(url, 2, Duration::from_secs(10)).await?),
                None => None,
            };
            report(pool.as_ref(), [&args.old, &args.new], sides).await
        })
        // A database that cannot be read is 69, as in `test`: exit 1 says access changes.
        .map_err(|e| match e.code {
            EXIT_PROBLEMS => Exit {
                code: crate::cli::EXIT_UNAVAILABLE,
                error: e.error,
            },
            _ => e,
        })?;
    if args.json {
        match serde_json::to_string_pretty(&report) {
            Ok(text) => say!("{text}"),
            Err(e) => return Err(failure(e)),
        }
    } else {
        print(&report);
    }
    if report.access_changes {
        return Err(Exit {
            code: EXIT_PROBLEMS,
            error: anyhow!(
                "access changes: {} rule method(s), {} principal(s) affected",
                report.rules.iter().filter(|r| r.access).count(),
                report
                    .principals
                    .iter()
                    .filter(|p| !p.gains.is_empty() || !p.losses.is_empty())
                    .count()
            ),
        });
    }
    Ok(())
}

/// The report of `diff` between the mappings `sides` name (each a file already loaded, or a
/// `db:` version read here): what the command prints and the cockpit's timeline shows.
pub(crate) async fn report(
    pool: Option<&crate::stores::db::Db>,
    names: [&std::path::Path; 2],
    files: Vec<Option<Mapping>>,
) -> Result<Report, Exit> {
    // The mappings are compared, not the environment: the kill switch would make both all off.
    let switches = Switches {
        kill_switch: false,
        ticket_grants: true,
    };
    let mut loaded = Vec::new();
    for (side, file) in names.into_iter().zip(files) {
        loaded.push(match (file, stored_ref(side), pool) {
            (Some(m), _, _) => m,
            (None, Some(what), Some(pool)) => load_stored_ref(pool, what).await?,
            _ => return Err(needs_database_url(side, "--database-url")),
        });
    }
    let new = loaded.pop().expect("two sides");
    let old = loaded.pop().expect("two sides");
    let (_, source, who) = reviewed(pool, false).await?;
    Ok(compare(&old, &new, switches, source, who).await)
}

pub(crate) async fn compare(
    old: &Mapping,
    new: &Mapping,
    switches: Switches,
    catalogue: &'static str,
    who: Vec<Reviewed>,
) -> Report {
    let rules = rule_changes(old, new);
    // The requests to ask about: a path for every method of every rule of either mapping (a
    // new rule can take requests an old one decided, and the other way round).
    let mut asked: BTreeMap<(String, String), String> = BTreeMap::new();
    for m in [new, old] {
        for p in probes(m) {
            if let Some(path) = p.path {
                let rule = new
                    .find(&p.method, &path)
                    .or_else(|| old.find(&p.method, &path))
                    .map_or_else(|| "-".to_string(), |(r, _)| r.label().to_string());
                asked.entry((p.method, path)).or_insert(rule);
            }
        }
    }
    let mut principals = Vec::new();
    for r in who {
        let authority = InMemory {
            principal: r.principal.clone(),
            tickets: BTreeMap::new(),
        };
        let mut affected = Affected {
            kind: r.kind,
            name: r.name.clone(),
            email: r.email.clone(),
            gains: vec![],
            losses: vec![],
            other: vec![],
        };
        for ((method, path), rule) in &asked {
            let before = cell(old, switches, true, &authority, method, Some(path)).await;
            let after = cell(new, switches, true, &authority, method, Some(path)).await;
            if before.outcome == after.outcome && before.reach == after.reach {
                continue;
            }
            let shift = Shift {
                method: method.clone(),
                path: path.clone(),
                rule: rule.clone(),
                before,
                after,
            };
            match shift.after.reach.cmp(&shift.before.reach) {
                std::cmp::Ordering::Greater => affected.gains.push(shift),
                std::cmp::Ordering::Less => affected.losses.push(shift),
                std::cmp::Ordering::Equal => affected.other.push(shift),
            }
        }
        principals.push(affected);
    }
    let access_changes = rules.iter().any(|r| r.access)
        || principals
            .iter()
            .any(|p| !p.gains.is_empty() || !p.losses.is_empty() || !p.other.is_empty());
    Report {
        old: old.file.display().to_string(),
        old_version: old.version.clone(),
        new: new.file.display().to_string(),
        new_version: new.version.clone(),
        catalogue,
        rules,
        principals,
        access_changes,
    }
}

/// Each method and rule removed, added or changed between `old` and `new`, and what changed.
fn rule_changes(old: &Mapping, new: &Mapping) -> Vec<RuleChange> {
    let (a, b) = (index(old), index(new));
    let mut rules = Vec::new();
    for (k @ (method, path), before) in &a {
        let rule = format!("{method} {path}");
        match b.get(k) {
            None => rules.push(RuleChange {
                method: method.clone(),
                rule,
                change: "removed",
                what: vec![before.describe()],
                access: true,
            }),
            Some(after) if after != before => {
                let mut what = Vec::new();
                if before.access != after.access {
                    what.push(format!("access {} -> {}", before.access, after.access));
                }
                what.extend(set_change("roles", &before.roles, &after.roles));
                what.extend(set_change(
                    "permissions",
                    &before.permissions,
                    &after.permissions,
                ));
                if before.mode != after.mode {
                    what.push(format!("mode {} -> {}", before.mode, after.mode));
                }
                if before.customer_param != after.customer_param {
                    what.push(format!(
                        "customer_param {} -> {}",
                        before.customer_param.as_deref().unwrap_or("-"),
                        after.customer_param.as_deref().unwrap_or("-")
                    ));
                }
                if before.cluster != after.cluster {
                    what.push(format!(
                        "cluster {} -> {}",
                        before.cluster.as_deref().unwrap_or("-"),
                        after.cluster.as_deref().unwrap_or("-")
                    ));
                }
                let access = Rule {
                    cluster: None,
                    ..before.clone()
                } != Rule {
                    cluster: None,
                    ..after.clone()
                };
                rules.push(RuleChange {
                    method: method.clone(),
                    rule,
                    change: "changed",
                    what,
                    access,
                });
            }
            Some(_) => {}
        }
    }
    for (k @ (method, path), after) in &b {
        if !a.contains_key(k) {
            rules.push(RuleChange {
                method: method.clone(),
                rule: format!("{method} {path}"),
                change: "added",
                what: vec![after.describe()],
                access: true,
            });
        }
    }
    rules
}

fn shift_line(s: &Shift) -> String {
    format!(
        "{} {} [{}]: {} -> {}",
        s.method, s.path, s.rule, s.before.outcome, s.after.outcome
    )
}

fn print(r: &Report) {
    say!(
        "mapping diff: {} ({}) -> {} ({}); groups from {}",
        r.old,
        r.old_version,
        r.new,
        r.new_version,
        r.catalogue
    );
    if r.rules.is_empty() {
        say!("rules: no method of any rule changes");
    } else {
        say!("rules:");
        for c in &r.rules {
            let mark = match c.change {
                "added" => "+",
                "removed" => "-",
                _ => "~",
            };
            say!(
                "  {mark} {}: {}{}",
                c.rule,
                c.what.join("; "),
                if c.access { "" } else { " (no access change)" }
            );
        }
    }
    for kind in ["no-session", "group"] {
        for p in r.principals.iter().filter(|p| p.kind == kind) {
            let who = if kind == "group" {
                format!("group {}", p.name)
            } else {
                p.name.clone()
            };
            if p.gains.is_empty() && p.losses.is_empty() && p.other.is_empty() {
                say!("{who}: no change");
                continue;
            }
            say!(
                "{who}: gains {}, loses {}, other changes {}",
                p.gains.len(),
                p.losses.len(),
                p.other.len()
            );
            for (sign, list) in [("+", &p.gains), ("-", &p.losses), ("~", &p.other)] {
                for s in list {
                    say!("  {sign} {}", shift_line(s));
                }
            }
        }
    }
    let admins: Vec<&Affected> = r.principals.iter().filter(|p| p.kind == "admin").collect();
    if !admins.is_empty() {
        for (what, pick) in [
            (
                "gain",
                (|p: &Affected| !p.gains.is_empty()) as fn(&Affected) -> bool,
            ),
            ("lose", |p: &Affected| !p.losses.is_empty()),
        ] {
            let ids: Vec<&str> = admins
                .iter()
                .filter(|p| pick(p))
                .map(|p| p.name.as_str())
                .collect();
            say!(
                "admins who {what} access: {}{}",
                ids.len(),
                if ids.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", ids.join(", "))
                }
            );
        }
        for p in admins {
            for (sign, list) in [("+", &p.gains), ("-", &p.losses)] {
                for s in list {
                    say!(
                        "  admin {} <{}>: {sign} {}",
                        p.name,
                        p.email.as_deref().unwrap_or(""),
                        shift_line(s)
                    );
                }
            }
        }
    }
    say!(
        "{}",
        if r.access_changes {
            "access changes"
        } else {
            "no access change"
        }
    );
}
