//! OpenTelemetry: traces and metrics over OTLP/HTTP, configured by the standard `OTEL_*`
//! variables ([`config`]), off unless an endpoint is set. Owns the tracer, the request's span
//! and its children, the W3C `traceparent` read and written, and the export beside the requests
//! ([`export`]). Knows no policy word: the doors name the attributes (`doors/mod.rs`).
//!
//! Off costs one atomic load per request: [`server_span`] answers None before anything is
//! built, and the stores' notes ([`note_cache`], [`db_span`]) return at the same load. On, a
//! request's server span is started with the incoming `traceparent` as its parent (the
//! configured sampler decides, parent-based by default), the door runs inside [`in_request`]
//! so a store's database lookup becomes its child, and Console's exchange is a CLIENT child
//! whose `traceparent` Console receives.
//!
//! The request id when tracing is on: `<trace id>-<span id>` of the gateway's server span
//! (unless a trusted router's `X-Request-Id` is taken), so an audit row's `request_id` starts
//! with its trace's id; the span carries `rbac.request_id` either way and the decision's log
//! lines `trace_id`.

pub mod config;
pub mod export;

use std::borrow::Cow;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{
    Span as _, SpanContext, SpanKind, Status, TraceContextExt, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracer};

use crate::runtime::metrics::Metrics;
pub use config::{ConfigError, Settings};
use export::{Bounded, Counted, Losses, Wire};

/// The tracer, once tracing is on. Unset: every request-path call returns at its first load.
static TRACER: OnceLock<SdkTracer> = OnceLock::new();

/// Whether spans are built at all.
#[inline]
pub fn tracing_on() -> bool {
    TRACER.get().is_some()
}

/// The running export: the tracer provider and the metrics task. [`Telemetry::shutdown`]
/// flushes both.
pub struct Telemetry {
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
    stop: tokio::sync::watch::Sender<bool>,
    reporter: Option<tokio::task::JoinHandle<()>>,
}

/// Starts what `settings` turns on: the tracer (its batch thread exporting through the
/// background runtime) and the periodic metrics export, both on `bg`. `refresh` updates the
/// gauges `/metrics` refreshes when read (cache sizes, pool) before each export.
pub fn start(
    settings: Settings,
    bg: &tokio::runtime::Handle,
    metrics: Arc<Metrics>,
    refresh: Arc<dyn Fn() + Send + Sync>,
) -> Result<Telemetry, String> {
    let mut resource = opentelemetry_sdk::Resource::builder();
    if settings.default_service_name {
        resource = resource.with_service_name("rbac-gateway");
    }
    let resource = resource
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .build();
    let losses = Arc::new(Losses::default());
    let dropped_spans = metrics.telemetry_dropped.with_label_values(&["spans"]);
    let dropped_metrics = metrics.telemetry_dropped.with_label_values(&["metrics"]);
    let provider = match &settings.traces {
        None => None,
        Some(endpoint) => {
            use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
            let wire = Wire::new(bg.clone(), endpoint.timeout);
            let headers = endpoint
                .headers
                .iter()
                .filter_map(|(k, v)| Some((k.to_string(), v.to_str().ok()?.to_string())))
                .collect();
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_http_client(wire)
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                .with_endpoint(endpoint.url.to_string())
                .with_headers(headers)
                .with_timeout(endpoint.timeout)
                .build()
                .map_err(|e| format!("the OTLP span exporter: {e}"))?;
            let exporter = Counted {
                inner: exporter,
                losses: losses.clone(),
                dropped: dropped_spans.clone(),
            };
            let batch = BatchSpanProcessor::new(
                exporter,
                BatchConfigBuilder::default()
                    .with_max_queue_size(settings.max_queue)
                    .with_scheduled_delay(settings.schedule_delay)
                    .with_max_export_batch_size(settings.max_batch)
                    .build(),
            );
            let processor = Bounded {
                inner: batch,
                losses: losses.clone(),
                dropped: dropped_spans,
                max_queue: settings.max_queue,
            };
            let sampler = match settings.sampling {
                config::Sampling::AlwaysOn => Sampler::AlwaysOn,
                config::Sampling::AlwaysOff => Sampler::AlwaysOff,
                config::Sampling::Ratio(r) => Sampler::TraceIdRatioBased(r),
                config::Sampling::ParentBasedAlwaysOn => {
                    Sampler::ParentBased(Box::new(Sampler::AlwaysOn))
                }
                config::Sampling::ParentBasedAlwaysOff => {
                    Sampler::ParentBased(Box::new(Sampler::AlwaysOff))
                }
                config::Sampling::ParentBasedRatio(r) => {
                    Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(r)))
                }
            };
            let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
                .with_span_processor(processor)
                .with_sampler(sampler)
                .with_resource(resource.clone())
                .build();
            let tracer = provider.tracer("rbac-gateway");
            TRACER
                .set(tracer)
                .map_err(|_| "telemetry started twice".to_string())?;
            Some(provider)
        }
    };
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    let proto_resource = export::proto_resource(&resource);
    // Where to, never who: a URL's user and password (if any) stay out of the log.
    let shown = |e: &config::Endpoint| {
        format!(
            "{}://{}{}",
            e.url.scheme_str().unwrap_or("http"),
            e.url.host().unwrap_or("-"),
            e.url.port().map_or(String::new(), |p| format!(":{p}"))
        ) + e.url.path()
    };
    let metrics_url = settings.metrics.as_ref().map_or("-".to_string(), shown);
    let traces_url = settings.traces.as_ref().map_or("-".to_string(), shown);
    let reporter = bg.spawn(async move {
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
                told = now;
            }
            if last {
                break;
            }
        }
    });
    tracing::info!(
        traces = %traces_url,
        metrics = %metrics_url,
        "telemetry: exporting over OTLP/HTTP"
    );
    Ok(Telemetry {
        provider,
        stop,
        reporter: Some(reporter),
    })
}

impl Telemetry {
    /// Flushes what is queued (spans, one last metrics export), taking at most `within`; then
    /// nothing more is exported. Called from `serve`'s thread, outside the runtime.
    pub fn shutdown(mut self, bg: &tokio::runtime::Runtime, within: Duration) {
        let deadline = Instant::now() + within;
        if let Some(provider) = self.provider.take() {
            // The SDK's shutdown waits on its export thread, which sends through `bg`.
            if let Err(e) = provider.shutdown_with_timeout(within) {
                tracing::warn!(error = %e, "telemetry: spans not all flushed at shutdown");
            }
        }
        // Err: the reporter already ended (nothing left to stop).
        let _ = self.stop.send(true);
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

/// A request's SERVER span, as the context its children start from. A clone is the same span.
#[derive(Clone)]
pub struct ServerSpan {
    cx: Context,
    /// How the principal was found: 0 nothing noted, 1 the worker's memory, 2 the shared
    /// cache, 3 the database.
    cache: Arc<AtomicU8>,
}

/// The method as a span name that needs no allocation.
fn method_name(method: &str) -> Cow<'static, str> {
    Cow::Borrowed(match method {
        "GET" => "GET",
        "HEAD" => "HEAD",
        "POST" => "POST",
        "PUT" => "PUT",
        "PATCH" => "PATCH",
        "DELETE" => "DELETE",
        "OPTIONS" => "OPTIONS",
        // Semantic conventions: an unknown method is named HTTP.
        _ => "HTTP",
    })
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
    tracer: &SdkTracer,
    method: &str,
    path: &str,
    headers: &http::HeaderMap,
) -> ServerSpan {
    let parent = if headers.contains_key("traceparent") {
        TraceContextPropagator::new().extract(&opentelemetry_http::HeaderExtractor(headers))
    } else {
        Context::new()
    };
    let span = tracer
        .span_builder(method_name(method))
        .with_kind(SpanKind::Server)
        .with_attributes([
            KeyValue::new(
                "http.request.method",
                match method_name(method) {
                    Cow::Borrowed("HTTP") => Cow::Owned(method.to_string()),
                    known => known,
                },
            ),
            KeyValue::new("url.path", path.to_string()),
        ])
        .start_with_context(tracer, &parent);
    ServerSpan {
        cx: parent.with_span(span),
        cache: Arc::new(AtomicU8::new(0)),
    }
}

impl ServerSpan {
    pub fn span_context(&self) -> SpanContext {
        self.cx.span().span_context().clone()
    }

    /// `<trace id>-<span id>` (49 characters of hex and `-`): the request id when no trusted
    /// router gave one.
    pub fn request_id(&self) -> String {
        let span = self.cx.span();
        let sc = span.span_context();
        let mut out = String::with_capacity(49);
        hex_into(&mut out, &sc.trace_id().to_bytes());
        out.push('-');
        hex_into(&mut out, &sc.span_id().to_bytes());
        out
    }

    /// The trace id as hex (the decision's log lines carry it).
    pub fn trace_id(&self) -> String {
        let mut out = String::with_capacity(32);
        hex_into(
            &mut out,
            &self.cx.span().span_context().trace_id().to_bytes(),
        );
        out
    }

    pub fn set(&self, attribute: KeyValue) {
        self.cx.span().set_attribute(attribute);
    }

    /// The rule that matched: `http.route`, and the span named `METHOD route`.
    pub fn route(&self, method: &str, route: &str) {
        let span = self.cx.span();
        span.update_name(format!("{} {route}", method_name(method)));
        span.set_attribute(KeyValue::new("http.route", route.to_string()));
    }

    /// Ends the span with the status sent: a 5xx is an error (semantic conventions: a 4xx
    /// is the client's, not the server's).
    pub fn end(self, status: u16) {
        let span = self.cx.span();
        span.set_attribute(KeyValue::new(
            "http.response.status_code",
            i64::from(status),
        ));
        let cache = match self.cache.load(Ordering::Relaxed) {
            1 => Some("worker"),
            2 => Some("shared"),
            3 => Some("miss"),
            _ => None,
        };
        if let Some(c) = cache {
            span.set_attribute(KeyValue::new("rbac.cache", c));
            span.set_attribute(KeyValue::new("rbac.cache_hit", c != "miss"));
        }
        if status >= 500 {
            span.set_status(Status::error(""));
        }
        span.end();
    }

    /// A CLIENT child (Console's exchange): its `traceparent` value is for the request sent.
    pub fn client(&self, method: &str, attributes: Vec<KeyValue>) -> ChildSpan {
        let tracer = TRACER
            .get()
            .expect("a server span exists only with a tracer");
        let span = tracer
            .span_builder(method_name(method))
            .with_kind(SpanKind::Client)
            .with_attributes(attributes)
            .start_with_context(tracer, &self.cx);
        ChildSpan {
            span: Box::new(span),
        }
    }
}

/// Lower-case hex of `bytes`, appended (ids are formatted on every traced request: no `fmt`).
fn hex_into(out: &mut String, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 15)]));
    }
}

/// A child span; ended when dropped, or by [`ChildSpan::end`] with a status.
/// Boxed: a future that holds one (Console's exchange) stays small when tracing is off.
pub struct ChildSpan {
    span: Box<opentelemetry_sdk::trace::Span>,
}

impl ChildSpan {
    /// The W3C `traceparent` naming this span, for the request it stands for.
    pub fn traceparent(&self) -> String {
        let sc = self.span.span_context();
        let mut out = String::with_capacity(55);
        out.push_str("00-");
        hex_into(&mut out, &sc.trace_id().to_bytes());
        out.push('-');
        hex_into(&mut out, &sc.span_id().to_bytes());
        out.push('-');
        hex_into(&mut out, &[sc.trace_flags().to_u8()]);
        out
    }

    pub fn set(&mut self, attribute: KeyValue) {
        self.span.set_attribute(attribute);
    }

    pub fn end(mut self, status: Option<u16>) {
        match status {
            Some(s) => {
                self.span
                    .set_attribute(KeyValue::new("http.response.status_code", i64::from(s)));
                if s >= 500 {
                    self.span.set_status(Status::error(""));
                }
            }
            None => self.span.set_status(Status::error("no answer")),
        }
        self.span.end();
    }
}

/// What a request's stores can reach while the door runs it: the span's context and the
/// cache note.
#[derive(Clone)]
struct Current {
    cx: Context,
    cache: Arc<AtomicU8>,
}

tokio::task_local! {
    static CURRENT: Current;
}

/// Runs `fut` (a door's handling of one request) with `span` as the parent of the spans the
/// stores start ([`db_span`]) and the place their cache notes go.
pub async fn in_request<F: std::future::Future>(span: &ServerSpan, fut: F) -> F::Output {
    let current = Current {
        cx: span.cx.clone(),
        cache: span.cache.clone(),
    };
    CURRENT.scope(current, fut).await
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
    // Err only while the thread is being torn down: no request's span is left to note it on.
    let _ = CURRENT.try_with(|c| c.cache.fetch_max(level as u8, Ordering::Relaxed));
}

/// A CLIENT child span for a database statement of the current request (None when tracing is
/// off or no request is being traced). `operation`: what it reads, never a value bound to it.
#[inline]
pub fn db_span(operation: &'static str) -> Option<ChildSpan> {
    let tracer = TRACER.get()?;
    let cx = CURRENT.try_with(|c| c.cx.clone()).ok()?;
    let span = tracer
        .span_builder(operation)
        .with_kind(SpanKind::Client)
        .with_attributes([
            KeyValue::new("db.system.name", "postgresql"),
            KeyValue::new("db.operation.name", "SELECT"),
            KeyValue::new("db.query.summary", operation),
        ])
        .start_with_context(tracer, &cx);
    Some(ChildSpan {
        span: Box::new(span),
    })
}

impl ChildSpan {
    /// Ends a database span: `ok` false marks it failed.
    pub fn done(mut self, ok: bool) {
        if !ok {
            self.span.set_status(Status::error("the statement failed"));
        }
        self.span.end();
    }
}
