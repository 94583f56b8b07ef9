"""The decode and the mp4 together, without the transformer: ltx-core's full-scale video decoder (the synthetic
bundle's weights, made here from the same seeds, so no 72 GiB bundle is needed) decodes a random latent through
ltx-core's tiled decode_video, and each chunk goes through the engine's pipeline.host_frames into media.Mp4Stream as
the engine's decode does. Variants (Variant): x264's frame or slice threads, its thread count, the encoder process's
cores, the frames' memory mapped at open or at the first put, the chunk put as ltx-core's channels-last view (before
host_frames), the spatial tile size, cuDNN's benchmark mode; and the decode with no mp4. Rounds interleave the
variants; each reports the decode's seconds (with the encode overlapping it), the tail after it (close), their sum,
the decode's peak device memory, and the file's sha256 (the same seed must give the same file; a variant with the
default's x264 settings and tiles must give the default's file); a decode alone, how far its frames are from the
default tiling's (levels of 255).

Usage: python scripts/decode_mp4_bench.py --out OUT.json [--width 768 --height 512 --num-frames 97 --rounds 3]"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ltx_demo import media, synthetic
from ltx_demo.pipeline import host_frames

FRAME, SLICE = "rc-lookahead=0:sliced-threads=0", "rc-lookahead=0"


@dataclass(frozen=True, slots=True)
class Variant:
    """One way to run the decode and the mp4. mp4 False: the decode alone. x264_params: frame or slice threads;
    threads: x264's count (None: its own 1.5 per core); cores_off: the first N cores kept off the encoder process (left
    to the decoder's); map_at_open: the frames' memory mapped when the stream opens, as the engine does (False: at the
    first put, page faults in the decode's loop); contiguous: the chunk made contiguous by host_frames, as the engine
    does (False: ltx-core's channels-last view copied as it is, the put gathering it); tile_pixels: the spatial tile
    size (None: ltx-core's default 512 px; "frame": the frame's longer side, one spatial tile); cudnn_benchmark: cuDNN
    times its convolution algorithms per shape (deterministic ones only) instead of its heuristics."""

    mp4: bool = True
    x264_params: str = FRAME
    threads: int | None = None
    cores_off: int = 0
    map_at_open: bool = True
    contiguous: bool = True
    tile_pixels: int | str | None = None
    cudnn_benchmark: bool = False


# No longer variants: the encoder's niceness (no difference on the H100, docs/benchmarks.md, 2026-12-06).
DEFAULT = "frame threads (default)"
VARIANTS = {
    "decode alone": Variant(mp4=False),
    "decode alone, frame-wide tiles": Variant(mp4=False, tile_pixels="frame"),
    "decode alone, 1024 px tiles": Variant(mp4=False, tile_pixels=1024),
    "decode alone, cuDNN benchmark": Variant(mp4=False, cudnn_benchmark=True),
    DEFAULT: Variant(),
    "frame-wide tiles": Variant(tile_pixels="frame"),
    "frame threads, ltx-core's view put (before)": Variant(contiguous=False),
    "frame threads, mapped at the first put": Variant(map_at_open=False),
    "slice threads": Variant(x264_params=SLICE),
    "frame threads, 8 threads": Variant(threads=8),
    "frame threads, off 4 cores": Variant(cores_off=4),
}
SAMPLE_RATE = 48000
BASE_OPTIONS = dict(media.X264_OPTIONS)


def dtype_for(device: torch.device) -> torch.dtype:
    return torch.bfloat16 if device.type == "cuda" else torch.float32  # as the engine: bf16 convolutions crawl on CPUs


def full_scale_decoder(device: torch.device, bundle_seed: int = 0):
    """ltx-core's VideoDecoder at the reference config, each tensor drawn as make_bundle draws it (same keys)."""
    from ltx_core.model.video_vae import VideoDecoderConfigurator

    with torch.device("meta"):
        decoder = VideoDecoderConfigurator.from_config(synthetic.reference_config())
    state = {}
    for key, tensor in decoder.state_dict().items():
        stats = key.removeprefix("per_channel_statistics.")
        file_key = f"vae.per_channel_statistics.{stats}" if stats != key else f"vae.decoder.{key}"
        state[key] = synthetic.random_tensor(
            file_key, synthetic.TensorSpec(key, tuple(tensor.shape)), bundle_seed, device
        )
    decoder.load_state_dict(state, assign=True)
    left_on_meta = [name for name, t in [*decoder.named_parameters(), *decoder.named_buffers()] if t.is_meta]
    if left_on_meta:
        raise RuntimeError(f"tensors the state dict does not hold: {left_on_meta[:5]}")
    return decoder.to(device=device, dtype=dtype_for(device)).eval()


def decode_once(decoder, latent, num_frames: int, sink: media.Mp4Stream | None, variant: Variant) -> tuple:
    """ltx-core's tiled decode as the variant tiles it, each chunk's kept frames put into `sink` (through host_frames
    unless not `contiguous`): (the decode's seconds, its peak device bytes, the frames when there is no sink)."""
    from ltx_core.model.video_vae import decode_video

    from ltx_demo.pipeline import tiling_config
    from ltx_demo.types import DecodeTiling

    height, width = latent.shape[3] * 32, latent.shape[4] * 32
    frame_wide = variant.tile_pixels == "frame"
    tiling = tiling_config(DecodeTiling.FRAME if frame_wide else DecodeTiling.DEFAULT, width, height,
                           None if frame_wide else variant.tile_pixels)  # fmt: skip
    torch.backends.cudnn.benchmark = variant.cudnn_benchmark
    torch.backends.cudnn.deterministic = variant.cudnn_benchmark  # benchmark among deterministic algorithms only
    if latent.device.type == "cuda":
        torch.cuda.synchronize(latent.device)
        torch.cuda.reset_peak_memory_stats(latent.device)
    generator = torch.Generator(device=latent.device).manual_seed(0)
    began, kept, frames = time.perf_counter(), 0, []
    with torch.inference_mode():
        for chunk in decode_video(latent, decoder, tiling, generator):
            chunk_frames = (host_frames(chunk) if variant.contiguous else chunk.to("cpu"))[: num_frames - kept]
            kept += len(chunk_frames)
            if sink is not None and len(chunk_frames):
                sink.put(chunk_frames)
            elif sink is None:
                frames.append(chunk_frames)
    seconds = time.perf_counter() - began
    peak = torch.cuda.max_memory_allocated(latent.device) if latent.device.type == "cuda" else 0
    torch.backends.cudnn.benchmark = torch.backends.cudnn.deterministic = False
    return seconds, peak, torch.cat(frames) if frames else None


def run_variant(name, decoder, latent, num_frames: int, audio: np.ndarray, folder: Path, reference) -> dict:
    """One run of variant `name`; `reference`: the default decode's frames, which a decode alone is compared with."""
    variant = VARIANTS[name]
    if not variant.mp4:
        seconds, peak, frames = decode_once(decoder, latent, num_frames, None, variant)
        difference = (frames.float() - reference.float()).abs()
        return {"decode_s": round(seconds, 3), "peak_gib": round(peak / 2**30, 2),
                "frames_max_difference": int(difference.max()),
                "frames_mean_difference": round(float(difference.mean()), 4)}  # fmt: skip
    options = {**BASE_OPTIONS, "x264-params": variant.x264_params}
    options |= {"threads": str(variant.threads)} if variant.threads else {}
    media.X264_OPTIONS = options  # read when the stream opens
    path = folder / "clip.mp4"
    cores = os.sched_getaffinity(0)
    os.sched_setaffinity(  # the encoder process inherits it from this thread
        0, sorted(cores)[min(variant.cores_off, len(cores) - 1) :]
    )
    try:
        size = latent.shape[3] * 32, latent.shape[4] * 32
        frame_size = size if variant.map_at_open else None
        stream = media.Mp4Stream(path, num_frames, 24, audio, SAMPLE_RATE, frame_size=frame_size)
    finally:
        os.sched_setaffinity(0, cores)
    decode_s, peak, _ = decode_once(decoder, latent, num_frames, stream, variant)
    began = time.perf_counter()
    stream.close()
    tail_s = time.perf_counter() - began
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return {"decode_s": round(decode_s, 3), "tail_s": round(tail_s, 3), "sum_s": round(decode_s + tail_s, 3),
            "peak_gib": round(peak / 2**30, 2), "sha256": digest, "bytes": path.stat().st_size}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--width", type=int, default=768)
    parser.add_argument("--height", type=int, default=512)
    parser.add_argument("--num-frames", type=int, default=97)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    decoder = full_scale_decoder(device)
    latent_shape = (1, 128, (args.num_frames - 1) // 8 + 1, args.height // 32, args.width // 32)
    latent = torch.randn(latent_shape, generator=torch.Generator().manual_seed(42)).to(device, dtype_for(device))
    audio = (0.1 * np.random.default_rng(0).standard_normal((2, SAMPLE_RATE * args.num_frames // 24))).astype(
        np.float32
    )
    _, _, reference = decode_once(decoder, latent, args.num_frames, None, Variant(mp4=False))  # also the warm-up
    runs: dict[str, list[dict]] = {name: [] for name in VARIANTS}
    with tempfile.TemporaryDirectory() as folder:
        for round_index in range(args.rounds):
            for name in VARIANTS:
                runs[name].append(run_variant(name, decoder, latent, args.num_frames, audio, Path(folder), reference))
                print(round_index, name, runs[name][-1], flush=True)
    summary = {}
    for name, results in runs.items():
        keys = ("decode_s", "tail_s", "sum_s", "peak_gib", "frames_max_difference")
        row = {key: round(statistics.median(r[key] for r in results), 3) for key in keys if key in results[0]}
        if "sha256" in results[0]:
            row["identical_files"] = len({r["sha256"] for r in results}) == 1
            row["same_file_as_default"] = {r["sha256"] for r in results} == {r["sha256"] for r in runs[DEFAULT]}
        summary[name] = row
    facts = {"card": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu", "cpus": os.cpu_count(),
             "torch": torch.__version__, "shape": f"{args.width}x{args.height}x{args.num_frames}",
             "latent_shape": list(latent_shape), "x264_base": BASE_OPTIONS}  # fmt: skip
    args.out.write_text(json.dumps({**facts, "median": summary, "runs": runs}, indent=1) + "\n")
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
