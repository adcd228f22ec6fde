//! Harness for the end-to-end tests: starts the real `skein` binary as a
//! child process, talks to it over stdio or WebSocket, shuts it down
//! gracefully and reads the spans it flushed to its local trace store.
//!
//! Synchronisation is event driven only (responses, stderr lines, process
//! exit), every wait is bounded by [`TIMEOUT`]. Captured stderr is printed
//! when a test panics while a [`Server`] or [`Finished`] is alive.

use std::collections::VecDeque;
use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::{Mutex, mpsc, watch};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Upper bound for every wait on the server (response, stderr line, exit).
pub const TIMEOUT: Duration = Duration::from_secs(30);

/// OTLP span kind of request spans.
pub const SPAN_KIND_SERVER: i64 = 2;
/// OTLP status code for an errored span.
pub const STATUS_CODE_ERROR: i64 = 2;

/// JSON-RPC error codes of the contract.
pub const PARSE_ERROR: i64 = -32700;
pub const METHOD_NOT_FOUND: i64 = -32601;
pub const NOT_INITIALIZED: i64 = -32002;

/// Request ids are unique across the whole test process, so spans can be
/// matched to requests by `rpc.request_id` even with several connections.
static NEXT_REQUEST_ID: AtomicI64 = AtomicI64::new(1);

pub fn next_request_id() -> i64 {
    NEXT_REQUEST_ID.fetch_add(1, Ordering::Relaxed)
}

/// Path of the `skein` binary under test: `SKEIN_BIN` when set, else the
/// one cargo builds for this workspace.
///
/// `cargo test` does not build another package's binaries for a package's
/// integration tests, and a binary merely found in `target/` may be stale.
/// So the first call asks cargo (the one running these tests) to build
/// `skein` in the same profile, which is a no-op when it is fresh, and takes
/// the executable's path from cargo's own report.
pub fn skein_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(path) = std::env::var_os("SKEIN_BIN") {
            let path = PathBuf::from(path);
            assert!(
                path.is_file(),
                "SKEIN_BIN={} does not point to a file",
                path.display()
            );
            return path;
        }
        build_skein()
    })
    .clone()
}

fn build_skein() -> PathBuf {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    // target/<profile-dir>/deps/<test-exe>: the profile directory names the
    // profile ("debug" is the dev profile).
    let exe = std::env::current_exe().expect("current_exe of the test binary");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .and_then(Path::file_name)
        .and_then(|n| n.to_str())
        .expect("test binary lives in target/<profile>/deps")
        .to_owned();
    let profile = if profile_dir == "debug" {
        "dev".to_owned()
    } else {
        profile_dir
    };
    let output = std::process::Command::new(cargo)
        .args(["build", "--package", "skein-app-server", "--bin", "skein"])
        .args([
            "--profile",
            &profile,
            "--message-format",
            "json-render-diagnostics",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stderr(std::process::Stdio::inherit())
        .output()
        .expect("running cargo to build the skein binary");
    assert!(
        output.status.success(),
        "cargo could not build the skein binary (see its errors above)"
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|msg| msg["reason"] == "compiler-artifact" && msg["target"]["name"] == "skein")
        .find_map(|msg| msg["executable"].as_str().map(PathBuf::from))
        .expect("cargo reported no executable for the skein binary")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Stdio,
    WebSocket,
}

impl Transport {
    /// Value of the `rpc.transport` span attribute for this transport.
    pub fn attr(self) -> &'static str {
        match self {
            Transport::Stdio => "stdio",
            Transport::WebSocket => "websocket",
        }
    }
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.attr())
    }
}

/// A W3C trace context the test plays the client side of.
#[derive(Debug, Clone)]
pub struct TraceContext {
    pub trace_id: String,
    pub span_id: String,
}

impl TraceContext {
    pub fn random() -> Self {
        let trace_id = format!("{:016x}{:016x}", random_u64(), random_u64());
        let span_id = format!("{:016x}", random_u64());
        Self { trace_id, span_id }
    }

    pub fn traceparent(&self) -> String {
        format!("00-{}-{}-01", self.trace_id, self.span_id)
    }
}

/// A non-zero pseudo random number (no `rand` dependency needed).
fn random_u64() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    loop {
        let mut hasher = RandomState::new().build_hasher();
        hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
        hasher.write_u32(std::process::id());
        let value = hasher.finish();
        if value != 0 {
            return value;
        }
    }
}

/// Extra settings for a server start.
#[derive(Debug, Default, Clone)]
pub struct ServerOptions {
    env: Vec<(String, String)>,
}

impl ServerOptions {
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }
}

type SharedStdin = Arc<Mutex<Option<ChildStdin>>>;

/// Strips ANSI escape sequences (`ESC [ ... final-byte`) from a log line.
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.clone().next() == Some('[') {
                chars.next();
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

/// Reads `reader` line by line into a watch channel until EOF.
fn spawn_line_collector<R>(reader: R) -> (watch::Receiver<Vec<String>>, JoinHandle<()>)
where
    R: tokio::io::AsyncRead + Unpin + Send + 'static,
{
    let (tx, rx) = watch::channel(Vec::new());
    let task = tokio::spawn(async move {
        let mut lines = BufReader::new(reader).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let line = strip_ansi(&line);
            tx.send_modify(|all| all.push(line));
        }
    });
    (rx, task)
}

fn print_captured(label: &str, what: &str, lines: &[String]) {
    eprintln!("----- {what} of {label} ({} lines) -----", lines.len());
    for line in lines {
        eprintln!("{line}");
    }
    eprintln!("----- end of {what} of {label} -----");
}

/// A running `skein serve` child process.
pub struct Server {
    label: String,
    transport: Transport,
    child: Child,
    home: TempDir,
    trace_dir: PathBuf,
    stderr: watch::Receiver<Vec<String>>,
    stderr_task: JoinHandle<()>,
    /// Captured stdout in WebSocket mode (it must stay free of protocol data).
    stdout: Option<watch::Receiver<Vec<String>>>,
    stdin: SharedStdin,
    /// Stdout lines of the stdio transport, handed to the one stdio client.
    stdio_lines: Option<mpsc::UnboundedReceiver<String>>,
    ws_url: Option<String>,
}

impl Server {
    pub async fn start(transport: Transport) -> Server {
        Self::start_with(transport, ServerOptions::default()).await
    }

    pub async fn start_with(transport: Transport, options: ServerOptions) -> Server {
        let home = tempfile::Builder::new()
            .prefix("skein-e2e-home-")
            .tempdir()
            .expect("create temporary SKEIN_HOME");
        let trace_dir = home.path().join("traces");
        let label = format!("skein serve ({transport})");

        let mut command = Command::new(skein_bin());
        command.arg("serve").arg("--listen").arg(match transport {
            Transport::Stdio => "stdio://",
            Transport::WebSocket => "ws://127.0.0.1:0",
        });
        command.arg("--trace-dir").arg(&trace_dir);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("OTEL_") {
                command.env_remove(&key);
            }
        }
        command
            .env_remove("TRACEPARENT")
            .env_remove("TRACESTATE")
            .env("SKEIN_HOME", home.path())
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1");
        for (key, value) in &options.env {
            command.env(key, value);
        }
        command
            .stdin(match transport {
                Transport::Stdio => Stdio::piped(),
                Transport::WebSocket => Stdio::null(),
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);

        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("failed to spawn {label}: {e}"));
        let (stderr, stderr_task) =
            spawn_line_collector(child.stderr.take().expect("child stderr is piped"));
        let stdout_pipe = child.stdout.take().expect("child stdout is piped");
        let stdin = Arc::new(Mutex::new(child.stdin.take()));

        let mut server = Server {
            label,
            transport,
            child,
            home,
            trace_dir,
            stderr,
            stderr_task,
            stdout: None,
            stdin,
            stdio_lines: None,
            ws_url: None,
        };

        match transport {
            Transport::Stdio => {
                let (tx, rx) = mpsc::unbounded_channel();
                tokio::spawn(async move {
                    let mut lines = BufReader::new(stdout_pipe).lines();
                    while let Ok(Some(line)) = lines.next_line().await {
                        if tx.send(line).is_err() {
                            break;
                        }
                    }
                });
                server.stdio_lines = Some(rx);
            }
            Transport::WebSocket => {
                let (stdout, _task) = spawn_line_collector(stdout_pipe);
                server.stdout = Some(stdout);
                let line = server
                    .wait_for_stderr(|line| line.contains("listening on ws://"))
                    .await;
                let url = line
                    .split_once("listening on ")
                    .map(|(_, rest)| rest)
                    .and_then(|rest| rest.split_whitespace().next())
                    .expect("listening line has a URL")
                    .to_owned();
                server.ws_url = Some(url);
            }
        }
        server
    }

    /// `ws://127.0.0.1:PORT` as announced on stderr.
    pub fn ws_url(&self) -> &str {
        self.ws_url
            .as_deref()
            .expect("ws_url is only known for a WebSocket server")
    }

    /// `127.0.0.1:PORT` of a WebSocket server.
    pub fn ws_addr(&self) -> String {
        let url = self.ws_url();
        url.strip_prefix("ws://")
            .unwrap_or(url)
            .trim_end_matches('/')
            .to_owned()
    }

    /// Waits until a stderr line satisfies `predicate` and returns it.
    pub async fn wait_for_stderr(&mut self, predicate: impl Fn(&str) -> bool) -> String {
        let found = |lines: &Vec<String>| lines.iter().find(|l| predicate(l)).cloned();
        let timed_out = tokio::time::timeout(
            TIMEOUT,
            self.stderr.wait_for(|lines| found(lines).is_some()),
        )
        .await
        .is_err();
        if let Some(line) = found(&self.stderr.borrow()) {
            return line;
        }
        if timed_out {
            panic!(
                "{}: timed out after {TIMEOUT:?} waiting for an expected stderr line",
                self.label
            );
        }
        let status = self.child.try_wait().ok().flatten();
        panic!(
            "{}: stderr closed (exit status {status:?}) without the expected line",
            self.label
        )
    }

    /// Opens a client connection. For stdio there is exactly one client,
    /// bound to the child's stdin/stdout.
    pub async fn connect(&mut self) -> Client {
        match self.transport {
            Transport::Stdio => {
                let stdout = self
                    .stdio_lines
                    .take()
                    .expect("a stdio server has exactly one client; connect() called twice");
                Client {
                    label: format!("{} client", self.label),
                    conn: Conn::Stdio {
                        stdin: Arc::clone(&self.stdin),
                        stdout,
                    },
                    stash: VecDeque::new(),
                }
            }
            Transport::WebSocket => {
                let url = self.ws_url().to_owned();
                let (ws, _response) =
                    tokio::time::timeout(TIMEOUT, tokio_tungstenite::connect_async(url.as_str()))
                        .await
                        .unwrap_or_else(|_| panic!("timed out connecting to {url}"))
                        .unwrap_or_else(|e| panic!("WebSocket connect to {url} failed: {e}"));
                Client {
                    label: format!("{} client", self.label),
                    conn: Conn::WebSocket(Box::new(ws)),
                    stash: VecDeque::new(),
                }
            }
        }
    }

    /// Graceful shutdown: closes stdin (stdio) or sends SIGTERM (WebSocket),
    /// waits for exit code 0 and returns the spans flushed to the store.
    pub async fn shutdown(mut self) -> Finished {
        match self.transport {
            Transport::Stdio => {
                // Dropping the handle closes the pipe: EOF on the server's stdin.
                drop(self.stdin.lock().await.take());
            }
            Transport::WebSocket => {
                let pid = match self.child.id() {
                    Some(pid) => pid,
                    None => panic!(
                        "{}: exited before shutdown with {:?}",
                        self.label,
                        self.child.try_wait()
                    ),
                };
                let status = Command::new("kill")
                    .arg("-TERM")
                    .arg(pid.to_string())
                    .status()
                    .await
                    .expect("run `kill -TERM`");
                assert!(status.success(), "`kill -TERM {pid}` failed: {status}");
            }
        }

        let status = tokio::time::timeout(TIMEOUT, self.child.wait())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "{}: did not exit within {TIMEOUT:?} after graceful shutdown",
                    self.label
                )
            })
            .expect("wait for the server process");
        // The pipe closes when the process is gone; let the reader finish so
        // that the captured stderr is complete.
        let _ = tokio::time::timeout(TIMEOUT, &mut self.stderr_task).await;
        assert_eq!(
            status.code(),
            Some(0),
            "{}: graceful shutdown must exit with code 0, got {status}",
            self.label
        );

        let spans = read_spans(&self.trace_dir);
        Finished {
            label: self.label.clone(),
            stderr: self.stderr.borrow().clone(),
            spans,
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if std::thread::panicking() {
            print_captured(&self.label, "stderr", &self.stderr.borrow());
            if let Some(stdout) = &self.stdout {
                print_captured(&self.label, "stdout", &stdout.borrow());
            }
            eprintln!("(SKEIN_HOME was {})", self.home.path().display());
        }
    }
}

/// What is left of a server after a graceful shutdown.
pub struct Finished {
    label: String,
    stderr: Vec<String>,
    pub spans: Vec<Span>,
}

impl Finished {
    /// The spans of the request with this JSON-RPC id (rendered as string).
    pub fn spans_for_request(&self, request_id: &str) -> Vec<&Span> {
        self.spans
            .iter()
            .filter(|s| s.attr_str("rpc.request_id").as_deref() == Some(request_id))
            .collect()
    }

    /// The one request span of the request with this id. When internal child
    /// spans carry the id too, the SERVER span is chosen.
    pub fn request_span(&self, request_id: &str) -> &Span {
        let candidates = self.spans_for_request(request_id);
        let servers: Vec<&Span> = candidates
            .iter()
            .copied()
            .filter(|s| s.kind == SPAN_KIND_SERVER)
            .collect();
        match (servers.as_slice(), candidates.as_slice()) {
            ([one], _) => one,
            ([], [one]) => one,
            _ => panic!(
                "expected exactly one request span with rpc.request_id={request_id:?}, \
                 found {} candidates ({} SERVER); all spans:\n{}",
                candidates.len(),
                servers.len(),
                self.dump()
            ),
        }
    }

    pub fn dump(&self) -> String {
        if self.spans.is_empty() {
            return "  (no spans in the trace store)".to_owned();
        }
        self.spans
            .iter()
            .map(|s| format!("  {s}"))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Finished {
    fn drop(&mut self) {
        if std::thread::panicking() {
            print_captured(&self.label, "stderr", &self.stderr);
            eprintln!("----- spans of {} -----\n{}", self.label, self.dump());
        }
    }
}

/// A response to one request.
#[derive(Debug, Clone)]
pub struct Response {
    pub id: i64,
    pub message: Value,
}

impl Response {
    /// The `result`, panicking with the whole message when it is an error.
    pub fn result(&self) -> &Value {
        assert!(
            self.message.get("error").is_none(),
            "request {} failed: {}",
            self.id,
            self.message
        );
        self.message
            .get("result")
            .unwrap_or_else(|| panic!("response {} has no result: {}", self.id, self.message))
    }

    /// The JSON-RPC error code, panicking when the response is no error.
    pub fn error_code(&self) -> i64 {
        error_code(&self.message)
    }

    /// The id as the server renders it on spans.
    pub fn id_str(&self) -> String {
        self.id.to_string()
    }
}

/// The integer `error.code` of a JSON-RPC error message.
pub fn error_code(message: &Value) -> i64 {
    message
        .get("error")
        .and_then(|e| e.get("code"))
        .and_then(Value::as_i64)
        .unwrap_or_else(|| panic!("expected a JSON-RPC error with an integer code: {message}"))
}

type WsStream = WebSocketStream<MaybeTlsStream<TcpStream>>;

enum Conn {
    Stdio {
        stdin: SharedStdin,
        stdout: mpsc::UnboundedReceiver<String>,
    },
    WebSocket(Box<WsStream>),
}

/// One protocol connection to the server (the stdio pipes or a WebSocket).
pub struct Client {
    label: String,
    conn: Conn,
    /// Responses received while waiting for another one.
    stash: VecDeque<Value>,
}

impl Client {
    pub async fn send(&mut self, message: Value) {
        self.send_raw(&message.to_string()).await;
    }

    /// Sends one protocol message (a line on stdio, a text frame on WebSocket).
    pub async fn send_raw(&mut self, text: &str) {
        match &mut self.conn {
            Conn::Stdio { stdin, .. } => {
                let mut guard = stdin.lock().await;
                let pipe = guard
                    .as_mut()
                    .unwrap_or_else(|| panic!("{}: stdin is already closed", self.label));
                let mut line = text.to_owned();
                line.push('\n');
                pipe.write_all(line.as_bytes())
                    .await
                    .unwrap_or_else(|e| panic!("{}: write to stdin failed: {e}", self.label));
                pipe.flush()
                    .await
                    .unwrap_or_else(|e| panic!("{}: flush stdin failed: {e}", self.label));
            }
            Conn::WebSocket(ws) => ws
                .send(Message::text(text))
                .await
                .unwrap_or_else(|e| panic!("{}: sending a text frame failed: {e}", self.label)),
        }
    }

    /// Sends a binary WebSocket frame.
    pub async fn send_binary(&mut self, bytes: Vec<u8>) {
        match &mut self.conn {
            Conn::Stdio { .. } => panic!("binary frames only exist on WebSocket"),
            Conn::WebSocket(ws) => ws
                .send(Message::binary(bytes))
                .await
                .unwrap_or_else(|e| panic!("{}: sending a binary frame failed: {e}", self.label)),
        }
    }

    /// The next message from the server (response, batch or notification).
    pub async fn recv(&mut self) -> Value {
        let label = self.label.clone();
        let text = tokio::time::timeout(TIMEOUT, self.recv_text())
            .await
            .unwrap_or_else(|_| panic!("{label}: no message from the server within {TIMEOUT:?}"));
        serde_json::from_str(&text).unwrap_or_else(|e| {
            panic!("{label}: the server sent something that is not JSON ({e}): {text:?}")
        })
    }

    async fn recv_text(&mut self) -> String {
        match &mut self.conn {
            Conn::Stdio { stdout, .. } => stdout
                .recv()
                .await
                .unwrap_or_else(|| panic!("{}: server closed stdout", self.label)),
            Conn::WebSocket(ws) => loop {
                match ws.next().await {
                    Some(Ok(Message::Text(text))) => return text.as_str().to_owned(),
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                    Some(Ok(other)) => {
                        panic!("{}: expected a text frame, got {other:?}", self.label)
                    }
                    Some(Err(e)) => panic!("{}: WebSocket read failed: {e}", self.label),
                    None => panic!("{}: WebSocket closed by the server", self.label),
                }
            },
        }
    }

    /// The response with this id; notifications are skipped, other
    /// responses are kept for later.
    pub async fn recv_response(&mut self, id: i64) -> Response {
        let wanted = json!(id);
        let is_wanted = |m: &Value| m.get("method").is_none() && m.get("id") == Some(&wanted);
        if let Some(pos) = self.stash.iter().position(is_wanted) {
            let message = self.stash.remove(pos).expect("position is in range");
            return Response { id, message };
        }
        loop {
            let message = self.recv().await;
            if is_wanted(&message) {
                check_outbound(&message);
                return Response { id, message };
            }
            if !is_notification(&message) {
                self.stash.push_back(message);
            }
        }
    }

    /// The next message that is neither a notification nor a stashed one:
    /// a response not yet claimed (e.g. one with `"id": null`) or a batch.
    pub async fn recv_non_notification(&mut self) -> Value {
        if let Some(message) = self.stash.pop_front() {
            return message;
        }
        loop {
            let message = self.recv().await;
            if !is_notification(&message) {
                return message;
            }
        }
    }

    /// The next batch response (a JSON array).
    pub async fn recv_batch(&mut self) -> Vec<Value> {
        match self.recv_non_notification().await {
            Value::Array(items) => items,
            other => panic!("{}: expected a batch response, got {other}", self.label),
        }
    }

    /// Sends a request with a fresh id and an optional envelope `trace`
    /// field (any JSON, to test invalid carriers), returns its response.
    pub async fn request(&mut self, method: &str, params: Value, trace: Option<Value>) -> Response {
        let id = next_request_id();
        let mut message = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        if let Some(trace) = trace {
            message["trace"] = trace;
        }
        self.send(message).await;
        self.recv_response(id).await
    }

    /// `initialize` with this clientInfo, then the `initialized` notification.
    pub async fn initialize(&mut self, name: &str, version: &str) -> Response {
        let response = self
            .request(
                "initialize",
                json!({"clientInfo": {"name": name, "version": version}}),
                None,
            )
            .await;
        let result = response.result();
        assert!(
            result
                .get("serverInfo")
                .and_then(|s| s.get("name"))
                .is_some(),
            "initialize result lacks serverInfo.name: {result}"
        );
        self.send(json!({"jsonrpc": "2.0", "method": "initialized"}))
            .await;
        response
    }

    /// Closes the connection: EOF on stdin (which also shuts a stdio server
    /// down) or a WebSocket close handshake.
    pub async fn close(self) {
        match self.conn {
            Conn::Stdio { stdin, .. } => drop(stdin.lock().await.take()),
            Conn::WebSocket(mut ws) => {
                (*ws)
                    .close(None)
                    .await
                    .unwrap_or_else(|e| panic!("{}: sending close failed: {e}", self.label));
                let drained = tokio::time::timeout(TIMEOUT, async {
                    while let Some(Ok(_)) = ws.next().await {}
                })
                .await;
                assert!(
                    drained.is_ok(),
                    "{}: the server did not finish the close handshake within {TIMEOUT:?}",
                    self.label
                );
            }
        }
    }
}

fn is_notification(message: &Value) -> bool {
    message.get("method").is_some() && message.get("id").is_none()
}

/// Every outbound message carries `"jsonrpc":"2.0"`.
fn check_outbound(message: &Value) {
    assert_eq!(
        message.get("jsonrpc"),
        Some(&json!("2.0")),
        "outbound message lacks \"jsonrpc\":\"2.0\": {message}"
    );
}

/// One exported span, parsed from the OTLP/JSON trace store.
#[derive(Debug, Clone)]
pub struct Span {
    pub trace_id: String,
    pub span_id: String,
    /// `None` for a root span (absent or empty `parentSpanId`).
    pub parent_span_id: Option<String>,
    pub name: String,
    pub kind: i64,
    pub attributes: Vec<(String, Value)>,
    pub status_code: i64,
    pub status_message: Option<String>,
}

impl Span {
    fn from_otlp(span: &Value, origin: &str) -> Span {
        let string_field = |key: &str| -> String {
            span.get(key)
                .and_then(Value::as_str)
                .unwrap_or_else(|| panic!("{origin}: span lacks string field {key:?}: {span}"))
                .to_owned()
        };
        let kind = match span.get("kind") {
            None => 0,
            Some(kind) => kind.as_i64().unwrap_or_else(|| {
                panic!("{origin}: span kind must be an integer, got {kind}: {span}")
            }),
        };
        let attributes = span
            .get("attributes")
            .and_then(Value::as_array)
            .map(|attrs| {
                attrs
                    .iter()
                    .map(|kv| {
                        let key = kv
                            .get("key")
                            .and_then(Value::as_str)
                            .unwrap_or_else(|| panic!("{origin}: attribute without key: {kv}"));
                        let value = kv.get("value").cloned().unwrap_or(Value::Null);
                        (key.to_owned(), value)
                    })
                    .collect()
            })
            .unwrap_or_default();
        let status = span.get("status");
        Span {
            trace_id: string_field("traceId"),
            span_id: string_field("spanId"),
            parent_span_id: span
                .get("parentSpanId")
                .and_then(Value::as_str)
                .filter(|p| !p.is_empty())
                .map(str::to_owned),
            name: string_field("name"),
            kind,
            attributes,
            status_code: status
                .and_then(|s| s.get("code"))
                .and_then(Value::as_i64)
                .unwrap_or(0),
            status_message: status
                .and_then(|s| s.get("message"))
                .and_then(Value::as_str)
                .map(str::to_owned),
        }
    }

    pub fn attr(&self, key: &str) -> Option<&Value> {
        self.attributes
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
    }

    /// A scalar attribute rendered as a string (ints, bools and doubles too).
    pub fn attr_str(&self, key: &str) -> Option<String> {
        let value = self.attr(key)?;
        if let Some(s) = value.get("stringValue").and_then(Value::as_str) {
            return Some(s.to_owned());
        }
        if let Some(i) = value.get("intValue") {
            return match i {
                Value::String(s) => Some(s.clone()),
                other => Some(other.to_string()),
            };
        }
        if let Some(b) = value.get("boolValue").and_then(Value::as_bool) {
            return Some(b.to_string());
        }
        value.get("doubleValue").map(|d| match d {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
    }

    pub fn is_root(&self) -> bool {
        self.parent_span_id.is_none()
    }
}

impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?} kind={} trace={} span={} parent={} status={}",
            self.name,
            self.kind,
            self.trace_id,
            self.span_id,
            self.parent_span_id.as_deref().unwrap_or("-"),
            self.status_code
        )?;
        if let Some(message) = self.status_message.as_deref().filter(|m| !m.is_empty()) {
            write!(f, " status.message={message:?}")?;
        }
        for (key, _) in &self.attributes {
            write!(f, " {key}={}", self.attr_str(key).as_deref().unwrap_or("?"))?;
        }
        Ok(())
    }
}

/// All spans of every `*.jsonl` file under `dir` (recursively).
pub fn read_spans(dir: &Path) -> Vec<Span> {
    let mut files = Vec::new();
    collect_jsonl(dir, &mut files);
    files.sort();
    let mut spans = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file)
            .unwrap_or_else(|e| panic!("read trace file {}: {e}", file.display()));
        for (index, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let origin = format!("{}:{}", file.display(), index + 1);
            let data: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("{origin}: not a JSON TracesData line ({e}): {line}"));
            let resource_spans = data
                .get("resourceSpans")
                .and_then(Value::as_array)
                .unwrap_or_else(|| panic!("{origin}: no resourceSpans array: {line}"));
            for resource in resource_spans {
                let scopes = resource.get("scopeSpans").and_then(Value::as_array);
                for scope in scopes.into_iter().flatten() {
                    let list = scope.get("spans").and_then(Value::as_array);
                    for span in list.into_iter().flatten() {
                        spans.push(Span::from_otlp(span, &origin));
                    }
                }
            }
        }
    }
    spans
}

fn collect_jsonl(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries {
        let path = entry.expect("read trace dir entry").path();
        if path.is_dir() {
            collect_jsonl(&path, out);
        } else if path.extension().is_some_and(|ext| ext == "jsonl") {
            out.push(path);
        }
    }
}
