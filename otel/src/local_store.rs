//! The local trace store: spans as OTLP/JSON lines on disk.
//!
//! Each line of a store file is one OTLP/JSON `TracesData` object, the
//! encoding the OpenTelemetry Collector's file exporter writes, so any
//! OTLP/JSON consumer can read it. [`crate::otlp_json`] encodes it straight
//! from the SDK's span data, byte for byte what `opentelemetry-proto`'s
//! serde encoding writes.
//!
//! Each server process writes its own file, `spans-<unix-ms>-<pid>.jsonl`,
//! created on the first write, so several processes can share one store
//! without interleaving lines.
//!
//! Long-lived agent spans (turns) are visible before they end: when one
//! starts, [`start_in_progress`] has it written with `endTimeUnixNano`
//! `"0"`. The finished record, written later with the same trace and span
//! ids, supersedes it.

use std::cell::{Cell, RefCell};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry::trace::{Span as _, SpanContext};
use opentelemetry::{Context, InstrumentationScope};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{Span, SpanData, SpanProcessor};

use crate::export::ExportStats;
use crate::otlp_json::{EncodedResource, EncodedScopeKey, SpanGroups, encode_span};

/// File name extension of store files.
pub const STORE_FILE_EXTENSION: &str = "jsonl";

/// Encoded spans held in memory at most, waiting for the writer thread.
/// Past this the disk is not keeping up, and further spans are dropped and
/// counted until it catches up.
const MAX_BUFFERED_BYTES: usize = 32 * 1024 * 1024;
/// Encoded spans that make the writer thread write at once.
const WRITE_AT_BYTES: usize = 256 * 1024;
/// How long a finished span may wait in memory before it is written.
const WRITE_INTERVAL: Duration = Duration::from_millis(100);

/// This process's file in a store directory, and the thread that writes it.
///
/// Spans are encoded by the thread that ends them (so the cost is spread
/// over the threads doing the work, and nothing queues the SDK's span
/// objects), appended to an in-memory buffer, and written out by one writer
/// thread as a line per burst: at most [`WRITE_INTERVAL`] after a span
/// ended, or at once when a burst fills [`WRITE_AT_BYTES`].
#[derive(Debug)]
pub struct LocalStore {
    dir: PathBuf,
    file_name: String,
    resource: Mutex<Arc<EncodedResource>>,
    pending: Mutex<Pending>,
    wake: Condvar,
    file: Mutex<Option<File>>,
    stats: Arc<ExportStats>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

#[derive(Debug, Default)]
struct Pending {
    groups: SpanGroups,
    bytes: usize,
    closed: bool,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Each critical section leaves the data whole, so a poisoned lock is
    // still usable.
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

thread_local! {
    /// Scratch buffer for encoding one span, reused per thread.
    static SCRATCH: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(2048));
    /// The last instrumentation scope this thread encoded, with its key.
    static LAST_SCOPE: RefCell<Option<(InstrumentationScope, EncodedScopeKey)>> =
        const { RefCell::new(None) };
    /// Set while [`start_in_progress`] starts a long-lived span.
    static RECORD_IN_PROGRESS: Cell<bool> = const { Cell::new(false) };
}

impl LocalStore {
    /// A store writing under `dir`, which is created now if missing so
    /// that a bad path is reported at start-up, not at the first export.
    /// Starts the writer thread.
    pub fn new(dir: impl Into<PathBuf>) -> std::io::Result<Arc<Self>> {
        Self::with_stats(dir, ExportStats::new("local store"))
    }

    /// Like [`LocalStore::new`], counting into `stats`.
    pub fn with_stats(
        dir: impl Into<PathBuf>,
        stats: Arc<ExportStats>,
    ) -> std::io::Result<Arc<Self>> {
        let dir = dir.into();
        fs::create_dir_all(&dir)?;
        let millis = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or_default();
        let store = Arc::new(Self {
            file_name: format!(
                "spans-{millis}-{}.{STORE_FILE_EXTENSION}",
                std::process::id()
            ),
            dir,
            resource: Mutex::new(Arc::new(EncodedResource::new(
                &Resource::builder_empty().build(),
            ))),
            pending: Mutex::default(),
            wake: Condvar::new(),
            file: Mutex::new(None),
            stats,
            writer: Mutex::new(None),
        });
        let for_thread = Arc::clone(&store);
        let handle = std::thread::Builder::new()
            .name("skein-trace-store".into())
            .spawn(move || for_thread.write_loop())?;
        *lock(&store.writer) = Some(handle);
        Ok(store)
    }

    /// The file this store writes (it exists once a span was written).
    pub fn path(&self) -> PathBuf {
        self.dir.join(&self.file_name)
    }

    /// The store directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The store's counters.
    pub fn stats(&self) -> &Arc<ExportStats> {
        &self.stats
    }

    /// Sets the resource every line is written under.
    pub fn set_resource(&self, resource: &Resource) {
        *lock(&self.resource) = Arc::new(EncodedResource::new(resource));
    }

    /// Encodes `span` and queues it for the writer thread; drops and counts
    /// it when the buffer is full.
    pub fn append(&self, span: &SpanData) {
        SCRATCH.with_borrow_mut(|buf| {
            buf.clear();
            encode_span(buf, span);
            LAST_SCOPE.with_borrow_mut(|last| {
                if last
                    .as_ref()
                    .is_none_or(|(scope, _)| *scope != span.instrumentation_scope)
                {
                    *last = Some((
                        span.instrumentation_scope.clone(),
                        EncodedScopeKey::new(&span.instrumentation_scope),
                    ));
                }
                let Some((scope, key)) = last.as_ref() else {
                    return;
                };
                let mut pending = lock(&self.pending);
                if pending.closed || pending.bytes + buf.len() > MAX_BUFFERED_BYTES {
                    drop(pending);
                    self.stats.record_rejected(1);
                    return;
                }
                pending.groups.push(scope, key, buf);
                pending.bytes += buf.len() + 1;
                let full = pending.bytes >= WRITE_AT_BYTES;
                drop(pending);
                self.stats.record_accepted(1);
                if full {
                    self.wake.notify_one();
                }
            });
        });
        if SCRATCH.with_borrow(|buf| buf.capacity() > 64 * 1024) {
            SCRATCH.with_borrow_mut(|buf| buf.shrink_to(2048));
        }
    }

    /// The writer thread: writes a line whenever a burst is full or a span
    /// waited [`WRITE_INTERVAL`], until the store is closed and drained.
    fn write_loop(&self) {
        let mut spare = SpanGroups::default();
        let mut line = Vec::new();
        loop {
            let mut pending = lock(&self.pending);
            while pending.groups.is_empty() && !pending.closed {
                pending = self.wake.wait(pending).unwrap_or_else(|p| p.into_inner());
            }
            if pending.groups.is_empty() && pending.closed {
                return;
            }
            if pending.bytes < WRITE_AT_BYTES && !pending.closed {
                // Let a burst gather, for at most the write interval.
                pending = self
                    .wake
                    .wait_timeout_while(pending, WRITE_INTERVAL, |p| {
                        p.bytes < WRITE_AT_BYTES && !p.closed
                    })
                    .map(|(guard, _)| guard)
                    .unwrap_or_else(|p| p.into_inner().0);
            }
            std::mem::swap(&mut pending.groups, &mut spare);
            pending.bytes = 0;
            drop(pending);
            self.write_groups(&mut spare, &mut line);
        }
    }

    /// Writes `groups` as one line (and empties them).
    fn write_groups(&self, groups: &mut SpanGroups, line: &mut Vec<u8>) {
        if groups.is_empty() {
            return;
        }
        let count = groups.len();
        line.clear();
        let resource = Arc::clone(&lock(&self.resource));
        groups.write_line(&resource, line);
        match self.write_line(line) {
            Ok(()) => self.stats.record_exported(count),
            Err(err) => {
                self.stats.record_failed(count);
                tracing::debug!(%err, "could not write spans to the local store");
            }
        }
        if line.capacity() > 4 * WRITE_AT_BYTES {
            line.shrink_to(WRITE_AT_BYTES);
        }
    }

    /// Appends one whole line to the file, opening it on first use.
    fn write_line(&self, line: &[u8]) -> std::io::Result<()> {
        let mut file = lock(&self.file);
        if file.is_none() {
            let path = self.path();
            let opened = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(|e| {
                    std::io::Error::new(e.kind(), format!("opening {}: {e}", path.display()))
                })?;
            *file = Some(opened);
        }
        match file.as_mut() {
            // One write per line: a reader following the file never sees a
            // line half-written for long.
            Some(file) => file.write_all(line),
            None => Ok(()),
        }
    }

    /// Writes everything queued so far, then syncs the file.
    pub fn flush(&self) -> OTelSdkResult {
        let mut groups = {
            let mut pending = lock(&self.pending);
            pending.bytes = 0;
            std::mem::take(&mut pending.groups)
        };
        let mut line = Vec::new();
        self.write_groups(&mut groups, &mut line);
        self.sync()
    }

    /// Syncs the file to disk.
    pub fn sync(&self) -> OTelSdkResult {
        match lock(&self.file).as_ref() {
            Some(file) => file
                .sync_data()
                .map_err(|e| OTelSdkError::InternalFailure(format!("syncing store: {e}"))),
            None => Ok(()),
        }
    }

    /// Stops accepting spans, lets the writer thread write what is queued
    /// and waits for it (at most `timeout`), then syncs the file.
    pub fn close(&self, timeout: Duration) -> OTelSdkResult {
        lock(&self.pending).closed = true;
        self.wake.notify_all();
        if let Some(handle) = lock(&self.writer).take() {
            let deadline = std::time::Instant::now() + timeout;
            while !handle.is_finished() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(2));
            }
            if handle.is_finished() {
                let _ = handle.join();
            } else {
                return Err(OTelSdkError::Timeout(timeout));
            }
        }
        self.sync()
    }
}

/// Starts `span`'s OpenTelemetry span now and records it in the local
/// store as in progress (end time 0) if it is sampled, so that a
/// long-lived span (a turn) is visible before it ends. Returns its context.
///
/// Call it right after creating the span, before anything else reads its
/// context (which would start it without an in-progress record).
pub fn start_in_progress(span: &tracing::Span) -> Option<SpanContext> {
    RECORD_IN_PROGRESS.set(true);
    let context = crate::span_context_of(span);
    RECORD_IN_PROGRESS.set(false);
    context
}

/// Writes finished spans to a [`LocalStore`], and an in-progress record of
/// each span started through [`start_in_progress`].
#[derive(Debug)]
pub struct LocalStoreProcessor {
    store: Arc<LocalStore>,
}

impl LocalStoreProcessor {
    /// A processor writing into `store`.
    pub fn new(store: Arc<LocalStore>) -> Self {
        Self { store }
    }
}

impl SpanProcessor for LocalStoreProcessor {
    fn on_start(&self, span: &mut Span, _cx: &Context) {
        // Only the spans asked for: looking at a span's data clones it.
        if !RECORD_IN_PROGRESS.get() || !span.span_context().is_sampled() {
            return;
        }
        let Some(mut data) = span.exported_data() else {
            return;
        };
        // An end time of zero marks the record as in progress.
        data.end_time = UNIX_EPOCH;
        self.store.append(&data);
    }

    fn on_end(&self, span: SpanData) {
        if span.span_context.is_sampled() {
            self.store.append(&span);
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.store.flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.store.close(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.store.set_resource(resource);
    }
}

/// Lists the store files under `dir`, oldest name first.
pub fn store_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == STORE_FILE_EXTENSION))
        .collect();
    files.sort();
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::{SpanKind, Tracer as _, TracerProvider as _};
    use opentelemetry_sdk::trace::SdkTracerProvider;
    use tracing_subscriber::layer::SubscriberExt;

    fn read_spans(store: &LocalStore) -> Vec<serde_json::Value> {
        fs::read_to_string(store.path())
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("json"))
            .flat_map(|v| {
                v["resourceSpans"][0]["scopeSpans"][0]["spans"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
            })
            .collect()
    }

    #[test]
    fn exported_spans_are_otlp_json_lines() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = LocalStore::new(dir.path().join("traces")).expect("store");
        let path = store.path();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(LocalStoreProcessor::new(Arc::clone(&store)))
            .with_resource(Resource::builder().with_service_name("svc").build())
            .build();
        let tracer = provider.tracer("test");
        let mut span = tracer
            .span_builder("hello")
            .with_kind(SpanKind::Server)
            .with_attributes([opentelemetry::KeyValue::new("n", 7_i64)])
            .start(&tracer);
        span.end();
        provider.shutdown().expect("shutdown");

        let text = fs::read_to_string(&path).expect("store file");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 1);
        let v: serde_json::Value = serde_json::from_str(lines[0]).expect("json");
        let rs = &v["resourceSpans"][0];
        assert_eq!(
            rs["resource"]["attributes"]
                .as_array()
                .expect("attrs")
                .iter()
                .find(|a| a["key"] == "service.name")
                .expect("service.name")["value"]["stringValue"],
            "svc"
        );
        let span = &rs["scopeSpans"][0]["spans"][0];
        assert_eq!(span["name"], "hello");
        assert_eq!(span["kind"], 2);
        assert_eq!(span["traceId"].as_str().expect("hex").len(), 32);
        assert_eq!(span["spanId"].as_str().expect("hex").len(), 16);
        assert!(span["startTimeUnixNano"].is_string());
        assert_eq!(span["attributes"][0]["value"]["intValue"], "7");
        assert_eq!(
            store_files(&dir.path().join("traces")).expect("list"),
            vec![path]
        );
        assert_eq!(store.stats().exported(), 1);
        assert_eq!(store.stats().dropped(), 0);
    }

    #[test]
    fn no_file_is_created_before_a_span_is_exported() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = LocalStore::new(dir.path()).expect("store");
        assert!(!store.path().exists());
        store.close(Duration::from_secs(5)).expect("close");
        assert!(!store.path().exists());
    }

    #[test]
    fn a_burst_of_spans_is_written_whole_and_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = LocalStore::new(dir.path()).expect("store");
        let provider = SdkTracerProvider::builder()
            .with_span_processor(LocalStoreProcessor::new(Arc::clone(&store)))
            .build();
        let tracer = provider.tracer("test");
        for n in 0..5_000_i64 {
            tracer
                .span_builder(format!("span {n}"))
                .with_attributes([opentelemetry::KeyValue::new("n", n)])
                .start(&tracer)
                .end();
        }
        provider.shutdown().expect("shutdown");
        let names: Vec<String> = read_spans(&store)
            .iter()
            .map(|s| s["name"].as_str().expect("name").to_owned())
            .collect();
        let expected: Vec<String> = (0..5_000).map(|n| format!("span {n}")).collect();
        assert_eq!(names, expected);
        assert_eq!(store.stats().exported(), 5_000);
    }

    #[test]
    fn spans_started_with_start_in_progress_are_recorded_when_they_start() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = LocalStore::new(dir.path()).expect("store");
        let provider = SdkTracerProvider::builder()
            .with_span_processor(LocalStoreProcessor::new(Arc::clone(&store)))
            .build();
        let layer = tracing_opentelemetry::layer()
            .with_context_activation(false)
            .with_tracer(provider.tracer("test"));
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, || {
            let turn = tracing::info_span!("invoke_agent skein");
            let started = start_in_progress(&turn).expect("context");
            // A span whose context is read the ordinary way gets no
            // in-progress record.
            let other = tracing::info_span!("dispatch");
            assert!(crate::span_context_of(&other).is_some());
            drop(other);
            tracing::info_span!("short").in_scope(|| {});
            store.flush().expect("flush");
            let written = read_spans(&store);
            assert_eq!(
                written.len(),
                3,
                "in-progress turn, dispatch and short: {written:#?}"
            );
            assert_eq!(written[0]["name"], "invoke_agent skein");
            assert_eq!(written[0]["endTimeUnixNano"], "0");
            assert_eq!(written[0]["spanId"], started.span_id().to_string().as_str());
            assert_eq!(written[1]["name"], "dispatch");
            assert_ne!(written[1]["endTimeUnixNano"], "0");
            assert_eq!(written[2]["name"], "short");

            drop(turn);
            store.flush().expect("flush");
            let written = read_spans(&store);
            assert_eq!(written.len(), 4);
            assert_eq!(written[3]["spanId"], written[0]["spanId"]);
            assert_ne!(written[3]["endTimeUnixNano"], "0");
        });
        provider.shutdown().expect("shutdown");
    }
}
