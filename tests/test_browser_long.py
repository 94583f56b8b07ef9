"""Issue 16 on the page: "Match audio length" with a recording longer than one window asks for the whole audio
(media.frames_for_audio, as the CLI's --whole-audio), says how many windows it runs in, and the video is as long."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile

from tests.test_browser import (
    VIDEO_STATE_JS,
    choose,
    fill_inputs_for_a_custom_size,
    run_and_watch,
    set_number,
    upload_audio,
    wait_until,
)
from tests.test_ui import ASSETS

SECONDS = 25.0


def long_recording(path: Path, seconds: float) -> Path:
    """The speech asset at 48 kHz stereo, repeated and padded with silence to exactly `seconds`."""
    data, rate = soundfile.read(str(ASSETS / "speech_hello.wav"), dtype="float32", always_2d=True)
    data = np.repeat(data, 48_000 // rate, axis=0) if rate < 48_000 else data  # 24 kHz -> 48 kHz (good enough)
    data = np.column_stack([data[:, 0], data[:, -1]])
    total = round(seconds * 48_000)
    out = np.tile(data, (total // len(data) + 1, 1))[:total]
    out[len(data) * (total // len(data)) :] = 0.0  # the last partial repeat as silence
    soundfile.write(str(path), out, 48_000, subtype="PCM_16")
    return path


def test_the_match_note_for_long_audio(tmp_path):
    from ltx_demo.ui import form

    audio = str(long_recording(tmp_path / "long.wav", SECONDS))
    frames, covered = form.matched_frames(audio, 0.0, 24, 64, 64)
    assert (frames, covered) == (600, pytest.approx(SECONDS))
    slider, note, length = form.sync_frames(audio, 0.0, 24, True, "custom", 64, 64)
    assert slider["maximum"] == 257 and slider["value"] == 257  # the slider still stops at one window
    assert "25.0 s of audio → 600 frames in 3 windows of up to 257 frames" in note
    assert length == "**600 frames = 25.00 s** at 24 fps · 3 windows"  # the video asked for, not the slider's
    # The window fields: the count follows the window length; a bad one is named with the engine's own message.
    slider, note, length = form.sync_frames(audio, 0.0, 24, True, "custom", 64, 64, 257, 97, 16, 60)
    assert "600 frames in 7 windows of up to 97 frames" in note and slider["value"] == 97 and "7 windows" in length
    assert "window length 20 frames is not 8k+1" in form.sync_frames(audio, 0.0, 24, True, "custom", 64, 64, 257, 20)[1]
    overlap = form.sync_frames(audio, 0.0, 24, True, "custom", 64, 64, 257, 97, 12)[1]
    assert "window overlap 12 frames must be a multiple of 8" in overlap
    slider, note, length = form.sync_frames(audio, 0.0, 24, True, "custom", 64, 64, 257, 0, 16, 5)  # at most 5 s
    assert (slider["value"], length) == (113, "**113 frames = 4.71 s** at 24 fps") and "⚠ cut to the first 4.71" in note
    # Frames set by hand: the length note is describe_frames' alone (it answers without the queue); a queued
    # sync_frames reply for a size change must not put back the length of the frame count it was sent with.
    _slider, _note, length = form.sync_frames(audio, 0.0, 24, False, "custom", 64, 64, 105)
    assert length == {"__type__": "update"}  # leaves the note as it is
    assert form.describe_frames(9, 24, False, "custom", 64, 64).startswith("**9 frames = 0.38 s**")
    long_audio = str(long_recording(tmp_path / "longer.wav", 70.0))
    assert form.matched_frames(long_audio, 0.0, 24, 64, 64)[0] == 1440  # max_video_seconds 60
    assert "cut to the first 60.0 s" in form.sync_frames(long_audio, 0.0, 24, True, "custom", 64, 64)[1]
    values = dict.fromkeys(form.NAMES)
    values |= {"image": str(ASSETS / "astronaut.png"), "audio": audio, "prompt": "p", "resolution": "custom"}
    values |= {"width": 64, "height": 64, "image_fit": "crop", "audio_start": 0.0, "match_audio": True}
    values |= {"num_frames": 257, "frame_rate": 24, "seed": 1, "randomize_seed": False, "steps": 2}
    values |= {"quantization": "bf16", "residency": "persistent", "flow": "fast", "decode_tiling": "default"}
    values |= {"cfg_scale": 3.0, "stg_scale": 1.0, "rescale_scale": 0.7, "modality_scale": 3.0}
    values |= {"distilled_lora_strength": 1.0, "enhance_prompt": False}
    values |= {"window_frames": 0, "window_overlap_frames": 16, "max_video_seconds": 60}
    assert form.request_from_form(values).num_frames == 600
    request = form.request_from_form(
        values | {"window_frames": 97.0, "window_overlap_frames": 24.0, "max_video_seconds": 20}
    )
    assert (request.num_frames, request.window_frames, request.window_overlap_frames) == (480, 97, 24)
    assert request.max_video_seconds == 20


@pytest.mark.browser
def test_match_audio_length_runs_a_long_recording_in_windows(page, live_app, tmp_path):
    audio = long_recording(tmp_path / "long.wav", SECONDS)
    fill_inputs_for_a_custom_size(page)
    set_number(page, "width", 64)
    set_number(page, "height", 64)
    choose(page, "frame-rate", "24")
    set_number(page, "steps", 2)
    set_number(page, "seed", 7)
    choose(page, "quantization", "bf16")
    choose(page, "residency", "persistent")
    upload_audio(page, audio)
    page.locator("#match-audio input[type=checkbox]").check()
    wait_until(
        lambda: "600 frames in 3 windows of up to 257 frames" in page.inner_text("#match-note"),
        lambda: f"match note: {page.inner_text('#match-note')!r}",
        timeout_s=30,
    )
    assert "25.0 s of audio" in page.inner_text("#match-note")

    run_and_watch(page, live_app.engine, timeout_s=400)
    state = page.evaluate(VIDEO_STATE_JS, "#result-video video")
    assert state["error"] is None and (state["width"], state["height"]) == (64, 64)
    assert state["duration"] == pytest.approx(SECONDS, abs=1 / 24 + 0.05)  # one frame, or AAC's padding
    page.wait_for_selector("#result-panel .result")
    output = Path(page.get_attribute("#result-panel .result", "data-output"))
    saved = json.loads(output.with_suffix(".json").read_text())
    assert saved["result"]["num_frames"] == 600 and len(saved["result"]["windows"]) == 3
    # The next note has a rough time from this run's pace.
    set_number(page, "audio-start", 0.5)
    wait_until(
        lambda: "at the last run's pace" in page.inner_text("#match-note"),
        lambda: f"match note: {page.inner_text('#match-note')!r}",
        timeout_s=30,
    )


@pytest.mark.browser
def test_the_window_length_on_the_page_changes_the_window_count(page, tmp_path):
    audio = long_recording(tmp_path / "long.wav", SECONDS)
    fill_inputs_for_a_custom_size(page)
    set_number(page, "width", 64)
    set_number(page, "height", 64)
    choose(page, "frame-rate", "24")
    upload_audio(page, audio)
    page.locator("#match-audio input[type=checkbox]").check()
    note = lambda: page.inner_text("#match-note")  # noqa: E731
    wait_until(lambda: "600 frames in 3 windows of up to 257 frames" in note(), note, timeout_s=30)
    # The window fields wait in a closed accordion, out of the main form's way.
    assert page.locator("#window-frames").is_hidden()
    page.click("#long-recordings button:has-text('Long recordings')")
    set_number(page, "window-frames", 97)
    wait_until(lambda: "600 frames in 7 windows of up to 97 frames" in note(), note, timeout_s=30)
    assert "**" not in page.inner_text("#duration-note") and "600 frames = 25.00 s" in page.inner_text("#duration-note")
    assert "7 windows" in page.inner_text("#duration-note")
    # A window length the engine would refuse is named with the engine's own message, before any run.
    set_number(page, "window-frames", 20)
    wait_until(lambda: "window length 20 frames is not 8k+1" in note(), note, timeout_s=30)
    set_number(page, "window-frames", 97)
    wait_until(lambda: "600 frames in 7 windows of up to 97 frames" in note(), note, timeout_s=30)
    set_number(page, "max-video-seconds", 10)
    wait_until(lambda: "240 frames in 3 windows of up to 97 frames" in note(), note, timeout_s=30)
    assert "cut to the first 10.0 s" in note()
    # With the frames set by hand the note says where a longer video comes from.
    page.locator("#match-audio input[type=checkbox]").uncheck()
    wait_until(lambda: "longer videos: Match audio length" in note(), note, timeout_s=30)
