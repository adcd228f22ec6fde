//! JSON-RPC 2.0 envelopes.
//!
//! Inbound messages are classified by hand from their members as
//! [`serde_json::Value`]s rather than by a derived `Deserialize`: a derived
//! parser would reject a whole request because of a malformed optional
//! field (a `trace` carrier of the wrong type, say), while Skein must answer
//! every request it can and treat a bad carrier as absent. The `id` alone is
//! kept as the JSON text it was sent as, so that an answer carries it back
//! character for character. `"jsonrpc": "2.0"` is optional inbound and
//! always written outbound.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use skein_protocol::W3cTraceContext;

use crate::v2::ServerNotification;

/// The only protocol version Skein speaks.
pub const JSONRPC_VERSION: &str = "2.0";

/// Invalid JSON was received.
pub const PARSE_ERROR: i64 = -32700;
/// The JSON sent is not a valid request object.
pub const INVALID_REQUEST: i64 = -32600;
/// The method does not exist.
pub const METHOD_NOT_FOUND: i64 = -32601;
/// Invalid method parameters.
pub const INVALID_PARAMS: i64 = -32602;
/// Internal server error.
pub const INTERNAL_ERROR: i64 = -32603;
/// The server is too busy to take the request; retry later.
pub const SERVER_OVERLOADED: i64 = -32001;
/// A request other than `initialize` arrived before `initialize`: the
/// invalid-request code, as the Codex app-server answers (its clients check
/// the code), with a message starting `Not initialized`.
pub const NOT_INITIALIZED: i64 = INVALID_REQUEST;

/// A request id: a number or a string.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum RequestId {
    /// An integer id that fits `i64`, written the way `i64` is (the
    /// common case).
    Integer(i64),
    /// A string id.
    String(String),
    /// Any other number (`1.5`, `1E+2`, `-0`, an integer beyond `i64`):
    /// JSON-RPC allows any number, and the answer carries back the text
    /// that was sent, character for character. Rare, so it costs nothing
    /// on the path of integer ids.
    #[serde(skip_deserializing)]
    Number(RawNumber),
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RequestId::Integer(n) => write!(f, "{n}"),
            RequestId::String(s) => f.write_str(s),
            RequestId::Number(n) => f.write_str(n.as_str()),
        }
    }
}

/// The JSON text of a number, exactly as it was received. Serialized by
/// `serde_json` as that same text.
#[derive(Clone, Debug)]
pub struct RawNumber(Box<RawValue>);

impl RawNumber {
    /// `text` as a number, when it is one JSON number and nothing else
    /// (surrounding whitespace is dropped).
    pub fn new(text: &str) -> Option<RawNumber> {
        let raw = RawValue::from_string(text.to_owned()).ok()?;
        is_number_text(raw.get()).then_some(RawNumber(raw))
    }

    /// The number's JSON text.
    pub fn as_str(&self) -> &str {
        self.0.get()
    }
}

impl PartialEq for RawNumber {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for RawNumber {}

impl std::hash::Hash for RawNumber {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl Serialize for RawNumber {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

/// True when `text` starts like a JSON number (it is known to be one JSON
/// value).
fn is_number_text(text: &str) -> bool {
    matches!(text.as_bytes().first(), Some(b'-' | b'0'..=b'9'))
}

/// The `id` member of a message, as read.
enum IdMember {
    /// The message has no `id`.
    Absent,
    /// A valid id.
    Valid(RequestId),
    /// An `id` that is not a valid id: the error to answer with.
    Invalid(ErrorObject),
}

impl IdMember {
    /// Reads an id from its JSON text. An integer written as `i64` writes
    /// it becomes [`RequestId::Integer`] without allocating; any other
    /// number keeps its text.
    fn from_raw(raw: &RawValue) -> IdMember {
        let text = raw.get();
        let type_name = match text.as_bytes().first() {
            Some(b'"') => {
                return match serde_json::from_str(text) {
                    Ok(id) => IdMember::Valid(RequestId::String(id)),
                    Err(err) => IdMember::Invalid(ErrorObject::invalid_request(format!(
                        "`id` cannot be read: {err}"
                    ))),
                };
            }
            Some(b'-' | b'0'..=b'9') => {
                return IdMember::Valid(match canonical_i64(text) {
                    Some(n) => RequestId::Integer(n),
                    None => RequestId::Number(RawNumber(raw.to_owned())),
                });
            }
            Some(b'n') => "null",
            Some(b't' | b'f') => "a boolean",
            Some(b'[') => "an array",
            _ => "an object",
        };
        IdMember::Invalid(invalid_id_type(type_name))
    }
}

/// The error for an `id` of the wrong JSON type.
fn invalid_id_type(type_name: &str) -> ErrorObject {
    ErrorObject::invalid_request(format!(
        "`id` must be a number or a string, got {type_name}"
    ))
}

/// The value of a JSON integer whose text is exactly how `i64` is
/// written: no exponent, no fraction, not `-0` (JSON has no leading zeros
/// or `+`), within range. Anything else must be echoed as its text.
fn canonical_i64(text: &str) -> Option<i64> {
    let digits = text.strip_prefix('-').unwrap_or(text);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) || text == "-0" {
        return None;
    }
    text.parse().ok()
}

/// An inbound request: it has an id and expects a response.
#[derive(Clone, Debug, PartialEq)]
pub struct Request {
    /// The id the response will carry.
    pub id: RequestId,
    /// The method name.
    pub method: String,
    /// The parameters; `None` when absent or `null`.
    pub params: Option<Value>,
    /// The envelope's `trace` carrier exactly as received, whatever its
    /// shape. Interpreting it (strictly) is the tracing layer's job.
    pub trace: Option<Value>,
}

/// An inbound notification: no id, no response.
#[derive(Clone, Debug, PartialEq)]
pub struct Notification {
    /// The method name.
    pub method: String,
    /// The parameters; `None` when absent or `null`.
    pub params: Option<Value>,
}

/// A JSON-RPC error object.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ErrorObject {
    /// The error code.
    pub code: i64,
    /// A short description a person can act on.
    pub message: String,
    /// Extra detail, when there is any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
}

impl ErrorObject {
    /// An error with a code and a message.
    pub fn new(code: i64, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            data: None,
        }
    }

    /// `-32700`: the bytes were not JSON.
    pub fn parse_error(detail: impl fmt::Display) -> Self {
        Self::new(PARSE_ERROR, format!("parse error: {detail}"))
    }

    /// `-32600`: the JSON was not a valid request.
    pub fn invalid_request(detail: impl fmt::Display) -> Self {
        Self::new(INVALID_REQUEST, format!("invalid request: {detail}"))
    }

    /// `-32601`: no such method.
    pub fn method_not_found(method: &str) -> Self {
        let shown = crate::truncate_for_display(method, 128);
        Self::new(METHOD_NOT_FOUND, format!("method not found: {shown}"))
    }

    /// `-32602`: the parameters were wrong.
    pub fn invalid_params(detail: impl fmt::Display) -> Self {
        Self::new(INVALID_PARAMS, format!("invalid params: {detail}"))
    }

    /// `-32603`: the server failed.
    pub fn internal(detail: impl fmt::Display) -> Self {
        Self::new(INTERNAL_ERROR, format!("internal error: {detail}"))
    }
}

/// One inbound message, classified.
#[derive(Clone, Debug, PartialEq)]
pub enum Incoming {
    /// A request.
    Request(Request),
    /// A notification.
    Notification(Notification),
    /// A response to a request the server sent. Skein sends none yet, so
    /// these are logged and dropped.
    Response {
        /// The id it answers.
        id: Option<RequestId>,
    },
    /// Not a valid message. `id` is the message's id when one could be read,
    /// so the error response can carry it.
    Invalid {
        /// The id to answer with (`null` when unknown).
        id: Option<RequestId>,
        /// What was wrong.
        error: ErrorObject,
    },
}

/// A whole inbound frame or line: one message or a batch.
#[derive(Clone, Debug, PartialEq)]
pub enum Frame {
    /// A single message.
    Single(Incoming),
    /// A JSON-RPC batch: the array's elements, each classified on its own.
    Batch(Vec<Incoming>),
}

/// Parses one frame (a stdio line or a WebSocket text message).
///
/// Returns `Err` with a `-32700` error when the bytes are not JSON at all.
/// Everything else, including an empty batch, is classified into a [`Frame`].
/// A message's `id` is read from its JSON text, so a numeric id is
/// answered with exactly the text it was sent as.
pub fn parse_frame(bytes: &[u8]) -> Result<Frame, ErrorObject> {
    // A leading byte order mark is not JSON, but harmless (RFC 8259 lets
    // parsers ignore it).
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let frame: RawFrame<'_> = match serde_json::from_slice(bytes) {
        Ok(frame) => frame,
        Err(err) => return refused_json(bytes, err),
    };
    Ok(match frame {
        RawFrame::Batch(items) if items.is_empty() => Frame::Single(Incoming::Invalid {
            id: None,
            error: ErrorObject::invalid_request("empty batch"),
        }),
        RawFrame::Batch(items) => {
            Frame::Batch(items.into_iter().map(RawMessage::classify).collect())
        }
        RawFrame::Single(message) => Frame::Single(message.classify()),
    })
}

/// A frame as read: one message or a batch of them.
enum RawFrame<'a> {
    /// A single message.
    Single(RawMessage<'a>),
    /// An array: a batch.
    Batch(Vec<RawMessage<'a>>),
}

/// One message as read: an object's members, its `id` kept as the JSON
/// text it was sent as (the other members parsed as usual), or something
/// that is not an object.
enum RawMessage<'a> {
    /// A JSON object.
    Object {
        /// The `id` member's text (the last one, as with any duplicate).
        id: Option<&'a RawValue>,
        /// Every other member.
        members: Map<String, Value>,
    },
    /// Any other JSON value (read in full, then dropped).
    Other,
}

impl RawMessage<'_> {
    fn classify(self) -> Incoming {
        match self {
            RawMessage::Object { id, members } => {
                let id = id.map_or(IdMember::Absent, IdMember::from_raw);
                classify_members(id, members)
            }
            RawMessage::Other => not_an_object(),
        }
    }
}

/// A member name of a message: `id`, or any other (kept for the map).
enum MemberKey {
    Id,
    Other(String),
}

impl<'de> Deserialize<'de> for MemberKey {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;

        impl serde::de::Visitor<'_> for KeyVisitor {
            type Value = MemberKey;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a member name")
            }

            fn visit_str<E: serde::de::Error>(self, key: &str) -> Result<MemberKey, E> {
                Ok(match key {
                    "id" => MemberKey::Id,
                    _ => MemberKey::Other(key.to_owned()),
                })
            }

            fn visit_string<E: serde::de::Error>(self, key: String) -> Result<MemberKey, E> {
                Ok(match key.as_str() {
                    "id" => MemberKey::Id,
                    _ => MemberKey::Other(key),
                })
            }
        }

        deserializer.deserialize_str(KeyVisitor)
    }
}

/// Reads a message: an object member by member, anything else in full
/// (so that numbers out of range or bad escapes anywhere still fail the
/// frame, as they do when parsing a [`Value`]).
struct MessageVisitor;

impl<'de> serde::de::Visitor<'de> for MessageVisitor {
    type Value = RawMessage<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut id = None;
        let mut members = Map::new();
        while let Some(key) = map.next_key::<MemberKey>()? {
            match key {
                MemberKey::Id => id = Some(map.next_value::<&'de RawValue>()?),
                MemberKey::Other(key) => {
                    let value = map.next_value::<Value>()?;
                    members.insert(key, value);
                }
            }
        }
        Ok(RawMessage::Object { id, members })
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<Value>()?.is_some() {}
        Ok(RawMessage::Other)
    }

    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(RawMessage::Other)
    }

    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(RawMessage::Other)
    }

    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(RawMessage::Other)
    }

    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(RawMessage::Other)
    }

    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(RawMessage::Other)
    }

    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(RawMessage::Other)
    }
}

impl<'de> Deserialize<'de> for RawMessage<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(MessageVisitor)
    }
}

impl<'de> Deserialize<'de> for RawFrame<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        /// An array is a batch of messages; anything else one message.
        struct FrameVisitor;

        impl<'de> serde::de::Visitor<'de> for FrameVisitor {
            type Value = RawFrame<'de>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON value")
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Self::Value, A::Error> {
                let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
                while let Some(item) = seq.next_element::<RawMessage<'de>>()? {
                    items.push(item);
                }
                Ok(RawFrame::Batch(items))
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<Self::Value, A::Error> {
                MessageVisitor.visit_map(map).map(RawFrame::Single)
            }

            fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
                Ok(RawFrame::Single(RawMessage::Other))
            }

            fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
                Ok(RawFrame::Single(RawMessage::Other))
            }

            fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
                Ok(RawFrame::Single(RawMessage::Other))
            }

            fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
                Ok(RawFrame::Single(RawMessage::Other))
            }

            fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
                Ok(RawFrame::Single(RawMessage::Other))
            }

            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(RawFrame::Single(RawMessage::Other))
            }
        }

        deserializer.deserialize_any(FrameVisitor)
    }
}

/// The answer to bytes `serde_json` refused. When they are a well-formed
/// JSON object that only cannot be held (a number beyond `f64`, a lone
/// surrogate escape, nesting deeper than 128), the envelope is read again
/// skipping over values, so that the answer keeps the request's id:
/// `-32602` when the problem is in `params`, `-32600` otherwise. Anything
/// else is a `-32700` parse error.
fn refused_json(bytes: &[u8], err: serde_json::Error) -> Result<Frame, ErrorObject> {
    use serde::de::IgnoredAny;

    /// Only the id's text; everything else skipped without being built.
    #[derive(Deserialize)]
    struct Envelope<'a> {
        #[serde(default, borrow)]
        id: Option<&'a RawValue>,
    }

    /// Every member but `params` readable: the problem is in `params`.
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct AllButParams {
        #[serde(default)]
        id: Option<IgnoredAny>,
        #[serde(default)]
        jsonrpc: Option<Value>,
        #[serde(default)]
        method: Option<Value>,
        #[serde(default)]
        trace: Option<Value>,
        params: IgnoredAny,
    }

    // Only an object has an id to keep (a batch's elements are answered
    // one by one, or not at all).
    if (!err.is_data() && !err.is_syntax()) || bytes.trim_ascii_start().first() != Some(&b'{') {
        return Err(ErrorObject::parse_error(err));
    }
    let Ok(envelope) = serde_json::from_slice::<Envelope<'_>>(bytes) else {
        return Err(ErrorObject::parse_error(err));
    };
    let id = match envelope.id.map(IdMember::from_raw) {
        Some(IdMember::Valid(id)) => Some(id),
        _ => None,
    };
    let error = if serde_json::from_slice::<AllButParams>(bytes).is_ok() {
        ErrorObject::invalid_params(format!("`params` cannot be read: {err}"))
    } else {
        ErrorObject::invalid_request(format!("the message cannot be read: {err}"))
    };
    Ok(Frame::Single(Incoming::Invalid { id, error }))
}

/// The answer to a message that is not a JSON object.
fn not_an_object() -> Incoming {
    Incoming::Invalid {
        id: None,
        error: ErrorObject::invalid_request("a message must be a JSON object"),
    }
}

/// Classifies a JSON object, given its `id` and its other members.
fn classify_members(id: IdMember, mut obj: Map<String, Value>) -> Incoming {
    // The id to answer with while checking the rest, and, for an `id` of
    // the wrong kind, its error.
    let (id, id_error) = match id {
        IdMember::Absent => (None, None),
        IdMember::Valid(id) => (Some(id), None),
        IdMember::Invalid(error) => (None, Some(error)),
    };

    if let Some(version) = obj.get("jsonrpc")
        && version.as_str() != Some(JSONRPC_VERSION)
    {
        return Incoming::Invalid {
            id,
            error: ErrorObject::invalid_request("`jsonrpc` must be \"2.0\" when present"),
        };
    }

    let method = match obj.remove("method") {
        Some(Value::String(method)) => method,
        Some(_) => {
            return Incoming::Invalid {
                id,
                error: ErrorObject::invalid_request("`method` must be a string"),
            };
        }
        None if obj.contains_key("result") || obj.contains_key("error") => {
            return Incoming::Response { id };
        }
        None => {
            return Incoming::Invalid {
                id,
                error: ErrorObject::invalid_request("missing `method`"),
            };
        }
    };

    let params = match take_params(&mut obj) {
        Ok(params) => params,
        Err(error) => return Incoming::Invalid { id, error },
    };

    match (id, id_error) {
        (Some(id), _) => Incoming::Request(Request {
            id,
            method,
            params,
            trace: obj.remove("trace"),
        }),
        (None, Some(error)) => Incoming::Invalid { id: None, error },
        (None, None) => Incoming::Notification(Notification { method, params }),
    }
}

fn take_params(obj: &mut Map<String, Value>) -> Result<Option<Value>, ErrorObject> {
    match obj.remove("params") {
        None | Some(Value::Null) => Ok(None),
        Some(params @ (Value::Object(_) | Value::Array(_))) => Ok(Some(params)),
        Some(other) => Err(ErrorObject::invalid_request(format!(
            "`params` must be an object or an array, got {}",
            json_type_name(&other)
        ))),
    }
}

/// The JSON type of a value, for error messages.
pub fn json_type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// An outbound answer to a request. Serializes with `"jsonrpc": "2.0"`.
/// Notifications are [`OutgoingNotification`]s.
#[derive(Clone, Debug)]
pub enum Outgoing {
    /// A successful response.
    Response {
        /// The request's id.
        id: RequestId,
        /// The result, as JSON text (handlers serialize their typed
        /// results straight to text, with no [`Value`] tree).
        result: Box<RawValue>,
    },
    /// An error response.
    Error {
        /// The request's id, or `null` when it could not be read.
        id: Option<RequestId>,
        /// The error.
        error: ErrorObject,
    },
}

impl Outgoing {
    /// The JSON form of the message.
    pub fn to_value(&self) -> Value {
        let mut obj = Map::with_capacity(4);
        obj.insert("jsonrpc".into(), Value::from(JSONRPC_VERSION));
        match self {
            Outgoing::Response { id, result } => {
                obj.insert("id".into(), id_to_value(id));
                obj.insert(
                    "result".into(),
                    serde_json::from_str(result.get()).unwrap_or(Value::Null),
                );
            }
            Outgoing::Error { id, error } => {
                obj.insert("id".into(), id.as_ref().map_or(Value::Null, id_to_value));
                obj.insert(
                    "error".into(),
                    serde_json::to_value(error).unwrap_or(Value::Null),
                );
            }
        }
        Value::Object(obj)
    }

    /// The message as JSON text, serialized straight from its parts (no
    /// intermediate [`Value`] tree).
    pub fn to_json(&self) -> String {
        let mut out = Vec::with_capacity(128);
        self.write_json(&mut out);
        // serde_json writes UTF-8 only.
        String::from_utf8(out).unwrap_or_default()
    }

    /// Appends the message as JSON text to `out`.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        let written = match self {
            Outgoing::Response { id, result } => serde_json::to_writer(
                &mut *out,
                &WireResponse {
                    jsonrpc: JSONRPC_VERSION,
                    id,
                    result,
                },
            ),
            Outgoing::Error { id, error } => serde_json::to_writer(
                &mut *out,
                &WireError {
                    jsonrpc: JSONRPC_VERSION,
                    id: id.as_ref(),
                    error,
                },
            ),
        };
        // Serializing these types cannot fail: their maps have string keys.
        debug_assert!(written.is_ok(), "serializing an outgoing message failed");
    }

    /// The error's code, for an error response.
    pub fn error_code(&self) -> Option<i64> {
        match self {
            Outgoing::Error { error, .. } => Some(error.code),
            Outgoing::Response { .. } => None,
        }
    }
}

/// A server-to-client notification. Serializes with `"jsonrpc": "2.0"`,
/// its params written straight from their typed form: no [`Value`] tree
/// is built on the way to the text.
#[derive(Clone, Debug)]
pub struct OutgoingNotification {
    /// The method and its params.
    pub notification: ServerNotification,
    /// The trace context the notification belongs to (for turn
    /// notifications, the turn span's).
    pub trace: Option<W3cTraceContext>,
    /// When the server emitted it, milliseconds since the Unix epoch:
    /// the envelope's `emittedAtMs`, beside `method` and `params`, as
    /// Codex sends it.
    pub emitted_at_ms: i64,
}

impl OutgoingNotification {
    /// A notification without trace context, emitted now.
    pub fn new(notification: ServerNotification) -> Self {
        Self::with_trace(notification, None)
    }

    /// A notification in the trace context `trace`, emitted now.
    pub fn with_trace(notification: ServerNotification, trace: Option<W3cTraceContext>) -> Self {
        Self {
            notification,
            trace,
            emitted_at_ms: unix_now_ms(),
        }
    }

    /// The message as JSON text, in a buffer sized for it up front.
    pub fn to_json(&self) -> String {
        let mut out = Vec::with_capacity(self.len_hint());
        self.write_json(&mut out);
        // serde_json writes UTF-8 only.
        String::from_utf8(out).unwrap_or_default()
    }

    /// Appends the message as JSON text to `out`.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        let written = serde_json::to_writer(
            &mut *out,
            &WireNotification {
                jsonrpc: JSONRPC_VERSION,
                method: self.notification.method(),
                params: &self.notification,
                emitted_at_ms: self.emitted_at_ms,
                trace: self.trace.as_ref(),
            },
        );
        // Serializing these types cannot fail: their maps have string keys.
        debug_assert!(written.is_ok(), "serializing a notification failed");
    }

    /// The JSON form of the message (for tests and diagnostics; the wire
    /// path is [`to_json`](Self::to_json)).
    pub fn to_value(&self) -> Value {
        let mut obj = Map::with_capacity(4);
        obj.insert("jsonrpc".into(), Value::from(JSONRPC_VERSION));
        obj.insert("method".into(), Value::from(self.notification.method()));
        obj.insert(
            "params".into(),
            serde_json::to_value(&self.notification).unwrap_or(Value::Null),
        );
        obj.insert("emittedAtMs".into(), Value::from(self.emitted_at_ms));
        if let Some(trace) = &self.trace {
            obj.insert(
                "trace".into(),
                serde_json::to_value(trace).unwrap_or(Value::Null),
            );
        }
        Value::Object(obj)
    }

    /// About how long the JSON text is: the envelope, the method, the
    /// params' own hint and the trace carrier.
    fn len_hint(&self) -> usize {
        let trace = self.trace.as_ref().map_or(0, |t| {
            48 + t.traceparent.as_ref().map_or(0, String::len)
                + t.tracestate.as_ref().map_or(0, String::len)
                + t.baggage.as_ref().map_or(0, |b| 12 + b.len())
        });
        // `"emittedAtMs":` and up to 20 digits take 35 bytes.
        75 + self.notification.method().len() + self.notification.params_len_hint() + trace
    }
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
fn unix_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[derive(Serialize)]
struct WireResponse<'a> {
    jsonrpc: &'static str,
    id: &'a RequestId,
    result: &'a RawValue,
}

#[derive(Serialize)]
struct WireError<'a> {
    jsonrpc: &'static str,
    id: Option<&'a RequestId>,
    error: &'a ErrorObject,
}

#[derive(Serialize)]
struct WireNotification<'a, P> {
    jsonrpc: &'static str,
    method: &'a str,
    params: &'a P,
    #[serde(rename = "emittedAtMs")]
    emitted_at_ms: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    trace: Option<&'a W3cTraceContext>,
}

/// An id as a [`Value`]: a numeric id that a [`Value`] cannot hold
/// exactly (`-0`, an integer beyond `u64`...) comes out as `serde_json`
/// reads its text, and one beyond `f64` as `null`; [`Outgoing::write_json`]
/// writes every id exactly.
fn id_to_value(id: &RequestId) -> Value {
    match id {
        RequestId::Integer(n) => Value::from(*n),
        RequestId::String(s) => Value::from(s.as_str()),
        RequestId::Number(n) => serde_json::from_str(n.as_str()).unwrap_or(Value::Null),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use serde_json::value::to_raw_value;

    fn single(bytes: &str) -> Incoming {
        match parse_frame(bytes.as_bytes()).expect("valid json") {
            Frame::Single(incoming) => incoming,
            Frame::Batch(_) => panic!("expected a single message"),
        }
    }

    #[test]
    fn request_is_accepted_with_or_without_jsonrpc_field() {
        for text in [
            r#"{"jsonrpc":"2.0","id":1,"method":"model/list"}"#,
            r#"{"id":1,"method":"model/list"}"#,
        ] {
            let Incoming::Request(req) = single(text) else {
                panic!("not a request: {text}");
            };
            assert_eq!(req.id, RequestId::Integer(1));
            assert_eq!(req.method, "model/list");
        }
    }

    #[test]
    fn wrong_jsonrpc_version_is_an_invalid_request_keeping_the_id() {
        let Incoming::Invalid { id, error } = single(r#"{"jsonrpc":"1.0","id":"a","method":"x"}"#)
        else {
            panic!("expected invalid");
        };
        assert_eq!(id, Some(RequestId::String("a".into())));
        assert_eq!(error.code, INVALID_REQUEST);
    }

    #[test]
    fn trace_of_any_shape_is_kept_raw() {
        let Incoming::Request(req) = single(r#"{"id":1,"method":"m","trace":42}"#) else {
            panic!("expected request");
        };
        assert_eq!(req.trace, Some(json!(42)));
    }

    #[test]
    fn duplicate_keys_do_not_fail_the_request() {
        let text = r#"{"id":1,"method":"m","trace":{"traceparent":"a","traceparent":"b"}}"#;
        let Incoming::Request(req) = single(text) else {
            panic!("expected request");
        };
        assert_eq!(req.trace, Some(json!({"traceparent": "b"})));
    }

    #[test]
    fn message_without_id_is_a_notification() {
        assert_eq!(
            single(r#"{"method":"initialized"}"#),
            Incoming::Notification(Notification {
                method: "initialized".into(),
                params: None
            })
        );
    }

    #[test]
    fn non_json_is_a_parse_error() {
        let err = parse_frame(b"{not json").expect_err("must fail");
        assert_eq!(err.code, PARSE_ERROR);
    }

    #[test]
    fn batch_elements_are_classified_independently() {
        let Frame::Batch(items) =
            parse_frame(br#"[{"id":1,"method":"a"},{"id":null,"method":"b"},7]"#).expect("json")
        else {
            panic!("expected batch");
        };
        assert!(matches!(items[0], Incoming::Request(_)));
        assert!(matches!(items[1], Incoming::Invalid { id: None, .. }));
        assert!(matches!(items[2], Incoming::Invalid { id: None, .. }));
    }

    #[test]
    fn empty_batch_is_an_invalid_request() {
        let Frame::Single(Incoming::Invalid { error, .. }) = parse_frame(b"[]").expect("json")
        else {
            panic!("expected invalid");
        };
        assert_eq!(error.code, INVALID_REQUEST);
    }

    #[test]
    fn scalar_params_are_rejected() {
        let Incoming::Invalid { error, .. } = single(r#"{"id":1,"method":"m","params":3}"#) else {
            panic!("expected invalid");
        };
        assert!(error.message.contains("`params`"), "{}", error.message);
    }

    #[test]
    fn outgoing_messages_carry_jsonrpc_version() {
        let out = Outgoing::Response {
            id: RequestId::Integer(3),
            result: to_raw_value(&json!({})).expect("raw"),
        };
        assert_eq!(
            out.to_value(),
            json!({"jsonrpc": "2.0", "id": 3, "result": {}})
        );
        let err = Outgoing::Error {
            id: None,
            error: ErrorObject::parse_error("eof"),
        };
        assert_eq!(err.to_value()["id"], Value::Null);
        assert_eq!(err.to_value()["error"]["code"], json!(PARSE_ERROR));
    }

    #[test]
    fn to_json_is_the_same_message_as_to_value() {
        let messages = [
            Outgoing::Response {
                id: RequestId::String("a\"b".into()),
                result: to_raw_value(&json!({"data": [1, {"x": null}], "s": "é"})).expect("raw"),
            },
            Outgoing::Error {
                id: None,
                error: ErrorObject::invalid_params("bad `x`"),
            },
            Outgoing::Error {
                id: Some(RequestId::Integer(-7)),
                error: ErrorObject {
                    code: 1,
                    message: "m".into(),
                    data: Some(json!({"k": 1})),
                },
            },
        ];
        for message in messages {
            let parsed: Value = serde_json::from_str(&message.to_json()).expect("json");
            assert_eq!(parsed, message.to_value());
        }
    }

    fn delta(text: &str) -> ServerNotification {
        ServerNotification::AgentMessageDelta(crate::v2::AgentMessageDeltaNotification {
            thread_id: "019a0000-0000-7000-8000-000000000001".into(),
            turn_id: "019a0000-0000-7000-8000-000000000002".into(),
            item_id: "019a0000-0000-7000-8000-000000000003".into(),
            delta: text.into(),
        })
    }

    #[test]
    fn notifications_serialize_their_typed_params_with_method_and_trace() {
        let traced = OutgoingNotification {
            notification: delta("hé \"quoted\"\n"),
            trace: Some(W3cTraceContext {
                traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
                tracestate: Some("vendor=x".into()),
                baggage: Some("user.id=u-42".into()),
            }),
            emitted_at_ms: 1_767_225_600_123,
        };
        let parsed: Value = serde_json::from_str(&traced.to_json()).expect("json");
        assert_eq!(parsed, traced.to_value());
        assert_eq!(
            parsed,
            json!({
                "jsonrpc": "2.0",
                "method": "item/agentMessage/delta",
                "params": {
                    "threadId": "019a0000-0000-7000-8000-000000000001",
                    "turnId": "019a0000-0000-7000-8000-000000000002",
                    "itemId": "019a0000-0000-7000-8000-000000000003",
                    "delta": "hé \"quoted\"\n",
                },
                "emittedAtMs": 1_767_225_600_123_i64,
                "trace": {
                    "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                    "tracestate": "vendor=x",
                    "baggage": "user.id=u-42",
                },
            })
        );
        let untraced = OutgoingNotification::new(delta("x"));
        let parsed: Value = serde_json::from_str(&untraced.to_json()).expect("json");
        assert_eq!(parsed, untraced.to_value());
        assert!(parsed.get("trace").is_none(), "{parsed}");
        // Stamped when made.
        assert!(
            parsed["emittedAtMs"]
                .as_i64()
                .is_some_and(|at| at > 1_600_000_000_000),
            "{parsed}"
        );
    }

    #[test]
    fn a_delta_notification_is_written_into_one_allocation() {
        for text in ["", "word ", &"a longer piece of an answer, ".repeat(40)] {
            let message = OutgoingNotification {
                notification: delta(text),
                trace: Some(W3cTraceContext::from_traceparent(
                    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                )),
                emitted_at_ms: 1_767_225_600_123,
            };
            let hint = message.len_hint();
            let json = message.to_json();
            assert!(json.len() <= hint, "{} > {hint}: {json}", json.len());
            // And not much more than needed.
            assert!(
                hint - json.len() <= 64 + text.len() / 8,
                "hint {hint} for {} bytes",
                json.len()
            );
        }
    }

    fn invalid(bytes: &[u8]) -> (Option<RequestId>, ErrorObject) {
        match parse_frame(bytes) {
            Ok(Frame::Single(Incoming::Invalid { id, error })) => (id, error),
            other => panic!("expected an invalid message, got {other:?}"),
        }
    }

    #[test]
    fn a_leading_byte_order_mark_is_ignored() {
        let mut bytes = b"\xEF\xBB\xBF".to_vec();
        bytes.extend_from_slice(br#"{"id":4,"method":"model/list"}"#);
        match single(std::str::from_utf8(&bytes).expect("utf-8")) {
            Incoming::Request(req) => assert_eq!(req.id, RequestId::Integer(4)),
            other => panic!("expected a request, got {other:?}"),
        }
    }

    /// The answers' `id` member, as text, in `json`.
    fn id_text(json: &str) -> &str {
        let rest = json
            .strip_prefix(r#"{"jsonrpc":"2.0","id":"#)
            .unwrap_or_else(|| panic!("an answer starts with its id: {json}"));
        let end = rest
            .find(r#","result""#)
            .or_else(|| rest.find(r#","error""#))
            .unwrap_or_else(|| panic!("an answer has a result or an error: {json}"));
        &rest[..end]
    }

    /// Numbers whose text a `serde_json::Value` would not keep.
    const NUMERIC_IDS: [&str; 12] = [
        "18446744073709551616",
        "18446744073709551615",
        "1E+2",
        "1e3",
        "-0",
        "-0.0",
        "1.5",
        "-0.25",
        "1.0",
        "123456789012345678901234567890123456789012345678901234567890",
        "0.1000000000000000000000000001",
        "1e400",
    ];

    #[test]
    fn numeric_ids_are_answered_with_the_exact_text_they_were_sent_as() {
        for text in NUMERIC_IDS {
            let frame = format!(r#"{{"id":{text},"method":"model/list"}}"#);
            let Incoming::Request(req) = single(&frame) else {
                panic!("{frame} is a request");
            };
            assert_eq!(req.id.to_string(), text, "{frame}");
            let answer = Outgoing::Error {
                id: Some(req.id.clone()),
                error: ErrorObject::internal("x"),
            };
            assert_eq!(id_text(&answer.to_json()), text, "{frame}");
            let reply = Outgoing::Response {
                id: req.id,
                result: to_raw_value(&Value::Null).expect("raw"),
            };
            assert_eq!(id_text(&reply.to_json()), text, "{frame}");
        }
    }

    #[test]
    fn numeric_ids_keep_their_text_in_batches_and_invalid_messages() {
        let batch = format!(
            "[{}]",
            NUMERIC_IDS
                .iter()
                .map(|text| format!(r#"{{"id":{text},"method":7}}"#))
                .collect::<Vec<_>>()
                .join(",")
        );
        let Frame::Batch(items) = parse_frame(batch.as_bytes()).expect("json") else {
            panic!("expected a batch");
        };
        assert_eq!(items.len(), NUMERIC_IDS.len());
        for (item, text) in items.into_iter().zip(NUMERIC_IDS) {
            let Incoming::Invalid { id: Some(id), .. } = item else {
                panic!("{text}: expected an invalid message with its id, got {item:?}");
            };
            assert_eq!(id.to_string(), text);
        }
        // Params that cannot be held: answered with the id as sent.
        for text in NUMERIC_IDS {
            let frame = format!(r#"{{"id":{text},"method":"m","params":{{"n":1e400}}}}"#);
            let (id, error) = invalid(frame.as_bytes());
            assert_eq!(error.code, INVALID_PARAMS, "{frame}");
            let answer = Outgoing::Error { id, error };
            assert_eq!(id_text(&answer.to_json()), text, "{frame}");
        }
    }

    #[test]
    fn integer_ids_as_i64_writes_them_are_integers_and_others_keep_their_text() {
        for (text, want) in [
            ("0", RequestId::Integer(0)),
            ("-7", RequestId::Integer(-7)),
            ("9223372036854775807", RequestId::Integer(i64::MAX)),
            ("-9223372036854775808", RequestId::Integer(i64::MIN)),
            (
                "9223372036854775808",
                RequestId::Number(RawNumber::new("9223372036854775808").expect("number")),
            ),
            (
                "-0",
                RequestId::Number(RawNumber::new("-0").expect("number")),
            ),
            (
                "1E+2",
                RequestId::Number(RawNumber::new("1E+2").expect("number")),
            ),
            (r#""7""#, RequestId::String("7".into())),
            (r#""a\"\u00e9""#, RequestId::String("a\"é".into())),
        ] {
            let frame = format!(r#"{{"id":{text},"method":"m"}}"#);
            let Incoming::Request(req) = single(&frame) else {
                panic!("{frame} is a request");
            };
            assert_eq!(req.id, want, "{frame}");
        }
        assert_eq!(RawNumber::new(r#""1""#), None);
        assert_eq!(RawNumber::new("1 2"), None);
        assert_eq!(
            RawNumber::new(" 1.50 ").map(|n| n.as_str().to_owned()),
            Some("1.50".into())
        );
    }

    #[test]
    fn ids_of_the_wrong_type_are_invalid_requests_without_an_id() {
        for (text, named) in [
            ("null", "null"),
            ("true", "a boolean"),
            ("[1]", "an array"),
            (r#"{"a":1e400}"#, "an object"),
        ] {
            let frame = format!(r#"{{"id":{text},"method":"m"}}"#);
            let Incoming::Invalid { id, error } = single(&frame) else {
                panic!("{frame} is invalid");
            };
            assert_eq!(id, None, "{frame}");
            assert_eq!(error.code, INVALID_REQUEST, "{frame}");
            assert!(error.message.ends_with(named), "{frame}: {error:?}");
        }
        let Incoming::Invalid { id: None, error } = single(r#"{"id":"\ud800","method":"m"}"#)
        else {
            panic!("a string id that is not text is invalid");
        };
        assert!(error.message.contains("`id` cannot be read"), "{error:?}");
    }

    #[test]
    fn json_that_cannot_be_held_keeps_the_id_and_names_the_problem() {
        let deep = format!(
            r#"{{"id":"deep","method":"model/list","params":{{"a":{}1{}}}}}"#,
            "[".repeat(200),
            "]".repeat(200)
        );
        let cases: [(&[u8], RequestId, i64, &str); 4] = [
            (
                br#"{"id":7,"method":"model/list","params":{"n":1e400}}"#,
                RequestId::Integer(7),
                INVALID_PARAMS,
                "number out of range",
            ),
            (
                br#"{"id":"s","method":"model/list","params":{"t":"\ud800"}}"#,
                RequestId::String("s".into()),
                INVALID_PARAMS,
                "escape",
            ),
            (
                deep.as_bytes(),
                RequestId::String("deep".into()),
                INVALID_PARAMS,
                "recursion limit",
            ),
            (
                br#"{"id":8,"method":"\udc00"}"#,
                RequestId::Integer(8),
                INVALID_REQUEST,
                "escape",
            ),
        ];
        for (bytes, want_id, code, problem) in cases {
            let (id, error) = invalid(bytes);
            let text = String::from_utf8_lossy(bytes);
            assert_eq!(id, Some(want_id), "{text}");
            assert_eq!(error.code, code, "{text}: {error:?}");
            assert!(error.message.contains(problem), "{text}: {error:?}");
        }
    }

    #[test]
    fn broken_json_is_still_a_parse_error() {
        for bytes in [
            &b"{\"id\":1,"[..],
            b"nope",
            b"",
            br#"[{"id":1,"method":"a"},{"params":1e400}]"#,
            br#"[{"id":1,"method":"a","params":{"t":"\ud800"}}]"#,
            b"1e400",
        ] {
            match parse_frame(bytes) {
                Err(error) => assert_eq!(error.code, PARSE_ERROR),
                Ok(frame) => panic!("{bytes:?} parsed as {frame:?}"),
            }
        }
    }
}
