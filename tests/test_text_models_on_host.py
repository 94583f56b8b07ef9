"""Persistent residency with --text-models on-host (modes.Persistent) on the tiny bundle (CPU): the models kept as
built among the text models wait in host memory between prompts, are uploaded for a text the prompt cache lacks and
freed after its encode, and the video is the same file as with every model on the device. The nf4 Gemma case drives
the residency layer directly (the engine refuses nf4 on CPU; bitsandbytes' CPU backend quantizes here)."""

from __future__ import annotations

import pytest
import torch

from ltx_demo import cli_flags
from ltx_demo.bench import output_hash
from ltx_demo.cli import bench_configs
from ltx_demo.engine import Engine
from ltx_demo.residency import ModelConfig, ModelManager
from ltx_demo.residency.modes import text_models_for
from ltx_demo.types import Quantization, Residency, TextEncoderQuantization, TextModels
from ltx_demo.ui.readouts import status_html

from .test_built_states import assert_identical, encode


def test_the_fp8_processor_waits_on_the_host_and_the_video_is_the_same(tiny_bundle, small_request, tmp_path):
    """fp8-cast: the embeddings processor is kept as built, so it waits on the host; the bf16 Gemma (CPU) is not,
    so it stays on the device. A new prompt uploads the processor again; the denoising models stay put."""
    on_host = Engine(tiny_bundle, tmp_path / "host", device="cpu", text_models=TextModels.ON_HOST)
    on_device = Engine(tiny_bundle, tmp_path / "device", device="cpu")
    prompts = ("A woman speaks to the camera.", "A man sings to the camera.")
    for prompt in prompts:
        request = small_request(quantization="fp8-cast", residency="persistent", prompt=prompt)
        parked, plain = on_host.generate(request), on_device.generate(request)
        assert output_hash(parked.output) == output_hash(plain.output)
        assert "embeddings_processor" not in on_host.models.resident() and "text_encoder" in on_host.models.resident()
        assert "embeddings_processor" in on_device.models.resident()
    counts, kept = on_host.models.build_counts, on_host.models.kept_builds
    assert counts["embeddings_processor"] == 2 and kept["embeddings_processor"] == 1  # the second: from the host
    assert counts["transformer"] == counts["text_encoder"] == 1
    assert set(on_host.models.host_kept_as_built()) == {"embeddings_processor"}
    assert on_host.models.status().details["text_models"] == "on-host"
    again = on_host.generate(small_request(quantization="fp8-cast", residency="persistent", prompt=prompts[1]))
    assert "prompt_texts_encoded" not in again.counters and counts["embeddings_processor"] == 2  # cached: no upload


def test_the_nf4_text_encoder_waits_on_the_host_and_encodes_the_same(tiny_bundle):
    pytest.importorskip("bitsandbytes")
    results = {}
    for placement in TextModels:
        residency = ModelManager(tiny_bundle, torch.device("cpu"), torch.float32)
        config = ModelConfig(
            Quantization.FP8_CAST, Residency.PERSISTENT, 1.0,
            text_encoder_quantization=TextEncoderQuantization.NF4, text_models=placement,
        )  # fmt: skip
        residency.configure(config)
        results[placement] = [encode(residency), encode(residency)]
        waits = placement is TextModels.ON_HOST
        assert ("text_encoder" in residency.resident()) is not waits
        assert residency.build_counts["text_encoder"] == (2 if waits else 1)
        assert residency.kept_builds["text_encoder"] == (1 if waits else 0)  # the upload of the nf4 state
        assert (residency.host_cache_bytes() > 0) is waits
        residency.release_all()
    for first, second in (*results.values(), (results[TextModels.ON_HOST][1], results[TextModels.ON_DEVICE][0])):
        assert_identical(first, second)


def test_auto_is_the_default_and_the_bench_marks_only_it_as_the_default():
    parser = cli_flags.build_parser()
    base = ["bench", "--device", "cpu", "--quantization", "fp8-cast", "--residency", "persistent", "--out", "b.json"]
    base += ["--resolutions", "768x512"]
    assert parser.parse_args(base).text_models == "auto"
    (default,) = bench_configs(parser.parse_args(base), "fp8-cast")
    for placement in ("on-host", "on-device"):
        (named,) = bench_configs(parser.parse_args([*base, "--text-models", placement]), "fp8-cast")
        assert default.default_settings and not named.default_settings


def test_auto_waits_on_the_host_on_cuda_while_the_prompt_cache_is_on():
    """auto: on the host only where it frees device memory (CUDA) and a repeated prompt needs no upload (the cache is
    on); a named choice is kept as asked. (CUDA is only named here: the function reads the device's type.)"""
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert text_models_for(TextModels.AUTO, cuda, 16) is TextModels.ON_HOST
    assert text_models_for(TextModels.AUTO, cuda, 0) is TextModels.ON_DEVICE
    assert text_models_for(TextModels.AUTO, cpu, 16) is TextModels.ON_DEVICE
    assert text_models_for(TextModels.ON_DEVICE, cuda, 16) is TextModels.ON_DEVICE
    assert text_models_for(TextModels.ON_HOST, cuda, 0) is TextModels.ON_HOST


def test_a_cpu_engine_keeps_its_text_models_on_the_device_by_default(tiny_bundle, tmp_path):
    assert Engine(tiny_bundle, tmp_path, device="cpu").text_models is TextModels.ON_DEVICE


def test_a_preloaded_engine_serves_its_first_request_with_what_it_built(tiny_bundle, small_request, tmp_path):
    """--preload with on-host: the preload's config is the one a request makes, so nothing is built again; the
    processor it built waits on the host from the start."""
    engine = Engine(tiny_bundle, tmp_path, device="cpu", text_models=TextModels.ON_HOST)
    engine.preload("fp8-cast")
    assert "embeddings_processor" not in engine.models.resident() and "transformer" in engine.models.resident()
    engine.generate(small_request(quantization="fp8-cast", residency="persistent"))
    counts = engine.models.build_counts
    assert counts["transformer"] == counts["text_encoder"] == 1
    assert counts["embeddings_processor"] == 2 and engine.models.kept_builds["embeddings_processor"] == 1
    assert engine.status()["prompt_cache"] == {"texts": 2, "entries": 16}
    line = status_html(engine.status(), "")
    assert "prompt cache 2 text(s)" in line and "host cache" in line  # the processor's state, waiting on the host
