//! The OpenAI Chat Completions API, streaming over SSE.
//!
//! One [`OpenAiClient`] per provider holds a `reqwest` client (rustls, so
//! https works); it is the provider's [`Model`]. [`OpenAiClient::stream_chat`] sends `POST
//! {base_url}/chat/completions` with `stream: true`, carrying the W3C
//! `traceparent` / `tracestate` of the given `chat` span, and turns the SSE
//! chunks into text deltas, tool calls, usage and the response's id and
//! model.
//!
//! Failures are bounded: 429 and 5xx (and a connection that could not be
//! made) are retried with backoff, at most [`MAX_ATTEMPTS`] attempts,
//! honouring `Retry-After`; each retry is an event on the span. 401/403 and
//! other 4xx fail at once. A stream that ends without its end marker fails
//! with the partial answer kept. A malformed event never panics: it is
//! skipped with a warning. The API key never appears in messages.
//!
//! Cancellation is by drop: dropping the future closes the HTTP connection.

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime};

use eventsource_stream::Eventsource as _;
use futures_util::StreamExt as _;
use serde_json::{Value, json};
use skein_otel::names::{attr, event, value};
use skein_protocol::TokenUsage;
use tokio::sync::mpsc;

use crate::config::Provider;
use crate::conversation::{Message, ToolCall};
use crate::models::{Model, ModelCall, ModelError, ModelRequest, ModelResponse};

/// Most attempts of one model request (the first one included).
pub const MAX_ATTEMPTS: u32 = 3;
/// Longest wait between attempts, whatever `Retry-After` says.
pub const MAX_RETRY_WAIT: Duration = Duration::from_secs(30);
/// Longest `Retry-After` taken from a response, before [`MAX_RETRY_WAIT`]
/// bounds the wait itself.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);
/// Wait before the second attempt when the server names none; doubled
/// after each failure.
const BASE_BACKOFF: Duration = Duration::from_millis(250);
/// Longest error body read for its message.
const MAX_ERROR_BODY: usize = 16 * 1024;

/// A client of one OpenAI-compatible provider.
#[derive(Clone, Debug)]
pub struct OpenAiClient {
    provider: Provider,
    http: reqwest::Client,
    host: String,
    port: Option<u16>,
}

/// Why a client could not be built.
#[derive(Debug, thiserror::Error)]
#[error("provider {provider:?}: {message}")]
pub struct ClientError {
    provider: String,
    message: String,
}

impl OpenAiClient {
    /// A client of `provider`.
    pub fn new(provider: Provider) -> Result<Self, ClientError> {
        let error = |message: String| ClientError {
            provider: provider.id.clone(),
            message,
        };
        super::install_crypto_provider();
        let url = reqwest::Url::parse(&provider.base_url)
            .map_err(|e| error(format!("invalid base_url: {e}")))?;
        let host = url.host_str().unwrap_or_default().to_owned();
        let port = url.port_or_known_default();
        let http = reqwest::Client::builder()
            .timeout(provider.request_timeout)
            .connect_timeout(Duration::from_secs(10).min(provider.request_timeout))
            .no_proxy()
            .build()
            .map_err(|e| error(format!("cannot build the HTTP client: {e}")))?;
        Ok(Self {
            provider,
            http,
            host,
            port,
        })
    }

    /// The provider.
    pub fn provider(&self) -> &Provider {
        &self.provider
    }

    /// `server.address` of the API.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// `server.port` of the API.
    pub fn port(&self) -> Option<u16> {
        self.port
    }

    /// Streams one model call, retrying as described in the module docs.
    /// Text deltas go to `deltas` as they arrive. `span` is the `chat`
    /// span: its context goes out as `traceparent`, and retries are
    /// recorded on it.
    pub async fn stream_chat(
        &self,
        request: ModelRequest<'_>,
        span: &tracing::Span,
        deltas: &mpsc::Sender<String>,
    ) -> Result<ModelResponse, ModelError> {
        let body = request_body(&request);
        let url = format!("{}/chat/completions", self.provider.base_url);
        let mut trace_headers = reqwest::header::HeaderMap::new();
        skein_otel::inject(span, |name, value| {
            if let Ok(value) = reqwest::header::HeaderValue::from_str(&value) {
                trace_headers.insert(name, value);
            }
        });
        let mut attempt = 1u32;
        let result = loop {
            let started = Instant::now();
            let mut builder = self
                .http
                .post(&url)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .header(reqwest::header::ACCEPT, "text/event-stream")
                .body(body.to_string());
            if let Some(key) = &self.provider.api_key {
                builder = builder.bearer_auth(key);
            }
            builder = builder.headers(trace_headers.clone());
            let (retry_wait, failure) = match builder.send().await {
                Ok(response) if response.status().is_success() => {
                    break self.read_stream(response, started, deltas).await;
                }
                Ok(response) => {
                    let status = response.status();
                    let retry_after = retry_after(response.headers());
                    let detail = error_detail(response).await;
                    // Refused credentials: say where the key should come
                    // from (the variable's name, never its value).
                    let hint = if matches!(status.as_u16(), 401 | 403) {
                        format!(" ({})", self.provider.key_hint())
                    } else {
                        String::new()
                    };
                    let failure = ModelError {
                        error_type: status.as_u16().to_string(),
                        message: self.clean(&format!(
                            "the model API answered HTTP {status}{}{hint}",
                            detail.map(|d| format!(": {d}")).unwrap_or_default()
                        )),
                        partial: ModelResponse::default(),
                    };
                    let retryable = status.as_u16() == 429 || status.is_server_error();
                    (
                        retryable.then(|| retry_after.unwrap_or(backoff(attempt))),
                        failure,
                    )
                }
                Err(err) => {
                    let failure = self.transport_error(&err, ModelResponse::default());
                    let retryable = err.is_connect();
                    (retryable.then(|| backoff(attempt)), failure)
                }
            };
            match retry_wait {
                Some(wait) if attempt < MAX_ATTEMPTS => {
                    let wait = wait.min(MAX_RETRY_WAIT);
                    tracing::event!(
                        parent: span,
                        tracing::Level::INFO,
                        { attr::ERROR_TYPE } = failure.error_type.as_str(),
                        { attr::HTTP_REQUEST_RESEND_COUNT } = i64::from(attempt),
                        { attr::RETRY_WAIT_MS } = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
                        message = event::MODEL_RETRY,
                    );
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
                Some(_) => {
                    break Err(ModelError {
                        message: format!("{} (gave up after {attempt} attempts)", failure.message),
                        ..failure
                    });
                }
                None => break Err(failure),
            }
        };
        if attempt > 1 {
            span.record(attr::HTTP_REQUEST_RESEND_COUNT, i64::from(attempt - 1));
        }
        result
    }

    /// Reads an SSE response to its end marker.
    async fn read_stream(
        &self,
        response: reqwest::Response,
        started: Instant,
        deltas: &mpsc::Sender<String>,
    ) -> Result<ModelResponse, ModelError> {
        let mut out = ModelResponse::default();
        let mut calls: BTreeMap<u64, ToolCall> = BTreeMap::new();
        let mut finished = false;
        let mut stream = response.bytes_stream().eventsource();
        while let Some(next) = stream.next().await {
            let ev = match next {
                Ok(ev) => ev,
                Err(eventsource_stream::EventStreamError::Transport(err)) => {
                    out.tool_calls = calls.into_values().collect();
                    return Err(self.transport_error(&err, out));
                }
                Err(err) => {
                    tracing::warn!(%err, "skipping an unreadable server-sent event");
                    continue;
                }
            };
            if out.time_to_first_chunk.is_none() {
                out.time_to_first_chunk = Some(started.elapsed());
            }
            let data = ev.data.trim();
            if data.is_empty() {
                continue;
            }
            if data == "[DONE]" {
                finished = true;
                break;
            }
            let chunk: Value = match serde_json::from_str(data) {
                Ok(v) => v,
                Err(err) => {
                    tracing::warn!(%err, "skipping a malformed chunk of the model's stream");
                    continue;
                }
            };
            if let Some(error) = chunk.get("error") {
                out.tool_calls = calls.into_values().collect();
                let message = error
                    .get("message")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
                    .unwrap_or_else(|| error.to_string());
                return Err(ModelError {
                    error_type: value::ERROR_STREAM_ERROR.into(),
                    message: self.clean(&format!("the model API reported an error: {message}")),
                    partial: out,
                });
            }
            if out.response_id.is_none() {
                out.response_id = chunk.get("id").and_then(Value::as_str).map(str::to_owned);
            }
            if out.response_model.is_none() {
                out.response_model = chunk
                    .get("model")
                    .and_then(Value::as_str)
                    .map(str::to_owned);
            }
            if let Some(usage) = chunk.get("usage").filter(|u| u.is_object()) {
                out.cached_input_tokens = usage
                    .get("prompt_tokens_details")
                    .and_then(|d| d.get("cached_tokens"))
                    .and_then(Value::as_u64);
                out.usage = Some(TokenUsage {
                    input_tokens: usage
                        .get("prompt_tokens")
                        .and_then(Value::as_u64)
                        .unwrap_or(0),
                    output_tokens: usage
                        .get("completion_tokens")
                        .and_then(Value::as_u64)
                        .unwrap_or(0),
                });
            }
            let choices = chunk.get("choices").and_then(Value::as_array);
            for choice in choices.into_iter().flatten() {
                if let Some(reason) = choice.get("finish_reason").and_then(Value::as_str) {
                    out.finish_reasons.push(reason.to_owned());
                }
                let Some(delta) = choice.get("delta") else {
                    continue;
                };
                if let Some(text) = delta.get("content").and_then(Value::as_str)
                    && !text.is_empty()
                {
                    out.text.push_str(text);
                    if deltas.send(text.to_owned()).await.is_err() {
                        return Err(ModelError {
                            error_type: value::ERROR_MODEL_ABANDONED.into(),
                            message: "the turn stopped listening".into(),
                            partial: out,
                        });
                    }
                }
                let tool_deltas = delta.get("tool_calls").and_then(Value::as_array);
                for call in tool_deltas.into_iter().flatten() {
                    let index = call.get("index").and_then(Value::as_u64).unwrap_or(0);
                    let entry = calls.entry(index).or_insert_with(|| ToolCall {
                        id: String::new(),
                        name: String::new(),
                        arguments: String::new(),
                    });
                    if let Some(id) = call.get("id").and_then(Value::as_str) {
                        entry.id = id.to_owned();
                    }
                    if let Some(function) = call.get("function") {
                        if let Some(name) = function.get("name").and_then(Value::as_str) {
                            entry.name.push_str(name);
                        }
                        if let Some(args) = function.get("arguments").and_then(Value::as_str) {
                            entry.arguments.push_str(args);
                        }
                    }
                }
            }
        }
        out.tool_calls = calls
            .into_values()
            .enumerate()
            .map(|(i, mut call)| {
                if call.id.is_empty() {
                    call.id = format!("call_{i}");
                }
                call
            })
            .collect();
        if !finished && out.finish_reasons.is_empty() {
            return Err(ModelError {
                error_type: value::ERROR_STREAM_CUT.into(),
                message: "the model's stream ended before the answer was complete".into(),
                partial: out,
            });
        }
        Ok(out)
    }

    fn transport_error(&self, err: &reqwest::Error, partial: ModelResponse) -> ModelError {
        let (error_type, what) = if err.is_timeout() {
            (value::ERROR_TIMEOUT, "timed out")
        } else if err.is_connect() {
            (value::ERROR_CONNECTION, "could not connect")
        } else if partial.time_to_first_chunk.is_some() {
            (value::ERROR_STREAM_CUT, "the stream was cut")
        } else {
            (value::ERROR_CONNECTION, "failed")
        };
        // reqwest's messages name the URL, never headers.
        let mut message = format!("the model request to {} {what}", self.host);
        let mut source: Option<&dyn std::error::Error> = std::error::Error::source(err);
        if let Some(cause) = source.take() {
            message.push_str(&format!(": {cause}"));
        }
        ModelError {
            error_type: error_type.into(),
            message: self.clean(&message),
            partial,
        }
    }

    /// Removes the API key from a message, should a server echo it.
    fn clean(&self, message: &str) -> String {
        match &self.provider.api_key {
            Some(key) if key.len() >= 4 => message.replace(key.as_str(), "[REDACTED]"),
            _ => message.to_owned(),
        }
    }
}

/// The wait before attempt `attempt + 1`.
fn backoff(attempt: u32) -> Duration {
    BASE_BACKOFF.saturating_mul(1u32 << attempt.saturating_sub(1).min(6))
}

/// `Retry-After`, read now.
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    retry_after_at(headers, SystemTime::now())
}

/// `Retry-After` as seen at `now`, in either of its forms: a number of
/// seconds, or an HTTP date (the wait until then; zero when it is past).
/// Either is capped at [`MAX_RETRY_AFTER`]; anything else is ignored.
fn retry_after_at(headers: &reqwest::header::HeaderMap, now: SystemTime) -> Option<Duration> {
    let value = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    let wait = match value.parse::<f64>() {
        Ok(secs) if secs.is_finite() && secs >= 0.0 => {
            Duration::from_secs_f64(secs.min(MAX_RETRY_AFTER.as_secs_f64()))
        }
        Ok(_) => return None,
        Err(_) => {
            let at = httpdate::parse_http_date(value).ok()?;
            at.duration_since(now).unwrap_or(Duration::ZERO)
        }
    };
    Some(wait.min(MAX_RETRY_AFTER))
}

/// The `error.message` of an error body, or its start.
async fn error_detail(response: reqwest::Response) -> Option<String> {
    let bytes = response.bytes().await.ok()?;
    let bytes = &bytes[..bytes.len().min(MAX_ERROR_BODY)];
    let text = String::from_utf8_lossy(bytes);
    if let Ok(v) = serde_json::from_str::<Value>(&text)
        && let Some(message) = v
            .get("error")
            .and_then(|e| e.get("message").or(Some(e)))
            .and_then(Value::as_str)
    {
        return Some(message.to_owned());
    }
    let text = text.trim();
    (!text.is_empty()).then(|| text.chars().take(300).collect())
}

impl Model for OpenAiClient {
    fn call<'a>(
        &'a self,
        request: ModelRequest<'a>,
        chat: &'a tracing::Span,
        deltas: &'a mpsc::Sender<String>,
    ) -> ModelCall<'a> {
        Box::pin(self.stream_chat(request, chat, deltas))
    }

    fn endpoint(&self) -> Option<(&str, Option<u16>)> {
        Some((&self.host, self.port))
    }
}

/// The JSON body of a streaming Chat Completions request.
pub fn request_body(request: &ModelRequest<'_>) -> Value {
    let mut messages = Vec::with_capacity(request.messages.len() + 1);
    if let Some(instructions) = request.instructions {
        messages.push(json!({"role": "system", "content": instructions}));
    }
    for message in request.messages {
        messages.push(match message {
            Message::User { text } => json!({"role": "user", "content": text}),
            Message::Assistant { text, tool_calls } if tool_calls.is_empty() => {
                json!({"role": "assistant", "content": text})
            }
            Message::Assistant { text, tool_calls } => json!({
                "role": "assistant",
                "content": if text.is_empty() { Value::Null } else { json!(text) },
                "tool_calls": tool_calls.iter().map(|c| json!({
                    "id": c.id,
                    "type": "function",
                    "function": {"name": c.name, "arguments": c.arguments},
                })).collect::<Vec<_>>(),
            }),
            Message::Tool { call_id, content } => {
                json!({"role": "tool", "tool_call_id": call_id, "content": content})
            }
        });
    }
    let mut body = json!({
        "model": request.model,
        "messages": messages,
        "stream": true,
        "stream_options": {"include_usage": true},
    });
    if !request.tools.is_empty() {
        body["tools"] = request
            .tools
            .iter()
            .map(|t| {
                json!({"type": "function", "function": {
                    "name": t.name,
                    "description": t.description,
                    "parameters": t.parameters,
                }})
            })
            .collect();
    }
    body
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::ToolSpec;

    #[test]
    fn the_body_carries_history_tools_and_streaming() {
        let messages = vec![
            Message::User { text: "hi".into() },
            Message::Assistant {
                text: String::new(),
                tool_calls: vec![ToolCall {
                    id: "c1".into(),
                    name: "t".into(),
                    arguments: "{}".into(),
                }],
            },
            Message::Tool {
                call_id: "c1".into(),
                content: "ok".into(),
            },
        ];
        let tools = vec![ToolSpec {
            name: "t".into(),
            description: "d".into(),
            parameters: json!({"type": "object"}),
        }];
        let body = request_body(&ModelRequest {
            model: "m",
            kind: skein_protocol::TurnKind::Regular,
            instructions: Some("be brief"),
            messages: &messages,
            tools: &tools,
            history: &[],
        });
        assert_eq!(body["stream"], true);
        assert_eq!(body["messages"][0]["role"], "system");
        assert_eq!(body["messages"][2]["tool_calls"][0]["id"], "c1");
        assert_eq!(body["messages"][2]["content"], Value::Null);
        assert_eq!(body["messages"][3]["tool_call_id"], "c1");
        assert_eq!(body["tools"][0]["function"]["name"], "t");
    }

    #[test]
    fn retry_after_and_backoff_are_bounded() {
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(reqwest::header::RETRY_AFTER, "2".parse().expect("value"));
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(2)));
        headers.insert(reqwest::header::RETRY_AFTER, "soon".parse().expect("value"));
        assert_eq!(retry_after(&headers), None);
        assert_eq!(backoff(1), Duration::from_millis(250));
        assert_eq!(backoff(2), Duration::from_millis(500));
    }

    fn headers_with_retry_after(value: &str) -> reqwest::header::HeaderMap {
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(reqwest::header::RETRY_AFTER, value.parse().expect("value"));
        headers
    }

    #[test]
    fn retry_after_in_seconds_is_read_and_capped() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let wait = |v: &str| retry_after_at(&headers_with_retry_after(v), now);
        assert_eq!(wait("0"), Some(Duration::ZERO));
        assert_eq!(wait(" 7 "), Some(Duration::from_secs(7)));
        assert_eq!(wait("1.5"), Some(Duration::from_millis(1500)));
        assert_eq!(wait("3600"), Some(MAX_RETRY_AFTER));
        assert_eq!(wait("86400"), Some(MAX_RETRY_AFTER));
        assert_eq!(wait("-1"), None);
        assert_eq!(wait("NaN"), None);
        assert_eq!(wait("inf"), None);
        assert_eq!(wait(""), None);
    }

    #[test]
    fn retry_after_as_an_http_date_is_the_wait_until_then_capped() {
        // Tue, 14 Nov 2023 22:13:20 GMT
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let wait = |v: &str| retry_after_at(&headers_with_retry_after(v), now);
        assert_eq!(
            wait("Tue, 14 Nov 2023 22:13:32 GMT"),
            Some(Duration::from_secs(12))
        );
        // The obsolete forms HTTP still allows.
        assert_eq!(
            wait("Tuesday, 14-Nov-23 22:13:25 GMT"),
            Some(Duration::from_secs(5))
        );
        assert_eq!(
            wait("Tue Nov 14 22:13:21 2023"),
            Some(Duration::from_secs(1))
        );
        // A date already past: retry at once.
        assert_eq!(wait("Tue, 14 Nov 2023 22:00:00 GMT"), Some(Duration::ZERO));
        // Far ahead: capped as the seconds form is.
        assert_eq!(wait("Wed, 15 Nov 2023 22:13:20 GMT"), Some(MAX_RETRY_AFTER));
        assert_eq!(wait("Tue, 14 Nov 2023 25:99:00 GMT"), None);
        assert_eq!(wait("next Tuesday"), None);
    }
}
