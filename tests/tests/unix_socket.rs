//! `--listen unix://PATH`: WebSocket over a Unix domain socket, as the
//! Codex app-server serves it, and `--ws-token-sha256`, against the real
//! `skein` binary.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::UnixStream;
use tokio::process::{Child, Command};
use tokio::sync::watch;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::error::Error as WsError;

use support::{TIMEOUT, serve_refused, skein_bin};

const TOKEN: &str = "unix-cap-token-7d1e5a9c3b";

/// A `skein serve` child with its stderr collected.
struct Spawned {
    child: Child,
    stderr: watch::Receiver<Vec<String>>,
}

impl Spawned {
    fn start(home: &Path, args: &[&str]) -> Spawned {
        let mut command = Command::new(skein_bin());
        command
            .arg("serve")
            .arg("--trace-dir")
            .arg("none")
            .args(args)
            .env("SKEIN_HOME", home)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("OTEL_") {
                command.env_remove(&key);
            }
        }
        let mut child = command.spawn().expect("spawn skein");
        let pipe = child.stderr.take().expect("stderr piped");
        let (tx, stderr) = watch::channel(Vec::new());
        tokio::spawn(async move {
            let mut lines = BufReader::new(pipe).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                tx.send_modify(|all| all.push(line));
            }
        });
        Spawned { child, stderr }
    }

    /// The socket path announced as `listening on unix://PATH`.
    async fn socket(&mut self) -> PathBuf {
        let found = |lines: &Vec<String>| {
            lines.iter().find_map(|l| {
                l.split_once("listening on unix://")
                    .map(|(_, p)| p.trim().to_owned())
            })
        };
        let _ = tokio::time::timeout(TIMEOUT, self.stderr.wait_for(|l| found(l).is_some())).await;
        let lines = self.stderr.borrow().clone();
        PathBuf::from(
            found(&lines)
                .unwrap_or_else(|| panic!("no `listening on unix://` line:\n{}", lines.join("\n"))),
        )
    }

    /// SIGTERM, then the exit status and stderr.
    async fn stop(self) -> (bool, String) {
        let pid = self.child.id().expect("running") as libc::pid_t;
        // SAFETY: signalling our own child by its pid.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
        self.exit().await
    }

    async fn exit(mut self) -> (bool, String) {
        let status = tokio::time::timeout(TIMEOUT, self.child.wait())
            .await
            .expect("skein exited in time")
            .expect("wait");
        let _ = tokio::time::timeout(TIMEOUT, self.stderr.wait_for(|_| false)).await;
        (status.success(), self.stderr.borrow().join("\n"))
    }
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

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .expect("metadata")
        .permissions()
        .mode()
        & 0o777
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
    let home = tempfile::tempdir().expect("tempdir");
    let mut server = Spawned::start(home.path(), &["--listen", "unix://"]);
    let socket = server.socket().await;
    assert_eq!(socket, home.path().join("run").join("app-server.sock"));
    assert_eq!(mode(&socket), 0o600, "socket file owner-only");
    assert_eq!(
        mode(socket.parent().expect("folder")),
        0o700,
        "folder owner-only"
    );

    let mut ws = connect_unix(&socket, None)
        .await
        .expect("upgrade over the socket");
    let init = initialize(&mut ws).await;
    assert!(init["result"]["userAgent"].is_string(), "{init}");
    drop(ws);

    let (ok, stderr) = server.stop().await;
    assert!(ok, "clean exit:\n{stderr}");
    assert!(!socket.exists(), "socket file removed at exit");
}

#[tokio::test]
async fn a_live_socket_is_refused_and_a_stale_one_replaced() {
    let home = tempfile::tempdir().expect("tempdir");
    let dir = home.path().join("sockets");
    std::fs::create_dir(&dir).expect("mkdir");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    let path = dir.join("skein.sock");
    // A socket file whose process is gone: bound, then closed.
    drop(std::os::unix::net::UnixListener::bind(&path).expect("bind a stale socket"));
    assert!(path.exists());

    let listen = format!("unix://{}", path.display());
    let mut first = Spawned::start(home.path(), &["--listen", &listen]);
    assert_eq!(first.socket().await, path, "the stale socket was replaced");

    let stderr = serve_refused(home.path(), &["--listen", &listen], &[("RUST_LOG", "info")]).await;
    assert!(
        stderr.contains(&format!("another server is listening on {listen}")),
        "{stderr}"
    );

    // The first server still answers.
    let mut ws = connect_unix(&path, None).await.expect("upgrade");
    assert!(initialize(&mut ws).await["result"].is_object());
    drop(ws);
    let (ok, stderr) = first.stop().await;
    assert!(ok, "{stderr}");
}

#[tokio::test]
async fn a_token_digest_admits_its_token_and_refuses_others_with_401() {
    let home = tempfile::tempdir().expect("tempdir");
    let path = home.path().join("s").join("skein.sock");
    let listen = format!("unix://{}", path.display());
    let digest = digest_hex(TOKEN);
    let mut server = Spawned::start(
        home.path(),
        &[
            "--listen",
            &listen,
            "--ws-auth",
            "capability-token",
            "--ws-token-sha256",
            &digest,
        ],
    );
    let socket = server.socket().await;

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
    let (ok, stderr) = server.stop().await;
    assert!(ok, "{stderr}");
    assert!(!stderr.contains(TOKEN), "token printed:\n{stderr}");
}

#[tokio::test]
async fn a_token_digest_works_over_tcp_too() {
    let home = tempfile::tempdir().expect("tempdir");
    let digest = digest_hex(TOKEN).to_uppercase();
    let mut server = Spawned::start(
        home.path(),
        &[
            "--listen",
            "ws://127.0.0.1:0",
            "--ws-auth",
            "capability-token",
            "--ws-token-sha256",
            &digest,
        ],
    );
    let found = |lines: &Vec<String>| {
        lines.iter().find_map(|l| {
            l.split_once("listening on ")
                .map(|(_, u)| u.trim().to_owned())
        })
    };
    let _ = tokio::time::timeout(TIMEOUT, server.stderr.wait_for(|l| found(l).is_some())).await;
    let url = found(&server.stderr.borrow()).expect("listening line");
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
    let (ok, stderr) = server.stop().await;
    assert!(ok, "{stderr}");
}

#[tokio::test]
async fn a_malformed_token_digest_is_a_cli_error() {
    let home = tempfile::tempdir().expect("tempdir");
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
