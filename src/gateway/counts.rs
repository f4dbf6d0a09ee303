//! A door's counters of its decisions and of Console's answers ([`DecisionCounts`]), the
//! Prometheus-backed [`Tally`] the policy counts through: looked up once per worker, never hashed
//! per request.

use std::time::Instant;

use crate::policy::answer::{Decision, Tally};

/// A door's counters of decisions, looked up once (per worker) instead of hashed per request:
/// the door's request counter and the shared decision-time histogram, by [`Decision`].
pub struct DecisionCounts {
    decisions: Vec<(prometheus::IntCounter, prometheus::Histogram)>,
    /// Console's answer time by status class (1xx..5xx): the proxy's.
    console: Option<[prometheus::Histogram; 5]>,
}

impl DecisionCounts {
    /// `requests`: the door's counter (`rbac_gateway_requests_total`,
    /// `rbac_gateway_authz_requests_total`); `seconds`: `rbac_gateway_decision_duration_seconds`.
    pub fn new(requests: &prometheus::IntCounterVec, seconds: &prometheus::HistogramVec) -> Self {
        DecisionCounts {
            decisions: Decision::ALL
                .iter()
                .map(|d| {
                    (
                        requests.with_label_values(&[d.as_str()]),
                        seconds.with_label_values(&[d.as_str()]),
                    )
                })
                .collect(),
            console: None,
        }
    }

    /// A door that forwards also counts Console's answers (`upstream`:
    /// `rbac_gateway_upstream_duration_seconds`, by status class).
    pub fn with_console(mut self, upstream: &prometheus::HistogramVec) -> Self {
        self.console = Some(
            crate::runtime::metrics::STATUS_CLASSES
                .map(|class| upstream.with_label_values(&[class])),
        );
        self
    }
}

impl Tally for DecisionCounts {
    fn count(&self, decision: Decision, started: Instant) -> Instant {
        let now = Instant::now();
        let (n, t) = &self.decisions[decision.index()];
        n.inc();
        t.observe(now.saturating_duration_since(started).as_secs_f64());
        now
    }

    fn console(&self, status: u16, seconds: f64) {
        if let Some(classes) = &self.console {
            classes[usize::from((status / 100).clamp(1, 5)) - 1].observe(seconds);
        }
    }
}
