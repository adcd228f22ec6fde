//! `skein trace stats`: counts, error rates and duration percentiles of
//! finished spans, per request method, per model and per tool.
//!
//! - A request is a SERVER span with an `rpc.method`, grouped by it.
//! - A model call is a span with `gen_ai.operation.name = chat`, grouped by
//!   `gen_ai.request.model`, with its token totals and, where prices were
//!   configured, its cost totals (`skein.usage.cost`, per
//!   `skein.usage.cost.currency`).
//! - A tool call is a span with `gen_ai.operation.name = execute_tool`,
//!   grouped by `gen_ai.tool.name`.
//!
//! Spans still in progress are left out: they have no duration or outcome
//! yet. Percentiles are nearest-rank.

use std::collections::BTreeMap;
use std::io::Write;

use serde_json::json;
use skein_core::config::DEFAULT_CURRENCY;
use skein_otel::names::{attr, value};

use super::json::write_line;
use super::render::{format_duration, pad_left, pad_right, width};
use super::store::{AttrValue, Span, SpanKind, Trace};

/// What a group of spans is grouped by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Group {
    /// Request spans, by `rpc.method`.
    Method,
    /// `chat` spans, by `gen_ai.request.model`.
    Model,
    /// `execute_tool` spans, by `gen_ai.tool.name`.
    Tool,
}

impl Group {
    /// `method`, `model` or `tool` (the `group` field of `--json`).
    pub fn as_str(self) -> &'static str {
        match self {
            Group::Method => "method",
            Group::Model => "model",
            Group::Tool => "tool",
        }
    }

    fn heading(self) -> &'static str {
        match self {
            Group::Method => "REQUEST METHOD",
            Group::Model => "MODEL (chat)",
            Group::Tool => "TOOL (execute_tool)",
        }
    }
}

/// The figures of one group.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Row {
    /// Finished spans with an ERROR status.
    pub errors: u64,
    /// The durations of the finished spans, in nanoseconds, shortest
    /// first.
    durations: Vec<u64>,
    /// `gen_ai.usage.input_tokens`, summed.
    pub input_tokens: u64,
    /// `gen_ai.usage.output_tokens`, summed.
    pub output_tokens: u64,
    /// `skein.usage.cost`, summed per `skein.usage.cost.currency` (empty
    /// when no span had a cost: no price was configured).
    pub costs: BTreeMap<String, f64>,
}

impl Row {
    /// Finished spans.
    pub fn count(&self) -> u64 {
        self.durations.len() as u64
    }

    /// `errors / count`.
    pub fn error_rate(&self) -> f64 {
        match self.count() {
            0 => 0.0,
            count => self.errors as f64 / count as f64,
        }
    }

    /// The nearest-rank percentile `p` (0 to 100) of the durations.
    pub fn percentile(&self, p: u32) -> Option<u64> {
        let n = self.durations.len();
        if n == 0 {
            return None;
        }
        let rank = (u64::from(p) * n as u64).div_ceil(100).max(1);
        let index = usize::try_from(rank).map_or(n - 1, |r| (r - 1).min(n - 1));
        self.durations.get(index).copied()
    }
}

/// Statistics over a set of traces.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    rows: BTreeMap<(Group, String), Row>,
}

fn tokens(span: &Span, key: &str) -> u64 {
    match span.attr(key) {
        Some(AttrValue::Int(n)) => u64::try_from(*n).unwrap_or_default(),
        _ => 0,
    }
}

/// The span's `skein.usage.cost` and its currency, if it has a cost.
fn cost(span: &Span) -> Option<(String, f64)> {
    let amount = match span.attr(attr::SKEIN_USAGE_COST)? {
        AttrValue::Double(amount) => *amount,
        AttrValue::Int(amount) => *amount as f64,
        _ => return None,
    };
    let currency = match span.attr(attr::SKEIN_USAGE_COST_CURRENCY) {
        Some(AttrValue::String(currency)) => currency.clone(),
        _ => DEFAULT_CURRENCY.to_owned(),
    };
    amount.is_finite().then_some((currency, amount))
}

/// Sums of money as `0.0042 USD`, one per currency, joined by ` + `.
fn format_costs(costs: &BTreeMap<String, f64>) -> String {
    if costs.is_empty() {
        return "-".to_owned();
    }
    costs
        .iter()
        .map(|(currency, amount)| format!("{} {currency}", format_amount(*amount)))
        .collect::<Vec<_>>()
        .join(" + ")
}

/// At most six decimals (a model call often costs a fraction of a cent),
/// trailing zeros dropped down to two: `0.00011`, `12.50`, `3.00`.
fn format_amount(amount: f64) -> String {
    let mut text = format!("{amount:.6}");
    // `{:.6}` always writes the point and six decimals.
    let keep = text.find('.').map_or(text.len(), |dot| dot + 3);
    while text.len() > keep && text.ends_with('0') {
        text.pop();
    }
    text
}

fn group_of(span: &Span) -> Option<(Group, String)> {
    let operation = span
        .attr(attr::GEN_AI_OPERATION_NAME)
        .map(|v| v.to_string());
    match operation.as_deref() {
        Some(value::GEN_AI_OPERATION_CHAT) => {
            let model = span.attr(attr::GEN_AI_REQUEST_MODEL).map(|v| v.to_string());
            return Some((Group::Model, model.unwrap_or_else(|| span.name.clone())));
        }
        Some(value::GEN_AI_OPERATION_EXECUTE_TOOL) => {
            let tool = span.attr(attr::GEN_AI_TOOL_NAME).map(|v| v.to_string());
            return Some((Group::Tool, tool.unwrap_or_else(|| span.name.clone())));
        }
        _ => {}
    }
    if span.kind == SpanKind::Server {
        return span
            .attr(attr::RPC_METHOD)
            .map(|m| (Group::Method, m.to_string()));
    }
    None
}

impl Stats {
    /// The statistics of the finished spans of `traces` that started at or
    /// after `since_unix_nano`.
    pub fn of<'a>(traces: impl IntoIterator<Item = &'a Trace>, since_unix_nano: u64) -> Self {
        let mut stats = Stats::default();
        for span in traces.into_iter().flat_map(|t| &t.spans) {
            if span.start_unix_nano < since_unix_nano {
                continue;
            }
            let Some(duration) = span.duration_nanos() else {
                continue;
            };
            let Some(key) = group_of(span) else {
                continue;
            };
            let row = stats.rows.entry(key).or_default();
            row.errors += u64::from(span.is_error());
            row.durations.push(duration);
            row.input_tokens += tokens(span, attr::GEN_AI_USAGE_INPUT_TOKENS);
            row.output_tokens += tokens(span, attr::GEN_AI_USAGE_OUTPUT_TOKENS);
            if let Some((currency, amount)) = cost(span) {
                *row.costs.entry(currency).or_default() += amount;
            }
        }
        for row in stats.rows.values_mut() {
            row.durations.sort_unstable();
        }
        stats
    }

    /// The rows: methods, then models, then tools, each by name.
    pub fn rows(&self) -> impl Iterator<Item = (Group, &str, &Row)> {
        self.rows
            .iter()
            .map(|((group, name), row)| (*group, name.as_str(), row))
    }

    /// Whether no span was counted.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }
}

fn percent(rate: f64) -> String {
    format!("{:.1}%", rate * 100.0)
}

/// Writes one table per group that has rows. The model table has a COST
/// column when any model call had a cost.
pub fn write_text(out: &mut dyn Write, stats: &Stats) -> std::io::Result<()> {
    let mut first = true;
    for group in [Group::Method, Group::Model, Group::Tool] {
        let rows: Vec<(&str, &Row)> = stats
            .rows()
            .filter(|(g, _, _)| *g == group)
            .map(|(_, name, row)| (name, row))
            .collect();
        if rows.is_empty() {
            continue;
        }
        if !first {
            writeln!(out)?;
        }
        first = false;
        let mut header = vec![
            group.heading(),
            "COUNT",
            "ERRORS",
            "ERR%",
            "P50",
            "P95",
            "P99",
        ];
        let with_cost = group == Group::Model && rows.iter().any(|(_, r)| !r.costs.is_empty());
        if group == Group::Model {
            header.extend(["TOKENS IN", "TOKENS OUT"]);
        }
        if with_cost {
            header.push("COST");
        }
        let lines: Vec<Vec<String>> = rows
            .iter()
            .map(|(name, row)| {
                let p = |q| row.percentile(q).map_or("-".to_owned(), format_duration);
                let mut cells = vec![
                    (*name).to_owned(),
                    row.count().to_string(),
                    row.errors.to_string(),
                    percent(row.error_rate()),
                    p(50),
                    p(95),
                    p(99),
                ];
                if group == Group::Model {
                    cells.push(row.input_tokens.to_string());
                    cells.push(row.output_tokens.to_string());
                }
                if with_cost {
                    cells.push(format_costs(&row.costs));
                }
                cells
            })
            .collect();
        let mut widths: Vec<usize> = header.iter().map(|h| width(h)).collect();
        for line in &lines {
            for (w, cell) in widths.iter_mut().zip(line) {
                *w = (*w).max(width(cell));
            }
        }
        let format_row = |cells: &[String]| {
            let padded: Vec<String> = cells
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    // The name left-aligned, the figures right-aligned.
                    if i == 0 {
                        pad_right(c, widths[i])
                    } else {
                        pad_left(c, widths[i])
                    }
                })
                .collect();
            padded.join("  ").trim_end().to_owned()
        };
        let header: Vec<String> = header.iter().map(|h| (*h).to_owned()).collect();
        writeln!(out, "{}", format_row(&header))?;
        for line in &lines {
            writeln!(out, "{}", format_row(line))?;
        }
    }
    Ok(())
}

/// Writes one JSON object per row: `group` (`method`, `model` or `tool`),
/// `name`, `count`, `errors`, `error_rate`, `p50_ns`, `p95_ns`, `p99_ns`,
/// `input_tokens`, `output_tokens`, `cost` (an object of currency to
/// summed `skein.usage.cost`, empty when none).
pub fn write_json(out: &mut dyn Write, stats: &Stats) -> std::io::Result<()> {
    for (group, name, row) in stats.rows() {
        write_line(
            out,
            &json!({
                "group": group.as_str(),
                "name": name,
                "count": row.count(),
                "errors": row.errors,
                "error_rate": row.error_rate(),
                "p50_ns": row.percentile(50),
                "p95_ns": row.percentile(95),
                "p99_ns": row.percentile(99),
                "input_tokens": row.input_tokens,
                "output_tokens": row.output_tokens,
                "cost": row.costs,
            }),
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(attrs: &[(&str, AttrValue)], kind: SpanKind, error: bool) -> Span {
        Span {
            trace_id: "t".repeat(32),
            span_id: "s".repeat(16),
            parent_span_id: None,
            name: "x".to_owned(),
            kind,
            start_unix_nano: 1_000,
            end_unix_nano: Some(3_000),
            attributes: attrs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.clone()))
                .collect(),
            status_code: if error {
                super::super::store::StatusCode::Error
            } else {
                super::super::store::StatusCode::Unset
            },
            status_message: String::new(),
            events: vec![],
            links: vec![],
        }
    }

    #[test]
    fn spans_are_grouped_by_method_model_and_tool() {
        let s = |v: &str| AttrValue::String(v.to_owned());
        let trace = Trace::new(
            "t".repeat(32),
            vec![
                span(&[("rpc.method", s("turn/start"))], SpanKind::Server, false),
                span(
                    &[
                        ("gen_ai.operation.name", s("chat")),
                        ("gen_ai.request.model", s("m1")),
                        ("gen_ai.usage.input_tokens", AttrValue::Int(5)),
                        ("gen_ai.usage.output_tokens", AttrValue::Int(7)),
                    ],
                    SpanKind::Client,
                    false,
                ),
                span(
                    &[
                        ("gen_ai.operation.name", s("execute_tool")),
                        ("gen_ai.tool.name", s("get_time")),
                    ],
                    SpanKind::Internal,
                    true,
                ),
                // A client's request span is not a request Skein served.
                span(&[("rpc.method", s("tools/call"))], SpanKind::Client, false),
            ],
        );
        let stats = Stats::of([&trace], 0);
        let rows: Vec<(Group, &str, u64, u64, u64)> = stats
            .rows()
            .map(|(g, n, r)| (g, n, r.count(), r.errors, r.input_tokens + r.output_tokens))
            .collect();
        assert_eq!(
            rows,
            vec![
                (Group::Method, "turn/start", 1, 0, 0),
                (Group::Model, "m1", 1, 0, 12),
                (Group::Tool, "get_time", 1, 1, 0),
            ]
        );
        assert!(Stats::of([&trace], 1_001).is_empty());
    }

    #[test]
    fn amounts_keep_up_to_six_decimals_and_at_least_two() {
        assert_eq!(format_amount(0.00011), "0.00011");
        assert_eq!(format_amount(12.5), "12.50");
        assert_eq!(format_amount(3.0), "3.00");
        assert_eq!(format_amount(0.0000004), "0.00");
        let costs: BTreeMap<String, f64> =
            [("EUR".to_owned(), 1.25), ("USD".to_owned(), 0.002)].into();
        assert_eq!(format_costs(&costs), "1.25 EUR + 0.002 USD");
        assert_eq!(format_costs(&BTreeMap::new()), "-");
    }

    #[test]
    fn nearest_rank_percentiles() {
        let row = Row {
            durations: (1..=10).collect(),
            ..Row::default()
        };
        assert_eq!(row.percentile(50), Some(5));
        assert_eq!(row.percentile(95), Some(10));
        assert_eq!(row.percentile(99), Some(10));
        assert_eq!(row.percentile(0), Some(1));
        let one = Row {
            durations: vec![7],
            ..Row::default()
        };
        assert_eq!(one.percentile(50), Some(7));
        assert_eq!(Row::default().percentile(50), None);
    }
}
