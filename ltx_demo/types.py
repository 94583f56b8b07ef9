"""Values passed between modules (torch-free): the mode enums, requests, results, phase timings, memory samples."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

GIB = 1024**3
PROMPT_CACHE_ENTRIES = 16  # texts whose contexts stay on the host (prompt_cache.py): ~12 MB each at LTX-2.3's scale


# -- the modes: each value is also its CLI flag and its UI label ------------------------------------------------------
class Quantization(enum.StrEnum):
    BF16 = "bf16"
    FP8_CAST = "fp8-cast"
    FP8_SCALED_MM = "fp8-scaled-mm"  # fp8 weights multiplied in fp8 (torch._scaled_mm); Ada/Hopper GPUs only


class Residency(enum.StrEnum):
    PERSISTENT = "persistent"
    COLD_START = "cold-start"
    HOST_CACHED = "host-cached"
    AUTO = "auto"  # resolved per request to one of the above from --vram-budget-gib (residency.plan_residency)


class LoraMode(enum.StrEnum):
    """How stage 2 gets the distilled LoRA: a runtime low-rank adapter on the one transformer, or a fused copy."""

    ADAPTER = "adapter"
    FUSED = "fused"


class TextEncoderQuantization(enum.StrEnum):
    BF16 = "bf16"
    NF4 = "nf4"  # bitsandbytes 4-bit linears; CUDA only


class TextModels(enum.StrEnum):
    """Where persistent residency keeps Gemma and the embeddings processor between prompts (a quarter of what it
    holds for LTX-2.3): on the device, or in host memory as built, uploaded for a text the prompt cache lacks and
    freed after it. Only the models kept as built (nf4 Gemma, the fp8 processor) can wait on the host. auto: on the
    host on CUDA while the prompt cache is on (a prompt asked again needs neither model), else on the device
    (modes.text_models_for)."""

    AUTO = "auto"
    ON_DEVICE = "on-device"
    ON_HOST = "on-host"


class Flow(enum.StrEnum):
    """Which two-stage flow renders: the project's (its speed-ups on), or ltx-pipelines' A2VidPipelineTwoStage exactly
    (full bf16 Gemma, processor in the compute dtype, the LoRA fused by ltx-core's builder into a second transformer,
    unbatched guidance, the stock audio and image reading): the ground truth every speed-up is measured against."""

    FAST = "fast"
    REFERENCE = "reference"


class DecodeTiling(enum.StrEnum):
    """How the VAE decoder splits the video: ltx-core's TilingConfig.default() (512 px / 64 frames tiles, what
    ltx-pipelines' CLI passes), frame-wide spatial tiles with the default temporal ones (pipeline.tiling_config), or
    none (A2VidPipelineTwoStage.__call__'s own default: one pass, more memory)."""

    DEFAULT = "default"
    FRAME = "frame"
    OFF = "off"


class AttentionBackend(enum.StrEnum):
    """Which kernel the fast flow's transformer attention runs (ltx_demo/attention.py): ltx-core's own choices, or
    PyTorch SDPA pinned to one of its backends. The reference flow keeps ltx-core's default."""

    AUTO = "auto"  # the measured fastest that runs here (attention.resolve)
    SDPA = "sdpa"  # PyTorch picks among its backends (ltx-core's PytorchAttention)
    SDPA_FLASH = "sdpa-flash"
    SDPA_CUDNN = "sdpa-cudnn"
    SDPA_EFFICIENT = "sdpa-efficient"
    XFORMERS = "xformers"  # ltx-core's XFormersAttention (pip install xformers)
    FLASH_ATTENTION_3 = "flash-attention-3"  # ltx-core's FlashAttention3 (flash_attn_interface)


class CudaGraphs(enum.StrEnum):
    """Replay the transformer blocks as CUDA graphs (cuda_graphs.py): auto = on where they pay and fit."""

    AUTO = "auto"  # on for persistent residency on CUDA (per-request modes would capture again every request)
    ON = "on"
    OFF = "off"


class CompileBlocks(enum.StrEnum):
    """torch.compile the transformer blocks (compiled_blocks.py): auto = where the one-time compile pays."""

    # auto: on for persistent residency on CUDA (compile_for). On the H200 (full-scale bundle, fp8-scaled-mm, CUDA
    # graphs) a warm 768x512x97 request went from 12.6-13.9 s to 9.5-9.6 s (stage 1 9.1-10.4 s -> 6.5 s, with fast
    # accumulation; 8.9 s in a later run); the first request pays the compile (4 graphs, 0 graph breaks, 28-46 s;
    # Inductor's cache in the cache folder serves later starts: 6.5-11.6 s). docs/benchmarks.md, 2026-12-03.
    AUTO = "auto"
    ON = "on"  # CPU too (Inductor's C++ kernels; what the CPU tests run)
    OFF = "off"


class Parallel(enum.StrEnum):
    """How `generate` spreads one request over the devices --gpus names (the app's --gpus starts one worker each)."""

    GUIDANCE = "guidance"  # stage 1's guidance passes split across 2 or 4 ranks (torch.distributed)


class ImageFit(enum.StrEnum):
    CROP = "crop"
    PAD = "pad"


def to_gib(num_bytes: int | None) -> float | None:
    """Bytes inside, GiB only at the edges."""
    return None if num_bytes is None else round(num_bytes / GIB, 3)


@dataclass(frozen=True, slots=True)
class GuidanceParams:
    """Stage-1 video guidance (ltx-core MultiModalGuiderParams); defaults are LTX-2.3's."""

    cfg_scale: float = 3.0
    stg_scale: float = 1.0
    rescale_scale: float = 0.7
    modality_scale: float = 3.0


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    """One generation as asked; requests.py types and checks it, from the CLI, the API, the UI or a sidecar."""

    image_path: str
    audio_path: str
    prompt: str
    negative_prompt: str | None = None  # None: the pipeline's default negative prompt
    width: int = 768
    height: int = 512
    num_frames: int = 97
    frame_rate: int = 24
    steps: int = 30
    seed: int = 42
    # None: the device's fastest (fp8-scaled-mm on Ada/Hopper, fp8-cast elsewhere and for the reference flow)
    quantization: Quantization | None = None
    residency: Residency = Residency.PERSISTENT
    audio_start: float = 0.0
    image_fit: ImageFit = ImageFit.CROP
    guidance: GuidanceParams = field(default_factory=GuidanceParams)
    distilled_lora_strength: float = 1.0
    output_path: str | None = None  # None: a new file in the output folder
    text_encoder_quantization: TextEncoderQuantization | None = None  # None: nf4 on CUDA, bf16 elsewhere
    lora_mode: LoraMode = LoraMode.ADAPTER  # adapter: one transformer for both stages; fused: a second, LoRA-fused copy
    vram_budget_gib: float | None = None  # for residency "auto"; None: what the device has free
    flow: Flow = Flow.FAST
    enhance_prompt: bool = False  # Gemma rewrites the prompt from it and the portrait first (ltx-pipelines' enhancer)
    audio_max_duration: float | None = None  # seconds of audio used from audio_start; None: the clip's duration
    decode_tiling: DecodeTiling = DecodeTiling.DEFAULT
    decode_tile_pixels: int | None = None  # spatial tile size for the default tiling (None: 512)
    decode_tile_frames: int | None = None  # temporal tile size for the default tiling (None: 64)
    batch_guidance: bool = True  # stage 1's guidance passes as one batched transformer call per step
    # Stage 1's passes in this many batched calls per step (1, 2 or 4): one process runs them one after another,
    # `--parallel guidance` runs one per rank; the same split gives the same frames either way.
    guidance_split: int = 1
    # Long recordings (num_frames over one window): consecutive windows, each continuing the one before in latent space.
    window_frames: int | None = None  # most frames per window (8k+1); None: the frame cap at this size (257 at 768x512)
    window_overlap_frames: int = 16  # frames each window after the first continues from (8 per latent frame)
    max_video_seconds: float = 60.0  # the longest video a request may ask for


@dataclass(frozen=True, slots=True)
class PhaseTiming:
    name: str
    seconds: float
    peak_vram_bytes: int | None  # torch.cuda max allocated during the phase; None without CUDA
    peak_rss_bytes: int
    started_at: float  # seconds since the run started


@dataclass(frozen=True, slots=True)
class VramSample:
    t: float  # seconds since the run started
    phase: str
    allocated_bytes: int | None
    reserved_bytes: int | None
    peak_bytes: int | None
    device_used_bytes: int | None  # NVML: the whole device, all processes
    device_total_bytes: int | None
    rss_bytes: int


@dataclass(frozen=True, slots=True)
class Progress:
    phase: str
    step: int | None = None
    total_steps: int | None = None
    message: str = ""
    window: int | None = None  # 1-based, in a request of several windows
    windows: int | None = None
    eta_seconds: float | None = None  # for the whole request, once a denoising step has been timed
    unit: str = "step"  # what step/total count: denoising steps, the decoder's chunks, the frames encoded


@dataclass(frozen=True, slots=True)
class GenerationResult:
    output: str
    request: GenerationRequest
    elapsed_seconds: float
    peak_vram_bytes: int | None
    peak_rss_bytes: int
    width: int
    height: int
    num_frames: int
    frame_rate: int
    seed: int
    quantization: str
    compute_dtype: str
    residency: str
    device: str
    synthetic: bool
    audio_note: str
    phases: tuple[PhaseTiming, ...]
    samples: tuple[VramSample, ...]
    resident_before: tuple[str, ...]
    resident_after: tuple[str, ...]
    bundle: dict
    residency_reason: str = ""  # why auto picked the mode that ran (residency is then the mode that ran)
    text_encoder_quantization: str | None = None  # what ran
    lora_mode: str | None = None
    stage_2_lora: str | None = None  # how stage 2 applied the distilled LoRA: adapter, fused in place, fused copy
    counters: dict = field(default_factory=dict)  # e.g. transformer calls per stage, fp8 GEMM calls
    flow: str = "fast"  # what ran
    prompt_used: str | None = None  # the enhanced prompt, when enhance_prompt was asked
    windows: tuple[dict, ...] = ()  # a long recording's windows (windows.Window.describe()); () for one clip

    @property
    def prompt_cached(self) -> str | None:
        """How much of the prompt path the prompt cache spared: None (every text encoded), "all" (no Gemma ran), or
        "1 of 2" texts (counters)."""
        cached = self.counters.get("prompt_texts_from_cache", 0)
        encoded = self.counters.get("prompt_texts_encoded", 0)
        if not cached:
            return None
        return "all" if not encoded else f"{cached} of {cached + encoded}"

    def summary(self) -> dict:
        """The JSON object `generate` prints and the API returns (the seed's field names kept)."""
        return {
            "output": self.output,
            "elapsed_seconds": round(self.elapsed_seconds, 3),
            "counters": dict(self.counters),
            "peak_vram_gib": to_gib(self.peak_vram_bytes),
            "peak_rss_gib": to_gib(self.peak_rss_bytes),
            "width": self.width,
            "height": self.height,
            "num_frames": self.num_frames,
            "frame_rate": self.frame_rate,
            "seed": self.seed,
            "quantization": self.quantization,
            "compute_dtype": self.compute_dtype,
            "residency": self.residency,
            "residency_requested": self.request.residency,
            "residency_reason": self.residency_reason,
            "text_encoder_quantization": self.text_encoder_quantization,
            "lora_mode": self.lora_mode,
            "stage_2_lora": self.stage_2_lora,
            "flow": self.flow,
            "prompt_used": self.prompt_used,
            "device": self.device,
            "synthetic": self.synthetic,
            "audio_note": self.audio_note,
            "phases": {
                p.name: {
                    "seconds": round(p.seconds, 3),
                    "peak_vram_gib": to_gib(p.peak_vram_bytes),
                    "peak_rss_gib": to_gib(p.peak_rss_bytes),
                }
                for p in self.phases
            },
            "resident_before": list(self.resident_before),
            "resident_after": list(self.resident_after),
            "bundle": self.bundle,
            **({"windows": list(self.windows)} if self.windows else {}),
        }


class InvalidRequest(ValueError):
    """Bad input, raised before any model is built; the message names what to fix."""


class GenerationCancelled(RuntimeError):
    """The user cancelled; what the run built has been freed and nothing was written."""


class GenerationFailed(RuntimeError):
    """A run could not finish for a reason the user can act on (memory, disk); what it built has been freed, nothing
    that looks like a result was written, and the message says what to try."""


class OutOfMemory(GenerationFailed):
    """The request did not fit in device (or host) memory; the message gives the need, what was free, what to try."""
