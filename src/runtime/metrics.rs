//! The Prometheus registry: what an operator charts. Names are stable (dashboards use them).

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// The `class` labels of `rbac_gateway_upstream_duration_seconds`: Console's status by its
/// first digit, 1xx to 5xx (a status is counted under `STATUS_CLASSES[status / 100 - 1]`).
pub const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

pub struct Metrics {
    registry: Registry,
    /// Requests by decision: allowed, denied, redirected, refused, public, machine, gone, off,
    /// shadow_denied, unavailable.
    pub requests: IntCounterVec,
    /// Forward-auth answers (`/authz`), by decision.
    pub authz_requests: IntCounterVec,
    /// Client connections accepted, by listener (`data plane`, `forward-auth`): with requests,
    /// shows whether an edge keeps its connections.
    pub connections: IntCounterVec,
    /// Time to decide (before the upstream is contacted), by decision.
    pub decision_seconds: HistogramVec,
    /// Denials by route label (no_route uses "-").
    pub denials_by_route: IntCounterVec,
    /// Refusals (400) by reason.
    pub refusals: IntCounterVec,
    pub cache_hits: IntCounterVec,
    pub cache_misses: IntCounterVec,
    /// Every statement sent to PostgreSQL on the request path (steady state: 0 per request).
    pub db_queries: IntCounter,
    pub db_errors: IntCounter,
    /// Audit rows made durable, by sink: database, spool, rejected (set aside beside the spool:
    /// the database cannot store them).
    pub audit_rows: IntCounterVec,
    /// Audit rows replayed from the spool into the database.
    pub audit_replayed: IntCounter,
    /// Denials without a session counted into their window's row (`gateway/anonymous.rs`).
    pub anonymous_denials_counted: IntCounter,
    pub audit_spool_bytes: IntGauge,
    /// 1 for the active mapping's version.
    pub mapping_info: IntGaugeVec,
    pub mapping_reloads: IntCounterVec,
    /// Shadow mode: gateway and Console disagree, by route and kind.
    pub drift: IntCounterVec,
    /// Shadow mode: gateway and Console agree, by route.
    pub shadow_agreements: IntCounterVec,
    /// Shadow mode: requests the gateway would have denied (forwarded), by route.
    pub shadow_denials: IntCounterVec,
    /// 1 per rule of the live mapping, by route, cluster and effective mode (the kill switch
    /// applied): the cutover dashboard's modes per cluster, and the join from a route's
    /// counters to its cluster.
    pub route_info: IntGaugeVec,
    /// Upstream response time (first byte of the response head), by status class.
    pub upstream_seconds: HistogramVec,
    /// Entries per cache (refreshed when /metrics is read).
    pub cache_entries: IntGaugeVec,
    /// Database pool connections by state: open, idle (refreshed when /metrics is read).
    pub db_pool: IntGaugeVec,
    /// Audit rows waiting for the writer.
    pub audit_queue_depth: IntGauge,
    /// Multi-row INSERTs (or spool appends) the writer made.
    pub audit_batches: IntCounter,
    /// Change-feed rows applied (cache evictions).
    pub feed_events: IntCounter,
    /// Background tasks that stopped (returned or panicked), by task.
    pub task_failures: IntCounterVec,
    /// Lifecycle sweeps by result: done, skipped (another replica held the lock), failed.
    pub sweeps: IntCounterVec,
    /// Grants the sweep ended, by reason: ticket_closed, expired, break_glass_expire.
    pub sweep_revocations: IntCounterVec,
    /// Sweep failures: a failed sweep, or a ticket FreeScout did not answer for.
    pub sweep_failures: IntCounter,
    /// Unix time of the last sweep with no failure.
    pub sweep_last_success: IntGauge,
    pub feed_last_read: IntGauge,
    /// The change feed's completed reads of the log (a read that starts after a commit has
    /// applied it: tests wait on this instead of a fixed time).
    pub feed_reads: IntCounter,
    /// Alert deliveries by result: delivered, failed (retried).
    pub alerts: IntCounterVec,
    /// Alert passes by result: done, skipped (another replica held the lock), failed.
    pub alert_passes: IntCounterVec,
    /// Grants or break-glass sessions whose rows the sweep could not write (retried).
    pub sweep_item_failures: IntCounter,
    /// I-5: deliveries to Console's audit writer by result: delivered, failed (retried with
    /// backoff), db_error (a pass whose database step failed).
    pub audit_outbox_deliveries: IntCounterVec,
    /// I-5: the gateway's `rbac_grants_audit` rows not yet delivered to the audit writer.
    pub audit_outbox_undelivered: IntGauge,
    /// I-5: of those, the ones owed longer than `--audit-writer-alert-after`.
    pub audit_outbox_overdue: IntGauge,
    /// I-5: seconds since the oldest undelivered row was written (0: none).
    pub audit_outbox_oldest_seconds: IntGauge,
    /// FreeScout webhook calls by result (see doors/freescout_webhook.rs).
    pub freescout_webhooks: IntCounterVec,
    /// Targeted cache invalidations that failed (the whole cache was cleared instead).
    pub cache_invalidation_errors: IntCounter,
    /// OpenTelemetry export losses by signal: spans dropped (queue full, or the collector did
    /// not take them), metric exports that failed. 0 while telemetry is off.
    pub telemetry_dropped: IntCounterVec,
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let m = Metrics {
            connections: IntCounterVec::new(
                Opts::new(
                    "rbac_gateway_connections_accepted_total",
                    "Client connections accepted, by listener",
                ),
                &["listener"],
            )
            .unwrap(),
            authz_requests: IntCounterVec::new(
                Opts::new(
                    "rbac_gateway_authz_requests_total",
                    "Forward-auth answers to edge proxies, by decision",
                ),
                &["decision"],
            )
            .unwrap(),
            requests: IntCounterVec::new(
                Opts::new("rbac_gateway_requests_total", "Requests by decision"),
                &["decision"],
            )
            .unwrap(),
            decision_seconds: HistogramVec::new(
                HistogramOpts::new(
                    "rbac_gateway_decision_duration_seconds",
                    "Time to decide a request",
                )
                .buckets(vec![
                    0.00001, 0.00005, 0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0,
                ]),
                &["decision"],
            )
            .unwrap(),
            denials_by_route: IntCounterVec::new(
                Opts::new("rbac_gateway_denials_total", "403s by route and reason"),
                &["route", "reason"],
            )
            .unwrap(),
            refusals: IntCounterVec::new(
                Opts::new("rbac_gateway_refusals_total", "400s by reason"),
                &["reason"],
            )
            .unwrap(),
            cache_hits: IntCounterVec::new(
                Opts::new("rbac_gateway_cache_hits_total", "Cache hits by cache"),
                &["cache"],
            )
            .unwrap(),
            cache_misses: IntCounterVec::new(
                Opts::new("rbac_gateway_cache_misses_total", "Cache misses by cache"),
                &["cache"],
            )
            .unwrap(),
            db_queries: IntCounter::new(
                "rbac_gateway_db_queries_total",
                "Statements sent to PostgreSQL for requests",
            )
            .unwrap(),
            db_errors: IntCounter::new(
                "rbac_gateway_db_errors_total",
                "Failed database round trips",
            )
            .unwrap(),
            audit_rows: IntCounterVec::new(
                Opts::new(
                    "rbac_gateway_audit_rows_total",
                    "Audit rows made durable, by sink (late: the row of a denial answered 503, stored when the database answered again; lost: one the gateway could not keep)",
                ),
                &["sink"],
            )
            .unwrap(),
            audit_replayed: IntCounter::new(
                "rbac_gateway_audit_replayed_total",
                "Audit rows replayed from the spool into PostgreSQL",
            )
            .unwrap(),
            anonymous_denials_counted: IntCounter::new(
                "rbac_gateway_anonymous_denials_counted_total",
                "Denials without a session counted into their window's one row (client, reason, rule) instead of a row each",
            )
            .unwrap(),
            audit_spool_bytes: IntGauge::new(
                "rbac_gateway_audit_spool_bytes",
                "Bytes waiting in the audit spool",
            )
            .unwrap(),
            mapping_info: IntGaugeVec::new(
                Opts::new(
                    "rbac_gateway_mapping_info",
                    "The active mapping version (value 1)",
                ),
                &["version"],
            )
            .unwrap(),
            mapping_reloads: IntCounterVec::new(
                Opts::new(
                    "rbac_gateway_mapping_reloads_total",
                    "Mapping reloads by result",
                ),
                &["result"],
            )
            .unwrap(),
            drift: IntCounterVec::new(
                Opts::new(
                    "rbac_gateway_drift_total",
                    "Shadow mode: the gateway and Console disagree",
                ),
                &["route", "kind"],
            )
            .unwrap(),
            shadow_agreements: IntCounterVec::new(
                Opts::new(
                    "rbac_gateway_shadow_agreements_total",
                    "Shadow mode: the gateway and Console agree",
                ),
                &["route"],
            )
            .unwrap(),
            shadow_denials: IntCounterVec::new(
                Opts::new(
                    "rbac_gateway_shadow_denials_total",
                    "Shadow mode: requests the gateway would have denied, forwarded",
                ),
                &["route"],
            )
            .unwrap(),
            route_info: IntGaugeVec::new(
                Opts::new(
                    "rbac_gateway_route_info",
                    "Each rule of the live mapping (value 1), by cluster and effective mode",
                ),
                &["route", "cluster", "mode"],
            )
            .unwrap(),
            feed_events: IntCounter::new(
                "rbac_gateway_feed_events_total",
                "Change-feed rows applied to the caches",
            )
            .unwrap(),
            upstream_seconds: HistogramVec::new(
                HistogramOpts::new(
                    "rbac_gateway_upstream_duration_seconds",
                    "Upstream response time to the response head",
                )
                .buckets(vec![
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    10.0,
                ]),
                &["status_class"],
            )
            .unwrap(),
            cache_entries: IntGaugeVec::new(
                Opts::new("rbac_gateway_cache_entries", "Entries per cache"),
                &["cache"],
            )
            .unwrap(),
            db_pool: IntGaugeVec::new(
                Opts::new(
                    "rbac_gateway_db_pool_connections",
                    "Database pool connections by state",
                ),
                &["state"],
            )
            .unwrap(),
            audit_queue_depth: IntGauge::new(
                "rbac_gateway_audit_queue_depth",
                "Audit rows waiting for the writer",
            )
            .unwrap(),
            audit_batches: IntCounter::new(
                "rbac_gateway_audit_batches_total",
                "Group commits made by the audit writer",
            )
            .unwrap(),
            task_failures: IntCounterVec::new(
                Opts::new(
                    "rbac_gateway_task_failures_total",
                    "Background tasks that stopped, by task",
                ),
                &["task"],
            )
            .unwrap(),
            sweeps: IntCounterVec::new(
                Opts::new("rbac_gateway_sweeps_total", "Lifecycle sweeps by result"),
                &["result"],
            )
            .unwrap(),
            sweep_revocations: IntCounterVec::new(
                Opts::new(
                    "rbac_gateway_sweep_revocations_total",
                    "Grants the lifecycle sweep ended, by reason",
                ),
                &["reason"],
            )
            .unwrap(),
            sweep_failures: IntCounter::new(
                "rbac_gateway_sweep_failures_total",
                "Failed sweeps and tickets FreeScout did not answer for",
            )
            .unwrap(),
            sweep_last_success: IntGauge::new(
                "rbac_gateway_sweep_last_success_timestamp_seconds",
                "Unix time of the last sweep without a failure",
            )
            .unwrap(),
            feed_reads: IntCounter::new(
                "rbac_gateway_feed_reads_total",
                "The change feed's completed reads of rbac_change_log",
            )
            .unwrap(),
            feed_last_read: IntGauge::new(
                "rbac_gateway_feed_last_read_timestamp_seconds",
                "Unix time of the change feed's last successful read of rbac_change_log",
            )
            .unwrap(),
            alerts: IntCounterVec::new(
                Opts::new("rbac_gateway_alerts_total", "Alert deliveries by result"),
                &["result"],
            )
            .unwrap(),
            alert_passes: IntCounterVec::new(
                Opts::new("rbac_gateway_alert_passes_total", "Alert passes by result"),
                &["result"],
            )
            .unwrap(),
            sweep_item_failures: IntCounter::new(
                "rbac_gateway_sweep_item_failures_total",
                "Grants or break-glass sessions whose rows the sweep could not write (retried next sweep)",
            )
            .unwrap(),
            audit_outbox_deliveries: IntCounterVec::new(
                Opts::new(
                    "rbac_gateway_audit_outbox_deliveries_total",
                    "Deliveries of rbac_grants_audit rows to Console's audit writer (I-5) by result",
                ),
                &["result"],
            )
            .unwrap(),
            audit_outbox_undelivered: IntGauge::new(
                "rbac_gateway_audit_outbox_undelivered",
                "rbac_grants_audit rows the gateway wrote that Console's audit writer has not taken yet (I-5)",
            )
            .unwrap(),
            audit_outbox_overdue: IntGauge::new(
                "rbac_gateway_audit_outbox_overdue",
                "Undelivered rbac_grants_audit rows owed longer than --audit-writer-alert-after (I-5)",
            )
            .unwrap(),
            audit_outbox_oldest_seconds: IntGauge::new(
                "rbac_gateway_audit_outbox_oldest_seconds",
                "Seconds since the oldest undelivered rbac_grants_audit row was written (I-5; 0: none)",
            )
            .unwrap(),
            freescout_webhooks: IntCounterVec::new(
                Opts::new(
                    "rbac_gateway_freescout_webhooks_total",
                    "FreeScout webhook calls by result",
                ),
                &["result"],
            )
            .unwrap(),
            cache_invalidation_errors: IntCounter::new(
                "rbac_gateway_cache_invalidation_errors_total",
                "Targeted cache invalidations that failed (the cache was cleared instead)",
            )
            .unwrap(),
            telemetry_dropped: IntCounterVec::new(
                Opts::new(
                    "rbac_gateway_telemetry_dropped_total",
                    "OpenTelemetry export losses by signal: spans dropped or not taken by the collector, metric exports that failed",
                ),
                &["signal"],
            )
            .unwrap(),
            registry,
        };
        let r = &m.registry;
        r.register(Box::new(m.requests.clone())).unwrap();
        r.register(Box::new(m.authz_requests.clone())).unwrap();
        r.register(Box::new(m.connections.clone())).unwrap();
        r.register(Box::new(m.decision_seconds.clone())).unwrap();
        r.register(Box::new(m.denials_by_route.clone())).unwrap();
        r.register(Box::new(m.refusals.clone())).unwrap();
        r.register(Box::new(m.cache_hits.clone())).unwrap();
        r.register(Box::new(m.cache_misses.clone())).unwrap();
        r.register(Box::new(m.db_queries.clone())).unwrap();
        r.register(Box::new(m.db_errors.clone())).unwrap();
        r.register(Box::new(m.audit_rows.clone())).unwrap();
        r.register(Box::new(m.audit_replayed.clone())).unwrap();
        r.register(Box::new(m.anonymous_denials_counted.clone()))
            .unwrap();
        r.register(Box::new(m.audit_spool_bytes.clone())).unwrap();
        r.register(Box::new(m.mapping_info.clone())).unwrap();
        r.register(Box::new(m.mapping_reloads.clone())).unwrap();
        r.register(Box::new(m.drift.clone())).unwrap();
        r.register(Box::new(m.shadow_agreements.clone())).unwrap();
        r.register(Box::new(m.shadow_denials.clone())).unwrap();
        r.register(Box::new(m.route_info.clone())).unwrap();
        r.register(Box::new(m.feed_events.clone())).unwrap();
        r.register(Box::new(m.audit_queue_depth.clone())).unwrap();
        r.register(Box::new(m.upstream_seconds.clone())).unwrap();
        r.register(Box::new(m.cache_entries.clone())).unwrap();
        r.register(Box::new(m.db_pool.clone())).unwrap();
        r.register(Box::new(m.audit_batches.clone())).unwrap();
        r.register(Box::new(m.task_failures.clone())).unwrap();
        r.register(Box::new(m.sweeps.clone())).unwrap();
        r.register(Box::new(m.sweep_revocations.clone())).unwrap();
        r.register(Box::new(m.sweep_failures.clone())).unwrap();
        r.register(Box::new(m.sweep_last_success.clone())).unwrap();
        r.register(Box::new(m.feed_last_read.clone())).unwrap();
        r.register(Box::new(m.feed_reads.clone())).unwrap();
        r.register(Box::new(m.alerts.clone())).unwrap();
        r.register(Box::new(m.alert_passes.clone())).unwrap();
        r.register(Box::new(m.sweep_item_failures.clone())).unwrap();
        r.register(Box::new(m.audit_outbox_deliveries.clone()))
            .unwrap();
        r.register(Box::new(m.audit_outbox_undelivered.clone()))
            .unwrap();
        r.register(Box::new(m.audit_outbox_overdue.clone()))
            .unwrap();
        r.register(Box::new(m.audit_outbox_oldest_seconds.clone()))
            .unwrap();
        r.register(Box::new(m.freescout_webhooks.clone())).unwrap();
        r.register(Box::new(m.cache_invalidation_errors.clone()))
            .unwrap();
        r.register(Box::new(m.telemetry_dropped.clone())).unwrap();
        m.initialise_labels();
        m
    }

    /// Creates every labelled series whose labels are known in advance, at 0, so a dashboard
    /// query (and `rate()`) finds them from start-up instead of after the first event.
    /// The labels that belong to the policy and the doors (decisions, refusals, task names,
    /// listeners, webhook results) are created by `serve`'s one list (`cli/serve/assemble.rs`).
    fn initialise_labels(&self) {
        for c in ["session", "principal"] {
            self.cache_hits.with_label_values(&[c]);
            self.cache_misses.with_label_values(&[c]);
            self.cache_entries.with_label_values(&[c]);
        }
        for s in ["database", "spool", "rejected", "late", "lost"] {
            self.audit_rows.with_label_values(&[s]);
        }
        for r in ["success", "failure"] {
            self.mapping_reloads.with_label_values(&[r]);
        }
        for c in STATUS_CLASSES {
            self.upstream_seconds.with_label_values(&[c]);
        }
        for s in ["open", "idle"] {
            self.db_pool.with_label_values(&[s]);
        }
        for r in ["done", "skipped", "failed"] {
            self.sweeps.with_label_values(&[r]);
        }
        for r in ["delivered", "failed"] {
            self.alerts.with_label_values(&[r]);
        }
        for r in ["delivered", "failed", "db_error"] {
            self.audit_outbox_deliveries.with_label_values(&[r]);
        }
        for s in ["spans", "metrics"] {
            self.telemetry_dropped.with_label_values(&[s]);
        }
        for r in ["done", "skipped", "failed"] {
            self.alert_passes.with_label_values(&[r]);
        }
        for r in ["ticket_closed", "expired", "break_glass_expire"] {
            self.sweep_revocations.with_label_values(&[r]);
        }
    }

    /// Every family as `/metrics` serves it (the OTLP export sends the same).
    pub fn gather(&self) -> Vec<prometheus::proto::MetricFamily> {
        self.registry.gather()
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding never fails");
        String::from_utf8(buf).expect("prometheus text is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
