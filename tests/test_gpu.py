"""CUDA checks on the tiny bundle (opt-in: `pytest -m gpu`, run by scripts/device_check.sh on the GPU machine).

The engines here run eager (`compile_blocks=False`): compiled blocks are persistent mode's default on CUDA and
compiling per engine would cost minutes across the parametrizations; the default-settings test and
test_compiled_blocks_on_cuda_match_eager_and_keep_the_fp8_gemm cover the compiled path.
"""

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
    engine = Engine(tiny_bundle, tmp_path, device="cuda", compile_blocks=False)
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
    from ltx_demo.residency import ModelConfig, ModelManager
    from ltx_demo.types import Quantization, Residency

    residency = ModelManager(tiny_bundle, torch.device("cuda"), torch.bfloat16, compile_blocks=False)
    residency.configure(ModelConfig(Quantization.FP8_CAST, Residency.PERSISTENT, 1.0))
    for name in ("transformer", "transformer_stage_2"):  # stage 2 fuses the LoRA with the Triton kernel
        with residency.use(name) as transformer:
            names = fp8_weight_names(transformer)
            assert names and all(p.device.type == "cuda" for p in transformer.parameters())
            assert not any("to_gate_logits" in n for n in names)


def test_fp8_modes_against_bf16_on_the_same_stage_inputs(tiny_bundle, small_request, tmp_path):
    """Relative error of one stage-1 and one stage-2 transformer call, fp8-cast and fp8-scaled-mm vs bf16, on the
    inputs a real bf16 request fed them; and proof that the fp8 GEMM ran (counted calls)."""
    import json
    import os

    from ltx_demo.fp8_matmul import ScaledMMCounter

    captured: list[dict] = []
    engine = Engine(tiny_bundle, tmp_path, device="cuda", compile_blocks=False)
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


@pytest.mark.parametrize("n_cols", [64, 300, 2048, 4096, 16384])
def test_fused_row_quantization_matches_the_torch_reference(n_cols):
    """The Triton kernel gives the reference's scales and fp8 values (an element may differ by one fp8 step where
    Triton's float32 division rounds differently at a tie)."""
    from ltx_demo.fp8_matmul import quantize_rows, quantize_rows_reference

    generator = torch.Generator(device="cuda").manual_seed(n_cols)
    rows = torch.randn(257, n_cols, device="cuda", generator=generator).to(torch.bfloat16)
    rows[3] = 0  # an all-zero row: scale MIN_SCALE, zeros out
    rows[5, 7 % n_cols] = 3000.0  # one outlier sets its own row's scale only
    quantized, scale = quantize_rows(rows)
    expected, expected_scale = quantize_rows_reference(rows)
    assert quantized.dtype == torch.float8_e4m3fn and quantized.shape == rows.shape and scale.shape == (257, 1)
    torch.testing.assert_close(scale, expected_scale, rtol=1e-6, atol=0)
    got, want = quantized.float(), expected.float()
    differ = got != want
    assert differ.float().mean() < 1e-3
    assert ((got - want).abs()[differ] <= want.abs()[differ] / 8 + 1e-6).all()  # at most one e4m3 step
    assert (got[3] == 0).all()
    # Non-contiguous rows (a transposed view) are made contiguous first.
    view = rows.t().contiguous().t()
    assert torch.equal(quantize_rows(view)[0].float(), got)


@pytest.mark.parametrize("fast_accumulation", [True, False])
def test_fp8_scaled_mm_linear_is_close_to_bf16_and_counts_its_gemm(monkeypatch, fast_accumulation):
    from ltx_demo import fp8_matmul
    from ltx_demo.fp8_matmul import ScaledMMCounter, scaled_mm_forward

    monkeypatch.setattr(fp8_matmul, "FAST_ACCUMULATION", fast_accumulation)  # the default (on) and float32 sums

    torch.manual_seed(0)
    layer = torch.nn.Linear(4096, 2048, device="cuda", dtype=torch.bfloat16)
    x = torch.randn(2, 1248, 4096, device="cuda", dtype=torch.bfloat16)
    expected = torch.nn.functional.linear(
        x.float(), layer.weight.float().to(torch.float8_e4m3fn).float(), layer.bias.float()
    )
    layer.weight.data = layer.weight.data.to(torch.float8_e4m3fn)
    layer.bias.data = layer.bias.data.to(torch.float8_e4m3fn)  # ltx-core's downcast stores the bias in fp8 too
    forward = scaled_mm_forward(layer)
    calls = ScaledMMCounter.calls
    out = forward(x)
    assert ScaledMMCounter.calls == calls + 1 and out.shape == (2, 1248, 2048) and out.dtype == torch.bfloat16
    error = float((out.float() - expected).norm() / expected.norm())
    assert error < 0.05, error  # the activations' fp8 rounding (the weights are fp8 on both sides)


def test_fp8_scaled_mm_runs_the_shapes_cublas_has_no_fast_accumulation_for():
    """The feed-forward's down projection on a short clip's audio tokens: K = 8192 with a bias and 8 rows, which
    cuBLAS refuses with fast accumulation (docs/device/fast-accum-shapes-h200.json): it runs with float32 sums."""
    from ltx_demo import fp8_matmul

    layer = torch.nn.Linear(8192, 2048, device="cuda", dtype=torch.bfloat16)
    x = torch.randn(1, 8, 8192, device="cuda", dtype=torch.bfloat16)
    layer.weight.data = layer.weight.data.to(torch.float8_e4m3fn)
    layer.bias.data = layer.bias.data.to(torch.float8_e4m3fn)
    out = fp8_matmul.scaled_mm_forward(layer)(x)
    expected = torch.nn.functional.linear(x.float(), layer.weight.float(), layer.bias.float())
    assert float((out.float() - expected).norm() / expected.norm()) < 0.05


@pytest.mark.parametrize("quantization", ["bf16", "fp8-cast", "fp8-scaled-mm"])
def test_cuda_graph_replay_gives_the_eager_output(tiny_bundle, quantization):
    """GraphedBlocks on a real transformer: the replayed forward equals the eager one bit for bit, a new input
    shape captures a second graph, and the same shape replays."""
    from ltx_demo.forward_bench import ForwardShape, stage_inputs
    from ltx_demo.residency import ModelConfig, ModelManager
    from ltx_demo.types import Quantization, Residency

    outputs = {}
    for graphs in (False, True):
        models = ModelManager(
            tiny_bundle, torch.device("cuda"), torch.bfloat16, cuda_graphs=graphs, compile_blocks=False
        )
        models.configure(ModelConfig(Quantization(quantization), Residency.PERSISTENT, 1.0))
        with models.stage_transformer(1) as stage, torch.inference_mode():
            transformer = stage.model
            small = stage_inputs(transformer, ForwardShape(128, 128, 17))
            batched = stage_inputs(transformer, ForwardShape(128, 128, 17, batch=2), seed=1)
            outputs[graphs] = [transformer(**small)[0].clone() for _ in range(3)] + [transformer(**batched)[0]]
            graphed = transformer.velocity_model.__dict__.get("_process_transformer_blocks")
            if graphs:
                assert graphed.captures == 2 and graphed.replays == 4
            else:
                assert graphed is None
        models.release_all()
    for eager, replayed in zip(outputs[False], outputs[True], strict=True):
        assert torch.equal(eager, replayed)


def test_cuda_graphs_in_the_engine_match_eager_and_follow_the_adapter(tiny_bundle, small_request, tmp_path):
    """Stage 1 (adapter off) and stage 2 (adapter on) capture separate graphs; frames equal the eager engine's."""
    frames = {}
    for graphs in (False, True):
        engine = Engine(tiny_bundle, tmp_path / str(graphs), device="cuda", cuda_graphs=graphs, compile_blocks=False)
        request = small_request(quantization="fp8-cast", width=128, height=128, num_frames=17)
        frames[graphs] = [decode_mp4(engine.generate(request).output)[0] for _ in range(2)]
        if graphs:
            graphed = engine.models.held("transformer").velocity_model._process_transformer_blocks
            assert graphed.captures >= 2 and graphed.replays > graphed.captures
    assert all(np.array_equal(frames[False][0], f) for f in (*frames[False], *frames[True]))


def test_a_request_naming_no_quantization_runs_fp8_scaled_mm_on_hopper(tiny_bundle, small_request, tmp_path):
    """The default on Ada/Hopper is the fastest choice, fp8-scaled-mm; the reference flow keeps fp8-cast; the result
    (and so its sidecar and "reproduce") records what ran."""
    if torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("fp8-scaled-mm needs sm_89+")
    engine = Engine(tiny_bundle, tmp_path, device="cuda")
    assert engine.default_quantization() == "fp8-scaled-mm" and engine.default_quantization("reference") == "fp8-cast"
    result = engine.generate(small_request(quantization=None, width=128, height=128, num_frames=17))
    assert result.summary()["quantization"] == "fp8-scaled-mm" and result.request.quantization == "fp8-scaled-mm"
    assert result.summary()["counters"].get("fp8_scaled_mm_calls", 0) > 0
    engine.models.release_all()  # persistent with its CUDA graphs: the next tests measure absolute peaks


@pytest.mark.parametrize("quantization", ["bf16", "fp8-scaled-mm"])
def test_compiled_blocks_on_cuda_match_eager_and_keep_the_fp8_gemm(tiny_bundle, quantization):
    """CompiledBlocks on a real transformer on the GPU: Inductor's Triton kernels around the fp8 GEMM op (which it
    does not trace into), no fallback to eager, the output close to eager, and every block linear still a
    torch._scaled_mm call under fp8-scaled-mm."""
    from ltx_demo.compiled_blocks import CompiledBlocks
    from ltx_demo.forward_bench import ForwardShape, stage_inputs
    from ltx_demo.fp8_matmul import ScaledMMCounter
    from ltx_demo.residency import ModelConfig, ModelManager
    from ltx_demo.types import Quantization, Residency

    models = ModelManager(tiny_bundle, torch.device("cuda"), torch.bfloat16, cuda_graphs=False, compile_blocks=False)
    models.configure(ModelConfig(Quantization(quantization), Residency.PERSISTENT, 1.0))
    with models.stage_transformer(1) as stage, torch.inference_mode():
        transformer = stage.model
        inputs = stage_inputs(transformer, ForwardShape(128, 128, 17, batch=2))
        eager = transformer(**inputs)[0].float()
        compiled_blocks = CompiledBlocks(transformer.velocity_model)
        transformer(**inputs)  # compiles
        calls = ScaledMMCounter.calls
        compiled = transformer(**inputs)[0].float()
        assert compiled_blocks.failure is None
        if quantization == "fp8-scaled-mm":
            assert ScaledMMCounter.calls - calls > 0
    models.release_all()
    error = float((compiled - eager).norm() / eager.norm())
    assert error < 0.02, error


def test_host_frames_brings_a_decoder_chunk_contiguous_with_the_same_values():
    from einops import rearrange

    from ltx_demo.pipeline import host_frames

    planes = torch.randint(0, 256, (1, 3, 9, 64, 96), dtype=torch.uint8, device="cuda")
    chunk = rearrange(planes[0], "c f h w -> f h w c")  # what ltx-core's decode_video yields
    frames = host_frames(chunk)
    assert frames.device.type == "cpu" and frames.is_contiguous() and frames.shape == (9, 64, 96, 3)
    assert torch.equal(frames, chunk.cpu())
