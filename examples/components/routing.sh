#!/usr/bin/env bash
# Multi-model routing with the `route` component: the rules are the seed's `case`
# patterns, the code workspace is granted as the route `code`, and everything else
# stays in the component's own workspace (WS-fast). Add --classify to let the model
# choose when no rule matches. Same arguments and output as ../shell/routing.sh.
#
# usage: routing.sh [WS] [INPUT]
set -euo pipefail
# shellcheck source=../lib.sh
source "$(dirname "$0")/../lib.sh"
WS="${1:-$NRVNA_WS}"
INPUT="${2:-main.py}"
ensure_daemon "$WS-code"
ensure_daemon "$WS-fast"
route=$(component route)

nrvna exec "$route" --ws "$WS-fast" --route code="$WS-code" -- \
    --rule '*.py=code' --rule '*.js=code' --template 'Process this: {input}' "$INPUT"
echo
