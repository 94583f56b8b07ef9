"""The phase table's memory agrees with the plot: a phase's peak RSS is the highest sample taken inside it."""

from __future__ import annotations

import torch

from ltx_demo.telemetry import DeviceMemory, RunTelemetry


class ScriptedMemory(DeviceMemory):
    """CPU memory whose RSS follows a script: what a decode does (rises, then frees before the phase ends)."""

    def __init__(self, rss: list[int]) -> None:
        super().__init__(torch.device("cpu"))
        self.script = list(rss)

    def rss(self) -> int:
        return self.script.pop(0) if len(self.script) > 1 else self.script[0]


def test_a_phase_peak_rss_is_its_highest_sample_not_its_last():
    gib = 1 << 30
    # phase open (sample), two samples inside (peak 2.9 GiB), phase close reads 1.6 GiB, closing sample 1.6 GiB
    telemetry = RunTelemetry(ScriptedMemory([1 * gib, int(2.9 * gib), 2 * gib, int(1.6 * gib)]))
    with telemetry.phase("decode"):
        telemetry.record_sample()
        telemetry.record_sample()
    (decode,) = telemetry.phases()
    inside = [s.rss_bytes for s in telemetry.samples if s.phase == "decode"]
    assert decode.peak_rss_bytes == max(inside) == int(2.9 * gib)
    assert telemetry.peak_rss() == decode.peak_rss_bytes  # the run's total is no higher than its highest phase
