"""The review page's one-click reference compare, driven in Debian's chromium: a fast-flow result, then the same
request through the reference flow (ltx-pipelines' A2VidPipelineTwoStage exactly) at the same seed, side by side."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.test_browser import fill_small_run, wait_until

pytestmark = pytest.mark.browser


def test_compare_with_the_reference_flow_in_one_click(page, live_app):
    fill_small_run(page, seed=2468, steps=2)
    page.click("#generate")
    page.wait_for_selector("#selected-result .selected-result", state="attached", timeout=120_000)
    button = page.locator("#compare-reference")
    wait_until(lambda: "reference flow" in button.inner_text(), lambda: f"button says {button.inner_text()!r}")
    button.wait_for(state="visible", timeout=60_000)  # the review section is drawn once the history has a result
    assert button.is_enabled()
    button.click()
    page.wait_for_selector("#ab-compare video[data-role='b']", timeout=180_000)
    sources = page.locator("#ab-compare video").evaluate_all("vs => vs.map(v => v.src)")
    assert len(sources) == 2
    folder = live_app.engine.output_dir
    sidecars = sorted(folder.glob("*.json"), key=lambda p: p.stat().st_mtime)
    flows = [json.loads(p.read_text())["result"]["flow"] for p in sidecars]
    assert flows[-2:] == ["fast", "reference"], flows
    reference = json.loads(sidecars[-1].read_text())
    assert reference["result"]["seed"] == 2468 and reference["result"]["lora_mode"] == "fused"
    assert reference["result"]["stage_2_lora"] == "fused copy"
    assert Path(sidecars[-1].with_suffix(".mp4")).is_file()
