"""Issue 16's GPU measurement: a long recording at 768x512 on the full-scale bundle, persistent residency.

Makes a voice track of `--seconds` (the repo's speech clips one after another, looped), then runs, in one engine:
one single window of `--window` frames (the models are built first, so a warm-up clip runs before it), and the whole
recording in windows (`num_frames` = seconds x fps). Writes the time of every window's phases, each run's elapsed
seconds and peak VRAM, and the ratio of the long run's peak to the single window's, as JSON:
    python scripts/long_recording_bench.py --bundle DIR --seconds 30 --out long.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

from ltx_demo.bench import machine_facts, output_hash
from ltx_demo.engine import Engine
from ltx_demo.types import GenerationRequest
from ltx_demo.windowed_flow import WINDOW_PHASES

ASSETS = Path(__file__).resolve().parent.parent / "assets"
VOICES = ("speech_demo.wav", "speech_hello.wav", "speech_weather.wav")


def voice_track(seconds: float, path: Path) -> Path:
    """The repo's speech clips back to back, looped to exactly `seconds` (their own rate and channels)."""
    clips = [sf.read(ASSETS / name, always_2d=True) for name in VOICES]
    rate = clips[0][1]
    pieces, total = [], 0
    while total < seconds * rate:
        for data, clip_rate in clips:
            assert clip_rate == rate, "the voices share one sample rate"
            pieces.append(data)
            total += len(data)
    sf.write(path, np.concatenate(pieces)[: int(seconds * rate)], rate, subtype="FLOAT")
    return path


def run(engine: Engine, audio: Path, num_frames: int, args: argparse.Namespace) -> dict:
    """One request with the default window plan (windows.plan_windows) for `num_frames`."""
    request = GenerationRequest(
        image_path=str(ASSETS / "astronaut.png"), audio_path=str(audio), prompt="A woman speaks to the camera.",
        width=args.width, height=args.height, num_frames=num_frames, steps=args.steps,
    )  # fmt: skip
    events: list[tuple[float, int]] = []  # (seconds since the start, window) of every progress event of a window
    started = time.perf_counter()

    def on_progress(progress) -> None:
        if progress.window is not None or progress.phase in WINDOW_PHASES:
            events.append((time.perf_counter() - started, progress.window or 1))

    result = engine.generate(request, on_progress)
    summary = result.summary()
    return {
        "num_frames": num_frames,
        "elapsed_seconds": summary["elapsed_seconds"],
        "peak_vram_gib": summary["peak_vram_gib"],
        "quantization": summary["quantization"],
        "windows": summary.get("windows", []),
        "phases": {p.name: round(p.seconds, 3) for p in result.phases},  # summed over the windows
        "window_seconds": per_window(events),
        "output_hash": output_hash(result.output),
    }


def per_window(events: list[tuple[float, int]]) -> list[float]:
    """Seconds from each window's first progress event to the next window's (the last: to its own last event)."""
    firsts: dict[int, float] = {}
    for at, window in events:
        firsts.setdefault(window, at)
    starts = [firsts[w] for w in sorted(firsts)]
    ends = [*starts[1:], events[-1][0]] if events else []
    return [round(end - start, 3) for start, end in zip(starts, ends, strict=True)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument(
        "--window", type=int, default=249, help="the single clip's frames (30 s plans 249-frame windows)"
    )
    parser.add_argument("--width", type=int, default=768)
    parser.add_argument("--height", type=int, default=512)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--output-dir", default="/tmp/long-mp4")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    from ltx_demo.checkpoints import Bundle

    engine = Engine(Bundle.from_dir(Path(args.bundle)), Path(args.output_dir))
    with tempfile.TemporaryDirectory() as tmp:
        audio = voice_track(args.seconds, Path(tmp) / "voice.wav")
        warm = run(engine, audio, 97, args)  # builds every model (persistent)
        single = run(engine, audio, args.window, args)
        whole = run(engine, audio, round(args.seconds * 24), args)
    result = {
        "command": "python scripts/long_recording_bench.py "
        + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()),
        "machine": machine_facts(engine.device),
        "bundle": engine.bundle.describe(),
        "warm_up_97": {k: warm[k] for k in ("elapsed_seconds", "peak_vram_gib")},
        "single_window": single,
        "whole_recording": whole,
        "peak_over_single_gib": (  # None on CPU (no VRAM)
            round(whole["peak_vram_gib"] - single["peak_vram_gib"], 3) if whole["peak_vram_gib"] is not None else None
        ),
        "elapsed_ratio_to_single": round(whole["elapsed_seconds"] / single["elapsed_seconds"], 3),
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("peak_over_single_gib", "elapsed_ratio_to_single")}
                     | {"windows": whole["window_seconds"], "single": single["window_seconds"]}))  # fmt: skip


if __name__ == "__main__":
    main()
