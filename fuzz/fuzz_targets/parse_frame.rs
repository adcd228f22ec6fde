//! The frame parser and classifier on any bytes: never panics, and every
//! request or invalid message whose JSON can be read is answered with the
//! id it was sent with.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use skein_app_server_protocol::{ErrorObject, Frame, Incoming, Outgoing, parse_frame};

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
    };
    let answered: Value = serde_json::from_str(&answer.to_json()).expect("answers are JSON");
    let body = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    if let Ok(Value::Object(sent)) = serde_json::from_slice::<Value>(body)
        && let Some(sent_id) = sent.get("id")
        && (sent_id.is_number() || sent_id.is_string())
    {
        assert_eq!(&answered["id"], sent_id, "the answer must echo the id");
    }
});
