//! Soak: fifty WebSocket clients at once, each running its own mix of
//! unary requests, turns, interrupts, batches and malformed frames, some
//! leaving abruptly, then SIGTERM. Afterwards the server must have exited
//! cleanly and its records must be whole: one request span per answered
//! request under the client's own span, one closed span per turn, no span
//! left in progress, and every turn in the thread history.
//!
//! The amount of work is bounded by operations per client, not by time;
//! each client's mix comes from a generator seeded with its index, so a
//! run is repeatable up to the interleaving of the clients.

mod support;

use std::collections::{HashMap, HashSet};

use serde_json::{Value, json};

use support::{
    Client, INVALID_REQUEST, PARSE_ERROR, Response, Server, ServerOptions, TURN_SPAN_NAME,
    TraceContext, Transport, next_request_id, turn_start_params,
};

/// Clients connected at once.
const CLIENTS: usize = 50;
/// Operations each client runs (fewer when it leaves early).
const OPS_PER_CLIENT: usize = 30;
/// The echo model's wait between streamed words: turns overlap and an
/// interrupt can catch a turn running.
const ECHO_DELAY_MS: u64 = 5;
/// Input of an ordinary turn: a few words, one delta each.
const SHORT_INPUT: &str = "soak turns stream these words";
/// Input of a turn that is interrupted: long enough to still be running.
const LONG_INPUT: &str = "one two three four five six seven eight nine ten eleven twelve \
                          thirteen fourteen fifteen sixteen seventeen eighteen nineteen twenty";

/// A small deterministic generator (xorshift64*), one per client.
struct Rng(u64);

impl Rng {
    fn new(seed: usize) -> Self {
        Self(0x9E37_79B9_7F4A_7C15 ^ (seed as u64 + 1).wrapping_mul(0xBF58_476D_1CE4_E5B9))
    }

    /// A number in `0..n`.
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 33) as usize % n
    }
}

/// How a client's session ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// Runs every operation, then closes with a close handshake.
    Close,
    /// Drops its TCP stream without a word at this operation.
    Drop { at: usize },
    /// Sends a text frame that is not UTF-8 at this operation; the server
    /// closes the connection (1007).
    InvalidUtf8 { at: usize },
}

fn ending_of(index: usize, rng: &mut Rng) -> Ending {
    let at = OPS_PER_CLIENT / 4 + rng.below(OPS_PER_CLIENT * 3 / 4);
    match index % 10 {
        4 | 9 => Ending::Drop { at },
        7 => Ending::InvalidUtf8 { at },
        _ => Ending::Close,
    }
}

/// A request whose answer arrived, with the client span it continued.
struct Answered {
    id: i64,
    method: &'static str,
    parent: TraceContext,
}

/// A turn whose `turn/start` was answered.
struct SeenTurn {
    id: String,
    thread_id: String,
    /// The status its `turn/completed` reported; `None` when the client
    /// left before it came.
    status: Option<String>,
}

/// What one client did and saw.
#[derive(Default)]
struct Report {
    answered: Vec<Answered>,
    turns: Vec<SeenTurn>,
    threads: Vec<String>,
    /// Malformed frames answered with an error.
    malformed: usize,
    /// The ending it ran.
    ending: Option<Ending>,
}

/// One client's session: its connection and what it has seen so far.
struct Session {
    index: usize,
    client: Client,
    report: Report,
}

impl Session {
    /// Sends a request continuing a fresh client span; records and
    /// returns its answer (a result or an error: either is an answer).
    async fn request(&mut self, method: &'static str, params: Value) -> Response {
        let parent = TraceContext::random();
        let response = self
            .client
            .request(method, params, Some(parent.carrier()))
            .await;
        self.report.answered.push(Answered {
            id: response.id,
            method,
            parent,
        });
        response
    }

    async fn start_thread(&mut self) -> String {
        let thread_id = self.request("thread/start", json!({})).await.thread_id();
        self.report.threads.push(thread_id.clone());
        thread_id
    }

    /// One of this client's threads, picked by `rng`.
    fn some_thread(&self, rng: &mut Rng) -> String {
        let threads = &self.report.threads;
        threads[rng.below(threads.len())].clone()
    }

    /// Starts a turn; returns its id and records it.
    async fn start_turn(&mut self, thread_id: &str, input: &str) -> String {
        let response = self
            .request("turn/start", turn_start_params(thread_id, input))
            .await;
        support::check_turn_started_result(&response);
        let turn_id = response.turn_id();
        self.report.turns.push(SeenTurn {
            id: turn_id.clone(),
            thread_id: thread_id.to_owned(),
            status: None,
        });
        turn_id
    }

    /// Runs a turn to its end, interrupting it first when asked.
    async fn run_turn(&mut self, rng: &mut Rng, interrupt: bool) {
        let thread_id = self.some_thread(rng);
        let input = if interrupt { LONG_INPUT } else { SHORT_INPUT };
        let turn_id = self.start_turn(&thread_id, input).await;
        if interrupt {
            // Answered with a result while the turn runs, with an error
            // if it ended first: an answer either way.
            self.request(
                "turn/interrupt",
                json!({"threadId": thread_id, "turnId": turn_id}),
            )
            .await;
        }
        let completed = self.client.wait_for_turn_completed(&turn_id).await;
        let status = completed["params"]["turn"]["status"]
            .as_str()
            .unwrap_or_else(|| panic!("turn/completed without a status: {completed}"))
            .to_owned();
        if !interrupt {
            assert_eq!(status, "completed", "client {}: {completed}", self.index);
        }
        let seen = self
            .report
            .turns
            .last_mut()
            .expect("the turn was just recorded");
        seen.status = Some(status);
        // The turn's other notifications are of no further interest.
        self.client.take_notifications(|_| true);
    }

    /// A batch of two requests, each continuing its own client span.
    async fn batch(&mut self, rng: &mut Rng) {
        let thread_id = self.some_thread(rng);
        let calls: [(&'static str, Value); 2] = [
            ("model/list", json!({})),
            ("thread/read", json!({"threadId": thread_id})),
        ];
        let mut batch = Vec::new();
        let mut sent = Vec::new();
        for (method, params) in calls {
            let id = next_request_id();
            let parent = TraceContext::random();
            batch.push(json!({"jsonrpc": "2.0", "id": id, "method": method,
                "params": params, "trace": parent.carrier()}));
            sent.push(Answered { id, method, parent });
        }
        self.client.send(Value::Array(batch)).await;
        let replies = self.client.recv_batch().await;
        let ids: HashSet<i64> = replies.iter().filter_map(|r| r["id"].as_i64()).collect();
        for answered in &sent {
            assert!(
                ids.contains(&answered.id),
                "client {}: batch reply lacks id {}: {replies:?}",
                self.index,
                answered.id
            );
        }
        for reply in &replies {
            assert!(reply.get("result").is_some(), "{reply}");
        }
        self.report.answered.extend(sent);
    }

    /// A malformed frame: the error answer has a `null` id and the
    /// connection goes on.
    async fn malformed(&mut self, binary: bool) {
        let expected = if binary {
            self.client
                .send_binary(b"{\"jsonrpc\":\"2.0\"}".to_vec())
                .await;
            INVALID_REQUEST
        } else {
            self.client
                .send_raw("{\"jsonrpc\": \"2.0\", \"id\": 1, \"method\": ")
                .await;
            PARSE_ERROR
        };
        let reply = self.client.recv_non_notification().await;
        assert_eq!(reply["id"], Value::Null, "{reply}");
        assert_eq!(support::error_code(&reply), expected, "{reply}");
        self.report.malformed += 1;
    }

    /// Leaves abruptly, in one of two ways: right after sending a
    /// `turn/start` whose answer it never reads, or in the middle of a
    /// turn it saw start.
    async fn drop_connection(mut self, rng: &mut Rng) -> Report {
        let thread_id = self.some_thread(rng);
        if rng.below(2) == 0 {
            self.client
                .send_request(
                    "turn/start",
                    turn_start_params(&thread_id, LONG_INPUT),
                    Some(TraceContext::random().carrier()),
                )
                .await;
        } else {
            self.start_turn(&thread_id, LONG_INPUT).await;
        }
        drop(self.client);
        self.report
    }

    /// Sends a text frame that is not UTF-8; the server ends the
    /// connection.
    async fn send_invalid_utf8(mut self) -> Report {
        self.client
            .send_text_bytes(vec![b'{', 0xFF, 0xFE, b'}'])
            .await;
        while self.client.try_recv().await.is_some() {}
        self.report
    }
}

/// One client's whole session.
async fn run_client(index: usize, mut client: Client) -> Report {
    let mut rng = Rng::new(index);
    let ending = ending_of(index, &mut rng);
    client.initialize(&format!("soak-{index}"), "1").await;
    let mut session = Session {
        index,
        client,
        report: Report {
            ending: Some(ending),
            ..Report::default()
        },
    };
    session.start_thread().await;
    for op in 0..OPS_PER_CLIENT {
        match ending {
            Ending::Drop { at } if at == op => return session.drop_connection(&mut rng).await,
            Ending::InvalidUtf8 { at } if at == op => return session.send_invalid_utf8().await,
            _ => {}
        }
        match rng.below(100) {
            0..15 => {
                session.request("model/list", json!({})).await.result();
            }
            15..25 => {
                session.start_thread().await;
            }
            25..40 => {
                let thread_id = session.some_thread(&mut rng);
                let read = session
                    .request(
                        "thread/read",
                        json!({"threadId": thread_id, "includeTurns": true}),
                    )
                    .await;
                assert_eq!(read.result()["thread"]["id"], json!(thread_id));
            }
            40..60 => session.run_turn(&mut rng, false).await,
            60..70 => session.run_turn(&mut rng, true).await,
            70..85 => session.batch(&mut rng).await,
            85..92 => session.malformed(false).await,
            _ => session.malformed(true).await,
        }
    }
    session.client.close().await;
    session.report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_mixed_clients_then_sigterm_leave_whole_spans_and_history() {
    let options = ServerOptions::default()
        .echo_delay_ms(ECHO_DELAY_MS)
        .arg("--max-running-turns")
        .arg("256");
    let mut server = Server::start_with(Transport::WebSocket, options).await;
    let home = server.home();
    let mut tasks = Vec::new();
    for index in 0..CLIENTS {
        let client = server.connect().await;
        tasks.push(tokio::spawn(run_client(index, client)));
    }
    let mut reports = Vec::new();
    for task in tasks {
        reports.push(task.await.expect("a client task panicked (see above)"));
    }
    let finished = server.shutdown().await;

    // The mix really happened.
    let endings: Vec<Ending> = reports.iter().filter_map(|r| r.ending).collect();
    assert!(endings.iter().any(|e| matches!(e, Ending::Drop { .. })));
    assert!(
        endings
            .iter()
            .any(|e| matches!(e, Ending::InvalidUtf8 { .. }))
    );
    let answered: Vec<&Answered> = reports.iter().flat_map(|r| &r.answered).collect();
    let turns: Vec<&SeenTurn> = reports.iter().flat_map(|r| &r.turns).collect();
    for method in ["model/list", "thread/start", "thread/read", "turn/start"] {
        assert!(
            answered.iter().any(|a| a.method == method),
            "no {method} answered"
        );
    }
    assert!(answered.iter().any(|a| a.method == "turn/interrupt"));
    assert!(
        turns
            .iter()
            .any(|t| t.status.as_deref() == Some("completed"))
    );
    assert!(
        turns.iter().any(|t| t.status.is_none()),
        "no turn left behind"
    );
    let malformed: usize = reports.iter().map(|r| r.malformed).sum();
    assert!(malformed > 0);
    let count = |status: Option<&str>| {
        turns
            .iter()
            .filter(|t| t.status.as_deref() == status)
            .count()
    };
    eprintln!(
        "soak: {} requests answered, {} turns ({} completed, {} interrupted, {} left behind), \
         {malformed} malformed frames, {} clients dropped, {} closed for invalid UTF-8",
        answered.len(),
        turns.len(),
        count(Some("completed")),
        count(Some("interrupted")),
        count(None),
        endings
            .iter()
            .filter(|e| matches!(e, Ending::Drop { .. }))
            .count(),
        endings
            .iter()
            .filter(|e| matches!(e, Ending::InvalidUtf8 { .. }))
            .count(),
    );

    // Nothing left open.
    let open = finished.open_spans();
    assert!(
        open.is_empty(),
        "{} spans never ended:\n{}",
        open.len(),
        open.iter()
            .map(|s| format!("  {s}"))
            .collect::<Vec<_>>()
            .join("\n")
    );

    // One request span per answered request, under the client's span.
    for answer in &answered {
        let span = finished.request_span(&answer.id.to_string());
        assert_eq!(span.name, answer.method, "{span}");
        assert_eq!(finished.finished_records(span).len(), 1, "{span}");
        assert_eq!(
            (span.trace_id.as_str(), span.parent_span_id.as_deref()),
            (
                answer.parent.trace_id.as_str(),
                Some(answer.parent.span_id.as_str())
            ),
            "request {} continues its client span: {span}",
            answer.id
        );
    }

    // One closed span per turn: each turn seen, and any other in the store
    // (turns of requests whose answer was never read) ended exactly once.
    for turn in &turns {
        let span = finished.turn_span(&turn.id);
        if let Some(status) = &turn.status {
            assert_eq!(
                span.attr_str("turn.status").as_deref(),
                Some(status.as_str()),
                "{span}"
            );
        }
    }
    let mut turn_spans: HashMap<(&str, &str), usize> = HashMap::new();
    for record in finished.records.iter().filter(|r| r.name == TURN_SPAN_NAME) {
        let finished_records = turn_spans
            .entry((&record.trace_id, &record.span_id))
            .or_default();
        if !record.is_in_progress() {
            *finished_records += 1;
        }
    }
    for ((trace_id, span_id), count) in &turn_spans {
        assert_eq!(
            *count, 1,
            "turn span {trace_id}/{span_id} has {count} finished records"
        );
    }
    drop(finished);

    // The history holds every turn, each ended: as seen by its client
    // when it saw the end, else completed or interrupted (by shutdown).
    let mut server =
        Server::start_with(Transport::WebSocket, ServerOptions::default().home(&home)).await;
    let mut client = server.connect().await;
    client.initialize("soak-history", "1").await;
    let mut by_thread: HashMap<&str, Vec<&SeenTurn>> = HashMap::new();
    for turn in &turns {
        by_thread.entry(&turn.thread_id).or_default().push(turn);
    }
    let threads: HashSet<&str> = reports
        .iter()
        .flat_map(|r| r.threads.iter().map(String::as_str))
        .collect();
    for thread_id in threads {
        let read = client.read_thread_with_turns(thread_id).await;
        let recorded: HashMap<&str, &str> = read.result()["thread"]["turns"]
            .as_array()
            .unwrap_or_else(|| panic!("no turns array: {}", read.message))
            .iter()
            .map(|t| {
                (
                    t["id"].as_str().expect("turn id"),
                    t["status"].as_str().expect("turn status"),
                )
            })
            .collect();
        for (turn_id, status) in &recorded {
            assert!(
                ["completed", "interrupted"].contains(status),
                "thread {thread_id}: turn {turn_id} recorded as {status}"
            );
        }
        for turn in by_thread.get(thread_id).into_iter().flatten() {
            let status = recorded.get(turn.id.as_str()).unwrap_or_else(|| {
                panic!(
                    "thread {thread_id}: turn {} missing from the history: {recorded:?}",
                    turn.id
                )
            });
            if let Some(seen) = &turn.status {
                assert_eq!(status, seen, "thread {thread_id}: turn {}", turn.id);
            }
        }
    }
    client.close().await;
    server.shutdown().await;
}

/// Clients still sending when SIGTERM arrives.
const SENDING_CLIENTS: usize = 12;
/// Requests each of them keeps unanswered at once.
const SEND_WINDOW: usize = 4;
/// Threads each of them runs turns on.
const THREADS_PER_SENDER: usize = 3;
/// `turn/start` results each has received before SIGTERM is sent.
const TURNS_BEFORE_SIGTERM: usize = 3;
/// Input of a sender's turns: a dozen words, so that SIGTERM catches some
/// of them running.
const SENDER_INPUT: &str = "one two three four five six seven eight nine ten eleven twelve";

/// What a client still sending at SIGTERM saw.
#[derive(Debug, Default)]
struct SenderOutcome {
    index: usize,
    /// Every request sent (or about to be, when sending failed), by id.
    sent: HashMap<i64, &'static str>,
    /// The answers received, by id.
    answered: HashMap<i64, Value>,
    /// Turns whose `turn/start` was answered with a result.
    started: Vec<String>,
    /// The status of each `turn/completed` received, by turn id.
    completed: HashMap<String, String>,
    /// The code of the server's close frame.
    close_code: Option<u16>,
    /// Messages received after the close frame.
    after_close: usize,
    /// How the connection ended when it did not end cleanly (a reset, or
    /// an end without a close frame).
    failure: Option<String>,
}

/// A request of a sender's mix: two `turn/start` for one `model/list` and
/// one `thread/read`, over its threads in turn.
fn sender_request(n: usize, threads: &[String]) -> (&'static str, Value) {
    let thread_id = &threads[(n / 4) % threads.len()];
    match n % 4 {
        0 | 1 => ("turn/start", turn_start_params(thread_id, SENDER_INPUT)),
        2 => ("model/list", json!({})),
        _ => ("thread/read", json!({"threadId": thread_id})),
    }
}

/// Keeps [`SEND_WINDOW`] requests unanswered until the server closes the
/// connection, reading everything it sends; reports on `warm` once
/// [`TURNS_BEFORE_SIGTERM`] turns were started.
async fn run_sender(
    index: usize,
    client: Client,
    threads: Vec<String>,
    warm: tokio::sync::mpsc::UnboundedSender<usize>,
) -> SenderOutcome {
    use futures_util::{SinkExt, StreamExt};
    use std::sync::{Arc, Mutex};
    use tokio::sync::Semaphore;
    use tokio_tungstenite::tungstenite::Message;

    let (mut sink, mut stream) = client.into_websocket().split();
    let window = Arc::new(Semaphore::new(SEND_WINDOW));
    let sent: Arc<Mutex<HashMap<i64, &'static str>>> = Arc::default();
    let writer = {
        let window = Arc::clone(&window);
        let sent = Arc::clone(&sent);
        tokio::spawn(async move {
            for n in 0.. {
                let Ok(permit) = window.acquire().await else {
                    return;
                };
                permit.forget();
                let (method, params) = sender_request(n, &threads);
                let id = next_request_id();
                sent.lock().expect("sent").insert(id, method);
                let request = json!({"jsonrpc": "2.0", "id": id, "method": method,
                    "params": params, "trace": TraceContext::random().carrier()});
                if sink.send(Message::text(request.to_string())).await.is_err() {
                    // The server is closing: nothing more goes out.
                    return;
                }
            }
        })
    };

    let mut outcome = SenderOutcome {
        index,
        ..SenderOutcome::default()
    };
    let mut warm = Some(warm);
    loop {
        let next = tokio::time::timeout(support::TIMEOUT, stream.next())
            .await
            .unwrap_or_else(|_| panic!("sender {index}: nothing from the server in time"));
        let text = match next {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Close(frame))) => {
                outcome.close_code = Some(frame.map_or(1005, |f| u16::from(f.code)));
                continue;
            }
            Some(Ok(_)) => continue,
            Some(Err(err)) => {
                outcome.failure = Some(format!("read failed: {err}"));
                break;
            }
            None => break,
        };
        if outcome.close_code.is_some() {
            outcome.after_close += 1;
            continue;
        }
        let message: Value = serde_json::from_str(&text).expect("the server sends JSON");
        if message.get("method").is_some() {
            if message["method"] == "turn/completed" {
                let turn = &message["params"]["turn"];
                outcome.completed.insert(
                    turn["id"].as_str().expect("turn id").to_owned(),
                    turn["status"].as_str().expect("turn status").to_owned(),
                );
            }
            continue;
        }
        let id = message["id"]
            .as_i64()
            .expect("an answer with an integer id");
        if let Some(turn_id) = message["result"]["turn"]["id"].as_str() {
            outcome.started.push(turn_id.to_owned());
            if outcome.started.len() == TURNS_BEFORE_SIGTERM
                && let Some(warm) = warm.take()
            {
                let _ = warm.send(index);
            }
        }
        outcome.answered.insert(id, message);
        window.add_permits(1);
    }
    if outcome.failure.is_none() && outcome.close_code.is_none() {
        outcome.failure = Some("the connection ended without a close frame".to_owned());
    }
    window.close();
    writer.await.expect("the writer task panicked");
    outcome.sent = std::mem::take(&mut *sent.lock().expect("sent"));
    outcome
}

/// SIGTERM while every client is still sending requests (turns among them):
/// each client sees every turn it was answered for end (`completed`, or
/// `interrupted` by the shutdown) and then a 1001 close, with no reset and
/// nothing after the close frame; a request left unanswered was provably
/// never handled (the server has no span for it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_while_clients_send_ends_their_turns_then_closes_with_1001() {
    let options = ServerOptions::default()
        .echo_delay_ms(ECHO_DELAY_MS)
        .arg("--max-running-turns")
        .arg("256");
    let mut server = Server::start_with(Transport::WebSocket, options).await;
    let (warm_tx, mut warm_rx) = tokio::sync::mpsc::unbounded_channel();
    let mut tasks = Vec::new();
    for index in 0..SENDING_CLIENTS {
        let mut client = server.connect().await;
        client.initialize(&format!("sender-{index}"), "1").await;
        let mut threads = Vec::new();
        for _ in 0..THREADS_PER_SENDER {
            threads.push(client.start_thread().await);
        }
        tasks.push(tokio::spawn(run_sender(
            index,
            client,
            threads,
            warm_tx.clone(),
        )));
    }
    drop(warm_tx);
    for _ in 0..SENDING_CLIENTS {
        tokio::time::timeout(support::TIMEOUT, warm_rx.recv())
            .await
            .expect("every sender started its first turns in time")
            .expect("a sender ended before its first turns");
    }
    // Every client is still sending.
    let finished = server.shutdown().await;
    let mut outcomes = Vec::new();
    for task in tasks {
        outcomes.push(task.await.expect("a sender task panicked (see above)"));
    }

    let mut problems = Vec::new();
    let (mut turns, mut interrupted, mut unanswered) = (0, 0, 0);
    for outcome in &outcomes {
        let index = outcome.index;
        if let Some(failure) = &outcome.failure {
            problems.push(format!("sender {index}: {failure}"));
        }
        if outcome.close_code != Some(1001) {
            problems.push(format!(
                "sender {index}: close code {:?}, expected 1001",
                outcome.close_code
            ));
        }
        if outcome.after_close > 0 {
            problems.push(format!(
                "sender {index}: {} messages after the close frame",
                outcome.after_close
            ));
        }
        for turn_id in &outcome.started {
            turns += 1;
            match outcome.completed.get(turn_id).map(String::as_str) {
                Some("completed") => {}
                Some("interrupted") => interrupted += 1,
                other => problems.push(format!(
                    "sender {index}: turn {turn_id} ended with {other:?} before the close"
                )),
            }
        }
        for (id, method) in &outcome.sent {
            let spans = finished.spans_for_request(&id.to_string());
            if outcome.answered.contains_key(id) {
                if spans.is_empty() {
                    problems.push(format!(
                        "sender {index}: answered {method} {id} has no span"
                    ));
                }
            } else {
                // Provably never answered: the server never handled it.
                unanswered += 1;
                if !spans.is_empty() {
                    problems.push(format!(
                        "sender {index}: {method} {id} was handled but its answer never came"
                    ));
                }
            }
        }
    }
    eprintln!(
        "sigterm soak: {SENDING_CLIENTS} clients, {turns} turns started ({interrupted} \
         interrupted by shutdown), {unanswered} requests unanswered (never handled)"
    );
    assert!(
        problems.is_empty(),
        "{} problems:\n{}",
        problems.len(),
        problems.join("\n")
    );
    let open = finished.open_spans();
    assert!(open.is_empty(), "{} spans never ended", open.len());
}
