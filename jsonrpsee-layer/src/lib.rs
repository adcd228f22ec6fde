//! Skein's request tracing for any [jsonrpsee](https://docs.rs/jsonrpsee)
//! 0.26 server, as two middleware layers.
//!
//! Each call becomes one OpenTelemetry SERVER span built by the same
//! factory as Skein's own request spans (`skein_otel::rpc`): strict W3C
//! Trace Context parsing, the current OTel RPC semantic conventions, a
//! bounded span name, and one span per element of a batch.
//!
//! # Setup
//!
//! ```no_run
//! use jsonrpsee::RpcModule;
//! use jsonrpsee::server::Server;
//! use jsonrpsee::server::middleware::rpc::RpcServiceBuilder;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! // The application's tracer provider, with whatever exporter it uses.
//! let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
//! let mut module = RpcModule::new(());
//! module.register_method("ping", |_, _, _| "pong")?;
//!
//! let server = Server::builder()
//!     // Moves `traceparent` / `tracestate` headers where the RPC layer sees them.
//!     .set_http_middleware(
//!         tower::ServiceBuilder::new().layer(skein_jsonrpsee::TraceHeadersLayer::default()),
//!     )
//!     // One SERVER span per call; "my-service" is recorded as `rpc.service`.
//!     .set_rpc_middleware(RpcServiceBuilder::new().layer(
//!         skein_jsonrpsee::RpcTracingLayer::new("my-service")
//!             .with_tracer_provider(&provider)
//!             .with_methods(module.method_names()),
//!     ))
//!     .build("127.0.0.1:0")
//!     .await?;
//! let handle = server.start(module);
//! # handle.stopped().await;
//! # Ok(())
//! # }
//! ```
//!
//! The crate keeps no global state of its own. Spans are built with the
//! tracer provider given to [`RpcTracingLayer::with_tracer_provider`], or
//! else the one installed in `opentelemetry::global` when the layer is
//! built (`opentelemetry` 0.33); `rpc.server.call.duration` goes to the
//! global meter provider. While a call runs, its span is the current OTel
//! context: spans the handler opens through OTel, or through `tracing` with
//! a `tracing-opentelemetry` layer, are its children. Log events are not
//! attached to the request span (there is no `tracing` span to attach them
//! to); open a span of your own where you want them as span events.
//!
//! # Cost
//!
//! Request spans are built directly with the tracer, not through `tracing`:
//! static attributes stay static values, the request id is formatted once,
//! and nothing is converted field by field. What remains per call is the
//! SDK's span (ids, attributes, the processors' work at its end) and the
//! carrier parsing. Naming the registered methods with
//! [`RpcTracingLayer::with_methods`] also spares classifying each call
//! after it ran (and copying its method name twice). Skein's benchmark
//! harness measures the middleware against the same server without it
//! (`BENCHMARKS.md` in the repository).
//!
//! # Parents
//!
//! The first valid carrier wins:
//!
//! 1. `params._meta.traceparent` / `tracestate` (the MCP convention);
//! 2. the HTTP request's `traceparent` / `tracestate` headers, or, over
//!    WebSocket, those of the request that opened the connection, which
//!    parent every call on it that carries no carrier of its own (both
//!    need [`TraceHeadersLayer`]);
//! 3. none: the span is a root.
//!
//! An invalid carrier never fails a call: it is logged as a warning and
//! recorded on the span as a `skein.carrier.invalid` event, with the
//! reason, and the next candidate is tried.
//!
//! Skein clients may also put a carrier in the JSON-RPC envelope's `trace`
//! member. jsonrpsee's request parser drops envelope members it does not
//! know before any middleware runs, so that carrier cannot be read here;
//! send `params._meta` or a header instead.
//!
//! # Span contents
//!
//! `rpc.system` / `rpc.system.name` (`jsonrpc`), `rpc.service`,
//! `rpc.method`, `rpc.transport` (`http` or `websocket`, when
//! [`TraceHeadersLayer`] is installed), `rpc.request_id` /
//! `jsonrpc.request.id` (absent on notifications),
//! `jsonrpc.protocol.version` and `app_server.connection_id`. A method the
//! server does not register is named `jsonrpc`, with `rpc.method` `_OTHER`
//! and the name as sent in `rpc.method_original`. An error response sets
//! the ERROR status with its message, `error.type` (the JSON-RPC code) and
//! `rpc.response.status_code`.

#![deny(missing_docs)]

mod headers;
mod service;

pub use headers::{HeaderCarrier, TraceHeaders, TraceHeadersLayer};
pub use service::{RpcTracing, RpcTracingLayer};
