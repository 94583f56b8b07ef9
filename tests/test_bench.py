"""The benchmark commands on the tiny bundle (CPU): bench, forward-bench and bench-report write what the docs show."""

from __future__ import annotations

import json

import pytest

from ltx_demo.cli import bench_configs, main
from ltx_demo.cli_flags import build_parser

from .conftest import ASSETS


def test_forward_bench_times_each_shape_and_quantization_against_bf16(tiny_bundle, tmp_path, capsys):
    out = tmp_path / "forward.json"
    code = main(
        [
            "forward-bench",
            "--bundle",
            str(tiny_bundle.root),
            "--device",
            "cpu",
            "--shapes",
            "128x128x17,128x128x17/4,256x128x17",
            "--quantization",
            "fp8-cast,bf16",  # bf16 runs first whatever the order: it is the reference
            "--warmup",
            "1",
            "--repeats",
            "2",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    entries = json.loads(out.read_text())["forward"]
    assert [(e["quantization"], e["shape"]) for e in entries] == [
        (q, s) for q in ("bf16", "fp8-cast") for s in ("128x128x17", "128x128x17/4", "256x128x17")
    ]
    # 128x128x17 -> a 4x4x3 latent; 256x128 doubles the width; /4 keeps the tokens per pass and batches 4 passes.
    assert [e["video_tokens"] for e in entries[:3]] == [48, 48, 96]
    assert [e["batch"] for e in entries[:3]] == [1, 4, 1]
    for entry in entries:
        assert len(entry["runs"]) == 2 and entry["seconds"] > 0 and entry["fp8_gemm_calls_per_forward"] == 0
        assert entry["card"] and entry["command"].startswith("python -m ltx_demo forward-bench")
    bf16 = [e for e in entries if e["quantization"] == "bf16"]
    fp8 = [e for e in entries if e["quantization"] == "fp8-cast"]
    assert all(e["relative_error_vs_bf16"] == 0.0 and e["ratio_to_bf16"] == 1.0 for e in bf16)
    # fp8 weights change the output, by an fp8-sized amount.
    assert all(0.0005 < e["relative_error_vs_bf16"] < 0.1 for e in fp8), fp8

    into, markdown = tmp_path / "benchmarks.json", tmp_path / "benchmarks.md"
    assert main(["bench-report", str(out), "--into", str(into), "--markdown", str(markdown)]) == 0
    assert len(json.loads(into.read_text())["forward"]) == 6
    assert main(["bench-report", str(out), "--into", str(into), "--markdown", str(markdown)]) == 0
    assert len(json.loads(into.read_text())["forward"]) == 6  # the same measurement again replaces, not appends
    table = markdown.read_text()
    assert "| no | 128x128x17/4 | 48 x 4 | fp8-cast |" in table
    capsys.readouterr()


@pytest.mark.parametrize("residency", ["persistent"])
def test_bench_runs_a_configuration_and_reports_identical_outputs(tiny_bundle, tmp_path, residency, capsys):
    out = tmp_path / "bench.json"
    args = ["bench", "--bundle", str(tiny_bundle.root), "--device", "cpu", "--output-dir", str(tmp_path / "mp4")]
    args += ["--resolutions", "64x64", "--num-frames", "9", "--steps", "2", "--runs", "2", "--quantization", "bf16"]
    args += ["--residency", residency, "--audio", str(ASSETS / "speech_hello.wav"), "--out", str(out)]
    args += ["--baseline-runs", "1"]  # --baseline stock is the default: A2VidPipelineTwoStage timed in the same run
    assert main(args) == 0
    results = json.loads(out.read_text())
    (config,) = results["configs"]
    (stock,) = results["baseline"]
    assert stock["resolution"] == "64x64" and stock["command"] == config["command"] and len(stock["runs"]) == 1
    assert stock["runs"][0]["elapsed_seconds"] > 0 and len(stock["runs"][0]["output_hash"]) == 64
    assert config["resolution"] == "64x64" and config["residency"] == residency and len(config["runs"]) == 2
    first, second = config["runs"]
    assert config["identical_outputs"] is True and first["output_hash"] == second["output_hash"]
    assert first["phases"]["stage_1"] > 0 and first["counters"]["stage_2_transformer_calls"] > 0
    assert "transformer" in first["components"]["device_models"]

    into, markdown = tmp_path / "benchmarks.json", tmp_path / "benchmarks.md"
    assert main(["bench-report", str(out), "--into", str(into), "--markdown", str(markdown)]) == 0
    roofline = tmp_path / "roofline.json"
    args = ["roofline", "--bundle", str(tiny_bundle.root), "--device", "cpu", "--width", "64", "--height", "64"]
    assert main([*args, "--num-frames", "9", "--out", str(roofline)]) == 0
    (flops,) = json.loads(roofline.read_text())["roofline"]
    assert flops["stage_1_flops_per_call"] > 0 and flops["stage_2_flops_per_call"] > 0 and flops["decode_flops"] > 0
    assert main(["bench-report", str(roofline), "--into", str(into), "--markdown", str(markdown)]) == 0
    table = markdown.read_text()
    assert "## Roofline" in table
    stage_1 = flops["stage_1_flops_per_call"] * second["counters"]["stage_1_transformer_calls"]
    assert f"| cpu | 64x64x9 | bf16, {config['variant']} | stage_1 | {stage_1:.3g} |" in table
    assert "| 64x64 | 9 | 2 | bf16 | persistent |" in table
    expected = round(stock["runs"][0]["elapsed_seconds"], 2) / round(second["elapsed_seconds"], 2)
    assert f"| True | {expected:.2f}x |" in table  # x stock (same run): the stock pipeline's seconds / the row's
    assert "own `A2VidPipelineTwoStage`" in table and "| 64x64 | 9 | 2 | cpu |" in table
    assert config["default_settings"] is False and "| persistent | " + config["variant"] + " | no |" in table
    capsys.readouterr()


def test_bench_marks_the_configurations_that_run_the_default_settings():
    """Only `--quantization default` (or the device's default named), persistent, batched guidance, the engine's
    auto choices and the default steps count as what a user gets with no flags."""
    parser = build_parser()
    base = ["bench", "--resolutions", "768x512,1280x768", "--out", "x.json", "--residency", "persistent,cold-start"]
    configs = bench_configs(parser.parse_args(base), "fp8-scaled-mm")
    assert {c.quantization for c in configs} == {"fp8-scaled-mm"}  # "default" resolved to the device's
    assert [(c.resolution, c.residency) for c in configs if c.default_settings] == [
        ("768x512", "persistent"),
        ("1280x768", "persistent"),
    ]
    for changed in (["--steps", "8"], ["--cuda-graphs", "off"], ["--attention", "xformers"], ["--compile-blocks"],
                    ["--batch-guidance", "off"], ["--quantization", "fp8-cast"],
                    ["--decode-tiling", "frame"]):  # fmt: skip
        assert not any(c.default_settings for c in bench_configs(parser.parse_args(base + changed), "fp8-scaled-mm"))
    frame_tiles = bench_configs(parser.parse_args([*base, "--decode-tiling", "frame"]), "bf16")
    assert {c.decode_tiling for c in frame_tiles} == {"frame"}
    named = bench_configs(parser.parse_args([*base, "--quantization", "fp8-cast,bf16"]), "fp8-cast")
    assert [c.quantization for c in named if c.default_settings] == ["fp8-cast", "fp8-cast"]


@pytest.mark.parametrize("prompt_cache", ["0", "16"])
def test_bench_cold_start_reads_the_models_it_kept_after_the_first_run(tiny_bundle, tmp_path, capsys, prompt_cache):
    """Cold-start's second run reads the transformer and the embeddings processor kept as built; with the prompt
    cache on (the default) its prompt comes from the cache instead, so it builds no embeddings processor at all."""
    out, kept = tmp_path / "bench.json", tmp_path / "kept"
    args = ["bench", "--bundle", str(tiny_bundle.root), "--device", "cpu", "--output-dir", str(tmp_path / "mp4")]
    args += ["--resolutions", "64x64", "--num-frames", "9", "--steps", "2", "--runs", "2", "--quantization"]
    args += ["fp8-cast", "--residency", "cold-start", "--cold-start-cache-dir", str(kept), "--baseline", "none"]
    args += ["--audio", str(ASSETS / "speech_hello.wav"), "--out", str(out), "--prompt-cache", prompt_cache]
    assert main(args) == 0
    (config,) = json.loads(out.read_text())["configs"]
    first, second = config["runs"]
    cached = prompt_cache != "0"
    assert first["kept_builds"] == {}
    assert second["kept_builds"] == ({"transformer": 1} if cached else {"transformer": 1, "embeddings_processor": 1})
    assert second["counters"].get("prompt_texts_from_cache", 0) == (2 if cached else 0)
    assert config["identical_outputs"] is True and "kept as built" in config["variant"]
    assert ("prompt from the cache" in config["variant"]) is cached
    assert len([f for f in kept.iterdir() if not f.name.startswith(".")]) == 2
    capsys.readouterr()
