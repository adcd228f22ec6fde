//! `skein trace`: a viewer for the local trace store.
//!
//! The store is a directory of OTLP/JSON-lines files written by running
//! servers (see `skein_otel::local_store`). This module reads it:
//!
//! - [`store`]: parsing lines into spans, merging in-progress records with
//!   their finished versions, grouping spans into traces, resolving trace
//!   id prefixes;
//! - [`tree`]: a trace's spans as an indented tree;
//! - [`render`]: the text of `ls`, `view` and `follow`;
//! - [`follow`]: tailing the store as servers append to it.
//!
//! [`TraceCommand`] is the `skein trace` command line; [`run`] executes it.

pub mod follow;
pub mod render;
pub mod store;
pub mod tree;

use std::io::{IsTerminal as _, Write};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};

use crate::paths::{self, NoHomeError};
use render::Style;
use store::Store;

/// How often `follow` looks for new records.
pub const FOLLOW_INTERVAL: Duration = Duration::from_millis(200);

/// The `skein trace` subcommands.
#[derive(Debug, Clone, Subcommand)]
pub enum TraceCommand {
    /// List recent traces, newest first.
    ///
    /// One row per trace: its start time (UTC), trace id, number of spans,
    /// root span name, duration, and status: OK, ERROR when any span
    /// failed, RUNNING when a span is still in progress (a long-lived turn
    /// whose finished record is not written yet).
    Ls(LsArgs),

    /// Show one trace as a tree of spans.
    ///
    /// Each line shows a span's name, duration (`running` while in
    /// progress), key attributes (rpc.method, thread.id, turn.id,
    /// gen_ai.request.model, tokens=IN/OUT, turn.status), an ERROR mark
    /// with the status message, and the first 8 hex digits of the span id.
    /// Children are ordered by start time. Spans whose parent is not in
    /// the store (such as a client's span) hang under an
    /// `◌ <external parent ID> (not in store)` line.
    View(ViewArgs),

    /// Print span records as servers write them, until interrupted.
    ///
    /// Starts at the current end of the store and polls it every 200 ms
    /// for new files and appended lines. One line per record: the time (UTC)
    /// it ended (or started, for an in-progress record), the trace id prefix,
    /// the span name, its duration (or `started`), key attributes, an
    /// ERROR mark and the short span id.
    Follow(FollowArgs),
}

/// Where the store is.
#[derive(Debug, Clone, Args)]
pub struct StoreArgs {
    /// Directory of the local trace store. Default: $SKEIN_HOME/traces,
    /// with SKEIN_HOME defaulting to ~/.skein.
    #[arg(long, value_name = "DIR", env = "SKEIN_TRACE_DIR")]
    pub dir: Option<String>,
}

/// Arguments of `skein trace ls`.
#[derive(Debug, Clone, Args)]
pub struct LsArgs {
    /// The store.
    #[command(flatten)]
    pub store: StoreArgs,

    /// How many traces to list.
    #[arg(short = 'n', long = "limit", value_name = "N", default_value_t = 20)]
    pub limit: usize,
}

/// Arguments of `skein trace view`.
#[derive(Debug, Clone, Args)]
pub struct ViewArgs {
    /// The store.
    #[command(flatten)]
    pub store: StoreArgs,

    /// The trace id (32 hex digits), or any prefix of it that matches
    /// only one trace.
    #[arg(value_name = "TRACE_ID")]
    pub trace: String,

    /// Also show every attribute, event and link of each span, one per
    /// line under it, with full span ids and start/end times.
    #[arg(short, long)]
    pub verbose: bool,
}

/// Arguments of `skein trace follow`.
#[derive(Debug, Clone, Args)]
pub struct FollowArgs {
    /// The store.
    #[command(flatten)]
    pub store: StoreArgs,
}

/// Why a `skein trace` command failed.
#[derive(Debug, thiserror::Error)]
pub enum TraceViewError {
    /// No `--dir`, and no home directory to default to.
    #[error("neither SKEIN_HOME nor HOME is set; set SKEIN_TRACE_DIR or SKEIN_HOME, or pass --dir")]
    NoHome(#[from] NoHomeError),
    /// The store directory does not exist.
    #[error("no trace store at {} (is the server writing elsewhere? see --dir)", dir.display())]
    NoStore {
        /// The directory.
        dir: PathBuf,
    },
    /// The store directory could not be listed.
    #[error("cannot list trace store {}: {source}", dir.display())]
    ReadDir {
        /// The directory.
        dir: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A store file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// No trace id starts with the prefix.
    #[error("no trace matching {prefix} in {}", dir.display())]
    NoMatch {
        /// The prefix asked for.
        prefix: String,
        /// The store directory.
        dir: PathBuf,
    },
    /// Several trace ids start with the prefix.
    #[error(
        "trace id prefix {prefix} is ambiguous; it matches {} traces:\n  {}",
        candidates.len(),
        candidates.join("\n  ")
    )]
    AmbiguousPrefix {
        /// The prefix asked for.
        prefix: String,
        /// `TRACE_ID  ROOT NAME` of every match, newest first.
        candidates: Vec<String>,
    },
    /// Writing the output failed.
    #[error("writing output: {0}")]
    Output(#[from] std::io::Error),
}

/// Runs `command`, writing plain text (no colours) to `out`. `follow` runs
/// until interrupted or until writing fails.
///
/// Skipped store lines are logged as warnings (`tracing`).
pub fn run(command: TraceCommand, out: &mut dyn Write) -> Result<(), TraceViewError> {
    run_styled(command, out, Style::PLAIN)
}

/// Runs `command` for the `skein` binary: installs a stderr logger (for
/// the warnings; `RUST_LOG`, default `warn`) unless one is installed,
/// writes to stdout, in colour when stdout is a terminal and `NO_COLOR` is
/// not set, and ends quietly when stdout is closed early (`| head`).
pub fn run_cli(command: TraceCommand) -> Result<(), TraceViewError> {
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    // Fails only when a subscriber exists already, which is then used.
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal() && !no_color)
        .with_env_filter(filter)
        .without_time()
        .with_target(false)
        .try_init();

    let stdout = std::io::stdout();
    let style = if stdout.is_terminal() && !no_color {
        Style::COLOR
    } else {
        Style::PLAIN
    };
    let mut out = stdout.lock();
    match run_styled(command, &mut out, style) {
        Err(TraceViewError::Output(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}

/// Runs `command`, writing to `out` in `style`.
pub fn run_styled(
    command: TraceCommand,
    out: &mut dyn Write,
    style: Style,
) -> Result<(), TraceViewError> {
    match command {
        TraceCommand::Ls(args) => {
            let store = open(&args.store)?;
            if store.traces().is_empty() {
                writeln!(out, "no traces in {}", store.dir().display())?;
            } else {
                render::write_ls(out, store.traces(), args.limit, style)?;
            }
        }
        TraceCommand::View(args) => {
            let store = open(&args.store)?;
            let trace = store.find(&args.trace)?;
            render::write_view(out, trace, args.verbose, style)?;
        }
        TraceCommand::Follow(args) => {
            let dir = paths::trace_dir(args.store.dir.as_deref())?;
            let mut follower = follow::Follower::new(&dir)?;
            tracing::info!(dir = %dir.display(), "following the trace store");
            loop {
                let polled = follower.poll()?;
                for warning in &polled.warnings {
                    tracing::warn!("{warning}");
                }
                for span in &polled.spans {
                    render::write_follow_line(out, span, style)?;
                }
                out.flush()?;
                std::thread::sleep(FOLLOW_INTERVAL);
            }
        }
    }
    out.flush()?;
    Ok(())
}

fn open(args: &StoreArgs) -> Result<Store, TraceViewError> {
    let dir = paths::trace_dir(args.dir.as_deref())?;
    let store = Store::open(&dir)?;
    for warning in store.warnings() {
        tracing::warn!("{warning}");
    }
    Ok(store)
}
