//! Per-connection state.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use skein_app_server_protocol::OutgoingNotification;
use skein_app_server_protocol::v2::ClientInfo;
use skein_core::ThreadHandle;
use skein_otel::names::value;
use skein_otel::rpc::{RequestSpan, StringValue};
use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tokio::task::{AbortHandle, JoinSet};

use crate::events::forward_events;

/// How a connection reaches the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// Newline-delimited JSON on stdin/stdout.
    Stdio,
    /// One JSON message per WebSocket text frame.
    WebSocket,
}

impl Transport {
    /// The `rpc.transport` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Stdio => value::TRANSPORT_STDIO,
            Transport::WebSocket => value::TRANSPORT_WEBSOCKET,
        }
    }
}

/// One serialized message on its way to the client, with the spans it
/// completes. The writer drops the spans once the bytes are written, so a
/// request span ends when its response has been written.
#[derive(Debug)]
pub struct OutboundItem {
    /// The JSON text, without a trailing newline.
    pub text: String,
    /// Request spans that end when this item (their response) is written.
    pub spans: Vec<RequestSpan>,
    /// The turn this item is the `turn/completed` notification of, if it
    /// is one: taking it for writing settles what the connection owes the
    /// client for that turn (see [`ConnectionSession::owe_turn`]).
    pub ends_turn: Option<String>,
}

impl OutboundItem {
    /// A message that completes no span and ends no turn.
    pub fn message(text: String) -> Self {
        Self {
            text,
            spans: Vec::new(),
            ends_turn: None,
        }
    }
}

/// Default of `--client-stall-timeout`: how long a connection's writer may
/// make no progress before the client is considered gone.
pub const DEFAULT_CLIENT_STALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Reports, once, that a connection's client stopped reading: its writer
/// made no progress for the stall timeout. The connection is then ended.
#[derive(Clone, Debug)]
pub struct StallReporter(Arc<watch::Sender<Option<String>>>);

impl StallReporter {
    /// Ends the connection because nothing could be written for `waited`.
    pub fn report(&self, connection: u64, waited: Duration) {
        tracing::warn!(
            connection,
            waited_secs = waited.as_secs_f64(),
            "client stopped reading; ending the connection"
        );
        self.0.send_replace(Some(format!(
            "client stalled: nothing could be written for {}s; reconnect and thread/resume",
            waited.as_secs()
        )));
    }
}

/// Capacity of a connection's outbound queue.
pub const OUTBOUND_QUEUE: usize = 256;

/// What the server knows about one connection.
#[derive(Debug)]
pub struct ConnectionSession {
    id: u64,
    transport: Transport,
    /// The client's name and version from `initialize`, kept as the span
    /// attribute values every later request records.
    client: OnceLock<(StringValue, StringValue)>,
    outbound: mpsc::Sender<OutboundItem>,
    subscriptions: Mutex<Subscriptions>,
    /// Notifications handlers queued for the response being prepared.
    notices: Mutex<Vec<OutboundItem>>,
    /// Turns this connection started whose `turn/completed` it has not yet
    /// taken for writing: turn id to thread id.
    owed: Mutex<HashMap<String, String>>,
    /// Set, with the reason, when the connection must be ended by the
    /// server (a client that stopped reading: see [`StallReporter`]).
    overrun: Arc<watch::Sender<Option<String>>>,
}

/// The threads a connection follows: one forwarder task each.
#[derive(Debug, Default)]
struct Subscriptions {
    by_thread: HashMap<String, AbortHandle>,
    tasks: JoinSet<()>,
}

static NEXT_CONNECTION_ID: AtomicU64 = AtomicU64::new(1);

impl ConnectionSession {
    /// A new connection with a fresh id, writing to `outbound`.
    pub fn new(transport: Transport, outbound: mpsc::Sender<OutboundItem>) -> Self {
        Self {
            id: NEXT_CONNECTION_ID.fetch_add(1, Ordering::Relaxed),
            transport,
            client: OnceLock::new(),
            outbound,
            subscriptions: Mutex::default(),
            notices: Mutex::default(),
            owed: Mutex::default(),
            overrun: Arc::new(watch::channel(None).0),
        }
    }

    /// The handle a connection's writer reports a stalled client through.
    pub fn stall_reporter(&self) -> StallReporter {
        StallReporter(Arc::clone(&self.overrun))
    }

    /// Resolves with the reason once the server has to end this
    /// connection because the client stopped reading.
    pub fn overrun(&self) -> impl Future<Output = String> + Send + 'static {
        let mut rx = self.overrun.subscribe();
        async move {
            let reason = rx
                .wait_for(Option::is_some)
                .await
                .map(|reason| reason.clone().unwrap_or_default());
            match reason {
                Ok(reason) => reason,
                // The session is gone: nothing will ever be overrun.
                Err(_) => std::future::pending().await,
            }
        }
    }

    fn subscriptions(&self) -> MutexGuard<'_, Subscriptions> {
        self.subscriptions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Follows `thread`'s events (a no-op if already following). Must be
    /// called within the runtime: it spawns the forwarder.
    pub fn subscribe(&self, thread: &ThreadHandle) {
        let mut subs = self.subscriptions();
        if subs.by_thread.contains_key(thread.id()) {
            thread.already_followed();
            return;
        }
        let task = forward_events(thread.subscribe(), self.outbound.clone());
        let abort = subs.tasks.spawn(task);
        subs.by_thread.insert(thread.id().to_owned(), abort);
    }

    /// Whether the connection follows thread `id`'s events.
    pub fn follows(&self, id: &str) -> bool {
        self.subscriptions().by_thread.contains_key(id)
    }

    /// Stops following thread `id`. Returns false when not following it.
    /// The client is then owed nothing more of the turns it started there.
    pub fn unsubscribe(&self, id: &str) -> bool {
        self.owed().retain(|_, thread| thread != id);
        match self.subscriptions().by_thread.remove(id) {
            Some(abort) => {
                abort.abort();
                true
            }
            None => false,
        }
    }

    /// Records that this connection started turn `turn_id` on thread
    /// `thread_id`: the client is owed the turn's notifications up to its
    /// `turn/completed`, even once it has closed its sending side (the
    /// connection then keeps writing until they are out).
    pub fn owe_turn(&self, thread_id: &str, turn_id: &str) {
        self.owed().insert(turn_id.to_owned(), thread_id.to_owned());
    }

    /// Settles turn `turn_id`: its `turn/completed` was taken for writing.
    pub fn settle_turn(&self, turn_id: &str) {
        self.owed().remove(turn_id);
    }

    /// Whether a turn this connection started still owes the client its
    /// `turn/completed`.
    pub fn owes_turns(&self) -> bool {
        !self.owed().is_empty()
    }

    fn owed(&self) -> MutexGuard<'_, HashMap<String, String>> {
        self.owed.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Ends the forwarders as the connection closes. On graceful shutdown
    /// they run until their threads report shutdown (so final `turn/completed`
    /// notifications reach the client), for at most `timeout`; otherwise
    /// they are aborted.
    pub async fn close_subscriptions(&self, graceful: bool, timeout: Duration) {
        self.owed().clear();
        let mut tasks = {
            let mut subs = self.subscriptions();
            subs.by_thread.clear();
            std::mem::take(&mut subs.tasks)
        };
        if graceful {
            let drained = tokio::time::timeout(timeout, async {
                while tasks.join_next().await.is_some() {}
            })
            .await;
            if drained.is_err() {
                tracing::warn!(
                    connection = self.id,
                    "event forwarders did not finish in time"
                );
            }
        }
        tasks.shutdown().await;
    }

    /// The connection id, unique within this process.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The transport.
    pub fn transport(&self) -> Transport {
        self.transport
    }

    /// The client's name and version, once `initialize` succeeded.
    pub fn client(&self) -> Option<&(StringValue, StringValue)> {
        self.client.get()
    }

    /// True once `initialize` succeeded.
    pub fn is_initialized(&self) -> bool {
        self.client.get().is_some()
    }

    /// Records the client from `initialize`. Returns false when the
    /// connection was already initialized.
    pub fn initialize(&self, client: &ClientInfo) -> bool {
        self.client
            .set((
                StringValue::from(Arc::<str>::from(client.name.as_str())),
                StringValue::from(Arc::<str>::from(client.version.as_str())),
            ))
            .is_ok()
    }

    /// Queues a notification a handler sends while it answers a request.
    /// The connection writes it before that request's response, never
    /// waiting for room: the connection's own task is the one that drains
    /// the outbound queue, so a handler must not wait on it.
    pub fn notify(&self, message: OutgoingNotification) {
        self.notices()
            .push(OutboundItem::message(message.to_json()));
    }

    /// Moves the notifications handlers queued with [`notify`](Self::notify)
    /// to `out`, in order.
    pub fn take_notices(&self, out: &mut Vec<OutboundItem>) {
        let mut notices = self.notices();
        if !notices.is_empty() {
            out.append(&mut notices);
        }
    }

    fn notices(&self) -> MutexGuard<'_, Vec<OutboundItem>> {
        self.notices.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The sender of the outbound queue.
    pub fn outbound(&self) -> &mpsc::Sender<OutboundItem> {
        &self.outbound
    }
}
