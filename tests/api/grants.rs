//! The gateway with the privileges an operator gives it, not a superuser's: `serve` and `sweep`
//! run as a login holding only `rbac_gateway_serve` (deploy/gateway-grants.sql), and every part
//! of them (the request path, the audit writer, the change feed, the reader API, the sweep, the
//! alert pass, the mapping version recorded) works without a "permission denied".

use std::time::{Duration, Instant};

use crate::helpers::*;
use crate::lifecycle::revoked;
use crate::tickets::grant;

/// The bound of the change feed (coherence.rs): a change applied within 1 s, whatever the TTL.
const BOUND: Duration = Duration::from_secs(1);

/// The script an operator runs as the tables' owner.
fn grants_sql() -> String {
    std::fs::read_to_string(root().join("deploy/gateway-grants.sql")).unwrap()
}

/// Runs deploy/gateway-grants.sql as the tables' owner, then makes a login holding
/// `rbac_gateway_serve` and nothing else; its URL. Roles are cluster-wide: the login is named
/// after the database, and the script tolerates the role made by another test's run.
pub(crate) async fn serve_login(db: &TestDb) -> String {
    serve_login_granted_by(db, &db.pool).await
}

/// [`serve_login`], the script run by `grantor` (the tables' owner).
async fn serve_login_granted_by(db: &TestDb, grantor: &sqlx::PgPool) -> String {
    // As in a database whose default privileges give PUBLIC no EXECUTE on new functions: the
    // script's own grants must be enough.
    sqlx::raw_sql(
        "REVOKE EXECUTE ON FUNCTION rbac_gateway_session_principals(TEXT[], BOOLEAN), \
         rbac_gateway_principal(TEXT, BOOLEAN), rbac_gateway_ticket_grants(TEXT, INTEGER, TEXT[]), \
         rbac_gateway_break_glass_roles() FROM PUBLIC",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let grants = grants_sql();
    sqlx::raw_sql(&grants)
        .execute(grantor)
        .await
        .expect("deploy/gateway-grants.sql runs as the tables' owner");
    // Twice: the script is idempotent.
    sqlx::raw_sql(&grants).execute(grantor).await.unwrap();
    db.login_in_role("rbac_gateway_serve", "").await
}

/// [`eventually`] that, on failing, says what `/readyz` says and the gateway's warnings and
/// errors (where a refused statement is named).
async fn until<F, Fut>(gw: &Gateway, limit: Duration, what: &str, ready: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    eventually_explained(limit, what, ready, || async {
        let log = gw.log();
        let problems: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("\"WARN\"") || l.contains("\"ERROR\""))
            .collect();
        format!(
            "\n/readyz: {}\nthe gateway's warnings and errors:\n{}",
            gw.admin_get("/readyz").await.body_str(),
            problems.join("\n")
        )
    })
    .await
}

async fn count(db: &TestDb, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(&db.pool).await.unwrap()
}

/// A ticket grant whose expiry passed a minute ago.
pub(crate) async fn expired_grant(db: &TestDb, admin: &str, ticket: &str) -> String {
    let id = grant(db, admin, "console-user", 7, ticket).await;
    sqlx::query(
        "UPDATE rbac_ticket_grants SET expires_at_utc = now() - interval '1 minute' WHERE id = $1",
    )
    .bind(&id)
    .execute(&db.pool)
    .await
    .unwrap();
    id
}

/// Runs `rbac-gateway sweep --once` as `url` (without blocking the runtime the alert webhook's
/// stand-in runs on): its exit code and output.
pub(crate) async fn sweep_once(url: &str, hook: &Upstream) -> (Option<i32>, String) {
    let mut sweep = tokio::process::Command::new(env!("CARGO_BIN_EXE_rbac-gateway"));
    sweep
        .args(["sweep", "--once", "--database-url", url])
        .arg("--alert-webhook-url")
        .arg(format!("http://{}/hook", hook.addr))
        .kill_on_drop(true);
    // Bounded: a sweep that hangs fails the test instead of holding the suite.
    let out = tokio::time::timeout(Duration::from_secs(60), sweep.output())
        .await
        .expect("sweep ended within 60 s")
        .unwrap();
    code_and_output(&out)
}

/// Regression (migration 0017's defect was of this kind): every test ran as a superuser, so
/// nothing showed that the grants an operator gives the gateway are enough. As a login holding
/// only `rbac_gateway_serve`: `sweep` revokes an expired grant, writes an ended break-glass
/// session's row and delivers alerts (exit 0); `serve` answers an allowed request 200 and a
/// denied one 403 with its row in the database (`/readyz` 200), stops accepting a session
/// revoked in the database within the change feed's bound (TTL 60 s), answers the reader API,
/// sweeps (a failing item counted and named, then revoked), delivers an alert after a failed
/// attempt, records its mapping version; and logs no "permission denied". The functions it
/// calls are not PUBLIC's here, and a spooled row is replayed (ON CONFLICT reads the id).
#[tokio::test]
async fn serve_and_sweep_work_as_a_login_holding_only_the_gateway_grants() {
    let _alone = timed_alone().await;
    let db = TestDb::new().await;
    let grantor = db.pool.clone();
    serve_and_sweep_as_the_serve_login(db, grantor).await;
}

/// The same where the tables' owner, as README's Upgrade has it, is not a superuser: Console's
/// tables are its role's, and a member login of that role ran `migrate`, so it owns the
/// gateway's functions. Those that run as their owner (the locks and checks before the sweep,
/// the alert pass and the revocation read or write Console's tables, the break-glass record)
/// work with its privileges, not only with a superuser's.
#[tokio::test]
async fn serve_and_sweep_work_where_a_login_not_a_superuser_ran_migrate() {
    let _alone = timed_alone().await;
    let (db, owner) = TestDb::migrated_by_a_login().await;
    serve_and_sweep_as_the_serve_login(db, owner).await;
}

/// The scenario of the two tests above, the grant scripts run by `grantor`.
async fn serve_and_sweep_as_the_serve_login(db: TestDb, grantor: sqlx::PgPool) {
    let up = Upstream::start().await;
    let hook = Upstream::start().await;
    let url = serve_login_granted_by(&db, &grantor).await;

    // `sweep` on a database with an expired ticket grant, a break-glass session that ended, one
    // that is active (its alert delivered) and a change to the break-glass group (alerted).
    let (admin, _) = db.admin_with_roles(&[]).await;
    let expired = expired_grant(&db, &admin, "T-expired").await;
    let ended = db.break_glass(&admin, -1.0).await;
    let active = db.break_glass(&admin, 600.0).await;
    sqlx::query(
        "INSERT INTO rbac_group_roles (group_id, role_id) SELECT g.id, r.id FROM rbac_groups g, rbac_roles r \
         WHERE g.name = 'break-glass' AND r.name = 'console-user' ON CONFLICT DO NOTHING",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let (code, out) = sweep_once(&url, &hook).await;
    assert_eq!(code, Some(0), "sweep as rbac_gateway_serve: {out}");
    for said in [
        format!("revoked ticket grant {expired} (ticket T-expired): expired"),
        format!("break-glass session {ended} ended: break_glass_expire row written"),
        format!("alert delivered: break_glass:{active}"),
        "alert delivered: composition:".to_string(),
    ] {
        assert!(out.contains(&said), "sweep did not say {said:?}: {out}");
    }
    assert!(!out.contains("permission denied"), "{out}");
    assert_eq!(revoked(&db, &expired).await.as_deref(), Some("expired"));
    assert_eq!(
        count(
            &db,
            &format!(
                "SELECT count(*) FROM rbac_grants_audit WHERE id IN ('{}', '{}')",
                rbac_gateway::stores::revocation::audit_row_id("ticket_expire", &expired),
                rbac_gateway::stores::revocation::audit_row_id("break_glass_expire", &ended)
            )
        )
        .await,
        2
    );
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM rbac_gateway_break_glass_snapshots"
        )
        .await,
        1
    );

    // `serve`, sweeping every 0.3 s: one expired grant whose audit row fails until the CHECK
    // below goes (counted, then named by /readyz after 2 sweeps), one that goes through.
    let healthy = expired_grant(&db, &admin, "T-healthy").await;
    let poisoned = expired_grant(&db, &admin, "T-poisoned").await;
    let poisoned_row = rbac_gateway::stores::revocation::audit_row_id("ticket_expire", &poisoned);
    sqlx::raw_sql(&format!(
        "ALTER TABLE rbac_grants_audit ADD CONSTRAINT poisoned_row CHECK (id <> '{poisoned_row}')"
    ))
    .execute(&db.pool)
    .await
    .unwrap();
    // I-5: the rows it writes delivered to Console's audit writer, as this role.
    let writer = crate::audit_writer::Writer::start(&[]).await;
    let mut opts = GatewayOpts::new(core_routes(), &db, up.addr)
        .arg("--cache-ttl")
        .arg("60")
        .arg("--sweep-interval")
        .arg("0.3")
        .arg("--sweep-failure-threshold")
        .arg("2")
        .arg("--alert-webhook-url")
        .arg(&format!("http://{}/hook", hook.addr))
        .arg("--audit-writer-url")
        .arg(&writer.url())
        .env("GATEWAY_AUDIT_WRITER_TOKEN", crate::audit_writer::TOKEN);
    opts.database_url = url.clone();
    let gw = Gateway::start(opts).await;

    // Allowed: the cold lookup (rbac_gateway_session_principals) as this role.
    let (_, token) = db.admin_with_roles(&["console-manager"]).await;
    let r = gw.get("/ops", Some(&token)).await;
    assert_eq!(r.status, 200, "allowed request; log:\n{}", gw.log());
    // Denied: 403, its row in the database (not only in the spool), /readyz 200.
    let (_, other) = db.admin_with_roles(&[]).await;
    let r = gw.get("/ops", Some(&other)).await;
    assert_eq!(r.status, 403, "denied request; log:\n{}", gw.log());
    let id = r.request_id();
    until(
        &gw,
        Duration::from_secs(5),
        "the access_denied row in the database",
        || async { !db.audit_rows(&id).await.is_empty() },
    )
    .await;
    assert_eq!(db.audit_rows(&id).await[0].event_type, "access_denied");
    let ready = gw.admin_get("/readyz").await;
    assert_eq!(ready.status, 200, "{}", ready.body_str());
    // The grants let it compare the schema's migrations with its own.
    assert!(
        !ready.body_str().contains("database schema"),
        "{}",
        ready.body_str()
    );
    // The reader API: the admin's grants, and a permission with a customer's ticket grants.
    for path in [
        "/api/rbac/me",
        "/api/rbac/permissions/check?permission=console:audit:read&customer_id=7",
    ] {
        let r = gw.get(path, Some(&token)).await;
        assert_eq!(
            r.status,
            200,
            "{path}: {}; log:\n{}",
            r.body_str(),
            gw.log()
        );
    }

    // A session revoked in the database: refused within the change feed's bound, the TTL 60 s.
    let t0 = Instant::now();
    db.revoke_session(&token).await;
    let s = until_all(
        std::slice::from_ref(&gw),
        "/ops",
        &token,
        302,
        t0,
        Duration::from_secs(5),
    )
    .await;
    assert!(
        s[0] < BOUND,
        "revocation applied after {s:?}; log:\n{}",
        gw.log()
    );

    // The sweep in `serve`: the healthy grant revoked, the poisoned one counted and named.
    until(
        &gw,
        Duration::from_secs(10),
        "serve's sweep revoking the healthy grant",
        || async { revoked(&db, &healthy).await.is_some() },
    )
    .await;
    let healthy_row = rbac_gateway::stores::revocation::audit_row_id("ticket_expire", &healthy);
    until(
        &gw,
        Duration::from_secs(10),
        "its ticket_expire row delivered to the audit writer (I-5)",
        || async { writer.keys().await.contains(&healthy_row) },
    )
    .await;
    until(
        &gw,
        Duration::from_secs(10),
        "/readyz naming the grant that failed 2 sweeps",
        || async {
            let r = gw.admin_get("/readyz").await;
            r.status == 200
                && r.body_str()
                    .contains(&format!("sweep: grant:{poisoned} failed"))
        },
    )
    .await;
    sqlx::query("ALTER TABLE rbac_grants_audit DROP CONSTRAINT poisoned_row")
        .execute(&db.pool)
        .await
        .unwrap();
    until(
        &gw,
        Duration::from_secs(10),
        "the grant revoked once its row can be written, /readyz no longer naming it",
        || async {
            revoked(&db, &poisoned).await.is_some()
                && !gw.admin_get("/readyz").await.body_str().contains("sweep:")
        },
    )
    .await;

    // An alert whose delivery fails once (its backoff recorded), then is delivered.
    *hook.status.lock().unwrap() = 500;
    let (bg_admin, _) = db.admin_with_roles(&[]).await;
    let session = db.break_glass(&bg_admin, 600.0).await;
    let key = format!("break_glass:{session}");
    let alert = |column: &'static str| {
        let (db, key) = (&db, key.clone());
        async move {
            count(db, &format!("SELECT count(*) FROM rbac_gateway_alerts WHERE key = '{key}' AND {column} IS NOT NULL")).await == 1
        }
    };
    until(
        &gw,
        Duration::from_secs(10),
        "a failed delivery recorded",
        || alert("last_error"),
    )
    .await;
    *hook.status.lock().unwrap() = 200;
    until(&gw, Duration::from_secs(10), "the alert delivered", || {
        alert("delivered_at_utc")
    })
    .await;

    // The mapping version recorded for `rollout`.
    until(
        &gw,
        Duration::from_secs(5),
        "the mapping version recorded",
        || async { gw.log().contains("mapping version recorded for rollout") },
    )
    .await;
    assert_eq!(
        count(&db, "SELECT count(*) FROM rbac_gateway_mapping_versions").await,
        1
    );

    let log = gw.log();
    assert!(
        !log.contains("permission denied"),
        "serve as rbac_gateway_serve was refused something; log:\n{log}"
    );

    // The spool's replay (ON CONFLICT (id) DO NOTHING): a denial's row refused while the role
    // had lost INSERT is stored once the script has run again (it restores exactly its grants).
    sqlx::query("REVOKE INSERT ON access_audit_events FROM rbac_gateway_serve")
        .execute(&db.pool)
        .await
        .unwrap();
    let r = gw.get("/ops", Some(&other)).await;
    assert_eq!(r.status, 403, "denied, its row spooled; log:\n{}", gw.log());
    let spooled = r.request_id();
    assert!(db.audit_rows(&spooled).await.is_empty());
    sqlx::raw_sql(&grants_sql())
        .execute(&grantor)
        .await
        .unwrap();
    until(
        &gw,
        Duration::from_secs(5),
        "the spooled row replayed into the database",
        || async { !db.audit_rows(&spooled).await.is_empty() },
    )
    .await;
    until(&gw, Duration::from_secs(5), "/readyz 200", || async {
        gw.admin_get("/readyz").await.status == 200
    })
    .await;

    // The schema's migrations unreadable (the grant file of an earlier release): named with
    // the grant it lacks, the status unchanged; read again once the script has run.
    sqlx::query("REVOKE SELECT ON _sqlx_migrations FROM rbac_gateway_serve")
        .execute(&grantor)
        .await
        .unwrap();
    until(
        &gw,
        Duration::from_secs(5),
        "/readyz 200 naming the grant the schema's read lacks",
        || async {
            let r = gw.admin_get("/readyz").await;
            r.status == 200
                && r.body_str().contains(
                    "permission denied for table _sqlx_migrations (`serve`'s login needs SELECT on _sqlx_migrations: deploy/gateway-grants.sql)",
                )
        },
    )
    .await;
    sqlx::raw_sql(&grants_sql())
        .execute(&grantor)
        .await
        .unwrap();
    until(
        &gw,
        Duration::from_secs(5),
        "/readyz no longer naming the schema",
        || async {
            let r = gw.admin_get("/readyz").await;
            r.status == 200 && !r.body_str().contains("database schema")
        },
    )
    .await;

    // A grant the request path lacks: a session not cached is answered 503, and the log names
    // the refusal, not only "database unavailable".
    sqlx::query("REVOKE SELECT ON admin_sessions FROM rbac_gateway_serve")
        .execute(&db.pool)
        .await
        .unwrap();
    let (_, fresh) = db.admin_with_roles(&["console-manager"]).await;
    assert_eq!(gw.status("/ops", Some(&fresh)).await, 503);
    until(
        &gw,
        Duration::from_secs(5),
        "the refused lookup named in the log",
        || async {
            gw.log().lines().any(|l| {
                l.contains("cannot resolve the session")
                    && l.contains("permission denied for table admin_sessions")
            })
        },
    )
    .await;
}

/// `check` of the repository's routes.toml against `url`: its exit code and what it printed.
fn check_as(url: &str) -> (Option<i32>, String) {
    let out = crate::cli::bin()
        .args(["check", "--routes"])
        .arg(root().join("routes.toml"))
        .args(["--database-url", url])
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// `check --database-url` warns where the owner of Console's tables may write the gateway's
/// records of what it delivered (a review, on one login for both as a single Heroku credential
/// has it, marked a break-glass alert delivered unsent and a session proceeded; `check` said
/// "I-4 met"): by a grant of a table or of one column. Not where the tables are owned as
/// README's Upgrade has it. A plain database, one superuser owning all, is warned of too.
#[tokio::test]
async fn check_warns_where_consoles_role_may_write_what_the_gateway_delivered() {
    let (db, owner) = TestDb::migrated_by_a_login().await;
    drop(owner);
    let (_, name) = db.url.rsplit_once('/').unwrap();
    let short = name.trim_start_matches("rbacgw_");
    let console = format!("{short}_console");
    let warned = |out: &str| -> Vec<String> {
        out.lines()
            .filter(|l| l.contains("the owner of Console's tables, may write"))
            .map(str::to_string)
            .collect()
    };
    let (_, out) = check_as(&db.url);
    assert!(warned(&out).is_empty(), "{out}");
    let mut tables = Vec::new();
    for (grant, table) in [
        (
            format!(
                "GRANT UPDATE (delivered_at_utc) ON rbac_gateway_audit_outbox TO \"{console}\""
            ),
            "may write rbac_gateway_audit_outbox:",
        ),
        (
            format!("GRANT INSERT ON rbac_gateway_alerts TO \"{console}\""),
            "may write rbac_gateway_alerts and rbac_gateway_audit_outbox:",
        ),
    ] {
        sqlx::raw_sql(&grant).execute(&db.pool).await.unwrap();
        let (code, out) = check_as(&db.url);
        let w = warned(&out);
        assert_eq!(w.len(), 1, "{grant}: {out}");
        assert!(
            w[0].contains(&format!(
                "{console}, the owner of Console's tables, {table}"
            )) && w[0].contains("I-4")
                && w[0].contains("I-5"),
            "{grant}: {out}"
        );
        tables.push(code);
    }
    assert_eq!(tables[0], tables[1], "a warning, not an error");
    let plain = TestDb::new().await;
    let (_, out) = check_as(&plain.url);
    assert_eq!(warned(&out).len(), 1, "{out}");
}

/// A login without the mapping store's grant, asked for the database's mapping (`check
/// --mapping-source database`, what a gateway so started reads) is told the fix, not only
/// PostgreSQL's "permission denied".
#[tokio::test]
async fn the_database_mapping_unreadable_for_want_of_a_grant_names_the_grant() {
    let db = TestDb::new().await;
    let url = serve_login(&db).await;
    let out = crate::cli::bin()
        .args([
            "check",
            "--mapping-source",
            "database",
            "--database-url",
            &url,
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("permission denied for table rbac_mapping_activations")
            && err.contains("run deploy/mapping-grants.sql, then `GRANT rbac_gateway_reader TO`"),
        "{err}"
    );
}

/// `check --database-url` as the gateway's login (what README's upgrade step runs): with only
/// `rbac_gateway_serve` it passes, saying the mapping store is not checked (only a database
/// mapping source reads it); a table `serve` uses that the role holds no privilege on is named
/// with the grant, not reported as every one of its columns missing.
#[tokio::test]
async fn check_as_the_gateways_login_names_a_missing_grant_not_missing_columns() {
    let db = TestDb::new().await;
    let url = serve_login(&db).await;
    let check = || check_as(&url);
    let (code, out) = check();
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("rbac_mapping_store is not checked: this role may not read it"),
        "{out}"
    );
    assert!(!out.contains("is missing"), "{out}");
    assert!(!out.contains("database schema"), "{out}");

    // Without the grant on the schema's migrations: a warning naming it, not an error.
    sqlx::query("REVOKE SELECT ON _sqlx_migrations FROM rbac_gateway_serve")
        .execute(&db.pool)
        .await
        .unwrap();
    let (code, out) = check();
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("warning: database schema: its migrations were not read")
            && out.contains(
                "(`serve`'s login needs SELECT on _sqlx_migrations: deploy/gateway-grants.sql)"
            ),
        "{out}"
    );
    // `migrate` grants it too: a fleet whose operators skip the grant file still compares.
    let migrated = crate::cli::bin()
        .args(["migrate", "--database-url", &db.url])
        .output()
        .unwrap();
    assert!(migrated.status.success(), "{migrated:?}");
    let (code, out) = check();
    assert_eq!(code, Some(0), "{out}");
    assert!(!out.contains("database schema"), "{out}");

    sqlx::query("REVOKE SELECT ON rbac_user_groups FROM rbac_gateway_serve")
        .execute(&db.pool)
        .await
        .unwrap();
    let (code, out) = check();
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("this role lacks SELECT on rbac_user_groups, which `serve` uses: `GRANT SELECT ON \"public\".rbac_user_groups TO rbac_gateway_serve` (deploy/gateway-grants.sql)"),
        "{out}"
    );
    assert!(
        !out.contains("rbac_user_groups.user_id is missing"),
        "{out}"
    );
}

/// `check --database-url` as the gateway's login names each privilege deploy/gateway-grants.sql
/// gives it that the login lacks: a column's `UPDATE` the alert pass needs, the audit writer's
/// `INSERT`, a function's `EXECUTE`, a sequence's `USAGE`. Each failed only the statement that
/// needed it, at run time; the statements `check` prints mend it.
#[tokio::test]
async fn check_as_the_gateways_login_names_each_privilege_it_lacks() {
    let db = TestDb::new().await;
    let url = serve_login(&db).await;
    let check = || check_as(&url);
    let (code, out) = check();
    assert_eq!(code, Some(0), "{out}");
    assert!(!out.contains("lacks"), "{out}");

    sqlx::raw_sql(
        "REVOKE UPDATE (raised_at_utc, erasure_keys) ON rbac_gateway_alerts FROM rbac_gateway_serve; \
         REVOKE INSERT ON access_audit_events FROM rbac_gateway_serve; \
         REVOKE EXECUTE ON FUNCTION rbac_gateway_plain(TEXT[], TEXT[]) FROM rbac_gateway_serve; \
         REVOKE USAGE ON SEQUENCE rbac_change_log_id_seq FROM rbac_gateway_serve",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let (code, out) = check();
    assert_eq!(code, Some(1), "{out}");
    let lacks: Vec<&str> = out.lines().filter(|l| l.contains("lacks")).collect();
    for said in [
        "this role lacks UPDATE (erasure_keys, raised_at_utc) on rbac_gateway_alerts, which `serve` uses: `GRANT UPDATE (erasure_keys, raised_at_utc) ON \"public\".rbac_gateway_alerts TO rbac_gateway_serve`",
        "this role lacks INSERT on access_audit_events, which `serve` uses: `GRANT INSERT ON \"public\".access_audit_events TO rbac_gateway_serve`",
        "this role lacks EXECUTE on function rbac_gateway_plain(TEXT[], TEXT[]), which `serve` uses: `GRANT EXECUTE ON FUNCTION \"public\".rbac_gateway_plain(TEXT[], TEXT[]) TO rbac_gateway_serve`",
        "this role lacks USAGE on sequence rbac_change_log_id_seq, which `serve` uses: `GRANT USAGE ON SEQUENCE \"public\".rbac_change_log_id_seq TO rbac_gateway_serve`",
    ] {
        assert!(lacks.iter().any(|l| l.contains(said)), "{said}\n{out}");
    }
    assert_eq!(lacks.len(), 4, "{out}");
    assert!(!out.contains("is missing"), "{out}");

    // The statements it prints, run as the tables' owner, are the whole mend.
    for line in lacks {
        let grant = line.split('`').nth(3).unwrap();
        sqlx::raw_sql(grant).execute(&db.pool).await.unwrap();
    }
    let (code, out) = check();
    assert_eq!(code, Some(0), "{out}");
    assert!(!out.contains("lacks"), "{out}");

    // SELECT on each column is SELECT on the table: what `serve` reads is granted.
    run(
        &db,
        "REVOKE SELECT ON rbac_gateway_deploy_windows FROM rbac_gateway_serve; \
         GRANT SELECT (id, starts_at_utc, ends_at_utc, declared_by, reason, created_at_utc) \
         ON rbac_gateway_deploy_windows TO rbac_gateway_serve",
    )
    .await;
    let (code, out) = check();
    assert_eq!(code, Some(0), "{out}");
    assert!(!out.contains("lacks"), "{out}");

    // A login that does not hold the role's privileges gets one error with the fix that gives
    // them (a GRANT to the role would change nothing), not each privilege: a member that does
    // not inherit, directly or through a role between; a login that is no member.
    let user = TestDb::user_of(&url);
    let short = user.trim_end_matches("_rbac_gateway_serve");
    let mid = format!("{short}_mid");
    let lacking_one = |out: &str, fix: &str| {
        let lines: Vec<&str> = out.lines().filter(|l| l.contains("lacks")).collect();
        assert_eq!(lines.len(), 1, "{out}");
        assert!(lines[0].contains(fix), "{fix}\n{out}");
    };
    run(&db, &format!("ALTER ROLE \"{user}\" NOINHERIT")).await;
    let (code, out) = check();
    assert_eq!(code, Some(1), "{out}");
    lacking_one(&out, &format!("this role ({user}) is a member of rbac_gateway_serve that does not inherit its privileges, and `serve` never sets its role (NOINHERIT on {user}: `ALTER ROLE \"{user}\" INHERIT`)"));
    run(&db, &format!("ALTER ROLE \"{user}\" INHERIT")).await;
    let (code, out) = check();
    assert_eq!(code, Some(0), "{out}");

    run(
        &db,
        &format!(
            "REVOKE rbac_gateway_serve FROM \"{user}\"; CREATE ROLE \"{mid}\" NOINHERIT IN ROLE rbac_gateway_serve; \
             GRANT \"{mid}\" TO \"{user}\""
        ),
    )
    .await;
    let (code, out) = check();
    assert_eq!(code, Some(1), "{out}");
    lacking_one(
        &out,
        &format!("(NOINHERIT on {mid}: `ALTER ROLE \"{mid}\" INHERIT`)"),
    );
    run(&db, &format!("REVOKE \"{mid}\" FROM \"{user}\"")).await;
    let (code, out) = check();
    assert_eq!(code, Some(1), "{out}");
    let grant = format!("`GRANT rbac_gateway_serve TO \"{user}\"`");
    lacking_one(
        &out,
        &format!("this role ({user}) is not a member of rbac_gateway_serve: {grant}"),
    );
    // The table of migrations is unread too: its warning points at the membership, not at the
    // grant file's SELECT, which would change nothing for this role.
    assert!(
        out.contains("database schema: its migrations were not read")
            && out.contains("(this role holds none of rbac_gateway_serve's privileges: the error on its membership names the fix)")
            && !out.contains("needs SELECT on _sqlx_migrations"),
        "{out}"
    );
    run(&db, grant.trim_matches('`')).await;
    let (code, out) = check();
    assert_eq!(code, Some(0), "{out}");

    // A table's name held by a composite type: named as such, not given a GRANT that fails.
    run(
        &db,
        "ALTER TABLE rbac_gateway_deploy_windows RENAME TO rbac_gateway_deploy_windows_away; \
         CREATE TYPE rbac_gateway_deploy_windows AS (id bigint)",
    )
    .await;
    let (code, out) = check();
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains(
            "database: rbac_gateway_deploy_windows is a composite type, not the table `serve` uses"
        ),
        "{out}"
    );
    assert!(!out.contains("lacks"), "{out}");
    run(
        &db,
        "DROP TYPE rbac_gateway_deploy_windows; \
         ALTER TABLE rbac_gateway_deploy_windows_away RENAME TO rbac_gateway_deploy_windows",
    )
    .await;

    // A view or materialized view in place of a table of the gateway's: named (serve's session
    // refuses to open it), not as its columns missing nor given a GRANT.
    for kind in ["VIEW", "MATERIALIZED VIEW"] {
        run(
            &db,
            &format!(
                "ALTER TABLE rbac_gateway_deploy_windows RENAME TO rbac_gateway_deploy_windows_away; \
                 CREATE {kind} rbac_gateway_deploy_windows AS SELECT * FROM rbac_gateway_deploy_windows_away; \
                 GRANT SELECT ON rbac_gateway_deploy_windows TO rbac_gateway_serve"
            ),
        )
        .await;
        let (code, out) = check();
        assert_eq!(code, Some(1), "{out}");
        let said = format!(
            "database: rbac_gateway_deploy_windows is a {}, not the table `serve` uses",
            kind.to_lowercase()
        );
        assert_eq!(out.matches(&said).count(), 1, "{out}");
        assert!(
            out.contains("the gateway's table must be put back in its place"),
            "{out}"
        );
        assert!(
            !out.contains("is missing") && !out.contains("lacks"),
            "{out}"
        );
        run(
            &db,
            &format!(
                "DROP {kind} rbac_gateway_deploy_windows; \
                 ALTER TABLE rbac_gateway_deploy_windows_away RENAME TO rbac_gateway_deploy_windows"
            ),
        )
        .await;
    }

    // Without USAGE on the schema nothing of the gateway's resolves: that alone is said, and
    // the check does not stop on the first statement that needs it.
    run(&db, "REVOKE USAGE ON SCHEMA public FROM PUBLIC").await;
    let (code, out) = check();
    assert_eq!(code, Some(1), "{out}");
    let fix = "`GRANT USAGE ON SCHEMA \"public\" TO rbac_gateway_serve`";
    assert!(
        out.contains("database: this role may not use schema \"public\"") && out.contains(fix),
        "{out}"
    );
    assert!(
        out.contains(" routes, version ") && !out.contains("lacks") && !out.contains("invariants:"),
        "{out}"
    );
    // A login that is no member: the membership is the fix that counts, named with it.
    run(&db, &format!("REVOKE rbac_gateway_serve FROM \"{user}\"")).await;
    let (code, out) = check();
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains(&format!("this role may not use schema \"public\", where `serve` finds every table and function, and this role ({user}) is not a member of rbac_gateway_serve: `GRANT rbac_gateway_serve TO \"{user}\"`")),
        "{out}"
    );
    run(&db, &format!("GRANT rbac_gateway_serve TO \"{user}\"")).await;
    run(&db, fix.trim_matches('`')).await;
    let (code, out) = check();
    assert_eq!(code, Some(0), "{out}");
    run(&db, "GRANT USAGE ON SCHEMA public TO PUBLIC").await;

    // A sequence the file grants on, replaced by a table: named, and the rest of the check
    // goes on (has_sequence_privilege refuses what is not a sequence).
    run(
        &db,
        "ALTER TABLE rbac_change_log ALTER id DROP DEFAULT; DROP SEQUENCE rbac_change_log_id_seq; \
         CREATE TABLE rbac_change_log_id_seq (x int)",
    )
    .await;
    let (code, out) = check();
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("database: sequence rbac_change_log_id_seq is missing, or is not a sequence"),
        "{out}"
    );
    assert!(out.contains(" routes, version "), "{out}");
    assert!(!out.contains("cannot read"), "{out}");
}

/// Runs `sql` as the tables' owner.
async fn run(db: &TestDb, sql: &str) {
    sqlx::raw_sql(sql).execute(&db.pool).await.unwrap();
}

/// `check --lookup-database-url` (deploy/lookup-grants.sql), where Console's role owns its
/// tables: a login holding `rbac_gateway_lookup` alone passes; `serve`'s own login given as the
/// lookup login is an error for each table of the gateway's it may write that Console's role may
/// not (Console's code on a cold lookup could forge a delivered alert or outbox row); a privilege
/// a lookup uses, revoked from the role, is named with the script that gives it.
#[tokio::test]
async fn check_names_what_the_lookup_login_may_write_and_what_it_lacks() {
    let db = TestDb::new().await;
    let serve = serve_login(&db).await;
    let mut conn = db.pool.acquire().await.unwrap();
    console_app_role(&mut conn).await;
    run(&db, "ALTER TABLE admins OWNER TO console_app").await;
    let lookup_grants = std::fs::read_to_string(root().join("deploy/lookup-grants.sql")).unwrap();
    sqlx::raw_sql(&lookup_grants)
        .execute(&db.pool)
        .await
        .unwrap();
    let lookup = db.login_in_role("rbac_gateway_lookup", "").await;
    let check = |url: &str| {
        let out = crate::cli::bin()
            .args(["check", "--routes"])
            .arg(root().join("routes.toml"))
            .args(["--database-url", &serve, "--lookup-database-url", url])
            .output()
            .unwrap();
        code_and_output(&out)
    };
    let said = |out: &str| -> Vec<String> {
        out.lines()
            .filter(|l| l.contains("--lookup-database-url's login"))
            .map(str::to_string)
            .collect()
    };

    let (code, out) = check(&lookup);
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(said(&out), Vec::<String>::new(), "{out}");

    let (code, out) = check(&serve);
    assert_eq!(code, Some(1), "{out}");
    for table in ["rbac_gateway_alerts", "rbac_gateway_audit_outbox"] {
        let named = format!("--lookup-database-url's login may write table {table}, which the owner of Console's tables may not");
        assert!(
            said(&out).iter().any(|l| l.contains(&named)),
            "{named}\n{out}"
        );
    }
    assert!(said(&out).iter().all(|l| !l.contains("lacks")), "{out}");

    // A superuser role it may become through a role that does not inherit it (Console's code
    // may `SET ROLE` all the same), which reaches past a read-only transaction (`COPY ... TO
    // PROGRAM`); then the serve role so, which may write the alerts.
    let user = TestDb::user_of(&lookup);
    let su = format!("su_{user}");
    run(
        &db,
        &format!(
            "CREATE ROLE {su} SUPERUSER NOLOGIN; CREATE ROLE {su}_mid NOLOGIN NOINHERIT; \
             GRANT {su} TO {su}_mid; GRANT {su}_mid TO \"{user}\""
        ),
    )
    .await;
    let (code, out) = check(&lookup);
    assert_eq!(code, Some(1), "{out}");
    let named = format!("--lookup-database-url's login may become role {su} (SUPERUSER), which the owner of Console's tables may not");
    assert!(
        said(&out).iter().any(|l| l.contains(&named)),
        "{named}\n{out}"
    );
    run(
        &db,
        &format!("REVOKE {su} FROM {su}_mid; GRANT rbac_gateway_serve TO {su}_mid"),
    )
    .await;
    let (code, out) = check(&lookup);
    assert_eq!(code, Some(1), "{out}");
    let named = "--lookup-database-url's login may write table rbac_gateway_alerts, which the owner of Console's tables may not";
    assert!(
        said(&out).iter().any(|l| l.contains(named)),
        "{named}\n{out}"
    );
    run(&db, &format!("DROP ROLE {su}; DROP ROLE {su}_mid")).await;

    run(
        &db,
        "REVOKE SELECT ON rbac_ticket_grants FROM rbac_gateway_lookup",
    )
    .await;
    let (code, out) = check(&lookup);
    assert_eq!(code, Some(1), "{out}");
    assert_eq!(
        said(&out).len(),
        1,
        "one privilege lacking, one error: {out}"
    );
    assert!(
        said(&out)[0].contains("--lookup-database-url's login lacks SELECT on rbac_ticket_grants, which a lookup uses: run deploy/lookup-grants.sql"),
        "{out}"
    );
    sqlx::raw_sql(&lookup_grants)
        .execute(&db.pool)
        .await
        .unwrap();
    let (code, out) = check(&lookup);
    assert_eq!(code, Some(0), "{out}");
}

/// `--lookup-database-url` is held to reach what `--database-url` reaches (`stores::reach`): a
/// real streaming standby of the primary (pg_basebackup) is named by `check` (exit 1), as are
/// another database of the same server and another cluster; the primary's same database is
/// not. `serve`'s lookup pool refuses the standby's connections (a cold lookup fails closed, and
/// `/readyz` says why). A standby's lag would let a cold lookup cache again what the change feed
/// had dropped.
#[tokio::test]
async fn the_lookup_url_is_held_to_the_primarys_database() {
    let (primary, db) = PrivatePg::start().await;
    let standby = primary.standby();
    let (_other, other_db) = PrivatePg::start().await;
    sqlx::raw_sql("CREATE DATABASE elsewhere")
        .execute(&db.pool)
        .await
        .unwrap();
    let elsewhere = format!("{}/elsewhere", db.url.rsplit_once('/').unwrap().0);
    let check = |url: &str| {
        let out = crate::cli::bin()
            .args(["check", "--routes"])
            .arg(root().join("routes.toml"))
            .args(["--database-url", &db.url, "--lookup-database-url", url])
            .output()
            .unwrap();
        code_and_output(&out)
    };
    let reaches = |out: &str| -> Vec<String> {
        out.lines()
            .filter(|l| l.contains("--lookup-database-url reaches"))
            .map(str::to_string)
            .collect()
    };
    let (_, out) = check(&db.url);
    assert_eq!(reaches(&out), Vec::<String>::new(), "{out}");
    for (url, says) in [
        (
            &standby.url,
            "reaches a standby (a server in recovery)".to_string(),
        ),
        (
            &elsewhere,
            r#"reaches database "elsewhere", --database-url database "postgres""#.to_string(),
        ),
        (
            &other_db.url,
            "reaches another PostgreSQL cluster than --database-url (system identifier "
                .to_string(),
        ),
    ] {
        let (code, out) = check(url);
        assert_eq!(code, Some(1), "{out}");
        let said = reaches(&out);
        assert_eq!(said.len(), 1, "{out}");
        assert!(said[0].contains(&says), "{says}\n{out}");
    }

    // Through a transaction-pooling PgBouncer whose entry is re-pointed at the standby and
    // reloaded: the lookup pool's client connections stay open, and each transaction's own
    // check refuses the standby (a cold lookup fails closed, 503, where it read the lagging
    // standby as allowed before).
    let up = Upstream::start().await;
    let bouncer = PgBouncer::start(&db.url, PoolMode::Transaction, 2).await;
    let gw = Gateway::start(
        GatewayOpts::new(core_routes(), &db, up.addr)
            .arg("--lookup-database-url")
            .arg(&bouncer.url(&db)),
    )
    .await;
    let (_, token) = db.admin_with_roles(&["console-manager"]).await;
    assert_eq!(gw.status("/ops", Some(&token)).await, 200, "{}", gw.log());
    bouncer.repoint(&standby.url);
    let (_, later) = db.admin_with_roles(&["console-manager"]).await;
    eventually_explained(
        Duration::from_secs(20),
        "a cold lookup through the re-pointed pooler fails closed",
        || async { gw.status("/ops", Some(&later)).await == 503 },
        || async { gw.log() },
    )
    .await;
    assert!(
        gw.log()
            .contains("the server is a standby (in recovery), refused"),
        "{}",
        gw.log()
    );
    drop(gw);

    let gw = Gateway::start_unready(
        GatewayOpts::new(core_routes(), &db, up.addr)
            .arg("--lookup-database-url")
            .arg(&standby.url),
    )
    .await;
    eventually(
        Duration::from_secs(20),
        "/readyz says the lookup pool refuses the standby",
        || async {
            matches!(gw.readyz().await, Some((503, b))
                if b.contains("--lookup-database-url unavailable (every cold lookup fails)")
                    && b.contains("the server is a standby (in recovery), refused"))
        },
    )
    .await;
}
