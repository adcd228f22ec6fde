//! Core's plain records: threads, turns, their items, models, errors.
//!
//! The bottom of the crate: every other module reaches down to these types,
//! and they reach up to none. They are Skein's own records, not wire shapes:
//! the app-server translates them into Codex's JSON.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::Value;
pub use skein_protocol::ToolCallStatus;
use skein_protocol::{ItemKind, TokenUsage, TurnKind, TurnStatus};

use skein_otel::names::value;

use crate::config::{ECHO_MODEL, ECHO_PROVIDER, Provider};

/// A model's description.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelInfo {
    /// The model name, as sent to its provider.
    pub name: String,
    /// The id of the provider serving it: its config table's id
    /// (`skein.provider.id`).
    pub provider: String,
    /// The provider's well-known name (`gen_ai.provider.name`): `openai`
    /// for a provider spoken to over the OpenAI API, `skein` for echo.
    pub provider_name: &'static str,
    /// Name shown to people.
    pub display_name: String,
    /// One-line description.
    pub description: String,
}

impl ModelInfo {
    /// The offline echo model.
    pub fn echo() -> Self {
        Self {
            name: ECHO_MODEL.to_owned(),
            provider: ECHO_PROVIDER.to_owned(),
            provider_name: value::GEN_AI_PROVIDER_SKEIN,
            display_name: "Echo".to_owned(),
            description: "Offline, deterministic model that streams the user's input back word \
                          by word. Input starting with /fail makes it fail."
                .to_owned(),
        }
    }

    /// `model` served by provider `provider`.
    pub fn remote(name: &str, provider: &Provider) -> Self {
        Self {
            name: name.to_owned(),
            provider: provider.id.clone(),
            provider_name: provider.wire_api.provider_name(),
            display_name: name.to_owned(),
            description: format!("{name} via {}", provider.name),
        }
    }

    /// Whether this is the offline echo model.
    pub fn is_echo(&self) -> bool {
        self.provider == ECHO_PROVIDER
    }
}

/// A thread's metadata.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ThreadInfo {
    /// Stable id (a UUIDv7, so ids sort by creation time).
    pub id: String,
    /// The model the thread uses.
    pub model: ModelInfo,
    /// The first user message, shortened; empty until there is one.
    pub preview: String,
    /// Creation time, seconds since the Unix epoch.
    pub created_at: i64,
    /// Last change, seconds since the Unix epoch.
    pub updated_at: i64,
    /// Kept in memory only, never written.
    pub ephemeral: bool,
    /// The name set with `thread/name/set`, if any.
    pub name: Option<String>,
    /// Archived threads are hidden from listings unless asked for.
    pub archived: bool,
    /// The thread this one was forked from, if it was.
    pub forked_from_id: Option<String>,
}

/// One turn of a thread's history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TurnRecord {
    /// The turn's id.
    pub id: String,
    /// Its kind.
    pub kind: TurnKind,
    /// How it ended (or `InProgress`).
    pub status: TurnStatus,
    /// The user's input.
    pub input: String,
    /// The agent's answer (partial if interrupted).
    pub output: String,
    /// Why it failed.
    pub error: Option<String>,
    /// Tokens used.
    pub usage: TokenUsage,
    /// The trace the turn span belongs to.
    pub trace_id: Option<String>,
    /// The turn span's id.
    pub span_id: Option<String>,
    /// Agent messages, tool calls and results after the input (empty for
    /// echo turns).
    pub items: Vec<TurnItem>,
}

/// Why a thread operation failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ThreadError {
    /// No thread has this id.
    #[error("no thread with id {0:?}")]
    NotFound(String),
    /// The model is not offered.
    #[error("unknown model {0}; `model/list` shows the available ones")]
    UnknownModel(String),
    /// No provider has this id.
    #[error("unknown model provider {0:?}; define it under [model_providers.{0}] in config.toml")]
    UnknownProvider(String),
    /// A pagination cursor did not come from this server.
    #[error("invalid cursor {0:?}")]
    InvalidCursor(String),
    /// A turn is already running on the thread.
    #[error(
        "thread {thread_id:?} already has a running turn {turn_id:?}; interrupt it or wait for `turn/completed`"
    )]
    TurnRunning {
        /// The thread.
        thread_id: String,
        /// The running turn.
        turn_id: String,
    },
    /// The turn is not the thread's running turn.
    #[error("turn {turn_id:?} is not running on thread {thread_id:?}")]
    TurnNotRunning {
        /// The thread.
        thread_id: String,
        /// The turn asked for.
        turn_id: String,
    },
    /// The turn is not in the thread's history.
    #[error("thread {thread_id:?} has no turn {turn_id:?}")]
    TurnNotFound {
        /// The thread.
        thread_id: String,
        /// The turn asked for.
        turn_id: String,
    },
    /// The input was empty.
    #[error("input must contain at least one non-empty text item")]
    EmptyInput,
    /// A thread name was empty.
    #[error("a thread name must not be empty")]
    EmptyName,
    /// The server is shutting down.
    #[error("the server is shutting down")]
    ShuttingDown,
    /// As many turns as allowed are already running.
    #[error("server overloaded; retry later ({running} turns running, the limit)")]
    Overloaded {
        /// Turns running now.
        running: usize,
    },
    /// Another process sharing the store is writing the thread.
    #[error("{0}")]
    Busy(String),
    /// The thread store failed.
    #[error("thread store: {0}")]
    Store(String),
}

/// One page of threads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ThreadPage {
    /// Threads, newest first.
    pub threads: Vec<ThreadInfo>,
    /// Cursor for the next page, when there is one.
    pub next_cursor: Option<String>,
}

/// A turn that was accepted and submitted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StartedTurn {
    /// The new turn's id.
    pub turn_id: String,
}

/// An item of a turn after the user's input.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    tag = "type",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
pub enum TurnItem {
    /// Input steered into the running turn (`turn/steer`).
    UserMessage {
        /// The item id: [`steered_item_id`] of the turn and the item's
        /// position. Empty in history written before items had ids; readers
        /// derive it the same way.
        #[serde(default)]
        id: String,
        /// The text.
        text: String,
    },
    /// The text of one model round.
    AgentMessage {
        /// The item id.
        id: String,
        /// The text.
        text: String,
    },
    /// A tool call run through an MCP server.
    McpToolCall {
        /// The item id: the provider's call id.
        id: String,
        /// The MCP server.
        server: String,
        /// The tool.
        tool: String,
        /// The arguments (a JSON string when the model wrote invalid JSON).
        arguments: Value,
        /// How it went.
        status: ToolCallStatus,
        /// The MCP `CallToolResult`, when the tool answered.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        result: Option<Value>,
        /// Why it failed, when it did.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
}

/// The id of the user-message item of turn `turn_id`. Item ids derive from
/// the turn id, so the items of a turn read back from history carry the
/// ids its live notifications carried.
pub fn user_item_id(turn_id: &str) -> String {
    format!("{turn_id}-user")
}

/// The id of the user message steered into turn `turn_id` as its item at
/// `position` (its index among the turn's items). Derived, not random, so
/// that an item recorded without an id (history written before steered
/// input had ids) reads back with the same id every time.
pub fn steered_item_id(turn_id: &str, position: usize) -> String {
    format!("{turn_id}-steer-{position}")
}

/// The id of the item a turn produces: its agent message (or, for a
/// compaction, its context-compaction item).
pub fn answer_item_id(turn_id: &str) -> String {
    format!("{turn_id}-answer")
}

/// The kind of item a turn of `kind` produces.
pub fn answer_item_kind(kind: TurnKind) -> ItemKind {
    match kind {
        TurnKind::Compact => ItemKind::ContextCompaction,
        TurnKind::Regular | TurnKind::Review => ItemKind::AgentMessage,
    }
}

/// Milliseconds since the Unix epoch.
pub fn unix_now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or_default()
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or_default()
}
