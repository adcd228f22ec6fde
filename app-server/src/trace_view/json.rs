//! `--json` output: one JSON object per line, with stable field names.
//!
//! `ls` writes one object per trace:
//! `trace_id`, `start_time` (RFC 3339, UTC), `start_unix_nano`,
//! `duration_ns` (`null` while running), `span_count`, `root` (the root
//! span's name), `status` (`ok`, `error` or `running`), `error_count`,
//! `thread_ids`.
//!
//! `view` writes one object per span: `trace_id`, `span_id`,
//! `parent_span_id` (`null` for a root), `name`, `kind`, `start_unix_nano`,
//! `end_unix_nano` and `duration_ns` (`null` while running), `status`
//! (`unset`, `ok` or `error`), `status_message`, `attributes` (an object,
//! values typed), `events` (`name`, `time_unix_nano`, `attributes`),
//! `links` (`trace_id`, `span_id`).

use std::io::Write;

use serde_json::{Map, Value, json};

use super::query;
use super::render::format_utc;
use super::store::{AttrValue, Span, StatusCode, Trace, TraceStatus};

/// `YYYY-MM-DDTHH:MM:SS.mmmZ`.
pub fn rfc3339(unix_nanos: u64) -> String {
    format!(
        "{}.{:03}Z",
        format_utc(unix_nanos).replace(' ', "T"),
        unix_nanos / 1_000_000 % 1000
    )
}

fn attributes(attrs: &[(String, AttrValue)]) -> Value {
    let mut map = Map::new();
    for (key, value) in attrs {
        map.insert(key.clone(), value.to_json());
    }
    Value::Object(map)
}

/// The `ls` object of `trace`.
pub fn trace_object(trace: &Trace) -> Value {
    let status = match trace.status() {
        TraceStatus::Ok => "ok",
        TraceStatus::Error => "error",
        TraceStatus::Running => "running",
    };
    json!({
        "trace_id": trace.trace_id,
        "start_time": rfc3339(trace.start_unix_nano()),
        "start_unix_nano": trace.start_unix_nano(),
        "duration_ns": trace.duration_nanos(),
        "span_count": trace.spans.len(),
        "root": trace.root().map(|r| r.name.as_str()),
        "status": status,
        "error_count": trace.spans.iter().filter(|s| s.is_error()).count(),
        "thread_ids": query::thread_ids(trace),
    })
}

/// The `view` object of `span`.
pub fn span_object(span: &Span) -> Value {
    let status = match span.status_code {
        StatusCode::Unset => "unset",
        StatusCode::Ok => "ok",
        StatusCode::Error => "error",
    };
    json!({
        "trace_id": span.trace_id,
        "span_id": span.span_id,
        "parent_span_id": span.parent_span_id,
        "name": span.name,
        "kind": span.kind.as_str(),
        "start_unix_nano": span.start_unix_nano,
        "end_unix_nano": span.end_unix_nano,
        "duration_ns": span.duration_nanos(),
        "status": status,
        "status_message": span.status_message,
        "attributes": attributes(&span.attributes),
        "events": span.events.iter().map(|e| json!({
            "name": e.name,
            "time_unix_nano": e.time_unix_nano,
            "attributes": attributes(&e.attributes),
        })).collect::<Vec<_>>(),
        "links": span.links.iter().map(|l| json!({
            "trace_id": l.trace_id,
            "span_id": l.span_id,
        })).collect::<Vec<_>>(),
    })
}

/// Writes `value` as one line.
pub fn write_line(out: &mut dyn Write, value: &Value) -> std::io::Result<()> {
    serde_json::to_writer(&mut *out, value)?;
    writeln!(out)
}

/// Writes one line per trace.
pub fn write_ls<'a>(
    out: &mut dyn Write,
    traces: impl IntoIterator<Item = &'a Trace>,
) -> std::io::Result<()> {
    for trace in traces {
        write_line(out, &trace_object(trace))?;
    }
    Ok(())
}

/// Writes one line per span of `trace`, in start order.
pub fn write_view(out: &mut dyn Write, trace: &Trace) -> std::io::Result<()> {
    for span in &trace.spans {
        write_line(out, &span_object(span))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_utc() {
        assert_eq!(
            rfc3339(1_700_000_000_123_456_789),
            "2023-11-14T22:13:20.123Z"
        );
    }
}
