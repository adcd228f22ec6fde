//! End-to-end turn tracing tests against the real `skein` binary.
//!
//! A turn is traced as one chain under the client's span:
//! `turn/start` (SERVER) → `op.dispatch.<op>` → `invoke_agent skein` →
//! `chat echo` (CLIENT). Scenarios are written once and run over stdio and
//! WebSocket by `both_transports!`; spans are read from the local trace store
//! after a graceful shutdown (which flushes them).
//!
//! Turns that must stay open (to be interrupted or shut down) run against a
//! server whose echo model waits [`HOLD_DELAY_MS`] between words, so they
//! can only end by the test's own action.

#[macro_use]
mod support;

use std::collections::HashSet;
use std::sync::Arc;

use serde_json::{Value, json};
use tokio::sync::Barrier;

use support::{
    CHAT_SPAN_NAME, Client, INVALID_PARAMS, INVALID_REQUEST, Response, SPAN_KIND_CLIENT,
    SPAN_KIND_INTERNAL, SPAN_KIND_SERVER, STATUS_CODE_ERROR, Server, ServerOptions, Span, TIMEOUT,
    TURN_SPAN_NAME, TraceContext, Transport, notification_turn_id, turn_start_params,
};

both_transports!(
    turn_notifications_and_spans_share_one_client_trace_with_exact_parent_links,
    request_span_ends_before_turn_span_which_starts_after_dispatch_and_ends_after_chat,
    completed_turn_closes_its_span_once_with_status_completed_and_usage,
    interrupted_turn_closes_its_span_once_with_status_interrupted,
    failed_turn_closes_its_span_once_with_error_status_and_message,
    shutdown_mid_turn_delivers_interrupted_completion_and_closes_the_span_once,
    review_and_compact_turn_spans_have_their_kind_under_their_own_dispatch,
    unary_methods_produce_only_a_request_span_without_dispatch_or_children,
    turn_spans_of_a_thread_link_to_the_previous_turn_in_order,
    rejected_turn_requests_fail_and_leave_only_the_running_turns_span,
);

/// Echo delay that keeps a turn open until the test interrupts it or shuts
/// the server down (far beyond every test timeout).
const HOLD_DELAY_MS: u64 = 60_000;

/// Input for a turn held open: many words, each followed by the hold delay.
const LONG_INPUT: &str = "one two three four five six seven eight nine ten eleven twelve";

/// Starts a server whose echo model waits `echo_delay_ms` between words,
/// connects one client and initializes it.
async fn start_initialized(transport: Transport, echo_delay_ms: u64) -> (Server, Client) {
    let options = ServerOptions::default().echo_delay_ms(echo_delay_ms);
    let mut server = Server::start_with(transport, options).await;
    let mut client = server.connect().await;
    client
        .initialize(&format!("e2e-turns-{transport}"), "0.0.1")
        .await;
    (server, client)
}

/// `params.turn.status` of a `turn/completed` notification.
fn completed_status(notification: &Value) -> &str {
    notification["params"]["turn"]["status"]
        .as_str()
        .unwrap_or_else(|| panic!("turn/completed lacks params.turn.status: {notification}"))
}

/// Asserts the parent of `child` is `parent` within one trace.
fn assert_child_of(child: &Span, parent: &Span) {
    assert_eq!(
        child.parent_span_id.as_deref(),
        Some(parent.span_id.as_str()),
        "{:?} must be a child of {:?}:\n  child:  {child}\n  parent: {parent}",
        child.name,
        parent.name
    );
    assert_eq!(
        child.trace_id, parent.trace_id,
        "a child shares its parent's trace:\n  child:  {child}\n  parent: {parent}"
    );
}

fn assert_attr(span: &Span, key: &str, expected: &str) {
    assert_eq!(
        span.attr_str(key).as_deref(),
        Some(expected),
        "attribute {key}: {span}"
    );
}

/// The dispatch span of a turn: the turn span's parent, named
/// `op.dispatch.<op>`, an INTERNAL child of the request span `request`.
fn assert_dispatch_between<'a>(
    finished: &'a support::Finished,
    request: &Span,
    turn: &Span,
    op: &str,
    thread_id: &str,
) -> &'a Span {
    let dispatch = finished.parent_of(turn);
    assert_eq!(dispatch.name, format!("op.dispatch.{op}"), "{dispatch}");
    assert_eq!(dispatch.kind, SPAN_KIND_INTERNAL, "{dispatch}");
    assert_child_of(dispatch, request);
    assert_attr(dispatch, "op", op);
    assert_attr(dispatch, "thread.id", thread_id);
    assert!(
        dispatch
            .attr_str("submission.id")
            .is_some_and(|id| !id.is_empty()),
        "dispatch span lacks submission.id: {dispatch}"
    );
    dispatch
}

async fn turn_notifications_and_spans_share_one_client_trace_with_exact_parent_links(
    transport: Transport,
) {
    let (server, mut client) = start_initialized(transport, 0).await;
    let thread_id = client.start_thread().await;
    let parent = TraceContext::random();
    let started = client
        .start_turn(&thread_id, "hello traced world", Some(&parent))
        .await;
    let turn_id = started.turn_id();
    let completed = client.wait_for_turn_completed(&turn_id).await;
    assert_eq!(completed_status(&completed), "completed", "{completed}");
    let earlier = client.take_notifications(|n| notification_turn_id(n) == Some(turn_id.as_str()));
    let read = client.read_thread_with_turns(&thread_id).await;
    client.close().await;
    let finished = server.shutdown().await;

    // The chain, span by span.
    let request = finished.request_span(&started.id_str());
    assert_eq!(request.name, "turn/start", "{request}");
    assert_eq!(request.kind, SPAN_KIND_SERVER, "{request}");
    assert_eq!(request.trace_id, parent.trace_id, "{request}");
    assert_eq!(
        request.parent_span_id.as_deref(),
        Some(parent.span_id.as_str()),
        "the request span is the client span's child: {request}"
    );
    assert_attr(request, "rpc.method", "turn/start");
    assert_attr(request, "rpc.request_id", &started.id_str());
    assert_attr(request, "thread.id", &thread_id);
    assert_attr(request, "turn.id", &turn_id);

    let turn = finished.turn_span(&turn_id);
    assert_dispatch_between(&finished, request, turn, "user_turn", &thread_id);
    assert_eq!(turn.kind, SPAN_KIND_INTERNAL, "{turn}");
    assert_eq!(turn.trace_id, parent.trace_id, "{turn}");
    for (key, expected) in [
        ("gen_ai.operation.name", "invoke_agent"),
        ("gen_ai.agent.name", "skein"),
        ("gen_ai.conversation.id", thread_id.as_str()),
        ("gen_ai.request.model", "echo"),
        ("thread.id", thread_id.as_str()),
        ("turn.id", turn_id.as_str()),
        ("turn.kind", "regular"),
        ("turn.status", "completed"),
    ] {
        assert_attr(turn, key, expected);
    }

    let chats: Vec<&Span> = finished
        .children_of(&turn.span_id)
        .into_iter()
        .filter(|s| s.name == CHAT_SPAN_NAME)
        .collect();
    let [chat] = chats.as_slice() else {
        panic!(
            "expected exactly one {CHAT_SPAN_NAME:?} child of the turn span, found {}:\n{}",
            chats.len(),
            finished.dump()
        );
    };
    assert_child_of(chat, turn);
    assert_eq!(chat.kind, SPAN_KIND_CLIENT, "{chat}");
    assert_attr(chat, "gen_ai.operation.name", "chat");
    assert_attr(chat, "gen_ai.provider.name", "skein");
    assert_attr(chat, "skein.provider.id", "skein");
    assert_attr(chat, "gen_ai.request.model", "echo");

    // Every notification of the turn carries the turn span's context.
    let methods: Vec<&str> = earlier
        .iter()
        .filter_map(|n| n["method"].as_str())
        .collect();
    for method in ["turn/started", "item/started", "item/completed"] {
        assert!(
            methods.contains(&method),
            "no {method} before turn/completed; got {methods:?}"
        );
    }
    for notification in earlier.iter().chain([&completed]) {
        let context = TraceContext::of_message(notification);
        assert_eq!(
            (context.trace_id.as_str(), context.span_id.as_str()),
            (turn.trace_id.as_str(), turn.span_id.as_str()),
            "the envelope trace of a turn notification is the turn span's context: \
             {notification}\n  turn span: {turn}"
        );
    }

    // thread/read reports the same span.
    let turns = read.result()["thread"]["turns"]
        .as_array()
        .unwrap_or_else(|| panic!("thread/read lacks thread.turns: {}", read.message));
    let [recorded] = turns.as_slice() else {
        panic!("expected one turn in thread/read: {}", read.message);
    };
    assert_eq!(recorded["id"], json!(turn_id), "{recorded}");
    assert_eq!(recorded["status"], json!("completed"), "{recorded}");
    assert_eq!(
        (recorded["traceId"].as_str(), recorded["spanId"].as_str()),
        (Some(turn.trace_id.as_str()), Some(turn.span_id.as_str())),
        "thread/read traceId/spanId of the turn: {recorded}\n  turn span: {turn}"
    );
}

async fn request_span_ends_before_turn_span_which_starts_after_dispatch_and_ends_after_chat(
    transport: Transport,
) {
    // The turn is held open and only ends when interrupted, which happens
    // after the turn/start response arrived: the request span has ended by
    // then, whatever the machine's load.
    let (server, mut client) = start_initialized(transport, HOLD_DELAY_MS).await;
    let thread_id = client.start_thread().await;
    let parent = TraceContext::random();
    let started = client
        .start_turn(&thread_id, LONG_INPUT, Some(&parent))
        .await;
    let turn_id = started.turn_id();
    client.wait_for_first_delta(&turn_id).await;
    client
        .request(
            "turn/interrupt",
            json!({"threadId": thread_id, "turnId": turn_id}),
            None,
        )
        .await
        .result();
    let completed = client.wait_for_turn_completed(&turn_id).await;
    assert_eq!(completed_status(&completed), "interrupted", "{completed}");
    client.close().await;
    let finished = server.shutdown().await;

    let request = finished.request_span(&started.id_str());
    let turn = finished.turn_span(&turn_id);
    let dispatch = finished.parent_of(turn);
    assert_eq!(dispatch.name, "op.dispatch.user_turn", "{dispatch}");
    let chats: Vec<&Span> = finished
        .children_of(&turn.span_id)
        .into_iter()
        .filter(|s| s.name == CHAT_SPAN_NAME)
        .collect();
    let [chat] = chats.as_slice() else {
        panic!(
            "expected one {CHAT_SPAN_NAME:?} child of the turn span:\n{}",
            finished.dump()
        );
    };

    assert!(
        turn.end_time_unix_nano > request.end_time_unix_nano,
        "the turn span must end after the request span:\n  request: {request}\n  turn:    {turn}"
    );
    assert!(
        turn.end_time_unix_nano >= chat.end_time_unix_nano,
        "the turn span must not end before its chat span:\n  chat: {chat}\n  turn: {turn}"
    );
    assert!(
        turn.start_time_unix_nano > dispatch.start_time_unix_nano,
        "the turn span must start after its dispatch span:\n  dispatch: {dispatch}\n  turn:     {turn}"
    );
}

async fn completed_turn_closes_its_span_once_with_status_completed_and_usage(transport: Transport) {
    let (server, mut client) = start_initialized(transport, 0).await;
    let thread_id = client.start_thread().await;
    let started = client
        .start_turn(&thread_id, "count these four words", None)
        .await;
    let turn_id = started.turn_id();
    let completed = client.wait_for_turn_completed(&turn_id).await;
    client.close().await;
    let finished = server.shutdown().await;

    assert_eq!(completed_status(&completed), "completed", "{completed}");
    let usage = &completed["params"]["usage"];
    let turn = finished.turn_span(&turn_id);
    assert_attr(turn, "turn.status", "completed");
    assert_ne!(turn.status_code, STATUS_CODE_ERROR, "{turn}");
    for (key, wire) in [
        ("gen_ai.usage.input_tokens", "inputTokens"),
        ("gen_ai.usage.output_tokens", "outputTokens"),
    ] {
        let value = turn
            .attr_int(key)
            .unwrap_or_else(|| panic!("the turn span lacks integer {key}: {turn}"));
        assert_eq!(
            Some(value),
            usage[wire].as_i64(),
            "{key} must equal turn/completed usage.{wire} ({completed}): {turn}"
        );
    }
}

async fn interrupted_turn_closes_its_span_once_with_status_interrupted(transport: Transport) {
    let (server, mut client) = start_initialized(transport, HOLD_DELAY_MS).await;
    let thread_id = client.start_thread().await;
    let started = client.start_turn(&thread_id, LONG_INPUT, None).await;
    let turn_id = started.turn_id();
    client.wait_for_first_delta(&turn_id).await;
    let interrupt = client
        .request(
            "turn/interrupt",
            json!({"threadId": thread_id, "turnId": turn_id}),
            None,
        )
        .await;
    assert_eq!(interrupt.result(), &json!({}), "{}", interrupt.message);
    let completed = client.wait_for_turn_completed(&turn_id).await;
    client.close().await;
    let finished = server.shutdown().await;

    assert_eq!(completed_status(&completed), "interrupted", "{completed}");
    let turn = finished.turn_span(&turn_id);
    assert_attr(turn, "turn.status", "interrupted");
    assert_ne!(turn.status_code, STATUS_CODE_ERROR, "{turn}");
}

async fn failed_turn_closes_its_span_once_with_error_status_and_message(transport: Transport) {
    let (server, mut client) = start_initialized(transport, 0).await;
    let thread_id = client.start_thread().await;
    let started = client
        .start_turn(&thread_id, "/fail on purpose", None)
        .await;
    let turn_id = started.turn_id();
    let completed = client.wait_for_turn_completed(&turn_id).await;
    client.close().await;
    let finished = server.shutdown().await;

    assert_eq!(completed_status(&completed), "failed", "{completed}");
    assert!(
        completed["params"]["turn"]["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "a failed turn/completed carries turn.error.message: {completed}"
    );
    let turn = finished.turn_span(&turn_id);
    assert_eq!(turn.status_code, STATUS_CODE_ERROR, "{turn}");
    assert!(
        turn.status_message
            .as_deref()
            .is_some_and(|m| !m.is_empty()),
        "an errored turn span carries a status message: {turn}"
    );
    assert_attr(turn, "turn.status", "failed");
    // One warning line says which turn failed and why.
    let message = completed["params"]["turn"]["error"]["message"]
        .as_str()
        .unwrap_or_default();
    let warned: Vec<&String> = finished
        .stderr()
        .iter()
        .filter(|l| l.contains("WARN") && l.contains("turn failed"))
        .collect();
    assert_eq!(warned.len(), 1, "{:#?}", finished.stderr());
    assert!(
        warned[0].contains(&thread_id)
            && warned[0].contains(&turn_id)
            && warned[0].contains(message),
        "{}",
        warned[0]
    );
}

async fn shutdown_mid_turn_delivers_interrupted_completion_and_closes_the_span_once(
    transport: Transport,
) {
    let (server, mut client) = start_initialized(transport, HOLD_DELAY_MS).await;
    let thread_id = client.start_thread().await;
    let started = client.start_turn(&thread_id, LONG_INPUT, None).await;
    let turn_id = started.turn_id();
    client.wait_for_first_delta(&turn_id).await;
    // EOF on stdin (stdio) or SIGTERM (WebSocket) while the turn streams;
    // `shutdown` asserts exit code 0.
    let finished = server.shutdown().await;
    // What the server wrote before closing is still readable, in order: the
    // read panics if the connection closed without turn/completed.
    let completed = client.wait_for_turn_completed(&turn_id).await;

    assert_eq!(completed_status(&completed), "interrupted", "{completed}");
    let turn = finished.turn_span(&turn_id);
    assert_attr(turn, "turn.status", "interrupted");
}

async fn review_and_compact_turn_spans_have_their_kind_under_their_own_dispatch(
    transport: Transport,
) {
    let (server, mut client) = start_initialized(transport, 0).await;
    let thread_id = client.start_thread().await;
    let mut turns = Vec::new();
    for (method, op, kind) in [
        ("review/start", "review", "review"),
        ("thread/compact/start", "compact", "compact"),
    ] {
        let parent = TraceContext::random();
        let response = client
            .request(
                method,
                json!({"threadId": thread_id}),
                Some(parent.carrier()),
            )
            .await;
        support::check_turn_started_result(&response);
        let turn_id = response.turn_id();
        let completed = client.wait_for_turn_completed(&turn_id).await;
        assert_eq!(completed_status(&completed), "completed", "{completed}");
        turns.push((method, op, kind, parent, response, turn_id));
    }
    client.close().await;
    let finished = server.shutdown().await;

    for (method, op, kind, parent, response, turn_id) in &turns {
        let request = finished.request_span(&response.id_str());
        assert_eq!(request.name, *method, "{request}");
        assert_eq!(
            (request.trace_id.as_str(), request.parent_span_id.as_deref()),
            (parent.trace_id.as_str(), Some(parent.span_id.as_str())),
            "{method}: the request span continues the client's span: {request}"
        );
        let turn = finished.turn_span(turn_id);
        assert_attr(turn, "turn.kind", kind);
        assert_attr(turn, "turn.status", "completed");
        assert_dispatch_between(&finished, request, turn, op, &thread_id);
    }
}

async fn unary_methods_produce_only_a_request_span_without_dispatch_or_children(
    transport: Transport,
) {
    let (server, mut client) = start_initialized(transport, 0).await;
    let mut calls: Vec<(TraceContext, Response)> = Vec::new();
    let parent = TraceContext::random();
    let thread_start = client
        .request("thread/start", json!({}), Some(parent.carrier()))
        .await;
    let thread_id = thread_start.thread_id();
    calls.push((parent, thread_start));
    for (method, params) in [
        ("thread/list", json!({})),
        (
            "thread/read",
            json!({"threadId": thread_id, "includeTurns": true}),
        ),
        ("model/list", json!({})),
    ] {
        let parent = TraceContext::random();
        let response = client.request(method, params, Some(parent.carrier())).await;
        response.result();
        calls.push((parent, response));
    }
    client.close().await;
    let finished = server.shutdown().await;

    let mut request_span_ids = HashSet::new();
    let mut trace_ids = HashSet::new();
    for (parent, response) in &calls {
        let span = finished.request_span(&response.id_str());
        assert_eq!(
            (span.trace_id.as_str(), span.parent_span_id.as_deref()),
            (parent.trace_id.as_str(), Some(parent.span_id.as_str())),
            "the request span continues the client's span: {span}"
        );
        request_span_ids.insert(span.span_id.clone());
        trace_ids.insert(parent.trace_id.clone());
    }
    let children: Vec<String> = finished
        .spans
        .iter()
        .filter(|s| {
            s.parent_span_id
                .as_ref()
                .is_some_and(|p| request_span_ids.contains(p))
        })
        .map(ToString::to_string)
        .collect();
    assert!(
        children.is_empty(),
        "unary request spans must have no children, found:\n  {}",
        children.join("\n  ")
    );
    let dispatches: Vec<String> = finished
        .spans
        .iter()
        .filter(|s| s.name.starts_with("op.dispatch.") && trace_ids.contains(&s.trace_id))
        .map(ToString::to_string)
        .collect();
    assert!(
        dispatches.is_empty(),
        "no dispatch span may share a unary request's trace, found:\n  {}",
        dispatches.join("\n  ")
    );
}

async fn turn_spans_of_a_thread_link_to_the_previous_turn_in_order(transport: Transport) {
    let (server, mut client) = start_initialized(transport, 0).await;
    let thread_id = client.start_thread().await;
    let mut turn_ids = Vec::new();
    for text in ["first turn", "second turn", "third turn"] {
        let parent = TraceContext::random();
        let turn_id = client
            .start_turn(&thread_id, text, Some(&parent))
            .await
            .turn_id();
        let completed = client.wait_for_turn_completed(&turn_id).await;
        assert_eq!(completed_status(&completed), "completed", "{completed}");
        turn_ids.push(turn_id);
    }
    client.close().await;
    let finished = server.shutdown().await;

    let spans: Vec<&Span> = turn_ids.iter().map(|id| finished.turn_span(id)).collect();
    let [first, second, third] = spans.as_slice() else {
        unreachable!("three turns were started");
    };
    assert!(
        first.links.is_empty(),
        "the thread's first turn links nowhere: {first}"
    );
    assert!(
        second.links_to(first),
        "turn 2 must link to turn 1:\n  turn 1: {first}\n  turn 2: {second}"
    );
    assert!(
        third.links_to(second),
        "turn 3 must link to turn 2:\n  turn 2: {second}\n  turn 3: {third}"
    );
    assert!(
        !third.links_to(first),
        "turn 3 links to its predecessor only, not to turn 1:\n  turn 1: {first}\n  turn 3: {third}"
    );
}

async fn rejected_turn_requests_fail_and_leave_only_the_running_turns_span(transport: Transport) {
    let (server, mut client) = start_initialized(transport, HOLD_DELAY_MS).await;
    let thread_id = client.start_thread().await;

    let unknown = client
        .request(
            "turn/start",
            turn_start_params("no-such-thread", "hello"),
            None,
        )
        .await;
    assert_eq!(unknown.error_code(), INVALID_PARAMS, "{}", unknown.message);

    let running = client.start_turn(&thread_id, LONG_INPUT, None).await;
    let turn_id = running.turn_id();
    let busy = client
        .request(
            "turn/start",
            turn_start_params(&thread_id, "while busy"),
            None,
        )
        .await;
    assert_eq!(busy.error_code(), INVALID_REQUEST, "{}", busy.message);

    client
        .request(
            "turn/interrupt",
            json!({"threadId": thread_id, "turnId": turn_id}),
            None,
        )
        .await
        .result();
    let completed = client.wait_for_turn_completed(&turn_id).await;
    assert_eq!(completed_status(&completed), "interrupted", "{completed}");
    let stale_interrupt = client
        .request(
            "turn/interrupt",
            json!({"threadId": thread_id, "turnId": turn_id}),
            None,
        )
        .await;
    assert_eq!(
        stale_interrupt.error_code(),
        INVALID_REQUEST,
        "{}",
        stale_interrupt.message
    );
    client.close().await;
    let finished = server.shutdown().await;

    let turn_spans: Vec<String> = finished
        .spans
        .iter()
        .filter(|s| s.name == TURN_SPAN_NAME)
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        turn_spans.len(),
        1,
        "exactly one turn span (the interrupted turn's), found:\n  {}",
        turn_spans.join("\n  ")
    );
    let turn = finished.turn_span(&turn_id);
    assert_attr(turn, "turn.status", "interrupted");
    let open: Vec<String> = finished
        .open_spans()
        .iter()
        .map(ToString::to_string)
        .collect();
    assert!(
        open.is_empty(),
        "no span may be left open, found:\n  {}",
        open.join("\n  ")
    );

    for failed in [&unknown, &busy, &stale_interrupt] {
        let span = finished.request_span(&failed.id_str());
        assert_eq!(span.status_code, STATUS_CODE_ERROR, "{span}");
        let children = finished.children_of(&span.span_id);
        assert!(
            children.is_empty(),
            "a rejected request starts nothing, yet {span} has children: {children:?}"
        );
    }
}

/// Number of WebSocket connections of the concurrency test.
const CONNECTIONS: usize = 10;
/// Threads per connection, one turn on each.
const TURNS_PER_CONNECTION: usize = 10;

/// One turn of the concurrency test, as the client saw it.
struct ConcurrentTurn {
    parent: TraceContext,
    request_id: String,
    thread_id: String,
    turn_id: String,
}

/// One connection of the concurrency test: starts its threads, waits for
/// every connection to be ready, sends one `turn/start` per thread without
/// waiting in between, then waits for every `turn/completed`.
async fn run_concurrent_connection(
    mut client: Client,
    index: usize,
    ready: Arc<Barrier>,
) -> Vec<ConcurrentTurn> {
    client
        .initialize(&format!("e2e-concurrent-{index}"), "1")
        .await;
    let mut thread_ids = Vec::new();
    for _ in 0..TURNS_PER_CONNECTION {
        thread_ids.push(client.start_thread().await);
    }
    tokio::time::timeout(TIMEOUT, ready.wait())
        .await
        .unwrap_or_else(|_| panic!("connection {index}: the other connections never got ready"));

    let mut sent = Vec::new();
    for thread_id in thread_ids {
        let parent = TraceContext::random();
        let id = client
            .send_request(
                "turn/start",
                turn_start_params(&thread_id, "concurrent turns stream these words"),
                Some(parent.carrier()),
            )
            .await;
        sent.push((parent, id, thread_id));
    }
    let mut turns = Vec::new();
    for (parent, id, thread_id) in sent {
        let response = client.recv_response(id).await;
        support::check_turn_started_result(&response);
        turns.push(ConcurrentTurn {
            parent,
            request_id: response.id_str(),
            thread_id,
            turn_id: response.turn_id(),
        });
    }
    for turn in &turns {
        let completed = client.wait_for_turn_completed(&turn.turn_id).await;
        assert_eq!(
            completed_status(&completed),
            "completed",
            "connection {index}: {completed}"
        );
    }
    client.close().await;
    turns
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_hundred_concurrent_turns_on_ten_connections_each_get_their_own_span_chain() {
    // Every turn streams for a while, so the turns overlap.
    // A hundred turns run at once: above the default --max-running-turns.
    let options = ServerOptions::default()
        .echo_delay_ms(100)
        .arg("--max-running-turns")
        .arg("128");
    let mut server = Server::start_with(Transport::WebSocket, options).await;
    let ready = Arc::new(Barrier::new(CONNECTIONS));
    let mut tasks = Vec::new();
    for index in 0..CONNECTIONS {
        let client = server.connect().await;
        tasks.push(tokio::spawn(run_concurrent_connection(
            client,
            index,
            Arc::clone(&ready),
        )));
    }
    let mut turns = Vec::new();
    for task in tasks {
        turns.extend(task.await.expect("a connection task panicked (see above)"));
    }
    let finished = server.shutdown().await;

    assert_eq!(turns.len(), CONNECTIONS * TURNS_PER_CONNECTION);
    let distinct: HashSet<&str> = turns.iter().map(|t| t.turn_id.as_str()).collect();
    assert_eq!(distinct.len(), turns.len(), "turn ids must be distinct");
    for turn in &turns {
        let request = finished.request_span(&turn.request_id);
        assert_eq!(request.name, "turn/start", "{request}");
        assert_eq!(
            (request.trace_id.as_str(), request.parent_span_id.as_deref()),
            (
                turn.parent.trace_id.as_str(),
                Some(turn.parent.span_id.as_str())
            ),
            "turn {}: the request span continues its own client span: {request}",
            turn.turn_id
        );
        assert_attr(request, "turn.id", &turn.turn_id);
        let span = finished.turn_span(&turn.turn_id);
        assert_dispatch_between(&finished, request, span, "user_turn", &turn.thread_id);
        assert_eq!(span.trace_id, turn.parent.trace_id, "{span}");
        assert_attr(span, "thread.id", &turn.thread_id);
        assert_attr(span, "turn.status", "completed");
    }
}
