//! The mapping's tests (issue 70): `rbac-gateway test` as an operator and a CI job run it, the
//! suite the repository ships for Console's mapping, `mapping push` refusing a version whose
//! tests fail, and the record it keeps.

use std::path::Path;

use crate::cli::bin;
use crate::helpers::*;

/// A small mapping of Console's shape: a secrets rule, a public one, a machine one.
const MAPPING: &str = r#"[cluster.S8]
[cluster.public]
[cluster.machine]

[[route]]
methods = ["GET"]
path = "/secrets"
roles = ["console-secrets-admin"]
cluster = "S8"

[[route]]
methods = ["GET"]
path = "/secrets/<name>/sop"
roles = ["console-secrets-user"]
cluster = "S8"

[[route]]
methods = ["GET"]
path = "/health"
access = "public"
cluster = "public"

[[route]]
methods = ["POST"]
path = "/api/internal/audit/ingest"
access = "machine"
cluster = "machine"
"#;

/// Its tests: they pass on [`MAPPING`].
const TESTS: &str = r#"[principal.support]
groups = ["raxx-support-team"]

[[case]]
name = "support cannot list the secrets"
who = "support"
request = "GET /secrets"
expect = "deny"
reason = "missing_role"

[[case]]
name = "platform admins list the secrets"
who = { groups = ["raxx-platform-admins"] }
request = "GET /secrets"
expect = "allow"
rule = "GET /secrets"

[[case]]
name = "I-7: machine routes are never session-gated"
every = { access = "machine" }
who = "no-session"
expect = "machine"

[[case]]
name = "S8 requires a secrets role"
every = { cluster = "S8" }
requires_one_of = ["console-secrets-admin", "console-secrets-user"]
"#;

/// A directory with `routes.toml` (`mapping`) and `routes.test.toml` (`tests`).
fn project(mapping: &str, tests: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("routes.toml"), mapping).unwrap();
    std::fs::write(dir.path().join("routes.test.toml"), tests).unwrap();
    dir
}

fn test_cmd(dir: &Path, extra: &[&str]) -> (Option<i32>, String, String) {
    let out = bin()
        .current_dir(dir)
        .arg("test")
        .args(extra)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_tests_beside_the_mapping_run_and_a_broken_edit_fails_with_what_and_why() {
    let dir = project(MAPPING, TESTS);
    let (code, out, err) = test_cmd(dir.path(), &[]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("tests: routes.test.toml"), "{out}");
    assert!(out.ends_with("PASS: 4/4\n"), "{out}");
    // The edit a review could miss: support gets the secrets list.
    let broken = MAPPING.replace(
        "roles = [\"console-secrets-admin\"]",
        "roles = [\"console-secrets-admin\", \"console-audit-user\"]",
    );
    std::fs::write(dir.path().join("routes.toml"), broken).unwrap();
    let (code, out, err) = test_cmd(dir.path(), &[]);
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(err.contains("2 of 4 cases failed"), "{err}");
    for line in [
        "FAIL routes.test.toml:4: support cannot list the secrets",
        "  GET /secrets as support",
        "    expected deny, decided allow (role:console-audit-user)",
        "      rule: GET /secrets (routes.toml:5:1)",
        "      requires: role:console-secrets-admin | role:console-audit-user",
        "        console-audit-user: group raxx-support-team -> console-audit-user",
        "      decision: allow (granted by Role(\"console-audit-user\"))",
        "FAIL routes.test.toml:24: S8 requires a secrets role",
        "  offending rule GET /secrets (routes.toml:5:1)",
        "PASS: 2/4",
        "FAIL: 2/4",
    ] {
        assert!(out.lines().any(|l| l == line), "no line {line:?} in\n{out}");
    }
}

#[test]
fn json_junit_and_coverage_for_ci() {
    let dir = project(MAPPING, TESTS);
    let (code, out, err) = test_cmd(dir.path(), &["--format", "json", "--coverage"]);
    assert_eq!(code, Some(0), "{out}{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["total"], 4);
    assert_eq!(v["failed"], 0);
    assert_eq!(v["cases"][0]["name"], "support cannot list the secrets");
    assert_eq!(v["cases"][0]["line"], 4);
    // sha256sum of the one test file.
    assert_eq!(
        v["tests_sha256"],
        rbac_gateway::stores::mapping_store::sha256_hex(TESTS.as_bytes())
    );
    // Every rule was reached but the public one.
    let uncovered: Vec<&str> = v["uncovered"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["rule"].as_str().unwrap())
        .collect();
    assert_eq!(uncovered, ["GET /health"]);
    let broken = TESTS.replace("expect = \"machine\"", "expect = \"public\"");
    std::fs::write(dir.path().join("routes.test.toml"), broken).unwrap();
    let (code, out, _) = test_cmd(dir.path(), &["--format", "junit"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.starts_with("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites name=\"rbac-gateway test\" tests=\"4\" failures=\"1\" errors=\"0\">"), "{out}");
    assert!(
        out.contains("<testcase classname=\"routes.test.toml\" name=\"I-7: machine routes are never session-gated\" file=\"routes.test.toml\" line=\"18\">\n      <failure message=\"expected public, decided machine\" type=\"every\">offending rule POST /api/internal/audit/ingest (routes.toml:23:1)"),
        "{out}"
    );
    assert!(out.ends_with("</testsuites>\n"), "{out}");
}

#[test]
fn a_test_file_that_does_not_load_exits_64_with_file_line_and_why() {
    let dir = project(
        MAPPING,
        &TESTS.replace(
            "groups = [\"raxx-support-team\"]",
            "groups = [\"raxx-suport-team\"]",
        ),
    );
    let (code, out, err) = test_cmd(dir.path(), &[]);
    assert_eq!(code, Some(64), "{out}{err}");
    assert!(
        err.contains("routes.test.toml:1:1: group \"raxx-suport-team\" is not in the catalogue"),
        "{err}"
    );
    let dir = project(MAPPING, &format!("{TESTS}\n[[case]]\nwho = \"support\"\nrequest = \"GET /secrets\"\nexpected = \"deny\"\n"));
    let (code, _, err) = test_cmd(dir.path(), &[]);
    assert_eq!(code, Some(64), "{err}");
    assert!(
        err.contains("routes.test.toml:32:1: unknown field `expected`"),
        "{err}"
    );
    // The report CI reads says so too: an error in it, not an empty file.
    let (code, out, _) = test_cmd(dir.path(), &["--format", "junit"]);
    assert_eq!(code, Some(64), "{out}");
    assert!(out.starts_with("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites name=\"rbac-gateway test\" tests=\"1\" failures=\"0\" errors=\"1\">"), "{out}");
    assert!(
        out.contains("<error message=\"the tests do not load\" type=\"not_loaded\">")
            && out.contains("routes.test.toml:32:1: unknown field `expected`"),
        "{out}"
    );
    assert!(out.ends_with("</testsuites>\n"), "{out}");
    let (code, out, _) = test_cmd(dir.path(), &["--format", "json"]);
    assert_eq!(code, Some(64), "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["exit"], 64, "{out}");
    assert_eq!(v["total"], 0, "{out}");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("routes.test.toml:32:1: unknown field `expected`"),
        "{out}"
    );
    // No tests at all is no pass.
    let empty = tempfile::tempdir().unwrap();
    std::fs::write(empty.path().join("routes.toml"), MAPPING).unwrap();
    let (code, _, err) = test_cmd(empty.path(), &[]);
    assert_eq!(code, Some(64), "{err}");
    assert!(err.contains("no *.test.toml beside routes.toml"), "{err}");
    // Named files and directories run instead.
    let (code, out, err) = test_cmd(empty.path(), &[dir.path().to_str().unwrap()]);
    assert_eq!(code, Some(64), "{out}{err}");
}

#[test]
fn the_shipped_suite_passes_reaches_every_rule_and_covers_each_cluster() {
    let out = bin()
        .current_dir(root())
        .args(["test", "--format", "json", "--coverage"])
        .output()
        .unwrap();
    let (code, text) = code_and_output(&out);
    assert_eq!(code, Some(0), "{text}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["tests"][0], "routes.test.toml");
    assert_eq!(v["catalogue"], "the catalogue migrate seeds");
    assert_eq!(
        v["uncovered"],
        serde_json::json!([]),
        "every rule is reached"
    );
    let names: Vec<&str> = v["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    for cluster in ["S1", "S2", "S3", "S4", "S5", "S6", "S7", "S8", "S9"] {
        for what in ["no session", "holding nothing", "golden"] {
            assert!(
                names
                    .iter()
                    .any(|n| n.starts_with(cluster) && n.contains(what)),
                "{cluster}: no {what} case"
            );
        }
    }
    for invariant in ["I-4", "I-7", "003 §9", "003 I-6", "public:", "ported:"] {
        assert!(
            names.iter().any(|n| n.contains(invariant)),
            "no {invariant} case"
        );
    }
}

#[test]
fn the_shipped_suite_fails_edits_that_break_what_it_pins() {
    let shipped = std::fs::read_to_string(root().join("routes.toml")).unwrap();
    let tests = std::fs::read_to_string(root().join("routes.test.toml")).unwrap();
    // Each edit, and a case that must then fail.
    let edits: [(&str, String, &str); 4] = [
        (
            "S8 switched off",
            shipped.replace(
                "[cluster.S8]\ntitle = \"Secrets (last)\"",
                "[cluster.S8]\ntitle = \"Secrets (last)\"\nmode = \"off\"",
            ),
            "S8: every secrets rule requires a secrets role",
        ),
        (
            "AMBIGUOUS-3 decided for the read role",
            {
                let at = shipped
                    .find("path = \"/console/customers/<id>/<session_id>/revoke\"")
                    .unwrap();
                let role = at + shipped[at..].find("roles = [\"console-manager\"]").unwrap();
                format!(
                    "{}roles = [\"console-audit-user\"]{}",
                    &shipped[..role],
                    &shipped[role + "roles = [\"console-manager\"]".len()..]
                )
            },
            "003 I-6: AMBIGUOUS-3 stays at its narrowest option until decided (console-manager)",
        ),
        (
            "a public catch-all under /secrets",
            format!("{shipped}\n[[route]]\nmethods = [\"GET\"]\npath = \"/secrets/<path:rest>\"\naccess = \"public\"\ncluster = \"public\"\n"),
            "003 §9: no route under /secrets is reached by support, devops, ops or staging",
        ),
        (
            "a machine route behind a session",
            shipped.replace(
                "path = \"/api/webhooks/freescout/rbac\"\naccess = \"machine\"",
                "path = \"/api/webhooks/freescout/rbac\"\nroles = [\"console-user\"]",
            ),
            "I-7: freescout_webhook_rbac is a machine route",
        ),
    ];
    for (what, mapping, case) in edits {
        assert_ne!(mapping, shipped, "{what}: the edit changed nothing");
        let dir = project(&mapping, &tests);
        let (code, out, err) = test_cmd(dir.path(), &["--format", "json"]);
        assert_eq!(code, Some(1), "{what}: {err}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        let failed: Vec<&str> = v["cases"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["passed"] == false)
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert!(
            failed.contains(&case),
            "{what}: {case:?} did not fail; failed: {failed:#?}"
        );
    }
}

/// `rbac-gateway ARGS... --database-url URL`: exit code, stdout, stderr.
fn with_db(url: &str, dir: &Path, args: &[&str]) -> (Option<i32>, String, String) {
    let out = bin()
        .current_dir(dir)
        .args(args)
        .args(["--database-url", url])
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The tests record of each stored version, oldest first: (version, result, sha256, cases, files).
type Record = (
    String,
    Option<String>,
    Option<String>,
    Option<i32>,
    Option<Vec<String>>,
);

async fn records(db: &TestDb) -> Vec<Record> {
    sqlx::query_as(
        "SELECT version, tests_result, tests_sha256, tests_cases, tests_files \
         FROM rbac_mapping_store ORDER BY pushed_at_utc, version",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn push_refuses_a_version_whose_tests_fail_and_records_what_it_ran() {
    let db = TestDb::new().await;
    let dir = project(MAPPING, TESTS);
    let version = |text: &str| rbac_gateway::policy::mapping::version_of(text.as_bytes());

    // A version whose tests fail: refused, 1, the failures printed, nothing stored.
    let broken = MAPPING.replace(
        "roles = [\"console-secrets-admin\"]",
        "roles = [\"console-secrets-admin\", \"console-audit-user\"]",
    );
    std::fs::write(dir.path().join("routes.toml"), &broken).unwrap();
    let (code, out, err) = with_db(&db.url, dir.path(), &["mapping", "push", "routes.toml"]);
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(
        out.contains("FAIL routes.test.toml:4: support cannot list the secrets")
            && out.contains("expected deny, decided allow (role:console-audit-user)")
            && out.contains("FAIL: 2/4"),
        "{out}"
    );
    assert!(
        err.contains(&format!(
            "2 of 4 cases of routes.test.toml failed: mapping version {} refused, nothing stored",
            version(&broken)
        )),
        "{err}"
    );
    assert_eq!(records(&db).await, []);

    // Said and recorded: --skip-tests stores it untested.
    let (code, out, err) = with_db(
        &db.url,
        dir.path(),
        &[
            "mapping",
            "push",
            "routes.toml",
            "--skip-tests",
            "--no-activate",
        ],
    );
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        out.contains("tests skipped (--skip-tests): recorded on the version as skipped"),
        "{out}"
    );

    // The mapping mended: its tests pass, and what they were is recorded.
    std::fs::write(dir.path().join("routes.toml"), MAPPING).unwrap();
    let (code, out, err) = with_db(&db.url, dir.path(), &["mapping", "push", "routes.toml"]);
    assert_eq!(code, Some(0), "{out}{err}");
    let sha = rbac_gateway::stores::mapping_store::sha256_hex(TESTS.as_bytes());
    assert!(
        out.contains(&format!(
            "tests passed: 4 cases of routes.test.toml (sha256 {sha})"
        )),
        "{out}"
    );

    // Tests named elsewhere (--tests) instead of those beside; and a file with none beside.
    let other = tempfile::tempdir().unwrap();
    std::fs::write(
        other.path().join("more.test.toml"),
        "[[case]]\nwho = \"no-session\"\nrequest = \"GET /health\"\nexpect = \"public\"\n",
    )
    .unwrap();
    let lone = tempfile::tempdir().unwrap();
    let v3 = format!("{MAPPING}# v3\n");
    std::fs::write(lone.path().join("v3.toml"), &v3).unwrap();
    let v4 = format!("{MAPPING}# v4\n");
    std::fs::write(lone.path().join("v4.toml"), &v4).unwrap();
    let (code, out, err) = with_db(
        &db.url,
        lone.path(),
        &[
            "mapping",
            "push",
            "v3.toml",
            "--tests",
            other.path().to_str().unwrap(),
        ],
    );
    assert_eq!(code, Some(0), "{out}{err}");
    let (code, out, err) = with_db(&db.url, lone.path(), &["mapping", "push", "v4.toml"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        out.contains(
            "no *.test.toml beside v4.toml: no tests run (recorded on the version as none"
        ),
        "{out}"
    );
    let more = other.path().join("more.test.toml").display().to_string();
    let more_sha = rbac_gateway::stores::mapping_store::sha256_hex(
        &std::fs::read(other.path().join("more.test.toml")).unwrap(),
    );
    assert_eq!(
        records(&db).await,
        [
            (version(&broken), Some("skipped".into()), None, None, None),
            (
                version(MAPPING),
                Some("passed".into()),
                Some(sha.clone()),
                Some(4),
                Some(vec!["routes.test.toml".into()])
            ),
            (
                version(&v3),
                Some("passed".into()),
                Some(more_sha),
                Some(1),
                Some(vec![more])
            ),
            (version(&v4), Some("none".into()), None, None, None),
        ]
    );
    // A file beside it named like a test file but not `*.test.toml`: a suite meant to run
    // that would not be found. Refused (64), nothing stored; `test` names it too.
    let v5 = format!("{MAPPING}# v5\n");
    std::fs::write(lone.path().join("v5.toml"), &v5).unwrap();
    std::fs::write(lone.path().join("v5.tests.toml"), TESTS).unwrap();
    // Another tool's file, not named after the mapping, is none; nor is a name holding "test"
    // inside a word.
    std::fs::write(lone.path().join("pytest.toml"), "[pytest]\n").unwrap();
    std::fs::write(lone.path().join("v5.latest.toml"), MAPPING).unwrap();
    let (code, out, err) = with_db(&db.url, lone.path(), &["mapping", "push", "v5.toml"]);
    assert_eq!(code, Some(64), "{out}{err}");
    assert!(
        err.contains(
            "no *.test.toml beside v5.toml, but v5.tests.toml looks like a test file: rename it"
        ),
        "{err}"
    );
    assert_eq!(records(&db).await.len(), 4);
    let (code, out, err) = test_cmd(lone.path(), &["--routes", "v5.toml"]);
    assert_eq!(code, Some(64), "{out}{err}");
    assert!(
        err.contains("no *.test.toml beside v5.toml, but v5.tests.toml looks like a test file"),
        "{err}"
    );
    std::fs::remove_file(lone.path().join("v5.tests.toml")).unwrap();

    // History shows the record, as text and JSON; the active version's on rollout's report
    // (the cockpit's board).
    let (code, out, err) = with_db(&db.url, dir.path(), &["mapping", "history"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains(&format!(
            "      tests: passed, 4 cases of routes.test.toml (sha256 {sha})"
        )) && out.contains("      tests: skipped (--skip-tests)")
            && out.contains("      tests: none (no test file beside the pushed file)"),
        "{out}"
    );
    let (_, out, _) = with_db(&db.url, dir.path(), &["mapping", "history", "--json"]);
    let h: serde_json::Value = serde_json::from_str(&out).unwrap();
    let stored = h["versions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["version"] == version(MAPPING))
        .unwrap();
    assert_eq!(
        stored["tests"],
        serde_json::json!({"result": "passed", "sha256": sha, "cases": 4, "files": ["routes.test.toml"]})
    );
    let (code, out, err) = with_db(
        &db.url,
        dir.path(),
        &["mapping", "activate", &version(MAPPING)],
    );
    assert_eq!(code, Some(0), "{out}{err}");
    // Who activates a version sees what its tests gave at its push.
    assert!(
        out.contains(&format!(
            "tests at its push: passed, 4 cases of routes.test.toml (sha256 {sha})"
        )),
        "{out}"
    );
    let (_, out, _) = with_db(
        &db.url,
        dir.path(),
        &["rollout", "--routes", "db:active", "--json"],
    );
    let r: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r["tests"]["result"], "passed", "{r:#}");
    let (_, out, _) = with_db(&db.url, dir.path(), &["rollout", "--routes", "db:active"]);
    assert!(
        out.contains(&format!(
            "tests at its push: passed, 4 cases of routes.test.toml (sha256 {sha})"
        )),
        "{out}"
    );

    // A stored version tested again: `--routes db:VERSION`, its test files named.
    let (code, out, err) = with_db(
        &db.url,
        dir.path(),
        &["test", "--routes", "db:active", "routes.test.toml"],
    );
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        out.starts_with(&format!(
            "mapping database:{} (version {}), groups from the database",
            version(MAPPING),
            version(MAPPING)
        )),
        "{out}"
    );
    let (code, _, err) = with_db(
        &db.url,
        dir.path(),
        &["test", "--routes", &format!("db:{}", version(&broken))],
    );
    assert_eq!(code, Some(64), "{err}");
    assert!(err.contains("name the test files"), "{err}");
    let (code, out, _) = with_db(
        &db.url,
        dir.path(),
        &[
            "test",
            "--routes",
            &format!("db:{}", version(&broken)),
            "routes.test.toml",
        ],
    );
    assert_eq!(
        code,
        Some(1),
        "the version stored untested fails them: {out}"
    );
}

#[tokio::test]
async fn admins_are_read_from_the_database_by_email_or_id() {
    let db = TestDb::new().await;
    let alice = db.admin("alice@example.com").await;
    db.join_group(&alice, "raxx-platform-admins").await;
    let bob = db.admin("bob@example.com").await;
    db.join_group(&bob, "raxx-support-team").await;
    let tests = format!(
        r#"[principal.alice]
admin = "Alice@Example.com"

[[case]]
who = "alice"
request = "GET /secrets"
expect = "allow"
reason = "role:console-secrets-admin"

[[case]]
who = {{ admin = "{bob}" }}
request = "GET /secrets"
expect = "deny"
"#
    );
    let dir = project(MAPPING, &tests);
    let (code, out, err) = with_db(&db.url, dir.path(), &["test"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("groups from the database"), "{out}");
    // Without the database, an admin cannot be read: the file does not load.
    let (code, _, err) = test_cmd(dir.path(), &[]);
    assert_eq!(code, Some(64), "{err}");
    assert!(
        err.contains("routes.test.toml:1:1: admin \"Alice@Example.com\" is read from the database: give --database-url"),
        "{err}"
    );
    // Roles as they are now: bob joins the platform admins, his case fails, and says why.
    db.join_group(&bob, "raxx-platform-admins").await;
    let (code, out, _) = with_db(&db.url, dir.path(), &["test"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains(&format!("GET /secrets as admin {bob}"))
            && out.contains(
                "console-secrets-admin: group raxx-platform-admins -> console-secrets-admin"
            ),
        "{out}"
    );
    // An admin the database does not have does not load.
    std::fs::write(
        dir.path().join("routes.test.toml"),
        tests.replace("Alice@Example.com", "carol@example.com"),
    )
    .unwrap();
    let (code, _, err) = with_db(&db.url, dir.path(), &["test"]);
    assert_eq!(code, Some(64), "{err}");
    assert!(
        err.contains("routes.test.toml:1:1: no admin with the id or email \"carol@example.com\" in the database"),
        "{err}"
    );
}

/// A case expecting `deny` that passes only because no rule has its method and path (a misspelt
/// path, a rule since removed) says so in each form of the report, and still passes; one that
/// says `reason = "no_route"`, or that a rule decides, says nothing. Before, such a case passed
/// silently: `/secerts` "proved" support cannot read the secrets.
#[test]
fn a_deny_case_that_passes_by_no_route_alone_says_so() {
    let tests = r#"[principal.support]
groups = ["raxx-support-team"]

[[case]]
name = "support cannot read the secrets (misspelt)"
who = "support"
request = "GET /secerts"
expect = "deny"

[[case]]
name = "nothing is served under /old"
who = "support"
request = "GET /old"
expect = "deny"
reason = "no_route"

[[case]]
name = "support cannot read the secrets"
who = "support"
request = "GET /secrets"
expect = "deny"
"#;
    let dir = project(MAPPING, tests);
    let (code, out, err) = test_cmd(dir.path(), &[]);
    assert_eq!(code, Some(0), "{out}{err}");
    let notes: Vec<&str> = out.lines().filter(|l| l.starts_with("NOTE ")).collect();
    assert_eq!(notes.len(), 1, "{out}");
    assert!(
        notes[0].contains("support cannot read the secrets (misspelt): passed as deny by no_route"),
        "{out}"
    );
    let (_, json, _) = test_cmd(dir.path(), &["--format", "json"]);
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    let noted: Vec<&str> = json["cases"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c.get("notes").is_some())
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        noted,
        ["support cannot read the secrets (misspelt)"],
        "{json}"
    );
    let (code, junit, _) = test_cmd(dir.path(), &["--format", "junit"]);
    assert_eq!(code, Some(0), "{junit}");
    assert_eq!(
        junit
            .matches("<system-out>passed as deny by no_route")
            .count(),
        1,
        "{junit}"
    );
    assert!(!junit.contains("<failure"), "{junit}");
}

/// An admin of the database in a break-glass session is decided in `test` as `serve` decides
/// by default (I-4): the session's roles count once its alert was delivered. Before, `test`
/// counted them at once, and a case allowing the admin passed where `serve` answered 403. With
/// `--break-glass-requires-alert=false` they count at once, as in a `serve` so started.
#[tokio::test]
async fn an_admin_in_break_glass_counts_in_test_once_alerted_as_in_serve() {
    let db = TestDb::new().await;
    let (admin, _) = db.admin_with_roles(&[]).await;
    let session = db.break_glass(&admin, 600.0).await;
    let tests = format!(
        r#"[[case]]
name = "the on-call admin in break-glass lists the secrets"
who = {{ admin = "{admin}" }}
request = "GET /secrets"
expect = "allow"
"#
    );
    let dir = project(MAPPING, &tests);
    let (code, out, err) = with_db(&db.url, dir.path(), &["test"]);
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(
        out.contains("not honoured until its alert is delivered"),
        "{out}"
    );
    // As a `serve` started with --break-glass-requires-alert=false decides: the session counts
    // at once, and the report says I-4 is not held. Before, `test` had no such flag.
    let (code, out, err) = with_db(
        &db.url,
        dir.path(),
        &["test", "--break-glass-requires-alert=false"],
    );
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("--break-glass-requires-alert=false"), "{out}");
    assert!(out.contains("I-4 not held"), "{out}");
    let (_, json, _) = with_db(
        &db.url,
        dir.path(),
        &[
            "test",
            "--break-glass-requires-alert=false",
            "--format",
            "json",
        ],
    );
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(json["break_glass_requires_alert"], false, "{json}");
    // The alert delivered, for the session as it stands: the case passes.
    sqlx::query(
        "INSERT INTO rbac_gateway_alerts (key, text, erasure_keys, delivered_at_utc) \
         VALUES ($1, 'opened', ARRAY[$2], now())",
    )
    .bind(format!("break_glass:{session}"))
    .bind(&admin)
    .execute(&db.pool)
    .await
    .unwrap();
    let (code, out, err) = with_db(&db.url, dir.path(), &["test"]);
    assert_eq!(code, Some(0), "{out}{err}");
}

/// Targets the doors' HTTP layer cannot parse (hyper, with the `http` crate's URI rules), and
/// CONNECT, are refused in `test` as `serve` answers them: 400, before a rule is asked. Each is
/// sent to a real gateway too, and asked of `explain`. Before, `test` and `explain` decided them
/// by the rules (allow, public).
#[tokio::test]
async fn targets_the_http_layer_refuses_are_refused_in_test_as_in_serve() {
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let db = TestDb::new().await;
    let up = Upstream::start().await;
    let dir = project(MAPPING, TESTS);
    let gw = Gateway::start(GatewayOpts::new(
        dir.path().join("routes.toml"),
        &db,
        up.addr,
    ))
    .await;
    let refused = [
        ("GET", "/secrets?filter=\"open\"", "unparsed"),
        ("GET", "/secrets?q=<b>", "unparsed"),
        ("GET", "/secrets/a`b/sop", "unparsed"),
        ("GET", "/health?x=\"1\"", "unparsed"),
        ("GET", "/secrets/a<b>/sop", "unparsed"),
        ("CONNECT", "/secrets", "not_origin_form"),
    ];
    let mut tests = String::from("[principal.admins]\ngroups = [\"raxx-platform-admins\"]\n");
    for (i, (method, target, reason)) in refused.iter().enumerate() {
        let target = target.replace('"', "\\\"");
        tests.push_str(&format!(
            "\n[[case]]\nname = \"refused {i}\"\nwho = \"admins\"\nrequest = \"{method} {target}\"\nexpect = \"refused\"\nreason = \"{reason}\"\n"
        ));
    }
    std::fs::write(dir.path().join("routes.test.toml"), &tests).unwrap();
    let (code, out, err) = test_cmd(dir.path(), &[]);
    assert_eq!(code, Some(0), "{tests}\n{out}{err}");
    // `explain` refuses them alike (it said "forward (public)" for `/health?x="1"`).
    for (method, target, reason) in refused {
        let out = bin()
            .args(["explain", "--routes"])
            .arg(dir.path().join("routes.toml"))
            .args([method, target])
            .env_remove("DATABASE_URL")
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{said}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(said.contains("answer: 400"), "{method} {target}: {said}");
        assert!(said.contains(reason), "{method} {target}: {said}");
    }
    for (method, target, _) in refused {
        let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
        s.write_all(
            format!("{method} {target} HTTP/1.1\r\nHost: console\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut answer))
            .await
            .expect("the gateway answered and closed")
            .unwrap();
        let answer = String::from_utf8_lossy(&answer);
        assert!(
            answer.starts_with("HTTP/1.1 400"),
            "{method} {target}: {answer}"
        );
    }
    assert_eq!(up.requests().len(), 0, "a refused request was forwarded");
}

/// A database `test` is given that cannot be read exits 69, not 1 (a case that failed): CI
/// tells a broken database from a regression of the mapping.
#[test]
fn a_database_test_cannot_read_exits_69() {
    let dir = project(MAPPING, TESTS);
    let (code, out, err) = with_db("postgres://rbac@127.0.0.1:1/nothing", dir.path(), &["test"]);
    assert_eq!(code, Some(69), "{out}{err}");
    assert!(err.contains("cannot connect to the database"), "{err}");
    // `diff` alike: its exit 1 says access changes.
    let (code, out, err) = with_db(
        "postgres://rbac@127.0.0.1:1/nothing",
        dir.path(),
        &["diff", "routes.toml", "routes.toml"],
    );
    assert_eq!(code, Some(69), "{out}{err}");
    assert!(err.contains("cannot connect to the database"), "{err}");
}

/// A test file or mapping larger than the bound (4 MiB) is refused before it is parsed, with
/// the bound named: a parse holds many times a file's size (an 18 MB test file took 830 MB).
/// One of exactly the bound still loads.
#[test]
fn a_test_file_or_mapping_past_the_bound_is_refused_before_it_is_parsed() {
    const BOUND: usize = 4 << 20;
    // Padded with comment lines to `len` bytes exactly.
    let padded = |text: &str, len: usize| {
        let mut s = String::from(text);
        s.push('\n');
        while s.len() + 80 < len {
            s.push_str(&format!("#{}\n", "x".repeat(78)));
        }
        s.push('#');
        s.push_str(&"x".repeat(len - s.len() - 1));
        s.push('\n');
        assert_eq!(s.len(), len);
        s
    };
    let dir = project(MAPPING, &padded(TESTS, BOUND));
    let (code, out, err) = test_cmd(dir.path(), &[]);
    assert_eq!(code, Some(0), "{out}{err}");
    std::fs::write(
        dir.path().join("routes.test.toml"),
        padded(TESTS, BOUND + 1),
    )
    .unwrap();
    let (code, out, err) = test_cmd(dir.path(), &[]);
    assert_eq!(code, Some(64), "{out}{err}");
    assert!(
        err.contains("routes.test.toml: cannot read the test file: larger than 4 MiB"),
        "{err}"
    );
    let dir = project(&padded(MAPPING, BOUND + 1), TESTS);
    let out = bin()
        .args(["check", "--routes"])
        .arg(dir.path().join("routes.toml"))
        .env_remove("DATABASE_URL")
        .output()
        .unwrap();
    let (code, said) = code_and_output(&out);
    assert_ne!(code, Some(0), "{said}");
    assert!(
        said.contains("cannot read the mapping: larger than 4 MiB"),
        "{said}"
    );
    // A FIFO in a test file's place would hold the run until a writer came: refused.
    let dir = project(MAPPING, TESTS);
    let fifo = dir.path().join("routes.test.toml");
    std::fs::remove_file(&fifo).unwrap();
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    let child = bin()
        .current_dir(dir.path())
        .arg("test")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let (done, exited) = std::sync::mpsc::channel();
    std::thread::spawn(move || done.send(child.wait_with_output().unwrap()));
    let Ok(out) = exited.recv_timeout(std::time::Duration::from_secs(30)) else {
        let _ = std::process::Command::new("kill")
            .arg(pid.to_string())
            .status();
        panic!("`test` still waits on the FIFO after 30 s");
    };
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{err}");
    assert!(
        err.contains("routes.test.toml: cannot read the test file: not a regular file"),
        "{err}"
    );
}

/// `matrix --format md`: a `|` in a rule's path is escaped, as in a principal's name (GFM splits
/// a cell at it even inside a code span, and every verdict of the row moved a column).
#[test]
fn a_pipe_in_a_rule_is_escaped_in_the_markdown_matrix() {
    let mapping = format!(
        "{MAPPING}\n[[route]]\nmethods = [\"GET\"]\npath = \"/a|b/<x>\"\naccess = \"public\"\ncluster = \"public\"\n"
    );
    let dir = project(&mapping, TESTS);
    let out = bin()
        .current_dir(dir.path())
        .args(["matrix", "--routes", "routes.toml", "--format", "md"])
        .env_remove("DATABASE_URL")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let row = text
        .lines()
        .find(|l| l.contains("b/<x>`"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(row.contains("`/a\\|b/<x>`"), "{row}");
    let header = text.lines().find(|l| l.starts_with("| method |")).unwrap();
    let cells = |l: &str| l.replace("\\|", "").matches('|').count();
    assert_eq!(cells(row), cells(header), "{header}\n{row}");
}
