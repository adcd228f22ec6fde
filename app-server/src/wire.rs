//! Core data to the Codex v2 wire shapes: threads, turns, items, and the
//! settings every thread result reports.
//!
//! Fields Skein has no value of its own for carry what Skein actually does:
//! turns run in the server's working directory, under no sandbox, and never
//! ask for approval.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use skein_app_server_protocol::v2::{
    ReasoningEffortOption, SandboxPolicy, Thread, ThreadStartResponse, ThreadStatus, Turn,
    TurnError,
};
use skein_core::{
    ThreadInfo, TurnItem, TurnRecord, answer_item_id, answer_item_kind, user_item_id,
};
use skein_protocol::{ItemKind, TokenUsage};

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
/// input) and the turn's answer item.
pub fn turn_to_wire(record: &TurnRecord) -> Turn {
    let mut items = Vec::with_capacity(2);
    if !record.input.is_empty() {
        items.push(json!({
            "type": "userMessage",
            "id": user_item_id(&record.id),
            "content": [{"type": "text", "text": record.input}],
        }));
    }
    if record.items.is_empty() {
        items.push(item_json(
            &answer_item_id(&record.id),
            answer_item_kind(record.kind),
            &record.output,
        ));
    } else {
        // A model-API turn: its agent messages and tool calls, in order.
        items.extend(
            record
                .items
                .iter()
                .filter(
                    |item| !matches!(item, TurnItem::AgentMessage { text, .. } if text.is_empty()),
                )
                .map(TurnItem::to_wire),
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

/// An item the model produced, in Codex's `ThreadItem` shape.
pub fn item_json(id: &str, kind: ItemKind, text: &str) -> Value {
    match kind {
        ItemKind::AgentMessage => json!({"type": "agentMessage", "id": id, "text": text}),
        ItemKind::ContextCompaction => json!({"type": "contextCompaction", "id": id}),
    }
}

/// Token counts in Codex's `TokenUsageBreakdown` shape. Skein's models
/// report input and output tokens only: cached and reasoning tokens are 0.
pub fn usage_breakdown(usage: TokenUsage) -> Value {
    json!({
        "inputTokens": usage.input_tokens,
        "outputTokens": usage.output_tokens,
        "cachedInputTokens": 0,
        "reasoningOutputTokens": 0,
        "totalTokens": usage.input_tokens.saturating_add(usage.output_tokens),
    })
}

/// The reasoning efforts every Skein model supports: only `none`.
pub fn reasoning_efforts() -> Vec<ReasoningEffortOption> {
    vec![ReasoningEffortOption {
        reasoning_effort: REASONING_EFFORT.into(),
        description: "Skein sends no reasoning effort to the model".into(),
    }]
}
