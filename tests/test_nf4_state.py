"""The nf4 text encoder kept as its quantized state (nf4_state.py): host-cached holds it instead of the bf16 Gemma,
cold-start writes it to a file once and reads it on later requests; either way the rebuilt encoder is identical.

These run bitsandbytes' real nf4 quantization on the CPU (its CPU backend). The engine still refuses nf4 on CPU
(issue 4 asks it to; bitsandbytes' CPU path is slow and repacks weights); the residency layer underneath does not
care which device it builds for, so these tests drive it directly on the tiny bundle's Gemma."""

from __future__ import annotations

import logging
import os

import pytest
import torch

from ltx_demo import nf4_state
from ltx_demo.residency import ModelConfig, ModelResidency, module_bytes
from ltx_demo.settings import Quantization, Residency, TextEncoderQuantization

pytest.importorskip("bitsandbytes")
PROMPT = "a woman speaks calmly to the camera"


def encode(residency: ModelResidency) -> list[torch.Tensor]:
    """One request's prompt encoding: the text encoder's hidden states and mask."""
    with residency.request(), residency.use("text_encoder") as text_encoder, torch.inference_mode():
        hidden_states, mask = text_encoder.encode(PROMPT)
        return [*hidden_states, mask]


def nf4_residency(bundle, mode: Residency, cache_dir=None) -> ModelResidency:
    residency = ModelResidency(bundle, torch.device("cpu"), torch.float32, nf4_cache_dir=cache_dir)
    residency.configure(
        ModelConfig(Quantization.BF16, mode, 1.0, text_encoder_quantization=TextEncoderQuantization.NF4)
    )
    return residency


def assert_identical(first: list[torch.Tensor], second: list[torch.Tensor]) -> None:
    assert len(first) == len(second)
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)


@pytest.fixture
def rebuilds(monkeypatch):
    """How many text encoders were built from a kept quantized state (a spy: the real function runs)."""
    calls = []
    real = nf4_state.build_from_quantized_state

    def spy(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(nf4_state, "build_from_quantized_state", spy)
    return calls


def test_host_cached_keeps_the_quantized_text_encoder_not_the_bf16_gemma(tiny_bundle, rebuilds):
    residency = nf4_residency(tiny_bundle, Residency.HOST_CACHED)
    first = encode(residency)
    cached = residency.host_cache_bytes()
    second, third = encode(residency), encode(residency)
    assert_identical(first, second)
    assert_identical(first, third)
    assert len(rebuilds) == 2  # requests 2 and 3 started from the kept state
    assert residency.build_counts["text_encoder"] == 3 and residency.disk_reads["text_encoder"] == 1
    loads = residency.host_cache_loads()
    assert loads["text_encoder (nf4)"] == 1 and "GEMMA_LLM_KEY_OPS" not in loads  # no bf16 Gemma in the cache
    assert residency.resident() == ()
    # What the cache holds for it is what the device holds (the quantized model, plus bitsandbytes' quant-state
    # tensors, which are not parameters: ~3% at Gemma-3-12B's size, more on this tiny model), less than the files.
    with residency.use("text_encoder") as text_encoder:
        on_device = module_bytes(text_encoder)
        del text_encoder
    bf16_files = sum(os.path.getsize(p) for p in tiny_bundle.gemma_root.rglob("*.safetensors"))
    assert cached == residency.host_cache_bytes()
    assert on_device <= cached < bf16_files
    # Switching away drops it with the rest of the host cache.
    residency.configure(ModelConfig(Quantization.BF16, Residency.COLD_START, 1.0))
    assert residency.host_cache_bytes() == 0


def test_cold_start_writes_the_nf4_file_once_and_reads_it_after(tiny_bundle, tmp_path, rebuilds, caplog):
    cache_dir = tmp_path / "nf4"
    residency = nf4_residency(tiny_bundle, Residency.COLD_START, cache_dir)
    first = encode(residency)
    files = list(cache_dir.glob("gemma-nf4-*.safetensors"))
    assert len(files) == 1 and rebuilds == [] and not list(cache_dir.glob(".*partial"))
    written = files[0].stat().st_mtime_ns

    assert_identical(first, encode(residency))
    assert len(rebuilds) == 1 and files[0].stat().st_mtime_ns == written  # read, not written again
    assert residency.resident() == ()

    # A damaged file is reported, replaced, and the request still gets the same encoder.
    files[0].write_bytes(b"not a safetensors file")
    with caplog.at_level(logging.WARNING, logger="ltx_demo.residency"):
        assert_identical(first, encode(residency))
    assert "unreadable nf4 cache" in caplog.text
    assert files[0].stat().st_size > 100  # quantized again and written again
    assert_identical(first, encode(residency))
    assert len(rebuilds) == 2  # the damaged file was never built from; the rewritten one was


def test_cold_start_without_a_cache_folder_quantizes_every_time(tiny_bundle, rebuilds):
    residency = nf4_residency(tiny_bundle, Residency.COLD_START, cache_dir=None)
    assert_identical(encode(residency), encode(residency))
    assert rebuilds == []


def test_an_unwritable_cache_folder_never_fails_the_request(tiny_bundle, tmp_path, caplog):
    blocked = tmp_path / "a-file"
    blocked.write_text("the cache folder cannot be made under a file")
    residency = nf4_residency(tiny_bundle, Residency.COLD_START, blocked / "nf4")
    with caplog.at_level(logging.WARNING, logger="ltx_demo.residency"):
        assert_identical(encode(residency), encode(residency))
    assert "could not keep the nf4 text encoder" in caplog.text
    assert residency.nf4_cache_dir is None  # tried once, not on every request


def test_the_cache_file_name_follows_the_gemma_files(tmp_path):
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"x" * 10)
    before = nf4_state.cache_file(tmp_path, [str(weights)])
    assert nf4_state.cache_file(tmp_path, [str(weights)]) == before
    weights.write_bytes(b"y" * 11)  # a different Gemma at the same path
    assert nf4_state.cache_file(tmp_path, [str(weights)]) != before
