//! The jsonrpsee comparison server: what a Rust user would pick instead of
//! hand-written transports. It answers `initialize` and `model/list` with
//! the canned Skein results over WebSocket (jsonrpsee serves HTTP and
//! WebSocket on one port; the harness only uses WebSocket).
//!
//! `--middleware` is the place for an RPC tracing middleware: the flag is
//! accepted and refused until the middleware crate lands (see the comment
//! in `main`).

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;
use jsonrpsee::server::middleware::rpc::RpcServiceBuilder;
use jsonrpsee::server::{RpcModule, Server, ServerConfig};
use serde_json::Value;
use skein_bench::{Canned, INITIALIZE, MODEL_LIST};

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
    /// Wrap every call in the RPC tracing middleware (not built in yet).
    #[arg(long)]
    middleware: bool,
}

/// Most connections the server accepts (jsonrpsee's default is 100; the
/// memory scenario opens 5,000).
const MAX_CONNECTIONS: u32 = 20_000;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let canned = Canned::load(&args.results)?;
    // The RPC middleware stack. Switching the tracing middleware on is a
    // two-line change: add `skein-jsonrpsee` to this crate's dependencies
    // and replace the refusal with
    // `.option_layer(args.middleware.then(skein_jsonrpsee::<Layer>::new))`
    // on the builder.
    anyhow::ensure!(
        !args.middleware,
        "--middleware: the skein-jsonrpsee tracing middleware is not built in yet"
    );
    let rpc_middleware = RpcServiceBuilder::new();
    let config = ServerConfig::builder()
        .max_connections(MAX_CONNECTIONS)
        .build();
    let server = Server::builder()
        .set_config(config)
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
    Ok(())
}
