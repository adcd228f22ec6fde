//! A turn's spans end when the turn ends, while the server keeps running.
//!
//! A turn is traced as `turn/start` (SERVER) → `op.dispatch.user_turn` →
//! `invoke_agent skein` (the turn span) → `chat <model>` (CLIENT). When the
//! turn starts, the local trace store gets an in-progress record of the turn
//! span (`endTimeUnixNano` `"0"`). Once `turn/completed` has gone out, the
//! finished records of the turn span, of its dispatch span and of every child
//! must follow promptly: not only when the thread gets its next submission,
//! nor only when the server shuts down. A graceful shutdown ends and flushes
//! everything, so every verdict here is reached before any shutdown; the
//! tests that then shut down gracefully only check that the turn span ended
//! exactly once (one finished record).
//!
//! Each test runs a turn under a fresh client trace, then, with the server
//! still running, polls the store (or an in-test OTLP/HTTP receiver) until
//! [`turn_trace_state`] finds the turn ended: the turn span, its parent
//! dispatch span and the expected model-call child each have a finished
//! record, and no span of the trace is left with only an in-progress record.
//! The requirement is "within 2 s of `turn/completed`"; the poll allows
//! [`SPAN_END_DEADLINE`] so that a loaded machine cannot make the tests
//! flaky, while spans that stay open indefinitely still fail them. The
//! measured latency is printed, with a note when it exceeds 2 s.
//!
//! Covered: a completed, an interrupted and a failed (echo `/fail`) turn with
//! the client still connected, over stdio and WebSocket; a turn failed by
//! the model API (a 401 from the mock OpenAI-compatible server); a client
//! that disconnects right after `turn/completed`, and one that disconnects
//! while its turn is still running (WebSocket only: the stdio transport has
//! a single client, whose EOF shuts the server down); export to an OTLP/HTTP
//! receiver; and `kill -9` one second after `turn/completed`, after which
//! the store files must hold the whole turn, ended.

#[macro_use]
mod support;

use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::common::v1::{AnyValue, any_value};
use serde_json::{Value, json};

use support::mock_llm::{MockLlm, Reply};
use support::otlp_receiver::Receiver;
use support::{
    CHAT_SPAN_NAME, Client, SPAN_KIND_INTERNAL, Server, ServerOptions, Span, SpanLink, TIMEOUT,
    TURN_SPAN_NAME, TraceContext, Transport, merge_records, notification_turn_id, read_live_spans,
};

both_transports!(
    completed_turn_ends_turn_dispatch_and_chat_spans_in_the_store_while_the_client_stays_connected,
    interrupted_turn_ends_turn_dispatch_and_chat_spans_in_the_store_while_the_client_stays_connected,
    failed_turn_ends_turn_dispatch_and_chat_spans_in_the_store_while_the_client_stays_connected,
    kill_9_one_second_after_turn_completed_leaves_the_whole_turn_ended_in_the_store,
);

/// How long after the turn ended its spans may take to be ended in the
/// store (or at the receiver) before the test fails. The requirement is
/// [`REQUIRED_LATENCY`]; this leaves room for a loaded machine.
const SPAN_END_DEADLINE: Duration = Duration::from_secs(10);
/// The latency the issue asks for; exceeding it is reported, not failed.
const REQUIRED_LATENCY: Duration = Duration::from_secs(2);
/// Pause between two reads of the store (or of the receiver's bodies).
const POLL_INTERVAL: Duration = Duration::from_millis(25);

/// Name of the dispatch span of a `turn/start`.
const DISPATCH_SPAN_NAME: &str = "op.dispatch.user_turn";
/// Name of the model call span of the mock provider's model.
const MOCK_CHAT_SPAN_NAME: &str = "chat mock-model";
/// The API key the mock provider is configured with.
const MOCK_API_KEY: &str = "sk-mock-secret-0123456789";

/// Echo delay that keeps a turn open until the test interrupts it.
const HOLD_DELAY_MS: u64 = 60_000;
/// Input of a held turn: many words, each followed by the hold delay.
const LONG_INPUT: &str = "one two three four five six seven eight nine ten eleven twelve";

/// Echo delay of the turn a client leaves while it runs: long enough for
/// the client to be gone well before the turn ends, short enough for the
/// turn to end on its own soon after.
const SLOW_DELAY_MS: u64 = 300;
/// Input of that turn (six words: about 2 s of streaming).
const SLOW_INPUT: &str = "the turn outlives its client";

/// A turn as the client saw it end.
#[derive(Debug, Clone)]
struct SeenTurn {
    turn_id: String,
    /// The trace of the turn (the client's, continued by the server).
    trace_id: String,
    /// The turn span's id, from the envelope `trace` of `turn/completed`.
    turn_span_id: String,
    /// `params.turn.status` of `turn/completed`.
    status: String,
    /// When `turn/completed` arrived.
    completed_at: Instant,
}

/// What must have ended for a turn to count as ended.
struct Expected<'a> {
    turn: &'a SeenTurn,
    /// Names of the children of the turn span that must have ended (each
    /// at least once).
    children: &'a [&'a str],
}

/// A turn found ended in the store or at the receiver.
#[derive(Debug)]
struct EndedTurn {
    turn: Span,
    dispatch: Span,
    children: Vec<Span>,
}

/// Starts a server with `options`, connects one client and initializes it.
async fn start_initialized(transport: Transport, options: ServerOptions) -> (Server, Client) {
    let mut server = Server::start_with(transport, options).await;
    let mut client = server.connect().await;
    client
        .initialize(&format!("e2e-turn-lifetime-{transport}"), "0.0.1")
        .await;
    (server, client)
}

/// Starts a turn on `thread_id` under a fresh client trace; returns the
/// trace and the turn id.
async fn start_traced_turn(client: &mut Client, thread_id: &str, text: &str) -> (String, String) {
    let parent = TraceContext::random();
    let started = client.start_turn(thread_id, text, Some(&parent)).await;
    (parent.trace_id, started.turn_id())
}

/// Waits for `turn/completed` of `turn_id` and describes the turn.
async fn wait_for_completion(client: &mut Client, trace_id: &str, turn_id: &str) -> SeenTurn {
    let completed = client.wait_for_turn_completed(turn_id).await;
    let completed_at = Instant::now();
    let context = TraceContext::of_message(&completed);
    assert_eq!(
        context.trace_id, trace_id,
        "turn/completed must carry the turn span's context in the client's trace: {completed}"
    );
    let status = completed["params"]["turn"]["status"]
        .as_str()
        .unwrap_or_else(|| panic!("turn/completed lacks params.turn.status: {completed}"))
        .to_owned();
    SeenTurn {
        turn_id: turn_id.to_owned(),
        trace_id: trace_id.to_owned(),
        turn_span_id: context.span_id,
        status,
        completed_at,
    }
}

/// Runs one turn with `text` on `thread_id` to its `turn/completed`.
async fn run_turn(client: &mut Client, thread_id: &str, text: &str) -> SeenTurn {
    let (trace_id, turn_id) = start_traced_turn(client, thread_id, text).await;
    wait_for_completion(client, &trace_id, &turn_id).await
}

/// Whether the turn has ended in `spans` (store records, or spans an OTLP
/// receiver got): `Ok` with its spans, or `Err` saying what is still
/// missing. Panics on what no waiting can fix (a turn span of another
/// name or turn, a dispatch span of another name).
fn turn_trace_state(spans: &[Span], expected: &Expected<'_>) -> Result<EndedTurn, String> {
    let seen = expected.turn;
    let records: Vec<Span> = spans
        .iter()
        .filter(|s| s.trace_id == seen.trace_id)
        .cloned()
        .collect();
    let merged = merge_records(&records);
    let Some(turn) = merged.iter().find(|s| s.span_id == seen.turn_span_id) else {
        return Err(format!(
            "no record of the turn span {} ({TURN_SPAN_NAME:?}) of turn {}",
            seen.turn_span_id, seen.turn_id
        ));
    };
    assert_eq!(turn.name, TURN_SPAN_NAME, "the turn span: {turn}");
    assert_eq!(
        turn.attr_str("turn.id").as_deref(),
        Some(seen.turn_id.as_str()),
        "the turn span: {turn}"
    );
    if turn.is_in_progress() {
        return Err(format!(
            "the turn span {TURN_SPAN_NAME:?} of turn {} has only its in-progress record \
             (endTimeUnixNano 0): it has not ended",
            seen.turn_id
        ));
    }
    let dispatch_id = turn
        .parent_span_id
        .as_deref()
        .unwrap_or_else(|| panic!("the turn span has no parent (its dispatch span): {turn}"));
    let dispatch = match merged.iter().find(|s| s.span_id == dispatch_id) {
        Some(dispatch) if !dispatch.is_in_progress() => dispatch,
        _ => {
            return Err(format!(
                "no finished record of the dispatch span {dispatch_id} \
                 ({DISPATCH_SPAN_NAME:?}, the turn span's parent): it has not ended"
            ));
        }
    };
    assert_eq!(
        dispatch.name, DISPATCH_SPAN_NAME,
        "the dispatch span: {dispatch}"
    );
    assert_eq!(
        dispatch.kind, SPAN_KIND_INTERNAL,
        "the dispatch span: {dispatch}"
    );
    let children: Vec<Span> = merged
        .iter()
        .filter(|s| s.parent_span_id.as_deref() == Some(turn.span_id.as_str()))
        .cloned()
        .collect();
    for name in expected.children {
        if !children
            .iter()
            .any(|c| c.name == *name && !c.is_in_progress())
        {
            return Err(format!(
                "no finished {name:?} child of the turn span: it has not ended"
            ));
        }
    }
    let open: Vec<String> = merged
        .iter()
        .filter(|s| s.is_in_progress())
        .map(ToString::to_string)
        .collect();
    if !open.is_empty() {
        return Err(format!(
            "spans of the turn's trace still have only an in-progress record:\n  {}",
            open.join("\n  ")
        ));
    }
    Ok(EndedTurn {
        turn: turn.clone(),
        dispatch: dispatch.clone(),
        children,
    })
}

/// Every record of `trace_id` in `spans`, one per line, for failure
/// messages.
fn dump_trace(spans: &[Span], trace_id: &str) -> String {
    let lines: Vec<String> = spans
        .iter()
        .filter(|s| s.trace_id == trace_id)
        .map(|s| format!("  {s}"))
        .collect();
    if lines.is_empty() {
        "  (none)".to_owned()
    } else {
        lines.join("\n")
    }
}

/// Polls `read` until [`turn_trace_state`] finds the turn ended, for at
/// most [`SPAN_END_DEADLINE`] after `since` (when the turn ended). `what`
/// names where the spans are read from. Prints the latency.
async fn wait_for_turn_ended(
    what: &str,
    expected: &Expected<'_>,
    since: Instant,
    read: impl Fn() -> Vec<Span>,
) -> EndedTurn {
    loop {
        let spans = read();
        match turn_trace_state(&spans, expected) {
            Ok(ended) => {
                let latency = since.elapsed();
                let note = if latency > REQUIRED_LATENCY {
                    format!(" (over the required {REQUIRED_LATENCY:?}: a loaded machine?)")
                } else {
                    String::new()
                };
                eprintln!(
                    "{what}: turn {} ({}) found ended {latency:?} after it ended{note}",
                    expected.turn.turn_id, expected.turn.status
                );
                return ended;
            }
            Err(missing) if since.elapsed() >= SPAN_END_DEADLINE => panic!(
                "{what}: the spans of turn {} (status {}) have not all ended \
                 {SPAN_END_DEADLINE:?} after the turn ended, with the server still running: \
                 {missing}\nrecords of the turn's trace {}:\n{}",
                expected.turn.turn_id,
                expected.turn.status,
                expected.turn.trace_id,
                dump_trace(&spans, &expected.turn.trace_id)
            ),
            Err(_) => tokio::time::sleep(POLL_INTERVAL).await,
        }
    }
}

/// Polls the running server's local store until the turn has ended.
async fn wait_for_turn_ended_in_store(server: &Server, expected: &Expected<'_>) -> EndedTurn {
    wait_for_turn_ended("local store", expected, expected.turn.completed_at, || {
        server.store_records()
    })
    .await
}

fn assert_turn_status(ended: &EndedTurn, status: &str) {
    assert_eq!(
        ended.turn.attr_str("turn.status").as_deref(),
        Some(status),
        "the ended turn span: {}",
        ended.turn
    );
}

/// Ends the server gracefully; its store must then hold exactly one
/// finished record of the turn span (it ended once, not once more at
/// shutdown).
async fn shutdown_and_check_ended_once(server: Server, client: Client, turn_id: &str) {
    client.close().await;
    let finished = server.shutdown().await;
    finished.turn_span(turn_id);
}

async fn completed_turn_ends_turn_dispatch_and_chat_spans_in_the_store_while_the_client_stays_connected(
    transport: Transport,
) {
    let (server, mut client) = start_initialized(transport, ServerOptions::default()).await;
    let thread_id = client.start_thread().await;
    let seen = run_turn(&mut client, &thread_id, "hello lifetime world").await;
    assert_eq!(seen.status, "completed", "{seen:?}");

    let ended = wait_for_turn_ended_in_store(
        &server,
        &Expected {
            turn: &seen,
            children: &[CHAT_SPAN_NAME],
        },
    )
    .await;
    assert_turn_status(&ended, "completed");
    assert!(
        ended.turn.end_time_unix_nano >= ended.turn.start_time_unix_nano,
        "{}",
        ended.turn
    );

    shutdown_and_check_ended_once(server, client, &seen.turn_id).await;
}

async fn interrupted_turn_ends_turn_dispatch_and_chat_spans_in_the_store_while_the_client_stays_connected(
    transport: Transport,
) {
    let options = ServerOptions::default().echo_delay_ms(HOLD_DELAY_MS);
    let (server, mut client) = start_initialized(transport, options).await;
    let thread_id = client.start_thread().await;
    let (trace_id, turn_id) = start_traced_turn(&mut client, &thread_id, LONG_INPUT).await;
    client.wait_for_first_delta(&turn_id).await;
    let interrupt = client
        .request(
            "turn/interrupt",
            json!({"threadId": thread_id, "turnId": turn_id}),
            None,
        )
        .await;
    assert_eq!(interrupt.result(), &json!({}), "{}", interrupt.message);
    let seen = wait_for_completion(&mut client, &trace_id, &turn_id).await;
    assert_eq!(seen.status, "interrupted", "{seen:?}");

    let ended = wait_for_turn_ended_in_store(
        &server,
        &Expected {
            turn: &seen,
            children: &[CHAT_SPAN_NAME],
        },
    )
    .await;
    assert_turn_status(&ended, "interrupted");

    shutdown_and_check_ended_once(server, client, &seen.turn_id).await;
}

async fn failed_turn_ends_turn_dispatch_and_chat_spans_in_the_store_while_the_client_stays_connected(
    transport: Transport,
) {
    let (server, mut client) = start_initialized(transport, ServerOptions::default()).await;
    let thread_id = client.start_thread().await;
    let seen = run_turn(&mut client, &thread_id, "/fail on purpose").await;
    assert_eq!(seen.status, "failed", "{seen:?}");

    let ended = wait_for_turn_ended_in_store(
        &server,
        &Expected {
            turn: &seen,
            children: &[CHAT_SPAN_NAME],
        },
    )
    .await;
    assert_turn_status(&ended, "failed");

    shutdown_and_check_ended_once(server, client, &seen.turn_id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_api_error_turn_ends_turn_dispatch_and_chat_spans_in_the_store_while_connected() {
    let mock = MockLlm::start(vec![Reply::Status(
        401,
        vec![],
        json!({"error": {"message": "Incorrect API key provided"}}),
    )])
    .await;
    let options = mock.server_options().env("MOCK_API_KEY", MOCK_API_KEY);
    let (server, mut client) = start_initialized(Transport::Stdio, options).await;
    let thread_id = client.start_thread().await;
    let seen = run_turn(&mut client, &thread_id, "hi").await;
    assert_eq!(seen.status, "failed", "{seen:?}");
    assert_eq!(mock.requests().len(), 1, "a 401 is not retried");

    let ended = wait_for_turn_ended_in_store(
        &server,
        &Expected {
            turn: &seen,
            children: &[MOCK_CHAT_SPAN_NAME],
        },
    )
    .await;
    assert_turn_status(&ended, "failed");
    let chat = ended
        .children
        .iter()
        .find(|c| c.name == MOCK_CHAT_SPAN_NAME)
        .expect("turn_trace_state found the chat span");
    assert_eq!(
        chat.attr_str("error.type").as_deref(),
        Some("401"),
        "{chat}"
    );

    shutdown_and_check_ended_once(server, client, &seen.turn_id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_client_disconnecting_right_after_turn_completed_leaves_every_turn_span_ended() {
    let (mut server, mut client) =
        start_initialized(Transport::WebSocket, ServerOptions::default()).await;
    let thread_id = client.start_thread().await;
    let seen = run_turn(&mut client, &thread_id, "gone right after").await;
    assert_eq!(seen.status, "completed", "{seen:?}");
    client.close().await;

    let ended = wait_for_turn_ended_in_store(
        &server,
        &Expected {
            turn: &seen,
            children: &[CHAT_SPAN_NAME],
        },
    )
    .await;
    assert_turn_status(&ended, "completed");

    // The server still serves a new client.
    let mut other = server.connect().await;
    other.initialize("e2e-turn-lifetime-after", "0.0.1").await;
    shutdown_and_check_ended_once(server, other, &seen.turn_id).await;
}

/// Polls `$SKEIN_HOME/threads/<thread_id>.jsonl` until it records the end
/// of `turn_id` (written before `turn/completed` would be sent); returns
/// when it was seen and the recorded status.
async fn wait_for_turn_completed_record(
    server: &Server,
    thread_id: &str,
    turn_id: &str,
) -> (Instant, String) {
    let file = server.home().thread_file(thread_id);
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        let status = text
            .lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .find(|record| record["type"] == "turnCompleted" && record["turnId"] == turn_id)
            .map(|record| record["status"].as_str().unwrap_or_default().to_owned());
        if let Some(status) = status {
            return (Instant::now(), status);
        }
        assert!(
            Instant::now() < deadline,
            "turn {turn_id} did not end within {TIMEOUT:?} (no turnCompleted record in {}):\n{text}",
            file.display()
        );
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_client_gone_mid_turn_leaves_every_turn_span_ended_once_the_turn_finishes() {
    let options = ServerOptions::default().echo_delay_ms(SLOW_DELAY_MS);
    let (mut server, mut client) = start_initialized(Transport::WebSocket, options).await;
    let thread_id = client.start_thread().await;
    let (trace_id, turn_id) = start_traced_turn(&mut client, &thread_id, SLOW_INPUT).await;
    client.wait_for_first_delta(&turn_id).await;
    // The turn span's context, from the notifications received so far.
    let turn_context = client
        .received()
        .iter()
        .find(|m| {
            m["method"] == "item/agentMessage/delta"
                && notification_turn_id(m) == Some(turn_id.as_str())
        })
        .map(TraceContext::of_message)
        .expect("the first delta was received");
    assert_eq!(
        turn_context.trace_id, trace_id,
        "the turn continues the client's trace"
    );
    client.close().await;
    let closed_at = Instant::now();

    // Nobody follows the thread any more: its history file says when the
    // turn ended.
    let (ended_at, status) = wait_for_turn_completed_record(&server, &thread_id, &turn_id).await;
    eprintln!(
        "turn {turn_id} ended ({status}) {:?} after its client disconnected",
        ended_at - closed_at
    );
    let seen = SeenTurn {
        turn_id: turn_id.clone(),
        trace_id,
        turn_span_id: turn_context.span_id,
        status: status.clone(),
        completed_at: ended_at,
    };
    let ended = wait_for_turn_ended_in_store(
        &server,
        &Expected {
            turn: &seen,
            children: &[CHAT_SPAN_NAME],
        },
    )
    .await;
    assert_turn_status(&ended, &status);

    let other = server.connect().await;
    shutdown_and_check_ended_once(server, other, &turn_id).await;
}

async fn kill_9_one_second_after_turn_completed_leaves_the_whole_turn_ended_in_the_store(
    transport: Transport,
) {
    let (server, mut client) = start_initialized(transport, ServerOptions::default()).await;
    let thread_id = client.start_thread().await;
    let seen = run_turn(&mut client, &thread_id, "then the process dies").await;
    assert_eq!(seen.status, "completed", "{seen:?}");
    let trace_dir = server.trace_dir().to_owned();
    // The temporary home (which holds the store) must outlive the server.
    let _home = server.home();

    // The one fixed wait the scenario calls for: SIGKILL 1 s after
    // turn/completed, the client still connected. No shutdown code runs.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let stderr = server.kill_9().await;

    let records = read_live_spans(&trace_dir);
    let expected = Expected {
        turn: &seen,
        children: &[CHAT_SPAN_NAME],
    };
    let ended = turn_trace_state(&records, &expected).unwrap_or_else(|missing| {
        panic!(
            "after kill -9 one second after turn/completed, the store does not hold turn {} \
             ended: {missing}\nrecords of the turn's trace {}:\n{}\nstderr of the server:\n{}",
            seen.turn_id,
            seen.trace_id,
            dump_trace(&records, &seen.trace_id),
            stderr.join("\n")
        )
    });
    assert_turn_status(&ended, "completed");
    drop(client);
}

/// Every span of every `/v1/traces` body `receiver` has received so far.
fn received_spans(receiver: &Receiver) -> Vec<Span> {
    receiver
        .trace_requests()
        .into_iter()
        .flat_map(|request| request.resource_spans)
        .flat_map(|r| r.scope_spans)
        .flat_map(|s| s.spans)
        .map(span_from_proto)
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// An OTLP attribute value in the OTLP/JSON shape [`Span`] reads.
fn any_value_json(value: Option<&AnyValue>) -> Value {
    match value.and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => json!({"stringValue": s}),
        Some(any_value::Value::IntValue(i)) => json!({"intValue": i.to_string()}),
        Some(any_value::Value::BoolValue(b)) => json!({"boolValue": b}),
        Some(any_value::Value::DoubleValue(d)) => json!({"doubleValue": d}),
        _ => Value::Null,
    }
}

/// A protobuf span as the store's [`Span`].
fn span_from_proto(span: opentelemetry_proto::tonic::trace::v1::Span) -> Span {
    let status = span.status.unwrap_or_default();
    Span {
        trace_id: hex(&span.trace_id),
        span_id: hex(&span.span_id),
        parent_span_id: (!span.parent_span_id.is_empty()).then(|| hex(&span.parent_span_id)),
        name: span.name,
        kind: i64::from(span.kind),
        attributes: span
            .attributes
            .iter()
            .map(|kv| (kv.key.clone(), any_value_json(kv.value.as_ref())))
            .collect(),
        status_code: i64::from(status.code),
        status_message: Some(status.message).filter(|m| !m.is_empty()),
        links: span
            .links
            .iter()
            .map(|l| SpanLink {
                trace_id: hex(&l.trace_id),
                span_id: hex(&l.span_id),
            })
            .collect(),
        start_time_unix_nano: u128::from(span.start_time_unix_nano),
        end_time_unix_nano: u128::from(span.end_time_unix_nano),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_http_receiver_gets_the_ended_turn_dispatch_and_chat_spans_while_the_server_runs() {
    let receiver = Receiver::start().await;
    let options = ServerOptions::default()
        .arg("--otlp-endpoint")
        .arg(&receiver.url)
        .arg("--otlp-protocol")
        .arg("http/protobuf")
        // A short batch delay, as the issue asks. Skein sets its own batch
        // delay (1 s) for now, which wins over the variable; the deadline
        // allows for it.
        .env("OTEL_BSP_SCHEDULE_DELAY", "200");
    let (server, mut client) = start_initialized(Transport::Stdio, options).await;
    let thread_id = client.start_thread().await;
    let seen = run_turn(&mut client, &thread_id, "exported while running").await;
    assert_eq!(seen.status, "completed", "{seen:?}");

    let ended = wait_for_turn_ended(
        "OTLP/HTTP receiver",
        &Expected {
            turn: &seen,
            children: &[CHAT_SPAN_NAME],
        },
        seen.completed_at,
        || received_spans(&receiver),
    )
    .await;
    assert_turn_status(&ended, "completed");
    for span in [&ended.turn, &ended.dispatch] {
        assert_ne!(
            span.end_time_unix_nano, 0,
            "exported spans have ended: {span}"
        );
    }

    shutdown_and_check_ended_once(server, client, &seen.turn_id).await;
}
