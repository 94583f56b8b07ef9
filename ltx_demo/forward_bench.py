"""One stage-transformer forward per token shape and quantization, on identical inputs: seconds, ratio to bf16,
relative error to bf16's output, and how many fp8 GEMMs ran (the per-shape fp8 vs bf16 table of the benchmarks).

The transformer comes from the bundle through the engine's own builders (ModelManager -> ltx-pipelines'
ModelLedger), one quantization at a time; the inputs are built with ltx-core's latent tools at the shape a stage
sees (stage 1 of 768x512x97 runs at 384x256: 1248 video tokens), with random latents and random text context.
"""

from __future__ import annotations

import logging
import statistics
import time
from dataclasses import dataclass, replace

import torch

from ltx_demo.attention import attention_of
from ltx_demo.attention import unavailable_reason as attention_unavailable
from ltx_demo.checkpoints import Bundle
from ltx_demo.fp8_matmul import ScaledMMCounter
from ltx_demo.residency import ModelConfig, ModelManager
from ltx_demo.types import AttentionBackend, Quantization, Residency, TextEncoderQuantization

logger = logging.getLogger(__name__)

FPS = 24.0
CONTEXT_TOKENS = 1024  # the embeddings connector's output length for one prompt


@dataclass(frozen=True, slots=True)
class ForwardShape:
    """The pixel shape a stage's latents decode to, and how many guidance passes share one call."""

    width: int
    height: int
    num_frames: int
    batch: int = 1

    @property
    def label(self) -> str:
        base = f"{self.width}x{self.height}x{self.num_frames}"
        return base if self.batch == 1 else f"{base}/{self.batch}"


def parse_shapes(text: str) -> list[ForwardShape]:
    """'384x256x97,384x256x97/4' -> shapes ('/4': four passes batched into one call)."""
    shapes = []
    for item in text.split(","):
        dims, _, batch = item.strip().partition("/")
        width, height, frames = (int(v) for v in dims.split("x"))
        shapes.append(ForwardShape(width, height, frames, int(batch or 1)))
    return shapes


def _context_width(velocity: torch.nn.Module, cross_attention: str) -> int:
    """What the blocks' cross-attention expects as text context (after the model's own caption projection)."""
    name = "caption_projection" if cross_attention == "attn2" else "audio_caption_projection"
    projection = getattr(velocity, name, None)
    if projection is not None:
        return next(m for m in projection.modules() if isinstance(m, torch.nn.Linear)).in_features
    return getattr(velocity.transformer_blocks[0], cross_attention).to_k.in_features


def stage_inputs(transformer: torch.nn.Module, shape: ForwardShape, seed: int = 0) -> dict:
    """Keyword arguments for one X0Model call: video + audio Modality at `shape`, random latents and context."""
    from ltx_core.guidance.perturbations import BatchedPerturbationConfig
    from ltx_core.tools import AudioLatentTools, VideoLatentTools
    from ltx_core.types import AudioLatentShape, VideoLatentShape, VideoPixelShape
    from ltx_pipelines.utils.helpers import modality_from_latent_state
    from ltx_pipelines.utils.types import PipelineComponents

    from ltx_demo.guidance import batched_modality

    velocity = transformer.velocity_model
    parameter = next(velocity.parameters())
    device = parameter.device
    dtype = next(p.dtype for p in velocity.parameters() if p.is_floating_point() and p.dtype.itemsize > 1)
    components = PipelineComponents(dtype=dtype, device=device)
    pixels = VideoPixelShape(batch=1, frames=shape.num_frames, height=shape.height, width=shape.width, fps=FPS)
    video_tools = VideoLatentTools(
        components.video_patchifier,
        VideoLatentShape.from_pixel_shape(pixels, components.video_latent_channels, components.video_scale_factors),
        FPS,
    )
    audio_tools = AudioLatentTools(components.audio_patchifier, AudioLatentShape.from_video_pixel_shape(pixels))
    generator = torch.Generator().manual_seed(seed)

    def random(*size: int) -> torch.Tensor:
        return torch.randn(*size, generator=generator).to(device=device, dtype=dtype)

    sigma = torch.tensor([0.5], device=device, dtype=torch.float32)
    modalities = []
    for tools, cross_attention in ((video_tools, "attn2"), (audio_tools, "audio_attn2")):
        state = tools.create_initial_state(device, dtype)
        state = replace(state, latent=random(*state.latent.shape))
        context = random(1, CONTEXT_TOKENS, _context_width(velocity, cross_attention))
        modality = modality_from_latent_state(state, context, sigma)
        modalities.append(batched_modality([modality] * shape.batch))
    video, audio = modalities
    return {
        "video": video,
        "audio": audio,
        "perturbations": BatchedPerturbationConfig.empty(shape.batch),
    }


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_forward(transformer: torch.nn.Module, inputs: dict, warmup: int, repeats: int) -> tuple[list[float], int]:
    """Seconds per forward (after `warmup` untimed ones) and fp8 GEMMs per forward.

    With CUDA graphs the timed forwards replay a graph, which runs no Python per linear and so counts nothing;
    the count then comes from the warm-ups, per block pass that ran eagerly (warm-ups and the capture)."""
    device = inputs["video"].latent.device
    graphed = transformer.velocity_model.__dict__.get("_process_transformer_blocks")
    eager_before, calls_before = getattr(graphed, "eager_runs", 0), ScaledMMCounter.calls
    with torch.inference_mode():
        for _ in range(warmup):
            transformer(**inputs)
        _synchronize(device)
    eager_runs = getattr(graphed, "eager_runs", 0) - eager_before
    warmup_calls = (ScaledMMCounter.calls - calls_before) // eager_runs if eager_runs else None
    with torch.inference_mode():
        seconds = []
        calls_before = ScaledMMCounter.calls
        for _ in range(repeats):
            start = time.perf_counter()
            transformer(**inputs)
            _synchronize(device)
            seconds.append(time.perf_counter() - start)
    if warmup_calls is not None:
        return seconds, warmup_calls
    return seconds, (ScaledMMCounter.calls - calls_before) // max(repeats, 1)


def run_forward_bench(
    bundle: Bundle,
    device: torch.device,
    compute_dtype: torch.dtype,
    shapes: list[ForwardShape],
    quantizations: list[Quantization],
    warmup: int = 2,
    repeats: int = 5,
    cuda_graphs: bool = False,
    attentions: tuple[AttentionBackend, ...] = (AttentionBackend.SDPA,),
    compile_blocks: bool = False,
    profile: bool = False,
) -> list[dict]:
    """bf16 first (the reference for errors and ratios: its first attention backend), then each fp8 mode, one
    transformer on the device at a time; every shape under every attention backend. Returns one entry per
    (shape, quantization, attention); a backend that cannot run here gets an entry saying why."""
    order = sorted(quantizations, key=lambda q: q is not Quantization.BF16)
    residency = ModelManager(bundle, device, compute_dtype, cuda_graphs=cuda_graphs, compile_blocks=compile_blocks,
                             attention=AttentionBackend.SDPA)  # fmt: skip
    reference: dict[str, tuple[torch.Tensor, float]] = {}
    entries = []
    for quantization in order:
        residency.configure(
            ModelConfig(quantization, Residency.PERSISTENT, 1.0, text_encoder_quantization=TextEncoderQuantization.BF16)
        )
        with residency.stage_transformer(1) as stage:
            for shape in shapes:
                inputs = stage_inputs(stage.model, shape)
                for backend in attentions:
                    common = {"shape": shape.label, "batch": shape.batch, "quantization": quantization.value,
                              "attention": backend.value, "cuda_graphs": residency.cuda_graphs,
                              "compile_blocks": compile_blocks}  # fmt: skip
                    reason = attention_unavailable(backend, device)
                    if reason:
                        entries.append(common | {"refused": reason})
                        continue
                    with attention_of(stage.model, backend):
                        entry = _measure(stage.model, inputs, warmup, repeats, profile) | common
                    video = entry.pop("output")
                    key = shape.label
                    if key not in reference and quantization is Quantization.BF16:
                        reference[key] = (video, entry["seconds"])
                    if key in reference:
                        expected, seconds = reference[key]
                        entry["ratio_to_bf16"] = round(entry["seconds"] / seconds, 3)
                        entry["relative_error_vs_bf16"] = float((video - expected).norm() / expected.norm())
                    logger.info("forward %s %s %s: %.4f s", shape.label, quantization.value, backend, entry["seconds"])
                    entries.append(entry)
                    del video
                del inputs
        residency.release_all()
    return entries


def _measure(transformer: torch.nn.Module, inputs: dict, warmup: int, repeats: int, profile: bool) -> dict:
    """One configuration: timed forwards, the output, the FLOPs of one forward (eager only), a kernel profile."""
    seconds, fp8_calls = time_forward(transformer, inputs, warmup, repeats)
    graphed = transformer.velocity_model.__dict__.get("_process_transformer_blocks") is not None
    with torch.inference_mode():
        video = transformer(**inputs)[0].float().cpu()
    median = statistics.median(seconds)
    entry = {
        "video_tokens": int(inputs["video"].latent.shape[1]),
        "audio_tokens": int(inputs["audio"].latent.shape[1]),
        "seconds": round(median, 5),
        "runs": [round(s, 5) for s in seconds],
        "fp8_gemm_calls_per_forward": fp8_calls,
        "output": video,
    }
    if not graphed:  # a replayed graph dispatches no operators to count
        flops = count_flops(transformer, inputs)
        entry["flops_per_forward"] = flops
        entry["achieved_tflops"] = round(flops / median / 1e12, 1)
    if profile:
        entry["profile"] = kernel_profile(transformer, inputs)
    return entry


def count_flops(transformer: torch.nn.Module, inputs: dict) -> int:
    """FLOPs of one forward as torch.utils.flop_counter counts them (matmuls, attention, convolutions)."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        transformer(**inputs)
    return int(counter.get_total_flops())


KERNEL_KINDS = (  # attention first: cuDNN's attention kernels carry sm90_ in their names too
    ("attention", ("flash", "fmha", "cudnn", "attention", "sdpa")),
    ("matmul", ("gemm", "xmma", "cutlass", "cublas", "nvjet", "scaled_mm", "sm90_")),
    ("triton", ("triton",)),
)


def kernel_kind(name: str) -> str:
    lowered = name.lower()
    return next((kind for kind, marks in KERNEL_KINDS if any(m in lowered for m in marks)), "other")


def kernel_profile(transformer: torch.nn.Module, inputs: dict, top: int = 12) -> dict:
    """Where one forward's GPU time goes: milliseconds per kernel kind and the top kernels (torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile

    device = inputs["video"].latent.device
    if device.type != "cuda":
        return {}
    with torch.inference_mode(), profile(activities=[ProfilerActivity.CUDA]) as prof:
        transformer(**inputs)
        torch.cuda.synchronize(device)
    kernels = [e for e in prof.key_averages() if e.device_type.name == "CUDA" and e.device_time_total > 0]
    by_kind: dict[str, float] = {}
    for event in kernels:
        kind = kernel_kind(event.key)
        by_kind[kind] = by_kind.get(kind, 0.0) + event.device_time_total / 1000
    kernels.sort(key=lambda e: e.device_time_total, reverse=True)
    return {
        "gpu_ms": round(sum(by_kind.values()), 2),
        "by_kind_ms": {k: round(v, 2) for k, v in sorted(by_kind.items(), key=lambda kv: -kv[1])},
        "top": [(e.key[:90], round(e.device_time_total / 1000, 3), e.count) for e in kernels[:top]],
    }
