"""Benchmarks: run configurations x runs through the engine, record time, memory and output hashes as JSON,
merge them into docs/benchmarks.json and render docs/benchmarks.md beside the seed article's numbers."""

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

from ltx_demo.bench_runs import finished, later_seconds, mean
from ltx_demo.compiled_blocks import compile_stats
from ltx_demo.engine import Engine
from ltx_demo.residency import MODEL_SPECS, free_device_memory
from ltx_demo.roofline import render_roofline
from ltx_demo.types import GenerationRequest, to_gib

logger = logging.getLogger(__name__)

# The seed article (RTX PRO 6000 Blackwell 96 GiB, real weights, 97 frames, seed 42, fp8-cast persistent).
SEED_TABLE = {
    ("768x512", "fp8-cast", "persistent"): (39.84, 57.92),
    ("1024x768", "fp8-cast", "persistent"): (66.71, 59.06),
    ("1280x768", "fp8-cast", "persistent"): (84.02, 58.30),
    ("768x512", "fp8-cast", "cold-start"): (88.78, 23.90),
}


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
    return f", compile failed (eager: {failures[0]})" if failures else ", compiled blocks"


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
        + (", kept as built" if kept_as_built(engine, summary) else ""),
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
        entry["variant"] = next((r["variant"] for r in entry["runs"] if "variant" in r), None)
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


def merge_into(benchmarks: Path, new: dict) -> dict:
    """docs/benchmarks.json accumulates across device sessions; a configuration measured again is replaced
    only when it was measured on the same card with the same command. One-forward timings (forward-bench) go to
    `forward`, replaced per (shape, quantization, card)."""
    data = json.loads(benchmarks.read_text()) if benchmarks.exists() else {"configs": []}
    if new.get("forward"):

        def forward_key(f: dict) -> tuple:
            return (
                f["shape"],
                f["quantization"],
                f.get("card"),
                f.get("bundle", {}).get("scale"),
                bool(f.get("cuda_graphs")),
            )

        fresh = {forward_key(f) for f in new["forward"]}
        data["forward"] = [f for f in data.get("forward", []) if forward_key(f) not in fresh] + new["forward"]

    def key(c: dict) -> tuple:
        return (
            c["resolution"],
            c["num_frames"],
            c["quantization"],
            c["residency"],
            c["steps"],
            c.get("card"),
            c.get("bundle", {}).get("scale"),
            c.get("variant"),
            page_cache(c),
            c.get("command"),
        )

    if new.get("baseline"):

        def baseline_key(b: dict) -> tuple:
            return (b["resolution"], b["num_frames"], b["steps"], b.get("card"), b["command"])

        fresh = {baseline_key(b) for b in new["baseline"]}
        data["baseline"] = [b for b in data.get("baseline", []) if baseline_key(b) not in fresh] + new["baseline"]
    if new.get("roofline"):
        fresh = {(r["resolution"], r["num_frames"], r.get("card")) for r in new["roofline"]}
        kept = [r for r in data.get("roofline", []) if (r["resolution"], r["num_frames"], r.get("card")) not in fresh]
        data["roofline"] = kept + new["roofline"]
    replaced = {key(c) for c in new.get("configs", [])}
    data["configs"] = [c for c in data["configs"] if key(c) not in replaced] + new.get("configs", [])
    benchmarks.write_text(json.dumps(data, indent=2) + "\n")
    return data


def page_cache(config: dict) -> str | None:
    """Whether a cold-start configuration read from a warm or a dropped page cache (None for other modes)."""
    return next((r["page_cache"] for r in config["runs"] if r.get("page_cache")), None)


def render_markdown(data: dict) -> str:
    lines = [
        "# Benchmarks",
        "",
        "Generated by `python -m ltx_demo bench-report` from `docs/benchmarks.json`; each row is the mean of its runs.",
        "Seed numbers: the article in shared/seeds (RTX PRO 6000 Blackwell 96 GiB, real LTX-2.3 weights).",
        "",
        "Elapsed: the first run (it builds the models) and the mean of the later runs (persistent: models resident). "
        "Default settings: yes when the row ran what a request naming no options gets on that card.",
        "",
        "| resolution | frames | steps | quantization | residency | variant | default settings | card | bundle | runs "
        "| first s | later s "
        "| peak VRAM GiB | device peak GiB | resident GiB | identical outputs | x stock (same run) | seed elapsed s "
        "| seed peak GiB |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- "
        "| --- |",
    ]
    order = {"persistent": 0, "cold-start": 1, "host-cached": 2, "auto": 3}
    data = {
        **data,
        "configs": sorted(
            data["configs"],
            key=lambda c: (
                c.get("card") or "",
                order.get(c["residency"], 9),
                c["quantization"] != "fp8-cast",
                int(c["resolution"].split("x")[0]),
            ),
        ),
    }
    for c in data["configs"]:
        runs = finished(c["runs"])
        seed = SEED_TABLE.get((c["resolution"], c["quantization"], c["residency"]), (None, None))
        scale = c.get("bundle", {}).get("scale") or ("real" if not c.get("bundle", {}).get("synthetic") else "?")
        first = runs[0]["elapsed_seconds"] if runs else "OOM"
        later = later_seconds(runs) if len(runs) > 1 else "-"
        lines.append(
            f"| {c['resolution']} | {c['num_frames']} | {c['steps']} | {c['quantization']} | {c['residency']} "
            f"| {c.get('variant') or '-'}{f', page cache {page_cache(c)}' if page_cache(c) else ''} "
            f"| {defaults_cell(c)} | {c.get('card')} | {scale} | {len(c['runs'])} | {first} | {later} "
            f"| {mean([r['peak_vram_gib'] for r in runs])} | {mean([r['device_peak_gib'] for r in runs])} "
            f"| {mean([r['resident_gib'] for r in runs])} | {c.get('identical_outputs')} "
            f"| {stock_ratio(data.get('baseline', []), c, later)} "
            f"| {seed[0] if seed[0] is not None else '-'} | {seed[1] if seed[1] is not None else '-'} |"
        )
    lines += ["", "Per-phase seconds (mean over runs; load = every model build, first run only when persistent):", ""]
    phase_names: list[str] = []
    for c in data["configs"]:
        for r in c["runs"]:
            phase_names += [p for p in r.get("phases", {}) if p not in phase_names]
    main = [p for p in phase_names if not p.startswith("load:")]
    lines.append("| configuration | load (all) | " + " | ".join(main) + " |")
    lines.append("| --- | --- | " + " | ".join("---" for _ in main) + " |")
    for c in data["configs"]:
        runs = finished(c["runs"])
        if not runs:
            continue
        load = mean([sum(v for k, v in r["phases"].items() if k.startswith("load:")) for r in runs])
        cells = [mean([r["phases"].get(p) for r in runs]) for p in main]
        lines.append(
            f"| {c['resolution']} {c['quantization']} {c['residency']}, {c.get('variant') or '-'}"
            f"{f', page cache {page_cache(c)}' if page_cache(c) else ''} ({c.get('card')}) "
            f"| {load} | " + " | ".join(str(x) for x in cells) + " |"
        )
    lines += render_baseline_table(data.get("baseline", []))
    lines += render_forward_table(data.get("forward", []))
    lines += render_roofline(data)
    if data.get("notes"):
        lines += ["", "## Notes", ""] + [f"- {note}" for note in data["notes"]]
    measured = data["configs"] + data.get("forward", []) + data.get("baseline", [])
    commands = sorted({c["command"] for c in measured})
    lines += ["", "Commands:", ""] + [
        f"- `{cmd}` ({', '.join(sorted({c['date'] for c in measured if c['command'] == cmd}))})" for cmd in commands
    ]
    return "\n".join(lines) + "\n"


def defaults_cell(config: dict) -> str:
    """yes: the settings a request with no flags gets (bench `--quantization default`, persistent, batched guidance,
    the engine's auto choices); no; ? for records from before the flag was kept."""
    if "default_settings" not in config:
        return "?"
    return "yes" if config["default_settings"] else "no"


def _same_run(baseline: dict, config: dict) -> bool:
    keys = ("resolution", "num_frames", "steps", "card", "command")
    return all(baseline.get(k) == config.get(k) for k in keys)


def stock_ratio(baselines: list[dict], config: dict, later) -> str:
    """How many times faster than A2VidPipelineTwoStage timed in the same bench command (later runs each)."""
    stock = next((b for b in baselines if _same_run(b, config)), None)
    if stock is None or not isinstance(later, float | int) or not later:
        return "-"
    stock_seconds = later_seconds(stock["runs"])
    return f"{stock_seconds / later:.2f}x" if stock_seconds else "-"


def render_baseline_table(baselines: list[dict]) -> list[str]:
    """ltx-pipelines' A2VidPipelineTwoStage timed by `bench --baseline stock`, in the same process as the rows."""
    if not baselines:
        return []
    lines = [
        "",
        "ltx-pipelines' own `A2VidPipelineTwoStage` (fp8_cast; it builds every model per call), timed by the same "
        "`bench` command on the same bundle and card (`--baseline-runs`); `x stock` above divides its later runs' "
        "mean by a row's:",
        "",
        "| resolution | frames | steps | card | runs | first s | later s | peak VRAM GiB | identical outputs |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for b in baselines:
        runs = b["runs"]
        lines.append(
            f"| {b['resolution']} | {b['num_frames']} | {b['steps']} | {b.get('card')} | {len(runs)} "
            f"| {runs[0]['elapsed_seconds']} | {later_seconds(runs) if len(runs) > 1 else '-'} "
            f"| {mean([r['peak_vram_gib'] for r in runs])} | {b.get('identical_outputs')} |"
        )
    return lines


def render_forward_table(forward: list[dict]) -> list[str]:
    """One transformer forward per shape: seconds per quantization, ratio to bf16, error vs bf16, fp8 GEMMs."""
    if not forward:
        return []
    lines = [
        "",
        "One stage-transformer forward on identical inputs (`python -m ltx_demo forward-bench`; median of the timed "
        "runs; shape = the pixel size the stage's latents decode to, /4 = four guidance passes in one call):",
        "",
        "| card | CUDA graphs | shape | video tokens | quantization | seconds | x bf16 | rel. error vs bf16 "
        "| fp8 GEMMs / forward |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    order = {"bf16": 0, "fp8-cast": 1, "fp8-scaled-mm": 2}

    def position(f: dict) -> tuple:
        return (
            f.get("card") or "",
            bool(f.get("cuda_graphs")),
            f["video_tokens"],
            f["batch"],
            order.get(f["quantization"], 9),
        )

    for f in sorted(forward, key=position):
        error = f.get("relative_error_vs_bf16")
        lines.append(
            f"| {f.get('card')} | {'yes' if f.get('cuda_graphs') else 'no'} | {f['shape']} "
            f"| {f['video_tokens']} x {f['batch']} | {f['quantization']} "
            f"| {f['seconds']} | {f.get('ratio_to_bf16', '-')} | {'-' if error is None else f'{error:.4f}'} "
            f"| {f['fp8_gemm_calls_per_forward']} |"
        )
    return lines


def parse_resolutions(text: str) -> list[tuple[int, int]]:
    out = []
    for item in text.split(","):
        width, _, height = item.strip().partition("x")
        out.append((int(width), int(height)))
    return out


def command_line(argv: list[str]) -> str:
    return "python -m ltx_demo " + shlex.join(argv)
