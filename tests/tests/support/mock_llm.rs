//! A local stand-in for a paid model API: an OpenAI-compatible Chat
//! Completions server on 127.0.0.1:0 speaking HTTP/1.1 and SSE.
//!
//! Each request is recorded (method, path, headers, JSON body) and answered
//! with the next scripted [`Reply`]. Streams use the OpenAI chunk format
//! (`chat.completion.chunk` objects, `data: [DONE]` at the end) with a
//! close-delimited body (`Connection: close`), so a client closing the
//! connection early is seen as EOF and reported by [`MockLlm::wait_for_close`].

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};

use super::{ServerOptions, TIMEOUT};

/// One scripted answer.
#[derive(Debug, Clone)]
pub enum Reply {
    /// `200` with these SSE `data:` payloads, then `data: [DONE]`.
    Stream(Vec<Value>),
    /// `200` with these payloads, then the connection is closed without
    /// `[DONE]` (a stream cut mid-way).
    Cut(Vec<Value>),
    /// `200` with these payloads, then the stream stalls: nothing more is
    /// sent and the connection stays open until the client closes it.
    Hold(Vec<Value>),
    /// `200` with the first payloads, then nothing until the test calls
    /// `notify_one` on the [`Notify`] (before or after: a release is never
    /// lost), then the rest and `data: [DONE]`. Lets a test act while a
    /// model call is known to be mid-stream.
    Gated(Vec<Value>, Arc<Notify>, Vec<Value>),
    /// `200` with these raw SSE `data:` lines (anything, even invalid
    /// JSON), then `data: [DONE]`.
    Raw(Vec<String>),
    /// A plain error status with extra headers and a JSON body.
    Status(u16, Vec<(String, String)>, Value),
}

/// A request the server received.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    /// Lowercase names.
    pub headers: HashMap<String, String>,
    pub body: Value,
    pub at: Instant,
}

#[derive(Default)]
struct State {
    script: VecDeque<Reply>,
    requests: Vec<Recorded>,
    /// When each held stream saw the client close its connection.
    closes: Vec<Instant>,
}

/// The running mock server.
#[derive(Clone)]
pub struct MockLlm {
    base_url: String,
    state: Arc<Mutex<State>>,
    changed: watch::Sender<u64>,
}

fn chunk(delta: Value, finish: Option<&str>) -> Value {
    json!({
        "id": "chatcmpl-mock-1",
        "object": "chat.completion.chunk",
        "created": 1_700_000_000,
        "model": "mock-model-2025",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    })
}

/// The chunks of a text answer streamed in `pieces`, with usage.
pub fn text_chunks(pieces: &[&str], input_tokens: u64, output_tokens: u64) -> Vec<Value> {
    let mut chunks = vec![chunk(json!({"role": "assistant", "content": ""}), None)];
    for piece in pieces {
        chunks.push(chunk(json!({"content": piece}), None));
    }
    chunks.push(chunk(json!({}), Some("stop")));
    chunks.push(json!({
        "id": "chatcmpl-mock-1",
        "object": "chat.completion.chunk",
        "created": 1_700_000_000,
        "model": "mock-model-2025",
        "choices": [],
        "usage": {"prompt_tokens": input_tokens, "completion_tokens": output_tokens,
                  "total_tokens": input_tokens + output_tokens},
    }));
    chunks
}

/// The chunks of an answer asking for one tool call, its arguments split
/// over two chunks.
pub fn tool_call_chunks(call_id: &str, name: &str, arguments: &Value) -> Vec<Value> {
    let args = arguments.to_string();
    let (a, b) = args.split_at(args.len() / 2);
    vec![
        chunk(
            json!({"role": "assistant", "content": null, "tool_calls": [
            {"index": 0, "id": call_id, "type": "function",
             "function": {"name": name, "arguments": a}}]}),
            None,
        ),
        chunk(
            json!({"tool_calls": [{"index": 0, "function": {"arguments": b}}]}),
            None,
        ),
        chunk(json!({}), Some("tool_calls")),
        json!({"id": "chatcmpl-mock-1", "object": "chat.completion.chunk",
               "model": "mock-model-2025", "choices": [],
               "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}}),
    ]
}

impl MockLlm {
    /// Starts the server with `script`.
    pub async fn start(script: Vec<Reply>) -> MockLlm {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind mock LLM");
        let addr = listener.local_addr().expect("mock address");
        let (changed, _) = watch::channel(0);
        let mock = MockLlm {
            base_url: format!("http://{addr}/v1"),
            state: Arc::new(Mutex::new(State {
                script: script.into(),
                ..State::default()
            })),
            changed,
        };
        let server = mock.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let server = server.clone();
                tokio::spawn(async move { server.serve(stream).await });
            }
        });
        mock
    }

    /// `http://127.0.0.1:<port>/v1`.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// The `-c` arguments that make this server the default provider
    /// `mock` with model `mock-model`.
    pub fn config_args(&self) -> Vec<String> {
        vec![
            "-c".into(),
            "model=\"mock-model\"".into(),
            "-c".into(),
            "model_provider=\"mock\"".into(),
            "-c".into(),
            format!("model_providers.mock.base_url=\"{}\"", self.base_url),
            "-c".into(),
            "model_providers.mock.env_key=\"MOCK_API_KEY\"".into(),
        ]
    }

    /// Server options carrying [`MockLlm::config_args`]; the key variable
    /// `MOCK_API_KEY` is the caller's to set (or leave unset).
    pub fn server_options(&self) -> ServerOptions {
        self.config_args()
            .iter()
            .fold(ServerOptions::default(), |options, arg| options.arg(arg))
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.state.lock().expect("mock state").requests.clone()
    }

    /// Waits until `n` requests have arrived; returns them.
    pub async fn wait_for_requests(&self, n: usize) -> Vec<Recorded> {
        let mut rx = self.changed.subscribe();
        let waited = tokio::time::timeout(TIMEOUT, async {
            loop {
                if self.state.lock().expect("mock state").requests.len() >= n {
                    return;
                }
                if rx.changed().await.is_err() {
                    return;
                }
            }
        })
        .await;
        let requests = self.requests();
        assert!(
            waited.is_ok() && requests.len() >= n,
            "mock LLM: {n} requests expected within {TIMEOUT:?}, got {}",
            requests.len()
        );
        requests
    }

    /// How many held streams the client has closed so far.
    pub fn closes(&self) -> usize {
        self.state.lock().expect("mock state").closes.len()
    }

    /// Waits until a client closed a held stream; returns when the server
    /// saw the first close.
    pub async fn wait_for_close(&self) -> Instant {
        let mut rx = self.changed.subscribe();
        let waited = tokio::time::timeout(TIMEOUT, async {
            loop {
                if let Some(at) = self.state.lock().expect("mock state").closes.first() {
                    return Some(*at);
                }
                if rx.changed().await.is_err() {
                    return None;
                }
            }
        })
        .await;
        match waited {
            Ok(Some(at)) => at,
            _ => panic!("mock LLM: the client did not close the held stream within {TIMEOUT:?}"),
        }
    }

    fn bump(&self) {
        self.changed.send_modify(|n| *n += 1);
    }

    async fn serve(&self, mut stream: TcpStream) {
        let Some(recorded) = read_request(&mut stream).await else {
            return;
        };
        let reply = {
            let mut state = self.state.lock().expect("mock state");
            state.requests.push(recorded);
            state.script.pop_front()
        };
        self.bump();
        let reply = reply.unwrap_or_else(|| {
            Reply::Status(
                500,
                vec![],
                json!({"error": {"message": "mock LLM: no scripted reply left"}}),
            )
        });
        let sse_head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\
                        cache-control: no-cache\r\nconnection: close\r\n\r\n";
        match reply {
            Reply::Status(code, headers, body) => {
                let body = body.to_string();
                let mut head = format!(
                    "HTTP/1.1 {code} Error\r\ncontent-type: application/json\r\n\
                     content-length: {}\r\nconnection: close\r\n",
                    body.len()
                );
                for (k, v) in headers {
                    head.push_str(&format!("{k}: {v}\r\n"));
                }
                head.push_str("\r\n");
                let _ = stream.write_all(head.as_bytes()).await;
                let _ = stream.write_all(body.as_bytes()).await;
                let _ = stream.shutdown().await;
            }
            Reply::Stream(chunks) => {
                let _ = stream.write_all(sse_head.as_bytes()).await;
                for c in chunks {
                    let _ = stream.write_all(format!("data: {c}\n\n").as_bytes()).await;
                }
                let _ = stream.write_all(b"data: [DONE]\n\n").await;
                let _ = stream.shutdown().await;
            }
            Reply::Gated(before, release, after) => {
                let _ = stream.write_all(sse_head.as_bytes()).await;
                for c in before {
                    let _ = stream.write_all(format!("data: {c}\n\n").as_bytes()).await;
                }
                let _ = stream.flush().await;
                release.notified().await;
                for c in after {
                    let _ = stream.write_all(format!("data: {c}\n\n").as_bytes()).await;
                }
                let _ = stream.write_all(b"data: [DONE]\n\n").await;
                let _ = stream.shutdown().await;
            }
            Reply::Raw(lines) => {
                let _ = stream.write_all(sse_head.as_bytes()).await;
                for line in lines {
                    let _ = stream
                        .write_all(format!("data: {line}\n\n").as_bytes())
                        .await;
                }
                let _ = stream.write_all(b"data: [DONE]\n\n").await;
                let _ = stream.shutdown().await;
            }
            Reply::Cut(chunks) => {
                let _ = stream.write_all(sse_head.as_bytes()).await;
                for c in chunks {
                    let _ = stream.write_all(format!("data: {c}\n\n").as_bytes()).await;
                }
                let _ = stream.shutdown().await;
            }
            Reply::Hold(chunks) => {
                let _ = stream.write_all(sse_head.as_bytes()).await;
                for c in chunks {
                    let _ = stream.write_all(format!("data: {c}\n\n").as_bytes()).await;
                }
                let _ = stream.flush().await;
                // Wait for the client to go away: EOF or an error.
                let mut buf = [0u8; 1024];
                loop {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {}
                    }
                }
                self.state
                    .lock()
                    .expect("mock state")
                    .closes
                    .push(Instant::now());
                self.bump();
            }
        }
    }
}

/// Reads one HTTP/1.1 request (head and Content-Length body).
async fn read_request(stream: &mut TcpStream) -> Option<Recorded> {
    let mut buf = Vec::new();
    let mut tmp = [0u8; 4096];
    let head_end = loop {
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break pos;
        }
        let n = stream.read(&mut tmp).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&tmp[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut lines = head.split("\r\n");
    let request_line = lines.next()?;
    let mut parts = request_line.split_whitespace();
    let method = parts.next()?.to_owned();
    let path = parts.next()?.to_owned();
    let headers: HashMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let length: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < length {
        let n = stream.read(&mut tmp).await.ok()?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&tmp[..n]);
    }
    Some(Recorded {
        method,
        path,
        headers,
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
        at: Instant::now(),
    })
}
