"""What the server exposes: it binds 127.0.0.1 unless told otherwise, asks for a login with --auth (or $LTX_DEMO_AUTH),
serves files only from the output folder and Gradio's own upload cache (never /etc/passwd, ../ paths, symlinks out of
the output folder, the model files or the source tree), takes no file path from the API that was not uploaded, caps
upload size, and warns that --share makes it public. Each refusal sits next to a positive control that does work.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import socket
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import httpx
import numpy as np
import pytest
import soundfile

from .conftest import ASSETS, api_client, free_port
from .test_ui import ROOT, SMALL

UPLOAD_CAP_MB = 1


@dataclass(frozen=True, slots=True)
class Served:
    url: str
    port: int
    engine: object
    demo: object
    output_dir: Path


def serve(bundle_root: Path, output_dir: Path, *flags: str) -> Served:
    """The real app (app.py's create_app + launch, as `python app.py` runs them) with extra flags, in a thread."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import app

    port = free_port()
    argv = ["--bundle", str(bundle_root), "--port", str(port), "--output-dir", str(output_dir), *flags]
    args = app.build_parser().parse_args(argv)
    engine, demo = app.create_app(args)
    app.launch(demo, args, block=False, engine=engine)
    return Served(f"http://127.0.0.1:{port}/", port, engine, demo, output_dir)


def raw_get(port: int, target: str, headers: dict | None = None) -> tuple[int, bytes]:
    """GET exactly `target` (http.client sends the path as written: no ../ collapsing, unlike httpx or a browser)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.putrequest("GET", target, skip_accept_encoding=True)
        for name, value in (headers or {}).items():
            connection.putheader(name, value)
        connection.endheaders()
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def file_url(path: str | Path) -> str:
    return "/gradio_api/file=" + str(path)


@pytest.fixture(scope="module")
def served(tiny_bundle, tmp_path_factory):
    running = serve(
        tiny_bundle.root, tmp_path_factory.mktemp("security-outputs"), "--max-upload-mb", str(UPLOAD_CAP_MB)
    )
    yield running
    running.demo.close()


@pytest.fixture(scope="module")
def result(served) -> Path:
    """A real result in the output folder (the positive control for every file check)."""
    from gradio_client import handle_file

    client = api_client(served.url)
    _video, summary = client.predict(
        image=handle_file(str(ASSETS / "astronaut.png")),
        audio=handle_file(str(ASSETS / "speech_hello.wav")),
        prompt="A woman speaks.",
        api_name="/generate",
        **SMALL,
    )
    output = Path(summary["output"])
    assert output.parent == served.output_dir and output.is_file()
    return output


# -- where it listens -----------------------------------------------------------------------------------------------
def other_local_address() -> str | None:
    """A non-loopback address of this machine, if it has one (to show the app does not answer there)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(("192.0.2.1", 9))  # TEST-NET: no packet is sent for a UDP connect
            address = probe.getsockname()[0]
    except OSError:
        return None
    return None if address.startswith("127.") else address


def test_binds_loopback_only_by_default(served, result):
    assert served.demo.server_name == "127.0.0.1"
    assert httpx.get(served.url, timeout=30).status_code == 200
    address = other_local_address()
    if address is None:
        pytest.skip("this machine has no non-loopback address to try")
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://{address}:{served.port}/", timeout=5)


# -- which files it serves --------------------------------------------------------------------------------------------
def test_a_real_output_is_served(served, result):
    status, body = raw_get(served.port, file_url(result))
    assert status == 200 and body == result.read_bytes()
    sidecar = result.with_suffix(".json")
    status, body = raw_get(served.port, file_url(sidecar))
    assert status == 200 and json.loads(body)["request"]["seed"] == SMALL["seed"]


def test_files_outside_the_output_folder_are_refused(served, result, tiny_bundle, tmp_path):
    outside = tmp_path / "secret.txt"
    outside.write_text("not for the web")
    up = "/".join([".."] * 12)
    refused = {
        "/etc/passwd": file_url("/etc/passwd"),
        "../ from the output folder": file_url(f"{served.output_dir}/{up}/etc/passwd"),
        "../ to a sibling": file_url(f"{served.output_dir}/../{outside.parent.name}/{outside.name}"),
        "%2e%2e-encoded ../": file_url(f"{served.output_dir}/%2e%2e/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd"),
        "a file in the temp folder": file_url(outside),
        "the model checkpoint": file_url(tiny_bundle.checkpoint),
        "the source tree": file_url(ROOT / "app.py"),
        "relative to the working directory": "/gradio_api/file=app.py",
        "the home folder": file_url(Path.home() / ".bashrc"),
    }
    for name, target in refused.items():
        status, body = raw_get(served.port, target)
        assert status in (403, 404), f"{name}: {status} {body[:200]!r}"
        assert b"root:" not in body and b"not for the web" not in body, name


def test_symlinks_in_the_output_folder_cannot_point_out(served, result, tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_text("outside the output folder")
    links = {"to-a-file.mp4": outside, "to-passwd.json": Path("/etc/passwd"), "to-a-folder": tmp_path}
    for name, target in links.items():
        (served.output_dir / name).symlink_to(target)
    try:
        for target in (file_url(served.output_dir / "to-a-file.mp4"), file_url(served.output_dir / "to-passwd.json"),
                       file_url(served.output_dir / "to-a-folder" / "outside.txt")):  # fmt: skip
            status, body = raw_get(served.port, target)
            assert status in (403, 404), f"{target}: {status}"
            assert b"outside the output folder" not in body and b"root:" not in body
        inside = served.output_dir / "to-the-result.mp4"  # a link that stays inside is fine
        inside.symlink_to(result)
        assert raw_get(served.port, file_url(inside)) == (200, result.read_bytes())
    finally:
        for name in [*links, "to-the-result.mp4"]:
            (served.output_dir / name).unlink(missing_ok=True)


def api_parameters(url: str) -> list[dict]:
    info = httpx.get(url + "gradio_api/info", timeout=30).json()
    return info["named_endpoints"]["/generate"]["parameters"]


def call_generate(url: str, **values) -> str:
    """/gradio_api/call/generate with raw JSON (no client-side upload): the SSE text of the outcome."""
    data = []
    for parameter in api_parameters(url):
        name = parameter["parameter_name"]
        data.append(values[name] if name in values else SMALL.get(name, parameter.get("parameter_default")))
    posted = httpx.post(url + "gradio_api/call/generate", json={"data": data}, timeout=30)
    posted.raise_for_status()
    return httpx.get(url + f"gradio_api/call/generate/{posted.json()['event_id']}", timeout=120).text


def test_the_api_takes_no_file_path_that_was_not_uploaded(served, result, tmp_path, monkeypatch):
    """A raw API call naming a server-side file (a secret recording, /etc/passwd) must not get it read, muxed into a
    video and served back: only files uploaded through Gradio are accepted as inputs."""
    secret = tmp_path / "private-call.wav"
    soundfile.write(secret, 0.3 * np.sin(np.linspace(0, 4000, 48_000))[:, None], 48_000)
    before = sorted(served.output_dir.glob("*.mp4"))
    asked = []
    stock = served.engine.generate
    monkeypatch.setattr(
        served.engine, "generate", lambda request, *a, **k: asked.append(request) or stock(request, *a, **k)
    )

    def file_data(path: Path | str) -> dict:
        return {"path": str(path), "meta": {"_type": "gradio.FileData"}, "orig_name": Path(path).name}

    upload = httpx.post(
        served.url + "gradio_api/upload", files={"files": ("a.png", (ASSETS / "astronaut.png").read_bytes())}
    )
    uploaded_image = upload.json()[0]
    for image, audio in ((uploaded_image, str(secret)), ("/etc/passwd", str(secret)), (uploaded_image, "/etc/passwd")):
        outcome = call_generate(
            served.url, image=file_data(image), audio=file_data(audio), prompt="A woman speaks.", match_audio=False
        )
        assert "event: error" in outcome, outcome[:500]  # Gradio: InvalidPathError, "not uploaded by a user"
    assert asked == [] and sorted(served.output_dir.glob("*.mp4")) == before

    # Positive control: the same call with uploaded files works.
    audio = httpx.post(
        served.url + "gradio_api/upload", files={"files": ("a.wav", (ASSETS / "speech_hello.wav").read_bytes())}
    ).json()[0]
    outcome = call_generate(
        served.url, image=file_data(uploaded_image), audio=file_data(audio), prompt="A woman speaks.", match_audio=False
    )
    assert "event: complete" in outcome, outcome[:500]
    assert len(asked) == 1 and Path(asked[0].audio_path).read_bytes() == (ASSETS / "speech_hello.wav").read_bytes()


def test_uploads_are_capped(served):
    small = httpx.post(served.url + "gradio_api/upload", files={"files": ("small.wav", b"\x00" * 1000)}, timeout=30)
    assert small.status_code == 200
    big = b"\x00" * (UPLOAD_CAP_MB * 1024 * 1024 + 1)
    refused = httpx.post(served.url + "gradio_api/upload", files={"files": ("big.wav", big)}, timeout=30)
    assert refused.status_code == 413, refused.text[:200]


# -- login -------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("via", ["flag", "env"])
def test_auth_guards_the_page_the_api_and_the_files(tiny_bundle, tmp_path, monkeypatch, via):

    flags = ("--auth", "reviewer:s3cret") if via == "flag" else ()
    if via == "env":
        monkeypatch.setenv("LTX_DEMO_AUTH", "reviewer:s3cret")
    running = serve(tiny_bundle.root, tmp_path / "out", *flags)
    try:
        sample = tmp_path / "out" / "20250101-120000_seed1_abcdef.mp4"
        sample.write_bytes(b"a result")
        assert raw_get(running.port, file_url(sample))[0] in (401, 403)
        config = httpx.get(running.url + "config", timeout=30)
        assert config.status_code in (401, 403) or "auth_required" in config.text
        with pytest.raises(Exception):  # noqa: B017 -- gradio_client raises a bare ValueError/HTTP error
            api_client(running.url)
        client = api_client(running.url, auth=("reviewer", "s3cret"))
        assert client.predict(api_name="/status")["synthetic"] is True
        login = httpx.post(running.url + "login", data={"username": "reviewer", "password": "s3cret"}, timeout=30)
        cookies = login.cookies
        with httpx.Client(cookies=cookies) as session:
            assert session.get(running.url + file_url(sample)[1:], timeout=30).content == b"a result"
        wrong = httpx.post(running.url + "login", data={"username": "reviewer", "password": "nope"}, timeout=30)
        assert wrong.status_code in (400, 401)
    finally:
        running.demo.close()


def test_bad_auth_values_stop_the_app_with_a_message(caplog):
    import app

    with pytest.raises(ValueError, match="expected user:password"):
        app.parse_auth("justauser")
    assert app.parse_auth("a:b, c:d:e") == [("a", "b"), ("c", "d:e")]
    with caplog.at_level(logging.ERROR):
        assert app.main(["--auth", "nopassword:"]) == 2
    assert "expected user:password" in caplog.text


# -- what launch is given --------------------------------------------------------------------------------------------
def test_launch_options_and_the_share_warning(tiny_bundle, tmp_path, caplog):
    import app

    launched = {}
    demo = SimpleNamespace(launch=lambda **kw: launched.update(kw))
    engine = SimpleNamespace(bundle=tiny_bundle)
    args = app.build_parser().parse_args(["--output-dir", str(tmp_path / "out"), "--share", "--auth", "u:p"])
    with caplog.at_level(logging.WARNING):
        app.launch(demo, args, block=False, engine=engine)
    assert "--share: this app is now reachable by anyone with the public link" in caplog.text
    assert launched["server_name"] == "127.0.0.1" and launched["share"] is True
    assert launched["auth"] == [("u", "p")] and launched["max_file_size"] == "200mb"
    assert launched["allowed_paths"] == [str((tmp_path / "out").resolve())]
    blocked = launched["blocked_paths"]
    assert str(tiny_bundle.checkpoint.resolve()) in blocked and str(tiny_bundle.gemma_root.resolve()) in blocked

    caplog.clear()
    args = app.build_parser().parse_args(["--output-dir", str(tmp_path / "out"), "--host", "0.0.0.0"])
    with caplog.at_level(logging.WARNING):
        app.launch(demo, args, block=False, engine=engine)
    assert "--host 0.0.0.0 without --auth: anyone who can reach this machine can use the app" in caplog.text
    assert launched["auth"] is None


def test_url_quoting_does_not_open_a_way_out(served, result):
    """The same refusals with the path percent-encoded as a browser would send it."""
    for target in ("/etc/passwd", f"{served.output_dir}/../../../../etc/passwd"):
        status, body = raw_get(served.port, "/gradio_api/file=" + urllib.parse.quote(target))
        assert status in (403, 404) and b"root:" not in body
    assert raw_get(served.port, "/gradio_api/file=" + urllib.parse.quote(str(result)))[0] == 200
