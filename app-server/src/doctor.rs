//! `skein doctor`: the effective configuration and the machine, checked
//! item by item before any turn, for people (one line per item) and
//! scripts (`--json`).
//!
//! It reads what `skein serve` reads, the same way: config.toml with the
//! `-c` overrides (`skein_core::Config::load`, whose unknown-key check it
//! reports), the trace store directory, the OTLP environment (with a
//! Codex `[otel]` table mapped onto it as `serve` does) and the limits
//! that decide the descriptor budget ([`crate::descriptors`]). Nothing is
//! started unless asked: MCP servers only with `--start-mcp`, through
//! core's MCP client, as a turn would start them.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;
use skein_core::Config;
use skein_otel::export::OtlpSettings;
use skein_otel::otlp_connection::Signal;

use crate::descriptors;

/// How long the TCP connect to the OTLP collector may take.
pub const OTLP_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// What `skein doctor` checks, resolved from its command line.
#[derive(Clone, Debug)]
pub struct DoctorOptions {
    /// `$SKEIN_HOME/config.toml`.
    pub config_path: PathBuf,
    /// `-c key=value` overrides.
    pub overrides: Vec<String>,
    /// The local trace store's directory; `None` when it is off.
    pub trace_dir: Option<PathBuf>,
    /// `--otlp-endpoint` / `--otlp-protocol`.
    pub otlp: OtlpSettings,
    /// The limits the descriptor budget is computed from.
    pub limits: descriptors::Limits,
    /// Start each MCP server and list its tools.
    pub start_mcp: bool,
}

/// The outcome of one check.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Fine.
    Ok,
    /// Something is wrong: `skein doctor` exits non-zero.
    Fail,
    /// Not checked (what it depends on failed, or it is off).
    Skip,
}

impl Status {
    fn label(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Fail => "FAIL",
            Status::Skip => "skip",
        }
    }
}

/// One checked item. The field names are stable (`--json`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Check {
    /// The kind of check: `config`, `unknown_key`, `model`, `provider_key`,
    /// `mcp_command`, `mcp_start`, `trace_store`, `otlp_endpoint`,
    /// `descriptors`.
    pub check: &'static str,
    /// What was checked (a file, a provider id, a server name...).
    pub item: String,
    /// The outcome.
    pub status: Status,
    /// What was found, for people.
    pub detail: String,
}

/// Every check, in order.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    /// True when no check failed.
    pub ok: bool,
    /// The checks.
    pub checks: Vec<Check>,
}

impl Report {
    fn push(
        &mut self,
        check: &'static str,
        item: impl Into<String>,
        status: Status,
        detail: impl Into<String>,
    ) {
        self.checks.push(Check {
            check,
            item: item.into(),
            status,
            detail: detail.into(),
        });
    }

    /// One line per check (a multi-line detail indented under it), then
    /// a summary.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        for c in &self.checks {
            let mut lines = c.detail.lines();
            let first = lines.next().unwrap_or("");
            let item = if c.item.is_empty() {
                String::new()
            } else {
                format!("{}: ", c.item)
            };
            out.push_str(&format!(
                "{:<4}  {:<13} {item}{first}\n",
                c.status.label(),
                c.check,
            ));
            for line in lines {
                out.push_str(&format!("      {:<13} {line}\n", ""));
            }
        }
        let failed = self
            .checks
            .iter()
            .filter(|c| c.status == Status::Fail)
            .count();
        if failed == 0 {
            out.push_str(&format!("{} checks, all fine\n", self.checks.len()));
        } else {
            out.push_str(&format!("{} checks, {failed} failed\n", self.checks.len()));
        }
        out
    }
}

/// Runs every check, reading the process environment (provider keys are
/// only tested for being set; their values are never shown).
pub fn run(options: &DoctorOptions) -> Report {
    let mut report = Report::default();
    let config = check_config(options, &mut report);
    if let Some(config) = &config {
        check_providers(config, &mut report);
        check_mcp(config, options.start_mcp, &mut report);
    }
    check_trace_store(options.trace_dir.as_deref(), &mut report);
    check_otlp(config.as_ref(), &options.otlp, &mut report);
    check_descriptors(options.limits, &mut report);
    report.ok = report.checks.iter().all(|c| c.status != Status::Fail);
    report
}

fn check_config(options: &DoctorOptions, report: &mut Report) -> Option<Config> {
    let path = options.config_path.display().to_string();
    match Config::load(&options.config_path, &options.overrides) {
        Ok(config) => {
            let how = if options.config_path.is_file() {
                "parsed"
            } else {
                "absent: the defaults"
            };
            let with = if options.overrides.is_empty() {
                String::new()
            } else {
                format!(", with {} -c override(s)", options.overrides.len())
            };
            report.push("config", path, Status::Ok, format!("{how}{with}"));
            for unknown in &config.unknown_keys {
                report.push(
                    "unknown_key",
                    unknown.key.clone(),
                    Status::Fail,
                    format!(
                        "{unknown}: neither Skein nor Codex defines it, so it is ignored (a typo?)"
                    ),
                );
            }
            report.push(
                "model",
                config.model.clone(),
                Status::Ok,
                format!("the default model, of provider `{}`", config.model_provider),
            );
            Some(config)
        }
        Err(err) => {
            report.push("config", path, Status::Fail, err.to_string());
            None
        }
    }
}

fn check_providers(config: &Config, report: &mut Report) {
    for provider in config.providers.values() {
        // The built-in openai matters only as the default.
        if provider.builtin && provider.id != config.model_provider {
            continue;
        }
        let (status, detail) = match (&provider.env_key, &provider.api_key) {
            (Some(var), Some(_)) => (Status::Ok, format!("{var} is set ({})", provider.base_url)),
            (None, _) => (
                Status::Ok,
                format!(
                    "no env_key: requests carry no API key ({})",
                    provider.base_url
                ),
            ),
            // The key it names is missing.
            (Some(_), None) => (Status::Fail, provider.key_hint()),
        };
        report.push("provider_key", provider.id.clone(), status, detail);
    }
}

fn check_mcp(config: &Config, start: bool, report: &mut Report) {
    for (name, server) in &config.mcp_servers {
        if let Some(url) = &server.url {
            // Reached over streamable HTTP: nothing to find on PATH.
            let token_unset = server
                .bearer_token_env_var
                .as_ref()
                .filter(|var| std::env::var(var).map_or(true, |v| v.trim().is_empty()));
            match token_unset {
                Some(var) => report.push(
                    "mcp_url",
                    name.clone(),
                    Status::Fail,
                    format!("{url}: the variable {var} (bearer_token_env_var) is not set"),
                ),
                None => report.push("mcp_url", name.clone(), Status::Ok, url.clone()),
            }
            continue;
        }
        match find_command(&server.command, &server.env) {
            Some(path) => report.push(
                "mcp_command",
                name.clone(),
                Status::Ok,
                format!("`{}` is {}", server.command, path.display()),
            ),
            None => report.push(
                "mcp_command",
                name.clone(),
                Status::Fail,
                format!("`{}` is not found on PATH", server.command),
            ),
        }
    }
    if !start || config.mcp_servers.is_empty() {
        return;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            report.push(
                "mcp_start",
                "",
                Status::Fail,
                format!("cannot start a runtime: {err}"),
            );
            return;
        }
    };
    for (name, server) in &config.mcp_servers {
        let one = BTreeMap::from([(name.clone(), server.clone())]);
        let manager = skein_core::mcp::McpManager::new(&one);
        let statuses = runtime.block_on(async {
            manager.tools().await;
            let statuses = manager.statuses();
            manager.shutdown().await;
            statuses
        });
        for status in statuses {
            match status.error {
                None => {
                    let tools: Vec<&str> = status.tools.iter().map(|t| t.name.as_str()).collect();
                    report.push(
                        "mcp_start",
                        status.name,
                        Status::Ok,
                        format!("started; {} tool(s): {}", tools.len(), tools.join(", ")),
                    );
                }
                Some(error) => report.push("mcp_start", status.name, Status::Fail, error),
            }
        }
    }
    runtime.shutdown_timeout(skein_core::mcp::STOP_TIMEOUT);
}

/// `command` as the server's spawn would find it: a path as given, else
/// the first executable of that name on PATH (the server's own `PATH`
/// when its `env` sets one).
fn find_command(command: &str, env: &BTreeMap<String, String>) -> Option<PathBuf> {
    if command.contains('/') {
        let path = PathBuf::from(command);
        return is_executable(&path).then_some(path);
    }
    let path_var = env
        .get("PATH")
        .cloned()
        .or_else(|| std::env::var("PATH").ok())?;
    std::env::split_paths(&path_var)
        .map(|dir| dir.join(command))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    }
    #[cfg(not(unix))]
    {
        path.is_file()
    }
}

fn check_trace_store(dir: Option<&Path>, report: &mut Report) {
    let Some(dir) = dir else {
        report.push(
            "trace_store",
            "",
            Status::Skip,
            "off (--trace-dir none or OTEL_SDK_DISABLED)",
        );
        return;
    };
    let item = dir.display().to_string();
    if dir.is_dir() {
        // A real write: a read-only or full file system says so here.
        let probe = dir.join(format!(".skein-doctor-{}", std::process::id()));
        let written = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&probe)
            .and_then(|mut f| std::io::Write::write_all(&mut f, b"probe\n"));
        let _ = std::fs::remove_file(&probe);
        match written {
            Ok(()) => report.push("trace_store", item, Status::Ok, "writable"),
            Err(err) => report.push(
                "trace_store",
                item,
                Status::Fail,
                format!("cannot write: {err}"),
            ),
        }
        return;
    }
    if dir.exists() {
        report.push(
            "trace_store",
            item,
            Status::Fail,
            "exists and is not a directory",
        );
        return;
    }
    // `serve` creates it: the nearest existing folder must allow that.
    let mut parent = dir.parent();
    while let Some(p) = parent {
        if p.as_os_str().is_empty() {
            parent = Some(Path::new("."));
            break;
        }
        if p.exists() {
            break;
        }
        parent = p.parent();
    }
    let Some(parent) = parent else {
        report.push(
            "trace_store",
            item,
            Status::Fail,
            "no existing parent folder",
        );
        return;
    };
    if writable_dir(parent) {
        report.push(
            "trace_store",
            item,
            Status::Ok,
            format!("absent; `skein serve` creates it in {}", parent.display()),
        );
    } else {
        report.push(
            "trace_store",
            item,
            Status::Fail,
            format!(
                "absent, and {} is not writable to create it",
                parent.display()
            ),
        );
    }
}

fn writable_dir(dir: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt as _;
        let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
            return false;
        };
        // SAFETY: access reads the NUL-terminated path it is given.
        unsafe { libc::access(c.as_ptr(), libc::W_OK | libc::X_OK) == 0 }
    }
    #[cfg(not(unix))]
    {
        dir.is_dir()
    }
}

/// Codex's `[otel]` exporters of `config` as the standard `OTEL_*`
/// variables the export reads (`OtelConfig::export_env`), with
/// `flag_endpoint` (`--otlp-endpoint`) standing for
/// `OTEL_EXPORTER_OTLP_ENDPOINT`: a variable set in the environment, and
/// the flag, win over the table. `skein serve` sets them before telemetry
/// starts; doctor checks what they give.
pub fn otel_config_env(config: &Config, flag_endpoint: Option<&str>) -> Vec<(String, String)> {
    config.otel.export_env(&|name| {
        if name == "OTEL_EXPORTER_OTLP_ENDPOINT" && flag_endpoint.is_some() {
            return flag_endpoint.map(str::to_owned);
        }
        std::env::var(name).ok()
    })
}

fn check_otlp(config: Option<&Config>, settings: &OtlpSettings, report: &mut Report) {
    // Codex's [otel] exporters count as `serve` counts them: as the
    // standard variables, where the environment and the flag say nothing.
    let from_config = config.map_or_else(Vec::new, |c| {
        otel_config_env(c, settings.endpoint.as_deref())
    });
    // The table sets the spans' endpoint only where neither the flag nor
    // the environment names one.
    let [traces_endpoint, _] = Signal::Traces.vars("ENDPOINT");
    let enabled =
        settings.enabled() || from_config.iter().any(|(name, _)| *name == traces_endpoint);
    if !enabled {
        report.push(
            "otlp_endpoint",
            "",
            Status::Skip,
            "off (no endpoint configured)",
        );
        return;
    }
    for (name, value) in &from_config {
        // SAFETY: doctor runs on the main thread before any other exists
        // (the MCP runtime, if any, has been shut down).
        unsafe { std::env::set_var(name, value) };
    }
    // The protocol, connection and endpoint the span exporter would use.
    let (protocol, connection) = match settings.traces_connection() {
        Ok(resolved) => resolved,
        Err(err) => {
            report.push("otlp_endpoint", "", Status::Fail, err.to_string());
            return;
        }
    };
    let endpoint = connection.endpoint(protocol, settings.endpoint.as_deref());
    let Some((host, port)) = host_port(&endpoint) else {
        report.push(
            "otlp_endpoint",
            endpoint,
            Status::Fail,
            "no host in the URL",
        );
        return;
    };
    let addrs: Vec<SocketAddr> = match (host.as_str(), port).to_socket_addrs() {
        Ok(addrs) => addrs.collect(),
        Err(err) => {
            report.push(
                "otlp_endpoint",
                endpoint,
                Status::Fail,
                format!("cannot resolve {host}: {err}"),
            );
            return;
        }
    };
    let mut last_error = None;
    for addr in &addrs {
        match TcpStream::connect_timeout(addr, OTLP_CONNECT_TIMEOUT) {
            Ok(_) => {
                report.push(
                    "otlp_endpoint",
                    endpoint,
                    Status::Ok,
                    format!("{protocol} reachable at {addr} (TCP)"),
                );
                return;
            }
            Err(err) => last_error = Some(format!("{addr}: {err}")),
        }
    }
    report.push(
        "otlp_endpoint",
        endpoint,
        Status::Fail,
        format!(
            "not reachable within {}s: {}",
            OTLP_CONNECT_TIMEOUT.as_secs(),
            last_error.unwrap_or_else(|| format!("{host} has no address"))
        ),
    );
}

/// The host and port of an `http(s)://host[:port]/...` URL (ports 80 and
/// 443 by default).
fn host_port(url: &str) -> Option<(String, u16)> {
    let (default_port, rest) = if let Some(rest) = url.strip_prefix("https://") {
        (443, rest)
    } else if let Some(rest) = url.strip_prefix("http://") {
        (80, rest)
    } else {
        (80, url)
    };
    let authority = rest.split(['/', '?', '#']).next()?;
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
        let (host, after) = bracketed.split_once(']')?;
        (host, after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return None;
    }
    let port = match port {
        Some(p) => p.parse().ok()?,
        None => default_port,
    };
    Some((host.to_owned(), port))
}

fn check_descriptors(limits: descriptors::Limits, report: &mut Report) {
    let Some(limit) = descriptors::current() else {
        report.push(
            "descriptors",
            "",
            Status::Skip,
            "the limit on open files cannot be read here",
        );
        return;
    };
    let needed = limits.needed();
    // `serve` raises the soft limit to the hard one at startup.
    if limit.hard >= needed {
        report.push(
            "descriptors",
            "",
            Status::Ok,
            format!(
                "the limits can need {needed} open files; hard limit {} (soft {}, raised by serve)",
                limit.hard, limit.soft
            ),
        );
    } else {
        report.push(
            "descriptors",
            "",
            Status::Fail,
            format!(
                "the limits can need {needed} open files ({}), above the hard limit {}: raise it \
                 (ulimit -Hn, LimitNOFILE=) or lower --max-connections / {}",
                limits.explain(),
                limit.hard,
                limits.lower_flag()
            ),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_give_their_host_and_port() {
        assert_eq!(
            host_port("http://localhost:4318/v1/traces"),
            Some(("localhost".into(), 4318))
        );
        assert_eq!(
            host_port("https://collector.example/v1/traces"),
            Some(("collector.example".into(), 443))
        );
        assert_eq!(host_port("http://[::1]:4317"), Some(("::1".into(), 4317)));
        assert_eq!(host_port("http:///v1/traces"), None);
    }
}
