"""The decode and the mp4 together, without the transformer: ltx-core's full-scale video decoder (the synthetic
bundle's weights, made here from the same seeds, so no 72 GiB bundle is needed) decodes a random latent through
ltx-core's tiled decode_video, and each chunk goes through the engine's pipeline.host_frames into media.Mp4Stream as
the engine's decode does. Variants: x264's frame or slice threads, its thread count, the encoder process's niceness
and cores, the frames' memory mapped at open or at the first put, the chunk put as ltx-core's channels-last view
(before host_frames); and the decode with no mp4. Rounds interleave the variants; each reports the decode's seconds
(with the encode overlapping it), the tail after it (close), their sum, and the file's sha256 (the same seed must
give the same file; a variant with the default's x264 settings must give the default's file).

Usage: python scripts/decode_mp4_bench.py --out OUT.json [--width 768 --height 512 --num-frames 97 --rounds 3]"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ltx_demo import media, synthetic
from ltx_demo.pipeline import host_frames

FRAME, SLICE = "rc-lookahead=0:sliced-threads=0", "rc-lookahead=0"
# name -> (x264-params, encoder niceness, x264 threads (None: x264's own 1.5 per core), cores the encoder keeps off
# (the first N, left to the decoder's process), the frames' memory mapped at open as the engine does (False: at the
# first put, page faults in the decode's loop), the chunk made contiguous by host_frames as the engine does (False:
# ltx-core's view copied as it is, the put gathering it)); None: the decode alone (through host_frames).
# No longer a variant: the encoder's niceness (no difference on the H100, docs/benchmarks.md, 2026-12-06).
DEFAULT = "frame threads (default)"
VARIANTS = {
    "decode alone": None,
    DEFAULT: (FRAME, 0, None, 0, True, True),
    "frame threads, ltx-core's view put (before)": (FRAME, 0, None, 0, True, False),
    "frame threads, mapped at the first put": (FRAME, 0, None, 0, False, True),
    "slice threads": (SLICE, 0, None, 0, True, True),
    "frame threads, 8 threads": (FRAME, 0, 8, 0, True, True),
    "frame threads, off 4 cores": (FRAME, 0, None, 4, True, True),
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


def decode_once(decoder, latent, num_frames: int, sink: media.Mp4Stream | None, contiguous: bool = True) -> float:
    """ltx-core's tiled decode, each chunk's kept frames put into `sink` (through host_frames unless not
    `contiguous`): the decode's seconds."""
    from ltx_core.model.video_vae import TilingConfig, decode_video

    generator = torch.Generator(device=latent.device).manual_seed(0)
    began, kept = time.perf_counter(), 0
    with torch.inference_mode():
        for chunk in decode_video(latent, decoder, TilingConfig.default(), generator):
            frames = (host_frames(chunk) if contiguous else chunk.to("cpu"))[: num_frames - kept]
            kept += len(frames)
            if sink is not None and len(frames):
                sink.put(frames)
    return time.perf_counter() - began


def run_variant(name, decoder, latent, num_frames: int, audio: np.ndarray, folder: Path) -> dict:
    setting = VARIANTS[name]
    if setting is None:
        return {"decode_s": round(decode_once(decoder, latent, num_frames, None), 3)}
    params, niceness, threads, cores_off, map_at_open, contiguous = setting
    options = {**BASE_OPTIONS, "x264-params": params} | ({"threads": str(threads)} if threads else {})
    media.X264_OPTIONS = options  # read when the stream opens
    os.environ["LTX_DEMO_MP4_ENCODER_NICENESS"] = str(niceness)
    path = folder / "clip.mp4"
    cores = os.sched_getaffinity(0)
    os.sched_setaffinity(
        0, sorted(cores)[min(cores_off, len(cores) - 1) :]
    )  # the encoder process inherits it from this thread
    try:
        size = latent.shape[3] * 32, latent.shape[4] * 32
        stream = media.Mp4Stream(path, num_frames, 24, audio, SAMPLE_RATE, frame_size=size if map_at_open else None)
    finally:
        os.sched_setaffinity(0, cores)
    decode_s = decode_once(decoder, latent, num_frames, stream, contiguous)
    began = time.perf_counter()
    stream.close()
    tail_s = time.perf_counter() - began
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return {"decode_s": round(decode_s, 3), "tail_s": round(tail_s, 3), "sum_s": round(decode_s + tail_s, 3),
            "sha256": digest, "bytes": path.stat().st_size}  # fmt: skip


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
    decode_once(decoder, latent, args.num_frames, None)  # warm-up: cuDNN's algorithm picks, the allocator
    runs: dict[str, list[dict]] = {name: [] for name in VARIANTS}
    with tempfile.TemporaryDirectory() as folder:
        for round_index in range(args.rounds):
            for name in VARIANTS:
                runs[name].append(run_variant(name, decoder, latent, args.num_frames, audio, Path(folder)))
                print(round_index, name, runs[name][-1], flush=True)
    summary = {}
    for name, results in runs.items():
        row = {key: round(statistics.median(r[key] for r in results), 3) for key in ("decode_s", "tail_s", "sum_s")
               if key in results[0]}  # fmt: skip
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
