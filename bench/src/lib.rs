//! Shared parts of the request-path benchmark: the canned results the
//! comparison servers answer with, and the process-limit helper.
//!
//! The harness (`skein-bench`) asks the real `skein` binary for its
//! `initialize` and `model/list` results once, writes them to a file, and
//! starts every comparison server (`bench-jsonrpsee`, `bench-ceiling`,
//! `bench-line-echo`) with `--results FILE`. So all servers answer with the
//! very JSON Skein returns, by construction rather than by copy.

use std::path::Path;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The JSON-RPC version string.
pub const JSONRPC_VERSION: &str = "2.0";
/// `initialize`.
pub const INITIALIZE: &str = "initialize";
/// `model/list`.
pub const MODEL_LIST: &str = "model/list";
/// JSON-RPC "method not found".
pub const METHOD_NOT_FOUND: i64 = -32601;
/// JSON-RPC "parse error".
pub const PARSE_ERROR: i64 = -32700;

/// The results every server answers with, as captured from Skein.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Canned {
    /// Result of `initialize`.
    pub initialize: Value,
    /// Result of `model/list`.
    pub model_list: Value,
}

impl Canned {
    /// Reads the results file the harness wrote.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading canned results {}", path.display()))?;
        serde_json::from_str(&text)
            .with_context(|| format!("parsing canned results {}", path.display()))
    }

    /// Writes the results file.
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        let text = serde_json::to_string(self)?;
        std::fs::write(path, text)
            .with_context(|| format!("writing canned results {}", path.display()))
    }

    /// The result for `method`, or `None` for a method no server knows.
    pub fn result_for(&self, method: &str) -> Option<&Value> {
        match method {
            INITIALIZE => Some(&self.initialize),
            MODEL_LIST => Some(&self.model_list),
            _ => None,
        }
    }

    /// The serialized response line (no newline) to one request frame, as
    /// the hand-written servers send it: parse the frame as JSON, look the
    /// method up, serialize `{"jsonrpc","id","result"}` (or an error).
    /// Returns `None` for a notification (no `id`), which gets no answer.
    pub fn respond(&self, frame: &str) -> Option<String> {
        let request: Value = match serde_json::from_str(frame) {
            Ok(value) => value,
            Err(err) => {
                return Some(error_text(
                    &Value::Null,
                    PARSE_ERROR,
                    &format!("parse error: {err}"),
                ));
            }
        };
        let id = request.get("id")?;
        let method = request.get("method").and_then(Value::as_str).unwrap_or("");
        let text = match self.result_for(method) {
            Some(result) => serde_json::to_string(&Success {
                jsonrpc: JSONRPC_VERSION,
                id,
                result,
            }),
            None => {
                return Some(error_text(
                    id,
                    METHOD_NOT_FOUND,
                    &format!("method not found: {method}"),
                ));
            }
        };
        // Serializing plain `Value`s cannot fail.
        text.ok()
    }
}

#[derive(Serialize)]
struct Success<'a> {
    jsonrpc: &'static str,
    id: &'a Value,
    result: &'a Value,
}

#[derive(Serialize)]
struct Failure<'a> {
    jsonrpc: &'static str,
    id: &'a Value,
    error: ErrorBody<'a>,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    code: i64,
    message: &'a str,
}

fn error_text(id: &Value, code: i64, message: &str) -> String {
    serde_json::to_string(&Failure {
        jsonrpc: JSONRPC_VERSION,
        id,
        error: ErrorBody { code, message },
    })
    .unwrap_or_default()
}

/// Raises this process's soft `RLIMIT_NOFILE` to its hard limit (children
/// inherit it). Returns the new soft limit.
pub fn raise_nofile_limit() -> std::io::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        limit.rlim_cur = limit.rlim_max;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(limit.rlim_cur)
}

/// Prints the line the harness waits for, `listening on ws://ADDR`, to
/// stderr (the same line `skein serve` prints).
pub fn announce(addr: std::net::SocketAddr) {
    eprintln!("listening on ws://{addr}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn canned() -> Canned {
        Canned {
            initialize: json!({"userAgent": "skein/0"}),
            model_list: json!({"data": [{"id": "echo"}], "nextCursor": null}),
        }
    }

    #[test]
    fn respond_answers_known_methods_with_the_canned_result() {
        let text = canned()
            .respond(r#"{"jsonrpc":"2.0","id":7,"method":"model/list","params":{},"trace":{"traceparent":"x"}}"#)
            .expect("a request gets an answer");
        let value: Value = serde_json::from_str(&text).expect("response is JSON");
        assert_eq!(
            value,
            json!({"jsonrpc": "2.0", "id": 7, "result": canned().model_list})
        );
    }

    #[test]
    fn respond_reports_unknown_methods_and_bad_json() {
        let unknown: Value = serde_json::from_str(
            &canned()
                .respond(r#"{"jsonrpc":"2.0","id":"a","method":"nope"}"#)
                .expect("answer"),
        )
        .expect("JSON");
        assert_eq!(unknown["error"]["code"], METHOD_NOT_FOUND);
        assert_eq!(unknown["id"], "a");
        let bad: Value =
            serde_json::from_str(&canned().respond("{not json").expect("answer")).expect("JSON");
        assert_eq!(bad["error"]["code"], PARSE_ERROR);
    }

    #[test]
    fn notifications_get_no_answer() {
        assert_eq!(
            canned().respond(r#"{"jsonrpc":"2.0","method":"initialized"}"#),
            None
        );
    }
}
