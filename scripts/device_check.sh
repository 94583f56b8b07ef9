#!/usr/bin/env bash
# The GPU check, run on the device machine from the repo root: installs the carried wheels, runs every gpu-marked
# test, then one small CUDA generate per quantization and residency; what it measures lands under $OUT.
# (The gpu-marked files only: the machine has no gradio, which the UI and worker tests import.)
# Usage: scripts/device_check.sh [pytest -k expression]   (with one, only the selected tests and no generates)
# Carry: .whl (scripts/device_env.sh lists the wheels).
set -uo pipefail
. scripts/device_env.sh
export LTX_DEMO_CACHE=/tmp/ltx-demo-cache
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import torch, transformers, ltx_core; print('torch', torch.__version__, 'transformers', transformers.__version__)" \
  | tee -a "$OUT/gpu.txt"

select=${1:-}
python3 -m pytest -m gpu tests/test_gpu*.py tests/test_streamed_read.py -q -p no:cacheprovider -o addopts="" -rA ${select:+-k "$select"} 2>&1 \
  | tee "$OUT/gpu-tests.log" | tail -40
tests_rc=${PIPESTATUS[0]}
[ -n "$select" ] && exit "$tests_rc"

: >"$OUT/generate.jsonl"
for q in bf16 fp8-cast fp8-scaled-mm; do
  for r in persistent cold-start; do
    python3 -m ltx_demo generate --quantization "$q" --residency "$r" --width 256 --height 256 --num-frames 33 \
      --steps 8 --seed 42 --output-dir /tmp/device-mp4 2>>"$OUT/generate.err" | python3 -c \
      "import json,sys; d=json.load(sys.stdin); print(json.dumps(d)); print('generate', d['quantization'], d['residency'], d['device'], d['elapsed_seconds'], 's peak', d['peak_vram_gib'], 'GiB', d['counters'], file=sys.stderr)" \
      >>"$OUT/generate.jsonl"
  done
done
exit "$tests_rc"
