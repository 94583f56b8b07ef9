"""The reference flow against ltx-pipelines' own A2VidPipelineTwoStage on a GPU: identical frames and stage latents?

Usage: python scripts/fidelity_gpu.py --bundle DIR --out OUT.json [--width 768 --height 512 --num-frames 25 --steps 8]
Each quantization: the stock pipeline (its own models, built per call), then the project's reference flow (cold-start,
bf16 compute) and the fast default flow (for fp8-cast: what a request naming no quantization runs) on the same
inputs; the JSON is rewritten after every comparison.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from ltx_demo.checkpoints import resolve_bundle
from ltx_demo.engine import Engine
from ltx_demo.fidelity import psnr
from ltx_demo.stock_pipeline import run_stock_a2v
from ltx_demo.types import GenerationRequest, Quantization

IMAGE, AUDIO = "assets/astronaut.png", "assets/speech_hello.wav"
PROMPT = "A woman astronaut speaks calmly to the camera."


def compare(clip, stock) -> dict:
    latents = [
        float((a.float() - b.float()).abs().max()) for a, b in zip(clip.stage_latents, stock.stage_latents, strict=True)
    ]
    return {
        "identical_frames": bool(torch.equal(clip.frames, stock.frames)),
        "psnr_db": round(psnr(clip.frames, stock.frames), 2),
        "max_abs_pixel": int((clip.frames.int() - stock.frames.int()).abs().max()),
        "stage_1_latent_max_abs": latents[0] if latents else None,
        "final_latent_max_abs": latents[1] if len(latents) > 1 else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--width", type=int, default=768)
    parser.add_argument("--height", type=int, default=512)
    parser.add_argument("--num-frames", type=int, default=25)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--quantization", default="fp8-cast,bf16")
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    bundle = resolve_bundle(args.bundle, None, None, None, None)
    shape = {"width": args.width, "height": args.height, "num_frames": args.num_frames, "steps": args.steps}
    engine = Engine(bundle, Path(tempfile.mkdtemp()), device=args.device, compute_dtype=torch.bfloat16)
    clips = []
    import ltx_demo.engine as engine_module

    run = engine_module.run_two_stage
    engine_module.run_two_stage = lambda *a, **k: clips.append(run(*a, **k)) or clips[-1]
    report = {"bundle": bundle.describe(), "card": engine._device_name(), "torch": torch.__version__,
              "shape": shape, "seed": 42, "runs": []}  # fmt: skip
    for quantization in [Quantization(q) for q in args.quantization.split(",")]:
        started = time.perf_counter()
        stock = run_stock_a2v(bundle, image=IMAGE, audio=AUDIO, prompt=PROMPT, seed=42, quantization=quantization,
                              device=engine.device, **shape)  # fmt: skip
        stock_seconds = time.perf_counter() - started
        request = GenerationRequest(image_path=IMAGE, audio_path=AUDIO, prompt=PROMPT, seed=42, **shape,
                                    quantization=quantization, residency="cold-start", flow="reference")  # fmt: skip
        reference = engine.generate(request)
        entry = {
            "quantization": quantization.value,
            "stock_seconds": round(stock_seconds, 2),
            "reference_seconds": reference.elapsed_seconds,
            "reference_vs_stock": compare(clips[-1], stock),
        }
        report["runs"].append(entry)
        Path(args.out).write_text(json.dumps(report, indent=1))
        default = None if quantization is Quantization.FP8_CAST else quantization  # fp8-cast: the device's default
        fast = engine.generate(GenerationRequest(image_path=IMAGE, audio_path=AUDIO, prompt=PROMPT, seed=42, **shape,
                                                 quantization=default))  # fmt: skip
        entry["fast_default_vs_stock"] = compare(clips[-1], stock) | {
            "fast_seconds": fast.elapsed_seconds, "quantization": str(fast.quantization),
            "stage_2_lora": fast.stage_2_lora,
        }  # fmt: skip
        Path(args.out).write_text(json.dumps(report, indent=1))
        engine.models.release_all()
        print(json.dumps(entry), flush=True)


if __name__ == "__main__":
    main()
