//! All of Skein's W3C Trace Context and OpenTelemetry logic.
//!
//! No other crate parses a carrier, builds an OTel context or configures an
//! exporter; they call in here.
//!
//! - [`w3c`]: strict W3C Trace Context Level 2 parsing and rendering.
//! - [`baggage`]: strict W3C Baggage parsing, and baggage in a context.
//! - [`carrier`]: carriers from JSON and the environment, choosing a parent
//!   among them, parenting spans, and the current span back to a carrier.
//! - [`rpc`]: the request-span factory, shared by every JSON-RPC server
//!   front end.
//! - [`names`]: every span name and attribute key, as constants.
//! - [`telemetry`]: the tracer provider, exporters and the `tracing`
//!   subscriber.
//! - [`local_store`]: the OTLP/JSON-lines span store on disk, with
//!   in-progress records of turns.
//! - [`otlp_json`]: the direct OTLP/JSON span encoder the store writes
//!   with.
//! - [`export`]: OTLP export and the accounting of dropped spans.
//! - [`otlp_connection`]: how an OTLP exporter reaches its collector: TLS
//!   files, `INSECURE`, the timeout.
//! - [`metrics`]: metric instruments, exported over OTLP next to the spans.
//! - [`owner_only`]: creating directories and files only their owner can
//!   use (the trace store here, thread history in core).

pub mod baggage;
pub mod carrier;
pub mod export;
pub mod local_store;
pub mod metrics;
pub mod names;
pub mod otlp_connection;
pub mod otlp_json;
pub mod owner_only;
pub mod rpc;
pub mod telemetry;
pub mod w3c;

pub use carrier::{
    CarrierError, CarrierSource, ParentChoice, SpanIds, add_link, carrier_for_span,
    carrier_for_span_context, choose_parent, choose_parent_among, current_span_context,
    current_submission_trace, inject, inject_current, set_remote_parent, set_string_array,
    set_submission_parent, span_context_from_ids, span_context_of, span_ids,
};
pub use telemetry::{Telemetry, TelemetryConfig, TelemetryError};
