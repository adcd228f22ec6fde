"""An MCP client written with the official Python `mcp` SDK, for
skein-rmcp's tests. It speaks MCP over its own stdin/stdout (the test runs
the traced rmcp server in process, on the other ends of those pipes) and
checks what it gets back; the test checks the server's spans.

With an OpenTelemetry context current (trace 0af7651916cd43dd8448eb211c80319c,
span b7ad6b7169203331, a remote parent as an upstream caller would give),
the SDK puts `traceparent` into each request's `params._meta` itself. In
order:

1. `initialize` (the SDK's handshake, then `notifications/initialized`);
2. `tools/call get_weather` (succeeds);
3. `tools/call fail` (a tool error: `isError: true`);
4. `no/such/method` (answered with -32601);
5. outside the context, `tools/call get_weather` with an invalid
   `_meta.traceparent` (still succeeds);
6. `tools/call whoami` with `_meta.baggage` `user.id=u-42,exp=b` (answered
   with the baggage the handler's context carries), then with an invalid
   `_meta.baggage` (answered `none`).

Exits 0 when every answer was as expected; a failure is printed to stderr.
"""

import os
import sys

import anyio
from mcp import types
from mcp.client.session import ClientSession
from mcp.server.stdio import stdio_server
from mcp.shared.exceptions import MCPError
from opentelemetry import context, trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

CALLER = SpanContext(
    trace_id=0x0AF7651916CD43DD8448EB211C80319C,
    span_id=0xB7AD6B7169203331,
    is_remote=True,
    trace_flags=TraceFlags(TraceFlags.SAMPLED),
)


def check(condition, what):
    if not condition:
        print(f"python_client: FAILED: {what}", file=sys.stderr, flush=True)
        sys.exit(1)


async def main():
    async with stdio_server() as (read, write):
        async with ClientSession(read, write) as session:
            token = context.attach(trace.set_span_in_context(NonRecordingSpan(CALLER)))
            try:
                await session.initialize()
                ok = await session.call_tool("get_weather", {"city": "Paris"})
                check(not ok.is_error, f"get_weather failed: {ok}")
                check("Paris" in ok.content[0].text, f"get_weather answered {ok}")
                failed = await session.call_tool("fail", {})
                check(failed.is_error, f"fail did not report a tool error: {failed}")
                try:
                    await session.send_request(
                        types.Request(method="no/such/method", params=None),
                        types.EmptyResult,
                    )
                    check(False, "no/such/method was answered with a result")
                except MCPError as err:
                    check(err.error.code == -32601, f"no/such/method: {err.error}")
            finally:
                context.detach(token)
            # No context now: only the invalid carrier given here is sent.
            bad = await session.call_tool(
                "get_weather", {"city": "Oslo"}, meta={"traceparent": "00-not-a-trace-context"}
            )
            check(not bad.is_error, f"get_weather with an invalid carrier failed: {bad}")
            caller = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
            tagged = await session.call_tool(
                "whoami", {}, meta={"traceparent": caller, "baggage": "user.id=u-42,exp=b"}
            )
            check(
                tagged.content[0].text == "user.id=u-42,exp=b",
                f"whoami with baggage answered {tagged}",
            )
            untagged = await session.call_tool(
                "whoami", {}, meta={"traceparent": caller, "baggage": "user.id=u 42"}
            )
            check(
                not untagged.is_error and untagged.content[0].text == "none",
                f"whoami with an invalid baggage answered {untagged}",
            )
            print("python_client: all answers as expected", file=sys.stderr, flush=True)
            # Leaving `stdio_server` would wait for the server to close our
            # stdin, and the server waits for us: end here.
            sys.stdout.flush()
            os._exit(0)


anyio.run(main)
