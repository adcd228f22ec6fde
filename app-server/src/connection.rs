//! What every connection does with an inbound frame, whatever the
//! transport: parse, route each message (each batch element on its own)
//! through the traced service, and queue the reply.
//!
//! Messages of one connection are handled one after another, in arrival
//! order; connections run concurrently. That keeps per-connection state
//! (`initialize` first) simple and needs no task per request.

use std::convert::Infallible;
use std::sync::Arc;

use skein_app_server_protocol::{ErrorObject, Frame, Incoming, Outgoing, parse_frame};
use tower::{Service, ServiceExt};

use crate::processor::MessageProcessor;
use crate::session::{ConnectionSession, OutboundItem};
use crate::tracing_layer::{RequestTracing, RpcCall, TracedReply};

/// The service every request goes through: the router wrapped in request
/// tracing.
pub type RpcService = RequestTracing<MessageProcessor>;

/// Handles inbound frames for one connection.
#[derive(Debug)]
pub struct ConnectionHandler {
    session: Arc<ConnectionSession>,
    service: RpcService,
    processor: MessageProcessor,
}

impl ConnectionHandler {
    /// A handler for `session`, routing through `service`.
    pub fn new(
        session: Arc<ConnectionSession>,
        service: RpcService,
        processor: MessageProcessor,
    ) -> Self {
        Self {
            session,
            service,
            processor,
        }
    }

    /// The connection's state.
    pub fn session(&self) -> &Arc<ConnectionSession> {
        &self.session
    }

    /// Handles one frame (a stdio line, a WebSocket text message) and
    /// appends what to write, in order, to `out`: the notifications its
    /// handlers sent, then its reply, if it has one.
    pub async fn handle_frame(&mut self, bytes: &[u8], out: &mut Vec<OutboundItem>) {
        let reply = self.process_frame(bytes).await;
        self.session.take_notices(out);
        out.extend(reply);
    }

    /// Appends an error reply with a `null` id to `out` (for input that
    /// never became a message: too large, binary...).
    pub fn reject(&self, error: ErrorObject, out: &mut Vec<OutboundItem>) {
        out.push(OutboundItem {
            text: Outgoing::Error { id: None, error }.to_json(),
            spans: Vec::new(),
        });
    }

    async fn process_frame(&mut self, bytes: &[u8]) -> Option<OutboundItem> {
        let frame = match parse_frame(bytes) {
            Ok(frame) => frame,
            Err(error) => {
                tracing::debug!(connection = self.session.id(), %error.message, "unparseable message");
                return Some(OutboundItem {
                    text: Outgoing::Error { id: None, error }.to_json(),
                    spans: Vec::new(),
                });
            }
        };
        match frame {
            Frame::Single(incoming) => {
                let reply = self.process_incoming(incoming).await?;
                Some(OutboundItem {
                    text: reply.message.to_json(),
                    spans: vec![reply.span],
                })
            }
            Frame::Batch(items) => {
                let mut text = Vec::with_capacity(128 * items.len());
                let mut spans = Vec::with_capacity(items.len());
                for incoming in items {
                    if let Some(reply) = self.process_incoming(incoming).await {
                        text.push(if spans.is_empty() { b'[' } else { b',' });
                        reply.message.write_json(&mut text);
                        spans.push(reply.span);
                    }
                }
                // A batch of notifications only gets no reply at all.
                (!spans.is_empty()).then(|| {
                    text.push(b']');
                    OutboundItem {
                        // Serialized JSON is UTF-8.
                        text: String::from_utf8(text).unwrap_or_default(),
                        spans,
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
                span: tracing::Span::none(),
            }),
        }
    }
}
