//! `explain` and the proxy call the same outcome function: for every rule of a mapping, several
//! admins, and the modes enforce, shadow and off (kill switch), the answer `explain` announces is
//! the answer the running gateway gives.

use std::process::Command;

use rbac_gateway::mapping::Mapping;

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
    kill: bool,
) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_rbac-gateway"))
        .args(["explain", "--routes"])
        .arg(routes)
        .args(["--database-url", &db.url, "--admin", admin, method, path])
        .env("FLAG_RBAC_V2", if kill { "0" } else { "1" })
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

#[tokio::test]
async fn explain_agrees_with_the_proxy_in_every_mode() {
    let db = TestDb::new().await;
    let platform = db.admin("platform@example.test").await;
    db.join_group(&platform, "raxx-platform-admins").await;
    let (auditor, auditor_token) = db.admin_with_roles(&["console-audit-user"]).await;
    let (nobody, nobody_token) = db.admin_with_roles(&[]).await;
    let platform_token = db.session(&platform).await;
    let admins = [
        (platform.as_str(), platform_token.as_str()),
        (auditor.as_str(), auditor_token.as_str()),
        (nobody.as_str(), nobody_token.as_str()),
    ];
    let base = std::fs::read_to_string(core_routes()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut compared = 0;
    for (mode, kill) in [("enforce", false), ("shadow", false), ("enforce", true)] {
        let text = base.replace("mode = \"enforce\"", &format!("mode = \"{mode}\""));
        let routes = dir.path().join(format!("{mode}-{kill}.toml"));
        std::fs::write(&routes, &text).unwrap();
        let mapping = Mapping::load(&routes).unwrap();
        let up = Upstream::start().await;
        let mut opts = GatewayOpts::new(&routes, &db, up.addr);
        if kill {
            opts = opts.env("FLAG_RBAC_V2", "0");
        }
        let gw = Gateway::start(opts).await;
        // The test upstream holds /slow for 5 s (a 504 here): it shows nothing about the decision.
        for route in mapping.routes.iter().filter(|r| r.path != "/slow") {
            for method in &route.methods {
                let path = concrete(&route.path);
                for (admin, token) in admins {
                    let want = explained(&db, &routes, admin, method, &path, kill);
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
                        "{method} {path} admin {admin} mode {mode} kill {kill}"
                    );
                    compared += 1;
                }
            }
        }
        drop(gw);
    }
    assert!(compared > 100, "{compared} comparisons");
}
