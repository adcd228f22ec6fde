"""A test MCP server, written with the official Python `mcp` SDK. Runs
over stdio, or over streamable HTTP on 127.0.0.1 with `--http PORT` (at
`/mcp`).

Tools:
- `report_meta`: answers with the `params._meta` object of the `tools/call`
  request that invoked it, as JSON text, so a test can check the trace
  context a client sent;
- `report_headers`: answers with the HTTP headers that carried the
  `tools/call` request (`traceparent`, `tracestate`, `authorization`,
  `x-skein-test`; absent ones left out), as JSON text;
- `echo`: answers with its `text` argument;
- `wait_for_cancel`: says on stderr that it started (with its request id),
  then waits until its request is cancelled and says so;
- `refuse`: fails as a tool does, answering with `isError: true` and its
  `reason` argument as the text;
- `crash`: ends the server process at once;
- `break_for_good`: ends the server process and makes every later start
  fail (it creates the file named by `SKEIN_TEST_BROKEN_MARKER`).

Every `notifications/cancelled` it receives is logged on stderr with the
request id it names.
"""

import json
import os
import sys

import anyio
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError

MARKER = os.environ.get("SKEIN_TEST_BROKEN_MARKER")
if MARKER and os.path.exists(MARKER):
    print("meta-reporter: broken for good, refusing to start", file=sys.stderr, flush=True)
    sys.exit(2)



async def log_cancellations(ctx, call_next):
    """Middleware: log each notifications/cancelled and the id it names."""
    if ctx.method == "notifications/cancelled":
        request_id = (ctx.params or {}).get("requestId")
        print(
            f"meta-reporter: received notifications/cancelled requestId={request_id}",
            file=sys.stderr,
            flush=True,
        )
    return await call_next(ctx)


server = MCPServer("meta-reporter", middleware=[log_cancellations])


@server.tool()
def report_meta(ctx: Context) -> str:
    """Report the _meta object this tools/call request carried."""
    meta = ctx.request_context.meta or {}
    return json.dumps(dict(meta), default=str)


@server.tool()
def report_headers(ctx: Context) -> str:
    """Report the HTTP headers this tools/call request came with."""
    headers = ctx.headers or {}
    wanted = ["traceparent", "tracestate", "authorization", "x-skein-test"]
    return json.dumps({k: headers[k] for k in wanted if k in headers})


@server.tool()
def echo(text: str) -> str:
    """Answer with the text given."""
    return text


@server.tool()
async def wait_for_cancel(ctx: Context) -> str:
    """Wait until this request is cancelled."""
    request_id = ctx.request_id
    print(
        f"meta-reporter: wait_for_cancel started requestId={request_id}",
        file=sys.stderr,
        flush=True,
    )
    try:
        await anyio.sleep(3600)
    except anyio.get_cancelled_exc_class():
        print(
            f"meta-reporter: wait_for_cancel was cancelled requestId={request_id}",
            file=sys.stderr,
            flush=True,
        )
        raise
    return "no cancellation came"


@server.tool()
def refuse(reason: str) -> str:
    """Fail as a tool does, with this reason."""
    raise ToolError(reason)


@server.tool()
def crash() -> str:
    """End the server process at once."""
    os._exit(3)


@server.tool()
def break_for_good() -> str:
    """End the server process; it will not start again."""
    if MARKER:
        with open(MARKER, "w") as marker:
            marker.write("broken")
    os._exit(4)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--http":
        server.run("streamable-http", host="127.0.0.1", port=int(sys.argv[2]))
    else:
        server.run()
