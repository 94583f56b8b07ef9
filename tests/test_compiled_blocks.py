"""torch.compile'd transformer blocks (compiled_blocks.py) on CPU with the tiny bundle: Inductor's C++ kernels run
the real blocks, the output matches eager, the blocks share graphs instead of compiling one each, a failing
compile falls back to eager, and compile runs only when asked."""

from __future__ import annotations

import copy
import re

import numpy as np
import pytest
import torch

from ltx_demo.compiled_blocks import CompiledBlocks, compile_stats
from ltx_demo.cuda_graphs import _mask_caching
from ltx_demo.engine import Engine
from ltx_demo.forward_bench import ForwardShape, stage_inputs
from ltx_demo.residency import ModelConfig, ModelManager
from ltx_demo.residency.lora_adapter import LowRankAdapter, load_lora_pairs
from ltx_demo.types import CompileBlocks, Flow, Quantization, Residency

from .test_engine import decode_mp4


@pytest.fixture
def stage_transformer(tiny_bundle):
    """The tiny bundle's stage transformer (float32, CPU), grown from 2 to 6 blocks (copies with their own idx) so
    that graph sharing across blocks shows, with the distilled LoRA's adapter (off) on every block's linears, as
    persistent residency holds it (each copy gets the pairs of the block it copies)."""
    models = ModelManager(tiny_bundle, torch.device("cpu"), torch.float32, compile_blocks=False)
    models.configure(ModelConfig(Quantization.BF16, Residency.PERSISTENT, 1.0))
    with models.use("transformer") as model:
        blocks = model.velocity_model.transformer_blocks
        for idx in range(len(blocks), 6):
            block = copy.deepcopy(blocks[idx % 2])
            block.idx = idx
            blocks.append(block)
        pairs = {}
        for stem, pair in load_lora_pairs(str(tiny_bundle.distilled_lora)).items():
            if not (found := re.match(r"transformer_blocks\.(\d+)\.(.*)", stem)):
                pairs[stem] = pair
                continue
            for idx in range(int(found[1]), 6, 2):
                pairs[f"transformer_blocks.{idx}.{found[2]}"] = pair
        model.adapter = LowRankAdapter(model, pairs, strength=1.0, dtype=torch.float32)
        yield model
        model.adapter.detach()
    models.release_all()


def _guided_inputs(transformer, perturbed_block: int):
    """Stage 1's four batched passes: plain, STG on one block, no audio-video cross attention, plain."""
    from ltx_core.guidance.perturbations import (
        BatchedPerturbationConfig,
        Perturbation,
        PerturbationConfig,
        PerturbationType,
    )

    inputs = stage_inputs(transformer, ForwardShape(64, 64, 9, batch=4))
    stg = [Perturbation(t, [perturbed_block]) for t in (PerturbationType.SKIP_VIDEO_SELF_ATTN,
                                                         PerturbationType.SKIP_AUDIO_SELF_ATTN)]  # fmt: skip
    modality = [Perturbation(t, None) for t in (PerturbationType.SKIP_A2V_CROSS_ATTN,
                                                PerturbationType.SKIP_V2A_CROSS_ATTN)]  # fmt: skip
    passes = [PerturbationConfig([]), PerturbationConfig(stg), PerturbationConfig(modality), PerturbationConfig([])]
    # as the CUDA-graph capture gives them (its mask cache filled by the eager calls first): a compiled block must
    # not guard on that cache (on the H200 it recompiled every block)
    inputs["perturbations"] = _mask_caching(BatchedPerturbationConfig(passes))
    return inputs


def test_compiled_blocks_match_eager_and_share_graphs(stage_transformer):
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    guided = _guided_inputs(stage_transformer, perturbed_block=3)
    single = stage_inputs(stage_transformer, ForwardShape(128, 64, 9), seed=1)  # stage 2: one pass, another shape
    adapter = stage_transformer.adapter

    def run(inputs):  # stage 1 with the adapter off, stage 2 with it on
        with adapter.active(inputs is single):
            return stage_transformer(**inputs)[0].clone()

    with torch.inference_mode():
        eager = [run(inputs) for inputs in (guided, single)]
        compiled_blocks = CompiledBlocks(stage_transformer.velocity_model)
        compiled = [run(inputs) for inputs in (guided, single, guided)]
    assert compiled_blocks.active and compiled_blocks.failure is None
    for expected, got in zip((*eager, eager[0]), compiled, strict=True):
        assert torch.allclose(got, expected, rtol=1e-4, atol=1e-5), float((got - expected).abs().max())
    # block 0, the unperturbed blocks with idx symbolic, the STG block, then the new shape (adapter on): 4 graphs for
    # 18 block calls; specialising on idx, or on each layer's adapter, would have made 6 for stage 1 alone
    assert counters["stats"]["unique_graphs"] <= 4, dict(counters["stats"])
    stats = compile_stats()  # what a bench record carries
    assert stats["unique_graphs"] == counters["stats"]["unique_graphs"] and stats["compile_seconds"] > 0, stats


def test_a_failing_compile_falls_back_to_eager_for_every_block(stage_transformer):
    def broken_backend(_graph, _example_inputs):
        raise RuntimeError("PassManager::run failed")

    torch._dynamo.reset()
    failures: list[str] = []
    inputs = _guided_inputs(stage_transformer, perturbed_block=1)
    with torch.inference_mode():
        expected = stage_transformer(**inputs)[0].clone()
        compiled_blocks = CompiledBlocks(stage_transformer.velocity_model, failures.append, backend=broken_backend)
        got = stage_transformer(**inputs)[0]
    assert torch.equal(got, expected)
    assert not compiled_blocks.active and "PassManager::run failed" in compiled_blocks.failure
    assert failures == [compiled_blocks.failure]
    assert all(block._compiled_call_impl is None for block in stage_transformer.velocity_model.transformer_blocks)


def test_out_of_memory_inside_compiled_blocks_is_raised_not_swallowed(stage_transformer):
    def out_of_memory_backend(_graph, _example_inputs):
        def run(*_args):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

        return run

    torch._dynamo.reset()
    inputs = _guided_inputs(stage_transformer, perturbed_block=1)
    compiled_blocks = CompiledBlocks(stage_transformer.velocity_model, backend=out_of_memory_backend)
    with torch.inference_mode(), pytest.raises(torch.OutOfMemoryError):
        stage_transformer(**inputs)
    assert compiled_blocks.active  # out of memory is not a compile failure


def test_compile_runs_only_when_asked_and_never_in_the_reference_flow(tiny_bundle):
    """compile_for's rule: auto compiles persistent residency on CUDA only (a ModelManager on a "cuda" device is
    made here without a GPU: compile_for reads only the device's type); on compiles the fast flow on any device;
    the reference flow keeps ltx-core's blocks as they are."""
    fast = ModelConfig(Quantization.BF16, Residency.PERSISTENT, 1.0)
    default = ModelManager(tiny_bundle, torch.device("cpu"), torch.float32)
    assert default.compile_blocks_setting is CompileBlocks.AUTO and not default.compile_for(fast)
    on_cuda = ModelManager(tiny_bundle, torch.device("cuda"), torch.bfloat16)
    assert on_cuda.compile_for(fast)
    assert not on_cuda.compile_for(ModelConfig(Quantization.BF16, Residency.COLD_START, 1.0))
    assert not on_cuda.compile_for(ModelConfig(Quantization.BF16, Residency.HOST_CACHED, 1.0))
    assert not on_cuda.compile_for(ModelConfig(Quantization.BF16, Residency.PERSISTENT, 1.0, flow=Flow.REFERENCE))
    forced = ModelManager(tiny_bundle, torch.device("cpu"), torch.float32, compile_blocks=CompileBlocks.ON)
    for residency in (Residency.PERSISTENT, Residency.COLD_START, Residency.HOST_CACHED):
        assert forced.compile_for(ModelConfig(Quantization.BF16, residency, 1.0))
    assert not forced.compile_for(ModelConfig(Quantization.BF16, Residency.PERSISTENT, 1.0, flow=Flow.REFERENCE))


def test_the_engine_with_compiled_blocks_renders_what_eager_renders(tiny_bundle, small_request, clips, tmp_path):
    """The whole flow with --compile-blocks on (CPU): the decoded frames within a pixel level of the eager engine's
    and the latents within float rounding, the result says the blocks were compiled, and a second request reuses
    the compiled graphs. The frames are compared before the mp4: x264 turns a one-level difference in its input
    into tens of levels in a few pixels (CI, on a CPU whose kernels round differently, saw 30)."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    outputs, graphs = {}, []
    for setting in (CompileBlocks.OFF, CompileBlocks.ON):
        engine = Engine(tiny_bundle, tmp_path / setting, device="cpu", compile_blocks=setting)
        outputs[setting] = []
        for _ in range(2):
            outputs[setting].append(decode_mp4(engine.generate(small_request()).output)[0])
            graphs.append(compile_stats()["unique_graphs"])
        assert engine.models.compiled_blocks is (setting is CompileBlocks.ON)
        assert engine.models.compile_failures == []
        engine.models.release_all()
    assert np.array_equal(*outputs[CompileBlocks.ON])  # deterministic, to the mp4
    # the second request compiles nothing: its stage 1 runs the linear forwards the first traced (the LoRA adapter
    # is attached before the first stage 1; attached at stage 2 it made the H200's second request recompile)
    assert graphs[0] == graphs[1] == 0 and graphs[2] > 0 and graphs[3] == graphs[2], graphs
    eager, compiled = clips[0], clips[2]
    difference = (compiled.frames.float() - eager.frames.float()).abs()
    assert difference.max() <= 2 and difference.mean() < 0.05, (difference.max(), difference.mean())
    for latent, eager_latent in zip(compiled.stage_latents, eager.stage_latents, strict=True):
        assert (latent - eager_latent).norm() / eager_latent.norm() < 1e-4
    assert torch.equal(clips[3].frames, compiled.frames)


def test_a_rebuilt_transformer_reuses_the_compiled_graphs(tiny_bundle, small_request, tmp_path):
    """--compile-blocks on with cold-start (CPU): every request builds the transformer again, and the requests after
    the first compile nothing (Dynamo's graphs guard on the blocks' code and tensor shapes, not on which module
    object runs them) and render the same frames: the compile is paid once per process, not per request."""
    engine = Engine(tiny_bundle, tmp_path, device="cpu", compile_blocks=CompileBlocks.ON)
    request = small_request(residency="cold-start")
    frames, graphs = [], []
    for _ in range(2):
        frames.append(decode_mp4(engine.generate(request).output)[0])
        graphs.append(compile_stats()["unique_graphs"])
        assert engine.models.resident() == () and engine.models.compiled_blocks
    assert engine.models.compile_failures == []
    assert graphs[0] > 0 and graphs[1] == graphs[0], graphs
    assert np.array_equal(frames[0], frames[1])


def test_inductor_deterministic_is_set_for_the_process_or_refused_with_the_reason(tiny_bundle, capsys):
    """--inductor-deterministic: on a torch with Inductor's deterministic mode (>= 2.10, the device's) the process
    compiles in it and the bench's variant says so; on an older torch (2.9 here) the command refuses, naming why."""
    import torch._inductor.config as inductor_config

    from ltx_demo import cli
    from ltx_demo.bench import compiled_note
    from ltx_demo.compiled_blocks import deterministic_kernels, use_deterministic_kernels

    if not hasattr(inductor_config, "deterministic"):
        with pytest.raises(ValueError, match=r"--inductor-deterministic needs .*torch >= 2\.10"):
            use_deterministic_kernels()
        argv = ["generate", "--bundle", str(tiny_bundle.root), "--device", "cpu", "--inductor-deterministic"]
        assert cli.main(argv) != 0
        assert "--inductor-deterministic needs" in capsys.readouterr().err
        assert not deterministic_kernels() and compiled_note(True, []) == ", compiled blocks"
        return
    saved = inductor_config.deterministic
    try:
        use_deterministic_kernels()
        assert deterministic_kernels() and compiled_note(True, []) == ", compiled blocks (Inductor deterministic)"
    finally:
        inductor_config.deterministic = saved
