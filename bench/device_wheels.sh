#!/usr/bin/env bash
# Fetch, on this (networked) machine, the wheels the GPU machine lacks for bench/bench_scale.py:
# its image has torch, transformers, PEFT and accelerate but no TRL or datasets, and its Python
# is 3.12. The versions are the ones this project is tested with here (the GPU image's own
# transformers and PEFT are older), so the GPU run trains the same code as the CPU suite.
# Usage, from the repository root:   bash bench/device_wheels.sh   (writes .whl/, git-ignored)
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-python3}
ver() { "$py" -m pip show "$1" 2>/dev/null | sed -n 's/^Version: //p'; }
pins=()
for name in trl datasets dill multiprocess transformers peft accelerate; do
  v=$(ver "$name"); pins+=("$name${v:+==$v}")
done
rm -rf .whl && mkdir -p .whl
"$py" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d .whl "${pins[@]}"
du -sh .whl && ls .whl
