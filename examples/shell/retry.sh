#!/usr/bin/env bash
# Retry (no seed section; the shell version of the `retry` component): run a job until
# its output is JSON with a "name" field, waiting longer after each failure.
#
# usage: retry.sh [WS] [PROMPT] [ATTEMPTS]
#   WS        workspace [$NRVNA_WS or ./workspace]; a daemon is started if none serves it
#   PROMPT    [Invent a name for a coffee shop. Answer in JSON.]
#   ATTEMPTS  tries in all [4]
set -euo pipefail
# shellcheck source=../lib.sh
source "$(dirname "$0")/../lib.sh"
WS="${1:-$NRVNA_WS}"
PROMPT="${2:-Invent a name for a coffee shop. Answer in JSON.}"
ATTEMPTS="${3:-4}"
ensure_daemon "$WS"
schema="$NRVNA_TMP/schema.json"
echo '{"type":"object","properties":{"name":{"type":"string","maxLength":40}},"required":["name"]}' > "$schema"

delay_ms=500
for attempt in $(seq "$ATTEMPTS"); do
    id=$(wrk "$WS" "$PROMPT" --json-schema "$schema" --seed "$attempt")
    # Success: the job finished and its output has the field (a shell can only grep).
    if out=$(flw "$WS" "$id" 2>/dev/null) && grep -q '"name"' <<<"$out"; then
        echo "$out"
        exit 0
    fi
    echo "attempt $attempt failed" >&2
    if [ "$attempt" -lt "$ATTEMPTS" ]; then
        # Exponential backoff with jitter: 50-100% of the delay.
        wait_ms=$((delay_ms / 2 + RANDOM % (delay_ms / 2 + 1)))
        sleep "$(printf '%d.%03d' $((wait_ms / 1000)) $((wait_ms % 1000)))"
        delay_ms=$((delay_ms * 2))
    fi
done
echo "gave up after $ATTEMPTS attempts" >&2
exit 1
