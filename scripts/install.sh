#!/usr/bin/env bash
# Install SAGE daemon with the CPU engines and the shipped models into ./.venv (idempotent).
#   EXTRAS=cpu,test bash scripts/install.sh     # which extras (default: cpu)
#   VENV=/path/to/venv bash scripts/install.sh  # where
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
EXTRAS="${EXTRAS:-cpu}"
PYTHON="${PYTHON:-python3}"

if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --upgrade pip setuptools wheel
# torch first, pinned to the CPU build: otherwise sentence-transformers pulls a multi-GB CUDA build.
if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
    "$VENV/bin/python" -m pip install --quiet "${TORCH_SPEC:-torch==2.13.0}"
fi
# llama-cpp-python compiles llama.cpp (about 4 minutes the first time; pip caches the wheel).
"$VENV/bin/python" -m pip install --quiet -e ".[$EXTRAS]"
echo "installed into $VENV ($("$VENV/bin/sage-daemon" --version))"
