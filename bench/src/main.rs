//! `skein-bench`: the request-path benchmark.
//!
//! One command builds the release `skein` binary and the comparison
//! servers, then measures, in interleaved repetitions, Skein (traced with
//! a sampled carrier, with an unsampled one, and with tracing off) beside a
//! jsonrpsee server and a bare tokio-tungstenite ceiling over WebSocket,
//! Skein beside a plain line responder over stdio, one long streamed turn,
//! and memory per idle connection. It checks the trace store after every
//! traced run and prints markdown tables with medians and ratios.

mod harness;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Parser, ValueEnum};
use harness::report::{CheckRecord, Results, RssSample, Settings, StreamSample, WsSample};
use harness::servers::{Bins, Running, Target, Transport};
use harness::setup::{Machine, build_bins};
use harness::stdio::Conn;
use harness::ws::{Shape, Window};
use harness::{rss, spans, stdio, stream, ws};
use skein_bench::Canned;

/// Request-path benchmark: Skein against jsonrpsee, a bare WebSocket
/// ceiling and a line echo, side by side.
///
/// Builds `skein` and the comparison servers in the harness's own profile
/// (run it with `cargo run --release -p skein-bench`), runs every selected
/// scenario against every server once per repetition (servers interleaved
/// within a repetition), prints progress to stderr and a markdown report
/// to stdout. Exits non-zero when a span store check fails or a
/// measurement could not be taken.
#[derive(Debug, Parser)]
#[command(name = "skein-bench")]
struct Args {
    /// Scenarios to run.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "ws,stdio,stream,rss"
    )]
    only: Vec<Scenario>,

    /// Repetitions (medians are reported).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..))]
    reps: u64,

    /// WebSocket load: warmup seconds before the measured window.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,

    /// WebSocket load: measured window, seconds.
    #[arg(long, default_value_t = 4.0)]
    duration: f64,

    /// WebSocket load shapes, CONNECTIONSxIN_FLIGHT.
    #[arg(long, value_delimiter = ',', default_value = "1x1,16x8,64x4", value_parser = parse_shape)]
    shapes: Vec<Shape>,

    /// stdio: pipelined `model/list` requests.
    #[arg(long, default_value_t = 300_000)]
    stdio_requests: u64,

    /// Streaming: words in the turn input, one delta each.
    #[arg(long, default_value_t = 100_000)]
    stream_deltas: usize,

    /// Memory: idle connections to open.
    #[arg(long, default_value_t = 5_000)]
    rss_connections: usize,

    /// MCP: pipelined `tools/call` requests per run.
    #[arg(long, default_value_t = 50_000, value_parser = clap::value_parser!(u64).range(1..))]
    mcp_calls: u64,

    /// Also run jsonrpsee with its RPC tracing middleware (`--middleware`).
    #[arg(long)]
    jsonrpsee_middleware: bool,

    /// Measure this `skein` binary instead of building one (e.g. another
    /// checkout's release build); the comparison servers are still built.
    #[arg(long, value_name = "PATH")]
    skein: Option<PathBuf>,

    /// Also measure this other `skein` build (e.g. the code before a
    /// change), traced and with tracing off, interleaved with the others in
    /// the WebSocket, stdio and stream scenarios: before and after in one
    /// run.
    #[arg(long, value_name = "PATH")]
    baseline: Option<PathBuf>,

    /// With `--jsonrpsee-middleware`: also measure the middleware of this
    /// other `bench-jsonrpsee` build (e.g. the code before a change),
    /// interleaved with the others in the WebSocket scenario.
    #[arg(long, value_name = "PATH", requires = "jsonrpsee_middleware")]
    baseline_jsonrpsee: Option<PathBuf>,

    /// Also write the markdown report to this file.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Scenario {
    /// WebSocket request/response load.
    Ws,
    /// Pipelined requests over stdio.
    Stdio,
    /// One long streamed turn, over WebSocket and stdio.
    Stream,
    /// Memory with many idle connections.
    Rss,
    /// An rmcp server answering `tools/call`, with and without
    /// `skein-rmcp`'s layer (not in the default set: `--only mcp`).
    Mcp,
}

fn parse_shape(s: &str) -> Result<Shape, String> {
    let (c, f) = s
        .split_once('x')
        .ok_or_else(|| format!("{s:?}: expected CONNECTIONSxIN_FLIGHT, e.g. 16x8"))?;
    let parse = |v: &str| {
        v.parse::<usize>()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| format!("{s:?}: {v:?} is not a positive number"))
    };
    Ok(Shape {
        connections: parse(c)?,
        in_flight: parse(f)?,
    })
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("skein-bench: error: starting the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!(
                "skein-bench: FAILED: a span store check failed or a measurement could not be \
                 taken (see the report)"
            );
            ExitCode::FAILURE
        }
        Err(err) => {
            eprintln!("skein-bench: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<bool> {
    let nofile = skein_bench::raise_nofile_limit().context("raising RLIMIT_NOFILE")?;
    if args.only.contains(&Scenario::Rss) && (nofile as usize) < args.rss_connections + 256 {
        bail!(
            "RLIMIT_NOFILE hard limit {nofile} is too low for {} connections",
            args.rss_connections
        );
    }
    let work = tempfile::Builder::new()
        .prefix("skein-bench-")
        .tempdir()
        .context("creating a work directory")?;
    let built = tokio::task::spawn_blocking(build_bins).await??;
    let find = |name: &str| {
        built
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, p)| p.clone())
            .with_context(|| format!("cargo reported no executable for `{name}`"))
    };
    let mut bins = Bins {
        skein: match &args.skein {
            Some(path) => path.clone(),
            None => find("skein")?,
        },
        baseline: args.baseline.clone(),
        jsonrpsee: find("bench-jsonrpsee")?,
        baseline_jsonrpsee: args.baseline_jsonrpsee.clone(),
        ceiling: find("bench-ceiling")?,
        line_echo: find("bench-line-echo")?,
        rmcp: find("bench-rmcp")?,
        results: work.path().join("canned.json"),
    };
    let canned = Arc::new(capture_canned(&bins).await?);
    canned.save(&bins.results)?;
    bins.results = bins.results.canonicalize()?;
    eprintln!("skein binary: {}", bins.skein.display());

    let mut ws_targets = vec![
        Target::SkeinTraced,
        Target::SkeinUnsampled,
        Target::SkeinOff,
        Target::Jsonrpsee,
    ];
    if args.jsonrpsee_middleware {
        ws_targets.push(Target::JsonrpseeMiddleware);
    }
    ws_targets.push(Target::Ceiling);
    let rss_targets: Vec<Target> = ws_targets
        .iter()
        .copied()
        .filter(|t| *t != Target::SkeinUnsampled)
        .collect();
    let mut stdio_targets = vec![Target::SkeinTraced, Target::SkeinOff];
    if args.baseline.is_some() {
        ws_targets.extend([Target::BaselineTraced, Target::BaselineOff]);
        stdio_targets.extend([Target::BaselineTraced, Target::BaselineOff]);
    }
    if args.baseline_jsonrpsee.is_some() {
        ws_targets.push(Target::BaselineJsonrpseeMiddleware);
    }
    stdio_targets.push(Target::LineEcho);
    let mut stream_targets = vec![Target::SkeinTraced, Target::SkeinOff];
    if args.baseline.is_some() {
        stream_targets.extend([Target::BaselineTraced, Target::BaselineOff]);
    }
    let window = Window {
        warmup: Duration::from_secs_f64(args.warmup.max(0.0)),
        measured: Duration::from_secs_f64(args.duration.max(0.1)),
    };

    let mut results = Results::default();
    let mut measurement_failed = false;
    for rep in 1..=args.reps {
        if args.only.contains(&Scenario::Ws) {
            for &shape in &args.shapes {
                for &target in &ws_targets {
                    eprintln!("rep {rep}: ws {shape} {}…", target.label());
                    let label = format!("rep {rep} ws {shape}");
                    let sample =
                        ws_run(&bins, target, shape, window, &canned, &label, &mut results).await;
                    log_sample(&sample, |s| format!("{:.0} req/s", s.rps));
                    measurement_failed |= sample.is_err();
                    results.ws.entry((shape, target)).or_default().push(sample);
                }
            }
        }
        if args.only.contains(&Scenario::Stdio) {
            for &target in &stdio_targets {
                eprintln!("rep {rep}: stdio {}…", target.label());
                let label = format!("rep {rep} stdio");
                let sample = stdio_run(
                    &bins,
                    target,
                    args.stdio_requests,
                    &canned,
                    &label,
                    &mut results,
                )
                .await;
                log_sample(&sample, |s| format!("{s:.0} req/s"));
                measurement_failed |= sample.is_err();
                results.stdio.entry(target).or_default().push(sample);
            }
        }
        if args.only.contains(&Scenario::Stream) {
            for transport in [Transport::WebSocket, Transport::Stdio] {
                for &target in &stream_targets {
                    let name = transport_name(transport);
                    eprintln!("rep {rep}: stream {name} {}…", target.label());
                    let label = format!("rep {rep} stream {name}");
                    let sample = stream_run(
                        &bins,
                        target,
                        transport,
                        args.stream_deltas,
                        &label,
                        &mut results,
                    )
                    .await;
                    log_sample(&sample, |s| match &s.failure {
                        None => format!("{:.0} deltas/s", s.rate),
                        Some(f) => format!("FAILED: {f}"),
                    });
                    measurement_failed |= sample.is_err();
                    results
                        .stream
                        .entry((name, target))
                        .or_default()
                        .push(sample);
                }
            }
        }
        if args.only.contains(&Scenario::Rss) {
            for &target in &rss_targets {
                eprintln!("rep {rep}: rss {}…", target.label());
                let label = format!("rep {rep} rss");
                let sample =
                    rss_run(&bins, target, args.rss_connections, &label, &mut results).await;
                log_sample(&sample, |s| {
                    format!(
                        "idle {} KiB, open {} KiB, closed {} KiB{}: {:.1} KiB/connection, \
                         {} fds left",
                        s.idle,
                        s.open,
                        s.closed,
                        if s.unsettled { " (still moving)" } else { "" },
                        s.per_connection,
                        s.fds_left
                    )
                });
                measurement_failed |= sample.is_err();
                results.rss.entry(target).or_default().push(sample);
            }
        }
        if args.only.contains(&Scenario::Mcp) {
            for traced in [true, false] {
                let name = if traced {
                    "with layer"
                } else {
                    "without layer"
                };
                eprintln!("rep {rep}: mcp rmcp {name}…");
                let sample = harness::mcp::run(&bins.rmcp, traced, args.mcp_calls)
                    .await
                    .map_err(|e| format!("{e:#}"));
                log_sample(&sample, |s| {
                    format!(
                        "{:.1} µs CPU/call, {:.0} calls/s{}",
                        s.cpu_us_per_call,
                        s.calls_per_s,
                        s.spans
                            .map(|n| format!(", {n} spans exported"))
                            .unwrap_or_default()
                    )
                });
                measurement_failed |= sample.is_err();
                results.mcp.entry(traced).or_default().push(sample);
            }
        }
    }

    let settings = Settings {
        reps: args.reps as usize,
        warmup: args.warmup,
        duration: args.duration,
        stdio_requests: args.stdio_requests,
        stream_deltas: args.stream_deltas,
        rss_connections: args.rss_connections,
        mcp_calls: args.mcp_calls,
        command: command_line(),
    };
    let report = results.markdown(&Machine::describe(), &settings);
    println!("{report}");
    if let Some(path) = &args.out {
        std::fs::write(path, &report).with_context(|| format!("writing {}", path.display()))?;
    }
    if !results.all_checks_hold() {
        eprintln!("skein-bench: SPAN STORE CHECK FAILED: see the last table");
    }
    Ok(results.all_checks_hold() && !measurement_failed)
}

fn transport_name(transport: Transport) -> &'static str {
    match transport {
        Transport::WebSocket => "websocket",
        Transport::Stdio => "stdio",
    }
}

fn command_line() -> String {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut line = String::from("cargo run --release -p skein-bench --");
    for arg in args {
        line.push(' ');
        line.push_str(&arg);
    }
    line
}

fn log_sample<T>(sample: &Result<T, String>, show: impl Fn(&T) -> String) {
    match sample {
        Ok(value) => eprintln!("  {}", show(value)),
        Err(err) => eprintln!("  FAILED: {err}"),
    }
}

/// Asks Skein (tracing off, stdio) for its `initialize` and `model/list`
/// results: the comparison servers answer with exactly these.
async fn capture_canned(bins: &Bins) -> anyhow::Result<Canned> {
    let mut server = Running::start(Target::SkeinOff, Transport::Stdio, bins).await?;
    let mut conn = Conn::stdio(&mut server)?;
    let mut results = Vec::new();
    for (id, method, params) in [
        (1, skein_bench::INITIALIZE, harness::wire::INITIALIZE_PARAMS),
        (2, skein_bench::MODEL_LIST, "{}"),
    ] {
        conn.send(format!(
            r#"{{"jsonrpc":"2.0","id":{id},"method":"{method}","params":{params}}}"#
        ))
        .await?;
        let text = conn.recv().await?;
        let value: serde_json::Value = serde_json::from_str(&text)?;
        match value.get("result") {
            Some(result) if value["id"] == id => results.push(result.clone()),
            _ => bail!("unexpected answer to {method}: {text}"),
        }
    }
    drop(conn);
    server.stop().await?;
    let mut results = results.into_iter();
    match (results.next(), results.next()) {
        (Some(initialize), Some(model_list)) => Ok(Canned {
            initialize,
            model_list,
        }),
        _ => bail!("missing results"),
    }
}

/// Stops `server` and, for a traced Skein, checks its store against the
/// answered requests, recording the check.
async fn stop_and_check(
    server: Running,
    answered: Option<&[(&'static str, u64)]>,
    run: String,
    results: &mut Results,
) -> anyhow::Result<()> {
    let traced = server.target.records_spans();
    let stopped = server.stop().await?;
    if !traced {
        return Ok(());
    }
    let record = match (answered, stopped.store()) {
        _ if !stopped.status.success() => CheckRecord {
            run,
            ok: false,
            detail: format!("server exited with {}: {}", stopped.status, stopped.stderr),
        },
        (None, _) => CheckRecord {
            run,
            ok: false,
            detail: "the run failed before its requests were counted".into(),
        },
        (Some(_), None) => CheckRecord {
            run,
            ok: false,
            detail: "no store directory".into(),
        },
        (Some(answered), Some(dir)) => {
            let dir = dir.to_owned();
            let answered = answered.to_vec();
            match tokio::task::spawn_blocking(move || spans::check(&dir, &answered)).await? {
                Ok(check) => {
                    let mut detail = check.summary();
                    if !check.holds() {
                        // The server's own account of lost spans, if it gave one.
                        for line in stopped.stderr.lines().filter(|l| l.contains("drop")) {
                            detail.push_str("; server: ");
                            detail.push_str(line.trim());
                        }
                    }
                    CheckRecord {
                        run,
                        ok: check.holds(),
                        detail,
                    }
                }
                Err(err) => CheckRecord {
                    run,
                    ok: false,
                    detail: format!("{err:#}"),
                },
            }
        }
    };
    eprintln!(
        "  span check: {} ({})",
        if record.ok { "ok" } else { "FAILED" },
        record.detail
    );
    results.checks.push(record);
    drop(stopped);
    Ok(())
}

async fn ws_run(
    bins: &Bins,
    target: Target,
    shape: Shape,
    window: Window,
    canned: &Arc<Canned>,
    label: &str,
    results: &mut Results,
) -> Result<WsSample, String> {
    let run = async {
        let server = Running::start(target, Transport::WebSocket, bins).await?;
        let url = server.ws_url.clone().context("no address")?;
        let load = ws::run(
            &url,
            server.pid,
            shape,
            window,
            target.trace_flags(),
            Arc::clone(canned),
        )
        .await;
        let answered = load.as_ref().ok().map(|l| l.answered.as_slice());
        let tail = server.stderr_tail();
        stop_and_check(server, answered, label.to_owned(), results).await?;
        let load = load.map_err(|e| e.context(format!("server stderr: {tail}")))?;
        anyhow::Ok(WsSample {
            rps: load.requests_per_sec,
            p50_us: load.p50_us,
            p99_us: load.p99_us,
            cpu_us: load.cpu_us_per_request,
        })
    };
    run.await.map_err(|e| format!("{e:#}"))
}

async fn stdio_run(
    bins: &Bins,
    target: Target,
    requests: u64,
    canned: &Canned,
    label: &str,
    results: &mut Results,
) -> Result<f64, String> {
    let run = async {
        let mut server = Running::start(target, Transport::Stdio, bins).await?;
        let outcome = stdio::throughput(&mut server, requests, target.trace_flags(), canned).await;
        let answered = outcome.as_ref().ok().map(|o| o.answered.as_slice());
        let tail = server.stderr_tail();
        stop_and_check(server, answered, label.to_owned(), results).await?;
        let outcome = outcome.map_err(|e| e.context(format!("server stderr: {tail}")))?;
        anyhow::Ok(outcome.requests_per_sec)
    };
    run.await.map_err(|e| format!("{e:#}"))
}

async fn stream_run(
    bins: &Bins,
    target: Target,
    transport: Transport,
    words: usize,
    label: &str,
    results: &mut Results,
) -> Result<StreamSample, String> {
    let run = async {
        let mut server = Running::start(target, transport, bins).await?;
        let conn = match transport {
            Transport::Stdio => Conn::stdio(&mut server)?,
            Transport::WebSocket => {
                let url = server.ws_url.clone().context("no address")?;
                let (ws, _) = tokio_tungstenite::connect_async(url.as_str()).await?;
                Conn::Ws(Box::new(ws))
            }
        };
        let outcome = stream::run(conn, words, target.trace_flags()).await;
        let answered = outcome.as_ref().ok().map(|o| o.answered.as_slice());
        let tail = server.stderr_tail();
        stop_and_check(server, answered, label.to_owned(), results).await?;
        let outcome = outcome.map_err(|e| e.context(format!("server stderr: {tail}")))?;
        anyhow::Ok(StreamSample {
            deltas: outcome.deltas,
            rate: outcome.deltas_per_sec,
            failure: outcome.failure,
        })
    };
    run.await.map_err(|e| format!("{e:#}"))
}

async fn rss_run(
    bins: &Bins,
    target: Target,
    connections: usize,
    label: &str,
    results: &mut Results,
) -> Result<RssSample, String> {
    let run = async {
        let server = Running::start(target, Transport::WebSocket, bins).await?;
        let outcome = rss::run(&server, connections, target.trace_flags()).await;
        let answered = outcome.as_ref().ok().map(|o| o.answered.as_slice());
        let tail = server.stderr_tail();
        stop_and_check(server, answered, label.to_owned(), results).await?;
        let outcome = outcome.map_err(|e| e.context(format!("server stderr: {tail}")))?;
        anyhow::Ok(RssSample {
            idle: outcome.idle_kib,
            open: outcome.open_kib,
            closed: outcome.closed_kib,
            per_connection: outcome.per_connection_kib,
            fds_left: outcome.fds_left,
            unsettled: outcome.unsettled,
        })
    };
    run.await.map_err(|e| format!("{e:#}"))
}
