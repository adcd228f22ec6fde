//! OTLP export to a real backend: Arize Phoenix.
//!
//! Starts `phoenix serve` on loopback ports, runs a traced turn through the
//! real `skein` binary exporting over OTLP, and reads the spans back from
//! Phoenix's REST API. The whole turn tree (request → dispatch → turn →
//! chat) must arrive under the client's trace id with exact parents, over
//! `http/protobuf` and over `grpc`.
//!
//! Phoenix comes from `SKEIN_PHOENIX_BIN`, else `phoenix` on `PATH`
//! (`.ci/run` installs it into a virtualenv). When it cannot be started at
//! all, the test fails saying how to install it, unless
//! `SKEIN_TESTS_ALLOW_MISSING` names `phoenix` (never under `CI=true`,
//! which `.ci/run` sets): see `support::tool_missing`.

mod support;

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};

use support::{ServerOptions, TraceContext, Transport};

/// Phoenix takes about 15 s to start; give a loaded machine plenty more.
const PHOENIX_START_TIMEOUT: Duration = Duration::from_secs(180);
/// How long spans may take to become queryable after the server exits.
const INGEST_TIMEOUT: Duration = Duration::from_secs(60);

struct Phoenix {
    child: Child,
    http_port: u16,
    grpc_port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Phoenix {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

async fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    listener.local_addr().expect("addr").port()
}

/// `SKEIN_PHOENIX_BIN`, else `phoenix` on `PATH`, else the virtualenv
/// `.ci/run` installs (`~/.cache/skein-ci/phoenix-venv`).
fn phoenix_command() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("SKEIN_PHOENIX_BIN") {
        return Some(PathBuf::from(path));
    }
    let on_path = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join("phoenix"))
            .find(|p| p.is_file())
    });
    on_path.or_else(|| {
        let cache = std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
        let bin = cache.join("skein-ci/phoenix-venv/bin/phoenix");
        bin.is_file().then_some(bin)
    })
}

/// Starts Phoenix, or explains why it could not.
async fn start_phoenix() -> Result<Phoenix, String> {
    let bin =
        phoenix_command().ok_or("no `phoenix` found (set SKEIN_PHOENIX_BIN or put it on PATH)")?;
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let http_port = free_port().await;
    let grpc_port = free_port().await;
    let mut child = Command::new(&bin)
        .arg("serve")
        .env("PHOENIX_HOST", "127.0.0.1")
        .env("PHOENIX_PORT", http_port.to_string())
        .env("PHOENIX_GRPC_PORT", grpc_port.to_string())
        .env("PHOENIX_WORKING_DIR", dir.path())
        .env("PHOENIX_TELEMETRY_ENABLED", "false")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", bin.display()))?;

    // Phoenix logs through uvicorn; it is ready once uvicorn says it runs.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    for stream in [
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
    ]
    .into_iter()
    .flatten()
    {
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stream).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let _ = tx.send(line);
            }
        });
    }
    drop(tx);
    let mut log = Vec::new();
    let ready = tokio::time::timeout(PHOENIX_START_TIMEOUT, async {
        while let Some(line) = rx.recv().await {
            let up = line.contains("Uvicorn running on");
            log.push(line);
            if up {
                return true;
            }
        }
        false
    })
    .await;
    match ready {
        Ok(true) => {
            // Keep draining its output so it never blocks on a full pipe.
            tokio::spawn(async move { while rx.recv().await.is_some() {} });
            Ok(Phoenix {
                child,
                http_port,
                grpc_port,
                _dir: dir,
            })
        }
        Ok(false) => Err(format!(
            "phoenix exited before it was ready:\n{}",
            log.join("\n")
        )),
        Err(_) => Err(format!(
            "phoenix was not ready within {PHOENIX_START_TIMEOUT:?}:\n{}",
            log.join("\n")
        )),
    }
}

/// GET over HTTP/1.0 (no chunked encoding), returning status and body.
async fn http_get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await?;
    stream
        .write_all(
            format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nAccept: application/json\r\n\r\n")
                .as_bytes(),
        )
        .await?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Ok((status, body.to_owned()))
}

/// Phoenix's spans of `project`, keyed by span id.
async fn phoenix_spans(port: u16, project: &str) -> HashMap<String, Value> {
    let mut spans = HashMap::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut path = format!("/v1/projects/{project}/spans?limit=1000");
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let Ok((200, body)) = http_get(port, &path).await else {
            return spans;
        };
        let Ok(page) = serde_json::from_str::<Value>(&body) else {
            return spans;
        };
        for span in page["data"].as_array().into_iter().flatten() {
            if let Some(id) = span["context"]["span_id"].as_str() {
                spans.insert(id.to_owned(), span.clone());
            }
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return spans,
        }
    }
}

/// Runs one traced turn against a server exporting to Phoenix, and checks
/// the tree Phoenix received.
async fn turn_tree_reaches_phoenix(phoenix: &Phoenix, protocol: &str) {
    let project = format!("skein-e2e-{}", protocol.replace('/', "-"));
    let endpoint = match protocol {
        "grpc" => format!("http://127.0.0.1:{}", phoenix.grpc_port),
        _ => format!("http://127.0.0.1:{}", phoenix.http_port),
    };
    let options = ServerOptions::default()
        .arg("--otlp-endpoint")
        .arg(&endpoint)
        .arg("--otlp-protocol")
        .arg(protocol)
        .env(
            "OTEL_RESOURCE_ATTRIBUTES",
            &format!("openinference.project.name={project}"),
        );
    let mut server = support::Server::start_with(Transport::Stdio, options).await;
    let mut client = server.connect().await;
    client.initialize("phoenix-e2e", "1.0.0").await;
    let thread_id = client.start_thread().await;
    let parent = TraceContext::random();
    let started = client
        .request(
            "turn/start",
            json!({"threadId": thread_id, "input": [{"type": "text", "text": "hello phoenix"}]}),
            Some(parent.carrier()),
        )
        .await;
    let turn_id = started.turn_id();
    let completed = client.wait_for_turn_completed(&turn_id).await;
    assert_eq!(
        completed["params"]["turn"]["status"], "completed",
        "{completed}"
    );
    client.close().await;
    drop(server.shutdown().await);

    // Phoenix ingests asynchronously: poll its API until the tree is there.
    let deadline = tokio::time::Instant::now() + INGEST_TIMEOUT;
    let spans = loop {
        let spans = phoenix_spans(phoenix.http_port, &project).await;
        let in_trace = spans
            .values()
            .filter(|s| s["context"]["trace_id"] == parent.trace_id.as_str())
            .count();
        if in_trace >= 4 {
            break spans;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{protocol}: Phoenix holds {in_trace} of the 4 turn spans after {INGEST_TIMEOUT:?}: {spans:#?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };

    let named = |name: &str| -> &Value {
        let found: Vec<&Value> = spans
            .values()
            .filter(|s| s["name"] == name && s["context"]["trace_id"] == parent.trace_id.as_str())
            .collect();
        assert_eq!(
            found.len(),
            1,
            "{protocol}: one `{name}` span in the client's trace: {spans:#?}"
        );
        found[0]
    };
    let request = named("turn/start");
    let dispatch = named("op.dispatch.user_turn");
    let turn = named("invoke_agent skein");
    let chat = named("chat echo");
    let id = |s: &Value| {
        s["context"]["span_id"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    assert_eq!(
        request["parent_id"],
        parent.span_id.as_str(),
        "{protocol}: request under the client span"
    );
    assert_eq!(
        dispatch["parent_id"],
        id(request).as_str(),
        "{protocol}: dispatch under request"
    );
    assert_eq!(
        turn["parent_id"],
        id(dispatch).as_str(),
        "{protocol}: turn under dispatch"
    );
    assert_eq!(
        chat["parent_id"],
        id(turn).as_str(),
        "{protocol}: chat under turn"
    );
    assert_eq!(
        turn["attributes"]["turn.id"],
        turn_id.as_str(),
        "{protocol}: {turn:#}"
    );
    assert_eq!(
        request["attributes"]["rpc.method"], "turn/start",
        "{protocol}: {request:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn turn_tree_reaches_phoenix_over_http_protobuf_and_grpc() {
    let phoenix = match start_phoenix().await {
        Ok(phoenix) => phoenix,
        Err(why) => {
            support::tool_missing(
                support::Tool::Phoenix,
                &format!("Phoenix could not be started: {why}"),
                "run .ci/run, or: python3 -m venv ~/.cache/skein-ci/phoenix-venv && \
                 ~/.cache/skein-ci/phoenix-venv/bin/pip install arize-phoenix==20.26.1 \
                 (or set SKEIN_PHOENIX_BIN)",
            );
            return;
        }
    };
    turn_tree_reaches_phoenix(&phoenix, "http/protobuf").await;
    turn_tree_reaches_phoenix(&phoenix, "grpc").await;
}
