"""Shared fixtures: the tiny synthetic bundle (made once per session through the real generator) and an engine."""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

ASSETS = Path(__file__).resolve().parent.parent / "assets"
os.environ.setdefault("TQDM_DISABLE", "1")
if "LTX_DEMO_CACHE" not in os.environ:  # the CLI's and app's defaults (embedded bundle, kept states): this run's own
    os.environ["LTX_DEMO_CACHE"] = tempfile.mkdtemp(prefix="ltx-demo-tests-")
    atexit.register(shutil.rmtree, os.environ["LTX_DEMO_CACHE"], ignore_errors=True)
# The flow's top-level phases, in order, as every result reports them.
EVERY_PHASE = (
    "load:configure",
    "prompt_encode",
    "audio_encode",
    "stage_1",
    "upsample",
    "stage_2",
    "decode",
    "encode_mp4",
)
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--autoplay-policy=no-user-gesture-required",
]


def api_client(url: str, **kwargs):
    """gradio_client's Client, made safe against its race of a fast call on the shared stream (gradio issue #10354,
    open in gradio_client 2.5): predict sends the call and only then registers its event id and an empty message
    queue for it, so a call the server completes before those lines (a /cancel, a /status) had its messages thrown
    away by that empty queue, and its id's removal, done first by the stream's thread, raised KeyError there and
    ended that thread: CI saw /cancel come back as CancelledError. Here the registration keeps what already came
    and the removal of an id not yet added is a no-op (200 fast calls in a row pass; the plain Client failed at 84)."""
    from gradio_client import Client

    client = Client(url, verbose=False, **kwargs)
    client.pending_event_ids = _EventIds()
    client.pending_messages_per_event = _MessagesPerEvent()
    return client


class _EventIds(set):
    """An event's id removed by the stream's thread before predict added it: nothing to remove."""

    remove = set.discard


class _MessagesPerEvent(dict):
    """predict's empty queue for an event does not replace the messages the stream already queued for it."""

    def __setitem__(self, event_id, messages) -> None:
        if event_id in self and not messages:
            return
        super().__setitem__(event_id, messages)


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory):
    from ltx_demo.synthetic import make_bundle

    return make_bundle(tmp_path_factory.mktemp("bundle") / "tiny", scale="tiny")


@pytest.fixture(scope="session")
def engine(tiny_bundle, tmp_path_factory: pytest.TempPathFactory):
    """One CPU engine for the session: tests that need fresh residency make their own."""
    from ltx_demo.engine import Engine

    return Engine(tiny_bundle, tmp_path_factory.mktemp("outputs"), device="cpu")


@pytest.fixture
def small_request():
    """A request small enough for a 2-core CI machine (64x64, 9 frames, 2 steps)."""
    from ltx_demo.types import GenerationRequest

    def make(**overrides) -> GenerationRequest:
        fields = dict(
            image_path=str(ASSETS / "astronaut.png"),
            audio_path=str(ASSETS / "speech_hello.wav"),
            prompt="A woman speaks to the camera.",
            width=64,
            height=64,
            num_frames=9,
            steps=2,
            seed=7,
            quantization="bf16",
            residency="persistent",
        )
        fields.update(overrides)
        return GenerationRequest(**fields)

    return make


@pytest.fixture(scope="session")
def browser():
    """Debian's chromium through Playwright (no browser download), launched once for the session."""
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).is_file():
        pytest.fail(
            f"{CHROMIUM} is missing: install Debian's chromium (apt-get install chromium), or deselect with "
            "-m 'not browser'"
        )
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


# -- the real app, served from a thread -------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class LiveApp:
    url: str
    engine: object
    demo: object
    output_dir: Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_app(bundle_root: Path, output_dir: Path, *extra: str) -> LiveApp:
    """The real app (same flags, engine, UI and queue as `python app.py`, plus `extra` flags), served from a thread of
    this process so a test can compare what the page showed with what the engine recorded."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import app

    port = free_port()
    kept = output_dir.with_name(f"{output_dir.name}-kept")  # cold-start's kept models: not in the user's cache
    flags = ["--bundle", str(bundle_root), "--port", str(port), "--output-dir", str(output_dir)]
    args = app.build_parser().parse_args([*flags, "--cold-start-cache-dir", str(kept), *extra])
    engine, demo = app.create_app(args)
    app.launch(demo, args, block=False)
    return LiveApp(f"http://127.0.0.1:{port}/", engine, demo, output_dir)


@pytest.fixture(scope="module")
def live_app(tiny_bundle, tmp_path_factory, request):
    """One real app per test module, writing into its own output folder."""
    running = start_app(tiny_bundle.root, tmp_path_factory.mktemp(f"{request.module.__name__.rsplit('.', 1)[-1]}-out"))
    yield running
    running.demo.close()


@pytest.fixture
def page(browser, live_app):
    """A fresh tab on the live app, after its load events have run."""
    context = browser.new_context(viewport={"width": 1440, "height": 1100})
    tab = context.new_page()
    tab.set_default_timeout(30_000)
    tab.goto(live_app.url)
    tab.wait_for_selector("#generate")
    tab.wait_for_selector("#duration-note :text('frames')")
    yield tab
    context.close()


@pytest.fixture
def clips(monkeypatch):
    """Each generation's DecodedClip (frames, audio, stage latents) as the flow returns it, before the mp4."""
    import ltx_demo.engine as engine_module

    recorded, run = [], engine_module.run_two_stage

    def record(*args, **kwargs):
        recorded.append(run(*args, **kwargs))
        return recorded[-1]

    monkeypatch.setattr(engine_module, "run_two_stage", record)
    return recorded
