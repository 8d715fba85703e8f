#!/usr/bin/env bash
# Event-driven, inside a component: `batch` submits every question and then reacts to
# each job as it ends (jobs.wait-any, no polling), refilling its window of jobs in
# flight. It prints the results in input order once all have ended, where
# ../shell/watch.sh prints each the moment it lands.
#
# usage: watch.sh [WS] [QUESTION...]
set -euo pipefail
# shellcheck source=../lib.sh
source "$(dirname "$0")/../lib.sh"
WS="${1:-$NRVNA_WS}"
shift || true
questions=("$@")
if [ ${#questions[@]} -eq 0 ]; then
    questions=("Question 1: what is a daemon?" "Question 2: what is a workspace?")
fi
ensure_daemon "$WS"
batch=$(component batch)

nrvna exec "$batch" --ws "$WS" -- "${questions[@]}"
