#!/usr/bin/env bash
# Agent loop (seed: "Agent Loop"): continue towards a goal, round after round, until the
# model says DONE or the rounds run out. The memory lives in a shell variable: if the
# script is interrupted, the next run starts over.
#
# usage: agent-loop.sh [WS] [GOAL] [ROUNDS]
#   WS      workspace [$NRVNA_WS or ./workspace]; a daemon is started if none serves it
#   GOAL    [Write a Python tutorial covering variables, loops, and functions]
#   ROUNDS  most iterations [5]
set -euo pipefail
# shellcheck source=../lib.sh
source "$(dirname "$0")/../lib.sh"
WS="${1:-$NRVNA_WS}"
GOAL="${2:-Write a Python tutorial covering variables, loops, and functions}"
ROUNDS="${3:-5}"
ensure_daemon "$WS"

memory=""
for i in $(seq "$ROUNDS"); do
    result=$(wrk "$WS" "Goal: $GOAL
Previous work: $memory
Continue. Write the next section. Say DONE if complete." | xargs flw "$WS")

    echo "=== Iteration $i ==="
    echo "$result"

    if echo "$result" | grep -q "DONE"; then
        break
    fi

    memory="$memory
---
$result"
done
