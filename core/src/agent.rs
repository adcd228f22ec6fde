//! The agent loop of a turn on a real model, and the runtime it draws on.
//!
//! A turn sends the thread's conversation and the tools of every MCP server
//! to the model, streaming. When the model asks for tool calls, each runs
//! through its MCP server, the results go back, and the model is called
//! again, until it answers without tool calls or `max_tool_rounds` is
//! reached. Spans: one `chat {model}` per model call and one
//! `execute_tool {tool}` per tool call (with the MCP client span
//! `tools/call {tool}` beneath it), all under the turn span.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use skein_otel::metrics::ModelCall;
use skein_otel::names::{attr, span, value};
use skein_protocol::{EventMsg, ItemKind, TokenUsage, TurnKind, TurnStatus};
use tokio::sync::{mpsc, watch};
use tracing::Instrument;
use tracing::field::Empty;

use crate::config::{Config, ECHO_MODEL, ECHO_PROVIDER};
use crate::conversation::{
    Message, ToolCall, ToolCallStatus, TurnItem, conversation_of, opening_message,
    semconv_input_messages, semconv_output_messages, semconv_system_instructions, steered_item_id,
    tool_result_text,
};
use crate::mcp::{McpManager, McpTool};
use crate::models::{EchoModel, ModelInfo};
use crate::providers::openai::{ChatRequest, ChatResponse, OpenAiClient, ToolSpec};
use crate::threads::{ThreadError, TurnRecord};
use crate::turn::{TurnEvents, TurnResult, chat_span, clamp, record_error, wait_interrupt};

/// What turns share: the configuration, the echo model, one HTTP client
/// per provider and the MCP servers.
pub struct Runtime {
    config: Arc<Config>,
    echo: EchoModel,
    clients: Mutex<BTreeMap<String, Arc<OpenAiClient>>>,
    mcp: McpManager,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("model", &self.config.model)
            .field("model_provider", &self.config.model_provider)
            .field("mcp", &self.mcp)
            .finish_non_exhaustive()
    }
}

impl Runtime {
    /// A runtime over `config`, the echo model waiting `echo_delay`
    /// between words.
    pub fn new(config: Arc<Config>, echo_delay: Duration) -> Self {
        let mcp = McpManager::new(&config.mcp_servers);
        Self {
            config,
            echo: EchoModel::new(echo_delay),
            clients: Mutex::new(BTreeMap::new()),
            mcp,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The echo model.
    pub fn echo(&self) -> &EchoModel {
        &self.echo
    }

    /// The MCP servers.
    pub fn mcp(&self) -> &McpManager {
        &self.mcp
    }

    /// The model a thread or turn asks for: `model` and `provider` as
    /// given, each falling back to the configured default.
    pub fn resolve(
        &self,
        model: Option<&str>,
        provider: Option<&str>,
    ) -> Result<ModelInfo, ThreadError> {
        let model = model.map(str::trim).filter(|m| !m.is_empty());
        let provider = provider.map(str::trim).filter(|p| !p.is_empty());
        let provider = match (model, provider) {
            (Some(ECHO_MODEL), None) => ECHO_PROVIDER,
            (_, Some(p)) => p,
            (_, None) => self.config.model_provider.as_str(),
        };
        if provider == ECHO_PROVIDER {
            return match model {
                None | Some(ECHO_MODEL) => Ok(ModelInfo::echo()),
                Some(other) => Err(ThreadError::UnknownModel(format!(
                    "{other} (the offline `{ECHO_PROVIDER}` provider serves only `{ECHO_MODEL}`; \
                     configure a provider in config.toml)"
                ))),
            };
        }
        let Some(p) = self.config.providers.get(provider) else {
            return Err(ThreadError::UnknownProvider(provider.to_owned()));
        };
        let name = match model {
            Some(m) => m,
            None if provider == self.config.model_provider => self.config.model.as_str(),
            None => {
                return Err(ThreadError::UnknownModel(format!(
                    "(none): name a `model` for provider {provider:?}"
                )));
            }
        };
        Ok(ModelInfo::remote(name, p))
    }

    /// The model of a stored thread: what it recorded, or the echo model
    /// (with a warning) when its provider is no longer configured.
    pub fn stored_model(&self, model: &str, provider: Option<&str>) -> ModelInfo {
        let provider = provider.unwrap_or(if model == ECHO_MODEL {
            ECHO_PROVIDER
        } else {
            self.config.model_provider.as_str()
        });
        self.resolve(Some(model), Some(provider))
            .unwrap_or_else(|err| {
                tracing::warn!(%model, %provider, %err, "stored thread's model is not available; using echo");
                ModelInfo::echo()
            })
    }

    /// The models `model/list` offers: `echo` and the configured default
    /// (when it is another), with whether each is the default.
    pub fn models(&self) -> Vec<(ModelInfo, bool)> {
        let default = self
            .resolve(None, None)
            .unwrap_or_else(|_| ModelInfo::echo());
        let mut models = vec![];
        if !default.is_echo() {
            models.push((default, true));
            models.push((ModelInfo::echo(), false));
        } else {
            models.push((ModelInfo::echo(), true));
        }
        models
    }

    fn client(&self, provider: &str) -> Result<Arc<OpenAiClient>, String> {
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(client) = clients.get(provider) {
            return Ok(Arc::clone(client));
        }
        let config = self
            .config
            .providers
            .get(provider)
            .ok_or_else(|| format!("unknown model provider {provider:?}"))?;
        let client = Arc::new(OpenAiClient::new(config.clone()).map_err(|e| e.to_string())?);
        clients.insert(provider.to_owned(), Arc::clone(&client));
        Ok(client)
    }

    /// Stops the MCP servers.
    pub async fn shutdown(&self) {
        self.mcp.shutdown().await;
    }
}

/// The name a model sees for an MCP tool: the tool's own name with any
/// character the Chat Completions API refuses replaced by `_`.
fn function_name(tool: &str) -> String {
    let name: String = tool
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect();
    if name.is_empty() { "_".into() } else { name }
}

/// The tools offered to the model, and which MCP tool each name is.
fn tool_table(tools: Vec<McpTool>) -> (Vec<ToolSpec>, BTreeMap<String, McpTool>) {
    let mut specs = Vec::with_capacity(tools.len());
    let mut table = BTreeMap::new();
    for tool in tools {
        let name = function_name(&tool.name);
        if let Some(existing) = table.get(&name) {
            let existing: &McpTool = existing;
            tracing::warn!(
                tool = %tool.name,
                server = %tool.server,
                kept = %existing.server,
                "two MCP servers offer a tool of the same name; offering the first"
            );
            continue;
        }
        specs.push(ToolSpec {
            name: name.clone(),
            description: tool.description.clone(),
            parameters: tool.input_schema.clone(),
        });
        table.insert(name, tool);
    }
    (specs, table)
}

/// Everything the remote turn loop keeps as it goes.
struct Progress {
    items: Vec<TurnItem>,
    usage: TokenUsage,
    output: Vec<String>,
}

impl Progress {
    fn finish(self, status: TurnStatus, error: Option<String>) -> TurnResult {
        TurnResult {
            status,
            error,
            usage: self.usage,
            output: self
                .output
                .into_iter()
                .filter(|t| !t.is_empty())
                .collect::<Vec<_>>()
                .join("\n\n"),
            items: self.items,
        }
    }
}

/// Runs a turn on a real model. Runs inside the turn span.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn run_remote(
    events: &TurnEvents,
    runtime: &Runtime,
    model: &ModelInfo,
    kind: TurnKind,
    input: &str,
    history: &[TurnRecord],
    interrupted: &mut watch::Receiver<bool>,
    mut steer: mpsc::UnboundedReceiver<String>,
) -> TurnResult {
    let mut progress = Progress {
        items: Vec::new(),
        usage: TokenUsage::default(),
        output: Vec::new(),
    };
    let client = match runtime.client(&model.provider) {
        Ok(client) => client,
        Err(message) => return progress.finish(TurnStatus::Failed, Some(message)),
    };
    let config = runtime.config();
    let mut messages = conversation_of(history);
    messages.push(opening_message(kind, input));
    // Tools are offered to every kind of turn: a review or a compaction
    // replays earlier tool calls, which some servers accept only with the
    // tools declared.
    let (specs, table) = if !runtime.mcp().is_empty() {
        tokio::select! {
            biased;
            () = wait_interrupt(interrupted) => {
                return progress.finish(TurnStatus::Interrupted, None);
            }
            tools = runtime.mcp().tools() => tool_table(tools),
        }
    } else {
        (Vec::new(), BTreeMap::new())
    };

    let mut round = 0u32;
    loop {
        while let Ok(text) = steer.try_recv() {
            let id = steered_item_id(&events.turn_id, progress.items.len());
            progress.items.push(TurnItem::UserMessage {
                id,
                text: text.clone(),
            });
            messages.push(Message::User { text });
        }
        round += 1;
        let chat = chat_span(model);
        chat.record(attr::GEN_AI_CONVERSATION_ID, events.entry.id.as_str());
        chat.record(attr::SERVER_ADDRESS, client.host());
        if let Some(port) = client.port() {
            chat.record(attr::SERVER_PORT, i64::from(port));
        }
        let content = &config.content;
        if let Some(instructions) = &config.instructions
            && let Some(v) = content.record_json(&semconv_system_instructions(instructions))
        {
            chat.record(attr::GEN_AI_SYSTEM_INSTRUCTIONS, v);
        }
        if let Some(v) = content.record_json(&semconv_input_messages(&messages)) {
            chat.record(attr::GEN_AI_INPUT_MESSAGES, v);
        }

        let item_id = uuid::Uuid::now_v7().to_string();
        let (deltas_tx, mut deltas) = mpsc::channel::<String>(64);
        let request = ChatRequest {
            model: &model.name,
            instructions: config.instructions.as_deref(),
            messages: &messages,
            tools: &specs,
        };
        let started = Instant::now();
        let mut text = String::new();
        let mut item_started = false;
        // The call (and its HTTP connection) lives only in this block:
        // leaving it on interrupt drops the call, which closes the
        // connection.
        let result = {
            let call = client
                .stream_chat(request, &chat, &deltas_tx)
                .instrument(chat.clone());
            tokio::pin!(call);
            let mut on_delta = |delta: String| {
                if !item_started {
                    item_started = true;
                    events.emit(EventMsg::ItemStarted {
                        turn_id: events.turn_id.clone(),
                        item_id: item_id.clone(),
                        kind: ItemKind::AgentMessage,
                    });
                }
                text.push_str(&delta);
                events.emit(EventMsg::AgentMessageDelta {
                    turn_id: events.turn_id.clone(),
                    item_id: item_id.clone(),
                    delta,
                });
            };
            let interrupt = wait_interrupt(interrupted);
            tokio::pin!(interrupt);
            loop {
                tokio::select! {
                    biased;
                    () = &mut interrupt => break None,
                    Some(delta) = deltas.recv() => on_delta(delta),
                    result = &mut call => {
                        while let Ok(delta) = deltas.try_recv() {
                            on_delta(delta);
                        }
                        break Some(result);
                    }
                }
            }
        };
        let duration = started.elapsed();
        let close_item = |text: &str| {
            if item_started {
                events.emit(EventMsg::ItemCompleted {
                    turn_id: events.turn_id.clone(),
                    item_id: item_id.clone(),
                    kind: ItemKind::AgentMessage,
                    text: text.to_owned(),
                });
            }
        };
        let response = match result {
            None => {
                chat.record(attr::ERROR_TYPE, value::ERROR_INTERRUPTED);
                record_model_metrics(model, duration, Some(value::ERROR_INTERRUPTED), None, None);
                close_item(&text);
                progress.items.push(TurnItem::AgentMessage {
                    id: item_id,
                    text: text.clone(),
                });
                progress.output.push(text);
                return progress.finish(TurnStatus::Interrupted, None);
            }
            Some(Err(err)) => {
                chat.record(attr::ERROR_TYPE, err.error_type.as_str());
                record_error(&chat, &err.message);
                record_response(&chat, &err.partial, config, "error");
                record_model_metrics(
                    model,
                    duration,
                    Some(&err.error_type),
                    None,
                    err.partial.time_to_first_chunk,
                );
                // Whatever streamed is kept (a stream cut mid-way).
                let partial = if text.is_empty() {
                    err.partial.text.clone()
                } else {
                    text
                };
                close_item(&partial);
                if !partial.is_empty() {
                    progress.items.push(TurnItem::AgentMessage {
                        id: item_id,
                        text: partial.clone(),
                    });
                    progress.output.push(partial);
                }
                return progress.finish(TurnStatus::Failed, Some(err.message));
            }
            Some(Ok(response)) => response,
        };
        let finish = response
            .finish_reasons
            .first()
            .map(String::as_str)
            .unwrap_or("stop")
            .to_owned();
        record_response(&chat, &response, config, &finish);
        let usage = response.usage.unwrap_or_default();
        record_model_metrics(
            model,
            duration,
            None,
            Some(usage),
            response.time_to_first_chunk,
        );
        progress.usage.add(usage);
        drop(chat);
        close_item(&response.text);
        progress.items.push(TurnItem::AgentMessage {
            id: item_id,
            text: response.text.clone(),
        });
        progress.output.push(response.text.clone());

        if response.tool_calls.is_empty() {
            if let Ok(text) = steer.try_recv() {
                // Input steered in while the model answered: one more round.
                messages.push(Message::Assistant {
                    text: response.text,
                    tool_calls: Vec::new(),
                });
                let id = steered_item_id(&events.turn_id, progress.items.len());
                progress.items.push(TurnItem::UserMessage {
                    id,
                    text: text.clone(),
                });
                messages.push(Message::User { text });
                continue;
            }
            return progress.finish(TurnStatus::Completed, None);
        }
        messages.push(Message::Assistant {
            text: response.text.clone(),
            tool_calls: response.tool_calls.clone(),
        });
        for call in &response.tool_calls {
            let outcome = run_tool_call(events, runtime, &table, call, interrupted).await;
            let interrupted_now = outcome.interrupted;
            messages.push(Message::Tool {
                call_id: call.id.clone(),
                content: tool_result_text(outcome.result.as_ref(), outcome.error.as_deref()),
            });
            progress.items.push(outcome.item);
            if interrupted_now {
                return progress.finish(TurnStatus::Interrupted, None);
            }
        }
        if round >= config.max_tool_rounds {
            return progress.finish(
                TurnStatus::Failed,
                Some(format!(
                    "the model kept calling tools: stopped after {round} rounds (max_tool_rounds)"
                )),
            );
        }
    }
}

/// Records a response's attributes (and, when enabled, its content) on the
/// `chat` span.
fn record_response(chat: &tracing::Span, response: &ChatResponse, config: &Config, finish: &str) {
    if let Some(id) = &response.response_id {
        chat.record(attr::GEN_AI_RESPONSE_ID, id.as_str());
    }
    if let Some(model) = &response.response_model {
        chat.record(attr::GEN_AI_RESPONSE_MODEL, model.as_str());
    }
    if !response.finish_reasons.is_empty() {
        chat.record(
            attr::GEN_AI_RESPONSE_FINISH_REASONS,
            format!("{:?}", response.finish_reasons).as_str(),
        );
    }
    if let Some(usage) = response.usage {
        chat.record(attr::GEN_AI_USAGE_INPUT_TOKENS, clamp(usage.input_tokens));
        chat.record(attr::GEN_AI_USAGE_OUTPUT_TOKENS, clamp(usage.output_tokens));
    }
    if let Some(v) = config.content.record_json(&semconv_output_messages(
        &response.text,
        &response.tool_calls,
        finish,
    )) {
        chat.record(attr::GEN_AI_OUTPUT_MESSAGES, v);
    }
}

fn record_model_metrics(
    model: &ModelInfo,
    duration: Duration,
    error_type: Option<&str>,
    usage: Option<TokenUsage>,
    time_to_first_chunk: Option<Duration>,
) {
    skein_otel::metrics::record_model_call(&ModelCall {
        provider: &model.provider,
        model: &model.name,
        duration,
        error_type,
        usage,
        time_to_first_chunk,
    });
}

/// What one tool call produced.
struct ToolOutcome {
    item: TurnItem,
    result: Option<Value>,
    error: Option<String>,
    interrupted: bool,
}

/// Runs one tool call in its `execute_tool` span, announcing it as an
/// `mcpToolCall` item.
async fn run_tool_call(
    events: &TurnEvents,
    runtime: &Runtime,
    table: &BTreeMap<String, McpTool>,
    call: &ToolCall,
    interrupted: &mut watch::Receiver<bool>,
) -> ToolOutcome {
    let tool = table.get(&call.name);
    let tool_name = tool.map(|t| t.name.as_str()).unwrap_or(call.name.as_str());
    let server = tool.map(|t| t.server.clone()).unwrap_or_default();
    let span = tracing::info_span!(
        target: "skein_core::tool",
        span::TOOL_EXECUTION,
        { attr::OTEL_NAME } = format!("{} {tool_name}", value::GEN_AI_OPERATION_EXECUTE_TOOL),
        { attr::OTEL_KIND } = value::KIND_INTERNAL,
        { attr::OTEL_STATUS_CODE } = Empty,
        { attr::OTEL_STATUS_DESCRIPTION } = Empty,
        { attr::GEN_AI_OPERATION_NAME } = value::GEN_AI_OPERATION_EXECUTE_TOOL,
        { attr::GEN_AI_TOOL_NAME } = tool_name,
        { attr::GEN_AI_TOOL_CALL_ID } = call.id.as_str(),
        { attr::GEN_AI_TOOL_TYPE } = value::TOOL_TYPE_EXTENSION,
        { attr::MCP_SERVER_NAME } = server.as_str(),
        { attr::ERROR_TYPE } = Empty,
        { attr::GEN_AI_TOOL_CALL_ARGUMENTS } = Empty,
        { attr::GEN_AI_TOOL_CALL_RESULT } = Empty,
    );
    let content = &runtime.config().content;
    let raw = if call.arguments.trim().is_empty() {
        "{}"
    } else {
        call.arguments.as_str()
    };
    let parsed: Result<Value, _> = serde_json::from_str(raw);
    let arguments = parsed
        .as_ref()
        .cloned()
        .unwrap_or_else(|_| Value::String(call.arguments.clone()));
    if let Some(v) = content.record_json(&arguments) {
        span.record(attr::GEN_AI_TOOL_CALL_ARGUMENTS, v);
    }
    events.emit(EventMsg::McpToolCallStarted {
        turn_id: events.turn_id.clone(),
        item_id: call.id.clone(),
        server: server.clone(),
        tool: tool_name.to_owned(),
        arguments: arguments.clone(),
    });

    let mut was_interrupted = false;
    // The `error.type` of a call that produced no result.
    let mut error_type = value::ERROR_TOOL_CALL_REFUSED.to_owned();
    let (result, error) = match (tool, parsed) {
        (None, _) => (
            None,
            Some(format!("no tool named {:?} is available", call.name)),
        ),
        (Some(_), Err(err)) => (
            None,
            Some(format!("the arguments are not valid JSON: {err}")),
        ),
        (Some(_), Ok(v)) if !v.is_object() => {
            (None, Some("the arguments must be a JSON object".to_owned()))
        }
        (Some(tool), Ok(v)) => {
            let arguments = v.as_object().cloned();
            let call_future = runtime
                .mcp()
                .call_tool(&tool.server, &tool.name, arguments, &span)
                .instrument(span.clone());
            tokio::select! {
                biased;
                () = wait_interrupt(interrupted) => {
                    was_interrupted = true;
                    error_type = value::ERROR_INTERRUPTED.to_owned();
                    (None, Some("interrupted".to_owned()))
                }
                outcome = call_future => match outcome {
                    Ok(result) => (Some(result), None),
                    Err(err) => {
                        error_type = err.error_type;
                        (None, Some(err.message))
                    }
                },
            }
        }
    };
    let is_error_result = result
        .as_ref()
        .and_then(|r| r.get("isError"))
        .and_then(Value::as_bool)
        == Some(true);
    let status = if error.is_some() || is_error_result {
        ToolCallStatus::Failed
    } else {
        ToolCallStatus::Completed
    };
    if let Some(message) = &error {
        span.record(attr::ERROR_TYPE, error_type.as_str());
        record_error(&span, message);
    } else if is_error_result {
        span.record(attr::ERROR_TYPE, value::ERROR_TOOL);
        record_error(&span, "the tool reported an error");
    }
    if let Some(result) = &result
        && let Some(v) = content.record_json(result)
    {
        span.record(attr::GEN_AI_TOOL_CALL_RESULT, v);
    }
    drop(span);
    let status_text = match status {
        ToolCallStatus::Completed => "completed",
        ToolCallStatus::Failed => "failed",
        ToolCallStatus::InProgress => "inProgress",
    };
    events.emit(EventMsg::McpToolCallCompleted {
        turn_id: events.turn_id.clone(),
        item_id: call.id.clone(),
        server: server.clone(),
        tool: tool_name.to_owned(),
        arguments: arguments.clone(),
        status: status_text.to_owned(),
        result: result.clone(),
        error: error.clone(),
    });
    ToolOutcome {
        item: TurnItem::McpToolCall {
            id: call.id.clone(),
            server,
            tool: tool_name.to_owned(),
            arguments,
            status,
            result: result.clone(),
            error: error.clone(),
        },
        result,
        error,
        interrupted: was_interrupted,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn function_names_are_what_the_api_accepts() {
        assert_eq!(function_name("get_current_time"), "get_current_time");
        assert_eq!(function_name("fs.read file"), "fs_read_file");
    }

    fn runtime(text: &str) -> Runtime {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("config.toml");
        std::fs::write(&path, text).expect("write");
        let config = Config::load_with_env(&path, &[], &|_| None).expect("config");
        Runtime::new(Arc::new(config), Duration::ZERO)
    }

    #[test]
    fn models_resolve_against_the_configuration() {
        let rt = runtime(
            "model = \"m1\"\nmodel_provider = \"local\"\n[model_providers.local]\nbase_url = \"http://127.0.0.1:1/v1\"\n",
        );
        let default = rt.resolve(None, None).expect("default");
        assert_eq!(
            (default.name.as_str(), default.provider.as_str()),
            ("m1", "local")
        );
        assert!(rt.resolve(Some("echo"), None).expect("echo").is_echo());
        assert_eq!(rt.resolve(Some("m2"), None).expect("m2").provider, "local");
        assert!(matches!(
            rt.resolve(None, Some("nope")),
            Err(ThreadError::UnknownProvider(_))
        ));
        assert!(rt.resolve(Some("m2"), Some("skein")).is_err());
        let listed: Vec<String> = rt.models().into_iter().map(|(m, _)| m.name).collect();
        assert_eq!(listed, vec!["m1", "echo"]);
        let echo_only = runtime("");
        assert!(echo_only.resolve(Some("gpt"), None).is_err());
    }
}
