//! Skein's side of the request-span factory: it describes a request and its
//! connection as plain data for [`skein_otel::rpc`], which builds the
//! `app_server.request` span, and feeds the response back to it.
//!
//! No request attribute is named here; they are all assembled in
//! `skein_otel::rpc`.

use skein_app_server_protocol::{Method, Outgoing, Request, RequestId};
use skein_otel::CarrierSource;
use skein_otel::names::value;
use skein_otel::rpc::{
    self, CallTimer, MethodLookup, RequestSpan, RequestSpanBuilder, StringValue,
};

use crate::session::ConnectionSession;

/// Builds the request span for `request` arriving on `session`, and starts
/// its [`CallTimer`].
///
/// The span's OTel parent is the first valid carrier among the envelope's
/// `trace`, `params._meta` and the environment's `TRACEPARENT`.
pub fn make_request_span(
    request: &Request,
    session: &ConnectionSession,
) -> (RequestSpan, CallTimer) {
    let known = Method::from_name(&request.method);

    // Client metadata: from the params of `initialize` itself, from the
    // connection's state on every later request.
    let (client_name, client_version) = match (known, session.client()) {
        (Some(Method::Initialize), _) => {
            let info = request.params.as_ref().and_then(|p| p.get("clientInfo"));
            let value = |key| rpc::str_field(info, key).map(|s| StringValue::from(s.to_owned()));
            (value("name"), value("version"))
        }
        (_, Some((name, version))) => (Some(name.clone()), Some(version.clone())),
        (_, None) => (None, None),
    };

    let builder = RequestSpanBuilder {
        method: &request.method,
        lookup: known.map_or(MethodLookup::Unknown, |m| MethodLookup::Known(m.as_str())),
        request_id: Some(match &request.id {
            RequestId::Integer(n) => rpc::RequestId::Number(*n),
            RequestId::String(s) => rpc::RequestId::Str(s),
            RequestId::Number(n) => rpc::RequestId::OtherNumber(n.as_str()),
        }),
        transport: Some(session.transport().as_str()),
        connection_id: Some(session.id()),
        client_name,
        client_version,
        service_name: StringValue::from(value::SERVICE_NAME),
        api_version: Some(value::API_VERSION),
        environment_fallback: true,
        mcp: None,
    };
    let meta = request.params.as_ref().and_then(|p| p.get("_meta"));
    let (mut span, timer) = builder.start_span(
        rpc::request_tracer(),
        [
            (CarrierSource::Envelope, request.trace.as_ref()),
            (CarrierSource::ParamsMeta, meta),
        ],
    );
    span.record_ids(request.params.as_ref());
    (span, timer)
}

/// Completes a request span from the response: ids the result reveals, and
/// the error status for an error response. Then records the request's
/// duration since `timer` started, with its error code, in
/// `rpc.server.call.duration`.
pub fn record_response(span: &mut RequestSpan, response: &Outgoing, timer: CallTimer) {
    let mut error_code = None;
    match response {
        Outgoing::Response { result, .. } => span.record_result_ids(result.get()),
        Outgoing::Error { error, .. } => {
            span.record_error(error.code, &error.message);
            error_code = Some(error.code);
        }
    }
    skein_otel::metrics::record_rpc_call(timer.rpc_method(), error_code, timer.elapsed());
}
