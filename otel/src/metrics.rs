//! Metrics, exported over OTLP next to the spans.
//!
//! When OTLP export is on, [`crate::telemetry::init`] builds a meter
//! provider with a periodic reader ([`otlp_meter_provider`]) and installs
//! Skein's instruments once ([`install`]). The `record_*` functions are what
//! the code being measured calls; until instruments are installed (export
//! off, or in unit tests) they return at once, so recording costs one
//! atomic load.
//!
//! Instruments (names in [`crate::names::metric`]):
//! - `rpc.server.call.duration` (s): `rpc.system.name`, `rpc.method`,
//!   `error.type` (the JSON-RPC error code) on errors;
//! - `gen_ai.client.operation.duration` (s): `gen_ai.operation.name`,
//!   `gen_ai.provider.name`, `gen_ai.request.model`, `error.type` on
//!   failure;
//! - `gen_ai.client.token.usage` ({token}): the same plus
//!   `gen_ai.token.type` (`input` / `output`);
//! - `skein.turn.duration` (s): `turn.kind`, `turn.status`;
//! - `skein.spans.dropped`: observable counter per export `pipeline`;
//! - `skein.spans.deleted`: observable counter per export `pipeline`: spans
//!   written, then deleted by the local store's retention.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Histogram, Meter};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
use skein_protocol::{TokenUsage, TurnKind, TurnStatus};

use crate::export::{
    ExportHealth, ExportSetupError, ExportStats, OtlpProtocol, OtlpSettings, OwnRuntimeExporter,
    ReportingMetricExporter, configure_grpc, configure_http,
};
use crate::names::{attr, metric, value};
use crate::otlp_connection::{Connection, Signal};

/// Bucket boundaries (s) of `rpc.server.call.duration`, as the OTel RPC
/// and HTTP conventions advise.
const RPC_DURATION_BOUNDARIES: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];
/// Bucket boundaries (s) of `gen_ai.client.operation.duration`, as the OTel
/// GenAI conventions advise.
const MODEL_DURATION_BOUNDARIES: [f64; 14] = [
    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
];
/// Bucket boundaries of `gen_ai.client.token.usage`, as the OTel GenAI
/// conventions advise.
const TOKEN_BOUNDARIES: [f64; 14] = [
    1.0,
    4.0,
    16.0,
    64.0,
    256.0,
    1024.0,
    4096.0,
    16384.0,
    65536.0,
    262_144.0,
    1_048_576.0,
    4_194_304.0,
    16_777_216.0,
    67_108_864.0,
];
/// Bucket boundaries (s) of `skein.turn.duration`: turns run from
/// milliseconds to many minutes.
const TURN_DURATION_BOUNDARIES: [f64; 14] = [
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0,
];

/// Skein's metric instruments, created once from one meter.
#[derive(Debug)]
pub struct Instruments {
    rpc_call_duration: Histogram<f64>,
    model_call_duration: Histogram<f64>,
    time_to_first_chunk: Histogram<f64>,
    token_usage: Histogram<u64>,
    turn_duration: Histogram<f64>,
}

/// One finished model call, as [`record_model_call`] takes it.
#[derive(Clone, Copy, Debug)]
pub struct ModelCall<'a> {
    /// `gen_ai.provider.name`: the provider's well-known name (`openai`),
    /// not its config table's id.
    pub provider: &'a str,
    /// `gen_ai.request.model`.
    pub model: &'a str,
    /// How long the call took.
    pub duration: Duration,
    /// `error.type` when the call did not complete (a low-cardinality
    /// class, never a message).
    pub error_type: Option<&'a str>,
    /// The tokens of a completed call.
    pub usage: Option<TokenUsage>,
    /// Time to the first streamed chunk, when one arrived.
    pub time_to_first_chunk: Option<Duration>,
}

impl Instruments {
    /// Creates every instrument from `meter`. `skein.spans.dropped` reads
    /// the `pipelines`' counters at each collection.
    pub fn new(meter: &Meter, pipelines: Vec<Arc<ExportStats>>) -> Self {
        let rpc_call_duration = rpc_call_duration_histogram(meter);
        let model_call_duration = meter
            .f64_histogram(metric::GEN_AI_CLIENT_OPERATION_DURATION)
            .with_unit("s")
            .with_description("Duration of model calls.")
            .with_boundaries(MODEL_DURATION_BOUNDARIES.to_vec())
            .build();
        let time_to_first_chunk = meter
            .f64_histogram(metric::GEN_AI_CLIENT_TIME_TO_FIRST_CHUNK)
            .with_unit("s")
            .with_description("Time from sending a model request to its first streamed chunk.")
            .with_boundaries(MODEL_DURATION_BOUNDARIES.to_vec())
            .build();
        let token_usage = meter
            .u64_histogram(metric::GEN_AI_CLIENT_TOKEN_USAGE)
            .with_unit("{token}")
            .with_description("Tokens used by completed model calls.")
            .with_boundaries(TOKEN_BOUNDARIES.to_vec())
            .build();
        let turn_duration = meter
            .f64_histogram(metric::TURN_DURATION)
            .with_unit("s")
            .with_description("Duration of agent turns, from start to end.")
            .with_boundaries(TURN_DURATION_BOUNDARIES.to_vec())
            .build();
        // The callbacks keep the counters alive for the provider's life.
        let for_deleted = pipelines.clone();
        meter
            .u64_observable_counter(metric::SPANS_DELETED)
            .with_unit("{span}")
            .with_description("Spans an export pipeline wrote and its retention deleted so far.")
            .with_callback(move |observer| {
                for stats in &for_deleted {
                    observer.observe(
                        stats.deleted(),
                        &[KeyValue::new(attr::PIPELINE, stats.name())],
                    );
                }
            })
            .build();
        meter
            .u64_observable_counter(metric::SPANS_DROPPED)
            .with_unit("{span}")
            .with_description("Spans an export pipeline has dropped so far.")
            .with_callback(move |observer| {
                for stats in &pipelines {
                    observer.observe(
                        stats.dropped(),
                        &[KeyValue::new(attr::PIPELINE, stats.name())],
                    );
                }
            })
            .build();
        Self {
            rpc_call_duration,
            model_call_duration,
            time_to_first_chunk,
            token_usage,
            turn_duration,
        }
    }

    /// Records one JSON-RPC request. `method` is the bounded `rpc.method`
    /// value (the method, or `_OTHER`); `error_code` is the JSON-RPC code
    /// of an error response.
    pub fn record_rpc_call(
        &self,
        method: &'static str,
        error_code: Option<i64>,
        duration: Duration,
    ) {
        record_rpc_call_in(&self.rpc_call_duration, method, error_code, duration);
    }

    /// Records one model call: its duration, and its tokens when it
    /// completed with usage.
    pub fn record_model_call(&self, call: &ModelCall<'_>) {
        let mut attributes = Vec::with_capacity(5);
        attributes.push(KeyValue::new(
            attr::GEN_AI_OPERATION_NAME,
            value::GEN_AI_OPERATION_CHAT,
        ));
        attributes.push(KeyValue::new(
            attr::GEN_AI_PROVIDER_NAME,
            call.provider.to_owned(),
        ));
        attributes.push(KeyValue::new(
            attr::GEN_AI_REQUEST_MODEL,
            call.model.to_owned(),
        ));
        if let Some(error_type) = call.error_type {
            attributes.push(KeyValue::new(attr::ERROR_TYPE, error_type.to_owned()));
        }
        self.model_call_duration
            .record(call.duration.as_secs_f64(), &attributes);
        if let Some(first) = call.time_to_first_chunk {
            self.time_to_first_chunk
                .record(first.as_secs_f64(), &attributes);
        }
        if let Some(usage) = call.usage {
            for (token_type, count) in [
                (value::TOKEN_TYPE_INPUT, usage.input_tokens),
                (value::TOKEN_TYPE_OUTPUT, usage.output_tokens),
            ] {
                attributes.push(KeyValue::new(attr::GEN_AI_TOKEN_TYPE, token_type));
                self.token_usage.record(count, &attributes);
                attributes.pop();
            }
        }
    }

    /// Records one finished turn.
    pub fn record_turn(&self, kind: TurnKind, status: TurnStatus, duration: Duration) {
        self.turn_duration.record(
            duration.as_secs_f64(),
            &[
                KeyValue::new(attr::TURN_KIND, kind.as_str()),
                KeyValue::new(attr::TURN_STATUS, status.as_str()),
            ],
        );
    }
}

static INSTRUMENTS: OnceLock<Instruments> = OnceLock::new();

/// Makes `instruments` the ones the `record_*` functions use. Only the first
/// call counts; it returns false when instruments were already installed.
pub fn install(instruments: Instruments) -> bool {
    INSTRUMENTS.set(instruments).is_ok()
}

/// Creates the `rpc.server.call.duration` histogram from `meter`, with the
/// bucket boundaries the OTel RPC conventions advise. Skein's instruments
/// use it, and so does a server front end that records into its
/// application's own meter provider.
pub fn rpc_call_duration_histogram(meter: &Meter) -> Histogram<f64> {
    meter
        .f64_histogram(metric::RPC_SERVER_CALL_DURATION)
        .with_unit("s")
        .with_description("Duration of inbound JSON-RPC requests, until the response is ready.")
        .with_boundaries(RPC_DURATION_BOUNDARIES.to_vec())
        .build()
}

/// Records one JSON-RPC request in a `rpc.server.call.duration`
/// histogram: `rpc.system.name`, the bounded `rpc.method` (the method, or
/// `_OTHER`), and `error.type` (the JSON-RPC code) for an error response.
pub fn record_rpc_call_in(
    histogram: &Histogram<f64>,
    method: impl Into<opentelemetry::StringValue>,
    error_code: Option<i64>,
    duration: Duration,
) {
    let method: opentelemetry::StringValue = method.into();
    match error_code {
        None => histogram.record(
            duration.as_secs_f64(),
            &[
                KeyValue::new(attr::RPC_SYSTEM_NAME, value::JSONRPC),
                KeyValue::new(attr::RPC_METHOD, method),
            ],
        ),
        Some(code) => histogram.record(
            duration.as_secs_f64(),
            &[
                KeyValue::new(attr::RPC_SYSTEM_NAME, value::JSONRPC),
                KeyValue::new(attr::RPC_METHOD, method),
                KeyValue::new(attr::ERROR_TYPE, code.to_string()),
            ],
        ),
    }
}

/// Records one JSON-RPC request in `rpc.server.call.duration`; see
/// [`Instruments::record_rpc_call`]. A no-op until [`install`].
pub fn record_rpc_call(method: &'static str, error_code: Option<i64>, duration: Duration) {
    if let Some(instruments) = INSTRUMENTS.get() {
        instruments.record_rpc_call(method, error_code, duration);
    }
}

/// Records one model call in `gen_ai.client.operation.duration` and
/// `gen_ai.client.token.usage`. A no-op until [`install`].
pub fn record_model_call(call: &ModelCall<'_>) {
    if let Some(instruments) = INSTRUMENTS.get() {
        instruments.record_model_call(call);
    }
}

/// Records one finished turn in `skein.turn.duration`. A no-op until
/// [`install`].
pub fn record_turn(kind: TurnKind, status: TurnStatus, duration: Duration) {
    if let Some(instruments) = INSTRUMENTS.get() {
        instruments.record_turn(kind, status, duration);
    }
}

/// True when `OTEL_METRICS_EXPORTER=none` turns metric export off.
pub fn metrics_disabled_by_env() -> bool {
    std::env::var("OTEL_METRICS_EXPORTER").is_ok_and(|v| v.trim().eq_ignore_ascii_case("none"))
}

/// Builds a meter provider exporting to the OTLP destination of `settings`,
/// with the protocol the spans use. A flag endpoint gets `/v1/metrics` for
/// the HTTP protocols; without one, the exporter reads
/// `OTEL_EXPORTER_OTLP_METRICS_ENDPOINT` / `OTEL_EXPORTER_OTLP_ENDPOINT`.
/// The periodic reader exports every `OTEL_METRIC_EXPORT_INTERVAL` ms
/// (default 60 s) and once more at shutdown.
pub fn otlp_meter_provider(
    settings: &OtlpSettings,
    resource: Resource,
) -> Result<(SdkMeterProvider, MetricsHealth), ExportSetupError> {
    let protocol = settings.resolved_protocol()?;
    let connection = Connection::from_env(Signal::Metrics)?;
    let otlp_error = ExportSetupError::otlp(protocol);
    let builder = SdkMeterProvider::builder().with_resource(resource);
    let health = Arc::new(ExportHealth::new(
        &connection,
        protocol,
        settings.endpoint.as_deref(),
    ));
    let provider = match protocol {
        OtlpProtocol::HttpProtobuf | OtlpProtocol::HttpJson => {
            let exporter = configure_http(
                opentelemetry_otlp::MetricExporter::builder().with_http(),
                protocol,
                settings.signal_endpoint(protocol, Signal::Metrics),
                &connection,
                &health,
            )?
            .build()
            .map_err(otlp_error)?;
            let exporter = ReportingMetricExporter::new(exporter, Arc::clone(&health));
            builder
                .with_reader(PeriodicReader::builder(exporter).build())
                .build()
        }
        OtlpProtocol::Grpc => {
            let exporter = OwnRuntimeExporter::build("skein-otlp-grpc-metrics", || {
                configure_grpc(
                    opentelemetry_otlp::MetricExporter::builder().with_tonic(),
                    settings.endpoint.as_deref(),
                    &connection,
                )
                .build()
                .map_err(otlp_error)
            })?;
            let exporter = ReportingMetricExporter::new(exporter, Arc::clone(&health));
            builder
                .with_reader(PeriodicReader::builder(exporter).build())
                .build()
        }
    };
    Ok((provider, MetricsHealth(health)))
}

/// How metric export fares, for the shutdown's report.
#[derive(Debug, Clone)]
pub struct MetricsHealth(Arc<ExportHealth>);

impl MetricsHealth {
    /// True when the backend refuses metrics altogether (and has been told
    /// about once): a failing final export is then no news.
    pub fn refused(&self) -> bool {
        self.0.refused()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::metrics::MeterProvider as _;
    use opentelemetry_sdk::metrics::InMemoryMetricExporter;
    use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData, ResourceMetrics};

    /// The attributes of every histogram point of `name`, as sorted
    /// `key=value` strings, with the point's count.
    fn histogram_points(all: &[ResourceMetrics], name: &str) -> Vec<(Vec<String>, u64)> {
        let mut points = Vec::new();
        for metric in all
            .iter()
            .flat_map(ResourceMetrics::scope_metrics)
            .flat_map(|scope| scope.metrics())
            .filter(|m| m.name() == name)
        {
            let mut push = |attrs: Vec<&KeyValue>, count: u64| {
                let mut attrs: Vec<String> = attrs
                    .into_iter()
                    .map(|kv| format!("{}={}", kv.key, kv.value))
                    .collect();
                attrs.sort();
                points.push((attrs, count));
            };
            match metric.data() {
                AggregatedMetrics::F64(MetricData::Histogram(h)) => {
                    for p in h.data_points() {
                        push(p.attributes().collect(), p.count());
                    }
                }
                AggregatedMetrics::U64(MetricData::Histogram(h)) => {
                    for p in h.data_points() {
                        push(p.attributes().collect(), p.count());
                    }
                }
                AggregatedMetrics::U64(MetricData::Sum(s)) => {
                    for p in s.data_points() {
                        push(p.attributes().collect(), p.value());
                    }
                }
                _ => {}
            }
        }
        points
    }

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn instruments_record_the_documented_attributes() {
        let exporter = InMemoryMetricExporter::default();
        let provider = SdkMeterProvider::builder()
            .with_reader(PeriodicReader::builder(exporter.clone()).build())
            .build();
        let stats = ExportStats::new("otlp");
        let instruments = Instruments::new(&provider.meter("test"), vec![stats]);

        instruments.record_rpc_call("turn/start", None, Duration::from_millis(3));
        instruments.record_rpc_call(value::METHOD_OTHER, Some(-32601), Duration::from_millis(1));
        instruments.record_model_call(&ModelCall {
            provider: "skein",
            model: "echo",
            duration: Duration::from_millis(5),
            error_type: None,
            usage: Some(TokenUsage {
                input_tokens: 2,
                output_tokens: 3,
            }),
            time_to_first_chunk: Some(Duration::from_millis(1)),
        });
        instruments.record_model_call(&ModelCall {
            provider: "skein",
            model: "echo",
            duration: Duration::from_millis(5),
            error_type: Some(value::ERROR_MODEL_FAILED),
            usage: None,
            time_to_first_chunk: None,
        });
        instruments.record_turn(
            TurnKind::Regular,
            TurnStatus::Completed,
            Duration::from_millis(9),
        );
        assert!(provider.force_flush().is_ok());
        let exported = exporter.get_finished_metrics().unwrap_or_default();

        let rpc = histogram_points(&exported, metric::RPC_SERVER_CALL_DURATION);
        assert!(rpc.contains(&(
            strings(&["rpc.method=turn/start", "rpc.system.name=jsonrpc"]),
            1
        )));
        assert!(rpc.contains(&(
            strings(&[
                "error.type=-32601",
                "rpc.method=_OTHER",
                "rpc.system.name=jsonrpc"
            ]),
            1
        )));
        let base = [
            "gen_ai.operation.name=chat",
            "gen_ai.provider.name=skein",
            "gen_ai.request.model=echo",
        ];
        let calls = histogram_points(&exported, metric::GEN_AI_CLIENT_OPERATION_DURATION);
        assert!(calls.contains(&(strings(&base), 1)), "{calls:?}");
        let mut failed = vec!["error.type=model_failed"];
        failed.extend(base);
        assert!(calls.contains(&(strings(&failed), 1)), "{calls:?}");
        // Only the call that streamed a chunk has a time to first chunk.
        let first = histogram_points(&exported, metric::GEN_AI_CLIENT_TIME_TO_FIRST_CHUNK);
        assert_eq!(first, vec![(strings(&base), 1)]);
        let tokens = histogram_points(&exported, metric::GEN_AI_CLIENT_TOKEN_USAGE);
        for token_type in ["gen_ai.token.type=input", "gen_ai.token.type=output"] {
            let mut attrs: Vec<&str> = base.to_vec();
            attrs.push(token_type);
            attrs.sort_unstable();
            assert!(tokens.contains(&(strings(&attrs), 1)), "{tokens:?}");
        }
        let turns = histogram_points(&exported, metric::TURN_DURATION);
        assert_eq!(
            turns,
            vec![(strings(&["turn.kind=regular", "turn.status=completed"]), 1)]
        );
        let dropped = histogram_points(&exported, metric::SPANS_DROPPED);
        assert_eq!(dropped, vec![(strings(&["pipeline=otlp"]), 0)]);
        assert!(provider.shutdown().is_ok());
    }

    #[test]
    fn records_are_no_ops_until_installed() {
        // Nothing installed in this test binary: must simply return.
        record_rpc_call("initialize", None, Duration::from_millis(1));
        record_turn(
            TurnKind::Regular,
            TurnStatus::Failed,
            Duration::from_millis(1),
        );
    }
}
