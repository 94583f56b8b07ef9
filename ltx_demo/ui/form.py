"""The request form: ONE ordered table of its fields (generate's parameters, the API's names, what "Reuse settings"
fills), the controls laid out in that form, and the notes that answer while a visitor edits (fit preview, frames)."""

from __future__ import annotations

import inspect
import json
import secrets
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
from PIL import Image

from ltx_demo import media
from ltx_demo.requests import (
    MAX_FRAMES,
    MAX_SEED,
    check_request,
    max_frames_at,
    parse_request,
    whole_number,
)
from ltx_demo.types import GenerationRequest, ImageFit, InvalidRequest, Quantization
from ltx_demo.ui.frames import (
    DEFAULT_MAX_VIDEO_SECONDS,
    DEFAULT_OVERLAP,
    WindowChoice,
    length_note,
    long_match_note,
    matched_frames,
)

CUSTOM = "custom"
RESOLUTIONS = (  # short labels: the seven fit in two rows of a half-width column
    ("768 × 512", "768x512"),
    ("1024 × 768", "1024x768"),
    ("1280 × 768", "1280x768"),
    ("512 × 768", "512x768"),
    ("768 × 1024", "768x1024"),
    ("768 × 1280", "768x1280"),
    ("custom", CUSTOM),
)
DEFAULT_RESOLUTION = "768x512"
SMALL_PORTRAIT_PX = 256  # below this on the short side the model sees an upscale: it blurs
QUANTIZATION_NOTES = {
    Quantization.BF16: "bf16: transformer weights as released (most memory).",
    Quantization.FP8_CAST: "fp8-cast: transformer linears stored as float8, upcast per layer (about half the memory).",
    Quantization.FP8_SCALED_MM: "fp8-scaled-mm: float8 linears multiplied in float8 on the GPU (Ada/Hopper only).",
}
RESIDENCY_NOTES = {  # by value: modes the engine adds later are listed too, with their name as the note
    "persistent": "persistent: models stay on the device between runs (fast repeats, memory held while idle).",
    "cold-start": "cold-start: build, run and free per request (slowest, idle device memory ~0).",
    "host-cached": "host-cached: weights wait in CPU memory and upload per request (idle device memory ~0).",
    "auto": "auto: picks the fastest mode that fits the free device memory.",
}


# -- the table ------------------------------------------------------------------------------------------------------
def _value(path: str) -> Callable[[GenerationRequest], Any]:
    """Reads a request field ("guidance.cfg_scale" reaches into the guidance); enums as their value (the UI label)."""

    def read(request: GenerationRequest) -> Any:
        value: Any = request
        for part in path.split("."):
            value = getattr(value, part)
        return getattr(value, "value", value)

    return read


def _size_choice(request: GenerationRequest) -> str:
    size = f"{request.width}x{request.height}"
    return size if size in {value for _, value in RESOLUTIONS} else CUSTOM


@dataclass(frozen=True, slots=True)
class FormField:
    """One control: `name` is generate's parameter and the API's; `request_field` the request field it fills (None: it
    only steers the form); `reuse` what the control shows again for a saved request; `clean` turns an empty control
    into the request's default."""

    name: str
    request_field: str | None
    reuse: Callable[[GenerationRequest], Any]
    clean: Callable[[Any], Any] = lambda value: value


def field(name: str, request_field: str | None = None, **kwargs) -> FormField:
    request_field = request_field or name
    return FormField(name, request_field, kwargs.pop("reuse", _value(request_field)), **kwargs)


# The order is generate's parameter order, the API's, and what reuse_settings returns. Add a request field here (and
# its control in build_form); nothing else lists them.
FIELDS: tuple[FormField, ...] = (
    field("image", "image_path", clean=lambda v: v or ""),
    field("audio", "audio_path", clean=lambda v: v or ""),
    field("prompt", clean=lambda v: v or ""),
    field("negative_prompt", clean=lambda v: (v or "").strip() or None),  # empty: the default negative prompt
    FormField("resolution", None, _size_choice),
    field("width"),
    field("height"),
    field("image_fit"),
    field("audio_start", clean=lambda v: v or 0.0),
    FormField("match_audio", None, lambda _r: False),  # the saved frame count, not one matched to the audio again
    field("num_frames"),
    field("frame_rate"),
    field("seed"),
    FormField("randomize_seed", None, lambda _r: False),
    field("steps"),
    field("quantization"),
    field("residency"),
    field("vram_budget_gib", clean=lambda v: v or None, reuse=lambda r: r.vram_budget_gib or 0),  # 0: free memory
    field("cfg_scale", "guidance.cfg_scale"),
    field("stg_scale", "guidance.stg_scale"),
    field("rescale_scale", "guidance.rescale_scale"),
    field("modality_scale", "guidance.modality_scale"),
    field("distilled_lora_strength"),
    field("flow"),
    field("enhance_prompt"),
    field("audio_max_duration", clean=lambda v: v or None, reuse=lambda r: r.audio_max_duration or 0),  # 0: whole
    field("decode_tiling"),
    # Long recordings: a video longer than one window runs in windows of window_frames (0: the frame cap at the size).
    field("window_frames", clean=lambda v: v or None, reuse=lambda r: r.window_frames or 0),
    field("window_overlap_frames", clean=lambda v: DEFAULT_OVERLAP if v is None else v),
    field("max_video_seconds", clean=lambda v: DEFAULT_MAX_VIDEO_SECONDS if v is None else v),
)
NAMES = tuple(f.name for f in FIELDS)
WINDOW_FIELDS = ("window_frames", "window_overlap_frames", "max_video_seconds")


def request_from_form(values: Mapping[str, Any]) -> GenerationRequest:
    """The typed request from the form's values (by name); the engine checks it as it checks every request."""
    fields: dict[str, Any] = {}
    guidance: dict[str, Any] = {}
    for f in FIELDS:
        if f.request_field is not None:
            group, _, name = f.request_field.rpartition(".")
            (guidance if group == "guidance" else fields)[name] = f.clean(values[f.name])
    fields["width"], fields["height"] = resolve_resolution(values["resolution"], values["width"], values["height"])
    if values["match_audio"] and values["audio"]:
        try:
            choice = WindowChoice.from_form(*(fields[name] for name in WINDOW_FIELDS))
            fields["num_frames"], _ = matched_frames(
                values["audio"],
                fields["audio_start"],
                int(values["frame_rate"]),
                fields["width"],
                fields["height"],
                choice.max_video_seconds,
                choice.window_frames,
            )
        except InvalidRequest:
            pass  # an unreadable clip or a bad window field: the engine's check names what to fix
    if values["randomize_seed"]:
        fields["seed"] = secrets.randbelow(MAX_SEED + 1)
    return parse_request(fields | {"guidance": guidance})


def form_from_request(request: GenerationRequest, negative_prompt: str) -> list[Any]:
    """What every control shows for a saved request, in table order (an empty negative prompt shows the default)."""
    values = {f.name: f.reuse(request) for f in FIELDS}
    values["negative_prompt"] = values["negative_prompt"] or negative_prompt
    return [values[name] for name in NAMES]


def form_handler(name: str, fn: Callable[[dict[str, Any], gr.Request], Any]) -> Callable:
    """A gradio handler whose parameters are the table's names in order, then the visitor's request: gradio reads
    the API's parameter names from the signature, so they come from the table too."""

    def handler(*args: Any) -> Any:
        *values, request = args
        return fn(dict(zip(NAMES, values, strict=True)), request)

    keyword = inspect.Parameter.POSITIONAL_OR_KEYWORD
    handler.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [inspect.Parameter(n, keyword) for n in NAMES] + [inspect.Parameter("request", keyword, annotation=gr.Request)]
    )
    handler.__annotations__ = {"request": gr.Request}
    handler.__name__ = handler.__qualname__ = name
    handler.__doc__ = fn.__doc__
    return handler


# -- small pure helpers (unit-tested) -------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Preset:
    """One example from assets/presets.json: portrait, audio and prompt (plus the resolution that suits the photo)."""

    name: str
    image: Path
    audio: Path
    prompt: str
    resolution: str

    @classmethod
    def load_all(cls, path: Path) -> tuple[Preset, ...]:
        entries = json.loads(Path(path).read_text())
        presets = []
        for entry in entries:
            image = Path(path).parent / entry["image"]
            with Image.open(image) as opened:
                portrait = opened.height > opened.width
            presets.append(
                cls(
                    entry["name"],
                    image,
                    Path(path).parent / entry["audio"],
                    entry["prompt"],
                    "512x768" if portrait else DEFAULT_RESOLUTION,
                )
            )
        return tuple(presets)


def resolve_resolution(choice: str, width: Any, height: Any) -> tuple[int, int]:
    """A preset "WxH" or the custom fields (the browser sends 64.0); whether they are legal is check_request's."""
    if choice == CUSTOM:
        return whole_number(width, "width"), whole_number(height, "height")
    try:
        w, h = (int(v) for v in str(choice).lower().split("x"))
    except ValueError:
        raise InvalidRequest(f"resolution {choice!r}: pick a preset or {CUSTOM!r} with a width and height") from None
    return w, h


def fit_preview(image_path: str, width: int, height: int, fit: str) -> tuple[Image.Image, str]:
    """The exact frame the model is conditioned on (the engine's own crop/pad code), and any note about it."""
    with tempfile.TemporaryDirectory(prefix="ltx-demo-preview-") as folder:
        out = Path(folder) / "fitted.png"
        note = media.prepare_image(image_path, width, height, ImageFit(fit), out)
        with Image.open(out) as fitted:
            fitted.load()
            return fitted.copy(), note


def pass_unreadable_files_on(image: gr.Image) -> gr.Image:
    """gr.Image answers a file PIL cannot open with a bare "Error". Hand that file (gradio has already checked and
    cached it) to the engine instead, whose check names what to fix: one place for validation.

    Set on the instance: subclassing a gradio component would write a .pyi stub next to this module on import.
    """
    stock = image.preprocess

    def preprocess(payload):
        try:
            return stock(payload)
        # PIL's UnidentifiedImageError is an OSError; DecompressionBombError (a 20000x20000 PNG) is neither.
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
            return str(payload.path) if payload is not None and payload.path else None

    image.preprocess = preprocess
    return image


def disabled_options_css(elem_id: str, values: list[str]) -> str:
    """Gradio radios cannot disable one choice: grey it out and block clicks (the engine refuses it too)."""
    import html

    rules = "".join(
        f'#{elem_id} label:has(input[value="{html.escape(v)}"]) {{ opacity: .45; pointer-events: none; '
        "text-decoration: line-through; }"
        for v in values
    )
    return f"<style>{rules}</style>" if rules else ""


# -- event handlers that need no engine (also called once at build time for the first view) -------------------
def preview_fit(image: str | None, resolution: str, width: float | None, height: float | None, image_fit: str):
    """The fit preview and its note, for the current portrait, resolution and fit."""
    if not image:
        return None, ""
    try:
        w, h = resolve_resolution(resolution, width, height)
        # The engine's own size and fit check, so the preview refuses exactly what a run would.
        checked = check_request(
            GenerationRequest(image, "", "preview", width=w, height=h, num_frames=9, image_fit=image_fit)
        )
        fitted, note = fit_preview(image, w, h, checked.image_fit)
    except InvalidRequest as exc:
        return None, f"⚠ {exc}"
    blur = small_portrait_note(image)
    return fitted, f"{image_fit} to {w}×{h}" + (f" · {note}" if note else "") + (f" · ⚠ {blur}" if blur else "")


def small_portrait_note(image_path: str) -> str:
    """A portrait under SMALL_PORTRAIT_PX on its short side is used, but the frame is an upscale of it: say so."""
    try:
        with Image.open(image_path) as opened:
            width, height = opened.size
    except (OSError, ValueError, Image.DecompressionBombError):
        return ""  # not an image: the engine's check says so
    if min(width, height) >= SMALL_PORTRAIT_PX:
        return ""
    return f"upscaled from {width}×{height}: expect blur (use {SMALL_PORTRAIT_PX} px or more on the short side)"


def sync_frames(
    audio: str | None,
    audio_start: float | None,
    frame_rate: int,
    match_audio: bool,
    resolution: str,
    width: float | None,
    height: float | None,
    num_frames: float | None = None,
    window_frames: float | None = 0,
    window_overlap_frames: float | None = DEFAULT_OVERLAP,
    max_video_seconds: float | None = DEFAULT_MAX_VIDEO_SECONDS,
):
    """The frame slider's value while "match audio length" is on (never otherwise, so no reply can undo what a
    visitor typed), its maximum at this size, the match note, and (while matching) the length note under the slider:
    the video the request will ask for, or what to fix when there is none. The slider stays enabled: moving it unticks
    the box."""
    w, h = _size_or_zero(resolution, width, height)
    cap = max_frames_at(w, h)
    limit = f" · at most {cap} frames at {w}×{h}" if cap < MAX_FRAMES else ""
    try:
        choice = WindowChoice.from_form(window_frames, window_overlap_frames, max_video_seconds)
    except InvalidRequest as exc:
        return gr.update(maximum=cap), f"⚠ {exc}", "**no video length**: fix the long-recording fields"
    if not match_audio:
        note = f"frames set by hand{limit} · longer videos: Match audio length (the whole audio, in windows)"
        try:
            if w and h and num_frames:
                choice.check(int(num_frames), int(frame_rate), w, h)
        except InvalidRequest as exc:
            note = f"⚠ {exc}"
        # The length note is describe_frames' alone here: this reply, queued behind the change that sent it, would
        # otherwise put back the length of a frame count the visitor has changed since.
        return gr.update(maximum=cap), note, gr.skip()
    if not audio:
        return gr.update(maximum=cap), "upload audio to match its length", "**no video length** until audio is in"
    try:
        frames, covered = matched_frames(
            audio, audio_start or 0.0, int(frame_rate), w, h, choice.max_video_seconds, choice.window_frames
        )
    except InvalidRequest as exc:
        return gr.update(maximum=cap), f"⚠ {exc}", "**no video length**: fix the audio (see above)"
    length = length_note(frames, frame_rate, choice.count(frames, w, h))
    try:
        if w and h:
            choice.check(frames, int(frame_rate), w, h)  # the engine's own window checks, said here
    except InvalidRequest as exc:
        return gr.update(value=min(frames, cap), maximum=cap), f"⚠ {exc}", length
    window = choice.window_at(w, h)
    if frames > window:  # longer than one window: the slider shows one, the request gets the whole count (windows)
        note = long_match_note(frames, covered, int(frame_rate), w, h, choice)
        return gr.update(value=window, maximum=cap), note, length
    note = f"audio from {audio_start or 0:.2f} s lasts {covered:.2f} s{limit}"
    if round(covered * int(frame_rate)) > window:  # a long recording cut to one clip by the longest video allowed
        note += f" · ⚠ cut to the first {frames / int(frame_rate):.2f} s (at most {choice.max_video_seconds:g} s)"
    return gr.update(value=frames, maximum=cap), note, length


def _size_or_zero(resolution: str, width: float | None, height: float | None) -> tuple[int, int]:
    """The size asked for, or 0 x 0 while it is not one (the fit note says what to fix)."""
    try:
        return resolve_resolution(resolution, width, height)
    except InvalidRequest:
        return 0, 0


def _hand_set_note(num_frames: float | None, frame_rate: int, width: int, height: int, choice: WindowChoice) -> str:
    frames = int(num_frames or 0)
    return length_note(frames, frame_rate, choice.count(frames, width, height) if frames else 1)


def describe_frames(
    num_frames: float,
    frame_rate: int,
    match_audio: bool = False,
    resolution: str = DEFAULT_RESOLUTION,
    width: float | None = 768,
    height: float | None = 512,
    window_frames: float | None = 0,
    window_overlap_frames: float | None = DEFAULT_OVERLAP,
):
    """The length note as the slider moves by hand (no round trip to the audio); with "match audio length" on,
    sync_frames writes it (the slider may show one window of a longer video)."""
    if match_audio:
        return gr.skip()
    try:
        choice = WindowChoice.from_form(window_frames, window_overlap_frames, None)
    except InvalidRequest:
        choice = WindowChoice()
    w, h = _size_or_zero(resolution, width, height)
    return _hand_set_note(num_frames, frame_rate, w, h, choice)


def describe_audio(audio: str | None) -> str:
    """The note under the voice box: how long the clip is, or what is wrong with it, where the visitor looks."""
    if not audio:
        return ""
    try:
        seconds = media.audio_duration(audio)
    except (InvalidRequest, OSError, ValueError) as exc:
        return f"⚠ {exc}"
    if seconds <= 0:
        return "⚠ the audio clip is empty (zero length): upload one with speech"
    return f"{seconds:.2f} s of audio"


def show_resolution(choice: str):
    return gr.update(visible=choice == CUSTOM)
