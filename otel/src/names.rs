//! Every span name, metric name and attribute key Skein emits, in one
//! place.
//!
//! Code that creates spans uses these constants with `tracing`'s
//! `{ CONST } = value` field syntax, so a key is spelled exactly once.

/// Span names (the `tracing` names; the exported OTel name may differ, see
/// [`attr::OTEL_NAME`]).
pub mod span {
    /// Core's short-lived span for one submission. Exported as
    /// `op.dispatch.<op kind>`.
    pub const SUBMISSION_DISPATCH: &str = "submission.dispatch";
    /// Core's long-lived span for one turn. Exported as `invoke_agent skein`.
    pub const TURN: &str = "turn";
    /// One model call inside a turn. Exported as `chat <model>`.
    pub const MODEL_CALL: &str = "model.call";
    /// One tool call inside a turn. Exported as `execute_tool <tool>`.
    pub const TOOL_EXECUTION: &str = "tool.execute";
    /// One request to an MCP server. Exported as `<mcp method> <tool>`,
    /// e.g. `tools/call get_current_time`.
    pub const MCP_REQUEST: &str = "mcp.request";
    /// Starting one MCP server: spawning it, `initialize` and listing its
    /// tools, under the span that waited for it. Exported as
    /// `mcp.server.start <server>`.
    pub const MCP_SERVER_START: &str = "mcp.server.start";
    /// Core stopping every thread at server shutdown; the per-thread
    /// shutdown dispatches nest beneath it.
    pub const SHUTDOWN: &str = "skein.shutdown";
}

/// Attribute keys.
pub mod attr {
    // Fields tracing-opentelemetry interprets rather than exports.
    /// Overrides the exported span name.
    pub const OTEL_NAME: &str = "otel.name";
    /// The span kind: `server`, `client`, `internal`...
    pub const OTEL_KIND: &str = "otel.kind";
    /// The span status: `ok` or `error`.
    pub const OTEL_STATUS_CODE: &str = "otel.status_code";
    /// The status message that goes with an error status.
    pub const OTEL_STATUS_DESCRIPTION: &str = "otel.status_description";

    // OTel RPC conventions, current and legacy names.
    /// Legacy RPC system attribute, still what many backends group by.
    pub const RPC_SYSTEM: &str = "rpc.system";
    /// Current RPC system attribute.
    pub const RPC_SYSTEM_NAME: &str = "rpc.system.name";
    /// The service answering.
    pub const RPC_SERVICE: &str = "rpc.service";
    /// The method, or `_OTHER` for an unknown one.
    pub const RPC_METHOD: &str = "rpc.method";
    /// The method as sent, when `rpc.method` is `_OTHER`.
    pub const RPC_METHOD_ORIGINAL: &str = "rpc.method_original";
    /// `stdio`, `websocket` or `http`.
    pub const RPC_TRANSPORT: &str = "rpc.transport";
    /// The request id (legacy name).
    pub const RPC_REQUEST_ID: &str = "rpc.request_id";
    /// The error code of a failed response.
    pub const RPC_RESPONSE_STATUS_CODE: &str = "rpc.response.status_code";
    /// The request id (current JSON-RPC convention).
    pub const JSONRPC_REQUEST_ID: &str = "jsonrpc.request.id";
    /// Always `2.0`.
    pub const JSONRPC_PROTOCOL_VERSION: &str = "jsonrpc.protocol.version";
    /// The class of error: for RPC errors, the JSON-RPC code.
    pub const ERROR_TYPE: &str = "error.type";

    // Skein's own.
    /// The connection the request arrived on.
    pub const APP_SERVER_CONNECTION_ID: &str = "app_server.connection_id";
    /// The API version, `v2`.
    pub const APP_SERVER_API_VERSION: &str = "app_server.api_version";
    /// `clientInfo.name` from `initialize`.
    pub const APP_SERVER_CLIENT_NAME: &str = "app_server.client_name";
    /// `clientInfo.version` from `initialize`.
    pub const APP_SERVER_CLIENT_VERSION: &str = "app_server.client_version";
    /// The agent thread concerned.
    pub const THREAD_ID: &str = "thread.id";
    /// The turn concerned.
    pub const TURN_ID: &str = "turn.id";
    /// `regular`, `review` or `compact`.
    pub const TURN_KIND: &str = "turn.kind";
    /// How the turn ended.
    pub const TURN_STATUS: &str = "turn.status";
    /// The submission's id.
    pub const SUBMISSION_ID: &str = "submission.id";
    /// The submitted operation's kind.
    pub const OP: &str = "op";
    /// Length in characters of input steered into a turn.
    pub const STEER_INPUT_CHARS: &str = "turn.steer.input_chars";
    /// How many threads a shutdown stopped.
    pub const THREAD_COUNT: &str = "skein.thread.count";

    // OTel GenAI conventions.
    /// `invoke_agent`, `chat`, `execute_tool`...
    pub const GEN_AI_OPERATION_NAME: &str = "gen_ai.operation.name";
    /// The agent's name.
    pub const GEN_AI_AGENT_NAME: &str = "gen_ai.agent.name";
    /// The conversation: Skein's thread id.
    pub const GEN_AI_CONVERSATION_ID: &str = "gen_ai.conversation.id";
    /// The model asked for.
    pub const GEN_AI_REQUEST_MODEL: &str = "gen_ai.request.model";
    /// The provider's well-known name, from the semantic conventions'
    /// list (`openai` for any provider spoken to over the OpenAI API), or
    /// `skein` for the offline echo model.
    pub const GEN_AI_PROVIDER_NAME: &str = "gen_ai.provider.name";
    /// The id of the provider's `[model_providers.<id>]` table in
    /// config.toml (`skein` for the offline echo model).
    pub const PROVIDER_ID: &str = "skein.provider.id";
    /// Tokens read.
    pub const GEN_AI_USAGE_INPUT_TOKENS: &str = "gen_ai.usage.input_tokens";
    /// Tokens written.
    pub const GEN_AI_USAGE_OUTPUT_TOKENS: &str = "gen_ai.usage.output_tokens";
    /// What a model call (on a `chat` span) or a whole turn (on the turn
    /// span) cost, from the configured prices; a double. No semantic
    /// convention exists for cost yet.
    pub const SKEIN_USAGE_COST: &str = "skein.usage.cost";
    /// The currency of [`SKEIN_USAGE_COST`] (`USD` unless configured).
    pub const SKEIN_USAGE_COST_CURRENCY: &str = "skein.usage.cost.currency";
    /// Which tokens a `gen_ai.client.token.usage` point counts: `input` or
    /// `output`.
    pub const GEN_AI_TOKEN_TYPE: &str = "gen_ai.token.type";
    /// The model that answered.
    pub const GEN_AI_RESPONSE_MODEL: &str = "gen_ai.response.model";
    /// The provider's id of the response.
    pub const GEN_AI_RESPONSE_ID: &str = "gen_ai.response.id";
    /// Why the model stopped, one per choice: a string array.
    pub const GEN_AI_RESPONSE_FINISH_REASONS: &str = "gen_ai.response.finish_reasons";
    /// The tool called.
    pub const GEN_AI_TOOL_NAME: &str = "gen_ai.tool.name";
    /// The model's id of the tool call.
    pub const GEN_AI_TOOL_CALL_ID: &str = "gen_ai.tool.call.id";
    /// `extension` for MCP tools (run by the agent against another
    /// service).
    pub const GEN_AI_TOOL_TYPE: &str = "gen_ai.tool.type";
    /// Opt-in content: the messages sent to the model (JSON).
    pub const GEN_AI_INPUT_MESSAGES: &str = "gen_ai.input.messages";
    /// Opt-in content: the model's answer (JSON).
    pub const GEN_AI_OUTPUT_MESSAGES: &str = "gen_ai.output.messages";
    /// Opt-in content: the system instructions (JSON).
    pub const GEN_AI_SYSTEM_INSTRUCTIONS: &str = "gen_ai.system_instructions";
    /// Opt-in content: a tool call's arguments (JSON).
    pub const GEN_AI_TOOL_CALL_ARGUMENTS: &str = "gen_ai.tool.call.arguments";
    /// Opt-in content: a tool call's result (JSON).
    pub const GEN_AI_TOOL_CALL_RESULT: &str = "gen_ai.tool.call.result";

    // OTel server, HTTP and MCP conventions.
    /// The host of the remote service.
    pub const SERVER_ADDRESS: &str = "server.address";
    /// The port of the remote service.
    pub const SERVER_PORT: &str = "server.port";
    /// How many times the model request was sent again.
    pub const HTTP_REQUEST_RESEND_COUNT: &str = "http.request.resend_count";
    /// How long a retry waited, in milliseconds (on the retry event).
    pub const RETRY_WAIT_MS: &str = "skein.retry.wait_ms";
    /// The MCP method, e.g. `tools/call`.
    pub const MCP_METHOD_NAME: &str = "mcp.method.name";
    /// The MCP protocol version the server negotiated.
    pub const MCP_PROTOCOL_VERSION: &str = "mcp.protocol.version";
    /// The MCP session (the streamable HTTP `Mcp-Session-Id`), when there
    /// is one.
    pub const MCP_SESSION_ID: &str = "mcp.session.id";
    /// The resource a `resources/*` request names.
    pub const MCP_RESOURCE_URI: &str = "mcp.resource.uri";
    /// The prompt a `prompts/get` request names.
    pub const GEN_AI_PROMPT_NAME: &str = "gen_ai.prompt.name";
    /// The transport an MCP request came over: `pipe` (stdio) or `tcp`.
    pub const NETWORK_TRANSPORT: &str = "network.transport";
    /// The application protocol an MCP request came over, when it is not
    /// stdio: `http`.
    pub const NETWORK_PROTOCOL_NAME: &str = "network.protocol.name";
    /// The configured name of the MCP server.
    pub const MCP_SERVER_NAME: &str = "skein.mcp.server";
    /// The command a process is started with (an MCP server's configured
    /// `command`, without its arguments).
    pub const PROCESS_COMMAND: &str = "process.command";

    // Metric-only attributes.
    /// The span export pipeline a `skein.spans.dropped` point counts for:
    /// `otlp` or `local store`.
    pub const PIPELINE: &str = "pipeline";
    /// Where an ignored carrier came from (on `skein.carrier.invalid`).
    pub const CARRIER_SOURCE: &str = "skein.carrier.source";
    /// Why the carrier was ignored (on `skein.carrier.invalid`).
    pub const CARRIER_ERROR: &str = "skein.carrier.error";
}

/// Span event names.
pub mod event {
    /// Input was steered into a running turn (on the turn span).
    pub const TURN_STEER: &str = "turn.steer";
    /// A model request is sent again after a retryable failure (on the
    /// `chat` span).
    pub const MODEL_RETRY: &str = "skein.model.retry";
    /// A request carried a trace carrier that is not valid W3C Trace
    /// Context; it was ignored (on the request span).
    pub const INVALID_CARRIER: &str = "skein.carrier.invalid";
}

/// Fixed attribute values.
pub mod value {
    /// `rpc.system` / `rpc.system.name`.
    pub const JSONRPC: &str = "jsonrpc";
    /// `rpc.service`, and the default `service.name`.
    pub const SERVICE_NAME: &str = "skein-app-server";
    /// `jsonrpc.protocol.version`.
    pub const JSONRPC_VERSION: &str = "2.0";
    /// `app_server.api_version`.
    pub const API_VERSION: &str = "v2";
    /// `rpc.method` for a method the server does not know.
    pub const METHOD_OTHER: &str = "_OTHER";
    /// Exported span name for a request whose method is unknown.
    pub const UNKNOWN_METHOD_SPAN_NAME: &str = "jsonrpc";
    /// `otel.kind` of a request span.
    pub const KIND_SERVER: &str = "server";
    /// `otel.kind` of a model call span.
    pub const KIND_CLIENT: &str = "client";
    /// `otel.kind` of an in-process span.
    pub const KIND_INTERNAL: &str = "internal";
    /// `gen_ai.operation.name` of a tool call.
    pub const GEN_AI_OPERATION_EXECUTE_TOOL: &str = "execute_tool";
    /// `gen_ai.tool.type` of MCP tools.
    pub const TOOL_TYPE_EXTENSION: &str = "extension";
    /// `mcp.method.name` of a tool call.
    pub const MCP_TOOLS_CALL: &str = "tools/call";
    /// `error.type` of a tool call Skein refused to make (unknown tool,
    /// arguments that are not a JSON object).
    pub const ERROR_TOOL_CALL_REFUSED: &str = "invalid_tool_call";
    /// `error.type` of an MCP tool result flagged `isError`.
    pub const ERROR_TOOL: &str = "tool_error";
    /// `error.type` of an MCP server that could not be started (not
    /// spawned, not initialized, tools not listed, or too slow), on its
    /// `mcp.server.start` span and on a tool call that needed it.
    pub const ERROR_MCP_START_FAILED: &str = "start_failed";
    /// `otel.status_code` of a failed span.
    pub const STATUS_ERROR: &str = "error";
    /// `network.transport` of an MCP server spoken to over stdio.
    pub const NETWORK_TRANSPORT_PIPE: &str = "pipe";
    /// `network.transport` of an MCP server spoken to over HTTP.
    pub const NETWORK_TRANSPORT_TCP: &str = "tcp";
    /// `network.protocol.name` of an MCP request over streamable HTTP.
    pub const NETWORK_PROTOCOL_HTTP: &str = "http";
    /// `rpc.transport` over stdin/stdout.
    pub const TRANSPORT_STDIO: &str = "stdio";
    /// `rpc.transport` over WebSocket.
    pub const TRANSPORT_WEBSOCKET: &str = "websocket";
    /// `rpc.transport` over plain HTTP requests.
    pub const TRANSPORT_HTTP: &str = "http";
    /// `gen_ai.operation.name` of a model call.
    pub const GEN_AI_OPERATION_CHAT: &str = "chat";
    /// `gen_ai.provider.name` of a provider spoken to over the OpenAI API
    /// (Chat Completions).
    pub const GEN_AI_PROVIDER_OPENAI: &str = "openai";
    /// `gen_ai.provider.name` of the offline echo model.
    pub const GEN_AI_PROVIDER_SKEIN: &str = "skein";
    /// `gen_ai.token.type` of tokens read.
    pub const TOKEN_TYPE_INPUT: &str = "input";
    /// `gen_ai.token.type` of tokens written.
    pub const TOKEN_TYPE_OUTPUT: &str = "output";
    /// `error.type` of a model call the model failed.
    pub const ERROR_MODEL_FAILED: &str = "model_failed";
    /// `error.type` of a model call whose turn stopped listening.
    pub const ERROR_MODEL_ABANDONED: &str = "abandoned";
    /// `error.type` of a model call cut short by an interrupt.
    pub const ERROR_INTERRUPTED: &str = "interrupted";
    /// `error.type` of a turn whose history could not be written.
    pub const ERROR_HISTORY_WRITE: &str = "history_write_failed";
    /// `gen_ai.operation.name` of a turn span.
    pub const GEN_AI_OPERATION_INVOKE_AGENT: &str = "invoke_agent";
    /// `error.type` of a model call that timed out.
    pub const ERROR_TIMEOUT: &str = "timeout";
    /// `error.type` of a model call that could not connect, or whose
    /// connection failed before anything streamed.
    pub const ERROR_CONNECTION: &str = "connection";
    /// `error.type` of a model stream cut before it finished.
    pub const ERROR_STREAM_CUT: &str = "stream_cut";
    /// `error.type` of a model stream that reported an error event.
    pub const ERROR_STREAM_ERROR: &str = "stream_error";
    /// `error.type` of a tool call naming no configured MCP server.
    pub const ERROR_UNKNOWN_SERVER: &str = "unknown_server";
    /// `error.type` of an MCP answer that could not be read.
    pub const ERROR_UNEXPECTED_RESPONSE: &str = "unexpected_response";
}

/// Metric instrument names (exported over OTLP only).
pub mod metric {
    /// Histogram, seconds: one point per JSON-RPC request, from its arrival
    /// at the tracing layer until its response is ready.
    pub const RPC_SERVER_CALL_DURATION: &str = "rpc.server.call.duration";
    /// Histogram, seconds: one point per model call.
    pub const GEN_AI_CLIENT_OPERATION_DURATION: &str = "gen_ai.client.operation.duration";
    /// Histogram, `{token}`: the tokens of a completed model call, one
    /// point per `gen_ai.token.type`.
    pub const GEN_AI_CLIENT_TOKEN_USAGE: &str = "gen_ai.client.token.usage";
    /// Histogram, seconds: from sending a model request to its first
    /// streamed chunk.
    pub const GEN_AI_CLIENT_TIME_TO_FIRST_CHUNK: &str =
        "gen_ai.client.operation.time_to_first_chunk";
    /// Histogram, seconds: one point per turn, when it ends.
    pub const TURN_DURATION: &str = "skein.turn.duration";
    /// Counter: spans each export pipeline has dropped so far.
    pub const SPANS_DROPPED: &str = "skein.spans.dropped";
    /// Counter: spans each export pipeline delivered and its retention
    /// deleted again so far (the local store's size and age limits).
    pub const SPANS_DELETED: &str = "skein.spans.deleted";
}
