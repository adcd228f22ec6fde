//! Process-wide telemetry: the tracer provider, its exporters, the
//! `tracing` subscriber that feeds it and writes logs, and (with OTLP
//! export) the meter provider (see [`crate::metrics`]).
//!
//! Two independent filters apply:
//! - logs go to stderr, filtered by `RUST_LOG` (default `info`);
//! - spans go to OpenTelemetry when they are Skein's own (targets starting
//!   with `skein`) at INFO or above, whatever `RUST_LOG` says. Dependencies'
//!   spans are never exported, and silencing logs never breaks a trace.
//!
//! A tracer provider always exists, even with export turned off, so spans
//! always have valid contexts that keep propagating to core and to clients.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use opentelemetry::metrics::MeterProvider as _;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::SdkMeterProvider;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Level;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::{EnvFilter, FilterExt, Targets, filter_fn};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::export::{ExportSetupError, ExportStats, OtlpDestination, OtlpSettings, otlp_processor};
use crate::local_store::{LocalStore, LocalStoreProcessor, Retention};
use crate::metrics::{
    self, Instruments, MetricsHealth, metrics_disabled_by_env, otlp_meter_provider,
};
use crate::names::value;

/// The log target silenced unless the log filter names it.
const QUIET_TARGET: &str = "rustls_platform_verifier";

/// Instrumentation scope name of every Skein span.
pub const SCOPE_NAME: &str = "skein";

/// What to set up.
#[derive(Clone, Debug)]
pub struct TelemetryConfig {
    /// `service.name` on the resource.
    pub service_name: String,
    /// The local store directory; `None` writes no local store.
    pub trace_dir: Option<PathBuf>,
    /// How much of the local store is kept.
    pub retention: Retention,
    /// The log filter (`RUST_LOG` syntax); `None` means `info`.
    pub log_filter: Option<String>,
    /// OTLP export; on when an endpoint is set by flag or environment.
    /// Metrics go over OTLP too, unless `OTEL_METRICS_EXPORTER=none`.
    pub otlp: OtlpSettings,
    /// Export nothing at all (`OTEL_SDK_DISABLED=true`).
    pub disabled: bool,
    /// Baggage keys copied onto every span as attributes (`[otel]
    /// baggage_attributes`); `None` copies none.
    pub baggage_attributes: Option<crate::baggage::BaggageAttributes>,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            service_name: value::SERVICE_NAME.to_owned(),
            trace_dir: None,
            retention: Retention::default(),
            log_filter: None,
            otlp: OtlpSettings::default(),
            disabled: false,
            baggage_attributes: None,
        }
    }
}

/// Why telemetry could not start.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The store directory could not be created.
    #[error("cannot create trace directory {path}: {source}")]
    TraceDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// `RUST_LOG` did not parse.
    #[error("invalid log filter {filter:?}: {reason}")]
    LogFilter {
        /// The filter text.
        filter: String,
        /// Why it is invalid.
        reason: String,
    },
    /// OTLP export could not be set up.
    #[error(transparent)]
    Export(#[from] ExportSetupError),
    /// A global subscriber was already installed.
    #[error("a tracing subscriber is already installed: {0}")]
    AlreadyInstalled(String),
}

/// True when `OTEL_SDK_DISABLED` asks for no export at all.
pub fn sdk_disabled_by_env() -> bool {
    std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.trim().eq_ignore_ascii_case("true"))
}

/// Running telemetry. Call [`Telemetry::shutdown`] before exit, outside any
/// async runtime, so every finished span reaches its exporter.
#[derive(Debug)]
pub struct Telemetry {
    provider: SdkTracerProvider,
    meter_provider: Option<SdkMeterProvider>,
    metrics_health: Option<MetricsHealth>,
    store_file: Option<PathBuf>,
    otlp: Option<OtlpDestination>,
    pipelines: Vec<Arc<ExportStats>>,
}

impl Telemetry {
    /// The local store file this process writes, when the store is on.
    pub fn store_file(&self) -> Option<&PathBuf> {
        self.store_file.as_ref()
    }

    /// One sentence saying where this process's spans go: the local
    /// store's directory, the OTLP endpoint and protocol, or nowhere.
    pub fn destinations(&self) -> String {
        let store = self.store_file.as_ref().map(|file| {
            let dir = file.parent().unwrap_or(file.as_path());
            format!("the local trace store in {}", dir.display())
        });
        let otlp = self
            .otlp
            .as_ref()
            .map(|d| format!("OTLP {} at {}", d.protocol, d.endpoint));
        match (store, otlp) {
            (Some(store), Some(otlp)) => format!("spans go to {store} and to {otlp}"),
            (Some(store), None) => {
                format!("spans go to {store}; OTLP export is off (no endpoint set)")
            }
            (None, Some(otlp)) => format!("spans go to {otlp}; the local trace store is off"),
            (None, None) => {
                "spans are not recorded: the local trace store and OTLP export are both off"
                    .to_owned()
            }
        }
    }

    /// Flushes finished spans and stops the exporters, waiting at most
    /// `timeout`; then exports the metrics' final values (after the spans,
    /// so `skein.spans.dropped` is final too) and stops metric export.
    ///
    /// The batch processor exports on its own thread; this call blocks, so
    /// make it from a plain thread (after the runtime), never from a tokio
    /// worker.
    ///
    /// Logs one line per export pipeline that lost spans, with the count,
    /// and one per pipeline whose retention deleted spans it had written.
    pub fn shutdown(self, timeout: Duration) {
        let deadline = std::time::Instant::now() + timeout;
        if let Err(err) = self.provider.shutdown_with_timeout(timeout) {
            tracing::warn!(%err, "stopping the span exporters failed");
        }
        for stats in &self.pipelines {
            // Spans still pending after the timeout are lost too.
            let lost = stats.dropped() + stats.pending();
            if lost > 0 {
                tracing::warn!(
                    pipeline = stats.name(),
                    dropped = lost,
                    deleted_by_retention = stats.deleted(),
                    exported = stats.exported(),
                    "spans were dropped: the destination was unreachable, too slow, or shutdown ran out of time"
                );
            } else if stats.deleted() > 0 {
                tracing::info!(
                    pipeline = stats.name(),
                    dropped = 0,
                    deleted_by_retention = stats.deleted(),
                    exported = stats.exported(),
                    "spans were deleted by retention: the store's size or age limits deleted older files"
                );
            } else {
                tracing::debug!(
                    pipeline = stats.name(),
                    exported = stats.exported(),
                    "all spans exported"
                );
            }
        }
        // Metrics last, so the final export carries the final dropped-span
        // counts. The SDK's metric reader ignores shutdown timeouts (it
        // waits a fixed 5 s), so it runs on a thread of its own and is
        // abandoned when what remains of the budget runs out.
        if let Some(meters) = self.meter_provider {
            let budget = deadline
                .saturating_duration_since(std::time::Instant::now())
                .max(Duration::from_millis(250));
            let (done_tx, done_rx) = std::sync::mpsc::channel();
            let spawned = std::thread::Builder::new()
                .name("skein-metrics-shutdown".into())
                .spawn(move || {
                    let _ = done_tx.send(meters.shutdown());
                });
            match spawned.map(|_| done_rx.recv_timeout(budget)) {
                Ok(Ok(Ok(()))) => {}
                // A backend that refuses metrics was named once already.
                Ok(Ok(Err(_)))
                    if self
                        .metrics_health
                        .as_ref()
                        .is_some_and(MetricsHealth::refused) => {}
                Ok(Ok(Err(err))) => tracing::warn!(%err, "exporting the final metrics failed"),
                Ok(Err(_)) => tracing::warn!(
                    ?budget,
                    "the final metrics export did not finish within the shutdown timeout; abandoning it"
                ),
                Err(err) => tracing::warn!(%err, "could not start the final metrics export"),
            }
        }
    }

    /// Each export pipeline's counters.
    pub fn pipelines(&self) -> &[Arc<ExportStats>] {
        &self.pipelines
    }
}

/// The stderr log filter when `RUST_LOG` is unset: Skein's own crates
/// (every target starting with `skein`) at INFO, dependencies at WARN, so
/// their chatter (rmcp's per-connection INFO lines) stays at debug level
/// unless `RUST_LOG` asks for it.
pub const DEFAULT_LOG_FILTER: &str = "warn,skein=info";

/// Builds the tracer provider and installs the global `tracing`
/// subscriber.
pub fn init(config: TelemetryConfig) -> Result<Telemetry, TelemetryError> {
    let filter_text = config
        .log_filter
        .unwrap_or_else(|| DEFAULT_LOG_FILTER.to_owned());
    // rustls-platform-verifier logs an ERROR per refused certificate, so
    // per OTLP export attempt against an untrusted collector (and per
    // model request): the failure reaches its caller, and OTLP export
    // reports it once per episode (`export::ExportHealth`). Unless the
    // filter names it, it is silenced.
    let effective_filter = if filter_text.contains(QUIET_TARGET) {
        filter_text.clone()
    } else {
        format!("{filter_text},{QUIET_TARGET}=off")
    };
    let log_filter =
        EnvFilter::builder()
            .parse(&effective_filter)
            .map_err(|e| TelemetryError::LogFilter {
                filter: filter_text.clone(),
                reason: e.to_string(),
            })?;

    // The SDK reads OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES and
    // OTEL_TRACES_SAMPLER(_ARG) itself (default sampler: parent-based
    // always-on); the service name is only defaulted here.
    let mut resource = Resource::builder();
    if !service_name_from_env() {
        resource = resource.with_service_name(config.service_name);
    }
    let resource = resource.build();
    let mut builder = SdkTracerProvider::builder().with_resource(resource.clone());
    // First, so the attributes are on a span before any pipeline sees it
    // (the local store's in-progress record is written on start).
    if let Some(processor) = config.baggage_attributes {
        builder = builder.with_span_processor(processor);
    }

    let mut store_file = None;
    let mut otlp = None;
    let mut pipelines = Vec::new();
    let mut meter_provider = None;
    let mut metrics_health = None;
    if !config.disabled {
        if let Some(dir) = config.trace_dir {
            let stats = ExportStats::new("local store");
            let store = LocalStore::with_retention(&dir, Arc::clone(&stats), config.retention)
                .map_err(|source| TelemetryError::TraceDir {
                    path: dir.clone(),
                    source,
                })?;
            store_file = Some(store.path());
            builder = builder.with_span_processor(LocalStoreProcessor::new(store));
            pipelines.push(stats);
        }
        if config.otlp.enabled() {
            let (processor, stats, destination) = otlp_processor(&config.otlp)?;
            otlp = Some(destination);
            builder = builder.with_span_processor(processor);
            pipelines.push(stats);
            if !metrics_disabled_by_env() {
                let (provider, health) = otlp_meter_provider(&config.otlp, resource)?;
                meter_provider = Some(provider);
                metrics_health = Some(health);
            }
        }
    }
    let provider = builder.build();
    let tracer = provider.tracer(SCOPE_NAME);
    if !crate::rpc::install_request_tracer(tracer.clone()) {
        return Err(TelemetryError::AlreadyInstalled(
            "request spans already had a tracer".to_owned(),
        ));
    }

    let otel_layer = otel_layer(tracer);
    // The log layer sees events only, never spans: formatting every span's
    // fields for a log line that may never come would cost more than the
    // span itself. Each log line carries its own fields instead.
    let fmt_layer = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_filter(filter_fn(|meta| !meta.is_span()).and(log_filter));

    tracing_subscriber::registry()
        .with(otel_layer)
        .with(fmt_layer)
        .try_init()
        .map_err(|e| TelemetryError::AlreadyInstalled(e.to_string()))?;
    // Dependencies that log through the `log` crate (tungstenite...) reach
    // the log layer at WARN and above only: below that, their records are
    // not even built, so the bridge costs nothing on the hot path.
    tracing_log::LogTracer::builder()
        .with_max_level(tracing_log::log::LevelFilter::Warn)
        .init()
        .map_err(|e| TelemetryError::AlreadyInstalled(e.to_string()))?;

    // Without a meter provider the instruments stay uninstalled and
    // recording does nothing.
    if let Some(meter_provider) = &meter_provider {
        metrics::install(Instruments::new(
            &meter_provider.meter(SCOPE_NAME),
            pipelines.clone(),
        ));
        opentelemetry::global::set_meter_provider(meter_provider.clone());
    }

    Ok(Telemetry {
        provider,
        meter_provider,
        metrics_health,
        store_file,
        otlp,
        pipelines,
    })
}

/// The layer that turns `tracing` spans into OTel spans: only Skein's own
/// (targets starting with `skein`) at INFO or above, whatever `RUST_LOG`
/// says, and without the layer's default extras (its OS-thread `thread.id`
/// would collide with Skein's agent `thread.id`).
fn otel_layer<S>(tracer: opentelemetry_sdk::trace::SdkTracer) -> impl Layer<S>
where
    S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
{
    tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_threads(false)
        .with_location(false)
        .with_target(false)
        .with_tracked_inactivity(false)
        // Skein reads span contexts through the tracing span, never through
        // `Context::current()`: attaching the context on every enter (every
        // poll of an instrumented future) would cost without use, and would
        // start spans early.
        .with_context_activation(false)
        .with_filter(Targets::new().with_target("skein", Level::INFO))
}

/// True when the environment names the service, through
/// `OTEL_SERVICE_NAME` or `service.name` in `OTEL_RESOURCE_ATTRIBUTES`.
fn service_name_from_env() -> bool {
    let named = |v: &String| !v.trim().is_empty();
    std::env::var("OTEL_SERVICE_NAME").is_ok_and(|v| named(&v))
        || std::env::var("OTEL_RESOURCE_ATTRIBUTES").is_ok_and(|attrs| {
            attrs.split(',').any(|kv| {
                kv.split_once('=')
                    .is_some_and(|(k, v)| k.trim() == "service.name" && !v.trim().is_empty())
            })
        })
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_default_log_filter_keeps_dependencies_chatter_at_debug() {
        use std::io::Write;
        use std::sync::{Arc, Mutex};

        #[derive(Clone, Default)]
        struct Buf(Arc<Mutex<Vec<u8>>>);
        impl Write for Buf {
            fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
                self.0
                    .lock()
                    .map_err(|_| std::io::Error::other("poisoned"))?
                    .extend_from_slice(data);
                Ok(data.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buf = Buf::default();
        let writer = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_env_filter(EnvFilter::new(DEFAULT_LOG_FILTER))
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(target: "rmcp::service", "serve finished");
            tracing::warn!(target: "rmcp::service", "rmcp trouble");
            tracing::info!(target: "skein_core::mcp", "skein news");
            tracing::info!(target: "skein", "the binary's news");
        });
        let text = String::from_utf8(buf.0.lock().expect("lock").clone()).expect("UTF-8");
        assert!(!text.contains("serve finished"), "{text}");
        assert!(text.contains("rmcp trouble"), "{text}");
        assert!(text.contains("skein news"), "{text}");
        assert!(text.contains("the binary's news"), "{text}");
    }

    use super::*;
    use opentelemetry_sdk::trace::InMemorySpanExporter;

    #[test]
    fn only_skeins_own_spans_at_info_or_above_become_otel_spans() {
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        let subscriber = tracing_subscriber::registry()
            .with(otel_layer(provider.tracer("test")))
            // A log layer as verbose as RUST_LOG=trace keeps every span
            // alive, as in a real process.
            .with(tracing_subscriber::fmt::layer().with_writer(std::io::sink));
        tracing::subscriber::with_default(subscriber, || {
            drop(tracing::trace_span!(target: "h2::proto::connection", "Connection"));
            drop(tracing::info_span!(target: "hyper_util::client", "connect"));
            drop(tracing::debug_span!(target: "skein_core::turn", "debug detail"));
            drop(tracing::info_span!(target: "skein_core::turn", "turn"));
        });
        let names: Vec<String> = exporter
            .get_finished_spans()
            .expect("spans")
            .into_iter()
            .map(|s| s.name.into_owned())
            .collect();
        assert_eq!(names, vec!["turn".to_owned()]);
    }
}
