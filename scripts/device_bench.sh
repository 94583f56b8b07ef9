#!/usr/bin/env bash
# Full-scale benchmark on the device machine: makes (or reuses) the full-scale synthetic bundle, then runs
# `python -m ltx_demo bench` (or forward-bench) with the arguments given, writing results under $OUT. Usage:
#   scripts/device_bench.sh bench|forward-bench NAME [args...]
#   e.g. scripts/device_bench.sh bench seed-768 --resolutions 768x512;  scripts/device_bench.sh forward-bench fwd
# The bundle: scripts/device_env.sh's ensure_full_bundle (a tmpfs; cold-start's page cache stays warm there).
set -uo pipefail
command=$1; name=$2; shift 2
. scripts/device_env.sh
ensure_full_bundle
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
