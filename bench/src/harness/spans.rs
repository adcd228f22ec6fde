//! The store check after traced runs: exactly one request span
//! (`app_server.request`, kind SERVER, named by method) per answered
//! request, matched by `rpc.request_id`.

use std::collections::{BTreeMap, HashMap};
use std::io::BufRead as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde_json::Value;

/// OTLP span kind SERVER.
const KIND_SERVER: i64 = 2;
/// The request id attribute of request spans.
const RPC_REQUEST_ID: &str = "rpc.request_id";

/// Counts for one method.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MethodCount {
    /// Requests the harness got an answer to.
    pub answered: usize,
    /// Request spans in the store.
    pub spans: usize,
    /// Answered requests without a span.
    pub missing: usize,
    /// Answered requests with more than one span.
    pub duplicated: usize,
    /// Spans of requests the harness never saw answered.
    pub unexpected: usize,
}

/// The check of one run.
#[derive(Clone, Debug)]
pub struct SpanCheck {
    /// Per method.
    pub methods: BTreeMap<String, MethodCount>,
}

impl SpanCheck {
    /// Whether every answered request has exactly one span and no span is
    /// unaccounted for.
    pub fn holds(&self) -> bool {
        self.methods
            .values()
            .all(|m| m.missing == 0 && m.duplicated == 0 && m.unexpected == 0)
    }

    /// One line: `model/list 1234/1234 …`.
    pub fn summary(&self) -> String {
        self.methods
            .iter()
            .map(|(method, m)| {
                let mut s = format!("{method} {} spans / {} answered", m.spans, m.answered);
                if m.missing > 0 {
                    s.push_str(&format!(", {} missing", m.missing));
                }
                if m.duplicated > 0 {
                    s.push_str(&format!(", {} duplicated", m.duplicated));
                }
                if m.unexpected > 0 {
                    s.push_str(&format!(", {} unexpected", m.unexpected));
                }
                s
            })
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// Checks the store in `dir` against the answered requests.
pub fn check(dir: &Path, answered: &[(&'static str, u64)]) -> anyhow::Result<SpanCheck> {
    let mut found: HashMap<(String, String), usize> = HashMap::new();
    let mut files = Vec::new();
    collect_jsonl(dir, &mut files)?;
    for file in files {
        let reader = std::io::BufReader::new(
            std::fs::File::open(&file).with_context(|| format!("opening {}", file.display()))?,
        );
        for (index, line) in reader.lines().enumerate() {
            let line = line?;
            if line.trim().is_empty() {
                continue;
            }
            let data: Value = serde_json::from_str(&line)
                .with_context(|| format!("{}:{}: not a JSON line", file.display(), index + 1))?;
            for span in spans_of(&data) {
                if span.get("kind").and_then(Value::as_i64) != Some(KIND_SERVER) {
                    continue;
                }
                let name = span.get("name").and_then(Value::as_str).unwrap_or("");
                let id = request_id_of(span).unwrap_or_default();
                *found.entry((name.to_owned(), id)).or_default() += 1;
            }
        }
    }

    let mut methods: BTreeMap<String, MethodCount> = BTreeMap::new();
    let mut expected: HashMap<(String, String), ()> = HashMap::with_capacity(answered.len());
    for (method, id) in answered {
        let key = ((*method).to_owned(), id.to_string());
        let entry = methods.entry((*method).to_owned()).or_default();
        entry.answered += 1;
        match found.get(&key).copied().unwrap_or(0) {
            0 => entry.missing += 1,
            1 => {}
            _ => entry.duplicated += 1,
        }
        expected.insert(key, ());
    }
    for ((method, id), count) in &found {
        let entry = methods.entry(method.clone()).or_default();
        entry.spans += count;
        if !expected.contains_key(&(method.clone(), id.clone())) {
            entry.unexpected += count;
        }
    }
    Ok(SpanCheck { methods })
}

fn spans_of(data: &Value) -> Vec<&Value> {
    fn list<'a>(v: &'a Value, key: &str) -> &'a [Value] {
        v.get(key)
            .and_then(Value::as_array)
            .map_or(&[], Vec::as_slice)
    }
    list(data, "resourceSpans")
        .iter()
        .flat_map(|r| list(r, "scopeSpans"))
        .flat_map(|s| list(s, "spans"))
        .collect()
}

fn request_id_of(span: &Value) -> Option<String> {
    let attributes = span.get("attributes")?.as_array()?;
    let value = attributes
        .iter()
        .find(|a| a.get("key").and_then(Value::as_str) == Some(RPC_REQUEST_ID))?
        .get("value")?;
    if let Some(s) = value.get("stringValue").and_then(Value::as_str) {
        return Some(s.to_owned());
    }
    value.get("intValue").map(|i| match i {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    })
}

fn collect_jsonl(dir: &Path, out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            collect_jsonl(&path, out)?;
        } else if path.extension().is_some_and(|ext| ext == "jsonl") {
            out.push(path);
        }
    }
    out.sort();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span_line(spans: &[(&str, i64, &str)]) -> String {
        let spans: Vec<Value> = spans
            .iter()
            .map(|(name, kind, id)| {
                serde_json::json!({"name": name, "kind": kind, "attributes": [
                    {"key": "rpc.request_id", "value": {"stringValue": id}}]})
            })
            .collect();
        serde_json::json!({"resourceSpans": [{"scopeSpans": [{"spans": spans}]}]}).to_string()
    }

    #[test]
    fn check_counts_missing_duplicated_and_unexpected_spans() {
        let dir = tempfile::tempdir().expect("tempdir");
        let lines = [
            span_line(&[("model/list", 2, "1"), ("model/list", 2, "2")]),
            span_line(&[
                ("model/list", 2, "2"),
                ("model/list", 2, "9"),
                ("chat echo", 3, "1"),
            ]),
        ];
        std::fs::write(dir.path().join("a.jsonl"), lines.join("\n")).expect("write");
        let answered = [("model/list", 1), ("model/list", 2), ("model/list", 3)];
        let check = check(dir.path(), &answered).expect("check");
        assert_eq!(
            check.methods["model/list"],
            MethodCount {
                answered: 3,
                spans: 4,
                missing: 1,
                duplicated: 1,
                unexpected: 1
            }
        );
        assert!(!check.holds());
    }

    #[test]
    fn check_holds_for_one_span_per_answered_request() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join("a.jsonl"),
            span_line(&[("initialize", 2, "0"), ("model/list", 2, "1")]),
        )
        .expect("write");
        let check = check(dir.path(), &[("initialize", 0), ("model/list", 1)]).expect("check");
        assert!(check.holds(), "{}", check.summary());
    }
}
