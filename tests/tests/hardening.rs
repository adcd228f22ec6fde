//! Running on a network: WebSocket authentication, refusal to listen
//! publicly without it, and the overload answers (connection, running-turn
//! and loaded-thread limits, running out of file descriptors, idle
//! connections), against the real `skein` binary.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use support::raw_ws::{self, RawWs};
use support::{STATUS_CODE_ERROR, Server, ServerOptions, TIMEOUT, Transport, skein_bin};

/// The code of an overloaded answer.
const SERVER_OVERLOADED: i64 = -32001;

/// Writes `contents` to `dir/name` with permission bits `mode`.
fn secret_file(dir: &Path, name: &str, contents: &str, mode: u32) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, contents).expect("write secret file");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
    path
}

/// Sends a WebSocket upgrade request by hand and returns the response: the
/// head only for `101`, else everything up to the server's close.
async fn raw_upgrade(addr: &str, authorization: Option<&str>) -> String {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let auth = authorization
        .map(|a| format!("Authorization: {a}\r\n"))
        .unwrap_or_default();
    let request = raw_ws::upgrade_request(addr, &auth);
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut response = Vec::new();
    let mut chunk = [0u8; 4096];
    tokio::time::timeout(TIMEOUT, async {
        loop {
            let n = stream.read(&mut chunk).await.unwrap_or(0);
            if n == 0 {
                break;
            }
            response.extend_from_slice(&chunk[..n]);
            if response.starts_with(b"HTTP/1.1 101")
                && response.windows(4).any(|w| w == b"\r\n\r\n")
            {
                break;
            }
        }
    })
    .await
    .expect("the server answered the upgrade request in time");
    String::from_utf8_lossy(&response).into_owned()
}

/// `GET /healthz` over a fresh connection; returns the whole response.
async fn healthz(addr: &str) -> String {
    tokio::time::timeout(TIMEOUT, async {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .expect("send");
        let mut response = String::new();
        let _ = stream.read_to_string(&mut response).await;
        response
    })
    .await
    .expect("/healthz answered in time")
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

/// Connects with `Authorization: Bearer token`; panics when refused.
async fn connect_with_token(url: &str, token: &str) -> Ws {
    let mut request = url.into_client_request().expect("request");
    request.headers_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("header value"),
    );
    let (ws, _) = tokio::time::timeout(TIMEOUT, tokio_tungstenite::connect_async(request))
        .await
        .expect("connect in time")
        .unwrap_or_else(|e| panic!("upgrade with a valid token refused: {e}"));
    ws
}

/// Sends `initialize` and waits for its result.
async fn initialize(ws: &mut Ws) -> Value {
    support::ws_initialize(ws, "hardening").await
}

fn status_line(response: &str) -> &str {
    response.lines().next().unwrap_or("")
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

const TOKEN: &str = "cap-token-4f9a1c2e8b7d6a5f3e2d1c0b";

#[tokio::test]
async fn capability_token_upgrades_need_the_right_bearer_token() {
    let dir = tempfile::tempdir().expect("tempdir");
    let token_file = secret_file(dir.path(), "token", &format!("{TOKEN}\n"), 0o600);
    let mut server = Server::start_with(
        Transport::WebSocket,
        ServerOptions::default()
            .arg("--ws-auth")
            .arg("capability-token")
            .arg("--ws-token-file")
            .arg(token_file.to_str().expect("utf-8 path")),
    )
    .await;
    let addr = server.ws_addr();

    let missing = raw_upgrade(&addr, None).await;
    assert!(
        status_line(&missing).starts_with("HTTP/1.1 401"),
        "{missing}"
    );
    assert!(
        missing.contains("missing Authorization: Bearer token"),
        "{missing}"
    );

    let wrong_token = format!("{TOKEN}x");
    let wrong = raw_upgrade(&addr, Some(&format!("Bearer {wrong_token}"))).await;
    assert!(status_line(&wrong).starts_with("HTTP/1.1 401"), "{wrong}");
    assert!(wrong.contains("invalid token"), "{wrong}");
    assert!(
        !wrong.contains(TOKEN),
        "the reason must not echo a token: {wrong}"
    );

    let basic = raw_upgrade(&addr, Some(&format!("Basic {TOKEN}"))).await;
    assert!(status_line(&basic).starts_with("HTTP/1.1 401"), "{basic}");

    // /healthz needs no token.
    let health = healthz(&addr).await;
    assert!(status_line(&health).starts_with("HTTP/1.1 200"), "{health}");

    let mut ws = connect_with_token(server.ws_url(), TOKEN).await;
    let init = initialize(&mut ws).await;
    assert_eq!(
        init["result"]["serverInfo"]["name"],
        json!("skein"),
        "{init}"
    );
    ws.close(None).await.expect("close");
    server
        .wait_for_stderr(|l| l.contains("websocket connection closed"))
        .await;

    let finished = server.shutdown().await;
    for line in finished.stderr() {
        assert!(!line.contains(TOKEN), "token logged: {line}");
    }
    assert!(
        !finished.dump().contains(TOKEN),
        "token recorded on a span:\n{}",
        finished.dump()
    );
}

const SECRET: &str = "0123456789abcdef0123456789abcdef-shared";

fn jwt(claims: Value) -> String {
    jwt_with_header(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
    )
}

fn jwt_with_header(header: &jsonwebtoken::Header, claims: Value) -> String {
    jsonwebtoken::encode(
        header,
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("sign a JWT")
}

#[tokio::test]
async fn signed_bearer_tokens_check_expiry_not_before_issuer_and_audience() {
    let dir = tempfile::tempdir().expect("tempdir");
    let secret = secret_file(dir.path(), "secret", SECRET, 0o600);
    let server = Server::start_with(
        Transport::WebSocket,
        ServerOptions::default()
            .arg("--ws-auth")
            .arg("signed-bearer-token")
            .arg("--ws-shared-secret-file")
            .arg(secret.to_str().expect("utf-8 path"))
            .arg("--ws-issuer")
            .arg("skein-tests")
            .arg("--ws-audience")
            .arg("skein"),
    )
    .await;
    let addr = server.ws_addr();
    let now = unix_now();
    let claims = |extra: Value| {
        let mut claims = json!({"iss": "skein-tests", "aud": "skein", "exp": now + 3600});
        for (k, v) in extra.as_object().expect("object") {
            claims[k] = v.clone();
        }
        claims
    };
    let without = |claim: &str| {
        let mut claims = claims(json!({}));
        claims.as_object_mut().expect("object").remove(claim);
        claims
    };

    for valid in [
        jwt(claims(json!({"nbf": now - 10}))),
        jwt(claims(json!({"aud": ["another", "skein"]}))),
    ] {
        let mut ws = connect_with_token(server.ws_url(), &valid).await;
        let init = initialize(&mut ws).await;
        assert!(init.get("result").is_some(), "{init}");
        ws.close(None).await.expect("close");
    }
    let mut crit = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    crit.crit = Some(vec!["exp".into()]);

    let cases = [
        (jwt(claims(json!({"exp": now - 3600}))), "token expired"),
        (
            jwt(claims(json!({"nbf": now + 3600}))),
            "token not yet valid",
        ),
        (
            jwt(claims(json!({"aud": "someone-else"}))),
            "audience not accepted",
        ),
        (
            jwt(claims(json!({"iss": "someone-else"}))),
            "issuer not accepted",
        ),
        // A configured issuer and audience are required, and must be
        // strings (the audience may be an array holding it).
        (jwt(without("iss")), "required claim (iss)"),
        (jwt(claims(json!({"iss": null}))), "required claim (iss)"),
        (jwt(claims(json!({"iss": 1}))), "issuer not accepted"),
        (
            jwt(claims(json!({"iss": ["skein-tests"]}))),
            "issuer not accepted",
        ),
        (jwt(without("aud")), "required claim (aud)"),
        (jwt(claims(json!({"aud": null}))), "required claim (aud)"),
        (jwt(claims(json!({"aud": 1}))), "audience not accepted"),
        (
            jwt(claims(json!({"aud": ["someone-else"]}))),
            "audience not accepted",
        ),
        (jwt_with_header(&crit, claims(json!({}))), "crit header"),
        (
            jwt(json!({"iss": "skein-tests", "aud": "skein"})),
            "required claim (exp)",
        ),
        (
            jsonwebtoken::encode(
                &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
                &claims(json!({})),
                &jsonwebtoken::EncodingKey::from_secret(b"another-secret-of-at-least-32-bytes!!"),
            )
            .expect("sign"),
            "invalid token signature",
        ),
    ];
    for (token, reason) in &cases {
        let response = raw_upgrade(&addr, Some(&format!("Bearer {token}"))).await;
        assert!(
            status_line(&response).starts_with("HTTP/1.1 401"),
            "expected 401 ({reason}): {response}"
        );
        assert!(response.contains(reason), "expected {reason:?}: {response}");
        assert!(
            !response.contains(token.as_str()),
            "token echoed: {response}"
        );
    }
    let missing = raw_upgrade(&addr, None).await;
    assert!(
        status_line(&missing).starts_with("HTTP/1.1 401"),
        "{missing}"
    );

    let finished = server.shutdown().await;
    for (token, _) in &cases {
        for line in finished.stderr() {
            assert!(!line.contains(token.as_str()), "token logged: {line}");
        }
    }
}

/// Runs `skein serve --trace-dir none ARGS` logging at `info`, expecting it
/// to refuse to start; returns its stderr.
async fn refused(args: &[&str]) -> String {
    let home = tempfile::tempdir().expect("tempdir");
    support::serve_refused(home.path(), args, &[("RUST_LOG", "info")]).await
}

/// A `skein serve` started by hand, its stderr collected line by line.
struct Spawned {
    child: Child,
    stderr: watch::Receiver<Vec<String>>,
    _home: tempfile::TempDir,
}

impl Spawned {
    fn start(args: &[&str], nofile: Option<u64>) -> Spawned {
        let home = tempfile::tempdir().expect("tempdir");
        let mut command = Command::new(skein_bin());
        command
            .arg("serve")
            .args(["--trace-dir", "none"])
            .args(args)
            .env("SKEIN_HOME", home.path())
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
        if let Some(limit) = nofile {
            // SAFETY: setrlimit is async-signal-safe; nothing else runs
            // between fork and exec here.
            unsafe {
                command.pre_exec(move || {
                    let rlimit = libc::rlimit {
                        rlim_cur: limit,
                        rlim_max: limit,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &rlimit) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
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
        Spawned {
            child,
            stderr,
            _home: home,
        }
    }

    /// Waits for a stderr line containing `needle`.
    async fn wait_for(&mut self, needle: &str) -> String {
        let found = |lines: &Vec<String>| lines.iter().find(|l| l.contains(needle)).cloned();
        let _ = tokio::time::timeout(TIMEOUT, self.stderr.wait_for(|l| found(l).is_some())).await;
        let lines = self.stderr.borrow().clone();
        found(&lines)
            .unwrap_or_else(|| panic!("no stderr line with {needle:?}:\n{}", lines.join("\n")))
    }

    /// The `IP:PORT` announced on stderr.
    async fn addr(&mut self) -> String {
        let line = self.wait_for("listening on ws://").await;
        line.split("ws://")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .expect("address")
            .to_owned()
    }
}

#[tokio::test]
async fn unusable_token_files_stop_startup() {
    let dir = tempfile::tempdir().expect("tempdir");
    let shared = secret_file(dir.path(), "shared", TOKEN, 0o644);
    let empty = secret_file(dir.path(), "empty", "\n", 0o600);
    let missing = dir.path().join("missing");
    let short = secret_file(dir.path(), "short", "short-secret", 0o600);
    let cases: [(Vec<&str>, &str); 4] = [
        (
            vec!["--ws-token-file", shared.to_str().expect("path")],
            "accessible to other users",
        ),
        (
            vec!["--ws-token-file", empty.to_str().expect("path")],
            "is empty",
        ),
        (
            vec!["--ws-token-file", missing.to_str().expect("path")],
            "cannot read token file",
        ),
        (vec![], "needs --ws-token-file"),
    ];
    for (extra, expected) in cases {
        let mut args = vec![
            "--listen",
            "ws://127.0.0.1:0",
            "--ws-auth",
            "capability-token",
        ];
        args.extend(extra);
        let stderr = refused(&args).await;
        assert!(
            stderr.contains(expected),
            "expected {expected:?}:\n{stderr}"
        );
        assert!(!stderr.contains("listening on"), "{stderr}");
        assert!(!stderr.contains(TOKEN), "token printed:\n{stderr}");
    }
    let stderr = refused(&[
        "--listen",
        "ws://127.0.0.1:0",
        "--ws-auth",
        "signed-bearer-token",
        "--ws-shared-secret-file",
        short.to_str().expect("path"),
    ])
    .await;
    assert!(stderr.contains("at least 32"), "{stderr}");
}

#[tokio::test]
async fn a_clock_skew_beyond_a_day_stops_startup() {
    let dir = tempfile::tempdir().expect("tempdir");
    let secret = secret_file(dir.path(), "secret", SECRET, 0o600);
    for skew in ["86401", "2000000000"] {
        let stderr = refused(&[
            "--listen",
            "ws://127.0.0.1:0",
            "--ws-auth",
            "signed-bearer-token",
            "--ws-shared-secret-file",
            secret.to_str().expect("path"),
            "--ws-max-clock-skew-seconds",
            skew,
        ])
        .await;
        assert!(
            stderr.contains("--ws-max-clock-skew-seconds") && stderr.contains("86400"),
            "the error names the flag and its bound:\n{stderr}"
        );
        assert!(!stderr.contains("listening on"), "{stderr}");
    }
}

#[tokio::test]
async fn startup_errors_give_the_os_error_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("missing");
    let cases: [(Vec<&str>, &str); 2] = [
        (
            vec![
                "--listen",
                "ws://127.0.0.1:0",
                "--ws-auth",
                "capability-token",
                "--ws-token-file",
                missing.to_str().expect("path"),
            ],
            "(os error 2)",
        ),
        // TEST-NET-1: never an address of this machine.
        (
            vec![
                "--listen",
                "ws://192.0.2.1:4500",
                "--ws-allow-unauthenticated",
            ],
            "(os error 99)",
        ),
    ];
    for (args, os_error) in cases {
        let stderr = refused(&args).await;
        let line = stderr
            .lines()
            .find(|line| line.starts_with("skein: error:"))
            .unwrap_or_else(|| panic!("no error line:\n{stderr}"));
        assert_eq!(line.matches(os_error).count(), 1, "{line}");
        assert_eq!(line.matches("os error").count(), 1, "{line}");
    }
}

#[tokio::test]
async fn a_public_address_without_auth_refuses_to_start() {
    let stderr = refused(&["--listen", "ws://0.0.0.0:0"]).await;
    assert!(stderr.contains("--ws-auth"), "{stderr}");
    assert!(stderr.contains("--ws-allow-unauthenticated"), "{stderr}");
    assert!(!stderr.contains("listening on"), "{stderr}");

    // Insisting works.
    let mut insisted = Spawned::start(
        &["--listen", "ws://0.0.0.0:0", "--ws-allow-unauthenticated"],
        None,
    );
    let addr = insisted.addr().await;
    let port = addr.rsplit(':').next().expect("port");
    let health = healthz(&format!("127.0.0.1:{port}")).await;
    assert!(status_line(&health).starts_with("HTTP/1.1 200"), "{health}");
    // ... with a warning at startup.
    let warning = insisted.wait_for(UNAUTHENTICATED_WARNING).await;
    assert!(warning.contains("WARN"), "{warning}");

    // With auth, a public address is fine.
    let dir = tempfile::tempdir().expect("tempdir");
    let token = secret_file(dir.path(), "token", TOKEN, 0o600);
    let mut authed = Spawned::start(
        &[
            "--listen",
            "ws://0.0.0.0:0",
            "--ws-auth",
            "capability-token",
            "--ws-token-file",
            token.to_str().expect("path"),
        ],
        None,
    );
    authed.addr().await;
    let stderr = authed.stderr.borrow().join("\n");
    assert!(!stderr.contains(UNAUTHENTICATED_WARNING), "{stderr}");
}

/// The startup warning of a public address without authentication.
const UNAUTHENTICATED_WARNING: &str = "listening on a non-loopback address without authentication";

#[tokio::test]
async fn refused_upgrades_are_logged_at_most_once_per_ten_seconds() {
    // Each refusal used to write a log line: a client could amplify the
    // log's volume as fast as it connects.
    const REFUSALS: usize = 100;
    let dir = tempfile::tempdir().expect("tempdir");
    let token_file = secret_file(dir.path(), "token", &format!("{TOKEN}\n"), 0o600);
    let mut server = Server::start_with(
        Transport::WebSocket,
        ServerOptions::default()
            .arg("--ws-auth")
            .arg("capability-token")
            .arg("--ws-token-file")
            .arg(token_file.to_str().expect("utf-8 path")),
    )
    .await;
    let addr = server.ws_addr();
    let started = Instant::now();
    for _ in 0..REFUSALS {
        let refused = raw_upgrade(&addr, None).await;
        assert!(
            status_line(&refused).starts_with("HTTP/1.1 401"),
            "{refused}"
        );
    }
    let elapsed = started.elapsed();
    // The first refusal is logged at once.
    server
        .wait_for_stderr(|line| line.contains("refusing an unauthenticated upgrade"))
        .await;
    let finished = server.shutdown().await;
    let lines = finished
        .stderr()
        .iter()
        .filter(|line| line.contains("refusing an unauthenticated upgrade"))
        .count();
    // One line at the start of each 10 s window the refusals spanned.
    let windows = usize::try_from(elapsed.as_secs() / 10).expect("small") + 1;
    assert!(
        lines <= windows,
        "{lines} log lines for {REFUSALS} refusals in {elapsed:?}"
    );
}

#[tokio::test]
async fn turns_past_the_running_limit_get_server_overloaded() {
    let mut server = Server::start_with(
        Transport::WebSocket,
        ServerOptions::default()
            .echo_delay_ms(60_000)
            .arg("--max-running-turns")
            .arg("2"),
    )
    .await;
    let mut client = server.connect().await;
    client.initialize("hardening", "1").await;
    let first = client.start_thread().await;
    let second = client.start_thread().await;
    let third = client.start_thread().await;
    let running = client
        .start_turn(&first, "hold this turn open please", None)
        .await
        .turn_id();
    client.start_turn(&second, "and this one too", None).await;

    let mut refused_ids = Vec::new();
    for (method, params) in [
        (
            "turn/start",
            json!({"threadId": third, "input": [{"type": "text", "text": "one more"}]}),
        ),
        ("review/start", json!({"threadId": third})),
        ("thread/compact/start", json!({"threadId": third})),
    ] {
        let response = client.request(method, params, None).await;
        assert_eq!(
            response.error_code(),
            SERVER_OVERLOADED,
            "{method}: {:?}",
            response.message
        );
        let error = &response.message["error"];
        assert_eq!(
            error["message"],
            json!("server overloaded; retry later"),
            "{error}"
        );
        assert!(
            error["data"]["retryAfterMs"]
                .as_u64()
                .is_some_and(|ms| ms > 0),
            "{method}: no data.retryAfterMs: {error}"
        );
        refused_ids.push(response.id_str());
    }
    // The connection keeps working, and a freed slot is usable again.
    client
        .request(
            "turn/interrupt",
            json!({"threadId": first, "turnId": running}),
            None,
        )
        .await
        .result();
    client.wait_for_turn_completed(&running).await;
    client.start_turn(&third, "now there is room", None).await;

    let finished = server.shutdown().await;
    for id in refused_ids {
        let span = finished.request_span(&id);
        assert_eq!(span.status_code, STATUS_CODE_ERROR, "{span:?}");
        assert_eq!(
            span.attr_str("error.type").as_deref(),
            Some("-32001"),
            "{span:?}"
        );
    }
}

#[tokio::test]
async fn upgrades_past_the_connection_limit_get_503_and_open_ones_keep_working() {
    let mut server = Server::start_with(
        Transport::WebSocket,
        ServerOptions::default().arg("--max-connections").arg("2"),
    )
    .await;
    let addr = server.ws_addr();
    let mut a = server.connect().await;
    a.initialize("a", "1").await;
    let mut b = server.connect().await;
    b.initialize("b", "1").await;

    let refused = raw_upgrade(&addr, None).await;
    assert!(
        status_line(&refused).starts_with("HTTP/1.1 503"),
        "{refused}"
    );
    assert!(refused.contains("Retry-After: "), "{refused}");
    assert!(refused.contains("too many open connections"), "{refused}");
    let health = healthz(&addr).await;
    assert!(status_line(&health).starts_with("HTTP/1.1 200"), "{health}");

    // The open connections are unaffected.
    a.request("model/list", json!({}), None).await.result();
    b.request("model/list", json!({}), None).await.result();

    // Closing one frees its slot (released just after the close: retry
    // until the upgrade goes through).
    a.close().await;
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let response = raw_upgrade(&addr, None).await;
        if status_line(&response).starts_with("HTTP/1.1 101") {
            break;
        }
        assert!(
            status_line(&response).starts_with("HTTP/1.1 503"),
            "{response}"
        );
        assert!(
            tokio::time::Instant::now() < deadline,
            "the closed connection's slot was never released"
        );
        tokio::task::yield_now().await;
    }
    b.request("model/list", json!({}), None).await.result();
    server.shutdown().await;
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("read /proc/<pid>/fd")
        .count()
}

#[tokio::test]
async fn idle_threads_are_unloaded_and_their_files_closed() {
    const MAX_LOADED: usize = 4;
    let mut server = Server::start_with(
        Transport::WebSocket,
        ServerOptions::default()
            .arg("--max-loaded-threads")
            .arg(&MAX_LOADED.to_string()),
    )
    .await;
    let pid = server.pid();
    let mut first_thread = None;
    let mut warm = (0, 0);
    const WARMUP: usize = 20;
    const ROUNDS: usize = 220;
    for round in 0..ROUNDS {
        let mut client = server.connect().await;
        client.initialize("churn", "1").await;
        let thread = client.start_thread().await;
        first_thread.get_or_insert(thread);
        let loaded = client.request("thread/loaded/list", json!({}), None).await;
        let count = loaded.result()["data"].as_array().map_or(0, Vec::len);
        assert!(
            count <= MAX_LOADED + 1,
            "round {round}: {count} threads loaded: {:?}",
            loaded.message
        );
        client.close().await;
        if round + 1 == WARMUP {
            warm = (open_fds(pid), support::vm_rss_bytes(pid));
        }
    }
    let end = (open_fds(pid), support::vm_rss_bytes(pid));
    // Without unloading, each thread keeps one more descriptor: 200 more.
    assert!(
        end.0 <= warm.0 + 16,
        "descriptors grew from {} to {} over {} thread/start",
        warm.0,
        end.0,
        ROUNDS - WARMUP
    );
    // Without unloading, ~200 KiB per thread: ~40 MiB more.
    assert!(
        end.1 <= warm.1 + 20 * 1024 * 1024,
        "resident memory grew from {} to {} bytes",
        warm.1,
        end.1
    );
    // An unloaded thread is still on disk and loads again.
    let first = first_thread.expect("a thread");
    assert!(server.home().thread_file(&first).exists());
    let mut client = server.connect().await;
    client.initialize("resume", "1").await;
    let resumed = client
        .request("thread/resume", json!({"threadId": first}), None)
        .await;
    assert_eq!(resumed.result()["thread"]["id"], json!(first));
    client.close().await;
    server.shutdown().await;
}

#[tokio::test]
async fn running_out_of_file_descriptors_does_not_take_the_server_down() {
    let mut server = Spawned::start(&["--listen", "ws://127.0.0.1:0"], Some(64));
    let addr = server.addr().await;
    let url = format!("ws://{addr}");

    // Open connections until the server cannot accept any more: the next
    // upgrade then waits in the listen backlog while the server reports
    // (once) that accepting failed.
    let mut open = Vec::new();
    let mut pending = None;
    for _ in 0..200 {
        let mut connect = Box::pin(tokio_tungstenite::connect_async(url.clone()));
        let mut stderr = server.stderr.clone();
        let accept_failed = stderr.wait_for(|lines| {
            lines
                .iter()
                .any(|l| l.contains("accepting connections failed"))
        });
        tokio::select! {
            connected = &mut connect => {
                let (ws, _) = connected.expect("upgrade below the descriptor limit");
                open.push(ws);
            }
            _ = accept_failed => {
                pending = Some(connect);
                break;
            }
            _ = tokio::time::sleep(TIMEOUT) => panic!("neither connected nor failed to accept"),
        }
    }
    let pending = pending.expect("the descriptor limit was reached");
    assert!(open.len() > 10, "only {} connections opened", open.len());

    // The connections already open keep working.
    let init = initialize(&mut open[0]).await;
    assert!(init.get("result").is_some(), "{init}");

    // Freeing descriptors lets the server accept again: the waiting upgrade
    // completes and /healthz answers.
    for mut ws in open.drain(1..11) {
        let _ = ws.close(None).await;
        while let Some(Ok(_)) = ws.next().await {}
    }
    let (mut late, _) = tokio::time::timeout(TIMEOUT, pending)
        .await
        .expect("the waiting upgrade completed")
        .expect("upgrade");
    let init = initialize(&mut late).await;
    assert!(init.get("result").is_some(), "{init}");
    let health = healthz(&addr).await;
    assert!(status_line(&health).starts_with("HTTP/1.1 200"), "{health}");

    // One warning per episode, not one per retry.
    let lines = server.stderr.borrow().clone();
    let failures = lines
        .iter()
        .filter(|l| l.contains("accepting connections failed"))
        .count();
    assert!(
        failures <= 2,
        "{failures} accept warnings:\n{}",
        lines.join("\n")
    );
    assert!(
        lines.len() < 400,
        "stderr grew to {} lines:\n{}",
        lines.len(),
        lines.join("\n")
    );
    server.child.kill().await.expect("kill");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_are_closed_after_the_idle_timeout() {
    let server = Server::start_with(
        Transport::WebSocket,
        ServerOptions::default().arg("--ws-idle-timeout").arg("1"),
    )
    .await;
    // By hand: a WebSocket library would answer the server's pings.
    let mut ws = RawWs::open(&server.ws_addr()).await;
    let id = support::next_request_id();
    ws.send_text(&initialize_text(id)).await;
    // Say nothing more, not even a pong: after the answer, the server pings
    // (after half the timeout), then closes the connection.
    let frames = ws.frames_until_closed().await;
    let opcodes: Vec<u8> = frames.iter().map(|f| f.opcode).collect();
    let answer = frames[0].text().expect("the answer first");
    assert!(answer.contains(&format!("\"id\":{id}")), "{answer}");
    assert!(
        opcodes[1..opcodes.len() - 1]
            .iter()
            .all(|&op| op == raw_ws::OP_PING)
            && opcodes.len() >= 3
            && opcodes.last() == Some(&raw_ws::OP_CLOSE),
        "expected the answer, pings, then a close frame; got opcodes {opcodes:?}"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_only_reads_answers_pings_and_stays_open_past_the_idle_timeout() {
    const IDLE_TIMEOUT: Duration = Duration::from_secs(2);
    const PINGS: usize = 3;
    let mut server = Server::start_with(
        Transport::WebSocket,
        ServerOptions::default()
            .arg("--ws-idle-timeout")
            .arg(&IDLE_TIMEOUT.as_secs().to_string()),
    )
    .await;
    let (mut ws, _) = tokio_tungstenite::connect_async(server.ws_url())
        .await
        .expect("connect");
    let init = initialize(&mut ws).await;
    assert!(init.get("result").is_some(), "{init}");
    let quiet_since = Instant::now();
    // Only read: tokio-tungstenite answers each ping with a pong as it
    // reads on, which is all the client sends.
    let mut pings = 0;
    while pings < PINGS {
        let message = tokio::time::timeout(TIMEOUT, ws.next())
            .await
            .expect("a ping within the timeout");
        match message {
            Some(Ok(Message::Ping(_))) => pings += 1,
            other => panic!("expected only pings while quiet, got {other:?}"),
        }
    }
    let quiet = quiet_since.elapsed();
    assert!(
        quiet > IDLE_TIMEOUT,
        "{PINGS} pings came within {quiet:?}, less than the idle timeout"
    );
    // Still open: a request is answered.
    let id = support::next_request_id();
    ws.send(Message::text(
        json!({"jsonrpc": "2.0", "id": id, "method": "model/list", "params": {}}).to_string(),
    ))
    .await
    .expect("send model/list");
    loop {
        let message = tokio::time::timeout(TIMEOUT, ws.next())
            .await
            .expect("model/list answered in time");
        match message {
            Some(Ok(Message::Text(text))) => {
                let answer: Value = serde_json::from_str(&text).expect("JSON");
                assert_eq!(answer["id"], json!(id), "{answer}");
                assert!(answer.get("result").is_some(), "{answer}");
                break;
            }
            Some(Ok(Message::Ping(_))) => {}
            other => panic!("expected the model/list answer, got {other:?}"),
        }
    }
    ws.close(None).await.expect("close");
    server
        .wait_for_stderr(|l| l.contains("websocket connection closed"))
        .await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_listening_to_a_turn_longer_than_the_idle_timeout_gets_all_of_it() {
    // While the turn streams, output flows all the time and the client
    // sends nothing but pongs: the pings must go out between the deltas.
    const IDLE_TIMEOUT_SECS: u64 = 1;
    const WORDS: usize = 12;
    const DELAY_MS: u64 = 250;
    let mut server = Server::start_with(
        Transport::WebSocket,
        ServerOptions::default()
            .echo_delay_ms(DELAY_MS)
            .arg("--ws-idle-timeout")
            .arg(&IDLE_TIMEOUT_SECS.to_string()),
    )
    .await;
    let mut client = server.connect().await;
    client.initialize("listener", "1").await;
    let thread = client.start_thread().await;
    let input: Vec<String> = (0..WORDS).map(|i| format!("word{i}")).collect();
    let started = Instant::now();
    let turn = client
        .start_turn(&thread, &input.join(" "), None)
        .await
        .turn_id();
    let completed = client.wait_for_turn_completed(&turn).await;
    let listened = started.elapsed();
    assert_eq!(
        completed["params"]["turn"]["status"], "completed",
        "{completed}"
    );
    assert!(
        listened > Duration::from_secs(2 * IDLE_TIMEOUT_SECS),
        "the turn took only {listened:?}: too short to outlast the idle timeout"
    );
    let deltas: String = client
        .take_notifications(|n| {
            n["method"] == "item/agentMessage/delta"
                && support::notification_turn_id(n) == Some(turn.as_str())
        })
        .iter()
        .map(|n| {
            n["params"]["delta"]
                .as_str()
                .expect("delta text")
                .to_owned()
        })
        .collect();
    assert_eq!(deltas, input.join(" "), "the deltas are the whole answer");
    client.request("model/list", json!({}), None).await.result();
    client.close().await;
    server.shutdown().await;
}

/// `initialize` with this id, as JSON text.
fn initialize_text(id: i64) -> String {
    json!({"jsonrpc": "2.0", "id": id, "method": "initialize",
        "params": {"clientInfo": {"name": "hardening", "version": "1"}}})
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_followed_by_a_half_close_is_answered_before_the_close_frame() {
    // A client may send its last request and shut its sending side down at
    // once (shutdown(Write)): the server reads EOF right after the request,
    // yet the answer must still go out, then a close frame, then the end.
    const TRIALS: usize = 300;
    let server = Server::start(Transport::WebSocket).await;
    let addr = server.ws_addr();
    let mut lost = Vec::new();
    let mut answered_ids = Vec::new();
    for trial in 0..TRIALS {
        let mut ws = RawWs::open(&addr).await;
        let id = support::next_request_id();
        ws.send_text(&initialize_text(id)).await;
        ws.shutdown_write().await;
        let frames = ws.frames_until_closed().await;
        let answer = frames.iter().position(|f| {
            f.text()
                .and_then(|t| serde_json::from_str::<Value>(&t).ok())
                .is_some_and(|v| v["id"] == json!(id) && v.get("result").is_some())
        });
        let close = frames.iter().position(|f| f.opcode == raw_ws::OP_CLOSE);
        match (answer, close) {
            (Some(answer), Some(close)) if answer < close && close + 1 == frames.len() => {
                answered_ids.push(id);
            }
            _ => lost.push((trial, frames)),
        }
    }
    assert!(
        lost.is_empty(),
        "{} of {TRIALS} half-closed connections did not get answer then close frame; first: {:?}",
        lost.len(),
        lost.first()
    );
    let finished = server.shutdown().await;
    for id in answered_ids {
        assert_eq!(finished.request_span(&id.to_string()).name, "initialize");
    }
}

/// The JSON of the text frames in `frames`.
fn frame_messages(frames: &[raw_ws::Frame]) -> Vec<Value> {
    frames
        .iter()
        .filter_map(raw_ws::Frame::text)
        .map(|text| serde_json::from_str(&text).expect("the server sends JSON"))
        .collect()
}

/// Reads frames until the answer to request `id` and returns it.
async fn raw_answer(ws: &mut RawWs, id: i64) -> Value {
    loop {
        let frame = ws
            .next_frame()
            .await
            .unwrap_or_else(|| panic!("the connection ended before the answer to {id}"));
        if let Some(message) = frame_messages(&[frame]).pop()
            && message["id"] == json!(id)
        {
            return message;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_half_closes_after_turn_start_gets_the_whole_turn() {
    // A client may start a turn and shut its sending side down at once:
    // it still gets every notification of the turn, up to `turn/completed`,
    // and only then the close frame.
    const CLIENTS: usize = 13;
    let server = Server::start_with(
        Transport::WebSocket,
        ServerOptions::default().echo_delay_ms(40),
    )
    .await;
    let addr = server.ws_addr();
    let mut clients = Vec::new();
    for client in 0..CLIENTS {
        let addr = addr.clone();
        clients.push(tokio::spawn(async move {
            let mut ws = RawWs::open(&addr).await;
            let id = support::next_request_id();
            ws.send_text(&initialize_text(id)).await;
            raw_answer(&mut ws, id).await;
            let id = support::next_request_id();
            ws.send_text(
                &json!({"jsonrpc": "2.0", "id": id, "method": "thread/start", "params": {}})
                    .to_string(),
            )
            .await;
            let started = raw_answer(&mut ws, id).await;
            let thread_id = started["result"]["thread"]["id"]
                .as_str()
                .expect("thread id")
                .to_owned();
            let id = support::next_request_id();
            let params = support::turn_start_params(&thread_id, "one two three four five six");
            ws.send_text(
                &json!({"jsonrpc": "2.0", "id": id, "method": "turn/start", "params": params})
                    .to_string(),
            )
            .await;
            ws.shutdown_write().await;
            let frames = ws.frames_until_closed().await;
            (client, id, frames)
        }));
    }
    let mut problems = Vec::new();
    for task in clients {
        let (client, id, frames) = task.await.expect("a client task panicked");
        let messages = frame_messages(&frames);
        let turn_id = messages
            .iter()
            .find(|m| m["id"] == json!(id))
            .and_then(|m| m["result"]["turn"]["id"].as_str())
            .map(str::to_owned);
        let Some(turn_id) = turn_id else {
            problems.push(format!(
                "client {client}: no turn/start result: {messages:?}"
            ));
            continue;
        };
        let completed = messages.iter().find(|m| {
            m["method"] == "turn/completed"
                && support::notification_turn_id(m) == Some(turn_id.as_str())
        });
        match completed {
            Some(m) if m["params"]["turn"]["status"] == "completed" => {}
            other => problems.push(format!(
                "client {client}: turn {turn_id} ended with {other:?}; received {messages:?}"
            )),
        }
        let deltas: String = messages
            .iter()
            .filter(|m| m["method"] == "item/agentMessage/delta")
            .filter_map(|m| m["params"]["delta"].as_str())
            .collect();
        if deltas != "one two three four five six" {
            problems.push(format!("client {client}: deltas {deltas:?}"));
        }
        let last = frames.last();
        if last.and_then(raw_ws::Frame::close_code) != Some(1000) {
            problems.push(format!(
                "client {client}: expected a 1000 close frame last, got {last:?}"
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "half-closed clients ({CLIENTS}) lost part of their turn:\n{}",
        problems.join("\n")
    );
    server.shutdown().await;
}

/// Sends `pieces` one at a time, a quarter of a second apart, until the
/// server closes; returns the code of its close frame (`None` when the
/// pieces ran out first, or the connection ended without one).
async fn trickle_until_closed(ws: &mut RawWs, pieces: &[Vec<u8>]) -> Option<u16> {
    for piece in pieces {
        ws.send_bytes(piece).await;
        match tokio::time::timeout(Duration::from_millis(250), ws.next_frame()).await {
            Err(_) => continue,
            Ok(Some(frame)) if frame.opcode == raw_ws::OP_CLOSE => return frame.close_code(),
            Ok(Some(_)) => continue,
            Ok(None) => return None,
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_trickled_past_its_deadline_is_closed() {
    // One byte, or one continuation frame, every quarter second keeps
    // beating the one-second idle timeout; the message deadline (3 s)
    // ends both connections.
    let mut server = Server::start_with(
        Transport::WebSocket,
        ServerOptions::default()
            .arg("--ws-idle-timeout")
            .arg("1")
            .arg("--ws-message-timeout")
            .arg("3"),
    )
    .await;
    let addr = server.ws_addr();
    // Two minutes of pieces: far more than the deadline.
    const PIECES: usize = 480;

    let mut bytewise = RawWs::open(&addr).await;
    let frame = raw_ws::client_frame(raw_ws::OP_TEXT, &vec![b' '; PIECES * 2]);
    let bytes: Vec<Vec<u8>> = frame.iter().take(PIECES).map(|b| vec![*b]).collect();
    let code = trickle_until_closed(&mut bytewise, &bytes).await;
    assert_eq!(code, Some(1008), "a frame sent byte by byte");

    let mut fragments = RawWs::open(&addr).await;
    let mut first = raw_ws::client_frame(raw_ws::OP_TEXT, b"[");
    first[0] &= 0x7F; // not final
    let mut pieces = vec![first];
    for _ in 0..PIECES {
        let mut more = raw_ws::client_frame(0x0, b" ");
        more[0] &= 0x7F;
        pieces.push(more);
    }
    let code = trickle_until_closed(&mut fragments, &pieces).await;
    assert_eq!(code, Some(1008), "continuation frames one by one");

    // A client sending whole messages is unaffected.
    let mut client = server.connect().await;
    client.initialize("whole", "1").await;
    client.request("model/list", json!({}), None).await.result();
    server.shutdown().await;
}

#[tokio::test]
async fn a_head_that_is_not_http_gets_400_at_once() {
    // A TLS ClientHello (or any garbage) never ends in a blank line: it
    // used to hold its descriptor until the head timeout, unanswered.
    let server = Server::start(Transport::WebSocket).await;
    let addr = server.ws_addr();
    for garbage in [
        &b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"[..],
        b"\x00\x01garbage",
    ] {
        let response = raw_ws::http_exchange(&addr, garbage).await;
        assert!(
            status_line(&response).starts_with("HTTP/1.1 400"),
            "{garbage:?} got {response:?}"
        );
    }
    server.shutdown().await;
}

/// The body of an HTTP response (after the blank line).
fn body_of(response: &str) -> &str {
    response.split_once("\r\n\r\n").map_or("", |(_, body)| body)
}

/// Asserts `response` has `status` and a body of one line containing
/// `reason`.
fn assert_one_line_answer(response: &str, status: &str, reason: &str) {
    assert!(
        status_line(response).starts_with(&format!("HTTP/1.1 {status}")),
        "expected {status}: {response:?}"
    );
    let body = body_of(response);
    assert!(
        body.ends_with('\n') && body.lines().count() == 1 && body.contains(reason),
        "expected a one-line reason containing {reason:?}: {response:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_heads_get_431_and_refused_upgrades_get_400_or_426() {
    let server = Server::start(Transport::WebSocket).await;
    let addr = server.ws_addr();
    let filler = format!("X-Filler: {}\r\n", "a".repeat(20 * 1024));

    // A complete head past 16 KiB, and one that never ends.
    let complete = raw_ws::upgrade_request(&addr, &filler);
    let response = raw_ws::http_exchange(&addr, complete.as_bytes()).await;
    assert_one_line_answer(&response, "431 Request Header Fields Too Large", "16 KiB");
    let endless = format!("GET / HTTP/1.1\r\nHost: {addr}\r\n{filler}");
    let response = raw_ws::http_exchange(&addr, endless.as_bytes()).await;
    assert_one_line_answer(&response, "431 Request Header Fields Too Large", "16 KiB");

    // No key: 400 naming the header.
    let no_key = format!(
        "GET / HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\n\r\n"
    );
    let response = raw_ws::http_exchange(&addr, no_key.as_bytes()).await;
    assert_one_line_answer(&response, "400 Bad Request", "Sec-WebSocket-Key");

    // Another version: 426 with the version spoken.
    let version_8 = format!(
        "GET / HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n\r\n"
    );
    let response = raw_ws::http_exchange(&addr, version_8.as_bytes()).await;
    assert_one_line_answer(&response, "426 Upgrade Required", "version 13");
    let head = response.split_once("\r\n\r\n").map_or("", |(head, _)| head);
    assert!(
        head.lines().any(|l| l == "Sec-WebSocket-Version: 13"),
        "426 must name the version spoken: {response:?}"
    );

    // None of this disturbs the server.
    let health = healthz(&addr).await;
    assert!(status_line(&health).starts_with("HTTP/1.1 200"), "{health}");
    let mut ws = RawWs::open(&addr).await;
    let id = support::next_request_id();
    ws.send_text(&initialize_text(id)).await;
    let answer = ws.next_frame().await.expect("an answer");
    let answer: Value = serde_json::from_str(&answer.text().expect("a text frame")).expect("JSON");
    assert_eq!(answer["id"], json!(id), "{answer}");
    server.shutdown().await;
}

/// The soft and hard limits on open files of process `pid`.
fn open_file_limits(pid: u32) -> (u64, u64) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("read limits");
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("a Max open files line");
    let numbers: Vec<u64> = line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    (numbers[0], numbers[1])
}

#[tokio::test]
async fn the_open_file_limit_is_raised_to_the_hard_one_and_a_budget_that_cannot_fit_is_named() {
    // A soft limit of 256 under a hard one of 512; the limits configured
    // need 1000 connections + 100 running turns' history files + the
    // reserve (loaded threads hold no file while idle).
    let mut server = Server::start_with(
        Transport::WebSocket,
        ServerOptions::default()
            .open_files(256, 512)
            .arg("--max-connections")
            .arg("1000")
            .arg("--max-running-turns")
            .arg("100")
            .arg("--max-loaded-threads")
            .arg("300"),
    )
    .await;
    assert_eq!(open_file_limits(server.pid()), (512, 512));
    let warning = server
        .wait_for_stderr(|line| line.contains("the limit on open files (512)"))
        .await;
    for number in [
        "1164",
        "1000 connections",
        "100 history files of running turns",
    ] {
        assert!(warning.contains(number), "{number} in {warning}");
    }
    server.shutdown().await;

    // Limits that fit: no warning.
    let server = Server::start_with(
        Transport::WebSocket,
        ServerOptions::default()
            .open_files(256, 512)
            .arg("--max-connections")
            .arg("100")
            .arg("--max-loaded-threads")
            .arg("1000"),
    )
    .await;
    assert_eq!(open_file_limits(server.pid()), (512, 512));
    let finished = server.shutdown().await;
    assert!(
        !finished
            .stderr()
            .iter()
            .any(|l| l.contains("is below what the configured limits can need")),
        "{:?}",
        finished.stderr()
    );
}

/// One attacker of [`idle_connections_do_not_lock_valid_clients_out`]: holds
/// an idle TCP connection (it never sends a byte), and when the server
/// closes it opens another, at most one per `period`, starting after
/// `start`. Counts its first connection in `established`.
async fn idle_attacker(
    addr: String,
    start: Duration,
    period: Duration,
    established: std::sync::Arc<tokio::sync::Semaphore>,
) {
    tokio::time::sleep(start).await;
    let mut first = true;
    loop {
        let began = tokio::time::Instant::now();
        if let Ok(mut stream) = TcpStream::connect(&addr).await {
            if std::mem::take(&mut first) {
                established.add_permits(1);
            }
            // Idle until the server closes it (anything it sends is read
            // and dropped).
            let mut sink = [0u8; 256];
            while let Ok(1..) = stream.read(&mut sink).await {}
        }
        tokio::time::sleep_until(began + period).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_do_not_lock_valid_clients_out() {
    // The attack: a server with 256 descriptors, and hundreds of
    // TCP connections that never send a request head, each replaced as
    // soon as the server closes it. Before the fix those connections took
    // every descriptor: a valid client waited in the listen backlog behind
    // them, and once in, found no descriptor for its work (`thread/start`
    // opens the thread's history file). Each attacker connects at most
    // once per PERIOD: together they open ATTACKERS / PERIOD connections a
    // second, more than the server could time out with its 5 s head
    // timeout and 256 descriptors, so without the fix the server stays
    // saturated for as long as the attack lasts. With it, connections
    // before their upgrade hold at most 64 descriptors (a quarter of 256)
    // and a newcomer evicts the oldest: at ~67 attacks a second, a valid
    // client's head (sent at once) has about a second to be read, ample
    // for a server that reads it within a round trip.
    const ATTACKERS: u32 = 400;
    const PERIOD: Duration = Duration::from_secs(6);
    const VALID_CLIENTS: usize = 9;
    let mut server = Server::start_with(
        Transport::WebSocket,
        ServerOptions::default().open_files(256, 256),
    )
    .await;
    let addr = server.ws_addr();

    let established = std::sync::Arc::new(tokio::sync::Semaphore::new(0));
    let mut attackers = tokio::task::JoinSet::new();
    for i in 0..ATTACKERS {
        // Spread over the period, so they come at a steady rate.
        let start = PERIOD * i / ATTACKERS;
        attackers.spawn(idle_attacker(
            addr.clone(),
            start,
            PERIOD,
            std::sync::Arc::clone(&established),
        ));
    }
    // Every attacker is connected (or waiting in the listen backlog).
    let _all = tokio::time::timeout(TIMEOUT, established.acquire_many(ATTACKERS))
        .await
        .expect("the attackers connected in time")
        .expect("semaphore open");

    let url = format!("ws://{addr}");
    for client in 0..VALID_CLIENTS {
        let (mut ws, _) = tokio::time::timeout(TIMEOUT, tokio_tungstenite::connect_async(&url))
            .await
            .unwrap_or_else(|_| panic!("valid client {client}: upgrade answered in time"))
            .unwrap_or_else(|e| panic!("valid client {client}: upgrade refused: {e}"));
        let init = initialize(&mut ws).await;
        assert!(
            init.get("result").is_some(),
            "valid client {client}: {init}"
        );
        let started = support::ws_request(&mut ws, "thread/start", json!({})).await;
        assert!(
            started["result"]["thread"]["id"].is_string(),
            "valid client {client}: {started}"
        );
        let _ = ws.close(None).await;
    }
    // The attack did fill the connections before their upgrade (a quarter
    // of 256 descriptors), and that was logged.
    server
        .wait_for_stderr(|l| l.contains("too many connections before their upgrade"))
        .await;
    attackers.shutdown().await;
}
