#!/usr/bin/env bash
# Creates .venv (if missing) and installs kiwi_jax with pinned dependencies.
#   bash scripts/setup.sh         # library + main job (no torch)
#   bash scripts/setup.sh --dev   # + PyTorch reference stack and test tools
# torch==2.13.0 is installed before everything else: any other order lets a
# dependency pull a CUDA build of torch (gigabytes).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q -U pip
if [ "${1:-}" = "--dev" ]; then
  .venv/bin/python -m pip install -q torch==2.13.0
  .venv/bin/python -m pip install -q -r requirements-dev.txt
else
  .venv/bin/python -m pip install -q -r requirements.txt
fi
.venv/bin/python -m pip install -q --no-deps -e .
