#!/usr/bin/env bash
# Self-refinement with the `refine` component: draft, critique, improve (--rounds N
# repeats the last two). Same arguments and output as ../shell/refine.sh.
#
# usage: refine.sh [WS] [GOAL]
set -euo pipefail
# shellcheck source=../lib.sh
source "$(dirname "$0")/../lib.sh"
WS="${1:-$NRVNA_WS}"
GOAL="${2:-Write a cover letter for a senior engineer position}"
ensure_daemon "$WS"
refine=$(component refine)

nrvna exec "$refine" --ws "$WS" -- --rounds 1 "$GOAL"
