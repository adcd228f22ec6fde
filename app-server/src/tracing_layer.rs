//! The tower layer that traces every inbound request.
//!
//! [`RequestTracingLayer`] wraps the method router. For each request it
//! builds the `app_server.request` span (see [`crate::request_span`]), runs
//! the inner service with that span as the current OTel context, records the outcome (on the span and in the
//! `rpc.server.call.duration` metric, timed from the call's arrival here),
//! and hands the span on with the response in a [`TracedReply`]. The
//! connection's writer drops the span once the response is written, which
//! ends it. Handlers never see any of this.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use skein_app_server_protocol::{Outgoing, Request};
use tower::{Layer, Service};

use skein_otel::rpc::RequestSpan;

use crate::request_span::{make_request_span, record_response};
use crate::session::ConnectionSession;

/// One inbound request and the connection it came on.
#[derive(Debug)]
pub struct RpcCall {
    /// The request.
    pub request: Request,
    /// The connection.
    pub session: Arc<ConnectionSession>,
}

/// A response and the request span it completes.
#[derive(Debug)]
pub struct TracedReply {
    /// The response or error.
    pub message: Outgoing,
    /// The request span, when the message answers a request; it ends when
    /// dropped, after the response is written.
    pub span: Option<RequestSpan>,
}

/// Layer that wraps a `Service<RpcCall, Response = Outgoing>` in request
/// tracing.
#[derive(Clone, Copy, Debug, Default)]
pub struct RequestTracingLayer;

impl<S> Layer<S> for RequestTracingLayer {
    type Service = RequestTracing<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestTracing { inner }
    }
}

/// The service [`RequestTracingLayer`] produces.
#[derive(Clone, Debug)]
pub struct RequestTracing<S> {
    inner: S,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

impl<S> Service<RpcCall> for RequestTracing<S>
where
    S: Service<RpcCall, Response = Outgoing, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = TracedReply;
    type Error = Infallible;
    type Future = BoxFuture<Result<TracedReply, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, call: RpcCall) -> Self::Future {
        let (mut span, timer) = make_request_span(&call.request, &call.session);
        // The request span is the current OTel context while the handler's
        // future is made and while it runs, so what it hands to core
        // carries the span's context.
        let inner = span.within(|| self.inner.call(call));
        Box::pin(async move {
            let message = inner.await?;
            record_response(&mut span, &message, timer);
            Ok(TracedReply {
                message,
                span: Some(span),
            })
        })
    }
}
