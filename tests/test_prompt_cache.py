"""The prompt cache (prompt_cache.py) on the tiny bundle (CPU): a text asked again comes from the cache, the video
is the same file bit for bit as with every text encoded, cold-start then builds neither Gemma nor the embeddings
processor, and the reference flow encodes every text as ltx-pipelines does."""

from __future__ import annotations

import re

import pytest
import torch

from ltx_demo.bench import output_hash
from ltx_demo.engine import Engine
from ltx_demo.prompt_cache import PromptCache, TextContexts
from ltx_demo.types import Flow
from ltx_demo.ui.readouts import result_html


def encoded(result) -> tuple[int, int]:
    """(texts encoded, texts from the cache) of one result."""
    return result.counters.get("prompt_texts_encoded", 0), result.counters.get("prompt_texts_from_cache", 0)


def test_the_cache_keeps_the_most_recent_texts_as_copies():
    cache = PromptCache(entries=2)
    contexts = {text: TextContexts(torch.full((1, 3, 4), float(i)), None) for i, text in enumerate("abc")}
    for text in "ab":
        cache.put(text, "encoder", contexts[text])
    assert cache.get("a", "encoder", torch.device("cpu")) is not None  # "a" is now the most recent
    cache.put("c", "encoder", contexts["c"])
    assert cache.get("b", "encoder", torch.device("cpu")) is None and len(cache) == 2
    assert cache.get("a", "another encoder", torch.device("cpu")) is None  # keyed on what encoded it too
    kept = cache.get("c", "encoder", torch.device("cpu"))
    kept.video.add_(1)  # the flow gets a copy: writing into it leaves the kept contexts alone
    contexts["c"].video.add_(1)  # and the cache holds its own copy of what it was given
    assert torch.equal(cache.get("c", "encoder", torch.device("cpu")).video, torch.full((1, 3, 4), 2.0))
    nothing = PromptCache(entries=0)
    nothing.put("a", "encoder", contexts["a"])
    assert len(nothing) == 0
    with pytest.raises(ValueError, match="0 or more texts"):
        PromptCache(entries=-1)


def test_a_repeated_prompt_comes_from_the_cache_and_renders_the_same_file(tiny_bundle, small_request, tmp_path):
    """Persistent: the first request encodes both texts, the same prompt again encodes none, a new prompt encodes
    only itself (the default negative prompt is kept); each file is the one an engine without the cache writes."""
    engine = Engine(tiny_bundle, tmp_path / "cached", device="cpu")
    uncached = Engine(tiny_bundle, tmp_path / "uncached", device="cpu", prompt_cache_entries=0)
    first = engine.generate(small_request())
    again = engine.generate(small_request())
    other = engine.generate(small_request(prompt="A man sings to the camera."))
    assert [encoded(r) for r in (first, again, other)] == [(2, 0), (0, 2), (1, 1)]
    assert [r.prompt_cached for r in (first, again, other)] == [None, "all", "1 of 2"]
    said = [re.search(r'data-fact="Prompt">([^<]*)<', result_html(r)).group(1) for r in (first, again, other)]
    assert said == [
        "encoded (Gemma + embeddings processor)",
        "from the prompt cache (Gemma did not run)",
        "1 of 2 texts from the prompt cache, the rest encoded",
    ]
    assert output_hash(first.output) == output_hash(again.output)
    assert output_hash(again.output) == output_hash(uncached.generate(small_request()).output)
    plain = uncached.generate(small_request(prompt="A man sings to the camera."))
    assert encoded(plain) == (2, 0) and output_hash(plain.output) == output_hash(other.output)


def test_cold_start_builds_no_text_models_for_a_cached_prompt(tiny_bundle, small_request, tmp_path):
    engine = Engine(tiny_bundle, tmp_path, device="cpu")
    results = [engine.generate(small_request(residency="cold-start", seed=seed)) for seed in (1, 2)]
    counts = engine.models.build_counts
    assert counts["text_encoder"] == counts["embeddings_processor"] == 1 and counts["transformer"] == 2
    assert [encoded(r) for r in results] == [(2, 0), (0, 2)]
    assert "load:text_encoder" in {p.name for p in results[0].phases}
    assert "load:text_encoder" not in {p.name for p in results[1].phases}
    assert engine.models.resident() == ()


def test_the_reference_flow_encodes_every_text(tiny_bundle, small_request, tmp_path):
    engine = Engine(tiny_bundle, tmp_path, device="cpu")
    results = [engine.generate(small_request(flow=Flow.REFERENCE)) for _ in range(2)]
    assert [encoded(r) for r in results] == [(2, 0), (2, 0)] and len(engine.prompt_cache) == 0
