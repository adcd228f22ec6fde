//! Reading the local trace store: OTLP/JSON lines into [`Span`]s, merged
//! into [`Trace`]s.
//!
//! Reading is lenient: unknown fields are ignored, numbers may be strings
//! or JSON numbers, and a line that cannot be read becomes a [`Warning`]
//! instead of an error. A file's unterminated last line is a record still
//! being written and is left for later.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

use super::TraceViewError;

/// One attribute value, as far as the viewer cares about its type.
#[derive(Clone, Debug, PartialEq)]
pub enum AttrValue {
    /// `stringValue`.
    String(String),
    /// `intValue`.
    Int(i64),
    /// `boolValue`.
    Bool(bool),
    /// `doubleValue`.
    Double(f64),
    /// `arrayValue`.
    Array(Vec<AttrValue>),
    /// Anything else (arrays, key-value lists, bytes, odd encodings),
    /// already rendered as text.
    Other(String),
}

impl fmt::Display for AttrValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AttrValue::String(s) | AttrValue::Other(s) => f.write_str(s),
            AttrValue::Int(i) => write!(f, "{i}"),
            AttrValue::Bool(b) => write!(f, "{b}"),
            AttrValue::Double(d) => write!(f, "{d}"),
            AttrValue::Array(items) => {
                let items: Vec<String> = items.iter().map(AttrValue::literal).collect();
                write!(f, "[{}]", items.join(", "))
            }
        }
    }
}

impl AttrValue {
    /// The value as JSON: strings, numbers, booleans and arrays as
    /// themselves (a non-finite double as `null`), anything else as the
    /// text it was rendered to.
    pub fn to_json(&self) -> Value {
        match self {
            AttrValue::String(s) | AttrValue::Other(s) => Value::String(s.clone()),
            AttrValue::Int(i) => Value::from(*i),
            AttrValue::Bool(b) => Value::Bool(*b),
            AttrValue::Double(d) => {
                serde_json::Number::from_f64(*d).map_or(Value::Null, Value::Number)
            }
            AttrValue::Array(items) => Value::Array(items.iter().map(AttrValue::to_json).collect()),
        }
    }

    /// The value as a typed literal: strings quoted, everything else as
    /// [`Display`](fmt::Display) shows it.
    pub fn literal(&self) -> String {
        match self {
            AttrValue::String(s) => format!("{s:?}"),
            other => other.to_string(),
        }
    }
}

/// A span's kind (OTLP `SpanKind`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpanKind {
    /// 0, or anything unknown.
    Unspecified,
    /// 1.
    Internal,
    /// 2.
    Server,
    /// 3.
    Client,
    /// 4.
    Producer,
    /// 5.
    Consumer,
}

impl SpanKind {
    fn from_value(value: &Value) -> Self {
        let code = match value {
            Value::Number(n) => n.as_i64().unwrap_or_default(),
            Value::String(s) => match s.trim_start_matches("SPAN_KIND_") {
                "INTERNAL" => 1,
                "SERVER" => 2,
                "CLIENT" => 3,
                "PRODUCER" => 4,
                "CONSUMER" => 5,
                other => other.parse().unwrap_or_default(),
            },
            _ => 0,
        };
        match code {
            1 => SpanKind::Internal,
            2 => SpanKind::Server,
            3 => SpanKind::Client,
            4 => SpanKind::Producer,
            5 => SpanKind::Consumer,
            _ => SpanKind::Unspecified,
        }
    }

    /// Lower-case name: `server`, `client`...
    pub fn as_str(self) -> &'static str {
        match self {
            SpanKind::Unspecified => "unspecified",
            SpanKind::Internal => "internal",
            SpanKind::Server => "server",
            SpanKind::Client => "client",
            SpanKind::Producer => "producer",
            SpanKind::Consumer => "consumer",
        }
    }
}

/// A span's status code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatusCode {
    /// 0: no status was set.
    Unset,
    /// 1.
    Ok,
    /// 2.
    Error,
}

impl StatusCode {
    fn from_value(value: &Value) -> Self {
        let code = match value {
            Value::Number(n) => n.as_i64().unwrap_or_default(),
            Value::String(s) => match s.trim_start_matches("STATUS_CODE_") {
                "OK" => 1,
                "ERROR" => 2,
                other => other.parse().unwrap_or_default(),
            },
            _ => 0,
        };
        match code {
            1 => StatusCode::Ok,
            2 => StatusCode::Error,
            _ => StatusCode::Unset,
        }
    }
}

/// An event recorded on a span.
#[derive(Clone, Debug, PartialEq)]
pub struct SpanEvent {
    /// The event's name.
    pub name: String,
    /// When it happened, in nanoseconds since the Unix epoch.
    pub time_unix_nano: u64,
    /// Its attributes, in recorded order.
    pub attributes: Vec<(String, AttrValue)>,
}

/// A link from a span to another span.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpanLink {
    /// The linked trace (lower-case hex).
    pub trace_id: String,
    /// The linked span (lower-case hex).
    pub span_id: String,
}

/// One span record of the store.
#[derive(Clone, Debug, PartialEq)]
pub struct Span {
    /// 32 lower-case hex digits.
    pub trace_id: String,
    /// 16 lower-case hex digits.
    pub span_id: String,
    /// The parent's span id, `None` for a root.
    pub parent_span_id: Option<String>,
    /// The span name.
    pub name: String,
    /// The span kind.
    pub kind: SpanKind,
    /// Start, in nanoseconds since the Unix epoch.
    pub start_unix_nano: u64,
    /// End, in nanoseconds since the Unix epoch; `None` for an in-progress
    /// record (written when a long-lived span starts).
    pub end_unix_nano: Option<u64>,
    /// Attributes, in recorded order.
    pub attributes: Vec<(String, AttrValue)>,
    /// The status code.
    pub status_code: StatusCode,
    /// The status message (usually empty unless the status is an error).
    pub status_message: String,
    /// Events, in recorded order.
    pub events: Vec<SpanEvent>,
    /// Links to other spans.
    pub links: Vec<SpanLink>,
}

impl Span {
    /// True for an in-progress record: the span has started, not ended.
    pub fn is_running(&self) -> bool {
        self.end_unix_nano.is_none()
    }

    /// True when the span's status is ERROR.
    pub fn is_error(&self) -> bool {
        self.status_code == StatusCode::Error
    }

    /// The duration in nanoseconds, `None` while running.
    pub fn duration_nanos(&self) -> Option<u64> {
        self.end_unix_nano
            .map(|end| end.saturating_sub(self.start_unix_nano))
    }

    /// The first attribute named `key`.
    pub fn attr(&self, key: &str) -> Option<&AttrValue> {
        self.attributes
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
    }

    /// The first 8 hex digits of the span id.
    pub fn short_id(&self) -> &str {
        short_hex(&self.span_id)
    }
}

/// The first 8 characters of a hex id (all of it when shorter).
pub fn short_hex(id: &str) -> &str {
    id.get(..8).unwrap_or(id)
}

/// A line of the store that was skipped, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Warning {
    /// The store file.
    pub file: PathBuf,
    /// 1-based line number.
    pub line: usize,
    /// Why it was skipped.
    pub reason: String,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "skipping {}:{}: {}",
            self.file.display(),
            self.line,
            self.reason
        )
    }
}

/// The spans of one line, and the spans of it that were skipped.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ParsedLine {
    /// The valid spans, in line order.
    pub spans: Vec<Span>,
    /// Why a span of the line was skipped, one entry per skipped span.
    pub skipped: Vec<String>,
}

// The OTLP/JSON shapes, as loosely as they can be read.

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawTracesData {
    resource_spans: Vec<RawResourceSpans>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct RawResourceSpans {
    scope_spans: Vec<RawScopeSpans>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct RawScopeSpans {
    spans: Vec<RawSpan>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct RawSpan {
    trace_id: Value,
    span_id: Value,
    parent_span_id: Value,
    name: Value,
    kind: Value,
    start_time_unix_nano: Value,
    end_time_unix_nano: Value,
    attributes: Value,
    status: Value,
    events: Value,
    links: Value,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct RawEvent {
    name: Value,
    time_unix_nano: Value,
    attributes: Value,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct RawLink {
    trace_id: Value,
    span_id: Value,
}

/// Parses one store line (an OTLP/JSON `TracesData` object).
///
/// Fails only when the line is not such an object; a span inside it with
/// an invalid id is left out and reported in [`ParsedLine::skipped`].
pub fn parse_line(line: &str) -> Result<ParsedLine, serde_json::Error> {
    let data: RawTracesData = serde_json::from_str(line)?;
    let mut parsed = ParsedLine::default();
    let raw_spans = data
        .resource_spans
        .into_iter()
        .flat_map(|rs| rs.scope_spans)
        .flat_map(|ss| ss.spans);
    for (index, raw) in raw_spans.enumerate() {
        match convert_span(raw) {
            Ok(span) => parsed.spans.push(span),
            Err(reason) => parsed
                .skipped
                .push(format!("span #{}: {reason}", index + 1)),
        }
    }
    Ok(parsed)
}

fn convert_span(raw: RawSpan) -> Result<Span, String> {
    let trace_id = hex_id(&raw.trace_id, 32).ok_or("invalid traceId")?;
    let span_id = hex_id(&raw.span_id, 16).ok_or("invalid spanId")?;
    let parent_span_id = match &raw.parent_span_id {
        Value::Null => None,
        Value::String(s) if s.is_empty() || s.bytes().all(|b| b == b'0') => None,
        other => Some(hex_id(other, 16).ok_or("invalid parentSpanId")?),
    };
    let end = number_u64(&raw.end_time_unix_nano).unwrap_or_default();
    Ok(Span {
        trace_id,
        span_id,
        parent_span_id,
        name: match raw.name {
            Value::String(s) => s,
            Value::Null => String::new(),
            other => other.to_string(),
        },
        kind: SpanKind::from_value(&raw.kind),
        start_unix_nano: number_u64(&raw.start_time_unix_nano).unwrap_or_default(),
        end_unix_nano: (end != 0).then_some(end),
        attributes: attributes(&raw.attributes),
        status_code: StatusCode::from_value(raw.status.get("code").unwrap_or(&Value::Null)),
        status_message: raw
            .status
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
        events: serde_json::from_value::<Vec<RawEvent>>(raw.events)
            .unwrap_or_default()
            .into_iter()
            .map(|e| SpanEvent {
                name: e.name.as_str().unwrap_or_default().to_owned(),
                time_unix_nano: number_u64(&e.time_unix_nano).unwrap_or_default(),
                attributes: attributes(&e.attributes),
            })
            .collect(),
        links: serde_json::from_value::<Vec<RawLink>>(raw.links)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|l| {
                Some(SpanLink {
                    trace_id: hex_id(&l.trace_id, 32)?,
                    span_id: hex_id(&l.span_id, 16)?,
                })
            })
            .collect(),
    })
}

/// A hex id of exactly `len` digits, lower-cased.
fn hex_id(value: &Value, len: usize) -> Option<String> {
    let s = value.as_str()?;
    (s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit())).then(|| s.to_ascii_lowercase())
}

/// A non-negative integer given as a JSON number or a decimal string.
fn number_u64(value: &Value) -> Option<u64> {
    match value {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn attributes(value: &Value) -> Vec<(String, AttrValue)> {
    let Some(list) = value.as_array() else {
        return Vec::new();
    };
    list.iter()
        .filter_map(|kv| {
            let key = kv.get("key")?.as_str()?.to_owned();
            let value = any_value(kv.get("value").unwrap_or(&Value::Null));
            Some((key, value))
        })
        .collect()
}

/// Converts an OTLP/JSON `AnyValue` object.
fn any_value(value: &Value) -> AttrValue {
    let Some(obj) = value.as_object() else {
        return AttrValue::Other(value.to_string());
    };
    if let Some(v) = obj.get("stringValue") {
        return match v {
            Value::String(s) => AttrValue::String(s.clone()),
            other => AttrValue::Other(other.to_string()),
        };
    }
    if let Some(v) = obj.get("intValue") {
        let int = match v {
            Value::Number(n) => n.as_i64(),
            Value::String(s) => s.trim().parse().ok(),
            _ => None,
        };
        return int.map_or_else(|| AttrValue::Other(v.to_string()), AttrValue::Int);
    }
    if let Some(v) = obj.get("boolValue") {
        return v
            .as_bool()
            .map_or_else(|| AttrValue::Other(v.to_string()), AttrValue::Bool);
    }
    if let Some(v) = obj.get("doubleValue") {
        let double = match v {
            Value::Number(n) => n.as_f64(),
            Value::String(s) => s.trim().parse().ok(),
            _ => None,
        };
        return double.map_or_else(|| AttrValue::Other(v.to_string()), AttrValue::Double);
    }
    if let Some(values) = obj
        .get("arrayValue")
        .and_then(|a| a.get("values"))
        .and_then(Value::as_array)
    {
        return AttrValue::Array(values.iter().map(any_value).collect());
    }
    if let Some(kvs) = obj.get("kvlistValue").and_then(|k| k.get("values")) {
        let items: Vec<String> = attributes(kvs)
            .into_iter()
            .map(|(k, v)| format!("{k}: {}", v.literal()))
            .collect();
        return AttrValue::Other(format!("{{{}}}", items.join(", ")));
    }
    if let Some(Value::String(bytes)) = obj.get("bytesValue") {
        return AttrValue::Other(format!("bytes:{bytes}"));
    }
    AttrValue::Other(value.to_string())
}

/// The complete lines of `buf`: everything up to its last newline, split at
/// newlines. Returns the lines and how many bytes they span; bytes after
/// the last newline are a line still being written.
pub fn complete_lines(buf: &[u8]) -> (Vec<&[u8]>, usize) {
    let Some(last) = buf.iter().rposition(|&b| b == b'\n') else {
        return (Vec::new(), 0);
    };
    let consumed = last + 1;
    (buf[..last].split(|&b| b == b'\n').collect(), consumed)
}

/// Parses the lines of a file, starting at 1-based line `first_line`.
/// Pushes spans and warnings for unreadable lines or spans.
pub fn parse_lines(
    file: &Path,
    lines: &[&[u8]],
    first_line: usize,
    spans: &mut Vec<Span>,
    warnings: &mut Vec<Warning>,
) {
    for (i, raw) in lines.iter().enumerate() {
        let line = first_line + i;
        let warn = |reason: String| Warning {
            file: file.to_path_buf(),
            line,
            reason,
        };
        let text = match std::str::from_utf8(raw) {
            Ok(text) => text.trim(),
            Err(e) => {
                warnings.push(warn(format!("not UTF-8: {e}")));
                continue;
            }
        };
        if text.is_empty() {
            continue;
        }
        match parse_line(text) {
            Ok(parsed) => {
                spans.extend(parsed.spans);
                warnings.extend(parsed.skipped.into_iter().map(warn));
            }
            Err(e) => warnings.push(warn(format!("not an OTLP/JSON TracesData line: {e}"))),
        }
    }
}

/// Lists the store files of `dir` (`*.jsonl`, sorted by name), or the
/// error saying there is no store there.
pub fn store_files(dir: &Path) -> Result<Vec<PathBuf>, TraceViewError> {
    if !dir.is_dir() {
        return Err(TraceViewError::NoStore {
            dir: dir.to_path_buf(),
        });
    }
    skein_otel::local_store::store_files(dir).map_err(|source| TraceViewError::ReadDir {
        dir: dir.to_path_buf(),
        source,
    })
}

/// Merges span records: a finished record of a (trace id, span id)
/// supersedes an in-progress one, wherever each was read; among records in
/// the same state the first read wins.
pub fn merge_records(records: impl IntoIterator<Item = Span>) -> Vec<Span> {
    let mut merged: Vec<Span> = Vec::new();
    let mut index: HashMap<(String, String), usize> = HashMap::new();
    for span in records {
        let key = (span.trace_id.clone(), span.span_id.clone());
        match index.get(&key) {
            Some(&i) => {
                if let Some(existing) = merged.get_mut(i)
                    && existing.is_running()
                    && !span.is_running()
                {
                    *existing = span;
                }
            }
            None => {
                index.insert(key, merged.len());
                merged.push(span);
            }
        }
    }
    merged
}

/// The whole store, read once.
#[derive(Clone, Debug)]
pub struct Store {
    dir: PathBuf,
    traces: Vec<Trace>,
    warnings: Vec<Warning>,
}

impl Store {
    /// Reads every store file under `dir`.
    ///
    /// Unreadable lines become [`Store::warnings`]; only a missing
    /// directory or an unreadable file is an error.
    pub fn open(dir: &Path) -> Result<Self, TraceViewError> {
        let mut spans = Vec::new();
        let mut warnings = Vec::new();
        for file in store_files(dir)? {
            let bytes = match std::fs::read(&file) {
                Ok(bytes) => bytes,
                // Removed between listing and reading: nothing to show.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(source) => return Err(TraceViewError::ReadFile { path: file, source }),
            };
            let (lines, _) = complete_lines(&bytes);
            parse_lines(&file, &lines, 1, &mut spans, &mut warnings);
        }
        Ok(Self::from_spans(dir, spans, warnings))
    }

    /// A store of the given records (merged as [`merge_records`] does).
    pub fn from_spans(
        dir: impl Into<PathBuf>,
        records: impl IntoIterator<Item = Span>,
        warnings: Vec<Warning>,
    ) -> Self {
        let mut by_trace: BTreeMap<String, Vec<Span>> = BTreeMap::new();
        for span in merge_records(records) {
            by_trace
                .entry(span.trace_id.clone())
                .or_default()
                .push(span);
        }
        let mut traces: Vec<Trace> = by_trace
            .into_iter()
            .map(|(trace_id, spans)| Trace::new(trace_id, spans))
            .collect();
        traces.sort_by(|a, b| {
            b.start_unix_nano()
                .cmp(&a.start_unix_nano())
                .then_with(|| a.trace_id.cmp(&b.trace_id))
        });
        Self {
            dir: dir.into(),
            traces,
            warnings,
        }
    }

    /// The store directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Every trace, newest (latest start) first.
    pub fn traces(&self) -> &[Trace] {
        &self.traces
    }

    /// The lines that were skipped while reading.
    pub fn warnings(&self) -> &[Warning] {
        &self.warnings
    }

    /// The trace whose id is `prefix` or starts with it (case-insensitive).
    pub fn find(&self, prefix: &str) -> Result<&Trace, TraceViewError> {
        let wanted = prefix.trim().to_ascii_lowercase();
        if let Some(exact) = self.traces.iter().find(|t| t.trace_id == wanted) {
            return Ok(exact);
        }
        let matches: Vec<&Trace> = self
            .traces
            .iter()
            .filter(|t| t.trace_id.starts_with(&wanted))
            .collect();
        match matches.as_slice() {
            [] => Err(TraceViewError::NoMatch {
                prefix: prefix.to_owned(),
                dir: self.dir.clone(),
            }),
            [one] => Ok(one),
            many => Err(TraceViewError::AmbiguousPrefix {
                prefix: prefix.to_owned(),
                candidates: many
                    .iter()
                    .map(|t| {
                        format!(
                            "{}  {}",
                            t.trace_id,
                            t.root().map_or("", |root| root.name.as_str())
                        )
                    })
                    .collect(),
            }),
        }
    }
}

/// Where a trace stands overall.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TraceStatus {
    /// Every span finished and none failed.
    Ok,
    /// Some span is still in progress (and none failed).
    Running,
    /// Some span has an ERROR status (whether or not others still run).
    Error,
}

impl TraceStatus {
    /// `OK`, `RUNNING` or `ERROR`.
    pub fn as_str(self) -> &'static str {
        match self {
            TraceStatus::Ok => "OK",
            TraceStatus::Running => "RUNNING",
            TraceStatus::Error => "ERROR",
        }
    }
}

/// The spans of one trace.
#[derive(Clone, Debug, PartialEq)]
pub struct Trace {
    /// 32 lower-case hex digits.
    pub trace_id: String,
    /// The spans, ordered by start time (then span id).
    pub spans: Vec<Span>,
}

impl Trace {
    /// A trace of `spans` (re-ordered by start time).
    pub fn new(trace_id: String, mut spans: Vec<Span>) -> Self {
        spans.sort_by(|a, b| {
            a.start_unix_nano
                .cmp(&b.start_unix_nano)
                .then_with(|| a.span_id.cmp(&b.span_id))
        });
        Self { trace_id, spans }
    }

    /// The earliest start.
    pub fn start_unix_nano(&self) -> u64 {
        self.spans
            .iter()
            .map(|s| s.start_unix_nano)
            .min()
            .unwrap_or_default()
    }

    /// From the earliest start to the latest end; `None` while a span is
    /// still in progress.
    pub fn duration_nanos(&self) -> Option<u64> {
        if self.spans.iter().any(Span::is_running) {
            return None;
        }
        let end = self
            .spans
            .iter()
            .filter_map(|s| s.end_unix_nano)
            .max()
            .unwrap_or_default();
        Some(end.saturating_sub(self.start_unix_nano()))
    }

    /// ERROR if any span failed, else RUNNING if any is in progress, else
    /// OK.
    pub fn status(&self) -> TraceStatus {
        if self.spans.iter().any(Span::is_error) {
            TraceStatus::Error
        } else if self.spans.iter().any(Span::is_running) {
            TraceStatus::Running
        } else {
            TraceStatus::Ok
        }
    }

    /// The span ids present.
    pub fn span_ids(&self) -> BTreeSet<&str> {
        self.spans.iter().map(|s| s.span_id.as_str()).collect()
    }

    /// The root span: the earliest span without a parent, else the earliest
    /// whose parent is not in the store (a client's span, say), else the
    /// earliest span.
    pub fn root(&self) -> Option<&Span> {
        let ids = self.span_ids();
        self.spans
            .iter()
            .find(|s| s.parent_span_id.is_none())
            .or_else(|| {
                self.spans.iter().find(|s| {
                    s.parent_span_id
                        .as_deref()
                        .is_some_and(|p| !ids.contains(p))
                })
            })
            .or_else(|| self.spans.first())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

    fn line(spans: &str) -> String {
        format!(
            r#"{{"resourceSpans":[{{"resource":{{"attributes":[]}},"scopeSpans":[{{"scope":{{"name":"skein"}},"spans":[{spans}]}}]}}]}}"#
        )
    }

    fn span_json(id: &str, parent: &str, start: u64, end: &str) -> String {
        format!(
            r#"{{"traceId":"{TRACE}","spanId":"{id}","parentSpanId":"{parent}","name":"s{id}","kind":1,"startTimeUnixNano":"{start}","endTimeUnixNano":"{end}","attributes":[],"status":{{"code":0,"message":""}},"links":[],"events":[]}}"#
        )
    }

    fn span(id: &str, parent: Option<&str>, start: u64, end: Option<u64>) -> Span {
        Span {
            trace_id: TRACE.into(),
            span_id: id.into(),
            parent_span_id: parent.map(Into::into),
            name: format!("s{id}"),
            kind: SpanKind::Internal,
            start_unix_nano: start,
            end_unix_nano: end,
            attributes: Vec::new(),
            status_code: StatusCode::Unset,
            status_message: String::new(),
            events: Vec::new(),
            links: Vec::new(),
        }
    }

    #[test]
    fn parses_a_writer_line() {
        let text = r#"{"resourceSpans":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"skein-app-server"}}],"droppedAttributesCount":0},"scopeSpans":[{"scope":{"name":"skein","version":"","attributes":[],"droppedAttributesCount":0},"spans":[{"traceId":"4BF92F3577B34DA6A3CE929D0E0E4736","spanId":"00f067aa0ba902b7","traceState":"","parentSpanId":"","flags":0,"name":"turn/start","kind":2,"startTimeUnixNano":"1700000000000000000","endTimeUnixNano":"1700000000001200000","attributes":[{"key":"thread.id","value":{"stringValue":"thr_1"}},{"key":"n","value":{"intValue":"7"}},{"key":"m","value":{"intValue":8}},{"key":"b","value":{"boolValue":true}},{"key":"d","value":{"doubleValue":0.5}},{"key":"a","value":{"arrayValue":{"values":[{"stringValue":"x"},{"intValue":"1"}]}}}],"droppedAttributesCount":0,"events":[{"timeUnixNano":"1700000000000100000","name":"hello","attributes":[]}],"droppedEventsCount":0,"links":[{"traceId":"0af7651916cd43dd8448eb211c80319c","spanId":"b7ad6b7169203331","traceState":"","attributes":[],"droppedAttributesCount":0,"flags":0}],"droppedLinksCount":0,"status":{"message":"boom","code":2},"unknownField":{}}]}],"schemaUrl":""}]}"#;
        let parsed = parse_line(text).expect("parses");
        assert!(parsed.skipped.is_empty());
        let [span] = parsed.spans.as_slice() else {
            panic!("one span expected: {parsed:?}");
        };
        assert_eq!(span.trace_id, TRACE);
        assert_eq!(span.span_id, "00f067aa0ba902b7");
        assert_eq!(span.parent_span_id, None);
        assert_eq!(span.kind, SpanKind::Server);
        assert_eq!(span.duration_nanos(), Some(1_200_000));
        assert_eq!(
            span.attr("thread.id"),
            Some(&AttrValue::String("thr_1".into()))
        );
        assert_eq!(span.attr("n"), Some(&AttrValue::Int(7)));
        assert_eq!(span.attr("m"), Some(&AttrValue::Int(8)));
        assert_eq!(span.attr("b"), Some(&AttrValue::Bool(true)));
        assert_eq!(span.attr("d"), Some(&AttrValue::Double(0.5)));
        let array = span.attr("a").expect("array");
        assert_eq!(
            array,
            &AttrValue::Array(vec![AttrValue::String("x".into()), AttrValue::Int(1)])
        );
        assert_eq!(array.to_string(), "[\"x\", 1]");
        assert_eq!(array.to_json(), serde_json::json!(["x", 1]));
        assert!(span.is_error());
        assert_eq!(span.status_message, "boom");
        assert_eq!(span.events.len(), 1);
        assert_eq!(span.links[0].span_id, "b7ad6b7169203331");
    }

    #[test]
    fn in_progress_records_have_no_end() {
        for end in [r#","endTimeUnixNano":"0""#, r#","endTimeUnixNano":0"#, ""] {
            let text = line(&format!(
                r#"{{"traceId":"{TRACE}","spanId":"00f067aa0ba902b7","startTimeUnixNano":"5"{end}}}"#
            ));
            let parsed = parse_line(&text).expect("parses");
            assert!(parsed.spans[0].is_running(), "{end}");
            assert_eq!(parsed.spans[0].duration_nanos(), None);
        }
    }

    #[test]
    fn bad_spans_are_skipped_with_a_reason() {
        let text = line(&format!(
            "{},{}",
            span_json("zz", "", 1, "2"),
            span_json("00f067aa0ba902b7", "", 1, "2")
        ));
        let parsed = parse_line(&text).expect("parses");
        assert_eq!(parsed.spans.len(), 1);
        assert_eq!(parsed.skipped, vec!["span #1: invalid spanId".to_owned()]);
        assert!(parse_line("{}").is_err());
        assert!(parse_line("not json").is_err());
    }

    #[test]
    fn only_terminated_lines_are_complete() {
        assert_eq!(complete_lines(b"").0.len(), 0);
        assert_eq!(complete_lines(b"partial"), (Vec::new(), 0));
        let (lines, used) = complete_lines(b"a\nb\npart");
        assert_eq!(lines, vec![&b"a"[..], &b"b"[..]]);
        assert_eq!(used, 4);
        let (lines, used) = complete_lines(b"\n");
        assert_eq!(lines, vec![&b""[..]]);
        assert_eq!(used, 1);
    }

    #[test]
    fn a_finished_record_supersedes_the_in_progress_one() {
        let started = span("00f067aa0ba902b7", None, 10, None);
        let finished = span("00f067aa0ba902b7", None, 10, Some(50));
        for records in [
            vec![started.clone(), finished.clone()],
            vec![finished.clone(), started.clone()],
        ] {
            let merged = merge_records(records);
            assert_eq!(merged, vec![finished.clone()]);
        }
        assert_eq!(merge_records(vec![started.clone()]), vec![started]);
    }

    #[test]
    fn roots_and_status() {
        let external = Trace::new(
            TRACE.into(),
            vec![
                span("bbbbbbbbbbbbbbbb", Some("aaaaaaaaaaaaaaaa"), 20, Some(30)),
                span("aaaaaaaaaaaaaaaa", Some("00f067aa0ba902b7"), 10, Some(40)),
            ],
        );
        assert_eq!(
            external.root().map(|s| s.span_id.as_str()),
            Some("aaaaaaaaaaaaaaaa")
        );
        assert_eq!(external.duration_nanos(), Some(30));
        assert_eq!(external.status(), TraceStatus::Ok);

        let mut failed = span("cccccccccccccccc", None, 15, None);
        let running = Trace::new(TRACE.into(), vec![failed.clone()]);
        assert_eq!(running.status(), TraceStatus::Running);
        assert_eq!(running.duration_nanos(), None);
        failed.status_code = StatusCode::Error;
        let errored = Trace::new(TRACE.into(), vec![failed]);
        assert_eq!(errored.status(), TraceStatus::Error);
    }

    #[test]
    fn prefixes_resolve_uniquely_or_fail() {
        let mk = |trace: &str| {
            let mut s = span("00f067aa0ba902b7", None, 1, Some(2));
            s.trace_id = trace.into();
            s
        };
        let store = Store::from_spans(
            "/store",
            vec![
                mk("4bf92f3577b34da6a3ce929d0e0e4736"),
                mk("4bf92f3500000000000000000000000a"),
                mk("0af7651916cd43dd8448eb211c80319c"),
            ],
            Vec::new(),
        );
        let found = store.find("0AF7").expect("unique");
        assert_eq!(found.trace_id, "0af7651916cd43dd8448eb211c80319c");
        let full = store
            .find("4bf92f3577b34da6a3ce929d0e0e4736")
            .expect("full id");
        assert_eq!(full.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        match store.find("4bf92f35") {
            Err(TraceViewError::AmbiguousPrefix { candidates, .. }) => {
                assert_eq!(candidates.len(), 2);
            }
            other => panic!("expected ambiguity, got {other:?}"),
        }
        let err = store.find("ffff").expect_err("no match");
        assert_eq!(err.to_string(), "no trace matching ffff in /store");
    }
}
