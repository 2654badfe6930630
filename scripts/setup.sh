#!/usr/bin/env bash
# Create .venv and install evoprune with everything it needs. Safe to run again.
# Usage: bash scripts/setup.sh [extras]   e.g. bash scripts/setup.sh test
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
TORCH_VERSION="${EVOPRUNE_TORCH_VERSION:-2.13.0}"

if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
PIP=(.venv/bin/python -m pip --disable-pip-version-check --quiet)
# torch first, pinned, so pip takes the build its index or find-links offer for that version (a CPU
# wheel where one is configured; PyPI's own Linux wheel is the multi-GB CUDA build).
if ! .venv/bin/python -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '$TORCH_VERSION')" 2>/dev/null; then
    "${PIP[@]}" install "torch==$TORCH_VERSION"
fi
extras="${1:-}"
if [ -n "$extras" ]; then
    "${PIP[@]}" install -e ".[$extras]"
else
    "${PIP[@]}" install -e .
fi
