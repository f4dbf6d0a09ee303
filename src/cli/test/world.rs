//! What a suite is asked against, and what an answer is in a case's words: the principals
//! resolved (from the catalogue, or an admin from the database), the request asked of
//! [`crate::cli::access::ask`] (the function `matrix` asks, which calls `decide`, the function
//! `serve` decides with) and its outcome read as a case's outcome word, reason and rule.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;

use super::file::{Label, Ticket, Who};
use crate::cli::access::{ask, Asked, Catalogue, InMemory};
use crate::policy::mapping::{Mapping, Route};
use crate::policy::outcome::{Outcome, Switches, Via};
use crate::policy::principal::Principal;
use crate::policy::verdict::{ForwardKind, Grant};

/// Ticket grants in force: customer id -> the roles (expanded) and permissions they add.
pub(super) type Grants = BTreeMap<i32, (Vec<String>, Vec<String>)>;

/// What a run decides with besides the mapping: as `serve` decides with the kill switch off,
/// ticket grants counting (a validation URL set, the ticket open) and the reader API on.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub switches: Switches,
    pub rbac_api: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            switches: Switches {
                kill_switch: false,
                ticket_grants: true,
            },
            rbac_api: true,
        }
    }
}

/// A principal ready to ask with: who it is for `decide` (None: no session), how it holds each
/// role (`explain`'s why), and its live ticket grants (an admin's, from the database).
#[derive(Debug, Clone)]
pub(crate) struct Resolved {
    pub label: String,
    pub principal: Option<Arc<Principal>>,
    pub how: BTreeMap<String, String>,
    pub tickets: Grants,
    /// An admin's break-glass session waits for its alert ([`super::NamedAdmin`]).
    pub alert_waits: bool,
}

/// What the principals of a suite are resolved against.
pub(crate) struct World<'a> {
    pub mapping: &'a Mapping,
    pub catalogue: &'a Catalogue,
    /// Where the catalogue comes from: "the database" or "the catalogue migrate seeds".
    pub catalogue_source: &'static str,
    /// The admins the cases name, by the email or id they are named by, read from the database
    /// (None: no `--database-url`; a name missing: no such admin).
    pub admins: Option<&'a BTreeMap<String, super::NamedAdmin>>,
    pub settings: Settings,
}

impl World<'_> {
    pub(super) fn known_role(&self, r: &str) -> bool {
        self.catalogue.roles().contains(r) || self.mapping.names().0.contains(r)
    }

    pub(super) fn known_permission(&self, p: &str) -> bool {
        self.catalogue.all_permissions().contains(p) || self.mapping.names().1.contains(p)
    }

    pub(super) fn unknown(&self, roles: &[String], permissions: &[String]) -> Vec<String> {
        let mut out: Vec<String> = roles
            .iter()
            .filter(|r| !self.known_role(r))
            .map(|r| format!("role {r:?}"))
            .collect();
        out.extend(
            permissions
                .iter()
                .filter(|p| !self.known_permission(p))
                .map(|p| format!("permission {p:?}")),
        );
        out
    }

    /// `who` resolved, or why not.
    pub(super) fn resolve(&self, label: &str, who: &Who) -> Result<Resolved, String> {
        match who {
            Who::NoSession => Ok(Resolved {
                label: label.to_string(),
                principal: None,
                how: BTreeMap::new(),
                tickets: BTreeMap::new(),
                alert_waits: false,
            }),
            Who::Synthetic {
                groups,
                roles,
                permissions,
                break_glass,
            } => {
                let mut groups = groups.clone();
                if let Some(g) = groups
                    .iter()
                    .find(|g| !self.catalogue.groups.contains_key(*g))
                {
                    return Err(format!(
                        "group {g:?} is not in the catalogue ({}; its groups: {})",
                        self.catalogue_source(),
                        self.catalogue
                            .groups
                            .keys()
                            .cloned()
                            .collect::<Vec<_>>()
                            .join(", ")
                    ));
                }
                let unknown = self.unknown(roles, permissions);
                if !unknown.is_empty() {
                    return Err(format!(
                        "{} named neither by the catalogue ({}) nor by the mapping",
                        unknown.join(", "),
                        self.catalogue_source()
                    ));
                }
                if *break_glass {
                    groups.push("break-glass".to_string());
                }
                let held = self.catalogue.holding(&groups, roles);
                let mut how = held.how;
                if *break_glass {
                    for path in how.values_mut() {
                        if let Some(rest) = path.strip_prefix("group break-glass") {
                            *path = format!("break-glass session -> group break-glass{rest}");
                        }
                    }
                }
                let mut perms: Vec<String> = held.permissions.into_iter().collect();
                perms.extend(permissions.iter().cloned());
                let until = break_glass.then(|| chrono::Utc::now() + chrono::Duration::hours(1));
                let principal = Principal::new(
                    &format!("test:{label}"),
                    how.keys().cloned().collect(),
                    perms,
                    until,
                    std::time::Duration::ZERO,
                );
                Ok(Resolved {
                    label: label.to_string(),
                    principal: Some(Arc::new(principal)),
                    how,
                    tickets: BTreeMap::new(),
                    alert_waits: false,
                })
            }
            Who::Admin(a) => {
                let Some(admins) = self.admins else {
                    return Err(format!(
                        "admin {a:?} is read from the database: give --database-url (or a principal by its groups and roles, which needs none)"
                    ));
                };
                let Some(x) = admins.get(a) else {
                    return Err(format!(
                        "no admin with the id or email {a:?} in the database"
                    ));
                };
                Ok(Resolved {
                    label: label.to_string(),
                    principal: x.reviewed.principal.clone(),
                    how: x.reviewed.how.clone(),
                    tickets: x.reviewed.tickets.clone(),
                    alert_waits: x.alert_waits,
                })
            }
        }
    }

    pub(super) fn catalogue_source(&self) -> &'static str {
        self.catalogue_source
    }

    /// The roles (expanded) and permissions of `tickets`, per customer.
    pub(super) fn ticket_grants(&self, tickets: &[Ticket]) -> Result<Grants, String> {
        let mut out: Grants = BTreeMap::new();
        for t in tickets {
            let unknown = self.unknown(&t.roles, &t.permissions);
            if !unknown.is_empty() {
                return Err(format!(
                    "ticket grant for customer {}: {} named neither by the catalogue nor by the mapping",
                    t.customer,
                    unknown.join(", ")
                ));
            }
            let held = self.catalogue.holding(&[], &t.roles);
            let entry = out.entry(t.customer).or_default();
            entry.0.extend(held.how.into_keys());
            entry.1.extend(held.permissions);
            entry.1.extend(t.permissions.iter().cloned());
        }
        Ok(out)
    }
}

/// One difference between what a case expects and what was decided.
#[derive(Debug, Clone, Serialize)]
pub struct Failure {
    /// Who asked (None: a statement's own principal).
    pub who: String,
    pub method: String,
    /// The target asked (None: no path reaches the rule).
    pub path: Option<String>,
    /// The rule that decided, or was selected (its label), and where it is written.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub at: Option<String>,
    pub expected: String,
    pub decided: String,
    /// What differs, in one line.
    pub problem: String,
    /// `explain`'s why for this request (cases of one request).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub why: Vec<String>,
}

/// What a case gave.
#[derive(Debug, Clone, Serialize)]
pub struct CaseReport {
    pub file: String,
    pub line: usize,
    pub name: String,
    /// `request`, `every` or `requires_one_of`.
    pub kind: &'static str,
    pub passed: bool,
    /// Decisions made for it.
    pub decisions: usize,
    /// The first of its failures (at most [`super::run::SHOWN_PER_CASE`], and none once the
    /// suite's reports hold [`super::run::SHOWN_IN_ALL`]).
    pub failures: Vec<Failure>,
    /// Its failures not shown: a report stays bounded whatever a statement finds.
    pub failures_not_shown: usize,
    /// What a passing case should know (text: a `NOTE` line; as where it passed by `no_route`
    /// alone, [`super::run::NO_ROUTE_NOTE`]).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// A rule no case reached.
#[derive(Debug, Clone, Serialize)]
pub struct Uncovered {
    pub rule: String,
    pub at: String,
}

/// The decision on one request, in a case's words.
#[derive(Debug, Clone)]
pub(crate) struct Decided {
    pub label: Label,
    pub reason: Option<String>,
    /// The rule Werkzeug picks (index), if any.
    pub rule: Option<usize>,
    /// `explain`'s `decision:` line.
    pub decision: String,
    /// What the gateway answers itself (None: forwarded).
    pub status: Option<u16>,
    /// The roles of the principal a request was forwarded for (with any ticket grant's).
    pub forwarded_roles: Vec<String>,
    /// The reader API answered it.
    pub reader_api: bool,
}

impl Decided {
    fn of(mapping: &Mapping, method: &str, asked: Asked) -> Decided {
        match asked {
            Asked::Refused(r) => Decided {
                label: Label::Refused,
                reason: Some(r.as_str().to_string()),
                rule: None,
                decision: Outcome::Refuse(r).describe(),
                status: Some(400),
                forwarded_roles: Vec::new(),
                reader_api: false,
            },
            Asked::ReaderApi { status, decision } => Decided {
                label: Label::Api,
                reason: Some(status.to_string()),
                rule: None,
                decision,
                status: Some(status),
                forwarded_roles: Vec::new(),
                reader_api: true,
            },
            Asked::Decided { outcome, target } => {
                let rule = mapping.find(method, target.path()).map(|(r, _)| r.index);
                let answer = crate::policy::answer::answer_of(&outcome);
                let status = answer.proxy_status();
                let (label, reason) = match &outcome {
                    Outcome::Refuse(r) => (Label::Refused, Some(r.as_str().to_string())),
                    // An identity Console cannot be sent: the doors answer 503.
                    Outcome::Forward(_) if status == Some(503) => {
                        (Label::Unavailable, Some("identity".to_string()))
                    }
                    Outcome::Forward(f) => match &f.via {
                        Via::Open(ForwardKind::Public) => (Label::Public, None),
                        Via::Open(ForwardKind::Machine) => (Label::Machine, None),
                        Via::Open(ForwardKind::Off) => (Label::Off, None),
                        Via::Allowed(Grant::Role(r)) => (Label::Allow, Some(format!("role:{r}"))),
                        Via::Allowed(Grant::Permission(p)) => {
                            (Label::Allow, Some(format!("permission:{p}")))
                        }
                        Via::ShadowDenied => (Label::ShadowDeny, Some("missing_role".into())),
                    },
                    Outcome::ShadowDeny { row, .. } => {
                        (Label::ShadowDeny, Some(row.reason.clone()))
                    }
                    Outcome::Redirect { .. } => (Label::Login, None),
                    Outcome::Deny { row } => (Label::Deny, Some(row.reason.clone())),
                    Outcome::Gone => (Label::Gone, None),
                    Outcome::Unavailable(u) => (Label::Unavailable, Some(u.as_str().to_string())),
                };
                let forwarded_roles = match &outcome {
                    Outcome::Forward(f) | Outcome::ShadowDeny { forward: f, .. } => f
                        .principal
                        .as_ref()
                        .map(|p| p.roles().to_vec())
                        .unwrap_or_default(),
                    _ => Vec::new(),
                };
                Decided {
                    label,
                    reason,
                    rule,
                    decision: outcome.describe(),
                    status,
                    forwarded_roles,
                    reader_api: false,
                }
            }
        }
    }

    /// `deny (missing_role)`, `allow (role:x)`, `login`.
    pub fn said(&self) -> String {
        match &self.reason {
            Some(r) => format!("{} ({r})", self.label.as_str()),
            None => self.label.as_str().to_string(),
        }
    }
}

/// Where a rule is written: `routes.toml:12:1`.
pub(super) fn at(mapping: &Mapping, r: &Route) -> String {
    format!("{}:{}:{}", mapping.file.display(), r.line, r.col)
}

pub(crate) async fn decide_one(
    world: &World<'_>,
    authority: &InMemory,
    method: &str,
    path: &str,
) -> Decided {
    let asked = ask(
        world.mapping,
        world.settings.switches,
        world.settings.rbac_api,
        authority,
        method,
        path,
    )
    .await;
    Decided::of(world.mapping, method, asked)
}
