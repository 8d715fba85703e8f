#!/usr/bin/env bash
# Compare (no seed section; the shell version of the `compare` component): the same
# prompt sampled three times with different seeds, then a judge job picks the best
# answer under a JSON schema. If the judge's answer is unusable, the first answer wins.
#
# usage: compare.sh [WS] [PROMPT]
#   WS      workspace [$NRVNA_WS or ./workspace]; a daemon is started if none serves it
#   PROMPT  [Explain what a mutex is in two sentences.]
set -euo pipefail
# shellcheck source=../lib.sh
source "$(dirname "$0")/../lib.sh"
WS="${1:-$NRVNA_WS}"
PROMPT="${2:-Explain what a mutex is in two sentences.}"
ensure_daemon "$WS"

# The same prompt, three samples.
ids=()
for seed in 1 2 3; do
    ids+=("$(wrk "$WS" "$PROMPT" --seed "$seed")")
done
answers=()
for id in "${ids[@]}"; do
    answers+=("$(flw "$WS" "$id" || true)")
done

# The judge.
judge="Question: $PROMPT

Here are 3 answers.
"
for i in 0 1 2; do
    judge+="
Answer $((i + 1)):
${answers[$i]}
"
done
judge+="
Which answer is best? Reply with JSON: {\"best\": NUMBER}"
schema="$NRVNA_TMP/judge.json"
echo '{"type":"object","properties":{"best":{"type":"integer","enum":[1,2,3]}},"required":["best"]}' > "$schema"
verdict=$(wrk "$WS" "$judge" --json-schema "$schema" --max-tokens 32 --temp 0 \
    | xargs flw "$WS" || true)
best=$(grep -o '[123]' <<<"$verdict" | head -n 1 || true)
best=${best:-1}
echo "best: answer $best" >&2
echo "${answers[$((best - 1))]}"
