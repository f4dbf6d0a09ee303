//! Sessions, roles, inheritance, break-glass, the cache.

use std::time::Duration;

use crate::helpers::*;

#[tokio::test]
async fn inherited_roles_and_permissions_grant_access() {
    let env = Env::core().await;
    // console-secrets-admin inherits console-secrets-user (003 legend).
    let (_, token) = env.db.admin_with_roles(&["console-secrets-admin"]).await;
    assert_eq!(
        env.gw
            .get("/secrets/db-password/sop", Some(&token))
            .await
            .status,
        200
    );
    // /console/audit requires the permission console:audit:read, held via console-audit-user.
    let (_, auditor) = env.db.admin_with_roles(&["console-audit-user"]).await;
    assert_eq!(
        env.gw.get("/console/audit", Some(&auditor)).await.status,
        200
    );
    // console-ops inherits console-audit-user, which holds the permission.
    let (_, ops) = env.db.admin_with_roles(&["console-ops"]).await;
    assert_eq!(env.gw.get("/console/audit", Some(&ops)).await.status, 200);
    let (_, user) = env.db.admin_with_roles(&["console-user"]).await;
    assert_eq!(env.gw.get("/console/audit", Some(&user)).await.status, 403);
}

#[tokio::test]
async fn seeded_groups_grant_what_the_legend_says() {
    let env = Env::core().await;
    let admin = env.db.admin("pa@example.test").await;
    env.db.join_group(&admin, "raxx-platform-admins").await;
    let token = env.db.session(&admin).await;
    // console-manager -> console-invite-admin via inheritance.
    assert_eq!(
        env.gw
            .get("/console/customers/invite", Some(&token))
            .await
            .status,
        200
    );
    let support = env.db.admin("s@example.test").await;
    env.db.join_group(&support, "raxx-support-team").await;
    let st = env.db.session(&support).await;
    assert_eq!(env.gw.get("/ops", Some(&st)).await.status, 403);
    assert_eq!(
        env.gw.get("/console/customers/1", Some(&st)).await.status,
        200
    );
}

#[tokio::test]
async fn break_glass_grants_the_break_glass_group_while_active() {
    let env = Env::with(core_routes(), |o| o.arg("--cache-ttl").arg("60")).await;
    let admin = env.db.admin("bg@example.test").await;
    let token = env.db.session(&admin).await;
    env.db.break_glass(&admin, 2.0).await;
    let r = env.gw.get("/ops", Some(&token)).await;
    assert_eq!(
        r.status, 200,
        "an active break-glass row grants console-manager"
    );
    // Expiry is honoured to the second, although the cache TTL is 60 s. Time is the scenario:
    // the row's end passes with nothing else changing.
    tokio::time::sleep(Duration::from_millis(2300)).await;
    let r = env.gw.get("/ops", Some(&token)).await;
    assert_eq!(
        r.status, 403,
        "expired break-glass must not be served from the cache"
    );

    let other = env.db.admin("bg2@example.test").await;
    let t2 = env.db.session(&other).await;
    let id = env.db.break_glass(&other, 3600.0).await;
    sqlx::query("UPDATE rbac_break_glass_sessions SET revoked_at_utc = now() WHERE id = $1")
        .bind(&id)
        .execute(&env.db.pool)
        .await
        .unwrap();
    assert_eq!(
        env.gw.get("/ops", Some(&t2)).await.status,
        403,
        "a revoked row grants nothing"
    );
}

#[tokio::test]
async fn session_expiry_is_honoured_despite_the_ttl() {
    let env = Env::with(core_routes(), |o| o.arg("--cache-ttl").arg("60")).await;
    let (admin, _) = env.db.admin_with_roles(&["console-manager"]).await;
    let token = env.db.session_for(&admin, 2).await;
    assert_eq!(env.gw.get("/ops", Some(&token)).await.status, 200);
    // Time is the scenario: the session's 2 s pass with nothing else changing.
    tokio::time::sleep(Duration::from_millis(2300)).await;
    assert_eq!(env.gw.get("/ops", Some(&token)).await.status, 302);
}

#[tokio::test]
async fn a_cycle_in_role_inheritance_neither_hangs_nor_crashes() {
    let env = Env::core().await;
    // console-user -> console-manager -> console-user: a cycle (and a privilege grant).
    sqlx::query(
        "INSERT INTO rbac_role_inheritance (child_role_id, parent_role_id) SELECT c.id, p.id FROM rbac_roles c, rbac_roles p WHERE c.name = 'console-user' AND p.name = 'console-manager'",
    )
    .execute(&env.db.pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO rbac_role_inheritance (child_role_id, parent_role_id) SELECT c.id, p.id FROM rbac_roles c, rbac_roles p WHERE c.name = 'console-manager' AND p.name = 'console-user'",
    )
    .execute(&env.db.pool)
    .await
    .unwrap();
    let (_, token) = env.db.admin_with_roles(&["console-user"]).await;
    let r = tokio::time::timeout(Duration::from_secs(10), env.gw.get("/ops", Some(&token)))
        .await
        .expect("no hang");
    assert_eq!(
        r.status, 200,
        "the cycle is walked once: console-user -> console-manager"
    );
    assert_eq!(
        env.up.requests()[0]
            .header("x-rbac-roles")
            .unwrap()
            .split(',')
            .filter(|r| *r == "console-user")
            .count(),
        1
    );
}

#[tokio::test]
async fn a_cached_answer_makes_no_database_query() {
    let env = Env::with(core_routes(), |o| o.arg("--cache-ttl").arg("60")).await;
    let (_, token) = env.db.admin_with_roles(&["console-audit-user"]).await;
    settle(&[&env.gw]).await;
    let q0 = env.gw.metric("rbac_gateway_db_queries_total").await;
    assert_eq!(
        env.gw
            .get("/console/customers/1", Some(&token))
            .await
            .status,
        200
    );
    let q1 = env.gw.metric("rbac_gateway_db_queries_total").await;
    assert_eq!(
        q1 - q0,
        1.0,
        "first request: one query for the session and its roles (issue 51)"
    );
    for i in 0..10 {
        assert_eq!(
            env.gw
                .get(&format!("/console/customers/{i}"), Some(&token))
                .await
                .status,
            200
        );
    }
    let q2 = env.gw.metric("rbac_gateway_db_queries_total").await;
    assert_eq!(q2, q1, "cached: no query at all");
    assert!(
        env.gw
            .metric("rbac_gateway_cache_hits_total{cache=\"session\"}")
            .await
            >= 10.0
    );
}

#[tokio::test]
async fn concurrent_misses_share_one_query() {
    let env = Env::with(core_routes(), |o| o.arg("--cache-ttl").arg("60")).await;
    let (_, token) = env.db.admin_with_roles(&["console-audit-user"]).await;
    settle(&[&env.gw]).await;
    let q0 = env.gw.metric("rbac_gateway_db_queries_total").await;
    let mut tasks = Vec::new();
    for i in 0..30 {
        let (addr, token) = (env.gw.addr, token.clone());
        tasks.push(tokio::spawn(async move {
            let req = format!("GET /console/customers/{i} HTTP/1.1\r\nHost: c\r\nCookie: console_session={token}\r\nConnection: close\r\n\r\n");
            send(addr, req.as_bytes()).await.unwrap().status
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    let q1 = env.gw.metric("rbac_gateway_db_queries_total").await;
    assert_eq!(
        q1 - q0,
        1.0,
        "30 concurrent misses for one session: one query for the session and its roles"
    );
}

/// I-4: a break-glass session lasts 4 hours at most. A row whose expiry lies further out (Console
/// writes the rows; an operator may extend one by hand) grants nothing past 4 hours after it was
/// granted, the reader API does not list it, and the sweep records its end. A row dated ahead
/// counts from its date, not from now.
#[tokio::test]
async fn break_glass_ends_four_hours_after_it_was_granted_whatever_its_expiry() {
    let env = Env::with(core_routes(), |o| o.arg("--cache-ttl").arg("60")).await;
    let admin = env.db.admin("bg-long@example.test").await;
    let token = env.db.session(&admin).await;
    let id = env.db.break_glass(&admin, 3600.0).await;
    // Granted 4 h 1 min ago, still 1 h to run by its own expiry.
    sqlx::query(
        "UPDATE rbac_break_glass_sessions SET granted_at_utc = now() - interval '4 hours 1 minute' WHERE id = $1",
    )
    .bind(&id)
    .execute(&env.db.pool)
    .await
    .unwrap();
    assert_eq!(
        env.gw.get("/ops", Some(&token)).await.status,
        403,
        "break-glass honoured past 4 hours"
    );
    let me = env.gw.get("/api/rbac/me", Some(&token)).await;
    assert_eq!(me.status, 200, "{}", me.body_str());
    assert!(
        me.body_str().contains("\"break_glass\":null"),
        "{}",
        me.body_str()
    );
    // Within its 4 hours, the same row grants break-glass.
    let other = env.db.admin("bg-3h@example.test").await;
    let t2 = env.db.session(&other).await;
    let id2 = env.db.break_glass(&other, 3600.0).await;
    sqlx::query(
        "UPDATE rbac_break_glass_sessions SET granted_at_utc = now() - interval '3 hours 30 minutes' WHERE id = $1",
    )
    .bind(&id2)
    .execute(&env.db.pool)
    .await
    .unwrap();
    assert_eq!(env.gw.get("/ops", Some(&t2)).await.status, 200);
    // A row granted 20 hours from now and expiring in 24 has not started: it grants nothing
    // now (counted from now, it would run 24 hours, past the cap), and its end is not recorded.
    let early = env.db.admin("bg-future@example.test").await;
    let t3 = env.db.session(&early).await;
    let id3 = env.db.break_glass(&early, 24.0 * 3600.0).await;
    sqlx::query(
        "UPDATE rbac_break_glass_sessions SET granted_at_utc = now() + interval '20 hours' WHERE id = $1",
    )
    .bind(&id3)
    .execute(&env.db.pool)
    .await
    .unwrap();
    assert_eq!(
        env.gw.get("/ops", Some(&t3)).await.status,
        403,
        "a break-glass row dated 20 hours ahead honoured now"
    );
    let me = env.gw.get("/api/rbac/me", Some(&t3)).await;
    assert!(
        me.body_str().contains("\"break_glass\":null"),
        "{}",
        me.body_str()
    );

    sweep_once(&env.db.url, &[]).await;
    let ended: Vec<String> = sqlx::query_scalar(
        "SELECT id FROM rbac_grants_audit WHERE event_type = 'break_glass_expire' ORDER BY id",
    )
    .fetch_all(&env.db.pool)
    .await
    .unwrap();
    assert_eq!(
        ended,
        vec![rbac_gateway::stores::revocation::audit_row_id(
            "break_glass_expire",
            &id
        )]
    );
}
