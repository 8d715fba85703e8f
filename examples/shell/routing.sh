#!/usr/bin/env bash
# Multi-model routing (seed: "Multi-Model Routing"): one daemon per kind of task, and a
# classify function that picks the workspace for an input.
#
# usage: routing.sh [WS] [INPUT]
#   WS     base name of the workspaces: WS-code and WS-fast [$NRVNA_WS or ./workspace]
#   INPUT  what to route [main.py]
#
# The seed starts a code model and a fast model (and a vision model on WS-vision);
# here both serve $NRVNA_MODEL, so the example runs anywhere. Give each its own model
# with NRVNA_MODEL=... when starting them yourself.
set -euo pipefail
# shellcheck source=../lib.sh
source "$(dirname "$0")/../lib.sh"
WS="${1:-$NRVNA_WS}"
INPUT="${2:-main.py}"

# Start specialised daemons.
ensure_daemon "$WS-code"
ensure_daemon "$WS-fast"

# Route by task type.
classify() {
    case "$1" in
        *.py|*.js) echo "$WS-code" ;;
        *)         echo "$WS-fast" ;;
    esac
}

# Submit to the chosen workspace.
ws=$(classify "$INPUT")
echo "route: ${ws##*-}" >&2
wrk "$ws" "Process this: $INPUT" | xargs flw "$ws"
echo
