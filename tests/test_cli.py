"""The command line as a person meets it: `generate --help` says the defaults, and a run shows its phases on stderr
as they start while stdout keeps the one JSON object."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

from tests.conftest import EVERY_PHASE
from tests.test_ui import ROOT


def test_generate_help_says_the_defaults():
    # Wide enough that argparse does not break a default path at a hyphen (a checkout in /work/wt-ui did).
    wide = os.environ | {"COLUMNS": "400"}
    shown = subprocess.run(
        [sys.executable, "-m", "ltx_demo", "generate", "--help"], capture_output=True, text=True, check=True, cwd=ROOT,
        env=wide,
    ).stdout  # fmt: skip
    text = " ".join(shown.split())  # argparse wraps to the terminal width
    for flag, default in (("--width", 768), ("--height", 512), ("--num-frames", 97), ("--steps", 30), ("--seed", 42)):
        assert re.search(rf"{flag} \S+ .*?\(default: {default}\)", text), flag
    assert re.search(r"--image IMAGE the portrait .*?\(default: \S*astronaut\.png\)", text)
    assert re.search(r"--audio AUDIO the voice .*?\(default: \S*speech_hello\.wav\)", text)
    assert "(default: None)" not in text and "(default: False)" not in text


def test_generate_prints_its_phases_and_their_steps_on_stderr_as_they_start(tmp_path):
    run = subprocess.run(
        [sys.executable, "-m", "ltx_demo", "generate", "--width", "64", "--height", "64", "--num-frames", "9",
         "--steps", "3", "--quantization", "bf16", "--output-dir", str(tmp_path / "out"),
         "--cold-start-cache-dir", "off"],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    summary = json.loads(run.stdout)  # stdout is the JSON object alone
    lines = [re.sub(r"^\[\s*[\d.]+ s\] ", "", line) for line in run.stderr.splitlines()]
    phases = [line for line in lines if not line.startswith(" ")]
    assert phases == [p for p in EVERY_PHASE if p != "load:configure"] + ["done"], run.stderr
    stage_1 = lines[lines.index("stage_1") : lines.index("upsample")]
    assert [line for line in stage_1 if "step" in line] == [f"  stage_1 step {k}/3" for k in (1, 2, 3)], stage_1
    assert "  loading transformer" in stage_1
    decode = lines[lines.index("decode") : lines.index("encode_mp4")]
    assert [line for line in decode if "chunk" in line] == ["  decode chunk 1/1"], decode
    encode = lines[lines.index("encode_mp4") : lines.index("done")]
    # The mp4 encodes while the decoder runs; the encode's tail reports from where it stands, forward, to 9/9.
    encoded = [int(re.fullmatch(r"  encode_mp4 frame (\d)/9", line)[1]) for line in encode if "frame" in line]
    assert encoded == sorted(set(encoded)) and encoded[-1] == 9, encode
    assert summary["num_frames"] == 9 and set(EVERY_PHASE) <= set(summary["phases"])
