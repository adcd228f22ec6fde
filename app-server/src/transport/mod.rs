//! Transports: how frames get in and out.
//!
//! - [`stdio`]: newline-delimited JSON on stdin/stdout.
//! - [`websocket`]: one JSON message per text frame, plus `GET /healthz`;
//!   [`auth`] checks its upgrades; over TCP or a Unix domain socket
//!   ([`unix`]).

pub mod auth;
pub mod stdio;
pub mod unfinished;
pub mod unix;
pub mod websocket;

use skein_app_server_protocol::ErrorObject;

/// The error for a message over the size limit.
pub fn too_large_error(limit: usize) -> ErrorObject {
    ErrorObject::invalid_request(format!(
        "message too large: the limit is {limit} bytes (set with --max-message-bytes)"
    ))
}
