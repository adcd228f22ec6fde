//! Durable thread history: one append-only JSON Lines file per thread.
//!
//! `$SKEIN_HOME/threads/<thread-id>.jsonl` starts with a `thread` record,
//! then holds a `turnStarted` and (once it ends) a `turnCompleted` record per
//! turn. A person can read it; no whole record is ever rewritten.
//!
//! Durability: `turnStarted` is appended without a sync; `turnCompleted` is
//! appended and synced before the turn is reported complete. Deltas are not
//! written at all, so the turn path never waits on the disk per delta.
//!
//! Ownership: the process that writes a thread holds an exclusive OS lock
//! on it for as long as it has the thread loaded. A second writer is
//! refused with [`StoreError::Busy`]. Readers never lock; they use the lock
//! only to tell a turn still running elsewhere from one torn by a crash
//! (the kernel releases the locks of a killed process). The lock is not on
//! the thread's file (see [`writer_lock`]): a loaded thread keeps its file
//! closed between appends, so idle threads cost no descriptors. Each append
//! reopens the file and first checks that it is still the file, and the
//! length, this process left; if not, it writes nothing and fails with
//! [`StoreError::Changed`].
//!
//! Whole records only: an append that fails (a full disk) is cut off
//! again, so the next record never lands on its fragment, and a thread file
//! that cannot be created whole is removed.
//!
//! Tolerance: a torn last line, a corrupt line, or a foreign or unreadable
//! file is skipped with a warning naming the file; it never fails a load and
//! never hides the other threads. A record that an older writer appended
//! onto a fragment is read back from the rest of its line.

use std::fs::{self, File, Metadata, OpenOptions, TryLockError};
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use skein_otel::owner_only;
use skein_protocol::{TokenUsage, TurnKind, TurnStatus};

use crate::records::{ThreadError, TurnItem, TurnRecord, unix_now};

mod writer_lock;

pub use writer_lock::LOCK_FILE_NAME;
use writer_lock::{WriterLock, Writers};

/// Whether a loaded thread keeps its history file open while idle: only
/// where the writer lock cannot live apart from the file (not on Linux).
pub const IDLE_THREADS_HOLD_FILES: bool = !cfg!(target_os = "linux");

/// File name extension of thread files.
pub const THREAD_FILE_EXTENSION: &str = "jsonl";

/// One line of a thread file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(
    tag = "type",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
pub enum Record {
    /// The first line: the thread itself.
    Thread {
        /// The thread's id.
        id: String,
        /// The model it uses.
        model: String,
        /// Creation time, seconds since the Unix epoch.
        created_at: i64,
        /// Where the thread was forked from, if it was.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        forked_from: Option<ForkOrigin>,
        /// The provider serving the model (absent in older files: the
        /// echo model's, or the configured default).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        model_provider: Option<String>,
    },
    /// The thread's model changed (a `turn/start` chose another one); it
    /// applies to the turns that follow.
    ModelChanged {
        /// The new model.
        model: String,
        /// Its provider.
        model_provider: String,
        /// When, seconds since the Unix epoch.
        at: i64,
    },
    /// A turn began.
    TurnStarted {
        /// The turn's id.
        turn_id: String,
        /// Its kind.
        kind: TurnKind,
        /// The user's input.
        input: String,
        /// The trace of the turn span.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        trace_id: Option<String>,
        /// The turn span's id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        span_id: Option<String>,
        /// When, seconds since the Unix epoch.
        at: i64,
    },
    /// A turn ended.
    TurnCompleted {
        /// The turn's id.
        turn_id: String,
        /// How it ended.
        status: TurnStatus,
        /// The agent's answer (partial when interrupted).
        output: String,
        /// Why it failed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
        /// Tokens used.
        #[serde(default)]
        usage: TokenUsage,
        /// The turn's items after the user's input: agent messages, tool
        /// calls and their results (absent for echo turns and older files).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        items: Vec<TurnItem>,
        /// When, seconds since the Unix epoch.
        at: i64,
    },
    /// The thread was given a name (`thread/name/set`).
    ThreadNamed {
        /// The new name.
        name: String,
        /// When, seconds since the Unix epoch.
        at: i64,
    },
    /// The thread was archived or unarchived.
    ThreadArchived {
        /// True when archived, false when unarchived.
        archived: bool,
        /// When, seconds since the Unix epoch.
        at: i64,
    },
}

/// The thread (and turn) a fork was made from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ForkOrigin {
    /// The source thread.
    pub thread_id: String,
    /// The last turn copied, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub turn_id: Option<String>,
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No file for this thread.
    #[error("no stored thread with id {0:?}")]
    NotFound(String),
    /// Another process is writing the thread.
    #[error(
        "thread {0:?} is open for writing in another skein process sharing this SKEIN_HOME; \
         use that process, or stop it first"
    )]
    Busy(String),
    /// The thread's file changed while this process held the thread: it
    /// was replaced, removed, or written by something other than Skein.
    /// Nothing was written.
    #[error(
        "{path}: changed outside this skein process while it held the thread ({what}); \
         nothing was written; unload the thread and resume it to continue"
    )]
    Changed {
        /// The file.
        path: PathBuf,
        /// What changed.
        what: String,
    },
    /// The file exists but has no readable `thread` record.
    #[error("{path}: not a thread file: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// An I/O error.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_owned(),
        source,
    }
}

/// A thread as read from its file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredThread {
    /// The thread's id.
    pub id: String,
    /// The model name recorded (the last one chosen).
    pub model: String,
    /// The provider recorded, if any.
    pub model_provider: Option<String>,
    /// Creation time.
    pub created_at: i64,
    /// Time of the last record.
    pub updated_at: i64,
    /// Where it was forked from.
    pub forked_from: Option<ForkOrigin>,
    /// The name last set, if any.
    pub name: Option<String>,
    /// Whether the thread is archived.
    pub archived: bool,
    /// Its turns, oldest first. A turn with no completion record is
    /// `InProgress` while its writer is alive and `Interrupted` otherwise.
    pub turns: Vec<TurnRecord>,
}

/// The directory of thread files.
#[derive(Clone, Debug)]
pub struct ThreadStore {
    dir: PathBuf,
    /// Which threads this store holds for writing.
    writers: Arc<Writers>,
    /// Injected into the files this store creates (tests).
    #[cfg(test)]
    fault: Option<Fault>,
}

/// A thread this process holds for writing, and where its file ends. The
/// file itself is open only while a record is being appended.
#[derive(Debug)]
pub struct ThreadFile {
    path: PathBuf,
    /// The thread's writer lock, released when this is dropped.
    _lock: WriterLock,
    /// The file's device and inode, to tell it from a replacement.
    identity: (u64, u64),
    /// The length of the file's whole records: where the next one starts.
    len: u64,
    /// A failed append left bytes past `len` that could not be cut off;
    /// until they are, each record starts with a newline of its own.
    torn: bool,
    /// Injected write failures (tests).
    #[cfg(test)]
    fault: Option<Fault>,
}

/// A disk that fills up, for tests: writes past `space` bytes fail with
/// "no space left" after writing what fits, as a full file system does.
#[cfg(test)]
#[derive(Clone, Copy, Debug)]
pub(crate) struct Fault {
    /// Bytes that can still be written.
    pub(crate) space: u64,
    /// Whether truncating the file fails too.
    pub(crate) truncate_fails: bool,
}

impl ThreadFile {
    /// The thread at `path`, held by `lock`, whose file is open as `file`
    /// and ends after `len` bytes of whole records.
    fn new(path: PathBuf, lock: WriterLock, file: &File, len: u64) -> Result<Self, StoreError> {
        let identity = identity(&file.metadata().map_err(io_error(&path))?);
        Ok(Self {
            path,
            _lock: lock,
            identity,
            len,
            torn: false,
            #[cfg(test)]
            fault: None,
        })
    }

    /// Appends one record; with `sync`, waits until it is on disk.
    ///
    /// The file is opened for this append only. It must still be the file
    /// this process left, as long as it left it (no writer but this one
    /// holds the thread); otherwise nothing is written and the append fails
    /// with [`StoreError::Changed`].
    pub fn append(&mut self, record: &Record, sync: bool) -> Result<(), StoreError> {
        let file = self.reopen()?;
        self.append_to(&file, record, sync)
    }

    /// Opens the file for an append, checking it is the one left.
    fn reopen(&self) -> Result<File, StoreError> {
        let changed = |what: String| StoreError::Changed {
            path: self.path.clone(),
            what,
        };
        let file = match OpenOptions::new().append(true).open(&self.path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(changed("it was removed".into()));
            }
            Err(e) => return Err(io_error(&self.path)(e)),
        };
        let metadata = file.metadata().map_err(io_error(&self.path))?;
        if identity(&metadata) != self.identity {
            return Err(changed("it was replaced by another file".into()));
        }
        // Past `len` there may be the fragment of a failed append that
        // could not be cut off; otherwise the file ends where this process
        // left it.
        let len = metadata.len();
        if len < self.len || (!self.torn && len != self.len) {
            return Err(changed(format!(
                "it is {len} bytes long, not the {} this process wrote",
                self.len
            )));
        }
        Ok(file)
    }

    /// Appends one record to the thread's `file`, open for appending.
    ///
    /// A record is written whole or not at all: when the write (or the
    /// sync) fails, the bytes it left are cut off again, so a full disk
    /// never leaves a fragment the next record would be glued to. Should
    /// cutting them off fail as well, the next record starts with a
    /// newline, ending the fragment's line (readers skip it).
    fn append_to(&mut self, file: &File, record: &Record, sync: bool) -> Result<(), StoreError> {
        let mut line = Vec::with_capacity(256);
        // Where the record goes when an earlier fragment could not be cut
        // off: after it, on a line of its own.
        let after_fragment = if self.torn && !self.cut_back(file) {
            line.push(b'\n');
            Some(file.metadata().map_err(io_error(&self.path))?.len())
        } else {
            None
        };
        serde_json::to_writer(&mut line, record).map_err(|e| StoreError::Io {
            path: self.path.clone(),
            source: io::Error::other(e),
        })?;
        line.push(b'\n');
        // One write per record: appends from this process never interleave.
        let written = self
            .write(file, &line)
            .and_then(|()| if sync { file.sync_data() } else { Ok(()) });
        if let Err(err) = written {
            self.torn = true;
            self.cut_back(file);
            return Err(io_error(&self.path)(err));
        }
        self.len = after_fragment.unwrap_or(self.len) + line.len() as u64;
        self.torn = false;
        Ok(())
    }

    /// Cuts the file back to its whole records after a failed append.
    /// Returns whether it is whole again.
    fn cut_back(&mut self, file: &File) -> bool {
        match self.truncate(file, self.len) {
            Ok(()) => {
                self.torn = false;
                true
            }
            Err(err) => {
                tracing::warn!(
                    file = %self.path.display(),
                    %err,
                    "could not remove what a failed write left; the next record starts a line of its own"
                );
                false
            }
        }
    }

    fn write(&mut self, mut file: &File, bytes: &[u8]) -> io::Result<()> {
        #[cfg(test)]
        if let Some(fault) = &mut self.fault {
            let fits = usize::try_from(fault.space)
                .unwrap_or(usize::MAX)
                .min(bytes.len());
            file.write_all(&bytes[..fits])?;
            fault.space -= fits as u64;
            if fits < bytes.len() {
                return Err(io::Error::new(
                    io::ErrorKind::StorageFull,
                    "No space left on device (injected)",
                ));
            }
            return Ok(());
        }
        file.write_all(bytes)
    }

    fn truncate(&self, file: &File, len: u64) -> io::Result<()> {
        #[cfg(test)]
        if self.fault.is_some_and(|f| f.truncate_fails) {
            return Err(io::Error::new(
                io::ErrorKind::StorageFull,
                "No space left on device (injected)",
            ));
        }
        file.set_len(len)
    }

    /// Makes later writes fail as `fault` says (`None`: the disk has room
    /// again).
    #[cfg(test)]
    pub(crate) fn inject_fault(&mut self, fault: Option<Fault>) {
        self.fault = fault;
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Which file `metadata` describes: its device and inode.
fn identity(metadata: &Metadata) -> (u64, u64) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt as _;
        (metadata.dev(), metadata.ino())
    }
    #[cfg(not(unix))]
    {
        let _ = metadata;
        (0, 0)
    }
}

impl ThreadStore {
    /// The store in `dir`, created if missing.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let dir = dir.into();
        owner_only::create_dir_all(&dir).map_err(io_error(&dir))?;
        let writers = Writers::open(&dir).map_err(io_error(&dir.join(LOCK_FILE_NAME)))?;
        Ok(Self {
            dir,
            writers: Arc::new(writers),
            #[cfg(test)]
            fault: None,
        })
    }

    /// The files this store creates fail to be written as `fault` says.
    #[cfg(test)]
    pub(crate) fn with_fault(mut self, fault: Fault) -> Self {
        self.fault = Some(fault);
        self
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path_of(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.{THREAD_FILE_EXTENSION}"))
    }

    /// True when `id` names a stored thread.
    pub fn contains(&self, id: &str) -> bool {
        is_thread_id(id) && self.path_of(id).is_file()
    }

    /// Creates a thread's file with its header and `turns` (for a fork),
    /// synced, and holds the thread for writing. When it cannot be written
    /// whole (a full disk), no file is left behind.
    pub fn create(
        &self,
        header: &Record,
        id: &str,
        turns: &[TurnRecord],
    ) -> Result<ThreadFile, StoreError> {
        self.create_with(header, id, turns, &[])
    }

    /// [`create`](Self::create), writing `trailing` records (such as a
    /// fork's name) after the turns.
    pub fn create_with(
        &self,
        header: &Record,
        id: &str,
        turns: &[TurnRecord],
        trailing: &[Record],
    ) -> Result<ThreadFile, StoreError> {
        let path = self.path_of(id);
        let file = owner_only::open_options()
            .create_new(true)
            .append(true)
            .open(&path)
            .map_err(io_error(&path))?;
        let written = self.write_new(&file, &path, header, id, turns, trailing);
        drop(file);
        if written.is_err() {
            // Still holding the lock when it was taken: nobody else has
            // seen the file.
            if let Err(remove) = fs::remove_file(&path) {
                tracing::warn!(
                    file = %path.display(),
                    err = %remove,
                    "could not remove a thread file that failed to be written"
                );
            }
        }
        written
    }

    /// Holds a new thread and writes its first records to `file`.
    fn write_new(
        &self,
        file: &File,
        path: &Path,
        header: &Record,
        id: &str,
        turns: &[TurnRecord],
        trailing: &[Record],
    ) -> Result<ThreadFile, StoreError> {
        owner_only::restrict(file).map_err(io_error(path))?;
        let lock = self.lock(id, file)?;
        let mut thread_file = ThreadFile::new(path.to_owned(), lock, file, 0)?;
        #[cfg(test)]
        {
            thread_file.fault = self.fault;
        }
        thread_file.append_to(file, header, false)?;
        for turn in turns {
            for record in turn_records(turn) {
                thread_file.append_to(file, &record, false)?;
            }
        }
        for record in trailing {
            thread_file.append_to(file, record, false)?;
        }
        file.sync_all().map_err(io_error(path))?;
        Ok(thread_file)
    }

    /// Holds thread `id`, whose file is open as `file`, for writing.
    fn lock(&self, id: &str, file: &File) -> Result<WriterLock, StoreError> {
        match self.writers.acquire(id, file) {
            Ok(lock) => Ok(lock),
            Err(TryLockError::WouldBlock) => Err(StoreError::Busy(id.to_owned())),
            Err(TryLockError::Error(e)) => Err(io_error(self.writers.path())(e)),
        }
    }

    /// Opens a stored thread for writing: takes its lock (refusing when
    /// another process holds it), loads it, and records turns left
    /// unfinished by a dead writer as interrupted. The file is closed again
    /// before this returns; the lock stays with the [`ThreadFile`].
    pub fn open_for_write(&self, id: &str) -> Result<(ThreadFile, StoredThread), StoreError> {
        if !is_thread_id(id) {
            return Err(StoreError::NotFound(id.to_owned()));
        }
        let path = self.path_of(id);
        let file = match OpenOptions::new().append(true).open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StoreError::NotFound(id.to_owned()));
            }
            Err(e) => return Err(io_error(&path)(e)),
        };
        let lock = self.lock(id, &file)?;
        let len = cut_torn_tail(&file, &path)?;
        // We hold the lock, so any unfinished turn's writer is gone: read
        // the turns as they are, then record those interruptions.
        let mut thread = read_thread(&path, true)?;
        let mut thread_file = ThreadFile::new(path, lock, &file, len)?;
        let now = unix_now();
        for turn in thread
            .turns
            .iter_mut()
            .filter(|t| t.status == TurnStatus::InProgress)
        {
            turn.status = TurnStatus::Interrupted;
            thread_file.append_to(
                &file,
                &Record::TurnCompleted {
                    turn_id: turn.id.clone(),
                    status: TurnStatus::Interrupted,
                    output: String::new(),
                    error: None,
                    usage: TokenUsage::default(),
                    items: Vec::new(),
                    at: now,
                },
                true,
            )?;
        }
        Ok((thread_file, thread))
    }

    /// Appends `record` to a stored thread this process does not have
    /// loaded: takes the thread's lock for the write (refusing with
    /// [`StoreError::Busy`] while another process writes it), syncs, and
    /// releases it. Returns the thread as it is afterwards.
    pub fn append_unloaded(&self, id: &str, record: &Record) -> Result<StoredThread, StoreError> {
        let (mut file, _) = self.open_for_write(id)?;
        file.append(record, true)?;
        // Read back through the same code path as every other reader, so
        // the result reflects the record just written.
        read_thread(&file.path, true)
    }

    /// Reads a stored thread without taking its lock.
    pub fn load(&self, id: &str) -> Result<StoredThread, StoreError> {
        if !is_thread_id(id) {
            return Err(StoreError::NotFound(id.to_owned()));
        }
        let path = self.path_of(id);
        if !path.is_file() {
            return Err(StoreError::NotFound(id.to_owned()));
        }
        let writer_alive = self
            .writers
            .is_held(id, &path)
            .map_err(io_error(self.writers.path()))?;
        read_thread(&path, writer_alive)
    }

    /// The ids of all stored threads, newest first. Files that are not
    /// thread files (by name) are skipped with a warning.
    pub fn list_ids(&self) -> Result<Vec<String>, StoreError> {
        let mut ids = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(io_error(&self.dir))? {
            let Ok(entry) = entry else { continue };
            let path = entry.path();
            if entry.file_name() == LOCK_FILE_NAME {
                continue;
            }
            let stem = path
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or_default();
            let is_jsonl = path.extension().is_some_and(|e| e == THREAD_FILE_EXTENSION);
            if is_jsonl && is_thread_id(stem) {
                ids.push(stem.to_owned());
            } else {
                tracing::warn!(file = %path.display(), "skipping a file that is not a thread file");
            }
        }
        ids.sort_unstable_by(|a, b| b.cmp(a));
        Ok(ids)
    }
}

/// Removes a torn last line (bytes after the last newline), left by a
/// writer that died mid-append, so the next record starts on a line of its
/// own instead of being glued to the fragment. The fragment was never a
/// complete record. Only called while holding the file's lock. Returns the
/// file's length afterwards.
fn cut_torn_tail(file: &File, path: &Path) -> Result<u64, StoreError> {
    let bytes = fs::read(path).map_err(io_error(path))?;
    if bytes.is_empty() || bytes.last() == Some(&b'\n') {
        return Ok(bytes.len() as u64);
    }
    let keep = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    tracing::warn!(
        file = %path.display(),
        dropped_bytes = bytes.len() - keep,
        "removing a torn last line left by an interrupted write"
    );
    file.set_len(keep as u64).map_err(io_error(path))?;
    file.sync_all().map_err(io_error(path))?;
    Ok(keep as u64)
}

/// Thread ids are UUIDs; anything else in the directory is foreign.
fn is_thread_id(id: &str) -> bool {
    uuid::Uuid::parse_str(id).is_ok() && id.len() == 36
}

/// The records that store a finished turn.
fn turn_records(turn: &TurnRecord) -> [Record; 2] {
    [
        Record::TurnStarted {
            turn_id: turn.id.clone(),
            kind: turn.kind,
            input: turn.input.clone(),
            trace_id: turn.trace_id.clone(),
            span_id: turn.span_id.clone(),
            at: unix_now(),
        },
        Record::TurnCompleted {
            turn_id: turn.id.clone(),
            status: turn.status,
            output: turn.output.clone(),
            error: turn.error.clone(),
            usage: turn.usage,
            items: turn.items.clone(),
            at: unix_now(),
        },
    ]
}

/// The record at the end of `line` when a writer appended it to the
/// fragment an earlier failed write left (as versions that did not cut such
/// fragments off did): the rest of the line from the first `{"type":` past
/// its start that reads as a whole record.
fn glued_record(line: &[u8]) -> Option<Record> {
    const RECORD_START: &[u8] = b"{\"type\":";
    (1..line.len())
        .filter(|&at| line[at..].starts_with(RECORD_START))
        .find_map(|at| serde_json::from_slice(&line[at..]).ok())
}

/// Reads a thread file. Unreadable lines are skipped with a warning; a
/// torn last line (no newline yet) is expected while a writer appends.
fn read_thread(path: &Path, writer_alive: bool) -> Result<StoredThread, StoreError> {
    let file = File::open(path).map_err(io_error(path))?;
    let mut reader = BufReader::new(file);
    let mut thread: Option<StoredThread> = None;
    let mut line = Vec::new();
    let mut number = 0usize;
    loop {
        line.clear();
        let read = reader
            .read_until(b'\n', &mut line)
            .map_err(io_error(path))?;
        if read == 0 {
            break;
        }
        number += 1;
        let complete = line.last() == Some(&b'\n');
        let record = match serde_json::from_slice::<Record>(&line) {
            Ok(record) => record,
            Err(err) if !complete => {
                tracing::warn!(file = %path.display(), line = number, %err, "ignoring a torn last line");
                break;
            }
            Err(err) => match glued_record(&line) {
                Some(record) => {
                    tracing::warn!(
                        file = %path.display(),
                        line = number,
                        "reading a record written onto the fragment of an earlier failed write"
                    );
                    record
                }
                None => {
                    tracing::warn!(file = %path.display(), line = number, %err, "skipping an unreadable line");
                    continue;
                }
            },
        };
        match (record, thread.as_mut()) {
            (
                Record::Thread {
                    id,
                    model,
                    created_at,
                    forked_from,
                    model_provider,
                },
                None,
            ) => {
                thread = Some(StoredThread {
                    id,
                    model,
                    model_provider,
                    created_at,
                    updated_at: created_at,
                    forked_from,
                    name: None,
                    archived: false,
                    turns: Vec::new(),
                });
            }
            (_, None) => {
                return Err(StoreError::Corrupt {
                    path: path.to_owned(),
                    reason: "the first record is not a `thread` record".into(),
                });
            }
            (Record::Thread { .. }, Some(_)) => {
                tracing::warn!(file = %path.display(), line = number, "skipping a second `thread` record");
            }
            (
                Record::ModelChanged {
                    model,
                    model_provider,
                    at,
                },
                Some(thread),
            ) => {
                thread.updated_at = thread.updated_at.max(at);
                thread.model = model;
                thread.model_provider = Some(model_provider);
            }
            (
                Record::TurnStarted {
                    turn_id,
                    kind,
                    input,
                    trace_id,
                    span_id,
                    at,
                },
                Some(thread),
            ) => {
                thread.updated_at = thread.updated_at.max(at);
                thread.turns.push(TurnRecord {
                    id: turn_id,
                    kind,
                    status: TurnStatus::InProgress,
                    input,
                    output: String::new(),
                    error: None,
                    usage: TokenUsage::default(),
                    trace_id,
                    span_id,
                    items: Vec::new(),
                });
            }
            (
                Record::TurnCompleted {
                    turn_id,
                    status,
                    output,
                    error,
                    usage,
                    items,
                    at,
                },
                Some(thread),
            ) => {
                thread.updated_at = thread.updated_at.max(at);
                match thread.turns.iter_mut().rev().find(|t| t.id == turn_id) {
                    Some(turn) => {
                        turn.status = status;
                        // An interruption recorded on recovery keeps the
                        // output recorded before it, if any.
                        if !output.is_empty() || turn.output.is_empty() {
                            turn.output = output;
                        }
                        turn.error = error;
                        turn.usage = usage;
                        if !items.is_empty() {
                            turn.items = items;
                        }
                    }
                    None => tracing::warn!(
                        file = %path.display(),
                        line = number,
                        %turn_id,
                        "skipping the completion of an unknown turn"
                    ),
                }
            }
            (Record::ThreadNamed { name, at }, Some(thread)) => {
                thread.updated_at = thread.updated_at.max(at);
                thread.name = Some(name);
            }
            (Record::ThreadArchived { archived, at }, Some(thread)) => {
                thread.updated_at = thread.updated_at.max(at);
                thread.archived = archived;
            }
        }
    }
    let mut thread = thread.ok_or_else(|| StoreError::Corrupt {
        path: path.to_owned(),
        reason: "empty file".into(),
    })?;
    if !writer_alive {
        for turn in thread
            .turns
            .iter_mut()
            .filter(|t| t.status == TurnStatus::InProgress)
        {
            turn.status = TurnStatus::Interrupted;
        }
    }
    Ok(thread)
}

impl StoreError {
    /// The error as a client may be told it: files named without their
    /// directories, so that no absolute server path leaves the server (the
    /// `Display` form, with the full path, is for the server's log).
    pub fn client_text(&self) -> String {
        /// The last component of `path`.
        fn name(path: &Path) -> std::borrow::Cow<'_, str> {
            path.file_name()
                .map_or(std::borrow::Cow::Borrowed("the thread store"), |name| {
                    name.to_string_lossy()
                })
        }
        match self {
            StoreError::NotFound(_) | StoreError::Busy(_) => self.to_string(),
            // Each of these displays as "{path}: ...": the same message
            // with the file's name in place of its path.
            StoreError::Changed { path, .. }
            | StoreError::Corrupt { path, .. }
            | StoreError::Io { path, .. } => {
                self.to_string()
                    .replacen(&path.display().to_string(), &name(path), 1)
            }
        }
    }
}

/// A store failure reaches clients without the store's path; the full
/// error is logged here.
impl From<StoreError> for ThreadError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::NotFound(id) => ThreadError::NotFound(id),
            StoreError::Busy(_) => ThreadError::Busy(err.to_string()),
            other => {
                tracing::warn!(error = %other, "thread store operation failed");
                ThreadError::Store(other.client_text())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_errors_reach_clients_without_directories() {
        let io = StoreError::Io {
            path: PathBuf::from("/home/someone/.skein/threads/t1.jsonl"),
            source: io::Error::from_raw_os_error(28),
        };
        let ThreadError::Store(text) = ThreadError::from(io) else {
            panic!("an I/O error is a store error");
        };
        assert!(!text.contains("/home"), "{text}");
        assert!(text.starts_with("t1.jsonl: "), "{text}");
        assert_eq!(text.matches("os error 28").count(), 1, "{text}");
        let changed = StoreError::Changed {
            path: PathBuf::from("/home/someone/.skein/threads/t1.jsonl"),
            what: "it was replaced".into(),
        };
        let text = changed.client_text();
        assert!(!text.contains("/home"), "{text}");
        assert!(text.starts_with("t1.jsonl: changed outside"), "{text}");
        let corrupt = StoreError::Corrupt {
            path: PathBuf::from("/srv/skein/threads/t2.jsonl"),
            reason: "no thread record".into(),
        };
        assert_eq!(
            corrupt.client_text(),
            "t2.jsonl: not a thread file: no thread record"
        );
        assert!(corrupt.to_string().contains("/srv/skein/threads"));
    }

    fn header(id: &str) -> Record {
        Record::Thread {
            id: id.into(),
            model: "echo".into(),
            created_at: 10,
            forked_from: None,
            model_provider: None,
        }
    }

    fn new_id() -> String {
        uuid::Uuid::now_v7().to_string()
    }

    fn started(turn_id: &str) -> Record {
        Record::TurnStarted {
            turn_id: turn_id.into(),
            kind: TurnKind::Regular,
            input: "hi".into(),
            trace_id: Some("0af7651916cd43dd8448eb211c80319c".into()),
            span_id: Some("b7ad6b7169203331".into()),
            at: 11,
        }
    }

    fn completed(turn_id: &str) -> Record {
        Record::TurnCompleted {
            turn_id: turn_id.into(),
            status: TurnStatus::Completed,
            output: "hi".into(),
            error: None,
            usage: TokenUsage::default(),
            items: Vec::new(),
            at: 12,
        }
    }

    #[test]
    fn records_round_trip_through_a_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = ThreadStore::open(dir.path()).expect("store");
        let id = new_id();
        let mut file = store.create(&header(&id), &id, &[]).expect("create");
        file.append(&started("t1"), false).expect("append");
        file.append(&completed("t1"), true).expect("append");
        drop(file);
        let thread = store.load(&id).expect("load");
        assert_eq!(thread.turns.len(), 1);
        assert_eq!(thread.turns[0].status, TurnStatus::Completed);
        assert_eq!(thread.turns[0].span_id.as_deref(), Some("b7ad6b7169203331"));
        assert_eq!(thread.updated_at, 12);
        let text = fs::read_to_string(dir.path().join(format!("{id}.jsonl"))).expect("read");
        assert!(text.starts_with(r#"{"type":"thread","id":""#), "{text}");
    }

    #[test]
    fn a_second_writer_is_refused_while_the_first_holds_the_thread() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = ThreadStore::open(dir.path()).expect("store");
        let id = new_id();
        let first = store.create(&header(&id), &id, &[]).expect("create");
        assert!(matches!(
            store.open_for_write(&id),
            Err(StoreError::Busy(_))
        ));
        drop(first);
        store
            .open_for_write(&id)
            .expect("free once the first is gone");
    }

    #[test]
    fn unfinished_turn_is_in_progress_while_its_writer_lives_and_interrupted_after() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = ThreadStore::open(dir.path()).expect("store");
        let id = new_id();
        let mut file = store.create(&header(&id), &id, &[]).expect("create");
        file.append(&started("t1"), false).expect("append");
        assert_eq!(
            store.load(&id).expect("load").turns[0].status,
            TurnStatus::InProgress
        );
        drop(file);
        assert_eq!(
            store.load(&id).expect("load").turns[0].status,
            TurnStatus::Interrupted
        );
        let (_file, thread) = store.open_for_write(&id).expect("reopen");
        assert_eq!(thread.turns[0].status, TurnStatus::Interrupted);
        let text = fs::read_to_string(dir.path().join(format!("{id}.jsonl"))).expect("read");
        assert!(
            text.contains(r#""status":"interrupted""#),
            "recovery is recorded: {text}"
        );
    }

    #[test]
    fn name_and_archive_records_apply_last_one_wins_and_refuse_a_busy_thread() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = ThreadStore::open(dir.path()).expect("store");
        let id = new_id();
        let file = store.create(&header(&id), &id, &[]).expect("create");
        let archive = |archived| Record::ThreadArchived { archived, at: 20 };
        // Another writer holds the thread: the metadata change is refused.
        assert!(matches!(
            store.append_unloaded(&id, &archive(true)),
            Err(StoreError::Busy(_))
        ));
        drop(file);
        let thread = store.append_unloaded(&id, &archive(true)).expect("archive");
        assert!(thread.archived);
        let named = Record::ThreadNamed {
            name: "first".into(),
            at: 21,
        };
        store.append_unloaded(&id, &named).expect("name");
        let renamed = Record::ThreadNamed {
            name: "second".into(),
            at: 22,
        };
        store.append_unloaded(&id, &renamed).expect("rename");
        store
            .append_unloaded(&id, &archive(false))
            .expect("unarchive");
        let thread = store.load(&id).expect("load");
        assert_eq!(thread.name.as_deref(), Some("second"));
        assert!(!thread.archived);
        assert_eq!(thread.updated_at, 22);
    }

    #[test]
    fn torn_last_line_and_corrupt_lines_are_tolerated() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = ThreadStore::open(dir.path()).expect("store");
        let id = new_id();
        let mut text = serde_json::to_string(&header(&id)).expect("json");
        text.push('\n');
        text.push_str("this is not json\n");
        text.push_str(&serde_json::to_string(&started("t1")).expect("json"));
        text.push('\n');
        text.push_str(&serde_json::to_string(&completed("t1")).expect("json"));
        text.push('\n');
        text.push_str(r#"{"type":"turnStarted","turnId":"t2","ki"#);
        fs::write(dir.path().join(format!("{id}.jsonl")), text).expect("write");
        let thread = store.load(&id).expect("load");
        assert_eq!(thread.turns.len(), 1);
        assert_eq!(thread.turns[0].status, TurnStatus::Completed);
    }

    #[test]
    fn appending_after_a_torn_last_line_starts_a_fresh_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = ThreadStore::open(dir.path()).expect("store");
        let id = new_id();
        let mut file = store.create(&header(&id), &id, &[]).expect("create");
        file.append(&started("t1"), false).expect("append");
        file.append(&completed("t1"), true).expect("append");
        drop(file);
        let path = dir.path().join(format!("{id}.jsonl"));
        let mut torn = fs::read(&path).expect("read");
        torn.extend_from_slice(br#"{"type":"turnStarted","turnId":"t2","ki"#);
        fs::write(&path, torn).expect("tear");

        let (mut file, thread) = store.open_for_write(&id).expect("reopen");
        assert_eq!(thread.turns.len(), 1);
        file.append(&started("t3"), false).expect("append");
        file.append(&completed("t3"), true).expect("append");
        drop(file);
        let thread = store.load(&id).expect("load");
        let ids: Vec<&str> = thread.turns.iter().map(|t| t.id.as_str()).collect();
        assert_eq!(ids, vec!["t1", "t3"]);
        assert_eq!(thread.turns[1].status, TurnStatus::Completed);
    }

    fn lines_of(dir: &Path, id: &str) -> Vec<String> {
        let text = fs::read_to_string(dir.join(format!("{id}.jsonl"))).expect("read");
        assert!(text.ends_with('\n'), "{text:?}");
        text.lines().map(str::to_owned).collect()
    }

    fn turn_ids(thread: &StoredThread) -> Vec<&str> {
        thread.turns.iter().map(|t| t.id.as_str()).collect()
    }

    #[test]
    fn a_record_appended_after_a_disk_full_failure_is_read_back_whole() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = ThreadStore::open(dir.path()).expect("store");
        let id = new_id();
        let mut file = store.create(&header(&id), &id, &[]).expect("create");
        file.append(&started("t1"), false).expect("append");
        file.append(&completed("t1"), true).expect("append");
        // The disk fills up in the middle of the next record.
        file.inject_fault(Some(Fault {
            space: 20,
            truncate_fails: false,
        }));
        assert!(file.append(&started("t2"), false).is_err());
        assert!(file.append(&completed("t2"), true).is_err());
        // Room again: the next turn is written and reported complete.
        file.inject_fault(None);
        file.append(&started("t3"), false).expect("append");
        file.append(&completed("t3"), true).expect("append");
        drop(file);

        let thread = store.load(&id).expect("load");
        assert_eq!(turn_ids(&thread), ["t1", "t3"]);
        assert_eq!(thread.turns[1].status, TurnStatus::Completed);
        for line in lines_of(dir.path(), &id) {
            serde_json::from_str::<Record>(&line)
                .unwrap_or_else(|e| panic!("a torn record was left ({e}): {line}"));
        }
    }

    #[test]
    fn when_a_fragment_cannot_be_cut_off_the_next_record_starts_a_line_of_its_own() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = ThreadStore::open(dir.path()).expect("store");
        let id = new_id();
        let mut file = store.create(&header(&id), &id, &[]).expect("create");
        file.inject_fault(Some(Fault {
            space: 20,
            truncate_fails: true,
        }));
        assert!(file.append(&started("t1"), false).is_err());
        file.inject_fault(Some(Fault {
            space: u64::MAX,
            truncate_fails: true,
        }));
        file.append(&started("t2"), false).expect("append");
        file.append(&completed("t2"), true).expect("append");
        drop(file);

        let thread = store.load(&id).expect("load");
        assert_eq!(turn_ids(&thread), ["t2"]);
        assert_eq!(thread.turns[0].status, TurnStatus::Completed);
        let lines = lines_of(dir.path(), &id);
        assert_eq!(
            lines.len(),
            4,
            "header, fragment, t2's two records: {lines:?}"
        );
        let t1 = serde_json::to_string(&started("t1")).expect("json");
        assert_eq!(lines[1], t1[..20], "the fragment, on a line of its own");
    }

    #[test]
    fn a_record_glued_onto_a_fragment_by_an_older_writer_is_read_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = ThreadStore::open(dir.path()).expect("store");
        let id = new_id();
        let json = |record: &Record| serde_json::to_string(record).expect("json");
        let fragment = &json(&completed("t1"))[..30];
        let text = format!(
            "{}\n{}\n{fragment}{}\n{}\n",
            json(&header(&id)),
            json(&started("t1")),
            json(&started("t2")),
            json(&completed("t2")),
        );
        fs::write(dir.path().join(format!("{id}.jsonl")), text).expect("write");
        let thread = store.load(&id).expect("load");
        assert_eq!(turn_ids(&thread), ["t1", "t2"]);
        assert_eq!(thread.turns[1].status, TurnStatus::Completed);
    }

    #[test]
    fn a_thread_file_that_cannot_be_written_at_creation_is_removed() {
        let dir = tempfile::tempdir().expect("tempdir");
        for space in [0, 20] {
            let store = ThreadStore::open(dir.path())
                .expect("store")
                .with_fault(Fault {
                    space,
                    truncate_fails: false,
                });
            let id = new_id();
            assert!(store.create(&header(&id), &id, &[]).is_err());
            assert!(!store.contains(&id), "{space} bytes of room left a file");
        }
        let left: Vec<_> = fs::read_dir(dir.path())
            .expect("dir")
            .map(|e| e.expect("entry").file_name())
            .filter(|name| name != LOCK_FILE_NAME)
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }

    /// How many of this process's descriptors are open on `path`.
    #[cfg(target_os = "linux")]
    fn descriptors_on(path: &Path) -> usize {
        fs::read_dir("/proc/self/fd")
            .expect("/proc/self/fd")
            .filter_map(|e| fs::read_link(e.ok()?.path()).ok())
            .filter(|target| target == path)
            .count()
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_held_thread_keeps_no_descriptor_between_appends() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = ThreadStore::open(dir.path()).expect("store");
        let created = new_id();
        let mut created_file = store
            .create(&header(&created), &created, &[])
            .expect("create");
        created_file.append(&started("t1"), false).expect("append");
        created_file.append(&completed("t1"), true).expect("append");
        let reopened = new_id();
        drop(
            store
                .create(&header(&reopened), &reopened, &[])
                .expect("create"),
        );
        let (mut reopened_file, _) = store.open_for_write(&reopened).expect("open");
        reopened_file.append(&started("t2"), false).expect("append");

        for file in [&created_file, &reopened_file] {
            let path = fs::canonicalize(file.path()).expect("canonical path");
            assert_eq!(descriptors_on(&path), 0, "{} is held open", path.display());
        }
        // Still held: no other writer gets in, and readers see t2 running.
        assert!(matches!(
            store.open_for_write(&created),
            Err(StoreError::Busy(_))
        ));
        assert!(matches!(
            ThreadStore::open(dir.path())
                .expect("store")
                .open_for_write(&reopened),
            Err(StoreError::Busy(_))
        ));
        assert_eq!(
            store.load(&reopened).expect("load").turns[0].status,
            TurnStatus::InProgress
        );
    }

    #[test]
    fn an_append_writes_nothing_to_a_file_changed_behind_its_writer() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = ThreadStore::open(dir.path()).expect("store");
        let id = new_id();
        let path = dir.path().join(format!("{id}.jsonl"));
        let mut file = store.create(&header(&id), &id, &[]).expect("create");
        file.append(&started("t1"), false).expect("append");

        // Someone else appended to it.
        let written = fs::read(&path).expect("read");
        let foreign = serde_json::to_vec(&completed("t1")).expect("json");
        fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .and_then(|mut f| f.write_all(&[foreign.as_slice(), b"\n"].concat()))
            .expect("append behind the writer's back");
        let err = file.append(&started("t2"), false).expect_err("refused");
        assert!(matches!(err, StoreError::Changed { .. }), "{err}");
        assert!(err.to_string().contains("bytes long"), "{err}");
        let text = [written.as_slice(), foreign.as_slice(), b"\n"].concat();
        assert_eq!(fs::read(&path).expect("read"), text, "nothing was written");

        // Someone replaced it by another file, even one holding just what
        // the writer wrote.
        let replacement = dir.path().join("replacement");
        fs::write(&replacement, &written).expect("write");
        fs::rename(&replacement, &path).expect("replace");
        let err = file.append(&started("t2"), false).expect_err("refused");
        assert!(err.to_string().contains("replaced"), "{err}");
        assert_eq!(
            fs::read(&path).expect("read"),
            written,
            "nothing was written"
        );

        // Someone removed it.
        fs::remove_file(&path).expect("remove");
        let err = file.append(&started("t2"), false).expect_err("refused");
        assert!(err.to_string().contains("removed"), "{err}");
        assert!(!path.exists(), "nothing was written");
        fs::write(&path, &text).expect("put it back");

        // Unloading and loading the thread again continues from what is
        // there now.
        drop(file);
        let (mut file, thread) = store.open_for_write(&id).expect("open");
        assert_eq!(turn_ids(&thread), ["t1"]);
        file.append(&started("t2"), false).expect("append");
    }

    #[test]
    fn foreign_and_garbage_files_are_skipped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = ThreadStore::open(dir.path()).expect("store");
        let id = new_id();
        drop(store.create(&header(&id), &id, &[]).expect("create"));
        fs::write(dir.path().join("notes.txt"), "hello").expect("write");
        let garbage = new_id();
        fs::write(
            dir.path().join(format!("{garbage}.jsonl")),
            "\u{0}\u{1}garbage\n",
        )
        .expect("write");
        let ids = store.list_ids().expect("list");
        assert!(ids.contains(&id));
        assert!(!ids.iter().any(|i| i == "notes"));
        assert!(matches!(
            store.load(&garbage),
            Err(StoreError::Corrupt { .. })
        ));
        assert!(store.load(&id).is_ok());
    }

    #[test]
    fn list_is_newest_first() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = ThreadStore::open(dir.path()).expect("store");
        let ids: Vec<String> = (0..3).map(|_| new_id()).collect();
        for id in &ids {
            drop(store.create(&header(id), id, &[]).expect("create"));
        }
        let listed = store.list_ids().expect("list");
        assert_eq!(listed, vec![ids[2].clone(), ids[1].clone(), ids[0].clone()]);
    }
}
