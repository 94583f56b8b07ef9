"""Residency modes on the tiny bundle (CPU): same output in every mode, build counts, release, auto, the LoRA adapter.

"Same output" means bit-identical frames and audio from the flow and identical decoded mp4 content (media.X264_OPTIONS
make libx264 deterministic for the same frames)."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pytest
import torch

from ltx_demo.engine import Engine
from ltx_demo.residency import (
    CONCRETE_MODES,
    MemoryEstimate,
    ModelConfig,
    ModelManager,
    estimate_memory,
    plan_residency,
)
from ltx_demo.residency.builds import module_bytes
from ltx_demo.types import (
    GIB,
    GenerationCancelled,
    GenerationRequest,
    InvalidRequest,
    LoraMode,
    Quantization,
    Residency,
    TextEncoderQuantization,
)

from .test_engine import decode_mp4

logger = logging.getLogger(__name__)
MODES = ("persistent", "cold-start", "host-cached", "auto")


def assert_same_output(first, second, first_clip, second_clip) -> None:
    assert torch.equal(first_clip.frames, second_clip.frames), "frames differ before encoding"
    assert torch.equal(first_clip.audio, second_clip.audio)
    f1, a1, _, _ = decode_mp4(first.output)
    f2, a2, _, _ = decode_mp4(second.output)
    assert f1.shape == f2.shape and np.array_equal(a1, a2)
    assert np.array_equal(f1, f2)  # media.X264_OPTIONS make the same frames encode to the same bitstream


@pytest.mark.parametrize("quantization", ["bf16", "fp8-cast"])
def test_every_mode_gives_the_same_frames_and_audio(tiny_bundle, small_request, tmp_path, clips, quantization):
    engine = Engine(tiny_bundle, tmp_path, device="cpu")
    results = [engine.generate(small_request(quantization=quantization, residency=mode)) for mode in MODES]
    assert [r.residency for r in results[:3]] == list(MODES[:3]) and results[3].residency in MODES[:3]
    assert results[3].residency_reason and results[3].summary()["residency_requested"] == "auto"
    for result, clip in zip(results[1:], clips[1:], strict=True):
        assert_same_output(results[0], result, clips[0], clip)
    assert all(r.lora_mode == "adapter" and r.text_encoder_quantization == "bf16" for r in results)


def test_persistent_builds_the_transformer_once_across_three_requests(tiny_bundle, small_request, tmp_path):
    engine = Engine(tiny_bundle, tmp_path, device="cpu")
    for seed in (1, 2, 3):
        engine.generate(small_request(quantization="fp8-cast", residency="persistent", seed=seed))
    counts = engine.models.build_counts
    assert counts["transformer"] == 1 and counts["lora_adapter"] == 1
    assert counts["transformer_stage_2"] == 0  # no second, fused copy
    assert all(counts[name] == 1 for name in engine.models.resident())
    assert "transformer" in engine.models.resident() and "transformer_stage_2" not in engine.models.resident()
    assert engine.status()["residency"]["lora_adapter"] > 0


@pytest.mark.parametrize("mode", ["cold-start", "host-cached"])
def test_per_request_modes_build_once_per_request_and_hold_nothing_after(tiny_bundle, small_request, tmp_path,
                                                                         mode):  # fmt: skip
    engine = Engine(tiny_bundle, tmp_path, device="cpu")
    for seed in (1, 2):
        engine.generate(small_request(quantization="fp8-cast", residency=mode, seed=seed))
        assert engine.models.resident() == () and engine.status()["residency"]["device_models"] == {}
    counts = engine.models.build_counts
    # Once per request, not once per stage: stage 2 reuses stage 1's transformer through the adapter.
    assert counts["transformer"] == 2 and counts["lora_adapter"] == 2 and counts["transformer_stage_2"] == 0
    # host-cached uploads the LoRA pairs during stage 1 for stage 2 to use
    assert engine.models.uploaded_ahead == ({"lora_adapter": 2} if mode == "host-cached" else {})
    if mode == "host-cached":
        assert engine.models.disk_reads["transformer"] == 1  # the second request copied it from the host cache
        assert engine.models.host_cache_bytes() > 0
        assert set(engine.models.host_cache_loads().values()) == {1}  # every state dict read from disk once
    else:
        assert engine.models.disk_reads["transformer"] == 2 and engine.models.host_cache_bytes() == 0

    # A request that stops while the transformer is kept between the stages leaves nothing behind either.
    with pytest.raises(GenerationCancelled):
        stage = {"now": None}
        engine.generate(
            small_request(quantization="fp8-cast", residency=mode),
            on_progress=lambda p: stage.update(now=p.phase),
            cancelled=lambda: stage["now"] == "stage_2",
        )
    assert engine.models.resident() == ()


def test_a_request_stopped_before_stage_2_drops_the_pairs_uploaded_for_it(tiny_bundle, small_request, tmp_path):
    """host-cached uploads the LoRA pairs during stage 1: a request stopped before stage 2 drops them (the CUDA
    test measures the memory), and the next request uploads and uses its own."""
    engine = Engine(tiny_bundle, tmp_path, device="cpu")
    stage = {"now": None}
    with pytest.raises(GenerationCancelled):
        engine.generate(
            small_request(quantization="fp8-cast", residency="host-cached"),
            on_progress=lambda p: stage.update(now=p.phase),
            cancelled=lambda: stage["now"] == "upsample",
        )
    assert not engine.models.lora_uploaded_ahead() and engine.models.resident() == ()
    assert engine.models.uploaded_ahead == {}  # uploaded, never used
    engine.generate(small_request(quantization="fp8-cast", residency="host-cached"))
    assert engine.models.uploaded_ahead == {"lora_adapter": 1}


@pytest.mark.parametrize("quantization", ["bf16", "fp8-cast"])
def test_release_frees_every_tensor_at_once_without_a_gc_pass(tiny_bundle, quantization):
    """fp8-cast's and the adapter's forward patches make each patched Linear a reference cycle, and the stage
    block's caller still names the transformer when it is released: its tensors must go anyway, at release."""
    import gc
    import weakref

    residency = ModelManager(tiny_bundle, torch.device("cpu"), torch.float32)
    residency.configure(ModelConfig(Quantization(quantization), Residency.COLD_START, 1.0))
    gc.collect()
    gc.disable()
    try:
        with residency.request():
            with residency.stage_transformer(1) as stage:
                transformer = stage.model
                tensors = [weakref.ref(t) for t in [*transformer.parameters(), *transformer.buffers()]]
            with residency.stage_transformer(2) as stage:
                transformer = stage.model
                assert residency.adapter() is not None  # the adapter's forward patches are on
                held = transformer  # a name the caller keeps past the block
            with residency.use("video_decoder") as decoder:
                decoder_tensors = [weakref.ref(t) for t in [*decoder.parameters(), *decoder.buffers()]]
        alive = sum(ref() is not None for ref in tensors + decoder_tensors)
    finally:
        gc.enable()
    assert alive == 0, f"{alive} of {len(tensors) + len(decoder_tensors)} tensors outlived their release"
    assert list(held.parameters()) == []  # what the caller kept is an empty shell


def test_switching_mode_or_quantization_releases_before_the_new_config_builds(tiny_bundle, small_request, tmp_path,
                                                                              monkeypatch):  # fmt: skip
    engine = Engine(tiny_bundle, tmp_path, device="cpu")
    models = engine.models
    first_builds = []  # (config, what was held, host cache bytes) when a new config's first model starts building

    def on_loading(name):
        if name and (not first_builds or first_builds[-1][0] != models.config):
            first_builds.append((models.config, models.resident(), models.host_cache_bytes()))

    models.on_loading(on_loading)
    for quantization, mode in (("bf16", "persistent"), ("fp8-cast", "host-cached"), ("fp8-cast", "persistent"),
                               ("bf16", "cold-start"), ("fp8-cast", "persistent")):  # fmt: skip
        engine.generate(small_request(quantization=quantization, residency=mode))
    assert len(first_builds) == 5
    assert all(held == () and host == 0 for _, held, host in first_builds), first_builds


def test_fused_mode_keeps_a_second_copy_and_nearly_matches_the_adapter(tiny_bundle, small_request, tmp_path, clips):
    engine = Engine(tiny_bundle, tmp_path, device="cpu")
    adapter = engine.generate(small_request(residency="persistent"))
    fused = engine.generate(small_request(residency="persistent", lora_mode="fused"))
    assert {"transformer", "transformer_stage_2"} <= set(engine.models.resident())
    assert engine.models.build_counts["transformer"] == 2  # the switch released the adapter config's copy
    assert adapter.lora_mode == "adapter" and fused.lora_mode == "fused"
    difference = (clips[0].frames.float() - clips[1].frames.float()).abs().mean()
    assert difference < 1.0, difference  # bf16 rounding of the fused delta, not a different model


# -- the adapter against fusion -----------------------------------------------------------------------------------
def _cast(value, dtype: torch.dtype):
    if isinstance(value, torch.Tensor):
        return value.to(dtype) if value.is_floating_point() else value
    if isinstance(value, dict):
        return {k: _cast(v, dtype) for k, v in value.items()}
    if dataclasses.is_dataclass(value):
        return dataclasses.replace(value, **{f.name: _cast(getattr(value, f.name), dtype)
                                             for f in dataclasses.fields(value)})  # fmt: skip
    return value


def _relative_error(output: torch.Tensor, reference: torch.Tensor) -> float:
    return float((output.float() - reference.float()).norm() / reference.float().norm())


def measure_lora_paths(engine: Engine, request: GenerationRequest) -> dict:
    """Relative errors of the adapter path and ltx-core's fused path against a float32 W + strength * B @ A.

    The inputs are the last stage-2 transformer call of a real request. `layer` feeds each LoRA'd Linear the
    same random rows; `video` compares the whole transformer's video output (stage 2 freezes the audio latent, so
    the audio output is its input whatever the weights). Also the change from turning the adapter off.
    """
    from ltx_demo.residency.lora_adapter import load_lora_pairs

    engine.generate(request)  # builds the transformer and attaches the adapter (persistent)
    models = engine.models
    transformer, adapter = models.held("transformer"), models.adapter()
    captured = {}

    def capture(_module, _args, kwargs):
        if adapter.enabled:
            captured.update(kwargs)

    hook = transformer.register_forward_pre_hook(capture, with_kwargs=True)
    try:
        engine.generate(request)
    finally:
        hook.remove()

    strength = request.distilled_lora_strength
    with torch.inference_mode():
        with models.use("transformer_stage_2") as fused:  # ltx-core's fusion (ModelLedger.with_additional_loras)
            reference_models = ModelManager(engine.bundle, engine.device, torch.float32)
            reference_models.configure(ModelConfig(Quantization.BF16, Residency.COLD_START, strength))
            with reference_models.use("transformer") as reference:
                pairs = load_lora_pairs(str(engine.bundle.distilled_lora))
                for stem, (a, b) in pairs.items():
                    layer = reference.velocity_model.get_submodule(stem)
                    a, b = a.to(engine.device, torch.float32), b.to(engine.device, torch.float32)
                    layer.weight.data = layer.weight.data.float() + strength * (b @ a)
                reference_out = reference(**_cast(captured, torch.float32))
                generator = torch.Generator(device="cpu").manual_seed(0)
                layer_out = {"adapter": [], "fused": [], "reference": []}
                for stem in pairs:
                    ref_layer = reference.velocity_model.get_submodule(stem)
                    x = torch.randn(8, ref_layer.in_features, generator=generator).to(engine.device)
                    layer_out["reference"].append(ref_layer(x).flatten())
                    with adapter.active(True):
                        layer_out["adapter"].append(
                            transformer.velocity_model.get_submodule(stem)(x.to(engine.compute_dtype)).flatten()
                        )
                    layer_out["fused"].append(
                        fused.velocity_model.get_submodule(stem)(x.to(engine.compute_dtype)).flatten()
                    )
            with adapter.active(True):
                adapter_out = transformer(**captured)
            with adapter.active(False):
                off_out = transformer(**captured)
            fused_out = fused(**captured)
        del fused
        models.release("transformer_stage_2")
    layers = {k: torch.cat(v) for k, v in layer_out.items()}
    result = {
        "quantization": request.quantization,
        "device": str(engine.device),
        "compute_dtype": str(engine.compute_dtype).removeprefix("torch."),
        "layers": len(pairs),
        "adapter_layer_error": _relative_error(layers["adapter"], layers["reference"]),
        "fused_layer_error": _relative_error(layers["fused"], layers["reference"]),
        "adapter_video_error": _relative_error(adapter_out[0], reference_out[0]),
        "fused_video_error": _relative_error(fused_out[0], reference_out[0]),
        "adapter_off_change": _relative_error(off_out[0], adapter_out[0]),
    }
    logger.info("LoRA adapter vs fused against float32 W + s*B@A: %s", result)
    return result


@pytest.mark.parametrize("quantization", ["bf16", "fp8-cast"])
def test_adapter_is_at_least_as_close_to_the_reference_as_fusion(tiny_bundle, small_request, tmp_path, quantization):
    engine = Engine(tiny_bundle, tmp_path, device="cpu")
    errors = measure_lora_paths(engine, small_request(quantization=quantization, residency="persistent"))
    assert errors["adapter_off_change"] > 0.01  # turning the adapter off changes stage 2's output (~2.6% here)
    if quantization == "bf16":
        # Float32 compute: the adapter is exact up to float32 rounding; fusion rounds B @ A to bf16 first.
        assert errors["adapter_layer_error"] <= errors["fused_layer_error"]
        assert errors["adapter_video_error"] <= errors["fused_video_error"]
        assert errors["adapter_layer_error"] < 1e-5
    else:
        # fp8: both carry fp8 rounding (of W for the adapter, of W + s*B@A for fusion): same order of magnitude.
        assert errors["adapter_layer_error"] < 0.1 and errors["fused_layer_error"] < 0.1
        assert errors["adapter_layer_error"] <= 2 * errors["fused_layer_error"]


def test_adapter_off_restores_the_base_forward(tiny_bundle):
    from ltx_demo.residency.lora_adapter import LowRankAdapter, load_lora_pairs

    models = ModelManager(tiny_bundle, torch.device("cpu"), torch.float32)
    models.configure(ModelConfig(Quantization.FP8_CAST, Residency.PERSISTENT, 1.0))
    with models.use("transformer") as transformer, torch.inference_mode():
        layer = transformer.velocity_model.transformer_blocks[0].attn1.to_q
        x = torch.randn(4, layer.in_features)
        base = layer(x)
        adapter = LowRankAdapter(transformer, load_lora_pairs(str(tiny_bundle.distilled_lora)), 0.5, torch.float32)
        with adapter.active(False):
            assert torch.equal(layer(x), base)
        with adapter.active(True):
            expected = base + 0.5 * (x @ layer.lora_A.T) @ layer.lora_B.T
            assert torch.allclose(layer(x), expected, atol=1e-6)
        adapter.detach()
        assert "forward" in layer.__dict__  # fp8-cast's own instance forward is back
        assert not hasattr(layer, "lora_A") and torch.equal(layer(x), base)


# -- auto ------------------------------------------------------------------------------------------------------------
def _estimate() -> MemoryEstimate:
    components = dict(text_encoder=8, embeddings_processor=1, audio_encoder=1, video_encoder=1, transformer=20,
                      spatial_upsampler=1, transformer_stage_2=20, video_decoder=1, lora_adapter=2,
                      lora_pairs=6)  # fmt: skip
    return MemoryEstimate({k: v * GIB for k, v in components.items()}, activations=4 * GIB, host_cache=40 * GIB)


def test_auto_picks_the_fastest_mode_that_fits_and_says_why():
    estimate = _estimate()
    peaks = {mode: estimate.peak(mode, LoraMode.ADAPTER) for mode in CONCRETE_MODES}
    assert peaks[Residency.PERSISTENT] == 39 * GIB and peaks[Residency.COLD_START] == 26 * GIB
    # host-cached: the LoRA pairs upload during stage 1 (20 + 4 activations + 6)
    assert peaks[Residency.HOST_CACHED] == 30 * GIB
    assert estimate.peak(Residency.PERSISTENT, LoraMode.FUSED) == 57 * GIB  # the seed's two copies

    def plan(budget_gib: float, host_gib: float = 100, measured=None):
        return plan_residency(estimate, budget_bytes=int(budget_gib * GIB), budget_source="--vram-budget-gib",
                              host_available_bytes=int(host_gib * GIB), measured=measured or {})  # fmt: skip

    assert plan(48).mode is Residency.PERSISTENT
    chosen = plan(40)  # 39 GiB estimated, plus 10% headroom, does not fit 40
    assert chosen.mode is Residency.HOST_CACHED and "persistent needs ~42.9 GiB (estimated)" in chosen.reason
    assert plan(40, host_gib=16).mode is Residency.COLD_START
    measured = plan(40, measured={Residency.PERSISTENT: 37 * GIB})
    assert measured.mode is Residency.PERSISTENT and "(measured)" in measured.reason
    with pytest.raises(ValueError, match=r"no residency mode fits the 20\.0 GiB budget"):
        plan(20)


def test_auto_on_the_engine_follows_the_budget(tiny_bundle, small_request, tmp_path):
    engine = Engine(tiny_bundle, tmp_path, device="cpu")
    config = ModelConfig(Quantization.FP8_CAST, Residency.AUTO, 1.0)
    estimate = estimate_memory(tiny_bundle, config, (64, 64, 9), torch.float32)
    persistent, per_request = (estimate.peak(m, LoraMode.ADAPTER) for m in (Residency.PERSISTENT,
                                                                            Residency.COLD_START))  # fmt: skip
    assert per_request < persistent
    between = (persistent + per_request * 1.1) / 2 / GIB
    result = engine.generate(small_request(quantization="fp8-cast", residency="auto", vram_budget_gib=between))
    assert result.residency == "host-cached" and "faster modes do not fit: persistent" in result.residency_reason
    assert engine.models.resident() == () and engine.models.host_cache_bytes() > 0
    result = engine.generate(small_request(quantization="fp8-cast", residency="auto", vram_budget_gib=1.0))
    assert result.residency == "persistent" and engine.models.host_cache_bytes() == 0  # the switch dropped it
    with pytest.raises(InvalidRequest, match="no residency mode fits"):
        engine.generate(small_request(residency="auto", vram_budget_gib=per_request / 2 / GIB))


def test_the_estimate_matches_what_is_built(tiny_bundle):
    models = ModelManager(tiny_bundle, torch.device("cpu"), torch.float32)
    for quantization in Quantization:
        config = ModelConfig(quantization, Residency.COLD_START, 1.0)
        estimate = estimate_memory(tiny_bundle, config, (64, 64, 9), torch.float32).components
        models.configure(config)
        for name in ("transformer", "video_decoder", "text_encoder"):
            with models.use(name) as model:
                built = module_bytes(model)
            # The text encoder's rope tables and position ids are computed, not loaded (a few percent here).
            assert abs(estimate[name] - built) <= 0.15 * built, (quantization, name, estimate[name], built)


# -- the text encoder ------------------------------------------------------------------------------------------------
def test_nf4_text_encoder_is_refused_on_cpu_with_the_reason(tiny_bundle, small_request, tmp_path):
    engine = Engine(tiny_bundle, tmp_path, device="cpu")
    with pytest.raises(InvalidRequest, match=r"nf4.*CUDA.*--text-encoder-quantization bf16"):
        engine.generate(small_request(text_encoder_quantization="nf4"))
    with pytest.raises(InvalidRequest, match="unknown loramode"):
        engine.generate(small_request(lora_mode="merged"))
    assert sum(engine.models.build_counts.values()) == 0
    assert engine.default_text_encoder_quantization() == TextEncoderQuantization.BF16.value


# -- what the persistent set holds ---------------------------------------------------------------------------------
def test_fp8_configs_keep_the_adapter_in_fp8_at_half_the_bytes_and_close_to_bf16(tiny_bundle):
    from ltx_demo.residency.lora_adapter import LowRankAdapter, load_lora_pairs

    pairs = load_lora_pairs(str(tiny_bundle.distilled_lora))
    models = ModelManager(tiny_bundle, torch.device("cpu"), torch.float32)
    models.configure(ModelConfig(Quantization.FP8_CAST, Residency.PERSISTENT, 1.0))
    with models.use("transformer") as transformer, torch.inference_mode():
        layer = transformer.velocity_model.transformer_blocks[0].attn1.to_q
        x = torch.randn(16, layer.in_features)
        outputs, sizes = {}, {}
        for store_fp8 in (False, True):
            adapter = LowRankAdapter(transformer, pairs, 1.0, torch.float32, store_fp8=store_fp8)
            with adapter.active(True):
                outputs[store_fp8] = layer(x)
            sizes[store_fp8] = adapter.summary.bytes
            assert (layer.lora_A.dtype == torch.float8_e4m3fn) == store_fp8
            adapter.detach()
        base = layer(x)
    # float32 (4 bytes) -> fp8 (1 byte) + one scale per row (at this rank 8, B's 4-byte row scales weigh half as
    # much as its 8 fp8 entries; at LTX-2.3's rank 384 they are ~1%).
    assert sizes[True] < 0.35 * sizes[False]
    lora_term = (outputs[False] - base).norm()
    error = float((outputs[True] - outputs[False]).norm() / lora_term)
    assert 0 < error < 0.1, error  # fp8-sized rounding of the low-rank term only
    assert not hasattr(layer, "lora_A_scale")  # detach drops the scales too


def test_the_text_path_drops_what_text_never_runs_and_stores_the_processor_in_fp8(tiny_bundle):
    from ltx_demo.text_path import DroppedModule

    prompt = "A woman speaks to the camera."
    contexts, sizes = {}, {}
    for quantization in (Quantization.BF16, Quantization.FP8_CAST):
        models = ModelManager(tiny_bundle, torch.device("cpu"), torch.float32)
        models.configure(ModelConfig(quantization, Residency.COLD_START, 1.0))
        with torch.inference_mode(), models.request():
            with models.use("text_encoder") as text_encoder:
                gemma = text_encoder.model
                assert isinstance(gemma.lm_head, DroppedModule) and isinstance(gemma.model.vision_tower, DroppedModule)
                with pytest.raises(RuntimeError, match="never runs it"):
                    gemma.lm_head(torch.zeros(1))
                hidden, mask = text_encoder.encode(prompt)
            with models.use("embeddings_processor") as processor:
                linears = [m for m in processor.modules() if isinstance(m, torch.nn.Linear)]
                fp8 = {m.weight.dtype == torch.float8_e4m3fn for m in linears}
                assert fp8 == {quantization is Quantization.FP8_CAST}
                sizes[quantization] = module_bytes(processor)
                encoded = processor.process_hidden_states(hidden, mask)
            contexts[quantization] = (encoded.video_encoding.float(), encoded.audio_encoding.float())
    assert sizes[Quantization.FP8_CAST] < 0.6 * sizes[Quantization.BF16]
    difference = [
        float((contexts[Quantization.FP8_CAST][i] - contexts[Quantization.BF16][i]).norm()
              / contexts[Quantization.BF16][i].norm())
        for i in range(2)
    ]  # fmt: skip
    logger.info("fp8 vs bf16 embeddings processor, relative difference of the contexts: %s", difference)
    assert all(0 < d < 0.1 for d in difference), difference


@pytest.mark.parametrize("quantization", [Quantization.BF16, Quantization.FP8_CAST])
def test_fusing_in_place_gives_ltx_cores_fused_weights(tiny_bundle, quantization):
    """What cold-start and host-cached do on CUDA before stage 2 (ltx-core's apply_loras, one layer at a time, in
    place), checked here on the CPU against the second transformer ltx-pipelines' ModelLedger fuses."""
    from ltx_demo.residency.lora_adapter import fuse_in_place_, load_lora_pairs

    models = ModelManager(tiny_bundle, torch.device("cpu"), torch.bfloat16)  # CUDA's compute dtype (no forward)
    models.configure(ModelConfig(quantization, Residency.COLD_START, 0.7, LoraMode.FUSED))
    with models.request(), torch.inference_mode():
        with models.use("transformer") as transformer:
            before = {n: p.clone() for n, p in transformer.named_parameters()}
            fused_count = fuse_in_place_(transformer, load_lora_pairs(str(tiny_bundle.distilled_lora)), 0.7)
            in_place = dict(transformer.named_parameters())
        with models.use("transformer_stage_2") as reference:
            expected = dict(reference.named_parameters())
            changed = [n for n in in_place if not torch.equal(in_place[n], before[n])]
            assert len(changed) == fused_count > 0
            for name, tensor in in_place.items():
                assert tensor.dtype == expected[name].dtype and torch.equal(tensor, expected[name]), name


def test_per_request_modes_fuse_in_place_only_on_cuda(tiny_bundle, small_request, tmp_path):
    engine = Engine(tiny_bundle, tmp_path, device="cpu")
    result = engine.generate(small_request(residency="cold-start"))
    assert result.stage_2_lora == "adapter" and not engine.models.fuses_in_place()  # CPU: same output as persistent
    assert result.summary()["stage_2_lora"] == "adapter"


def test_describe_counts_every_resident_byte_once(tiny_bundle, small_request, tmp_path):
    engine = Engine(tiny_bundle, tmp_path, device="cpu")
    engine.generate(small_request(quantization="fp8-cast", residency="persistent"))
    described = engine.models.status().details
    held = [engine.models.held(name) for name in engine.models.resident()]
    unique = {t.data_ptr(): t.nbytes for m in held for t in [*m.parameters(), *m.buffers()] if t.device.type != "meta"}
    assert described["lora_adapter"] > 0
    assert sum(described["device_models"].values()) + described["lora_adapter"] == sum(unique.values())
