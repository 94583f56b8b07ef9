"""Per-linear cost of the three weight formats at LTX-2.3's stage shapes (CUDA): where fp8 wins and loses.

For each (rows, in, out) a stage-1/stage-2 forward runs, times one call of: bf16 F.linear; fp8-cast (ltx-core's
upcast forward: weight.to(bf16) + F.linear); fp8-scaled-mm (ltx_demo.fp8_matmul: fused row quantization +
torch._scaled_mm). Two numbers each: `gpu_us`, the GPU time (a CUDA graph of 20 calls, replayed); `wall_us`, the
time per call of 200 back-to-back eager calls (the larger of launch cost and GPU time: what a forward pays).

    python scripts/linear_bench.py --out $OUT/linear-bench.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ltx_demo.fp8_matmul import scaled_mm_forward

VIDEO, AUDIO, CONTEXT = 1248, 101, 1024  # tokens at stage 1 of 768x512x97, and the prompt context
# (name, rows, in, out): the block linears of one LTX-2.3 forward (48 blocks of each) at stage 1, batch 1.
SHAPES = [
    ("video qkvo", VIDEO, 4096, 4096),
    ("video ff up", VIDEO, 4096, 16384),
    ("video ff down", VIDEO, 16384, 4096),
    ("context kv (video)", CONTEXT, 4096, 4096),
    ("audio qkvo", AUDIO, 2048, 2048),
    ("audio ff up", AUDIO, 2048, 8192),
    ("audio ff down", AUDIO, 8192, 2048),
    ("context kv (audio)", CONTEXT, 2048, 2048),
    ("a2v q / v2a kv", VIDEO, 4096, 2048),
    ("a2v out", VIDEO, 2048, 4096),
]


def time_variant(call, x: torch.Tensor, graph_calls: int = 20, eager_calls: int = 200) -> dict:
    for _ in range(3):
        call(x)
    torch.cuda.synchronize()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=stream):
            for _ in range(graph_calls):
                call(x)
    torch.cuda.current_stream().wait_stream(stream)
    gpu = []
    for _ in range(5):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        gpu.append(start.elapsed_time(end) * 1000 / graph_calls)
    wall = []
    for _ in range(3):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(eager_calls):
            call(x)
        torch.cuda.synchronize()
        wall.append((time.perf_counter() - t0) * 1e6 / eager_calls)
    return {"gpu_us": round(statistics.median(gpu), 2), "wall_us": round(statistics.median(wall), 2)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", default="1,4", help="guidance passes per call (1: unbatched, 4: batched)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.manual_seed(0)
    rows_out = []
    for batch in (int(b) for b in args.batches.split(",")):
        for name, rows, k, n in SHAPES:
            m = rows * batch if rows != CONTEXT else CONTEXT * batch
            bf16 = torch.nn.Linear(k, n, device="cuda", dtype=torch.bfloat16)
            fp8 = torch.nn.Linear(k, n, device="cuda", dtype=torch.bfloat16)
            fp8.weight.data = bf16.weight.data.to(torch.float8_e4m3fn)
            fp8.bias.data = bf16.bias.data.to(torch.float8_e4m3fn)
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            scaled_mm = scaled_mm_forward(fp8)
            variants = {
                "bf16": lambda v, layer=bf16: torch.nn.functional.linear(v, layer.weight, layer.bias),
                "fp8-cast": lambda v, layer=fp8: torch.nn.functional.linear(
                    v, layer.weight.to(v.dtype), layer.bias.to(v.dtype)
                ),
                "fp8-scaled-mm": scaled_mm,
            }
            entry = {"name": name, "batch": batch, "m": m, "k": k, "n": n}
            for variant, call in variants.items():
                with torch.inference_mode():
                    entry[variant] = time_variant(call, x)
            rows_out.append(entry)
            cells = "  ".join(f"{v}: gpu {entry[v]['gpu_us']:7.1f} wall {entry[v]['wall_us']:7.1f}" for v in variants)
            print(f"{name:20s} m={m:5d} k={k:5d} n={n:5d}  {cells}", flush=True)
            del bf16, fp8, x
    args.out.write_text(
        json.dumps({"card": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": rows_out}, indent=2)
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
