"""The one place a request is checked: loose fields from the CLI, the API, the UI or a saved sidecar become a
typed GenerationRequest, or InvalidRequest naming what to fix. What the files hold, media.prepare_inputs checks."""

from __future__ import annotations

import dataclasses
import enum
import math
import os
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from ltx_demo.types import (
    DecodeTiling,
    Flow,
    GenerationRequest,
    GuidanceParams,
    ImageFit,
    InvalidRequest,
    LoraMode,
    Quantization,
    Residency,
    TextEncoderQuantization,
)

MIN_SIDE, MAX_SIDE = 64, 2048
MAX_FRAMES = 257
MAX_PIXEL_FRAMES = 1280 * 768 * 257  # a sane cap on width x height x frames (memory grows with it)
MAX_PROMPT_CHARS = 2000
MAX_STEPS = 100
MAX_SEED = 2**32 - 1
FRAME_RATES = (24, 25, 30)
GUIDANCE_SPLITS = (1, 2, 4)  # stage 1's (up to) four passes in 1, 2 or 4 calls per step
MAX_VIDEO_SECONDS = 600.0  # the ceiling on max_video_seconds: the decoded frames are held in host memory

# The whole-number fields, by the name their messages use.
WHOLE_NUMBERS = {
    "width": "width",
    "height": "height",
    "num_frames": "frame count",
    "frame_rate": "frame rate",
    "steps": "steps",
    "seed": "seed",
    "decode_tile_pixels": "decode tile size",
    "decode_tile_frames": "decode tile length",
    "window_frames": "window length",
    "window_overlap_frames": "window overlap",
    "guidance_split": "guidance split",
}
MODES = {
    "quantization": Quantization,
    "residency": Residency,
    "image_fit": ImageFit,
    "lora_mode": LoraMode,
    "text_encoder_quantization": TextEncoderQuantization,
    "flow": Flow,
    "decode_tiling": DecodeTiling,
}
PATHS = ("image_path", "audio_path", "output_path")
OPTIONAL = (
    "quantization",
    "text_encoder_quantization",
    "vram_budget_gib",
    "audio_max_duration",
    "decode_tile_pixels",
    "decode_tile_frames",
    "window_frames",
)  # None: the device's default, the free memory


def _finite_from_zero(value: float) -> bool:
    return math.isfinite(value) and value >= 0


# The decimal-number fields (guidance's by their own names): the message that refuses one, and what it must satisfy.
NUMBERS: dict[str, tuple[str, Callable[[float], bool]]] = {
    "audio_start": ("audio start {} s must be a number of seconds, 0 or more", lambda v: 0 <= v < math.inf),
    "distilled_lora_strength": ("distilled LoRA strength {} must be a finite number, 0 or more", _finite_from_zero),
    "vram_budget_gib": ("VRAM budget {} GiB must be positive", lambda v: v > 0),
    "audio_max_duration": ("audio max duration {} s must be a positive number of seconds", lambda v: 0 < v < math.inf),
    "max_video_seconds": (
        f"max video length {{}} s must be a positive number of seconds, at most {MAX_VIDEO_SECONDS:.0f}",
        lambda v: 0 < v <= MAX_VIDEO_SECONDS,
    ),
    **{
        f.name: (f"{f.name.replace('_', ' ')} {{}} must be a finite number, 0 or more", _finite_from_zero)
        for f in dataclasses.fields(GuidanceParams)
    },
}


class DeviceLimits(Protocol):
    """Whether a choice runs on the engine's device: None, or why not. The engine answers (this file needs no torch)."""

    def unavailable(self, quantization: Quantization, lora_mode: LoraMode) -> str | None: ...

    def default_quantization(self, flow: Flow) -> Quantization: ...

    def text_encoder_unavailable(self, text_encoder_quantization: TextEncoderQuantization) -> str | None: ...

    def enhancement_unavailable(self) -> str | None: ...


Fields = GenerationRequest | Mapping[str, Any]


def check_request(source: Fields, device: DeviceLimits | None = None) -> GenerationRequest:
    """The typed request (see parse_request) if every field holds a value the engine runs, else InvalidRequest; with
    `device`, also the choices that cannot run there, and the device's default quantization filled in (None: the
    checks needing no device, e.g. the UI's fit preview)."""
    request = parse_request(source)
    _check_prompts(request)
    _check_shape(request)
    if request.frame_rate not in FRAME_RATES:
        raise InvalidRequest(f"frame rate {request.frame_rate} is not one of {', '.join(map(str, FRAME_RATES))}")
    if not 1 <= request.steps <= MAX_STEPS:
        raise InvalidRequest(f"steps {request.steps} must be between 1 and {MAX_STEPS}")
    if not 0 <= request.seed <= MAX_SEED:
        raise InvalidRequest(f"seed {request.seed} must be between 0 and {MAX_SEED}")
    numbers = {
        name: getattr(request, name)
        for name in (
            "audio_start",
            "distilled_lora_strength",
            "vram_budget_gib",
            "audio_max_duration",
            "max_video_seconds",
        )
    }
    for name, value in (dataclasses.asdict(request.guidance) | numbers).items():
        message, holds = NUMBERS[name]
        if value is not None and not holds(value):
            raise InvalidRequest(message.format(value))
    _check_windows(request)
    _check_tiling(request)
    _check_reference(request)
    _check_guidance_split(request)
    if device is not None:
        request = _check_device(request, device)
    return request


def parse_request(source: Fields) -> GenerationRequest:
    """The request typed, not yet checked against the limits: whole numbers from 64.0 or "64" (what browsers and API
    clients send), decimal numbers as floats, each mode as its enum, guidance from its asdict() form (a sidecar)."""
    return GenerationRequest(**{name: _typed(name, value) for name, value in _values(source).items()})


def whole_number(value: Any, name: str) -> int:
    """An int from an int, an integral float (64.0) or a string of digits; `name` is what the message calls it."""
    if value is None or value == "":
        raise InvalidRequest(f"{name} is empty: enter a number")
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    raise InvalidRequest(f"{name} {value!r} is not a whole number")


def legal_frame_counts(max_frames: int = MAX_FRAMES) -> list[int]:
    return list(range(9, max_frames + 1, 8))


def max_frames_at(width: int, height: int) -> int:
    """The largest legal (8k+1) frame count check_request accepts at this size."""
    cap = min(MAX_FRAMES, MAX_PIXEL_FRAMES // max(width * height, 1))
    return max(9, 8 * ((cap - 1) // 8) + 1)


def _values(source: Fields) -> dict[str, Any]:
    """The request's fields as a dict; a mapping with fields this version does not know is refused, not trimmed, so
    a sidecar from another version never runs as something other than what it asked."""
    if isinstance(source, GenerationRequest):
        return {f.name: getattr(source, f.name) for f in dataclasses.fields(GenerationRequest)}
    fields = dataclasses.fields(GenerationRequest)
    unknown = sorted(set(source) - {f.name for f in fields})
    if unknown:
        raise InvalidRequest(f"request fields this app does not know: {', '.join(unknown)} (from another version?)")
    required = [f.name for f in fields if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    missing = [name for name in required if name not in source]
    if missing:
        raise InvalidRequest(f"the request has no {', '.join(missing)}")
    return dict(source)


def _typed(name: str, value: Any) -> Any:
    if value is None and name in OPTIONAL:
        return None
    if name in WHOLE_NUMBERS:
        return whole_number(value, WHOLE_NUMBERS[name])
    if name in MODES:
        return _mode(value, MODES[name])
    if name in NUMBERS:
        return _number(value, NUMBERS[name][0])
    if name == "guidance":
        return _guidance(value)
    if name in PATHS and isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


def _mode(value: Any, kind: type[enum.StrEnum]) -> enum.StrEnum:
    try:
        return kind(value)
    except ValueError:
        choices = [e.value for e in kind]
        raise InvalidRequest(f"unknown {kind.__name__.lower()} {value!r}: use one of {choices}") from None


def _number(value: Any, message: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise InvalidRequest(message.format(value))
    try:
        return float(value)
    except ValueError:
        raise InvalidRequest(message.format(value)) from None


def _guidance(value: GuidanceParams | Mapping[str, Any]) -> GuidanceParams:
    fields = dataclasses.asdict(value) if isinstance(value, GuidanceParams) else dict(value)
    unknown = sorted(set(fields) - {f.name for f in dataclasses.fields(GuidanceParams)})
    if unknown:
        raise InvalidRequest(f"guidance fields this app does not know: {', '.join(unknown)}")
    return GuidanceParams(**{name: _number(v, NUMBERS[name][0]) for name, v in fields.items()})


def _check_prompts(request: GenerationRequest) -> None:
    if not isinstance(request.prompt, str) or not request.prompt.strip():
        raise InvalidRequest("prompt is empty: describe the person and the scene")
    for name, text in (("prompt", request.prompt), ("negative prompt", request.negative_prompt or "")):
        if len(text) > MAX_PROMPT_CHARS:
            raise InvalidRequest(f"{name} is {len(text)} characters: shorten it to at most {MAX_PROMPT_CHARS}")


def _nearest(value: int, legal: list[int]) -> str:
    """'try A' or 'try A or B': the legal values either side of a refused one."""
    below = [v for v in legal if v < value][-1:]
    above = [v for v in legal if v > value][:1]
    return "try " + " or ".join(str(v) for v in below + above)


def window_frames_for(request: GenerationRequest) -> int:
    """The most frames one window of this request holds: the one asked, else the frame cap at its size."""
    return request.window_frames or max_frames_at(request.width, request.height)


def is_windowed(request: GenerationRequest) -> bool:
    """Whether the request's video is longer than one window (then it runs as consecutive windows)."""
    return request.num_frames > window_frames_for(request)


def _check_shape(request: GenerationRequest) -> None:
    """Width and height multiples of 64; one clip of 8k+1 frames under the memory cap, or a longer video of any
    frame count in windows of 8k+1 frames under that cap (see _check_windows)."""
    for name, value in (("width", request.width), ("height", request.height)):
        if value % 64 or not MIN_SIDE <= value <= MAX_SIDE:
            what = "not a multiple of 64 between" if value % 64 else "not between"
            hint = _nearest(value, list(range(MIN_SIDE, MAX_SIDE + 1, 64)))
            raise InvalidRequest(f"{name} {value} is {what} {MIN_SIDE} and {MAX_SIDE}: {hint}")
    if is_windowed(request):
        return  # any frame count, in windows of 8k+1 (_check_windows)
    n = request.num_frames
    if n < 9 or (n - 1) % 8:
        hint = _nearest(n, legal_frame_counts(MAX_FRAMES + 8))
        raise InvalidRequest(f"frame count {n} is not 8k+1 (9, 17, 25, ... {MAX_FRAMES}): {hint}")


def overlap_leaves_frames(window: int, overlap: int) -> bool:
    """The overlap plan_windows needs: a multiple of 8, at least 8, leaving each window 9 or more frames of its own."""
    return overlap >= 8 and overlap % 8 == 0 and window - overlap >= 9


def _check_windows(request: GenerationRequest) -> None:
    """The window's length (8k+1, 17 to 257, under the memory cap at this size), its overlap (a multiple of 8 that
    leaves each window at least 9 new frames) and the whole video's length (at most max_video_seconds)."""
    size, cap = f"{request.width}x{request.height}", max_frames_at(request.width, request.height)
    window = window_frames_for(request)
    if request.window_frames is not None:
        if window < 17 or (window - 1) % 8:
            hint = _nearest(window, legal_frame_counts(MAX_FRAMES + 8)[1:])
            raise InvalidRequest(f"window length {window} frames is not 8k+1 (17, 25, ... {MAX_FRAMES}): {hint}")
        if window > cap or request.width * request.height * window > MAX_PIXEL_FRAMES:
            raise InvalidRequest(
                f"{size} with windows of {window} frames is over the cap: use windows of at most {cap} frames at "
                "this size, or a smaller size"
            )
    overlap = request.window_overlap_frames
    if request.num_frames <= window:
        return  # one clip: the window fields have nothing to do
    if not overlap_leaves_frames(window, overlap):
        raise InvalidRequest(
            f"window overlap {overlap} frames must be a multiple of 8, at least 8 and at most {window - 9} "
            f"(the window length {window} minus 9, so each window adds frames of its own)"
        )
    seconds = request.num_frames / request.frame_rate
    if seconds > request.max_video_seconds:
        most = math.floor(request.max_video_seconds * request.frame_rate)
        raise InvalidRequest(
            f"{request.num_frames} frames at {request.frame_rate} fps is {seconds:.2f} s: over the "
            f"{request.max_video_seconds:g} s maximum video length; use at most {most} frames or raise the maximum "
            f"(max video seconds, up to {MAX_VIDEO_SECONDS:.0f})"
        )
    if request.flow is Flow.REFERENCE:
        raise InvalidRequest(
            f"the reference flow renders one clip as A2VidPipelineTwoStage does (at most {window} frames here); "
            "a longer video runs in windows on the fast flow"
        )
    if request.decode_tiling is DecodeTiling.OFF:
        raise InvalidRequest(
            f"decode tiling 'off' decodes all {request.num_frames} frames in one pass: a video longer than one window "
            "needs the default tiling"
        )


DEFAULT_TILE_OVERLAP_PIXELS, DEFAULT_TILE_OVERLAP_FRAMES = 64, 24  # ltx-core's TilingConfig.default() overlaps


def _check_tiling(request: GenerationRequest) -> None:
    """ltx-core's tiling rules (SpatialTilingConfig, TemporalTilingConfig), with the default overlaps."""
    pixels, frames = request.decode_tile_pixels, request.decode_tile_frames
    if request.decode_tiling is DecodeTiling.OFF and (pixels is not None or frames is not None):
        raise InvalidRequest("decode tile sizes need decode tiling 'default': drop them or turn tiling on")
    if request.decode_tiling is DecodeTiling.FRAME and pixels is not None:
        raise InvalidRequest("decode tiling 'frame' sizes its spatial tiles to the frame: drop the tile size in pixels")
    if pixels is not None and (pixels % 32 or pixels <= DEFAULT_TILE_OVERLAP_PIXELS):
        raise InvalidRequest(f"decode tile size {pixels} px must be a multiple of 32 above 64 (e.g. 256, 512)")
    if frames is not None and (frames % 8 or frames <= DEFAULT_TILE_OVERLAP_FRAMES):
        raise InvalidRequest(f"decode tile length {frames} frames must be a multiple of 8 above 24 (e.g. 32, 64)")


def _check_reference(request: GenerationRequest) -> None:
    """The reference flow runs what A2VidPipelineTwoStage runs: its quantization policies and the bf16 Gemma."""
    if request.flow is not Flow.REFERENCE:
        return
    if request.quantization is Quantization.FP8_SCALED_MM:
        raise InvalidRequest(
            "the reference flow runs A2VidPipelineTwoStage's own quantization policies (bf16, fp8-cast); "
            "fp8-scaled-mm is the project's kernel: compare it against the reference instead"
        )
    if request.text_encoder_quantization not in (None, TextEncoderQuantization.BF16):
        raise InvalidRequest(
            "the reference flow runs the bf16 Gemma as ltx-pipelines builds it: leave the text encoder "
            f"quantization unset or bf16, not {request.text_encoder_quantization}"
        )


def _check_guidance_split(request: GenerationRequest) -> None:
    """The split cuts the batched passes of the fast flow; ltx-pipelines' one-by-one passes have nothing to cut."""
    split = request.guidance_split
    if split not in GUIDANCE_SPLITS:
        raise InvalidRequest(f"guidance split {split} must be one of {', '.join(map(str, GUIDANCE_SPLITS))}")
    if split > 1 and (request.flow is Flow.REFERENCE or not request.batch_guidance):
        raise InvalidRequest(
            f"guidance split {split} cuts the fast flow's batched guidance into groups: it needs batched guidance "
            "(drop --no-batch-guidance) and the fast flow"
        )


def _check_device(request: GenerationRequest, device: DeviceLimits) -> GenerationRequest:
    """The choices that cannot run on the device refused; the request with the device's quantization filled in."""
    if request.quantization is None:
        request = dataclasses.replace(request, quantization=Quantization(device.default_quantization(request.flow)))
    if request.enhance_prompt and (reason := device.enhancement_unavailable()):
        raise InvalidRequest(f"enhance prompt: {reason}")
    if request.text_encoder_quantization is not None:
        reason = device.text_encoder_unavailable(request.text_encoder_quantization)
        if reason:
            raise InvalidRequest(f"text encoder quantization {request.text_encoder_quantization}: {reason}")
    lora_mode = LoraMode.FUSED if request.flow is Flow.REFERENCE else request.lora_mode  # the reference: fused copy
    reason = device.unavailable(request.quantization, lora_mode)
    if reason:
        raise InvalidRequest(f"quantization {request.quantization} cannot run here: {reason}")
    return request
