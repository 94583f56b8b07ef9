"""The roofline of a request: the FLOPs of stage 1, stage 2 and the decode at one shape (counted by
torch.utils.flop_counter on the bundle's own models), and, against a benchmark row's phase seconds, the achieved
TFLOP/s and the fraction of the card's peak (docs/benchmarks.md, `python -m ltx_demo roofline`)."""

from __future__ import annotations

import logging

import torch

from ltx_demo.bench_runs import finished, later_runs, later_seconds
from ltx_demo.checkpoints import Bundle
from ltx_demo.forward_bench import ForwardShape, count_flops, stage_inputs
from ltx_demo.residency import ModelConfig, ModelManager
from ltx_demo.types import Quantization, Residency, TextEncoderQuantization

logger = logging.getLogger(__name__)

# Dense tensor-core peaks from NVIDIA's datasheets (SXM, no sparsity), TFLOP/s.
PEAK_TFLOPS = {
    "NVIDIA H200": {"bf16": 989.4, "fp8": 1978.9},
    "NVIDIA H100 80GB HBM3": {"bf16": 989.4, "fp8": 1978.9},
}
GUIDANCE_PASSES = 4  # stage 1's batched call: positive, negative, STG, modality-isolated


def decoder_flops(models: ModelManager, width: int, height: int, num_frames: int) -> int:
    """FLOPs of decoding one clip's latent with ltx-core's default tiling (the pipeline's default)."""
    from ltx_core.model.video_vae import TilingConfig
    from ltx_core.model.video_vae import decode_video as vae_decode_video
    from torch.utils.flop_counter import FlopCounterMode

    latent_shape = (1, 128, (num_frames - 1) // 8 + 1, height // 32, width // 32)
    with models.use("video_decoder") as decoder, torch.inference_mode():
        dtype = next(p.dtype for p in decoder.parameters() if p.is_floating_point())
        latent = torch.randn(latent_shape, generator=torch.Generator().manual_seed(0)).to(models.device, dtype)
        with FlopCounterMode(display=False) as counter:
            for _chunk in vae_decode_video(latent, decoder, TilingConfig.default(), torch.Generator().manual_seed(0)):
                pass
    return int(counter.get_total_flops())


def measure_flops(bundle: Bundle, device: torch.device, compute_dtype: torch.dtype, width: int, height: int,
                  num_frames: int) -> dict:  # fmt: skip
    """FLOPs of one stage-1 call (the guidance passes batched, half size), one stage-2 call and one decode."""
    models = ModelManager(bundle, device, compute_dtype, cuda_graphs=False, compile_blocks=False)
    config = ModelConfig(Quantization.FP8_CAST, Residency.PERSISTENT, 1.0,
                         text_encoder_quantization=TextEncoderQuantization.BF16)  # fmt: skip
    models.configure(config)  # the FLOPs do not depend on the weights' format; fp8 keeps the build small
    try:
        with models.request():
            with models.stage_transformer(1) as stage:
                stage_1 = ForwardShape(width // 2, height // 2, num_frames, GUIDANCE_PASSES)
                stage_2 = ForwardShape(width, height, num_frames)
                stage_1_flops = count_flops(stage.model, stage_inputs(stage.model, stage_1))
                stage_2_flops = count_flops(stage.model, stage_inputs(stage.model, stage_2))
            decode_flops = decoder_flops(models, width, height, num_frames)
    finally:
        models.release_all()
    return {
        "resolution": f"{width}x{height}",
        "num_frames": num_frames,
        "stage_1_flops_per_call": stage_1_flops,
        "stage_2_flops_per_call": stage_2_flops,
        "decode_flops": decode_flops,
    }


def _row_for(configs: list[dict], roofline: dict) -> dict | None:
    """The benchmark row the roofline reads on its card and shape: the default settings' (its later runs' mean),
    else the fastest persistent row."""
    candidates = [
        c
        for c in configs
        if c["resolution"] == roofline["resolution"]
        and c["num_frames"] == roofline["num_frames"]
        and c.get("card") == roofline.get("card")
        and c["residency"] == "persistent"
        and len(finished(c["runs"])) > 1
    ]
    defaults = [c for c in candidates if c.get("default_settings")]
    return min(defaults or candidates, key=lambda c: later_seconds(c["runs"]), default=None)


def render_roofline(data: dict) -> list[str]:
    """Markdown: per stage, FLOPs, seconds (the fastest persistent row's later runs), TFLOP/s, fraction of peak."""
    rooflines = data.get("roofline", [])
    if not rooflines:
        return []
    lines = [
        "",
        "## Roofline",
        "",
        "FLOPs counted by `torch.utils.flop_counter` on the bundle's own models at the stage shapes "
        "(`python -m ltx_demo roofline`: matmuls, attention, convolutions), times the calls the row's runs made, "
        "over that row's phase seconds (mean of its later runs). Peaks: NVIDIA's dense tensor-core figures "
        "(bf16 989 TFLOP/s, fp8 1979 TFLOP/s); the H200's measured bf16 matmul peak here is about 790 TFLOP/s.",
        "",
        "| card | shape | row | phase | FLOPs | seconds | TFLOP/s | of bf16 peak | of fp8 peak |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for roofline in rooflines:
        row = _row_for(data.get("configs", []), roofline)
        if row is None:
            continue
        runs = later_runs(row["runs"])
        peaks = PEAK_TFLOPS.get(roofline.get("card"), {})
        counters = runs[0].get("counters", {})
        work = {
            "stage_1": roofline["stage_1_flops_per_call"] * counters.get("stage_1_transformer_calls", 0),
            "stage_2": roofline["stage_2_flops_per_call"] * counters.get("stage_2_transformer_calls", 0),
            "decode": roofline["decode_flops"],
        }
        label = f"{row['quantization']}, {row.get('variant') or '-'}"
        for phase, flops in work.items():
            seconds = sum(r["phases"].get(phase, 0.0) for r in runs) / len(runs)
            if not seconds or not flops:
                continue
            tflops = flops / seconds / 1e12
            fractions = [f"{tflops / peaks[k]:.0%}" if k in peaks else "-" for k in ("bf16", "fp8")]
            lines.append(
                f"| {roofline.get('card')} | {roofline['resolution']}x{roofline['num_frames']} | {label} | {phase} "
                f"| {flops:.3g} | {seconds:.2f} | {tflops:.0f} | {fractions[0]} | {fractions[1]} |"
            )
    return lines
