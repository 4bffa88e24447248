#!/usr/bin/env bash
# Install, start the daemon on the embedded defaults, run the main job — ingest the repository's
# docs into the vector collection `docs` (examples/rag.toml) — then ask it a question with the
# shipped SmolLM2 chat model, and stop the daemon.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
VENV="${VENV:-.venv}"
export HF_HUB_OFFLINE=1
RUN="$(mktemp -d)"
export SAGE_SOCKET="$RUN/sage.sock"
"$VENV/bin/sage-daemon" --set "paths.runtime_dir='$RUN'" --port "${SAGE_PORT:-8888}" &
DAEMON=$!
trap 'kill -TERM $DAEMON 2>/dev/null; wait $DAEMON 2>/dev/null; rm -rf "$RUN"' EXIT
for _ in $(seq 1 100); do
    "$VENV/bin/sagectl" ping >/dev/null 2>&1 && break
    sleep 0.2
done
"$VENV/bin/sagectl" status
"$VENV/bin/sagectl" job run examples/rag.toml          # chunk → embed → index, a progress bar per stage
"$VENV/bin/sagectl" collection list
"$VENV/bin/sagectl" ask "${QUESTION:-How do I run the test suite?}"
