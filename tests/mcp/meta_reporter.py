"""A test MCP server, written with the official Python `mcp` SDK.

Its one tool, `report_meta`, answers with the `params._meta` object of the
`tools/call` request that invoked it, as JSON text, so a test can check the
trace context a client sent. Runs over stdio.
"""

import json

from mcp.server.mcpserver import Context, MCPServer

server = MCPServer("meta-reporter")


@server.tool()
def report_meta(ctx: Context) -> str:
    """Report the _meta object this tools/call request carried."""
    meta = ctx.request_context.meta or {}
    return json.dumps(dict(meta), default=str)


if __name__ == "__main__":
    server.run()
