//! Console's reader API (RV-3) answered by the gateway: `/api/rbac/me` and
//! `/api/rbac/permissions/check`, never forwarded; compared with what 004 §3.4 resolves.

use std::sync::{Arc, Mutex};

use serde_json::{json, Value};

use crate::helpers::*;
use crate::tickets::{freescout, grant};

fn body(r: &Resp) -> Value {
    serde_json::from_slice(&r.body).unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", r.body_str()))
}

fn check_path(permission: &str, customer: Option<i32>) -> String {
    match customer {
        Some(c) => format!("/api/rbac/permissions/check?permission={permission}&customer_id={c}"),
        None => format!("/api/rbac/permissions/check?permission={permission}"),
    }
}

#[tokio::test]
async fn me_lists_expanded_roles_permissions_break_glass_and_ticket_grants() {
    let env = Env::core().await;
    // raxx-support-team: raptor-audit-support, which inherits antlers-audit-self (004 §3.3).
    let admin = env.db.admin("reader@example.test").await;
    env.db.join_group(&admin, "raxx-support-team").await;
    let token = env.db.session(&admin).await;
    let r = env.gw.get("/api/rbac/me", Some(&token)).await;
    assert_eq!(r.status, 200, "{}", r.body_str());
    assert_eq!(r.header("cache-control"), Some("no-store"));
    assert!(r
        .header("content-type")
        .unwrap()
        .starts_with("application/json"));
    let v = body(&r);
    assert_eq!(v["admin_id"], json!(admin));
    let roles: Vec<String> = serde_json::from_value(v["roles"].clone()).unwrap();
    let perms: Vec<String> = serde_json::from_value(v["permissions"].clone()).unwrap();
    // What the resolution algorithm (004 §3.4) gives for this admin, read fresh.
    let want =
        rbac_gateway::stores::identity::resolve(&env.db.gw(), &admin, std::time::Duration::ZERO)
            .await
            .unwrap();
    assert_eq!(roles, want.roles());
    assert_eq!(perms, want.permissions());
    assert!(roles.contains(&"raptor-audit-support".to_string()));
    assert!(
        roles.contains(&"antlers-audit-self".to_string()),
        "inherited"
    );
    assert!(perms.contains(&"raptor:audit:read-self".to_string()));
    let mut sorted = roles.clone();
    sorted.sort();
    assert_eq!(roles, sorted, "roles sorted");
    assert_eq!(v["break_glass"], Value::Null);
    assert_eq!(v["ticket_grants"], json!([]));

    // Break-glass: the group's roles join, with the expiry of the row.
    env.db.break_glass(&admin, 3600.0).await;
    let expires: chrono::DateTime<chrono::Utc> = sqlx::query_scalar(
        "SELECT max(expires_at_utc) FROM rbac_break_glass_sessions WHERE user_id = $1",
    )
    .bind(&admin)
    .fetch_one(&env.db.pool)
    .await
    .unwrap();
    // A second admin session sees it at once (no cached principal for it yet).
    let admin2 = env.db.admin("reader2@example.test").await;
    env.db.break_glass(&admin2, 3600.0).await;
    let token2 = env.db.session(&admin2).await;
    let v2 = body(&env.gw.get("/api/rbac/me", Some(&token2)).await);
    let bg = v2["break_glass"]["expires_at_utc"]
        .as_str()
        .expect("break_glass object");
    let parsed = chrono::DateTime::parse_from_rfc3339(bg).unwrap();
    let expires2: chrono::DateTime<chrono::Utc> = sqlx::query_scalar(
        "SELECT max(expires_at_utc) FROM rbac_break_glass_sessions WHERE user_id = $1",
    )
    .bind(&admin2)
    .fetch_one(&env.db.pool)
    .await
    .unwrap();
    assert_eq!(parsed, expires2, "the row's expiry, exactly");
    assert_ne!(expires, expires2);
    let roles2: Vec<String> = serde_json::from_value(v2["roles"].clone()).unwrap();
    let bg_roles: Vec<String> = sqlx::query_scalar(
        "SELECT r.name FROM rbac_groups g JOIN rbac_group_roles gr ON gr.group_id = g.id JOIN rbac_roles r ON r.id = gr.role_id WHERE g.name = 'break-glass'",
    )
    .fetch_all(&env.db.pool)
    .await
    .unwrap();
    assert!(!bg_roles.is_empty());
    for r in &bg_roles {
        assert!(roles2.contains(r), "break-glass role {r} in {roles2:?}");
    }

    // Ticket grants: listed while live, gone once revoked.
    let g = grant(&env.db, &admin, "raptor-audit-admin", 7, "T-7").await;
    let v = body(&env.gw.get("/api/rbac/me", Some(&token)).await);
    assert_eq!(
        v["ticket_grants"],
        json!([{"ticket_id": "T-7", "customer_id": 7, "role": "raptor-audit-admin", "expires_at_utc": null}])
    );
    sqlx::query("UPDATE rbac_ticket_grants SET revoked_at_utc = now() WHERE id = $1")
        .bind(&g)
        .execute(&env.db.pool)
        .await
        .unwrap();
    let v = body(&env.gw.get("/api/rbac/me", Some(&token)).await);
    assert_eq!(v["ticket_grants"], json!([]));
    assert_eq!(env.up.count(), 0, "the reader API never reaches Console");
}

#[tokio::test]
async fn check_answers_from_roles_inheritance_and_live_ticket_grants() {
    let statuses = Arc::new(Mutex::new(vec![("T-9".to_string(), "active".to_string())]));
    let fs = freescout(statuses.clone()).await;
    let url = format!("http://{fs}/conversations/{{ticket_id}}");
    let env = Env::with(core_routes(), |o| {
        o.arg("--ticket-validation-url").arg(&url)
    })
    .await;
    let admin = env.db.admin("checker@example.test").await;
    env.db.join_group(&admin, "raxx-support-team").await;
    let token = env.db.session(&admin).await;

    #[rustfmt::skip]
    let cases: Vec<(&str, &str, Option<i32>, bool, Value)> = vec![
        ("held through the group's role", "raptor:audit:read-support", None, true, json!("role raptor-audit-support")),
        ("held through inheritance", "raptor:audit:read-self", None, true, json!("role antlers-audit-self")),
        ("not held", "raptor:audit:read-admin", None, false, Value::Null),
        ("not held, no ticket for the customer", "raptor:audit:read-admin", Some(9), false, Value::Null),
        ("unknown permission", "no:such:permission", None, false, Value::Null),
    ];
    for (what, p, c, allowed, via) in &cases {
        let r = env.gw.get(&check_path(p, *c), Some(&token)).await;
        assert_eq!(r.status, 200, "{what}: {}", r.body_str());
        assert_eq!(r.header("cache-control"), Some("no-store"), "{what}");
        assert_eq!(
            body(&r),
            json!({"permission": p, "allowed": allowed, "via": via}),
            "{what}"
        );
    }

    // A ticket grant for customer 3 counts for customer 3 only, re-validated every time.
    grant(&env.db, &admin, "raptor-audit-admin", 3, "T-9").await;
    let with = check_path("raptor:audit:read-admin", Some(3));
    let v = body(&env.gw.get(&with, Some(&token)).await);
    assert_eq!(
        v,
        json!({"permission": "raptor:audit:read-admin", "allowed": true, "via": "ticket T-9"})
    );
    let v = body(
        &env.gw
            .get(
                &check_path("raptor:audit:read-admin", Some(4)),
                Some(&token),
            )
            .await,
    );
    assert_eq!(v["allowed"], json!(false), "another customer");
    let v = body(
        &env.gw
            .get(&check_path("raptor:audit:read-admin", None), Some(&token))
            .await,
    );
    assert_eq!(
        v["allowed"],
        json!(false),
        "no customer named: ticket grants do not count"
    );
    statuses.lock().unwrap()[0].1 = "closed".into();
    let v = body(&env.gw.get(&with, Some(&token)).await);
    assert_eq!(v["allowed"], json!(false), "the ticket closed in FreeScout");
    assert_eq!(env.up.count(), 0, "the reader API never reaches Console");

    // FreeScout unreachable: 503 JSON, fail closed.
    let (_closed, closed_port) = closed_port();
    let env2 = Env::with(core_routes(), |o| {
        o.arg("--ticket-validation-url")
            .arg(&format!("http://127.0.0.1:{closed_port}/c/{{ticket_id}}"))
    })
    .await;
    let admin = env2.db.admin("checker@example.test").await;
    let token = env2.db.session(&admin).await;
    grant(&env2.db, &admin, "raptor-audit-admin", 3, "T-9").await;
    let r = env2.gw.get(&with, Some(&token)).await;
    assert_eq!(r.status, 503, "{}", r.body_str());
    assert_eq!(body(&r)["error"], json!("unavailable"));
}

#[tokio::test]
async fn sessions_parameters_and_methods_are_checked() {
    let env = Env::core().await;
    let (_admin, token) = env.db.admin_with_roles(&["console-user"]).await;
    // No valid session: 401 JSON, never a redirect.
    for (what, tok) in [("no cookie", None), ("unknown token", Some("nope"))] {
        for path in ["/api/rbac/me", "/api/rbac/permissions/check?permission=x"] {
            let r = env.gw.get(path, tok).await;
            assert_eq!(r.status, 401, "{what} {path}");
            assert_eq!(r.header("location"), None, "{what} {path}");
            assert_eq!(body(&r)["error"], json!("unauthenticated"), "{what} {path}");
        }
    }
    #[rustfmt::skip]
    let bad: Vec<(&str, &str)> = vec![
        ("/api/rbac/permissions/check", "permission"),
        ("/api/rbac/permissions/check?permission=", "permission"),
        ("/api/rbac/permissions/check?customer_id=3", "permission"),
        ("/api/rbac/permissions/check?permission=a&permission=b", "permission"),
        ("/api/rbac/permissions/check?permission=a&customer_id=x", "customer_id"),
        ("/api/rbac/permissions/check?permission=a&customer_id=-1", "customer_id"),
        ("/api/rbac/permissions/check?permission=a&customer_id=99999999999", "customer_id"),
        ("/api/rbac/permissions/check?permission=a&customer_id=", "customer_id"),
    ];
    for (path, param) in bad {
        let r = env.gw.get(path, Some(&token)).await;
        assert_eq!(r.status, 400, "{path}");
        assert_eq!(body(&r)["parameter"], json!(param), "{path}");
    }
    let r = env
        .gw
        .get(
            "/api/rbac/permissions/check?permission=console%3Aaudit%3Aread",
            Some(&token),
        )
        .await;
    assert_eq!(
        body(&r)["permission"],
        json!("console:audit:read"),
        "percent-decoded"
    );
    let r = env
        .gw
        .request("POST", "/api/rbac/me", Some(&token), &[], b"")
        .await;
    assert_eq!(r.status, 405);
    assert_eq!(body(&r)["error"], json!("method_not_allowed"));
    assert_eq!(env.up.count(), 0, "the reader API never reaches Console");
    assert!(
        env.gw
            .metric("rbac_gateway_requests_total{decision=\"api\"}")
            .await
            >= 12.0
    );
}

#[tokio::test]
async fn rbac_api_false_forwards_the_paths_as_mapped() {
    let env = Env::with(core_routes(), |o| o.arg("--rbac-api=false")).await;
    let (_admin, token) = env.db.admin_with_roles(&["console-user"]).await;
    // Not in the core mapping: the gateway decides it as any other path (no_route, 403).
    assert_eq!(env.gw.status("/api/rbac/me", Some(&token)).await, 403);
    let env = Env::with(core_routes(), |o| o.env("GATEWAY_RBAC_API", "0")).await;
    assert_eq!(env.gw.status("/api/rbac/me", None).await, 403);
}

#[tokio::test]
async fn check_warns_that_mapped_reader_paths_never_reach_console() {
    let dir = tempfile::tempdir().unwrap();
    let routes = dir.path().join("routes.toml");
    let mut text = std::fs::read_to_string(core_routes()).unwrap();
    text.push('\n');
    text.push_str(
        &Route::get("/api/rbac/me")
            .roles(&["console-user"])
            .to_toml(),
    );
    std::fs::write(&routes, text).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_rbac-gateway"))
        .args(["check", "--routes"])
        .arg(&routes)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "a warning, not an error: {stdout}"
    );
    assert!(
        stdout.contains("warning: GET /api/rbac/me is answered by the gateway itself"),
        "{stdout}"
    );
    assert!(
        !stdout.contains("/api/rbac/permissions/check is answered"),
        "{stdout}"
    );
}
