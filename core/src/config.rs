//! `$SKEIN_HOME/config.toml`: model providers, MCP servers and content
//! recording, in the shape of Codex's `config.toml`.
//!
//! The file is optional. Every key can also be given on the command line as
//! `-c key=value` (the value in TOML syntax; a value that is not valid TOML
//! is taken as a string), which wins over the file. Loading fails with a
//! [`ConfigError`] naming the file, the key and the problem: a file that
//! does not parse, a value of the wrong type, an unknown provider named by
//! `model_provider`, a bad `base_url`, a redaction pattern that does not
//! compile.
//!
//! Top-level keys the file's shape does not name are not errors: Codex's
//! own ([`CODEX_ONLY_KEYS`]) are listed in [`Config::codex_only_keys`],
//! others in [`Config::unknown_keys`] with their file and line, for the
//! caller to warn about or refuse (`--strict-config`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// The provider id of the offline `echo` model.
pub const ECHO_PROVIDER: &str = "skein";
/// The offline model's name.
pub const ECHO_MODEL: &str = "echo";
/// The built-in OpenAI provider's id.
pub const OPENAI_PROVIDER: &str = "openai";
/// The environment variable holding the built-in OpenAI provider's key.
pub const OPENAI_API_KEY_ENV: &str = "OPENAI_API_KEY";
/// The OpenAI API, when `OPENAI_BASE_URL` is unset.
pub const OPENAI_DEFAULT_BASE_URL: &str = "https://api.openai.com/v1";
/// Default bound on model calls answered with tool calls in one turn.
pub const DEFAULT_MAX_TOOL_ROUNDS: u32 = 32;
/// Default per-request timeout of model calls, in milliseconds.
pub const DEFAULT_REQUEST_TIMEOUT_MS: u64 = 300_000;
/// Default per-call timeout of MCP tool calls, in milliseconds.
pub const DEFAULT_TOOL_TIMEOUT_MS: u64 = 120_000;
/// Default limit on one recorded content attribute, in bytes.
pub const DEFAULT_MAX_CONTENT_BYTES: usize = 16 * 1024;
/// The environment switch of content recording (OTel GenAI
/// instrumentations' convention).
pub const CAPTURE_CONTENT_ENV: &str = "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT";

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file exists but could not be read.
    #[error("{path}: cannot read: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML: `path:line:col: message`, then the
    /// line and a caret under the spot, each on its own line.
    #[error("{}", at.render(path, &format!("not valid TOML: {message}")))]
    Parse {
        /// The file.
        path: PathBuf,
        /// Where in it.
        at: SourceSpot,
        /// The parser's message.
        message: String,
    },
    /// A redaction pattern of the file does not compile: as
    /// [`ConfigError::Parse`], pointing into the pattern.
    #[error("{}", at.render(path, &format!("key `{key}`: {message}")))]
    Pattern {
        /// The file.
        path: PathBuf,
        /// Where in it.
        at: SourceSpot,
        /// The dotted key (`otel.redact[0]`).
        key: String,
        /// What is wrong.
        message: String,
    },
    /// A `-c key=value` override is malformed.
    #[error("-c {given:?}: {message}")]
    Override {
        /// The override as given.
        given: String,
        /// What is wrong.
        message: String,
    },
    /// A key has a bad value.
    #[error("{source_name}: key `{key}`: {message}")]
    Value {
        /// The file, or `-c` overrides when no file exists.
        source_name: String,
        /// The dotted key.
        key: String,
        /// What is wrong.
        message: String,
    },
}

/// A place in a text file, for messages in the form compilers use:
/// `path:line:col: message`, the line, and a caret under the place.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceSpot {
    /// 1-based line.
    pub line: usize,
    /// 1-based column, in characters.
    pub column: usize,
    /// The line's text.
    pub text: String,
    /// How many characters the caret marks (at least 1).
    pub width: usize,
}

impl SourceSpot {
    /// The spot of the byte range `span` in `text` (clamped to it; a range
    /// over several lines marks the rest of its first).
    pub fn of(text: &str, span: std::ops::Range<usize>) -> Self {
        let mut start = span.start.min(text.len());
        while !text.is_char_boundary(start) {
            start -= 1;
        }
        let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
        let line_end = text[start..].find('\n').map_or(text.len(), |i| start + i);
        let line_text = text[line_start..line_end].trim_end_matches('\r');
        let end = span.end.clamp(start, line_start + line_text.len());
        let width = text.get(start..end).map_or(0, |s| s.chars().count());
        SourceSpot {
            line: text[..line_start].matches('\n').count() + 1,
            column: text[line_start..start].chars().count() + 1,
            text: line_text.to_owned(),
            width: width.max(1),
        }
    }

    /// `path:line:col: message`, the line and the caret, on three lines.
    pub fn render(&self, path: &Path, message: &str) -> String {
        // The caret lines up under tabs as the terminal shows them.
        let pad: String = self
            .text
            .chars()
            .take(self.column - 1)
            .map(|c| if c == '\t' { '\t' } else { ' ' })
            .collect();
        format!(
            "{}:{}:{}: {message}\n{}\n{pad}{}",
            path.display(),
            self.line,
            self.column,
            self.text,
            "^".repeat(self.width)
        )
    }
}

/// How a provider is spoken to. Only Chat Completions is supported.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WireApi {
    /// `POST {base_url}/chat/completions` with `stream: true`.
    #[default]
    Chat,
}

impl WireApi {
    /// The value as written in `config.toml`.
    pub fn as_str(self) -> &'static str {
        match self {
            WireApi::Chat => "chat",
        }
    }

    /// The well-known name (`gen_ai.provider.name`) of a provider spoken
    /// to over this API: Chat Completions is the OpenAI API, whoever
    /// serves it.
    pub fn provider_name(self) -> &'static str {
        match self {
            WireApi::Chat => skein_otel::names::value::GEN_AI_PROVIDER_OPENAI,
        }
    }
}

/// One `[model_providers.<id>.prices."<model>"]` table: what a model's
/// tokens cost, per million.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelPrice {
    /// Price of a million input tokens (those not read from a cache).
    pub input_per_mtok: f64,
    /// Price of a million cached input tokens; the input price when unset.
    #[serde(default)]
    pub cached_input_per_mtok: Option<f64>,
    /// Price of a million output tokens.
    pub output_per_mtok: f64,
    /// The currency of the prices; [`DEFAULT_CURRENCY`] when unset.
    #[serde(default)]
    pub currency: Option<String>,
}

/// The currency of prices that name none.
pub const DEFAULT_CURRENCY: &str = "USD";

impl ModelPrice {
    /// What a model call cost: `input_tokens` of which `cached_input_tokens`
    /// were read from the provider's cache, and `output_tokens`.
    pub fn cost(&self, input_tokens: u64, cached_input_tokens: u64, output_tokens: u64) -> f64 {
        let cached = cached_input_tokens.min(input_tokens);
        let fresh = input_tokens - cached;
        let cached_price = self.cached_input_per_mtok.unwrap_or(self.input_per_mtok);
        (fresh as f64 * self.input_per_mtok
            + cached as f64 * cached_price
            + output_tokens as f64 * self.output_per_mtok)
            / 1_000_000.0
    }

    /// The currency, `USD` unless given.
    pub fn currency(&self) -> &str {
        self.currency.as_deref().unwrap_or(DEFAULT_CURRENCY)
    }
}

/// One `[model_providers.<id>]` table.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    /// Name shown to people.
    #[serde(default)]
    pub name: Option<String>,
    /// The API's base URL, e.g. `http://127.0.0.1:8000/v1`.
    pub base_url: String,
    /// The environment variable holding the API key, if any.
    #[serde(default)]
    pub env_key: Option<String>,
    /// The wire protocol: `chat`.
    #[serde(default)]
    pub wire_api: WireApi,
    /// Timeout of one HTTP request, until the stream ends, in
    /// milliseconds.
    #[serde(default)]
    pub request_timeout_ms: Option<u64>,
    /// Prices per model name, for `skein.usage.cost` on spans.
    #[serde(default)]
    pub prices: BTreeMap<String, ModelPrice>,
}

/// One `[mcp_servers.<name>]` table: a server started over stdio
/// (`command`), or one reached over streamable HTTP (`url`, Codex's keys).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct McpServerConfig {
    /// The program (empty for a server reached by `url`).
    #[serde(default)]
    pub command: String,
    /// The server's streamable HTTP endpoint, instead of `command`.
    #[serde(default)]
    pub url: Option<String>,
    /// The variable holding a bearer token sent as `Authorization` to a
    /// `url` server.
    #[serde(default)]
    pub bearer_token_env_var: Option<String>,
    /// Extra HTTP headers sent to a `url` server.
    #[serde(default)]
    pub http_headers: BTreeMap<String, String>,
    /// Its arguments.
    #[serde(default)]
    pub args: Vec<String>,
    /// Extra environment variables.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Timeout of one tool call, in milliseconds.
    #[serde(default)]
    pub tool_timeout_ms: Option<u64>,
}

impl McpServerConfig {
    /// What reaches the server: its `url`, else its command.
    pub fn endpoint(&self) -> &str {
        self.url.as_deref().unwrap_or(&self.command)
    }
}

/// The `[otel]` table: Skein's keys, and Codex's (see
/// [`OtelConfig::export_env`] for how Codex's exporters map onto Skein's
/// export).
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OtelConfig {
    /// Record prompts, answers, tool arguments and results on spans.
    #[serde(default)]
    pub capture_content: Option<bool>,
    /// Regular expressions whose matches in recorded content become
    /// `[REDACTED]`.
    #[serde(default)]
    pub redact: Vec<String>,
    /// Limit on one recorded content attribute, in bytes.
    #[serde(default)]
    pub max_content_bytes: Option<usize>,
    /// W3C baggage keys copied onto every span of a request that carries
    /// them, and of the turns it starts (values through `redact`).
    #[serde(default)]
    pub baggage_attributes: Vec<String>,
    /// Codex's switch of content capture: `true` records content as
    /// `capture_content` does.
    #[serde(default)]
    pub log_user_prompt: Option<bool>,
    /// Codex's environment name (`dev`, `staging`, `prod`...), exported as
    /// the resource attribute `deployment.environment.name`.
    #[serde(default)]
    pub environment: Option<String>,
    /// Codex's exporter of log events. Skein exports no log records, so
    /// this changes nothing (`none` is what Skein does anyway).
    #[serde(default)]
    pub exporter: Option<OtelExporterKind>,
    /// Codex's span exporter: where spans go over OTLP.
    #[serde(default)]
    pub trace_exporter: Option<OtelExporterKind>,
    /// Codex's metrics exporter: where metrics go over OTLP; `none` (and
    /// `statsig`, which Skein never sends to) turns metric export off.
    #[serde(default)]
    pub metrics_exporter: Option<OtelExporterKind>,
    /// Codex's extra span attributes: accepted, not applied.
    #[serde(default)]
    pub span_attributes: Option<toml::Table>,
    /// Codex's `tracestate` additions: accepted, not applied.
    #[serde(default)]
    pub tracestate: Option<toml::Table>,
    /// Codex's limit on logged tool results: accepted, not applied.
    #[serde(default)]
    pub tool_result: Option<toml::Value>,
}

/// A Codex `[otel]` exporter: `"none"`, `"statsig"`, `{ otlp-http = {
/// endpoint, protocol, headers, tls } }` or `{ otlp-grpc = { endpoint,
/// headers, tls } }`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OtelExporterKind {
    /// Nothing is exported.
    None,
    /// Codex's own metrics service; Skein never sends to it (as `none`).
    Statsig,
    /// OTLP over HTTP.
    OtlpHttp {
        /// The signal's whole URL (e.g. `http://host:4318/v1/traces`),
        /// used as given.
        endpoint: String,
        /// `binary` (protobuf, the default) or `json`.
        #[serde(default)]
        protocol: Option<OtelHttpProtocol>,
        /// Headers sent with every export.
        #[serde(default)]
        headers: BTreeMap<String, String>,
        /// Certificates.
        #[serde(default)]
        tls: Option<OtelTls>,
    },
    /// OTLP over gRPC.
    OtlpGrpc {
        /// The collector's URL (e.g. `http://host:4317`).
        endpoint: String,
        /// Metadata sent with every export.
        #[serde(default)]
        headers: BTreeMap<String, String>,
        /// Certificates.
        #[serde(default)]
        tls: Option<OtelTls>,
    },
}

/// Codex's `protocol` of an `otlp-http` exporter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OtelHttpProtocol {
    /// `http/protobuf`.
    Binary,
    /// `http/json`.
    Json,
}

/// Codex's `tls` table of an exporter.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct OtelTls {
    /// The CA certificate file (PEM).
    #[serde(default)]
    pub ca_certificate: Option<String>,
    /// The client certificate file (PEM), for mutual TLS.
    #[serde(default)]
    pub client_certificate: Option<String>,
    /// The client key file (PEM), for mutual TLS.
    #[serde(default)]
    pub client_private_key: Option<String>,
}

/// The resource attribute Codex's `environment` becomes.
pub const DEPLOYMENT_ENVIRONMENT_KEY: &str = "deployment.environment.name";

impl OtelConfig {
    /// The standard `OTEL_*` variables that express Codex's exporters and
    /// environment, for the export to read as it reads them from the
    /// environment. `env` is the environment (with the `--otlp-endpoint`
    /// flag counted as `OTEL_EXPORTER_OTLP_ENDPOINT`): a variable it sets
    /// wins, so nothing it already says is returned. Per signal: an OTLP
    /// exporter gives the signal's endpoint (unless the signal's or the
    /// generic endpoint is set), its protocol, headers and certificates
    /// (each unless set, for the signal or generically). `metrics_exporter
    /// = "none"` (or `"statsig"`) gives `OTEL_METRICS_EXPORTER=none`; so
    /// does an OTLP `trace_exporter` without a `metrics_exporter` when no
    /// endpoint for metrics is set, rather than sending metrics to the
    /// default address. `environment` is added to
    /// `OTEL_RESOURCE_ATTRIBUTES` unless that names it already.
    pub fn export_env(&self, env: &dyn Fn(&str) -> Option<String>) -> Vec<(String, String)> {
        use skein_otel::otlp_connection::Signal;
        let set = |name: &str| env(name).is_some_and(|v| !v.trim().is_empty());
        let mut out = Vec::new();
        let traces = self
            .trace_exporter
            .as_ref()
            .is_some_and(|kind| signal_env(kind, Signal::Traces, &set, &mut out));
        match &self.metrics_exporter {
            Some(OtelExporterKind::None | OtelExporterKind::Statsig) => {
                if !set("OTEL_METRICS_EXPORTER") {
                    out.push(("OTEL_METRICS_EXPORTER".into(), "none".into()));
                }
            }
            Some(kind) => {
                signal_env(kind, Signal::Metrics, &set, &mut out);
            }
            None => {
                let [metrics_endpoint, endpoint] = Signal::Metrics.vars("ENDPOINT");
                if traces
                    && !set("OTEL_METRICS_EXPORTER")
                    && !set(&metrics_endpoint)
                    && !set(&endpoint)
                {
                    out.push(("OTEL_METRICS_EXPORTER".into(), "none".into()));
                }
            }
        }
        if let Some(name) = self.environment.as_deref().filter(|n| !n.trim().is_empty()) {
            let existing = env("OTEL_RESOURCE_ATTRIBUTES").unwrap_or_default();
            let named = existing.split(',').any(|pair| {
                pair.split_once('=')
                    .is_some_and(|(k, _)| k.trim() == DEPLOYMENT_ENVIRONMENT_KEY)
            });
            if !named {
                let pair = format!(
                    "{DEPLOYMENT_ENVIRONMENT_KEY}={}",
                    percent_encode(name.trim())
                );
                let value = if existing.trim().is_empty() {
                    pair
                } else {
                    format!("{},{pair}", existing.trim_end_matches(','))
                };
                out.push(("OTEL_RESOURCE_ATTRIBUTES".into(), value));
            }
        }
        out
    }
}

/// The variables of one signal's OTLP exporter (see
/// [`OtelConfig::export_env`]); true when it set the signal's endpoint.
fn signal_env(
    kind: &OtelExporterKind,
    signal: skein_otel::otlp_connection::Signal,
    set: &dyn Fn(&str) -> bool,
    out: &mut Vec<(String, String)>,
) -> bool {
    let (endpoint, protocol, headers, tls) = match kind {
        OtelExporterKind::None | OtelExporterKind::Statsig => return false,
        OtelExporterKind::OtlpHttp {
            endpoint,
            protocol,
            headers,
            tls,
        } => (
            endpoint,
            match protocol {
                Some(OtelHttpProtocol::Json) => "http/json",
                _ => "http/protobuf",
            },
            headers,
            tls,
        ),
        OtelExporterKind::OtlpGrpc {
            endpoint,
            headers,
            tls,
        } => (endpoint, "grpc", headers, tls),
    };
    let mut put = |what: &str, value: String| {
        let [specific, generic] = signal.vars(what);
        if !set(&specific) && !set(&generic) {
            out.push((specific, value));
            true
        } else {
            false
        }
    };
    if endpoint.trim().is_empty() || !put("ENDPOINT", endpoint.trim().to_owned()) {
        // The environment (or the flag) says where this signal goes; the
        // rest of the table is about another collector.
        return false;
    }
    put("PROTOCOL", protocol.to_owned());
    if !headers.is_empty() {
        let list: Vec<String> = headers
            .iter()
            .map(|(k, v)| format!("{}={}", percent_encode(k), percent_encode(v)))
            .collect();
        put("HEADERS", list.join(","));
    }
    if let Some(tls) = tls {
        for (what, file) in [
            ("CERTIFICATE", &tls.ca_certificate),
            ("CLIENT_CERTIFICATE", &tls.client_certificate),
            ("CLIENT_KEY", &tls.client_private_key),
        ] {
            if let Some(file) = file {
                put(what, file.clone());
            }
        }
    }
    true
}

/// `text` with the characters the `OTEL_*` list syntax gives a meaning
/// (`,` `=` `%`, spaces, controls) percent-encoded.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, ',' | '=' | '%' | ';') || c.is_whitespace() || c.is_control() {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                out.push_str(&format!("%{b:02X}"));
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Top-level keys of Codex's `config.toml` that Skein does not use (from
/// Codex's documented configuration and the `Config` of its `config/read`
/// schema): listed once at debug, never warned about, so a Codex user's
/// file loads quietly. Keys Skein reads are never looked up here.
pub const CODEX_ONLY_KEYS: &[&str] = &[
    "agents",
    "analytics",
    "approval_policy",
    "approvals_reviewer",
    "apps",
    "background_terminal_max_timeout",
    "browser_use",
    "chatgpt_base_url",
    "check_for_update_on_startup",
    "cli_auth_credentials_store",
    "client_search_provider",
    "compact_prompt",
    "computer_use",
    "desktop",
    "developer_instructions",
    "disable_response_storage",
    "experimental_compact_prompt_file",
    "experimental_instructions_file",
    "experimental_resume",
    "experimental_use_exec_command_tool",
    "experimental_use_freeform_apply_patch",
    "experimental_use_rmcp_client",
    "experimental_use_unified_exec_tool",
    "features",
    "feedback",
    "file_opener",
    "forced_chatgpt_workspace_id",
    "forced_login_method",
    "ghost_snapshot",
    "hide_agent_reasoning",
    "history",
    "hooks",
    "include_apply_patch_tool",
    "include_plan_tool",
    "include_view_image_tool",
    "js_repl_node_path",
    "log_dir",
    "mcp_oauth_callback_port",
    "mcp_oauth_credentials_store",
    "memories",
    "model_auto_compact_token_limit",
    "model_auto_compact_token_limit_scope",
    "model_catalog_json",
    "model_context_window",
    "model_max_output_tokens",
    "model_reasoning_effort",
    "model_reasoning_summary",
    "model_reasoning_summary_format",
    "model_supports_reasoning_summaries",
    "model_verbosity",
    "notice",
    "notify",
    "oss_provider",
    "personality",
    "plan_mode_reasoning_effort",
    "plugins",
    "preferred_auth_method",
    "profile",
    "profiles",
    "project_doc_fallback_filenames",
    "project_doc_max_bytes",
    "project_root_markers",
    "projects",
    "responses_originator_header_internal_override",
    "review_model",
    "sandbox",
    "sandbox_mode",
    "sandbox_workspace_write",
    "service_tier",
    "shell_environment_policy",
    "show_raw_agent_reasoning",
    "show_tooltips",
    "skills",
    "sqlite_home",
    "suppress_unstable_features_warning",
    "tool_output_token_limit",
    "tools",
    "tui",
    "use_experimental_streamable_shell_tool",
    "use_experimental_unified_exec_tool",
    "web_search",
    "windows",
    "windows_wsl_setup_acknowledged",
    "zsh_path",
];

/// A top-level key neither Skein nor Codex defines (a typo, most likely):
/// warned about, and refused with `--strict-config`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnknownKey {
    /// The key.
    pub key: String,
    /// Where it was set: `FILE:LINE`, or `-c KEY=VALUE`.
    pub source: String,
}

impl std::fmt::Display for UnknownKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: unknown key `{}`", self.source, self.key)
    }
}

/// The file's shape. Top-level keys it does not name are ignored (see
/// [`Config::unknown_keys`] and [`CODEX_ONLY_KEYS`]), so a Codex
/// configuration loads.
#[derive(Clone, Debug, Default, Deserialize)]
struct RawConfig {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    model_provider: Option<String>,
    #[serde(default)]
    instructions: Option<String>,
    #[serde(default)]
    model_providers: BTreeMap<String, ProviderConfig>,
    #[serde(default)]
    mcp_servers: BTreeMap<String, McpServerConfig>,
    #[serde(default)]
    max_tool_rounds: Option<u32>,
    #[serde(default)]
    model_context_window: Option<u64>,
    #[serde(default)]
    otel: OtelConfig,
}

/// A provider ready to use: its id and settings, the key resolved.
#[derive(Clone, PartialEq)]
pub struct Provider {
    /// The id (`skein.provider.id`).
    pub id: String,
    /// Name shown to people.
    pub name: String,
    /// The base URL, without a trailing slash.
    pub base_url: String,
    /// The environment variable the API key is read from, if any (its
    /// name; the value is [`Provider::api_key`]).
    pub env_key: Option<String>,
    /// The API key, if the provider has one. Never logged.
    pub api_key: Option<String>,
    /// The wire protocol.
    pub wire_api: WireApi,
    /// Timeout of one request.
    pub request_timeout: Duration,
    /// Whether this is the built-in `openai` provider (no table in the
    /// file).
    pub builtin: bool,
    /// Prices per model name (none for models not listed).
    pub prices: BTreeMap<String, ModelPrice>,
}

impl Provider {
    /// Where the turn's error and the startup warning say the key should
    /// come from, when the API refuses the request (401, 403) or no key
    /// was found: the variable's name, never its value.
    pub fn key_hint(&self) -> String {
        let table = if self.builtin {
            format!("the built-in provider `{}`", self.id)
        } else {
            format!("model_providers.{}.env_key", self.id)
        };
        match (&self.env_key, &self.api_key) {
            (Some(var), None) => {
                format!("no API key was sent: the environment variable {var} ({table}) is not set")
            }
            (Some(var), Some(_)) => {
                format!("the API key was read from the environment variable {var} ({table})")
            }
            (None, _) => format!(
                "no API key is configured: set `env_key` in [model_providers.{}] to the \
                 environment variable that holds it",
                self.id
            ),
        }
    }
}

impl std::fmt::Debug for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Provider")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("base_url", &self.base_url)
            .field("env_key", &self.env_key)
            .field("api_key", &self.api_key.as_ref().map(|_| "[set]"))
            .field("request_timeout", &self.request_timeout)
            .field("builtin", &self.builtin)
            .field("prices", &self.prices)
            .finish()
    }
}

/// What is recorded on spans besides structure.
#[derive(Clone, Debug, Default)]
pub struct ContentPolicy {
    /// Whether content is recorded at all.
    pub capture: bool,
    /// Compiled redaction patterns.
    pub redact: Vec<regex::Regex>,
    /// Limit on one attribute, in bytes.
    pub max_bytes: usize,
}

impl ContentPolicy {
    /// The value to record for `content`: `None` when recording is off or
    /// redaction failed (fails closed), else the redacted text truncated
    /// to the limit on a character boundary.
    pub fn record(&self, content: &str) -> Option<String> {
        if !self.capture {
            return None;
        }
        self.redact_value_text(content)
    }

    /// The JSON text to record for `content`: every string in it (keys
    /// included) redacted, then serialized and truncated. `None` when
    /// recording is off or redaction failed.
    pub fn record_json(&self, content: &serde_json::Value) -> Option<String> {
        if !self.capture {
            return None;
        }
        let redacted = self.redact_value(content)?;
        Some(self.truncate(redacted.to_string()))
    }

    fn redact_value(&self, value: &serde_json::Value) -> Option<serde_json::Value> {
        use serde_json::Value;
        Some(match value {
            Value::String(s) => Value::String(self.redact(s)?),
            Value::Array(items) => Value::Array(
                items
                    .iter()
                    .map(|v| self.redact_value(v))
                    .collect::<Option<_>>()?,
            ),
            Value::Object(map) => Value::Object(
                map.iter()
                    .map(|(k, v)| Some((self.redact(k)?, self.redact_value(v)?)))
                    .collect::<Option<_>>()?,
            ),
            other => other.clone(),
        })
    }

    /// A value recorded whether or not content capture is on (a baggage
    /// attribute): redacted by the patterns and truncated to the limit;
    /// `None` when redaction failed.
    pub fn redact_value_text(&self, text: &str) -> Option<String> {
        Some(self.truncate(self.redact(text)?))
    }

    /// `text` with every match of every pattern replaced; `None` if a
    /// replacement failed (the value is then dropped, never kept raw).
    fn redact(&self, text: &str) -> Option<String> {
        let mut text = text.to_owned();
        for pattern in &self.redact {
            let replaced = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                pattern.replace_all(&text, "[REDACTED]").into_owned()
            }));
            match replaced {
                Ok(t) => text = t,
                Err(_) => return None,
            }
        }
        Some(text)
    }

    fn truncate(&self, mut text: String) -> String {
        if text.len() > self.max_bytes {
            let mut end = self.max_bytes;
            while end > 0 && !text.is_char_boundary(end) {
                end -= 1;
            }
            text.truncate(end);
        }
        text
    }
}

/// Skein's configuration, validated.
#[derive(Clone, Debug)]
pub struct Config {
    /// The default model of new threads.
    pub model: String,
    /// The default provider id.
    pub model_provider: String,
    /// System instructions sent before the conversation, if any.
    pub instructions: Option<String>,
    /// Every provider by id, built-ins included.
    pub providers: BTreeMap<String, Provider>,
    /// MCP servers by name.
    pub mcp_servers: BTreeMap<String, McpServerConfig>,
    /// Bound on model calls answered with tool calls in one turn.
    pub max_tool_rounds: u32,
    /// The context window of the configured model, in tokens
    /// (`model_context_window`, Codex's key), when configured.
    pub model_context_window: Option<u64>,
    /// Content recording.
    pub content: ContentPolicy,
    /// The `[otel]` table as given (Codex's exporters: see
    /// [`OtelConfig::export_env`]).
    pub otel: OtelConfig,
    /// Top-level keys neither Skein nor Codex defines, in file order (then
    /// `-c` overrides).
    pub unknown_keys: Vec<UnknownKey>,
    /// Top-level keys Codex defines that Skein does not use.
    pub codex_only_keys: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            model: ECHO_MODEL.to_owned(),
            model_provider: ECHO_PROVIDER.to_owned(),
            instructions: None,
            providers: builtin_providers(&|_| None),
            mcp_servers: BTreeMap::new(),
            max_tool_rounds: DEFAULT_MAX_TOOL_ROUNDS,
            model_context_window: None,
            content: ContentPolicy {
                capture: false,
                redact: Vec::new(),
                max_bytes: DEFAULT_MAX_CONTENT_BYTES,
            },
            otel: OtelConfig::default(),
            unknown_keys: Vec::new(),
            codex_only_keys: Vec::new(),
        }
    }
}

fn builtin_providers(env: &dyn Fn(&str) -> Option<String>) -> BTreeMap<String, Provider> {
    let base_url = env("OPENAI_BASE_URL")
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| OPENAI_DEFAULT_BASE_URL.to_owned());
    let openai = Provider {
        id: OPENAI_PROVIDER.to_owned(),
        name: "OpenAI".to_owned(),
        base_url: base_url.trim_end_matches('/').to_owned(),
        env_key: Some(OPENAI_API_KEY_ENV.to_owned()),
        api_key: env(OPENAI_API_KEY_ENV).filter(|k| !k.is_empty()),
        wire_api: WireApi::Chat,
        request_timeout: Duration::from_millis(DEFAULT_REQUEST_TIMEOUT_MS),
        builtin: true,
        prices: BTreeMap::new(),
    };
    BTreeMap::from([(OPENAI_PROVIDER.to_owned(), openai)])
}

/// Whether the environment turns content recording on.
fn capture_from_env(env: &dyn Fn(&str) -> Option<String>) -> bool {
    env(CAPTURE_CONTENT_ENV).is_some_and(|v| {
        let v = v.trim();
        v.eq_ignore_ascii_case("true")
            || v.eq_ignore_ascii_case("span_only")
            || v.eq_ignore_ascii_case("span_and_event")
    })
}

impl Config {
    /// The providers whose `env_key` names a variable that is not set (or
    /// is empty): every configured one, and the built-in `openai` when it
    /// is the default provider. Their requests go out without a key.
    pub fn providers_without_key(&self) -> Vec<&Provider> {
        self.providers
            .values()
            .filter(|p| p.env_key.is_some() && p.api_key.is_none())
            .filter(|p| !p.builtin || p.id == self.model_provider)
            .collect()
    }

    /// The price of `model` at provider `provider`, if configured.
    pub fn price(&self, provider: &str, model: &str) -> Option<&ModelPrice> {
        self.providers.get(provider)?.prices.get(model)
    }

    /// Loads `path` (absent is fine) with `overrides` (`key=value`) on top,
    /// reading API keys and switches from the process environment.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Self, ConfigError> {
        Self::load_with_env(path, overrides, &|k| std::env::var(k).ok())
    }

    /// [`Config::load`] with an explicit environment.
    pub fn load_with_env(
        path: &Path,
        overrides: &[String],
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let mut text = String::new();
        let mut table = match std::fs::read_to_string(path) {
            Ok(read) => {
                text = read;
                text.parse::<toml::Table>().map_err(|e| {
                    let message = e.message().trim().replace('\n', "; ");
                    ConfigError::Parse {
                        path: path.to_owned(),
                        at: SourceSpot::of(&text, e.span().unwrap_or(0..0)),
                        message,
                    }
                })?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => toml::Table::new(),
            Err(source) => {
                return Err(ConfigError::Read {
                    path: path.to_owned(),
                    source,
                });
            }
        };
        for given in overrides {
            apply_override(&mut table, given)?;
        }
        let source_name = if overrides.is_empty() {
            path.display().to_string()
        } else {
            format!("{} (with -c overrides)", path.display())
        };
        let value_error = |key: String, message: String| ConfigError::Value {
            source_name: source_name.clone(),
            key,
            message,
        };
        let (unknown_keys, codex_only_keys) = sort_unread_keys(&table, path, &text, overrides);
        let raw: RawConfig =
            serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
                let key = e.path().to_string();
                value_error(key, e.into_inner().message().to_owned())
            })?;

        let mut providers = builtin_providers(env);
        for (id, p) in raw.model_providers {
            if id == ECHO_PROVIDER {
                return Err(value_error(
                    format!("model_providers.{id}"),
                    format!("`{ECHO_PROVIDER}` is the built-in offline provider; pick another id"),
                ));
            }
            let url = p.base_url.trim_end_matches('/').to_owned();
            match reqwest::Url::parse(&url) {
                Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {}
                Ok(_) => {
                    return Err(value_error(
                        format!("model_providers.{id}.base_url"),
                        format!("{url:?} is not an http or https URL"),
                    ));
                }
                Err(e) => {
                    return Err(value_error(
                        format!("model_providers.{id}.base_url"),
                        format!("{url:?} is not a URL: {e}"),
                    ));
                }
            }
            for (model, price) in &p.prices {
                let rates = [
                    ("input_per_mtok", Some(price.input_per_mtok)),
                    ("cached_input_per_mtok", price.cached_input_per_mtok),
                    ("output_per_mtok", Some(price.output_per_mtok)),
                ];
                for (key, rate) in rates {
                    if let Some(rate) = rate
                        && !(rate.is_finite() && rate >= 0.0)
                    {
                        return Err(value_error(
                            format!("model_providers.{id}.prices.{model:?}.{key}"),
                            format!("{rate} is not a price: give a finite number, 0 or more"),
                        ));
                    }
                }
                if price
                    .currency
                    .as_deref()
                    .is_some_and(|c| c.trim().is_empty())
                {
                    return Err(value_error(
                        format!("model_providers.{id}.prices.{model:?}.currency"),
                        "must not be empty".into(),
                    ));
                }
            }
            let api_key = p.env_key.as_deref().and_then(env).filter(|k| !k.is_empty());
            providers.insert(
                id.clone(),
                Provider {
                    name: p.name.unwrap_or_else(|| id.clone()),
                    id,
                    base_url: url,
                    env_key: p.env_key,
                    api_key,
                    wire_api: p.wire_api,
                    request_timeout: Duration::from_millis(
                        p.request_timeout_ms.unwrap_or(DEFAULT_REQUEST_TIMEOUT_MS),
                    ),
                    builtin: false,
                    prices: p.prices,
                },
            );
        }
        let model_provider = raw
            .model_provider
            .unwrap_or_else(|| ECHO_PROVIDER.to_owned());
        if model_provider != ECHO_PROVIDER && !providers.contains_key(&model_provider) {
            let known: Vec<&str> = std::iter::once(ECHO_PROVIDER)
                .chain(providers.keys().map(String::as_str))
                .collect();
            return Err(value_error(
                "model_provider".into(),
                format!(
                    "unknown provider {model_provider:?}; known: {}; define it under [model_providers.{model_provider}]",
                    known.join(", ")
                ),
            ));
        }
        let model = raw.model.unwrap_or_else(|| ECHO_MODEL.to_owned());
        if model.trim().is_empty() {
            return Err(value_error("model".into(), "must not be empty".into()));
        }
        if model == ECHO_MODEL && model_provider != ECHO_PROVIDER {
            // `model/list` would offer two models named `echo`, and which
            // one a thread gets would depend on how it asks.
            return Err(value_error(
                "model".into(),
                format!(
                    "{ECHO_MODEL:?} is the offline model of provider `{ECHO_PROVIDER}`, but \
                     model_provider is {model_provider:?}: say which you mean, \
                     `-c model_provider=\"{ECHO_PROVIDER}\"` for the offline echo, or a model \
                     {model_provider:?} serves"
                ),
            ));
        }
        if model_provider == ECHO_PROVIDER && model != ECHO_MODEL {
            return Err(value_error(
                "model".into(),
                format!(
                    "{model:?} needs a model provider: set `model_provider` (the offline `{ECHO_PROVIDER}` provider serves only `{ECHO_MODEL}`)"
                ),
            ));
        }
        for (name, server) in &raw.mcp_servers {
            match &server.url {
                Some(url) => {
                    if !server.command.is_empty() || !server.args.is_empty() {
                        return Err(value_error(
                            format!("mcp_servers.{name}.url"),
                            "give either `command` (stdio) or `url` (streamable HTTP), not both"
                                .into(),
                        ));
                    }
                    if !(url.starts_with("http://") || url.starts_with("https://")) {
                        return Err(value_error(
                            format!("mcp_servers.{name}.url"),
                            format!("{url:?} must start with http:// or https://"),
                        ));
                    }
                }
                None if server.command.trim().is_empty() => {
                    return Err(value_error(
                        format!("mcp_servers.{name}.command"),
                        "must not be empty (or give `url` for a server over streamable HTTP)"
                            .into(),
                    ));
                }
                None => {}
            }
        }
        if raw.max_tool_rounds == Some(0) {
            return Err(value_error(
                "max_tool_rounds".into(),
                "must be at least 1".into(),
            ));
        }
        let mut redact = Vec::with_capacity(raw.otel.redact.len());
        for (i, pattern) in raw.otel.redact.iter().enumerate() {
            let compiled = regex::Regex::new(pattern).map_err(|e| {
                let key = format!("otel.redact[{i}]");
                // regex-syntax says what and where; regex only says what
                // (and a size limit is only regex's).
                let (what, offset) = match regex_syntax::Parser::new().parse(pattern) {
                    Err(regex_syntax::Error::Parse(e)) => {
                        (e.kind().to_string(), e.span().start.offset)
                    }
                    Err(regex_syntax::Error::Translate(e)) => {
                        (e.kind().to_string(), e.span().start.offset)
                    }
                    _ => (e.to_string().replace('\n', " "), 0),
                };
                let message = format!("pattern {pattern:?} does not compile: {what}");
                match pattern_spot(&text, i, pattern, offset) {
                    Some(at) => ConfigError::Pattern {
                        path: path.to_owned(),
                        at,
                        key,
                        message,
                    },
                    None => value_error(key, message),
                }
            })?;
            redact.push(compiled);
        }
        for (i, key) in raw.otel.baggage_attributes.iter().enumerate() {
            if !skein_otel::baggage::is_baggage_key(key) {
                return Err(value_error(
                    format!("otel.baggage_attributes[{i}]"),
                    format!("{key:?} is not a baggage key (an RFC 7230 token)"),
                ));
            }
        }
        if raw.otel.max_content_bytes == Some(0) {
            return Err(value_error(
                "otel.max_content_bytes".into(),
                "must be at least 1".into(),
            ));
        }
        Ok(Config {
            model,
            model_provider,
            instructions: raw.instructions.filter(|i| !i.trim().is_empty()),
            providers,
            mcp_servers: raw.mcp_servers,
            max_tool_rounds: raw.max_tool_rounds.unwrap_or(DEFAULT_MAX_TOOL_ROUNDS),
            model_context_window: raw.model_context_window,
            content: ContentPolicy {
                capture: raw.otel.capture_content.unwrap_or(false)
                    || raw.otel.log_user_prompt.unwrap_or(false)
                    || capture_from_env(env),
                redact,
                max_bytes: raw
                    .otel
                    .max_content_bytes
                    .unwrap_or(DEFAULT_MAX_CONTENT_BYTES),
            },
            otel: raw.otel,
            unknown_keys,
            codex_only_keys,
        })
    }
}

/// Where, in the file's `text`, the byte `offset` of `pattern` is, when
/// `pattern` is the file's `otel.redact[index]` (an override may have
/// replaced it).
fn pattern_spot(text: &str, index: usize, pattern: &str, offset: usize) -> Option<SourceSpot> {
    let parsed = toml::de::DeTable::parse(text).ok()?;
    let otel = parsed
        .get_ref()
        .iter()
        .find(|(key, _)| key.get_ref() == "otel")
        .map(|(_, value)| value)?;
    let element = otel.get_ref().get("redact")?.get_ref().get(index)?;
    if element.get_ref().as_str() != Some(pattern) {
        return None;
    }
    let span = element.span();
    let literal = text.get(span.clone())?;
    let raw = raw_offset(literal, offset);
    Some(SourceSpot::of(text, span.start + raw..span.start + raw + 1))
}

/// The byte of the TOML string `literal` (quotes included) that holds
/// byte `offset` of its value: escapes of basic strings are counted as
/// the characters they stand for.
fn raw_offset(literal: &str, offset: usize) -> usize {
    let (quote_len, basic) = if literal.starts_with("\"\"\"") {
        (3, true)
    } else if literal.starts_with("'''") {
        (3, false)
    } else {
        (1, literal.starts_with('"'))
    };
    let body = literal.get(quote_len..).unwrap_or("");
    let mut decoded = 0;
    let mut chars = body.char_indices();
    while let Some((at, c)) = chars.next() {
        if decoded >= offset {
            return quote_len + at;
        }
        if basic && c == '\\' {
            let digits = match chars.next().map(|(_, e)| e) {
                Some('u') => 4,
                Some('U') => 8,
                _ => 0,
            };
            let mut code = 0u32;
            for _ in 0..digits {
                if let Some((_, d)) = chars.next() {
                    code = code * 16 + d.to_digit(16).unwrap_or(0);
                }
            }
            decoded += if digits > 0 {
                char::from_u32(code).map_or(1, char::len_utf8)
            } else {
                1
            };
        } else {
            decoded += c.len_utf8();
        }
    }
    quote_len + body.len()
}

/// The top-level keys of `table` that Skein does not read, split into
/// unknown ones (with where they were set) and Codex's.
fn sort_unread_keys(
    table: &toml::Table,
    path: &Path,
    text: &str,
    overrides: &[String],
) -> (Vec<UnknownKey>, Vec<String>) {
    let read = struct_fields::<RawConfig>();
    let mut unknown = Vec::new();
    let mut codex = Vec::new();
    for key in table.keys() {
        if read.contains(&key.as_str()) {
            continue;
        }
        if CODEX_ONLY_KEYS.contains(&key.as_str()) {
            codex.push(key.clone());
            continue;
        }
        unknown.push(key.clone());
    }
    if unknown.is_empty() {
        return (Vec::new(), codex);
    }
    // Lines only when needed: the file is parsed again, with spans.
    let lines: BTreeMap<String, usize> = toml::de::DeTable::parse(text)
        .map(|parsed| {
            parsed
                .get_ref()
                .iter()
                .map(|(key, _)| {
                    let at = key.span().start.min(text.len());
                    let line = text.as_bytes()[..at]
                        .iter()
                        .filter(|&&b| b == b'\n')
                        .count()
                        + 1;
                    (key.get_ref().to_string(), line)
                })
                .collect()
        })
        .unwrap_or_default();
    let mut found: Vec<(usize, UnknownKey)> = unknown
        .into_iter()
        .map(|key| {
            if let Some(&line) = lines.get(&key) {
                let source = format!("{}:{line}", path.display());
                return (line, UnknownKey { key, source });
            }
            let given = overrides
                .iter()
                .rev()
                .find(|o| {
                    o.split_once('=')
                        .and_then(|(k, _)| k.trim().split('.').next())
                        .is_some_and(|first| first.trim() == key)
                })
                .map_or_else(|| "-c".to_owned(), |o| format!("-c {o}"));
            (usize::MAX, UnknownKey { key, source: given })
        })
        .collect();
    found.sort_by_key(|(line, _)| *line);
    (found.into_iter().map(|(_, key)| key).collect(), codex)
}

/// The field names of a struct deriving `Deserialize`, as serde knows
/// them: so the keys Skein reads are never listed by hand.
fn struct_fields<'de, T: Deserialize<'de>>() -> &'static [&'static str] {
    use serde::de::{self, Visitor};

    #[derive(Debug)]
    struct Stop;
    impl std::fmt::Display for Stop {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("fields read")
        }
    }
    impl std::error::Error for Stop {}
    impl de::Error for Stop {
        fn custom<M: std::fmt::Display>(_: M) -> Self {
            Stop
        }
    }
    struct Probe<'a>(&'a mut &'static [&'static str]);
    impl<'de> de::Deserializer<'de> for Probe<'_> {
        type Error = Stop;
        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Stop> {
            Err(Stop)
        }
        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Stop> {
            *self.0 = fields;
            Err(Stop)
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
            bytes byte_buf option unit unit_struct newtype_struct seq tuple
            tuple_struct map enum identifier ignored_any
        }
    }
    let mut fields: &'static [&'static str] = &[];
    let _ = T::deserialize(Probe(&mut fields));
    fields
}

/// Applies one `key=value` override to `table`: a dotted key, a TOML value
/// (a string when it does not parse as one).
fn apply_override(table: &mut toml::Table, given: &str) -> Result<(), ConfigError> {
    let error = |message: &str| ConfigError::Override {
        given: given.to_owned(),
        message: message.to_owned(),
    };
    let Some((key, raw_value)) = given.split_once('=') else {
        return Err(error("expected key=value, e.g. -c model=\"gpt-4.1-mini\""));
    };
    let key = key.trim();
    let parts: Vec<&str> = key.split('.').map(str::trim).collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err(error("the key must be a dotted path such as otel.redact"));
    }
    let value = match format!("v = {}", raw_value.trim()).parse::<toml::Table>() {
        Ok(mut t) => t
            .remove("v")
            .unwrap_or_else(|| toml::Value::String(raw_value.to_owned())),
        Err(_) => toml::Value::String(raw_value.trim().to_owned()),
    };
    let (last, parents) = parts
        .split_last()
        .ok_or_else(|| error("the key is empty"))?;
    let mut current = table;
    for part in parents {
        let entry = current
            .entry((*part).to_owned())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        current = entry
            .as_table_mut()
            .ok_or_else(|| error(&format!("`{part}` is not a table")))?;
    }
    current.insert((*last).to_owned(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str, overrides: &[&str]) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("config.toml");
        std::fs::write(&path, text).expect("write");
        let overrides: Vec<String> = overrides.iter().map(|s| (*s).to_owned()).collect();
        Config::load_with_env(&path, &overrides, &|k| match k {
            "LOCAL_API_KEY" => Some("sk-local".into()),
            _ => None,
        })
    }

    #[test]
    fn prices_are_read_per_model_and_a_bad_one_is_refused_naming_its_key() {
        let config = load(
            "[model_providers.local]\nbase_url = \"http://127.0.0.1:1/v1\"\n\
             [model_providers.local.prices.\"gpt-4.1\"]\n\
             input_per_mtok = 2.0\noutput_per_mtok = 8.0\n",
            &[],
        )
        .expect("load");
        let price = config.price("local", "gpt-4.1").expect("priced");
        assert_eq!(price.currency(), "USD");
        // Cached input at the input price when no cached price is given.
        let cost = price.cost(1_000, 400, 500);
        assert!((cost - (1_000.0 * 2.0 + 500.0 * 8.0) / 1e6).abs() < 1e-15);
        assert!(config.price("local", "other").is_none());
        assert!(config.price("openai", "gpt-4.1").is_none());

        let err = load(
            "[model_providers.local]\nbase_url = \"http://127.0.0.1:1/v1\"\n\
             [model_providers.local.prices.m]\ninput_per_mtok = -1.0\noutput_per_mtok = 8.0\n",
            &[],
        )
        .expect_err("a negative price");
        assert!(
            err.to_string().contains("prices.\"m\".input_per_mtok"),
            "{err}"
        );
    }

    #[test]
    fn baggage_attributes_must_be_baggage_keys() {
        let config = load(
            "[otel]\nbaggage_attributes = [\"user.id\", \"session.id\"]\n",
            &[],
        )
        .expect("load");
        assert_eq!(config.otel.baggage_attributes, ["user.id", "session.id"]);
        let err = load("", &["otel.baggage_attributes=[\"user id\"]"]).expect_err("a space");
        assert!(
            err.to_string().contains("otel.baggage_attributes[0]"),
            "{err}"
        );
    }

    #[test]
    fn an_absent_file_gives_the_echo_defaults() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config =
            Config::load_with_env(&dir.path().join("none.toml"), &[], &|_| None).expect("load");
        assert_eq!(config.model, "echo");
        assert_eq!(config.model_provider, "skein");
        assert!(config.providers.contains_key("openai"));
        assert!(!config.content.capture);
    }

    #[test]
    fn providers_servers_and_keys_load() {
        let config = load(
            r#"
model = "qwen2.5-coder"
model_provider = "local"
[model_providers.local]
name = "Local vLLM"
base_url = "http://127.0.0.1:8000/v1/"
env_key = "LOCAL_API_KEY"
wire_api = "chat"
[mcp_servers.time]
command = "mcp-server-time"
env = { TZ = "UTC" }
"#,
            &[],
        )
        .expect("load");
        let local = &config.providers["local"];
        assert_eq!(local.base_url, "http://127.0.0.1:8000/v1");
        assert_eq!(local.api_key.as_deref(), Some("sk-local"));
        assert_eq!(local.env_key.as_deref(), Some("LOCAL_API_KEY"));
        assert!(!format!("{local:?}").contains("sk-local"));
        assert_eq!(config.mcp_servers["time"].env["TZ"], "UTC");
    }

    #[test]
    fn an_mcp_server_is_a_command_or_a_url_never_both() {
        let config = load(
            "[mcp_servers.web]\nurl = \"https://mcp.example.com/mcp\"\nbearer_token_env_var = \"T\"\nhttp_headers = { \"X-A\" = \"b\" }\n",
            &[],
        )
        .expect("a url server");
        let web = &config.mcp_servers["web"];
        assert_eq!(web.endpoint(), "https://mcp.example.com/mcp");
        assert_eq!(web.http_headers["X-A"], "b");
        for (toml, key) in [
            (
                "[mcp_servers.web]\nurl = \"https://x/mcp\"\ncommand = \"srv\"\n",
                "mcp_servers.web.url",
            ),
            (
                "[mcp_servers.web]\nurl = \"ftp://x/mcp\"\n",
                "mcp_servers.web.url",
            ),
            ("[mcp_servers.web]\nargs = []\n", "mcp_servers.web.command"),
        ] {
            let err = load(toml, &[]).expect_err(toml).to_string();
            assert!(err.contains(key), "{toml}: {err}");
        }
    }

    #[test]
    fn unknown_top_level_keys_are_found_with_their_line_and_codex_keys_apart() {
        let config = load(
            "model_reasoning_effort = \"high\"\nmodle = \"gpt\"\n\n[otel]\ncapture_content = true\n[tui]\nx = 1\n[typo_table]\ny = 2\n",
            &["max_tools=3"],
        )
        .expect("load");
        let found: Vec<String> = config
            .unknown_keys
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(found.len(), 3, "{found:?}");
        assert!(
            found[0].ends_with("config.toml:2: unknown key `modle`"),
            "{found:?}"
        );
        assert!(
            found[1].ends_with("config.toml:8: unknown key `typo_table`"),
            "{found:?}"
        );
        assert_eq!(found[2], "-c max_tools=3: unknown key `max_tools`");
        assert_eq!(config.codex_only_keys, ["model_reasoning_effort", "tui"]);
        assert!(struct_fields::<RawConfig>().contains(&"mcp_servers"));
    }

    fn export_env_of(text: &str, vars: &[(&str, &str)]) -> Vec<(String, String)> {
        let config = load(text, &[]).expect("load");
        config.otel.export_env(&|name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        })
    }

    #[test]
    fn codex_otel_tables_load_and_map_onto_the_standard_variables() {
        let http = r#"
[otel]
environment = "staging"
log_user_prompt = true
exporter = "none"
trace_exporter = { otlp-http = { endpoint = "http://c:4318/v1/traces", protocol = "json", headers = { "x-api-key" = "a,b=c" } } }
metrics_exporter = "none"
span_attributes = { team = "x" }
"#;
        let config = load(http, &[]).expect("load");
        assert!(config.content.capture, "log_user_prompt captures content");
        let vars = export_env_of(http, &[]);
        let expect = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        assert_eq!(
            vars,
            expect(&[
                (
                    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                    "http://c:4318/v1/traces"
                ),
                ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/json"),
                ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "x-api-key=a%2Cb%3Dc"),
                ("OTEL_METRICS_EXPORTER", "none"),
                (
                    "OTEL_RESOURCE_ATTRIBUTES",
                    "deployment.environment.name=staging"
                ),
            ])
        );
        // The environment wins, variable by variable.
        let vars = export_env_of(
            http,
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://env:4318"),
                ("OTEL_METRICS_EXPORTER", "otlp"),
                (
                    "OTEL_RESOURCE_ATTRIBUTES",
                    "a=b,deployment.environment.name=prod",
                ),
            ],
        );
        assert!(vars.is_empty(), "{vars:?}");
        let vars = export_env_of(http, &[("OTEL_RESOURCE_ATTRIBUTES", "a=b")]);
        assert!(
            vars.contains(&(
                "OTEL_RESOURCE_ATTRIBUTES".into(),
                "a=b,deployment.environment.name=staging".into()
            )),
            "{vars:?}"
        );

        let grpc = r#"
[otel]
trace_exporter = { otlp-grpc = { endpoint = "https://c:4317", headers = { h = "v" }, tls = { ca-certificate = "/ca.pem" } } }
metrics_exporter = { otlp-grpc = { endpoint = "https://m:4317" } }
"#;
        assert_eq!(
            export_env_of(grpc, &[]),
            expect(&[
                ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "https://c:4317"),
                ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc"),
                ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "h=v"),
                ("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE", "/ca.pem"),
                ("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "https://m:4317"),
                ("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "grpc"),
            ])
        );
        // Traces to a collector, metrics unsaid: not to the default address.
        let traces_only =
            "[otel]\ntrace_exporter = { otlp-grpc = { endpoint = \"http://c:4317\" } }\n";
        assert!(
            export_env_of(traces_only, &[])
                .contains(&("OTEL_METRICS_EXPORTER".into(), "none".into()))
        );
        // Skein's own keys still load beside Codex's; others are refused.
        assert!(
            load(
                "[otel]\ncapture_content = true\nenvironment = \"dev\"\n",
                &[]
            )
            .is_ok()
        );
        let err = load("[otel]\ntrace_exporter = \"zipkin\"\n", &[]).expect_err("unknown kind");
        assert!(err.to_string().contains("otel.trace_exporter"), "{err}");
    }

    #[test]
    fn overrides_win_and_take_toml_values() {
        let config = load(
            "model = \"a\"\nmodel_provider = \"openai\"\n",
            &["model=\"gpt-4.1-mini\"", "otel.capture_content=true"],
        )
        .expect("load");
        assert_eq!(config.model, "gpt-4.1-mini");
        assert!(config.content.capture);
    }

    #[test]
    fn errors_name_the_file_the_key_and_the_problem() {
        let err = load("model_provider = \"nope\"\n", &[]).expect_err("unknown provider");
        let text = err.to_string();
        assert!(
            text.contains("config.toml") && text.contains("`model_provider`"),
            "{text}"
        );
        assert!(text.contains("unknown provider \"nope\""), "{text}");

        let err = load("[model_providers.x]\nbase_url = 5\n", &[]).expect_err("bad type");
        let text = err.to_string();
        assert!(text.contains("model_providers.x.base_url"), "{text}");

        // `echo` with another provider is ambiguous: named, not guessed.
        let err = load(
            "model_provider = \"local\"\n[model_providers.local]\nbase_url = \"http://127.0.0.1:1/v1\"\n",
            &["model=\"echo\""],
        )
        .expect_err("ambiguous echo");
        let text = err.to_string();
        assert!(
            text.contains("`model`") && text.contains("model_provider is \"local\""),
            "{text}"
        );
        assert!(text.contains("-c model_provider=\"skein\""), "{text}");

        let err = load("model = [", &[]).expect_err("bad toml");
        assert!(err.to_string().contains("not valid TOML"), "{err}");

        let err = load("[otel]\nredact = [\"(\"]\n", &[]).expect_err("bad pattern");
        assert!(err.to_string().contains("otel.redact[0]"), "{err}");
    }

    #[test]
    fn a_syntax_error_is_shown_as_path_line_col_with_the_line_and_a_caret() {
        let err = load("model = \"echo\"\nmodel_provider = skein\n", &[]).expect_err("bad");
        let text = err.to_string();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(
            lines[0].ends_with("config.toml:2:18: not valid TOML: string values must be quoted, expected literal string"),
            "{text}"
        );
        assert_eq!(lines[1], "model_provider = skein");
        assert_eq!(lines[2], "                 ^^^^^");
    }

    #[test]
    fn a_bad_redaction_pattern_points_into_the_pattern() {
        // The escape before the error counts as the character it stands for.
        let err = load("[otel]\nredact = [\"ok\", \"\\\\d+(x\"]\n", &[]).expect_err("bad");
        let text = err.to_string();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(
            lines[0].ends_with(
                "config.toml:2:22: key `otel.redact[1]`: pattern \"\\\\d+(x\" does not compile: unclosed group"
            ),
            "{text}"
        );
        assert_eq!(lines[1], "redact = [\"ok\", \"\\\\d+(x\"]");
        assert_eq!(lines[2], "                     ^");
        // From -c, there is no line to show.
        let err = load("", &["otel.redact=[\"(\"]"]).expect_err("bad");
        let text = err.to_string();
        assert!(
            text.contains("otel.redact[0]") && text.contains("unclosed group"),
            "{text}"
        );
        assert_eq!(text.lines().count(), 1, "{text}");
    }

    /// Loads no file and no overrides with exactly the environment `vars`.
    fn load_env(vars: &[(&str, &str)]) -> Config {
        let dir = tempfile::tempdir().expect("tempdir");
        let vars: BTreeMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Config::load_with_env(&dir.path().join("none.toml"), &[], &|k| {
            vars.get(k).cloned()
        })
        .expect("load")
    }

    #[test]
    fn providers_whose_key_variable_is_unset_are_found_and_named() {
        let text = "[model_providers.a]\nbase_url = \"http://127.0.0.1:1/v1\"\nenv_key = \"A_KEY\"\n\
                    [model_providers.b]\nbase_url = \"http://127.0.0.1:1/v1\"\nenv_key = \"B_KEY\"\n";
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("config.toml");
        std::fs::write(&path, text).expect("write");
        let config = Config::load_with_env(&path, &[], &|k| {
            (k == "B_KEY").then(|| "secret-b".to_owned())
        })
        .expect("config");
        // `openai` is built in and not the default: not listed.
        let missing: Vec<&str> = config
            .providers_without_key()
            .iter()
            .map(|p| p.id.as_str())
            .collect();
        assert_eq!(missing, vec!["a"]);
        let hint = config.providers["a"].key_hint();
        assert!(hint.contains("A_KEY") && hint.contains("not set"), "{hint}");
        let hint = config.providers["b"].key_hint();
        assert!(
            hint.contains("B_KEY") && !hint.contains("secret-b"),
            "{hint}"
        );
    }

    #[test]
    fn the_openai_provider_defaults_to_the_openai_api_without_a_key() {
        let config = load_env(&[]);
        let openai = &config.providers[OPENAI_PROVIDER];
        assert_eq!(openai.id, "openai");
        assert_eq!(openai.base_url, "https://api.openai.com/v1");
        assert_eq!(openai.base_url, OPENAI_DEFAULT_BASE_URL);
        assert_eq!(openai.api_key, None);
        assert_eq!(openai.wire_api, WireApi::Chat);
        assert_eq!(
            openai.request_timeout,
            Duration::from_millis(DEFAULT_REQUEST_TIMEOUT_MS)
        );
        // Set but empty is the same as unset.
        let config = load_env(&[("OPENAI_BASE_URL", ""), ("OPENAI_API_KEY", "")]);
        let openai = &config.providers[OPENAI_PROVIDER];
        assert_eq!(openai.base_url, OPENAI_DEFAULT_BASE_URL);
        assert_eq!(openai.api_key, None);
    }

    #[test]
    fn the_openai_provider_reads_openai_base_url_and_openai_api_key() {
        let config = load_env(&[
            ("OPENAI_BASE_URL", "http://127.0.0.1:8000/v1/"),
            ("OPENAI_API_KEY", "sk-from-env"),
        ]);
        let openai = &config.providers[OPENAI_PROVIDER];
        assert_eq!(openai.base_url, "http://127.0.0.1:8000/v1");
        assert_eq!(openai.api_key.as_deref(), Some("sk-from-env"));
        assert!(!format!("{openai:?}").contains("sk-from-env"));
        // Only those two names count.
        let config = load_env(&[("OPENAI_KEY", "sk-other"), ("OPENAI_URL", "http://x/v1")]);
        let openai = &config.providers[OPENAI_PROVIDER];
        assert_eq!(openai.base_url, OPENAI_DEFAULT_BASE_URL);
        assert_eq!(openai.api_key, None);
    }

    #[test]
    fn the_environment_switch_turns_content_recording_on_for_its_on_values() {
        for on in [
            "true",
            "TRUE",
            "True",
            "SPAN_ONLY",
            "span_only",
            "SPAN_AND_EVENT",
            "Span_And_Event",
            " true ",
        ] {
            let config = load_env(&[(CAPTURE_CONTENT_ENV, on)]);
            assert!(config.content.capture, "{CAPTURE_CONTENT_ENV}={on:?} is on");
        }
    }

    #[test]
    fn the_environment_switch_leaves_content_recording_off_otherwise() {
        assert!(!load_env(&[]).content.capture, "unset is off");
        for off in [
            "false",
            "FALSE",
            "NO_CONTENT",
            "no_content",
            "",
            "1",
            "yes",
            "EVENT_ONLY",
        ] {
            let config = load_env(&[(CAPTURE_CONTENT_ENV, off)]);
            assert!(
                !config.content.capture,
                "{CAPTURE_CONTENT_ENV}={off:?} is off"
            );
        }
    }

    #[test]
    fn capture_content_in_the_config_turns_content_recording_on() {
        let config = load("[otel]\ncapture_content = true\n", &[]).expect("load");
        assert!(config.content.capture);
        let config = load("[otel]\ncapture_content = false\n", &[]).expect("load");
        assert!(!config.content.capture);
        // Either switch turns it on: the file cannot veto the environment.
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("config.toml");
        std::fs::write(&path, "[otel]\ncapture_content = false\n").expect("write");
        let config = Config::load_with_env(&path, &[], &|k| {
            (k == CAPTURE_CONTENT_ENV).then(|| "SPAN_ONLY".to_owned())
        })
        .expect("load");
        assert!(config.content.capture);
    }

    #[test]
    fn content_is_redacted_and_truncated_and_off_by_default() {
        let policy = ContentPolicy {
            capture: true,
            redact: vec![regex::Regex::new("sk-[a-z]+").expect("re")],
            max_bytes: 12,
        };
        assert_eq!(
            policy.record("key sk-secret here").as_deref(),
            Some("key [REDACTE")
        );
        let json = serde_json::json!({"k": ["a sk-abc b"]});
        let policy = ContentPolicy {
            max_bytes: 1000,
            ..policy
        };
        assert_eq!(
            policy.record_json(&json).as_deref(),
            Some(r#"{"k":["a [REDACTED] b"]}"#)
        );
        let off = ContentPolicy::default();
        assert_eq!(off.record("anything"), None);
    }
}
