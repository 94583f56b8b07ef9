"""Drives the real app in Debian's chromium (Playwright, no browser download): a generation and bad inputs.

Checks what a person sees against what the engine recorded: the plot's samples, the phase table, the video's length.
LTX_DEMO_UPDATE_SCREENSHOT=1 also regenerates docs/screenshot.png from a realistic preset run (about a minute on CPU).
"""

from __future__ import annotations

import html
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile

from tests.conftest import EVERY_PHASE
from tests.test_ui import ASSETS, ROOT

pytestmark = pytest.mark.browser

VIDEO_STATE_JS = """async (selector) => {
    const video = document.querySelector(selector);
    if (video.readyState < 1) await new Promise((ok, fail) => {
        video.addEventListener('loadedmetadata', ok, {once: true});
        video.addEventListener('error', () => fail(new Error('video error ' + (video.error && video.error.code))));
    });
    video.muted = true;
    await video.play();  // rejects if the browser cannot decode it
    video.pause();
    return {duration: video.duration, src: video.currentSrc, width: video.videoWidth, height: video.videoHeight,
            error: video.error ? video.error.code : null};
}"""


# -- page helpers ---------------------------------------------------------------------------------------------------
def upload_portrait(page, path: Path) -> None:
    remove = page.locator("#portrait button[aria-label='Remove Image']")
    if remove.count():
        remove.click()
    page.locator("#portrait input[type=file]").set_input_files(str(path))


def upload_audio(page, path: Path) -> None:
    # The audio component shows its clip (with Clear) or its upload area; on a fresh tab under load neither may be
    # drawn yet (the notes beside it come with the page), and reading Clear's count then found none: CI waited in
    # vain for a file input the clip's player hides. So wait for one of the two first.
    clear = page.locator("#audio button[aria-label='Clear']")
    page.locator("#audio button[aria-label='Clear'], #audio input[type=file]").first.wait_for(state="attached")
    if clear.count():
        clear.click()
    page.locator("#audio input[type=file]").set_input_files(str(path))
    # Until the upload lands, the form's audio handlers have not run: a control set meanwhile races them.
    page.locator("#audio button[aria-label='Clear']").wait_for(state="visible")


def set_number(page, elem_id: str, value: float) -> None:
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Enter")
    box.blur()


def choose(page, elem_id: str, value: str) -> None:
    page.locator(f"#{elem_id} label:has(input[value='{value}'])").click()


def plot_samples(page) -> list | None:
    """The samples embedded in the memory plot (exactly what it draws), or None while it is being replaced."""
    node = page.locator("#memory-plot [data-samples]")
    if not node.count():
        return None
    return json.loads(node.first.get_attribute("data-samples"))


def wait_until(condition, message, timeout_s: float = 10) -> None:
    """Poll `condition`; on timeout fail with `message` (a string, or a function giving one at that moment)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, message() if callable(message) else message
        time.sleep(0.2)


def toasts(page) -> str:
    return "\n".join(page.locator(".toast-body").all_inner_texts())


def fill_inputs_for_a_custom_size(page) -> None:
    """Portrait, voice and prompt in, the frame count set by hand, the resolution switched to custom."""
    upload_portrait(page, ASSETS / "astronaut.png")
    upload_audio(page, ASSETS / "speech_hello.wav")
    page.wait_for_selector("#match-note :text('lasts 4.53 s')")  # the audio was read and matched
    box = page.locator("#match-audio input[type=checkbox]")
    box.uncheck()
    wait_until(  # what the page shows if it never comes (CI once waited 30 s for it, under load)
        lambda: "frames set by hand" in page.inner_text("#match-note"),
        lambda: f"match note {page.inner_text('#match-note')!r}, box checked: {box.is_checked()}",
        timeout_s=30,
    )
    page.locator("#prompt textarea").fill("A woman astronaut speaks calmly to the camera, static close-up.")
    choose(page, "resolution", "custom")


def fill_small_run(page, *, seed: int = 1234, steps: int = 2) -> None:
    """The smallest video the pipeline accepts: 64x64, 9 frames (0.375 s at 24 fps)."""
    fill_inputs_for_a_custom_size(page)
    set_number(page, "width", 64)
    set_number(page, "height", 64)
    set_number(page, "frames", 9)
    choose(page, "frame-rate", "24")
    set_number(page, "steps", steps)
    set_number(page, "seed", seed)
    choose(page, "quantization", "bf16")
    choose(page, "residency", "persistent")
    wait_until(
        lambda: "9 frames = 0.38 s" in page.inner_text("#duration-note"),
        lambda: f"duration note: {page.inner_text('#duration-note')!r}",
        timeout_s=30,
    )
    try:
        wait_until(lambda: "crop to 64×64" in page.inner_text("#fit-note"), "fit note", timeout_s=15)
    except AssertionError:
        # Seen once on a loaded 2-core CI machine: the note kept the preset's 768x512 although both boxes said 64
        # (the width/height change events that follow the switch to custom did not reach the server). Typing the
        # size again, as a user would, must bring the note up to date.
        set_number(page, "height", 128)
        set_number(page, "height", 64)
    wait_until(
        lambda: "crop to 64×64" in page.inner_text("#fit-note"),
        lambda: (
            f"fit note: {page.inner_text('#fit-note')!r}; width {page.input_value('#width input')}, "
            f"height {page.input_value('#height input')}"
        ),
        timeout_s=30,
    )


def run_and_watch(page, engine, timeout_s: float = 120) -> tuple[list[list], list[str]]:
    """Click Generate and poll the readout panel until the video is there: (plot snapshots taken while the page
    said a job was running, progress texts seen)."""
    snapshots, progress_texts = [], []
    page.click("#generate")
    deadline = time.monotonic() + timeout_s
    while not page.locator("#result-video video[src]").count():
        assert time.monotonic() < deadline, f"no video after {timeout_s} s; toasts: {toasts(page)!r}"
        state = page.locator("#progress-line .progress-line").get_attribute("data-state")
        samples = plot_samples(page)
        if state == "running" and samples:
            snapshots.append(samples)
            progress_texts.append(page.inner_text("#progress-line"))
        time.sleep(0.15)
    return snapshots, progress_texts


# -- tests ----------------------------------------------------------------------------------------------------------
def test_generate_in_the_browser(page, live_app, tmp_path):
    from ltx_demo import ui

    engine = live_app.engine
    before = ui.samples_payload(engine.live_samples())
    # 40 steps (~2 s of stage_1 on 2 CPU cores) so the readout timer (2/s) catches the run several times.
    fill_small_run(page, seed=1234, steps=40)
    snapshots, progress_texts = run_and_watch(page, engine)

    # The video: a playable source whose length is num_frames / fps (9 / 24 = 0.375 s; AAC may pad ~20 ms).
    state = page.evaluate(VIDEO_STATE_JS, "#result-video video")
    assert state["error"] is None and state["src"]
    assert (state["width"], state["height"]) == (64, 64)
    assert state["duration"] == pytest.approx(9 / 24, abs=0.06)

    # The run's parameters, as saved next to the mp4.
    page.wait_for_selector("#result-panel .phase-table")
    output = Path(page.get_attribute("#result-panel .result", "data-output"))
    saved = json.loads(output.with_suffix(".json").read_text())
    assert (saved["result"]["seed"], saved["result"]["num_frames"], saved["result"]["width"]) == (1234, 9, 64)
    assert saved["request"]["quantization"] == "bf16" and saved["request"]["residency"] == "persistent"
    assert page.input_value("#seed input") == "1234"  # the seed used, shown back

    # The plot shows exactly the samples the engine recorded for this run, and showed them live as they came.
    recorded = ui.samples_payload(engine.live_samples())
    assert (
        recorded
        and recorded[0][1] == "load:configure"
        and recorded[-1][0] == pytest.approx(saved["result"]["elapsed_seconds"], abs=0.5)
    )
    wait_until(lambda: plot_samples(page) == recorded, "the plot never showed the run's recorded samples")
    live = [s for s in snapshots if s != before]  # a tick may land between "busy" and the new run's first sample
    assert live, "the readout panel never updated while the job ran"
    assert all(s == recorded[: len(s)] for s in live), "a live plot showed samples the engine did not record"
    assert any(len(s) < len(recorded) for s in live), "the plot only appeared at the end, not live"
    assert any("stage_1 · step" in text and "ETA" in text for text in progress_texts), progress_texts
    boundaries = page.locator("#memory-plot line.phase-boundary").evaluate_all(
        "nodes => nodes.map(n => n.dataset.phase)"
    )
    assert set(EVERY_PHASE) <= set(boundaries)

    # The phase table lists every phase the engine timed, with the saved wall times.
    rows = page.locator("#result-panel tr[data-phase]")
    table = {row.get_attribute("data-phase"): row.locator("td.seconds").inner_text() for row in rows.all()}
    assert set(table) == set(saved["result"]["phases"]) and set(EVERY_PHASE) <= set(table)
    for name, timing in saved["result"]["phases"].items():
        assert float(table[name]) == pytest.approx(timing["seconds"], abs=1e-3), name
    facts = page.inner_text("#result-panel .facts")
    assert f"{saved['result']['elapsed_seconds']:.3f} s" in facts and "Resident after" in facts

    # Live memory without CUDA: RSS and a plain note; the status line names what is resident.
    assert "No CUDA device" in page.inner_text("#memory-now")
    resident = engine.status()["resident"]
    wait_until(lambda: "idle" in page.inner_text("#status-line .pill"), "the status line never went back to idle")
    status_line = page.inner_text("#status-line")
    assert resident and all(name in status_line for name in resident), (resident, status_line)
    assert "Synthetic weights: the output is noise" in page.inner_text("body")

    shot = Path(os.environ.get("LTX_DEMO_ARTIFACTS", tmp_path)) / "browser-generate.png"
    shot.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000


def test_bad_inputs_show_what_to_fix(page, live_app, tmp_path):
    fill_small_run(page)

    # 1. An empty prompt.
    page.locator("#prompt textarea").fill("   ")
    page.click("#generate")
    page.wait_for_selector(".toast-body:has-text('prompt is empty')")
    assert "describe the person and the scene" in toasts(page)
    page.locator("#prompt textarea").fill("A woman speaks.")

    # 2. A "portrait" that is not an image (named .png, so the browser lets it through to the server).
    fake = tmp_path / "portrait.png"
    fake.write_text("this is not a picture")
    upload_portrait(page, fake)
    page.wait_for_selector("#fit-note :text('not a readable image')")
    page.click("#generate")
    page.wait_for_selector(".toast-body:has-text('not a readable image')")
    assert "upload a PNG or JPEG" in toasts(page)

    # 3. A zero-length audio clip.
    upload_portrait(page, ASSETS / "astronaut.png")
    empty = tmp_path / "empty.wav"
    soundfile.write(empty, np.zeros((0, 1), dtype=np.float32), 16_000)
    upload_audio(page, empty)
    page.click("#generate")
    page.wait_for_selector(".toast-body:has-text('audio clip is empty')")

    # The app keeps serving: the status line still updates, the engine is idle and built nothing for these.
    assert live_app.engine.status()["busy"] is False
    page.wait_for_selector("#status-line .pill-idle")


@pytest.mark.skipif(os.environ.get("LTX_DEMO_UPDATE_SCREENSHOT") != "1", reason="set LTX_DEMO_UPDATE_SCREENSHOT=1")
def test_update_readme_screenshot(page, live_app):
    """docs/screenshot.png: the first preset as a visitor would run it (768x512, audio-matched length, defaults)."""
    page.locator("#presets button", has_text="Astronaut: mission control greeting").click()
    page.wait_for_selector("#duration-note :text('105 frames')")
    set_number(page, "steps", 12)
    run_and_watch(page, live_app.engine, timeout_s=600)
    page.wait_for_selector("#result-panel .phase-table")
    page.evaluate("document.querySelector('#result-video video').currentTime = 2.0")
    time.sleep(1.5)
    page.locator("#result-panel").scroll_into_view_if_needed()
    out = ROOT / "docs" / "screenshot.png"
    out.parent.mkdir(exist_ok=True)
    page.screenshot(path=str(out), full_page=True)
    assert html.escape("105 frames") in page.inner_text("#result-panel")
