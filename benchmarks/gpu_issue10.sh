#!/usr/bin/env bash
# Issue 10 on one GPU machine (one H100, 16 cores, no network), run once from the repo root:
#   OUT=/some/folder bash benchmarks/gpu_issue10.sh
# Must end within 4 minutes in all; every step has its own `timeout`, and a step that fails
# or times out does not stop the next one (benchmarks write their JSON after every row).
# Writes into $OUT: gpu_issue10.log (everything printed), device.txt, density_gpu.json,
# density_cpu_ivf.json (+ what the distributed step adds: at most 8 files come back).
#
# Python (benchmarks/gpu_env.sh): the repo's .venv if it works there (it usually does not
# travel: 6.7 GB, and its interpreter links to this machine's pyenv), else the machine's
# python3 (torch, no faiss) with flexsample installed from this checkout and wheels from .whl/
# (carry a faiss-cpu wheel there for cp312: without faiss, flexsample's estimators do not
# import; `bash benchmarks/gpu_issue22.sh prepare` fetches it).
set -u
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
OUT=$(realpath "$OUT")
REPO=$(pwd)
exec > >(tee "$OUT/gpu_issue10.log") 2>&1
export PYTHONUNBUFFERED=1
END=$((SECONDS + 330 - ${RESERVE_S:-150}))  # RESERVE_S: seconds kept for the distributed step
step() {  # step LIMIT CMD...: CMD under `timeout`, cut to the deadline; skipped past it
  local t=$((END - SECONDS)); [ "$t" -lt "$1" ] || t=$1
  shift
  if [ "$t" -le 5 ]; then echo "SKIPPED (no time left): $*"; return 124; fi
  timeout "$t" "$@"
}
DEVICE=${DEVICE:-cuda} SIZES=${SIZES:-250000,1000000} CPU_SIZE=${CPU_SIZE:-1000000}  # smoke tests
set -x
start=$SECONDS
cat /proc/loadavg; nproc
timeout 10 nvidia-smi -L | tee "$OUT/device.txt"

# ---- 1. python with torch (CUDA), faiss and flexsample (seconds; at most 100 s) ------------
CHECK='import torch, faiss, flexsample.estimators.density as d; assert torch.cuda.is_available() or "'$DEVICE'" == "cpu"; print("torch", torch.__version__, "faiss", faiss.__version__, "faiss gpus", d.faiss_gpu_count())'
# shellcheck source=benchmarks/gpu_env.sh
. "$REPO/benchmarks/gpu_env.sh"
gpu_python "$REPO" "$CHECK" || echo "NO WORKING PYTHON FOR flexsample+faiss"
echo "setup done at ${SECONDS}s"
cd /tmp  # import the installed flexsample, not the checkout's folders

# ---- 2. density kNN on the GPU at 250k and 1M x 512, every row a query (<= 120 s) ---------
# faiss-gpu: flat and IVF faiss GPU indexes; faiss CPU-only: the exact torch path on CUDA
# (the `path` column and info.faiss_gpus say which ran).
step 120 "$PY" "$REPO/benchmarks/density_scale.py" --device "$DEVICE" --sizes "$SIZES" \
  --kinds flat,ivf,torch --recall-queries 500 --json "$OUT/density_gpu.json"
echo "density gpu: exit $? at ${SECONDS}s"

# ---- 3. for comparison: faiss IVF on the 16 CPU cores at 1M, 20k queries (<= 60 s) --------
# (what a CUDA run with a CPU-only faiss would cost if it searched on the CPU). Skip it with
# SKIP_CPU_IVF=1 when the distributed step below needs the time.
if [ -z "${SKIP_CPU_IVF:-}" ]; then
  step 60 "$PY" "$REPO/benchmarks/density_scale.py" --device cpu --sizes "$CPU_SIZE" \
    --kinds ivf --queries 20000 --recall-queries 200 --json "$OUT/density_cpu_ivf.json"
  echo "density cpu ivf: exit $? at ${SECONDS}s"
fi

# ---- 4. scoring throughput on the GPU (1 process per GPU), then a CUDA smoke run -------------
timeout 90 "$PY" "$REPO/benchmarks/distributed_scoring.py" --device cuda --backbone resnet18 \
  --size 224 --channels 3 --n 20000 --full-n 2000 --json "$OUT/scoring_gpu.json"
echo "distributed scoring gpu: exit $? at ${SECONDS}s"
# the whole run on CUDA in one process (the DDP code paths stay off without torchrun)
(mkdir -p /tmp/run && cd /tmp/run && timeout 60 "$PY" -m flexsample run --rounds 2 \
  --epochs-per-round 1 --device cuda --quiet --out cuda-run && \
  "$PY" -c "import json; r=json.load(open('cuda-run/results.json')); \
print('cuda run', r['world_size'], r['test']['balanced_accuracy'])")
echo "cuda run: exit $? at ${SECONDS}s"
# ---- end of the distributed scoring step -------------------------------------------------

cat /proc/loadavg
echo "gpu_issue10.sh done in $((SECONDS - start))s"
