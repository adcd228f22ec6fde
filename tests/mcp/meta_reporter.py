"""A test MCP server, written with the official Python `mcp` SDK. Runs
over stdio.

Tools:
- `report_meta`: answers with the `params._meta` object of the `tools/call`
  request that invoked it, as JSON text, so a test can check the trace
  context a client sent;
- `echo`: answers with its `text` argument;
- `wait_for_cancel`: waits until its request is cancelled, then says so on
  stderr;
- `crash`: ends the server process at once.
"""

import json
import os
import sys

import anyio
from mcp.server.mcpserver import Context, MCPServer

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


if __name__ == "__main__":
    server.run()
