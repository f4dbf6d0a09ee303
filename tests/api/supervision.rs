//! Supervised background tasks: a task that dies is named by /readyz (503) and counted.

use std::time::Duration;

use crate::helpers::*;

#[tokio::test]
#[cfg_attr(
    not(debug_assertions),
    ignore = "GATEWAY_TEST_PANIC_TASK exists in debug builds only"
)]
async fn a_dead_background_task_makes_readyz_fail_and_is_counted() {
    // audit_writer: the writer runs on the data plane's first worker while it serves.
    for task in ["feed", "reload", "audit_replay", "audit_writer"] {
        let db = TestDb::new().await;
        let up = Upstream::start().await;
        let mut opts =
            GatewayOpts::new(core_routes(), &db, up.addr).env("GATEWAY_TEST_PANIC_TASK", task);
        opts.wait_ready = false;
        let gw = Gateway::start(opts).await;
        // (a dead feed also leaves its log unread: that line names the feed too)
        let stopped = format!("background task stopped: {task}");
        let what = || format!("/readyz never named {task}");
        let body = eventually_some(Duration::from_secs(10), what, || async {
            let r = gw.admin_get("/readyz").await;
            (r.status == 503 && r.body_str().contains(&stopped)).then(|| r.body_str().to_string())
        })
        .await;
        assert!(body.contains("background task stopped"), "{body}");
        assert_eq!(
            gw.metric(&format!(
                "rbac_gateway_task_failures_total{{task=\"{task}\"}}"
            ))
            .await,
            1.0
        );
        assert!(gw.log().contains("a background task stopped"));
        // /healthz still answers: the process is alive, it is just not ready.
        assert_eq!(gw.admin_get("/healthz").await.status, 200);
    }
    // Without a fault every task is alive and counted at zero from the start.
    let env = Env::core().await;
    assert_eq!(env.gw.admin_get("/readyz").await.status, 200);
    let metrics = env.gw.admin_get("/metrics").await.body_str();
    for task in ["feed", "reload", "audit_writer", "audit_replay", "admin"] {
        assert!(
            metrics.contains(&format!(
                "rbac_gateway_task_failures_total{{task=\"{task}\"}} 0"
            )),
            "{task}"
        );
    }
}
