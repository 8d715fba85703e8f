#!/usr/bin/env bash
# Fan-out / fan-in (seed: "Fan-Out / Fan-In (Map-Reduce)"): three research jobs run in
# parallel, then one job synthesises their findings.
#
# usage: fan-out.sh [WS]   (workspace [$NRVNA_WS or ./workspace]; a daemon is started
#                           if none serves it)
set -euo pipefail
# shellcheck source=../lib.sh
source "$(dirname "$0")/../lib.sh"
WS="${1:-$NRVNA_WS}"
ensure_daemon "$WS"

# Fan-out: submit subtasks.
job1=$(wrk "$WS" "Research: PostgreSQL scalability")
job2=$(wrk "$WS" "Research: PostgreSQL ecosystem")
job3=$(wrk "$WS" "Research: PostgreSQL vs MongoDB")

# Wait for all.
result1=$(flw "$WS" "$job1")
result2=$(flw "$WS" "$job2")
result3=$(flw "$WS" "$job3")

# Fan-in: synthesise.
wrk "$WS" "Synthesize these findings into a recommendation:
$result1
$result2
$result3" | xargs flw "$WS"
echo
