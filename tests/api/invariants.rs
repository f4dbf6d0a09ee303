//! The seeds' invariants as a gateway started with none of their flags holds them (issue 69):
//! I-4, a break-glass session's roles count only once its alert was delivered, and a gateway
//! without an alert destination says no break-glass session can proceed; T-PEN-6, no ticket grant
//! counts without per-request re-validation unless waived, and the waiver is shown; and
//! `check --database-url`'s and `rollout`'s invariants section (I-4's holders of a break-glass
//! role outside a session, I-6, I-11's promotion row in production, T-PEN-6).

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::helpers::*;
use crate::tickets::grant;

/// The alert pass recorded the break-glass session `id`'s alert (undelivered, without a
/// destination).
async fn alert_recorded(db: &TestDb, id: &str) {
    let t0 = Instant::now();
    eventually(
        Duration::from_secs(15).saturating_sub(t0.elapsed()),
        "the alert pass did not record the session's alert",
        || async {
            sqlx::query_scalar::<_, bool>(
                "SELECT EXISTS (SELECT FROM rbac_gateway_alerts WHERE key = 'break_glass:' || $1 AND delivered_at_utc IS NULL)",
            )
            .bind(id)
            .fetch_one(&db.pool)
            .await
            .unwrap()
        },
    )
    .await;
}

/// A gateway with the seeds' defaults (an alert before break-glass counts), alerting `hook`, its
/// cache kept 60 s (a delivery reaches it through the change feed, not by expiry).
async fn alerting_gateway(db: &TestDb, up: &Upstream, hook: &Upstream) -> Gateway {
    Gateway::start(
        GatewayOpts::new(core_routes(), db, up.addr)
            .seeds_defaults()
            .arg("--alert-webhook-url")
            .arg(&format!("http://{}/hook", hook.addr))
            .arg("--cache-ttl")
            .arg("60"),
    )
    .await
}

#[tokio::test]
async fn break_glass_waits_for_its_delivered_alert_by_default() {
    let db = TestDb::new().await;
    let up = Upstream::start().await;
    let hook = Upstream::start().await;
    *hook.status.lock().unwrap() = 503;
    let gw = alerting_gateway(&db, &up, &hook).await;
    let (admin, token) = db.admin_with_roles(&[]).await;
    assert_eq!(gw.status("/ops", Some(&token)).await, 403);
    db.break_glass(&admin, 600.0).await;
    // The webhook refuses: however many passes try it, the session does not proceed (I-4).
    let t0 = Instant::now();
    eventually(
        Duration::from_secs(10).saturating_sub(t0.elapsed()),
        "no delivery attempt",
        || async { hook.count() >= 2 },
    )
    .await;
    assert_eq!(gw.status("/ops", Some(&token)).await, 403);
    let body = gw.admin_get("/readyz").await.body_str();
    assert!(!body.contains("I-4"), "{body}");

    // Delivered: the session proceeds. The time from its row to its first allowed request is
    // the alert pass's interval (1 s) and the change feed's notification at most.
    *hook.status.lock().unwrap() = 200;
    let (second, token2) = db.admin_with_roles(&[]).await;
    let t1 = Instant::now();
    db.break_glass(&second, 600.0).await;
    eventually(
        Duration::from_secs(10).saturating_sub(t1.elapsed()),
        "break-glass never honoured",
        || async { gw.status("/ops", Some(&token2)).await == 200 },
    )
    .await;
    let took = t1.elapsed();
    eprintln!("break-glass row to first allowed request: {took:?}");
    assert!(
        hook.requests()
            .iter()
            .any(|r| String::from_utf8_lossy(&r.body).contains(&second)),
        "the alert naming the admin was delivered before the session proceeded"
    );
    // The first session's alert is delivered by the same recovered webhook: honoured at once
    // (the delivery reaches the cache through the change feed), not after the 60 s TTL.
    let t2 = Instant::now();
    eventually(
        Duration::from_secs(10).saturating_sub(t2.elapsed()),
        "the first break-glass session never honoured",
        || async { gw.status("/ops", Some(&token)).await == 200 },
    )
    .await;
}

/// I-4 after the alert: a break-glass session row changed once its alert was delivered (given
/// to another admin, granted again now to restart its 4 hours) counts for no one until the alert
/// the pass raises again for it, naming the session as it now stands, is delivered. Before
/// migration 0033 the first delivery covered whatever the row became.
#[tokio::test]
async fn a_break_glass_session_changed_after_its_alert_counts_again_only_once_alerted_again() {
    let db = TestDb::new().await;
    let up = Upstream::start().await;
    let hook = Upstream::start().await;
    let gw = alerting_gateway(&db, &up, &hook).await;
    let (first, token1) = db.admin_with_roles(&[]).await;
    let (second, token2) = db.admin_with_roles(&[]).await;
    let session = db.break_glass(&first, 600.0).await;
    eventually(
        Duration::from_secs(10),
        "the first admin's break-glass honoured",
        || async { gw.status("/ops", Some(&token1)).await == 200 },
    )
    .await;
    assert_eq!(gw.status("/ops", Some(&token2)).await, 403);

    // The webhook now refuses; the row is given to the second admin and granted again.
    *hook.status.lock().unwrap() = 503;
    sqlx::query(
        "UPDATE rbac_break_glass_sessions SET user_id = $2, granted_at_utc = now(), \
         expires_at_utc = now() + interval '4 hours' WHERE id = $1",
    )
    .bind(&session)
    .bind(&second)
    .execute(&db.pool)
    .await
    .unwrap();
    let raised_again = || {
        hook.requests().iter().any(|r| {
            let body = String::from_utf8_lossy(&r.body);
            body.contains("changed after its alert") && body.contains(&second)
        })
    };
    eventually(
        Duration::from_secs(10),
        "the changed session's alert raised again",
        || async { raised_again() },
    )
    .await;
    // The change feed has moved the session off the first admin (both were re-resolved).
    eventually(
        Duration::from_secs(10),
        "the first admin's break-glass ended",
        || async { gw.status("/ops", Some(&token1)).await == 403 },
    )
    .await;
    assert_eq!(
        gw.status("/ops", Some(&token2)).await,
        403,
        "the changed session counted on the first alert"
    );
    let alerts: i64 = sqlx::query_scalar("SELECT count(*) FROM rbac_gateway_alerts WHERE key = $1")
        .bind(format!("break_glass:{session}"))
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(alerts, 1, "one alert per session, raised again in place");

    // Delivered: the session counts, for the second admin.
    *hook.status.lock().unwrap() = 200;
    eventually(
        Duration::from_secs(10),
        "the changed session honoured once alerted",
        || async { gw.status("/ops", Some(&token2)).await == 200 },
    )
    .await;
    assert_eq!(gw.status("/ops", Some(&token1)).await, 403);
}

/// During a rolling deploy a gateway of the previous release records a break-glass alert
/// without the session columns of migration 0033: the alerts' trigger gives it the session as
/// it stands, so once delivered it counts, and the next pass does not raise it again as changed.
#[tokio::test]
async fn an_alert_recorded_by_the_previous_release_counts_once_delivered() {
    let db = TestDb::new().await;
    let hook = Upstream::start().await;
    let (admin, _) = db.admin_with_roles(&[]).await;
    let session = db.break_glass(&admin, 600.0).await;
    // The previous release's INSERT, then its delivery.
    sqlx::query(
        "INSERT INTO rbac_gateway_alerts (key, text, erasure_keys) VALUES ($1, 'opened', ARRAY[$2])",
    )
    .bind(format!("break_glass:{session}"))
    .bind(&admin)
    .execute(&db.pool)
    .await
    .unwrap();
    sqlx::query("UPDATE rbac_gateway_alerts SET delivered_at_utc = now() WHERE key = $1")
        .bind(format!("break_glass:{session}"))
        .execute(&db.pool)
        .await
        .unwrap();
    let counted = || async {
        sqlx::query_scalar::<_, Option<f64>>(
            "SELECT break_glass_seconds FROM rbac_gateway_principal($1, true)",
        )
        .bind(&admin)
        .fetch_one(&db.pool)
        .await
        .unwrap()
        .is_some()
    };
    assert!(counted().await, "the delivered alert counts");
    sweep_once(
        &db.url,
        &["--alert-webhook-url", &format!("http://{}/hook", hook.addr)],
    )
    .await;
    assert!(
        !hook
            .requests()
            .iter()
            .any(|r| String::from_utf8_lossy(&r.body).contains("changed after its alert")),
        "raised again as changed"
    );
    assert!(counted().await, "still counts after the pass");
}

#[tokio::test]
async fn without_an_alert_destination_no_break_glass_session_proceeds_and_readyz_says_so() {
    let db = TestDb::new().await;
    let up = Upstream::start().await;
    let gw = Gateway::start(GatewayOpts::new(core_routes(), &db, up.addr).seeds_defaults()).await;
    let ready = gw.admin_get("/readyz").await;
    assert_eq!(ready.status, 200, "everything else is served");
    assert!(
        ready
            .body_str()
            .contains("I-4: no --alert-webhook-url, so this gateway delivers no break-glass alert, and no break-glass session proceeds unless another replica or `sweep` delivers its alert"),
        "{}",
        ready.body_str()
    );
    assert!(gw.log().contains("no break-glass session proceeds"));
    let (admin, token) = db.admin_with_roles(&[]).await;
    let id = db.break_glass(&admin, 600.0).await;
    alert_recorded(&db, &id).await;
    assert_eq!(gw.status("/ops", Some(&token)).await, 403);
    // An ordinary role is honoured as ever.
    let (_, manager) = db.admin_with_roles(&["console-manager"]).await;
    assert_eq!(gw.status("/ops", Some(&manager)).await, 200);
}

#[tokio::test]
async fn opting_out_of_i4_is_explicit_and_said() {
    let db = TestDb::new().await;
    let up = Upstream::start().await;
    let gw = Gateway::start(
        GatewayOpts::new(core_routes(), &db, up.addr)
            .seeds_defaults()
            .arg("--break-glass-requires-alert=false"),
    )
    .await;
    let (admin, token) = db.admin_with_roles(&[]).await;
    db.break_glass(&admin, 600.0).await;
    let t0 = Instant::now();
    eventually(
        Duration::from_secs(10).saturating_sub(t0.elapsed()),
        "break-glass never honoured",
        || async { gw.status("/ops", Some(&token)).await == 200 },
    )
    .await;
    let body = gw.admin_get("/readyz").await.body_str();
    assert!(
        body.contains("I-4 not met: --break-glass-requires-alert=false"),
        "{body}"
    );
}

#[tokio::test]
async fn ticket_grants_count_only_re_validated_unless_waived() {
    let db = TestDb::new().await;
    let up = Upstream::start().await;
    let (admin, token) = db.admin_with_roles(&["console-user"]).await;
    grant(&db, &admin, "raptor-audit-admin", 7, "T-69").await;
    let path = "/console/customers/7/audit";

    // No validation URL and no waiver: the grant counts for nothing (fail closed).
    let gw = Gateway::start(GatewayOpts::new(core_routes(), &db, up.addr).seeds_defaults()).await;
    assert_eq!(gw.status(path, Some(&token)).await, 403);
    let body = gw.admin_get("/readyz").await.body_str();
    assert!(
        body.contains("T-PEN-6: no --ticket-validation-url, so no ticket grant is honoured"),
        "{body}"
    );
    drop(gw);

    // Waived: the table alone decides, and /readyz shows the waiver.
    let gw = Gateway::start(
        GatewayOpts::new(core_routes(), &db, up.addr)
            .seeds_defaults()
            .arg("--ticket-revalidation-waived"),
    )
    .await;
    assert_eq!(gw.status(path, Some(&token)).await, 200);
    let body = gw.admin_get("/readyz").await.body_str();
    assert!(
        body.contains("T-PEN-6 waived (--ticket-revalidation-waived)"),
        "{body}"
    );
}

/// `check --database-url`'s output, as the command prints it (exit 0: the invariants section
/// reports, the mapping's check decides the status).
fn check(db: &TestDb, env: &[(&str, &str)]) -> String {
    let out = crate::cli::bin()
        .args(["check", "--routes"])
        .arg(core_routes())
        .args(["--database-url", &db.url])
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

fn line<'a>(text: &'a str, id: &str) -> &'a str {
    let prefix = format!("  {id} ");
    text.lines()
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| panic!("no {id} line:\n{text}"))
}

#[tokio::test]
async fn check_lists_each_invariant_met_or_not_and_why() {
    let db = TestDb::new().await;
    let hook = [("GATEWAY_ALERT_WEBHOOK_URL", "http://127.0.0.1:9/hook")];
    let text = check(&db, &hook);
    assert!(text.contains("invariants:"), "{text}");
    assert!(line(&text, "I-4").contains("I-4 met"), "{text}");
    assert!(
        line(&text, "I-5").contains("NOT MET: no --audit-writer-url"),
        "{text}"
    );
    let with_writer = check(
        &db,
        &[("GATEWAY_AUDIT_WRITER_URL", "http://127.0.0.1:9/events")],
    );
    assert!(
        line(&with_writer, "I-5").contains("I-5 met"),
        "{with_writer}"
    );
    // A row owed past the bound: not met, with the last error.
    let (owed, _) = db.admin_with_roles(&[]).await;
    sqlx::raw_sql(&format!(
        "INSERT INTO rbac_grants_audit (id, event_type, target_user_id, granted_by, created_at_utc) \
           VALUES ('owed-1', 'break_glass_expire', '{owed}', 'rbac-gateway', now() - interval '1 hour'); \
         INSERT INTO rbac_gateway_audit_outbox (audit_id, created_at_utc, last_error) \
           VALUES ('owed-1', now() - interval '1 hour', 'HTTP 500')"
    ))
    .execute(&db.pool)
    .await
    .unwrap();
    let owing = check(
        &db,
        &[("GATEWAY_AUDIT_WRITER_URL", "http://127.0.0.1:9/events")],
    );
    assert!(
        line(&owing, "I-5").contains("I-5 NOT MET: 1 rbac_grants_audit row(s) undelivered"),
        "{owing}"
    );
    assert!(owing.contains("last error: HTTP 500"), "{owing}");
    assert!(line(&text, "I-6").contains("I-6 met"), "{text}");
    assert!(line(&text, "I-11").contains("not checkable here"), "{text}");
    assert!(
        line(&text, "T-PEN-6").contains("no ticket grant is honoured"),
        "{text}"
    );

    // I-4: a permanent member of the break-glass group, and an admin whose group's role
    // inherits one of its roles, are each named with the path.
    let member = db.admin("bg-member@example.test").await;
    db.join_group(&member, "break-glass").await;
    let inheritor = db.admin("inheritor@example.test").await;
    sqlx::raw_sql(
        "INSERT INTO rbac_roles (id, name) VALUES ('r-custom-super', 'custom-super'); \
         INSERT INTO rbac_role_inheritance (child_role_id, parent_role_id) \
           SELECT 'r-custom-super', id FROM rbac_roles WHERE name = 'console-secrets-admin'; \
         INSERT INTO rbac_groups (id, name) VALUES ('g-ops-x', 'ops-x'); \
         INSERT INTO rbac_group_roles (group_id, role_id) VALUES ('g-ops-x', 'r-custom-super');",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    db.join_group(&inheritor, "ops-x").await;
    let text = check(&db, &hook);
    assert!(line(&text, "I-4").contains("NOT MET"), "{text}");
    assert!(text.contains(&format!(
        "admin {member} holds console-secrets-admin through a permanent membership of group break-glass (role console-secrets-admin)"
    )), "{text}");
    assert!(text.contains(&format!(
        "admin {inheritor} holds console-secrets-admin through group ops-x grants role custom-super, which inherits console-secrets-admin"
    )), "{text}");
    // No email: the report outlives an erasure (I-6).
    assert!(!text.contains("inheritor@example.test"), "{text}");
    // A cycle of inheritance ends (each role once per path) and changes no answer.
    sqlx::raw_sql(
        "INSERT INTO rbac_role_inheritance (child_role_id, parent_role_id) \
           SELECT id, 'r-custom-super' FROM rbac_roles WHERE name = 'console-secrets-admin'",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let cyclic = check(&db, &hook);
    assert!(cyclic.contains(&format!("admin {inheritor} holds console-secrets-admin through group ops-x grants role custom-super, which inherits console-secrets-admin")), "{cyclic}");
    // The opt-out and a waiver are not met.
    let text = check(
        &db,
        &[
            ("GATEWAY_BREAK_GLASS_REQUIRES_ALERT", "false"),
            ("GATEWAY_TICKET_REVALIDATION_WAIVED", "true"),
        ],
    );
    assert!(
        line(&text, "I-4").contains("--break-glass-requires-alert=false"),
        "{text}"
    );
    assert!(
        line(&text, "T-PEN-6").contains("T-PEN-6 NOT MET: waived"),
        "{text}"
    );
}

#[tokio::test]
async fn i11_needs_the_promotion_row_in_production_and_reports_a_table_unlike_002s() {
    let db = TestDb::new().await;
    let prod = [("GATEWAY_ENVIRONMENT", "production")];
    let text = check(&db, &prod);
    assert!(line(&text, "I-11").contains("I-11 NOT MET: FLAG_RBAC_V2 is on in production (this command's FLAG_RBAC_V2) without its console_flag_promotions row"), "{text}");
    assert!(
        text.contains("console_flag_promotions does not exist"),
        "{text}"
    );
    // OpenTelemetry's attribute names the environment as well.
    let text = check(
        &db,
        &[(
            "OTEL_RESOURCE_ATTRIBUTES",
            "service.name=gw,deployment.environment.name=production",
        )],
    );
    assert!(line(&text, "I-11").contains("NOT MET"), "{text}");
    // Staging: the row is needed before promotion, not yet.
    let text = check(&db, &[("GATEWAY_ENVIRONMENT", "staging")]);
    assert!(
        line(&text, "I-11").contains("I-11 met: staging is not production"),
        "{text}"
    );
    // The kill switch on: not promoted.
    let text = check(
        &db,
        &[("GATEWAY_ENVIRONMENT", "production"), ("FLAG_RBAC_V2", "0")],
    );
    assert!(
        line(&text, "I-11").contains("I-11 met: FLAG_RBAC_V2=0"),
        "{text}"
    );

    // A table unlike 002's is reported, never a crash.
    sqlx::query("CREATE TABLE console_flag_promotions (flag TEXT PRIMARY KEY, env TEXT)")
        .execute(&db.pool)
        .await
        .unwrap();
    let text = check(&db, &prod);
    assert!(line(&text, "I-11").contains("not checkable here"), "{text}");
    assert!(text.contains("console_flag_promotions differs from 002's description: it lacks risk, current_env, promoted_by (its columns: flag, env)"), "{text}");

    // A view, row-level security, or a column of a type its owner made (whose cast to text
    // would run as the gateway): not read, not checkable.
    sqlx::raw_sql(
        "DROP TABLE console_flag_promotions; \
         CREATE DOMAIN planted_text AS text; \
         CREATE TABLE console_flag_promotions (flag_name TEXT, risk planted_text, current_env TEXT, promoted_by TEXT); \
         INSERT INTO console_flag_promotions VALUES ('FLAG_RBAC_V2', 'high', 'staging', 'migration')",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let text = check(&db, &prod);
    assert!(line(&text, "I-11").contains("not checkable here"), "{text}");
    assert!(
        text.contains("column risk is of a type outside pg_catalog"),
        "{text}"
    );
    sqlx::raw_sql(
        "DROP TABLE console_flag_promotions; DROP DOMAIN planted_text; \
         CREATE TABLE console_flag_promotions (flag_name TEXT, risk TEXT, current_env TEXT, promoted_by TEXT); \
         ALTER TABLE console_flag_promotions ENABLE ROW LEVEL SECURITY",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let text = check(&db, &prod);
    assert!(text.contains("it has row-level security"), "{text}");
    // An environment whose name says neither is judged as production: the same reason.
    let text = check(&db, &[("GATEWAY_ENVIRONMENT", "live")]);
    assert!(
        line(&text, "I-11").contains("not checkable here: FLAG_RBAC_V2 is on in live"),
        "{text}"
    );
    assert!(text.contains("it has row-level security"), "{text}");

    // 002's table without the row, then with it (002 Phase 2's insert).
    sqlx::raw_sql(
        "DROP TABLE console_flag_promotions; \
         CREATE TABLE console_flag_promotions (flag_name TEXT PRIMARY KEY, risk TEXT NOT NULL, \
             current_env TEXT NOT NULL, promoted_by TEXT NOT NULL); \
         INSERT INTO console_flag_promotions VALUES ('FLAG_OTHER', 'low', 'production', 'alice')",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let text = check(&db, &prod);
    assert!(
        text.contains("console_flag_promotions holds no FLAG_RBAC_V2 row"),
        "{text}"
    );
    let rollout = |env: &[(&str, &str)]| -> Value {
        let out = crate::cli::bin()
            .args(["rollout", "--json", "--routes"])
            .arg(core_routes())
            .args(["--database-url", &db.url])
            .envs(env.iter().copied())
            .output()
            .unwrap();
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)))
    };
    let r = rollout(&prod);
    let i11 = r["invariants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["id"] == "I-11")
        .unwrap()
        .clone();
    assert_eq!(i11["state"], "not_met", "{r}");
    let clusters = r["clusters"].as_array().unwrap();
    let blocked: Vec<&Value> = clusters
        .iter()
        .filter(|c| c["verdict"] != "not_applicable")
        .collect();
    assert!(!blocked.is_empty(), "{r}");
    for c in &blocked {
        assert!(
            c["blockers"]
                .as_array()
                .unwrap()
                .contains(&Value::from("I-11")),
            "{c}"
        );
        assert_ne!(c["verdict"], "ready", "{c}");
    }
    sqlx::query(
        "INSERT INTO console_flag_promotions VALUES ('FLAG_RBAC_V2', 'high', 'staging', 'migration')",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let text = check(&db, &prod);
    assert!(
        line(&text, "I-11").contains(
            "I-11 met: FLAG_RBAC_V2 is on in production and has its console_flag_promotions row"
        ),
        "{text}"
    );
    assert!(
        text.contains("FLAG_RBAC_V2 risk=high current_env=staging promoted_by=migration"),
        "{text}"
    );
    let r = rollout(&prod);
    for c in r["clusters"].as_array().unwrap() {
        assert!(
            !c["blockers"]
                .as_array()
                .unwrap()
                .contains(&Value::from("I-11")),
            "{c}"
        );
    }
}

/// A production gateway with FLAG_RBAC_V2 on and no promotion row keeps enforcing the mapping
/// (the fail-safe choice: the flag read as off would forward every route to Console's legacy
/// checks, a refusal to start would take Console down), and says so at start and on /readyz.
#[tokio::test]
async fn a_production_gateway_without_the_promotion_row_keeps_enforcing_and_says_so() {
    let db = TestDb::new().await;
    let up = Upstream::start().await;
    let gw = Gateway::start(
        GatewayOpts::new(core_routes(), &db, up.addr).env("GATEWAY_ENVIRONMENT", "production"),
    )
    .await;
    let (_, nobody) = db.admin_with_roles(&[]).await;
    let (_, manager) = db.admin_with_roles(&["console-manager"]).await;
    assert_eq!(gw.status("/ops", Some(&nobody)).await, 403);
    assert_eq!(gw.status("/ops", Some(&manager)).await, 200);
    let ready = gw.admin_get("/readyz").await;
    assert_eq!(ready.status, 200);
    assert!(
        ready.body_str().contains("I-11 not met: FLAG_RBAC_V2 is on in production without its console_flag_promotions row (console_flag_promotions does not exist"),
        "{}",
        ready.body_str()
    );
    let t0 = Instant::now();
    eventually(
        Duration::from_secs(5).saturating_sub(t0.elapsed()),
        "no I-11 line at start",
        || async { gw.log().contains("I-11 not met") },
    )
    .await;
    // The row (002 Phase 2's insert): nothing to say.
    sqlx::raw_sql(
        "CREATE TABLE console_flag_promotions (flag_name TEXT PRIMARY KEY, risk TEXT, current_env TEXT, promoted_by TEXT); \
         INSERT INTO console_flag_promotions VALUES ('FLAG_RBAC_V2', 'high', 'staging', 'migration')",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    // The next probes see the fresh read (a probe never waits for it).
    let t1 = Instant::now();
    eventually(
        Duration::from_secs(10).saturating_sub(t1.elapsed()),
        "the I-11 line stayed",
        || async { !gw.admin_get("/readyz").await.body_str().contains("I-11") },
    )
    .await;
}

/// An environment whose name says neither production nor another (`eu-production`) is judged as
/// production by `check` as by a running gateway: both say I-11 is not met without the row, and
/// nothing is wrong once it is there. `check` said "not checkable here" where the gateway said
/// "not met" (review B); it now adds that the name says neither.
#[tokio::test]
async fn check_and_serve_judge_a_name_that_says_neither_alike() {
    let db = TestDb::new().await;
    let up = Upstream::start().await;
    sqlx::raw_sql(
        "CREATE TABLE console_flag_promotions (flag_name TEXT PRIMARY KEY, risk TEXT NOT NULL, \
             current_env TEXT NOT NULL, promoted_by TEXT NOT NULL)",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let env = [("GATEWAY_ENVIRONMENT", "eu-production")];
    let gw =
        Gateway::start(GatewayOpts::new(core_routes(), &db, up.addr).env(env[0].0, env[0].1)).await;
    eventually(Duration::from_secs(10), "the gateway's I-11 line", || async {
        gw.admin_get("/readyz").await.body_str().contains(
            "I-11 not met: FLAG_RBAC_V2 is on in eu-production without its console_flag_promotions row",
        )
    })
    .await;
    let text = check(&db, &env);
    assert!(
        line(&text, "I-11").contains("I-11 NOT MET: FLAG_RBAC_V2 is on in eu-production"),
        "{text}"
    );
    assert!(
        text.contains("environment \"eu-production\" (--environment) is neither a production name"),
        "{text}"
    );

    sqlx::query("INSERT INTO console_flag_promotions VALUES ('FLAG_RBAC_V2', 'high', 'production', 'migration')")
        .execute(&db.pool)
        .await
        .unwrap();
    eventually(
        Duration::from_secs(10),
        "the gateway's I-11 line gone",
        || async { !gw.admin_get("/readyz").await.body_str().contains("I-11") },
    )
    .await;
    let text = check(&db, &env);
    assert!(
        line(&text, "I-11").contains(
            "I-11 met: FLAG_RBAC_V2 is on in eu-production and has its console_flag_promotions row"
        ),
        "{text}"
    );
}

/// The decision of docs/invariants.md: an admin holding a break-glass role outside a session is
/// named by `check`, and still honoured (003 §9 gives console-manager to the platform admins and
/// the break-glass group alike; refusing it would take their daily role away).
#[tokio::test]
async fn a_flagged_admin_is_still_honoured() {
    let db = TestDb::new().await;
    let up = Upstream::start().await;
    let gw = Gateway::start(GatewayOpts::new(core_routes(), &db, up.addr).seeds_defaults()).await;
    let member = db.admin("permanent@example.test").await;
    db.join_group(&member, "break-glass").await;
    let token = db.session(&member).await;
    assert_eq!(
        gw.status("/console/customers/invite", Some(&token)).await,
        200
    );
    let text = check(&db, &[]);
    assert!(line(&text, "I-4").contains("NOT MET"), "{text}");
    assert!(text.contains(&format!("admin {member} holds console-invite-admin through a permanent membership of group break-glass")), "{text}");
}

/// Where 002 created console_flag_promotions, deploy/gateway-grants.sql lets the gateway's
/// login read it: a production gateway and `check` as that login find the row (not "not
/// checked"), and without the row the gateway says I-11 is not met.
#[tokio::test]
async fn the_gateways_login_reads_the_promotion_row_the_grants_allow() {
    let db = TestDb::new().await;
    let up = Upstream::start().await;
    sqlx::raw_sql(
        "CREATE TABLE console_flag_promotions (flag_name TEXT PRIMARY KEY, risk TEXT NOT NULL, \
             current_env TEXT NOT NULL, promoted_by TEXT NOT NULL)",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let url = crate::grants::serve_login(&db).await;
    let mut opts =
        GatewayOpts::new(core_routes(), &db, up.addr).env("GATEWAY_ENVIRONMENT", "prod-eu");
    opts.database_url = url.clone();
    let gw = Gateway::start(opts).await;
    let t0 = Instant::now();
    eventually(
        Duration::from_secs(10).saturating_sub(t0.elapsed()),
        "no I-11 line on /readyz",
        || async { gw.admin_get("/readyz").await.body_str().contains("I-11 not met: FLAG_RBAC_V2 is on in prod-eu without its console_flag_promotions row (console_flag_promotions holds no FLAG_RBAC_V2 row)") },
    )
    .await;
    sqlx::query("INSERT INTO console_flag_promotions VALUES ('FLAG_RBAC_V2', 'high', 'production', 'migration')")
        .execute(&db.pool)
        .await
        .unwrap();
    let out = crate::cli::bin()
        .args(["check", "--routes"])
        .arg(core_routes())
        .args(["--database-url", &url])
        .env("GATEWAY_ENVIRONMENT", "production")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(line(&text, "I-11").contains("I-11 met"), "{text}");
}

/// I-4 in the library too: `Identity::new` and `identity::resolve`, as a program built on the
/// gateway's crate calls them, count a break-glass session's roles only once its alert was
/// delivered. Only `with_break_glass_requires_alert(false)` and `resolve_with(.., false)`, the
/// library's spelling of `--break-glass-requires-alert=false`, count them at once.
#[tokio::test]
async fn the_librarys_defaults_wait_for_the_alert_too() {
    use rbac_gateway::runtime::metrics::Metrics;
    use rbac_gateway::stores::identity::{self, Identity};
    use std::sync::Arc;

    let db = TestDb::new().await;
    let (admin, _token) = db.admin_with_roles(&[]).await;
    db.break_glass(&admin, 600.0).await;
    let pool = db.gw();

    let at_once = identity::resolve_with(&pool, &admin, Duration::ZERO, false)
        .await
        .unwrap();
    assert!(
        at_once.roles().contains(&"console-manager".to_string()),
        "the session, counted at once, grants console-manager: {:?}",
        at_once.roles()
    );
    let by_default = identity::resolve(&pool, &admin, Duration::ZERO)
        .await
        .unwrap();
    assert!(
        by_default.roles().is_empty(),
        "resolve counted a break-glass session whose alert was never delivered: {:?}",
        by_default.roles()
    );

    let metrics = Arc::new(Metrics::new());
    let cached = Identity::new(pool.clone(), Duration::from_secs(60), 100, metrics.clone());
    let principal = cached.principal(&admin).await.unwrap();
    assert!(
        principal.roles().is_empty(),
        "Identity::new counted a break-glass session whose alert was never delivered: {:?}",
        principal.roles()
    );
    let waived = Identity::new(pool, Duration::from_secs(60), 100, metrics)
        .with_break_glass_requires_alert(false);
    let principal = waived.principal(&admin).await.unwrap();
    assert_eq!(principal.roles(), at_once.roles());
}

/// Console's role changes `console_flag_promotions` between the gateway's description of it and
/// its read (here, while the description's answer is held back): the flag's column given an enum
/// of its own, whose cast to text records that it ran. The description that decides is taken
/// again under the lock the read holds, in one transaction, so the cast never runs as the
/// gateway's login: the table is reported as unsafe to read. Before, the read ran the cast (a
/// review forged a delivered break-glass alert so, as the serve login).
#[tokio::test]
async fn console_flag_promotions_changed_after_its_description_is_never_read() {
    use rbac_gateway::stores::invariants::{flag_promotion, Promotion};
    let db = TestDb::new().await;
    sqlx::raw_sql(
        "CREATE TABLE console_flag_promotions (flag_name TEXT, risk TEXT, current_env TEXT, promoted_by TEXT); \
         INSERT INTO console_flag_promotions VALUES ('FLAG_RBAC_V2', 'high', 'production', 'migration'); \
         CREATE TABLE planted_ran (at timestamptz DEFAULT now()); \
         CREATE TYPE planted_flag AS ENUM ('FLAG_RBAC_V2'); \
         CREATE FUNCTION planted_flag_text(planted_flag) RETURNS text LANGUAGE plpgsql AS \
             $$BEGIN INSERT INTO planted_ran DEFAULT VALUES; RETURN format('%s', $1); END$$; \
         CREATE CAST (planted_flag AS text) WITH FUNCTION planted_flag_text(planted_flag)",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let link = PgLink::new(&db.url).await;
    let pool =
        rbac_gateway::stores::db::Db::connect(&link.url, None, 1, Duration::from_secs(10)).unwrap();
    // Read as described, undisturbed.
    assert!(
        matches!(flag_promotion(&pool, "FLAG_RBAC_V2").await.unwrap(), Promotion::Present { ref risk, .. } if risk == "high")
    );
    // The description's rows (the schemas of its columns' types), once it ran.
    link.hold_next(b"pg_catalog");
    let read = tokio::spawn(async move { flag_promotion(&pool, "FLAG_RBAC_V2").await });
    link.held().await;
    sqlx::raw_sql(
        "ALTER TABLE console_flag_promotions ALTER COLUMN flag_name TYPE planted_flag USING flag_name::planted_flag",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    link.release();
    let promotion = tokio::time::timeout(Duration::from_secs(30), read)
        .await
        .expect("the read ended")
        .unwrap()
        .unwrap();
    let ran: i64 = sqlx::query_scalar("SELECT count(*) FROM planted_ran")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(ran, 0, "the planted cast ran as the gateway: {promotion:?}");
    assert!(
        matches!(&promotion, Promotion::Unsafe(why) if why.contains("column flag_name is of a type outside pg_catalog")),
        "{promotion:?}"
    );
}

/// A break-glass session revoked before its alert was raised is alerted as ended ("It ended
/// before this alert was raised.") and its alert records the revocation as its end: restored
/// afterwards (its revocation cleared, the rest of its hour ahead), it counts only once the
/// alert the pass raises again for it, naming it as it now stands, is delivered. Before, the
/// first alert covered the restored session, ops told only that it had ended.
#[tokio::test]
async fn a_break_glass_session_alerted_as_ended_counts_only_once_alerted_as_live() {
    let db = TestDb::new().await;
    let up = Upstream::start().await;
    let hook = Upstream::start().await;
    let (admin, token) = db.admin_with_roles(&[]).await;
    let session = db.break_glass(&admin, 600.0).await;
    sqlx::query(
        "UPDATE rbac_break_glass_sessions SET granted_at_utc = now() - interval '2 minutes', \
         revoked_at_utc = now() - interval '1 minute' WHERE id = $1",
    )
    .bind(&session)
    .execute(&db.pool)
    .await
    .unwrap();
    let gw = alerting_gateway(&db, &up, &hook).await;
    let key = format!("break_glass:{session}");
    eventually(
        Duration::from_secs(10),
        "the ended session's alert delivered",
        || async {
            sqlx::query_scalar::<_, bool>(
                "SELECT delivered_at_utc IS NOT NULL FROM rbac_gateway_alerts WHERE key = $1",
            )
            .bind(&key)
            .fetch_optional(&db.pool)
            .await
            .unwrap()
                == Some(true)
        },
    )
    .await;
    assert!(
        hook.requests().iter().any(|r| {
            let body = String::from_utf8_lossy(&r.body);
            body.contains("It ended before this alert was raised") && body.contains(&admin)
        }),
        "the alert told the session as ended"
    );
    assert_eq!(gw.status("/ops", Some(&token)).await, 403);

    // The webhook now refuses; the session is restored.
    *hook.status.lock().unwrap() = 503;
    sqlx::query("UPDATE rbac_break_glass_sessions SET revoked_at_utc = NULL WHERE id = $1")
        .bind(&session)
        .execute(&db.pool)
        .await
        .unwrap();
    counts_once_alerted_as_live(&gw, &hook, &admin, &token).await;
}

/// An alert the previous release raised for a break-glass session revoked before it (told as
/// ended) recorded the session's expiry as the end it told, so the session restored afterwards
/// counted on it. Migration 0039 gives such an alert the end it told, the revocation: once
/// upgraded, the restored session counts only once alerted again as live.
#[tokio::test]
async fn an_alert_told_as_ended_by_the_previous_release_covers_no_restored_session() {
    let db = TestDb::at_version(38).await;
    let (admin, _) = db.admin_with_roles(&[]).await;
    let session = db.break_glass(&admin, 3000.0).await;
    sqlx::query(
        "UPDATE rbac_break_glass_sessions SET granted_at_utc = now() - interval '2 minutes', \
         revoked_at_utc = now() - interval '1 minute' WHERE id = $1",
    )
    .bind(&session)
    .execute(&db.pool)
    .await
    .unwrap();
    // As the previous release raised and delivered it: the session's columns from its row
    // (the alerts' trigger), the capped expiry as its end.
    sqlx::query(
        "INSERT INTO rbac_gateway_alerts (key, text, erasure_keys, delivered_at_utc) \
         VALUES ($1, 'Break-glass session opened for a@b (x). Justification: j. Expires 2026-11-30 12:00:00 UTC. It ended before this alert was raised.', ARRAY[$2], now())",
    )
    .bind(format!("break_glass:{session}"))
    .bind(&admin)
    .execute(&db.pool)
    .await
    .unwrap();
    let counted = || async {
        sqlx::query_scalar::<_, Option<f64>>(
            "SELECT break_glass_seconds FROM rbac_gateway_principal($1, true)",
        )
        .bind(&admin)
        .fetch_one(&db.pool)
        .await
        .unwrap()
        .is_some()
    };
    let out = crate::cli::bin()
        .args(["migrate", "--database-url", &db.url])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    sqlx::query("UPDATE rbac_break_glass_sessions SET revoked_at_utc = NULL WHERE id = $1")
        .bind(&session)
        .execute(&db.pool)
        .await
        .unwrap();
    assert!(
        !counted().await,
        "the restored session counted on the alert that told it ended"
    );
}

/// An alert the previous release raised for a session revoked before it (told as ended, with
/// the expiry as its end) covered the session restored before the upgrade, which 0039 could not
/// mend (it mends those of sessions still revoked). The alert pass raises again the alert of a
/// live session that says it ended: the restored session counts once alerted as live.
#[tokio::test]
async fn a_session_restored_before_the_upgrade_counts_once_alerted_as_live() {
    let db = TestDb::new().await;
    let up = Upstream::start().await;
    let hook = Upstream::start().await;
    *hook.status.lock().unwrap() = 503;
    let (admin, token) = db.admin_with_roles(&[]).await;
    let session = db.break_glass(&admin, 3000.0).await;
    // As the previous release raised and delivered it, the session revoked then: the session's
    // columns from its row (the alerts' trigger), the capped expiry as its end.
    sqlx::query(
        "INSERT INTO rbac_gateway_alerts (key, text, erasure_keys, delivered_at_utc) \
         VALUES ($1, 'Break-glass session opened for a@b (x). Justification: j. Expires 2026-11-30 12:00:00 UTC. It ended before this alert was raised.', ARRAY[$2], now())",
    )
    .bind(format!("break_glass:{session}"))
    .bind(&admin)
    .execute(&db.pool)
    .await
    .unwrap();
    // Restored (never revoked, as it now stands) before the new release starts.
    let gw = alerting_gateway(&db, &up, &hook).await;
    counts_once_alerted_as_live(&gw, &hook, &admin, &token).await;
}

/// I-4 against the erasure (a review of migration 0042): Console doubles a living admin's id (its
/// key dropped) and erases the double, which has the erasure rewrite the living admin's delivered
/// break-glass alert as an erased admin's. The rewritten alert vouches for no session: the alert
/// pass raises it again, whole, and the session counts once that is delivered. Before, the
/// session went on counting behind an alert that named no one.
#[tokio::test]
async fn an_alert_the_erasure_rewrote_for_a_living_admin_is_raised_again_before_it_counts() {
    let db = TestDb::new().await;
    let up = Upstream::start().await;
    let hook = Upstream::start().await;
    let (admin, token) = db.admin_with_roles(&[]).await;
    let session = db.break_glass(&admin, 3000.0).await;
    let gw = alerting_gateway(&db, &up, &hook).await;
    eventually(
        Duration::from_secs(10),
        "the session honoured once alerted",
        || async { gw.status("/ops", Some(&token)).await == 200 },
    )
    .await;
    *hook.status.lock().unwrap() = 503;
    sqlx::raw_sql(&format!(
        "ALTER TABLE admins DROP CONSTRAINT admins_pkey CASCADE; \
         INSERT INTO admins (id, email) VALUES ('{admin}', 'double@example.test'); \
         DELETE FROM admins WHERE email = 'double@example.test';"
    ))
    .execute(&db.pool)
    .await
    .unwrap();
    let erased: String = sqlx::query_scalar("SELECT text FROM rbac_gateway_alerts WHERE key = $1")
        .bind(format!("break_glass:{session}"))
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert!(
        erased.contains("since erased") || erased.contains("changed after its alert"),
        "the erasure left the alert: {erased}"
    );
    counts_once_alerted_as_live(&gw, &hook, &admin, &token).await;
}

/// I-4 where Console makes the admin ids of its sessions and memberships case-blind (a
/// nondeterministic collation, which migration 0041 lets it have): admin `l` holds neither admin
/// `L`'s break-glass session, counted on the alert that named `L`, nor `L`'s groups; and a
/// session Console gives from `L` to `l` is alerted again, naming `l`. Before migration 0043 (a
/// review), `l` counted `L`'s session and held its groups, and the alert pass's join matched
/// both admins and raised no break-glass alert at all.
#[tokio::test]
async fn a_case_blind_id_of_consoles_counts_no_other_admins_session() {
    let db = TestDb::new().await;
    sqlx::raw_sql(
        "INSERT INTO admins (id, email) VALUES ('L', 'upper@example.test'), ('l', 'lower@example.test'); \
         INSERT INTO rbac_user_groups (user_id, group_id, granted_by) \
         SELECT 'L', id, 'test' FROM rbac_groups WHERE name = 'raxx-platform-admins';",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let session = db.break_glass("L", 3000.0).await;
    sweep_once(&db.url, &[]).await;
    let key = format!("break_glass:{session}");
    sqlx::query("UPDATE rbac_gateway_alerts SET delivered_at_utc = now() WHERE key = $1")
        .bind(&key)
        .execute(&db.pool)
        .await
        .unwrap();
    let principal = |id: &'static str| {
        let pool = db.pool.clone();
        async move {
            sqlx::query_as::<_, (Vec<String>, Option<f64>)>(
                "SELECT roles, break_glass_seconds FROM rbac_gateway_principal($1, true)",
            )
            .bind(id)
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    let (roles, glass) = principal("L").await;
    assert!(
        !roles.is_empty() && glass.is_some(),
        "L: {roles:?} {glass:?}"
    );
    sqlx::raw_sql(
        "CREATE COLLATION public.blind (provider = icu, locale = 'und-u-ks-level2', deterministic = false); \
         ALTER TABLE rbac_break_glass_sessions ALTER COLUMN user_id TYPE text COLLATE public.blind; \
         ALTER TABLE rbac_user_groups ALTER COLUMN user_id TYPE text COLLATE public.blind;",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let (roles, glass) = principal("L").await;
    assert!(
        !roles.is_empty() && glass.is_some(),
        "L: {roles:?} {glass:?}"
    );
    let (roles, glass) = principal("l").await;
    assert!(
        roles.is_empty() && glass.is_none(),
        "l holds L's: {roles:?} {glass:?}"
    );
    // The session given to l: alerted again, naming l.
    sqlx::query("UPDATE rbac_break_glass_sessions SET user_id = 'l' WHERE id = $1")
        .bind(&session)
        .execute(&db.pool)
        .await
        .unwrap();
    sweep_once(&db.url, &[]).await;
    let (recorded, delivered): (Option<String>, bool) = sqlx::query_as(
        "SELECT session_user_id, delivered_at_utc IS NOT NULL FROM rbac_gateway_alerts WHERE key = $1",
    )
    .bind(&key)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!((recorded.as_deref(), delivered), (Some("l"), false));
    let (_, glass) = principal("l").await;
    assert!(glass.is_none(), "l counts before its alert is delivered");
}

/// I-5 where Console's ids are case-blind (migration 0041 lets it): a permanent break-glass
/// membership moved from admin `L` to admin `l` is recorded, each admin named by its own email,
/// and alerted. Before migration 0044 (a review), the trigger compared the two ids under
/// Console's collation: the move was not recorded and no alert named `l`, who held the group's
/// roles (the principal compares ids exactly since 0043); and its read of an admin's email
/// matched both admins and failed Console's change.
#[tokio::test]
async fn a_break_glass_membership_moved_to_a_case_twin_is_recorded() {
    let db = TestDb::new().await;
    sqlx::raw_sql(
        "INSERT INTO admins (id, email) VALUES ('L', 'upper@example.test'), ('l', 'lower@example.test'); \
         INSERT INTO rbac_user_groups (user_id, group_id, granted_by) \
         SELECT 'L', id, 'test' FROM rbac_groups WHERE name = 'break-glass'; \
         CREATE COLLATION public.blind (provider = icu, locale = 'und-u-ks-level2', deterministic = false); \
         ALTER TABLE rbac_user_groups ALTER COLUMN user_id TYPE text COLLATE public.blind;",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    // On a session of its own, as Console's would be: one that ran the trigger before the
    // collation changed may keep a plan of its comparison made under the old one.
    let mut console = <sqlx::PgConnection as sqlx::Connection>::connect(&db.url)
        .await
        .unwrap();
    let recorded = recorded_by(
        &db,
        &mut console,
        "UPDATE rbac_user_groups SET user_id = 'l' WHERE user_id = 'L' COLLATE \"C\" \
            AND group_id = (SELECT id FROM rbac_groups WHERE name = 'break-glass')",
    )
    .await;
    assert_eq!(
        recorded,
        [
            "admin lower@example.test (l) made a permanent member of the break-glass group; \
          admin upper@example.test (L) no longer a permanent member of the break-glass group"
        ],
    );
    // What the move gave: l holds the group's roles, as the alert now says.
    let roles: Vec<String> =
        sqlx::query_scalar("SELECT roles FROM rbac_gateway_principal('l', true)")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert!(!roles.is_empty(), "l holds no roles: {roles:?}");
    sweep_once(&db.url, &[]).await;
    let alerted: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM rbac_gateway_alerts \
          WHERE text LIKE '%admin lower@example.test (l) made a permanent member%'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(alerted, 1);
    // And back: each line names its own admin's email, and neither change is refused (the
    // email read matched both admins: "more than one row returned by a subquery").
    let recorded = recorded_by(
        &db,
        &mut console,
        "DELETE FROM rbac_user_groups WHERE user_id = 'l' COLLATE \"C\" \
            AND group_id = (SELECT id FROM rbac_groups WHERE name = 'break-glass'); \
         INSERT INTO rbac_user_groups (user_id, group_id, granted_by) \
         SELECT 'L', id, 'test' FROM rbac_groups WHERE name = 'break-glass';",
    )
    .await;
    assert_eq!(
        recorded,
        [
            "admin lower@example.test (l) no longer a permanent member of the break-glass group",
            "admin upper@example.test (L) made a permanent member of the break-glass group",
        ],
    );
    // `check`'s I-4 names each holder of a break-glass role: `l` by a ticket grant beside `L`'s
    // membership (the holders were told apart under Console's collation, which made them one).
    grant(&db, "l", "console-secrets-admin", 7, "T-7").await;
    // Another case-blind collation than the memberships' (the holders' list was then not
    // checkable: "could not determine which collation to use").
    sqlx::raw_sql(
        "CREATE COLLATION public.blind2 (provider = icu, locale = 'und-u-ks-level1', deterministic = false); \
         ALTER TABLE rbac_ticket_grants ALTER COLUMN user_id TYPE text COLLATE public.blind2",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    // A request's ticket grants are its own admin's alone (before 0044, `L` held `l`'s).
    for (admin, tickets) in [
        ("L", vec![]),
        ("l", vec!["T-7 console-secrets-admin".to_string()]),
    ] {
        let held: Vec<String> =
            sqlx::query_scalar("SELECT tickets FROM rbac_gateway_ticket_grants($1, 7, NULL)")
                .bind(admin)
                .fetch_one(&db.pool)
                .await
                .unwrap();
        assert_eq!(held, tickets, "{admin}");
    }
    let text = check(&db, &[]);
    for holder in [
        "admin L holds console-secrets-admin through a permanent membership of group break-glass",
        "admin l holds console-secrets-admin through ticket grant",
    ] {
        assert!(text.contains(holder), "{holder}:\n{text}");
    }
    assert!(line(&text, "I-4").contains("2 admin(s) hold"), "{text}");
}

/// The lines the break-glass trigger recorded for `sql`, run on `console` (never refused).
async fn recorded_by(db: &TestDb, console: &mut sqlx::PgConnection, sql: &str) -> Vec<String> {
    let before: i64 =
        sqlx::query_scalar("SELECT coalesce(max(id), 0) FROM rbac_gateway_group_changes")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    sqlx::raw_sql(sql)
        .execute(console)
        .await
        .unwrap_or_else(|e| panic!("Console's change was refused: {e}: {sql}"));
    sqlx::query_scalar("SELECT what FROM rbac_gateway_group_changes WHERE id > $1 ORDER BY id")
        .bind(before)
        .fetch_all(&db.pool)
        .await
        .unwrap()
}

/// The alert pass where Console holds an admin's id twice (its key dropped, a second row of the
/// id inserted): the session is alerted, once, naming its admin. Before (a review), the two rows
/// the join made of one session failed the pass ("ON CONFLICT DO UPDATE command cannot affect row
/// a second time"), and no break-glass alert went out while they stood.
#[tokio::test]
async fn an_admin_id_console_holds_twice_stops_no_break_glass_alert() {
    let db = TestDb::new().await;
    sqlx::raw_sql(
        "ALTER TABLE admins DROP CONSTRAINT admins_pkey CASCADE; \
         INSERT INTO admins (id, email) VALUES ('M', 'm@example.test'), ('M', 'm2@example.test');",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let session = db.break_glass("M", 3000.0).await;
    sweep_once(&db.url, &[]).await;
    let (recorded, text): (Option<String>, String) =
        sqlx::query_as("SELECT session_user_id, text FROM rbac_gateway_alerts WHERE key = $1")
            .bind(format!("break_glass:{session}"))
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(recorded.as_deref(), Some("M"), "{text}");
    assert!(text.contains("(M). Justification: "), "{text}");
}

/// A restored break-glass session of `admin` (`token`) whose alert told it ended, the webhook
/// refusing: its alert is raised again naming it live, it does not count meanwhile, and it
/// counts once the webhook takes the alert.
async fn counts_once_alerted_as_live(gw: &Gateway, hook: &Upstream, admin: &str, token: &str) {
    eventually(
        Duration::from_secs(10),
        "the restored session's alert raised again as live",
        || async {
            hook.requests().iter().any(|r| {
                let body = String::from_utf8_lossy(&r.body);
                body.contains("changed after its alert")
                    && body.contains(admin)
                    && !body.contains("It ended before")
            })
        },
    )
    .await;
    assert_eq!(
        gw.status("/ops", Some(token)).await,
        403,
        "the restored session counted on the alert that told it ended"
    );
    *hook.status.lock().unwrap() = 200;
    // The next attempt comes after the refused ones' backoff (2, 4, 8 s ...: on a loaded
    // machine the hook refused several before this).
    eventually(
        Duration::from_secs(40),
        "the restored session honoured once alerted as live",
        || async { gw.status("/ops", Some(token)).await == 200 },
    )
    .await;
}
