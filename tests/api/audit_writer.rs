//! I-5 (issue 69 §2): every `rbac_grants_audit` row the gateway writes reaches Console's audit
//! writer, the Console stand-in's (`deploy/console-standin/app.py`, run under gunicorn): its
//! service token, its HMAC hash chain and its idempotency. Each revocation path arrives exactly
//! once; a writer down, answering 500 or slow delays delivery and loses nothing; a replayed event
//! leaves the chain whole; a wrong token is refused and the row stays owed, counted and alerted;
//! without `--audit-writer-url` the gateway says I-5 is not met.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::helpers::*;
use crate::tickets::{freescout, grant};

pub(crate) const TOKEN: &str = "audit-writer-token-0123456789";
const PATH: &str = "/api/internal/customer-audit/events";
const WEBHOOK_SECRET: &str = "test-webhook-secret-0123456789";

/// The stand-in Console's audit writer: gunicorn on `app:app`, its chain in a SQLite file that
/// outlives a restart.
pub(crate) struct Writer {
    child: Child,
    addr: SocketAddr,
    db: PathBuf,
    env: Vec<(String, String)>,
    _dir: Arc<tempfile::TempDir>,
}

impl Writer {
    /// Started on port 0 (`port` None) or on a port it had before; `env` as
    /// `deploy/console-standin/app.py` reads it (`AUDIT_WRITER_FAIL_FIRST`, ...).
    pub(crate) async fn start(env: &[(&str, &str)]) -> Writer {
        let dir = Arc::new(tempfile::tempdir().unwrap());
        let db = dir.path().join("chain.sqlite3");
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Writer::spawn(dir, db, env, 0).await
    }

    async fn spawn(
        dir: Arc<tempfile::TempDir>,
        db: PathBuf,
        env: Vec<(String, String)>,
        port: u16,
    ) -> Writer {
        let log = dir
            .path()
            .join(format!("gunicorn-{}.log", uuid::Uuid::new_v4()));
        use std::os::unix::process::CommandExt;
        let child = Command::new(tool("gunicorn"))
            // A group of its own: stopped, its worker goes with it (the worker holds the socket).
            .process_group(0)
            .args(["--bind", &format!("127.0.0.1:{port}")])
            .args(["--workers", "1", "--threads", "4", "--chdir"])
            .arg(root().join("deploy/console-standin"))
            .arg("app:app")
            .env("PATH", tool_path())
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env("AUDIT_WRITER_DB", &db)
            .env("AUDIT_WRITER_TOKEN", TOKEN)
            .env("AUDIT_WRITER_HMAC_KEY", "test-kms-key")
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("gunicorn of .venv/ runs");
        let mut w = Writer {
            child,
            addr: "127.0.0.1:0".parse().unwrap(),
            db,
            env,
            _dir: dir,
        };
        w.addr = w.listening(&log).await;
        w
    }

    /// The address of gunicorn's "Listening at: http://127.0.0.1:PORT" line (20 s at most).
    async fn listening(&mut self, log: &Path) -> SocketAddr {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            if let Some(rest) = text.split("Listening at: http://").nth(1) {
                let addr = rest.split_whitespace().next().unwrap();
                return addr.parse().unwrap();
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("gunicorn exited ({status}); log:\n{text}");
            }
            assert!(
                Instant::now() < deadline,
                "gunicorn never listened; log:\n{text}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub(crate) fn url(&self) -> String {
        format!("http://{}{PATH}", self.addr)
    }

    /// Killed, master and worker: nothing listens on its port any more.
    fn stop(&mut self) {
        // SAFETY: kill(2) on the group this test started; no memory is involved.
        unsafe {
            libc::kill(-(self.child.id() as i32), libc::SIGKILL);
        }
        let _ = self.child.wait();
    }

    /// Started again on the port it had, with the same chain.
    async fn restart(&mut self) {
        self.stop();
        let again = Writer::spawn(
            self._dir.clone(),
            self.db.clone(),
            self.env.clone(),
            self.addr.port(),
        )
        .await;
        let old = std::mem::replace(self, again);
        drop(old);
    }

    /// What the writer holds: `events`, `chain_ok` (recomputed), `posts`, `refused`,
    /// `duplicates`.
    async fn state(&self) -> serde_json::Value {
        let req = format!(
            "GET {PATH} HTTP/1.1\r\nHost: writer\r\nAuthorization: Bearer {TOKEN}\r\nConnection: close\r\n\r\n"
        );
        let r = send(self.addr, req.as_bytes()).await.unwrap();
        assert_eq!(r.status, 200, "{}", r.body_str());
        serde_json::from_slice(&r.body).unwrap()
    }

    /// The events' idempotency keys, in chain order.
    pub(crate) async fn keys(&self) -> Vec<String> {
        self.state().await["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["key"].as_str().unwrap().to_string())
            .collect()
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A gateway sweeping every 0.3 s and delivering to `url` with `token` (None: no writer), with
/// the writer's default timeout (5 s: a loaded machine's gunicorn is not taken for a slow writer)
/// unless `extra` sets one.
async fn gateway(
    db: &TestDb,
    up: &Upstream,
    url: Option<&str>,
    token: &str,
    extra: &[&str],
) -> Gateway {
    let mut o = GatewayOpts::new(core_routes(), db, up.addr)
        .arg("--sweep-interval")
        .arg("0.3");
    if let Some(url) = url {
        o = o
            .arg("--audit-writer-url")
            .arg(url)
            .env("GATEWAY_AUDIT_WRITER_TOKEN", token);
    }
    for a in extra {
        o = o.arg(a);
    }
    Gateway::start(o).await
}

/// An expired grant the sweep revokes, and the id of its `ticket_expire` row.
async fn expired_grant(db: &TestDb, admin: &str, ticket: &str) -> (String, String) {
    let g = grant(db, admin, "console-user", 42, ticket).await;
    sqlx::query(
        "UPDATE rbac_ticket_grants SET expires_at_utc = now() - interval '1 minute' WHERE id = $1",
    )
    .bind(&g)
    .execute(&db.pool)
    .await
    .unwrap();
    let id = rbac_gateway::stores::revocation::audit_row_id("ticket_expire", &g);
    (g, id)
}

/// The outbox row of `audit_id`: (attempts, delivered, last error).
async fn outbox(db: &TestDb, audit_id: &str) -> Option<(i32, bool, Option<String>)> {
    sqlx::query_as(
        "SELECT attempts, delivered_at_utc IS NOT NULL, last_error FROM rbac_gateway_audit_outbox WHERE audit_id = $1",
    )
    .bind(audit_id)
    .fetch_optional(&db.pool)
    .await
    .unwrap()
}

async fn delivered(db: &TestDb, audit_id: &str) -> bool {
    matches!(outbox(db, audit_id).await, Some((_, true, _)))
}

/// Every revocation path the gateway has (the sweep's expiry and closed ticket, the sweep's
/// break-glass expiry, FreeScout's webhook) arrives once, with its fields, from two replicas;
/// the chain verifies and nothing was sent twice.
#[tokio::test]
async fn every_revocation_path_arrives_exactly_once_with_its_fields() {
    let db = TestDb::new().await;
    let up = Upstream::start().await;
    let writer = Writer::start(&[]).await;
    let statuses = Arc::new(Mutex::new(vec![
        ("T-closed".to_string(), "active".to_string()),
        ("T-hook".to_string(), "active".to_string()),
    ]));
    let fs = freescout(statuses.clone()).await;
    let status_url = format!("http://{fs}/api/conversations/{{ticket_id}}");
    let (admin, _) = db.admin_with_roles(&[]).await;
    // The webhook first, on a replica that does not sweep: the revocation is the webhook's.
    let hook = GatewayOpts::new(core_routes(), &db, up.addr)
        .arg("--sweep-interval")
        .arg("0")
        .arg("--ticket-validation-url")
        .arg(&status_url)
        .arg("--freescout-webhook-listen")
        .arg("127.0.0.1:0")
        .arg("--audit-writer-url")
        .arg(&writer.url())
        .env("GATEWAY_AUDIT_WRITER_TOKEN", TOKEN)
        .env("GATEWAY_FREESCOUT_WEBHOOK_SECRET", WEBHOOK_SECRET);
    let hook = Gateway::start(hook).await;
    let g_hook = grant(&db, &admin, "raptor-audit-support", 7, "T-hook").await;
    statuses.lock().unwrap()[1].1 = "closed".to_string();
    let body = r#"{"id": "T-hook", "status": "closed"}"#;
    let port = hook.logged_addr("freescout_webhook_listen").port();
    let mut req = format!(
        "POST /freescout/webhook HTTP/1.1\r\nHost: gw\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\nX-FreeScout-Signature: {}\r\n\r\n",
        body.len(),
        rbac_gateway::doors::freescout_webhook::sign(WEBHOOK_SECRET.as_bytes(), body.as_bytes())
    );
    req.push_str(body);
    let r = send(format!("127.0.0.1:{port}").parse().unwrap(), req.as_bytes())
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.body_str());
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["revoked"], serde_json::json!([g_hook]), "{v}");
    // Then the sweep's three paths, on a second replica.
    let (_, a_expired) = expired_grant(&db, &admin, "T-expired").await;
    let g_closed = grant(&db, &admin, "console-user", 8, "T-closed").await;
    statuses.lock().unwrap()[0].1 = "closed".to_string();
    let session = db.break_glass(&admin, 0.2).await;
    let sweeper = gateway(
        &db,
        &up,
        Some(&writer.url()),
        TOKEN,
        &["--ticket-validation-url", &status_url],
    )
    .await;
    let a_hook = rbac_gateway::stores::revocation::audit_row_id("ticket_expire", &g_hook);
    let a_closed = rbac_gateway::stores::revocation::audit_row_id("ticket_expire", &g_closed);
    let a_bg = rbac_gateway::stores::revocation::audit_row_id("break_glass_expire", &session);
    let mut want = vec![
        a_hook.clone(),
        a_expired.clone(),
        a_closed.clone(),
        a_bg.clone(),
    ];
    want.sort();
    eventually_explained(
        Duration::from_secs(20),
        "the four revocations at the audit writer",
        || async {
            let mut keys = writer.keys().await;
            keys.sort();
            keys == want
        },
        || async { format!("\nwriter: {}\nlog: {}", writer.state().await, sweeper.log()) },
    )
    .await;
    for id in &want {
        eventually(Duration::from_secs(5), "marked delivered", || async {
            delivered(&db, id).await
        })
        .await;
    }
    // Each arrived once: four POSTs in all, no duplicate, the chain whole.
    let state = writer.state().await;
    assert_eq!(state["chain_ok"], true, "{state}");
    assert_eq!(state["posts"], 4, "{state}");
    assert_eq!(state["duplicates"], 0, "{state}");
    let gws = [hook, sweeper];
    eventually(
        Duration::from_secs(10),
        "four deliveries counted",
        || async {
            metric_sum(
                &gws,
                "rbac_gateway_audit_outbox_deliveries_total{result=\"delivered\"}",
            )
            .await
                == 4.0
        },
    )
    .await;
    let events: Vec<serde_json::Value> = state["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].clone())
        .collect();
    let of = |id: &str| {
        events
            .iter()
            .find(|e| e["audit_row_id"] == id)
            .unwrap_or_else(|| panic!("no event {id}"))
            .clone()
    };
    for e in &events {
        assert_eq!(e["dimension"], "operator_interaction", "{e}");
        assert_eq!(e["action"], "operator.rbac.revoke", "{e}");
        assert_eq!(e["source"], "rbac-gateway", "{e}");
        assert_eq!(e["actor"], "rbac-gateway", "{e}");
        assert_eq!(e["admin_id"], admin.as_str(), "{e}");
        assert_eq!(e["idempotency_key"], e["audit_row_id"], "{e}");
        assert!(e["occurred_at"].as_str().unwrap().ends_with('Z'), "{e}");
    }
    let e = of(&a_hook);
    assert_eq!(
        (
            &e["customer_id"],
            &e["ticket_id"],
            &e["reason"],
            &e["event_type"]
        ),
        (
            &serde_json::json!(7),
            &serde_json::json!("T-hook"),
            &serde_json::json!("ticket_closed"),
            &serde_json::json!("ticket_expire")
        ),
        "{e}"
    );
    assert!(e["role_id"].is_string(), "{e}");
    let e = of(&a_closed);
    assert_eq!(e["customer_id"], 8, "{e}");
    assert_eq!(e["reason"], "ticket_closed", "{e}");
    let e = of(&a_expired);
    assert_eq!(e["ticket_id"], "T-expired", "{e}");
    assert_eq!(e["reason"], "expired", "{e}");
    let e = of(&a_bg);
    assert_eq!(e["event_type"], "break_glass_expire", "{e}");
    assert_eq!(e["customer_id"], serde_json::Value::Null, "{e}");
    assert!(e["expires_at"].is_string(), "{e}");
    eventually(Duration::from_secs(10), "nothing owed", || async {
        gws[1].metric("rbac_gateway_audit_outbox_undelivered").await == 0.0
    })
    .await;
}

/// A writer that is down (nothing listens), then up again: the row waits, its failures counted
/// and retried with backoff, and arrives once when the writer is back.
#[tokio::test]
async fn a_writer_that_is_down_delays_delivery_and_loses_nothing() {
    let db = TestDb::new().await;
    let up = Upstream::start().await;
    let mut writer = Writer::start(&[]).await;
    writer.stop();
    let gw = gateway(&db, &up, Some(&writer.url()), TOKEN, &[]).await;
    let (admin, _) = db.admin_with_roles(&[]).await;
    let (g, id) = expired_grant(&db, &admin, "T-down").await;
    eventually_explained(
        Duration::from_secs(20),
        "two failed deliveries",
        || async { matches!(outbox(&db, &id).await, Some((n, false, Some(_))) if n >= 2) },
        || async { format!("\noutbox: {:?}\nlog: {}", outbox(&db, &id).await, gw.log()) },
    )
    .await;
    assert!(crate::lifecycle::revoked(&db, &g).await.is_some());
    let (_, _, error) = outbox(&db, &id).await.unwrap();
    eprintln!("while down: {error:?}");
    eventually(
        Duration::from_secs(10),
        "failures and the row counted",
        || async {
            gw.metric("rbac_gateway_audit_outbox_deliveries_total{result=\"failed\"}")
                .await
                >= 2.0
                && gw.metric("rbac_gateway_audit_outbox_undelivered").await == 1.0
        },
    )
    .await;
    writer.restart().await;
    eventually_explained(
        Duration::from_secs(30),
        "delivered once the writer is back",
        || async { delivered(&db, &id).await },
        || async { gw.log() },
    )
    .await;
    let state = writer.state().await;
    assert_eq!(writer.keys().await, vec![id.clone()], "{state}");
    assert_eq!(state["chain_ok"], true, "{state}");
    eventually(Duration::from_secs(5), "the gauge at 0", || async {
        gw.metric("rbac_gateway_audit_outbox_undelivered").await == 0.0
    })
    .await;
}

/// A writer answering 500 to its first three requests: the row is tried again with backoff and
/// arrives once, at the fourth.
#[tokio::test]
async fn a_writer_answering_500_delays_delivery_and_loses_nothing() {
    let db = TestDb::new().await;
    let up = Upstream::start().await;
    let writer = Writer::start(&[("AUDIT_WRITER_FAIL_FIRST", "3")]).await;
    let gw = gateway(&db, &up, Some(&writer.url()), TOKEN, &[]).await;
    let (admin, _) = db.admin_with_roles(&[]).await;
    let (_, id) = expired_grant(&db, &admin, "T-500").await;
    eventually_explained(
        Duration::from_secs(30),
        "delivered after three 500s",
        || async { delivered(&db, &id).await },
        || async { gw.log() },
    )
    .await;
    let state = writer.state().await;
    assert_eq!(state["posts"], 4, "{state}");
    assert_eq!(writer.keys().await, vec![id.clone()]);
    assert_eq!(state["chain_ok"], true, "{state}");
    assert_eq!(outbox(&db, &id).await.unwrap().0, 4);
    assert_eq!(
        gw.metric("rbac_gateway_audit_outbox_deliveries_total{result=\"failed\"}")
            .await,
        3.0
    );
    assert!(gw.log().contains("HTTP 500"), "the failure is logged");
}

/// A writer slower than `--audit-writer-timeout-ms` (it records the event after the gateway gave
/// up): the gateway tries again, and the idempotency key keeps one event in the chain.
#[tokio::test]
async fn a_slow_writer_delays_delivery_and_the_key_keeps_one_event() {
    let db = TestDb::new().await;
    let up = Upstream::start().await;
    let writer = Writer::start(&[
        ("AUDIT_WRITER_SLOW_FIRST", "1"),
        ("AUDIT_WRITER_SLOW_SECONDS", "2"),
    ])
    .await;
    let gw = gateway(
        &db,
        &up,
        Some(&writer.url()),
        TOKEN,
        &["--audit-writer-timeout-ms", "500"],
    )
    .await;
    let (admin, _) = db.admin_with_roles(&[]).await;
    let (_, id) = expired_grant(&db, &admin, "T-slow").await;
    eventually_explained(
        Duration::from_secs(30),
        "delivered after a timeout",
        || async { delivered(&db, &id).await },
        || async { gw.log() },
    )
    .await;
    let (attempts, _, _) = outbox(&db, &id).await.unwrap();
    assert!(attempts >= 2, "{attempts} attempts: the first timed out");
    assert!(
        gw.log().contains("no answer within"),
        "the timeout is logged"
    );
    // The slow request is recorded when it ends, whichever of the two is second.
    eventually(Duration::from_secs(10), "both requests handled", || async {
        let s = writer.state().await;
        s["duplicates"].as_i64().unwrap() + 1 >= s["posts"].as_i64().unwrap()
    })
    .await;
    let state = writer.state().await;
    assert_eq!(writer.keys().await, vec![id.clone()], "{state}");
    assert!(state["duplicates"].as_i64().unwrap() >= 1, "{state}");
    assert_eq!(state["chain_ok"], true, "{state}");
}

/// An event sent again (its outbox row made due again, as a crash after the send and before
/// the mark would leave it) is answered as recorded: the chain neither grows nor breaks. The
/// chain's check is real: an event changed in the writer's store fails it.
#[tokio::test]
async fn a_replayed_event_leaves_the_chain_whole() {
    let db = TestDb::new().await;
    let up = Upstream::start().await;
    let writer = Writer::start(&[]).await;
    let gw = gateway(&db, &up, Some(&writer.url()), TOKEN, &[]).await;
    let (admin, _) = db.admin_with_roles(&[]).await;
    let (_, first) = expired_grant(&db, &admin, "T-r1").await;
    let (_, second) = expired_grant(&db, &admin, "T-r2").await;
    for id in [&first, &second] {
        eventually(Duration::from_secs(20), "delivered", || async {
            delivered(&db, id).await
        })
        .await;
    }
    let before = writer.state().await;
    assert_eq!(before["chain_ok"], true, "{before}");
    sqlx::query(
        "UPDATE rbac_gateway_audit_outbox SET delivered_at_utc = NULL, next_attempt_utc = now() WHERE audit_id = $1",
    )
    .bind(&first)
    .execute(&db.pool)
    .await
    .unwrap();
    eventually(Duration::from_secs(20), "delivered again", || async {
        delivered(&db, &first).await
    })
    .await;
    let after = writer.state().await;
    assert_eq!(after["duplicates"], 1, "{after}");
    assert_eq!(after["events"], before["events"], "the chain is unchanged");
    assert_eq!(after["chain_ok"], true, "{after}");
    eventually(
        Duration::from_secs(10),
        "three deliveries counted",
        || async {
            gw.metric("rbac_gateway_audit_outbox_deliveries_total{result=\"delivered\"}")
                .await
                == 3.0
        },
    )
    .await;
    // An event changed behind the writer's back breaks the chain's check.
    let out = Command::new(tool("python3"))
        .arg("-c")
        .arg("import sqlite3,sys; d=sqlite3.connect(sys.argv[1]); d.execute(\"UPDATE events SET event=replace(event,'expired','ticket_closed') WHERE seq=1\"); d.commit()")
        .arg(&writer.db)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tampered = writer.state().await;
    assert_eq!(tampered["chain_ok"], false, "{tampered}");
}

/// A wrong token is refused (401): the row stays owed and counted, retried; past
/// `--audit-writer-alert-after` it is alerted once, on /readyz and in the overdue gauge.
#[tokio::test]
async fn a_wrong_token_is_refused_and_the_row_stays_owed_and_alerted() {
    let db = TestDb::new().await;
    let up = Upstream::start().await;
    let writer = Writer::start(&[]).await;
    let gw = gateway(
        &db,
        &up,
        Some(&writer.url()),
        "not-the-writers-token-0123456789",
        &["--audit-writer-alert-after", "1"],
    )
    .await;
    let (admin, _) = db.admin_with_roles(&[]).await;
    let (_, id) = expired_grant(&db, &admin, "T-token").await;
    eventually(Duration::from_secs(20), "refused twice", || async {
        writer.state().await["refused"].as_i64().unwrap() >= 2
    })
    .await;
    let (_, done, error) = outbox(&db, &id).await.unwrap();
    assert!(!done);
    assert!(
        error.as_deref().unwrap_or("").contains("HTTP 401"),
        "{error:?}"
    );
    assert!(writer.keys().await.is_empty());
    eventually(Duration::from_secs(10), "overdue on /readyz", || async {
        let r = gw.admin_get("/readyz").await;
        r.status == 200 && r.body_str().contains("undelivered for more than 1s")
    })
    .await;
    assert!(gw
        .admin_get("/readyz")
        .await
        .body_str()
        .contains("HTTP 401"));
    eventually(Duration::from_secs(10), "the overdue gauge", || async {
        gw.metric("rbac_gateway_audit_outbox_overdue").await == 1.0
    })
    .await;
    let alerts: Vec<String> =
        sqlx::query_scalar("SELECT text FROM rbac_gateway_alerts WHERE key LIKE 'audit_writer:%'")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert!(
        alerts[0].contains("I-5: 1 rbac_grants_audit row(s)"),
        "{alerts:?}"
    );
    assert!(alerts[0].contains(&id), "{alerts:?}");
}

/// Without `--audit-writer-url` the rows are kept, counted and alerted, and the gateway says at
/// start and on /readyz that I-5 is not met.
#[tokio::test]
async fn without_a_writer_the_rows_wait_and_i5_is_said_not_met() {
    let db = TestDb::new().await;
    let up = Upstream::start().await;
    let gw = gateway(&db, &up, None, "", &["--audit-writer-alert-after", "1"]).await;
    assert!(gw.log().contains("I-5 is NOT met"), "{}", gw.log());
    let (admin, _) = db.admin_with_roles(&[]).await;
    let (_, id) = expired_grant(&db, &admin, "T-none").await;
    eventually(Duration::from_secs(20), "the row counted", || async {
        gw.metric("rbac_gateway_audit_outbox_undelivered").await == 1.0
    })
    .await;
    assert_eq!(outbox(&db, &id).await, Some((0, false, None)));
    let r = gw.admin_get("/readyz").await;
    assert_eq!(r.status, 200);
    assert!(
        r.body_str()
            .contains("I-5 not met: no --audit-writer-url; 1 rbac_grants_audit row(s)"),
        "{}",
        r.body_str()
    );
    eventually(Duration::from_secs(10), "the alert", || async {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM rbac_gateway_alerts WHERE key LIKE 'audit_writer:%' AND text LIKE '%I-5 is not met%'",
        )
        .fetch_one(&db.pool)
        .await
        .unwrap();
        n == 1
    })
    .await;
}

/// The token comes from a file or the environment, never a flag; a URL without one, or both,
/// is refused before anything starts.
#[tokio::test]
async fn the_writer_s_token_is_required_and_never_a_flag() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    std::fs::write(&file, format!("{TOKEN}\n")).unwrap();
    let run = |args: &[&str], env: Option<&str>| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_rbac-gateway"));
        c.arg("serve")
            .args(["--routes"])
            .arg(core_routes())
            .args(["--database-url", "postgres://nobody@127.0.0.1:1/none"])
            .args(args)
            .env_remove("GATEWAY_AUDIT_WRITER_TOKEN")
            .env_remove("GATEWAY_AUDIT_WRITER_URL")
            .env_remove("GATEWAY_AUDIT_WRITER_TOKEN_FILE");
        if let Some(t) = env {
            c.env("GATEWAY_AUDIT_WRITER_TOKEN", t);
        }
        let out = c.output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let url = "http://127.0.0.1:9/api/internal/customer-audit/events";
    let (code, err) = run(&["--audit-writer-url", url], None);
    assert_eq!(code, Some(64), "{err}");
    assert!(err.contains("needs the writer's service token"), "{err}");
    let file_arg = file.to_str().unwrap();
    let (code, err) = run(
        &[
            "--audit-writer-url",
            url,
            "--audit-writer-token-file",
            file_arg,
        ],
        Some(TOKEN),
    );
    assert_eq!(code, Some(64), "{err}");
    assert!(err.contains("both set"), "{err}");
    let (code, err) = run(
        &["--audit-writer-url", url, "--audit-writer-token", TOKEN],
        None,
    );
    assert_eq!(code, Some(64), "{err}");
    assert!(
        err.contains("unexpected argument '--audit-writer-token'"),
        "{err}"
    );
    let (code, err) = run(&["--audit-writer-url", url], Some("short"));
    assert_eq!(code, Some(64), "{err}");
    let (code, err) = run(&["--audit-writer-token-file", file_arg], None);
    assert_eq!(code, Some(64), "{err}");
    assert!(err.contains("no --audit-writer-url"), "{err}");
}

/// The gateway's rows that have no outbox entry (written before migration 0031, or by an older
/// binary during a rolling upgrade) are entered at start and delivered; Console's own rows are
/// not the gateway's to send.
#[tokio::test]
async fn the_gateways_rows_without_an_entry_are_adopted_and_consoles_are_not() {
    let db = TestDb::new().await;
    let up = Upstream::start().await;
    let writer = Writer::start(&[]).await;
    let (admin, _) = db.admin_with_roles(&[]).await;
    let old = uuid::Uuid::new_v4().to_string();
    let consoles = uuid::Uuid::new_v4().to_string();
    sqlx::query(
        "INSERT INTO rbac_grants_audit (id, event_type, target_user_id, ticket_id, customer_id, justification, granted_by) \
         VALUES ($1, 'ticket_expire', $3, 'T-old', 5, 'expired', 'rbac-gateway'), \
                ($2, 'grant', $3, NULL, NULL, 'onboarding', 'console-admin@example.test')",
    )
    .bind(&old)
    .bind(&consoles)
    .bind(&admin)
    .execute(&db.pool)
    .await
    .unwrap();
    let gw = gateway(&db, &up, Some(&writer.url()), TOKEN, &[]).await;
    eventually_explained(
        Duration::from_secs(20),
        "the older row delivered",
        || async { delivered(&db, &old).await },
        || async { gw.log() },
    )
    .await;
    assert_eq!(writer.keys().await, vec![old.clone()]);
    assert_eq!(
        outbox(&db, &consoles).await,
        None,
        "Console's row is Console's"
    );
    assert!(gw.log().contains("without an outbox entry"), "{}", gw.log());
}

/// The row and its debt are one statement: an outbox that refuses the entry refuses the row
/// and the revocation with it (the grant stays active, retried, nothing half-done); once it
/// takes entries, the grant is revoked and its event delivered (the time from the revocation to
/// the event at the writer is printed: one outbox pass a second).
#[tokio::test]
async fn no_row_is_written_without_its_debt() {
    let db = TestDb::new().await;
    let up = Upstream::start().await;
    let writer = Writer::start(&[]).await;
    sqlx::raw_sql(
        "CREATE FUNCTION refuse_outbox() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
         RAISE EXCEPTION 'outbox refused'; END $$; \
         CREATE TRIGGER refuse_outbox BEFORE INSERT ON rbac_gateway_audit_outbox \
         FOR EACH ROW EXECUTE FUNCTION refuse_outbox()",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let gw = gateway(&db, &up, Some(&writer.url()), TOKEN, &[]).await;
    let (admin, _) = db.admin_with_roles(&[]).await;
    let (g, id) = expired_grant(&db, &admin, "T-atomic").await;
    eventually(Duration::from_secs(10), "a failed revocation", || async {
        gw.log().contains("outbox refused")
    })
    .await;
    assert_eq!(
        crate::lifecycle::revoked(&db, &g).await,
        None,
        "not revoked"
    );
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM rbac_grants_audit WHERE id = $1")
        .bind(&id)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(rows, 0, "no audit row without its outbox entry");
    sqlx::raw_sql("DROP TRIGGER refuse_outbox ON rbac_gateway_audit_outbox")
        .execute(&db.pool)
        .await
        .unwrap();
    eventually(Duration::from_secs(10), "revoked", || async {
        crate::lifecycle::revoked(&db, &g).await.is_some()
    })
    .await;
    let t0 = Instant::now();
    eventually(
        Duration::from_secs(10),
        "the event at the writer",
        || async { writer.keys().await == vec![id.clone()] },
    )
    .await;
    eprintln!("revocation seen to event at the writer: {:?}", t0.elapsed());
}
