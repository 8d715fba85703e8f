#!/usr/bin/env bash
# Event-driven (seed: "Event-Driven (Watch for Results)"): submit jobs, then print each
# result the moment it lands in output/ (any order). The seed uses fswatch in a second
# terminal; this script watches with inotifywait (inotify-tools) when it is installed,
# else polls every 0.2 s, and stops once every job it submitted has ended.
#
# usage: watch.sh [WS] [QUESTION...]
#   WS        workspace [$NRVNA_WS or ./workspace]; a daemon is started if none serves it
#   QUESTION  prompts to submit [two built-in questions]
set -euo pipefail
# shellcheck source=../lib.sh
source "$(dirname "$0")/../lib.sh"
WS="${1:-$NRVNA_WS}"
shift || true
questions=("$@")
if [ ${#questions[@]} -eq 0 ]; then
    questions=("Question 1: what is a daemon?" "Question 2: what is a workspace?")
fi
ensure_daemon "$WS"
mkdir -p "$WS/output" "$WS/failed"

# Submit jobs.
pending=()
for q in "${questions[@]}"; do
    pending+=("$(wrk "$WS" "$q")")
done

# Watch for results: a job directory appears in output/ (or failed/) when it ends.
wait_for_change() {
    if command -v inotifywait >/dev/null 2>&1; then
        inotifywait -qq -t 1 -e moved_to -e create "$WS/output" "$WS/failed" 2>/dev/null || true
    else
        sleep 0.2
    fi
}
while [ ${#pending[@]} -gt 0 ]; do
    still=()
    for id in "${pending[@]}"; do
        if [ -f "$WS/output/$id/result.txt" ]; then
            echo "=== $id ==="
            cat "$WS/output/$id/result.txt"
            echo
        elif [ -d "$WS/failed/$id" ]; then
            echo "=== $id === FAILED"
        else
            still+=("$id")
        fi
    done
    pending=("${still[@]+"${still[@]}"}")
    if [ ${#pending[@]} -gt 0 ]; then
        wait_for_change
    fi
done
