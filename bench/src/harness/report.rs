//! Collected samples and the markdown report: medians over repetitions,
//! side-by-side tables, ratios.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::servers::Target;
use super::setup::Machine;
use super::ws::Shape;

/// One WebSocket load sample.
#[derive(Clone, Copy, Debug)]
pub struct WsSample {
    /// Requests per second.
    pub rps: f64,
    /// Median latency, µs.
    pub p50_us: f64,
    /// p99 latency, µs.
    pub p99_us: f64,
    /// Server CPU per request, µs.
    pub cpu_us: Option<f64>,
}

/// One streaming sample.
#[derive(Clone, Debug)]
pub struct StreamSample {
    /// Deltas received.
    pub deltas: usize,
    /// Deltas per second.
    pub rate: f64,
    /// What went wrong, if anything.
    pub failure: Option<String>,
}

/// One memory sample, KiB.
#[derive(Clone, Copy, Debug)]
pub struct RssSample {
    /// Idle.
    pub idle: u64,
    /// With the connections open.
    pub open: u64,
    /// After they closed.
    pub closed: u64,
    /// Per connection.
    pub per_connection: f64,
    /// Server file descriptors still open after the close, beyond idle.
    pub fds_left: i64,
    /// Whether RSS was still moving after the close when the wait ended.
    pub unsettled: bool,
}

/// One store check.
#[derive(Clone, Debug)]
pub struct CheckRecord {
    /// Which run (rep, scenario, transport).
    pub run: String,
    /// Whether it held.
    pub ok: bool,
    /// Counts or the error.
    pub detail: String,
}

/// A sample or why the run failed.
pub type Sample<T> = Result<T, String>;

/// Everything measured, keyed for the tables.
#[derive(Debug, Default)]
pub struct Results {
    /// WebSocket load, by (shape, server).
    pub ws: BTreeMap<(Shape, Target), Vec<Sample<WsSample>>>,
    /// stdio throughput (req/s), by server.
    pub stdio: BTreeMap<Target, Vec<Sample<f64>>>,
    /// Streaming, by (transport, server).
    pub stream: BTreeMap<(&'static str, Target), Vec<Sample<StreamSample>>>,
    /// Memory, by server.
    pub rss: BTreeMap<Target, Vec<Sample<RssSample>>>,
    /// The MCP row: an rmcp server with (`true`) and without the layer.
    pub mcp: BTreeMap<bool, Vec<Sample<super::mcp::McpSample>>>,
    /// Store checks, in run order.
    pub checks: Vec<CheckRecord>,
}

/// Settings printed with the report.
#[derive(Debug)]
pub struct Settings {
    /// Repetitions.
    pub reps: usize,
    /// Warmup seconds.
    pub warmup: f64,
    /// Measured seconds.
    pub duration: f64,
    /// stdio requests.
    pub stdio_requests: u64,
    /// Streamed deltas.
    pub stream_deltas: usize,
    /// Idle connections.
    pub rss_connections: usize,
    /// MCP `tools/call` requests per run.
    pub mcp_calls: u64,
    /// The command line.
    pub command: String,
}

fn median(mut values: Vec<f64>) -> Option<f64> {
    values.retain(|v| v.is_finite());
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let n = values.len();
    Some(if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    })
}

fn ok_values<T, F: Fn(&T) -> Option<f64>>(samples: &[Sample<T>], f: F) -> Vec<f64> {
    samples
        .iter()
        .filter_map(|s| s.as_ref().ok())
        .filter_map(f)
        .collect()
}

fn failures<T>(samples: &[Sample<T>]) -> Vec<&str> {
    samples
        .iter()
        .filter_map(|s| s.as_ref().err().map(String::as_str))
        .collect()
}

/// `12,345`.
fn thousands(value: f64) -> String {
    let rounded = value.round() as i64;
    let digits = rounded.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if rounded < 0 {
        out.insert(0, '-');
    }
    out
}

fn micros(us: Option<f64>) -> String {
    match us {
        None => "–".into(),
        Some(us) if us >= 10_000.0 => format!("{:.1} ms", us / 1000.0),
        Some(us) if us >= 100.0 => format!("{us:.0} µs"),
        Some(us) => format!("{us:.1} µs"),
    }
}

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
        _ => "–".into(),
    }
}

/// Median with the spread over repetitions, `12,345 ±4%`.
fn rate_cell(values: &[f64]) -> String {
    let Some(mid) = median(values.to_vec()) else {
        return "–".into();
    };
    if values.len() < 2 || mid <= 0.0 {
        return thousands(mid);
    }
    let max = values.iter().copied().fold(f64::MIN, f64::max);
    let min = values.iter().copied().fold(f64::MAX, f64::min);
    format!(
        "{} ±{:.0}%",
        thousands(mid),
        (max - min) / 2.0 / mid * 100.0
    )
}

fn failure_note<T>(samples: &[Sample<T>]) -> String {
    let failed = failures(samples);
    if failed.is_empty() {
        return String::new();
    }
    format!(
        " **FAILED {}/{}**: {}",
        failed.len(),
        samples.len(),
        failed[0]
    )
}

impl Results {
    fn ws_median(
        &self,
        shape: Shape,
        target: Target,
        f: fn(&WsSample) -> Option<f64>,
    ) -> Option<f64> {
        median(ok_values(self.ws.get(&(shape, target))?, f))
    }

    fn stdio_median(&self, target: Target) -> Option<f64> {
        median(ok_values(self.stdio.get(&target)?, |v| Some(*v)))
    }

    fn rss_median(&self, target: Target, f: fn(&RssSample) -> Option<f64>) -> Option<f64> {
        median(ok_values(self.rss.get(&target)?, f))
    }

    /// Whether every store check held and no run failed (streaming
    /// failures are findings, reported in their table, not harness errors).
    pub fn all_checks_hold(&self) -> bool {
        self.checks.iter().all(|c| c.ok)
    }

    /// The markdown report.
    pub fn markdown(&self, machine: &Machine, settings: &Settings) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "Command: `{}`", settings.command);
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "Machine: {} CPUs ({}), {:.0} GiB; measured {} at commit `{}`; \
             medians of {} interleaved repetitions (± is half the min–max spread).",
            machine.cpus,
            machine.model,
            machine.mem_gib,
            machine.date,
            machine.commit,
            settings.reps
        );
        if !self.ws.is_empty() {
            self.ws_tables(&mut out, settings);
        }
        if !self.stdio.is_empty() {
            self.stdio_table(&mut out, settings);
        }
        if !self.stream.is_empty() {
            self.stream_table(&mut out, settings);
        }
        if !self.rss.is_empty() {
            self.rss_table(&mut out, settings);
        }
        if !self.mcp.is_empty() {
            self.mcp_table(&mut out, settings);
        }
        if !self.checks.is_empty() {
            self.checks_table(&mut out);
        }
        out
    }

    fn ws_tables(&self, out: &mut String, settings: &Settings) {
        let _ = writeln!(
            out,
            "\n**WebSocket, pipelined `model/list`** ({} s warmup, {} s measured; \
             load = connections x requests in flight per connection; server CPU = \
             utime+stime over the window / requests)\n",
            settings.warmup, settings.duration
        );
        let _ = writeln!(
            out,
            "| load | server | req/s | p50 | p99 | server CPU / req |"
        );
        let _ = writeln!(out, "| --- | --- | ---: | ---: | ---: | ---: |");
        for ((shape, target), samples) in &self.ws {
            let rps = ok_values(samples, |s| Some(s.rps));
            let _ = writeln!(
                out,
                "| {shape} | {} | {}{} | {} | {} | {} |",
                target.label(),
                rate_cell(&rps),
                failure_note(samples),
                micros(median(ok_values(samples, |s| Some(s.p50_us)))),
                micros(median(ok_values(samples, |s| Some(s.p99_us)))),
                micros(median(ok_values(samples, |s| s.cpu_us))),
            );
        }
        let shapes: Vec<Shape> = {
            let mut s: Vec<Shape> = self.ws.keys().map(|(shape, _)| *shape).collect();
            s.dedup();
            s
        };
        let pairs = [
            ("traced / jsonrpsee", Target::SkeinTraced, Target::Jsonrpsee),
            ("off / jsonrpsee", Target::SkeinOff, Target::Jsonrpsee),
            ("traced / off", Target::SkeinTraced, Target::SkeinOff),
            ("unsampled / off", Target::SkeinUnsampled, Target::SkeinOff),
            ("traced / ceiling", Target::SkeinTraced, Target::Ceiling),
            ("jsonrpsee / ceiling", Target::Jsonrpsee, Target::Ceiling),
            (
                "jsonrpsee + middleware / jsonrpsee",
                Target::JsonrpseeMiddleware,
                Target::Jsonrpsee,
            ),
            (
                "traced / baseline traced",
                Target::SkeinTraced,
                Target::BaselineTraced,
            ),
            ("off / baseline off", Target::SkeinOff, Target::BaselineOff),
            (
                "jsonrpsee + middleware / baseline",
                Target::JsonrpseeMiddleware,
                Target::BaselineJsonrpseeMiddleware,
            ),
        ];
        let _ = writeln!(
            out,
            "\nRatios of medians (req/s: below 1 is slower; CPU / req: above 1 costs more):\n"
        );
        let mut header = String::from("| load | metric |");
        let mut rule = String::from("| --- | --- |");
        for (name, _, _) in pairs {
            let _ = write!(header, " {name} |");
            rule.push_str(" ---: |");
        }
        let _ = writeln!(out, "{header}\n{rule}");
        for &shape in &shapes {
            type Metric = fn(&WsSample) -> Option<f64>;
            let metrics: [(&str, Metric); 3] = [
                ("req/s", |s| Some(s.rps)),
                ("p50", |s| Some(s.p50_us)),
                ("CPU / req", |s| s.cpu_us),
            ];
            for (metric, f) in metrics {
                let mut row = format!("| {shape} | {metric} |");
                for (_, a, b) in pairs {
                    let _ = write!(
                        row,
                        " {} |",
                        ratio(self.ws_median(shape, a, f), self.ws_median(shape, b, f))
                    );
                }
                let _ = writeln!(out, "{row}");
            }
        }
        self.paired_ratios(out, &shapes, Target::JsonrpseeMiddleware, Target::Jsonrpsee);
    }

    /// `a / b` req/s within each repetition, where the two ran back to back
    /// (so they share the machine's state of the moment), per shape.
    fn paired_ratios(&self, out: &mut String, shapes: &[Shape], a: Target, b: Target) {
        let mut lines = Vec::new();
        for &shape in shapes {
            let (Some(a_samples), Some(b_samples)) =
                (self.ws.get(&(shape, a)), self.ws.get(&(shape, b)))
            else {
                continue;
            };
            let per_rep: Vec<String> = a_samples
                .iter()
                .zip(b_samples)
                .map(|pair| match pair {
                    (Ok(x), Ok(y)) => ratio(Some(x.rps), Some(y.rps)),
                    _ => "–".into(),
                })
                .collect();
            lines.push(format!("{shape}: {}", per_rep.join(", ")));
        }
        if !lines.is_empty() {
            let _ = writeln!(
                out,
                "\n{} / {} req/s in each repetition (measured back to back): {}.",
                a.label(),
                b.label(),
                lines.join("; ")
            );
        }
    }

    fn mcp_table(&self, out: &mut String, settings: &Settings) {
        let _ = writeln!(
            out,
            "\n**MCP: an rmcp server answering {} pipelined `tools/call` over stdio** \
             (server CPU, user + system, per call; spans of the traced server go to a batch \
             processor whose exporter discards them)\n",
            thousands(settings.mcp_calls as f64)
        );
        let _ = writeln!(out, "| server | CPU µs/call | calls/s | / without layer |");
        let _ = writeln!(out, "| --- | ---: | ---: | ---: |");
        let cpu = |traced: bool| {
            self.mcp
                .get(&traced)
                .and_then(|s| median(ok_values(s, |v| Some(v.cpu_us_per_call))))
        };
        for (traced, samples) in self.mcp.iter().rev() {
            let label = if *traced {
                "rmcp + skein-rmcp TracedServer"
            } else {
                "rmcp, no layer"
            };
            let _ = writeln!(
                out,
                "| {label} | {}{} | {} | {} |",
                cpu(*traced).map_or("–".into(), |v| format!("{v:.1}")),
                failure_note(samples),
                rate_cell(&ok_values(samples, |v| Some(v.calls_per_s))),
                ratio(cpu(*traced), cpu(false))
            );
        }
    }

    fn stdio_table(&self, out: &mut String, settings: &Settings) {
        let _ = writeln!(
            out,
            "\n**stdio, {} pipelined `model/list` lines** (writer and reader concurrent; \
             every response checked)\n",
            thousands(settings.stdio_requests as f64)
        );
        let _ = writeln!(out, "| server | req/s | / line echo |");
        let _ = writeln!(out, "| --- | ---: | ---: |");
        let echo = self.stdio_median(Target::LineEcho);
        for (target, samples) in &self.stdio {
            let rates = ok_values(samples, |v| Some(*v));
            let _ = writeln!(
                out,
                "| {} | {}{} | {} |",
                target.label(),
                rate_cell(&rates),
                failure_note(samples),
                ratio(self.stdio_median(*target), echo)
            );
        }
    }

    fn stream_table(&self, out: &mut String, settings: &Settings) {
        let _ = writeln!(
            out,
            "\n**Streaming: one turn of {} `item/agentMessage/delta` notifications** \
             (echo model, no delay; one actively reading client)\n",
            thousands(settings.stream_deltas as f64)
        );
        let _ = writeln!(out, "| transport | server | deltas/s | result |");
        let _ = writeln!(out, "| --- | --- | ---: | --- |");
        for ((transport, target), samples) in &self.stream {
            let good: Vec<f64> = samples
                .iter()
                .filter_map(|s| s.as_ref().ok())
                .filter(|s| s.failure.is_none())
                .map(|s| s.rate)
                .collect();
            let failed: Vec<String> = samples
                .iter()
                .filter_map(|s| match s {
                    Ok(s) => s.failure.clone(),
                    Err(e) => Some(e.clone()),
                })
                .collect();
            let result = if failed.is_empty() {
                format!("ok {}/{}", samples.len(), samples.len())
            } else {
                let got: Vec<String> = samples
                    .iter()
                    .filter_map(|s| s.as_ref().ok())
                    .map(|s| thousands(s.deltas as f64))
                    .collect();
                format!(
                    "**FAILED {}/{}**: {} (deltas received per rep: {})",
                    failed.len(),
                    samples.len(),
                    failed[0].replace('|', "\\|"),
                    got.join(", ")
                )
            };
            let _ = writeln!(
                out,
                "| {transport} | {} | {} | {result} |",
                target.label(),
                rate_cell(&good)
            );
        }
    }

    fn rss_table(&self, out: &mut String, settings: &Settings) {
        let n = settings.rss_connections;
        let _ = writeln!(
            out,
            "\n**Memory (VmRSS): idle, with {} idle initialized WebSocket connections, \
             after they close**\n",
            thousands(n as f64)
        );
        let _ = writeln!(
            out,
            "| server | idle | {} open | after close | KiB / connection | fds left after close |",
            thousands(n as f64)
        );
        let _ = writeln!(out, "| --- | ---: | ---: | ---: | ---: | ---: |");
        let mib = |v: Option<f64>| v.map_or("–".into(), |k| format!("{:.1} MiB", k / 1024.0));
        for (target, samples) in &self.rss {
            let unsettled = samples
                .iter()
                .filter(|s| s.as_ref().is_ok_and(|s| s.unsettled))
                .count();
            let _ = writeln!(
                out,
                "| {} | {} | {} | {}{} | {}{} | {} |",
                target.label(),
                mib(median(ok_values(samples, |s| Some(s.idle as f64)))),
                mib(median(ok_values(samples, |s| Some(s.open as f64)))),
                mib(median(ok_values(samples, |s| Some(s.closed as f64)))),
                if unsettled > 0 {
                    format!(" (still moving in {unsettled} reps)")
                } else {
                    String::new()
                },
                median(ok_values(samples, |s| Some(s.per_connection)))
                    .map_or("–".into(), |v| format!("{v:.1}")),
                failure_note(samples),
                median(ok_values(samples, |s| Some(s.fds_left as f64)))
                    .map_or("–".into(), |v| format!("{v:.0}")),
            );
        }
        let per = |t| self.rss_median(t, |s| Some(s.per_connection));
        let _ = writeln!(
            out,
            "\nKiB / connection ratios: traced / jsonrpsee {}, off / jsonrpsee {}, \
             traced / ceiling {}.",
            ratio(per(Target::SkeinTraced), per(Target::Jsonrpsee)),
            ratio(per(Target::SkeinOff), per(Target::Jsonrpsee)),
            ratio(per(Target::SkeinTraced), per(Target::Ceiling)),
        );
    }

    fn checks_table(&self, out: &mut String) {
        let failed = self.checks.iter().filter(|c| !c.ok).count();
        let _ = writeln!(
            out,
            "\n**Span store check after each traced run** (SIGTERM, wait for exit, then \
             exactly one `app_server.request` span per answered request, matched by \
             `rpc.request_id`): {}\n",
            if failed == 0 {
                format!("all {} held.", self.checks.len())
            } else {
                format!("**{failed} of {} FAILED.**", self.checks.len())
            }
        );
        let _ = writeln!(out, "| run | result | spans / answered requests |");
        let _ = writeln!(out, "| --- | --- | --- |");
        for check in &self.checks {
            let _ = writeln!(
                out,
                "| {} | {} | {} |",
                check.run,
                if check.ok { "ok" } else { "**FAILED**" },
                check.detail.replace('|', "\\|").replace('\n', " ")
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_format_for_tables() {
        assert_eq!(thousands(1_234_567.4), "1,234,567");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0]), Some(2.5));
        assert_eq!(median(vec![]), None);
        assert_eq!(ratio(Some(1.0), Some(4.0)), "0.25");
        assert_eq!(rate_cell(&[90.0, 100.0, 110.0]), "100 ±10%");
    }
}
