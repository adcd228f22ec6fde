//! Trace carriers: reading them, choosing among them, parenting spans from
//! them, and writing the current span back into one.
//!
//! Parsing is strict (see [`crate::w3c`]). An invalid carrier is never an
//! error for the caller: it is logged as a warning with the reason and
//! treated as absent, so the next source gets its turn.

use std::fmt;
use std::sync::OnceLock;

use opentelemetry::Context;
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use serde_json::Value;
use skein_protocol::{SubmissionTrace, W3cBaggage, W3cTraceContext};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::baggage::{self, BaggageError};
use crate::w3c::{self, W3cError};

/// Where a carrier came from, in precedence order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CarrierSource {
    /// The JSON-RPC envelope's `trace` field.
    Envelope,
    /// `params._meta.traceparent` / `tracestate` (the MCP convention).
    ParamsMeta,
    /// The process environment's `TRACEPARENT` / `TRACESTATE`.
    Environment,
    /// The HTTP request's `traceparent` / `tracestate` headers.
    HttpHeaders,
    /// The `traceparent` / `tracestate` headers of the request that opened
    /// the WebSocket connection.
    WebSocketUpgrade,
}

impl fmt::Display for CarrierSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CarrierSource::Envelope => "envelope `trace`",
            CarrierSource::ParamsMeta => "`params._meta`",
            CarrierSource::Environment => "TRACEPARENT environment variable",
            CarrierSource::HttpHeaders => "HTTP `traceparent` header",
            CarrierSource::WebSocketUpgrade => "WebSocket upgrade `traceparent` header",
        })
    }
}

/// Why a carrier was ignored.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CarrierError {
    /// The carrier was not a JSON object.
    #[error("carrier must be an object with `traceparent`, got {0}")]
    NotAnObject(&'static str),
    /// A field had the wrong JSON type.
    #[error("`{field}` must be a string, got {got}")]
    NotAString {
        /// The field.
        field: &'static str,
        /// Its JSON type.
        got: &'static str,
    },
    /// `tracestate` without `traceparent`.
    #[error("`tracestate` given without `traceparent`")]
    MissingTraceparent,
    /// The traceparent broke the W3C grammar.
    #[error("invalid traceparent: {0}")]
    Traceparent(#[from] W3cError),
    /// The `baggage` member broke W3C Baggage: it is ignored as a whole
    /// (the carrier's traceparent is still used).
    #[error("invalid baggage: {0}")]
    Baggage(#[from] BaggageError),
}

/// Reads a carrier object (`{"traceparent": ..., "tracestate": ...}`) of
/// any JSON shape.
///
/// Returns `Ok(None)` when there is nothing to read (`null`, or an object
/// with neither field), and an error when the shape is wrong.
pub fn carrier_from_json(value: &Value) -> Result<Option<W3cTraceContext>, CarrierError> {
    Ok(
        carrier_fields(value)?.map(|(traceparent, tracestate)| W3cTraceContext {
            traceparent: traceparent.map(str::to_owned),
            tracestate: tracestate.map(str::to_owned),
            baggage: None,
        }),
    )
}

/// A carrier's `traceparent` and `tracestate`, borrowed.
type CarrierFields<'a> = (Option<&'a str>, Option<&'a str>);

/// The fields of a carrier object; `None` when there is nothing to read
/// (see [`carrier_from_json`]).
fn carrier_fields(value: &Value) -> Result<Option<CarrierFields<'_>>, CarrierError> {
    let obj = match value {
        Value::Null => return Ok(None),
        Value::Object(obj) => obj,
        other => return Err(CarrierError::NotAnObject(json_type(other))),
    };
    let field = |name: &'static str| -> Result<Option<&str>, CarrierError> {
        match obj.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.as_str())),
            Some(other) => Err(CarrierError::NotAString {
                field: name,
                got: json_type(other),
            }),
        }
    };
    let traceparent = field(w3c::TRACEPARENT)?;
    let tracestate = field(w3c::TRACESTATE)?;
    Ok((traceparent.is_some() || tracestate.is_some()).then_some((traceparent, tracestate)))
}

/// The remote span context a carrier object names, read without copying
/// it: [`carrier_from_json`] then [`span_context_from_carrier`].
fn span_context_from_json(value: &Value) -> Result<Option<SpanContext>, CarrierError> {
    carrier_fields(value)?
        .map(|(traceparent, tracestate)| span_context_from_fields(traceparent, tracestate))
        .transpose()
}

/// Parses a carrier into a remote span context.
///
/// An invalid `tracestate` is dropped with a warning; it does not
/// invalidate the `traceparent`.
pub fn span_context_from_carrier(carrier: &W3cTraceContext) -> Result<SpanContext, CarrierError> {
    span_context_from_fields(
        carrier.traceparent.as_deref(),
        carrier.tracestate.as_deref(),
    )
}

/// [`span_context_from_carrier`] for the carrier's two fields, borrowed.
fn span_context_from_fields(
    traceparent: Option<&str>,
    tracestate: Option<&str>,
) -> Result<SpanContext, CarrierError> {
    let traceparent = traceparent.ok_or(CarrierError::MissingTraceparent)?;
    let (cx, tracestate_error) = w3c::span_context(traceparent, tracestate)?;
    if let Some(reason) = tracestate_error {
        tracing::warn!(%reason, "dropping invalid tracestate; the traceparent is still used");
    }
    Ok(cx)
}

/// Parses a carrier into an OpenTelemetry [`Context`] whose active span is
/// the remote parent.
pub fn context_from_carrier(carrier: &W3cTraceContext) -> Result<Context, CarrierError> {
    span_context_from_carrier(carrier).map(|sc| Context::new().with_remote_span_context(sc))
}

/// The carrier from the process environment (`TRACEPARENT`, `TRACESTATE`),
/// read once and remembered.
pub fn env_carrier() -> Option<&'static W3cTraceContext> {
    static ENV: OnceLock<Option<W3cTraceContext>> = OnceLock::new();
    ENV.get_or_init(|| {
        let carrier = W3cTraceContext {
            traceparent: std::env::var("TRACEPARENT").ok(),
            tracestate: std::env::var("TRACESTATE").ok(),
            baggage: None,
        };
        (!carrier.is_empty()).then_some(carrier)
    })
    .as_ref()
}

/// The outcome of choosing a parent among carriers.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ParentChoice {
    /// The chosen remote parent, if any carrier was valid.
    pub parent: Option<SpanContext>,
    /// Which source it came from.
    pub source: Option<CarrierSource>,
    /// The W3C baggage of the first candidate with a `baggage` member,
    /// when valid.
    pub baggage: Option<W3cBaggage>,
    /// The carriers that were present but invalid, tried before the chosen
    /// one, with the reason each was ignored. The caller logs them, in the
    /// context it knows (the request, say).
    pub rejected: Vec<(CarrierSource, CarrierError)>,
}

/// Chooses a remote parent: the first valid carrier among `candidates`, in
/// order, then the environment's. Invalid carriers are skipped and listed in
/// [`ParentChoice::rejected`]. With none valid, the choice has no parent
/// and the span will be a root.
///
/// A candidate is a raw JSON carrier (the envelope's `trace` value or the
/// `params._meta` object), so any JSON shape is handled here.
pub fn choose_parent<'a>(
    candidates: impl IntoIterator<Item = (CarrierSource, Option<&'a Value>)>,
) -> ParentChoice {
    let mut choice = choose_parent_among(candidates);
    if choice.parent.is_some() {
        return choice;
    }
    if let Some(carrier) = env_carrier() {
        match span_context_from_carrier(carrier) {
            Ok(parent) => {
                choice.parent = Some(parent);
                choice.source = Some(CarrierSource::Environment);
            }
            Err(reason) => choice.rejected.push((CarrierSource::Environment, reason)),
        }
    }
    choice
}

/// Like [`choose_parent`], without the environment's carrier: the first
/// valid carrier among `candidates`, or none.
///
/// Baggage is read from the first candidate that has a `baggage` member
/// (whichever carrier gave the parent); an invalid one is listed in
/// [`ParentChoice::rejected`] and ignored as a whole.
pub fn choose_parent_among<'a>(
    candidates: impl IntoIterator<Item = (CarrierSource, Option<&'a Value>)>,
) -> ParentChoice {
    let mut choice = ParentChoice::default();
    let mut baggage_seen = false;
    for (source, raw) in candidates {
        let Some(raw) = raw else { continue };
        if !baggage_seen {
            match baggage::baggage_from_json(raw) {
                Ok(None) => {}
                Ok(Some(found)) => {
                    baggage_seen = true;
                    choice.baggage = Some(found);
                }
                Err(reason) => {
                    baggage_seen = true;
                    choice.rejected.push((source, reason.into()));
                }
            }
        }
        if choice.parent.is_none() {
            match span_context_from_json(raw) {
                Ok(Some(parent)) => {
                    choice.parent = Some(parent);
                    choice.source = Some(source);
                }
                Ok(None) => {}
                Err(reason) => choice.rejected.push((source, reason)),
            }
        }
        if choice.parent.is_some() && baggage_seen {
            break;
        }
    }
    choice
}

/// Makes `parent` the OTel parent of a freshly created tracing span.
///
/// Must be called before the span is entered or its context read. When the
/// span is disabled or the OTel layer is absent there is nothing to parent,
/// and the call does nothing.
pub fn set_remote_parent(span: &tracing::Span, parent: SpanContext) {
    let cx = Context::new().with_remote_span_context(parent);
    if let Err(err) = span.set_parent(cx) {
        tracing::debug!(%err, "could not set a span's remote parent");
    }
}

/// Sets a string array attribute on a tracing span (`tracing` fields hold
/// only scalars). Does nothing when the span is disabled or the OTel layer
/// is absent.
pub fn set_string_array(span: &tracing::Span, key: &'static str, values: &[String]) {
    let values: Vec<opentelemetry::StringValue> = values.iter().map(|v| v.clone().into()).collect();
    span.set_attribute(key, opentelemetry::Value::Array(values.into()));
}

/// The span context of a tracing span, when it has a valid one.
pub fn span_context_of(span: &tracing::Span) -> Option<SpanContext> {
    valid_span_context(&span.context())
}

/// The carrier for a tracing span: its trace id and span id as a
/// `traceparent`, its `tracestate`, and the baggage its context carries.
pub fn carrier_for_span(span: &tracing::Span) -> Option<W3cTraceContext> {
    let cx = span.context();
    let sc = valid_span_context(&cx)?;
    let mut carrier = carrier_for_span_context(&sc)?;
    carrier.baggage = baggage::baggage_of(&cx).map(|b| b.header.clone());
    Some(carrier)
}

/// The carrier for a span context.
pub fn carrier_for_span_context(sc: &SpanContext) -> Option<W3cTraceContext> {
    w3c::to_headers(sc).map(|(traceparent, tracestate)| W3cTraceContext {
        traceparent: Some(traceparent),
        tracestate,
        baggage: None,
    })
}

/// A span's trace id and span id as lowercase hex, the form thread
/// history records them in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpanIds {
    /// 32 hex digits.
    pub trace_id: String,
    /// 16 hex digits.
    pub span_id: String,
}

/// The ids of a span's context.
pub fn span_ids(sc: &SpanContext) -> SpanIds {
    SpanIds {
        trace_id: sc.trace_id().to_string(),
        span_id: sc.span_id().to_string(),
    }
}

/// The (sampled) span `trace_id`/`span_id`, as recorded in history;
/// `None` when the ids are not valid hex ids.
pub fn span_context_from_ids(trace_id: &str, span_id: &str) -> Option<SpanContext> {
    let trace_id = TraceId::from_hex(trace_id).ok()?;
    let span_id = SpanId::from_hex(span_id).ok()?;
    let sc = SpanContext::new(
        trace_id,
        span_id,
        TraceFlags::SAMPLED,
        true,
        TraceState::default(),
    );
    sc.is_valid().then_some(sc)
}

/// The current context: the current `tracing` span's when its span is
/// valid, else the current OpenTelemetry context.
fn current_context() -> Context {
    let cx = tracing::Span::current().context();
    if cx.span().span_context().is_valid() {
        cx
    } else {
        Context::current()
    }
}

/// The valid span context of an OTel context, if it has one.
fn valid_span_context(cx: &Context) -> Option<SpanContext> {
    let sc = cx.span().span_context().clone();
    sc.is_valid().then_some(sc)
}

/// The context of the current span (or, outside any tracing span, of the
/// current OpenTelemetry context), for handing work to another task of
/// this process without rendering it to a carrier.
pub fn current_span_context() -> Option<SpanContext> {
    valid_span_context(&current_context())
}

/// What a submission continues ([`SubmissionTrace`]): the current span's
/// context as [`current_span_context`] finds it, with the baggage of the
/// same context.
pub fn current_submission_trace() -> Option<SubmissionTrace> {
    let cx = current_context();
    valid_span_context(&cx).map(|span| SubmissionTrace {
        span,
        baggage: baggage::baggage_of(&cx).cloned(),
    })
}

/// Makes a submission's context the OTel parent of a freshly created
/// tracing span, its baggage included (so every span beneath it, and every
/// carrier written from them, has it). Must be called before the span is
/// entered or its context read.
pub fn set_submission_parent(span: &tracing::Span, trace: &SubmissionTrace) {
    let cx = baggage::with_baggage(
        Context::new().with_remote_span_context(trace.span.clone()),
        trace.baggage.clone(),
    );
    if let Err(err) = span.set_parent(cx) {
        tracing::debug!(%err, "could not set a span's remote parent");
    }
}

/// Adds an OTel span link from a not-yet-started span to `target`.
pub fn add_link(span: &tracing::Span, target: SpanContext) {
    span.add_link(target);
}

/// Writes `span`'s context into an outbound request as the W3C
/// `traceparent`, `tracestate` and `baggage` fields, through `set(name,
/// value)`: HTTP headers of a model API call, or `params._meta` of an MCP
/// request. The one place where Skein's context leaves the process.
pub fn inject(span: &tracing::Span, set: impl FnMut(&'static str, String)) {
    inject_context(&span.context(), set);
}

/// [`inject`] for the current context: the current `tracing` span's, else
/// the current OpenTelemetry context's ([`current_span_context`]). Writes
/// nothing outside any span.
pub fn inject_current(set: impl FnMut(&'static str, String)) {
    inject_context(&current_context(), set);
}

/// [`inject`] for an OTel context: its span's fields, then its baggage.
fn inject_context(cx: &Context, mut set: impl FnMut(&'static str, String)) {
    let Some(sc) = valid_span_context(cx) else {
        return;
    };
    inject_span_context(&sc, &mut set);
    if let Some(baggage) = baggage::baggage_of(cx) {
        set(baggage::BAGGAGE, baggage.header.clone());
    }
}

/// [`inject`] for a span context.
fn inject_span_context(sc: &SpanContext, mut set: impl FnMut(&'static str, String)) {
    if let Some((traceparent, tracestate)) = w3c::to_headers(sc) {
        set(w3c::TRACEPARENT, traceparent);
        if let Some(tracestate) = tracestate {
            set(w3c::TRACESTATE, tracestate);
        }
    }
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const TP: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

    #[test]
    fn carrier_of_wrong_shape_is_an_error_not_a_panic() {
        for bad in [json!(42), json!("x"), json!([TP])] {
            assert!(matches!(
                carrier_from_json(&bad),
                Err(CarrierError::NotAnObject(_))
            ));
        }
        assert!(matches!(
            carrier_from_json(&json!({"traceparent": 7})),
            Err(CarrierError::NotAString {
                field: "traceparent",
                ..
            })
        ));
    }

    #[test]
    fn empty_carrier_reads_as_absent() {
        assert_eq!(carrier_from_json(&json!(null)), Ok(None));
        assert_eq!(carrier_from_json(&json!({})), Ok(None));
        assert_eq!(carrier_from_json(&json!({"baggage": "k=v"})), Ok(None));
    }

    #[test]
    fn first_valid_candidate_wins() {
        let bad = json!({"traceparent": "00-XYZ"});
        let meta = json!({"traceparent": TP});
        let choice = choose_parent([
            (CarrierSource::Envelope, Some(&bad)),
            (CarrierSource::ParamsMeta, Some(&meta)),
        ]);
        assert_eq!(choice.source, Some(CarrierSource::ParamsMeta));
        assert_eq!(choice.rejected.len(), 1);
        assert_eq!(choice.rejected[0].0, CarrierSource::Envelope);
        let parent = choice.parent.expect("parent");
        assert_eq!(
            parent.trace_id().to_string(),
            "0af7651916cd43dd8448eb211c80319c"
        );
        assert!(parent.is_remote());
    }

    #[test]
    fn tracestate_alone_is_invalid() {
        let c = W3cTraceContext {
            traceparent: None,
            tracestate: Some("a=b".into()),
            baggage: None,
        };
        assert_eq!(
            span_context_from_carrier(&c),
            Err(CarrierError::MissingTraceparent)
        );
    }

    #[test]
    fn recorded_ids_name_that_span_and_invalid_ones_none() {
        let sc = span_context_from_ids("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331")
            .expect("valid ids");
        assert_eq!(
            span_ids(&sc),
            SpanIds {
                trace_id: "0af7651916cd43dd8448eb211c80319c".into(),
                span_id: "b7ad6b7169203331".into(),
            }
        );
        assert_eq!(span_context_from_ids("zz", "b7ad6b7169203331"), None);
        assert_eq!(
            span_context_from_ids("00000000000000000000000000000000", "b7ad6b7169203331"),
            None
        );
    }

    #[test]
    fn inject_writes_the_spans_own_traceparent_and_its_tracestate() {
        use opentelemetry::trace::TracerProvider as _;
        use tracing_subscriber::layer::SubscriberExt as _;
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
        let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("test"));
        let _guard = tracing::subscriber::set_default(tracing_subscriber::registry().with(layer));
        let parent = span_context_from_carrier(&W3cTraceContext {
            traceparent: Some(TP.into()),
            tracestate: Some("congo=t61rcWkgMzE".into()),
            baggage: None,
        })
        .expect("valid");
        let span = tracing::info_span!("call");
        set_remote_parent(&span, parent.clone());
        let own = span_context_of(&span).expect("context");
        let mut written = Vec::new();
        inject(&span, |name, value| written.push((name, value)));
        assert_eq!(
            written,
            vec![
                (
                    w3c::TRACEPARENT,
                    format!("00-{}-{}-01", own.trace_id(), own.span_id())
                ),
                (w3c::TRACESTATE, "congo=t61rcWkgMzE".to_owned()),
            ]
        );
        assert_eq!(own.trace_id(), parent.trace_id());
        assert_ne!(own.span_id(), parent.span_id());

        let mut none = Vec::new();
        inject(&tracing::Span::none(), |name, value| {
            none.push((name, value))
        });
        assert!(none.is_empty(), "a span without a context writes nothing");
    }

    #[test]
    fn span_context_round_trips_through_a_carrier() {
        let c = W3cTraceContext {
            traceparent: Some(TP.into()),
            tracestate: Some("congo=t61rcWkgMzE".into()),
            baggage: None,
        };
        let sc = span_context_from_carrier(&c).expect("valid");
        assert_eq!(carrier_for_span_context(&sc), Some(c));
    }
}
