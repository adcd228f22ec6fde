//! What the server's environment offers a Codex client at startup:
//! account, configuration, skills, apps and MCP servers.
//!
//! Skein has no account, needs no authentication, and has no skills or
//! apps; it reads no configuration file yet, so no MCP server can be
//! configured. Each method answers that honestly, in the shape Codex
//! clients parse. When a configuration file arrives, [`effective_config`]
//! and [`mcp_servers`] are where its values go.

use serde::Serialize;
use serde_json::{Map, Value, json};
use skein_app_server_protocol::v2::{
    ConfigReadParams, GetAccountParams, PageParams, SkillsListParams,
};
use skein_core::{DEFAULT_MODEL, find_model};

use crate::processor::{HandlerResult, MessageProcessor, to_value};
use crate::wire::{APPROVAL_POLICY, APPROVALS_REVIEWER};

/// `sandbox_mode` in Codex's configuration vocabulary: Skein runs no
/// sandbox.
pub const SANDBOX_MODE: &str = "danger-full-access";

/// `account/read`: no account, and none required.
pub fn account_read(_params: GetAccountParams) -> HandlerResult {
    Ok(json!({"account": null, "userId": null, "requiresOpenaiAuth": false}))
}

/// `account/rateLimits/read`: Skein imposes no rate limits, so the
/// snapshot is empty.
pub fn account_rate_limits_read() -> HandlerResult {
    Ok(json!({
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
    Ok(json!({"requirements": null}))
}

/// `skills/list`: Skein has no skills.
pub fn skills_list(_params: SkillsListParams) -> HandlerResult {
    Ok(json!({"data": []}))
}

/// `app/list`: Skein has no apps.
pub fn app_list(_params: PageParams) -> HandlerResult {
    Ok(json!({"data": [], "nextCursor": null}))
}

/// The MCP servers configured, with their status. None can be configured
/// yet.
pub fn mcp_servers() -> Vec<Value> {
    Vec::new()
}

/// `mcpServerStatus/list`: the configured MCP servers (none yet).
pub fn mcp_server_status_list(_params: PageParams) -> HandlerResult {
    Ok(json!({"data": mcp_servers(), "nextCursor": null}))
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

/// The effective configuration: built-in defaults, as no configuration
/// file is read yet.
pub fn effective_config() -> EffectiveConfig {
    let model = find_model(DEFAULT_MODEL);
    EffectiveConfig {
        model: model.map(|m| m.name.to_owned()),
        model_provider: model.map(|m| m.provider.to_owned()),
        approval_policy: APPROVAL_POLICY,
        approvals_reviewer: APPROVALS_REVIEWER,
        sandbox_mode: SANDBOX_MODE,
    }
}

impl MessageProcessor {
    /// `config/read`: the effective configuration. Every value is a
    /// built-in default, so no value has an origin layer, and there are
    /// no layers to list.
    pub(crate) fn config_read(&self, params: ConfigReadParams) -> HandlerResult {
        let layers = params.include_layers.then(Vec::<Value>::new);
        Ok(json!({
            "config": to_value(effective_config())?,
            "origins": Map::new(),
            "layers": layers,
        }))
    }
}
