"""What each difference between the fast flow and ltx-pipelines' A2VidPipelineTwoStage does to the output, one at a
time, on the CPU (issue 13): the reference flow (== the stock pipeline, checked first) with ONE of the fast flow's
changes switched on, against the stock pipeline's latents and frames.

    python scripts/fidelity_differences.py --bundle ~/.cache/ltx-demo/tiny-bundle-v2 \
        --json docs/fidelity-differences.json --markdown docs/fidelity-differences.md

Random (synthetic) weights can exaggerate or hide errors; the switches are the flow's own functions, so the script
runs unchanged on a real bundle (slowly: CPU, bf16).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import math
import platform
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ltx_demo import engine as engine_module
from ltx_demo import guidance, media
from ltx_demo import pipeline as flow_module
from ltx_demo.checkpoints import Bundle
from ltx_demo.engine import Engine
from ltx_demo.residency import ModelConfig
from ltx_demo.residency.builds import ModelBuilder
from ltx_demo.residency.modes import PerRequest
from ltx_demo.stock_pipeline import StockRun, run_stock_a2v
from ltx_demo.text_path import drop_unused_gemma_parts_
from ltx_demo.types import GenerationRequest, LoraMode, Quantization

ASSETS = Path(__file__).resolve().parent.parent / "assets"
PROMPT = "A woman speaks to the camera."


# -- measures -----------------------------------------------------------------------------------------------------
def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = ((a.double() - b.double()) ** 2).mean().item()
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def relative_l2(x: torch.Tensor, reference: torch.Tensor) -> float:
    return ((x.double() - reference.double()).norm() / reference.double().norm()).item()


def measure(run: StockRun | flow_module.DecodedClip, stock: StockRun) -> dict:
    out = {
        "frames_identical": torch.equal(run.frames, stock.frames),
        "psnr_db": round(psnr(run.frames, stock.frames), 2),
        "max_pixel_diff": int((run.frames.int() - stock.frames.int()).abs().max()),
    }
    for name, x, y in zip(("stage_1", "final"), run.stage_latents, stock.stage_latents, strict=True):
        out[f"{name}_latent_max_abs"] = float((x.float() - y.float()).abs().max())
        out[f"{name}_latent_rel_l2"] = float(f"{relative_l2(x, y):.3g}")
    return out


# -- the project's runs, with one fast-flow change switched on ----------------------------------------------------
@contextlib.contextmanager
def patched(owner, name: str, value) -> Iterator[None]:
    saved = getattr(owner, name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, saved)


def fast_audio() -> contextlib.AbstractContextManager:
    """media.prepare_audio's segment (soundfile, resampled to 48 kHz) instead of ltx-pipelines' PyAV reader."""

    def read(request: GenerationRequest, _device):
        audio, note = media.prepare_audio(
            request.audio_path, request.audio_start, request.num_frames / request.frame_rate
        )
        return torch.from_numpy(audio), media.OUTPUT_SAMPLE_RATE, note

    return patched(flow_module, "reference_audio", read)


def prefit_portrait() -> contextlib.AbstractContextManager:
    """The portrait fitted to W x H with LANCZOS first (the stock's bilinear crop/resize then only halves it)."""
    prepare = media.prepare_image

    def prepare_fitted(path, width, height, fit, out_path):
        return prepare(path, width, height, media.ImageFit.CROP if fit is None else fit, out_path)

    return patched(media, "prepare_image", prepare_fitted)


def normalised_portrait() -> contextlib.AbstractContextManager:
    """RGBA composited onto black and EXIF orientation applied (media._to_rgb), instead of the raw RGB channels."""
    return patched(media, "STOCK_IMAGE_MODES", ())


def _guidance_with(change: Callable) -> contextlib.AbstractContextManager:
    guidance = flow_module.stage_1_guidance

    def changed(request, transformer):
        return change(transformer, *guidance(request, transformer))

    return patched(flow_module, "stage_1_guidance", changed)


def stg_on_last_block() -> contextlib.AbstractContextManager:
    """STG on the transformer's last block where block 28 does not exist (synthetic bundles only)."""
    return _guidance_with(
        lambda t, params, func: (
            dataclasses.replace(params, stg_blocks=guidance._stg_blocks(t, params.stg_blocks)),
            func,
        )
    )


def batched_guidance() -> contextlib.AbstractContextManager:
    return _guidance_with(lambda _t, params, _func: (params, guidance.batched_guider_denoising_func))


def gemma_dropped_parts() -> contextlib.AbstractContextManager:
    build = ModelBuilder._text_encoder

    def dropping(self, ledger):
        text_encoder = build(self, ledger)
        drop_unused_gemma_parts_(text_encoder)
        return text_encoder

    return patched(ModelBuilder, "_text_encoder", dropping)


def fp8_processor() -> contextlib.AbstractContextManager:
    from ltx_demo.quantization import stores_fp8

    return patched(ModelConfig, "fp8_processor", property(lambda self: stores_fp8(self.quantization)))


def lora_adapter() -> contextlib.AbstractContextManager:
    model_config = Engine._model_config

    def adapter(self, request):
        config, reason = model_config(self, request)
        return dataclasses.replace(config, lora_mode=LoraMode.ADAPTER), reason

    return patched(Engine, "_model_config", adapter)


@contextlib.contextmanager
def lora_fused_in_place() -> Iterator[None]:
    """What cold-start and host-cached do on CUDA: the LoRA fused into the one transformer after stage 1."""
    with lora_adapter(), patched(PerRequest, "fuses_in_place", lambda self: True):
        yield


@contextlib.contextmanager
def noise_drawn_in_bf16() -> Iterator[None]:
    """GaussianNoiser's noise drawn in bf16 and upcast: on the CPU torch.randn draws a float32 tensor of 16 or more
    elements with another (vectorised) algorithm than a bf16 one, so a float32 run starts from OTHER noise, not from
    the same noise rounded. With this, a float32 run differs from the bf16 one by rounding only."""
    from ltx_core.components.noisers import GaussianNoiser

    def call(self, latent_state, noise_scale=1.0):
        latent = latent_state.latent
        noise = torch.randn(*latent.shape, device=latent.device, dtype=torch.bfloat16, generator=self.generator)
        scaled_mask = latent_state.denoise_mask * noise_scale
        mixed = noise.to(latent.dtype) * scaled_mask + latent * (1 - scaled_mask)
        return dataclasses.replace(latent_state, latent=mixed.to(latent.dtype))

    with patched(GaussianNoiser, "__call__", call):
        yield


def untiled_decode_rows(bundle: Bundle, shape: dict) -> list[dict]:
    """A2VidPipelineTwoStage.__call__ decodes untiled unless given a tiling config; its CLI (and both flows here) pass
    TilingConfig.default() (512 px / 64 frame tiles): the two, at shapes where the default tiles."""
    rows = []
    common = dict(image=ASSETS / "astronaut.png", audio=ASSETS / "speech_hello.wav", prompt=PROMPT)
    for size in ({"width": 640}, {"num_frames": 73}):
        at = shape | size
        tiled = run_stock_a2v(bundle, **common, **at)
        untiled = run_stock_a2v(bundle, **common, **at, tiled_decode=False)
        rows.append({
            "case": f"stock decode untiled (its __call__'s default) vs TilingConfig.default(), "
            f"{at['width']}x{at['height']}x{at['num_frames']}",
            "quantization": "bf16", "compute_dtype": "bfloat16", "residency": "-", "flow": "stock", "stage_2_lora": "-",
        } | measure(untiled, tiled))  # fmt: skip
    return rows


def seed_scale(bundle: Bundle, shape: dict) -> dict:
    """For scale: the stock pipeline at seed + 1 against itself at the seed."""
    common = dict(image=ASSETS / "astronaut.png", audio=ASSETS / "speech_hello.wav", prompt=PROMPT)
    stock = run_stock_a2v(bundle, **common, **shape)
    other = run_stock_a2v(bundle, **common, **(shape | {"seed": shape["seed"] + 1}))
    return {"case": "for scale: the stock pipeline at seed + 1", "quantization": "bf16", "compute_dtype": "bfloat16",
            "residency": "-", "flow": "stock", "stage_2_lora": "-"} | measure(other, stock)  # fmt: skip


# -- the table ----------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True, slots=True)
class Case:
    name: str
    switch: Callable[[], contextlib.AbstractContextManager] | None = None
    residency: str = "cold-start"
    compute_dtype: torch.dtype = torch.bfloat16
    flow: str = "reference"
    inputs: str = "default"
    quantizations: tuple[Quantization, ...] = (Quantization.BF16, Quantization.FP8_CAST)


CASES = (
    Case("reference flow (no change)"),
    Case("reference flow, persistent", residency="persistent"),
    Case("reference flow, host-cached", residency="host-cached"),
    Case("audio: soundfile + resample_poly to 48 kHz (24 kHz WAV)", fast_audio),
    Case("audio: soundfile + resample_poly to 48 kHz (48 kHz float WAV)", fast_audio, inputs="48k"),
    Case("portrait pre-fitted to WxH with LANCZOS (384x384 upload)", prefit_portrait),
    Case("portrait pre-fitted to WxH with LANCZOS (upload exactly WxH)", prefit_portrait, inputs="exact"),
    Case("portrait: RGBA composited on black (RGBA upload)", normalised_portrait, inputs="rgba"),
    Case("STG moved to the last block (synthetic bundle)", stg_on_last_block),
    Case("batched guidance", batched_guidance),
    Case("Gemma without vision tower, projector, lm_head", gemma_dropped_parts),
    Case("embeddings processor linears in fp8", fp8_processor, quantizations=(Quantization.FP8_CAST,)),
    Case("LoRA as a runtime adapter (persistent)", lora_adapter, residency="persistent"),
    Case("LoRA fused in place after stage 1 (cold-start)", lora_fused_in_place),
    Case("compute in float32 (the CPU default)", compute_dtype=torch.float32),
    Case(
        "compute in float32, the noise drawn as in bf16 (rounding only)",
        noise_drawn_in_bf16,
        compute_dtype=torch.float32,
    ),
    Case("fast flow, every change above, bf16 compute", flow="fast", residency="persistent"),
    Case(
        "fast flow as the CPU default runs it (float32)",
        flow="fast",
        residency="persistent",
        compute_dtype=torch.float32,
    ),
)


def make_inputs(folder: Path) -> dict[str, tuple[str, str]]:
    """(image, audio) per input kind: the project's assets, a 48 kHz float WAV, an exact-size and an RGBA portrait."""
    import soundfile

    samples, rate = soundfile.read(ASSETS / "speech_hello.wav", dtype="float32", always_2d=True)
    from scipy.signal import resample_poly

    soundfile.write(folder / "hello48.wav", resample_poly(samples, 48_000 // rate, 1, axis=0), 48_000, subtype="FLOAT")
    portrait = Image.open(ASSETS / "astronaut.png").convert("RGB")
    portrait.resize((128, 128), Image.Resampling.LANCZOS).save(folder / "exact.png")
    alpha = np.tile(np.linspace(0, 255, portrait.width, dtype=np.uint8), (portrait.height, 1))
    rgba = portrait.copy()
    rgba.putalpha(Image.fromarray(alpha))
    rgba.save(folder / "rgba.png")
    image, audio = str(ASSETS / "astronaut.png"), str(ASSETS / "speech_hello.wav")
    return {
        "default": (image, audio),
        "48k": (image, str(folder / "hello48.wav")),
        "exact": (str(folder / "exact.png"), audio),
        "rgba": (str(folder / "rgba.png"), audio),
    }


def run_cases(bundle: Bundle, shape: dict, folder: Path) -> list[dict]:
    inputs = make_inputs(folder)
    stock_runs: dict[tuple, StockRun] = {}
    engines: dict[torch.dtype, Engine] = {}
    rows = []
    for case in CASES:
        for quantization in case.quantizations:
            image, audio = inputs[case.inputs]
            key = (case.inputs, quantization)
            if key not in stock_runs:
                stock_runs[key] = run_stock_a2v(
                    bundle, image=image, audio=audio, prompt=PROMPT, quantization=quantization, **shape
                )
            if case.compute_dtype not in engines:
                engines[case.compute_dtype] = Engine(
                    bundle, folder / "out", device="cpu", compute_dtype=case.compute_dtype
                )
            clips: list[flow_module.DecodedClip] = []
            run = flow_module.run_two_stage

            def recording(*args, _clips=clips, _run=run, **kwargs):
                _clips.append(_run(*args, **kwargs))
                return _clips[-1]

            request = GenerationRequest(
                image_path=image,
                audio_path=audio,
                prompt=PROMPT,
                quantization=quantization.value,
                residency=case.residency,
                flow=case.flow,
                **shape,
            )
            with patched(engine_module, "run_two_stage", recording):
                with case.switch() if case.switch else contextlib.nullcontext():
                    result = engines[case.compute_dtype].generate(request)
            row = {
                "case": case.name,
                "quantization": quantization.value,
                "compute_dtype": result.compute_dtype,
                "residency": result.residency,
                "flow": result.flow,
                "stage_2_lora": result.stage_2_lora,
            } | measure(clips[0], stock_runs[key])
            logging.getLogger("fidelity").info("%s", row)
            rows.append(row)
    return rows


def mp4_rows(shape: dict, folder: Path) -> list[dict]:
    """A natural clip (the portrait, drifting a pixel a frame) through the project's write_mp4 and through
    ltx-pipelines' encode_video, decoded again. Not the synthetic bundle's frames: random weights render noise, which
    H.264 cannot keep (~13 dB), so frames are compared before the mp4 everywhere else."""
    import av
    from ltx_core.types import Audio
    from ltx_pipelines.utils.media_io import encode_video

    width, height, n = shape["width"], shape["height"], shape["num_frames"]
    portrait = np.asarray(Image.open(ASSETS / "astronaut.png").convert("RGB").resize((width + n, height)))
    frames = torch.from_numpy(np.stack([portrait[:, i : i + width] for i in range(n)]))
    stock = StockRun(frames, (), torch.zeros(2, round(n / shape["frame_rate"] * 48_000)), 48_000)

    def decoded(path: Path) -> torch.Tensor:
        with av.open(str(path)) as container:
            return torch.stack([torch.from_numpy(f.to_ndarray(format="rgb24")) for f in container.decode(video=0)])

    ours, theirs = folder / "write_mp4.mp4", folder / "encode_video.mp4"
    media.write_mp4(stock.frames.numpy(), stock.audio.numpy(), stock.sample_rate, shape["frame_rate"], ours)
    encode_video(stock.frames, shape["frame_rate"], Audio(stock.audio, stock.sample_rate), str(theirs), 1)
    rows = []
    for name, path in (
        ("the project's write_mp4 (crf 18)", ours),
        ("ltx-pipelines' encode_video (x264 default)", theirs),
    ):
        frames = decoded(path)
        rows.append({
            "case": name,
            "psnr_db": round(psnr(frames, stock.frames), 2),
            "max_pixel_diff": int((frames.int() - stock.frames.int()).abs().max()),
            "bytes": path.stat().st_size,
        })  # fmt: skip
    return rows


def render_markdown(data: dict) -> str:
    lines = [
        "# Fidelity on the CPU: each difference from A2VidPipelineTwoStage, one at a time",
        "",
        f"`{data['command']}`  ",
        f"Bundle: {data['bundle']}; {data['shape']}; torch {data['torch']}, {data['machine']}.",
        "",
        "Each row: the reference flow with ONE of the fast flow's changes switched on (or the whole fast flow), "
        "against ltx-pipelines' own A2VidPipelineTwoStage run in the same process (bf16, CPU). Latent columns: max "
        "abs difference (relative L2) of the video latent after stage 1 and after stage 2. Random weights can "
        "exaggerate or hide errors.",
        "",
        "| change | quantization | compute | identical frames | PSNR dB | max px | stage-1 latent | final latent |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in data["rows"]:
        lines.append(
            f"| {r['case']} | {r['quantization']} | {r['compute_dtype']} | {'yes' if r['frames_identical'] else 'no'} "
            f"| {r['psnr_db']} | {r['max_pixel_diff']} | {r['stage_1_latent_max_abs']:.4g} "
            f"({r['stage_1_latent_rel_l2']:.3g}) | {r['final_latent_max_abs']:.4g} ({r['final_latent_rel_l2']:.3g}) |"
        )
    lines += [
        "",
        "| mp4 writer (a natural clip in, decoded out) | PSNR dB vs the frames | max px | bytes |",
        "|---|---|---|---|",
    ]
    for r in data["mp4"]:
        lines.append(f"| {r['case']} | {r['psnr_db']} | {r['max_pixel_diff']} | {r['bytes']} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", default=str(Path.home() / ".cache/ltx-demo/tiny-bundle-v2"))
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--height", type=int, default=128)
    parser.add_argument("--num-frames", type=int, default=17)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--json", default="docs/fidelity-differences.json")
    parser.add_argument("--markdown", default="docs/fidelity-differences.md")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("fidelity").setLevel(logging.INFO)
    shape = dict(width=args.width, height=args.height, num_frames=args.num_frames, frame_rate=24, steps=args.steps,
                 seed=args.seed)  # fmt: skip
    bundle = Bundle.from_dir(Path(args.bundle).expanduser())
    with tempfile.TemporaryDirectory(prefix="fidelity-") as tmp:
        rows, mp4 = run_cases(bundle, shape, Path(tmp)), mp4_rows(shape, Path(tmp))
        rows += [*untiled_decode_rows(bundle, shape), seed_scale(bundle, shape)]
    data = {
        "command": "python scripts/fidelity_differences.py "
        + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k not in ("json", "markdown", "bundle")
        ),
        "bundle": bundle.describe(),
        "shape": f"{args.width}x{args.height}x{args.num_frames}, {args.steps} steps, seed {args.seed}",
        "torch": torch.__version__,
        "machine": f"{platform.machine()} CPU, {torch.get_num_threads()} threads",
        "rows": rows,
        "mp4": mp4,
    }
    Path(args.json).write_text(json.dumps(data, indent=2, default=str) + "\n")
    Path(args.markdown).write_text(render_markdown(data))


if __name__ == "__main__":
    main()
