#!/usr/bin/env bash
# Fills .whl/ (git-ignored; named in the device tool's `carry`) with the wheels the GPU machine lacks, for its
# Python 3.12 and CUDA 13 torch: ltx-core and ltx-pipelines 1.0.0, a transformers 4.57 (the machine's 5.x breaks
# ltx-core 1.0.0's Gemma loader), PyAV, soundfile and bitsandbytes. bitsandbytes' wheel carries a library per CUDA
# and ROCm release (43 MB); only the CUDA 13 ones and the CPU one are kept, so the carry stays under 64 MiB.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
pip download -q -d .whl --python-version 3.12 --only-binary=:all: --no-deps \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux2014_x86_64 \
  --platform manylinux_2_17_x86_64 \
  ltx-core==1.0.0 ltx-pipelines==1.0.0 "transformers>=4.57,<4.58" "huggingface-hub<1.0" "tokenizers<0.23" \
  av soundfile cffi pycparser "bitsandbytes>=0.45" 2>&1 | grep -v "^WARNING: Location" || true
python3 - <<'PY'
import glob, os, zipfile
for wheel in glob.glob(".whl/bitsandbytes-*.whl"):
    slim = wheel + ".slim"
    with zipfile.ZipFile(wheel) as source, zipfile.ZipFile(slim, "w", zipfile.ZIP_DEFLATED) as target:
        for item in source.infolist():
            name = os.path.basename(item.filename)
            if name.startswith("libbitsandbytes_") and not name.startswith(("libbitsandbytes_cuda13", "libbitsandbytes_cpu")):
                continue
            target.writestr(item, source.read(item))
    os.replace(slim, wheel)
PY
du -sh .whl
