//! `explain --request-id`: a logged request explained from its audit row, with the mapping
//! version the row carries when that file is at hand, and a warning when it is not.

use std::process::Command;

use crate::helpers::*;

fn explain(db: &TestDb, routes: &std::path::Path, extra: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_rbac-gateway"))
        .args(["explain", "--routes"])
        .arg(routes)
        .args(["--database-url", &db.url])
        .args(extra)
        .env_remove("FLAG_RBAC_V2")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

#[tokio::test]
async fn explain_request_id_uses_the_rows_mapping_version_or_says_it_differs() {
    let env = Env::core().await;
    let (admin, weak) = env.db.admin_with_roles(&["console-user"]).await;
    let r = env.gw.get("/console/customers/43?x=1", Some(&weak)).await;
    assert_eq!(r.status, 403);
    let id = r.request_id();
    let version = rbac_gateway::policy::mapping::Mapping::load(&env.gw.routes)
        .unwrap()
        .version;

    let (code, out) = explain(&env.db, &env.gw.routes, &["--request-id", &id]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!("is version {version}, the row's")),
        "{out}"
    );
    assert!(out.contains(&format!("admin={admin}")), "{out}");
    assert!(out.contains("GET /console/customers/43"), "{out}");
    assert!(out.contains("decision: 403 denied (missing_role)"), "{out}");
    assert!(!out.contains("WARNING"), "{out}");

    // Another version at hand: explained with it, flagged.
    let dir = tempfile::tempdir().unwrap();
    let newer = dir.path().join("newer.toml");
    let text = std::fs::read_to_string(&env.gw.routes).unwrap();
    std::fs::write(
        &newer,
        text.replace(
            "roles = [\"console-audit-user\"]",
            "roles = [\"console-user\"]",
        ),
    )
    .unwrap();
    let (code, out) = explain(&env.db, &newer, &["--request-id", &id]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!(
            "WARNING: the row was decided with mapping version {version}"
        )),
        "{out}"
    );
    assert!(out.contains("allow"), "the newer mapping allows it: {out}");

    // A history without the row's version, one file of it broken: the broken file is named.
    let history = tempfile::tempdir().unwrap();
    std::fs::write(history.path().join("broken.toml"), "[[route]\n").unwrap();
    let (code, out) = explain(
        &env.db,
        &newer,
        &[
            "--request-id",
            &id,
            "--mapping-history",
            history.path().to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("no file of version")
            && out.contains("1 could not be read: ")
            && out.contains("broken.toml: "),
        "{out}"
    );
    std::fs::remove_file(history.path().join("broken.toml")).unwrap();

    // The row's version found in --mapping-history.
    std::fs::copy(&env.gw.routes, history.path().join("v1.toml")).unwrap();
    let (code, out) = explain(
        &env.db,
        &newer,
        &[
            "--request-id",
            &id,
            "--mapping-history",
            history.path().to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!("v1.toml is version {version}, the row's")),
        "{out}"
    );
    assert!(out.contains("decision: 403 denied (missing_role)"), "{out}");

    // No row for that id: exit 1, said plainly.
    let (code, out) = explain(&env.db, &env.gw.routes, &["--request-id", "nope"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("no audit row"), "{out}");
    // Both forms at once is bad usage.
    let (code, _) = explain(
        &env.db,
        &env.gw.routes,
        &["--request-id", &id, "--admin", &admin, "GET", "/ops"],
    );
    assert_eq!(code, 64);
}
