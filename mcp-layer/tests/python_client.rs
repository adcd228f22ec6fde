//! A traced rmcp server called by the official Python MCP SDK's client.
//!
//! The client (`tests/python_client.py`, run with the MCP virtualenv's
//! Python: `SKEIN_MCP_PYTHON`, else `~/.cache/skein-ci/mcp-venv`, as
//! `.ci/run` installs it) speaks MCP over its stdin/stdout; this test
//! serves the other ends of those pipes with a [`TracedServer`] in
//! process and reads its spans from an in-memory exporter. Without the
//! virtualenv the test says so loudly and passes, except under `CI=true`,
//! where it fails.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use opentelemetry::trace::{SpanId, SpanKind, Status};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, ListToolsResult,
    PaginatedRequestParams, ServerCapabilities, ServerConfig, Tool,
};
use rmcp::service::{RequestContext, RoleServer};
use rmcp::{ErrorData, ServerHandler, ServiceExt as _};
use skein_rmcp::TracedServer;

/// Upper bound of every wait on the client or the server.
const TIMEOUT: Duration = Duration::from_secs(60);
const CALLER_TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
const CALLER_SPAN: &str = "b7ad6b7169203331";

/// A weather server: `get_weather` answers, `fail` fails as a tool does.
#[derive(Clone)]
struct Weather;

impl ServerHandler for Weather {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let schema = serde_json::json!({
            "type": "object",
            "properties": {"city": {"type": "string"}},
        });
        let schema = match schema {
            serde_json::Value::Object(schema) => schema,
            _ => unreachable!("an object"),
        };
        Ok(ListToolsResult::with_all_items(vec![
            Tool::new("get_weather", "The weather in a city", schema.clone()),
            Tool::new("whoami", "The caller's baggage", schema.clone()),
            Tool::new("fail", "Always fails", schema),
        ]))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let city = request
            .arguments
            .as_ref()
            .and_then(|a| a.get("city"))
            .and_then(|c| c.as_str())
            .unwrap_or("nowhere")
            .to_owned();
        Ok(match &*request.name {
            // The baggage the handler's context carries, as received.
            "whoami" => {
                let cx = opentelemetry::Context::current();
                let baggage = skein_otel::baggage::baggage_of(&cx)
                    .map(|b| b.header.clone())
                    .unwrap_or_else(|| "none".to_owned());
                CallToolResult::success(vec![ContentBlock::text(baggage)])
            }
            "get_weather" => {
                CallToolResult::success(vec![ContentBlock::text(format!("sunny in {city}"))])
            }
            _ => CallToolResult::error(vec![ContentBlock::text("this tool always fails")]),
        }
        .into())
    }
}

/// The MCP virtualenv's Python, as the workspace's other MCP tests find it.
fn python() -> Option<PathBuf> {
    let python = std::env::var_os("SKEIN_MCP_PYTHON")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
                .map(|cache| cache.join("skein-ci/mcp-venv/bin/python"))
        })
        .filter(|p| p.is_file());
    if python.is_none() {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("CI=true but the MCP virtualenv is missing: run .ci/run to install it");
        }
        eprintln!(
            "\n\n*** SKIPPING MCP TEST: the Python mcp SDK not found \
             (set SKEIN_MCP_PYTHON, or run .ci/run) ***\n"
        );
    }
    python
}

fn attr(span: &SpanData, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.as_str().into_owned())
}

fn named<'a>(spans: &'a [SpanData], name: &str) -> Vec<&'a SpanData> {
    spans.iter().filter(|s| s.name == name).collect()
}

/// The finished spans, once `ready` holds of them (or the timeout passed).
async fn spans_when(
    exporter: &InMemorySpanExporter,
    ready: impl Fn(&[SpanData]) -> bool,
) -> Vec<SpanData> {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let spans = exporter.get_finished_spans().expect("finished spans");
        if ready(&spans) || Instant::now() > deadline {
            return spans;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sdk_calls_give_one_server_span_each_in_the_callers_trace() {
    let Some(python) = python() else { return };
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_span_processor(skein_otel::baggage::BaggageAttributes::new(
            ["user.id".to_owned()],
            std::sync::Arc::new(|v: &str| Some(v.to_owned())),
        ))
        .with_simple_exporter(exporter.clone())
        .build();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/python_client.py");
    let mut client = tokio::process::Command::new(python)
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("start the Python client");
    let to_client = client.stdin.take().expect("client stdin");
    let from_client = client.stdout.take().expect("client stdout");

    let server = TracedServer::new(Weather).with_tracer_provider(&provider);
    let running = tokio::time::timeout(TIMEOUT, server.serve((from_client, to_client)))
        .await
        .expect("the client initialized in time")
        .expect("the server started");
    let status = tokio::time::timeout(TIMEOUT, client.wait())
        .await
        .expect("the client finished in time")
        .expect("the client's exit status");
    assert!(status.success(), "the Python client failed: {status}");
    let _ = tokio::time::timeout(TIMEOUT, running.waiting()).await;

    let spans = spans_when(&exporter, |spans| {
        named(spans, "tools/call get_weather").len() == 2
            && named(spans, "tools/call whoami").len() == 2
            && !named(spans, "notifications/initialized").is_empty()
    })
    .await;
    let names: Vec<&str> = spans.iter().map(|s| s.name.as_ref()).collect();
    for span in &spans {
        assert_eq!(span.span_kind, SpanKind::Server, "{}", span.name);
    }

    // One span per request, each in the caller's trace under its span.
    let weather = named(&spans, "tools/call get_weather");
    assert_eq!(weather.len(), 2, "{names:?}");
    let (traced, untraced) = if weather[0].parent_span_id == SpanId::INVALID {
        (weather[1], weather[0])
    } else {
        (weather[0], weather[1])
    };
    let fail = named(&spans, "tools/call fail");
    let unknown = named(&spans, "jsonrpc");
    let initialize = named(&spans, "initialize");
    assert_eq!(fail.len(), 1, "{names:?}");
    assert_eq!(unknown.len(), 1, "{names:?}");
    assert_eq!(initialize.len(), 1, "{names:?}");
    for span in [traced, fail[0], unknown[0], initialize[0]] {
        assert_eq!(
            span.span_context.trace_id().to_string(),
            CALLER_TRACE,
            "{}",
            span.name
        );
        assert_eq!(
            span.parent_span_id.to_string(),
            CALLER_SPAN,
            "{}",
            span.name
        );
        assert!(span.parent_span_is_remote, "{}", span.name);
        assert!(
            attr(span, "jsonrpc.request.id").is_some(),
            "{}: no request id",
            span.name
        );
        assert_eq!(attr(span, "network.transport").as_deref(), Some("pipe"));
    }
    for (key, want) in [
        ("mcp.method.name", "tools/call"),
        ("gen_ai.tool.name", "get_weather"),
        ("gen_ai.operation.name", "execute_tool"),
    ] {
        assert_eq!(attr(traced, key).as_deref(), Some(want), "{key}");
    }
    assert!(attr(traced, "mcp.protocol.version").is_some());
    assert!(attr(initialize[0], "mcp.protocol.version").is_some());
    assert_eq!(traced.status, Status::Unset);

    // A result flagged isError.
    assert_eq!(attr(fail[0], "error.type").as_deref(), Some("tool_error"));
    assert!(matches!(fail[0].status, Status::Error { .. }));

    // A method nobody serves.
    assert_eq!(attr(unknown[0], "error.type").as_deref(), Some("-32601"));
    assert_eq!(
        attr(unknown[0], "mcp.method.name").as_deref(),
        Some("_OTHER")
    );
    assert_eq!(
        attr(unknown[0], "rpc.method_original").as_deref(),
        Some("no/such/method")
    );

    // An invalid carrier: a root span with an event, the call answered.
    assert_eq!(untraced.parent_span_id, SpanId::INVALID);
    assert_ne!(untraced.span_context.trace_id().to_string(), CALLER_TRACE);
    assert_eq!(untraced.status, Status::Unset);
    let events: Vec<&str> = untraced.events.iter().map(|e| e.name.as_ref()).collect();
    assert_eq!(events, ["skein.carrier.invalid"]);

    // Notifications are traced too, without a request id.
    let initialized = named(&spans, "notifications/initialized");
    assert_eq!(initialized.len(), 1, "{names:?}");
    assert_eq!(
        attr(initialized[0], "mcp.method.name").as_deref(),
        Some("notifications/initialized")
    );
    assert_eq!(attr(initialized[0], "jsonrpc.request.id"), None);

    // `_meta.baggage`: in the handler's context (the client checked the
    // answer) and, for the listed key only, on the span; an invalid one is
    // ignored whole, with an event, and the call still parented.
    let whoami = named(&spans, "tools/call whoami");
    assert_eq!(whoami.len(), 2, "{names:?}");
    let (tagged, bad) = if attr(whoami[0], "user.id").is_some() {
        (whoami[0], whoami[1])
    } else {
        (whoami[1], whoami[0])
    };
    assert_eq!(attr(tagged, "user.id").as_deref(), Some("u-42"));
    assert_eq!(attr(tagged, "exp"), None);
    assert!(tagged.events.is_empty());
    assert_eq!(bad.parent_span_id.to_string(), CALLER_SPAN);
    assert_eq!(attr(bad, "user.id"), None);
    let events: Vec<&str> = bad.events.iter().map(|e| e.name.as_ref()).collect();
    assert_eq!(events, ["skein.carrier.invalid"]);
}
