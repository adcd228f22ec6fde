//! A direct OTLP/JSON encoder for finished spans.
//!
//! The local store writes spans in the OTLP/JSON encoding, the one the
//! OpenTelemetry Collector's file exporter writes. Going through the
//! generated protobuf types and serde costs a copy of every string and a
//! map of every span; this encoder writes the same bytes straight from the
//! SDK's [`SpanData`] into a reused buffer. A unit test holds it to the
//! byte-for-byte output of `opentelemetry-proto`'s own serde encoding.

use std::time::{SystemTime, UNIX_EPOCH};

use opentelemetry::trace::{SpanId, SpanKind, Status};
use opentelemetry::{Array, InstrumentationScope, KeyValue, Value};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SpanData;

/// The `resource` member of a `ResourceSpans`, encoded once per resource,
/// with the resource's schema URL.
#[derive(Clone, Debug, Default)]
pub struct EncodedResource {
    resource: String,
    schema_url: String,
}

impl EncodedResource {
    /// Encodes `resource`.
    pub fn new(resource: &Resource) -> Self {
        let mut out = Vec::with_capacity(256);
        out.extend_from_slice(b"{\"attributes\":[");
        for (i, (key, value)) in resource.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            key_value(&mut out, key.as_str(), value);
        }
        out.extend_from_slice(b"],\"droppedAttributesCount\":0,\"entityRefs\":[]}");
        let mut schema_url = Vec::new();
        string(&mut schema_url, resource.schema_url().unwrap_or_default());
        Self {
            resource: String::from_utf8_lossy(&out).into_owned(),
            schema_url: String::from_utf8_lossy(&schema_url).into_owned(),
        }
    }
}

/// The encoded `scope` and `schemaUrl` members of a `ScopeSpans`: two spans
/// belong to the same group when these are equal.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct EncodedScopeKey(String);

impl EncodedScopeKey {
    /// Encodes `scope`.
    pub fn new(scope: &InstrumentationScope) -> Self {
        let mut out = Vec::with_capacity(96);
        out.extend_from_slice(b"\"scope\":{\"name\":");
        string(&mut out, scope.name());
        out.extend_from_slice(b",\"version\":");
        string(&mut out, scope.version().unwrap_or_default());
        out.extend_from_slice(b",\"attributes\":[");
        for (i, kv) in scope.attributes().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            key_value(&mut out, kv.key.as_str(), &kv.value);
        }
        out.extend_from_slice(b"],\"droppedAttributesCount\":0}");
        Self(String::from_utf8_lossy(&out).into_owned())
    }
}

/// Spans encoded so far, grouped by instrumentation scope, ready to become
/// one `TracesData` line.
#[derive(Debug, Default)]
pub struct SpanGroups {
    groups: Vec<(EncodedScopeKey, String, Vec<u8>)>,
    spans: u64,
}

impl SpanGroups {
    /// Appends one encoded span (from [`encode_span`]) to its scope's group.
    pub fn push(&mut self, scope: &InstrumentationScope, key_hint: &EncodedScopeKey, span: &[u8]) {
        let index = match self.groups.iter().position(|(key, _, _)| key == key_hint) {
            Some(index) => index,
            None => {
                let mut schema = Vec::new();
                string(&mut schema, scope.schema_url().unwrap_or_default());
                self.groups.push((
                    key_hint.clone(),
                    String::from_utf8_lossy(&schema).into_owned(),
                    Vec::with_capacity(span.len() * 16),
                ));
                self.groups.len() - 1
            }
        };
        let spans = &mut self.groups[index].2;
        if !spans.is_empty() {
            spans.push(b',');
        }
        spans.extend_from_slice(span);
        self.spans += 1;
    }

    /// Spans held.
    pub fn len(&self) -> u64 {
        self.spans
    }

    /// True when no span is held.
    pub fn is_empty(&self) -> bool {
        self.spans == 0
    }

    /// Writes the held spans as one `TracesData` JSON object followed by a
    /// newline, and empties the groups (keeping their buffers).
    pub fn write_line(&mut self, resource: &EncodedResource, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"resourceSpans\":[{\"resource\":");
        out.extend_from_slice(resource.resource.as_bytes());
        out.extend_from_slice(b",\"scopeSpans\":[");
        let mut first = true;
        for (key, schema_url, spans) in &mut self.groups {
            if spans.is_empty() {
                continue;
            }
            if !first {
                out.push(b',');
            }
            first = false;
            out.push(b'{');
            out.extend_from_slice(key.0.as_bytes());
            out.extend_from_slice(b",\"spans\":[");
            out.extend_from_slice(spans);
            out.extend_from_slice(b"],\"schemaUrl\":");
            out.extend_from_slice(schema_url.as_bytes());
            out.push(b'}');
            spans.clear();
        }
        out.extend_from_slice(b"],\"schemaUrl\":");
        out.extend_from_slice(resource.schema_url.as_bytes());
        out.extend_from_slice(b"}]}\n");
        self.spans = 0;
    }
}

/// Appends `span` as an OTLP/JSON `Span` object to `out`.
pub fn encode_span(out: &mut Vec<u8>, span: &SpanData) {
    let context = &span.span_context;
    out.extend_from_slice(b"{\"traceId\":\"");
    hex(out, &context.trace_id().to_bytes());
    out.extend_from_slice(b"\",\"spanId\":\"");
    hex(out, &context.span_id().to_bytes());
    out.extend_from_slice(b"\",\"traceState\":");
    string(out, &context.trace_state().header());
    out.extend_from_slice(b",\"parentSpanId\":\"");
    if span.parent_span_id != SpanId::INVALID {
        hex(out, &span.parent_span_id.to_bytes());
    }
    out.extend_from_slice(b"\",\"flags\":");
    number(
        out,
        flags(span.parent_span_is_remote, context.trace_flags().to_u8()),
    );
    out.extend_from_slice(b",\"name\":");
    string(out, &span.name);
    out.extend_from_slice(b",\"kind\":");
    number(out, kind(&span.span_kind));
    out.extend_from_slice(b",\"startTimeUnixNano\":\"");
    number(out, nanos(span.start_time));
    out.extend_from_slice(b"\",\"endTimeUnixNano\":\"");
    number(out, nanos(span.end_time));
    out.extend_from_slice(b"\",\"attributes\":");
    attributes(out, &span.attributes);
    out.extend_from_slice(b",\"droppedAttributesCount\":");
    number(out, span.dropped_attributes_count);
    out.extend_from_slice(b",\"events\":[");
    for (i, event) in span.events.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"timeUnixNano\":\"");
        number(out, nanos(event.timestamp));
        out.extend_from_slice(b"\",\"name\":");
        string(out, &event.name);
        out.extend_from_slice(b",\"attributes\":");
        attributes(out, &event.attributes);
        out.extend_from_slice(b",\"droppedAttributesCount\":");
        number(out, event.dropped_attributes_count);
        out.push(b'}');
    }
    out.extend_from_slice(b"],\"droppedEventsCount\":");
    number(out, span.events.dropped_count);
    out.extend_from_slice(b",\"links\":[");
    for (i, link) in span.links.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        let context = &link.span_context;
        out.extend_from_slice(b"{\"traceId\":\"");
        hex(out, &context.trace_id().to_bytes());
        out.extend_from_slice(b"\",\"spanId\":\"");
        hex(out, &context.span_id().to_bytes());
        out.extend_from_slice(b"\",\"traceState\":");
        string(out, &context.trace_state().header());
        out.extend_from_slice(b",\"attributes\":");
        attributes(out, &link.attributes);
        out.extend_from_slice(b",\"droppedAttributesCount\":");
        number(out, link.dropped_attributes_count);
        out.extend_from_slice(b",\"flags\":");
        number(
            out,
            flags(context.is_remote(), context.trace_flags().to_u8()),
        );
        out.push(b'}');
    }
    out.extend_from_slice(b"],\"droppedLinksCount\":");
    number(out, span.links.dropped_count);
    out.extend_from_slice(b",\"status\":{\"message\":");
    let (message, code) = match &span.status {
        Status::Unset => ("", 0_u32),
        Status::Ok => ("", 1),
        Status::Error { description } => (description.as_ref(), 2),
    };
    string(out, message);
    out.extend_from_slice(b",\"code\":");
    number(out, code);
    out.extend_from_slice(b"}}");
}

/// OTLP span flags: the W3C flags, plus "has is-remote" and "is remote".
fn flags(remote: bool, trace_flags: u8) -> u32 {
    u32::from(trace_flags) | 0x100 | if remote { 0x200 } else { 0 }
}

fn kind(kind: &SpanKind) -> u32 {
    match kind {
        SpanKind::Internal => 1,
        SpanKind::Server => 2,
        SpanKind::Client => 3,
        SpanKind::Producer => 4,
        SpanKind::Consumer => 5,
    }
}

fn nanos(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn attributes(out: &mut Vec<u8>, attributes: &[KeyValue]) {
    out.push(b'[');
    for (i, kv) in attributes.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        key_value(out, kv.key.as_str(), &kv.value);
    }
    out.push(b']');
}

fn key_value(out: &mut Vec<u8>, key: &str, value: &Value) {
    out.extend_from_slice(b"{\"key\":");
    string(out, key);
    out.extend_from_slice(b",\"value\":");
    any_value(out, value);
    out.push(b'}');
}

fn any_value(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::String(s) => {
            out.extend_from_slice(b"{\"stringValue\":");
            string(out, s.as_str());
            out.push(b'}');
        }
        Value::I64(n) => {
            out.extend_from_slice(b"{\"intValue\":\"");
            number(out, *n);
            out.extend_from_slice(b"\"}");
        }
        Value::Bool(b) => {
            out.extend_from_slice(if *b {
                b"{\"boolValue\":true}"
            } else {
                b"{\"boolValue\":false}"
            });
        }
        Value::F64(f) => {
            out.extend_from_slice(b"{\"doubleValue\":");
            double(out, *f);
            out.push(b'}');
        }
        Value::Array(array) => {
            out.extend_from_slice(b"{\"arrayValue\":{\"values\":[");
            match array {
                Array::Bool(values) => list(out, values, |out, v| {
                    any_value(out, &Value::Bool(*v));
                }),
                Array::I64(values) => list(out, values, |out, v| {
                    any_value(out, &Value::I64(*v));
                }),
                Array::F64(values) => list(out, values, |out, v| {
                    any_value(out, &Value::F64(*v));
                }),
                Array::String(values) => list(out, values, |out, v| {
                    out.extend_from_slice(b"{\"stringValue\":");
                    string(out, v.as_str());
                    out.push(b'}');
                }),
                // Array kinds added to the API later have no encoding yet.
                _ => {}
            }
            out.extend_from_slice(b"]}}");
        }
        // Value kinds added to the API later: an empty value.
        _ => out.extend_from_slice(b"{}"),
    }
}

fn list<T>(out: &mut Vec<u8>, values: &[T], each: impl Fn(&mut Vec<u8>, &T)) {
    for (i, v) in values.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        each(out, v);
    }
}

fn double(out: &mut Vec<u8>, f: f64) {
    // serde_json's own formatting (ryu), so the output stays identical;
    // it writes `null` for NaN and the infinities.
    match serde_json::to_vec(&f) {
        Ok(text) => out.extend_from_slice(&text),
        Err(_) => out.extend_from_slice(b"null"),
    }
}

fn number(out: &mut Vec<u8>, n: impl itoa::Integer) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Appends `bytes` in lowercase hex (trace and span ids: at most 16 bytes).
fn hex(out: &mut Vec<u8>, bytes: &[u8]) {
    let mut digits = [0u8; 32];
    for (pair, &b) in digits.chunks_exact_mut(2).zip(bytes) {
        pair[0] = HEX[usize::from(b >> 4)];
        pair[1] = HEX[usize::from(b & 0xf)];
    }
    out.extend_from_slice(&digits[..2 * bytes.len().min(16)]);
}

/// For each byte, how a JSON string escapes it: 0 for not at all, `u` for
/// the `\u00XX` form, else the letter after the backslash (serde_json's
/// choices).
static ESCAPE: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut b = 0;
    while b < 0x20 {
        table[b] = b'u';
        b += 1;
    }
    table[0x08] = b'b';
    table[0x0c] = b'f';
    table[b'\n' as usize] = b'n';
    table[b'\r' as usize] = b'r';
    table[b'\t' as usize] = b't';
    table[b'"' as usize] = b'"';
    table[b'\\' as usize] = b'\\';
    table
};

/// True when some byte of the 8 in `chunk` is a control character, `"` or
/// `\` (exact, by the usual SWAR tests for a zero or small byte).
fn chunk_needs_escape(chunk: u64) -> bool {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGH: u64 = u64::from_ne_bytes([0x80; 8]);
    let below_space = chunk.wrapping_sub(ONES * 0x20) & !chunk;
    let quote = chunk ^ (ONES * u64::from(b'"'));
    let backslash = chunk ^ (ONES * u64::from(b'\\'));
    let has_quote = quote.wrapping_sub(ONES) & !quote;
    let has_backslash = backslash.wrapping_sub(ONES) & !backslash;
    (below_space | has_quote | has_backslash) & HIGH != 0
}

/// Appends `s` as a JSON string, escaped exactly as serde_json escapes.
pub fn string(out: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    // Most strings here (attribute keys, ids, method names) need no
    // escaping: check 8 bytes at a time and copy them whole.
    let mut chunks = bytes.chunks_exact(8);
    let plain = chunks.by_ref().all(|c| {
        let mut word = [0u8; 8];
        word.copy_from_slice(c);
        !chunk_needs_escape(u64::from_ne_bytes(word))
    }) && chunks
        .remainder()
        .iter()
        .all(|&b| ESCAPE[usize::from(b)] == 0);
    if plain {
        out.extend_from_slice(bytes);
    } else {
        escape_into(out, bytes);
    }
    out.push(b'"');
}

fn escape_into(out: &mut Vec<u8>, bytes: &[u8]) {
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape = ESCAPE[usize::from(b)];
        if escape == 0 {
            continue;
        }
        out.extend_from_slice(&bytes[start..i]);
        if escape == b'u' {
            out.extend_from_slice(b"\\u00");
            out.push(HEX[usize::from(b >> 4)]);
            out.push(HEX[usize::from(b & 0xf)]);
        } else {
            out.extend_from_slice(&[b'\\', escape]);
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::{
        Event, Link, SpanContext, SpanKind, TraceFlags, TraceId, TraceState,
    };
    use opentelemetry_proto::tonic::trace::v1::TracesData;
    use opentelemetry_proto::transform::common::tonic::ResourceAttributesWithSchema;
    use opentelemetry_proto::transform::trace::tonic::group_spans_by_resource_and_scope;
    use opentelemetry_sdk::trace::{SpanEvents, SpanLinks};
    use std::borrow::Cow;
    use std::time::Duration;

    fn context(trace: u128, span: u64, remote: bool, state: &str) -> SpanContext {
        SpanContext::new(
            TraceId::from(trace),
            SpanId::from(span),
            TraceFlags::SAMPLED,
            remote,
            state.parse::<TraceState>().expect("trace state"),
        )
    }

    fn sample_spans() -> Vec<SpanData> {
        let scope = InstrumentationScope::builder("skein").build();
        let other_scope = InstrumentationScope::builder("other")
            .with_version("1.2")
            .with_schema_url("https://example.test/schema")
            .with_attributes([KeyValue::new("scope.attr", "x")])
            .build();
        let start = UNIX_EPOCH + Duration::from_nanos(1_795_000_000_123_456_789);
        let mut events = SpanEvents::default();
        events.events.push(Event::new(
            "turn.steer",
            start + Duration::from_millis(3),
            vec![KeyValue::new("n", 3_i64)],
            1,
        ));
        events.dropped_count = 2;
        let mut links = SpanLinks::default();
        links.links.push(Link::new(
            context(7, 8, true, "k=v"),
            vec![KeyValue::new("link.kind", "previous_turn")],
            0,
        ));
        let base = SpanData {
            span_context: context(
                0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736,
                0x00f0_67aa_0ba9_02b7,
                false,
                "",
            ),
            parent_span_id: SpanId::INVALID,
            parent_span_is_remote: false,
            span_kind: SpanKind::Server,
            name: Cow::Borrowed("model/list"),
            start_time: start,
            end_time: start + Duration::from_micros(17),
            attributes: vec![
                KeyValue::new("rpc.system", "jsonrpc"),
                KeyValue::new(
                    "text",
                    "quote \" slash \\ nl \n tab \t ctl \u{1} \u{7f} é 😀",
                ),
                KeyValue::new("count", -42_i64),
                KeyValue::new("ok", true),
                KeyValue::new("ratio", 0.25_f64),
                KeyValue::new("whole", 3.0_f64),
                KeyValue::new("nan", f64::NAN),
                KeyValue::new(
                    "list",
                    Value::Array(Array::String(vec!["a".into(), "b\"".into()])),
                ),
                KeyValue::new("ints", Value::Array(Array::I64(vec![1, -2]))),
                KeyValue::new("bools", Value::Array(Array::Bool(vec![true]))),
                KeyValue::new("doubles", Value::Array(Array::F64(vec![1.5]))),
            ],
            dropped_attributes_count: 1,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status: Status::Unset,
            instrumentation_scope: scope.clone(),
        };
        let mut error = base.clone();
        error.span_context = context(1, 2, true, "a=1,b=2");
        error.parent_span_id = SpanId::from(0x1234);
        error.parent_span_is_remote = true;
        error.span_kind = SpanKind::Client;
        error.status = Status::error("boom \"quoted\"");
        error.events = events;
        error.links = links;
        let mut ok = base.clone();
        ok.status = Status::Ok;
        ok.span_kind = SpanKind::Internal;
        ok.parent_span_id = SpanId::from(99);
        ok.instrumentation_scope = other_scope;
        let mut producer = base.clone();
        producer.span_kind = SpanKind::Producer;
        let mut consumer = base.clone();
        consumer.span_kind = SpanKind::Consumer;
        consumer.end_time = UNIX_EPOCH;
        vec![base, error, ok, producer, consumer]
    }

    #[test]
    fn encodes_exactly_what_the_proto_serde_encoding_writes() {
        let resource = Resource::builder()
            .with_service_name("svc")
            .with_schema_url(
                [KeyValue::new("deployment.environment", "test")],
                "https://example.test/res",
            )
            .build();
        let spans = sample_spans();

        let expected = serde_json::to_string(&TracesData {
            resource_spans: group_spans_by_resource_and_scope(
                spans.clone(),
                &ResourceAttributesWithSchema::from(&resource),
            ),
        })
        .expect("proto encoding");

        let encoded_resource = EncodedResource::new(&resource);
        let mut groups = SpanGroups::default();
        let mut buf = Vec::new();
        for span in &spans {
            buf.clear();
            encode_span(&mut buf, span);
            let key = EncodedScopeKey::new(&span.instrumentation_scope);
            groups.push(&span.instrumentation_scope, &key, &buf);
        }
        assert_eq!(groups.len(), 5);
        let mut line = Vec::new();
        groups.write_line(&encoded_resource, &mut line);
        assert!(groups.is_empty());
        let line = String::from_utf8(line).expect("utf-8");
        assert_eq!(line, format!("{expected}\n"));
    }

    proptest::proptest! {
        #[test]
        fn any_string_escapes_like_serde_json(text in ".*", ascii in "[ -~\\x00-\\x1f]{0,40}") {
            for s in [&text, &ascii] {
                let mut out = Vec::new();
                string(&mut out, s);
                proptest::prop_assert_eq!(
                    String::from_utf8(out).expect("utf-8"),
                    serde_json::to_string(s).expect("json")
                );
            }
        }

        #[test]
        fn any_integer_encodes_like_serde_json(n in proptest::num::i64::ANY, u in proptest::num::u64::ANY) {
            let mut out = Vec::new();
            number(&mut out, n);
            out.push(b' ');
            number(&mut out, u);
            proptest::prop_assert_eq!(String::from_utf8(out).expect("utf-8"), format!("{n} {u}"));
        }
    }

    #[test]
    fn ids_encode_as_lowercase_hex() {
        let mut out = Vec::new();
        hex(&mut out, &[0x00, 0x0f, 0xa5, 0xff]);
        hex(&mut out, &[]);
        assert_eq!(out, b"000fa5ff");
    }

    #[test]
    fn strings_escape_like_serde_json() {
        let all: String = (0u8..=0x7f).map(char::from).chain("é😀".chars()).collect();
        let mut out = Vec::new();
        string(&mut out, &all);
        assert_eq!(
            String::from_utf8(out).expect("utf-8"),
            serde_json::to_string(&all).expect("json")
        );
    }
}
