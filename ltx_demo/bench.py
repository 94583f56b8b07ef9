"""Benchmarks: run configurations x runs through the engine (and ltx-pipelines' stock pipeline beside them), record
time, memory, phases and output hashes as JSON (bench_report merges them into docs/benchmarks.json and renders .md)."""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

from ltx_demo.compiled_blocks import compile_stats, deterministic_kernels
from ltx_demo.engine import Engine
from ltx_demo.residency import MODEL_SPECS, free_device_memory
from ltx_demo.types import GenerationRequest, Residency, to_gib

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class BenchConfig:
    width: int
    height: int
    num_frames: int
    quantization: str
    residency: str
    steps: int
    seed: int
    batch_guidance: bool = True
    default_settings: bool = False  # what a user gets with no flags (only the shape chosen)
    decode_tiling: str = "default"  # types.DecodeTiling

    @property
    def resolution(self) -> str:
        return f"{self.width}x{self.height}"


def output_hash(mp4: str) -> str:
    """sha256 of the decoded frames and audio samples (not the mp4 bytes: container metadata may differ)."""
    digest = hashlib.sha256()
    with av.open(mp4) as container:
        for frame in container.decode(video=0):
            digest.update(frame.to_ndarray(format="rgb24").tobytes())
    with av.open(mp4) as container:
        for frame in container.decode(audio=0):
            digest.update(np.ascontiguousarray(frame.to_ndarray()).tobytes())
    return digest.hexdigest()


def drop_page_cache() -> bool:
    """Drop the OS page cache (root only; the device machine runs as root in its own VM)."""
    try:
        subprocess.run(["sync"], check=True)
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except (OSError, subprocess.CalledProcessError) as exc:
        logger.warning("could not drop the page cache: %s", exc)
        return False


def machine_facts(device) -> dict:
    import torch

    facts = {"torch": torch.__version__, "python": platform.python_version(), "device": str(device)}
    if device.type == "cuda":
        facts["card"] = torch.cuda.get_device_name(device)
        try:
            import pynvml

            pynvml.nvmlInit()
            facts["driver"] = pynvml.nvmlSystemGetDriverVersion()
        except Exception:
            facts["driver"] = None
    else:
        facts["card"] = platform.processor() or "cpu"
        facts["driver"] = None
    return facts


def compiled_note(compiled: bool, failures: list[str]) -> str:
    """The variant's words for compiled blocks: on, on but fallen back to eager (why), or nothing."""
    if not compiled:
        return ""
    if failures:
        return f", compile failed (eager: {failures[0]})"
    return ", compiled blocks (Inductor deterministic)" if deterministic_kernels() else ", compiled blocks"


def run_one(engine: Engine, config: BenchConfig, image: str, audio: str, prompt: str, drop_cache: bool) -> dict:
    import torch

    page_cache = None
    if config.residency == "cold-start":
        page_cache = "dropped" if drop_cache and drop_page_cache() else "warm"
    request = GenerationRequest(
        image_path=image,
        audio_path=audio,
        prompt=prompt,
        width=config.width,
        height=config.height,
        num_frames=config.num_frames,
        steps=config.steps,
        seed=config.seed,
        quantization=config.quantization,
        residency=config.residency,
        batch_guidance=config.batch_guidance,
        decode_tiling=config.decode_tiling,
    )
    kept_before = Counter(engine.models.kept_builds)
    failures_before = len(engine.models.compile_failures)
    try:
        result = engine.generate(request)
    except torch.OutOfMemoryError as exc:
        engine.models.release_all()
        return {"oom": True, "error": str(exc).splitlines()[0], "page_cache": page_cache}
    device_peak = max((s.device_used_bytes or 0 for s in result.samples), default=0) or None
    resident = idle = None
    if engine.device.type == "cuda":
        torch.cuda.synchronize()
        resident = torch.cuda.memory_allocated(engine.device)
        idle = engine.memory_now().device_used_bytes
    summary = result.summary()
    return {
        "elapsed_seconds": summary["elapsed_seconds"],
        "phases": {name: p["seconds"] for name, p in summary["phases"].items()},
        "peak_vram_gib": summary["peak_vram_gib"],
        "phase_peak_vram_gib": {name: p["peak_vram_gib"] for name, p in summary["phases"].items()},  # where the peak is
        "device_peak_gib": to_gib(device_peak),
        "resident_gib": to_gib(resident),
        "idle_gib": to_gib(idle),
        "output_hash": output_hash(result.output),
        "page_cache": page_cache,
        "variant": f"LoRA {summary['stage_2_lora'] or summary['lora_mode']}, "
        f"text encoder {summary['text_encoder_quantization']}"
        + ("" if config.batch_guidance else ", unbatched guidance")
        + (", CUDA graphs" if engine.models.cuda_graphs else "")
        + compiled_note(engine.models.compiled_blocks, engine.models.compile_failures[failures_before:])
        + (", kept as built" if kept_as_built(engine, summary) else "")
        + (", text models on host" if text_models_on_host(engine) else "")
        + cached_texts_note(result.prompt_cached)
        + ("" if config.decode_tiling == "default" else f", decode tiling {config.decode_tiling}"),
        "kept_builds": dict(Counter(engine.models.kept_builds) - kept_before),  # models built from a kept state
        "counters": summary["counters"],
        "compile": compile_stats() if engine.models.compiled_blocks else None,  # this process so far
        "components": engine.models.status().details,  # what stays on the device after the run, per model (bytes)
        "forward_seconds": {
            stage: round(summary["phases"][stage]["seconds"] / calls, 4)
            for stage in ("stage_1", "stage_2")
            if (calls := summary["counters"].get(f"{stage}_transformer_calls"))
        },
    }


def text_models_on_host(engine: Engine) -> bool:
    """Whether persistent kept Gemma or the processor in host memory between prompts (--text-models)."""
    config = engine.models.config
    return config is not None and config.residency is Residency.PERSISTENT and bool(engine.models.host_kept_as_built())


def cached_texts_note(cached: str | None) -> str:
    """The variant's words for the texts that came from the prompt cache (all: no Gemma ran, and per-request modes
    built none)."""
    if cached is None:
        return ""
    return ", prompt from the cache" if cached == "all" else f", {cached} texts from the cache"


def kept_as_built(engine: Engine, summary: dict) -> bool:
    """Whether this run's mode keeps some of its models as built (residency/specs.py): host-cached always does for
    the models whose config keeps them, cold-start and persistent (its first builds) only with a cache folder; the
    run's `kept_builds` says which builds read them."""
    config = engine.models.config
    if config is None:
        return False
    if summary["residency"] in ("cold-start", "persistent") and engine.models.cold_start_cache_dir is None:
        return False
    return any(spec.kept_as_built(config) for spec in MODEL_SPECS)


def run_bench(
    engine: Engine,
    configs: list[BenchConfig],
    runs: int,
    image: str,
    audio: str,
    prompt: str,
    drop_cache: bool,
    command: str,
    baseline_runs: int = 0,
) -> dict:
    """Every configuration `runs` times through the engine; then, with `baseline_runs`, ltx-pipelines' own
    A2VidPipelineTwoStage at each shape in the same process (the `x stock` column of the table)."""
    facts = machine_facts(engine.device)
    today = datetime.date.today().isoformat()
    results = []
    for config in configs:
        entry = {
            "resolution": config.resolution,
            "num_frames": config.num_frames,
            "quantization": config.quantization,
            "residency": config.residency,
            "steps": config.steps,
            "seed": config.seed,
            "default_settings": config.default_settings,
            "date": today,
            "command": command,
            "bundle": engine.bundle.describe(),
            **facts,
            "runs": [],
        }
        for index in range(runs):
            run = run_one(engine, config, image, audio, prompt, drop_cache)
            progress = {k: run.get(k) for k in ("elapsed_seconds", "peak_vram_gib", "phases", "compile", "output_hash")}
            print(json.dumps({"config": str(config), "run": index, **progress}), file=sys.stderr, flush=True)
            entry["runs"].append(run)
            if run.get("oom"):
                break  # the next runs of this configuration would not fit either
        # what the later runs (the table's mean) ran: the first may differ (its prompt was not yet in the cache)
        entry["variant"] = next((r["variant"] for r in reversed(entry["runs"]) if "variant" in r), None)
        hashes = {r["output_hash"] for r in entry["runs"] if "output_hash" in r}
        entry["identical_outputs"] = len(hashes) == 1 if hashes else None
        results.append(entry)
        print(json.dumps(entry), file=sys.stderr, flush=True)  # progress for a long run; stdout is the result
    baselines = []
    shapes = {(c.width, c.height, c.num_frames, c.steps, c.seed): c for c in configs}
    for config in shapes.values() if baseline_runs else ():
        baselines.append(run_stock_baseline(engine, config, baseline_runs, image, audio, prompt, command))
        print(json.dumps(baselines[-1]), file=sys.stderr, flush=True)
    return {"configs": results, "baseline": baselines}


def run_stock_baseline(
    engine: Engine, config: BenchConfig, runs: int, image: str, audio: str, prompt: str, command: str
) -> dict:
    """ltx-pipelines' A2VidPipelineTwoStage (fp8_cast, as its CLI builds it: every model per call) at `config`'s
    shape on the engine's bundle and device, `runs` times, after the engine let go of everything it held."""
    import torch

    from ltx_demo import media
    from ltx_demo.stock_pipeline import run_stock_a2v
    from ltx_demo.types import Quantization

    engine.models.release_all()
    free_device_memory(engine.device)
    entry = {
        "resolution": config.resolution,
        "num_frames": config.num_frames,
        "steps": config.steps,
        "seed": config.seed,
        "quantization": "fp8-cast",
        "date": datetime.date.today().isoformat(),
        "command": command,
        "bundle": engine.bundle.describe(),
        **machine_facts(engine.device),
        "runs": [],
    }
    cuda = engine.device.type == "cuda"
    for _ in range(runs):
        if cuda:
            torch.cuda.reset_peak_memory_stats(engine.device)
        started = time.perf_counter()
        stock = run_stock_a2v(
            engine.bundle, image=image, audio=audio, prompt=prompt, width=config.width, height=config.height,
            num_frames=config.num_frames, steps=config.steps, seed=config.seed, quantization=Quantization.FP8_CAST,
            device=engine.device,
        )  # fmt: skip
        if cuda:
            torch.cuda.synchronize(engine.device)
        elapsed = time.perf_counter() - started
        with tempfile.TemporaryDirectory() as tmp:
            mp4 = Path(tmp) / "stock.mp4"
            media.write_mp4(stock.frames.numpy(), stock.audio.numpy(), stock.sample_rate, 24, mp4)
            digest = output_hash(str(mp4))
        entry["runs"].append({
            "elapsed_seconds": round(elapsed, 3),
            "peak_vram_gib": to_gib(torch.cuda.max_memory_allocated(engine.device)) if cuda else None,
            "output_hash": digest,
        })  # fmt: skip
        del stock
        free_device_memory(engine.device)
        logger.info("stock %s: %.1f s", config.resolution, elapsed)
    entry["identical_outputs"] = len({r["output_hash"] for r in entry["runs"]}) == 1
    return entry


def parse_resolutions(text: str) -> list[tuple[int, int]]:
    out = []
    for item in text.split(","):
        width, _, height = item.strip().partition("x")
        out.append((int(width), int(height)))
    return out


def command_line(argv: list[str]) -> str:
    return "python -m ltx_demo " + shlex.join(argv)
