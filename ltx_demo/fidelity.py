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
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from ltx_demo import engine as engine_module
from ltx_demo import media, requests
from ltx_demo import pipeline as flow_module
from ltx_demo.checkpoints import Bundle
from ltx_demo.engine import Engine
from ltx_demo.quantization import stores_fp8, text_encoder_unavailable_reason, unavailable_reason
from ltx_demo.residency import ModelConfig, free_device_memory
from ltx_demo.residency.builds import ModelBuilder
from ltx_demo.residency.modes import PerRequest
from ltx_demo.residency.specs import spec
from ltx_demo.types import Flow, GenerationRequest, LoraMode, Quantization, Residency, TextEncoderQuantization

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


# -- the switches: one fast-flow change inside the reference flow -------------------------------------------------
@contextlib.contextmanager
def patched(owner, name: str, value) -> Iterator[None]:
    saved = getattr(owner, name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, saved)


def _config_with(**fields) -> contextlib.AbstractContextManager:
    """The reference's ModelConfig with some fields as the fast flow sets them (LoRA mode, Gemma quantization)."""
    model_config = Engine._model_config

    def changed(self, request):
        config, reason = model_config(self, request)
        return dataclasses.replace(config, **fields), reason

    return patched(Engine, "_model_config", changed)


def _guidance_with(change: Callable) -> contextlib.AbstractContextManager:
    guidance = flow_module.stage_1_guidance

    def changed(request, transformer):
        return change(transformer, *guidance(request, transformer))

    return patched(flow_module, "stage_1_guidance", changed)


def batched_guidance(_setup: Setup, _notes: list[str]) -> contextlib.AbstractContextManager:
    from ltx_demo.guidance import batched_guider_denoising_func

    return _guidance_with(lambda _t, params, _func: (params, batched_guider_denoising_func))


def stg_on_existing_block(_setup: Setup, notes: list[str]) -> contextlib.AbstractContextManager:
    """STG on the transformer's last block where LTX-2.3's block 28 does not exist (a synthetic transformer)."""
    from ltx_demo.guidance import _stg_blocks

    def move(transformer, params, func):
        blocks = _stg_blocks(transformer, params.stg_blocks)
        note = f"STG blocks {params.stg_blocks} -> {blocks}" if blocks != params.stg_blocks else (
            f"block {params.stg_blocks} exists in this transformer: the fast flow perturbs the same block"
        )  # fmt: skip
        if note not in notes:
            notes.append(note)
        return dataclasses.replace(params, stg_blocks=blocks), func

    return _guidance_with(move)


def gemma_dropped_parts(_setup: Setup, _notes: list[str]) -> contextlib.AbstractContextManager:
    from ltx_demo.text_path import drop_unused_gemma_parts_

    build = ModelBuilder._text_encoder

    def dropping(self, ledger):
        text_encoder = build(self, ledger)
        drop_unused_gemma_parts_(text_encoder)
        return text_encoder

    return patched(ModelBuilder, "_text_encoder", dropping)


def nf4_gemma(_setup: Setup, _notes: list[str]) -> contextlib.AbstractContextManager:
    return _config_with(text_encoder_quantization=TextEncoderQuantization.NF4)


def fp8_processor(_setup: Setup, _notes: list[str]) -> contextlib.AbstractContextManager:
    return patched(ModelConfig, "fp8_processor", property(lambda self: stores_fp8(self.quantization)))


def lora_adapter(_setup: Setup, _notes: list[str]) -> contextlib.AbstractContextManager:
    return _config_with(lora_mode=LoraMode.ADAPTER)


@contextlib.contextmanager
def lora_fused_in_place(setup: Setup, notes: list[str]) -> Iterator[None]:
    """What cold-start and host-cached do on CUDA: the LoRA fused into the one transformer after stage 1. On CUDA the
    mode decides (sm_89+ for fp8 weights); elsewhere it is forced, the way the CUDA default runs it."""
    with contextlib.ExitStack() as stack:
        stack.enter_context(lora_adapter(setup, notes))
        if setup.device.type != "cuda":
            notes.append("forced on this CPU (the modes fuse in place on CUDA only)")
            stack.enter_context(patched(PerRequest, "fuses_in_place", lambda self: True))
        yield


def fp8_scaled_mm(_setup: Setup, notes: list[str]) -> contextlib.AbstractContextManager:
    """fp8-cast's fp8 weights multiplied in fp8 (torch._scaled_mm) instead of upcast per forward; the reference flow
    refuses the project's kernel, so its check is lifted for this row."""
    notes.append("--quantization fp8-scaled-mm, the reference's refusal of it lifted for this row")
    return patched(requests, "_check_reference", lambda _request: None)


def cuda_graphs(_setup: Setup, _notes: list[str]) -> contextlib.AbstractContextManager:
    """The transformer blocks replayed as CUDA graphs (the engine's cuda_graphs, which only the fast flow applies)."""
    from ltx_demo.cuda_graphs import GraphedBlocks

    build = ModelBuilder.build

    def graphed(self, name, label, obtain, past_registry=False):
        model = build(self, name, label, obtain, past_registry)
        if spec(name).is_transformer and self._graph_key is not None and self.config.flow is Flow.REFERENCE:
            GraphedBlocks(model.velocity_model, extra_key=self._graph_key)
        return model

    return patched(ModelBuilder, "build", graphed)


def soundfile_audio(_setup: Setup, _notes: list[str]) -> contextlib.AbstractContextManager:
    """media.prepare_audio's segment (soundfile, resampled to 48 kHz) instead of ltx-pipelines' PyAV reader."""

    def read(request: GenerationRequest, _device):
        audio, note = media.prepare_audio(
            request.audio_path, request.audio_start, request.num_frames / request.frame_rate
        )
        return torch.from_numpy(audio), media.OUTPUT_SAMPLE_RATE, note

    return patched(flow_module, "reference_audio", read)


def lanczos_portrait(_setup: Setup, _notes: list[str]) -> contextlib.AbstractContextManager:
    """The portrait fitted to W x H with LANCZOS first (the stock's bilinear crop/resize then only halves it)."""
    prepare = media.prepare_image

    def prepare_fitted(path, width, height, fit, out_path):
        return prepare(path, width, height, media.ImageFit.CROP if fit is None else fit, out_path)

    return patched(media, "prepare_image", prepare_fitted)


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
    Row("lora_adapter", "LoRA as a runtime adapter (persistent)", switch=lora_adapter),
    Row("lora_fused_in_place", "LoRA fused in place after stage 1 (cold-start, host-cached on CUDA)",
        Residency.COLD_START, switch=lora_fused_in_place),
    Row("fp8_scaled_mm", "fp8-scaled-mm (fp8 GEMMs)", switch=fp8_scaled_mm, unavailable=_scaled_mm_unavailable,
        quantization=Quantization.FP8_SCALED_MM),
    Row("cuda_graphs", "CUDA graphs", switch=cuda_graphs, unavailable=_graphs_unavailable, cuda_graphs=True),
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
    cuda_graphs: bool = False  # the default row's engine (as generate --cuda-graphs would build it)
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
            cuda_graphs=args.cuda_graphs,
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
        cuda_graphs=row.cuda_graphs or (row.kind == "fast" and setup.cuda_graphs),
        cold_start_cache_dir=setup.cold_start_cache_dir,
        compute_dtype=row.compute_dtype or setup.compute_dtype,
    )


def _request(setup: Setup, row: Row | None) -> GenerationRequest:
    """The reference flow's request at the row's residency (row None: the reference itself), or the default's."""
    fields = dict(image_path=setup.image, audio_path=setup.audio, prompt=setup.prompt, **setup.shape)
    if row is not None and row.kind == "fast":
        return GenerationRequest(**fields, quantization=setup.quantization)  # every other field its default
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
        "stage_1_transformer_calls": result.counters.get("stage_1_transformer_calls"),
        "fp8_scaled_mm_calls": result.counters.get("fp8_scaled_mm_calls"),
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


# -- docs/fidelity.md -----------------------------------------------------------------------------------------------
def _cell(value: float | None, digits: str = ".3g") -> str:
    return "-" if value is None else format(value, digits)


def render_markdown(data: dict) -> str:
    shape = data["shape"]
    machine = data["machine"]
    synthetic = data["bundle"].get("synthetic")
    lines = [
        "# Fidelity: what each speed-up costs against the reference flow",
        "",
        f"`{data['command']}`",
        "",
        f"{data['date']}; {machine['card']} ({machine['device']}, {machine['cpu_threads']} CPU threads), torch "
        f"{machine['torch']}; bundle: {'synthetic ' + str(data['bundle'].get('scale')) if synthetic else 'real'} "
        f"({data['bundle'].get('root')}); {shape['width']}x{shape['height']}x{shape['num_frames']}, "
        f"{shape['steps']} steps, seed {shape['seed']}; quantization {data['quantization']}, compute "
        f"{data['compute_dtype']}.",
        "",
        "Each row switches ONE speed-up of the fast flow on inside the reference flow (`--flow reference`, "
        "which renders ltx-pipelines' A2VidPipelineTwoStage bit for bit: the sanity row) and compares with the "
        "reference flow at the same residency, inputs and seed; the last row is the fast default request as a "
        "whole. Relative L2 error of the video latent after stage 1 and after stage 2 (`DecodedClip.stage_latents`), "
        "PSNR of the decoded frames (before the mp4). Seconds saved: the reference's elapsed seconds minus the "
        "variant's, each configuration run once to warm and then timed "
        f"({data['timed_runs']} timed run(s), the fastest), in a fresh engine per row: "
        "persistent rows time warm models, cold-start rows a warm page cache and the kept-as-built states.",
        "",
        "Random (synthetic) weights can exaggerate or hide errors: a random transformer amplifies or damps a small "
        "change unlike the trained one, and the tiny bundle's seconds are milliseconds of noise. The command runs "
        "unchanged on a real bundle (`--bundle DIR`, or the four path flags as for `generate`).",
        "",
        "| speed-up | seconds saved | stage-1 latent rel. error | final latent rel. error | PSNR vs reference | "
        "how it ran |",
        "|---|---|---|---|---|---|",
    ]
    for row in data["rows"]:
        if row["status"] != "measured":
            lines.append(f"| {row['speedup']} | - | - | - | - | {row['status']}: {row['reason']} |")
            continue
        ran = row["ran"]
        how = [row["residency"] if ran["flow"] != "stock" else "stock pipeline, builds per call"]
        if row["key"] == "stock":
            how.append("vs the reference flow, cold-start")
        if row["key"] == "default":
            how.append(f"text encoder {ran['text_encoder_quantization']}, LoRA {ran['stage_2_lora']}")
        elif ran.get("stage_2_lora") and row["key"].startswith("lora"):
            how.append(f"LoRA {ran['stage_2_lora']}")
        if row["identical"]:
            how.append("identical frames and latents")
        psnr_cell = "inf (identical)" if row["identical"] else f"{row['psnr_db']:.2f} dB"
        lines.append(
            f"| {row['speedup']} | {row['seconds_saved']:+.3f} | {_cell(row.get('stage_1_latent_rel_l2'))} | "
            f"{_cell(row.get('final_latent_rel_l2'))} | {psnr_cell} | {'; '.join(how + row['notes'])} |"
        )
    reference = "; ".join(f"{mode} {ref['seconds']} s" for mode, ref in data["reference"].items())
    lines += [
        "",
        f"The reference flow took {reference} (timed, warm). int8 (optimum-quanto) has no row: it is not offered "
        "(docs/fidelity-int8.md).",
        "",
    ]
    busiest = max([*machine.get("load_average", [0]), *(r.get("load_average", 0) for r in data["rows"])])
    if busiest > (machine.get("cpu_cores") or 1):
        lines += [
            f"The machine was shared: its 1-minute load average reached {busiest} on {machine['cpu_cores']} cores "
            "(other processes), so the seconds above are mostly noise; the errors and PSNR do not depend on it.",
            "",
        ]
    if data["compute_dtype"] == "bfloat16" and data["machine"]["device"].startswith("cpu"):
        lines += [
            "bf16 compute on the CPU: the stock pipeline's dtype, so the reference equals it. The CPU default "
            "(float32, its row above) is not rounding but other noise: on the CPU `torch.randn` draws 16+ float32 "
            "values with another (vectorised) algorithm than bf16 ones, so the same seed gives another sample "
            "(docs/fidelity-differences.md measures float32 with the noise drawn in bf16: 41.6 dB).",
            "",
        ]
    return "\n".join(lines)


def summary(data: dict, out: Path, markdown: Path) -> dict:
    """What the command prints: where it wrote, and each row's status."""
    return {"out": str(out), "markdown": str(markdown), "rows": {r["key"]: r["status"] for r in data["rows"]}}
