#!/usr/bin/env bash
# The GPU check, run on the device machine from the repo root: installs the carried wheels, runs the gpu-marked
# tests, then one small CUDA generate per quantization; everything it measures lands as JSON under $OUT.
# Carry: .whl (ltx-core, ltx-pipelines, transformers 4.57.x, huggingface-hub, tokenizers, av, soundfile, nvidia-ml-py)
set -uo pipefail
OUT=${OUT:-/tmp/device-out}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  >"$OUT/pip.log" 2>&1 || { echo "wheel install failed"; tail "$OUT/pip.log"; exit 1; }
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 TQDM_DISABLE=1 LTX_DEMO_CACHE=/tmp/ltx-demo-cache
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import torch, transformers, ltx_core; print('torch', torch.__version__, 'transformers', transformers.__version__)" \
  | tee -a "$OUT/gpu.txt"

python3 -m pytest -m gpu tests/test_gpu.py -q -p no:cacheprovider -o addopts="" 2>&1 | tee "$OUT/gpu-tests.log"
tests_rc=${PIPESTATUS[0]}

for q in bf16 fp8-cast; do
  for r in persistent cold-start; do
    python3 -m ltx_demo generate --quantization "$q" --residency "$r" --width 256 --height 256 --num-frames 33 \
      --steps 8 --seed 42 --output-dir /tmp/device-mp4 >"$OUT/generate-$q-$r.json" 2>>"$OUT/generate.err"
    echo "generate $q $r: rc=$? $(python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(d['device'], d['elapsed_seconds'], 's peak', d['peak_vram_gib'], 'GiB')" "$OUT/generate-$q-$r.json" 2>&1)"
  done
done
exit "$tests_rc"
