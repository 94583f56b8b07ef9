"""The live readouts: the status line, memory now, the memory plot over the run, and the finished run's phase table.

Pure functions from engine snapshots (VramSample, GenerationResult, status dicts) to HTML; no gradio, no torch.
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence

from ltx_demo.types import GIB, GenerationResult, VramSample

READOUT_INTERVAL_S = 0.5  # the engine samples every 0.25 s; the panel redraws twice a second
PHASE_COLORS = ("#6366f1", "#0ea5e9", "#10b981", "#f59e0b", "#ef4444", "#8b5cf6", "#14b8a6", "#ec4899")
LOAD_COLOR = "#94a3b8"
# Phase labels over the plot (10px bold): a generous width per character and a row a line apart, so none overlap.
LABEL_CHAR, LABEL_ROW = 6.4, 13


def gib(num_bytes: int | None, digits: int = 2) -> str:
    """Bytes inside, GiB only at the edges."""
    return "—" if num_bytes is None else f"{num_bytes / GIB:.{digits}f}"


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
        text_x = min(x0 + 2, width - right - LABEL_CHAR * len(phase))  # keep the last labels inside the plot
        row = next((r for r, end_x in enumerate(label_rows) if end_x < text_x), None)
        if row is not None and not phase.startswith("load:") and phase not in labelled:
            labelled.add(phase)
            label_rows[row] = text_x + LABEL_CHAR * len(phase) + 6
            parts.append(
                f'<text x="{text_x:.1f}" y="{top - 4 - LABEL_ROW * row}" class="phase-label" fill="{color}">'
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
    if texts := (status.get("prompt_cache") or {}).get("texts"):
        resident_text += f"; prompt cache {texts} text(s)"
    device = html.escape(str(status.get("device", "?"))) + ("" if status.get("cuda") else " (no CUDA device)")
    return (
        f'<div class="status-line"><span class="pill pill-{pill}">{state}</span>'
        f'<span class="status-item">device: {device}</span>'
        f'<span class="status-item resident" title="{html.escape(resident_text)}">{html.escape(resident_text)}</span>'
        f'<span class="status-item job">{html.escape(job_line)}</span></div>{workers_html(status.get("workers"))}'
    )


def workers_html(workers: Sequence[dict] | None) -> str:
    """One line per worker (app.py --gpus): its device, idle or running, its memory now; "" for one engine."""
    if not workers:
        return ""
    lines = []
    for worker in workers:
        memory = worker.get("memory") or {}  # a VramSample's fields, as a dict (the /status API returns it)
        if memory.get("device_used_bytes") is not None:
            used = f"{gib(memory['device_used_bytes'])} / {gib(memory['device_total_bytes'])} GiB used"
        elif memory.get("allocated_bytes") is not None:
            used = f"{gib(memory['allocated_bytes'])} GiB allocated"
        elif memory.get("rss_bytes") is not None:
            used = f"RSS {gib(memory['rss_bytes'])} GiB"
        else:
            used = "memory —"
        state = worker["state"] + (f" {worker['phase']}" if worker.get("phase") else "")
        if worker.get("step"):
            state += f" step {worker['step'][0]}/{worker['step'][1]}"
        if worker.get("loading"):
            state += f", loading {worker['loading']}"
        lines.append(
            f'<div class="worker-line" data-state="{html.escape(worker["state"])}">worker {worker["index"]} '
            f"({html.escape(worker['label'])}): {html.escape(state)} · {used}</div>"
        )
    return f'<div class="status-workers">{"".join(lines)}</div>'


def prompt_fact(cached: str | None) -> str:
    """Where the prompt's contexts came from (GenerationResult.prompt_cached)."""
    if cached is None:
        return "encoded (Gemma + embeddings processor)"
    if cached == "all":
        return "from the prompt cache (Gemma did not run)"
    return f"{cached} texts from the prompt cache, the rest encoded"


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
        ("Prompt", prompt_fact(result.prompt_cached)),
        ("Resident before", ", ".join(result.resident_before) or "nothing"),
        ("Resident after", ", ".join(result.resident_after) or "nothing"),
        ("Audio", result.audio_note),
    ]
    fact_rows = "".join(
        f'<div class="fact"><span class="fact-label">{name}</span>'
        f'<span class="fact-value" data-fact="{name}">{html.escape(value)}</span></div>'
        for name, value in facts
    )
    cuda = result.peak_vram_bytes is not None  # without CUDA the VRAM column would be all "—": left out
    rows = []
    for phase in sorted(result.phases, key=lambda p: p.started_at):
        nested = phase.name.startswith("load:") and phase.name != "load:configure"
        seconds = summary["phases"][phase.name]["seconds"]
        vram = f'<td class="num vram">{gib(phase.peak_vram_bytes, 3)}</td>' if cuda else ""
        rows.append(
            f'<tr class="{"nested" if nested else ""}" data-phase="{html.escape(phase.name)}">'
            f'<td class="phase-name">{"↳ " if nested else ""}{html.escape(phase.name)}</td>'
            f'<td class="num">{phase.started_at:.3f}</td><td class="num seconds">{seconds:.3f}</td>'
            f'{vram}<td class="num rss">{gib(phase.peak_rss_bytes, 3)}</td></tr>'
        )
    vram_head = "<th>peak VRAM (GiB)</th>" if cuda else ""
    table = (
        '<table class="phase-table"><thead><tr><th>phase</th><th>start (s)</th><th>wall time (s)</th>'
        f"{vram_head}<th>peak RSS (GiB)</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>"
    )
    output = html.escape(result.output)
    return f'<div class="result" data-output="{output}"><div class="facts">{fact_rows}</div>{table}</div>'
