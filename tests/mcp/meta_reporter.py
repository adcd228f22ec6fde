"""A test MCP server, written with the official Python `mcp` SDK. Runs
over stdio.

Tools:
- `report_meta`: answers with the `params._meta` object of the `tools/call`
  request that invoked it, as JSON text, so a test can check the trace
  context a client sent;
- `echo`: answers with its `text` argument;
- `wait_for_cancel`: waits until its request is cancelled, then says so on
  stderr;
- `crash`: ends the server process at once;
- `break_for_good`: ends the server process and makes every later start
  fail (it creates the file named by `SKEIN_TEST_BROKEN_MARKER`).
"""

import json
import os
import sys

import anyio
from mcp.server.mcpserver import Context, MCPServer

MARKER = os.environ.get("SKEIN_TEST_BROKEN_MARKER")
if MARKER and os.path.exists(MARKER):
    print("meta-reporter: broken for good, refusing to start", file=sys.stderr, flush=True)
    sys.exit(2)

server = MCPServer("meta-reporter")


@server.tool()
def report_meta(ctx: Context) -> str:
    """Report the _meta object this tools/call request carried."""
    meta = ctx.request_context.meta or {}
    return json.dumps(dict(meta), default=str)


@server.tool()
def echo(text: str) -> str:
    """Answer with the text given."""
    return text


@server.tool()
async def wait_for_cancel() -> str:
    """Wait until this request is cancelled."""
    try:
        await anyio.sleep(3600)
    except anyio.get_cancelled_exc_class():
        print("meta-reporter: wait_for_cancel was cancelled", file=sys.stderr, flush=True)
        raise
    return "no cancellation came"


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
    server.run()
