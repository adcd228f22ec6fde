//! The ceiling: a bare tokio-tungstenite WebSocket server that parses each
//! text frame as JSON and serializes the canned response, with nothing
//! else in the way (no envelope classification, no router, no tracing).

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use skein_bench::Canned;
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;

/// Bare WebSocket JSON-RPC responder (the benchmark's ceiling).
#[derive(Debug, Parser)]
#[command(name = "bench-ceiling")]
struct Args {
    /// The canned results file written by `skein-bench`.
    #[arg(long, value_name = "FILE")]
    results: PathBuf,
    /// Address to listen on; port 0 picks a free port (printed to stderr
    /// as `listening on ws://IP:PORT`).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let canned = Arc::new(Canned::load(&args.results)?);
    let listener = TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    skein_bench::announce(listener.local_addr()?);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, _) = accepted?;
                tokio::spawn(serve(stream, Arc::clone(&canned)));
            }
            _ = term.recv() => return Ok(()),
        }
    }
}

async fn serve(stream: TcpStream, canned: Arc<Canned>) {
    let _ = stream.set_nodelay(true);
    let Ok(ws) = tokio_tungstenite::accept_async(stream).await else {
        return;
    };
    let (mut sink, mut frames) = ws.split();
    while let Some(Ok(message)) = frames.next().await {
        let reply = match message {
            Message::Text(text) => canned.respond(text.as_str()),
            Message::Close(_) => break,
            _ => None,
        };
        if let Some(reply) = reply
            && sink.send(Message::text(reply)).await.is_err()
        {
            return;
        }
    }
    let _ = sink.close().await;
}
