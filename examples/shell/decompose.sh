#!/usr/bin/env bash
# Decompose (no seed section; the shell version of the `decompose` component): split a
# goal into subgoals, solve each the same way one level deeper, then combine. At
# MAX_DEPTH a goal is solved by one job.
#
# usage: decompose.sh [WS] [GOAL] [MAX_DEPTH]
#   WS         workspace [$NRVNA_WS or ./workspace]; a daemon is started if none serves it
#   GOAL       [Plan a small product launch]
#   MAX_DEPTH  levels of splitting [1]
set -euo pipefail
# shellcheck source=../lib.sh
source "$(dirname "$0")/../lib.sh"
WS="${1:-$NRVNA_WS}"
GOAL="${2:-Plan a small product launch}"
MAX_DEPTH="${3:-1}"
MAX_SUBGOALS=2
ensure_daemon "$WS"

ask() { wrk "$WS" "$1" | xargs flw "$WS"; }

solve() {
    local goal=$1 depth=$2 plan results="" sub
    local -a subs=()
    if [ "$depth" -lt "$MAX_DEPTH" ]; then
        plan=$(ask "Break this goal into at most $MAX_SUBGOALS smaller subgoals. Write one subgoal per line, numbered, nothing else.
Goal: $goal")
        # Strip bullets and numbers; keep the first non-empty lines.
        mapfile -t subs < <(sed -E 's/^[[:space:]]*([-*]|[0-9]+[.):])?[[:space:]]*//' <<<"$plan" \
            | grep -v '^[[:space:]]*$' | head -n "$MAX_SUBGOALS")
    fi
    if [ ${#subs[@]} -eq 0 ]; then
        ask "$goal"
        return
    fi
    for sub in "${subs[@]}"; do
        results+="- $sub
$(solve "$sub" $((depth + 1)))
"
    done
    ask "Goal: $goal
Results of its subgoals:
$results
Combine these results into one answer to the goal."
}

solve "$GOAL" 0
echo
