//! MCP tool servers: started lazily over stdio (or reached over streamable
//! HTTP, `mcp_http`), shared by every thread.
//!
//! Each `[mcp_servers.<name>]` is a child process spoken to with `rmcp`, the
//! official Rust MCP SDK. A server starts on first use (the first turn that
//! lists tools), is initialized once, and is reused by every thread. One
//! that fails to start or dies is reported to the model as a tool error
//! and started again on next use (its tools stay offered meanwhile, so a
//! call reports the failure). Its stderr goes to Skein's log.
//!
//! Each start runs in an `mcp.server.start <server>` span under the span
//! that waited for it (the turn, or the tool call that needed the server).
//! A start that fails marks that span as an error (`error.type =
//! start_failed`), logs a warning naming the server, its command and the
//! error, and leaves the server [`McpServerState::Failed`] until a start
//! succeeds.
//!
//! Every `tools/call` runs in a `tools/call <tool>` CLIENT span whose
//! context goes out in `params._meta` (`traceparent`, `tracestate`), the
//! MCP convention. Dropping a call in flight (an interrupted turn) sends
//! `notifications/cancelled` for it.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use rmcp::model::{
    CallToolRequest, CallToolRequestParams, CancelledNotification, CancelledNotificationParam,
    ClientCapabilities, ClientConfig, ClientNotification, ClientRequest, Implementation,
    RequestMetaObject, ServerResult,
};
use rmcp::service::{Peer, PeerRequestOptions, RoleClient, RunningService, ServiceError};
use rmcp::transport::TokioChildProcess;
use serde_json::Value;
use skein_otel::names::{attr, value};
use tokio::io::AsyncBufReadExt as _;
use tokio::sync::Mutex;

use crate::config::{DEFAULT_TOOL_TIMEOUT_MS, McpServerConfig};

/// How long starting and initializing a server may take.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a server may take to stop at shutdown.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(3);

/// A tool one server offers.
#[derive(Clone, Debug, PartialEq)]
pub struct McpTool {
    /// The server's configured name.
    pub server: String,
    /// The tool's name on that server.
    pub name: String,
    /// What it does.
    pub description: String,
    /// The JSON Schema of its arguments.
    pub input_schema: Value,
}

/// A configured server's state, for clients that list servers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum McpServerState {
    /// Running and initialized.
    Connected,
    /// Being started right now.
    Starting,
    /// Not running: never needed yet, or it stopped (it is started again on
    /// next use).
    NotRunning,
    /// Its last start failed (it is started again on next use).
    Failed,
}

/// One configured server and what this process knows of it.
#[derive(Clone, Debug)]
pub struct McpServerStatus {
    /// The configured name.
    pub name: String,
    /// Its state.
    pub state: McpServerState,
    /// The tools it offered when it last started (empty before that).
    pub tools: Vec<McpTool>,
    /// Why its last start failed, while it is [`McpServerState::Failed`].
    pub error: Option<String>,
}

/// How a `tools/call` ended without a result.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct McpCallError {
    /// Low-cardinality class: `start_failed`, `connection`, `timeout`, the
    /// JSON-RPC error code, `unexpected_response`.
    pub error_type: String,
    /// What went wrong, for the model and the client.
    pub message: String,
}

struct Connection {
    peer: Peer<RoleClient>,
    protocol_version: String,
    tools: Vec<McpTool>,
    // Keeps the service (and the child) alive; taken to stop it.
    service: Mutex<Option<RunningService<RoleClient, ClientConfig>>>,
}

struct Server {
    name: String,
    config: McpServerConfig,
    running: Mutex<Option<Arc<Connection>>>,
    /// The tools of the last successful start: still offered while the
    /// server cannot start again, so that calling one reports the failure
    /// to the model as a tool error.
    known_tools: std::sync::Mutex<Vec<McpTool>>,
    /// Why the last start failed; cleared by a start that succeeds.
    start_error: std::sync::Mutex<Option<String>>,
}

/// Why a server could not be started.
#[derive(Debug, thiserror::Error)]
enum StartError {
    /// The process could not be spawned.
    #[error("could not start `{command}`: {error}")]
    Spawn {
        command: String,
        error: std::io::Error,
    },
    /// The MCP `initialize` handshake failed.
    #[error("failed to initialize: {0}")]
    Initialize(String),
    /// `tools/list` failed.
    #[error("could not list its tools: {0}")]
    ListTools(String),
    /// The whole start took longer than [`START_TIMEOUT`].
    #[error("did not start within {}s", START_TIMEOUT.as_secs())]
    Timeout,
    /// The task running the start ended without a result.
    #[error("failed to start: {0}")]
    Task(String),
}

/// Every configured MCP server. Cheap to clone; clones share servers.
#[derive(Clone, Default)]
pub struct McpManager {
    servers: Arc<BTreeMap<String, Arc<Server>>>,
}

impl std::fmt::Debug for McpManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("McpManager")
            .field("servers", &self.servers.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl McpManager {
    /// A manager of `servers`; none is started yet.
    pub fn new(servers: &BTreeMap<String, McpServerConfig>) -> Self {
        let servers = servers
            .iter()
            .map(|(name, config)| {
                (
                    name.clone(),
                    Arc::new(Server {
                        name: name.clone(),
                        config: config.clone(),
                        running: Mutex::new(None),
                        known_tools: std::sync::Mutex::new(Vec::new()),
                        start_error: std::sync::Mutex::new(None),
                    }),
                )
            })
            .collect();
        Self {
            servers: Arc::new(servers),
        }
    }

    /// Whether no server is configured.
    pub fn is_empty(&self) -> bool {
        self.servers.is_empty()
    }

    /// Every configured server's state as this process knows it, without
    /// starting any.
    pub fn statuses(&self) -> Vec<McpServerStatus> {
        self.servers
            .values()
            .map(|server| {
                let mut error = None;
                let state = match server.running.try_lock() {
                    Ok(running) if running.is_some() => McpServerState::Connected,
                    Ok(_) => {
                        error = server
                            .start_error
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .clone();
                        if error.is_some() {
                            McpServerState::Failed
                        } else {
                            McpServerState::NotRunning
                        }
                    }
                    // Someone holds it: the server is being started.
                    Err(_) => McpServerState::Starting,
                };
                McpServerStatus {
                    name: server.name.clone(),
                    state,
                    tools: server
                        .known_tools
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .clone(),
                    error,
                }
            })
            .collect()
    }

    /// The tools of every server, starting those not running (each start
    /// in an `mcp.server.start` span under the current span). A server
    /// that cannot start (logged by the start) offers the tools it had
    /// when it last ran, if any, so that calling one reports the failure.
    pub async fn tools(&self) -> Vec<McpTool> {
        let mut tools = Vec::new();
        for server in self.servers.values() {
            match server.connection().await {
                Ok(connection) => {
                    *server.known_tools.lock().unwrap_or_else(|p| p.into_inner()) =
                        connection.tools.clone();
                    tools.extend(connection.tools.iter().cloned());
                }
                Err(_) => {
                    let known = server
                        .known_tools
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .clone();
                    if !known.is_empty() {
                        tracing::warn!(
                            server = %server.name,
                            known_tools = known.len(),
                            "offering the tools the MCP server had when it last ran; \
                             calling them will fail"
                        );
                    }
                    tools.extend(known);
                }
            }
        }
        tools
    }

    /// Calls `tool` on `server` inside a new `tools/call <tool>` span,
    /// child of `parent`. Returns the `CallToolResult` as JSON.
    pub async fn call_tool(
        &self,
        server: &str,
        tool: &str,
        arguments: Option<serde_json::Map<String, Value>>,
        parent: &tracing::Span,
    ) -> Result<Value, McpCallError> {
        let span = crate::spans::mcp_tools_call_span(parent, server, tool);
        let result = self.call_in_span(server, tool, arguments, &span).await;
        match &result {
            Ok(value) if value.get("isError").and_then(Value::as_bool) == Some(true) => {
                span.record(attr::ERROR_TYPE, value::ERROR_TOOL);
                span.record(attr::OTEL_STATUS_CODE, value::STATUS_ERROR);
                span.record(attr::OTEL_STATUS_DESCRIPTION, "the tool reported an error");
            }
            Ok(_) => {}
            Err(err) => {
                span.record(attr::ERROR_TYPE, err.error_type.as_str());
                span.record(attr::OTEL_STATUS_CODE, value::STATUS_ERROR);
                span.record(attr::OTEL_STATUS_DESCRIPTION, err.message.as_str());
            }
        }
        result
    }

    async fn call_in_span(
        &self,
        server_name: &str,
        tool: &str,
        arguments: Option<serde_json::Map<String, Value>>,
        span: &tracing::Span,
    ) -> Result<Value, McpCallError> {
        let server = self.servers.get(server_name).ok_or_else(|| McpCallError {
            error_type: value::ERROR_UNKNOWN_SERVER.into(),
            message: format!("no MCP server named {server_name:?}"),
        })?;
        let connection = server.connection().await.map_err(|message| McpCallError {
            error_type: value::ERROR_MCP_START_FAILED.into(),
            message,
        })?;
        span.record(
            attr::MCP_PROTOCOL_VERSION,
            connection.protocol_version.as_str(),
        );
        let mut params = CallToolRequestParams::new(tool.to_owned());
        if let Some(arguments) = arguments {
            params = params.with_arguments(arguments);
        }
        let mut meta = RequestMetaObject::new();
        skein_rmcp::inject_meta_of(span, &mut meta);
        let timeout = Duration::from_millis(
            server
                .config
                .tool_timeout_ms
                .unwrap_or(DEFAULT_TOOL_TIMEOUT_MS),
        );
        let handle = connection
            .peer
            .send_cancellable_request(
                ClientRequest::CallToolRequest(CallToolRequest::new(params)),
                PeerRequestOptions::with_timeout(timeout).with_meta(meta),
            )
            .await
            .map_err(|err| server.failed(&connection, err))?;
        span.record(attr::JSONRPC_REQUEST_ID, handle.id.to_string());
        let mut guard = CancelOnDrop {
            peer: Some(connection.peer.clone()),
            id: handle.id.clone(),
        };
        let response = handle.await_response().await;
        guard.peer = None;
        match response {
            Ok(ServerResult::CallToolResult(result)) => {
                serde_json::to_value(&result).map_err(|err| McpCallError {
                    error_type: value::ERROR_UNEXPECTED_RESPONSE.into(),
                    message: format!("the tool's result could not be read: {err}"),
                })
            }
            Ok(_) => Err(McpCallError {
                error_type: value::ERROR_UNEXPECTED_RESPONSE.into(),
                message: format!(
                    "MCP server {server_name:?} answered tools/call with another kind of result"
                ),
            }),
            Err(err) => Err(server.failed(&connection, err)),
        }
    }

    /// Stops every running server: closes its stdin and waits for it to
    /// exit, at most [`STOP_TIMEOUT`] each (then it is killed).
    pub async fn shutdown(&self) {
        for server in self.servers.values() {
            let Some(connection) = server.running.lock().await.take() else {
                continue;
            };
            let service = connection.service.lock().await.take();
            if let Some(mut service) = service
                && let Err(err) = service.close_with_timeout(STOP_TIMEOUT).await
            {
                tracing::warn!(server = %server.name, %err, "MCP server did not stop cleanly");
            }
        }
    }
}

/// Sends `notifications/cancelled` for a request dropped before its
/// response.
struct CancelOnDrop {
    peer: Option<Peer<RoleClient>>,
    id: rmcp::model::RequestId,
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        let Some(peer) = self.peer.take() else { return };
        let id = self.id.clone();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let notification = CancelledNotification::new(CancelledNotificationParam::new(
                    Some(id),
                    Some("the turn was interrupted".into()),
                ));
                if let Err(err) = peer
                    .send_notification(ClientNotification::CancelledNotification(notification))
                    .await
                {
                    tracing::debug!(%err, "could not send notifications/cancelled");
                }
            });
        }
    }
}

impl Server {
    /// The running connection, starting the server if it is not running
    /// (or died). The start runs in an `mcp.server.start` span, a child of
    /// the current span: the one that waits for it.
    async fn connection(self: &Arc<Self>) -> Result<Arc<Connection>, String> {
        let mut running = self.running.lock().await;
        if let Some(connection) = running.as_ref()
            && !connection.peer.is_transport_closed()
        {
            return Ok(Arc::clone(connection));
        }
        if running.take().is_some() {
            tracing::warn!(server = %self.name, "MCP server stopped; starting it again");
        }
        let span = self.start_span();
        // Started on a task of its own, outside any span (the start span
        // included): the service's tasks (which capture the current span)
        // outlive this turn and must not hold its span open.
        let this = Arc::clone(self);
        let start = tokio::spawn(async move { this.start().await });
        let started = match tokio::time::timeout(START_TIMEOUT, start).await {
            Err(_) => Err(StartError::Timeout),
            Ok(Err(join)) => Err(StartError::Task(join.to_string())),
            Ok(Ok(started)) => started,
        };
        match started {
            Ok(connection) => {
                span.record(
                    attr::MCP_PROTOCOL_VERSION,
                    connection.protocol_version.as_str(),
                );
                *self.start_error.lock().unwrap_or_else(|p| p.into_inner()) = None;
                let connection = Arc::new(connection);
                *running = Some(Arc::clone(&connection));
                Ok(connection)
            }
            Err(err) => {
                let message = format!("MCP server {:?} {err}", self.name);
                span.record(attr::ERROR_TYPE, value::ERROR_MCP_START_FAILED);
                span.record(attr::OTEL_STATUS_CODE, value::STATUS_ERROR);
                span.record(attr::OTEL_STATUS_DESCRIPTION, message.as_str());
                tracing::warn!(
                    parent: &span,
                    server = %self.name,
                    command = %self.config.endpoint(),
                    error = %err,
                    "MCP server failed to start"
                );
                *self.start_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(message.clone());
                Err(message)
            }
        }
    }

    /// The span of one start, a child of the current span.
    fn start_span(&self) -> tracing::Span {
        crate::spans::mcp_server_start_span(&self.name, self.config.endpoint())
    }

    async fn start(&self) -> Result<Connection, StartError> {
        let info = ClientConfig::new(
            ClientCapabilities::default(),
            Implementation::new("skein", env!("CARGO_PKG_VERSION")),
        );
        let service = match &self.config.url {
            Some(url) => {
                let transport = crate::mcp_http::transport(url, &self.config)
                    .map_err(|e| StartError::Initialize(e.to_string()))?;
                rmcp::serve_client(info, transport)
                    .await
                    .map_err(|e| StartError::Initialize(e.to_string()))?
            }
            None => self.start_child(info).await?,
        };
        self.connected(service).await
    }

    /// Spawns the server's command and initializes it over stdio.
    async fn start_child(
        &self,
        info: ClientConfig,
    ) -> Result<RunningService<RoleClient, ClientConfig>, StartError> {
        let mut command = tokio::process::Command::new(&self.config.command);
        command.args(&self.config.args).envs(&self.config.env);
        let (transport, stderr) = TokioChildProcess::builder(command)
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|error| StartError::Spawn {
                command: self.config.command.clone(),
                error,
            })?;
        if let Some(stderr) = stderr {
            let name = self.name.clone();
            tokio::spawn(async move {
                let mut lines = tokio::io::BufReader::new(stderr).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    tracing::info!(target: "mcp_server", server = %name, "{line}");
                }
            });
        }
        rmcp::serve_client(info, transport)
            .await
            .map_err(|e| StartError::Initialize(e.to_string()))
    }

    /// Lists an initialized server's tools.
    async fn connected(
        &self,
        service: RunningService<RoleClient, ClientConfig>,
    ) -> Result<Connection, StartError> {
        let protocol_version = service
            .peer()
            .peer_info()
            .map(|i| i.protocol_version.to_string())
            .unwrap_or_default();
        let listed = service
            .peer()
            .list_all_tools()
            .await
            .map_err(|e| StartError::ListTools(e.to_string()))?;
        let tools = listed
            .into_iter()
            .map(|t| McpTool {
                server: self.name.clone(),
                name: t.name.to_string(),
                description: t.description.map(|d| d.to_string()).unwrap_or_default(),
                input_schema: Value::Object((*t.input_schema).clone()),
            })
            .collect();
        tracing::info!(server = %self.name, %protocol_version, "MCP server started");
        Ok(Connection {
            peer: service.peer().clone(),
            protocol_version,
            tools,
            service: Mutex::new(Some(service)),
        })
    }

    /// Turns a service error into a call error; a closed transport also
    /// forgets the connection, so the next use starts the server again.
    fn failed(&self, connection: &Arc<Connection>, err: ServiceError) -> McpCallError {
        let error_type = match &err {
            ServiceError::Timeout { .. } => "timeout".to_owned(),
            ServiceError::McpError(e) => e.code.0.to_string(),
            ServiceError::TransportClosed | ServiceError::TransportSend(_) => {
                if let Ok(mut running) = self.running.try_lock()
                    && running.as_ref().is_some_and(|c| Arc::ptr_eq(c, connection))
                {
                    *running = None;
                }
                "connection".to_owned()
            }
            _ => "unexpected_response".to_owned(),
        };
        McpCallError {
            error_type,
            message: format!("MCP server {:?}: {err}", self.name),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{Capture, attr};
    use opentelemetry::trace::Status;
    use opentelemetry_sdk::trace::SpanData;
    use tracing::Instrument as _;

    fn manager(name: &str, command: &str, args: &[&str]) -> McpManager {
        let config = McpServerConfig {
            command: command.to_owned(),
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            ..McpServerConfig::default()
        };
        McpManager::new(&BTreeMap::from([(name.to_owned(), config)]))
    }

    /// Lists tools inside a `turn` span, as a turn does, and returns the
    /// start span and the turn span once both have ended.
    async fn start_under_a_turn(
        capture: &Capture,
        manager: &McpManager,
        name: &str,
    ) -> (Vec<McpTool>, SpanData, SpanData) {
        let turn = tracing::info_span!("turn");
        let tools = manager.tools().instrument(turn.clone()).await;
        drop(turn);
        let start = capture.one(&format!("mcp.server.start {name}"));
        (tools, start, capture.one("turn"))
    }

    fn assert_failed_start(start: &SpanData, turn: &SpanData, name: &str, needle: &str) {
        assert_eq!(
            start.parent_span_id,
            turn.span_context.span_id(),
            "the start is a child of the turn that waited for it"
        );
        assert_eq!(attr(start, attr::MCP_SERVER_NAME).as_deref(), Some(name));
        assert_eq!(
            attr(start, attr::ERROR_TYPE).as_deref(),
            Some(value::ERROR_MCP_START_FAILED)
        );
        match &start.status {
            Status::Error { description } => {
                assert!(description.contains(needle), "{description}");
            }
            other => panic!("an error status expected, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_missing_command_fails_its_start_span_under_the_turn_and_leaves_the_server_failed() {
        let capture = Capture::new();
        let manager = manager("broken", "/nonexistent/mcp-server", &[]);
        let before = manager.statuses();
        assert_eq!(before[0].state, McpServerState::NotRunning);
        assert_eq!(before[0].error, None);

        let (tools, start, turn) = start_under_a_turn(&capture, &manager, "broken").await;
        assert!(tools.is_empty(), "{tools:?}");
        assert_failed_start(&start, &turn, "broken", "/nonexistent/mcp-server");
        assert_eq!(
            attr(&start, attr::PROCESS_COMMAND).as_deref(),
            Some("/nonexistent/mcp-server")
        );

        let status = &manager.statuses()[0];
        assert_eq!(status.state, McpServerState::Failed);
        let error = status.error.as_deref().unwrap_or_default();
        assert!(
            error.contains("\"broken\"") && error.contains("`/nonexistent/mcp-server`"),
            "{error}"
        );

        // A call that needs the server tries again, and fails the same way.
        let parent = tracing::info_span!("execute_tool");
        let err = manager
            .call_tool("broken", "anything", None, &parent)
            .await
            .expect_err("the server cannot start");
        assert_eq!(err.error_type, value::ERROR_MCP_START_FAILED);
        assert_eq!(manager.statuses()[0].state, McpServerState::Failed);
    }

    #[tokio::test]
    async fn a_server_that_exits_before_initializing_fails_its_start_span_with_the_handshake_error()
    {
        let capture = Capture::new();
        let manager = manager("quits", "sh", &["-c", "exit 0"]);
        let (tools, start, turn) = start_under_a_turn(&capture, &manager, "quits").await;
        assert!(tools.is_empty(), "{tools:?}");
        assert_failed_start(&start, &turn, "quits", "failed to initialize");
        let status = &manager.statuses()[0];
        assert_eq!(status.state, McpServerState::Failed);
        assert!(
            status
                .error
                .as_deref()
                .is_some_and(|e| e.contains("failed to initialize")),
            "{:?}",
            status.error
        );
    }
}
