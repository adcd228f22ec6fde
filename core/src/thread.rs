//! One thread's state: its metadata and turns, its event hub, and its
//! history file.
//!
//! Shared by the thread's submission loop and its running turn; the
//! registry and the loop live in [`crate::threads`], the turn engine in
//! [`crate::engine`].

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use opentelemetry::trace::SpanContext;
use skein_protocol::{Event, EventMsg, Submission, W3cTraceContext};
use tokio::sync::{Notify, mpsc};

use crate::events::EventHub;
use crate::records::{ThreadInfo, TurnRecord, unix_now_ms};
use crate::store::{Record, StoreError, ThreadFile};

/// What a thread is now; guarded by its entry's lock.
pub(crate) struct ThreadState {
    pub(crate) info: ThreadInfo,
    pub(crate) turns: Vec<TurnRecord>,
    /// The running turn's id, set when a turn is accepted and cleared when
    /// it ends (before `TurnCompleted` goes out).
    pub(crate) active_turn: Option<String>,
    /// The previous turn span, for the link from the next one.
    pub(crate) last_turn_span: Option<SpanContext>,
}

/// One loaded thread.
pub(crate) struct ThreadEntry {
    pub(crate) id: String,
    state: Mutex<ThreadState>,
    /// The sending side of the thread's submission queue.
    pub(crate) submissions: mpsc::Sender<Submission>,
    pub(crate) events: EventHub,
    /// The thread's file, held for writing; `None` for ephemeral threads
    /// and when nothing is stored. The inner `None` once the thread was
    /// unloaded: its lock is released at once, so a new load can take it
    /// over while this entry's loop winds down.
    pub(crate) file: Option<Mutex<Option<ThreadFile>>>,
    /// When a request last took the thread (loaded it, or found it
    /// loaded) and how many subscriptions its hub had then: a thread taken
    /// whose subscriber has not arrived yet is spared from unloading.
    /// `None` once it did subscribe (or said it already follows).
    taken: Mutex<Option<(Instant, u64)>>,
}

impl ThreadEntry {
    /// A thread loaded with `info` and `turns`, writing to `file`, and the
    /// receiving end of its submission queue (of `queue` submissions).
    /// `on_release` (`None` when nothing unloads threads) is notified when
    /// the thread may have become unloadable.
    pub(crate) fn new(
        info: ThreadInfo,
        turns: Vec<TurnRecord>,
        file: Option<ThreadFile>,
        queue: usize,
        on_release: Option<Arc<Notify>>,
    ) -> (Arc<Self>, mpsc::Receiver<Submission>) {
        let (submissions, rx) = mpsc::channel(queue);
        let last_turn_span = turns.iter().rev().find_map(|t| {
            skein_otel::span_context_from_ids(t.trace_id.as_deref()?, t.span_id.as_deref()?)
        });
        let entry = Arc::new(ThreadEntry {
            id: info.id.clone(),
            state: Mutex::new(ThreadState {
                info,
                turns,
                active_turn: None,
                last_turn_span,
            }),
            submissions,
            events: on_release.map_or_else(EventHub::new, EventHub::with_release_signal),
            file: file.map(|f| Mutex::new(Some(f))),
            taken: Mutex::new(Some((Instant::now(), 0))),
        });
        (entry, rx)
    }

    /// Records that a request took the thread and is about to follow it.
    pub(crate) fn take(&self) {
        let made = self.events.subscriptions_made();
        *self.taken.lock().unwrap_or_else(|p| p.into_inner()) = Some((Instant::now(), made));
    }

    /// Records that the request that took the thread follows it already.
    pub(crate) fn followed(&self) {
        *self.taken.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// When the thread was taken by a request that has not subscribed
    /// since: until `grace` after that, it must not be unloaded.
    pub(crate) fn spared_until(&self, grace: std::time::Duration) -> Option<Instant> {
        let (at, made) = (*self.taken.lock().unwrap_or_else(|p| p.into_inner()))?;
        let until = at + grace;
        (self.events.subscriptions_made() == made && Instant::now() < until).then_some(until)
    }

    /// Tells the registry the thread may have become unloadable (its turn
    /// ended).
    pub(crate) fn signal_release(&self) {
        self.events.signal_release();
    }

    pub(crate) fn state(&self) -> MutexGuard<'_, ThreadState> {
        // Critical sections are short and leave the state consistent, so a
        // poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sends an event of this thread to its subscribers.
    pub(crate) fn emit(&self, msg: EventMsg, trace: Option<&W3cTraceContext>) {
        // No subscriber is fine: the event is dropped.
        self.events.send(Event {
            thread_id: self.id.clone(),
            msg,
            trace: trace.cloned(),
            at_ms: unix_now_ms(),
        });
    }

    /// Appends a record to the thread's file, if it has one, and waits
    /// until it is on disk. Blocking: call it off the async workers.
    /// Returns false, writing nothing, when the thread was unloaded.
    pub(crate) fn append_synced(&self, record: &Record) -> Result<bool, StoreError> {
        let Some(file) = &self.file else {
            return Ok(true);
        };
        match file.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
            Some(file) => file.append(record, true).map(|()| true),
            None => Ok(false),
        }
    }

    /// Releases the thread's file as the thread is unloaded.
    pub(crate) fn close_file(&self) {
        if let Some(file) = &self.file {
            drop(file.lock().unwrap_or_else(|p| p.into_inner()).take());
        }
    }

    /// Appends a record to the thread's file, if it has one; with `sync`,
    /// on a blocking thread, returning once it is on disk. A failure is
    /// logged and returned: the turn it belongs to fails with it, since
    /// its history would otherwise be lost without a word.
    pub(crate) async fn persist(
        self: &Arc<Self>,
        record: Record,
        sync: bool,
    ) -> Result<(), String> {
        if self.file.is_none() {
            return Ok(());
        }
        let entry = Arc::clone(self);
        let write = move || {
            let Some(file) = &entry.file else {
                return Ok(());
            };
            let mut file = file.lock().unwrap_or_else(|p| p.into_inner());
            let Some(file) = file.as_mut() else {
                tracing::warn!(thread = %entry.id, "thread unloaded; a record was not written");
                return Ok(());
            };
            file.append(&record, sync).map_err(|err| {
                tracing::error!(thread = %entry.id, %err, "could not write thread history");
                format!("could not write thread history: {}", err.client_text())
            })
        };
        if sync {
            match tokio::task::spawn_blocking(write).await {
                Ok(result) => result,
                Err(err) => {
                    tracing::error!(thread = %self.id, %err, "thread history writer failed");
                    Err(format!("the thread history writer failed: {err}"))
                }
            }
        } else {
            write()
        }
    }
}
