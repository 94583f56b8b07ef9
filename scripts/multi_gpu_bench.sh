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
. scripts/device_env.sh
ensure_full_bundle
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
