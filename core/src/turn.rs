//! A turn: the long-lived turn span and the task that runs inside it.
//!
//! The turn span opens when the submission loop starts the turn and closes
//! exactly once, when the turn completes, is interrupted (by
//! `turn/interrupt` or by shutdown), or fails. Every event of the turn holds
//! a handle to the span, so it ends only after the last `turn/completed`
//! notification was delivered. Each model call runs inside its own
//! `chat <model>` span beneath it.

use std::sync::Arc;
use std::time::Instant;

use skein_otel::metrics::ModelCall;
use skein_otel::names::{attr, span, value};
use skein_protocol::{EventMsg, ItemKind, ThreadStatus, TokenUsage, TurnKind, TurnStatus};
use tokio::sync::{mpsc, watch};
use tracing::Instrument;
use tracing::field::Empty;

use crate::agent::Runtime;
use crate::conversation::TurnItem;
use crate::models::{Model, ModelError, ModelInfo, ModelRequest, PastTurn};
use crate::store::Record;
use crate::threads::{ThreadEntry, TurnRecord, unix_now};

/// `gen_ai.agent.name` of Skein's agent.
pub const AGENT_NAME: &str = "skein";

/// Longest preview kept for a thread.
const PREVIEW_CHARS: usize = 80;

/// Builds a turn span. It is created inside the dispatch span, which
/// becomes its parent.
pub(crate) fn turn_span(
    thread_id: &str,
    turn_id: &str,
    kind: TurnKind,
    model: &ModelInfo,
) -> tracing::Span {
    tracing::info_span!(
        target: "skein_core::turn",
        span::TURN,
        { attr::OTEL_NAME } = format!("invoke_agent {AGENT_NAME}"),
        { attr::OTEL_STATUS_CODE } = Empty,
        { attr::OTEL_STATUS_DESCRIPTION } = Empty,
        { attr::GEN_AI_OPERATION_NAME } = "invoke_agent",
        { attr::GEN_AI_AGENT_NAME } = AGENT_NAME,
        { attr::GEN_AI_CONVERSATION_ID } = thread_id,
        { attr::GEN_AI_REQUEST_MODEL } = model.name.as_str(),
        { attr::THREAD_ID } = thread_id,
        { attr::TURN_ID } = turn_id,
        { attr::TURN_KIND } = kind.as_str(),
        { attr::TURN_STATUS } = Empty,
        { attr::GEN_AI_USAGE_INPUT_TOKENS } = Empty,
        { attr::GEN_AI_USAGE_OUTPUT_TOKENS } = Empty,
    )
}

/// Builds a `chat {model}` span, a child of the current span (the turn
/// span). Response attributes are filled when the call ends.
pub(crate) fn chat_span(model: &ModelInfo) -> tracing::Span {
    tracing::info_span!(
        target: "skein_core::model",
        span::MODEL_CALL,
        { attr::OTEL_NAME } = format!("chat {}", model.name),
        { attr::OTEL_KIND } = value::KIND_CLIENT,
        { attr::OTEL_STATUS_CODE } = Empty,
        { attr::OTEL_STATUS_DESCRIPTION } = Empty,
        { attr::GEN_AI_OPERATION_NAME } = value::GEN_AI_OPERATION_CHAT,
        { attr::GEN_AI_PROVIDER_NAME } = model.provider.as_str(),
        { attr::GEN_AI_REQUEST_MODEL } = model.name.as_str(),
        { attr::GEN_AI_CONVERSATION_ID } = Empty,
        { attr::GEN_AI_RESPONSE_MODEL } = Empty,
        { attr::GEN_AI_RESPONSE_ID } = Empty,
        { attr::GEN_AI_RESPONSE_FINISH_REASONS } = Empty,
        { attr::GEN_AI_USAGE_INPUT_TOKENS } = Empty,
        { attr::GEN_AI_USAGE_OUTPUT_TOKENS } = Empty,
        { attr::SERVER_ADDRESS } = Empty,
        { attr::SERVER_PORT } = Empty,
        { attr::HTTP_REQUEST_RESEND_COUNT } = Empty,
        { attr::ERROR_TYPE } = Empty,
        { attr::GEN_AI_SYSTEM_INSTRUCTIONS } = Empty,
        { attr::GEN_AI_INPUT_MESSAGES } = Empty,
        { attr::GEN_AI_OUTPUT_MESSAGES } = Empty,
    )
}

pub(crate) fn record_usage(span: &tracing::Span, usage: TokenUsage) {
    span.record(attr::GEN_AI_USAGE_INPUT_TOKENS, clamp(usage.input_tokens));
    span.record(attr::GEN_AI_USAGE_OUTPUT_TOKENS, clamp(usage.output_tokens));
}

pub(crate) fn record_error(span: &tracing::Span, message: &str) {
    span.record(attr::OTEL_STATUS_CODE, value::STATUS_ERROR);
    span.record(attr::OTEL_STATUS_DESCRIPTION, message);
}

pub(crate) fn clamp(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// The id of the user-message item of turn `turn_id`. Item ids derive from
/// the turn id, so the items of a turn read back from history carry the
/// ids its live notifications carried.
pub fn user_item_id(turn_id: &str) -> String {
    format!("{turn_id}-user")
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

/// A thread's preview: the start of its first user message.
pub(crate) fn preview_of(input: &str) -> String {
    input.chars().take(PREVIEW_CHARS).collect()
}

pub(crate) fn past_turn(record: &TurnRecord) -> PastTurn {
    PastTurn {
        input: record.input.clone(),
        output: record.output.clone(),
    }
}

/// Everything a turn task needs.
pub(crate) struct TurnTask {
    pub(crate) entry: Arc<ThreadEntry>,
    pub(crate) turn_id: String,
    pub(crate) kind: TurnKind,
    pub(crate) input: String,
    /// The thread's earlier turns.
    pub(crate) history: Vec<TurnRecord>,
    pub(crate) model: ModelInfo,
    pub(crate) runtime: Arc<Runtime>,
    pub(crate) interrupted: watch::Receiver<bool>,
    pub(crate) steer: mpsc::UnboundedReceiver<String>,
    pub(crate) span: tracing::Span,
}

/// Sends a turn's events, each holding the turn span.
pub(crate) struct TurnEvents {
    pub(crate) entry: Arc<ThreadEntry>,
    pub(crate) turn_id: String,
    pub(crate) trace: Option<skein_protocol::W3cTraceContext>,
    pub(crate) span: tracing::Span,
}

impl TurnEvents {
    pub(crate) fn emit(&self, msg: EventMsg) {
        self.entry.emit(msg, self.trace.clone(), &self.span);
    }
}

/// How the model part of a turn ended.
pub(crate) struct TurnResult {
    pub(crate) status: TurnStatus,
    pub(crate) error: Option<String>,
    pub(crate) usage: TokenUsage,
    /// The answer (partial when cut short).
    pub(crate) output: String,
    /// Agent messages and tool calls, for history (empty for echo turns).
    pub(crate) items: Vec<TurnItem>,
}

/// Resolves when `interrupted` turns true. If the loop drops its end
/// without interrupting, the turn can no longer be interrupted: never
/// resolves.
pub(crate) async fn wait_interrupt(interrupted: &mut watch::Receiver<bool>) {
    if interrupted.wait_for(|stop| *stop).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// The low-cardinality `error.type` of a failed model call.
fn model_error_type(err: &ModelError) -> &'static str {
    match err {
        ModelError::Failed(_) => value::ERROR_MODEL_FAILED,
        ModelError::Abandoned => value::ERROR_MODEL_ABANDONED,
    }
}

/// Runs a turn to its end. Runs inside the turn span.
pub(crate) async fn run_turn(task: TurnTask) {
    let TurnTask {
        entry,
        turn_id,
        kind,
        input,
        history,
        model,
        runtime,
        mut interrupted,
        steer,
        span,
    } = task;
    let turn_started = Instant::now();
    // Starting the turn span here records it in the local store as in
    // progress, so a running turn is visible before it ends.
    let context = skein_otel::local_store::start_in_progress(&span);
    let trace = context
        .as_ref()
        .and_then(skein_otel::carrier_for_span_context);
    let (trace_id, span_id) = context
        .as_ref()
        .map(skein_otel::span_ids)
        .map(|ids| (ids.trace_id, ids.span_id))
        .unzip();
    {
        let mut state = entry.state();
        state.last_turn_span = trace.clone();
        if kind == TurnKind::Regular && state.info.preview.is_empty() {
            state.info.preview = preview_of(&input);
        }
        state.turns.push(TurnRecord {
            id: turn_id.clone(),
            kind,
            status: TurnStatus::InProgress,
            input: input.clone(),
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
    let history_error = entry
        .persist(
            Record::TurnStarted {
                turn_id: turn_id.clone(),
                kind,
                input: input.clone(),
                trace_id,
                span_id,
                at: unix_now(),
            },
            false,
        )
        .await
        .err();
    let events = TurnEvents {
        entry: Arc::clone(&entry),
        turn_id: turn_id.clone(),
        trace: trace.clone(),
        span: span.clone(),
    };
    events.emit(EventMsg::ThreadStatusChanged {
        status: ThreadStatus::Active,
    });
    events.emit(EventMsg::TurnStarted {
        turn_id: turn_id.clone(),
        kind,
    });

    let result = if let Some(message) = history_error {
        TurnResult {
            status: TurnStatus::Failed,
            error: Some(message),
            usage: TokenUsage::default(),
            output: String::new(),
            items: Vec::new(),
        }
    } else if model.is_echo() {
        let history = history.iter().map(past_turn).collect();
        run_echo(
            &events,
            &runtime,
            &model,
            kind,
            input,
            history,
            &mut interrupted,
            steer,
        )
        .await
    } else {
        crate::agent::run_remote(
            &events,
            &runtime,
            &model,
            kind,
            &input,
            &history,
            &mut interrupted,
            steer,
        )
        .await
    };
    let TurnResult {
        status,
        error,
        usage,
        output,
        items,
    } = result;

    // Durable before anyone hears the turn is over. A turn whose end
    // cannot be recorded is reported failed, with the reason.
    let (status, error) = match entry
        .persist(
            Record::TurnCompleted {
                turn_id: turn_id.clone(),
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
    record_usage(&span, usage);
    if let Some(message) = &error {
        record_error(&span, message);
    }
    let total_usage = {
        let mut state = entry.state();
        if let Some(record) = state.turns.iter_mut().rev().find(|t| t.id == turn_id) {
            record.status = status;
            record.output = output;
            record.error = error.clone();
            record.usage = usage;
            record.items = items;
        }
        state.info.updated_at = unix_now();
        state
            .turns
            .iter()
            .fold(TokenUsage::default(), |mut total, t| {
                total.add(t.usage);
                total
            })
    };
    let now_idle = {
        // Cleared before `TurnCompleted` goes out, so a client reacting to
        // it can start the next turn at once.
        let mut state = entry.state();
        if state.active_turn.as_deref() == Some(turn_id.as_str()) {
            state.active_turn = None;
        }
        state.active_turn.is_none()
    };
    skein_otel::metrics::record_turn(kind, status, turn_started.elapsed());
    if usage != TokenUsage::default() {
        events.emit(EventMsg::TokenUsageUpdated {
            turn_id: turn_id.clone(),
            last: usage,
            total: total_usage,
        });
    }
    if now_idle {
        events.emit(EventMsg::ThreadStatusChanged {
            status: ThreadStatus::Idle,
        });
    }
    events.emit(EventMsg::TurnCompleted {
        turn_id,
        status,
        error,
        usage,
    });
    // The span ends when the last event holding it has been delivered.
}

/// The offline echo model's turn: one model call, one item (an agent
/// message, or for a compaction a context-compaction item).
#[allow(clippy::too_many_arguments)]
async fn run_echo(
    events: &TurnEvents,
    runtime: &Runtime,
    info: &ModelInfo,
    kind: TurnKind,
    input: String,
    history: Vec<PastTurn>,
    interrupted: &mut watch::Receiver<bool>,
    steer: mpsc::UnboundedReceiver<String>,
) -> TurnResult {
    let turn_id = events.turn_id.clone();
    let item_id = answer_item_id(&turn_id);
    let item_kind = answer_item_kind(kind);
    events.emit(EventMsg::ItemStarted {
        turn_id: turn_id.clone(),
        item_id: item_id.clone(),
        kind: item_kind,
    });

    let chat = chat_span(info);
    let (deltas_tx, mut deltas) = mpsc::channel::<String>(64);
    let request = ModelRequest {
        kind,
        input,
        history,
        steer,
    };
    let call_started = Instant::now();
    let model = runtime.echo();
    let call = model.call(request, deltas_tx).instrument(chat.clone());
    tokio::pin!(call);
    let interrupt = wait_interrupt(interrupted);
    tokio::pin!(interrupt);
    let mut text = String::new();
    let mut first_chunk = None;
    let mut on_delta = |delta: String| {
        first_chunk.get_or_insert_with(|| call_started.elapsed());
        text.push_str(&delta);
        // A compaction's summary is kept in history, not streamed: its item
        // is not an agent message.
        if item_kind != ItemKind::AgentMessage {
            return;
        }
        events.emit(EventMsg::AgentMessageDelta {
            turn_id: turn_id.clone(),
            item_id: item_id.clone(),
            delta,
        });
    };
    let outcome = loop {
        tokio::select! {
            biased;
            () = &mut interrupt => break Outcome::Interrupted,
            Some(delta) = deltas.recv() => on_delta(delta),
            result = &mut call => {
                while let Ok(delta) = deltas.try_recv() {
                    on_delta(delta);
                }
                break match result {
                    Ok(usage) => Outcome::Completed(usage),
                    Err(err) => Outcome::Failed(err.to_string(), model_error_type(&err)),
                };
            }
        }
    };
    let call_duration = call_started.elapsed();

    let (status, error, usage, call_error_type) = match outcome {
        Outcome::Completed(usage) => {
            record_usage(&chat, usage);
            (TurnStatus::Completed, None, usage, None)
        }
        Outcome::Interrupted => (
            TurnStatus::Interrupted,
            None,
            TokenUsage::default(),
            Some(value::ERROR_INTERRUPTED),
        ),
        Outcome::Failed(message, error_type) => {
            record_error(&chat, &message);
            (
                TurnStatus::Failed,
                Some(message),
                TokenUsage::default(),
                Some(error_type),
            )
        }
    };
    drop(chat);
    skein_otel::metrics::record_model_call(&ModelCall {
        provider: &info.provider,
        model: &info.name,
        duration: call_duration,
        error_type: call_error_type,
        usage: (status == TurnStatus::Completed).then_some(usage),
        time_to_first_chunk: first_chunk,
    });

    events.emit(EventMsg::ItemCompleted {
        turn_id,
        item_id,
        kind: item_kind,
        text: text.clone(),
    });
    TurnResult {
        status,
        error,
        usage,
        output: text,
        items: Vec::new(),
    }
}

enum Outcome {
    Completed(TokenUsage),
    Interrupted,
    /// The message, and the `error.type` of the model call metric.
    Failed(String, &'static str),
}
