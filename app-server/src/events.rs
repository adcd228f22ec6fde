//! Core events to client notifications.
//!
//! A connection subscribed to a thread runs one forwarder task for it. The
//! forwarder turns each [`CoreEvent`] into its notification, stamps the
//! envelope's `trace` with the turn span's context, and queues it together
//! with the event's span hold, so the turn span ends only after the
//! notification is written.

use serde_json::{Value, json};
use skein_app_server_protocol::Outgoing;
use skein_core::CoreEvent;
use skein_protocol::{Event, EventMsg, TurnStatus};
use std::sync::Arc;

use tokio::sync::{broadcast, mpsc, watch};

use crate::session::OutboundItem;

/// The notification for a core event, or `None` for internal events.
pub fn notification_for(event: &Event) -> Option<Outgoing> {
    let thread_id = event.thread_id.as_str();
    let (method, params) = match &event.msg {
        EventMsg::TurnStarted { turn_id, .. } => (
            "turn/started",
            json!({"threadId": thread_id, "turn": turn_json(turn_id, TurnStatus::InProgress, None)}),
        ),
        EventMsg::ItemStarted { turn_id, item_id } => (
            "item/started",
            json!({"threadId": thread_id, "turnId": turn_id,
                   "item": {"id": item_id, "type": "agentMessage", "text": ""}}),
        ),
        EventMsg::AgentMessageDelta {
            turn_id,
            item_id,
            delta,
        } => (
            "item/agentMessage/delta",
            json!({"threadId": thread_id, "turnId": turn_id, "itemId": item_id, "delta": delta}),
        ),
        EventMsg::ItemCompleted {
            turn_id,
            item_id,
            text,
        } => (
            "item/completed",
            json!({"threadId": thread_id, "turnId": turn_id,
                   "item": {"id": item_id, "type": "agentMessage", "text": text}}),
        ),
        EventMsg::McpToolCallStarted {
            turn_id,
            item_id,
            server,
            tool,
            arguments,
        } => (
            "item/started",
            json!({"threadId": thread_id, "turnId": turn_id,
                   "item": {"id": item_id, "type": "mcpToolCall", "server": server, "tool": tool,
                            "status": "inProgress", "arguments": arguments,
                            "result": null, "error": null}}),
        ),
        EventMsg::McpToolCallCompleted {
            turn_id,
            item_id,
            server,
            tool,
            arguments,
            status,
            result,
            error,
        } => (
            "item/completed",
            json!({"threadId": thread_id, "turnId": turn_id,
                   "item": {"id": item_id, "type": "mcpToolCall", "server": server, "tool": tool,
                            "status": status, "arguments": arguments, "result": result,
                            "error": error.as_ref().map(|message| json!({"message": message}))}}),
        ),
        EventMsg::TurnCompleted {
            turn_id,
            status,
            error,
            usage,
        } => (
            "turn/completed",
            json!({"threadId": thread_id,
                   "turn": turn_json(turn_id, *status, error.as_deref()),
                   "usage": usage}),
        ),
        EventMsg::ShutdownComplete => return None,
    };
    Some(Outgoing::Notification {
        method: method.to_owned(),
        params,
        trace: event.trace.clone(),
    })
}

fn turn_json(turn_id: &str, status: TurnStatus, error: Option<&str>) -> Value {
    let mut turn = json!({"id": turn_id, "status": status, "items": []});
    if let Some(message) = error {
        turn["error"] = json!({ "message": message });
    }
    turn
}

/// Forwards a thread's events to a connection until the thread shuts down,
/// the connection goes away, or the task is aborted (unsubscribe).
///
/// A client that reads so slowly that the thread's event buffer laps it
/// would silently miss notifications. Instead, the forwarder stops and
/// flags `overrun` with the reason, and the connection is ended with it:
/// the client learns it must reconnect and `thread/resume`.
pub async fn forward_events(
    mut events: broadcast::Receiver<CoreEvent>,
    outbound: mpsc::Sender<OutboundItem>,
    overrun: Arc<watch::Sender<Option<String>>>,
    connection: u64,
) {
    loop {
        match events.recv().await {
            Ok(CoreEvent { event, hold }) => {
                let Some(message) = notification_for(&event) else {
                    // ShutdownComplete: nothing follows.
                    return;
                };
                let item = OutboundItem {
                    text: message.to_value().to_string(),
                    spans: vec![hold],
                };
                if outbound.send(item).await.is_err() {
                    return;
                }
            }
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                tracing::warn!(
                    connection,
                    missed,
                    "client reads notifications too slowly; ending the connection"
                );
                overrun.send_replace(Some(format!(
                    "client too slow: {missed} notifications could not be delivered; \
                     reconnect and thread/resume"
                )));
                return;
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}
