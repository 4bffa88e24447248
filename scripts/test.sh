#!/usr/bin/env bash
# Install the test dependencies into ./.venv and run the whole suite (about 10 minutes on 2 cores).
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -m "not slow" -x`.
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS="${EXTRAS:-cpu,test}" bash scripts/install.sh
export HF_HUB_OFFLINE=1
# The type checker first (pyproject.toml's [tool.mypy]: strict on core, control, engines.base and
# sage_client): a contract that drifts fails here before any test runs.
"${VENV:-.venv}/bin/python" -m mypy
exec "${VENV:-.venv}/bin/python" -m pytest "$@"
