//! Skein's side of the request-span factory: it describes a request and its
//! connection as plain data for [`skein_otel::rpc`], which builds the
//! `app_server.request` span, and feeds the response back to it.
//!
//! No request attribute is named here; they are all assembled in
//! `skein_otel::rpc`.

use skein_app_server_protocol::{Method, Outgoing, Request, RequestId};
use skein_otel::CarrierSource;
use skein_otel::names::value;
use skein_otel::rpc::{self, CallTimer, MethodLookup, RequestSpanBuilder};

use crate::session::ConnectionSession;

/// Builds the request span for `request` arriving on `session`, and starts
/// its [`CallTimer`].
///
/// The span's OTel parent is the first valid carrier among the envelope's
/// `trace`, `params._meta` and the environment's `TRACEPARENT`.
pub fn make_request_span(
    request: &Request,
    session: &ConnectionSession,
) -> (tracing::Span, CallTimer) {
    let known = Method::from_name(&request.method);

    // Client metadata: from the params of `initialize` itself, from the
    // connection's state on every later request.
    let (client_name, client_version) = match (known, session.client()) {
        (Some(Method::Initialize), _) => {
            let info = request.params.as_ref().and_then(|p| p.get("clientInfo"));
            (
                rpc::str_field(info, "name"),
                rpc::str_field(info, "version"),
            )
        }
        (_, Some(client)) => (Some(client.name.as_str()), Some(client.version.as_str())),
        (_, None) => (None, None),
    };

    let builder = RequestSpanBuilder {
        method: &request.method,
        lookup: known.map_or(MethodLookup::Unknown, |m| MethodLookup::Known(m.as_str())),
        request_id: Some(match &request.id {
            RequestId::Integer(n) => rpc::RequestId::Number(*n),
            RequestId::String(s) => rpc::RequestId::Str(s),
            RequestId::Number(n) => match n.as_u64() {
                Some(n) => rpc::RequestId::Unsigned(n),
                None => rpc::RequestId::OtherNumber(n),
            },
        }),
        transport: Some(session.transport().as_str()),
        connection_id: Some(session.id()),
        client_name,
        client_version,
        service_name: value::SERVICE_NAME,
        api_version: Some(value::API_VERSION),
        environment_fallback: true,
    };
    let meta = request.params.as_ref().and_then(|p| p.get("_meta"));
    let (span, timer) = builder.start([
        (CarrierSource::Envelope, request.trace.as_ref()),
        (CarrierSource::ParamsMeta, meta),
    ]);
    rpc::record_ids(&span, request.params.as_ref());
    (span, timer)
}

/// Completes a request span from the response: ids the result reveals, and
/// the error status for an error response. Then records the request's
/// duration since `timer` started, with its error code, in
/// `rpc.server.call.duration`.
pub fn record_response(span: &tracing::Span, response: &Outgoing, timer: CallTimer) {
    let mut error_code = None;
    match response {
        Outgoing::Response { result, .. } => rpc::record_result_ids(span, result.get()),
        Outgoing::Error { error, .. } => {
            rpc::record_error(span, error.code, &error.message);
            error_code = Some(error.code);
        }
        Outgoing::Notification { .. } => {}
    }
    skein_otel::metrics::record_rpc_call(timer.rpc_method(), error_code, timer.elapsed());
}
