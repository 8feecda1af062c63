#!/usr/bin/env bash
# Fresh machine -> the whole embedded demo: set up .venv, then demo data -> SFT -> comparisons -> reward model
# -> PPO-ptx -> evaluation report (python main.py pipeline; re-running skips finished stages).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
.venv/bin/python main.py pipeline --config configs/demo/pipeline.yaml
