//! The RPC side: the jsonrpsee `RpcServiceT` middleware that opens one
//! SERVER span per call, per notification and per batch element.

use std::borrow::Cow;
use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;

use jsonrpsee::server::middleware::rpc::{Batch, BatchEntry, Notification, Request, RpcServiceT};
use jsonrpsee::server::{BatchResponseBuilder, ConnectionId, Extensions, MethodResponse};
use jsonrpsee::types::{ErrorCode, Id};
use opentelemetry::StringValue;
use opentelemetry::global::{BoxedSpan, BoxedTracer};
use opentelemetry::metrics::Histogram;
use opentelemetry::trace::TracerProvider;
use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;
use skein_otel::CarrierSource;
use skein_otel::names::value;
use skein_otel::rpc::{CallTimer, MethodLookup, RequestId, RequestSpan, RequestSpanBuilder};

use crate::headers::HeaderCarrier;

/// jsonrpsee's default limit on a response body, which a batch response
/// assembled here also respects unless told otherwise.
const DEFAULT_MAX_RESPONSE_BODY_SIZE: u32 = 10 * 1024 * 1024;

/// The instrumentation scope of the spans and metrics recorded here.
const SCOPE_NAME: &str = "skein-jsonrpsee";

/// jsonrpsee `RpcServiceBuilder` layer that traces every call.
///
/// ```no_run
/// # use jsonrpsee::server::Server;
/// # use jsonrpsee::server::middleware::rpc::RpcServiceBuilder;
/// # async fn run() -> std::io::Result<()> {
/// let server = Server::builder()
///     .set_http_middleware(
///         tower::ServiceBuilder::new().layer(skein_jsonrpsee::TraceHeadersLayer::default()),
///     )
///     .set_rpc_middleware(
///         RpcServiceBuilder::new().layer(skein_jsonrpsee::RpcTracingLayer::new("my-service")),
///     )
///     .build("127.0.0.1:0")
///     .await?;
/// # drop(server);
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct RpcTracingLayer {
    shared: Arc<Shared>,
}

#[derive(Clone, Debug)]
struct Shared {
    /// `rpc.service` on every span, as the shared value each span records.
    service_name: StringValue,
    /// The tracer spans are built with.
    tracer: Arc<BoxedTracer>,
    /// The methods the server registers, when told: the lookup is then
    /// made up front, from a set of static names.
    methods: Option<HashSet<&'static str>>,
    /// `rpc.server.call.duration`, from the application's meter provider.
    duration: Histogram<f64>,
    /// The limit on a batch response this layer assembles.
    max_response_body_size: usize,
}

impl RpcTracingLayer {
    /// A layer whose spans record `service_name` as `rpc.service`.
    ///
    /// Spans are built with the tracer provider installed globally
    /// (`opentelemetry::global::set_tracer_provider`) when this is called,
    /// unless [`with_tracer_provider`](Self::with_tracer_provider) names
    /// another; `rpc.server.call.duration` is recorded with the global meter
    /// provider. With none installed, recording does nothing.
    pub fn new(service_name: impl Into<String>) -> Self {
        let meter = opentelemetry::global::meter(SCOPE_NAME);
        Self {
            shared: Arc::new(Shared {
                service_name: StringValue::from(Arc::<str>::from(service_name.into())),
                tracer: Arc::new(opentelemetry::global::tracer(SCOPE_NAME)),
                methods: None,
                duration: skein_otel::metrics::rpc_call_duration_histogram(&meter),
                max_response_body_size: DEFAULT_MAX_RESPONSE_BODY_SIZE as usize,
            }),
        }
    }

    /// Builds spans with a tracer of `provider` (scope `skein-jsonrpsee`)
    /// instead of the global one.
    pub fn with_tracer_provider<P>(mut self, provider: &P) -> Self
    where
        P: TracerProvider,
        P::Tracer: Send + Sync + 'static,
        <P::Tracer as opentelemetry::trace::Tracer>::Span: Send + Sync + 'static,
    {
        Arc::make_mut(&mut self.shared).tracer =
            Arc::new(BoxedTracer::new(Box::new(provider.tracer(SCOPE_NAME))));
        self
    }

    /// Tells the layer which methods the server registers (for example
    /// `module.method_names()`), so a method is classified before the call
    /// runs and spans and metrics use static names.
    ///
    /// Without it, a call the server answers with "method not found"
    /// (`-32601`) is recorded as `_OTHER` once it returns, and
    /// notifications (which jsonrpsee never dispatches) keep the name they
    /// were sent with.
    pub fn with_methods(mut self, methods: impl IntoIterator<Item = &'static str>) -> Self {
        Arc::make_mut(&mut self.shared).methods = Some(methods.into_iter().collect());
        self
    }

    /// The largest batch response, in bytes; set it to the server's
    /// `max_response_body_size` when that is not jsonrpsee's default of
    /// 10 MiB. (The layer assembles batch responses itself, so that each
    /// element passes through its per-call tracing.)
    pub fn max_response_body_size(mut self, bytes: u32) -> Self {
        Arc::make_mut(&mut self.shared).max_response_body_size = bytes as usize;
        self
    }
}

impl<S> tower::Layer<S> for RpcTracingLayer {
    type Service = RpcTracing<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcTracing {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// The middleware [`RpcTracingLayer`] produces.
#[derive(Clone, Debug)]
pub struct RpcTracing<S> {
    inner: S,
    shared: Arc<Shared>,
}

/// A started call: its span, timer, and how its method was classified.
struct Started {
    span: RequestSpan<BoxedSpan>,
    timer: CallTimer,
    lookup: MethodLookup,
}

impl Shared {
    fn start(
        &self,
        method: &str,
        id: Option<&Id<'_>>,
        params: Option<&RawValue>,
        extensions: &Extensions,
    ) -> Started {
        let lookup = match &self.methods {
            None => MethodLookup::Deferred,
            Some(methods) => methods
                .get(method)
                .map_or(MethodLookup::Unknown, |name| MethodLookup::Known(name)),
        };
        let headers = extensions.get::<HeaderCarrier>();
        let (transport, header_source) = match headers {
            Some(h) if h.is_websocket() => (
                Some(value::TRANSPORT_WEBSOCKET),
                CarrierSource::WebSocketUpgrade,
            ),
            Some(_) => (Some(value::TRANSPORT_HTTP), CarrierSource::HttpHeaders),
            None => (None, CarrierSource::HttpHeaders),
        };
        let builder = RequestSpanBuilder {
            lookup,
            request_id: id.map(request_id),
            transport,
            connection_id: extensions.get::<ConnectionId>().map(|c| c.0 as u64),
            ..RequestSpanBuilder::new(method, self.service_name.clone())
        };
        let meta = meta_carrier(params);
        let (span, timer) = builder.start_span(
            &*self.tracer,
            [
                (CarrierSource::ParamsMeta, meta.as_ref()),
                (header_source, headers.and_then(HeaderCarrier::carrier)),
            ],
        );
        Started {
            span,
            timer,
            lookup,
        }
    }

    fn finish(&self, started: &mut Started, method: &str, response: &MethodResponse) {
        let error_code = if response.is_error() {
            response.as_error_code().map(i64::from)
        } else {
            None
        };
        let mut unknown = started.lookup == MethodLookup::Unknown;
        if started.lookup == MethodLookup::Deferred {
            unknown = error_code == Some(i64::from(ErrorCode::MethodNotFound.code()));
            started.span.settle_method(method, !unknown);
        }
        if let Some(code) = error_code {
            let message = error_message(response.as_json());
            started
                .span
                .record_error(code, message.as_deref().unwrap_or_default());
        }
        let bounded: StringValue = match started.lookup {
            MethodLookup::Known(name) => name.into(),
            _ if unknown => value::METHOD_OTHER.into(),
            _ => method.to_owned().into(),
        };
        skein_otel::metrics::record_rpc_call_in(
            &self.duration,
            bounded,
            error_code,
            started.timer.elapsed(),
        );
    }
}

impl<S> RpcServiceT for RpcTracing<S>
where
    S: RpcServiceT<
            MethodResponse = MethodResponse,
            BatchResponse = MethodResponse,
            NotificationResponse = MethodResponse,
        > + Clone
        + Send
        + Sync
        + 'static,
{
    type MethodResponse = MethodResponse;
    type NotificationResponse = MethodResponse;
    type BatchResponse = MethodResponse;

    fn call<'a>(&self, request: Request<'a>) -> impl Future<Output = MethodResponse> + Send + 'a {
        let started = self.shared.start(
            &request.method,
            Some(&request.id),
            request.params.as_deref(),
            &request.extensions,
        );
        let method = request.method.clone();
        self.traced(started, method, || self.inner.call(request))
    }

    fn batch<'a>(&self, batch: Batch<'a>) -> impl Future<Output = MethodResponse> + Send + 'a {
        // jsonrpsee's own batch handling calls its inner service directly,
        // past any middleware; so each element goes through `call` or
        // `notification` here, and the response is assembled the same way.
        let this = self.clone();
        async move {
            let mut responses =
                BatchResponseBuilder::new_with_limit(this.shared.max_response_body_size);
            let mut got_notification = false;
            for entry in batch {
                let response = match entry {
                    Ok(BatchEntry::Call(request)) => this.call(request).await,
                    Ok(BatchEntry::Notification(notification)) => {
                        got_notification = true;
                        this.notification(notification).await;
                        continue;
                    }
                    Err(invalid) => {
                        let (error, id) = invalid.into_parts();
                        MethodResponse::error(id, error)
                    }
                };
                if let Err(too_big) = responses.append(response) {
                    return too_big;
                }
            }
            if responses.is_empty() && got_notification {
                MethodResponse::notification()
            } else {
                MethodResponse::from_batch(responses.finish())
            }
        }
    }

    fn notification<'a>(
        &self,
        notification: Notification<'a>,
    ) -> impl Future<Output = MethodResponse> + Send + 'a {
        let started = self.shared.start(
            &notification.method,
            None,
            notification.params.as_deref(),
            &notification.extensions,
        );
        let method = notification.method.clone();
        self.traced(started, method, || self.inner.notification(notification))
    }
}

impl<S> RpcTracing<S> {
    /// Runs the inner service's future for one call or notification with
    /// its span as the current OTel context: while the future is made and on
    /// every poll (so spans the handler opens, through `tracing` or OTel,
    /// nest under it); then the span is completed from the response.
    fn traced<'a, F>(
        &self,
        started: Started,
        method: Cow<'a, str>,
        make: impl FnOnce() -> F,
    ) -> impl Future<Output = MethodResponse> + Send + 'a
    where
        F: Future<Output = MethodResponse> + Send + 'a,
    {
        let future = started.span.within(make);
        let shared = self.shared.clone();
        let mut started = started;
        async move {
            let response = future.await;
            shared.finish(&mut started, &method, &response);
            response
        }
    }
}

fn request_id<'a>(id: &'a Id<'_>) -> RequestId<'a> {
    match id {
        Id::Null => RequestId::Null,
        Id::Number(n) => i64::try_from(*n).map_or(RequestId::Unsigned(*n), RequestId::Number),
        Id::Str(s) => RequestId::Str(s),
    }
}

/// The `params._meta` object of a call, when its params are an object
/// with one. Only `_meta` is parsed into a value; the rest of the params
/// is skimmed over, and params that never mention `_meta` not even that.
fn meta_carrier(params: Option<&RawValue>) -> Option<Value> {
    #[derive(Deserialize)]
    struct WithMeta<'a> {
        #[serde(rename = "_meta", borrow, default)]
        meta: Option<&'a RawValue>,
    }
    let raw = params?.get();
    // Serde would also read a struct from an array, positionally.
    if !raw.trim_start().starts_with('{') || !raw.contains("_meta") {
        return None;
    }
    let with_meta: WithMeta<'_> = serde_json::from_str(raw).ok()?;
    serde_json::from_str(with_meta.meta?.get()).ok()
}

/// The `error.message` of a serialized error response.
fn error_message(json: &RawValue) -> Option<Cow<'_, str>> {
    #[derive(Deserialize)]
    struct ErrorResponse<'a> {
        #[serde(borrow)]
        error: ErrorBody<'a>,
    }
    #[derive(Deserialize)]
    struct ErrorBody<'a> {
        #[serde(borrow)]
        message: Cow<'a, str>,
    }
    serde_json::from_str::<ErrorResponse<'_>>(json.get())
        .ok()
        .map(|r| r.error.message)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(text: &str) -> Box<RawValue> {
        RawValue::from_string(text.to_owned()).expect("valid JSON")
    }

    #[test]
    fn meta_is_read_only_from_object_params() {
        let with = raw(r#"{"x":[1,2],"_meta":{"traceparent":"00-a"}}"#);
        assert_eq!(
            meta_carrier(Some(&with)),
            Some(serde_json::json!({"traceparent": "00-a"}))
        );
        assert_eq!(meta_carrier(Some(&raw(r#"["_meta"]"#))), None);
        assert_eq!(meta_carrier(Some(&raw(r#"{"y":"_meta"}"#))), None);
        assert_eq!(meta_carrier(None), None);
    }

    #[test]
    fn error_message_is_read_from_an_error_response() {
        let response = raw(r#"{"jsonrpc":"2.0","id":1,"error":{"code":-1,"message":"a \"b\""}}"#);
        assert_eq!(error_message(&response).as_deref(), Some("a \"b\""));
        assert_eq!(error_message(&raw(r#"{"result":1}"#)), None);
    }
}
