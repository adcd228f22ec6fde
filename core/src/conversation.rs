//! A thread's conversation as a model sees it, and the durable items of a
//! turn that it is rebuilt from.
//!
//! A turn's history record keeps the user's input and, after it, the
//! turn's [`TurnItem`]s in order: each model round's agent message followed
//! by the tool calls that round asked for, with their results. Replaying
//! the records gives back the exact [`Message`] sequence, so a resumed
//! thread continues with the model where it stopped.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use skein_protocol::{TurnKind, TurnStatus};

use crate::records::{TurnItem, TurnRecord};

/// The user message of a review turn sent to a real model.
pub const REVIEW_PROMPT: &str =
    "Review the conversation so far: what was asked, what was done, and what is left.";
/// The user message of a compaction turn sent to a real model.
pub const COMPACT_PROMPT: &str =
    "Summarize the conversation so far concisely, keeping every fact needed to continue it.";

/// One tool call a model asked for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolCall {
    /// The provider's id of the call.
    pub id: String,
    /// The tool's name as the model saw it.
    pub name: String,
    /// The arguments, as the JSON text the model wrote.
    pub arguments: String,
}

/// One message of a conversation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "role", rename_all = "camelCase")]
pub enum Message {
    /// What the user said.
    User {
        /// The text.
        text: String,
    },
    /// What the model answered, with the tool calls it asked for.
    Assistant {
        /// The text (may be empty when it only called tools).
        text: String,
        /// The tool calls.
        tool_calls: Vec<ToolCall>,
    },
    /// A tool call's result.
    Tool {
        /// The call answered.
        call_id: String,
        /// The result as text.
        content: String,
    },
}

/// The text a model receives for a tool call's outcome: the text content
/// of the result (other content as JSON), or the error.
pub fn tool_result_text(result: Option<&Value>, error: Option<&str>) -> String {
    if let Some(error) = error {
        return format!("error: {error}");
    }
    let Some(result) = result else {
        return "error: the tool call did not finish".to_owned();
    };
    let parts: Vec<String> = result
        .get("content")
        .and_then(Value::as_array)
        .map(|content| {
            content
                .iter()
                .map(|c| match (c.get("type"), c.get("text")) {
                    (Some(t), Some(Value::String(text))) if t == "text" => text.clone(),
                    _ => c.to_string(),
                })
                .collect()
        })
        .unwrap_or_default();
    let text = if parts.is_empty() {
        result
            .get("structuredContent")
            .map(Value::to_string)
            .unwrap_or_default()
    } else {
        parts.join("\n")
    };
    if result.get("isError").and_then(Value::as_bool) == Some(true) {
        format!("error: {text}")
    } else {
        text
    }
}

/// The arguments of a recorded tool call as the JSON text a model wrote.
pub fn arguments_text(arguments: &Value) -> String {
    match arguments {
        Value::String(raw) => raw.clone(),
        other => other.to_string(),
    }
}

/// Arguments as recorded: the parsed JSON, or the raw text when it is
/// not valid JSON.
fn arguments_value(arguments: &str) -> Value {
    serde_json::from_str(arguments).unwrap_or_else(|_| Value::String(arguments.to_owned()))
}

/// The message parts of an assistant answer, in the GenAI semantic
/// conventions' message schema.
fn assistant_parts(text: &str, tool_calls: &[ToolCall]) -> Vec<Value> {
    let mut parts = Vec::with_capacity(tool_calls.len() + 1);
    if !text.is_empty() {
        parts.push(json!({"type": "text", "content": text}));
    }
    for call in tool_calls {
        parts.push(json!({
            "type": "tool_call",
            "id": call.id,
            "name": call.name,
            "arguments": arguments_value(&call.arguments),
        }));
    }
    parts
}

/// `gen_ai.input.messages`: the conversation in the semantic conventions'
/// input-messages schema.
pub fn semconv_input_messages(messages: &[Message]) -> Value {
    Value::Array(
        messages
            .iter()
            .map(|m| match m {
                Message::User { text } => {
                    json!({"role": "user", "parts": [{"type": "text", "content": text}]})
                }
                Message::Assistant { text, tool_calls } => {
                    json!({"role": "assistant", "parts": assistant_parts(text, tool_calls)})
                }
                Message::Tool { call_id, content } => json!({"role": "tool", "parts": [
                    {"type": "tool_call_response", "id": call_id, "response": content}
                ]}),
            })
            .collect(),
    )
}

/// `gen_ai.output.messages`: the answer in the output-messages schema.
pub fn semconv_output_messages(text: &str, tool_calls: &[ToolCall], finish: &str) -> Value {
    json!([{
        "role": "assistant",
        "parts": assistant_parts(text, tool_calls),
        "finish_reason": finish,
    }])
}

/// `gen_ai.system_instructions` in the semantic conventions' schema.
pub fn semconv_system_instructions(instructions: &str) -> Value {
    json!([{"type": "text", "content": instructions}])
}

/// Appends a turn's items (after its user message) to `messages`.
pub fn push_items(messages: &mut Vec<Message>, items: &[TurnItem]) {
    let mut results = Vec::new();
    let flush = |messages: &mut Vec<Message>, results: &mut Vec<Message>| {
        messages.append(results);
    };
    for item in items {
        match item {
            TurnItem::UserMessage { text, .. } => {
                flush(messages, &mut results);
                messages.push(Message::User { text: text.clone() });
            }
            TurnItem::AgentMessage { text, .. } => {
                flush(messages, &mut results);
                messages.push(Message::Assistant {
                    text: text.clone(),
                    tool_calls: Vec::new(),
                });
            }
            TurnItem::McpToolCall {
                id,
                tool,
                arguments,
                result,
                error,
                ..
            } => {
                let call = ToolCall {
                    id: id.clone(),
                    name: tool.clone(),
                    arguments: arguments_text(arguments),
                };
                match messages.last_mut() {
                    Some(Message::Assistant { tool_calls, .. }) => tool_calls.push(call),
                    _ => messages.push(Message::Assistant {
                        text: String::new(),
                        tool_calls: vec![call],
                    }),
                }
                results.push(Message::Tool {
                    call_id: id.clone(),
                    content: tool_result_text(result.as_ref(), error.as_deref()),
                });
            }
        }
    }
    flush(messages, &mut results);
}

/// The user message that opens a turn of `kind`.
pub fn opening_message(kind: TurnKind, input: &str) -> Message {
    let text = match kind {
        TurnKind::Regular => input.to_owned(),
        TurnKind::Review => REVIEW_PROMPT.to_owned(),
        TurnKind::Compact => COMPACT_PROMPT.to_owned(),
    };
    Message::User { text }
}

/// The conversation of a thread's finished turns, oldest first.
pub fn conversation_of(turns: &[TurnRecord]) -> Vec<Message> {
    let mut messages = Vec::new();
    for turn in turns.iter().filter(|t| t.status != TurnStatus::InProgress) {
        messages.push(opening_message(turn.kind, &turn.input));
        if turn.items.is_empty() {
            if !turn.output.is_empty() {
                messages.push(Message::Assistant {
                    text: turn.output.clone(),
                    tool_calls: Vec::new(),
                });
            }
        } else {
            push_items(&mut messages, &turn.items);
        }
    }
    messages
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::ToolCallStatus;

    #[test]
    fn tool_calls_replay_between_their_message_and_the_next() {
        let items = vec![
            TurnItem::AgentMessage {
                id: "a1".into(),
                text: String::new(),
            },
            TurnItem::McpToolCall {
                id: "call_1".into(),
                server: "time".into(),
                tool: "get_current_time".into(),
                arguments: json!({"timezone": "UTC"}),
                status: ToolCallStatus::Completed,
                result: Some(json!({"content": [{"type": "text", "text": "12:00"}]})),
                error: None,
            },
            TurnItem::AgentMessage {
                id: "a2".into(),
                text: "It is noon.".into(),
            },
        ];
        let mut messages = vec![];
        push_items(&mut messages, &items);
        assert_eq!(
            messages,
            vec![
                Message::Assistant {
                    text: String::new(),
                    tool_calls: vec![ToolCall {
                        id: "call_1".into(),
                        name: "get_current_time".into(),
                        arguments: "{\"timezone\":\"UTC\"}".into(),
                    }],
                },
                Message::Tool {
                    call_id: "call_1".into(),
                    content: "12:00".into(),
                },
                Message::Assistant {
                    text: "It is noon.".into(),
                    tool_calls: vec![],
                },
            ]
        );
    }

    #[test]
    fn steered_input_replays_after_the_tool_results_of_its_round() {
        let items = vec![
            TurnItem::AgentMessage {
                id: "a1".into(),
                text: String::new(),
            },
            TurnItem::McpToolCall {
                id: "c1".into(),
                server: "s".into(),
                tool: "t".into(),
                arguments: json!({}),
                status: ToolCallStatus::Failed,
                result: None,
                error: Some("boom".into()),
            },
            TurnItem::UserMessage {
                id: "t-steer-1".into(),
                text: "also this".into(),
            },
        ];
        let mut messages = vec![];
        push_items(&mut messages, &items);
        assert_eq!(messages.len(), 3);
        assert_eq!(
            messages[1],
            Message::Tool {
                call_id: "c1".into(),
                content: "error: boom".into()
            }
        );
        assert_eq!(
            messages[2],
            Message::User {
                text: "also this".into()
            }
        );
    }

    #[test]
    fn error_results_are_marked() {
        let result = json!({"content": [{"type": "text", "text": "bad tz"}], "isError": true});
        assert_eq!(tool_result_text(Some(&result), None), "error: bad tz");
        assert_eq!(tool_result_text(None, Some("dead")), "error: dead");
    }
}
