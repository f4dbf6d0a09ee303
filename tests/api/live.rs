//! Live policy: hot reload under load, rejected files, ConfigMap swaps, SIGHUP, drift.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::helpers::*;

/// Mapping A: `/ops` for console-manager.
static A: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| ab("console-manager"));
/// Mapping B: `/ops` for console-user (the same second rule).
static B: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| ab("console-user"));

fn ab(ops: &str) -> String {
    routes_text(&[
        Route::get("/ops").roles(&[ops]),
        Route::get("/console/customers/<id>").roles(&["console-audit-user"]),
    ])
}

fn version(text: &str) -> String {
    use sha2::Digest;
    hex::encode(&sha2::Sha256::digest(text.as_bytes())[..6])
}

/// Replaces the file atomically (write a sibling, rename over), as editors and deploy tools do.
fn swap(path: &std::path::Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

async fn wait_for(gw: &Gateway, token: &str, status: u16) -> Duration {
    let started = Instant::now();
    loop {
        if gw.get("/ops", Some(token)).await.status == status {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "mapping not live after 3 s; log:\n{}",
            gw.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn env_with(text: &str) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("initial.toml");
    std::fs::write(&p, text).unwrap();
    let env = Env::with(p, |o| o.arg("--cache-ttl").arg("60")).await;
    drop(dir);
    env
}

#[tokio::test]
async fn fifty_swaps_under_load_fail_no_request_and_each_is_decided_by_one_mapping() {
    let env = env_with(A.as_str()).await;
    let (_, token) = env
        .db
        .admin_with_roles(&["console-user", "console-audit-user"])
        .await;
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, denied, failed) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
    );
    let denied_ids = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut clients = Vec::new();
    for c in 0..4 {
        let (stop, ok, denied, failed, ids, addr, token) = (
            stop.clone(),
            ok.clone(),
            denied.clone(),
            failed.clone(),
            denied_ids.clone(),
            env.gw.addr,
            token.clone(),
        );
        clients.push(tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) {
                i += 1;
                let path = if i % 2 == 0 { "/ops".to_string() } else { format!("/console/customers/{c}{i}") };
                let req = format!("GET {path} HTTP/1.1\r\nHost: c\r\nCookie: console_session={token}\r\nConnection: close\r\n\r\n");
                match send(addr, req.as_bytes()).await {
                    Ok(r) if r.status == 200 => {
                        ok.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(r) if r.status == 403 && path == "/ops" => {
                        denied.fetch_add(1, Ordering::SeqCst);
                        ids.lock().unwrap().push(r.request_id());
                    }
                    _ => {
                        failed.fetch_add(1, Ordering::SeqCst);
                    }
                }
            }
        }));
    }
    for i in 0..50 {
        swap(
            &env.gw.routes,
            if i % 2 == 0 { B.as_str() } else { A.as_str() },
        );
        // Mostly faster than the watcher's two-poll debounce (churn), but every fifth version is
        // held for several polls, so it is applied for certain: ten held versions, each unlike
        // the one held before, make at least ten successful reloads whatever the scheduling.
        let hold = if i % 5 == 4 { 700 } else { 120 };
        tokio::time::sleep(Duration::from_millis(hold)).await;
    }
    // The last swap (i = 49) wrote A.
    let lag = wait_for(&env.gw, &token, 403).await;
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.await.unwrap();
    }
    assert_eq!(
        failed.load(Ordering::SeqCst),
        0,
        "no request may fail during reloads"
    );
    assert!(
        ok.load(Ordering::SeqCst) > 50 && denied.load(Ordering::SeqCst) > 0,
        "both mappings were live at times"
    );
    assert!(
        lag < Duration::from_secs(1),
        "the final mapping was live {lag:?} after the last check started"
    );
    // Every 403 on /ops was decided by mapping A (under B this admin is allowed).
    let va = version(A.as_str());
    let ids = denied_ids.lock().unwrap().clone();
    for id in ids.iter().take(200) {
        let rows: Vec<(Option<String>,)> =
            sqlx::query_as("SELECT mapping_version FROM access_audit_events WHERE request_id = $1")
                .bind(id)
                .fetch_all(&env.db.pool)
                .await
                .unwrap();
        assert_eq!(
            rows,
            vec![(Some(va.clone()),)],
            "403 {id} decided by mapping A"
        );
    }
    assert!(
        env.gw
            .metric("rbac_gateway_mapping_reloads_total{result=\"success\"}")
            .await
            >= 10.0
    );
}

#[tokio::test]
async fn reload_is_live_within_a_second_and_logs_what_changed() {
    let env = env_with(A.as_str()).await;
    let (_, token) = env.db.admin_with_roles(&["console-user"]).await;
    assert_eq!(env.gw.get("/ops", Some(&token)).await.status, 403);
    swap(&env.gw.routes, B.as_str());
    let lag = wait_for(&env.gw, &token, 200).await;
    println!(
        "file swapped by rename: applied after {} ms",
        lag.as_millis()
    );
    assert!(lag < Duration::from_secs(1), "{lag:?}");
    assert!(
        env.gw
            .log()
            .contains("GET /ops: console-manager -> console-user"),
        "{}",
        env.gw.log()
    );
    assert_eq!(
        env.gw
            .metric(&format!(
                "rbac_gateway_mapping_info{{version=\"{}\"}}",
                version(B.as_str())
            ))
            .await,
        1.0
    );
    // In-place edit (same inode).
    std::fs::write(&env.gw.routes, A.as_str()).unwrap();
    assert!(wait_for(&env.gw, &token, 403).await < Duration::from_secs(1));
    // The info metric names the live version only (not one series per version ever loaded).
    let metrics = env.gw.admin_get("/metrics").await.body_str();
    let info: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("rbac_gateway_mapping_info{"))
        .collect();
    assert_eq!(
        info,
        [format!(
            "rbac_gateway_mapping_info{{version=\"{}\"}} 1",
            version(A.as_str())
        )
        .as_str()],
        "{metrics}"
    );
}

#[tokio::test]
async fn invalid_truncated_or_missing_files_keep_the_old_mapping() {
    let env = env_with(B.as_str()).await;
    let (_, token) = env.db.admin_with_roles(&["console-user"]).await;
    assert_eq!(env.gw.get("/ops", Some(&token)).await.status, 200);
    let broken = [
        Route::get("/ops")
            .roles(&["console-manager"])
            .mode("strict")
            .to_toml(),
        B[..B.len() / 2].to_string(),
        Route::get("/ops").line("role = [\"x\"]").to_toml(),
    ];
    for (i, text) in broken.iter().enumerate() {
        let before = env.gw.admin_get("/readyz").await.body_str();
        swap(&env.gw.routes, text);
        // The watcher read the file and refused it: /readyz names this file's problem.
        eventually(
            Duration::from_secs(10),
            &format!("broken file {i} read and refused"),
            || async {
                let body = env.gw.admin_get("/readyz").await.body_str();
                body.contains("routes file not applied") && body != before
            },
        )
        .await;
        assert_eq!(
            env.gw.get("/ops", Some(&token)).await.status,
            200,
            "broken file {i}: old mapping still enforced"
        );
        // Still ready (the old mapping serves), and /readyz says the file is not in force.
        let ready = env.gw.admin_get("/readyz").await;
        assert_eq!(ready.status, 200);
        let body = ready.body_str();
        assert!(
            body.contains(&format!(
                "routes file not applied (mapping={} stays live): ",
                version(B.as_str())
            )),
            "broken file {i}: {body}"
        );
        if i == 0 {
            assert!(body.contains(":5:8: unknown mode"), "{body}");
        }
    }
    assert!(
        env.gw
            .metric("rbac_gateway_mapping_reloads_total{result=\"failure\"}")
            .await
            >= 3.0
    );
    let log = env.gw.log();
    assert!(
        log.contains(":5:8: unknown mode \\\"strict\\\"") || log.contains(":5:8: unknown mode"),
        "{log}"
    );
    std::fs::remove_file(&env.gw.routes).unwrap();
    eventually(
        Duration::from_secs(10),
        "the missing file is noticed",
        || async {
            env.gw
                .admin_get("/readyz")
                .await
                .body_str()
                .contains("No such file")
        },
    )
    .await;
    assert_eq!(
        env.gw.get("/ops", Some(&token)).await.status,
        200,
        "missing file: old mapping kept"
    );
    let body = env.gw.admin_get("/readyz").await.body_str();
    assert!(
        body.contains("routes file not applied") && body.contains("No such file"),
        "{body}"
    );
    // And a good file afterwards is picked up, and /readyz names it alone.
    swap(&env.gw.routes, A.as_str());
    wait_for(&env.gw, &token, 403).await;
    let body = env.gw.admin_get("/readyz").await.body_str();
    assert_eq!(
        body.lines().next(),
        Some(format!("ready mapping={}", version(A.as_str())).as_str()),
        "{body}"
    );
    assert!(!body.contains("not applied"), "{body}");
    // (and I-5's state, this gateway having no audit writer)
    assert!(
        body.contains("audit writer: I-5 not met: no --audit-writer-url; 0 rbac_grants_audit row(s) undelivered to customer_audit_events\n"),
        "{body}"
    );
}

#[tokio::test]
async fn configmap_symlink_swap_and_sighup_reload() {
    // Kubernetes mounts a ConfigMap as: routes.toml -> ..data/routes.toml, ..data -> ..2026_v1/
    let db = TestDb::new().await;
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir(d.join("..v1")).unwrap();
    std::fs::write(d.join("..v1/routes.toml"), A.as_str()).unwrap();
    std::os::unix::fs::symlink("..v1", d.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/routes.toml", d.join("routes.toml")).unwrap();
    let routes = d.join("routes.toml");
    let gw = Gateway::start_in(
        GatewayOpts::new(&routes, &db, up.addr)
            .arg("--cache-ttl")
            .arg("60"),
        dir,
        routes.clone(),
    )
    .await;
    let (_, token) = db.admin_with_roles(&["console-user"]).await;
    assert_eq!(gw.get("/ops", Some(&token)).await.status, 403);
    let d = gw.dir.path().to_path_buf();
    std::fs::create_dir(d.join("..v2")).unwrap();
    std::fs::write(d.join("..v2/routes.toml"), B.as_str()).unwrap();
    std::os::unix::fs::symlink("..v2", d.join("..data_tmp")).unwrap();
    std::fs::rename(d.join("..data_tmp"), d.join("..data")).unwrap();
    let lag = wait_for(&gw, &token, 200).await;
    println!(
        "ConfigMap-style symlink swap on the pod: applied after {} ms",
        lag.as_millis()
    );
    assert!(lag < Duration::from_secs(1));

    // SIGHUP forces a reload check (and a reload of an unchanged file is a no-op).
    gw.signal("HUP");
    eventually(Duration::from_secs(5), "SIGHUP handled", || async {
        gw.log().contains("SIGHUP")
    })
    .await;
    assert_eq!(gw.get("/ops", Some(&token)).await.status, 200);
    assert!(gw.log().contains("SIGHUP"), "{}", gw.log());
    assert!(gw.child.id() > 0);
}

#[tokio::test]
async fn shadow_mode_detects_drift_against_console() {
    let text = routes_text(&[
        Route::get("/ops")
            .roles(&["console-manager"])
            .mode("shadow")
            .cluster("S2"),
        Route::get("/console/audit")
            .roles(&["console-audit-user"])
            .mode("shadow")
            .cluster("S2"),
    ]);
    let env = env_with(&text).await;
    let (_, user) = env.db.admin_with_roles(&["console-user"]).await;
    let (_, auditor) = env.db.admin_with_roles(&["console-audit-user"]).await;
    // Console allows what the gateway would deny: drift (gateway_denied_console_allowed).
    let r = env.gw.get("/ops", Some(&user)).await;
    assert_eq!(r.status, 200, "shadow forwards");
    assert_eq!(
        env.up.requests()[0].header("x-rbac-shadow-decision"),
        Some("deny")
    );
    // Console denies what the gateway allows: drift (gateway_allowed_console_denied).
    *env.up.status.lock().unwrap() = 403;
    let r2 = env.gw.get("/console/audit", Some(&auditor)).await;
    assert_eq!(r2.status, 403, "Console's answer is what the client gets");
    // Agreement: both deny.
    env.gw.get("/ops", Some(&user)).await;
    let mut kinds = Vec::new();
    for _ in 0..50 {
        kinds = sqlx::query_scalar::<_, String>("SELECT reason FROM access_audit_events WHERE event_type = 'rbac_drift' ORDER BY reason")
            .fetch_all(&env.db.pool)
            .await
            .unwrap();
        if kinds.len() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        kinds,
        vec![
            "gateway_allowed_console_denied",
            "gateway_denied_console_allowed"
        ]
    );
    assert_eq!(env.gw.metric("rbac_gateway_drift_total{kind=\"gateway_denied_console_allowed\",route=\"GET /ops\"}").await, 1.0);
    assert_eq!(
        env.gw
            .metric("rbac_gateway_shadow_agreements_total{route=\"GET /ops\"}")
            .await,
        1.0
    );
    // The command lists it and exits 1.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_rbac-gateway"))
        .args(["drift", "--routes"])
        .arg(&env.gw.routes)
        .args(["--database-url", &env.db.url])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("cluster S2: 2 shadow rule(s), 2 drift event(s)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("DRIFT GET /ops [S2]: 1 x gateway_denied_console_allowed"),
        "{stdout}"
    );
    // A cluster no rule names (a typo: s2, S99) is a usage error, not "zero drift".
    for typo in ["s2", "S99"] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_rbac-gateway"))
            .args(["drift", "--cluster", typo, "--routes"])
            .arg(&env.gw.routes)
            .args(["--database-url", &env.db.url])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{typo}: {stderr}");
        assert!(
            stderr.contains("names this cluster (clusters: "),
            "{stderr}"
        );
        assert!(!String::from_utf8_lossy(&out.stdout).contains("zero drift"));
    }
}

#[tokio::test]
async fn serve_warns_about_role_and_permission_names_the_database_lacks() {
    // A typo in a role name turns its routes into 403s for everyone; `check --database-url`
    // catches it before shipping, and serve says so at load and on the reload that brings it.
    let typo = Route::get("/ops").roles(&["console-manger"]).to_toml();
    let perm = Route::get("/ops")
        .roles(&["console-manager"])
        .permissions(&["console:ops:nope"])
        .to_toml();
    let warnings = |log: &str, name: &str| {
        log.lines()
            .filter(|l| l.contains("the database does not have") && l.contains(name))
            .count()
    };
    let env = env_with(&typo).await;
    let (_, token) = env.db.admin_with_roles(&["console-manager"]).await;
    let started = Instant::now();
    while warnings(&env.gw.log(), "console-manger") == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "no warning at load; log:\n{}",
            env.gw.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(env.gw.get("/ops", Some(&token)).await.status, 403);
    swap(&env.gw.routes, A.as_str());
    wait_for(&env.gw, &token, 200).await;
    swap(&env.gw.routes, &perm);
    let started = Instant::now();
    while warnings(&env.gw.log(), "console:ops:nope") == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "no warning after the reload; log:\n{}",
            env.gw.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = env.gw.log();
    // A (every name known) warned about nothing; the typo was reported once, at load.
    assert_eq!(warnings(&log, "console-manger"), 1, "{log}");
    assert_eq!(warnings(&log, "\"console-manager"), 0, "{log}");
    assert_eq!(warnings(&log, "console-audit-user"), 0, "{log}");
    // The rule still allows by its role: the unknown permission only adds nothing.
    assert_eq!(env.gw.get("/ops", Some(&token)).await.status, 200);
    // /readyz names it too (still 200), until the database has it.
    let ready = env.gw.admin_get("/readyz").await;
    assert_eq!(ready.status, 200);
    assert!(
        ready
            .body_str()
            .contains("names what the database lacks (no session can hold it, its rules deny): unknown permission \"console:ops:nope\""),
        "{}",
        ready.body_str()
    );
    sqlx::query("INSERT INTO rbac_permissions (id, name, description) VALUES (gen_random_uuid()::text, 'console:ops:nope', 'test')")
        .execute(&env.db.pool)
        .await
        .unwrap();
    let ready = env.gw.admin_get("/readyz").await;
    assert!(!ready.body_str().contains("lacks"), "{}", ready.body_str());
}

/// A file replaced while the gateway starts (after it loaded the mapping, before the watcher
/// runs: here while it waits for its admin port) is applied, not taken for the one loaded.
#[tokio::test]
async fn a_file_replaced_during_start_up_is_applied() {
    let db = TestDb::new().await;
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let routes = dir.path().join("routes.toml");
    std::fs::write(&routes, A.as_str()).unwrap();
    let log = dir.path().join("gateway.log");
    let admin_port = free_port();
    // The admin port is busy for a moment: the gateway retries it for up to a second.
    let busy = std::net::TcpListener::bind(("127.0.0.1", admin_port)).unwrap();
    let mut opts = GatewayOpts::new(&routes, &db, up.addr);
    opts.admin_port = Some(admin_port);
    let replace = async {
        let t0 = Instant::now();
        while !std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("mapping loaded")
        {
            assert!(t0.elapsed() < Duration::from_secs(10), "never loaded");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        swap(&routes, B.as_str());
        drop(busy);
    };
    let (gw, ()) = tokio::join!(Gateway::start_in(opts, dir, routes.clone()), replace);
    assert!(
        gw.log().contains(&version(A.as_str())),
        "A was loaded first: {}",
        gw.log()
    );
    let (_, token) = db.admin_with_roles(&["console-user"]).await;
    wait_for(&gw, &token, 200).await;
    let info = format!(
        "rbac_gateway_mapping_info{{version=\"{}\"}}",
        version(B.as_str())
    );
    assert_eq!(gw.metric(&info).await, 1.0);
}

/// SIGHUP right after a save in place that is still being written: the half-written file
/// (valid on its own here) is not applied; the finished one is.
#[tokio::test]
async fn sighup_during_a_save_applies_only_the_finished_file() {
    let env = env_with(A.as_str()).await;
    let gw = &env.gw;
    let (_, token) = env.db.admin_with_roles(&["console-user"]).await;
    assert_eq!(gw.get("/ops", Some(&token)).await.status, 403);
    // B without its last rule: valid, and different from both A and B.
    let half = &B[..B.find("\n\n[[route]]").unwrap() + 1];
    std::fs::write(&gw.routes, half).unwrap();
    gw.signal("HUP");
    // Time is the scenario: the editor is still writing the file a moment after the signal.
    tokio::time::sleep(Duration::from_millis(20)).await;
    std::fs::write(&gw.routes, B.as_str()).unwrap();
    wait_for(gw, &token, 200).await;
    // Lines are logged in order: once B's is written, a half-file applied before it would be.
    eventually(Duration::from_secs(5), "B's reload logged", || async {
        gw.log().contains(&version(B.as_str()))
    })
    .await;
    let log = gw.log();
    assert!(log.contains(&version(B.as_str())), "{log}");
    assert!(
        !log.contains(&version(half)),
        "the half-written file was applied: {log}"
    );
}
