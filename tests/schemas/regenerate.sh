#!/usr/bin/env bash
# Regenerates the Codex app-server JSON Schemas the conformance tests check
# Skein against (tests/tests/codex_conformance.rs).
#
# The schemas are reference data produced by the released Codex CLI:
#   npm install @openai/codex@$CODEX_VERSION
#   codex app-server generate-json-schema --out DIR
# Only the files the tests use are kept, under codex-$CODEX_VERSION/.
#
# Usage: tests/schemas/regenerate.sh [VERSION]   (default: the pinned one)
# Needs node and npm; installs the CLI into a temporary directory, never
# into the repository.
set -euo pipefail

CODEX_VERSION="${1:-0.169.0}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="$here/codex-$CODEX_VERSION"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

npm install --silent --prefix "$work" "@openai/codex@$CODEX_VERSION" >/dev/null
"$work/node_modules/.bin/codex" app-server generate-json-schema --out "$work/schema"
# Methods the Codex TUI calls that are only in the experimental API (the
# TUI opts in with `capabilities.experimentalApi`).
"$work/node_modules/.bin/codex" app-server generate-json-schema --experimental \
  --out "$work/experimental"

# Results of the methods Skein implements, and the notifications it sends.
files=(
  v1/InitializeResponse.json
  ServerNotification.json
  ClientRequest.json
  v2/ModelListResponse.json
  v2/ThreadStartResponse.json
  v2/ThreadResumeResponse.json
  v2/ThreadForkResponse.json
  v2/ThreadListResponse.json
  v2/ThreadReadResponse.json
  v2/ThreadUnsubscribeResponse.json
  v2/ThreadCompactStartResponse.json
  v2/ThreadLoadedListResponse.json
  v2/ThreadArchiveResponse.json
  v2/ThreadUnarchiveResponse.json
  v2/ThreadSetNameResponse.json
  v2/ThreadTurnsListResponse.json
  v2/TurnStartResponse.json
  v2/TurnSteerResponse.json
  v2/TurnInterruptResponse.json
  v2/ReviewStartResponse.json
  v2/GetAccountResponse.json
  v2/GetAccountRateLimitsResponse.json
  v2/ConfigReadResponse.json
  v2/ConfigRequirementsReadResponse.json
  v2/SkillsListResponse.json
  v2/AppsListResponse.json
  v2/ListMcpServerStatusResponse.json
  v2/HooksListResponse.json
  v2/PluginInstalledResponse.json
  v2/ThreadGoalGetResponse.json
  v2/ThreadStartedNotification.json
  v2/ThreadStatusChangedNotification.json
  v2/ThreadNameUpdatedNotification.json
  v2/ThreadArchivedNotification.json
  v2/ThreadUnarchivedNotification.json
  v2/ThreadTokenUsageUpdatedNotification.json
  v2/TurnStartedNotification.json
  v2/TurnCompletedNotification.json
  v2/ItemStartedNotification.json
  v2/ItemCompletedNotification.json
  v2/AgentMessageDeltaNotification.json
)

# From the experimental bundle, kept under experimental/: the request
# envelope that knows the experimental methods, and their results.
experimental_files=(
  ClientRequest.json
  v2/CollaborationModeListResponse.json
  v2/ThreadBackgroundTerminalsListResponse.json
  v2/BedrockCheckGovCloudRequirementsResponse.json
)

rm -rf "$out"
for f in "${files[@]}"; do
  mkdir -p "$out/$(dirname "$f")"
  cp "$work/schema/$f" "$out/$f"
done
for f in "${experimental_files[@]}"; do
  mkdir -p "$out/experimental/$(dirname "$f")"
  cp "$work/experimental/$f" "$out/experimental/$f"
done
"$work/node_modules/.bin/codex" --version > "$out/VERSION"
echo "wrote $((${#files[@]} + ${#experimental_files[@]})) schema files to $out"
