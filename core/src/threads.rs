//! Threads: the registry, each thread's handle and its submission loop.
//!
//! Every thread has one submission loop task reading a bounded queue of
//! [`Submission`]s. For each it opens a short-lived dispatch span parented
//! from `Submission.trace`; a turn-producing operation then starts a turn
//! (see [`crate::engine`]), whose span is a child of that dispatch span.
//! Events go out through the thread's [`crate::EventHub`] to whoever
//! subscribed.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use skein_otel::names::{attr, span};
use skein_protocol::{EventMsg, Op, Submission, ThreadStatus, TurnKind, TurnStatus, UserInput};
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::config::Config;
use crate::engine::RunningTurn;
use crate::events::EventReceiver;
use crate::records::{
    ModelInfo, StartedTurn, ThreadError, ThreadInfo, ThreadPage, TurnRecord, unix_now,
};
use crate::runtime::Runtime;
use crate::store::{ForkOrigin, Record, StoredThread, ThreadFile, ThreadStore};
use crate::thread::ThreadEntry;

/// Capacity of a thread's submission queue.
pub const SUBMISSION_QUEUE: usize = 64;
/// Default page size of [`ThreadManager::list`].
pub const DEFAULT_PAGE_SIZE: usize = 50;
/// Largest page size of [`ThreadManager::list`].
pub const MAX_PAGE_SIZE: usize = 500;

/// Runtime settings.
#[derive(Clone, Debug, Default)]
pub struct CoreConfig {
    /// Delay of the echo model between words.
    pub echo_delay: Duration,
    /// Where thread history is kept; `None` keeps it in memory only.
    pub store: Option<ThreadStore>,
    /// Models, providers, MCP servers and content recording.
    pub config: Arc<Config>,
    /// Most turns running at once across all threads; `None`: no limit.
    pub max_running_turns: Option<usize>,
    /// Most threads loaded at once; past it, stored threads that nobody
    /// follows and no turn runs are unloaded. `None`: no limit.
    pub max_loaded_threads: Option<usize>,
}

/// A handle to one thread's submission loop.
#[derive(Clone)]
pub struct ThreadHandle {
    entry: Arc<ThreadEntry>,
}

impl std::fmt::Debug for ThreadHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ThreadHandle")
            .field("id", &self.entry.id)
            .finish()
    }
}

impl ThreadHandle {
    /// The thread's id.
    pub fn id(&self) -> &str {
        &self.entry.id
    }

    /// Submits `op`, carrying the current span's context in
    /// `Submission.trace` so that core's spans continue the caller's trace.
    pub async fn submit(&self, op: Op) -> Result<String, ThreadError> {
        let submission = Submission {
            id: uuid::Uuid::now_v7().to_string(),
            op,
            trace: skein_otel::current_submission_trace(),
        };
        let id = submission.id.clone();
        self.entry
            .submissions
            .send(submission)
            .await
            .map_err(|_| ThreadError::ShuttingDown)?;
        Ok(id)
    }

    /// Subscribes to the thread's events.
    pub fn subscribe(&self) -> EventReceiver {
        self.entry.events.subscribe()
    }

    /// Says that whoever took this handle from [`ThreadManager::load`]
    /// follows the thread already (instead of subscribing): it need not be
    /// spared from unloading for a subscriber still to come.
    pub fn already_followed(&self) {
        self.entry.followed();
    }
}

/// A change to a thread's metadata (its name, its archived flag).
#[derive(Clone, Debug)]
pub struct MetadataChange {
    /// The thread as it is after the change.
    pub info: ThreadInfo,
    /// The events the change sent to the thread's followers, in order.
    pub events: Vec<EventMsg>,
}

/// How long a thread a request took (loaded, or found loaded) is spared
/// from unloading until someone subscribes: the request that took it
/// subscribes right after.
const FIRST_SUBSCRIBER_GRACE: Duration = Duration::from_secs(30);

struct Registry {
    /// Threads loaded in this process (started, forked, resumed).
    threads: BTreeMap<String, ThreadHandle>,
    loops: Vec<JoinHandle<()>>,
    shutting_down: bool,
}

impl Registry {
    /// Whether `handle` is the registry's handle of thread `id` (not one
    /// unloaded since it was taken).
    fn holds(&self, id: &str, handle: &ThreadHandle) -> bool {
        self.threads
            .get(id)
            .is_some_and(|h| Arc::ptr_eq(&h.entry, &handle.entry))
    }
}

/// All threads of this server. Cheap to clone; clones share state.
#[derive(Clone)]
pub struct ThreadManager {
    registry: Arc<Mutex<Registry>>,
    runtime: Arc<Runtime>,
    store: Option<ThreadStore>,
    max_running_turns: Option<usize>,
    max_loaded_threads: Option<usize>,
    /// Notified when a thread may have become unloadable (a subscriber
    /// left, a turn ended); with a thread limit, a task then unloads the
    /// threads beyond it.
    released: Arc<Notify>,
    unloader_started: Arc<AtomicBool>,
}

impl std::fmt::Debug for ThreadManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ThreadManager").finish_non_exhaustive()
    }
}

impl ThreadManager {
    /// An empty registry.
    pub fn new(config: CoreConfig) -> Self {
        Self {
            registry: Arc::new(Mutex::new(Registry {
                threads: BTreeMap::new(),
                loops: Vec::new(),
                shutting_down: false,
            })),
            runtime: Arc::new(Runtime::new(config.config, config.echo_delay)),
            store: config.store,
            max_running_turns: config.max_running_turns,
            max_loaded_threads: config.max_loaded_threads,
            released: Arc::new(Notify::new()),
            unloader_started: Arc::new(AtomicBool::new(false)),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The handle of thread `id`, if it is loaded in this process.
    pub fn handle(&self, id: &str) -> Result<ThreadHandle, ThreadError> {
        self.lock()
            .threads
            .get(id)
            .cloned()
            .ok_or_else(|| ThreadError::NotFound(id.to_owned()))
    }

    /// The handle of thread `id`, loading it from the store for writing if
    /// this process has not loaded it yet. Fails with [`ThreadError::Busy`]
    /// while another process writes it. The caller is to follow the thread
    /// next ([`ThreadHandle::subscribe`], or
    /// [`ThreadHandle::already_followed`]): until it does, for a while, the
    /// thread is not unloaded.
    pub fn load(&self, id: &str) -> Result<ThreadHandle, ThreadError> {
        self.load_taking(id, true)
    }

    fn load_taking(&self, id: &str, take: bool) -> Result<ThreadHandle, ThreadError> {
        if let Ok(handle) = self.handle(id) {
            if take {
                handle.entry.take();
            }
            return Ok(handle);
        }
        let Some(store) = &self.store else {
            return Err(ThreadError::NotFound(id.to_owned()));
        };
        let (file, stored) = store.open_for_write(id)?;
        let (info, turns) = stored_to_info(&self.runtime, stored);
        // Two requests may race to load the same thread: the registry keeps
        // the first, and the loser's file (and lock) is dropped.
        self.insert(info, turns, Some(file))
    }

    /// Starts a thread with `model` (the default model when `None`). Must be
    /// called within a tokio runtime: it spawns the thread's loop.
    pub fn start_thread(
        &self,
        model: Option<&str>,
        ephemeral: bool,
    ) -> Result<ThreadInfo, ThreadError> {
        self.start_thread_with_provider(model, None, ephemeral)
    }

    /// The configuration the runtime runs with.
    pub fn config(&self) -> &Config {
        self.runtime.config()
    }

    /// The configured MCP servers and their state.
    pub fn mcp_statuses(&self) -> Vec<crate::mcp::McpServerStatus> {
        self.runtime.mcp().statuses()
    }

    /// The models `model/list` offers, with whether each is the default.
    pub fn models(&self) -> Vec<(ModelInfo, bool)> {
        self.runtime.models()
    }

    /// Starts a thread with `model` served by `provider`, each defaulting
    /// to the configuration's. Must be called within a tokio runtime.
    pub fn start_thread_with_provider(
        &self,
        model: Option<&str>,
        provider: Option<&str>,
        ephemeral: bool,
    ) -> Result<ThreadInfo, ThreadError> {
        let model = self.runtime.resolve(model, provider)?;
        let now = unix_now();
        let info = ThreadInfo {
            id: uuid::Uuid::now_v7().to_string(),
            model,
            preview: String::new(),
            created_at: now,
            updated_at: now,
            ephemeral,
            name: None,
            archived: false,
            forked_from_id: None,
        };
        let file = self.create_file(&info, None, &[])?;
        self.insert(info.clone(), Vec::new(), file)?;
        Ok(info)
    }

    fn create_file(
        &self,
        info: &ThreadInfo,
        forked_from: Option<ForkOrigin>,
        turns: &[TurnRecord],
    ) -> Result<Option<ThreadFile>, ThreadError> {
        let Some(store) = self.store.as_ref().filter(|_| !info.ephemeral) else {
            return Ok(None);
        };
        let header = Record::Thread {
            id: info.id.clone(),
            model: info.model.name.clone(),
            created_at: info.created_at,
            forked_from,
            model_provider: Some(info.model.provider.clone()),
        };
        // A fork starts with its source's name.
        let named: Vec<Record> = info
            .name
            .iter()
            .map(|name| Record::ThreadNamed {
                name: name.clone(),
                at: info.created_at,
            })
            .collect();
        Ok(Some(store.create_with(&header, &info.id, turns, &named)?))
    }

    /// Forks thread `id` into a new thread holding its history up to and
    /// including `up_to_turn` (all of it when `None`).
    pub fn fork_thread(
        &self,
        id: &str,
        up_to_turn: Option<&str>,
    ) -> Result<ThreadInfo, ThreadError> {
        let (mut info, turns) = self.read_with_turns(id)?;
        let mut turns: Vec<TurnRecord> = turns
            .into_iter()
            .filter(|t| t.status != TurnStatus::InProgress)
            .collect();
        if let Some(turn_id) = up_to_turn {
            let Some(pos) = turns.iter().position(|t| t.id == turn_id) else {
                return Err(ThreadError::TurnNotFound {
                    thread_id: id.to_owned(),
                    turn_id: turn_id.to_owned(),
                });
            };
            turns.truncate(pos + 1);
        }
        let now = unix_now();
        info.id = uuid::Uuid::now_v7().to_string();
        info.created_at = now;
        info.updated_at = now;
        // A fork is a new thread: it keeps its source's name (as Codex
        // does) and starts unarchived.
        info.archived = false;
        info.forked_from_id = Some(id.to_owned());
        let origin = ForkOrigin {
            thread_id: id.to_owned(),
            turn_id: turns.last().map(|t| t.id.clone()),
        };
        let file = self.create_file(&info, Some(origin), &turns)?;
        self.insert(info.clone(), turns, file)?;
        Ok(info)
    }

    /// A thread's metadata and turns, read once: from memory when loaded
    /// here, else from the store (without taking it over).
    pub fn read_with_turns(&self, id: &str) -> Result<(ThreadInfo, Vec<TurnRecord>), ThreadError> {
        if let Ok(handle) = self.handle(id) {
            let state = handle.entry.state();
            return Ok((state.info.clone(), state.turns.clone()));
        }
        match &self.store {
            Some(store) => Ok(stored_to_info(&self.runtime, store.load(id)?)),
            None => Err(ThreadError::NotFound(id.to_owned())),
        }
    }

    fn insert(
        &self,
        info: ThreadInfo,
        turns: Vec<TurnRecord>,
        file: Option<ThreadFile>,
    ) -> Result<ThreadHandle, ThreadError> {
        let on_release = self.max_loaded_threads.map(|_| Arc::clone(&self.released));
        let (entry, rx) = ThreadEntry::new(info, turns, file, SUBMISSION_QUEUE, on_release);
        let mut registry = self.lock();
        if registry.shutting_down {
            return Err(ThreadError::ShuttingDown);
        }
        if let Some(existing) = registry.threads.get(&entry.id) {
            return Ok(existing.clone());
        }
        let task = tokio::spawn(submission_loop(
            Arc::clone(&entry),
            rx,
            Arc::clone(&self.runtime),
        ));
        registry.loops.retain(|l| !l.is_finished());
        registry.loops.push(task);
        let handle = ThreadHandle { entry };
        registry
            .threads
            .insert(handle.entry.id.clone(), handle.clone());
        if let Some(max) = self.max_loaded_threads {
            unload_idle(&mut registry, max);
            if !self.unloader_started.swap(true, Ordering::AcqRel) {
                tokio::spawn(unload_when_released(
                    Arc::downgrade(&self.registry),
                    Arc::clone(&self.released),
                    max,
                ));
            }
        }
        Ok(handle)
    }

    /// Whether `handle` is the thread's handle in the registry (not one
    /// unloaded since it was taken).
    fn is_loaded(&self, handle: &ThreadHandle) -> bool {
        self.lock().holds(handle.id(), handle)
    }

    /// A thread's metadata (from the store when not loaded here).
    pub fn read(&self, id: &str) -> Result<ThreadInfo, ThreadError> {
        // A loaded thread's metadata without copying its turns.
        if let Ok(handle) = self.handle(id) {
            return Ok(handle.entry.state().info.clone());
        }
        self.read_with_turns(id).map(|(info, _)| info)
    }

    /// A thread's turns, oldest first (from the store when not loaded
    /// here).
    pub fn turns(&self, id: &str) -> Result<Vec<TurnRecord>, ThreadError> {
        self.read_with_turns(id).map(|(_, turns)| turns)
    }

    /// Threads newest first, `limit` at a time, after `cursor` (the last
    /// id of the previous page): the unarchived ones, or with `archived`
    /// only the archived ones.
    pub fn list(
        &self,
        cursor: Option<&str>,
        limit: Option<usize>,
        archived: bool,
    ) -> Result<ThreadPage, ThreadError> {
        let limit = limit.unwrap_or(DEFAULT_PAGE_SIZE).clamp(1, MAX_PAGE_SIZE);
        if let Some(c) = cursor
            && uuid::Uuid::parse_str(c).is_err()
        {
            return Err(ThreadError::InvalidCursor(c.to_owned()));
        }
        // Loaded threads and stored ones, which other processes sharing
        // the store may have written; ids are UUIDv7, so sorting them
        // sorts by creation time. Ephemeral threads are left out, as
        // Codex lists only threads it keeps on disk (the Codex TUI starts
        // ephemeral side threads, which `resume --last` must not pick).
        let mut ids: Vec<String> = self.lock().threads.keys().cloned().collect();
        if let Some(store) = &self.store {
            ids.extend(store.list_ids().map_err(ThreadError::from)?);
        }
        ids.sort_unstable_by(|a, b| b.cmp(a));
        ids.dedup();
        let mut page = Vec::with_capacity(limit + 1);
        for id in ids
            .iter()
            .filter(|id| cursor.is_none_or(|c| id.as_str() < c))
        {
            if page.len() > limit {
                break;
            }
            match self.read(id) {
                Ok(info) if info.archived == archived && !info.ephemeral => page.push(info),
                Ok(_) => {}
                // A corrupt or vanished file never hides the other threads.
                Err(err) => tracing::warn!(thread = %id, %err, "skipping an unreadable thread"),
            }
        }
        let next_cursor = if page.len() > limit {
            page.truncate(limit);
            page.last().map(|t| t.id.clone())
        } else {
            None
        };
        Ok(ThreadPage {
            threads: page,
            next_cursor,
        })
    }

    /// The ids of the threads loaded in this process, oldest first.
    pub fn loaded_ids(&self) -> Vec<String> {
        // UUIDv7 ids: the map's order is creation order.
        self.lock().threads.keys().cloned().collect()
    }

    /// Whether thread `id` is running a turn here, idle here, or not loaded
    /// in this process. Unknown ids are `NotLoaded` too: callers that need
    /// the thread to exist check that first.
    pub fn status(&self, id: &str) -> ThreadStatus {
        match self.handle(id) {
            Ok(handle) if handle.entry.state().active_turn.is_some() => ThreadStatus::Active,
            Ok(_) => ThreadStatus::Idle,
            Err(_) => ThreadStatus::NotLoaded,
        }
    }

    /// Names thread `id`, durably. Names are trimmed; an empty one is
    /// refused.
    pub async fn set_name(&self, id: &str, name: &str) -> Result<MetadataChange, ThreadError> {
        let name = name.trim();
        if name.is_empty() {
            return Err(ThreadError::EmptyName);
        }
        let record = Record::ThreadNamed {
            name: name.to_owned(),
            at: unix_now(),
        };
        let info = self
            .update(id, record, |info| info.name = Some(name.to_owned()))
            .await?;
        let events = vec![EventMsg::ThreadNameUpdated {
            name: info.name.clone(),
        }];
        Ok(self.emit_to_followers(info, events))
    }

    /// Archives (or unarchives) thread `id`, durably: an archived thread
    /// is left out of [`ThreadManager::list`] unless archived threads are
    /// asked for.
    pub async fn set_archived(
        &self,
        id: &str,
        archived: bool,
    ) -> Result<MetadataChange, ThreadError> {
        let record = Record::ThreadArchived {
            archived,
            at: unix_now(),
        };
        let info = self
            .update(id, record, |info| info.archived = archived)
            .await?;
        let events = if archived {
            // Skein keeps an archived thread loaded while it is followed:
            // its status is reported as it is, then the archiving.
            vec![
                EventMsg::ThreadStatusChanged {
                    status: self.status(id),
                },
                EventMsg::ThreadArchived,
            ]
        } else {
            vec![EventMsg::ThreadUnarchived]
        };
        Ok(self.emit_to_followers(info, events))
    }

    /// Sends `events` about thread `info` to every connection following
    /// it, when it is loaded here (an unloaded thread has no followers).
    fn emit_to_followers(&self, info: ThreadInfo, events: Vec<EventMsg>) -> MetadataChange {
        if let Ok(handle) = self.handle(&info.id) {
            for msg in &events {
                handle.entry.emit(msg.clone(), None);
            }
        }
        MetadataChange { info, events }
    }

    /// Records a metadata change: through the thread's own file when it is
    /// loaded here (synced before returning), else straight into the store.
    async fn update(
        &self,
        id: &str,
        record: Record,
        apply: impl FnOnce(&mut ThreadInfo),
    ) -> Result<ThreadInfo, ThreadError> {
        let mut record = record;
        if let Ok(handle) = self.handle(id) {
            let entry = Arc::clone(&handle.entry);
            let (written, unwritten) = tokio::task::spawn_blocking(move || {
                let written = entry.append_synced(&record);
                (written, record)
            })
            .await
            .map_err(|err| ThreadError::Store(err.to_string()))?;
            if written? {
                let mut state = handle.entry.state();
                apply(&mut state.info);
                state.info.updated_at = unix_now();
                return Ok(state.info.clone());
            }
            // Unloaded meanwhile: write through the store instead.
            record = unwritten;
        }
        let Some(store) = self.store.clone() else {
            return Err(ThreadError::NotFound(id.to_owned()));
        };
        let id = id.to_owned();
        let stored = tokio::task::spawn_blocking(move || store.append_unloaded(&id, &record))
            .await
            .map_err(|err| ThreadError::Store(err.to_string()))??;
        Ok(stored_to_info(&self.runtime, stored).0)
    }

    /// Starts a turn of `kind` on thread `id`. Fails at once if a turn is
    /// already running there. The submission carries the current span's
    /// context.
    pub async fn start_turn(
        &self,
        id: &str,
        kind: TurnKind,
        input: Vec<UserInput>,
    ) -> Result<StartedTurn, ThreadError> {
        self.start_turn_with_model(id, kind, input, None, None)
            .await
    }

    /// [`ThreadManager::start_turn`], switching the thread to `model` /
    /// `provider` first when either is given (for this turn and the
    /// following ones, as Codex does).
    pub async fn start_turn_with_model(
        &self,
        id: &str,
        kind: TurnKind,
        input: Vec<UserInput>,
        model: Option<&str>,
        provider: Option<&str>,
    ) -> Result<StartedTurn, ThreadError> {
        // The input as the turn keeps it, flattened once; review and
        // compaction turns take none.
        let input = match kind {
            TurnKind::Regular => input_text(&input),
            TurnKind::Review | TurnKind::Compact => String::new(),
        };
        if kind == TurnKind::Regular && input.trim().is_empty() {
            return Err(ThreadError::EmptyInput);
        }
        // A thread unloaded between its load and the claim below (nobody
        // followed it) is loaded again: the turn must go to the thread as
        // loaded now, or its history would be lost.
        let mut handle = self.load_taking(id, false)?;
        while !self.is_loaded(&handle) {
            handle = self.load_taking(id, false)?;
        }
        let switch_to = if model.is_some() || provider.is_some() {
            let current = handle.entry.state().info.model.clone();
            // A model alone keeps a remote thread on its provider; a
            // provider alone takes that provider's default model.
            let provider = provider.or(match model {
                Some(crate::config::ECHO_MODEL) => None,
                _ if current.is_echo() => None,
                _ => Some(current.provider.as_str()),
            });
            let model = model.or(Some(current.name.as_str()).filter(|_| provider.is_none()));
            let resolved = self.runtime.resolve(model, provider)?;
            (resolved != current).then_some(resolved)
        } else {
            None
        };
        let turn_id = uuid::Uuid::now_v7().to_string();
        {
            // Counting and claiming under the registry lock: two requests
            // cannot both take the last free slot.
            let registry = self.lock();
            if let Some(max) = self.max_running_turns {
                let running = registry
                    .threads
                    .values()
                    .filter(|t| t.entry.state().active_turn.is_some())
                    .count();
                if running >= max {
                    return Err(ThreadError::Overloaded { running });
                }
            }
            // Claimed under the registry lock, which unloading takes too:
            // a thread still loaded now stays loaded while its turn runs.
            if !registry.holds(id, &handle) {
                return Err(ThreadError::NotFound(id.to_owned()));
            }
            let mut state = handle.entry.state();
            if let Some(running) = &state.active_turn {
                return Err(ThreadError::TurnRunning {
                    thread_id: id.to_owned(),
                    turn_id: running.clone(),
                });
            }
            state.active_turn = Some(turn_id.clone());
            if let Some(model) = &switch_to {
                state.info.model = model.clone();
            }
        }
        if let Some(model) = switch_to {
            // A failed write is logged by `persist`; the turn that follows
            // records its own outcome, and fails if history cannot be written.
            let _ = handle
                .entry
                .persist(
                    Record::ModelChanged {
                        model: model.name,
                        model_provider: model.provider,
                        at: unix_now(),
                    },
                    false,
                )
                .await;
        }
        let op = Op::StartTurn {
            turn_id: turn_id.clone(),
            kind,
            input,
        };
        if let Err(err) = handle.submit(op).await {
            handle.entry.state().active_turn = None;
            return Err(err);
        }
        Ok(StartedTurn { turn_id })
    }

    /// Adds input to the running turn `turn_id` of thread `id`.
    pub async fn steer(
        &self,
        id: &str,
        turn_id: &str,
        input: Vec<UserInput>,
    ) -> Result<(), ThreadError> {
        let handle = self.running(id, turn_id)?;
        let input = input_text(&input);
        if input.trim().is_empty() {
            return Err(ThreadError::EmptyInput);
        }
        handle
            .submit(Op::Steer {
                turn_id: turn_id.to_owned(),
                input,
            })
            .await
            .map(drop)
    }

    /// Interrupts the running turn `turn_id` of thread `id`.
    pub async fn interrupt(&self, id: &str, turn_id: &str) -> Result<(), ThreadError> {
        let handle = self.running(id, turn_id)?;
        handle
            .submit(Op::Interrupt {
                turn_id: turn_id.to_owned(),
            })
            .await
            .map(drop)
    }

    fn running(&self, id: &str, turn_id: &str) -> Result<ThreadHandle, ThreadError> {
        let handle = self.handle(id)?;
        if handle.entry.state().active_turn.as_deref() != Some(turn_id) {
            return Err(ThreadError::TurnNotRunning {
                thread_id: id.to_owned(),
                turn_id: turn_id.to_owned(),
            });
        }
        Ok(handle)
    }

    /// Stops every thread: running turns end as interrupted (their
    /// `TurnCompleted` events go out), then each loop emits
    /// `ShutdownComplete` and exits. Returns when all loops have exited.
    pub async fn shutdown(&self) {
        let (handles, loops) = {
            let mut registry = self.lock();
            registry.shutting_down = true;
            // The unloading task sees it and stops.
            self.released.notify_one();
            let handles: Vec<ThreadHandle> = registry.threads.values().cloned().collect();
            (handles, std::mem::take(&mut registry.loops))
        };
        // One trace for the whole shutdown, with each thread's shutdown
        // dispatch (and any turn it interrupts) beneath it.
        let span = tracing::info_span!(
            target: "skein_core::shutdown",
            span::SHUTDOWN,
            { attr::THREAD_COUNT } = handles.len(),
        );
        async {
            for handle in &handles {
                // The loop may already be gone; nothing to stop then.
                let _ = handle.submit(Op::Shutdown).await;
            }
            for task in loops {
                if let Err(err) = task.await {
                    tracing::error!(%err, "a thread loop failed");
                }
            }
        }
        .instrument(span)
        .await;
        // Dropping the handles closes every event channel, so subscribers
        // that came too late for `ShutdownComplete` stop as well.
        self.lock().threads.clear();
        self.runtime.shutdown().await;
    }
}

/// Unloads the threads beyond `max` whenever a thread may have become
/// unloadable (`released`: a subscriber left or a turn ended), and again
/// when a thread spared for its coming subscriber stops being spared.
/// Stops with the registry's shutdown.
async fn unload_when_released(registry: Weak<Mutex<Registry>>, released: Arc<Notify>, max: usize) {
    let mut again_at: Option<Instant> = None;
    loop {
        match again_at {
            Some(at) => {
                tokio::select! {
                    () = released.notified() => {}
                    () = tokio::time::sleep_until(at.into()) => {}
                }
            }
            None => released.notified().await,
        }
        let Some(registry) = registry.upgrade() else {
            return;
        };
        let mut registry = registry.lock().unwrap_or_else(|p| p.into_inner());
        if registry.shutting_down {
            return;
        }
        again_at = unload_idle(&mut registry, max);
    }
}

/// Unloads threads until at most `max` are loaded, oldest first: only
/// stored threads (their history stays on disk) that no connection follows
/// and no turn runs, and none a request took for a subscriber still to
/// come (a thread just loaded counts as taken). Each one's loop is told to
/// stop; it then drops the thread, closing its file and releasing its
/// lock. Returns when the earliest of the spared threads stops being
/// spared, if that is all that keeps more than `max` loaded.
fn unload_idle(registry: &mut Registry, max: usize) -> Option<Instant> {
    let excess = registry.threads.len().saturating_sub(max);
    if excess == 0 {
        return None;
    }
    let mut spared_until: Option<Instant> = None;
    let idle: Vec<String> = registry
        .threads
        .values()
        .filter(|t| {
            let entry = &t.entry;
            if entry.file.is_none()
                || entry.events.subscriber_count() != 0
                || entry.state().active_turn.is_some()
            {
                return false;
            }
            match entry.spared_until(FIRST_SUBSCRIBER_GRACE) {
                Some(until) => {
                    spared_until = Some(spared_until.map_or(until, |s| s.min(until)));
                    false
                }
                None => true,
            }
        })
        .map(|t| t.entry.id.clone())
        .take(excess)
        .collect();
    let spared_until = spared_until.filter(|_| idle.len() < excess);
    for id in idle {
        if let Some(handle) = registry.threads.remove(&id) {
            handle.entry.close_file();
            // An idle loop's queue is empty; if the stop cannot be queued
            // the loop is already gone.
            if handle
                .entry
                .submissions
                .try_send(stop_submission())
                .is_err()
            {
                tracing::debug!(thread = %id, "thread loop already stopped");
            }
            tracing::debug!(thread = %id, "unloaded an idle thread");
        }
    }
    spared_until
}

fn stop_submission() -> Submission {
    Submission {
        id: uuid::Uuid::now_v7().to_string(),
        op: Op::Shutdown,
        trace: None,
    }
}

/// The text of a turn's input items, joined by newlines.
pub fn input_text(input: &[UserInput]) -> String {
    input
        .iter()
        .map(|item| match item {
            UserInput::Text { text } => text.as_str(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

async fn submission_loop(
    entry: Arc<ThreadEntry>,
    mut rx: mpsc::Receiver<Submission>,
    runtime: Arc<Runtime>,
) {
    let mut running: Option<RunningTurn> = None;
    // Set once `Shutdown` was handled: nothing new is accepted, and what
    // was already queued is run out.
    let mut stopping = false;
    while let Some(submission) = rx.recv().await {
        if running.as_ref().is_some_and(|r| r.task.is_finished()) {
            running = None;
        }
        let span = crate::spans::dispatch_span(&submission, &entry.id);
        let stop = matches!(submission.op, Op::Shutdown);
        async {
            match submission.op {
                Op::StartTurn {
                    turn_id,
                    kind,
                    input,
                } => {
                    let turn = crate::engine::start(&entry, &runtime, turn_id, kind, input);
                    if stopping {
                        // Accepted before the shutdown closed the queue (its
                        // request was answered with the turn): it starts,
                        // is interrupted at once, and announces its end.
                        let _ = turn.interrupt.send(true);
                        if let Err(err) = turn.task.await {
                            tracing::error!(%err, "a turn task failed");
                        }
                    } else {
                        running = Some(turn);
                    }
                }
                Op::Steer { turn_id, input } => match &running {
                    // The turn records the steering on its span.
                    Some(turn) if turn.id == turn_id => {
                        let _ = turn.steer.send(input);
                    }
                    _ => tracing::debug!(%turn_id, "steer for a turn that is no longer running"),
                },
                Op::Interrupt { turn_id } => match &running {
                    Some(turn) if turn.id == turn_id => {
                        let _ = turn.interrupt.send(true);
                    }
                    _ => {
                        tracing::debug!(%turn_id, "interrupt for a turn that is no longer running")
                    }
                },
                Op::Shutdown => {
                    if let Some(turn) = running.take() {
                        let _ = turn.interrupt.send(true);
                        if let Err(err) = turn.task.await {
                            tracing::error!(%err, "a turn task failed");
                        }
                    }
                }
            }
        }
        .instrument(span)
        .await;
        if stop && !stopping {
            // Refuse further submissions (`submit` then fails), but run out
            // those already queued: a turn start among them was accepted,
            // and its client is owed the turn's end.
            stopping = true;
            rx.close();
        }
    }
    // Whether stopped by shutdown or by every handle going away, leave no
    // turn running behind.
    if let Some(turn) = running.take() {
        let _ = turn.interrupt.send(true);
        let _ = turn.task.await;
    }
    entry.emit(EventMsg::ShutdownComplete, None);
}

/// A stored thread as metadata and turns.
fn stored_to_info(runtime: &Runtime, stored: StoredThread) -> (ThreadInfo, Vec<TurnRecord>) {
    let model = runtime.stored_model(&stored.model, stored.model_provider.as_deref());
    let preview = stored
        .turns
        .iter()
        .find(|t| t.kind == TurnKind::Regular)
        .map(|t| crate::engine::preview_of(&t.input))
        .unwrap_or_default();
    let info = ThreadInfo {
        id: stored.id,
        model,
        preview,
        created_at: stored.created_at,
        updated_at: stored.updated_at,
        ephemeral: false,
        name: stored.name,
        archived: stored.archived,
        forked_from_id: stored.forked_from.map(|origin| origin.thread_id),
    };
    (info, stored.turns)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spans::{dispatch_span, turn_span};
    use crate::testing::{Capture, attr};
    use opentelemetry::trace::{SpanContext, SpanId, TraceId};
    use opentelemetry_sdk::trace::SpanData;
    use skein_otel::names::event;

    const CLIENT_TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
    const CLIENT_SPAN: &str = "b7ad6b7169203331";

    fn client_context() -> SpanContext {
        skein_otel::span_context_from_ids(CLIENT_TRACE, CLIENT_SPAN).expect("valid ids")
    }

    fn detached_handle() -> (ThreadHandle, mpsc::Receiver<Submission>) {
        let info = ThreadInfo {
            id: "thread-1".into(),
            model: ModelInfo::echo(),
            preview: String::new(),
            created_at: 0,
            updated_at: 0,
            ephemeral: true,
            name: None,
            archived: false,
            forked_from_id: None,
        };
        let (entry, rx) = ThreadEntry::new(info, Vec::new(), None, 4, None);
        (ThreadHandle { entry }, rx)
    }

    #[tokio::test]
    async fn submit_hands_over_the_current_span_context_as_is() {
        let capture = Capture::new();
        let (handle, mut rx) = detached_handle();
        let request = tracing::info_span!("request");
        skein_otel::set_remote_parent(&request, client_context());
        let expected = skein_otel::span_context_of(&request).expect("request context");
        handle
            .submit(Op::Shutdown)
            .instrument(request.clone())
            .await
            .expect("submit");
        let submission = rx.recv().await.expect("submission");
        assert_eq!(submission.trace, Some(expected.clone().into()));
        assert_eq!(expected.trace_id().to_string(), CLIENT_TRACE);
        drop(capture);
    }

    #[tokio::test]
    async fn dispatch_span_is_parented_from_submission_trace() {
        let capture = Capture::new();
        let submission = Submission {
            id: "sub-1".into(),
            op: Op::Interrupt {
                turn_id: "turn-1".into(),
            },
            trace: Some(client_context().into()),
        };
        drop(dispatch_span(&submission, "thread-1"));
        let spans = capture.named("op.dispatch.interrupt");
        assert_eq!(spans.len(), 1);
        let span = &spans[0];
        assert_eq!(
            span.span_context.trace_id(),
            TraceId::from_hex(CLIENT_TRACE).expect("hex")
        );
        assert_eq!(
            span.parent_span_id,
            SpanId::from_hex(CLIENT_SPAN).expect("hex")
        );
        assert_eq!(attr(span, attr::SUBMISSION_ID).as_deref(), Some("sub-1"));
        assert_eq!(attr(span, attr::THREAD_ID).as_deref(), Some("thread-1"));
        assert_eq!(attr(span, attr::OP).as_deref(), Some("interrupt"));
    }

    #[tokio::test]
    async fn dispatch_span_without_trace_keeps_the_current_context() {
        let capture = Capture::new();
        let submission = Submission {
            id: "sub-1".into(),
            op: Op::Shutdown,
            trace: None,
        };
        let outer = tracing::info_span!("outer");
        outer.in_scope(|| drop(dispatch_span(&submission, "thread-1")));
        drop(outer);
        let outer = &capture.named("outer")[0];
        let dispatch = &capture.named("op.dispatch.shutdown")[0];
        assert_eq!(dispatch.parent_span_id, outer.span_context.span_id());
    }

    #[tokio::test]
    async fn turn_span_inherits_the_dispatch_context() {
        let capture = Capture::new();
        let submission = Submission {
            id: "sub-1".into(),
            op: Op::StartTurn {
                turn_id: "turn-1".into(),
                kind: TurnKind::Review,
                input: String::new(),
            },
            trace: Some(client_context().into()),
        };
        let dispatch = dispatch_span(&submission, "thread-1");
        let turn = dispatch
            .in_scope(|| turn_span("thread-1", "turn-1", TurnKind::Review, &ModelInfo::echo()));
        drop(dispatch);
        drop(turn);
        let dispatch = &capture.named("op.dispatch.review")[0];
        let turn = &capture.named("invoke_agent skein")[0];
        assert_eq!(turn.parent_span_id, dispatch.span_context.span_id());
        assert_eq!(
            turn.span_context.trace_id(),
            dispatch.span_context.trace_id()
        );
        assert_eq!(attr(turn, attr::TURN_KIND).as_deref(), Some("review"));
    }

    async fn wait_for_completion(rx: &mut EventReceiver) -> (TurnStatus, Option<String>) {
        loop {
            let event = rx.recv().await.expect("event");
            if let EventMsg::TurnCompleted { status, error, .. } = event.msg {
                return (status, error);
            }
        }
    }

    #[tokio::test]
    async fn a_turn_nests_dispatch_turn_and_chat_under_the_caller() {
        let capture = Capture::new();
        let manager = ThreadManager::new(CoreConfig::default());
        let thread = manager.start_thread(None, true).expect("thread");
        let mut events = manager.handle(&thread.id).expect("handle").subscribe();
        let request = tracing::info_span!("request");
        manager
            .start_turn(
                &thread.id,
                TurnKind::Regular,
                vec![UserInput::Text {
                    text: "hi there".into(),
                }],
            )
            .instrument(request.clone())
            .await
            .expect("start");
        drop(request);
        assert_eq!(
            wait_for_completion(&mut events).await,
            (TurnStatus::Completed, None)
        );
        drop(events);
        let turns = manager.turns(&thread.id).expect("turns");
        manager.shutdown().await;

        let request = &capture.named("request")[0];
        let dispatch = &capture.named("op.dispatch.user_turn")[0];
        let turn = &capture.named("invoke_agent skein")[0];
        let chat = &capture.named("chat echo")[0];
        assert_eq!(dispatch.parent_span_id, request.span_context.span_id());
        assert_eq!(turn.parent_span_id, dispatch.span_context.span_id());
        assert_eq!(chat.parent_span_id, turn.span_context.span_id());
        assert_eq!(attr(turn, attr::TURN_STATUS).as_deref(), Some("completed"));
        assert_eq!(
            attr(turn, attr::GEN_AI_USAGE_OUTPUT_TOKENS).as_deref(),
            Some("2")
        );
        assert_eq!(
            attr(chat, attr::GEN_AI_USAGE_INPUT_TOKENS).as_deref(),
            Some("2")
        );
        assert_eq!(turns[0].output, "hi there");
        assert_eq!(
            turns[0].span_id.as_deref(),
            Some(turn.span_context.span_id().to_string().as_str())
        );
    }

    #[tokio::test]
    async fn a_turn_start_queued_behind_shutdown_is_started_interrupted_and_announced() {
        let capture = Capture::new();
        let manager = ThreadManager::new(CoreConfig {
            echo_delay: Duration::from_secs(3600),
            ..CoreConfig::default()
        });
        let thread = manager.start_thread(None, true).expect("thread");
        let handle = manager.handle(&thread.id).expect("handle");
        let mut events = handle.subscribe();
        // Both queued before the loop runs (this runtime has one thread):
        // the turn was accepted, so its request was answered with it.
        handle.submit(Op::Shutdown).await.expect("submit shutdown");
        handle
            .submit(Op::StartTurn {
                turn_id: "turn-late".into(),
                kind: TurnKind::Regular,
                input: "accepted just too late".into(),
            })
            .await
            .expect("submit the turn");
        let mut seen = Vec::new();
        loop {
            let event = events.recv().await.expect("events until shutdown");
            match event.msg {
                EventMsg::ShutdownComplete => break,
                EventMsg::TurnStarted { turn_id, .. } => seen.push(format!("started {turn_id}")),
                EventMsg::TurnCompleted {
                    turn_id, status, ..
                } => seen.push(format!("completed {turn_id} {status:?}")),
                _ => {}
            }
        }
        assert_eq!(
            seen,
            ["started turn-late", "completed turn-late Interrupted"],
            "the turn's start and end, before the thread's shutdown"
        );
        // Nothing is accepted after that.
        let late = handle.submit(Op::Shutdown).await;
        assert!(matches!(late, Err(ThreadError::ShuttingDown)), "{late:?}");
        drop(handle);
        manager.shutdown().await;
        drop(capture);
    }

    /// Runs one turn of `text` on a thread that stays loaded, and returns
    /// the spans exported by the time its `TurnCompleted` was received, with
    /// the turn's status: nothing is shut down or submitted after the turn.
    async fn spans_when_turn_completed_arrives(
        capture: &Capture,
        text: &str,
        interrupt: bool,
    ) -> (Vec<SpanData>, TurnStatus) {
        let manager = ThreadManager::new(CoreConfig {
            echo_delay: if interrupt {
                Duration::from_secs(3600)
            } else {
                Duration::ZERO
            },
            ..CoreConfig::default()
        });
        let thread = manager.start_thread(None, true).expect("thread");
        let mut events = manager.handle(&thread.id).expect("handle").subscribe();
        let input = vec![UserInput::Text { text: text.into() }];
        let started = manager
            .start_turn(&thread.id, TurnKind::Regular, input)
            .instrument(tracing::info_span!("request"))
            .await
            .expect("start");
        if interrupt {
            loop {
                let event = events.recv().await.expect("event");
                if matches!(event.msg, EventMsg::AgentMessageDelta { .. }) {
                    break;
                }
            }
            manager
                .interrupt(&thread.id, &started.turn_id)
                .await
                .expect("interrupt");
        }
        let (status, _) = wait_for_completion(&mut events).await;
        let spans = capture.spans();
        // The thread is still loaded and its subscriber still listening.
        assert_eq!(manager.status(&thread.id), ThreadStatus::Idle);
        drop(events);
        manager.shutdown().await;
        (spans, status)
    }

    fn assert_turn_and_dispatch_ended(spans: &[SpanData], dispatch_name: &str) {
        let names: Vec<&str> = spans.iter().map(|s| s.name.as_ref()).collect();
        let turn = spans
            .iter()
            .find(|s| s.name == "invoke_agent skein")
            .unwrap_or_else(|| panic!("turn span not ended at turn/completed: {names:?}"));
        let dispatch = spans
            .iter()
            .find(|s| s.name == dispatch_name)
            .unwrap_or_else(|| panic!("dispatch span not ended at turn/completed: {names:?}"));
        let chat = spans
            .iter()
            .find(|s| s.name == "chat echo")
            .unwrap_or_else(|| panic!("chat span not ended at turn/completed: {names:?}"));
        assert_eq!(turn.parent_span_id, dispatch.span_context.span_id());
        assert_eq!(chat.parent_span_id, turn.span_context.span_id());
        assert!(turn.end_time >= chat.end_time);
    }

    #[tokio::test]
    async fn a_completed_turns_spans_have_ended_when_turn_completed_is_received() {
        let capture = Capture::new();
        let (spans, status) = spans_when_turn_completed_arrives(&capture, "hi there", false).await;
        assert_eq!(status, TurnStatus::Completed);
        assert_turn_and_dispatch_ended(&spans, "op.dispatch.user_turn");
    }

    #[tokio::test]
    async fn an_interrupted_turns_spans_have_ended_when_turn_completed_is_received() {
        let capture = Capture::new();
        let (spans, status) = spans_when_turn_completed_arrives(&capture, "a b c d", true).await;
        assert_eq!(status, TurnStatus::Interrupted);
        assert_turn_and_dispatch_ended(&spans, "op.dispatch.user_turn");
    }

    #[tokio::test]
    async fn a_failed_turns_spans_have_ended_when_turn_completed_is_received() {
        let capture = Capture::new();
        let (spans, status) = spans_when_turn_completed_arrives(&capture, "/fail now", false).await;
        assert_eq!(status, TurnStatus::Failed);
        assert_turn_and_dispatch_ended(&spans, "op.dispatch.user_turn");
    }

    #[tokio::test]
    async fn an_unloaded_thread_releases_its_file_at_once_and_loads_again() {
        let _capture = Capture::new();
        let dir = tempfile::tempdir().expect("tempdir");
        let manager = ThreadManager::new(CoreConfig {
            store: Some(ThreadStore::open(dir.path()).expect("store")),
            max_loaded_threads: Some(1),
            ..CoreConfig::default()
        });
        let first = manager.start_thread(None, false).expect("first");
        let stale = manager.handle(&first.id).expect("handle");
        // Followed once, then no longer: unloadable.
        drop(stale.subscribe());
        let second = manager.start_thread(None, false).expect("second");
        assert_eq!(manager.loaded_ids(), vec![second.id.clone()]);
        // A metadata change through a handle taken before the unload goes
        // to the store.
        let named = manager.set_name(&first.id, "kept").await.expect("name");
        assert_eq!(named.info.name.as_deref(), Some("kept"));
        // The file was released at once: loading it again is not `Busy`.
        let again = manager.load(&first.id).expect("load again");
        assert_eq!(again.id(), first.id);
        assert_eq!(
            manager.read(&first.id).expect("read").name.as_deref(),
            Some("kept")
        );
        // A thread nobody ever followed is spared (its request subscribes
        // right after loading it).
        let third = manager.start_thread(None, false).expect("third");
        assert!(manager.loaded_ids().contains(&third.id));
        manager.shutdown().await;
    }

    /// Waits (for at most a minute) until `done` holds.
    async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting until {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn threads_beyond_the_limit_are_unloaded_as_soon_as_nobody_follows_them() {
        let _capture = Capture::new();
        let dir = tempfile::tempdir().expect("tempdir");
        let store = ThreadStore::open(dir.path()).expect("store");
        let manager = ThreadManager::new(CoreConfig {
            store: Some(store.clone()),
            max_loaded_threads: Some(2),
            ..CoreConfig::default()
        });
        let mut ids = Vec::new();
        let mut followers = Vec::new();
        for _ in 0..5 {
            let thread = manager.start_thread(None, false).expect("thread");
            followers.push(manager.handle(&thread.id).expect("handle").subscribe());
            ids.push(thread.id);
        }
        assert_eq!(manager.loaded_ids(), ids, "followed threads stay loaded");
        // The connection that followed them goes away, and nothing else
        // happens: the oldest three are unloaded all the same.
        drop(followers);
        wait_until("two threads are loaded", || manager.loaded_ids().len() <= 2).await;
        assert_eq!(manager.loaded_ids(), ids[3..]);
        // Their locks are released: another writer may take them.
        for id in &ids[..3] {
            store.open_for_write(id).expect("the file was released");
        }
        manager.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_thread_beyond_the_limit_is_unloaded_when_its_unfollowed_turn_ends() {
        let _capture = Capture::new();
        let dir = tempfile::tempdir().expect("tempdir");
        let manager = ThreadManager::new(CoreConfig {
            store: Some(ThreadStore::open(dir.path()).expect("store")),
            max_loaded_threads: Some(1),
            echo_delay: Duration::from_secs(3600),
            ..CoreConfig::default()
        });
        let running = manager.start_thread(None, false).expect("running");
        let follower = manager.handle(&running.id).expect("handle").subscribe();
        let turn = manager
            .start_turn(
                &running.id,
                TurnKind::Regular,
                vec![UserInput::Text {
                    text: "a long answer".into(),
                }],
            )
            .await
            .expect("turn");
        let followed = manager.start_thread(None, false).expect("followed");
        let _follower = manager.handle(&followed.id).expect("handle").subscribe();
        // Nobody follows the running thread any more, but its turn runs.
        drop(follower);
        assert_eq!(
            manager.loaded_ids(),
            [running.id.clone(), followed.id.clone()]
        );
        // The turn ends: the thread is unloaded without any new activity.
        manager
            .interrupt(&running.id, &turn.turn_id)
            .await
            .expect("interrupt");
        wait_until("the idle thread is unloaded", || {
            manager.loaded_ids() == [followed.id.clone()]
        })
        .await;
        manager.shutdown().await;
    }

    #[tokio::test]
    async fn turns_past_the_running_limit_are_refused() {
        let _capture = Capture::new();
        let manager = ThreadManager::new(CoreConfig {
            echo_delay: Duration::from_secs(3600),
            max_running_turns: Some(1),
            ..CoreConfig::default()
        });
        let input = || {
            vec![UserInput::Text {
                text: "a long answer".into(),
            }]
        };
        let a = manager.start_thread(None, true).expect("a");
        let b = manager.start_thread(None, true).expect("b");
        manager
            .start_turn(&a.id, TurnKind::Regular, input())
            .await
            .expect("first turn");
        let refused = manager
            .start_turn(&b.id, TurnKind::Regular, input())
            .await
            .expect_err("past the limit");
        assert_eq!(refused, ThreadError::Overloaded { running: 1 });
        manager.shutdown().await;
    }

    #[tokio::test]
    async fn a_second_turn_while_one_runs_is_refused() {
        let _capture = Capture::new();
        let manager = ThreadManager::new(CoreConfig {
            echo_delay: Duration::from_secs(3600),
            store: None,
            ..Default::default()
        });
        let thread = manager.start_thread(None, true).expect("thread");
        let mut events = manager.handle(&thread.id).expect("handle").subscribe();
        let input = || {
            vec![UserInput::Text {
                text: "a b c".into(),
            }]
        };
        let first = manager
            .start_turn(&thread.id, TurnKind::Regular, input())
            .await
            .expect("first");
        let second = manager
            .start_turn(&thread.id, TurnKind::Regular, input())
            .await;
        assert!(
            matches!(second, Err(ThreadError::TurnRunning { .. })),
            "{second:?}"
        );
        manager
            .interrupt(&thread.id, &first.turn_id)
            .await
            .expect("interrupt");
        assert_eq!(
            wait_for_completion(&mut events).await.0,
            TurnStatus::Interrupted
        );
        assert!(matches!(
            manager.interrupt(&thread.id, &first.turn_id).await,
            Err(ThreadError::TurnNotRunning { .. })
        ));
        manager.shutdown().await;
    }

    #[tokio::test]
    async fn steering_a_turn_records_an_event_on_its_span_and_extends_the_answer() {
        let capture = Capture::new();
        let manager = ThreadManager::new(CoreConfig {
            echo_delay: Duration::from_millis(20),
            store: None,
            ..Default::default()
        });
        let thread = manager.start_thread(None, true).expect("thread");
        let mut events = manager.handle(&thread.id).expect("handle").subscribe();
        let started = manager
            .start_turn(
                &thread.id,
                TurnKind::Regular,
                vec![UserInput::Text {
                    text: "one two three four five six".into(),
                }],
            )
            .await
            .expect("start");
        // Steer once the first word has streamed, while the turn runs.
        loop {
            let event = events.recv().await.expect("event");
            if matches!(event.msg, EventMsg::AgentMessageDelta { .. }) {
                break;
            }
        }
        manager
            .steer(
                &thread.id,
                &started.turn_id,
                vec![UserInput::Text {
                    text: "seven".into(),
                }],
            )
            .await
            .expect("steer");
        assert_eq!(
            wait_for_completion(&mut events).await,
            (TurnStatus::Completed, None)
        );
        let turns = manager.turns(&thread.id).expect("turns");
        assert!(turns[0].output.ends_with("seven"), "{}", turns[0].output);
        drop(events);
        manager.shutdown().await;
        let turn = &capture.named("invoke_agent skein")[0];
        let steer = turn
            .events
            .iter()
            .find(|e| e.name == event::TURN_STEER)
            .unwrap_or_else(|| panic!("no steer event on the turn span: {:?}", turn.events));
        assert!(
            steer
                .attributes
                .iter()
                .any(|kv| kv.key.as_str() == attr::STEER_INPUT_CHARS && kv.value.to_string() == "5"),
            "{steer:?}"
        );
    }

    #[tokio::test]
    async fn shutdown_interrupts_a_running_turn() {
        let _capture = Capture::new();
        let manager = ThreadManager::new(CoreConfig {
            echo_delay: Duration::from_secs(3600),
            store: None,
            ..Default::default()
        });
        let thread = manager.start_thread(None, true).expect("thread");
        let mut events = manager.handle(&thread.id).expect("handle").subscribe();
        manager
            .start_turn(
                &thread.id,
                TurnKind::Regular,
                vec![UserInput::Text { text: "a b".into() }],
            )
            .await
            .expect("start");
        manager.shutdown().await;
        assert_eq!(
            wait_for_completion(&mut events).await.0,
            TurnStatus::Interrupted
        );
        assert_eq!(
            events.recv().await.expect("event").msg,
            EventMsg::ShutdownComplete
        );
        assert!(matches!(
            manager.start_thread(None, true),
            Err(ThreadError::ShuttingDown)
        ));
    }

    #[tokio::test]
    async fn failing_model_fails_the_turn_with_an_error_status() {
        let capture = Capture::new();
        let manager = ThreadManager::new(CoreConfig::default());
        let thread = manager.start_thread(None, true).expect("thread");
        let mut events = manager.handle(&thread.id).expect("handle").subscribe();
        manager
            .start_turn(
                &thread.id,
                TurnKind::Regular,
                vec![UserInput::Text {
                    text: "/fail now".into(),
                }],
            )
            .await
            .expect("start");
        let (status, error) = wait_for_completion(&mut events).await;
        assert_eq!(status, TurnStatus::Failed);
        assert!(error.expect("error").contains("/fail"));
        drop(events);
        manager.shutdown().await;
        let turn = &capture.named("invoke_agent skein")[0];
        match &turn.status {
            opentelemetry::trace::Status::Error { description } => {
                assert!(description.contains("/fail"), "{description}")
            }
            other => panic!("turn span status is {other:?}, not an error"),
        }
        assert_eq!(attr(turn, attr::TURN_STATUS).as_deref(), Some("failed"));
    }

    /// Makes the later history writes of thread `id` fail as `fault` says
    /// (`None`: the disk has room again).
    fn set_disk_fault(manager: &ThreadManager, id: &str, fault: Option<crate::store::Fault>) {
        let handle = manager.handle(id).expect("handle");
        handle
            .entry
            .file
            .as_ref()
            .expect("a stored thread")
            .lock()
            .expect("lock")
            .as_mut()
            .expect("the thread's file is open")
            .inject_fault(fault);
    }

    /// Makes every later history write of thread `id` fail with ENOSPC.
    fn fill_the_disk_under(manager: &ThreadManager, id: &str) {
        set_disk_fault(
            manager,
            id,
            Some(crate::store::Fault {
                space: 0,
                truncate_fails: false,
            }),
        );
    }

    /// Runs a turn of `text` on thread `id` to its end: its status and error.
    async fn run_turn(
        manager: &ThreadManager,
        id: &str,
        text: &str,
    ) -> (TurnStatus, Option<String>) {
        let mut events = manager.handle(id).expect("handle").subscribe();
        manager
            .start_turn(
                id,
                TurnKind::Regular,
                vec![UserInput::Text { text: text.into() }],
            )
            .await
            .expect("start");
        wait_for_completion(&mut events).await
    }

    #[tokio::test]
    async fn a_turn_completed_after_the_disk_filled_and_was_freed_is_read_back_after_a_restart() {
        let _capture = Capture::new();
        let dir = tempfile::tempdir().expect("tempdir");
        let manager = stored_manager(dir.path(), Duration::ZERO);
        let thread = manager.start_thread(None, false).expect("thread");
        assert_eq!(
            run_turn(&manager, &thread.id, "before").await,
            (TurnStatus::Completed, None)
        );
        // The disk fills up in the middle of the next turn's start record.
        set_disk_fault(
            &manager,
            &thread.id,
            Some(crate::store::Fault {
                space: 40,
                truncate_fails: false,
            }),
        );
        for text in ["full one", "full two"] {
            let (status, error) = run_turn(&manager, &thread.id, text).await;
            assert_eq!(status, TurnStatus::Failed);
            let error = error.expect("error");
            assert!(error.contains("could not write thread history"), "{error}");
        }
        set_disk_fault(&manager, &thread.id, None);
        assert_eq!(
            run_turn(&manager, &thread.id, "after").await,
            (TurnStatus::Completed, None)
        );
        manager.shutdown().await;

        let restarted = stored_manager(dir.path(), Duration::ZERO);
        let turns = restarted.turns(&thread.id).expect("turns");
        let read: Vec<(&str, TurnStatus)> = turns
            .iter()
            .map(|t| (t.output.as_str(), t.status))
            .collect();
        assert_eq!(
            read,
            [
                ("before", TurnStatus::Completed),
                ("after", TurnStatus::Completed)
            ]
        );
    }

    #[tokio::test]
    async fn a_thread_started_on_a_full_disk_fails_and_leaves_no_file() {
        let _capture = Capture::new();
        let dir = tempfile::tempdir().expect("tempdir");
        let store = ThreadStore::open(dir.path())
            .expect("store")
            .with_fault(crate::store::Fault {
                space: 0,
                truncate_fails: false,
            });
        let manager = ThreadManager::new(CoreConfig {
            store: Some(store),
            ..CoreConfig::default()
        });
        let error = manager
            .start_thread(None, false)
            .expect_err("no room for the thread");
        assert!(matches!(error, ThreadError::Store(_)), "{error:?}");
        assert_eq!(manager.list(None, None, false).expect("list").threads, []);
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .expect("dir")
            .map(|e| e.expect("entry").file_name())
            .filter(|name| name != crate::store::LOCK_FILE_NAME)
            .collect();
        assert!(left.is_empty(), "{left:?}");
        manager.shutdown().await;
    }

    fn stored_manager(dir: &std::path::Path, echo_delay: std::time::Duration) -> ThreadManager {
        ThreadManager::new(CoreConfig {
            store: Some(crate::store::ThreadStore::open(dir).expect("store")),
            echo_delay,
            ..CoreConfig::default()
        })
    }

    #[tokio::test]
    async fn a_turn_whose_start_cannot_be_recorded_fails_without_calling_the_model() {
        let capture = Capture::new();
        let dir = tempfile::tempdir().expect("tempdir");
        let manager = stored_manager(dir.path(), std::time::Duration::ZERO);
        let thread = manager.start_thread(None, false).expect("thread");
        fill_the_disk_under(&manager, &thread.id);
        let mut events = manager.handle(&thread.id).expect("handle").subscribe();
        manager
            .start_turn(
                &thread.id,
                TurnKind::Regular,
                vec![UserInput::Text {
                    text: "hello".into(),
                }],
            )
            .await
            .expect("start");
        let (status, error) = wait_for_completion(&mut events).await;
        assert_eq!(status, TurnStatus::Failed);
        let error = error.expect("error");
        assert!(error.contains("could not write thread history"), "{error}");
        let turns = manager.turns(&thread.id).expect("turns");
        assert_eq!(turns[0].status, TurnStatus::Failed);
        assert_eq!(turns[0].output, "", "the model was not called");
        drop(events);
        manager.shutdown().await;
        let turn = &capture.named("invoke_agent skein")[0];
        assert_eq!(attr(turn, attr::TURN_STATUS).as_deref(), Some("failed"));
    }

    #[tokio::test]
    async fn a_turn_whose_end_cannot_be_recorded_is_reported_failed() {
        let capture = Capture::new();
        let dir = tempfile::tempdir().expect("tempdir");
        let manager = stored_manager(dir.path(), std::time::Duration::from_millis(20));
        let thread = manager.start_thread(None, false).expect("thread");
        let mut events = manager.handle(&thread.id).expect("handle").subscribe();
        manager
            .start_turn(
                &thread.id,
                TurnKind::Regular,
                vec![UserInput::Text {
                    text: "one two three four".into(),
                }],
            )
            .await
            .expect("start");
        // `TurnStarted` goes out after the start was recorded.
        loop {
            let event = events.recv().await.expect("event");
            if matches!(event.msg, EventMsg::TurnStarted { .. }) {
                break;
            }
        }
        fill_the_disk_under(&manager, &thread.id);
        let (status, error) = wait_for_completion(&mut events).await;
        assert_eq!(status, TurnStatus::Failed);
        let error = error.expect("error");
        assert!(error.contains("could not write thread history"), "{error}");
        assert_eq!(
            manager.turns(&thread.id).expect("turns")[0].status,
            TurnStatus::Failed
        );
        drop(events);
        manager.shutdown().await;
        let turn = &capture.named("invoke_agent skein")[0];
        assert_eq!(attr(turn, attr::TURN_STATUS).as_deref(), Some("failed"));
        match &turn.status {
            opentelemetry::trace::Status::Error { description } => {
                assert!(description.contains("thread history"), "{description}")
            }
            other => panic!("turn span status is {other:?}, not an error"),
        }
    }
}
