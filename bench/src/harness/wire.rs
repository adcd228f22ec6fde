//! The bytes the harness sends, and the little it reads back.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};

use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::Value;

/// `initialize` params, the same on every connection to every server.
pub const INITIALIZE_PARAMS: &str = r#"{"clientInfo":{"name":"skein-bench","version":"0.1.0"}}"#;

/// Request ids are unique within a run: the connection index in the high
/// 32 bits, a per-connection sequence (0 = `initialize`) in the low ones.
pub fn request_id(connection: usize, seq: u64) -> u64 {
    ((connection as u64) << 32) | seq
}

/// A fast pseudo-random generator for trace and span ids (xorshift64*).
#[derive(Debug)]
pub struct Ids(u64);

impl Ids {
    /// A generator seeded from the OS-randomized hasher.
    pub fn new() -> Self {
        let mut hasher = RandomState::new().build_hasher();
        hasher.write_u32(std::process::id());
        Self(hasher.finish() | 1)
    }

    /// The next non-zero value.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d).max(1)
    }
}

/// One request line/frame: `{"jsonrpc","id","method","params","trace"}`
/// with a fresh random trace id and parent span id, and `flags` (`01`
/// sampled, `00` not).
pub fn request(ids: &mut Ids, id: u64, method: &str, params: &str, flags: &str) -> String {
    format!(
        r#"{{"jsonrpc":"2.0","id":{id},"method":"{method}","params":{params},"trace":{{"traceparent":"00-{:016x}{:016x}-{:016x}-{flags}"}}}}"#,
        ids.next_u64(),
        ids.next_u64(),
        ids.next_u64()
    )
}

/// The parts of a server message the load loops look at, parsed without
/// building the result.
#[derive(Debug, Deserialize)]
pub struct Reply {
    /// Response id (absent on notifications).
    pub id: Option<u64>,
    /// Present on errors.
    pub error: Option<Value>,
    /// Present on success; skipped unread.
    #[allow(dead_code)]
    pub result: Option<IgnoredAny>,
}

impl Reply {
    /// Parses a server message.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        serde_json::from_str(text)
            .map_err(|e| anyhow::anyhow!("unreadable server message ({e}): {}", shorten(text)))
    }
}

/// The first 300 characters of `text`, for error messages.
pub fn shorten(text: &str) -> String {
    let mut out: String = text.chars().take(300).collect();
    if out.len() < text.len() {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_json_with_a_valid_carrier() {
        let mut ids = Ids::new();
        let text = request(&mut ids, request_id(3, 9), "model/list", "{}", "01");
        let value: Value = serde_json::from_str(&text).expect("request is JSON");
        assert_eq!(value["id"], (3u64 << 32) | 9);
        assert_eq!(value["method"], "model/list");
        let traceparent = value["trace"]["traceparent"].as_str().expect("carrier");
        let parts: Vec<&str> = traceparent.split('-').collect();
        assert_eq!(parts.len(), 4, "{traceparent}");
        assert_eq!(
            (parts[0], parts[1].len(), parts[2].len(), parts[3]),
            ("00", 32, 16, "01")
        );
    }
}
