"""The review panel's HTML: history gallery items, the selected result's facts, the reproduce verdict and the A/B
player's markup (its script is static/ab_player.js). Pure functions of review.py's entries; no gradio, no torch."""

from __future__ import annotations

import html
import logging
import time
import urllib.parse
from collections.abc import Sequence
from pathlib import Path

from ltx_demo import ab_pair, review
from ltx_demo.types import InvalidRequest

logger = logging.getLogger(__name__)


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
    a: ab_pair.VideoInfo,
    b: ab_pair.VideoInfo,
    labels: tuple[str, str],
    peaks: Sequence[tuple[float, float]],
    notes: Sequence[str] = (),
    shown: tuple[Path, Path] | None = None,
) -> str:
    """Two videos on one timeline: play/pause, previous/next frame at the videos' fps, a scrubber, and the audio
    waveform with a playhead. `shown` are the silent copies the videos play (ab_pair.video_only); the one sound track
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
