"""Several-GPU measurements (issue 17), one JSON each; scripts/multi_gpu_bench.sh runs them on a 2-GPU machine.

  throughput: requests per minute of one engine on one device, then of a WorkerPool (app.py --gpus) serving as many
    clients at once as it has workers; the same request throughout (its output hash shows every run agrees).
  summarize: the guidance-parallel rows (generate JSONs) -> ratios of stage 1 and end to end, and the hashes.

Runs on the CPU too (`--gpus cpu:2 --device cpu` on the tiny bundle), which is how it was checked so far.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

logger = logging.getLogger("multi_gpu_bench")


def _request(args: argparse.Namespace):
    from ltx_demo.cli_flags import DEFAULT_AUDIO, DEFAULT_IMAGE, DEFAULT_PROMPT
    from ltx_demo.types import GenerationRequest

    return GenerationRequest(
        image_path=str(DEFAULT_IMAGE), audio_path=str(DEFAULT_AUDIO), prompt=DEFAULT_PROMPT,
        width=args.width, height=args.height, num_frames=args.num_frames, steps=args.steps, seed=args.seed,
        quantization=args.quantization,
    )  # fmt: skip


def _timed(label: str, engine, request, clients: int, per_client: int) -> dict:
    """`clients` threads, each sending `per_client` requests one after another; requests per minute of the whole."""
    from ltx_demo.bench import output_hash

    outputs: list[dict] = []
    lock = threading.Lock()

    def client() -> None:
        for _ in range(per_client):
            result = engine.generate(request)
            row = {"elapsed_seconds": round(result.elapsed_seconds, 3), "output_hash": output_hash(result.output)}
            with lock:
                outputs.append(row)

    started = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    requests = clients * per_client
    logger.warning("%s: %d requests in %.1f s", label, requests, wall)
    return {
        "clients": clients,
        "requests": requests,
        "wall_seconds": round(wall, 3),
        "requests_per_minute": round(60 * requests / wall, 3),
        "runs": outputs,
    }


def throughput(args: argparse.Namespace) -> dict:
    import app
    from ltx_demo.devices import ProcessDevices
    from ltx_demo.engine import Engine
    from ltx_demo.results import KeepPolicy
    from ltx_demo.workers import WorkerPool

    out = Path(args.output_dir or tempfile.mkdtemp(prefix="multi-gpu-bench-"))
    flags = ["--bundle", args.bundle, "--output-dir", str(out), "--cold-start-cache-dir", "off", "--gpus", args.gpus]
    app_args = app.build_parser().parse_args(flags)
    request = _request(args)
    devices = ProcessDevices.parse(args.gpus)
    from ltx_demo.cli_flags import resolve_from_args

    bundle = resolve_from_args(app_args)
    one = Engine(bundle, out, device=args.device or ("cuda:0" if devices.cuda else "cpu"))
    for _ in range(args.warm_runs):
        one.generate(request)
    single = _timed("one engine", one, request, 1, args.requests * devices.count)
    one.models.release_all()
    del one
    pool = WorkerPool(app_args, devices, bundle, KeepPolicy())
    try:
        _timed("warm-up", pool, request, devices.count, args.warm_runs)  # every worker builds its models
        several = _timed(f"{devices.count} workers", pool, request, devices.count, args.requests)
        workers = pool.worker_status()
    finally:
        pool.close()
    hashes = {r["output_hash"] for r in single["runs"] + several["runs"]}
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": " ".join(sys.argv),
        "devices": devices.describe(),
        "workers": [{k: w[k] for k in ("index", "label", "device", "environment")} for w in workers],
        "request": {k: getattr(args, k) for k in ("width", "height", "num_frames", "steps", "seed", "quantization")},
        "one_engine": single,
        "pool": several,
        "speedup_requests_per_minute": round(several["requests_per_minute"] / single["requests_per_minute"], 3),
        "identical_outputs": len(hashes) == 1,
    }


def summarize(args: argparse.Namespace) -> dict:
    """The generate JSONs of the guidance rows -> stage 1 and end-to-end ratios against the one-GPU runs."""
    from ltx_demo.bench import output_hash

    rows = {}
    runs = {"one_gpu_default": args.default, "one_gpu_same_grouping": args.grouping, "parallel": args.parallel}
    for name, path in runs.items():
        summary = json.loads(Path(path).read_text())
        rows[name] = {
            "stage_1_seconds": summary["phases"]["stage_1"]["seconds"],
            "elapsed_seconds": summary["elapsed_seconds"],
            "stage_1_transformer_calls": summary["counters"].get("stage_1_transformer_calls"),
            "output_hash": output_hash(summary["output"]),
            "device": summary["device"],
            **({"parallel": summary["parallel"]} if "parallel" in summary else {}),
        }
    grouping, parallel = rows["one_gpu_same_grouping"], rows["parallel"]
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "rows": rows,
        "stage_1_ratio_vs_same_grouping": round(parallel["stage_1_seconds"] / grouping["stage_1_seconds"], 3),
        "stage_1_ratio_vs_default": round(parallel["stage_1_seconds"] / rows["one_gpu_default"]["stage_1_seconds"], 3),
        "end_to_end_ratio_vs_same_grouping": round(parallel["elapsed_seconds"] / grouping["elapsed_seconds"], 3),
        "identical_to_same_grouping": parallel["output_hash"] == grouping["output_hash"],
        "identical_to_default": parallel["output_hash"] == rows["one_gpu_default"]["output_hash"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    rate = sub.add_parser("throughput")
    rate.add_argument("--bundle", required=True)
    rate.add_argument("--gpus", default="0,1", help="the pool's devices: '0,1', 'all' or 'cpu:2'")
    rate.add_argument("--device", default=None, help="the one engine's device (default: cuda:0, or cpu)")
    rate.add_argument("--width", type=int, default=768)
    rate.add_argument("--height", type=int, default=512)
    rate.add_argument("--num-frames", type=int, default=97)
    rate.add_argument("--steps", type=int, default=30)
    rate.add_argument("--seed", type=int, default=42)
    rate.add_argument("--quantization", default="fp8-cast")
    rate.add_argument("--requests", type=int, default=3, help="timed requests per client (one engine: as many in all)")
    rate.add_argument("--warm-runs", type=int, default=1, help="untimed requests first, per engine")
    rate.add_argument("--output-dir", default=None)
    rate.add_argument("--out", required=True)
    table = sub.add_parser("summarize")
    table.add_argument("--default", required=True, help="generate JSON: one GPU, --guidance-split 1")
    table.add_argument("--grouping", required=True, help="generate JSON: one GPU, --guidance-split 2")
    table.add_argument("--parallel", required=True, help="generate JSON: --parallel guidance --gpus 0,1")
    table.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    os.environ.setdefault("TQDM_DISABLE", "1")  # inherited by the workers
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    data = throughput(args) if args.command == "throughput" else summarize(args)
    Path(args.out).write_text(json.dumps(data, indent=2) + "\n")
    print(json.dumps({k: v for k, v in data.items() if not isinstance(v, dict | list)}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
