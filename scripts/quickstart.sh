#!/usr/bin/env bash
# Fresh machine -> the whole embedded demo: set up .venv, write the demo task world, train SFT on it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
.venv/bin/python main.py demo-data --out data/demo
.venv/bin/python main.py fit --config configs/demo/sft.yaml
