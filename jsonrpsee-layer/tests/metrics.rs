//! `rpc.server.call.duration` goes to the application's global meter
//! provider. (Its own test binary: it installs a global provider.)

mod support;

use http::HeaderMap;
use jsonrpsee::core::client::ClientT;
use jsonrpsee::http_client::HttpClientBuilder;
use jsonrpsee::rpc_params;
use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData, ResourceMetrics};
use opentelemetry_sdk::metrics::{InMemoryMetricExporter, PeriodicReader, SdkMeterProvider};
use serde_json::Value;
use skein_jsonrpsee::RpcTracingLayer;
use support::*;

/// Every `rpc.server.call.duration` point, as sorted `key=value`
/// attributes with its count.
fn call_duration_points(all: &[ResourceMetrics]) -> Vec<(Vec<String>, u64)> {
    let mut points = Vec::new();
    for metric in all
        .iter()
        .flat_map(ResourceMetrics::scope_metrics)
        .flat_map(|scope| scope.metrics())
        .filter(|m| m.name() == "rpc.server.call.duration")
    {
        if let AggregatedMetrics::F64(MetricData::Histogram(h)) = metric.data() {
            for p in h.data_points() {
                let mut attrs: Vec<String> = p
                    .attributes()
                    .map(|kv| format!("{}={}", kv.key, kv.value))
                    .collect();
                attrs.sort();
                points.push((attrs, p.count()));
            }
        }
    }
    points
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

#[tokio::test]
async fn call_durations_go_to_the_applications_meter_provider() {
    let exporter = InMemoryMetricExporter::default();
    let provider = SdkMeterProvider::builder()
        .with_reader(PeriodicReader::builder(exporter.clone()).build())
        .build();
    opentelemetry::global::set_meter_provider(provider.clone());

    let (addr, server) = start(RpcTracingLayer::new(SERVICE)).await;
    let client = HttpClientBuilder::default()
        .set_headers(HeaderMap::new())
        .build(format!("http://{addr}"))
        .expect("client");
    let _: Value = client.request("echo", rpc_params![1]).await.expect("echo");
    let _: Value = client.request("echo", rpc_params![2]).await.expect("echo");
    client
        .request::<Value, _>("fail", rpc_params![])
        .await
        .expect_err("fail");
    client
        .request::<Value, _>("nope", rpc_params![])
        .await
        .expect_err("unknown");
    server.stop().expect("stop");

    assert!(provider.force_flush().is_ok());
    let points = call_duration_points(&exporter.get_finished_metrics().expect("metrics"));
    assert!(
        points.contains(&(strings(&["rpc.method=echo", "rpc.system.name=jsonrpc"]), 2)),
        "{points:?}"
    );
    let fail_type = format!("error.type={FAIL_CODE}");
    assert!(
        points.contains(&(
            strings(&[&fail_type, "rpc.method=fail", "rpc.system.name=jsonrpc"]),
            1
        )),
        "{points:?}"
    );
    assert!(
        points.contains(&(
            strings(&[
                "error.type=-32601",
                "rpc.method=_OTHER",
                "rpc.system.name=jsonrpc"
            ]),
            1
        )),
        "{points:?}"
    );
    assert!(provider.shutdown().is_ok());
}
