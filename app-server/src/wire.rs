//! Core data to the Codex v2 wire shapes: threads, turns, items, the
//! notifications of core events, and the settings every thread result
//! reports. The one place that knows both core's records and Codex's
//! shapes: everything a client sees of a turn goes through here.
//!
//! Fields Skein has no value of its own for carry what Skein actually does:
//! turns run in the server's working directory, under no sandbox, and never
//! ask for approval.

use std::path::{Path, PathBuf};

use serde_json::Value;
use skein_app_server_protocol::v2::{
    AgentMessageDeltaNotification, ItemCompletedNotification, ItemStartedNotification,
    McpToolCallError, McpToolCallResult, McpToolCallStatus, ReasoningEffortOption, SandboxPolicy,
    ServerNotification, Thread, ThreadIdNotification, ThreadItem, ThreadNameUpdatedNotification,
    ThreadStartResponse, ThreadStatus, ThreadStatusChangedNotification, ThreadTokenUsage,
    ThreadTokenUsageUpdatedNotification, TokenUsageBreakdown, Turn, TurnCompletedNotification,
    TurnError, TurnItemsView, TurnStartedNotification, UserInput,
};
use skein_core::{
    ThreadInfo, TurnItem, TurnRecord, answer_item_id, answer_item_kind, steered_item_id,
    user_item_id,
};
use skein_protocol::{Event, EventMsg, ItemKind, TokenUsage, TurnStatus};

/// The server's version, as `cliVersion` and in `userAgent`.
pub const SERVER_VERSION: &str = env!("CARGO_PKG_VERSION");

/// `thread.source` of every Skein thread: created through this app-server.
pub const THREAD_SOURCE: &str = "appServer";
/// `approvalPolicy`: Skein never asks the client to approve anything.
pub const APPROVAL_POLICY: &str = "never";
/// `approvalsReviewer`: the Codex default; Skein sends no approval requests.
pub const APPROVALS_REVIEWER: &str = "user";
/// The reasoning effort of every model: Skein sends no reasoning effort to
/// any model.
pub const REASONING_EFFORT: &str = "none";

/// Facts about the running server that thread and initialize results
/// report, read once at start.
#[derive(Clone, Debug)]
pub struct ServerEnv {
    /// The working directory, absolute.
    pub cwd: String,
    /// `$SKEIN_HOME`, absolute.
    pub home: String,
}

impl ServerEnv {
    /// Reads the working directory and `$SKEIN_HOME`.
    pub fn detect() -> Self {
        let cwd = std::env::current_dir().unwrap_or_else(|err| {
            tracing::warn!(%err, "cannot read the working directory; reporting /");
            PathBuf::from("/")
        });
        let home = crate::paths::skein_home()
            .map(|home| absolute(&cwd, &home))
            .unwrap_or_else(|err| {
                tracing::warn!(%err, "no SKEIN_HOME; reporting the working directory as home");
                cwd.clone()
            });
        Self {
            cwd: cwd.display().to_string(),
            home: home.display().to_string(),
        }
    }
}

fn absolute(base: &Path, path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_owned()
    } else {
        base.join(path)
    }
}

/// A thread as clients see it, with `turns` (empty unless asked for).
pub fn thread_to_wire(
    info: &ThreadInfo,
    turns: &[TurnRecord],
    status: skein_protocol::ThreadStatus,
    env: &ServerEnv,
) -> Thread {
    Thread {
        id: info.id.clone(),
        session_id: info.id.clone(),
        name: info.name.clone(),
        status: ThreadStatus::from(status),
        cwd: env.cwd.clone(),
        cli_version: SERVER_VERSION.into(),
        source: THREAD_SOURCE.into(),
        project_id: None,
        preview: info.preview.clone(),
        model: info.model.name.clone(),
        model_provider: info.model.provider.clone(),
        created_at: info.created_at,
        updated_at: info.updated_at,
        ephemeral: info.ephemeral,
        turns: turns.iter().map(turn_to_wire).collect(),
        forked_from_id: info.forked_from_id.clone(),
    }
}

/// The result of `thread/start`, `thread/resume` and `thread/fork`.
pub fn thread_response(thread: Thread, info: &ThreadInfo, env: &ServerEnv) -> ThreadStartResponse {
    ThreadStartResponse {
        thread,
        model: info.model.name.to_owned(),
        model_provider: info.model.provider.to_owned(),
        cwd: env.cwd.clone(),
        approval_policy: APPROVAL_POLICY.into(),
        approvals_reviewer: APPROVALS_REVIEWER.into(),
        sandbox: SandboxPolicy::DangerFullAccess,
    }
}

/// A turn from history with its items: the user's message (when there was
/// input), then the turn's answer item, or for a model-API turn its items
/// in order (agent messages, steered input, tool calls).
pub fn turn_to_wire(record: &TurnRecord) -> Turn {
    let mut items = Vec::with_capacity(1 + record.items.len().max(1));
    if !record.input.is_empty() {
        items.push(answer_item(
            user_item_id(&record.id),
            ItemKind::UserMessage,
            record.input.clone(),
        ));
    }
    if record.items.is_empty() {
        items.push(answer_item(
            answer_item_id(&record.id),
            answer_item_kind(record.kind),
            record.output.clone(),
        ));
    } else {
        items.extend(
            record
                .items
                .iter()
                .enumerate()
                .filter(|(_, item)| shown(item))
                .map(|(position, item)| item_to_wire(&record.id, position, item)),
        );
    }
    Turn {
        id: record.id.clone(),
        status: record.status,
        items,
        error: record.error.clone().map(|message| TurnError { message }),
        trace_id: record.trace_id.clone(),
        span_id: record.span_id.clone(),
        items_view: None,
    }
}

/// Whether a recorded item is shown to clients: all but the empty agent
/// message of a round that only called tools.
fn shown(item: &TurnItem) -> bool {
    !matches!(item, TurnItem::AgentMessage { text, .. } if text.is_empty())
}

/// Item `position` of turn `turn_id`'s recorded items. A steered message
/// recorded before items had ids gets the id it would have been given:
/// derived from the turn and the position, so it is the same on every read.
pub fn item_to_wire(turn_id: &str, position: usize, item: &TurnItem) -> ThreadItem {
    match item {
        TurnItem::UserMessage { id, text } => {
            let id = if id.is_empty() {
                steered_item_id(turn_id, position)
            } else {
                id.clone()
            };
            answer_item(id, ItemKind::UserMessage, text.clone())
        }
        TurnItem::AgentMessage { id, text } => {
            answer_item(id.clone(), ItemKind::AgentMessage, text.clone())
        }
        TurnItem::McpToolCall {
            id,
            server,
            tool,
            arguments,
            status,
            result,
            error,
        } => mcp_tool_call_item(
            id.clone(),
            server.clone(),
            tool.clone(),
            *status,
            arguments.clone(),
            result.clone(),
            error.clone(),
        ),
    }
}

/// An item of a turn as core events name it: the user's message, an agent
/// message with `text`, or a context compaction.
pub fn answer_item(id: String, kind: ItemKind, text: String) -> ThreadItem {
    match kind {
        ItemKind::UserMessage => ThreadItem::UserMessage {
            id,
            content: vec![UserInput::Text { text }],
        },
        ItemKind::AgentMessage => ThreadItem::AgentMessage { id, text },
        ItemKind::ContextCompaction => ThreadItem::ContextCompaction { id },
    }
}

/// An `mcpToolCall` item. `result` is the MCP `CallToolResult` as the
/// server sent it.
pub fn mcp_tool_call_item(
    id: String,
    server: String,
    tool: String,
    status: McpToolCallStatus,
    arguments: Value,
    result: Option<Value>,
    error: Option<String>,
) -> ThreadItem {
    ThreadItem::McpToolCall {
        id,
        server,
        tool,
        status,
        arguments,
        result: result.map(mcp_result),
        error: error.map(|message| McpToolCallError { message }),
    }
}

/// An MCP `CallToolResult` in Codex's `McpToolCallResult` shape. A result
/// without `content` (which MCP requires) gets an empty one.
pub fn mcp_result(result: Value) -> McpToolCallResult {
    let Value::Object(mut fields) = result else {
        return McpToolCallResult::default();
    };
    McpToolCallResult {
        content: match fields.remove("content") {
            Some(Value::Array(content)) => content,
            _ => Vec::new(),
        },
        structured_content: fields.remove("structuredContent").filter(|v| !v.is_null()),
        is_error: fields.remove("isError").and_then(|v| v.as_bool()),
        meta: fields.remove("_meta").filter(|v| !v.is_null()),
    }
}

/// A turn as `turn/started` and `turn/completed` carry it: no items.
pub fn turn_summary(id: String, status: TurnStatus, error: Option<String>) -> Turn {
    Turn {
        id,
        status,
        items: Vec::new(),
        error: error.map(|message| TurnError { message }),
        trace_id: None,
        span_id: None,
        items_view: None,
    }
}

/// Token counts in Codex's `TokenUsageBreakdown` shape. Skein's models
/// report input and output tokens only: cached, cache-write and reasoning
/// tokens are 0.
pub fn usage_breakdown(usage: TokenUsage) -> TokenUsageBreakdown {
    TokenUsageBreakdown {
        input_tokens: usage.input_tokens,
        output_tokens: usage.output_tokens,
        cached_input_tokens: 0,
        cache_write_input_tokens: 0,
        reasoning_output_tokens: 0,
        total_tokens: usage.input_tokens.saturating_add(usage.output_tokens),
    }
}

/// The notification a core event becomes, or `None` for an event clients
/// do not hear about (the loop's shutdown). Takes the event by value: its
/// strings move into the notification, nothing is copied.
pub fn notification(event: Event) -> Option<ServerNotification> {
    let Event {
        thread_id,
        msg,
        at_ms,
        ..
    } = event;
    Some(match msg {
        EventMsg::TurnStarted { turn_id, .. } => {
            ServerNotification::TurnStarted(TurnStartedNotification {
                thread_id,
                turn: turn_summary(turn_id, TurnStatus::InProgress, None),
            })
        }
        EventMsg::ItemStarted {
            turn_id,
            item_id,
            kind,
            text,
        } => ServerNotification::ItemStarted(ItemStartedNotification {
            thread_id,
            turn_id,
            item: answer_item(item_id, kind, text),
            started_at_ms: at_ms,
        }),
        EventMsg::AgentMessageDelta {
            turn_id,
            item_id,
            delta,
        } => ServerNotification::AgentMessageDelta(AgentMessageDeltaNotification {
            thread_id,
            turn_id,
            item_id,
            delta,
        }),
        EventMsg::ItemCompleted {
            turn_id,
            item_id,
            kind,
            text,
        } => ServerNotification::ItemCompleted(ItemCompletedNotification {
            thread_id,
            turn_id,
            item: answer_item(item_id, kind, text),
            completed_at_ms: at_ms,
        }),
        EventMsg::McpToolCallStarted {
            turn_id,
            item_id,
            server,
            tool,
            arguments,
        } => ServerNotification::ItemStarted(ItemStartedNotification {
            thread_id,
            turn_id,
            item: mcp_tool_call_item(
                item_id,
                server,
                tool,
                McpToolCallStatus::InProgress,
                arguments,
                None,
                None,
            ),
            started_at_ms: at_ms,
        }),
        EventMsg::McpToolCallCompleted {
            turn_id,
            item_id,
            server,
            tool,
            arguments,
            status,
            result,
            error,
        } => ServerNotification::ItemCompleted(ItemCompletedNotification {
            thread_id,
            turn_id,
            item: mcp_tool_call_item(item_id, server, tool, status, arguments, result, error),
            completed_at_ms: at_ms,
        }),
        EventMsg::TurnCompleted {
            turn_id,
            status,
            error,
            usage,
            items,
        } => {
            let mut turn = turn_summary(turn_id, status, error);
            turn.items = items
                .into_iter()
                .map(|item| answer_item(item.item_id, item.kind, item.text))
                .collect();
            turn.items_view = Some(TurnItemsView::Summary);
            ServerNotification::TurnCompleted(TurnCompletedNotification {
                thread_id,
                turn,
                usage,
            })
        }
        EventMsg::ThreadNameUpdated { name } => {
            ServerNotification::ThreadNameUpdated(ThreadNameUpdatedNotification {
                thread_id,
                thread_name: name,
            })
        }
        EventMsg::ThreadArchived => {
            ServerNotification::ThreadArchived(ThreadIdNotification { thread_id })
        }
        EventMsg::ThreadUnarchived => {
            ServerNotification::ThreadUnarchived(ThreadIdNotification { thread_id })
        }
        EventMsg::ThreadStatusChanged { status } => {
            ServerNotification::ThreadStatusChanged(ThreadStatusChangedNotification {
                thread_id,
                status: ThreadStatus::from(status),
            })
        }
        EventMsg::TokenUsageUpdated {
            turn_id,
            last,
            total,
            model_context_window,
        } => ServerNotification::ThreadTokenUsageUpdated(ThreadTokenUsageUpdatedNotification {
            thread_id,
            turn_id,
            token_usage: ThreadTokenUsage {
                total: usage_breakdown(total),
                last: usage_breakdown(last),
                model_context_window,
            },
        }),
        EventMsg::ShutdownComplete => return None,
    })
}

/// The reasoning efforts every Skein model supports: only `none`.
pub fn reasoning_efforts() -> Vec<ReasoningEffortOption> {
    vec![ReasoningEffortOption {
        reasoning_effort: REASONING_EFFORT.into(),
        description: "Skein sends no reasoning effort to the model".into(),
    }]
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use skein_protocol::{TurnKind, W3cTraceContext};

    use super::*;

    fn record(items: Vec<TurnItem>) -> TurnRecord {
        TurnRecord {
            id: "t1".into(),
            kind: TurnKind::Regular,
            status: TurnStatus::Completed,
            input: "what time is it?".into(),
            output: "noon".into(),
            error: None,
            usage: TokenUsage::default(),
            trace_id: None,
            span_id: None,
            items,
        }
    }

    #[test]
    fn a_model_turn_reads_back_with_every_item_in_order_and_an_id_on_each() {
        // As read from a history line written before steered messages had
        // ids.
        let items: Vec<TurnItem> = serde_json::from_value(json!([
            {"type": "agentMessage", "id": "a1", "text": ""},
            {"type": "mcpToolCall", "id": "call_1", "server": "time", "tool": "now",
             "arguments": {"tz": "UTC"}, "status": "completed",
             "result": {"content": [{"type": "text", "text": "12:00"}], "isError": false}},
            {"type": "userMessage", "text": "and in Paris?"},
            {"type": "agentMessage", "id": "a2", "text": "noon"},
        ]))
        .expect("recorded items");
        let turn = turn_to_wire(&record(items));
        let json = serde_json::to_value(&turn).expect("serialize");
        assert_eq!(
            json["items"],
            json!([
                {"type": "userMessage", "id": "t1-user",
                 "content": [{"type": "text", "text": "what time is it?"}]},
                {"type": "mcpToolCall", "id": "call_1", "server": "time", "tool": "now",
                 "status": "completed", "arguments": {"tz": "UTC"},
                 "result": {"content": [{"type": "text", "text": "12:00"}], "isError": false},
                 "error": null},
                {"type": "userMessage", "id": "t1-steer-2",
                 "content": [{"type": "text", "text": "and in Paris?"}]},
                {"type": "agentMessage", "id": "a2", "text": "noon"},
            ])
        );
        // The derived id is the one a new record is written with, and the
        // same on every read.
        assert_eq!(turn.items[2].id(), steered_item_id("t1", 2));
        let again: Vec<TurnItem> = serde_json::from_value(json!([
            {"type": "agentMessage", "id": "a1", "text": ""},
            {"type": "mcpToolCall", "id": "call_1", "server": "time", "tool": "now",
             "arguments": {}, "status": "completed"},
            {"type": "userMessage", "text": "and in Paris?"},
        ]))
        .expect("recorded items");
        assert_eq!(turn_to_wire(&record(again)).items[2].id(), "t1-steer-2");
        let written = TurnItem::UserMessage {
            id: "kept".into(),
            text: "x".into(),
        };
        assert_eq!(item_to_wire("t1", 5, &written).id(), "kept");
    }

    #[test]
    fn an_echo_turn_reads_back_as_its_input_and_its_answer() {
        let mut compaction = record(Vec::new());
        compaction.kind = TurnKind::Compact;
        compaction.input = String::new();
        let json = serde_json::to_value(turn_to_wire(&compaction)).expect("serialize");
        assert_eq!(
            json["items"],
            json!([{"type": "contextCompaction", "id": "t1-answer"}])
        );
        let json = serde_json::to_value(turn_to_wire(&record(Vec::new()))).expect("serialize");
        assert_eq!(
            json["items"][1],
            json!({"type": "agentMessage", "id": "t1-answer", "text": "noon"})
        );
    }

    #[test]
    fn a_tool_result_without_content_gets_an_empty_one() {
        assert_eq!(
            mcp_result(json!({"isError": true})).content,
            Vec::<Value>::new()
        );
        assert_eq!(
            mcp_result(json!("not an object")),
            McpToolCallResult::default()
        );
        let full =
            mcp_result(json!({"content": [], "structuredContent": {"a": 1}, "_meta": {"m": 2}}));
        assert_eq!(
            serde_json::to_value(full).expect("serialize"),
            json!({"content": [], "structuredContent": {"a": 1}, "_meta": {"m": 2}})
        );
    }

    fn event(msg: EventMsg) -> Event {
        Event {
            thread_id: "th".into(),
            msg,
            trace: Some(W3cTraceContext::from_traceparent("00-x-y-01")),
            at_ms: 1_700_000_000_123,
        }
    }

    fn params(msg: EventMsg) -> (&'static str, Value) {
        let n = notification(event(msg)).expect("a notification");
        (n.method(), serde_json::to_value(&n).expect("serialize"))
    }

    #[test]
    fn events_become_their_codex_notifications() {
        assert_eq!(
            params(EventMsg::TurnStarted {
                turn_id: "t1".into(),
                kind: TurnKind::Regular
            }),
            (
                "turn/started",
                json!({"threadId": "th", "turn": {"id": "t1", "status": "inProgress", "items": []}})
            )
        );
        assert_eq!(
            params(EventMsg::AgentMessageDelta {
                turn_id: "t1".into(),
                item_id: "a1".into(),
                delta: "hi".into()
            }),
            (
                "item/agentMessage/delta",
                json!({"threadId": "th", "turnId": "t1", "itemId": "a1", "delta": "hi"})
            )
        );
        assert_eq!(
            params(EventMsg::ItemStarted {
                turn_id: "t1".into(),
                item_id: "a1".into(),
                kind: ItemKind::AgentMessage,
                text: String::new()
            }),
            (
                "item/started",
                json!({"threadId": "th", "turnId": "t1", "startedAtMs": 1_700_000_000_123_i64,
                       "item": {"type": "agentMessage", "id": "a1", "text": ""}})
            )
        );
        for (method, msg) in [
            (
                "item/started",
                EventMsg::ItemStarted {
                    turn_id: "t1".into(),
                    item_id: "t1-user".into(),
                    kind: ItemKind::UserMessage,
                    text: "hello".into(),
                },
            ),
            (
                "item/completed",
                EventMsg::ItemCompleted {
                    turn_id: "t1".into(),
                    item_id: "t1-user".into(),
                    kind: ItemKind::UserMessage,
                    text: "hello".into(),
                },
            ),
        ] {
            let (name, params) = params(msg);
            assert_eq!(name, method);
            assert_eq!(
                params["item"],
                json!({"type": "userMessage", "id": "t1-user",
                       "content": [{"type": "text", "text": "hello"}]})
            );
        }
        assert_eq!(
            params(EventMsg::ItemCompleted {
                turn_id: "t1".into(),
                item_id: "c1".into(),
                kind: ItemKind::ContextCompaction,
                text: "summary".into()
            }),
            (
                "item/completed",
                json!({"threadId": "th", "turnId": "t1", "completedAtMs": 1_700_000_000_123_i64,
                       "item": {"type": "contextCompaction", "id": "c1"}})
            )
        );
        assert_eq!(
            params(EventMsg::McpToolCallStarted {
                turn_id: "t1".into(),
                item_id: "call_1".into(),
                server: "time".into(),
                tool: "now".into(),
                arguments: json!({"tz": "UTC"})
            }),
            (
                "item/started",
                json!({"threadId": "th", "turnId": "t1", "startedAtMs": 1_700_000_000_123_i64,
                       "item": {"type": "mcpToolCall", "id": "call_1", "server": "time",
                                "tool": "now", "status": "inProgress",
                                "arguments": {"tz": "UTC"}, "result": null, "error": null}})
            )
        );
        assert_eq!(
            params(EventMsg::McpToolCallCompleted {
                turn_id: "t1".into(),
                item_id: "call_1".into(),
                server: "time".into(),
                tool: "now".into(),
                arguments: json!("{bad"),
                status: skein_core::ToolCallStatus::Failed,
                result: None,
                error: Some("the arguments are not valid JSON".into())
            }),
            (
                "item/completed",
                json!({"threadId": "th", "turnId": "t1", "completedAtMs": 1_700_000_000_123_i64,
                       "item": {"type": "mcpToolCall", "id": "call_1", "server": "time",
                                "tool": "now", "status": "failed", "arguments": "{bad",
                                "result": null,
                                "error": {"message": "the arguments are not valid JSON"}}})
            )
        );
        assert_eq!(
            params(EventMsg::TurnCompleted {
                turn_id: "t1".into(),
                status: TurnStatus::Failed,
                error: Some("boom".into()),
                usage: TokenUsage {
                    input_tokens: 3,
                    output_tokens: 4
                },
                items: vec![
                    skein_protocol::ItemSummary {
                        item_id: "t1-user".into(),
                        kind: ItemKind::UserMessage,
                        text: "hi".into(),
                    },
                    skein_protocol::ItemSummary {
                        item_id: "t1-answer".into(),
                        kind: ItemKind::AgentMessage,
                        text: "partial".into(),
                    },
                ],
            }),
            (
                "turn/completed",
                json!({"threadId": "th",
                       "turn": {"id": "t1", "status": "failed", "itemsView": "summary",
                                "items": [
                                    {"type": "userMessage", "id": "t1-user",
                                     "content": [{"type": "text", "text": "hi"}]},
                                    {"type": "agentMessage", "id": "t1-answer", "text": "partial"}],
                                "error": {"message": "boom"}},
                       "usage": {"inputTokens": 3, "outputTokens": 4}})
            )
        );
        assert_eq!(
            params(EventMsg::ThreadStatusChanged {
                status: skein_protocol::ThreadStatus::Active
            }),
            (
                "thread/status/changed",
                json!({"threadId": "th", "status": {"type": "active", "activeFlags": []}})
            )
        );
        let usage = |i, o| TokenUsage {
            input_tokens: i,
            output_tokens: o,
        };
        assert_eq!(
            params(EventMsg::TokenUsageUpdated {
                turn_id: "t1".into(),
                last: usage(1, 2),
                total: usage(10, 20),
                model_context_window: Some(128_000)
            }),
            (
                "thread/tokenUsage/updated",
                json!({"threadId": "th", "turnId": "t1", "tokenUsage": {
                    "total": {"inputTokens": 10, "outputTokens": 20, "cachedInputTokens": 0,
                              "cacheWriteInputTokens": 0,
                              "reasoningOutputTokens": 0, "totalTokens": 30},
                    "last": {"inputTokens": 1, "outputTokens": 2, "cachedInputTokens": 0,
                             "cacheWriteInputTokens": 0,
                             "reasoningOutputTokens": 0, "totalTokens": 3},
                    "modelContextWindow": 128_000}})
            )
        );
        assert!(notification(event(EventMsg::ShutdownComplete)).is_none());
    }
}
