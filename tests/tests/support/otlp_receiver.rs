//! An in-test OTLP/HTTP receiver: speaks just enough HTTP/1.1 to accept
//! `POST /v1/metrics` and `POST /v1/traces` (bodies framed by
//! `Content-Length`, keep-alive honoured), answers `200` with an empty
//! protobuf body, and keeps every body. A body is stored before it is
//! answered, so once the exporting process has exited everything is in.
//! [`Receiver::start_refusing_metrics`] answers `405` on `/v1/metrics`, as
//! Phoenix does.

use std::sync::{Arc, Mutex};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message as _;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// One request the receiver accepted.
#[derive(Debug)]
pub struct Received {
    /// The request method.
    pub method: String,
    /// The request path (with ` -> status` when it was refused).
    pub path: String,
    /// The body.
    pub body: Vec<u8>,
    /// The request's header fields, names in lower case.
    pub headers: Vec<(String, String)>,
}

/// The in-test OTLP/HTTP receiver; stops when dropped.
pub struct Receiver {
    /// `http://127.0.0.1:PORT`, for `--otlp-endpoint`.
    pub url: String,
    received: Arc<Mutex<Vec<Received>>>,
    task: JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Receiver {
    /// Listens on a free loopback port.
    pub async fn start() -> Receiver {
        Receiver::listen(false).await
    }

    /// Like [`Receiver::start`], but refuses metrics: a `POST /v1/metrics`
    /// is read and answered `405 Method Not Allowed` (a backend that takes
    /// traces only, like Phoenix), and kept as `/v1/metrics -> 405 ...`.
    pub async fn start_refusing_metrics() -> Receiver {
        Receiver::listen(true).await
    }

    async fn listen(refuse_metrics: bool) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the OTLP receiver");
        let addr = listener.local_addr().expect("receiver address");
        let received = Arc::new(Mutex::new(Vec::new()));
        let store = Arc::clone(&received);
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let store = Arc::clone(&store);
                tokio::spawn(async move {
                    if let Err(err) = serve_connection(stream, store, refuse_metrics).await {
                        eprintln!("OTLP receiver: connection failed: {err}");
                    }
                });
            }
        });
        Receiver {
            url: format!("http://{addr}"),
            received,
            task,
        }
    }

    /// The bodies received on `path`.
    pub fn bodies(&self, path: &str) -> Vec<Vec<u8>> {
        self.received
            .lock()
            .expect("receiver lock")
            .iter()
            .filter(|r| r.path == path)
            .map(|r| r.body.clone())
            .collect()
    }

    /// The `/v1/traces` bodies decoded as OTLP export requests; panics on a
    /// body that is not one.
    pub fn trace_requests(&self) -> Vec<ExportTraceServiceRequest> {
        self.bodies("/v1/traces")
            .iter()
            .map(|body| {
                ExportTraceServiceRequest::decode(body.as_slice())
                    .unwrap_or_else(|e| panic!("a /v1/traces body is not an OTLP request: {e}"))
            })
            .collect()
    }

    /// The header fields of every request received on `path`.
    pub fn headers(&self, path: &str) -> Vec<Vec<(String, String)>> {
        self.received
            .lock()
            .expect("receiver lock")
            .iter()
            .filter(|r| r.path == path)
            .map(|r| r.headers.clone())
            .collect()
    }

    /// How many requests were received on `path` (refused ones under
    /// `path -> status`).
    pub fn count(&self, path: &str) -> usize {
        self.received
            .lock()
            .expect("receiver lock")
            .iter()
            .filter(|r| r.path == path)
            .count()
    }

    /// `METHOD path` of every request, for failure messages.
    pub fn summary(&self) -> Vec<String> {
        self.received
            .lock()
            .expect("receiver lock")
            .iter()
            .map(|r| format!("{} {} ({} bytes)", r.method, r.path, r.body.len()))
            .collect()
    }
}

/// Serves HTTP/1.1 requests on one connection until the client closes it.
async fn serve_connection(
    stream: TcpStream,
    store: Arc<Mutex<Vec<Received>>>,
    refuse_metrics: bool,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream);
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).await? == 0 {
            return Ok(());
        }
        let request_line = request_line.trim_end();
        if request_line.is_empty() {
            continue;
        }
        let mut parts = request_line.split_whitespace();
        let method = parts.next().unwrap_or_default().to_owned();
        let path = parts.next().unwrap_or_default().to_owned();

        let mut content_length = None;
        let mut framed_otherwise = false;
        let mut headers = Vec::new();
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).await? == 0 {
                return Ok(());
            }
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                let name = name.trim();
                headers.push((name.to_ascii_lowercase(), value.trim().to_owned()));
                if name.eq_ignore_ascii_case("content-length") {
                    content_length = value.trim().parse::<usize>().ok();
                } else if name.eq_ignore_ascii_case("transfer-encoding") {
                    framed_otherwise = true;
                }
            }
        }

        let status = match (method.as_str(), content_length, framed_otherwise) {
            (_, _, true) => "501 Not Implemented",
            ("POST", Some(length), false) => {
                let mut body = vec![0; length];
                reader.read_exact(&mut body).await?;
                if refuse_metrics && path == "/v1/metrics" {
                    // Read, so the connection stays usable; kept below.
                    "405 Method Not Allowed"
                } else {
                    let known = path == "/v1/metrics" || path == "/v1/traces";
                    store.lock().expect("receiver lock").push(Received {
                        method: method.clone(),
                        path: path.clone(),
                        body,
                        headers: headers.clone(),
                    });
                    if known { "200 OK" } else { "404 Not Found" }
                }
            }
            ("POST", None, false) => "411 Length Required",
            _ => "405 Method Not Allowed",
        };
        if !status.starts_with("200") {
            store.lock().expect("receiver lock").push(Received {
                method: method.clone(),
                path: format!("{path} -> {status}"),
                body: Vec::new(),
                headers,
            });
        }
        let response = format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n"
        );
        let stream = reader.get_mut();
        stream.write_all(response.as_bytes()).await?;
        stream.flush().await?;
        let body_read = status.starts_with("200")
            || status.starts_with("404")
            || (refuse_metrics && path == "/v1/metrics" && content_length.is_some());
        if !body_read {
            // The body was not read: the connection cannot be reused.
            return Ok(());
        }
    }
}
