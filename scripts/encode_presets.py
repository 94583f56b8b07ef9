"""How long writing the mp4 takes per x264 preset, and what each costs: the 768x512x97 clip of a portrait panning
slowly (natural-image content, unlike random weights' noise), PSNR of the decoded mp4 against its frames, file
size, and whether two encodes gave the same bytes. Usage: python scripts/encode_presets.py --out OUT.json"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import tempfile
import time
from pathlib import Path

import av
import numpy as np
from PIL import Image

from ltx_demo import media

PRESETS = ("medium", "fast", "veryfast", "superfast", "ultrafast")


def panning_clip(width: int = 768, height: int = 512, frames: int = 97) -> np.ndarray:
    portrait = Image.open(Path(__file__).resolve().parent.parent / "assets" / "astronaut.png").convert("RGB")
    portrait = portrait.resize((width + frames * 2, height + frames), Image.LANCZOS)
    pixels = np.asarray(portrait)
    return np.stack([pixels[i // 2 : i // 2 + height, i * 2 : i * 2 + width] for i in range(frames)])


def decoded(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    frames = panning_clip()
    audio = np.zeros((2, 48000 * 97 // 24), np.float32)
    rows = []
    base = dict(media.X264_OPTIONS)
    with tempfile.TemporaryDirectory() as tmp:
        for preset in PRESETS:
            media.X264_OPTIONS.clear()
            media.X264_OPTIONS.update(base | {"preset": preset})
            seconds, digests = [], set()
            for attempt in range(3):
                path = Path(tmp) / f"{preset}-{attempt}.mp4"
                started = time.perf_counter()
                media.write_mp4(frames, audio, 48000, 24, path)
                seconds.append(time.perf_counter() - started)
                digests.add(hashlib.sha256(path.read_bytes()).hexdigest())
            mse = ((decoded(path).astype(np.float64) - frames) ** 2).mean()
            rows.append(
                {
                    "preset": preset,
                    "seconds": [round(s, 3) for s in seconds],
                    "bytes": path.stat().st_size,
                    "psnr_db": round(10 * np.log10(255**2 / mse), 2),
                    "identical_bytes": len(digests) == 1,
                }
            )
            print(rows[-1], flush=True)
    media.X264_OPTIONS.clear()
    media.X264_OPTIONS.update(base)
    Path(args.out).write_text(json.dumps({"cpu_cores": os.cpu_count(), "options": base, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
