//! Core events to client notifications.
//!
//! A connection subscribed to a thread runs one forwarder task for it. The
//! forwarder turns each core [`Event`] into its typed notification
//! ([`crate::wire::notification`]), stamps the envelope's `trace` with the
//! turn span's context and writes it straight to JSON text (no `Value`
//! tree). Events hold no span: the turn span is core's to end, whether or
//! not anyone is listening.

use skein_app_server_protocol::OutgoingNotification;
use skein_core::EventReceiver;
use skein_protocol::{Event, EventMsg};
use tokio::sync::mpsc;

use crate::session::OutboundItem;

/// The notification for a core event, stamped with the event's trace
/// context, or `None` for internal events.
pub fn notification_for(mut event: Event) -> Option<OutgoingNotification> {
    let trace = event.trace.take();
    crate::wire::notification(event)
        .map(|notification| OutgoingNotification::with_trace(notification, trace))
}

/// Forwards a thread's events to a connection until the thread shuts down,
/// the connection goes away, or the task is aborted (unsubscribe).
///
/// Waits for room in the connection's outbound queue: meanwhile core keeps
/// the events in this subscription's own queue, merging text deltas, so a
/// client that keeps reading receives everything, in order. A client that
/// stops reading is ended by its writer's stall timeout.
pub async fn forward_events(mut events: EventReceiver, outbound: mpsc::Sender<OutboundItem>) {
    while let Some(event) = events.recv().await {
        let ends_turn = match &event.msg {
            EventMsg::TurnCompleted { turn_id, .. } => Some(turn_id.clone()),
            _ => None,
        };
        let Some(message) = notification_for(event) else {
            // ShutdownComplete: nothing follows.
            return;
        };
        let item = OutboundItem {
            text: message.to_json(),
            spans: Vec::new(),
            ends_turn,
        };
        if outbound.send(item).await.is_err() {
            return;
        }
    }
}
