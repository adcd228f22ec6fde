//! `$SKEIN_HOME/config.toml` as Codex users write it: unknown top-level keys
//! are warned about with their file and line (refused with
//! `--strict-config`), Codex's own keys load quietly, and Codex's `[otel]`
//! table exports where it says, against the real `skein` binary.

mod support;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value;

use support::otlp_receiver::Receiver;
use support::{Server, ServerOptions, SkeinHome, Transport, serve_refused};

/// A Codex user's file with a typo on line 3.
const TYPO_CONFIG: &str = "model_reasoning_effort = \"high\"\n\
approval_policy = \"never\"\n\
modle = \"gpt-5\"\n\
\n\
[tui]\n\
notifications = true\n";

#[tokio::test]
async fn an_unknown_key_is_warned_about_with_its_file_and_line_and_codex_keys_are_not() {
    let home = SkeinHome::new();
    let config = home.path().join("config.toml");
    std::fs::write(&config, TYPO_CONFIG).expect("write config.toml");
    let server =
        Server::start_with(Transport::WebSocket, ServerOptions::default().home(&home)).await;
    let finished = server.shutdown().await;
    let stderr = finished.stderr().join("\n");
    let expected = format!("{}:3: unknown key `modle`", config.display());
    let warnings: Vec<&String> = finished
        .stderr()
        .iter()
        .filter(|l| l.contains("WARN") && l.contains(&expected))
        .collect();
    assert_eq!(
        warnings.len(),
        1,
        "one warning naming {expected}:\n{stderr}"
    );
    for codex_key in ["model_reasoning_effort", "approval_policy", "`tui`"] {
        assert!(
            !finished
                .stderr()
                .iter()
                .any(|l| l.contains("WARN") && l.contains(codex_key)),
            "{codex_key} is Codex's and not warned about:\n{stderr}"
        );
    }
}

#[tokio::test]
async fn strict_config_refuses_to_start_naming_the_key() {
    let home = SkeinHome::new();
    let config = home.path().join("config.toml");
    std::fs::write(&config, TYPO_CONFIG).expect("write config.toml");
    let run = |extra: &'static [&'static str]| {
        let mut args = vec!["--listen", "ws://127.0.0.1:0", "--strict-config"];
        args.extend(extra);
        let home = home.path().to_path_buf();
        async move { serve_refused(&home, &args, &[]).await }
    };
    let stderr = run(&[]).await;
    assert!(
        stderr.contains(&format!("{}:3: unknown key `modle`", config.display())),
        "{stderr}"
    );
    assert!(stderr.contains("--strict-config"), "{stderr}");
    assert!(!stderr.contains("listening on"), "{stderr}");

    // An unknown key given as -c is named by its override.
    std::fs::write(&config, "model_reasoning_effort = \"high\"\n").expect("rewrite");
    let stderr = run(&["-c", "max_tool_round=4"]).await;
    assert!(
        stderr.contains("-c max_tool_round=4: unknown key `max_tool_round`"),
        "{stderr}"
    );
}

/// A Codex `[otel]` table sending spans to `receiver` over OTLP/HTTP.
fn codex_otel_config(receiver: &Receiver) -> String {
    format!(
        r#"model_reasoning_effort = "high"

[otel]
environment = "staging"
log_user_prompt = false
exporter = "none"
metrics_exporter = "none"
trace_exporter = {{ otlp-http = {{ endpoint = "{}/v1/traces", protocol = "binary", headers = {{ "x-codex-team" = "skein-tests" }} }} }}
"#,
        receiver.url
    )
}

/// Every span name and `deployment.environment.name` of the trace exports.
fn spans_and_environments(requests: Vec<ExportTraceServiceRequest>) -> (Vec<String>, Vec<String>) {
    let mut names = Vec::new();
    let mut environments = Vec::new();
    for request in requests {
        for resource_spans in request.resource_spans {
            for attribute in resource_spans
                .resource
                .map(|r| r.attributes)
                .unwrap_or_default()
            {
                if attribute.key == "deployment.environment.name"
                    && let Some(any_value::Value::StringValue(v)) =
                        attribute.value.and_then(|v| v.value)
                {
                    environments.push(v);
                }
            }
            for scope in resource_spans.scope_spans {
                names.extend(scope.spans.into_iter().map(|span| span.name));
            }
        }
    }
    (names, environments)
}

/// Starts a server in `home` with `options`, makes one request, and stops
/// it (which flushes every span).
async fn one_request(home: &SkeinHome, options: ServerOptions) -> Vec<String> {
    let mut server = Server::start_with(Transport::WebSocket, options.home(home)).await;
    let mut client = server.connect().await;
    client.initialize("config-file-test", "1").await;
    drop(client);
    server.shutdown().await.stderr().to_vec()
}

#[tokio::test]
async fn a_codex_otel_table_exports_spans_where_it_says() {
    let receiver = Receiver::start().await;
    let home = SkeinHome::new();
    std::fs::write(
        home.path().join("config.toml"),
        codex_otel_config(&receiver),
    )
    .expect("write config.toml");
    let stderr = one_request(&home, ServerOptions::default()).await;
    let stderr = stderr.join("\n");

    let requests = receiver.trace_requests();
    assert!(
        !requests.is_empty(),
        "no spans reached the endpoint of [otel] trace_exporter: {:?}\n{stderr}",
        receiver.summary()
    );
    let (names, environments) = spans_and_environments(requests);
    assert!(names.iter().any(|n| n == "initialize"), "{names:?}");
    assert!(
        !environments.is_empty() && environments.iter().all(|e| e == "staging"),
        "environment as deployment.environment.name: {environments:?}"
    );
    for headers in receiver.headers("/v1/traces") {
        assert!(
            headers
                .iter()
                .any(|(k, v)| k == "x-codex-team" && v == "skein-tests"),
            "the table's headers on every export: {headers:?}"
        );
    }
    assert!(
        receiver.bodies("/v1/metrics").is_empty(),
        "metrics_exporter = \"none\" sends no metrics: {:?}",
        receiver.summary()
    );
    assert!(
        !stderr.contains("skein-tests"),
        "header values are not logged:\n{stderr}"
    );
}

#[tokio::test]
async fn the_standard_variables_win_over_the_codex_otel_table() {
    let from_table = Receiver::start().await;
    let from_env = Receiver::start().await;
    let home = SkeinHome::new();
    std::fs::write(
        home.path().join("config.toml"),
        codex_otel_config(&from_table),
    )
    .expect("write config.toml");
    let endpoint = format!("{}/v1/traces", from_env.url);
    let stderr = one_request(
        &home,
        ServerOptions::default()
            .env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", &endpoint)
            .env(
                "OTEL_RESOURCE_ATTRIBUTES",
                "deployment.environment.name=prod",
            ),
    )
    .await;
    let (names, environments) = spans_and_environments(from_env.trace_requests());
    assert!(
        names.iter().any(|n| n == "initialize"),
        "{names:?}\n{}",
        stderr.join("\n")
    );
    assert!(environments.iter().all(|e| e == "prod"), "{environments:?}");
    assert!(
        from_table.summary().is_empty(),
        "the table's endpoint was used: {:?}",
        from_table.summary()
    );
}
