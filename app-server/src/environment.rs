//! What the server's environment offers a Codex client at startup:
//! account, configuration, skills, apps, MCP servers, hooks, plugins,
//! collaboration modes, and a thread's goal and background terminals.
//!
//! Skein has no account, needs no authentication, and has no skills, apps,
//! hooks, plugins, collaboration mode presets, thread goals or background
//! terminals: those methods answer that honestly, in the shape Codex
//! clients parse. `config/read` and `mcpServerStatus/list` answer from the
//! configuration Skein runs with (`config.toml` and `-c` overrides),
//! secrets redacted.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;
use serde_json::{Map, Value, json};
use skein_app_server_protocol::v2::{
    BedrockCheckGovCloudRequirementsResponse, CollaborationModeListResponse, ConfigReadParams,
    GetAccountParams, HooksListParams, HooksListResponse, PageParams, PluginInstalledParams,
    PluginInstalledResponse, SkillsListParams, ThreadBackgroundTerminalsListParams,
    ThreadBackgroundTerminalsListResponse, ThreadGoalGetParams, ThreadGoalGetResponse,
};
use skein_core::ThreadManager;
use skein_core::config::{Config, DEFAULT_TOOL_TIMEOUT_MS};
use skein_core::mcp::McpServerState;

use crate::processor::{HandlerResult, MessageProcessor, thread_error, to_result};
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

/// `hooks/list`: Skein runs no hooks, in any directory.
pub fn hooks_list(_params: HooksListParams) -> HandlerResult {
    to_result(HooksListResponse::default())
}

/// `collaborationMode/list`: Skein has no collaboration mode presets.
pub fn collaboration_mode_list() -> HandlerResult {
    to_result(CollaborationModeListResponse::default())
}

/// `plugin/installed`: Skein has no plugins and no marketplaces.
pub fn plugin_installed(_params: PluginInstalledParams) -> HandlerResult {
    to_result(PluginInstalledResponse::default())
}

/// `account/bedrock/checkGovCloudRequirements`: Skein does not
/// authenticate to Bedrock, so no GovCloud region is in use and there is
/// nothing to warn about.
pub fn bedrock_check_gov_cloud_requirements() -> HandlerResult {
    to_result(BedrockCheckGovCloudRequirementsResponse::default())
}

/// The configured MCP servers, in Codex's `McpServerStatus` shape: their
/// state in this process (`failed` after a start that failed, with the
/// error as `toolsError` when no earlier start listed tools) and the tools
/// they offered when last started. Skein runs stdio servers only, with no
/// authentication.
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
                McpServerState::Failed => "failed",
            };
            // Codex's `toolsError`: discovery failed and no catalog is
            // returned (null when the tools of an earlier start are).
            let tools_error = status.error.filter(|_| tools.is_empty());
            json!({
                "name": status.name,
                "authStatus": "unsupported",
                "httpOrigin": null,
                "runtimeStatus": runtime_status,
                "tools": tools,
                "toolsError": tools_error,
                "resources": [],
                "resourceTemplates": [],
            })
        })
        .collect()
}

/// What `config/read` shows in place of a value that may be a secret.
pub const REDACTED: &str = "[REDACTED]";

/// The configuration Skein runs with, in the keys of its `config.toml`
/// (which are Codex's, snake case), defaults and `-c` overrides applied.
///
/// Secrets never appear: a provider's API key is shown only by the name of
/// the environment variable it is read from (`env_key`), the values of an
/// MCP server's `env` table and the `otel.redact` patterns (which may spell
/// out the very secrets they hide) are each replaced by `[REDACTED]`.
#[derive(Clone, Debug, Serialize)]
pub struct EffectiveConfig {
    /// The model new threads use.
    pub model: Option<String>,
    /// The provider serving it.
    pub model_provider: Option<String>,
    /// System instructions sent before the conversation, when configured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instructions: Option<String>,
    /// Skein never asks for approval.
    pub approval_policy: &'static str,
    /// Who would review approvals (nobody is asked).
    pub approvals_reviewer: &'static str,
    /// Skein runs no sandbox.
    pub sandbox_mode: &'static str,
    /// Every provider by id, the built-in `openai` included (the offline
    /// `skein` provider has no settings, so no table).
    pub model_providers: BTreeMap<String, EffectiveProvider>,
    /// The MCP servers by name.
    pub mcp_servers: BTreeMap<String, EffectiveMcpServer>,
    /// Bound on model calls answered with tool calls in one turn.
    pub max_tool_rounds: u32,
    /// The configured model's context window, in tokens, when configured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model_context_window: Option<u64>,
    /// Content recording on spans.
    pub otel: EffectiveOtel,
}

/// One `[model_providers.<id>]` table as Skein uses it.
#[derive(Clone, Debug, Serialize)]
pub struct EffectiveProvider {
    /// Name shown to people.
    pub name: String,
    /// The API's base URL.
    pub base_url: String,
    /// The environment variable the API key is read from; never the key.
    pub env_key: Option<String>,
    /// The wire protocol.
    pub wire_api: &'static str,
    /// Timeout of one model request, in milliseconds.
    pub request_timeout_ms: u64,
}

/// One `[mcp_servers.<name>]` table as Skein uses it.
#[derive(Clone, Debug, Serialize)]
pub struct EffectiveMcpServer {
    /// The program (empty for a server reached by `url`).
    pub command: String,
    /// The streamable HTTP endpoint of a server reached by URL.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// The variable holding its bearer token (the name only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bearer_token_env_var: Option<String>,
    /// Its extra HTTP headers' names; every value is `[REDACTED]`.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub http_headers: BTreeMap<String, &'static str>,
    /// Its arguments.
    pub args: Vec<String>,
    /// The extra environment variables' names; every value is
    /// `[REDACTED]`.
    pub env: BTreeMap<String, &'static str>,
    /// Timeout of one tool call, in milliseconds.
    pub tool_timeout_ms: u64,
}

/// The `[otel]` table as Skein uses it.
#[derive(Clone, Debug, Serialize)]
pub struct EffectiveOtel {
    /// Whether content is recorded (from the file, `-c` or
    /// `OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT`).
    pub capture_content: bool,
    /// One `[REDACTED]` per redaction pattern.
    pub redact: Vec<&'static str>,
    /// Limit on one recorded content attribute, in bytes.
    pub max_content_bytes: usize,
}

/// The effective configuration: what `config` holds, with secrets
/// redacted, and what Skein does about approvals and sandboxing.
pub fn effective_config(config: &Config) -> EffectiveConfig {
    let millis = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    EffectiveConfig {
        model: Some(config.model.clone()),
        model_provider: Some(config.model_provider.clone()),
        instructions: config.instructions.clone(),
        approval_policy: APPROVAL_POLICY,
        approvals_reviewer: APPROVALS_REVIEWER,
        sandbox_mode: SANDBOX_MODE,
        model_providers: config
            .providers
            .iter()
            .map(|(id, provider)| {
                let entry = EffectiveProvider {
                    name: provider.name.clone(),
                    base_url: provider.base_url.clone(),
                    env_key: provider.env_key.clone(),
                    wire_api: provider.wire_api.as_str(),
                    request_timeout_ms: millis(provider.request_timeout),
                };
                (id.clone(), entry)
            })
            .collect(),
        mcp_servers: config
            .mcp_servers
            .iter()
            .map(|(name, server)| {
                let entry = EffectiveMcpServer {
                    command: server.command.clone(),
                    url: server.url.clone(),
                    bearer_token_env_var: server.bearer_token_env_var.clone(),
                    http_headers: server
                        .http_headers
                        .keys()
                        .map(|k| (k.clone(), REDACTED))
                        .collect(),
                    args: server.args.clone(),
                    env: server.env.keys().map(|k| (k.clone(), REDACTED)).collect(),
                    tool_timeout_ms: server.tool_timeout_ms.unwrap_or(DEFAULT_TOOL_TIMEOUT_MS),
                };
                (name.clone(), entry)
            })
            .collect(),
        max_tool_rounds: config.max_tool_rounds,
        model_context_window: config.model_context_window,
        otel: EffectiveOtel {
            capture_content: config.content.capture,
            redact: vec![REDACTED; config.content.redact.len()],
            max_content_bytes: config.content.max_bytes,
        },
    }
}

impl MessageProcessor {
    /// `mcpServerStatus/list`: the configured MCP servers.
    pub(crate) fn mcp_server_status_list(&self, _params: PageParams) -> HandlerResult {
        to_result(json!({"data": mcp_servers(self.threads()), "nextCursor": null}))
    }

    /// `thread/goal/get`: Skein threads have no goal. An unknown thread is
    /// refused, as for every thread method.
    pub(crate) fn thread_goal_get(&self, params: ThreadGoalGetParams) -> HandlerResult {
        self.threads()
            .read(&params.thread_id)
            .map_err(thread_error)?;
        to_result(ThreadGoalGetResponse::default())
    }

    /// `thread/backgroundTerminals/list`: Skein runs no terminals, so a
    /// known thread has none.
    pub(crate) fn thread_background_terminals_list(
        &self,
        params: ThreadBackgroundTerminalsListParams,
    ) -> HandlerResult {
        self.threads()
            .read(&params.thread_id)
            .map_err(thread_error)?;
        to_result(ThreadBackgroundTerminalsListResponse::default())
    }

    /// `config/read`: the effective configuration. Origins and layers are
    /// not tracked (a value may come from the file, an override or a
    /// default), so none are listed.
    pub(crate) fn config_read(&self, params: ConfigReadParams) -> HandlerResult {
        let layers = params.include_layers.then(Vec::<Value>::new);
        to_result(json!({
            "config": to_result(effective_config(self.threads().config()))?,
            "origins": Map::new(),
            "layers": layers,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_effective_config_shows_settings_and_hides_secrets() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("config.toml");
        std::fs::write(
            &path,
            r#"
model = "qwen"
model_provider = "local"
instructions = "Answer in French."
max_tool_rounds = 7
[model_providers.local]
name = "Local"
base_url = "http://127.0.0.1:9/v1"
env_key = "LOCAL_KEY"
request_timeout_ms = 1500
[mcp_servers.time]
command = "mcp-server-time"
args = ["--tz", "UTC"]
env = { TOKEN = "mcp-env-secret" }
[otel]
capture_content = true
redact = ["redact-pattern-secret"]
max_content_bytes = 99
"#,
        )
        .expect("write");
        let config = Config::load_with_env(&path, &[], &|k| match k {
            "LOCAL_KEY" => Some("sk-provider-secret".into()),
            "OPENAI_API_KEY" => Some("sk-openai-secret".into()),
            _ => None,
        })
        .expect("load");
        let shown = serde_json::to_value(effective_config(&config)).expect("json");
        assert_eq!(shown["model"], json!("qwen"));
        assert_eq!(shown["instructions"], json!("Answer in French."));
        assert_eq!(shown["max_tool_rounds"], json!(7));
        assert_eq!(
            shown["model_providers"]["local"],
            json!({"name": "Local", "base_url": "http://127.0.0.1:9/v1", "env_key": "LOCAL_KEY",
                   "wire_api": "chat", "request_timeout_ms": 1500})
        );
        assert_eq!(
            shown["model_providers"]["openai"]["env_key"],
            json!("OPENAI_API_KEY")
        );
        assert_eq!(
            shown["mcp_servers"]["time"],
            json!({"command": "mcp-server-time", "args": ["--tz", "UTC"],
                   "env": {"TOKEN": "[REDACTED]"}, "tool_timeout_ms": DEFAULT_TOOL_TIMEOUT_MS})
        );
        assert_eq!(
            shown["otel"],
            json!({"capture_content": true, "redact": ["[REDACTED]"], "max_content_bytes": 99})
        );
        let text = shown.to_string();
        for secret in [
            "sk-provider-secret",
            "sk-openai-secret",
            "mcp-env-secret",
            "redact-pattern-secret",
        ] {
            assert!(!text.contains(secret), "{secret} leaked: {text}");
        }
    }

    #[test]
    fn instructions_are_left_out_when_not_configured() {
        let shown = serde_json::to_value(effective_config(&Config::default())).expect("json");
        assert!(shown.get("instructions").is_none(), "{shown}");
        assert_eq!(shown["mcp_servers"], json!({}));
        assert_eq!(shown["otel"]["redact"], json!([]));
    }
}
