//! What every connection does with an inbound frame, whatever the
//! transport: parse, route each message (each batch element on its own)
//! through the traced service, and queue the reply.
//!
//! Messages of one connection are handled one after another, in arrival
//! order; connections run concurrently. That keeps per-connection state
//! (`initialize` first) simple and needs no task per request.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::mpsc;

use skein_app_server_protocol::{ErrorObject, Frame, Incoming, Outgoing, parse_frame};
use tower::{Service, ServiceExt};

use crate::processor::MessageProcessor;
use crate::server::EVENT_DRAIN_TIMEOUT;
use crate::session::{ConnectionSession, OUTBOUND_QUEUE, OutboundItem, Transport};
use crate::tracing_layer::{RequestTracing, RpcCall, TracedReply};

/// The service every request goes through: the router wrapped in request
/// tracing.
pub type RpcService = RequestTracing<MessageProcessor>;

/// The end of a connection's subscriptions, under way (see
/// [`ConnectionHandler::start_closing`]).
pub type Closing = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Handles inbound frames for one connection, and holds the receiving
/// side of its outbound queue (the notifications of the threads it
/// follows), which the connection's task drains between frames.
#[derive(Debug)]
pub struct ConnectionHandler {
    session: Arc<ConnectionSession>,
    service: RpcService,
    processor: MessageProcessor,
    queued: mpsc::Receiver<OutboundItem>,
    /// Most queued notifications taken at once (see [`Self::take_queued`]).
    batch_limit: usize,
}

impl ConnectionHandler {
    /// A new connection over `transport`, routing through `service`.
    /// Queued notifications are taken at most `batch_limit` at a time.
    pub fn new(
        transport: Transport,
        service: RpcService,
        processor: MessageProcessor,
        batch_limit: usize,
    ) -> Self {
        let (tx, queued) = mpsc::channel(OUTBOUND_QUEUE);
        Self {
            session: Arc::new(ConnectionSession::new(transport, tx)),
            service,
            processor,
            queued,
            batch_limit,
        }
    }

    /// The connection's state.
    pub fn session(&self) -> &Arc<ConnectionSession> {
        &self.session
    }

    /// Waits for the next queued notification. Cancel-safe.
    pub async fn next_queued(&mut self) -> Option<OutboundItem> {
        let item = self.queued.recv().await;
        if let Some(item) = &item {
            self.taken(item);
        }
        item
    }

    /// Moves the notifications already queued to `out`, until `out` holds
    /// the batch limit (so a flood of notifications cannot hold the
    /// connection there).
    pub fn take_queued(&mut self, out: &mut Vec<OutboundItem>) {
        while out.len() < self.batch_limit {
            match self.queued.try_recv() {
                Ok(item) => {
                    self.taken(&item);
                    out.push(item);
                }
                Err(_) => break,
            }
        }
    }

    /// Whether a turn this connection started is still owed its
    /// `turn/completed` (see [`ConnectionSession::owe_turn`]): it is
    /// settled once taken from the queue, to be written with the batch
    /// being gathered.
    pub fn owes_turns(&self) -> bool {
        self.session.owes_turns()
    }

    /// Settles the turn `item` ends, if it ends one.
    fn taken(&self, item: &OutboundItem) {
        if let Some(turn_id) = &item.ends_turn {
            self.session.settle_turn(turn_id);
        }
    }

    /// Handles one frame (a stdio line, a WebSocket text message) and
    /// appends what to write, in order, to `out`: the thread notifications
    /// queued while it was handled (they happened first), the
    /// notifications its handlers sent, then its reply, if it has one.
    pub async fn handle_frame(&mut self, bytes: &[u8], out: &mut Vec<OutboundItem>) {
        let reply = self.process_frame(bytes).await;
        // Bounded on its own, whatever `out` already holds.
        let mut earlier = Vec::new();
        self.take_queued(&mut earlier);
        out.append(&mut earlier);
        self.session.take_notices(out);
        out.extend(reply);
    }

    /// Starts ending the connection's subscriptions (see
    /// [`ConnectionSession::close_subscriptions`]). Drive it with
    /// [`Self::next_while_closing`], which hands over the notifications the
    /// forwarders still queue meanwhile.
    pub fn start_closing(&self, graceful: bool) -> Closing {
        let session = Arc::clone(&self.session);
        Box::pin(async move {
            session
                .close_subscriptions(graceful, EVENT_DRAIN_TIMEOUT)
                .await;
        })
    }

    /// The next notification queued while `closing` runs; `None` once it
    /// has finished (what is still queued then is left for
    /// [`Self::take_queued`]).
    pub async fn next_while_closing(&mut self, closing: &mut Closing) -> Option<OutboundItem> {
        let item = tokio::select! {
            () = closing => None,
            Some(item) = self.queued.recv() => Some(item),
        };
        if let Some(item) = &item {
            self.taken(item);
        }
        item
    }

    /// Appends an error reply with a `null` id to `out` (for input that
    /// never became a message: too large, binary...).
    pub fn reject(&self, error: ErrorObject, out: &mut Vec<OutboundItem>) {
        out.push(OutboundItem::message(
            Outgoing::Error { id: None, error }.to_json(),
        ));
    }

    async fn process_frame(&mut self, bytes: &[u8]) -> Option<OutboundItem> {
        let frame = match parse_frame(bytes) {
            Ok(frame) => frame,
            Err(error) => {
                tracing::debug!(connection = self.session.id(), %error.message, "unparseable message");
                return Some(OutboundItem::message(
                    Outgoing::Error { id: None, error }.to_json(),
                ));
            }
        };
        match frame {
            Frame::Single(incoming) => {
                let reply = self.process_incoming(incoming).await?;
                Some(OutboundItem {
                    text: reply.message.to_json(),
                    spans: reply.span.into_iter().collect(),
                    ends_turn: None,
                })
            }
            Frame::Batch(items) => {
                let mut text = Vec::with_capacity(128 * items.len());
                let mut spans = Vec::with_capacity(items.len());
                for incoming in items {
                    if let Some(reply) = self.process_incoming(incoming).await {
                        text.push(if text.is_empty() { b'[' } else { b',' });
                        reply.message.write_json(&mut text);
                        spans.extend(reply.span);
                    }
                }
                // A batch of notifications only gets no reply at all.
                (!text.is_empty()).then(|| {
                    text.push(b']');
                    OutboundItem {
                        // Serialized JSON is UTF-8.
                        text: String::from_utf8(text).unwrap_or_default(),
                        spans,
                        ends_turn: None,
                    }
                })
            }
        }
    }

    async fn process_incoming(&mut self, incoming: Incoming) -> Option<TracedReply> {
        match incoming {
            Incoming::Request(request) => {
                let call = RpcCall {
                    request,
                    session: Arc::clone(&self.session),
                };
                let reply: Result<TracedReply, Infallible> = match self.service.ready().await {
                    Ok(service) => service.call(call).await,
                    Err(never) => match never {},
                };
                match reply {
                    Ok(reply) => Some(reply),
                    Err(never) => match never {},
                }
            }
            Incoming::Notification(notification) => {
                self.processor
                    .handle_notification(notification, &self.session);
                None
            }
            Incoming::Response { id } => {
                tracing::debug!(
                    connection = self.session.id(),
                    ?id,
                    "ignoring response from client"
                );
                None
            }
            Incoming::Invalid { id, error } => Some(TracedReply {
                message: Outgoing::Error { id, error },
                span: None,
            }),
        }
    }
}
