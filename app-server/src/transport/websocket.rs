//! The WebSocket transport: one JSON-RPC message per text frame.
//!
//! Each TCP connection starts with an HTTP request head, read here (bounded
//! in size and time) before anything else. Until its upgrade is done a
//! connection is counted among the pending ones (`--max-pending-connections`,
//! at most a quarter of the limit on open files); when they are too many,
//! the newest connection evicts the oldest one still waiting for its head
//! (see [`crate::limits::PendingConnections`] for why evicting, not
//! refusing). Then:
//! - `GET /healthz` answers `200 ok` and closes;
//! - a request carrying an `Origin` header is refused with `403`, so that a
//!   web page in a browser cannot drive a local server;
//! - an upgrade without a valid `Authorization: Bearer` token (when
//!   `--ws-auth` is set) is refused with `401` (see [`super::auth`]);
//! - a head larger than 16 KiB (or with more than 64 header fields) gets
//!   `431`;
//! - an upgrade tokio-tungstenite would refuse gets its answer here rather
//!   than a dropped connection: `426` with `Sec-WebSocket-Version: 13` for
//!   another WebSocket version (RFC 6455 section 4.2.2), `400` with a
//!   one-line reason for a missing or malformed `Sec-WebSocket-Key`, a
//!   missing `Connection: Upgrade` or an HTTP version before 1.1;
//! - an upgrade past `--max-connections` open connections gets `503` with
//!   `Retry-After`;
//! - a WebSocket upgrade is handed to tokio-tungstenite, replaying the bytes
//!   already read;
//! - anything else gets `400`.
//!
//! With `--ws-idle-timeout`, a connection whose client sent nothing for
//! half the timeout gets a WebSocket ping: a live client's automatic pong
//! is input, so it stays open while only listening; a dead one is closed
//! at the timeout (see [`Pinger`]).
//!
//! When `accept` fails (usually: out of file descriptors), the accept loop
//! backs off (see [`crate::limits::AcceptBackoff`]) and keeps serving the
//! connections already open.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::{FutureExt, SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::{Instant, Sleep};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError, ProtocolError};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};

use crate::connection::ConnectionHandler;
use crate::limits::{AcceptBackoff, Admission, PENDING_DESCRIPTOR_SHARE, PendingSlot, RETRY_AFTER};
use crate::memory::{Trimmer, release_free_memory};
use crate::server::{EVENT_DRAIN_TIMEOUT, ServerContext};
use skein_otel::rpc::RequestSpan;

use crate::session::{OutboundItem, StallReporter, Transport};
use crate::transport::too_large_error;
use crate::transport::unfinished::{UnfinishedError, UnfinishedMessages};
use skein_app_server_protocol::ErrorObject;

/// Largest HTTP request head accepted.
const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Most header fields accepted in a request head.
const MAX_HEADER_FIELDS: usize = 64;
/// The one WebSocket protocol version spoken (RFC 6455).
const WEBSOCKET_VERSION: &str = "13";
/// How long a client may take to send its request head: short, since a
/// connection holds a descriptor before anyone knows who it is.
const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// Initial read buffer of a WebSocket connection.
const WS_READ_BUFFER_BYTES: usize = 4 * 1024;
/// Bytes of frames buffered before tungstenite writes them without a flush.
const WS_WRITE_BUFFER_BYTES: usize = 64 * 1024;
/// How long shutdown waits for open connections to finish: their threads'
/// last notifications, then the close handshake, with some room.
const DRAIN_TIMEOUT: Duration = EVENT_DRAIN_TIMEOUT
    .saturating_add(LINGER_TIMEOUT)
    .saturating_add(Duration::from_secs(5));

/// A connected byte stream WebSocket is spoken over: a TCP connection or
/// a Unix domain socket's.
pub trait Socket: AsyncRead + AsyncWrite + Unpin + Send + 'static {}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> Socket for S {}

/// Where connections come from: a TCP listener (`ws://`) or a Unix domain
/// socket's (`unix://`). Everything after `accept` is the same code.
pub trait Listener: Send {
    /// The accepted connection.
    type Stream: Socket;
    /// The client's address, for logs.
    type Peer: std::fmt::Display + Send + 'static;
    /// The next connection.
    fn accept(&self) -> impl Future<Output = io::Result<(Self::Stream, Self::Peer)>> + Send;
}

impl Listener for TcpListener {
    type Stream = tokio::net::TcpStream;
    type Peer = std::net::SocketAddr;

    async fn accept(&self) -> io::Result<(Self::Stream, Self::Peer)> {
        TcpListener::accept(self).await
    }
}

/// The peer of a Unix domain socket connection: unnamed, as clients'
/// sockets are.
#[derive(Clone, Copy, Debug)]
pub struct UnixPeer;

impl std::fmt::Display for UnixPeer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("unix socket client")
    }
}

impl Listener for UnixListener {
    type Stream = tokio::net::UnixStream;
    type Peer = UnixPeer;

    async fn accept(&self) -> io::Result<(Self::Stream, Self::Peer)> {
        let (stream, _) = UnixListener::accept(self).await?;
        Ok((stream, UnixPeer))
    }
}

/// Accepts WebSocket connections on `listener` until shutdown, then waits
/// (bounded) for open connections to finish their in-flight requests.
pub async fn serve_websocket<L: Listener>(
    listener: L,
    ctx: ServerContext,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut connections = JoinSet::new();
    let mut trimmer = Trimmer::default();
    let for_connections = shutdown.clone();
    let mut backoff = AcceptBackoff::default();
    tracing::info!(
        max_pending = ctx.pending().max(),
        "at most {} connections before their upgrade (--max-pending-connections, and at most \
         1/{PENDING_DESCRIPTOR_SHARE} of the limit on open files); past it, a new connection \
         evicts the oldest one still waiting for its request head",
        ctx.pending().max()
    );
    loop {
        tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => break,
            accepted = Listener::accept(&listener) => match accepted {
                Ok((stream, peer)) => {
                    backoff.succeeded();
                    let Some(pending) = admit(&ctx) else {
                        // Dropping the stream closes it at once.
                        continue;
                    };
                    let ctx = ctx.clone();
                    let shutdown = for_connections.clone();
                    trimmer.opened();
                    connections.spawn(async move {
                        if let Err(err) = handle_socket(stream, pending, ctx, shutdown).await {
                            tracing::debug!(%peer, %err, "connection ended with an error");
                        }
                    });
                }
                Err(err) => {
                    // Usually out of file descriptors: retrying at once
                    // would spin. Pause (open connections keep running on
                    // their own tasks), reaping finished ones meanwhile.
                    let pause = tokio::time::sleep(backoff.failed(&err));
                    tokio::pin!(pause);
                    let mut stop = for_connections.clone();
                    loop {
                        tokio::select! {
                            _ = &mut pause => break,
                            _ = stop.wait_for(|stop| *stop) => break,
                            Some(_) = connections.join_next(), if !connections.is_empty() => {
                                if trimmer.closed() {
                                    release_free_memory();
                                }
                            }
                        }
                    }
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {
                if trimmer.closed() {
                    release_free_memory();
                }
            }
        }
    }
    drop(listener);
    let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            open = connections.len(),
            "connections still open after the drain timeout; closing them"
        );
        connections.shutdown().await;
    }
}

/// Counts a new connection among those before their upgrade (see
/// [`crate::limits::PendingConnections`] for why a full count evicts the
/// oldest connection still waiting for its head); `None` when it must be
/// closed at once. Either is logged, rate-limited.
fn admit(ctx: &ServerContext) -> Option<PendingSlot> {
    let (slot, what) = match ctx.pending().admit() {
        Admission::Admitted(slot) => return Some(slot),
        Admission::EvictedOldest(slot) => (
            Some(slot),
            "closing the oldest connection still waiting for its request head",
        ),
        Admission::Full => (None, "closing a new connection"),
    };
    if let Some(unlogged) = ctx.refusal_logs().pending_full.admit() {
        tracing::warn!(
            max = ctx.pending().max(),
            unlogged,
            "{what}: too many connections before their upgrade (--max-pending-connections; \
             one line per 10 s at most, `unlogged` counts the others since the last line)"
        );
    }
    slot
}

/// What the request head asked for.
#[derive(Debug, PartialEq, Eq)]
enum Route {
    Health,
    /// A WebSocket upgrade tokio-tungstenite will accept, with its
    /// `Authorization` header if any and the length of its head (bytes
    /// after it are the client's first frames).
    Upgrade {
        authorization: Option<String>,
        head_len: usize,
    },
    Forbidden,
    BadRequest(&'static str),
    /// `431`: the head is too large; the reason ends in a newline.
    HeadTooLarge(&'static str),
    /// `426`: a WebSocket version other than [`WEBSOCKET_VERSION`].
    UnsupportedVersion,
}

/// Serves one accepted connection; `pending` counts it until its upgrade
/// is done (or it ends before).
async fn handle_socket<S: Socket>(
    mut stream: S,
    pending: PendingSlot,
    ctx: ServerContext,
    shutdown: watch::Receiver<bool>,
) -> io::Result<()> {
    let head = tokio::select! {
        read = tokio::time::timeout(HEAD_TIMEOUT, read_head(&mut stream)) => match read {
            Ok(head) => head?,
            Err(_) => return Ok(()),
        },
        // A newer connection took its place: the server is flooded, and
        // this one has waited longest for its head.
        () = pending.evicted() => return Ok(()),
    };
    pending.head_read();
    match route(&head) {
        Route::Health => write_http(&mut stream, "200 OK", "ok\n").await,
        Route::Forbidden => {
            write_http(
                &mut stream,
                "403 Forbidden",
                "requests from web pages (with an Origin header) are refused\n",
            )
            .await
        }
        Route::BadRequest(why) => write_http(&mut stream, "400 Bad Request", why).await,
        Route::HeadTooLarge(why) => {
            write_http(&mut stream, "431 Request Header Fields Too Large", why).await?;
            // The rest of the head is likely still arriving: closing with
            // unread input would reset the connection, which can destroy
            // the answer before the client reads it. Discard it (bounded).
            discard_input(&mut stream).await;
            Ok(())
        }
        Route::UnsupportedVersion => {
            // RFC 6455 section 4.2.2: name the version this server speaks.
            let headers =
                format!("Upgrade: websocket\r\nSec-WebSocket-Version: {WEBSOCKET_VERSION}\r\n");
            let body = format!(
                "unsupported WebSocket version: this server speaks version {WEBSOCKET_VERSION}\n"
            );
            write_response(&mut stream, "426 Upgrade Required", &headers, &body).await
        }
        Route::Upgrade {
            authorization,
            head_len,
        } => {
            if let Err(why) = ctx.ws_auth().check(authorization.as_deref()) {
                if let Some(unlogged) = ctx.refusal_logs().unauthenticated.admit() {
                    tracing::info!(
                        reason = why,
                        unlogged,
                        "refusing an unauthenticated upgrade (one line per 10 s at most; \
                         `unlogged` counts the refusals since the last line)"
                    );
                }
                let body = format!("unauthorized: {why}\n");
                return write_response(
                    &mut stream,
                    "401 Unauthorized",
                    "WWW-Authenticate: Bearer\r\n",
                    &body,
                )
                .await;
            }
            let Some(_slot) = ctx.connections().try_acquire() else {
                if let Some(unlogged) = ctx.refusal_logs().too_many.admit() {
                    tracing::warn!(
                        open = ctx.connections().open(),
                        unlogged,
                        "refusing an upgrade: too many open connections (--max-connections; \
                         one line per 10 s at most, `unlogged` counts the refusals since the last)"
                    );
                }
                let retry = format!("Retry-After: {}\r\n", RETRY_AFTER.as_secs().max(1));
                return write_response(
                    &mut stream,
                    "503 Service Unavailable",
                    &retry,
                    "server overloaded: too many open connections; retry later\n",
                )
                .await;
            };
            let limit = ctx.max_message_bytes();
            let config = WebSocketConfig::default()
                .max_message_size(Some(limit))
                .max_frame_size(Some(limit))
                // JSON-RPC messages are small: start with a small read
                // buffer (it grows on demand for a large message) and
                // gather writes up to 64 KiB before the flush sends them.
                .read_buffer_size(WS_READ_BUFFER_BYTES)
                .write_buffer_size(WS_WRITE_BUFFER_BYTES);
            let unfinished = UnfinishedMessages::new(
                ctx.ws_message_timeout(),
                ctx.unfinished_budget().clone(),
                head_len,
            );
            let replay = Replay::new(head, stream)
                .with_idle_timeout(ctx.ws_idle_timeout())
                .with_unfinished(unfinished);
            let pinger = replay.pinger();
            match tokio_tungstenite::accept_async_with_config(replay, Some(config)).await {
                Ok(ws) => {
                    // Upgraded: from now on counted by --max-connections.
                    drop(pending);
                    serve_connection(ws, pinger, ctx, shutdown).await;
                    Ok(())
                }
                Err(err) => Err(io::Error::other(err)),
            }
        }
    }
}

/// Reads until the end of the request head (the bytes after it, if any,
/// come along), until more than [`MAX_HEAD_BYTES`] arrived without it
/// ([`route`] answers that with `431`), or until what arrived cannot be the
/// start of an HTTP request ([`route`] answers `400` at once rather than
/// waiting for a head that will never come).
async fn read_head<S: Socket>(stream: &mut S) -> io::Result<Vec<u8>> {
    let mut head = Vec::with_capacity(1024);
    loop {
        // Straight into the vector's spare room: no buffer in this future,
        // which lives in every connection's task.
        head.reserve(1024);
        // Only the new bytes need a look, with the three before them (the
        // blank line may straddle two reads).
        let searched = head.len().saturating_sub(3);
        let n = stream.read_buf(&mut head).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "closed before the request head",
            ));
        }
        if head[searched..].windows(4).any(|w| w == b"\r\n\r\n")
            || head.len() > MAX_HEAD_BYTES
            || !could_be_http(&head)
        {
            return Ok(head);
        }
    }
}

/// Whether `partial`, an unfinished request head, may still become a valid
/// one.
fn could_be_http(partial: &[u8]) -> bool {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADER_FIELDS];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(partial) {
        Ok(_) | Err(httparse::Error::TooManyHeaders) => true,
        Err(_) => false,
    }
}

/// Decides what to answer from the request head alone. Upgrades that
/// tokio-tungstenite's handshake would refuse are answered here (it would
/// only drop the connection), so only acceptable ones reach it.
fn route(head: &[u8]) -> Route {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADER_FIELDS];
    let mut request = httparse::Request::new(&mut headers);
    let head_len = match request.parse(head) {
        Ok(httparse::Status::Complete(len)) if len <= MAX_HEAD_BYTES => len,
        Ok(_) if head.len() > MAX_HEAD_BYTES => {
            return Route::HeadTooLarge("request head larger than 16 KiB\n");
        }
        Err(httparse::Error::TooManyHeaders) => {
            return Route::HeadTooLarge("more than 64 header fields\n");
        }
        _ => return Route::BadRequest("malformed HTTP request\n"),
    };
    let header = |name: &str| {
        request
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).into_owned())
    };
    if request.method == Some("GET") && request.path == Some("/healthz") {
        return Route::Health;
    }
    if header("origin").is_some() {
        return Route::Forbidden;
    }
    let upgrade = header("upgrade").is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    if request.method != Some("GET") || !upgrade {
        return Route::BadRequest(
            "this endpoint speaks WebSocket (JSON-RPC) and serves GET /healthz\n",
        );
    }
    // The checks of tungstenite's server handshake, in its order, each
    // with its own answer. A missing version is answered like another
    // version: such a client predates RFC 6455, and 426 tells it the one
    // spoken.
    if request.version != Some(1) {
        return Route::BadRequest("a WebSocket upgrade needs HTTP/1.1\n");
    }
    let connection_upgrade = header("connection").is_some_and(|v| {
        v.split([' ', ','])
            .any(|token| token.eq_ignore_ascii_case("upgrade"))
    });
    if !connection_upgrade {
        return Route::BadRequest("a WebSocket upgrade needs a Connection: Upgrade header\n");
    }
    if header("sec-websocket-version").as_deref() != Some(WEBSOCKET_VERSION) {
        return Route::UnsupportedVersion;
    }
    match header("sec-websocket-key") {
        None => Route::BadRequest("a WebSocket upgrade needs a Sec-WebSocket-Key header\n"),
        Some(key) if !is_websocket_key(key.as_bytes()) => {
            Route::BadRequest("Sec-WebSocket-Key must be 16 bytes in base64 (24 characters)\n")
        }
        Some(_) => Route::Upgrade {
            authorization: header("authorization"),
            head_len,
        },
    }
}

/// Whether `key` is 16 bytes in padded base64, as RFC 6455 section 4.1
/// asks (and tungstenite checks): 22 characters of the base64 alphabet,
/// then `==`; the last character holds only 2 bits of the 16 bytes, so its
/// low 4 bits are zero.
fn is_websocket_key(key: &[u8]) -> bool {
    fn sextet(c: u8) -> Option<u8> {
        match c {
            b'A'..=b'Z' => Some(c - b'A'),
            b'a'..=b'z' => Some(c - b'a' + 26),
            b'0'..=b'9' => Some(c - b'0' + 52),
            b'+' => Some(62),
            b'/' => Some(63),
            _ => None,
        }
    }
    let [body @ .., b'=', b'='] = key else {
        return false;
    };
    body.len() == 22
        && body.iter().all(|&c| sextet(c).is_some())
        && body
            .last()
            .and_then(|&c| sextet(c))
            .is_some_and(|v| v & 0x0F == 0)
}

async fn write_http<S: Socket>(stream: &mut S, status: &str, body: &str) -> io::Result<()> {
    write_response(stream, status, "", body).await
}

/// Writes a plain-text response with `extra_headers` (each line ending in
/// CRLF) and closes the connection.
async fn write_response<S: Socket>(
    stream: &mut S,
    status: &str,
    extra_headers: &str,
    body: &str,
) -> io::Result<()> {
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n{extra_headers}Connection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

type Ws<S> = WebSocketStream<Replay<S>>;

/// Most messages gathered before they are written.
const WRITE_BATCH_FRAMES: usize = 256;

/// What woke a connection's task.
enum Wake {
    /// The server is shutting down.
    Shutdown,
    /// A notification from one of the threads the connection follows.
    Notice(OutboundItem),
    /// The next frame from the client, or its end.
    Input(Option<Result<Message, WsError>>),
    /// The client has been quiet long enough to be pinged (see [`Pinger`]).
    Ping,
}

/// How a connection ends.
enum End {
    /// With this close frame, once everything queued is written.
    Close(CloseFrame),
    /// With this close frame after discarding the rest of a refused
    /// message still arriving (see [`linger`]).
    CloseAndLinger(CloseFrame),
    /// The client closed its sending side (a TCP half-close) without a
    /// close frame: the turns it started are still owed their
    /// notifications (see [`write_owed_turns`]), then a normal close.
    InputEnded,
    /// Without a closing handshake: the client is gone or stopped reading.
    Abandon,
}

fn close_frame(code: CloseCode, reason: &str) -> CloseFrame {
    CloseFrame {
        code,
        reason: reason.to_owned().into(),
    }
}

fn shutdown_close() -> CloseFrame {
    close_frame(CloseCode::Away, "server shutting down")
}

/// Serves one upgraded connection in one task, which both reads and writes:
/// no hand-off between tasks on the way from a request to its response.
///
/// Frames already received are handled one after another, in order, and
/// their replies gathered; they are written (one flush) once no further
/// input is ready, before the task waits again. Notifications of the
/// threads the connection follows arrive through the session's outbound
/// queue and are written the same way. A write that makes no progress for
/// the stall timeout ends the connection. With a [`Pinger`], a ping goes
/// out, in a write of its own, whenever the client has been quiet long
/// enough (even while output flows: a client listening to a long turn
/// sends nothing but its pongs). Request spans end (are dropped)
/// once their responses were flushed.
///
/// On shutdown the task stops handling input (what the client sends from
/// then on is never handled, so never answered), writes the notifications
/// of the threads it follows until they have shut down (so every running
/// turn's `turn/completed` goes out), then closes with 1001 and reads
/// until the client answers the close (see [`finish_close`]).
async fn serve_connection<S: Socket>(
    mut ws: Ws<S>,
    mut pinger: Option<Pinger>,
    ctx: ServerContext,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut handler = ConnectionHandler::new(
        Transport::WebSocket,
        ctx.service(),
        ctx.processor(),
        WRITE_BATCH_FRAMES,
    );
    let connection = handler.session().id();
    tracing::info!(connection, "websocket connection open");
    let mut writer = FrameWriter {
        stall: Stall {
            timeout: ctx.client_stall_timeout(),
            reporter: handler.session().stall_reporter(),
            connection,
        },
        written: Vec::new(),
    };
    let limit = ctx.max_message_bytes();
    let mut out = Vec::new();

    let end = 'serve: loop {
        let wake = tokio::select! {
            // Shutdown first: input that is ready too is left unhandled.
            biased;
            _ = shutdown.wait_for(|stop| *stop) => Wake::Shutdown,
            Some(item) = handler.next_queued() => Wake::Notice(item),
            next = ws.next() => Wake::Input(next),
            () = Pinger::due(pinger.as_mut()) => Wake::Ping,
        };
        match wake {
            Wake::Shutdown => break shutdown_close_end(),
            Wake::Notice(item) => {
                out.push(item);
                handler.take_queued(&mut out);
            }
            Wake::Ping => match writer.ping(&mut ws).await {
                Pinged::Sent => {}
                Pinged::Closing => pinger = None,
                Pinged::Failed => break End::Abandon,
            },
            Wake::Input(mut next) => loop {
                if let Some(end) = handle_input(&mut handler, next, &mut out, limit).await {
                    // Replies to what came before the end are still owed.
                    if writer.write(&mut ws, &mut out).await.is_err() {
                        break 'serve End::Abandon;
                    }
                    break 'serve end;
                }
                if out.len() >= WRITE_BATCH_FRAMES || *shutdown.borrow() {
                    break;
                }
                match ws.next().now_or_never() {
                    Some(more) => next = more,
                    None => break,
                }
            },
        }
        if writer.write(&mut ws, &mut out).await.is_err() {
            break End::Abandon;
        }
    };
    let end = match end {
        End::InputEnded => {
            write_owed_turns(&mut handler, &mut ws, &mut writer, &mut out, &mut shutdown).await
        }
        end => end,
    };

    // Threads' final notifications (on graceful shutdown) are still
    // written while the forwarders finish.
    let graceful = *shutdown.borrow();
    let mut writing = !matches!(end, End::Abandon);
    let mut closing = handler.start_closing(graceful);
    while let Some(item) = handler.next_while_closing(&mut closing).await {
        if writing {
            out.push(item);
            handler.take_queued(&mut out);
            writing = writer.write(&mut ws, &mut out).await.is_ok();
        }
    }
    if writing {
        handler.take_queued(&mut out);
        writing = writer.write(&mut ws, &mut out).await.is_ok();
    }
    drop(handler);
    match end {
        End::Close(frame) if writing => finish_close(&mut ws, frame, writer.stall.timeout).await,
        End::CloseAndLinger(frame) if writing => {
            let _ =
                tokio::time::timeout(writer.stall.timeout, ws.send(Message::Close(Some(frame))))
                    .await;
            // The rest of the refused message is still arriving: closing
            // now would reset the connection and could destroy the error
            // and the close frame before the client reads them. Discard
            // it first (bounded).
            linger(ws.get_mut()).await;
        }
        _ => {}
    }
    tracing::info!(connection, "websocket connection closed");
}

/// How a connection ends on shutdown.
fn shutdown_close_end() -> End {
    End::Close(shutdown_close())
}

/// After the client closed its sending side: keeps writing, without
/// reading, until every turn the connection started has had its
/// `turn/completed` written, then ends with a normal close (with 1001
/// instead if the server shuts down meanwhile, which ends those turns).
async fn write_owed_turns<S: Socket>(
    handler: &mut ConnectionHandler,
    ws: &mut Ws<S>,
    writer: &mut FrameWriter,
    out: &mut Vec<OutboundItem>,
    shutdown: &mut watch::Receiver<bool>,
) -> End {
    loop {
        if !handler.owes_turns() {
            return End::Close(close_frame(CloseCode::Normal, ""));
        }
        let item = tokio::select! {
            biased;
            _ = shutdown.wait_for(|stop| *stop) => return shutdown_close_end(),
            Some(item) = handler.next_queued() => item,
        };
        out.push(item);
        handler.take_queued(out);
        if writer.write(ws, out).await.is_err() {
            return End::Abandon;
        }
    }
}

/// Sends the close frame (under the stall timeout), then reads, and
/// discards, what the client still sends until it answers the close or its
/// input ends, for at most [`LINGER_TIMEOUT`]. Closing the socket with
/// unread input would reset the connection, and a reset can destroy what
/// was written before the client read it: the last notifications, the
/// close frame itself.
async fn finish_close<S: Socket>(ws: &mut Ws<S>, frame: CloseFrame, stall: Duration) {
    let sent = tokio::time::timeout(stall, ws.send(Message::Close(Some(frame)))).await;
    if sent.is_err() {
        return;
    }
    // Also writes tungstenite's answer to a close the client started.
    let _ = tokio::time::timeout(LINGER_TIMEOUT, async {
        while let Some(Ok(message)) = ws.next().await {
            if let Message::Close(_) = message {
                break;
            }
        }
    })
    .await;
}

/// Handles one read from the client, appending what to write to `out`.
/// Returns how the connection ends, if this read ends it.
async fn handle_input(
    handler: &mut ConnectionHandler,
    next: Option<Result<Message, WsError>>,
    out: &mut Vec<OutboundItem>,
    limit: usize,
) -> Option<End> {
    let connection = handler.session().id();
    match next {
        Some(Ok(Message::Text(text))) => {
            handler.handle_frame(text.as_bytes(), out).await;
            None
        }
        Some(Ok(Message::Binary(_))) => {
            handler.reject(
                ErrorObject::invalid_request(
                    "binary frames are not supported: send each JSON-RPC message as a text frame",
                ),
                out,
            );
            None
        }
        Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => None,
        Some(Ok(Message::Close(_))) | None => Some(End::Close(close_frame(CloseCode::Normal, ""))),
        Some(Err(WsError::Capacity(CapacityError::MessageTooLong { size, max_size }))) => {
            // The rest of the oversized frame is still on the wire, so the
            // stream cannot be resynchronized: answer, then close.
            tracing::warn!(connection, size, max_size, "refusing an oversized message");
            handler.reject(too_large_error(limit), out);
            Some(End::CloseAndLinger(close_frame(
                CloseCode::Size,
                "message too large",
            )))
        }
        Some(Err(WsError::Io(err))) if UnfinishedError::of(&err).is_some() => {
            tracing::debug!(connection, %err, "ending a connection with an unfinished message");
            let frame = match UnfinishedError::of(&err) {
                Some(UnfinishedError::OverBudget) => close_frame(
                    CloseCode::Again,
                    "server busy: too much input in unfinished messages",
                ),
                _ => close_frame(CloseCode::Policy, "message not completed in time"),
            };
            Some(End::Close(frame))
        }
        Some(Err(WsError::Io(err))) if is_client_half_close(&err) => {
            tracing::debug!(connection, "the client closed its sending side");
            Some(End::InputEnded)
        }
        Some(Err(err)) => {
            tracing::debug!(connection, %err, "websocket read failed");
            Some(End::Close(
                close_for_read_error(&err).unwrap_or_else(|| close_frame(CloseCode::Normal, "")),
            ))
        }
    }
}

/// Whether a read error is [`Replay`]'s report of the end of the client's
/// input.
fn is_client_half_close(err: &io::Error) -> bool {
    err.get_ref()
        .is_some_and(|inner| inner.is::<ClientClosedItsSide>())
}

/// The close frame that answers a client's protocol violation (RFC 6455
/// section 7.4.1): 1007 for a text frame that is not UTF-8, 1002 for
/// other protocol errors (reserved bits, unknown opcodes, unmasked frames).
/// `None` for errors that are not the client's frames (I/O, a peer that
/// went away), where the normal close stands.
fn close_for_read_error(err: &WsError) -> Option<CloseFrame> {
    match err {
        WsError::Utf8(_) => Some(CloseFrame {
            code: CloseCode::Invalid,
            reason: "text frame is not valid UTF-8".into(),
        }),
        WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => None,
        WsError::Protocol(problem) => {
            let reason = problem.to_string();
            let reason = skein_app_server_protocol::truncate_for_display(&reason, 110);
            Some(CloseFrame {
                code: CloseCode::Protocol,
                reason: reason.into(),
            })
        }
        _ => None,
    }
}

/// How long a closing connection keeps discarding input it will not read.
const LINGER_TIMEOUT: Duration = Duration::from_secs(5);

/// Discards what the client still sends, then shuts the socket down.
async fn linger<S: Socket>(socket: &mut Replay<S>) {
    discard_input(socket).await;
    let _ = socket.shutdown().await;
}

/// Reads and discards what the client still sends, until it closes its
/// side, [`LINGER_TIMEOUT`] passes, or the connection fails.
async fn discard_input<S: AsyncRead + Unpin>(socket: &mut S) {
    // On the heap: a buffer in this future would make every connection's
    // task that much larger, lingering or not.
    let mut sink = vec![0u8; 16 * 1024];
    let _ = tokio::time::timeout(LINGER_TIMEOUT, async {
        while let Ok(n) = socket.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}

/// How a connection recognizes a client that stopped reading.
struct Stall {
    timeout: Duration,
    reporter: StallReporter,
    connection: u64,
}

/// The writing side of a connection's task.
struct FrameWriter {
    stall: Stall,
    /// Request spans of the messages being written.
    written: Vec<Vec<RequestSpan>>,
}

/// The client is gone or stopped reading; nothing more can be written.
struct WriteFailed;

/// What became of a ping.
enum Pinged {
    Sent,
    /// The client started the closing handshake: nothing was written, and
    /// no more pings are due; the close is still answered.
    Closing,
    /// The client is gone or stopped reading.
    Failed,
}

impl FrameWriter {
    /// Writes `out` (emptying it) as text frames with one flush. The
    /// request spans of the written messages end afterwards. A write that
    /// makes no progress for the stall timeout fails, reporting the stall.
    async fn write<S: Socket>(
        &mut self,
        ws: &mut Ws<S>,
        out: &mut Vec<OutboundItem>,
    ) -> Result<(), WriteFailed> {
        if out.is_empty() {
            return Ok(());
        }
        let written = &mut self.written;
        let burst = async {
            for item in out.drain(..) {
                written.push(item.spans);
                ws.feed(Message::text(item.text)).await?;
            }
            ws.flush().await
        };
        let sent = tokio::time::timeout(self.stall.timeout, burst).await;
        out.clear();
        // The request spans end here, after their responses were written.
        self.written.clear();
        self.outcome(sent)
    }

    /// Sends a WebSocket ping, under the stall timeout.
    async fn ping<S: Socket>(&mut self, ws: &mut Ws<S>) -> Pinged {
        let sent = tokio::time::timeout(
            self.stall.timeout,
            ws.send(Message::Ping(Default::default())),
        )
        .await;
        if let Ok(Err(WsError::Protocol(ProtocolError::SendAfterClosing))) = sent {
            return Pinged::Closing;
        }
        match self.outcome(sent) {
            Ok(()) => Pinged::Sent,
            Err(WriteFailed) => Pinged::Failed,
        }
    }

    /// Whether a write bounded by the stall timeout went out; when it did
    /// not, the peer is gone, or it stopped reading (reported).
    fn outcome(
        &self,
        sent: Result<Result<(), WsError>, tokio::time::error::Elapsed>,
    ) -> Result<(), WriteFailed> {
        match sent {
            Ok(Ok(())) => Ok(()),
            Ok(Err(err)) => {
                tracing::debug!(
                    connection = self.stall.connection,
                    %err,
                    "websocket peer gone; dropping further output"
                );
                Err(WriteFailed)
            }
            Err(_) => {
                self.stall
                    .reporter
                    .report(self.stall.connection, self.stall.timeout);
                Err(WriteFailed)
            }
        }
    }
}

/// The share of the idle timeout a connection may be quiet before it is
/// pinged: half, so the pong has the other half to arrive.
const PING_AFTER_IDLE_DIVISOR: u32 = 2;

/// Decides when a connection's task sends a WebSocket ping: once its
/// client has sent nothing for `interval` (half the idle timeout), and
/// again `interval` after each ping while it stays quiet. The client's pong
/// is input like any other ([`Replay`] records it on the [`InputClock`] and
/// pushes its idle deadline back), so a live client stays open, while one
/// that does not answer reaches the idle timeout and is closed.
#[derive(Debug)]
struct Pinger {
    interval: Duration,
    clock: Arc<InputClock>,
    /// When to look again; on the heap, and only with an idle timeout, so
    /// that it does not grow every connection's task.
    timer: Pin<Box<Sleep>>,
}

impl Pinger {
    /// Must be called within the runtime.
    fn new(interval: Duration, clock: Arc<InputClock>) -> Self {
        let first = clock.last_input() + interval;
        Self {
            interval,
            clock,
            timer: Box::pin(tokio::time::sleep_until(first)),
        }
    }

    /// Resolves when a ping is due (never without a pinger). Cancel safe:
    /// dropping it while it waits changes nothing.
    async fn due(pinger: Option<&mut Pinger>) {
        let Some(pinger) = pinger else {
            return std::future::pending().await;
        };
        loop {
            pinger.timer.as_mut().await;
            let now = Instant::now();
            let quiet_until = pinger.clock.last_input() + pinger.interval;
            if quiet_until <= now {
                // Quiet for the whole interval: ping, and look again one
                // interval after this ping.
                pinger.timer.as_mut().reset(now + pinger.interval);
                return;
            }
            // Input arrived meanwhile: the interval runs from it.
            pinger.timer.as_mut().reset(quiet_until);
        }
    }
}

/// When a connection last received input: written by its [`Replay`] on
/// every read that brought bytes, read by its [`Pinger`].
#[derive(Debug)]
struct InputClock {
    start: Instant,
    /// Milliseconds from `start` to the last input.
    last_ms: AtomicU64,
}

impl InputClock {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    fn record(&self, at: Instant) {
        let ms = u64::try_from(at.duration_since(self.start).as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// The last input (the clock's creation before any).
    fn last_input(&self) -> Instant {
        self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }
}

/// Why a [`Replay`] read fails at the end of the client's input.
#[derive(Debug, thiserror::Error)]
#[error("the client closed its side of the connection")]
struct ClientClosedItsSide;

/// A stream that first yields bytes already read from it, then reads on.
///
/// The end of input is reported as an [`io::ErrorKind::UnexpectedEof`]
/// error, never as a zero-length read (see `poll_read`).
///
/// With an idle timeout, a read that has waited that long since the last
/// bytes arrived fails with [`io::ErrorKind::TimedOut`], which ends the
/// connection: any frame from the client (a WebSocket ping or pong too)
/// counts as activity. The time of the last input is also kept on an
/// [`InputClock`] for the connection's [`Pinger`].
#[derive(Debug)]
pub struct Replay<S> {
    prefix: Vec<u8>,
    pos: usize,
    inner: S,
    idle: Option<Idle>,
    unfinished: Option<Unfinished>,
}

/// A [`Replay`]'s follower of unfinished messages, with the timer of the
/// current one's deadline.
#[derive(Debug)]
struct Unfinished {
    messages: UnfinishedMessages,
    timer: Pin<Box<Sleep>>,
    /// The deadline `timer` is set to.
    armed: Option<Instant>,
}

impl Unfinished {
    /// Follows bytes handed to the reader.
    fn received(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.messages
            .received(bytes, Instant::now())
            .map_err(|err| io::Error::new(io::ErrorKind::TimedOut, err))
    }

    /// While the reader waits: fails once the unfinished message, if any,
    /// is past its deadline.
    fn poll_due(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        let Some(due) = self.messages.due() else {
            return Poll::Pending;
        };
        if self.armed != Some(due) {
            self.timer.as_mut().reset(due);
            self.armed = Some(due);
        }
        match self.timer.as_mut().poll(cx) {
            Poll::Ready(()) => match self.messages.check(Instant::now()) {
                Err(err) => Poll::Ready(io::Error::new(io::ErrorKind::TimedOut, err)),
                Ok(()) => Poll::Pending,
            },
            Poll::Pending => Poll::Pending,
        }
    }
}

#[derive(Debug)]
struct Idle {
    timeout: Duration,
    deadline: Pin<Box<Sleep>>,
    clock: Arc<InputClock>,
}

impl<S> Replay<S> {
    /// Replays `prefix` before reading from `inner`.
    pub fn new(prefix: Vec<u8>, inner: S) -> Self {
        Self {
            prefix,
            pos: 0,
            inner,
            idle: None,
            unfinished: None,
        }
    }

    /// Fails reads once a message has taken too long or unfinished
    /// messages hold too much (see [`UnfinishedMessages`]). Must be called
    /// within the runtime.
    pub fn with_unfinished(mut self, messages: UnfinishedMessages) -> Self {
        self.unfinished = Some(Unfinished {
            messages,
            timer: Box::pin(tokio::time::sleep(Duration::ZERO)),
            armed: None,
        });
        self
    }

    /// Fails reads once nothing arrived for `timeout` (`None`: never).
    /// Must be called within the runtime.
    pub fn with_idle_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.idle = timeout.map(|timeout| Idle {
            timeout,
            deadline: Box::pin(tokio::time::sleep(timeout)),
            clock: Arc::new(InputClock::new()),
        });
        self
    }

    /// The pinger keeping a live client open, with an idle timeout.
    /// Must be called within the runtime.
    fn pinger(&self) -> Option<Pinger> {
        self.idle.as_ref().map(|idle| {
            Pinger::new(
                idle.timeout / PING_AFTER_IDLE_DIVISOR,
                Arc::clone(&idle.clock),
            )
        })
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Replay<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.pos < self.prefix.len() {
            let this = &mut *self;
            let rest = &this.prefix[this.pos..];
            let n = rest.len().min(buf.remaining());
            if let Some(unfinished) = &mut this.unfinished {
                unfinished.received(&rest[..n])?;
            }
            buf.put_slice(&rest[..n]);
            self.pos += n;
            if self.pos == self.prefix.len() {
                self.prefix = Vec::new();
                self.pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() == before && buf.remaining() > 0 {
                    // End of input: the client closed its side (perhaps
                    // only its side: shutdown(Write) after a last request).
                    // Reported as an error, not as EOF: tungstenite takes
                    // an EOF without a close handshake for a dead
                    // connection and marks the whole WebSocket terminated,
                    // so the connection could no longer write the answers
                    // still owed. An I/O error ends reading the same way but
                    // leaves the writing half usable.
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        ClientClosedItsSide,
                    )));
                }
                if let Some(unfinished) = &mut this.unfinished {
                    unfinished.received(&buf.filled()[before..])?;
                }
                if let Some(idle) = &mut this.idle
                    && buf.filled().len() > before
                {
                    let now = Instant::now();
                    idle.deadline.as_mut().reset(now + idle.timeout);
                    idle.clock.record(now);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => {
                if let Some(unfinished) = &mut this.unfinished
                    && let Poll::Ready(err) = unfinished.poll_due(cx)
                {
                    return Poll::Ready(Err(err));
                }
                Self::poll_idle(&mut this.idle, cx)
            }
            other => other,
        }
    }
}

impl<S> Replay<S> {
    /// While the reader waits: fails once the idle timeout passed.
    fn poll_idle(idle: &mut Option<Idle>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match idle {
            Some(idle) => match idle.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "idle timeout: the client sent nothing",
                ))),
                Poll::Pending => Poll::Pending,
            },
            None => Poll::Pending,
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Replay<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An upgrade request head with these header lines (each ending in
    /// CRLF) after `Host`.
    fn upgrade_head(lines: &str) -> Vec<u8> {
        format!("GET / HTTP/1.1\r\nHost: x\r\n{lines}\r\n").into_bytes()
    }

    const UPGRADE: &str = "Upgrade: websocket\r\nConnection: Upgrade\r\n";
    const KEY: &str = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";
    const VERSION: &str = "Sec-WebSocket-Version: 13\r\n";

    fn valid_upgrade(extra: &str) -> Vec<u8> {
        upgrade_head(&format!("{UPGRADE}{KEY}{VERSION}{extra}"))
    }

    #[test]
    fn routes_health_upgrade_and_browser_requests() {
        assert_eq!(
            route(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"),
            Route::Health
        );
        assert_eq!(
            route(&valid_upgrade("")),
            Route::Upgrade {
                authorization: None,
                head_len: valid_upgrade("").len(),
            }
        );
        assert_eq!(
            route(&valid_upgrade("Authorization: Bearer t\r\n")),
            Route::Upgrade {
                authorization: Some("Bearer t".to_owned()),
                head_len: valid_upgrade("Authorization: Bearer t\r\n").len(),
            }
        );
        // Bytes after the head (the client's first frames) are not part of it.
        let mut with_frame = valid_upgrade("");
        with_frame.extend_from_slice(&[0x81, 0x80, 1, 2, 3, 4]);
        assert!(matches!(
            route(&with_frame),
            Route::Upgrade { head_len, .. } if head_len == valid_upgrade("").len()
        ));
        assert_eq!(
            route(&valid_upgrade("Origin: http://evil\r\n")),
            Route::Forbidden
        );
        assert!(matches!(
            route(b"POST / HTTP/1.1\r\nHost: x\r\n\r\n"),
            Route::BadRequest(_)
        ));
        assert!(matches!(
            route(b"\x00\x01garbage\r\n\r\n"),
            Route::BadRequest(_)
        ));
    }

    #[test]
    fn heads_past_16_kib_or_64_fields_are_too_large() {
        let filler = format!("X-Filler: {}\r\n", "a".repeat(MAX_HEAD_BYTES));
        // Complete, but too large.
        assert_eq!(
            route(&valid_upgrade(&filler)),
            Route::HeadTooLarge("request head larger than 16 KiB\n")
        );
        // Cut off at the limit (read_head stops reading there).
        let mut cut = valid_upgrade(&filler);
        cut.truncate(MAX_HEAD_BYTES + 1);
        assert_eq!(
            route(&cut),
            Route::HeadTooLarge("request head larger than 16 KiB\n")
        );
        let many: String = (0..=MAX_HEADER_FIELDS)
            .map(|i| format!("X-{i}: v\r\n"))
            .collect();
        assert_eq!(
            route(&valid_upgrade(&many)),
            Route::HeadTooLarge("more than 64 header fields\n")
        );
        // Just inside both limits.
        let some: String = (0..MAX_HEADER_FIELDS - 6)
            .map(|i| format!("X-{i}: v\r\n"))
            .collect();
        assert!(matches!(
            route(&valid_upgrade(&some)),
            Route::Upgrade { .. }
        ));
        // An incomplete head below the limit is malformed, not too large.
        let partial = b"GET / HTTP/1.1\r\nHost: x\r\n";
        assert!(matches!(route(partial), Route::BadRequest(_)));
    }

    #[test]
    fn upgrades_tungstenite_would_refuse_are_answered_here() {
        for version in ["8", "14", "13, 8", ""] {
            let head = upgrade_head(&format!(
                "{UPGRADE}{KEY}Sec-WebSocket-Version: {version}\r\n"
            ));
            assert_eq!(route(&head), Route::UnsupportedVersion, "{version:?}");
        }
        assert_eq!(
            route(&upgrade_head(&format!("{UPGRADE}{KEY}"))),
            Route::UnsupportedVersion
        );
        let missing_key = route(&upgrade_head(&format!("{UPGRADE}{VERSION}")));
        assert_eq!(
            missing_key,
            Route::BadRequest("a WebSocket upgrade needs a Sec-WebSocket-Key header\n")
        );
        for key in [
            "",
            "short==",
            "dGhlIHNhbXBsZSBub25jZQ",
            "dGhlIHNhbXBsZSBub25jZR==",
            "dGhlIHNhbXBsZSBub25j*Q==",
            "dGhlIHNhbXBsZSBub25jZQ===",
        ] {
            let head = upgrade_head(&format!("{UPGRADE}{VERSION}Sec-WebSocket-Key: {key}\r\n"));
            assert_eq!(
                route(&head),
                Route::BadRequest("Sec-WebSocket-Key must be 16 bytes in base64 (24 characters)\n"),
                "{key:?}"
            );
        }
        let no_connection = upgrade_head(&format!("Upgrade: websocket\r\n{KEY}{VERSION}"));
        assert_eq!(
            route(&no_connection),
            Route::BadRequest("a WebSocket upgrade needs a Connection: Upgrade header\n")
        );
        let listed = upgrade_head(&format!(
            "Upgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n{KEY}{VERSION}"
        ));
        assert!(matches!(route(&listed), Route::Upgrade { .. }));
        let http10 = format!("GET / HTTP/1.0\r\nHost: x\r\n{UPGRADE}{KEY}{VERSION}\r\n");
        assert_eq!(
            route(http10.as_bytes()),
            Route::BadRequest("a WebSocket upgrade needs HTTP/1.1\n")
        );
    }

    #[test]
    fn garbage_is_known_not_to_be_http_before_a_head_ends() {
        assert!(could_be_http(b"GET / HT"));
        assert!(could_be_http(b"GET / HTTP/1.1\r\nHost: x\r\n"));
        assert!(!could_be_http(b"\x16\x03\x01\x02\x00"));
        assert!(!could_be_http(b"\x00\x01garbage"));
        assert!(!could_be_http(b"GET / HTTP/1.1\r\nBad Header\r\n"));
    }

    #[test]
    fn websocket_keys_are_16_bytes_of_base64() {
        assert!(is_websocket_key(b"dGhlIHNhbXBsZSBub25jZQ=="));
        assert!(is_websocket_key(b"AAAAAAAAAAAAAAAAAAAAAA=="));
        assert!(is_websocket_key(b"/+/+/+/+/+/+/+/+/+/+/w=="));
        assert!(!is_websocket_key(b"AAAAAAAAAAAAAAAAAAAAAB=="));
        assert!(!is_websocket_key(b"AAAAAAAAAAAAAAAAAAAAAAA="));
        assert!(!is_websocket_key(b"AAAAAAAAAAAAAAAAAAAAAAAA"));
        assert!(!is_websocket_key(b"=="));
    }

    #[tokio::test]
    async fn replay_yields_prefix_then_inner_then_eof_as_an_error() {
        let mut r = Replay::new(b"abc".to_vec(), &b"def"[..]);
        let mut out = [0u8; 6];
        r.read_exact(&mut out).await.expect("read");
        assert_eq!(&out, b"abcdef");
        let end = r.read(&mut [0u8; 4]).await.expect_err("EOF is an error");
        assert_eq!(end.kind(), io::ErrorKind::UnexpectedEof);
        assert!(is_client_half_close(&end), "{end}");
    }
}
