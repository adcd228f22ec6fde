//! End-to-end request tracing tests against the real `skein` binary.
//!
//! Every scenario is written once, generic over the transport, and run over
//! stdio and WebSocket by `both_transports!`. Spans are read from the local
//! trace store after a graceful shutdown (which flushes them).

#[macro_use]
mod support;

use std::collections::HashSet;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use support::{
    METHOD_NOT_FOUND, NOT_INITIALIZED, PARSE_ERROR, SPAN_KIND_SERVER, STATUS_CODE_ERROR, Server,
    ServerOptions, TIMEOUT, TraceContext, Transport, error_code, next_request_id,
};

both_transports!(
    envelope_traceparent_makes_server_span_child_of_client_span,
    params_meta_traceparent_makes_server_span_child_of_client_span,
    env_traceparent_is_used_when_request_has_no_carrier,
    envelope_carrier_takes_precedence_over_meta_and_env,
    invalid_carrier_yields_root_span_and_request_succeeds,
    request_span_has_standard_rpc_attributes,
    client_name_and_version_appear_on_later_request_spans,
    thread_read_span_carries_thread_id,
    batch_of_three_requests_yields_three_responses_and_three_spans,
    malformed_message_gets_parse_error_and_connection_keeps_working,
    unknown_method_gets_method_not_found_and_span_named_jsonrpc_other,
    request_before_initialize_is_rejected,
    numeric_request_ids_are_echoed_byte_for_byte,
);

/// Starts a server, connects one client and initializes it.
async fn start_initialized(
    transport: Transport,
    options: ServerOptions,
) -> (Server, support::Client) {
    let mut server = Server::start_with(transport, options).await;
    let mut client = server.connect().await;
    client
        .initialize(&format!("e2e-{transport}"), "0.0.1")
        .await;
    (server, client)
}

async fn envelope_traceparent_makes_server_span_child_of_client_span(transport: Transport) {
    let (server, mut client) = start_initialized(transport, ServerOptions::default()).await;
    let parent = TraceContext::random();
    let response = client
        .request(
            "model/list",
            json!({}),
            Some(json!({"traceparent": parent.traceparent(), "tracestate": "e2e=1"})),
        )
        .await;
    response.result();
    client.close().await;
    let finished = server.shutdown().await;

    let span = finished.request_span(&response.id_str());
    assert_eq!(span.kind, SPAN_KIND_SERVER, "request span kind: {span}");
    assert_eq!(span.name, "model/list", "request span name: {span}");
    assert_eq!(span.trace_id, parent.trace_id, "trace id: {span}");
    assert_eq!(
        span.parent_span_id.as_deref(),
        Some(parent.span_id.as_str()),
        "parentSpanId must be the client's span id: {span}"
    );
    assert_ne!(span.span_id, parent.span_id, "server span needs its own id");
}

async fn params_meta_traceparent_makes_server_span_child_of_client_span(transport: Transport) {
    let (server, mut client) = start_initialized(transport, ServerOptions::default()).await;
    let parent = TraceContext::random();
    let response = client
        .request(
            "model/list",
            json!({"_meta": {"traceparent": parent.traceparent(), "tracestate": "e2e=1"}}),
            None,
        )
        .await;
    response.result();
    client.close().await;
    let finished = server.shutdown().await;

    let span = finished.request_span(&response.id_str());
    assert_eq!(span.kind, SPAN_KIND_SERVER, "request span kind: {span}");
    assert_eq!(span.trace_id, parent.trace_id, "trace id: {span}");
    assert_eq!(
        span.parent_span_id.as_deref(),
        Some(parent.span_id.as_str()),
        "parentSpanId must be the client's span id: {span}"
    );
}

async fn env_traceparent_is_used_when_request_has_no_carrier(transport: Transport) {
    let parent = TraceContext::random();
    let options = ServerOptions::default()
        .env("TRACEPARENT", &parent.traceparent())
        .env("TRACESTATE", "e2e=env");
    let (server, mut client) = start_initialized(transport, options).await;
    let response = client.request("model/list", json!({}), None).await;
    response.result();
    client.close().await;
    let finished = server.shutdown().await;

    let span = finished.request_span(&response.id_str());
    assert_eq!(span.kind, SPAN_KIND_SERVER, "request span kind: {span}");
    assert_eq!(span.trace_id, parent.trace_id, "trace id: {span}");
    assert_eq!(
        span.parent_span_id.as_deref(),
        Some(parent.span_id.as_str()),
        "parentSpanId must be the span id from env TRACEPARENT: {span}"
    );
}

async fn envelope_carrier_takes_precedence_over_meta_and_env(transport: Transport) {
    let env_parent = TraceContext::random();
    let meta_parent = TraceContext::random();
    let envelope_parent = TraceContext::random();
    let options = ServerOptions::default().env("TRACEPARENT", &env_parent.traceparent());
    let (server, mut client) = start_initialized(transport, options).await;

    let meta = json!({"_meta": {"traceparent": meta_parent.traceparent()}});
    let envelope = json!({"traceparent": envelope_parent.traceparent()});
    let all_three = client
        .request("model/list", meta.clone(), Some(envelope))
        .await;
    all_three.result();
    let meta_and_env = client.request("model/list", meta, None).await;
    meta_and_env.result();
    // An invalid envelope carrier is skipped in favour of the next source.
    let invalid_envelope = client
        .request(
            "model/list",
            json!({"_meta": {"traceparent": meta_parent.traceparent()}}),
            Some(json!({"traceparent": "not-a-traceparent"})),
        )
        .await;
    invalid_envelope.result();
    client.close().await;
    let finished = server.shutdown().await;

    for (response, expected, what) in [
        (&all_three, &envelope_parent, "envelope over _meta and env"),
        (&meta_and_env, &meta_parent, "_meta over env"),
        (
            &invalid_envelope,
            &meta_parent,
            "_meta over invalid envelope",
        ),
    ] {
        let span = finished.request_span(&response.id_str());
        assert_eq!(
            (span.trace_id.as_str(), span.parent_span_id.as_deref()),
            (expected.trace_id.as_str(), Some(expected.span_id.as_str())),
            "{what}: {span}"
        );
    }
}

async fn invalid_carrier_yields_root_span_and_request_succeeds(transport: Transport) {
    let (server, mut client) = start_initialized(transport, ServerOptions::default()).await;
    let valid = TraceContext::random();
    let uppercase = format!(
        "00-{}-{}-01",
        valid.trace_id.to_uppercase(),
        valid.span_id.to_uppercase()
    );
    let zero_trace_id = format!("00-{}-{}-01", "0".repeat(32), valid.span_id);
    let cases: Vec<(&str, Value, Option<Value>)> = vec![
        (
            "uppercase hex",
            json!({}),
            Some(json!({"traceparent": uppercase})),
        ),
        ("trace is a number", json!({}), Some(json!(42))),
        (
            "traceparent is a number",
            json!({}),
            Some(json!({"traceparent": 7})),
        ),
        (
            "all-zero trace id",
            json!({}),
            Some(json!({"traceparent": zero_trace_id})),
        ),
        (
            "garbage _meta traceparent",
            json!({"_meta": {"traceparent": "garbage"}}),
            None,
        ),
    ];

    let mut requests = Vec::new();
    for (what, params, trace) in cases {
        let response = client.request("model/list", params, trace).await;
        assert!(
            response.message.get("result").is_some(),
            "{what}: the request must still succeed, got {}",
            response.message
        );
        requests.push((what, response));
    }
    client.close().await;
    let finished = server.shutdown().await;

    for (what, response) in &requests {
        let span = finished.request_span(&response.id_str());
        assert!(
            span.is_root(),
            "{what}: an invalid carrier must give a root span: {span}"
        );
        assert_ne!(span.trace_id, valid.trace_id, "{what}: {span}");
    }
}

async fn request_span_has_standard_rpc_attributes(transport: Transport) {
    let (server, mut client) = start_initialized(transport, ServerOptions::default()).await;
    let response = client.request("model/list", json!({}), None).await;
    response.result();
    client.close().await;
    let finished = server.shutdown().await;

    let span = finished.request_span(&response.id_str());
    let id = response.id_str();
    for (key, expected) in [
        ("rpc.system", "jsonrpc"),
        ("rpc.system.name", "jsonrpc"),
        ("rpc.service", "skein-app-server"),
        ("rpc.method", "model/list"),
        ("rpc.transport", transport.attr()),
        ("rpc.request_id", id.as_str()),
        ("jsonrpc.request.id", id.as_str()),
        ("jsonrpc.protocol.version", "2.0"),
        ("app_server.api_version", "v2"),
    ] {
        assert_eq!(
            span.attr_str(key).as_deref(),
            Some(expected),
            "attribute {key}: {span}"
        );
    }
    assert!(
        span.attr_str("app_server.connection_id").is_some(),
        "app_server.connection_id missing: {span}"
    );
    assert_eq!(span.kind, SPAN_KIND_SERVER, "{span}");
    assert_ne!(span.status_code, STATUS_CODE_ERROR, "{span}");
}

async fn client_name_and_version_appear_on_later_request_spans(transport: Transport) {
    let mut server = Server::start(transport).await;
    let mut client = server.connect().await;
    let name = format!("e2e-client-info-{transport}");
    let version = "9.8.7";
    let initialize = client.initialize(&name, version).await;
    let thread_start = client.request("thread/start", json!({}), None).await;
    thread_start.result();
    let model_list = client.request("model/list", json!({}), None).await;
    model_list.result();
    client.close().await;
    let finished = server.shutdown().await;

    for response in [&initialize, &thread_start, &model_list] {
        let span = finished.request_span(&response.id_str());
        assert_eq!(
            span.attr_str("app_server.client_name").as_deref(),
            Some(name.as_str()),
            "client name: {span}"
        );
        assert_eq!(
            span.attr_str("app_server.client_version").as_deref(),
            Some(version),
            "client version: {span}"
        );
    }
}

async fn thread_read_span_carries_thread_id(transport: Transport) {
    let (server, mut client) = start_initialized(transport, ServerOptions::default()).await;
    let started = client.request("thread/start", json!({}), None).await;
    let thread_id = started.result()["thread"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("thread/start result lacks thread.id: {}", started.message))
        .to_owned();
    let read = client
        .request("thread/read", json!({"threadId": thread_id}), None)
        .await;
    assert_eq!(
        read.result()["thread"]["id"].as_str(),
        Some(thread_id.as_str()),
        "thread/read returns the thread: {}",
        read.message
    );
    client.close().await;
    let finished = server.shutdown().await;

    let span = finished.request_span(&read.id_str());
    assert_eq!(
        span.attr_str("thread.id").as_deref(),
        Some(thread_id.as_str()),
        "thread/read span: {span}"
    );
    // Its params and its result both name the thread: recorded once.
    assert_eq!(span.attr_count("thread.id"), 1, "thread/read span: {span}");
    // thread/start names no thread in its params: the id comes from its
    // result.
    let span = finished.request_span(&started.id_str());
    assert_eq!(
        span.attr_str("thread.id").as_deref(),
        Some(thread_id.as_str()),
        "thread/start span: {span}"
    );
}

async fn batch_of_three_requests_yields_three_responses_and_three_spans(transport: Transport) {
    let (server, mut client) = start_initialized(transport, ServerOptions::default()).await;
    let requests: Vec<(i64, &str)> = vec![
        (next_request_id(), "model/list"),
        (next_request_id(), "thread/list"),
        (next_request_id(), "model/list"),
    ];
    let batch: Vec<Value> = requests
        .iter()
        .map(|(id, method)| json!({"jsonrpc": "2.0", "id": id, "method": method, "params": {}}))
        .collect();
    client.send(Value::Array(batch)).await;
    let responses = client.recv_batch().await;
    client.close().await;
    let finished = server.shutdown().await;

    assert_eq!(responses.len(), 3, "batch responses: {responses:?}");
    let expected_ids: HashSet<i64> = requests.iter().map(|(id, _)| *id).collect();
    let response_ids: HashSet<i64> = responses
        .iter()
        .map(|r| {
            assert!(r.get("result").is_some(), "batch item failed: {r}");
            assert_eq!(r.get("jsonrpc"), Some(&json!("2.0")), "batch item: {r}");
            r["id"]
                .as_i64()
                .unwrap_or_else(|| panic!("batch response without integer id: {r}"))
        })
        .collect();
    assert_eq!(response_ids, expected_ids, "batch response ids");

    let mut span_ids = HashSet::new();
    for (id, method) in &requests {
        let span = finished.request_span(&id.to_string());
        assert_eq!(
            span.attr_str("rpc.method").as_deref(),
            Some(*method),
            "{span}"
        );
        span_ids.insert(span.span_id.clone());
    }
    assert_eq!(
        span_ids.len(),
        3,
        "three distinct spans:\n{}",
        finished.dump()
    );
}

async fn malformed_message_gets_parse_error_and_connection_keeps_working(transport: Transport) {
    let (server, mut client) = start_initialized(transport, ServerOptions::default()).await;
    client.send_raw("{\"id\": 1, \"method\": \"model/li").await;
    let error = client.recv_non_notification().await;
    assert_eq!(
        error.get("id"),
        Some(&Value::Null),
        "id must be null: {error}"
    );
    assert_eq!(error_code(&error), PARSE_ERROR, "{error}");

    let response = client.request("model/list", json!({}), None).await;
    assert!(
        response.result().get("data").is_some_and(Value::is_array),
        "model/list after the malformed message: {}",
        response.message
    );
    client.close().await;
    server.shutdown().await;
}

async fn unknown_method_gets_method_not_found_and_span_named_jsonrpc_other(transport: Transport) {
    let (server, mut client) = start_initialized(transport, ServerOptions::default()).await;
    let method = "e2e/no_such_method";
    let response = client.request(method, json!({}), None).await;
    assert_eq!(
        response.error_code(),
        METHOD_NOT_FOUND,
        "{}",
        response.message
    );
    client.close().await;
    let finished = server.shutdown().await;

    let span = finished.request_span(&response.id_str());
    assert_eq!(span.name, "jsonrpc", "{span}");
    assert_eq!(
        span.attr_str("rpc.method").as_deref(),
        Some("_OTHER"),
        "{span}"
    );
    assert_eq!(
        span.attr_str("rpc.method_original").as_deref(),
        Some(method),
        "{span}"
    );
    assert_eq!(span.status_code, STATUS_CODE_ERROR, "{span}");
    assert_eq!(
        span.attr_str("error.type").as_deref(),
        Some("-32601"),
        "{span}"
    );
}

/// Numeric ids a parsed JSON number would not write back the same way.
const NUMERIC_IDS: [&str; 6] = [
    "18446744073709551616",
    "1E+2",
    "-0",
    "1.50",
    "123456789012345678901234567890123456789012345678901234567890",
    "1e400",
];

/// The text of the `id` member of the answer `json`, which starts with it.
fn answered_id_text(json: &str) -> &str {
    let rest = json
        .strip_prefix(r#"{"jsonrpc":"2.0","id":"#)
        .unwrap_or_else(|| panic!("an answer starts with its id: {json}"));
    let end = rest
        .find(r#","result""#)
        .or_else(|| rest.find(r#","error""#))
        .unwrap_or_else(|| panic!("an answer has a result or an error: {json}"));
    &rest[..end]
}

async fn numeric_request_ids_are_echoed_byte_for_byte(transport: Transport) {
    let (server, mut client) = start_initialized(transport, ServerOptions::default()).await;
    // Answered one by one: results and errors.
    for text in NUMERIC_IDS {
        for method in ["model/list", "e2e/no_such_method"] {
            client
                .send_raw(&format!(
                    r#"{{"jsonrpc":"2.0","id":{text},"method":"{method}"}}"#
                ))
                .await;
            let answer = client.recv_raw().await;
            assert_eq!(answered_id_text(&answer), text, "{method}: {answer}");
        }
    }
    // In a batch, each answer carries its own id.
    let batch = NUMERIC_IDS
        .iter()
        .map(|text| format!(r#"{{"jsonrpc":"2.0","id":{text},"method":"model/list"}}"#))
        .collect::<Vec<_>>()
        .join(",");
    client.send_raw(&format!("[{batch}]")).await;
    let answers = client.recv_raw().await;
    for text in NUMERIC_IDS {
        assert!(
            answers.contains(&format!(r#"{{"jsonrpc":"2.0","id":{text},"result""#)),
            "the batch answer carries id {text}: {answers}"
        );
    }
    client.close().await;
    let finished = server.shutdown().await;
    // The request spans still carry the id.
    for text in NUMERIC_IDS {
        for span in finished.spans_for_request(text) {
            assert_eq!(
                span.attr_str("jsonrpc.request.id").as_deref(),
                Some(text),
                "{span}"
            );
        }
        assert_eq!(
            finished.spans_for_request(text).len(),
            3,
            "three request spans with id {text}:\n{}",
            finished.dump()
        );
    }
}

async fn request_before_initialize_is_rejected(transport: Transport) {
    let mut server = Server::start(transport).await;
    let mut client = server.connect().await;
    let early = client.request("model/list", json!({}), None).await;
    assert_eq!(early.error_code(), NOT_INITIALIZED, "{}", early.message);
    client.initialize("e2e-late", "1").await;
    let later = client.request("model/list", json!({}), None).await;
    later.result();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_connections_get_distinct_connection_ids() {
    let mut server = Server::start(Transport::WebSocket).await;
    let mut first = server.connect().await;
    let mut second = server.connect().await;
    let first_init = first.initialize("e2e-first", "1").await;
    let second_init = second.initialize("e2e-second", "1").await;
    let first_list = first.request("model/list", json!({}), None).await;
    first_list.result();
    let second_list = second.request("model/list", json!({}), None).await;
    second_list.result();
    first.close().await;
    second.close().await;
    let finished = server.shutdown().await;

    let connection_id = |response: &support::Response| {
        let span = finished.request_span(&response.id_str());
        span.attr_str("app_server.connection_id")
            .unwrap_or_else(|| panic!("app_server.connection_id missing: {span}"))
    };
    let first_id = connection_id(&first_init);
    let second_id = connection_id(&second_init);
    assert_eq!(
        connection_id(&first_list),
        first_id,
        "stable per connection"
    );
    assert_eq!(
        connection_id(&second_list),
        second_id,
        "stable per connection"
    );
    assert_ne!(first_id, second_id, "connections must have distinct ids");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_healthz_answers_200() {
    let server = Server::start(Transport::WebSocket).await;
    let addr = server.ws_addr();
    let mut stream = tokio::time::timeout(TIMEOUT, TcpStream::connect(&addr))
        .await
        .expect("connect to the server in time")
        .expect("TCP connect to the server");
    stream
        .write_all(
            format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .expect("write the HTTP request");
    let mut received = Vec::new();
    let mut chunk = [0u8; 1024];
    while !received.windows(2).any(|w| w == b"\r\n") {
        let n = tokio::time::timeout(TIMEOUT, stream.read(&mut chunk))
            .await
            .expect("HTTP response in time")
            .expect("read the HTTP response");
        if n == 0 {
            break;
        }
        received.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8_lossy(&received);
    let status_line = text.lines().next().unwrap_or_default();
    assert!(
        status_line.starts_with("HTTP/1.1 200") || status_line.starts_with("HTTP/1.0 200"),
        "GET /healthz status line: {status_line:?} (received {text:?})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_binary_frame_gets_error_and_connection_keeps_working() {
    let mut server = Server::start(Transport::WebSocket).await;
    let mut client = server.connect().await;
    client.initialize("e2e-binary", "1").await;
    let request = json!({"jsonrpc": "2.0", "id": next_request_id(), "method": "model/list"});
    client.send_binary(request.to_string().into_bytes()).await;
    let reply = client.recv_non_notification().await;
    assert!(
        reply.get("error").is_some() && reply.get("result").is_none(),
        "a binary frame must get a JSON-RPC error response: {reply}"
    );
    error_code(&reply);

    let response = client.request("model/list", json!({}), None).await;
    response.result();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_sigterm_with_open_connection_exits_cleanly_and_flushes_spans() {
    let mut server = Server::start(Transport::WebSocket).await;
    let mut client = server.connect().await;
    client.initialize("e2e-sigterm", "1").await;
    let response = client.request("model/list", json!({}), None).await;
    response.result();
    // The client stays connected while the server gets SIGTERM.
    let finished = server.shutdown().await;
    let span = finished.request_span(&response.id_str());
    assert_eq!(span.name, "model/list", "{span}");
    drop(client);
}
