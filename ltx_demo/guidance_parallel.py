"""`generate --parallel guidance --gpus 0,1` (or `cpu:2`): one request with stage 1's guidance passes split across 2
or 4 processes (torch.distributed: NCCL on GPUs, gloo on the CPU). Every rank runs the whole flow on identical latents
and runs only its group of passes in stage 1 (guidance.PassExchange); rank 0 writes the result, the others a scratch
copy whose hash shows they agree. `--guidance-split N` on one process runs the same grouping: the same frames.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import multiprocessing as mp
import os
import queue
import shutil
import socket
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from ltx_demo.devices import ProcessDevices, enter_child
from ltx_demo.requests import GUIDANCE_SPLITS
from ltx_demo.types import InvalidRequest

logger = logging.getLogger(__name__)
WORLD_SIZES = tuple(n for n in GUIDANCE_SPLITS if n > 1)  # one group of passes per rank


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass(frozen=True, slots=True)
class RankSetup:
    """What one rank needs: its place, where the ranks meet, its environment, and the generate flags."""

    rank: int
    world: int
    port: int
    environment: dict[str, str]
    args: argparse.Namespace
    scratch: str  # ranks above 0 write their copy here (removed at the end)


def run_guidance_parallel(args: argparse.Namespace, devices: ProcessDevices, on_line=None) -> dict:
    """Start one rank per device, run the request, return rank 0's summary with each rank's facts under
    "parallel" (device, stage-1 seconds, output hash). Raises RuntimeError naming the rank that failed."""
    world = devices.count
    if world not in WORLD_SIZES:
        raise InvalidRequest(f"--parallel guidance runs on {' or '.join(map(str, WORLD_SIZES))} processes, not {world}")
    if args.guidance_split not in (None, world):
        raise InvalidRequest(f"--guidance-split {args.guidance_split} with {world} processes: each rank runs one group")
    context = mp.get_context("spawn")
    messages = context.Queue()
    scratch = tempfile.mkdtemp(prefix="ltx-demo-ranks-")
    port = free_port()
    ranks = [
        context.Process(
            target=_rank_main,
            args=(RankSetup(r, world, port, devices.child_environment(r), args, scratch), messages),
            name=f"guidance-rank-{r}",
        )
        for r in range(world)
    ]
    for process in ranks:
        process.start()
    try:
        reports = _collect(ranks, messages, on_line)
    finally:
        for process in ranks:
            if process.is_alive():
                process.terminate()
            process.join(timeout=30)
        shutil.rmtree(scratch, ignore_errors=True)
    summary = reports[0]["summary"]
    hashes = {r["output_hash"] for r in reports.values()}
    summary["parallel"] = {
        "mode": "guidance",
        "world_size": world,
        "backend": "nccl" if devices.cuda else "gloo",
        "devices": devices.describe(),
        "guidance_split": world,
        "ranks_agree": len(hashes) == 1,
        "ranks": [{k: v for k, v in reports[r].items() if k != "summary"} for r in range(world)],
    }
    return summary


def _collect(ranks: list, messages, on_line) -> dict[int, dict]:
    """Every rank's report; the first failure (a rank's error, or a rank that died) stops them all."""
    reports: dict[int, dict] = {}
    while len(reports) < len(ranks):
        try:
            message = messages.get(timeout=1.0)
        except queue.Empty:
            dead = [p for i, p in enumerate(ranks) if i not in reports and not p.is_alive()]
            if dead:
                message = f"{dead[0].name} stopped (exit code {dead[0].exitcode}) before it reported"
                raise RuntimeError(message) from None
            continue
        kind, rank, body = message
        if kind == "line" and on_line is not None:
            on_line(body)
        elif kind == "error":
            raise RuntimeError(f"guidance rank {rank} failed: {body}")
        elif kind == "done":
            reports[rank] = body
    return reports


def _rank_main(setup: RankSetup, messages) -> None:
    """One rank: its device and environment first, then the process group, then the request through an Engine."""
    enter_child(setup.environment)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # gloo prints to fd 1: the launcher's stdout is one JSON
    logging.basicConfig(
        level=logging.WARNING, stream=sys.stderr, format=f"rank {setup.rank} %(levelname)s: %(message)s"
    )
    try:
        messages.put(("done", setup.rank, _run_rank(setup, messages)))
    except BaseException as exc:
        messages.put(("error", setup.rank, f"{type(exc).__name__}: {exc}"))
        raise SystemExit(1) from None


def _run_rank(setup: RankSetup, messages) -> dict:
    import torch
    import torch.distributed as dist

    from ltx_demo.bench import output_hash
    from ltx_demo.cli_flags import engine_from_args, request_from_args

    cuda = bool(setup.environment.get("CUDA_VISIBLE_DEVICES"))
    if cuda:
        torch.cuda.set_device(0)  # this rank's one visible GPU
    args = argparse.Namespace(**vars(setup.args))
    if setup.rank:  # only rank 0 publishes into the output folder
        args.output_dir, args.output = setup.scratch, str(Path(setup.scratch) / f"rank{setup.rank}.mp4")
    request = dataclasses.replace(request_from_args(args), guidance_split=setup.world)
    engine = engine_from_args(args)
    dist.init_process_group(
        "nccl" if cuda else "gloo",
        init_method=f"tcp://127.0.0.1:{setup.port}",
        rank=setup.rank,
        world_size=setup.world,
        **({"device_id": torch.device("cuda", 0)} if cuda else {}),
    )
    try:
        for _ in range(getattr(args, "warm_runs", 0)):  # every rank warms alike: the passes stay in step
            engine.generate(request)
        started = time.perf_counter()
        on_progress = _progress_lines(messages, setup.rank) if setup.rank == 0 else None
        result = engine.generate(request, on_progress=on_progress)
        summary = result.summary()
        return {
            "rank": setup.rank,
            "device": result.device,
            "stage_1_seconds": summary["phases"]["stage_1"]["seconds"],
            "elapsed_seconds": summary["elapsed_seconds"],
            "wall_seconds": round(time.perf_counter() - started, 3),
            "output_hash": output_hash(result.output),
            "environment": {k: os.environ.get(k) for k in setup.environment},
            "summary": summary if setup.rank == 0 else None,
        }
    finally:
        dist.destroy_process_group()


def _progress_lines(messages, rank: int):
    """Rank 0's phases, one line each, to the launcher (which prints them on stderr as `generate` does)."""
    from ltx_demo.types import Progress

    seen: set[str] = set()

    def report(progress: Progress) -> None:
        if progress.phase not in seen:
            seen.add(progress.phase)
            messages.put(("line", rank, progress.phase))

    return report
