//! The servers under test: how each is started, found and stopped.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, bail};
use tempfile::TempDir;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::mpsc;

/// Bound on starting or stopping a server.
pub const PROCESS_TIMEOUT: Duration = Duration::from_secs(60);

/// Connection limit given to every server that has one: far above what
/// any scenario opens.
pub const MAX_CONNECTIONS: u32 = 20_000;

/// Paths of the executables the harness runs.
#[derive(Clone, Debug)]
pub struct Bins {
    /// The release `skein` binary.
    pub skein: PathBuf,
    /// Another `skein` build measured beside it (`--baseline`), if any.
    pub baseline: Option<PathBuf>,
    /// `bench-jsonrpsee`.
    pub jsonrpsee: PathBuf,
    /// Another `bench-jsonrpsee` build whose middleware is measured beside
    /// it (`--baseline-jsonrpsee`), if any.
    pub baseline_jsonrpsee: Option<PathBuf>,
    /// `bench-ceiling`.
    pub ceiling: PathBuf,
    /// `bench-line-echo`.
    pub line_echo: PathBuf,
    /// `bench-rmcp`.
    pub rmcp: PathBuf,
    /// The canned results file the comparison servers answer with.
    pub results: PathBuf,
}

/// One server configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Target {
    /// Skein with the local store, requests carrying a sampled carrier.
    SkeinTraced,
    /// Skein with the local store, requests carrying an unsampled carrier.
    SkeinUnsampled,
    /// Skein with tracing off (`OTEL_SDK_DISABLED=true`, `--trace-dir none`).
    SkeinOff,
    /// The `--baseline` build, configured as [`Target::SkeinTraced`].
    BaselineTraced,
    /// The `--baseline` build, configured as [`Target::SkeinOff`].
    BaselineOff,
    /// The jsonrpsee server.
    Jsonrpsee,
    /// The jsonrpsee server with `--middleware`.
    JsonrpseeMiddleware,
    /// The `--baseline-jsonrpsee` build with `--middleware`.
    BaselineJsonrpseeMiddleware,
    /// The bare tokio-tungstenite server.
    Ceiling,
    /// The plain tokio stdio line responder.
    LineEcho,
}

impl Target {
    /// Name in the tables.
    pub fn label(self) -> &'static str {
        match self {
            Target::SkeinTraced => "skein traced",
            Target::SkeinUnsampled => "skein unsampled",
            Target::SkeinOff => "skein off",
            Target::BaselineTraced => "baseline traced",
            Target::BaselineOff => "baseline off",
            Target::Jsonrpsee => "jsonrpsee",
            Target::JsonrpseeMiddleware => "jsonrpsee + middleware",
            Target::BaselineJsonrpseeMiddleware => "baseline jsonrpsee + middleware",
            Target::Ceiling => "ceiling",
            Target::LineEcho => "line echo",
        }
    }

    /// Trace flags of the carrier on every request sent to this target.
    pub fn trace_flags(self) -> &'static str {
        match self {
            Target::SkeinUnsampled => "00",
            _ => "01",
        }
    }

    /// Whether request spans land in a store the harness must check.
    pub fn records_spans(self) -> bool {
        matches!(self, Target::SkeinTraced | Target::BaselineTraced)
    }

    fn is_skein(self) -> bool {
        matches!(
            self,
            Target::SkeinTraced
                | Target::SkeinUnsampled
                | Target::SkeinOff
                | Target::BaselineTraced
                | Target::BaselineOff
        )
    }
}

/// How the harness talks to a server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// One text frame per message.
    WebSocket,
    /// Newline-delimited JSON over the child's stdin/stdout.
    Stdio,
}

/// The last stderr lines of a child, for error reports.
pub type StderrTail = Arc<Mutex<VecDeque<String>>>;

const STDERR_TAIL_LINES: usize = 20;

/// A running server process.
pub struct Running {
    /// What runs.
    pub target: Target,
    child: Child,
    /// Process id.
    pub pid: u32,
    /// `ws://IP:PORT` of a WebSocket server.
    pub ws_url: Option<String>,
    /// stdin of a stdio server, until taken.
    pub stdin: Option<ChildStdin>,
    /// stdout of a stdio server, until taken.
    pub stdout: Option<ChildStdout>,
    /// Where a traced Skein writes its spans.
    pub trace_dir: Option<PathBuf>,
    stderr_tail: StderrTail,
    _home: TempDir,
}

impl Running {
    /// Starts `target` speaking `transport`.
    pub async fn start(target: Target, transport: Transport, bins: &Bins) -> anyhow::Result<Self> {
        let home = tempfile::Builder::new()
            .prefix("skein-bench-")
            .tempdir()
            .context("creating a temporary SKEIN_HOME")?;
        let mut trace_dir = None;
        let mut command = if target.is_skein() {
            let bin = match (target, &bins.baseline) {
                (Target::BaselineTraced | Target::BaselineOff, Some(baseline)) => baseline,
                (Target::BaselineTraced | Target::BaselineOff, None) => {
                    bail!("{} needs --baseline", target.label())
                }
                _ => &bins.skein,
            };
            let mut command = Command::new(bin);
            command.arg("serve").arg("--listen").arg(match transport {
                Transport::WebSocket => "ws://127.0.0.1:0",
                Transport::Stdio => "stdio://",
            });
            // As for jsonrpsee: the memory scenario opens 5,000 connections,
            // past Skein's default limit of 1,024.
            command
                .arg("--max-connections")
                .arg(MAX_CONNECTIONS.to_string());
            for (key, _) in std::env::vars_os() {
                if key.to_string_lossy().starts_with("OTEL_") {
                    command.env_remove(&key);
                }
            }
            command
                .env_remove("TRACEPARENT")
                .env_remove("TRACESTATE")
                .env_remove("SKEIN_TRACE_DIR")
                .env("SKEIN_HOME", home.path())
                .env("RUST_LOG", "warn")
                .env("NO_COLOR", "1");
            if matches!(target, Target::SkeinOff | Target::BaselineOff) {
                command
                    .arg("--trace-dir")
                    .arg("none")
                    .env("OTEL_SDK_DISABLED", "true");
            } else {
                let dir = home.path().join("traces");
                command.arg("--trace-dir").arg(&dir);
                trace_dir = Some(dir);
            }
            command
        } else {
            let (bin, ok) = match target {
                Target::Jsonrpsee | Target::JsonrpseeMiddleware => {
                    (&bins.jsonrpsee, transport == Transport::WebSocket)
                }
                Target::BaselineJsonrpseeMiddleware => match &bins.baseline_jsonrpsee {
                    Some(bin) => (bin, transport == Transport::WebSocket),
                    None => bail!("{} needs --baseline-jsonrpsee", target.label()),
                },
                Target::Ceiling => (&bins.ceiling, transport == Transport::WebSocket),
                Target::LineEcho => (&bins.line_echo, transport == Transport::Stdio),
                _ => (&bins.skein, false),
            };
            if !ok {
                bail!("{} does not speak {transport:?}", target.label());
            }
            let mut command = Command::new(bin);
            command.arg("--results").arg(&bins.results);
            if matches!(
                target,
                Target::JsonrpseeMiddleware | Target::BaselineJsonrpseeMiddleware
            ) {
                command.arg("--middleware");
            }
            command
        };
        command
            .stdin(match transport {
                Transport::Stdio => Stdio::piped(),
                Transport::WebSocket => Stdio::null(),
            })
            .stdout(match transport {
                Transport::Stdio => Stdio::piped(),
                Transport::WebSocket => Stdio::null(),
            })
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = command
            .spawn()
            .with_context(|| format!("starting {}", target.label()))?;
        let pid = child
            .id()
            .with_context(|| format!("{} exited at once", target.label()))?;
        let stderr = child.stderr.take().context("child stderr is piped")?;
        let stderr_tail: StderrTail = Arc::default();
        let (listening_tx, mut listening) = mpsc::unbounded_channel();
        {
            let tail = Arc::clone(&stderr_tail);
            tokio::spawn(async move {
                let mut lines = BufReader::new(stderr).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if let Some(rest) = line.split_once("listening on ").map(|(_, r)| r) {
                        let url = rest.split_whitespace().next().unwrap_or("").to_owned();
                        let _ = listening_tx.send(url);
                    }
                    if let Ok(mut tail) = tail.lock() {
                        if tail.len() == STDERR_TAIL_LINES {
                            tail.pop_front();
                        }
                        tail.push_back(line);
                    }
                }
            });
        }
        let mut running = Running {
            target,
            pid,
            ws_url: None,
            stdin: child.stdin.take(),
            stdout: child.stdout.take(),
            child,
            trace_dir,
            stderr_tail,
            _home: home,
        };
        if transport == Transport::WebSocket {
            let url = tokio::time::timeout(PROCESS_TIMEOUT, listening.recv())
                .await
                .ok()
                .flatten();
            match url {
                Some(url) => running.ws_url = Some(url),
                None => bail!(
                    "{} did not announce its address:\n{}",
                    target.label(),
                    running.stderr_tail()
                ),
            }
        }
        Ok(running)
    }

    /// The last lines the server wrote to stderr.
    pub fn stderr_tail(&self) -> String {
        self.stderr_tail
            .lock()
            .map(|tail| tail.iter().cloned().collect::<Vec<_>>().join("\n"))
            .unwrap_or_default()
    }

    /// Stops the server the way an operator does: SIGTERM (after closing
    /// stdin, for stdio), then waits for it to exit.
    pub async fn stop(mut self) -> anyhow::Result<Stopped> {
        self.stdin = None;
        if let Ok(None) = self.child.try_wait() {
            let pid = libc::pid_t::try_from(self.pid).context("pid out of range")?;
            // SAFETY: kill(2) with a pid of our own child and a valid signal.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
        }
        let status = match tokio::time::timeout(PROCESS_TIMEOUT, self.child.wait()).await {
            Ok(status) => status?,
            Err(_) => {
                let _ = self.child.kill().await;
                bail!(
                    "{} did not exit within {PROCESS_TIMEOUT:?} of SIGTERM; killed it:\n{}",
                    self.target.label(),
                    self.stderr_tail()
                );
            }
        };
        Ok(Stopped {
            status,
            trace_dir: self.trace_dir.take(),
            stderr: self.stderr_tail(),
            _home: self._home,
        })
    }
}

/// A server after exit; holds its temporary home (and store) until dropped.
pub struct Stopped {
    /// Exit status.
    pub status: ExitStatus,
    /// Where its spans are, if it recorded any.
    pub trace_dir: Option<PathBuf>,
    /// The last lines of its stderr.
    pub stderr: String,
    _home: TempDir,
}

impl Stopped {
    /// The store directory, when there is one.
    pub fn store(&self) -> Option<&Path> {
        self.trace_dir.as_deref()
    }
}

/// utime + stime of `pid`, in seconds.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) in parentheses.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime is field 14, stime field 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks <= 0 {
        return None;
    }
    Some((utime + stime) as f64 / ticks as f64)
}

/// VmRSS of `pid`, in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// Open file descriptors of `pid` (sockets included).
pub fn open_fds(pid: u32) -> Option<usize> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count())
}
