#!/usr/bin/env bash
# Decompose with the `decompose` component: it splits the goal, solves each subgoal by
# calling itself one level deeper (agents.call, each call in a fresh sandbox), and
# combines the results. Same arguments and output as ../shell/decompose.sh.
#
# usage: decompose.sh [WS] [GOAL] [MAX_DEPTH]
set -euo pipefail
# shellcheck source=../lib.sh
source "$(dirname "$0")/../lib.sh"
WS="${1:-$NRVNA_WS}"
GOAL="${2:-Plan a small product launch}"
MAX_DEPTH="${3:-1}"
ensure_daemon "$WS"
decompose=$(component decompose)

nrvna exec "$decompose" --ws "$WS" -- --max-depth "$MAX_DEPTH" --max-subgoals 2 "$GOAL"
echo
