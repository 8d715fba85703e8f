#!/usr/bin/env bash
# Batch processing with the `batch` component: the inputs (or the lines of FILE) all
# go in as jobs, at most 8 in flight, and come back in order; a failed input is reported
# in its place. Same arguments and output as ../shell/batch.sh.
#
# usage: batch.sh [WS] [FILE]
set -euo pipefail
# shellcheck source=../lib.sh
source "$(dirname "$0")/../lib.sh"
WS="${1:-$NRVNA_WS}"
FILE="${2:-}"
ensure_daemon "$WS"
batch=$(component batch)

if [ -n "$FILE" ]; then
    # The component sees only what is granted: FILE's directory, read-only, at /data.
    dir=$(cd "$(dirname "$FILE")" && pwd)
    nrvna exec "$batch" --ws "$WS" --dir "$dir:/data:ro" -- --file "/data/$(basename "$FILE")"
else
    nrvna exec "$batch" --ws "$WS" -- "What is a queue?" "What is a stack?" "What is a hash map?"
fi
