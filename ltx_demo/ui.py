"""The Gradio demo: portrait + audio + prompt in, lip-synced video out, with live memory and timing readouts beside it.

Built on the engine's public API only: imports neither torch nor ltx_* (app.py builds the engine and hands it in).
"""

from __future__ import annotations

import dataclasses
import html
import json
import logging
import secrets
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import gradio as gr
from PIL import Image

from ltx_demo import media, results, review
from ltx_demo.requests import (
    FRAME_RATES,
    MAX_FRAMES,
    MAX_SEED,
    MAX_STEPS,
    check_request,
    max_frames_at,
    parse_request,
    whole_number,
)
from ltx_demo.types import (
    GIB,
    GenerationCancelled,
    GenerationFailed,
    GenerationRequest,
    GenerationResult,
    GuidanceParams,
    ImageFit,
    InvalidRequest,
    OutOfMemory,
    Progress,
    Quantization,
    Residency,
    VramSample,
)

logger = logging.getLogger(__name__)

CUSTOM = "custom"
# Every event that runs the pipeline shares one queue of one: jobs never overlap on the device, a second click while
# one is pending is dropped.
GPU_JOB = dict(concurrency_limit=1, concurrency_id="gpu", trigger_mode="once")
RESOLUTIONS = (
    ("768 × 512 · landscape", "768x512"),
    ("1024 × 768 · landscape", "1024x768"),
    ("1280 × 768 · landscape", "1280x768"),
    ("512 × 768 · portrait", "512x768"),
    ("768 × 1024 · portrait", "768x1024"),
    ("768 × 1280 · portrait", "768x1280"),
    ("Custom W × H", CUSTOM),
)
DEFAULT_RESOLUTION = "768x512"
DEFAULT_STEPS = 30
DEFAULT_SEED = 42
READOUT_INTERVAL_S = 0.5  # the engine samples every 0.25 s; the panel redraws twice a second
DENOISING_PHASES = ("stage_1", "stage_2")
SYNTHETIC_BANNER = (
    "<b>Synthetic weights: the output is noise.</b> Start with <code>--bundle DIR</code> or "
    "<code>--checkpoint-path CKPT --distilled-lora-path LORA --spatial-upsampler-path UPSAMPLER "
    "--gemma-root GEMMA_DIR</code> to use LTX-2.3."
)
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
PHASE_COLORS = ("#6366f1", "#0ea5e9", "#10b981", "#f59e0b", "#ef4444", "#8b5cf6", "#14b8a6", "#ec4899")
LOAD_COLOR = "#94a3b8"


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


# -- small pure helpers (unit-tested) -------------------------------------------------------------------------------
def gib(num_bytes: int | None, digits: int = 2) -> str:
    """Bytes inside, GiB only at the edges."""
    return "—" if num_bytes is None else f"{num_bytes / GIB:.{digits}f}"


def resolve_resolution(choice: str, width: Any, height: Any) -> tuple[int, int]:
    """A preset "WxH" or the custom fields (the browser sends 64.0); whether they are legal is check_request's."""
    if choice == CUSTOM:
        return whole_number(width, "width"), whole_number(height, "height")
    try:
        w, h = (int(v) for v in str(choice).lower().split("x"))
    except ValueError:
        raise InvalidRequest(f"resolution {choice!r}: pick a preset or {CUSTOM!r} with a width and height") from None
    return w, h


def matched_frames(audio_path: str, audio_start: float, frame_rate: int, width: int, height: int) -> tuple[int, float]:
    """'Match audio length': the largest legal frame count the audio from the offset covers, and that audio's length."""
    total = media.audio_duration(audio_path)
    if total <= 0:
        raise InvalidRequest("the audio clip is empty (zero length): upload one with speech")
    remaining = total - float(audio_start or 0)
    if remaining <= 0:
        raise InvalidRequest(f"audio start {audio_start} s is at or past the clip's end: lower the start offset")
    return min(media.frames_for_duration(remaining, frame_rate), max_frames_at(width, height)), remaining


def samples_key(samples: Sequence[VramSample]) -> tuple[int, float]:
    """Cheap identity of a sample list, so the panel only redraws the plot when it changed."""
    return (len(samples), samples[-1].t if samples else -1.0)


def samples_payload(samples: Sequence[VramSample]) -> list[list]:
    """The exact numbers the plot shows (bytes, seconds), embedded in it for anyone checking the readout."""
    return [
        [
            s.t,
            s.phase,
            s.allocated_bytes,
            s.reserved_bytes,
            s.peak_bytes,
            s.device_used_bytes,
            s.device_total_bytes,
            s.rss_bytes,
        ]
        for s in samples
    ]


def phase_segments(samples: Sequence[VramSample]) -> list[tuple[str, float, float]]:
    """(phase, start, end) runs of consecutive samples in the same phase: the plot's bands and boundaries."""
    segments: list[tuple[str, float, float]] = []
    for sample in samples:
        if segments and segments[-1][0] == sample.phase:
            segments[-1] = (sample.phase, segments[-1][1], sample.t)
        else:
            if segments:
                name, start, _ = segments[-1]
                segments[-1] = (name, start, sample.t)
            segments.append((sample.phase, sample.t, sample.t))
    return segments


def _nice_step(span: float, ticks: int = 4) -> float:
    raw = span / ticks if span > 0 else 1.0
    for step in (0.05, 0.1, 0.2, 0.25, 0.5, 1, 2, 5, 10, 20, 25, 50, 100, 200, 500):
        if step >= raw:
            return step
    return raw


# -- HTML readouts --------------------------------------------------------------------------------------------------
def memory_plot_html(samples: Sequence[VramSample], cuda: bool) -> str:
    """An SVG line plot of memory over the run with the phase boundaries marked (bands + labels)."""
    data = html.escape(json.dumps(samples_payload(samples)), quote=True)
    if len(samples) < 2:
        return (
            f'<div class="plot-empty" data-samples="{data}">The memory plot fills in live while a video is '
            "generated.</div>"
        )
    width, height, left, right, top, bottom = 640, 250, 46, 12, 40, 40
    plot_w, plot_h = width - left - right, height - top - bottom
    if cuda:
        series = [
            ("allocated", "#6366f1", "", [s.allocated_bytes for s in samples]),
            ("reserved", "#0ea5e9", "6 3", [s.reserved_bytes for s in samples]),
            ("device used (NVML)", "#f97316", "2 3", [s.device_used_bytes for s in samples]),
        ]
    else:
        series = [("process RSS", "#6366f1", "", [s.rss_bytes for s in samples])]
    series = [s for s in series if any(v is not None for v in s[3])]
    t_end = max(samples[-1].t, 1e-3)
    y_top = max([v for *_, values in series for v in values if v is not None] + [1]) / GIB * 1.08
    y_step = _nice_step(y_top)
    y_top = y_step * max(1, -(-y_top // y_step))

    def x(t: float) -> float:
        return left + plot_w * t / t_end

    def y(value: float) -> float:
        return top + plot_h * (1 - value / GIB / y_top)

    parts = [
        f'<svg class="memory-plot" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="memory over the run" data-samples="{data}">'
    ]
    colors: dict[str, str] = {}
    label_rows = [0.0, 0.0, 0.0]  # where the last label in each row ends (px)
    labelled: set[str] = set()
    for phase, start, end in phase_segments(samples):
        if phase == "idle":  # between phases (the telemetry's own name for "no phase open")
            continue
        color = (
            LOAD_COLOR
            if phase.startswith("load:")
            else colors.setdefault(phase, PHASE_COLORS[len(colors) % len(PHASE_COLORS)])
        )
        x0, x1 = x(start), x(end)
        parts.append(
            f'<rect x="{x0:.1f}" y="{top}" width="{max(x1 - x0, 0.5):.1f}" height="{plot_h}" '
            f'fill="{color}" fill-opacity="0.10"><title>{html.escape(phase)}: {start:.2f}–{end:.2f} s'
            "</title></rect>"
        )
        parts.append(
            f'<line class="phase-boundary" data-phase="{html.escape(phase)}" x1="{x0:.1f}" x2="{x0:.1f}" '
            f'y1="{top}" y2="{top + plot_h}" stroke="{color}" stroke-width="1" stroke-opacity="0.7"/>'
        )
        text_x = min(x0 + 2, width - right - 5.6 * len(phase))  # keep the last labels inside the plot
        row = next((r for r, end_x in enumerate(label_rows) if end_x < text_x), None)
        if row is not None and not phase.startswith("load:") and phase not in labelled:
            labelled.add(phase)
            label_rows[row] = text_x + 5.6 * len(phase) + 4
            parts.append(
                f'<text x="{text_x:.1f}" y="{top - 4 - 10 * row}" class="phase-label" fill="{color}">'
                f"{html.escape(phase)}</text>"
            )
    value = 0.0
    while value <= y_top + 1e-9:
        parts.append(
            f'<line x1="{left}" x2="{left + plot_w}" y1="{y(value * GIB):.1f}" y2="{y(value * GIB):.1f}" class="grid"/>'
        )
        parts.append(
            f'<text x="{left - 6}" y="{y(value * GIB) + 4:.1f}" class="tick" text-anchor="end">{value:g}</text>'
        )
        value += y_step
    t_step = _nice_step(t_end, 6)
    t = 0.0
    while t <= t_end + 1e-9:
        parts.append(f'<text x="{x(t):.1f}" y="{top + plot_h + 16}" class="tick" text-anchor="middle">{t:g}</text>')
        t += t_step
    parts.append(f'<text x="{left + plot_w}" y="{height - 4}" class="tick" text-anchor="end">seconds</text>')
    parts.append(
        f'<text transform="translate(11 {top + plot_h / 2:.0f}) rotate(-90)" class="tick" '
        'text-anchor="middle">GiB</text>'
    )
    for name, color, dash, values in series:
        points = " ".join(f"{x(s.t):.1f},{y(v):.1f}" for s, v in zip(samples, values, strict=True) if v is not None)
        parts.append(
            f'<polyline points="{points}" fill="none" stroke="{color}" stroke-width="2" '
            f'stroke-dasharray="{dash}" data-series="{name}"/>'
        )
    legend_x, legend_y = left, height - 4  # under the time axis, clear of the phase lines
    for name, color, dash, _ in series:
        parts.append(
            f'<line x1="{legend_x}" x2="{legend_x + 16}" y1="{legend_y - 4}" y2="{legend_y - 4}" stroke="{color}" '
            f'stroke-width="2" stroke-dasharray="{dash}"/><text x="{legend_x + 20}" y="{legend_y}" '
            f'class="legend">{html.escape(name)}</text>'
        )
        legend_x += 30 + 6 * len(name)
    parts.append("</svg>")
    return "".join(parts)


def memory_now_html(sample: VramSample, cuda: bool, running: bool) -> str:
    """The live numbers: torch.cuda allocated / reserved / peak and NVML used / total, or process RSS without CUDA."""
    label = "during this run" if running else "idle"
    if cuda:
        device = (
            "NVML unavailable"
            if sample.device_total_bytes is None
            else f"{gib(sample.device_used_bytes)} / {gib(sample.device_total_bytes)}"
        )
        cards = [
            ("Allocated", gib(sample.allocated_bytes), "GiB · torch.cuda"),
            ("Reserved", gib(sample.reserved_bytes), "GiB · torch.cuda"),
            ("Peak", gib(sample.peak_bytes), "GiB · max allocated, this phase"),
            ("Device used / total", device, "GiB · NVML, all processes"),
            ("Process RSS", gib(sample.rss_bytes), "GiB · host memory"),
        ]
        note = ""
    else:
        cards = [("Process RSS", gib(sample.rss_bytes), "GiB · host memory")]
        note = '<div class="no-cuda">No CUDA device: running on the CPU, so there is no VRAM to show.</div>'
    body = "".join(
        f'<div class="card"><div class="card-label">{name}</div><div class="card-value">{value}</div>'
        f'<div class="card-unit">{unit}</div></div>'
        for name, value, unit in cards
    )
    return f'<div class="memory-now" data-state="{label}">{body}{note}</div>'


def status_html(status: dict, job_line: str) -> str:
    """The status line: busy or idle, what is loading, what is resident, on which device."""
    if status.get("loading"):
        pill, state = "loading", f"loading {html.escape(status['loading'])}"
    elif status.get("busy"):
        pill, state = "busy", "generating"
    else:
        pill, state = "idle", "idle"
    resident = status.get("resident") or []
    resident_text = f"{len(resident)} model(s) resident: {', '.join(resident)}" if resident else "no models resident"
    residency = status.get("residency") or {}
    if residency.get("host_cache_bytes"):
        resident_text += f"; host cache {residency['host_cache_bytes'] / GIB:.1f} GiB"
    if kept := residency.get("kept_as_built"):
        resident_text += f"; kept on disk for cold-start: {', '.join(kept)} ({sum(kept.values()) / GIB:.1f} GiB)"
    device = html.escape(str(status.get("device", "?"))) + ("" if status.get("cuda") else " (no CUDA device)")
    return (
        f'<div class="status-line"><span class="pill pill-{pill}">{state}</span>'
        f'<span class="status-item">device: {device}</span>'
        f'<span class="status-item resident">{html.escape(resident_text)}</span>'
        f'<span class="status-item job">{html.escape(job_line)}</span></div>'
    )


def result_html(result: GenerationResult) -> str:
    """Total elapsed, peaks, resident before/after, then the per-phase table (wall time and peak memory)."""
    summary = result.summary()
    vram = "—" if result.peak_vram_bytes is None else f"{gib(result.peak_vram_bytes)} GiB"
    facts = [
        ("Total", f"{summary['elapsed_seconds']:.3f} s"),
        ("Peak VRAM", vram if result.peak_vram_bytes is not None else "— (no CUDA device)"),
        ("Peak RSS", f"{gib(result.peak_rss_bytes)} GiB"),
        ("Seed used", str(result.seed)),
        (
            "Video",
            f"{result.width}×{result.height}, {result.num_frames} frames @ {result.frame_rate} fps "
            f"({result.num_frames / result.frame_rate:.2f} s)",
        ),
        ("Weights", f"{result.quantization} (compute {result.compute_dtype}), {result.residency}"),
        ("Resident before", ", ".join(result.resident_before) or "nothing"),
        ("Resident after", ", ".join(result.resident_after) or "nothing"),
        ("Audio", result.audio_note),
    ]
    fact_rows = "".join(
        f'<div class="fact"><span class="fact-label">{name}</span>'
        f'<span class="fact-value" data-fact="{name}">{html.escape(value)}</span></div>'
        for name, value in facts
    )
    rows = []
    for phase in sorted(result.phases, key=lambda p: p.started_at):
        nested = phase.name.startswith("load:") and phase.name != "load:configure"
        seconds = summary["phases"][phase.name]["seconds"]
        rows.append(
            f'<tr class="{"nested" if nested else ""}" data-phase="{html.escape(phase.name)}">'
            f'<td class="phase-name">{"↳ " if nested else ""}{html.escape(phase.name)}</td>'
            f'<td class="num">{phase.started_at:.3f}</td><td class="num seconds">{seconds:.3f}</td>'
            f'<td class="num">{gib(phase.peak_vram_bytes, 3)}</td><td class="num">{gib(phase.peak_rss_bytes, 3)}'
            "</td></tr>"
        )
    table = (
        '<table class="phase-table"><thead><tr><th>phase</th><th>start (s)</th><th>wall time (s)</th>'
        "<th>peak VRAM (GiB)</th><th>peak RSS (GiB)</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>"
    )
    output = html.escape(result.output)
    return f'<div class="result" data-output="{output}"><div class="facts">{fact_rows}</div>{table}</div>'


def api_summary(result: GenerationResult) -> dict:
    """What `generate` returns to API clients and shows as the result's parameters: the engine's summary plus the
    request, the provenance (input hashes, versions, bundle fingerprint) and where the JSON sidecar was saved."""
    sidecar = Path(result.output).with_suffix(".json")
    try:
        record = json.loads(sidecar.read_text()).get("provenance") or {}
    except (OSError, json.JSONDecodeError):
        record = {}
    return result.summary() | {
        "request": dataclasses.asdict(result.request),
        "provenance": record,
        "parameters_file": str(sidecar),
    }


# -- review: history, selected result, A/B view ---------------------------------------------------------------------
def file_url(path: str | Path) -> str:
    """A URL the page can load a file from (gradio's file route; the output folder is in allowed_paths). Relative, so
    it also works behind a root path or a share link."""
    return "gradio_api/file=" + urllib.parse.quote(str(Path(path).resolve()))


def history_items(entries: Sequence[review.HistoryEntry]) -> tuple[list[tuple[str, str]], list[str]]:
    """The gallery, newest first: (thumbnail, caption with the key parameters, elapsed seconds and peak VRAM), and
    each item's mp4 in the same order (what a click on item i loads)."""
    items, videos = [], []
    for entry in entries:
        try:
            items.append((str(review.thumbnail(entry)), entry.caption()))
        except (InvalidRequest, OSError, ValueError) as exc:
            logger.warning("history: no thumbnail for %s (%s)", entry.video.name, exc)
            continue
        videos.append(str(entry.video))
    return items, videos


def reproduce_verdict(original: review.HistoryEntry, output: str, difference: dict, notes: Sequence[str]) -> str:
    """One line for the reviewer: did the re-run decode to the same frames and audio as the original?"""
    frames = difference["frames"]
    if difference["frames_identical"] and difference["audio_identical"]:
        text = (
            f"Reproduced {original.video.name} into a new file, {Path(output).name}: all {frames[1]} decoded frames "
            "and every audio sample are identical to the original."
        )
    else:
        text = (
            f"Re-ran {original.video.name} into {Path(output).name}, but it differs: frames identical "
            f"{difference['frames_identical']} ({frames[0]} vs {frames[1]}, max pixel difference "
            f"{difference['max_pixel_difference']}), audio identical {difference['audio_identical']}. The original "
            f"ran on {original.result.get('device', '?')}."
        )
    return " ".join([text, *notes])


def _short_hash(value: str | None) -> str:
    return f"{value[:12]}…" if value else "not recorded"


def selected_html(entry: review.HistoryEntry | None, verdict: str = "") -> str:
    """The selected result's facts: what was asked, what ran, how long, how much memory, and what it came from."""
    if entry is None:
        return '<div class="result-empty">Click a result in the history to load its video and parameters.</div>'
    request, result, record = entry.request, entry.result, entry.provenance
    guidance = request.get("guidance") or {}
    inputs = record.get("inputs") or {}
    versions = record.get("versions") or {}
    ran = record.get("ran") or {}
    vram = entry.peak_vram_gib
    facts = [
        ("Made", time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(entry.created_at))),
        ("File", entry.video.name),
        ("Seed · steps", f"{entry.value('seed')} · {request.get('steps')}"),
        (
            "Video",
            f"{entry.value('width')}×{entry.value('height')}, {entry.value('num_frames')} frames @ "
            f"{entry.value('frame_rate')} fps",
        ),
        ("Weights", f"{entry.value('quantization')} (compute {result.get('compute_dtype', '?')})"),
        ("Residency", f"{request.get('residency')} → ran {result.get('residency', ran.get('residency', '?'))}"),
        (
            "Guidance",
            f"CFG {guidance.get('cfg_scale')} · STG {guidance.get('stg_scale')} · rescale "
            f"{guidance.get('rescale_scale')} · modality {guidance.get('modality_scale')} · LoRA "
            f"{request.get('distilled_lora_strength')}",
        ),
        ("Elapsed", "?" if entry.elapsed_seconds is None else f"{entry.elapsed_seconds:.3f} s"),
        ("Peak VRAM", "— (no CUDA device)" if vram is None else f"{vram:.2f} GiB"),
        ("Device", str(result.get("device", ran.get("device", "?")))),
        (
            "Portrait",
            f"{(inputs.get('image') or {}).get('name', '?')} · sha256 "
            f"{_short_hash((inputs.get('image') or {}).get('sha256'))}",
        ),
        (
            "Audio",
            f"{(inputs.get('audio') or {}).get('name', '?')} · sha256 "
            f"{_short_hash((inputs.get('audio') or {}).get('sha256'))}",
        ),
        ("Bundle", _short_hash((record.get("bundle") or result.get("bundle") or {}).get("fingerprint"))),
        ("Versions", " · ".join(f"{k} {v}" for k, v in versions.items() if v) or "not recorded"),
    ]
    rows = "".join(
        f'<div class="fact"><span class="fact-label">{name}</span>'
        f'<span class="fact-value" data-fact="{name}">{html.escape(value)}</span></div>'
        for name, value in facts
    )
    prompt = html.escape(request.get("prompt") or "")
    note = f'<div class="review-verdict">{html.escape(verdict)}</div>' if verdict else ""
    return (
        f'<div class="selected-result" data-video="{html.escape(str(entry.video))}">{note}<div class="facts">{rows}'
        f'</div><div class="selected-prompt"><span class="fact-label">Prompt</span> {prompt}</div></div>'
    )


WAVE_WIDTH, WAVE_HEIGHT = 1000, 80


def waveform_svg(peaks: Sequence[tuple[float, float]], duration: float, fps: float) -> str:
    """The audio under the videos: min/max bars, a second grid, and the playhead the page's script moves."""
    mid = WAVE_HEIGHT / 2
    scale = mid / max([max(abs(lo), abs(hi)) for lo, hi in peaks] + [1e-6])
    step = WAVE_WIDTH / max(1, len(peaks))
    bars = "".join(
        f"M{(i + 0.5) * step:.1f} {mid - hi * scale:.1f}V{mid - lo * scale + 0.5:.1f}"
        for i, (lo, hi) in enumerate(peaks)
    )
    grid = "".join(
        f'<line x1="{WAVE_WIDTH * t / duration:.1f}" x2="{WAVE_WIDTH * t / duration:.1f}" y1="0" y2="{WAVE_HEIGHT}" '
        f'class="ab-grid"/><text x="{WAVE_WIDTH * t / duration + 3:.1f}" y="11" class="ab-tick">{t:g} s</text>'
        for t in [i * 0.5 for i in range(int(duration / 0.5) + 1)]
        if t < duration
    )
    return (
        f'<svg class="ab-wave-svg" viewBox="0 0 {WAVE_WIDTH} {WAVE_HEIGHT}" preserveAspectRatio="none" role="img" '
        f'aria-label="audio waveform, click to seek" data-bins="{len(peaks)}">{grid}'
        f'<path d="{bars}" class="ab-bars" stroke-width="{max(step * 0.7, 0.6):.2f}"/>'
        f'<line class="ab-playhead" x1="0" x2="0" y1="0" y2="{WAVE_HEIGHT}"/></svg>'
        f'<div class="ab-wave-caption">audio (what you hear) · {duration:.3f} s · {fps:g} fps</div>'
    )


def compare_html(
    a: review.VideoInfo,
    b: review.VideoInfo,
    labels: tuple[str, str],
    peaks: Sequence[tuple[float, float]],
    notes: Sequence[str] = (),
    shown: tuple[Path, Path] | None = None,
) -> str:
    """Two videos on one timeline: play/pause, previous/next frame at the videos' fps, a scrubber, and the audio
    waveform with a playhead. `shown` are the silent copies the videos play (review.video_only); the one sound track
    (A's, or B's after "hear B") plays from an <audio> element, the clock both videos follow (AB_SCRIPT)."""
    duration, fps = a.duration, a.fps
    shown = shown or (a.path, b.path)
    videos = "".join(
        f'<figure class="ab-side"><figcaption><b>{side.upper()}</b> · {html.escape(label)}</figcaption>'
        f'<video class="ab-video" data-role="{side}" src="{html.escape(file_url(silent))}" preload="auto" '
        f'playsinline muted width="{info.width}" height="{info.height}"></video>'
        f'<div class="ab-file">{html.escape(info.path.name)}</div></figure>'
        for side, info, label, silent in (("a", a, labels[0], shown[0]), ("b", b, labels[1], shown[1]))
    )
    sound = (
        f'<audio class="ab-sound" preload="auto" src="{html.escape(file_url(a.path))}" '
        f'data-src-a="{html.escape(file_url(a.path))}" data-src-b="{html.escape(file_url(b.path))}"></audio>'
    )
    note_html = "".join(f'<div class="ab-note">{html.escape(n)}</div>' for n in notes)
    controls = (
        '<div class="ab-controls">'
        '<button type="button" id="ab-prev" data-ab="prev" title="previous frame (←)">◀ frame</button>'
        '<button type="button" id="ab-play" data-ab="play" title="play / pause both (space)">▶ Play</button>'
        '<button type="button" id="ab-next" data-ab="next" title="next frame (→)">frame ▶</button>'
        f'<input type="range" id="ab-scrub" class="ab-scrub" min="0" max="{duration:.6f}" step="any" value="0" '
        'aria-label="shared timeline">'
        f'<span class="ab-time">frame 1 / {a.num_frames} · 0.000 s</span>'
        '<span class="ab-audio">hear: <button type="button" data-ab="audio" data-side="a" class="on">A</button>'
        '<button type="button" data-ab="audio" data-side="b">B</button></span></div>'
    )
    return (
        f'<div class="ab-root" tabindex="0" data-fps="{fps:.6f}" data-frames="{a.num_frames}" '
        f'data-duration="{duration:.6f}" data-audio="a" data-state="paused">'
        f'<div class="ab-videos">{videos}</div>{sound}{controls}'
        f'<div class="ab-wave">{waveform_svg(peaks, duration, fps)}</div>{note_html}</div>'
    )


def compare_message_html(message: str) -> str:
    return f'<div class="ab-refused" data-reason="{html.escape(message)}">⚠ {html.escape(message)}</div>'


def ab_notes(a: review.HistoryEntry | None, b: review.HistoryEntry | None) -> list[str]:
    """What differs between A and B besides the point of the comparison, so nobody misreads it."""
    if a is None or b is None:
        return []
    notes = []
    hashes = [{k: (v or {}).get("sha256") for k, v in (e.provenance.get("inputs") or {}).items()} for e in (a, b)]
    if hashes[0].get("audio") and hashes[1].get("audio") and hashes[0]["audio"] != hashes[1]["audio"]:
        notes.append("A and B were made from different audio: you hear one of them (pick which with 'hear').")
    if hashes[0].get("image") and hashes[1].get("image") and hashes[0]["image"] != hashes[1]["image"]:
        notes.append("A and B were made from different portraits.")
    if a.request.get("prompt") != b.request.get("prompt"):
        notes.append("A and B have different prompts.")
    differing = [
        name
        for name in ("seed", "steps", "width", "height", "quantization", "distilled_lora_strength", "guidance")
        if a.request.get(name) != b.request.get(name)
    ]
    if differing:
        notes.append("They differ in: " + ", ".join(differing) + ".")
    return notes


# The A/B player: one script for the page (launch(head=...)), delegated events, so it keeps working whenever the
# compare view is re-rendered. The clock is the one <audio> element (the heard result's sound); both silent videos
# follow it the same way, through their playbackRate alone: 0 until the clock runs (an audio output takes tens of ms
# to start), +-10% for drift (25% past half a frame); a seek only past 1.5 frames, since a pause or seek makes a
# playing video restart its pipeline. Frame steps land on frame centres, (k + 0.5) / fps.
AB_SCRIPT = """
(() => {
  if (window.ltxAB) return;
  const tuning = {nudge: 0.1, bigNudge: 0.25, deadbandFrames: 0.25, seekFrames: 1.5, windowFrames: 0.5};
  const parts = () => {
    const root = document.querySelector('#ab-compare .ab-root');
    if (!root) return null;
    const a = root.querySelector('video[data-role="a"]'), b = root.querySelector('video[data-role="b"]');
    const clock = root.querySelector('audio.ab-sound');
    if (!a || !b || !clock) return null;
    return {root, a, b, clock, videos: [a, b], fps: parseFloat(root.dataset.fps),
            frames: parseInt(root.dataset.frames, 10), duration: parseFloat(root.dataset.duration)};
  };
  const frameAt = (p, t) => Math.min(p.frames - 1, Math.max(0, Math.floor(t * p.fps + 1e-6)));
  const draw = (p) => {
    const t = p.clock.currentTime, paused = p.clock.paused;
    const label = p.root.querySelector('.ab-time');
    if (label) label.textContent = `frame ${frameAt(p, t) + 1} / ${p.frames} · ${t.toFixed(3)} s`;
    const scrub = p.root.querySelector('.ab-scrub');
    if (scrub && document.activeElement !== scrub) scrub.value = String(t);
    const head = p.root.querySelector('.ab-playhead');
    if (head) { const x = String(1000 * Math.min(t, p.duration) / p.duration); head.setAttribute('x1', x);
                head.setAttribute('x2', x); }
    const button = p.root.querySelector('[data-ab="play"]');
    if (button) button.textContent = paused ? '▶ Play' : '❚❚ Pause';
    p.root.dataset.state = paused ? 'paused' : 'playing';
  };
  const seek = (p, t) => {
    t = Math.max(0, Math.min(t, p.duration));
    for (const media of [p.clock, ...p.videos]) media.currentTime = t;
    draw(p);
  };
  const pause = (p) => {
    for (const media of [p.clock, ...p.videos]) { media.pause(); media.playbackRate = 1; }
    for (const video of p.videos) video.currentTime = p.clock.currentTime;
    draw(p);
  };
  const clock = {t: 0, at: 0, running: false};  // the clock's progress over the last window
  const play = async (p) => {
    if (p.clock.currentTime >= p.duration - 0.5 / p.fps) seek(p, 0);
    for (const video of p.videos) { video.currentTime = p.clock.currentTime; video.playbackRate = 0; }
    Object.assign(clock, {t: p.clock.currentTime, at: performance.now(), running: false});
    try { await Promise.all([p.clock.play(), ...p.videos.map((v) => v.play())]); }
    catch (err) { console.warn('A/B play', err); pause(p); }
    draw(p);
  };
  const step = (p, delta) => {
    pause(p);
    const k = Math.min(p.frames - 1, Math.max(0, Math.round(p.clock.currentTime * p.fps - 0.5) + delta));
    seek(p, (k + 0.5) / p.fps);
  };
  const hear = (p, side) => {
    const src = p.clock.dataset[side === 'b' ? 'srcB' : 'srcA'];
    p.root.querySelectorAll('[data-ab="audio"]').forEach((el) => el.classList.toggle('on', el.dataset.side === side));
    if (p.root.dataset.audio === side) return;
    p.root.dataset.audio = side;
    const t = p.clock.currentTime;
    pause(p);
    p.clock.src = src;
    p.clock.addEventListener('loadedmetadata', () => seek(p, t), {once: true});
  };
  const follow = (p, video, t) => {
    const drift = video.currentTime - t, band = tuning.deadbandFrames / p.fps;
    const nudge = Math.abs(drift) > 0.5 / p.fps ? tuning.bigNudge : tuning.nudge;
    let rate = drift < -band ? 1 + nudge : drift > band ? 1 - nudge : 1;
    if (!clock.running) rate = drift > -band ? 0 : 1;  // wait for the clock, unless already behind it
    if (Math.abs(drift) > tuning.seekFrames / p.fps) { video.currentTime = t; rate = 1; }
    if (video.playbackRate !== rate) video.playbackRate = rate;
    if (video.paused && !video.ended) video.play().catch(() => {});
  };
  const tick = () => {
    const p = parts();
    if (p && !p.clock.paused) {
      const t = p.clock.currentTime, now = performance.now();
      if (t >= p.duration || p.clock.ended) {
        pause(p); seek(p, p.duration);
      } else {
        const wall = (now - clock.at) / 1000;
        if (wall >= tuning.windowFrames / p.fps) Object.assign(clock, {t, at: now, running: t - clock.t > 0.5 * wall});
        for (const video of p.videos) follow(p, video, t);
      }
      draw(p);
    }
    requestAnimationFrame(tick);
  };
  document.addEventListener('click', (event) => {
    const p = parts();
    if (!p) return;
    const control = event.target.closest('#ab-compare [data-ab]');
    if (control) {
      const action = control.dataset.ab;
      if (action === 'play') { if (p.clock.paused) play(p); else pause(p); }
      else if (action === 'prev') step(p, -1);
      else if (action === 'next') step(p, 1);
      else if (action === 'audio') hear(p, control.dataset.side);
      return;
    }
    const wave = event.target.closest('#ab-compare .ab-wave-svg');
    if (wave) {
      const box = wave.getBoundingClientRect();
      pause(p); seek(p, (event.clientX - box.left) / box.width * p.duration);
    }
  });
  document.addEventListener('input', (event) => {
    if (!event.target.matches('#ab-compare .ab-scrub')) return;
    const p = parts();
    if (!p) return;
    if (!p.clock.paused) pause(p);
    seek(p, parseFloat(event.target.value));
  });
  document.addEventListener('keydown', (event) => {
    if (!event.target.closest || !event.target.closest('#ab-compare .ab-root')) return;
    const p = parts();
    if (!p || event.target.matches('input')) return;
    if (event.key === 'ArrowLeft') { step(p, -1); event.preventDefault(); }
    else if (event.key === 'ArrowRight') { step(p, 1); event.preventDefault(); }
    else if (event.key === ' ') { if (p.clock.paused) play(p); else pause(p); event.preventDefault(); }
  });
  document.addEventListener('loadedmetadata', (event) => {
    const p = parts();
    if (p && p.root.contains(event.target)) draw(p);
  }, true);
  window.ltxAB = {parts, play, pause, step, seek, hear, tuning};
  requestAnimationFrame(tick);
})();
"""


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


# -- layout and events ----------------------------------------------------------------------------------------------
CSS = """
.gradio-container { max-width: 1480px !important; }
#header h1 { margin: 0; font-size: 1.6rem; }
#header p { margin: 2px 0 0; opacity: .75; }
#synthetic-banner { background: #fff7ed; border: 1px solid #fdba74; color: #7c2d12; border-radius: 10px;
  padding: 10px 14px; }
#synthetic-banner code { background: #ffedd5; padding: 0 3px; border-radius: 4px; }
.status-line { display: flex; flex-wrap: wrap; gap: 6px 16px; align-items: center; font-size: .9rem; }
.status-line .status-item { opacity: .85; }
.pill { border-radius: 999px; padding: 2px 10px; font-weight: 600; font-size: .85rem; }
.pill-idle { background: #dcfce7; color: #166534; }
.pill-busy { background: #e0e7ff; color: #3730a3; }
.pill-loading { background: #fef3c7; color: #92400e; }
.section-title h3 { margin: 4px 0 0; }
.progress-line { font-variant-numeric: tabular-nums; font-size: .95rem; padding: 4px 2px; }
.progress-line .bar { height: 6px; background: #e5e7eb; border-radius: 4px; margin-top: 4px; overflow: hidden; }
.progress-line .bar > div { height: 100%; background: #6366f1; transition: width .3s; }
.memory-now { display: flex; flex-wrap: wrap; gap: 8px; }
.memory-now .card { flex: 1 1 120px; border: 1px solid var(--border-color-primary); border-radius: 10px;
  padding: 8px 10px; background: var(--block-background-fill); }
.card-label { font-size: .78rem; opacity: .7; }
.card-value { font-size: 1.35rem; font-weight: 650; font-variant-numeric: tabular-nums; }
.card-unit { font-size: .72rem; opacity: .6; }
.no-cuda { flex-basis: 100%; font-size: .85rem; opacity: .8; }
.memory-plot { width: 100%; height: auto; }
.memory-plot .grid { stroke: #e5e7eb; stroke-width: 1; }
.memory-plot .tick, .memory-plot .legend { font-size: 10px; fill: #6b7280; }
.memory-plot .phase-label { font-size: 10px; font-weight: 600; }
.plot-empty { padding: 18px; text-align: center; opacity: .6; border: 1px dashed var(--border-color-primary);
  border-radius: 10px; }
.facts { display: grid; grid-template-columns: repeat(auto-fill, minmax(210px, 1fr)); gap: 4px 14px;
  margin-bottom: 8px; }
.fact { display: flex; flex-direction: column; }
.fact-label { font-size: .75rem; opacity: .65; }
.fact-value { font-variant-numeric: tabular-nums; }
.phase-table { width: 100%; border-collapse: collapse; font-size: .88rem; font-variant-numeric: tabular-nums; }
.phase-table th, .phase-table td { padding: 3px 8px; border-bottom: 1px solid var(--border-color-primary); }
.phase-table th { text-align: left; font-weight: 600; opacity: .8; }
.phase-table td.num { text-align: right; }
.phase-table tr.nested td { opacity: .7; }
.phase-table tr.nested td.phase-name { padding-left: 18px; }
#duration-note, #match-note, #fit-note { font-size: .85rem; opacity: .85; }
#generate-row button { min-height: 48px; }
#history .caption-label { font-size: .72rem; white-space: normal; }
.selected-result .facts { grid-template-columns: repeat(auto-fill, minmax(230px, 1fr)); }
.selected-prompt { font-size: .88rem; margin-top: 4px; }
.review-verdict { font-weight: 600; padding: 6px 10px; margin-bottom: 8px; border-radius: 8px; background: #ecfdf5;
  border: 1px solid #6ee7b7; color: #065f46; }
.ab-root { border: 1px solid var(--border-color-primary); border-radius: 12px; padding: 10px;
  background: var(--block-background-fill); outline: none; }
.ab-videos { display: flex; gap: 10px; }
.ab-side { flex: 1 1 0; margin: 0; min-width: 0; }
.ab-side figcaption { font-size: .85rem; margin-bottom: 4px; }
.ab-video { width: 100%; height: auto; max-height: 420px; object-fit: contain; background: #000; border-radius: 6px;
  image-rendering: pixelated; }
.ab-file { font-size: .72rem; opacity: .6; }
.ab-controls { display: flex; align-items: center; gap: 8px; margin: 8px 0 4px; flex-wrap: wrap; }
.ab-controls button { border: 1px solid var(--border-color-primary); border-radius: 8px; padding: 4px 12px;
  background: var(--button-secondary-background-fill); cursor: pointer; font-variant-numeric: tabular-nums; }
.ab-controls #ab-play { min-width: 92px; font-weight: 600; }
.ab-controls .ab-audio button.on { background: #6366f1; color: #fff; }
.ab-scrub { flex: 1 1 200px; }
.ab-time { font-variant-numeric: tabular-nums; font-size: .88rem; min-width: 170px; }
.ab-wave-svg { width: 100%; height: 80px; display: block; cursor: pointer; background: #f8fafc; border-radius: 6px; }
.ab-wave-svg .ab-bars { stroke: #6366f1; fill: none; }
.ab-wave-svg .ab-grid { stroke: #e2e8f0; stroke-width: 1; }
.ab-wave-svg .ab-tick { font-size: 10px; fill: #64748b; }
.ab-wave-svg .ab-playhead { stroke: #ef4444; stroke-width: 2; vector-effect: non-scaling-stroke; }
.ab-wave-caption, .ab-note { font-size: .78rem; opacity: .75; margin-top: 2px; }
.ab-refused { padding: 12px; border: 1px solid #fdba74; background: #fff7ed; color: #7c2d12; border-radius: 10px; }
"""


def theme() -> gr.themes.Base:
    """The demo's look; a function, not a module constant, so importing ui.py builds nothing."""
    return gr.themes.Soft(primary_hue="indigo", secondary_hue="sky", neutral_hue="slate", radius_size="lg")


def launch_options() -> dict:
    """Gradio 6 takes the theme, CSS and head (the A/B player's script) at launch()."""
    return {"theme": theme(), "css": CSS, "head": f"<script>{AB_SCRIPT}</script>"}


def _disabled_options_css(elem_id: str, values: Sequence[str]) -> str:
    """Gradio radios cannot disable one choice: grey it out and block clicks (the engine refuses it too)."""
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
    return fitted, f"{image_fit} to {w}×{h}" + (f" · {note}" if note else "")


def sync_frames(
    audio: str | None,
    audio_start: float | None,
    frame_rate: int,
    match_audio: bool,
    resolution: str,
    width: float | None,
    height: float | None,
):
    """The frame slider's value while "match audio length" is on (never otherwise, so no reply can undo what a
    visitor typed), its maximum at this size, and a note. The slider stays enabled: moving it unticks the box."""
    try:
        w, h = resolve_resolution(resolution, width, height)
    except InvalidRequest:
        w, h = 0, 0
    cap = max_frames_at(w, h)
    limit = f" · at most {cap} frames at {w}×{h}" if cap < MAX_FRAMES else ""
    if not match_audio:
        return gr.update(maximum=cap), f"frames set by hand{limit}"
    if not audio:
        return gr.update(maximum=cap), "upload audio to match its length"
    try:
        frames, covered = matched_frames(audio, audio_start or 0.0, int(frame_rate), w, h)
    except InvalidRequest as exc:
        return gr.update(maximum=cap), f"⚠ {exc}"
    note = f"audio from {audio_start or 0:.2f} s lasts {covered:.2f} s{limit}"
    return gr.update(value=frames, maximum=cap), note


def describe_frames(num_frames: float, frame_rate: int) -> str:
    frames = int(num_frames or 0)
    return f"**{frames} frames = {frames / int(frame_rate):.2f} s** at {frame_rate} fps"


def build_demo(
    engine: EngineLike,
    *,
    negative_prompt: str,
    presets_path: Path | None = None,
    default_prompt: str = "",
    preload: bool = False,
) -> gr.Blocks:
    """The whole app. app.py builds the engine, passes the pipeline's default negative prompt, then queues and launches
    what this returns; the GPU event has concurrency_limit=1, so others see their queue position."""
    controller = DemoController(engine, negative_prompt)
    presets = Preset.load_all(presets_path) if presets_path else ()
    blocked = controller.unavailable()
    status = engine.status()
    guidance = GuidanceParams()
    first = presets[0] if presets else None
    # The first view is computed here, not by page-load events: a load event's late reply could overwrite what a
    # visitor has already changed (it is not ordered with the change events).
    first_resolution = first.resolution if first else DEFAULT_RESOLUTION
    first_image, first_audio = (str(first.image), str(first.audio)) if first else (None, None)
    first_preview, first_fit_note = preview_fit(first_image, first_resolution, 768, 512, ImageFit.CROP.value)
    first_slider, first_match_note = sync_frames(first_audio, 0.0, FRAME_RATES[0], True, first_resolution, 768, 512)
    first_frames = first_slider.get("value", 97)

    with gr.Blocks(title="LTX-2 audio-to-video", analytics_enabled=False) as demo:
        gr.HTML(
            '<div id="header"><h1>LTX-2 audio-to-video</h1><p>A portrait, a voice and a prompt in; a lip-synced video '
            "out, with live memory and timing beside it.</p></div>",
            js_on_load=None,
        )
        if engine.bundle.synthetic:
            gr.HTML(f'<div id="synthetic-banner">⚠ {SYNTHETIC_BANNER}</div>', js_on_load=None)
        status_line = gr.HTML(status_html(status, ""), elem_id="status-line", js_on_load=None)
        gr.HTML(_disabled_options_css("quantization", list(blocked)), js_on_load=None)

        with gr.Row(equal_height=False):
            # ---------------------------------------------------------------- inputs
            with gr.Column(scale=5, min_width=420):
                gr.Markdown("### 1 · Portrait, voice and prompt", elem_classes="section-title")
                with gr.Row():
                    image = pass_unreadable_files_on(
                        gr.Image(
                            value=first_image,
                            type="filepath",
                            image_mode=None,
                            sources=["upload", "webcam", "clipboard"],
                            label="Portrait (upload, webcam or paste)",
                            elem_id="portrait",
                            height=250,
                        )
                    )
                    preview = gr.Image(
                        first_preview,
                        label="What the model sees",
                        interactive=False,
                        elem_id="fit-preview",
                        height=250,
                        buttons=[],
                        format="png",
                    )
                fit_note = gr.Markdown(first_fit_note, elem_id="fit-note")
                audio = gr.Audio(
                    value=first_audio,
                    type="filepath",
                    format=None,
                    sources=["upload", "microphone"],
                    label="Voice (upload or record: WAV, MP3, FLAC, OGG, M4A)",
                    elem_id="audio",
                )
                prompt = gr.Textbox(
                    first.prompt if first else default_prompt,
                    label="Prompt",
                    lines=3,
                    max_lines=8,
                    elem_id="prompt",
                    placeholder="Describe the person, the scene and the camera.",
                )
                with gr.Accordion("Negative prompt (prefilled with ltx-pipelines' default)", open=False):
                    negative = gr.Textbox(negative_prompt, show_label=False, lines=4, elem_id="negative-prompt")
                resolution = gr.Radio(
                    RESOLUTIONS,
                    value=first_resolution,
                    label="Resolution (W × H)",
                    elem_id="resolution",
                    render=False,
                )
                image_fit = gr.Radio(
                    [f.value for f in ImageFit],
                    value=ImageFit.CROP.value,
                    render=False,
                    label="Fit the portrait",
                    elem_id="image-fit",
                    info="crop fills the frame; pad keeps the whole photo",
                )
                if presets:
                    gr.Examples(
                        [[str(p.image), str(p.audio), p.prompt, p.resolution, ImageFit.CROP.value] for p in presets],
                        inputs=[image, audio, prompt, resolution, image_fit],
                        example_labels=[p.name for p in presets],
                        label="Presets: one click fills everything",
                        cache_examples=False,
                        elem_id="presets",
                    )

                gr.Markdown("### 2 · Video", elem_classes="section-title")
                resolution.render()
                with gr.Row(visible=False) as custom_row:
                    width = gr.Number(768, label="Width (multiple of 64)", precision=0, step=64, elem_id="width")
                    height = gr.Number(512, label="Height (multiple of 64)", precision=0, step=64, elem_id="height")
                with gr.Row():
                    image_fit.render()
                    frame_rate = gr.Radio(
                        list(FRAME_RATES), value=FRAME_RATES[0], label="Frame rate (fps)", elem_id="frame-rate"
                    )
                with gr.Row(equal_height=True):
                    match_audio = gr.Checkbox(
                        True,
                        label="Match audio length",
                        elem_id="match-audio",
                        info="the longest clip the audio covers from the offset; moving the slider unticks it",
                    )
                    audio_start = gr.Number(
                        0.0, label="Audio start offset (s)", minimum=0, step=0.1, elem_id="audio-start"
                    )
                num_frames = gr.Slider(
                    9,
                    MAX_FRAMES,
                    value=first_frames,
                    step=8,
                    label="Frames (8k+1)",
                    interactive=True,
                    elem_id="frames",
                )
                with gr.Row():
                    duration_note = gr.Markdown(describe_frames(first_frames, FRAME_RATES[0]), elem_id="duration-note")
                    match_note = gr.Markdown(first_match_note, elem_id="match-note")
                with gr.Row(equal_height=True):
                    seed = gr.Number(
                        DEFAULT_SEED, label="Seed", precision=0, minimum=0, maximum=MAX_SEED, elem_id="seed"
                    )
                    randomize_seed = gr.Checkbox(
                        False,
                        label="Randomize seed",
                        elem_id="randomize-seed",
                        info="the seed used is shown with the result",
                    )
                steps = gr.Slider(
                    1,
                    MAX_STEPS,
                    value=DEFAULT_STEPS,
                    step=1,
                    label="Denoising steps (stage 1)",
                    elem_id="steps",
                    info="stage 2 always runs the distilled schedule",
                )
                quant_info = " ".join(QUANTIZATION_NOTES.get(q, q.value) for q in Quantization)
                quant_info += "".join(f" UNAVAILABLE here: {name}: {reason}." for name, reason in blocked.items())
                with gr.Row():
                    quantization = gr.Radio(
                        [q.value for q in Quantization],
                        value=controller.default_quantization(),
                        label="Transformer weights",
                        info=quant_info,
                        elem_id="quantization",
                    )
                    residency = gr.Radio(
                        [r.value for r in Residency],
                        value=Residency.PERSISTENT.value,
                        label="Residency",
                        elem_id="residency",
                        info=" ".join(RESIDENCY_NOTES.get(r.value, r.value) for r in Residency),
                    )
                vram_budget = gr.Number(
                    value=0,
                    minimum=0,
                    label="VRAM budget for residency auto (GiB)",
                    info="auto picks the fastest mode whose peak fits this budget; 0: what the device has free",
                    elem_id="vram-budget",
                )
                with gr.Accordion("Advanced: guidance", open=False):
                    with gr.Row():
                        cfg_scale = gr.Slider(1.0, 10.0, value=guidance.cfg_scale, step=0.1, label="CFG scale")
                        stg_scale = gr.Slider(0.0, 3.0, value=guidance.stg_scale, step=0.1, label="STG scale")
                    with gr.Row():
                        rescale_scale = gr.Slider(0.0, 1.0, value=guidance.rescale_scale, step=0.05, label="Rescale")
                        modality_scale = gr.Slider(
                            1.0, 10.0, value=guidance.modality_scale, step=0.1, label="Audio→video modality scale"
                        )
                    lora_strength = gr.Slider(0.0, 2.0, value=1.0, step=0.05, label="Distilled LoRA strength (stage 2)")

            # ---------------------------------------------------------------- run, result and readouts
            with gr.Column(scale=6, min_width=460):
                with gr.Row(elem_id="generate-row"):
                    generate_button = gr.Button("Generate", variant="primary", scale=3, elem_id="generate")
                    cancel_button = gr.Button("Cancel", variant="stop", scale=1, elem_id="cancel")
                progress_line = gr.HTML(controller.progress_html(), elem_id="progress-line", js_on_load=None)
                video = gr.Video(
                    label="Result (plays with its audio)",
                    elem_id="result-video",
                    interactive=False,
                    buttons=["download"],
                    height=400,
                )
                memory_now = gr.HTML(
                    memory_now_html(engine.memory_now(), status["cuda"], False), elem_id="memory-now", js_on_load=None
                )
                plot = gr.HTML(
                    memory_plot_html(engine.live_samples(), status["cuda"]), elem_id="memory-plot", js_on_load=None
                )
                result_panel = gr.HTML(
                    '<div class="result-empty">Per-phase wall time and peak memory appear here after a run.</div>',
                    elem_id="result-panel",
                    js_on_load=None,
                )
                with gr.Accordion("Parameters (saved next to the video as JSON) and downloads", open=False):
                    downloads = gr.File(
                        label="Downloads", file_count="multiple", interactive=False, elem_id="downloads"
                    )
                    parameters = gr.JSON(label="Parameters", elem_id="parameters", open=True)

        # ---------------------------------------------------------------- review: history, A/B, reproduce, export
        with gr.Column(elem_id="review-section"):
            gr.Markdown(
                "### 3 · Review lip sync: history, A/B comparison, reproduce, export", elem_classes="section-title"
            )
            with gr.Row(equal_height=False):
                with gr.Column(scale=5, min_width=420):
                    history = gr.Gallery(
                        label="History: every finished generation, newest first (click one to load it)",
                        columns=3,
                        height=380,
                        allow_preview=False,
                        object_fit="contain",
                        interactive=False,
                        buttons=[],
                        elem_id="history",
                    )
                    with gr.Row():
                        history_note = gr.Markdown("", elem_id="history-note")
                        refresh_button = gr.Button("Refresh", size="sm", scale=0, elem_id="history-refresh")
                with gr.Column(scale=6, min_width=460):
                    selected_video = gr.Video(
                        label="Selected result", elem_id="selected-video", interactive=False, height=300
                    )
                    selected_panel = gr.HTML(selected_html(None), elem_id="selected-result", js_on_load=None)
                    with gr.Row():
                        reuse_button = gr.Button("Reuse settings", elem_id="reuse-settings")
                        reproduce_button = gr.Button("Reproduce into a new file", elem_id="reproduce")
                        other_take_button = gr.Button(
                            "Compare with bf16 at the same seed", variant="primary", elem_id="compare-other"
                        )
                    with gr.Row():
                        use_a_button = gr.Button("Use as A", size="sm", elem_id="use-as-a")
                        use_b_button = gr.Button("Use as B", size="sm", elem_id="use-as-b")
                    with gr.Accordion("Selected result: its parameters (the JSON sidecar)", open=False):
                        selected_parameters = gr.JSON(label="Parameters", elem_id="selected-parameters")
            with gr.Row(equal_height=True):
                pick_a = gr.Dropdown([], label="A", allow_custom_value=True, scale=4, elem_id="pick-a")
                pick_b = gr.Dropdown([], label="B", allow_custom_value=True, scale=4, elem_id="pick-b")
                compare_button = gr.Button("Compare A/B", variant="primary", scale=1, elem_id="compare")
                export_button = gr.Button("Export A/B as one mp4", scale=1, elem_id="export-pair")
            compare_view = gr.HTML(
                '<div class="result-empty">Pick A and B (same frame count and rate) and press Compare: they play '
                "side by side on one timeline, with one audio track and the waveform under them.</div>",
                elem_id="ab-compare",
                js_on_load=None,
            )
            review_files = gr.File(
                label="Export: the selected result (mp4 + parameters JSON), or the A/B pair as one side-by-side mp4",
                file_count="multiple",
                interactive=False,
                elem_id="review-downloads",
            )
            selected_path = gr.Textbox(visible=False, elem_id="selected-path")
            reproduce_report = gr.JSON(visible=False)
        history_videos = gr.State([])

        result_state = gr.State(None)
        plot_key = gr.State(samples_key(engine.live_samples()))
        timer = gr.Timer(READOUT_INTERVAL_S)

        # -- helpers bound to this demo ------------------------------------------------------------------------
        def show_resolution(choice: str):
            return gr.update(visible=choice == CUSTOM)

        def generate(
            image: str | None,
            audio: str | None,
            prompt: str,
            negative_prompt: str,
            resolution: str,
            width: float | None,
            height: float | None,
            image_fit: str,
            audio_start: float | None,
            match_audio: bool,
            num_frames: float,
            frame_rate: int,
            seed: float | None,
            randomize_seed: bool,
            steps: float,
            quantization: str,
            residency: str,
            vram_budget_gib: float | None,
            cfg_scale: float,
            stg_scale: float,
            rescale_scale: float,
            modality_scale: float,
            distilled_lora_strength: float,
            request: gr.Request,
            progress: gr.Progress = gr.Progress(),  # noqa: B008 -- gradio's documented way to ask for a progress bar
        ):
            """Generate a lip-synced video; returns the video and the run's summary JSON (with its request)."""
            try:
                w, h = resolve_resolution(resolution, width, height)
                frames = num_frames
                if match_audio and audio:
                    try:
                        frames, _ = matched_frames(audio, audio_start or 0.0, int(frame_rate), w, h)
                    except InvalidRequest:
                        pass  # an unreadable or too-short clip: the engine's audio check names what to fix
                guidance = dict(
                    cfg_scale=cfg_scale, stg_scale=stg_scale, rescale_scale=rescale_scale, modality_scale=modality_scale
                )
                fields = dict(
                    image_path=image or "",
                    audio_path=audio or "",
                    prompt=prompt or "",
                    negative_prompt=(negative_prompt or "").strip() or None,  # empty: the default negative prompt
                    width=w,
                    height=h,
                    num_frames=frames,
                    frame_rate=frame_rate,
                    steps=steps,
                    seed=secrets.randbelow(MAX_SEED + 1) if randomize_seed else seed,
                    quantization=quantization,
                    residency=residency,
                    vram_budget_gib=vram_budget_gib or None,  # 0 or empty: the free device memory
                    audio_start=audio_start or 0.0,
                    image_fit=image_fit,
                    guidance=guidance,
                    distilled_lora_strength=distilled_lora_strength,
                )
                generation = parse_request(fields)  # typed here; the engine checks it as it checks every request
            except InvalidRequest as exc:
                raise gr.Error(str(exc), title="Check your input") from None

            def report(text: str, step: int | None, total: int | None) -> None:
                progress((step, total) if step is not None and total else None, desc=text)

            session = getattr(request, "session_hash", None) or "api"
            try:
                result = controller.run(generation, session, report)
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
            if "padded" in result.audio_note:  # the clip is longer than the audio: say so where it is seen
                gr.Warning(f"The audio is shorter than the video. Audio: {result.audio_note}.", title="Audio padded")
            return result.output, api_summary(result), result

        def show_result(result: GenerationResult | None):
            if result is None:
                return gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip()
            sidecar = Path(result.output).with_suffix(".json")
            files = [result.output, *([str(sidecar)] if sidecar.is_file() else [])]
            cuda = result.peak_vram_bytes is not None
            return (
                result_html(result),
                memory_plot_html(result.samples, cuda),
                samples_key(result.samples),
                files,
                result.seed,
            )

        def cancel(request: gr.Request) -> str:
            """Cancel this session's job: it stops between steps and frees what it built."""
            message = controller.cancel(getattr(request, "session_hash", None) or "api")
            gr.Info(message)
            return controller.progress_html()

        def readouts(last_key: tuple, request: gr.Request):
            """The live panel (timer): status line, progress, memory now, and the plot when its samples changed. Each
            tick also says this tab is still open, which keeps what it shows pinned."""
            engine.pins.renew(getattr(request, "session_hash", None) or "api")
            now = engine.status()
            samples = engine.live_samples()
            running = bool(now["busy"])
            sample = samples[-1] if running and samples else engine.memory_now()
            key = samples_key(samples)
            new_plot = memory_plot_html(samples, now["cuda"]) if key != tuple(last_key or ()) else gr.skip()
            return (
                status_html(now, controller.job_line()),
                controller.progress_html(),
                memory_now_html(sample, now["cuda"], running),
                new_plot,
                key,
            )

        def engine_status() -> dict:
            """The engine's status (device, busy, loading, resident models, synthetic) for API clients."""
            return engine.status() | {"unavailable": blocked}

        # -- review -------------------------------------------------------------------------------------------
        def history_entries() -> tuple[review.HistoryEntry, ...]:
            return review.scan_history(engine.output_dir)

        def entry_or_error(path: str | None) -> review.HistoryEntry:
            """Only results in the output folder's history are loaded, compared or re-run (paths come from the page)."""
            entry = review.find_entry(history_entries(), path)
            if entry is None:
                message = "click a result in the history first" if not path else f"{Path(path).name} is not a result"
                raise gr.Error(message, title="No result selected")
            return entry

        def pin(request: gr.Request | None, view: str, *videos: Path) -> None:
            """What this tab's `view` shows is not pruned by --keep-outputs; what it showed before no longer held."""
            engine.pins.pin(getattr(request, "session_hash", None) or "api", view, *videos)

        def show_history():
            """The gallery (newest first), the clicked-item -> mp4 list, the A/B pickers' choices and a count."""
            found = history_entries()
            items, videos = history_items(found)
            choices = [(e.label(), str(e.video)) for e in found if str(e.video) in videos]
            note = (
                f"{len(items)} result(s) in `{engine.output_dir}`"
                if items
                else "No results yet: every finished generation appears here, also after a restart."
            )
            return items, videos, gr.update(choices=choices), gr.update(choices=choices), note

        def history_api() -> list[dict]:
            """Every finished result in the output folder, newest first: key parameters, elapsed s, peak VRAM."""
            return [entry.summary() for entry in history_entries()]

        def load_result(path: str | None, request: gr.Request | None, verdict: str = ""):
            """The selected result: its video, parameters and facts, downloads, and what the one-click A/B runs."""
            entry = entry_or_error(path)
            pin(request, "selected", entry.video)
            other = review.other_quantization(entry.value("quantization"))
            return (
                str(entry.video),
                str(entry.video),
                entry.params(),
                selected_html(entry, verdict),
                [str(entry.video), str(entry.sidecar)],
                gr.update(value=f"Compare with {other} at the same seed"),
            )

        def select_history(videos: list[str], evt: gr.SelectData, request: gr.Request):
            index = evt.index[0] if isinstance(evt.index, list | tuple) else evt.index
            return load_result(videos[index] if isinstance(index, int) and 0 <= index < len(videos) else None, request)

        def select_new_result(result: GenerationResult | None, request: gr.Request):
            return load_result(result.output if result else None, request)

        def reuse_settings(path: str | None):
            """Fill every control from the selected result (its saved inputs, verified by hash)."""
            entry = entry_or_error(path)
            try:
                again, notes = review.reproduce_request(entry)
            except InvalidRequest as exc:
                raise gr.Error(str(exc), title="Cannot reuse these settings") from None
            for note in notes:
                gr.Warning(note)
            size = f"{again.width}x{again.height}"
            preset = size in {value for _, value in RESOLUTIONS}
            g = again.guidance
            return [
                again.image_path,
                again.audio_path,
                again.prompt,
                again.negative_prompt or controller.negative_prompt,
                size if preset else CUSTOM,
                again.width,
                again.height,
                again.image_fit.value,
                again.audio_start,
                False,  # the saved frame count, not one matched to the audio again
                again.num_frames,
                again.frame_rate,
                again.seed,
                False,
                again.steps,
                again.quantization.value,
                again.residency.value,
                again.vram_budget_gib or 0,
                g.cfg_scale,
                g.stg_scale,
                g.rescale_scale,
                g.modality_scale,
                again.distilled_lora_strength,
            ]

        def run_take(generation: GenerationRequest, request: gr.Request, progress: gr.Progress) -> GenerationResult:
            """A review job (reproduce, the other take) through the same controller and queue as Generate."""

            def report(text: str, step: int | None, total: int | None) -> None:
                progress((step, total) if step is not None and total else None, desc=text)

            try:
                return controller.run(generation, getattr(request, "session_hash", None) or "api", report)
            except InvalidRequest as exc:
                raise gr.Error(str(exc), title="Check your input") from None
            except GenerationCancelled as exc:
                raise gr.Error(f"Stopped: {exc}. Nothing was written.", title="Cancelled") from None
            except Exception as exc:
                logger.exception("review run failed")
                raise gr.Error(f"{type(exc).__name__}: {exc}", title="Could not finish") from None

        def refuse_other_bundle(entry: review.HistoryEntry) -> None:
            mismatch = review.bundle_mismatch(entry, engine.bundle.describe())
            if mismatch:
                raise gr.Error(mismatch, title="Cannot reproduce with this bundle")

        def reproduce(
            path: str | None,
            request: gr.Request,
            progress: gr.Progress = gr.Progress(),  # noqa: B008 -- gradio's documented way to ask for a progress bar
        ):
            """Re-run a result from its saved inputs into a NEW file and say whether it decodes identically."""
            entry = entry_or_error(path)
            refuse_other_bundle(entry)
            try:
                again, notes = review.reproduce_request(entry)
            except InvalidRequest as exc:
                raise gr.Error(str(exc), title="Cannot reproduce this result") from None
            result = run_take(again, request, progress)
            difference = review.decoded_difference(entry.video, result.output)
            verdict = reproduce_verdict(entry, result.output, difference, notes)
            report = {"original": str(entry.video), "output": result.output, **difference, "notes": notes}
            return (*load_result(result.output, request, verdict), report)

        def compare(a_path: str | None, b_path: str | None, request: gr.Request) -> str:
            """The A/B view for two results, or why they cannot share a timeline."""
            found = history_entries()
            a, b = review.find_entry(found, a_path), review.find_entry(found, b_path)
            if a is None or b is None:
                message = "pick two results from the history as A and B"
                gr.Warning(message)
                return compare_message_html(message)
            try:
                info_a, info_b = review.VideoInfo.probe(a.video), review.VideoInfo.probe(b.video)
            except InvalidRequest as exc:
                return compare_message_html(str(exc))
            reason = review.why_not_comparable(info_a, info_b)
            if reason:
                gr.Warning(reason, title="Cannot compare these two")
                return compare_message_html(reason)
            pin(request, "compare", a.video, b.video)
            peaks = review.waveform(a.video, info_a.duration)
            shown = (review.video_only(a.video), review.video_only(b.video))
            return compare_html(info_a, info_b, (a.short_label(), b.short_label()), peaks, ab_notes(a, b), shown)

        def other_take(
            path: str | None,
            request: gr.Request,
            progress: gr.Progress = gr.Progress(),  # noqa: B008 -- gradio's documented way to ask for a progress bar
        ):
            """One click: the same request with the other weights (bf16 for a quantized take), then A/B them."""
            entry = entry_or_error(path)
            other = review.other_quantization(entry.value("quantization"))
            reason = engine.unavailable(other)
            if reason:
                raise gr.Error(f"{other} cannot run here: {reason}", title="Cannot make the other take")
            refuse_other_bundle(entry)
            existing = review.find_take(history_entries(), entry, quantization=other)
            if existing is not None:
                gr.Info(f"The {other} take is already in the history ({existing.video.name}): comparing with it.")
                b_path = str(existing.video)
            else:
                try:
                    again, _notes = review.reproduce_request(entry, quantization=other)
                except InvalidRequest as exc:
                    raise gr.Error(str(exc), title="Cannot make the other take") from None
                b_path = run_take(again, request, progress).output
            return str(entry.video), b_path, compare(str(entry.video), b_path, request)

        def export_pair(a_path: str | None, b_path: str | None) -> list[str]:
            """A and B side by side in one mp4 (PyAV), with A's audio, in the output folder's exports/."""
            found = history_entries()
            a, b = review.find_entry(found, a_path), review.find_entry(found, b_path)
            if a is None or b is None:
                raise gr.Error("pick two results from the history as A and B", title="Nothing to export")
            out = results.export_path(engine.output_dir, a.video, b.video)
            labels = (f"A · {a.short_label()}", f"B · {b.short_label()}")
            try:
                review.render_side_by_side(a.video, b.video, out, labels, review.pair_record(a, b))
            except InvalidRequest as exc:
                raise gr.Error(str(exc), title="Cannot export this pair") from None
            return [str(out)]

        # -- events -------------------------------------------------------------------------------------------
        resolution.change(show_resolution, resolution, custom_row, api_name="show_resolution", queue=False)
        gr.on(
            [image.change, resolution.change, width.change, height.change, image_fit.change],
            preview_fit,
            [image, resolution, width, height, image_fit],
            [preview, fit_note],
            api_name="preview_fit",
            concurrency_limit=4,
            show_progress="minimal",
            trigger_mode="always_last",
        )
        gr.on(
            [
                audio.change,
                audio_start.change,
                frame_rate.change,
                match_audio.change,
                resolution.change,
                width.change,
                height.change,
            ],
            sync_frames,
            [audio, audio_start, frame_rate, match_audio, resolution, width, height],
            [num_frames, match_note],
            api_name="match_frames",
            concurrency_limit=4,
            show_progress="hidden",
            trigger_mode="always_last",
        )
        # In the browser only (no round trip, so nothing can arrive late): taking the slider ends "match audio".
        num_frames.input(None, None, match_audio, js="() => false")
        gr.on(
            [num_frames.change, frame_rate.change],
            describe_frames,
            [num_frames, frame_rate],
            duration_note,
            api_name="describe_frames",
            queue=False,
            show_progress="hidden",
        )
        inputs = [
            image,
            audio,
            prompt,
            negative,
            resolution,
            width,
            height,
            image_fit,
            audio_start,
            match_audio,
            num_frames,
            frame_rate,
            seed,
            randomize_seed,
            steps,
            quantization,
            residency,
            vram_budget,
            cfg_scale,
            stg_scale,
            rescale_scale,
            modality_scale,
            lora_strength,
        ]
        run_event = generate_button.click(
            generate,
            inputs,
            [video, parameters, result_state],
            api_name="generate",
            **GPU_JOB,
            show_progress_on=[video],
        )
        run_event.success(
            show_result,
            result_state,
            [result_panel, plot, plot_key, downloads, seed],
            api_name="show_result",
            api_visibility="undocumented",
            show_progress="hidden",
        )
        # Review: the history refreshes after every run (and on page load); its jobs share Generate's GPU queue.
        history_outputs = [history, history_videos, pick_a, pick_b, history_note]
        selected_outputs = [
            selected_path,
            selected_video,
            selected_parameters,
            selected_panel,
            review_files,
            other_take_button,
        ]
        run_event.success(show_history, None, history_outputs, show_progress="hidden", api_visibility="private")
        run_event.success(
            select_new_result,
            result_state,
            selected_outputs,
            show_progress="hidden",
            api_visibility="private",
        )
        demo.load(show_history, None, history_outputs, show_progress="hidden", api_visibility="private")
        refresh_button.click(
            show_history, None, history_outputs, api_name="history_view", api_visibility="undocumented"
        )
        history.select(select_history, history_videos, selected_outputs, api_visibility="private")
        reuse_button.click(reuse_settings, selected_path, inputs, api_name="reuse_settings")
        reproduce_event = reproduce_button.click(
            reproduce,
            selected_path,
            [*selected_outputs, reproduce_report],
            api_name="reproduce",
            **GPU_JOB,
            show_progress_on=[selected_video],
        )
        reproduce_event.success(show_history, None, history_outputs, show_progress="hidden", api_visibility="private")
        other_take_event = other_take_button.click(
            other_take,
            selected_path,
            [pick_a, pick_b, compare_view],
            api_name="compare_other_take",
            **GPU_JOB,
            show_progress_on=[compare_view],
        )
        other_take_event.success(show_history, None, history_outputs, show_progress="hidden", api_visibility="private")
        use_a_button.click(lambda path: path, selected_path, pick_a, queue=False, api_visibility="private")
        use_b_button.click(lambda path: path, selected_path, pick_b, queue=False, api_visibility="private")
        compare_button.click(compare, [pick_a, pick_b], compare_view, api_name="compare", concurrency_limit=4)
        export_button.click(export_pair, [pick_a, pick_b], review_files, api_name="export_pair", concurrency_limit=2)
        # Cancel also drops a queued review job (the running one is stopped by `cancel` above, per session).
        cancel_button.click(None, None, None, cancels=[reproduce_event, other_take_event], queue=False)
        gr.api(history_api, api_name="history")
        # Our cancel stops the running job between steps; gradio's `cancels` also drops a job still in the queue.
        cancel_button.click(
            cancel,
            None,
            progress_line,
            api_name="cancel",
            concurrency_limit=None,
            cancels=[run_event],
            show_progress="hidden",
        )
        timer.tick(
            readouts,
            plot_key,
            [status_line, progress_line, memory_now, plot, plot_key],
            api_name="readouts",
            concurrency_limit=None,
            show_progress="hidden",
            api_visibility="undocumented",
        )
        gr.api(engine_status, api_name="status")

        def tab_closed(request: gr.Request) -> None:
            """A closed tab (its heartbeat ends) releases its pins and cancels its job, which frees what it built."""
            session = getattr(request, "session_hash", None)
            if session:
                engine.pins.release(session)
            if session and controller.has_job(session):
                logger.info("session %s went away: %s", session, controller.cancel(session))

        demo.unload(tab_closed)

    if preload:
        controller.preload_in_background(controller.default_quantization())
    return demo
