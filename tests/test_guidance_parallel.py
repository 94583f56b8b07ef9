"""--parallel guidance on the CPU (gloo, 2 real processes, the tiny bundle): the same frames as one process running the
same grouping of stage 1's guidance passes (--guidance-split 2), each rank running one group per step."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from ltx_demo.bench import output_hash
from ltx_demo.devices import MULTICAST_OFF
from ltx_demo.requests import check_request
from ltx_demo.types import InvalidRequest
from tests.test_ui import ROOT

STEPS = 3
SMALL = ["--width", "64", "--height", "64", "--num-frames", "9", "--steps", str(STEPS), "--quantization", "bf16",
         "--seed", "7", "--cold-start-cache-dir", "off"]  # fmt: skip


def generate(bundle, out, *flags: str) -> dict:
    # One thread per process on both sides: CPU kernels may round differently at another thread count.
    env = os.environ | {"OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    run = subprocess.run(
        [sys.executable, "-m", "ltx_demo", "generate", "--bundle", str(bundle), *SMALL, "--output-dir", str(out.parent),
         "--output", str(out), *flags],
        capture_output=True, text=True, cwd=ROOT, timeout=600, env=env,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout)


def test_two_gloo_ranks_give_the_frames_of_one_process_with_the_same_grouping(tiny_bundle, tmp_path):
    one = generate(tiny_bundle.root, tmp_path / "one.mp4", "--guidance-split", "2")
    two = generate(tiny_bundle.root, tmp_path / "two.mp4", "--parallel", "guidance", "--gpus", "cpu:2")
    assert output_hash(one["output"]) == output_hash(two["output"])  # decoded frames and audio, bit for bit
    parallel = two["parallel"]
    assert (parallel["world_size"], parallel["backend"], parallel["guidance_split"]) == (2, "gloo", 2)
    assert parallel["ranks_agree"] and len({r["output_hash"] for r in parallel["ranks"]}) == 1
    # One process ran both groups (2 calls a step); rank 0 ran its own group only (1 call a step).
    assert one["counters"]["stage_1_transformer_calls"] == 2 * STEPS
    assert two["counters"]["stage_1_transformer_calls"] == STEPS
    assert sorted(p.name for p in tmp_path.glob("*.mp4")) == ["one.mp4", "two.mp4"]  # rank 1 wrote only scratch
    for rank in parallel["ranks"]:  # every process the launcher started: NVLink multicast off
        assert MULTICAST_OFF.items() <= rank["environment"].items(), rank


def test_the_split_groups_stay_within_the_batched_guidance_bound(engine, small_request, clips):
    """2 or 4 calls a step instead of one change only float rounding (a batch of 2 rows vs 4): the bound
    test_pipeline holds batched guidance to against ltx-pipelines' one-by-one passes."""
    for split in (1, 2, 4):
        result = engine.generate(small_request(steps=2, guidance_split=split))
        assert result.counters["stage_1_transformer_calls"] == 2 * split
    for clip in clips[1:]:
        difference = (clip.frames.float() - clips[0].frames.float()).abs()
        assert difference.max() <= 2 and difference.mean() < 0.05
        for latent, batched in zip(clip.stage_latents, clips[0].stage_latents, strict=True):
            assert (latent - batched).norm() / batched.norm() < 1e-4
        assert torch.equal(clip.audio, clips[0].audio)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"guidance_split": 3}, r"guidance split 3 must be one of 1, 2, 4"),
        ({"guidance_split": 2, "batch_guidance": False}, r"needs batched guidance"),
        ({"guidance_split": 2, "flow": "reference"}, r"needs batched guidance .* fast flow"),
    ],
)
def test_a_split_that_cannot_run_is_refused_before_any_model(small_request, fields, message):
    with pytest.raises(InvalidRequest, match=message):
        check_request(small_request(**fields))


def test_parallel_guidance_needs_two_or_four_processes(tiny_bundle, tmp_path):
    run = subprocess.run(
        [sys.executable, "-m", "ltx_demo", "generate", "--bundle", str(tiny_bundle.root), *SMALL,
         "--output-dir", str(tmp_path), "--parallel", "guidance", "--gpus", "cpu:3"],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )  # fmt: skip
    assert run.returncode == 2 and "guidance split 3 must be one of 1, 2, 4" in run.stderr, run.stderr
