"""The flow's own pieces on the tiny bundle (CPU): batched guidance equals ltx-pipelines' sequential passes."""

from __future__ import annotations

import pytest
import torch

from ltx_demo.engine import Engine
from ltx_demo.types import InvalidRequest


@pytest.fixture
def clips(monkeypatch):
    """Each generation's DecodedClip as the flow returns it (before the mp4)."""
    import ltx_demo.engine as engine_module

    recorded, run = [], engine_module.run_two_stage

    def record(*args, **kwargs):
        recorded.append(run(*args, **kwargs))
        return recorded[-1]

    monkeypatch.setattr(engine_module, "run_two_stage", record)
    return recorded


def test_batched_guidance_matches_sequential_passes_in_one_call_per_step(engine, small_request, clips):
    steps = 3
    batched = engine.generate(small_request(steps=steps, batch_guidance=True))
    sequential = engine.generate(small_request(steps=steps, batch_guidance=False))
    # LTX-2.3's stage-1 guidance runs four passes a step (CFG negative, STG, isolated modality, positive).
    assert sequential.counters["stage_1_transformer_calls"] == 4 * steps
    assert batched.counters["stage_1_transformer_calls"] == steps
    difference = (clips[0].frames.float() - clips[1].frames.float()).abs()
    assert difference.max() <= 2 and difference.mean() < 0.05  # float32 rounding of a batch vs single rows
    assert torch.equal(clips[0].audio, clips[1].audio)


def test_fp8_scaled_mm_is_refused_without_fp8_tensor_cores(tiny_bundle, small_request, tmp_path):
    engine = Engine(tiny_bundle, tmp_path, device="cpu")
    with pytest.raises(InvalidRequest, match=r"fp8-scaled-mm .* GPU tensor cores"):
        engine.generate(small_request(quantization="fp8-scaled-mm"))
    assert sum(engine.models.build_counts.values()) == 0
