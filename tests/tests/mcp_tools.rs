//! End-to-end tests of tool turns: the real `skein` binary, a local
//! stand-in for the paid model API (`support::mock_llm`), and real MCP
//! servers over stdio: `mcp-server-time` from PyPI,
//! `tests/mcp/meta_reporter.py` written with the official Python `mcp` SDK
//! (also served over streamable HTTP), and `tests/mcp/malformed_reply.py`,
//! a raw server that garbles replies; and `skein-rmcp`'s `weather_server`
//! example, an rmcp server wrapped in `TracedServer` (built by the test,
//! `support::weather_server_bin`).
//!
//! The Python ones come from the virtualenv `.ci/run` installs:
//! `SKEIN_MCP_SERVER_TIME_BIN` and `SKEIN_MCP_PYTHON`, else
//! `~/.cache/skein-ci/mcp-venv`. Without them those tests fail saying how to
//! install them, unless `SKEIN_TESTS_ALLOW_MISSING` names `mcp` (never under
//! `CI=true`): see `support::tool_missing`.

#[macro_use]
mod support;

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde_json::{Value, json};
use support::mock_llm::{MockLlm, Reply, text_chunks, tool_call_chunks};
use support::{
    Client, SPAN_KIND_CLIENT, SPAN_KIND_INTERNAL, SPAN_KIND_SERVER, STATUS_CODE_ERROR, Server,
    ServerOptions, Span, TraceContext, Transport, mcp_venv,
};

const CHAT: &str = "chat mock-model";

fn meta_reporter_script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("mcp/meta_reporter.py")
}

/// Options running `mock` as the default provider and one MCP server
/// `name` started as `command args`.
fn options(mock: &MockLlm, name: &str, command: &Path, args: &[String]) -> ServerOptions {
    mock.server_options()
        .env("MOCK_API_KEY", "sk-test")
        .mcp_server(name, command, args)
}

async fn connect(server: &mut Server) -> Client {
    let mut client = server.connect().await;
    client.initialize("e2e-mcp-tools", "0.0.1").await;
    client
}

fn named<'a>(spans: Vec<&'a Span>, name: &str) -> Vec<&'a Span> {
    spans.into_iter().filter(|s| s.name == name).collect()
}

fn assert_attr(span: &Span, key: &str, expected: &str) {
    assert_eq!(
        span.attr_str(key).as_deref(),
        Some(expected),
        "attribute {key}: {span}"
    );
}

/// The `item/completed` notification of the `mcpToolCall` item.
async fn tool_item_completed(client: &mut Client) -> Value {
    client
        .wait_for_notification("item/completed of an mcpToolCall", |n| {
            n["method"] == "item/completed" && n["params"]["item"]["type"] == "mcpToolCall"
        })
        .await
}

/// The JSON a reporting tool answered with: the first text content of the
/// next completed `mcpToolCall` item.
async fn reported_json(client: &mut Client) -> Value {
    let item = tool_item_completed(client).await;
    let text = item["params"]["item"]["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_else(|| panic!("a text result: {item}"));
    serde_json::from_str(text).unwrap_or_else(|e| panic!("the report is not JSON ({e}): {item}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tool_turn_runs_get_current_time_and_sends_the_result_back_to_the_model() {
    let Some((time_bin, _)) = mcp_venv() else {
        return;
    };
    let mock = MockLlm::start(vec![
        Reply::Stream(tool_call_chunks(
            "call_time_1",
            "get_current_time",
            &json!({"timezone": "UTC"}),
        )),
        Reply::Stream(text_chunks(&["It is ", "time."], 20, 3)),
    ])
    .await;
    let mut server =
        Server::start_with(Transport::Stdio, options(&mock, "time", &time_bin, &[])).await;
    let mut client = connect(&mut server).await;
    let thread_id = client.start_thread().await;
    let parent = TraceContext::random();
    let turn_id = client
        .start_turn(&thread_id, "What time is it in UTC?", Some(&parent))
        .await
        .turn_id();
    let started = client
        .wait_for_notification("item/started of an mcpToolCall", |n| {
            n["method"] == "item/started" && n["params"]["item"]["type"] == "mcpToolCall"
        })
        .await;
    // What a Codex client parses: the tool-call items as Codex's schemas
    // define them.
    support::codex_schema::assert_valid_notification(&started);
    let item = &started["params"]["item"];
    assert_eq!(item["server"], "time", "{item}");
    assert_eq!(item["tool"], "get_current_time", "{item}");
    assert_eq!(item["status"], "inProgress", "{item}");
    assert_eq!(item["arguments"], json!({"timezone": "UTC"}), "{item}");
    let completed_item = tool_item_completed(&mut client).await;
    support::codex_schema::assert_valid_notification(&completed_item);
    let item = &completed_item["params"]["item"];
    assert_eq!(item["status"], "completed", "{item}");
    assert_eq!(item["id"], "call_time_1", "{item}");
    let result_text = item["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_else(|| panic!("a text result: {item}"));
    assert!(result_text.contains("UTC"), "{result_text}");
    let completed = client.wait_for_turn_completed(&turn_id).await;
    assert_eq!(
        completed["params"]["turn"]["status"], "completed",
        "{completed}"
    );
    assert_eq!(
        completed["params"]["usage"],
        json!({"inputTokens": 30, "outputTokens": 8}),
        "usage adds up over both model calls: {completed}"
    );

    // The configured server, running now, with the tools it offered.
    let status = client
        .request("mcpServerStatus/list", json!({}), None)
        .await
        .result()
        .clone();
    support::codex_schema::assert_valid_result("mcpServerStatus/list", &status);
    let server_status = &status["data"][0];
    assert_eq!(server_status["name"], "time", "{status}");
    assert_eq!(server_status["runtimeStatus"], "connected", "{status}");
    assert!(
        server_status["tools"].get("get_current_time").is_some(),
        "{status}"
    );

    let requests = mock.wait_for_requests(2).await;
    let tools = requests[0].body["tools"].to_string();
    assert!(tools.contains("get_current_time"), "{tools}");
    let messages = &requests[1].body["messages"];
    assert_eq!(messages[1]["role"], "assistant", "{messages}");
    assert_eq!(
        messages[1]["tool_calls"][0]["function"]["name"], "get_current_time",
        "{messages}"
    );
    assert_eq!(messages[2]["role"], "tool", "{messages}");
    assert_eq!(messages[2]["tool_call_id"], "call_time_1", "{messages}");
    assert_eq!(messages[2]["content"], result_text, "{messages}");

    client.close().await;
    let finished = server.shutdown().await;
    let turn = finished.turn_span(&turn_id);
    assert_eq!(turn.trace_id, parent.trace_id);
    let children = finished.children_of(&turn.span_id);
    assert_eq!(
        named(children.clone(), CHAT).len(),
        2,
        "{}",
        finished.dump()
    );
    let tools = named(children, "execute_tool get_current_time");
    let [execute] = tools.as_slice() else {
        panic!("one execute_tool span expected:\n{}", finished.dump());
    };
    assert_eq!(execute.kind, SPAN_KIND_INTERNAL, "{execute}");
    assert_attr(execute, "gen_ai.operation.name", "execute_tool");
    assert_attr(execute, "gen_ai.tool.name", "get_current_time");
    assert_attr(execute, "gen_ai.tool.call.id", "call_time_1");
    assert_attr(execute, "gen_ai.tool.type", "extension");
    let calls = named(
        finished.children_of(&execute.span_id),
        "tools/call get_current_time",
    );
    let [call] = calls.as_slice() else {
        panic!("one tools/call span expected:\n{}", finished.dump());
    };
    assert_eq!(call.kind, SPAN_KIND_CLIENT, "{call}");
    assert_attr(call, "mcp.method.name", "tools/call");
    assert!(call.attr_str("jsonrpc.request.id").is_some(), "{call}");
    assert!(
        call.attr_str("mcp.protocol.version")
            .is_some_and(|v| !v.is_empty()),
        "{call}"
    );
    assert_ne!(call.status_code, STATUS_CODE_ERROR, "{call}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mcp_request_carries_the_tools_call_span_context_in_params_meta() {
    let Some((_, python)) = mcp_venv() else {
        return;
    };
    let script = meta_reporter_script().display().to_string();
    let mock = MockLlm::start(vec![
        Reply::Stream(tool_call_chunks("call_meta", "report_meta", &json!({}))),
        Reply::Stream(text_chunks(&["done"], 1, 1)),
    ])
    .await;
    let mut server =
        Server::start_with(Transport::Stdio, options(&mock, "meta", &python, &[script])).await;
    let mut client = connect(&mut server).await;
    let thread_id = client.start_thread().await;
    let parent = TraceContext::random();
    let tracestate = "vendor=abc,other=xyz";
    let turn_id = client
        .request(
            "turn/start",
            support::turn_start_params(&thread_id, "report your meta"),
            Some(json!({"traceparent": parent.traceparent(), "tracestate": tracestate})),
        )
        .await
        .turn_id();
    let meta = reported_json(&mut client).await;
    let traceparent = meta["traceparent"]
        .as_str()
        .unwrap_or_else(|| panic!("no traceparent in _meta: {meta}"));
    let received = TraceContext::parse(traceparent).expect("a valid traceparent");
    assert_eq!(
        meta["tracestate"], tracestate,
        "the client's tracestate goes along: {meta}"
    );
    client.wait_for_turn_completed(&turn_id).await;
    client.close().await;
    let finished = server.shutdown().await;
    let calls: Vec<&Span> = finished
        .spans
        .iter()
        .filter(|s| s.name == "tools/call report_meta")
        .collect();
    let [call] = calls.as_slice() else {
        panic!("one tools/call span expected:\n{}", finished.dump());
    };
    assert_eq!(received.trace_id, parent.trace_id);
    assert_eq!(received.trace_id, call.trace_id);
    assert_eq!(
        received.span_id, call.span_id,
        "parent id is the tools/call span"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_restart_a_resumed_thread_sends_the_model_its_tool_calls_and_results() {
    let Some((time_bin, _)) = mcp_venv() else {
        return;
    };
    let first = MockLlm::start(vec![
        Reply::Stream(tool_call_chunks(
            "call_t",
            "get_current_time",
            &json!({"timezone": "Europe/Paris"}),
        )),
        Reply::Stream(text_chunks(&["Paris time noted."], 1, 1)),
    ])
    .await;
    let mut server =
        Server::start_with(Transport::Stdio, options(&first, "time", &time_bin, &[])).await;
    let home = server.home();
    let mut client = connect(&mut server).await;
    let thread_id = client.start_thread().await;
    let turn_id = client
        .start_turn(&thread_id, "Time in Paris?", None)
        .await
        .turn_id();
    let completed = client.wait_for_turn_completed(&turn_id).await;
    assert_eq!(
        completed["params"]["turn"]["status"], "completed",
        "{completed}"
    );
    let earlier = first.wait_for_requests(2).await;
    let tool_result = earlier[1].body["messages"][2]["content"].clone();
    client.close().await;
    server.shutdown().await;

    let second = MockLlm::start(vec![Reply::Stream(text_chunks(&["Yes."], 1, 1))]).await;
    let mut server = Server::start_with(
        Transport::Stdio,
        options(&second, "time", &time_bin, &[]).home(&home),
    )
    .await;
    let mut client = connect(&mut server).await;
    let resumed = client
        .request("thread/resume", json!({"threadId": thread_id}), None)
        .await;
    let items = resumed.result()["thread"]["turns"][0]["items"].to_string();
    assert!(items.contains("mcpToolCall"), "{items}");
    let turn_id = client
        .start_turn(&thread_id, "Did you check?", None)
        .await
        .turn_id();
    client.wait_for_turn_completed(&turn_id).await;
    let requests = second.wait_for_requests(1).await;
    let messages = &requests[0].body["messages"];
    assert_eq!(
        messages[0],
        json!({"role": "user", "content": "Time in Paris?"})
    );
    assert_eq!(messages[1]["tool_calls"][0]["id"], "call_t", "{messages}");
    assert_eq!(
        messages[1]["tool_calls"][0]["function"]["arguments"],
        json!({"timezone": "Europe/Paris"}).to_string(),
        "{messages}"
    );
    assert_eq!(
        messages[2],
        json!({"role": "tool", "tool_call_id": "call_t", "content": tool_result})
    );
    assert_eq!(
        messages[3],
        json!({"role": "assistant", "content": "Paris time noted."})
    );
    assert_eq!(
        messages[4],
        json!({"role": "user", "content": "Did you check?"})
    );
    client.close().await;
    server.shutdown().await;
}

/// A server running `mock` and the meta reporter as MCP server `meta`.
async fn start_with_reporter(mock: &MockLlm, python: &Path, extra: ServerOptions) -> Server {
    let script = meta_reporter_script().display().to_string();
    let mut options = options(mock, "meta", python, &[script]);
    options = options.merge(extra);
    Server::start_with(Transport::Stdio, options).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tool_arguments_and_results_are_recorded_only_redacted_when_content_is_on() {
    let Some((_, python)) = mcp_venv() else {
        return;
    };
    let mock = MockLlm::start(vec![
        Reply::Stream(tool_call_chunks(
            "call_echo",
            "echo",
            &json!({"text": "my token is tok-4242"}),
        )),
        Reply::Stream(text_chunks(&["ok"], 1, 1)),
    ])
    .await;
    let extra = ServerOptions::default()
        .arg("-c")
        .arg("otel.capture_content=true")
        .arg("-c")
        .arg("otel.redact=[\"tok-[0-9]+\"]");
    let mut server = start_with_reporter(&mock, &python, extra).await;
    let mut client = connect(&mut server).await;
    let thread_id = client.start_thread().await;
    let turn_id = client
        .start_turn(&thread_id, "echo my token", None)
        .await
        .turn_id();
    let item = tool_item_completed(&mut client).await;
    // The client and history get the real result: it is the user's data.
    assert!(item.to_string().contains("tok-4242"), "{item}");
    client.wait_for_turn_completed(&turn_id).await;
    client.close().await;
    let finished = server.shutdown().await;
    let execute = finished
        .spans
        .iter()
        .find(|s| s.name == "execute_tool echo")
        .unwrap_or_else(|| panic!("no execute_tool span:\n{}", finished.dump()));
    let arguments = execute
        .attr_str("gen_ai.tool.call.arguments")
        .expect("arguments recorded");
    assert_eq!(
        serde_json::from_str::<Value>(&arguments).expect("JSON"),
        json!({"text": "my token is [REDACTED]"})
    );
    let result = execute
        .attr_str("gen_ai.tool.call.result")
        .expect("result recorded");
    assert!(result.contains("my token is [REDACTED]"), "{result}");
    let chats: Vec<&Span> = finished.spans.iter().filter(|s| s.name == CHAT).collect();
    let input = chats
        .iter()
        .filter_map(|c| c.attr_str("gen_ai.input.messages"))
        .find(|i| i.contains("tool_call_response"))
        .expect("the second call's input records the tool result");
    assert!(input.contains("my token is [REDACTED]"), "{input}");
    assert!(
        !finished.dump().contains("tok-4242"),
        "a secret was recorded raw"
    );
}

/// The id after `requestId=` in a meta reporter's stderr line.
fn logged_request_id(line: &str) -> String {
    line.split_once("requestId=")
        .map(|(_, rest)| {
            rest.chars()
                .take_while(char::is_ascii_alphanumeric)
                .collect::<String>()
        })
        .filter(|id| !id.is_empty())
        .unwrap_or_else(|| panic!("no requestId in {line:?}"))
}

/// The tool blocks until its request is cancelled; only the interrupt can
/// end the call (the tool timeout is far beyond the test's). The latency
/// from `turn/interrupt` to `turn/completed` is printed, not asserted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupting_a_tool_call_cancels_the_mcp_request() {
    let Some((_, python)) = mcp_venv() else {
        return;
    };
    let mock = MockLlm::start(vec![
        Reply::Stream(tool_call_chunks("call_wait", "wait_for_cancel", &json!({}))),
        Reply::Stream(tool_call_chunks(
            "call_echo",
            "echo",
            &json!({"text": "still the same process"}),
        )),
        Reply::Stream(text_chunks(&["fine"], 1, 1)),
    ])
    .await;
    let extra = ServerOptions::default()
        .arg("-c")
        .arg("mcp_servers.meta.tool_timeout_ms=3600000");
    let mut server = start_with_reporter(&mock, &python, extra).await;
    let mut client = connect(&mut server).await;
    let thread_id = client.start_thread().await;
    let turn_id = client.start_turn(&thread_id, "wait", None).await.turn_id();
    client
        .wait_for_notification("item/started of the tool call", |n| {
            n["method"] == "item/started" && n["params"]["item"]["type"] == "mcpToolCall"
        })
        .await;
    // The tool is running on the server: its request is in flight.
    let started = server
        .wait_for_stderr(|line| line.contains("wait_for_cancel started requestId="))
        .await;
    let request_id = logged_request_id(&started);

    let sent = Instant::now();
    let interrupt = client
        .send_request(
            "turn/interrupt",
            json!({"threadId": thread_id, "turnId": turn_id}),
            None,
        )
        .await;
    let completed = client.wait_for_turn_completed(&turn_id).await;
    let to_completed = sent.elapsed();
    client.recv_response(interrupt).await.result();
    eprintln!("interrupt of a blocked MCP tool call: turn/completed after {to_completed:?}");
    assert_eq!(
        completed["params"]["turn"]["status"], "interrupted",
        "{completed}"
    );
    let item = tool_item_completed(&mut client).await;
    assert_eq!(item["params"]["item"]["status"], "failed", "{item}");
    assert_eq!(
        item["params"]["item"]["error"]["message"], "interrupted",
        "{item}"
    );
    // The server received notifications/cancelled naming that request, and
    // its handler was cancelled.
    server
        .wait_for_stderr(|line| {
            line.contains("received notifications/cancelled")
                && logged_request_id(line) == request_id
        })
        .await;
    server
        .wait_for_stderr(|line| {
            line.contains("wait_for_cancel was cancelled") && logged_request_id(line) == request_id
        })
        .await;
    assert_eq!(
        mock.requests().len(),
        1,
        "no model call after the interrupt"
    );

    // The server process lives on and serves the next turn.
    let turn_id_2 = client.start_turn(&thread_id, "echo", None).await.turn_id();
    let item = tool_item_completed(&mut client).await;
    assert_eq!(item["params"]["item"]["status"], "completed", "{item}");
    assert!(
        item.to_string().contains("still the same process"),
        "{item}"
    );
    client.wait_for_turn_completed(&turn_id_2).await;
    client.close().await;
    let finished = server.shutdown().await;
    let starts = finished
        .stderr()
        .iter()
        .filter(|l| l.contains("MCP server started") && l.contains("server=meta"))
        .count();
    assert_eq!(starts, 1, "the cancelled call did not cost the server");
    let call = finished
        .spans
        .iter()
        .find(|s| s.name == "tools/call wait_for_cancel")
        .unwrap_or_else(|| panic!("no tools/call span:\n{}", finished.dump()));
    assert_eq!(
        call.attr_str("jsonrpc.request.id").as_deref(),
        Some(request_id.as_str()),
        "{call}"
    );
    let execute = finished.parent_of(call);
    assert_eq!(execute.name, "execute_tool wait_for_cancel", "{execute}");
    assert_attr(execute, "error.type", "interrupted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tool_result_with_is_error_fails_the_item_and_marks_the_spans_tool_error() {
    let Some((_, python)) = mcp_venv() else {
        return;
    };
    let mock = MockLlm::start(vec![
        Reply::Stream(tool_call_chunks(
            "call_refuse",
            "refuse",
            &json!({"reason": "the disk is full"}),
        )),
        Reply::Stream(text_chunks(&["The tool failed."], 1, 1)),
    ])
    .await;
    let mut server = start_with_reporter(&mock, &python, ServerOptions::default()).await;
    let mut client = connect(&mut server).await;
    let thread_id = client.start_thread().await;
    let turn_id = client
        .start_turn(&thread_id, "try it", None)
        .await
        .turn_id();
    let completed_item = tool_item_completed(&mut client).await;
    support::codex_schema::assert_valid_notification(&completed_item);
    let item = &completed_item["params"]["item"];
    assert_eq!(item["status"], "failed", "{item}");
    // The tool answered: its result (flagged isError) is what the client
    // gets; there was no failure to call it.
    assert_eq!(item["result"]["isError"], true, "{item}");
    let text = item["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_else(|| panic!("a text result: {item}"));
    assert!(text.contains("the disk is full"), "{text}");
    assert_eq!(item["error"], Value::Null, "{item}");
    let completed = client.wait_for_turn_completed(&turn_id).await;
    assert_eq!(
        completed["params"]["turn"]["status"], "completed",
        "the model answers after a tool error: {completed}"
    );
    let requests = mock.wait_for_requests(2).await;
    let tool_message = &requests[1].body["messages"][2];
    assert_eq!(tool_message["role"], "tool", "{tool_message}");
    assert_eq!(
        tool_message["content"],
        format!("error: {text}"),
        "the model hears it is an error: {tool_message}"
    );
    client.close().await;
    let finished = server.shutdown().await;
    let calls: Vec<&Span> = finished
        .spans
        .iter()
        .filter(|s| s.name == "tools/call refuse")
        .collect();
    let [call] = calls.as_slice() else {
        panic!("one tools/call span expected:\n{}", finished.dump());
    };
    assert_eq!(call.kind, SPAN_KIND_CLIENT, "{call}");
    assert_attr(call, "error.type", "tool_error");
    assert_eq!(call.status_code, STATUS_CODE_ERROR, "{call}");
    let execute = finished.parent_of(call);
    assert_eq!(execute.name, "execute_tool refuse", "{execute}");
    assert_attr(execute, "error.type", "tool_error");
    assert_eq!(execute.status_code, STATUS_CODE_ERROR, "{execute}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_mcp_reply_fails_the_tool_call_cleanly_and_skein_keeps_serving() {
    let Some((_, python)) = mcp_venv() else {
        return;
    };
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("mcp/malformed_reply.py")
        .display()
        .to_string();
    let mock = MockLlm::start(vec![
        Reply::Stream(tool_call_chunks("call_garbled", "garbled", &json!({}))),
        Reply::Stream(text_chunks(&["The tool broke."], 1, 1)),
        Reply::Stream(tool_call_chunks(
            "call_echo",
            "echo",
            &json!({"text": "after the garbage"}),
        )),
        Reply::Stream(text_chunks(&["fine"], 1, 1)),
    ])
    .await;
    let mut server =
        Server::start_with(Transport::Stdio, options(&mock, "raw", &python, &[script])).await;
    let mut client = connect(&mut server).await;
    let thread_id = client.start_thread().await;
    let turn_id = client
        .start_turn(&thread_id, "call the garbled tool", None)
        .await
        .turn_id();
    // Within the test's timeout, far below the default tool timeout: the
    // garbage is read and refused, not waited out.
    let item = tool_item_completed(&mut client).await;
    support::codex_schema::assert_valid_notification(&item);
    let item = &item["params"]["item"];
    assert_eq!(item["status"], "failed", "{item}");
    assert_eq!(item["result"], Value::Null, "{item}");
    let message = item["error"]["message"]
        .as_str()
        .unwrap_or_else(|| panic!("an error message: {item}"))
        .to_owned();
    assert!(
        message.contains("MCP server \"raw\"") && message.contains("tools/call"),
        "{message}"
    );
    let completed = client.wait_for_turn_completed(&turn_id).await;
    assert_eq!(
        completed["params"]["turn"]["status"], "completed",
        "the model answers after the tool error: {completed}"
    );
    server
        .wait_for_stderr(|line| line.contains("malformed-reply: sent garbage"))
        .await;
    let requests = mock.wait_for_requests(2).await;
    let tool_message = &requests[1].body["messages"][2];
    assert_eq!(tool_message["role"], "tool", "{tool_message}");
    assert_eq!(
        tool_message["content"],
        format!("error: {message}"),
        "the model hears of the failure: {tool_message}"
    );

    // Skein still answers requests, and the tool server is usable again.
    let read = client.read_thread_with_turns(&thread_id).await;
    let items = read.result()["thread"]["turns"][0]["items"].to_string();
    assert!(items.contains("call_garbled"), "{items}");
    let turn_id = client
        .start_turn(&thread_id, "echo after the garbage", None)
        .await
        .turn_id();
    let item = tool_item_completed(&mut client).await;
    assert_eq!(item["params"]["item"]["status"], "completed", "{item}");
    assert!(item.to_string().contains("after the garbage"), "{item}");
    let completed = client.wait_for_turn_completed(&turn_id).await;
    assert_eq!(
        completed["params"]["turn"]["status"], "completed",
        "{completed}"
    );
    client.close().await;
    let finished = server.shutdown().await;
    let call = finished
        .spans
        .iter()
        .find(|s| s.name == "tools/call garbled")
        .unwrap_or_else(|| panic!("no tools/call span:\n{}", finished.dump()));
    assert_eq!(call.status_code, STATUS_CODE_ERROR, "{call}");
    assert_attr(call, "error.type", "unexpected_response");
    let starts = finished
        .stderr()
        .iter()
        .filter(|l| l.contains("MCP server started") && l.contains("server=raw"))
        .count();
    assert_eq!(starts, 1, "the same server process answered the next call");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_dies_is_a_tool_error_and_is_started_again_on_next_use() {
    let Some((_, python)) = mcp_venv() else {
        return;
    };
    let mock = MockLlm::start(vec![
        Reply::Stream(tool_call_chunks("call_crash", "crash", &json!({}))),
        Reply::Stream(text_chunks(&["it crashed"], 1, 1)),
        Reply::Stream(tool_call_chunks(
            "call_echo",
            "echo",
            &json!({"text": "back again"}),
        )),
        Reply::Stream(text_chunks(&["fine"], 1, 1)),
    ])
    .await;
    let mut server = start_with_reporter(&mock, &python, ServerOptions::default()).await;
    let mut client = connect(&mut server).await;
    let thread_id = client.start_thread().await;
    let turn_id = client
        .start_turn(&thread_id, "crash it", None)
        .await
        .turn_id();
    let item = tool_item_completed(&mut client).await;
    assert_eq!(item["params"]["item"]["status"], "failed", "{item}");
    assert!(
        item["params"]["item"]["error"]["message"].is_string(),
        "{item}"
    );
    let completed = client.wait_for_turn_completed(&turn_id).await;
    assert_eq!(
        completed["params"]["turn"]["status"], "completed",
        "{completed}"
    );
    let requests = mock.wait_for_requests(2).await;
    let tool_message = &requests[1].body["messages"][2];
    assert_eq!(tool_message["role"], "tool", "{tool_message}");
    assert!(
        tool_message["content"]
            .as_str()
            .is_some_and(|c| c.starts_with("error:")),
        "the model hears of the failure: {tool_message}"
    );

    let turn_id = client
        .start_turn(&thread_id, "echo something", None)
        .await
        .turn_id();
    let item = tool_item_completed(&mut client).await;
    assert_eq!(item["params"]["item"]["status"], "completed", "{item}");
    assert!(item.to_string().contains("back again"), "{item}");
    client.wait_for_turn_completed(&turn_id).await;
    client.close().await;
    let finished = server.shutdown().await;
    let crashed = finished
        .spans
        .iter()
        .find(|s| s.name == "execute_tool crash")
        .unwrap_or_else(|| panic!("no execute_tool crash span:\n{}", finished.dump()));
    assert_eq!(crashed.status_code, STATUS_CODE_ERROR, "{crashed}");
    let error_types: Vec<&Value> = crashed
        .attributes
        .iter()
        .filter(|(k, _)| k == "error.type")
        .map(|(_, v)| v)
        .collect();
    assert_eq!(error_types.len(), 1, "one error.type: {crashed}");
    assert_attr(crashed, "error.type", "connection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_tool_rounds_bounds_a_model_that_keeps_calling_tools() {
    let Some((_, python)) = mcp_venv() else {
        return;
    };
    let call = |id: &str| Reply::Stream(tool_call_chunks(id, "echo", &json!({"text": "again"})));
    let mock = MockLlm::start(vec![call("c1"), call("c2"), call("c3")]).await;
    let extra = ServerOptions::default().arg("-c").arg("max_tool_rounds=2");
    let mut server = start_with_reporter(&mock, &python, extra).await;
    let mut client = connect(&mut server).await;
    let thread_id = client.start_thread().await;
    let turn_id = client.start_turn(&thread_id, "loop", None).await.turn_id();
    let completed = client.wait_for_turn_completed(&turn_id).await;
    assert_eq!(
        completed["params"]["turn"]["status"], "failed",
        "{completed}"
    );
    let message = completed["params"]["turn"]["error"]["message"]
        .as_str()
        .unwrap_or_default();
    assert!(message.contains("max_tool_rounds"), "{message}");
    assert_eq!(mock.requests().len(), 2, "two model calls, then the bound");
    client.close().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_server_process_is_started_once_and_serves_every_thread() {
    let Some((_, python)) = mcp_venv() else {
        return;
    };
    let echo = |id: &str, text: &str| {
        Reply::Stream(tool_call_chunks(id, "echo", &json!({ "text": text })))
    };
    let mock = MockLlm::start(vec![
        echo("e1", "first thread"),
        Reply::Stream(text_chunks(&["one"], 1, 1)),
        echo("e2", "second thread"),
        Reply::Stream(text_chunks(&["two"], 1, 1)),
    ])
    .await;
    let mut server = start_with_reporter(&mock, &python, ServerOptions::default()).await;
    let mut client = connect(&mut server).await;
    for text in ["first thread", "second thread"] {
        let thread_id = client.start_thread().await;
        let turn_id = client.start_turn(&thread_id, text, None).await.turn_id();
        let item = tool_item_completed(&mut client).await;
        assert!(item.to_string().contains(text), "{item}");
        client.wait_for_turn_completed(&turn_id).await;
    }
    client.close().await;
    let finished = server.shutdown().await;
    let starts = finished
        .stderr()
        .iter()
        .filter(|l| l.contains("MCP server started") && l.contains("server=meta"))
        .count();
    assert_eq!(starts, 1, "the server is started once, then reused");
}

/// The stand-in for the model API is only worth its tests if real clients
/// accept it: the official `openai` Python client streams from it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_openai_python_client_accepts_the_stand_in_api() {
    let Some((_, python)) = mcp_venv() else {
        return;
    };
    let has_openai = tokio::process::Command::new(&python)
        .args(["-c", "import openai"])
        .status()
        .await
        .is_ok_and(|s| s.success());
    if !has_openai {
        support::tool_missing(
            support::Tool::Mcp,
            "the openai package is not in the MCP virtualenv",
            support::MCP_VENV_INSTALL,
        );
        return;
    }
    let mock = MockLlm::start(vec![Reply::Stream(text_chunks(&["Hel", "lo"], 4, 2))]).await;
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("mcp/openai_client_check.py");
    let output = tokio::time::timeout(
        support::TIMEOUT,
        tokio::process::Command::new(&python)
            .arg(&script)
            .arg(mock.base_url())
            .output(),
    )
    .await
    .expect("the client finishes")
    .expect("run python");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(stdout.trim(), "Hello|4|2");
    let requests = mock.requests();
    assert_eq!(requests[0].path, "/v1/chat/completions");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_cannot_start_again_is_reported_to_the_model_as_a_tool_error() {
    let Some((_, python)) = mcp_venv() else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let marker = dir.path().join("broken");
    let mock = MockLlm::start(vec![
        Reply::Stream(tool_call_chunks("e1", "echo", &json!({"text": "before"}))),
        Reply::Stream(text_chunks(&["one"], 1, 1)),
        Reply::Stream(tool_call_chunks("b1", "break_for_good", &json!({}))),
        Reply::Stream(text_chunks(&["two"], 1, 1)),
        Reply::Stream(tool_call_chunks("e2", "echo", &json!({"text": "after"}))),
        Reply::Stream(text_chunks(&["three"], 1, 1)),
    ])
    .await;
    let extra = ServerOptions::default().arg("-c").arg(&format!(
        "mcp_servers.meta.env.SKEIN_TEST_BROKEN_MARKER={}",
        json!(marker.display().to_string())
    ));
    let mut server = start_with_reporter(&mock, &python, extra).await;
    let mut client = connect(&mut server).await;
    let thread_id = client.start_thread().await;
    let mut statuses = Vec::new();
    for text in ["echo before", "break it", "echo after"] {
        let turn_id = client.start_turn(&thread_id, text, None).await.turn_id();
        let item = tool_item_completed(&mut client).await;
        statuses.push(item["params"]["item"]["status"].clone());
        let completed = client.wait_for_turn_completed(&turn_id).await;
        assert_eq!(
            completed["params"]["turn"]["status"], "completed",
            "{completed}"
        );
        if text == "echo after" {
            let message = item["params"]["item"]["error"]["message"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            assert!(message.contains("meta"), "{message}");
        }
    }
    assert_eq!(statuses, vec!["completed", "failed", "failed"]);
    let requests = mock.wait_for_requests(6).await;
    // The broken server's tools are still offered...
    assert!(requests[4].body["tools"].to_string().contains("\"echo\""));
    // ...and the model hears why the call failed.
    let tool_message = &requests[5].body["messages"]
        .as_array()
        .and_then(|m| m.last().cloned())
        .unwrap_or_default();
    assert_eq!(tool_message["role"], "tool", "{tool_message}");
    assert!(
        tool_message["content"]
            .as_str()
            .is_some_and(|c| c.starts_with("error:")),
        "{tool_message}"
    );
    client.close().await;
    server.shutdown().await;
}

/// The exported name of the span of one MCP server start.
fn start_span_name(server: &str) -> String {
    format!("mcp.server.start {server}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_turn_shows_the_time_server_start_as_an_ended_child_span_before_its_model_call() {
    let Some((time_bin, _)) = mcp_venv() else {
        return;
    };
    let mock = MockLlm::start(vec![
        Reply::Stream(text_chunks(&["first"], 1, 1)),
        Reply::Stream(text_chunks(&["second"], 1, 1)),
    ])
    .await;
    let mut server =
        Server::start_with(Transport::Stdio, options(&mock, "time", &time_bin, &[])).await;
    let mut client = connect(&mut server).await;
    let thread_id = client.start_thread().await;
    let mut turn_ids = Vec::new();
    for text in ["first", "second"] {
        let turn_id = client.start_turn(&thread_id, text, None).await.turn_id();
        let completed = client.wait_for_turn_completed(&turn_id).await;
        assert_eq!(
            completed["params"]["turn"]["status"], "completed",
            "{completed}"
        );
        turn_ids.push(turn_id);
    }
    client.close().await;
    let finished = server.shutdown().await;

    let name = start_span_name("time");
    let starts: Vec<&Span> = finished.spans.iter().filter(|s| s.name == name).collect();
    let [start] = starts.as_slice() else {
        panic!(
            "one start span expected (the second turn finds the server running):\n{}",
            finished.dump()
        );
    };
    let first = finished.turn_span(&turn_ids[0]);
    assert_eq!(
        start.parent_span_id.as_deref(),
        Some(first.span_id.as_str()),
        "the start is a child of the first turn, which waited for it: {start}"
    );
    assert_eq!(start.trace_id, first.trace_id, "{start}");
    assert!(
        !start.is_in_progress() && start.end_time_unix_nano >= start.start_time_unix_nano,
        "the start span ended: {start}"
    );
    assert_eq!(start.kind, SPAN_KIND_INTERNAL, "{start}");
    assert_ne!(start.status_code, STATUS_CODE_ERROR, "{start}");
    assert_attr(start, "skein.mcp.server", "time");
    assert_attr(start, "process.command", &time_bin.display().to_string());
    assert!(
        start
            .attr_str("mcp.protocol.version")
            .is_some_and(|v| !v.is_empty()),
        "{start}"
    );
    assert_eq!(start.attr_str("error.type"), None, "{start}");
    // The turn asked the model only once the server had started.
    let chats = named(finished.children_of(&first.span_id), CHAT);
    let [chat] = chats.as_slice() else {
        panic!("one chat span expected:\n{}", finished.dump());
    };
    assert!(
        chat.start_time_unix_nano >= start.end_time_unix_nano,
        "the model call follows the start: {start} / {chat}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_mcp_command_is_failed_in_the_status_list_with_an_error_start_span_and_a_warning()
{
    // No MCP virtualenv needed: nothing is started.
    let dir = tempfile::tempdir().expect("tempdir");
    let command = dir.path().join("no-such-mcp-server");
    let command_text = command.display().to_string();
    // What the operating system says about starting it.
    let os_error = std::process::Command::new(&command)
        .spawn()
        .err()
        .unwrap_or_else(|| panic!("{command_text} must not start"))
        .to_string();
    let mock = MockLlm::start(vec![Reply::Stream(text_chunks(&["no tools"], 1, 1))]).await;
    let mut server =
        Server::start_with(Transport::Stdio, options(&mock, "broken", &command, &[])).await;
    let mut client = connect(&mut server).await;
    let thread_id = client.start_thread().await;
    let turn_id = client
        .start_turn(&thread_id, "anything?", None)
        .await
        .turn_id();
    let completed = client.wait_for_turn_completed(&turn_id).await;
    assert_eq!(
        completed["params"]["turn"]["status"], "completed",
        "the turn goes on without the server's tools: {completed}"
    );
    let requests = mock.wait_for_requests(1).await;
    assert!(
        requests[0].body["tools"]
            .as_array()
            .is_none_or(|tools| tools.is_empty()),
        "no tool offered: {}",
        requests[0].body
    );

    let status = client
        .request("mcpServerStatus/list", json!({}), None)
        .await
        .result()
        .clone();
    support::codex_schema::assert_valid_result("mcpServerStatus/list", &status);
    let server_status = &status["data"][0];
    assert_eq!(server_status["name"], "broken", "{status}");
    assert_eq!(server_status["runtimeStatus"], "failed", "{status}");
    assert_eq!(server_status["tools"], json!({}), "{status}");
    let tools_error = server_status["toolsError"].as_str().unwrap_or_default();
    assert!(
        tools_error.contains(&command_text) && tools_error.contains(&os_error),
        "toolsError says why: {status}"
    );

    let warning = server
        .wait_for_stderr(|line| line.contains("MCP server failed to start"))
        .await;
    assert!(warning.contains("WARN"), "{warning}");
    assert!(warning.contains("server=broken"), "{warning}");
    assert!(
        warning.contains(&format!("command={command_text}")),
        "{warning}"
    );
    assert!(warning.contains(&os_error), "{warning}");

    client.close().await;
    let finished = server.shutdown().await;
    let turn = finished.turn_span(&turn_id);
    let name = start_span_name("broken");
    let starts = named(finished.children_of(&turn.span_id), &name);
    let [start] = starts.as_slice() else {
        panic!(
            "one start span under the turn expected:\n{}",
            finished.dump()
        );
    };
    assert!(!start.is_in_progress(), "the start span ended: {start}");
    assert_eq!(start.status_code, STATUS_CODE_ERROR, "{start}");
    let message = start.status_message.as_deref().unwrap_or_default();
    assert!(
        message.contains(&command_text) && message.contains(&os_error),
        "{start}"
    );
    assert_attr(start, "error.type", "start_failed");
    assert_attr(start, "skein.mcp.server", "broken");
    assert_attr(start, "process.command", &command_text);
    assert_ne!(
        turn.status_code, STATUS_CODE_ERROR,
        "the turn itself did not fail: {turn}"
    );
}

/// A test whose MCP servers are missing is never a silent pass: outside CI
/// it fails, saying how to install them, unless `SKEIN_TESTS_ALLOW_MISSING`
/// names `mcp`; under `CI=true` it fails whatever that says. Checked by
/// running one MCP test of this very binary as a child, as `cargo test`
/// would, with the virtualenv pointed at nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_test_without_its_mcp_servers_fails_unless_skipping_is_asked_for() {
    let empty_cache = tempfile::tempdir().expect("temp dir");
    let run = |ci: bool, allow: Option<&str>| {
        let mut command =
            tokio::process::Command::new(std::env::current_exe().expect("the test binary's path"));
        command
            .args([
                "--exact",
                "a_tool_turn_runs_get_current_time_and_sends_the_result_back_to_the_model",
            ])
            .env("SKEIN_MCP_SERVER_TIME_BIN", "/nonexistent/mcp-server-time")
            .env("SKEIN_MCP_PYTHON", "/nonexistent/python")
            .env("XDG_CACHE_HOME", empty_cache.path())
            .env_remove("CI")
            .env_remove("SKEIN_TESTS_ALLOW_MISSING");
        if ci {
            command.env("CI", "true");
        }
        if let Some(allow) = allow {
            command.env("SKEIN_TESTS_ALLOW_MISSING", allow);
        }
        async move {
            let out = command.output().await.expect("run the test binary");
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            (out.status.success(), text)
        }
    };

    let (passed, out) = run(false, None).await;
    assert!(!passed, "a test without its MCP servers passed:\n{out}");
    assert!(
        out.contains("1 failed") && out.contains(".ci/run") && out.contains("pip install mcp=="),
        "the failure says how to install the servers:\n{out}"
    );

    let (passed, out) = run(false, Some("codex,mcp")).await;
    assert!(
        passed,
        "SKEIN_TESTS_ALLOW_MISSING=codex,mcp skips it:\n{out}"
    );

    let (passed, out) = run(true, Some("all")).await;
    assert!(
        !passed,
        "under CI=true a missing server always fails:\n{out}"
    );
    assert!(out.contains("CI=true but"), "{out}");
}

/// An MCP server over streamable HTTP (`url`, with Codex's
/// `bearer_token_env_var` and `http_headers`): the official Python SDK's
/// server gets the `tools/call` with the span context in `params._meta`
/// and in the `traceparent` / `tracestate` HTTP headers, with the bearer
/// token and the configured header.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mcp_server_over_streamable_http_gets_the_trace_context_in_meta_and_headers() {
    let Some((_, python)) = mcp_venv() else {
        return;
    };
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").port()
    };
    let mut http_server = tokio::process::Command::new(&python)
        .arg(meta_reporter_script())
        .args(["--http", &port.to_string()])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start the HTTP MCP server");
    // Ready once it accepts connections.
    let ready = tokio::time::timeout(std::time::Duration::from_secs(60), async {
        loop {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return;
            }
            if let Ok(Some(status)) = http_server.try_wait() {
                panic!("the HTTP MCP server exited: {status}");
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(
        ready.is_ok(),
        "the HTTP MCP server did not listen on {port}"
    );

    let mock = MockLlm::start(vec![
        Reply::Stream(tool_call_chunks("call_meta", "report_meta", &json!({}))),
        Reply::Stream(text_chunks(&["meta"], 1, 1)),
        Reply::Stream(tool_call_chunks(
            "call_headers",
            "report_headers",
            &json!({}),
        )),
        Reply::Stream(text_chunks(&["headers"], 1, 1)),
    ])
    .await;
    let options = mock
        .server_options()
        .env("MOCK_API_KEY", "sk-test")
        .env("HTTP_MCP_TOKEN", "secret-token")
        .arg("-c")
        .arg(&format!(
            "mcp_servers.web.url=\"http://127.0.0.1:{port}/mcp\""
        ))
        .arg("-c")
        .arg("mcp_servers.web.bearer_token_env_var=\"HTTP_MCP_TOKEN\"")
        .arg("-c")
        .arg("mcp_servers.web.http_headers={ \"X-Skein-Test\" = \"yes\" }");
    let mut server = Server::start_with(Transport::Stdio, options).await;
    let mut client = connect(&mut server).await;
    let thread_id = client.start_thread().await;
    let parent = TraceContext::random();
    let tracestate = "vendor=abc";
    let carrier = json!({"traceparent": parent.traceparent(), "tracestate": tracestate});
    let mut reported = Vec::new();
    for text in ["report your meta", "report your headers"] {
        let turn_id = client
            .request(
                "turn/start",
                support::turn_start_params(&thread_id, text),
                Some(carrier.clone()),
            )
            .await
            .turn_id();
        reported.push(reported_json(&mut client).await);
        client.wait_for_turn_completed(&turn_id).await;
    }
    client.close().await;
    let finished = server.shutdown().await;
    let (meta, headers) = (&reported[0], &reported[1]);

    let span_of = |name: &str| -> Span {
        let calls: Vec<&Span> = finished.spans.iter().filter(|s| s.name == name).collect();
        let [call] = calls.as_slice() else {
            panic!("one {name} span expected:\n{}", finished.dump());
        };
        (*call).clone()
    };
    let meta_call = span_of("tools/call report_meta");
    let in_meta = TraceContext::parse(meta["traceparent"].as_str().unwrap_or_default())
        .unwrap_or_else(|| panic!("a traceparent in _meta: {meta}"));
    assert_eq!(in_meta.trace_id, parent.trace_id, "{meta}");
    assert_eq!(in_meta.span_id, meta_call.span_id, "{meta}");
    assert_eq!(meta["tracestate"], tracestate, "{meta}");

    let headers_call = span_of("tools/call report_headers");
    let in_header = TraceContext::parse(headers["traceparent"].as_str().unwrap_or_default())
        .unwrap_or_else(|| panic!("a traceparent header: {headers}"));
    assert_eq!(in_header.trace_id, parent.trace_id, "{headers}");
    assert_eq!(
        in_header.span_id, headers_call.span_id,
        "the header names the tools/call span: {headers}"
    );
    assert_eq!(headers["tracestate"], tracestate, "{headers}");
    assert_eq!(headers["authorization"], "Bearer secret-token", "{headers}");
    assert_eq!(headers["x-skein-test"], "yes", "{headers}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn baggage_from_the_envelope_reaches_the_model_api_the_mcp_server_notifications_and_listed_keys_every_span()
 {
    let Some((_, python)) = mcp_venv() else {
        return;
    };
    let mock = MockLlm::start(vec![
        Reply::Stream(tool_call_chunks("call_meta", "report_meta", &json!({}))),
        Reply::Stream(text_chunks(&["done"], 1, 1)),
    ])
    .await;
    let mut server = start_with_reporter(
        &mock,
        &python,
        ServerOptions::default()
            .arg("-c")
            .arg("otel.baggage_attributes=[\"user.id\"]"),
    )
    .await;
    let mut client = connect(&mut server).await;
    let thread_id = client.start_thread().await;
    let parent = TraceContext::random();
    let baggage = "user.id=u-42,exp=b";
    let turn_id = client
        .request(
            "turn/start",
            support::turn_start_params(&thread_id, "report your meta"),
            Some(json!({"traceparent": parent.traceparent(), "baggage": baggage})),
        )
        .await
        .turn_id();
    let meta = reported_json(&mut client).await;
    assert_eq!(meta["baggage"], baggage, "the MCP server's _meta: {meta}");
    client.wait_for_turn_completed(&turn_id).await;

    let requests = mock.wait_for_requests(2).await;
    for request in &requests {
        assert_eq!(
            request.headers.get("baggage").map(String::as_str),
            Some(baggage),
            "every model API call carries the baggage: {:?}",
            request.headers
        );
    }
    let notifications: Vec<&Value> = client
        .received()
        .iter()
        .filter(|m| support::notification_turn_id(m) == Some(turn_id.as_str()))
        .collect();
    assert!(!notifications.is_empty());
    for n in notifications {
        assert_eq!(n["trace"]["baggage"], baggage, "{n}");
    }
    client.close().await;
    let finished = server.shutdown().await;

    let spans: Vec<&Span> = finished
        .spans
        .iter()
        .filter(|s| s.trace_id == parent.trace_id)
        .collect();
    let names: Vec<&str> = spans.iter().map(|s| s.name.as_str()).collect();
    for expected in [
        "turn/start",
        "op.dispatch.user_turn",
        "invoke_agent skein",
        CHAT,
        "execute_tool report_meta",
        "tools/call report_meta",
    ] {
        assert!(
            names.contains(&expected),
            "{expected} in the turn's trace:\n{}",
            finished.dump()
        );
    }
    for span in &spans {
        assert_attr(span, "user.id", "u-42");
        assert!(
            span.attr("exp").is_none(),
            "an unlisted key is never copied: {span}"
        );
    }
    // Nothing outside the request carries it.
    for span in finished
        .spans
        .iter()
        .filter(|s| s.trace_id != parent.trace_id)
    {
        assert!(span.attr("user.id").is_none(), "{span}");
    }
}

/// The spans `skein-rmcp`'s `weather_server` wrote to its store in `dir`,
/// once `ready` holds of them (or [`support::TIMEOUT`] passed: the caller's
/// assertions then say what is missing).
async fn rmcp_server_spans(dir: &Path, ready: impl Fn(&[Span]) -> bool) -> Vec<Span> {
    let deadline = Instant::now() + support::TIMEOUT;
    loop {
        let spans = support::read_live_spans(dir);
        if ready(&spans) || Instant::now() > deadline {
            return spans;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Done-when (b) of the rmcp layer: a real rmcp server wrapped in
/// `skein_rmcp::TracedServer` (the crate's `weather_server` example),
/// called by Skein during a turn. Each call gives exactly one SERVER span
/// in the server's own store, in the client's trace, whose parent is
/// Skein's `tools/call` CLIENT span for that call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_traced_rmcp_server_called_during_a_turn_records_one_server_span_per_call_under_skeins_client_span()
 {
    let weather_server = support::weather_server_bin();
    let store = tempfile::tempdir().expect("a directory for the rmcp server's spans");
    let mock = MockLlm::start(vec![
        Reply::Stream(tool_call_chunks(
            "call_weather",
            "get_weather",
            &json!({"city": "Oslo"}),
        )),
        Reply::Stream(tool_call_chunks("call_fail", "fail", &json!({}))),
        Reply::Stream(text_chunks(&["Sunny, and a tool failed."], 1, 1)),
    ])
    .await;
    let args = ["--trace-dir".to_owned(), store.path().display().to_string()];
    let mut server = Server::start_with(
        Transport::Stdio,
        options(&mock, "weather", &weather_server, &args),
    )
    .await;
    let mut client = connect(&mut server).await;
    let thread_id = client.start_thread().await;
    let parent = TraceContext::random();
    let turn_id = client
        .start_turn(&thread_id, "What is the weather in Oslo?", Some(&parent))
        .await
        .turn_id();
    let completed = client.wait_for_turn_completed(&turn_id).await;
    assert_eq!(
        completed["params"]["turn"]["status"], "completed",
        "{completed}"
    );
    let requests = mock.wait_for_requests(3).await;
    let tool_message = &requests[1].body["messages"][2];
    assert_eq!(tool_message["content"], "sunny in Oslo", "{tool_message}");
    client.close().await;
    let finished = server.shutdown().await;

    let calls = |spans: &[Span], name: &str| -> usize {
        spans
            .iter()
            .filter(|s| s.name == name && s.kind == SPAN_KIND_SERVER)
            .count()
    };
    let served = rmcp_server_spans(store.path(), |spans| {
        calls(spans, "tools/call get_weather") >= 1 && calls(spans, "tools/call fail") >= 1
    })
    .await;
    let dump = || {
        served
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    };
    for span in &served {
        assert_eq!(span.kind, SPAN_KIND_SERVER, "{span}");
    }
    // rmcp's handshake is traced too: the initialized notification.
    assert!(
        served.iter().any(|s| s.name == "notifications/initialized"),
        "the rmcp server's spans:\n{}",
        dump()
    );
    for (tool, call_id) in [("get_weather", "call_weather"), ("fail", "call_fail")] {
        let name = format!("tools/call {tool}");
        let server_spans: Vec<&Span> = served.iter().filter(|s| s.name == name).collect();
        let [server_span] = server_spans.as_slice() else {
            panic!(
                "exactly one {name} SERVER span expected; the rmcp server's spans:\n{}",
                dump()
            );
        };
        let client_spans: Vec<&Span> = finished
            .spans
            .iter()
            .filter(|s| s.name == name && s.kind == SPAN_KIND_CLIENT)
            .collect();
        let [client_span] = client_spans.as_slice() else {
            panic!("one {name} CLIENT span expected:\n{}", finished.dump());
        };
        let execute = finished.parent_of(client_span);
        assert_eq!(execute.name, format!("execute_tool {tool}"), "{execute}");
        assert_attr(execute, "gen_ai.tool.call.id", call_id);
        assert_eq!(client_span.trace_id, parent.trace_id, "{client_span}");
        assert_eq!(
            server_span.trace_id, parent.trace_id,
            "the server span is in Skein's trace: {server_span}"
        );
        assert_eq!(
            server_span.parent_span_id.as_deref(),
            Some(client_span.span_id.as_str()),
            "the server span's parent is Skein's {name} CLIENT span\n\
             server: {server_span}\nclient: {client_span}"
        );
        assert_attr(server_span, "mcp.method.name", "tools/call");
        assert_attr(server_span, "gen_ai.tool.name", tool);
        assert_attr(server_span, "network.transport", "pipe");
        let request_id = client_span
            .attr_str("jsonrpc.request.id")
            .unwrap_or_else(|| panic!("no jsonrpc.request.id: {client_span}"));
        assert_attr(server_span, "jsonrpc.request.id", &request_id);
    }
    let fail = served
        .iter()
        .find(|s| s.name == "tools/call fail")
        .expect("checked above");
    assert_attr(fail, "error.type", "tool_error");
    assert_eq!(fail.status_code, STATUS_CODE_ERROR, "{fail}");
    let weather = served
        .iter()
        .find(|s| s.name == "tools/call get_weather")
        .expect("checked above");
    assert_eq!(weather.attr("error.type"), None, "{weather}");
}
