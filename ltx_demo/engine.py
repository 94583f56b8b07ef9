"""One facade for the app, the CLI and the benchmarks: generate(request, on_progress) -> GenerationResult.

Validates first, then runs the flow with the residency layer and telemetry, one job at a time, and writes the mp4
and its parameters JSON atomically into the output folder.
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import logging
import re
import shutil
import tempfile
import threading
import traceback
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import torch

from ltx_demo import media, results, review
from ltx_demo.attention import unavailable_reason as attention_unavailable
from ltx_demo.checkpoints import Bundle
from ltx_demo.fp8_matmul import ScaledMMCounter
from ltx_demo.pipeline import ClipHead, run_two_stage
from ltx_demo.prompt_cache import PromptCache
from ltx_demo.quantization import (
    default_quantization,
    default_text_encoder_quantization,
    text_encoder_unavailable_reason,
    unavailable_reason,
)
from ltx_demo.requests import check_request, window_frames_for
from ltx_demo.residency import ModelConfig, ModelManager, estimate_memory, free_device_memory
from ltx_demo.residency.modes import text_models_for
from ltx_demo.results import KeepPolicy, Pins, new_result_path
from ltx_demo.telemetry import DeviceMemory, RunTelemetry
from ltx_demo.types import (
    GIB,
    PROMPT_CACHE_ENTRIES,
    AttentionBackend,
    CompileBlocks,
    CudaGraphs,
    Flow,
    GenerationCancelled,
    GenerationRequest,
    GenerationResult,
    InvalidRequest,
    LoraMode,
    OutOfMemory,
    Progress,
    Quantization,
    Residency,
    TextEncoderQuantization,
    TextModels,
    VramSample,
)
from ltx_demo.windowed_flow import run_windows
from ltx_demo.windows import WindowPlan, plan_windows

logger = logging.getLogger(__name__)


def pick_device(requested: str | None) -> torch.device:
    if requested:
        device = torch.device(requested)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise InvalidRequest(f"--device {requested}: no CUDA device is visible here")
        return device
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def host_available_bytes() -> int:
    import psutil

    return psutil.virtual_memory().available


class OutOfMemoryError(OutOfMemory, torch.OutOfMemoryError):
    """OutOfMemory for the UI (torch-free), and still a torch.OutOfMemoryError for callers that catch that (bench)."""


def drop_frames(exc: Exception) -> Exception:
    """The exception without its traceback. The traceback's frames keep a failed run's tensors and models alive
    (their locals, and the closures of the functions they ran, e.g. a denoising step's transformer) for as long as
    anyone holds the exception; what a bug report needs is kept as a note with the stack as text."""
    if not isinstance(exc, GenerationCancelled | InvalidRequest) and not is_out_of_memory(exc):
        stack = "".join(traceback.format_tb(exc.__traceback__))
        exc.add_note(f"The failed run's stack (its frames were dropped to free its memory):\n{stack}")
    traceback.clear_frames(exc.__traceback__)
    return exc.with_traceback(None)


# Out of memory said as a plain RuntimeError: the CPU allocator, and cuBLAS/cuDNN failing to get their workspace.
_OOM_RUNTIME_ERRORS = ("DefaultCPUAllocator: can't allocate memory", "CUDA out of memory", "STATUS_ALLOC_FAILED")


def is_out_of_memory(exc: BaseException) -> bool:
    """CUDA's OOM, or the same said as a RuntimeError (the host allocator, cuBLAS, cuDNN)."""
    return isinstance(exc, torch.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and any(text in str(exc) for text in _OOM_RUNTIME_ERRORS)
    )


def failed_allocation_bytes(error: str) -> int | None:
    """What the failed allocation asked for plus what PyTorch already held, from the OOM message; None if unsaid."""
    units = {"B": 1, "KiB": 1024, "MiB": 1024**2, "GiB": GIB, "TiB": 1024**4}

    def amount(pattern: str) -> int:
        found = re.search(pattern + r"\s*([\d.]+)\s*(B|KiB|MiB|GiB|TiB)", error)
        return int(float(found.group(1)) * units[found.group(2)]) if found else 0

    tried = amount(r"Tried to allocate")
    if not tried and (host := re.search(r"you tried to allocate (\d+) bytes", error)):
        tried = int(host.group(1))
    held = amount(r"Of the allocated memory")
    return tried + held or None


def device_free_bytes(device: torch.device) -> int:
    """Free device memory this process may use: the device's free memory, under a per-process fraction cap if set."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    free, total = torch.cuda.mem_get_info(index)
    limit = int(torch.cuda.get_per_process_memory_fraction(index) * total) - torch.cuda.memory_reserved(index)
    return max(0, min(free, limit))


def window_plan(request: GenerationRequest) -> WindowPlan:
    """The request's windows: one for a clip, consecutive windows for a longer video (windows.plan_windows)."""
    window = window_frames_for(request)
    return plan_windows(request.num_frames, window, request.window_overlap_frames, request.seed)


def clip_shape(request: GenerationRequest) -> tuple[int, int, int]:
    """(width, height, frames) of the largest clip the flow renders at once: what memory estimates and peaks are
    about (the windows of a long recording are rendered one at a time; their latents are small)."""
    return request.width, request.height, window_plan(request).windows[0].frames


def compute_dtype_for(device: torch.device) -> torch.dtype:
    """bf16 on GPUs; float32 on CPUs, where bf16 convolutions are ~40x slower than float32."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


class ResultVideo:
    """The request's mp4 in the work folder, as the flow's FrameSink: opened when the decode begins (the provenance
    record, which names the prompt that ran, goes into the container's header; the audio encodes first), each
    decoded chunk encoded by media.Mp4Stream's encoder process as it comes, then closed; or aborted, leaving no file
    and no encoder process."""

    def __init__(
        self,
        path: Path,
        request: GenerationRequest,
        record_for: Callable[[str | None], dict],
        on_progress: Callable[[Progress], None],
    ) -> None:
        self.path, self.request, self.record_for, self.on_progress = path, request, record_for, on_progress
        self.record: dict | None = None  # the provenance, once opened (the sidecar gets it too)
        self.stream: media.Mp4Stream | None = None

    def open(self, head: ClipHead) -> None:
        self.record = self.record_for(head.prompt_used)
        metadata = review.mp4_metadata(self.record)
        frames, fps, audio = self.request.num_frames, self.request.frame_rate, head.audio.numpy()
        size = self.request.height, self.request.width  # the decoder's frames: mapped before they come
        self.stream = media.Mp4Stream(self.path, frames, fps, audio, head.sample_rate, metadata, self._encoded, size)

    def put(self, frames: torch.Tensor) -> None:
        self.stream.put(frames)

    def close(self) -> None:
        """The frames still queued encoded, the audio muxed, the file closed (progress: encode_mp4 frames)."""
        if self.stream is None:
            raise RuntimeError("the flow returned without opening the mp4 (its decode never ran)")
        self.stream.close()

    def abort(self) -> None:
        """Nothing once closed."""
        if self.stream is not None:
            self.stream.abort()

    def _encoded(self, done: int, total: int) -> None:
        self.on_progress(Progress("encode_mp4", done, total, unit="frame"))


@dataclasses.dataclass(frozen=True, slots=True)
class RunFacts:
    """What a run decided before it made its clip: the config it ran, why (auto), its windows, what was held."""

    config: ModelConfig
    residency_reason: str
    windows: WindowPlan
    resident_before: tuple[str, ...]
    scaled_mm_calls_before: int


class Engine:
    def __init__(
        self,
        bundle: Bundle,
        output_dir: Path,
        device: str | None = None,
        keep_outputs: KeepPolicy | None = None,
        cuda_graphs: CudaGraphs | bool = CudaGraphs.AUTO,
        cold_start_cache_dir: Path | None = None,
        compute_dtype: torch.dtype | None = None,  # None: bf16 on CUDA, float32 on CPU (compute_dtype_for)
        attention: AttentionBackend = AttentionBackend.AUTO,
        compile_blocks: CompileBlocks | bool = CompileBlocks.AUTO,
        prompt_cache_entries: int = PROMPT_CACHE_ENTRIES,
        text_models: TextModels = TextModels.AUTO,
    ) -> None:
        self.bundle = bundle
        self.output_dir = Path(output_dir)
        self.keep_outputs = keep_outputs or KeepPolicy()  # default: keep every result
        self.pins = Pins()  # results on someone's screen: never pruned
        self.device = pick_device(device)
        self.compute_dtype = compute_dtype or compute_dtype_for(self.device)
        reason = attention_unavailable(attention, self.device)
        if reason:
            raise ValueError(reason)
        self.models = ModelManager(
            bundle,
            self.device,
            self.compute_dtype,
            cuda_graphs=cuda_graphs,
            cold_start_cache_dir=cold_start_cache_dir,
            attention=attention,
            compile_blocks=compile_blocks,
        )
        # the fast flow's, in persistent residency (modes.Persistent)
        self.text_models = text_models_for(TextModels(text_models), self.device, prompt_cache_entries)
        self.prompt_cache = PromptCache(prompt_cache_entries)  # the fast flow's texts; the reference encodes each
        self.memory = DeviceMemory(self.device)
        self._job_lock = threading.Lock()
        self._current: RunTelemetry | None = None
        self._last: RunTelemetry | None = None

    # -- what the UI shows, and what check_request asks (DeviceLimits) -------------------------------------------
    def unavailable(self, quantization: str, lora_mode: str = LoraMode.ADAPTER.value) -> str | None:
        return unavailable_reason(Quantization(quantization), self.device, LoraMode(lora_mode))

    def text_encoder_unavailable(self, text_encoder_quantization: str) -> str | None:
        return text_encoder_unavailable_reason(TextEncoderQuantization(text_encoder_quantization), self.device)

    def enhancement_unavailable(self) -> str | None:
        """Prompt enhancement (ltx-pipelines' generate_enhanced_prompt): CUDA only, since ltx-core's
        GemmaTextEncoder._enhance forks the CUDA random state; and a real Gemma-3, since ltx-core's Gemma3Processor
        expands an image into 256 tokens where the synthetic Gemma's vision tower makes 4."""
        if self.bundle.synthetic:
            return "prompt enhancement needs the real Gemma-3 (the synthetic bundle's vision tower has 4 image tokens)"
        if self.device.type != "cuda":
            return (
                "prompt enhancement runs on CUDA only (ltx-core 1.0.0's enhancer forks the CUDA random state); "
                f"this engine runs on {self.device.type}"
            )
        return None

    def default_text_encoder_quantization(self) -> str:
        return default_text_encoder_quantization(self.device).value

    def default_quantization(self, flow: str = Flow.FAST.value) -> str:
        return default_quantization(self.device, Flow(flow)).value

    def status(self) -> dict:
        """What the page polls: a snapshot, never waiting for the job (a model build takes seconds)."""
        models = self.models.status()
        return {
            "device": str(self.device),
            "cuda": self.device.type == "cuda",
            "busy": self._job_lock.locked(),
            "loading": models.loading,
            "resident": list(models.resident),
            "residency": models.details,
            "synthetic": self.bundle.synthetic,
            "prompt_cache": {"texts": len(self.prompt_cache), "entries": self.prompt_cache.entries},
        }

    def live_samples(self) -> tuple[VramSample, ...]:
        """The running job's samples, else the last finished job's."""
        run = self._current or self._last
        return run.samples_snapshot() if run else ()

    def memory_now(self) -> VramSample:
        return self.memory.sample(0.0, "idle")

    def preload(
        self, quantization: str | None = None, lora_strength: float = 1.0, text_encoder_quantization: str | None = None
    ) -> None:
        """Persistent mode: build every model now, so the first request pays no load (None: the default
        quantization)."""
        quantization = quantization or self.default_quantization()
        text_encoder = TextEncoderQuantization(text_encoder_quantization or self.default_text_encoder_quantization())
        self.models.configure(
            ModelConfig(
                Quantization(quantization),
                Residency.PERSISTENT,
                lora_strength,
                LoraMode.ADAPTER,
                text_encoder,
                text_models=self.text_models,  # as _model_config makes it for a request, or that request rebuilds all
            )
        )
        self.models.preload()

    # -- the job -------------------------------------------------------------------------------------------------
    def generate(
        self,
        request: GenerationRequest,
        on_progress: Callable[[Progress], None] | None = None,
        cancelled: Callable[[], bool] | None = None,
    ) -> GenerationResult:
        on_progress = on_progress or (lambda _p: None)
        cancelled = cancelled or (lambda: False)
        request = check_request(request, self)  # typed, every field checked (this engine answers DeviceLimits)
        work_dir = Path(tempfile.mkdtemp(prefix="ltx-demo-"))
        try:
            inputs = media.prepare_inputs(request, work_dir)  # the files' contents, before any model is built
            with self._job_lock:
                return self._run(request, inputs, work_dir, on_progress, cancelled)
        finally:
            shutil.rmtree(work_dir, ignore_errors=True)

    def _model_config(self, request: GenerationRequest) -> tuple[ModelConfig, str]:
        """The concrete config this request runs with, and why (auto: which mode fits the budget)."""
        text_encoder = request.text_encoder_quantization or self.default_text_encoder_quantization()
        lora_mode = request.lora_mode
        if request.flow is Flow.REFERENCE:  # ltx-pipelines' models: the bf16 Gemma, a second LoRA-fused transformer
            lora_mode, text_encoder = LoraMode.FUSED, TextEncoderQuantization.BF16
        config = ModelConfig(
            request.quantization,
            request.residency,
            request.distilled_lora_strength,
            lora_mode,
            TextEncoderQuantization(text_encoder),
            request.flow,
            whole_gemma=request.flow is Flow.REFERENCE or request.enhance_prompt,  # the enhancer needs all of Gemma
            text_models=self.text_models if request.flow is Flow.FAST else TextModels.ON_DEVICE,
        )
        if config.residency is not Residency.AUTO:
            return config, ""
        budget, source = self._vram_budget(request.vram_budget_gib)
        shape = clip_shape(request)
        try:
            plan = self.models.plan(config, shape, budget, source, host_available_bytes())
        except ValueError as exc:
            raise InvalidRequest(f"residency auto: {exc}") from exc
        logger.info("residency auto -> %s", plan.reason)
        return dataclasses.replace(config, residency=plan.mode), plan.reason

    def _vram_budget(self, budget_gib: float | None) -> tuple[int, str]:
        if budget_gib is not None:
            return int(budget_gib * GIB), "the budget given: --vram-budget-gib or the UI's VRAM budget field"
        if self.device.type == "cuda":
            free, _total = torch.cuda.mem_get_info(self.device)
            # What this process holds in its allocator is ours to release, so it counts as available.
            return free + torch.cuda.memory_reserved(self.device), "free device memory, no budget given"
        return host_available_bytes(), "free host memory (CPU device), no budget given"

    def _prompt_cache_for(self, request: GenerationRequest) -> PromptCache | None:
        """The fast flow reads and fills the prompt cache; the reference flow encodes every text, as ltx-pipelines
        does (the fidelity row prompt_cache turns it on there, to show the video does not change)."""
        return self.prompt_cache if request.flow is Flow.FAST else None

    def _run(self, request, inputs, work_dir, on_progress, cancelled) -> GenerationResult:
        telemetry = RunTelemetry(self.memory)
        scaled_mm_calls_before = ScaledMMCounter.calls
        self._current = telemetry
        telemetry.start_sampling()
        resident_before = self.models.resident()
        config, failure, video = None, None, None
        try:
            with self.models.request():  # non-persistent modes leave nothing on the device, error or not
                try:
                    with telemetry.phase("load:configure"):
                        config, residency_reason = self._model_config(request)
                        self.models.configure(config)  # releases what another config held, before building anything
                    windows = window_plan(request)
                    record_for = functools.partial(self._provenance, request, config, windows=windows)
                    video = ResultVideo(work_dir / "output.mp4", request, record_for, on_progress)
                    prompt_cache = self._prompt_cache_for(request)
                    with torch.inference_mode():  # the flow's decode feeds `video` (the mp4 encodes meanwhile)
                        if len(windows.windows) == 1:
                            args = (request, inputs, self.models, telemetry, on_progress, cancelled, video)
                            clip = run_two_stage(*args, prompt_cache=prompt_cache)
                        else:  # a long recording: consecutive windows in this one request
                            args = (request, inputs, self.models, telemetry, on_progress, cancelled, windows, video)
                            clip = run_windows(*args, prompt_cache=prompt_cache)
                except Exception as exc:
                    failure = drop_frames(exc)  # so the release below frees this run's memory now
            if failure is not None:  # raised here, outside the except: nothing chains the failed frames
                if is_out_of_memory(failure):
                    raise self._out_of_memory(request, config, telemetry, f"{type(failure).__name__}: {failure}")
                raise failure
            on_progress(Progress("encode_mp4"))
            # The mp4 encoded while the decoder ran (the decode phase holds that overlap, and the audio's encode), so
            # this phase times only the tail: the frames still queued when the decode ended, the video's flush, the
            # mux of the audio, the close. decode + encode_mp4 is the wall time of the two together; encode_mp4 alone
            # is not the encode's whole time.
            with telemetry.phase("encode_mp4"):
                video.close()
            if cancelled():  # a cancel that came while encoding still means: no result
                raise GenerationCancelled("cancelled while the video was encoded")
        except OSError as exc:
            free_device_memory(self.device)
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            raise results.write_failure(exc, Path(exc.filename).parent if exc.filename else work_dir) from None
        except BaseException:
            free_device_memory(self.device)  # what the failed run left in the allocator's cache goes back
            raise
        finally:
            if video is not None:
                video.abort()  # a run that failed or was cancelled leaves no encoder process (its work folder goes)
            telemetry.stop_sampling()
            self._current = None
            self._last = telemetry
        self.models.record_peak(config, clip_shape(request), telemetry.peak_vram())
        output = Path(request.output_path) if request.output_path else new_result_path(self.output_dir, request.seed)
        ran = RunFacts(config, residency_reason, windows, resident_before, scaled_mm_calls_before)
        result = self._result(request, inputs, clip, telemetry, output, ran)
        self._publish(video.path, output, result, video.record)
        on_progress(Progress("done"))
        return result

    def _result(self, request, inputs, clip, telemetry: RunTelemetry, output: Path, ran: RunFacts) -> GenerationResult:
        """What the run made and how (the summary the CLI prints and the API returns)."""
        return GenerationResult(
            output=str(output),
            request=request,
            elapsed_seconds=telemetry.now(),
            peak_vram_bytes=telemetry.peak_vram(),
            peak_rss_bytes=telemetry.peak_rss(),
            width=request.width,
            height=request.height,
            num_frames=request.num_frames,
            frame_rate=request.frame_rate,
            seed=request.seed,
            quantization=request.quantization,
            compute_dtype=str(self.compute_dtype).removeprefix("torch."),
            residency=ran.config.residency.value,
            device=self._device_name(),
            synthetic=self.bundle.synthetic,
            audio_note=clip.audio_note or inputs.audio_note,
            phases=telemetry.phases(),
            samples=telemetry.samples_snapshot(),
            resident_before=ran.resident_before,
            resident_after=self.models.resident(),
            bundle=self.bundle.describe(),
            residency_reason=ran.residency_reason,
            text_encoder_quantization=ran.config.text_encoder_quantization.value,
            lora_mode=ran.config.lora_mode.value,
            stage_2_lora=clip.stage_2_lora,
            flow=ran.config.flow.value,
            prompt_used=clip.prompt_used,
            windows=tuple(ran.windows.describe()) if len(ran.windows.windows) > 1 else (),
            counters=telemetry.counters | {"fp8_scaled_mm_calls": ScaledMMCounter.calls - ran.scaled_mm_calls_before},
        )

    def _provenance(
        self, request: GenerationRequest, config: ModelConfig, prompt_used: str | None, *, windows: WindowPlan
    ) -> dict:
        """What made this result, for the mp4's metadata and the sidecar; copies the inputs next to the outputs. A long
        recording's windows (lengths, overlap, seeds) are recorded as ran; the request alone plans them again."""
        folder = Path(request.output_path).parent if request.output_path else self.output_dir
        ran = {
            "device": self._device_name(),
            "compute_dtype": str(self.compute_dtype).removeprefix("torch."),
            "residency": config.residency.value,
            "text_encoder_quantization": config.text_encoder_quantization.value,
            "lora_mode": config.lora_mode.value,
            "flow": config.flow.value,
            **({"prompt_used": prompt_used} if prompt_used is not None else {}),
            **({"windows": windows.describe()} if len(windows.windows) > 1 else {}),
        }
        return review.provenance(request, folder, bundle=self.bundle.describe(), ran=ran)

    def _device_name(self) -> str:
        if self.device.type == "cuda":
            return f"cuda ({torch.cuda.get_device_name(self.device)})"
        return "cpu"

    def _publish(self, partial: Path, output: Path, result: GenerationResult, record: dict | None = None) -> None:
        """The mp4 and its parameters JSON into the output folder, atomically (staged, then renamed: never a
        half-written result); then old results past --keep-outputs go, never this one or a pinned one."""
        params = {"request": asdict(result.request), "result": result.summary(), "provenance": record or {}}
        results.publish(partial, output, params)
        if not self.keep_outputs.unlimited and output.parent.resolve() == self.output_dir.resolve():
            results.prune(self.output_dir, self.keep_outputs, protect={output, *self.pins.pinned()})

    # -- out of memory ---------------------------------------------------------------------------------------------
    def _out_of_memory(self, request, config: ModelConfig | None, telemetry: RunTelemetry, error: str) -> OutOfMemory:
        """Free everything (persistent models too: the next request must not start short), then say how much this
        request needs (the residency estimator, or what the failed allocation asked for) and how much is free."""
        self.models.release_all()
        free_device_memory(self.device)
        on_host = "DefaultCPUAllocator" in error or self.device.type != "cuda"
        need = failed_allocation_bytes(error)
        if config is not None:
            shape = clip_shape(request)
            try:
                estimate = estimate_memory(self.bundle, config, shape, self.compute_dtype)
                need = max(need or 0, estimate.peak(config.residency, config.lora_mode))
            except Exception:  # the message matters more than the estimate
                logger.exception("memory estimate failed")
        free = host_available_bytes() if on_host else device_free_bytes(self.device)
        # The flow phase that failed: the last one a sample saw open (its load:* sub-phases close before it does).
        failed = [s.phase for s in telemetry.samples_snapshot() if s.phase != "idle"][-1:]
        where = f" in {failed[0]}" if failed else ""
        tries = [
            *(["fp8-cast"] if request.quantization == Quantization.BF16.value else []),
            *(["cold-start"] if config is None or config.residency is not Residency.COLD_START else []),
            "a smaller resolution (or fewer frames)",
        ]
        needs = f"needs about {need / GIB:.1f} GiB" if need else "needs more"
        message = (
            f"out of {'host' if on_host else 'GPU'} memory{where} at {request.width}x{request.height}, "
            f"{request.num_frames} frames: {needs}, {free / GIB:.1f} GiB free; try {', '.join(tries[:-1])}"
            f"{' or ' if len(tries) > 1 else ''}{tries[-1]}. Every model was freed; the next run loads them again"
        )
        logger.warning("%s (%s)", message, error.splitlines()[0] if error else "")
        return OutOfMemoryError(message)
