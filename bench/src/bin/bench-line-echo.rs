//! The stdio baseline: a plain tokio loop that reads newline-delimited
//! JSON-RPC from stdin, parses each line as JSON and writes the canned
//! response line to stdout. Output is flushed whenever no further input is
//! already buffered, so pipelined requests share writes.

use std::path::PathBuf;

use clap::Parser;
use skein_bench::Canned;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, BufWriter};

/// Line-delimited JSON-RPC responder over stdio (the stdio baseline).
#[derive(Debug, Parser)]
#[command(name = "bench-line-echo")]
struct Args {
    /// The canned results file written by `skein-bench`.
    #[arg(long, value_name = "FILE")]
    results: PathBuf,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let canned = Canned::load(&args.results)?;
    let mut input = BufReader::new(tokio::io::stdin());
    let mut output = BufWriter::new(tokio::io::stdout());
    let mut line = String::new();
    loop {
        line.clear();
        if input.read_line(&mut line).await? == 0 {
            break;
        }
        if let Some(reply) = canned.respond(line.trim_end()) {
            output.write_all(reply.as_bytes()).await?;
            output.write_all(b"\n").await?;
        }
        if input.buffer().is_empty() {
            output.flush().await?;
        }
    }
    output.flush().await?;
    Ok(())
}
