#!/usr/bin/env bash
# Sends the same requests to the real Codex app-server and to Skein and
# prints both answers per request, to see what a Codex client gets from
# each. Only calls that work offline are sent (Codex needs an account for
# anything that reaches a model).
#
# Usage: tests/schemas/compare-with-codex.sh [CODEX_VERSION]
# Needs node/npm (the CLI is installed into a temporary directory) and a
# built skein (SKEIN_BIN, default target/debug/skein).
set -euo pipefail

CODEX_VERSION="${1:-0.169.0}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
skein="${SKEIN_BIN:-$root/target/debug/skein}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

npm install --silent --prefix "$work" "@openai/codex@$CODEX_VERSION" >/dev/null
mkdir -p "$work/codex-home" "$work/skein-home"

requests=(
  '{"id":1,"method":"model/list","params":{}}'
  '{"id":2,"method":"initialize","params":{"clientInfo":{"name":"compare","version":"1"}}}'
  '{"method":"initialized"}'
  '{"id":3,"method":"account/read","params":{}}'
  '{"id":4,"method":"configRequirements/read"}'
  '{"id":5,"method":"skills/list","params":{}}'
  '{"id":6,"method":"app/list","params":{}}'
  '{"id":7,"method":"mcpServerStatus/list","params":{}}'
  '{"id":8,"method":"thread/loaded/list","params":{}}'
  '{"id":9,"method":"thread/unsubscribe","params":{"threadId":"01a00000-0000-7000-8000-000000000000"}}'
  '{"id":10,"method":"model/list","params":{}}'
  '{"id":11,"method":"thread/start","params":{}}'
)

# Each server reads the requests, then stdin stays open long enough for the
# answers to come back.
feed() { printf '%s\n' "${requests[@]}"; sleep "${COMPARE_WAIT_SECONDS:-8}"; }

feed | CODEX_HOME="$work/codex-home" "$work/node_modules/.bin/codex" app-server \
  2>/dev/null >"$work/codex.jsonl" || true
feed | SKEIN_HOME="$work/skein-home" "$skein" serve --trace-dir none \
  2>/dev/null >"$work/skein.jsonl" || true

python3 - "$work/codex.jsonl" "$work/skein.jsonl" <<'PY'
import json, sys
def by_id(path):
    out = {}
    for line in open(path):
        try:
            msg = json.loads(line)
        except ValueError:
            continue
        if "id" in msg and "method" not in msg:
            out[msg["id"]] = msg
    return out
codex, skein = by_id(sys.argv[1]), by_id(sys.argv[2])
for i in sorted(set(codex) | set(skein)):
    print(f"== request {i}")
    for name, answers in (("codex", codex), ("skein", skein)):
        print(f"  {name}: {json.dumps(answers.get(i))[:600]}")
PY
