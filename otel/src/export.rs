//! Span export pipelines: OTLP to a collector, and accounting of what was
//! delivered and what was lost.
//!
//! Every pipeline is a batch processor wrapped in [`CountingProcessor`],
//! whose exporter is wrapped in [`CountingExporter`]. The wrapper bounds the
//! number of spans in flight itself, so a span is either queued or counted
//! as dropped at once: export never blocks the code that ends a span, and a
//! dead or slow collector costs bounded memory and a count, never a hang.

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry::Context;
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig, WithTonicConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::metrics::Temporality;
use opentelemetry_sdk::metrics::data::ResourceMetrics;
use opentelemetry_sdk::metrics::exporter::PushMetricExporter;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Span, SpanData, SpanExporter, SpanProcessor,
};

use crate::otlp_connection::{
    Connection, ConnectionError, Signal, check_endpoint, error_chain, is_https,
};

/// Spans one pipeline holds at most (queued or being exported).
pub const MAX_PENDING_SPANS: u64 = 2048;

/// The OTLP wire protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OtlpProtocol {
    /// Protobuf over HTTP (`http/protobuf`), the default.
    HttpProtobuf,
    /// gRPC (`grpc`).
    Grpc,
    /// JSON over HTTP (`http/json`).
    HttpJson,
}

impl fmt::Display for OtlpProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            OtlpProtocol::HttpProtobuf => "http/protobuf",
            OtlpProtocol::Grpc => "grpc",
            OtlpProtocol::HttpJson => "http/json",
        })
    }
}

/// An unknown protocol name.
#[derive(Debug, thiserror::Error)]
#[error("unknown OTLP protocol {0:?}; expected http/protobuf, grpc or http/json")]
pub struct UnknownProtocol(String);

impl OtlpProtocol {
    /// The exporter's name for this protocol.
    pub fn wire(self) -> Protocol {
        match self {
            OtlpProtocol::HttpProtobuf => Protocol::HttpBinary,
            OtlpProtocol::Grpc => Protocol::Grpc,
            OtlpProtocol::HttpJson => Protocol::HttpJson,
        }
    }
}

impl FromStr for OtlpProtocol {
    type Err = UnknownProtocol;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "http/protobuf" => Ok(OtlpProtocol::HttpProtobuf),
            "grpc" => Ok(OtlpProtocol::Grpc),
            "http/json" => Ok(OtlpProtocol::HttpJson),
            other => Err(UnknownProtocol(other.to_owned())),
        }
    }
}

/// OTLP settings given on the command line; they override the standard
/// `OTEL_EXPORTER_OTLP_*` environment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OtlpSettings {
    /// Base endpoint, like `OTEL_EXPORTER_OTLP_ENDPOINT` (`/v1/traces` is
    /// appended for the HTTP protocols).
    pub endpoint: Option<String>,
    /// The protocol, like `OTEL_EXPORTER_OTLP_PROTOCOL`.
    pub protocol: Option<OtlpProtocol>,
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

impl OtlpSettings {
    /// True when an OTLP endpoint is configured, by flag or environment.
    pub fn enabled(&self) -> bool {
        self.endpoint.is_some()
            || env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_some()
            || env("OTEL_EXPORTER_OTLP_ENDPOINT").is_some()
    }

    /// The protocol in force: flag, then `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`,
    /// then `OTEL_EXPORTER_OTLP_PROTOCOL`, then `http/protobuf`.
    pub fn resolved_protocol(&self) -> Result<OtlpProtocol, UnknownProtocol> {
        if let Some(protocol) = self.protocol {
            return Ok(protocol);
        }
        match env("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
            .or_else(|| env("OTEL_EXPORTER_OTLP_PROTOCOL"))
        {
            Some(name) => name.parse(),
            None => Ok(OtlpProtocol::HttpProtobuf),
        }
    }

    /// The protocol and the connection of span export, as
    /// [`otlp_processor`] resolves them: [`OtlpSettings::resolved_protocol`],
    /// the flag endpoint's scheme checked, then the traces settings of the
    /// environment ([`Connection::from_env`]).
    ///
    /// # Errors
    ///
    /// An unknown protocol name, a flag endpoint with a scheme other than
    /// `http` or `https`, or a connection setting that cannot be used.
    pub fn traces_connection(&self) -> Result<(OtlpProtocol, Connection), ExportSetupError> {
        let protocol = self.resolved_protocol()?;
        if let Some(endpoint) = &self.endpoint {
            check_endpoint("--otlp-endpoint", endpoint)?;
        }
        Ok((protocol, Connection::from_env(Signal::Traces)?))
    }

    /// The endpoint to give the exporter when a flag sets it; `None` lets
    /// the exporter read the standard environment (where a signal-specific
    /// endpoint is used as given and `/v1/traces` is appended to the base
    /// one).
    fn explicit_endpoint(&self, protocol: OtlpProtocol) -> Option<String> {
        self.signal_endpoint(protocol, Signal::Traces)
    }

    /// Like `explicit_endpoint`, for `signal` (whose HTTP path is appended).
    pub(crate) fn signal_endpoint(&self, protocol: OtlpProtocol, signal: Signal) -> Option<String> {
        let base = self.endpoint.as_deref()?;
        Some(match protocol {
            OtlpProtocol::Grpc => base.to_owned(),
            _ => signal.http_url(base),
        })
    }
}

/// Why an exporter could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ExportSetupError {
    /// A protocol name did not parse.
    #[error(transparent)]
    Protocol(#[from] UnknownProtocol),
    /// The OTLP exporter rejected its configuration.
    #[error("cannot set up OTLP export ({protocol}): {reason}")]
    Otlp {
        /// The protocol.
        protocol: OtlpProtocol,
        /// Why.
        reason: String,
    },
    /// The runtime for gRPC export could not start.
    #[error("cannot start the gRPC export runtime: {0}")]
    Runtime(std::io::Error),
    /// A TLS file, `INSECURE` or `TIMEOUT` setting cannot be used.
    #[error(transparent)]
    Connection(#[from] ConnectionError),
}

impl ExportSetupError {
    /// Maps the OTLP exporter's build error for `protocol`.
    pub(crate) fn otlp(
        protocol: OtlpProtocol,
    ) -> impl Fn(opentelemetry_otlp::ExporterBuildError) -> Self {
        move |e| ExportSetupError::Otlp {
            protocol,
            reason: e.to_string(),
        }
    }
}

/// What one pipeline delivered and lost.
#[derive(Debug, Default)]
pub struct ExportStats {
    name: &'static str,
    accepted: AtomicU64,
    exported: AtomicU64,
    failed: AtomicU64,
    rejected: AtomicU64,
    deleted: AtomicU64,
}

impl ExportStats {
    /// Fresh counters for the pipeline called `name`.
    pub fn new(name: &'static str) -> Arc<Self> {
        Arc::new(Self {
            name,
            ..Self::default()
        })
    }

    /// The pipeline's name (`local store`, `otlp`).
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Spans delivered to the exporter's destination.
    pub fn exported(&self) -> u64 {
        self.exported.load(Ordering::Relaxed)
    }

    /// Spans lost so far: refused because too many were pending, or in a
    /// batch the exporter failed to deliver.
    pub fn dropped(&self) -> u64 {
        self.rejected.load(Ordering::Relaxed) + self.failed.load(Ordering::Relaxed)
    }

    /// Spans delivered, then deleted again by the destination's retention
    /// (the local store's size and age limits) while this process ran.
    pub fn deleted(&self) -> u64 {
        self.deleted.load(Ordering::Relaxed)
    }

    /// Spans accepted but neither delivered nor failed yet.
    pub fn pending(&self) -> u64 {
        self.accepted
            .load(Ordering::Relaxed)
            .saturating_sub(self.exported() + self.failed.load(Ordering::Relaxed))
    }
}

impl ExportStats {
    pub(crate) fn record_accepted(&self, n: u64) {
        self.accepted.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn record_exported(&self, n: u64) {
        self.exported.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn record_failed(&self, n: u64) {
        self.failed.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn record_rejected(&self, n: u64) {
        self.rejected.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn record_deleted(&self, n: u64) {
        self.deleted.fetch_add(n, Ordering::Relaxed);
    }
}

/// How often a failure episode that goes on is summarized again.
const STILL_FAILING_EVERY: Duration = Duration::from_secs(60);

/// The last failed HTTP request of an exporter: the OTLP HTTP exporter's
/// own error says only "network error" or the status code.
#[derive(Debug, Default)]
pub(crate) struct LastHttpError(Mutex<Option<HttpFailure>>);

/// Why one HTTP export request failed.
#[derive(Debug)]
struct HttpFailure {
    /// The error and its sources, or the refusing status.
    reason: String,
    /// The status of a response that refused the export.
    status: Option<u16>,
}

impl LastHttpError {
    fn take(&self) -> Option<HttpFailure> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    fn set(&self, failure: HttpFailure) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(failure);
    }
}

/// True when `status` says the backend takes no data of this kind at this
/// path (Phoenix answers `405` on `/v1/metrics`), rather than failing for
/// now.
fn refuses_signal(status: u16) -> bool {
    matches!(status, 404 | 405)
}

/// The HTTP client handed to an OTLP HTTP exporter: Skein's reqwest
/// client, keeping the reason (the error and its sources: a refused
/// connection, an untrusted certificate) of each failed request.
#[derive(Debug)]
pub(crate) struct ReportingHttpClient {
    inner: reqwest::blocking::Client,
    last_error: Arc<LastHttpError>,
}

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for ReportingHttpClient {
    async fn send_bytes(
        &self,
        request: opentelemetry_http::Request<opentelemetry_http::Bytes>,
    ) -> Result<
        opentelemetry_http::Response<opentelemetry_http::Bytes>,
        opentelemetry_http::HttpError,
    > {
        let result = self.inner.send_bytes(request).await;
        match &result {
            Err(err) => self.last_error.set(HttpFailure {
                reason: error_chain(err.as_ref()),
                status: None,
            }),
            Ok(response) if !response.status().is_success() => {
                self.last_error.set(HttpFailure {
                    reason: format!("the backend answered HTTP {}", response.status()),
                    status: Some(response.status().as_u16()),
                });
            }
            Ok(_) => {}
        }
        result
    }
}

/// Failure episodes of one OTLP exporter, logged the same whatever the
/// protocol and trust setup: the first failure of an episode as a warning
/// with the endpoint and the reason, then nothing per attempt, a summary
/// each [`STILL_FAILING_EVERY`] while it goes on, one when export works
/// again, and one at shutdown if it never did.
#[derive(Debug)]
pub(crate) struct ExportHealth {
    signal: Signal,
    endpoint: String,
    last_http_error: Arc<LastHttpError>,
    episode: Mutex<Option<Episode>>,
}

#[derive(Debug)]
struct Episode {
    started: Instant,
    failed_exports: u64,
    /// Spans (or metric exports) lost in the episode.
    lost: u64,
    reason: String,
    last_summary: Instant,
    /// The backend refuses this signal altogether: said once, never
    /// summarized again.
    refused: bool,
}

impl ExportHealth {
    /// The health of the exporter of `connection`'s signal over
    /// `protocol`, sending to the endpoint the flag endpoint `flag` or the
    /// environment gives.
    pub(crate) fn new(connection: &Connection, protocol: OtlpProtocol, flag: Option<&str>) -> Self {
        Self {
            signal: connection.signal(),
            endpoint: connection.endpoint(protocol, flag),
            last_http_error: Arc::new(LastHttpError::default()),
            episode: Mutex::new(None),
        }
    }

    /// The endpoint the exporter sends to.
    pub(crate) fn endpoint(&self) -> &str {
        &self.endpoint
    }

    fn episode(&self) -> std::sync::MutexGuard<'_, Option<Episode>> {
        self.episode.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// An export of `lost` items failed with `err`.
    pub(crate) fn failed(&self, err: &dyn fmt::Display, lost: u64) {
        let http = self.last_http_error.take();
        let refused = http
            .as_ref()
            .and_then(|h| h.status)
            .filter(|&status| refuses_signal(status));
        let reason = match http {
            Some(http) => format!("{err}: {}", http.reason),
            None => err.to_string(),
        };
        let mut episode = self.episode();
        match episode.as_mut() {
            None => {
                match (refused, self.signal) {
                    // A backend that takes no metrics refuses every export
                    // alike: said once, with the way to stop sending them.
                    (Some(status), Signal::Metrics) => tracing::warn!(
                        "the OTLP backend refuses metrics (HTTP {status} on {}): they are \
                         dropped; set OTEL_METRICS_EXPORTER=none to stop sending them",
                        self.endpoint
                    ),
                    _ => tracing::warn!(
                        signal = self.signal.label(),
                        endpoint = %self.endpoint,
                        %reason,
                        "OTLP export failed; its data is dropped and counted, and further failures are summarized until export works again"
                    ),
                }
                let now = Instant::now();
                *episode = Some(Episode {
                    started: now,
                    failed_exports: 1,
                    lost,
                    reason,
                    last_summary: now,
                    refused: refused.is_some() && self.signal == Signal::Metrics,
                });
            }
            Some(ongoing) => {
                ongoing.failed_exports += 1;
                ongoing.lost += lost;
                ongoing.reason = reason;
                if !ongoing.refused && ongoing.last_summary.elapsed() >= STILL_FAILING_EVERY {
                    ongoing.last_summary = Instant::now();
                    tracing::warn!(
                        signal = self.signal.label(),
                        endpoint = %self.endpoint,
                        failed_exports = ongoing.failed_exports,
                        lost = ongoing.lost,
                        failing_for_s = ongoing.started.elapsed().as_secs(),
                        reason = %ongoing.reason,
                        "OTLP export still failing"
                    );
                }
            }
        }
    }

    /// An export succeeded: ends an episode.
    pub(crate) fn succeeded(&self) {
        let Some(ended) = self.episode().take() else {
            return;
        };
        tracing::info!(
            signal = self.signal.label(),
            endpoint = %self.endpoint,
            failed_exports = ended.failed_exports,
            lost = ended.lost,
            failed_for_s = ended.started.elapsed().as_secs(),
            "OTLP export works again"
        );
    }

    /// True while the backend refuses this signal altogether (said once
    /// already).
    pub(crate) fn refused(&self) -> bool {
        self.episode().as_ref().is_some_and(|e| e.refused)
    }

    /// At shutdown: summarizes an episode still going on.
    pub(crate) fn report_at_shutdown(&self) {
        let mut episode = self.episode();
        // A refusal was said once, and stays known (see `refused`).
        if episode.as_ref().is_none_or(|e| e.refused) {
            return;
        }
        let Some(ongoing) = episode.take() else {
            return;
        };
        tracing::warn!(
            signal = self.signal.label(),
            endpoint = %self.endpoint,
            failed_exports = ongoing.failed_exports,
            lost = ongoing.lost,
            failing_for_s = ongoing.started.elapsed().as_secs(),
            reason = %ongoing.reason,
            "OTLP export was still failing at shutdown"
        );
    }
}

/// Counts what its exporter delivers and fails to deliver, and reports
/// failure episodes.
#[derive(Debug)]
pub struct CountingExporter<E> {
    inner: E,
    stats: Arc<ExportStats>,
    health: Option<Arc<ExportHealth>>,
}

impl<E: SpanExporter> SpanExporter for CountingExporter<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let count = batch.len() as u64;
        let result = self.inner.export(batch).await;
        let counter = match &result {
            Ok(()) => {
                if let Some(health) = &self.health {
                    health.succeeded();
                }
                &self.stats.exported
            }
            Err(err) => {
                if let Some(health) = &self.health {
                    health.failed(err, count);
                }
                &self.stats.failed
            }
        };
        counter.fetch_add(count, Ordering::Relaxed);
        result
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        let result = self.inner.shutdown_with_timeout(timeout);
        if let Some(health) = &self.health {
            health.report_at_shutdown();
        }
        result
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// A batch processor that refuses (and counts) spans beyond
/// [`MAX_PENDING_SPANS`] instead of letting them vanish in a full queue.
#[derive(Debug)]
pub struct CountingProcessor {
    inner: BatchSpanProcessor,
    stats: Arc<ExportStats>,
}

impl CountingProcessor {
    /// A batch pipeline to `exporter`, counting into `stats`.
    pub fn new<E: SpanExporter + 'static>(
        exporter: E,
        stats: Arc<ExportStats>,
        delay: Duration,
    ) -> Self {
        Self::with_health(exporter, stats, delay, None)
    }

    /// Like [`CountingProcessor::new`], reporting failure episodes to
    /// `health`.
    pub(crate) fn with_health<E: SpanExporter + 'static>(
        exporter: E,
        stats: Arc<ExportStats>,
        delay: Duration,
        health: Option<Arc<ExportHealth>>,
    ) -> Self {
        let exporter = CountingExporter {
            inner: exporter,
            stats: Arc::clone(&stats),
            health,
        };
        let inner = BatchSpanProcessor::builder(exporter)
            .with_batch_config(
                BatchConfigBuilder::default()
                    .with_max_queue_size(MAX_PENDING_SPANS as usize + 64)
                    .with_scheduled_delay(delay)
                    .build(),
            )
            .build();
        Self { inner, stats }
    }
}

impl SpanProcessor for CountingProcessor {
    fn on_start(&self, span: &mut Span, cx: &Context) {
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        if !span.span_context.is_sampled() {
            return;
        }
        if self.stats.pending() >= MAX_PENDING_SPANS {
            self.stats.rejected.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.stats.accepted.fetch_add(1, Ordering::Relaxed);
        self.inner.on_end(span);
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// Runs an async exporter (tonic's) on a runtime of its own, so it works
/// from the batch processor's (or the periodic metric reader's) plain
/// thread.
#[derive(Debug)]
pub struct OwnRuntimeExporter<E> {
    inner: E,
    runtime: tokio::runtime::Runtime,
}

impl<E> OwnRuntimeExporter<E> {
    /// Starts a current-thread runtime and builds the exporter inside it
    /// (tonic needs a reactor to set up its channel).
    pub(crate) fn build(
        thread_name: &str,
        build: impl FnOnce() -> Result<E, ExportSetupError>,
    ) -> Result<Self, ExportSetupError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .thread_name(thread_name)
            .build()
            .map_err(ExportSetupError::Runtime)?;
        let inner = {
            let _entered = runtime.enter();
            build()?
        };
        Ok(Self { inner, runtime })
    }
}

impl<E: SpanExporter> SpanExporter for OwnRuntimeExporter<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        // Called from the batch processor's thread, never from a runtime.
        self.runtime.block_on(self.inner.export(batch))
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

impl<E: PushMetricExporter> PushMetricExporter for OwnRuntimeExporter<E> {
    async fn export(&self, metrics: &ResourceMetrics) -> OTelSdkResult {
        // Called from the periodic reader's thread, never from a runtime.
        self.runtime.block_on(self.inner.export(metrics))
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn temporality(&self) -> Temporality {
        self.inner.temporality()
    }
}

/// A metric exporter whose failures are reported as episodes, like
/// spans' (a backend that refuses metrics is named once).
#[derive(Debug)]
pub struct ReportingMetricExporter<E> {
    inner: E,
    health: Arc<ExportHealth>,
}

impl<E> ReportingMetricExporter<E> {
    pub(crate) fn new(inner: E, health: Arc<ExportHealth>) -> Self {
        Self { inner, health }
    }
}

impl<E: PushMetricExporter> PushMetricExporter for ReportingMetricExporter<E> {
    async fn export(&self, metrics: &ResourceMetrics) -> OTelSdkResult {
        let result = self.inner.export(metrics).await;
        match &result {
            Ok(()) => self.health.succeeded(),
            Err(err) => self.health.failed(err, 1),
        }
        result
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        let result = self.inner.shutdown_with_timeout(timeout);
        self.health.report_at_shutdown();
        result
    }

    fn temporality(&self) -> Temporality {
        self.inner.temporality()
    }
}

/// Sets up an HTTP exporter builder (spans or metrics) for `protocol`:
/// the flag endpoint when there is one (else the exporter reads the
/// standard environment), the timeout, and the HTTP client that carries
/// the connection's TLS settings and keeps failures' reasons for
/// `health`.
pub(crate) fn configure_http<B: WithExportConfig + WithHttpConfig>(
    builder: B,
    protocol: OtlpProtocol,
    endpoint: Option<String>,
    connection: &Connection,
    health: &ExportHealth,
) -> Result<B, ExportSetupError> {
    let client = ReportingHttpClient {
        inner: connection.http_client()?,
        last_error: Arc::clone(&health.last_http_error),
    };
    let builder = builder
        .with_protocol(protocol.wire())
        .with_timeout(connection.timeout())
        .with_http_client(client);
    Ok(match endpoint {
        Some(endpoint) => builder.with_endpoint(endpoint),
        None => builder,
    })
}

/// Sets up a gRPC exporter builder (spans or metrics): the endpoint
/// resolved with `INSECURE` from the flag `flag_endpoint` or the
/// environment, the timeout, and for an `https://` endpoint the TLS
/// configuration (a plaintext endpoint gets none, and no trust store is
/// loaded for it).
pub(crate) fn configure_grpc<B: WithExportConfig + WithTonicConfig>(
    builder: B,
    flag_endpoint: Option<&str>,
    connection: &Connection,
) -> B {
    let endpoint = connection.grpc_endpoint(flag_endpoint);
    let tls = is_https(&endpoint);
    let builder = builder
        .with_protocol(Protocol::Grpc)
        .with_timeout(connection.timeout())
        .with_endpoint(endpoint);
    if tls {
        builder.with_tls_config(connection.grpc_tls())
    } else {
        builder
    }
}

/// Skein's batch delay when `OTEL_BSP_SCHEDULE_DELAY` names none.
pub const DEFAULT_BATCH_DELAY: Duration = Duration::from_secs(1);

/// The delay of the OTLP batch processor: `OTEL_BSP_SCHEDULE_DELAY`
/// (milliseconds) when set to a number, else [`DEFAULT_BATCH_DELAY`].
fn batch_delay(env: Option<&str>) -> Duration {
    match env.map(str::trim) {
        None | Some("") => DEFAULT_BATCH_DELAY,
        Some(text) => match text.parse::<u64>() {
            Ok(millis) => Duration::from_millis(millis),
            Err(_) => {
                tracing::warn!(
                    value = %text,
                    "OTEL_BSP_SCHEDULE_DELAY is not a whole number of milliseconds; using {} ms",
                    DEFAULT_BATCH_DELAY.as_millis()
                );
                DEFAULT_BATCH_DELAY
            }
        },
    }
}

/// Where an OTLP pipeline sends its spans, as resolved from the flags and
/// the environment: for the startup line that says where spans go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OtlpDestination {
    /// The spans' endpoint (with `/v1/traces` for the HTTP protocols).
    pub endpoint: String,
    /// The protocol.
    pub protocol: OtlpProtocol,
}

/// Builds the OTLP pipeline for `settings`, counting into a fresh
/// `otlp` stats record; also says where it sends.
pub fn otlp_processor(
    settings: &OtlpSettings,
) -> Result<(CountingProcessor, Arc<ExportStats>, OtlpDestination), ExportSetupError> {
    let (protocol, connection) = settings.traces_connection()?;
    let stats = ExportStats::new("otlp");
    let delay = batch_delay(std::env::var("OTEL_BSP_SCHEDULE_DELAY").ok().as_deref());
    let otlp_error = ExportSetupError::otlp(protocol);
    let health = Arc::new(ExportHealth::new(
        &connection,
        protocol,
        settings.endpoint.as_deref(),
    ));
    let destination = OtlpDestination {
        endpoint: health.endpoint().to_owned(),
        protocol,
    };
    let processor = match protocol {
        OtlpProtocol::HttpProtobuf | OtlpProtocol::HttpJson => {
            let builder = configure_http(
                opentelemetry_otlp::SpanExporter::builder().with_http(),
                protocol,
                settings.explicit_endpoint(protocol),
                &connection,
                &health,
            )?;
            let exporter = builder.build().map_err(otlp_error)?;
            CountingProcessor::with_health(exporter, Arc::clone(&stats), delay, Some(health))
        }
        OtlpProtocol::Grpc => {
            let exporter = OwnRuntimeExporter::build("skein-otlp-grpc", || {
                configure_grpc(
                    opentelemetry_otlp::SpanExporter::builder().with_tonic(),
                    settings.endpoint.as_deref(),
                    &connection,
                )
                .build()
                .map_err(otlp_error)
            })?;
            CountingProcessor::with_health(exporter, Arc::clone(&stats), delay, Some(health))
        }
    };
    Ok((processor, stats, destination))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_batch_delay_follows_otel_bsp_schedule_delay() {
        assert_eq!(batch_delay(None), DEFAULT_BATCH_DELAY);
        assert_eq!(batch_delay(Some("200")), Duration::from_millis(200));
        assert_eq!(batch_delay(Some(" 50 ")), Duration::from_millis(50));
        assert_eq!(batch_delay(Some("soon")), DEFAULT_BATCH_DELAY);
    }

    #[test]
    fn protocol_names_parse() {
        assert_eq!(
            "grpc".parse::<OtlpProtocol>().ok(),
            Some(OtlpProtocol::Grpc)
        );
        assert_eq!(
            "http/protobuf".parse::<OtlpProtocol>().ok(),
            Some(OtlpProtocol::HttpProtobuf)
        );
        assert_eq!(
            "http/json".parse::<OtlpProtocol>().ok(),
            Some(OtlpProtocol::HttpJson)
        );
        assert!("thrift".parse::<OtlpProtocol>().is_err());
    }

    #[test]
    fn flag_endpoint_gets_the_signal_path_for_http_only() {
        let settings = OtlpSettings {
            endpoint: Some("http://127.0.0.1:4318/".into()),
            protocol: None,
        };
        assert_eq!(
            settings
                .explicit_endpoint(OtlpProtocol::HttpProtobuf)
                .as_deref(),
            Some("http://127.0.0.1:4318/v1/traces")
        );
        assert_eq!(
            settings.explicit_endpoint(OtlpProtocol::Grpc).as_deref(),
            Some("http://127.0.0.1:4318/")
        );
    }

    use opentelemetry_sdk::error::OTelSdkError;

    #[derive(Debug)]
    struct Failing;

    impl SpanExporter for Failing {
        async fn export(&self, _batch: Vec<SpanData>) -> OTelSdkResult {
            Err(OTelSdkError::InternalFailure("collector down".into()))
        }
    }

    #[test]
    fn spans_a_collector_refuses_are_counted_as_dropped() {
        use opentelemetry::trace::{Span as _, Tracer as _, TracerProvider as _};
        let stats = ExportStats::new("test");
        let processor =
            CountingProcessor::new(Failing, Arc::clone(&stats), Duration::from_millis(10));
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
            .with_span_processor(processor)
            .build();
        let tracer = provider.tracer("test");
        for _ in 0..5 {
            tracer.start("span").end();
        }
        let _ = provider.force_flush();
        assert_eq!(stats.dropped(), 5);
        assert_eq!(stats.exported(), 0);
        assert_eq!(stats.pending(), 0);
        let _ = provider.shutdown();
    }
}
