//! Models: the [`Model`] trait every model implements, and the offline
//! `echo` model.
//!
//! A model call gets the conversation so far and the tools on offer,
//! streams its text into a channel as it comes, and returns the whole
//! answer: text, tool calls, usage and the response's metadata. The turn
//! engine ([`crate::engine`]) runs every model through this one trait: the
//! echo model here and the OpenAI-compatible provider
//! ([`crate::providers::openai`]).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use serde_json::Value;
use skein_otel::names::value;
use skein_protocol::{TokenUsage, TurnKind};
use tokio::sync::mpsc;

use crate::config::ECHO_MODEL;
use crate::conversation::{Message, ToolCall};
use crate::records::TurnRecord;

/// The model used when a thread names none and nothing is configured.
pub const DEFAULT_MODEL: &str = ECHO_MODEL;

/// A tool a model may call.
#[derive(Clone, Debug, PartialEq)]
pub struct ToolSpec {
    /// The name the model uses.
    pub name: String,
    /// What it does.
    pub description: String,
    /// The JSON Schema of its arguments.
    pub parameters: Value,
}

/// One model call's request.
#[derive(Clone, Copy, Debug)]
pub struct ModelRequest<'a> {
    /// The model, as its provider names it.
    pub model: &'a str,
    /// The kind of turn the call belongs to.
    pub kind: TurnKind,
    /// System instructions, sent first.
    pub instructions: Option<&'a str>,
    /// The conversation, ending with what the model is to answer.
    pub messages: &'a [Message],
    /// The tools offered.
    pub tools: &'a [ToolSpec],
    /// The thread's earlier turns, as recorded.
    pub history: &'a [TurnRecord],
}

/// What a model call returned (or, on failure, had returned so far).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ModelResponse {
    /// The answer's text.
    pub text: String,
    /// The tool calls asked for.
    pub tool_calls: Vec<ToolCall>,
    /// `finish_reason` of each choice.
    pub finish_reasons: Vec<String>,
    /// The response id.
    pub response_id: Option<String>,
    /// The model that answered.
    pub response_model: Option<String>,
    /// Token usage, when the model reported it.
    pub usage: Option<TokenUsage>,
    /// Of the input tokens, those the provider read from its prompt cache
    /// (`prompt_tokens_details.cached_tokens`), when reported.
    pub cached_input_tokens: Option<u64>,
    /// Time from sending the request to the first chunk.
    pub time_to_first_chunk: Option<Duration>,
}

/// A failed model call.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct ModelError {
    /// The low-cardinality class (`error.type`): an HTTP status code, or a
    /// constant of [`skein_otel::names::value`] such as `timeout`,
    /// `connection`, `stream_cut`, `model_failed` or `abandoned`.
    pub error_type: String,
    /// A message the client can show. Never holds an API key.
    pub message: String,
    /// What had streamed before the failure.
    pub partial: ModelResponse,
}

/// A model call in progress.
pub type ModelCall<'a> =
    Pin<Box<dyn Future<Output = Result<ModelResponse, ModelError>> + Send + 'a>>;

/// A model.
pub trait Model: Send + Sync + fmt::Debug {
    /// Answers `request`, streaming text deltas into `deltas` as they come.
    /// `chat` is the call's `chat {model}` span: a model that calls out
    /// carries its context on the request and records retries on it.
    /// Dropping the future cancels the call.
    fn call<'a>(
        &'a self,
        request: ModelRequest<'a>,
        chat: &'a tracing::Span,
        deltas: &'a mpsc::Sender<String>,
    ) -> ModelCall<'a>;

    /// `server.address` and `server.port` of the model's API, for a model
    /// reached over the network.
    fn endpoint(&self) -> Option<(&str, Option<u16>)> {
        None
    }

    /// Whether the model is offered tools. A model that never calls them
    /// spares the MCP servers from starting for its turns.
    fn takes_tools(&self) -> bool {
        true
    }
}

/// The offline, deterministic model.
///
/// - A regular turn streams the user's last message back, word by word.
/// - A review turn streams a short review of the thread.
/// - A compact turn streams a summary of the thread.
/// - Input starting with `/fail` fails the call.
///
/// It never calls tools. Usage counts words: input tokens are the words
/// read (the user's message and the thread's history), output tokens the
/// words written.
#[derive(Debug)]
pub struct EchoModel {
    delay: Duration,
}

/// The input prefix that makes the echo model fail.
pub const FAIL_PREFIX: &str = "/fail";

impl EchoModel {
    /// The echo model, waiting `delay` between words.
    pub fn new(delay: Duration) -> Self {
        Self { delay }
    }

    /// The user's last message: what a regular turn echoes.
    fn last_user_text(messages: &[Message]) -> &str {
        messages
            .iter()
            .rev()
            .find_map(|m| match m {
                Message::User { text } => Some(text.as_str()),
                _ => None,
            })
            .unwrap_or_default()
    }

    /// The answer, or why the call fails.
    fn answer(request: &ModelRequest<'_>) -> Result<String, &'static str> {
        let history = request.history;
        match request.kind {
            TurnKind::Regular => {
                let input = Self::last_user_text(request.messages);
                if input.trim_start().starts_with(FAIL_PREFIX) {
                    return Err(
                        "model failed: the echo model was asked to fail (input starts with /fail)",
                    );
                }
                Ok(input.to_owned())
            }
            TurnKind::Review => {
                let last = history
                    .last()
                    .map(|t| t.input.as_str())
                    .unwrap_or("nothing yet");
                Ok(format!(
                    "Review: the thread has {} earlier turn(s); the last request was: {last}",
                    history.len()
                ))
            }
            TurnKind::Compact => {
                let inputs: Vec<&str> = history.iter().map(|t| t.input.as_str()).collect();
                Ok(format!(
                    "Summary of {} turn(s): {}",
                    inputs.len(),
                    if inputs.is_empty() {
                        "empty thread".to_owned()
                    } else {
                        inputs.join(" / ")
                    }
                ))
            }
        }
    }

    /// The words the echo model reads for `request`.
    fn input_tokens(request: &ModelRequest<'_>) -> u64 {
        let input = match request.kind {
            TurnKind::Regular => Self::last_user_text(request.messages),
            TurnKind::Review | TurnKind::Compact => "",
        };
        word_count(input)
            + request
                .history
                .iter()
                .map(|t| word_count(&t.input) + word_count(&t.output))
                .sum::<u64>()
    }
}

fn word_count(text: &str) -> u64 {
    text.split_whitespace().count() as u64
}

impl Model for EchoModel {
    fn takes_tools(&self) -> bool {
        false
    }

    fn call<'a>(
        &'a self,
        request: ModelRequest<'a>,
        _chat: &'a tracing::Span,
        deltas: &'a mpsc::Sender<String>,
    ) -> ModelCall<'a> {
        Box::pin(async move {
            let started = Instant::now();
            let input_tokens = Self::input_tokens(&request);
            let answer = Self::answer(&request).map_err(|message| ModelError {
                error_type: value::ERROR_MODEL_FAILED.into(),
                message: message.into(),
                partial: ModelResponse::default(),
            })?;
            let mut out = ModelResponse {
                response_model: Some(request.model.to_owned()),
                ..ModelResponse::default()
            };
            let mut output_tokens = 0u64;
            for word in answer.split_whitespace() {
                let delta = if output_tokens == 0 {
                    word.to_owned()
                } else {
                    format!(" {word}")
                };
                out.text.push_str(&delta);
                out.time_to_first_chunk
                    .get_or_insert_with(|| started.elapsed());
                if deltas.send(delta).await.is_err() {
                    return Err(ModelError {
                        error_type: value::ERROR_MODEL_ABANDONED.into(),
                        message: "the turn stopped listening".into(),
                        partial: out,
                    });
                }
                output_tokens += 1;
                if self.delay.is_zero() {
                    tokio::task::yield_now().await;
                } else {
                    tokio::time::sleep(self.delay).await;
                }
            }
            out.finish_reasons = vec!["stop".to_owned()];
            out.usage = Some(TokenUsage {
                input_tokens,
                output_tokens,
            });
            Ok(out)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conversation::opening_message;
    use skein_protocol::TurnStatus;

    fn past(input: &str) -> TurnRecord {
        TurnRecord {
            id: "t0".into(),
            kind: TurnKind::Regular,
            status: TurnStatus::Completed,
            input: input.into(),
            output: input.into(),
            error: None,
            usage: TokenUsage::default(),
            trace_id: None,
            span_id: None,
            items: Vec::new(),
        }
    }

    async fn run(
        kind: TurnKind,
        input: &str,
        history: &[TurnRecord],
    ) -> (Result<ModelResponse, ModelError>, String) {
        let (tx, mut rx) = mpsc::channel(64);
        let model = EchoModel::new(Duration::ZERO);
        let messages = [opening_message(kind, input)];
        let request = ModelRequest {
            model: ECHO_MODEL,
            kind,
            instructions: None,
            messages: &messages,
            tools: &[],
            history,
        };
        let span = tracing::Span::none();
        let result = model.call(request, &span, &tx).await;
        let mut text = String::new();
        while let Ok(d) = rx.try_recv() {
            text.push_str(&d);
        }
        (result, text)
    }

    #[tokio::test]
    async fn echo_streams_the_input_back_and_counts_words() {
        let (result, text) = run(TurnKind::Regular, "hello  brave world", &[]).await;
        assert_eq!(text, "hello brave world");
        let response = result.expect("answer");
        assert_eq!(response.text, "hello brave world");
        assert!(response.tool_calls.is_empty());
        assert_eq!(
            response.usage,
            Some(TokenUsage {
                input_tokens: 3,
                output_tokens: 3
            })
        );
    }

    #[tokio::test]
    async fn echo_fails_on_request() {
        let (result, text) = run(TurnKind::Regular, "/fail please", &[]).await;
        let err = result.expect_err("asked to fail");
        assert_eq!(err.error_type, value::ERROR_MODEL_FAILED);
        assert_eq!(text, "");
    }

    #[tokio::test]
    async fn review_and_compact_describe_the_history() {
        let history = [past("one")];
        let (_, review) = run(TurnKind::Review, "", &history).await;
        assert!(review.starts_with("Review:"), "{review}");
        let (_, summary) = run(TurnKind::Compact, "", &history).await;
        assert_eq!(summary, "Summary of 1 turn(s): one");
    }
}
