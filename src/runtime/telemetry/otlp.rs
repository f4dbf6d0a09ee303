//! A span as a plain record ([`SpanRecord`]: ids as bytes, start and end as unix nanoseconds,
//! kind, name, parent, status, its attributes under `&'static str` keys) and the OTLP/HTTP
//! trace export's body, `ExportTraceServiceRequest` (opentelemetry-proto's
//! `collector/trace/v1`), written field by field from [`SpanRecord`]s: no intermediate protobuf
//! structs. A span's attributes are written as `KeyValue` entries when they are set
//! ([`Attributes::push`], inlined where it is called: with the key a literal, the entry's fixed
//! bytes are constants; no string allocated for a value); the span's entry on the queue copies
//! them whole. A server span's name `METHOD route` is written from its `http.route` attribute
//! ([`SpanRecord::name_route`]), never allocated. The resource and the scope are encoded once at
//! start ([`Prefix`]). Each message's length is computed before it is written (protobuf puts a
//! nested message's length before it), so the body is written in one pass; the export's head
//! is written in the room the queue keeps before the entries ([`request_in_place`]), so the
//! batch is not copied again.
//!
//! Replaces, with [`super::span`] and [`super::export::Queue`], the SDK's span pipeline on the
//! request path (`opentelemetry_sdk`'s `Span` and `BatchSpanProcessor`, `opentelemetry-otlp`'s
//! conversion and prost encoding), which cost several times as much CPU per sampled request
//! (`scripts/bench/otel.sh`; the figures are in docs/performance-log.md).
//!
//! Written as prost writes opentelemetry-proto's types (fields in number order, proto3 defaults
//! left out, a oneof's value always written): the differential test decodes what this writes
//! with those types and compares it with the spans as built, and compares the bytes with
//! prost's own encoding of the same message.

use std::borrow::Cow;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// The characters a text attribute keeps (`OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT` or
/// `OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT`, [`super::config`]), set once at start.
static VALUE_LIMIT: AtomicUsize = AtomicUsize::new(super::config::DEFAULT_VALUE_LENGTH_LIMIT);

/// Sets the characters a text attribute keeps, for every span from now on.
pub fn set_value_limit(characters: usize) {
    VALUE_LIMIT.store(characters, Ordering::Relaxed);
}

/// `t`, or its first [`VALUE_LIMIT`] characters (counted as the specification counts them, a
/// character one, so the cut falls between two of them): a client's long path costs the queue
/// no more than the limit.
#[inline(always)]
fn limited(t: &str) -> &str {
    let limit = VALUE_LIMIT.load(Ordering::Relaxed);
    // Never more characters than bytes: a text this short is kept without counting.
    if t.len() <= limit {
        t
    } else {
        cut(t, limit)
    }
}

#[cold]
#[inline(never)]
fn cut(t: &str, characters: usize) -> &str {
    match t.char_indices().nth(characters) {
        Some((at, _)) => &t[..at],
        None => t,
    }
}

/// An attribute's value as given: text (copied into the span's attributes at once, so
/// nothing is allocated for it), a number, a flag.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value<'a> {
    Text(&'a str),
    Int(i64),
    Bool(bool),
}

impl<'a> From<&'a str> for Value<'a> {
    fn from(s: &'a str) -> Value<'a> {
        Value::Text(s)
    }
}

impl<'a> From<&'a String> for Value<'a> {
    fn from(s: &'a String) -> Value<'a> {
        Value::Text(s)
    }
}

impl From<i64> for Value<'_> {
    fn from(n: i64) -> Self {
        Value::Int(n)
    }
}

impl From<bool> for Value<'_> {
    fn from(b: bool) -> Self {
        Value::Bool(b)
    }
}

/// A span's attributes, each already written as OTLP's `Span.attributes` entry (field 9, a
/// `KeyValue`): the export copies them as they are.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Attributes(pub Vec<u8>);

impl Attributes {
    pub fn with_capacity(n: usize) -> Attributes {
        Attributes(Vec::with_capacity(n))
    }

    /// Inlined where it is called: with the key a literal there, its length, the entry's fixed
    /// bytes and the key's copy are constants (a short text's entry is then three stores and
    /// one copy of the text).
    /// A text longer than the attribute value limit is cut ([`set_value_limit`]).
    #[inline(always)]
    pub fn push(&mut self, key: &str, value: Value<'_>) {
        let value = match value {
            Value::Text(t) => Value::Text(limited(t)),
            other => other,
        };
        match value {
            Value::Text(t) if key.len() + t.len() < 120 => put_short_text(&mut self.0, key, t),
            Value::Bool(b) if key.len() < 120 => put_bool(&mut self.0, key, b),
            Value::Int(n) if key.len() < 100 => put_int(&mut self.0, key, n),
            _ => put_attribute(&mut self.0, key, value),
        }
    }
}

impl Attributes {
    /// `http.route`, and where its text lies (the last bytes of its entry, whichever way it was
    /// written): [`SpanRecord::name_route`].
    pub fn push_route(&mut self, route: &str) -> (usize, usize) {
        let route = limited(route);
        self.push("http.route", Value::Text(route));
        (self.0.len() - route.len(), route.len())
    }
}

/// OTLP's span kinds the gateway makes (the protobuf enum's numbers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Server = 2,
    Client = 3,
}

/// A span's status: unset, or an error with its description.
#[derive(Debug, Clone, PartialEq)]
pub enum Status {
    Unset,
    Error(&'static str),
}

/// One span, sampled, as it is exported.
#[derive(Debug, Clone, PartialEq)]
pub struct SpanRecord {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    /// None: a root span.
    pub parent_span_id: Option<[u8; 8]>,
    /// The parent came from another process (an incoming `traceparent`).
    pub parent_remote: bool,
    /// The W3C `tracestate` the trace arrived with, as its header (empty: none).
    pub trace_state: Option<Arc<str>>,
    /// W3C trace flags (1: sampled).
    pub flags: u8,
    pub kind: Kind,
    pub name: Cow<'static, str>,
    /// Where, in `attributes`, the text the name goes on with lies (after a space): the server
    /// span's `http.route` ([`Attributes::push_route`]), so that `METHOD route` is never
    /// allocated. None: the name is `name`.
    pub name_route: Option<(usize, usize)>,
    pub start: u64,
    pub end: u64,
    pub attributes: Attributes,
    pub status: Status,
}

/// The resource and the scope, encoded once: what every export starts with.
#[derive(Debug, Clone)]
pub struct Prefix {
    /// `Resource`, as its message bytes.
    resource: Vec<u8>,
    /// `InstrumentationScope`, as its message bytes.
    scope: Vec<u8>,
}

impl Prefix {
    /// `resource` and `scope`: each an encoded message (prost's, once at start).
    pub fn new(resource: Vec<u8>, scope: Vec<u8>) -> Prefix {
        Prefix { resource, scope }
    }

    /// The most bytes an export writes before its spans: the resource, the scope, four keys
    /// and four lengths (each at most 10 bytes of varint, 11 with its key).
    pub fn head_room(&self) -> usize {
        self.resource.len() + self.scope.len() + 4 * 11
    }
}

const VARINT: u32 = 0;
const FIXED64: u32 = 1;
const LEN: u32 = 2;
const FIXED32: u32 = 5;

#[inline]
fn varint_len(v: u64) -> usize {
    // 1 byte per 7 bits, at least one.
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

#[inline]
fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

#[inline]
fn key_len(field: u32) -> usize {
    varint_len(u64::from(field << 3))
}

#[inline]
fn put_key(out: &mut Vec<u8>, field: u32, wire: u32) {
    put_varint(out, u64::from((field << 3) | wire));
}

/// A length-delimited field of `n` bytes, whole.
#[inline]
fn len_field(field: u32, n: usize) -> usize {
    key_len(field) + varint_len(n as u64) + n
}

#[inline]
fn put_len(out: &mut Vec<u8>, field: u32, n: usize) {
    put_key(out, field, LEN);
    put_varint(out, n as u64);
}

#[inline]
fn put_bytes(out: &mut Vec<u8>, field: u32, b: &[u8]) {
    put_len(out, field, b.len());
    out.extend_from_slice(b);
}

/// `AnyValue`'s bytes: one member of its oneof.
#[inline]
fn any_value_len(v: Value<'_>) -> usize {
    match v {
        Value::Int(n) => key_len(3) + varint_len(n as u64),
        Value::Bool(_) => key_len(2) + 1,
        Value::Text(t) => len_field(1, t.len()),
    }
}

/// The start of a short attribute's entry, with room reserved for the whole entry: field 9 of
/// `kv` bytes, then its key (field 1), each length one byte (the callers' bounds keep them
/// under 128).
#[inline(always)]
fn put_short_key(out: &mut Vec<u8>, kv: usize, key: &str) {
    out.reserve(2 + kv);
    out.extend_from_slice(&[
        (9 << 3) | LEN as u8,
        kv as u8,
        (1 << 3) | LEN as u8,
        key.len() as u8,
    ]);
    out.extend_from_slice(key.as_bytes());
}

/// The usual attribute, text whose every length fits one byte (`key` and `t` together under
/// 120 bytes): four bytes, the key, four bytes, the text (the same bytes as [`put_attribute`]'s
/// general case, written with fewer steps).
#[inline(always)]
fn put_short_text(out: &mut Vec<u8>, key: &str, t: &str) {
    let any = 2 + t.len();
    let kv = 2 + key.len() + 2 + any;
    put_short_key(out, kv, key);
    out.extend_from_slice(&[
        (2 << 3) | LEN as u8,
        any as u8,
        (1 << 3) | LEN as u8,
        t.len() as u8,
    ]);
    out.extend_from_slice(t.as_bytes());
}

/// A flag under a key shorter than 120 bytes: every length one byte.
#[inline(always)]
fn put_bool(out: &mut Vec<u8>, key: &str, b: bool) {
    let kv = 2 + key.len() + 4;
    put_short_key(out, kv, key);
    out.extend_from_slice(&[
        (2 << 3) | LEN as u8,
        2,
        (2 << 3) | VARINT as u8,
        u8::from(b),
    ]);
}

/// A number under a key shorter than 100 bytes: every length one byte (the number's varint is
/// at most 10).
#[inline(always)]
fn put_int(out: &mut Vec<u8>, key: &str, n: i64) {
    let v = varint_len(n as u64);
    let kv = 2 + key.len() + 2 + 1 + v;
    put_short_key(out, kv, key);
    out.extend_from_slice(&[(2 << 3) | LEN as u8, (1 + v) as u8, (3 << 3) | VARINT as u8]);
    put_varint(out, n as u64);
}

/// One attribute as `Span.attributes`' entry: field 9, a `KeyValue` of the key (never empty)
/// and the value (always present).
pub fn put_attribute(out: &mut Vec<u8>, key: &str, v: Value<'_>) {
    if let Value::Text(t) = v {
        if key.len() + t.len() < 120 {
            put_short_text(out, key, t);
            return;
        }
    }
    let any = any_value_len(v);
    let kv = len_field(1, key.len()) + len_field(2, any);
    out.reserve(len_field(9, kv));
    put_len(out, 9, kv);
    put_bytes(out, 1, key.as_bytes());
    put_len(out, 2, any);
    match v {
        Value::Int(n) => {
            put_key(out, 3, VARINT);
            put_varint(out, n as u64);
        }
        Value::Bool(b) => {
            put_key(out, 2, VARINT);
            out.push(u8::from(b));
        }
        Value::Text(t) => put_bytes(out, 1, t.as_bytes()),
    }
}

/// `Status`'s bytes: the message (an error's description), the code (unset: 0, error: 2).
fn status_len(s: &Status) -> usize {
    match s {
        Status::Unset => 0,
        Status::Error(d) => {
            (if d.is_empty() {
                0
            } else {
                len_field(2, d.len())
            }) + key_len(3)
                + 1
        }
    }
}

/// OTLP's span flags: the W3C flags, and whether the parent is remote (known: bit 8, remote:
/// bit 9), as opentelemetry-proto's conversion sets them.
fn span_flags(s: &SpanRecord) -> u32 {
    u32::from(s.flags) | 0x100 | if s.parent_remote { 0x200 } else { 0 }
}

/// The text the name goes on with, from the attributes.
fn name_route(s: &SpanRecord) -> Option<&[u8]> {
    s.name_route
        .and_then(|(at, n)| s.attributes.0.get(at..at + n))
}

/// The name's bytes: `name`, or `name route`.
fn name_len(s: &SpanRecord) -> usize {
    s.name.len() + name_route(s).map_or(0, |r| 1 + r.len())
}

fn span_len(s: &SpanRecord) -> usize {
    let mut n = len_field(1, 16) + len_field(2, 8);
    if let Some(ts) = s.trace_state.as_deref().filter(|t| !t.is_empty()) {
        n += len_field(3, ts.len());
    }
    if s.parent_span_id.is_some() {
        n += len_field(4, 8);
    }
    let name = name_len(s);
    if name > 0 {
        n += len_field(5, name);
    }
    n += key_len(6) + 1;
    n += 2 * (key_len(7) + 8);
    n += s.attributes.0.len();
    n += len_field(15, status_len(&s.status));
    n + key_len(16) + 4
}

fn put_span(out: &mut Vec<u8>, s: &SpanRecord, len: usize) {
    put_len(out, 2, len);
    // The fixed-size fields as whole blocks (their keys and lengths are one byte each): the
    // ids, then kind, start and end.
    let mut ids = [0u8; 28];
    ids[0] = (1 << 3) | LEN as u8;
    ids[1] = 16;
    ids[2..18].copy_from_slice(&s.trace_id);
    ids[18] = (2 << 3) | LEN as u8;
    ids[19] = 8;
    ids[20..].copy_from_slice(&s.span_id);
    out.extend_from_slice(&ids);
    if let Some(ts) = s.trace_state.as_deref().filter(|t| !t.is_empty()) {
        put_bytes(out, 3, ts.as_bytes());
    }
    if let Some(p) = &s.parent_span_id {
        let mut parent = [0u8; 10];
        parent[0] = (4 << 3) | LEN as u8;
        parent[1] = 8;
        parent[2..].copy_from_slice(p);
        out.extend_from_slice(&parent);
    }
    let name = name_len(s);
    if name > 0 {
        put_len(out, 5, name);
        out.extend_from_slice(s.name.as_bytes());
        if let Some(route) = name_route(s) {
            out.push(b' ');
            out.extend_from_slice(route);
        }
    }
    let mut times = [0u8; 20];
    times[0] = (6 << 3) | VARINT as u8;
    times[1] = s.kind as u8;
    times[2] = (7 << 3) | FIXED64 as u8;
    times[3..11].copy_from_slice(&s.start.to_le_bytes());
    times[11] = (8 << 3) | FIXED64 as u8;
    times[12..].copy_from_slice(&s.end.to_le_bytes());
    out.extend_from_slice(&times);
    out.extend_from_slice(&s.attributes.0);
    put_len(out, 15, status_len(&s.status));
    if let Status::Error(d) = &s.status {
        if !d.is_empty() {
            put_bytes(out, 2, d.as_bytes());
        }
        put_key(out, 3, VARINT);
        out.push(2);
    }
    let mut flags = [0u8; 6];
    // Field 16's key, (16 << 3) | 5 = 133, is two bytes of varint: 0x85 0x01.
    flags[..2].copy_from_slice(&[0x80 | FIXED32 as u8, 1]);
    flags[2..].copy_from_slice(&span_flags(s).to_le_bytes());
    out.extend_from_slice(&flags);
}

/// One span as `ScopeSpans.spans`' entry (field 2, a `Span`), measured: what the queue holds,
/// each span written when it ends.
pub struct SpanEntry<'a> {
    span: &'a SpanRecord,
    len: usize,
}

impl<'a> SpanEntry<'a> {
    pub fn of(span: &'a SpanRecord) -> SpanEntry<'a> {
        SpanEntry {
            span,
            len: span_len(span),
        }
    }

    /// The entry's bytes.
    pub fn bytes(&self) -> usize {
        len_field(2, self.len)
    }

    /// Appends the entry to `out`.
    pub fn put(&self, out: &mut Vec<u8>) {
        out.reserve(self.bytes());
        put_span(out, self.span, self.len);
    }
}

/// [`SpanEntry::put`] of `s`.
pub fn put_span_entry(out: &mut Vec<u8>, s: &SpanRecord) {
    SpanEntry::of(s).put(out);
}

/// What an export writes before its spans' entries, `entries` bytes of them: at most
/// [`Prefix::head_room`] bytes.
fn put_request_head(prefix: &Prefix, entries: usize, out: &mut Vec<u8>) {
    let scope_spans = len_field(1, prefix.scope.len()) + entries;
    let resource_spans = len_field(1, prefix.resource.len()) + len_field(2, scope_spans);
    out.reserve(len_field(1, resource_spans) - entries);
    put_len(out, 1, resource_spans);
    put_bytes(out, 1, &prefix.resource);
    put_len(out, 2, scope_spans);
    put_bytes(out, 1, &prefix.scope);
}

/// One export: `ExportTraceServiceRequest { resource_spans: [{ resource, scope_spans: [{ scope,
/// spans }] }] }` around `entries` (spans written by [`put_span_entry`]), into `out` (cleared
/// first).
pub fn encode_request(prefix: &Prefix, entries: &[u8], out: &mut Vec<u8>) {
    out.clear();
    put_request_head(prefix, entries.len(), out);
    out.extend_from_slice(entries);
}

/// The same export as [`encode_request`], written around the entries where they lie: `buf` is
/// `room` bytes ([`Prefix::head_room`], their values unused) and then the entries; the head is
/// written at the end of the room and the export starts there (the entries are not copied:
/// a batch is ~1 KB a traced request).
pub fn request_in_place(prefix: &Prefix, mut buf: Vec<u8>, room: usize) -> bytes::Bytes {
    let mut head = Vec::with_capacity(room);
    put_request_head(prefix, buf.len() - room, &mut head);
    let start = room - head.len();
    buf[start..room].copy_from_slice(&head);
    bytes::Bytes::from(buf).slice(start..)
}

#[cfg(test)]
mod tests {
    use super::super::span::{new_span_id, new_trace_id};
    use super::*;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::{
        any_value, AnyValue, InstrumentationScope, KeyValue,
    };
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::{
        span, status, ResourceSpans, ScopeSpans, Span, Status as ProtoStatus,
    };
    use prost::Message;

    /// The attributes as set, and as OTLP's `KeyValue`s (what a decoder must find).
    fn attributes(list: &[(&str, Value<'_>)]) -> (Attributes, Vec<KeyValue>) {
        let mut a = Attributes::default();
        let mut kvs = Vec::new();
        for (k, v) in list {
            a.push(k, *v);
            kvs.push(KeyValue {
                key: k.to_string(),
                value: Some(AnyValue {
                    value: Some(match v {
                        Value::Int(n) => any_value::Value::IntValue(*n),
                        Value::Bool(b) => any_value::Value::BoolValue(*b),
                        Value::Text(t) => any_value::Value::StringValue(t.to_string()),
                    }),
                }),
                ..Default::default()
            });
        }
        (a, kvs)
    }

    /// The straightforward conversion, as opentelemetry-proto converts the SDK's `SpanData`.
    fn proto(s: &SpanRecord, attributes: &[KeyValue]) -> Span {
        Span {
            trace_id: s.trace_id.to_vec(),
            span_id: s.span_id.to_vec(),
            trace_state: s.trace_state.as_deref().unwrap_or("").to_string(),
            parent_span_id: s.parent_span_id.map_or(Vec::new(), |p| p.to_vec()),
            flags: u32::from(s.flags) | 0x100 | if s.parent_remote { 0x200 } else { 0 },
            name: match name_route(s) {
                None => s.name.to_string(),
                Some(r) => format!("{} {}", s.name, std::str::from_utf8(r).unwrap()),
            },
            kind: match s.kind {
                Kind::Server => span::SpanKind::Server,
                Kind::Client => span::SpanKind::Client,
            } as i32,
            start_time_unix_nano: s.start,
            end_time_unix_nano: s.end,
            attributes: attributes.to_vec(),
            status: Some(match s.status {
                Status::Unset => ProtoStatus::default(),
                Status::Error(d) => ProtoStatus {
                    message: d.to_string(),
                    code: status::StatusCode::Error as i32,
                },
            }),
            ..Default::default()
        }
    }

    fn spans() -> Vec<(SpanRecord, Vec<KeyValue>)> {
        let trace_id = new_trace_id();
        let long = "x".repeat(300);
        // The fast path's bound: key and text 119 bytes (every length one byte), then 120.
        let (edge, past) = ("y".repeat(118), "z".repeat(119));
        let (mut server_attributes, mut server_kvs) = attributes(&[
            ("http.request.method", Value::Text("GET")),
            ("url.path", Value::Text("/console/customers/42")),
            ("rbac.admin_id", Value::Text("admin-ü-7")),
            ("http.response.status_code", Value::Int(503)),
            ("neg", Value::Int(-1)),
            ("big", Value::Int(i64::MAX)),
            ("rbac.cache_hit", Value::Bool(false)),
            ("rbac.cache", Value::Bool(true)),
            ("empty", Value::Text("")),
            ("long", Value::Text(&long)),
            ("k", Value::Text(&edge)),
            ("k", Value::Text(&past)),
            // A flag and a number under a key too long for the one-byte lengths.
            (&long, Value::Bool(true)),
            (&long, Value::Int(7)),
            (&edge, Value::Bool(false)),
        ]);
        // The name goes on with the route, from the attributes.
        let name_route = Some(server_attributes.push_route("/console/customers/<id>"));
        server_kvs.push(KeyValue {
            key: "http.route".into(),
            value: Some(AnyValue {
                value: Some(any_value::Value::StringValue(
                    "/console/customers/<id>".into(),
                )),
            }),
            ..Default::default()
        });
        let server = SpanRecord {
            trace_id,
            span_id: new_span_id(),
            parent_span_id: Some([0, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]),
            parent_remote: true,
            trace_state: Some("a=1,b=2".into()),
            flags: 1,
            kind: Kind::Server,
            name: "GET".into(),
            name_route,
            start: 1_764_000_000_123_456_789,
            end: 1_764_000_000_123_999_999,
            attributes: server_attributes,
            status: Status::Error(""),
        };
        let (exchange_attributes, exchange_kvs) = attributes(&[
            ("http.request.method", Value::Text("GET")),
            ("server.port", Value::Int(8000)),
        ]);
        let mut exchange = server.clone();
        exchange.span_id = new_span_id();
        exchange.parent_span_id = Some(server.span_id);
        exchange.parent_remote = false;
        exchange.trace_state = None;
        exchange.kind = Kind::Client;
        exchange.name = "GET".into();
        exchange.name_route = None;
        exchange.attributes = exchange_attributes;
        exchange.status = Status::Error("no answer");
        let mut root = exchange.clone();
        root.parent_span_id = None;
        root.attributes = Attributes::default();
        root.status = Status::Unset;
        root.name = "".into();
        root.flags = 0;
        vec![
            (server, server_kvs),
            (exchange, exchange_kvs),
            (root, Vec::new()),
        ]
    }

    #[test]
    fn what_is_written_decodes_to_the_spans_as_built_and_is_prosts_bytes() {
        let resource = Resource {
            attributes: vec![KeyValue {
                key: "service.name".into(),
                value: Some(AnyValue {
                    value: Some(any_value::Value::StringValue("rbac-gateway".into())),
                }),
                ..Default::default()
            }],
            ..Default::default()
        };
        let scope = InstrumentationScope {
            name: "rbac-gateway".into(),
            ..Default::default()
        };
        let prefix = Prefix::new(resource.encode_to_vec(), scope.encode_to_vec());
        for n in [0, 1, 3] {
            let (spans, kvs): (Vec<SpanRecord>, Vec<Vec<KeyValue>>) =
                spans().into_iter().take(n).unzip();
            let want = ExportTraceServiceRequest {
                resource_spans: vec![ResourceSpans {
                    resource: Some(resource.clone()),
                    scope_spans: vec![ScopeSpans {
                        scope: Some(scope.clone()),
                        spans: spans.iter().zip(&kvs).map(|(s, a)| proto(s, a)).collect(),
                        schema_url: String::new(),
                    }],
                    schema_url: String::new(),
                }],
            };
            let mut entries = Vec::new();
            for s in &spans {
                put_span_entry(&mut entries, s);
            }
            let mut out = vec![9, 9, 9];
            encode_request(&prefix, &entries, &mut out);
            let got = ExportTraceServiceRequest::decode(&out[..]).unwrap();
            assert_eq!(got, want);
            assert_eq!(out, want.encode_to_vec(), "prost's own bytes, {n} spans");
            // Written in place, around the entries behind the room the queue keeps.
            let room = prefix.head_room();
            let mut buf = vec![7; room];
            buf.extend_from_slice(&entries);
            let in_place = request_in_place(&prefix, buf, room);
            assert_eq!(&in_place[..], &out[..], "in place, {n} spans");
        }
    }

    /// A text past the attribute value limit keeps that many characters, cut between two of
    /// them (a character counts one, whatever its bytes), `http.route` and the name with it.
    #[test]
    fn a_text_past_the_value_limit_is_cut_between_characters() {
        assert_eq!(cut("aé€😀b", 0), "");
        assert_eq!(cut("aé€😀b", 2), "aé");
        assert_eq!(cut("aé€😀b", 4), "aé€😀");
        assert_eq!(cut("aé€😀b", 5), "aé€😀b");
        assert_eq!(cut("aé€😀b", 50), "aé€😀b");
        let mut a = Attributes::default();
        let long = "é".repeat(5000);
        a.push("url.path", Value::Text(&long));
        let (at, n) = a.push_route(&"/x".repeat(3000));
        let kept = |kv: &[u8]| {
            let kv = KeyValue::decode(kv).unwrap();
            match kv.value.unwrap().value.unwrap() {
                any_value::Value::StringValue(s) => s,
                other => panic!("{other:?}"),
            }
        };
        // Each entry: field 9, its length, the KeyValue.
        let mut entries = Vec::new();
        let mut rest = &a.0[..];
        while !rest.is_empty() {
            let mut buf = &rest[1..];
            let len = prost::encoding::decode_varint(&mut buf).unwrap() as usize;
            let start = rest.len() - buf.len();
            entries.push(kept(&rest[start..start + len]));
            rest = &rest[start + len..];
        }
        let limit = crate::runtime::telemetry::config::DEFAULT_VALUE_LENGTH_LIMIT;
        assert_eq!(entries[0], "é".repeat(limit));
        assert_eq!(entries[1], "/x".repeat(limit / 2));
        assert_eq!(n, limit);
        assert_eq!(&a.0[at..at + n], "/x".repeat(limit / 2).as_bytes());
    }

    #[test]
    fn varint_lengths() {
        for v in [0u64, 1, 127, 128, 16383, 16384, u64::MAX] {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            assert_eq!(out.len(), varint_len(v), "{v}");
        }
    }
}
