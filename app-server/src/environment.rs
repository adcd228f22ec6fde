//! What the server's environment offers a Codex client at startup:
//! account, configuration, skills, apps and MCP servers.
//!
//! Skein has no account, needs no authentication, and has no skills or
//! apps: those methods answer that honestly, in the shape Codex clients
//! parse. `config/read` and `mcpServerStatus/list` answer from the
//! configuration Skein runs with (`config.toml` and `-c` overrides).

use serde::Serialize;
use serde_json::{Map, Value, json};
use skein_app_server_protocol::v2::{
    ConfigReadParams, GetAccountParams, PageParams, SkillsListParams,
};
use skein_core::ThreadManager;
use skein_core::mcp::McpServerState;

use crate::processor::{HandlerResult, MessageProcessor, to_result};
use crate::wire::{APPROVAL_POLICY, APPROVALS_REVIEWER};

/// `sandbox_mode` in Codex's configuration vocabulary: Skein runs no
/// sandbox.
pub const SANDBOX_MODE: &str = "danger-full-access";

/// `account/read`: no account, and none required.
pub fn account_read(_params: GetAccountParams) -> HandlerResult {
    to_result(json!({"account": null, "userId": null, "requiresOpenaiAuth": false}))
}

/// `account/rateLimits/read`: Skein imposes no rate limits, so the
/// snapshot is empty.
pub fn account_rate_limits_read() -> HandlerResult {
    to_result(json!({
        "rateLimits": {
            "limitId": null,
            "limitName": null,
            "primary": null,
            "secondary": null,
            "credits": null,
            "planType": null,
        },
        "rateLimitsByLimitId": null,
    }))
}

/// `configRequirements/read`: no administrator requirements exist.
pub fn config_requirements_read() -> HandlerResult {
    to_result(json!({"requirements": null}))
}

/// `skills/list`: Skein has no skills.
pub fn skills_list(_params: SkillsListParams) -> HandlerResult {
    to_result(json!({"data": []}))
}

/// `app/list`: Skein has no apps.
pub fn app_list(_params: PageParams) -> HandlerResult {
    to_result(json!({"data": [], "nextCursor": null}))
}

/// The configured MCP servers, in Codex's `McpServerStatus` shape: their
/// state in this process and the tools they offered when last started.
/// Skein runs stdio servers only, with no authentication.
pub fn mcp_servers(threads: &ThreadManager) -> Vec<Value> {
    threads
        .mcp_statuses()
        .into_iter()
        .map(|status| {
            let tools: Map<String, Value> = status
                .tools
                .iter()
                .map(|tool| {
                    (
                        tool.name.clone(),
                        json!({
                            "name": tool.name,
                            "description": tool.description,
                            "inputSchema": tool.input_schema,
                        }),
                    )
                })
                .collect();
            let runtime_status = match status.state {
                McpServerState::Connected => "connected",
                McpServerState::Starting => "starting",
                McpServerState::NotRunning => "notStarted",
            };
            json!({
                "name": status.name,
                "authStatus": "unsupported",
                "httpOrigin": null,
                "runtimeStatus": runtime_status,
                "tools": tools,
                "resources": [],
                "resourceTemplates": [],
            })
        })
        .collect()
}

/// The configuration Skein runs with, in the keys of Codex's `Config`
/// (snake case, as in its `config.toml`).
#[derive(Clone, Debug, Serialize)]
pub struct EffectiveConfig {
    /// The model new threads use.
    pub model: Option<String>,
    /// The provider serving it.
    pub model_provider: Option<String>,
    /// Skein never asks for approval.
    pub approval_policy: &'static str,
    /// Who would review approvals (nobody is asked).
    pub approvals_reviewer: &'static str,
    /// Skein runs no sandbox.
    pub sandbox_mode: &'static str,
}

/// The effective configuration: the default model and provider as
/// configured, and what Skein does about approvals and sandboxing.
pub fn effective_config(threads: &ThreadManager) -> EffectiveConfig {
    let config = threads.config();
    EffectiveConfig {
        model: Some(config.model.clone()),
        model_provider: Some(config.model_provider.clone()),
        approval_policy: APPROVAL_POLICY,
        approvals_reviewer: APPROVALS_REVIEWER,
        sandbox_mode: SANDBOX_MODE,
    }
}

impl MessageProcessor {
    /// `mcpServerStatus/list`: the configured MCP servers.
    pub(crate) fn mcp_server_status_list(&self, _params: PageParams) -> HandlerResult {
        to_result(json!({"data": mcp_servers(self.threads()), "nextCursor": null}))
    }

    /// `config/read`: the effective configuration. Origins and layers are
    /// not tracked (a value may come from the file, an override or a
    /// default), so none are listed.
    pub(crate) fn config_read(&self, params: ConfigReadParams) -> HandlerResult {
        let layers = params.include_layers.then(Vec::<Value>::new);
        to_result(json!({
            "config": to_result(effective_config(self.threads()))?,
            "origins": Map::new(),
            "layers": layers,
        }))
    }
}
