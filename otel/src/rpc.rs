//! The request-span factory: the one place that assembles the attributes of
//! a JSON-RPC server span.
//!
//! A server describes an inbound call as plain data in a
//! [`RequestSpanBuilder`] and calls [`RequestSpanBuilder::start_span`] with
//! a tracer and its carrier candidates; it gets back the SERVER span (a
//! [`RequestSpan`]), parented from the first valid carrier, and a
//! [`CallTimer`]. It runs the call with [`RequestSpan::within`], so what
//! the call opens nests under the span. When the response is ready,
//! [`RequestSpan::record_error`] (for an error response),
//! [`RequestSpan::record_result_ids`] and, for a method looked up only by
//! calling it, [`RequestSpan::settle_method`] complete the span, which ends
//! when dropped. Skein's tower layer, the `skein-jsonrpsee` middleware and
//! the `skein-rmcp` MCP server wrapper all call in here; nothing else names
//! a request attribute. An MCP server describes the MCP side of a request
//! in [`McpRequest`], and its span then follows the MCP semantic
//! conventions instead of the RPC ones.
//!
//! Request spans are OTel spans built directly, not `tracing` spans: a
//! server makes one per request, and this way static attributes stay
//! static values and nothing is converted field by field. The builder
//! borrows what it is given; building a span copies only what the span
//! keeps.

use std::borrow::Cow;
use std::fmt;
use std::time::{Duration, Instant};

use std::sync::{Arc, OnceLock};

pub use opentelemetry::StringValue;
use opentelemetry::context::{FutureExt as _, WithContext};
use opentelemetry::trace::{
    Span as OtelSpan, SpanBuilder, SpanContext, SpanKind, Status, TraceContextExt, Tracer,
    TracerProvider as _,
};
use opentelemetry::{Context as OtelContext, KeyValue};
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider, Span as SdkSpan};
use serde_json::Value;

use crate::carrier::{CarrierSource, choose_parent, choose_parent_among};
use crate::names::{attr, event, value};
use crate::telemetry::SCOPE_NAME;

/// Longest `rpc.method_original` recorded for an unknown method.
pub const MAX_ORIGINAL_METHOD_LEN: usize = 256;

/// A JSON-RPC request id, borrowed from the request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestId<'a> {
    /// A numeric id.
    Number(i64),
    /// A numeric id beyond `i64`.
    Unsigned(u64),
    /// Any other numeric id (`1.5`, `1E+2`, `-0`), as its JSON text.
    OtherNumber(&'a str),
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
            RequestId::OtherNumber(s) | RequestId::Str(s) => f.write_str(s),
            RequestId::Null => f.write_str("null"),
        }
    }
}

impl RequestId<'_> {
    /// The id as text in one shared allocation (what a span records).
    fn to_shared(self) -> Arc<str> {
        match self {
            RequestId::Number(n) => Arc::from(itoa::Buffer::new().format(n)),
            RequestId::Unsigned(n) => Arc::from(itoa::Buffer::new().format(n)),
            RequestId::OtherNumber(s) | RequestId::Str(s) => Arc::from(s),
            RequestId::Null => Arc::from("null"),
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

/// What an MCP request or notification names, for its span name and
/// attributes (the MCP semantic conventions).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum McpTarget<'a> {
    /// `tools/call`: the tool (`gen_ai.tool.name`).
    Tool(&'a str),
    /// `prompts/get`: the prompt (`gen_ai.prompt.name`).
    Prompt(&'a str),
    /// `resources/read`, `resources/subscribe`...: the resource
    /// (`mcp.resource.uri`).
    Resource(&'a str),
}

impl McpTarget<'_> {
    fn name(&self) -> &str {
        match self {
            McpTarget::Tool(name) | McpTarget::Prompt(name) | McpTarget::Resource(name) => name,
        }
    }
}

/// The MCP side of a request, as plain borrowed data: with it, the span
/// follows the MCP semantic conventions instead of the RPC ones (named
/// `{mcp.method.name} {target}`, with `mcp.*`, `gen_ai.*` and `network.*`
/// attributes and no `rpc.*` ones).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct McpRequest<'a> {
    /// The tool, prompt or resource the request names.
    pub target: Option<McpTarget<'a>>,
    /// `mcp.protocol.version`, when known when the request arrives.
    pub protocol_version: Option<&'a str>,
    /// `mcp.session.id`, when the request belongs to a session.
    pub session_id: Option<&'a str>,
    /// `network.transport`: `pipe` (stdio) or `tcp`.
    pub network_transport: Option<&'static str>,
    /// `network.protocol.name`: `http` over streamable HTTP.
    pub network_protocol_name: Option<&'static str>,
}

/// One inbound call, described as plain borrowed data.
#[derive(Clone, Debug)]
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
    /// `app_server.client_name` (an OTel value, so a server can keep it
    /// shared for the connection's lifetime).
    pub client_name: Option<StringValue>,
    /// `app_server.client_version`.
    pub client_version: Option<StringValue>,
    /// `rpc.service`: the service answering, as an OTel value (static or
    /// shared), so that [`Self::start_span`] need not copy it per request.
    pub service_name: StringValue,
    /// `app_server.api_version`, for servers that version their API.
    pub api_version: Option<&'static str>,
    /// Whether the process environment's `TRACEPARENT` is the last carrier
    /// candidate (right for a process a parent launched, such as Skein; not
    /// for a library inside another service).
    pub environment_fallback: bool,
    /// The MCP side of the request, for an MCP server: the span then
    /// follows the MCP semantic conventions.
    pub mcp: Option<McpRequest<'a>>,
}

impl<'a> RequestSpanBuilder<'a> {
    /// A call of `method` to `service_name`, with nothing else known yet:
    /// the method lookup deferred, no id, transport, connection or client,
    /// and no environment fallback.
    pub fn new(method: &'a str, service_name: impl Into<StringValue>) -> Self {
        Self {
            method,
            lookup: MethodLookup::Deferred,
            request_id: None,
            transport: None,
            connection_id: None,
            client_name: None,
            client_version: None,
            service_name: service_name.into(),
            api_version: None,
            environment_fallback: false,
            mcp: None,
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

/// The tracer of Skein's own request spans: the one [`crate::telemetry`]
/// installed, or, before that (in tests, say), one without exporters whose
/// spans still get valid contexts that propagate.
pub fn request_tracer() -> &'static SdkTracer {
    REQUEST_TRACER.get_or_init(|| SdkTracerProvider::builder().build().tracer(SCOPE_NAME))
}

static REQUEST_TRACER: OnceLock<SdkTracer> = OnceLock::new();

/// Makes `tracer` the one [`request_tracer`] returns. Only the first call
/// (or a call before any request span) takes effect; later ones return
/// `false`.
pub(crate) fn install_request_tracer(tracer: SdkTracer) -> bool {
    REQUEST_TRACER.set(tracer).is_ok()
}

/// A JSON-RPC server span, owned by the call it describes.
///
/// Unlike every other Skein span it is an OTel span built directly, not a
/// `tracing` span: a server makes one per request, and building it here
/// keeps static attributes static (no string copied per request) and skips
/// the generic field-by-field conversion. It ends when dropped, so a server
/// drops it once the response is written. While the call runs, the server
/// makes [`RequestSpan::context`] the current OTel context, which is how
/// spans and carriers made inside the call find their parent.
pub struct RequestSpan<S: OtelSpan = SdkSpan> {
    span: S,
    /// Whether the span follows the MCP conventions (see [`McpRequest`]).
    mcp: bool,
    /// `thread.id` and `turn.id` found so far, written once when the span
    /// ends (the SDK appends a key set twice instead of replacing it).
    ids: Ids,
    /// The caller's W3C baggage, carried in [`RequestSpan::context`].
    baggage: Option<crate::baggage::W3cBaggage>,
}

/// The `thread.id` / `turn.id` a request span will record.
#[derive(Default)]
struct Ids {
    thread: Option<String>,
    turn: Option<String>,
}

impl<S: OtelSpan> fmt::Debug for RequestSpan<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestSpan")
            .field("context", self.span.span_context())
            .finish()
    }
}

impl<S: OtelSpan> RequestSpan<S> {
    /// The span's context (invalid only when the tracer is shut down).
    pub fn span_context(&self) -> &SpanContext {
        self.span.span_context()
    }

    /// An OTel context whose active span is this one, with the caller's
    /// baggage (if any), to attach while the call runs.
    pub fn context(&self) -> OtelContext {
        crate::baggage::with_baggage(
            OtelContext::new().with_remote_span_context(self.span.span_context().clone()),
            self.baggage.clone(),
        )
    }

    /// Marks the span as failed by a JSON-RPC error: ERROR status with the
    /// message, `error.type` (the code as a string) and
    /// `rpc.response.status_code`.
    pub fn record_error(&mut self, code: i64, message: &str) {
        if !self.span.is_recording() {
            return;
        }
        self.span.set_status(Status::error(message.to_owned()));
        self.span
            .set_attribute(KeyValue::new(attr::ERROR_TYPE, code.to_string()));
        self.span.set_attribute(KeyValue::new(
            attr::RPC_RESPONSE_STATUS_CODE,
            code.to_string(),
        ));
    }

    /// Settles the method of a span started with
    /// [`MethodLookup::Deferred`], once the call has shown whether the
    /// server handles `method`: a known method is recorded as
    /// `rpc.method`; for an unknown one the span is renamed `jsonrpc`,
    /// `rpc.method` is `_OTHER` and `rpc.method_original` keeps the name as
    /// sent.
    pub fn settle_method(&mut self, method: &str, known: bool) {
        if !self.span.is_recording() {
            return;
        }
        let method_key = method_key(self.mcp);
        if known {
            self.span
                .set_attribute(KeyValue::new(method_key, method.to_owned()));
            return;
        }
        self.span.update_name(value::UNKNOWN_METHOD_SPAN_NAME);
        self.span
            .set_attribute(KeyValue::new(method_key, value::METHOD_OTHER));
        self.span.set_attribute(KeyValue::new(
            attr::RPC_METHOD_ORIGINAL,
            truncate_for_display(method, MAX_ORIGINAL_METHOD_LEN).into_owned(),
        ));
    }

    /// Marks an MCP `tools/call` span as failed by the tool: its result was
    /// flagged `isError`. ERROR status and `error.type` `tool_error`.
    pub fn record_tool_error(&mut self) {
        if !self.span.is_recording() {
            return;
        }
        self.span
            .set_status(Status::error("the tool reported an error (isError)"));
        self.span
            .set_attribute(KeyValue::new(attr::ERROR_TYPE, value::ERROR_TOOL));
    }

    /// Records `mcp.protocol.version` once it is known, for a request that
    /// did not know it when it arrived (`initialize`, from its result).
    pub fn record_mcp_protocol_version(&mut self, version: &str) {
        if self.span.is_recording() {
            self.span.set_attribute(KeyValue::new(
                attr::MCP_PROTOCOL_VERSION,
                version.to_owned(),
            ));
        }
    }

    /// Records `thread.id` / `turn.id` found in a params or result object:
    /// `threadId`, `thread.id`, `turnId`, `expectedTurnId` (Codex's
    /// `turn/steer`) or `turn.id`.
    ///
    /// Each key is written once, when the span ends: an id recorded later
    /// replaces one recorded earlier, so a result's id (recorded after the
    /// params') wins. That is what `thread/fork` needs: its params name the
    /// source thread, its result the new one the span is about.
    pub fn record_ids(&mut self, object: Option<&Value>) {
        if !self.span.is_recording() {
            return;
        }
        let (thread_id, turn_id) = ids_of(object);
        self.record_id_pair(thread_id, turn_id);
    }

    /// [`Self::record_ids`] for a result given as JSON text, read without
    /// building a [`Value`] tree.
    pub fn record_result_ids(&mut self, json: &str) {
        if !self.span.is_recording() {
            return;
        }
        let ids = result_ids(json);
        self.record_id_pair(ids.0.as_deref(), ids.1.as_deref());
    }

    fn record_id_pair(&mut self, thread_id: Option<&str>, turn_id: Option<&str>) {
        if let Some(id) = thread_id {
            self.ids.thread = Some(id.to_owned());
        }
        if let Some(id) = turn_id {
            self.ids.turn = Some(id.to_owned());
        }
    }
}

impl<S: OtelSpan> RequestSpan<S> {
    /// Makes the call's future with `make`, then returns it wrapped so that
    /// it runs with this span as the current OTel context on every poll:
    /// spans and carriers made inside the call (while the future is made,
    /// or while it runs) find their parent.
    pub fn within<F>(&self, make: impl FnOnce() -> F) -> WithContext<F> {
        let cx = self.context();
        let future = {
            let _current = cx.clone().attach();
            make()
        };
        future.with_context(cx)
    }
}

impl<S: OtelSpan> Drop for RequestSpan<S> {
    fn drop(&mut self) {
        if let Some(id) = self.ids.thread.take() {
            self.span.set_attribute(KeyValue::new(attr::THREAD_ID, id));
        }
        if let Some(id) = self.ids.turn.take() {
            self.span.set_attribute(KeyValue::new(attr::TURN_ID, id));
        }
        self.span.end();
    }
}

impl RequestSpanBuilder<'_> {
    /// Builds the SERVER span for this call with `tracer`, and starts its
    /// [`CallTimer`].
    ///
    /// The span is a root of the process's span tree; its parent is the
    /// first valid carrier among `carriers` (then the environment's, when
    /// [`environment_fallback`](Self::environment_fallback) is set).
    /// Invalid carriers are logged as warnings, noted on the span as
    /// `skein.carrier.invalid` events, and otherwise ignored.
    pub fn start_span<'c, T: Tracer>(
        &self,
        tracer: &T,
        carriers: impl IntoIterator<Item = (CarrierSource, Option<&'c Value>)>,
    ) -> (RequestSpan<T::Span>, CallTimer) {
        let started = Instant::now();
        let choice = if self.environment_fallback {
            choose_parent(carriers)
        } else {
            choose_parent_among(carriers)
        };
        let parent = match choice.parent {
            Some(parent) => OtelContext::new().with_remote_span_context(parent),
            None => OtelContext::new(),
        };
        // With the baggage in the parent context, span processors see it
        // when the request span starts (`[otel] baggage_attributes`).
        let parent = crate::baggage::with_baggage(parent, choice.baggage.clone());
        let name: Cow<'static, str> = match (self.lookup, self.mcp.and_then(|m| m.target)) {
            (MethodLookup::Unknown, _) => Cow::Borrowed(value::UNKNOWN_METHOD_SPAN_NAME),
            (MethodLookup::Known(name), Some(target)) => {
                Cow::Owned(format!("{name} {}", target.name()))
            }
            (MethodLookup::Known(name), None) => Cow::Borrowed(name),
            (MethodLookup::Deferred, _) => Cow::Owned(self.method.to_owned()),
        };
        let builder = SpanBuilder::from_name(name)
            .with_kind(SpanKind::Server)
            .with_attributes(self.attributes());
        let mut span = tracer.build_with_context(builder, &parent);
        for (source, reason) in &choice.rejected {
            let id = self.request_id.map(tracing::field::display);
            tracing::warn!(
                method = %truncate_for_display(self.method, MAX_ORIGINAL_METHOD_LEN),
                id,
                %source,
                %reason,
                "ignoring invalid trace carrier"
            );
            span.add_event(
                event::INVALID_CARRIER,
                vec![
                    KeyValue::new(attr::CARRIER_SOURCE, source.to_string()),
                    KeyValue::new(attr::CARRIER_ERROR, reason.to_string()),
                ],
            );
        }
        let timer = CallTimer {
            rpc_method: self.bounded_method().unwrap_or(value::METHOD_OTHER),
            started,
        };
        let span = RequestSpan {
            span,
            mcp: self.mcp.is_some(),
            ids: Ids::default(),
            baggage: choice.baggage,
        };
        (span, timer)
    }

    /// The attributes a request span starts with. Static values stay
    /// static; the request id is formatted once and shared by its two keys.
    fn attributes(&self) -> Vec<KeyValue> {
        if let Some(mcp) = &self.mcp {
            return self.mcp_attributes(mcp);
        }
        let mut attrs = Vec::with_capacity(16);
        attrs.push(KeyValue::new(attr::RPC_SYSTEM, value::JSONRPC));
        attrs.push(KeyValue::new(attr::RPC_SYSTEM_NAME, value::JSONRPC));
        attrs.push(KeyValue::new(attr::RPC_SERVICE, self.service_name.clone()));
        self.push_method(&mut attrs);
        if let Some(transport) = self.transport {
            attrs.push(KeyValue::new(attr::RPC_TRANSPORT, transport));
        }
        if let Some(id) = self.request_id {
            let id: StringValue = id.to_shared().into();
            attrs.push(KeyValue::new(attr::RPC_REQUEST_ID, id.clone()));
            attrs.push(KeyValue::new(attr::JSONRPC_REQUEST_ID, id));
        }
        attrs.push(KeyValue::new(
            attr::JSONRPC_PROTOCOL_VERSION,
            value::JSONRPC_VERSION,
        ));
        if let Some(id) = self.connection_id {
            attrs.push(KeyValue::new(
                attr::APP_SERVER_CONNECTION_ID,
                i64::try_from(id).unwrap_or(i64::MAX),
            ));
        }
        if let Some(version) = self.api_version {
            attrs.push(KeyValue::new(attr::APP_SERVER_API_VERSION, version));
        }
        if let Some(name) = &self.client_name {
            attrs.push(KeyValue::new(attr::APP_SERVER_CLIENT_NAME, name.clone()));
        }
        if let Some(version) = &self.client_version {
            attrs.push(KeyValue::new(
                attr::APP_SERVER_CLIENT_VERSION,
                version.clone(),
            ));
        }
        attrs
    }
}

/// The attribute that names the method: `mcp.method.name` on an MCP span,
/// `rpc.method` on any other.
fn method_key(mcp: bool) -> &'static str {
    if mcp {
        attr::MCP_METHOD_NAME
    } else {
        attr::RPC_METHOD
    }
}

impl RequestSpanBuilder<'_> {
    /// The method's attributes as the lookup gives them: the known name
    /// under [`method_key`]; for an unknown method `_OTHER` there and the
    /// name as sent in `rpc.method_original`; nothing when deferred.
    fn push_method(&self, attrs: &mut Vec<KeyValue>) {
        let key = method_key(self.mcp.is_some());
        match self.lookup {
            MethodLookup::Known(name) => attrs.push(KeyValue::new(key, name)),
            MethodLookup::Unknown => {
                attrs.push(KeyValue::new(key, value::METHOD_OTHER));
                attrs.push(KeyValue::new(
                    attr::RPC_METHOD_ORIGINAL,
                    truncate_for_display(self.method, MAX_ORIGINAL_METHOD_LEN).into_owned(),
                ));
            }
            MethodLookup::Deferred => {}
        }
    }

    /// The attributes an MCP request span starts with (the MCP semantic
    /// conventions): `mcp.method.name` (unless the lookup is deferred, when
    /// [`RequestSpan::settle_method`] records it), the request id, the
    /// target's attribute, protocol, session and network.
    fn mcp_attributes(&self, mcp: &McpRequest<'_>) -> Vec<KeyValue> {
        let mut attrs = Vec::with_capacity(12);
        self.push_method(&mut attrs);
        if let Some(id) = self.request_id {
            let id: StringValue = id.to_shared().into();
            attrs.push(KeyValue::new(attr::JSONRPC_REQUEST_ID, id));
        }
        attrs.push(KeyValue::new(
            attr::JSONRPC_PROTOCOL_VERSION,
            value::JSONRPC_VERSION,
        ));
        match mcp.target {
            Some(McpTarget::Tool(name)) => {
                attrs.push(KeyValue::new(attr::GEN_AI_TOOL_NAME, name.to_owned()));
                attrs.push(KeyValue::new(
                    attr::GEN_AI_OPERATION_NAME,
                    value::GEN_AI_OPERATION_EXECUTE_TOOL,
                ));
            }
            Some(McpTarget::Prompt(name)) => {
                attrs.push(KeyValue::new(attr::GEN_AI_PROMPT_NAME, name.to_owned()));
            }
            Some(McpTarget::Resource(uri)) => {
                attrs.push(KeyValue::new(attr::MCP_RESOURCE_URI, uri.to_owned()));
            }
            None => {}
        }
        if let Some(version) = mcp.protocol_version {
            attrs.push(KeyValue::new(
                attr::MCP_PROTOCOL_VERSION,
                version.to_owned(),
            ));
        }
        if let Some(session) = mcp.session_id {
            attrs.push(KeyValue::new(attr::MCP_SESSION_ID, session.to_owned()));
        }
        if let Some(transport) = mcp.network_transport {
            attrs.push(KeyValue::new(attr::NETWORK_TRANSPORT, transport));
        }
        if let Some(protocol) = mcp.network_protocol_name {
            attrs.push(KeyValue::new(attr::NETWORK_PROTOCOL_NAME, protocol));
        }
        attrs
    }
}

/// `thread.id` / `turn.id` in a params or result object.
fn ids_of(object: Option<&Value>) -> (Option<&str>, Option<&str>) {
    let Some(object) = object else {
        return (None, None);
    };
    let thread_id =
        str_field(Some(object), "threadId").or_else(|| str_field(object.get("thread"), "id"));
    let turn_id = str_field(Some(object), "turnId")
        .or_else(|| str_field(Some(object), "expectedTurnId"))
        .or_else(|| str_field(object.get("turn"), "id"));
    (thread_id, turn_id)
}

/// [`ids_of`] for JSON text: the same fields, read without building a
/// [`Value`] tree (other members are skipped unparsed). Text that is not a
/// JSON object has no ids.
fn result_ids(json: &str) -> (Option<Cow<'_, str>>, Option<Cow<'_, str>>) {
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
    // Only objects can carry ids; skip anything else without parsing it,
    // and objects whose text names none of the keys. The text is a
    // server's serializer output, which writes keys without escapes; a
    // false match (a string value, an escaped quote) only costs the parse.
    if !json.trim_start().starts_with('{')
        || !(json.contains("\"thread")
            || json.contains("\"turn")
            || json.contains("\"expectedTurnId"))
    {
        return (None, None);
    }
    let Ok(ids) = serde_json::from_str::<Ids<'_>>(json) else {
        return (None, None);
    };
    let thread_id = ids.thread_id.or_else(|| ids.thread.and_then(|t| t.id));
    let turn_id = ids
        .turn_id
        .or(ids.expected_turn_id)
        .or_else(|| ids.turn.and_then(|t| t.id));
    (thread_id, turn_id)
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

    fn capture() -> (
        opentelemetry_sdk::trace::InMemorySpanExporter,
        SdkTracerProvider,
    ) {
        let exporter = opentelemetry_sdk::trace::InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        (exporter, provider)
    }

    fn attr_of(span: &opentelemetry_sdk::trace::SpanData, key: &str) -> Option<String> {
        span.attributes
            .iter()
            .find(|kv| kv.key.as_str() == key)
            .map(|kv| kv.value.as_str().into_owned())
    }

    const TP: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

    #[test]
    fn a_request_span_is_a_server_span_parented_from_the_first_valid_carrier() {
        let (exporter, provider) = capture();
        let tracer = provider.tracer("test");
        let builder = RequestSpanBuilder {
            lookup: MethodLookup::Known("thread/start"),
            request_id: Some(RequestId::Number(7)),
            transport: Some("stdio"),
            client_name: Some(StringValue::from("ide")),
            ..RequestSpanBuilder::new("thread/start", "svc")
        };
        let bad = serde_json::json!({"traceparent": "00-zz"});
        let good = serde_json::json!({"traceparent": TP});
        let (mut span, _) = builder.start_span(
            &tracer,
            [
                (CarrierSource::Envelope, Some(&bad)),
                (CarrierSource::ParamsMeta, Some(&good)),
            ],
        );
        span.record_result_ids(r#"{"thread":{"id":"t-1"},"other":[1,2]}"#);
        span.record_error(-32602, "bad params");
        drop(span);

        let spans = exporter.get_finished_spans().expect("spans");
        assert_eq!(spans.len(), 1);
        let s = &spans[0];
        assert_eq!(s.name, "thread/start");
        assert_eq!(s.span_kind, SpanKind::Server);
        assert_eq!(
            s.span_context.trace_id().to_string(),
            "0af7651916cd43dd8448eb211c80319c"
        );
        assert_eq!(s.parent_span_id.to_string(), "b7ad6b7169203331");
        assert!(s.parent_span_is_remote);
        for (key, want) in [
            (attr::RPC_SYSTEM_NAME, "jsonrpc"),
            (attr::RPC_SERVICE, "svc"),
            (attr::RPC_METHOD, "thread/start"),
            (attr::RPC_TRANSPORT, "stdio"),
            (attr::RPC_REQUEST_ID, "7"),
            (attr::JSONRPC_REQUEST_ID, "7"),
            (attr::APP_SERVER_CLIENT_NAME, "ide"),
            (attr::THREAD_ID, "t-1"),
            (attr::ERROR_TYPE, "-32602"),
        ] {
            assert_eq!(attr_of(s, key).as_deref(), Some(want), "{key}");
        }
        assert_eq!(s.status, Status::error("bad params"));
        // The envelope's invalid carrier was noted, with where it came from.
        assert_eq!(s.events.events.len(), 1);
        let event = &s.events.events[0];
        assert_eq!(event.name, event::INVALID_CARRIER);
        assert!(
            event
                .attributes
                .iter()
                .any(|kv| kv.key.as_str() == attr::CARRIER_SOURCE
                    && kv.value.as_str().contains("envelope"))
        );
    }

    #[test]
    fn baggage_is_carried_in_the_calls_context_and_a_bad_one_ignored_whole_with_an_event() {
        let exporter = opentelemetry_sdk::trace::InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(crate::baggage::BaggageAttributes::new(
                ["user.id".to_owned()],
                std::sync::Arc::new(|v: &str| Some(v.replace("secret", "[REDACTED]"))),
            ))
            .with_simple_exporter(exporter.clone())
            .build();
        let tracer = provider.tracer("test");
        let builder = RequestSpanBuilder::new("turn/start", "svc");
        let good = serde_json::json!({"traceparent": TP, "baggage": "user.id=u-secret,exp=b"});
        let (span, _) = builder.start_span(&tracer, [(CarrierSource::Envelope, Some(&good))]);
        let cx = span.context();
        assert_eq!(
            crate::baggage::baggage_of(&cx).map(|b| b.header.as_str()),
            Some("user.id=u-secret,exp=b")
        );
        drop(span);
        // Bad baggage: the whole value is ignored, the traceparent kept.
        let bad = serde_json::json!({"traceparent": TP, "baggage": "user.id=u 42"});
        let (span, _) = builder.start_span(&tracer, [(CarrierSource::ParamsMeta, Some(&bad))]);
        assert_eq!(crate::baggage::baggage_of(&span.context()), None);
        drop(span);

        let spans = exporter.get_finished_spans().expect("spans");
        let [good, bad] = spans.as_slice() else {
            panic!("two spans: {spans:?}");
        };
        assert_eq!(attr_of(good, "user.id").as_deref(), Some("u-[REDACTED]"));
        assert_eq!(attr_of(good, "exp"), None, "only listed keys");
        assert!(good.events.events.is_empty());
        assert_eq!(bad.parent_span_id.to_string(), "b7ad6b7169203331");
        assert_eq!(attr_of(bad, "user.id"), None);
        let [event] = bad.events.events.as_slice() else {
            panic!("one event: {:?}", bad.events);
        };
        assert_eq!(event.name, event::INVALID_CARRIER);
        assert!(
            event
                .attributes
                .iter()
                .any(|kv| kv.key.as_str() == attr::CARRIER_ERROR
                    && kv.value.as_str().contains("invalid baggage"))
        );
    }

    #[test]
    fn an_mcp_request_span_follows_the_mcp_conventions() {
        let (exporter, provider) = capture();
        let tracer = provider.tracer("test");
        let good = serde_json::json!({"traceparent": TP});
        let builder = RequestSpanBuilder {
            lookup: MethodLookup::Known("tools/call"),
            request_id: Some(RequestId::Number(3)),
            mcp: Some(McpRequest {
                target: Some(McpTarget::Tool("get_weather")),
                protocol_version: Some("2025-06-18"),
                session_id: Some("s-1"),
                network_transport: Some(value::NETWORK_TRANSPORT_TCP),
                network_protocol_name: Some(value::NETWORK_PROTOCOL_HTTP),
            }),
            ..RequestSpanBuilder::new("tools/call", "svc")
        };
        let (mut span, _) = builder.start_span(&tracer, [(CarrierSource::ParamsMeta, Some(&good))]);
        span.record_tool_error();
        drop(span);
        let (mut unknown, _) = RequestSpanBuilder {
            mcp: Some(McpRequest::default()),
            ..RequestSpanBuilder::new("no/such", "svc")
        }
        .start_span(&tracer, []);
        unknown.settle_method("no/such", false);
        drop(unknown);

        let spans = exporter.get_finished_spans().expect("spans");
        let s = &spans[0];
        assert_eq!(s.name, "tools/call get_weather");
        assert_eq!(s.span_kind, SpanKind::Server);
        assert_eq!(s.parent_span_id.to_string(), "b7ad6b7169203331");
        for (key, want) in [
            (attr::MCP_METHOD_NAME, "tools/call"),
            (attr::JSONRPC_REQUEST_ID, "3"),
            (attr::GEN_AI_TOOL_NAME, "get_weather"),
            (attr::GEN_AI_OPERATION_NAME, "execute_tool"),
            (attr::MCP_PROTOCOL_VERSION, "2025-06-18"),
            (attr::MCP_SESSION_ID, "s-1"),
            (attr::NETWORK_TRANSPORT, "tcp"),
            (attr::NETWORK_PROTOCOL_NAME, "http"),
            (attr::ERROR_TYPE, "tool_error"),
        ] {
            assert_eq!(attr_of(s, key).as_deref(), Some(want), "{key}");
        }
        // MCP spans follow the MCP conventions, not the RPC ones.
        for key in [attr::RPC_METHOD, attr::RPC_SERVICE, attr::RPC_REQUEST_ID] {
            assert_eq!(attr_of(s, key), None, "{key}");
        }
        let u = &spans[1];
        assert_eq!(u.name, value::UNKNOWN_METHOD_SPAN_NAME);
        assert_eq!(
            attr_of(u, attr::MCP_METHOD_NAME).as_deref(),
            Some(value::METHOD_OTHER)
        );
        assert_eq!(attr_of(u, attr::RPC_METHOD), None);
    }

    #[test]
    fn a_deferred_unknown_method_is_renamed_and_recorded_as_other() {
        let (exporter, provider) = capture();
        let (mut span, timer) =
            RequestSpanBuilder::new("no/such", "svc").start_span(&provider.tracer("test"), []);
        assert_eq!(timer.rpc_method(), value::METHOD_OTHER);
        span.settle_method("no/such", false);
        drop(span);
        let spans = exporter.get_finished_spans().expect("spans");
        assert_eq!(spans[0].name, value::UNKNOWN_METHOD_SPAN_NAME);
        assert_eq!(
            attr_of(&spans[0], attr::RPC_METHOD).as_deref(),
            Some(value::METHOD_OTHER)
        );
        assert_eq!(
            attr_of(&spans[0], attr::RPC_METHOD_ORIGINAL).as_deref(),
            Some("no/such")
        );
        // No carrier: a root.
        assert_eq!(
            spans[0].parent_span_id,
            opentelemetry::trace::SpanId::INVALID
        );
    }

    #[tokio::test]
    async fn the_current_span_context_inside_a_call_is_its_request_spans() {
        let (_exporter, provider) = capture();
        let (span, _) =
            RequestSpanBuilder::new("turn/start", "svc").start_span(&provider.tracer("test"), []);
        let expected = Some(span.span_context().clone());
        let inside = span
            .within(|| async { crate::current_span_context() })
            .await;
        assert_eq!(inside, expected);
        assert_eq!(crate::current_span_context(), None);
    }

    #[test]
    fn request_ids_display_as_sent() {
        assert_eq!(RequestId::Number(-3).to_string(), "-3");
        assert_eq!(
            RequestId::Unsigned(u64::MAX).to_string(),
            "18446744073709551615"
        );
        assert_eq!(RequestId::OtherNumber("1E+2").to_string(), "1E+2");
        assert_eq!(RequestId::Str("abc").to_string(), "abc");
        assert_eq!(RequestId::Null.to_string(), "null");
    }

    #[test]
    fn recorded_request_ids_match_their_display() {
        for id in [
            RequestId::Number(-3),
            RequestId::Number(i64::MIN),
            RequestId::Unsigned(u64::MAX),
            RequestId::OtherNumber("1.5"),
            RequestId::OtherNumber("-0"),
            RequestId::Str("a \"b\""),
            RequestId::Null,
        ] {
            assert_eq!(&*id.to_shared(), id.to_string(), "{id:?}");
        }
    }
}

#[cfg(test)]
mod id_recording_tests {
    use super::*;
    use opentelemetry_sdk::trace::{InMemorySpanExporter, SpanData};
    use serde_json::json;

    /// The request span of `method`, exported once `record` has filled it.
    fn exported_span(method: &str, record: impl FnOnce(&mut RequestSpan)) -> SpanData {
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        let (mut span, _) =
            RequestSpanBuilder::new(method, "svc").start_span(&provider.tracer("test"), []);
        record(&mut span);
        drop(span);
        let mut spans = exporter.get_finished_spans().expect("finished spans");
        assert_eq!(spans.len(), 1, "{spans:?}");
        spans.remove(0)
    }

    /// Every value `span` carries for `key`, in order.
    fn values(span: &SpanData, key: &str) -> Vec<String> {
        span.attributes
            .iter()
            .filter(|kv| kv.key.as_str() == key)
            .map(|kv| kv.value.as_str().into_owned())
            .collect()
    }

    /// The `thread.id` and `turn.id` the exported request span carries once
    /// `record` has filled it.
    fn exported_ids(record: impl FnOnce(&mut RequestSpan)) -> (Option<String>, Option<String>) {
        let span = exported_span("turn/steer", record);
        let first = |key: &str| values(&span, key).into_iter().next();
        (first(attr::THREAD_ID), first(attr::TURN_ID))
    }

    fn owned(thread: Option<&str>, turn: Option<&str>) -> (Option<String>, Option<String>) {
        (thread.map(str::to_owned), turn.map(str::to_owned))
    }

    #[test]
    fn each_id_key_is_written_once_and_the_result_id_wins() {
        let span = exported_span("thread/fork", |span| {
            span.record_ids(Some(&json!({"threadId": "source", "turnId": "tu-1"})));
            span.record_result_ids(r#"{"thread": {"id": "forked"}}"#);
        });
        assert_eq!(values(&span, attr::THREAD_ID), ["forked"]);
        assert_eq!(values(&span, attr::TURN_ID), ["tu-1"]);
    }

    #[test]
    fn record_ids_takes_the_turn_from_expected_turn_id_alone() {
        let steer = json!({"threadId": "th-1", "expectedTurnId": "tu-1", "input": []});
        assert_eq!(
            exported_ids(|span| span.record_ids(Some(&steer))),
            owned(Some("th-1"), Some("tu-1"))
        );
        let turn_only = json!({"expectedTurnId": "tu-2"});
        assert_eq!(
            exported_ids(|span| span.record_ids(Some(&turn_only))),
            owned(None, Some("tu-2"))
        );
        assert_eq!(
            exported_ids(|span| span.record_ids(None)),
            owned(None, None)
        );
    }

    #[test]
    fn record_result_ids_reads_expected_turn_id_and_result_shapes() {
        assert_eq!(
            exported_ids(
                |span| span.record_result_ids(r#"{"threadId": "th-1", "expectedTurnId": "tu-1"}"#)
            ),
            owned(Some("th-1"), Some("tu-1"))
        );
        assert_eq!(
            exported_ids(|span| span.record_result_ids(r#"{"expectedTurnId": "tu-2"}"#)),
            owned(None, Some("tu-2"))
        );
        assert_eq!(
            exported_ids(|span| span.record_result_ids(
                r#"{"thread": {"id": "th-3", "turns": []}, "turn": {"id": "tu-3", "items": []}}"#
            )),
            owned(Some("th-3"), Some("tu-3"))
        );
        assert_eq!(
            exported_ids(|span| span.record_result_ids(r#"["expectedTurnId", "tu-4"]"#)),
            owned(None, None)
        );
    }
}
