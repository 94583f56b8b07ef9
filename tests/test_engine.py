"""The engine on the tiny bundle (CPU): real loaders, real two-stage flow, real mp4s, decoded and checked."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from types import SimpleNamespace

import av
import numpy as np
import pytest
import soundfile

from ltx_demo import media, review
from ltx_demo.engine import Engine

from .conftest import ASSETS


def decode_mp4(path: str) -> tuple[np.ndarray, np.ndarray, int, float]:
    """(frames uint8 [n, h, w, 3], audio float32 [channels, samples], audio rate, video fps)."""
    with av.open(path) as container:
        video = container.streams.video[0]
        fps = float(video.average_rate)
        frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    with av.open(path) as container:
        rate = container.streams.audio[0].rate
        chunks = [f.to_ndarray() for f in container.decode(audio=0)]
    audio = np.concatenate(chunks, axis=1) if chunks[0].ndim == 2 and chunks[0].shape[0] <= 2 else None
    return frames, audio, rate, fps


def best_correlation(a: np.ndarray, b: np.ndarray, max_lag: int = 4096) -> float:
    """Pearson correlation of two mono signals at the best small lag (AAC adds a priming delay)."""
    best = -1.0
    for lag in range(0, max_lag, 16):
        x, y = a[lag:], b[: len(a) - lag]
        n = min(len(x), len(y))
        if n < 1000:
            break
        best = max(best, float(np.corrcoef(x[:n], y[:n])[0, 1]))
    return best


@pytest.mark.parametrize("quantization", ["bf16", "fp8-cast"])
def test_generate_writes_a_playable_mp4_with_the_input_audio(engine, small_request, quantization):
    request = small_request(quantization=quantization, width=128, height=64, num_frames=25, frame_rate=25)
    result = engine.generate(request)

    frames, audio, rate, fps = decode_mp4(result.output)
    assert frames.shape == (25, 64, 128, 3)
    assert fps == 25
    assert audio.shape[0] == 2
    duration = audio.shape[1] / rate
    assert abs(duration - 25 / 25) <= 1 / 25, duration

    expected, _note = media.prepare_audio(str(ASSETS / "speech_hello.wav"), 0.0, 25 / 25)
    assert rate == media.OUTPUT_SAMPLE_RATE
    assert best_correlation(audio.mean(axis=0), expected.mean(axis=0)) > 0.99

    summary = result.summary()
    assert summary["quantization"] == quantization and summary["compute_dtype"] == "float32"
    assert summary["synthetic"] is True and summary["device"] == "cpu" and summary["peak_vram_gib"] is None
    for phase in ("prompt_encode", "audio_encode", "stage_1", "upsample", "stage_2", "decode", "encode_mp4"):
        assert summary["phases"][phase]["seconds"] > 0, phase
    assert any(name.startswith("load:transformer") for name in summary["phases"]) or summary["resident_before"]
    assert (result.output.removesuffix(".mp4") + ".json") and frames.std() > 10


def test_fp8_cast_downcasts_exactly_the_block_linears(tiny_bundle):
    import torch
    from ltx_core.loader.sd_ops import SDKeyValueOperation

    from ltx_demo.quantization import fp8_weight_names
    from ltx_demo.residency import ModelConfig, ModelManager
    from ltx_demo.types import Quantization, Residency

    residency = ModelManager(tiny_bundle, torch.device("cpu"), torch.float32)
    residency.configure(ModelConfig(Quantization.FP8_CAST, Residency.PERSISTENT, 1.0))
    with residency.use("transformer") as transformer:
        fp8 = fp8_weight_names(transformer)
        all_names = {n for n, _ in transformer.named_parameters()}
        gate = {n: p.dtype for n, p in transformer.named_parameters() if "to_gate_logits" in n}

    import ltx_core.loader  # noqa: F401  (before ltx_core.quantization: circular import)
    from ltx_core.quantization import TRANSFORMER_LINEAR_DOWNCAST_MAP

    matchers = [op.key_matcher for op in TRANSFORMER_LINEAR_DOWNCAST_MAP.mapping if isinstance(op, SDKeyValueOperation)]
    expected = {
        n
        for n in all_names
        if any(n.removeprefix("velocity_model.").startswith(m.prefix) and n.endswith(m.suffix) for m in matchers)
    }
    assert expected and fp8 == expected
    assert gate and all(dtype == torch.float32 for dtype in gate.values())


def frames_of(result) -> np.ndarray:
    return decode_mp4(result.output)[0].astype(np.float32)


def test_same_seed_is_deterministic_and_other_seeds_differ(engine, small_request):
    first = engine.generate(small_request(seed=11))
    second = engine.generate(small_request(seed=11))
    other = engine.generate(small_request(seed=12))
    f1, a1, _, _ = decode_mp4(first.output)
    f2, a2, _, _ = decode_mp4(second.output)
    assert first.output != second.output
    assert np.array_equal(f1, f2) and np.array_equal(a1, a2)
    assert np.abs(f1.astype(np.float32) - frames_of(other)).mean() > 1.0
    assert f1.astype(np.float32).std(axis=(1, 2, 3)).min() > 5.0  # not near-constant frames


def test_same_seed_gives_the_same_mp4_bytes_while_it_encodes_during_the_decode(engine, small_request, monkeypatch):
    """The mp4 is encoded as the decoder's chunks come (3 here), and still the same seed makes the same file, byte
    for byte: the provenance's clock held still, since its created_at is the one field two runs differ in."""
    clock = SimpleNamespace(time=lambda: 1_700_000_000.0, strftime=time.strftime, localtime=time.localtime)
    monkeypatch.setattr(review, "time", clock)
    request = small_request(num_frames=41, decode_tile_frames=32, seed=21)
    first, second = (Path(engine.generate(request).output) for _ in range(2))
    assert first != second
    assert hashlib.sha256(first.read_bytes()).hexdigest() == hashlib.sha256(second.read_bytes()).hexdigest()


def test_the_decoder_feeds_the_mp4_chunk_by_chunk_while_it_runs(engine, small_request, monkeypatch):
    put, puts = media.Mp4Stream.put, []

    def during(stream, frames):
        puts.append((engine._current.current_phase(), len(frames)))
        put(stream, frames)

    monkeypatch.setattr(media.Mp4Stream, "put", during)
    result = engine.generate(small_request(num_frames=41, decode_tile_frames=32))
    assert len(puts) >= 2 and {phase for phase, _ in puts} == {"decode"}, puts  # a put per chunk with frames
    assert sum(n for _, n in puts) == 41 and decode_mp4(result.output)[0].shape[0] == 41


def steps_of(progress, phase: str) -> list[tuple[int, int, str]]:
    return [(p.step, p.total_steps, p.unit) for p in progress if p.phase == phase and p.step is not None]


def test_progress_counts_the_decoders_chunks_and_the_frames_encoded(engine, small_request):
    # 41 frames are 6 latent frames; tiles of 32 frames (4 latent, ltx-core's overlap of 3) give 3 temporal chunks.
    progress = []
    result = engine.generate(small_request(num_frames=41, decode_tile_frames=32), on_progress=progress.append)
    decode = steps_of(progress, "decode")
    assert decode == [(k, 3, "chunk") for k in range(4)], decode  # the count ltx-core's decoder yielded, from 0
    mp4 = steps_of(progress, "encode_mp4")  # the encode's tail: from the frames encoded while the decoder ran
    assert mp4[0][1:] == (41, "frame") and mp4[-1] == (41, 41, "frame"), mp4
    done = [step for step, *_ in mp4]
    assert done == sorted(set(done)) and len(done) <= media.MP4_PROGRESS_STEPS + 2, done  # forward, bounded
    assert all(unit == "step" for *_, unit in steps_of(progress, "stage_1") + steps_of(progress, "stage_2"))
    phases = [p.phase for p in progress if not p.phase.startswith("load:")]
    assert phases.index("decode") < phases.index("encode_mp4") < phases.index("done")
    assert decode_mp4(result.output)[0].shape[0] == 41


def test_conditioning_changes_the_frames(engine, small_request, tmp_path):
    base = frames_of(engine.generate(small_request()))
    other_audio = frames_of(engine.generate(small_request(audio_path=str(ASSETS / "speech_weather.wav"))))
    other_image = frames_of(engine.generate(small_request(image_path=str(ASSETS / "cameraman.png"))))
    no_lora = frames_of(engine.generate(small_request(distilled_lora_strength=0.0)))
    for name, frames in (("audio", other_audio), ("image", other_image), ("lora strength 0", no_lora)):
        assert np.abs(base - frames).mean() > 0.5, f"changing the {name} did not change the video"


def test_builds_go_through_the_real_loaders_and_nothing_stays_on_meta(tiny_bundle, small_request, tmp_path):
    engine = Engine(tiny_bundle, tmp_path, device="cpu")
    engine.generate(small_request(residency="persistent"))
    assert engine.models.build_counts["transformer"] == 1
    for name in engine.models.resident():
        model = engine.models.held(name)
        assert all(t.device.type == "cpu" for t in [*model.parameters(), *model.buffers()]), name
    engine.generate(small_request(residency="persistent", seed=3))
    assert engine.models.build_counts["transformer"] == 1  # persistent: reused, not rebuilt
    engine.generate(small_request(residency="cold-start"))
    assert engine.models.resident() == ()


@pytest.mark.parametrize(
    ("make_audio", "expected_note"),
    [
        (lambda p: soundfile.write(p, 0.3 * np.sin(np.linspace(0, 900, 48000)), 48000), "upmixed mono to stereo"),
        (
            lambda p: soundfile.write(p, 0.3 * np.random.default_rng(0).standard_normal((8000, 2)), 8000),
            "resampled 8000 Hz to 48000 Hz",
        ),
        (
            lambda p: soundfile.write(p, 0.3 * np.random.default_rng(1).standard_normal((96000, 2)), 96000),
            "resampled 96000 Hz to 48000 Hz",
        ),
        (
            lambda p: soundfile.write(p, 0.3 * np.random.default_rng(2).standard_normal((2400, 2)), 48000),
            "padded 0.33 s of silence",
        ),
    ],
    ids=["mono", "8kHz", "96kHz", "too-short"],
)
def test_awkward_audio_still_makes_a_video_and_says_what_was_done(
    engine, small_request, tmp_path, make_audio, expected_note
):
    path = tmp_path / "clip.wav"
    make_audio(path)
    result = engine.generate(small_request(audio_path=str(path)))
    assert expected_note in result.audio_note
    frames, audio, _rate, _ = decode_mp4(result.output)
    assert frames.shape[0] == 9 and audio.shape[0] == 2


def test_bad_inputs_are_refused_before_any_model_is_built(tiny_bundle, small_request, tmp_path):
    from ltx_demo.types import InvalidRequest

    engine = Engine(tiny_bundle, tmp_path, device="cpu")
    bad = [
        (dict(width=100), "multiple of 64"),
        (dict(num_frames=10), r"8k\+1"),
        (dict(prompt="  "), "prompt is empty"),
        (dict(image_path=str(ASSETS / "speech_hello.wav")), "not a readable image"),
        (dict(audio_path=str(ASSETS / "astronaut.png")), "no audio stream"),
        (dict(quantization="int4"), "unknown quantization"),
    ]
    for overrides, message in bad:
        with pytest.raises(InvalidRequest, match=message):
            engine.generate(small_request(**overrides))
    assert sum(engine.models.build_counts.values()) == 0
