//! The local trace store: spans as OTLP/JSON lines on disk.
//!
//! Each line of a store file is one OTLP/JSON `TracesData` object, the
//! encoding the OpenTelemetry Collector's file exporter writes, so any
//! OTLP/JSON consumer can read it. The encoding is `opentelemetry-proto`'s
//! own serde implementation.
//!
//! Each server process writes its own file, `spans-<unix-ms>-<pid>.jsonl`,
//! created on the first write, so several processes can share one store
//! without interleaving lines.
//!
//! Long-lived agent spans (turns) are visible before they end: when one
//! starts, [`InProgressRecorder`] writes it at once with `endTimeUnixNano`
//! `"0"`. The finished record, written later with the same trace and span
//! ids, supersedes it.

use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use opentelemetry::Context;
use opentelemetry::trace::Span as _;
use opentelemetry_proto::tonic::trace::v1::TracesData;
use opentelemetry_proto::transform::common::tonic::ResourceAttributesWithSchema;
use opentelemetry_proto::transform::trace::tonic::group_spans_by_resource_and_scope;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{Span, SpanData, SpanExporter, SpanProcessor};

use crate::names::attr;

/// File name extension of store files.
pub const STORE_FILE_EXTENSION: &str = "jsonl";

/// This process's file in a store directory.
#[derive(Debug)]
pub struct LocalStore {
    dir: PathBuf,
    file_name: String,
    resource: Mutex<ResourceAttributesWithSchema>,
    writer: Mutex<Option<BufWriter<File>>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Each critical section leaves the data whole, so a poisoned lock is
    // still usable.
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

impl LocalStore {
    /// A store writing under `dir`, which is created now if missing so
    /// that a bad path is reported at start-up, not at the first export.
    pub fn new(dir: impl Into<PathBuf>) -> std::io::Result<Arc<Self>> {
        let dir = dir.into();
        fs::create_dir_all(&dir)?;
        let millis = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or_default();
        Ok(Arc::new(Self {
            file_name: format!(
                "spans-{millis}-{}.{STORE_FILE_EXTENSION}",
                std::process::id()
            ),
            dir,
            resource: Mutex::new(ResourceAttributesWithSchema::default()),
            writer: Mutex::new(None),
        }))
    }

    /// The file this exporter writes (it exists once a span was exported).
    pub fn path(&self) -> PathBuf {
        self.dir.join(&self.file_name)
    }

    /// The store directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Appends `batch` as one line.
    pub fn write_batch(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        if batch.is_empty() {
            return Ok(());
        }
        let data = TracesData {
            resource_spans: group_spans_by_resource_and_scope(batch, &lock(&self.resource)),
        };
        let mut line = serde_json::to_vec(&data)
            .map_err(|e| OTelSdkError::InternalFailure(format!("encoding spans: {e}")))?;
        line.push(b'\n');

        let mut guard = lock(&self.writer);
        if guard.is_none() {
            let path = self.path();
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(|e| {
                    OTelSdkError::InternalFailure(format!("opening {}: {e}", path.display()))
                })?;
            *guard = Some(BufWriter::new(file));
        }
        let Some(writer) = guard.as_mut() else {
            return Err(OTelSdkError::InternalFailure("store writer missing".into()));
        };
        // One whole line per batch, flushed at once, so a reader following
        // the file never sees a batch half-written for long.
        writer
            .write_all(&line)
            .and_then(|()| writer.flush())
            .map_err(|e| {
                OTelSdkError::InternalFailure(format!("writing {}: {e}", self.path().display()))
            })
    }

    /// Flushes and syncs the file.
    pub fn sync(&self) -> OTelSdkResult {
        let mut guard = lock(&self.writer);
        if let Some(writer) = guard.as_mut() {
            writer
                .flush()
                .and_then(|()| writer.get_ref().sync_data())
                .map_err(|e| OTelSdkError::InternalFailure(format!("syncing store: {e}")))?;
        }
        Ok(())
    }
}

/// Exports finished spans to a [`LocalStore`].
#[derive(Debug)]
pub struct LocalStoreExporter {
    store: Arc<LocalStore>,
}

impl LocalStoreExporter {
    /// An exporter into `store`.
    pub fn new(store: Arc<LocalStore>) -> Self {
        Self { store }
    }
}

impl SpanExporter for LocalStoreExporter {
    fn export(&self, batch: Vec<SpanData>) -> impl Future<Output = OTelSdkResult> + Send {
        std::future::ready(self.store.write_batch(batch))
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.store.sync()
    }

    fn shutdown_with_timeout(&self, _timeout: std::time::Duration) -> OTelSdkResult {
        self.store.sync()
    }

    fn set_resource(&mut self, resource: &Resource) {
        *lock(&self.store.resource) = resource.into();
    }
}

/// Writes an in-progress record of each agent span (`gen_ai.operation.name
/// = invoke_agent`, i.e. a turn) to the store as it starts.
#[derive(Debug)]
pub struct InProgressRecorder {
    store: Arc<LocalStore>,
}

impl InProgressRecorder {
    /// A recorder writing into `store`.
    pub fn new(store: Arc<LocalStore>) -> Self {
        Self { store }
    }
}

/// True for the spans that get an in-progress record.
fn is_long_lived(data: &SpanData) -> bool {
    data.attributes.iter().any(|kv| {
        kv.key.as_str() == attr::GEN_AI_OPERATION_NAME && kv.value.as_str() == "invoke_agent"
    })
}

impl SpanProcessor for InProgressRecorder {
    fn on_start(&self, span: &mut Span, _cx: &Context) {
        if !span.span_context().is_sampled() {
            return;
        }
        let Some(mut data) = span.exported_data() else {
            return;
        };
        if !is_long_lived(&data) {
            return;
        }
        // An end time of zero marks the record as in progress.
        data.end_time = UNIX_EPOCH;
        if let Err(err) = self.store.write_batch(vec![data]) {
            tracing::debug!(%err, "could not write an in-progress span record");
        }
    }

    fn on_end(&self, _span: SpanData) {}

    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: std::time::Duration) -> OTelSdkResult {
        Ok(())
    }
}

/// Lists the store files under `dir`, oldest name first.
pub fn store_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == STORE_FILE_EXTENSION))
        .collect();
    files.sort();
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::{SpanKind, Tracer as _, TracerProvider as _};
    use opentelemetry_sdk::trace::SdkTracerProvider;

    #[test]
    fn exported_spans_are_otlp_json_lines() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = LocalStore::new(dir.path().join("traces")).expect("store");
        let path = store.path();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(LocalStoreExporter::new(store))
            .with_resource(Resource::builder().with_service_name("svc").build())
            .build();
        let tracer = provider.tracer("test");
        let mut span = tracer
            .span_builder("hello")
            .with_kind(SpanKind::Server)
            .with_attributes([opentelemetry::KeyValue::new("n", 7_i64)])
            .start(&tracer);
        span.end();
        provider.shutdown().expect("shutdown");

        let text = fs::read_to_string(&path).expect("store file");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 1);
        let v: serde_json::Value = serde_json::from_str(lines[0]).expect("json");
        let rs = &v["resourceSpans"][0];
        assert_eq!(
            rs["resource"]["attributes"]
                .as_array()
                .expect("attrs")
                .iter()
                .find(|a| a["key"] == "service.name")
                .expect("service.name")["value"]["stringValue"],
            "svc"
        );
        let span = &rs["scopeSpans"][0]["spans"][0];
        assert_eq!(span["name"], "hello");
        assert_eq!(span["kind"], 2);
        assert_eq!(span["traceId"].as_str().expect("hex").len(), 32);
        assert_eq!(span["spanId"].as_str().expect("hex").len(), 16);
        assert!(span["startTimeUnixNano"].is_string());
        assert_eq!(span["attributes"][0]["value"]["intValue"], "7");
        assert_eq!(
            store_files(&dir.path().join("traces")).expect("list"),
            vec![path]
        );
    }

    #[test]
    fn no_file_is_created_before_a_span_is_exported() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = LocalStore::new(dir.path()).expect("store");
        assert!(!store.path().exists());
    }

    #[test]
    fn agent_spans_are_recorded_in_progress_when_they_start() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = LocalStore::new(dir.path()).expect("store");
        let provider = SdkTracerProvider::builder()
            .with_span_processor(InProgressRecorder::new(Arc::clone(&store)))
            .with_simple_exporter(LocalStoreExporter::new(Arc::clone(&store)))
            .build();
        let tracer = provider.tracer("test");
        let read = || -> Vec<serde_json::Value> {
            fs::read_to_string(store.path())
                .unwrap_or_default()
                .lines()
                .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("json"))
                .map(|v| v["resourceSpans"][0]["scopeSpans"][0]["spans"][0].clone())
                .collect()
        };
        let mut turn = tracer
            .span_builder("invoke_agent skein")
            .with_attributes([opentelemetry::KeyValue::new(
                attr::GEN_AI_OPERATION_NAME,
                "invoke_agent",
            )])
            .start(&tracer);
        tracer.start("short").end();
        let written = read();
        assert_eq!(written.len(), 2, "in-progress turn and finished short span");
        assert_eq!(written[0]["name"], "invoke_agent skein");
        assert_eq!(written[0]["endTimeUnixNano"], "0");
        assert_eq!(written[1]["name"], "short");

        turn.end();
        let written = read();
        assert_eq!(written.len(), 3);
        assert_eq!(written[2]["spanId"], written[0]["spanId"]);
        assert_ne!(written[2]["endTimeUnixNano"], "0");
        provider.shutdown().expect("shutdown");
    }
}
