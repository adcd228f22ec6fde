//! Protocol edge cases against the real binary: oversized messages, a
//! second `initialize`, bad params, browser requests, and WebSocket
//! protocol violations (closed with 1002 / 1007).

mod support;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use support::{ServerOptions, TIMEOUT, Transport};

const LIMIT: usize = 4096;

fn limited() -> ServerOptions {
    ServerOptions::default()
        .arg("--max-message-bytes")
        .arg(&LIMIT.to_string())
}

fn oversized_request() -> String {
    json!({"id": 1, "method": "model/list", "params": {"pad": "x".repeat(LIMIT * 4)}}).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdio_oversized_line_is_refused_and_the_next_request_served() {
    let mut server = support::Server::start_with(Transport::Stdio, limited()).await;
    let mut client = server.connect().await;
    client.initialize("edges", "1").await;

    client.send_raw(&oversized_request()).await;
    let refusal = client.recv().await;
    assert_eq!(refusal["id"], Value::Null, "{refusal}");
    assert_eq!(refusal["error"]["code"], -32600, "{refusal}");
    let message = refusal["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("too large") && message.contains(&LIMIT.to_string()),
        "the error names the problem and the limit: {message}"
    );

    let after = client.request("model/list", json!({}), None).await;
    after.result();
    client.close().await;
    drop(server.shutdown().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_oversized_frame_is_refused_with_an_error_and_close_1009() {
    let server = support::Server::start_with(Transport::WebSocket, limited()).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(server.ws_url())
        .await
        .expect("websocket connect");
    ws.send(Message::text(oversized_request()))
        .await
        .expect("send oversized frame");

    let mut refusal = None;
    let mut close = None;
    let drained = tokio::time::timeout(TIMEOUT, async {
        while let Some(Ok(message)) = ws.next().await {
            match message {
                Message::Text(text) => {
                    refusal = serde_json::from_str::<Value>(&text).ok();
                }
                Message::Close(frame) => {
                    close = frame;
                    break;
                }
                _ => {}
            }
        }
    })
    .await;
    assert!(drained.is_ok(), "the server neither answered nor closed");
    let refusal = refusal.expect("a JSON-RPC error before the close");
    assert_eq!(refusal["error"]["code"], -32600, "{refusal}");
    let close = close.expect("a close frame");
    assert_eq!(close.code, CloseCode::Size, "{close:?}");
    drop(server.shutdown().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_initialize_is_refused_and_the_first_client_info_stays() {
    let mut server = support::Server::start(Transport::Stdio).await;
    let mut client = server.connect().await;
    client.initialize("first", "1.0").await;
    let again = client
        .request(
            "initialize",
            json!({"clientInfo": {"name": "second", "version": "2.0"}}),
            None,
        )
        .await;
    assert_eq!(again.error_code(), -32600);
    let later = client.request("model/list", json!({}), None).await;
    later.result();
    client.close().await;
    let finished = server.shutdown().await;
    let span = finished.request_span(&later.id_str());
    assert_eq!(
        span.attr_str("app_server.client_name").as_deref(),
        Some("first")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_params_get_invalid_params_naming_the_field() {
    let mut server = support::Server::start(Transport::Stdio).await;
    let mut client = server.connect().await;
    client.initialize("edges", "1").await;
    let bad = client
        .request("thread/read", json!({"threadId": 42}), None)
        .await;
    assert_eq!(bad.error_code(), -32602);
    let missing = client
        .request("turn/start", json!({"input": []}), None)
        .await;
    assert_eq!(missing.error_code(), -32602);
    for (response, field) in [(&bad, "threadId"), (&missing, "threadId")] {
        let message = response.message["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert!(message.contains(field), "names `{field}`: {message}");
    }
    client.close().await;
    drop(server.shutdown().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_errors_name_no_server_path_and_the_os_error_once() {
    let home = support::SkeinHome::new();
    let mut server =
        support::Server::start_with(Transport::Stdio, ServerOptions::default().home(&home)).await;
    let mut client = server.connect().await;
    client.initialize("edges", "1").await;
    client.start_thread().await;
    // The store's directory vanishes under the running server.
    std::fs::remove_dir_all(home.threads_dir()).expect("remove the threads directory");
    let home_path = home.path().to_str().expect("utf-8 path").to_owned();
    for method in ["thread/start", "thread/list"] {
        let response = client.request(method, json!({}), None).await;
        assert_eq!(
            response.error_code(),
            -32603,
            "{method}: {}",
            response.message
        );
        let message = response.message["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert!(
            message.contains("No such file or directory (os error 2)"),
            "{method}: the reason is given: {message}"
        );
        assert_eq!(
            message.matches("os error").count(),
            1,
            "{method}: the OS error once: {message}"
        );
        assert!(
            !message.contains(&home_path) && !message.contains("/threads"),
            "{method}: no server path: {message}"
        );
    }
    client.close().await;
    let finished = server.shutdown().await;
    // The server's log keeps the path.
    assert!(
        finished
            .stderr()
            .iter()
            .any(|line| line.contains(&home_path) && line.contains("os error 2")),
        "the log names the path:\n{}",
        finished.stderr().join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_request_with_an_origin_header_is_refused_with_403() {
    let server = support::Server::start(Transport::WebSocket).await;
    let mut stream = TcpStream::connect(server.ws_addr())
        .await
        .expect("tcp connect");
    let request = format!(
        "GET / HTTP/1.1\r\nHost: {}\r\nOrigin: http://example.invalid\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n\r\n",
        server.ws_addr()
    );
    stream
        .write_all(request.as_bytes())
        .await
        .expect("send handshake");
    let mut response = String::new();
    tokio::time::timeout(TIMEOUT, stream.read_to_string(&mut response))
        .await
        .expect("the server answered in time")
        .expect("read response");
    assert!(
        response.starts_with("HTTP/1.1 403"),
        "browser pages must not drive a local server: {response}"
    );
    drop(server.shutdown().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsampled_carrier_is_honoured_and_its_request_is_not_recorded() {
    let mut server = support::Server::start(Transport::Stdio).await;
    let mut client = server.connect().await;
    client.initialize("edges", "1").await;
    let parent = support::TraceContext::random();
    let unsampled = json!({"traceparent": format!("00-{}-{}-00", parent.trace_id, parent.span_id)});
    let quiet = client
        .request("model/list", json!({}), Some(unsampled))
        .await;
    quiet.result();
    let sampled = client
        .request("model/list", json!({}), Some(parent.carrier()))
        .await;
    sampled.result();
    client.close().await;
    let finished = server.shutdown().await;
    assert!(
        finished.spans_for_request(&quiet.id_str()).is_empty(),
        "a request whose client did not sample must not be recorded:\n{}",
        finished.dump()
    );
    assert_eq!(
        finished.request_span(&sampled.id_str()).trace_id,
        parent.trace_id
    );
}

/// Sends `frame` as the first frame of a fresh WebSocket connection and
/// returns the close frame the server answers with.
async fn close_after_frame(
    frame: tokio_tungstenite::tungstenite::protocol::frame::Frame,
) -> tokio_tungstenite::tungstenite::protocol::CloseFrame {
    let server = support::Server::start(Transport::WebSocket).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(server.ws_url())
        .await
        .expect("websocket connect");
    ws.send(Message::Frame(frame)).await.expect("send frame");
    let mut close = None;
    let drained = tokio::time::timeout(TIMEOUT, async {
        while let Some(Ok(message)) = ws.next().await {
            if let Message::Close(frame) = message {
                close = frame;
                break;
            }
        }
    })
    .await;
    assert!(drained.is_ok(), "the server did not close");
    drop(server.shutdown().await);
    close.expect("a close frame with a code")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_text_frame_that_is_not_utf8_is_closed_with_1007() {
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
    let frame = Frame::message(
        b"{\"id\":1,\"method\":\"\xff\xfe\"}".to_vec(),
        OpCode::Data(Data::Text),
        true,
    );
    let close = close_after_frame(frame).await;
    assert_eq!(close.code, CloseCode::Invalid, "{close:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_frame_with_reserved_bits_is_closed_with_1002() {
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
    let mut frame = Frame::message(b"{}".to_vec(), OpCode::Data(Data::Text), true);
    frame.header_mut().rsv1 = true;
    let close = close_after_frame(frame).await;
    assert_eq!(close.code, CloseCode::Protocol, "{close:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_frame_with_a_reserved_opcode_is_closed_with_1002() {
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
    let frame = Frame::message(b"{}".to_vec(), OpCode::Data(Data::Reserved(3)), true);
    let close = close_after_frame(frame).await;
    assert_eq!(close.code, CloseCode::Protocol, "{close:?}");
}
