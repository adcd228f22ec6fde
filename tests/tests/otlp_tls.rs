//! OTLP export over TLS, end to end against the real `skein` binary.
//!
//! Each test makes a CA and the certificates it signs with rcgen at test
//! time and runs an in-test OTLP receiver behind rustls: for
//! `http/protobuf` a small HTTP/1.1 receiver of `POST /v1/traces` and
//! `/v1/metrics`; for `grpc` tonic serving opentelemetry-proto's generated
//! trace and metrics services over HTTP/2. The receiver keeps every export
//! it accepted and the error of every TLS handshake it refused. Tests wait
//! on those with generous timeouts, or on the server's exit, after which
//! its final exports (metrics are exported once more at shutdown) are in.

mod support;

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value;
use prost::Message as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::json;
use tokio::io::{
    AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, ReadBuf,
};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tonic::codegen::{BoxFuture, Service, http};

use support::{
    Finished, SPAN_KIND_SERVER, Server, ServerOptions, SkeinHome, TIMEOUT, Transport, serve_refused,
};

/// The request whose span every export test looks for.
const METHOD: &str = "model/list";
/// The metric every request records.
const RPC_DURATION: &str = "rpc.server.call.duration";

// ---------------------------------------------------------------------------
// Certificates

/// Files and DER of a test PKI: a CA, a server certificate it signed for
/// `127.0.0.1` and `localhost`, a client certificate it signed, and a
/// second CA that signed nothing the receivers present.
struct Pki {
    _dir: tempfile::TempDir,
    ca_file: PathBuf,
    other_ca_file: PathBuf,
    client_cert_file: PathBuf,
    client_key_file: PathBuf,
    ca_der: CertificateDer<'static>,
    server_chain: Vec<CertificateDer<'static>>,
    server_key_der: Vec<u8>,
}

fn ca(name: &str) -> (rcgen::Issuer<'static, rcgen::KeyPair>, rcgen::Certificate) {
    let key = rcgen::KeyPair::generate().expect("CA key");
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let cert = params.self_signed(&key).expect("CA certificate");
    (rcgen::Issuer::new(params, key), cert)
}

fn leaf(
    issuer: &rcgen::Issuer<'static, rcgen::KeyPair>,
    names: &[&str],
    usage: rcgen::ExtendedKeyUsagePurpose,
) -> (rcgen::Certificate, rcgen::KeyPair) {
    let key = rcgen::KeyPair::generate().expect("leaf key");
    let mut params =
        rcgen::CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())
            .expect("leaf params");
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, names[0]);
    params.extended_key_usages = vec![usage];
    let cert = params.signed_by(&key, issuer).expect("leaf certificate");
    (cert, key)
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().expect("PKI directory");
        let (issuer, ca_cert) = ca("Skein test CA");
        let (_, other_ca_cert) = ca("Another test CA");
        let (server_cert, server_key) = leaf(
            &issuer,
            &["127.0.0.1", "localhost"],
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        );
        let (client_cert, client_key) = leaf(
            &issuer,
            &["skein-client"],
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        );
        let write = |name: &str, contents: String| {
            let path = dir.path().join(name);
            std::fs::write(&path, contents).expect("write PKI file");
            path
        };
        Pki {
            ca_file: write("ca.pem", ca_cert.pem()),
            other_ca_file: write("other-ca.pem", other_ca_cert.pem()),
            client_cert_file: write("client.pem", client_cert.pem()),
            client_key_file: write("client.key", client_key.serialize_pem()),
            ca_der: ca_cert.der().clone(),
            server_chain: vec![server_cert.der().clone()],
            server_key_der: server_key.serialize_der(),
            _dir: dir,
        }
    }

    /// A rustls acceptor presenting the server certificate, with ALPN for
    /// `wire`; with `require_client_certificate`, handshakes without a
    /// client certificate the CA signed fail.
    fn acceptor(&self, wire: Wire, require_client_certificate: bool) -> tokio_rustls::TlsAcceptor {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .expect("TLS versions");
        let builder = if require_client_certificate {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(self.ca_der.clone()).expect("CA as trust anchor");
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .expect("client certificate verifier");
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.server_key_der.clone()));
        let mut config = builder
            .with_single_cert(self.server_chain.clone(), key)
            .expect("server certificate and key");
        config.alpn_protocols = vec![match wire {
            Wire::Http => b"http/1.1".to_vec(),
            Wire::Grpc => b"h2".to_vec(),
        }];
        tokio_rustls::TlsAcceptor::from(Arc::new(config))
    }
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("temporary paths are UTF-8")
}

// ---------------------------------------------------------------------------
// The receiver

/// The OTLP protocol a receiver speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Wire {
    /// `http/protobuf`: HTTP/1.1 `POST /v1/traces` and `/v1/metrics`.
    Http,
    /// `grpc`: the collector services over HTTP/2.
    Grpc,
}

impl Wire {
    fn protocol(self) -> &'static str {
        match self {
            Wire::Http => "http/protobuf",
            Wire::Grpc => "grpc",
        }
    }
}

/// How a receiver's socket is secured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Security {
    Plaintext,
    Tls,
    /// TLS that requires a client certificate signed by the test CA.
    MutualTls,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Signal {
    Traces,
    Metrics,
}

/// One export request the receiver accepted: its protobuf body.
#[derive(Clone, Debug)]
struct Export {
    signal: Signal,
    body: Vec<u8>,
}

/// Where accepted exports go.
#[derive(Clone)]
struct Sink(Arc<watch::Sender<Vec<Export>>>);

impl Sink {
    fn push(&self, signal: Signal, body: Vec<u8>) {
        self.0.send_modify(|all| all.push(Export { signal, body }));
    }
}

/// An in-test OTLP receiver on a loopback port.
struct Receiver {
    port: u16,
    exports: watch::Receiver<Vec<Export>>,
    /// The error of each TLS handshake the receiver refused.
    refused: watch::Receiver<Vec<String>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Receiver {
    async fn start(wire: Wire, security: Security, pki: &Pki) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the OTLP receiver");
        let port = listener.local_addr().expect("receiver address").port();
        let (exports_tx, exports) = watch::channel(Vec::new());
        let sink = Sink(Arc::new(exports_tx));
        let (refused_tx, refused) = watch::channel(Vec::new());
        let refused_tx = Arc::new(refused_tx);
        let acceptor = match security {
            Security::Plaintext => None,
            Security::Tls => Some(pki.acceptor(wire, false)),
            Security::MutualTls => Some(pki.acceptor(wire, true)),
        };
        let mut tasks = Vec::new();
        let grpc_connections = match wire {
            Wire::Http => None,
            Wire::Grpc => {
                let (tx, rx) = mpsc::unbounded_channel();
                tasks.push(tokio::spawn(serve_grpc(rx, sink.clone())));
                Some(tx)
            }
        };
        tasks.push(tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let refused_tx = Arc::clone(&refused_tx);
                let grpc_connections = grpc_connections.clone();
                let sink = sink.clone();
                tokio::spawn(async move {
                    let conn = match acceptor {
                        None => Conn(Box::new(tcp)),
                        Some(acceptor) => match acceptor.accept(tcp).await {
                            Ok(tls) => Conn(Box::new(tls)),
                            Err(err) => {
                                refused_tx.send_modify(|all| all.push(err.to_string()));
                                return;
                            }
                        },
                    };
                    match grpc_connections {
                        Some(tx) => {
                            let _ = tx.send(conn);
                        }
                        None => {
                            if let Err(err) = serve_http(conn, sink).await {
                                eprintln!("OTLP receiver: HTTP connection failed: {err}");
                            }
                        }
                    }
                });
            }
        }));
        Receiver {
            port,
            exports,
            refused,
            tasks,
        }
    }

    fn https_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    fn bodies(&self, signal: Signal) -> Vec<Vec<u8>> {
        self.exports
            .borrow()
            .iter()
            .filter(|e| e.signal == signal)
            .map(|e| e.body.clone())
            .collect()
    }

    fn summary(&self) -> String {
        let exports: Vec<String> = self
            .exports
            .borrow()
            .iter()
            .map(|e| format!("{:?} ({} bytes)", e.signal, e.body.len()))
            .collect();
        format!(
            "exports: {exports:?}; refused handshakes: {:?}",
            self.refused.borrow()
        )
    }

    /// Waits until the span of the `METHOD` request with `request_id` has
    /// been exported to this receiver.
    async fn wait_for_request_span(&mut self, request_id: &str) {
        let arrived = tokio::time::timeout(
            TIMEOUT,
            self.exports
                .wait_for(|all| has_request_span(all, request_id)),
        )
        .await
        .is_ok_and(|r| r.is_ok());
        assert!(
            arrived,
            "the span of request {request_id} did not reach the receiver within {TIMEOUT:?}; {}",
            self.summary()
        );
    }

    /// Waits until the receiver has refused a TLS handshake; returns the
    /// errors so far.
    async fn wait_for_refusal(&mut self) -> Vec<String> {
        let refused =
            tokio::time::timeout(TIMEOUT, self.refused.wait_for(|all| !all.is_empty())).await;
        assert!(
            refused.is_ok_and(|r| r.is_ok()),
            "no TLS handshake was refused within {TIMEOUT:?}; {}",
            self.summary()
        );
        self.refused.borrow().clone()
    }

    /// The names of every metric exported to this receiver.
    fn metric_names(&self) -> Vec<String> {
        self.bodies(Signal::Metrics)
            .iter()
            .flat_map(|body| {
                ExportMetricsServiceRequest::decode(body.as_slice())
                    .unwrap_or_else(|e| panic!("a metrics export is not an OTLP request: {e}"))
                    .resource_metrics
            })
            .flat_map(|r| r.scope_metrics)
            .flat_map(|s| s.metrics)
            .map(|m| m.name)
            .collect()
    }
}

/// Whether a traces export holds the SERVER span of the `METHOD` request
/// with `rpc.request_id` = `request_id`.
fn has_request_span(exports: &[Export], request_id: &str) -> bool {
    exports
        .iter()
        .filter(|e| e.signal == Signal::Traces)
        .filter_map(|e| ExportTraceServiceRequest::decode(e.body.as_slice()).ok())
        .flat_map(|r| r.resource_spans)
        .flat_map(|r| r.scope_spans)
        .flat_map(|s| s.spans)
        .any(|span| {
            span.name == METHOD
                && i64::from(span.kind) == SPAN_KIND_SERVER
                && span.attributes.iter().any(|kv| {
                    kv.key == "rpc.request_id"
                        && match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                            Some(any_value::Value::StringValue(s)) => s == request_id,
                            Some(any_value::Value::IntValue(i)) => i.to_string() == request_id,
                            _ => false,
                        }
                })
        })
}

/// A connection the receiver accepted, plain or TLS, as one type.
struct Conn(Box<dyn Io>);

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut *self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.0).poll_shutdown(cx)
    }
}

impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = ();

    fn connect_info(&self) {}
}

/// Serves HTTP/1.1 export requests on one connection until the client
/// closes it: bodies framed by `Content-Length`, `200` with an empty body
/// for `/v1/traces` and `/v1/metrics` (stored first), `404` otherwise.
async fn serve_http(conn: Conn, sink: Sink) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn);
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).await? == 0 {
            return Ok(());
        }
        let path = request_line
            .split_whitespace()
            .nth(1)
            .unwrap_or_default()
            .to_owned();
        let mut content_length = 0;
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).await? == 0 {
                return Ok(());
            }
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':')
                && name.trim().eq_ignore_ascii_case("content-length")
            {
                content_length = value.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0; content_length];
        reader.read_exact(&mut body).await?;
        let status = match path.as_str() {
            "/v1/traces" => {
                sink.push(Signal::Traces, body);
                "200 OK"
            }
            "/v1/metrics" => {
                sink.push(Signal::Metrics, body);
                "200 OK"
            }
            _ => "404 Not Found",
        };
        let response = format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n"
        );
        let stream = reader.get_mut();
        stream.write_all(response.as_bytes()).await?;
        stream.flush().await?;
    }
}

#[tonic::async_trait]
impl TraceService for Sink {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.push(Signal::Traces, request.into_inner().encode_to_vec());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl MetricsService for Sink {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        self.push(Signal::Metrics, request.into_inner().encode_to_vec());
        Ok(tonic::Response::new(ExportMetricsServiceResponse::default()))
    }
}

/// Both collector services behind one gRPC server, routed by path.
#[derive(Clone)]
struct Collector {
    traces: TraceServiceServer<Sink>,
    metrics: MetricsServiceServer<Sink>,
}

impl Service<http::Request<tonic::body::Body>> for Collector {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        if request
            .uri()
            .path()
            .starts_with("/opentelemetry.proto.collector.metrics.v1.MetricsService/")
        {
            self.metrics.call(request)
        } else {
            self.traces.call(request)
        }
    }
}

/// Serves gRPC on every connection the accept loop hands over.
async fn serve_grpc(connections: mpsc::UnboundedReceiver<Conn>, sink: Sink) {
    let incoming = futures_util::stream::unfold(connections, |mut connections| async move {
        let conn = connections.recv().await?;
        Some((Ok::<_, std::io::Error>(conn), connections))
    });
    let collector = Collector {
        traces: TraceServiceServer::new(sink.clone()),
        metrics: MetricsServiceServer::new(sink),
    };
    if let Err(err) = tonic::transport::Server::builder()
        .serve_with_incoming(collector, incoming)
        .await
    {
        eprintln!("OTLP receiver: gRPC server failed: {err}");
    }
}

// ---------------------------------------------------------------------------
// Driving `skein`

/// Options exporting with `wire`'s protocol to `endpoint` given by flag.
fn export_to(wire: Wire, endpoint: &str) -> ServerOptions {
    ServerOptions::default()
        .arg("--otlp-endpoint")
        .arg(endpoint)
        .arg("--otlp-protocol")
        .arg(wire.protocol())
}

/// Starts `skein` with `options`, sends `initialize` and one `METHOD`
/// request, waits until its span reaches `receiver`, then shuts the server
/// down (its final metrics export is in once it has exited).
async fn export_a_request(receiver: &mut Receiver, options: ServerOptions) -> Finished {
    let mut server = Server::start_with(Transport::Stdio, options).await;
    let mut client = server.connect().await;
    client.initialize("otlp-tls-e2e", "1.0.0").await;
    let response = client.request(METHOD, json!({}), None).await;
    receiver.wait_for_request_span(&response.id_str()).await;
    server.shutdown().await
}

/// Asserts that the metrics export at shutdown reached `receiver`.
fn assert_metrics_arrived(receiver: &Receiver) {
    let names = receiver.metric_names();
    assert!(
        names.iter().any(|n| n == RPC_DURATION),
        "no {RPC_DURATION} metric reached the receiver; metrics: {names:?}; {}",
        receiver.summary()
    );
}

// ---------------------------------------------------------------------------
// Tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_protobuf_over_https_trusts_the_ca_file_and_delivers_spans_and_metrics() {
    let pki = Pki::new();
    let mut receiver = Receiver::start(Wire::Http, Security::Tls, &pki).await;
    let options = export_to(Wire::Http, &receiver.https_url())
        .env("OTEL_EXPORTER_OTLP_CERTIFICATE", path_str(&pki.ca_file));
    export_a_request(&mut receiver, options).await;
    assert_metrics_arrived(&receiver);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_over_tls_trusts_the_ca_file_and_delivers_spans_and_metrics() {
    let pki = Pki::new();
    let mut receiver = Receiver::start(Wire::Grpc, Security::Tls, &pki).await;
    let options = export_to(Wire::Grpc, &receiver.https_url())
        .env("OTEL_EXPORTER_OTLP_CERTIFICATE", path_str(&pki.ca_file));
    export_a_request(&mut receiver, options).await;
    assert_metrics_arrived(&receiver);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_ca_file_https_export_trusts_the_system_store() {
    let pki = Pki::new();
    for wire in [Wire::Http, Wire::Grpc] {
        let mut receiver = Receiver::start(wire, Security::Tls, &pki).await;
        // rustls-native-certs (behind both reqwest's platform verifier and
        // tonic's native roots) reads the system store from SSL_CERT_FILE
        // when it is set.
        let options =
            export_to(wire, &receiver.https_url()).env("SSL_CERT_FILE", path_str(&pki.ca_file));
        export_a_request(&mut receiver, options).await;
        assert_metrics_arrived(&receiver);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signal_specific_ca_files_win_over_the_generic_one() {
    let pki = Pki::new();
    for wire in [Wire::Http, Wire::Grpc] {
        let mut receiver = Receiver::start(wire, Security::Tls, &pki).await;
        // The generic CA did not sign the receiver's certificate: only the
        // signal-specific files make export work.
        let options = export_to(wire, &receiver.https_url())
            .env(
                "OTEL_EXPORTER_OTLP_CERTIFICATE",
                path_str(&pki.other_ca_file),
            )
            .env(
                "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE",
                path_str(&pki.ca_file),
            )
            .env(
                "OTEL_EXPORTER_OTLP_METRICS_CERTIFICATE",
                path_str(&pki.ca_file),
            );
        export_a_request(&mut receiver, options).await;
        assert_metrics_arrived(&receiver);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_endpoint_without_scheme_uses_tls_unless_insecure_is_true() {
    let pki = Pki::new();

    let mut tls = Receiver::start(Wire::Grpc, Security::Tls, &pki).await;
    let options = ServerOptions::default()
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
        .env(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            &format!("127.0.0.1:{}", tls.port),
        )
        .env("OTEL_EXPORTER_OTLP_CERTIFICATE", path_str(&pki.ca_file));
    export_a_request(&mut tls, options).await;

    let mut plain = Receiver::start(Wire::Grpc, Security::Plaintext, &pki).await;
    let options = ServerOptions::default()
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
        .env(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            &format!("127.0.0.1:{}", plain.port),
        )
        .env("OTEL_EXPORTER_OTLP_INSECURE", "true");
    export_a_request(&mut plain, options).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_with_a_client_certificate_delivers_over_http_and_grpc() {
    let pki = Pki::new();
    for wire in [Wire::Http, Wire::Grpc] {
        let mut receiver = Receiver::start(wire, Security::MutualTls, &pki).await;
        let options = export_to(wire, &receiver.https_url())
            .env("OTEL_EXPORTER_OTLP_CERTIFICATE", path_str(&pki.ca_file))
            .env(
                "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",
                path_str(&pki.client_cert_file),
            )
            .env(
                "OTEL_EXPORTER_OTLP_CLIENT_KEY",
                path_str(&pki.client_key_file),
            );
        export_a_request(&mut receiver, options).await;
        assert_metrics_arrived(&receiver);
        assert!(
            receiver.refused.borrow().is_empty(),
            "{wire:?}: handshakes were refused: {}",
            receiver.summary()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_refuses_export_without_a_client_certificate_and_keeps_serving() {
    let pki = Pki::new();
    let mut receiver = Receiver::start(Wire::Http, Security::MutualTls, &pki).await;
    let trusting = export_to(Wire::Http, &receiver.https_url())
        .env("OTEL_EXPORTER_OTLP_CERTIFICATE", path_str(&pki.ca_file))
        // Keep the failing exports' retries and the shutdown short.
        .env("OTEL_EXPORTER_OTLP_TIMEOUT", "2000")
        .arg("--shutdown-timeout")
        .arg("2");

    let mut server = Server::start_with(Transport::Stdio, trusting.clone()).await;
    let mut client = server.connect().await;
    client.initialize("otlp-tls-e2e", "1.0.0").await;
    client.request(METHOD, json!({}), None).await.result();
    let refusals = receiver.wait_for_refusal().await;
    assert!(
        refusals.iter().any(|e| e.contains("certificate")),
        "the handshake should fail for want of a client certificate: {refusals:?}"
    );
    let finished = server.shutdown().await;
    assert!(
        receiver.exports.borrow().is_empty(),
        "nothing may be accepted without a client certificate; {}",
        receiver.summary()
    );
    assert!(
        finished.stderr().iter().any(|line| {
            line.contains("spans were dropped") && line.contains("pipeline=\"otlp\"")
        }),
        "the lost spans should be reported: {:#?}",
        finished.stderr()
    );

    // The same receiver accepts a client that presents its certificate.
    let with_certificate = trusting
        .env(
            "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",
            path_str(&pki.client_cert_file),
        )
        .env(
            "OTEL_EXPORTER_OTLP_CLIENT_KEY",
            path_str(&pki.client_key_file),
        );
    export_a_request(&mut receiver, with_certificate).await;
}

/// Runs `skein serve` exporting over `protocol` to an `https://` endpoint
/// with `env`, expecting it to refuse to start; returns its stderr.
async fn refused_start(protocol: &str, env: &[(&str, &str)]) -> String {
    let args = [
        "--otlp-endpoint",
        "https://127.0.0.1:9",
        "--otlp-protocol",
        protocol,
    ];
    serve_refused(SkeinHome::new().path(), &args, env).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unusable_endpoint_headers_or_timeout_variable_stops_startup_naming_it() {
    for protocol in ["http/protobuf", "grpc"] {
        let with = |var: &'static str, value: &'static str| {
            [
                ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol),
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9"),
                (var, value),
            ]
        };
        for (env, expected) in [
            (
                with("OTEL_EXPORTER_OTLP_ENDPOINT", "ftp://127.0.0.1:21"),
                "OTEL_EXPORTER_OTLP_ENDPOINT=\"ftp://127.0.0.1:21\": an OTLP endpoint must be an http:// or https:// URL",
            ),
            (
                with(
                    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                    "unix:///tmp/otlp.sock",
                ),
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=\"unix:///tmp/otlp.sock\": an OTLP endpoint must be",
            ),
            (
                with(
                    "OTEL_EXPORTER_OTLP_HEADERS",
                    "api-key=s3cret,no-equals-sign",
                ),
                "OTEL_EXPORTER_OTLP_HEADERS: item 2 has no '='",
            ),
            (
                with("OTEL_EXPORTER_OTLP_TIMEOUT", "0"),
                "OTEL_EXPORTER_OTLP_TIMEOUT=\"0\": expected a whole number of milliseconds, more than 0",
            ),
        ] {
            let stderr = serve_refused(SkeinHome::new().path(), &[], &env).await;
            assert!(
                stderr.contains(expected),
                "{protocol} with {env:?}: expected {expected:?} in:\n{stderr}"
            );
            assert!(
                !stderr.contains("s3cret"),
                "a header value is shown:\n{stderr}"
            );
        }
    }
    let stderr = serve_refused(
        SkeinHome::new().path(),
        &["--otlp-endpoint", "ftp://127.0.0.1:21"],
        &[],
    )
    .await;
    assert!(
        stderr.contains("--otlp-endpoint=\"ftp://127.0.0.1:21\": an OTLP endpoint must be"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unusable_tls_file_stops_startup_naming_variable_and_file() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().expect("scratch directory");
    let missing = dir.path().join("missing-ca.pem");
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "this is no certificate\n").expect("write garbage");
    let missing = path_str(&missing);
    let garbage = path_str(&garbage);

    for protocol in ["http/protobuf", "grpc"] {
        let stderr = refused_start(protocol, &[("OTEL_EXPORTER_OTLP_CERTIFICATE", missing)]).await;
        assert!(
            stderr.contains(&format!(
                "OTEL_EXPORTER_OTLP_CERTIFICATE: cannot read {missing}: "
            )),
            "{protocol}: {stderr}"
        );

        let stderr = refused_start(
            protocol,
            &[("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE", garbage)],
        )
        .await;
        assert!(
            stderr.contains(&format!(
                "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE: {garbage} is not a PEM certificate file"
            )),
            "{protocol}: {stderr}"
        );
    }

    let stderr = refused_start(
        "http/protobuf",
        &[(
            "OTEL_EXPORTER_OTLP_METRICS_CLIENT_CERTIFICATE",
            path_str(&pki.client_cert_file),
        )],
    )
    .await;
    assert!(
        stderr.contains("OTEL_EXPORTER_OTLP_METRICS_CLIENT_CERTIFICATE is set but"),
        "{stderr}"
    );

    let stderr = refused_start(
        "grpc",
        &[
            (
                "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",
                path_str(&pki.client_cert_file),
            ),
            ("OTEL_EXPORTER_OTLP_CLIENT_KEY", garbage),
        ],
    )
    .await;
    assert!(
        stderr.contains(&format!(
            "OTEL_EXPORTER_OTLP_CLIENT_KEY: {garbage} is not a PEM private key file"
        )),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_collector_is_reported_once_per_episode_with_every_trust_setup() {
    let pki = Pki::new();
    for wire in [Wire::Http, Wire::Grpc] {
        // A CA file of Skein's own, and the system store (which
        // rustls-native-certs reads from SSL_CERT_FILE): neither trusts
        // the CA that signed the receiver's certificate.
        for trust in ["OTEL_EXPORTER_OTLP_CERTIFICATE", "SSL_CERT_FILE"] {
            let setup = format!("{wire:?} with {trust}");
            let mut receiver = Receiver::start(wire, Security::Tls, &pki).await;
            let options = export_to(wire, &receiver.https_url())
                .env(trust, path_str(&pki.other_ca_file))
                .env("OTEL_BSP_SCHEDULE_DELAY", "20")
                .env("OTEL_METRICS_EXPORTER", "none")
                .env("OTEL_EXPORTER_OTLP_TIMEOUT", "2000")
                .arg("--shutdown-timeout")
                .arg("2");
            let mut server = Server::start_with(Transport::Stdio, options).await;
            let mut client = server.connect().await;
            client.initialize("otlp-tls-e2e", "1.0.0").await;
            // Several exports, each refused at the handshake.
            for attempt in 1..=3 {
                client.request(METHOD, json!({}), None).await.result();
                let refused = tokio::time::timeout(
                    TIMEOUT,
                    receiver.refused.wait_for(|all| all.len() >= attempt),
                )
                .await;
                assert!(
                    refused.is_ok_and(|r| r.is_ok()),
                    "{setup}: no refused handshake {attempt}; {}",
                    receiver.summary()
                );
            }
            // The first failure is logged while the server runs, with the
            // endpoint and the reason.
            let first = server
                .wait_for_stderr(|line| line.contains("OTLP export failed"))
                .await;
            assert!(
                first.contains("WARN") && first.contains(&receiver.https_url()),
                "{setup}: the first failure names the endpoint: {first}"
            );
            assert!(
                first.contains("UnknownIssuer") || first.contains("certificate"),
                "{setup}: the first failure gives the reason: {first}"
            );
            let finished = server.shutdown().await;
            let stderr = finished.stderr();
            let firsts = stderr
                .iter()
                .filter(|l| l.contains("OTLP export failed"))
                .count();
            assert_eq!(firsts, 1, "{setup}: one first-failure line: {stderr:#?}");
            assert!(
                !stderr.iter().any(|l| l.contains("ERROR")),
                "{setup}: no ERROR line per attempt: {stderr:#?}"
            );
            assert!(
                stderr
                    .iter()
                    .any(|l| l.contains("OTLP export was still failing at shutdown")
                        && l.contains(&receiver.https_url())
                        && l.contains("failed_exports=")),
                "{setup}: a summary at shutdown: {stderr:#?}"
            );
        }
    }
}
