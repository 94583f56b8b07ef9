"""What a benchmark record's runs say, read the same way by every table: the runs that finished (no OOM), the
later runs (after the first, which builds the models or warms the caches) and the mean of their seconds."""

from __future__ import annotations


def finished(runs: list[dict]) -> list[dict]:
    return [r for r in runs if not r.get("oom")]


def later_runs(runs: list[dict]) -> list[dict]:
    """The finished runs after the first; the one run when there is only one."""
    done = finished(runs)
    return done[1:] or done


def mean(values: list[float | None]) -> float | None:
    values = [v for v in values if v is not None]
    return round(sum(values) / len(values), 2) if values else None


def later_seconds(runs: list[dict]) -> float | None:
    """The mean elapsed seconds of the later runs (the steady state a visitor sees)."""
    return mean([r.get("elapsed_seconds") for r in later_runs(runs)])
