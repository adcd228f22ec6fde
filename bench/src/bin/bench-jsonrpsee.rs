//! The jsonrpsee comparison server: what a Rust user would pick instead of
//! hand-written transports. It answers `initialize` and `model/list` with
//! the canned Skein results over WebSocket (jsonrpsee serves HTTP and
//! WebSocket on one port; the harness only uses WebSocket).
//!
//! `--middleware` wraps every call in `skein-jsonrpsee`'s tracing
//! middleware, with spans exported the way a traced Skein exports them:
//! an OpenTelemetry tracer provider writing the local trace store (in
//! `--trace-dir`, or a temporary directory).

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;
use jsonrpsee::server::middleware::rpc::RpcServiceBuilder;
use jsonrpsee::server::{RpcModule, Server, ServerConfig};
use opentelemetry_sdk::trace::SdkTracerProvider;
use serde_json::Value;
use skein_bench::{Canned, INITIALIZE, MODEL_LIST};
use skein_otel::local_store::{LocalStore, LocalStoreProcessor};

/// jsonrpsee WebSocket server answering the benchmark's methods.
#[derive(Debug, Parser)]
#[command(name = "bench-jsonrpsee")]
struct Args {
    /// The canned results file written by `skein-bench`.
    #[arg(long, value_name = "FILE")]
    results: PathBuf,
    /// Address to listen on; port 0 picks a free port (printed to stderr
    /// as `listening on ws://IP:PORT`).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: String,
    /// Wrap every call in the skein-jsonrpsee tracing middleware.
    #[arg(long)]
    middleware: bool,
    /// With `--middleware`: the trace store directory (default: a
    /// temporary directory, removed at exit).
    #[arg(long, value_name = "DIR")]
    trace_dir: Option<PathBuf>,
}

/// Most connections the server accepts (jsonrpsee's default is 100; the
/// memory scenario opens 5,000).
const MAX_CONNECTIONS: u32 = 20_000;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let canned = Canned::load(&args.results)?;
    // With --middleware: spans go through an OTel tracer provider into a
    // local trace store, like a traced Skein's.
    let temp;
    let provider = if args.middleware {
        let dir = match &args.trace_dir {
            Some(dir) => dir.clone(),
            None => {
                temp = tempfile::tempdir().context("creating a trace directory")?;
                temp.path().to_path_buf()
            }
        };
        Some(install_tracing(&dir)?)
    } else {
        None
    };
    // Set up as the crate docs advise: the application's provider, and the
    // registered methods named up front (as Skein's own layer knows its
    // methods), so spans and metrics use static method names.
    let rpc_middleware = RpcServiceBuilder::new().option_layer(provider.as_ref().map(|p| {
        skein_jsonrpsee::RpcTracingLayer::new("bench-jsonrpsee")
            .with_tracer_provider(p)
            .with_methods([INITIALIZE, MODEL_LIST])
    }));
    let http_middleware = tower::ServiceBuilder::new().option_layer(
        args.middleware
            .then(skein_jsonrpsee::TraceHeadersLayer::default),
    );
    let config = ServerConfig::builder()
        .max_connections(MAX_CONNECTIONS)
        .build();
    let server = Server::builder()
        .set_config(config)
        .set_http_middleware(http_middleware)
        .set_rpc_middleware(rpc_middleware)
        .build(args.listen.as_str())
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    skein_bench::announce(server.local_addr()?);

    let mut module = RpcModule::new(canned);
    module.register_method(INITIALIZE, |_params, canned, _ext| -> Value {
        canned.initialize.clone()
    })?;
    module.register_method(MODEL_LIST, |_params, canned, _ext| -> Value {
        canned.model_list.clone()
    })?;
    let handle = server.start(module);

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    term.recv().await;
    let _ = handle.stop();
    handle.stopped().await;
    if let Some(provider) = provider {
        tokio::task::spawn_blocking(move || provider.shutdown())
            .await?
            .context("flushing spans")?;
    }
    Ok(())
}

/// Installs a tracing subscriber whose spans go to a local trace store in
/// `dir` through an OpenTelemetry tracer provider.
fn install_tracing(dir: &std::path::Path) -> anyhow::Result<SdkTracerProvider> {
    use opentelemetry::trace::TracerProvider as _;
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;

    let store =
        LocalStore::new(dir).with_context(|| format!("trace store in {}", dir.display()))?;
    let provider = SdkTracerProvider::builder()
        .with_span_processor(LocalStoreProcessor::new(store))
        .build();
    // The middleware builds its spans with this provider directly; the
    // subscriber is what a service would also run (for its own spans), at
    // INFO so jsonrpsee's TRACE-level spans stay out.
    tracing_subscriber::registry()
        .with(
            tracing_opentelemetry::layer()
                .with_tracer(provider.tracer("bench-jsonrpsee"))
                .with_context_activation(false)
                .with_tracked_inactivity(false)
                .with_threads(false)
                .with_location(false)
                .with_target(false)
                .with_filter(tracing_subscriber::filter::LevelFilter::INFO),
        )
        .try_init()
        .context("installing the tracing subscriber")?;
    Ok(provider)
}
