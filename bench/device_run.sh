#!/usr/bin/env bash
# The prepared GPU run of bench/bench_scale.py (issue 25), for a machine with one CUDA GPU and
# no network: run bench/device_wheels.sh first where the network is, carry .whl/ over, then
# from the repository root there:   bash bench/device_run.sh
# It installs the carried wheels beside the image's torch, prints the device, and runs the GPU
# plan for at most ~9 minutes (cells stop starting after --budget-s), writing JSON and the log
# to $OUT (or bench/results/).
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
out=${OUT:-bench/results}
mkdir -p "$out"
timeout 540 python3 bench/bench_scale.py --gpu --budget-s 400 --out "$out/scale_gpu.json" \
  2>&1 | tee "$out/scale_gpu.log"
