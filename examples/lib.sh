# Shared by the example scripts (source it; it is not a program).
#
# Settings, all from the environment:
#   NRVNA_WS          workspace when a script's first argument is absent [./workspace]
#   NRVNA_MODEL       model for the daemons the scripts start: a .gguf path, or part of
#                     a file name in ~/.cache/nrvna/models [SmolLM2-135M-Instruct]
#   NRVNA_WORKERS     workers of those daemons [2]
#   NRVNA_COMPONENTS  where the pattern components (*.wasm) are
#                     [guests/target/wasm32-wasip2/release of this checkout]
# nrvnad, wrk, flw and nrvna must be on PATH (cargo install --path host/cli, or
# PATH="$PWD/target/release:$PATH").

EXAMPLES_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
: "${NRVNA_WS:=./workspace}"
: "${NRVNA_MODEL:=SmolLM2-135M-Instruct}"
: "${NRVNA_WORKERS:=2}"
: "${NRVNA_COMPONENTS:=$EXAMPLES_DIR/../guests/target/wasm32-wasip2/release}"

# Scratch files of this script, removed at exit.
NRVNA_TMP="$(mktemp -d)"
_nrvna_started=()

_nrvna_cleanup() {
    local pid
    for pid in "${_nrvna_started[@]}"; do
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$NRVNA_TMP"
}
trap _nrvna_cleanup EXIT

_nrvna_ready() {
    nrvna status "$1" --json 2>/dev/null | grep -q '"daemon":"ready"'
}

# ensure_daemon WS: starts nrvnad on WS unless one is already serving it; a daemon
# started here is stopped when the script exits. Its log goes to $NRVNA_TMP.
ensure_daemon() {
    local ws=$1 pid
    if _nrvna_ready "$ws"; then
        return 0
    fi
    mkdir -p "$ws"
    nrvnad "$NRVNA_MODEL" "$ws" "$NRVNA_WORKERS" \
        </dev/null >/dev/null 2>>"$NRVNA_TMP/nrvnad.log" &
    pid=$!
    _nrvna_started+=("$pid")
    for _ in $(seq 1200); do
        _nrvna_ready "$ws" && return 0
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "nrvnad on $ws exited:" >&2
            cat "$NRVNA_TMP/nrvnad.log" >&2
            exit 1
        fi
        sleep 0.1
    done
    echo "nrvnad on $ws was not ready after 120 s" >&2
    exit 1
}

# component NAME: the path of a pattern component, or an error saying how to build it.
component() {
    local path="$NRVNA_COMPONENTS/$1.wasm"
    if [ ! -f "$path" ]; then
        echo "$path is missing: build the components with" >&2
        echo "  (cd guests && cargo build --release --target wasm32-wasip2)" >&2
        echo "or point NRVNA_COMPONENTS at the directory holding $1.wasm" >&2
        exit 1
    fi
    printf '%s\n' "$path"
}
