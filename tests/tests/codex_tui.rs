//! The real Codex TUI against Skein, over WebSocket on a loopback port
//! (`codex --remote ws://...`) and on a Unix socket (`codex --remote
//! unix://...`): the npm package `@openai/codex`, the version `.ci/run`
//! pins, runs under tmux, is typed at with `send-keys` and read with
//! `capture-pane -p`.
//!
//! Skein's model is the local mock (`support::mock_llm`) and its tool
//! server the real `mcp-server-time`, so nothing needs the network. The
//! Codex CLI comes from `SKEIN_CODEX_BIN` (else `.ci/run`'s npm cache),
//! `mcp-server-time` as in `mcp_tools.rs`; without them the test fails
//! saying how to install them, unless `SKEIN_TESTS_ALLOW_MISSING` names
//! `codex` (and `mcp`), never under `CI=true`: see `support::tool_missing`.
//!
//! Every wait is on the screen's contents (or on the mock model), with a
//! generous timeout; the screen is in the panic message when one passes.

#[macro_use]
mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::mock_llm::{MockLlm, Reply, text_chunks, tool_call_chunks};
use support::{SPAN_KIND_SERVER, STATUS_CODE_ERROR, Server, ServerOptions, Transport};

/// How long the TUI may take to show something: it starts a Node
/// launcher and a native binary, on a loaded machine.
const SCREEN_TIMEOUT: Duration = Duration::from_secs(90);

/// A Codex TUI running in a tmux session of its own tmux server (its own
/// socket), killed on drop.
struct Tui {
    socket: String,
    label: &'static str,
}

impl Tui {
    /// Runs `codex args...` in a fixed-size tmux window in `cwd`, with
    /// `HOME` and `CODEX_HOME` set to `home`.
    fn start(label: &'static str, codex: &Path, args: &[&str], home: &Path, cwd: &Path) -> Tui {
        // One tmux server per TUI: the tests of this file run in parallel.
        static STARTED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let socket = format!("skein-codex-tui-{}-{n}-{label}", std::process::id());
        let tui = Tui { socket, label };
        let mut command = tui.tmux();
        // The pane stays once the TUI exits, so its last screen can be read.
        command
            .args([
                "start-server",
                ";",
                "set-option",
                "-g",
                "remain-on-exit",
                "on",
                ";",
            ])
            .args([
                "new-session",
                "-d",
                "-s",
                "tui",
                "-x",
                "160",
                "-y",
                "50",
                "-c",
            ])
            .arg(cwd)
            .arg("-e")
            .arg(format!("HOME={}", home.display()))
            .arg("-e")
            .arg(format!("CODEX_HOME={}", home.join(".codex").display()))
            .args(["-e", "TERM=xterm-256color", "-e", "NO_COLOR=1"])
            .arg(codex)
            .args(args);
        let status = command.status().expect("run tmux new-session");
        assert!(status.success(), "{label}: tmux new-session failed");
        tui
    }

    fn tmux(&self) -> Command {
        let mut command = Command::new("tmux");
        command.args(["-L", &self.socket, "-f", "/dev/null"]);
        command
    }

    /// The visible screen as text.
    fn screen(&self) -> String {
        let out = self
            .tmux()
            .args(["capture-pane", "-p", "-t", "tui"])
            .output()
            .expect("run tmux capture-pane");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Waits until the screen satisfies `predicate`; returns it.
    async fn wait_for(&self, what: &str, predicate: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + SCREEN_TIMEOUT;
        loop {
            let screen = self.screen();
            if predicate(&screen) {
                return screen;
            }
            assert!(
                Instant::now() < deadline,
                "{}: no {what} on the screen within {SCREEN_TIMEOUT:?}:\n{screen}",
                self.label
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until the screen shows `text`.
    async fn wait_for_text(&self, text: &str) -> String {
        self.wait_for(&format!("{text:?}"), |s| s.contains(text))
            .await
    }

    fn keys(&self, keys: &[&str]) {
        let status = self
            .tmux()
            .args(["send-keys", "-t", "tui"])
            .args(keys)
            .status()
            .expect("run tmux send-keys");
        assert!(status.success(), "{}: tmux send-keys failed", self.label);
    }

    fn type_text(&self, text: &str) {
        self.keys(&["-l", text]);
    }

    /// Types `text` into the composer and submits it. The TUI takes keys
    /// that arrive together for a paste, in which an Enter may be held
    /// back: Enter is pressed once the text shows in the composer, and
    /// again while the composer still holds it.
    async fn submit(&self, text: &str) {
        self.type_text(text);
        let in_composer = |screen: &str| composer(screen).is_some_and(|c| c == text);
        self.wait_for(&format!("{text:?} in the composer"), in_composer)
            .await;
        let deadline = Instant::now() + SCREEN_TIMEOUT;
        loop {
            self.keys(&["Enter"]);
            let pressed = Instant::now();
            while pressed.elapsed() < Duration::from_secs(3) {
                if !in_composer(&self.screen()) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            assert!(
                Instant::now() < deadline,
                "{}: {text:?} was never submitted:\n{}",
                self.label,
                self.screen()
            );
        }
    }

    /// Whether the TUI's process has exited.
    fn exited(&self) -> bool {
        let out = self
            .tmux()
            .args(["display-message", "-p", "-t", "tui", "#{pane_dead}"])
            .output()
            .expect("run tmux display-message");
        String::from_utf8_lossy(&out.stdout).trim() == "1"
    }

    /// Quits with `/quit` and waits for the TUI to exit.
    async fn quit(self) {
        self.submit("/quit").await;
        self.wait_for("the TUI's exit", |_| self.exited()).await;
    }
}

impl Drop for Tui {
    fn drop(&mut self) {
        let _ = self.tmux().arg("kill-server").status();
    }
}

/// The composer's text: the last line starting with `›`.
fn composer(screen: &str) -> Option<&str> {
    screen
        .lines()
        .rev()
        .find_map(|line| line.trim_start().strip_prefix('›'))
        .map(str::trim)
}

/// Options running `mock` as Skein's model and `mcp-server-time` as its
/// tool server `time`.
fn options(mock: &MockLlm, time_bin: &Path) -> ServerOptions {
    mock.server_options()
        .env("MOCK_API_KEY", "sk-test")
        .mcp_server("time", time_bin, &[])
        .arg("-c")
        .arg("model_context_window=128000")
}

/// A `HOME` for the Codex CLI with a `CODEX_HOME` holding a minimal
/// config: no update check (no network).
fn codex_home() -> tempfile::TempDir {
    let home = tempfile::Builder::new()
        .prefix("skein-codex-home-")
        .tempdir()
        .expect("create a HOME for codex");
    let codex_home = home.path().join(".codex");
    std::fs::create_dir_all(&codex_home).expect("create CODEX_HOME");
    std::fs::write(
        codex_home.join("config.toml"),
        "check_for_update_on_startup = false\n",
    )
    .expect("write codex config.toml");
    home
}

/// The text of every message of a Chat Completions request.
fn message_texts(body: &Value) -> Vec<String> {
    body["messages"]
        .as_array()
        .map(|messages| {
            messages
                .iter()
                .filter_map(|m| m["content"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_codex_tui_session_runs_turns_tools_interrupts_renames_and_resumes_without_errors() {
    tui_session(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_codex_tui_session_runs_over_a_unix_socket() {
    let dir = tempfile::Builder::new()
        .prefix("skein-tui-sock-")
        .tempdir()
        .expect("a folder for the socket");
    let url = format!("unix://{}", dir.path().join("skein.sock").display());
    tui_session(Some(&url)).await;
}

/// The whole session against a Skein listening on `listen` (a free
/// loopback WebSocket port when `None`); `codex --remote` is given the
/// address the server announces.
async fn tui_session(listen: Option<&str>) {
    let Some(codex) = support::codex_tui() else {
        return;
    };
    let Some((time_bin, _)) = support::mcp_venv() else {
        return;
    };
    let mock = MockLlm::start(vec![
        // A plain turn.
        Reply::Stream(text_chunks(&["Hello ", "from the mock model."], 12, 5)),
        // A tool call, then the answer.
        Reply::Stream(tool_call_chunks(
            "call_time_1",
            "get_current_time",
            &json!({"timezone": "UTC"}),
        )),
        Reply::Stream(text_chunks(&["The clock ", "has answered."], 30, 4)),
        // A turn that stalls until it is interrupted.
        Reply::Hold(text_chunks(&["Still thinking"], 0, 0)[..2].to_vec()),
        // The turn after resuming.
        Reply::Stream(text_chunks(&["Resumed ", "and answering."], 40, 3)),
    ])
    .await;
    let mut options = options(&mock, &time_bin);
    if let Some(listen) = listen {
        options = options.listen(listen);
    }
    let server = Server::start_with(Transport::WebSocket, options).await;
    let url = server.ws_url().to_owned();
    if let Some(listen) = listen {
        assert_eq!(url, listen, "the server listens where it was told");
    }
    let home = codex_home();
    // The TUI runs in the server's working directory, which thread results
    // report as the threads' cwd.
    let cwd: PathBuf = std::env::current_dir().expect("cwd");

    let tui = Tui::start("first", &codex, &["--remote", &url], home.path(), &cwd);
    // Startup: the configured model is shown.
    tui.wait_for_text("mock-model").await;

    // A plain turn.
    tui.submit("Say hello").await;
    tui.wait_for_text("Hello from the mock model.").await;

    // A tool call on the real MCP server.
    tui.submit("What time is it in UTC?").await;
    let screen = tui.wait_for_text("The clock has answered.").await;
    assert!(screen.contains("get_current_time"), "{screen}");
    let requests = mock.wait_for_requests(3).await;
    let tool_result = requests[2].body["messages"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["role"] == "tool"))
        .cloned()
        .unwrap_or_else(|| panic!("no tool result sent back: {}", requests[2].body));
    assert!(
        tool_result["content"].to_string().contains("UTC"),
        "{tool_result}"
    );

    // A turn interrupted with Esc while the model stalls.
    tui.submit("Take your time").await;
    mock.wait_for_requests(4).await;
    tui.wait_for_text("Still thinking").await;
    tui.keys(&["Escape"]);
    tui.wait_for_text("interrupted").await;
    mock.wait_for_close().await;

    // Renaming the thread.
    tui.submit("/rename tmux-e2e-thread").await;
    tui.wait_for_text("tmux-e2e-thread").await;
    tui.quit().await;

    // Resuming the last thread: its history and name come back, and a
    // turn there continues it.
    let tui = Tui::start(
        "resumed",
        &codex,
        &["resume", "--last", "--remote", &url],
        home.path(),
        &cwd,
    );
    let screen = tui.wait_for_text("Hello from the mock model.").await;
    assert!(screen.contains("The clock has answered."), "{screen}");
    tui.wait_for_text("tmux-e2e-thread").await;
    tui.submit("Once more").await;
    tui.wait_for_text("Resumed and answering.").await;
    let requests = mock.wait_for_requests(5).await;
    let history = message_texts(&requests[4].body);
    assert!(
        history.iter().any(|t| t.contains("Say hello")),
        "the resumed thread's history reaches the model: {history:?}"
    );
    tui.quit().await;

    let finished = server.shutdown().await;
    // The whole session, as Skein recorded it: every request a method
    // Skein knows, none failed.
    let requests: Vec<_> = finished
        .spans
        .iter()
        .filter(|s| s.kind == SPAN_KIND_SERVER)
        .collect();
    let methods: Vec<String> = requests
        .iter()
        .filter_map(|s| s.attr_str("rpc.method"))
        .collect();
    for expected in [
        "initialize",
        "thread/start",
        "turn/start",
        "turn/interrupt",
        "thread/name/set",
        "thread/resume",
    ] {
        assert!(
            methods.iter().any(|m| m == expected),
            "no {expected} request: {methods:?}"
        );
    }
    let unknown: Vec<_> = requests
        .iter()
        .filter(|s| s.attr_str("rpc.method").as_deref() == Some("_OTHER"))
        .map(|s| s.attr_str("rpc.method_original"))
        .collect();
    assert!(unknown.is_empty(), "methods Skein refused: {unknown:?}");
    let failed: Vec<String> = requests
        .iter()
        .filter(|s| s.status_code == STATUS_CODE_ERROR)
        .map(|s| format!("{s}"))
        .collect();
    assert!(failed.is_empty(), "failed requests: {failed:#?}");
}
