"""A raw MCP server over stdio, in plain Python (no SDK), that garbles its
answers to `tools/call`.

It answers `initialize` and `tools/list` correctly and offers two tools:
- `garbled`: answered with a line that is not JSON, then a JSON-RPC
  response (with the request's id) whose `result` has the wrong shape
  (`content` is not a list, `isError` not a boolean);
- `echo`: answered correctly with its `text` argument, so a test can check
  the server is still usable afterwards.

Every request it reads is logged on stderr as `malformed-reply: got <method>`.
"""

import json
import sys


def send(message):
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def log(text):
    print(f"malformed-reply: {text}", file=sys.stderr, flush=True)


TOOLS = [
    {
        "name": "garbled",
        "description": "Answers with garbage.",
        "inputSchema": {"type": "object", "properties": {}},
    },
    {
        "name": "echo",
        "description": "Answers with the text given.",
        "inputSchema": {
            "type": "object",
            "properties": {"text": {"type": "string"}},
            "required": ["text"],
        },
    },
]


def handle(message):
    method = message.get("method")
    request_id = message.get("id")
    params = message.get("params") or {}
    if request_id is None:
        log(f"got notification {method}")
        return
    log(f"got {method} id={request_id}")
    if method == "initialize":
        send({
            "jsonrpc": "2.0",
            "id": request_id,
            "result": {
                "protocolVersion": params.get("protocolVersion", "2025-06-18"),
                "capabilities": {"tools": {}},
                "serverInfo": {"name": "malformed-reply", "version": "0.0.1"},
            },
        })
    elif method == "tools/list":
        send({"jsonrpc": "2.0", "id": request_id, "result": {"tools": TOOLS}})
    elif method == "tools/call" and params.get("name") == "garbled":
        sys.stdout.write("this is { not JSON at all\n")
        sys.stdout.flush()
        send({
            "jsonrpc": "2.0",
            "id": request_id,
            "result": {"content": "not a list", "isError": "perhaps"},
        })
        log("sent garbage")
    elif method == "tools/call" and params.get("name") == "echo":
        text = (params.get("arguments") or {}).get("text", "")
        send({
            "jsonrpc": "2.0",
            "id": request_id,
            "result": {"content": [{"type": "text", "text": text}], "isError": False},
        })
    elif method == "ping":
        send({"jsonrpc": "2.0", "id": request_id, "result": {}})
    else:
        send({
            "jsonrpc": "2.0",
            "id": request_id,
            "error": {"code": -32601, "message": f"method not found: {method}"},
        })


def main():
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        try:
            message = json.loads(line)
        except ValueError:
            log(f"ignoring a line that is not JSON: {line!r}")
            continue
        if isinstance(message, dict):
            handle(message)
        else:
            log(f"ignoring a message that is not an object: {line!r}")
    log("stdin closed, exiting")


if __name__ == "__main__":
    main()
