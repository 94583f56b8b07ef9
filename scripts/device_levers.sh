#!/usr/bin/env bash
# Issue 14's levers on the device machine, one call: (re)uses the full-scale bundle (scripts/device_bench.sh), then
# one stage-transformer forward at stage 1's batched shape and stage 2's shape per quantization x attention backend
# (eager with a kernel profile and FLOP count; then with CUDA graphs; then compiled blocks), the mp4 presets, and the
# roofline FLOPs at 768x512x97. Results under $OUT. Usage: bash scripts/device_levers.sh
set -uo pipefail
OUT=${OUT:-/tmp/device-out}
SHAPES=384x256x97/4,768x512x97
ATTN=sdpa,sdpa-flash,sdpa-cudnn,sdpa-efficient
bash scripts/device_bench.sh forward-bench levers --shapes $SHAPES --quantization bf16,fp8-cast,fp8-scaled-mm \
  --attentions $ATTN --profile --warmup 1 --repeats 3
. scripts/device_env.sh
python3 -m ltx_demo roofline --bundle $BUNDLE --out $OUT/roofline.json 2>$OUT/roofline.log | tail -1
python3 scripts/encode_presets.py --out $OUT/encode-presets.json 2>&1 | tail -5
bash scripts/device_bench.sh forward-bench graphs --shapes $SHAPES --quantization fp8-cast,fp8-scaled-mm,bf16 \
  --attentions sdpa,sdpa-cudnn,sdpa-flash --cuda-graphs --warmup 1 --repeats 3 | tail -20
timeout 170 bash scripts/device_bench.sh forward-bench compiled --shapes 384x256x97/4 --quantization fp8-scaled-mm \
  --attentions sdpa --compile-blocks --warmup 2 --repeats 3 | tail -5
echo "compile rc=$?"
