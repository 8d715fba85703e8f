#!/usr/bin/env bash
# Self-refinement (seed: "Self-Refinement Loop"): draft, critique, improve.
#
# usage: refine.sh [WS] [GOAL]
#   WS    workspace [$NRVNA_WS or ./workspace]; a daemon is started if none serves it
#   GOAL  what to write [a cover letter for a senior engineer position]
set -euo pipefail
# shellcheck source=../lib.sh
source "$(dirname "$0")/../lib.sh"
WS="${1:-$NRVNA_WS}"
GOAL="${2:-Write a cover letter for a senior engineer position}"
ensure_daemon "$WS"

# First draft.
draft=$(wrk "$WS" "$GOAL" | xargs flw "$WS")

# Critique.
critique=$(wrk "$WS" "Critique this draft. What's weak? $draft" | xargs flw "$WS")

# Improve.
final=$(wrk "$WS" "Improve this draft based on feedback:
Draft: $draft
Feedback: $critique" | xargs flw "$WS")

echo "$final"
