//! The message processor: routes each request to its handler.
//!
//! Handlers are plain async functions from typed params to a result. They
//! hold no tracing code: the request span around them is the
//! [`crate::tracing_layer`]'s job.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use serde::Serialize;
use serde_json::Value;
use skein_app_server_protocol::jsonrpc::{INVALID_REQUEST, NOT_INITIALIZED};
use skein_app_server_protocol::v2::{
    InitializeParams, InitializeResponse, Model, ModelListParams, ModelListResponse, ServerInfo,
    Thread, ThreadListParams, ThreadListResponse, ThreadReadParams, ThreadReadResponse,
    ThreadStartParams, ThreadStartResponse, ThreadStartedNotification,
};
use skein_app_server_protocol::{ErrorObject, Method, Notification, Outgoing, parse_params};
use skein_core::{MODELS, ThreadError, ThreadInfo, ThreadManager};
use tower::Service;

use crate::session::ConnectionSession;
use crate::tracing_layer::RpcCall;

/// The server's name in `serverInfo`.
pub const SERVER_NAME: &str = "skein";
/// The server's version.
pub const SERVER_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Routes requests to handlers. Cheap to clone; clones share state.
#[derive(Clone, Debug)]
pub struct MessageProcessor {
    threads: ThreadManager,
}

type HandlerResult = Result<Value, ErrorObject>;

impl MessageProcessor {
    /// A processor over `threads`.
    pub fn new(threads: ThreadManager) -> Self {
        Self { threads }
    }

    /// Handles one request.
    pub async fn handle(&self, call: RpcCall) -> Outgoing {
        let RpcCall { request, session } = call;
        let id = request.id;
        match self
            .dispatch(&request.method, request.params, &session)
            .await
        {
            Ok(result) => Outgoing::Response { id, result },
            Err(error) => Outgoing::Error {
                id: Some(id),
                error,
            },
        }
    }

    async fn dispatch(
        &self,
        method: &str,
        params: Option<Value>,
        session: &Arc<ConnectionSession>,
    ) -> HandlerResult {
        let Some(method) = Method::from_name(method) else {
            return Err(ErrorObject::method_not_found(method));
        };
        if method != Method::Initialize && !session.is_initialized() {
            return Err(ErrorObject::new(
                NOT_INITIALIZED,
                format!(
                    "not initialized: send `initialize` before `{}`",
                    method.as_str()
                ),
            ));
        }
        match method {
            Method::Initialize => initialize(parse_params(params)?, session),
            Method::ModelList => model_list(parse_params(params)?),
            Method::ThreadStart => self.thread_start(parse_params(params)?, session).await,
            Method::ThreadList => self.thread_list(parse_params(params)?),
            Method::ThreadRead => self.thread_read(parse_params(params)?),
        }
    }

    /// Handles a client notification. Unknown ones are logged and dropped,
    /// as JSON-RPC requires no answer to a notification.
    pub fn handle_notification(&self, notification: Notification, session: &ConnectionSession) {
        match notification.method.as_str() {
            skein_app_server_protocol::INITIALIZED_NOTIFICATION => {
                tracing::debug!(connection = session.id(), "client initialized");
            }
            other => tracing::debug!(
                connection = session.id(),
                method = %skein_app_server_protocol::truncate_for_display(other, 128),
                "ignoring unknown notification"
            ),
        }
    }

    async fn thread_start(
        &self,
        params: ThreadStartParams,
        session: &ConnectionSession,
    ) -> HandlerResult {
        let info = self
            .threads
            .start_thread(params.model.as_deref(), params.ephemeral.unwrap_or(false))
            .map_err(thread_error)?;
        let thread = thread_to_wire(&info);
        session
            .notify(Outgoing::Notification {
                method: "thread/started".into(),
                params: to_value(ThreadStartedNotification {
                    thread: thread.clone(),
                })?,
                trace: None,
            })
            .await;
        to_value(ThreadStartResponse {
            model: info.model.name.to_owned(),
            model_provider: info.model.provider.to_owned(),
            thread,
        })
    }

    fn thread_list(&self, params: ThreadListParams) -> HandlerResult {
        let limit = params.limit.map(|l| l as usize);
        let page = self
            .threads
            .list(params.cursor.as_deref(), limit)
            .map_err(thread_error)?;
        to_value(ThreadListResponse {
            data: page.threads.iter().map(thread_to_wire).collect(),
            next_cursor: page.next_cursor,
        })
    }

    fn thread_read(&self, params: ThreadReadParams) -> HandlerResult {
        let info = self.threads.read(&params.thread_id).map_err(thread_error)?;
        to_value(ThreadReadResponse {
            thread: thread_to_wire(&info),
        })
    }
}

fn initialize(params: InitializeParams, session: &ConnectionSession) -> HandlerResult {
    if !session.initialize(params.client_info) {
        return Err(ErrorObject::new(
            INVALID_REQUEST,
            "already initialized: `initialize` may be sent once per connection",
        ));
    }
    to_value(InitializeResponse {
        user_agent: format!("{SERVER_NAME}/{SERVER_VERSION}"),
        server_info: ServerInfo {
            name: SERVER_NAME.into(),
            version: SERVER_VERSION.into(),
        },
    })
}

fn model_list(_params: ModelListParams) -> HandlerResult {
    to_value(ModelListResponse {
        data: MODELS
            .iter()
            .enumerate()
            .map(|(i, m)| Model {
                id: m.name.into(),
                model: m.name.into(),
                display_name: m.display_name.into(),
                description: m.description.into(),
                provider: m.provider.into(),
                is_default: i == 0,
            })
            .collect(),
        next_cursor: None,
    })
}

fn thread_to_wire(info: &ThreadInfo) -> Thread {
    Thread {
        id: info.id.clone(),
        preview: info.preview.clone(),
        model: info.model.name.into(),
        model_provider: info.model.provider.into(),
        created_at: info.created_at,
        updated_at: info.updated_at,
        ephemeral: info.ephemeral,
        turns: Vec::new(),
    }
}

fn thread_error(err: ThreadError) -> ErrorObject {
    match err {
        ThreadError::NotFound(_) | ThreadError::UnknownModel(_) | ThreadError::InvalidCursor(_) => {
            ErrorObject::invalid_params(err)
        }
    }
}

fn to_value(value: impl Serialize) -> HandlerResult {
    serde_json::to_value(value).map_err(ErrorObject::internal)
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

impl Service<RpcCall> for MessageProcessor {
    type Response = Outgoing;
    type Error = Infallible;
    type Future = BoxFuture<Result<Outgoing, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, call: RpcCall) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { Ok(this.handle(call).await) })
    }
}
