//! The handoff between Skein's app-server and its core.
//!
//! This crate holds plain data. A [`Submission`] stays inside the process
//! and carries the caller's OpenTelemetry span context as is; what crosses
//! a process boundary (an [`Event`] becoming a client notification) carries
//! a W3C carrier ([`W3cTraceContext`]). The `skein-otel` crate is the only
//! place that turns a carrier into a live context or back.
//!
//! The app-server hands work to a thread's submission loop as a
//! [`Submission`]; the loop reports progress as [`Event`]s.

use opentelemetry::trace::SpanContext;
use serde::{Deserialize, Serialize};

/// A W3C Trace Context carrier: the `traceparent` and `tracestate` values,
/// exactly as a client or a parent span wrote them.
///
/// The values are kept as strings; nothing is validated here. Parsing (which
/// is strict) happens in `skein-otel`, when the carrier is used.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct W3cTraceContext {
    /// The `traceparent` value, e.g. `00-<trace-id>-<parent-id>-01`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    /// The `tracestate` value: vendor-specific key/value pairs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracestate: Option<String>,
    /// The W3C `baggage` value: the caller's tags (a user, a session...)
    /// that travel with the trace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baggage: Option<String>,
}

/// W3C Baggage, validated (see `skein_otel::baggage`): the header as
/// received, sent on unchanged, and its members with their values decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct W3cBaggage {
    /// The header value, as received (valid per W3C Baggage).
    pub header: String,
    /// Each list-member's key and percent-decoded value, in order.
    pub members: Vec<(String, String)>,
}

impl W3cBaggage {
    /// The decoded value of the first member named `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.members
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// The trace context a submission continues, held as is inside the
/// process: the caller's span and the baggage that came with it.
#[derive(Clone, Debug, PartialEq)]
pub struct SubmissionTrace {
    /// The caller's span (the request span, for a client's request).
    pub span: SpanContext,
    /// The caller's W3C baggage, if any.
    pub baggage: Option<W3cBaggage>,
}

impl From<SpanContext> for SubmissionTrace {
    fn from(span: SpanContext) -> Self {
        Self {
            span,
            baggage: None,
        }
    }
}

impl W3cTraceContext {
    /// A carrier with a `traceparent` and no `tracestate`.
    pub fn from_traceparent(traceparent: impl Into<String>) -> Self {
        Self {
            traceparent: Some(traceparent.into()),
            tracestate: None,
            baggage: None,
        }
    }

    /// True when the carrier holds neither value.
    pub fn is_empty(&self) -> bool {
        self.traceparent.is_none() && self.tracestate.is_none()
    }
}

/// One unit of work handed to a thread's submission loop.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Submission {
    /// Unique id of this submission, for correlating logs and spans.
    pub id: String,
    /// What to do.
    pub op: Op,
    /// The span context the work continues, and its baggage, held as is:
    /// the submission stays inside the process, so the context is never
    /// rendered to a W3C carrier and parsed back. Filled from the current
    /// span by the thread handle's `submit`. Not serialized: where work
    /// crosses a process boundary the context travels as a
    /// [`W3cTraceContext`] instead.
    #[serde(skip)]
    pub trace: Option<SubmissionTrace>,
}

/// One piece of user input to a turn.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum UserInput {
    /// Plain text.
    Text {
        /// The text itself.
        text: String,
    },
}

/// The kind of a turn, which decides what the model is asked to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum TurnKind {
    /// A normal turn answering user input.
    Regular,
    /// A review of the thread so far.
    Review,
    /// A compaction: the thread's history summarised.
    Compact,
}

impl TurnKind {
    /// The lowercase name used in attributes and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            TurnKind::Regular => "regular",
            TurnKind::Review => "review",
            TurnKind::Compact => "compact",
        }
    }
}

/// An operation submitted to a thread's submission loop.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Op {
    /// Start a turn of `kind`.
    StartTurn {
        /// Id the turn will carry.
        turn_id: String,
        /// What the model is asked to do.
        kind: TurnKind,
        /// The user's input as text (empty for review and compaction).
        input: String,
    },
    /// Add input to the running turn.
    Steer {
        /// The turn to steer.
        turn_id: String,
        /// The extra input, as text.
        input: String,
    },
    /// Interrupt the running turn.
    Interrupt {
        /// The turn to interrupt.
        turn_id: String,
    },
    /// Stop the loop, interrupting any running turn.
    Shutdown,
}

impl Op {
    /// The operation's kind in snake case, as used in `op.dispatch.<kind>`.
    pub fn kind(&self) -> &'static str {
        match self {
            Op::StartTurn { kind, .. } => match kind {
                TurnKind::Regular => "user_turn",
                TurnKind::Review => "review",
                TurnKind::Compact => "compact",
            },
            Op::Steer { .. } => "steer",
            Op::Interrupt { .. } => "interrupt",
            Op::Shutdown => "shutdown",
        }
    }
}

/// How a tool call went.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ToolCallStatus {
    /// Running.
    InProgress,
    /// The tool answered (its result may still be an error result).
    Completed,
    /// The call could not be made or the tool reported an error.
    Failed,
}

/// How a turn ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum TurnStatus {
    /// Still running.
    InProgress,
    /// Finished normally.
    Completed,
    /// Stopped by `turn/interrupt` or by shutdown.
    Interrupted,
    /// The model or a tool failed.
    Failed,
}

impl TurnStatus {
    /// The lowercase name used in the `turn.status` attribute.
    pub fn as_str(self) -> &'static str {
        match self {
            TurnStatus::InProgress => "inProgress",
            TurnStatus::Completed => "completed",
            TurnStatus::Interrupted => "interrupted",
            TurnStatus::Failed => "failed",
        }
    }
}

/// Token usage reported by a model.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenUsage {
    /// Tokens read by the model.
    pub input_tokens: u64,
    /// Tokens written by the model.
    pub output_tokens: u64,
}

impl TokenUsage {
    /// Adds another usage to this one.
    pub fn add(&mut self, other: TokenUsage) {
        self.input_tokens = self.input_tokens.saturating_add(other.input_tokens);
        self.output_tokens = self.output_tokens.saturating_add(other.output_tokens);
    }
}

/// Something that happened in a thread, reported by core.
///
/// Every turn event carries the turn span's context so that the app-server
/// can stamp it on the outgoing notification.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// The thread the event belongs to.
    pub thread_id: String,
    /// What happened.
    pub msg: EventMsg,
    /// The turn span's context, when the event belongs to a turn.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<W3cTraceContext>,
    /// When core emitted the event, milliseconds since the Unix epoch.
    #[serde(default)]
    pub at_ms: i64,
}

/// What kind of item a turn produced.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ItemKind {
    /// What the user said: a turn's input.
    UserMessage,
    /// The agent's answer, streamed as text deltas.
    AgentMessage,
    /// The thread's history was compacted (the item of a compaction turn).
    ContextCompaction,
}

/// An item of a turn as its summary shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ItemSummary {
    /// The item's id.
    pub item_id: String,
    /// What the item is.
    pub kind: ItemKind,
    /// Its text.
    pub text: String,
}

/// Whether a thread is doing work in this process.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ThreadStatus {
    /// Not loaded in this process (only in the store).
    NotLoaded,
    /// Loaded, no turn running.
    Idle,
    /// Loaded, a turn running.
    Active,
}

/// The payload of an [`Event`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EventMsg {
    /// A turn began.
    TurnStarted {
        /// The turn's id.
        turn_id: String,
        /// The turn's kind.
        kind: TurnKind,
    },
    /// An item (such as an agent message) began.
    ItemStarted {
        /// The turn's id.
        turn_id: String,
        /// The item's id.
        item_id: String,
        /// What the item is.
        kind: ItemKind,
        /// The item's text as it starts: a user message's whole text;
        /// empty for an agent message, which streams.
        text: String,
    },
    /// A piece of an agent message streamed in.
    AgentMessageDelta {
        /// The turn's id.
        turn_id: String,
        /// The item's id.
        item_id: String,
        /// The new text.
        delta: String,
    },
    /// An item finished.
    ItemCompleted {
        /// The turn's id.
        turn_id: String,
        /// The item's id.
        item_id: String,
        /// What the item is.
        kind: ItemKind,
        /// The item's full text.
        text: String,
    },
    /// A tool call began (an `mcpToolCall` item, status `inProgress`).
    McpToolCallStarted {
        /// The turn's id.
        turn_id: String,
        /// The item's id (the model's call id).
        item_id: String,
        /// The MCP server.
        server: String,
        /// The tool.
        tool: String,
        /// The arguments.
        arguments: serde_json::Value,
    },
    /// A tool call ended.
    McpToolCallCompleted {
        /// The turn's id.
        turn_id: String,
        /// The item's id.
        item_id: String,
        /// The MCP server.
        server: String,
        /// The tool.
        tool: String,
        /// The arguments.
        arguments: serde_json::Value,
        /// `Completed` or `Failed`.
        status: ToolCallStatus,
        /// The MCP `CallToolResult`, when the tool answered.
        result: Option<serde_json::Value>,
        /// Why it failed, when it did.
        error: Option<String>,
    },
    /// A turn ended.
    TurnCompleted {
        /// The turn's id.
        turn_id: String,
        /// How it ended.
        status: TurnStatus,
        /// Why it failed, when it did.
        error: Option<String>,
        /// Tokens used over the whole turn.
        usage: TokenUsage,
        /// The turn's summary for display: its user message and its
        /// answer (the last agent message, or a compaction's item).
        items: Vec<ItemSummary>,
    },
    /// The thread's status changed (a turn started or ended).
    ThreadStatusChanged {
        /// The new status.
        status: ThreadStatus,
    },
    /// The thread was named (`thread/name/set`).
    ThreadNameUpdated {
        /// The new name.
        name: Option<String>,
    },
    /// The thread was archived.
    ThreadArchived,
    /// The thread was unarchived.
    ThreadUnarchived,
    /// The thread's token usage changed: a turn used tokens.
    TokenUsageUpdated {
        /// The turn that used them.
        turn_id: String,
        /// That turn's usage.
        last: TokenUsage,
        /// The thread's usage over all its turns.
        total: TokenUsage,
        /// The context window of the thread's model in tokens, when known.
        model_context_window: Option<u64>,
    },
    /// The thread's loop stopped; no event follows.
    ShutdownComplete,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_submission_keeps_its_span_context_in_process_and_never_serializes_it() {
        use opentelemetry::trace::{SpanId, TraceFlags, TraceId, TraceState};
        let context = SpanContext::new(
            TraceId::from_hex("0af7651916cd43dd8448eb211c80319c").expect("trace id"),
            SpanId::from_hex("b7ad6b7169203331").expect("span id"),
            TraceFlags::SAMPLED,
            true,
            TraceState::default(),
        );
        let sub = Submission {
            id: "s1".into(),
            op: Op::StartTurn {
                turn_id: "t1".into(),
                kind: TurnKind::Regular,
                input: "hi".into(),
            },
            trace: Some(context.clone().into()),
        };
        assert_eq!(sub.clone().trace, Some(context.into()));
        let json = serde_json::to_string(&sub).expect("serialize");
        assert!(!json.contains("trace"), "{json}");
        let back: Submission = serde_json::from_str(&json).expect("deserialize");
        assert_eq!(
            (back.id.as_str(), &back.op, back.trace),
            ("s1", &sub.op, None)
        );
    }

    #[test]
    fn empty_carrier_serializes_without_fields() {
        let json = serde_json::to_value(W3cTraceContext::default()).expect("serialize");
        assert_eq!(json, serde_json::json!({}));
        assert!(W3cTraceContext::default().is_empty());
    }

    #[test]
    fn op_kind_names_match_dispatch_span_suffixes() {
        let start = |kind| Op::StartTurn {
            turn_id: String::new(),
            kind,
            input: String::new(),
        };
        assert_eq!(start(TurnKind::Regular).kind(), "user_turn");
        assert_eq!(start(TurnKind::Review).kind(), "review");
        assert_eq!(start(TurnKind::Compact).kind(), "compact");
        assert_eq!(Op::Shutdown.kind(), "shutdown");
    }
}
