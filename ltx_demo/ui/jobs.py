"""The one GPU job: who owns the device, the running job's progress and ETA, cancel by owner, and the one place the
engine's errors become messages (Generate, Reproduce and the other take all run through `run_job`)."""

from __future__ import annotations

import html
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import gradio as gr

from ltx_demo import results
from ltx_demo.types import (
    GenerationCancelled,
    GenerationFailed,
    GenerationRequest,
    GenerationResult,
    InvalidRequest,
    OutOfMemory,
    Progress,
    Quantization,
    VramSample,
)

logger = logging.getLogger(__name__)

# Every event that runs the pipeline shares one queue of one: jobs never overlap on the device, a second click while
# one is pending is dropped.
GPU_JOB = dict(concurrency_limit=1, concurrency_id="gpu", trigger_mode="once")
DENOISING_PHASES = ("stage_1", "stage_2")


class EngineLike(Protocol):
    """What the UI needs from ltx_demo.engine.Engine (typed here so ui.py does not import it, or torch)."""

    bundle: Any
    device: Any
    output_dir: Path
    pins: results.Pins

    def generate(
        self,
        request: GenerationRequest,
        on_progress: Callable[[Progress], None] | None = None,
        cancelled: Callable[[], bool] | None = None,
    ) -> GenerationResult: ...

    def status(self) -> dict: ...

    def live_samples(self) -> tuple[VramSample, ...]: ...

    def memory_now(self) -> VramSample: ...

    def unavailable(self, quantization: str) -> str | None: ...

    def preload(self, quantization: str = ...) -> None: ...


# -- the one GPU job ------------------------------------------------------------------------------------------------
@dataclass
class _Job:
    """Mutable progress of the running job: written from the engine's thread, read by the readout timer."""

    session: str
    request: GenerationRequest
    cancel: threading.Event
    started: float
    phase: str = "waiting"
    step: int | None = None
    total: int | None = None
    steps_started: float | None = None  # when step 0 of the current denoising phase began


def shape_key(request: GenerationRequest) -> tuple:
    return (request.width, request.height, request.num_frames, request.steps, request.quantization, request.residency)


class DemoController:
    """Owns the device for the UI: one job (or preload) at a time, its live progress and ETA, and cancel by owner."""

    def __init__(self, engine: EngineLike, negative_prompt: str) -> None:
        self.engine = engine
        self.negative_prompt = negative_prompt
        self._device = threading.Lock()  # gradio's queue runs one job; this also fences the startup preload
        self._lock = threading.Lock()
        self._jobs: dict[str, _Job] = {}
        self._running: _Job | None = None
        self._outcome = "ready"
        self._elapsed_by_shape: dict[tuple, float] = {}

    # -- options ---------------------------------------------------------------------------------------------------
    def unavailable(self) -> dict[str, str]:
        reasons = {q.value: self.engine.unavailable(q.value) for q in Quantization}
        return {name: reason for name, reason in reasons.items() if reason}

    def default_quantization(self) -> str:
        blocked = self.unavailable()
        preferred = [Quantization.FP8_CAST.value, *(q.value for q in Quantization)]
        return next(name for name in preferred if name not in blocked)

    # -- preload ---------------------------------------------------------------------------------------------------
    def preload_in_background(self, quantization: str) -> threading.Thread:
        """Persistent mode: build every model now (the status line shows "loading <model>"); jobs wait for it."""

        def work() -> None:
            with self._device:
                started = time.perf_counter()
                try:
                    self.engine.preload(quantization)
                except Exception:
                    logger.exception("preload failed; models will be built by the first request instead")
                    return
                logger.info("preloaded every model (%s) in %.1f s", quantization, time.perf_counter() - started)

        thread = threading.Thread(target=work, name="preload", daemon=True)
        thread.start()
        return thread

    # -- run and cancel --------------------------------------------------------------------------------------------
    def run(self, request: GenerationRequest, session: str, report: Callable[[str, int | None, int | None], None]):
        """Run one request through the engine, keeping progress for the readouts; raises what the engine raises."""
        job = _Job(session, request, threading.Event(), time.perf_counter())
        with self._lock:
            self._jobs[session] = job
        try:
            if not self._device.acquire(blocking=False):
                report("waiting for the device (preload or a stopping job)", None, None)
                self._device.acquire()
            try:
                if job.cancel.is_set():
                    raise GenerationCancelled("cancelled before it started")
                job.started = time.perf_counter()
                with self._lock:
                    self._running = job
                result = self.engine.generate(request, lambda p: self._progress(job, p, report), job.cancel.is_set)
            finally:
                with self._lock:
                    self._running = None
                self._device.release()
        except GenerationCancelled as exc:
            self._outcome = f"cancelled ({exc})"
            raise
        except InvalidRequest:
            self._outcome = "last request was refused: invalid input"
            raise
        except Exception as exc:
            self._outcome = f"last run failed: {type(exc).__name__}"
            raise
        finally:
            with self._lock:
                if self._jobs.get(session) is job:
                    del self._jobs[session]
        self._elapsed_by_shape[shape_key(request)] = result.elapsed_seconds
        self._outcome = f"last run: {result.elapsed_seconds:.1f} s, seed {result.seed}"
        return result

    def _progress(self, job: _Job, progress: Progress, report: Callable[[str, int | None, int | None], None]) -> None:
        now = time.perf_counter()
        with self._lock:
            if progress.phase != job.phase:
                job.phase, job.steps_started = progress.phase, None
            job.step, job.total = progress.step, progress.total_steps
            if progress.step == 0:
                job.steps_started = now
        report(self._describe(job, now), progress.step, progress.total_steps)

    def has_job(self, session: str) -> bool:
        with self._lock:
            return session in self._jobs

    def cancel(self, session: str) -> str:
        with self._lock:
            job = self._jobs.get(session)
        if job is None:
            return "Nothing of yours is running."
        job.cancel.set()
        return f"Cancelling: stops after the current step ({job.phase})."

    # -- readouts --------------------------------------------------------------------------------------------------
    def _eta(self, job: _Job, now: float) -> str:
        phase_left = None
        if job.phase in DENOISING_PHASES and job.step and job.total and job.steps_started is not None:
            phase_left = (now - job.steps_started) / job.step * (job.total - job.step)
        previous = self._elapsed_by_shape.get(shape_key(job.request))
        if previous is not None:
            return f"ETA ~{max(previous - (now - job.started), phase_left or 0.0):.0f} s"
        if phase_left is not None:
            return f"ETA ~{phase_left:.0f} s for {job.phase}"
        return "ETA after the first run of this size"

    def _describe(self, job: _Job, now: float) -> str:
        step = f" · step {job.step}/{job.total}" if job.step is not None and job.total else ""
        return f"{job.phase}{step} · {now - job.started:.1f} s · {self._eta(job, now)}"

    def progress_html(self) -> str:
        with self._lock:
            job = self._running
            text = self._describe(job, time.perf_counter()) if job else self._outcome
            fraction = job.step / job.total if job and job.step is not None and job.total else None
        bar = "" if fraction is None else f'<div class="bar"><div style="width:{100 * fraction:.0f}%"></div></div>'
        state = "running" if job else "idle"
        return f'<div class="progress-line" data-state="{state}"><span>{html.escape(text)}</span>{bar}</div>'

    def job_line(self) -> str:
        with self._lock:
            waiting = len(self._jobs) - (1 if self._running else 0)
            return f"{waiting} waiting for the device" if waiting > 0 else ""


def session_of(request: gr.Request | None) -> str:
    """The visitor a call belongs to (a tab's session; API calls without one share "api")."""
    return getattr(request, "session_hash", None) or "api"


def run_job(
    controller: DemoController, generation: GenerationRequest, request: gr.Request | None, progress
) -> GenerationResult:
    """Run one request for this visitor and turn what the engine raises into a message they can act on."""

    def report(text: str, step: int | None, total: int | None) -> None:
        progress((step, total) if step is not None and total else None, desc=text)

    try:
        return controller.run(generation, session_of(request), report)
    except InvalidRequest as exc:
        raise gr.Error(str(exc), title="Check your input") from None
    except GenerationCancelled as exc:
        raise gr.Error(f"Stopped: {exc}. Nothing was written.", title="Cancelled") from None
    except GenerationFailed as exc:  # out of memory, disk full: the message says what to try
        title = "Out of memory" if isinstance(exc, OutOfMemory) else "Could not finish"
        raise gr.Error(str(exc), title=title) from None
    except Exception as exc:
        logger.exception("generation failed")
        raise gr.Error(f"{type(exc).__name__}: {exc}", title="Generation failed") from None
