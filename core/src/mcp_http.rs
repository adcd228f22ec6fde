//! MCP servers over streamable HTTP (`[mcp_servers.<name>] url = ...`).
//!
//! rmcp's streamable HTTP client transport over Skein's reqwest, wrapped so
//! that every message carrying a trace context in `params._meta` (each
//! `tools/call`) also carries it as `traceparent` / `tracestate` HTTP
//! headers: an HTTP server's own instrumentation (which reads headers, not
//! the MCP body) then continues the same trace.

use std::collections::HashMap;
use std::sync::Arc;

use reqwest::header::{HeaderName, HeaderValue};
use rmcp::model::{ClientJsonRpcMessage, GetMeta, JsonRpcMessage, MetaObject};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::common::client_side_sse::BoxedSseResponse;
use rmcp::transport::streamable_http_client::{
    StreamableHttpClient, StreamableHttpClientTransportConfig, StreamableHttpError,
    StreamableHttpPostResponse, StreamableHttpResponseLimits,
};
use skein_otel::w3c;

use crate::config::McpServerConfig;

/// Why an HTTP server's transport could not be set up.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HttpSetupError {
    /// `bearer_token_env_var` names a variable that is not set.
    #[error("the variable {0} (bearer_token_env_var) is not set")]
    TokenUnset(String),
    /// An `http_headers` entry is not a valid header.
    #[error("invalid http_headers entry {name:?}: {reason}")]
    Header {
        /// The header's name.
        name: String,
        /// Why.
        reason: String,
    },
    /// The HTTP client could not be built.
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
}

/// The transport to the server at `url`, with its bearer token and
/// headers.
pub(crate) fn transport(
    url: &str,
    config: &McpServerConfig,
) -> Result<StreamableHttpClientTransport<TraceHeaderClient>, HttpSetupError> {
    crate::providers::install_crypto_provider();
    let mut headers = HashMap::new();
    for (name, value) in &config.http_headers {
        let header = |reason: String| HttpSetupError::Header {
            name: name.clone(),
            reason,
        };
        let key = HeaderName::from_bytes(name.as_bytes()).map_err(|e| header(e.to_string()))?;
        let value = HeaderValue::from_str(value).map_err(|e| header(e.to_string()))?;
        headers.insert(key, value);
    }
    let mut transport_config =
        StreamableHttpClientTransportConfig::with_uri(url.to_owned()).custom_headers(headers);
    if let Some(var) = &config.bearer_token_env_var {
        let token = std::env::var(var)
            .ok()
            .filter(|t| !t.trim().is_empty())
            .ok_or_else(|| HttpSetupError::TokenUnset(var.clone()))?;
        transport_config = transport_config.auth_header(token);
    }
    let client = reqwest::Client::builder()
        .no_proxy()
        .build()
        .map_err(|e| HttpSetupError::Client(e.to_string()))?;
    Ok(StreamableHttpClientTransport::with_client(
        TraceHeaderClient(client),
        transport_config,
    ))
}

/// reqwest's streamable HTTP client, adding the `_meta` trace context of
/// each posted message as HTTP headers.
#[derive(Clone, Debug)]
pub(crate) struct TraceHeaderClient(reqwest::Client);

/// `headers` plus the `traceparent` / `tracestate` of `message`'s
/// `params._meta`, when it has them. Read from the typed message's meta:
/// the message is not serialized a second time to find them.
fn with_trace_headers(
    message: &ClientJsonRpcMessage,
    mut headers: HashMap<HeaderName, HeaderValue>,
) -> HashMap<HeaderName, HeaderValue> {
    let meta: &MetaObject = match message {
        JsonRpcMessage::Request(request) => request.request.get_meta(),
        JsonRpcMessage::Notification(notification) => notification.notification.get_meta(),
        JsonRpcMessage::Response(_) | JsonRpcMessage::Error(_) => return headers,
    };
    for key in [w3c::TRACEPARENT, w3c::TRACESTATE] {
        let carried = meta
            .get(key)
            .and_then(serde_json::Value::as_str)
            .and_then(|v| HeaderValue::from_str(v).ok());
        if let Some(carried) = carried {
            headers.insert(HeaderName::from_static(key), carried);
        }
    }
    headers
}

type Reply = Result<StreamableHttpPostResponse, StreamableHttpError<reqwest::Error>>;
type Stream = Result<BoxedSseResponse, StreamableHttpError<reqwest::Error>>;

impl StreamableHttpClient for TraceHeaderClient {
    type Error = reqwest::Error;

    async fn post_message(
        &self,
        uri: Arc<str>,
        message: ClientJsonRpcMessage,
        session_id: Option<Arc<str>>,
        auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
    ) -> Reply {
        let headers = with_trace_headers(&message, custom_headers);
        self.0
            .post_message(uri, message, session_id, auth_header, headers)
            .await
    }

    async fn post_message_with_max_sse_event_size(
        &self,
        uri: Arc<str>,
        message: ClientJsonRpcMessage,
        session_id: Option<Arc<str>>,
        auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
        max_sse_event_size: usize,
    ) -> Reply {
        let headers = with_trace_headers(&message, custom_headers);
        self.0
            .post_message_with_max_sse_event_size(
                uri,
                message,
                session_id,
                auth_header,
                headers,
                max_sse_event_size,
            )
            .await
    }

    async fn post_message_with_response_limits(
        &self,
        uri: Arc<str>,
        message: ClientJsonRpcMessage,
        session_id: Option<Arc<str>>,
        auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
        limits: StreamableHttpResponseLimits,
    ) -> Reply {
        let headers = with_trace_headers(&message, custom_headers);
        self.0
            .post_message_with_response_limits(
                uri,
                message,
                session_id,
                auth_header,
                headers,
                limits,
            )
            .await
    }

    async fn delete_session(
        &self,
        uri: Arc<str>,
        session_id: Arc<str>,
        auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
    ) -> Result<(), StreamableHttpError<reqwest::Error>> {
        self.0
            .delete_session(uri, session_id, auth_header, custom_headers)
            .await
    }

    async fn get_stream(
        &self,
        uri: Arc<str>,
        session_id: Option<Arc<str>>,
        last_event_id: Option<String>,
        auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
    ) -> Stream {
        self.0
            .get_stream(uri, session_id, last_event_id, auth_header, custom_headers)
            .await
    }

    async fn get_stream_with_max_sse_event_size(
        &self,
        uri: Arc<str>,
        session_id: Option<Arc<str>>,
        last_event_id: Option<String>,
        auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
        max_sse_event_size: usize,
    ) -> Stream {
        self.0
            .get_stream_with_max_sse_event_size(
                uri,
                session_id,
                last_event_id,
                auth_header,
                custom_headers,
                max_sse_event_size,
            )
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rmcp::model::{
        CallToolRequest, CallToolRequestParams, ClientRequest, JsonRpcRequest, JsonRpcVersion2_0,
        RequestId,
    };
    use serde_json::Value;

    fn call_with_meta(entries: &[(&str, &str)]) -> ClientJsonRpcMessage {
        let mut request =
            ClientRequest::CallToolRequest(CallToolRequest::new(CallToolRequestParams::new("t")));
        for (key, value) in entries {
            request
                .get_meta_mut()
                .insert((*key).to_owned(), Value::from(*value));
        }
        JsonRpcMessage::Request(JsonRpcRequest {
            jsonrpc: JsonRpcVersion2_0,
            id: RequestId::Number(1),
            request,
        })
    }

    #[test]
    fn the_meta_trace_context_becomes_headers_beside_the_given_ones() {
        const TP: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let given = HashMap::from([(
            HeaderName::from_static("x-given"),
            HeaderValue::from_static("yes"),
        )]);
        let headers = with_trace_headers(
            &call_with_meta(&[("traceparent", TP), ("tracestate", "k=v"), ("other", "x")]),
            given.clone(),
        );
        assert_eq!(headers.len(), 3, "{headers:?}");
        let header = |name: &'static str| headers[&HeaderName::from_static(name)].clone();
        assert_eq!(header("traceparent"), TP);
        assert_eq!(header("tracestate"), "k=v");
        assert_eq!(header("x-given"), "yes");

        let untouched = with_trace_headers(&call_with_meta(&[]), given.clone());
        assert_eq!(untouched, given);
    }
}
