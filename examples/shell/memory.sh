#!/usr/bin/env bash
# Memory / context accumulation (seed: "Memory / Context Accumulation"): the results of
# earlier jobs become the context of a later question.
#
# usage: memory.sh [WS] [QUESTION]
#   WS        workspace [$NRVNA_WS or ./workspace]; a daemon is started if none serves it
#   QUESTION  [What's the best approach for a startup?]
set -euo pipefail
# shellcheck source=../lib.sh
source "$(dirname "$0")/../lib.sh"
WS="${1:-$NRVNA_WS}"
default_question="What's the best approach for a startup?"
QUESTION="${2:-$default_question}"
ensure_daemon "$WS"
memory="$NRVNA_TMP/memory.txt"

job1=$(wrk "$WS" "Describe a lean startup in one paragraph.")
job2=$(wrk "$WS" "Describe a bootstrapped startup in one paragraph.")
job3=$(wrk "$WS" "Describe a venture-funded startup in one paragraph.")

# Save results to memory (the seed's three appends, as written).
# shellcheck disable=SC2129
flw "$WS" "$job1" >> "$memory"
flw "$WS" "$job2" >> "$memory"
flw "$WS" "$job3" >> "$memory"

# Use memory as context.
wrk "$WS" "Given this context:
$(cat "$memory")

Answer: $QUESTION" | xargs flw "$WS"
echo
