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
