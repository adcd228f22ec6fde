//! Harness for the end-to-end tests: starts the real `skein` binary as a
//! child process, talks to it over stdio or WebSocket, shuts it down
//! gracefully and reads the spans it flushed to its local trace store.
//!
//! Synchronisation is event driven only (responses, stderr lines, process
//! exit), every wait is bounded by [`TIMEOUT`]. Captured stderr is printed
//! when a test panics while a [`Server`] or [`Finished`] is alive.
//!
//! Every test crate compiles this module on its own and uses only part of
//! it, hence the crate-wide `dead_code` allowance.

#![allow(dead_code)]

pub mod codex_schema;

/// Runs a transport-generic scenario,
/// `async fn scenario(Transport)`, as two tests: `$scenario::stdio` and
/// `$scenario::websocket`.
#[allow(unused_macros)] // used by the test files that cover both transports
macro_rules! both_transports {
    ($($scenario:ident),* $(,)?) => {$(
        mod $scenario {
            use super::Transport;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn stdio() {
                super::$scenario(Transport::Stdio).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn websocket() {
                super::$scenario(Transport::WebSocket).await;
            }
        }
    )*};
}

pub mod mock_llm;
pub mod otlp_receiver;
pub mod raw_ws;

use std::collections::VecDeque;
use std::collections::hash_map::RandomState;
use std::collections::hash_map::{Entry, HashMap};
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

/// OTLP span kind of internal spans (dispatch and turn spans).
pub const SPAN_KIND_INTERNAL: i64 = 1;
/// OTLP span kind of request spans.
pub const SPAN_KIND_SERVER: i64 = 2;
/// OTLP span kind of outgoing calls (model calls).
pub const SPAN_KIND_CLIENT: i64 = 3;
/// OTLP status code for an errored span.
pub const STATUS_CODE_ERROR: i64 = 2;

/// JSON-RPC error codes of the contract.
pub const PARSE_ERROR: i64 = -32700;
pub const METHOD_NOT_FOUND: i64 = -32601;
/// A request before `initialize`: invalid request, as Codex answers.
pub const NOT_INITIALIZED: i64 = -32600;
pub const INVALID_REQUEST: i64 = -32600;
pub const INVALID_PARAMS: i64 = -32602;

/// Name of a turn span.
pub const TURN_SPAN_NAME: &str = "invoke_agent skein";
/// Name of the model call span of the `echo` model.
pub const CHAT_SPAN_NAME: &str = "chat echo";

/// Request ids are unique across the whole test process, so spans can be
/// matched to requests by `rpc.request_id` even with several connections.
static NEXT_REQUEST_ID: AtomicI64 = AtomicI64::new(1);

pub fn next_request_id() -> i64 {
    NEXT_REQUEST_ID.fetch_add(1, Ordering::Relaxed)
}

/// Sends `method` over a WebSocket opened by hand (over TCP or a Unix
/// socket, without [`Client`]) and waits for its answer, skipping
/// notifications and other answers.
pub async fn ws_request<S>(ws: &mut WebSocketStream<S>, method: &str, params: Value) -> Value
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let id = next_request_id();
    let request = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
    ws.send(Message::text(request.to_string()))
        .await
        .unwrap_or_else(|e| panic!("send {method}: {e}"));
    loop {
        let message = tokio::time::timeout(TIMEOUT, ws.next())
            .await
            .unwrap_or_else(|_| panic!("{method} answered in time"))
            .unwrap_or_else(|| panic!("connection open until {method} is answered"))
            .unwrap_or_else(|e| panic!("read the answer to {method}: {e}"));
        if let Message::Text(text) = message {
            let value: Value = serde_json::from_str(&text).expect("JSON");
            if value["id"] == json!(id) {
                return value;
            }
        }
    }
}

/// [`ws_request`] of `initialize` by client `name`: its answer.
pub async fn ws_initialize<S>(ws: &mut WebSocketStream<S>, name: &str) -> Value
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    ws_request(
        ws,
        "initialize",
        json!({"clientInfo": {"name": name, "version": "1"}}),
    )
    .await
}

/// The variable that lets tests whose tools are missing pass without
/// running, outside CI: a comma-separated list of [`Tool`] names, or `all`.
pub const ALLOW_MISSING_VAR: &str = "SKEIN_TESTS_ALLOW_MISSING";

/// An outside program some end-to-end tests need, which `.ci/run`
/// installs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tool {
    /// The MCP virtualenv: `mcp-server-time`, the Python `mcp` SDK and
    /// the `openai` client.
    Mcp,
    /// The Codex CLI and tmux.
    Codex,
    /// Arize Phoenix.
    Phoenix,
}

impl Tool {
    /// Its name in [`ALLOW_MISSING_VAR`].
    pub fn name(self) -> &'static str {
        match self {
            Tool::Mcp => "mcp",
            Tool::Codex => "codex",
            Tool::Phoenix => "phoenix",
        }
    }
}

fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// A test cannot run because `tool` is missing (`what` says what exactly,
/// `install` how to get it). libtest captures the output of a passing
/// test, so a test that returned early would show as passed having done
/// nothing. So it fails, saying how to install the tool, unless
/// [`ALLOW_MISSING_VAR`] names the tool: then (never under `CI=true`) it
/// returns, and the caller skips the test, which the user asked for.
pub fn tool_missing(tool: Tool, what: &str, install: &str) {
    if under_ci() {
        panic!("CI=true but {what}: {install}");
    }
    let allowed = std::env::var(ALLOW_MISSING_VAR).is_ok_and(|list| {
        list.split(',')
            .map(str::trim)
            .any(|name| name == "all" || name == tool.name())
    });
    if allowed {
        eprintln!(
            "\n*** SKIPPING ({ALLOW_MISSING_VAR} names {}): {what} ***\n",
            tool.name()
        );
        return;
    }
    panic!(
        "{what}, so this test cannot run.\n\
         To install it: {install}.\n\
         To leave out the tests that need it on purpose, set {ALLOW_MISSING_VAR}={} \
         (a comma-separated list of mcp, codex, phoenix, or all): they then pass without running.",
        tool.name()
    );
}

/// The MCP virtualenv's `mcp-server-time` and `python`, when installed:
/// `SKEIN_MCP_SERVER_TIME_BIN` and `SKEIN_MCP_PYTHON`, else
/// `~/.cache/skein-ci/mcp-venv`, as `.ci/run` installs it.
pub fn find_mcp_venv() -> Option<(PathBuf, PathBuf)> {
    let from_env = |var: &str| std::env::var_os(var).map(PathBuf::from);
    let venv = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .map(|cache| cache.join("skein-ci/mcp-venv/bin"));
    let time = from_env("SKEIN_MCP_SERVER_TIME_BIN")
        .or_else(|| venv.as_ref().map(|v| v.join("mcp-server-time")))
        .filter(|p| p.is_file());
    let python = from_env("SKEIN_MCP_PYTHON")
        .or_else(|| venv.as_ref().map(|v| v.join("python")))
        .filter(|p| p.is_file());
    time.zip(python)
}

/// How to install the MCP virtualenv by hand.
pub const MCP_VENV_INSTALL: &str = "run .ci/run, or: python3 -m venv ~/.cache/skein-ci/mcp-venv && \
     ~/.cache/skein-ci/mcp-venv/bin/pip install mcp==2.3.0 mcp-server-time==2026.10.19 openai==3.54.0 \
     (or set SKEIN_MCP_SERVER_TIME_BIN and SKEIN_MCP_PYTHON)";

/// The MCP virtualenv's `mcp-server-time` and `python` (the real tool
/// servers of the MCP tests), for a test that needs them: when missing,
/// the test fails saying how to install them, or is skipped (`None`) when
/// [`ALLOW_MISSING_VAR`] names `mcp` (see [`tool_missing`]).
pub fn mcp_venv() -> Option<(PathBuf, PathBuf)> {
    let found = find_mcp_venv();
    if found.is_none() {
        tool_missing(
            Tool::Mcp,
            "the MCP virtualenv (mcp-server-time, the Python mcp SDK) is not installed",
            MCP_VENV_INSTALL,
        );
    }
    found
}

/// The Codex CLI (`@openai/codex`, the pinned version `.ci/run`
/// installs) and tmux, for the tests that drive the real Codex TUI:
/// `SKEIN_CODEX_BIN`, else the npm prefix `.ci/run` caches
/// (`~/.cache/skein-ci/codex-npm`). When missing, the test fails saying
/// how to install them, or is skipped (`None`) when [`ALLOW_MISSING_VAR`]
/// names `codex` (see [`tool_missing`]).
pub fn codex_tui() -> Option<PathBuf> {
    let cached = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .map(|cache| cache.join("skein-ci/codex-npm/node_modules/.bin/codex"));
    let codex = std::env::var_os("SKEIN_CODEX_BIN")
        .map(PathBuf::from)
        .or(cached)
        .filter(|p| p.is_file());
    let tmux = std::process::Command::new("tmux")
        .arg("-V")
        .output()
        .is_ok_and(|out| out.status.success());
    match codex {
        Some(codex) if tmux => Some(codex),
        _ => {
            tool_missing(
                Tool::Codex,
                &format!(
                    "the Codex CLI or tmux is missing (Codex CLI found: {}, tmux found: {tmux})",
                    codex.is_some()
                ),
                "run .ci/run, or: npm install --prefix ~/.cache/skein-ci/codex-npm \
                 @openai/codex@0.169.0 (or set SKEIN_CODEX_BIN), and install tmux",
            );
            None
        }
    }
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
    cargo_build(
        &["--package", "skein-app-server", "--bin", "skein"],
        "skein",
    )
}

/// The `weather_server` example of `skein-rmcp`: a real rmcp server over
/// stdio wrapped in `TracedServer`, which writes its spans to a Skein
/// local store under the directory given as `--trace-dir DIR`. Built on
/// first use with the test's profile (Cargo builds `CARGO_BIN_EXE_*` only
/// for binaries of the tests' own package), or `SKEIN_WEATHER_SERVER_BIN`.
pub fn weather_server_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(path) = std::env::var_os("SKEIN_WEATHER_SERVER_BIN") {
            let path = PathBuf::from(path);
            assert!(
                path.is_file(),
                "SKEIN_WEATHER_SERVER_BIN={} does not point to a file",
                path.display()
            );
            return path;
        }
        cargo_build(
            &["--package", "skein-rmcp", "--example", "weather_server"],
            "weather_server",
        )
    })
    .clone()
}

/// Runs `cargo build <target_args>` with the profile the test binary was
/// built with, and returns the executable of the target named `name`.
fn cargo_build(target_args: &[&str], name: &str) -> PathBuf {
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
    let mut command = std::process::Command::new(cargo);
    // Cargo sets these for the test process (they describe the tests
    // package). Build scripts that depend on them (ring's does) would see
    // other values here than in the `cargo test` build that shares their
    // units, and every build would redo them and all that depends on them.
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if key.starts_with("CARGO_PKG_")
            || key.starts_with("CARGO_MANIFEST_")
            || key.starts_with("CARGO_BIN_")
            || matches!(
                key.as_ref(),
                "CARGO_CRATE_NAME" | "CARGO_PRIMARY_PACKAGE" | "CARGO_TARGET_TMPDIR"
            )
        {
            command.env_remove(key.as_ref());
        }
    }
    let output = command
        .arg("build")
        .args(target_args)
        .args([
            "--profile",
            &profile,
            "--message-format",
            "json-render-diagnostics",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stderr(std::process::Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("running cargo to build {name}: {e}"));
    assert!(
        output.status.success(),
        "cargo could not build {name} (see its errors above)"
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|msg| msg["reason"] == "compiler-artifact" && msg["target"]["name"] == name)
        .find_map(|msg| msg["executable"].as_str().map(PathBuf::from))
        .unwrap_or_else(|| panic!("cargo reported no executable for {name}"))
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

    /// The envelope `trace` carrier continuing this context.
    pub fn carrier(&self) -> Value {
        json!({"traceparent": self.traceparent()})
    }

    /// Parses a version-00 `traceparent` (lowercase hex, non-zero ids).
    pub fn parse(traceparent: &str) -> Option<Self> {
        let parts: Vec<&str> = traceparent.split('-').collect();
        let is_hex = |s: &str, len: usize| {
            s.len() == len
                && s.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
                && s.bytes().any(|b| b != b'0')
        };
        match parts.as_slice() {
            ["00", trace_id, span_id, flags]
                if is_hex(trace_id, 32) && is_hex(span_id, 16) && flags.len() == 2 =>
            {
                Some(Self {
                    trace_id: (*trace_id).to_owned(),
                    span_id: (*span_id).to_owned(),
                })
            }
            _ => None,
        }
    }

    /// The context in the envelope `trace.traceparent` of a server message,
    /// panicking when it is missing or malformed.
    pub fn of_message(message: &Value) -> Self {
        let traceparent = message
            .get("trace")
            .and_then(|t| t.get("traceparent"))
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("message lacks a string trace.traceparent: {message}"));
        Self::parse(traceparent)
            .unwrap_or_else(|| panic!("malformed trace.traceparent {traceparent:?}: {message}"))
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

/// A temporary `SKEIN_HOME`, shared by every [`Server`] started in it and
/// removed when the last of them (and of these handles) is gone.
#[derive(Debug, Clone)]
pub struct SkeinHome(Arc<TempDir>);

impl Default for SkeinHome {
    fn default() -> Self {
        Self::new()
    }
}

impl SkeinHome {
    /// A fresh, empty `SKEIN_HOME`.
    pub fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("skein-e2e-home-")
            .tempdir()
            .expect("create temporary SKEIN_HOME");
        Self(Arc::new(dir))
    }

    pub fn path(&self) -> &Path {
        self.0.path()
    }

    /// `$SKEIN_HOME/threads`, the durable thread store.
    pub fn threads_dir(&self) -> PathBuf {
        self.path().join("threads")
    }

    /// `$SKEIN_HOME/threads/<thread-id>.jsonl`.
    pub fn thread_file(&self, thread_id: &str) -> PathBuf {
        self.threads_dir().join(format!("{thread_id}.jsonl"))
    }
}

/// Keeps the test's own telemetry settings (`OTEL_*`, `TRACEPARENT`,
/// `TRACESTATE`) away from a `skein` child and turns colour off.
fn scrub_env(command: &mut Command) {
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("OTEL_") {
            command.env_remove(&key);
        }
    }
    command
        .env_remove("TRACEPARENT")
        .env_remove("TRACESTATE")
        .env("NO_COLOR", "1");
}

/// Runs `skein serve --trace-dir none ARGS` with `SKEIN_HOME=home`, no
/// standard input and the environment [`Server::start_with`] scrubs, with
/// `RUST_LOG` unset (the default filter) and then `env` on top; expects it
/// to refuse to start within [`TIMEOUT`] and returns its stderr.
pub async fn serve_refused(home: &Path, args: &[&str], env: &[(&str, &str)]) -> String {
    let mut command = Command::new(skein_bin());
    command
        .arg("serve")
        .arg("--trace-dir")
        .arg("none")
        .args(args);
    scrub_env(&mut command);
    command
        .env_remove("RUST_LOG")
        .env("SKEIN_HOME", home)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let output = tokio::time::timeout(TIMEOUT, command.output())
        .await
        .unwrap_or_else(|_| panic!("skein serve {args:?} did not exit within {TIMEOUT:?}"))
        .expect("run skein serve");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(
        !output.status.success(),
        "startup must fail with {args:?} {env:?}; stderr:\n{stderr}"
    );
    stderr
}

/// The permission bits of `path`.
pub fn mode_of(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("stat {}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

/// Extra settings for a server start.
#[derive(Debug, Default, Clone)]
pub struct ServerOptions {
    env: Vec<(String, String)>,
    args: Vec<String>,
    home: Option<SkeinHome>,
    trace_dir: Option<PathBuf>,
    umask: Option<u32>,
    open_files: Option<(u64, u64)>,
    listen: Option<String>,
}

impl ServerOptions {
    /// These options followed by `other`'s environment and arguments.
    pub fn merge(mut self, other: ServerOptions) -> Self {
        self.env.extend(other.env);
        self.args.extend(other.args);
        self.home = other.home.or(self.home);
        self.trace_dir = other.trace_dir.or(self.trace_dir);
        self.umask = other.umask.or(self.umask);
        self.open_files = other.open_files.or(self.open_files);
        self.listen = other.listen.or(self.listen);
        self
    }

    /// A WebSocket server listens on `url` (such as `unix:///path`) instead
    /// of a free loopback port; [`Server::ws_url`] is then that address, as
    /// the server announces it.
    pub fn listen(mut self, url: &str) -> Self {
        self.listen = Some(url.to_owned());
        self
    }

    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// An extra `skein serve` argument.
    pub fn arg(mut self, arg: &str) -> Self {
        self.args.push(arg.to_owned());
        self
    }

    /// `--echo-delay-ms`: the echo model's wait between streamed words.
    pub fn echo_delay_ms(self, millis: u64) -> Self {
        self.arg("--echo-delay-ms").arg(&millis.to_string())
    }

    /// Runs the server in an existing `SKEIN_HOME` (e.g. [`Server::home`]
    /// of an earlier server) instead of a fresh one. Its spans go to a
    /// trace directory of its own, `$SKEIN_HOME/traces-<n>`, so that each
    /// server's [`Finished`] holds only its own spans.
    pub fn home(mut self, home: &SkeinHome) -> Self {
        self.home = Some(home.clone());
        self
    }

    /// Writes spans to this directory instead of the home's.
    pub fn trace_dir(mut self, dir: &Path) -> Self {
        self.trace_dir = Some(dir.to_path_buf());
        self
    }

    /// Starts the server with these soft and hard limits on open files.
    pub fn open_files(mut self, soft: u64, hard: u64) -> Self {
        self.open_files = Some((soft, hard));
        self
    }

    /// Starts the server with this umask instead of the test's.
    pub fn umask(mut self, mask: u32) -> Self {
        self.umask = Some(mask);
        self
    }

    /// A stdio MCP server `name`, started as `command args`.
    pub fn mcp_server(self, name: &str, command: &Path, args: &[String]) -> Self {
        let args: Vec<Value> = args.iter().map(|a| json!(a)).collect();
        self.arg("-c")
            .arg(&format!(
                "mcp_servers.{name}.command={}",
                json!(command.display().to_string())
            ))
            .arg("-c")
            .arg(&format!("mcp_servers.{name}.args={}", Value::Array(args)))
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
    home: SkeinHome,
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
        static NEXT_SHARED_TRACE_DIR: AtomicU64 = AtomicU64::new(1);
        let (home, trace_dir) = match &options.home {
            None => {
                let home = SkeinHome::new();
                let trace_dir = home.path().join("traces");
                (home, trace_dir)
            }
            Some(home) => {
                let n = NEXT_SHARED_TRACE_DIR.fetch_add(1, Ordering::Relaxed);
                (home.clone(), home.path().join(format!("traces-{n}")))
            }
        };
        let trace_dir = options.trace_dir.clone().unwrap_or(trace_dir);
        let label = format!("skein serve ({transport})");

        let mut command = Command::new(skein_bin());
        command.arg("serve").arg("--listen").arg(match transport {
            Transport::Stdio => "stdio://",
            Transport::WebSocket => options.listen.as_deref().unwrap_or("ws://127.0.0.1:0"),
        });
        command.arg("--trace-dir").arg(&trace_dir);
        command.args(&options.args);
        scrub_env(&mut command);
        command
            .env("SKEIN_HOME", home.path())
            .env("RUST_LOG", "info");
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

        if let Some(mask) = options.umask {
            // SAFETY: umask is async-signal-safe and touches no memory.
            unsafe {
                command.pre_exec(move || {
                    libc::umask(mask as libc::mode_t);
                    Ok(())
                });
            }
        }
        if let Some((soft, hard)) = options.open_files {
            let limit = libc::rlimit {
                rlim_cur: soft as libc::rlim_t,
                rlim_max: hard as libc::rlim_t,
            };
            // SAFETY: setrlimit is async-signal-safe and reads only `limit`,
            // copied into the closure.
            unsafe {
                command.pre_exec(move || {
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
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
                    .wait_for_stderr(|line| {
                        line.contains("listening on ws://") || line.contains("listening on unix://")
                    })
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

    /// The server's `SKEIN_HOME`; the handle keeps it alive after the
    /// server is gone, for [`ServerOptions::home`].
    pub fn home(&self) -> SkeinHome {
        self.home.clone()
    }

    /// Kills the server with `kill -9` (SIGKILL: no shutdown code runs),
    /// waits for it to die and returns its captured stderr.
    pub async fn kill_9(mut self) -> Vec<String> {
        let pid = self.pid();
        let status = Command::new("kill")
            .arg("-9")
            .arg(pid.to_string())
            .status()
            .await
            .expect("run `kill -9`");
        assert!(status.success(), "`kill -9 {pid}` failed: {status}");
        let status = tokio::time::timeout(TIMEOUT, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("{}: still alive {TIMEOUT:?} after kill -9", self.label))
            .expect("wait for the server process");
        let _ = tokio::time::timeout(TIMEOUT, &mut self.stderr_task).await;
        {
            use std::os::unix::process::ExitStatusExt;
            assert_eq!(
                status.signal(),
                Some(9),
                "{}: expected death by SIGKILL, got {status}",
                self.label
            );
        }
        self.stderr.borrow().clone()
    }

    /// The directory of the server's local trace store.
    pub fn trace_dir(&self) -> &Path {
        &self.trace_dir
    }

    /// Every record the local store holds right now, while the server
    /// runs (see [`read_live_spans`]); [`merge_records`] gives one entry
    /// per span.
    pub fn store_records(&self) -> Vec<Span> {
        read_live_spans(&self.trace_dir)
    }

    /// Process id of the server (while it runs).
    pub fn pid(&self) -> u32 {
        self.child
            .id()
            .unwrap_or_else(|| panic!("{}: the server process has already exited", self.label))
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
                    notifications: VecDeque::new(),
                    received: Vec::new(),
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
                    notifications: VecDeque::new(),
                    received: Vec::new(),
                }
            }
        }
    }

    /// Graceful shutdown: closes stdin (stdio) or sends SIGTERM (WebSocket),
    /// waits for exit code 0 and returns the spans flushed to the store.
    pub async fn shutdown(self) -> Finished {
        self.shutdown_within(TIMEOUT).await
    }

    /// [`Server::shutdown`], allowing the process `limit` to exit after
    /// the shutdown request (EOF or SIGTERM).
    pub async fn shutdown_within(mut self, limit: Duration) -> Finished {
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

        let status = tokio::time::timeout(limit, self.child.wait())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "{}: did not exit within {limit:?} after graceful shutdown",
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

        let records = read_spans(&self.trace_dir);
        Finished {
            label: self.label.clone(),
            stderr: self.stderr.borrow().clone(),
            spans: merge_records(&records),
            records,
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
    /// One entry per span (trace id, span id): its finished record when
    /// the store has one, else its in-progress record.
    pub spans: Vec<Span>,
    /// Every record of the store, in file order. Turn spans get an
    /// in-progress record (end time 0) when they start, besides the
    /// finished one written when they end.
    pub records: Vec<Span>,
}

impl Finished {
    /// Everything the server wrote to stderr (ANSI escapes stripped).
    pub fn stderr(&self) -> &[String] {
        &self.stderr
    }

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

    /// The one span with this span id.
    pub fn span_with_id(&self, span_id: &str) -> &Span {
        let found: Vec<&Span> = self.spans.iter().filter(|s| s.span_id == span_id).collect();
        match found.as_slice() {
            [one] => one,
            _ => panic!(
                "expected exactly one span with spanId {span_id}, found {}; all spans:\n{}",
                found.len(),
                self.dump()
            ),
        }
    }

    /// The parent span of `span`, which must be in the store.
    pub fn parent_of(&self, span: &Span) -> &Span {
        let parent = span
            .parent_span_id
            .as_deref()
            .unwrap_or_else(|| panic!("expected a parent, got a root span: {span}"));
        self.span_with_id(parent)
    }

    /// Every span whose parent is `span_id`.
    pub fn children_of(&self, span_id: &str) -> Vec<&Span> {
        self.spans
            .iter()
            .filter(|s| s.parent_span_id.as_deref() == Some(span_id))
            .collect()
    }

    /// Every turn span (`invoke_agent skein`) of the turn with this id.
    pub fn turn_spans(&self, turn_id: &str) -> Vec<&Span> {
        self.spans
            .iter()
            .filter(|s| {
                s.name == TURN_SPAN_NAME && s.attr_str("turn.id").as_deref() == Some(turn_id)
            })
            .collect()
    }

    /// The one turn span of the turn with this id, which must have ended
    /// exactly once: the store holds exactly one finished record of it.
    pub fn turn_span(&self, turn_id: &str) -> &Span {
        let span = match self.turn_spans(turn_id).as_slice() {
            [one] => *one,
            found => panic!(
                "expected exactly one {TURN_SPAN_NAME:?} span with turn.id={turn_id:?}, \
                 found {}; all records:\n{}",
                found.len(),
                self.dump()
            ),
        };
        let finished = self.finished_records(span).len();
        assert_eq!(
            finished,
            1,
            "the turn span of turn {turn_id} must end exactly once, but the store has {finished} \
             finished records of it; all records:\n{}",
            self.dump()
        );
        span
    }

    /// The finished records of `span` (same trace id and span id).
    pub fn finished_records(&self, span: &Span) -> Vec<&Span> {
        self.records
            .iter()
            .filter(|r| r.same_span(span) && !r.is_in_progress())
            .collect()
    }

    /// The spans that never ended: only an in-progress record is stored.
    pub fn open_spans(&self) -> Vec<&Span> {
        self.spans.iter().filter(|s| s.is_in_progress()).collect()
    }

    /// Every record of the store, one per line.
    pub fn dump(&self) -> String {
        if self.records.is_empty() {
            return "  (no spans in the trace store)".to_owned();
        }
        self.records
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

    /// `result.turn.id` of a turn-starting request.
    pub fn turn_id(&self) -> String {
        self.result()["turn"]["id"]
            .as_str()
            .unwrap_or_else(|| panic!("result lacks turn.id: {}", self.message))
            .to_owned()
    }

    /// `result.thread.id` of `thread/start`.
    pub fn thread_id(&self) -> String {
        self.result()["thread"]["id"]
            .as_str()
            .unwrap_or_else(|| panic!("result lacks thread.id: {}", self.message))
            .to_owned()
    }
}

/// `turn/start` params with one text input.
pub fn turn_start_params(thread_id: &str, text: &str) -> Value {
    json!({"threadId": thread_id, "input": [{"type": "text", "text": text}]})
}

/// The turn id a turn notification is about (`params.turnId` or
/// `params.turn.id`).
pub fn notification_turn_id(message: &Value) -> Option<&str> {
    let params = message.get("params")?;
    params
        .get("turnId")
        .or_else(|| params.get("turn").and_then(|t| t.get("id")))
        .and_then(Value::as_str)
}

/// The integer `error.code` of a JSON-RPC error message.
pub fn error_code(message: &Value) -> i64 {
    message
        .get("error")
        .and_then(|e| e.get("code"))
        .and_then(Value::as_i64)
        .unwrap_or_else(|| panic!("expected a JSON-RPC error with an integer code: {message}"))
}

/// A client's WebSocket stream.
pub type WsStream = WebSocketStream<MaybeTlsStream<TcpStream>>;

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
    /// Notifications received while waiting for something else.
    notifications: VecDeque<Value>,
    /// Every message received, in order (for checks over a whole session).
    received: Vec<Value>,
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

    /// Sends a WebSocket text frame carrying `bytes` as they are, even when
    /// they are not UTF-8 (which the server must refuse, closing with 1007).
    pub async fn send_text_bytes(&mut self, bytes: Vec<u8>) {
        use tokio_tungstenite::tungstenite::protocol::frame::Frame;
        use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
        match &mut self.conn {
            Conn::Stdio { .. } => panic!("text frames only exist on WebSocket"),
            Conn::WebSocket(ws) => ws
                .send(Message::Frame(Frame::message(
                    bytes,
                    OpCode::Data(Data::Text),
                    true,
                )))
                .await
                .unwrap_or_else(|e| panic!("{}: sending a text frame failed: {e}", self.label)),
        }
    }

    /// The next message from the server (response, batch or notification).
    pub async fn recv(&mut self) -> Value {
        let label = self.label.clone();
        let text = tokio::time::timeout(TIMEOUT, self.recv_text())
            .await
            .unwrap_or_else(|_| panic!("{label}: no message from the server within {TIMEOUT:?}"));
        let message: Value = serde_json::from_str(&text).unwrap_or_else(|e| {
            panic!("{label}: the server sent something that is not JSON ({e}): {text:?}")
        });
        self.received.push(message.clone());
        message
    }

    /// The next message from the server as the exact text it was sent as
    /// (a stdio line or a text frame), for checks a parsed [`Value`] would
    /// hide. It is not recorded in [`Client::received`].
    pub async fn recv_raw(&mut self) -> String {
        let label = self.label.clone();
        tokio::time::timeout(TIMEOUT, self.recv_text())
            .await
            .unwrap_or_else(|_| panic!("{label}: no message from the server within {TIMEOUT:?}"))
    }

    /// Every message received so far, in arrival order.
    pub fn received(&self) -> &[Value] {
        &self.received
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

    /// Like [`Client::send`], but returns `false` instead of panicking when
    /// the connection is closed (for tests that run until the server stops).
    pub async fn try_send(&mut self, message: Value) -> bool {
        let text = message.to_string();
        match &mut self.conn {
            Conn::Stdio { stdin, .. } => {
                let mut guard = stdin.lock().await;
                let Some(pipe) = guard.as_mut() else {
                    return false;
                };
                let line = format!("{text}\n");
                pipe.write_all(line.as_bytes()).await.is_ok() && pipe.flush().await.is_ok()
            }
            Conn::WebSocket(ws) => ws.send(Message::text(text)).await.is_ok(),
        }
    }

    /// The next message, or `None` once the server closed the connection
    /// (stdout EOF, close frame, end of stream or a reset). Panics when
    /// nothing arrives within [`TIMEOUT`].
    pub async fn try_recv(&mut self) -> Option<Value> {
        let label = self.label.clone();
        let text = tokio::time::timeout(TIMEOUT, async {
            match &mut self.conn {
                Conn::Stdio { stdout, .. } => stdout.recv().await,
                Conn::WebSocket(ws) => loop {
                    match ws.next().await {
                        Some(Ok(Message::Text(text))) => return Some(text.as_str().to_owned()),
                        Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                        Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return None,
                        Some(Ok(other)) => {
                            panic!("{label}: expected a text frame, got {other:?}")
                        }
                    }
                },
            }
        })
        .await
        .unwrap_or_else(|_| {
            panic!(
                "{}: neither a message nor the end of the connection within {TIMEOUT:?}",
                self.label
            )
        })?;
        Some(serde_json::from_str(&text).unwrap_or_else(|e| {
            panic!(
                "{}: the server sent something that is not JSON ({e}): {text:?}",
                self.label
            )
        }))
    }

    /// Like [`Client::recv_response`], but `None` when the connection
    /// closes before the response arrives.
    pub async fn try_recv_response(&mut self, id: i64) -> Option<Response> {
        let wanted = json!(id);
        let is_wanted = |m: &Value| m.get("method").is_none() && m.get("id") == Some(&wanted);
        if let Some(pos) = self.stash.iter().position(is_wanted) {
            let message = self.stash.remove(pos).expect("position is in range");
            return Some(Response { id, message });
        }
        loop {
            let message = self.try_recv().await?;
            if is_wanted(&message) {
                check_outbound(&message);
                return Some(Response { id, message });
            }
            self.keep(message);
        }
    }

    /// The response with this id; notifications and other responses are
    /// kept for later.
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
            self.keep(message);
        }
    }

    /// Keeps a message nobody waits for yet.
    fn keep(&mut self, message: Value) {
        if is_notification(&message) {
            self.notifications.push_back(message);
        } else {
            self.stash.push_back(message);
        }
    }

    /// Waits for the first notification (kept or new) matching `predicate`
    /// and takes it; other messages are kept for later. `what` names the
    /// awaited notification in the timeout panic.
    pub async fn wait_for_notification(
        &mut self,
        what: &str,
        predicate: impl Fn(&Value) -> bool,
    ) -> Value {
        if let Some(pos) = self.notifications.iter().position(&predicate) {
            return self
                .notifications
                .remove(pos)
                .expect("position is in range");
        }
        let found = tokio::time::timeout(TIMEOUT, async {
            loop {
                let message = self.recv().await;
                if is_notification(&message) && predicate(&message) {
                    return message;
                }
                self.keep(message);
            }
        })
        .await;
        match found {
            Ok(message) => {
                check_outbound(&message);
                message
            }
            Err(_) => {
                let kept: Vec<&str> = self
                    .notifications
                    .iter()
                    .filter_map(|n| n.get("method").and_then(Value::as_str))
                    .collect();
                panic!(
                    "{}: no {what} within {TIMEOUT:?}; notifications received meanwhile: {kept:?}",
                    self.label
                )
            }
        }
    }

    /// Waits for the first `item/agentMessage/delta` of a turn: the turn is
    /// running and its model call is streaming.
    pub async fn wait_for_first_delta(&mut self, turn_id: &str) -> Value {
        self.wait_for_notification(&format!("first delta of turn {turn_id}"), |n| {
            n["method"] == "item/agentMessage/delta" && notification_turn_id(n) == Some(turn_id)
        })
        .await
    }

    /// Waits for the `turn/completed` notification of this turn.
    pub async fn wait_for_turn_completed(&mut self, turn_id: &str) -> Value {
        self.wait_for_notification(&format!("turn/completed of turn {turn_id}"), |n| {
            n["method"] == "turn/completed" && notification_turn_id(n) == Some(turn_id)
        })
        .await
    }

    /// Takes every kept notification matching `predicate`, in arrival order.
    pub fn take_notifications(&mut self, predicate: impl Fn(&Value) -> bool) -> Vec<Value> {
        let (taken, kept): (Vec<Value>, Vec<Value>) = std::mem::take(&mut self.notifications)
            .into_iter()
            .partition(|n| predicate(n));
        self.notifications = kept.into();
        taken
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
            self.notifications.push_back(message);
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
        let id = self.send_request(method, params, trace).await;
        self.recv_response(id).await
    }

    /// Sends a request like [`Client::request`] without waiting for its
    /// response; returns its id for [`Client::recv_response`].
    pub async fn send_request(&mut self, method: &str, params: Value, trace: Option<Value>) -> i64 {
        let id = next_request_id();
        let mut message = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        if let Some(trace) = trace {
            message["trace"] = trace;
        }
        self.send(message).await;
        id
    }

    /// `thread/start {}`; returns the new thread's id.
    pub async fn start_thread(&mut self) -> String {
        self.request("thread/start", json!({}), None)
            .await
            .thread_id()
    }

    /// `thread/read` of `thread_id` with its turns.
    pub async fn read_thread_with_turns(&mut self, thread_id: &str) -> Response {
        self.request(
            "thread/read",
            json!({"threadId": thread_id, "includeTurns": true}),
            None,
        )
        .await
    }

    /// `turn/start` with one text input, continuing `parent` when given.
    /// Checks the immediate result shape (`inProgress`, no items).
    pub async fn start_turn(
        &mut self,
        thread_id: &str,
        text: &str,
        parent: Option<&TraceContext>,
    ) -> Response {
        let response = self
            .request(
                "turn/start",
                turn_start_params(thread_id, text),
                parent.map(TraceContext::carrier),
            )
            .await;
        check_turn_started_result(&response);
        response
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

    /// The WebSocket under this client, for a test that drives it itself
    /// (e.g. split into a sending and a reading half). Messages this client
    /// kept but nobody took are dropped. Panics over stdio.
    pub fn into_websocket(self) -> WsStream {
        match self.conn {
            Conn::WebSocket(ws) => *ws,
            Conn::Stdio { .. } => panic!("{}: not a WebSocket client", self.label),
        }
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

/// A turn-starting request's result: `{turn: {id, status: "inProgress",
/// items: []}}`.
pub fn check_turn_started_result(response: &Response) {
    let turn = &response.result()["turn"];
    assert!(
        turn["id"].as_str().is_some_and(|id| !id.is_empty())
            && turn["status"] == "inProgress"
            && turn["items"] == json!([]),
        "expected {{turn: {{id, status: \"inProgress\", items: []}}}}: {}",
        response.message
    );
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

/// Resident memory (`VmRSS` of `/proc/<pid>/status`) of a process, in bytes.
pub fn vm_rss_bytes(pid: u32) -> u64 {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path}: {e}"));
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().strip_suffix("kB"))
        .and_then(|kib| kib.trim().parse().ok())
        .unwrap_or_else(|| panic!("{path} has no `VmRSS: N kB` line:\n{status}"));
    kib * 1024
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
    pub links: Vec<SpanLink>,
    pub start_time_unix_nano: u128,
    pub end_time_unix_nano: u128,
}

/// A link from a span to another span context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpanLink {
    pub trace_id: String,
    pub span_id: String,
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
        let time_field = |key: &str| -> u128 {
            let parsed = match span.get(key) {
                Some(Value::String(s)) => s.parse().ok(),
                Some(Value::Number(n)) => n.as_u64().map(u128::from),
                _ => None,
            };
            parsed.unwrap_or_else(|| {
                panic!("{origin}: span lacks an integer (or integer string) {key:?}: {span}")
            })
        };
        let link_field = |link: &Value, key: &str| -> String {
            link.get(key)
                .and_then(Value::as_str)
                .unwrap_or_else(|| panic!("{origin}: span link lacks string {key:?}: {span}"))
                .to_owned()
        };
        let links = span
            .get("links")
            .and_then(Value::as_array)
            .map(|links| {
                links
                    .iter()
                    .map(|link| SpanLink {
                        trace_id: link_field(link, "traceId"),
                        span_id: link_field(link, "spanId"),
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
            links,
            start_time_unix_nano: time_field("startTimeUnixNano"),
            end_time_unix_nano: time_field("endTimeUnixNano"),
        }
    }

    /// How many times the span carries `key` (an exporter keeps every
    /// copy of a key set twice).
    pub fn attr_count(&self, key: &str) -> usize {
        self.attributes.iter().filter(|(k, _)| k == key).count()
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

    /// An in-progress record (end time 0): the span had started, not ended,
    /// when the record was written.
    pub fn is_in_progress(&self) -> bool {
        self.end_time_unix_nano == 0
    }

    /// Whether both records are of the same span (trace id and span id).
    pub fn same_span(&self, other: &Span) -> bool {
        self.trace_id == other.trace_id && self.span_id == other.span_id
    }

    /// A string attribute (`stringValue` only: an integer is `None`).
    pub fn attr_string(&self, key: &str) -> Option<&str> {
        self.attr(key)?.get("stringValue")?.as_str()
    }

    /// A string array attribute (`arrayValue` of `stringValue`s); `None`
    /// for any other type.
    pub fn attr_strings(&self, key: &str) -> Option<Vec<String>> {
        self.attr(key)?
            .get("arrayValue")?
            .get("values")?
            .as_array()?
            .iter()
            .map(|v| v.get("stringValue")?.as_str().map(str::to_owned))
            .collect()
    }

    /// An integer attribute (`intValue`, which OTLP/JSON may render as a
    /// string).
    pub fn attr_int(&self, key: &str) -> Option<i64> {
        match self.attr(key)?.get("intValue")? {
            Value::String(s) => s.parse().ok(),
            other => other.as_i64(),
        }
    }

    /// Whether this span links to `other`.
    pub fn links_to(&self, other: &Span) -> bool {
        self.links
            .iter()
            .any(|l| l.trace_id == other.trace_id && l.span_id == other.span_id)
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
        if self.is_in_progress() {
            write!(f, " start={} IN-PROGRESS", self.start_time_unix_nano)?;
        } else {
            write!(
                f,
                " start={} end={}",
                self.start_time_unix_nano, self.end_time_unix_nano
            )?;
        }
        for link in &self.links {
            write!(f, " link={}/{}", link.trace_id, link.span_id)?;
        }
        for (key, _) in &self.attributes {
            write!(f, " {key}={}", self.attr_str(key).as_deref().unwrap_or("?"))?;
        }
        Ok(())
    }
}

/// One span per (trace id, span id) from store records: a finished record
/// supersedes an in-progress one; among records in the same state the first
/// wins. The order is that of each span's first record.
pub fn merge_records(records: &[Span]) -> Vec<Span> {
    let mut merged: Vec<Span> = Vec::new();
    let mut index: HashMap<(&str, &str), usize> = HashMap::new();
    for record in records {
        match index.entry((&record.trace_id, &record.span_id)) {
            Entry::Occupied(entry) => {
                let existing = &mut merged[*entry.get()];
                if existing.is_in_progress() && !record.is_in_progress() {
                    *existing = record.clone();
                }
            }
            Entry::Vacant(entry) => {
                entry.insert(merged.len());
                merged.push(record.clone());
            }
        }
    }
    merged
}

/// All span records of every `*.jsonl` file under `dir` (recursively), in
/// file order; see [`merge_records`] for one entry per span. Every line
/// must be whole: for a store still being written, see [`read_live_spans`].
pub fn read_spans(dir: &Path) -> Vec<Span> {
    read_store(dir, false)
}

/// Like [`read_spans`], for a store that may be in the middle of a write:
/// a running server's, or one killed by SIGKILL. A file's last line
/// without its newline (a write under way, or cut by the kill) is left
/// out, and a file gone since the directory was listed is skipped.
pub fn read_live_spans(dir: &Path) -> Vec<Span> {
    read_store(dir, true)
}

fn read_store(dir: &Path, live: bool) -> Vec<Span> {
    let mut files = Vec::new();
    collect_jsonl(dir, &mut files);
    files.sort();
    let mut spans = Vec::new();
    for file in files {
        let mut text = match std::fs::read_to_string(&file) {
            Ok(text) => text,
            Err(e) if live && e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => panic!("read trace file {}: {e}", file.display()),
        };
        if live {
            // Keep whole lines only.
            let whole = text.rfind('\n').map_or(0, |end| end + 1);
            text.truncate(whole);
        }
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
