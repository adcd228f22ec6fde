//! The message processor: routes each request to its handler.
//!
//! Handlers are plain async functions from typed params to a result. They
//! hold no tracing code: the request span around them is the
//! [`crate::tracing_layer`]'s job.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use serde::Serialize;
use serde_json::Value;
use serde_json::json;
use serde_json::value::RawValue;
use skein_app_server_protocol::jsonrpc::{INVALID_REQUEST, NOT_INITIALIZED, SERVER_OVERLOADED};
use skein_app_server_protocol::v2::{
    InitializeParams, InitializeResponse, Model, ModelListParams, ModelListResponse,
    ReviewStartParams, ReviewStartResponse, ServerInfo, ServerNotification, Thread,
    ThreadForkParams, ThreadIdParams, ThreadListParams, ThreadListResponse, ThreadReadParams,
    ThreadReadResponse, ThreadResumeParams, ThreadStartParams, ThreadStartedNotification, Turn,
    TurnInterruptParams, TurnStartParams, TurnStartResponse, TurnSteerParams,
};
use skein_app_server_protocol::{
    ErrorObject, Method, Notification, Outgoing, OutgoingNotification, parse_params,
};
use skein_core::{ThreadError, ThreadInfo, ThreadManager, TurnRecord};
use skein_protocol::{TurnKind, TurnStatus, UserInput};
use tower::Service;

use crate::ignored_params::{
    THREAD_FORK_IGNORED, THREAD_LIST_IGNORED, THREAD_RESUME_IGNORED, THREAD_START_IGNORED,
    TURN_START_IGNORED, TURN_STEER_IGNORED, log_ignored,
};
use crate::session::ConnectionSession;
use crate::tracing_layer::RpcCall;
pub use crate::wire::SERVER_VERSION;
use crate::wire::{ServerEnv, thread_response, thread_to_wire, turn_summary};

/// The server's name in `serverInfo`.
pub const SERVER_NAME: &str = "skein";

/// Routes requests to handlers. Cheap to clone; clones share state.
#[derive(Clone, Debug)]
pub struct MessageProcessor {
    pub(crate) threads: ThreadManager,
    pub(crate) env: Arc<ServerEnv>,
    /// The `model/list` result, serialized once: the models come from the
    /// configuration, which does not change while the server runs.
    models: Arc<OnceLock<Box<RawValue>>>,
}

/// What a handler answers: its result serialized straight to JSON text,
/// or an error.
pub(crate) type HandlerResult = Result<Box<RawValue>, ErrorObject>;

impl MessageProcessor {
    /// A processor over `threads`, reporting the server's working
    /// directory and home as read now.
    pub fn new(threads: ThreadManager) -> Self {
        Self {
            threads,
            env: Arc::new(ServerEnv::detect()),
            models: Arc::default(),
        }
    }

    /// Answers `model/list` from the list serialized on first use.
    fn model_list(&self, _params: ModelListParams) -> HandlerResult {
        if let Some(json) = self.models.get() {
            return Ok(json.clone());
        }
        let json = model_list(&self.threads)?;
        Ok(self.models.get_or_init(|| json).clone())
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
                    "Not initialized: send `initialize` before `{}`",
                    method.as_str()
                ),
            ));
        }
        match method {
            Method::Initialize => self.initialize(parse_params(params)?, session),
            Method::ModelList => self.model_list(parse_params(params)?),
            Method::ThreadStart => {
                log_ignored(method, params.as_ref(), THREAD_START_IGNORED);
                self.thread_start(parse_params(params)?, session).await
            }
            Method::ThreadList => {
                log_ignored(method, params.as_ref(), THREAD_LIST_IGNORED);
                self.thread_list(parse_params(params)?)
            }
            Method::ThreadRead => self.thread_read(parse_params(params)?),
            Method::ThreadResume => {
                log_ignored(method, params.as_ref(), THREAD_RESUME_IGNORED);
                self.thread_resume(parse_params(params)?, session)
            }
            Method::ThreadFork => {
                log_ignored(method, params.as_ref(), THREAD_FORK_IGNORED);
                self.thread_fork(parse_params(params)?, session).await
            }
            Method::ThreadUnsubscribe => self.thread_unsubscribe(parse_params(params)?, session),
            Method::TurnStart => {
                log_ignored(method, params.as_ref(), TURN_START_IGNORED);
                let params: TurnStartParams = parse_params(params)?;
                let model = (params.model.as_deref(), params.model_provider.as_deref());
                self.start_turn_with_model(
                    &params.thread_id,
                    TurnKind::Regular,
                    params.input,
                    model,
                    session,
                )
                .await
                .and_then(|turn| to_result(TurnStartResponse { turn }))
            }
            Method::ReviewStart => self.review_start(parse_params(params)?, session).await,
            Method::ThreadCompactStart => {
                let params: ThreadIdParams = parse_params(params)?;
                self.start_turn(&params.thread_id, TurnKind::Compact, Vec::new(), session)
                    .await
                    .and_then(|turn| to_result(TurnStartResponse { turn }))
            }
            Method::TurnSteer => {
                log_ignored(method, params.as_ref(), TURN_STEER_IGNORED);
                self.turn_steer(parse_params(params)?).await
            }
            Method::TurnInterrupt => self.turn_interrupt(parse_params(params)?).await,
            Method::ThreadLoadedList => self.thread_loaded_list(parse_params(params)?),
            Method::ThreadArchive => self.thread_archive(parse_params(params)?, session).await,
            Method::ThreadUnarchive => self.thread_unarchive(parse_params(params)?, session).await,
            Method::ThreadNameSet => self.thread_name_set(parse_params(params)?, session).await,
            Method::ThreadTurnsList => self.thread_turns_list(parse_params(params)?),
            Method::AccountRead => crate::environment::account_read(parse_params(params)?),
            Method::AccountRateLimitsRead => crate::environment::account_rate_limits_read(),
            Method::ConfigRead => self.config_read(parse_params(params)?),
            Method::ConfigRequirementsRead => crate::environment::config_requirements_read(),
            Method::SkillsList => crate::environment::skills_list(parse_params(params)?),
            Method::AppList => crate::environment::app_list(parse_params(params)?),
            Method::McpServerStatusList => self.mcp_server_status_list(parse_params(params)?),
            Method::HooksList => crate::environment::hooks_list(parse_params(params)?),
            Method::CollaborationModeList => crate::environment::collaboration_mode_list(),
            Method::PluginInstalled => crate::environment::plugin_installed(parse_params(params)?),
            Method::ThreadBackgroundTerminalsList => {
                self.thread_background_terminals_list(parse_params(params)?)
            }
            Method::ThreadGoalGet => self.thread_goal_get(parse_params(params)?),
            Method::AccountBedrockCheckGovCloudRequirements => {
                crate::environment::bedrock_check_gov_cloud_requirements()
            }
        }
    }

    /// The wire shape of a thread, with its current status.
    pub(crate) fn wire_thread(&self, info: &ThreadInfo, turns: &[TurnRecord]) -> Thread {
        thread_to_wire(info, turns, self.threads.status(&info.id), &self.env)
    }

    /// The thread registry.
    pub fn threads(&self) -> &ThreadManager {
        &self.threads
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
            .start_thread_with_provider(
                params.model.as_deref(),
                params.model_provider.as_deref(),
                params.ephemeral.unwrap_or(false),
            )
            .map_err(thread_error)?;
        self.announce_new_thread(&info, false, session).await
    }

    /// Subscribes the connection to a new thread, sends `thread/started`
    /// and builds the response shared by `thread/start` and `thread/fork`.
    async fn announce_new_thread(
        &self,
        info: &ThreadInfo,
        exclude_turns: bool,
        session: &ConnectionSession,
    ) -> HandlerResult {
        session.subscribe(&self.threads.handle(&info.id).map_err(thread_error)?);
        let turns = if exclude_turns {
            Vec::new()
        } else {
            self.threads.turns(&info.id).map_err(thread_error)?
        };
        let thread = self.wire_thread(info, &turns);
        session.notify(OutgoingNotification::new(
            ServerNotification::ThreadStarted(Box::new(ThreadStartedNotification {
                thread: thread.clone(),
            })),
        ));
        to_result(thread_response(thread, info, &self.env))
    }

    fn thread_resume(
        &self,
        params: ThreadResumeParams,
        session: &ConnectionSession,
    ) -> HandlerResult {
        let handle = self.threads.load(&params.thread_id).map_err(thread_error)?;
        let (info, turns) = self
            .threads
            .read_with_turns(&params.thread_id)
            .map_err(thread_error)?;
        session.subscribe(&handle);
        let turns = if params.exclude_turns {
            &[][..]
        } else {
            &turns
        };
        to_result(thread_response(
            self.wire_thread(&info, turns),
            &info,
            &self.env,
        ))
    }

    async fn thread_fork(
        &self,
        params: ThreadForkParams,
        session: &ConnectionSession,
    ) -> HandlerResult {
        let info = self
            .threads
            .fork_thread(&params.thread_id, params.turn_id.as_deref())
            .map_err(thread_error)?;
        self.announce_new_thread(&info, params.exclude_turns, session)
            .await
    }

    fn thread_unsubscribe(
        &self,
        params: ThreadIdParams,
        session: &ConnectionSession,
    ) -> HandlerResult {
        // Codex answers `notLoaded` for any thread not loaded here, known
        // or not; so does Skein.
        if self.threads.handle(&params.thread_id).is_err() {
            return to_result(json!({ "status": "notLoaded" }));
        }
        let status = if session.unsubscribe(&params.thread_id) {
            "unsubscribed"
        } else {
            "notSubscribed"
        };
        to_result(json!({ "status": status }))
    }

    /// Subscribes the connection to the thread and starts a turn there;
    /// returns the new turn, `inProgress`.
    async fn start_turn(
        &self,
        thread_id: &str,
        kind: TurnKind,
        input: Vec<UserInput>,
        session: &ConnectionSession,
    ) -> Result<Turn, ErrorObject> {
        self.start_turn_with_model(thread_id, kind, input, (None, None), session)
            .await
    }

    async fn start_turn_with_model(
        &self,
        thread_id: &str,
        kind: TurnKind,
        input: Vec<UserInput>,
        (model, provider): (Option<&str>, Option<&str>),
        session: &ConnectionSession,
    ) -> Result<Turn, ErrorObject> {
        session.subscribe(&self.threads.load(thread_id).map_err(thread_error)?);
        let started = self
            .threads
            .start_turn_with_model(thread_id, kind, input, model, provider)
            .await
            .map_err(thread_error)?;
        session.owe_turn(thread_id, &started.turn_id);
        Ok(turn_summary(started.turn_id, TurnStatus::InProgress, None))
    }

    /// `review/start`: Skein reviews the thread's conversation inline, on
    /// the thread itself, whatever the target or delivery asked for.
    async fn review_start(
        &self,
        params: ReviewStartParams,
        session: &ConnectionSession,
    ) -> HandlerResult {
        if params.target.is_some() || params.delivery.is_some() {
            tracing::debug!(
                target_kind = ?params.target,
                delivery = ?params.delivery,
                "review target and delivery accepted; the review covers the thread inline"
            );
        }
        let turn = self
            .start_turn(&params.thread_id, TurnKind::Review, Vec::new(), session)
            .await?;
        to_result(ReviewStartResponse {
            turn,
            review_thread_id: params.thread_id,
        })
    }

    async fn turn_steer(&self, params: TurnSteerParams) -> HandlerResult {
        self.threads
            .steer(&params.thread_id, &params.expected_turn_id, params.input)
            .await
            .map_err(thread_error)?;
        to_result(json!({ "turnId": params.expected_turn_id }))
    }

    async fn turn_interrupt(&self, params: TurnInterruptParams) -> HandlerResult {
        self.threads
            .interrupt(&params.thread_id, &params.turn_id)
            .await
            .map_err(thread_error)?;
        to_result(json!({}))
    }

    fn thread_list(&self, params: ThreadListParams) -> HandlerResult {
        let limit = params.limit.map(|l| l as usize);
        let page = self
            .threads
            .list(
                params.cursor.as_deref(),
                limit,
                params.archived.unwrap_or(false),
            )
            .map_err(thread_error)?;
        to_result(ThreadListResponse {
            data: page
                .threads
                .iter()
                .map(|t| self.wire_thread(t, &[]))
                .collect(),
            next_cursor: page.next_cursor,
        })
    }

    fn thread_read(&self, params: ThreadReadParams) -> HandlerResult {
        let (info, turns) = if params.include_turns {
            self.threads.read_with_turns(&params.thread_id)
        } else {
            self.threads
                .read(&params.thread_id)
                .map(|info| (info, Vec::new()))
        }
        .map_err(thread_error)?;
        to_result(ThreadReadResponse {
            thread: self.wire_thread(&info, &turns),
        })
    }

    fn initialize(&self, params: InitializeParams, session: &ConnectionSession) -> HandlerResult {
        if !session.initialize(&params.client_info) {
            return Err(ErrorObject::new(
                INVALID_REQUEST,
                "already initialized: `initialize` may be sent once per connection",
            ));
        }
        to_result(InitializeResponse {
            user_agent: format!("{SERVER_NAME}/{SERVER_VERSION}"),
            codex_home: self.env.home.clone(),
            platform_family: std::env::consts::FAMILY.into(),
            platform_os: std::env::consts::OS.into(),
            server_info: ServerInfo {
                name: SERVER_NAME.into(),
                version: SERVER_VERSION.into(),
            },
        })
    }
}

/// The `model/list` result: every page is the whole list, so the params
/// change nothing.
fn model_list(threads: &ThreadManager) -> HandlerResult {
    to_result(ModelListResponse {
        data: threads
            .models()
            .into_iter()
            .map(|(m, is_default)| Model {
                id: m.name.clone(),
                model: m.name,
                display_name: m.display_name,
                description: m.description,
                provider: m.provider,
                is_default,
                hidden: false,
                supported_reasoning_efforts: crate::wire::reasoning_efforts(),
                default_reasoning_effort: crate::wire::REASONING_EFFORT.into(),
            })
            .collect(),
        next_cursor: None,
    })
}

pub(crate) fn thread_error(err: ThreadError) -> ErrorObject {
    match err {
        ThreadError::NotFound(_)
        | ThreadError::UnknownModel(_)
        | ThreadError::UnknownProvider(_)
        | ThreadError::InvalidCursor(_)
        | ThreadError::TurnNotFound { .. }
        | ThreadError::EmptyInput
        | ThreadError::EmptyName => ErrorObject::invalid_params(err),
        ThreadError::TurnRunning { .. }
        | ThreadError::TurnNotRunning { .. }
        | ThreadError::Busy(_)
        | ThreadError::ShuttingDown => ErrorObject::invalid_request(err),
        ThreadError::Store(_) => ErrorObject::internal(err),
        ThreadError::Overloaded { running } => {
            tracing::warn!(running, "refusing a turn: --max-running-turns reached");
            let mut error = ErrorObject::new(SERVER_OVERLOADED, "server overloaded; retry later");
            error.data = Some(json!({
                "retryAfterMs": crate::limits::RETRY_AFTER.as_millis() as u64,
            }));
            error
        }
    }
}

/// Serializes a handler's typed result to JSON text.
pub(crate) fn to_result(value: impl Serialize) -> HandlerResult {
    serde_json::value::to_raw_value(&value).map_err(ErrorObject::internal)
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
