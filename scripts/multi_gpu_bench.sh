#!/usr/bin/env bash
# Several GPUs (issue 17) on a 2-GPU machine (nvidia-h200-x2), full-scale synthetic bundle, 768x512x97, 30 steps:
#   1. requests per minute: one engine on GPU 0 vs two workers (app.py --gpus 0,1's pool) serving two clients at once
#   2. guidance parallel: stage 1's passes on 2 GPUs (--parallel guidance) vs the same grouping on one GPU
#      (--guidance-split 2) and the one-GPU default (one batched call): stage-1 seconds, end to end, output hashes
# Writes JSON under $OUT (multi-gpu-throughput.json, guidance-*.json, multi-gpu-guidance.json). Usage:
#   OUT=/tmp/out scripts/multi_gpu_bench.sh [throughput|guidance|all]
# Written by reading, checked on the CPU only (scripts/multi_gpu_bench.py throughput --gpus cpu:2, tiny bundle).
set -uo pipefail
what=${1:-all}
OUT=${OUT:-/tmp/device-out}
mkdir -p "$OUT"
if [ ! -d /tmp/site/ltx_core ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    >"$OUT/pip.log" 2>&1 || { echo "wheel install failed"; tail "$OUT/pip.log"; exit 1; }
fi
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 TQDM_DISABLE=1 PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
# NVLink multicast stays off (the project sets these itself too: ltx_demo/devices.py).
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
BUNDLE=/mnt/ltx-full/bundle
if [ ! -f "$BUNDLE/bundle.json" ]; then  # ~72 GiB: a RAM-backed tmpfs, as scripts/device_bench.sh makes it
  mkdir -p /mnt/ltx-full && (mountpoint -q /mnt/ltx-full || mount -t tmpfs -o size=90G tmpfs /mnt/ltx-full) || exit 1
  python3 -m ltx_demo make-bundle --scale full --out "$BUNDLE" >"$OUT/make-bundle.json" 2>"$OUT/make-bundle.log" \
    || { tail -20 "$OUT/make-bundle.log"; exit 1; }
fi
nvidia-smi --query-gpu=index,name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpus.txt"
SHAPE=(--width 768 --height 512 --num-frames 97 --steps 30 --seed 42)
rc=0

if [ "$what" = throughput ] || [ "$what" = all ]; then
  python3 scripts/multi_gpu_bench.py throughput --bundle "$BUNDLE" --gpus 0,1 "${SHAPE[@]}" --requests 3 \
    --warm-runs 1 --output-dir /tmp/bench-mp4/throughput --out "$OUT/multi-gpu-throughput.json" \
    2> >(grep -v "^INFO" >"$OUT/multi-gpu-throughput.log") || rc=1
fi

if [ "$what" = guidance ] || [ "$what" = all ]; then
  common=(--bundle "$BUNDLE" "${SHAPE[@]}" --warm-runs 1 --cold-start-cache-dir off --output-dir /tmp/bench-mp4/guidance)
  CUDA_VISIBLE_DEVICES=0 python3 -m ltx_demo generate "${common[@]}" \
    >"$OUT/guidance-1gpu-default.json" 2>"$OUT/guidance-1gpu-default.log" || rc=1
  CUDA_VISIBLE_DEVICES=0 python3 -m ltx_demo generate "${common[@]}" --guidance-split 2 \
    >"$OUT/guidance-1gpu-split2.json" 2>"$OUT/guidance-1gpu-split2.log" || rc=1
  python3 -m ltx_demo generate "${common[@]}" --parallel guidance --gpus 0,1 \
    >"$OUT/guidance-2gpu-parallel.json" 2>"$OUT/guidance-2gpu-parallel.log" || rc=1
  python3 scripts/multi_gpu_bench.py summarize --default "$OUT/guidance-1gpu-default.json" \
    --grouping "$OUT/guidance-1gpu-split2.json" --parallel "$OUT/guidance-2gpu-parallel.json" \
    --out "$OUT/multi-gpu-guidance.json" || rc=1
fi
tail -n 5 "$OUT"/*.log 2>/dev/null | tail -c 3000
exit $rc
