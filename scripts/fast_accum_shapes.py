"""Which torch._scaled_mm shapes (rowwise scales, bf16 out) cuBLAS refuses with use_fast_accum: a sweep of row
counts, the stage transformer's linear sizes, with and without bias; then each refused shape through
fp8_matmul.rowwise_scaled_mm (it must run, with float32 sums). Usage: python scripts/fast_accum_shapes.py OUT"""

import json
import sys

import torch

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent.parent))
from ltx_demo import fp8_matmul

rows = [*range(1, 70), 100, 101, 104, 128, 404, 1248, 4992]
sizes = [(2048, 2048), (2048, 8192), (8192, 2048), (4096, 4096), (4096, 16384), (16384, 4096), (4096, 2048),
         (2048, 4096)]  # fmt: skip
results = []
for k, n in sizes:
    w = torch.randn(n, k, device="cuda").to(torch.float8_e4m3fn)
    for bias in (False, True):
        b = torch.randn(n, device="cuda", dtype=torch.bfloat16) if bias else None
        for m in rows:
            x = torch.randn(m, k, device="cuda").to(torch.float8_e4m3fn)
            sa = torch.ones(m, 1, device="cuda")
            sb = torch.ones(1, n, device="cuda")
            row = {"m": m, "k": k, "n": n, "bias": bias}
            for fast in (False, True):
                try:
                    torch._scaled_mm(x, w.t(), scale_a=sa, scale_b=sb, bias=b, out_dtype=torch.bfloat16,
                                     use_fast_accum=fast)  # fmt: skip
                    row[f"fast_{fast}"] = "ok"
                except RuntimeError as exc:
                    row[f"fast_{fast}"] = str(exc).splitlines()[0][:120]
            results.append(row)
torch.cuda.synchronize()
failed = [r for r in results if r["fast_True"] != "ok" or r["fast_False"] != "ok"]
for r in failed:  # the project's GEMM on the refused shapes: falls back, twice (the second from its memo)
    x = torch.randn(r["m"], r["k"], device="cuda").to(torch.float8_e4m3fn)
    w = torch.randn(r["n"], r["k"], device="cuda").to(torch.float8_e4m3fn)
    b = torch.randn(r["n"], device="cuda", dtype=torch.bfloat16) if r["bias"] else None
    args = (x, w.t(), torch.ones(r["m"], 1, device="cuda"), torch.ones(1, r["n"], device="cuda"), b, torch.bfloat16)
    try:
        outs = [fp8_matmul.rowwise_scaled_mm(*args) for _ in range(2)]
        r["rowwise_scaled_mm"] = "ok" if torch.equal(outs[0], outs[1]) else "differs"
    except RuntimeError as exc:
        r["rowwise_scaled_mm"] = str(exc).splitlines()[0][:120]
json.dump(
    {"torch": torch.__version__, "card": torch.cuda.get_device_name(), "tried": len(results), "failed": failed},
    open(sys.argv[1], "w"),
    indent=1,
)
print(
    len(results),
    "tried;",
    len(failed),
    "refused;",
    sum(r["rowwise_scaled_mm"] == "ok" for r in failed),
    "of those ran through rowwise_scaled_mm",
)
for r in failed:
    if r["rowwise_scaled_mm"] != "ok":
        print(r)
