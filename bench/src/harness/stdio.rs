//! Clients over a server's stdin/stdout: the pipelined throughput run and
//! the connection abstraction the streaming scenario shares with
//! WebSocket.

use std::time::Instant;

use anyhow::{Context as _, bail};
use futures_util::SinkExt;
use skein_bench::{Canned, INITIALIZE, MODEL_LIST};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::process::{ChildStdin, ChildStdout};
use tokio_tungstenite::tungstenite::Message;

use super::servers::Running;
use super::wire::{INITIALIZE_PARAMS, Ids, Reply, request, request_id, shorten};
use super::ws::{IO_TIMEOUT, Socket, check_result, next_text};

/// One client connection over either transport.
pub enum Conn {
    /// A WebSocket.
    Ws(Box<Socket>),
    /// A child's stdin/stdout.
    Stdio {
        /// Lines from the server.
        reader: BufReader<ChildStdout>,
        /// Lines to the server.
        writer: ChildStdin,
    },
}

impl Conn {
    /// Takes the pipes of a stdio server.
    pub fn stdio(server: &mut Running) -> anyhow::Result<Self> {
        Ok(Conn::Stdio {
            reader: BufReader::with_capacity(
                1 << 16,
                server.stdout.take().context("stdio server stdout")?,
            ),
            writer: server.stdin.take().context("stdio server stdin")?,
        })
    }

    /// Sends one message.
    pub async fn send(&mut self, text: String) -> anyhow::Result<()> {
        match self {
            Conn::Ws(ws) => ws.send(Message::text(text)).await?,
            Conn::Stdio { writer, .. } => {
                writer.write_all(text.as_bytes()).await?;
                writer.write_all(b"\n").await?;
                writer.flush().await?;
            }
        }
        Ok(())
    }

    /// Receives one message; an error says how the connection ended.
    pub async fn recv(&mut self) -> anyhow::Result<String> {
        match self {
            Conn::Ws(ws) => next_text(ws).await,
            Conn::Stdio { reader, .. } => read_line(reader).await,
        }
    }
}

async fn read_line(reader: &mut BufReader<ChildStdout>) -> anyhow::Result<String> {
    let mut line = String::new();
    let n = tokio::time::timeout(IO_TIMEOUT, reader.read_line(&mut line))
        .await
        .context("timed out waiting for the server")??;
    if n == 0 {
        bail!("the server closed its stdout");
    }
    line.truncate(line.trim_end().len());
    Ok(line)
}

/// Sends `initialize` (id `request_id(0, 0)`) and waits for its answer.
pub async fn initialize(
    conn: &mut Conn,
    ids: &mut Ids,
    flags: &str,
    canned: Option<&Canned>,
) -> anyhow::Result<()> {
    let id = request_id(0, 0);
    conn.send(request(ids, id, INITIALIZE, INITIALIZE_PARAMS, flags))
        .await?;
    loop {
        let text = conn.recv().await?;
        let reply = Reply::parse(&text)?;
        if reply.id != Some(id) {
            continue;
        }
        if let Some(error) = reply.error {
            bail!("initialize failed: {error}");
        }
        if let Some(canned) = canned {
            check_result(&text, &canned.initialize, INITIALIZE)?;
        }
        return Ok(());
    }
}

/// What the stdio throughput run measured.
#[derive(Debug)]
pub struct ThroughputResult {
    /// Requests answered per second, first write to last response.
    pub requests_per_sec: f64,
    /// Every answered request: (method, id).
    pub answered: Vec<(&'static str, u64)>,
}

/// Writes `requests` pipelined `model/list` lines into a stdio server
/// while reading its answers concurrently; every id must be answered once.
pub async fn throughput(
    server: &mut Running,
    requests: u64,
    flags: &'static str,
    canned: &Canned,
) -> anyhow::Result<ThroughputResult> {
    let mut ids = Ids::new();
    let mut conn = Conn::stdio(server)?;
    initialize(&mut conn, &mut ids, flags, Some(canned)).await?;
    let Conn::Stdio { mut reader, writer } = conn else {
        bail!("not a stdio connection");
    };

    let start = Instant::now();
    let writer_task = tokio::spawn(async move {
        let mut out = BufWriter::with_capacity(1 << 16, writer);
        for seq in 1..=requests {
            let mut line = request(&mut ids, request_id(0, seq), MODEL_LIST, "{}", flags);
            line.push('\n');
            out.write_all(line.as_bytes()).await?;
        }
        out.flush().await?;
        anyhow::Ok(out.into_inner())
    });

    let total = usize::try_from(requests).context("too many requests")?;
    let mut seen = vec![false; total + 1];
    let mut answered = Vec::with_capacity(total + 1);
    answered.push((INITIALIZE, request_id(0, 0)));
    let mut checked = false;
    while answered.len() <= total {
        let text = read_line(&mut reader).await.with_context(|| {
            format!(
                "after {} of {requests} responses",
                answered.len().saturating_sub(1)
            )
        })?;
        let reply = Reply::parse(&text)?;
        let Some(id) = reply.id else { continue };
        if let Some(error) = reply.error {
            bail!("model/list failed: {error}");
        }
        let seq = usize::try_from(id & 0xffff_ffff).unwrap_or(usize::MAX);
        match seen.get_mut(seq) {
            Some(slot) if seq > 0 && !*slot => *slot = true,
            _ => bail!(
                "unexpected or repeated response id {id}: {}",
                shorten(&text)
            ),
        }
        if !checked {
            check_result(&text, &canned.model_list, MODEL_LIST)?;
            checked = true;
        }
        answered.push((MODEL_LIST, id));
    }
    let elapsed = start.elapsed();
    // Keep stdin open until every answer is in; the caller stops the server.
    let _stdin = writer_task.await??;
    Ok(ThroughputResult {
        requests_per_sec: requests as f64 / elapsed.as_secs_f64(),
        answered,
    })
}
