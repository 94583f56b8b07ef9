"""What media.Mp4Stream.put costs the decode's loop, with the frames' shared memory mapped at open (frame_size, as
the engine passes it; its pages faulted in on a thread) or at the first put (page faults inside the puts). Two puts
as ltx-core's tiled decode brings them at 97 frames (32, then 65), a pause before each standing in for the decoder;
random frames, any machine, no GPU. Writes the seconds of both puts per round.

Usage: python scripts/mp4_put_bench.py --out OUT.json [--width 768 --height 512 --rounds 5]"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from ltx_demo import media

DECODER_PAUSE_SECONDS = 0.3  # about one decode chunk at 768x512 on an H100 (docs/device/decode-mp4-768x512-h100.json)
CHUNKS = (32, 65)


def puts_seconds(folder: Path, frames: np.ndarray, audio: np.ndarray, map_at_open: bool) -> float:
    size = frames.shape[1:3]
    stream = media.Mp4Stream(
        folder / "clip.mp4", len(frames), 24, audio, 48000, frame_size=size if map_at_open else None
    )
    try:
        seconds, start = 0.0, 0
        for count in CHUNKS:
            time.sleep(DECODER_PAUSE_SECONDS)
            began = time.perf_counter()
            stream.put(frames[start : start + count])
            seconds += time.perf_counter() - began
            start += count
        return seconds
    finally:
        stream.abort()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--width", type=int, default=768)
    parser.add_argument("--height", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    frames = np.random.default_rng(0).integers(0, 256, (sum(CHUNKS), args.height, args.width, 3), dtype=np.uint8)
    audio = np.zeros((2, 48000 * 4), np.float32)
    runs = {"mapped at open (default)": [], "mapped at the first put": []}
    with tempfile.TemporaryDirectory() as folder:
        for _ in range(args.rounds):
            for name, at_open in zip(runs, (True, False), strict=True):
                runs[name].append(round(puts_seconds(Path(folder), frames, audio, at_open), 4))
    result = {
        "machine": platform.node(), "cpus": os.cpu_count(), "shape": f"{args.width}x{args.height}x{sum(CHUNKS)}",
        "chunks": CHUNKS, "median_puts_seconds": {name: statistics.median(v) for name, v in runs.items()}, "runs": runs,
    }  # fmt: skip
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["median_puts_seconds"]))


if __name__ == "__main__":
    main()
