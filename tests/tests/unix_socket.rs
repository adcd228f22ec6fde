//! `--listen unix://PATH`: WebSocket over a Unix domain socket, as the
//! Codex app-server serves it, and `--ws-token-sha256`, against the real
//! `skein` binary.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::net::UnixStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::error::Error as WsError;

use support::{Server, ServerOptions, SkeinHome, TIMEOUT, Transport, mode_of, serve_refused};

const TOKEN: &str = "unix-cap-token-7d1e5a9c3b";

/// Starts `skein serve --listen LISTEN ARGS` in `home`.
async fn start(home: &SkeinHome, listen: &str, args: &[&str]) -> Server {
    let options = args.iter().fold(
        ServerOptions::default().home(home).listen(listen),
        |o, a| o.arg(a),
    );
    Server::start_with(Transport::WebSocket, options).await
}

/// The socket path the server announced as `listening on unix://PATH`.
fn socket(server: &Server) -> PathBuf {
    let url = server.ws_url();
    PathBuf::from(
        url.strip_prefix("unix://")
            .unwrap_or_else(|| panic!("not a unix:// address: {url}")),
    )
}

type UnixWs = WebSocketStream<UnixStream>;

/// A WebSocket upgrade over the socket at `path`, with `Authorization:
/// Bearer token` when given.
async fn connect_unix(path: &Path, token: Option<&str>) -> Result<UnixWs, WsError> {
    let stream = UnixStream::connect(path).await.expect("connect the socket");
    let mut request = "ws://localhost/".into_client_request().expect("request");
    if let Some(token) = token {
        request.headers_mut().insert(
            "authorization",
            format!("Bearer {token}").parse().expect("header value"),
        );
    }
    tokio::time::timeout(TIMEOUT, tokio_tungstenite::client_async(request, stream))
        .await
        .expect("upgrade answered in time")
        .map(|(ws, _)| ws)
}

/// Sends `initialize` and returns its response.
async fn initialize<S>(ws: &mut WebSocketStream<S>) -> Value
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    support::ws_initialize(ws, "unix-socket-test").await
}

fn status_of(err: &WsError) -> Option<u16> {
    match err {
        WsError::Http(response) => Some(response.status().as_u16()),
        _ => None,
    }
}

fn digest_hex(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[tokio::test]
async fn the_default_unix_socket_serves_websocket_owner_only_and_is_removed_at_exit() {
    let home = SkeinHome::new();
    let server = start(&home, "unix://", &[]).await;
    let socket = socket(&server);
    assert_eq!(socket, home.path().join("run").join("app-server.sock"));
    assert_eq!(mode_of(&socket), 0o600, "socket file owner-only");
    assert_eq!(
        mode_of(socket.parent().expect("folder")),
        0o700,
        "folder owner-only"
    );

    let mut ws = connect_unix(&socket, None)
        .await
        .expect("upgrade over the socket");
    let init = initialize(&mut ws).await;
    assert!(init["result"]["userAgent"].is_string(), "{init}");
    drop(ws);

    server.shutdown().await;
    assert!(!socket.exists(), "socket file removed at exit");
}

#[tokio::test]
async fn a_live_socket_is_refused_and_a_stale_one_replaced() {
    let home = SkeinHome::new();
    let dir = home.path().join("sockets");
    std::fs::create_dir(&dir).expect("mkdir");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    let path = dir.join("skein.sock");
    // A socket file whose process is gone: bound, then closed.
    drop(std::os::unix::net::UnixListener::bind(&path).expect("bind a stale socket"));
    assert!(path.exists());

    let listen = format!("unix://{}", path.display());
    let first = start(&home, &listen, &[]).await;
    assert_eq!(socket(&first), path, "the stale socket was replaced");

    let stderr = serve_refused(home.path(), &["--listen", &listen], &[("RUST_LOG", "info")]).await;
    assert!(
        stderr.contains(&format!("another server is listening on {listen}")),
        "{stderr}"
    );

    // The first server still answers.
    let mut ws = connect_unix(&path, None).await.expect("upgrade");
    assert!(initialize(&mut ws).await["result"].is_object());
    drop(ws);
    first.shutdown().await;
}

#[tokio::test]
async fn a_token_digest_admits_its_token_and_refuses_others_with_401() {
    let home = SkeinHome::new();
    let path = home.path().join("s").join("skein.sock");
    let listen = format!("unix://{}", path.display());
    let digest = digest_hex(TOKEN);
    let server = start(
        &home,
        &listen,
        &[
            "--ws-auth",
            "capability-token",
            "--ws-token-sha256",
            &digest,
        ],
    )
    .await;
    let socket = socket(&server);

    let missing = connect_unix(&socket, None).await.expect_err("no token");
    assert_eq!(status_of(&missing), Some(401), "{missing}");
    let wrong = connect_unix(&socket, Some(&format!("{TOKEN}x")))
        .await
        .expect_err("wrong token");
    assert_eq!(status_of(&wrong), Some(401), "{wrong}");
    // The digest itself is not the token.
    let digest_as_token = connect_unix(&socket, Some(&digest))
        .await
        .expect_err("digest as token");
    assert_eq!(status_of(&digest_as_token), Some(401), "{digest_as_token}");

    let mut ws = connect_unix(&socket, Some(TOKEN))
        .await
        .expect("right token");
    assert!(initialize(&mut ws).await["result"].is_object());
    drop(ws);
    let finished = server.shutdown().await;
    let stderr = finished.stderr().join("\n");
    assert!(!stderr.contains(TOKEN), "token printed:\n{stderr}");
}

#[tokio::test]
async fn a_token_digest_works_over_tcp_too() {
    let home = SkeinHome::new();
    let digest = digest_hex(TOKEN).to_uppercase();
    let server = start(
        &home,
        "ws://127.0.0.1:0",
        &[
            "--ws-auth",
            "capability-token",
            "--ws-token-sha256",
            &digest,
        ],
    )
    .await;
    let url = server.ws_url().to_owned();
    let refused = tokio_tungstenite::connect_async(url.as_str())
        .await
        .expect_err("no token");
    assert_eq!(status_of(&refused), Some(401), "{refused}");
    let mut request = url.as_str().into_client_request().expect("request");
    request.headers_mut().insert(
        "authorization",
        format!("Bearer {TOKEN}").parse().expect("header"),
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(request)
        .await
        .expect("right token");
    assert!(initialize(&mut ws).await["result"].is_object());
    drop(ws);
    server.shutdown().await;
}

#[tokio::test]
async fn a_malformed_token_digest_is_a_cli_error() {
    let home = SkeinHome::new();
    for bad in ["abc", &"g".repeat(64)] {
        let args = [
            "--listen",
            "unix://",
            "--ws-auth",
            "capability-token",
            "--ws-token-sha256",
            bad,
        ];
        let stderr = serve_refused(home.path(), &args, &[("RUST_LOG", "info")]).await;
        assert!(stderr.contains("--ws-token-sha256"), "{stderr}");
        assert!(stderr.contains("64 hexadecimal digits"), "{stderr}");
        assert!(!stderr.contains("listening on"), "{stderr}");
    }
}
