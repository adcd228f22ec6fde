//! A trace's spans as a tree, flattened into display rows.
//!
//! Children are ordered by start time. Spans whose parent is not in the
//! store (a client's span, say) hang under an [`Node::External`]
//! placeholder for that parent, so no span is ever dropped; spans caught
//! in a parent cycle (malformed data) are shown from the earliest of them.

use std::collections::{BTreeMap, HashMap, HashSet};

use super::store::{Span, Trace};

/// What a row shows.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Node<'a> {
    /// A span of the trace.
    Span(&'a Span),
    /// A parent span that is not in the store.
    External {
        /// The missing parent's span id.
        parent_span_id: &'a str,
    },
}

/// One row of the tree, in display order.
#[derive(Clone, Debug, PartialEq)]
pub struct Row<'a> {
    /// The span or placeholder.
    pub node: Node<'a>,
    /// 0 for the top level.
    pub depth: usize,
    /// The box-drawing guide before the node (`├─ `, `│  └─ `...).
    pub guide: String,
    /// The guide for lines below the node that belong to it: details and
    /// children's guides start with it.
    pub child_guide: String,
    /// Whether children follow.
    pub has_children: bool,
}

/// Flattens `trace` into rows, depth first.
pub fn rows(trace: &Trace) -> Vec<Row<'_>> {
    let spans = &trace.spans;
    let by_id: HashMap<&str, usize> = spans
        .iter()
        .enumerate()
        .map(|(i, s)| (s.span_id.as_str(), i))
        .collect();
    // Spans are ordered by start, so these lists are too.
    let mut children: HashMap<&str, Vec<usize>> = HashMap::new();
    let mut external: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    let mut top: Vec<(u64, &str, Node<'_>)> = Vec::new();
    for (i, span) in spans.iter().enumerate() {
        match span.parent_span_id.as_deref() {
            None => top.push((span.start_unix_nano, &span.span_id, Node::Span(span))),
            Some(parent) if by_id.contains_key(parent) => {
                children.entry(parent).or_default().push(i);
            }
            Some(parent) => external.entry(parent).or_default().push(i),
        }
    }
    for (parent, kids) in &external {
        let start = kids
            .first()
            .and_then(|&i| spans.get(i))
            .map_or(0, |s| s.start_unix_nano);
        top.push((
            start,
            parent,
            Node::External {
                parent_span_id: parent,
            },
        ));
    }
    top.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.cmp(b.1)));

    let mut out = Vec::with_capacity(spans.len() + external.len());
    let mut visited: HashSet<usize> = HashSet::new();
    let tops = top.into_iter().map(|(_, _, node)| node).collect::<Vec<_>>();
    let mut walker = Walker {
        spans,
        by_id: &by_id,
        children: &children,
        external: &external,
        visited: &mut visited,
        out: &mut out,
    };
    for node in tops {
        walker.walk(node);
    }
    // Whatever is left sits in a parent cycle: show it from its earliest.
    for span in spans {
        let seen = by_id
            .get(span.span_id.as_str())
            .is_some_and(|i| walker.visited.contains(i));
        if !seen {
            walker.walk(Node::Span(span));
        }
    }
    out
}

struct Walker<'a, 'w> {
    spans: &'a [Span],
    by_id: &'w HashMap<&'a str, usize>,
    children: &'w HashMap<&'a str, Vec<usize>>,
    external: &'w BTreeMap<&'a str, Vec<usize>>,
    visited: &'w mut HashSet<usize>,
    out: &'w mut Vec<Row<'a>>,
}

impl<'a> Walker<'a, '_> {
    /// Emits `top` and everything under it, iteratively (no recursion, so
    /// deep trees cannot overflow the stack).
    fn walk(&mut self, top: Node<'a>) {
        // (node, depth, guide, child guide), popped in display order.
        let mut stack = vec![(top, 0_usize, String::new(), String::new())];
        while let Some((node, depth, guide, child_guide)) = stack.pop() {
            let kids: Vec<usize> = match node {
                Node::Span(span) => {
                    if let Some(&i) = self.by_id.get(span.span_id.as_str())
                        && !self.visited.insert(i)
                    {
                        continue;
                    }
                    self.children.get(span.span_id.as_str())
                }
                Node::External { parent_span_id } => self.external.get(parent_span_id),
            }
            .map(|kids| {
                kids.iter()
                    .copied()
                    .filter(|i| !self.visited.contains(i))
                    .collect()
            })
            .unwrap_or_default();
            let count = kids.len();
            for (n, &i) in kids.iter().enumerate().rev() {
                let Some(kid) = self.spans.get(i) else {
                    continue;
                };
                let last = n + 1 == count;
                stack.push((
                    Node::Span(kid),
                    depth + 1,
                    format!("{child_guide}{}", if last { "└─ " } else { "├─ " }),
                    format!("{child_guide}{}", if last { "   " } else { "│  " }),
                ));
            }
            self.out.push(Row {
                node,
                depth,
                guide,
                child_guide,
                has_children: count > 0,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace_view::store::{SpanKind, StatusCode};

    fn span(id: &str, parent: Option<&str>, start: u64) -> Span {
        Span {
            trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".into(),
            span_id: id.repeat(16),
            parent_span_id: parent.map(|p| p.repeat(16)),
            name: id.into(),
            kind: SpanKind::Internal,
            start_unix_nano: start,
            end_unix_nano: Some(start + 1),
            attributes: Vec::new(),
            status_code: StatusCode::Unset,
            status_message: String::new(),
            events: Vec::new(),
            links: Vec::new(),
        }
    }

    fn show(trace: &Trace) -> Vec<String> {
        rows(trace)
            .into_iter()
            .map(|row| match row.node {
                Node::Span(s) => format!("{}{}", row.guide, s.name),
                Node::External { parent_span_id } => {
                    format!("{}<{}>", row.guide, &parent_span_id[..1])
                }
            })
            .collect()
    }

    #[test]
    fn children_sorted_by_start_under_their_parents() {
        let trace = Trace::new(
            "t".into(),
            vec![
                span("a", None, 1),
                span("c", Some("a"), 5),
                span("b", Some("a"), 2),
                span("d", Some("b"), 3),
                span("e", None, 9),
            ],
        );
        assert_eq!(show(&trace), ["a", "├─ b", "│  └─ d", "└─ c", "e"]);
    }

    #[test]
    fn external_parents_get_a_placeholder() {
        let trace = Trace::new(
            "t".into(),
            vec![
                span("a", Some("f"), 2),
                span("b", Some("a"), 3),
                span("c", Some("f"), 4),
                span("d", Some("e"), 1),
            ],
        );
        assert_eq!(
            show(&trace),
            ["<e>", "└─ d", "<f>", "├─ a", "│  └─ b", "└─ c"]
        );
    }

    #[test]
    fn cycles_are_not_dropped() {
        let trace = Trace::new(
            "t".into(),
            vec![
                span("a", Some("b"), 1),
                span("b", Some("a"), 2),
                span("c", Some("c"), 3),
            ],
        );
        assert_eq!(show(&trace), ["a", "└─ b", "c"]);
    }
}
