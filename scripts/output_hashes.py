"""Output hashes (decoded frames + audio) per residency mode, quantization and guidance batching on the tiny bundle.

A refactor keeps behaviour: run this before and after it (`python scripts/output_hashes.py OUT.json`) and compare.
"""

import itertools
import json
import logging
import sys
import tempfile

from ltx_demo import bench
from ltx_demo.checkpoints import embedded_bundle
from ltx_demo.engine import Engine
from ltx_demo.types import GenerationRequest

logger = logging.getLogger("output_hashes")


def main(out: str) -> None:
    engine = Engine(embedded_bundle(), tempfile.mkdtemp(), cold_start_cache_dir=None)
    hashes = {}
    modes = ("persistent", "cold-start", "host-cached")
    for quantization, residency, batched in itertools.product(("fp8-cast", "bf16"), modes, (True, False)):
        request = GenerationRequest(
            image_path="assets/astronaut.png",
            audio_path="assets/speech_hello.wav",
            prompt="A woman astronaut speaks calmly to the camera.",
            width=128, height=128, num_frames=17, steps=3, seed=42,
            quantization=quantization, residency=residency, batch_guidance=batched,
        )  # fmt: skip
        key = f"{quantization} {residency} batch={batched}"
        hashes[key] = bench.output_hash(engine.generate(request).output)
        logger.warning("%s %s", key, hashes[key][:16])
    with open(out, "w") as f:
        json.dump(hashes, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1])
