//! The first hour of a new user, against the real `skein` binary: getting
//! `skein` on the PATH with shell completions, checking a setup before the
//! first turn, and the messages of a broken configuration or listener.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};

use support::{SkeinHome, TIMEOUT, skein_bin};

/// The repository's root.
fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives in the repository")
        .to_path_buf()
}

/// Runs `skein ARGS` with `SKEIN_HOME` at `home` and no standard input,
/// to its end.
async fn run_skein(home: &SkeinHome, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = tokio::process::Command::new(skein_bin());
    command
        .args(args)
        .env("SKEIN_HOME", home.path())
        .env("NO_COLOR", "1")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (key, value) in env {
        command.env(key, value);
    }
    tokio::time::timeout(TIMEOUT, command.output())
        .await
        .expect("skein exited in time")
        .expect("run skein")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test]
async fn completions_are_generated_for_bash_zsh_and_fish() {
    let home = SkeinHome::new();
    for (shell, marker) in [
        ("bash", "complete -F _skein"),
        ("zsh", "#compdef skein"),
        ("fish", "complete -c skein"),
    ] {
        let output = run_skein(&home, &["completions", shell], &[]).await;
        let script = text(&output.stdout);
        assert!(output.status.success(), "{shell}: {}", text(&output.stderr));
        assert!(
            script.contains(marker),
            "{shell} script lacks {marker:?}:\n{script}"
        );
        for word in ["serve", "trace", "completions", "listen"] {
            assert!(script.contains(word), "{shell} script lacks {word}");
        }
    }
    // The bash script is valid bash, when bash is there to say so.
    let bash = run_skein(&home, &["completions", "bash"], &[]).await;
    let file = home.path().join("skein.bash");
    std::fs::write(&file, &bash.stdout).expect("write the script");
    if let Ok(checked) = std::process::Command::new("bash")
        .arg("-n")
        .arg(&file)
        .output()
    {
        assert!(checked.status.success(), "{}", text(&checked.stderr));
    }
    // Another shell is a usage error naming the ones there are.
    let output = run_skein(&home, &["completions", "tcsh"], &[]).await;
    assert!(!output.status.success());
    let stderr = text(&output.stderr);
    assert!(stderr.contains("bash, zsh, fish"), "{stderr}");
}

#[test]
fn the_readme_says_how_skein_gets_on_the_path_and_its_completions() {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).expect("README.md");
    assert!(
        readme.contains("cargo install --locked --path app-server"),
        "README gives the install command"
    );
    let manifest = std::fs::read_to_string(repo_root().join("app-server/Cargo.toml"))
        .expect("app-server/Cargo.toml");
    assert!(
        manifest.contains("[[bin]]\nname = \"skein\""),
        "`cargo install --path app-server` installs a binary named skein"
    );
    for shell in ["bash", "zsh", "fish"] {
        assert!(
            readme.contains(&format!("skein completions {shell}")),
            "README shows completions for {shell}"
        );
    }
}

/// Starts `skein serve --listen LISTEN` and returns its stderr once it
/// exits (it is expected to refuse to start).
async fn serve_refused(home: &SkeinHome, listen: &str) -> String {
    let output = run_skein(
        home,
        &["serve", "--listen", listen, "--trace-dir", "none"],
        &[],
    )
    .await;
    let stderr = text(&output.stderr);
    assert!(!output.status.success(), "{listen} started:\n{stderr}");
    stderr
}

#[tokio::test]
async fn a_port_in_use_is_reported_once_with_the_os_error() {
    let home = SkeinHome::new();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a port");
    let addr = taken.local_addr().expect("local addr");
    let stderr = serve_refused(&home, &format!("ws://{addr}")).await;
    let os_error = std::io::Error::from(std::io::ErrorKind::AddrInUse).to_string();
    assert!(
        stderr.contains(&format!("cannot listen on {addr}")),
        "{stderr}"
    );
    assert_eq!(
        stderr.matches("(os error").count(),
        1,
        "the OS error once ({os_error}):\n{stderr}"
    );
}

#[tokio::test]
async fn ws_localhost_listens_on_loopback() {
    let home = SkeinHome::new();
    let mut child = tokio::process::Command::new(skein_bin())
        .args([
            "serve",
            "--listen",
            "ws://localhost:0",
            "--trace-dir",
            "none",
        ])
        .env("SKEIN_HOME", home.path())
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn skein");
    use tokio::io::AsyncBufReadExt as _;
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = tokio::io::BufReader::new(stderr).lines();
    let mut seen = Vec::new();
    let listening = tokio::time::timeout(TIMEOUT, async {
        while let Some(line) = lines.next_line().await.expect("read stderr") {
            if let Some(addr) = line.strip_prefix("listening on ws://") {
                return Some(addr.to_owned());
            }
            seen.push(line);
        }
        None
    })
    .await
    .expect("skein listened in time");
    let Some(addr) = listening else {
        panic!("skein exited without listening:\n{}", seen.join("\n"));
    };
    assert!(addr.starts_with("127.0.0.1:"), "{addr}");
    // It answers there.
    let stream = tokio::net::TcpStream::connect(&addr).await;
    assert!(stream.is_ok(), "connect to {addr}: {stream:?}");
    let _ = child.start_kill();
    let _ = child.wait().await;
}

#[tokio::test]
async fn an_out_of_range_port_or_a_bad_host_is_named() {
    let home = SkeinHome::new();
    let stderr = serve_refused(&home, "ws://127.0.0.1:99999").await;
    assert!(
        stderr.contains("port 99999 is out of range: a port is 0 to 65535"),
        "{stderr}"
    );
    let stderr = serve_refused(&home, "ws://example.invalid:4500").await;
    assert!(
        stderr.contains("host \"example.invalid\" is not an IP address"),
        "{stderr}"
    );
}

#[tokio::test]
async fn a_toml_syntax_error_shows_path_line_col_the_line_and_a_caret() {
    let home = SkeinHome::new();
    let config = home.path().join("config.toml");
    std::fs::write(&config, "model = \"echo\"\nmodel_provider = skein\n").expect("write");
    let stderr = serve_refused(&home, "stdio://").await;
    let lines: Vec<&str> = stderr.lines().collect();
    let first = format!("skein: error: {}:2:18: not valid TOML: ", config.display());
    let at = lines
        .iter()
        .position(|l| l.starts_with(&first))
        .unwrap_or_else(|| panic!("no line starting {first:?}:\n{stderr}"));
    assert_eq!(
        lines.get(at + 1),
        Some(&"model_provider = skein"),
        "{stderr}"
    );
    assert_eq!(
        lines.get(at + 2),
        Some(&"                 ^^^^^"),
        "{stderr}"
    );
}

#[tokio::test]
async fn a_bad_redaction_pattern_shows_where_in_the_file() {
    let home = SkeinHome::new();
    let config = home.path().join("config.toml");
    std::fs::write(&config, "[otel]\nredact = [\"sk-(unclosed\"]\n").expect("write");
    let stderr = serve_refused(&home, "stdio://").await;
    let lines: Vec<&str> = stderr.lines().collect();
    let first = format!(
        "skein: error: {}:2:15: key `otel.redact[0]`: pattern \"sk-(unclosed\" does not compile: unclosed group",
        config.display()
    );
    let at = lines
        .iter()
        .position(|l| *l == first)
        .unwrap_or_else(|| panic!("no line {first:?}:\n{stderr}"));
    assert_eq!(
        lines.get(at + 1),
        Some(&"redact = [\"sk-(unclosed\"]"),
        "{stderr}"
    );
    assert_eq!(lines.get(at + 2), Some(&"              ^"), "{stderr}");
}

#[tokio::test]
async fn model_echo_with_a_configured_provider_is_refused_as_ambiguous() {
    let home = SkeinHome::new();
    std::fs::write(
        home.path().join("config.toml"),
        "model = \"qwen\"\nmodel_provider = \"local\"\n\n[model_providers.local]\nbase_url = \"http://127.0.0.1:9/v1\"\n",
    )
    .expect("write");
    let output = run_skein(
        &home,
        &["serve", "--trace-dir", "none", "-c", "model=\"echo\""],
        &[],
    )
    .await;
    let stderr = text(&output.stderr);
    // Before, it started and `model/list` offered two models named `echo`.
    assert!(!output.status.success(), "started:\n{stderr}");
    assert!(stderr.contains("key `model`"), "{stderr}");
    assert!(stderr.contains("model_provider is \"local\""), "{stderr}");
    assert!(stderr.contains("-c model_provider=\"skein\""), "{stderr}");
    // Saying which provider is meant works.
    let output = run_skein(
        &home,
        &[
            "serve",
            "--trace-dir",
            "none",
            "-c",
            "model=\"echo\"",
            "-c",
            "model_provider=\"skein\"",
        ],
        &[],
    )
    .await;
    assert!(output.status.success(), "{}", text(&output.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unset_key_variable_is_warned_at_startup_and_named_by_a_401() {
    use serde_json::json;
    use support::mock_llm::{MockLlm, Reply, text_chunks};
    use support::{Server, ServerOptions, Transport};
    let mock = MockLlm::start(vec![
        Reply::Status(
            401,
            vec![],
            json!({"error": {"message": "You didn't provide an API key."}}),
        ),
        Reply::Stream(text_chunks(&["never"], 1, 1)),
    ])
    .await;
    // The mock provider's env_key is MOCK_API_KEY, left unset here.
    assert!(std::env::var_os("MOCK_API_KEY").is_none());
    let mut options = ServerOptions::default();
    for arg in mock.config_args() {
        options = options.arg(&arg);
    }
    let mut server = Server::start_with(Transport::Stdio, options).await;
    let warning = server
        .wait_for_stderr(|l| l.contains("WARN") && l.contains("MOCK_API_KEY"))
        .await;
    assert!(
        warning.contains("model provider `mock`") && warning.contains("is not set"),
        "{warning}"
    );
    let mut client = server.connect().await;
    client.initialize("e2e-install-check", "0.0.1").await;
    let thread_id = client.start_thread().await;
    let turn_id = client.start_turn(&thread_id, "hi", None).await.turn_id();
    let completed = client.wait_for_turn_completed(&turn_id).await;
    assert_eq!(
        completed["params"]["turn"]["status"], "failed",
        "{completed}"
    );
    let message = completed["params"]["turn"]["error"]["message"]
        .as_str()
        .expect("an error message");
    assert!(message.contains("401"), "{message}");
    assert!(
        message.contains(
            "the environment variable MOCK_API_KEY (model_providers.mock.env_key) is not set"
        ),
        "{message}"
    );
    client.close().await;
    server.shutdown().await;
}
