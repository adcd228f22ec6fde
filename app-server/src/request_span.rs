//! The request-span factory: the one place that assembles the attributes of
//! an `app_server.request` span.
//!
//! [`make_request_span`] builds the span for an inbound request, parented
//! from the first valid carrier; [`record_response`] completes it from the
//! response and records the request in `rpc.server.call.duration`, timed
//! by a [`CallTimer`]. Nothing else in the server names a request
//! attribute.

use std::time::Instant;

use serde_json::Value;
use skein_app_server_protocol::{Method, Outgoing, Request, truncate_for_display};
use skein_otel::CarrierSource;
use skein_otel::names::{attr, span, value};
use tracing::field::Empty;

use crate::session::ConnectionSession;

/// Longest `rpc.method_original` recorded for an unknown method.
const MAX_ORIGINAL_METHOD_LEN: usize = 256;

/// The bounded `rpc.method` value: the method's name, or `_OTHER` for a
/// method the server does not know.
fn rpc_method(known: Option<Method>) -> &'static str {
    known.map_or(value::METHOD_OTHER, Method::as_str)
}

/// Times one request for the `rpc.server.call.duration` metric.
#[derive(Clone, Copy, Debug)]
pub struct CallTimer {
    rpc_method: &'static str,
    started: Instant,
}

/// Builds the request span for `request` arriving on `session`.
///
/// The span is a root of the local span tree; its OTel parent is the first
/// valid carrier among the envelope's `trace`, `params._meta` and the
/// environment's `TRACEPARENT`. Invalid carriers are logged as warnings
/// inside the span and otherwise ignored. Also starts the request's
/// [`CallTimer`].
pub fn make_request_span(
    request: &Request,
    session: &ConnectionSession,
) -> (tracing::Span, CallTimer) {
    let started = Instant::now();
    let known = Method::from_name(&request.method);
    let timer = CallTimer {
        rpc_method: rpc_method(known),
        started,
    };
    let (otel_name, original) = match known {
        Some(method) => (method.as_str(), None),
        None => (
            value::UNKNOWN_METHOD_SPAN_NAME,
            Some(truncate_for_display(
                &request.method,
                MAX_ORIGINAL_METHOD_LEN,
            )),
        ),
    };

    // Client metadata: from the params of `initialize` itself, from the
    // connection's state on every later request.
    let (client_name, client_version) = match (known, session.client()) {
        (Some(Method::Initialize), _) => {
            let info = request.params.as_ref().and_then(|p| p.get("clientInfo"));
            (
                str_field(info, "name").map(str::to_owned),
                str_field(info, "version").map(str::to_owned),
            )
        }
        (_, Some(client)) => (Some(client.name.clone()), Some(client.version.clone())),
        (_, None) => (None, None),
    };

    let request_id = request.id.to_string();
    let span = tracing::info_span!(
        target: "skein_app_server::request",
        parent: None,
        span::APP_SERVER_REQUEST,
        { attr::OTEL_NAME } = otel_name,
        { attr::OTEL_KIND } = value::KIND_SERVER,
        { attr::OTEL_STATUS_CODE } = Empty,
        { attr::OTEL_STATUS_DESCRIPTION } = Empty,
        { attr::RPC_SYSTEM } = value::JSONRPC,
        { attr::RPC_SYSTEM_NAME } = value::JSONRPC,
        { attr::RPC_SERVICE } = value::SERVICE_NAME,
        { attr::RPC_METHOD } = timer.rpc_method,
        { attr::RPC_METHOD_ORIGINAL } = original,
        { attr::RPC_TRANSPORT } = session.transport().as_str(),
        { attr::RPC_REQUEST_ID } = request_id.as_str(),
        { attr::JSONRPC_REQUEST_ID } = request_id.as_str(),
        { attr::JSONRPC_PROTOCOL_VERSION } = value::JSONRPC_VERSION,
        { attr::APP_SERVER_CONNECTION_ID } = i64::try_from(session.id()).unwrap_or(i64::MAX),
        { attr::APP_SERVER_API_VERSION } = value::API_VERSION,
        { attr::APP_SERVER_CLIENT_NAME } = client_name,
        { attr::APP_SERVER_CLIENT_VERSION } = client_version,
        { attr::THREAD_ID } = Empty,
        { attr::TURN_ID } = Empty,
        { attr::ERROR_TYPE } = Empty,
        { attr::RPC_RESPONSE_STATUS_CODE } = Empty,
    );

    let meta = request.params.as_ref().and_then(|p| p.get("_meta"));
    let choice = skein_otel::choose_parent([
        (CarrierSource::Envelope, request.trace.as_ref()),
        (CarrierSource::ParamsMeta, meta),
    ]);
    if let Some(parent) = choice.parent {
        skein_otel::set_remote_parent(&span, parent);
    }
    for (source, reason) in &choice.rejected {
        tracing::warn!(
            parent: &span,
            method = %truncate_for_display(&request.method, MAX_ORIGINAL_METHOD_LEN),
            id = %request_id,
            %source,
            %reason,
            "ignoring invalid trace carrier"
        );
    }

    record_ids(&span, request.params.as_ref());
    (span, timer)
}

/// Completes a request span from the response: ids the result reveals, and
/// the error status for an error response. Then records the request's
/// duration since `timer` started, with its error code, in
/// `rpc.server.call.duration`.
pub fn record_response(span: &tracing::Span, response: &Outgoing, timer: CallTimer) {
    let mut error_code = None;
    match response {
        Outgoing::Response { result, .. } => record_ids(span, Some(result)),
        Outgoing::Error { error, .. } => {
            span.record(attr::OTEL_STATUS_CODE, value::STATUS_ERROR);
            span.record(attr::OTEL_STATUS_DESCRIPTION, error.message.as_str());
            span.record(attr::ERROR_TYPE, error.code.to_string().as_str());
            span.record(attr::RPC_RESPONSE_STATUS_CODE, error.code);
            error_code = Some(error.code);
        }
        Outgoing::Notification { .. } => {}
    }
    skein_otel::metrics::record_rpc_call(timer.rpc_method, error_code, timer.started.elapsed());
}

/// Records `thread.id` / `turn.id` found in a params or result object:
/// `threadId`, `thread.id`, `turnId`, `expectedTurnId` (Codex's
/// `turn/steer`) or `turn.id`.
fn record_ids(span: &tracing::Span, object: Option<&Value>) {
    let Some(object) = object else { return };
    let thread_id =
        str_field(Some(object), "threadId").or_else(|| str_field(object.get("thread"), "id"));
    if let Some(id) = thread_id {
        span.record(attr::THREAD_ID, id);
    }
    let turn_id = str_field(Some(object), "turnId")
        .or_else(|| str_field(Some(object), "expectedTurnId"))
        .or_else(|| str_field(object.get("turn"), "id"));
    if let Some(id) = turn_id {
        span.record(attr::TURN_ID, id);
    }
}

fn str_field<'a>(object: Option<&'a Value>, key: &str) -> Option<&'a str> {
    object?.get(key)?.as_str()
}
