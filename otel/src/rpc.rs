//! The request-span factory: the one place that assembles the attributes of
//! a JSON-RPC server span.
//!
//! A server describes an inbound call as plain data in a
//! [`RequestSpanBuilder`] and calls [`RequestSpanBuilder::start`] with its
//! carrier candidates; it gets back the SERVER span, parented from the first
//! valid carrier, and a [`CallTimer`]. When the response is ready,
//! [`record_error`] (for an error response), [`record_ids`] and, for a
//! method looked up only by calling it, [`settle_method`] complete the
//! span. Skein's tower layer and the `skein-jsonrpsee` middleware both call
//! in here; nothing else names a request attribute.
//!
//! The builder borrows everything it is given: building a span copies no
//! request data beyond what the span itself keeps.

use std::borrow::Cow;
use std::fmt;
use std::time::{Duration, Instant};

use opentelemetry::trace::TraceContextExt;
use serde_json::Value;
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::carrier::{CarrierSource, choose_parent, choose_parent_among, set_remote_parent};
use crate::names::{attr, span, value};

/// The `tracing` target of request spans. It starts with `skein`, so
/// Skein's OTel layer exports these spans.
pub const REQUEST_TARGET: &str = "skein::rpc";

/// Longest `rpc.method_original` recorded for an unknown method.
pub const MAX_ORIGINAL_METHOD_LEN: usize = 256;

/// A JSON-RPC request id, borrowed from the request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestId<'a> {
    /// A numeric id.
    Number(i64),
    /// A numeric id beyond `i64`.
    Unsigned(u64),
    /// Any other numeric id (`1.5`, `1e3`).
    OtherNumber(&'a serde_json::Number),
    /// A string id.
    Str(&'a str),
    /// A `null` id.
    Null,
}

impl fmt::Display for RequestId<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RequestId::Number(n) => write!(f, "{n}"),
            RequestId::Unsigned(n) => write!(f, "{n}"),
            RequestId::OtherNumber(n) => write!(f, "{n}"),
            RequestId::Str(s) => f.write_str(s),
            RequestId::Null => f.write_str("null"),
        }
    }
}

/// What the server knows of the method named in a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MethodLookup {
    /// The server handles this method; the name, as a static string.
    Known(&'static str),
    /// The server does not handle this method: the span is named
    /// `jsonrpc`, `rpc.method` is `_OTHER` and the name as sent goes in
    /// `rpc.method_original`.
    Unknown,
    /// Not known before the call runs: the span is named after the method
    /// as sent, without `rpc.method`, until [`settle_method`] records the
    /// outcome.
    Deferred,
}

/// One inbound call, described as plain borrowed data.
#[derive(Clone, Copy, Debug)]
pub struct RequestSpanBuilder<'a> {
    /// The method as sent.
    pub method: &'a str,
    /// Whether the server handles `method` (looked up once by the caller).
    pub lookup: MethodLookup,
    /// The request id; `None` for a notification.
    pub request_id: Option<RequestId<'a>>,
    /// `rpc.transport`: `stdio`, `websocket`, `http`... when known.
    pub transport: Option<&'static str>,
    /// `app_server.connection_id`, when the server numbers connections.
    pub connection_id: Option<u64>,
    /// `app_server.client_name`.
    pub client_name: Option<&'a str>,
    /// `app_server.client_version`.
    pub client_version: Option<&'a str>,
    /// `rpc.service`: the service answering.
    pub service_name: &'a str,
    /// `app_server.api_version`, for servers that version their API.
    pub api_version: Option<&'static str>,
    /// Whether the process environment's `TRACEPARENT` is the last carrier
    /// candidate (right for a process a parent launched, such as Skein; not
    /// for a library inside another service).
    pub environment_fallback: bool,
}

impl<'a> RequestSpanBuilder<'a> {
    /// A call of `method` to `service_name`, with nothing else known yet:
    /// the method lookup deferred, no id, transport, connection or client,
    /// and no environment fallback.
    pub fn new(method: &'a str, service_name: &'a str) -> Self {
        Self {
            method,
            lookup: MethodLookup::Deferred,
            request_id: None,
            transport: None,
            connection_id: None,
            client_name: None,
            client_version: None,
            service_name,
            api_version: None,
            environment_fallback: false,
        }
    }

    /// The bounded `rpc.method` value when the lookup is settled: the
    /// method's name, or `_OTHER`; `None` when deferred.
    pub fn bounded_method(&self) -> Option<&'static str> {
        match self.lookup {
            MethodLookup::Known(name) => Some(name),
            MethodLookup::Unknown => Some(value::METHOD_OTHER),
            MethodLookup::Deferred => None,
        }
    }

    /// Builds the SERVER span for this call and starts its [`CallTimer`].
    ///
    /// The span is a root of the local span tree; its OTel parent is the
    /// first valid carrier among `carriers` (then the environment's, when
    /// [`environment_fallback`](Self::environment_fallback) is set).
    /// Invalid carriers are logged as warnings inside the span and
    /// otherwise ignored.
    pub fn start<'c>(
        &self,
        carriers: impl IntoIterator<Item = (CarrierSource, Option<&'c Value>)>,
    ) -> (tracing::Span, CallTimer) {
        let started = Instant::now();
        let (otel_name, rpc_method, original) = match self.lookup {
            MethodLookup::Known(name) => (name, Some(name), None),
            MethodLookup::Unknown => (
                value::UNKNOWN_METHOD_SPAN_NAME,
                Some(value::METHOD_OTHER),
                Some(truncate_for_display(self.method, MAX_ORIGINAL_METHOD_LEN)),
            ),
            MethodLookup::Deferred => (self.method, None, None),
        };
        let request_id = self.request_id.map(tracing::field::display);
        let connection_id = self
            .connection_id
            .map(|id| i64::try_from(id).unwrap_or(i64::MAX));
        let span = tracing::info_span!(
            target: REQUEST_TARGET,
            parent: None,
            span::APP_SERVER_REQUEST,
            { attr::OTEL_NAME } = otel_name,
            { attr::OTEL_KIND } = value::KIND_SERVER,
            { attr::OTEL_STATUS_CODE } = Empty,
            { attr::OTEL_STATUS_DESCRIPTION } = Empty,
            { attr::RPC_SYSTEM } = value::JSONRPC,
            { attr::RPC_SYSTEM_NAME } = value::JSONRPC,
            { attr::RPC_SERVICE } = self.service_name,
            { attr::RPC_METHOD } = rpc_method,
            { attr::RPC_METHOD_ORIGINAL } = original.as_deref(),
            { attr::RPC_TRANSPORT } = self.transport,
            { attr::RPC_REQUEST_ID } = request_id,
            { attr::JSONRPC_REQUEST_ID } = request_id,
            { attr::JSONRPC_PROTOCOL_VERSION } = value::JSONRPC_VERSION,
            { attr::APP_SERVER_CONNECTION_ID } = connection_id,
            { attr::APP_SERVER_API_VERSION } = self.api_version,
            { attr::APP_SERVER_CLIENT_NAME } = self.client_name,
            { attr::APP_SERVER_CLIENT_VERSION } = self.client_version,
            { attr::THREAD_ID } = Empty,
            { attr::TURN_ID } = Empty,
            { attr::ERROR_TYPE } = Empty,
            { attr::RPC_RESPONSE_STATUS_CODE } = Empty,
        );

        let choice = if self.environment_fallback {
            choose_parent(carriers)
        } else {
            choose_parent_among(carriers)
        };
        if let Some(parent) = choice.parent {
            set_remote_parent(&span, parent);
        }
        for (source, reason) in &choice.rejected {
            tracing::warn!(
                parent: &span,
                method = %truncate_for_display(self.method, MAX_ORIGINAL_METHOD_LEN),
                id = request_id,
                %source,
                %reason,
                "ignoring invalid trace carrier"
            );
        }
        let timer = CallTimer {
            rpc_method: self.bounded_method().unwrap_or(value::METHOD_OTHER),
            started,
        };
        (span, timer)
    }
}

/// Times one call for the `rpc.server.call.duration` metric.
#[derive(Clone, Copy, Debug)]
pub struct CallTimer {
    rpc_method: &'static str,
    started: Instant,
}

impl CallTimer {
    /// The bounded `rpc.method` the call is recorded under (`_OTHER` when
    /// the lookup was deferred; such callers keep their own).
    pub fn rpc_method(&self) -> &'static str {
        self.rpc_method
    }

    /// Time since the call arrived.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }
}

/// Marks a request span as failed by a JSON-RPC error: ERROR status with
/// the message, `error.type` (the code as a string) and
/// `rpc.response.status_code`.
pub fn record_error(span: &tracing::Span, code: i64, message: &str) {
    span.record(attr::OTEL_STATUS_CODE, value::STATUS_ERROR);
    span.record(attr::OTEL_STATUS_DESCRIPTION, message);
    span.record(attr::ERROR_TYPE, tracing::field::display(code));
    span.record(attr::RPC_RESPONSE_STATUS_CODE, code);
}

/// Settles the method of a span started with [`MethodLookup::Deferred`],
/// once the call has shown whether the server handles `method`: a known
/// method is recorded as `rpc.method`; for an unknown one the span is
/// renamed `jsonrpc`, `rpc.method` is `_OTHER` and `rpc.method_original`
/// keeps the name as sent.
pub fn settle_method(span: &tracing::Span, method: &str, known: bool) {
    if known {
        span.record(attr::RPC_METHOD, method);
        return;
    }
    // `otel.name` is only read until the OTel span starts (when the span is
    // first entered); rename the started span itself.
    span.context()
        .span()
        .update_name(value::UNKNOWN_METHOD_SPAN_NAME);
    span.record(attr::RPC_METHOD, value::METHOD_OTHER);
    span.record(
        attr::RPC_METHOD_ORIGINAL,
        truncate_for_display(method, MAX_ORIGINAL_METHOD_LEN).as_ref(),
    );
}

/// Records `thread.id` / `turn.id` found in a params or result object:
/// `threadId`, `thread.id`, `turnId`, `expectedTurnId` (Codex's
/// `turn/steer`) or `turn.id`.
pub fn record_ids(span: &tracing::Span, object: Option<&Value>) {
    let Some(object) = object else { return };
    let thread_id =
        str_field(Some(object), "threadId").or_else(|| str_field(object.get("thread"), "id"));
    if let Some(id) = thread_id {
        span.record(attr::THREAD_ID, id);
    }
    let turn_id = str_field(Some(object), "turnId")
        .or_else(|| str_field(Some(object), "expectedTurnId"))
        .or_else(|| str_field(object.get("turn"), "id"));
    if let Some(id) = turn_id {
        span.record(attr::TURN_ID, id);
    }
}

/// [`record_ids`] for a result given as JSON text: the same fields, read
/// without building a [`Value`] tree (other members are skipped unparsed).
/// Text that is not a JSON object records nothing.
pub fn record_result_ids(span: &tracing::Span, json: &str) {
    #[derive(serde::Deserialize)]
    struct Id<'a> {
        #[serde(borrow)]
        id: Option<Cow<'a, str>>,
    }
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Ids<'a> {
        #[serde(borrow)]
        thread_id: Option<Cow<'a, str>>,
        #[serde(borrow)]
        thread: Option<Id<'a>>,
        #[serde(borrow)]
        turn_id: Option<Cow<'a, str>>,
        #[serde(borrow)]
        expected_turn_id: Option<Cow<'a, str>>,
        #[serde(borrow)]
        turn: Option<Id<'a>>,
    }
    // Only objects can carry ids; skip anything else without parsing it.
    if !json.trim_start().starts_with('{') {
        return;
    }
    let Ok(ids) = serde_json::from_str::<Ids<'_>>(json) else {
        return;
    };
    if let Some(id) = ids.thread_id.or_else(|| ids.thread.and_then(|t| t.id)) {
        span.record(attr::THREAD_ID, id.as_ref());
    }
    let turn_id = ids
        .turn_id
        .or(ids.expected_turn_id)
        .or_else(|| ids.turn.and_then(|t| t.id));
    if let Some(id) = turn_id {
        span.record(attr::TURN_ID, id.as_ref());
    }
}

/// The string field `key` of a JSON object, if it is one.
pub fn str_field<'a>(object: Option<&'a Value>, key: &str) -> Option<&'a str> {
    object?.get(key)?.as_str()
}

/// `text` cut to at most `max` bytes on a character boundary, with `…`
/// appended when cut. Borrows when nothing is cut.
fn truncate_for_display(text: &str, max: usize) -> Cow<'_, str> {
    if text.len() <= max {
        return Cow::Borrowed(text);
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(format!("{}…", &text[..end]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_method_names_are_cut_on_a_character_boundary() {
        let long = "é".repeat(200);
        let cut = truncate_for_display(&long, MAX_ORIGINAL_METHOD_LEN);
        assert!(cut.len() <= MAX_ORIGINAL_METHOD_LEN + '…'.len_utf8());
        assert!(cut.ends_with('…'));
        assert!(matches!(
            truncate_for_display("short", MAX_ORIGINAL_METHOD_LEN),
            Cow::Borrowed("short")
        ));
    }

    #[test]
    fn bounded_method_follows_the_lookup() {
        let mut b = RequestSpanBuilder::new("thread/start", "svc");
        assert_eq!(b.bounded_method(), None);
        b.lookup = MethodLookup::Known("thread/start");
        assert_eq!(b.bounded_method(), Some("thread/start"));
        b.lookup = MethodLookup::Unknown;
        assert_eq!(b.bounded_method(), Some(value::METHOD_OTHER));
    }

    #[test]
    fn request_ids_display_as_sent() {
        assert_eq!(RequestId::Number(-3).to_string(), "-3");
        assert_eq!(
            RequestId::Unsigned(u64::MAX).to_string(),
            "18446744073709551615"
        );
        assert_eq!(RequestId::Str("abc").to_string(), "abc");
        assert_eq!(RequestId::Null.to_string(), "null");
    }
}

#[cfg(test)]
mod id_recording_tests {
    use super::*;
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
    use serde_json::json;
    use tracing_subscriber::layer::SubscriberExt;

    /// The `thread.id` and `turn.id` the OTel span carries once `record`
    /// has filled a request span declaring both fields empty.
    fn exported_ids(record: impl FnOnce(&tracing::Span)) -> (Option<String>, Option<String>) {
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        // Without the layer's own `thread.id` (the OS thread's number), as
        // Skein's telemetry sets it up.
        let layer = tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("test"))
            .with_threads(false);
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!(
                target: REQUEST_TARGET,
                "request",
                { attr::THREAD_ID } = Empty,
                { attr::TURN_ID } = Empty,
            );
            record(&span);
        });
        let spans = exporter.get_finished_spans().expect("finished spans");
        assert_eq!(spans.len(), 1, "{spans:?}");
        let get = |key: &str| {
            spans[0]
                .attributes
                .iter()
                .find(|kv| kv.key.as_str() == key)
                .map(|kv| kv.value.as_str().into_owned())
        };
        (get(attr::THREAD_ID), get(attr::TURN_ID))
    }

    fn owned(thread: Option<&str>, turn: Option<&str>) -> (Option<String>, Option<String>) {
        (thread.map(str::to_owned), turn.map(str::to_owned))
    }

    #[test]
    fn record_ids_takes_the_turn_from_expected_turn_id_alone() {
        let steer = json!({"threadId": "th-1", "expectedTurnId": "tu-1", "input": []});
        assert_eq!(
            exported_ids(|span| record_ids(span, Some(&steer))),
            owned(Some("th-1"), Some("tu-1"))
        );
        let turn_only = json!({"expectedTurnId": "tu-2"});
        assert_eq!(
            exported_ids(|span| record_ids(span, Some(&turn_only))),
            owned(None, Some("tu-2"))
        );
        assert_eq!(
            exported_ids(|span| record_ids(span, None)),
            owned(None, None)
        );
    }

    #[test]
    fn record_result_ids_reads_expected_turn_id_and_result_shapes() {
        assert_eq!(
            exported_ids(|span| record_result_ids(
                span,
                r#"{"threadId": "th-1", "expectedTurnId": "tu-1"}"#
            )),
            owned(Some("th-1"), Some("tu-1"))
        );
        assert_eq!(
            exported_ids(|span| record_result_ids(span, r#"{"expectedTurnId": "tu-2"}"#)),
            owned(None, Some("tu-2"))
        );
        assert_eq!(
            exported_ids(|span| record_result_ids(
                span,
                r#"{"thread": {"id": "th-3", "turns": []}, "turn": {"id": "tu-3", "items": []}}"#
            )),
            owned(Some("th-3"), Some("tu-3"))
        );
        assert_eq!(
            exported_ids(|span| record_result_ids(span, r#"["expectedTurnId", "tu-4"]"#)),
            owned(None, None)
        );
    }
}
