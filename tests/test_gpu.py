"""CUDA checks on the tiny bundle (opt-in: `pytest -m gpu`, run by scripts/device_check.sh on the GPU machine)."""

from __future__ import annotations

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
@pytest.mark.parametrize("quantization", ["bf16", "fp8-cast"])
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
