"""The flow's own pieces on the tiny bundle (CPU): batched guidance equals ltx-pipelines' sequential passes."""

from __future__ import annotations

import pytest
import torch

from ltx_demo.engine import Engine
from ltx_demo.types import InvalidRequest


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


def test_cuda_graph_helpers_flatten_and_rebuild_the_blocks_arguments():
    """What GraphedBlocks copies into its static inputs: every tensor inside ltx-core's TransformerArgs, in order,
    with the structure (bools, None, nested tuples) kept for the rebuild. Replay itself needs CUDA (test_gpu)."""
    from ltx_core.model.transformer.transformer_args import TransformerArgs

    from ltx_demo.cuda_graphs import flatten, unflatten

    t = [torch.randn(2, 3) for _ in range(6)]
    args = TransformerArgs(x=t[0], context=t[1], context_mask=None, timesteps=t[2], embedded_timestep=t[3],
                           positional_embeddings=(t[4], t[5]), cross_positional_embeddings=None,
                           cross_scale_shift_timestep=None, cross_gate_timestep=None, enabled=True)  # fmt: skip
    structure, tensors = flatten((args, None))
    assert len(tensors) == 6 and all(a is b for a, b in zip(tensors, t, strict=True))
    copies = [x.clone() for x in tensors]
    rebuilt, nothing = unflatten(structure, copies)
    assert nothing is None and isinstance(rebuilt, TransformerArgs) and rebuilt.enabled is True
    assert rebuilt.x is copies[0] and rebuilt.positional_embeddings[1] is copies[5]
    assert isinstance(rebuilt.positional_embeddings, tuple) and rebuilt.context_mask is None


def test_cuda_graph_captures_read_perturbation_masks_made_before_the_capture():
    from ltx_core.guidance.perturbations import (
        BatchedPerturbationConfig,
        Perturbation,
        PerturbationConfig,
        PerturbationType,
    )

    from ltx_demo.cuda_graphs import _mask_caching

    skip = PerturbationType.SKIP_VIDEO_SELF_ATTN
    original = BatchedPerturbationConfig([PerturbationConfig.empty(), PerturbationConfig([Perturbation(skip, [0])])])
    cached = _mask_caching(original)
    values = torch.zeros(2, 3, 4)
    first, again = cached.mask_like(skip, 0, values), cached.mask_like(skip, 0, values)
    assert torch.equal(first, original.mask_like(skip, 0, values)) and first.flatten().tolist() == [1.0, 0.0]
    assert first.data_ptr() == again.data_ptr()  # made once: a capture reads it, it never writes it
    assert repr(cached).endswith(repr(original).removeprefix("BatchedPerturbationConfig"))
    assert cached.any_in_batch(skip, 0) and not cached.all_in_batch(skip, 0)


def test_host_frames_keeps_a_cpu_chunk_as_the_view_it_is():
    from einops import rearrange

    from ltx_demo.pipeline import host_frames

    planes = torch.randint(0, 256, (1, 3, 9, 16, 24), dtype=torch.uint8)
    chunk = rearrange(planes[0], "c f h w -> f h w c")  # what ltx-core's decode_video yields
    frames = host_frames(chunk)
    assert frames.data_ptr() == planes.data_ptr() and torch.equal(frames, chunk)  # no copy on the CPU
