"""The one GPU job: who owns the device, the running job's progress and ETA, cancel by owner, and the one place the
engine's errors become messages (Generate, Reproduce and the other take all run through `run_job`)."""

from __future__ import annotations

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
from ltx_demo.ui.progress import PhaseClock, overall, progress_line_html

logger = logging.getLogger(__name__)

# Every event that runs the pipeline shares one queue ("gpu") as wide as the queue's default concurrency: app.py sets
# it to the number of engines (1, or one worker per GPU with --gpus), so jobs never share a device; a second click
# while one is pending is dropped.
GPU_JOB = dict(concurrency_limit="default", concurrency_id="gpu", trigger_mode="once")


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
    phase: str = "waiting"  # then "starting" once it has the device, then the flow's phases (never a load:*)
    phase_started: float = 0.0
    step: int | None = None
    total: int | None = None
    unit: str = "step"  # what the steps count (denoising steps, the decoder's chunks, the frames encoded)


def shape_key(request: GenerationRequest) -> tuple:
    return (request.width, request.height, request.num_frames, request.steps, request.quantization, request.residency)


class DemoController:
    """Owns the device for the UI: one job (or preload) at a time, its live progress and ETA, cancel by owner, and
    each visitor's own last outcome (a fresh tab shows none of another visitor's)."""

    def __init__(self, engine: EngineLike, negative_prompt: str) -> None:
        self.engine = engine
        self.negative_prompt = negative_prompt
        self.slots = max(1, int(getattr(engine, "workers", 1)))  # engines that run a job each (workers.WorkerPool)
        # As many jobs as engines (gradio's queue admits as many); this also fences the startup preload.
        self._device = threading.BoundedSemaphore(self.slots)
        self._lock = threading.Lock()
        self._jobs: dict[str, _Job] = {}
        self._running: list[_Job] = []
        self._outcomes: dict[str, str] = {}  # by session
        self._phases_by_shape: dict[tuple, dict[str, float]] = {}  # the last run of a shape: seconds per phase

    # -- options ---------------------------------------------------------------------------------------------------
    def unavailable(self) -> dict[str, str]:
        reasons = {q.value: self.engine.unavailable(q.value) for q in Quantization}
        return {name: reason for name, reason in reasons.items() if reason}

    def default_quantization(self) -> str:
        blocked = self.unavailable()
        preferred = [self.engine.default_quantization(), *(q.value for q in Quantization)]
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
    def run(self, request: GenerationRequest, session: str) -> GenerationResult:
        """Run one request through the engine, keeping progress for the readouts; raises what the engine raises."""
        job = _Job(session, request, threading.Event(), time.perf_counter())
        with self._lock:
            self._jobs[session] = job
        try:
            self._device.acquire()  # free unless the startup preload holds it
            try:
                if job.cancel.is_set():
                    raise GenerationCancelled("cancelled before it started")
                with self._lock:
                    job.started = job.phase_started = time.perf_counter()
                    job.phase = "starting"  # it has the device: configuring the run until the flow's first phase
                    self._running.append(job)
                result = self.engine.generate(request, lambda p: self._progress(job, p), job.cancel.is_set)
            finally:
                with self._lock:
                    if job in self._running:
                        self._running.remove(job)
                self._device.release()
        except GenerationCancelled as exc:
            text = str(exc)
            self._outcomes[session] = text if text.startswith("cancelled") else f"cancelled ({text})"
            raise
        except InvalidRequest:
            self._outcomes[session] = "your last request was refused: see the message"
            raise
        except Exception as exc:
            self._outcomes[session] = f"your last run failed: {type(exc).__name__}"
            raise
        finally:
            with self._lock:
                if self._jobs.get(session) is job:
                    del self._jobs[session]
        self._phases_by_shape[shape_key(request)] = {p.name: p.seconds for p in result.phases}
        self._outcomes[session] = f"your last run: {result.elapsed_seconds:.1f} s, seed {result.seed}"
        return result

    def _progress(self, job: _Job, progress: Progress) -> None:
        now = time.perf_counter()
        with self._lock:
            if progress.phase.startswith("load:"):
                return  # the status line says what loads; the phase it loads for goes on
            if progress.phase != job.phase:
                job.phase, job.phase_started, job.step, job.total = progress.phase, now, None, None
            if progress.step is not None:
                job.step, job.total, job.unit = progress.step, progress.total_steps, progress.unit

    def has_job(self, session: str) -> bool:
        with self._lock:
            return session in self._jobs

    def cancel(self, session: str, announce: Callable[[str], None] = lambda _message: None) -> str:
        """Stop this visitor's job between steps. `announce` gets the message first, before the flag is set: the
        job cannot stop (and the status line say idle) before the visitor has been told."""
        with self._lock:
            job = self._jobs.get(session)
        if job is None:
            message = "Nothing of yours is running."
        else:
            message = f"Cancelling: stops after the current step ({job.phase}); nothing will be written."
        announce(message)
        if job is not None:
            job.cancel.set()
        return message

    # -- readouts --------------------------------------------------------------------------------------------------
    def _describe(self, job: _Job, now: float, loading: str | None) -> tuple[str, float]:
        clock = PhaseClock(job.phase, now - job.started, now - job.phase_started, job.step, job.total)
        fraction, left = overall(clock, self._phases_by_shape.get(shape_key(job.request)))
        parts = [job.phase]
        if loading:
            parts.append(f"loading {loading}")
        if job.step is not None and job.total:
            parts.append(f"{job.unit} {job.step}/{job.total}")
        parts.append(f"{clock.elapsed:.1f} s")
        parts.append("ETA after the first steps" if left is None else f"ETA ~{max(left, 1):.0f} s for the run")
        return " · ".join(parts), fraction

    def progress_html(self, session: str, loading: str | None = None) -> str:
        """This visitor's progress line: their running job (phase, steps, overall bar and ETA), that another
        visitor's job has the device, or their own last outcome."""
        with self._lock:
            mine = self._jobs.get(session)
            if mine is not None and mine in self._running:
                text, fraction = self._describe(mine, time.perf_counter(), loading)
                return progress_line_html(text, fraction, "running")
            others = list(self._running)
        job = others[-1] if others else None
        if mine is not None:
            holder = f"another visitor's run ({job.phase})" if job else "the startup preload or a stopping job"
            if self.slots > 1:
                return progress_line_html(f"waiting for a device: {len(others)} of {self.slots} busy", None, "waiting")
            return progress_line_html(f"waiting for the device: {holder} has it", None, "waiting")
        if job is not None:
            if self.slots > 1:
                text = f"other visitors' runs have {len(others)} of {self.slots} devices ({job.phase})"
                return progress_line_html(text, None, "busy")
            return progress_line_html(f"another visitor's run has the device ({job.phase})", None, "busy")
        return progress_line_html(self._outcomes.get(session, "ready"), None, "idle")

    def job_line(self) -> str:
        with self._lock:
            waiting = len(self._jobs) - len(self._running)
            return f"{waiting} waiting for the device" if waiting > 0 else ""


def session_of(request: gr.Request | None) -> str:
    """The visitor a call belongs to (a tab's session; API calls without one share "api")."""
    return getattr(request, "session_hash", None) or "api"


def refuse(message: str, title: str) -> gr.Error:
    """The message a visitor sees for their own mistake (or a refusal they can act on): logged as one line, and
    without the traceback gradio would otherwise print for every gr.Error."""
    logger.info("refused (%s): %s", title, message)
    return gr.Error(message, title=title, print_exception=False)


def run_job(controller: DemoController, generation: GenerationRequest, request: gr.Request | None) -> GenerationResult:
    """Run one request for this visitor and turn what the engine raises into a message they can act on. Progress is
    the page's progress line (the readout timer): gradio's own bar would be a second display that disagrees."""
    try:
        return controller.run(generation, session_of(request))
    except InvalidRequest as exc:
        raise refuse(str(exc), "Check your input") from None
    except GenerationCancelled as exc:
        raise refuse(f"Stopped: {exc}. Nothing was written.", "Cancelled") from None
    except GenerationFailed as exc:  # out of memory, disk full: the message says what to try
        raise refuse(str(exc), "Out of memory" if isinstance(exc, OutOfMemory) else "Could not finish") from None
    except Exception as exc:
        logger.exception("generation failed")  # a bug: the traceback once, here
        raise gr.Error(f"{type(exc).__name__}: {exc}", title="Generation failed", print_exception=False) from None
