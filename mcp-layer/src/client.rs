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
