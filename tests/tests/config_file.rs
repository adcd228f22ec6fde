//! `$SKEIN_HOME/config.toml` as Codex users write it: unknown top-level keys
//! are warned about with their file and line (refused with
//! `--strict-config`), Codex's own keys load quietly, and Codex's `[otel]`
//! table exports where it says, against the real `skein` binary.

mod support;

use std::process::Stdio;

use support::{Server, ServerOptions, SkeinHome, TIMEOUT, Transport, skein_bin};

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
        let mut command = tokio::process::Command::new(skein_bin());
        command
            .args([
                "serve",
                "--listen",
                "ws://127.0.0.1:0",
                "--trace-dir",
                "none",
                "--strict-config",
            ])
            .args(extra)
            .env("SKEIN_HOME", home.path())
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        async move {
            tokio::time::timeout(TIMEOUT, command.output())
                .await
                .expect("skein exited in time")
                .expect("run skein")
        }
    };
    let output = run(&[]).await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success(),
        "started despite the typo:\n{stderr}"
    );
    assert!(
        stderr.contains(&format!("{}:3: unknown key `modle`", config.display())),
        "{stderr}"
    );
    assert!(stderr.contains("--strict-config"), "{stderr}");
    assert!(!stderr.contains("listening on"), "{stderr}");

    // An unknown key given as -c is named by its override.
    std::fs::write(&config, "model_reasoning_effort = \"high\"\n").expect("rewrite");
    let output = run(&["-c", "max_tool_round=4"]).await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains("-c max_tool_round=4: unknown key `max_tool_round`"),
        "{stderr}"
    );
}
