//! Text output: durations, UTC times, the `ls` table, the `view` tree and
//! `follow` lines.
//!
//! Output never depends on the local time zone or the current time.

use std::io::Write;

use skein_otel::names::attr;

use super::store::{Span, Trace, TraceStatus, short_hex};
use super::tree::{self, Node};

/// ANSI styling, or none.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Style {
    color: bool,
}

impl Style {
    /// No escape codes at all.
    pub const PLAIN: Style = Style { color: false };
    /// ANSI colours.
    pub const COLOR: Style = Style { color: true };

    fn paint(self, code: &str, text: &str) -> String {
        if self.color && !text.is_empty() {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_owned()
        }
    }

    /// Bold.
    pub fn bold(self, text: &str) -> String {
        self.paint("1", text)
    }

    fn dim(self, text: &str) -> String {
        self.paint("2", text)
    }

    fn error(self, text: &str) -> String {
        self.paint("1;31", text)
    }

    fn running(self, text: &str) -> String {
        self.paint("33", text)
    }

    fn ok(self, text: &str) -> String {
        self.paint("32", text)
    }

    fn value(self, text: &str) -> String {
        self.paint("36", text)
    }
}

/// A duration for people: `512ns`, `850µs`, `12.3ms`, `1.42s`, `2m03s`,
/// `1h02m`; three significant digits below a minute.
pub fn format_duration(nanos: u64) -> String {
    const UNITS: [(f64, &str); 3] = [(1e3, "µs"), (1e6, "ms"), (1e9, "s")];
    if nanos < 1_000 {
        return format!("{nanos}ns");
    }
    if nanos < 60_000_000_000 {
        // Exact: below a minute, nanoseconds fit an f64's mantissa.
        let n = nanos as f64;
        for (i, (scale, unit)) in UNITS.iter().enumerate() {
            let x = n / scale;
            // Past 999.5 this unit would print 4 digits: use the next one.
            if x >= 999.5 && i + 1 < UNITS.len() {
                continue;
            }
            return if x < 9.995 {
                format!("{x:.2}{unit}")
            } else if x < 99.95 {
                format!("{x:.1}{unit}")
            } else {
                format!("{x:.0}{unit}")
            };
        }
    }
    let secs = nanos / 1_000_000_000;
    if secs < 3600 {
        format!("{}m{:02}s", secs / 60, secs % 60)
    } else {
        format!("{}h{:02}m", secs / 3600, secs % 3600 / 60)
    }
}

/// `YYYY-MM-DD HH:MM:SS` in UTC.
pub fn format_utc(unix_nanos: u64) -> String {
    let secs = unix_nanos / 1_000_000_000;
    let (year, month, day) = civil_from_days(secs / 86_400);
    let tod = secs % 86_400;
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        tod / 3600,
        tod % 3600 / 60,
        tod % 60
    )
}

/// `HH:MM:SS.mmm` in UTC.
pub fn format_utc_time_ms(unix_nanos: u64) -> String {
    let millis = unix_nanos / 1_000_000;
    let tod = millis / 1000 % 86_400;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        tod / 3600,
        tod % 3600 / 60,
        tod % 60,
        millis % 1000
    )
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (Howard
/// Hinnant's `civil_from_days`, for non-negative counts).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

/// A span's duration, or `running` for an in-progress record.
pub fn span_duration(span: &Span) -> String {
    span.duration_nanos()
        .map_or_else(|| "running".to_owned(), format_duration)
}

/// The attributes worth a glance, as `key=value` words: `rpc.method` (when
/// it is not the span name already), `rpc.method_original`, `thread.id`, `turn.id`,
/// `gen_ai.request.model`, `tokens=IN/OUT`, `turn.status`.
pub fn key_attributes(span: &Span) -> Vec<String> {
    let mut words = Vec::new();
    if let Some(method) = span.attr(attr::RPC_METHOD)
        && method.to_string() != span.name
    {
        words.push(format!("{}={method}", attr::RPC_METHOD));
    }
    if let Some(original) = span.attr(attr::RPC_METHOD_ORIGINAL) {
        words.push(format!("{}={original}", attr::RPC_METHOD_ORIGINAL));
    }
    for key in [attr::THREAD_ID, attr::TURN_ID, attr::GEN_AI_REQUEST_MODEL] {
        if let Some(value) = span.attr(key) {
            words.push(format!("{key}={value}"));
        }
    }
    let input = span.attr(attr::GEN_AI_USAGE_INPUT_TOKENS);
    let output = span.attr(attr::GEN_AI_USAGE_OUTPUT_TOKENS);
    if input.is_some() || output.is_some() {
        let show =
            |v: Option<&super::store::AttrValue>| v.map_or("?".to_owned(), |v| v.to_string());
        words.push(format!("tokens={}/{}", show(input), show(output)));
    }
    if let Some(status) = span.attr(attr::TURN_STATUS) {
        words.push(format!("{}={status}", attr::TURN_STATUS));
    }
    words
}

fn error_mark(span: &Span) -> Option<String> {
    span.is_error().then(|| {
        if span.status_message.is_empty() {
            "ERROR".to_owned()
        } else {
            format!("ERROR: {}", span.status_message)
        }
    })
}

pub(super) fn width(text: &str) -> usize {
    text.chars().count()
}

pub(super) fn pad_right(text: &str, to: usize) -> String {
    format!("{text}{}", " ".repeat(to.saturating_sub(width(text))))
}

pub(super) fn pad_left(text: &str, to: usize) -> String {
    format!("{}{text}", " ".repeat(to.saturating_sub(width(text))))
}

fn status_styled(style: Style, status: TraceStatus, text: &str) -> String {
    match status {
        TraceStatus::Ok => style.ok(text),
        TraceStatus::Running => style.running(text),
        TraceStatus::Error => style.error(text),
    }
}

/// Writes the `ls` table of `traces`, in the order given.
pub fn write_ls(out: &mut dyn Write, traces: &[&Trace], style: Style) -> std::io::Result<()> {
    let header = [
        "STARTED (UTC)",
        "TRACE ID",
        "SPANS",
        "ROOT",
        "DURATION",
        "STATUS",
    ];
    let rows: Vec<(TraceStatus, [String; 6])> = traces
        .iter()
        .map(|t| {
            let status = t.status();
            (
                status,
                [
                    format_utc(t.start_unix_nano()),
                    t.trace_id.clone(),
                    t.spans.len().to_string(),
                    t.root().map(|r| r.name.clone()).unwrap_or_default(),
                    t.duration_nanos()
                        .map_or_else(|| "running".to_owned(), format_duration),
                    status.as_str().to_owned(),
                ],
            )
        })
        .collect();
    let mut widths = header.map(width);
    for (_, cells) in &rows {
        for (w, cell) in widths.iter_mut().zip(cells) {
            *w = (*w).max(width(cell));
        }
    }
    // SPANS and DURATION are right-aligned.
    let align = |i: usize, text: &str| {
        if i == 2 || i == 4 {
            pad_left(text, widths[i])
        } else {
            pad_right(text, widths[i])
        }
    };
    let head: Vec<String> = header
        .iter()
        .enumerate()
        .map(|(i, h)| align(i, h))
        .collect();
    writeln!(out, "{}", style.bold(head.join("  ").trim_end()))?;
    for (status, cells) in &rows {
        let [start, id, count, root, duration, status_text] = cells;
        writeln!(
            out,
            "{}  {}  {}  {}  {}  {}",
            align(0, start),
            style.dim(&align(1, id)),
            align(2, count),
            align(3, root),
            align(4, duration),
            status_styled(style, *status, status_text),
        )?;
    }
    Ok(())
}

/// Writes the `view` tree of `trace`; `verbose` adds every attribute,
/// event and link under each span.
pub fn write_view(
    out: &mut dyn Write,
    trace: &Trace,
    verbose: bool,
    style: Style,
) -> std::io::Result<()> {
    let status = trace.status();
    let count = trace.spans.len();
    writeln!(
        out,
        "{} {}  {} UTC  {}  {count} span{}  {}",
        style.bold("trace"),
        trace.trace_id,
        format_utc(trace.start_unix_nano()),
        trace
            .duration_nanos()
            .map_or_else(|| "running".to_owned(), format_duration),
        if count == 1 { "" } else { "s" },
        status_styled(style, status, status.as_str()),
    )?;

    let rows = tree::rows(trace);
    let label = |row: &tree::Row<'_>| match row.node {
        Node::Span(span) => format!("{}{}", row.guide, span.name),
        Node::External { .. } => String::new(),
    };
    let name_width = rows.iter().map(|r| width(&label(r))).max().unwrap_or(0);
    let duration_width = rows
        .iter()
        .filter_map(|r| match r.node {
            Node::Span(span) => Some(width(&span_duration(span))),
            Node::External { .. } => None,
        })
        .max()
        .unwrap_or(0);

    for row in &rows {
        let span = match row.node {
            Node::External { parent_span_id } => {
                writeln!(
                    out,
                    "{}{}",
                    row.guide,
                    style.dim(&format!(
                        "◌ <external parent {}> (not in store)",
                        short_hex(parent_span_id)
                    ))
                )?;
                continue;
            }
            Node::Span(span) => span,
        };
        let mut line = format!(
            "{}{}  {}",
            row.guide,
            pad_right(&span.name, name_width.saturating_sub(width(&row.guide))),
            duration_styled(style, span, &pad_left(&span_duration(span), duration_width)),
        );
        push_span_details(&mut line, span, style);
        writeln!(out, "{line}")?;

        if verbose {
            let indent = format!(
                "{}{}",
                row.child_guide,
                if row.has_children { "│    " } else { "     " }
            );
            write_details(out, span, &indent, style)?;
        }
    }
    Ok(())
}

fn duration_styled(style: Style, span: &Span, text: &str) -> String {
    if span.is_running() {
        style.running(text)
    } else {
        style.value(text)
    }
}

fn write_details(
    out: &mut dyn Write,
    span: &Span,
    indent: &str,
    style: Style,
) -> std::io::Result<()> {
    let dim = |text: &str| style.dim(text);
    writeln!(
        out,
        "{indent}{} {}  {} {}  {} {}",
        dim("span"),
        span.span_id,
        dim("parent"),
        span.parent_span_id.as_deref().unwrap_or("-"),
        dim("kind"),
        span.kind.as_str(),
    )?;
    let end = span.end_unix_nano.map_or_else(
        || "running".to_owned(),
        |end| format!("{}.{:09}", format_utc(end), end % 1_000_000_000),
    );
    writeln!(
        out,
        "{indent}{} {}.{:09}  {} {end}",
        dim("start"),
        format_utc(span.start_unix_nano),
        span.start_unix_nano % 1_000_000_000,
        dim("end"),
    )?;
    if span.is_error() {
        writeln!(
            out,
            "{indent}{} {}",
            dim("status"),
            style.error(&format!("ERROR {:?}", span.status_message))
        )?;
    }
    for (key, value) in &span.attributes {
        writeln!(out, "{indent}{key} = {}", value.literal())?;
    }
    for event in &span.events {
        let offset = format_duration(event.time_unix_nano.saturating_sub(span.start_unix_nano));
        let mut line = format!("{indent}{} {:?} +{offset}", dim("event"), event.name);
        for (key, value) in &event.attributes {
            line.push_str(&format!(" {key}={}", value.literal()));
        }
        writeln!(out, "{line}")?;
    }
    for link in &span.links {
        writeln!(
            out,
            "{indent}{} {}/{}",
            dim("link"),
            link.trace_id,
            link.span_id
        )?;
    }
    Ok(())
}

/// Writes one `follow` line for a span record: the time it started (for an
/// in-progress record) or ended, the trace id prefix, the name, the
/// duration or `started`, key attributes, the ERROR mark and the short span
/// id.
pub fn write_follow_line(out: &mut dyn Write, span: &Span, style: Style) -> std::io::Result<()> {
    let (time, duration) = match span.end_unix_nano {
        Some(end) => (end, span_duration(span)),
        None => (span.start_unix_nano, "started".to_owned()),
    };
    let mut line = format!(
        "{}  {}  {}  {}",
        format_utc_time_ms(time),
        style.dim(short_hex(&span.trace_id)),
        pad_right(&span.name, 24),
        duration_styled(style, span, &pad_left(&duration, 8)),
    );
    push_span_details(&mut line, span, style);
    writeln!(out, "{line}")
}

/// Appends what every one-line span rendering ends with: the key
/// attributes, an ERROR mark where the span failed, and the short span id.
fn push_span_details(line: &mut String, span: &Span, style: Style) {
    let attrs = key_attributes(span);
    if !attrs.is_empty() {
        line.push_str("  ");
        line.push_str(&attrs.join(" "));
    }
    if let Some(mark) = error_mark(span) {
        line.push_str("  ");
        line.push_str(&style.error(&mark));
    }
    line.push_str("  ");
    line.push_str(&style.dim(&format!("[{}]", span.short_id())));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_well() {
        let cases = [
            (0, "0ns"),
            (999, "999ns"),
            (1_000, "1.00µs"),
            (1_500, "1.50µs"),
            (850_000, "850µs"),
            (999_400, "999µs"),
            (999_600, "1.00ms"),
            (1_234_000, "1.23ms"),
            (9_996_000, "10.0ms"),
            (12_345_000, "12.3ms"),
            (123_456_000, "123ms"),
            (1_420_000_000, "1.42s"),
            (59_400_000_000, "59.4s"),
            (59_990_000_000, "60.0s"),
            (60_000_000_000, "1m00s"),
            (123_000_000_000, "2m03s"),
            (3_720_000_000_000, "1h02m"),
        ];
        for (nanos, text) in cases {
            assert_eq!(format_duration(nanos), text, "{nanos}ns");
        }
    }

    #[test]
    fn utc_times() {
        assert_eq!(format_utc(0), "1970-01-01 00:00:00");
        // 2023-11-14T22:13:20Z
        assert_eq!(format_utc(1_700_000_000_000_000_000), "2023-11-14 22:13:20");
        // A leap day.
        assert_eq!(format_utc(1_709_210_096_000_000_000), "2024-02-29 12:34:56");
        assert_eq!(format_utc(951_782_400_000_000_000), "2000-02-29 00:00:00");
        assert_eq!(
            format_utc_time_ms(1_700_000_000_123_456_789),
            "22:13:20.123"
        );
    }

    #[test]
    fn plain_style_adds_no_escapes() {
        assert_eq!(Style::PLAIN.error("ERROR"), "ERROR");
        assert_eq!(Style::COLOR.error("ERROR"), "\x1b[1;31mERROR\x1b[0m");
    }
}
