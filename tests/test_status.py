"""The status the page polls is a snapshot: it answers at once while a model is being built, and says what loads."""

from __future__ import annotations

import html
import threading
import time

import pytest

from ltx_demo.engine import Engine


class HeldBuild:
    """Holds the first build of `name` open (inside the build, after it said it is loading) until released."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.started = threading.Event()
        self.release = threading.Event()

    def __call__(self, loading: str | None) -> None:
        if loading == self.name and not self.started.is_set():
            self.started.set()
            self.release.wait(60)


def timed_status(engine: Engine, times: int = 10) -> tuple[dict, float]:
    """The last status and the slowest of `times` calls, in seconds."""
    slowest, status = 0.0, {}
    for _ in range(times):
        started = time.perf_counter()
        status = engine.status()
        slowest = max(slowest, time.perf_counter() - started)
    return status, slowest


def test_status_answers_at_once_while_a_model_is_built(tiny_bundle, small_request, tmp_path):
    engine = Engine(tiny_bundle, tmp_path, device="cpu")
    held = HeldBuild("transformer")
    engine.models.on_loading(held)
    job = threading.Thread(target=engine.generate, args=(small_request(residency="persistent"),))
    job.start()
    try:
        assert held.started.wait(120), "the transformer build never started"
        status, slowest = timed_status(engine)
    finally:
        held.release.set()
        job.join(120)
    assert slowest < 0.1, f"status took {slowest * 1000:.0f} ms during a build"
    assert status["busy"] and status["loading"] == "transformer"
    assert "text_encoder" in status["resident"] and "transformer" not in status["resident"]
    assert engine.status()["loading"] is None and "transformer" in engine.status()["resident"]


@pytest.mark.browser
def test_the_status_line_says_what_is_loading_during_the_build(page, live_app):
    from tests.test_browser import fill_small_run, wait_until

    held = HeldBuild("transformer")
    live_app.engine.models.release_all()  # so this run builds the transformer
    live_app.engine.models.on_loading(held)
    fill_small_run(page, seed=7, steps=2)
    page.click("#generate")
    try:
        assert held.started.wait(120), "the transformer build never started"
        wait_until(
            lambda: "loading transformer" in page.inner_text("#status-line"),
            lambda: f"status line during the build: {page.inner_text('#status-line')!r}",
            timeout_s=10,
        )
    finally:
        held.release.set()
    page.wait_for_selector("#result-video video[src]", timeout=120_000)
    wait_until(lambda: "loading" not in page.inner_text("#status-line"), "the status line still says loading")


def test_a_run_that_has_the_device_reads_starting_until_its_first_phase(tiny_bundle, small_request, tmp_path):
    """Between taking the device and the flow's first phase (configure, the mp4's opening) the visitor's line says
    the run is starting, never "waiting" (CI once read "waiting" three times on a running job's line)."""
    from ltx_demo.ui.jobs import DemoController

    engine = Engine(tiny_bundle, tmp_path, device="cpu")
    entered, release = threading.Event(), threading.Event()
    generate = engine.generate

    def held_generate(*args, **kwargs):  # the real engine, entered only once the line has been read
        entered.set()
        release.wait(60)
        return generate(*args, **kwargs)

    engine.generate = held_generate
    controller = DemoController(engine, negative_prompt="")
    job = threading.Thread(target=controller.run, args=(small_request(), "visitor"))
    job.start()
    try:
        assert entered.wait(60), "the job never reached the engine"
        line = html.unescape(controller.progress_html("visitor"))
        other = html.unescape(controller.progress_html("someone else"))
    finally:
        release.set()
        job.join(120)
    assert 'data-state="running"' in line and "<span>starting · " in line, line
    assert "another visitor's run has the device (starting)" in other, other
    assert "your last run:" in controller.progress_html("visitor")
