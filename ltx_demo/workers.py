"""The worker pool behind `python app.py --gpus 0,1` (or `cpu:2`): one engine process per device, each job sent to an
idle one. The pool answers the UI as one engine does (generate, status, memory), keeps the pins and prunes the output
folder; a worker that dies fails its job with a clear message and is started again. Torch-free in this process.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import itertools
import logging
import multiprocessing as mp
import queue
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ltx_demo import results
from ltx_demo.devices import ProcessDevices, enter_child
from ltx_demo.results import KeepPolicy, Pins
from ltx_demo.types import (
    Flow,
    GenerationCancelled,
    GenerationFailed,
    GenerationRequest,
    GenerationResult,
    InvalidRequest,
    LoraMode,
    OutOfMemory,
    Progress,
    Quantization,
    TextEncoderQuantization,
    VramSample,
)

logger = logging.getLogger(__name__)
STATUS_INTERVAL_S = 0.5  # how often a worker sends its status and memory (the page polls twice a second)
START_TIMEOUT_S = 600.0  # a worker imports torch and builds its engine (no models) in seconds; generous for CI
POLL_S = 0.1  # how often a waiting job looks at its cancel flag
HISTORY = 200  # job records kept (worker, start, end, outcome): the log the tests and the bench read


class WorkerStopped(GenerationFailed):
    """The worker process running the job died (killed, crashed, out of host memory); a fresh one was started."""


class WorkerError(RuntimeError):
    """An unexpected error inside a worker (a bug): its type and message, as the worker saw them."""


# What a worker's exceptions become here, by kind: the UI turns each into its message (ui/jobs.run_job).
_ERRORS: dict[str, type[Exception]] = {
    "invalid": InvalidRequest,
    "cancelled": GenerationCancelled,
    "oom": OutOfMemory,
    "failed": GenerationFailed,
}


def _error_kind(exc: BaseException) -> str:
    for kind in ("invalid", "cancelled", "oom", "failed"):  # OutOfMemory before its base GenerationFailed
        if isinstance(exc, _ERRORS[kind]):
            return kind
    return "error"


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    """What one worker process builds its engine from: the app's bundle flags, its device and its environment."""

    index: int
    label: str
    device: str
    environment: dict[str, str]
    args: argparse.Namespace
    scratch: str  # the worker's TMPDIR: its work files, removed by the pool when the worker dies


@dataclass(frozen=True, slots=True)
class JobRecord:
    """One job as the pool ran it (time.time() seconds)."""

    job: int
    worker: int
    started: float
    ended: float
    outcome: str  # "ok", or the error's type


@dataclass
class _Job:
    """A job in flight: filled in by the worker's reader thread, waited on by generate()."""

    number: int
    on_progress: Callable[[Progress], None]
    done: threading.Event = field(default_factory=threading.Event)
    result: GenerationResult | None = None
    error: Exception | None = None

    def finish(self, result: GenerationResult | None = None, error: Exception | None = None) -> None:
        self.result, self.error = result, error
        self.done.set()


class _Worker:
    """This process's handle on one worker process: its pipe, its cancel flag, its last status, its job."""

    def __init__(self, spec: WorkerSpec, context) -> None:
        self.spec = spec
        self.cancel = context.Event()
        self.conn, child_conn = context.Pipe()
        self.process = context.Process(
            target=worker_main, args=(spec, child_conn, self.cancel), name=f"ltx-worker-{spec.index}", daemon=True
        )
        self.ready = threading.Event()
        self.info: dict[str, Any] = {}
        self.status: dict[str, Any] = {}
        self.memory: VramSample | None = None
        self.samples: tuple[VramSample, ...] = ()
        self.job: _Job | None = None
        self.job_started = 0.0
        self.progress: Progress | None = None  # its job's last progress
        self.stopped = False
        self._send_lock = threading.Lock()
        self.process.start()
        child_conn.close()

    @property
    def index(self) -> int:
        return self.spec.index

    def send(self, message: tuple) -> None:
        with self._send_lock:
            self.conn.send(message)


class WorkerPool:
    """Several engines behind one engine's face (ui.jobs.EngineLike): `workers` jobs run at once, one per process."""

    def __init__(self, args: argparse.Namespace, devices: ProcessDevices, bundle, keep_outputs: KeepPolicy) -> None:
        self.bundle = bundle
        self.output_dir = Path(args.output_dir)
        self.keep_outputs = keep_outputs
        self.pins = Pins()
        self.devices = devices
        self.device = devices.describe()
        self.workers = devices.count
        self.history: collections.deque[JobRecord] = collections.deque(maxlen=HISTORY)
        self._args = argparse.Namespace(**vars(args))
        self._context = mp.get_context("spawn")
        self._scratch = Path(tempfile.mkdtemp(prefix="ltx-demo-workers-"))
        self._idle: queue.Queue[_Worker] = queue.Queue()
        self._lock = threading.Lock()
        self._numbers = itertools.count(1)
        self._closing = False
        self.restarts = 0
        self._workers = [self._start(i) for i in range(devices.count)]
        for worker in self._workers:
            if not worker.ready.wait(START_TIMEOUT_S) or worker.stopped:
                self.close()
                raise RuntimeError(f"worker {worker.index} ({worker.spec.label}) did not start: see the log above")
        logger.info("%d workers ready: %s", self.workers, ", ".join(w.info.get("device", "?") for w in self._workers))

    # -- workers ---------------------------------------------------------------------------------------------------
    def _start(self, index: int) -> _Worker:
        scratch = self._scratch / f"worker-{index}-{time.time_ns()}"
        scratch.mkdir(parents=True)
        args = argparse.Namespace(**vars(self._args))
        args.device = self.devices.device(index)  # the child sees only its own GPU, as cuda:0
        environment = self.devices.child_environment(index) | {"TMPDIR": str(scratch)}
        spec = WorkerSpec(index, self.devices.label(index), args.device, environment, args, str(scratch))
        worker = _Worker(spec, self._context)
        threading.Thread(target=self._read, args=(worker,), name=f"worker-{index}-reader", daemon=True).start()
        return worker

    def _read(self, worker: _Worker) -> None:
        """Everything a worker sends, until its pipe closes; then, unless the pool is closing, start it again."""
        while True:
            try:
                message = worker.conn.recv()
            except (EOFError, OSError):
                break
            kind = message[0]
            if kind == "status":
                _, worker.status, worker.memory, samples = message
                if samples is not None:
                    worker.samples = samples
            elif kind == "progress" and worker.job is not None:
                worker.progress = message[1]
                worker.job.on_progress(message[1])
            elif kind == "result" and worker.job is not None:
                worker.job.finish(result=message[1])
            elif kind == "error" and worker.job is not None:
                _, error_kind, type_name, text = message
                error = _ERRORS.get(error_kind)
                worker.job.finish(error=error(text) if error else WorkerError(f"{type_name}: {text}"))
            elif kind == "ready":
                worker.info = message[1]
                worker.ready.set()
                self._idle.put(worker)
            elif kind == "preloaded":
                worker.info["preloaded"] = message[1]
        self._stopped(worker)

    def _stopped(self, worker: _Worker) -> None:
        worker.process.join(timeout=10)
        code = worker.process.exitcode
        worker.stopped = True
        worker.ready.set()  # whoever waits for its start learns it stopped
        shutil.rmtree(worker.spec.scratch, ignore_errors=True)  # its half-made work files
        if self._closing:
            return
        job = worker.job
        logger.error("worker %d (%s) stopped (exit code %s)%s", worker.index, worker.spec.label, code,
                     " while running a job" if job else "")  # fmt: skip
        with self._lock:
            self._workers[worker.index] = self._start(worker.index)
            self.restarts += 1
        if job is not None:
            job.finish(error=_stopped_error(worker))

    def _take_idle(self, cancelled: Callable[[], bool]) -> _Worker:
        while True:
            if cancelled():
                raise GenerationCancelled("cancelled before it started")
            try:
                worker = self._idle.get(timeout=POLL_S)
            except queue.Empty:
                continue
            if not worker.stopped:  # one that died while idle is dropped here; its successor queues itself
                return worker

    # -- the engine's face -----------------------------------------------------------------------------------------
    def generate(
        self,
        request: GenerationRequest,
        on_progress: Callable[[Progress], None] | None = None,
        cancelled: Callable[[], bool] | None = None,
    ) -> GenerationResult:
        """Run `request` on the first idle worker; cancel reaches it through its cancel flag."""
        cancelled = cancelled or (lambda: False)
        job = _Job(next(self._numbers), on_progress or (lambda _p: None))
        worker = self._take_idle(cancelled)
        started = time.time()
        try:
            worker.cancel.clear()
            worker.job, worker.job_started, worker.progress = job, started, None
            worker.send(("generate", request))
        except (OSError, EOFError):  # it died as we sent: its reader thread starts another
            pass
        try:
            while not job.done.wait(POLL_S):
                if cancelled() and not worker.cancel.is_set():
                    worker.cancel.set()
                if worker.stopped and not job.done.wait(1.0):  # it died before its reader saw this job
                    job.finish(error=_stopped_error(worker))
        finally:
            worker.job = None
            if not worker.stopped:
                self._idle.put(worker)
        error = job.error
        self.history.append(JobRecord(job.number, worker.index, started, time.time(), type(error).__name__ if error
                                      else "ok"))  # fmt: skip
        if error is not None:
            raise error
        assert job.result is not None
        self._prune(Path(job.result.output))
        return job.result

    def _prune(self, output: Path) -> None:
        """The workers keep every result; the pool prunes, with its pins (the pages it serves)."""
        if not self.keep_outputs.unlimited and output.parent.resolve() == self.output_dir.resolve():
            results.prune(self.output_dir, self.keep_outputs, protect={output, *self.pins.pinned()})

    def worker_status(self) -> list[dict]:
        """One entry per worker: its device, state, pid, memory now, what is resident, its job's phase."""
        with self._lock:
            workers = list(self._workers)
        rows = []
        for worker in workers:
            state = "starting" if not worker.ready.is_set() else "running" if worker.job is not None else "idle"
            progress = worker.progress if worker.job is not None else None
            rows.append(
                {
                    "index": worker.index,
                    "label": worker.spec.label,
                    "device": worker.info.get("device", worker.spec.device),
                    "pid": worker.process.pid,
                    "state": state,
                    "loading": worker.status.get("loading"),
                    "phase": progress.phase if progress else None,
                    "step": (progress.step, progress.total_steps) if progress and progress.step is not None else None,
                    "resident": worker.status.get("resident", []),
                    "memory": dataclasses.asdict(worker.memory) if worker.memory else None,
                    "environment": worker.info.get("environment", {}),
                }
            )
        return rows

    def status(self) -> dict:
        rows = self.worker_status()
        first = self._workers[0].status
        return {
            "device": self.device,
            "cuda": self.devices.cuda,
            "busy": any(r["state"] == "running" for r in rows),
            "loading": next((r["loading"] for r in rows if r["loading"]), None),
            "resident": first.get("resident", []),
            "residency": first.get("residency", {}),
            "synthetic": self.bundle.synthetic,
            "workers": rows,
            "restarts": self.restarts,
        }

    def live_samples(self) -> tuple[VramSample, ...]:
        """The memory plot's samples: the most recently started running job's worker, else the last one that ran."""
        with self._lock:
            workers = list(self._workers)
        running = [w for w in workers if w.job is not None]
        pick = max(running or workers, key=lambda w: w.job_started)
        return pick.samples

    def memory_now(self) -> VramSample:
        samples = self.live_samples()
        memory = next((w.memory for w in self._workers if w.memory is not None), None)
        return memory or (samples[-1] if samples else VramSample(0.0, "idle", None, None, None, None, None, 0))

    def unavailable(self, quantization: str, lora_mode: str = LoraMode.ADAPTER.value) -> str | None:
        return self._workers[0].info["unavailable"].get(f"{quantization}/{lora_mode}")

    def text_encoder_unavailable(self, text_encoder_quantization: str) -> str | None:
        return self._workers[0].info["text_encoder_unavailable"].get(text_encoder_quantization)

    def enhancement_unavailable(self) -> str | None:
        return self._workers[0].info["enhancement_unavailable"]

    def default_text_encoder_quantization(self) -> str:
        return self._workers[0].info["default_text_encoder_quantization"]

    def default_quantization(self, flow: str = Flow.FAST.value) -> str:
        return self._workers[0].info["default_quantization"][str(flow)]

    def preload(self, quantization: str | None = None) -> None:
        """Every worker builds its models (persistent); returns once all have (or have failed: logged)."""
        with self._lock:
            workers = list(self._workers)
        for worker in workers:
            worker.send(("preload", quantization))
        deadline = time.monotonic() + START_TIMEOUT_S
        while any("preloaded" not in w.info and not w.stopped for w in workers) and time.monotonic() < deadline:
            time.sleep(POLL_S)

    def close(self) -> None:
        """Stop every worker (their models go with them)."""
        self._closing = True
        for worker in self._workers:
            try:
                worker.send(("stop",))
            except (OSError, EOFError):
                pass
        for worker in self._workers:
            worker.process.join(timeout=10)
            if worker.process.is_alive():
                worker.process.kill()
        shutil.rmtree(self._scratch, ignore_errors=True)


def _stopped_error(worker: _Worker) -> WorkerStopped:
    return WorkerStopped(
        f"worker {worker.index} stopped while running this job (exit code {worker.process.exitcode}); it was "
        "restarted; try again. Nothing was saved"
    )


# -- the worker process ----------------------------------------------------------------------------------------------
def worker_main(spec: WorkerSpec, conn, cancel) -> None:
    """One worker: its device and environment before torch, one Engine, then jobs from the pipe until told to stop."""
    enter_child(spec.environment)
    logging.basicConfig(
        level=logging.INFO, format=f"%(asctime)s %(levelname)s worker {spec.index} %(name)s: %(message)s"
    )
    for noisy in ("httpx", "urllib3", "ltx_core", "ltx_pipelines", "transformers"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from ltx_demo.cli_flags import engine_from_args

    engine = engine_from_args(spec.args, keep_outputs=KeepPolicy())  # keeps every result: the pool prunes
    lock = threading.Lock()

    def send(message: tuple) -> None:
        with lock:
            conn.send(message)

    send(("ready", _capabilities(engine, spec)))
    stop = threading.Event()
    threading.Thread(target=_report_status, args=(engine, send, stop), name="status", daemon=True).start()
    try:
        while True:
            message = conn.recv()
            if message[0] == "stop":
                break
            if message[0] == "generate":
                _run_job(engine, message[1], send, cancel)
            elif message[0] == "preload":
                try:
                    engine.preload(message[1])
                    send(("preloaded", True))
                except Exception:
                    logger.exception("preload failed; the first request builds the models instead")
                    send(("preloaded", False))
    except (EOFError, OSError):
        pass  # the pool went away
    finally:
        stop.set()


def _run_job(engine, request: GenerationRequest, send, cancel) -> None:
    try:
        result = engine.generate(request, lambda p: send(("progress", p)), cancel.is_set)
    except Exception as exc:
        kind = _error_kind(exc)
        if kind == "error":
            logger.exception("generation failed")
        send(("error", kind, type(exc).__name__, str(exc)))
        return
    send(("result", result))


def _report_status(engine, send, stop: threading.Event) -> None:
    """Status and memory every STATUS_INTERVAL_S; the samples only when they changed."""
    last_key = None
    while not stop.wait(STATUS_INTERVAL_S):
        try:
            samples = engine.live_samples()
            key = (len(samples), samples[-1].t if samples else None)
            send(("status", engine.status(), engine.memory_now(), samples if key != last_key else None))
            last_key = key
        except (OSError, EOFError, BrokenPipeError):
            return
        except Exception:
            logger.exception("status report failed")


def _capabilities(engine, spec: WorkerSpec) -> dict:
    """What the pool answers for the UI and check_request without asking: what runs on this worker's device."""
    import os

    import torch

    return {
        "pid": os.getpid(),
        "device": f"cuda ({torch.cuda.get_device_name(0)})" if spec.device == "cuda" else "cpu",
        "unavailable": {
            f"{q.value}/{m.value}": engine.unavailable(q.value, m.value) for q in Quantization for m in LoraMode
        },
        "text_encoder_unavailable": {
            t.value: engine.text_encoder_unavailable(t.value) for t in TextEncoderQuantization
        },
        "enhancement_unavailable": engine.enhancement_unavailable(),
        "default_text_encoder_quantization": engine.default_text_encoder_quantization(),
        "default_quantization": {f.value: engine.default_quantization(f.value) for f in Flow},
        "environment": {name: os.environ.get(name) for name in spec.environment},
    }
