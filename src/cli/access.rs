//! The access review the commands share: who reaches which route. Every answer is
//! [`crate::policy::outcome::decide`]'s, for a principal held in memory ([`InMemory`]): a group's roles
//! expanded through the role catalogue, or an admin's roles read from the database. There is no
//! second policy here, only the principals and the requests to ask about. It sits with the
//! commands that use it (it folds the role catalogue `stores/catalogue.rs` reads, parses a
//! migration and asks the reader API's door how it would answer), while the cutover's verdict
//! (`assess`) is pure and sits in `policy/cutover.rs`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use crate::policy::mapping::rule::{parse_rule, Converter, Piece};
use crate::policy::mapping::{Mapping, Route};
use crate::policy::outcome::{decide, Authority, Facts, Outcome, Switches, Unavailable, Via};
use crate::policy::principal::Principal;
use crate::policy::verdict::Grant;

/// An [`Authority`] answered from memory: every session cookie is `principal`'s (or no one's),
/// with the ticket-scoped roles of `tickets` per customer. `matrix`, `diff` and `explain` of a
/// request without a session decide with it.
#[derive(Debug, Clone, Default)]
pub struct InMemory {
    pub principal: Option<Arc<Principal>>,
    /// customer id -> the roles and permissions its live ticket grants add.
    pub tickets: BTreeMap<i32, (Vec<String>, Vec<String>)>,
}

impl Authority for InMemory {
    async fn principal_for_token(
        &self,
        _token: &str,
        _at: std::time::Instant,
    ) -> Result<Option<Arc<Principal>>, Unavailable> {
        Ok(self.principal.clone())
    }

    async fn known_admin(&self, _token: &str) -> Option<String> {
        self.principal.as_ref().map(|p| p.admin_id.clone())
    }

    async fn with_ticket_grants(
        &self,
        principal: &Principal,
        customer: i32,
        _request_id: &str,
    ) -> Result<Option<Principal>, Unavailable> {
        Ok(self
            .tickets
            .get(&customer)
            .map(|(roles, perms)| principal.with_extra(roles, perms)))
    }
}

/// The role catalogue: groups, their roles, role inheritance and role permissions (004 §3).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Catalogue {
    /// group -> the roles given to it.
    pub groups: BTreeMap<String, BTreeSet<String>>,
    /// child role -> parent roles (the child holds everything the parent grants).
    pub inherits: BTreeMap<String, BTreeSet<String>>,
    /// role -> its permissions.
    pub permissions: BTreeMap<String, BTreeSet<String>>,
}

/// The catalogue `migrate` seeds.
const SEEDED: &str = include_str!("../../migrations/0002_catalogue.sql");

impl Catalogue {
    /// The catalogue `migrate` seeds (migrations/0002_catalogue.sql, read from its `VALUES`
    /// lists): the groups of the design documents, for a review without a database.
    pub fn seeded() -> Catalogue {
        let pairs = |columns: &str| -> Vec<(String, String)> {
            let end = SEEDED
                .find(&format!(") AS v({columns})"))
                .unwrap_or_else(|| panic!("0002_catalogue.sql has a VALUES list v({columns})"));
            let start = SEEDED[..end].rfind("(VALUES").expect("a VALUES list");
            let body: String = SEEDED[start + "(VALUES".len()..end]
                .lines()
                .map(|l| l.split("--").next().unwrap_or(""))
                .collect::<Vec<_>>()
                .join("\n");
            body.split("('")
                .skip(1)
                .map(|t| {
                    let (a, rest) = t.split_once("', '").expect("a ('a', 'b') pair");
                    let (b, _) = rest.split_once("')").expect("a ('a', 'b') pair");
                    (a.to_string(), b.to_string())
                })
                .collect()
        };
        let mut c = Catalogue::default();
        for (g, r) in pairs("grp, role") {
            c.groups.entry(g).or_default().insert(r);
        }
        for (child, parent) in pairs("child, parent") {
            c.inherits.entry(child).or_default().insert(parent);
        }
        for (role, perm) in pairs("role, perm") {
            c.permissions.entry(role).or_default().insert(perm);
        }
        c
    }

    /// Console's own catalogue, as the database holds it now (every group, also one with no
    /// role).
    pub async fn read(pool: &crate::stores::db::Db) -> Result<Catalogue, sqlx::Error> {
        let rows = crate::stores::catalogue::read(pool).await?;
        let mut c = Catalogue::default();
        for (g, r) in rows.group_roles {
            let roles = c.groups.entry(g).or_default();
            roles.extend(r);
        }
        for (child, parent) in rows.inheritance {
            c.inherits.entry(child).or_default().insert(parent);
        }
        for (role, perm) in rows.role_permissions {
            c.permissions.entry(role).or_default().insert(perm);
        }
        Ok(c)
    }

    /// Each role reached from `roles` through inheritance, with how: "group -> role -> inherits
    /// parent". The first path found to a role is kept; a cycle is cut by the visited set.
    pub fn expand(&self, origin: &str, roles: &BTreeSet<String>) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        let mut queue: std::collections::VecDeque<(String, String)> = roles
            .iter()
            .map(|r| (r.clone(), format!("{origin} -> {r}")))
            .collect();
        while let Some((role, path)) = queue.pop_front() {
            if out.contains_key(&role) {
                continue;
            }
            for parent in self.inherits.get(&role).into_iter().flatten() {
                queue.push_back((parent.clone(), format!("{path} -> inherits {parent}")));
            }
            out.insert(role, path);
        }
        out
    }

    /// A principal holding exactly what membership of `group` gives (its roles, their parents,
    /// their permissions), named `group:NAME`.
    pub fn group_principal(&self, group: &str) -> Principal {
        let roles = self.expand(
            &format!("group {group}"),
            self.groups.get(group).unwrap_or(&BTreeSet::new()),
        );
        let permissions: BTreeSet<String> = roles
            .keys()
            .flat_map(|r| self.permissions.get(r).into_iter().flatten().cloned())
            .collect();
        Principal::for_tests(
            &format!("group:{group}"),
            roles.into_keys().collect(),
            permissions.into_iter().collect(),
        )
    }

    /// What membership of `groups` and holding `roles` give, as the database resolves an admin
    /// (004 §3.4): each role with how it is held ("group g -> r -> inherits p", "role r"), and
    /// the permissions of them all. A group the catalogue lacks gives nothing (the caller
    /// checks names first).
    pub fn holding(&self, groups: &[String], roles: &[String]) -> Held {
        let mut how = BTreeMap::new();
        for g in groups {
            let given = self.groups.get(g).cloned().unwrap_or_default();
            for (r, path) in self.expand(&format!("group {g}"), &given) {
                how.entry(r).or_insert(path);
            }
        }
        let direct: BTreeSet<String> = roles.iter().cloned().collect();
        for (r, path) in self.expand("given", &direct) {
            how.entry(r).or_insert(path);
        }
        let permissions = how
            .keys()
            .flat_map(|r| self.permissions.get(r).into_iter().flatten().cloned())
            .collect();
        Held { how, permissions }
    }

    /// Every role the catalogue names (given to a group, inherited, inheriting, or carrying a
    /// permission).
    pub fn roles(&self) -> BTreeSet<&str> {
        let mut out: BTreeSet<&str> = self.groups.values().flatten().map(String::as_str).collect();
        for (child, parents) in &self.inherits {
            out.insert(child);
            out.extend(parents.iter().map(String::as_str));
        }
        out.extend(self.permissions.keys().map(String::as_str));
        out
    }

    /// Every permission some role of the catalogue carries.
    pub fn all_permissions(&self) -> BTreeSet<&str> {
        self.permissions
            .values()
            .flatten()
            .map(String::as_str)
            .collect()
    }
}

/// What [`Catalogue::holding`] gives: each effective role with how it is held, and the
/// permissions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Held {
    /// role -> how it is held.
    pub how: BTreeMap<String, String>,
    pub permissions: BTreeSet<String>,
}

/// A request to ask about: one method of one rule, on a path that rule (and no other) takes.
#[derive(Debug, Clone)]
pub struct Probe<'m> {
    pub route: &'m Route,
    pub method: String,
    /// None: no path tried reaches this rule (another one takes each).
    pub path: Option<String>,
    /// Which of the values of [`value`] made `path`.
    attempt: usize,
}

impl Probe<'_> {
    /// The probe's path with variable `name` set to `to` (a customer id for ticket grants).
    pub fn path_with(&self, name: &str, to: &str) -> Option<String> {
        self.path.as_ref()?;
        let parts = parse_rule(&self.route.path).ok()?;
        Some(path_for(&parts, self.attempt, Some((name, to))))
    }
}

/// A concrete path for a parsed rule: variables get the `attempt`th value of their converter,
/// `var` the value given.
fn path_for(
    parts: &[crate::policy::mapping::rule::Part],
    attempt: usize,
    var: Option<(&str, &str)>,
) -> String {
    parts
        .iter()
        .map(|p| {
            let mut names = p.names.iter();
            p.pieces
                .iter()
                .map(|piece| match piece {
                    Piece::Literal(s) => s.as_str(),
                    Piece::Var(c) => match (names.next(), var) {
                        (Some(n), Some((name, to))) if n == name => to,
                        _ => value(*c, attempt),
                    },
                })
                .collect::<String>()
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// Values tried for each converter, in order, until the mapping picks the rule itself.
fn value(c: Converter, attempt: usize) -> &'static str {
    let values: &[&str] = match c {
        Converter::Default => &["x1", "item-9", "zz"],
        Converter::Int => &["7", "1", "42"],
        Converter::Uuid => &["3f2504e0-4f89-41d3-9a0c-0305e82c3301"],
        Converter::Path => &["a/b", "x1", "zz/y"],
    };
    values[attempt.min(values.len() - 1)]
}

/// One probe per method of every rule, in file order.
pub fn probes(mapping: &Mapping) -> Vec<Probe<'_>> {
    let mut out = Vec::new();
    for route in &mapping.routes {
        let parts = parse_rule(&route.path).ok();
        for method in &route.methods {
            let found = parts.as_ref().and_then(|parts| {
                (0..3).find_map(|attempt| {
                    let path = path_for(parts, attempt, None);
                    let (hit, m) = mapping.find(method, &path)?;
                    (hit.index == route.index && !m.slash_redirect).then_some((path, attempt))
                })
            });
            out.push(Probe {
                route,
                method: method.clone(),
                attempt: found.as_ref().map_or(0, |f| f.1),
                path: found.map(|f| f.0),
            });
        }
    }
    out
}

/// Every path generated from `route`'s converters (each value [`probes`] tries) that the mapping
/// routes to `route` for `method`, without duplicates, in the order tried; with `customers`, for
/// a rule with `customer_param`, also its first path with that variable set to each customer.
/// Empty: another rule takes every path tried.
pub fn rule_paths(
    mapping: &Mapping,
    route: &Route,
    method: &str,
    customers: &[i32],
) -> Vec<String> {
    let Ok(parts) = parse_rule(&route.path) else {
        return Vec::new();
    };
    let reaches = |path: &str| {
        mapping
            .find(method, path)
            .is_some_and(|(hit, m)| hit.index == route.index && !m.slash_redirect)
    };
    let mut out: Vec<String> = Vec::new();
    let mut push = |path: String| {
        if !out.contains(&path) && reaches(&path) {
            out.push(path);
        }
    };
    for attempt in 0..3 {
        push(path_for(&parts, attempt, None));
    }
    if let Some(param) = &route.customer_param {
        for c in customers {
            push(path_for(&parts, 0, Some((param, &c.to_string()))));
        }
    }
    out
}

/// How far a principal gets with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Reach {
    /// Answered by the gateway: 403, 404, 302 to the login page, 400.
    No,
    /// Forwarded without the gateway's grant: mode off (or the kill switch), or shadow mode
    /// that would deny. Console's own checks decide.
    Console,
    /// Forwarded by the gateway's grant: a role or permission held, or a public/machine route.
    Yes,
}

impl Reach {
    pub fn as_str(self) -> &'static str {
        match self {
            Reach::No => "no",
            Reach::Console => "console",
            Reach::Yes => "yes",
        }
    }
}

/// One cell: [`decide`]'s answer for a principal and a probe.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Cell {
    /// The outcome's label (`rbac_gateway_requests_total{decision}`): allowed, denied, ...
    pub outcome: &'static str,
    /// What the gateway answers itself (None: forwarded, Console answers).
    pub status: Option<u16>,
    /// The outcome in `explain`'s words (its `decision:` line).
    pub decision: String,
    pub reach: Reach,
    /// The role or permission that allowed it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    /// How the principal holds `by` (group, inheritance, break-glass).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub how: Option<String>,
    /// Ticket-scoped grants that allow it for some customers only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ticket: Option<String>,
}

impl Cell {
    fn of(o: &Outcome) -> Cell {
        let (reach, by) = match o {
            Outcome::Forward(f) => match &f.via {
                Via::Allowed(Grant::Role(r)) => (Reach::Yes, Some(format!("role:{r}"))),
                Via::Allowed(Grant::Permission(p)) => (Reach::Yes, Some(format!("permission:{p}"))),
                Via::Open(crate::policy::verdict::ForwardKind::Off) | Via::ShadowDenied => {
                    (Reach::Console, None)
                }
                Via::Open(_) => (Reach::Yes, None),
            },
            Outcome::ShadowDeny { .. } => (Reach::Console, None),
            _ => (Reach::No, None),
        };
        Cell {
            outcome: o.label(),
            // What the doors answer (an unsendable identity is a 503 there too).
            status: crate::policy::answer::answer_of(o).proxy_status(),
            decision: o.describe(),
            reach,
            by,
            how: None,
            ticket: None,
        }
    }

    /// A rule no path reaches: nothing to decide.
    fn unreachable() -> Cell {
        Cell {
            outcome: "unreachable",
            status: None,
            decision: "no path reaches this rule: another rule takes each one tried".into(),
            reach: Reach::No,
            by: None,
            how: None,
            ticket: None,
        }
    }
}

/// What the gateway answers a request, before it is made a [`Cell`]: refused before any rule
/// (the method or target), answered by the reader API, or [`decide`]'s outcome.
#[derive(Debug, Clone)]
pub enum Asked {
    /// 400: the method or the target is refused (the outcome `decide` is never asked for).
    Refused(crate::policy::target::Refusal),
    /// Console's reader API, answered by the gateway before any rule: its status and
    /// [`crate::policy::reader::outline`]'s decision.
    ReaderApi { status: u16, decision: String },
    /// [`decide`]'s outcome for the target.
    Decided {
        outcome: Outcome,
        target: crate::policy::target::Target,
    },
}

/// The target every door decides on for `method` and `path` (exactly as a client sends them),
/// or why the request is refused before any rule: the doors' HTTP layer (hyper, with the
/// `http` crate's URI parser: a raw `<`, `>` or backtick in the path, a raw `"`, `<` or `>` in
/// the query) answers 400 before the gateway sees the request, decided here as the refusal of
/// what could not be parsed; CONNECT is refused by every door as not origin-form
/// (`doors::proxy::checks`); then the method and target checks. `ask` (so `matrix`, `diff`
/// and `test`) and `explain` refuse alike.
pub fn doors_target(
    method: &str,
    path: &str,
) -> Result<crate::policy::target::Target, crate::policy::target::Refusal> {
    use crate::policy::target::Refusal;
    if path.parse::<http::Uri>().is_err() {
        return Err(Refusal::Unparsed);
    }
    crate::policy::target::check_method(method.as_bytes())?;
    if method == "CONNECT" {
        return Err(Refusal::NotOriginForm);
    }
    crate::policy::target::parse_target(path.as_bytes())
}

/// What the gateway answers `method` and `path` (exactly as a client sends them) for the
/// principal of `authority` (None: a request without a session): the HTTP layer's parse of the
/// target, the method and target checks of every door, the reader API with `rbac_api` (`serve --rbac-api`, the default:
/// [`crate::policy::reader::outline`]'s answer, as `serve` gives it), then [`decide`]. The one
/// way `matrix`, `diff` and `test` ask.
pub async fn ask(
    mapping: &Mapping,
    switches: Switches,
    rbac_api: bool,
    authority: &InMemory,
    method: &str,
    path: &str,
) -> Asked {
    let target = match doors_target(method, path) {
        Ok(t) => t,
        Err(r) => return Asked::Refused(r),
    };
    if let Some(call) = rbac_api
        .then(|| crate::policy::reader::Call::of(&target))
        .flatten()
    {
        let (status, decision, _) =
            crate::policy::reader::outline(&call, method, authority.principal.is_some());
        return Asked::ReaderApi { status, decision };
    }
    let facts = Facts {
        method,
        target: &target,
        token: authority.principal.as_ref().map(|_| "review"),
        client_ip: None,
        user_agent: None,
        request_id: "review",
        at: std::time::Instant::now(),
    };
    let outcome = decide(authority, mapping, switches, &facts).await;
    Asked::Decided { outcome, target }
}

/// [`decide`]'s answer for `principal` (None: a request without a session) on a probe, as
/// [`ask`] gets it.
pub async fn cell(
    mapping: &Mapping,
    switches: Switches,
    rbac_api: bool,
    authority: &InMemory,
    method: &str,
    path: Option<&str>,
) -> Cell {
    let Some(path) = path else {
        return Cell::unreachable();
    };
    match ask(mapping, switches, rbac_api, authority, method, path).await {
        Asked::Refused(r) => Cell::of(&Outcome::Refuse(r)),
        Asked::ReaderApi { status, decision } => Cell {
            outcome: "reader_api",
            status: Some(status),
            decision,
            reach: if status == 200 { Reach::Yes } else { Reach::No },
            by: None,
            how: None,
            ticket: None,
        },
        Asked::Decided { outcome, .. } => Cell::of(&outcome),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::mapping::fixture::rules;

    #[test]
    fn the_seeded_catalogue_is_read_from_the_migration() {
        let c = Catalogue::seeded();
        assert_eq!(
            c.groups.keys().map(String::as_str).collect::<Vec<_>>(),
            [
                "break-glass",
                "ops-admins",
                "raxx-devops-team",
                "raxx-platform-admins",
                "raxx-support-team",
                "staging-admins"
            ]
        );
        let glass = c.group_principal("break-glass");
        assert_eq!(glass.admin_id, "group:break-glass");
        // console-manager inherits console-invite-admin, which carries console:admins:invite.
        assert!(glass.has_role("console-flag-admin") && glass.has_role("console-env-admin"));
        assert!(glass.has_permission("console:admins:invite"));
        assert!(!glass.has_role("console-user"));
        let support = c.group_principal("raxx-support-team");
        assert!(
            support.has_role("antlers-audit-self"),
            "raptor-audit-support inherits it"
        );
        assert!(support.has_permission("raptor:audit:read-self"));
        assert!(c.group_principal("nonexistent").roles().is_empty());
        let how = c.expand("group g", &BTreeSet::from(["console-manager".to_string()]));
        assert_eq!(
            how["console-invite-admin"],
            "group g -> console-manager -> inherits console-invite-admin"
        );
    }

    #[test]
    fn probes_reach_their_own_rule_and_cells_are_decides_answers() {
        let m = rules()
            .route("GET POST", "/c/<id>")
            .roles(&["reader"])
            .route("GET", "/c/x1")
            .roles(&["writer"])
            .mode("shadow")
            .route("GET", "/p")
            .access("public")
            .mapping();
        let probes = probes(&m);
        let paths: Vec<(&str, Option<&str>)> = probes
            .iter()
            .map(|p| (p.method.as_str(), p.path.as_deref()))
            .collect();
        // "x1" is taken by the literal rule: the next value is tried.
        assert_eq!(
            paths,
            [
                ("GET", Some("/c/item-9")),
                // No POST rule takes /c/x1: the first value does.
                ("POST", Some("/c/x1")),
                ("GET", Some("/c/x1")),
                ("GET", Some("/p"))
            ]
        );
        let on = Switches {
            kill_switch: false,
            ticket_grants: true,
        };
        let reader = InMemory {
            principal: Some(Arc::new(Principal::for_tests(
                "a",
                vec!["reader".into()],
                vec![],
            ))),
            ..Default::default()
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let ask = |a: &InMemory, s: Switches, path: &str| {
            rt.block_on(cell(&m, s, true, a, "GET", Some(path)))
        };
        let c = ask(&reader, on, "/c/item-9");
        assert_eq!(
            (c.outcome, c.reach, c.by.as_deref()),
            ("allowed", Reach::Yes, Some("role:reader"))
        );
        let c = ask(&reader, on, "/c/x1");
        assert_eq!(
            (c.outcome, c.reach, c.status),
            ("shadow_denied", Reach::Console, None)
        );
        let nobody = InMemory::default();
        let c = ask(&nobody, on, "/c/item-9");
        assert_eq!(
            (c.outcome, c.status, c.reach),
            ("redirected", Some(302), Reach::No)
        );
        assert_eq!(ask(&nobody, on, "/p").reach, Reach::Yes);
        let kill = Switches {
            kill_switch: true,
            ..on
        };
        assert_eq!(ask(&nobody, kill, "/c/item-9").outcome, "off");
        assert_eq!(
            rt.block_on(cell(&m, on, true, &nobody, "GET", None))
                .outcome,
            "unreachable"
        );
    }
}
