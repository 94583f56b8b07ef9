"""Two worker processes (`app.py --gpus cpu:2`) on the tiny bundle, through the real Gradio server and gradio_client:
four visitors at once (at most two run, the others see a queue position), cancel, and a worker killed mid-job."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from ltx_demo.bench import output_hash
from ltx_demo.devices import MULTICAST_OFF
from ltx_demo.ui.readouts import status_html
from tests.conftest import api_client, start_app
from tests.test_ui import ASSETS, SMALL


@pytest.fixture(scope="module")
def pool_app(tiny_bundle, tmp_path_factory):
    running = start_app(tiny_bundle.root, tmp_path_factory.mktemp("workers-out"), "--gpus", "cpu:2")
    yield running
    running.demo.close()
    running.engine.close()


def submit(url: str, **fields):
    from gradio_client import handle_file

    client = api_client(url)
    job = client.submit(
        image=handle_file(str(ASSETS / "astronaut.png")),
        audio=handle_file(str(ASSETS / "speech_hello.wav")),
        prompt="A woman speaks to the camera.",
        api_name="/generate",
        **(SMALL | fields),
    )
    return client, job


def wait_for(condition, what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def results_in(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir() if p.is_file()}


def test_two_workers_serve_four_clients_two_at_a_time(pool_app):
    from gradio_client.utils import Status

    pool = pool_app.engine
    assert pool.workers == 2 and pool_app.demo.get_config_file()  # the app runs through the pool
    for row in pool.worker_status():  # every worker process: NVLink multicast off, no GPU on this CPU run
        assert MULTICAST_OFF.items() <= row["environment"].items(), row
        assert row["environment"]["CUDA_VISIBLE_DEVICES"] == ""
    before = max((r.job for r in pool.history), default=0)
    seeds = (11, 12, 11, 12)  # a pair per seed: the same request gives the same video on either worker
    jobs = [submit(pool_app.url, seed=seed, steps=6)[1] for seed in seeds]
    ranks: set[int] = set()
    while not all(job.done() for job in jobs):
        for job in jobs:
            status = job.status()
            if status.code == Status.IN_QUEUE and status.rank is not None:
                ranks.add(status.rank)
        time.sleep(0.02)
    outputs = [job.result() for job in jobs]
    hashes = []
    for (_video, summary), seed in zip(outputs, seeds, strict=True):
        assert (summary["seed"], summary["width"], summary["num_frames"]) == (seed, 64, 9)
        assert Path(summary["output"]).parent == pool_app.output_dir and Path(summary["output"]).is_file()
        hashes.append(output_hash(summary["output"]))
    assert hashes[0] == hashes[2] and hashes[1] == hashes[3] and hashes[0] != hashes[1]
    records = [r for r in pool.history if r.job > before]
    assert len(records) == 4 and all(r.outcome == "ok" for r in records)
    assert {r.worker for r in records} == {0, 1}
    at_once = max(sum(1 for r in records if r.started <= t < r.ended) for t in (r.started for r in records))
    assert at_once == 2, records  # both workers ran together, never more than two jobs
    assert ranks, "no client saw its queue position"
    status = pool_app.engine.status()
    assert status_html(status, "").count('class="worker-line"') == 2


def test_cancel_reaches_the_worker_running_the_job(pool_app):
    from gradio_client.exceptions import AppError

    client, job = submit(pool_app.url, steps=100)
    wait_for(lambda: any(r["phase"] == "stage_1" for r in pool_app.engine.worker_status()), "never reached stage_1")
    client.predict(api_name="/cancel")
    with pytest.raises(AppError, match="cancelled at stage_1 step"):
        job.result(timeout=60)


def test_a_killed_worker_fails_its_job_and_is_restarted(pool_app):
    from gradio_client.exceptions import AppError

    pool, folder = pool_app.engine, pool_app.output_dir
    wait_for(lambda: all(r["state"] == "idle" for r in pool.worker_status()), "workers not idle")
    before, restarts = results_in(folder), pool.restarts
    _client, job = submit(pool_app.url, steps=100)
    wait_for(lambda: any(r["phase"] == "stage_1" for r in pool.worker_status()), "never reached stage_1")
    victim = next(r for r in pool.worker_status() if r["phase"] == "stage_1")
    os.kill(victim["pid"], signal.SIGKILL)
    expected = rf"worker {victim['index']} stopped while running this job \(exit code -9\); it was restarted; try again"
    with pytest.raises(AppError, match=expected):
        job.result(timeout=60)
    assert results_in(folder) == before  # nothing of the killed job in the output folder, not even a staged file
    wait_for(lambda: pool.restarts == restarts + 1, "no restart")
    wait_for(lambda: all(r["state"] == "idle" for r in pool.worker_status()), "the fresh worker never came up")
    assert victim["pid"] not in {r["pid"] for r in pool.worker_status()}
    _client, job = submit(pool_app.url, steps=2)
    _video, summary = job.result(timeout=120)
    assert Path(summary["output"]).is_file()
