//! Process-wide telemetry: the tracer provider, its exporters, and the
//! `tracing` subscriber that feeds it and writes logs.
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
use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracerProvider,
};
use tracing::Level;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::{EnvFilter, filter_fn};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::local_store::LocalStoreExporter;
use crate::names::value;

/// Instrumentation scope name of every Skein span.
pub const SCOPE_NAME: &str = "skein";

/// What to set up.
#[derive(Clone, Debug)]
pub struct TelemetryConfig {
    /// `service.name` on the resource.
    pub service_name: String,
    /// The local store directory; `None` writes no local store.
    pub trace_dir: Option<PathBuf>,
    /// The log filter (`RUST_LOG` syntax); `None` means `info`.
    pub log_filter: Option<String>,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            service_name: value::SERVICE_NAME.to_owned(),
            trace_dir: None,
            log_filter: None,
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
    store_file: Option<PathBuf>,
}

impl Telemetry {
    /// The local store file this process writes, when the store is on.
    pub fn store_file(&self) -> Option<&PathBuf> {
        self.store_file.as_ref()
    }

    /// Flushes finished spans and stops the exporters, waiting at most
    /// `timeout`.
    ///
    /// The batch processor exports on its own thread; this call blocks, so
    /// make it from a plain thread (after the runtime), never from a tokio
    /// worker.
    pub fn shutdown(self, timeout: Duration) {
        if let Err(err) = self.provider.force_flush() {
            tracing::warn!(%err, "flushing spans failed");
        }
        if let Err(err) = self.provider.shutdown_with_timeout(timeout) {
            tracing::warn!(%err, "stopping the span exporter failed");
        }
    }
}

/// Builds the tracer provider and installs the global `tracing`
/// subscriber.
pub fn init(config: TelemetryConfig) -> Result<Telemetry, TelemetryError> {
    let filter_text = config.log_filter.unwrap_or_else(|| "info".to_owned());
    let log_filter =
        EnvFilter::builder()
            .parse(&filter_text)
            .map_err(|e| TelemetryError::LogFilter {
                filter: filter_text.clone(),
                reason: e.to_string(),
            })?;

    let resource = Resource::builder()
        .with_service_name(config.service_name)
        .build();
    let mut builder = SdkTracerProvider::builder()
        .with_resource(resource)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::AlwaysOn)));

    let mut store_file = None;
    if let Some(dir) = config.trace_dir {
        let exporter =
            LocalStoreExporter::new(&dir).map_err(|source| TelemetryError::TraceDir {
                path: dir.clone(),
                source,
            })?;
        store_file = Some(exporter.path());
        let processor = BatchSpanProcessor::builder(exporter)
            .with_batch_config(
                BatchConfigBuilder::default()
                    .with_scheduled_delay(Duration::from_millis(500))
                    .build(),
            )
            .build();
        builder = builder.with_span_processor(processor);
    }
    let provider = builder.build();
    let tracer = provider.tracer(SCOPE_NAME);

    let otel_layer = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_threads(false)
        .with_location(false)
        .with_target(false)
        .with_tracked_inactivity(false)
        .with_filter(filter_fn(|meta| {
            meta.target().starts_with("skein") && *meta.level() <= Level::INFO
        }));
    let fmt_layer = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_filter(log_filter);

    tracing_subscriber::registry()
        .with(otel_layer)
        .with(fmt_layer)
        .try_init()
        .map_err(|e| TelemetryError::AlreadyInstalled(e.to_string()))?;

    Ok(Telemetry {
        provider,
        store_file,
    })
}
