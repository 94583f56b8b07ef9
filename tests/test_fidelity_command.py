"""`python -m ltx_demo fidelity` on the tiny bundle, a small subset of its rows: every speed-up has its row, the stock
pipeline's row is identical to the reference flow, a measured speed-up has its numbers, and what cannot run on the CPU
says why (the full table: docs/fidelity.md)."""

from __future__ import annotations

import json
import math

import pytest

from ltx_demo import cli, cli_flags, fidelity
from tests.conftest import ASSETS

# The rows run (the others are listed as refused or not run): the first two against the reference flow in cold-start.
ONLY = "stock,lora_fused_in_place,prompt_cache"


def test_the_fidelity_command_writes_a_row_per_speed_up_and_the_stock_row_is_identical(tiny_bundle, tmp_path, capsys):
    out, markdown = tmp_path / "fidelity.json", tmp_path / "fidelity.md"
    argv = [
        "fidelity", "--bundle", str(tiny_bundle.root), "--device", "cpu", "--width", "64", "--height", "64",
        "--num-frames", "9", "--steps", "2", "--image", str(ASSETS / "astronaut.png"),
        "--audio", str(ASSETS / "speech_hello.wav"), "--only", ONLY, "--cold-start-cache-dir", "off",
        "--out", str(out), "--markdown", str(markdown),
    ]  # fmt: skip
    assert cli.main(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    data = json.loads(out.read_text())
    rows = {row["key"]: row for row in data["rows"]}
    assert tuple(rows) == fidelity.ROW_KEYS and printed["rows"] == {k: r["status"] for k, r in rows.items()}

    stock = rows["stock"]
    assert stock["status"] == "measured" and stock["identical"], stock
    assert stock["psnr_db"] == math.inf and stock["stage_1_latent_rel_l2"] == stock["final_latent_rel_l2"] == 0
    fused = rows["lora_fused_in_place"]
    assert fused["status"] == "measured" and fused["ran"]["stage_2_lora"] == "fused in place"
    assert fused["reference_ran"]["stage_2_lora"] == "fused copy" and fused["reference_ran"]["flow"] == "reference"
    assert fused["variant_seconds"] > 0 and fused["reference_seconds"] > 0
    cached = rows["prompt_cache"]  # the timed run's texts came from the cache the warm run filled: the same video
    assert cached["status"] == "measured" and cached["identical"] and cached["psnr_db"] == math.inf, cached
    assert cached["ran"]["prompt_texts_from_cache"] == 2 and cached["reference_ran"]["prompt_texts_from_cache"] == 0
    # CUDA only: refused here, with the reason
    for key in ("nf4_gemma", "fp8_scaled_mm", "fp8_fast_accumulation", "cuda_graphs"):
        assert rows[key]["status"] == "refused" and "cpu" in rows[key]["reason"], rows[key]
    assert all(rows[k]["status"] == "not run" for k in ("batched_guidance", "default", "soundfile_audio"))
    assert data["compute_dtype"] == "bfloat16" and data["command"].startswith("python -m ltx_demo fidelity")

    table = markdown.read_text()
    header = "| speed-up | seconds saved | stage-1 latent rel. error | final latent rel. error | PSNR vs reference |"
    assert header in table
    for row in fidelity.ROWS:
        assert f"| {row.speedup} |" in table
    assert "inf (identical)" in table and "Random (synthetic) weights can exaggerate or hide errors" in table


def test_fidelity_only_names_rows_it_knows(tiny_bundle):
    args = cli_flags.build_parser().parse_args(["fidelity", "--only", "stock,warp_drive", "--device", "cpu"])
    with pytest.raises(ValueError, match="unknown rows warp_drive"):
        fidelity.Setup.from_args(args, tiny_bundle, cli_flags.compute_dtype("bf16"))
