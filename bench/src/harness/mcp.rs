//! The MCP row: an rmcp server (`bench-rmcp`) answering `tools/call` over
//! stdio, with and without Skein's MCP layer (`skein_rmcp::TracedServer`),
//! in CPU per call. The client here speaks MCP by hand: the `initialize`
//! handshake, then `calls` pipelined `tools/call echo` requests, written
//! by one task while another reads the answers.

use std::path::Path;
use std::process::Stdio;
use std::time::Instant;

use anyhow::{Context as _, bail};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::process::Command;

use super::servers::{PROCESS_TIMEOUT, cpu_seconds};

/// One run of the MCP row.
#[derive(Clone, Debug)]
pub struct McpSample {
    /// Server CPU (user + system) per `tools/call`, in microseconds.
    pub cpu_us_per_call: f64,
    /// Answers per second of wall time.
    pub calls_per_s: f64,
    /// Spans the traced server reported exporting (`None` untraced).
    pub spans: Option<u64>,
}

/// Runs `calls` `tools/call` requests against `bench-rmcp` (`--traced`
/// or not) and measures the server's CPU for them.
pub async fn run(bin: &Path, traced: bool, calls: u64) -> anyhow::Result<McpSample> {
    let mut command = Command::new(bin);
    if traced {
        command.arg("--traced");
    }
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let pid = child.id().context("the server's pid")?;
    let mut input = BufWriter::new(child.stdin.take().context("server stdin")?);
    let mut output = BufReader::new(child.stdout.take().context("server stdout")?).lines();
    let mut stderr = child.stderr.take().context("server stderr")?;

    input
        .write_all(
            b"{\"jsonrpc\":\"2.0\",\"id\":0,\"method\":\"initialize\",\"params\":{\
              \"protocolVersion\":\"2025-06-18\",\"capabilities\":{},\
              \"clientInfo\":{\"name\":\"skein-bench\",\"version\":\"0\"}}}\n",
        )
        .await?;
    input.flush().await?;
    let answer = tokio::time::timeout(PROCESS_TIMEOUT, output.next_line())
        .await
        .context("no answer to initialize in time")??
        .context("the server closed before answering initialize")?;
    if !answer.contains("\"result\"") {
        bail!("initialize failed: {answer}");
    }
    input
        .write_all(b"{\"jsonrpc\":\"2.0\",\"method\":\"notifications/initialized\"}\n")
        .await?;
    input.flush().await?;

    let cpu_before = cpu_seconds(pid).context("reading the server's CPU time")?;
    let started = Instant::now();
    let writer = tokio::spawn(async move {
        for id in 1..=calls {
            let line = format!(
                "{{\"jsonrpc\":\"2.0\",\"id\":{id},\"method\":\"tools/call\",\"params\":\
                 {{\"name\":\"echo\",\"arguments\":{{\"text\":\"hello\"}}}}}}\n"
            );
            input.write_all(line.as_bytes()).await?;
        }
        input.flush().await?;
        anyhow::Ok(input)
    });
    let mut answered = 0u64;
    let read = tokio::time::timeout(PROCESS_TIMEOUT, async {
        while answered < calls {
            let Some(line) = output.next_line().await? else {
                bail!("the server closed after {answered} of {calls} answers");
            };
            if !line.contains("\"result\"") || line.contains("\"isError\":true") {
                bail!("a tools/call failed: {line}");
            }
            answered += 1;
        }
        anyhow::Ok(())
    })
    .await;
    let elapsed = started.elapsed();
    let cpu_after = cpu_seconds(pid).context("reading the server's CPU time")?;
    read.context("the answers did not all come in time")??;
    let input = writer.await??;
    drop(input);
    let status = tokio::time::timeout(PROCESS_TIMEOUT, child.wait())
        .await
        .context("the server did not exit once its input closed")??;
    let mut log = String::new();
    stderr.read_to_string(&mut log).await?;
    if !status.success() {
        bail!("the server exited with {status}: {log}");
    }
    let spans = log
        .lines()
        .find_map(|l| l.strip_prefix("bench-rmcp: exported "))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse::<u64>().ok());
    if traced && spans.is_none_or(|n| n < calls) {
        bail!("the traced server exported {spans:?} spans for {calls} calls: {log}");
    }
    Ok(McpSample {
        cpu_us_per_call: (cpu_after - cpu_before) * 1e6 / calls as f64,
        calls_per_s: calls as f64 / elapsed.as_secs_f64(),
        spans,
    })
}
