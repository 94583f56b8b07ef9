"""Long recordings (issue 16) on the tiny bundle, CPU: a 2.00 s voice at 24 fps as 3 windows of 17 frames (64x64,
2 steps), each continuing the one before in latent space; what was muxed, the joins, reproduction, residency."""

from __future__ import annotations

import hashlib
import itertools
from pathlib import Path

import numpy as np
import pytest
import soundfile
from scipy.signal import resample_poly

from ltx_demo import engine as engine_module
from ltx_demo import media, review
from ltx_demo.engine import Engine
from ltx_demo.requests import check_request
from ltx_demo.types import GenerationCancelled, InvalidRequest
from ltx_demo.windows import latent_frames, pixel_frames, plan_windows

from .conftest import ASSETS
from .test_engine import decode_mp4

SECONDS, FPS = 2.0, 24
LONG = dict(width=64, height=64, window_frames=17, window_overlap_frames=8, steps=2, seed=7, quantization="bf16")


@pytest.fixture(scope="module")
def voice(tmp_path_factory) -> Path:
    """2.00 s of the speech asset at 48 kHz stereo (what the mp4 carries, so nothing is resampled or mixed)."""
    samples, rate = soundfile.read(str(ASSETS / "speech_hello.wav"), dtype="float32", always_2d=True)
    samples = resample_poly(samples, media.OUTPUT_SAMPLE_RATE, rate, axis=0)[: int(SECONDS * media.OUTPUT_SAMPLE_RATE)]
    path = tmp_path_factory.mktemp("voice") / "voice-2s-48k.wav"
    soundfile.write(str(path), np.clip(samples, -1, 1), media.OUTPUT_SAMPLE_RATE, subtype="PCM_16")
    return path


class Spy:
    """Keeps what the engine hands the flow's caller (the DecodedClip) and the mp4 writer (frames, audio): the audio
    the mp4 stream was opened with, and the frames as the decode put them into it, chunk by chunk."""

    def __init__(self, monkeypatch):
        self.clips, self.muxed, audio, chunks = [], [], [], []
        run_windows, init, put = engine_module.run_windows, media.Mp4Stream.__init__, media.Mp4Stream.put
        close = media.Mp4Stream.close

        def keep_clip(*args, **kwargs):
            self.clips.append(run_windows(*args, **kwargs))
            return self.clips[-1]

        def keep_audio(stream, path, total_frames, frame_rate, samples, *args, **kwargs):
            audio.append(np.array(samples))
            init(stream, path, total_frames, frame_rate, samples, *args, **kwargs)

        def keep_put(stream, frames):
            chunks.append(np.asarray(frames).copy())
            return put(stream, frames)

        def keep_muxed(stream):
            self.muxed.append((np.concatenate(chunks), audio.pop()))
            chunks.clear()
            return close(stream)

        monkeypatch.setattr(engine_module, "run_windows", keep_clip)
        monkeypatch.setattr(media.Mp4Stream, "__init__", keep_audio)
        monkeypatch.setattr(media.Mp4Stream, "put", keep_put)
        monkeypatch.setattr(media.Mp4Stream, "close", keep_muxed)


@pytest.fixture(scope="module")
def long_run(tiny_bundle, tmp_path_factory, voice):
    """One 3-window run on a fresh persistent engine, with its progress, clip and muxed arrays."""
    monkeypatch = pytest.MonkeyPatch()
    spy = Spy(monkeypatch)
    engine = Engine(tiny_bundle, tmp_path_factory.mktemp("long"), device="cpu")
    frames = media.frames_for_audio(media.audio_duration(str(voice)), FPS, LONG["window_frames"])
    request = long_request(voice, num_frames=frames)
    progress = []
    result = engine.generate(request, on_progress=progress.append)
    monkeypatch.undo()
    return engine, request, result, spy.clips[0], spy.muxed[0], progress


def long_request(voice, **overrides):
    fields = dict(image_path=str(ASSETS / "astronaut.png"), audio_path=str(voice), prompt="A woman speaks.", **LONG)
    return check_request(fields | overrides)


def file_hashes(path: str) -> tuple[str, str]:
    """sha256 of the decoded frames and of the decoded audio (the container's bytes carry a creation time)."""
    frames, audio, _rate, _fps = decode_mp4(path)
    return hashlib.sha256(frames.tobytes()).hexdigest(), hashlib.sha256(audio.tobytes()).hexdigest()


# -- the plan ---------------------------------------------------------------------------------------------------------
def test_plans_cover_the_video_with_the_fewest_even_windows():
    for frames, window, overlap in itertools.product(range(9, 800, 7), (17, 25, 97, 257), (8, 16, 24)):
        if window - overlap < 9:
            continue
        plan = plan_windows(frames, window, overlap, seed=5)
        lengths = [w.latent_frames for w in plan.windows]
        assert 0 <= plan.generated_frames - frames < 8 and (plan.generated_frames - 1) % 8 == 0
        assert all(w.frames <= window for w in plan.windows) and max(lengths) - min(lengths) <= 1
        assert sum(lengths) - overlap // 8 * (len(lengths) - 1) == latent_frames(plan.generated_frames)
        assert [w.seed for w in plan.windows] == [5 + i for i in range(len(lengths))]
        if len(lengths) > 1:  # one window fewer could not hold the video
            assert (len(lengths) - 1) * (latent_frames(window) - overlap // 8) + overlap // 8 < len(range(frames))
    plan = plan_windows(721, 257, 16, seed=42)  # 30 s at 24 fps, the default window and overlap
    assert [w.frames for w in plan.windows] == [249, 249, 241] and plan.generated_frames == pixel_frames(91)


# -- the request ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (
            dict(num_frames=48, window_frames=20),
            r"window length 20 frames is not 8k\+1 \(17, 25, ... 257\): try 17 or 25",
        ),
        (dict(num_frames=48, window_frames=9), r"window length 9 frames is not 8k\+1"),
        (
            dict(num_frames=48, window_overlap_frames=12),
            r"window overlap 12 frames must be a multiple of 8, at least 8 ",
        ),
        (dict(num_frames=48, window_overlap_frames=16), r"at most 8 \(the window length 17 minus 9"),
        (dict(num_frames=48, window_overlap_frames=0), r"window overlap 0 frames must be"),
        (dict(num_frames=1441, window_frames=None), r"1441 frames at 24 fps is 60.04 s: over the 60 s maximum"),
        (dict(num_frames=500, max_video_seconds=20), r"500 frames at 24 fps is 20.83 s: over the 20 s maximum.*480"),
        (dict(num_frames=48, max_video_seconds=0), r"max video length 0.0 s must be a positive number"),
        (dict(num_frames=48, max_video_seconds=601), r"at most 600"),
        (dict(num_frames=48, flow="reference"), r"the reference flow renders one clip .* runs in windows on the fast"),
        (dict(num_frames=48, decode_tiling="off"), r"decode tiling 'off' decodes all 48 frames in one pass"),
        (
            dict(width=2048, height=2048, num_frames=200, window_frames=97),
            r"2048x2048 with windows of 97 frames is over",
        ),
        (dict(num_frames=16), r"frame count 16 is not 8k\+1"),  # within one window: one clip, 8k+1 as before
    ],
)
def test_window_fields_are_checked_with_messages(voice, fields, message):
    with pytest.raises(InvalidRequest, match=message):
        long_request(voice, **fields)


def test_a_video_longer_than_one_window_is_any_frame_count_up_to_the_maximum(voice):
    assert long_request(voice, num_frames=48).num_frames == 48
    default_window = check_request(dict(image_path="p.png", audio_path="a.wav", prompt="x", num_frames=1440))
    assert default_window.window_frames is None and default_window.num_frames == 1440  # 60 s in windows of 257
    assert media.frames_for_audio(25.0, 24) == 600 and media.frames_for_audio(4.5, 24) == 105  # one clip: 8k+1


# -- the result -------------------------------------------------------------------------------------------------------
def test_three_windows_make_the_whole_recording(long_run, voice):
    _engine, request, result, clip, (frames, audio), _progress = long_run
    assert request.num_frames == round(SECONDS * FPS) == 48  # 0 frames from audio x fps (within half a frame)
    assert len(result.windows) == 3 and [w["frames"] for w in result.windows] == [17, 17, 17]
    assert [w["seed"] for w in result.windows] == [7, 8, 9] and [w["overlap_frames"] for w in result.windows] == [
        0,
        8,
        8,
    ]
    assert frames.shape == (48, 64, 64, 3) and clip.frames.shape[0] == 48  # 49 decoded, the 49th never muxed
    assert np.array_equal(frames, clip.frames.numpy())
    decoded, decoded_audio, rate, fps = decode_mp4(result.output)
    assert decoded.shape == (48, 64, 64, 3) and fps == FPS and rate == media.OUTPUT_SAMPLE_RATE
    # What was muxed is the input file's samples, sample for sample (48 kHz stereo in: nothing resampled or mixed).
    original, original_rate = soundfile.read(str(voice), dtype="float32", always_2d=True)
    assert original_rate == media.OUTPUT_SAMPLE_RATE and audio.shape == (2, 96_000)
    assert np.array_equal(audio, original.T[:, : audio.shape[1]])
    # The mp4's AAC track is lossy: only its length is checked (the encoder's priming samples are cut by the edit list).
    assert abs(decoded_audio.shape[1] / rate - SECONDS) < 1024 / rate


def test_each_window_continues_the_one_before_in_latent_space(long_run):
    _engine, _request, _result, clip, _muxed, _progress = long_run
    for previous, window in itertools.pairwise(clip.windows):
        for stage in ("stage_1", "stage_2"):
            before, after = getattr(previous, stage), getattr(window, stage)
            assert torch_equal(after[:, :, :1], before[:, :, -1:]), stage  # the frame continued from: identical
            assert not torch_equal(after[:, :, 1:2], before[:, :, -1:]), stage  # the rest is its own
    stitched = clip.stage_latents[0]
    parts = [clip.windows[0].stage_2] + [w.stage_2[:, :, 1:] for w in clip.windows[1:]]
    assert stitched.shape[2] == 7 and torch_equal(stitched, __import__("torch").cat(parts, dim=2))


def torch_equal(a, b) -> bool:
    import torch

    return torch.equal(a, b)


def test_progress_says_window_i_of_n_with_an_eta(long_run):
    *_, progress = long_run
    steps = [p for p in progress if p.phase == "stage_2" and p.step is not None]
    assert {p.window for p in steps} == {1, 2, 3} and all(p.windows == 3 for p in steps)
    assert all("window" in p.message and "/3" in p.message for p in steps)
    assert steps[-1].eta_seconds is not None and steps[-1].eta_seconds < steps[0].eta_seconds
    assert "about" in steps[0].message


def test_the_sidecar_records_the_windows_and_reproduce_makes_the_same_file(long_run):
    engine, _request, result, *_ = long_run
    entry = review.HistoryEntry.from_sidecar(Path(result.output).with_suffix(".json"))
    assert entry.provenance["ran"]["windows"] == list(result.windows)
    assert entry.request["window_frames"] == 17 and entry.request["window_overlap_frames"] == 8
    request, _notes = review.reproduce_request(entry)
    again = engine.generate(request)
    assert again.output != result.output and again.windows == result.windows
    assert file_hashes(again.output) == file_hashes(result.output)  # same seed, same frames and audio


def test_models_are_built_once_per_request_not_per_window(tiny_bundle, tmp_path, voice, long_run):
    """Each mode builds for 3 windows exactly what it builds for one clip (cold-start builds the video encoder twice
    in a clip, for stage 1's portrait and for the upsampler: twice in 3 windows too, not 6 times)."""
    engine, *_ = long_run
    assert set(engine.models.build_counts.values()) == {1}, engine.models.build_counts  # persistent: two requests
    for residency in ("cold-start", "host-cached"):
        counts = {}
        for name, frames in (("clip", 17), ("windows", 48)):
            fresh = Engine(tiny_bundle, tmp_path / residency / name, device="cpu", cold_start_cache_dir=tmp_path / name)
            fresh.generate(long_request(voice, num_frames=frames, residency=residency))
            counts[name] = dict(fresh.models.build_counts)
            assert fresh.models.resident() == (), residency  # and nothing is left on the device
        assert counts["windows"] == counts["clip"], (residency, counts)
        assert max(counts["windows"].values()) <= 2 and counts["windows"]["transformer"] == 1, (residency, counts)


def test_cancel_between_windows_publishes_nothing(tiny_bundle, tmp_path, voice):
    engine = Engine(tiny_bundle, tmp_path / "out", device="cpu")
    flag = []

    def on_progress(p):
        if p.phase == "stage_1" and p.window == 2:
            flag.append(True)

    with pytest.raises(GenerationCancelled, match="stage_1"):
        engine.generate(long_request(voice, num_frames=48), on_progress=on_progress, cancelled=lambda: bool(flag))
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


# -- the command line -------------------------------------------------------------------------------------------------
def test_cli_whole_audio_runs_the_windows_and_prints_each(tmp_path, voice):
    import json
    import re
    import subprocess
    import sys

    from .test_ui import ROOT

    run = subprocess.run(
        [sys.executable, "-m", "ltx_demo", "generate", "--whole-audio", "--audio", str(voice), "--width", "64",
         "--height", "64", "--window-frames", "17", "--window-overlap-frames", "8", "--steps", "2", "--seed", "7",
         "--quantization", "bf16", "--output-dir", str(tmp_path / "out"), "--cold-start-cache-dir", "off"],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    summary = json.loads(run.stdout)
    assert summary["num_frames"] == 48 and [w["seed"] for w in summary["windows"]] == [7, 8, 9]
    lines = [re.sub(r"^\[\s*[\d.]+ s\] ", "", line) for line in run.stderr.splitlines()]
    stage_1 = [line for line in lines if line.startswith("  stage_1 step")]
    assert len(stage_1) == 6 and "(window 3/3" in stage_1[-1], stage_1
