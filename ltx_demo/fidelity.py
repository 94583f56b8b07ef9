"""`python -m ltx_demo fidelity`: what each speed-up of the fast flow costs against the reference flow (which renders
ltx-pipelines' A2VidPipelineTwoStage bit for bit), one at a time and all together: latent error, PSNR, seconds saved.

Each row switches ONE fast-flow change on inside the reference flow by patching the flow's own function for the
duration of the row (one run at a time: a command, never the app's engine), so it runs unchanged on a real bundle.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import logging
import math
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from ltx_demo import engine as engine_module
from ltx_demo.attention import unavailable_reason as attention_unavailable
from ltx_demo.checkpoints import Bundle
from ltx_demo.engine import Engine
from ltx_demo.fidelity_switches import (
    attention_kernel,
    batched_guidance,
    compiled_blocks,
    cuda_graphs,
    fp8_fast_accumulation,
    fp8_processor,
    fp8_scaled_mm,
    frame_wide_tiles,
    gemma_dropped_parts,
    lanczos_portrait,
    lora_adapter,
    lora_fused_in_place,
    nf4_gemma,
    patched,
    prompt_cache,
    soundfile_audio,
    stg_on_existing_block,
)
from ltx_demo.quantization import stores_fp8, text_encoder_unavailable_reason, unavailable_reason
from ltx_demo.residency import free_device_memory
from ltx_demo.types import (
    AttentionBackend,
    CudaGraphs,
    Flow,
    GenerationRequest,
    Quantization,
    Residency,
    TextEncoderQuantization,
)

logger = logging.getLogger(__name__)


# -- the measures ---------------------------------------------------------------------------------------------------
def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of uint8 frames; inf when identical."""
    mse = ((a.double() - b.double()) ** 2).mean().item()
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def relative_l2(x: torch.Tensor, reference: torch.Tensor) -> float:
    return ((x.double() - reference.double()).norm() / reference.double().norm()).item()


def compare(clip, reference) -> dict:
    """A clip (DecodedClip or StockRun) against the reference's: frames and the video latent after each stage."""
    out = {
        "identical": bool(torch.equal(clip.frames, reference.frames))
        and all(torch.equal(a, b) for a, b in zip(clip.stage_latents, reference.stage_latents, strict=True)),
        "psnr_db": round(psnr(clip.frames, reference.frames), 2),
        "max_pixel_diff": int((clip.frames.int() - reference.frames.int()).abs().max()),
    }
    for name, x, y in zip(("stage_1", "final"), clip.stage_latents, reference.stage_latents, strict=True):
        out[f"{name}_latent_rel_l2"] = float(f"{relative_l2(x, y):.3g}")
        out[f"{name}_latent_max_abs"] = float(f"{(x.float() - y.float()).abs().max():.4g}")
    return out


# -- the rows -------------------------------------------------------------------------------------------------------
def _runs_anywhere(_setup: Setup) -> str | None:
    return None


def _needs_fp8(setup: Setup) -> str | None:
    if not stores_fp8(setup.quantization):
        return "the fast flow stores the processor in fp8 beside an fp8 transformer only: use --quantization fp8-cast"
    return None


def _nf4_unavailable(setup: Setup) -> str | None:
    return text_encoder_unavailable_reason(TextEncoderQuantization.NF4, setup.device)


def _scaled_mm_unavailable(setup: Setup) -> str | None:
    if setup.quantization is not Quantization.FP8_CAST:
        return "fp8-scaled-mm replaces fp8-cast's upcasting forward: run with --quantization fp8-cast"
    return unavailable_reason(Quantization.FP8_SCALED_MM, setup.device)


def _graphs_unavailable(setup: Setup) -> str | None:
    if setup.device.type != "cuda":
        return f"CUDA graphs capture CUDA kernels; this engine runs on {setup.device.type}"
    return None


def _attention_unavailable(backend: AttentionBackend) -> Callable[[Setup], str | None]:
    return lambda setup: attention_unavailable(backend, setup.device)


def _float32_unavailable(setup: Setup) -> str | None:
    if setup.device.type == "cuda":
        return "the CUDA default computes in bf16, the reference's dtype: nothing to measure"
    if setup.compute_dtype == torch.float32:
        return "the reference already computes in float32 here (--compute-dtype float32)"
    return None


@dataclasses.dataclass(frozen=True, slots=True)
class Row:
    """One row of the table: what runs against the reference flow at the same residency."""

    key: str  # --only names it
    speedup: str
    residency: Residency = Residency.PERSISTENT
    switch: Callable[[Setup, list[str]], contextlib.AbstractContextManager] | None = None
    unavailable: Callable[[Setup], str | None] = _runs_anywhere
    kind: str = "switch"  # switch: the reference with `switch` on; fast: the default request; stock: ltx-pipelines
    quantization: Quantization | None = None  # None: the command's
    compute_dtype: torch.dtype | None = None  # None: the command's
    cuda_graphs: bool = False


ROWS = (
    Row("stock", "sanity: ltx-pipelines' A2VidPipelineTwoStage itself (must be identical)", Residency.COLD_START,
        kind="stock"),
    Row("batched_guidance", "batched guidance (stage 1's passes in one call)", switch=batched_guidance),
    Row("fp8_processor", "fp8 embeddings processor", switch=fp8_processor, unavailable=_needs_fp8),
    Row("gemma_parts", "Gemma without vision tower, projector, lm_head", switch=gemma_dropped_parts),
    Row("nf4_gemma", "nf4 Gemma", switch=nf4_gemma, unavailable=_nf4_unavailable),
    Row("prompt_cache", "prompt contexts from the prompt cache (the timed runs' texts)", switch=prompt_cache),
    Row("lora_adapter", "LoRA as a runtime adapter (persistent)", switch=lora_adapter),
    Row("lora_fused_in_place", "LoRA fused in place after stage 1 (cold-start, host-cached on CUDA)",
        Residency.COLD_START, switch=lora_fused_in_place),
    Row("fp8_scaled_mm", "fp8-scaled-mm (fp8 GEMMs)", switch=fp8_scaled_mm, unavailable=_scaled_mm_unavailable,
        quantization=Quantization.FP8_SCALED_MM),
    Row("fp8_fast_accumulation", "fp8-scaled-mm with fast accumulation (its default)", switch=fp8_fast_accumulation,
        unavailable=_scaled_mm_unavailable, quantization=Quantization.FP8_SCALED_MM),
    Row("cuda_graphs", "CUDA graphs", switch=cuda_graphs, unavailable=_graphs_unavailable, cuda_graphs=True),
    Row("compiled_blocks", "torch.compile'd transformer blocks (--compile-blocks)", switch=compiled_blocks),
    *(Row(f"attention_{backend.name.lower()}", f"attention on {backend} (--attention {backend})",
          switch=attention_kernel(backend), unavailable=_attention_unavailable(backend))
      for backend in (AttentionBackend.SDPA_FLASH, AttentionBackend.SDPA_CUDNN, AttentionBackend.SDPA_EFFICIENT,
                      AttentionBackend.XFORMERS)),
    Row("frame_tiles", "decoder tiles the frame's size (--decode-tiling frame; not the default)",
        switch=frame_wide_tiles),
    Row("soundfile_audio", "audio read with soundfile + resampled to 48 kHz", switch=soundfile_audio),
    Row("lanczos_portrait", "portrait pre-fitted to WxH with LANCZOS", switch=lanczos_portrait),
    Row("stg_block", "STG moved onto an existing block (synthetic bundles only)", switch=stg_on_existing_block),
    Row("float32", "float32 compute (the CPU default)", unavailable=_float32_unavailable,
        compute_dtype=torch.float32),
    Row("default", "the default as a whole", kind="fast"),
)  # fmt: skip
ROW_KEYS = tuple(row.key for row in ROWS)


@dataclasses.dataclass(frozen=True, slots=True)
class Setup:
    """What one fidelity command measures with; each row's engine is built from it."""

    bundle: Bundle
    device: torch.device
    compute_dtype: torch.dtype
    quantization: Quantization
    shape: dict  # width, height, num_frames, frame_rate, steps, seed
    image: str
    audio: str
    prompt: str
    cold_start_cache_dir: Path | None = None
    cuda_graphs: CudaGraphs = CudaGraphs.AUTO  # the default row's engine (as generate --cuda-graphs would build it)
    timed_runs: int = 1  # after one warm run; the fastest is reported (other processes only ever add time)
    only: tuple[str, ...] = ROW_KEYS
    command: str = ""

    @classmethod
    def from_args(cls, args, bundle: Bundle, compute_dtype: torch.dtype) -> Setup:
        """From the `fidelity` subcommand's flags (cli.py); `bundle` resolved from the bundle flags."""
        from ltx_demo.engine import pick_device

        only = tuple(k.strip() for k in args.only.split(",")) if args.only else ROW_KEYS
        unknown = sorted(set(only) - set(ROW_KEYS))
        if unknown:
            raise ValueError(f"--only: unknown rows {', '.join(unknown)}; the rows are {', '.join(ROW_KEYS)}")
        folder = args.cold_start_cache_dir
        shape = dict(width=args.width, height=args.height, num_frames=args.num_frames, frame_rate=24,
                     steps=args.steps, seed=args.seed)  # fmt: skip
        return cls(
            bundle=bundle,
            device=pick_device(args.device),
            compute_dtype=compute_dtype,
            quantization=Quantization(args.quantization),
            shape=shape,
            image=args.image,
            audio=args.audio,
            prompt=args.prompt,
            cold_start_cache_dir=None if folder.lower() == "off" else Path(folder).expanduser(),
            cuda_graphs=CudaGraphs(args.cuda_graphs),
            timed_runs=args.timed_runs,
            only=only,
            command=getattr(args, "command_line", ""),
        )


@dataclasses.dataclass(frozen=True, slots=True)
class Timed:
    """A configuration run once to warm and then `timed_runs` times: its clip, the fastest run's seconds, what ran."""

    clip: object  # DecodedClip or StockRun of the last timed run
    seconds: float
    repeatable: bool  # the timed runs rendered the warm run's frames
    ran: dict


def _engine(setup: Setup, row: Row, work_dir: Path) -> Engine:
    return Engine(
        setup.bundle,
        work_dir / "outputs",
        str(setup.device),
        cuda_graphs=CudaGraphs.ON if row.cuda_graphs else setup.cuda_graphs if row.kind == "fast" else CudaGraphs.OFF,
        cold_start_cache_dir=setup.cold_start_cache_dir,
        compute_dtype=row.compute_dtype or setup.compute_dtype,
    )


def _request(setup: Setup, row: Row | None) -> GenerationRequest:
    """The reference flow's request at the row's residency (row None: the reference itself), or the default's."""
    fields = dict(image_path=setup.image, audio_path=setup.audio, prompt=setup.prompt, **setup.shape)
    if row is not None and row.kind == "fast":  # every other field its default
        # Against the fp8-cast reference, the quantization a request naming none runs (fp8-scaled-mm on Hopper).
        default = setup.quantization is Quantization.FP8_CAST
        return GenerationRequest(**fields, quantization=None if default else setup.quantization)
    quantization = (row.quantization if row else None) or setup.quantization
    residency = row.residency if row else Residency.PERSISTENT
    return GenerationRequest(**fields, quantization=quantization, residency=residency, flow=Flow.REFERENCE)


def run_engine(setup: Setup, row: Row, request: GenerationRequest, work_dir: Path, notes: list[str]) -> Timed:
    """A fresh engine for the row (nothing built under another row's switch is reused), warm run, timed runs."""
    clips: list = []
    run = engine_module.run_two_stage

    def recording(*args, **kwargs):
        clips.append(run(*args, **kwargs))
        return clips[-1]

    engine = _engine(setup, row, work_dir)
    seconds, phases = [], {}
    switch = row.switch(setup, notes) if row.switch and row.kind == "switch" else contextlib.nullcontext()
    try:
        with patched(engine_module, "run_two_stage", recording), switch:
            for attempt in range(1 + setup.timed_runs):
                result = engine.generate(request)
                if attempt and (not seconds or result.elapsed_seconds < min(seconds)):
                    phases = {p.name: round(p.seconds, 3) for p in result.phases}
                if attempt:
                    seconds.append(result.elapsed_seconds)
            graphs = engine.models.graphs_for(engine.models.config)
            compiled = engine.models.compile_for(engine.models.config) or row.key == "compiled_blocks"
            compile_failures = list(engine.models.compile_failures)
    finally:
        engine.models.release_all()
        del engine
        free_device_memory(setup.device)
    ran = {
        "flow": result.flow,
        "residency": result.residency,
        "quantization": str(result.quantization),
        "compute_dtype": result.compute_dtype,
        "text_encoder_quantization": result.text_encoder_quantization,
        "stage_2_lora": result.stage_2_lora,
        "cuda_graphs": graphs,
        "compiled_blocks": compiled,
        "compile_failures": compile_failures,
        "stage_1_transformer_calls": result.counters.get("stage_1_transformer_calls"),
        "fp8_scaled_mm_calls": result.counters.get("fp8_scaled_mm_calls"),
        "prompt_texts_from_cache": result.counters.get("prompt_texts_from_cache", 0),  # of the last timed run
        "peak_vram_bytes": result.peak_vram_bytes,
        "peak_rss_bytes": result.peak_rss_bytes,
        "phase_seconds": phases,  # of the fastest timed run
    }
    repeatable = all(torch.equal(c.frames, clips[0].frames) for c in clips)
    return Timed(clips[-1], min(seconds), repeatable, ran)


def run_stock(setup: Setup) -> Timed:
    """A2VidPipelineTwoStage as its CLI calls it (it builds its models per call, always computing in bf16)."""
    from ltx_demo.stock_pipeline import run_stock_a2v

    runs, seconds = [], []
    for attempt in range(1 + setup.timed_runs):
        started = time.perf_counter()
        runs.append(
            run_stock_a2v(
                setup.bundle, image=setup.image, audio=setup.audio, prompt=setup.prompt,
                quantization=setup.quantization, device=setup.device, **setup.shape,
            )
        )  # fmt: skip
        if setup.device.type == "cuda":
            torch.cuda.synchronize(setup.device)
        if attempt:
            seconds.append(time.perf_counter() - started)
        free_device_memory(setup.device)
    repeatable = all(torch.equal(r.frames, runs[0].frames) for r in runs)
    ran = {"flow": "stock", "residency": "builds per call", "quantization": setup.quantization.value,
           "compute_dtype": "bfloat16"}  # fmt: skip
    return Timed(runs[-1], min(seconds), repeatable, ran)


def measure_row(setup: Setup, row: Row, reference: Callable[[Residency], Timed], work_dir: Path) -> dict:
    """One row: refused (with the reason), not run (--only), failed (the error), or measured against the reference
    flow at the row's residency."""
    entry = {"key": row.key, "speedup": row.speedup, "residency": row.residency.value}
    reason = row.unavailable(setup)
    if reason:
        return entry | {"status": "refused", "reason": reason}
    if row.key not in setup.only:
        return entry | {"status": "not run", "reason": "not in --only"}
    notes: list[str] = []
    try:
        baseline = reference(row.residency)
        variant = run_stock(setup) if row.kind == "stock" else run_engine(
            setup, row, _request(setup, row), work_dir, notes
        )  # fmt: skip
    except Exception as exc:  # a row that cannot run here says why; the others still run
        logger.exception("fidelity row %s failed", row.key)
        return entry | {"status": "failed", "reason": f"{type(exc).__name__}: {exc}".splitlines()[0]}
    if not (variant.repeatable and baseline.repeatable):
        notes.append("a timed run rendered other frames than its warm run (nondeterministic kernels)")
    return entry | {
        "status": "measured",
        "seconds_saved": round(baseline.seconds - variant.seconds, 3),
        "reference_seconds": round(baseline.seconds, 3),
        "variant_seconds": round(variant.seconds, 3),
        **compare(variant.clip, baseline.clip),
        "ran": variant.ran,
        "reference_ran": baseline.ran,
        "load_average": round(os.getloadavg()[0], 2),  # 1-minute, as the row ended: other processes' share
        "notes": notes,
    }


def run_fidelity(setup: Setup) -> dict:
    """Every row (docs/fidelity.json's content); the reference flow is run once per residency a row needs."""
    from ltx_demo.bench import machine_facts

    references: dict[Residency, Timed] = {}
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="ltx-fidelity-") as tmp:
        work_dir = Path(tmp)

        def reference(residency: Residency) -> Timed:
            if residency not in references:
                base = Row("reference", "the reference flow", residency)
                references[residency] = run_engine(setup, base, _request(setup, base), work_dir, [])
            return references[residency]

        rows = []
        for row in ROWS:
            rows.append(measure_row(setup, row, reference, work_dir))
            logger.info("fidelity: %s", rows[-1])
    return {
        "command": setup.command,
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine_facts(setup.device)
        | {
            "cpu_threads": torch.get_num_threads(),
            "cpu_cores": os.cpu_count(),
            "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)],  # 1-minute, before and after
        },
        "bundle": setup.bundle.describe(),
        "shape": setup.shape,
        "quantization": setup.quantization.value,
        "compute_dtype": str(setup.compute_dtype).removeprefix("torch."),
        "timed_runs": setup.timed_runs,
        "inputs": {"image": setup.image, "audio": setup.audio, "prompt": setup.prompt},
        "reference": {r.value: {"seconds": round(t.seconds, 3), "ran": t.ran} for r, t in references.items()},
        "rows": rows,
    }


def summary(data: dict, out: Path, markdown: Path) -> dict:
    """What the command prints: where it wrote, and each row's status."""
    return {"out": str(out), "markdown": str(markdown), "rows": {r["key"]: r["status"] for r in data["rows"]}}
