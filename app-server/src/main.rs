//! The `skein` command.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use skein_app_server::limits::{
    DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_LOADED_THREADS, DEFAULT_MAX_PENDING_CONNECTIONS,
    DEFAULT_MAX_RUNNING_TURNS,
};
use skein_app_server::paths;
use skein_app_server::transport::auth::{MAX_CLOCK_SKEW, SignedBearerSettings, WsAuth};
use skein_app_server::{
    CoreConfig, DEFAULT_MAX_MESSAGE_BYTES, ListenAddr, ServerConfig, WebSocketOptions,
};
use skein_core::ThreadStore;
use skein_otel::export::{OtlpProtocol, OtlpSettings};
use skein_otel::local_store::{self, Retention};
use skein_otel::telemetry::{self, TelemetryConfig, sdk_disabled_by_env};

/// Skein: a tracing-native JSON-RPC app-server for agent runtimes.
#[derive(Debug, Parser)]
#[command(name = "skein", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the app-server.
    ///
    /// Speaks JSON-RPC 2.0 over stdio (newline-delimited JSON; stdout carries
    /// protocol messages only, logs go to stderr) or WebSocket (one message
    /// per text frame). A request may carry a W3C trace carrier as
    /// `"trace": {"traceparent": ..., "tracestate": ...}`; its span then
    /// continues the client's trace. Spans are written to a local store of
    /// OTLP/JSON lines.
    ///
    /// Logs: set RUST_LOG (default `warn,skein=info`: Skein at INFO, its
    /// dependencies at WARN). It filters logs only, never
    /// which spans are recorded. The environment's TRACEPARENT/TRACESTATE
    /// parent requests that carry no carrier of their own.
    Serve(Box<ServeArgs>),

    /// Read the local trace store: list traces, view one (or a thread's
    /// turns) as a span tree, sum them up per method, model and tool, or
    /// follow spans as servers write them.
    ///
    /// The store is the directory `skein serve` writes: --dir, else
    /// SKEIN_TRACE_DIR, else $SKEIN_HOME/traces. Times are UTC. Output is
    /// coloured only when stdout is a terminal and NO_COLOR is unset.
    /// Unreadable store lines are skipped with a warning on stderr.
    Trace {
        #[command(subcommand)]
        command: skein_app_server::trace_view::TraceCommand,
    },

    /// Check the configuration and the machine before any turn, item by
    /// item: config.toml parses (with the -c overrides) and has no unknown
    /// key, each provider's `env_key` variable is set (never shown), each
    /// MCP server's command is found (with --start-mcp: started, its tools
    /// listed), the trace store is writable, the OTLP collector accepts a
    /// TCP connection, and the limit on open files fits the configured
    /// limits. Reads config.toml, -c, the store and OTLP settings as
    /// `skein serve` does. Exits 1 when a check fails.
    Doctor(Box<DoctorArgs>),

    /// Print a shell completion script for `skein` to stdout.
    ///
    /// bash: `skein completions bash > ~/.local/share/bash-completion/completions/skein`;
    /// zsh: `skein completions zsh > ~/.zfunc/_skein` (with `fpath+=~/.zfunc`
    /// before `compinit` in ~/.zshrc); fish: `skein completions fish >
    /// ~/.config/fish/completions/skein.fish`.
    Completions {
        /// The shell.
        #[arg(value_name = "SHELL")]
        shell: CompletionShell,
    },
}

/// Shells `skein completions` writes a script for.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum CompletionShell {
    /// Bash.
    Bash,
    /// Zsh.
    Zsh,
    /// Fish.
    Fish,
}

/// Writes the completion script of `shell` to stdout.
fn completions(shell: CompletionShell) -> anyhow::Result<()> {
    use clap::CommandFactory as _;
    use clap_complete::Shell;
    let shell = match shell {
        CompletionShell::Bash => Shell::Bash,
        CompletionShell::Zsh => Shell::Zsh,
        CompletionShell::Fish => Shell::Fish,
    };
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "skein", &mut script);
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    out.write_all(&script)
        .and_then(|()| out.flush())
        .context("writing the completion script to stdout")
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// Where to listen: `stdio://`, `ws://IP:PORT` (IP may be
    /// `localhost`, meaning 127.0.0.1, and an IPv6 address goes in
    /// brackets, `ws://[::1]:4500`; port 0 picks a free port; the address
    /// is printed to stderr as `listening on ws://IP:PORT`),
    /// or `unix://PATH`: WebSocket over a Unix domain socket, as the Codex
    /// app-server does (`codex --remote unix://PATH`), with no TCP port
    /// open. The socket file is made owner-only (0600), and folders created
    /// for it 0700; `unix://` alone means $SKEIN_HOME/run/app-server.sock.
    /// A socket file left by a dead process is replaced; one a live server
    /// answers on is refused. It is removed when the server stops. The
    /// --ws-* flags apply as over TCP.
    #[arg(long, value_name = "URL", default_value = "stdio://")]
    listen: ListenAddr,

    /// Directory of the local trace store, or `none` to write no local
    /// store. Default: $SKEIN_HOME/traces, with SKEIN_HOME defaulting to
    /// ~/.skein. The store and OTLP export can run side by side. Each
    /// process writes its own files, rotated and deleted as the
    /// --trace-max-file-size, --trace-max-total-size and --trace-retention
    /// limits say; when the store cannot be written (a full disk), spans
    /// are dropped and counted, and the server keeps serving.
    /// OTEL_SDK_DISABLED=true turns all span export off.
    #[arg(long, value_name = "DIR", env = "SKEIN_TRACE_DIR")]
    trace_dir: Option<String>,

    /// Start a new local store file before this process's file grows past
    /// this size. A size is a whole number with an optional unit B, KiB,
    /// MiB or GiB (powers of 1024).
    #[arg(long, value_name = "SIZE", default_value = "64MiB", value_parser = parse_size)]
    trace_max_file_size: u64,

    /// Keep at most this much in the local store directory, counting every
    /// process's files: the oldest closed files are deleted until the
    /// closed files, plus each file being written counted at
    /// --trace-max-file-size, fit (a file another live process writes
    /// never is). Spans deleted are counted, as `deleted_by_retention` at
    /// shutdown.
    #[arg(long, value_name = "SIZE", default_value = "1GiB", value_parser = parse_size)]
    trace_max_total_size: u64,

    /// Delete closed local store files not written for longer than this:
    /// a whole number with a unit s, m, h or d, like 30m, 12h or 7d.
    #[arg(long, value_name = "AGE", default_value = "7d", value_parser = parse_age)]
    trace_retention: Duration,

    /// Also export spans and metrics over OTLP to this collector endpoint
    /// (the base URL, as in OTEL_EXPORTER_OTLP_ENDPOINT: `/v1/traces` and
    /// `/v1/metrics` are appended for the HTTP protocols). Overrides the environment. Without this flag, OTLP
    /// export is on when OTEL_EXPORTER_OTLP_ENDPOINT or
    /// OTEL_EXPORTER_OTLP_TRACES_ENDPOINT is set; the other standard
    /// OTEL_EXPORTER_OTLP_* variables (HEADERS, TIMEOUT, and for TLS
    /// CERTIFICATE, CLIENT_CERTIFICATE, CLIENT_KEY, INSECURE), OTEL_SERVICE_NAME,
    /// OTEL_RESOURCE_ATTRIBUTES and OTEL_TRACES_SAMPLER apply too. An
    /// `https://` endpoint uses TLS, trusting the system's certificates or
    /// those of OTEL_EXPORTER_OTLP_CERTIFICATE.
    #[arg(long, value_name = "URL")]
    otlp_endpoint: Option<String>,

    /// OTLP protocol: http/protobuf (default), grpc or http/json. Overrides
    /// OTEL_EXPORTER_OTLP_PROTOCOL.
    #[arg(long, value_name = "PROTOCOL")]
    otlp_protocol: Option<OtlpProtocol>,

    /// Largest inbound message accepted, in bytes. Larger ones are refused
    /// with an error, without being read into memory.
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_MAX_MESSAGE_BYTES as u64,
          value_parser = clap::value_parser!(u64).range(1024..=1024 * 1024 * 1024))]
    max_message_bytes: u64,

    /// End a connection whose client stops reading: when nothing could be
    /// written to it for this many seconds (its notifications pile up
    /// otherwise). A client that keeps reading, however slowly the network
    /// is, never loses a notification: while it is behind, consecutive text
    /// deltas are merged. Over stdio, this shuts the server down.
    #[arg(long, value_name = "SECS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    client_stall_timeout: u64,

    /// Delay of the offline `echo` model between streamed words, in
    /// milliseconds. A larger delay holds turns open longer.
    #[arg(long, value_name = "MS", default_value_t = 0)]
    echo_delay_ms: u64,

    /// Override a key of $SKEIN_HOME/config.toml: `-c key=value`, the value
    /// in TOML syntax (e.g. `-c model="gpt-4.1-mini"`, `-c
    /// otel.capture_content=true`); repeatable; wins over the file. The
    /// file sets the default model and provider, `[model_providers.<id>]`
    /// (OpenAI-compatible APIs), `[mcp_servers.<name>]` (tool servers over
    /// stdio) and `[otel]` content recording; Codex's `[otel]` exporters
    /// (`trace_exporter`, `metrics_exporter`, `environment`,
    /// `log_user_prompt`) are mapped onto OTLP export, with the standard
    /// OTEL_* variables winning; see the README.
    #[arg(short = 'c', long = "config", value_name = "KEY=VALUE")]
    config_overrides: Vec<String>,

    /// Refuse to start when config.toml (or a -c override) sets a
    /// top-level key neither Skein nor Codex defines, naming it (Codex's
    /// flag). Without it such a key is warned about, with its file and
    /// line; keys of Codex's that Skein does not use are only listed at
    /// debug level.
    #[arg(long)]
    strict_config: bool,

    /// How long shutdown may spend flushing spans and the final metrics,
    /// in seconds. Past it, what is still unsent is counted as dropped and
    /// the process exits anyway: an unreachable collector never holds it.
    #[arg(long, value_name = "SECS", default_value_t = 5)]
    shutdown_timeout: u64,

    /// Authenticate WebSocket clients: each upgrade request must carry
    /// `Authorization: Bearer TOKEN`, checked before the upgrade (a missing
    /// or wrong token gets HTTP 401). `capability-token`: TOKEN must equal
    /// the contents of --ws-token-file, or have the SHA-256 digest given by
    /// --ws-token-sha256. `signed-bearer-token`: TOKEN is an
    /// HS256 JWT signed with the secret in --ws-shared-secret-file, with
    /// `exp` required and `nbf` honoured. Required to listen on an address
    /// other than loopback. `GET /healthz` stays open.
    #[arg(long, value_name = "MODE")]
    ws_auth: Option<WsAuthMode>,

    /// The capability token (file readable by its owner only, not empty).
    #[arg(long, value_name = "PATH", conflicts_with = "ws_token_sha256")]
    ws_token_file: Option<PathBuf>,

    /// The capability token given as its SHA-256 digest, 64 hexadecimal
    /// digits, instead of a file (Codex's flag): with `--ws-auth
    /// capability-token`, a bearer token is accepted when its digest is
    /// this one (compared in constant time). E.g. `--ws-token-sha256
    /// "$(printf %s "$TOKEN" | sha256sum | cut -d' ' -f1)"`.
    #[arg(long, value_name = "HEX", value_parser = parse_token_digest)]
    ws_token_sha256: Option<[u8; 32]>,

    /// The HS256 shared secret, at least 32 bytes (file readable by its
    /// owner only).
    #[arg(long, value_name = "PATH")]
    ws_shared_secret_file: Option<PathBuf>,

    /// With signed bearer tokens: the `iss` claim required. A token
    /// without `iss`, or whose `iss` is not this one string, is refused.
    #[arg(long, value_name = "ISSUER")]
    ws_issuer: Option<String>,

    /// With signed bearer tokens: the audience `aud` must name (the string
    /// itself, or an array of strings holding it). A token without `aud`
    /// is refused.
    #[arg(long, value_name = "AUDIENCE")]
    ws_audience: Option<String>,

    /// With signed bearer tokens: clock difference tolerated when checking
    /// `exp` and `nbf`, in seconds; at most 86400 (a day).
    #[arg(long, value_name = "SECS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(..=MAX_CLOCK_SKEW.as_secs()))]
    ws_max_clock_skew_seconds: u64,

    /// Listen on a non-loopback address without --ws-auth anyway: anyone
    /// who can reach the address can then drive the server.
    #[arg(long)]
    ws_allow_unauthenticated: bool,

    /// The limits on connections, running turns and loaded threads.
    #[command(flatten)]
    limits: LimitArgs,

    /// Most WebSocket connections before their upgrade (still sending their
    /// request head, 5 s at most, or being answered), which
    /// --max-connections does not count; also at most a quarter of the
    /// limit on open files, so that the rest is kept for authenticated
    /// work. Past it, a new connection evicts the oldest one still waiting
    /// for its head: a valid client sends its head at once, so a flood of
    /// idle connections cannot keep it out, where refusing newcomers would.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_PENDING_CONNECTIONS,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    max_pending_connections: usize,

    /// Close a WebSocket connection whose client sent nothing for this many
    /// seconds. After half of it without input the server sends a
    /// WebSocket ping; the pong a live client answers with counts as input
    /// (any frame does), so a client that is connected but only listening
    /// stays open, and one that does not answer is closed. Default: never.
    #[arg(long, value_name = "SECS",
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    ws_idle_timeout: Option<u64>,

    /// Close a WebSocket connection whose client takes longer than this
    /// many seconds to complete a message, from its first byte to its
    /// last: a client trickling a frame byte by byte, or continuation
    /// frames one by one, is never idle, yet holds memory. Unfinished
    /// messages of all connections together may also hold at most four
    /// times --max-message-bytes; past it, the connection adding more is
    /// closed (1013).
    #[arg(long, value_name = "SECS", default_value_t = 60,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    ws_message_timeout: u64,
}

/// The limits `skein serve` enforces, which `skein doctor` checks the
/// descriptor budget against: the same flags on both.
#[derive(Debug, Args)]
struct LimitArgs {
    /// Most open WebSocket connections. Past it, an upgrade gets HTTP 503
    /// with `Retry-After`; open connections are unaffected.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_CONNECTIONS,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    max_connections: usize,

    /// Most turns running at once, across all threads. Past it,
    /// `turn/start`, `review/start` and `thread/compact/start` get error
    /// -32001 "server overloaded; retry later" with `data.retryAfterMs`.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_RUNNING_TURNS,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    max_running_turns: usize,

    /// Most threads kept loaded in memory. Past it, stored threads that no
    /// connection follows and no turn runs are unloaded as soon as that is
    /// so (they stay on disk, their locks are released; `thread/resume`
    /// loads them again). Ephemeral threads are never unloaded. On Linux a
    /// loaded thread holds its history file open only while it appends a
    /// record, so running turns, not loaded threads, count toward open
    /// files (elsewhere each loaded stored thread holds one). The soft
    /// limit on open files is raised to the hard one at startup, with a
    /// warning when connections + history files + 64 cannot fit in it.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_LOADED_THREADS,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    max_loaded_threads: usize,
}

impl LimitArgs {
    /// The limits the descriptor budget counts, for a server listening on
    /// `listen`.
    fn descriptor_limits(&self, listen: &ListenAddr) -> skein_app_server::descriptors::Limits {
        skein_app_server::descriptors::Limits {
            websocket: !matches!(listen, ListenAddr::Stdio),
            max_connections: self.max_connections,
            max_running_turns: self.max_running_turns,
            max_loaded_threads: self.max_loaded_threads,
        }
    }
}

#[derive(Debug, Args)]
struct DoctorArgs {
    /// Override a key of $SKEIN_HOME/config.toml, as `skein serve -c`.
    #[arg(short = 'c', long = "config", value_name = "KEY=VALUE")]
    config_overrides: Vec<String>,

    /// The trace store to check, as `skein serve --trace-dir` (`none`: off).
    #[arg(long, value_name = "DIR", env = "SKEIN_TRACE_DIR")]
    trace_dir: Option<String>,

    /// The OTLP endpoint to check, as `skein serve --otlp-endpoint`;
    /// without it, the OTEL_EXPORTER_OTLP_* environment and config.toml's
    /// [otel] table, as serve reads them.
    #[arg(long, value_name = "URL")]
    otlp_endpoint: Option<String>,

    /// The OTLP protocol, as `skein serve --otlp-protocol`.
    #[arg(long, value_name = "PROTOCOL")]
    otlp_protocol: Option<OtlpProtocol>,

    /// Where serve would listen (it decides whether connections count
    /// against the limit on open files), as `skein serve --listen`.
    #[arg(long, value_name = "URL", default_value = "stdio://")]
    listen: ListenAddr,

    /// The limits serve would run with, as `skein serve` takes them.
    #[command(flatten)]
    limits: LimitArgs,

    /// Also start each MCP server (as a turn would, through core's MCP
    /// client), list its tools, and stop it.
    #[arg(long)]
    start_mcp: bool,

    /// Print the report as one JSON object: `{"ok": bool, "checks":
    /// [{"check", "item", "status" ("ok", "fail" or "skip"), "detail"}]}`.
    #[arg(long)]
    json: bool,
}

/// `skein doctor`: the report on stdout; an error when a check failed.
fn doctor(args: DoctorArgs) -> anyhow::Result<bool> {
    skein_core::providers::install_crypto_provider();
    let options = skein_app_server::doctor::DoctorOptions {
        config_path: paths::skein_home()?.join("config.toml"),
        overrides: args.config_overrides,
        trace_dir: serve_trace_dir(args.trace_dir)?,
        otlp: OtlpSettings {
            endpoint: args.otlp_endpoint,
            protocol: args.otlp_protocol,
        },
        limits: args.limits.descriptor_limits(&args.listen),
        start_mcp: args.start_mcp,
    };
    let report = skein_app_server::doctor::run(&options);
    let text = if args.json {
        let mut json = serde_json::to_string(&report).context("encoding the report")?;
        json.push('\n');
        json
    } else {
        report.to_text()
    };
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .context("writing the report to stdout")?;
    Ok(report.ok)
}

/// `--ws-auth` modes.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum WsAuthMode {
    /// A fixed token read from --ws-token-file, or given as its digest by
    /// --ws-token-sha256.
    CapabilityToken,
    /// An HS256 JWT signed with the secret in --ws-shared-secret-file.
    SignedBearerToken,
}

/// The WebSocket settings from the command line; fails (naming the file)
/// when a token or secret file is unusable.
fn websocket_options(args: &ServeArgs) -> anyhow::Result<WebSocketOptions> {
    let auth = match args.ws_auth {
        None => {
            if args.ws_token_file.is_some()
                || args.ws_token_sha256.is_some()
                || args.ws_shared_secret_file.is_some()
            {
                anyhow::bail!(
                    "--ws-token-file, --ws-token-sha256 and --ws-shared-secret-file need --ws-auth"
                );
            }
            WsAuth::None
        }
        Some(WsAuthMode::CapabilityToken) => match (&args.ws_token_file, &args.ws_token_sha256) {
            (Some(path), _) => WsAuth::capability_token(path)?,
            (None, Some(digest)) => WsAuth::CapabilityTokenDigest { digest: *digest },
            (None, None) => anyhow::bail!(
                "--ws-auth capability-token needs --ws-token-file PATH or --ws-token-sha256 HEX"
            ),
        },
        Some(WsAuthMode::SignedBearerToken) => {
            let Some(path) = &args.ws_shared_secret_file else {
                anyhow::bail!("--ws-auth signed-bearer-token needs --ws-shared-secret-file PATH");
            };
            WsAuth::signed_bearer(&SignedBearerSettings {
                secret_file: path.clone(),
                issuer: args.ws_issuer.clone(),
                audience: args.ws_audience.clone(),
                max_clock_skew: Duration::from_secs(args.ws_max_clock_skew_seconds),
            })?
        }
    };
    Ok(WebSocketOptions {
        auth,
        allow_unauthenticated: args.ws_allow_unauthenticated,
        max_connections: args.limits.max_connections,
        max_pending_connections: args.max_pending_connections,
        idle_timeout: args.ws_idle_timeout.map(Duration::from_secs),
        message_timeout: Duration::from_secs(args.ws_message_timeout),
    })
}

/// `--ws-token-sha256`: 64 hexadecimal digits.
fn parse_token_digest(text: &str) -> Result<[u8; 32], String> {
    skein_app_server::transport::auth::parse_sha256_hex(text).map_err(|e| e.to_string())
}

/// `--trace-max-*-size`: at least 1 KiB.
fn parse_size(text: &str) -> Result<u64, String> {
    let bytes = local_store::parse_size(text).map_err(|e| e.to_string())?;
    if bytes < 1024 {
        return Err(format!("{text:?} is less than the smallest size, 1KiB"));
    }
    Ok(bytes)
}

/// `--trace-retention`: at least a second.
fn parse_age(text: &str) -> Result<Duration, String> {
    let age = local_store::parse_age(text).map_err(|e| e.to_string())?;
    if age.is_zero() {
        return Err(format!("{text:?} keeps nothing; the smallest age is 1s"));
    }
    Ok(age)
}

/// The span processor copying `[otel] baggage_attributes` onto spans, its
/// values through the content redaction patterns; none when no key is
/// listed.
fn baggage_attributes(
    config: &skein_core::Config,
) -> Option<skein_otel::baggage::BaggageAttributes> {
    if config.otel.baggage_attributes.is_empty() {
        return None;
    }
    let content = config.content.clone();
    Some(skein_otel::baggage::BaggageAttributes::new(
        config.otel.baggage_attributes.iter().cloned(),
        std::sync::Arc::new(move |value| content.redact_value_text(value)),
    ))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve(*args),
        Command::Trace { command } => {
            skein_app_server::trace_view::run_cli(command).map_err(Into::into)
        }
        Command::Completions { shell } => completions(shell),
        Command::Doctor(args) => match doctor(*args) {
            // The report said what failed.
            Ok(false) => return ExitCode::FAILURE,
            Ok(true) => Ok(()),
            Err(err) => Err(err),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("skein: error: {}", error_line(&err));
            ExitCode::FAILURE
        }
    }
}

/// An error and its causes on one line, each said once: a cause whose
/// text the line already ends with (an error that names its source in its
/// own message) is not repeated, as `{err:#}` would.
fn error_line(err: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if line.ends_with(text.as_str()) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

/// The thread history store, `$SKEIN_HOME/threads`.
fn open_thread_store() -> anyhow::Result<ThreadStore> {
    let dir = paths::skein_home()?.join("threads");
    ThreadStore::open(&dir)
        .with_context(|| format!("opening the thread store in {}", dir.display()))
}

/// The store directory `skein serve` writes: `None` when export is off.
fn serve_trace_dir(arg: Option<String>) -> anyhow::Result<Option<PathBuf>> {
    if sdk_disabled_by_env() || arg.as_deref() == Some("none") {
        return Ok(None);
    }
    Ok(Some(paths::trace_dir(arg.as_deref())?))
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    if args.trace_max_file_size > args.trace_max_total_size {
        anyhow::bail!(
            "--trace-max-file-size ({} bytes) is larger than --trace-max-total-size ({} bytes)",
            args.trace_max_file_size,
            args.trace_max_total_size
        );
    }
    // Every HTTPS client of the process (model APIs, OTLP) uses rustls
    // with this provider.
    skein_core::providers::install_crypto_provider();
    // Before telemetry: a bad configuration stops startup with its message.
    let config_path = paths::skein_home()?.join("config.toml");
    let config = skein_core::Config::load(&config_path, &args.config_overrides)?;
    if args.strict_config && !config.unknown_keys.is_empty() {
        let keys: Vec<String> = config
            .unknown_keys
            .iter()
            .map(ToString::to_string)
            .collect();
        anyhow::bail!(
            "{} (--strict-config refuses keys neither Skein nor Codex defines)",
            keys.join("; ")
        );
    }
    // Codex's [otel] exporters, as the standard variables the export reads
    // (any variable already set, and --otlp-endpoint, win).
    let from_config =
        skein_app_server::doctor::otel_config_env(&config, args.otlp_endpoint.as_deref());
    for (name, value) in &from_config {
        // SAFETY: no other thread exists yet: the runtime, telemetry and
        // every client are started below.
        unsafe { std::env::set_var(name, value) };
    }
    // Checked before anything starts, so a bad token file stops at once.
    let websocket = websocket_options(&args)?;
    let telemetry = telemetry::init(TelemetryConfig {
        trace_dir: serve_trace_dir(args.trace_dir)?,
        retention: Retention {
            max_file_bytes: args.trace_max_file_size,
            max_total_bytes: args.trace_max_total_size,
            max_age: args.trace_retention,
        },
        log_filter: std::env::var("RUST_LOG").ok().filter(|f| !f.is_empty()),
        otlp: OtlpSettings {
            endpoint: args.otlp_endpoint,
            protocol: args.otlp_protocol,
        },
        disabled: sdk_disabled_by_env(),
        baggage_attributes: baggage_attributes(&config),
        ..TelemetryConfig::default()
    })?;
    for unknown in &config.unknown_keys {
        tracing::warn!(
            "{unknown}: neither Skein nor Codex defines it, so it is ignored (a typo? \
             --strict-config refuses to start instead)"
        );
    }
    for provider in config.providers_without_key() {
        tracing::warn!(
            "model provider `{}`: {}; its requests go out without an API key",
            provider.id,
            provider.key_hint()
        );
    }
    if !from_config.is_empty() {
        // Names only: headers may hold credentials.
        let names: Vec<&str> = from_config.iter().map(|(name, _)| name.as_str()).collect();
        tracing::info!(
            variables = names.join(", "),
            "export settings taken from config.toml [otel] (variables set in the environment win)"
        );
    }
    if !config.codex_only_keys.is_empty() {
        tracing::debug!(
            keys = config.codex_only_keys.join(", "),
            "config.toml keys Codex defines and Skein does not use; ignored"
        );
    }
    // One line says where spans go, so a user knows whether export is on.
    let destinations = telemetry.destinations();
    match telemetry.store_file() {
        Some(file) => tracing::info!(file = %file.display(), "{destinations}"),
        None if sdk_disabled_by_env() => {
            tracing::info!("{destinations} (OTEL_SDK_DISABLED=true)")
        }
        None => tracing::info!("{destinations}"),
    }
    skein_app_server::descriptors::raise_and_check(args.limits.descriptor_limits(&args.listen));

    let config = ServerConfig {
        listen: args.listen,
        max_message_bytes: usize::try_from(args.max_message_bytes)
            .context("--max-message-bytes does not fit this platform")?,
        client_stall_timeout: Duration::from_secs(args.client_stall_timeout),
        core: CoreConfig {
            echo_delay: Duration::from_millis(args.echo_delay_ms),
            store: Some(open_thread_store()?),
            config: std::sync::Arc::new(config),
            max_running_turns: Some(args.limits.max_running_turns),
            max_loaded_threads: Some(args.limits.max_loaded_threads),
        },
        websocket,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let served = runtime.block_on(skein_app_server::serve(config));
    // Everything that matters has finished; a blocked stdin read must not
    // hold the exit.
    runtime.shutdown_background();
    // Flush spans from this plain thread, never from a runtime worker.
    telemetry.shutdown(Duration::from_secs(args.shutdown_timeout));
    served.map_err(Into::into)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_line_says_each_cause_once() {
        let missing = std::io::Error::from(std::io::ErrorKind::NotFound);
        let named = skein_app_server::transport::auth::WsAuth::capability_token(
            std::path::Path::new("/nonexistent/token"),
        )
        .expect_err("missing file");
        let line = error_line(&anyhow::Error::from(named));
        assert_eq!(line.matches("(os error 2)").count(), 1, "{line}");
        assert!(
            line.starts_with("cannot read token file /nonexistent/token: "),
            "{line}"
        );
        // Causes not named in the message are still given.
        let wrapped = anyhow::Error::from(missing).context("opening the store");
        assert_eq!(error_line(&wrapped), "opening the store: entity not found");
    }
}
