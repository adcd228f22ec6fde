//! The v2 method types: parameters, results and notifications, in the
//! camelCase shapes of the Codex app-server v2 protocol.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Who the client is, as sent in `initialize`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClientInfo {
    /// The client's machine name, e.g. `skein-vscode`.
    pub name: String,
    /// A human-readable title.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// The client's version.
    pub version: String,
}

/// Parameters of `initialize`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InitializeParams {
    /// Who the client is.
    pub client_info: ClientInfo,
    /// What the client supports; accepted and currently unused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<Value>,
}

/// The server's name and version.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServerInfo {
    /// Always `skein`.
    pub name: String,
    /// The server's version.
    pub version: String,
}

/// Result of `initialize`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InitializeResponse {
    /// The server's user agent, `skein/<version>`.
    pub user_agent: String,
    /// The server's name and version.
    pub server_info: ServerInfo,
}

/// Parameters of `model/list`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ModelListParams {
    /// Opaque cursor from a previous page.
    #[serde(default)]
    pub cursor: Option<String>,
    /// Page size.
    #[serde(default)]
    pub limit: Option<u32>,
}

/// A model a thread can use.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Model {
    /// Stable id.
    pub id: String,
    /// The model name sent to the provider.
    pub model: String,
    /// Name shown to people.
    pub display_name: String,
    /// One-line description.
    pub description: String,
    /// The provider serving it.
    pub provider: String,
    /// Whether threads use it when none is named.
    pub is_default: bool,
}

/// Result of `model/list`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ModelListResponse {
    /// The models.
    pub data: Vec<Model>,
    /// Cursor for the next page, if any.
    pub next_cursor: Option<String>,
}

/// A thread as clients see it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Thread {
    /// Stable id.
    pub id: String,
    /// The first user message, shortened; empty for a new thread.
    pub preview: String,
    /// The model the thread uses.
    pub model: String,
    /// The provider serving the model.
    pub model_provider: String,
    /// Creation time, seconds since the Unix epoch.
    pub created_at: i64,
    /// Last change, seconds since the Unix epoch.
    pub updated_at: i64,
    /// Whether the thread is kept only in memory.
    pub ephemeral: bool,
    /// The thread's turns; filled only when asked for.
    #[serde(default)]
    pub turns: Vec<Turn>,
}

/// Parameters of `thread/start`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ThreadStartParams {
    /// The model to use; the default model when absent.
    #[serde(default)]
    pub model: Option<String>,
    /// The provider serving it (a `model_providers` id of config.toml,
    /// `openai`, or `skein` for the offline echo); the default when absent.
    #[serde(default)]
    pub model_provider: Option<String>,
    /// Keep the thread in memory only.
    #[serde(default)]
    pub ephemeral: Option<bool>,
}

/// Result of `thread/start`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ThreadStartResponse {
    /// The new thread.
    pub thread: Thread,
    /// The model it uses.
    pub model: String,
    /// The provider serving the model.
    pub model_provider: String,
}

/// Params of the `thread/started` notification.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ThreadStartedNotification {
    /// The new thread.
    pub thread: Thread,
}

/// Parameters of `thread/list`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ThreadListParams {
    /// Opaque cursor from a previous page.
    #[serde(default)]
    pub cursor: Option<String>,
    /// Page size (default 50, at most 500).
    #[serde(default)]
    pub limit: Option<u32>,
}

/// Result of `thread/list`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ThreadListResponse {
    /// Threads, newest first.
    pub data: Vec<Thread>,
    /// Cursor for the next page, if any.
    pub next_cursor: Option<String>,
}

/// Parameters of `thread/read`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ThreadReadParams {
    /// The thread to read.
    pub thread_id: String,
    /// Include the thread's turns.
    #[serde(default)]
    pub include_turns: bool,
}

/// Result of `thread/read`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ThreadReadResponse {
    /// The thread.
    pub thread: Thread,
}

/// One input item of a turn.
pub use skein_protocol::UserInput;

/// A turn as clients see it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Turn {
    /// Stable id.
    pub id: String,
    /// `inProgress`, `completed`, `interrupted` or `failed`.
    pub status: skein_protocol::TurnStatus,
    /// The turn's items (filled by `thread/read` with `includeTurns`).
    pub items: Vec<Value>,
    /// Why the turn failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<TurnError>,
    /// The trace of the turn span, for jumping from history to the trace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    /// The turn span's id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub span_id: Option<String>,
}

/// A turn's failure.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TurnError {
    /// What went wrong.
    pub message: String,
}

/// Parameters naming just a thread: `thread/resume`, `thread/unsubscribe`,
/// `review/start`, `thread/compact/start`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ThreadIdParams {
    /// The thread.
    pub thread_id: String,
}

/// Parameters of `thread/fork`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ThreadForkParams {
    /// The thread to fork.
    pub thread_id: String,
    /// Copy history up to and including this turn; all of it when absent.
    #[serde(default)]
    pub turn_id: Option<String>,
}

/// Parameters of `turn/start`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TurnStartParams {
    /// The thread.
    pub thread_id: String,
    /// The user's input.
    pub input: Vec<UserInput>,
    /// Switch the thread to this model, from this turn on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Switch the thread to this provider, from this turn on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_provider: Option<String>,
}

/// Parameters of `turn/steer`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TurnSteerParams {
    /// The thread.
    pub thread_id: String,
    /// The running turn.
    pub turn_id: String,
    /// The extra input.
    pub input: Vec<UserInput>,
}

/// Parameters of `turn/interrupt`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TurnInterruptParams {
    /// The thread.
    pub thread_id: String,
    /// The running turn.
    pub turn_id: String,
}

/// Result of `turn/start`, `review/start` and `thread/compact/start`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TurnStartResponse {
    /// The new turn, `inProgress`.
    pub turn: Turn,
}
