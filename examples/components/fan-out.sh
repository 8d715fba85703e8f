#!/usr/bin/env bash
# Fan-out / fan-in with the `map-reduce` component: the subtasks run in parallel, then
# one job synthesises them (the seed's prompt is the default). Same output as
# ../shell/fan-out.sh.
#
# usage: fan-out.sh [WS]
set -euo pipefail
# shellcheck source=../lib.sh
source "$(dirname "$0")/../lib.sh"
WS="${1:-$NRVNA_WS}"
ensure_daemon "$WS"
map_reduce=$(component map_reduce)

nrvna exec "$map_reduce" --ws "$WS" -- \
    "Research: PostgreSQL scalability" \
    "Research: PostgreSQL ecosystem" \
    "Research: PostgreSQL vs MongoDB"
