//! Statements over every route: the requests a statement asks (every rule it selects, every
//! method of it, every path generated from the rule's converters as `matrix` generates one,
//! and, under a path prefix, what reaches below it from elsewhere), and the principal a
//! `requires_one_of` statement asks with.

use std::collections::BTreeSet;

use super::file::Select;
use super::world::{at, Failure, Uncovered, World};
use crate::cli::access::rule_paths;
use crate::policy::mapping::{Mapping, Route};
use crate::policy::principal::Principal;

/// Whether `route` is one `select` names (all but `path_prefix`, which is about paths).
fn selects(select: &Select, route: &Route) -> bool {
    select
        .cluster
        .as_ref()
        .is_none_or(|c| route.meta.cluster.as_ref() == Some(c))
        && select.path.as_ref().is_none_or(|p| route.path == *p)
        && select
            .access
            .as_ref()
            .is_none_or(|a| route.access.as_str() == a)
        && select
            .role
            .as_ref()
            .is_none_or(|r| route.roles.iter().any(|n| **n == **r))
        && select
            .permission
            .as_ref()
            .is_none_or(|p| route.permissions.iter().any(|n| **n == **p))
        && (select.methods.is_empty() || route.methods.iter().any(|m| select.methods.contains(m)))
}

/// Every (rule, method, path) `select` selects, in file order; and a failure for each method of a
/// selected rule no generated path reaches (it could not be asked), or for a selection of none.
pub(crate) fn selected(
    mapping: &Mapping,
    select: &Select,
    customers: &[i32],
) -> (Vec<(usize, String, String)>, Vec<Failure>) {
    let mut probes: Vec<(usize, String, String)> = Vec::new();
    let mut failures = Vec::new();
    for route in mapping.routes.iter().filter(|r| selects(select, r)) {
        for method in &route.methods {
            if !select.methods.is_empty() && !select.methods.contains(method) {
                continue;
            }
            let mut paths = rule_paths(mapping, route, method, customers);
            if let Some(prefix) = &select.path_prefix {
                if !route.path.starts_with(prefix.as_str()) {
                    paths.retain(|p| p.starts_with(prefix.as_str()));
                    if paths.is_empty() {
                        continue;
                    }
                }
            }
            if paths.is_empty() {
                failures.push(Failure {
                    who: String::new(),
                    method: method.clone(),
                    path: None,
                    rule: Some(route.label().to_string()),
                    at: Some(at(mapping, route)),
                    expected: String::new(),
                    decided: "nothing".into(),
                    problem: "no path generated from the rule's converters reaches it (another rule takes each one tried): it could not be asked".into(),
                    why: Vec::new(),
                });
            }
            probes.extend(paths.into_iter().map(|p| (route.index, method.clone(), p)));
        }
    }
    if let Some(prefix) = &select.path_prefix {
        // A rule that reaches below the prefix from elsewhere (a catch-all) is asked too.
        let base = prefix.trim_end_matches('/');
        let extra = [
            prefix.clone(),
            format!("{base}/x1"),
            format!("{base}/x1/x1"),
        ];
        let methods: BTreeSet<&String> = if select.methods.is_empty() {
            mapping.routes.iter().flat_map(|r| &r.methods).collect()
        } else {
            select.methods.iter().collect()
        };
        let depth = base.split('/').filter(|s| !s.is_empty()).count();
        for method in methods {
            // And each rule's own paths with their first segments (none, one, ... all but the
            // last) given up for the prefix: a rule whose converter takes the prefix's segments
            // (`/<section>/export`, `/<path:p>/export`) reaches below it from elsewhere (a
            // review: `/secrets/export` was forwarded while the statement passed).
            let mut tried: Vec<String> = extra.to_vec();
            for route in mapping.routes.iter().filter(|r| r.methods.contains(method)) {
                for p in rule_paths(mapping, route, method, customers) {
                    let (path, query) = match p.split_once('?') {
                        Some((path, query)) => (path, Some(query)),
                        None => (p.as_str(), None),
                    };
                    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
                    if depth == 0 {
                        continue;
                    }
                    for k in 0..segments.len() {
                        let mut variant = format!("{base}/{}", segments[k..].join("/"));
                        if path.ends_with('/') {
                            variant.push('/');
                        }
                        if let Some(q) = query {
                            variant = format!("{variant}?{q}");
                        }
                        if !tried.contains(&variant) {
                            tried.push(variant);
                        }
                    }
                }
            }
            for (i, path) in tried.iter().enumerate() {
                if !path.starts_with(prefix.as_str()) {
                    continue;
                }
                let Some((route, m)) = mapping.find(method, path) else {
                    continue;
                };
                let probe = (route.index, method.clone(), path.clone());
                // A rule the prefix's own paths or an earlier variant reach is asked there
                // already: one variant more for it would only repeat its failure.
                let asked = i >= extra.len()
                    && probes
                        .iter()
                        .any(|(r, m2, _)| *r == route.index && m2 == method);
                if !m.slash_redirect
                    && selects(select, route)
                    && route.methods.contains(method)
                    && !asked
                    && !probes.contains(&probe)
                {
                    probes.push(probe);
                }
            }
        }
    }
    if probes.is_empty() && failures.is_empty() {
        let mut why = String::from("the statement selects no rule");
        if let Some(c) = &select.cluster {
            if !mapping.clusters.is_empty() && !mapping.clusters.contains_key(c) {
                why = format!("{why}: the mapping declares no cluster {c:?}");
            }
        }
        failures.push(Failure {
            who: String::new(),
            method: String::new(),
            path: None,
            rule: None,
            at: None,
            expected: "at least one rule".into(),
            decided: "none".into(),
            problem: format!("{why}: a statement about nothing passes nothing"),
            why: Vec::new(),
        });
    }
    (probes, failures)
}

/// A principal holding every role and permission the catalogue and the mapping know, but the
/// roles that are or inherit one of `roles` and the permissions only those carry: whatever it
/// reaches, `roles` are not required for.
pub(super) fn adversary(world: &World<'_>, roles: &[String]) -> Principal {
    let catalogue = world.catalogue;
    let (mapping_roles, mapping_perms) = world.mapping.names();
    let mut all: BTreeSet<&str> = catalogue.roles();
    all.extend(mapping_roles);
    let gives = |r: &str| {
        catalogue
            .expand("", &BTreeSet::from([r.to_string()]))
            .keys()
            .any(|x| roles.contains(x))
    };
    let held: Vec<String> = all
        .into_iter()
        .filter(|r| !gives(r))
        .map(str::to_string)
        .collect();
    let mut perms: BTreeSet<String> = held
        .iter()
        .flat_map(|r| catalogue.permissions.get(r).into_iter().flatten().cloned())
        .collect();
    // A permission no role of the catalogue carries could be held some other way: held.
    let carried = catalogue.all_permissions();
    perms.extend(
        mapping_perms
            .into_iter()
            .filter(|p| !carried.contains(p))
            .map(str::to_string),
    );
    Principal::for_tests("test:adversary", held, perms.into_iter().collect())
}

/// The rules no case reached, in file order.
pub(crate) fn uncovered(mapping: &Mapping, touched: &[bool]) -> Vec<Uncovered> {
    mapping
        .routes
        .iter()
        .filter(|r| !touched[r.index])
        .map(|r| Uncovered {
            rule: r.label().to_string(),
            at: at(mapping, r),
        })
        .collect()
}
