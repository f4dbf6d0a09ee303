//! The Prometheus registry: what an operator charts. Names are stable (dashboards use them).

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// The `class` labels of `rbac_gateway_upstream_duration_seconds`: Console's status by its
/// first digit, 1xx to 5xx (a status is counted under `STATUS_CLASSES[status / 100 - 1]`).
pub const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// The families, a row each: field, kind, name, help, labels (and a histogram's buckets). Each
/// is made and registered once by [`Metrics::new`].
macro_rules! metrics {
    ($(
        $(#[$doc:meta])*
        $field:ident: $kind:ident = $name:literal, $help:literal, [$($label:literal),*]
            $(, buckets [$($bucket:literal),*])?;
    )*) => {
        pub struct Metrics {
            registry: Registry,
            $($(#[$doc])* pub $field: $kind,)*
        }

        impl Metrics {
            pub fn new() -> Metrics {
                let registry = Registry::new();
                $(
                    let buckets: Option<Vec<f64>> = None $(.or(Some(vec![$($bucket),*])))?;
                    let $field = <$kind as Family>::make($name, $help, &[$($label),*], buckets);
                    registry
                        .register(Box::new($field.clone()))
                        .expect("each family is registered once, under its own name");
                )*
                let m = Metrics { registry, $($field),* };
                m.initialise_labels();
                m
            }
        }
    };
}

/// A metric family [`metrics!`] can make from its row.
trait Family: prometheus::core::Collector + Clone + 'static {
    fn make(name: &str, help: &str, labels: &[&str], buckets: Option<Vec<f64>>) -> Self;
}

impl Family for IntCounter {
    fn make(name: &str, help: &str, _: &[&str], _: Option<Vec<f64>>) -> Self {
        IntCounter::new(name, help).expect("a valid name")
    }
}

impl Family for IntGauge {
    fn make(name: &str, help: &str, _: &[&str], _: Option<Vec<f64>>) -> Self {
        IntGauge::new(name, help).expect("a valid name")
    }
}

impl Family for IntCounterVec {
    fn make(name: &str, help: &str, labels: &[&str], _: Option<Vec<f64>>) -> Self {
        IntCounterVec::new(Opts::new(name, help), labels).expect("a valid name and labels")
    }
}

impl Family for IntGaugeVec {
    fn make(name: &str, help: &str, labels: &[&str], _: Option<Vec<f64>>) -> Self {
        IntGaugeVec::new(Opts::new(name, help), labels).expect("a valid name and labels")
    }
}

impl Family for HistogramVec {
    fn make(name: &str, help: &str, labels: &[&str], buckets: Option<Vec<f64>>) -> Self {
        let opts = HistogramOpts::new(name, help);
        let opts = match buckets {
            Some(b) => opts.buckets(b),
            None => opts,
        };
        HistogramVec::new(opts, labels).expect("a valid name, labels and buckets")
    }
}

metrics! {
    /// Requests by decision: allowed, denied, redirected, refused, public, machine, gone, off,
    /// shadow_denied, unavailable.
    requests: IntCounterVec = "rbac_gateway_requests_total", "Requests by decision", ["decision"];
    /// Forward-auth answers (`/authz`), by decision.
    authz_requests: IntCounterVec = "rbac_gateway_authz_requests_total",
        "Forward-auth answers to edge proxies, by decision", ["decision"];
    /// Client connections accepted, by listener (`data plane`, `forward-auth`): with requests,
    /// shows whether an edge keeps its connections.
    connections: IntCounterVec = "rbac_gateway_connections_accepted_total",
        "Client connections accepted, by listener", ["listener"];
    /// Time to decide (before the upstream is contacted), by decision.
    decision_seconds: HistogramVec = "rbac_gateway_decision_duration_seconds",
        "Time to decide a request", ["decision"],
        buckets [0.00001, 0.00005, 0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0];
    /// Denials by route label (no_route uses "-").
    denials_by_route: IntCounterVec = "rbac_gateway_denials_total",
        "403s by route and reason", ["route", "reason"];
    /// Refusals (400) by reason.
    refusals: IntCounterVec = "rbac_gateway_refusals_total", "400s by reason", ["reason"];
    cache_hits: IntCounterVec = "rbac_gateway_cache_hits_total", "Cache hits by cache", ["cache"];
    cache_misses: IntCounterVec = "rbac_gateway_cache_misses_total",
        "Cache misses by cache", ["cache"];
    /// Every statement sent to PostgreSQL on the request path (steady state: 0 per request).
    db_queries: IntCounter = "rbac_gateway_db_queries_total",
        "Statements sent to PostgreSQL for requests", [];
    db_errors: IntCounter = "rbac_gateway_db_errors_total", "Failed database round trips", [];
    /// Audit rows made durable, by sink: database, spool, rejected (set aside beside the spool:
    /// the database cannot store them).
    audit_rows: IntCounterVec = "rbac_gateway_audit_rows_total",
        "Audit rows made durable, by sink (late: the row of a denial answered 503, stored when the database answered again; lost: one the gateway could not keep)", ["sink"];
    /// Audit rows replayed from the spool into the database.
    audit_replayed: IntCounter = "rbac_gateway_audit_replayed_total",
        "Audit rows replayed from the spool into PostgreSQL", [];
    /// Denials without a session counted into their window's row (`gateway/anonymous.rs`).
    anonymous_denials_counted: IntCounter = "rbac_gateway_anonymous_denials_counted_total",
        "Denials without a session counted into their window's one row (client, reason, rule) instead of a row each", [];
    audit_spool_bytes: IntGauge = "rbac_gateway_audit_spool_bytes",
        "Bytes waiting in the audit spool", [];
    /// 1 for the active mapping's version.
    mapping_info: IntGaugeVec = "rbac_gateway_mapping_info",
        "The active mapping version (value 1)", ["version"];
    mapping_reloads: IntCounterVec = "rbac_gateway_mapping_reloads_total",
        "Mapping reloads by result", ["result"];
    /// Shadow mode: gateway and Console disagree, by route and kind.
    drift: IntCounterVec = "rbac_gateway_drift_total",
        "Shadow mode: the gateway and Console disagree", ["route", "kind"];
    /// Shadow mode: gateway and Console agree, by route.
    shadow_agreements: IntCounterVec = "rbac_gateway_shadow_agreements_total",
        "Shadow mode: the gateway and Console agree", ["route"];
    /// Shadow mode: requests the gateway would have denied (forwarded), by route.
    shadow_denials: IntCounterVec = "rbac_gateway_shadow_denials_total",
        "Shadow mode: requests the gateway would have denied, forwarded", ["route"];
    /// 1 per rule of the live mapping, by route, cluster and effective mode (the kill switch
    /// applied): the cutover dashboard's modes per cluster, and the join from a route's
    /// counters to its cluster.
    route_info: IntGaugeVec = "rbac_gateway_route_info",
        "Each rule of the live mapping (value 1), by cluster and effective mode", ["route", "cluster", "mode"];
    /// Upstream response time (first byte of the response head), by status class.
    upstream_seconds: HistogramVec = "rbac_gateway_upstream_duration_seconds",
        "Upstream response time to the response head", ["status_class"],
        buckets [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
    /// Entries per cache (refreshed when /metrics is read).
    cache_entries: IntGaugeVec = "rbac_gateway_cache_entries", "Entries per cache", ["cache"];
    /// Database pool connections by state: open, idle (refreshed when /metrics is read).
    db_pool: IntGaugeVec = "rbac_gateway_db_pool_connections",
        "Database pool connections by state", ["state"];
    /// The `--lookup-database-url` pool's connections by state: open, idle (refreshed when
    /// /metrics is read; 0 without the flag, whose lookups use the main pool).
    lookup_pool: IntGaugeVec = "rbac_gateway_lookup_pool_connections",
        "Lookup pool (--lookup-database-url) connections by state", ["state"];
    /// Audit rows waiting for the writer.
    audit_queue_depth: IntGauge = "rbac_gateway_audit_queue_depth",
        "Audit rows waiting for the writer", [];
    /// Multi-row INSERTs (or spool appends) the writer made.
    audit_batches: IntCounter = "rbac_gateway_audit_batches_total",
        "Group commits made by the audit writer", [];
    /// Change-feed rows applied (cache evictions).
    feed_events: IntCounter = "rbac_gateway_feed_events_total",
        "Change-feed rows applied to the caches", [];
    /// Background tasks that stopped (returned or panicked), by task.
    task_failures: IntCounterVec = "rbac_gateway_task_failures_total",
        "Background tasks that stopped, by task", ["task"];
    /// Lifecycle sweeps by result: done, skipped (another replica held the lock), failed.
    sweeps: IntCounterVec = "rbac_gateway_sweeps_total", "Lifecycle sweeps by result", ["result"];
    /// Grants the sweep ended, by reason: ticket_closed, expired, break_glass_expire.
    sweep_revocations: IntCounterVec = "rbac_gateway_sweep_revocations_total",
        "Grants the lifecycle sweep ended, by reason", ["reason"];
    /// Sweep failures: a failed sweep, or a ticket FreeScout did not answer for.
    sweep_failures: IntCounter = "rbac_gateway_sweep_failures_total",
        "Failed sweeps and tickets FreeScout did not answer for", [];
    /// Unix time of the last sweep with no failure.
    sweep_last_success: IntGauge = "rbac_gateway_sweep_last_success_timestamp_seconds",
        "Unix time of the last sweep without a failure", [];
    feed_last_read: IntGauge = "rbac_gateway_feed_last_read_timestamp_seconds",
        "Unix time of the change feed's last successful read of rbac_change_log", [];
    /// The change feed's completed reads of the log (a read that starts after a commit has
    /// applied it: tests wait on this instead of a fixed time).
    feed_reads: IntCounter = "rbac_gateway_feed_reads_total",
        "The change feed's completed reads of rbac_change_log", [];
    /// Alert deliveries by result: delivered, failed (retried).
    alerts: IntCounterVec = "rbac_gateway_alerts_total", "Alert deliveries by result", ["result"];
    /// Alert passes by result: done, skipped (another replica held the lock), failed.
    alert_passes: IntCounterVec = "rbac_gateway_alert_passes_total",
        "Alert passes by result", ["result"];
    /// Grants or break-glass sessions whose rows the sweep could not write (retried).
    sweep_item_failures: IntCounter = "rbac_gateway_sweep_item_failures_total",
        "Grants or break-glass sessions whose rows the sweep could not write (retried next sweep)", [];
    /// I-5: deliveries to Console's audit writer by result: delivered, failed (retried with
    /// backoff), db_error (a pass whose database step failed).
    audit_outbox_deliveries: IntCounterVec = "rbac_gateway_audit_outbox_deliveries_total",
        "Deliveries of rbac_grants_audit rows to Console's audit writer (I-5) by result", ["result"];
    /// I-5: the gateway's `rbac_grants_audit` rows not yet delivered to the audit writer.
    audit_outbox_undelivered: IntGauge = "rbac_gateway_audit_outbox_undelivered",
        "rbac_grants_audit rows the gateway wrote that Console's audit writer has not taken yet (I-5)", [];
    /// I-5: of those, the ones owed longer than `--audit-writer-alert-after`.
    audit_outbox_overdue: IntGauge = "rbac_gateway_audit_outbox_overdue",
        "Undelivered rbac_grants_audit rows owed longer than --audit-writer-alert-after (I-5)", [];
    /// I-5: seconds since the oldest undelivered row was written (0: none).
    audit_outbox_oldest_seconds: IntGauge = "rbac_gateway_audit_outbox_oldest_seconds",
        "Seconds since the oldest undelivered rbac_grants_audit row was written (I-5; 0: none)", [];
    /// FreeScout webhook calls by result (see doors/freescout_webhook.rs).
    freescout_webhooks: IntCounterVec = "rbac_gateway_freescout_webhooks_total",
        "FreeScout webhook calls by result", ["result"];
    /// Targeted cache invalidations that failed (the whole cache was cleared instead).
    cache_invalidation_errors: IntCounter = "rbac_gateway_cache_invalidation_errors_total",
        "Targeted cache invalidations that failed (the cache was cleared instead)", [];
    /// OpenTelemetry export losses by signal: spans dropped (queue full, or the collector did
    /// not take them), metric exports that failed. 0 while telemetry is off.
    telemetry_dropped: IntCounterVec = "rbac_gateway_telemetry_dropped_total",
        "OpenTelemetry export losses by signal: spans dropped or not taken by the collector, metric exports that failed", ["signal"];
}

impl Metrics {
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
            self.lookup_pool.with_label_values(&[s]);
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
