"""UI checks without a browser: ui.py stays torch-free, its helpers, and generations through gradio_client's API.

The live app here is the real one (app.py's flags -> engine -> UI -> queue -> launch) on the tiny bundle, in a thread.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import EVERY_PHASE, api_client

ROOT = Path(__file__).resolve().parent.parent
ASSETS = ROOT / "assets"
SMALL = dict(
    resolution="custom",
    width=64,
    height=64,
    match_audio=False,
    num_frames=9,
    steps=2,
    seed=7,
    quantization="bf16",
    residency="persistent",
)


@pytest.fixture(scope="module")
def client(live_app):

    return api_client(live_app.url)


# -- import boundary and pure helpers -------------------------------------------------------------------------------
def test_ui_imports_neither_torch_nor_ltx():
    code = (
        "import sys, ltx_demo.ui\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'ltx_core', 'ltx_pipelines'))\n"
        "assert not bad, bad\n"
        "assert 'ltx_demo.engine' not in sys.modules\n"
        "import pathlib; stub = pathlib.Path(ltx_demo.ui.__file__).with_suffix('.pyi')\n"
        "assert not stub.exists(), f'{stub}: gradio writes one when a component is subclassed'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=120)


def test_app_flags():
    import app

    args = app.build_parser().parse_args([])
    assert (args.host, args.port, args.share, args.preload) == ("127.0.0.1", 7860, False, False)
    args = app.build_parser().parse_args(["--share", "--preload", "--bundle", "b", "--port", "9000"])
    assert (args.share, args.preload, args.bundle, args.port) == (True, True, "b", 9000)


def test_resolution_and_frame_helpers():
    from ltx_demo import ui
    from ltx_demo.types import InvalidRequest

    assert ui.resolve_resolution("1280x768", None, None) == (1280, 768)
    assert ui.resolve_resolution("512x768", 1, 1) == (512, 768)
    assert ui.resolve_resolution("custom", 64.0, "128") == (64, 128)
    with pytest.raises(InvalidRequest, match="width is empty"):
        ui.resolve_resolution("custom", None, 64)
    assert {value for _, value in ui.RESOLUTIONS} >= {
        "768x512",
        "1024x768",
        "1280x768",
        "512x768",
        "768x1024",
        "768x1280",
        "custom",
    }
    assert ui.max_frames_at(1280, 768) == 257
    assert ui.max_frames_at(2048, 2048) == 57  # 1280*768*257 // (2048*2048) = 60 -> the largest 8k+1 below
    frames, seconds = ui.matched_frames(str(ASSETS / "speech_hello.wav"), 0.0, 24, 768, 512)
    assert frames == 105 and seconds == pytest.approx(4.53, abs=0.01)  # 105/24 = 4.375 s <= 4.53 s < 113/24
    assert ui.matched_frames(str(ASSETS / "speech_hello.wav"), 1.0, 30, 768, 512)[0] == 105  # 3.53 s * 30
    with pytest.raises(InvalidRequest, match="start offset"):
        ui.matched_frames(str(ASSETS / "speech_hello.wav"), 10.0, 24, 768, 512)


def test_presets_fill_everything():
    from ltx_demo import ui

    presets = ui.Preset.load_all(ASSETS / "presets.json")
    assert len(presets) >= 3
    for preset in presets:
        assert preset.image.is_file() and preset.audio.is_file() and preset.prompt
    assert {p.resolution for p in presets} == {"768x512", "512x768"}  # the portrait photo gets a portrait frame


def test_plot_embeds_the_samples_and_marks_phase_boundaries():
    from ltx_demo import ui
    from ltx_demo.types import VramSample

    phases = ["load:configure", "prompt_encode", "load:text_encoder", "prompt_encode", "idle", "stage_1", "stage_1"]
    samples = [VramSample(0.25 * i, p, None, None, None, None, None, (900 + i) << 20) for i, p in enumerate(phases)]
    page = ui.memory_plot_html(samples, cuda=False)
    import html as html_lib
    import re

    embedded = json.loads(html_lib.unescape(re.search(r'data-samples="([^"]*)"', page).group(1)))
    assert embedded == ui.samples_payload(samples)
    boundaries = re.findall(r'class="phase-boundary" data-phase="([^"]+)"', page)
    assert boundaries == ["load:configure", "prompt_encode", "load:text_encoder", "prompt_encode", "stage_1"]
    assert "process RSS" in page and "no CUDA" not in page
    gpu = [VramSample(0.5 * i, "stage_1", i << 30, (i + 1) << 30, i << 30, (i + 2) << 30, 80 << 30, 1 << 30)
           for i in range(3)]  # fmt: skip
    cuda_page = ui.memory_plot_html(gpu, cuda=True)
    assert re.findall(r'data-series="([^"]+)"', cuda_page) == ["allocated", "reserved", "device used (NVML)"]


def test_memory_readout_says_plainly_without_cuda():
    from ltx_demo import ui
    from ltx_demo.types import VramSample

    cpu = ui.memory_now_html(VramSample(0, "idle", None, None, None, None, None, 3 << 30), cuda=False, running=False)
    assert "No CUDA device" in cpu and "3.00" in cpu
    gpu = ui.memory_now_html(
        VramSample(0, "stage_1", 5 << 30, 6 << 30, 7 << 30, 40 << 30, 80 << 30, 2 << 30), cuda=True, running=True
    )
    for text in ("Allocated", "5.00", "Reserved", "6.00", "Peak", "7.00", "40.00 / 80.00", "NVML"):
        assert text in gpu


def test_one_form_table_drives_generate_reuse_and_the_api(live_app, small_request):
    """FIELDS is the one list: generate's inputs and parameters, reuse_settings' outputs and the API's names follow
    its order, and a request shown by the form and read back from it is the same request."""
    import dataclasses

    from ltx_demo.types import GuidanceParams
    from ltx_demo.ui.form import FIELDS, NAMES, form_from_request, request_from_form

    config = live_app.demo.get_config_file()
    by_id = {c["id"]: c for c in config["components"]}
    deps = {d["api_name"]: d for d in config["dependencies"] if d.get("api_name")}
    generate, reuse = deps["generate"], deps["reuse_settings"]
    assert generate["inputs"] == reuse["outputs"], "generate's inputs and reuse_settings' outputs differ"
    assert len(generate["inputs"]) == len(FIELDS)
    ids = [by_id[i]["props"].get("elem_id") for i in generate["inputs"]]
    assert ids[:3] == ["portrait", "audio", "prompt"] and ids[NAMES.index("seed")] == "seed", ids
    assert ids[NAMES.index("num_frames")] == "frames" and ids[NAMES.index("vram_budget_gib")] == "vram-budget"
    api = live_app.demo.get_api_info()["named_endpoints"]
    assert tuple(p["parameter_name"] for p in api["/generate"]["parameters"]) == NAMES
    # Every request field a visitor can set is in the table exactly once.
    filled = {f.request_field.rpartition(".")[2] for f in FIELDS if f.request_field}
    guidance = {f.name for f in dataclasses.fields(GuidanceParams)}
    assert filled >= {"image_path", "audio_path", "prompt", "seed", "steps", "num_frames", *guidance}
    assert filled >= {"window_frames", "window_overlap_frames", "max_video_seconds"}
    request = small_request(negative_prompt="blurry", guidance=GuidanceParams(cfg_scale=4.0), audio_start=0.5)
    again = request_from_form(dict(zip(NAMES, form_from_request(request, "default"), strict=True)))
    assert again == request
    windowed = small_request(
        num_frames=33, window_frames=17, window_overlap_frames=8, max_video_seconds=30.0, negative_prompt="x"
    )
    assert request_from_form(dict(zip(NAMES, form_from_request(windowed, "default"), strict=True))) == windowed


# -- the API, headless ----------------------------------------------------------------------------------------------
def test_api_generate_returns_the_summary(client, live_app):
    from gradio_client import handle_file

    video, summary = client.predict(
        image=handle_file(str(ASSETS / "astronaut.png")),
        audio=handle_file(str(ASSETS / "speech_hello.wav")),
        prompt="A woman speaks to the camera.",
        api_name="/generate",
        **SMALL,
    )
    assert Path(video if isinstance(video, str) else video["video"]).stat().st_size > 0
    for key in ("elapsed_seconds", "peak_vram_gib", "width", "height", "num_frames", "phases"):
        assert key in summary, key
    assert (summary["width"], summary["height"], summary["num_frames"], summary["seed"]) == (64, 64, 9, 7)
    assert summary["elapsed_seconds"] > 0
    assert summary["peak_vram_gib"] is None  # CPU: no VRAM, said as null rather than 0
    assert set(EVERY_PHASE) <= set(summary["phases"])
    assert all(p["seconds"] >= 0 for p in summary["phases"].values())
    # The parameters are saved next to the video, and they reproduce the request.
    sidecar = json.loads(Path(summary["parameters_file"]).read_text())
    assert sidecar["request"] == summary["request"]
    assert sidecar["result"]["phases"] == summary["phases"]
    assert Path(summary["output"]).parent == live_app.output_dir


def test_api_auto_residency_follows_the_vram_budget_field(client):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    files = dict(image=handle_file(str(ASSETS / "astronaut.png")), audio=handle_file(str(ASSETS / "speech_hello.wav")))
    auto = SMALL | {"residency": "auto"}
    with pytest.raises(AppError, match=r"no residency mode fits the 0\.0 GiB budget"):
        client.predict(prompt="A woman.", api_name="/generate", vram_budget_gib=0.0001, **files, **auto)
    _video, summary = client.predict(prompt="A woman.", api_name="/generate", vram_budget_gib=64, **files, **auto)
    assert summary["residency_requested"] == "auto" and summary["residency"] == "persistent"
    assert "fits the 64.0 GiB budget (the budget given" in summary["residency_reason"]


def test_api_bad_input_names_the_fix_and_keeps_serving(client):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    files = dict(image=handle_file(str(ASSETS / "astronaut.png")), audio=handle_file(str(ASSETS / "speech_hello.wav")))
    with pytest.raises(AppError, match="prompt is empty"):
        client.predict(prompt="   ", api_name="/generate", **files, **SMALL)
    with pytest.raises(AppError, match="width 100 is not a multiple of 64"):
        client.predict(prompt="A woman.", api_name="/generate", **files, **(SMALL | {"width": 100}))
    with pytest.raises(AppError, match="frame count 10 is not 8k\\+1"):
        client.predict(prompt="A woman.", api_name="/generate", **files, **(SMALL | {"num_frames": 10}))
    status = client.predict(api_name="/status")
    assert status["busy"] is False and status["synthetic"] is True


def test_api_cancel_stops_between_steps(client, live_app):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    job = client.submit(
        image=handle_file(str(ASSETS / "astronaut.png")),
        audio=handle_file(str(ASSETS / "speech_hello.wav")),
        prompt="A woman speaks.",
        api_name="/generate",
        **(SMALL | {"steps": 100}),
    )
    deadline = time.monotonic() + 60
    while True:  # wait until this job (busy) is denoising; then cancel it
        samples = live_app.engine.live_samples()
        if live_app.engine.status()["busy"] and samples and samples[-1].phase == "stage_1":
            break
        assert time.monotonic() < deadline, "the job never reached stage_1"
        time.sleep(0.05)
    client.predict(api_name="/cancel")
    with pytest.raises(AppError, match="cancelled at stage_1 step"):
        job.result(timeout=60)
    assert live_app.engine.status()["busy"] is False


def test_the_server_log_says_a_visitors_mistake_in_one_line(tmp_path):
    """`python app.py` as served: a refused request is one log line, no traceback; starlette's HTTP_422 deprecation
    warning (one per request gradio answers) is filtered out (app.quiet_library_warnings)."""
    import urllib.request

    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    from tests.conftest import free_port

    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "app.py", "--port", str(port), "--output-dir", str(tmp_path / "out")],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2)
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, "the app did not start"
                time.sleep(0.5)
        client = api_client(f"http://127.0.0.1:{port}/")
        fake = tmp_path / "portrait.png"
        fake.write_text("this is not a picture")
        audio = handle_file(str(ASSETS / "speech_hello.wav"))
        with pytest.raises(AppError, match="prompt is empty"):
            client.predict(image=handle_file(str(ASSETS / "astronaut.png")), audio=audio, prompt=" ",
                           api_name="/generate", **SMALL)  # fmt: skip
        with pytest.raises(AppError, match="not a readable image"):
            client.predict(image=handle_file(str(fake)), audio=audio, prompt="A woman.", api_name="/generate", **SMALL)
    finally:
        server.terminate()
        log = server.communicate(timeout=60)[0]
    refused = [line for line in log.splitlines() if "refused (Check your input)" in line]
    assert len(refused) == 2, log
    assert "Traceback" not in log, log
    assert "HTTP_422_UNPROCESSABLE_ENTITY" not in log, log


def test_api_takes_the_window_fields_and_the_result_records_its_windows(client):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    files = dict(image=handle_file(str(ASSETS / "astronaut.png")), audio=handle_file(str(ASSETS / "speech_hello.wav")))
    windowed = SMALL | {"num_frames": 33, "window_frames": 17, "window_overlap_frames": 8, "max_video_seconds": 30}
    _video, summary = client.predict(prompt="A woman speaks.", api_name="/generate", **files, **windowed)
    assert summary["num_frames"] == 33 and summary["request"]["window_frames"] == 17
    assert (summary["request"]["window_overlap_frames"], summary["request"]["max_video_seconds"]) == (8, 30)
    ran = summary["provenance"]["ran"]["windows"]
    assert ran == summary["windows"] and [w["frames"] for w in ran] == [17, 17]
    assert [w["overlap_frames"] for w in ran] == [0, 8] and [w["seed"] for w in ran] == [7, 8]
    with pytest.raises(AppError, match=r"window length 20 frames is not 8k\+1"):
        client.predict(prompt="A woman.", api_name="/generate", **files, **(windowed | {"window_frames": 20}))
