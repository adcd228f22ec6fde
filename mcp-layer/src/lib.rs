//! Skein's request tracing for any [rmcp](https://docs.rs/rmcp) (the
//! official Rust MCP SDK) server, and the client side that lets servers
//! join the caller's trace.
//!
//! [`TracedServer`] wraps a `ServerHandler` and is itself an rmcp
//! `Service<RoleServer>`: every inbound request (`initialize` included)
//! and notification becomes one OpenTelemetry SERVER span, built by the
//! same factory as Skein's own request spans (`skein_otel::rpc`), following
//! the MCP semantic conventions. No handler method needs code.
//!
//! # Setup
//!
//! ```no_run
//! use rmcp::ServiceExt as _;
//! use rmcp::model::{CallToolRequestParams, CallToolResult, ContentBlock, ServerCapabilities, ServerConfig};
//! use rmcp::service::{RequestContext, RoleServer};
//! use rmcp::{ErrorData, ServerHandler};
//!
//! #[derive(Clone)]
//! struct MyServer;
//!
//! impl ServerHandler for MyServer {
//!     fn get_info(&self) -> ServerConfig {
//!         ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
//!     }
//!     async fn call_tool(
//!         &self,
//!         request: CallToolRequestParams,
//!         _context: RequestContext<RoleServer>,
//!     ) -> Result<rmcp::model::CallToolResponse, ErrorData> {
//!         Ok(CallToolResult::success(vec![ContentBlock::text(format!("called {}", request.name))]).into())
//!     }
//! }
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! // The application's tracer provider, with whatever exporter it uses.
//! let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
//! let server = skein_rmcp::TracedServer::new(MyServer).with_tracer_provider(&provider);
//! let running = server.serve(rmcp::transport::stdio()).await?;
//! running.waiting().await?;
//! provider.shutdown()?;
//! # Ok(())
//! # }
//! ```
//!
//! The crate keeps no global state of its own. Spans are built with the
//! tracer provider given to [`TracedServer::with_tracer_provider`], or else
//! the one installed in `opentelemetry::global` when the server is wrapped
//! (`opentelemetry` 0.33). While a request runs, its span is the current
//! OTel context: spans the handler opens through OTel are its children.
//!
//! # Parents
//!
//! The first valid carrier wins:
//!
//! 1. `params._meta.traceparent` / `tracestate` (SEP-414, what the official
//!    Python and TypeScript SDK clients send, and [`with_trace_context`]);
//! 2. over streamable HTTP, the HTTP request's `traceparent` /
//!    `tracestate` headers;
//! 3. none: the span is a root.
//!
//! Parsing is Skein's strict W3C Trace Context parsing. An invalid carrier
//! never fails a request: it is logged as a warning, recorded on the span
//! as a `skein.carrier.invalid` event with the reason, and the next
//! candidate is tried.
//!
//! # Span contents
//!
//! Named `{mcp.method.name} {target}`: `tools/call get_weather`,
//! `prompts/get greeting`, `resources/read file:///notes.txt`, or the
//! method alone (`initialize`, `tools/list`, `notifications/initialized`).
//! Attributes: `mcp.method.name`, `jsonrpc.request.id` (absent on
//! notifications), `jsonrpc.protocol.version`, `mcp.protocol.version`,
//! `mcp.session.id` (the streamable HTTP `Mcp-Session-Id`, when there is
//! one), `gen_ai.tool.name` and `gen_ai.operation.name` (`execute_tool`)
//! for tool calls, `gen_ai.prompt.name` for prompts, `mcp.resource.uri`
//! for resources, `network.transport` (`pipe`, or `tcp` over HTTP; see
//! [`TracedServer::with_network_transport`]) and `network.protocol.name`
//! (`http`) over HTTP.
//!
//! An error response sets the ERROR status with its message, `error.type`
//! (the JSON-RPC code) and `rpc.response.status_code`; a `tools/call`
//! result flagged `isError: true` sets the ERROR status and `error.type`
//! `tool_error`. A method rmcp does not know that the handler answers with
//! "method not found" is named `jsonrpc`, with `mcp.method.name` `_OTHER`
//! and the name as sent in `rpc.method_original`.
//!
//! Resource URIs in span names are what this crate was asked for; note that
//! the semantic conventions advise against them by default (their
//! cardinality). `mcp.resource.uri` carries the URI either way.
//!
//! # Client side
//!
//! [`with_trace_context`] (a whole request) and [`inject_meta`] (a `_meta`
//! object) write the current context into outgoing requests' `_meta`;
//! Skein's own MCP client uses [`inject_meta_of`] with its CLIENT span.

#![deny(missing_docs)]

mod client;
#[cfg(feature = "server")]
mod server;

pub use client::{inject_meta, inject_meta_of, with_trace_context};
#[cfg(feature = "server")]
pub use server::TracedServer;
