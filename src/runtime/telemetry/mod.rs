//! OpenTelemetry: traces and metrics over OTLP/HTTP, configured by the standard `OTEL_*`
//! variables ([`config`]), off unless an endpoint is set. Owns the request's span and its
//! children, the W3C `traceparent` read and written, and the export beside the requests
//! ([`export`]). Knows no policy word: the doors name the attributes (`doors/mod.rs`).
//!
//! Off costs one atomic load per request: [`server_span`] answers None before anything is
//! built, and the stores' notes ([`note_cache`], [`db_span`]) return at the same load. On, a
//! request's server span is started with the incoming `traceparent` as its parent (the
//! configured sampler decides, parent-based by default), the door runs inside [`in_request`]
//! so a store's database lookup becomes its child, and Console's exchange is a CLIENT child
//! whose `traceparent` Console receives.
//!
//! A span is a plain record ([`span`]), not the SDK's `Span`: ended, a sampled one goes to the
//! bounded queue ([`export::Queue`]) and the background runtime encodes a batch straight to
//! OTLP's protobuf ([`otlp`]) and posts it (the SDK's span pipeline cost far more CPU per
//! sampled request; docs/performance-log.md).
//! The SDK still reads the resource variables, makes the ids and reads an incoming
//! `traceparent`.
//!
//! The request id when tracing is on: `<trace id>-<span id>` of the gateway's server span
//! (unless a trusted router's `X-Request-Id` is taken), so an audit row's `request_id` starts
//! with its trace's id; the span carries `rbac.request_id` either way and the decision's log
//! lines `trace_id`.

pub mod config;
pub mod export;
pub mod otlp;
pub mod span;

use std::borrow::Cow;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use opentelemetry::KeyValue;
use prost::Message;

use crate::runtime::metrics::Metrics;
pub use config::{ConfigError, Settings};
use export::{Losses, Queue, Wire};
use opentelemetry_proto::tonic::resource::v1::Resource as ProtoResource;
pub use otlp::Value;
use otlp::{Attributes, Kind, SpanRecord, Status};

/// What a traced request needs: how to sample, where an ended span goes. Unset: every
/// request-path call returns at its first load.
struct Tracer {
    sampling: config::Sampling,
    queue: Arc<Queue>,
}

static TRACER: OnceLock<Tracer> = OnceLock::new();

/// Whether spans are built at all.
#[inline]
pub fn tracing_on() -> bool {
    TRACER.get().is_some()
}

/// The running export: the span export task and the metrics task. [`Telemetry::shutdown`]
/// flushes both.
pub struct Telemetry {
    stop: tokio::sync::watch::Sender<bool>,
    spans: Option<tokio::task::JoinHandle<()>>,
    reporter: Option<tokio::task::JoinHandle<()>>,
}

/// Starts what `settings` turns on: the span queue and its export task, and the periodic
/// metrics export, both on `bg`. `refresh` updates the gauges `/metrics` refreshes when read
/// (cache sizes, pool) before each export.
pub fn start(
    settings: Settings,
    bg: &tokio::runtime::Handle,
    metrics: Arc<Metrics>,
    refresh: Arc<dyn Fn() + Send + Sync>,
) -> Result<Telemetry, String> {
    let proto_resource = export::proto_resource(&resource(&settings));
    let losses = Arc::new(Losses::default());
    let dropped_spans = metrics.telemetry_dropped.with_label_values(&["spans"]);
    let dropped_metrics = metrics.telemetry_dropped.with_label_values(&["metrics"]);
    let (stop, stopped) = tokio::sync::watch::channel(false);
    otlp::set_value_limit(settings.attribute_value_limit);
    let spans = start_spans(
        &settings,
        bg,
        &proto_resource,
        &losses,
        dropped_spans,
        &stopped,
    )?;
    let metrics_url = settings.metrics.as_ref().map_or("-".to_string(), shown);
    let traces_url = settings.traces.as_ref().map_or("-".to_string(), shown);
    let reporter = bg.spawn(report(
        settings,
        metrics,
        refresh,
        proto_resource,
        losses,
        dropped_metrics,
        stopped,
    ));
    tracing::info!(
        traces = %traces_url,
        metrics = %metrics_url,
        "telemetry: exporting over OTLP/HTTP"
    );
    Ok(Telemetry {
        stop,
        spans,
        reporter: Some(reporter),
    })
}

/// The SDK's resource: `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_SERVICE_NAME`, its own attributes.
fn resource(settings: &Settings) -> opentelemetry_sdk::Resource {
    let mut resource = opentelemetry_sdk::Resource::builder();
    if settings.default_service_name {
        resource = resource.with_service_name("rbac-gateway");
    }
    resource
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .build()
}

/// With traces on, the span queue, its export task on `bg` and the tracer the request path
/// reads; None with traces off.
fn start_spans(
    settings: &Settings,
    bg: &tokio::runtime::Handle,
    proto_resource: &ProtoResource,
    losses: &Arc<Losses>,
    dropped_spans: prometheus::IntCounter,
    stopped: &tokio::sync::watch::Receiver<bool>,
) -> Result<Option<tokio::task::JoinHandle<()>>, String> {
    let Some(endpoint) = &settings.traces else {
        return Ok(None);
    };
    // The scope as the SDK's tracer named it: `rbac-gateway`, no version.
    let scope = opentelemetry_proto::tonic::common::v1::InstrumentationScope {
        name: "rbac-gateway".into(),
        ..Default::default()
    };
    let prefix = otlp::Prefix::new(proto_resource.encode_to_vec(), scope.encode_to_vec());
    let queue = Arc::new(Queue::new(
        settings.max_queue,
        settings.max_batch,
        prefix.head_room(),
        losses.clone(),
        dropped_spans,
    ));
    let wire = Wire::new(bg.clone(), endpoint.timeout);
    let task = bg.spawn(export::export_spans(
        queue.clone(),
        wire,
        endpoint.clone(),
        prefix,
        settings.schedule_delay,
        stopped.clone(),
    ));
    TRACER
        .set(Tracer {
            sampling: settings.sampling,
            queue,
        })
        .map_err(|_| "telemetry started twice".to_string())?;
    Ok(Some(task))
}

/// Where to, never who: a URL's user and password (if any) stay out of the log.
fn shown(e: &config::Endpoint) -> String {
    format!(
        "{}://{}{}",
        e.url.scheme_str().unwrap_or("http"),
        e.url.host().unwrap_or("-"),
        e.url.port().map_or(String::new(), |p| format!(":{p}"))
    ) + e.url.path()
}

/// The metrics task: each interval, and once more when stopped, the gauges refreshed and the
/// metrics pushed (with metrics on), then what was lost since the last report said.
async fn report(
    settings: Settings,
    metrics: Arc<Metrics>,
    refresh: Arc<dyn Fn() + Send + Sync>,
    proto_resource: ProtoResource,
    losses: Arc<Losses>,
    dropped_metrics: prometheus::IntCounter,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) {
    let wire = settings
        .metrics
        .as_ref()
        .map(|e| (Wire::new(tokio::runtime::Handle::current(), e.timeout), e));
    let start = export::now_nanos();
    // Losses are told once per interval: the metric interval, or 10 s with traces alone.
    let every = if wire.is_some() {
        settings.metric_interval
    } else {
        Duration::from_secs(10)
    };
    let mut told = (0u64, 0u64, 0u64);
    let mut next = tokio::time::Instant::now() + every;
    loop {
        let last = tokio::select! {
            _ = tokio::time::sleep_until(next) => false,
            _ = stopped.changed() => true,
        };
        next += every;
        if let Some((wire, endpoint)) = &wire {
            refresh();
            let before = losses.metrics_failed.load(Ordering::Relaxed);
            export::push_metrics(
                wire,
                endpoint,
                &proto_resource,
                &metrics.gather(),
                start,
                &losses,
            )
            .await;
            if losses.metrics_failed.load(Ordering::Relaxed) > before {
                dropped_metrics.inc();
            }
        }
        told = tell_losses(&losses, told);
        if last {
            break;
        }
    }
}

/// Says what the collector did not take since `told` (spans dropped, spans and metric exports
/// failed, the last error), when anything was; returns the counts now told.
fn tell_losses(losses: &Losses, told: (u64, u64, u64)) -> (u64, u64, u64) {
    let now = (
        losses.queue_full.load(Ordering::Relaxed),
        losses.spans_failed.load(Ordering::Relaxed),
        losses.metrics_failed.load(Ordering::Relaxed),
    );
    if now != told {
        let error = losses.last_error.lock().ok().and_then(|mut e| e.take());
        tracing::warn!(
            spans_dropped_queue_full = now.0 - told.0,
            spans_not_exported = now.1 - told.1,
            metric_exports_failed = now.2 - told.2,
            error = error.as_deref().unwrap_or("-"),
            "telemetry: the collector did not take everything since the last report (rbac_gateway_telemetry_dropped_total)"
        );
    }
    now
}

impl Telemetry {
    /// Flushes what is queued (spans, one last metrics export), taking at most `within`; then
    /// nothing more is exported. Called from `serve`'s thread, outside the runtime.
    pub fn shutdown(mut self, bg: &tokio::runtime::Runtime, within: Duration) {
        let deadline = Instant::now() + within;
        // Err: the tasks already ended (nothing left to stop).
        let _ = self.stop.send(true);
        if let Some(spans) = self.spans.take() {
            // The span task exports what is queued, then ends.
            if bg
                .block_on(async { tokio::time::timeout(within, spans).await })
                .is_err()
            {
                tracing::warn!("telemetry: spans not all flushed at shutdown");
            }
        }
        if let Some(reporter) = self.reporter.take() {
            let left = deadline.saturating_duration_since(Instant::now());
            if bg
                .block_on(async { tokio::time::timeout(left, reporter).await })
                .is_err()
            {
                tracing::warn!("telemetry: the last metrics export did not finish in time");
            }
        }
    }
}

/// A request's SERVER span, and the context its children start from. A clone is the same span.
#[derive(Clone)]
pub struct ServerSpan(Arc<Server>);

struct Server {
    trace_id: [u8; 16],
    span_id: [u8; 8],
    /// The trace id as lower-case hex (the decision's log lines carry it).
    trace_hex: [u8; 32],
    sampled: bool,
    /// How the principal was found: 0 nothing noted, 1 the worker's memory, 2 the shared
    /// cache, 3 the database.
    cache: AtomicU8,
    /// What the span records (its attributes are written only when it is sampled).
    record: Mutex<SpanRecord>,
}

/// The method as a span name that needs no allocation.
fn method_name(method: &str) -> &'static str {
    match method {
        "GET" => "GET",
        "HEAD" => "HEAD",
        "POST" => "POST",
        "PUT" => "PUT",
        "PATCH" => "PATCH",
        "DELETE" => "DELETE",
        "OPTIONS" => "OPTIONS",
        // Semantic conventions: an unknown method is named HTTP.
        _ => "HTTP",
    }
}

/// The request's server span, or None when tracing is off (nothing built). `headers`: the
/// incoming `traceparent`/`tracestate` make its parent. `path` carries no query: only
/// `url.path` is recorded, never the query string, a cookie or any other header.
#[inline]
pub fn server_span(method: &str, path: &str, headers: &http::HeaderMap) -> Option<ServerSpan> {
    let tracer = TRACER.get()?;
    Some(start_server(tracer, method, path, headers))
}

#[inline(never)]
fn start_server(
    tracer: &Tracer,
    method: &str,
    path: &str,
    headers: &http::HeaderMap,
) -> ServerSpan {
    const TRACEPARENT: http::HeaderName = http::HeaderName::from_static("traceparent");
    let parent = if headers.contains_key(TRACEPARENT) {
        span::parent_of(headers)
    } else {
        None
    };
    let trace_id = parent
        .as_ref()
        .map_or_else(span::new_trace_id, |p| p.trace_id);
    let sampled = span::sampled(tracer.sampling, &trace_id, parent.as_ref());
    let span_id = span::new_span_id();
    let attributes = if sampled {
        // Room for the attributes a request's span usually gets (about 600 bytes).
        let mut a = Attributes(buffer(1024));
        a.push("http.request.method", Value::Text(method));
        a.push("url.path", Value::Text(path));
        a
    } else {
        Attributes::default()
    };
    let (parent_span_id, trace_state) = match parent {
        Some(p) => (Some(p.span_id), p.trace_state),
        None => (None, None),
    };
    let mut trace_hex = [0u8; 32];
    hex_into(&mut trace_hex, &trace_id);
    ServerSpan(Arc::new(Server {
        trace_id,
        span_id,
        trace_hex,
        sampled,
        cache: AtomicU8::new(0),
        record: Mutex::new(SpanRecord {
            trace_id,
            span_id,
            parent_remote: parent_span_id.is_some(),
            parent_span_id,
            trace_state,
            flags: u8::from(sampled),
            kind: Kind::Server,
            name: Cow::Borrowed(method_name(method)),
            name_route: None,
            start: span::now(),
            end: 0,
            attributes,
            status: Status::Unset,
        }),
    }))
}

impl ServerSpan {
    /// The trace id and the span id (the request id when no trusted router gave one is made
    /// of them: `RequestId::of_trace`).
    pub fn ids(&self) -> (&[u8; 16], &[u8; 8]) {
        (&self.0.trace_id, &self.0.span_id)
    }

    /// The trace id as hex (the decision's log lines carry it), written once when the span
    /// started.
    pub fn trace_id(&self) -> &str {
        std::str::from_utf8(&self.0.trace_hex).unwrap_or_default()
    }

    /// Runs `f` on the record, when the span is sampled (nothing is recorded otherwise).
    #[inline]
    fn with(&self, f: impl FnOnce(&mut SpanRecord)) {
        if self.0.sampled {
            f(&mut self.0.record.lock().unwrap_or_else(PoisonError::into_inner));
        }
    }

    #[inline]
    pub fn set<'a>(&self, key: &'static str, value: impl Into<Value<'a>>) {
        self.with(|r| r.attributes.push(key, value.into()));
    }

    /// Several attributes under one lock of the record (`f` runs only when the span is sampled).
    #[inline]
    pub fn record(&self, f: impl FnOnce(&mut Recording<'_>)) {
        self.with(|r| f(&mut Recording(r)));
    }

    /// The rule that matched: `http.route`, and the span named `METHOD route`.
    pub fn route(&self, method: &str, route: &str) {
        self.record(|r| r.route(method, route));
    }

    /// Ends the span with the status sent: a 5xx is an error (semantic conventions: a 4xx
    /// is the client's, not the server's).
    pub fn end(self, status: u16) {
        if !self.0.sampled {
            return;
        }
        let cache = match self.0.cache.load(Ordering::Relaxed) {
            1 => Some("worker"),
            2 => Some("shared"),
            3 => Some("miss"),
            _ => None,
        };
        let mut r = self.0.record.lock().unwrap_or_else(PoisonError::into_inner);
        r.end = span::now();
        r.attributes
            .push("http.response.status_code", Value::Int(i64::from(status)));
        if let Some(c) = cache {
            r.attributes.push("rbac.cache", Value::Text(c));
            r.attributes
                .push("rbac.cache_hit", Value::Bool(c != "miss"));
        }
        if status >= 500 {
            r.status = Status::Error("");
        }
        if let Some(t) = TRACER.get() {
            t.queue.push(&r);
        }
        give_back(std::mem::take(&mut r.attributes.0));
    }

    /// A CLIENT child (Console's exchange): its `traceparent` value is for the request sent.
    pub fn client(&self, method: &str) -> ChildSpan {
        child(&self.0, Cow::Borrowed(method_name(method)))
    }
}

/// A sampled server span's record while [`ServerSpan::record`] holds it.
pub struct Recording<'r>(&'r mut SpanRecord);

impl Recording<'_> {
    #[inline]
    pub fn set<'a>(&mut self, key: &'static str, value: impl Into<Value<'a>>) {
        self.0.attributes.push(key, value.into());
    }

    /// The rule that matched: `http.route`, and the span named `METHOD route` (the route's
    /// text read from the attribute when the span is written: nothing allocated).
    pub fn route(&mut self, method: &str, route: &str) {
        self.0.name = Cow::Borrowed(method_name(method));
        self.0.name_route = Some(self.0.attributes.push_route(route));
    }
}

// The attribute buffers of the spans this thread ended, kept for the next ones: a span's
// attributes are copied onto the queue when it ends, so its buffer is free again (a data-plane
// worker is one thread: two allocations and two frees fewer per traced request).
thread_local! {
    static BUFFERS: std::cell::RefCell<Vec<Vec<u8>>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The most buffers a thread keeps, and the largest it keeps.
const BUFFERS_KEPT: usize = 64;
const BUFFER_MAX: usize = 16 * 1024;

/// An empty buffer with room for `capacity` bytes: one this thread kept, or a new one.
#[inline]
fn buffer(capacity: usize) -> Vec<u8> {
    let kept = BUFFERS
        .try_with(|b| b.try_borrow_mut().ok().and_then(|mut b| b.pop()))
        .ok()
        .flatten();
    match kept {
        Some(mut v) => {
            v.reserve(capacity);
            v
        }
        None => Vec::with_capacity(capacity),
    }
}

/// A span's attribute buffer, its bytes already on the queue: kept for the next span.
#[inline]
fn give_back(mut v: Vec<u8>) {
    if v.capacity() == 0 || v.capacity() > BUFFER_MAX {
        return;
    }
    v.clear();
    // Err (the thread is ending, or the list is borrowed): the buffer is freed.
    let _ = BUFFERS.try_with(|b| {
        if let Ok(mut b) = b.try_borrow_mut() {
            if b.len() < BUFFERS_KEPT {
                b.push(v);
            }
        }
    });
}

/// A CLIENT child of `parent`, started now.
fn child(parent: &Server, name: Cow<'static, str>) -> ChildSpan {
    ChildSpan {
        record: Some(Box::new(SpanRecord {
            trace_id: parent.trace_id,
            span_id: span::new_span_id(),
            parent_span_id: Some(parent.span_id),
            parent_remote: false,
            trace_state: None,
            flags: u8::from(parent.sampled),
            kind: Kind::Client,
            name,
            name_route: None,
            start: span::now(),
            end: 0,
            attributes: if parent.sampled {
                Attributes(buffer(256))
            } else {
                Attributes::default()
            },
            status: Status::Unset,
        })),
    }
}

/// Lower-case hex of `bytes` into `out` (ids are formatted on every traced request: no `fmt`).
#[inline]
fn hex_into(out: &mut [u8], bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (pair, b) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = HEX[usize::from(b >> 4)];
        pair[1] = HEX[usize::from(b & 15)];
    }
}

/// A `traceparent` value, as it is sent (55 bytes, nothing allocated).
pub struct Traceparent([u8; 55]);

impl Traceparent {
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

/// A child span; ended when dropped, or by [`ChildSpan::end`] with a status.
/// Boxed: a future that holds one (Console's exchange) stays small when tracing is off.
pub struct ChildSpan {
    /// None once ended.
    record: Option<Box<SpanRecord>>,
}

impl ChildSpan {
    /// The W3C `traceparent` naming this span, for the request it stands for (None once
    /// ended).
    pub fn traceparent(&self) -> Option<Traceparent> {
        let r = self.record.as_ref()?;
        let mut out = *b"00-________________________________-________________-__";
        hex_into(&mut out[3..35], &r.trace_id);
        hex_into(&mut out[36..52], &r.span_id);
        hex_into(&mut out[53..], &[r.flags]);
        Some(Traceparent(out))
    }

    pub fn set<'a>(&mut self, key: &'static str, value: impl Into<Value<'a>>) {
        if let Some(r) = self.record.as_mut().filter(|r| r.flags & 1 == 1) {
            r.attributes.push(key, value.into());
        }
    }

    pub fn end(mut self, status: Option<u16>) {
        match status {
            Some(s) => {
                self.set("http.response.status_code", i64::from(s));
                if s >= 500 {
                    self.finish(Status::Error(""));
                }
            }
            None => self.finish(Status::Error("no answer")),
        }
        self.finish(Status::Unset);
    }

    /// Ends a database span: `ok` false marks it failed.
    pub fn done(mut self, ok: bool) {
        self.finish(if ok {
            Status::Unset
        } else {
            Status::Error("the statement failed")
        });
    }

    /// Ends the span (once: later calls do nothing) and queues it when sampled.
    fn finish(&mut self, status: Status) {
        let Some(mut r) = self.record.take() else {
            return;
        };
        if r.flags & 1 == 0 {
            return;
        }
        r.status = status;
        r.end = span::now();
        if let Some(t) = TRACER.get() {
            t.queue.push(&r);
        }
        give_back(std::mem::take(&mut r.attributes.0));
    }
}

impl Drop for ChildSpan {
    fn drop(&mut self) {
        self.finish(Status::Unset);
    }
}

// What a request's stores can reach while the door runs it: the server span (its ids and
// the cache note), set on the thread around each poll of the request's handling (what tokio's
// task-local does, without a second call of the handling's poll: the untraced poll is the
// same call, so it stays inlined into hyper's dispatcher).
thread_local! {
    static CURRENT: std::cell::Cell<Option<ServerSpan>> = const { std::cell::Cell::new(None) };
}

/// A request's span set as the thread's current one; what was there is put back when dropped
/// (a poll that panics included).
struct Entered(Option<ServerSpan>);

#[inline(never)]
fn enter(span: &ServerSpan) -> Option<Entered> {
    CURRENT
        .try_with(|c| Entered(c.replace(Some(span.clone()))))
        .ok()
}

impl Drop for Entered {
    fn drop(&mut self) {
        let previous = self.0.take();
        // Err only while the thread is being torn down.
        let _ = CURRENT.try_with(|c| c.set(previous));
    }
}

/// The current request's span, if any, lent to `f`.
fn with_current<R>(f: impl FnOnce(&ServerSpan) -> R) -> Option<R> {
    CURRENT
        .try_with(|c| {
            let span = c.take();
            let r = span.as_ref().map(f);
            c.set(span);
            r
        })
        .ok()
        .flatten()
}

/// Polls `fut` (a door's handling of one request, pinned where it lies: it is not moved) with
/// `span`, when the request is traced, as the parent of the spans the stores start
/// ([`db_span`]) and the place their cache notes go; untraced, polls it as it is.
pub fn in_request<'a, F: std::future::Future>(
    span: Option<&'a ServerSpan>,
    fut: std::pin::Pin<&'a mut F>,
) -> InRequest<'a, F> {
    InRequest { span, fut }
}

/// [`in_request`]'s future: the current span set around each poll of a traced request's
/// handling.
pub struct InRequest<'a, F> {
    span: Option<&'a ServerSpan>,
    fut: std::pin::Pin<&'a mut F>,
}

impl<F: std::future::Future> std::future::Future for InRequest<'_, F> {
    type Output = F::Output;

    #[inline]
    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<F::Output> {
        let this = &mut *self;
        let _entered = this.span.and_then(enter);
        this.fut.as_mut().poll(cx)
    }
}

/// Where the principal was found, as deep as any lookup went.
#[derive(Debug, Clone, Copy)]
pub enum Cache {
    Worker = 1,
    Shared = 2,
    Miss = 3,
}

/// Notes a cache answer on the request's span (nothing when tracing is off).
#[inline]
pub fn note_cache(level: Cache) {
    if !tracing_on() {
        return;
    }
    // None: no request is being traced on this thread (or it is being torn down).
    with_current(|c| c.0.cache.fetch_max(level as u8, Ordering::Relaxed));
}

/// A CLIENT child span for a database statement of the current request (None when tracing is
/// off or no request is being traced). `operation`: what it reads, never a value bound to it.
#[inline]
pub fn db_span(operation: &'static str) -> Option<ChildSpan> {
    TRACER.get()?;
    with_current(|c| {
        let mut span = child(&c.0, Cow::Borrowed(operation));
        span.set("db.system.name", "postgresql");
        span.set("db.operation.name", "SELECT");
        span.set("db.query.summary", operation);
        span
    })
}
