#!/usr/bin/env bash
# The CUDA checks, as one script for a GPU machine with PyTorch but no network: find or
# install a Python with flexsample (benchmarks/gpu_env.sh: carried wheels in .whl/ and this
# checkout), run `flexsample run` on CUDA (the default digits-lt run and a synthetic
# ISIC-sized run with a timm resnet18), then the GPU scoring benchmark. Results land in $OUT
# (or ./gpu-out).
set -u
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
OUT=$(realpath "$OUT")
REPO=$(pwd)
export PYTHONUNBUFFERED=1
# shellcheck source=benchmarks/gpu_env.sh
. "$REPO/benchmarks/gpu_env.sh"
gpu_python "$REPO" "import torch, flexsample.workflows.api" || exit 1
nvidia-smi -L | tee "$OUT/device.txt"
cd /tmp  # so that `$PY -m flexsample` imports the installed package, not ./flexsample
"$PY" -m flexsample --version

keep() {  # copy a run's small outputs to $OUT/<name>-<file>
  for f in results.json rounds.jsonl; do cp "$1/$f" "$OUT/$2-$f" 2>/dev/null; done
}
{ time "$PY" -m flexsample run --device cuda --out /tmp/r-default --quiet --overwrite ; } 2>&1 | tail -5
keep /tmp/r-default digits
{ time "$PY" -m flexsample run --device cuda --dataset synthetic-lt --profile isic2019-r100 \
    --image-size 64 --backbone resnet18 --rounds 2 --epochs-per-round 1 --batch-size 128 \
    --out /tmp/r-synth --quiet --overwrite ; } 2>&1 | tail -5
keep /tmp/r-synth synthetic
if [ -z "${SKIP_SCORING:-}" ]; then
  timeout 300 "$PY" "$REPO/benchmarks/gpu_scoring.py" --out "$OUT/gpu" 2>&1 | tail -25
fi
