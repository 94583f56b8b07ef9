"""A real CUDA out-of-memory (opt-in: `pytest -m gpu`, on the device): the process is capped with
torch.cuda.set_per_process_memory_fraction, a resolution that cannot fit under the cap is asked for, and the request
must end with "needs about X GiB, Y free; try ...", free everything it built, and let the next request run.
Writes what it measured to $OUT/gpu-oom.json when OUT is set.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path

import pytest
import torch

from ltx_demo import requests
from ltx_demo.engine import Engine
from ltx_demo.types import OutOfMemory

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]
MIB = 1024**2
GIB = 1024**3
CAP_BYTES = 1 * GIB  # the tiny bundle's 128x128 run needs well under this; 2048x2048x57 needs several times more


def record(name: str, values: dict) -> None:
    out = os.environ.get("OUT")
    if not out:
        return
    path = Path(out) / "gpu-oom.json"
    found = json.loads(path.read_text()) if path.is_file() else {}
    found[name] = values
    path.write_text(json.dumps(found, indent=2) + "\n")


@pytest.mark.parametrize("residency", ["persistent", "cold-start"])
def test_out_of_memory_under_a_memory_cap_frees_everything_and_the_next_run_fits(
    tiny_bundle, small_request, tmp_path, residency
):
    engine = Engine(tiny_bundle, tmp_path, device="cuda", compile_blocks=False)
    small = small_request(residency=residency, quantization="fp8-cast", width=128, height=128, num_frames=17)
    first = engine.generate(small)
    total = torch.cuda.get_device_properties(0).total_memory
    assert first.peak_vram_bytes < CAP_BYTES / 2, "the small request alone does not fit the cap: raise CAP_BYTES"
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    allocated_before = torch.cuda.memory_allocated()
    torch.cuda.set_per_process_memory_fraction(CAP_BYTES / total)
    try:
        width = height = requests.MAX_SIDE
        frames = requests.max_frames_at(width, height)
        big = dataclasses.replace(small, width=width, height=height, num_frames=frames, seed=8)
        with pytest.raises(OutOfMemory) as failed:
            engine.generate(big)
        message = str(failed.value)
        assert isinstance(failed.value, torch.OutOfMemoryError)
        found = re.search(r"out of GPU memory in (\S+) .*needs about ([\d.]+) GiB, ([\d.]+) GiB free; try", message)
        assert found, message
        phase, need_gib, free_gib = found.group(1), float(found.group(2)), float(found.group(3))
        assert need_gib > free_gib, message  # what it needs does not fit what there is: the advice is honest
        assert free_gib <= CAP_BYTES / GIB + 0.01, "the free figure ignores the per-process cap"
        assert "a smaller resolution" in message and ("cold-start" in message) == (residency == "persistent")
        del failed

        torch.cuda.synchronize()
        allocated_after_oom = torch.cuda.memory_allocated()
        reserved_after_oom = torch.cuda.memory_reserved()
        assert engine.models.resident() == ()
        assert allocated_after_oom <= allocated_before + 50 * MIB, (
            f"{allocated_after_oom / MIB:.1f} MiB allocated after the OOM, {allocated_before / MIB:.1f} MiB before it"
        )
        assert not list(tmp_path.glob("*seed8*")), "the failed request left something that looks like a result"

        again = engine.generate(dataclasses.replace(small, seed=9))  # the same cap, a size that fits
        assert Path(again.output).is_file() and again.peak_vram_bytes < CAP_BYTES
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
    record(
        residency,
        {
            "device": torch.cuda.get_device_name(0),
            "torch": torch.__version__,
            "cap_gib": CAP_BYTES / GIB,
            "asked": f"{width}x{height}x{big.num_frames} frames, fp8-cast, {residency}",
            "failed_in": phase,
            "needs_gib": need_gib,
            "free_gib": free_gib,
            "message": message,
            "allocated_before_mib": round(allocated_before / MIB, 2),
            "allocated_after_oom_mib": round(allocated_after_oom / MIB, 2),
            "reserved_after_oom_mib": round(reserved_after_oom / MIB, 2),
            "small_peak_gib": round(first.peak_vram_bytes / GIB, 4),
            "next_peak_gib": round(again.peak_vram_bytes / GIB, 4),
            "next_elapsed_s": round(again.elapsed_seconds, 3),
        },
    )
