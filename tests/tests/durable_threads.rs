//! End-to-end tests of durable thread history against the real `skein`
//! binary.
//!
//! Thread history lives in `$SKEIN_HOME/threads/<thread-id>.jsonl`. A test
//! that restarts the server starts the next one on the same home
//! ([`ServerOptions::home`]); two servers may also run on one home at once.
//!
//! Turns that must stay open (to be killed mid-turn) run against a server
//! whose echo model waits [`HOLD_DELAY_MS`] between words, so they can only
//! end by the test's own action. Every other server runs the echo model
//! without delay. Synchronisation is on responses, notifications and process
//! exit only.

mod support;

use std::collections::HashSet;
use std::io::Write as _;
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use support::{
    Client, INVALID_REQUEST, Response, Server, ServerOptions, SkeinHome, TraceContext, Transport,
    mode_of, notification_turn_id,
};

/// Echo delay that keeps a turn open until the test kills the server (far
/// beyond every test timeout).
const HOLD_DELAY_MS: u64 = 60_000;

/// Input for a turn held open: many words, each followed by the hold delay.
const LONG_INPUT: &str = "one two three four five six seven eight nine ten eleven twelve";

/// What the error of a refused write to a thread held elsewhere must say.
const HELD_ELSEWHERE: &str = "open for writing in another skein process";

/// Starts a stdio server (in `home` when given, else in a fresh one) whose
/// echo model waits `echo_delay_ms` between words, connects and
/// initializes its client.
async fn start(home: Option<&SkeinHome>, echo_delay_ms: u64) -> (Server, Client) {
    let mut options = ServerOptions::default().echo_delay_ms(echo_delay_ms);
    if let Some(home) = home {
        options = options.home(home);
    }
    let mut server = Server::start_with(Transport::Stdio, options).await;
    let mut client = server.connect().await;
    client.initialize("e2e-durable-threads", "0.0.1").await;
    (server, client)
}

/// Closes the client and shuts the server down gracefully (exit code 0).
async fn stop(server: Server, client: Client) {
    client.close().await;
    server.shutdown().await;
}

/// A finished turn as the client saw it live.
#[derive(Debug, Clone)]
struct SeenTurn {
    id: String,
    input: String,
    /// The turn span's context, from the turn's notifications.
    span: TraceContext,
}

/// Runs a turn to its end under a fresh client trace and checks it ended
/// `completed` with the input echoed back. Every notification of the turn
/// must carry one and the same context (the turn span's), which is returned.
async fn run_turn(client: &mut Client, thread_id: &str, input: &str) -> SeenTurn {
    let (seen, completed) = run_turn_to_end(client, thread_id, input).await;
    assert_eq!(
        completed["params"]["turn"]["status"], "completed",
        "turn/completed of turn {}: {completed}",
        seen.id
    );
    seen
}

/// Runs a turn to its end; returns it and its `turn/completed`.
async fn run_turn_to_end(client: &mut Client, thread_id: &str, input: &str) -> (SeenTurn, Value) {
    let parent = TraceContext::random();
    let turn_id = client
        .start_turn(thread_id, input, Some(&parent))
        .await
        .turn_id();
    let completed = client.wait_for_turn_completed(&turn_id).await;
    let mut notifications =
        client.take_notifications(|n| notification_turn_id(n) == Some(turn_id.as_str()));
    notifications.push(completed.clone());
    let span = TraceContext::of_message(&completed);
    assert_eq!(
        span.trace_id, parent.trace_id,
        "the turn runs in the client's trace: {completed}"
    );
    for notification in &notifications {
        let context = TraceContext::of_message(notification);
        assert_eq!(
            (&context.trace_id, &context.span_id),
            (&span.trace_id, &span.span_id),
            "every notification of turn {turn_id} carries the turn span's context: \
             {notification}"
        );
    }
    let seen = SeenTurn {
        id: turn_id,
        input: input.to_owned(),
        span,
    };
    (seen, completed)
}

/// `thread/read` with turns; returns `result.thread`.
async fn read_thread(client: &mut Client, thread_id: &str) -> Value {
    let response = client.read_thread_with_turns(thread_id).await;
    let thread = response.result()["thread"].clone();
    assert_eq!(thread["id"], json!(thread_id), "{}", response.message);
    thread
}

/// `thread.turns` of a thread object.
fn turns_of(thread: &Value) -> Vec<Value> {
    thread["turns"]
        .as_array()
        .unwrap_or_else(|| panic!("thread lacks a turns array: {thread}"))
        .clone()
}

/// The ids of `turns`.
fn turn_ids(turns: &[Value]) -> Vec<&str> {
    turns
        .iter()
        .map(|t| {
            t["id"]
                .as_str()
                .unwrap_or_else(|| panic!("turn lacks a string id: {t}"))
        })
        .collect()
}

/// The text of the one `agentMessage` item of a turn.
fn agent_text(turn: &Value) -> &str {
    let texts: Vec<&str> = turn["items"]
        .as_array()
        .unwrap_or_else(|| panic!("turn lacks an items array: {turn}"))
        .iter()
        .filter(|item| item["type"] == "agentMessage")
        .filter_map(|item| item["text"].as_str())
        .collect();
    match texts.as_slice() {
        [text] => text,
        _ => panic!("expected exactly one agentMessage item with a text: {turn}"),
    }
}

/// The text of a turn's `userMessage` items, concatenated.
fn user_text(turn: &Value) -> String {
    turn["items"]
        .as_array()
        .unwrap_or_else(|| panic!("turn lacks an items array: {turn}"))
        .iter()
        .filter(|item| item["type"] == "userMessage")
        .flat_map(|item| item["content"].as_array().cloned().unwrap_or_default())
        .filter_map(|part| part["text"].as_str().map(str::to_owned))
        .collect()
}

/// Asserts `recorded` (from `thread/read`) is the completed turn `seen`:
/// same id, status `completed`, the turn span's trace and span ids, the
/// input as user message and the echoed input as agent output.
fn assert_completed_turn(recorded: &Value, seen: &SeenTurn) {
    assert_eq!(recorded["id"], json!(seen.id), "{recorded}");
    assert_eq!(recorded["status"], "completed", "{recorded}");
    assert_eq!(
        (recorded["traceId"].as_str(), recorded["spanId"].as_str()),
        (
            Some(seen.span.trace_id.as_str()),
            Some(seen.span.span_id.as_str())
        ),
        "traceId/spanId of turn {} must be those its notifications carried: {recorded}",
        seen.id
    );
    assert_eq!(agent_text(recorded), seen.input, "agent output: {recorded}");
    assert_eq!(user_text(recorded), seen.input, "user message: {recorded}");
}

/// `thread/start` with these params; returns the response.
async fn start_thread_with(client: &mut Client, params: Value) -> Response {
    client.request("thread/start", params, None).await
}

/// `thread/resume`; returns the response.
async fn resume(client: &mut Client, thread_id: &str) -> Response {
    client
        .request("thread/resume", json!({"threadId": thread_id}), None)
        .await
}

/// Every page of `thread/list` with this page size, following `nextCursor`
/// until it is null.
async fn list_pages(client: &mut Client, limit: u32) -> Vec<Value> {
    let mut pages = Vec::new();
    let mut cursor = Value::Null;
    loop {
        let mut params = json!({ "limit": limit });
        if !cursor.is_null() {
            params["cursor"] = cursor.clone();
        }
        let response = client.request("thread/list", params, None).await;
        let page = response.result().clone();
        assert!(
            page["data"].is_array(),
            "thread/list lacks a data array: {}",
            response.message
        );
        cursor = page["nextCursor"].clone();
        pages.push(page);
        if cursor.is_null() {
            return pages;
        }
        assert!(
            cursor.is_string(),
            "nextCursor must be a string or null: {}",
            response.message
        );
        assert!(
            pages.len() <= 100,
            "thread/list keeps returning a nextCursor"
        );
    }
}

/// The ids of every listed thread (all pages of size 50).
async fn listed_ids(client: &mut Client) -> Vec<String> {
    list_pages(client, 50)
        .await
        .iter()
        .flat_map(page_ids)
        .collect()
}

/// The thread ids of one `thread/list` page, in order.
fn page_ids(page: &Value) -> Vec<String> {
    page["data"]
        .as_array()
        .unwrap_or_else(|| panic!("page lacks a data array: {page}"))
        .iter()
        .map(|t| {
            t["id"]
                .as_str()
                .unwrap_or_else(|| panic!("listed thread lacks a string id: {t}"))
                .to_owned()
        })
        .collect()
}

/// The JSON records of a thread file, one per line; every line must be
/// complete JSON.
fn file_records(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("read thread file {}: {e}", path.display()));
    assert!(
        text.ends_with('\n'),
        "{} must end with a complete line: {text:?}",
        path.display()
    );
    text.lines()
        .enumerate()
        .map(|(i, line)| {
            serde_json::from_str(line).unwrap_or_else(|e| {
                panic!(
                    "{}:{}: not a JSON record ({e}): {line}",
                    path.display(),
                    i + 1
                )
            })
        })
        .collect()
}

/// The names of the files in `dir`, sorted.
/// The lock file every store keeps beside its thread files.
const LOCK_FILE_NAME: &str = "writers.lock";

/// The names of the files in `dir`, sorted, without the store's lock file.
fn file_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read dir {}: {e}", dir.display()))
        .map(|entry| {
            entry
                .expect("read dir entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .filter(|name| name != LOCK_FILE_NAME)
        .collect();
    names.sort();
    names
}

/// A UUIDv7-shaped id for the current time that no server created.
fn foreign_uuid_v7() -> String {
    let millis = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after the epoch")
        .as_millis() as u64;
    let random = TraceContext::random();
    let hex = random.trace_id.as_bytes();
    let r = |from: usize, len: usize| std::str::from_utf8(&hex[from..from + len]).unwrap();
    format!(
        "{:08x}-{:04x}-7{}-8{}-{}",
        millis >> 16,
        millis & 0xffff,
        r(0, 3),
        r(3, 3),
        r(6, 12)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_turns_are_read_back_after_a_restart_in_order_completed_with_trace_ids_and_output() {
    let (server, mut client) = start(None, 0).await;
    let home = server.home();
    let thread_id = client.start_thread().await;
    let mut seen = Vec::new();
    for input in [
        "first turn alpha",
        "second turn bravo charlie",
        "third turn delta",
    ] {
        seen.push(run_turn(&mut client, &thread_id, input).await);
    }
    client.close().await;
    let finished = server.shutdown().await;
    // The contexts the notifications carried are the turn spans' own.
    for turn in &seen {
        let span = finished.turn_span(&turn.id);
        assert_eq!(
            (&span.trace_id, &span.span_id),
            (&turn.span.trace_id, &turn.span.span_id),
            "turn {} notifications vs its span: {span}",
            turn.id
        );
    }

    let (server, mut client) = start(Some(&home), 0).await;
    let thread = read_thread(&mut client, &thread_id).await;
    let turns = turns_of(&thread);
    let expected_ids: Vec<&str> = seen.iter().map(|t| t.id.as_str()).collect();
    assert_eq!(
        turn_ids(&turns),
        expected_ids,
        "the three turns, in order: {thread}"
    );
    for (recorded, seen) in turns.iter().zip(&seen) {
        assert_completed_turn(recorded, seen);
    }
    assert_eq!(thread["model"], "echo", "{thread}");
    assert_eq!(thread["ephemeral"], false, "{thread}");
    stop(server, client).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_turn_keeps_finished_turns_marks_the_running_one_interrupted_and_resume_continues()
 {
    // First life: two completed turns, graceful exit.
    let (server, mut client) = start(None, 0).await;
    let home = server.home();
    let thread_id = client.start_thread().await;
    let first = run_turn(&mut client, &thread_id, "completed before the crash").await;
    let second = run_turn(&mut client, &thread_id, "also completed before").await;
    stop(server, client).await;

    // Second life, with a slow model: `turn/start` on the stored thread
    // loads it; a failing turn finishes at once (before any word), then a
    // long turn is running and streaming when the process is killed.
    let (server, mut client) = start(Some(&home), HOLD_DELAY_MS).await;
    let (failed, failed_completed) =
        run_turn_to_end(&mut client, &thread_id, "/fail in the doomed process").await;
    assert_eq!(
        failed_completed["params"]["turn"]["status"], "failed",
        "{failed_completed}"
    );
    let running = client
        .start_turn(&thread_id, LONG_INPUT, None)
        .await
        .turn_id();
    client
        .wait_for_notification(&format!("first delta of turn {running}"), |n| {
            n["method"] == "item/agentMessage/delta"
                && notification_turn_id(n) == Some(running.as_str())
        })
        .await;
    server.kill_9().await;
    drop(client);

    // Third life: everything finished is there, the torn turn interrupted.
    let (server, mut client) = start(Some(&home), 0).await;
    let thread = read_thread(&mut client, &thread_id).await;
    let turns = turns_of(&thread);
    assert_eq!(
        turn_ids(&turns),
        [
            first.id.as_str(),
            second.id.as_str(),
            failed.id.as_str(),
            running.as_str()
        ],
        "every finished turn and the torn one, in order: {thread}"
    );
    assert_completed_turn(&turns[0], &first);
    assert_completed_turn(&turns[1], &second);
    assert_eq!(turns[2]["status"], "failed", "{}", turns[2]);
    assert_eq!(
        turns[3]["status"], "interrupted",
        "the turn running at the kill: {}",
        turns[3]
    );

    let resumed = resume(&mut client, &thread_id).await;
    let result = resumed.result();
    assert_eq!(
        result["thread"]["id"],
        json!(thread_id),
        "{}",
        resumed.message
    );
    assert_eq!(result["model"], "echo", "{}", resumed.message);
    assert!(
        result["modelProvider"].is_string(),
        "thread/resume lacks modelProvider: {}",
        resumed.message
    );
    assert_eq!(
        turns_of(&result["thread"]),
        turns,
        "thread/resume returns the stored turns: {}",
        resumed.message
    );
    let after = run_turn(&mut client, &thread_id, "life goes on").await;
    let thread = read_thread(&mut client, &thread_id).await;
    let turns = turns_of(&thread);
    assert_eq!(turns.len(), 5, "{thread}");
    assert_eq!(turns[3]["status"], "interrupted", "{thread}");
    assert_completed_turn(&turns[4], &after);
    stop(server, client).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn torn_last_line_and_garbage_files_are_skipped_without_hiding_good_threads() {
    let (server, mut client) = start(None, 0).await;
    let home = server.home();
    let torn_id = client.start_thread().await;
    let t1 = run_turn(&mut client, &torn_id, "intact turn one").await;
    let t2 = run_turn(&mut client, &torn_id, "intact turn two").await;
    let other_id = client.start_thread().await;
    let o1 = run_turn(&mut client, &other_id, "the other thread").await;
    stop(server, client).await;

    // Half a record at the end of the torn thread's file, no newline.
    let record = json!({
        "type": "turnStarted",
        "turnId": foreign_uuid_v7(),
        "kind": "regular",
        "input": "this turn was being written when the power went out",
        "traceId": TraceContext::random().trace_id,
        "spanId": TraceContext::random().span_id,
        "at": 1_700_000_000,
    })
    .to_string();
    let torn_file = home.thread_file(&torn_id);
    let mut bytes = std::fs::read(&torn_file).expect("read the torn thread's file");
    bytes.extend_from_slice(&record.as_bytes()[..record.len() / 2]);
    std::fs::write(&torn_file, bytes).expect("tear the thread file");
    // Garbage: a foreign file, and a thread-named file full of junk.
    let notes = home.threads_dir().join("notes.txt");
    std::fs::write(&notes, "not a thread, just notes\n").expect("write notes.txt");
    let junk_id = foreign_uuid_v7();
    let junk_file = home.thread_file(&junk_id);
    std::fs::write(&junk_file, "this is {not json\n\u{0}\u{1}garbage\n").expect("write junk");

    let (mut server, mut client) = start(Some(&home), 0).await;
    let listed = listed_ids(&mut client).await;
    assert_eq!(
        listed,
        [other_id.clone(), torn_id.clone()],
        "thread/list lists exactly the good threads, newest first"
    );
    let thread = read_thread(&mut client, &torn_id).await;
    let turns = turns_of(&thread);
    assert!(
        turns.len() >= 2,
        "the torn thread keeps its intact turns: {thread}"
    );
    assert_completed_turn(&turns[0], &t1);
    assert_completed_turn(&turns[1], &t2);
    // The torn record's turn is missing or, at most, interrupted.
    for extra in &turns[2..] {
        assert_eq!(extra["status"], "interrupted", "{thread}");
    }
    assert!(turns.len() <= 3, "{thread}");
    let other = read_thread(&mut client, &other_id).await;
    let other_turns = turns_of(&other);
    assert_eq!(other_turns.len(), 1, "{other}");
    assert_completed_turn(&other_turns[0], &o1);

    // The skipped files are named in warnings.
    for name in ["notes.txt".to_owned(), format!("{junk_id}.jsonl")] {
        let line = server.wait_for_stderr(|line| line.contains(&name)).await;
        assert!(
            line.contains("WARN"),
            "the line naming {name} must be a warning: {line}"
        );
    }
    // The garbage is left alone.
    assert!(
        notes.is_file() && junk_file.is_file(),
        "garbage files must not be removed"
    );
    stop(server, client).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thread_with_a_torn_last_line_can_be_resumed_and_its_new_turn_survives_a_restart() {
    let (server, mut client) = start(None, 0).await;
    let home = server.home();
    let thread_id = client.start_thread().await;
    let t1 = run_turn(&mut client, &thread_id, "before the tear").await;
    stop(server, client).await;

    let record = json!({
        "type": "turnCompleted",
        "turnId": foreign_uuid_v7(),
        "status": "completed",
        "output": "never fully written",
        "usage": {"inputTokens": 3, "outputTokens": 3},
        "at": 1_700_000_000,
    })
    .to_string();
    let file = home.thread_file(&thread_id);
    let mut bytes = std::fs::read(&file).expect("read the thread file");
    bytes.extend_from_slice(&record.as_bytes()[..record.len() / 2]);
    std::fs::write(&file, bytes).expect("tear the thread file");

    let (server, mut client) = start(Some(&home), 0).await;
    let resumed = resume(&mut client, &thread_id).await;
    let turns = turns_of(&resumed.result()["thread"]);
    assert_eq!(turn_ids(&turns), [t1.id.as_str()], "{}", resumed.message);
    let t2 = run_turn(&mut client, &thread_id, "after the tear").await;
    stop(server, client).await;

    let (server, mut client) = start(Some(&home), 0).await;
    let thread = read_thread(&mut client, &thread_id).await;
    let turns = turns_of(&thread);
    assert_eq!(
        turn_ids(&turns),
        [t1.id.as_str(), t2.id.as_str()],
        "the turn appended after the torn line must load too: {thread}\nfile:\n{}",
        String::from_utf8_lossy(&std::fs::read(&file).unwrap_or_default())
    );
    assert_completed_turn(&turns[0], &t1);
    assert_completed_turn(&turns[1], &t2);
    stop(server, client).await;
}

/// The parts of a turn a fork copies: status, items and trace ids.
fn copied_part(turn: &Value) -> Value {
    json!({
        "status": turn["status"],
        "items": turn["items"],
        "traceId": turn["traceId"],
        "spanId": turn["spanId"],
    })
}

/// `thread/fork` (with `turnId` when given); checks the response is shaped
/// like `thread/start`'s and a `thread/started` announced the new thread.
async fn fork(client: &mut Client, source: &str, turn_id: Option<&str>) -> String {
    let mut params = json!({ "threadId": source });
    if let Some(turn_id) = turn_id {
        params["turnId"] = json!(turn_id);
    }
    let response = client.request("thread/fork", params, None).await;
    let result = response.result();
    let fork_id = response.thread_id();
    assert_ne!(
        fork_id, source,
        "a fork is a new thread: {}",
        response.message
    );
    assert_eq!(result["model"], "echo", "{}", response.message);
    assert!(
        result["modelProvider"].is_string() && result["thread"]["turns"].is_array(),
        "thread/fork must answer like thread/start: {}",
        response.message
    );
    client
        .wait_for_notification(&format!("thread/started of fork {fork_id}"), |n| {
            n["method"] == "thread/started" && n["params"]["thread"]["id"] == json!(fork_id)
        })
        .await;
    fork_id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fork_copies_turns_up_to_turn_id_or_all_survives_a_restart_and_leaves_the_source_unchanged()
{
    let (server, mut client) = start(None, 0).await;
    let home = server.home();
    let source = client.start_thread().await;
    let mut seen = Vec::new();
    for input in ["fork one", "fork two", "fork three"] {
        seen.push(run_turn(&mut client, &source, input).await);
    }
    let source_before = turns_of(&read_thread(&mut client, &source).await);
    assert_eq!(source_before.len(), 3);

    let partial = fork(&mut client, &source, Some(&seen[1].id)).await;
    // A fork keeps its source's name, as Codex's does.
    client
        .request(
            "thread/name/set",
            json!({"threadId": source, "name": "named source"}),
            None,
        )
        .await
        .result();
    let whole = fork(&mut client, &source, None).await;
    assert_ne!(partial, whole);

    let partial_turns = turns_of(&read_thread(&mut client, &partial).await);
    assert_eq!(
        partial_turns.iter().map(copied_part).collect::<Vec<_>>(),
        source_before[..2]
            .iter()
            .map(copied_part)
            .collect::<Vec<_>>(),
        "a fork at turn 2 holds copies of turns 1 and 2"
    );
    let whole_turns = turns_of(&read_thread(&mut client, &whole).await);
    assert_eq!(
        whole_turns.iter().map(copied_part).collect::<Vec<_>>(),
        source_before.iter().map(copied_part).collect::<Vec<_>>(),
        "a fork without turnId holds copies of every turn"
    );

    // The fork is a thread of its own: a new turn there leaves the source be.
    let extra = run_turn(&mut client, &partial, "only in the fork").await;
    let partial_turns = turns_of(&read_thread(&mut client, &partial).await);
    assert_eq!(partial_turns.len(), 3);
    assert_completed_turn(&partial_turns[2], &extra);
    assert_eq!(
        turns_of(&read_thread(&mut client, &source).await),
        source_before,
        "forking (and using the fork) leaves the source unchanged"
    );
    stop(server, client).await;

    let (server, mut client) = start(Some(&home), 0).await;
    let listed: HashSet<String> = listed_ids(&mut client).await.into_iter().collect();
    for id in [&source, &partial, &whole] {
        assert!(
            listed.contains(id),
            "{id} listed after the restart: {listed:?}"
        );
    }
    assert_eq!(
        turns_of(&read_thread(&mut client, &source).await),
        source_before,
        "the source after the restart"
    );
    assert_eq!(
        turns_of(&read_thread(&mut client, &partial).await),
        partial_turns,
        "the partial fork after the restart"
    );
    let whole_thread = read_thread(&mut client, &whole).await;
    assert_eq!(
        turns_of(&whole_thread),
        whole_turns,
        "the whole fork after the restart"
    );
    // Where each fork comes from, and the name the source had then.
    assert_eq!(
        whole_thread["forkedFromId"],
        json!(source),
        "{whole_thread}"
    );
    assert_eq!(
        whole_thread["name"],
        json!("named source"),
        "{whole_thread}"
    );
    let partial_thread = read_thread(&mut client, &partial).await;
    assert_eq!(
        partial_thread["forkedFromId"],
        json!(source),
        "{partial_thread}"
    );
    assert_eq!(partial_thread["name"], json!(null), "{partial_thread}");
    stop(server, client).await;
}

/// Checks the Thread shape of a `thread/list` entry.
fn assert_listed_thread_shape(thread: &Value) {
    for key in ["id", "preview", "model", "modelProvider"] {
        assert!(
            thread[key].is_string(),
            "listed thread lacks string {key}: {thread}"
        );
    }
    for key in ["createdAt", "updatedAt"] {
        assert!(
            thread[key].is_i64(),
            "listed thread lacks integer {key}: {thread}"
        );
    }
    assert_eq!(thread["model"], "echo", "{thread}");
    assert_eq!(thread["ephemeral"], false, "{thread}");
    assert_eq!(thread["turns"], json!([]), "{thread}");
}

/// Pages through `thread/list` two at a time and checks the pages hold
/// exactly `newest_first` in order, 2 + 2 + 1, the last without cursor.
/// Returns the listed threads by id.
async fn assert_pages_of_two(client: &mut Client, newest_first: &[String]) -> Vec<Value> {
    let pages = list_pages(client, 2).await;
    let sizes: Vec<usize> = pages.iter().map(|p| page_ids(p).len()).collect();
    assert_eq!(sizes, [2, 2, 1], "page sizes: {pages:?}");
    for page in &pages[..2] {
        assert!(page["nextCursor"].is_string(), "{page}");
    }
    let ids: Vec<String> = pages.iter().flat_map(page_ids).collect();
    assert_eq!(
        ids, newest_first,
        "pages newest first, without overlap or gaps"
    );
    let threads: Vec<Value> = pages
        .iter()
        .flat_map(|p| p["data"].as_array().cloned().unwrap_or_default())
        .collect();
    threads.iter().for_each(assert_listed_thread_shape);
    threads
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thread_list_pages_newest_first_without_overlap_or_gaps_and_previews_the_first_message() {
    let (server, mut client) = start(None, 0).await;
    let home = server.home();
    let mut created = Vec::new();
    for _ in 0..5 {
        created.push(client.start_thread().await);
    }
    // Threads 0..4 get a first message (thread 1 a second one too);
    // thread 4 stays without turns.
    let firsts = [
        "alpha is the first message",
        "bravo comes first here",
        "charlie opens this thread",
        "delta starts the last one",
    ];
    for (id, first) in created.iter().zip(firsts) {
        run_turn(&mut client, id, first).await;
    }
    run_turn(&mut client, &created[1], "zulu is only the second message").await;
    let newest_first: Vec<String> = created.iter().rev().cloned().collect();

    let check_previews = |threads: &[Value]| {
        for (id, first) in created.iter().zip(firsts) {
            let thread = threads
                .iter()
                .find(|t| t["id"] == json!(id))
                .unwrap_or_else(|| panic!("{id} not listed"));
            let preview = thread["preview"].as_str().unwrap_or_default();
            assert!(
                !preview.is_empty() && first.starts_with(preview),
                "preview must be the start of the first message {first:?}: {thread}"
            );
        }
    };
    let threads = assert_pages_of_two(&mut client, &newest_first).await;
    check_previews(&threads);
    stop(server, client).await;

    // The same pages from disk after a restart.
    let (server, mut client) = start(Some(&home), 0).await;
    let threads = assert_pages_of_two(&mut client, &newest_first).await;
    check_previews(&threads);
    stop(server, client).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ephemeral_thread_leaves_no_file_while_a_normal_one_is_written_as_json_lines() {
    let (server, mut client) = start(None, 0).await;
    let home = server.home();
    let ephemeral = start_thread_with(&mut client, json!({"ephemeral": true})).await;
    assert_eq!(
        ephemeral.result()["thread"]["ephemeral"],
        true,
        "{}",
        ephemeral.message
    );
    let ephemeral_id = ephemeral.thread_id();
    run_turn(&mut client, &ephemeral_id, "gone with the process").await;
    let normal = start_thread_with(&mut client, json!({})).await;
    assert_eq!(
        normal.result()["thread"]["ephemeral"],
        false,
        "{}",
        normal.message
    );
    let normal_id = normal.thread_id();
    let turn = run_turn(&mut client, &normal_id, "kept on disk").await;
    // As in Codex, only threads kept on disk are listed.
    assert_eq!(
        listed_ids(&mut client).await,
        std::slice::from_ref(&normal_id)
    );

    // The completed turn is on disk by the time turn/completed arrived.
    let normal_file = home.thread_file(&normal_id);
    assert_eq!(
        file_names(&home.threads_dir()),
        [format!("{normal_id}.jsonl")],
        "only the normal thread has a file"
    );
    let records = file_records(&normal_file);
    assert_eq!(
        records.len(),
        3,
        "thread, turnStarted, turnCompleted: {records:?}"
    );
    let header = &records[0];
    assert_eq!(header["type"], "thread", "{header}");
    assert_eq!(header["id"], json!(normal_id), "{header}");
    assert_eq!(header["model"], "echo", "{header}");
    assert!(header["createdAt"].is_i64(), "{header}");
    let started = &records[1];
    assert_eq!(started["type"], "turnStarted", "{started}");
    assert_eq!(started["turnId"], json!(turn.id), "{started}");
    assert_eq!(started["kind"], "regular", "{started}");
    assert_eq!(started["input"], json!(turn.input), "{started}");
    assert_eq!(started["traceId"], json!(turn.span.trace_id), "{started}");
    assert_eq!(started["spanId"], json!(turn.span.span_id), "{started}");
    assert!(started["at"].is_i64(), "{started}");
    let completed = &records[2];
    assert_eq!(completed["type"], "turnCompleted", "{completed}");
    assert_eq!(completed["turnId"], json!(turn.id), "{completed}");
    assert_eq!(completed["status"], "completed", "{completed}");
    assert_eq!(completed["output"], json!(turn.input), "{completed}");
    assert!(completed["usage"].is_object(), "{completed}");
    assert!(completed["at"].is_i64(), "{completed}");
    stop(server, client).await;

    assert_eq!(
        file_names(&home.threads_dir()),
        [format!("{normal_id}.jsonl")],
        "nothing written for the ephemeral thread at shutdown either"
    );
    let (server, mut client) = start(Some(&home), 0).await;
    assert_eq!(listed_ids(&mut client).await, [normal_id]);
    let response = client.read_thread_with_turns(&ephemeral_id).await;
    assert!(
        response.message.get("error").is_some(),
        "an ephemeral thread is gone after a restart: {}",
        response.message
    );
    stop(server, client).await;
}

/// Asserts `response` is the -32600 refusal of a thread held elsewhere.
fn assert_held_elsewhere(response: &Response, what: &str) {
    assert_eq!(
        response.message.get("error").map(|_| response.error_code()),
        Some(INVALID_REQUEST),
        "{what} of a thread another process writes: {}",
        response.message
    );
    let message = response.message["error"]["message"]
        .as_str()
        .unwrap_or_default();
    assert!(
        message.contains(HELD_ELSEWHERE),
        "{what}: the error must say the thread is {HELD_ELSEWHERE}: {}",
        response.message
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_on_one_home_list_each_others_threads_and_only_the_holder_writes() {
    let (server_a, mut a) = start(None, 0).await;
    let home = server_a.home();
    let (server_b, mut b) = start(Some(&home), 0).await;

    let thread_a = a.start_thread().await;
    let a1 = run_turn(&mut a, &thread_a, "written by server a").await;
    let thread_b = b.start_thread().await;
    run_turn(&mut b, &thread_b, "written by server b").await;
    for (name, client) in [("A", &mut a), ("B", &mut b)] {
        let listed = listed_ids(client).await;
        for id in [&thread_a, &thread_b] {
            assert!(
                listed.contains(id),
                "server {name} must list {id}: {listed:?}"
            );
        }
    }

    // A holds its thread: B can read it, not write it (and vice versa).
    let refused = resume(&mut b, &thread_a).await;
    assert_held_elsewhere(&refused, "B's thread/resume");
    let refused = b
        .request(
            "turn/start",
            support::turn_start_params(&thread_a, "sneaking in from b"),
            None,
        )
        .await;
    assert_held_elsewhere(&refused, "B's turn/start");
    let refused = resume(&mut a, &thread_b).await;
    assert_held_elsewhere(&refused, "A's thread/resume");
    let read = read_thread(&mut b, &thread_a).await;
    let turns = turns_of(&read);
    assert_eq!(turns.len(), 1, "B reads A's thread: {read}");
    assert_completed_turn(&turns[0], &a1);
    // A still owns it, and B sees what A writes next.
    let a2 = run_turn(&mut a, &thread_a, "still server a").await;
    let turns = turns_of(&read_thread(&mut b, &thread_a).await);
    assert_eq!(turn_ids(&turns), [a1.id.as_str(), a2.id.as_str()]);
    assert_completed_turn(&turns[1], &a2);

    // Once A is gone, B takes the thread over.
    stop(server_a, a).await;
    let resumed = resume(&mut b, &thread_a).await;
    let turns = turns_of(&resumed.result()["thread"]);
    assert_eq!(
        turn_ids(&turns),
        [a1.id.as_str(), a2.id.as_str()],
        "{}",
        resumed.message
    );
    let b1 = run_turn(&mut b, &thread_a, "server b took over").await;
    let turns = turns_of(&read_thread(&mut b, &thread_a).await);
    assert_eq!(
        turn_ids(&turns),
        [a1.id.as_str(), a2.id.as_str(), b1.id.as_str()]
    );
    assert_completed_turn(&turns[2], &b1);
    stop(server_b, b).await;
}

/// The files under `dir` that process `pid` has open.
fn open_files_under(pid: u32, dir: &Path) -> Vec<PathBuf> {
    let dir = std::fs::canonicalize(dir).expect("canonical threads dir");
    let fds = format!("/proc/{pid}/fd");
    std::fs::read_dir(&fds)
        .unwrap_or_else(|e| panic!("read {fds}: {e}"))
        .filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
        .filter(|target| target.starts_with(&dir))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_loaded_threads_hold_no_history_file_open_and_stay_held() {
    const THREADS: usize = 8;
    let (server_a, mut a) = start(None, 0).await;
    let home = server_a.home();
    let mut threads = Vec::new();
    for n in 0..THREADS {
        let id = a.start_thread().await;
        let turn = run_turn(&mut a, &id, &format!("turn of thread {n}")).await;
        threads.push((id, turn));
    }
    // Every thread is loaded and idle: no history file is open, only the
    // store's one lock file.
    let open = open_files_under(server_a.pid(), &home.threads_dir());
    let histories: Vec<_> = open
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .collect();
    assert!(
        histories.is_empty(),
        "{THREADS} idle loaded threads hold {} history files open: {histories:?}",
        histories.len()
    );
    assert!(open.len() <= 1, "only the lock file is open: {open:?}");
    let loaded = a.request("thread/loaded/list", json!({}), None).await;
    for (id, _) in &threads {
        assert!(
            loaded.result()["data"]
                .as_array()
                .is_some_and(|d| d.contains(&json!(id))),
            "{id} is still loaded: {}",
            loaded.message
        );
    }

    // A second server on the same home reads them, and cannot write them.
    let (server_b, mut b) = start(Some(&home), 0).await;
    for (id, turn) in &threads {
        let refused = resume(&mut b, id).await;
        assert_held_elsewhere(&refused, "B's thread/resume");
        let refused = b
            .request(
                "turn/start",
                support::turn_start_params(id, "sneaking in from b"),
                None,
            )
            .await;
        assert_held_elsewhere(&refused, "B's turn/start");
        let refused = b
            .request(
                "thread/name/set",
                json!({"threadId": id, "name": "renamed by b"}),
                None,
            )
            .await;
        assert_held_elsewhere(&refused, "B's thread/name/set");
        let refused = b
            .request("thread/archive", json!({"threadId": id}), None)
            .await;
        assert_held_elsewhere(&refused, "B's thread/archive");
        let turns = turns_of(&read_thread(&mut b, id).await);
        assert_eq!(turns.len(), 1, "B reads A's thread");
        assert_completed_turn(&turns[0], turn);
    }

    // A goes on writing them; every file holds only A's whole records.
    for (id, first) in &threads {
        let second = run_turn(&mut a, id, "a again").await;
        let turns = turns_of(&read_thread(&mut b, id).await);
        assert_eq!(turn_ids(&turns), [first.id.as_str(), second.id.as_str()]);
        assert_completed_turn(&turns[1], &second);
        let records = file_records(&home.thread_file(id));
        let kinds: Vec<_> = records.iter().map(|r| r["type"].clone()).collect();
        assert_eq!(
            kinds,
            [
                "thread",
                "turnStarted",
                "turnCompleted",
                "turnStarted",
                "turnCompleted"
            ],
            "{records:?}"
        );
    }
    stop(server_b, b).await;
    stop(server_a, a).await;
}

/// A small tmpfs mounted over a directory for one test; unmounted when
/// dropped (lazily, so a server still holding a file there cannot block it).
struct SmallDisk {
    dir: PathBuf,
}

impl SmallDisk {
    /// Mounts a tmpfs of `size` bytes on `dir` (which must exist).
    fn mount(dir: &Path, size: u64) -> std::io::Result<SmallDisk> {
        let target =
            std::ffi::CString::new(dir.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
        let options = std::ffi::CString::new(format!("size={size},mode=0700"))
            .map_err(std::io::Error::other)?;
        // SAFETY: every pointer is a NUL-terminated string that outlives
        // the call.
        let rc = unsafe {
            libc::mount(
                c"tmpfs".as_ptr(),
                target.as_ptr(),
                c"tmpfs".as_ptr(),
                0,
                options.as_ptr().cast(),
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(SmallDisk {
            dir: dir.to_owned(),
        })
    }

    /// Fills the disk: writes a file until not one more byte fits.
    fn fill(&self) -> PathBuf {
        let path = self.dir.join("filler");
        let mut file = std::fs::File::create(&path).expect("create the filler");
        let block = [b'x'; 4096];
        loop {
            match file.write(&block) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::StorageFull => break,
                Err(e) => panic!("filling {}: {e}", path.display()),
            }
        }
        path
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        if let Ok(target) = std::ffi::CString::new(self.dir.as_os_str().as_bytes()) {
            // SAFETY: a NUL-terminated path that outlives the call.
            unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_full_disk_is_freed_the_next_completed_turn_survives_a_restart_and_no_empty_thread_file_is_left()
 {
    let home = SkeinHome::new();
    std::fs::create_dir(home.threads_dir()).expect("create threads/");
    let disk = match SmallDisk::mount(&home.threads_dir(), 64 * 1024) {
        Ok(disk) => disk,
        // Mounting needs root (CAP_SYS_ADMIN); without it this test cannot
        // fill a disk. The store's unit tests inject the same failures
        // (`core/src/store.rs`, `core/src/threads.rs`) and run everywhere.
        Err(err) => {
            eprintln!(
                "SKIPPED: a tmpfs could not be mounted ({err}); the disk-full test did not run"
            );
            return;
        }
    };
    let (server, mut client) = start(Some(&home), 0).await;
    let thread_id = client.start_thread().await;
    let before = run_turn(&mut client, &thread_id, "before the disk filled").await;

    // A full disk: a start record too long for the room left in the file's
    // last page fails part-way, and the turn fails with a clear error.
    let filler = disk.fill();
    let long_input: String = (0..1200).map(|n| format!("w{n} ")).collect();
    for _ in 0..2 {
        let (_, completed) = run_turn_to_end(&mut client, &thread_id, &long_input).await;
        let turn = &completed["params"]["turn"];
        assert_eq!(turn["status"], "failed", "{completed}");
        let error = turn["error"]["message"].as_str().unwrap_or_default();
        assert!(
            error.contains("could not write thread history"),
            "{completed}"
        );
    }
    // thread/start fails too, leaving no empty thread file behind.
    let refused = start_thread_with(&mut client, json!({})).await;
    assert!(
        refused.message.get("error").is_some(),
        "{}",
        refused.message
    );
    assert_eq!(
        file_names(&home.threads_dir()),
        [format!("{thread_id}.jsonl"), "filler".to_owned()],
        "only the thread and the filler are on the disk"
    );

    // Room again: the next turn completes, and a restart reads it back.
    std::fs::remove_file(&filler).expect("free the disk");
    let after = run_turn(&mut client, &thread_id, "after the disk was freed").await;
    stop(server, client).await;
    let (server, mut client) = start(Some(&home), 0).await;
    let turns = turns_of(&read_thread(&mut client, &thread_id).await);
    assert_eq!(turn_ids(&turns), [before.id.as_str(), after.id.as_str()]);
    assert_completed_turn(&turns[0], &before);
    assert_completed_turn(&turns[1], &after);
    stop(server, client).await;
    drop(disk);
}

/// Every directory under `dir` (itself included) and every file, with its
/// permission bits.
fn modes_under(dir: &Path) -> Vec<(PathBuf, u32)> {
    let mut found = vec![(dir.to_owned(), mode_of(dir))];
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display())) {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            found.extend(modes_under(&path));
        } else {
            found.push((path.clone(), mode_of(&path)));
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn home_folders_history_and_trace_files_are_owner_only_whatever_the_umask() {
    // A SKEIN_HOME the server creates itself, under the most permissive
    // umask there is.
    let parent = SkeinHome::new();
    let home = parent.path().join("dot-skein");
    let traces = home.join("traces");
    let options = ServerOptions::default()
        .env("SKEIN_HOME", &home.to_string_lossy())
        .trace_dir(&traces)
        .umask(0);
    let mut server = Server::start_with(Transport::Stdio, options).await;
    let mut client = server.connect().await;
    client.initialize("e2e-durable-threads", "0.0.1").await;
    let thread_id = client.start_thread().await;
    run_turn(&mut client, &thread_id, "nobody else may read this").await;
    stop(server, client).await;

    let threads = home.join("threads");
    let history = threads.join(format!("{thread_id}.jsonl"));
    let modes = modes_under(&home);
    let has = |path: &Path| modes.iter().any(|(p, _)| p == path);
    assert!(has(&history), "the thread's history was written: {modes:?}");
    assert!(has(&traces), "the trace store was created: {modes:?}");
    let trace_files = modes
        .iter()
        .filter(|(p, _)| p.starts_with(&traces) && p != &traces);
    assert!(trace_files.count() > 0, "spans were stored: {modes:?}");
    for (path, mode) in &modes {
        let want = if path.is_dir() { 0o700 } else { 0o600 };
        assert_eq!(
            *mode,
            want,
            "{} is {mode:o}, not owner-only {want:o}: {modes:?}",
            path.display()
        );
    }
}
