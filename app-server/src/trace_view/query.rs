//! Choosing traces: the filters of `skein trace ls`, the traces it hides
//! by default, and the traces of one thread.

use skein_otel::names::{attr, span};

use super::store::{Span, Trace, TraceStatus};

/// The exported name of a request span for `initialize`.
const INITIALIZE: &str = "initialize";

/// Which traces `ls` lists. The default lists every trace but the
/// housekeeping ones ([`is_housekeeping`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    /// Only traces with a failed span.
    pub errors: bool,
    /// Only traces that started at or after this time (nanoseconds since
    /// the Unix epoch).
    pub since_unix_nano: Option<u64>,
    /// Only traces with a span whose `thread.id` is this.
    pub thread: Option<String>,
    /// Only traces with a span whose `rpc.method` (or `mcp.method.name`)
    /// is this.
    pub method: Option<String>,
    /// Housekeeping traces too.
    pub all: bool,
}

impl Filter {
    /// Whether `trace` passes every filter.
    pub fn matches(&self, trace: &Trace) -> bool {
        if !self.all && is_housekeeping(trace) {
            return false;
        }
        if self.errors && trace.status() != TraceStatus::Error {
            return false;
        }
        if self
            .since_unix_nano
            .is_some_and(|since| trace.start_unix_nano() < since)
        {
            return false;
        }
        if let Some(thread) = &self.thread
            && !trace.spans.iter().any(|s| has_thread(s, thread))
        {
            return false;
        }
        if let Some(method) = &self.method
            && !trace.spans.iter().any(|s| has_method(s, method))
        {
            return false;
        }
        true
    }
}

/// A trace `ls` hides unless asked for `--all`: the `skein.shutdown` trace
/// every process leaves (kept in the store for when export fails), and an
/// `initialize` request that came without a carrier, a trace of its own.
pub fn is_housekeeping(trace: &Trace) -> bool {
    let Some(root) = trace.root() else {
        return false;
    };
    root.parent_span_id.is_none()
        && (root.name == span::SHUTDOWN || (root.name == INITIALIZE && trace.spans.len() == 1))
}

/// Whether `span` belongs to the thread `thread`.
pub fn has_thread(span: &Span, thread: &str) -> bool {
    span.attr(attr::THREAD_ID)
        .is_some_and(|v| v.to_string() == thread)
}

/// Whether `span` is a request (or MCP request) for `method`.
pub fn has_method(span: &Span, method: &str) -> bool {
    [
        attr::RPC_METHOD,
        attr::RPC_METHOD_ORIGINAL,
        attr::MCP_METHOD_NAME,
    ]
    .iter()
    .any(|key| span.attr(key).is_some_and(|v| v.to_string() == method))
}

/// The traces of thread `thread` that hold a turn (a span with a
/// `turn.id`), oldest first.
pub fn thread_turns<'a>(traces: &'a [Trace], thread: &str) -> Vec<&'a Trace> {
    let mut found: Vec<&Trace> = traces
        .iter()
        .filter(|t| {
            t.spans
                .iter()
                .any(|s| has_thread(s, thread) && s.attr(attr::TURN_ID).is_some())
        })
        .collect();
    found.sort_by_key(|t| t.start_unix_nano());
    found
}

/// The thread ids named by a trace's spans, in first-seen order.
pub fn thread_ids(trace: &Trace) -> Vec<String> {
    let mut ids: Vec<String> = Vec::new();
    for span in &trace.spans {
        if let Some(id) = span.attr(attr::THREAD_ID) {
            let id = id.to_string();
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
    }
    ids
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace_view::store::{AttrValue, SpanKind, StatusCode};

    fn span(id: &str, name: &str, parent: Option<&str>, attrs: &[(&str, &str)]) -> Span {
        Span {
            trace_id: "t".repeat(32),
            span_id: id.to_owned(),
            parent_span_id: parent.map(str::to_owned),
            name: name.to_owned(),
            kind: SpanKind::Server,
            start_unix_nano: 1_000,
            end_unix_nano: Some(2_000),
            attributes: attrs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), AttrValue::String((*v).to_owned())))
                .collect(),
            status_code: StatusCode::Unset,
            status_message: String::new(),
            events: vec![],
            links: vec![],
        }
    }

    fn trace(spans: Vec<Span>) -> Trace {
        Trace::new("t".repeat(32), spans)
    }

    #[test]
    fn shutdown_and_bare_initialize_are_housekeeping() {
        assert!(is_housekeeping(&trace(vec![span(
            "a",
            "skein.shutdown",
            None,
            &[]
        )])));
        assert!(is_housekeeping(&trace(vec![span(
            "a",
            "initialize",
            None,
            &[]
        )])));
        // An initialize that continued a client's trace is the client's.
        assert!(!is_housekeeping(&trace(vec![span(
            "a",
            "initialize",
            Some("client"),
            &[]
        )])));
        assert!(!is_housekeeping(&trace(vec![span(
            "a",
            "turn/start",
            None,
            &[]
        )])));
        let hidden = trace(vec![span("a", "skein.shutdown", None, &[])]);
        assert!(!Filter::default().matches(&hidden));
        assert!(
            Filter {
                all: true,
                ..Filter::default()
            }
            .matches(&hidden)
        );
    }

    #[test]
    fn filters_by_thread_and_method() {
        let t = trace(vec![span(
            "a",
            "turn/start",
            None,
            &[("rpc.method", "turn/start"), ("thread.id", "th1")],
        )]);
        let by = |thread: Option<&str>, method: Option<&str>| Filter {
            thread: thread.map(str::to_owned),
            method: method.map(str::to_owned),
            ..Filter::default()
        };
        assert!(by(Some("th1"), None).matches(&t));
        assert!(!by(Some("th2"), None).matches(&t));
        assert!(by(None, Some("turn/start")).matches(&t));
        assert!(!by(None, Some("thread/start")).matches(&t));
        let since = Filter {
            since_unix_nano: Some(1_001),
            ..Filter::default()
        };
        assert!(!since.matches(&t));
    }
}
