//! Every span core opens, built in one place.
//!
//! Names, attribute keys and `error.type` values are constants in
//! [`skein_otel::names`]. Who ends each span:
//! - the dispatch span (`op.dispatch.<op>`): the submission loop, once the
//!   operation is handed on; a turn's dispatch span stays open while its turn
//!   span (its child) runs, and ends with it;
//! - the turn span (`invoke_agent skein`): the turn engine, when the turn
//!   reaches its terminal state, before `TurnCompleted` goes out;
//! - `chat {model}` and `execute_tool {tool}`: the engine, when the model
//!   call or the tool call ends;
//! - `tools/call {tool}` and `mcp.server.start {server}`: the MCP client
//!   ([`crate::mcp`]), when the request is answered or the start ends.

use skein_otel::names::{attr, event, span, value};
use skein_protocol::{Submission, TokenUsage, TurnKind};
use tracing::field::Empty;

use crate::records::ModelInfo;

/// `gen_ai.agent.name` of Skein's agent.
pub const AGENT_NAME: &str = "skein";

/// Builds the dispatch span for a submission, parented from
/// `Submission.trace` (the caller's span context, held as is); with none,
/// the span keeps the current context as its parent.
pub(crate) fn dispatch_span(submission: &Submission, thread_id: &str) -> tracing::Span {
    let kind = submission.op.kind();
    let span = tracing::info_span!(
        target: "skein_core::dispatch",
        span::SUBMISSION_DISPATCH,
        { attr::OTEL_NAME } = format!("op.dispatch.{kind}"),
        { attr::SUBMISSION_ID } = submission.id.as_str(),
        { attr::THREAD_ID } = thread_id,
        { attr::OP } = kind,
    );
    if let Some(parent) = &submission.trace {
        skein_otel::set_submission_parent(&span, parent);
    }
    span
}

/// Builds a turn span. It is created inside the dispatch span, which
/// becomes its parent.
pub(crate) fn turn_span(
    thread_id: &str,
    turn_id: &str,
    kind: TurnKind,
    model: &ModelInfo,
) -> tracing::Span {
    tracing::info_span!(
        target: "skein_core::turn",
        span::TURN,
        { attr::OTEL_NAME } = format!("{} {AGENT_NAME}", value::GEN_AI_OPERATION_INVOKE_AGENT),
        { attr::OTEL_STATUS_CODE } = Empty,
        { attr::OTEL_STATUS_DESCRIPTION } = Empty,
        { attr::GEN_AI_OPERATION_NAME } = value::GEN_AI_OPERATION_INVOKE_AGENT,
        { attr::GEN_AI_AGENT_NAME } = AGENT_NAME,
        { attr::GEN_AI_CONVERSATION_ID } = thread_id,
        { attr::GEN_AI_REQUEST_MODEL } = model.name.as_str(),
        { attr::THREAD_ID } = thread_id,
        { attr::TURN_ID } = turn_id,
        { attr::TURN_KIND } = kind.as_str(),
        { attr::TURN_STATUS } = Empty,
        { attr::GEN_AI_USAGE_INPUT_TOKENS } = Empty,
        { attr::GEN_AI_USAGE_OUTPUT_TOKENS } = Empty,
        { attr::SKEIN_USAGE_COST } = Empty,
        { attr::SKEIN_USAGE_COST_CURRENCY } = Empty,
    )
}

/// Builds a `chat {model}` span, a child of the current span (the turn
/// span). Response attributes are filled when the call ends.
pub(crate) fn chat_span(model: &ModelInfo) -> tracing::Span {
    tracing::info_span!(
        target: "skein_core::model",
        span::MODEL_CALL,
        { attr::OTEL_NAME } = format!("chat {}", model.name),
        { attr::OTEL_KIND } = value::KIND_CLIENT,
        { attr::OTEL_STATUS_CODE } = Empty,
        { attr::OTEL_STATUS_DESCRIPTION } = Empty,
        { attr::GEN_AI_OPERATION_NAME } = value::GEN_AI_OPERATION_CHAT,
        { attr::GEN_AI_PROVIDER_NAME } = model.provider_name,
        { attr::PROVIDER_ID } = model.provider.as_str(),
        { attr::GEN_AI_REQUEST_MODEL } = model.name.as_str(),
        { attr::GEN_AI_CONVERSATION_ID } = Empty,
        { attr::GEN_AI_RESPONSE_MODEL } = Empty,
        { attr::GEN_AI_RESPONSE_ID } = Empty,
        { attr::GEN_AI_USAGE_INPUT_TOKENS } = Empty,
        { attr::GEN_AI_USAGE_OUTPUT_TOKENS } = Empty,
        { attr::SKEIN_USAGE_COST } = Empty,
        { attr::SKEIN_USAGE_COST_CURRENCY } = Empty,
        { attr::SERVER_ADDRESS } = Empty,
        { attr::SERVER_PORT } = Empty,
        { attr::HTTP_REQUEST_RESEND_COUNT } = Empty,
        { attr::ERROR_TYPE } = Empty,
        { attr::GEN_AI_SYSTEM_INSTRUCTIONS } = Empty,
        { attr::GEN_AI_INPUT_MESSAGES } = Empty,
        { attr::GEN_AI_OUTPUT_MESSAGES } = Empty,
    )
}

pub(crate) fn record_usage(span: &tracing::Span, usage: TokenUsage) {
    span.record(attr::GEN_AI_USAGE_INPUT_TOKENS, clamp(usage.input_tokens));
    span.record(attr::GEN_AI_USAGE_OUTPUT_TOKENS, clamp(usage.output_tokens));
}

/// Records a cost (of a model call, or a turn's total) and its currency.
pub(crate) fn record_cost(span: &tracing::Span, cost: &Cost) {
    span.record(attr::SKEIN_USAGE_COST, cost.amount);
    span.record(attr::SKEIN_USAGE_COST_CURRENCY, cost.currency.as_str());
}

/// What model calls cost, in one currency.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Cost {
    pub(crate) amount: f64,
    pub(crate) currency: String,
}

pub(crate) fn record_error(span: &tracing::Span, message: &str) {
    span.record(attr::OTEL_STATUS_CODE, value::STATUS_ERROR);
    span.record(attr::OTEL_STATUS_DESCRIPTION, message);
}

pub(crate) fn clamp(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Builds an `execute_tool {tool}` span, a child of the current span (the
/// turn span). Outcome attributes are filled when the call ends.
pub(crate) fn tool_span(tool: &str, call_id: &str, server: &str) -> tracing::Span {
    tracing::info_span!(
        target: "skein_core::tool",
        span::TOOL_EXECUTION,
        { attr::OTEL_NAME } = format!("{} {tool}", value::GEN_AI_OPERATION_EXECUTE_TOOL),
        { attr::OTEL_KIND } = value::KIND_INTERNAL,
        { attr::OTEL_STATUS_CODE } = Empty,
        { attr::OTEL_STATUS_DESCRIPTION } = Empty,
        { attr::GEN_AI_OPERATION_NAME } = value::GEN_AI_OPERATION_EXECUTE_TOOL,
        { attr::GEN_AI_TOOL_NAME } = tool,
        { attr::GEN_AI_TOOL_CALL_ID } = call_id,
        { attr::GEN_AI_TOOL_TYPE } = value::TOOL_TYPE_EXTENSION,
        { attr::MCP_SERVER_NAME } = server,
        { attr::ERROR_TYPE } = Empty,
        { attr::GEN_AI_TOOL_CALL_ARGUMENTS } = Empty,
        { attr::GEN_AI_TOOL_CALL_RESULT } = Empty,
    )
}

/// Records input steered into a running turn as an event on its span.
pub(crate) fn record_steer(turn: &tracing::Span, text: &str) {
    tracing::event!(
        parent: turn,
        tracing::Level::INFO,
        { attr::STEER_INPUT_CHARS } = text.chars().count(),
        message = event::TURN_STEER,
    );
}

/// Records a failure with its low-cardinality `error.type`.
pub(crate) fn record_failure(span: &tracing::Span, error_type: &str, message: &str) {
    span.record(attr::ERROR_TYPE, error_type);
    record_error(span, message);
}

/// Builds a `tools/call {tool}` MCP CLIENT span, a child of `parent` (the
/// `execute_tool` span).
pub(crate) fn mcp_tools_call_span(
    parent: &tracing::Span,
    server: &str,
    tool: &str,
) -> tracing::Span {
    tracing::info_span!(
        target: "skein_core::mcp",
        parent: parent,
        span::MCP_REQUEST,
        { attr::OTEL_NAME } = format!("{} {tool}", value::MCP_TOOLS_CALL),
        { attr::OTEL_KIND } = value::KIND_CLIENT,
        { attr::OTEL_STATUS_CODE } = Empty,
        { attr::OTEL_STATUS_DESCRIPTION } = Empty,
        { attr::MCP_METHOD_NAME } = value::MCP_TOOLS_CALL,
        { attr::GEN_AI_TOOL_NAME } = tool,
        { attr::MCP_SERVER_NAME } = server,
        { attr::JSONRPC_REQUEST_ID } = Empty,
        { attr::MCP_PROTOCOL_VERSION } = Empty,
        { attr::ERROR_TYPE } = Empty,
    )
}

/// Builds the span of one MCP server start, a child of the current span
/// (the turn, or the tool call, that waits for the server).
pub(crate) fn mcp_server_start_span(server: &str, command: &str) -> tracing::Span {
    tracing::info_span!(
        target: "skein_core::mcp",
        span::MCP_SERVER_START,
        { attr::OTEL_NAME } = format!("{} {server}", span::MCP_SERVER_START),
        { attr::OTEL_KIND } = value::KIND_INTERNAL,
        { attr::OTEL_STATUS_CODE } = Empty,
        { attr::OTEL_STATUS_DESCRIPTION } = Empty,
        { attr::MCP_SERVER_NAME } = server,
        { attr::PROCESS_COMMAND } = command,
        { attr::MCP_PROTOCOL_VERSION } = Empty,
        { attr::ERROR_TYPE } = Empty,
    )
}
