//! The server side: [`TracedServer`], an rmcp service that opens one SERVER
//! span per inbound request and notification around any `ServerHandler`.

use std::borrow::Cow;
use std::sync::Arc;

use opentelemetry::global::{BoxedSpan, BoxedTracer};
use opentelemetry::trace::TracerProvider;
use rmcp::ErrorData as McpError;
use rmcp::model::{
    ClientNotification, ClientRequest, ConstString as _, JsonObject, NumberOrString,
    ProtocolVersion, ServerConfig, ServerResult,
};
use rmcp::service::{NotificationContext, RequestContext, RoleServer, Service};
use serde_json::Value;
use skein_otel::CarrierSource;
use skein_otel::names::value;
use skein_otel::rpc::{
    McpRequest, McpTarget, MethodLookup, RequestId, RequestSpan, RequestSpanBuilder,
};

/// The instrumentation scope of the spans recorded here.
const SCOPE_NAME: &str = "skein-rmcp";

/// `rpc.service` is not part of the MCP conventions; the factory still
/// wants a value, which MCP spans do not record.
const SERVICE: &str = "mcp";

/// The JSON-RPC code of "method not found".
const METHOD_NOT_FOUND: i32 = -32601;

/// The name recorded for a kind of notification this crate does not know.
const UNKNOWN_NOTIFICATION: &str = "notifications/unknown";

/// The streamable HTTP header naming the session.
const SESSION_HEADER: &str = "mcp-session-id";

/// An rmcp server traced by Skein: wraps any `ServerHandler` (or other
/// `Service<RoleServer>`) and is itself a `Service<RoleServer>`, served the
/// same way.
///
/// ```no_run
/// # use rmcp::ServiceExt as _;
/// # #[derive(Clone)] struct MyServer;
/// # impl rmcp::ServerHandler for MyServer {}
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let server = skein_rmcp::TracedServer::new(MyServer);
/// let running = server.serve(rmcp::transport::stdio()).await?;
/// running.waiting().await?;
/// # Ok(())
/// # }
/// ```
///
/// Every request the transport delivers (`initialize` included) and every
/// notification passes through [`Service::handle_request`] /
/// [`Service::handle_notification`], where its span is opened; the
/// handler runs with the span as the current OTel context.
#[derive(Clone, Debug)]
pub struct TracedServer<S> {
    inner: S,
    tracer: Arc<BoxedTracer>,
    network_transport: &'static str,
}

impl<S> TracedServer<S> {
    /// Traces `inner` with the tracer provider installed globally
    /// (`opentelemetry::global::set_tracer_provider`) when this is called,
    /// unless [`with_tracer_provider`](Self::with_tracer_provider) names
    /// another. With none installed, recording does nothing.
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            tracer: Arc::new(opentelemetry::global::tracer(SCOPE_NAME)),
            network_transport: value::NETWORK_TRANSPORT_PIPE,
        }
    }

    /// Builds spans with a tracer of `provider` (scope `skein-rmcp`)
    /// instead of the global one.
    pub fn with_tracer_provider<P>(mut self, provider: &P) -> Self
    where
        P: TracerProvider,
        P::Tracer: Send + Sync + 'static,
        <P::Tracer as opentelemetry::trace::Tracer>::Span: Send + Sync + 'static,
    {
        self.tracer = Arc::new(BoxedTracer::new(Box::new(provider.tracer(SCOPE_NAME))));
        self
    }

    /// The `network.transport` recorded for requests that did not come over
    /// streamable HTTP (those are always `tcp`): `pipe` by default, right
    /// for stdio and child processes; say `tcp` for a server spoken to over
    /// a plain socket.
    pub fn with_network_transport(mut self, transport: &'static str) -> Self {
        self.network_transport = transport;
        self
    }

    /// The wrapped service.
    pub fn inner(&self) -> &S {
        &self.inner
    }
}

/// What the span needs from the transport: the HTTP request, if any.
struct Transport<'a> {
    http: Option<&'a http::request::Parts>,
}

impl<'a> Transport<'a> {
    fn of(extensions: &'a rmcp::model::Extensions) -> Self {
        Self {
            http: extensions.get::<http::request::Parts>(),
        }
    }

    fn header(&self, name: &str) -> Option<&'a str> {
        self.http?.headers.get(name)?.to_str().ok()
    }

    /// `traceparent` / `tracestate` / `baggage` of the HTTP request, as a
    /// carrier.
    fn header_carrier(&self) -> Option<Value> {
        carrier_of_values(
            CARRIER_FIELDS.map(|name| self.header(name).map(|s| Value::String(s.to_owned()))),
        )
    }
}

/// The W3C fields a carrier is made of.
const CARRIER_FIELDS: [&str; 3] = [
    skein_otel::w3c::TRACEPARENT,
    skein_otel::w3c::TRACESTATE,
    skein_otel::baggage::BAGGAGE,
];

/// A carrier object with the W3C fields ([`CARRIER_FIELDS`], in order)
/// that are present; `None` with none.
fn carrier_of_values(values: [Option<Value>; 3]) -> Option<Value> {
    if values.iter().all(Option::is_none) {
        return None;
    }
    let mut object = serde_json::Map::new();
    for (name, value) in CARRIER_FIELDS.into_iter().zip(values) {
        if let Some(v) = value {
            object.insert(name.to_owned(), v);
        }
    }
    Some(Value::Object(object))
}

/// The `traceparent` / `tracestate` / `baggage` members of a `_meta`
/// object, as a carrier (copying only those values, whatever their JSON
/// type, so that a wrong type is reported as such).
fn meta_carrier(meta: &JsonObject) -> Option<Value> {
    carrier_of_values(CARRIER_FIELDS.map(|name| meta.get(name).cloned()))
}

/// The method of a request as a static name, or, for a request rmcp does
/// not know (`CustomRequest`), as sent.
fn request_method(request: &ClientRequest) -> Result<&'static str, &str> {
    Ok(match request {
        ClientRequest::PingRequest(r) => r.method.as_str(),
        ClientRequest::InitializeRequest(r) => r.method.as_str(),
        ClientRequest::DiscoverRequest(r) => r.method.as_str(),
        ClientRequest::CompleteRequest(r) => r.method.as_str(),
        ClientRequest::SetLevelRequest(r) => r.method.as_str(),
        ClientRequest::GetPromptRequest(r) => r.method.as_str(),
        ClientRequest::ListPromptsRequest(r) => r.method.as_str(),
        ClientRequest::ListResourcesRequest(r) => r.method.as_str(),
        ClientRequest::ListResourceTemplatesRequest(r) => r.method.as_str(),
        ClientRequest::ReadResourceRequest(r) => r.method.as_str(),
        ClientRequest::SubscriptionsListenRequest(r) => r.method.as_str(),
        ClientRequest::SubscribeRequest(r) => r.method.as_str(),
        ClientRequest::UnsubscribeRequest(r) => r.method.as_str(),
        ClientRequest::CallToolRequest(r) => r.method.as_str(),
        ClientRequest::ListToolsRequest(r) => r.method.as_str(),
        ClientRequest::GetTaskRequest(r) => r.method.as_str(),
        ClientRequest::UpdateTaskRequest(r) => r.method.as_str(),
        ClientRequest::CancelTaskRequest(r) => r.method.as_str(),
        ClientRequest::ListSkillsRequest(r) => r.method.as_str(),
        ClientRequest::GetSkillRequest(r) => r.method.as_str(),
        ClientRequest::ReadResourceDirectoryRequest(r) => r.method.as_str(),
        ClientRequest::CustomRequest(r) => return Err(&r.method),
        // A kind of request added to rmcp after this was written.
        other => return Err(other.method()),
    })
}

/// The method of a notification, as [`request_method`].
fn notification_method(notification: &ClientNotification) -> Result<&'static str, &str> {
    Ok(match notification {
        ClientNotification::CancelledNotification(n) => n.method.as_str(),
        ClientNotification::ProgressNotification(n) => n.method.as_str(),
        ClientNotification::InitializedNotification(n) => n.method.as_str(),
        ClientNotification::RootsListChangedNotification(n) => n.method.as_str(),
        ClientNotification::CustomNotification(n) => return Err(&n.method),
        // A kind of notification added to rmcp after this was written.
        _ => return Err(UNKNOWN_NOTIFICATION),
    })
}

/// The tool, prompt or resource a request names.
fn target(request: &ClientRequest) -> Option<McpTarget<'_>> {
    match request {
        ClientRequest::CallToolRequest(r) => Some(McpTarget::Tool(&r.params.name)),
        ClientRequest::GetPromptRequest(r) => Some(McpTarget::Prompt(&r.params.name)),
        ClientRequest::ReadResourceRequest(r) => Some(McpTarget::Resource(&r.params.uri)),
        ClientRequest::SubscribeRequest(r) => Some(McpTarget::Resource(&r.params.uri)),
        ClientRequest::UnsubscribeRequest(r) => Some(McpTarget::Resource(&r.params.uri)),
        _ => None,
    }
}

fn request_id(id: &NumberOrString) -> RequestId<'_> {
    match id {
        NumberOrString::Number(n) => RequestId::Number(*n),
        NumberOrString::String(s) => RequestId::Str(s),
    }
}

impl<S> TracedServer<S> {
    /// Builds the span of one inbound message.
    #[allow(clippy::too_many_arguments)]
    fn start(
        &self,
        method: Result<&'static str, &str>,
        id: Option<&NumberOrString>,
        target: Option<McpTarget<'_>>,
        protocol_version: Option<&str>,
        meta: &JsonObject,
        extensions: &rmcp::model::Extensions,
    ) -> RequestSpan<BoxedSpan> {
        let transport = Transport::of(extensions);
        let (network_transport, network_protocol_name) = match transport.http {
            Some(_) => (
                value::NETWORK_TRANSPORT_TCP,
                Some(value::NETWORK_PROTOCOL_HTTP),
            ),
            None => (self.network_transport, None),
        };
        let (sent, lookup) = match method {
            Ok(name) => (name, MethodLookup::Known(name)),
            Err(sent) => (sent, MethodLookup::Deferred),
        };
        let builder = RequestSpanBuilder {
            lookup,
            request_id: id.map(request_id),
            mcp: Some(McpRequest {
                target,
                protocol_version,
                session_id: transport.header(SESSION_HEADER),
                network_transport: Some(network_transport),
                network_protocol_name,
            }),
            ..RequestSpanBuilder::new(sent, SERVICE)
        };
        let meta = meta_carrier(meta);
        let headers = transport.header_carrier();
        let (span, _timer) = builder.start_span(
            &*self.tracer,
            [
                (CarrierSource::ParamsMeta, meta.as_ref()),
                (CarrierSource::HttpHeaders, headers.as_ref()),
            ],
        );
        span
    }
}

impl<S: Service<RoleServer>> Service<RoleServer> for TracedServer<S> {
    fn handle_request(
        &self,
        request: ClientRequest,
        context: RequestContext<RoleServer>,
    ) -> impl Future<Output = Result<ServerResult, McpError>> + Send + '_ {
        let method = request_method(&request);
        // Only a method rmcp does not know needs its name kept, to settle
        // it once the handler has said whether it serves it.
        let custom: Option<String> = method.err().map(str::to_owned);
        let is_initialize = matches!(request, ClientRequest::InitializeRequest(_));
        let protocol_version: Option<ProtocolVersion> = if is_initialize {
            None
        } else {
            context.protocol_version()
        };
        let mut span = self.start(
            method,
            Some(&context.id),
            target(&request),
            protocol_version.as_ref().map(ProtocolVersion::as_str),
            &context.meta,
            &context.extensions,
        );
        let future = span.within(|| self.inner.handle_request(request, context));
        async move {
            let result = future.await;
            match &result {
                Ok(result) => {
                    if let Some(method) = &custom {
                        span.settle_method(method, true);
                    }
                    match result {
                        ServerResult::CallToolResult(r) if r.is_error == Some(true) => {
                            span.record_tool_error();
                        }
                        ServerResult::InitializeResult(r) => {
                            span.record_mcp_protocol_version(r.protocol_version.as_str());
                        }
                        _ => {}
                    }
                }
                Err(error) => {
                    if let Some(method) = &custom {
                        span.settle_method(method, error.code.0 != METHOD_NOT_FOUND);
                    }
                    span.record_error(i64::from(error.code.0), &error.message);
                }
            }
            drop(span);
            result
        }
    }

    fn handle_notification(
        &self,
        notification: ClientNotification,
        context: NotificationContext<RoleServer>,
    ) -> impl Future<Output = Result<(), McpError>> + Send + '_ {
        let method = notification_method(&notification);
        let custom: Option<String> = method.err().map(str::to_owned);
        let protocol_version = context
            .peer
            .peer_info()
            .map(|info| info.protocol_version.clone());
        let mut span = self.start(
            method,
            None,
            None,
            protocol_version.as_ref().map(ProtocolVersion::as_str),
            &context.meta,
            &context.extensions,
        );
        let future = span.within(|| self.inner.handle_notification(notification, context));
        async move {
            let result = future.await;
            if let Some(method) = &custom {
                // Nothing answers a notification: the name stays as sent.
                span.settle_method(method, true);
            }
            if let Err(error) = &result {
                span.record_error(i64::from(error.code.0), &error.message);
            }
            drop(span);
            result
        }
    }

    fn get_info(&self) -> ServerConfig {
        self.inner.get_info()
    }

    fn supported_protocol_versions(&self) -> Cow<'static, [ProtocolVersion]> {
        self.inner.supported_protocol_versions()
    }
}
