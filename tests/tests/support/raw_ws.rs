//! WebSocket by hand over a plain TCP stream, for what a WebSocket library
//! will not do: half-close the TCP stream after a frame, stay deaf to the
//! server's pings, send frames a library refuses to build (a text frame
//! that is not UTF-8), or read the raw HTTP answer to a bad upgrade.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{TIMEOUT, random_u64};

/// Frame opcodes (RFC 6455 section 5.2).
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// One frame from the server.
#[derive(Debug, Clone)]
pub struct Frame {
    pub opcode: u8,
    pub payload: Vec<u8>,
}

impl Frame {
    /// The payload of a text frame as a string (lossy for bad UTF-8).
    pub fn text(&self) -> Option<String> {
        (self.opcode == OP_TEXT).then(|| String::from_utf8_lossy(&self.payload).into_owned())
    }

    /// The status code of a close frame, if it carries one.
    pub fn close_code(&self) -> Option<u16> {
        match (self.opcode, self.payload.as_slice()) {
            (OP_CLOSE, [hi, lo, ..]) => Some(u16::from_be_bytes([*hi, *lo])),
            _ => None,
        }
    }
}

/// A WebSocket upgrade request for `addr` with `extra` header lines (each
/// ending in CRLF) after the standard ones.
pub fn upgrade_request(addr: &str, extra: &str) -> String {
    format!(
        "GET / HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
}

/// Sends `request` bytes on a fresh connection and returns everything the
/// server sends until it closes (or resets) the connection.
pub async fn http_exchange(addr: &str, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    // The server may answer before reading all of a large request: a
    // failed write is the server's business, the answer is what counts.
    let _ = stream.write_all(request).await;
    let mut response = Vec::new();
    let mut chunk = [0u8; 4096];
    let finished = tokio::time::timeout(TIMEOUT, async {
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => response.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    assert!(
        finished.is_ok(),
        "the server neither answered nor closed within {TIMEOUT:?}; got so far: {:?}",
        String::from_utf8_lossy(&response)
    );
    String::from_utf8_lossy(&response).into_owned()
}

/// An upgraded connection driven byte by byte.
pub struct RawWs {
    stream: TcpStream,
    /// Bytes received and not yet parsed into frames.
    pending: Vec<u8>,
}

impl RawWs {
    /// Connects to `addr` (`IP:PORT`) and upgrades; panics unless the
    /// server answers `101`.
    pub async fn open(addr: &str) -> RawWs {
        let mut stream = tokio::time::timeout(TIMEOUT, TcpStream::connect(addr))
            .await
            .expect("connect in time")
            .expect("connect");
        stream
            .write_all(upgrade_request(addr, "").as_bytes())
            .await
            .expect("send the upgrade request");
        let mut received = Vec::new();
        let mut chunk = [0u8; 1024];
        let head_end = tokio::time::timeout(TIMEOUT, async {
            loop {
                if let Some(pos) = received.windows(4).position(|w| w == b"\r\n\r\n") {
                    return pos + 4;
                }
                let n = stream
                    .read(&mut chunk)
                    .await
                    .expect("read the upgrade answer");
                assert!(
                    n > 0,
                    "closed during the upgrade: {:?}",
                    String::from_utf8_lossy(&received)
                );
                received.extend_from_slice(&chunk[..n]);
            }
        })
        .await
        .expect("the upgrade was answered in time");
        assert!(
            received.starts_with(b"HTTP/1.1 101"),
            "upgrade refused: {:?}",
            String::from_utf8_lossy(&received)
        );
        RawWs {
            stream,
            pending: received.split_off(head_end),
        }
    }

    /// Sends one final, masked frame (as a client must).
    pub async fn send_frame(&mut self, opcode: u8, payload: &[u8]) {
        self.stream
            .write_all(&client_frame(opcode, payload))
            .await
            .expect("send a frame");
    }

    /// Sends `bytes` as they are (a piece of a frame, say).
    pub async fn send_bytes(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("send bytes");
    }

    /// Sends a text frame.
    pub async fn send_text(&mut self, text: &str) {
        self.send_frame(OP_TEXT, text.as_bytes()).await;
    }

    /// Half-closes the connection: the server reads EOF, the client can
    /// still read.
    pub async fn shutdown_write(&mut self) {
        self.stream.shutdown().await.expect("shutdown(Write)");
    }

    /// The next frame; `None` once the server closed (or reset) the TCP
    /// connection. Panics when nothing happens within `limit`.
    pub async fn next_frame_within(&mut self, limit: Duration) -> Option<Frame> {
        tokio::time::timeout(limit, async {
            loop {
                if let Some(frame) = self.parse_pending() {
                    return Some(frame);
                }
                let mut chunk = [0u8; 4096];
                match self.stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return None,
                    Ok(n) => self.pending.extend_from_slice(&chunk[..n]),
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("neither a frame nor the end of the connection in {limit:?}"))
    }

    /// [`RawWs::next_frame_within`] [`TIMEOUT`].
    pub async fn next_frame(&mut self) -> Option<Frame> {
        self.next_frame_within(TIMEOUT).await
    }

    /// Every frame until the server ends the TCP connection.
    pub async fn frames_until_closed(&mut self) -> Vec<Frame> {
        let mut frames = Vec::new();
        while let Some(frame) = self.next_frame().await {
            frames.push(frame);
        }
        frames
    }

    /// One complete frame off the front of `pending`, if there is one.
    fn parse_pending(&mut self) -> Option<Frame> {
        let bytes = &self.pending;
        if bytes.len() < 2 {
            return None;
        }
        let opcode = bytes[0] & 0x0F;
        let masked = bytes[1] & 0x80 != 0;
        let (len, mut at) = match bytes[1] & 0x7F {
            126 => {
                let ext = bytes.get(2..4)?;
                (u64::from(u16::from_be_bytes([ext[0], ext[1]])), 4)
            }
            127 => {
                let ext: [u8; 8] = bytes.get(2..10)?.try_into().expect("8 bytes");
                (u64::from_be_bytes(ext), 10)
            }
            short => (u64::from(short), 2),
        };
        let mask = if masked {
            let key: [u8; 4] = bytes.get(at..at + 4)?.try_into().expect("4 bytes");
            at += 4;
            Some(key)
        } else {
            None
        };
        let len = usize::try_from(len).expect("frame length fits usize");
        let mut payload = bytes.get(at..at + len)?.to_vec();
        if let Some(key) = mask {
            for (i, b) in payload.iter_mut().enumerate() {
                *b ^= key[i % 4];
            }
        }
        self.pending.drain(..at + len);
        Some(Frame { opcode, payload })
    }
}

/// A final client frame: FIN set, payload masked with a random key.
pub fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(payload.len() + 14);
    frame.push(0x80 | opcode);
    match payload.len() {
        n if n < 126 => frame.push(0x80 | n as u8),
        n if n <= usize::from(u16::MAX) => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    let key = (random_u64() as u32).to_be_bytes();
    frame.extend_from_slice(&key);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    frame
}
