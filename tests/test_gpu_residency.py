"""Residency modes on CUDA (opt-in: `pytest -m gpu tests/test_gpu_residency.py`): memory per mode, nf4 Gemma, adapter.

The engines run eager (`compile_blocks=False`) so that every mode runs the same kernels and gives the same frames
(compiled blocks, persistent mode's default on CUDA, have their own fidelity row and tests in test_gpu.py).

Writes what it measured to $OUT/residency-gpu.json when OUT is set (the device machine's output folder).
"""

from __future__ import annotations

import gc
import json
import logging
import os
from pathlib import Path

import pytest
import torch

from ltx_demo.engine import Engine
from ltx_demo.residency import ModelConfig, ModelManager
from ltx_demo.residency.builds import module_bytes
from ltx_demo.types import GenerationCancelled, Quantization, Residency, TextEncoderQuantization

from .test_residency import assert_same_output, measure_lora_paths

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]
logger = logging.getLogger(__name__)
MIB = 1024**2
MODES = ("persistent", "cold-start", "host-cached", "auto")
REPORT: dict = {}


@pytest.fixture(scope="module", autouse=True)
def write_report():
    yield
    if os.environ.get("OUT") and REPORT:
        path = Path(os.environ["OUT"]) / "residency-gpu.json"
        path.write_text(json.dumps(REPORT | {"card": torch.cuda.get_device_name()}, indent=2) + "\n")


def allocated() -> int:
    """Live CUDA tensors, after collecting earlier tests' engines (fp8-cast and the adapter make cycles)."""
    gc.collect()
    torch.cuda.synchronize()
    return torch.cuda.memory_allocated()


@pytest.mark.parametrize("quantization", ["bf16", "fp8-cast"])
def test_modes_on_cuda_same_output_and_memory(tiny_bundle, small_request, tmp_path, clips, quantization):
    engine = Engine(tiny_bundle, tmp_path, device="cuda", compile_blocks=False)
    baseline = allocated()
    results, memory = [], {}
    for mode in MODES:
        request = small_request(quantization=quantization, residency=mode, width=128, height=128, num_frames=17,
                                vram_budget_gib=64.0 if mode == "auto" else None)  # fmt: skip
        result = engine.generate(request)
        results.append(result)
        after = allocated()
        memory[mode] = {"ran": result.residency, "peak_vram_bytes": result.peak_vram_bytes,
                        "allocated_after_bytes": after - baseline,
                        "text_encoder_quantization": result.text_encoder_quantization}  # fmt: skip
        if result.residency == "persistent":
            assert "transformer" in engine.models.resident() and after > baseline
            assert "transformer_stage_2" not in engine.models.resident()
        else:
            assert engine.models.resident() == () and abs(after - baseline) < 50 * MIB, (mode, baseline, after)
        if result.residency == "host-cached":
            assert engine.models.host_cache_bytes() > 0
            assert engine.models.host_cache_pinned()  # so each upload is a DMA copy
    REPORT[f"modes_{quantization}"] = memory
    assert results[0].text_encoder_quantization == "nf4"  # the CUDA default
    by_mode = dict(zip(MODES, zip(results, clips, strict=True), strict=True))
    # The per-request modes fuse the LoRA in place on CUDA (their stage 2 peak is the transformer alone); the
    # persistent transformer keeps the runtime adapter. Same mechanism, same output; across the two, close.
    assert [by_mode[m][0].stage_2_lora for m in MODES] == ["adapter", "fused in place", "fused in place", "adapter"]
    persistent, auto = by_mode["persistent"], by_mode["auto"]
    assert_same_output(persistent[0], auto[0], persistent[1], auto[1])
    cold, cached = by_mode["cold-start"], by_mode["host-cached"]
    assert_same_output(cold[0], cached[0], cold[1], cached[1])
    difference = float((cold[1].frames.float() - persistent[1].frames.float()).abs().mean())
    scale = float(persistent[1].frames.float().abs().mean())
    REPORT[f"fused_in_place_vs_adapter_frames_{quantization}"] = difference / scale
    assert difference < 0.1 * scale, (difference, scale)


@pytest.mark.parametrize(
    ("mode", "cancel_at"),
    # stage_2: the transformer is kept between the stages; upsample: host-cached's LoRA pairs, uploaded during
    # stage 1 on a side stream, are never used
    [("cold-start", "stage_2"), ("host-cached", "stage_2"), ("host-cached", "upsample")],
)
def test_memory_returns_to_baseline_after_an_error(tiny_bundle, small_request, tmp_path, mode, cancel_at):
    engine = Engine(tiny_bundle, tmp_path, device="cuda", compile_blocks=False)
    baseline = allocated()
    stage = {"now": None}
    with pytest.raises(GenerationCancelled):
        engine.generate(
            small_request(quantization="fp8-cast", residency=mode, width=128, height=128, num_frames=17),
            on_progress=lambda p: stage.update(now=p.phase),
            cancelled=lambda: stage["now"] == cancel_at,
        )
    assert engine.models.resident() == () and abs(allocated() - baseline) < 50 * MIB


@pytest.mark.parametrize("mode", ["cold-start", "host-cached"])
def test_models_kept_as_built_on_cuda(tiny_bundle, small_request, tmp_path, clips, mode):
    """Request 2 builds from what request 1 kept as built (the nf4 Gemma, the fp8 processor and transformer; in
    pinned memory for host-cached, in files for cold-start) and gives the same frames; memory returns to baseline.
    The prompt cache is off: with it on, request 2's prompt comes from the cache and the text models are not built."""
    engine = Engine(
        tiny_bundle,
        tmp_path / "out",
        device="cuda",
        cold_start_cache_dir=tmp_path / "kept",
        compile_blocks=False,
        prompt_cache_entries=0,
    )
    baseline = allocated()
    request = small_request(quantization="fp8-cast", residency=mode, width=128, height=128, num_frames=17)
    first, second = engine.generate(request), engine.generate(request)
    assert first.text_encoder_quantization == "nf4"
    assert_same_output(first, second, clips[0], clips[1])
    assert engine.models.resident() == () and abs(allocated() - baseline) < 50 * MIB
    kept = dict(engine.models.kept_builds)
    if mode == "host-cached":
        assert set(engine.models.host_kept_as_built()) == {"text_encoder", "embeddings_processor", "transformer"}
        assert engine.models.host_cache_pinned()
        assert engine.models.host_cache_loads()["text_encoder (as built)"] == 1
    assert kept == {"text_encoder": 1, "transformer": 1, "embeddings_processor": 1}
    REPORT[f"kept_as_built_{mode}"] = {"requests": 2, "same_frames": True, "kept_builds": kept}


def pinned_blocks() -> int:
    """Pinned allocations torch's caching host allocator holds now: its cudaHostAlloc/Register calls minus its frees.
    Both the pinned torch (2.9) and the GPU machine's (2.11) report these two counters; the byte keys differ
    (2.9: reserved_bytes.current; 2.11 has no reserved_bytes key), so bytes are only reported, never asserted."""
    stats = torch.cuda.host_memory_stats()
    return int(stats["num_host_alloc"]) - int(stats["num_host_free"])


def pinned_bytes_reported() -> dict[str, int]:
    stats = torch.cuda.host_memory_stats()
    return {k: int(v) for k, v in stats.items() if k.endswith("bytes.current")}


def test_switching_from_host_cached_gives_the_pinned_memory_back(tiny_bundle, small_request, tmp_path):
    """torch's caching host allocator keeps freed pinned blocks: the switch must hand them back to the OS."""
    torch._C._host_emptyCache()
    baseline = pinned_blocks()
    engine = Engine(tiny_bundle, tmp_path, device="cuda", compile_blocks=False)
    shape = {"width": 128, "height": 128, "num_frames": 17}
    engine.generate(small_request(quantization="fp8-cast", residency="host-cached", **shape))
    cached, with_cache, bytes_with_cache = engine.models.host_cache_bytes(), pinned_blocks(), pinned_bytes_reported()
    assert cached > 0 and with_cache > baseline
    engine.generate(small_request(quantization="fp8-cast", residency="cold-start", **shape))
    after = pinned_blocks()
    REPORT["pinned_after_switching_from_host_cached"] = {
        "torch": torch.__version__, "cache_bytes": cached, "pinned_blocks": [baseline, with_cache, after],
        "bytes_with_cache": bytes_with_cache, "bytes_after": pinned_bytes_reported(),
    }  # fmt: skip
    # Every block the host cache pinned is freed (cold-start's own run may leave a few cached blocks of its own).
    assert after <= baseline + (with_cache - baseline) // 4, (baseline, with_cache, after)


def test_switching_from_persistent_releases_the_device(tiny_bundle, small_request, tmp_path):
    engine = Engine(tiny_bundle, tmp_path, device="cuda", compile_blocks=False)
    baseline = allocated()
    engine.generate(small_request(quantization="fp8-cast", residency="persistent"))
    assert allocated() > baseline
    engine.generate(small_request(quantization="bf16", residency="host-cached"))
    assert abs(allocated() - baseline) < 50 * MIB


def test_nf4_text_encoder_on_cuda(tiny_bundle):
    import bitsandbytes as bnb

    prompt = "A woman speaks to the camera."
    outputs, sizes = {}, {}
    for quantization in TextEncoderQuantization:
        models = ModelManager(tiny_bundle, torch.device("cuda"), torch.bfloat16, compile_blocks=False)
        models.configure(ModelConfig(Quantization.FP8_CAST, Residency.COLD_START, 1.0,
                                     text_encoder_quantization=quantization))  # fmt: skip
        with torch.inference_mode(), models.request():
            with models.use("text_encoder") as text_encoder:
                sizes[quantization.value] = module_bytes(text_encoder)
                linear4bit = sum(isinstance(m, bnb.nn.Linear4bit) for m in text_encoder.modules())
                assert (linear4bit > 0) == (quantization is TextEncoderQuantization.NF4)
                hidden, mask = text_encoder.encode(prompt)
            with models.use("embeddings_processor") as processor:
                encoded = processor.process_hidden_states(hidden, mask)
            outputs[quantization.value] = (encoded.video_encoding.float(), encoded.audio_encoding.float())
    difference = {
        name: float((outputs["nf4"][i] - outputs["bf16"][i]).norm() / outputs["bf16"][i].norm())
        for i, name in enumerate(("video_context", "audio_context"))
    }
    REPORT["text_encoder"] = {"bytes": sizes, "relative_difference_nf4_vs_bf16": difference}
    logger.info("nf4 vs bf16 prompt embeddings: %s; bytes %s", difference, sizes)
    assert sizes["nf4"] < sizes["bf16"]
    assert all(0 < d < 0.5 for d in difference.values()), difference


@pytest.mark.parametrize("quantization", ["bf16", "fp8-cast"])
def test_adapter_and_fusion_against_the_float32_reference_on_cuda(tiny_bundle, small_request, tmp_path,
                                                                  quantization):  # fmt: skip
    engine = Engine(tiny_bundle, tmp_path, device="cuda", compile_blocks=False)
    errors = measure_lora_paths(engine, small_request(quantization=quantization, residency="persistent",
                                                      text_encoder_quantization="bf16"))  # fmt: skip
    REPORT[f"lora_{quantization}"] = errors
    assert errors["adapter_off_change"] > 0.01
    # bf16 compute rounds both paths; report them, and require both to stay near the reference.
    assert errors["adapter_layer_error"] < 0.1 and errors["fused_layer_error"] < 0.1


def test_text_models_on_host_upload_for_a_new_prompt_and_render_the_same_file(tiny_bundle, small_request, tmp_path):
    """--text-models on-host on CUDA: nf4 Gemma and the fp8 processor wait in pinned host memory, leave the device
    after each encode, come back for a new prompt only, and the files are the ones with both kept on the device."""
    from ltx_demo.bench import output_hash
    from ltx_demo.types import TextModels

    hashes, resident = {}, {}
    for placement in TextModels:
        engine = Engine(tiny_bundle, tmp_path / placement, device="cuda", compile_blocks=False, text_models=placement)
        hashes[placement] = []
        for prompt in ("A woman speaks to the camera.", "A man sings to the camera.", "A man sings to the camera."):
            request = small_request(quantization="fp8-cast", residency="persistent", prompt=prompt, width=128,
                                    height=128, num_frames=17)  # fmt: skip
            hashes[placement].append(output_hash(engine.generate(request).output))
        resident[placement] = engine.models.resident()
        if placement is TextModels.ON_HOST:
            assert engine.models.kept_builds["text_encoder"] == engine.models.kept_builds["embeddings_processor"] == 1
            assert engine.models.host_cache_pinned() and engine.models.host_cache_bytes() > 0
        engine.models.release_all()
        del engine
    assert hashes[TextModels.ON_HOST] == hashes[TextModels.ON_DEVICE]
    assert {"text_encoder", "embeddings_processor"} <= set(resident[TextModels.ON_DEVICE])
    assert not {"text_encoder", "embeddings_processor"} & set(resident[TextModels.ON_HOST])
    REPORT["text_models_on_host"] = {"hashes": hashes[TextModels.ON_HOST], "resident": resident[TextModels.ON_HOST]}
