//! The commands as an operator runs them: migrate, check, explain.

use std::process::Command;

use crate::helpers::*;

/// The gateway's command with the settings an environment could give it removed: each test
/// passes its own.
pub(crate) fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_rbac-gateway"));
    c.env_remove("FLAG_RBAC_V2")
        .env_remove("DATABASE_URL")
        .env_remove("GATEWAY_ROUTES")
        .env_remove("GATEWAY_ENVIRONMENT")
        .env_remove("OTEL_RESOURCE_ATTRIBUTES")
        .env_remove("GATEWAY_ALERT_WEBHOOK_URL")
        .env_remove("GATEWAY_TICKET_VALIDATION_URL")
        .env_remove("GATEWAY_BREAK_GLASS_REQUIRES_ALERT")
        .env_remove("GATEWAY_TICKET_REVALIDATION_WAIVED");
    c
}

/// [`bin`] deciding as the suite's gateways do (helpers::gateway::GatewayOpts::new): I-4's and
/// T-PEN-6's defaults opted out.
pub(crate) fn bin_as_suite() -> Command {
    let mut c = bin();
    c.envs(crate::helpers::SUITE_OPT_OUTS);
    c
}

/// Waits up to 20 s for a command that must end by itself; its exit status and standard error.
async fn exit_of(
    child: &mut std::process::Child,
    what: &str,
) -> (std::process::ExitStatus, String) {
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if started.elapsed() > std::time::Duration::from_secs(20) {
            // Reason: the test fails just below either way; the kill only stops the process.
            let _ = child.kill();
            panic!("{what} started and kept running");
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    (status, err)
}

#[tokio::test]
async fn migrate_is_idempotent_and_the_audit_table_is_append_only() {
    let db = TestDb::new().await; // already migrated once by the library
    for _ in 0..2 {
        let out = bin()
            .args(["migrate", "--database-url", &db.url])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let roles: i64 = sqlx::query_scalar("SELECT count(*) FROM rbac_roles")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(roles, 19, "the catalogue is seeded once");
    sqlx::query(
        "INSERT INTO access_audit_events (id, event_type, method, path, reason, request_id, created_at_utc) VALUES ('a1', 'access_denied', 'GET', '/x', 'no_route', 'r1', now())",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let upd = sqlx::query("UPDATE access_audit_events SET reason = 'forged' WHERE id = 'a1'")
        .execute(&db.pool)
        .await;
    assert!(upd.is_err(), "UPDATE must fail");
    let del = sqlx::query("DELETE FROM access_audit_events WHERE id = 'a1'")
        .execute(&db.pool)
        .await;
    assert!(del.is_err(), "DELETE must fail");
    let tr = sqlx::query("TRUNCATE access_audit_events")
        .execute(&db.pool)
        .await;
    assert!(tr.is_err(), "TRUNCATE must fail");
    assert_eq!(db.audit_count().await, 1);
}

#[tokio::test]
async fn migrate_makes_the_grants_tables_of_004_and_console_app_cannot_rewrite_the_grants_audit() {
    use sqlx::{Connection, Executor};
    // A database as Console sets one up: console_app gets every privilege on the tables made
    // there (default privileges), then `migrate` runs in it.
    let base = std::env::var("DATABASE_URL").expect("DATABASE_URL must be set");
    let name = format!("rbacgw_{}", uuid::Uuid::new_v4().simple());
    let mut admin = sqlx::PgConnection::connect(&base).await.unwrap();
    console_app_role(&mut admin).await;
    admin
        .execute(format!("CREATE DATABASE {name}").as_str())
        .await
        .unwrap();
    let url = format!("{}/{name}", base.rsplit_once('/').unwrap().0);
    let mut c = sqlx::PgConnection::connect(&url).await.unwrap();
    c.execute("ALTER DEFAULT PRIVILEGES GRANT ALL ON TABLES TO console_app")
        .await
        .unwrap();
    let out = bin()
        .args(["migrate", "--database-url", &url])
        .output()
        .unwrap();
    let (code, said) = code_and_output(&out);
    assert_eq!(code, Some(0), "{said}");
    // A first run says what it did, not PostgreSQL's notices of its `IF EXISTS` drops (45 of
    // "does not exist, skipping" before).
    assert!(said.contains("migrations applied"), "{said}");
    assert!(
        !said.contains("skipping") && !said.contains("notice"),
        "{said}"
    );

    // 004 §3.2's indexes, every one.
    let indexes: Vec<String> = sqlx::query_scalar(
        "SELECT indexname::text FROM pg_indexes WHERE tablename IN \
         ('rbac_grants_audit', 'rbac_ticket_grants', 'rbac_break_glass_sessions') \
         AND indexname LIKE 'idx_%' ORDER BY 1",
    )
    .fetch_all(&mut c)
    .await
    .unwrap();
    assert_eq!(
        indexes,
        [
            "idx_rbg_user",
            "idx_rga_expires",
            "idx_rga_target",
            "idx_rga_ticket",
            "idx_rtg_customer",
            "idx_rtg_ticket",
            "idx_rtg_user"
        ]
    );

    // console_app inserts and reads the grants audit and rewrites none of it; the other tables
    // keep what Console gave it.
    c.execute("INSERT INTO admins (id, email) VALUES ('a1', 'a1@example.test')")
        .await
        .unwrap();
    c.execute("SET ROLE console_app").await.unwrap();
    c.execute(
        "INSERT INTO rbac_grants_audit (id, event_type, target_user_id, granted_by) \
         VALUES ('g1', 'grant', 'a1', 'ops')",
    )
    .await
    .unwrap();
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM rbac_grants_audit")
        .fetch_one(&mut c)
        .await
        .unwrap();
    assert_eq!(n, 1);
    for write in [
        "UPDATE rbac_grants_audit SET granted_by = 'forged'",
        "DELETE FROM rbac_grants_audit",
        "TRUNCATE rbac_grants_audit",
    ] {
        let e = c.execute(write).await.expect_err(write);
        assert!(e.to_string().contains("permission denied"), "{write}: {e}");
    }
    c.execute("UPDATE admins SET email = 'a1@example.org' WHERE id = 'a1'")
        .await
        .unwrap();
    c.execute("RESET ROLE").await.unwrap();
    // The append-only rule is console_app's: an admin's rows still go with the admin (§3.2's
    // ON DELETE CASCADE).
    c.execute("DELETE FROM admins WHERE id = 'a1'")
        .await
        .unwrap();
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM rbac_grants_audit")
        .fetch_one(&mut c)
        .await
        .unwrap();
    assert_eq!(n, 0);

    // Where console_app owns the table, 0016 leaves its privileges alone: revoking DELETE from
    // the owner would refuse the cascade that erases an admin's rows with the admin.
    c.execute("ALTER TABLE rbac_grants_audit OWNER TO console_app")
        .await
        .unwrap();
    let m0016 =
        std::fs::read_to_string(root().join("migrations/0016_grants_tables_as_designed.sql"))
            .unwrap();
    sqlx::raw_sql(&m0016).execute(&mut c).await.unwrap();
    c.execute("INSERT INTO admins (id, email) VALUES ('a2', 'a2@example.test')")
        .await
        .unwrap();
    c.execute(
        "INSERT INTO rbac_grants_audit (id, event_type, target_user_id, granted_by) \
         VALUES ('g2', 'grant', 'a2', 'ops')",
    )
    .await
    .unwrap();
    c.execute("DELETE FROM admins WHERE id = 'a2'")
        .await
        .expect("an admin is erased with their grants audit rows");
}

#[tokio::test]
async fn check_accepts_the_production_mapping_with_only_ambiguous_warnings() {
    let db = TestDb::new().await;
    let out = bin()
        .args(["check", "--routes"])
        .arg(root().join("routes.toml"))
        .args(["--database-url", &db.url])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let warnings: Vec<&str> = stdout
        .lines()
        .filter(|l| l.contains(": warning: "))
        .collect();
    assert!(!warnings.is_empty());
    // Besides the mapping's: this test database is one superuser's, who owns Console's tables
    // and the gateway's alike, which `check` warns of (grants.rs has the case where it does not).
    assert!(
        warnings.iter().all(|w| w.contains("AMBIGUOUS-")
            || w.contains("is answered by the gateway itself (reader API")
            || w.contains("the owner of Console's tables, may write")),
        "{stdout}"
    );
    // Console's own reader endpoints stay mapped (for --rbac-api=false); check says the gateway
    // answers them.
    assert_eq!(
        warnings.iter().filter(|w| w.contains("reader API")).count(),
        2,
        "{stdout}"
    );
    for n in 1..=4 {
        assert!(
            stdout.contains(&format!("AMBIGUOUS-{n}")),
            "AMBIGUOUS-{n} listed: {stdout}"
        );
    }
}

#[tokio::test]
async fn check_reports_broken_files_with_locations_and_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let cases = [
        (
            "unknown-key.toml",
            Route::get("/a")
                .roles(&["console-user"])
                .string("role", "x")
                .to_toml(),
            ":5:1: unknown field `role`",
        ),
        (
            "bad-mode.toml",
            Route::get("/a")
                .roles(&["console-user"])
                .mode("strict")
                .to_toml(),
            ":5:8: unknown mode",
        ),
        (
            "dup.toml",
            // No blank line between the two rules: the duplicate is on line 7.
            [
                Route::get("/a").roles(&["console-user"]),
                Route::get("/a").roles(&["console-manager"]),
            ]
            .iter()
            .map(Route::to_toml)
            .collect(),
            ":7:8: duplicate rule",
        ),
        // Not TOML: no builder writes this.
        (
            "syntax.toml",
            "[[route]\nmethods = [\"GET\"]\n".to_string(),
            ":1:",
        ),
    ];
    for (name, text, want) in cases {
        let p = write(name, &text);
        let out = bin().arg("check").arg("--routes").arg(&p).output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(64), "{name}: {stdout}");
        assert!(
            stdout.contains(&format!("{}{want}", p.display())),
            "{name}: {stdout}"
        );
    }
    // A valid file naming a role that does not exist: exit 1 with --database-url.
    let db = TestDb::new().await;
    let p = write(
        "unknown-role.toml",
        &Route::get("/a").roles(&["console-superuser"]).to_toml(),
    );
    let out = bin()
        .arg("check")
        .arg("--routes")
        .arg(&p)
        .args(["--database-url", &db.url])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains(":1:1: unknown role \"console-superuser\""),
        "{stdout}"
    );
    // Bad usage.
    let out = bin().arg("check").arg("--bogus").output().unwrap();
    assert_eq!(out.status.code(), Some(64));
}

#[tokio::test]
async fn serve_refuses_an_invalid_mapping_before_binding() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("r.toml");
    std::fs::write(&p, Route::get("/a").access("open").to_toml()).unwrap();
    let out = bin()
        .args([
            "serve",
            "--database-url",
            "postgres://127.0.0.1:1/x",
            "--routes",
        ])
        .arg(&p)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains(":4:10: unknown access \"open\""));
}

/// Port 0 on every listener: each gets a free port (every worker's socket the same one), and
/// the "listening" line reports what was bound, which is what answers.
#[tokio::test]
async fn serve_on_port_zero_reports_the_ports_it_bound() {
    let db = TestDb::new().await;
    let up = Upstream::start().await;
    let gw = Gateway::start(
        GatewayOpts::new(core_routes(), &db, up.addr)
            .arg("--threads")
            .arg("2")
            .arg("--authz-listen")
            .arg("127.0.0.1:0"),
    )
    .await;
    let authz = gw.authz_addr();
    let ports = [gw.addr.port(), gw.admin.port(), authz.port()];
    assert!(ports.iter().all(|p| *p != 0), "{ports:?}");
    assert!(
        ports[0] != ports[1] && ports[1] != ports[2] && ports[0] != ports[2],
        "{ports:?}"
    );
    // Both workers' sockets are on the one port reported: every connection is answered.
    for _ in 0..8 {
        assert_eq!(gw.status("/auth/login", None).await, 200);
    }
    let r = send(
        authz,
        b"GET /authz HTTP/1.1\r\nHost: a\r\nConnection: close\r\nX-Original-Method: GET\r\nX-Original-URI: /auth/login\r\n\r\n",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(gw.admin_get("/healthz").await.status, 200);
}

/// `check` on a database nothing has migrated names each missing table once and `migrate` as
/// the fix (it makes Console's tables too where Console has none). Before, it said to run
/// `migrate`, then called 46 of Console's columns missing, "`migrate` does not" make them.
#[tokio::test]
async fn check_on_an_unmigrated_database_names_each_table_once_and_migrate() {
    let db = TestDb::created_empty("").await;
    let out = bin()
        .args(["check", "--routes"])
        .arg(root().join("routes.toml"))
        .args(["--database-url", &db.url])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(!stdout.contains("of Console's is missing"), "{stdout}");
    for table in [
        "admins",
        "admin_sessions",
        "rbac_user_groups",
        "access_audit_events",
    ] {
        assert_eq!(
            stdout
                .matches(&format!(
                    "database: table {table} is missing (run `rbac-gateway migrate`"
                ))
                .count(),
            1,
            "{table}: {stdout}"
        );
    }
}

/// An empty `--actor` (`--actor "$USER"` with `USER` unset, as README's push has it) is refused:
/// it recorded a change by no one.
#[test]
fn an_empty_mapping_actor_is_refused() {
    for command in ["push", "activate", "rollback"] {
        let mut cmd = bin();
        cmd.args(["mapping", command]);
        if command != "rollback" {
            cmd.arg(if command == "push" {
                "routes.toml"
            } else {
                "3f2a9c0d1e7b"
            });
        }
        let out = cmd
            .current_dir(root())
            .args(["--database-url", "postgres://127.0.0.1:1/x", "--actor", ""])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{command}: {err}");
        assert!(
            err.contains("a value is required for '--actor <ACTOR>'"),
            "{command}: {err}"
        );
    }
}

/// A database URL that does not parse is refused by each command that takes one (exit 64), said
/// with the form it needs, not only the parser's "relative URL without a base", and never echoed
/// (it may hold a password).
#[test]
fn a_database_url_that_does_not_parse_is_said_with_its_form() {
    let form = "not a PostgreSQL URL (postgres://USER:PASSWORD@HOST:PORT/DATABASE)";
    for url in [
        "s3cret-not-a-url",
        "postgres://u:s3cret@db.example:99999/console",
    ] {
        for args in [
            &["check", "--routes", "routes.toml", "--database-url"][..],
            &["migrate", "--database-url"],
            &["sweep", "--once", "--database-url"],
            &[
                "serve",
                "--routes",
                "routes.toml",
                "--upstream",
                "127.0.0.1:1",
                "--database-url",
            ],
            &["check", "--routes", "routes.toml", "--lookup-database-url"],
            &[
                "serve",
                "--routes",
                "routes.toml",
                "--upstream",
                "127.0.0.1:1",
                "--database-url",
                "postgres://127.0.0.1:1/x",
                "--lookup-database-url",
            ],
        ] {
            let out = bin()
                .current_dir(root())
                .args(args)
                .arg(url)
                .output()
                .unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(64), "{args:?} {url}: {err}");
            assert!(err.contains(form), "{args:?} {url}: {err}");
            assert!(!err.contains("s3cret"), "{args:?} {url}: {err}");
        }
    }
}

/// On a database never migrated, each command that reads it fails saying to run `migrate`, not
/// only PostgreSQL's bare "relation ... does not exist" (review A, low).
#[tokio::test]
async fn commands_on_an_unmigrated_database_say_to_migrate() {
    let db = TestDb::created_empty("").await;
    let routes = root().join("routes.toml");
    let routes = routes.to_str().unwrap();
    for args in [
        &["drift", "--routes", routes][..],
        &["matrix", "--routes", routes],
        &["test", "--routes", routes],
        &["diff", routes, routes],
        &["sweep", "--once"],
        &["rollout", "--routes", routes],
        &[
            "explain",
            "--routes",
            routes,
            "--admin",
            "a@example.test",
            "GET",
            "/ops",
        ],
    ] {
        let out = bin()
            .args(args)
            .args(["--database-url", &db.url])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}: {err}");
        assert!(
            err.contains("does not exist (the database lacks a table or function this binary reads: run `rbac-gateway migrate` as the tables' owner"),
            "{args:?}: {err}"
        );
    }
}

/// A ticket status URL the gateway cannot ask is refused when given, by every command that
/// takes one, naming what is wrong. An `https://` one was taken, and then every request on a
/// ticket grant answered 503 and the sweep revoked nothing, each saying so only at its use.
#[test]
fn a_ticket_status_url_that_cannot_be_asked_is_refused_when_given() {
    for (url, says) in [
        (
            "https://freescout.example/api/conversations/{ticket_id}",
            "only http:// is supported",
        ),
        (
            "http://freescout.example/api/conversations",
            "no {ticket_id}",
        ),
        (
            "ftp://freescout.example/{ticket_id}",
            "is not an http:// URL",
        ),
        ("http:///{ticket_id}", "is not a"),
    ] {
        for command in [
            &["serve", "--routes", "routes.toml"][..],
            &["sweep", "--once"],
            &["check", "--routes", "routes.toml"],
            &["explain", "--routes", "routes.toml", "GET", "/"],
        ] {
            let out = bin()
                .current_dir(root())
                .args(command)
                .args(["--database-url", "postgres://127.0.0.1:1/x"])
                .args(["--ticket-validation-url", url])
                .env_remove("GATEWAY_TICKET_VALIDATION_URL")
                .output()
                .unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(64), "{command:?} {url}: {err}");
            assert!(
                err.contains(says) && err.contains("--ticket-validation-url"),
                "{command:?} {url}: {err}"
            );
        }
    }
}
#[test]
fn serve_refuses_two_listeners_on_one_port() {
    // A usage error at once, not a bind failure after the restart retry.
    for (flag, admin, authz) in [
        ("--admin-listen", "127.0.0.1:18080", None),
        ("--admin-listen", "0.0.0.0:18080", None),
        ("--authz-listen", "127.0.0.1:19090", Some("127.0.0.1:18080")),
        ("--authz-listen", "127.0.0.1:19090", Some("[::]:19090")),
    ] {
        let mut cmd = bin();
        cmd.args([
            "serve",
            "--database-url",
            "postgres://127.0.0.1:1/x",
            "--listen",
            "127.0.0.1:18080",
            "--admin-listen",
            admin,
        ])
        .arg("--routes")
        .arg(root().join("routes.toml"));
        if let Some(a) = authz {
            cmd.args(["--authz-listen", a]);
        }
        let out = cmd.output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{flag}: {err}");
        assert!(
            err.contains("need different ports") && err.contains(flag),
            "{flag}: {err}"
        );
    }
}

#[tokio::test]
async fn serve_refuses_a_port_another_gateway_listens_on() {
    // SO_REUSEPORT would let a second gateway (a forgotten one, or one with another mapping)
    // share the port and answer a share of the requests: it must not start.
    let env = Env::core().await;
    let dir = tempfile::tempdir().unwrap();
    let admin: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut second = bin()
        .arg("serve")
        .arg("--listen")
        .arg(env.gw.addr.to_string())
        .arg("--admin-listen")
        .arg(admin.to_string())
        .arg("--upstream")
        .arg(env.up.addr.to_string())
        .arg("--routes")
        .arg(core_routes())
        .arg("--database-url")
        .arg(&env.db.url)
        .arg("--audit-spool")
        .arg(dir.path().join("spool"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // While it tries the port (about a second), its admin listener never says it is ready: a
    // gateway that cannot take requests must not pass a readiness probe.
    let mut probes = 0;
    while second.try_wait().unwrap().is_none() {
        // Connected but unanswered (bound, not served yet) is the expected case: 100 ms each.
        let probe = send(
            admin,
            b"GET /readyz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        );
        if let Ok(Ok(r)) = tokio::time::timeout(std::time::Duration::from_millis(100), probe).await
        {
            assert_ne!(r.status, 200, "/readyz 200 before the data plane listens");
        }
        probes += 1;
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(probes > 5, "the second gateway ended before it was probed");
    let (status, err) = exit_of(&mut second, "a second gateway on the same port").await;
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(
        err.contains("another process (another gateway?) listens on"),
        "{err}"
    );
    // The first gateway still answers.
    let r = send(
        env.gw.addr,
        b"GET /healthz HTTP/1.1\r\nHost: c\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    assert_ne!(r.status, 0);
}

#[tokio::test]
async fn explain_says_the_gateway_answers_the_reader_api_as_serve_does() {
    let db = TestDb::new().await;
    let admin = db.admin("reader@example.test").await;
    let explain = |method: &str, path: &str, extra: &[&str]| {
        let out = bin()
            .args(["explain", "--routes"])
            .arg(core_routes())
            .args(["--database-url", &db.url, "--admin", &admin])
            .args(extra)
            .args([method, path])
            .env_remove("GATEWAY_RBAC_API")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // An admin with no roles: serve answers /api/rbac/me itself (200), never a 403.
    let me = explain("GET", "/api/rbac/me", &[]);
    assert!(
        me.contains("Console's reader API, answered by the gateway"),
        "{me}"
    );
    assert!(me.contains("answer: 200"), "{me}");
    assert!(!me.contains("403"), "{me}");
    assert!(explain("POST", "/api/rbac/me", &[]).contains("answer: 405"));
    let bad = explain("GET", "/api/rbac/permissions/check", &[]);
    assert!(bad.contains("answer: 400"), "{bad}");
    // With --rbac-api=false serve decides the path as a route: so does explain.
    let off = explain("GET", "/api/rbac/me", &["--rbac-api=false"]);
    assert!(!off.contains("reader API"), "{off}");
    assert!(off.contains("decision: 403 denied (no_route)"), "{off}");
    // An admin id that does not exist is bad input, not a "403 missing_role".
    let out = bin()
        .args(["explain", "--routes"])
        .arg(core_routes())
        .args([
            "--database-url",
            &db.url,
            "--admin",
            "nobody-such",
            "GET",
            "/ops",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--admin nobody-such: no such admin"));
    // Nor is an id that differs only in case from one Console holds under a case-blind collation
    // of its own (before, a review: explained as an admin with sessions).
    sqlx::raw_sql(
        "CREATE COLLATION public.blind (provider = icu, locale = 'und-u-ks-level2', deterministic = false); \
         ALTER TABLE admins DROP CONSTRAINT admins_pkey CASCADE; \
         ALTER TABLE admins ALTER COLUMN id TYPE text COLLATE public.blind; \
         INSERT INTO admins (id, email) VALUES ('twin-x', 'twin-x@example.test');",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let out = bin()
        .args(["explain", "--routes"])
        .arg(core_routes())
        .args([
            "--database-url",
            &db.url,
            "--admin",
            "TWIN-X",
            "GET",
            "/ops",
        ])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(64),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("--admin TWIN-X: no such admin"));
}

#[tokio::test]
async fn explain_shows_rule_provenance_and_decision() {
    let db = TestDb::new().await;
    let admin = db.admin("ex@example.test").await;
    db.join_group(&admin, "raxx-devops-team").await;
    db.break_glass(&admin, 600.0).await;
    // `rbac-gateway explain` over the core fixture; `kill` sets FLAG_RBAC_V2.
    let explain = |admin: &str, path: &str, kill: Option<&str>| {
        let mut c = bin_as_suite();
        c.args(["explain", "--routes"]).arg(core_routes()).args([
            "--database-url",
            &db.url,
            "--admin",
            admin,
            "GET",
            path,
        ]);
        if let Some(flag) = kill {
            c.env("FLAG_RBAC_V2", flag);
        }
        c.output().unwrap()
    };
    let out = explain(&admin, "/console/customers/invite", None);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("rule: GET /console/customers/invite ("),
        "{stdout}"
    );
    assert!(stdout.contains("core.toml:10:1)"), "{stdout}");
    assert!(
        stdout.contains("requires: role:console-invite-admin"),
        "{stdout}"
    );
    assert!(stdout.contains("console-secrets-user: break-glass session -> group break-glass -> console-secrets-admin -> inherits console-secrets-user"), "{stdout}");
    assert!(
        stdout.contains("console-audit-user: group raxx-devops-team -> console-audit-user"),
        "{stdout}"
    );
    assert!(stdout.contains("decision: allow"), "{stdout}");
    let out = explain(&admin, "/secrets/x/sop", None);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("decision: allow"), "{stdout}");

    // An admin without roles, explained with and without the kill switch (read like `serve`
    // reads it: the FLAG_RBAC_V2 variable or --flag-rbac-v2).
    let nobody = db.admin("ex-nobody@example.test").await;
    let out = explain(&nobody, "/ops", None);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("decision: 403 denied"), "{stdout}");
    let out = explain(&nobody, "/ops", Some("0"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("decision: forward"), "{stdout}");
}

#[test]
fn configuration_reference_matches_the_cli() {
    // docs/configuration.md holds every command's reference, `serve`'s first (the README links it).
    let commands = [
        "serve",
        "migrate",
        "check",
        "explain",
        "drift",
        "rollout",
        "diff",
        "matrix",
        "sweep",
        "mapping push",
        "mapping activate",
        "mapping rollback",
        "mapping history",
        "mapping show",
        "cockpit",
        "test",
    ];
    let file = "docs/configuration.md";
    let out = Command::new("bash")
        .arg(root().join("scripts/config-reference.sh"))
        .arg(env!("CARGO_BIN_EXE_rbac-gateway"))
        .args(commands)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let generated = String::from_utf8(out.stdout).unwrap();
    assert!(
        generated.contains("| `--"),
        "no option table for {commands:?}"
    );
    // Every variable `--help` names is in the table's environment column, also one whose
    // value clap hides (`[env: NAME]`, a secret): the generator once left those out.
    let mut named = 0;
    for cmd in &commands {
        let help = Command::new(env!("CARGO_BIN_EXE_rbac-gateway"))
            .args([cmd, "--help"])
            .env_clear()
            .output()
            .unwrap();
        let help = String::from_utf8_lossy(&help.stdout).to_string();
        let heading = format!("`rbac-gateway {cmd}`\n");
        let section = generated
            .split("### ")
            .find(|s| s.starts_with(&heading))
            .unwrap_or_else(|| panic!("no {heading} in the generated reference"));
        let mut rest = help.as_str();
        while let Some(i) = rest.find("[env: ") {
            let var: String = rest[i + 6..]
                .chars()
                .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            rest = &rest[i + 6 + var.len()..];
            named += 1;
            assert!(
                section.contains(&format!("| `{var}` |")),
                "{cmd}: {var} is missing from the environment column of its reference"
            );
        }
    }
    assert!(named > 0, "{commands:?}: --help names no variable");
    let text = std::fs::read_to_string(root().join(file)).unwrap();
    let start = text
        .find("<!-- config-reference:start -->\n")
        .expect("marker")
        + "<!-- config-reference:start -->\n".len();
    let end = text.find("<!-- config-reference:end -->").expect("marker");
    assert!(
        text[start..end] == generated,
        "{file}'s configuration reference is stale: regenerate it with python3 scripts/update-config-reference.py"
    );
}

#[test]
fn check_app_routes_finds_uncovered_and_stale_rules() {
    let dir = tempfile::tempdir().unwrap();
    let app = dir.path().join("app.py");
    std::fs::write(
        &app,
        "from flask import Flask\napp = Flask(__name__)\n\
         @app.route('/ops')\ndef ops(): return 'x'\n\
         @app.route('/console/customers/<int:id>', methods=['GET', 'POST'])\ndef customer(id): return 'x'\n\
         @app.route('/console/customers/<int:id>/danger-zone')\ndef danger(id): return 'x'\n\
         @app.route('/items/<uuid:a>')\ndef item_by_uuid(a): return 'x'\n\
         @app.route('/items/<b>')\ndef item_by_name(b): return 'x'\n\
         @app.route('/reports', strict_slashes=False)\ndef reports(): return 'x'\n\
         @app.route('/price/<float:p>')\ndef price(p): return 'x'\n\
         @app.route('/console/audit')\ndef audit(): return 'x'\n",
    )
    .unwrap();
    let dump = Command::new(tool("python3"))
        .arg(root().join("scripts/dump_flask_routes.py"))
        .arg("app:app")
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(
        dump.status.success(),
        "{}",
        String::from_utf8_lossy(&dump.stderr)
    );
    let json = dir.path().join("routes.json");
    std::fs::write(&json, &dump.stdout).unwrap();
    let routes = dir.path().join("r.toml");
    std::fs::write(
        &routes,
        routes_text(&[
            Route::get("/ops").roles(&["console-manager"]),
            Route::new(&["GET", "POST"], "/console/customers/<int:cid>")
                .roles(&["console-audit-user"]),
            Route::get("/replay").roles(&["console-manager"]),
            Route::get("/static/<path:filename>").access("public"),
            Route::get("/console/<page>").roles(&["console-user"]),
        ]),
    )
    .unwrap();
    let out = bin()
        .arg("check")
        .arg("--routes")
        .arg(&routes)
        .arg("--app-routes")
        .arg(&json)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("routes.json:"), "{stdout}");
    assert!(stdout.contains("Console route GET /console/customers/<int:id>/danger-zone (endpoint danger) has no gateway rule"), "{stdout}");
    assert!(
        stdout.contains(":11:1: gateway rule GET /replay matches no Console route"),
        "{stdout}"
    );
    assert!(
        !stdout.contains("GET /ops"),
        "covered routes are not reported: {stdout}"
    );
    // Werkzeug tries /items/<uuid:a> first only because Console registered it first.
    assert!(stdout.contains("Console routes /items/<b> and /items/<uuid:a> (endpoints item_by_name and item_by_uuid) have a segment Werkzeug weighs equally"), "{stdout}");
    assert!(
        stdout.contains("Console tries /items/<uuid:a> first"),
        "{stdout}"
    );
    assert!(
        stdout.contains("Console route GET /reports (endpoint reports) has strict_slashes=False"),
        "{stdout}"
    );
    assert!(stdout.contains("Console route GET /price/<float:p> (endpoint price) cannot be expressed in routes.toml (unknown converter 'float'"), "{stdout}");
    assert!(
        !stdout.contains("GET /price/<float:p> (endpoint price) has no gateway rule"),
        "{stdout}"
    );
    // Not denied: another gateway rule takes its requests.
    assert!(stdout.contains("Console route GET /console/audit (endpoint audit) has no gateway rule: its requests (e.g. GET /console/audit) are decided by the gateway rule GET /console/<page> (line 21)"), "{stdout}");
    assert!(
        !stdout.contains("/static"),
        "Flask's static rule is covered: {stdout}"
    );
}

/// Issue 11 point 4: `check --database-url` checks every table and column `serve` uses, and
/// the change-feed triggers and the functions the lookups call (each missing one used to pass the
/// check and fail at run time, or never fail at all).
#[tokio::test]
async fn check_names_every_missing_column_table_and_trigger_serve_needs() {
    let db = TestDb::new().await;
    for stmt in [
        "ALTER TABLE access_audit_events DROP COLUMN mapping_version",
        "ALTER TABLE rbac_ticket_grants DROP COLUMN ticket_id CASCADE",
        "DROP TABLE rbac_change_log",
        "ALTER TABLE admins DISABLE TRIGGER rbac_gateway_change",
        "DROP FUNCTION rbac_gateway_session_principals(text[], boolean)",
        "ALTER FUNCTION rbac_gateway_log_change() SECURITY INVOKER",
        "ALTER FUNCTION rbac_gateway_break_glass_roles() SET search_path = public",
        "GRANT CREATE ON SCHEMA public TO PUBLIC",
    ] {
        sqlx::query(stmt).execute(&db.pool).await.unwrap();
    }
    let out = bin()
        .args(["check", "--routes"])
        .arg(root().join("routes.toml"))
        .args(["--database-url", &db.url])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    for missing in [
        "access_audit_events.mapping_version",
        "rbac_ticket_grants.ticket_id",
        "rbac_change_log.txid",
        "rbac_change_log.admin_id",
        "rbac_gateway_change on admins",
        "function rbac_gateway_session_principals(text[], boolean) is missing",
        "function rbac_gateway_log_change() is missing, or not SECURITY DEFINER",
        "function rbac_gateway_break_glass_roles() is missing, or not SECURITY DEFINER",
        "warning: database: schema public is on the gateway's path and PUBLIC may create in it",
        "function rbac_gateway_break_glass_roles() has no pinned search_path",
    ] {
        assert!(stdout.contains(missing), "{missing} named: {stdout}");
    }
}

#[test]
fn a_report_piped_into_a_reader_that_goes_away_ends_quietly() {
    // `check ... | head -1`: the reader goes away before the report is written. The command ends
    // quietly with 141 (what a shell reports for a command ended by SIGPIPE), not with a panic
    // and exit 101.
    let mut child = bin()
        .args(["check", "--routes"])
        .arg(root().join("routes.toml"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_ne!(out.status.code(), Some(101), "{stderr}");
    // Either it wrote before the reader went away (0), or it saw the closed pipe (141).
    assert!(
        matches!(out.status.code(), Some(0) | Some(141)),
        "{:?} {stderr}",
        out.status
    );
}

/// `serve` on these addresses in front of `up`, with the test mapping; standard error piped.
fn serve_cmd(db_url: &str, up: &Upstream, listen: &str, admin: &str) -> Command {
    let mut cmd = bin();
    cmd.arg("serve")
        .args(["--listen", listen, "--admin-listen", admin])
        .args(["--upstream", &up.addr.to_string()])
        .arg("--routes")
        .arg(core_routes())
        .args(["--database-url", db_url])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    cmd
}

/// A gateway process, killed and reaped when dropped: a failing test leaves none behind.
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        // Errs when the process has ended already; nothing is left to stop then.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl std::ops::Deref for Running {
    type Target = std::process::Child;
    fn deref(&self) -> &std::process::Child {
        &self.0
    }
}

impl std::ops::DerefMut for Running {
    fn deref_mut(&mut self) -> &mut std::process::Child {
        &mut self.0
    }
}

/// Waits until the gateway whose admin listener is `admin` answers /readyz 200; panics with its
/// standard error if it exits first, or after 20 s.
async fn ready_or_exited(child: std::process::Child, admin: std::net::SocketAddr) -> Running {
    let mut child = Running(child);
    let started = std::time::Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
            panic!("the gateway exited ({status}):\n{err}");
        }
        let r = send(
            admin,
            b"GET /readyz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        )
        .await;
        if matches!(r, Ok(ref r) if r.status == 200) {
            return child;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(20),
            "not ready after 20 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn replicas_sharing_one_spool_through_an_outage_lose_no_row() {
    // Replicas side by side with one spool (one GATEWAY_AUDIT_SPOOL, or none: the default in
    // one directory) all start, and through a database outage every denial's row is stored
    // exactly once: appends and replays lock the file, so no replay empties rows another
    // replica appended after it read the file.
    let db = TestDb::new().await;
    let up = Upstream::start().await;
    let link = PgLink::new(&db.url).await;
    let (_, token) = db.admin_with_roles(&[]).await;
    let dir = tempfile::tempdir().unwrap();
    let mut replicas = Vec::new();
    let mut admins: Vec<std::net::SocketAddr> = Vec::new();
    for _ in 0..3 {
        let (port, admin) = (free_port(), free_port());
        let mut cmd = serve_cmd(
            &link.url,
            &up,
            &format!("127.0.0.1:{port}"),
            &format!("127.0.0.1:{admin}"),
        );
        cmd.current_dir(dir.path())
            .env_remove("GATEWAY_AUDIT_SPOOL")
            .args(["--db-timeout-ms", "300", "--cache-ttl", "60"]);
        let child = ready_or_exited(
            cmd.spawn().unwrap(),
            format!("127.0.0.1:{admin}").parse().unwrap(),
        )
        .await;
        let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        replicas.push((child, addr));
        admins.push(format!("127.0.0.1:{admin}").parse().unwrap());
    }
    let deny = |addr| {
        let token = token.clone();
        async move {
            let r = send(
                addr,
                format!("GET /ops HTTP/1.1\r\nHost: c\r\nCookie: console_session={token}\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            )
            .await
            .unwrap();
            assert_eq!(r.status, 403);
            r.request_id()
        }
    };
    let mut ids = Vec::new();
    for (_, addr) in &replicas {
        ids.push(deny(*addr).await); // primes the replica's cache; its row goes to the database
    }
    settle_at(&admins).await;
    link.cut();
    for round in 0..10 {
        for (_, addr) in &replicas {
            ids.push(deny(*addr).await);
        }
        if round == 4 {
            // Replicas replaying while others append: the database answers again.
            link.restore();
        }
    }
    let started = std::time::Instant::now();
    loop {
        let mut missing = 0;
        for id in &ids {
            let rows = db.audit_rows(id).await.len();
            assert!(rows <= 1, "request {id}: {rows} rows");
            missing += usize::from(rows == 0);
        }
        if missing == 0 {
            break;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(15),
            "{missing} of {} denials without their row after 15 s",
            ids.len()
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let spools: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(spools, ["rbac-gateway-audit.spool"], "one spool, shared");
    assert_eq!(
        std::fs::metadata(dir.path().join("rbac-gateway-audit.spool"))
            .unwrap()
            .len(),
        0,
        "the shared spool is emptied once replayed"
    );
    drop(replicas);
}

#[tokio::test]
async fn a_gateway_restarted_right_after_a_sigkill_gets_its_ports_and_spool() {
    // The spool lock and the port check refuse a second live gateway; a restart right after a
    // SIGKILL (not waited for: the old process may still be closing its files) must not be
    // taken for one.
    let db = TestDb::new().await;
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (listen, admin) = (
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    );
    let spool = dir.path().join("audit.spool");
    let start = || {
        serve_cmd(&db.url, &up, &listen, &admin)
            .arg("--audit-spool")
            .arg(&spool)
            .spawn()
            .unwrap()
    };
    let admin_addr: std::net::SocketAddr = admin.parse().unwrap();
    let ready = |child| ready_or_exited(child, admin_addr);
    let mut running = ready(start()).await;
    for _ in 0..5 {
        running.kill().unwrap();
        let next = start();
        let mut old = std::mem::replace(&mut running, ready(next).await);
        old.wait().unwrap();
    }
    let r = send(
        listen.parse().unwrap(),
        b"GET /auth/login HTTP/1.1\r\nHost: c\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    running.kill().unwrap();
    running.wait().unwrap();
}

/// A command whose database never answers says why (not sqlx's bare "pool timed out") and
/// exits 1; one pointed at a database that does not exist says so at once.
#[tokio::test]
async fn commands_name_the_reason_the_database_cannot_be_reached() {
    let (_closed, port) = closed_port();
    let refused = format!("postgres://postgres@127.0.0.1:{port}/postgres");
    let mut sweep = bin()
        .args(["sweep", "--once", "--database-url", &refused])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (status, err) = exit_of(&mut sweep, "sweep").await;
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(
        err.contains("cannot connect to the database (tried for 10 s)")
            && err.contains("Connection refused"),
        "{err}"
    );
    let db = TestDb::new().await;
    let (server, _) = db.url.rsplit_once('/').unwrap();
    let missing = format!("{server}/no_such_database");
    let started = std::time::Instant::now();
    let mut check = bin()
        .args([
            "check",
            "--routes",
            "routes.toml",
            "--database-url",
            &missing,
        ])
        .current_dir(root())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (status, err) = exit_of(&mut check, "check").await;
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("\"no_such_database\" does not exist"), "{err}");
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
}
