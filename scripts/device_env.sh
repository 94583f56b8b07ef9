#!/usr/bin/env bash
# Sourced by the device scripts (scripts/device_*.sh, multi_gpu_bench.sh) on the GPU machine, from the repo root:
# installs the carried wheels (.whl: ltx-core, ltx-pipelines, transformers 4.57.x, huggingface-hub, tokenizers, av,
# soundfile, cffi, pycparser, bitsandbytes) into /tmp/site once per warm machine, exports the environment every
# command there runs with, and defines ensure_full_bundle. Sets OUT (default /tmp/device-out) and BUNDLE.
OUT=${OUT:-/tmp/device-out}
mkdir -p "$OUT"
if [ ! -d /tmp/site/ltx_core ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    >"$OUT/pip.log" 2>&1 || { echo "wheel install failed"; tail "$OUT/pip.log"; exit 1; }
fi
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 TQDM_DISABLE=1 PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True OUT
# NVLink multicast stays off (the project sets these itself too: ltx_demo/devices.py).
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
BUNDLE=/mnt/ltx-full/bundle

# The full-scale synthetic bundle (~72 GiB) in a RAM-backed tmpfs: more than the one-GPU machine's 64 GiB disk. A
# cold-start run there reads from RAM, so its page cache cannot be dropped (the results say "warm").
ensure_full_bundle() {
  [ -f "$BUNDLE/bundle.json" ] && return 0
  mkdir -p /mnt/ltx-full && (mountpoint -q /mnt/ltx-full || mount -t tmpfs -o size=90G tmpfs /mnt/ltx-full) || exit 1
  df -h /mnt/ltx-full /tmp / >"$OUT/disk.txt"
  /usr/bin/time -v python3 -m ltx_demo make-bundle --scale full --out "$BUNDLE" >"$OUT/make-bundle.json" \
    2>"$OUT/make-bundle.log" || { tail -20 "$OUT/make-bundle.log"; exit 1; }
  grep -E "Elapsed|Maximum resident" "$OUT/make-bundle.log"
  python3 -m ltx_demo check-bundle --bundle "$BUNDLE" >"$OUT/check-bundle.json" 2>&1
  echo "check-bundle rc=$?"
}
