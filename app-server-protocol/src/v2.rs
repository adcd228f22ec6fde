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
    /// The server's home directory (`$SKEIN_HOME`), absolute. Codex calls
    /// its own `codexHome`.
    pub codex_home: String,
    /// The platform family the server runs on (`unix`, `windows`).
    pub platform_family: String,
    /// The operating system the server runs on (`linux`, `macos`, ...).
    pub platform_os: String,
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
    /// Whether pickers should hide it.
    pub hidden: bool,
    /// The reasoning efforts a client may ask for.
    pub supported_reasoning_efforts: Vec<ReasoningEffortOption>,
    /// The effort used when none is asked for.
    pub default_reasoning_effort: String,
}

/// A reasoning effort a model supports.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReasoningEffortOption {
    /// The effort's name, e.g. `none`, `low`, `high`.
    pub reasoning_effort: String,
    /// What it means.
    pub description: String,
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
    /// The session tree the thread belongs to. Every Skein thread is its
    /// own session, so this is the thread's id.
    pub session_id: String,
    /// The name set with `thread/name/set`, if any.
    pub name: Option<String>,
    /// Whether the thread is running, idle, or not loaded in this server.
    pub status: ThreadStatus,
    /// The server's working directory (Skein has no per-thread one).
    pub cwd: String,
    /// Version of the server that reports the thread.
    pub cli_version: String,
    /// How the thread was created: always `appServer`.
    pub source: String,
    /// Project assignment; Skein has no projects, so always `null`.
    pub project_id: Option<String>,
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
    /// The thread this one was forked from, if it was.
    #[serde(default)]
    pub forked_from_id: Option<String>,
}

/// A thread's status, as `thread.status` and `thread/status/changed` carry
/// it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    tag = "type",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
pub enum ThreadStatus {
    /// Not loaded in this server.
    NotLoaded,
    /// Loaded, no turn running.
    Idle,
    /// The thread failed to load (never reported by Skein today).
    SystemError,
    /// A turn is running.
    Active {
        /// Why the turn is waiting, if it is (Skein's turns never wait on
        /// approvals or user input, so always empty).
        active_flags: Vec<String>,
    },
}

impl From<skein_protocol::ThreadStatus> for ThreadStatus {
    fn from(status: skein_protocol::ThreadStatus) -> Self {
        match status {
            skein_protocol::ThreadStatus::NotLoaded => ThreadStatus::NotLoaded,
            skein_protocol::ThreadStatus::Idle => ThreadStatus::Idle,
            skein_protocol::ThreadStatus::Active => ThreadStatus::Active {
                active_flags: Vec::new(),
            },
        }
    }
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

/// Result of `thread/start`, `thread/resume` and `thread/fork`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ThreadStartResponse {
    /// The new thread.
    pub thread: Thread,
    /// The model it uses.
    pub model: String,
    /// The provider serving the model.
    pub model_provider: String,
    /// The working directory turns run in: the server's.
    pub cwd: String,
    /// When the client is asked to approve actions: Skein never asks
    /// (`never`).
    pub approval_policy: String,
    /// Who reviews approval requests (`user`; Skein sends none).
    pub approvals_reviewer: String,
    /// The sandbox turns run in: Skein runs no sandbox.
    pub sandbox: SandboxPolicy,
}

/// The sandbox policy a thread's turns run under.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum SandboxPolicy {
    /// No sandbox: what Skein does.
    DangerFullAccess,
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
    /// List only archived threads (by default only unarchived ones).
    #[serde(default)]
    pub archived: Option<bool>,
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
    pub items: Vec<ThreadItem>,
    /// Why the turn failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<TurnError>,
    /// The trace of the turn span, for jumping from history to the trace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    /// The turn span's id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub span_id: Option<String>,
    /// How much of `items` is filled (`full`, or `notLoaded` when items were
    /// not asked for); absent where the items are simply the turn's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub items_view: Option<TurnItemsView>,
}

/// A turn's failure.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TurnError {
    /// What went wrong.
    pub message: String,
}

/// An item of a turn, in Codex's `ThreadItem` shape: the variants Skein
/// produces.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(
    tag = "type",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
pub enum ThreadItem {
    /// What the user said: a turn's input, or input steered into it.
    UserMessage {
        /// Stable id.
        id: String,
        /// The input.
        content: Vec<UserInput>,
    },
    /// Text the model wrote.
    AgentMessage {
        /// Stable id.
        id: String,
        /// The text (empty in `item/started`).
        text: String,
    },
    /// The thread's history was compacted.
    ContextCompaction {
        /// Stable id.
        id: String,
    },
    /// A tool call through an MCP server.
    McpToolCall {
        /// Stable id: the model's call id.
        id: String,
        /// The MCP server.
        server: String,
        /// The tool.
        tool: String,
        /// How the call is going.
        status: McpToolCallStatus,
        /// The arguments (a JSON string when the model wrote invalid JSON).
        arguments: Value,
        /// What the tool answered, once it did; `null` before.
        result: Option<McpToolCallResult>,
        /// Why the call failed, when it did; `null` otherwise.
        error: Option<McpToolCallError>,
    },
}

impl ThreadItem {
    /// The item's id.
    pub fn id(&self) -> &str {
        match self {
            ThreadItem::UserMessage { id, .. }
            | ThreadItem::AgentMessage { id, .. }
            | ThreadItem::ContextCompaction { id }
            | ThreadItem::McpToolCall { id, .. } => id,
        }
    }
}

/// How an MCP tool call is going: core's status, whose serialized names
/// (`inProgress`, `completed`, `failed`) are Codex's.
pub use skein_protocol::ToolCallStatus as McpToolCallStatus;

/// What an MCP tool answered: its `CallToolResult`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct McpToolCallResult {
    /// The content blocks, as the server sent them.
    #[serde(default)]
    pub content: Vec<Value>,
    /// The structured result, when the tool gave one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub structured_content: Option<Value>,
    /// Whether the tool reported an error (MCP's `isError`); absent when
    /// the server did not say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_error: Option<bool>,
    /// The result's `_meta`, when the server sent one.
    #[serde(default, rename = "_meta", skip_serializing_if = "Option::is_none")]
    pub meta: Option<Value>,
}

/// Why an MCP tool call failed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct McpToolCallError {
    /// What went wrong.
    pub message: String,
}

/// Parameters naming just a thread: `thread/unsubscribe`,
/// `thread/compact/start`, `thread/archive`, `thread/unarchive`.
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
    /// Codex calls it `lastTurnId`.
    #[serde(default, alias = "lastTurnId")]
    pub turn_id: Option<String>,
    /// Leave `thread.turns` empty in the result.
    #[serde(default)]
    pub exclude_turns: bool,
}

/// Parameters of `thread/resume`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ThreadResumeParams {
    /// The thread to resume.
    pub thread_id: String,
    /// Leave `thread.turns` empty in the result.
    #[serde(default)]
    pub exclude_turns: bool,
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
    /// The running turn: `expectedTurnId` (Codex's name) or `turnId`.
    #[serde(alias = "turnId")]
    pub expected_turn_id: String,
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

/// Parameters of `review/start`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReviewStartParams {
    /// The thread.
    pub thread_id: String,
    /// What to review. Skein reviews the thread's conversation whatever
    /// the target; it is checked and otherwise unused.
    #[serde(default)]
    pub target: Option<ReviewTarget>,
    /// Where the review runs; Skein always runs it inline, on the thread.
    #[serde(default)]
    pub delivery: Option<String>,
}

/// What a review looks at.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    tag = "type",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
pub enum ReviewTarget {
    /// The working tree's uncommitted changes.
    UncommittedChanges,
    /// The changes against a base branch.
    BaseBranch {
        /// The branch.
        branch: String,
    },
    /// One commit.
    Commit {
        /// Its sha.
        sha: String,
        /// Its title.
        #[serde(default)]
        title: Option<String>,
    },
    /// Free-form instructions.
    Custom {
        /// The instructions.
        instructions: String,
    },
}

/// Result of `review/start`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReviewStartResponse {
    /// The review turn, `inProgress`.
    pub turn: Turn,
    /// The thread the review runs on: the reviewed thread itself.
    pub review_thread_id: String,
}

/// Parameters of `thread/unsubscribe`.
pub type ThreadUnsubscribeParams = ThreadIdParams;

/// Parameters of `thread/archive`, `thread/unarchive`.
pub type ThreadArchiveParams = ThreadIdParams;

/// Parameters of `thread/name/set`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ThreadSetNameParams {
    /// The thread.
    pub thread_id: String,
    /// Its new name.
    pub name: String,
}

/// Result of `thread/unarchive`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ThreadUnarchiveResponse {
    /// The thread, unarchived.
    pub thread: Thread,
}

/// Parameters of `thread/loaded/list`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ThreadLoadedListParams {
    /// Opaque cursor from a previous page.
    #[serde(default)]
    pub cursor: Option<String>,
    /// Page size (default 50, at most 500).
    #[serde(default)]
    pub limit: Option<u32>,
}

/// Result of `thread/loaded/list`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ThreadLoadedListResponse {
    /// Ids of the threads loaded in this server, oldest first.
    pub data: Vec<String>,
    /// Cursor for the next page, if any.
    pub next_cursor: Option<String>,
}

/// Order of a paged listing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum SortDirection {
    /// Oldest first.
    Asc,
    /// Newest first (the default).
    #[default]
    Desc,
}

/// How much of each turn's items a listing carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum TurnItemsView {
    /// No items.
    NotLoaded,
    /// A display summary: the user's message and the answer (what
    /// `turn/completed` carries). `thread/turns/list` answers it with every
    /// item, which is as short.
    Summary,
    /// Every item.
    Full,
}

/// Parameters of `thread/turns/list`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ThreadTurnsListParams {
    /// The thread.
    pub thread_id: String,
    /// Opaque cursor from a previous page.
    #[serde(default)]
    pub cursor: Option<String>,
    /// Page size (default 50, at most 500).
    #[serde(default)]
    pub limit: Option<u32>,
    /// Newest first (default) or oldest first.
    #[serde(default)]
    pub sort_direction: Option<SortDirection>,
    /// How much of the items to include (all of them by default).
    #[serde(default)]
    pub items_view: Option<TurnItemsView>,
}

/// Result of `thread/turns/list`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ThreadTurnsListResponse {
    /// The turns of this page.
    pub data: Vec<Turn>,
    /// Cursor for the next page, if any.
    pub next_cursor: Option<String>,
    /// Cursor for paging back the other way from this page's first turn
    /// (included again), when the page is not empty.
    pub backwards_cursor: Option<String>,
}

/// Parameters of `account/read`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GetAccountParams {
    /// Refresh the account's token first (Skein has no account).
    #[serde(default)]
    pub refresh_token: bool,
}

/// Parameters of `config/read`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConfigReadParams {
    /// The directory whose project configuration to consider.
    #[serde(default)]
    pub cwd: Option<String>,
    /// Include the configuration layers in the result.
    #[serde(default)]
    pub include_layers: bool,
}

/// Parameters of `skills/list`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SkillsListParams {
    /// Directories to look for skills in.
    #[serde(default)]
    pub cwds: Vec<String>,
    /// Re-read skills from disk.
    #[serde(default)]
    pub force_reload: bool,
}

/// Parameters of `app/list` and `mcpServerStatus/list`: a page request.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PageParams {
    /// Opaque cursor from a previous page.
    #[serde(default)]
    pub cursor: Option<String>,
    /// Page size.
    #[serde(default)]
    pub limit: Option<u32>,
}

/// Parameters of `hooks/list`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HooksListParams {
    /// Working directories to inspect.
    #[serde(default)]
    pub cwds: Vec<String>,
    /// A loaded thread whose hooks to list.
    #[serde(default)]
    pub thread_id: Option<String>,
}

/// Result of `hooks/list`: one entry per inspected directory. Skein runs
/// no hooks, so there are none.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HooksListResponse {
    /// The hooks by directory (Codex's `HooksListEntry`; always empty).
    pub data: Vec<Value>,
}

/// Result of `collaborationMode/list`. Skein has no collaboration mode
/// presets.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CollaborationModeListResponse {
    /// The presets (Codex's `CollaborationModeMask`; always empty).
    pub data: Vec<Value>,
}

/// Parameters of `plugin/installed`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PluginInstalledParams {
    /// Directories whose repository marketplaces to consider.
    #[serde(default)]
    pub cwds: Option<Vec<String>>,
    /// Uninstalled plugins to report when present locally.
    #[serde(default)]
    pub install_suggestion_plugin_names: Option<Vec<String>>,
}

/// Result of `plugin/installed`. Skein has no plugins.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PluginInstalledResponse {
    /// Marketplaces with installed plugins (Codex's
    /// `PluginMarketplaceEntry`; always empty).
    pub marketplaces: Vec<Value>,
    /// Marketplaces that failed to load (always empty).
    pub marketplace_load_errors: Vec<Value>,
}

/// Parameters of `thread/backgroundTerminals/list`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ThreadBackgroundTerminalsListParams {
    /// The thread.
    pub thread_id: String,
    /// Opaque cursor from a previous page.
    #[serde(default)]
    pub cursor: Option<String>,
    /// Page size.
    #[serde(default)]
    pub limit: Option<u32>,
}

/// Result of `thread/backgroundTerminals/list`. Skein runs no terminals.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ThreadBackgroundTerminalsListResponse {
    /// The thread's background terminals (Codex's
    /// `ThreadBackgroundTerminal`; always empty).
    pub data: Vec<Value>,
    /// Cursor for the next page: never one.
    pub next_cursor: Option<String>,
}

/// Parameters of `thread/goal/get`.
pub type ThreadGoalGetParams = ThreadIdParams;

/// Result of `thread/goal/get`. Skein threads have no goal.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ThreadGoalGetResponse {
    /// The thread's goal (Codex's `ThreadGoal`): always `null`.
    pub goal: Option<Value>,
}

/// Result of `account/bedrock/checkGovCloudRequirements`. Skein does not
/// authenticate to Bedrock, so no GovCloud region is in use and nothing
/// needs a warning.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BedrockCheckGovCloudRequirementsResponse {
    /// Whether Bedrock authentication resolves to a GovCloud region.
    pub is_gov_cloud: bool,
    /// Whether the client should warn about GovCloud requirements.
    pub should_warn: bool,
}

/// Params of the `turn/started` notification.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TurnStartedNotification {
    /// The thread.
    pub thread_id: String,
    /// The turn, `inProgress`, with no items.
    pub turn: Turn,
}

/// Params of the `turn/completed` notification.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TurnCompletedNotification {
    /// The thread.
    pub thread_id: String,
    /// The turn, in its final status (with `error` when it failed), with
    /// its summary view of items (`itemsView: "summary"`): its user message
    /// and its answer.
    pub turn: Turn,
    /// Tokens the turn used (a Skein addition; Codex clients ignore it).
    pub usage: skein_protocol::TokenUsage,
}

/// Params of the `item/started` notification.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ItemStartedNotification {
    /// The thread.
    pub thread_id: String,
    /// The turn.
    pub turn_id: String,
    /// The item as it starts.
    pub item: ThreadItem,
    /// When it started, milliseconds since the Unix epoch.
    pub started_at_ms: i64,
}

/// Params of the `item/completed` notification.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ItemCompletedNotification {
    /// The thread.
    pub thread_id: String,
    /// The turn.
    pub turn_id: String,
    /// The finished item.
    pub item: ThreadItem,
    /// When it finished, milliseconds since the Unix epoch.
    pub completed_at_ms: i64,
}

/// Params of the `item/agentMessage/delta` notification.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentMessageDeltaNotification {
    /// The thread.
    pub thread_id: String,
    /// The turn.
    pub turn_id: String,
    /// The `agentMessage` item the text belongs to.
    pub item_id: String,
    /// The new text.
    pub delta: String,
}

/// Params of the `thread/status/changed` notification.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ThreadStatusChangedNotification {
    /// The thread.
    pub thread_id: String,
    /// Its new status.
    pub status: ThreadStatus,
}

/// Params of the `thread/name/updated` notification.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ThreadNameUpdatedNotification {
    /// The thread.
    pub thread_id: String,
    /// Its new name.
    pub thread_name: Option<String>,
}

/// Params of the `thread/archived` and `thread/unarchived` notifications.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ThreadIdNotification {
    /// The thread.
    pub thread_id: String,
}

/// Params of the `thread/tokenUsage/updated` notification.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ThreadTokenUsageUpdatedNotification {
    /// The thread.
    pub thread_id: String,
    /// The turn that used the tokens.
    pub turn_id: String,
    /// The usage.
    pub token_usage: ThreadTokenUsage,
}

/// A thread's token usage.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ThreadTokenUsage {
    /// Over all the thread's turns.
    pub total: TokenUsageBreakdown,
    /// Of the last turn.
    pub last: TokenUsageBreakdown,
    /// The model's context window in tokens, when known (from
    /// `model_context_window` in config.toml for the configured model).
    pub model_context_window: Option<u64>,
}

/// Token counts by kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenUsageBreakdown {
    /// Tokens read by the model.
    pub input_tokens: u64,
    /// Tokens written by the model.
    pub output_tokens: u64,
    /// Input tokens served from the provider's cache.
    pub cached_input_tokens: u64,
    /// Input tokens written to the provider's cache.
    pub cache_write_input_tokens: u64,
    /// Output tokens spent on reasoning.
    pub reasoning_output_tokens: u64,
    /// Input and output tokens together.
    pub total_tokens: u64,
}

/// A server-to-client notification with its params: the method is the
/// variant, the params its content. Serializes as the params alone;
/// [`method`](Self::method) names the method.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum ServerNotification {
    /// `thread/started`.
    ThreadStarted(Box<ThreadStartedNotification>),
    /// `thread/status/changed`.
    ThreadStatusChanged(ThreadStatusChangedNotification),
    /// `thread/name/updated`.
    ThreadNameUpdated(ThreadNameUpdatedNotification),
    /// `thread/archived`.
    ThreadArchived(ThreadIdNotification),
    /// `thread/unarchived`.
    ThreadUnarchived(ThreadIdNotification),
    /// `thread/tokenUsage/updated`.
    ThreadTokenUsageUpdated(ThreadTokenUsageUpdatedNotification),
    /// `turn/started`.
    TurnStarted(TurnStartedNotification),
    /// `turn/completed`.
    TurnCompleted(TurnCompletedNotification),
    /// `item/started`.
    ItemStarted(ItemStartedNotification),
    /// `item/completed`.
    ItemCompleted(ItemCompletedNotification),
    /// `item/agentMessage/delta`.
    AgentMessageDelta(AgentMessageDeltaNotification),
}

impl ServerNotification {
    /// The method name.
    pub fn method(&self) -> &'static str {
        match self {
            ServerNotification::ThreadStarted(_) => "thread/started",
            ServerNotification::ThreadStatusChanged(_) => "thread/status/changed",
            ServerNotification::ThreadNameUpdated(_) => "thread/name/updated",
            ServerNotification::ThreadArchived(_) => "thread/archived",
            ServerNotification::ThreadUnarchived(_) => "thread/unarchived",
            ServerNotification::ThreadTokenUsageUpdated(_) => "thread/tokenUsage/updated",
            ServerNotification::TurnStarted(_) => "turn/started",
            ServerNotification::TurnCompleted(_) => "turn/completed",
            ServerNotification::ItemStarted(_) => "item/started",
            ServerNotification::ItemCompleted(_) => "item/completed",
            ServerNotification::AgentMessageDelta(_) => "item/agentMessage/delta",
        }
    }

    /// About how many bytes the params take as JSON text, so that the
    /// message's buffer is allocated once. Close for text deltas, the most
    /// frequent notification; generous for the rest.
    pub fn params_len_hint(&self) -> usize {
        match self {
            ServerNotification::AgentMessageDelta(n) => {
                // Member names and punctuation take 50 bytes; the slack
                // covers a few escaped characters.
                64 + n.thread_id.len() + n.turn_id.len() + n.item_id.len() + n.delta.len() * 9 / 8
            }
            _ => 512,
        }
    }
}
