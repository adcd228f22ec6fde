//! End-to-end tests of the Codex v2 methods and behaviours Skein adopted:
//! `expectedTurnId`, the error code before `initialize`, the session
//! methods (`thread/loaded/list`, `thread/archive` / `unarchive`,
//! `thread/name/set`, `thread/turns/list`), `config/read` and
//! `mcpServerStatus/list` answering from `config.toml`, the debug log of
//! Codex parameters Skein ignores, and the `thread/status/changed` and
//! `thread/tokenUsage/updated` notifications. Results are also checked
//! against Codex's schemas.

#[macro_use]
mod support;

use serde_json::{Value, json};
use support::codex_schema::{assert_valid_notification, assert_valid_result};
use support::{
    Client, INVALID_PARAMS, INVALID_REQUEST, NOT_INITIALIZED, STATUS_CODE_ERROR, Server,
    ServerOptions, SkeinHome, Transport,
};

both_transports!(
    steer_accepts_codex_expected_turn_id_and_skeins_turn_id,
    requests_before_initialize_get_invalid_request_not_initialized,
    status_and_token_usage_notifications_follow_each_turn,
);

async fn start(transport: Transport, options: ServerOptions) -> (Server, Client) {
    let mut server = Server::start_with(transport, options).await;
    let mut client = server.connect().await;
    client.initialize("e2e-codex-methods", "1").await;
    (server, client)
}

/// Calls `method`, checks the result against Codex's schema, returns it.
async fn call(client: &mut Client, method: &str, params: Value) -> Value {
    let result = client.request(method, params, None).await.result().clone();
    assert_valid_result(method, &result);
    result
}

/// Runs one turn to completion; returns its id.
async fn run_turn(client: &mut Client, thread_id: &str, text: &str) -> String {
    let turn_id = client.start_turn(thread_id, text, None).await.turn_id();
    client.wait_for_turn_completed(&turn_id).await;
    turn_id
}

fn ids(threads: &Value) -> Vec<String> {
    threads
        .as_array()
        .unwrap_or_else(|| panic!("expected an array of threads: {threads}"))
        .iter()
        .map(|t| t["id"].as_str().expect("thread id").to_owned())
        .collect()
}

async fn steer_accepts_codex_expected_turn_id_and_skeins_turn_id(transport: Transport) {
    // 2,000 words at 20 ms each: the turn runs until it is interrupted.
    let (server, mut client) = start(transport, ServerOptions::default().echo_delay_ms(20)).await;
    let thread_id = client.start_thread().await;
    let long = vec!["word"; 2000].join(" ");
    let turn_id = client.start_turn(&thread_id, &long, None).await.turn_id();
    // Steer once the model is answering: input steered in before its first
    // round would be part of that round, and the echo model would answer
    // the steered word alone and end the turn before the interrupt below.
    client.wait_for_first_delta(&turn_id).await;

    let codex = client
        .request(
            "turn/steer",
            json!({"threadId": thread_id, "expectedTurnId": turn_id,
                   "input": [{"type": "text", "text": "codex"}]}),
            None,
        )
        .await;
    assert_eq!(codex.result(), &json!({"turnId": turn_id}));
    let skein = client
        .request(
            "turn/steer",
            json!({"threadId": thread_id, "turnId": turn_id,
                   "input": [{"type": "text", "text": "skein"}]}),
            None,
        )
        .await;
    assert_eq!(skein.result(), &json!({"turnId": turn_id}));
    let wrong = client
        .request(
            "turn/steer",
            json!({"threadId": thread_id, "expectedTurnId": "not-the-running-turn",
                   "input": [{"type": "text", "text": "x"}]}),
            None,
        )
        .await;
    assert_eq!(wrong.error_code(), INVALID_REQUEST, "{}", wrong.message);
    let neither = client
        .request(
            "turn/steer",
            json!({"threadId": thread_id, "input": [{"type": "text", "text": "x"}]}),
            None,
        )
        .await;
    assert_eq!(neither.error_code(), INVALID_PARAMS, "{}", neither.message);
    assert!(
        neither.message["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("expectedTurnId")),
        "{}",
        neither.message
    );

    client
        .request(
            "turn/interrupt",
            json!({"threadId": thread_id, "turnId": turn_id}),
            None,
        )
        .await
        .result();
    client.wait_for_turn_completed(&turn_id).await;
    client.close().await;
    let finished = server.shutdown().await;
    // The request span finds the turn under Codex's name too.
    let span = finished.request_span(&codex.id_str());
    assert_eq!(
        span.attr_str("turn.id").as_deref(),
        Some(turn_id.as_str()),
        "{span}"
    );
    assert_eq!(
        span.attr_str("thread.id").as_deref(),
        Some(thread_id.as_str()),
        "{span}"
    );
    // A steer that fails has no result to take the ids from: the span
    // still names the turn the client expected, from the params.
    let span = finished.request_span(&wrong.id_str());
    assert_eq!(span.status_code, STATUS_CODE_ERROR, "{span}");
    // `rpc.response.status_code` is a string (the RPC conventions), the
    // JSON-RPC code as `error.type` has it.
    let code = span.attr_string("rpc.response.status_code");
    assert!(code.is_some_and(|c| c.parse::<i64>().is_ok()), "{span}");
    assert_eq!(code, span.attr_string("error.type"), "{span}");
    assert_eq!(
        span.attr_str("turn.id").as_deref(),
        Some("not-the-running-turn"),
        "{span}"
    );
    assert_eq!(
        span.attr_str("thread.id").as_deref(),
        Some(thread_id.as_str()),
        "{span}"
    );
}

async fn requests_before_initialize_get_invalid_request_not_initialized(transport: Transport) {
    let mut server = Server::start(transport).await;
    let mut client = server.connect().await;
    for method in [
        "model/list",
        "thread/start",
        "account/read",
        "thread/loaded/list",
    ] {
        let early = client.request(method, json!({}), None).await;
        assert_eq!(
            early.error_code(),
            NOT_INITIALIZED,
            "{method}: {}",
            early.message
        );
        assert_eq!(NOT_INITIALIZED, -32600);
        let message = early.message["error"]["message"]
            .as_str()
            .unwrap_or_default();
        assert!(
            message.starts_with("Not initialized") && message.contains(method),
            "{method}: {message}"
        );
    }
    // The connection keeps working.
    client.initialize("e2e-late", "1").await;
    client.request("model/list", json!({}), None).await.result();
    client.close().await;
    server.shutdown().await;
}

async fn status_and_token_usage_notifications_follow_each_turn(transport: Transport) {
    let (server, mut client) = start(transport, ServerOptions::default()).await;
    let thread_id = client.start_thread().await;
    let first = run_turn(&mut client, &thread_id, "alpha bravo").await;
    let second = run_turn(&mut client, &thread_id, "charlie delta echo").await;

    let mut total = (0, 0);
    for turn_id in [&first, &second] {
        // This turn's notifications, in the order they were written.
        let turn: Vec<&Value> = client
            .received()
            .iter()
            .filter(|m| m.get("id").is_none())
            .skip_while(|m| {
                !(m["method"] == "thread/status/changed"
                    && m["params"]["status"]["type"] == "active"
                    && client_next_turn_is(client.received(), m, turn_id))
            })
            .take_while(|m| {
                !(m["method"] == "turn/completed" && m["params"]["turn"]["id"] == json!(turn_id))
            })
            .collect();
        let methods: Vec<&str> = turn.iter().filter_map(|m| m["method"].as_str()).collect();
        assert_eq!(
            methods.first(),
            Some(&"thread/status/changed"),
            "{methods:?}"
        );
        assert_eq!(methods.get(1), Some(&"turn/started"), "{methods:?}");
        let n = methods.len();
        assert_eq!(
            &methods[n - 3..],
            [
                "item/completed",
                "thread/tokenUsage/updated",
                "thread/status/changed"
            ],
            "{methods:?}"
        );
        assert_eq!(turn[n - 1]["params"]["status"], json!({"type": "idle"}));
        assert_eq!(turn[0]["params"]["threadId"], json!(thread_id));
        let usage_note = turn[n - 2];
        assert_valid_notification(usage_note);
        let completed = client
            .received()
            .iter()
            .find(|m| {
                m["method"] == "turn/completed" && m["params"]["turn"]["id"] == json!(turn_id)
            })
            .expect("turn/completed");
        let usage = &completed["params"]["usage"];
        let (input, output) = (
            usage["inputTokens"].as_u64().expect("input"),
            usage["outputTokens"].as_u64().expect("output"),
        );
        assert!(input > 0 && output > 0, "{usage}");
        total = (total.0 + input, total.1 + output);
        let token_usage = &usage_note["params"]["tokenUsage"];
        assert_eq!(usage_note["params"]["turnId"], json!(turn_id));
        assert_eq!(token_usage["last"]["inputTokens"], json!(input));
        assert_eq!(token_usage["last"]["outputTokens"], json!(output));
        assert_eq!(token_usage["total"]["inputTokens"], json!(total.0));
        assert_eq!(token_usage["total"]["outputTokens"], json!(total.1));
        assert_eq!(
            token_usage["total"]["totalTokens"],
            json!(total.0 + total.1)
        );
    }
    client.close().await;
    server.shutdown().await;
}

/// True when the first `turn/started` after `status` is `turn_id`'s.
fn client_next_turn_is(received: &[Value], status: &Value, turn_id: &str) -> bool {
    received
        .iter()
        .skip_while(|m| !std::ptr::eq(*m, status))
        .find(|m| m["method"] == "turn/started")
        .is_some_and(|m| m["params"]["turn"]["id"] == json!(turn_id))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archive_and_name_survive_restarts_and_archived_threads_leave_the_list() {
    let (server, mut client) = start(Transport::Stdio, ServerOptions::default()).await;
    let home: SkeinHome = server.home();
    let archived = client.start_thread().await;
    run_turn(&mut client, &archived, "to be archived").await;
    let named = client.start_thread().await;
    run_turn(&mut client, &named, "to be named").await;

    assert_eq!(
        call(&mut client, "thread/archive", json!({"threadId": archived})).await,
        json!({})
    );
    assert_eq!(
        call(
            &mut client,
            "thread/name/set",
            json!({"threadId": named, "name": "  my thread "})
        )
        .await,
        json!({})
    );
    let listed = call(&mut client, "thread/list", json!({})).await;
    assert_eq!(ids(&listed["data"]), [named.as_str()], "{listed}");
    let listed = call(&mut client, "thread/list", json!({"archived": true})).await;
    assert_eq!(ids(&listed["data"]), [archived.as_str()], "{listed}");
    // Bad input: a clear error, the connection keeps working.
    let empty = client
        .request(
            "thread/name/set",
            json!({"threadId": named, "name": "  "}),
            None,
        )
        .await;
    assert_eq!(empty.error_code(), INVALID_PARAMS, "{}", empty.message);
    let unknown = client
        .request(
            "thread/archive",
            json!({"threadId": "01a00000-0000-7000-8000-000000000000"}),
            None,
        )
        .await;
    assert_eq!(unknown.error_code(), INVALID_PARAMS, "{}", unknown.message);
    client.close().await;
    server.shutdown().await;

    // After a restart: still archived, still named; neither loaded.
    let (server, mut client) = start(Transport::Stdio, ServerOptions::default().home(&home)).await;
    let listed = call(&mut client, "thread/list", json!({})).await;
    assert_eq!(ids(&listed["data"]), [named.as_str()], "{listed}");
    assert_eq!(listed["data"][0]["name"], json!("my thread"), "{listed}");
    assert_eq!(
        listed["data"][0]["status"],
        json!({"type": "notLoaded"}),
        "{listed}"
    );
    let listed = call(&mut client, "thread/list", json!({"archived": true})).await;
    assert_eq!(ids(&listed["data"]), [archived.as_str()], "{listed}");
    // Unarchiving a thread this server has not loaded writes the store.
    let unarchived = call(
        &mut client,
        "thread/unarchive",
        json!({"threadId": archived}),
    )
    .await;
    assert_eq!(unarchived["thread"]["id"], json!(archived));
    assert_eq!(unarchived["thread"]["status"], json!({"type": "notLoaded"}));
    client.close().await;
    server.shutdown().await;

    let (server, mut client) = start(Transport::Stdio, ServerOptions::default().home(&home)).await;
    let listed = call(&mut client, "thread/list", json!({})).await;
    assert_eq!(
        ids(&listed["data"]),
        [named.clone(), archived.clone()],
        "{listed}"
    );
    let listed = call(&mut client, "thread/list", json!({"archived": true})).await;
    assert_eq!(ids(&listed["data"]), Vec::<String>::new(), "{listed}");
    client.close().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn turns_list_pages_newest_first_without_gaps_and_pages_back() {
    let (server, mut client) = start(Transport::WebSocket, ServerOptions::default()).await;
    let thread_id = client.start_thread().await;
    let mut started = Vec::new();
    for i in 0..5 {
        started.push(run_turn(&mut client, &thread_id, &format!("turn number {i}")).await);
    }

    let mut pages = Vec::new();
    let mut cursor = Value::Null;
    loop {
        let page = call(
            &mut client,
            "thread/turns/list",
            json!({"threadId": thread_id, "limit": 2, "cursor": cursor}),
        )
        .await;
        pages.push(ids(&page["data"]));
        for turn in page["data"].as_array().expect("data") {
            assert_eq!(turn["itemsView"], json!("full"), "{turn}");
            assert_eq!(turn["items"].as_array().map(Vec::len), Some(2), "{turn}");
        }
        cursor = page["nextCursor"].clone();
        if cursor.is_null() {
            break;
        }
        assert!(pages.len() < 5, "paging does not end: {pages:?}");
    }
    let newest_first: Vec<String> = started.iter().rev().cloned().collect();
    assert_eq!(pages.iter().map(Vec::len).collect::<Vec<_>>(), [2, 2, 1]);
    assert_eq!(pages.concat(), newest_first);

    // Oldest first, and paging back from the second page's first turn.
    let asc = call(
        &mut client,
        "thread/turns/list",
        json!({"threadId": thread_id, "sortDirection": "asc", "itemsView": "notLoaded"}),
    )
    .await;
    assert_eq!(ids(&asc["data"]), started);
    assert!(
        asc["data"][0]["items"]
            .as_array()
            .is_some_and(Vec::is_empty),
        "{asc}"
    );
    let second = call(
        &mut client,
        "thread/turns/list",
        json!({"threadId": thread_id, "limit": 2, "cursor": format!("after:{}", started[3])}),
    )
    .await;
    assert_eq!(
        ids(&second["data"]),
        [started[2].clone(), started[1].clone()]
    );
    let back = call(
        &mut client,
        "thread/turns/list",
        json!({"threadId": thread_id, "sortDirection": "asc",
               "cursor": second["backwardsCursor"]}),
    )
    .await;
    assert_eq!(ids(&back["data"]), started[2..].to_vec());

    let bad = client
        .request(
            "thread/turns/list",
            json!({"threadId": thread_id, "cursor": "nonsense"}),
            None,
        )
        .await;
    assert_eq!(bad.error_code(), INVALID_PARAMS, "{}", bad.message);
    client.close().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loaded_list_unsubscribe_and_status_follow_what_this_server_has_loaded() {
    let (server, mut client) = start(Transport::Stdio, ServerOptions::default()).await;
    let home = server.home();
    let stored = client.start_thread().await;
    run_turn(&mut client, &stored, "kept on disk").await;
    client.close().await;
    server.shutdown().await;

    let (server, mut client) = start(Transport::Stdio, ServerOptions::default().home(&home)).await;
    let loaded = call(&mut client, "thread/loaded/list", json!({})).await;
    assert_eq!(loaded, json!({"data": [], "nextCursor": null}));
    let unsubscribed = call(
        &mut client,
        "thread/unsubscribe",
        json!({"threadId": stored}),
    )
    .await;
    assert_eq!(unsubscribed, json!({"status": "notLoaded"}));
    let read = call(&mut client, "thread/read", json!({"threadId": stored})).await;
    assert_eq!(read["thread"]["status"], json!({"type": "notLoaded"}));

    let resumed = call(&mut client, "thread/resume", json!({"threadId": stored})).await;
    assert_eq!(
        resumed["thread"]["status"],
        json!({"type": "idle"}),
        "{resumed}"
    );
    let a = client.start_thread().await;
    let b = client.start_thread().await;
    let mut seen = Vec::new();
    let mut cursor = Value::Null;
    loop {
        let page = call(
            &mut client,
            "thread/loaded/list",
            json!({"limit": 1, "cursor": cursor}),
        )
        .await;
        for id in page["data"].as_array().expect("data") {
            seen.push(id.as_str().expect("id").to_owned());
        }
        cursor = page["nextCursor"].clone();
        if cursor.is_null() {
            break;
        }
        assert!(seen.len() <= 3, "paging does not end: {seen:?}");
    }
    assert_eq!(seen, [stored.clone(), a, b]);
    let unsubscribed = call(
        &mut client,
        "thread/unsubscribe",
        json!({"threadId": stored}),
    )
    .await;
    assert_eq!(unsubscribed, json!({"status": "unsubscribed"}));
    let again = call(
        &mut client,
        "thread/unsubscribe",
        json!({"threadId": stored}),
    )
    .await;
    assert_eq!(again, json!({"status": "notSubscribed"}));
    client.close().await;
    server.shutdown().await;
}

/// The API key of the provider in [`configured_home`]'s `config.toml`,
/// given to the server through the variable its `env_key` names.
const PROVIDER_KEY: &str = "sk-e2e-provider-key-7f3a91";
/// A secret in an MCP server's `env` table.
const MCP_ENV_SECRET: &str = "mcp-env-secret-52c0d8";
/// A redaction pattern spelling out a secret.
const REDACT_PATTERN_SECRET: &str = "literal-secret-e4b6";

/// A `SKEIN_HOME` whose `config.toml` sets every section Skein has. The
/// provider and the MCP server are never called (no turn runs).
fn configured_home() -> SkeinHome {
    let home = SkeinHome::new();
    let config = format!(
        r#"
model = "e2e-model"
model_provider = "e2e"
instructions = "Answer in haiku."
max_tool_rounds = 5

[model_providers.e2e]
name = "E2E provider"
base_url = "http://127.0.0.1:9/v1/"
env_key = "SKEIN_E2E_PROVIDER_KEY"
wire_api = "chat"
request_timeout_ms = 4321

[mcp_servers.tools]
command = "/nonexistent/mcp-server"
args = ["--verbose", "--port", "0"]
env = {{ MCP_TOKEN = "{MCP_ENV_SECRET}", MCP_MODE = "test" }}
tool_timeout_ms = 1234

[otel]
capture_content = true
redact = ["sk-[a-z0-9-]+", "{REDACT_PATTERN_SECRET}"]
max_content_bytes = 2048
"#
    );
    std::fs::write(home.path().join("config.toml"), config).expect("write config.toml");
    home
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_read_returns_the_configured_values_and_never_a_secret() {
    let home = configured_home();
    let options = ServerOptions::default()
        .home(&home)
        .env("SKEIN_E2E_PROVIDER_KEY", PROVIDER_KEY);
    let (server, mut client) = start(Transport::Stdio, options).await;

    let read = client
        .request("config/read", json!({"includeLayers": false}), None)
        .await;
    let answer = read.message.to_string();
    for secret in [PROVIDER_KEY, MCP_ENV_SECRET, REDACT_PATTERN_SECRET] {
        assert!(
            !answer.contains(secret),
            "config/read leaks {secret:?}: {answer}"
        );
    }
    let result = read.result();
    assert_valid_result("config/read", result);
    let config = &result["config"];
    assert_eq!(config["model"], json!("e2e-model"), "{config:#}");
    assert_eq!(config["model_provider"], json!("e2e"), "{config:#}");
    assert_eq!(
        config["instructions"],
        json!("Answer in haiku."),
        "{config:#}"
    );
    assert_eq!(config["max_tool_rounds"], json!(5), "{config:#}");
    assert_eq!(
        config["model_providers"]["e2e"],
        json!({"name": "E2E provider", "base_url": "http://127.0.0.1:9/v1",
               "env_key": "SKEIN_E2E_PROVIDER_KEY", "wire_api": "chat",
               "request_timeout_ms": 4321}),
        "{config:#}"
    );
    assert_eq!(
        config["mcp_servers"],
        json!({"tools": {"command": "/nonexistent/mcp-server",
                         "args": ["--verbose", "--port", "0"],
                         "env": {"MCP_MODE": "[REDACTED]", "MCP_TOKEN": "[REDACTED]"},
                         "tool_timeout_ms": 1234}}),
        "{config:#}"
    );
    assert_eq!(
        config["otel"],
        json!({"capture_content": true, "redact": ["[REDACTED]", "[REDACTED]"],
               "max_content_bytes": 2048}),
        "{config:#}"
    );
    assert_eq!(config["approval_policy"], json!("never"), "{config:#}");
    assert_eq!(
        config["sandbox_mode"],
        json!("danger-full-access"),
        "{config:#}"
    );

    // The same server is listed by mcpServerStatus/list, not started.
    let mcp = call(&mut client, "mcpServerStatus/list", json!({})).await;
    let servers = mcp["data"].as_array().expect("data");
    assert_eq!(servers.len(), 1, "{mcp}");
    assert_eq!(servers[0]["name"], json!("tools"), "{mcp}");
    assert_eq!(servers[0]["runtimeStatus"], json!("notStarted"), "{mcp}");
    client.close().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ignored_codex_params_are_named_in_the_debug_log() {
    let options = ServerOptions::default().env("RUST_LOG", "info,skein_app_server=debug");
    let (mut server, mut client) = start(Transport::Stdio, options).await;
    let ignored_line = |method: &'static str| {
        move |line: &str| {
            line.contains("does not act on") && line.contains(&format!("method=\"{method}\""))
        }
    };

    let thread_id = client
        .request(
            "thread/start",
            json!({"model": "echo", "serviceName": "codex-ide", "cwd": "/elsewhere"}),
            None,
        )
        .await
        .thread_id();
    let line = server.wait_for_stderr(ignored_line("thread/start")).await;
    assert!(line.contains("DEBUG"), "{line}");
    assert!(
        line.contains("\"cwd\"") && line.contains("\"serviceName\""),
        "{line}"
    );
    assert!(!line.contains("\"model\""), "model is acted on: {line}");

    call(
        &mut client,
        "thread/list",
        json!({"limit": 5, "searchTerm": "needle", "sortKey": "updated_at"}),
    )
    .await;
    let line = server.wait_for_stderr(ignored_line("thread/list")).await;
    assert!(
        line.contains("\"searchTerm\"") && line.contains("\"sortKey\""),
        "{line}"
    );
    assert!(!line.contains("\"limit\""), "limit is acted on: {line}");

    // No turn runs, so the steer fails; the parameter is still named.
    let steer = client
        .request(
            "turn/steer",
            json!({"threadId": thread_id, "expectedTurnId": "none", "clientUserMessageId": "m-1",
                   "input": [{"type": "text", "text": "x"}]}),
            None,
        )
        .await;
    assert!(steer.message.get("error").is_some(), "{}", steer.message);
    let line = server.wait_for_stderr(ignored_line("turn/steer")).await;
    assert!(line.contains("\"clientUserMessageId\""), "{line}");
    client.close().await;
    server.shutdown().await;
}
