//! A suite run: each principal a case names resolved once, then every case asked and its
//! answer compared with what it expects. Nothing here decides: it only says what a case asks.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use super::file::{Case, Expect, Kind, Label, Problem, Select, Subjects, Who};
use super::world::{at, decide_one, CaseReport, Decided, Failure, Grants, Resolved, World};
use crate::cli::access::InMemory;
use crate::policy::mapping::Mapping;

/// What differs between `expect` and `d`, if anything.
fn differs(mapping: &Mapping, expect: &Expect, d: &Decided) -> Option<String> {
    if !expect.outcomes.contains(&d.label) {
        return Some(format!(
            "expected {}, decided {}",
            super::file::outcomes(&expect.outcomes),
            d.said()
        ));
    }
    if let Some(want) = &expect.rule {
        let route = d.rule.map(|i| &mapping.routes[i]);
        if !route.is_some_and(|r| r.label() == want || r.path == *want) {
            return Some(format!(
                "expected the rule {want:?} to decide, decided by {}",
                route.map_or("no rule".to_string(), |r| format!("{:?}", r.label()))
            ));
        }
    }
    if let Some(want) = &expect.reason {
        if d.reason.as_deref() != Some(want) {
            return Some(format!(
                "expected the reason {want:?}, decided {}",
                d.reason
                    .as_deref()
                    .map_or("with none".to_string(), |r| format!("{r:?}"))
            ));
        }
    }
    None
}

/// A suite's cases with their principals resolved: every problem found is a load error.
pub(crate) struct Prepared<'c> {
    cases: &'c [Case],
    resolved: HashMap<Who, Resolved>,
    every_group: BTreeMap<(usize, usize), Vec<Who>>,
    tickets: Vec<Grants>,
}

impl<'c> Prepared<'c> {
    /// Resolves every principal and ticket grant of `cases`, or says (located) which cannot be.
    pub fn new(
        world: &World<'_>,
        cases: &'c [Case],
        file_names: &[String],
    ) -> Result<Prepared<'c>, Vec<Problem>> {
        let mut problems = Problems {
            file_names,
            found: Vec::new(),
        };
        let mut resolved = HashMap::new();
        let mut every_group = BTreeMap::new();
        let mut tickets = Vec::with_capacity(cases.len());
        for case in cases {
            let subjects = subjects_named(world, case, &mut every_group, &mut problems);
            check_access(case, &mut problems);
            for (label, who, line, col) in subjects {
                if resolved.contains_key(&who) {
                    continue;
                }
                match world.resolve(&label, &who) {
                    Ok(r) => {
                        resolved.insert(who, r);
                    }
                    Err(why) => problems.add(case.file, line, col, why),
                }
            }
            match world.ticket_grants(&case.tickets) {
                Ok(t) => tickets.push(t),
                Err(why) => {
                    problems.add(case.file, case.line, case.col, why);
                    tickets.push(BTreeMap::new());
                }
            }
        }
        if problems.found.is_empty() {
            Ok(Prepared {
                cases,
                resolved,
                every_group,
                tickets,
            })
        } else {
            Err(problems.found)
        }
    }
}

/// The load errors found while preparing a suite, each located in its file.
struct Problems<'f> {
    file_names: &'f [String],
    found: Vec<Problem>,
}

impl Problems<'_> {
    fn add(&mut self, file: usize, line: usize, col: usize, message: String) {
        self.found.push(crate::cli::toolbox::diag(
            &self.file_names[file],
            line,
            col,
            crate::policy::mapping::Severity::Error,
            message,
        ))
    }
}

/// The principals a case names, each with its label and place: `every_group_except` expanded to
/// one principal a group (kept in `every_group`); the roles `requires_one_of` names checked.
fn subjects_named(
    world: &World<'_>,
    case: &Case,
    every_group: &mut BTreeMap<(usize, usize), Vec<Who>>,
    problems: &mut Problems,
) -> Vec<(String, Who, usize, usize)> {
    let mut subjects: Vec<(String, Who, usize, usize)> = Vec::new();
    match &case.kind {
        Kind::Request {
            who: Subjects::List(l),
            ..
        }
        | Kind::Every {
            who: Subjects::List(l),
            ..
        } => subjects.extend(
            l.iter()
                .map(|s| (s.label.clone(), s.who.clone(), s.line, s.col)),
        ),
        Kind::Request {
            who: Subjects::EveryGroup { except, line, col },
            ..
        }
        | Kind::Every {
            who: Subjects::EveryGroup { except, line, col },
            ..
        } => {
            let groups = every_group_but(world, case, except, (*line, *col), problems);
            for w in &groups {
                subjects.push((super::file::describe(w), w.clone(), *line, *col));
            }
            every_group.insert((case.file, case.line), groups);
        }
        Kind::RequiresOneOf { roles, .. } => {
            let unknown = world.unknown(roles, &[]);
            if !unknown.is_empty() {
                problems.add(
                    case.file,
                    case.line,
                    case.col,
                    format!(
                        "requires_one_of: {} named neither by the catalogue nor by the mapping",
                        unknown.join(", ")
                    ),
                );
            }
        }
    }
    subjects
}

/// `every_group_except`: a principal holding each group of the catalogue but those excepted; an
/// excepted name that is no group, or no group left, is a problem at its `(line, col)`.
fn every_group_but(
    world: &World<'_>,
    case: &Case,
    except: &[String],
    (line, col): (usize, usize),
    problems: &mut Problems,
) -> Vec<Who> {
    if let Some(g) = except
        .iter()
        .find(|g| !world.catalogue.groups.contains_key(*g))
    {
        problems.add(
            case.file,
            line,
            col,
            format!(
                "every_group_except names {g:?}, which is not a group of the catalogue ({})",
                world.catalogue_source()
            ),
        );
    }
    let groups: Vec<Who> = world
        .catalogue
        .groups
        .keys()
        .filter(|g| !except.contains(g))
        .map(|g| Who::Synthetic {
            groups: vec![g.clone()],
            roles: vec![],
            permissions: vec![],
            break_glass: false,
        })
        .collect();
    if groups.is_empty() {
        problems.add(
            case.file,
            line,
            col,
            "every_group_except excepts every group of the catalogue: the case asks no one, and would pass having decided nothing".into(),
        );
    }
    groups
}

/// A selection's `access`, when given, is one the mapping knows.
fn check_access(case: &Case, problems: &mut Problems) {
    if let Kind::Every { select, .. } | Kind::RequiresOneOf { select, .. } = &case.kind {
        if let Some(a) = &select.access {
            if !["protected", "public", "machine", "gone"].contains(&a.as_str()) {
                problems.add(
                    case.file,
                    case.line,
                    case.col,
                    format!("every: unknown access {a:?} (protected, public, machine or gone)"),
                );
            }
        }
    }
}

/// The principals `who` names, resolved, with the case's ticket grants added to each, and each
/// with the name this case gives it (two principals of a file may hold the same: each is
/// resolved once, and a failure names the one the case asked as).
fn subjects_of<'p>(
    p: &'p Prepared<'_>,
    case: &Case,
    who: &Subjects,
    i: usize,
) -> Vec<(String, &'p Resolved, InMemory)> {
    let whos: Vec<(String, &Who)> = match who {
        Subjects::List(l) => l.iter().map(|s| (s.label.clone(), &s.who)).collect(),
        Subjects::EveryGroup { .. } => p.every_group[&(case.file, case.line)]
            .iter()
            .map(|w| (super::file::describe(w), w))
            .collect(),
    };
    whos.into_iter()
        .map(|(label, w)| {
            let r = &p.resolved[w];
            let mut tickets = r.tickets.clone();
            for (c, (roles, perms)) in &p.tickets[i] {
                let e = tickets.entry(*c).or_default();
                e.0.extend(roles.iter().cloned());
                e.1.extend(perms.iter().cloned());
            }
            let authority = InMemory {
                principal: r.principal.clone(),
                tickets,
            };
            (label, r, authority)
        })
        .collect()
}

/// The failures a case's report shows at most: a statement over every rule and group that fails
/// for all of them would otherwise list each (a review: 2,000 such cases, 110 KB, took 2.9 GB).
pub(crate) const SHOWN_PER_CASE: usize = 20;

/// The failures a suite's report shows at most, whatever its number of cases.
pub(crate) const SHOWN_IN_ALL: usize = 1_000;

/// Runs every case; `touched` marks each rule a case reached.
pub(crate) async fn run(
    world: &World<'_>,
    p: &Prepared<'_>,
    file_names: &[String],
    touched: &mut [bool],
) -> Vec<CaseReport> {
    let mut out = Vec::with_capacity(p.cases.len());
    let mut shown = 0;
    for (i, case) in p.cases.iter().enumerate() {
        let mut notes = Vec::new();
        let (kind, decisions, mut failures) = match &case.kind {
            Kind::Request {
                method,
                path,
                who,
                expect,
            } => {
                let subjects = subjects_of(p, case, who, i);
                let (failures, no_route) =
                    request(world, &subjects, method, path, expect, touched).await;
                if no_route && failures.is_empty() {
                    notes.push(NO_ROUTE_NOTE.to_string());
                }
                ("request", subjects.len(), failures)
            }
            Kind::Every {
                select,
                who,
                expect,
            } => {
                let subjects = subjects_of(p, case, who, i);
                let customers: Vec<i32> = p.tickets[i].keys().copied().collect();
                let (decisions, failures) =
                    every(world, &subjects, select, &customers, expect, touched).await;
                ("every", decisions, failures)
            }
            Kind::RequiresOneOf { select, roles } => {
                let (decisions, failures) = requires_one_of(world, select, roles, touched).await;
                ("requires_one_of", decisions, failures)
            }
        };
        let passed = failures.is_empty();
        let keep = SHOWN_PER_CASE.min(SHOWN_IN_ALL - shown);
        let failures_not_shown = failures.len().saturating_sub(keep);
        failures.truncate(keep);
        failures.shrink_to_fit();
        shown += failures.len();
        out.push(CaseReport {
            file: file_names[case.file].clone(),
            line: case.line,
            name: case.name.clone(),
            kind,
            passed,
            decisions,
            failures,
            failures_not_shown,
            notes,
        });
    }
    out
}

/// What a passing `request` case expecting `deny` without a `reason` or a `rule` says when no
/// rule has its method and path: it passed by `no_route`, as a misspelt path would.
pub(crate) const NO_ROUTE_NOTE: &str = "passed as deny by no_route: no rule has this method and path, so a misspelt path passes too (reason = \"no_route\" says it is meant; reason = \"missing_role\" or rule = ... asks for a rule)";

/// A `request` case: the one request asked as each subject, a failure explained with why; and
/// whether it was denied by `no_route` where the case named neither a `reason` nor a `rule`.
async fn request(
    world: &World<'_>,
    subjects: &[(String, &Resolved, InMemory)],
    method: &str,
    path: &str,
    expect: &Expect,
    touched: &mut [bool],
) -> (Vec<Failure>, bool) {
    let mut failures = Vec::new();
    let mut no_route = false;
    for (label, r, authority) in subjects {
        let d = decide_one(world, authority, method, path).await;
        if let Some(rule) = d.rule {
            touched[rule] = true;
        }
        no_route |= d.label == Label::Deny
            && d.reason.as_deref() == Some("no_route")
            && expect.reason.is_none()
            && expect.rule.is_none();
        if let Some(problem) = differs(world.mapping, expect, &d) {
            failures.push(Failure {
                who: label.clone(),
                method: method.to_string(),
                path: Some(path.to_string()),
                rule: d.rule.map(|x| world.mapping.routes[x].label().to_string()),
                at: d.rule.map(|x| at(world.mapping, &world.mapping.routes[x])),
                expected: super::file::outcomes(&expect.outcomes),
                decided: d.said(),
                problem,
                why: super::why::why(world, r, authority, method, path, &d),
            });
        }
    }
    (failures, no_route)
}

/// An `every` case: each request its selection generates asked as each subject; the decisions
/// made and the failures.
async fn every(
    world: &World<'_>,
    subjects: &[(String, &Resolved, InMemory)],
    select: &Select,
    customers: &[i32],
    expect: &Expect,
    touched: &mut [bool],
) -> (usize, Vec<Failure>) {
    let (probes, mut failures) = super::every::selected(world.mapping, select, customers);
    let mut decisions = 0;
    for (label, _, authority) in subjects {
        for (route, method, path) in &probes {
            touched[*route] = true;
            let d = decide_one(world, authority, method, path).await;
            decisions += 1;
            if let Some(problem) = differs(world.mapping, expect, &d) {
                failures.push(offender(
                    world.mapping,
                    *route,
                    label,
                    method,
                    path,
                    expect,
                    &d,
                    problem,
                ));
            }
        }
    }
    (decisions, failures)
}

/// A `requires_one_of` case: each request its selection generates asked as the adversary that
/// holds everything but `roles`, expecting a denial; the decisions made and the failures.
async fn requires_one_of(
    world: &World<'_>,
    select: &Select,
    roles: &[String],
    touched: &mut [bool],
) -> (usize, Vec<Failure>) {
    let (probes, mut failures) = super::every::selected(world.mapping, select, &[]);
    let adversary = super::every::adversary(world, roles);
    let label = format!("everyone without {}", roles.join(" or "));
    let authority = InMemory {
        principal: Some(Arc::new(adversary)),
        tickets: BTreeMap::new(),
    };
    let expect = Expect {
        outcomes: vec![Label::Deny, Label::ShadowDeny],
        rule: None,
        reason: None,
    };
    for (route, method, path) in &probes {
        touched[*route] = true;
        let d = decide_one(world, &authority, method, path).await;
        if let Some(problem) = differs(world.mapping, &expect, &d) {
            failures.push(offender(
                world.mapping,
                *route,
                &label,
                method,
                path,
                &expect,
                &d,
                problem,
            ));
        }
    }
    (probes.len(), failures)
}

#[allow(clippy::too_many_arguments)]
fn offender(
    mapping: &Mapping,
    route: usize,
    who: &str,
    method: &str,
    path: &str,
    expect: &Expect,
    d: &Decided,
    problem: String,
) -> Failure {
    let r = &mapping.routes[route];
    Failure {
        who: who.to_string(),
        method: method.to_string(),
        path: Some(path.to_string()),
        rule: Some(r.label().to_string()),
        at: Some(at(mapping, r)),
        expected: super::file::outcomes(&expect.outcomes),
        decided: d.said(),
        problem,
        why: Vec::new(),
    }
}
