//! `explain` and the proxy call the same outcome function: for every rule of a mapping, several
//! admins, and the modes enforce, shadow and off (kill switch), the answer `explain` announces is
//! the answer the running gateway gives.

use std::process::Command;

use rbac_gateway::policy::mapping::Mapping;

use crate::helpers::*;

/// A concrete path for a rule: every variable gets a value its converter accepts.
fn concrete(rule: &str) -> String {
    let mut out = String::new();
    let mut rest = rule;
    while let Some(open) = rest.find('<') {
        out.push_str(&rest[..open]);
        let close = rest[open..].find('>').expect("balanced rule") + open;
        let var = &rest[open + 1..close];
        out.push_str(match var.split_once(':').map(|(c, _)| c) {
            Some("int") => "7",
            Some("uuid") => "3f2504e0-4f89-41d3-9a0c-0305e82c3301",
            Some("path") => "a/b",
            _ => "x1",
        });
        rest = &rest[close + 1..];
    }
    out.push_str(rest);
    out
}

/// The `answer:` line of `explain`.
fn explained(
    db: &TestDb,
    routes: &std::path::Path,
    admin: &str,
    method: &str,
    path: &str,
    env: &[(&str, &str)],
) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_rbac-gateway"))
        .args(["explain", "--routes"])
        .arg(routes)
        .args(["--database-url", &db.url, "--admin", admin, method, path])
        .env("FLAG_RBAC_V2", "1")
        // As the suite's gateways decide (helpers::gateway::GatewayOpts::new).
        .envs(crate::helpers::SUITE_OPT_OUTS)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("answer: "))
        .unwrap_or_else(|| panic!("no answer line:\n{stdout}"))
        .to_string()
}

/// One policy state: the mode every rule gets, and the environment of both commands.
type State<'a> = (&'a str, &'a [(&'a str, &'a str)]);

/// For every rule of `routes_file` (each of its methods, a concrete path), every admin (id,
/// cookie) and every state: the `answer:` of explain against what a running gateway does.
/// Returns the number of comparisons.
async fn compare(
    db: &TestDb,
    routes_file: &std::path::Path,
    admins: &[(&str, &str)],
    states: &[State<'_>],
    other_methods: bool,
) -> usize {
    let base = std::fs::read_to_string(routes_file).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut compared = 0;
    for (i, (mode, env)) in states.iter().copied().enumerate() {
        let text = base.replace("mode = \"enforce\"", &format!("mode = \"{mode}\""));
        let routes = dir.path().join(format!("{i}-{mode}.toml"));
        std::fs::write(&routes, &text).unwrap();
        let mapping = Mapping::load(&routes).unwrap();
        let up = Upstream::start().await;
        let mut opts = GatewayOpts::new(&routes, db, up.addr);
        for (k, v) in env {
            opts = opts.env(k, v);
        }
        let gw = Gateway::start(opts).await;
        // The test upstream holds /slow for 5 s (a 504 here): it shows nothing about the decision.
        for route in mapping.routes.iter().filter(|r| r.path != "/slow") {
            let mut methods = route.methods.clone();
            if other_methods {
                // HEAD (implied by GET) and a method the rule does not list (another rule's,
                // or none: no_route).
                methods.push("HEAD".to_string());
                methods.push(
                    if route.methods.iter().any(|m| m == "PATCH") {
                        "PUT"
                    } else {
                        "PATCH"
                    }
                    .to_string(),
                );
            }
            for method in &methods {
                let path = concrete(&route.path);
                for &(admin, token) in admins {
                    let want = explained(db, &routes, admin, method, &path, env);
                    let before = up.count();
                    let got = gw
                        .request(method, &path, Some(token), &[], b"")
                        .await
                        .status;
                    let proxy = if up.count() > before {
                        "forwarded (Console answers)".to_string()
                    } else {
                        got.to_string()
                    };
                    assert_eq!(
                        proxy, want,
                        "{method} {path} admin {admin} mode {mode} {env:?}"
                    );
                    compared += 1;
                }
            }
        }
        drop(gw);
    }
    compared
}

#[tokio::test]
async fn explain_agrees_with_the_proxy_in_every_mode() {
    let db = TestDb::new().await;
    let platform = db.admin("platform@example.test").await;
    db.join_group(&platform, "raxx-platform-admins").await;
    let (auditor, auditor_token) = db.admin_with_roles(&["console-audit-user"]).await;
    let (nobody, nobody_token) = db.admin_with_roles(&[]).await;
    let platform_token = db.session(&platform).await;
    // serve decides on the session, explain is given the admin: every session of these two
    // ended, so both must answer as for a request without one.
    let expired = db.admin("expired@example.test").await;
    db.join_group(&expired, "raxx-platform-admins").await;
    let expired_token = db.session_for(&expired, -60).await;
    let revoked = db.admin("revoked@example.test").await;
    db.join_group(&revoked, "raxx-platform-admins").await;
    let revoked_token = db.session(&revoked).await;
    db.revoke_session(&revoked_token).await;
    // Break-glass only (its alert never delivered: no webhook), which
    // --break-glass-requires-alert does not honour.
    let (glass, glass_token) = db.admin_with_roles(&[]).await;
    db.break_glass(&glass, 3600.0).await;
    // A role name that cannot be sent in X-Rbac-Roles: the proxy answers 503 instead of
    // forwarding.
    sqlx::query(
        "INSERT INTO rbac_roles (id, name) VALUES (gen_random_uuid()::text, E'bad\\x01role')",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let (unsendable, unsendable_token) = db
        .admin_with_roles(&["console-audit-user", "bad\u{1}role"])
        .await;
    let admins = [
        (platform.as_str(), platform_token.as_str()),
        (auditor.as_str(), auditor_token.as_str()),
        (nobody.as_str(), nobody_token.as_str()),
        (expired.as_str(), expired_token.as_str()),
        (revoked.as_str(), revoked_token.as_str()),
        (glass.as_str(), glass_token.as_str()),
        (unsendable.as_str(), unsendable_token.as_str()),
    ];
    let states: [State; 4] = [
        ("enforce", &[]),
        ("shadow", &[]),
        ("enforce", &[("FLAG_RBAC_V2", "0")]),
        ("enforce", &[("GATEWAY_BREAK_GLASS_REQUIRES_ALERT", "true")]),
    ];
    let compared = compare(&db, &core_routes(), &admins, &states, true).await;
    assert!(compared > 100, "{compared} comparisons");
}

#[tokio::test]
async fn explain_agrees_with_the_proxy_on_the_production_mapping() {
    // Every rule of routes.toml (129 rules, 156 method and path pairs), enforce and shadow,
    // for a platform admin, an admin with one narrow role, and one whose session expired.
    let db = TestDb::new().await;
    let platform = db.admin("platform@example.test").await;
    db.join_group(&platform, "raxx-platform-admins").await;
    let platform_token = db.session(&platform).await;
    let (auditor, auditor_token) = db.admin_with_roles(&["console-audit-user"]).await;
    let expired = db.admin("expired@example.test").await;
    db.join_group(&expired, "raxx-platform-admins").await;
    let expired_token = db.session_for(&expired, -60).await;
    let admins = [
        (platform.as_str(), platform_token.as_str()),
        (auditor.as_str(), auditor_token.as_str()),
        (expired.as_str(), expired_token.as_str()),
    ];
    let production = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("routes.toml");
    let states: [State; 2] = [("enforce", &[]), ("shadow", &[])];
    let compared = compare(&db, &production, &admins, &states, false).await;
    assert!(compared >= 900, "{compared} comparisons");
}
