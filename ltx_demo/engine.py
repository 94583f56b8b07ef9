"""One facade for the app, the CLI and the benchmarks: generate(request, on_progress) -> GenerationResult.

Validates first, then runs the flow with the residency layer and telemetry, one job at a time, and writes the mp4
and its parameters JSON atomically into the output folder.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import torch

from ltx_demo import media
from ltx_demo.checkpoints import Bundle
from ltx_demo.pipeline import run_two_stage, write_mp4
from ltx_demo.quantization import unavailable_reason
from ltx_demo.residency import ModelConfig, ModelResidency
from ltx_demo.settings import Quantization, Residency
from ltx_demo.telemetry import DeviceMemory, RunTelemetry
from ltx_demo.types import GenerationRequest, GenerationResult, InvalidRequest, Progress, VramSample

logger = logging.getLogger(__name__)


def pick_device(requested: str | None) -> torch.device:
    if requested:
        device = torch.device(requested)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise InvalidRequest(f"--device {requested}: no CUDA device is visible here")
        return device
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def compute_dtype_for(device: torch.device) -> torch.dtype:
    """bf16 on GPUs; float32 on CPUs, where bf16 convolutions are ~40x slower than float32."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


class Engine:
    def __init__(self, bundle: Bundle, output_dir: Path, device: str | None = None) -> None:
        self.bundle = bundle
        self.output_dir = Path(output_dir)
        self.device = pick_device(device)
        self.compute_dtype = compute_dtype_for(self.device)
        self.loading: str | None = None
        self.models = ModelResidency(bundle, self.device, self.compute_dtype, on_loading=self._set_loading)
        self.memory = DeviceMemory(self.device)
        self._job_lock = threading.Lock()
        self._current: RunTelemetry | None = None
        self._last: RunTelemetry | None = None

    def _set_loading(self, name: str | None) -> None:
        self.loading = name

    # -- what the UI shows ---------------------------------------------------------------------------------------
    def unavailable(self, quantization: str) -> str | None:
        return unavailable_reason(Quantization(quantization), self.device)

    def status(self) -> dict:
        resident = list(self.models.resident())
        return {
            "device": str(self.device),
            "cuda": self.device.type == "cuda",
            "busy": self._job_lock.locked(),
            "loading": self.loading,
            "resident": resident,
            "synthetic": self.bundle.synthetic,
        }

    def live_samples(self) -> tuple[VramSample, ...]:
        """The running job's samples, else the last finished job's."""
        run = self._current or self._last
        return run.samples_snapshot() if run else ()

    def memory_now(self) -> VramSample:
        return self.memory.sample(0.0, "idle")

    def preload(self, quantization: str = "fp8-cast", lora_strength: float = 1.0) -> None:
        """Persistent mode: build every model now, so the first request pays no load."""
        self.models.configure(ModelConfig(Quantization(quantization), Residency.PERSISTENT, lora_strength))
        from ltx_demo.residency import MODEL_NAMES  # noqa: PLC0415

        for name in MODEL_NAMES:
            with self.models.use(name):
                pass

    # -- the job -------------------------------------------------------------------------------------------------
    def generate(
        self,
        request: GenerationRequest,
        on_progress: Callable[[Progress], None] | None = None,
        cancelled: Callable[[], bool] | None = None,
    ) -> GenerationResult:
        on_progress = on_progress or (lambda _p: None)
        cancelled = cancelled or (lambda: False)
        work_dir = Path(tempfile.mkdtemp(prefix="ltx-demo-"))
        try:
            inputs = media.prepare_inputs(request, work_dir)  # every check, before any model is built
            reason = self.unavailable(request.quantization)
            if reason:
                raise InvalidRequest(f"quantization {request.quantization} cannot run here: {reason}")
            with self._job_lock:
                return self._run(request, inputs, work_dir, on_progress, cancelled)
        finally:
            shutil.rmtree(work_dir, ignore_errors=True)

    def _run(self, request, inputs, work_dir, on_progress, cancelled) -> GenerationResult:  # noqa: ANN001
        config = ModelConfig(Quantization(request.quantization), Residency(request.residency),
                             request.distilled_lora_strength)  # fmt: skip
        telemetry = RunTelemetry(self.memory)
        self._current = telemetry
        telemetry.start_sampling()
        resident_before = self.models.resident()
        try:
            with telemetry.phase("load:configure"):
                self.models.configure(config)  # releases what another config held, before building anything
            with torch.inference_mode():
                clip = run_two_stage(request, inputs, self.models, telemetry, on_progress, cancelled)
            on_progress(Progress("encode_mp4"))
            partial = work_dir / "output.mp4"
            with telemetry.phase("encode_mp4"):
                write_mp4(clip, request.frame_rate, partial)
        except BaseException:
            if config.residency is Residency.COLD_START:
                self.models.release_all()
            raise
        finally:
            telemetry.stop_sampling()
            self._current = None
            self._last = telemetry
        elapsed = telemetry.now()
        output = self._publish(partial, request)
        result = GenerationResult(
            output=str(output),
            request=request,
            elapsed_seconds=elapsed,
            peak_vram_bytes=telemetry.peak_vram(),
            peak_rss_bytes=telemetry.peak_rss(),
            width=request.width,
            height=request.height,
            num_frames=request.num_frames,
            frame_rate=request.frame_rate,
            seed=request.seed,
            quantization=request.quantization,
            compute_dtype=str(self.compute_dtype).removeprefix("torch."),
            residency=request.residency,
            device=self._device_name(),
            synthetic=self.bundle.synthetic,
            audio_note=inputs.audio_note,
            phases=telemetry.phases(),
            samples=telemetry.samples_snapshot(),
            resident_before=resident_before,
            resident_after=self.models.resident(),
            bundle=self.bundle.describe(),
        )
        self._write_params(output, result)
        on_progress(Progress("done"))
        return result

    def _device_name(self) -> str:
        if self.device.type == "cuda":
            return f"cuda ({torch.cuda.get_device_name(self.device)})"
        return "cpu"

    def _publish(self, partial: Path, request: GenerationRequest) -> Path:
        """Move the finished mp4 into the output folder under a new name (rename: never a half-written result)."""
        if request.output_path:
            output = Path(request.output_path)
        else:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            output = self.output_dir / f"{stamp}_seed{request.seed}_{uuid.uuid4().hex[:6]}.mp4"
        output.parent.mkdir(parents=True, exist_ok=True)
        staged = output.with_name(f".{output.name}.partial")
        shutil.copyfile(partial, staged)
        os.replace(staged, output)
        return output

    def _write_params(self, output: Path, result: GenerationResult) -> None:
        params = {"request": asdict(result.request), "result": result.summary()}
        sidecar = output.with_suffix(".json")
        staged = sidecar.with_name(f".{sidecar.name}.partial")
        staged.write_text(json.dumps(params, indent=2) + "\n")
        os.replace(staged, sidecar)
