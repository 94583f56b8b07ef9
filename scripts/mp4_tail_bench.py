"""Where the mp4's time goes on the frames a bench run wrote (the synthetic bundle's noise-like video, which x264
encodes far slower than a natural clip), and what the encoder settings change: the RGB -> yuv420p conversion
(swscale, in the encoder process) timed apart from the x264 encode, x264's slice vs frame threading, a fixed
thread count, and a faster preset. Each variant encodes the clip 3 times: its seconds, the seconds of the last
frames alone after the first chunk's (the tail a decode leaves: ltx-core's decoder yields 32 then 65 frames at 97),
the bytes, whether the 3 files are identical, and the PSNR of the decoded file against the frames.

Usage: python scripts/mp4_tail_bench.py --out OUT.json (MP4 ... | --newest-per-size DIR)"""

from __future__ import annotations

import argparse
import io
import json
import os
import time
from pathlib import Path

import av
import numpy as np

from ltx_demo import media

FIRST_CHUNK_FRAMES = 32  # the decoder's first temporal tile at 97 frames; the rest is the tail after the decode


def frames_of(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])


def to_yuv(frames: np.ndarray) -> list[av.VideoFrame]:
    rgb = (av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24") for frame in frames)
    return [frame.reformat(format="yuv420p") for frame in rgb]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float32) - b.astype(np.float32)) ** 2))
    return round(10 * np.log10(255.0**2 / mse), 2) if mse > 0 else float("inf")


def encode(frames, height: int, width: int, options: dict, thread_type: str | None, threads: int | None, rgb: bool):
    """One encode into memory: (seconds, tail seconds, bytes)."""
    buffer = io.BytesIO()
    container = av.open(buffer, mode="w", format="mp4")
    stream = container.add_stream("libx264", rate=25, options=options)
    stream.pix_fmt, stream.height, stream.width = "yuv420p", height, width
    if thread_type:
        stream.codec_context.thread_type = thread_type
    if threads is not None:
        stream.codec_context.thread_count = threads
    start = time.perf_counter()
    tail_start = start
    for index, frame in enumerate(frames):
        if index == FIRST_CHUNK_FRAMES:
            tail_start = time.perf_counter()
        if rgb:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
        container.mux(stream.encode(frame))
    container.mux(stream.encode())
    container.close()
    end = time.perf_counter()
    return round(end - start, 3), round(end - tail_start, 3), buffer.getvalue()


def variants():
    """(name, options, PyAV thread type, thread count, rgb24 in). x264's own threading is set in its params: the
    default's sliced-threads=0 is frame threads; without it PyAV asks for slice threads (the default before
    2026-12-06, which docs/device/mp4-tail-1280x768-h100.json measured as 'current')."""
    base = media.X264_OPTIONS
    slices = {**base, "x264-params": "rc-lookahead=0"}
    yield "current: rgb24 in, swscale in the encoder, media.X264_OPTIONS", base, None, None, True
    yield "rgb24 in, slice threads", slices, None, None, True
    yield "yuv420p in (converted before), slice threads", slices, None, None, False
    yield "yuv420p in, frame threads", base, None, None, False
    yield "yuv420p in, frame threads, 8 threads", base, None, 8, False
    yield "yuv420p in, slice threads, 16 threads", slices, None, 16, False
    yield "yuv420p in, superfast, frame threads", {**base, "preset": "superfast"}, None, None, False
    yield "yuv420p in, ultrafast, frame threads", {**base, "preset": "ultrafast"}, None, None, False


def measure(path: Path) -> dict:
    frames = frames_of(path)
    _, height, width, _ = frames.shape
    start = time.perf_counter()
    converted = to_yuv(frames)
    conversion = round(time.perf_counter() - start, 3)
    rows = []
    for name, options, thread_type, threads, rgb in variants():
        source = frames if rgb else converted
        runs = [encode(source, height, width, options, thread_type, threads, rgb) for _ in range(3)]
        data = runs[0][2]
        with av.open(io.BytesIO(data)) as container:
            decoded = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
        rows.append(
            {
                "variant": name,
                "seconds": [r[0] for r in runs],
                "tail_seconds": [r[1] for r in runs],
                "bytes": len(data),
                "identical_bytes": len({r[2] for r in runs}) == 1,
                "psnr_db": psnr(decoded, frames),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return {"source": str(path), "frames": len(frames), "size": f"{width}x{height}", "conversion_seconds": conversion,
            "rows": rows}  # fmt: skip


def newest_per_size(folder: Path) -> list[Path]:
    newest: dict[tuple[int, int], Path] = {}
    for path in sorted(folder.rglob("*.mp4"), key=lambda p: p.stat().st_mtime):
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            newest[stream.width, stream.height] = path
    return list(newest.values())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("mp4", nargs="*", type=Path)
    parser.add_argument("--newest-per-size", type=Path, help="the newest mp4 of each frame size under this folder")
    args = parser.parse_args()
    if args.newest_per_size:
        args.mp4 += newest_per_size(args.newest_per_size)
    result = {"cpu_cores": os.cpu_count(), "pyav": av.__version__, "options": media.X264_OPTIONS,
              "clips": [measure(p) for p in args.mp4]}  # fmt: skip
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
