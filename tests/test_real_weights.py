"""One generation on the real LTX-2.3 bundle (opt-in: `LTX_DEMO_REAL_BUNDLE=DIR pytest -m real_weights`)."""

from __future__ import annotations

import os

import pytest

from ltx_demo.checkpoints import check_bundle, resolve_bundle
from ltx_demo.engine import Engine

from .test_engine import decode_mp4

pytestmark = [
    pytest.mark.real_weights,
    pytest.mark.skipif(not os.environ.get("LTX_DEMO_REAL_BUNDLE"), reason="set LTX_DEMO_REAL_BUNDLE to a bundle dir"),
]


def test_real_bundle_checks_and_generates(small_request, tmp_path):
    bundle = resolve_bundle(os.environ["LTX_DEMO_REAL_BUNDLE"])
    assert not bundle.synthetic
    assert all(not c.problems for c in check_bundle(bundle))
    result = Engine(bundle, tmp_path).generate(
        small_request(width=768, height=512, num_frames=25, steps=30, quantization="fp8-cast")
    )
    frames, audio, _rate, _fps = decode_mp4(result.output)
    assert frames.shape == (25, 512, 768, 3) and audio.shape[0] == 2


def test_real_bundle_enhances_the_prompt_with_the_portrait(small_request, tmp_path):
    """ltx-pipelines' enhancer (Gemma-3 with its vision tower) rewrites the prompt; the result records what ran."""
    bundle = resolve_bundle(os.environ["LTX_DEMO_REAL_BUNDLE"])
    result = Engine(bundle, tmp_path).generate(
        small_request(width=768, height=512, num_frames=25, steps=8, enhance_prompt=True)
    )
    assert result.prompt_used and result.prompt_used != result.request.prompt
