//! Snapshot tests of `skein trace` on a fixed store.
//!
//! The store under `tests/fixtures/trace_store/` holds two server files:
//!
//! - `5b8aa5a2…` `initialize`, a plain OK request;
//! - `4bf92f35…` `turn/start` whose parent is a client span not in the
//!   store; its turn's in-progress record is in the first file and the
//!   finished record (and the model call) in the second;
//! - `0af76519…` `thread/resume` that failed (ERROR on the root);
//! - `4b0b2f5c…` a turn whose model call failed (ERROR below the root),
//!   in-progress and finished records in the same file;
//! - `a3ce929d…` a turn still running: only its in-progress record exists
//!   (the second file's unterminated last line would finish it, but a
//!   line still being written does not count yet);
//! - one broken line (second file, line 2), skipped with a warning.
//!
//! Expected outputs live in `tests/snapshots/trace_view/*.txt`. To rewrite
//! them after a deliberate change, run with `SKEIN_BLESS=1` and review the
//! diff line by line.

use std::path::{Path, PathBuf};
use std::process::Command;

use clap::Parser;
use serde_json::{Value, json};
use skein_app_server::trace_view::follow::Follower;
use skein_app_server::trace_view::render::{self, Style};
use skein_app_server::trace_view::store::Store;
use skein_app_server::trace_view::{TraceCommand, TraceViewError, run};

#[derive(Debug, Parser)]
#[command(name = "skein-trace")]
struct Cli {
    #[command(subcommand)]
    command: TraceCommand,
}

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn store_dir() -> PathBuf {
    manifest_dir().join("tests/fixtures/trace_store")
}

/// Runs `skein trace ARGS --dir <fixture store>` and returns its output.
fn trace(args: &[&str]) -> Result<String, TraceViewError> {
    trace_in(&store_dir(), args)
}

/// Runs `skein trace ARGS --dir DIR` and returns its output.
fn trace_in(dir: &Path, args: &[&str]) -> Result<String, TraceViewError> {
    let dir = dir.to_str().expect("store path is UTF-8");
    let argv = ["skein-trace"]
        .iter()
        .chain(args)
        .copied()
        .chain(["--dir", dir]);
    let cli = Cli::try_parse_from(argv).expect("arguments parse");
    let mut out = Vec::new();
    run(cli.command, &mut out)?;
    Ok(String::from_utf8(out).expect("output is UTF-8"))
}

/// Compares `actual` with `tests/snapshots/trace_view/NAME.txt`.
fn check_snapshot(name: &str, actual: &str) {
    let path = manifest_dir()
        .join("tests/snapshots/trace_view")
        .join(format!("{name}.txt"));
    if std::env::var_os("SKEIN_BLESS").is_some_and(|v| v == "1") {
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(&path, actual).expect("write snapshot");
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "cannot read {} ({e}); run with SKEIN_BLESS=1 to create it",
            path.display()
        )
    });
    if expected != actual {
        let mut diff = String::new();
        let (exp, act): (Vec<&str>, Vec<&str>) =
            (expected.lines().collect(), actual.lines().collect());
        for i in 0..exp.len().max(act.len()) {
            let (e, a) = (exp.get(i), act.get(i));
            if e != a {
                diff.push_str(&format!(
                    "line {}:\n  expected: {}\n  actual:   {}\n",
                    i + 1,
                    e.unwrap_or(&"<none>"),
                    a.unwrap_or(&"<none>")
                ));
            }
        }
        panic!(
            "snapshot {} differs (SKEIN_BLESS=1 rewrites it):\n{diff}\n--- actual ---\n{actual}",
            path.display()
        );
    }
}

#[test]
fn ls_lists_traces_newest_first() {
    check_snapshot("ls", &trace(&["ls"]).expect("ls"));
}

#[test]
fn ls_limit() {
    check_snapshot("ls_n2", &trace(&["ls", "-n", "2"]).expect("ls -n 2"));
}

#[test]
fn view_external_parent_and_superseded_turn() {
    // A unique prefix is enough.
    check_snapshot(
        "view_4bf92f35",
        &trace(&["view", "4bf92f35"]).expect("view"),
    );
}

#[test]
fn view_verbose() {
    check_snapshot(
        "view_4bf92f35_verbose",
        &trace(&["view", "4bf92f3577b34da6a3ce929d0e0e4736", "-v"]).expect("view -v"),
    );
}

#[test]
fn view_error_below_root() {
    check_snapshot("view_4b0b", &trace(&["view", "4B0B"]).expect("view"));
    check_snapshot(
        "view_4b0b_verbose",
        &trace(&["view", "4b0b", "--verbose"]).expect("view -v"),
    );
}

#[test]
fn view_error_root() {
    check_snapshot("view_0af7", &trace(&["view", "0af7"]).expect("view"));
}

#[test]
fn view_running_turn() {
    check_snapshot("view_a3ce", &trace(&["view", "a3ce"]).expect("view"));
}

#[test]
fn follow_lines() {
    // `follow` proper starts at the end of the store; replaying it from the
    // start shows every record's line, in written order.
    let mut follower = Follower::from_start(&store_dir()).expect("follower");
    let polled = follower.poll().expect("poll");
    assert_eq!(polled.warnings.len(), 1, "{:?}", polled.warnings);
    let mut out = Vec::new();
    for span in &polled.spans {
        render::write_follow_line(&mut out, span, Style::PLAIN).expect("write");
    }
    check_snapshot("follow", &String::from_utf8(out).expect("UTF-8"));
    assert!(follower.poll().expect("poll").spans.is_empty());
}

#[test]
fn ambiguous_and_unknown_prefixes_fail_clearly() {
    let err = trace(&["view", "4b"]).expect_err("ambiguous");
    assert_eq!(
        err.to_string(),
        "trace id prefix 4b is ambiguous; it matches 2 traces:\n  \
         4b0b2f5c6d8e9f00112233445566778a  turn/start\n  \
         4bf92f3577b34da6a3ce929d0e0e4736  turn/start"
    );
    let err = trace(&["view", "ffff"]).expect_err("no match");
    assert_eq!(
        err.to_string(),
        format!("no trace matching ffff in {}", store_dir().display())
    );
}

#[test]
fn broken_and_unfinished_lines() {
    let store = Store::open(&store_dir()).expect("store");
    let warnings: Vec<String> = store.warnings().iter().map(ToString::to_string).collect();
    let file = store_dir().join("spans-1741064790000-4343.jsonl");
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].starts_with(&format!(
            "skipping {}:2: not an OTLP/JSON TracesData line: ",
            file.display()
        )),
        "{warnings:?}"
    );
    // The unterminated last line (which would finish a3ce929d's turn) is
    // not read: that turn is still running.
    let running = store.find("a3ce").expect("trace");
    assert!(running.spans.iter().any(|s| s.is_running()));
}

#[test]
fn missing_store_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("nowhere");
    for args in [&["ls"][..], &["view", "4bf9"], &["stats"]] {
        let cli = Cli::try_parse_from(
            ["skein-trace"]
                .iter()
                .chain(args)
                .copied()
                .chain(["--dir", missing.to_str().expect("UTF-8")]),
        )
        .expect("parse");
        let err = run(cli.command, &mut Vec::new()).expect_err("no store");
        assert_eq!(
            err.to_string(),
            format!(
                "no trace store at {} (is the server writing elsewhere? see --dir)",
                missing.display()
            )
        );
    }
}

#[test]
fn empty_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cli =
        Cli::try_parse_from(["skein-trace", "ls", "--dir", path_str(dir.path())]).expect("parse");
    let mut out = Vec::new();
    run(cli.command, &mut out).expect("ls");
    assert_eq!(
        String::from_utf8(out).expect("UTF-8"),
        format!("no traces in {}\n", dir.path().display())
    );
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("UTF-8 path")
}

/// The real binary: output on stdout, warnings on stderr, the store
/// from `SKEIN_TRACE_DIR`, no colour when stdout is not a terminal.
#[test]
fn binary_reads_the_store_from_the_environment() {
    let output = Command::new(env!("CARGO_BIN_EXE_skein"))
        .args(["trace", "ls"])
        .env("SKEIN_TRACE_DIR", store_dir())
        .env_remove("RUST_LOG")
        .output()
        .expect("run skein");
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8(output.stdout).expect("UTF-8");
    check_snapshot("ls", &stdout);
    let stderr = String::from_utf8(output.stderr).expect("UTF-8");
    assert!(
        stderr.contains("skipping ") && stderr.contains("spans-1741064790000-4343.jsonl:2: "),
        "{stderr}"
    );

    let output = Command::new(env!("CARGO_BIN_EXE_skein"))
        .args(["trace", "view", "nope"])
        .env("SKEIN_TRACE_DIR", store_dir())
        .output()
        .expect("run skein");
    assert!(!output.status.success());
    let stderr = String::from_utf8(output.stderr).expect("UTF-8");
    assert!(
        stderr.contains(&format!(
            "skein: error: no trace matching nope in {}",
            store_dir().display()
        )),
        "{stderr}"
    );
}

#[test]
fn ls_hides_housekeeping_traces_unless_all() {
    // The fixture's `initialize` came without a carrier: a trace of its own.
    let default = trace(&["ls"]).expect("ls");
    assert!(!default.contains("initialize"), "{default}");
    check_snapshot("ls_all", &trace(&["ls", "--all"]).expect("ls --all"));
}

#[test]
fn ls_filters() {
    check_snapshot("ls_errors", &trace(&["ls", "--errors"]).expect("ls"));
    check_snapshot(
        "ls_thread",
        &trace(&["ls", "--thread", "thr_01"]).expect("ls"),
    );
    check_snapshot(
        "ls_method",
        &trace(&["ls", "--all", "--method", "initialize"]).expect("ls"),
    );
    // The fixture is from 2025-03-04: nothing started in the last hour.
    let recent = trace(&["ls", "--since", "1h"]).expect("ls");
    assert!(recent.starts_with("no matching traces in "), "{recent}");
    let old = trace(&["ls", "--since", "100000d"]).expect("ls");
    assert_eq!(old, trace(&["ls"]).expect("ls"));
}

#[test]
fn ls_and_view_json() {
    let listed = trace(&["ls", "--json", "--all"]).expect("ls --json");
    check_snapshot("ls_json", &listed);
    for line in listed.lines() {
        let v: serde_json::Value = serde_json::from_str(line).expect("one object per line");
        for key in [
            "trace_id",
            "start_time",
            "start_unix_nano",
            "duration_ns",
            "span_count",
            "root",
            "status",
            "error_count",
            "thread_ids",
        ] {
            assert!(v.get(key).is_some(), "{key} missing: {line}");
        }
    }
    let spans = trace(&["view", "--json", "4b0b"]).expect("view --json");
    check_snapshot("view_4b0b_json", &spans);
    assert_eq!(spans.lines().count(), 4);
    for line in spans.lines() {
        let v: serde_json::Value = serde_json::from_str(line).expect("one object per line");
        assert_eq!(v["trace_id"], "4b0b2f5c6d8e9f00112233445566778a");
        assert!(v["attributes"].is_object(), "{line}");
    }
}

#[test]
fn view_a_thread_shows_its_turns() {
    check_snapshot("view_thread", &trace(&["view", "thr_01"]).expect("view"));
    let err = trace(&["view", "thr_99"]).expect_err("no such thread");
    assert!(
        err.to_string().starts_with("no trace matching thr_99"),
        "{err}"
    );
}

#[test]
fn stats_per_method_model_and_tool() {
    check_snapshot("stats", &trace(&["stats"]).expect("stats"));
    check_snapshot("stats_json", &trace(&["stats", "--json"]).expect("stats"));
    let recent = trace(&["stats", "--since", "1h"]).expect("stats");
    assert!(recent.starts_with("no finished requests"), "{recent}");
}

/// `follow` before any server created the store waits for it, then shows
/// what is written to it.
#[test]
fn follow_waits_for_a_store_to_appear() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().expect("tempdir");
    let store = dir.path().join("traces");
    let mut child = Command::new(env!("CARGO_BIN_EXE_skein"))
        .args(["trace", "follow", "--dir", path_str(&store)])
        .env("NO_COLOR", "1")
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn skein trace follow");
    let mut stderr = BufReader::new(child.stderr.take().expect("stderr"));
    let mut line = String::new();
    stderr.read_line(&mut line).expect("read stderr");
    assert!(
        line.contains("waiting for a server to create it"),
        "follow should wait for the store, said: {line:?} (exit: {:?})",
        child.try_wait()
    );
    // The store appears, with a record: follow shows it.
    std::fs::create_dir(&store).expect("mkdir");
    let record = std::fs::read_to_string(store_dir().join("spans-1741064767000-4242.jsonl"))
        .expect("fixture")
        .lines()
        .next()
        .expect("a line")
        .to_owned();
    std::fs::write(store.join("spans-1-1.jsonl"), format!("{record}\n")).expect("write");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let mut shown = String::new();
    stdout.read_line(&mut shown).expect("read stdout");
    let _ = child.kill();
    let _ = child.wait();
    assert!(shown.contains("5b8aa5a2"), "{shown:?}");
}

/// A finished CLIENT `chat` span of `model`, with its tokens and, if
/// given, `skein.usage.cost` and its currency, as the local store
/// encodes it (OTLP/JSON).
fn chat_span(span_id: &str, model: &str, tokens: (i64, i64), cost: Option<(f64, &str)>) -> Value {
    let mut attributes = vec![
        json!({"key": "gen_ai.operation.name", "value": {"stringValue": "chat"}}),
        json!({"key": "gen_ai.request.model", "value": {"stringValue": model}}),
        json!({"key": "gen_ai.usage.input_tokens", "value": {"intValue": tokens.0.to_string()}}),
        json!({"key": "gen_ai.usage.output_tokens", "value": {"intValue": tokens.1.to_string()}}),
    ];
    if let Some((amount, currency)) = cost {
        attributes.push(json!({"key": "skein.usage.cost", "value": {"doubleValue": amount}}));
        attributes
            .push(json!({"key": "skein.usage.cost.currency", "value": {"stringValue": currency}}));
    }
    json!({
        "traceId": "c0571234567890abcdef1234567890ab",
        "spanId": span_id,
        "parentSpanId": "00000000000000aa",
        "name": format!("chat {model}"),
        "kind": 3,
        "startTimeUnixNano": "1741064772000000000",
        "endTimeUnixNano": "1741064772002000000",
        "attributes": attributes,
        "status": {"code": 0},
    })
}

/// `stats` sums `skein.usage.cost` per model and currency beside the
/// token totals; a turn span's total is not a model call's, and a model
/// without prices shows none.
#[test]
fn stats_shows_cost_totals_per_model_beside_tokens() {
    let dir = tempfile::tempdir().expect("tempdir");
    let turn = json!({
        "traceId": "c0571234567890abcdef1234567890ab",
        "spanId": "00000000000000aa",
        "name": "invoke_agent skein",
        "kind": 1,
        "startTimeUnixNano": "1741064771000000000",
        "endTimeUnixNano": "1741064773000000000",
        "attributes": [
            {"key": "gen_ai.operation.name", "value": {"stringValue": "invoke_agent"}},
            {"key": "skein.usage.cost", "value": {"doubleValue": 0.5025}},
            {"key": "skein.usage.cost.currency", "value": {"stringValue": "USD"}},
        ],
        "status": {"code": 0},
    });
    let spans = vec![
        turn,
        chat_span(
            "0000000000000001",
            "priced",
            (100, 20),
            Some((0.0021, "USD")),
        ),
        chat_span("0000000000000002", "priced", (30, 5), Some((0.0004, "USD"))),
        chat_span("0000000000000003", "euro", (1000, 100), Some((0.5, "EUR"))),
        chat_span("0000000000000004", "unpriced", (7, 3), None),
    ];
    let line = json!({"resourceSpans": [{
        "resource": {"attributes": [
            {"key": "service.name", "value": {"stringValue": "skein-app-server"}},
        ]},
        "scopeSpans": [{"scope": {"name": "skein"}, "spans": spans}],
    }]});
    std::fs::write(
        dir.path().join("spans-1741064772000-77.jsonl"),
        format!("{line}\n"),
    )
    .expect("write the store file");
    let text = trace_in(dir.path(), &["stats"]).expect("stats");
    assert_eq!(
        text,
        "MODEL (chat)  COUNT  ERRORS  ERR%     P50     P95     P99  TOKENS IN  TOKENS OUT        COST\n\
         euro              1       0  0.0%  2.00ms  2.00ms  2.00ms       1000         100    0.50 EUR\n\
         priced            2       0  0.0%  2.00ms  2.00ms  2.00ms        130          25  0.0025 USD\n\
         unpriced          1       0  0.0%  2.00ms  2.00ms  2.00ms          7           3           -\n",
        "{text}"
    );

    let rows: Vec<Value> = trace_in(dir.path(), &["stats", "--json"])
        .expect("stats")
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON line"))
        .collect();
    let row = |name: &str| {
        rows.iter()
            .find(|r| r["name"] == name)
            .unwrap_or_else(|| panic!("no row {name}: {rows:?}"))
    };
    let usd = row("priced")["cost"]["USD"]
        .as_f64()
        .unwrap_or_else(|| panic!("a USD cost: {rows:?}"));
    assert!((usd - 0.0025).abs() < 1e-12, "{usd}");
    assert_eq!(row("priced")["input_tokens"], 130, "{rows:?}");
    assert_eq!(row("euro")["cost"], json!({"EUR": 0.5}), "{rows:?}");
    assert_eq!(row("unpriced")["cost"], json!({}), "{rows:?}");
    assert_eq!(rows.len(), 3, "the turn span is no model call: {rows:?}");
}
