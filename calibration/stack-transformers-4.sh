#!/usr/bin/env bash
# Make the transformers-4 virtualenv (.venv-tf4) that `gpuplan calibrate --stack transformers-4` and
# `gpuplan calibrate-matrix calibration/cpu-matrix-tf4.toml` run their points in (app/calibration/stacks.py).
# torch first, from its own version pin, so pip never pulls a CUDA build; then calibration/stack-transformers-4.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv-tf4}
PYTHON=${PYTHON:-python3}
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/pip" install -q --upgrade pip
"$VENV/bin/pip" install -q "torch==2.13.0"
"$VENV/bin/pip" install -q -r calibration/stack-transformers-4.txt
"$VENV/bin/python" -c "import torch, transformers, peft, bitsandbytes; print('stack transformers-4:', transformers.__version__, 'peft', peft.__version__, 'bitsandbytes', bitsandbytes.__version__, 'torch', torch.__version__)"
