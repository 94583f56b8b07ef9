"""CUDA checks on the tiny bundle (opt-in: `pytest -m gpu`, run by scripts/device_check.sh on the GPU machine)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ltx_demo.engine import Engine

from .test_engine import decode_mp4

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]
MIB = 1024**2


@pytest.mark.parametrize("residency", ["persistent", "cold-start"])
@pytest.mark.parametrize("quantization", ["bf16", "fp8-cast", "fp8-scaled-mm"])
def test_generate_on_cuda(tiny_bundle, small_request, tmp_path, quantization, residency):
    engine = Engine(tiny_bundle, tmp_path, device="cuda")
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    request = small_request(quantization=quantization, residency=residency, width=128, height=128, num_frames=17)
    result = engine.generate(request)
    summary = result.summary()
    assert summary["device"].startswith("cuda") and summary["compute_dtype"] == "bfloat16"
    assert summary["peak_vram_gib"] is not None and summary["peak_vram_gib"] > 0
    assert all(p.peak_vram_bytes is not None for p in result.phases)
    frames, audio, _rate, _fps = decode_mp4(result.output)
    assert frames.shape == (17, 128, 128, 3) and audio.shape[0] == 2
    assert frames.astype(np.float32).std() > 5
    torch.cuda.synchronize()
    after = torch.cuda.memory_allocated()
    if residency == "cold-start":
        assert abs(after - before) < 50 * MIB, (before, after)
        assert engine.models.resident() == ()
    else:
        assert after > before and "transformer" in engine.models.resident()  # one transformer serves both stages
    # Same seed, same engine: identical decoded frames on the GPU too.
    again = decode_mp4(engine.generate(request).output)[0]
    assert np.array_equal(frames, again)


def test_fp8_weights_live_on_cuda_in_fp8(tiny_bundle):
    from ltx_demo.quantization import fp8_weight_names
    from ltx_demo.residency import ModelConfig, ModelResidency
    from ltx_demo.settings import Quantization, Residency

    residency = ModelResidency(tiny_bundle, torch.device("cuda"), torch.bfloat16)
    residency.configure(ModelConfig(Quantization.FP8_CAST, Residency.PERSISTENT, 1.0))
    for name in ("transformer_stage_1", "transformer_stage_2"):  # stage 2 fuses the LoRA with the Triton kernel
        with residency.use(name) as transformer:
            names = fp8_weight_names(transformer)
            assert names and all(p.device.type == "cuda" for p in transformer.parameters())
            assert not any("to_gate_logits" in n for n in names)


def test_fp8_modes_against_bf16_on_the_same_stage_inputs(tiny_bundle, small_request, tmp_path):
    """Relative error of one stage-1 and one stage-2 transformer call, fp8-cast and fp8-scaled-mm vs bf16, on the
    inputs a real bf16 request fed them; and proof that the fp8 GEMM ran (counted calls)."""
    import json
    import os

    from ltx_demo.quantization import ScaledMMCounter

    captured: list[dict] = []
    engine = Engine(tiny_bundle, tmp_path, device="cuda")
    engine.generate(small_request(quantization="bf16", width=128, height=128, num_frames=17))
    reference = engine.models.held("transformer")

    def capture(_module, _args, kwargs):
        captured.append(kwargs)

    handle = reference.register_forward_pre_hook(capture, with_kwargs=True)
    engine.generate(small_request(quantization="bf16", width=128, height=128, num_frames=17))
    handle.remove()
    stage_inputs = {"stage_1": captured[0], "stage_2": captured[-1]}  # stage 2 runs with the adapter on
    with torch.inference_mode():
        expected = {stage: reference(**kwargs)[0].float() for stage, kwargs in stage_inputs.items()}
    errors = {}
    for quantization in ("fp8-cast", "fp8-scaled-mm"):
        engine.generate(small_request(quantization=quantization, width=128, height=128, num_frames=17))
        transformer = engine.models.held("transformer")
        calls = ScaledMMCounter.calls
        with torch.inference_mode():
            for stage, kwargs in stage_inputs.items():
                got = transformer(**kwargs)[0].float()
                errors[f"{quantization} {stage}"] = float((got - expected[stage]).norm() / expected[stage].norm())
        if quantization == "fp8-scaled-mm":
            assert ScaledMMCounter.calls > calls  # the fp8 kernel ran, not a fallback
    if os.environ.get("OUT"):
        (Path(os.environ["OUT"]) / "fp8-vs-bf16.json").write_text(json.dumps(errors, indent=2))
    print("relative error vs bf16:", errors)
    assert all(error < 0.2 for error in errors.values()), errors
