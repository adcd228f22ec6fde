//! End-to-end tests of turns on an OpenAI-compatible model API.
//!
//! The model API is the one remote, paid part, so it is replaced by a local
//! Chat Completions server (`support::mock_llm`) speaking HTTP/1.1 and SSE
//! on 127.0.0.1, which records every request's headers and body. Skein is
//! the real binary, configured with `-c` to use it as provider `mock`.

#[macro_use]
mod support;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::mock_llm::{MockLlm, Reply, text_chunks};
use support::{
    Client, SPAN_KIND_CLIENT, STATUS_CODE_ERROR, Server, ServerOptions, Span, TraceContext,
    Transport, notification_turn_id, serve_refused,
};

/// The API key the mock provider is configured with.
const API_KEY: &str = "sk-mock-secret-0123456789";
/// The exported name of the model call spans.
const CHAT: &str = "chat mock-model";

/// Starts Skein with `mock` as the default provider, then `options` (whose
/// `-c` arguments come last, so they win).
async fn start(mock: &MockLlm, options: ServerOptions) -> (Server, Client) {
    let options = mock
        .server_options()
        .env("MOCK_API_KEY", API_KEY)
        .merge(options);
    let mut server = Server::start_with(Transport::Stdio, options).await;
    let mut client = server.connect().await;
    client.initialize("e2e-model-provider", "0.0.1").await;
    (server, client)
}

fn chat_spans<'a>(finished: &'a support::Finished, turn: &Span) -> Vec<&'a Span> {
    finished
        .children_of(&turn.span_id)
        .into_iter()
        .filter(|s| s.name == CHAT)
        .collect()
}

fn assert_attr(span: &Span, key: &str, expected: &str) {
    assert_eq!(
        span.attr_str(key).as_deref(),
        Some(expected),
        "attribute {key}: {span}"
    );
}

fn deltas_of(client: &mut Client, turn_id: &str) -> String {
    client
        .take_notifications(|n| {
            n["method"] == "item/agentMessage/delta" && notification_turn_id(n) == Some(turn_id)
        })
        .iter()
        .map(|n| n["params"]["delta"].as_str().unwrap_or_default().to_owned())
        .collect()
}

async fn read_turns(client: &mut Client, thread_id: &str) -> Vec<Value> {
    let read = client.read_thread_with_turns(thread_id).await;
    read.result()["thread"]["turns"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_turn_streams_from_the_api_under_a_chat_span_whose_context_goes_out_as_traceparent() {
    let mock = MockLlm::start(vec![Reply::Stream(text_chunks(
        &["Hello", " from", " the model"],
        7,
        3,
    ))])
    .await;
    let (server, mut client) = start(&mock, ServerOptions::default()).await;
    let models = client.request("model/list", json!({}), None).await;
    let listed: Vec<&str> = models.result()["data"]
        .as_array()
        .expect("data")
        .iter()
        .filter_map(|m| m["model"].as_str())
        .collect();
    assert_eq!(listed, vec!["mock-model", "echo"], "{}", models.result());

    let thread = client.request("thread/start", json!({}), None).await;
    assert_eq!(
        thread.result()["modelProvider"],
        "mock",
        "{}",
        thread.result()
    );
    let thread_id = thread.thread_id();
    let parent = TraceContext::random();
    let started = client
        .request(
            "turn/start",
            support::turn_start_params(&thread_id, "Say hello"),
            Some(json!({"traceparent": parent.traceparent(), "tracestate": "vendor=abc"})),
        )
        .await;
    support::check_turn_started_result(&started);
    let turn_id = started.turn_id();
    let completed = client.wait_for_turn_completed(&turn_id).await;
    assert_eq!(
        completed["params"]["turn"]["status"], "completed",
        "{completed}"
    );
    assert_eq!(
        completed["params"]["usage"],
        json!({"inputTokens": 7, "outputTokens": 3}),
        "{completed}"
    );
    assert_eq!(deltas_of(&mut client, &turn_id), "Hello from the model");

    let requests = mock.requests();
    let [request] = requests.as_slice() else {
        panic!("expected one model request, got {}", requests.len());
    };
    assert_eq!(request.method, "POST");
    assert_eq!(request.path, "/v1/chat/completions");
    assert_eq!(
        request.headers.get("authorization").map(String::as_str),
        Some(format!("Bearer {API_KEY}").as_str())
    );
    assert_eq!(request.body["model"], "mock-model");
    assert_eq!(request.body["stream"], true);
    assert_eq!(
        request.body["messages"],
        json!([{"role": "user", "content": "Say hello"}])
    );
    let traceparent = request
        .headers
        .get("traceparent")
        .expect("the model request carries a traceparent");
    let sent = TraceContext::parse(traceparent).expect("a valid traceparent");
    assert_eq!(
        request.headers.get("tracestate").map(String::as_str),
        Some("vendor=abc"),
        "the client's tracestate goes along"
    );

    client.close().await;
    let finished = server.shutdown().await;
    let request_span = finished.request_span(&started.id_str());
    assert_eq!(request_span.trace_id, parent.trace_id);
    assert_eq!(
        request_span.parent_span_id.as_deref(),
        Some(parent.span_id.as_str())
    );
    let turn = finished.turn_span(&turn_id);
    let dispatch = finished.parent_of(turn);
    assert_eq!(dispatch.name, "op.dispatch.user_turn");
    assert_eq!(
        dispatch.parent_span_id.as_deref(),
        Some(request_span.span_id.as_str())
    );
    assert_attr(turn, "gen_ai.request.model", "mock-model");
    let chats = chat_spans(&finished, turn);
    let [chat] = chats.as_slice() else {
        panic!("expected one {CHAT:?} span:\n{}", finished.dump());
    };
    assert_eq!(chat.kind, SPAN_KIND_CLIENT, "{chat}");
    assert_eq!(chat.trace_id, parent.trace_id, "{chat}");
    for (key, expected) in [
        ("gen_ai.operation.name", "chat"),
        // The well-known name of the API spoken; the config table's id
        // in Skein's own attribute.
        ("gen_ai.provider.name", "openai"),
        ("skein.provider.id", "mock"),
        ("gen_ai.request.model", "mock-model"),
        ("gen_ai.response.model", "mock-model-2025"),
        ("gen_ai.response.id", "chatcmpl-mock-1"),
        ("gen_ai.usage.input_tokens", "7"),
        ("gen_ai.usage.output_tokens", "3"),
        ("server.address", "127.0.0.1"),
    ] {
        assert_attr(chat, key, expected);
    }
    assert_eq!(
        chat.attr_strings("gen_ai.response.finish_reasons"),
        Some(vec!["stop".to_owned()]),
        "a string array: {chat}"
    );
    let port = mock
        .base_url()
        .rsplit(':')
        .next()
        .and_then(|p| p.split('/').next())
        .and_then(|p| p.parse::<i64>().ok())
        .expect("mock port");
    assert_eq!(chat.attr_int("server.port"), Some(port), "{chat}");
    // The server saw the client's trace, parented by the chat span.
    assert_eq!(sent.trace_id, parent.trace_id);
    assert_eq!(sent.span_id, chat.span_id);
    // The key is never in a span or a log line.
    let everything = format!("{}\n{}", finished.dump(), finished.stderr().join("\n"));
    assert!(!everything.contains(API_KEY), "the API key leaked");
}

/// `(model, provider, isDefault)` of each model `model/list` offers.
async fn listed_models(client: &mut Client) -> Vec<(String, String, Value)> {
    let models = client.request("model/list", json!({}), None).await;
    models.result()["data"]
        .as_array()
        .unwrap_or_else(|| panic!("no data: {}", models.result()))
        .iter()
        .map(|m| {
            (
                m["model"].as_str().unwrap_or_default().to_owned(),
                m["provider"].as_str().unwrap_or_default().to_owned(),
                m["isDefault"].clone(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_list_marks_the_configured_default_model_and_only_it() {
    let mock = MockLlm::start(vec![]).await;
    let (server, mut client) = start(&mock, ServerOptions::default()).await;
    assert_eq!(
        listed_models(&mut client).await,
        vec![
            ("mock-model".into(), "mock".into(), json!(true)),
            ("echo".into(), "skein".into(), json!(false)),
        ]
    );
    client.close().await;
    server.shutdown().await;

    // Another default model of the same provider is the one marked.
    let options = ServerOptions::default()
        .arg("-c")
        .arg("model=\"mock-model-large\"");
    let (server, mut client) = start(&mock, options).await;
    assert_eq!(
        listed_models(&mut client).await,
        vec![
            ("mock-model-large".into(), "mock".into(), json!(true)),
            ("echo".into(), "skein".into(), json!(false)),
        ]
    );
    client.close().await;
    server.shutdown().await;

    // With no provider configured, echo is the default.
    let mut server = Server::start_with(Transport::Stdio, ServerOptions::default()).await;
    let mut client = server.connect().await;
    client.initialize("e2e-model-provider", "0.0.1").await;
    assert_eq!(
        listed_models(&mut client).await,
        vec![("echo".into(), "skein".into(), json!(true))]
    );
    client.close().await;
    server.shutdown().await;
    assert!(mock.requests().is_empty(), "listing never calls the API");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_is_retried_after_retry_after_and_the_turn_completes() {
    let mock = MockLlm::start(vec![
        Reply::Status(
            429,
            vec![("retry-after".into(), "1".into())],
            json!({"error": {"message": "slow down"}}),
        ),
        Reply::Stream(text_chunks(&["ok"], 1, 1)),
    ])
    .await;
    let (server, mut client) = start(&mock, ServerOptions::default()).await;
    let thread_id = client.start_thread().await;
    let turn_id = client.start_turn(&thread_id, "hi", None).await.turn_id();
    let completed = client.wait_for_turn_completed(&turn_id).await;
    assert_eq!(
        completed["params"]["turn"]["status"], "completed",
        "{completed}"
    );
    let requests = mock.wait_for_requests(2).await;
    assert_eq!(requests.len(), 2);
    let waited = requests[1].at.duration_since(requests[0].at);
    assert!(
        waited >= Duration::from_millis(900),
        "Retry-After: 1 was not honoured (retried after {waited:?})"
    );
    // Both attempts continue the same chat span.
    assert_eq!(
        requests[0].headers.get("traceparent"),
        requests[1].headers.get("traceparent")
    );
    client.close().await;
    let finished = server.shutdown().await;
    let turn = finished.turn_span(&turn_id);
    let chats = chat_spans(&finished, turn);
    let [chat] = chats.as_slice() else {
        panic!("expected one chat span:\n{}", finished.dump());
    };
    assert_eq!(
        chat.attr_int("http.request.resend_count"),
        Some(1),
        "{chat}"
    );
    assert_ne!(chat.status_code, STATUS_CODE_ERROR, "{chat}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_500s_fail_the_turn_with_the_message_and_an_error_chat_span() {
    let error = || {
        Reply::Status(
            500,
            vec![("retry-after".into(), "0".into())],
            json!({"error": {"message": "the GPU caught fire"}}),
        )
    };
    let mock = MockLlm::start(vec![error(), error(), error(), error()]).await;
    let (server, mut client) = start(&mock, ServerOptions::default()).await;
    let thread_id = client.start_thread().await;
    let turn_id = client.start_turn(&thread_id, "hi", None).await.turn_id();
    let completed = client.wait_for_turn_completed(&turn_id).await;
    assert_eq!(
        completed["params"]["turn"]["status"], "failed",
        "{completed}"
    );
    let message = completed["params"]["turn"]["error"]["message"]
        .as_str()
        .expect("an error message");
    assert!(
        message.contains("500") && message.contains("the GPU caught fire"),
        "{message}"
    );
    assert_eq!(mock.requests().len(), 3, "at most 3 attempts");
    client.close().await;
    let finished = server.shutdown().await;
    let turn = finished.turn_span(&turn_id);
    let chats = chat_spans(&finished, turn);
    let [chat] = chats.as_slice() else {
        panic!("expected one chat span:\n{}", finished.dump());
    };
    assert_eq!(chat.status_code, STATUS_CODE_ERROR, "{chat}");
    assert_attr(chat, "error.type", "500");
    assert_eq!(
        chat.attr_int("http.request.resend_count"),
        Some(2),
        "{chat}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_401_fails_the_turn_at_once() {
    let mock = MockLlm::start(vec![
        Reply::Status(
            401,
            vec![],
            json!({"error": {"message": format!("Incorrect API key provided: {API_KEY}")}}),
        ),
        Reply::Stream(text_chunks(&["never"], 1, 1)),
    ])
    .await;
    let (server, mut client) = start(&mock, ServerOptions::default()).await;
    let thread_id = client.start_thread().await;
    let turn_id = client.start_turn(&thread_id, "hi", None).await.turn_id();
    let completed = client.wait_for_turn_completed(&turn_id).await;
    assert_eq!(
        completed["params"]["turn"]["status"], "failed",
        "{completed}"
    );
    let message = completed["params"]["turn"]["error"]["message"]
        .as_str()
        .expect("an error message");
    assert!(message.contains("401"), "{message}");
    assert!(!message.contains(API_KEY), "the key leaked: {message}");
    assert_eq!(mock.requests().len(), 1, "a 401 is not retried");
    let turns = read_turns(&mut client, &thread_id).await;
    assert!(
        !turns
            .to_vec()
            .iter()
            .any(|t| t.to_string().contains(API_KEY))
    );
    client.close().await;
    let finished = server.shutdown().await;
    assert_attr(
        chat_spans(&finished, finished.turn_span(&turn_id))[0],
        "error.type",
        "401",
    );
    assert!(!finished.dump().contains(API_KEY));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_stream_fails_the_turn_and_keeps_the_partial_answer() {
    let mut chunks = text_chunks(&["The answer", " is"], 1, 1);
    chunks.truncate(3); // role, "The answer", " is": no finish, no [DONE]
    let mock = MockLlm::start(vec![Reply::Cut(chunks)]).await;
    let (server, mut client) = start(&mock, ServerOptions::default()).await;
    let thread_id = client.start_thread().await;
    let turn_id = client.start_turn(&thread_id, "hi", None).await.turn_id();
    let completed = client.wait_for_turn_completed(&turn_id).await;
    assert_eq!(
        completed["params"]["turn"]["status"], "failed",
        "{completed}"
    );
    assert_eq!(deltas_of(&mut client, &turn_id), "The answer is");
    let turns = read_turns(&mut client, &thread_id).await;
    let items = turns[0]["items"].to_string();
    assert!(items.contains("The answer is"), "{items}");
    client.close().await;
    let finished = server.shutdown().await;
    let chat = chat_spans(&finished, finished.turn_span(&turn_id))[0].clone();
    assert_eq!(chat.status_code, STATUS_CODE_ERROR, "{chat}");
    assert_attr(&chat, "error.type", "stream_cut");
}

/// The model streams a first delta, then stalls for good: it sends nothing
/// more and keeps the connection open. Only the interrupt can end the call
/// (the request timeout is set far past the test's own), so a turn that
/// ends `interrupted` within the test's timeout proves cancellation does
/// not wait on the model. The measured latencies are printed; the 1 s bound
/// is not asserted, to keep the test sound on a loaded machine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupt_while_the_model_stalls_ends_the_turn_and_closes_the_model_connection() {
    let mut chunks = text_chunks(&["partial"], 1, 1);
    chunks.truncate(2); // the role chunk and "partial"; no finish, no [DONE]
    let mock = MockLlm::start(vec![Reply::Hold(chunks)]).await;
    let options = ServerOptions::default()
        .arg("-c")
        .arg("model_providers.mock.request_timeout_ms=3600000");
    let (server, mut client) = start(&mock, options).await;
    let thread_id = client.start_thread().await;
    let turn_id = client.start_turn(&thread_id, "hi", None).await.turn_id();
    client.wait_for_first_delta(&turn_id).await;
    assert_eq!(
        mock.closes(),
        0,
        "the stream is still open when interrupted"
    );

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
    assert_eq!(
        completed["params"]["turn"]["status"], "interrupted",
        "{completed}"
    );
    // The model's server saw the connection close, after the interrupt.
    let closed_at = mock.wait_for_close().await;
    assert!(
        closed_at >= sent,
        "the connection closed before the interrupt"
    );
    eprintln!(
        "interrupt of a stalled model stream: turn/completed after {to_completed:?}, \
         model connection closed after {:?}",
        closed_at - sent
    );
    assert_eq!(
        mock.requests().len(),
        1,
        "an interrupted call is not retried"
    );
    let turns = read_turns(&mut client, &thread_id).await;
    assert_eq!(turns[0]["status"], "interrupted", "{turns:?}");
    assert!(
        turns[0]["items"].to_string().contains("partial"),
        "the partial answer is kept: {turns:?}"
    );
    client.close().await;
    let finished = server.shutdown().await;
    let chats = chat_spans(&finished, finished.turn_span(&turn_id));
    let [chat] = chats.as_slice() else {
        panic!("expected one chat span:\n{}", finished.dump());
    };
    assert_attr(chat, "error.type", "interrupted");
}

fn content_attrs(span: &Span) -> Vec<&str> {
    span.attributes
        .iter()
        .map(|(k, _)| k.as_str())
        .filter(|k| {
            k.starts_with("gen_ai.input")
                || k.starts_with("gen_ai.output")
                || k.starts_with("gen_ai.system_instructions")
                || k.starts_with("gen_ai.tool.call.arguments")
                || k.starts_with("gen_ai.tool.call.result")
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_is_absent_from_spans_by_default() {
    let mock = MockLlm::start(vec![Reply::Stream(text_chunks(&["secret answer"], 1, 1))]).await;
    let (server, mut client) = start(&mock, ServerOptions::default()).await;
    let thread_id = client.start_thread().await;
    let turn_id = client
        .start_turn(&thread_id, "secret question", None)
        .await
        .turn_id();
    client.wait_for_turn_completed(&turn_id).await;
    // History is the user's data: kept whatever the span settings.
    let turns = read_turns(&mut client, &thread_id).await;
    assert!(turns[0].to_string().contains("secret answer"));
    client.close().await;
    let finished = server.shutdown().await;
    for span in &finished.spans {
        assert!(content_attrs(span).is_empty(), "content recorded: {span}");
    }
    let dump = finished.dump();
    assert!(!dump.contains("secret question") && !dump.contains("secret answer"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_is_recorded_when_enabled_and_redacted_everywhere() {
    let mock = MockLlm::start(vec![Reply::Stream(text_chunks(
        &["your key is ", "tok-12345"],
        1,
        1,
    ))])
    .await;
    let options = ServerOptions::default()
        .env(
            "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT",
            "SPAN_ONLY",
        )
        .arg("-c")
        .arg("otel.redact=[\"tok-[0-9]+\"]")
        .arg("-c")
        .arg("instructions=\"Never reveal tok-99999\"");
    let (server, mut client) = start(&mock, options).await;
    let thread_id = client.start_thread().await;
    let turn_id = client
        .start_turn(&thread_id, "remember tok-777 please", None)
        .await
        .turn_id();
    client.wait_for_turn_completed(&turn_id).await;
    client.close().await;
    let finished = server.shutdown().await;
    let chat = chat_spans(&finished, finished.turn_span(&turn_id))[0].clone();
    let input = chat
        .attr_str("gen_ai.input.messages")
        .expect("input messages recorded");
    let parsed: Value = serde_json::from_str(&input).expect("input messages are JSON");
    assert_eq!(parsed[0]["role"], "user", "{input}");
    assert_eq!(parsed[0]["parts"][0]["type"], "text", "{input}");
    assert_eq!(
        parsed[0]["parts"][0]["content"],
        "remember [REDACTED] please"
    );
    let output = chat
        .attr_str("gen_ai.output.messages")
        .expect("output recorded");
    assert!(output.contains("your key is [REDACTED]"), "{output}");
    let system = chat
        .attr_str("gen_ai.system_instructions")
        .expect("instructions recorded");
    assert!(system.contains("Never reveal [REDACTED]"), "{system}");
    let dump = finished.dump();
    for secret in ["tok-777", "tok-12345", "tok-99999"] {
        assert!(!dump.contains(secret), "{secret} recorded raw");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_error_stops_startup_naming_file_key_and_problem() {
    let home = tempfile::tempdir().expect("home");
    let file = home.path().join("config.toml");
    std::fs::write(&file, "model = \"x\"\nmodel_provider = \"nowhere\"\n").expect("write");
    let stderr = serve_refused(home.path(), &[], &[]).await;
    assert!(stderr.contains(&file.display().to_string()), "{stderr}");
    assert!(stderr.contains("`model_provider`"), "{stderr}");
    assert!(stderr.contains("unknown provider \"nowhere\""), "{stderr}");

    std::fs::write(&file, "[model_providers.x]\nbase_url = 3\n").expect("write");
    let stderr = serve_refused(home.path(), &[], &[]).await;
    assert!(stderr.contains("model_providers.x.base_url"), "{stderr}");

    std::fs::write(&file, "model = \n").expect("write");
    let stderr = serve_refused(home.path(), &[], &[]).await;
    assert!(stderr.contains("not valid TOML"), "{stderr}");

    std::fs::remove_file(&file).expect("remove");
    let stderr = serve_refused(home.path(), &["-c", "otel.redact=[\"(unclosed\"]"], &[]).await;
    assert!(
        stderr.contains("otel.redact[0]") && stderr.contains("does not compile"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_stream_events_are_skipped_without_failing_the_turn() {
    let chunks = text_chunks(&["still", " fine"], 2, 2);
    let mut lines: Vec<String> = chunks.iter().map(Value::to_string).collect();
    lines.insert(1, "{not json at all".into());
    lines.insert(2, "[1, 2, 3]".into());
    lines.insert(3, "{\"choices\": \"not a list\"}".into());
    let mock = MockLlm::start(vec![Reply::Raw(lines)]).await;
    let (server, mut client) = start(&mock, ServerOptions::default()).await;
    let thread_id = client.start_thread().await;
    let turn_id = client.start_turn(&thread_id, "hi", None).await.turn_id();
    let completed = client.wait_for_turn_completed(&turn_id).await;
    assert_eq!(
        completed["params"]["turn"]["status"], "completed",
        "{completed}"
    );
    assert_eq!(deltas_of(&mut client, &turn_id), "still fine");
    client.close().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_and_provider_can_be_chosen_per_thread_and_per_turn() {
    let mock = MockLlm::start(vec![Reply::Stream(text_chunks(&["remote"], 1, 1))]).await;
    let (server, mut client) = start(&mock, ServerOptions::default()).await;
    let echo = client
        .request("thread/start", json!({"model": "echo"}), None)
        .await;
    assert_eq!(echo.result()["modelProvider"], "skein", "{}", echo.result());
    let thread_id = echo.thread_id();
    let turn_id = client
        .start_turn(&thread_id, "offline words", None)
        .await
        .turn_id();
    client.wait_for_turn_completed(&turn_id).await;
    assert_eq!(deltas_of(&mut client, &turn_id), "offline words");
    assert!(mock.requests().is_empty(), "echo never calls the API");

    let started = client
        .request(
            "turn/start",
            json!({"threadId": thread_id, "input": [{"type": "text", "text": "now remote"}],
                   "model": "other-model", "modelProvider": "mock"}),
            None,
        )
        .await;
    let turn_id = started.turn_id();
    client.wait_for_turn_completed(&turn_id).await;
    let requests = mock.wait_for_requests(1).await;
    assert_eq!(requests[0].body["model"], "other-model");
    // The earlier echo turn is part of the conversation.
    assert_eq!(
        requests[0].body["messages"][0],
        json!({"role": "user", "content": "offline words"})
    );
    let unknown = client
        .request("thread/start", json!({"modelProvider": "nope"}), None)
        .await;
    assert_eq!(unknown.error_code(), support::INVALID_PARAMS);
    client.close().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_past_its_timeout_fails_the_turn_and_closes_the_connection() {
    let mut chunks = text_chunks(&["slow"], 1, 1);
    chunks.truncate(2);
    let mock = MockLlm::start(vec![Reply::Hold(chunks)]).await;
    let options = ServerOptions::default()
        .arg("-c")
        .arg("model_providers.mock.request_timeout_ms=300");
    let (server, mut client) = start(&mock, options).await;
    let thread_id = client.start_thread().await;
    let turn_id = client.start_turn(&thread_id, "hi", None).await.turn_id();
    let completed = client.wait_for_turn_completed(&turn_id).await;
    assert_eq!(
        completed["params"]["turn"]["status"], "failed",
        "{completed}"
    );
    let message = completed["params"]["turn"]["error"]["message"]
        .as_str()
        .unwrap_or_default();
    assert!(message.contains("timed out"), "{message}");
    mock.wait_for_close().await;
    assert_eq!(
        mock.requests().len(),
        1,
        "a timed-out stream is not retried"
    );
    client.close().await;
    let finished = server.shutdown().await;
    let chat = chat_spans(&finished, finished.turn_span(&turn_id))[0].clone();
    assert_attr(&chat, "error.type", "timeout");
}

/// The `skein.usage.cost` of `span`, which must be a double when present.
fn cost_of(span: &Span) -> Option<f64> {
    let value = span.attr("skein.usage.cost")?;
    let double = value
        .get("doubleValue")
        .unwrap_or_else(|| panic!("skein.usage.cost is not a double: {span}"));
    match double {
        Value::String(s) => s.parse().ok(),
        other => other.as_f64(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_priced_model_records_the_cost_of_each_call_and_of_the_turn_and_an_unpriced_one_none() {
    // Round one asks for a tool no server offers (usage 10 in, 5 out); round
    // two answers (1,200 in, of which 200 cached, and 300 out).
    let mut answer = text_chunks(&["priced"], 1_200, 300);
    if let Some(usage) = answer.last_mut().and_then(|c| c.get_mut("usage")) {
        usage["prompt_tokens_details"] = json!({"cached_tokens": 200});
    }
    let mock = MockLlm::start(vec![
        Reply::Stream(support::mock_llm::tool_call_chunks(
            "call-1",
            "not_offered",
            &json!({}),
        )),
        Reply::Stream(answer),
        Reply::Stream(text_chunks(&["unpriced"], 1_000, 1_000)),
    ])
    .await;
    let home = support::SkeinHome::new();
    std::fs::write(
        home.path().join("config.toml"),
        "[model_providers.mock.prices.\"mock-model\"]\n\
         input_per_mtok = 2.0\n\
         cached_input_per_mtok = 0.5\n\
         output_per_mtok = 8.0\n\
         currency = \"EUR\"\n",
    )
    .expect("write config.toml");
    let (server, mut client) = start(&mock, ServerOptions::default().home(&home)).await;
    let thread_id = client
        .request("thread/start", json!({}), None)
        .await
        .thread_id();
    let priced = client
        .start_turn(&thread_id, "what does it cost", None)
        .await;
    let priced_turn = priced.turn_id();
    client.wait_for_turn_completed(&priced_turn).await;
    let unpriced = client
        .request(
            "turn/start",
            json!({"threadId": thread_id, "input": [{"type": "text", "text": "and this"}],
                   "model": "other-model", "modelProvider": "mock"}),
            None,
        )
        .await;
    let unpriced_turn = unpriced.turn_id();
    let completed = client.wait_for_turn_completed(&unpriced_turn).await;
    assert_eq!(
        completed["params"]["usage"],
        json!({"inputTokens": 1000, "outputTokens": 1000}),
        "token usage notifications are unchanged: {completed}"
    );
    client.close().await;
    let finished = server.shutdown().await;

    let turn = finished.turn_span(&priced_turn);
    let chats = chat_spans(&finished, turn);
    let [first, second] = chats.as_slice() else {
        panic!("expected two {CHAT:?} spans:\n{}", finished.dump());
    };
    let (first, second) = if first.start_time_unix_nano <= second.start_time_unix_nano {
        (first, second)
    } else {
        (second, first)
    };
    // (10 × 2.0 + 5 × 8.0) / 1e6
    let first_cost = 60.0 / 1e6;
    // ((1,200 − 200) × 2.0 + 200 × 0.5 + 300 × 8.0) / 1e6 = 4,500 / 1e6
    let second_cost = 4_500.0 / 1e6;
    for (span, expected) in [
        (*first, first_cost),
        (*second, second_cost),
        (turn, first_cost + second_cost),
    ] {
        let cost = cost_of(span).unwrap_or_else(|| panic!("no cost on {span}"));
        assert!(
            (cost - expected).abs() < 1e-12,
            "cost {cost}, expected {expected}: {span}"
        );
        assert_attr(span, "skein.usage.cost.currency", "EUR");
    }

    let turn = finished.turn_span(&unpriced_turn);
    let chats = chat_spans(&finished, turn);
    assert_eq!(chats.len(), 0, "the other model's span is named for it");
    let others: Vec<&Span> = finished
        .children_of(&turn.span_id)
        .into_iter()
        .filter(|s| s.name == "chat other-model")
        .collect();
    assert_eq!(others.len(), 1, "{}", finished.dump());
    for span in others.into_iter().chain([turn]) {
        assert!(span.attr("skein.usage.cost").is_none(), "{span}");
        assert!(span.attr("skein.usage.cost.currency").is_none(), "{span}");
    }
}
