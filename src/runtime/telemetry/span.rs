//! A span on the request path, without the SDK's `Span` and `Context`: its ids,
//! the trace an incoming request continues, whether it is sampled; the record itself
//! ([`super::otlp::SpanRecord`]) is what [`super::otlp`] encodes and [`super::export`] queues.
//!
//! Replaces the OpenTelemetry SDK's `Span`, `Context` and `BatchSpanProcessor` on the request
//! path: with every request sampled the SDK's pipeline cost far more CPU per request (a
//! `SpanData` per span moved to its export thread, each attribute turned into an owned OTLP
//! string there, then prost); the paired figures are in docs/performance-log.md. What a span
//! carries and how it is sampled
//! is what the SDK did: the sampler follows the specification's `always_on`, `always_off`,
//! `traceidratio` (the SDK's comparison of the trace id's low 63 bits) and `parentbased_*`
//! (an incoming `traceparent`'s sampled flag decides); ids come from the SDK's own generator;
//! the incoming `traceparent`/`tracestate` are read by the SDK's propagator. The encoding is
//! pinned against opentelemetry-proto's prost types by `otlp`'s differential test and the whole
//! export by `tests/api/telemetry.rs`.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TraceContextExt;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator};

use super::config::Sampling;

/// Now, as unix nanoseconds.
#[inline]
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// A new trace id (the SDK's generator: a thread's `SmallRng`).
pub fn new_trace_id() -> [u8; 16] {
    RandomIdGenerator::default().new_trace_id().to_bytes()
}

/// A new span id (the same generator).
pub fn new_span_id() -> [u8; 8] {
    RandomIdGenerator::default().new_span_id().to_bytes()
}

/// The trace an incoming request continues: its `traceparent` (and `tracestate`), valid.
#[derive(Debug, Clone, PartialEq)]
pub struct Parent {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub sampled: bool,
    pub trace_state: Option<Arc<str>>,
}

/// The parent an incoming request names, read by the SDK's W3C propagator (None: none, or not
/// valid; an invalid `tracestate` is dropped, the `traceparent` kept, as the SDK does).
pub fn parent_of(headers: &http::HeaderMap) -> Option<Parent> {
    let cx = TraceContextPropagator::new().extract(&Headers(headers));
    let span = cx.span();
    let sc = span.span_context();
    if !sc.is_valid() {
        return None;
    }
    let state = sc.trace_state().header();
    Some(Parent {
        trace_id: sc.trace_id().to_bytes(),
        span_id: sc.span_id().to_bytes(),
        sampled: sc.is_sampled(),
        trace_state: (!state.is_empty()).then(|| state.into()),
    })
}

/// The request's headers as the propagator reads them (a value that is not text is none).
struct Headers<'a>(&'a http::HeaderMap);

impl opentelemetry::propagation::Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// Whether a new server span is sampled, as the SDK's samplers decide it.
pub fn sampled(sampling: Sampling, trace_id: &[u8; 16], parent: Option<&Parent>) -> bool {
    match (sampling, parent) {
        (Sampling::AlwaysOn, _) => true,
        (Sampling::AlwaysOff, _) => false,
        (Sampling::Ratio(r), _) => by_ratio(r, trace_id),
        (
            Sampling::ParentBasedAlwaysOn
            | Sampling::ParentBasedAlwaysOff
            | Sampling::ParentBasedRatio(_),
            Some(p),
        ) => p.sampled,
        (Sampling::ParentBasedAlwaysOn, None) => true,
        (Sampling::ParentBasedAlwaysOff, None) => false,
        (Sampling::ParentBasedRatio(r), None) => by_ratio(r, trace_id),
    }
}

/// `traceidratio`: the trace id's low 8 bytes (big-endian) shifted right once, below the ratio of
/// 2^63 (the SDK's `sample_based_on_probability`).
fn by_ratio(ratio: f64, trace_id: &[u8; 16]) -> bool {
    if ratio >= 1.0 {
        return true;
    }
    let bound = (ratio.max(0.0) * (1u64 << 63) as f64) as u64;
    let low = u64::from_be_bytes(trace_id[8..].try_into().expect("8 bytes"));
    (low >> 1) < bound
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::{SpanKind, TraceFlags, TraceId, TraceState};
    use opentelemetry_sdk::trace::{Sampler, SamplingDecision, ShouldSample};

    /// The sampler decides as the SDK's, for every configuration, with and without a parent.
    #[test]
    fn sampling_is_the_sdks() {
        let configs = [
            (Sampling::AlwaysOn, Sampler::AlwaysOn),
            (Sampling::AlwaysOff, Sampler::AlwaysOff),
            (Sampling::Ratio(0.3), Sampler::TraceIdRatioBased(0.3)),
            (
                Sampling::ParentBasedAlwaysOn,
                Sampler::ParentBased(Box::new(Sampler::AlwaysOn)),
            ),
            (
                Sampling::ParentBasedAlwaysOff,
                Sampler::ParentBased(Box::new(Sampler::AlwaysOff)),
            ),
            (
                Sampling::ParentBasedRatio(0.3),
                Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(0.3))),
            ),
        ];
        for i in 0..400u32 {
            let trace_id = new_trace_id();
            let parent = match i % 3 {
                0 => None,
                n => Some(Parent {
                    trace_id,
                    span_id: new_span_id(),
                    sampled: n == 1,
                    trace_state: None,
                }),
            };
            let cx = match &parent {
                None => opentelemetry::Context::new(),
                Some(p) => opentelemetry::Context::new().with_remote_span_context(
                    opentelemetry::trace::SpanContext::new(
                        TraceId::from_bytes(p.trace_id),
                        opentelemetry::trace::SpanId::from_bytes(p.span_id),
                        if p.sampled {
                            TraceFlags::SAMPLED
                        } else {
                            TraceFlags::default()
                        },
                        true,
                        TraceState::default(),
                    ),
                ),
            };
            for (ours, sdk) in &configs {
                let theirs = sdk.should_sample(
                    Some(&cx),
                    TraceId::from_bytes(trace_id),
                    "GET",
                    &SpanKind::Server,
                    &[],
                    &[],
                );
                assert_eq!(
                    sampled(*ours, &trace_id, parent.as_ref()),
                    theirs.decision == SamplingDecision::RecordAndSample,
                    "{ours:?} parent {parent:?}"
                );
            }
        }
    }

    #[test]
    fn an_incoming_traceparent_and_tracestate() {
        let mut h = http::HeaderMap::new();
        assert_eq!(parent_of(&h), None);
        h.insert(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
                .parse()
                .unwrap(),
        );
        h.insert("tracestate", "a=1,b=2".parse().unwrap());
        let p = parent_of(&h).unwrap();
        assert!(p.sampled);
        assert_eq!(p.span_id, [0, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]);
        assert_eq!(p.trace_state.as_deref(), Some("a=1,b=2"));
        h.insert(
            "traceparent",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01"
                .parse()
                .unwrap(),
        );
        assert_eq!(parent_of(&h), None, "an all-zero trace id is no parent");
    }
}
