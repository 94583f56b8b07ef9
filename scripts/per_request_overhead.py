"""Per-request wall time of each residency mode on the tiny bundle (CPU), in a process that imports what the app
imports (the UI, gradio, transformers): what a request pays besides its compute, e.g. gc passes at releases.

Usage: python scripts/per_request_overhead.py [BUNDLE_DIR]   (default: the embedded tiny bundle); prints JSON.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
from pathlib import Path

import ltx_demo.ui  # noqa: F401  (the app's imports: a gc pass walks every object they made)
from ltx_demo.checkpoints import Bundle, embedded_bundle
from ltx_demo.engine import Engine
from ltx_demo.types import GenerationRequest

ASSETS = Path(__file__).resolve().parent.parent / "assets"


def main() -> None:
    bundle = Bundle.from_dir(Path(sys.argv[1])) if len(sys.argv) > 1 else embedded_bundle()
    report = {}
    with tempfile.TemporaryDirectory() as folder:
        engine = Engine(bundle, Path(folder), device="cpu")
        for mode in ("persistent", "cold-start", "host-cached"):
            seconds = []
            for seed in range(4):
                request = GenerationRequest(
                    image_path=str(ASSETS / "astronaut.png"),
                    audio_path=str(ASSETS / "speech_hello.wav"),
                    prompt="a woman speaks",
                    width=64,
                    height=64,
                    num_frames=9,
                    steps=2,
                    seed=seed,
                    quantization="fp8-cast",
                    residency=mode,
                )
                seconds.append(round(engine.generate(request).elapsed_seconds, 3))
            report[mode] = {"seconds": seconds, "median_after_first": statistics.median(seconds[1:])}
    print(json.dumps(report))


if __name__ == "__main__":
    main()
