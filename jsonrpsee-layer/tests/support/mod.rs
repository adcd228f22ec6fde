//! A real jsonrpsee server with both tracing layers, on loopback, and the
//! spans it produced, captured in memory.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use jsonrpsee::RpcModule;
use jsonrpsee::server::middleware::rpc::RpcServiceBuilder;
use jsonrpsee::server::{Server, ServerHandle};
use jsonrpsee::types::ErrorObjectOwned;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry::{KeyValue, Value};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use skein_jsonrpsee::{RpcTracingLayer, TraceHeadersLayer};
use tracing::subscriber::DefaultGuard;
use tracing_subscriber::layer::SubscriberExt;

/// The W3C example parent.
pub const TRACE_ID: &str = "0af7651916cd43dd8448eb211c80319c";
/// Its span id.
pub const PARENT_ID: &str = "b7ad6b7169203331";
/// The full traceparent.
pub const TRACEPARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
/// Another valid traceparent, for precedence tests.
pub const OTHER_TRACEPARENT: &str = "00-11111111111111111111111111111111-2222222222222222-01";
/// The service name the test server records.
pub const SERVICE: &str = "test-service";
/// The error the `fail` method returns.
pub const FAIL_CODE: i32 = -32050;

/// Spans captured for one test; the subscriber is this thread's default
/// while it lives (tests run on a current-thread runtime, so the server's
/// tasks run on the same thread).
pub struct Capture {
    exporter: InMemorySpanExporter,
    provider: SdkTracerProvider,
    _guard: DefaultGuard,
}

impl Capture {
    pub fn install() -> Self {
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        let guard = tracing::subscriber::set_default(subscriber);
        Self {
            exporter,
            provider,
            _guard: guard,
        }
    }

    /// The middleware, building its spans with this capture's provider
    /// (the same one the application's `tracing` layer uses).
    pub fn layer(&self) -> RpcTracingLayer {
        RpcTracingLayer::new(SERVICE).with_tracer_provider(&self.provider)
    }

    /// Waits (30 s at most) until `count` spans named by `pred` are
    /// finished, and returns them.
    pub async fn wait_for(&self, count: usize, pred: impl Fn(&SpanData) -> bool) -> Vec<SpanData> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let spans: Vec<SpanData> = self
                .exporter
                .get_finished_spans()
                .expect("finished spans")
                .into_iter()
                .filter(|s| pred(s))
                .collect();
            if spans.len() >= count {
                return spans;
            }
            assert!(
                Instant::now() < deadline,
                "waited 30 s for {count} spans, got {}",
                spans.len()
            );
            tokio::task::yield_now().await;
        }
    }

    /// All spans finished so far.
    pub fn finished(&self) -> Vec<SpanData> {
        self.exporter.get_finished_spans().expect("finished spans")
    }
}

/// The value of attribute `key` on `span`.
pub fn attr(span: &SpanData, key: &str) -> Option<Value> {
    span.attributes
        .iter()
        .find(|kv: &&KeyValue| kv.key.as_str() == key)
        .map(|kv| kv.value.clone())
}

/// The string attribute `key` on `span`.
pub fn attr_str(span: &SpanData, key: &str) -> Option<String> {
    attr(span, key).map(|v| v.as_str().into_owned())
}

/// True for the span of a call with request id `id`.
pub fn has_id(span: &SpanData, id: &str) -> bool {
    attr_str(span, "jsonrpc.request.id").as_deref() == Some(id)
}

/// The test module: `echo` returns its params, `fail` returns an error.
pub fn module() -> RpcModule<()> {
    let mut module = RpcModule::new(());
    module
        .register_method("echo", |params, _, _| {
            params.parse::<serde_json::Value>().unwrap_or_default()
        })
        .expect("register echo");
    module
        .register_method("fail", |_, _, _| {
            Err::<(), _>(ErrorObjectOwned::owned(FAIL_CODE, "boom", None::<()>))
        })
        .expect("register fail");
    module
        .register_method("nested", |_, _, _| {
            // The application's own instrumentation inside a handler.
            let _work = tracing::info_span!("handler work").entered();
            "done"
        })
        .expect("register nested");
    module
}

/// Starts the test server with `layer` on 127.0.0.1.
pub async fn start(layer: RpcTracingLayer) -> (SocketAddr, ServerHandle) {
    let server = Server::builder()
        .set_http_middleware(tower::ServiceBuilder::new().layer(TraceHeadersLayer::default()))
        .set_rpc_middleware(RpcServiceBuilder::new().layer(layer))
        .build("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = server.local_addr().expect("address");
    (addr, server.start(module()))
}
