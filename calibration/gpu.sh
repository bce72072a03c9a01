#!/usr/bin/env bash
# The GPU calibration run, one command on the lent H200 (device tool: carry [".whl"], timeout ~560 s):
#   bash calibration/gpu.sh
# It installs the carried wheels, runs calibration/gpu-matrix.toml with torch.cuda.max_memory_allocated and writes
# $OUT/gpu-h200.jsonl (one line a point: plan, measured and estimated peaks, phases, environment, and the measured
# step times: step_times_s after torch.cuda.synchronize(), step_s = their median after the first, tokens_per_step;
# the device name torch reports maps to a gpuplan tier through app/core/data/device_names.json). Back here:
#   cp <files_at>/gpu-h200.jsonl calibration/results/ && gpuplan import-calibrations calibration/results/gpu-h200.jsonl
# Try it on the CPU first: OUT=/tmp/out SPEC=calibration/cpu-matrix.toml DEVICE=cpu LIMIT=2 bash calibration/gpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
: "${OUT:?set OUT to the folder that comes back}"
SPEC=${SPEC:-calibration/gpu-matrix.toml}
PYTHON=${PYTHON:-python3}
if compgen -G ".whl/*.whl" >/dev/null; then
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/gpuplan-site .whl/*.whl
  export PYTHONPATH=/tmp/gpuplan-site:$PWD
else
  export PYTHONPATH=$PWD
fi
export PYTHONUNBUFFERED=1 GPUPLAN_DATA_DIR=/tmp/gpuplan-data
(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true) > "$OUT/nvidia-smi.txt" 2>&1
args=(calibrate-matrix "$SPEC" --no-store --source gpu-h200 --report "$OUT/gpu-h200.jsonl")
[ -n "${DEVICE:-}" ] && args+=(--device "$DEVICE")
[ -n "${LIMIT:-}" ] && args+=(--limit "$LIMIT")
"$PYTHON" -m app.cli "${args[@]}" 2>&1 | tee "$OUT/log.txt"
