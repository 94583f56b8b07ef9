"""Phase timer (device sync, then clock) and memory sampler (torch.cuda, NVML, process RSS) for one run."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import psutil
import torch

from ltx_demo.types import PhaseTiming, VramSample

logger = logging.getLogger(__name__)
SAMPLE_INTERVAL_S = 0.25


def device_sync(device: torch.device) -> None:
    """Never read a clock for GPU work without this first."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def nvml_handle(pynvml, index: int):
    """NVML's handle for torch's device `index`. NVML numbers every GPU of the machine and ignores
    CUDA_VISIBLE_DEVICES, so a worker that sees only GPU 1 (as its cuda:0) is matched by the GPU's UUID."""
    uuid = str(getattr(torch.cuda.get_device_properties(index), "uuid", "") or "")
    if uuid:
        try:
            return pynvml.nvmlDeviceGetHandleByUUID(uuid if uuid.startswith("GPU-") else f"GPU-{uuid}")
        except Exception:
            logger.debug("NVML does not know GPU %s by its UUID; using index %d", uuid, index)
    return pynvml.nvmlDeviceGetHandleByIndex(index)


class DeviceMemory:
    """Reads process allocator stats (torch.cuda) and whole-device usage (NVML) for one device."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._nvml_handle = None
        self._process = psutil.Process()
        if device.type == "cuda":
            try:
                import pynvml

                pynvml.nvmlInit()
                index = device.index if device.index is not None else torch.cuda.current_device()
                self._nvml_handle = nvml_handle(pynvml, index)
            except Exception as exc:
                logger.warning("NVML unavailable (%s): device-wide memory will not be shown", exc)

    def rss(self) -> int:
        return self._process.memory_info().rss

    def sample(self, t: float, phase: str) -> VramSample:
        allocated = reserved = peak = used = total = None
        if self.device.type == "cuda":
            allocated = torch.cuda.memory_allocated(self.device)
            reserved = torch.cuda.memory_reserved(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
            if self._nvml_handle is not None:
                import pynvml

                info = pynvml.nvmlDeviceGetMemoryInfo(self._nvml_handle)
                used, total = int(info.used), int(info.total)
        return VramSample(t, phase, allocated, reserved, peak, used, total, self.rss())


@dataclass
class _PhaseRecord:
    name: str
    started_at: float
    seconds: float = 0.0
    peak_vram: int | None = None
    peak_rss: int = 0


@dataclass
class RunTelemetry:
    """One run's clock, phases and memory samples. Phases may nest (a model load inside stage_1): the inner time
    is not counted in the outer phase, so the phase seconds add up to the elapsed time."""

    memory: DeviceMemory
    started: float = field(default_factory=time.perf_counter)
    samples: list[VramSample] = field(default_factory=list)
    _records: dict[str, _PhaseRecord] = field(default_factory=dict)
    _stack: list[tuple[str, float]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    counters: dict[str, int] = field(default_factory=dict)

    def increment(self, name: str, by: int = 1) -> None:
        with self._lock:
            self.counters[name] = self.counters.get(name, 0) + by

    @property
    def device(self) -> torch.device:
        return self.memory.device

    def now(self) -> float:
        return time.perf_counter() - self.started

    def current_phase(self) -> str:
        with self._lock:
            return self._stack[-1][0] if self._stack else "idle"

    def _close_segment(self, name: str, segment_start: float) -> None:
        device_sync(self.device)
        now = self.now()
        record = self._records[name]
        record.seconds += now - segment_start
        if self.device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(self.device)
            record.peak_vram = max(record.peak_vram or 0, peak)
        record.peak_rss = max(record.peak_rss, self.memory.rss())

    def _open_segment(self) -> float:
        device_sync(self.device)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        return self.now()

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        with self._lock:
            if self._stack:
                outer, outer_start = self._stack.pop()
                self._close_segment(outer, outer_start)
                self._stack.append((outer, outer_start))
            self._records.setdefault(name, _PhaseRecord(name, self.now()))
            self._stack.append((name, self._open_segment()))
        self.record_sample()
        try:
            yield
        finally:
            with self._lock:
                _, start = self._stack.pop()
                self._close_segment(name, start)
                if self._stack:
                    outer, _ = self._stack.pop()
                    self._stack.append((outer, self._open_segment()))
            self.record_sample()

    def record_sample(self) -> VramSample:
        """A memory sample; it counts toward the open phase's peak RSS (which is not just the RSS at its end)."""
        sample = self.memory.sample(self.now(), self.current_phase())
        with self._lock:
            self.samples.append(sample)
            if self._stack and self._stack[-1][0] == sample.phase:
                record = self._records[sample.phase]
                record.peak_rss = max(record.peak_rss, sample.rss_bytes)
        return sample

    def start_sampling(self, interval_s: float = SAMPLE_INTERVAL_S) -> None:
        def loop() -> None:
            while not self._stop.wait(interval_s):
                self.record_sample()

        self._thread = threading.Thread(target=loop, name="memory-sampler", daemon=True)
        self._thread.start()

    def stop_sampling(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.record_sample()

    def phases(self) -> tuple[PhaseTiming, ...]:
        with self._lock:
            return tuple(
                PhaseTiming(r.name, r.seconds, r.peak_vram, r.peak_rss, r.started_at) for r in self._records.values()
            )

    def peak_vram(self) -> int | None:
        values = [r.peak_vram for r in self._records.values() if r.peak_vram is not None]
        return max(values) if values else None

    def peak_rss(self) -> int:
        return max([s.rss_bytes for s in self.samples] + [r.peak_rss for r in self._records.values()] + [0])

    def samples_snapshot(self) -> tuple[VramSample, ...]:
        with self._lock:
            return tuple(self.samples)
