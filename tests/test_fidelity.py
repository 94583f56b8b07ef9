"""The reference flow against ltx-pipelines' own A2VidPipelineTwoStage on the CPU with the tiny bundle: identical
frames, latents and audio; and the fast default flow against the reference within the bound measured in
docs/fidelity-differences.md. Both sides compute in bf16, the stock pipeline's dtype (it hard-codes it)."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile
import torch
from PIL import Image

from ltx_demo.engine import Engine
from ltx_demo.fidelity import psnr
from ltx_demo.stock_pipeline import run_stock_a2v
from ltx_demo.types import GenerationRequest, InvalidRequest, Quantization
from tests.conftest import ASSETS

# The upload is 384x384 (not the output size) and the WAV 24 kHz PCM: the stock image and audio loading are exercised.
IMAGE, AUDIO = str(ASSETS / "astronaut.png"), str(ASSETS / "speech_hello.wav")
PROMPT = "A woman speaks to the camera."
SHAPE = dict(width=128, height=128, num_frames=17, frame_rate=24, steps=3, seed=42)
# The fast flow (bf16 compute, fp8-cast) against the reference, measured at 39.8 dB, stage-1 latent max abs 0.85,
# final 0.25 (docs/fidelity-differences.md; the LANCZOS pre-fit of the portrait is most of it): with margin.
FAST_MIN_PSNR_DB, FAST_MAX_STAGE_1, FAST_MAX_FINAL = 36.0, 1.5, 0.5


def request(**fields) -> GenerationRequest:
    return GenerationRequest(**(dict(image_path=IMAGE, audio_path=AUDIO, prompt=PROMPT) | SHAPE | fields))


@pytest.fixture(scope="module")
def bf16_engine(tiny_bundle, tmp_path_factory) -> Engine:
    return Engine(tiny_bundle, tmp_path_factory.mktemp("fidelity-out"), device="cpu", compute_dtype=torch.bfloat16)


@pytest.fixture(scope="module")
def stock(tiny_bundle):
    """A2VidPipelineTwoStage's run per quantization, made once."""
    runs = {}

    def run(quantization: Quantization):
        if quantization not in runs:
            runs[quantization] = run_stock_a2v(
                tiny_bundle, image=IMAGE, audio=AUDIO, prompt=PROMPT, quantization=quantization, **SHAPE
            )
        return runs[quantization]

    return run


@pytest.mark.parametrize(
    ("quantization", "residency"), [(Quantization.BF16, "cold-start"), (Quantization.FP8_CAST, "persistent")]
)
def test_the_reference_flow_renders_exactly_what_a2vid_pipeline_two_stage_renders(
    bf16_engine, stock, clips, quantization, residency
):
    expected = stock(quantization)
    result = bf16_engine.generate(request(flow="reference", quantization=quantization.value, residency=residency))
    clip = clips[-1]
    assert torch.equal(clip.frames, expected.frames)
    assert len(clip.stage_latents) == len(expected.stage_latents) == 2
    for ours, theirs in zip(clip.stage_latents, expected.stage_latents, strict=True):
        assert torch.equal(ours, theirs)
    assert clip.sample_rate == expected.sample_rate == 24_000 and torch.equal(clip.audio, expected.audio)
    assert (result.flow, result.compute_dtype, result.lora_mode, result.stage_2_lora) == (
        "reference", "bfloat16", "fused", "fused copy"
    )  # fmt: skip
    assert result.counters["stage_1_transformer_calls"] == 4 * SHAPE["steps"]  # ltx-pipelines' sequential passes
    if residency == "persistent":  # the whole Gemma, as ModelLedger builds it
        text_encoder = bf16_engine.models.held("text_encoder")
        assert type(text_encoder.model.model.vision_tower).__name__ != "DroppedModule"


def test_the_fast_default_flow_stays_within_the_measured_bound_of_the_reference(bf16_engine, clips):
    """Every fast-flow change at once (persistent, LoRA adapter, batched guidance, fp8 processor, pre-fitted
    portrait, 48 kHz audio, STG moved onto a block the tiny transformer has), same quantization and dtype."""
    bf16_engine.generate(request(flow="reference", quantization="fp8-cast", residency="persistent"))
    fast = bf16_engine.generate(request(quantization="fp8-cast"))  # the request's defaults: the fast flow
    assert (fast.flow, fast.lora_mode, fast.stage_2_lora) == ("fast", "adapter", "adapter")
    reference, ours = clips
    assert not torch.equal(ours.frames, reference.frames)  # the flows do differ
    assert psnr(ours.frames, reference.frames) >= FAST_MIN_PSNR_DB
    (stage_1, final), (stage_1_ref, final_ref) = ours.stage_latents, reference.stage_latents
    assert (stage_1.float() - stage_1_ref.float()).abs().max() <= FAST_MAX_STAGE_1
    assert (final.float() - final_ref.float()).abs().max() <= FAST_MAX_FINAL


def test_the_reference_flow_refuses_what_a2vid_pipeline_two_stage_does_not_run(tiny_bundle, tmp_path):
    engine = Engine(tiny_bundle, tmp_path, device="cpu", compute_dtype=torch.bfloat16)
    with pytest.raises(InvalidRequest, match="fp8-scaled-mm is the project's kernel"):
        engine.generate(request(flow="reference", quantization="fp8-scaled-mm"))
    with pytest.raises(InvalidRequest, match="bf16 Gemma as ltx-pipelines builds it"):
        engine.generate(request(flow="reference", text_encoder_quantization="nf4"))
    with pytest.raises(InvalidRequest, match="unknown flow 'stock'"):
        engine.generate(request(flow="stock"))
    assert sum(engine.models.build_counts.values()) == 0


def test_the_reference_audio_is_ltx_pipelines_decoding_made_runnable(tmp_path):
    """Native rate and samples as decode_audio_from_file reads them; mono duplicated and a short clip padded, where
    the stock pipeline fails (its audio VAE takes stereo; it asserts the latent covers the video)."""
    from ltx_pipelines.utils.media_io import decode_audio_from_file

    from ltx_demo.pipeline import reference_audio

    samples, rate = soundfile.read(AUDIO, dtype="float32", always_2d=True)
    soundfile.write(tmp_path / "mono.wav", samples[:, 0], rate, subtype="PCM_16")
    soundfile.write(tmp_path / "short.wav", samples[: rate // 4], rate, subtype="PCM_16")
    duration = SHAPE["num_frames"] / SHAPE["frame_rate"]
    cpu = torch.device("cpu")

    waveform, got_rate, note = reference_audio(request(audio_start=0.5), cpu)
    assert torch.equal(waveform, decode_audio_from_file(AUDIO, cpu, 0.5, duration).waveform[0]) and got_rate == rate
    mono, _, note = reference_audio(request(audio_path=str(tmp_path / "mono.wav")), cpu)
    assert mono.shape[0] == 2 and torch.equal(mono[0], mono[1]) and "mono" in note
    short, _, note = reference_audio(request(audio_path=str(tmp_path / "short.wav")), cpu)
    assert short.shape[1] == round(duration * rate) and not short[:, rate // 4 :].any() and "padded" in note


def test_the_reference_portrait_is_read_as_ltx_pipelines_reads_it(tmp_path):
    """RGB and RGBA: the pixels decode_image reads (alpha ignored, no resize: the stock crops and resizes itself);
    a mode it cannot read (grey) is flattened to RGB first, with a note."""
    from ltx_pipelines.utils.media_io import decode_image

    from ltx_demo.media import prepare_image

    rgba = Image.open(IMAGE).convert("RGBA")
    rgba.putalpha(Image.fromarray(np.tile(np.arange(rgba.width, dtype=np.uint8), (rgba.height, 1))))
    rgba.save(tmp_path / "rgba.png")
    for source in (IMAGE, str(tmp_path / "rgba.png")):
        note = prepare_image(source, 128, 128, None, tmp_path / "out.png")
        assert np.array_equal(decode_image(str(tmp_path / "out.png")), decode_image(source))
        assert ("alpha" in note) == source.endswith("rgba.png")
    Image.open(IMAGE).convert("L").save(tmp_path / "grey.png")
    note = prepare_image(str(tmp_path / "grey.png"), 128, 128, None, tmp_path / "out.png")
    assert "cannot read a L image" in note and decode_image(str(tmp_path / "out.png")).shape == (384, 384, 3)


def test_the_cli_selects_the_reference_flow_and_the_compute_dtype():
    from ltx_demo.cli_flags import build_parser, request_from_args

    args = build_parser().parse_args(["generate", "--flow", "reference", "--compute-dtype", "bf16"])
    assert request_from_args(args).flow == "reference" and args.compute_dtype == "bf16"
    assert request_from_args(build_parser().parse_args(["generate"])).flow == "fast"
