//! The first hour of a new user, against the real `skein` binary: getting
//! `skein` on the PATH with shell completions, checking a setup before the
//! first turn, and the messages of a broken configuration or listener.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};

use support::{Server, ServerOptions, SkeinHome, TIMEOUT, Transport, skein_bin};

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
    support::serve_refused(home.path(), &["--listen", listen], &[]).await
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
    let options = ServerOptions::default().listen("ws://localhost:0");
    let server = Server::start_with(Transport::WebSocket, options).await;
    let addr = server.ws_addr();
    assert!(addr.starts_with("127.0.0.1:"), "{addr}");
    // It answers there.
    let stream = tokio::net::TcpStream::connect(&addr).await;
    assert!(stream.is_ok(), "connect to {addr}: {stream:?}");
    drop(stream);
    server.shutdown().await;
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
    let options = mock.server_options();
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

/// `skein doctor ARGS` with the OTLP environment cleared, as JSON.
async fn doctor_json(
    home: &SkeinHome,
    args: &[&str],
    env: &[(&str, &str)],
) -> (bool, serde_json::Value) {
    let mut all = vec!["doctor", "--json"];
    all.extend_from_slice(args);
    let mut command = tokio::process::Command::new(skein_bin());
    command
        .args(&all)
        .env("SKEIN_HOME", home.path())
        .env_remove("SKEIN_TRACE_DIR")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (key, _) in std::env::vars() {
        if key.starts_with("OTEL_") {
            command.env_remove(key);
        }
    }
    for (key, value) in env {
        command.env(key, value);
    }
    let output = tokio::time::timeout(TIMEOUT, command.output())
        .await
        .expect("skein doctor exited in time")
        .expect("run skein doctor");
    let stdout = text(&output.stdout);
    let report: serde_json::Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}):\n{stdout}\n{}", text(&output.stderr)));
    assert_eq!(
        report["ok"].as_bool(),
        Some(output.status.success()),
        "exit status follows `ok`: {report}"
    );
    (output.status.success(), report)
}

/// The check `check` of `item` in a doctor report.
fn check<'a>(report: &'a serde_json::Value, check: &str, item: &str) -> &'a serde_json::Value {
    report["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .find(|c| c["check"] == check && c["item"] == item)
        .unwrap_or_else(|| panic!("no check {check} of {item:?}: {report}"))
}

/// The config.toml of the README's "A local OpenAI-compatible server".
fn readme_example_config() -> String {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).expect("README.md");
    let start = readme
        .find("cat > ~/.skein/config.toml <<'TOML'\n")
        .expect("the README's example config");
    let body = &readme[start..];
    let body = &body[body.find('\n').expect("newline") + 1..];
    body[..body.find("\nTOML\n").expect("end of the example")].to_owned() + "\n"
}

#[tokio::test]
async fn doctor_is_clean_with_the_readme_example_config() {
    let home = SkeinHome::new();
    std::fs::write(home.path().join("config.toml"), readme_example_config()).expect("write");
    let (ok, report) = doctor_json(&home, &[], &[]).await;
    assert!(ok, "{report:#}");
    assert_eq!(
        check(
            &report,
            "config",
            &home.path().join("config.toml").display().to_string()
        )["status"],
        "ok"
    );
    assert_eq!(check(&report, "provider_key", "local")["status"], "ok");
    assert_eq!(
        check(
            &report,
            "trace_store",
            &home.path().join("traces").display().to_string()
        )["status"],
        "ok"
    );
    assert_eq!(check(&report, "descriptors", "")["status"], "ok");
    // Every check has the four stable fields.
    for c in report["checks"].as_array().expect("checks") {
        for field in ["check", "item", "status", "detail"] {
            assert!(c.get(field).is_some(), "{field} in {c}");
        }
    }
    // The text form ends with the summary.
    let output = run_skein(&home, &["doctor"], &[]).await;
    assert!(output.status.success());
    assert!(
        text(&output.stdout).ends_with("checks, all fine\n"),
        "{}",
        text(&output.stdout)
    );
}

#[tokio::test]
async fn doctor_says_what_is_wrong_per_item_and_exits_non_zero() {
    let home = SkeinHome::new();
    std::fs::write(
        home.path().join("config.toml"),
        "modle = \"typo\"\n\
         model = \"m\"\n\
         model_provider = \"keyed\"\n\
         [model_providers.keyed]\n\
         base_url = \"http://127.0.0.1:9/v1\"\n\
         env_key = \"SKEIN_DOCTOR_SET_KEY\"\n\
         [model_providers.unkeyed]\n\
         base_url = \"http://127.0.0.1:9/v1\"\n\
         env_key = \"SKEIN_DOCTOR_UNSET_KEY\"\n\
         [mcp_servers.missing]\n\
         command = \"skein-doctor-no-such-command\"\n",
    )
    .expect("write");
    let not_a_dir = home.path().join("store-is-a-file");
    std::fs::write(&not_a_dir, "x").expect("write");
    // A port nobody listens on: bound, then closed.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = closed.local_addr().expect("addr").port();
    drop(closed);
    let endpoint = format!("http://127.0.0.1:{port}");
    let secret = "sk-doctor-secret-value-0123456789";
    let (ok, report) = doctor_json(
        &home,
        &[
            "--trace-dir",
            &not_a_dir.display().to_string(),
            "--otlp-endpoint",
            &endpoint,
            "--listen",
            "ws://127.0.0.1:0",
            "--max-connections",
            "1000000000",
        ],
        &[("SKEIN_DOCTOR_SET_KEY", secret)],
    )
    .await;
    assert!(!ok, "{report:#}");
    let rendered = report.to_string();
    assert!(
        !rendered.contains(secret),
        "a key's value is never shown: {rendered}"
    );
    let unknown = check(&report, "unknown_key", "modle");
    assert_eq!(unknown["status"], "fail");
    assert!(
        unknown["detail"]
            .as_str()
            .unwrap_or("")
            .contains("config.toml:1"),
        "{unknown}"
    );
    let keyed = check(&report, "provider_key", "keyed");
    assert_eq!(keyed["status"], "ok", "{keyed}");
    assert!(
        keyed["detail"]
            .as_str()
            .unwrap_or("")
            .contains("SKEIN_DOCTOR_SET_KEY is set")
    );
    let unkeyed = check(&report, "provider_key", "unkeyed");
    assert_eq!(unkeyed["status"], "fail", "{unkeyed}");
    assert!(
        unkeyed["detail"]
            .as_str()
            .unwrap_or("")
            .contains("SKEIN_DOCTOR_UNSET_KEY")
    );
    assert_eq!(check(&report, "mcp_command", "missing")["status"], "fail");
    let store = check(&report, "trace_store", &not_a_dir.display().to_string());
    assert_eq!(store["status"], "fail", "{store}");
    let otlp = check(&report, "otlp_endpoint", &format!("{endpoint}/v1/traces"));
    assert_eq!(otlp["status"], "fail", "{otlp}");
    let descriptors = check(&report, "descriptors", "");
    assert_eq!(descriptors["status"], "fail", "{descriptors}");
    assert!(
        descriptors["detail"]
            .as_str()
            .unwrap_or("")
            .contains("--max-connections")
    );

    // The same `-c` overrides as serve: fixing the typo and the key there
    // leaves those items fine.
    let (_, report) = doctor_json(
        &home,
        &[
            "-c",
            "model_providers.unkeyed.env_key=\"SKEIN_DOCTOR_SET_KEY\"",
        ],
        &[("SKEIN_DOCTOR_SET_KEY", secret)],
    )
    .await;
    assert_eq!(
        check(&report, "provider_key", "unkeyed")["status"],
        "ok",
        "{report}"
    );
}

#[tokio::test]
async fn doctor_reaches_the_otlp_collector_and_reports_a_broken_file() {
    let home = SkeinHome::new();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let endpoint = format!("http://{}", listener.local_addr().expect("addr"));
    let (ok, report) = doctor_json(&home, &[], &[("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)]).await;
    assert!(ok, "{report:#}");
    assert_eq!(
        check(&report, "otlp_endpoint", &format!("{endpoint}/v1/traces"))["status"],
        "ok"
    );
    drop(listener);

    std::fs::write(home.path().join("config.toml"), "[otel\n").expect("write");
    let output = run_skein(&home, &["doctor"], &[]).await;
    assert!(!output.status.success());
    let stdout = text(&output.stdout);
    assert!(stdout.starts_with("FAIL  config"), "{stdout}");
    assert!(
        stdout.contains("config.toml:1:6: not valid TOML"),
        "{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_start_mcp_starts_each_server_and_lists_its_tools() {
    let home = SkeinHome::new();
    let mut args = vec![
        "--start-mcp".to_owned(),
        "-c".to_owned(),
        "mcp_servers.broken.command=\"false\"".to_owned(),
    ];
    // Optional: the broken server is checked either way.
    let venv = support::find_mcp_venv();
    if let Some((time_bin, _)) = &venv {
        args.push("-c".to_owned());
        args.push(format!(
            "mcp_servers.time.command=\"{}\"",
            time_bin.display()
        ));
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (ok, report) = doctor_json(&home, &args, &[]).await;
    assert!(!ok, "{report:#}");
    assert_eq!(check(&report, "mcp_command", "broken")["status"], "ok");
    assert_eq!(
        check(&report, "mcp_start", "broken")["status"],
        "fail",
        "{report:#}"
    );
    if venv.is_some() {
        let time = check(&report, "mcp_start", "time");
        assert_eq!(time["status"], "ok", "{time}");
        assert!(
            time["detail"]
                .as_str()
                .unwrap_or("")
                .contains("get_current_time"),
            "{time}"
        );
    }
}

/// A `url` MCP server has no command to find: doctor checks that the
/// variable its bearer token comes from is set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_checks_the_bearer_token_variable_of_a_url_mcp_server() {
    let home = SkeinHome::new();
    let args = [
        "-c",
        "mcp_servers.web.url=\"https://mcp.example.com/mcp\"",
        "-c",
        "mcp_servers.web.bearer_token_env_var=\"SKEIN_TEST_WEB_TOKEN\"",
    ];
    let (ok, report) = doctor_json(&home, &args, &[]).await;
    assert!(!ok, "{report:#}");
    let web = check(&report, "mcp_url", "web");
    assert_eq!(web["status"], "fail", "{web}");
    assert!(
        web["detail"]
            .as_str()
            .unwrap_or("")
            .contains("SKEIN_TEST_WEB_TOKEN"),
        "{web}"
    );
    let (_, report) = doctor_json(&home, &args, &[("SKEIN_TEST_WEB_TOKEN", "t")]).await;
    assert_eq!(
        check(&report, "mcp_url", "web")["status"],
        "ok",
        "{report:#}"
    );
}
