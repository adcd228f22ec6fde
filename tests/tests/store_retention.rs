//! Local trace store retention, end to end against the real `skein`
//! binary with tiny limits: files rotate at `--trace-max-file-size`, the
//! oldest closed files go past `--trace-max-total-size` and
//! `--trace-retention`, `skein trace` reads across rotated files, and a
//! store that cannot be written drops and counts spans while the server
//! keeps serving. Under load, the directory is sampled while the server
//! writes: it never holds more than the total, no file passes the file
//! size, and what retention deleted is counted.

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use serde_json::json;

use support::{Finished, Server, ServerOptions, TIMEOUT, TraceContext, Transport, skein_bin};

fn store_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// Polls `condition` until it holds, failing after [`TIMEOUT`].
async fn wait_until(what: &str, condition: impl Fn() -> bool) {
    let deadline = Instant::now() + TIMEOUT;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sends `model/list` under a fresh trace and waits until its span is in
/// the store, so that each request's span is a line of its own. Returns
/// the request id.
async fn request_written(client: &mut support::Client, dir: &Path) -> i64 {
    let trace = TraceContext::random();
    let response = client
        .request("model/list", json!({}), Some(trace.carrier()))
        .await;
    response.result();
    wait_until("the request's span in the store", || {
        store_files(dir)
            .iter()
            .any(|f| std::fs::read_to_string(f).is_ok_and(|text| text.contains(&trace.trace_id)))
    })
    .await;
    response.id
}

/// Runs `skein trace ARGS --dir DIR` and returns its stdout.
fn skein_trace(dir: &Path, args: &[&str]) -> String {
    let output = std::process::Command::new(skein_bin())
        .arg("trace")
        .args(args)
        .arg("--dir")
        .arg(dir)
        .env("NO_COLOR", "1")
        .output()
        .expect("run skein trace");
    assert!(
        output.status.success(),
        "skein trace {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Writes a store file last modified `age` ago.
fn old_store_file(dir: &Path, name: &str, bytes: usize, age: Duration) -> PathBuf {
    std::fs::create_dir_all(dir).expect("create store dir");
    let path = dir.join(name);
    // Empty TracesData lines, as many as make `bytes`.
    let line = "{\"resourceSpans\":[]}\n";
    std::fs::write(&path, line.repeat(bytes.div_ceil(line.len()))).expect("write");
    std::fs::File::options()
        .write(true)
        .open(&path)
        .expect("open")
        .set_modified(SystemTime::now() - age)
        .expect("set mtime");
    path
}

#[tokio::test]
async fn a_turn_written_across_rotated_files_reads_as_one_finished_trace() {
    let options = ServerOptions::default()
        .arg("--trace-max-file-size")
        .arg("2KiB")
        .echo_delay_ms(20);
    let mut server = Server::start_with(Transport::WebSocket, options).await;
    let dir = server.home().path().join("traces");
    let mut client = server.connect().await;
    client.initialize("store-retention-test", "1").await;
    let thread_id = client.start_thread().await;
    let parent = TraceContext::random();
    let turn = client
        .start_turn(&thread_id, "one two three four five six", Some(&parent))
        .await;
    let turn_id = turn.turn_id();
    // The turn's in-progress record is written; then enough other spans
    // that the store rotates before the turn ends.
    for _ in 0..6 {
        request_written(&mut client, &dir).await;
    }
    client.wait_for_turn_completed(&turn_id).await;
    client.close().await;
    // The store lives in the server's home: keep it past the shutdown.
    let _home = server.home();
    let finished = server.shutdown().await;

    let turn_span = finished.turn_span(&turn_id);
    assert!(!turn_span.is_in_progress());
    let holding: Vec<PathBuf> = store_files(&dir)
        .into_iter()
        .filter(|f| {
            std::fs::read_to_string(f)
                .expect("read")
                .contains(&turn_span.span_id)
        })
        .collect();
    assert!(
        holding.len() >= 2,
        "the turn's in-progress and finished records should be in different files: {holding:?}"
    );
    for file in store_files(&dir) {
        let text = std::fs::read_to_string(&file).expect("read");
        assert!(
            text.len() <= 2048 || text.lines().count() == 1,
            "{} holds {} bytes in {} lines",
            file.display(),
            text.len(),
            text.lines().count()
        );
    }

    let listed = skein_trace(&dir, &["ls", "-n", "100"]);
    let row = listed
        .lines()
        .find(|l| l.contains(&parent.trace_id))
        .unwrap_or_else(|| panic!("trace {} not listed:\n{listed}", parent.trace_id));
    assert!(row.contains("OK"), "the turn's trace is finished: {row}");
    let tree = skein_trace(&dir, &["view", &parent.trace_id]);
    assert!(tree.contains("invoke_agent"), "{tree}");
    assert!(!tree.contains("running"), "{tree}");
}

#[tokio::test]
async fn the_oldest_files_go_past_the_total_size_and_the_newest_spans_stay() {
    let home = support::SkeinHome::new();
    let dir = home.path().join("traces");
    // A closed file of an earlier process, recent but big.
    let earlier = old_store_file(&dir, "spans-1000-1.jsonl", 6 * 1024, Duration::ZERO);
    let options = ServerOptions::default()
        .trace_dir(&dir)
        .arg("--trace-max-file-size")
        .arg("2KiB")
        .arg("--trace-max-total-size")
        .arg("8KiB");
    let mut server = Server::start_with(Transport::WebSocket, options).await;
    let mut client = server.connect().await;
    client.initialize("store-retention-test", "1").await;
    let mut ids = Vec::new();
    for _ in 0..30 {
        ids.push(request_written(&mut client, &dir).await);
    }
    client.close().await;
    let finished = server.shutdown().await;

    assert!(!earlier.exists(), "the oldest file is deleted first");
    let files = store_files(&dir);
    let newest = files.last().expect("a store file");
    let closed: u64 = files
        .iter()
        .filter(|f| *f != newest)
        .map(|f| file_len(f))
        .sum();
    assert!(
        closed <= 8 * 1024,
        "closed files add up to {closed} bytes: {files:?}"
    );
    let last = ids.last().expect("ids").to_string();
    finished.request_span(&last);
    let first = ids[0].to_string();
    assert!(
        finished.spans_for_request(&first).is_empty(),
        "the first request's span should have been deleted with its file"
    );
}

#[tokio::test]
async fn closed_files_past_the_age_limit_are_deleted() {
    let home = support::SkeinHome::new();
    let dir = home.path().join("traces");
    let old = old_store_file(&dir, "spans-1000-1.jsonl", 100, Duration::from_secs(7200));
    let recent = old_store_file(&dir, "spans-1001-1.jsonl", 100, Duration::from_secs(60));
    let options = ServerOptions::default()
        .trace_dir(&dir)
        .arg("--trace-retention")
        .arg("1h");
    let mut server = Server::start_with(Transport::WebSocket, options).await;
    let mut client = server.connect().await;
    client.initialize("store-retention-test", "1").await;
    client.request("model/list", json!({}), None).await.result();
    client.close().await;
    let finished = server.shutdown().await;
    assert!(!old.exists(), "a file two hours old is deleted");
    assert!(recent.exists(), "a file a minute old is kept");
    assert!(!finished.spans.is_empty());
}

#[tokio::test]
async fn a_store_that_cannot_be_written_drops_spans_and_the_server_keeps_serving() {
    // Every line starts a new file at this size.
    let options = ServerOptions::default()
        .arg("--trace-max-file-size")
        .arg("1KiB");
    let mut server = Server::start_with(Transport::WebSocket, options).await;
    let dir = server.home().path().join("traces");
    let mut client = server.connect().await;
    client.initialize("store-retention-test", "1").await;
    client.request("model/list", json!({}), None).await.result();
    wait_until("a store file", || !store_files(&dir).is_empty()).await;
    // The directory becomes a regular file: no new store file can be
    // created. The server keeps rotating meanwhile and recreates a missing
    // directory, so move it aside and claim the name until the file wins.
    replace_dir_with_file(&dir);
    for _ in 0..5 {
        client.request("model/list", json!({}), None).await.result();
    }
    client.close().await;
    let finished = server.shutdown().await;
    let stderr = finished.stderr().join("\n");
    assert!(
        stderr.contains("cannot write the local trace store"),
        "{stderr}"
    );
    let dropped = finished
        .stderr()
        .iter()
        .find(|l| l.contains("spans were dropped") && l.contains("local store"))
        .unwrap_or_else(|| panic!("no dropped-spans warning:\n{stderr}"));
    assert!(!dropped.contains("dropped=0"), "{dropped}");
}

/// Puts a regular file where the directory `dir` is, while a running server
/// may recreate the directory at any moment: the directory is renamed aside
/// (atomic, whatever it holds) and the name claimed with `create_new`, again
/// if the server got there first.
fn replace_dir_with_file(dir: &Path) {
    use std::io::Write;
    for attempt in 0..100 {
        if dir.is_dir() {
            let aside = dir.with_extension(format!("aside-{attempt}"));
            std::fs::rename(dir, &aside).expect("move the store aside");
        }
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(dir)
        {
            Ok(mut file) => {
                file.write_all(b"not a directory").expect("write");
                return;
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => panic!("cannot create {}: {e}", dir.display()),
        }
    }
    panic!("the server kept recreating {}", dir.display());
}

/// A real full disk: a 64 KiB tmpfs. Mounting needs CAP_SYS_ADMIN; without
/// it the test says so and stops (the local store's unit tests cover a
/// full disk with /dev/full).
#[tokio::test]
async fn a_full_disk_drops_spans_and_the_server_keeps_serving() {
    let mount_point = tempfile::tempdir().expect("tempdir");
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"])
        .arg(mount_point.path())
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!(
            "SKIPPED a_full_disk_drops_spans_and_the_server_keeps_serving: cannot mount a tmpfs here"
        );
        return;
    }
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(mount_point.path().to_path_buf());
    let dir = mount_point.path().join("traces");
    let options = ServerOptions::default().trace_dir(&dir);
    let mut server = Server::start_with(Transport::WebSocket, options).await;
    let mut client = server.connect().await;
    client.initialize("store-retention-test", "1").await;
    // Far more than 64 KiB of spans.
    for _ in 0..150 {
        client.request("model/list", json!({}), None).await.result();
    }
    client.close().await;
    let finished = server.shutdown().await;
    let stderr = finished.stderr().join("\n");
    assert!(
        stderr.contains("cannot write the local trace store"),
        "{stderr}"
    );
    assert!(
        finished
            .stderr()
            .iter()
            .any(|l| l.contains("spans were dropped") && l.contains("local store")),
        "{stderr}"
    );
    // Every line in the store is whole.
    for file in store_files(&dir) {
        for line in std::fs::read_to_string(&file).expect("read").lines() {
            serde_json::from_str::<serde_json::Value>(line).expect("a whole JSON line");
        }
    }
}

/// `--trace-max-file-size` of the load tests.
const LOAD_FILE_BYTES: u64 = 16 * 1024;
/// `--trace-max-total-size` of the load tests.
const LOAD_TOTAL_BYTES: u64 = 64 * 1024;
/// `model/list` requests of each connection of the load tests: several
/// megabytes of spans, dozens of times the total.
const LOAD_REQUESTS: usize = 1_500;
/// Requests of one connection in flight at once.
const LOAD_DEPTH: usize = 50;
/// How often the directory is sampled while the load runs. This is a
/// sampling rate, not a wait for an event: every sample must be within
/// the limits, whenever it is taken.
const SAMPLE_EVERY: Duration = Duration::from_millis(2);

fn load_options(dir: &Path) -> ServerOptions {
    ServerOptions::default()
        .trace_dir(dir)
        .arg("--trace-max-file-size")
        .arg("16KiB")
        .arg("--trace-max-total-size")
        .arg("64KiB")
}

/// What the sampler saw of the store directory.
#[derive(Debug, Default)]
struct Samples {
    taken: u64,
    max_total: u64,
    max_file: u64,
    /// The first samples past a limit: each file and its size.
    over: Vec<Vec<(String, u64)>>,
}

/// The store files of `dir` and their sizes right now (a file deleted
/// since the directory was listed counts as empty).
fn sample_store(dir: &Path) -> Vec<(String, u64)> {
    store_files(dir)
        .iter()
        .map(|f| {
            let name = f.file_name().map(|n| n.to_string_lossy().into_owned());
            (name.unwrap_or_default(), file_len(f))
        })
        .collect()
}

/// Samples `dir` every [`SAMPLE_EVERY`] until `stop` is set.
fn spawn_sampler(
    dir: PathBuf,
    stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<Samples> {
    tokio::spawn(async move {
        let mut samples = Samples::default();
        let mut ticks = tokio::time::interval(SAMPLE_EVERY);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        while !*stop.borrow() {
            ticks.tick().await;
            let files = sample_store(&dir);
            let total: u64 = files.iter().map(|(_, len)| len).sum();
            let largest = files.iter().map(|(_, len)| *len).max().unwrap_or(0);
            samples.taken += 1;
            samples.max_total = samples.max_total.max(total);
            samples.max_file = samples.max_file.max(largest);
            if (total > LOAD_TOTAL_BYTES || largest > LOAD_FILE_BYTES) && samples.over.len() < 5 {
                samples.over.push(files);
            }
        }
        samples
    })
}

/// Initializes, then sends [`LOAD_REQUESTS`] `model/list` requests,
/// [`LOAD_DEPTH`] at a time, each answered successfully. Returns the id of
/// the last one.
async fn run_load(mut client: support::Client) -> i64 {
    client.initialize("store-retention-load", "1").await;
    let mut last = 0;
    let mut sent = 0;
    while sent < LOAD_REQUESTS {
        let depth = LOAD_DEPTH.min(LOAD_REQUESTS - sent);
        let mut ids = Vec::with_capacity(depth);
        for _ in 0..depth {
            ids.push(client.send_request("model/list", json!({}), None).await);
        }
        for id in ids {
            client.recv_response(id).await.result();
            last = id;
        }
        sent += depth;
    }
    client.close().await;
    last
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

/// The `exported=` and `deleted_by_retention=` counts of the local
/// store's shutdown report (`spans were dropped` or `spans were deleted by
/// retention`), which must say nothing was dropped.
fn retention_report(finished: &Finished) -> (u64, u64) {
    let stderr = finished.stderr().join("\n");
    let line = finished
        .stderr()
        .iter()
        .find(|l| l.contains("deleted_by_retention=") && l.contains("pipeline=\"local store\""))
        .unwrap_or_else(|| panic!("no retention report of the local store:\n{stderr}"));
    let field = |key: &str| {
        int_field(line, key).unwrap_or_else(|| panic!("no integer {key}= field in: {line}"))
    };
    assert_eq!(field("dropped"), 0, "spans were dropped: {line}");
    (field("exported"), field("deleted_by_retention"))
}

fn assert_within_limits(samples: &Samples) {
    eprintln!(
        "{} samples; largest directory {} bytes, largest file {} bytes",
        samples.taken, samples.max_total, samples.max_file
    );
    assert!(samples.taken > 10, "too few samples: {samples:?}");
    assert!(
        samples.max_total <= LOAD_TOTAL_BYTES && samples.max_file <= LOAD_FILE_BYTES,
        "the store passed its limits ({LOAD_FILE_BYTES} bytes a file, {LOAD_TOTAL_BYTES} in all): \
         largest directory {} bytes, largest file {} bytes; first samples past a limit: {:#?}",
        samples.max_total,
        samples.max_file,
        samples.over
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_under_load_stays_within_its_limits_and_counts_what_retention_deleted() {
    let home = support::SkeinHome::new();
    let dir = home.path().join("traces");
    let mut server = Server::start_with(Transport::WebSocket, load_options(&dir)).await;
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let sampler = spawn_sampler(dir.clone(), stop);
    let (first, second) = (server.connect().await, server.connect().await);
    tokio::join!(run_load(first), run_load(second));
    // One request after the load: its span is among the newest.
    let mut client = server.connect().await;
    client.initialize("store-retention-last", "1").await;
    let last = client.request("model/list", json!({}), None).await.id;
    client.close().await;
    let finished = server.shutdown().await;
    stop_tx.send(true).expect("the sampler runs");
    let samples = sampler.await.expect("the sampler finished");
    assert_within_limits(&samples);

    // What is left is the newest spans, and no less than the total allows:
    // the closed files the last sweep kept, less at most one file, and the
    // file written last.
    let files = sample_store(&dir);
    let left: u64 = files.iter().map(|(_, len)| len).sum();
    assert!(
        (LOAD_TOTAL_BYTES - 2 * LOAD_FILE_BYTES..=LOAD_TOTAL_BYTES).contains(&left),
        "the store holds {left} bytes after shutdown: {files:?}"
    );
    finished.request_span(&last.to_string());

    // Every span written is either still in the store or counted as
    // deleted by retention.
    let (exported, deleted) = retention_report(&finished);
    assert!(deleted > 0, "retention deleted spans: {deleted}");
    assert_eq!(
        deleted + finished.records.len() as u64,
        exported,
        "{deleted} spans deleted and {} in the store, of {exported} written",
        finished.records.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_sharing_a_store_under_load_stay_within_its_total() {
    let home = support::SkeinHome::new();
    let dir = home.path().join("traces");
    let mut one = Server::start_with(Transport::WebSocket, load_options(&dir)).await;
    let mut two = Server::start_with(Transport::WebSocket, load_options(&dir)).await;
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let sampler = spawn_sampler(dir.clone(), stop);
    let (a, b) = (one.connect().await, two.connect().await);
    let (last_one, last_two) = tokio::join!(run_load(a), run_load(b));
    // Both servers' newest spans are in the store while both run.
    for last in [last_one, last_two] {
        let id = last.to_string();
        wait_until("the last request's span in the store", || {
            support::read_live_spans(&dir)
                .iter()
                .any(|s| s.attr_str("rpc.request_id").as_deref() == Some(id.as_str()))
        })
        .await;
    }
    let first = one.shutdown().await;
    let second = two.shutdown().await;
    stop_tx.send(true).expect("the sampler runs");
    let samples = sampler.await.expect("the sampler finished");
    assert_within_limits(&samples);

    let (exported_one, deleted_one) = retention_report(&first);
    let (exported_two, deleted_two) = retention_report(&second);
    assert_eq!(
        deleted_one + deleted_two + second.records.len() as u64,
        exported_one + exported_two,
        "spans deleted ({deleted_one} + {deleted_two}) and left ({}) against spans written \
         ({exported_one} + {exported_two})",
        second.records.len()
    );
}
