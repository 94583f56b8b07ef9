"""requests.py, the one place a request is checked: each bad field refused with its message, loose values (the
browser's 64.0, a sidecar's strings) typed, the sidecar JSON unchanged by the enums, and the CLI, API and UI paths
all passing through it. The file-content checks (media.py) are in test_validation.py."""

from __future__ import annotations

import dataclasses
import json

import pytest

from ltx_demo import cli, cli_flags, review
from ltx_demo.requests import check_request, parse_request, whole_number
from ltx_demo.types import (
    Flow,
    GenerationRequest,
    GuidanceParams,
    ImageFit,
    InvalidRequest,
    LoraMode,
    Quantization,
    Residency,
    TextEncoderQuantization,
)

from .conftest import ASSETS, api_client
from .test_ui import SMALL

GOOD = dict(image_path="portrait.png", audio_path="speech.wav", prompt="A woman speaks to the camera.")

BAD_FIELDS = [  # (fields over GOOD, the message check_request must give)
    (dict(prompt=""), r"prompt is empty: describe the person and the scene"),
    (dict(prompt=None), r"prompt is empty"),
    (dict(negative_prompt="b" * 2001), r"negative prompt is 2001 characters: shorten it to at most 2000"),
    (dict(width=100), r"width 100 is not a multiple of 64 between 64 and 2048: try 64 or 128"),
    (dict(height=4096), r"height 4096 is not between 64 and 2048: try 2048"),
    (dict(width=100.5), r"width 100.5 is not a whole number"),
    (dict(width=None), r"width is empty: enter a number"),
    (dict(steps="many"), r"steps 'many' is not a whole number"),
    (dict(num_frames=10), r"frame count 10 is not 8k\+1 \(9, 17, 25, ... 257\): try 9 or 17"),
    (dict(num_frames=1441), r"1441 frames at 24 fps is 60.04 s: over the 60 s maximum video length"),  # windows
    (dict(width=2048, height=2048, window_frames=97), r"2048x2048 with windows of 97 frames is over the cap: use wi"),
    (dict(frame_rate=23), r"frame rate 23 is not one of 24, 25, 30"),
    (dict(steps=0), r"steps 0 must be between 1 and 100"),
    (dict(seed=-1), r"seed -1 must be between 0 and 4294967295"),
    (dict(seed=2**32), r"seed 4294967296 must be between 0 and 4294967295"),
    (dict(quantization="int4"), r"unknown quantization 'int4': use one of \['bf16', 'fp8-cast', 'fp8-scaled-mm'\]"),
    (dict(residency="sometimes"), r"unknown residency 'sometimes': use one of \['persistent', 'cold-start'"),
    (dict(image_fit="stretch"), r"unknown imagefit 'stretch': use one of \['crop', 'pad'\]"),
    (dict(lora_mode="merged"), r"unknown loramode 'merged': use one of \['adapter', 'fused'\]"),
    (dict(text_encoder_quantization="int8"), r"unknown textencoderquantization 'int8'"),
    (dict(audio_start=-1.0), r"audio start -1.0 s must be a number of seconds, 0 or more"),
    (dict(audio_start="soon"), r"audio start soon s must be a number of seconds"),
    (dict(distilled_lora_strength=float("nan")), r"distilled LoRA strength nan must be a finite number, 0 or more"),
    (dict(distilled_lora_strength=None), r"distilled LoRA strength None must be a finite number"),
    (dict(guidance=GuidanceParams(cfg_scale=-1.0)), r"cfg scale -1.0 must be a finite number, 0 or more"),
    (dict(guidance={"stg_scale": float("inf")}), r"stg scale inf must be a finite number"),
    (dict(guidance={"cfg_rescale": 1.0}), r"guidance fields this app does not know: cfg_rescale"),
    (dict(vram_budget_gib=0), r"VRAM budget 0.0 GiB must be positive"),
    (dict(sampler="euler"), r"request fields this app does not know: sampler"),
]


@pytest.mark.parametrize(("fields", "message"), BAD_FIELDS, ids=[",".join(f) for f, _ in BAD_FIELDS])
def test_each_bad_field_is_refused_with_its_message(fields, message):
    with pytest.raises(InvalidRequest, match=message):
        check_request(GOOD | fields)


def test_a_request_without_its_files_or_prompt_is_refused():
    with pytest.raises(InvalidRequest, match="the request has no audio_path, prompt"):
        check_request({"image_path": "portrait.png"})


def test_loose_values_become_the_typed_request():
    typed = check_request(
        GOOD
        | dict(
            width=64.0,  # what a browser's number field sends
            height=" 128 ",
            steps="3",
            seed=7.0,
            quantization="bf16",
            residency="cold-start",
            image_fit="pad",
            lora_mode="fused",
            text_encoder_quantization="bf16",
            audio_start=1,
            vram_budget_gib="12",
            guidance={"cfg_scale": 3, "stg_scale": 1, "rescale_scale": 0.7, "modality_scale": 3},
        )
    )
    assert (typed.width, typed.height, typed.steps, typed.seed) == (64, 128, 3, 7)
    assert all(type(v) is int for v in (typed.width, typed.height, typed.steps, typed.seed))
    assert typed.quantization is Quantization.BF16 and typed.residency is Residency.COLD_START
    assert typed.image_fit is ImageFit.PAD and typed.lora_mode is LoraMode.FUSED
    assert typed.text_encoder_quantization is TextEncoderQuantization.BF16
    assert typed.audio_start == 1.0 and type(typed.audio_start) is float and typed.vram_budget_gib == 12.0
    assert typed.guidance == GuidanceParams(3.0, 1.0, 0.7, 3.0)
    assert check_request(typed) == typed  # checking a checked request changes nothing
    defaults = check_request(GenerationRequest(**GOOD))
    assert defaults.text_encoder_quantization is None and defaults.vram_budget_gib is None  # None: the defaults
    assert whole_number("-3", "seed") == -3
    assert parse_request(GOOD | {"width": "100"}).width == 100  # typed only: the limits are check_request's


class Device:
    """A requests.DeviceLimits that refuses what it is told to, as the engine does for what its device cannot run."""

    def __init__(self, quantization: Quantization | None = None, text_encoder: TextEncoderQuantization | None = None):
        self.quantization, self.text_encoder, self.asked = quantization, text_encoder, []

    def unavailable(self, quantization: Quantization, lora_mode: LoraMode) -> str | None:
        self.asked.append((quantization, lora_mode))
        return "no fp8 tensor cores here" if quantization is self.quantization else None

    def text_encoder_unavailable(self, text_encoder_quantization: TextEncoderQuantization) -> str | None:
        return "needs CUDA" if text_encoder_quantization is self.text_encoder else None

    def default_quantization(self, flow: Flow) -> Quantization:
        fastest = (
            Quantization.FP8_CAST if self.quantization is Quantization.FP8_SCALED_MM else Quantization.FP8_SCALED_MM
        )
        return fastest if flow is Flow.FAST else Quantization.FP8_CAST


def test_what_the_device_cannot_run_is_refused_only_when_the_device_is_given():
    scaled_mm = GOOD | dict(quantization="fp8-scaled-mm", lora_mode="fused")
    device = Device(quantization=Quantization.FP8_SCALED_MM)
    with pytest.raises(InvalidRequest, match="quantization fp8-scaled-mm cannot run here: no fp8 tensor cores here"):
        check_request(scaled_mm, device)
    assert device.asked == [(Quantization.FP8_SCALED_MM, LoraMode.FUSED)]  # typed before the device is asked
    assert check_request(scaled_mm).quantization is Quantization.FP8_SCALED_MM  # no device: no device check
    nf4 = GOOD | dict(text_encoder_quantization="nf4")
    with pytest.raises(InvalidRequest, match="text encoder quantization nf4: needs CUDA"):
        check_request(nf4, Device(text_encoder=TextEncoderQuantization.NF4))
    check_request(GOOD, Device(text_encoder=TextEncoderQuantization.NF4))  # None: the device's own default


def test_a_request_naming_no_quantization_gets_the_devices_default():
    """None in the request: the device fills in its fastest for the fast flow, fp8-cast for the reference flow; the
    result (and its sidecar) then records what ran, so a reproduce runs the same."""
    assert check_request(GOOD).quantization is None  # no device: left unset
    assert check_request(GOOD, Device()).quantization is Quantization.FP8_SCALED_MM
    assert check_request(GOOD, Device(quantization=Quantization.FP8_SCALED_MM)).quantization is Quantization.FP8_CAST
    reference = GOOD | dict(flow="reference")
    assert check_request(reference, Device()).quantization is Quantization.FP8_CAST
    assert check_request(GOOD | dict(quantization="bf16"), Device()).quantization is Quantization.BF16


def test_the_sidecar_json_is_the_same_text_with_enums_as_with_strings():
    """asdict(request) goes into the sidecar and the mp4's provenance: StrEnums must serialise as the strings did."""
    strings = GenerationRequest(
        **GOOD,
        quantization="fp8-cast",
        residency="host-cached",
        image_fit="pad",
        text_encoder_quantization="nf4",
        lora_mode="fused",
        vram_budget_gib=24.0,
    )
    typed = check_request(strings)
    assert isinstance(typed.residency, Residency) and not isinstance(strings.residency, Residency)
    for dump in (json.dumps, lambda d: json.dumps(d, separators=(",", ":"), sort_keys=True)):
        assert dump(dataclasses.asdict(typed)) == dump(dataclasses.asdict(strings))


def test_an_old_sidecar_with_string_values_loads_as_the_typed_request():
    saved = json.loads(json.dumps(dataclasses.asdict(GenerationRequest(**GOOD, quantization="bf16", image_fit="pad"))))
    again = review.request_from_dict(saved, quantization="fp8-cast")
    assert again.quantization is Quantization.FP8_CAST and again.image_fit is ImageFit.PAD
    assert again.residency is Residency.PERSISTENT and again.guidance == GuidanceParams()
    with pytest.raises(InvalidRequest, match="unknown quantization 'int8'"):
        review.request_from_dict(saved | {"quantization": "int8"})


# -- the paths into the engine ---------------------------------------------------------------------------------------
def test_the_cli_builds_the_typed_request_and_refuses_a_bad_one(tiny_bundle, tmp_path, capsys):
    args = cli_flags.build_parser().parse_args(["generate", "--quantization", "bf16", "--lora-mode", "fused"])
    request = cli_flags.request_from_args(args)
    assert request.quantization is Quantization.BF16 and request.lora_mode is LoraMode.FUSED
    assert request.image_fit is ImageFit.CROP and request.text_encoder_quantization is None
    flags = ["--bundle", str(tiny_bundle.root), "--output-dir", str(tmp_path), "--device", "cpu"]
    assert cli.main(["generate", *flags, "--cold-start-cache-dir", "off", "--width", "100"]) == 2
    assert "error (invalid input): width 100 is not a multiple of 64" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_the_engine_types_what_the_python_api_sends_and_refuses_per_device(engine, small_request):
    result = engine.generate(small_request(quantization="bf16", image_fit="pad"))
    assert result.request.quantization is Quantization.BF16 and result.request.image_fit is ImageFit.PAD
    with pytest.raises(InvalidRequest, match=r"text encoder quantization nf4: .*--text-encoder-quantization bf16"):
        engine.generate(small_request(text_encoder_quantization="nf4"))  # the engine runs on CPU


def test_the_page_sends_loose_values_through_the_same_check(live_app):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    client = api_client(live_app.url)
    files = dict(image=handle_file(str(ASSETS / "astronaut.png")), audio=handle_file(str(ASSETS / "speech_hello.wav")))
    for fields, message in (
        (dict(width=None), r"width is empty: enter a number"),
        (dict(width=96), r"width 96 is not a multiple of 64 .*: try 64 or 128"),
    ):
        with pytest.raises(AppError, match=message):
            client.predict(**files, prompt="A woman speaks.", api_name="/generate", **(SMALL | fields))
    assert sum(live_app.engine.models.build_counts.values()) == 0, "a refused request built a model"
