//! Streaming long turns: a client that keeps reading receives every
//! notification, in order, however fast the model streams; a client that
//! stops reading is ended by the stall timeout without holding back the
//! other clients of the same thread.

#[macro_use]
mod support;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpSocket;
use tokio_tungstenite::tungstenite::Message;

use support::{ServerOptions, TIMEOUT, Transport, notification_turn_id};

/// `n` distinct words: what the echo model streams back, one delta each.
fn words(n: usize) -> String {
    (0..n)
        .map(|i| format!("w{i}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Concatenates the `item/agentMessage/delta` texts of `turn_id`, in order.
fn deltas_of(notifications: &[Value], turn_id: &str) -> String {
    notifications
        .iter()
        .filter(|n| {
            n["method"] == "item/agentMessage/delta" && notification_turn_id(n) == Some(turn_id)
        })
        .map(|n| n["params"]["delta"].as_str().expect("delta text"))
        .collect()
}

async fn a_long_turn_reaches_a_reading_client_complete_and_in_order(transport: Transport) {
    const WORDS: usize = 20_000;
    let mut server = support::Server::start(transport).await;
    let mut client = server.connect().await;
    client.initialize("streaming", "1").await;
    let thread_id = client.start_thread().await;
    let input = words(WORDS);
    let turn_id = client.start_turn(&thread_id, &input, None).await.turn_id();

    let completed = client.wait_for_turn_completed(&turn_id).await;
    assert_eq!(
        completed["params"]["turn"]["status"], "completed",
        "{completed}"
    );
    let notifications = client.take_notifications(|_| true);
    assert_eq!(
        deltas_of(&notifications, &turn_id),
        input,
        "the deltas, in order, are the whole answer"
    );
    let item = notifications
        .iter()
        .find(|n| {
            n["method"] == "item/completed"
                && notification_turn_id(n) == Some(&turn_id)
                && n["params"]["item"]["type"] == "agentMessage"
        })
        .expect("item/completed of the answer");
    assert_eq!(item["params"]["item"]["text"], input.as_str());

    // The connection is still open and served.
    client.request("model/list", json!({}), None).await.result();
    client.close().await;
    drop(server.shutdown().await);
}

both_transports!(a_long_turn_reaches_a_reading_client_complete_and_in_order);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_ended_after_the_stall_timeout_while_another_gets_everything()
 {
    // Far more notification text than the socket buffers of a client with
    // a small receive window hold, so the server's writes to it stall.
    const WORDS: usize = 300_000;
    let options = ServerOptions::default()
        .arg("--client-stall-timeout")
        .arg("2");
    let mut server = support::Server::start_with(Transport::WebSocket, options).await;
    let mut reader = server.connect().await;
    reader.initialize("reader", "1").await;
    let thread_id = reader.start_thread().await;

    // The stalled client: a small receive buffer, subscribed to the thread,
    // then never reads again.
    let socket = TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let stream = socket
        .connect(server.ws_addr().parse().expect("address"))
        .await
        .expect("connect");
    let (mut stalled, _) = tokio_tungstenite::client_async(server.ws_url(), stream)
        .await
        .expect("websocket handshake");
    for (id, method, params) in [
        (
            1,
            "initialize",
            json!({"clientInfo": {"name": "stalled", "version": "1"}}),
        ),
        (2, "thread/resume", json!({"threadId": thread_id})),
    ] {
        stalled
            .send(Message::text(
                json!({"id": id, "method": method, "params": params}).to_string(),
            ))
            .await
            .expect("send");
        tokio::time::timeout(TIMEOUT, async {
            while let Some(Ok(message)) = stalled.next().await {
                if let Message::Text(text) = message {
                    let value: Value = serde_json::from_str(&text).expect("json");
                    if value["id"] == id {
                        assert!(value.get("result").is_some(), "{method}: {value}");
                        return;
                    }
                }
            }
            panic!("connection closed before the response to {method}");
        })
        .await
        .expect("response in time");
    }

    let input = words(WORDS);
    let turn_id = reader.start_turn(&thread_id, &input, None).await.turn_id();
    // The reading client keeps reading while the stalled one is ended: a
    // client that paused for the stall timeout would rightly be ended too.
    let (_, completed) = tokio::join!(
        server.wait_for_stderr(
            |line| line.contains("client stopped reading; ending the connection connection=2")
        ),
        reader.wait_for_turn_completed(&turn_id),
    );

    // The reading client gets the whole answer, in order.
    assert_eq!(
        completed["params"]["turn"]["status"], "completed",
        "{completed}"
    );
    let notifications = reader.take_notifications(|_| true);
    assert_eq!(deltas_of(&notifications, &turn_id), input);

    // The stalled client's connection was ended: once it reads again, what
    // was buffered drains and the connection ends.
    let ended = tokio::time::timeout(TIMEOUT, async {
        while let Some(Ok(_)) = stalled.next().await {}
    })
    .await;
    assert!(ended.is_ok(), "the stalled client's connection stayed open");

    reader.request("model/list", json!({}), None).await.result();
    reader.close().await;
    drop(server.shutdown().await);
}
