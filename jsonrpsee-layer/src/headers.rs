//! The HTTP side: a tower layer that moves the `traceparent` /
//! `tracestate` headers of each HTTP request into the request's
//! extensions, where the RPC middleware can read them.
//!
//! jsonrpsee does not pass HTTP headers down to the RPC layer, only the
//! HTTP request's extensions: into every call of a plain HTTP request, and,
//! for a WebSocket connection, the upgrade request's extensions into every
//! call made on the connection.

use std::sync::Arc;
use std::task::{Context, Poll};

use http::header::UPGRADE;
use http::{HeaderMap, HeaderName};
use serde_json::{Map, Value};

static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// What [`TraceHeadersLayer`] found on an HTTP request, stored in its
/// extensions.
#[derive(Clone, Debug, Default)]
pub struct HeaderCarrier {
    /// The `traceparent` / `tracestate` headers as a JSON carrier object,
    /// exactly as received; `None` when neither header was sent.
    pub(crate) carrier: Option<Arc<Value>>,
    /// The request upgraded to a WebSocket connection.
    pub(crate) websocket: bool,
}

impl HeaderCarrier {
    /// Reads the carrier headers of an HTTP request.
    ///
    /// A header that is not visible ASCII is kept as an empty string, so
    /// strict parsing rejects it with a reason rather than it vanishing.
    pub fn from_headers(headers: &HeaderMap) -> Self {
        let mut carrier = Map::new();
        for name in [&TRACEPARENT, &TRACESTATE] {
            if let Some(value) = headers.get(name) {
                let text = value.to_str().unwrap_or_default();
                carrier.insert(name.as_str().to_owned(), Value::String(text.to_owned()));
            }
        }
        let websocket = headers
            .get(UPGRADE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
        Self {
            carrier: (!carrier.is_empty()).then(|| Arc::new(Value::Object(carrier))),
            websocket,
        }
    }

    /// Whether the request opened a WebSocket connection.
    pub fn is_websocket(&self) -> bool {
        self.websocket
    }

    /// The carrier, as a JSON object with `traceparent` / `tracestate`.
    pub fn carrier(&self) -> Option<&Value> {
        self.carrier.as_deref()
    }
}

/// Tower layer for jsonrpsee's HTTP middleware
/// (`Server::builder().set_http_middleware(..)`): it records each HTTP
/// request's trace headers, and whether it is a WebSocket upgrade, in the
/// request's extensions as a [`HeaderCarrier`].
///
/// Build it with `TraceHeadersLayer::default()`.
#[derive(Clone, Copy, Debug, Default)]
pub struct TraceHeadersLayer {
    _private: (),
}

impl<S> tower::Layer<S> for TraceHeadersLayer {
    type Service = TraceHeaders<S>;

    fn layer(&self, inner: S) -> Self::Service {
        TraceHeaders { inner }
    }
}

/// The service [`TraceHeadersLayer`] produces.
#[derive(Clone, Debug)]
pub struct TraceHeaders<S> {
    inner: S,
}

impl<S, B> tower::Service<http::Request<B>> for TraceHeaders<S>
where
    S: tower::Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let found = HeaderCarrier::from_headers(request.headers());
        request.extensions_mut().insert(found);
        self.inner.call(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn headers_become_a_json_carrier_and_upgrades_are_seen() {
        let mut headers = HeaderMap::new();
        assert!(HeaderCarrier::from_headers(&headers).carrier().is_none());
        headers.insert("traceparent", HeaderValue::from_static("00-abc"));
        headers.insert("upgrade", HeaderValue::from_static("WebSocket"));
        let found = HeaderCarrier::from_headers(&headers);
        assert_eq!(
            found.carrier(),
            Some(&serde_json::json!({"traceparent": "00-abc"}))
        );
        assert!(found.is_websocket());
    }
}
