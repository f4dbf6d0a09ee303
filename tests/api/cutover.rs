//! The cutover steered from the gateway (issue 41): `matrix`, `diff`, `rollout`, `explain`
//! without `--admin`, and `check`'s stage problems, run as an operator runs them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use crate::cli::bin;
use crate::helpers::*;

fn production() -> PathBuf {
    root().join("routes.toml")
}

/// Runs the command; (exit code, stdout, stderr).
fn run(cmd: &mut std::process::Command) -> (Option<i32>, String, String) {
    let out = cmd.output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The `decision:` line of `explain` (`admin` None: without --admin, and without a database).
fn explained(db: &TestDb, admin: Option<&str>, method: &str, path: &str) -> String {
    let mut cmd = bin();
    cmd.args(["explain", "--routes"]).arg(production());
    if let Some(a) = admin {
        cmd.args(["--database-url", &db.url, "--admin", a]);
    }
    let (code, stdout, stderr) = run(cmd.args([method, path]));
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("decision: "))
        .unwrap_or_else(|| panic!("no decision line:\n{stdout}"))
        .to_string()
}

/// Every cell of `matrix` (groups from the database, and its admins: one member of each
/// seeded group) equals `explain` for a principal holding that group's roles, over every
/// method of every rule of the production mapping; the row without a session equals `explain`
/// without --admin.
#[tokio::test]
async fn every_matrix_cell_equals_explain_over_the_production_mapping() {
    let db = TestDb::new().await;
    let groups = [
        "break-glass",
        "ops-admins",
        "raxx-devops-team",
        "raxx-platform-admins",
        "raxx-support-team",
        "staging-admins",
    ];
    let mut member = BTreeMap::new();
    for g in groups {
        let a = db.admin(&format!("{g}@example.test")).await;
        db.join_group(&a, g).await;
        db.session(&a).await;
        member.insert(g.to_string(), a);
    }
    let (code, stdout, stderr) = run(bin()
        .args(["matrix", "--format", "json", "--routes"])
        .arg(production())
        .args(["--database-url", &db.url]));
    assert_eq!(code, Some(0), "{stderr}");
    let m: Value = serde_json::from_str(&stdout).unwrap();
    let columns = m["columns"].as_array().unwrap();
    let rows = m["rows"].as_array().unwrap();
    // 129 rules, 156 method and rule pairs; every one reached by a path of its own.
    assert!(columns.len() >= 150, "{} columns", columns.len());
    assert!(columns.iter().all(|c| c["path"].is_string()), "{columns:?}");
    let kinds: Vec<(&str, &str)> = rows
        .iter()
        .map(|r| (r["kind"].as_str().unwrap(), r["name"].as_str().unwrap()))
        .collect();
    assert_eq!(kinds.len(), 1 + 2 * groups.len(), "{kinds:?}");
    let mut compared = 0;
    let mut outcomes = std::collections::BTreeSet::new();
    for row in rows {
        let admin = match row["kind"].as_str().unwrap() {
            "no-session" => None,
            "group" => Some(member[row["name"].as_str().unwrap()].clone()),
            "admin" => Some(row["name"].as_str().unwrap().to_string()),
            other => panic!("{other}"),
        };
        for (col, cell) in columns.iter().zip(row["cells"].as_array().unwrap()) {
            let (method, path) = (
                col["method"].as_str().unwrap(),
                col["path"].as_str().unwrap(),
            );
            let want = explained(&db, admin.as_deref(), method, path);
            assert_eq!(
                cell["decision"].as_str().unwrap(),
                want,
                "{} {} on {method} {path} ({})",
                row["kind"],
                row["name"],
                col["rule"]
            );
            outcomes.insert(cell["outcome"].as_str().unwrap().to_string());
            compared += 1;
        }
    }
    assert_eq!(compared, columns.len() * rows.len());
    // The matrix is not one answer repeated: the production mapping gives each kind.
    for o in [
        "allowed",
        "denied",
        "redirected",
        "public",
        "machine",
        "gone",
        "reader_api",
    ] {
        assert!(outcomes.contains(o), "{o} in {outcomes:?}");
    }
    // A group's row and its member's row agree cell by cell (the member holds nothing else).
    for g in groups {
        let by = |kind: &str, name: &str| {
            rows.iter()
                .find(|r| r["kind"] == kind && r["name"] == name)
                .unwrap()["cells"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c["decision"].clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(by("group", g), by("admin", &member[g]), "{g}");
    }
}

#[tokio::test]
async fn matrix_notes_how_access_is_held_and_ticket_scope_in_every_format() {
    let db = TestDb::new().await;
    let support = db.admin("support@example.test").await;
    db.join_group(&support, "raxx-support-team").await;
    let glass = db.admin("glass@example.test").await;
    db.break_glass(&glass, 3600.0).await;
    // A ticket grant of console-audit-user for customer 7: opens the customer rules with
    // customer_param for that customer only.
    let (nobody, _) = db.admin_with_roles(&[]).await;
    sqlx::query(
        "INSERT INTO rbac_ticket_grants (id, user_id, role_id, customer_id, ticket_id, granted_by, expires_at_utc) \
         SELECT gen_random_uuid()::text, $1, id, 7, 'T-1', 'test', now() + interval '1 hour' FROM rbac_roles WHERE name = 'raptor-audit-support'",
    )
    .bind(&nobody)
    .execute(&db.pool)
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let routes = dir.path().join("r.toml");
    std::fs::write(
        &routes,
        routes_text(&[
            Route::get("/console/audit").permissions(&["console:audit:read"]),
            Route::get("/ops")
                .roles(&["console-manager"])
                .mode("shadow"),
            Route::get("/customers/<int:customer_id>/audit")
                .roles(&["raptor-audit-support"])
                .customer_param("customer_id"),
        ]),
    )
    .unwrap();
    let json = |extra: &[&str]| {
        let (code, stdout, stderr) = run(crate::cli::bin_as_suite()
            .args(["matrix", "--format", "json", "--routes"])
            .arg(&routes)
            .args(["--database-url", &db.url])
            .args(extra));
        assert_eq!(code, Some(0), "{stderr}");
        serde_json::from_str::<Value>(&stdout).unwrap()
    };
    let m = json(&[]);
    let cell = |m: &Value, name: &str, col: usize| {
        m["rows"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == name || r["email"] == name)
            .unwrap_or_else(|| panic!("{name}"))["cells"][col]
            .clone()
    };
    let c = cell(&m, "support@example.test", 0);
    assert_eq!(c["outcome"], "allowed");
    assert_eq!(c["by"], "permission:console:audit:read");
    assert_eq!(
        c["how"],
        "group raxx-support-team -> console-audit-user (carries console:audit:read)"
    );
    let c = cell(&m, "glass@example.test", 1);
    assert_eq!(c["outcome"], "allowed");
    assert!(
        c["how"]
            .as_str()
            .unwrap()
            .starts_with("break-glass session -> group break-glass -> console-manager"),
        "{c}"
    );
    let c = cell(&m, "support@example.test", 1);
    assert_eq!(
        (c["outcome"].as_str(), c["reach"].as_str()),
        (Some("shadow_denied"), Some("console"))
    );
    let c = cell(&m, &nobody, 2);
    assert_eq!(c["outcome"], "denied");
    assert_eq!(
        c["ticket"],
        "ticket grants, customers 7 (role:raptor-audit-support)"
    );
    // Without ticket grants (FLAG_TICKET_SCOPED_GRANTS=0), none is noted.
    let m = json(&["--flag-ticket-scoped-grants", "0"]);
    assert!(cell(&m, &nobody, 2).get("ticket").is_none());
    // The kill switch: every rule off, for everyone.
    let m = json(&["--flag-rbac-v2", "0"]);
    assert_eq!(cell(&m, "support@example.test", 0)["outcome"], "off");

    let (code, md, _) = run(crate::cli::bin_as_suite()
        .args(["matrix", "--routes"])
        .arg(&routes)
        .args(["--database-url", &db.url]));
    assert_eq!(code, Some(0));
    assert!(
        md.contains("## Groups x routes") && md.contains("## Admins x routes"),
        "{md}"
    );
    assert!(md.contains("| GET | `/ops` | - | shadow | 302 |"), "{md}");
    assert!(md.contains("403 +ticket"), "{md}");
    assert!(md.contains("allow (break-glass)"), "{md}");
    let (code, csv, _) = run(bin()
        .args(["matrix", "--format", "csv", "--routes"])
        .arg(&routes));
    assert_eq!(code, Some(0));
    let mut lines = csv.lines();
    assert_eq!(
        lines.next(),
        Some("kind,principal,email,method,rule,path,cluster,mode,outcome,status,reach,decision,by,how,ticket,version")
    );
    // Without the database: the request without a session and the 6 seeded groups, 3 cells each,
    // each line naming the mapping's version.
    let version = rbac_gateway::policy::mapping::version_of(&std::fs::read(&routes).unwrap());
    let cells: Vec<&str> = lines.collect();
    assert_eq!(cells.len(), 7 * 3);
    for cell in cells {
        assert!(cell.ends_with(&format!(",{version}")), "{cell}");
    }
    assert!(
        csv.contains(
            "group,raxx-support-team,,GET,GET /console/audit,/console/audit,,enforce,allowed,,yes,"
        ),
        "{csv}"
    );
    // A bad format is a usage error.
    let (code, _, _) = run(bin()
        .args(["matrix", "--format", "xml", "--routes"])
        .arg(&routes));
    assert_eq!(code, Some(64));
}

#[tokio::test]
async fn the_seeded_catalogue_is_the_one_migrate_writes() {
    // `matrix` and `diff` without a database read the groups from the migration's text.
    let db = TestDb::new().await;
    let read = rbac_gateway::cli::access::Catalogue::read(&db.gw())
        .await
        .unwrap();
    assert_eq!(read, rbac_gateway::cli::access::Catalogue::seeded());
}

#[test]
fn explain_without_admin_decides_a_request_without_a_session_and_needs_no_database() {
    let explain = |method: &str, path: &str| {
        let (code, stdout, stderr) = run(bin()
            .args(["explain", "--routes"])
            .arg(production())
            .args([method, path]));
        assert_eq!(code, Some(0), "{stdout}{stderr}");
        assert!(stdout.starts_with("session: none (no --admin)"), "{stdout}");
        let line = |p: &str| {
            stdout
                .lines()
                .find_map(|l| l.strip_prefix(p))
                .unwrap_or_else(|| panic!("{p}: {stdout}"))
                .to_string()
        };
        (line("decision: "), line("answer: "))
    };
    let (d, a) = explain("GET", "/console/customers/5?tab=a");
    assert_eq!(
        d,
        "302 redirect to /auth/login?next=%2Fconsole%2Fcustomers%2F5%3Ftab%3Da"
    );
    assert_eq!(a, "302");
    assert_eq!(
        explain("GET", "/static/app.css"),
        (
            "forward (public)".into(),
            "forwarded (Console answers)".into()
        )
    );
    assert_eq!(explain("GET", "/api/rbac/me").1, "401");
    let gone = rbac_gateway::policy::mapping::Mapping::load(&production())
        .unwrap()
        .routes
        .iter()
        .find(|r| r.access == rbac_gateway::policy::mapping::Access::Gone)
        .map(|r| r.path.clone())
        .unwrap();
    assert_eq!(explain("GET", &gone).0, "404 gone");
    assert_eq!(explain("GET", "/console/%2e%2e/secrets").1, "400");
    assert_eq!(explain("GET", "/no/such/page").0, "403 denied (no_route)");
    // --admin still needs the database, and says so.
    let (code, _, stderr) = run(bin().args(["explain", "--routes"]).arg(production()).args([
        "--admin",
        "a1",
        "GET",
        "/console/customers/5",
    ]));
    assert_eq!(code, Some(64));
    assert!(stderr.contains("--admin needs --database-url"), "{stderr}");
}

/// A copy of the production mapping with `edit` applied (which must change it).
fn edited(dir: &Path, name: &str, edit: impl Fn(&str) -> String) -> PathBuf {
    let text = std::fs::read_to_string(production()).unwrap();
    let new = edit(&text);
    assert_ne!(new, text, "{name}: the edit applies");
    let p = dir.join(name);
    std::fs::write(&p, new).unwrap();
    p
}

fn diff_json(db: &TestDb, new: &Path) -> (Option<i32>, Value, String) {
    let (code, stdout, stderr) = run(bin()
        .args(["diff", "--json", "--database-url", &db.url])
        .arg(production())
        .arg(new));
    let v = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}{stderr}"));
    (code, v, stderr)
}

/// (gains, losses) of a principal, as "METHOD PATH".
fn shifts(report: &Value, name: &str) -> (Vec<String>, Vec<String>) {
    let p = report["principals"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("{name}"));
    let list = |k: &str| {
        p[k].as_array()
            .unwrap()
            .iter()
            .map(|s| {
                format!(
                    "{} {}",
                    s["method"].as_str().unwrap(),
                    s["path"].as_str().unwrap()
                )
            })
            .collect::<Vec<_>>()
    };
    (list("gains"), list("losses"))
}

#[tokio::test]
async fn diff_of_the_production_mapping_shows_exactly_each_change_and_the_admins_affected() {
    let db = TestDb::new().await;
    let support = db.admin("support@example.test").await;
    db.join_group(&support, "raxx-support-team").await;
    let devops = db.admin("devops@example.test").await;
    db.join_group(&devops, "raxx-devops-team").await;
    let platform = db.admin("platform@example.test").await;
    db.join_group(&platform, "raxx-platform-admins").await;
    let glass = db.admin("glass@example.test").await;
    db.break_glass(&glass, 3600.0).await;
    let (nobody, _) = db.admin_with_roles(&[]).await;
    let dir = tempfile::tempdir().unwrap();
    let audit = "path = \"/console/audit\"\nroles = [\"console-audit-user\"]\nblueprint = \"audit_viewer.py\"\ncluster = \"S2\"";
    let none = || (Vec::<String>::new(), Vec::<String>::new());
    let one = |s: &str| vec![s.to_string()];

    // 1. The role console-audit-user removed from GET /console/audit (console-manager instead).
    let p = edited(dir.path(), "role.toml", |t| {
        t.replacen(
            audit,
            &audit.replace("console-audit-user", "console-manager"),
            1,
        )
    });
    let (code, r, _) = diff_json(&db, &p);
    assert_eq!(code, Some(1));
    let rules = r["rules"].as_array().unwrap();
    assert_eq!(rules.len(), 1, "{rules:?}");
    assert_eq!(rules[0]["rule"], "GET /console/audit");
    assert_eq!(
        rules[0]["what"],
        serde_json::json!(["roles -console-audit-user +console-manager"])
    );
    let path = "GET /console/audit".to_string();
    assert_eq!(shifts(&r, "raxx-support-team"), (vec![], one(&path)));
    assert_eq!(shifts(&r, "raxx-devops-team"), (vec![], one(&path)));
    assert_eq!(shifts(&r, "break-glass"), (one(&path), vec![]));
    assert_eq!(shifts(&r, "raxx-platform-admins"), none());
    assert_eq!(shifts(&r, "(no session)"), none());
    assert_eq!(shifts(&r, &support), (vec![], one(&path)));
    assert_eq!(shifts(&r, &devops), (vec![], one(&path)));
    assert_eq!(shifts(&r, &glass), (one(&path), vec![]));
    assert_eq!(shifts(&r, &platform), none());
    assert_eq!(shifts(&r, &nobody), none());
    // The text report names the admins, with counts.
    let (code, text, _) = run(bin()
        .args(["diff", "--database-url", &db.url])
        .arg(production())
        .arg(&p));
    assert_eq!(code, Some(1));
    assert!(
        text.contains("~ GET /console/audit: roles -console-audit-user +console-manager\n"),
        "{text}"
    );
    assert!(
        text.contains(&format!("admins who gain access: 1 ({glass})")),
        "{text}"
    );
    let lose = text
        .lines()
        .find(|l| l.starts_with("admins who lose access: "))
        .unwrap();
    assert!(
        lose.starts_with("admins who lose access: 2 (")
            && lose.contains(&support)
            && lose.contains(&devops),
        "{lose}"
    );
    assert!(
        text.contains("group raxx-support-team: gains 0, loses 1"),
        "{text}"
    );

    // 2. A rule added: GET /console/cutover-report for console-audit-user.
    let p = edited(dir.path(), "added.toml", |t| {
        let added = Route::get("/console/cutover-report")
            .roles(&["console-audit-user"])
            .cluster("S2");
        format!("{t}\n{}", added.to_toml())
    });
    let (code, r, _) = diff_json(&db, &p);
    assert_eq!(code, Some(1));
    let rules = r["rules"].as_array().unwrap();
    assert_eq!(rules.len(), 1, "{rules:?}");
    assert_eq!(
        (rules[0]["change"].as_str(), rules[0]["rule"].as_str()),
        (Some("added"), Some("GET /console/cutover-report"))
    );
    let added = one("GET /console/cutover-report");
    for who in [
        "raxx-support-team",
        "raxx-devops-team",
        "raxx-platform-admins",
        &support,
        &devops,
        &platform,
    ] {
        assert_eq!(shifts(&r, who), (added.clone(), vec![]), "{who}");
    }
    for who in [
        "break-glass",
        "ops-admins",
        "staging-admins",
        "(no session)",
        &glass,
        &nobody,
    ] {
        assert_eq!(shifts(&r, who), none(), "{who}");
    }

    // 3. A rule moved to another cluster: listed, no access change, exit 0.
    let p = edited(dir.path(), "moved.toml", |t| {
        t.replacen(
            audit,
            &audit.replace("cluster = \"S2\"", "cluster = \"S3\""),
            1,
        )
    });
    let (code, r, _) = diff_json(&db, &p);
    assert_eq!(code, Some(0));
    let rules = r["rules"].as_array().unwrap();
    assert_eq!(rules.len(), 1, "{rules:?}");
    assert_eq!(rules[0]["what"], serde_json::json!(["cluster S2 -> S3"]));
    assert_eq!(rules[0]["access"], false);
    assert_eq!(r["access_changes"], false);
    // ... unless the new cluster sets another mode: the move changes the rule's mode.
    let p = edited(dir.path(), "moved-shadow.toml", |t| {
        t.replacen(
            audit,
            &audit.replace("cluster = \"S2\"", "cluster = \"S9\""),
            1,
        )
        .replacen("[cluster.S9]\n", "[cluster.S9]\nmode = \"shadow\"\n", 1)
    });
    let (code, r, _) = diff_json(&db, &p);
    assert_eq!(code, Some(1));
    let what: Vec<String> = r["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| format!("{}: {}", c["rule"].as_str().unwrap(), c["what"]))
        .collect();
    assert_eq!(what.len(), 2, "{what:?}");
    assert!(
        what.contains(
            &"GET /console/audit: [\"mode enforce -> shadow\",\"cluster S2 -> S9\"]".to_string()
        ),
        "{what:?}"
    );
    // Shadow mode forwards what it would deny: ops-admins now reach both S9 rules, Console
    // deciding.
    assert_eq!(
        shifts(&r, "ops-admins"),
        (
            vec![path.clone(), "GET /console/rbac/grants/audit".to_string()],
            vec![]
        )
    );

    // The same file: no change, exit 0.
    let (code, r, _) = diff_json(&db, &production());
    assert_eq!(code, Some(0));
    assert!(r["rules"].as_array().unwrap().is_empty());
}

#[test]
fn diff_exits_64_on_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("broken.toml");
    std::fs::write(&broken, "[[route]]\nmethods = [\"GET\"\n").unwrap();
    for (old, new) in [
        (production(), dir.path().join("missing.toml")),
        (broken.clone(), production()),
    ] {
        let (code, _, stderr) = run(bin().arg("diff").arg(&old).arg(&new));
        assert_eq!(code, Some(64), "{stderr}");
        assert!(stderr.contains("the mapping is invalid"), "{stderr}");
    }
    let (code, _, _) = run(bin().args(["diff"]).arg(production()));
    assert_eq!(code, Some(64), "one file is bad usage");
    // Without a database: the seeded groups, and no admin line.
    let (code, stdout, _) = run(bin().arg("diff").arg(production()).arg(production()));
    assert_eq!(code, Some(0));
    assert!(
        stdout.ends_with("no access change\n") && !stdout.contains("admins who"),
        "{stdout}"
    );
}

#[test]
fn check_reports_a_protected_route_in_no_cluster_and_an_undeclared_cluster() {
    let dir = tempfile::tempdir().unwrap();
    // A rule without cluster, in a file that declares clusters: an error (exit 1).
    let p = edited(dir.path(), "nocluster.toml", |t| {
        t.replacen("cluster = \"S2\"\n", "", 1)
    });
    let (code, stdout, _) = run(bin().args(["check", "--routes"]).arg(&p));
    assert_eq!(code, Some(1), "{stdout}");
    let line = stdout
        .lines()
        .find(|l| l.contains("is in no cluster"))
        .unwrap_or_else(|| panic!("{stdout}"));
    assert!(
        line.starts_with(&format!("{}:", p.display())) && !line.contains("warning"),
        "{line}"
    );
    // A cluster the file does not declare: refused, located at the rule's key (exit 64).
    let p = edited(dir.path(), "undeclared.toml", |t| {
        t.replacen("cluster = \"S2\"\n", "cluster = \"S22\"\n", 1)
    });
    let (code, stdout, _) = run(bin().args(["check", "--routes"]).arg(&p));
    assert_eq!(code, Some(64), "{stdout}");
    assert!(stdout.contains(":11: cluster \"S22\" is not declared (declared: S1, S2, S3, S4, S5, S6, S7, S8, S9, machine, ported, public;"), "{stdout}");
    // serve refuses it too, before binding.
    let (code, _, stderr) = run(bin()
        .args([
            "serve",
            "--database-url",
            "postgres://127.0.0.1:1/x",
            "--routes",
        ])
        .arg(&p));
    assert_eq!(code, Some(64));
    assert!(
        stderr.contains("cluster \"S22\" is not declared"),
        "{stderr}"
    );
}

/// Waits until the database holds `n` mapping versions.
async fn versions(db: &TestDb, n: i64) {
    let have = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM rbac_gateway_mapping_versions")
            .fetch_one(&db.pool)
            .await
            .unwrap()
    };
    eventually(
        Duration::from_secs(20),
        &format!("{n} mapping version rows"),
        || async { have().await >= n },
    )
    .await;
    assert_eq!(have().await, n, "one row per version");
}

/// Clusters S1 to S5 and `public`, one rule each (S2's mode is `SOAK_S2`, replaced by each test).
fn staged_routes() -> String {
    let clusters = r#"
[cluster.S1]
title = "ready"
mode = "shadow"
[cluster.S2]
title = "not soaked long enough"
mode = "SOAK_S2"
[cluster.S3]
title = "drift"
mode = "shadow"
[cluster.S4]
title = "blocked"
mode = "shadow"
blocked_by = ["AMBIGUOUS-4"]
[cluster.S5]
title = "enforced"
[cluster.public]

"#;
    let rules: String = [
        Route::get("/s1").roles(&["console-user"]).cluster("S1"),
        Route::new(&["GET", "POST"], "/s2")
            .roles(&["console-user"])
            .cluster("S2"),
        Route::get("/s3").roles(&["console-user"]).cluster("S3"),
        Route::get("/s4").roles(&["console-user"]).cluster("S4"),
        Route::get("/s5").roles(&["console-user"]).cluster("S5"),
        Route::get("/login").access("public").cluster("public"),
    ]
    .iter()
    .map(Route::to_toml)
    .collect();
    format!("{clusters}{rules}")
}

/// Shadow and drift rows of `route`, `age` ago.
async fn rows(db: &TestDb, route: &str, event: &str, n: usize, age: &str) {
    for _ in 0..n {
        sqlx::query(
            "INSERT INTO access_audit_events (id, event_type, admin_id, method, path, route, reason, request_id, created_at_utc) \
             VALUES (gen_random_uuid()::text, $1, 'a', 'GET', '/x', $2, 'missing_role', gen_random_uuid()::text, now() - $3::interval)",
        )
        .bind(event)
        .bind(route)
        .bind(age)
        .execute(&db.pool)
        .await
        .unwrap();
    }
}

#[tokio::test]
async fn rollout_gives_each_cluster_its_verdict_from_recorded_versions_and_shadow_rows() {
    let db = TestDb::new().await;
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let v1 = dir.path().join("v1.toml");
    std::fs::write(&v1, staged_routes().replace("SOAK_S2", "off")).unwrap();
    // A gateway records the mapping it loads: one row, whoever else loads the same.
    let gw = Gateway::start(GatewayOpts::new(&v1, &db, up.addr)).await;
    versions(&db, 1).await;
    let gw2 = Gateway::start(GatewayOpts::new(&v1, &db, up.addr)).await;
    eventually(
        Duration::from_secs(20),
        "the second gateway saw its version recorded",
        || async { gw2.log().contains("already the fleet's latest") },
    )
    .await;
    versions(&db, 1).await;
    assert!(
        gw2.metric("rbac_gateway_route_info{cluster=\"S1\",mode=\"shadow\",route=\"GET /s1\"}")
            .await
            == 1.0
    );
    drop(gw2);
    sqlx::query(
        "UPDATE rbac_gateway_mapping_versions SET loaded_at_utc = now() - interval '10 days'",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    // S2 goes from off to shadow: a reload records the new version.
    std::fs::write(&gw.routes, staged_routes().replace("SOAK_S2", "shadow")).unwrap();
    versions(&db, 2).await;
    sqlx::query("UPDATE rbac_gateway_mapping_versions SET loaded_at_utc = now() - interval '2 days' WHERE id = (SELECT max(id) FROM rbac_gateway_mapping_versions)")
        .execute(&db.pool)
        .await
        .unwrap();
    eventually(
        Duration::from_secs(20),
        "route_info follows the reload",
        || async {
            gw.metric(
                "rbac_gateway_route_info{cluster=\"S2\",mode=\"shadow\",route=\"GET,POST /s2\"}",
            )
            .await
                == 1.0
        },
    )
    .await;
    assert_eq!(
        gw.metric("rbac_gateway_route_info{cluster=\"S2\",mode=\"off\",route=\"GET,POST /s2\"}")
            .await,
        0.0
    );
    // A shadow denial through the gateway on S3: counted per route (the dashboard's panels),
    // and, Console (the test upstream) answering 200, a drift row beside the shadow row.
    let (_, token) = db.admin_with_roles(&[]).await;
    assert_eq!(gw.status("/s3", Some(&token)).await, 200);
    assert_eq!(
        gw.metric("rbac_gateway_shadow_denials_total{route=\"GET /s3\"}")
            .await,
        1.0
    );
    let s3_rows = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM access_audit_events WHERE route = 'GET /s3' \
             AND event_type IN ('rbac_drift', 'access_denied_shadow')",
        )
        .fetch_one(&db.pool)
        .await
        .unwrap()
    };
    eventually(
        Duration::from_secs(20),
        "the shadow and drift rows of GET /s3",
        || async { s3_rows().await >= 2 },
    )
    .await;
    assert_eq!(
        s3_rows().await,
        2,
        "one shadow row and one drift row of GET /s3"
    );
    drop(gw);
    // The window's rows: S1 would-be denials only (its drift is older than the window), S3 one
    // more drift row.
    rows(&db, "GET /s1", "access_denied_shadow", 3, "1 day").await;
    rows(&db, "GET /s1", "rbac_drift", 2, "9 days").await;
    rows(&db, "GET /s3", "rbac_drift", 1, "3 hours").await;
    rows(&db, "GET /s5", "access_denied", 4, "1 hour").await;

    let staged = gw_routes(
        dir.path(),
        "live.toml",
        &staged_routes().replace("SOAK_S2", "shadow"),
    );
    let rollout = |routes: &Path, extra: &[&str]| {
        run(bin()
            .args(["rollout", "--json", "--database-url", &db.url, "--routes"])
            .arg(routes)
            .args(extra))
    };
    let (code, stdout, stderr) = rollout(&staged, &[]);
    assert_eq!(
        code,
        Some(0),
        "nothing promoted: the gate passes\n{stdout}{stderr}"
    );
    let r: Value = serde_json::from_str(&stdout).unwrap();
    let cluster = |r: &Value, c: &str| {
        r["clusters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["cluster"] == c)
            .unwrap_or_else(|| panic!("{c}"))
            .clone()
    };
    let s1 = cluster(&r, "S1");
    assert_eq!(s1["verdict"], "ready", "{s1}");
    assert_eq!(
        (s1["shadow_denials"].as_i64(), s1["drift"].as_i64()),
        (Some(3), Some(0))
    );
    let s2 = cluster(&r, "S2");
    assert_eq!(s2["verdict"], "not_ready");
    assert!(
        s2["reasons"][0]
            .as_str()
            .unwrap()
            .starts_with("in shadow for 2d of 7d (since "),
        "{s2}"
    );
    let s3 = cluster(&r, "S3");
    assert_eq!(s3["verdict"], "not_ready");
    assert_eq!(
        s3["reasons"],
        serde_json::json!(["2 drift row(s) in the window"])
    );
    let s4 = cluster(&r, "S4");
    assert_eq!(s4["verdict"], "not_ready");
    assert_eq!(s4["reasons"], serde_json::json!(["blocked by AMBIGUOUS-4"]));
    assert_eq!(cluster(&r, "S5")["verdict"], "enforced");
    assert_eq!(cluster(&r, "public")["verdict"], "not_applicable");
    // A longer window reaches S1's old drift and its soak before the records: not ready.
    let (_, stdout, _) = rollout(&staged, &["--since", "12d"]);
    let s1 = cluster(&serde_json::from_str(&stdout).unwrap(), "S1");
    assert_eq!(s1["verdict"], "not_ready", "{s1}");
    assert_eq!(s1["drift"], 2);

    // A file enforcing S1 (ready) passes the gate; one enforcing S2 too fails it.
    let promote = |c: &str, text: &str| {
        text.replacen(
            &format!("[cluster.{c}]\ntitle"),
            &format!("[cluster.{c}]\nmode = \"enforce\"\ntitle"),
            1,
        )
    };
    let base = staged_routes()
        .replace("SOAK_S2", "shadow")
        .replace("mode = \"shadow\"\n[cluster.S2]", "[cluster.S2]");
    let s1_only = gw_routes(dir.path(), "s1.toml", &promote("S1", &base));
    let (code, stdout, _) = run(bin()
        .args(["rollout", "--database-url", &db.url, "--routes"])
        .arg(&s1_only));
    assert_eq!(code, Some(0), "{stdout}");
    assert!(
        stdout.contains("[this file enforces it]") && stdout.contains("gate: pass"),
        "{stdout}"
    );
    let both = gw_routes(
        dir.path(),
        "s1s2.toml",
        &promote("S1", &base).replacen(
            "mode = \"shadow\"\n[cluster.S3]",
            "mode = \"enforce\"\n[cluster.S3]",
            1,
        ),
    );
    let (code, stdout, stderr) = run(bin()
        .args(["rollout", "--database-url", &db.url, "--routes"])
        .arg(&both));
    assert_eq!(code, Some(1), "{stdout}");
    assert!(
        stdout.contains("gate: FAIL S2 (enforced by this file): in shadow for 2d of 7d"),
        "{stdout}"
    );
    assert!(!stdout.contains("gate: FAIL S1"), "{stdout}");
    assert!(stderr.contains("not ready: S2"), "{stderr}");
    // --cluster: 0 for ready or enforced, 1 otherwise, 64 for a cluster no rule names.
    for (c, want) in [("S1", 0), ("S5", 0), ("S3", 1), ("S4", 1), ("S99", 64)] {
        let (code, _, stderr) = rollout(&staged, &["--cluster", c]);
        assert_eq!(code, Some(want), "{c}: {stderr}");
    }
    let (code, _, stderr) = rollout(&staged, &["--since", "soon"]);
    assert_eq!(code, Some(64), "{stderr}");
    // `drift --cluster`, the "7 days, zero drift" gate, judges the soak as `rollout` does: zero
    // drift over a cluster the fleet ran in shadow for 2 days of the 7 is no pass, whatever the
    // file says (before, S2 passed, and so did a cluster the fleet never ran in shadow).
    let drift = |c: &str| {
        run(bin()
            .args([
                "drift",
                "--database-url",
                &db.url,
                "--cluster",
                c,
                "--routes",
            ])
            .arg(&staged))
    };
    for (c, want, says) in [
        ("S1", 0, "zero drift"),
        (
            "S5",
            0,
            "cluster S5: the fleet enforces every protected rule of it",
        ),
        (
            "S2",
            1,
            "cluster S2: not in shadow for the whole window: in shadow for 2d of 7d",
        ),
        ("S3", 1, "cluster S3: 1 shadow rule(s), 2 drift event(s)"),
    ] {
        let (code, stdout, stderr) = drift(c);
        assert_eq!(code, Some(want), "{c}: {stdout}{stderr}");
        assert!(stdout.contains(says), "{c}: {stdout}");
    }
    let (_, stdout, stderr) = drift("S2");
    assert!(!stdout.contains("zero drift"), "{stdout}");
    assert!(
        stderr.contains("cluster S2 has not run in shadow in the fleet for the whole window"),
        "{stderr}"
    );
}

fn gw_routes(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[tokio::test]
async fn rollout_without_records_calls_nothing_ready_and_drift_reads_the_same_window() {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let p = gw_routes(
        dir.path(),
        "r.toml",
        &staged_routes().replace("SOAK_S2", "shadow"),
    );
    let (code, stdout, _) = run(bin()
        .args(["rollout", "--database-url", &db.url, "--routes"])
        .arg(&p));
    // The file enforces S5 (no mode: [defaults]) and nothing says the fleet does: the gate
    // fails closed.
    assert_eq!(code, Some(1), "{stdout}");
    assert!(
        stdout.contains("fleet: no mapping version recorded yet"),
        "{stdout}"
    );
    assert!(
        stdout.contains("gate: FAIL S5 (enforced by this file): no record of the mapping"),
        "{stdout}"
    );
    assert!(
        stdout.contains("GET /s1 unknown (file: shadow)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("not ready: no record of the mapping the fleet runs"),
        "{stdout}"
    );
    rows(&db, "GET /s3", "rbac_drift", 1, "3 hours").await;
    let (code, stdout, _) = run(bin()
        .args(["drift", "--database-url", &db.url, "--routes"])
        .arg(&p));
    assert_eq!(code, Some(1));
    assert!(
        stdout.contains("DRIFT GET /s3 [S3]: 1 x missing_role"),
        "{stdout}"
    );
}
