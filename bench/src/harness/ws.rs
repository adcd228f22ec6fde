//! The WebSocket load generator: `connections` connections, each keeping
//! `in_flight` pipelined `model/list` requests outstanding, over a warmup
//! and a measured window.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use skein_bench::{Canned, INITIALIZE, MODEL_LIST};
use tokio::net::TcpStream;
use tokio::sync::{Barrier, watch};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::servers::cpu_seconds;
use super::wire::{INITIALIZE_PARAMS, Ids, Reply, request, request_id, shorten};

/// Bound on any single wait for the server.
pub const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// A client WebSocket.
pub type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Connections × requests in flight per connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Shape {
    /// Concurrent connections.
    pub connections: usize,
    /// Pipelined requests per connection.
    pub in_flight: usize,
}

impl std::fmt::Display for Shape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}x{}", self.connections, self.in_flight)
    }
}

/// Timing of one load run.
#[derive(Clone, Copy, Debug)]
pub struct Window {
    /// Load before measuring.
    pub warmup: Duration,
    /// The measured window.
    pub measured: Duration,
}

/// What one load run measured.
#[derive(Debug, Default)]
pub struct LoadResult {
    /// Responses received in the measured window per second.
    pub requests_per_sec: f64,
    /// Median latency, microseconds.
    pub p50_us: f64,
    /// 99th percentile latency, microseconds.
    pub p99_us: f64,
    /// Server CPU (user + system) per request in the window, microseconds.
    pub cpu_us_per_request: Option<f64>,
    /// Every answered request: (method, id).
    pub answered: Vec<(&'static str, u64)>,
}

/// Opens a connection and initializes it (untimed), with request id
/// `request_id(connection, 0)`; checks the result when `canned` is given.
pub async fn connect_initialized(
    url: &str,
    connection: usize,
    flags: &str,
    ids: &mut Ids,
    canned: Option<&Canned>,
) -> anyhow::Result<Socket> {
    let (mut ws, _) = tokio::time::timeout(IO_TIMEOUT, tokio_tungstenite::connect_async(url))
        .await
        .context("timed out connecting")?
        .with_context(|| format!("connecting to {url}"))?;
    let id = request_id(connection, 0);
    ws.send(Message::text(request(
        ids,
        id,
        INITIALIZE,
        INITIALIZE_PARAMS,
        flags,
    )))
    .await?;
    loop {
        let text = next_text(&mut ws).await?;
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
        return Ok(ws);
    }
}

/// Checks a full response's `result` against the expected one.
pub fn check_result(text: &str, expected: &Value, method: &str) -> anyhow::Result<()> {
    let value: Value = serde_json::from_str(text)?;
    // Each Skein instance runs in a home of its own, which `initialize`
    // names: the one field allowed to differ.
    let comparable = |v: Option<&Value>| {
        v.cloned().map(|mut v| {
            if let Some(object) = v.as_object_mut() {
                object.remove("codexHome");
            }
            v
        })
    };
    if comparable(value.get("result")) != comparable(Some(expected)) {
        bail!(
            "{method} answered differently from Skein: {}",
            shorten(text)
        );
    }
    Ok(())
}

/// The next text frame, failing on close, end or timeout.
pub async fn next_text(ws: &mut Socket) -> anyhow::Result<String> {
    loop {
        let message = tokio::time::timeout(IO_TIMEOUT, ws.next())
            .await
            .context("timed out waiting for the server")?;
        match message {
            Some(Ok(Message::Text(text))) => return Ok(text.as_str().to_owned()),
            Some(Ok(Message::Close(frame))) => bail!(
                "connection closed by the server{}",
                frame
                    .map(|f| format!(" ({} {})", u16::from(f.code), f.reason))
                    .unwrap_or_default()
            ),
            Some(Ok(_)) => continue,
            Some(Err(err)) => return Err(err).context("reading from the server"),
            None => bail!("connection ended without a close frame"),
        }
    }
}

/// Runs the load against `url` while measuring the server process `pid`.
pub async fn run(
    url: &str,
    pid: u32,
    shape: Shape,
    window: Window,
    flags: &'static str,
    canned: Arc<Canned>,
) -> anyhow::Result<LoadResult> {
    let ready = Arc::new(Barrier::new(shape.connections + 1));
    let (start_tx, start_rx) = watch::channel(None::<Instant>);
    let mut tasks = Vec::with_capacity(shape.connections);
    for connection in 0..shape.connections {
        let url = url.to_owned();
        let ready = Arc::clone(&ready);
        let start_rx = start_rx.clone();
        let canned = Arc::clone(&canned);
        tasks.push(tokio::spawn(async move {
            let mut ids = Ids::new();
            let ws = connect_initialized(&url, connection, flags, &mut ids, Some(&canned)).await;
            ready.wait().await;
            let ws = ws?;
            drive(
                ws,
                connection,
                shape.in_flight,
                window,
                flags,
                start_rx,
                ids,
                &canned,
            )
            .await
        }));
    }
    ready.wait().await;
    let t0 = Instant::now();
    let _ = start_tx.send(Some(t0));
    let window_start = t0 + window.warmup;
    tokio::time::sleep_until(window_start.into()).await;
    let cpu_before = cpu_seconds(pid);
    tokio::time::sleep_until((window_start + window.measured).into()).await;
    let cpu_after = cpu_seconds(pid);

    let mut latencies = Vec::new();
    let mut answered = Vec::new();
    let mut errors = Vec::new();
    for task in tasks {
        match task.await {
            Ok(Ok(done)) => {
                latencies.extend(done.latencies_us);
                answered.extend(done.answered);
            }
            Ok(Err(err)) => errors.push(format!("{err:#}")),
            Err(err) => errors.push(format!("load task failed: {err}")),
        }
    }
    if !errors.is_empty() {
        errors.dedup();
        bail!(
            "{} of {} connections failed: {}",
            errors.len(),
            shape.connections,
            errors.join("; ")
        );
    }
    latencies.sort_unstable();
    let count = latencies.len();
    let cpu_us_per_request = match (cpu_before, cpu_after) {
        (Some(before), Some(after)) if count > 0 => Some((after - before) * 1e6 / count as f64),
        _ => None,
    };
    Ok(LoadResult {
        requests_per_sec: count as f64 / window.measured.as_secs_f64(),
        p50_us: percentile(&latencies, 0.50),
        p99_us: percentile(&latencies, 0.99),
        cpu_us_per_request,
        answered,
    })
}

struct ConnectionDone {
    latencies_us: Vec<u32>,
    answered: Vec<(&'static str, u64)>,
}

#[allow(clippy::too_many_arguments)]
async fn drive(
    mut ws: Socket,
    connection: usize,
    in_flight: usize,
    window: Window,
    flags: &'static str,
    mut start: watch::Receiver<Option<Instant>>,
    mut ids: Ids,
    canned: &Canned,
) -> anyhow::Result<ConnectionDone> {
    let t0 = loop {
        if let Some(t0) = *start.borrow_and_update() {
            break t0;
        }
        start.changed().await?;
    };
    let window_start = t0 + window.warmup;
    let window_end = window_start + window.measured;
    let mut answered = vec![(INITIALIZE, request_id(connection, 0))];
    let mut latencies_us = Vec::new();
    let mut sent: HashMap<u64, Instant> = HashMap::with_capacity(in_flight * 2);
    let mut seq = 0u64;
    let mut checked = false;

    for _ in 0..in_flight {
        seq += 1;
        let id = request_id(connection, seq);
        ws.feed(Message::text(request(
            &mut ids, id, MODEL_LIST, "{}", flags,
        )))
        .await?;
        sent.insert(id, Instant::now());
    }
    ws.flush().await?;

    while !sent.is_empty() {
        let text = next_text(&mut ws).await?;
        let now = Instant::now();
        let reply = Reply::parse(&text)?;
        let Some(id) = reply.id else { continue };
        let Some(at) = sent.remove(&id) else {
            bail!("response to an unknown id {id}: {}", shorten(&text));
        };
        if let Some(error) = reply.error {
            bail!("model/list failed: {error}");
        }
        if !checked {
            check_result(&text, &canned.model_list, MODEL_LIST)?;
            checked = true;
        }
        answered.push((MODEL_LIST, id));
        if now >= window_start && now < window_end {
            let micros = now.duration_since(at).as_micros();
            latencies_us.push(u32::try_from(micros).unwrap_or(u32::MAX));
        }
        if now < window_end {
            seq += 1;
            let id = request_id(connection, seq);
            ws.send(Message::text(request(
                &mut ids, id, MODEL_LIST, "{}", flags,
            )))
            .await?;
            sent.insert(id, Instant::now());
        }
    }
    let _ = ws.close(None).await;
    // Read until the server's close (or the end), so the server sees an
    // orderly close.
    let _ = tokio::time::timeout(IO_TIMEOUT, async {
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
    Ok(ConnectionDone {
        latencies_us,
        answered,
    })
}

/// The `q` quantile (0..=1) of sorted values, nearest rank.
pub fn percentile(sorted: &[u32], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    f64::from(sorted[rank - 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_uses_nearest_rank() {
        let values: Vec<u32> = (1..=100).collect();
        assert_eq!(percentile(&values, 0.50), 50.0);
        assert_eq!(percentile(&values, 0.99), 99.0);
        assert_eq!(percentile(&[7], 0.99), 7.0);
        assert!(percentile(&[], 0.5).is_nan());
    }
}
