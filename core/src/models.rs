//! Models: the [`Model`] trait and the offline `echo` model.
//!
//! A model streams text deltas into a channel and returns its token usage.
//! Real providers implement the same trait.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use skein_protocol::{TokenUsage, TurnKind};
use tokio::sync::mpsc;

use crate::config::{ECHO_MODEL, ECHO_PROVIDER, Provider};

/// A model's description.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelInfo {
    /// The model name, as sent to its provider.
    pub name: String,
    /// The provider serving it (`gen_ai.provider.name`).
    pub provider: String,
    /// Name shown to people.
    pub display_name: String,
    /// One-line description.
    pub description: String,
}

impl ModelInfo {
    /// The offline echo model.
    pub fn echo() -> Self {
        Self {
            name: ECHO_MODEL.to_owned(),
            provider: ECHO_PROVIDER.to_owned(),
            display_name: "Echo".to_owned(),
            description: "Offline, deterministic model that streams the user's input back word \
                          by word. Input starting with /fail makes it fail."
                .to_owned(),
        }
    }

    /// `model` served by provider `provider`.
    pub fn remote(name: &str, provider: &Provider) -> Self {
        Self {
            name: name.to_owned(),
            provider: provider.id.clone(),
            display_name: name.to_owned(),
            description: format!("{name} via {}", provider.name),
        }
    }

    /// Whether this is the offline echo model.
    pub fn is_echo(&self) -> bool {
        self.provider == ECHO_PROVIDER
    }
}

/// The model used when a thread names none and nothing is configured.
pub const DEFAULT_MODEL: &str = ECHO_MODEL;

/// A past turn, as context for review and compaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PastTurn {
    /// What the user said.
    pub input: String,
    /// What the agent answered.
    pub output: String,
}

/// What a model is asked.
#[derive(Debug)]
pub struct ModelRequest {
    /// The kind of turn.
    pub kind: TurnKind,
    /// The user's input for this turn (empty for review and compaction).
    pub input: String,
    /// The thread's earlier turns.
    pub history: Vec<PastTurn>,
    /// Extra input steered into the running turn.
    pub steer: mpsc::UnboundedReceiver<String>,
}

/// Why a model call failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ModelError {
    /// The provider (or the echo model, on request) failed.
    #[error("model failed: {0}")]
    Failed(String),
    /// The receiver of the deltas went away.
    #[error("the turn stopped listening")]
    Abandoned,
}

/// A model call in progress: resolves to the call's token usage.
pub type ModelCall<'a> = Pin<Box<dyn Future<Output = Result<TokenUsage, ModelError>> + Send + 'a>>;

/// A model.
pub trait Model: Send + Sync + fmt::Debug {
    /// Streams the answer to `request` into `deltas`.
    fn call(&self, request: ModelRequest, deltas: mpsc::Sender<String>) -> ModelCall<'_>;
}

/// The offline, deterministic model.
///
/// - A regular turn streams the input back, word by word.
/// - A review turn streams a short review of the thread.
/// - A compact turn streams a summary of the thread.
/// - Input starting with `/fail` fails the call.
///
/// Usage counts words: input tokens are the words read (input and history),
/// output tokens the words written.
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

    fn answer(request: &ModelRequest) -> Result<String, ModelError> {
        match request.kind {
            TurnKind::Regular if request.input.trim_start().starts_with(FAIL_PREFIX) => {
                Err(ModelError::Failed(
                    "the echo model was asked to fail (input starts with /fail)".into(),
                ))
            }
            TurnKind::Regular => Ok(request.input.clone()),
            TurnKind::Review => {
                let last = request
                    .history
                    .last()
                    .map(|t| t.input.as_str())
                    .unwrap_or("nothing yet");
                Ok(format!(
                    "Review: the thread has {} earlier turn(s); the last request was: {last}",
                    request.history.len()
                ))
            }
            TurnKind::Compact => {
                let inputs: Vec<&str> = request.history.iter().map(|t| t.input.as_str()).collect();
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
}

fn word_count(text: &str) -> u64 {
    text.split_whitespace().count() as u64
}

impl Model for EchoModel {
    fn call(&self, mut request: ModelRequest, deltas: mpsc::Sender<String>) -> ModelCall<'_> {
        Box::pin(async move {
            let input_tokens = word_count(&request.input)
                + request
                    .history
                    .iter()
                    .map(|t| word_count(&t.input) + word_count(&t.output))
                    .sum::<u64>();
            let answer = Self::answer(&request)?;
            let mut words: std::collections::VecDeque<String> =
                answer.split_whitespace().map(str::to_owned).collect();
            let mut output_tokens = 0u64;
            while let Some(word) = words.pop_front() {
                let delta = if output_tokens == 0 {
                    word
                } else {
                    format!(" {word}")
                };
                deltas
                    .send(delta)
                    .await
                    .map_err(|_| ModelError::Abandoned)?;
                output_tokens += 1;
                if self.delay.is_zero() {
                    tokio::task::yield_now().await;
                } else {
                    tokio::time::sleep(self.delay).await;
                }
                while let Ok(steered) = request.steer.try_recv() {
                    words.extend(steered.split_whitespace().map(str::to_owned));
                }
            }
            Ok(TokenUsage {
                input_tokens,
                output_tokens,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn run(
        kind: TurnKind,
        input: &str,
        history: Vec<PastTurn>,
    ) -> (Result<TokenUsage, ModelError>, String) {
        let (_steer_tx, steer) = mpsc::unbounded_channel();
        let (tx, mut rx) = mpsc::channel(64);
        let model = EchoModel {
            delay: Duration::ZERO,
        };
        let request = ModelRequest {
            kind,
            input: input.into(),
            history,
            steer,
        };
        let result = model.call(request, tx).await;
        let mut text = String::new();
        while let Ok(d) = rx.try_recv() {
            text.push_str(&d);
        }
        (result, text)
    }

    #[tokio::test]
    async fn echo_streams_the_input_back_and_counts_words() {
        let (result, text) = run(TurnKind::Regular, "hello  brave world", vec![]).await;
        assert_eq!(text, "hello brave world");
        assert_eq!(
            result,
            Ok(TokenUsage {
                input_tokens: 3,
                output_tokens: 3
            })
        );
    }

    #[tokio::test]
    async fn echo_fails_on_request() {
        let (result, text) = run(TurnKind::Regular, "/fail please", vec![]).await;
        assert!(matches!(result, Err(ModelError::Failed(_))));
        assert_eq!(text, "");
    }

    #[tokio::test]
    async fn review_and_compact_describe_the_history() {
        let history = vec![PastTurn {
            input: "one".into(),
            output: "one".into(),
        }];
        let (_, review) = run(TurnKind::Review, "", history.clone()).await;
        assert!(review.starts_with("Review:"), "{review}");
        let (_, summary) = run(TurnKind::Compact, "", history).await;
        assert_eq!(summary, "Summary of 1 turn(s): one");
    }
}
