#!/usr/bin/env bash
# Full-scale benchmark on the device machine: makes (or reuses) the full-scale synthetic bundle, then runs
# `python -m ltx_demo bench` (or forward-bench) with the arguments given, writing results under $OUT. Usage:
#   scripts/device_bench.sh bench|forward-bench NAME [args...]
#   e.g. scripts/device_bench.sh bench seed-768 --resolutions 768x512;  scripts/device_bench.sh forward-bench fwd
# The bundle (~72 GiB) is more than the one-GPU machine's 64 GiB disk, so it lives in a RAM-backed tmpfs; a
# cold-start run there reads from RAM, so its page cache cannot be dropped (the results say "warm").
set -uo pipefail
command=$1; name=$2; shift 2
OUT=${OUT:-/tmp/device-out}
mkdir -p "$OUT"
if [ ! -d /tmp/site/ltx_core ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    >"$OUT/pip.log" 2>&1 || { echo "wheel install failed"; tail "$OUT/pip.log"; exit 1; }
fi
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 TQDM_DISABLE=1 PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
BUNDLE=/mnt/ltx-full/bundle
if [ ! -f "$BUNDLE/bundle.json" ]; then
  mkdir -p /mnt/ltx-full && (mountpoint -q /mnt/ltx-full || mount -t tmpfs -o size=90G tmpfs /mnt/ltx-full) || exit 1
  df -h /mnt/ltx-full /tmp / | tee "$OUT/disk-$name.txt"
  /usr/bin/time -v python3 -m ltx_demo make-bundle --scale full --out "$BUNDLE" >"$OUT/make-bundle.json" \
    2>"$OUT/make-bundle.log" || { tail -20 "$OUT/make-bundle.log"; exit 1; }
  grep -E "Elapsed|Maximum resident" "$OUT/make-bundle.log"
  python3 -m ltx_demo check-bundle --bundle "$BUNDLE" >"$OUT/check-bundle.json" 2>&1; echo "check-bundle rc=$?"
fi
if [ "${CHECKPOINT_ON_DISK:-0}" = 1 ] && [ ! -L "$BUNDLE/ltx-checkpoint.safetensors" ]; then
  # The checkpoint (46 GiB) to the machine's disk, the rest stays in the tmpfs: host-cached's pinned cache then
  # fits beside it in RAM, and cold-start reads of the transformer come from disk (the page cache can be dropped).
  mkdir -p /root/bundle-disk && /usr/bin/time -f "checkpoint to disk: %e s" \
    mv "$BUNDLE/ltx-checkpoint.safetensors" /root/bundle-disk/ && \
    ln -s /root/bundle-disk/ltx-checkpoint.safetensors "$BUNDLE/ltx-checkpoint.safetensors" || exit 1
  df -h / /mnt/ltx-full | tee -a "$OUT/disk-$name.txt"; free -g | tee -a "$OUT/disk-$name.txt"
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python3 -m ltx_demo "$command" --bundle "$BUNDLE" --output-dir /tmp/bench-mp4 --out "$OUT/$command-$name.json" "$@" \
  2> >(grep -v "^INFO" >"$OUT/$command-$name.log")
rc=$?
tail -c 3000 "$OUT/$command-$name.log"
python3 - "$OUT/$command-$name.json" <<'PY'
import json, sys
data = json.load(open(sys.argv[1]))
for c in data.get("configs", []):
    print(c["resolution"], c["quantization"], c["residency"], c["card"], c.get("variant"),
          [(r.get("elapsed_seconds"), r.get("peak_vram_gib"), r.get("resident_gib"), r.get("oom")) for r in c["runs"]],
          "identical:", c["identical_outputs"])
for f in data.get("forward", []):
    print(f["card"], f["shape"], f["quantization"], f.get("attention"), f.get("refused") or f["seconds"],
          f.get("ratio_to_bf16"), f.get("relative_error_vs_bf16"), f.get("achieved_tflops"),
          (f.get("profile") or {}).get("by_kind_ms"))
for b in data.get("baseline", []):
    print("stock", b["resolution"], [(r["elapsed_seconds"], r["peak_vram_gib"]) for r in b["runs"]])
PY
exit $rc
