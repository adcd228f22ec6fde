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
//! // The application installs its tracer provider and a `tracing`
//! // subscriber with a `tracing_opentelemetry` layer, as usual.
//! let mut module = RpcModule::new(());
//! module.register_method("ping", |_, _, _| "pong")?;
//!
//! let server = Server::builder()
//!     // Moves `traceparent` / `tracestate` headers where the RPC layer sees them.
//!     .set_http_middleware(
//!         tower::ServiceBuilder::new().layer(skein_jsonrpsee::TraceHeadersLayer::default()),
//!     )
//!     // One SERVER span per call; "my-service" is recorded as `rpc.service`.
//!     .set_rpc_middleware(
//!         RpcServiceBuilder::new().layer(skein_jsonrpsee::RpcTracingLayer::new("my-service")),
//!     )
//!     .build("127.0.0.1:0")
//!     .await?;
//! let handle = server.start(module);
//! # handle.stopped().await;
//! # Ok(())
//! # }
//! ```
//!
//! The crate keeps no global state of its own. Spans go through `tracing`
//! (target `skein::rpc`, level INFO) to whatever OpenTelemetry layer the
//! application installed (`tracing-opentelemetry` 0.34 with
//! `opentelemetry` 0.33); `rpc.server.call.duration` goes to the meter
//! provider installed in `opentelemetry::global` when the layer is built.
//!
//! # Cost
//!
//! Most of a traced call's cost is the `tracing-opentelemetry` layer's, not
//! this crate's. Its defaults add work to every span that request spans do
//! not need: busy/idle timings taken on every poll
//! (`with_tracked_inactivity`), the OS thread's id and name (`with_threads`;
//! its `thread.id` also means something else in agent conventions), the
//! source location (`with_location`), the target (`with_target`), and
//! making the span's context current on every poll
//! (`with_context_activation`). A service that does not read those can turn
//! them off, as Skein does for its own spans:
//!
//! ```
//! # use opentelemetry::trace::TracerProvider as _;
//! use tracing_subscriber::Layer as _;
//! use tracing_subscriber::layer::SubscriberExt as _;
//! # let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
//! let subscriber = tracing_subscriber::registry().with(
//!     tracing_opentelemetry::layer()
//!         .with_tracer(provider.tracer("my-service"))
//!         .with_tracked_inactivity(false)
//!         .with_threads(false)
//!         .with_location(false)
//!         .with_target(false)
//!         .with_context_activation(false)
//!         .with_filter(tracing_subscriber::filter::LevelFilter::INFO),
//! );
//! # let _ = subscriber;
//! ```
//!
//! Skein's benchmark harness measures the middleware this way
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
//! An invalid carrier never fails a call: it is logged as a warning inside
//! the span, with the reason, and the next candidate is tried.
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
