//! Test support: spans captured in memory. Compiled for tests only.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use tracing_subscriber::layer::SubscriberExt as _;

/// A subscriber, installed for this thread, exporting finished spans to
/// memory. Tests run on a current-thread runtime, so spawned tasks report
/// here too.
///
/// Every test that creates spans installs one, even when it does not look
/// at them: `tracing` caches each callsite's interest across threads, and a
/// callsite first hit on a thread without a subscriber could stay disabled
/// for the tests that do look.
pub(crate) struct Capture {
    provider: SdkTracerProvider,
    exporter: InMemorySpanExporter,
    _guard: tracing::subscriber::DefaultGuard,
}

impl Capture {
    /// Installs the subscriber until the capture is dropped.
    pub(crate) fn new() -> Self {
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        let layer = tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("test"))
            .with_threads(false);
        let guard = tracing::subscriber::set_default(tracing_subscriber::registry().with(layer));
        Self {
            provider,
            exporter,
            _guard: guard,
        }
    }

    /// Every span ended so far.
    pub(crate) fn spans(&self) -> Vec<SpanData> {
        let _ = self.provider.force_flush();
        self.exporter.get_finished_spans().expect("finished spans")
    }

    /// The ended spans named `name`.
    pub(crate) fn named(&self, name: &str) -> Vec<SpanData> {
        self.spans()
            .into_iter()
            .filter(|s| s.name == name)
            .collect()
    }

    /// The one ended span named `name`.
    pub(crate) fn one(&self, name: &str) -> SpanData {
        let mut found = self.named(name);
        assert_eq!(found.len(), 1, "one span named {name:?}: {found:#?}");
        found.remove(0)
    }
}

/// The value of attribute `key` of `span`, as text.
pub(crate) fn attr(span: &SpanData, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.to_string())
}
