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
//! - [`json`]: the `--json` lines of `ls` and `view`;
//! - [`query`]: the filters of `ls`, the traces it hides by default and a
//!   thread's turns;
//! - [`stats`]: `stats`, figures per request method, model and tool;
//! - [`follow`]: tailing the store as servers append to it.
//!
//! [`TraceCommand`] is the `skein trace` command line; [`run`] executes it.

pub mod follow;
pub mod json;
pub mod query;
pub mod render;
pub mod stats;
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
    /// whose finished record is not written yet). The `skein.shutdown`
    /// trace each server leaves and `initialize` requests sent without a
    /// trace carrier are hidden unless `--all` is given.
    Ls(LsArgs),

    /// Show one trace as a tree of spans, or a thread's turns.
    ///
    /// Given a thread id rather than a trace id, shows every trace that
    /// holds one of the thread's turns, oldest first.
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
    ///
    /// When the store directory does not exist yet, waits for it.
    Follow(FollowArgs),

    /// Count, error rate and p50/p95/p99 duration of finished spans per
    /// request method, per model (`chat` spans, with token totals, and cost
    /// totals per currency when prices were configured) and per tool
    /// (`execute_tool` spans).
    Stats(StatsArgs),
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

    /// One JSON object per trace, one per line: trace_id, start_time,
    /// start_unix_nano, duration_ns, span_count, root, status, error_count,
    /// thread_ids.
    #[arg(long)]
    pub json: bool,

    /// Only traces with a failed span.
    #[arg(long)]
    pub errors: bool,

    /// Only traces that started within this age: a whole number with a
    /// unit s, m, h or d, like 10m.
    #[arg(long, value_name = "AGE", value_parser = parse_since)]
    pub since: Option<Duration>,

    /// Only traces of this thread (a span's thread.id).
    #[arg(long, value_name = "ID")]
    pub thread: Option<String>,

    /// Only traces with a request for this method (rpc.method, or
    /// mcp.method.name), like turn/start.
    #[arg(long, value_name = "NAME")]
    pub method: Option<String>,

    /// Also list the skein.shutdown traces and carrier-less initialize
    /// requests, hidden by default.
    #[arg(long)]
    pub all: bool,
}

/// Arguments of `skein trace stats`.
#[derive(Debug, Clone, Args)]
pub struct StatsArgs {
    /// The store.
    #[command(flatten)]
    pub store: StoreArgs,

    /// Only spans that started within this age: a whole number with a
    /// unit s, m, h or d, like 1h. Default: the whole store.
    #[arg(long, value_name = "AGE", value_parser = parse_since)]
    pub since: Option<Duration>,

    /// One JSON object per row, one per line: group (method, model or
    /// tool), name, count, errors, error_rate, p50_ns, p95_ns, p99_ns,
    /// input_tokens, output_tokens.
    #[arg(long)]
    pub json: bool,
}

fn parse_since(text: &str) -> Result<Duration, String> {
    skein_otel::local_store::parse_age(text).map_err(|e| e.to_string())
}

/// The time `since` ago, in nanoseconds since the Unix epoch (0 for none).
fn cutoff(since: Option<Duration>) -> u64 {
    let Some(since) = since else {
        return 0;
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    u64::try_from(now.saturating_sub(since).as_nanos()).unwrap_or(u64::MAX)
}

/// Arguments of `skein trace view`.
#[derive(Debug, Clone, Args)]
pub struct ViewArgs {
    /// The store.
    #[command(flatten)]
    pub store: StoreArgs,

    /// The trace id (32 hex digits), or any prefix of it that matches
    /// only one trace; or a thread id, to show the thread's turns.
    #[arg(value_name = "TRACE_ID|THREAD_ID")]
    pub trace: String,

    /// One JSON object per span, one per line: trace_id, span_id,
    /// parent_span_id, name, kind, start_unix_nano, end_unix_nano,
    /// duration_ns, status, status_message, attributes, events, links.
    #[arg(long)]
    pub json: bool,

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
            let filter = query::Filter {
                errors: args.errors,
                since_unix_nano: args.since.map(|s| cutoff(Some(s))),
                thread: args.thread.clone(),
                method: args.method.clone(),
                all: args.all,
            };
            let traces: Vec<&store::Trace> = store
                .traces()
                .iter()
                .filter(|t| filter.matches(t))
                .take(args.limit)
                .collect();
            if args.json {
                json::write_ls(out, traces)?;
            } else if traces.is_empty() {
                let hidden = store.traces().len();
                if hidden == 0 {
                    writeln!(out, "no traces in {}", store.dir().display())?;
                } else {
                    writeln!(
                        out,
                        "no matching traces in {} ({hidden} in all; --all lists housekeeping traces too)",
                        store.dir().display()
                    )?;
                }
            } else {
                render::write_ls(out, &traces, style)?;
            }
        }
        TraceCommand::View(args) => {
            let store = open(&args.store)?;
            let found = match store.find(&args.trace) {
                Ok(trace) => vec![trace],
                Err(TraceViewError::NoMatch { prefix, dir }) => {
                    let turns = query::thread_turns(store.traces(), args.trace.trim());
                    if turns.is_empty() {
                        return Err(TraceViewError::NoMatch { prefix, dir });
                    }
                    if !args.json {
                        writeln!(
                            out,
                            "{} {}  {} trace{} with turns",
                            style.bold("thread"),
                            args.trace.trim(),
                            turns.len(),
                            if turns.len() == 1 { "" } else { "s" }
                        )?;
                    }
                    turns
                }
                Err(other) => return Err(other),
            };
            for (i, trace) in found.iter().enumerate() {
                if args.json {
                    json::write_view(out, trace)?;
                } else {
                    if i > 0 || found.len() > 1 {
                        writeln!(out)?;
                    }
                    render::write_view(out, trace, args.verbose, style)?;
                }
            }
        }
        TraceCommand::Stats(args) => {
            let store = open(&args.store)?;
            let stats = stats::Stats::of(store.traces(), cutoff(args.since));
            if args.json {
                stats::write_json(out, &stats)?;
            } else if stats.is_empty() {
                writeln!(
                    out,
                    "no finished requests, model calls or tool calls in {}",
                    store.dir().display()
                )?;
            } else {
                stats::write_text(out, &stats)?;
            }
        }
        TraceCommand::Follow(args) => {
            let dir = paths::trace_dir(args.store.dir.as_deref())?;
            let mut follower = if dir.is_dir() {
                follow::Follower::new(&dir)?
            } else {
                tracing::warn!(
                    dir = %dir.display(),
                    "no trace store yet; waiting for a server to create it"
                );
                while !dir.is_dir() {
                    std::thread::sleep(FOLLOW_INTERVAL);
                }
                // Created since: every record in it is new.
                follow::Follower::from_start(&dir)?
            };
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
