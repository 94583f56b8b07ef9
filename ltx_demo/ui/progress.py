"""How far a run is and how long it has left, for the one progress line: the phase that runs, its steps, one overall
bar and an ETA for the whole run (from the last run of the same shape, else from the first denoising steps)."""

from __future__ import annotations

import html
from collections.abc import Mapping
from dataclasses import dataclass

# The flow's phases in order, with a rough share of a first run's time (before anything of this shape was timed):
# stage 1 (guided, many steps) dominates; the weights only steer the bar until a run of this shape has been timed.
PHASE_WEIGHTS = {
    "load:configure": 1,
    "prompt_encode": 6,
    "audio_encode": 2,
    "stage_1": 60,
    "upsample": 3,
    "stage_2": 12,
    "decode": 11,
    "encode_mp4": 5,
}
DENOISING_PHASES = ("stage_1", "stage_2")


@dataclass(frozen=True, slots=True)
class PhaseClock:
    """Where the running job is: its phase (a model load inside a phase does not end it), the step inside it."""

    phase: str
    elapsed: float  # seconds since the run started
    in_phase: float  # seconds since this phase started
    step: int | None = None
    total: int | None = None


def _within(clock: PhaseClock, typical: float | None) -> float:
    """The fraction of the current phase done: its steps, else its time against what it took last time (never 1)."""
    if clock.step is not None and clock.total:
        return min(clock.step / clock.total, 1.0)
    if typical:
        return min(clock.in_phase / typical, 0.95)
    return 0.0


def overall(clock: PhaseClock, previous: Mapping[str, float] | None) -> tuple[float, float | None]:
    """(fraction of the whole run done, seconds left or None when there is nothing to go on yet). `previous` is the
    last run of this shape: seconds per phase."""
    names = list(PHASE_WEIGHTS)
    if clock.phase not in PHASE_WEIGHTS:  # "waiting", "done"
        return (1.0, 0.0) if clock.phase == "done" else (0.0, None)
    index = names.index(clock.phase)
    if previous:
        weights = {name: previous.get(name, 0.0) for name in names}
    else:
        weights = {name: float(w) for name, w in PHASE_WEIGHTS.items()}
    total = sum(weights.values()) or 1.0
    typical = weights[clock.phase] if previous else None
    done = sum(weights[name] for name in names[:index]) + weights[clock.phase] * _within(clock, typical)
    fraction = min(done / total, 0.99)
    if previous:
        # As fast as last time, unless this run is slower so far: then scale what is left by how much slower.
        pace = max(clock.elapsed / done, 1.0) if done > 0 and clock.elapsed > 2 else 1.0
        return fraction, max(total - done, 0.0) * pace
    if clock.phase in DENOISING_PHASES[:1] and clock.step and fraction > 0:
        return fraction, clock.elapsed * (1 - fraction) / fraction
    if index > names.index("stage_1") and fraction > 0:
        return fraction, clock.elapsed * (1 - fraction) / fraction
    return fraction, None


def progress_line_html(text: str, fraction: float | None, state: str) -> str:
    """The one progress display: what runs (or the visitor's last outcome) and, while running, the overall bar."""
    bar = (
        ""
        if fraction is None
        else f'<div class="bar" data-fraction="{fraction:.3f}"><div style="width:{100 * fraction:.0f}%"></div></div>'
    )
    return f'<div class="progress-line" data-state="{state}"><span>{html.escape(text)}</span>{bar}</div>'
