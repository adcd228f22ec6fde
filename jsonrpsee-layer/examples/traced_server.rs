//! A jsonrpsee server traced by `skein-jsonrpsee`.
//!
//! ```text
//! cargo run -p skein-jsonrpsee --example traced_server          # serve until Ctrl-C
//! cargo run -p skein-jsonrpsee --example traced_server -- --demo # call itself, then exit
//! ```
//!
//! Spans are printed to stderr, one line each, by a small exporter; swap
//! in any exporter (OTLP, say) in `tracer_provider`: the middleware only
//! uses the provider the application gives it.

use std::time::Duration;

use http::{HeaderMap, HeaderValue};
use jsonrpsee::RpcModule;
use jsonrpsee::core::client::ClientT;
use jsonrpsee::core::params::BatchRequestBuilder;
use jsonrpsee::http_client::HttpClientBuilder;
use jsonrpsee::rpc_params;
use jsonrpsee::server::Server;
use jsonrpsee::server::middleware::rpc::RpcServiceBuilder;
use jsonrpsee::types::ErrorObjectOwned;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter};
use serde_json::Value;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// A client-side parent, as an upstream service would send it.
const TRACEPARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

/// Prints each finished span as one line on stderr.
#[derive(Debug)]
struct StderrExporter;

impl SpanExporter for StderrExporter {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        for span in batch {
            let attributes: Vec<String> = span
                .attributes
                .iter()
                .map(|kv| format!("{}={}", kv.key, kv.value))
                .collect();
            eprintln!(
                "span {:?} trace={} span={} parent={} status={:?} {}",
                span.name,
                span.span_context.trace_id(),
                span.span_context.span_id(),
                span.parent_span_id,
                span.status,
                attributes.join(" ")
            );
        }
        Ok(())
    }
}

/// The application's own tracer provider, and a `tracing` subscriber for
/// its own spans (the `hello` handler opens one, which nests under the
/// request span); the middleware needs nothing more.
fn tracer_provider() -> SdkTracerProvider {
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(StderrExporter)
        .build();
    // The extras tracing-opentelemetry adds by default (code location, OS
    // thread, busy/idle times) are turned off to keep the lines short.
    let otel = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("traced_server"))
        .with_location(false)
        .with_threads(false)
        .with_target(false)
        .with_tracked_inactivity(false)
        .with_filter(EnvFilter::new("traced_server=info"));
    tracing_subscriber::registry().with(otel).init();
    provider
}

fn module() -> Result<RpcModule<()>, Box<dyn std::error::Error>> {
    let mut module = RpcModule::new(());
    module.register_method("hello", |params, _, _| {
        let _greeting = tracing::info_span!("compose greeting").entered();
        let name: String = params.one().unwrap_or_else(|_| "world".to_owned());
        format!("hello, {name}")
    })?;
    module.register_method("fail", |_, _, _| {
        Err::<(), _>(ErrorObjectOwned::owned(
            -32050,
            "this method always fails",
            None::<()>,
        ))
    })?;
    Ok(module)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let demo = std::env::args().any(|a| a == "--demo");
    let provider = tracer_provider();

    let server = Server::builder()
        .set_http_middleware(
            tower::ServiceBuilder::new().layer(skein_jsonrpsee::TraceHeadersLayer::default()),
        )
        .set_rpc_middleware(RpcServiceBuilder::new().layer(
            skein_jsonrpsee::RpcTracingLayer::new("traced-example").with_tracer_provider(&provider),
        ))
        .build("127.0.0.1:0")
        .await?;
    let addr = server.local_addr()?;
    let handle = server.start(module()?);

    eprintln!("listening on http://{addr} (HTTP and WebSocket)");
    eprintln!("spans: printed to stderr, one line each");
    eprintln!(
        "try: curl -s http://{addr} -H 'content-type: application/json' \
         -H 'traceparent: {TRACEPARENT}' \
         -d '{{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"hello\",\"params\":[\"you\"]}}'"
    );

    if demo {
        let mut headers = HeaderMap::new();
        headers.insert("traceparent", HeaderValue::from_static(TRACEPARENT));
        let client = HttpClientBuilder::default()
            .set_headers(headers)
            .request_timeout(Duration::from_secs(30))
            .build(format!("http://{addr}"))?;
        let greeting: String = client.request("hello", rpc_params!["demo"]).await?;
        eprintln!("hello -> {greeting}");
        let mut batch = BatchRequestBuilder::new();
        batch.insert("hello", rpc_params!["one"])?;
        batch.insert("fail", rpc_params![])?;
        batch.insert("no/such/method", rpc_params![])?;
        let responses = client.batch_request::<Value>(batch).await?;
        eprintln!(
            "batch -> {} ok, {} failed",
            responses.num_successful_calls(),
            responses.num_failed_calls()
        );
        handle.stop()?;
    } else {
        tokio::signal::ctrl_c().await?;
        handle.stop()?;
    }
    handle.stopped().await;
    provider.shutdown()?;
    Ok(())
}
