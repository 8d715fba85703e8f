#!/usr/bin/env bash
# Batch processing (seed: "Batch Processing"): submit many jobs at once, collect the
# results later, in order. A failed job is reported and the others still print.
#
# usage: batch.sh [WS] [FILE]
#   WS    workspace [$NRVNA_WS or ./workspace]; a daemon is started if none serves it
#   FILE  one prompt per non-empty line [three built-in questions]
#
# The seed captions images: with a vision model (nrvnad ... --mmproj), submit
#   wrk "$WS" "Caption this image" --image "$img"
# for each image instead.
set -euo pipefail
# shellcheck source=../lib.sh
source "$(dirname "$0")/../lib.sh"
WS="${1:-$NRVNA_WS}"
FILE="${2:-}"
ensure_daemon "$WS"

if [ -n "$FILE" ]; then
    mapfile -t inputs < <(grep -v '^[[:space:]]*$' "$FILE")
else
    inputs=("What is a queue?" "What is a stack?" "What is a hash map?")
fi

# Submit them all (each wrk returns at once).
jobs=()
for input in "${inputs[@]}"; do
    jobs+=("$(wrk "$WS" "$input")")
done

# Collect all results.
for i in "${!jobs[@]}"; do
    echo "=== $((i + 1)): ${inputs[$i]} ==="
    flw "$WS" "${jobs[$i]}" || echo "error: job ${jobs[$i]} failed"
    echo
done
