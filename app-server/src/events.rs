//! Core events to client notifications.
//!
//! A connection subscribed to a thread runs one forwarder task for it. The
//! forwarder turns each core [`Event`] into its notification and stamps the
//! envelope's `trace` with the turn span's context. Events hold no span:
//! the turn span is core's to end, whether or not anyone is listening.

use serde_json::{Value, json};
use skein_app_server_protocol::Outgoing;
use skein_app_server_protocol::v2::ThreadStatus;
use skein_core::EventReceiver;
use skein_protocol::{Event, EventMsg, TurnStatus};
use tokio::sync::mpsc;

use crate::session::OutboundItem;
use crate::wire::{item_json, usage_breakdown};

/// The notification for a core event, or `None` for internal events.
pub fn notification_for(event: &Event) -> Option<Outgoing> {
    let thread_id = event.thread_id.as_str();
    let (method, params) = match &event.msg {
        EventMsg::TurnStarted { turn_id, .. } => (
            "turn/started",
            json!({"threadId": thread_id, "turn": turn_json(turn_id, TurnStatus::InProgress, None)}),
        ),
        EventMsg::ItemStarted {
            turn_id,
            item_id,
            kind,
        } => (
            "item/started",
            json!({"threadId": thread_id, "turnId": turn_id,
                   "item": item_json(item_id, *kind, ""),
                   "startedAtMs": event.at_ms}),
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
            kind,
            text,
        } => (
            "item/completed",
            json!({"threadId": thread_id, "turnId": turn_id,
                   "item": item_json(item_id, *kind, text),
                   "completedAtMs": event.at_ms}),
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
                            "result": null, "error": null},
                   "startedAtMs": event.at_ms}),
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
                            "error": error.as_ref().map(|message| json!({"message": message}))},
                   "completedAtMs": event.at_ms}),
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
        EventMsg::ThreadStatusChanged { status } => (
            "thread/status/changed",
            json!({"threadId": thread_id, "status": ThreadStatus::from(*status)}),
        ),
        EventMsg::TokenUsageUpdated {
            turn_id,
            last,
            total,
        } => (
            "thread/tokenUsage/updated",
            json!({"threadId": thread_id, "turnId": turn_id,
                   "tokenUsage": {"total": usage_breakdown(*total),
                                  "last": usage_breakdown(*last),
                                  "modelContextWindow": null}}),
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
/// Waits for room in the connection's outbound queue: meanwhile core keeps
/// the events in this subscription's own queue, merging text deltas, so a
/// client that keeps reading receives everything, in order. A client that
/// stops reading is ended by its writer's stall timeout.
pub async fn forward_events(mut events: EventReceiver, outbound: mpsc::Sender<OutboundItem>) {
    while let Some(event) = events.recv().await {
        let Some(message) = notification_for(&event) else {
            // ShutdownComplete: nothing follows.
            return;
        };
        let ends_turn = match event.msg {
            EventMsg::TurnCompleted { turn_id, .. } => Some(turn_id),
            _ => None,
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
