//! The memory scenario: resident memory of an idle server, with many idle
//! initialized WebSocket connections, and after they close.

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures_util::{StreamExt, stream};
use skein_bench::INITIALIZE;

use super::servers::{Running, open_fds, rss_kib};
use super::wire::{Ids, request_id};
use super::ws::{IO_TIMEOUT, connect_initialized};

/// Connections opened (and closed) at once.
const PARALLEL: usize = 64;
/// RSS counts as settled when it moved less than this over [`SETTLE_SPAN`].
const SETTLE_KIB: u64 = 256;
const SETTLE_SPAN: Duration = Duration::from_secs(1);
const SAMPLE_EVERY: Duration = Duration::from_millis(250);
/// Longest wait for RSS to settle.
const SETTLE_BOUND: Duration = Duration::from_secs(15);

/// RSS readings of one server, KiB.
#[derive(Clone, Debug)]
pub struct RssResult {
    /// Idle, before any connection.
    pub idle_kib: u64,
    /// With every connection open and initialized.
    pub open_kib: u64,
    /// After they all closed.
    pub closed_kib: u64,
    /// (open - idle) / connections.
    pub per_connection_kib: f64,
    /// Open file descriptors of the server after the connections closed,
    /// minus those it had idle (0 when every connection was released).
    pub fds_left: i64,
    /// Whether RSS was still moving when the wait for it to settle ended.
    pub unsettled: bool,
    /// Every answered request: (method, id).
    pub answered: Vec<(&'static str, u64)>,
}

/// Measures `server` with `connections` idle connections.
pub async fn run(
    server: &Running,
    connections: usize,
    flags: &'static str,
) -> anyhow::Result<RssResult> {
    let pid = server.pid;
    let url = server.ws_url.clone().context("not a WebSocket server")?;
    let (idle_kib, _) = settle(pid).await?;
    let idle_fds = open_fds(pid).unwrap_or(0);

    let opened: Vec<anyhow::Result<_>> = stream::iter(0..connections)
        .map(|connection| {
            let url = url.clone();
            async move {
                let mut ids = Ids::new();
                connect_initialized(&url, connection, flags, &mut ids, None)
                    .await
                    .with_context(|| format!("connection {connection}"))
            }
        })
        .buffer_unordered(PARALLEL)
        .collect()
        .await;
    let mut sockets = Vec::with_capacity(connections);
    let mut failed = Vec::new();
    for result in opened {
        match result {
            Ok(socket) => sockets.push(socket),
            Err(err) => failed.push(format!("{err:#}")),
        }
    }
    if !failed.is_empty() {
        bail!(
            "{} of {connections} connections failed, first: {}",
            failed.len(),
            failed[0]
        );
    }
    let (open_kib, _) = settle(pid).await?;

    stream::iter(sockets)
        .for_each_concurrent(PARALLEL, |mut ws| async move {
            let _ = ws.close(None).await;
            let _ = tokio::time::timeout(IO_TIMEOUT, async {
                while let Some(Ok(_)) = ws.next().await {}
            })
            .await;
        })
        .await;
    let (closed_kib, unsettled) = settle(pid).await?;
    let fds_left = open_fds(pid).unwrap_or(0) as i64 - idle_fds as i64;

    Ok(RssResult {
        idle_kib,
        open_kib,
        closed_kib,
        per_connection_kib: (open_kib as f64 - idle_kib as f64) / connections as f64,
        fds_left,
        unsettled,
        answered: (0..connections)
            .map(|c| (INITIALIZE, request_id(c, 0)))
            .collect(),
    })
}

/// Samples VmRSS until it stays within [`SETTLE_KIB`] for [`SETTLE_SPAN`],
/// or [`SETTLE_BOUND`] passes; returns the last sample and whether the
/// bound cut the wait short.
async fn settle(pid: u32) -> anyhow::Result<(u64, bool)> {
    let began = Instant::now();
    let keep = (SETTLE_SPAN.as_millis() / SAMPLE_EVERY.as_millis()) as usize + 1;
    let mut samples: Vec<u64> = Vec::new();
    loop {
        let rss = rss_kib(pid).context("reading the server's VmRSS (did it exit?)")?;
        samples.push(rss);
        if samples.len() > keep {
            samples.remove(0);
        }
        let settled = samples.len() == keep
            && samples.iter().max().unwrap_or(&0) - samples.iter().min().unwrap_or(&0)
                <= SETTLE_KIB;
        if settled || began.elapsed() >= SETTLE_BOUND {
            return Ok((rss, !settled));
        }
        tokio::time::sleep(SAMPLE_EVERY).await;
    }
}
