//! The streaming scenario: one long turn of N `item/agentMessage/delta`
//! notifications to one actively reading client.

use std::time::Instant;

use anyhow::bail;
use serde_json::Value;
use skein_bench::INITIALIZE;

use super::stdio::{Conn, initialize};
use super::wire::{Ids, request, request_id, shorten};

/// What the streaming run saw. A failed run still reports how far it got.
#[derive(Debug)]
pub struct StreamResult {
    /// Deltas received.
    pub deltas: usize,
    /// Deltas received per second, from sending `turn/start` to
    /// `turn/completed` (or to the failure).
    pub deltas_per_sec: f64,
    /// `None` when the turn completed with exactly the input streamed back,
    /// in order; otherwise what went wrong.
    pub failure: Option<String>,
    /// Every answered request: (method, id).
    pub answered: Vec<(&'static str, u64)>,
}

/// The input of `words` words: `w0 w1 ...`. The echo model streams it
/// back one word per delta.
pub fn input_text(words: usize) -> String {
    let mut text = String::with_capacity(words * 8);
    for i in 0..words {
        if i > 0 {
            text.push(' ');
        }
        text.push('w');
        text.push_str(&i.to_string());
    }
    text
}

/// Runs one turn of `words` words over `conn`.
pub async fn run(mut conn: Conn, words: usize, flags: &str) -> anyhow::Result<StreamResult> {
    let mut ids = Ids::new();
    initialize(&mut conn, &mut ids, flags, None).await?;
    let mut answered = vec![(INITIALIZE, request_id(0, 0))];

    let start_id = request_id(0, 1);
    conn.send(request(&mut ids, start_id, "thread/start", "{}", flags))
        .await?;
    let thread_id = loop {
        let message = parse(&conn.recv().await?)?;
        if message.get("id").and_then(Value::as_u64) != Some(start_id) {
            continue;
        }
        if let Some(error) = message.get("error") {
            bail!("thread/start failed: {error}");
        }
        match message.pointer("/result/thread/id").and_then(Value::as_str) {
            Some(id) => break id.to_owned(),
            None => bail!("thread/start result lacks thread.id: {message}"),
        }
    };
    answered.push(("thread/start", start_id));

    let input = input_text(words);
    let params = serde_json::json!({
        "threadId": thread_id,
        "input": [{"type": "text", "text": input}],
    })
    .to_string();
    let turn_id = request_id(0, 2);
    let started = Instant::now();
    conn.send(request(&mut ids, turn_id, "turn/start", &params, flags))
        .await?;

    let mut text = String::with_capacity(input.len());
    let mut deltas = 0usize;
    let failure = loop {
        let raw = match conn.recv().await {
            Ok(raw) => raw,
            Err(err) => break Some(format!("{err:#} after {deltas} of {words} deltas")),
        };
        let message = parse(&raw)?;
        match message.get("method").and_then(Value::as_str) {
            Some("item/agentMessage/delta") => {
                match message.pointer("/params/delta").and_then(Value::as_str) {
                    Some(delta) => text.push_str(delta),
                    None => break Some(format!("delta without text: {}", shorten(&raw))),
                }
                deltas += 1;
            }
            Some("turn/completed") => {
                let status = message
                    .pointer("/params/turn/status")
                    .and_then(Value::as_str)
                    .unwrap_or("?");
                break if status != "completed" {
                    Some(format!(
                        "turn/completed with status {status}: {}",
                        shorten(&raw)
                    ))
                } else if text != input {
                    Some(format!(
                        "streamed text differs from the input ({deltas} deltas, {} of {} bytes)",
                        text.len(),
                        input.len()
                    ))
                } else {
                    None
                };
            }
            Some(_) => {}
            None => {
                if message.get("id").and_then(Value::as_u64) == Some(turn_id) {
                    if let Some(error) = message.get("error") {
                        break Some(format!("turn/start failed: {error}"));
                    }
                    answered.push(("turn/start", turn_id));
                }
            }
        }
    };
    let secs = started.elapsed().as_secs_f64();
    Ok(StreamResult {
        deltas,
        deltas_per_sec: deltas as f64 / secs,
        failure,
        answered,
    })
}

fn parse(text: &str) -> anyhow::Result<Value> {
    serde_json::from_str(text)
        .map_err(|e| anyhow::anyhow!("unreadable server message ({e}): {}", shorten(text)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_has_the_requested_number_of_words() {
        assert_eq!(input_text(3), "w0 w1 w2");
        assert_eq!(input_text(100_000).split_whitespace().count(), 100_000);
        assert_eq!(input_text(0), "");
    }
}
