//! The local trace store: spans as OTLP/JSON lines on disk.
//!
//! Each line of a store file is one OTLP/JSON `TracesData` object, the
//! encoding the OpenTelemetry Collector's file exporter writes, so any
//! OTLP/JSON consumer can read it. The encoding is `opentelemetry-proto`'s
//! own serde implementation.
//!
//! Each server process writes its own file, `spans-<unix-ms>-<pid>.jsonl`,
//! created on the first export, so several processes can share one store
//! without interleaving lines.

use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::trace::v1::TracesData;
use opentelemetry_proto::transform::common::tonic::ResourceAttributesWithSchema;
use opentelemetry_proto::transform::trace::tonic::group_spans_by_resource_and_scope;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{SpanData, SpanExporter};

/// File name extension of store files.
pub const STORE_FILE_EXTENSION: &str = "jsonl";

/// A span exporter that appends OTLP/JSON lines to a file in a directory.
#[derive(Debug)]
pub struct LocalStoreExporter {
    dir: PathBuf,
    file_name: String,
    resource: ResourceAttributesWithSchema,
    writer: Mutex<Option<BufWriter<File>>>,
}

impl LocalStoreExporter {
    /// An exporter writing under `dir`, which is created now if missing so
    /// that a bad path is reported at start-up, not at the first export.
    pub fn new(dir: impl Into<PathBuf>) -> std::io::Result<Self> {
        let dir = dir.into();
        fs::create_dir_all(&dir)?;
        let millis = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or_default();
        Ok(Self {
            file_name: format!(
                "spans-{millis}-{}.{STORE_FILE_EXTENSION}",
                std::process::id()
            ),
            dir,
            resource: ResourceAttributesWithSchema::default(),
            writer: Mutex::new(None),
        })
    }

    /// The file this exporter writes (it exists once a span was exported).
    pub fn path(&self) -> PathBuf {
        self.dir.join(&self.file_name)
    }

    /// The store directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn write_batch(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        if batch.is_empty() {
            return Ok(());
        }
        let data = TracesData {
            resource_spans: group_spans_by_resource_and_scope(batch, &self.resource),
        };
        let mut line = serde_json::to_vec(&data)
            .map_err(|e| OTelSdkError::InternalFailure(format!("encoding spans: {e}")))?;
        line.push(b'\n');

        let mut guard = self
            .writer
            .lock()
            .map_err(|_| OTelSdkError::InternalFailure("store writer poisoned".into()))?;
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

    fn sync(&self) -> OTelSdkResult {
        let mut guard = self
            .writer
            .lock()
            .map_err(|_| OTelSdkError::InternalFailure("store writer poisoned".into()))?;
        if let Some(writer) = guard.as_mut() {
            writer
                .flush()
                .and_then(|()| writer.get_ref().sync_data())
                .map_err(|e| OTelSdkError::InternalFailure(format!("syncing store: {e}")))?;
        }
        Ok(())
    }
}

impl SpanExporter for LocalStoreExporter {
    fn export(&self, batch: Vec<SpanData>) -> impl Future<Output = OTelSdkResult> + Send {
        std::future::ready(self.write_batch(batch))
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.sync()
    }

    fn shutdown_with_timeout(&self, _timeout: std::time::Duration) -> OTelSdkResult {
        self.sync()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.resource = resource.into();
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
    use opentelemetry::trace::{Span as _, SpanKind, Tracer as _, TracerProvider as _};
    use opentelemetry_sdk::trace::SdkTracerProvider;

    #[test]
    fn exported_spans_are_otlp_json_lines() {
        let dir = tempfile::tempdir().expect("tempdir");
        let exporter = LocalStoreExporter::new(dir.path().join("traces")).expect("exporter");
        let path = exporter.path();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter)
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
        let exporter = LocalStoreExporter::new(dir.path()).expect("exporter");
        assert!(!exporter.path().exists());
    }
}
