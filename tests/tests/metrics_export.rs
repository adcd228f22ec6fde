//! Metrics over OTLP, end to end.
//!
//! A tiny OTLP/HTTP receiver runs inside the test: it speaks just enough
//! HTTP/1.1 to accept `POST /v1/metrics` and `POST /v1/traces` (bodies
//! framed by `Content-Length`, keep-alive honoured), answers `200` with an
//! empty protobuf body, and keeps every body. The real `skein` binary
//! exports to it with `--otlp-endpoint`, runs a completed turn, a failed
//! turn and a request to an unknown method, and shuts down on stdin EOF.
//!
//! The periodic reader's interval (60 s by default) never elapses during
//! the test; the final values are exported at shutdown, before the process
//! exits, and the receiver stores a body before answering it. So once the
//! process has exited everything is in: no sleeps, no polling.

mod support;

use std::collections::BTreeMap;

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::metric::Data;
use prost::Message as _;
use serde_json::json;

use support::otlp_receiver::Receiver;
use support::{CHAT_SPAN_NAME, METHOD_NOT_FOUND, Server, ServerOptions, TURN_SPAN_NAME, Transport};

/// One exported data point: its metric's unit, its attributes, how many
/// measurements it aggregates (histograms) or its value (sums), and its
/// sum (histograms).
#[derive(Debug, Clone)]
struct Point {
    unit: String,
    attributes: BTreeMap<String, String>,
    count: u64,
    sum: Option<f64>,
}

impl Point {
    fn has(&self, key: &str, value: &str) -> bool {
        self.attributes.get(key).map(String::as_str) == Some(value)
    }
}

fn any_value_text(value: Option<&AnyValue>) -> String {
    match value.and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        other => format!("{other:?}"),
    }
}

fn attribute_map(attributes: &[KeyValue]) -> BTreeMap<String, String> {
    attributes
        .iter()
        .map(|kv| (kv.key.clone(), any_value_text(kv.value.as_ref())))
        .collect()
}

/// Every data point of every metric export, by metric name.
fn metric_points(bodies: &[Vec<u8>]) -> BTreeMap<String, Vec<Point>> {
    let mut points: BTreeMap<String, Vec<Point>> = BTreeMap::new();
    for body in bodies {
        let request = ExportMetricsServiceRequest::decode(body.as_slice())
            .unwrap_or_else(|e| panic!("a /v1/metrics body is not an OTLP request: {e}"));
        for metric in request
            .resource_metrics
            .iter()
            .flat_map(|r| &r.scope_metrics)
            .flat_map(|s| &s.metrics)
        {
            let entry = points.entry(metric.name.clone()).or_default();
            let unit = metric.unit.clone();
            match &metric.data {
                Some(Data::Histogram(histogram)) => {
                    entry.extend(histogram.data_points.iter().map(|p| Point {
                        unit: unit.clone(),
                        attributes: attribute_map(&p.attributes),
                        count: p.count,
                        sum: p.sum,
                    }))
                }
                Some(Data::Sum(sum)) => entry.extend(sum.data_points.iter().map(|p| {
                    use opentelemetry_proto::tonic::metrics::v1::number_data_point::Value;
                    let count = match p.value {
                        Some(Value::AsInt(i)) => u64::try_from(i).unwrap_or(u64::MAX),
                        Some(Value::AsDouble(d)) => d as u64,
                        None => 0,
                    };
                    Point {
                        unit: unit.clone(),
                        attributes: attribute_map(&p.attributes),
                        count,
                        sum: None,
                    }
                })),
                other => panic!("metric {} has unexpected data {other:?}", metric.name),
            }
        }
    }
    points
}

/// The names of every span of every trace export.
fn span_names(requests: Vec<ExportTraceServiceRequest>) -> Vec<String> {
    requests
        .into_iter()
        .flat_map(|request| request.resource_spans)
        .flat_map(|r| r.scope_spans)
        .flat_map(|s| s.spans)
        .map(|span| span.name)
        .collect()
}

/// The points of `name`, panicking with every metric seen when absent.
fn points_of<'a>(all: &'a BTreeMap<String, Vec<Point>>, name: &str) -> &'a [Point] {
    all.get(name).unwrap_or_else(|| {
        panic!(
            "no metric {name} exported; got {:?}",
            all.keys().collect::<Vec<_>>()
        )
    })
}

/// The one point of `points` whose attributes are exactly `expected`.
fn point_with<'a>(points: &'a [Point], name: &str, expected: &[(&str, &str)]) -> &'a Point {
    let expected: BTreeMap<String, String> = expected
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let found: Vec<&Point> = points.iter().filter(|p| p.attributes == expected).collect();
    match found.as_slice() {
        [point] => point,
        _ => panic!(
            "{name}: expected exactly one point with attributes {expected:?}, got {found:?}; all points: {points:#?}"
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_traces_reach_an_otlp_http_receiver_with_their_attributes() {
    let receiver = Receiver::start().await;
    let mut server = Server::start_with(
        Transport::Stdio,
        ServerOptions::default()
            .arg("--otlp-endpoint")
            .arg(&receiver.url),
    )
    .await;
    let mut client = server.connect().await;
    client.initialize("metrics-e2e", "1.0.0").await;
    let thread_id = client.start_thread().await;

    let turn = client
        .start_turn(&thread_id, "hello metrics world", None)
        .await;
    let completed = client.wait_for_turn_completed(&turn.turn_id()).await;
    assert_eq!(
        completed["params"]["turn"]["status"], "completed",
        "{completed}"
    );

    let failing = client
        .start_turn(&thread_id, "/fail on purpose", None)
        .await;
    let failed = client.wait_for_turn_completed(&failing.turn_id()).await;
    assert_eq!(failed["params"]["turn"]["status"], "failed", "{failed}");

    let unknown = client.request("no/such/method", json!({}), None).await;
    assert_eq!(unknown.error_code(), METHOD_NOT_FOUND);

    // EOF on stdin; returns once the process has exited with code 0, after
    // its final exports.
    let _finished = server.shutdown().await;

    let metric_bodies = receiver.bodies("/v1/metrics");
    assert!(
        !metric_bodies.is_empty(),
        "no metrics were exported; the receiver got {:?}",
        receiver.summary()
    );
    let unexpected: Vec<String> = receiver
        .summary()
        .into_iter()
        .filter(|r| !r.contains("/v1/metrics (") && !r.contains("/v1/traces ("))
        .collect();
    assert!(unexpected.is_empty(), "unexpected requests: {unexpected:?}");
    let metrics = metric_points(&metric_bodies);

    // rpc.server.call.duration: one point per (method, outcome).
    let rpc = points_of(&metrics, "rpc.server.call.duration");
    assert!(rpc.iter().all(|p| p.unit == "s"), "{rpc:#?}");
    for method in ["initialize", "thread/start"] {
        let point = point_with(
            rpc,
            "rpc.server.call.duration",
            &[("rpc.system.name", "jsonrpc"), ("rpc.method", method)],
        );
        assert_eq!(point.count, 1, "{method}: {point:?}");
    }
    let turn_start = point_with(
        rpc,
        "rpc.server.call.duration",
        &[("rpc.system.name", "jsonrpc"), ("rpc.method", "turn/start")],
    );
    assert_eq!(turn_start.count, 2, "{turn_start:?}");
    let other = point_with(
        rpc,
        "rpc.server.call.duration",
        &[
            ("rpc.system.name", "jsonrpc"),
            ("rpc.method", "_OTHER"),
            ("error.type", "-32601"),
        ],
    );
    assert_eq!(other.count, 1, "{other:?}");

    // gen_ai.client.operation.duration: the completed and the failed call.
    let chat = [
        ("gen_ai.operation.name", "chat"),
        ("gen_ai.provider.name", "skein"),
        ("gen_ai.request.model", "echo"),
    ];
    let calls = points_of(&metrics, "gen_ai.client.operation.duration");
    assert!(calls.iter().all(|p| p.unit == "s"), "{calls:#?}");
    let ok_call = point_with(calls, "gen_ai.client.operation.duration", &chat);
    assert_eq!(ok_call.count, 1, "{ok_call:?}");
    let mut failed_attrs = chat.to_vec();
    failed_attrs.push(("error.type", "model_failed"));
    let failed_call = point_with(calls, "gen_ai.client.operation.duration", &failed_attrs);
    assert_eq!(failed_call.count, 1, "{failed_call:?}");

    // gen_ai.client.token.usage: input and output of the completed call
    // (three words in, three words echoed out).
    let tokens = points_of(&metrics, "gen_ai.client.token.usage");
    assert!(tokens.iter().all(|p| p.unit == "{token}"), "{tokens:#?}");
    assert_eq!(tokens.len(), 2, "{tokens:#?}");
    for token_type in ["input", "output"] {
        let mut attrs = chat.to_vec();
        attrs.push(("gen_ai.token.type", token_type));
        let point = point_with(tokens, "gen_ai.client.token.usage", &attrs);
        assert_eq!(point.count, 1, "{point:?}");
        assert_eq!(point.sum, Some(3.0), "{token_type} tokens: {point:?}");
    }

    // skein.turn.duration: one completed and one failed regular turn.
    let turns = points_of(&metrics, "skein.turn.duration");
    assert!(turns.iter().all(|p| p.unit == "s"), "{turns:#?}");
    for status in ["completed", "failed"] {
        let point = point_with(
            turns,
            "skein.turn.duration",
            &[("turn.kind", "regular"), ("turn.status", status)],
        );
        assert_eq!(point.count, 1, "{point:?}");
    }

    // skein.spans.dropped: one series per span pipeline, nothing lost.
    let dropped = points_of(&metrics, "skein.spans.dropped");
    for pipeline in ["otlp", "local store"] {
        let point = dropped
            .iter()
            .find(|p| p.has("pipeline", pipeline))
            .unwrap_or_else(|| panic!("no skein.spans.dropped for {pipeline}: {dropped:#?}"));
        assert_eq!(point.count, 0, "{pipeline} dropped spans: {point:?}");
    }

    // The spans went to the same receiver.
    let names = span_names(receiver.trace_requests());
    for expected in ["turn/start", TURN_SPAN_NAME, CHAT_SPAN_NAME] {
        assert!(
            names.iter().any(|n| n == expected),
            "no {expected:?} span exported over OTLP; got {names:?}"
        );
    }
}

/// At startup one line says where spans go: the local store's directory,
/// and the OTLP endpoint and protocol when export is on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_says_where_spans_go() {
    let receiver = Receiver::start().await;
    let mut server = Server::start_with(
        Transport::Stdio,
        ServerOptions::default()
            .arg("--otlp-endpoint")
            .arg(&receiver.url),
    )
    .await;
    let line = server.wait_for_stderr(|l| l.contains("spans go to")).await;
    let store = format!("the local trace store in {}", server.trace_dir().display());
    assert!(line.contains(&store), "expected {store:?} in: {line}");
    let otlp = format!("OTLP http/protobuf at {}/v1/traces", receiver.url);
    assert!(line.contains(&otlp), "expected {otlp:?} in: {line}");
    server.shutdown().await;

    // Without an endpoint the line says export is off.
    let mut server = Server::start(Transport::Stdio).await;
    let line = server.wait_for_stderr(|l| l.contains("spans go to")).await;
    let store = format!("the local trace store in {}", server.trace_dir().display());
    assert!(line.contains(&store), "expected {store:?} in: {line}");
    assert!(line.contains("OTLP export is off"), "{line}");
    server.shutdown().await;
}

/// A backend that refuses metrics (Phoenix answers `405` on
/// `/v1/metrics`) is named once, with the endpoint and the variable that
/// stops metric export; spans still go through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_refusing_metrics_is_named_once() {
    let receiver = Receiver::start_refusing_metrics().await;
    let mut server = Server::start_with(
        Transport::Stdio,
        ServerOptions::default()
            .arg("--otlp-endpoint")
            .arg(&receiver.url)
            // Several metric exports while the server runs.
            .env("OTEL_METRIC_EXPORT_INTERVAL", "100"),
    )
    .await;
    let refused = "/v1/metrics -> 405 Method Not Allowed";
    let line = server
        .wait_for_stderr(|l| l.contains("OTEL_METRICS_EXPORTER=none"))
        .await;
    let endpoint = format!("{}/v1/metrics", receiver.url);
    assert!(line.contains(&endpoint), "expected {endpoint:?} in: {line}");
    assert!(line.contains("405"), "{line}");
    // Wait for more refused exports, then check the line came once.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while receiver.count(refused) < 4 {
        assert!(
            std::time::Instant::now() < deadline,
            "expected several refused metric exports; got {:?}",
            receiver.summary()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let mut client = server.connect().await;
    client.initialize("refused-metrics", "1.0.0").await;
    let finished = server.shutdown().await;
    let stderr = finished.stderr();
    let mentions: Vec<&String> = stderr
        .iter()
        .filter(|l| l.to_lowercase().contains("metrics"))
        .collect();
    assert_eq!(
        mentions.len(),
        1,
        "the refusal must be said once and nothing else logged about metrics: {stderr:#?}"
    );
    assert!(
        !receiver.bodies("/v1/traces").is_empty(),
        "spans must still be exported: {:?}",
        receiver.summary()
    );
}
