"""Bundles: the generator's files, the manifest, check-bundle, and clear errors for broken or missing paths."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ltx_demo.checkpoints import Bundle, BundleError, check_bundle, resolve_bundle, write_manifest
from ltx_demo.engine import Engine

DROPPED_KEY = "model.diffusion_model.transformer_blocks.0.attn1.to_q.weight"


def copy_bundle(bundle: Bundle, dest) -> Bundle:
    shutil.copytree(bundle.root, dest)
    return Bundle.from_dir(dest)


def rewrite_checkpoint(bundle: Bundle, drop: str | None = None, config_edit=None) -> Bundle:
    with safe_open(bundle.checkpoint, framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys() if k != drop}
        metadata = f.metadata()
    config = json.loads(metadata["config"])
    if config_edit:
        config_edit(config)
    save_file(tensors, bundle.checkpoint, metadata={"config": json.dumps(config)})
    return write_manifest(bundle)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ltx_demo", *args], capture_output=True, text=True, timeout=300)


def test_tiny_bundle_is_small_manifested_and_passes_check(tiny_bundle):
    manifest = json.loads((tiny_bundle.root / "bundle.json").read_text())
    assert manifest["synthetic"] is True and manifest["generator_version"] >= 1
    assert len(manifest["fingerprint"]) == 64
    total = sum(c["bytes"] for c in manifest["components"].values())
    assert total < 60 * 1024**2
    assert all(not c.problems for c in check_bundle(tiny_bundle))


def test_generator_is_deterministic_and_lora_delta_matters(tiny_bundle, tmp_path):
    from ltx_demo.synthetic import make_bundle

    again = make_bundle(tmp_path / "again", scale="tiny")
    assert again.fingerprint == tiny_bundle.fingerprint
    with (
        safe_open(tiny_bundle.distilled_lora, framework="pt") as lora,
        safe_open(tiny_bundle.checkpoint, framework="pt") as ckpt,
    ):
        keys = [k for k in lora.keys() if k.endswith("lora_A.weight")]
        assert any("to_gate_logits" in k for k in keys)
        for key in keys[:10]:
            stem = key.removesuffix(".lora_A.weight")
            a, b = lora.get_tensor(key).float(), lora.get_tensor(stem + ".lora_B.weight").float()
            weight = ckpt.get_tensor("model." + stem + ".weight").float()
            ratio = float((b @ a).norm() / weight.norm())
            assert 0.05 < ratio < 0.2, (key, ratio)


def test_missing_key_is_named_by_check_bundle_and_generate(tiny_bundle, tmp_path, small_request):
    broken = rewrite_checkpoint(copy_bundle(tiny_bundle, tmp_path / "broken"), drop=DROPPED_KEY)
    problems = [p for c in check_bundle(broken) if c.name == "transformer" for p in c.problems]
    assert problems and "transformer_blocks.0.attn1.to_q.weight" in problems[0]

    engine = Engine(broken, tmp_path / "out", device="cpu")
    with pytest.raises(BundleError, match=r"transformer_stage_1.*missing 1 tensors.*to_q"):
        engine.generate(small_request())

    cli = run_cli("check-bundle", "--bundle", str(broken.root))
    assert cli.returncode != 0 and "missing 1 tensors" in cli.stderr + cli.stdout


def test_bad_metadata_is_refused_clearly(tiny_bundle, tmp_path, small_request):
    broken = rewrite_checkpoint(
        copy_bundle(tiny_bundle, tmp_path / "badmeta"), config_edit=lambda c: c["transformer"].update(dropout=0.5)
    )
    problems = [p for c in check_bundle(broken) for p in c.problems]
    assert any("dropout" in p for p in problems)
    cli = run_cli(
        "generate",
        "--bundle",
        str(broken.root),
        "--width",
        "64",
        "--height",
        "64",
        "--num-frames",
        "9",
        "--steps",
        "1",
        "--output-dir",
        str(tmp_path / "out"),
    )
    assert cli.returncode == 2
    # stderr: the phase lines as they started, then the error as one line (no traceback)
    last = cli.stderr.strip().splitlines()[-1]
    assert last.startswith("error (bundle)") and "dropout" in last and "Traceback" not in cli.stderr
    assert not list((tmp_path / "out").glob("*.mp4")) if (tmp_path / "out").exists() else True


def test_path_flags_name_what_is_wrong(tiny_bundle, tmp_path):
    with pytest.raises(BundleError, match=r"--gemma-root"):
        resolve_bundle(
            checkpoint=str(tiny_bundle.checkpoint),
            distilled_lora=str(tiny_bundle.distilled_lora),
            spatial_upsampler=str(tiny_bundle.spatial_upsampler),
        )
    with pytest.raises(BundleError, match=r"--checkpoint-path .*nothing"):
        resolve_bundle(
            checkpoint=str(tmp_path / "nope.safetensors"),
            distilled_lora=str(tiny_bundle.distilled_lora),
            spatial_upsampler=str(tiny_bundle.spatial_upsampler),
            gemma_root=str(tiny_bundle.gemma_root),
        )
    with pytest.raises(BundleError, match=r"no bundle.json"):
        resolve_bundle(str(tmp_path))
    real = resolve_bundle(
        checkpoint=str(tiny_bundle.checkpoint),
        distilled_lora=str(tiny_bundle.distilled_lora),
        spatial_upsampler=str(tiny_bundle.spatial_upsampler),
        gemma_root=str(tiny_bundle.gemma_root),
    )
    assert real.synthetic is False  # four flags describe a real, unmanifested bundle


def test_generate_cli_prints_one_json_object(tiny_bundle, tmp_path):
    cli = run_cli(
        "generate",
        "--bundle",
        str(tiny_bundle.root),
        "--width",
        "64",
        "--height",
        "64",
        "--num-frames",
        "9",
        "--steps",
        "1",
        "--output-dir",
        str(tmp_path),
    )
    assert cli.returncode == 0, cli.stderr
    summary = json.loads(cli.stdout)
    for key in (
        "output",
        "elapsed_seconds",
        "peak_vram_gib",
        "peak_rss_gib",
        "width",
        "height",
        "num_frames",
        "frame_rate",
        "seed",
        "quantization",
        "compute_dtype",
        "residency",
        "device",
        "synthetic",
        "audio_note",
        "phases",
    ):
        assert key in summary, key
    assert summary["quantization"] == "fp8-cast" and summary["synthetic"] is True
    assert (tmp_path / summary["output"]).exists() or __import__("os").path.exists(summary["output"])


def test_embedded_default_is_generated_into_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LTX_DEMO_CACHE", str(tmp_path))
    bundle = resolve_bundle()
    assert bundle.synthetic and bundle.root.parent == tmp_path
    assert torch.is_tensor(torch.zeros(1))  # torch import stays cheap here; the bundle reads no weights
