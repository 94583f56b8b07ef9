"""Models kept as built (residency/kept.py): host-cached holds the nf4 text encoder's quantized state instead of the
bf16 Gemma; cold-start writes the fp8 transformer, the fp8 processor and the nf4 text encoder to files once and
builds from them on later requests. Either way the rebuilt model is identical to a fresh build.

The nf4 tests run bitsandbytes' real nf4 quantization on the CPU (its CPU backend). The engine still refuses nf4 on
CPU (issue 4 asks it to); the residency layer underneath does not care which device it builds for, so those tests
drive it directly on the tiny bundle's Gemma. The fp8 tests run whole requests through the engine, encoding every text
(prompt_cache_entries=0): a prompt from the prompt cache builds no embeddings processor, whose kept state is tested."""

from __future__ import annotations

import importlib.util
import logging
import os

import pytest
import torch

from ltx_demo.engine import Engine
from ltx_demo.residency import ModelConfig, ModelManager
from ltx_demo.residency import kept as built_states
from ltx_demo.residency.builds import module_bytes
from ltx_demo.types import Quantization, Residency, TextEncoderQuantization

from .test_residency import assert_same_output

PROMPT = "a woman speaks calmly to the camera"


def encode(residency: ModelManager) -> list[torch.Tensor]:
    """One request's prompt encoding: the text encoder's hidden states and mask."""
    with residency.request(), residency.use("text_encoder") as text_encoder, torch.inference_mode():
        hidden_states, mask = text_encoder.encode(PROMPT)
        return [*hidden_states, mask]


def nf4_residency(bundle, mode: Residency, cache_dir=None) -> ModelManager:
    pytest.importorskip("bitsandbytes")
    residency = ModelManager(bundle, torch.device("cpu"), torch.float32, cold_start_cache_dir=cache_dir)
    residency.configure(
        ModelConfig(Quantization.BF16, mode, 1.0, text_encoder_quantization=TextEncoderQuantization.NF4)
    )
    return residency


def assert_identical(first: list[torch.Tensor], second: list[torch.Tensor]) -> None:
    assert len(first) == len(second)
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)


def kept_folders(cache_dir) -> dict[str, int]:
    """Complete kept states per model name (an incomplete or temporary folder is not one)."""
    folders = [f for f in cache_dir.iterdir() if built_states.is_kept(f)] if cache_dir.exists() else []
    return {f.name.rsplit("-", 1)[0]: len(list(f.glob("part-*.safetensors"))) for f in folders}


def test_host_cached_keeps_the_quantized_text_encoder_not_the_bf16_gemma(tiny_bundle):
    residency = nf4_residency(tiny_bundle, Residency.HOST_CACHED)
    first = encode(residency)
    cached = residency.host_cache_bytes()
    second, third = encode(residency), encode(residency)
    assert_identical(first, second)
    assert_identical(first, third)
    assert residency.kept_builds["text_encoder"] == 2  # requests 2 and 3 started from the kept state
    assert residency.build_counts["text_encoder"] == 3 and residency.disk_reads["text_encoder"] == 1
    loads = residency.host_cache_loads()
    assert loads["text_encoder (as built)"] == 1 and "GEMMA_LLM_KEY_OPS" not in loads  # no bf16 Gemma in the cache
    assert residency.resident() == ()
    # What the cache holds for it is what the device holds (the quantized model, plus bitsandbytes' quant-state
    # tensors, which are not parameters: ~3% at Gemma-3-12B's size, more on this tiny model), less than the files.
    with residency.use("text_encoder") as text_encoder:
        on_device = module_bytes(text_encoder)
        del text_encoder
    bf16_files = sum(os.path.getsize(p) for p in tiny_bundle.gemma_root.rglob("*.safetensors"))
    assert cached == residency.host_cache_bytes()
    assert on_device <= residency.host_kept_as_built()["text_encoder"] < bf16_files
    # Switching away drops it with the rest of the host cache.
    residency.configure(ModelConfig(Quantization.BF16, Residency.COLD_START, 1.0))
    assert residency.host_cache_bytes() == 0


def test_cold_start_keeps_the_nf4_text_encoder_once_and_builds_from_it_after(tiny_bundle, tmp_path, caplog):
    cache_dir = tmp_path / "kept"
    residency = nf4_residency(tiny_bundle, Residency.COLD_START, cache_dir)
    first = encode(residency)
    assert kept_folders(cache_dir) == {"text_encoder": 1} and residency.kept_builds["text_encoder"] == 0
    assert not [f for f in cache_dir.iterdir() if f.name.startswith(".")]  # no temporary folder left
    (folder,) = cache_dir.iterdir()
    written = (folder / "part-0000.safetensors").stat().st_mtime_ns

    assert_identical(first, encode(residency))
    assert residency.kept_builds["text_encoder"] == 1 and residency.resident() == ()
    assert (folder / "part-0000.safetensors").stat().st_mtime_ns == written  # read, not written again

    # A damaged state is reported, built again from the bundle, kept again; the request gets the same encoder.
    (folder / "part-0000.safetensors").write_bytes(b"not a safetensors file")
    with caplog.at_level(logging.WARNING, logger="ltx_demo.residency"):
        assert_identical(first, encode(residency))
    assert "unreadable kept text_encoder" in caplog.text
    assert_identical(first, encode(residency))
    assert residency.kept_builds["text_encoder"] == 2 and kept_folders(cache_dir) == {"text_encoder": 1}


def test_cold_start_keeps_the_fp8_transformer_and_processor_and_gives_the_same_video(
    tiny_bundle,
    small_request,
    tmp_path,
    clips,
):
    cache_dir = tmp_path / "kept"
    engine = Engine(tiny_bundle, tmp_path / "out", device="cpu", prompt_cache_entries=0, cold_start_cache_dir=cache_dir)
    loading = []
    engine.models.on_loading(loading.append)  # what the status line's "loading" says
    request = small_request(quantization="fp8-cast", residency="cold-start")
    first = engine.generate(request)
    assert kept_folders(cache_dir) == {"transformer": 1, "embeddings_processor": 1}  # the bf16 Gemma: not kept
    assert "transformer (keeping it as built for later starts)" in loading
    # The status (API and UI) says what is kept on disk for this config, and its size.
    kept_now = engine.status()["residency"]["kept_as_built"]
    assert set(kept_now) == {"transformer", "embeddings_processor"} and all(b > 0 for b in kept_now.values())
    if importlib.util.find_spec("gradio"):  # the UI's status line (the device machine has no gradio)
        from ltx_demo.ui.readouts import status_html

        assert "kept on disk for cold-start: embeddings_processor, transformer" in status_html(engine.status(), "")
    second = engine.generate(request)
    assert_same_output(first, second, clips[0], clips[1])
    kept = engine.models.kept_builds
    assert kept["transformer"] == 1 and kept["embeddings_processor"] == 1 and kept["text_encoder"] == 0
    assert engine.models.resident() == ()
    # bf16 builds read no more than they hold: nothing is kept for them.
    engine.generate(small_request(quantization="bf16", residency="cold-start"))
    assert kept_folders(cache_dir) == {"transformer": 1, "embeddings_processor": 1}
    before = sorted(f.name for f in cache_dir.iterdir())
    engine.generate(small_request(quantization="fp8-cast", residency="cold-start", distilled_lora_strength=0.5))
    assert sorted(f.name for f in cache_dir.iterdir()) == before  # the LoRA strength is not part of the recipe
    # Other modes never read or write the folder.
    kept = dict(engine.models.kept_builds)
    engine.generate(small_request(quantization="fp8-cast", residency="host-cached"))
    assert engine.models.kept_builds == kept and sorted(f.name for f in cache_dir.iterdir()) == before


def test_host_cached_keeps_the_fp8_models_as_built_and_gives_the_same_video(
    tiny_bundle,
    small_request,
    tmp_path,
    clips,
):
    engine = Engine(tiny_bundle, tmp_path / "out", device="cpu", prompt_cache_entries=0)
    request = small_request(quantization="fp8-cast", residency="host-cached")
    first, second = engine.generate(request), engine.generate(request)
    assert_same_output(first, second, clips[0], clips[1])
    # CPU: the text encoder is bf16, not kept as built
    assert engine.models.kept_builds == {"embeddings_processor": 1, "transformer": 1}
    loads = engine.models.host_cache_loads()
    assert loads["embeddings_processor (as built)"] == 1 and "EMBEDDINGS_PROCESSOR_KEY_OPS" not in loads
    assert loads["transformer (as built)"] == 1 and not any(key.startswith("sd_ops_chain") for key in loads)
    assert engine.models.disk_reads["embeddings_processor"] == 1 and engine.models.resident() == ()


def test_persistent_keeps_its_first_builds_and_a_restarted_server_reads_them(tiny_bundle, small_request, tmp_path,
                                                                             clips):  # fmt: skip
    """The first request after a (re)start: persistent writes the models kept as built on its first build, and a new
    engine on the same folder (a restarted server) builds them from those files: the same frames and audio."""
    cache_dir = tmp_path / "kept"
    request = small_request(quantization="fp8-cast", residency="persistent")
    first_engine = Engine(tiny_bundle, tmp_path / "out", device="cpu", cold_start_cache_dir=cache_dir)
    first = first_engine.generate(request)
    assert kept_folders(cache_dir) == {"transformer": 1, "embeddings_processor": 1}
    assert first_engine.models.kept_builds["transformer"] == 0  # built from the bundle, then kept
    first_engine.models.release_all()
    restarted = Engine(tiny_bundle, tmp_path / "out", device="cpu", cold_start_cache_dir=cache_dir)
    again = restarted.generate(request)
    assert restarted.models.kept_builds == {"transformer": 1, "embeddings_processor": 1}
    assert_same_output(first, again, clips[0], clips[1])
    assert set(restarted.status()["residency"]["kept_as_built"]) == {"transformer", "embeddings_processor"}
    restarted.generate(request)  # persistent: resident now, nothing is built again
    assert restarted.models.kept_builds == {"transformer": 1, "embeddings_processor": 1}


def test_a_new_recipe_replaces_the_kept_states_instead_of_adding_to_them(tiny_bundle, small_request, tmp_path,
                                                                         monkeypatch):  # fmt: skip
    from ltx_demo.residency import modes

    cache_dir = tmp_path / "kept"
    engine = Engine(tiny_bundle, tmp_path / "out", device="cpu", prompt_cache_entries=0, cold_start_cache_dir=cache_dir)
    request = small_request(quantization="fp8-cast", residency="cold-start")
    engine.generate(request)
    before = sorted(f.name for f in cache_dir.iterdir())
    monkeypatch.setattr(modes, "library_versions", lambda: {"torch": "a later one"})  # an upgrade
    engine.generate(request)
    after = sorted(f.name for f in cache_dir.iterdir())
    assert len(after) == 2 and not set(after) & set(before)  # one state per model: the old ones are gone
    assert engine.models.kept_builds["transformer"] == 0  # the upgrade's states were built, not read


def test_without_a_cache_folder_cold_start_builds_from_the_bundle_every_time(tiny_bundle):
    residency = nf4_residency(tiny_bundle, Residency.COLD_START, cache_dir=None)
    assert_identical(encode(residency), encode(residency))
    assert residency.kept_builds["text_encoder"] == 0


def test_an_unwritable_cache_folder_never_fails_the_request(tiny_bundle, tmp_path, caplog):
    blocked = tmp_path / "a-file"
    blocked.write_text("no folder can be made under a file")
    residency = nf4_residency(tiny_bundle, Residency.COLD_START, blocked / "kept")
    with caplog.at_level(logging.WARNING, logger="ltx_demo.residency"):
        assert_identical(encode(residency), encode(residency))
    assert "could not keep text_encoder" in caplog.text
    assert residency.cold_start_cache_dir is None  # tried once, not on every request


def test_too_little_free_disk_keeps_nothing(tiny_bundle, tmp_path, caplog, monkeypatch):
    from ltx_demo.residency import kept

    monkeypatch.setattr(kept, "KEEP_FREE_BYTES", 1 << 62)  # more than any disk has free
    residency = nf4_residency(tiny_bundle, Residency.COLD_START, tmp_path / "kept")
    with caplog.at_level(logging.WARNING, logger="ltx_demo.residency"):
        encode(residency)
    assert "not keeping text_encoder" in caplog.text and kept_folders(tmp_path / "kept") == {}


def test_the_folder_name_follows_the_source_files_and_the_recipe(tmp_path):
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"x" * 10)
    before = built_states.state_folder(tmp_path, "transformer", [str(weights)], {"quantization": "fp8-cast"})
    assert built_states.state_folder(tmp_path, "transformer", [str(weights)], {"quantization": "fp8-cast"}) == before
    assert built_states.state_folder(tmp_path, "transformer", [str(weights)], {"quantization": "x"}) != before
    weights.write_bytes(b"y" * 11)  # a different checkpoint at the same path
    assert built_states.state_folder(tmp_path, "transformer", [str(weights)], {"quantization": "fp8-cast"}) != before


def test_states_are_written_in_shards_and_read_back_whole(tmp_path, monkeypatch):
    monkeypatch.setattr(built_states, "SHARD_BYTES", 1024)
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Linear(64, 8))
    built_states.save_model_state(model, tmp_path / "m")
    assert len(list((tmp_path / "m").glob("part-*.safetensors"))) >= 2
    state = built_states.load_state(tmp_path / "m", torch.device("cpu"))
    assert state.keys() == model.state_dict().keys()
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    (tmp_path / "m" / built_states.COMPLETE).unlink()
    assert not built_states.is_kept(tmp_path / "m")
