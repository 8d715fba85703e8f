#!/usr/bin/env bash
# Compare with the `compare` component: with no routes granted it samples the own
# workspace three times with different seeds, then a judge job picks the best answer
# (or, if the judge's answer is unusable, the answer that agrees most with the others).
# With routes granted (--route NAME=WS) it asks each route instead.
# Same arguments and output as ../shell/compare.sh.
#
# usage: compare.sh [WS] [PROMPT]
set -euo pipefail
# shellcheck source=../lib.sh
source "$(dirname "$0")/../lib.sh"
WS="${1:-$NRVNA_WS}"
PROMPT="${2:-Explain what a mutex is in two sentences.}"
ensure_daemon "$WS"
compare=$(component compare)

nrvna exec "$compare" --ws "$WS" -- "$PROMPT"
