//! The WebSocket transport: one JSON-RPC message per text frame.
//!
//! Each TCP connection starts with an HTTP request head, read here (bounded
//! in size and time) before anything else:
//! - `GET /healthz` answers `200 ok` and closes;
//! - a request carrying an `Origin` header is refused with `403`, so that a
//!   web page in a browser cannot drive a local server;
//! - an upgrade without a valid `Authorization: Bearer` token (when
//!   `--ws-auth` is set) is refused with `401` (see [`super::auth`]);
//! - an upgrade past `--max-connections` open connections gets `503` with
//!   `Retry-After`;
//! - a WebSocket upgrade is handed to tokio-tungstenite, replaying the bytes
//!   already read;
//! - anything else gets `400`.
//!
//! When `accept` fails (usually: out of file descriptors), the accept loop
//! backs off (see [`crate::limits::AcceptBackoff`]) and keeps serving the
//! connections already open.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError, ProtocolError};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};

use crate::connection::ConnectionHandler;
use crate::limits::{AcceptBackoff, RETRY_AFTER};
use crate::memory::{Trimmer, release_free_memory};
use crate::server::{EVENT_DRAIN_TIMEOUT, ServerContext};
use crate::session::{ConnectionSession, OUTBOUND_QUEUE, OutboundItem, StallReporter, Transport};
use crate::transport::too_large_error;
use skein_app_server_protocol::ErrorObject;

/// Largest HTTP request head accepted.
const MAX_HEAD_BYTES: usize = 16 * 1024;
/// How long a client may take to send its request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// Initial read buffer of a WebSocket connection.
const WS_READ_BUFFER_BYTES: usize = 4 * 1024;
/// Bytes of frames buffered before tungstenite writes them without a flush.
const WS_WRITE_BUFFER_BYTES: usize = 64 * 1024;
/// How long shutdown waits for open connections to finish.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepts WebSocket connections on `listener` until shutdown, then waits
/// (bounded) for open connections to finish their in-flight requests.
pub async fn serve_websocket(
    listener: TcpListener,
    ctx: ServerContext,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut connections = JoinSet::new();
    let mut trimmer = Trimmer::default();
    let for_connections = shutdown.clone();
    let mut backoff = AcceptBackoff::default();
    loop {
        tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    backoff.succeeded();
                    let ctx = ctx.clone();
                    let shutdown = for_connections.clone();
                    trimmer.opened();
                    connections.spawn(async move {
                        if let Err(err) = handle_socket(stream, ctx, shutdown).await {
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

/// What the request head asked for.
enum Route {
    Health,
    /// A WebSocket upgrade, with its `Authorization` header if any.
    Upgrade {
        authorization: Option<String>,
    },
    Forbidden,
    BadRequest(&'static str),
}

async fn handle_socket(
    mut stream: TcpStream,
    ctx: ServerContext,
    shutdown: watch::Receiver<bool>,
) -> io::Result<()> {
    let head = match tokio::time::timeout(HEAD_TIMEOUT, read_head(&mut stream)).await {
        Ok(head) => head?,
        Err(_) => return Ok(()),
    };
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
        Route::Upgrade { authorization } => {
            if let Err(why) = ctx.ws_auth().check(authorization.as_deref()) {
                tracing::info!(reason = why, "refusing an unauthenticated upgrade");
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
                tracing::warn!(
                    open = ctx.connections().open(),
                    "refusing an upgrade: too many open connections (--max-connections)"
                );
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
            let replay = Replay::new(head, stream).with_idle_timeout(ctx.ws_idle_timeout());
            match tokio_tungstenite::accept_async_with_config(replay, Some(config)).await {
                Ok(ws) => {
                    serve_connection(ws, ctx, shutdown).await;
                    Ok(())
                }
                Err(err) => Err(io::Error::other(err)),
            }
        }
    }
}

async fn read_head(stream: &mut TcpStream) -> io::Result<Vec<u8>> {
    let mut head = Vec::with_capacity(1024);
    loop {
        // Straight into the vector's spare room: no buffer in this future,
        // which lives in every connection's task.
        head.reserve(1024);
        let n = stream.read_buf(&mut head).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "closed before the request head",
            ));
        }
        if head.windows(4).any(|w| w == b"\r\n\r\n") {
            return Ok(head);
        }
        if head.len() > MAX_HEAD_BYTES {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "request head too large",
            ));
        }
    }
}

fn route(head: &[u8]) -> Route {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        _ => return Route::BadRequest("malformed HTTP request\n"),
    }
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
    if request.method == Some("GET") && upgrade {
        Route::Upgrade {
            authorization: header("authorization"),
        }
    } else {
        Route::BadRequest("this endpoint speaks WebSocket (JSON-RPC) and serves GET /healthz\n")
    }
}

async fn write_http(stream: &mut TcpStream, status: &str, body: &str) -> io::Result<()> {
    write_response(stream, status, "", body).await
}

/// Writes a plain-text response with `extra_headers` (each line ending in
/// CRLF) and closes the connection.
async fn write_response(
    stream: &mut TcpStream,
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

type WsSink = SplitSink<WebSocketStream<Replay<TcpStream>>, Message>;

async fn serve_connection(
    ws: WebSocketStream<Replay<TcpStream>>,
    ctx: ServerContext,
    mut shutdown: watch::Receiver<bool>,
) {
    let (sink, mut stream) = ws.split();
    let (tx, rx) = mpsc::channel(OUTBOUND_QUEUE);
    let session = Arc::new(ConnectionSession::new(Transport::WebSocket, tx));
    let connection = session.id();
    let writer = tokio::spawn(write_frames(
        sink,
        rx,
        Stall {
            timeout: ctx.client_stall_timeout(),
            reporter: session.stall_reporter(),
            connection,
        },
    ));
    tracing::info!(connection, "websocket connection open");
    let mut handler = ConnectionHandler::new(session, ctx.service(), ctx.processor());

    let limit = ctx.max_message_bytes();
    let mut close = CloseFrame {
        code: CloseCode::Normal,
        reason: "".into(),
    };
    let overrun = handler.session().overrun();
    tokio::pin!(overrun);
    loop {
        let next = tokio::select! {
            next = stream.next() => next,
            _ = shutdown.wait_for(|stop| *stop) => {
                close = CloseFrame { code: CloseCode::Away, reason: "server shutting down".into() };
                break;
            }
            reason = &mut overrun => {
                // Close frame reasons are limited to 123 bytes.
                let reason = skein_app_server_protocol::truncate_for_display(&reason, 110);
                close = CloseFrame { code: CloseCode::Policy, reason: reason.into() };
                break;
            }
        };
        let keep_going = match next {
            Some(Ok(Message::Text(text))) => handler.handle_frame(text.as_bytes()).await,
            Some(Ok(Message::Binary(_))) => handler
                .reject(ErrorObject::invalid_request(
                    "binary frames are not supported: send each JSON-RPC message as a text frame",
                ))
                .await,
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => true,
            Some(Ok(Message::Close(_))) | None => break,
            Some(Err(WsError::Capacity(CapacityError::MessageTooLong { size, max_size }))) => {
                // The rest of the oversized frame is still on the wire, so
                // the stream cannot be resynchronized: answer, then close.
                tracing::warn!(connection, size, max_size, "refusing an oversized message");
                handler.reject(too_large_error(limit)).await;
                close = CloseFrame {
                    code: CloseCode::Size,
                    reason: "message too large".into(),
                };
                break;
            }
            Some(Err(err)) => {
                tracing::debug!(connection, %err, "websocket read failed");
                if let Some(frame) = close_for_read_error(&err) {
                    close = frame;
                }
                break;
            }
        };
        if !keep_going {
            break;
        }
    }
    let graceful = *shutdown.borrow();
    handler
        .session()
        .close_subscriptions(graceful, EVENT_DRAIN_TIMEOUT)
        .await;
    drop(handler);
    let unread_input = close.code == CloseCode::Size;
    match writer.await {
        Ok(Some(sink)) => match sink.reunite(stream) {
            Ok(mut ws) => {
                let _ = ws.send(Message::Close(Some(close))).await;
                if unread_input {
                    // The rest of the refused message is still arriving:
                    // closing now would reset the connection and could
                    // destroy the error and the close frame before the
                    // client reads them. Discard it first (bounded).
                    linger(ws.get_mut()).await;
                } else {
                    let _ = ws.close(None).await;
                }
            }
            Err(err) => tracing::debug!(connection, %err, "websocket halves did not match"),
        },
        Ok(None) => {}
        Err(err) => tracing::error!(connection, %err, "websocket writer failed"),
    }
    tracing::info!(connection, "websocket connection closed");
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

/// Reads and discards what the client still sends, until it closes its
/// side, [`LINGER_TIMEOUT`] passes, or the connection fails; then shuts
/// the socket down.
async fn linger(socket: &mut Replay<TcpStream>) {
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
    let _ = socket.shutdown().await;
}

/// Most frames the writer buffers before it writes them out.
const WRITE_BATCH_FRAMES: usize = 256;

/// How a writer recognizes a client that stopped reading.
struct Stall {
    timeout: Duration,
    reporter: StallReporter,
    connection: u64,
}

/// Writes queued items as text frames until the queue closes; returns the
/// sink for the closing handshake, or `None` when the peer is gone or
/// stopped reading.
///
/// Frames already queued are buffered together and the socket is flushed
/// once the queue runs dry: one write per burst, not per message. The
/// request spans of a burst end (are dropped) after the flush. A write
/// that makes no progress for the stall timeout ends the connection.
async fn write_frames(
    mut sink: WsSink,
    mut rx: mpsc::Receiver<OutboundItem>,
    stall: Stall,
) -> Option<WsSink> {
    let mut written = Vec::new();
    while let Some(item) = rx.recv().await {
        let mut next = Some(item);
        let burst = async {
            while let Some(item) = next.take() {
                sink.feed(Message::text(item.text)).await?;
                written.push(item.spans);
                if written.len() < WRITE_BATCH_FRAMES {
                    next = rx.try_recv().ok();
                }
            }
            sink.flush().await
        };
        let sent = tokio::time::timeout(stall.timeout, burst).await;
        // The request spans end here, after their responses were written.
        written.clear();
        match sent {
            Ok(Ok(())) => {}
            Ok(Err(err)) => {
                tracing::debug!(%err, "websocket peer gone; dropping further output");
                return None;
            }
            Err(_) => {
                stall.reporter.report(stall.connection, stall.timeout);
                return None;
            }
        }
    }
    Some(sink)
}

/// Why a [`Replay`] read fails at the end of the client's input.
const CLIENT_CLOSED_ITS_SIDE: &str = "the client closed its side of the connection";

/// A stream that first yields bytes already read from it, then reads on.
///
/// The end of input is reported as an [`io::ErrorKind::UnexpectedEof`]
/// error, never as a zero-length read (see `poll_read`).
///
/// With an idle timeout, a read that has waited that long since the last
/// bytes arrived fails with [`io::ErrorKind::TimedOut`], which ends the
/// connection: any frame from the client (a WebSocket ping or pong too)
/// counts as activity.
#[derive(Debug)]
pub struct Replay<S> {
    prefix: Vec<u8>,
    pos: usize,
    inner: S,
    idle: Option<Idle>,
}

#[derive(Debug)]
struct Idle {
    timeout: Duration,
    deadline: Pin<Box<tokio::time::Sleep>>,
}

impl<S> Replay<S> {
    /// Replays `prefix` before reading from `inner`.
    pub fn new(prefix: Vec<u8>, inner: S) -> Self {
        Self {
            prefix,
            pos: 0,
            inner,
            idle: None,
        }
    }

    /// Fails reads once nothing arrived for `timeout` (`None`: never).
    /// Must be called within the runtime.
    pub fn with_idle_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.idle = timeout.map(|timeout| Idle {
            timeout,
            deadline: Box::pin(tokio::time::sleep(timeout)),
        });
        self
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Replay<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.pos < self.prefix.len() {
            let rest = &self.prefix[self.pos..];
            let n = rest.len().min(buf.remaining());
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
                    // so the writer could no longer send the answers still
                    // queued. An I/O error ends the reader the same way but
                    // leaves the writing half usable.
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        CLIENT_CLOSED_ITS_SIDE,
                    )));
                }
                if let Some(idle) = &mut this.idle
                    && buf.filled().len() > before
                {
                    let next = tokio::time::Instant::now() + idle.timeout;
                    idle.deadline.as_mut().reset(next);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => match &mut this.idle {
                Some(idle) => match idle.deadline.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "idle timeout: the client sent nothing",
                    ))),
                    Poll::Pending => Poll::Pending,
                },
                None => Poll::Pending,
            },
            other => other,
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

    #[test]
    fn routes_health_upgrade_and_browser_requests() {
        assert!(matches!(
            route(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"),
            Route::Health
        ));
        assert!(matches!(
            route(
                b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
            ),
            Route::Upgrade {
                authorization: None
            }
        ));
        match route(
            b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nAuthorization: Bearer t\r\n\r\n",
        ) {
            Route::Upgrade { authorization } => {
                assert_eq!(authorization.as_deref(), Some("Bearer t"));
            }
            _ => panic!("an upgrade with a token routes to the upgrade"),
        }
        assert!(matches!(
            route(
                b"GET / HTTP/1.1\r\nHost: x\r\nOrigin: http://evil\r\nUpgrade: websocket\r\n\r\n"
            ),
            Route::Forbidden
        ));
        assert!(matches!(
            route(b"POST / HTTP/1.1\r\nHost: x\r\n\r\n"),
            Route::BadRequest(_)
        ));
        assert!(matches!(
            route(b"\x00\x01garbage\r\n\r\n"),
            Route::BadRequest(_)
        ));
    }

    #[tokio::test]
    async fn replay_yields_prefix_then_inner_then_eof_as_an_error() {
        let mut r = Replay::new(b"abc".to_vec(), &b"def"[..]);
        let mut out = [0u8; 6];
        r.read_exact(&mut out).await.expect("read");
        assert_eq!(&out, b"abcdef");
        let end = r.read(&mut [0u8; 4]).await.expect_err("EOF is an error");
        assert_eq!(end.kind(), io::ErrorKind::UnexpectedEof);
        assert_eq!(end.to_string(), CLIENT_CLOSED_ITS_SIDE);
    }
}
