//! The wire to the collector: one HTTP client for both signals (hyper-util's client with
//! rustls on ring, the TLS the gateway already carries for PostgreSQL), every exchange run on
//! the background runtime under its timeout; the span queue's bound, with what it drops and what
//! a collector refuses counted; the Prometheus registry carried as OTLP metrics.
//!
//! Never in the way of a request: a request only writes its ended, sampled span onto the
//! [`Queue`] as its protobuf entry (a lock held for that; no wake-up but once per full batch);
//! the export task on the background runtime takes a batch every `OTEL_BSP_SCHEDULE_DELAY` (or
//! as soon as a full one is waiting), puts the request around it ([`super::otlp`]) and posts
//! it, one export at a time.
//! A collector that is down, hangs or answers 503 fills the queue; what does not fit is
//! dropped, counted in `rbac_gateway_telemetry_dropped_total`, and logged once per interval by
//! [`super::Telemetry`]'s reporter, never per request.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::{
    metric, number_data_point, AggregationTemporality, Gauge, Histogram, HistogramDataPoint,
    Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum,
};
use opentelemetry_proto::tonic::resource::v1::Resource as ProtoResource;
use prometheus::proto::MetricType;
use prost::Message;

use super::config::Endpoint;
use super::otlp;
use super::otlp::SpanRecord;

/// What an exchange with the collector fails with.
pub type HttpError = Box<dyn std::error::Error + Send + Sync>;

/// Collector answers of this size at most are read (it says only whether it took the batch).
const MAX_ANSWER: usize = 64 * 1024;

/// The collector's HTTP client: each exchange is spawned on the background runtime and bounded
/// by `timeout`.
#[derive(Clone)]
pub struct Wire {
    client: crate::runtime::https_client::HttpsClient,
    runtime: tokio::runtime::Handle,
    timeout: Duration,
}

impl std::fmt::Debug for Wire {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wire")
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl Wire {
    pub fn new(runtime: tokio::runtime::Handle, timeout: Duration) -> Wire {
        let client = crate::runtime::https_client::client(timeout);
        Wire {
            client,
            runtime,
            timeout,
        }
    }

    /// POSTs one protobuf body; Ok: the collector's status.
    pub async fn post(&self, endpoint: &Endpoint, body: Vec<u8>) -> Result<u16, HttpError> {
        self.post_bytes(endpoint, Bytes::from(body)).await
    }

    pub async fn post_bytes(&self, endpoint: &Endpoint, body: Bytes) -> Result<u16, HttpError> {
        let mut req = Request::post(endpoint.url.clone())
            .header(http::header::CONTENT_TYPE, "application/x-protobuf")
            .body(body)?;
        for (k, v) in &endpoint.headers {
            req.headers_mut().insert(k.clone(), v.clone());
        }
        Ok(self.send_bytes(req).await?.status().as_u16())
    }

    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let (client, timeout) = (self.client.clone(), self.timeout);
        let (parts, body) = request.into_parts();
        let exchange = async move {
            let resp = client
                .request(Request::from_parts(parts, Full::new(body)))
                .await?;
            let (parts, body) = resp.into_parts();
            let body = http_body_util::Limited::new(body, MAX_ANSWER)
                .collect()
                .await?
                .to_bytes();
            Ok::<_, HttpError>(Response::from_parts(parts, body))
        };
        match self
            .runtime
            .spawn(async move { tokio::time::timeout(timeout, exchange).await })
            .await
        {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => Err(format!("no answer within {} ms", timeout.as_millis()).into()),
            Err(e) => Err(format!("export task: {e}").into()),
        }
    }
}

/// What the export dropped since the reporter last looked, and in all.
#[derive(Debug, Default)]
pub struct Losses {
    /// Spans dropped: the queue was full.
    pub queue_full: AtomicU64,
    /// Spans the collector did not take (refused, unreachable, timed out).
    pub spans_failed: AtomicU64,
    /// Metric exports that failed.
    pub metrics_failed: AtomicU64,
    /// The last export error, for the once-per-interval log line.
    pub last_error: std::sync::Mutex<Option<String>>,
}

impl Losses {
    fn note_error(&self, e: String) {
        if let Ok(mut last) = self.last_error.lock() {
            *last = Some(e);
        }
    }
}

/// The bytes the span queue holds at most, per span of `OTEL_BSP_MAX_QUEUE_SIZE` (a traced
/// request's server span is about 600 bytes, a child about 200): 4 MiB at the default 2048.
pub const QUEUE_BYTES_PER_SPAN: usize = 2048;

/// The spans waiting for export, at most `OTEL_BSP_MAX_QUEUE_SIZE` and [`QUEUE_BYTES_PER_SPAN`]
/// bytes each on average: one more is dropped and counted, never waited for (counted in spans
/// alone, a collector that hangs let spans of a client's long paths take hundreds of MiB).
/// Each span is written as its protobuf entry when it ends, on the request's thread, so
/// nothing a request allocated is freed by another thread.
#[derive(Debug)]
pub struct Queue {
    waiting: Mutex<Waiting>,
    max_queue: usize,
    /// The entries' bytes, at most.
    max_bytes: usize,
    max_batch: usize,
    /// The bytes kept free before the entries, where the export's head is written
    /// ([`otlp::request_in_place`]).
    room: usize,
    /// Told when a full batch is waiting.
    full: tokio::sync::Notify,
    losses: Arc<Losses>,
    dropped: prometheus::IntCounter,
}

/// The spans' entries, one after the other behind the queue's room, and where each ends.
#[derive(Debug, Default)]
struct Waiting {
    entries: Vec<u8>,
    ends: Vec<usize>,
}

impl Queue {
    pub fn new(
        max_queue: usize,
        max_batch: usize,
        room: usize,
        losses: Arc<Losses>,
        dropped: prometheus::IntCounter,
    ) -> Queue {
        Queue {
            waiting: Mutex::new(Waiting {
                entries: vec![0; room],
                ends: Vec::new(),
            }),
            max_queue,
            max_bytes: max_queue.saturating_mul(QUEUE_BYTES_PER_SPAN),
            max_batch,
            room,
            full: tokio::sync::Notify::new(),
            losses,
            dropped,
        }
    }

    /// A span ended: written onto the queue, or dropped and counted when the queue is full.
    pub fn push(&self, span: &SpanRecord) {
        let entry = otlp::SpanEntry::of(span);
        let mut q = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
        if q.ends.len() >= self.max_queue
            || q.entries.len() - self.room + entry.bytes() > self.max_bytes
        {
            drop(q);
            self.losses.queue_full.fetch_add(1, Ordering::Relaxed);
            self.dropped.inc();
            return;
        }
        entry.put(&mut q.entries);
        let end = q.entries.len();
        q.ends.push(end);
        let n = q.ends.len();
        drop(q);
        if n == self.max_batch {
            self.full.notify_one();
        }
    }

    /// Up to one batch off the queue's front (oldest first), behind the room; the number of
    /// spans taken. `spare`: the room alone, with the capacity the queue had (the queue's
    /// buffer when it is taken whole, allocated outside the lock).
    fn take(&self, mut spare: Vec<u8>) -> (Vec<u8>, usize) {
        let mut q = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
        let q = &mut *q;
        if q.ends.len() <= self.max_batch {
            let n = q.ends.len();
            q.ends.clear();
            return (std::mem::replace(&mut q.entries, spare), n);
        }
        let cut = q.ends[self.max_batch - 1];
        spare.extend(q.entries.drain(self.room..cut));
        q.ends.drain(..self.max_batch);
        for e in &mut q.ends {
            *e -= cut - self.room;
        }
        (spare, self.max_batch)
    }

    fn len(&self) -> usize {
        self.waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .ends
            .len()
    }
}

/// The span export, on the background runtime: a batch every `delay`, or as soon as a full one
/// waits; everything queued when `stop` turns (the shutdown's flush), then it ends.
pub async fn export_spans(
    queue: Arc<Queue>,
    wire: Wire,
    endpoint: Endpoint,
    prefix: otlp::Prefix,
    delay: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let room = prefix.head_room();
    let mut capacity = 0;
    let mut next = tokio::time::Instant::now() + delay;
    loop {
        let (timer, last) = tokio::select! {
            _ = tokio::time::sleep_until(next) => (true, false),
            _ = queue.full.notified() => (false, false),
            _ = stop.changed() => (true, true),
        };
        if timer {
            next = tokio::time::Instant::now() + delay;
        }
        // On the timer and at the stop, everything queued; otherwise full batches only.
        while timer || queue.len() >= queue.max_batch {
            let mut spare = Vec::with_capacity(capacity);
            spare.resize(room, 0);
            let (batch, n) = queue.take(spare);
            let n = n as u64;
            capacity = capacity.max(batch.capacity());
            if n == 0 {
                break;
            }
            let body = otlp::request_in_place(&prefix, batch, room);
            let failed = match wire.post_bytes(&endpoint, body).await {
                Ok(status) if (200..300).contains(&status) => None,
                Ok(status) => Some(format!("spans: the collector answered {status}")),
                Err(e) => Some(format!("spans: {e}")),
            };
            if let Some(e) = failed {
                queue.losses.spans_failed.fetch_add(n, Ordering::Relaxed);
                queue.dropped.inc_by(n);
                queue.losses.note_error(e);
            }
        }
        if last {
            return;
        }
    }
}

/// Sends the registry once; counts and remembers a failure.
pub async fn push_metrics(
    wire: &Wire,
    endpoint: &Endpoint,
    resource: &ProtoResource,
    families: &[prometheus::proto::MetricFamily],
    start: u64,
    losses: &Losses,
) {
    let body = encode_metrics(resource, families, start, now_nanos()).encode_to_vec();
    match wire.post(endpoint, body).await {
        Ok(status) if (200..300).contains(&status) => {}
        Ok(status) => {
            losses.metrics_failed.fetch_add(1, Ordering::Relaxed);
            losses.note_error(format!("metrics: the collector answered {status}"));
        }
        Err(e) => {
            losses.metrics_failed.fetch_add(1, Ordering::Relaxed);
            losses.note_error(format!("metrics: {e}"));
        }
    }
}

pub fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// The Prometheus families as one OTLP export, names and labels unchanged: a counter is a
/// cumulative monotonic sum, a gauge a gauge, a histogram a cumulative histogram (Prometheus'
/// cumulative `le` buckets turned into OTLP's per-bucket counts, `+Inf` the last). A backend
/// that takes OTLP into Prometheus (the collector's `prometheusremotewrite`, Prometheus'
/// own OTLP receiver) gives counters back their `_total`: the name is sent as `/metrics`
/// shows it, so the dashboard's queries find the same series.
pub fn encode_metrics(
    resource: &ProtoResource,
    families: &[prometheus::proto::MetricFamily],
    start: u64,
    now: u64,
) -> ExportMetricsServiceRequest {
    let mut metrics = Vec::with_capacity(families.len());
    for f in families {
        let attrs = |m: &prometheus::proto::Metric| -> Vec<KeyValue> {
            m.get_label()
                .iter()
                .map(|l| kv(l.get_name(), l.get_value()))
                .collect()
        };
        let number = |m: &prometheus::proto::Metric, v: f64| NumberDataPoint {
            attributes: attrs(m),
            start_time_unix_nano: start,
            time_unix_nano: now,
            value: Some(number_data_point::Value::AsDouble(v)),
            ..Default::default()
        };
        let data = match f.get_field_type() {
            MetricType::COUNTER => metric::Data::Sum(Sum {
                data_points: f
                    .get_metric()
                    .iter()
                    .map(|m| number(m, m.get_counter().get_value()))
                    .collect(),
                aggregation_temporality: AggregationTemporality::Cumulative as i32,
                is_monotonic: true,
            }),
            MetricType::GAUGE => metric::Data::Gauge(Gauge {
                data_points: f
                    .get_metric()
                    .iter()
                    .map(|m| number(m, m.get_gauge().get_value()))
                    .collect(),
            }),
            MetricType::HISTOGRAM => metric::Data::Histogram(Histogram {
                data_points: f
                    .get_metric()
                    .iter()
                    .map(|m| {
                        let h = m.get_histogram();
                        let mut bounds = Vec::new();
                        let mut counts = Vec::new();
                        let mut below = 0u64;
                        for b in h.get_bucket() {
                            if b.get_upper_bound().is_infinite() {
                                continue;
                            }
                            bounds.push(b.get_upper_bound());
                            counts.push(b.get_cumulative_count().saturating_sub(below));
                            below = b.get_cumulative_count();
                        }
                        counts.push(h.get_sample_count().saturating_sub(below));
                        HistogramDataPoint {
                            attributes: attrs(m),
                            start_time_unix_nano: start,
                            time_unix_nano: now,
                            count: h.get_sample_count(),
                            sum: Some(h.get_sample_sum()),
                            bucket_counts: counts,
                            explicit_bounds: bounds,
                            ..Default::default()
                        }
                    })
                    .collect(),
                aggregation_temporality: AggregationTemporality::Cumulative as i32,
            }),
            // The registry holds counters, gauges and histograms only.
            _ => continue,
        };
        metrics.push(Metric {
            name: f.get_name().to_string(),
            description: f.get_help().to_string(),
            unit: unit_of(f.get_name()).to_string(),
            data: Some(data),
            ..Default::default()
        });
    }
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(resource.clone()),
            scope_metrics: vec![ScopeMetrics {
                scope: Some(InstrumentationScope {
                    name: "rbac-gateway".into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                    ..Default::default()
                }),
                metrics,
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
    }
}

/// The UCUM unit a family's name ends in, as OpenTelemetry's semantic conventions write it
/// (`s`, `By`); none for a count. A backend that adds the unit to the name (Prometheus' OTLP
/// receiver) finds it already there, so the name stays the one `/metrics` shows.
fn unit_of(name: &str) -> &'static str {
    let name = name.strip_suffix("_total").unwrap_or(name);
    if name.ends_with("_seconds") {
        "s"
    } else if name.ends_with("_bytes") {
        "By"
    } else {
        ""
    }
}

pub fn kv(k: &str, v: &str) -> KeyValue {
    KeyValue {
        key: k.to_string(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(v.to_string())),
        }),
        ..Default::default()
    }
}

/// The SDK's resource as the OTLP message.
pub fn proto_resource(r: &opentelemetry_sdk::Resource) -> ProtoResource {
    ProtoResource {
        attributes: r
            .iter()
            .map(|(k, v)| kv(k.as_str(), v.as_str().as_ref()))
            .collect(),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};

    /// The queue holds at most its bytes, whatever the spans' count: spans past them are
    /// dropped and counted as the count's are.
    #[test]
    fn the_queue_is_bounded_in_bytes_too() {
        let span = |path: &str| {
            let mut attributes = otlp::Attributes::default();
            attributes.push("url.path", otlp::Value::Text(path));
            SpanRecord {
                trace_id: [1; 16],
                span_id: [2; 8],
                parent_span_id: None,
                parent_remote: false,
                trace_state: None,
                flags: 1,
                kind: otlp::Kind::Server,
                name: "GET".into(),
                name_route: None,
                start: 1,
                end: 2,
                attributes,
                status: otlp::Status::Unset,
            }
        };
        let dropped = prometheus::IntCounter::new("d", "d").unwrap();
        let losses = Arc::new(Losses::default());
        let q = Queue::new(8, 4, 16, losses.clone(), dropped.clone());
        // 8 spans of 4,000 bytes are over 8 x QUEUE_BYTES_PER_SPAN: 4 fit.
        let long = "a".repeat(4000);
        for _ in 0..8 {
            q.push(&span(&long));
        }
        assert_eq!(q.len(), 4);
        assert_eq!(dropped.get(), 4);
        assert_eq!(losses.queue_full.load(Ordering::Relaxed), 4);
        let held = q.waiting.lock().unwrap().entries.len() - 16;
        assert!(held <= 8 * QUEUE_BYTES_PER_SPAN, "{held} bytes");
        // Taken for export, the room is free again; short spans fit up to the count.
        let (_, taken) = q.take(vec![0; 16]);
        assert_eq!(taken, 4);
        for _ in 0..9 {
            q.push(&span("/x"));
        }
        assert_eq!(q.len(), 8);
        assert_eq!(dropped.get(), 5);
    }

    #[test]
    fn a_histograms_cumulative_buckets_become_per_bucket_counts() {
        let r = Registry::new();
        let h = HistogramVec::new(
            HistogramOpts::new("x_seconds", "x").buckets(vec![0.1, 1.0]),
            &["k"],
        )
        .unwrap();
        let c = IntCounterVec::new(Opts::new("y_total", "y"), &["d"]).unwrap();
        r.register(Box::new(h.clone())).unwrap();
        r.register(Box::new(c.clone())).unwrap();
        for v in [0.05, 0.5, 0.7, 5.0] {
            h.with_label_values(&["a"]).observe(v);
        }
        c.with_label_values(&["allowed"]).inc_by(3);
        let req = encode_metrics(&ProtoResource::default(), &r.gather(), 1, 2);
        let m = &req.resource_metrics[0].scope_metrics[0].metrics;
        let Some(metric::Data::Histogram(hist)) = &m[0].data else {
            panic!("{m:?}")
        };
        assert_eq!(hist.data_points[0].explicit_bounds, vec![0.1, 1.0]);
        assert_eq!(hist.data_points[0].bucket_counts, vec![1, 2, 1]);
        assert_eq!(hist.data_points[0].count, 4);
        let Some(metric::Data::Sum(sum)) = &m[1].data else {
            panic!("{m:?}")
        };
        assert!(sum.is_monotonic);
        assert_eq!(m[1].name, "y_total");
        assert_eq!((m[0].unit.as_str(), m[1].unit.as_str()), ("s", ""));
        assert_eq!(unit_of("rbac_gateway_audit_spool_bytes"), "By");
        assert_eq!(unit_of("rbac_gateway_cpu_seconds_total"), "s");
        assert_eq!(unit_of("rbac_gateway_requests_total"), "");
        assert_eq!(sum.data_points[0].attributes, vec![kv("d", "allowed")]);
        assert_eq!(
            sum.data_points[0].value,
            Some(number_data_point::Value::AsDouble(3.0))
        );
    }
}
