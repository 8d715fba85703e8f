#!/usr/bin/env bash
# Retry with the `retry` component: the job is constrained with the schema, and its
# output is checked against the whole schema (not just grepped) before it is accepted;
# waits grow exponentially with jitter. Same arguments and output as ../shell/retry.sh.
#
# usage: retry.sh [WS] [PROMPT] [ATTEMPTS]
set -euo pipefail
# shellcheck source=../lib.sh
source "$(dirname "$0")/../lib.sh"
WS="${1:-$NRVNA_WS}"
PROMPT="${2:-Invent a name for a coffee shop. Answer in JSON.}"
ATTEMPTS="${3:-4}"
ensure_daemon "$WS"
retry=$(component retry)

nrvna exec "$retry" --ws "$WS" -- --attempts "$ATTEMPTS" \
    --schema '{"type":"object","properties":{"name":{"type":"string","maxLength":40}},"required":["name"]}' \
    "$PROMPT"
