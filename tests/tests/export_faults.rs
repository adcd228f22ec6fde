//! Span export under faults, end to end against the real `skein` binary:
//! a collector that is down, a collector that never answers, and SIGTERM
//! in the middle of a load.
//!
//! The contract under test: OTLP export runs side by side with the local
//! store, every pipeline holds a bounded number of spans, export never
//! blocks a request, shutdown flushes within `--shutdown-timeout` per
//! pipeline and exits 0 whatever the collector does, and a pipeline that
//! lost spans says so in one `spans were dropped` warning with
//! `pipeline=`, `dropped=` and `exported=` fields.

mod support;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use support::{
    Client, Finished, SPAN_KIND_SERVER, Server, ServerOptions, TIMEOUT, Transport, next_request_id,
    notification_turn_id, turn_start_params, vm_rss_bytes,
};

/// Requests of the load in the stdio tests.
const REQUESTS: usize = 1_000;
/// Requests written before their responses are awaited.
const PIPELINE_DEPTH: usize = 50;
/// Requests after which the first memory sample is taken.
const WARM_UP_REQUESTS: usize = 100;

/// `--shutdown-timeout` of the stdio tests, in seconds.
const SHUTDOWN_TIMEOUT_SECS: &str = "2";

/// Ceiling on the server's resident memory during the load. An idle debug
/// build of `skein` is a few tens of MiB; each export pipeline holds at most
/// 2,048 spans of well under 4 KiB each (under 8 MiB per pipeline). 256 MiB
/// leaves several times that as headroom for allocator and runtime noise,
/// yet is far below what unbounded buffering (of spans, export requests,
/// retries or connections) grows to under a sustained failing export.
const MAX_RSS_BYTES: u64 = 256 * 1024 * 1024;

/// Allowed growth of resident memory between the sample after the first
/// 100 requests and the one after all 1,000. Exceeding it means more than
/// 70 KiB retained per request, over an order of magnitude more than a
/// request span and its share of an export batch: a leak, not caching.
/// Allocator arenas and thread stacks settle within the first 100 requests.
const MAX_RSS_GROWTH_BYTES: u64 = 64 * 1024 * 1024;

/// How long a shutdown with a collector that never answers may take before
/// it counts as a hang. Span flushing is bounded by 2 s per pipeline (the
/// final metrics export, also to the silent collector, adds up to 5 s of
/// its own: about 7 s in all). 60 s only guards against shutdown waiting on
/// the collector (whose export timeout alone is 10 s per batch), not
/// against a slow machine.
const SLOW_COLLECTOR_EXIT_LIMIT: Duration = Duration::from_secs(60);

/// Connections of the SIGTERM test.
const CONNECTIONS: usize = 3;
/// Upper bound on the `model/list` requests of one connection; SIGTERM
/// comes long before any connection gets there.
const MAX_REQUESTS_PER_CONNECTION: usize = 2_000;
/// `model/list` responses (over all connections) after which SIGTERM is
/// sent.
const RESPONSES_BEFORE_SIGTERM: usize = 300;
/// Echo delay that keeps each connection's turn streaming until shutdown.
const HOLD_DELAY_MS: u64 = 60_000;
/// Input of a held turn: several words, each followed by the hold delay.
const LONG_INPUT: &str = "one two three four five six seven eight nine ten eleven twelve";

/// An OTLP endpoint where nothing listens: a port bound, then released,
/// so that connecting is refused.
async fn refused_endpoint() -> String {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a port for the refused endpoint");
    let port = listener.local_addr().expect("local addr").port();
    drop(listener);
    format!("http://127.0.0.1:{port}")
}

/// A collector that accepts connections and reads what it is sent, but
/// never answers. Connections stay open for the test's life.
struct SilentCollector {
    endpoint: String,
    /// The request line (`POST /v1/traces HTTP/1.1`) of each connection.
    requests: watch::Receiver<Vec<String>>,
    task: JoinHandle<()>,
}

impl SilentCollector {
    async fn start() -> SilentCollector {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the silent collector");
        let port = listener.local_addr().expect("local addr").port();
        let (requests_tx, requests) = watch::channel(Vec::new());
        let requests_tx = Arc::new(requests_tx);
        let task = tokio::spawn(async move {
            let mut readers = Vec::new();
            while let Ok((mut stream, _)) = listener.accept().await {
                let requests_tx = Arc::clone(&requests_tx);
                // Read and discard the request, so the exporter waits for a
                // response rather than on a full socket buffer; keep the
                // connection open (the task owns it) and never write.
                readers.push(tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut reported = false;
                    let mut buf = vec![0u8; 64 * 1024];
                    while let Ok(n @ 1..) = stream.read(&mut buf).await {
                        if reported {
                            continue;
                        }
                        head.extend_from_slice(&buf[..n]);
                        if let Some(end) = head.windows(2).position(|w| w == b"\r\n") {
                            let line = String::from_utf8_lossy(&head[..end]).into_owned();
                            requests_tx.send_modify(|all| all.push(line));
                            reported = true;
                        }
                    }
                    // Hold the half-closed connection until the test ends.
                    std::future::pending::<()>().await;
                    drop(stream);
                }));
            }
        });
        SilentCollector {
            endpoint: format!("http://127.0.0.1:{port}"),
            requests,
            task,
        }
    }

    /// Waits until a request to `path` has arrived, returns its request
    /// line.
    async fn wait_for_request(&mut self, path: &str) -> String {
        let found = |all: &Vec<String>| all.iter().find(|l| l.contains(path)).cloned();
        let _ =
            tokio::time::timeout(TIMEOUT, self.requests.wait_for(|all| found(all).is_some())).await;
        let seen = self.requests.borrow().clone();
        found(&seen).unwrap_or_else(|| {
            panic!(
                "no request to {path} reached the silent collector at {} within {TIMEOUT:?}; \
                 request lines seen: {seen:?}",
                self.endpoint
            )
        })
    }
}

impl Drop for SilentCollector {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Options of a stdio server exporting to `endpoint` besides its local
/// store, with the short shutdown timeout.
fn otlp_options(endpoint: &str) -> ServerOptions {
    ServerOptions::default()
        .arg("--otlp-endpoint")
        .arg(endpoint)
        .arg("--otlp-protocol")
        .arg("http/protobuf")
        .arg("--shutdown-timeout")
        .arg(SHUTDOWN_TIMEOUT_SECS)
}

/// What the stdio load left behind.
struct Load {
    /// Ids of every request sent (initialize first); each got its response.
    request_ids: Vec<i64>,
    rss_after_warm_up: u64,
    rss_after_all: u64,
}

/// Initializes, then sends [`REQUESTS`] `model/list` requests,
/// [`PIPELINE_DEPTH`] at a time, checking each gets a successful response;
/// samples the server's memory after [`WARM_UP_REQUESTS`] and at the end.
async fn run_stdio_load(client: &mut Client, pid: u32) -> Load {
    let initialize = client.initialize("e2e-export-faults", "0.0.1").await;
    let mut request_ids = vec![initialize.id];
    let mut rss_after_warm_up = None;
    let mut answered = 0;
    while answered < REQUESTS {
        let depth = PIPELINE_DEPTH.min(REQUESTS - answered);
        let mut ids = Vec::with_capacity(depth);
        for _ in 0..depth {
            ids.push(client.send_request("model/list", json!({}), None).await);
        }
        for id in ids {
            let response = client.recv_response(id).await;
            response.result();
            request_ids.push(id);
            answered += 1;
        }
        if rss_after_warm_up.is_none() && answered >= WARM_UP_REQUESTS {
            rss_after_warm_up = Some(vm_rss_bytes(pid));
        }
    }
    Load {
        request_ids,
        rss_after_warm_up: rss_after_warm_up.expect("the warm-up sample was taken"),
        rss_after_all: vm_rss_bytes(pid),
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn assert_memory_bounded(load: &Load) {
    let (early, late) = (load.rss_after_warm_up, load.rss_after_all);
    eprintln!(
        "server VmRSS: {:.1} MiB after {WARM_UP_REQUESTS} requests, {:.1} MiB after {REQUESTS}",
        mib(early),
        mib(late)
    );
    for (sample, when) in [(early, "the warm-up"), (late, "all requests")] {
        assert!(
            sample < MAX_RSS_BYTES,
            "server VmRSS after {when} is {:.1} MiB, above the {:.0} MiB ceiling",
            mib(sample),
            mib(MAX_RSS_BYTES)
        );
    }
    assert!(
        late.saturating_sub(early) <= MAX_RSS_GROWTH_BYTES,
        "server VmRSS grew from {:.1} MiB to {:.1} MiB between {WARM_UP_REQUESTS} and {REQUESTS} \
         requests, more than the allowed {:.0} MiB",
        mib(early),
        mib(late),
        mib(MAX_RSS_GROWTH_BYTES)
    );
}

/// The `dropped=` and `exported=` counts of one pipeline's drop warning.
#[derive(Debug)]
struct DropReport {
    line: String,
    dropped: u64,
    exported: u64,
}

/// The integer value of `key=N` in a log line.
fn int_field(line: &str, key: &str) -> Option<u64> {
    let needle = format!(" {key}=");
    let start = line.find(&needle)? + needle.len();
    let digits: String = line[start..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// Every `spans were dropped` line about `pipeline`.
fn drop_lines<'a>(finished: &'a Finished, pipeline: &str) -> Vec<&'a String> {
    let field = format!("pipeline=\"{pipeline}\"");
    finished
        .stderr()
        .iter()
        .filter(|line| line.contains("spans were dropped") && line.contains(&field))
        .collect()
}

/// The one drop warning of `pipeline`, which must be a WARN line with
/// integer `dropped=` and `exported=` fields.
fn drop_report(finished: &Finished, pipeline: &str) -> DropReport {
    let lines = drop_lines(finished, pipeline);
    let [line] = lines.as_slice() else {
        panic!(
            "expected exactly one `spans were dropped` line with pipeline=\"{pipeline}\" on \
             stderr, found {}: {lines:#?}",
            lines.len()
        );
    };
    assert!(line.contains(" WARN "), "not a warning: {line}");
    let field = |key: &str| {
        int_field(line, key)
            .unwrap_or_else(|| panic!("no integer {key}= field in the drop warning: {line}"))
    };
    DropReport {
        line: (*line).clone(),
        dropped: field("dropped"),
        exported: field("exported"),
    }
}

/// Asserts the OTLP pipeline reported every span of the load as dropped:
/// the collector could take none of them.
fn assert_otlp_drops_reported(finished: &Finished, load: &Load) {
    let report = drop_report(finished, "otlp");
    eprintln!("otlp drop warning: {}", report.line);
    let request_spans = load.request_ids.len() as u64;
    assert!(
        report.dropped >= request_spans,
        "the collector received nothing, so all {request_spans} request spans (at least) are \
         lost, but the warning says dropped={}: {}",
        report.dropped,
        report.line
    );
    assert_eq!(
        report.exported, 0,
        "the collector never accepted a span, but the warning says exported={}: {}",
        report.exported, report.line
    );
}

/// Request spans (SERVER kind) in the store, counted per `rpc.request_id`.
fn request_span_counts(finished: &Finished) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for span in &finished.spans {
        if span.kind != SPAN_KIND_SERVER {
            continue;
        }
        if let Some(id) = span.attr_str("rpc.request_id") {
            *counts.entry(id).or_insert(0) += 1;
        }
    }
    counts
}

/// Asserts the local store holds exactly one finished request span for
/// each of `ids`, and that its pipeline reported no loss.
fn assert_local_store_complete(finished: &Finished, ids: &[i64]) {
    let counts = request_span_counts(finished);
    let missing: Vec<i64> = ids
        .iter()
        .copied()
        .filter(|id| counts.get(&id.to_string()).copied().unwrap_or(0) == 0)
        .collect();
    let duplicated: Vec<i64> = ids
        .iter()
        .copied()
        .filter(|id| counts.get(&id.to_string()).copied().unwrap_or(0) > 1)
        .collect();
    assert!(
        missing.is_empty() && duplicated.is_empty(),
        "the local store must hold one request span per request ({} requests): {} missing \
         (first: {:?}), {} duplicated (first: {:?})",
        ids.len(),
        missing.len(),
        missing.iter().take(10).collect::<Vec<_>>(),
        duplicated.len(),
        duplicated.iter().take(10).collect::<Vec<_>>()
    );
    let open = finished.open_spans();
    assert!(
        open.is_empty(),
        "spans left in progress in the local store: {open:#?}"
    );
    let store_drops = drop_lines(finished, "local store");
    assert!(
        store_drops.is_empty(),
        "the local store lost nothing, yet reported drops: {store_drops:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collector_down_requests_are_all_answered_and_drops_are_reported() {
    let endpoint = refused_endpoint().await;
    let mut server = Server::start_with(Transport::Stdio, otlp_options(&endpoint)).await;
    let pid = server.pid();
    let mut client = server.connect().await;

    let load = run_stdio_load(&mut client, pid).await;
    assert_eq!(load.request_ids.len(), REQUESTS + 1);
    assert_memory_bounded(&load);

    // EOF on stdin; asserts exit code 0.
    let finished = server.shutdown().await;
    assert_otlp_drops_reported(&finished, &load);
    assert_local_store_complete(&finished, &load.request_ids);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_collector_does_not_block_requests_or_shutdown() {
    let mut collector = SilentCollector::start().await;
    let mut server = Server::start_with(Transport::Stdio, otlp_options(&collector.endpoint)).await;
    let pid = server.pid();
    let mut client = server.connect().await;

    // Every response arrives (each within the harness timeout) although
    // the exporter is stuck on the collector.
    let load = run_stdio_load(&mut client, pid).await;
    assert_eq!(load.request_ids.len(), REQUESTS + 1);
    assert_memory_bounded(&load);

    // EOF on stdin; asserts exit code 0 within the hang limit.
    let shutdown_started = Instant::now();
    let finished = server.shutdown_within(SLOW_COLLECTOR_EXIT_LIMIT).await;
    eprintln!(
        "shutdown with a silent collector took {:?}",
        shutdown_started.elapsed()
    );
    // Span export did reach the collector (and hung there): this was the
    // slow-collector case, not a refused connection.
    let request = collector.wait_for_request("/v1/traces").await;
    assert!(request.starts_with("POST "), "{request}");
    assert_otlp_drops_reported(&finished, &load);
    assert_local_store_complete(&finished, &load.request_ids);
}

/// What one connection of the SIGTERM test saw.
struct ConnectionOutcome {
    /// Ids of every request whose response arrived.
    answered: Vec<i64>,
    /// The turn held open on this connection.
    turn_id: String,
    /// `model/list` requests answered.
    model_lists: usize,
    /// Whether the server closed the connection before the request quota
    /// was used up.
    cut_off: bool,
}

/// Sets one connection up (initialize, a thread with a turn held open),
/// then sends `model/list` requests one after another until the server
/// closes the connection, counting responses into `progress`.
async fn run_connection(
    mut client: Client,
    index: usize,
    progress: Arc<watch::Sender<usize>>,
) -> ConnectionOutcome {
    let mut answered = Vec::new();
    let initialize = client
        .initialize(&format!("e2e-sigterm-{index}"), "0.0.1")
        .await;
    answered.push(initialize.id);

    let thread = client.request("thread/start", json!({}), None).await;
    answered.push(thread.id);
    let thread_id = thread.thread_id();
    let turn = client
        .request(
            "turn/start",
            turn_start_params(&thread_id, LONG_INPUT),
            None,
        )
        .await;
    answered.push(turn.id);
    let turn_id = turn.turn_id();
    // The turn streams (and its span is open) from now until shutdown.
    client
        .wait_for_notification(&format!("first delta of turn {turn_id}"), |n| {
            n["method"] == "item/agentMessage/delta"
                && notification_turn_id(n) == Some(turn_id.as_str())
        })
        .await;

    let mut model_lists = 0;
    let mut cut_off = false;
    for _ in 0..MAX_REQUESTS_PER_CONNECTION {
        let id = next_request_id();
        let request = json!({"jsonrpc": "2.0", "id": id, "method": "model/list", "params": {}});
        if !client.try_send(request).await {
            cut_off = true;
            break;
        }
        match client.try_recv_response(id).await {
            Some(_response) => {
                // Answered (before or during shutdown): its span must be
                // in the store whatever the outcome.
                answered.push(id);
                model_lists += 1;
                progress.send_modify(|n| *n += 1);
            }
            None => {
                cut_off = true;
                break;
            }
        }
    }
    ConnectionOutcome {
        answered,
        turn_id,
        model_lists,
        cut_off,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_load_keeps_every_finished_span() {
    let options = ServerOptions::default().echo_delay_ms(HOLD_DELAY_MS);
    let mut server = Server::start_with(Transport::WebSocket, options).await;

    let (progress_tx, mut progress) = watch::channel(0usize);
    let progress_tx = Arc::new(progress_tx);
    let mut connections = Vec::new();
    for index in 0..CONNECTIONS {
        let client = server.connect().await;
        connections.push(tokio::spawn(run_connection(
            client,
            index,
            Arc::clone(&progress_tx),
        )));
    }

    // Hundreds of requests answered and the load still running: SIGTERM.
    let loaded = tokio::time::timeout(
        TIMEOUT,
        progress.wait_for(|n| *n >= RESPONSES_BEFORE_SIGTERM),
    )
    .await
    .map(|seen| seen.is_ok());
    assert!(
        matches!(loaded, Ok(true)),
        "fewer than {RESPONSES_BEFORE_SIGTERM} responses within {TIMEOUT:?} (got {})",
        *progress.borrow()
    );
    let answered_at_sigterm = *progress.borrow();
    // Sends SIGTERM, asserts exit code 0, reads the store.
    let finished = server.shutdown().await;

    let mut outcomes = Vec::new();
    for connection in connections {
        let outcome = tokio::time::timeout(TIMEOUT, connection)
            .await
            .expect("a client connection did not end after the server exited")
            .expect("a client connection task failed");
        outcomes.push(outcome);
    }
    let total_model_lists: usize = outcomes.iter().map(|o| o.model_lists).sum();
    eprintln!(
        "model/list responses: {answered_at_sigterm} before SIGTERM was sent, {total_model_lists} \
         in all; per connection: {:?}",
        outcomes
            .iter()
            .map(|o| (o.model_lists, o.cut_off))
            .collect::<Vec<_>>()
    );
    assert!(
        outcomes.iter().any(|o| o.cut_off),
        "no connection was cut off by the shutdown: SIGTERM did not land during the load"
    );

    // Every answered request has its request span in the store.
    let counts = request_span_counts(&finished);
    let answered: Vec<i64> = outcomes
        .iter()
        .flat_map(|o| o.answered.iter().copied())
        .collect();
    assert_eq!(
        answered.len(),
        answered.iter().collect::<HashSet<_>>().len(),
        "request ids are unique"
    );
    let missing: Vec<i64> = answered
        .iter()
        .copied()
        .filter(|id| !counts.contains_key(&id.to_string()))
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} answered requests have no request span in the store (first: {:?})",
        missing.len(),
        answered.len(),
        missing.iter().take(10).collect::<Vec<_>>()
    );

    // No span is left in progress. The held turns make this meaningful:
    // each had an in-progress record, which its finished record (written
    // when shutdown interrupted the turn) must supersede.
    for outcome in &outcomes {
        let turn = finished.turn_span(&outcome.turn_id);
        assert!(
            finished
                .records
                .iter()
                .any(|r| r.same_span(turn) && r.is_in_progress()),
            "the held turn {} has no in-progress record: {turn}",
            outcome.turn_id
        );
    }
    let open = finished.open_spans();
    assert!(
        open.is_empty(),
        "{} spans left in progress in the store: {open:#?}",
        open.len()
    );
}
