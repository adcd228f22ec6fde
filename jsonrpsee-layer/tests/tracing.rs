//! The middleware against a real jsonrpsee server and the real jsonrpsee
//! clients, over HTTP and WebSocket.

mod support;

use http::{HeaderMap, HeaderValue};
use jsonrpsee::core::client::{ClientT, Error as ClientError};
use jsonrpsee::core::params::{ArrayParams, BatchRequestBuilder, ObjectParams};
use jsonrpsee::http_client::{HttpClient, HttpClientBuilder};
use jsonrpsee::rpc_params;
use jsonrpsee::ws_client::{WsClient, WsClientBuilder};
use opentelemetry::trace::{SpanId, SpanKind, Status};
use serde_json::{Value, json};
use support::*;

fn headers(traceparent: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(
        "traceparent",
        HeaderValue::from_str(traceparent).expect("header value"),
    );
    headers
}

fn http_client(addr: std::net::SocketAddr, headers: HeaderMap) -> HttpClient {
    HttpClientBuilder::default()
        .set_headers(headers)
        .build(format!("http://{addr}"))
        .expect("http client")
}

async fn ws_client(addr: std::net::SocketAddr, headers: HeaderMap) -> WsClient {
    WsClientBuilder::default()
        .set_headers(headers)
        .build(format!("ws://{addr}"))
        .await
        .expect("ws client")
}

fn meta_params(traceparent: &str) -> ObjectParams {
    let mut params = ObjectParams::new();
    params
        .insert("_meta", json!({ "traceparent": traceparent }))
        .expect("params");
    params.insert("x", 1).expect("params");
    params
}

fn assert_parented_by_client(span: &opentelemetry_sdk::trace::SpanData) {
    assert_eq!(span.span_context.trace_id().to_string(), TRACE_ID);
    assert_eq!(span.parent_span_id.to_string(), PARENT_ID);
    assert!(span.parent_span_is_remote);
}

#[tokio::test]
async fn params_meta_traceparent_parents_the_server_span() {
    let capture = Capture::install();
    let (addr, server) = start(capture.layer()).await;
    let client = http_client(addr, HeaderMap::new());

    let echoed: Value = client
        .request("echo", meta_params(TRACEPARENT))
        .await
        .expect("echo");
    assert_eq!(echoed["x"], 1);

    let spans = capture.wait_for(1, |s| s.name == "echo").await;
    let span = &spans[0];
    assert_eq!(span.span_kind, SpanKind::Server);
    assert_parented_by_client(span);
    assert_eq!(attr_str(span, "rpc.method").as_deref(), Some("echo"));
    assert_eq!(attr_str(span, "rpc.service").as_deref(), Some(SERVICE));
    assert_eq!(
        attr_str(span, "rpc.system.name").as_deref(),
        Some("jsonrpc")
    );
    assert_eq!(attr_str(span, "rpc.transport").as_deref(), Some("http"));
    assert_eq!(attr_str(span, "jsonrpc.request.id").as_deref(), Some("0"));
    assert_eq!(span.status, Status::Unset);
    server.stop().expect("stop");
}

#[tokio::test]
async fn a_span_the_handler_opens_is_a_child_of_the_server_span() {
    let capture = Capture::install();
    let (addr, server) = start(capture.layer()).await;
    let client = http_client(addr, headers(TRACEPARENT));

    let done: String = client
        .request("nested", rpc_params![])
        .await
        .expect("nested");
    assert_eq!(done, "done");

    let server_span = capture.wait_for(1, |s| s.name == "nested").await.remove(0);
    let inner = capture
        .wait_for(1, |s| s.name == "handler work")
        .await
        .remove(0);
    assert_parented_by_client(&server_span);
    assert_eq!(
        inner.span_context.trace_id(),
        server_span.span_context.trace_id()
    );
    assert_eq!(inner.parent_span_id, server_span.span_context.span_id());
    assert!(!inner.parent_span_is_remote);
    server.stop().expect("stop");
}

#[tokio::test]
async fn http_traceparent_header_parents_the_server_span() {
    let capture = Capture::install();
    let (addr, server) = start(capture.layer()).await;
    let client = http_client(addr, headers(TRACEPARENT));

    let _: Value = client.request("echo", rpc_params![1]).await.expect("echo");

    let spans = capture.wait_for(1, |s| s.name == "echo").await;
    assert_parented_by_client(&spans[0]);
    server.stop().expect("stop");
}

#[tokio::test]
async fn params_meta_wins_over_the_http_header() {
    let capture = Capture::install();
    let (addr, server) = start(capture.layer()).await;
    let client = http_client(addr, headers(OTHER_TRACEPARENT));

    let _: Value = client
        .request("echo", meta_params(TRACEPARENT))
        .await
        .expect("echo");

    let spans = capture.wait_for(1, |s| s.name == "echo").await;
    assert_parented_by_client(&spans[0]);
    server.stop().expect("stop");
}

#[tokio::test]
async fn batch_of_three_gives_one_span_per_element() {
    let capture = Capture::install();
    let (addr, server) = start(capture.layer()).await;
    let client = http_client(addr, headers(TRACEPARENT));

    let mut batch = BatchRequestBuilder::new();
    batch.insert("echo", rpc_params![1]).expect("batch");
    batch.insert("fail", ArrayParams::new()).expect("batch");
    batch.insert("echo", rpc_params![3]).expect("batch");
    let responses = client
        .batch_request::<Value>(batch)
        .await
        .expect("batch call");
    assert_eq!(responses.num_successful_calls(), 2);
    assert_eq!(responses.num_failed_calls(), 1);

    let spans = capture
        .wait_for(3, |s| s.span_kind == SpanKind::Server)
        .await;
    assert_eq!(spans.len(), 3);
    let mut ids: Vec<String> = spans
        .iter()
        .filter_map(|s| attr_str(s, "jsonrpc.request.id"))
        .collect();
    ids.sort();
    assert_eq!(ids, ["0", "1", "2"]);
    let mut span_ids: Vec<SpanId> = spans.iter().map(|s| s.span_context.span_id()).collect();
    span_ids.dedup();
    assert_eq!(span_ids.len(), 3, "three distinct spans");
    for span in &spans {
        assert_parented_by_client(span);
    }
    let failed = spans.iter().find(|s| s.name == "fail").expect("fail span");
    assert!(matches!(failed.status, Status::Error { .. }));
    server.stop().expect("stop");
}

#[tokio::test]
async fn unknown_method_is_other_with_the_original_name() {
    let capture = Capture::install();
    let (addr, server) = start(capture.layer()).await;
    let client = http_client(addr, HeaderMap::new());

    let error = client
        .request::<Value, _>("no/such", rpc_params![])
        .await
        .expect_err("unknown method");
    assert!(matches!(error, ClientError::Call(ref e) if e.code() == -32601));

    let spans = capture
        .wait_for(1, |s| s.span_kind == SpanKind::Server)
        .await;
    let span = &spans[0];
    assert_eq!(span.name, "jsonrpc");
    assert_eq!(attr_str(span, "rpc.method").as_deref(), Some("_OTHER"));
    assert_eq!(
        attr_str(span, "rpc.method_original").as_deref(),
        Some("no/such")
    );
    assert_eq!(attr_str(span, "error.type").as_deref(), Some("-32601"));
    let method_attrs = span
        .attributes
        .iter()
        .filter(|kv| kv.key.as_str() == "rpc.method")
        .count();
    assert_eq!(method_attrs, 1, "rpc.method recorded once");
    server.stop().expect("stop");
}

#[tokio::test]
async fn with_methods_classifies_unknown_methods_up_front() {
    let capture = Capture::install();
    let layer = capture.layer().with_methods(module().method_names());
    let (addr, server) = start(layer).await;
    let client = http_client(addr, HeaderMap::new());

    let _: Value = client.request("echo", rpc_params![1]).await.expect("echo");
    client
        .request::<Value, _>("missing", rpc_params![])
        .await
        .expect_err("unknown method");

    let spans = capture
        .wait_for(2, |s| s.span_kind == SpanKind::Server)
        .await;
    let echo = spans.iter().find(|s| s.name == "echo").expect("echo span");
    assert_eq!(attr_str(echo, "rpc.method").as_deref(), Some("echo"));
    let other = spans
        .iter()
        .find(|s| s.name == "jsonrpc")
        .expect("_OTHER span");
    assert_eq!(attr_str(other, "rpc.method").as_deref(), Some("_OTHER"));
    assert_eq!(
        attr_str(other, "rpc.method_original").as_deref(),
        Some("missing")
    );
    server.stop().expect("stop");
}

#[tokio::test]
async fn error_response_sets_error_status_and_error_type() {
    let capture = Capture::install();
    let (addr, server) = start(capture.layer()).await;
    let client = http_client(addr, HeaderMap::new());

    let error = client
        .request::<Value, _>("fail", rpc_params![])
        .await
        .expect_err("fail fails");
    assert!(matches!(error, ClientError::Call(ref e) if e.code() == FAIL_CODE));

    let spans = capture.wait_for(1, |s| s.name == "fail").await;
    let span = &spans[0];
    assert_eq!(
        span.status,
        Status::Error {
            description: "boom".into()
        }
    );
    assert_eq!(attr_str(span, "error.type"), Some(FAIL_CODE.to_string()));
    assert_eq!(
        attr(span, "rpc.response.status_code"),
        Some(opentelemetry::Value::from(FAIL_CODE.to_string()))
    );
    server.stop().expect("stop");
}

#[tokio::test]
async fn invalid_carrier_gives_a_root_span_and_the_call_succeeds() {
    let capture = Capture::install();
    let (addr, server) = start(capture.layer()).await;
    // Invalid in both places: upper-case hex is not W3C.
    let bad = "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01";
    let client = http_client(addr, headers(bad));

    let echoed: Value = client
        .request("echo", meta_params(bad))
        .await
        .expect("the call still succeeds");
    assert_eq!(echoed["x"], 1);

    let spans = capture.wait_for(1, |s| s.name == "echo").await;
    let span = &spans[0];
    assert_eq!(span.parent_span_id, SpanId::INVALID, "a root span");
    assert_ne!(
        span.span_context.trace_id().to_string(),
        TRACE_ID.to_lowercase()
    );
    assert!(span.span_context.is_valid());
    server.stop().expect("stop");
}

#[tokio::test]
async fn websocket_upgrade_traceparent_parents_the_connections_calls() {
    let capture = Capture::install();
    let (addr, server) = start(capture.layer()).await;
    let client = ws_client(addr, headers(TRACEPARENT)).await;

    let _: Value = client.request("echo", rpc_params![1]).await.expect("first");
    let _: Value = client
        .request("echo", rpc_params![2])
        .await
        .expect("second");
    // A call's own carrier wins over the connection's.
    let _: Value = client
        .request("echo", meta_params(OTHER_TRACEPARENT))
        .await
        .expect("third");

    let spans = capture.wait_for(3, |s| s.name == "echo").await;
    for id in ["0", "1"] {
        let span = spans.iter().find(|s| has_id(s, id)).expect("span");
        assert_parented_by_client(span);
        assert_eq!(
            attr_str(span, "rpc.transport").as_deref(),
            Some("websocket")
        );
    }
    let own = spans.iter().find(|s| has_id(s, "2")).expect("third span");
    assert_eq!(
        own.span_context.trace_id().to_string(),
        "11111111111111111111111111111111"
    );
    let connections: Vec<_> = spans
        .iter()
        .map(|s| attr(s, "app_server.connection_id"))
        .collect();
    assert!(connections[0].is_some());
    assert!(
        connections.iter().all(|c| c == &connections[0]),
        "one connection"
    );
    server.stop().expect("stop");
}

#[tokio::test]
async fn notifications_are_traced_without_a_request_id() {
    let capture = Capture::install();
    let (addr, server) = start(capture.layer()).await;
    let client = ws_client(addr, HeaderMap::new()).await;

    client
        .notification("note", meta_params(TRACEPARENT))
        .await
        .expect("notification sent");

    let spans = capture.wait_for(1, |s| s.name == "note").await;
    let span = &spans[0];
    assert_eq!(span.span_kind, SpanKind::Server);
    assert_parented_by_client(span);
    assert_eq!(attr(span, "jsonrpc.request.id"), None);
    assert_eq!(attr(span, "rpc.request_id"), None);
    let server_spans = capture
        .finished()
        .into_iter()
        .filter(|s| s.span_kind == SpanKind::Server)
        .count();
    assert_eq!(server_spans, 1, "one span for the one notification");
    server.stop().expect("stop");
}
