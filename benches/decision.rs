//! Route matching + decision over the production `routes.toml`, side by side with casbin-rs
//! enforcing the same policy and a naive linear-scan matcher (the floor).
//!
//! One iteration = one decision for the next request of a fixed, realistic mix (static,
//! variable, deep, no-route, denied, public, gone, refused), so criterion's "time" is the mean
//! cost per decision over the mix. Every contender pays the same front-end (`parse_target`).
//!
//! Run: `cargo bench --bench decision -- --warm-up-time 1 --measurement-time 3`
//!
//! No timing assertions here: the numbers are reported, not enforced. The setup prints how the
//! three contenders' allow/deny answers compare on the mix (casbin's `some(allow)` effect is not
//! Werkzeug's first-match routing, so a few differences are expected and listed).

use std::hint::black_box;
use std::path::Path;

use casbin::prelude::*;
use criterion::{criterion_group, criterion_main, Criterion};

use std::future::Future;
use std::sync::Arc;

use rbac_gateway::policy::mapping::{Access, Mapping, Route};
use rbac_gateway::policy::outcome::{self, Authority, Facts, Switches, Unavailable};
use rbac_gateway::policy::principal::Principal;
use rbac_gateway::policy::target::parse_target;
use rbac_gateway::policy::verdict::{authorize, route_step, Step, Verdict};

/// Roles of raxx-platform-admins after inheritance (migrations/0002_catalogue.sql).
const PLATFORM_ADMIN_ROLES: &[&str] = &[
    "console-user",
    "console-audit-user",
    "console-secrets-admin",
    "console-secrets-user",
    "console-manager",
    "console-flag-admin",
    "console-invite-admin",
    "console-env-admin",
    "console-billing-read",
    "console-billing-write",
    "raptor-audit-admin",
    "raptor-audit-support",
    "antlers-audit-self",
];

/// raxx-platform-admins' direct roles (rbac_group_roles).
const PLATFORM_ADMIN_GROUP_ROLES: &[&str] = &[
    "console-user",
    "console-audit-user",
    "console-secrets-admin",
    "console-manager",
    "console-billing-read",
    "console-billing-write",
    "raptor-audit-admin",
];

/// rbac_role_inheritance: (child, parent), the child holds what the parent grants.
const INHERITANCE: &[(&str, &str)] = &[
    ("console-ops", "console-user"),
    ("console-ops", "console-audit-user"),
    ("console-manager", "console-flag-admin"),
    ("console-manager", "console-invite-admin"),
    ("console-manager", "console-env-admin"),
    ("console-secrets-admin", "console-secrets-user"),
    ("raptor-audit-support", "antlers-audit-self"),
    ("raptor-audit-admin", "raptor-audit-support"),
];

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Static,
    Variable,
    Deep,
    NoRoute,
    Denied,
}

/// (kind, method, raw target as sent). ~40 requests a platform admin's browser and tools send.
const MIX: &[(Kind, &str, &str)] = &[
    // static, allowed (incl. public and static-beats-variable cases)
    (Kind::Static, "GET", "/dashboard"),
    (Kind::Static, "GET", "/ops"),
    (Kind::Static, "GET", "/console/flags"),
    (Kind::Static, "GET", "/secrets"),
    (Kind::Static, "GET", "/console/audit?page=2"),
    (Kind::Static, "GET", "/api/rbac/me"),
    (Kind::Static, "GET", "/console/customers/invite"),
    (Kind::Static, "GET", "/dashboard/_status_grid"),
    (Kind::Static, "HEAD", "/console/status"),
    (Kind::Static, "GET", "/health"),
    (Kind::Static, "POST", "/auth/login"),
    // one variable segment
    (Kind::Variable, "GET", "/console/customers/4711"),
    (Kind::Variable, "GET", "/console/customers/4711/audit"),
    (Kind::Variable, "POST", "/console/flags/new-checkout/flip"),
    (Kind::Variable, "GET", "/dashboard/sites/42"),
    (Kind::Variable, "GET", "/secrets/stripe%2Dkey/sop"),
    (Kind::Variable, "POST", "/api/secrets/stripe-key/rotate"),
    (Kind::Variable, "GET", "/ops/status/9f3c2a"),
    (Kind::Variable, "GET", "/api/status/sites/17"),
    // deep: several variables, path converters, backtracking
    (
        Kind::Deep,
        "GET",
        "/secrets/stripe-key/rotate/job-77/progress",
    ),
    (
        Kind::Deep,
        "GET",
        "/dashboard/api/sites/42/latency-history?window=24h",
    ),
    (
        Kind::Deep,
        "POST",
        "/dashboard/site-a/flag/beta-banner/toggle",
    ),
    (
        Kind::Deep,
        "GET",
        "/api/billing/dashboard/invoices/2024/03/summary",
    ),
    (Kind::Deep, "POST", "/internal/api/v1/things/5"),
    (Kind::Deep, "POST", "/console/customers/4711/sess-9/revoke"),
    (
        Kind::Deep,
        "DELETE",
        "/console/customers/4711/rbac-grants/g-123",
    ),
    (Kind::Deep, "GET", "/static/css/app.3f2a.css"),
    (Kind::Deep, "POST", "/console/flags/promotions/verify"),
    // no route (and one refused target, one gone route)
    (Kind::NoRoute, "GET", "/wp-admin/setup-config.php"),
    (
        Kind::NoRoute,
        "GET",
        "/console/customers/4711/unknown/extra",
    ),
    (Kind::NoRoute, "DELETE", "/ops"),
    (Kind::NoRoute, "GET", "/api/v2/things"),
    (Kind::NoRoute, "GET", "/favicon.ico"),
    (Kind::NoRoute, "GET", "/console/../secrets"),
    (Kind::NoRoute, "GET", "/console/rbac/shadow-comparison"),
    // denied: roles raxx-platform-admins does not hold
    (Kind::Denied, "POST", "/console/deploy-freeze/toggle"),
    (Kind::Denied, "GET", "/console/flags/promotions"),
    (Kind::Denied, "GET", "/console/flags/promotions/fragment"),
    (Kind::Denied, "GET", "/console/flags/promotions/88/status"),
    (Kind::Denied, "POST", "/console/flags/checkout/mark-synced"),
    (Kind::Denied, "GET", "/promotions/badge-fragment"),
];

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Outcome {
    Allow,
    Deny,
    Gone,
    Refused,
    NoRoute,
}

impl Outcome {
    fn allows(self) -> bool {
        self == Outcome::Allow
    }
}

fn decide(step: Step, route: Option<&Route>, principal: &Principal) -> Outcome {
    match step {
        Step::NoRoute => Outcome::NoRoute,
        Step::Gone => Outcome::Gone,
        Step::Forward(_) => Outcome::Allow,
        Step::NeedPrincipal => match authorize(route.unwrap(), principal) {
            Verdict::Allow { .. } => Outcome::Allow,
            Verdict::Deny => Outcome::Deny,
        },
    }
}

/// The gateway's authority for the benchmark: every cookie is the one in-memory principal (a
/// cached session costs the gateway no I/O either).
struct InMemory(Arc<Principal>);

impl Authority for InMemory {
    async fn principal_for_token(
        &self,
        _: &str,
        _: std::time::Instant,
    ) -> std::result::Result<Option<Arc<Principal>>, Unavailable> {
        Ok(Some(self.0.clone()))
    }

    async fn known_admin(&self, _: &str) -> Option<String> {
        Some(self.0.admin_id.clone())
    }

    async fn with_ticket_grants(
        &self,
        _: &Principal,
        _: i32,
        _: &str,
    ) -> std::result::Result<Option<Principal>, Unavailable> {
        Ok(None)
    }
}

/// (a) this gateway: parse_target, then the proxy's own outcome function ([`decide`] of
/// `rbac_gateway::policy::outcome`, which matches, resolves and builds the audit row of a denial).
fn gateway(mapping: &Mapping, authority: &InMemory, method: &str, raw: &[u8]) -> Outcome {
    let Ok(target) = parse_target(raw) else {
        return Outcome::Refused;
    };
    let facts = Facts {
        method,
        target: &target,
        token: Some("bench"),
        client_ip: Some("127.0.0.1"),
        user_agent: None,
        request_id: "bench",
        at: std::time::Instant::now(),
    };
    let switches = Switches {
        kill_switch: false,
        ticket_grants: true,
    };
    // Nothing in the decision waits on an in-memory authority: one poll completes it.
    let mut fut = std::pin::pin!(outcome::decide(authority, mapping, switches, &facts));
    let std::task::Poll::Ready(o) = fut
        .as_mut()
        .poll(&mut std::task::Context::from_waker(std::task::Waker::noop()))
    else {
        unreachable!("an in-memory authority never waits")
    };
    match o {
        outcome::Outcome::Forward(_) | outcome::Outcome::ShadowDeny { .. } => Outcome::Allow,
        outcome::Outcome::Deny { row } if row.reason == "no_route" => Outcome::NoRoute,
        outcome::Outcome::Deny { .. } => Outcome::Deny,
        outcome::Outcome::Gone => Outcome::Gone,
        outcome::Outcome::Refuse(_) => Outcome::Refused,
        other => unreachable!("{other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// (c) the floor: a linear scan in file order, plain segment compares, first match wins.

enum Seg {
    Static(String),
    Var,
    /// `<path:x>`: the rest of the path (one or more segments).
    Rest,
}

struct Linear<'m> {
    rules: Vec<(&'m Route, Vec<Seg>, Vec<String>)>,
}

impl<'m> Linear<'m> {
    fn new(mapping: &'m Mapping) -> Linear<'m> {
        let rules = mapping
            .routes
            .iter()
            .map(|r| {
                let segs = r.path[1..]
                    .split('/')
                    .map(|s| {
                        if s.starts_with("<path:") {
                            Seg::Rest
                        } else if s.starts_with('<') && s.ends_with('>') {
                            Seg::Var
                        } else {
                            Seg::Static(s.to_string())
                        }
                    })
                    .collect();
                let mut methods = r.methods.clone();
                if methods.iter().any(|m| m == "GET") && !methods.iter().any(|m| m == "HEAD") {
                    methods.push("HEAD".to_string());
                }
                (r, segs, methods)
            })
            .collect();
        Linear { rules }
    }

    fn find(&self, method: &str, path: &str) -> Option<&'m Route> {
        'rules: for (route, segs, methods) in &self.rules {
            if !methods.iter().any(|m| m == method) {
                continue;
            }
            let mut parts = path[1..].split('/');
            for seg in segs {
                match (seg, parts.next()) {
                    (Seg::Rest, Some(p)) if !p.is_empty() => return Some(route),
                    (Seg::Static(s), Some(p)) if s == p => {}
                    (Seg::Var, Some(p)) if !p.is_empty() => {}
                    _ => continue 'rules,
                }
            }
            if parts.next().is_none() {
                return Some(route);
            }
        }
        None
    }
}

fn linear(lin: &Linear<'_>, principal: &Principal, method: &str, raw: &[u8]) -> Outcome {
    let Ok(target) = parse_target(raw) else {
        return Outcome::Refused;
    };
    let route = lin.find(method, target.path());
    let step = route_step(route, false);
    decide(step, route, principal)
}

// ---------------------------------------------------------------------------------------------
// (b) casbin-rs: RBAC with a role hierarchy, keyMatch2 paths, exact methods.

/// The model as casbin's documentation writes it, up to the matcher.
const CASBIN_DEFINITIONS: &str = r#"
[request_definition]
r = sub, obj, act

[policy_definition]
p = sub, obj, act

[role_definition]
g = _, _

[policy_effect]
e = some(where (p.eft == allow))

[matchers]
"#;

/// The documentation's matcher (`g()` first).
const CASBIN_MATCHER: &str = "g(r.sub, p.sub) && keyMatch2(r.obj, p.obj) && r.act == p.act";

/// The same policy with the cheapest test first: casbin's best case for this policy.
const CASBIN_MATCHER_ACT_FIRST: &str =
    "r.act == p.act && keyMatch2(r.obj, p.obj) && g(r.sub, p.sub)";

fn casbin_model(matcher: &str) -> String {
    format!("{CASBIN_DEFINITIONS}m = {matcher}\n")
}

/// Flask rule -> keyMatch2 pattern: `<x>`/`<int:x>` -> `:x`, `<path:x>` -> `*`.
fn key_match2_pattern(rule: &str) -> String {
    rule.split('/')
        .map(|s| {
            if s.starts_with("<path:") {
                "*".to_string()
            } else if let Some(inner) = s.strip_prefix('<').and_then(|s| s.strip_suffix('>')) {
                format!(":{}", inner.rsplit(':').next().unwrap())
            } else {
                s.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// Everyone holds `anonymous` (public and machine routes); `gone` routes grant nothing.
const ANONYMOUS: &str = "anonymous";
const USER: &str = "admin-1";

fn casbin_enforcer(mapping: &Mapping, model: &str) -> (Enforcer, usize, usize) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let model = DefaultModel::from_str(model).await.unwrap();
        let mut e = Enforcer::new(model, MemoryAdapter::default())
            .await
            .unwrap();
        let mut policies = Vec::new();
        for r in &mapping.routes {
            let subjects: Vec<&str> = match r.access {
                Access::Protected => r.roles.iter().map(|n| &**n).collect(),
                Access::Public | Access::Machine => vec![ANONYMOUS],
                Access::Gone => vec![],
            };
            let mut methods = r.methods.clone();
            if methods.iter().any(|m| m == "GET") && !methods.iter().any(|m| m == "HEAD") {
                methods.push("HEAD".to_string());
            }
            let obj = key_match2_pattern(&r.path);
            for sub in &subjects {
                for m in &methods {
                    policies.push(vec![sub.to_string(), obj.clone(), m.clone()]);
                }
            }
        }
        let mut groupings = vec![
            vec![USER.to_string(), "raxx-platform-admins".to_string()],
            vec![USER.to_string(), ANONYMOUS.to_string()],
        ];
        for role in PLATFORM_ADMIN_GROUP_ROLES {
            groupings.push(vec!["raxx-platform-admins".to_string(), role.to_string()]);
        }
        for (child, parent) in INHERITANCE {
            groupings.push(vec![child.to_string(), parent.to_string()]);
        }
        let (np, ng) = (policies.len(), groupings.len());
        e.add_policies(policies).await.unwrap();
        e.add_grouping_policies(groupings).await.unwrap();
        (e, np, ng)
    })
}

fn casbin(e: &Enforcer, method: &str, raw: &[u8]) -> Outcome {
    let Ok(target) = parse_target(raw) else {
        return Outcome::Refused;
    };
    if e.enforce((USER, target.path(), method)).unwrap() {
        Outcome::Allow
    } else {
        Outcome::Deny
    }
}

// ---------------------------------------------------------------------------------------------

fn benches(c: &mut Criterion) {
    let path = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/routes.toml"));
    let mapping = Mapping::load(path).unwrap_or_else(|e| panic!("routes.toml:\n{e}"));
    let principal = Principal::for_tests(
        USER,
        PLATFORM_ADMIN_ROLES.iter().map(|s| s.to_string()).collect(),
        vec![],
    );
    let authority = InMemory(Arc::new(principal.clone()));
    let lin = Linear::new(&mapping);
    let (enforcer, np, ng) = casbin_enforcer(&mapping, &casbin_model(CASBIN_MATCHER));
    let (enforcer_act_first, _, _) =
        casbin_enforcer(&mapping, &casbin_model(CASBIN_MATCHER_ACT_FIRST));
    let mix: Vec<(Kind, &str, &[u8])> =
        MIX.iter().map(|(k, m, p)| (*k, *m, p.as_bytes())).collect();

    // How the answers compare (informational: printed, never asserted).
    eprintln!(
        "decision bench: {} rules, {} requests in the mix; casbin: {np} p lines, {ng} g lines",
        mapping.routes.len(),
        mix.len()
    );
    let mut differ = 0;
    for (kind, m, raw) in &mix {
        let g = gateway(&mapping, &authority, m, raw);
        let l = linear(&lin, &principal, m, raw);
        let cb = casbin(&enforcer, m, raw);
        let cb2 = casbin(&enforcer_act_first, m, raw);
        if g.allows() != l.allows() || g.allows() != cb.allows() || cb != cb2 {
            differ += 1;
            eprintln!(
                "  differs: {kind:?} {m} {} -> gateway {g:?}, linear {l:?}, casbin {cb:?}/{cb2:?}",
                String::from_utf8_lossy(raw)
            );
        }
    }
    let allowed = mix
        .iter()
        .filter(|(_, m, raw)| gateway(&mapping, &authority, m, raw).allows())
        .count();
    eprintln!(
        "  gateway allows {allowed}/{} of the mix; {differ} request(s) answered differently",
        mix.len()
    );

    let mut g = c.benchmark_group("decision_per_request");
    g.bench_function("gateway", |b| {
        let mut i = 0usize;
        b.iter(|| {
            let (_, m, raw) = mix[i % mix.len()];
            i = i.wrapping_add(1);
            black_box(gateway(&mapping, &authority, black_box(m), black_box(raw)))
        })
    });
    g.bench_function("casbin", |b| {
        let mut i = 0usize;
        b.iter(|| {
            let (_, m, raw) = mix[i % mix.len()];
            i = i.wrapping_add(1);
            black_box(casbin(&enforcer, black_box(m), black_box(raw)))
        })
    });
    g.bench_function("casbin_act_first", |b| {
        let mut i = 0usize;
        b.iter(|| {
            let (_, m, raw) = mix[i % mix.len()];
            i = i.wrapping_add(1);
            black_box(casbin(&enforcer_act_first, black_box(m), black_box(raw)))
        })
    });
    g.bench_function("linear_scan", |b| {
        let mut i = 0usize;
        b.iter(|| {
            let (_, m, raw) = mix[i % mix.len()];
            i = i.wrapping_add(1);
            black_box(linear(&lin, &principal, black_box(m), black_box(raw)))
        })
    });
    g.finish();

    let mut g = c.benchmark_group("gateway_by_kind");
    for kind in [
        Kind::Static,
        Kind::Variable,
        Kind::Deep,
        Kind::NoRoute,
        Kind::Denied,
    ] {
        let subset: Vec<_> = mix.iter().filter(|(k, _, _)| *k == kind).collect();
        g.bench_function(format!("{kind:?}").to_lowercase(), |b| {
            let mut i = 0usize;
            b.iter(|| {
                let (_, m, raw) = subset[i % subset.len()];
                i = i.wrapping_add(1);
                black_box(gateway(&mapping, &authority, black_box(m), black_box(raw)))
            })
        });
    }
    g.finish();
}

criterion_group!(decision, benches);
criterion_main!(decision);
