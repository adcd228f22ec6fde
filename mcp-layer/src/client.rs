//! The client side: the current trace context into the `params._meta` of
//! outgoing MCP requests (the MCP convention, SEP-414), so the server's
//! spans join the caller's trace.

use rmcp::model::{GetMeta, MetaObject, RequestMetaObject};
use serde_json::Value;

/// Writes the current context (the current `tracing` span's, else the
/// current OpenTelemetry context's) into `meta` as `traceparent` and, when
/// the context has one, `tracestate`. Outside any span it writes nothing.
///
/// Call it on the `_meta` of each request, for instance through
/// [`with_trace_context`] or with `PeerRequestOptions::with_meta`.
pub fn inject_meta(meta: &mut MetaObject) {
    skein_otel::inject_current(|name, value| {
        meta.insert(name.to_owned(), Value::String(value));
    });
}

/// [`inject_meta`] for the context of `span` rather than the current one:
/// what a client that opens its own CLIENT span per request sends.
pub fn inject_meta_of(span: &tracing::Span, meta: &mut MetaObject) {
    skein_otel::inject(span, |name, value| {
        meta.insert(name.to_owned(), Value::String(value));
    });
}

/// A request with the current context in its `_meta` ([`inject_meta`]).
///
/// ```no_run
/// # async fn run(peer: rmcp::Peer<rmcp::RoleClient>) -> Result<(), rmcp::ServiceError> {
/// use rmcp::model::{CallToolRequest, CallToolRequestParams, ClientRequest};
/// let request = ClientRequest::CallToolRequest(CallToolRequest::new(
///     CallToolRequestParams::new("get_weather"),
/// ));
/// let result = peer
///     .send_request(skein_rmcp::with_trace_context(request))
///     .await?;
/// # Ok(())
/// # }
/// ```
pub fn with_trace_context<R>(mut request: R) -> R
where
    R: GetMeta<Metadata = RequestMetaObject>,
{
    inject_meta(request.get_meta_mut());
    request
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::{
        SpanContext, SpanId, TraceContextExt as _, TraceFlags, TraceId, TraceState,
    };
    use rmcp::model::{CallToolRequest, CallToolRequestParams, ClientRequest};

    fn call() -> ClientRequest {
        ClientRequest::CallToolRequest(CallToolRequest::new(CallToolRequestParams::new("t")))
    }

    #[test]
    fn a_request_carries_the_current_context_in_its_meta() {
        let sc = SpanContext::new(
            TraceId::from_hex("0af7651916cd43dd8448eb211c80319c").expect("trace id"),
            SpanId::from_hex("b7ad6b7169203331").expect("span id"),
            TraceFlags::SAMPLED,
            true,
            TraceState::default(),
        );
        let _current = opentelemetry::Context::new()
            .with_remote_span_context(sc)
            .attach();
        let request = with_trace_context(call());
        assert_eq!(
            request.get_meta().get("traceparent"),
            Some(&Value::from(
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
            ))
        );
    }

    #[test]
    fn outside_any_span_nothing_is_written() {
        let request = with_trace_context(call());
        assert!(request.get_meta().is_empty());
    }
}
