#!/usr/bin/env bash
# Agent loop with the `loop` component: rounds until the model says DONE or ROUNDS is
# reached. The memory is kept in kv under the workspace, so if this script is
# interrupted, running it again resumes after the last finished round. Same arguments
# and output as ../shell/agent-loop.sh.
#
# usage: agent-loop.sh [WS] [GOAL] [ROUNDS]
set -euo pipefail
# shellcheck source=../lib.sh
source "$(dirname "$0")/../lib.sh"
WS="${1:-$NRVNA_WS}"
GOAL="${2:-Write a Python tutorial covering variables, loops, and functions}"
ROUNDS="${3:-5}"
ensure_daemon "$WS"
loop=$(component loop)

nrvna exec "$loop" --ws "$WS" -- --rounds "$ROUNDS" "$GOAL"
