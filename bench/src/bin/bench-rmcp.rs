//! The MCP row's server: an rmcp server over stdio with one tool, `echo`,
//! answering `tools/call` with its `text` argument. With `--traced` it is
//! wrapped in `skein_rmcp::TracedServer`, its spans ended into a batch
//! processor whose exporter counts and discards them (what the layer costs,
//! without a collector's cost); without, it is the bare rmcp server.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use clap::Parser;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter};
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, JsonObject,
    ListToolsResult, PaginatedRequestParams, ServerCapabilities, ServerConfig, Tool,
};
use rmcp::service::{RequestContext, RoleServer};
use rmcp::{ErrorData, ServerHandler, ServiceExt as _};

/// rmcp server over stdio answering `tools/call echo`, with or without
/// Skein's MCP layer.
#[derive(Debug, Parser)]
#[command(name = "bench-rmcp")]
struct Args {
    /// Wrap the server in `skein_rmcp::TracedServer`.
    #[arg(long)]
    traced: bool,
}

#[derive(Clone)]
struct Echo;

impl ServerHandler for Echo {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let mut schema = JsonObject::new();
        schema.insert("type".into(), "object".into());
        Ok(ListToolsResult::with_all_items(vec![Tool::new(
            "echo",
            "Answers with its text argument",
            schema,
        )]))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let text = request
            .arguments
            .as_ref()
            .and_then(|arguments| arguments.get("text"))
            .and_then(|text| text.as_str())
            .unwrap_or_default()
            .to_owned();
        Ok(CallToolResult::success(vec![ContentBlock::text(text)]).into())
    }
}

/// Counts the spans it is handed and drops them.
#[derive(Debug, Clone, Default)]
struct Discard(Arc<AtomicU64>);

impl SpanExporter for Discard {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        self.0.fetch_add(batch.len() as u64, Ordering::Relaxed);
        Ok(())
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if !args.traced {
        let running = Echo.serve(rmcp::transport::stdio()).await?;
        running.waiting().await?;
        return Ok(());
    }
    let exported = Discard::default();
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exported.clone())
        .build();
    let server = skein_rmcp::TracedServer::new(Echo).with_tracer_provider(&provider);
    let running = server.serve(rmcp::transport::stdio()).await?;
    running.waiting().await?;
    provider.shutdown()?;
    // The harness checks that the layer did make the spans.
    eprintln!(
        "bench-rmcp: exported {} spans",
        exported.0.load(Ordering::Relaxed)
    );
    Ok(())
}
