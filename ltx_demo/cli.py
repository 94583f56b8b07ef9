"""`python -m ltx_demo generate|make-bundle|check-bundle`: the engine from the command line, one JSON on stdout."""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import logging
import sys
import time
from pathlib import Path
from typing import TextIO

from ltx_demo.cli_flags import build_parser, compute_dtype, engine_from_args, request_from_args, resolve_from_args
from ltx_demo.types import (
    PROMPT_CACHE_ENTRIES,
    AttentionBackend,
    CompileBlocks,
    CudaGraphs,
    DecodeTiling,
    GenerationRequest,
    Progress,
    Quantization,
    TextModels,
)


class PhasePrinter:
    """The CLI's progress on stderr: one line as each phase starts (its model loads indented under it), and each
    step as it ends (denoising steps, the decoder's chunks, the frames encoded); stdout keeps the one JSON object."""

    def __init__(self, stream: TextIO) -> None:
        self.stream, self.started = stream, time.perf_counter()
        self.phase: str | None = None  # the flow's phase (a load inside it does not end it)
        self.step = (0, 0)  # (window, step)

    def __call__(self, progress: Progress) -> None:
        if progress.phase.startswith("load:"):
            self._line(f"  loading {progress.phase.removeprefix('load:')}")
        elif progress.phase != self.phase:
            self.phase, self.step = progress.phase, (0, 0)
            self._line("done" if progress.phase == "done" else progress.phase)
        step = (progress.window or 0, progress.step or 0)  # a long recording's steps start again in each window
        if progress.step and progress.total_steps and step > self.step:
            self.step = step
            window = f" ({progress.message})" if progress.window else ""
            self._line(f"  {progress.phase} {progress.unit} {progress.step}/{progress.total_steps}{window}")

    def _line(self, text: str) -> None:
        print(f"[{time.perf_counter() - self.started:6.1f} s] {text}", file=self.stream, flush=True)


def _generate(args: argparse.Namespace) -> None:
    """One generation: the JSON summary on stdout, the phases on stderr as they start."""
    if args.parallel or args.gpus:
        _generate_parallel(args)
        return
    request = request_from_args(args)
    engine = engine_from_args(args)
    for _ in range(args.warm_runs):
        engine.generate(request)
    result = engine.generate(request, on_progress=PhasePrinter(sys.stderr))
    print(json.dumps(result.summary(), indent=2))


def _generate_parallel(args: argparse.Namespace) -> None:
    """`--parallel guidance --gpus ...`: one request over several processes (guidance_parallel)."""
    from ltx_demo.devices import ProcessDevices
    from ltx_demo.guidance_parallel import run_guidance_parallel
    from ltx_demo.requests import check_request
    from ltx_demo.types import InvalidRequest, Parallel

    if not (args.parallel and args.gpus):
        raise InvalidRequest("generate: --parallel guidance and --gpus go together (the app's --gpus starts workers)")
    assert Parallel(args.parallel) is Parallel.GUIDANCE
    try:
        devices = ProcessDevices.parse(args.gpus)
    except ValueError as exc:
        raise InvalidRequest(str(exc)) from None
    check_request(dataclasses.replace(request_from_args(args), guidance_split=devices.count))  # before any process
    printer = PhasePrinter(sys.stderr)
    summary = run_guidance_parallel(args, devices, on_line=lambda phase: printer(Progress(phase)))
    print(json.dumps(summary, indent=2))


def _make_bundle(args: argparse.Namespace) -> None:
    """A synthetic bundle in the real LTX-2 formats (tiny for CPU and tests, full for GPU benchmarks)."""
    from ltx_demo.synthetic import make_bundle

    bundle = make_bundle(Path(args.out), scale=args.scale, seed=args.seed)
    print(json.dumps(bundle.describe() | {"out": str(args.out)}, indent=2))


def _check_bundle(args: argparse.Namespace) -> None:
    """Keys, shapes and config metadata of every component, from the headers; exits non-zero on a problem."""
    from ltx_demo.checkpoints import check_bundle

    bundle = resolve_from_args(args)
    checks = check_bundle(bundle)
    ok = not any(c.problems for c in checks)
    print(
        json.dumps(
            {
                "ok": ok,
                "bundle": bundle.describe(),
                "components": {c.name: {"tensors": c.tensors, "problems": list(c.problems)} for c in checks},
            },
            indent=2,
        )
    )
    if not ok:
        problems = [f"{c.name}: {p}" for c in checks for p in c.problems]
        raise SystemExit(f"error: the bundle has {len(problems)} problem(s); first: {problems[0]}")


def bench_configs(args: argparse.Namespace, default_quantization: str):
    """The bench's configurations (every combination of its lists), each marked when it runs what a request naming
    no options gets on this device (`--quantization default`, persistent, batched guidance, the engine's auto
    choices, the default steps)."""
    from ltx_demo import bench

    steps_default = next(f.default for f in dataclasses.fields(GenerationRequest) if f.name == "steps")
    engine_defaults = (
        CudaGraphs(args.cuda_graphs) is CudaGraphs.AUTO
        and AttentionBackend(args.attention) is AttentionBackend.AUTO
        and CompileBlocks(args.compile_blocks) is CompileBlocks.AUTO
        and args.prompt_cache == PROMPT_CACHE_ENTRIES
        and TextModels(args.text_models) is TextModels.AUTO
        and not args.inductor_deterministic
        and args.steps == steps_default
        and args.decode_tiling == DecodeTiling.DEFAULT
    )
    return [
        bench.BenchConfig(
            width,
            height,
            args.num_frames,
            quantization,
            residency,
            args.steps,
            args.seed,
            batched == "on",
            default_settings=engine_defaults
            and (quantization, residency, batched) == (default_quantization, "persistent", "on"),
            decode_tiling=args.decode_tiling,
        )
        for batched in args.batch_guidance.split(",")
        for quantization in (default_quantization if q == "default" else q for q in args.quantization.split(","))
        for residency in args.residency.split(",")
        for width, height in bench.parse_resolutions(args.resolutions)
    ]


def _bench(args: argparse.Namespace) -> None:
    """Configurations x runs through the engine -> a results JSON."""
    from ltx_demo import bench

    engine = engine_from_args(args)
    configs = bench_configs(args, engine.default_quantization())
    results = bench.run_bench(
        engine,
        configs,
        args.runs,
        args.image,
        args.audio,
        args.prompt,
        args.drop_page_cache,
        bench.command_line(args.argv),
        baseline_runs=args.baseline_runs if args.baseline == "stock" else 0,
    )
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps({"out": args.out, "configs": len(results["configs"])}))


def _forward_bench(args: argparse.Namespace) -> None:
    """One transformer forward per shape x quantization -> a results JSON."""
    from ltx_demo import bench, forward_bench
    from ltx_demo.engine import compute_dtype_for, pick_device

    device = pick_device(args.device)
    bundle = resolve_from_args(args)
    entries = forward_bench.run_forward_bench(
        bundle,
        device,
        compute_dtype(args.compute_dtype) if args.compute_dtype else compute_dtype_for(device),
        forward_bench.parse_shapes(args.shapes),
        [Quantization(q) for q in args.quantization.split(",")],
        args.warmup,
        args.repeats,
        cuda_graphs=CudaGraphs(args.cuda_graphs) is CudaGraphs.ON,
        attentions=tuple(AttentionBackend(a) for a in args.attentions.split(",")),
        compile_blocks=CompileBlocks(args.compile_blocks) is CompileBlocks.ON,
        profile=args.profile,
    )
    facts = bench.machine_facts(device) | {
        "date": datetime.date.today().isoformat(),
        "command": bench.command_line(args.argv),
        "bundle": bundle.describe(),
    }
    Path(args.out).write_text(json.dumps({"forward": [facts | e for e in entries]}, indent=2) + "\n")
    print(json.dumps({"out": args.out, "forward": len(entries)}))


def _fidelity(args: argparse.Namespace) -> None:
    """Each speed-up against the reference flow -> docs/fidelity.json and .md."""
    from ltx_demo import bench, fidelity, fidelity_report

    args.command_line = bench.command_line(args.argv)
    setup = fidelity.Setup.from_args(args, resolve_from_args(args), compute_dtype(args.compute_dtype or "bf16"))
    data = fidelity.run_fidelity(setup)
    Path(args.out).write_text(json.dumps(data, indent=2) + "\n")
    Path(args.markdown).write_text(fidelity_report.render_markdown(data))
    print(json.dumps(fidelity.summary(data, Path(args.out), Path(args.markdown))))


def _roofline(args: argparse.Namespace) -> None:
    """FLOPs per stage at one shape -> a results JSON that bench-report merges (the roofline table)."""
    from ltx_demo import bench, roofline
    from ltx_demo.engine import compute_dtype_for, pick_device

    device = pick_device(args.device)
    bundle = resolve_from_args(args)
    dtype = compute_dtype(args.compute_dtype) if args.compute_dtype else compute_dtype_for(device)
    entry = roofline.measure_flops(bundle, device, dtype, args.width, args.height, args.num_frames)
    facts = bench.machine_facts(device) | {"date": datetime.date.today().isoformat(), "bundle": bundle.describe()}
    Path(args.out).write_text(json.dumps({"roofline": [facts | entry]}, indent=2) + "\n")
    print(json.dumps(entry))


def _bench_report(args: argparse.Namespace) -> None:
    """Merge results JSONs into docs/benchmarks.json and redraw the markdown table."""
    from ltx_demo import bench_report

    for path in args.results:
        data = bench_report.merge_into(Path(args.into), json.loads(Path(path).read_text()))
    Path(args.markdown).write_text(bench_report.render_markdown(data))
    print(json.dumps({"into": args.into, "markdown": args.markdown, "configs": len(data["configs"])}))


COMMANDS = {
    "generate": _generate,
    "make-bundle": _make_bundle,
    "check-bundle": _check_bundle,
    "bench": _bench,
    "forward-bench": _forward_bench,
    "roofline": _roofline,
    "fidelity": _fidelity,
    "bench-report": _bench_report,
}


def run(args: argparse.Namespace) -> int:
    COMMANDS[args.command](args)
    return 0


def main(argv: list[str] | None = None) -> int:
    from ltx_demo.devices import disable_nvlink_multicast

    disable_nvlink_multicast()  # before anything starts NCCL or a child process
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # the command recorded beside benchmark results
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.WARNING,
        stream=sys.stderr,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not args.debug:
        _quiet_libraries()
    try:
        return run(args)
    except SystemExit:
        raise
    except Exception as exc:
        if args.debug:
            raise
        from ltx_demo.checkpoints import BundleError
        from ltx_demo.types import InvalidRequest

        kind = (
            "invalid input"
            if isinstance(exc, InvalidRequest)
            else "bundle"
            if isinstance(exc, BundleError)
            else type(exc).__name__
        )
        print(f"error ({kind}): {exc}", file=sys.stderr)
        return 2 if isinstance(exc, InvalidRequest | BundleError) else 1


def _quiet_libraries() -> None:
    """tqdm bars and transformers' notices would mix into the one JSON object on stdout/stderr."""
    import os

    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
