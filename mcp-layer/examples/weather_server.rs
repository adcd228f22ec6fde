//! An rmcp MCP server over stdio, traced by `skein-rmcp`.
//!
//! ```text
//! cargo build -p skein-rmcp --example weather_server
//! # then point any MCP client at target/debug/examples/weather_server
//! ```
//!
//! Its tools: `get_weather` (answers for a `city`) and `fail` (fails as a
//! tool does, `isError: true`). Spans are printed to stderr, one line each,
//! by a small exporter (stdout is the MCP channel); swap in any exporter
//! (OTLP, say) in `main`: the wrapper only uses the provider it is given.
//!
//! With `--trace-dir DIR`, spans are also written to a Skein local trace
//! store in `DIR` (OTLP/JSON lines), which `skein trace ls --dir DIR`
//! reads; Skein's end-to-end tests call this server that way.

use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter};
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, JsonObject,
    ListToolsResult, PaginatedRequestParams, ServerCapabilities, ServerConfig, Tool,
};
use rmcp::service::{RequestContext, RoleServer};
use rmcp::{ErrorData, ServerHandler, ServiceExt as _};
use skein_otel::local_store::{LocalStore, LocalStoreProcessor};

/// The server: nothing here knows about tracing.
#[derive(Clone)]
struct Weather;

impl ServerHandler for Weather {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let mut city = JsonObject::new();
        city.insert("type".into(), "string".into());
        let mut properties = JsonObject::new();
        properties.insert("city".into(), city.into());
        let mut schema = JsonObject::new();
        schema.insert("type".into(), "object".into());
        schema.insert("properties".into(), properties.into());
        Ok(ListToolsResult::with_all_items(vec![
            Tool::new("get_weather", "The weather in a city", schema.clone()),
            Tool::new("fail", "Always fails", schema),
        ]))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let city = request
            .arguments
            .as_ref()
            .and_then(|arguments| arguments.get("city"))
            .and_then(|city| city.as_str())
            .unwrap_or("nowhere");
        Ok(match &*request.name {
            "get_weather" => {
                CallToolResult::success(vec![ContentBlock::text(format!("sunny in {city}"))])
            }
            _ => CallToolResult::error(vec![ContentBlock::text("this tool always fails")]),
        }
        .into())
    }
}

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
                "span {:?} trace={} parent={} status={:?} {}",
                span.name,
                span.span_context.trace_id(),
                span.parent_span_id,
                span.status,
                attributes.join(" ")
            );
        }
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut provider = SdkTracerProvider::builder()
        .with_resource(
            Resource::builder()
                .with_service_name("weather_server")
                .build(),
        )
        .with_simple_exporter(StderrExporter);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match (arg.as_str(), args.next()) {
            ("--trace-dir", Some(dir)) => {
                let store = LocalStore::new(dir)?;
                provider = provider.with_span_processor(LocalStoreProcessor::new(store));
            }
            _ => return Err("usage: weather_server [--trace-dir DIR]".into()),
        }
    }
    let provider = provider.build();
    let server = skein_rmcp::TracedServer::new(Weather).with_tracer_provider(&provider);
    let running = server.serve(rmcp::transport::stdio()).await?;
    running.waiting().await?;
    provider.shutdown()?;
    Ok(())
}
