"""Soak: N generations in a row on the tiny bundle in each residency mode, memory recorded after every request.

Pass criterion (LTX-Desktop's): process RSS (and on CUDA, torch allocated and NVML device used) after each request stays
within 50 MiB of the value after the first. Each mode runs in its own process, so one mode's allocator history does not
colour the next. Writes JSON and the soak section of docs/reliability.md:

    python scripts/soak.py --runs 50 --json docs/reliability-soak.json --markdown docs/reliability.md
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MIB = 1024**2
TOLERANCE_MIB = 50
MODES = ("persistent", "cold-start", "host-cached")
BEGIN, END = "<!-- soak:begin -->", "<!-- soak:end -->"
logger = logging.getLogger("soak")


def soak_one_mode(mode: str, runs: int, device: str | None, steps: int) -> dict:
    """Run `runs` requests in this process; memory after each (bytes)."""
    sys.path.insert(0, str(ROOT))
    import torch

    from ltx_demo.checkpoints import embedded_bundle
    from ltx_demo.engine import Engine
    from ltx_demo.results import KeepPolicy
    from ltx_demo.types import GenerationRequest

    bundle = embedded_bundle()
    with tempfile.TemporaryDirectory(prefix="ltx-soak-") as folder:
        # Keep 3 results: the soak also exercises publish + prune, and does not fill the disk.
        engine = Engine(bundle, Path(folder), device, keep_outputs=KeepPolicy(count=3))
        cuda = engine.device.type == "cuda"
        rows = []
        for index in range(runs):
            request = GenerationRequest(
                image_path=str(ROOT / "assets" / "astronaut.png"),
                audio_path=str(ROOT / "assets" / "speech_hello.wav"),
                prompt="A woman speaks to the camera.",
                width=64,
                height=64,
                num_frames=9,
                steps=steps,
                seed=index,
                quantization="bf16",
                residency=mode,
            )
            started = time.perf_counter()
            result = engine.generate(request)
            if cuda:
                torch.cuda.synchronize()
            sample = engine.memory_now()
            rows.append(
                {
                    "run": index + 1,
                    "seconds": round(time.perf_counter() - started, 3),
                    "rss_bytes": sample.rss_bytes,
                    "cuda_allocated_bytes": sample.allocated_bytes,
                    "cuda_reserved_bytes": sample.reserved_bytes,
                    "nvml_used_bytes": sample.device_used_bytes,
                    "resident_after": list(result.resident_after),
                }
            )
            logger.info(
                "%s %d/%d: %.2f s, RSS %.1f MiB%s",
                mode,
                index + 1,
                runs,
                rows[-1]["seconds"],
                sample.rss_bytes / MIB,
                f", allocated {sample.allocated_bytes / MIB:.1f} MiB" if cuda else "",
            )
        left = sorted(p.name for p in Path(folder).glob("*.mp4"))
    return {
        "mode": mode,
        "device": result.device,
        "runs": rows,
        "outputs_left": len(left),
        "torch": torch.__version__,
    }


def verdict(mode_result: dict) -> dict:
    """Per metric: the first value, the largest drift from it, the trend, and whether it stays within tolerance."""
    rows = mode_result["runs"]
    metrics = {}
    for key in ("rss_bytes", "cuda_allocated_bytes", "nvml_used_bytes"):
        values = [r[key] for r in rows if r[key] is not None]
        if len(values) < 2:
            continue
        first = values[0]
        drift = max(abs(v - first) for v in values)
        n = len(values)
        mean_x, mean_y = (n - 1) / 2, sum(values) / n
        slope = sum((i - mean_x) * (v - mean_y) for i, v in enumerate(values)) / sum(
            (i - mean_x) ** 2 for i in range(n)
        )
        metrics[key] = {
            "first_mib": round(first / MIB, 1),
            "last_mib": round(values[-1] / MIB, 1),
            "max_drift_mib": round(drift / MIB, 1),
            "trend_mib_per_run": round(slope / MIB, 3),
            "ok": drift <= TOLERANCE_MIB * MIB,
        }
    seconds = [r["seconds"] for r in rows]
    return {
        "mode": mode_result["mode"],
        "device": mode_result["device"],
        "runs": len(rows),
        "median_seconds": sorted(seconds)[len(seconds) // 2],
        "metrics": metrics,
        "ok": all(m["ok"] for m in metrics.values()),
        "outputs_left": mode_result["outputs_left"],
    }


def markdown(summary: dict) -> str:
    lines = [
        BEGIN,
        f"Soak run {summary['date']} on {summary['host']} ({summary['device']}, torch {summary['torch']}): "
        f"{summary['runs_per_mode']} generations per mode, 64x64, 9 frames, {summary['steps']} step(s), bf16, a new "
        f"seed each time, each mode in a fresh process (`python scripts/soak.py --runs {summary['runs_per_mode']}`). "
        f"Criterion: every value after a request within {TOLERANCE_MIB} MiB of the value after the first.",
        "",
        "| mode | runs | median s/run | metric | after run 1 (MiB) | after the last (MiB) | largest drift (MiB) "
        "| trend (MiB/run) | within 50 MiB |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    names = {"rss_bytes": "process RSS", "cuda_allocated_bytes": "CUDA allocated", "nvml_used_bytes": "NVML used"}
    for mode in summary["modes"]:
        for key, m in mode["metrics"].items():
            lines.append(
                f"| {mode['mode']} | {mode['runs']} | {mode['median_seconds']:.2f} | {names[key]} | {m['first_mib']} "
                f"| {m['last_mib']} | {m['max_drift_mib']} | {m['trend_mib_per_run']} | {'yes' if m['ok'] else 'NO'} |"
            )
    lines += ["", f"Overall: {'pass' if summary['ok'] else 'FAIL'}. Raw numbers: `{summary['json']}`.", END]
    return "\n".join(lines)


def write_markdown(path: Path, section: str) -> None:
    text = path.read_text() if path.is_file() else ""
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + section + rest.split(END, 1)[1]
    else:
        text = text.rstrip() + "\n\n## Soak\n\n" + section + "\n"
    path.write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    parser.add_argument("--json", type=Path, default=ROOT / "docs" / "reliability-soak.json")
    parser.add_argument("--markdown", type=Path, default=None, help="update the soak section of this file")
    parser.add_argument("--one-mode", default=None, help=argparse.SUPPRESS)  # the child process
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    for noisy in ("ltx_demo", "ltx_core", "ltx_pipelines", "transformers", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    os.environ.setdefault("TQDM_DISABLE", "1")

    if args.one_mode:
        json.dump(soak_one_mode(args.one_mode, args.runs, args.device, args.steps), sys.stdout)
        return 0

    results = []
    for mode in args.modes:
        command = [sys.executable, __file__, "--one-mode", mode, "--runs", str(args.runs), "--steps", str(args.steps)]
        if args.device:
            command += ["--device", args.device]
        done = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=True)
        results.append(json.loads(done.stdout))
    verdicts = [verdict(r) for r in results]
    summary = {
        "date": time.strftime("%Y-%m-%d"),
        "host": f"{os.cpu_count()} CPU cores",
        "device": results[0]["device"],
        "torch": results[0]["torch"],
        "runs_per_mode": args.runs,
        "steps": args.steps,
        "tolerance_mib": TOLERANCE_MIB,
        "json": str(args.json.resolve().relative_to(ROOT))
        if args.json.resolve().is_relative_to(ROOT)
        else str(args.json),
        "modes": verdicts,
        "ok": all(v["ok"] for v in verdicts),
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"summary": summary, "runs": results}, indent=1) + "\n")
    if args.markdown:
        write_markdown(args.markdown, markdown(summary))
    for v in verdicts:
        logger.info("%s: %s %s", v["mode"], "ok" if v["ok"] else "FAIL", json.dumps(v["metrics"]))
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
