//! The frame parser and classifier on any bytes: never panics, and every
//! request or invalid message whose JSON can be read is answered with the
//! id it was sent with (a numeric id as the very text it was sent as).
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use serde::de::IgnoredAny;
use serde_json::value::RawValue;
use skein_app_server_protocol::{ErrorObject, Frame, Incoming, Outgoing, parse_frame};

/// An object's members as their JSON text (the last of duplicates wins).
type Members = BTreeMap<String, Box<RawValue>>;

fuzz_target!(|bytes: &[u8]| {
    let Ok(frame) = parse_frame(bytes) else {
        return;
    };
    let Frame::Single(incoming) = frame else {
        return;
    };
    // Notifications and the client's responses get no answer.
    let id = match &incoming {
        Incoming::Request(request) => Some(request.id.clone()),
        Incoming::Invalid { id, .. } => id.clone(),
        Incoming::Notification(_) | Incoming::Response { .. } => return,
    };
    let answer = Outgoing::Error {
        id,
        error: ErrorObject::internal("fuzz"),
    }
    .to_json();
    serde_json::from_str::<IgnoredAny>(&answer).expect("answers are JSON");
    let body = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    if body.trim_ascii_start().first() == Some(&b'{')
        && let Ok(sent) = serde_json::from_slice::<Members>(body)
        && let Some(sent_id) = sent.get("id").map(|id| id.get())
    {
        let answered: Members = serde_json::from_str(&answer).expect("an answer is an object");
        let answered_id = answered.get("id").map_or("null", |id| id.get());
        match sent_id.as_bytes().first() {
            Some(b'-' | b'0'..=b'9') => {
                assert_eq!(answered_id, sent_id, "a numeric id comes back as sent");
            }
            Some(b'"') => {
                // The same string; its escapes may be written differently.
                if let Ok(sent) = serde_json::from_str::<String>(sent_id) {
                    let answered: String = serde_json::from_str(answered_id)
                        .expect("a string id comes back as a string");
                    assert_eq!(answered, sent, "the answer must echo the id");
                }
            }
            _ => {}
        }
    }
});
