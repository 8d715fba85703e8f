#!/usr/bin/env bash
# Memory / context accumulation with the `map-reduce` component: the three context jobs
# run in parallel and their results fill {results} in the final question.
# Same arguments and output as ../shell/memory.sh.
#
# usage: memory.sh [WS] [QUESTION]
set -euo pipefail
# shellcheck source=../lib.sh
source "$(dirname "$0")/../lib.sh"
WS="${1:-$NRVNA_WS}"
default_question="What's the best approach for a startup?"
QUESTION="${2:-$default_question}"
ensure_daemon "$WS"
map_reduce=$(component map_reduce)

nrvna exec "$map_reduce" --ws "$WS" -- \
    --reduce "Given this context:
{results}

Answer: $QUESTION" \
    "Describe a lean startup in one paragraph." \
    "Describe a bootstrapped startup in one paragraph." \
    "Describe a venture-funded startup in one paragraph."
