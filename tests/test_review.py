"""Lip-sync review on the tiny bundle (CPU): provenance in the mp4 and sidecar, reproduce into a new identical file,
the side-by-side export, history after an app restart, and review.py's pure helpers."""

from __future__ import annotations

import hashlib
import json
import shutil
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from ltx_demo import ab_pair, media, results, review
from ltx_demo.types import GenerationRequest, InvalidRequest

from .conftest import ASSETS, api_client
from .test_engine import decode_mp4

PACKAGES = ("torch", "ltx-core", "ltx-pipelines", "transformers", "gradio")


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def made(engine, tmp_path_factory):
    """One result made from uploads that are deleted right after, like Gradio's temporary files."""
    uploads = tmp_path_factory.mktemp("uploads")
    image, audio = uploads / "portrait.png", uploads / "voice.wav"
    shutil.copyfile(ASSETS / "astronaut.png", image)
    shutil.copyfile(ASSETS / "speech_hello.wav", audio)
    request = GenerationRequest(
        str(image), str(audio), "A woman speaks to the camera.", width=64, height=64, num_frames=17, steps=2,
        seed=11, quantization="bf16", residency="persistent",
    )  # fmt: skip
    result = engine.generate(request)
    shutil.rmtree(uploads)
    return result


# -- media: the writer the engine uses --------------------------------------------------------------------------------
def test_write_mp4_keeps_the_audio_in_step_with_the_video(tmp_path):
    """The AAC encoder's 1024 priming samples are skipped by an edit list, so sample 0 plays with frame 0."""
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, (9, 64, 64, 3), dtype=np.uint8)
    t = np.arange(18_000) / 48_000
    chirp = 0.3 * np.sin(2 * np.pi * (200 * t + 2_000 * t**2))  # never repeats: only one lag lines it up
    audio = np.stack([chirp, chirp]).astype(np.float32)
    out = tmp_path / "clip.mp4"
    media.write_mp4(frames, audio, 48_000, 24, out, {"comment": '{"k": 1}'})
    decoded, rate = ab_pair.decode_audio(out)
    assert rate == 48_000 and decoded.shape[1] >= audio.shape[1]
    head = slice(2_000, 10_000)
    lags = {lag: float(np.corrcoef(decoded[0, head.start + lag : head.stop + lag], audio[0, head])[0, 1])
            for lag in (0, 1024)}  # fmt: skip
    assert lags[0] > 0.98 and lags[1024] < 0.2, lags
    assert review.read_mp4_record(out) == {"k": 1}


# -- provenance and reproduce ---------------------------------------------------------------------------------------
def test_the_mp4_and_sidecar_record_what_made_it(made, tiny_bundle, engine):
    record = review.read_mp4_record(made.output)
    sidecar = json.loads(Path(made.output).with_suffix(".json").read_text())
    assert record is not None and record == sidecar["provenance"]
    assert record["schema"] == review.PROVENANCE_SCHEMA
    asked = record["request"]
    for name, value in {"seed": 11, "steps": 2, "width": 64, "height": 64, "num_frames": 17, "frame_rate": 24,
                        "quantization": "bf16", "residency": "persistent",
                        "prompt": "A woman speaks to the camera."}.items():  # fmt: skip
        assert asked[name] == value, name
    assert set(asked["guidance"]) == {"cfg_scale", "stg_scale", "rescale_scale", "modality_scale"}
    assert record["inputs"]["image"]["sha256"] == sha256(ASSETS / "astronaut.png")
    assert record["inputs"]["audio"]["sha256"] == sha256(ASSETS / "speech_hello.wav")
    assert record["inputs"]["image"]["name"] == "portrait.png"
    for kind in ("image", "audio"):  # content-addressed copies next to the outputs
        stored = engine.output_dir / record["inputs"][kind]["stored"]
        assert stored.is_file() and stored.name.startswith(record["inputs"][kind]["sha256"])
    versions = record["versions"]
    assert set(PACKAGES) <= set(versions) and all(versions[name] for name in PACKAGES), versions
    assert record["bundle"]["fingerprint"] == tiny_bundle.fingerprint and tiny_bundle.fingerprint
    assert record["ran"]["device"] == "cpu" and record["ran"]["compute_dtype"] == "float32"


@pytest.fixture(scope="module")
def reproduced(made, engine):
    """'Reproduce' on `made`: the request rebuilt from its sidecar, run again; and the original as it was before."""
    original = Path(made.output)
    before = (sha256(original), original.stat().st_mtime_ns)
    entry = review.HistoryEntry.from_sidecar(original.with_suffix(".json"))
    request, notes = review.reproduce_request(entry)
    return entry, request, notes, engine.generate(request), before


def test_reproduce_writes_a_new_file_that_decodes_identically(reproduced, engine):
    entry, request, notes, again, (original_bytes, original_mtime) = reproduced
    original = entry.video
    assert notes == []  # the uploads are gone: the saved copies are used, verified by hash
    assert Path(request.image_path).parent == engine.output_dir / results.INPUTS_DIR
    assert request.output_path is None and request.seed == 11

    assert Path(again.output) != original and Path(again.output).is_file()
    assert sha256(original) == original_bytes and original.stat().st_mtime_ns == original_mtime  # untouched
    frames_a, audio_a, rate_a, fps_a = decode_mp4(str(original))
    frames_b, audio_b, rate_b, fps_b = decode_mp4(again.output)
    assert frames_a.shape == (17, 64, 64, 3) and (rate_a, fps_a) == (rate_b, fps_b)
    assert np.array_equal(frames_a, frames_b)
    assert audio_a.shape == audio_b.shape and np.array_equal(audio_a, audio_b)
    verdict = ab_pair.decoded_difference(original, again.output)
    assert verdict["frames_identical"] and verdict["audio_identical"] and verdict["frames"] == [17, 17]


def test_reproduce_refuses_when_the_inputs_are_gone(made, engine, tmp_path):
    folder = tmp_path / "moved"
    folder.mkdir()
    for suffix in (".mp4", ".json"):
        shutil.copyfile(Path(made.output).with_suffix(suffix), folder / f"result{suffix}")
    entry = review.HistoryEntry.from_sidecar(folder / "result.json")  # its inputs/ folder did not come along
    with pytest.raises(InvalidRequest, match=r"image of this result .* is gone or changed"):
        review.reproduce_request(entry)


def test_side_by_side_export_has_both_videos_and_a_copy_of_as_audio(reproduced, tmp_path):
    original, *_, again, _ = reproduced
    other = review.HistoryEntry.from_sidecar(Path(again.output).with_suffix(".json"))
    out = ab_pair.render_side_by_side(
        original.video, other.video, tmp_path / "pair.mp4", ("A", "B"), ab_pair.pair_record(original, other)
    )
    info = ab_pair.VideoInfo.probe(out)
    assert (info.num_frames, info.frame_rate) == (17, Fraction(24))
    assert (info.width, info.height) == (64 + ab_pair.PAIR_GAP + 64, 64 + ab_pair.PAIR_LABEL_HEIGHT)
    pair_frames, pair_audio, _, _ = decode_mp4(str(out))
    a_frames, a_audio, _, _ = decode_mp4(str(original.video))
    assert np.array_equal(pair_audio, a_audio)  # packets copied: no second AAC delay, no re-encode
    b_frames, *_ = decode_mp4(str(other.video))
    for x, frames in ((0, a_frames), (64 + ab_pair.PAIR_GAP, b_frames)):
        side = pair_frames[:, ab_pair.PAIR_LABEL_HEIGHT :, x : x + 64].astype(int)
        same = np.abs(side - frames).mean()  # noise re-encoded once (x264 + 4:2:0 is lossy on noise)
        shifted = np.abs(side[1:] - frames[:-1]).mean()
        assert same < 0.6 * shifted, (x, same, shifted)  # frame k of the pair is frame k of the source
    record = review.read_mp4_record(out)
    assert record["schema"] == ab_pair.PAIR_SCHEMA and record["a"]["inputs"] == original.provenance["inputs"]


# -- history, restarts and the review API ---------------------------------------------------------------------------
def test_history_survives_an_app_restart(tiny_bundle, tmp_path):
    from gradio_client import handle_file

    from .conftest import start_app
    from .test_ui import SMALL

    output_dir = tmp_path / "outputs"
    first = start_app(tiny_bundle.root, output_dir)
    try:
        _video, summary = api_client(first.url).predict(
            image=handle_file(str(ASSETS / "astronaut.png")),
            audio=handle_file(str(ASSETS / "speech_hello.wav")),
            prompt="A woman speaks to the camera.",
            api_name="/generate",
            **SMALL,
        )
    finally:
        first.demo.close()
    assert summary["provenance"]["inputs"]["audio"]["sha256"] == sha256(ASSETS / "speech_hello.wav")

    second = start_app(tiny_bundle.root, output_dir)  # a new app and engine over the same folder
    try:
        client = api_client(second.url)
        history = client.predict(api_name="/history")
        assert [h["video"] for h in history] == [summary["output"]]
        entry = history[0]
        assert entry["elapsed_seconds"] == summary["elapsed_seconds"] and entry["peak_vram_gib"] is None
        assert (entry["seed"], entry["num_frames"], entry["width"], entry["quantization"]) == (7, 9, 64, "bf16")
        assert f"{summary['elapsed_seconds']:.1f} s" in entry["caption"] and "no VRAM (CPU)" in entry["caption"]
        gallery, *_ = client.predict(api_name="/history_view")
        assert len(gallery) == 1 and "seed 7" in gallery[0]["caption"]

        # "Reuse settings" fills the controls from it (inputs from the saved copies).
        from ltx_demo.ui.form import NAMES

        values = dict(zip(NAMES, client.predict(summary["output"], api_name="/reuse_settings"), strict=True))
        assert values["prompt"] == "A woman speaks to the camera." and values["seed"] == 7
        assert values["num_frames"] == 9 and values["quantization"] == "bf16" and values["match_audio"] is False
        assert values["image"] is not None and values["audio"] is not None

        # "Reproduce" after the restart: a new file, decoded identically, and the history now has both.
        *_, report = client.predict(summary["output"], api_name="/reproduce")
        assert report["original"] == summary["output"] and report["output"] != summary["output"]
        assert report["frames_identical"] and report["audio_identical"], report
        assert [h["video"] for h in client.predict(api_name="/history")] == [report["output"], summary["output"]]
        view = client.predict(summary["output"], report["output"], api_name="/compare")
        assert 'data-role="a"' in view and 'data-frames="9"' in view
        assert {Path(summary["output"]), Path(report["output"])} <= second.engine.pins.pinned()  # never pruned
    finally:
        second.demo.close()


# -- pure helpers ---------------------------------------------------------------------------------------------------
def _fake_result(folder: Path, name: str, created_at: float | None, **request) -> Path:
    video = folder / f"{name}.mp4"
    media.write_mp4(np.zeros((9, 64, 64, 3), np.uint8), np.zeros((2, 18_000), np.float32), 48_000, 24, video)
    record = {"created_at": created_at} if created_at is not None else {}
    params = {"request": {"seed": 1, **request}, "result": {"elapsed_seconds": 1.5}, "provenance": record}
    video.with_suffix(".json").write_text(json.dumps(params))
    return video


def test_history_is_newest_first_and_skips_what_is_not_a_result(tmp_path):
    old = _fake_result(tmp_path, "old", 100.0)
    new = _fake_result(tmp_path, "new", 200.0)
    (tmp_path / "orphan.json").write_text(json.dumps({"request": {}}))  # no mp4
    (tmp_path / "broken.json").write_text("{")
    (tmp_path / "broken.mp4").write_bytes(b"")
    (tmp_path / ".staged.json").write_text(json.dumps({"request": {}}))
    (tmp_path / "notes.json").write_text(json.dumps(["not", "ours"]))
    (tmp_path / "notes.mp4").write_bytes(b"")
    entries = review.scan_history(tmp_path)
    assert [e.video for e in entries] == [new, old]
    assert review.find_entry(entries, str(old)) == entries[1] and review.find_entry(entries, "/elsewhere.mp4") is None
    assert review.thumbnail(entries[0]).is_file()
    assert review.scan_history(tmp_path / "missing") == ()


def test_compare_says_why_two_results_cannot_share_a_timeline(tmp_path):
    a = ab_pair.VideoInfo(tmp_path / "a.mp4", 64, 64, 25, Fraction(24), True)
    assert ab_pair.why_not_comparable(a, a) == "A and B are the same result: pick two different ones"
    frames = ab_pair.why_not_comparable(a, ab_pair.VideoInfo(tmp_path / "b.mp4", 64, 64, 17, Fraction(24), True))
    assert frames == "A has 25 frames and B has 17: compare results with the same frame count"
    rate = ab_pair.why_not_comparable(a, ab_pair.VideoInfo(tmp_path / "b.mp4", 64, 64, 25, Fraction(25), True))
    assert rate == "A runs at 24 fps and B at 25 fps: compare results made at the same frame rate"
    assert ab_pair.why_not_comparable(a, ab_pair.VideoInfo(tmp_path / "b.mp4", 128, 64, 25, Fraction(24), True)) is None


def test_request_fields_round_trip_and_unknown_ones_are_refused(small_request):
    import dataclasses

    request = small_request(seed=5)
    assert review.request_from_dict(dataclasses.asdict(request)) == request
    assert review.request_from_dict(dataclasses.asdict(request), quantization="fp8-cast").quantization == "fp8-cast"
    with pytest.raises(InvalidRequest, match="does not know: sampler"):
        review.request_from_dict(dataclasses.asdict(request) | {"sampler": "euler"})
    assert review.other_quantization("fp8-cast") == "bf16" and review.other_quantization("bf16") == "fp8-cast"


def test_find_take_matches_the_same_request_with_the_other_weights(tmp_path):
    inputs = {"image": {"sha256": "i"}, "audio": {"sha256": "a"}}

    def entry(name: str, quantization: str, seed: int = 1) -> review.HistoryEntry:
        request = {"seed": seed, "quantization": quantization, "image_path": f"/tmp/{name}.png", "output_path": None}
        return review.HistoryEntry(tmp_path / f"{name}.mp4", tmp_path / f"{name}.json", 0.0, request, {},
                                   {"inputs": inputs, "bundle": {"fingerprint": "f"}})  # fmt: skip

    fp8, other_seed, bf16 = entry("a", "fp8-cast"), entry("b", "bf16", seed=2), entry("c", "bf16")
    assert review.find_take((other_seed, bf16, fp8), fp8, quantization="bf16") == bf16
    assert review.find_take((other_seed, fp8), fp8, quantization="bf16") is None


def test_the_reference_take_of_an_fp8_scaled_mm_result_runs_the_stock_fp8_cast(tmp_path):
    """The fast default on Hopper is fp8-scaled-mm, which the reference flow refuses: its take runs fp8-cast, the
    policy A2VidPipelineTwoStage has for the same fp8 weights; other quantizations and the way back stay as made."""

    def entry(**request) -> review.HistoryEntry:
        return review.HistoryEntry(tmp_path / "a.mp4", tmp_path / "a.json", 0.0, request, {}, {})

    fast = entry(flow="fast", quantization="fp8-scaled-mm")
    assert review.flow_take_overrides(fast) == {"flow": "reference", "quantization": "fp8-cast"}
    assert review.flow_take_overrides(entry(flow="fast", quantization="bf16")) == {"flow": "reference"}
    assert review.flow_take_overrides(entry(flow="reference", quantization="fp8-cast")) == {"flow": "fast"}
    assert review.flow_take_overrides(entry(quantization="fp8-cast")) == {"flow": "reference"}  # older: no flow


def test_waveform_has_the_requested_bins(made):
    peaks = ab_pair.waveform(made.output, 17 / 24, bins=100)
    assert len(peaks) == 100 and all(lo <= hi for lo, hi in peaks) and max(hi for _, hi in peaks) > 0.01


def test_the_mp4_record_is_readable_by_plain_ffmpeg_tools(made):
    with av.open(made.output) as container:
        text = container.metadata[review.METADATA_TAG]
    assert json.loads(text)["request"]["seed"] == 11
