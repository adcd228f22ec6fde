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
//! Retention ([`Retention`]): a process starts a new file once its file
//! would grow past the size limit (a check of a byte counter per line, no
//! `stat`; lines are at most an eighth of the limit), and before writing
//! to it deletes the oldest closed files of the directory until the closed
//! files, plus every file being written counted at the size limit, fit the
//! total size, and any closed file not written for longer than the age
//! limit (also checked every few minutes). A process holds a shared
//! `flock` on the file it writes; only files that can be locked
//! exclusively are deleted, so another live process's file never is. The
//! spans deleted are counted ([`ExportStats::deleted`]).
//!
//! A store that cannot be written (a full disk, a removed or read-only
//! directory) drops spans and counts them in [`ExportStats`]; a line cut
//! short by a full disk is cut off the file again, and the file is
//! reopened at the next line, so writing resumes once there is room.
//!
//! Long-lived agent spans (turns) are visible before they end: when one
//! starts, [`start_in_progress`] has it written with `endTimeUnixNano`
//! `"0"`. The finished record, written later with the same trace and span
//! ids, supersedes it.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

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
/// The most encoded span bytes one line holds, at most, is this fraction
/// of the file size limit (and never more than [`WRITE_AT_BYTES`]): a
/// burst is written as as many lines as it takes, each checked against
/// the limit, so a file is rotated before it passes the limit.
const LINES_PER_FILE: u64 = 8;
/// Emptied batches kept for reuse.
const SPARE_BATCHES: usize = 2;
/// How long a finished span may wait in memory before it is written.
const WRITE_INTERVAL: Duration = Duration::from_millis(100);
/// How often a store that does not rotate still deletes files past the
/// age limit.
const AGE_SWEEP_INTERVAL: Duration = Duration::from_secs(300);

/// How much of the store is kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retention {
    /// A process starts a new file before its file grows past this.
    pub max_file_bytes: u64,
    /// Closed files are deleted, oldest first, while the directory's store
    /// files add up to more than this.
    pub max_total_bytes: u64,
    /// Closed files not written for longer than this are deleted.
    pub max_age: Duration,
}

impl Retention {
    /// Default size of one file: 64 MiB.
    pub const DEFAULT_MAX_FILE_BYTES: u64 = 64 * 1024 * 1024;
    /// Default size of the whole store: 1 GiB.
    pub const DEFAULT_MAX_TOTAL_BYTES: u64 = 1024 * 1024 * 1024;
    /// Default age limit: 7 days.
    pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            max_file_bytes: Self::DEFAULT_MAX_FILE_BYTES,
            max_total_bytes: Self::DEFAULT_MAX_TOTAL_BYTES,
            max_age: Self::DEFAULT_MAX_AGE,
        }
    }
}

/// A size or age that did not parse.
#[derive(Debug, thiserror::Error)]
#[error("invalid {what} {text:?}: {expected}")]
pub struct RetentionParseError {
    what: &'static str,
    text: String,
    expected: &'static str,
}

/// Parses a size: a whole number of bytes with an optional unit, `B`,
/// `KiB`, `MiB` or `GiB` (also `K`, `M`, `G`; case-insensitive; the units
/// are powers of 1024), as in `64MiB` or `512 KiB`.
pub fn parse_size(text: &str) -> Result<u64, RetentionParseError> {
    let error = || RetentionParseError {
        what: "size",
        text: text.to_owned(),
        expected: "expected a whole number with an optional unit B, KiB, MiB or GiB, like 64MiB",
    };
    let (number, unit) = number_and_unit(text).ok_or_else(error)?;
    let factor: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1024,
        "m" | "mib" => 1024 * 1024,
        "g" | "gib" => 1024 * 1024 * 1024,
        _ => return Err(error()),
    };
    number.checked_mul(factor).ok_or_else(error)
}

/// Splits `64 MiB` into its whole number and its unit (trimmed, possibly
/// empty); `None` when it does not start with a number that fits a `u64`.
fn number_and_unit(text: &str) -> Option<(u64, &str)> {
    let trimmed = text.trim();
    let split = trimmed
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(split);
    Some((number.parse().ok()?, unit.trim()))
}

/// Parses an age: a whole number with a unit, `s`, `m`, `h` or `d`, as in
/// `30m`, `12h` or `7d`.
pub fn parse_age(text: &str) -> Result<Duration, RetentionParseError> {
    let error = || RetentionParseError {
        what: "age",
        text: text.to_owned(),
        expected: "expected a whole number with a unit s, m, h or d, like 30m, 12h or 7d",
    };
    let (number, unit) = number_and_unit(text).ok_or_else(error)?;
    let factor: u64 = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(error()),
    };
    number
        .checked_mul(factor)
        .map(Duration::from_secs)
        .ok_or_else(error)
}

/// This process's file in a store directory, and the thread that writes it.
///
/// Spans are encoded by the thread that ends them (so the cost is spread
/// over the threads doing the work, and nothing queues the SDK's span
/// objects), appended to an in-memory buffer, and written out by one writer
/// thread at most [`WRITE_INTERVAL`] after a span ended, or at once when a
/// line's worth of spans is waiting. A line holds at most an eighth of the
/// file size limit (a single span larger than that is a line of its own).
#[derive(Debug)]
pub struct LocalStore {
    dir: PathBuf,
    retention: Retention,
    /// Encoded span bytes one line holds at most (see [`LINES_PER_FILE`]).
    line_bytes: usize,
    resource: Mutex<Arc<EncodedResource>>,
    pending: Mutex<Pending>,
    wake: Condvar,
    file: Mutex<Current>,
    stats: Arc<ExportStats>,
    /// Says when the writer thread has finished.
    writer_done: Mutex<Option<Receiver<()>>>,
}

/// The file being written.
#[derive(Debug)]
struct Current {
    /// Its path (the file exists once something was written).
    path: PathBuf,
    /// The creation time in its name, in Unix milliseconds.
    millis: u128,
    /// Open for appending, with a shared lock held; `None` before the
    /// first write, after a rotation and after a failed write.
    file: Option<File>,
    /// Bytes in the file: the size limit is checked against this.
    written: u64,
    /// Span records written to the file.
    spans: u64,
    /// The span records of this process's closed files, by path, so that
    /// a sweep deleting one need not read it to count them.
    closed: HashMap<PathBuf, u64>,
    /// When the directory was last swept.
    last_sweep: Option<Instant>,
    /// The last write failed (logged once until a write succeeds).
    failing: bool,
}

fn unix_millis() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or_default()
}

fn file_name(millis: u128) -> String {
    format!(
        "spans-{millis}-{}.{STORE_FILE_EXTENSION}",
        std::process::id()
    )
}

/// Spans waiting for the writer thread.
#[derive(Debug, Default)]
struct Pending {
    /// A line's worth of spans each, oldest first; spans are added to the
    /// last one until it is full.
    batches: VecDeque<Batch>,
    /// Encoded bytes in all batches.
    bytes: usize,
    closed: bool,
    /// Emptied batches, for reuse.
    spare: Vec<SpanGroups>,
}

impl Pending {
    /// Whether the writer should write now rather than let a burst gather:
    /// a line's worth is waiting, or enough for a write, or the store is
    /// closing.
    fn ready(&self) -> bool {
        self.batches.len() > 1 || self.bytes >= WRITE_AT_BYTES || self.closed
    }
}

/// The spans of one line.
#[derive(Debug, Default)]
struct Batch {
    groups: SpanGroups,
    /// Their encoded bytes.
    bytes: usize,
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
        Self::with_retention(dir, stats, Retention::default())
    }

    /// Like [`LocalStore::with_stats`], keeping what `retention` allows.
    pub fn with_retention(
        dir: impl Into<PathBuf>,
        stats: Arc<ExportStats>,
        retention: Retention,
    ) -> std::io::Result<Arc<Self>> {
        let dir = dir.into();
        crate::owner_only::create_dir_all(&dir)?;
        let millis = unix_millis();
        let store = Arc::new(Self {
            file: Mutex::new(Current {
                path: dir.join(file_name(millis)),
                millis,
                file: None,
                written: 0,
                spans: 0,
                closed: HashMap::new(),
                last_sweep: None,
                failing: false,
            }),
            dir,
            retention,
            line_bytes: usize::try_from(retention.max_file_bytes / LINES_PER_FILE)
                .unwrap_or(usize::MAX)
                .clamp(1, WRITE_AT_BYTES),
            resource: Mutex::new(Arc::new(EncodedResource::new(
                &Resource::builder_empty().build(),
            ))),
            pending: Mutex::default(),
            wake: Condvar::new(),
            stats,
            writer_done: Mutex::new(None),
        });
        let for_thread = Arc::clone(&store);
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("skein-trace-store".into())
            .spawn(move || {
                for_thread.write_loop();
                let _ = done_tx.send(());
            })?;
        *lock(&store.writer_done) = Some(done_rx);
        Ok(store)
    }

    /// The file this store writes now (it exists once a span was written
    /// to it; it changes when the store rotates).
    pub fn path(&self) -> PathBuf {
        lock(&self.file).path.clone()
    }

    /// What this store keeps.
    pub fn retention(&self) -> Retention {
        self.retention
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
                let len = buf.len() + 1;
                let mut pending = lock(&self.pending);
                if pending.closed || pending.bytes + len > MAX_BUFFERED_BYTES {
                    drop(pending);
                    self.stats.record_rejected(1);
                    return;
                }
                let was_ready = pending.ready();
                let first = pending.batches.is_empty();
                if pending
                    .batches
                    .back()
                    .is_none_or(|b| b.bytes > 0 && b.bytes + len > self.line_bytes)
                {
                    let groups = pending.spare.pop().unwrap_or_default();
                    pending.batches.push_back(Batch { groups, bytes: 0 });
                }
                let Some(batch) = pending.batches.back_mut() else {
                    return;
                };
                batch.groups.push(scope, key, buf);
                batch.bytes += len;
                pending.bytes += len;
                // The writer sleeps until a burst starts (to time it) and
                // until it is ready to be written.
                let wake = first || (!was_ready && pending.ready());
                drop(pending);
                self.stats.record_accepted(1);
                if wake {
                    self.wake.notify_one();
                }
            });
        });
        if SCRATCH.with_borrow(|buf| buf.capacity() > 64 * 1024) {
            SCRATCH.with_borrow_mut(|buf| buf.shrink_to(2048));
        }
    }

    /// The writer thread: writes what is waiting whenever a line's worth
    /// is or a span waited [`WRITE_INTERVAL`], until the store is closed
    /// and drained.
    fn write_loop(&self) {
        let mut line = Vec::new();
        loop {
            let mut pending = lock(&self.pending);
            while pending.batches.is_empty() && !pending.closed {
                pending = self.wake.wait(pending).unwrap_or_else(|p| p.into_inner());
            }
            if pending.batches.is_empty() && pending.closed {
                return;
            }
            if !pending.ready() {
                // Let a burst gather, for at most the write interval.
                pending = self
                    .wake
                    .wait_timeout_while(pending, WRITE_INTERVAL, |p| !p.ready())
                    .map(|(guard, _)| guard)
                    .unwrap_or_else(|p| p.into_inner().0);
            }
            drop(pending);
            self.write_pending(&mut line);
        }
    }

    /// Writes the batches waiting now, a line each, in order. Holding the
    /// file while taking them keeps the writer thread and [`Self::flush`]
    /// from writing them out of order, and makes a flush return only once
    /// every span queued before it is written.
    fn write_pending(&self, line: &mut Vec<u8>) {
        let mut current = lock(&self.file);
        let waiting = lock(&self.pending).batches.len();
        for _ in 0..waiting {
            let batch = {
                let mut pending = lock(&self.pending);
                let batch = pending.batches.pop_front();
                if let Some(batch) = &batch {
                    pending.bytes -= batch.bytes;
                }
                batch
            };
            let Some(mut batch) = batch else {
                break;
            };
            self.write_batch(&mut current, &mut batch.groups, line);
            let mut pending = lock(&self.pending);
            if pending.spare.len() < SPARE_BATCHES {
                pending.spare.push(batch.groups);
            }
        }
    }

    /// Writes `groups` as one line (and empties them).
    fn write_batch(&self, current: &mut Current, groups: &mut SpanGroups, line: &mut Vec<u8>) {
        if groups.is_empty() {
            return;
        }
        let count = groups.len();
        line.clear();
        let resource = Arc::clone(&lock(&self.resource));
        groups.write_line(&resource, line);
        match self.write_line(current, line) {
            Ok(()) => {
                current.spans += count;
                self.stats.record_exported(count);
            }
            Err(err) => {
                self.stats.record_failed(count);
                tracing::debug!(%err, "could not write spans to the local store");
            }
        }
        if line.capacity() > 4 * WRITE_AT_BYTES {
            line.shrink_to(WRITE_AT_BYTES);
        }
    }

    /// Appends one whole line to the file, opening it on first use and
    /// starting a new file when this one would grow past the size limit.
    /// The directory is swept before the first line of each file (and
    /// every few minutes), so the room the new file may take is made
    /// before it takes any. Closing the old file, the sweep and creating
    /// the new file happen under the directory's lock, so that processes
    /// sharing the store sweep one at a time, each seeing the files the
    /// others write.
    fn write_line(&self, current: &mut Current, line: &[u8]) -> std::io::Result<()> {
        let len = line.len() as u64;
        let rotate = current.written > 0
            && current.written.saturating_add(len) > self.retention.max_file_bytes;
        let sweep_due = rotate
            || current
                .last_sweep
                .is_none_or(|at| at.elapsed() >= AGE_SWEEP_INTERVAL);
        let dir_lock = if sweep_due { lock_dir(&self.dir) } else { None };
        if rotate {
            // The old file is closed (and its lock released) here.
            current.file = None;
            let spans = std::mem::take(&mut current.spans);
            let closed = std::mem::replace(&mut current.path, PathBuf::new());
            current.closed.insert(closed, spans);
            current.millis = (current.millis + 1).max(unix_millis());
            current.path = self.dir.join(file_name(current.millis));
            current.written = 0;
        }
        if sweep_due {
            current.last_sweep = Some(Instant::now());
            let deleted = sweep(
                &self.dir,
                &current.path,
                &self.retention,
                SystemTime::now(),
                &mut current.closed,
            );
            self.stats.record_deleted(deleted);
        }
        let result = self.append_to_current(current, line);
        drop(dir_lock);
        match &result {
            Ok(()) if current.failing => {
                current.failing = false;
                tracing::info!(file = %current.path.display(), "writing to the local trace store again");
            }
            Err(err) if !current.failing => {
                current.failing = true;
                tracing::warn!(
                    %err,
                    "cannot write the local trace store: spans are dropped and counted until it can be written again"
                );
            }
            _ => {}
        }
        result
    }

    fn append_to_current(&self, current: &mut Current, line: &[u8]) -> std::io::Result<()> {
        if current.file.is_none() {
            let (file, len) = open_locked(&current.path)?;
            current.file = Some(file);
            current.written = len;
        }
        let Some(file) = current.file.as_mut() else {
            return Ok(());
        };
        // One write per line: a reader following the file never sees a
        // line half-written for long.
        match file.write_all(line) {
            Ok(()) => {
                current.written += line.len() as u64;
                Ok(())
            }
            Err(err) => {
                // Cut off what part of the line made it (a full disk), so
                // the next line starts on a line of its own, and reopen at
                // the next write.
                let _ = file.set_len(current.written);
                current.file = None;
                Err(std::io::Error::new(
                    err.kind(),
                    format!("writing {}: {err}", current.path.display()),
                ))
            }
        }
    }

    /// Writes everything queued so far, then syncs the file.
    pub fn flush(&self) -> OTelSdkResult {
        self.write_pending(&mut Vec::new());
        self.sync()
    }

    /// Syncs the file to disk.
    pub fn sync(&self) -> OTelSdkResult {
        match lock(&self.file).file.as_ref() {
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
        if let Some(done) = lock(&self.writer_done).take() {
            // Disconnected: the thread ended without saying so (it
            // panicked); there is nothing left to wait for.
            if let Err(RecvTimeoutError::Timeout) = done.recv_timeout(timeout) {
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

/// Opens `path` for appending, with a shared lock held, and returns it
/// with its length. Creates the file (and the directory again, if it was
/// removed) when missing.
fn open_locked(path: &Path) -> std::io::Result<(File, u64)> {
    let context = |e: std::io::Error| {
        std::io::Error::new(e.kind(), format!("opening {}: {e}", path.display()))
    };
    // An existing file: this process's, reopened after a failed write.
    let file = match OpenOptions::new().append(true).open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return create_locked(path),
        Err(e) => return Err(context(e)),
    };
    file.lock_shared().map_err(context)?;
    let metadata = file.metadata().map_err(context)?;
    // Another process's sweep may have deleted the file between the open
    // and the lock: then write a fresh one.
    if !same_file(&metadata, path) {
        drop(file);
        return create_locked(path);
    }
    Ok((file, metadata.len()))
}

/// Creates `path`, empty, with a shared lock held. The file is created
/// and locked under a name that is not a store file's, then renamed: a
/// sweep never sees it unlocked, so it always counts it as a file being
/// written.
fn create_locked(path: &Path) -> std::io::Result<(File, u64)> {
    let context = |e: std::io::Error| {
        std::io::Error::new(e.kind(), format!("creating {}: {e}", path.display()))
    };
    let fresh = path.with_extension("new");
    // Left over by a process of the same id that died before the rename.
    let _ = fs::remove_file(&fresh);
    let create = || -> std::io::Result<File> {
        let file = crate::owner_only::open_options()
            .create(true)
            .append(true)
            .open(&fresh)?;
        crate::owner_only::restrict(&file)?;
        Ok(file)
    };
    let file = match create() {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(dir) = path.parent() {
                crate::owner_only::create_dir_all(dir).map_err(context)?;
            }
            create()
        }
        other => other,
    }
    .map_err(context)?;
    let locked = file.lock_shared().and_then(|()| fs::rename(&fresh, path));
    if let Err(e) = locked {
        let _ = fs::remove_file(&fresh);
        return Err(context(e));
    }
    Ok((file, 0))
}

/// Takes the exclusive lock of the store directory (a `flock` on the
/// directory itself), waiting for another process's sweep to finish.
/// `None` when the directory cannot be locked (it was removed): the sweep
/// then goes ahead alone.
fn lock_dir(dir: &Path) -> Option<File> {
    let handle = File::open(dir).ok()?;
    handle.lock().ok()?;
    Some(handle)
}

#[cfg(unix)]
fn same_file(open: &fs::Metadata, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    fs::metadata(path).is_ok_and(|m| m.dev() == open.dev() && m.ino() == open.ino())
}

#[cfg(not(unix))]
fn same_file(_open: &fs::Metadata, path: &Path) -> bool {
    path.exists()
}

/// A store file as a sweep found it.
struct Found {
    path: PathBuf,
    len: u64,
    modified: SystemTime,
    /// Another process holds a lock on it: it is being written.
    live: bool,
}

/// Deletes the store files of `dir` that `retention` no longer keeps,
/// oldest first: every closed file not modified within the age limit,
/// then more closed files until the store fits its total size, and no
/// more. Never `own` (the file being written, which may not exist yet),
/// never a file another process holds locked.
///
/// The store fits when its closed files, plus every file being written
/// counted at the file size limit (or its size, if larger), add up to the
/// total at most: a file being written may grow to the limit before its
/// writer rotates and sweeps again, and the directory must not pass the
/// total meanwhile.
///
/// `known` holds the span records of files this process wrote and
/// closed; the records of any other file deleted are counted by reading
/// it. Entries of files no longer in the directory are dropped. Returns
/// the span records the deleted files held.
fn sweep(
    dir: &Path,
    own: &Path,
    retention: &Retention,
    now: SystemTime,
    known: &mut HashMap<PathBuf, u64>,
) -> u64 {
    let mut deleted = 0;
    let Ok(paths) = store_files(dir) else {
        return deleted;
    };
    known.retain(|path, _| paths.contains(path));
    let found: Vec<Found> = paths
        .into_iter()
        .filter(|path| path != own)
        .filter_map(|path| {
            let metadata = fs::metadata(&path).ok()?;
            let modified = metadata.modified().unwrap_or(now);
            // A live writer holds a shared lock; the exclusive one taken
            // to find out is released at once.
            let live = File::open(&path).ok()?.try_lock().is_err();
            Some(Found {
                path,
                len: metadata.len(),
                modified,
                live,
            })
        })
        .collect();
    let reserved = |len: u64| len.max(retention.max_file_bytes);
    let own_len = fs::metadata(own).map(|m| m.len()).unwrap_or(0);
    let mut total: u64 = found
        .iter()
        .map(|f| if f.live { reserved(f.len) } else { f.len })
        .fold(reserved(own_len), u64::saturating_add);
    for file in found.into_iter().filter(|f| !f.live) {
        let too_old = now
            .duration_since(file.modified)
            .is_ok_and(|age| age > retention.max_age);
        if !too_old && total <= retention.max_total_bytes {
            continue;
        }
        // The lock is held until the file is gone.
        let Ok(mut handle) = File::open(&file.path) else {
            continue;
        };
        if handle.try_lock().is_err() {
            continue;
        }
        let spans = match known.remove(&file.path) {
            Some(spans) => spans,
            None => count_records(&mut handle),
        };
        match fs::remove_file(&file.path) {
            Ok(()) => {
                total = total.saturating_sub(file.len);
                deleted += spans;
            }
            Err(err) => {
                tracing::debug!(%err, file = %file.path.display(), "could not delete an old store file");
            }
        }
    }
    deleted
}

/// Counts the span records of a store file: each has exactly one
/// `"startTimeUnixNano":` member, a text no attribute value can hold
/// (quotes inside a JSON string are escaped). Reading stops at an error.
fn count_records(file: &mut File) -> u64 {
    use std::io::Read;
    const MARK: &[u8] = b"\"startTimeUnixNano\":";
    let mut buf = vec![0_u8; 64 * 1024];
    // The bytes kept from the previous read, in case a mark straddles two.
    let mut kept = 0;
    let mut count = 0;
    loop {
        let read = match file.read(&mut buf[kept..]) {
            Ok(0) | Err(_) => return count,
            Ok(n) => n,
        };
        let end = kept + read;
        count += buf[..end]
            .windows(MARK.len())
            .filter(|w| *w == MARK)
            .count() as u64;
        kept = (MARK.len() - 1).min(end);
        buf.copy_within(end - kept..end, 0);
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
    fn a_span_is_written_soon_after_it_ends_without_a_flush() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = LocalStore::new(dir.path()).expect("store");
        let provider = SdkTracerProvider::builder()
            .with_span_processor(LocalStoreProcessor::new(Arc::clone(&store)))
            .build();
        let tracer = provider.tracer("test");
        tracer.span_builder("alone").start(&tracer).end();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while read_spans(&store).is_empty() {
            assert!(
                std::time::Instant::now() < deadline,
                "the span was not written within 30 s"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(read_spans(&store)[0]["name"], "alone");
        provider.shutdown().expect("shutdown");
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

#[cfg(test)]
mod retention_tests {
    use super::*;
    use opentelemetry::trace::{Tracer as _, TracerProvider as _};
    use opentelemetry_sdk::trace::SdkTracerProvider;

    /// A store under `dir` keeping what `retention` allows, and a tracer
    /// writing into it.
    fn store_with(dir: &Path, retention: Retention) -> (Arc<LocalStore>, SdkTracerProvider) {
        let store = LocalStore::with_retention(dir, ExportStats::new("local store"), retention)
            .expect("store");
        let provider = SdkTracerProvider::builder()
            .with_span_processor(LocalStoreProcessor::new(Arc::clone(&store)))
            .build();
        (store, provider)
    }

    /// Ends a span named `name` and writes it out as a line of its own.
    fn write_span(store: &LocalStore, provider: &SdkTracerProvider, name: &str) {
        let tracer = provider.tracer("test");
        tracer.span_builder(name.to_owned()).start(&tracer).end();
        store.flush().expect("flush");
    }

    fn span_names(dir: &Path) -> Vec<String> {
        store_files(dir)
            .expect("list")
            .iter()
            .flat_map(|f| {
                fs::read_to_string(f)
                    .expect("read")
                    .lines()
                    .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("json"))
                    .collect::<Vec<_>>()
            })
            .flat_map(|v| {
                v["resourceSpans"][0]["scopeSpans"][0]["spans"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
            })
            .map(|s| s["name"].as_str().expect("name").to_owned())
            .collect()
    }

    fn total_bytes(dir: &Path) -> u64 {
        store_files(dir)
            .expect("list")
            .iter()
            .map(|f| fs::metadata(f).expect("metadata").len())
            .sum()
    }

    #[test]
    fn sizes_and_ages_parse_with_their_units() {
        assert_eq!(parse_size("64MiB").expect("size"), 64 * 1024 * 1024);
        assert_eq!(parse_size("512 kib").expect("size"), 512 * 1024);
        assert_eq!(parse_size("1G").expect("size"), 1 << 30);
        assert_eq!(parse_size("4096").expect("size"), 4096);
        assert!(parse_size("1.5MiB").is_err());
        assert!(parse_size("12 parsecs").is_err());
        assert!(parse_size("99999999999999999999GiB").is_err());
        assert_eq!(parse_age("30m").expect("age"), Duration::from_secs(1800));
        assert_eq!(parse_age("12h").expect("age"), Duration::from_secs(43_200));
        assert_eq!(parse_age("7d").expect("age"), Duration::from_secs(604_800));
        assert_eq!(parse_age("45s").expect("age"), Duration::from_secs(45));
        assert!(parse_age("7").is_err());
        assert!(parse_age("d").is_err());
    }

    #[test]
    fn a_file_past_the_size_limit_rotates_and_nothing_is_lost() {
        let dir = tempfile::tempdir().expect("tempdir");
        let retention = Retention {
            max_file_bytes: 2048,
            ..Retention::default()
        };
        let (store, provider) = store_with(dir.path(), retention);
        let first = store.path();
        let names: Vec<String> = (0..40).map(|n| format!("span {n}")).collect();
        for name in &names {
            write_span(&store, &provider, name);
        }
        provider.shutdown().expect("shutdown");
        let files = store_files(dir.path()).expect("list");
        assert!(files.len() >= 5, "expected several files: {files:?}");
        assert_eq!(files[0], first);
        assert_eq!(files.last(), Some(&store.path()));
        for file in &files {
            let text = fs::read_to_string(file).expect("read");
            let len = text.len() as u64;
            // A file only passes the limit when its one line is larger.
            assert!(
                len <= 2048 || text.lines().count() == 1,
                "{} holds {len} bytes",
                file.display()
            );
        }
        assert_eq!(span_names(dir.path()), names);
        assert_eq!(store.stats().exported(), 40);
        assert_eq!(store.stats().dropped(), 0);
    }

    #[test]
    fn a_burst_of_spans_is_written_in_lines_that_keep_every_file_within_the_limit() {
        let dir = tempfile::tempdir().expect("tempdir");
        let retention = Retention {
            max_file_bytes: 16 * 1024,
            ..Retention::default()
        };
        let (store, provider) = store_with(dir.path(), retention);
        let tracer = provider.tracer("test");
        // Ended faster than the writer wakes: far more than a file's worth
        // is waiting at once.
        let names: Vec<String> = (0..3_000).map(|n| format!("span {n}")).collect();
        for (n, name) in names.iter().enumerate() {
            tracer
                .span_builder(name.clone())
                .with_attributes([opentelemetry::KeyValue::new("n", n as i64)])
                .start(&tracer)
                .end();
        }
        provider.shutdown().expect("shutdown");
        let files = store_files(dir.path()).expect("list");
        assert!(files.len() > 10, "expected many files: {files:?}");
        for file in &files {
            let len = fs::metadata(file).expect("metadata").len();
            assert!(len <= 16 * 1024, "{} holds {len} bytes", file.display());
        }
        assert_eq!(span_names(dir.path()), names);
        assert_eq!(store.stats().exported(), 3_000);
    }

    #[test]
    fn the_oldest_files_are_deleted_past_the_total_size() {
        let dir = tempfile::tempdir().expect("tempdir");
        let retention = Retention {
            max_file_bytes: 2048,
            max_total_bytes: 8192,
            max_age: Duration::from_secs(3600),
        };
        let (store, provider) = store_with(dir.path(), retention);
        let first = store.path();
        for n in 0..100 {
            write_span(&store, &provider, &format!("span {n}"));
            // Room is made for the file being written before it grows.
            assert!(
                total_bytes(dir.path()) <= 8192,
                "store grew to {} bytes after span {n}",
                total_bytes(dir.path())
            );
        }
        provider.shutdown().expect("shutdown");
        assert!(!first.exists(), "the first file should have been deleted");
        let names = span_names(dir.path());
        assert_eq!(names.last().map(String::as_str), Some("span 99"));
        // What is kept is the newest spans, without a gap, and no fewer
        // than the total allows: the closed files the last sweep kept and
        // the file written last.
        let kept: Vec<String> = (100 - names.len()..100)
            .map(|n| format!("span {n}"))
            .collect();
        assert_eq!(names, kept);
        assert!(names.len() < 100);
        assert!(
            total_bytes(dir.path()) > 8192 - 2 * 2048,
            "only {} bytes kept",
            total_bytes(dir.path())
        );
        assert_eq!(store.stats().exported(), 100);
        // Every span deleted is counted.
        assert_eq!(store.stats().deleted(), 100 - names.len() as u64);
        assert_eq!(store.stats().dropped(), 0);
    }

    #[test]
    fn the_spans_of_another_process_s_deleted_file_are_counted() {
        let dir = tempfile::tempdir().expect("tempdir");
        // A closed file an earlier process wrote: three spans, one of them
        // with a link and an attribute holding the text records are
        // counted by.
        let earlier = dir.path().join("spans-1000-1.jsonl");
        {
            let (store, provider) = store_with(dir.path(), Retention::default());
            let tracer = provider.tracer("test");
            let linked = tracer.start("first");
            let link = opentelemetry::trace::Span::span_context(&linked).clone();
            drop(linked);
            tracer
                .span_builder("second")
                .with_links(vec![opentelemetry::trace::Link::with_context(link)])
                .with_attributes([opentelemetry::KeyValue::new(
                    "text",
                    "\"startTimeUnixNano\":\"0\"",
                )])
                .start(&tracer)
                .end();
            store.flush().expect("flush");
            write_span(&store, &provider, "third");
            provider.shutdown().expect("shutdown");
            fs::rename(store.path(), &earlier).expect("rename");
        }
        let retention = Retention {
            max_file_bytes: 1024,
            max_total_bytes: 1024,
            ..Retention::default()
        };
        let (store, provider) = store_with(dir.path(), retention);
        write_span(&store, &provider, "now");
        provider.shutdown().expect("shutdown");
        assert!(!earlier.exists(), "the earlier file is deleted");
        assert_eq!(store.stats().deleted(), 3);
        assert_eq!(span_names(dir.path()), vec!["now".to_owned()]);
    }

    #[test]
    fn old_closed_files_are_deleted_but_locked_files_never() {
        let dir = tempfile::tempdir().expect("tempdir");
        let day_ago = SystemTime::now() - Duration::from_secs(86_400);
        let make = |name: &str| {
            let path = dir.path().join(name);
            fs::write(&path, b"{}\n").expect("write");
            File::options()
                .write(true)
                .open(&path)
                .expect("open")
                .set_modified(day_ago)
                .expect("set mtime");
            path
        };
        let closed = make("spans-1000-1.jsonl");
        let live = make("spans-1001-2.jsonl");
        let recent = dir.path().join("spans-1002-3.jsonl");
        fs::write(&recent, b"{}\n").expect("write");
        let not_a_store_file = make("notes.txt");
        // Another process writing `live` holds a shared lock on it.
        let writer = File::open(&live).expect("open");
        writer.lock_shared().expect("lock");

        let retention = Retention {
            max_age: Duration::from_secs(3600),
            ..Retention::default()
        };
        let (store, provider) = store_with(dir.path(), retention);
        write_span(&store, &provider, "now");
        provider.shutdown().expect("shutdown");

        assert!(!closed.exists(), "a closed file a day old is deleted");
        assert!(live.exists(), "a file another process writes is kept");
        assert!(recent.exists(), "a recent file is kept");
        assert!(not_a_store_file.exists(), "other files are left alone");
        assert!(store.path().exists());
        drop(writer);
    }

    #[test]
    fn a_full_disk_drops_and_counts_spans_and_writing_resumes_after() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, provider) = store_with(dir.path(), Retention::default());
        // Every write to /dev/full fails with ENOSPC.
        std::os::unix::fs::symlink("/dev/full", store.path()).expect("symlink");
        write_span(&store, &provider, "lost 1");
        write_span(&store, &provider, "lost 2");
        assert_eq!(store.stats().dropped(), 2);
        assert_eq!(store.stats().exported(), 0);

        // Room again: the file is reopened at the next line.
        fs::remove_file(store.path()).expect("remove symlink");
        write_span(&store, &provider, "kept");
        provider.shutdown().expect("shutdown");
        assert_eq!(store.stats().dropped(), 2);
        assert_eq!(store.stats().exported(), 1);
        assert_eq!(span_names(dir.path()), vec!["kept".to_owned()]);
    }

    #[test]
    fn a_store_directory_that_becomes_unwritable_drops_and_counts_spans() {
        let dir = tempfile::tempdir().expect("tempdir");
        let traces = dir.path().join("traces");
        let retention = Retention {
            max_file_bytes: 1024,
            ..Retention::default()
        };
        let (store, provider) = store_with(&traces, retention);
        write_span(&store, &provider, "first");
        // The directory is replaced by a regular file: the next file (each
        // line rotates at this size) cannot be created.
        fs::remove_dir_all(&traces).expect("remove");
        fs::write(&traces, b"not a directory").expect("write");
        write_span(&store, &provider, "lost 1");
        write_span(&store, &provider, "lost 2");
        provider.shutdown().expect("shutdown");
        assert_eq!(store.stats().exported(), 1);
        assert_eq!(store.stats().dropped(), 2);
    }
}
