//! The production mapping (routes.toml) against an INDEPENDENT transcription of the design
//! (shared/seeds/003 §3 per-route tables, §6 clusters, §9 over-exposure), proven through the
//! running gateway as 003 §7 "Test Strategy" asks: smoke test of role names, per-cluster
//! table-driven tests, a golden test per cluster, the seeded groups of the legend, Werkzeug
//! precedence, and the public / machine / gone surface.
//!
//! The table below is transcribed by hand from 003 §3, NOT generated from routes.toml: a wrong
//! cell in either shows up as a failing assertion that names the route.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::PathBuf;

use rbac_gateway::policy::mapping::{Access, Mapping};

use crate::helpers::*;

// ---------------------------------------------------------------------------------------------
// 003 §3, transcribed

/// One route of 003 §3: the sub-card cluster (§6), the blueprint, the method, the rule as 003
/// writes it, a concrete path for it, and the V2 role of the "V2 decorator" column.
#[derive(Debug, Clone, Copy)]
struct Row {
    cluster: &'static str,
    blueprint: &'static str,
    method: &'static str,
    rule: &'static str,
    path: &'static str,
    role: &'static str,
}

impl fmt::Display for Row {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "[{} {}] {} {} (003: {} {} -> {})",
            self.cluster, self.blueprint, self.method, self.path, self.method, self.rule, self.role
        )
    }
}

const fn r(
    cluster: &'static str,
    blueprint: &'static str,
    method: &'static str,
    rule: &'static str,
    path: &'static str,
    role: &'static str,
) -> Row {
    Row {
        cluster,
        blueprint,
        method,
        rule,
        path,
        role,
    }
}

const USER: &str = "console-user";
const AUDIT: &str = "console-audit-user";
const FLAG_ADMIN: &str = "console-flag-admin";
const SECRETS_USER: &str = "console-secrets-user";
const SECRETS_ADMIN: &str = "console-secrets-admin";
const INVITE: &str = "console-invite-admin";
const MANAGER: &str = "console-manager";
const FPQ_READ: &str = "console-flag_promotion_queue-read";
const FPQ_WRITE: &str = "console-flag_promotion_queue-write";
const PROD_WRITE: &str = "console-prod-services-write";
const RAPTOR_ADMIN: &str = "raptor-audit-admin";

/// A role that grants none of the routes below (nothing inherits from it in that direction).
const UNRELATED: &str = "antlers-audit-self";

/// Every route of 003 §3 that 003 gives a path (beta.py, S3, has none and is not here).
/// AMBIGUOUS-1/3/4 use option A. Where 003 names no method (alerts, api_status, audit_viewer,
/// console_versions_ui) the method routes.toml's note infers is used.
#[rustfmt::skip]
const ROUTES_003: &[Row] = &[
    // S1 — alerts.py (4 routes; 003 names no method), status_page.py, waitlist.py,
    //      console_versions_ui.py
    r("S1", "alerts.py", "GET", "/api/_internal/alerts/unread-count", "/api/_internal/alerts/unread-count", USER),
    r("S1", "alerts.py", "GET", "/_alerts/drawer", "/_alerts/drawer", USER),
    r("S1", "alerts.py", "POST", "/_alerts/dismiss/<id>", "/_alerts/dismiss/42", USER),
    r("S1", "alerts.py", "POST", "/_alerts/dismiss-all", "/_alerts/dismiss-all", USER),
    r("S1", "status_page.py", "GET", "/console/status", "/console/status", USER),
    r("S1", "status_page.py", "GET", "/status", "/status", USER),
    r("S1", "status_page.py", "POST", "/console/status/<id>/investigate", "/console/status/42/investigate", AUDIT),
    r("S1", "waitlist.py", "GET", "/console/waitlist", "/console/waitlist", MANAGER),
    r("S1", "waitlist.py", "POST", "/console/waitlist/invite", "/console/waitlist/invite", MANAGER),
    r("S1", "console_versions_ui.py", "GET", "/admin/console-versions", "/admin/console-versions", MANAGER),
    // S2 — audit_viewer.py (no method in 003), security.py, replay.py, ops.py
    r("S2", "audit_viewer.py", "GET", "/console/audit", "/console/audit", AUDIT),
    r("S2", "security.py", "GET", "/security", "/security", AUDIT),
    r("S2", "security.py", "GET", "/api/internal/security-posture-summary", "/api/internal/security-posture-summary", MANAGER),
    r("S2", "replay.py", "GET", "/replay", "/replay", MANAGER),
    r("S2", "replay.py", "GET", "/replay/events", "/replay/events", MANAGER),
    r("S2", "replay.py", "GET", "/replay/event-detail", "/replay/event-detail", MANAGER),
    r("S2", "replay.py", "GET", "/replay/user-state", "/replay/user-state", MANAGER),
    r("S2", "ops.py", "GET", "/ops", "/ops", MANAGER),
    r("S2", "ops.py", "POST", "/ops/dispatch/<action_id>", "/ops/dispatch/act-1", MANAGER),
    r("S2", "ops.py", "GET", "/ops/status/<job_id>", "/ops/status/job-1", MANAGER),
    // S3 — customers.py (16 routes); AMBIGUOUS-3 option A (console-manager)
    r("S3", "customers.py", "GET", "/console/customers/", "/console/customers/", AUDIT),
    r("S3", "customers.py", "GET", "/console/customers/invite", "/console/customers/invite", INVITE),
    r("S3", "customers.py", "POST", "/console/customers/invite", "/console/customers/invite", INVITE),
    r("S3", "customers.py", "GET", "/console/customers/<id>", "/console/customers/42", AUDIT),
    r("S3", "customers.py", "POST", "/console/customers/<id>/<session_id>/revoke", "/console/customers/42/sess-1/revoke", MANAGER),
    r("S3", "customers.py", "POST", "/console/customers/<id>/revoke-bootstrap-token", "/console/customers/42/revoke-bootstrap-token", INVITE),
    r("S3", "customers.py", "GET", "/console/customers/<id>/tickets", "/console/customers/42/tickets", AUDIT),
    r("S3", "customers.py", "GET", "/console/customers/<id>/rbac-grants", "/console/customers/42/rbac-grants", AUDIT),
    r("S3", "customers.py", "GET", "/console/customers/<id>/rbac-grants/agents", "/console/customers/42/rbac-grants/agents", AUDIT),
    r("S3", "customers.py", "GET", "/console/customers/<id>/rbac-grants/roles", "/console/customers/42/rbac-grants/roles", AUDIT),
    r("S3", "customers.py", "POST", "/console/customers/<id>/rbac-grants", "/console/customers/42/rbac-grants", INVITE),
    r("S3", "customers.py", "DELETE", "/console/customers/<id>/rbac-grants/<grant_id>", "/console/customers/42/rbac-grants/grant-1", INVITE),
    r("S3", "customers.py", "GET", "/console/customers/<id>/audit", "/console/customers/42/audit", AUDIT),
    r("S3", "customers.py", "GET", "/console/customers/<id>/danger-zone", "/console/customers/42/danger-zone", MANAGER),
    r("S3", "customers.py", "POST", "/console/customers/<id>/delete", "/console/customers/42/delete", MANAGER),
    r("S3", "customers.py", "POST", "/console/customers/<id>/reset", "/console/customers/42/reset", MANAGER),
    // S4 — deploys.py (AMBIGUOUS-4 option A), deploy_freeze.py, internal.py, console_versions.py
    r("S4", "deploys.py", "POST", "/api/internal/deploys", "/api/internal/deploys", PROD_WRITE),
    r("S4", "deploys.py", "GET", "/api/internal/deploys/<id>", "/api/internal/deploys/42", USER),
    r("S4", "deploys.py", "GET", "/api/internal/deploys/<id>/logs", "/api/internal/deploys/42/logs", USER),
    r("S4", "deploys.py", "GET", "/api/internal/deploys", "/api/internal/deploys", USER),
    r("S4", "deploy_freeze.py", "GET", "/console/deploy-freeze", "/console/deploy-freeze", MANAGER),
    r("S4", "deploy_freeze.py", "POST", "/console/deploy-freeze/toggle", "/console/deploy-freeze/toggle", PROD_WRITE),
    r("S4", "internal.py", "GET", "/poller-status", "/poller-status", MANAGER),
    r("S4", "internal.py", "GET", "/active-sessions", "/active-sessions", USER),
    r("S4", "internal.py", "GET", "/surfaces/<id>/p5", "/surfaces/42/p5", USER),
    r("S4", "internal.py", "GET", "/flag-drift/pending", "/flag-drift/pending", FPQ_READ),
    r("S4", "internal.py", "GET", "/promotions/badge-fragment", "/promotions/badge-fragment", FPQ_WRITE),
    r("S4", "console_versions.py", "POST", "/api/internal/console-versions/promote", "/api/internal/console-versions/promote", MANAGER),
    // S5 — dashboard.py (header says 9 routes, the table lists 10 rows), api_status.py (no
    //      method in 003)
    r("S5", "dashboard.py", "GET", "/dashboard", "/dashboard", USER),
    r("S5", "dashboard.py", "GET", "/dashboard/_status_grid", "/dashboard/_status_grid", USER),
    r("S5", "dashboard.py", "GET", "/dashboard/_activity", "/dashboard/_activity", USER),
    r("S5", "dashboard.py", "POST", "/dashboard/_force_poll", "/dashboard/_force_poll", FLAG_ADMIN),
    r("S5", "dashboard.py", "GET", "/dashboard/sites/<id>", "/dashboard/sites/42", USER),
    r("S5", "dashboard.py", "GET", "/dashboard/api/sites/<id>/latency-history", "/dashboard/api/sites/42/latency-history", USER),
    r("S5", "dashboard.py", "GET", "/dashboard/api/sites/<id>/probe-history", "/dashboard/api/sites/42/probe-history", USER),
    r("S5", "dashboard.py", "GET", "/dashboard/api/sites/<id>/audit", "/dashboard/api/sites/42/audit", AUDIT),
    r("S5", "dashboard.py", "POST", "/dashboard/<site>/flag/<flag>/toggle", "/dashboard/site-1/flag/flag-1/toggle", FLAG_ADMIN),
    r("S5", "dashboard.py", "POST", "/dashboard/status/<surface_id>/config", "/dashboard/status/surf-1/config", USER),
    r("S5", "api_status.py", "GET", "/api/status/sites", "/api/status/sites", USER),
    r("S5", "api_status.py", "GET", "/api/status/sites/<id>", "/api/status/sites/42", USER),
    r("S5", "api_status.py", "GET", "/api/status/builds", "/api/status/builds", AUDIT),
    r("S5", "api_status.py", "GET", "/api/status/secrets", "/api/status/secrets", SECRETS_ADMIN),
    // S6 — flags.py (14 routes)
    r("S6", "flags.py", "GET", "/console/flags/drift", "/console/flags/drift", FLAG_ADMIN),
    r("S6", "flags.py", "GET", "/console/flags", "/console/flags", FLAG_ADMIN),
    r("S6", "flags.py", "GET", "/console/api/flags", "/console/api/flags", FLAG_ADMIN),
    r("S6", "flags.py", "POST", "/console/flags/<key>/verify", "/console/flags/beta-dashboard/verify", FLAG_ADMIN),
    r("S6", "flags.py", "POST", "/console/flags/<key>/flip", "/console/flags/beta-dashboard/flip", FLAG_ADMIN),
    r("S6", "flags.py", "POST", "/console/flags/<key>/mark-promote", "/console/flags/beta-dashboard/mark-promote", FPQ_WRITE),
    r("S6", "flags.py", "POST", "/console/flags/promotions/<id>/promote", "/console/flags/promotions/42/promote", PROD_WRITE),
    r("S6", "flags.py", "GET", "/console/flags/promotions/<id>/status", "/console/flags/promotions/42/status", FPQ_READ),
    r("S6", "flags.py", "POST", "/console/flags/promotions/<id>/reject", "/console/flags/promotions/42/reject", PROD_WRITE),
    r("S6", "flags.py", "POST", "/console/flags/<key>/mark-synced", "/console/flags/beta-dashboard/mark-synced", PROD_WRITE),
    r("S6", "flags.py", "POST", "/console/flags/<key>/resolve-drift", "/console/flags/beta-dashboard/resolve-drift", FLAG_ADMIN),
    r("S6", "flags.py", "GET", "/console/flags/promotions", "/console/flags/promotions", FPQ_READ),
    r("S6", "flags.py", "POST", "/console/flags/promotions/<id>/force-fail", "/console/flags/promotions/42/force-fail", PROD_WRITE),
    r("S6", "flags.py", "GET", "/console/flags/promotions/fragment", "/console/flags/promotions/fragment", FPQ_READ),
    // S7 — admins_online.py; AMBIGUOUS-1 option A (console-invite-admin)
    r("S7", "admins_online.py", "GET", "/console/admins/online", "/console/admins/online", INVITE),
    r("S7", "admins_online.py", "POST", "/console/admins/online/<session_id>/revoke", "/console/admins/online/sess-1/revoke", INVITE),
    // S8 — secrets.py (14 routes)
    r("S8", "secrets.py", "GET", "/secrets", "/secrets", SECRETS_ADMIN),
    r("S8", "secrets.py", "GET", "/secrets/history", "/secrets/history", SECRETS_ADMIN),
    r("S8", "secrets.py", "GET", "/secrets/_list", "/secrets/_list", SECRETS_ADMIN),
    r("S8", "secrets.py", "POST", "/secrets/refresh-cache", "/secrets/refresh-cache", SECRETS_ADMIN),
    r("S8", "secrets.py", "GET", "/secrets/<name>/rotate-modal", "/secrets/db-password/rotate-modal", SECRETS_ADMIN),
    r("S8", "secrets.py", "GET", "/secrets/<name>/sop", "/secrets/db-password/sop", SECRETS_USER),
    r("S8", "secrets.py", "POST", "/api/secrets/<name>/rotate", "/api/secrets/db-password/rotate", SECRETS_ADMIN),
    r("S8", "secrets.py", "POST", "/secrets/<name>/rotate/htmx", "/secrets/db-password/rotate/htmx", SECRETS_ADMIN),
    r("S8", "secrets.py", "GET", "/secrets/<name>/rotate/<job_id>/progress", "/secrets/db-password/rotate/job-1/progress", SECRETS_ADMIN),
    r("S8", "secrets.py", "GET", "/secrets/<name>/rotate/<job_id>/cell", "/secrets/db-password/rotate/job-1/cell", SECRETS_ADMIN),
    r("S8", "secrets.py", "GET", "/api/secrets/<name>/rotate/<job_id>", "/api/secrets/db-password/rotate/job-1", SECRETS_ADMIN),
    r("S8", "secrets.py", "GET", "/secrets/<name>/rotate-modal-v2", "/secrets/db-password/rotate-modal-v2", SECRETS_ADMIN),
    r("S8", "secrets.py", "POST", "/api/secrets/<name>/rotate-v2", "/api/secrets/db-password/rotate-v2", SECRETS_ADMIN),
    r("S8", "secrets.py", "POST", "/secrets/<name>/rotate-v2/htmx", "/secrets/db-password/rotate-v2/htmx", SECRETS_ADMIN),
    // S9 — rbac_grants_audit_ui.py
    r("S9", "rbac_grants_audit_ui.py", "GET", "/console/rbac/grants/audit", "/console/rbac/grants/audit", RAPTOR_ADMIN),
];

/// Rows of 003 §3 per cluster (S3 without beta.py, which has no paths).
const ROUTES_PER_CLUSTER: &[(&str, usize)] = &[
    ("S1", 10),
    ("S2", 10),
    ("S3", 16),
    ("S4", 12),
    ("S5", 14),
    ("S6", 14),
    ("S7", 2),
    ("S8", 14),
    ("S9", 1),
];

fn cluster(c: &str) -> Vec<Row> {
    ROUTES_003
        .iter()
        .filter(|r| r.cluster == c)
        .copied()
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The legend of roles (003 "Legend of roles cited", migrations/0002_catalogue.sql), expanded by
// inheritance: console-manager -> flag/invite/env admin, console-secrets-admin ->
// console-secrets-user, raptor-audit-admin -> raptor-audit-support -> antlers-audit-self.

const SUPPORT_TEAM: &[&str] = &[
    "console-user",
    "console-audit-user",
    "raptor-audit-support",
    "antlers-audit-self",
];
const DEVOPS_TEAM: &[&str] = &[
    "console-user",
    "console-audit-user",
    "console-flag-admin",
    "console-env-admin",
];
const PLATFORM_ADMINS: &[&str] = &[
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
const OPS_ADMINS: &[&str] = &[
    "console-flag_promotion_queue-read",
    "console-flag_promotion_queue-write",
    "console-prod-services-write",
    "console-staging-services-write",
];
const STAGING_ADMINS: &[&str] = &[
    "console-flag_promotion_queue-read",
    "console-staging-services-write",
];
/// break-glass: console-secrets-admin, console-invite-admin, console-manager (003 legend, §9).
const BREAK_GLASS: &[&str] = &[
    "console-secrets-admin",
    "console-secrets-user",
    "console-invite-admin",
    "console-manager",
    "console-flag-admin",
    "console-env-admin",
];

/// (label, seeded group to join or None for an active break-glass row, expanded roles).
const GROUPS: &[(&str, Option<&str>, &[&str])] = &[
    ("raxx-support-team", Some("raxx-support-team"), SUPPORT_TEAM),
    ("raxx-devops-team", Some("raxx-devops-team"), DEVOPS_TEAM),
    (
        "raxx-platform-admins",
        Some("raxx-platform-admins"),
        PLATFORM_ADMINS,
    ),
    ("ops-admins", Some("ops-admins"), OPS_ADMINS),
    ("staging-admins", Some("staging-admins"), STAGING_ADMINS),
    ("break-glass (active row)", None, BREAK_GLASS),
    ("no group", Some(""), &[]),
];

// ---------------------------------------------------------------------------------------------
// Helpers

fn routes_toml() -> PathBuf {
    root().join("routes.toml")
}

fn mapping() -> Mapping {
    Mapping::load(&routes_toml()).unwrap_or_else(|e| panic!("routes.toml loads: {e:?}"))
}

async fn prod_env() -> Env {
    Env::with(routes_toml(), |o| o).await
}

/// A concrete value for a rule variable.
fn sample(converter: &str, name: &str) -> &'static str {
    match (converter, name) {
        ("path", "filename") => "css/app.css",
        ("path", _) => "a/b",
        ("int", _) => "7",
        (_, "id") => "42",
        (_, "name") => "db-password",
        (_, "key") => "beta-dashboard",
        (_, "session_id") => "sess-1",
        (_, "grant_id") => "grant-1",
        (_, "job_id") => "job-1",
        (_, "action_id") => "act-1",
        (_, "site") => "site-1",
        (_, "flag") => "flag-1",
        (_, "surface_id") => "surf-1",
        _ => "x-7",
    }
}

/// A rule with concrete values substituted for its variables.
fn concrete(rule: &str) -> String {
    let mut out = String::new();
    let mut rest = rule;
    while let Some(start) = rest.find('<') {
        out.push_str(&rest[..start]);
        let end = start + rest[start..].find('>').expect("closing >");
        let var = &rest[start + 1..end];
        let (conv, name) = var.split_once(':').unwrap_or(("default", var));
        let conv = conv.split('(').next().unwrap();
        out.push_str(sample(conv, name));
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    out
}

/// A session for a new admin that is a member of a seeded group (or holds an active break-glass
/// row when `group` is None; no membership at all when it is "").
async fn group_member(db: &TestDb, group: Option<&str>) -> (String, String) {
    let admin = db
        .admin(&format!("{}@example.test", uuid::Uuid::new_v4().simple()))
        .await;
    match group {
        Some("") => {}
        Some(g) => db.join_group(&admin, g).await,
        None => {
            db.break_glass(&admin, 600.0).await;
        }
    }
    let token = db.session(&admin).await;
    (admin, token)
}

async fn call(env: &Env, method: &str, path: &str, token: Option<&str>) -> Resp {
    env.gw.request(method, path, token, &[], b"").await
}

/// The request reached Console unchanged and Console's answer came back.
async fn expect_forwarded(env: &Env, method: &str, path: &str, token: Option<&str>, what: &str) {
    let before = env.up.count();
    let r = call(env, method, path, token).await;
    assert_eq!(
        r.status,
        200,
        "{what}: expected forwarded (200), got {} {}",
        r.status,
        r.body_str()
    );
    let seen = env.up.requests();
    assert_eq!(seen.len(), before + 1, "{what}: upstream did not see it");
    let last = seen.last().unwrap();
    assert_eq!(
        (last.method.as_str(), last.target.as_str()),
        (method, path),
        "{what}: upstream saw another request"
    );
}

/// 403, not forwarded, exactly one access_denied row naming the admin and the rule; returns the
/// row's `route` column.
async fn expect_denied(
    env: &Env,
    method: &str,
    path: &str,
    token: &str,
    admin: &str,
    what: &str,
) -> String {
    let before = env.up.count();
    let r = call(env, method, path, Some(token)).await;
    assert_eq!(
        r.status,
        403,
        "{what}: expected 403, got {} {}",
        r.status,
        r.body_str()
    );
    assert_eq!(
        env.up.count(),
        before,
        "{what}: a denied request reached Console"
    );
    let rows = env.db.audit_rows(&r.request_id()).await;
    assert_eq!(rows.len(), 1, "{what}: exactly one audit row: {rows:?}");
    let row = &rows[0];
    assert_eq!(row.event_type, "access_denied", "{what}: {row:?}");
    assert_eq!(row.reason, "missing_role", "{what}: {row:?}");
    assert_eq!(row.admin_id.as_deref(), Some(admin), "{what}: {row:?}");
    assert_eq!(row.method, method, "{what}: {row:?}");
    assert_eq!(row.path, path, "{what}: {row:?}");
    row.route.clone().unwrap_or_default()
}

/// The audit row's `route` ("GET,POST /path") is the 003 rule of `row`.
fn assert_rule(route: &str, row: &Row, what: &str) {
    let (methods, rule) = route
        .split_once(' ')
        .unwrap_or_else(|| panic!("{what}: route column {route:?}"));
    assert_eq!(
        rule, row.rule,
        "{what}: the gateway matched another rule ({route})"
    );
    assert!(
        methods.split(',').any(|m| m == row.method),
        "{what}: rule {route} does not list {}",
        row.method
    );
}

async fn expect_login_redirect(env: &Env, row: &Row) {
    let r = call(env, row.method, row.path, None).await;
    assert_eq!(r.status, 302, "{row}: no session must redirect to login");
    let loc = r.header("location").unwrap_or_default();
    assert!(
        loc.starts_with("/auth/login?next="),
        "{row}: Location {loc:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// 1. Smoke test: every role name exists in the catalogue

#[tokio::test]
async fn every_role_named_in_routes_toml_and_003_exists_in_rbac_roles() {
    let db = TestDb::new().await;
    let seeded: BTreeSet<String> = sqlx::query_scalar::<_, String>("SELECT name FROM rbac_roles")
        .fetch_all(&db.pool)
        .await
        .unwrap()
        .into_iter()
        .collect();
    let m = mapping();
    let mut missing = Vec::new();
    for route in &m.routes {
        for role in &route.roles {
            if !seeded.contains(&**role) {
                missing.push(format!("routes.toml {} -> {role}", route.label()));
            }
        }
    }
    let legend = GROUPS.iter().flat_map(|(_, _, roles)| roles.iter());
    for role in ROUTES_003
        .iter()
        .map(|r| &r.role)
        .chain(legend)
        .chain([&UNRELATED])
    {
        if !seeded.contains(*role) {
            missing.push(format!("003 -> {role}"));
        }
    }
    assert!(missing.is_empty(), "roles not in rbac_roles: {missing:#?}");
}

// ---------------------------------------------------------------------------------------------
// 2. The transcription against routes.toml, cell by cell (no gateway: readable diffs)

#[test]
fn transcription_has_the_route_counts_of_003() {
    for (c, n) in ROUTES_PER_CLUSTER {
        assert_eq!(cluster(c).len(), *n, "routes of {c} in the transcription");
    }
    assert_eq!(
        ROUTES_003.len(),
        ROUTES_PER_CLUSTER.iter().map(|(_, n)| n).sum::<usize>()
    );
    for row in ROUTES_003 {
        assert_eq!(concrete(row.rule), row.path, "{row}: concrete path");
    }
}

#[test]
fn routes_toml_agrees_with_003_cell_by_cell() {
    let m = mapping();
    let mut diffs = Vec::new();
    for row in ROUTES_003 {
        let Some((route, hit)) = m.find(row.method, row.path) else {
            diffs.push(format!("{row}: no rule in routes.toml"));
            continue;
        };
        if route.path != row.rule || hit.slash_redirect {
            diffs.push(format!("{row}: matched {} instead", route.label()));
        }
        if route.access != Access::Protected {
            diffs.push(format!("{row}: access {}", route.access.as_str()));
        }
        if route.roles.len() != 1 || *route.roles[0] != *row.role || !route.permissions.is_empty() {
            diffs.push(format!("{row}: routes.toml requires {}", route.required()));
        }
        if route.meta.cluster.as_deref() != Some(row.cluster) {
            diffs.push(format!(
                "{row}: routes.toml cluster {:?}",
                route.meta.cluster
            ));
        }
        if route.meta.blueprint.as_deref() != Some(row.blueprint) {
            diffs.push(format!(
                "{row}: routes.toml blueprint {:?}",
                route.meta.blueprint
            ));
        }
    }
    // And nothing in S1..S9 that 003 does not list (beta.py has no paths in 003).
    for route in &m.routes {
        let Some(c) = route.meta.cluster.as_deref() else {
            continue;
        };
        if !ROUTES_PER_CLUSTER.iter().any(|(k, _)| *k == c)
            || route.meta.blueprint.as_deref() == Some("beta.py")
            || route.access != Access::Protected
        {
            continue;
        }
        for method in &route.methods {
            if !ROUTES_003
                .iter()
                .any(|r| r.rule == route.path && r.method == method)
            {
                diffs.push(format!(
                    "routes.toml {} ({c}): {method} {} is not in 003 §3",
                    route.label(),
                    route.path
                ));
            }
        }
    }
    assert!(
        diffs.is_empty(),
        "routes.toml vs 003 §3:\n{}",
        diffs.join("\n")
    );
}

// ---------------------------------------------------------------------------------------------
// 3 + 4. Per cluster, through the gateway: 302 / 200 with exactly the role / 403 + audit row,
// and the golden test (one admin holding every role of the cluster).

async fn cluster_routes(c: &str) {
    let rows = cluster(c);
    assert!(!rows.is_empty());
    let env = prod_env().await;
    let mut holders: BTreeMap<&str, String> = BTreeMap::new();
    for row in &rows {
        if !holders.contains_key(row.role) {
            let (_, token) = env.db.admin_with_roles(&[row.role]).await;
            holders.insert(row.role, token);
        }
    }
    let (other, other_token) = env.db.admin_with_roles(&[UNRELATED]).await;
    for row in &rows {
        expect_login_redirect(&env, row).await;
        let what = format!("{row} as holder of exactly {}", row.role);
        expect_forwarded(&env, row.method, row.path, Some(&holders[row.role]), &what).await;
        let what = format!("{row} as holder of only {UNRELATED}");
        let route = expect_denied(&env, row.method, row.path, &other_token, &other, &what).await;
        assert_rule(&route, row, &what);
    }
    assert_eq!(
        env.up.count(),
        rows.len(),
        "{c}: forwarded exactly once per route"
    );
}

async fn cluster_golden(c: &str) {
    let rows = cluster(c);
    let env = prod_env().await;
    let roles: BTreeSet<&str> = rows.iter().map(|r| r.role).collect();
    let roles: Vec<&str> = roles.into_iter().collect();
    let (_, token) = env.db.admin_with_roles(&roles).await;
    for row in &rows {
        let what = format!("golden {c}: {row} as holder of {roles:?}");
        expect_forwarded(&env, row.method, row.path, Some(&token), &what).await;
    }
    assert_eq!(env.db.audit_count().await, 0, "golden {c}: no denial");
}

macro_rules! per_cluster {
    ($($c:literal => $routes:ident, $golden:ident;)*) => {$(
        #[tokio::test]
        async fn $routes() {
            cluster_routes($c).await;
        }
        #[tokio::test]
        async fn $golden() {
            cluster_golden($c).await;
        }
    )*};
}

per_cluster! {
    "S1" => s1_alerts_status_waitlist_versions_ui, s1_golden;
    "S2" => s2_audit_security_replay_ops, s2_golden;
    "S3" => s3_customers, s3_golden;
    "S4" => s4_deploys_freeze_internal_versions, s4_golden;
    "S5" => s5_dashboard_api_status, s5_golden;
    "S6" => s6_flags, s6_golden;
    "S7" => s7_admins_online, s7_golden;
    "S8" => s8_secrets, s8_golden;
    "S9" => s9_rbac_grants_audit_ui, s9_golden;
}

// ---------------------------------------------------------------------------------------------
// 5. The seeded groups of the legend, and §9 over-exposure

#[tokio::test]
async fn seeded_groups_reach_exactly_what_their_roles_grant() {
    let env = prod_env().await;
    let mut members = Vec::new();
    for (label, group, roles) in GROUPS {
        let (admin, token) = group_member(&env.db, *group).await;
        members.push((*label, *roles, admin, token));
    }
    for row in ROUTES_003 {
        for (label, roles, admin, token) in &members {
            let what = format!("{row} as member of {label}");
            if roles.contains(&row.role) {
                expect_forwarded(&env, row.method, row.path, Some(token), &what).await;
            } else {
                let route = expect_denied(&env, row.method, row.path, token, admin, &what).await;
                assert_rule(&route, row, &what);
            }
        }
    }
}

#[tokio::test]
async fn console_manager_routes_only_for_platform_admins_and_break_glass() {
    // 003 §9: every console-manager mapping is held only by raxx-platform-admins and
    // break-glass. Both the transcription's rows and every routes.toml rule naming
    // console-manager (beta.py's guessed prefixes included).
    let m = mapping();
    let mut targets: BTreeSet<(String, String, String)> = ROUTES_003
        .iter()
        .filter(|r| r.role == MANAGER)
        .map(|r| (r.method.to_string(), r.path.to_string(), r.to_string()))
        .collect();
    for route in m
        .routes
        .iter()
        .filter(|r| r.roles.iter().any(|x| **x == *MANAGER))
    {
        for method in &route.methods {
            let path = concrete(&route.path);
            let what = format!("routes.toml {} ({method} {path})", route.label());
            targets.insert((method.clone(), path, what));
        }
    }
    let env = prod_env().await;
    for (label, group, roles) in GROUPS {
        let (admin, token) = group_member(&env.db, *group).await;
        let allowed = matches!(*label, "raxx-platform-admins" | "break-glass (active row)");
        assert_eq!(allowed, roles.contains(&MANAGER), "{label}: legend");
        for (method, path, what) in &targets {
            let what = format!("§9 console-manager route {what} as member of {label}");
            if allowed {
                expect_forwarded(&env, method, path, Some(&token), &what).await;
            } else {
                expect_denied(&env, method, path, &token, &admin, &what).await;
            }
        }
    }
}

#[tokio::test]
async fn expired_break_glass_grants_nothing() {
    let env = prod_env().await;
    let (admin, token) = env.db.admin_with_roles(&[]).await;
    env.db.break_glass(&admin, -5.0).await;
    for row in ROUTES_003.iter().filter(|r| r.role == MANAGER) {
        let what = format!("{row} with an expired break-glass row");
        expect_denied(&env, row.method, row.path, &token, &admin, &what).await;
    }
}

// ---------------------------------------------------------------------------------------------
// 6. Werkzeug precedence in this mapping

/// (method, path, the rule that must match, a role the rule grants, a role that distinguishes
/// it from the rule it could be confused with: denied here).
#[rustfmt::skip]
const PRECEDENCE: &[(&str, &str, &str, &str, &str)] = &[
    // Static segment beats <id>: the invite rule, not GET /console/customers/<id>.
    ("GET", "/console/customers/invite", "GET /console/customers/invite", INVITE, AUDIT),
    // Backtracking out of the static 'promotions' branch into <key>/verify.
    ("POST", "/console/flags/promotions/verify", "POST /console/flags/<key>/verify", FLAG_ADMIN, FPQ_READ),
    ("POST", "/console/flags/promotions/mark-promote", "POST /console/flags/<key>/mark-promote", FPQ_WRITE, FPQ_READ),
    // The fragment rule, not promotions/<id>/... nor <key>/...; HEAD is implied by GET.
    ("GET", "/console/flags/promotions/fragment", "GET /console/flags/promotions/fragment", FPQ_READ, FLAG_ADMIN),
    ("HEAD", "/console/flags/promotions/fragment", "GET /console/flags/promotions/fragment", FPQ_READ, FLAG_ADMIN),
    // Trailing slash: the slash rule, and the slash-less form is the same rule (Werkzeug redirects).
    ("GET", "/console/customers/", "GET /console/customers/", AUDIT, INVITE),
    ("GET", "/console/customers", "GET /console/customers/", AUDIT, INVITE),
    // Method takes part in choosing: static 'roles' is GET only, so DELETE is <grant_id>.
    ("DELETE", "/console/customers/42/rbac-grants/roles", "DELETE /console/customers/<id>/rbac-grants/<grant_id>", INVITE, AUDIT),
    // Same path, POST: rbac-grants/<grant_id> is DELETE only, so it is <session_id>/revoke.
    ("POST", "/console/customers/42/rbac-grants/revoke", "POST /console/customers/<id>/<session_id>/revoke", MANAGER, INVITE),
    // A static dead end ('invite' has no children) backtracks to <id>.
    ("POST", "/console/customers/invite/rbac-grants", "POST /console/customers/<id>/rbac-grants", INVITE, AUDIT),
    ("GET", "/console/customers/invite/audit", "GET /console/customers/<id>/audit", AUDIT, INVITE),
    // status/<surface_id>/... dead end backtracks to <site>/flag/<flag>/toggle.
    ("POST", "/dashboard/status/flag/flag-1/toggle", "POST /dashboard/<site>/flag/<flag>/toggle", FLAG_ADMIN, USER),
    // 'htmx' is a POST-only static leaf: GET .../rotate/htmx/progress is <job_id>=htmx.
    ("GET", "/secrets/db-password/rotate/htmx/progress", "GET /secrets/<name>/rotate/<job_id>/progress", SECRETS_ADMIN, SECRETS_USER),
    // 'xenv' is a segment under <id> (machine), so /deploys/xenv is <id> (session, console-user).
    ("GET", "/api/internal/deploys/xenv", "GET /api/internal/deploys/<id>", USER, FPQ_READ),
    // The static 'drift' rule of flags.py, not a <key> rule.
    ("GET", "/console/flags/drift", "GET /console/flags/drift", FLAG_ADMIN, FPQ_READ),
];

#[tokio::test]
async fn werkzeug_precedence_in_the_production_mapping() {
    let m = mapping();
    let env = prod_env().await;
    let mut tokens: BTreeMap<&str, (String, String)> = BTreeMap::new();
    for (_, _, _, grant, deny) in PRECEDENCE {
        for role in [grant, deny] {
            if !tokens.contains_key(role) {
                tokens.insert(role, env.db.admin_with_roles(&[role]).await);
            }
        }
    }
    for (method, path, rule, grant, deny) in PRECEDENCE {
        let what = format!("{method} {path} must be the rule {rule}");
        let (route, _) = m
            .find(method, path)
            .unwrap_or_else(|| panic!("{what}: no rule in routes.toml"));
        assert_eq!(
            format!("{} {}", route.methods.join(","), route.path),
            *rule,
            "{what} (Mapping::find)"
        );
        assert_eq!(
            route.roles,
            [std::sync::Arc::<str>::from(*grant)],
            "{what}: roles"
        );
        let (_, token) = &tokens[grant];
        if *method == "HEAD" {
            let r = call(&env, method, path, Some(token)).await;
            assert_eq!(r.status, 200, "{what}: allowed with {grant}");
        } else {
            expect_forwarded(
                &env,
                method,
                path,
                Some(token),
                &format!("{what} with {grant}"),
            )
            .await;
        }
        let (admin, token) = &tokens[deny];
        let route = expect_denied(
            &env,
            method,
            path,
            token,
            admin,
            &format!("{what} with {deny}"),
        )
        .await;
        assert_eq!(route, *rule, "{what}: audit row route with {deny}");
    }
    // A method no rule of the path lists is no route at all (Console would answer 405): the
    // machine-only POST status callback is not reachable with GET, even by a platform admin.
    // (The row names the admin only when the session is already cached: no query on no_route.)
    let (_, token) = group_member(&env.db, Some("raxx-platform-admins")).await;
    for (method, path) in [
        ("GET", "/api/internal/deploys/42/status"),
        ("GET", "/console/customers/42/delete"),
        ("DELETE", "/console/customers/42"),
        ("GET", "/secrets/"),
        ("GET", "/console/flags/promotions/42"),
    ] {
        let r = call(&env, method, path, Some(&token)).await;
        assert_eq!(r.status, 403, "{method} {path}: no rule");
        let rows = env.db.audit_rows(&r.request_id()).await;
        assert_eq!(rows.len(), 1, "{method} {path}: {rows:?}");
        assert_eq!(rows[0].reason, "no_route", "{method} {path}");
        assert_eq!(rows[0].route, None, "{method} {path}");
    }
}

// ---------------------------------------------------------------------------------------------
// 7. Machine, gone and public routes

const PUBLIC_RULES: &[&str] = &[
    "GET,POST /auth/login",
    "GET,POST /auth/logout",
    "GET,POST /auth/webauthn/<path:rest>",
    "GET /static/<path:filename>",
    "GET /health",
];

/// I-7: audit_ingest, internal_api, deploy status callback, xenv, deploy-freeze state,
/// freescout_webhook_rbac.
const MACHINE_RULES: &[&str] = &[
    "POST /api/internal/audit/ingest",
    "GET /api/internal/deploy-freeze/state",
    "POST /api/internal/deploys/<id>/status",
    "GET,POST /api/internal/deploys/<id>/xenv",
    "GET,POST /internal/api/<path:rest>",
    "POST /api/webhooks/freescout/rbac",
];

const GONE_RULES: &[&str] = &[
    "GET /console/rbac/shadow-comparison",
    "GET /api/rbac/shadow-comparison",
];

fn labels(m: &Mapping, access: Access) -> BTreeSet<String> {
    m.routes
        .iter()
        .filter(|r| r.access == access)
        .map(|r| r.label().to_string())
        .collect()
}

#[test]
fn nothing_else_is_public_machine_or_gone() {
    let m = mapping();
    let set = |l: &[&str]| l.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
    assert_eq!(
        labels(&m, Access::Public),
        set(PUBLIC_RULES),
        "public rules"
    );
    assert_eq!(
        labels(&m, Access::Machine),
        set(MACHINE_RULES),
        "machine rules"
    );
    assert_eq!(labels(&m, Access::Gone), set(GONE_RULES), "gone rules");
    // A public or machine rule never names roles (they would be ignored).
    for r in m.routes.iter().filter(|r| r.access != Access::Protected) {
        assert!(r.roles.is_empty(), "{} ({})", r.label(), r.access.as_str());
    }
}

#[tokio::test]
async fn public_and_machine_routes_are_forwarded_without_a_session() {
    let m = mapping();
    let env = prod_env().await;
    let mut n = 0;
    for route in m
        .routes
        .iter()
        .filter(|r| matches!(r.access, Access::Public | Access::Machine))
    {
        let path = concrete(&route.path);
        for method in &route.methods {
            let what = format!(
                "{} rule {} ({method} {path})",
                route.access.as_str(),
                route.label()
            );
            expect_forwarded(&env, method, &path, None, &what).await;
            n += 1;
        }
    }
    assert!(n >= PUBLIC_RULES.len() + MACHINE_RULES.len());
    // Literal paths of the brief, too.
    for path in [
        "/auth/login",
        "/static/css/app.css",
        "/static/app.js",
        "/health",
    ] {
        expect_forwarded(&env, "GET", path, None, &format!("public GET {path}")).await;
    }
    assert_eq!(env.db.audit_count().await, 0);
}

#[tokio::test]
async fn shadow_comparison_routes_are_gone() {
    let env = prod_env().await;
    let (_, token) = group_member(&env.db, Some("raxx-platform-admins")).await;
    for path in [
        "/console/rbac/shadow-comparison",
        "/api/rbac/shadow-comparison",
    ] {
        for token in [None, Some(token.as_str())] {
            let r = call(&env, "GET", path, token).await;
            assert_eq!(r.status, 404, "GET {path} (session: {})", token.is_some());
        }
    }
    assert_eq!(env.up.count(), 0, "a deleted route never reaches Console");
    assert_eq!(env.db.audit_count().await, 0);
}
