//! Server assembly: the shared context, the listen address, and the run
//! loop with graceful shutdown.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use std::time::Duration;

use skein_core::{CoreConfig, ThreadManager};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tower::Layer;

use crate::connection::RpcService;
use crate::limits::{
    ConnectionLimit, DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_PENDING_CONNECTIONS, PendingConnections,
    RefusalLogs, pending_cap,
};
use crate::processor::MessageProcessor;
use crate::tracing_layer::RequestTracingLayer;
use crate::transport::auth::WsAuth;
use crate::transport::unfinished::UnfinishedBudget;
use crate::transport::{stdio, unix, websocket};

/// How long a closing connection waits for its threads' final events.
pub const EVENT_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Default of `--ws-message-timeout`.
pub const DEFAULT_WS_MESSAGE_TIMEOUT: Duration = Duration::from_secs(60);

/// Bytes all WebSocket connections together may hold in unfinished
/// messages, in multiples of the message limit.
pub const UNFINISHED_BUDGET_MESSAGES: usize = 4;

/// Default limit on one inbound message: 8 MiB.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 8 * 1024 * 1024;

/// Where the server listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListenAddr {
    /// stdin/stdout (`stdio://`).
    Stdio,
    /// WebSocket on a TCP address (`ws://IP:PORT`).
    WebSocket(SocketAddr),
    /// WebSocket over a Unix domain socket (`unix://PATH`); `None` for the
    /// default path, [`default_unix_socket`] (`unix://`).
    Unix(Option<PathBuf>),
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Stdio => f.write_str("stdio://"),
            ListenAddr::WebSocket(addr) => write!(f, "ws://{addr}"),
            ListenAddr::Unix(Some(path)) => write!(f, "unix://{}", path.display()),
            ListenAddr::Unix(None) => f.write_str("unix://"),
        }
    }
}

/// Why a listen address did not parse.
#[derive(Debug, thiserror::Error)]
#[error(
    "invalid listen address {given:?}: {reason} (expected `stdio://`, `ws://IP:PORT`, e.g. `ws://127.0.0.1:4500`, or `unix://PATH`)"
)]
pub struct ListenAddrError {
    given: String,
    reason: String,
}

impl FromStr for ListenAddr {
    type Err = ListenAddrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let error = |reason: &str| ListenAddrError {
            given: s.to_owned(),
            reason: reason.to_owned(),
        };
        if s == "stdio://" || s == "stdio" {
            return Ok(ListenAddr::Stdio);
        }
        if let Some(path) = s.strip_prefix("unix://") {
            if path.is_empty() {
                return Ok(ListenAddr::Unix(None));
            }
            if path.contains('\0') {
                return Err(error("a path cannot hold a NUL byte"));
            }
            return Ok(ListenAddr::Unix(Some(PathBuf::from(path))));
        }
        let Some(rest) = s.strip_prefix("ws://") else {
            return Err(error("unknown scheme"));
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        parse_ws_host_port(rest)
            .map(ListenAddr::WebSocket)
            .map_err(|reason| error(&reason))
    }
}

/// `HOST:PORT` of a `ws://` address: HOST an IPv4 address, an IPv6 one in
/// brackets, or `localhost` (the IPv4 loopback, 127.0.0.1, without asking
/// a resolver); PORT 0 to 65535. The error says which part is wrong.
fn parse_ws_host_port(text: &str) -> Result<SocketAddr, String> {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    let Some((host, port)) = text.rsplit_once(':') else {
        return Err(format!(
            "{text:?} has no port; add one, e.g. `:4500` (`:0` picks a free port)"
        ));
    };
    let ip = if host.eq_ignore_ascii_case("localhost") {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        inner
            .parse::<Ipv6Addr>()
            .map(IpAddr::V6)
            .map_err(|_| format!("{inner:?} is not an IPv6 address"))?
    } else if host.contains(':') {
        return Err(format!(
            "an IPv6 address goes in brackets, e.g. `ws://[::1]:4500`; got {text:?}"
        ));
    } else if host.is_empty() {
        return Err("the host is missing; give an IP address or `localhost`".to_owned());
    } else {
        host.parse::<Ipv4Addr>().map(IpAddr::V4).map_err(|_| {
            format!("host {host:?} is not an IP address; give a numeric IP or `localhost`")
        })?
    };
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("port {port:?} is not a number (0 to 65535)"));
    }
    let port = port
        .parse::<u16>()
        .map_err(|_| format!("port {port} is out of range: a port is 0 to 65535"))?;
    Ok(SocketAddr::new(ip, port))
}

/// Everything `serve` needs.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Where to listen.
    pub listen: ListenAddr,
    /// Limit on one inbound message, in bytes.
    pub max_message_bytes: usize,
    /// How long a connection's writer may make no progress before the
    /// client is considered gone and the connection ended.
    pub client_stall_timeout: Duration,
    /// Core runtime settings.
    pub core: CoreConfig,
    /// WebSocket settings (ignored over stdio).
    pub websocket: WebSocketOptions,
}

/// Settings of the WebSocket transport.
#[derive(Clone, Debug)]
pub struct WebSocketOptions {
    /// How upgrades are authenticated.
    pub auth: WsAuth,
    /// Listen on a non-loopback address without authentication.
    pub allow_unauthenticated: bool,
    /// Most open WebSocket connections; past it, upgrades get `503`.
    pub max_connections: usize,
    /// Most connections before their upgrade (also: at most a quarter of
    /// the limit on open files); past it, a new connection evicts the
    /// oldest one still waiting for its request head.
    pub max_pending_connections: usize,
    /// Close a connection whose client sent nothing (not even a ping) for
    /// this long; `None` never does.
    pub idle_timeout: Option<Duration>,
    /// Close a connection whose client takes longer than this to complete
    /// a message (its first byte to its last).
    pub message_timeout: Duration,
}

impl Default for WebSocketOptions {
    fn default() -> Self {
        Self {
            auth: WsAuth::None,
            allow_unauthenticated: false,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_pending_connections: DEFAULT_MAX_PENDING_CONNECTIONS,
            idle_timeout: None,
            message_timeout: DEFAULT_WS_MESSAGE_TIMEOUT,
        }
    }
}

/// What every connection shares. Cheap to clone.
#[derive(Clone, Debug)]
pub struct ServerContext {
    processor: MessageProcessor,
    max_message_bytes: usize,
    client_stall_timeout: Duration,
    ws_auth: Arc<WsAuth>,
    connections: ConnectionLimit,
    pending: PendingConnections,
    ws_idle_timeout: Option<Duration>,
    ws_message_timeout: Duration,
    unfinished_budget: UnfinishedBudget,
    refusal_logs: Arc<RefusalLogs>,
}

impl ServerContext {
    /// A context around a fresh thread registry, with default WebSocket
    /// settings.
    pub fn new(max_message_bytes: usize, client_stall_timeout: Duration, core: CoreConfig) -> Self {
        Self {
            processor: MessageProcessor::new(ThreadManager::new(core)),
            max_message_bytes,
            client_stall_timeout,
            ws_auth: Arc::new(WsAuth::None),
            connections: ConnectionLimit::new(DEFAULT_MAX_CONNECTIONS),
            pending: PendingConnections::new(DEFAULT_MAX_PENDING_CONNECTIONS),
            ws_idle_timeout: None,
            ws_message_timeout: DEFAULT_WS_MESSAGE_TIMEOUT,
            unfinished_budget: UnfinishedBudget::new(
                max_message_bytes.saturating_mul(UNFINISHED_BUDGET_MESSAGES),
            ),
            refusal_logs: Arc::default(),
        }
    }

    /// This context with the WebSocket settings of `options`.
    pub fn with_websocket(mut self, options: WebSocketOptions) -> Self {
        self.ws_auth = Arc::new(options.auth);
        self.connections = ConnectionLimit::new(options.max_connections);
        // Read when serving starts, after any raise of the soft limit.
        self.pending = PendingConnections::new(pending_cap(
            options.max_pending_connections,
            crate::descriptors::current().map(|limit| limit.soft),
        ));
        self.ws_idle_timeout = options.idle_timeout;
        self.ws_message_timeout = options.message_timeout;
        self
    }

    /// How WebSocket upgrades are authenticated.
    pub fn ws_auth(&self) -> &WsAuth {
        &self.ws_auth
    }

    /// The open-connection counter of the WebSocket transport.
    pub fn connections(&self) -> &ConnectionLimit {
        &self.connections
    }

    /// The counter of WebSocket connections before their upgrade.
    pub fn pending(&self) -> &PendingConnections {
        &self.pending
    }

    /// How long a WebSocket client may take to complete a message.
    pub fn ws_message_timeout(&self) -> Duration {
        self.ws_message_timeout
    }

    /// The bytes all WebSocket connections may hold in unfinished messages.
    pub fn unfinished_budget(&self) -> &UnfinishedBudget {
        &self.unfinished_budget
    }

    /// The rate limits of the log lines about refused connections.
    pub fn refusal_logs(&self) -> &RefusalLogs {
        &self.refusal_logs
    }

    /// How long an upgraded connection may stay silent.
    pub fn ws_idle_timeout(&self) -> Option<Duration> {
        self.ws_idle_timeout
    }

    /// How long a writer may make no progress before its client is
    /// considered gone.
    pub fn client_stall_timeout(&self) -> Duration {
        self.client_stall_timeout
    }

    /// The traced request service for a new connection.
    pub fn service(&self) -> RpcService {
        RequestTracingLayer.layer(self.processor.clone())
    }

    /// The router, for notifications.
    pub fn processor(&self) -> MessageProcessor {
        self.processor.clone()
    }

    /// Limit on one inbound message, in bytes.
    pub fn max_message_bytes(&self) -> usize {
        self.max_message_bytes
    }
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The TCP address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// A non-loopback address without authentication.
    #[error(
        "refusing to listen on ws://{addr} without authentication: anyone who can reach it could drive this server. Add `--ws-auth capability-token --ws-token-file PATH` (or `--ws-auth signed-bearer-token --ws-shared-secret-file PATH`), listen on a loopback address, or pass `--ws-allow-unauthenticated` to insist"
    )]
    Unauthenticated {
        /// The address.
        addr: SocketAddr,
    },
    /// The Unix domain socket could not be bound.
    #[error(transparent)]
    Unix(#[from] crate::transport::unix::UnixBindError),
    /// The default socket path needs `SKEIN_HOME` or `HOME`.
    #[error(transparent)]
    NoHome(#[from] crate::paths::NoHomeError),
    /// Signal handlers could not be installed.
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
}

/// Runs the server until its input ends (stdio) or SIGINT / SIGTERM, then
/// shuts down gracefully and returns:
///
/// 1. transports stop reading (no new requests) and finish in-flight ones;
/// 2. core interrupts running turns; their final `turn/completed`
///    notifications still reach connected clients;
/// 3. each connection's writer drains its queue, which ends the last spans.
pub async fn serve(config: ServerConfig) -> Result<(), ServeError> {
    if let ListenAddr::WebSocket(addr) = config.listen
        && !addr.ip().is_loopback()
        && !config.websocket.auth.is_enabled()
    {
        if !config.websocket.allow_unauthenticated {
            return Err(ServeError::Unauthenticated { addr });
        }
        tracing::warn!(
            %addr,
            "listening on a non-loopback address without authentication \
             (--ws-allow-unauthenticated): anyone who can reach it can drive this server"
        );
    }
    let ctx = ServerContext::new(
        config.max_message_bytes,
        config.client_stall_timeout,
        config.core,
    )
    .with_websocket(config.websocket);
    let (stop_tx, stop_rx) = watch::channel(false);
    let signals = shutdown_signals().map_err(ServeError::Signals)?;
    let signal_stop = stop_tx.clone();
    tokio::spawn(async move {
        signals.await;
        let _ = signal_stop.send(true);
    });
    let threads = ctx.processor().threads().clone();
    let mut core_stop = stop_rx.clone();
    let core_shutdown = tokio::spawn(async move {
        if core_stop.wait_for(|stop| *stop).await.is_ok() {
            threads.shutdown().await;
        }
    });

    match config.listen {
        ListenAddr::Stdio => stdio::serve_stdio(ctx, stop_rx, stop_tx.clone()).await,
        ListenAddr::WebSocket(addr) => {
            let listener = TcpListener::bind(addr)
                .await
                .map_err(|source| ServeError::Bind { addr, source })?;
            let local = listener
                .local_addr()
                .map_err(|source| ServeError::Bind { addr, source })?;
            // The one line clients wait for; printed whatever RUST_LOG says.
            eprintln!("listening on ws://{local}");
            websocket::serve_websocket(listener, ctx, stop_rx).await;
        }
        ListenAddr::Unix(path) => {
            let (path, default_dir) = match path {
                Some(path) => (path, false),
                None => (default_unix_socket()?, true),
            };
            let mut bound = unix::bind(&path, default_dir).await?;
            if let Some(listener) = bound.take_listener() {
                eprintln!("listening on unix://{}", bound.path().display());
                websocket::serve_websocket(listener, ctx, stop_rx).await;
            }
            // Dropping `bound` removes the socket file.
        }
    }
    // Normally already stopping; make sure core is told when a transport
    // ended on its own.
    let _ = stop_tx.send(true);
    if let Err(err) = core_shutdown.await {
        tracing::error!(%err, "core shutdown failed");
    }
    Ok(())
}

/// The socket of `unix://` without a path:
/// `$SKEIN_HOME/run/app-server.sock`.
pub fn default_unix_socket() -> Result<PathBuf, crate::paths::NoHomeError> {
    Ok(crate::paths::skein_home()?
        .join(unix::DEFAULT_SOCKET_DIR)
        .join(unix::DEFAULT_SOCKET_NAME))
}

/// A future that resolves on the first SIGINT or SIGTERM.
fn shutdown_signals() -> std::io::Result<impl Future<Output = ()> + Send + 'static> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received; shutting down"),
            _ = int.recv() => tracing::info!("SIGINT received; shutting down"),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses_parse() {
        assert_eq!(
            "stdio://".parse::<ListenAddr>().ok(),
            Some(ListenAddr::Stdio)
        );
        assert_eq!(
            "ws://127.0.0.1:0".parse::<ListenAddr>().ok(),
            Some(ListenAddr::WebSocket("127.0.0.1:0".parse().expect("addr")))
        );
        let err = "http://x".parse::<ListenAddr>().expect_err("bad scheme");
        assert!(err.to_string().contains("expected `stdio://`"), "{err}");
        assert_eq!(
            "ws://localhost:80".parse::<ListenAddr>().ok(),
            Some(ListenAddr::WebSocket("127.0.0.1:80".parse().expect("addr")))
        );
        assert_eq!(
            "ws://[::1]:4500/".parse::<ListenAddr>().ok(),
            Some(ListenAddr::WebSocket("[::1]:4500".parse().expect("addr")))
        );
        for (given, says) in [
            ("ws://127.0.0.1:99999", "port 99999 is out of range"),
            ("ws://127.0.0.1:http", "port \"http\" is not a number"),
            ("ws://127.0.0.1", "has no port"),
            (
                "ws://example.com:80",
                "host \"example.com\" is not an IP address",
            ),
            ("ws://::1:80", "IPv6 address goes in brackets"),
            ("ws://:80", "the host is missing"),
        ] {
            let err = given.parse::<ListenAddr>().expect_err(given).to_string();
            assert!(err.contains(says), "{given}: {err}");
        }
        assert_eq!(
            "unix:///tmp/s.sock".parse::<ListenAddr>().ok(),
            Some(ListenAddr::Unix(Some(PathBuf::from("/tmp/s.sock"))))
        );
        assert_eq!(
            "unix://".parse::<ListenAddr>().ok(),
            Some(ListenAddr::Unix(None))
        );
    }
}
