//! The interface table, row by row, through the running gateway.

use crate::helpers::*;

#[tokio::test]
async fn allowed_request_reaches_console_byte_for_byte_with_identity_headers() {
    let env = Env::core().await;
    let (admin, token) = env.db.admin_with_roles(&["console-audit-user"]).await;
    let r = env
        .gw
        .request(
            "GET",
            "/console/customers/42?tab=%2Fsessions&x=a+b",
            Some(&token),
            &[
                ("X-Rbac-Admin-Id", "spoofed"),
                ("x-rbac-roles", "console-manager"),
                ("X-RBAC-EXTRA", "1"),
                ("X-Forwarded-For", "10.9.8.7"),
                ("X-Forwarded-For", "10.0.0.2"),
            ],
            b"",
        )
        .await;
    assert_eq!(r.status, 200, "{}", env.gw.log());
    let seen = env.up.requests();
    assert_eq!(seen.len(), 1);
    let s = &seen[0];
    assert_eq!(s.method, "GET");
    assert_eq!(s.target, "/console/customers/42?tab=%2Fsessions&x=a+b");
    assert_eq!(s.headers_named("x-rbac-admin-id"), vec![admin.as_str()]);
    assert_eq!(s.headers_named("x-rbac-roles"), vec!["console-audit-user"]);
    assert!(
        s.header("x-rbac-extra").is_none(),
        "client X-Rbac-* never reaches Console"
    );
    assert_eq!(s.header("x-request-id"), Some(r.request_id().as_str()));
    // Repeated lines joined in order (gunicorn joins them), the client's address last.
    assert_eq!(
        s.headers_named("x-forwarded-for"),
        vec!["10.9.8.7, 10.0.0.2, 127.0.0.1"]
    );
    assert!(
        s.header("cookie").unwrap().contains("console_session="),
        "Console still gets its cookie"
    );
    assert_eq!(env.db.audit_count().await, 0);
}

#[tokio::test]
async fn roles_header_is_sorted_and_expanded() {
    let env = Env::core().await;
    // console-manager inherits console-flag-admin, console-invite-admin, console-env-admin.
    let (_, token) = env
        .db
        .admin_with_roles(&["console-manager", "console-audit-user"])
        .await;
    assert_eq!(env.gw.get("/ops", Some(&token)).await.status, 200);
    let seen = env.up.requests();
    assert_eq!(
        seen[0].header("x-rbac-roles"),
        Some("console-audit-user,console-env-admin,console-flag-admin,console-invite-admin,console-manager")
    );
}

#[tokio::test]
async fn streamed_bodies_arrive_intact() {
    let env = Env::core().await;
    let (_, token) = env.db.admin_with_roles(&["console-user"]).await;
    let payload: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    // Chunked request body, sent in pieces.
    let mut req = format!(
        "POST /upload HTTP/1.1\r\nHost: c\r\nConnection: close\r\nCookie: console_session={token}\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    .into_bytes();
    for piece in payload.chunks(7000) {
        req.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        req.extend_from_slice(piece);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    let r = send(env.gw.addr, &req).await.unwrap();
    assert_eq!(r.status, 200, "{}", env.gw.log());
    let seen = env.up.requests();
    assert_eq!(seen[0].body, payload);
    // And a Content-Length body.
    let r = env
        .gw
        .request("PUT", "/upload", Some(&token), &[], &payload[..12345])
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(env.up.requests()[1].body, payload[..12345].to_vec());
}

#[tokio::test]
async fn no_session_redirects_to_login_with_next() {
    let env = Env::core().await;
    let admin = env.db.admin("gone@example.test").await;
    let expired = env.db.session_for(&admin, -10).await;
    let revoked = env.db.session(&admin).await;
    env.db.revoke_session(&revoked).await;
    let cases: [(&str, Option<&str>); 4] = [
        ("no cookie", None),
        ("unknown token", Some("not-a-session")),
        ("expired", Some(&expired)),
        ("revoked", Some(&revoked)),
    ];
    for (what, token) in cases {
        let r = env
            .gw
            .get("/console/customers/7?tab=audit&q=a%20b", token)
            .await;
        assert_eq!(r.status, 302, "{what}");
        assert_eq!(
            r.header("location"),
            Some("/auth/login?next=%2Fconsole%2Fcustomers%2F7%3Ftab%3Daudit%26q%3Da%2520b"),
            "{what}"
        );
    }
    assert_eq!(env.up.count(), 0);
    assert_eq!(
        env.db.audit_count().await,
        0,
        "a redirect writes no audit row"
    );
}

#[tokio::test]
async fn missing_role_is_403_with_exactly_one_audit_row() {
    let env = Env::core().await;
    let (admin, token) = env.db.admin_with_roles(&["console-user"]).await;
    let r = env
        .gw
        .request(
            "POST",
            "/console/customers/9?x=1",
            Some(&token),
            &[("User-Agent", "curl/8")],
            b"",
        )
        .await;
    assert_eq!(r.status, 403);
    assert_eq!(env.up.count(), 0);
    let rows = env.db.audit_rows(&r.request_id()).await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    let row = &rows[0];
    assert_eq!(row.event_type, "access_denied");
    assert_eq!(row.admin_id.as_deref(), Some(admin.as_str()));
    assert_eq!(row.method, "POST");
    assert_eq!(row.path, "/console/customers/9");
    assert_eq!(
        row.route.as_deref(),
        Some("GET,POST /console/customers/<id>")
    );
    assert_eq!(row.required.as_deref(), Some("role:console-audit-user"));
    assert_eq!(row.reason, "missing_role");
    assert_eq!(row.client_ip.as_deref(), Some("127.0.0.1"));
    assert!(row
        .user_agent
        .as_deref()
        .unwrap()
        .contains("rbac-gateway-tests"));
    assert_eq!(env.db.audit_count().await, 1);
}

#[tokio::test]
async fn no_route_is_403_with_a_no_route_row() {
    let env = Env::core().await;
    let (_, token) = env.db.admin_with_roles(&["console-manager"]).await;
    for (method, path) in [
        ("GET", "/nowhere"),
        ("DELETE", "/console/customers/5"),
        ("GET", "/OPS"),
        ("GET", "/ops/"),
    ] {
        let r = env.gw.request(method, path, Some(&token), &[], b"").await;
        assert_eq!(r.status, 403, "{method} {path}");
        let rows = env.db.audit_rows(&r.request_id()).await;
        assert_eq!(rows.len(), 1, "{method} {path}");
        assert_eq!(rows[0].reason, "no_route");
        assert_eq!(rows[0].route, None);
    }
    // Also without any session.
    let r = env.gw.get("/nowhere", None).await;
    assert_eq!(r.status, 403);
    assert_eq!(env.db.audit_rows(&r.request_id()).await.len(), 1);
    assert_eq!(env.up.count(), 0);
}

#[tokio::test]
async fn public_machine_and_gone_routes() {
    let env = Env::core().await;
    let r = env
        .gw
        .request(
            "POST",
            "/auth/login",
            None,
            &[("X-Rbac-Admin-Id", "x")],
            b"user=a",
        )
        .await;
    assert_eq!(r.status, 200);
    let r = env
        .gw
        .request(
            "POST",
            "/api/internal/deploys/5/status",
            None,
            &[("Authorization", "Bearer m2m")],
            b"{}",
        )
        .await;
    assert_eq!(r.status, 200);
    let seen = env.up.requests();
    assert_eq!(seen.len(), 2);
    assert!(
        seen[0].header("x-rbac-admin-id").is_none(),
        "spoofed identity stripped on public routes too"
    );
    assert_eq!(seen[1].header("authorization"), Some("Bearer m2m"));
    let r = env.gw.get("/console/rbac/shadow-comparison", None).await;
    assert_eq!(r.status, 404);
    assert_eq!(env.up.count(), 2);
    assert_eq!(env.db.audit_count().await, 0);
}

#[tokio::test]
async fn werkzeug_precedence_static_before_variable() {
    let env = Env::core().await;
    let (_, audit_token) = env.db.admin_with_roles(&["console-audit-user"]).await;
    // /console/customers/invite is the invite rule (console-invite-admin), not <id>.
    let r = env
        .gw
        .get("/console/customers/invite", Some(&audit_token))
        .await;
    assert_eq!(r.status, 403);
    let rows = env.db.audit_rows(&r.request_id()).await;
    assert_eq!(
        rows[0].route.as_deref(),
        Some("GET /console/customers/invite")
    );
    // HEAD is implied by GET.
    let r = env
        .gw
        .request("HEAD", "/console/customers/5", Some(&audit_token), &[], b"")
        .await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn shadow_mode_forwards_and_records() {
    let env = Env::core().await;
    let (_, token) = env.db.admin_with_roles(&["console-user"]).await;
    let r = env.gw.get("/shadowed", Some(&token)).await;
    assert_eq!(r.status, 200);
    let seen = env.up.requests();
    assert_eq!(seen[0].header("x-rbac-shadow-decision"), Some("deny"));
    // The would-be denial, and (written after Console answered 200) the drift event.
    let mut kinds = Vec::new();
    for _ in 0..50 {
        let rows = env.db.audit_rows(&r.request_id()).await;
        kinds = rows
            .iter()
            .map(|r| (r.event_type.clone(), r.reason.clone()))
            .collect::<Vec<_>>();
        kinds.sort();
        if kinds.len() >= 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(
        kinds,
        vec![
            (
                "access_denied_shadow".to_string(),
                "missing_role".to_string()
            ),
            (
                "rbac_drift".to_string(),
                "gateway_denied_console_allowed".to_string()
            ),
        ]
    );
}

#[tokio::test]
async fn kill_switch_forwards_everything() {
    let env = Env::with(core_routes(), |o| o.env("FLAG_RBAC_V2", "0")).await;
    assert_eq!(env.gw.get("/ops", None).await.status, 200);
    assert_eq!(env.gw.get("/nowhere", None).await.status, 200);
    // A removed (`gone`) route too (interface.md: "forward everything; Console's own checks
    // decide"): Console answers it, here the test upstream's 200.
    assert_eq!(
        env.gw
            .get("/console/rbac/shadow-comparison", None)
            .await
            .status,
        200
    );
    let paths: Vec<String> = env.up.requests().iter().map(|r| r.target.clone()).collect();
    assert_eq!(
        paths,
        ["/ops", "/nowhere", "/console/rbac/shadow-comparison"],
        "{paths:?}"
    );
    assert_eq!(env.db.audit_count().await, 0);
}

#[tokio::test]
async fn an_empty_kill_switch_is_unset_and_the_mapping_applies() {
    // `FLAG_RBAC_V2=` (a compose file or a unit that clears it) is how operators unset a
    // variable: the gateway starts and the mapping's modes apply (interface.md: "Unset or 1").
    let env = Env::with(core_routes(), |o| {
        o.env("FLAG_RBAC_V2", "")
            .env("FLAG_TICKET_SCOPED_GRANTS", "")
    })
    .await;
    assert_eq!(env.gw.get("/ops", None).await.status, 302);
    assert_eq!(env.gw.get("/nowhere", None).await.status, 403);
    assert!(env.up.requests().is_empty());
    assert_eq!(env.db.audit_count().await, 1);
}

#[tokio::test]
async fn upstream_refused_is_502_and_timeout_is_504() {
    let db = TestDb::new().await;
    let (_held, port) = closed_port();
    let closed: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let gw = Gateway::start(GatewayOpts::new(core_routes(), &db, closed)).await;
    let (_, token) = db.admin_with_roles(&["console-user"]).await;
    let r = gw.request("POST", "/upload", Some(&token), &[], b"x").await;
    assert_eq!(r.status, 502, "{}", gw.log());

    let env = Env::core().await;
    let (_, token) = env.db.admin_with_roles(&["console-user"]).await;
    let started = std::time::Instant::now();
    let r = env.gw.get("/slow", Some(&token)).await;
    assert_eq!(r.status, 504, "{}", env.gw.log());
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
}

#[tokio::test]
async fn upstream_connections_are_reused() {
    let env = Env::core().await;
    let (_, token) = env
        .db
        .admin_with_roles(&["console-user", "console-audit-user"])
        .await;
    for i in 0..5 {
        assert_eq!(
            env.gw
                .get(&format!("/console/customers/{i}"), Some(&token))
                .await
                .status,
            200
        );
    }
    assert_eq!(env.up.count(), 5);
    let conns = env.up.connections.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        conns < 5,
        "5 sequential requests opened {conns} upstream connections: no keep-alive pooling"
    );
}

#[tokio::test]
async fn sigterm_shuts_down_within_a_few_seconds() {
    let mut env = Env::core().await;
    // A denial first: the audit writer then holds a database connection when the process ends.
    let (_, token) = env.db.admin_with_roles(&["console-user"]).await;
    assert_eq!(env.gw.get("/ops", Some(&token)).await.status, 403);
    env.gw.signal("TERM");
    let status = env
        .gw
        .exited(
            std::time::Duration::from_secs(8),
            "still running after SIGTERM",
        )
        .await;
    let log = env.gw.log();
    assert!(status.success(), "{status:?}\n{log}");
    assert!(!log.contains("panicked"), "{log}");
}

#[tokio::test]
async fn logs_are_json_one_line_per_decision_and_never_carry_the_token() {
    let env = Env::with(core_routes(), |o| o.env("RUST_LOG", "debug")).await;
    let (admin, token) = env.db.admin_with_roles(&["console-audit-user"]).await;
    let allowed = env.gw.get("/console/customers/1", Some(&token)).await;
    let denied = env.gw.get("/ops", Some(&token)).await;
    let redirected = env.gw.get("/ops", None).await;
    assert_eq!(
        (allowed.status, denied.status, redirected.status),
        (200, 403, 302)
    );
    // The log sink writes a worker's lines when it goes idle: wait for the three decisions'.
    let written = |log: &str, rid: &str, msg: &str| {
        log.lines().any(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .is_ok_and(|v| v["request_id"] == rid && v["message"] == msg)
        })
    };
    eventually(
        std::time::Duration::from_secs(5),
        "the three decisions' log lines",
        || async {
            let log = env.gw.log();
            written(&log, &denied.request_id(), "denied")
                && written(&log, &allowed.request_id(), "allowed")
                && written(
                    &log,
                    &redirected.request_id(),
                    "redirected to login: no valid session",
                )
        },
    )
    .await;
    let log = env.gw.log();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let find = |rid: &str, msg: &str| {
        lines
            .iter()
            .find(|v| v["request_id"] == rid && v["message"] == msg)
            .cloned()
            .unwrap_or_else(|| panic!("no {msg:?} line for {rid}:\n{log}"))
    };
    let d = find(&denied.request_id(), "denied");
    assert_eq!(d["level"], "INFO");
    assert_eq!(d["admin_id"], admin.as_str());
    assert_eq!(d["rule"], "GET /ops");
    assert_eq!(d["mapping_version"].as_str().unwrap().len(), 12);
    let a = find(&allowed.request_id(), "allowed");
    assert_eq!(a["level"], "DEBUG");
    find(
        &redirected.request_id(),
        "redirected to login: no valid session",
    );
    if let Some(l) = log.lines().find(|l| l.contains(&token)) {
        panic!("the session token reached the log: {l}");
    }
    assert!(!log.contains("console_session"), "nor the cookie");
    let metrics = env.gw.admin_get("/metrics").await.body_str();
    for name in [
        "rbac_gateway_upstream_duration_seconds_bucket",
        "rbac_gateway_cache_entries{cache=\"session\"}",
        "rbac_gateway_db_pool_connections{state=\"open\"}",
        "rbac_gateway_audit_queue_depth",
        "rbac_gateway_requests_total{decision=\"allowed\"}",
    ] {
        assert!(metrics.contains(name), "{name} in /metrics");
    }
    // Without --lookup-database-url the lookups use the main pool: none of their own.
    for state in ["open", "idle"] {
        let series = format!("rbac_gateway_lookup_pool_connections{{state=\"{state}\"}} 0");
        assert!(metrics.lines().any(|l| l == series), "{series}");
    }
}

/// Issue 11 point 4: every metric the Grafana dashboard queries is on `/metrics` from
/// start-up, before any request (labelled counters initialised to 0), so no panel reads
/// "No data" on a fresh replica and `rate()` sees the first event.
#[tokio::test]
async fn every_dashboard_metric_exists_from_start_up() {
    let env = Env::core().await;
    let body = env.gw.admin_get("/metrics").await.body_str();
    let mut names = std::collections::BTreeSet::new();
    for entry in std::fs::read_dir(root().join("deploy/grafana")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "json") {
            let text = std::fs::read_to_string(&path).unwrap();
            let mut rest = text.as_str();
            while let Some(i) = rest.find("rbac_gateway_") {
                let name: String = rest[i..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                rest = &rest[i + name.len()..];
                names.insert(name);
            }
        }
    }
    assert!(names.len() >= 10, "dashboard metrics found: {names:?}");
    let missing: Vec<&String> = names
        .iter()
        .filter(|n| {
            // A series of that name, or (a histogram's base name) its TYPE line.
            let type_line = format!("# TYPE {n} ");
            !body.lines().any(|l| {
                l.starts_with(&type_line)
                    || l.strip_prefix(n.as_str())
                        .is_some_and(|r| r.starts_with('{') || r.starts_with(' '))
            })
        })
        .collect();
    assert!(
        missing.is_empty(),
        "missing at start-up: {missing:?}\n{body}"
    );
    for series in [
        "rbac_gateway_requests_total{decision=\"denied\"} 0",
        "rbac_gateway_refusals_total{reason=\"cookie_repeated_header\"} 0",
        "rbac_gateway_audit_rows_total{sink=\"spool\"} 0",
        "rbac_gateway_mapping_reloads_total{result=\"failure\"} 0",
    ] {
        assert!(body.lines().any(|l| l == series), "{series}");
    }
}
