//! The turn engine: one loop that runs a turn on any [`Model`].
//!
//! A turn sends the thread's conversation, and the tools of every MCP
//! server when the model takes tools, to the model, streaming its text to
//! the thread's subscribers. When the model asks for tool calls, each runs
//! through its MCP server, the results go back and the model is called
//! again, until it answers without tool calls (and no input was steered in
//! meanwhile) or `max_tool_rounds` is reached.
//!
//! Span ownership: [`start`] opens the turn span beneath the current
//! (dispatch) span and spawns the turn's task. The task is the span's only
//! owner: it records the outcome on it and drops it as the turn reaches its
//! terminal state (completed, interrupted or failed), before
//! `TurnCompleted` goes out. Nothing else holds the turn span: events carry
//! its context as plain data. Each model call runs in its own
//! `chat {model}` span and each tool call in an `execute_tool {tool}` span,
//! both children of the turn span, ended when the call ends.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use skein_otel::metrics::ModelCall as ModelCallMetric;
use skein_otel::names::{attr, value};
use skein_protocol::{
    EventMsg, ItemKind, ItemSummary, ThreadStatus, TokenUsage, TurnKind, TurnStatus,
    W3cTraceContext,
};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::config::Config;
use crate::conversation::{
    Message, ToolCall, conversation_of, opening_message, semconv_input_messages,
    semconv_output_messages, semconv_system_instructions, tool_result_text,
};
use crate::mcp::McpTool;
use crate::models::{ModelRequest, ModelResponse, ToolSpec};
use crate::records::{
    ModelInfo, ToolCallStatus, TurnItem, TurnRecord, answer_item_id, answer_item_kind,
    steered_item_id, unix_now, user_item_id,
};
use crate::runtime::Runtime;
use crate::spans;
use crate::store::Record;
use crate::thread::ThreadEntry;

/// Longest preview kept for a thread.
const PREVIEW_CHARS: usize = 80;

/// A thread's preview: the start of its first user message.
pub(crate) fn preview_of(input: &str) -> String {
    input.chars().take(PREVIEW_CHARS).collect()
}

/// The submission loop's handle on a running turn.
pub(crate) struct RunningTurn {
    /// The turn's id.
    pub(crate) id: String,
    /// Set to true to interrupt the turn.
    pub(crate) interrupt: watch::Sender<bool>,
    /// Input steered into the turn.
    pub(crate) steer: mpsc::UnboundedSender<String>,
    /// The turn's task; it ends once the turn has reached its terminal
    /// state and announced it.
    pub(crate) task: JoinHandle<()>,
}

/// Starts turn `turn_id` of `kind` on `entry`: opens its span beneath the
/// current span (the submission's dispatch span) and spawns the task that
/// runs it and owns the span.
pub(crate) fn start(
    entry: &Arc<ThreadEntry>,
    runtime: &Arc<Runtime>,
    turn_id: String,
    kind: TurnKind,
    input: String,
) -> RunningTurn {
    let (model, previous, history) = {
        let state = entry.state();
        (
            state.info.model.clone(),
            state.last_turn_span.clone(),
            state.turns.clone(),
        )
    };
    let span = spans::turn_span(&entry.id, &turn_id, kind, &model);
    if let Some(previous) = previous {
        skein_otel::add_link(&span, previous);
    }
    let (interrupt, interrupted) = watch::channel(false);
    let (steer, steered) = mpsc::unbounded_channel();
    let turn = Turn {
        entry: Arc::clone(entry),
        runtime: Arc::clone(runtime),
        turn_id: turn_id.clone(),
        kind,
        input,
        history,
        model,
        interrupted,
        steered,
        trace: None,
    };
    let task = tokio::spawn(run(turn, span));
    RunningTurn {
        id: turn_id,
        interrupt,
        steer,
        task,
    }
}

/// Everything a running turn works with.
struct Turn {
    entry: Arc<ThreadEntry>,
    runtime: Arc<Runtime>,
    turn_id: String,
    kind: TurnKind,
    input: String,
    /// The thread's earlier turns.
    history: Vec<TurnRecord>,
    model: ModelInfo,
    interrupted: watch::Receiver<bool>,
    steered: mpsc::UnboundedReceiver<String>,
    /// The turn span's context as a carrier, stamped on every event.
    trace: Option<W3cTraceContext>,
}

impl Turn {
    fn emit(&self, msg: EventMsg) {
        self.entry.emit(msg, self.trace.as_ref());
    }
}

/// How a turn ended, as recorded.
struct TurnResult {
    status: TurnStatus,
    error: Option<String>,
    usage: TokenUsage,
    /// What the turn's model calls cost, when the model has a price.
    cost: Option<spans::Cost>,
    /// The answer (partial when cut short).
    output: String,
    /// Agent messages, steered input and tool calls, for history.
    items: Vec<TurnItem>,
}

/// What is announced once the turn span has ended.
struct Ending {
    turn: Turn,
    status: TurnStatus,
    error: Option<String>,
    usage: TokenUsage,
    total_usage: TokenUsage,
    now_idle: bool,
    /// The turn's summary for `TurnCompleted`.
    summary: Vec<ItemSummary>,
}

/// Runs the turn inside `span`, then ends the span and announces the end.
async fn run(turn: Turn, span: tracing::Span) {
    let started = Instant::now();
    let kind = turn.kind;
    // The span's last handle goes with this future: once it is awaited,
    // the turn span (and with it its dispatch span) has ended.
    let ending = run_in_span(turn, span.clone()).instrument(span).await;
    skein_otel::metrics::record_turn(kind, ending.status, started.elapsed());
    let Ending {
        turn,
        status,
        error,
        usage,
        total_usage,
        now_idle,
        summary,
    } = ending;
    if usage != TokenUsage::default() {
        turn.emit(EventMsg::TokenUsageUpdated {
            turn_id: turn.turn_id.clone(),
            last: usage,
            total: total_usage,
            model_context_window: context_window(&turn),
        });
    }
    if now_idle {
        turn.emit(EventMsg::ThreadStatusChanged {
            status: ThreadStatus::Idle,
        });
    }
    turn.emit(EventMsg::TurnCompleted {
        turn_id: turn.turn_id.clone(),
        status,
        error,
        usage,
        items: summary,
    });
    if now_idle {
        // Nobody may follow the thread any more: it can be unloaded now.
        turn.entry.signal_release();
    }
}

/// The turn from its start record to its durable end, inside its span.
async fn run_in_span(mut turn: Turn, span: tracing::Span) -> Ending {
    // Starting the turn span here records it in the local store as in
    // progress, so a running turn is visible before it ends.
    let context = skein_otel::local_store::start_in_progress(&span);
    // The carrier holds the request's baggage, which goes on with every
    // notification.
    turn.trace = skein_otel::carrier_for_span(&span);
    let (trace_id, span_id) = context
        .as_ref()
        .map(skein_otel::span_ids)
        .map(|ids| (ids.trace_id, ids.span_id))
        .unzip();
    {
        let mut state = turn.entry.state();
        state.last_turn_span = context;
        if turn.kind == TurnKind::Regular && state.info.preview.is_empty() {
            state.info.preview = preview_of(&turn.input);
        }
        state.turns.push(TurnRecord {
            id: turn.turn_id.clone(),
            kind: turn.kind,
            status: TurnStatus::InProgress,
            input: turn.input.clone(),
            output: String::new(),
            error: None,
            usage: TokenUsage::default(),
            trace_id: trace_id.clone(),
            span_id: span_id.clone(),
            items: Vec::new(),
        });
    }
    // Not synced: a crash before the turn ends leaves it `interrupted`. A
    // turn whose start cannot be recorded fails without calling the model.
    let history_error = turn
        .entry
        .persist(
            Record::TurnStarted {
                turn_id: turn.turn_id.clone(),
                kind: turn.kind,
                input: turn.input.clone(),
                trace_id,
                span_id,
                at: unix_now(),
            },
            false,
        )
        .await
        .err();
    turn.emit(EventMsg::ThreadStatusChanged {
        status: ThreadStatus::Active,
    });
    turn.emit(EventMsg::TurnStarted {
        turn_id: turn.turn_id.clone(),
        kind: turn.kind,
    });
    // The turn's input is its first item, whole from the start.
    if !turn.input.is_empty() {
        turn.emit(EventMsg::ItemStarted {
            turn_id: turn.turn_id.clone(),
            item_id: user_item_id(&turn.turn_id),
            kind: ItemKind::UserMessage,
            text: turn.input.clone(),
        });
        turn.emit(EventMsg::ItemCompleted {
            turn_id: turn.turn_id.clone(),
            item_id: user_item_id(&turn.turn_id),
            kind: ItemKind::UserMessage,
            text: turn.input.clone(),
        });
    }

    let result = match history_error {
        Some(message) => TurnResult {
            status: TurnStatus::Failed,
            error: Some(message),
            usage: TokenUsage::default(),
            cost: None,
            output: String::new(),
            items: Vec::new(),
        },
        None => run_model(&mut turn, &span).await,
    };
    let TurnResult {
        status,
        error,
        usage,
        cost,
        output,
        items,
    } = result;
    let summary = summary_items(&turn, &output, &items);

    // Durable before anyone hears the turn is over. A turn whose end
    // cannot be recorded is reported failed, with the reason.
    let (status, error) = match turn
        .entry
        .persist(
            Record::TurnCompleted {
                turn_id: turn.turn_id.clone(),
                status,
                output: output.clone(),
                error: error.clone(),
                usage,
                items: items.clone(),
                at: unix_now(),
            },
            true,
        )
        .await
    {
        Ok(()) => (status, error),
        Err(message) => (TurnStatus::Failed, Some(message)),
    };
    span.record(attr::TURN_STATUS, status.as_str());
    spans::record_usage(&span, usage);
    if let Some(cost) = &cost {
        spans::record_cost(&span, cost);
    }
    if let Some(message) = &error {
        spans::record_error(&span, message);
    }
    if status == TurnStatus::Failed {
        // One line per failed turn, so the log says what the client heard.
        tracing::warn!(
            thread_id = %turn.entry.id,
            turn_id = %turn.turn_id,
            reason = error.as_deref().unwrap_or("unknown"),
            "turn failed"
        );
    }
    let (total_usage, now_idle) = {
        let mut state = turn.entry.state();
        if let Some(record) = state.turns.iter_mut().rev().find(|t| t.id == turn.turn_id) {
            record.status = status;
            record.output = output;
            record.error = error.clone();
            record.usage = usage;
            record.items = items;
        }
        state.info.updated_at = unix_now();
        // Cleared before `TurnCompleted` goes out, so a client reacting to
        // it can start the next turn at once.
        if state.active_turn.as_deref() == Some(turn.turn_id.as_str()) {
            state.active_turn = None;
        }
        let total = state
            .turns
            .iter()
            .fold(TokenUsage::default(), |mut total, t| {
                total.add(t.usage);
                total
            });
        (total, state.active_turn.is_none())
    };
    Ending {
        turn,
        status,
        error,
        usage,
        total_usage,
        now_idle,
        summary,
    }
}

/// The context window of the turn's model, when known: configured with
/// `model_context_window` for the configured model (Skein's providers
/// report no model's window).
fn context_window(turn: &Turn) -> Option<u64> {
    let config = turn.runtime.config();
    (turn.model.name == config.model && turn.model.provider == config.model_provider)
        .then_some(config.model_context_window)
        .flatten()
}

/// The turn's summary, as `turn/completed` shows it: its user message
/// (when it had input), then its answer as history shows it: the last agent
/// message with text, or for a turn that recorded no items (a compaction,
/// a turn that failed before its model answered) its answer item.
fn summary_items(turn: &Turn, output: &str, items: &[TurnItem]) -> Vec<ItemSummary> {
    let mut summary = Vec::with_capacity(2);
    if !turn.input.is_empty() {
        summary.push(ItemSummary {
            item_id: user_item_id(&turn.turn_id),
            kind: ItemKind::UserMessage,
            text: turn.input.clone(),
        });
    }
    let answer = if items.is_empty() {
        Some(ItemSummary {
            item_id: answer_item_id(&turn.turn_id),
            kind: answer_item_kind(turn.kind),
            text: output.to_owned(),
        })
    } else {
        items.iter().rev().find_map(|item| match item {
            TurnItem::AgentMessage { id, text } if !text.is_empty() => Some(ItemSummary {
                item_id: id.clone(),
                kind: ItemKind::AgentMessage,
                text: text.clone(),
            }),
            _ => None,
        })
    };
    summary.extend(answer);
    summary
}

/// Resolves when `interrupted` turns true. If the loop drops its end
/// without interrupting, the turn can no longer be interrupted: never
/// resolves.
async fn wait_interrupt(interrupted: &mut watch::Receiver<bool>) {
    if interrupted.wait_for(|stop| *stop).await.is_err() {
        std::future::pending::<()>().await;
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

/// Everything the turn loop keeps as it goes.
#[derive(Default)]
struct Progress {
    items: Vec<TurnItem>,
    usage: TokenUsage,
    cost: Option<spans::Cost>,
    output: Vec<String>,
}

impl Progress {
    fn finish(self, status: TurnStatus, error: Option<String>) -> TurnResult {
        TurnResult {
            status,
            error,
            usage: self.usage,
            cost: self.cost,
            output: self
                .output
                .into_iter()
                .filter(|t| !t.is_empty())
                .collect::<Vec<_>>()
                .join("\n\n"),
            items: self.items,
        }
    }

    /// Keeps a round's answer: its text in the output and, except for a
    /// compaction's summary (which history shows as the turn's
    /// context-compaction item), an agent message item.
    fn answer(&mut self, kind: TurnKind, id: String, text: String) {
        if answer_item_kind(kind) == ItemKind::AgentMessage {
            self.items.push(TurnItem::AgentMessage {
                id,
                text: text.clone(),
            });
        }
        self.output.push(text);
    }

    /// Keeps input steered into the turn, as the model will see it.
    fn steered(&mut self, turn_id: &str, text: String, messages: &mut Vec<Message>) {
        self.items.push(TurnItem::UserMessage {
            id: steered_item_id(turn_id, self.items.len()),
            text: text.clone(),
        });
        messages.push(Message::User { text });
    }
}

/// The id of the answer item of model round `round` (from 1): the first
/// round's is the turn's answer item, as history shows it.
fn round_item_id(turn_id: &str, round: u32) -> String {
    let id = answer_item_id(turn_id);
    if round == 1 {
        id
    } else {
        format!("{id}-{round}")
    }
}

/// How one model round's streaming ended.
// Lives on the stack for one round: boxing the response would only add an
// allocation per model call.
#[allow(clippy::large_enum_variant)]
enum Streamed {
    Interrupted,
    Done(Result<ModelResponse, crate::models::ModelError>),
}

/// The model loop of a turn, on any model. Runs inside the turn span.
async fn run_model(turn: &mut Turn, turn_span: &tracing::Span) -> TurnResult {
    let mut progress = Progress::default();
    let model = match turn.runtime.model(&turn.model) {
        Ok(model) => model,
        Err(message) => return progress.finish(TurnStatus::Failed, Some(message)),
    };
    let runtime = Arc::clone(&turn.runtime);
    let config = runtime.config();
    let mut messages = conversation_of(&turn.history);
    messages.push(opening_message(turn.kind, &turn.input));
    // Tools are offered to every kind of turn: a review or a compaction
    // replays earlier tool calls, which some servers accept only with the
    // tools declared.
    let (specs, table) = if model.takes_tools() && !runtime.mcp().is_empty() {
        tokio::select! {
            biased;
            () = wait_interrupt(&mut turn.interrupted) => {
                return progress.finish(TurnStatus::Interrupted, None);
            }
            tools = runtime.mcp().tools() => tool_table(tools),
        }
    } else {
        (Vec::new(), BTreeMap::new())
    };
    let streams = answer_item_kind(turn.kind) == ItemKind::AgentMessage;
    let mut pending_steer: Vec<String> = Vec::new();

    let mut round = 0u32;
    loop {
        while let Ok(text) = turn.steered.try_recv() {
            spans::record_steer(turn_span, &text);
            pending_steer.push(text);
        }
        for text in pending_steer.drain(..) {
            progress.steered(&turn.turn_id, text, &mut messages);
        }
        round += 1;
        let chat = spans::chat_span(&turn.model);
        chat.record(attr::GEN_AI_CONVERSATION_ID, turn.entry.id.as_str());
        if let Some((host, port)) = model.endpoint() {
            chat.record(attr::SERVER_ADDRESS, host);
            if let Some(port) = port {
                chat.record(attr::SERVER_PORT, i64::from(port));
            }
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

        let item_id = round_item_id(&turn.turn_id, round);
        let item_kind = answer_item_kind(turn.kind);
        let (deltas_tx, mut deltas) = mpsc::channel::<String>(64);
        let request = ModelRequest {
            model: &turn.model.name,
            kind: turn.kind,
            instructions: config.instructions.as_deref(),
            messages: &messages,
            tools: &specs,
            history: &turn.history,
        };
        let started = Instant::now();
        let mut text = String::new();
        let mut item_started = false;
        // The call (and any connection it holds) lives only in this block:
        // leaving it on interrupt drops the call, which cancels it.
        let streamed = {
            let call = model
                .call(request, &chat, &deltas_tx)
                .instrument(chat.clone());
            tokio::pin!(call);
            let mut on_delta = |delta: String| {
                text.push_str(&delta);
                // A compaction's summary is kept in history, not streamed.
                if !streams {
                    return;
                }
                if !item_started {
                    item_started = true;
                    turn.entry.emit(
                        EventMsg::ItemStarted {
                            turn_id: turn.turn_id.clone(),
                            item_id: item_id.clone(),
                            kind: item_kind,
                            text: String::new(),
                        },
                        turn.trace.as_ref(),
                    );
                }
                turn.entry.emit(
                    EventMsg::AgentMessageDelta {
                        turn_id: turn.turn_id.clone(),
                        item_id: item_id.clone(),
                        delta,
                    },
                    turn.trace.as_ref(),
                );
            };
            let interrupt = wait_interrupt(&mut turn.interrupted);
            tokio::pin!(interrupt);
            loop {
                tokio::select! {
                    biased;
                    () = &mut interrupt => break Streamed::Interrupted,
                    Some(steered) = turn.steered.recv() => {
                        spans::record_steer(turn_span, &steered);
                        pending_steer.push(steered);
                    }
                    Some(delta) = deltas.recv() => on_delta(delta),
                    result = &mut call => {
                        while let Ok(delta) = deltas.try_recv() {
                            on_delta(delta);
                        }
                        break Streamed::Done(result);
                    }
                }
            }
        };
        let duration = started.elapsed();
        // Closes the round's item: an agent message that streamed, or a
        // compaction's item, which appears whole once its summary is in.
        let close_item = |text: &str, answered: bool| {
            if !item_started && (streams || !answered) {
                return;
            }
            if !item_started {
                turn.emit(EventMsg::ItemStarted {
                    turn_id: turn.turn_id.clone(),
                    item_id: item_id.clone(),
                    kind: item_kind,
                    text: String::new(),
                });
            }
            turn.emit(EventMsg::ItemCompleted {
                turn_id: turn.turn_id.clone(),
                item_id: item_id.clone(),
                kind: item_kind,
                text: text.to_owned(),
            });
        };
        let response = match streamed {
            Streamed::Interrupted => {
                chat.record(attr::ERROR_TYPE, value::ERROR_INTERRUPTED);
                record_model_metrics(
                    &turn.model,
                    duration,
                    Some(value::ERROR_INTERRUPTED),
                    None,
                    None,
                );
                close_item(&text, false);
                progress.answer(turn.kind, item_id, text);
                return progress.finish(TurnStatus::Interrupted, None);
            }
            Streamed::Done(Err(err)) => {
                spans::record_failure(&chat, &err.error_type, &err.message);
                record_response(&chat, &err.partial, config, "error");
                record_model_metrics(
                    &turn.model,
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
                close_item(&partial, false);
                if !partial.is_empty() {
                    progress.answer(turn.kind, item_id, partial);
                }
                return progress.finish(TurnStatus::Failed, Some(err.message));
            }
            Streamed::Done(Ok(response)) => response,
        };
        let finish = response
            .finish_reasons
            .first()
            .map(String::as_str)
            .unwrap_or("stop")
            .to_owned();
        record_response(&chat, &response, config, &finish);
        let usage = response.usage.unwrap_or_default();
        // A cost only from reported usage: none is better than a made-up 0.
        if let Some(price) = config.price(&turn.model.provider, &turn.model.name)
            && let Some(reported) = response.usage
        {
            let cost = spans::Cost {
                amount: price.cost(
                    reported.input_tokens,
                    response.cached_input_tokens.unwrap_or(0),
                    reported.output_tokens,
                ),
                currency: price.currency().to_owned(),
            };
            spans::record_cost(&chat, &cost);
            match &mut progress.cost {
                Some(total) => total.amount += cost.amount,
                None => progress.cost = Some(cost),
            }
        }
        record_model_metrics(
            &turn.model,
            duration,
            None,
            Some(usage),
            response.time_to_first_chunk,
        );
        progress.usage.add(usage);
        drop(chat);
        close_item(&response.text, true);
        progress.answer(turn.kind, item_id, response.text.clone());

        if response.tool_calls.is_empty() {
            while let Ok(text) = turn.steered.try_recv() {
                spans::record_steer(turn_span, &text);
                pending_steer.push(text);
            }
            if !pending_steer.is_empty() {
                // Input steered in while the model answered: one more round.
                messages.push(Message::Assistant {
                    text: response.text,
                    tool_calls: Vec::new(),
                });
                continue;
            }
            return progress.finish(TurnStatus::Completed, None);
        }
        messages.push(Message::Assistant {
            text: response.text.clone(),
            tool_calls: response.tool_calls.clone(),
        });
        for call in &response.tool_calls {
            let outcome = run_tool_call(turn, &runtime, &table, call).await;
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
fn record_response(chat: &tracing::Span, response: &ModelResponse, config: &Config, finish: &str) {
    if let Some(id) = &response.response_id {
        chat.record(attr::GEN_AI_RESPONSE_ID, id.as_str());
    }
    if let Some(model) = &response.response_model {
        chat.record(attr::GEN_AI_RESPONSE_MODEL, model.as_str());
    }
    if !response.finish_reasons.is_empty() {
        skein_otel::set_string_array(
            chat,
            attr::GEN_AI_RESPONSE_FINISH_REASONS,
            &response.finish_reasons,
        );
    }
    if let Some(usage) = response.usage {
        spans::record_usage(chat, usage);
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
    skein_otel::metrics::record_model_call(&ModelCallMetric {
        provider: model.provider_name,
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
    turn: &mut Turn,
    runtime: &Runtime,
    table: &BTreeMap<String, McpTool>,
    call: &ToolCall,
) -> ToolOutcome {
    let tool = table.get(&call.name);
    let tool_name = tool.map(|t| t.name.as_str()).unwrap_or(call.name.as_str());
    let server = tool.map(|t| t.server.clone()).unwrap_or_default();
    let span = spans::tool_span(tool_name, &call.id, &server);
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
    turn.emit(EventMsg::McpToolCallStarted {
        turn_id: turn.turn_id.clone(),
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
                () = wait_interrupt(&mut turn.interrupted) => {
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
        spans::record_failure(&span, &error_type, message);
    } else if is_error_result {
        spans::record_failure(&span, value::ERROR_TOOL, "the tool reported an error");
    }
    if let Some(result) = &result
        && let Some(v) = content.record_json(result)
    {
        span.record(attr::GEN_AI_TOOL_CALL_RESULT, v);
    }
    drop(span);
    turn.emit(EventMsg::McpToolCallCompleted {
        turn_id: turn.turn_id.clone(),
        item_id: call.id.clone(),
        server: server.clone(),
        tool: tool_name.to_owned(),
        arguments: arguments.clone(),
        status,
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

    #[test]
    fn the_first_rounds_item_is_the_turns_answer_item() {
        assert_eq!(round_item_id("t", 1), answer_item_id("t"));
        assert_ne!(round_item_id("t", 2), answer_item_id("t"));
    }
}
