"""The validation catalogue: a table of bad inputs, each refused with a message that names the fix, before any model
is built (through the engine) and through the real app's API (gradio_client), which then still serves a good request.
Inputs that are normalised rather than refused (animated, CMYK, 16-bit images; mono, 8/96 kHz, MP3/OGG/FLAC/M4A,
very long audio) are checked for what was done to them. Every media file is made here, on the fly.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile
from PIL import Image

from ltx_demo import media
from ltx_demo.types import ImageFit, InvalidRequest

from .conftest import ASSETS, api_client
from .test_ui import SMALL

TONE_HZ = 220.0


# -- media made on the fly ------------------------------------------------------------------------------------------
def tone(rate: int, seconds: float, channels: int = 1, amplitude: float = 0.3) -> np.ndarray:
    """(samples, channels) float32 sine at TONE_HZ."""
    t = np.arange(round(rate * seconds)) / rate
    return np.repeat((amplitude * np.sin(2 * np.pi * TONE_HZ * t)).astype(np.float32)[:, None], channels, axis=1)


def encode_with_pyav(path: Path, codec: str, container_format: str, rate: int = 44_100, seconds: float = 2.0) -> Path:
    """Mono TONE_HZ through FFmpeg's encoder (libmp3lame for MP3, aac for M4A), as phones and browsers make them."""
    samples = tone(rate, seconds)[:, 0]
    with av.open(str(path), "w", format=container_format) as container:
        stream = container.add_stream(codec, rate=rate, layout="mono")
        frame = av.AudioFrame.from_ndarray(samples[None, :], format="fltp", layout="mono")
        frame.sample_rate = rate
        for packet in (*stream.encode(frame), *stream.encode(None)):
            container.mux(packet)
    return path


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def huge_png(path: Path, side: int = 20_000) -> Path:
    """A valid 1-bit 20000x20000 PNG: 48 KB on disk, 400 megapixels (1.2 GB as RGB) once decoded."""
    row = b"\x00" * (1 + side // 8)  # filter byte + packed pixels
    body = zlib.compress(row * side, 9)
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", body) + png_chunk(b"IEND", b"")
    )
    return path


def truncated(path: Path, data: bytes, keep: float = 0.5) -> Path:
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def wav_bytes(samples: np.ndarray, rate: int) -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def made(path: Path, _written: object = None) -> Path:
    """For the one-line makers below: write (the second argument did), then hand back the path."""
    return path


MAKERS: dict[str, Callable[[Path], Path]] = {
    "text.png": lambda p: made(p, p.write_text("this is not a picture")),
    "empty.png": lambda p: made(p, p.write_bytes(b"")),
    "truncated.png": lambda p: truncated(p, png_bytes(Image.effect_noise((256, 256), 64).convert("RGB"))),
    "huge.png": huge_png,
    "audio-as-image.png": lambda p: made(p, p.write_bytes((ASSETS / "speech_hello.wav").read_bytes())),
    "text.wav": lambda p: made(p, p.write_text("RIFF? no, just text")),
    "empty.wav": lambda p: made(p, p.write_bytes(b"")),
    "zero-length.wav": lambda p: made(p, soundfile.write(p, np.zeros((0, 1), np.float32), 16_000)),
    "truncated.wav": lambda p: truncated(p, wav_bytes(tone(16_000, 2.0), 16_000)),
    "nan.wav": lambda p: made(p, soundfile.write(p, np.full((16_000, 1), np.nan, np.float32), 16_000, subtype="FLOAT")),
    "image-as-audio.wav": lambda p: made(p, p.write_bytes((ASSETS / "astronaut.png").read_bytes())),
    "short.wav": lambda p: made(p, soundfile.write(p, tone(16_000, 2.0), 16_000)),
    # normalised, not refused
    "animated.gif": lambda p: made(
        p,
        Image.new("RGB", (80, 60), (200, 30, 30)).save(
            p, save_all=True, append_images=[Image.new("RGB", (80, 60), (30, 200, 30))], duration=100
        ),
    ),
    "cmyk.jpg": lambda p: made(p, Image.new("CMYK", (80, 60), (0, 255, 255, 0)).save(p)),
    "grey16.png": lambda p: made(p, Image.fromarray(np.full((60, 80), 32_896, np.uint16)).save(p)),  # /257 = 128
    "mono.wav": lambda p: made(p, soundfile.write(p, tone(16_000, 2.0), 16_000)),
    "8k.wav": lambda p: made(p, soundfile.write(p, tone(8_000, 2.0), 8_000)),
    "96k.wav": lambda p: made(p, soundfile.write(p, tone(96_000, 2.0, channels=2), 96_000)),
    "flac.flac": lambda p: made(p, soundfile.write(p, tone(44_100, 2.0), 44_100)),
    "ogg.ogg": lambda p: made(p, soundfile.write(p, tone(44_100, 2.0), 44_100)),
    "mp3.mp3": lambda p: encode_with_pyav(p, "libmp3lame", "mp3"),
    "m4a.m4a": lambda p: encode_with_pyav(p, "aac", "ipod"),
}


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("media")
    return {name: make(folder / name) for name, make in MAKERS.items()}


# -- the catalogue --------------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Bad:
    """One bad input: request fields (and/or media file names from MAKERS) -> the message the engine must give.

    `api` overrides what the API call sends when it differs from the request (the page's fields); `api_message` is the
    message expected there when a Gradio component refuses it first (its bounds and choices mirror the engine's)."""

    name: str
    message: str
    fields: dict = field(default_factory=dict)
    image: str | None = None
    audio: str | None = None
    api: dict | None = None
    api_message: str | None = None


CATALOGUE = (
    # images
    Bad("not an image", r"not a readable image.*upload a PNG or JPEG", image="text.png"),
    Bad("empty image file", r"portrait file is empty \(0 bytes\)", image="empty.png"),
    Bad("corrupt (truncated) image", r"damaged or cut short.*export it again as PNG or JPEG", image="truncated.png"),
    Bad("huge image 20000x20000", r"400 megapixels: resize it to at most 64 megapixels", image="huge.png"),
    Bad("audio file as the image", r"not a readable image", image="audio-as-image.png"),
    Bad("no image at all", r"no portrait image: upload a PNG or JPEG", fields=dict(image_path="")),
    # audio
    Bad("not audio", r"not readable audio.*upload a WAV, MP3, FLAC, OGG or M4A", audio="text.wav"),
    Bad("empty audio file", r"audio file is empty \(0 bytes\)", audio="empty.wav"),
    Bad("zero-length audio", r"audio clip is empty \(zero length\)", audio="zero-length.wav"),
    Bad("truncated WAV", r"WAV file is cut short: its header promises 2.00 s.*holds 1.00 s", audio="truncated.wav"),
    Bad("NaN samples", r"NaN or infinite samples.*16-bit PCM", audio="nan.wav"),
    Bad("image as the audio", r"no audio stream", audio="image-as-audio.wav"),
    Bad(
        "start past the end",
        r"audio start 5.00 s is past the clip's end \(2.00 s\): lower",
        fields=dict(audio_start=5.0),
        audio="short.wav",
    ),
    Bad(
        "negative start",
        r"audio start -1.0 s must be",
        fields=dict(audio_start=-1.0),
        api_message=r"less than minimum value 0",
    ),
    # sizes and frames
    Bad("width not a multiple of 64", r"width 100 is not a multiple of 64 .*: try 64 or 128", fields=dict(width=100)),
    Bad(
        "height not a multiple of 64",
        r"height 1000 is not a multiple of 64 .*: try 960 or 1024",
        fields=dict(height=1000),
    ),
    Bad("width too large", r"width 4096 is not between 64 and 2048: try 2048", fields=dict(width=4096)),
    Bad("frames not 8k+1", r"frame count 10 is not 8k\+1 .*: try 9 or 17", fields=dict(num_frames=10)),
    Bad(
        "frames below 9",
        r"frame count 8 is not 8k\+1",
        fields=dict(num_frames=8),
        api_message=r"less than minimum value 9",
    ),
    Bad(
        "frames over the maximum video length",  # a video longer than one window runs in windows, up to 60 s
        r"1441 frames at 24 fps is 60.04 s: over the 60 s maximum video length",
        fields=dict(num_frames=1441),
        api_message=r"greater than maximum value 257",
    ),
    Bad(
        "windows over the cap at 2048x2048",
        r"2048x2048 with windows of 97 frames is over the cap: use windows of at most 57 frames",
        fields=dict(width=2048, height=2048, num_frames=97, window_frames=97),
        api={},  # the page has no window length field (yet)
    ),
    # prompt, seed, steps, choices
    Bad("empty prompt", r"prompt is empty: describe the person and the scene", fields=dict(prompt="")),
    Bad("blank prompt", r"prompt is empty", fields=dict(prompt=" \n\t ")),
    Bad("overlong prompt", r"prompt is 2001 characters: shorten it to at most 2000", fields=dict(prompt="a" * 2001)),
    Bad("overlong negative prompt", r"negative prompt is 2001 characters", fields=dict(negative_prompt="b" * 2001)),
    Bad(
        "seed below 0",
        r"seed -1 must be between 0 and 4294967295",
        fields=dict(seed=-1),
        api_message=r"less than minimum value 0",
    ),
    Bad(
        "seed above 2^32-1",
        r"seed 4294967296 must be between 0 and 4294967295",
        fields=dict(seed=2**32),
        api_message=r"greater than maximum value 4294967295",
    ),
    Bad(
        "zero steps",
        r"steps 0 must be between 1 and 100",
        fields=dict(steps=0),
        api_message=r"less than minimum value 1",
    ),
    Bad(
        "frame rate not offered",
        r"frame rate 23 is not one of 24, 25, 30",
        fields=dict(frame_rate=23),
        api_message=r"not in the list of choices",
    ),
    Bad(
        "unknown quantization",
        r"unknown quantization 'int4': use one of \['bf16', 'fp8-cast'",
        fields=dict(quantization="int4"),
        api_message=r"'int4'.*not in the list of choices: \['bf16', 'fp8-cast'",
    ),
    Bad(
        "unknown residency",
        r"unknown residency 'sometimes': use one of \['persistent', 'cold-start'",
        fields=dict(residency="sometimes"),
        api_message=r"'sometimes'.*not in the list of choices",
    ),
    Bad(
        "unknown image fit",
        r"unknown imagefit 'stretch'",
        fields=dict(image_fit="stretch"),
        api_message=r"not in the list of choices",
    ),
    Bad("unknown LoRA mode", r"unknown loramode 'merged'", fields=dict(lora_mode="merged"), api={}),
    Bad(
        "NaN guidance",
        r"distilled LoRA strength nan must be a finite number",
        fields=dict(distilled_lora_strength=float("nan")),
        api={},
    ),
)
assert len(CATALOGUE) >= 20


def request_for(bad: Bad, files: dict[str, Path], small_request):
    overrides = dict(bad.fields)
    if bad.image:
        overrides["image_path"] = str(files[bad.image])
    if bad.audio:
        overrides["audio_path"] = str(files[bad.audio])
    return small_request(**overrides)


def test_catalogue_through_the_engine_builds_no_model(tiny_bundle, tmp_path, files, small_request):
    from ltx_demo.engine import Engine

    engine = Engine(tiny_bundle, tmp_path, device="cpu")
    for bad in CATALOGUE:
        with pytest.raises(InvalidRequest) as refused:
            engine.generate(request_for(bad, files, small_request))
        assert refused.match(bad.message), f"{bad.name}: {refused.value}"
    assert sum(engine.models.build_counts.values()) == 0, engine.models.build_counts
    assert not any(tmp_path.iterdir()), "a refused request wrote into the output folder"


# -- the same catalogue through the real app --------------------------------------------------------------------------
API_FIELDS = {  # GenerationRequest field -> the /generate parameter that carries it
    "prompt": "prompt",
    "negative_prompt": "negative_prompt",
    "num_frames": "num_frames",
    "frame_rate": "frame_rate",
    "steps": "steps",
    "seed": "seed",
    "quantization": "quantization",
    "residency": "residency",
    "audio_start": "audio_start",
    "image_fit": "image_fit",
    "width": "width",
    "height": "height",
}


def test_catalogue_through_the_api_then_a_good_request(live_app, files):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    client = api_client(live_app.url)
    checked = 0
    for bad in CATALOGUE:
        if bad.api == {}:
            continue  # not a field the page or its API has (the engine row covers it)
        kwargs = dict(SMALL, prompt="A woman speaks to the camera.")
        kwargs |= {API_FIELDS[name]: value for name, value in bad.fields.items() if name in API_FIELDS}
        image = files[bad.image] if bad.image else ASSETS / "astronaut.png"
        audio = files[bad.audio] if bad.audio else ASSETS / "speech_hello.wav"
        if bad.fields.get("image_path") == "":
            image = None
        with pytest.raises(AppError) as refused:
            client.predict(
                image=handle_file(str(image)) if image else None,
                audio=handle_file(str(audio)),
                api_name="/generate",
                **kwargs,
            )
        assert refused.match(bad.api_message or bad.message), f"{bad.name}: {refused.value}"
        checked += 1
    assert checked >= 20
    assert sum(live_app.engine.models.build_counts.values()) == 0, "a refused request built a model"
    assert not list(live_app.output_dir.glob("*.mp4"))

    _video, summary = client.predict(
        image=handle_file(str(ASSETS / "astronaut.png")),
        audio=handle_file(str(ASSETS / "speech_hello.wav")),
        prompt="A woman speaks to the camera.",
        api_name="/generate",
        **SMALL,
    )
    assert Path(summary["output"]).is_file() and summary["num_frames"] == 9
    assert live_app.engine.status()["busy"] is False


# -- normalised, not refused: what was done is said ------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "note", "mean_rgb"),
    [
        ("animated.gif", "animated image (2 frames): used its first frame", (200, 30, 30)),
        ("cmyk.jpg", "converted CMYK to RGB", (255, 0, 0)),
        ("grey16.png", "converted I;16 to RGB", (128, 128, 128)),
    ],
)
def test_awkward_images_are_converted_and_say_so(files, tmp_path, name, note, mean_rgb):
    out = tmp_path / "fitted.png"
    said = media.prepare_image(str(files[name]), 64, 64, ImageFit.CROP, out)
    assert note in said
    with Image.open(out) as fitted:
        assert fitted.mode == "RGB" and fitted.size == (64, 64)
        assert np.allclose(np.asarray(fitted).reshape(-1, 3).mean(axis=0), mean_rgb, atol=3)


def dominant_hz(samples: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples))
    return float(np.fft.rfftfreq(len(samples), 1 / rate)[spectrum.argmax()])


@pytest.mark.parametrize(
    ("name", "notes"),
    [
        ("mono.wav", ["upmixed mono to stereo", "resampled 16000 Hz to 48000 Hz"]),
        ("8k.wav", ["upmixed mono to stereo", "resampled 8000 Hz to 48000 Hz"]),
        ("96k.wav", ["resampled 96000 Hz to 48000 Hz"]),
        ("flac.flac", ["resampled 44100 Hz to 48000 Hz"]),
        ("ogg.ogg", ["resampled 44100 Hz to 48000 Hz"]),
        ("mp3.mp3", ["resampled 44100 Hz to 48000 Hz"]),
        ("m4a.m4a", ["resampled 44100 Hz to 48000 Hz"]),
    ],
)
def test_audio_formats_and_rates_become_48k_stereo(files, name, notes):
    audio, note = media.prepare_audio(str(files[name]), 0.5, 1.0)
    assert audio.shape == (2, media.OUTPUT_SAMPLE_RATE) and audio.dtype == np.float32
    assert np.array_equal(audio[0], audio[1]) or name == "96k.wav"
    for expected in notes:
        assert expected in note, note
    assert "started at 0.50 s" in note and "trimmed to 1.00 s" in note
    assert dominant_hz(audio[0], media.OUTPUT_SAMPLE_RATE) == pytest.approx(TONE_HZ, abs=2)
    assert 0.2 < np.abs(audio).max() <= 0.35


def test_short_audio_is_padded_with_silence_and_says_how_much(files):
    audio, note = media.prepare_audio(str(files["short.wav"]), 1.5, 1.0)  # 0.5 s left of a 2 s clip
    assert "padded 0.50 s of silence at the end (the audio covers 0.50 s of the 1.00 s clip)" in note
    half = media.OUTPUT_SAMPLE_RATE // 2
    assert np.abs(audio[:, :half]).max() > 0.2 and not audio[:, half:].any()


def test_very_long_audio_is_trimmed_from_the_offset_without_decoding_it_whole(tmp_path):
    """Ten minutes of a slow ramp (its value says where in the file it is): the clip from 400 s has the ramp's
    value at 400 s, and only a window of the file is decoded."""
    rate, seconds = 8_000, 600
    ramp = (np.arange(rate * seconds, dtype=np.float64) / (rate * seconds) * 0.9).astype(np.float32)
    path = tmp_path / "long.wav"
    soundfile.write(path, ramp[:, None], rate, subtype="FLOAT")
    window = media.read_audio(str(path), 400.0, 2.0)
    assert window.samples.shape[1] < rate * 3, "decoded more than the window"
    audio, note = media.prepare_audio(str(path), 400.0, 2.0)
    assert audio.shape == (2, 2 * media.OUTPUT_SAMPLE_RATE)
    assert "started at 400.00 s" in note and "trimmed to 2.00 s" in note
    assert audio.mean() == pytest.approx(401.0 / seconds * 0.9, abs=1e-3)
    assert media.audio_duration(str(path)) == pytest.approx(600.0)


@pytest.mark.parametrize("rate", [8_000, 11_025, 44_100, 96_000])
def test_the_window_resamples_exactly_like_the_whole_file(tmp_path, rate):
    """Reading only the needed window changes no sample: same result as resampling the whole file, then cutting."""
    from fractions import Fraction

    from scipy.signal import resample_poly

    noise = (0.2 * np.random.default_rng(rate).standard_normal((int(rate * 3.3), 2))).astype(np.float32)
    path = tmp_path / "noise.wav"
    soundfile.write(path, noise, rate, subtype="FLOAT")
    ratio = Fraction(media.OUTPUT_SAMPLE_RATE, rate)
    whole = resample_poly(noise.T, ratio.numerator, ratio.denominator, axis=1).astype(np.float32)
    for start, seconds in ((0.0, 1.0), (0.37, 1.2), (1.234, 0.5)):
        audio, _ = media.prepare_audio(str(path), start, seconds)
        first = round(start * media.OUTPUT_SAMPLE_RATE)
        assert np.array_equal(audio, whole[:, first : first + audio.shape[1]]), (start, seconds)


def test_frame_cap_helpers_agree_with_the_check():
    from ltx_demo.requests import check_request, max_frames_at
    from ltx_demo.types import GenerationRequest

    for width, height in ((768, 512), (1280, 768), (2048, 2048), (1024, 1024)):
        cap = max_frames_at(width, height)
        check_request(GenerationRequest("i", "a", "p", width=width, height=height, num_frames=cap))
        with pytest.raises(InvalidRequest, match=f"use windows of at most {cap} frames"):
            check_request(
                GenerationRequest("i", "a", "p", width=width, height=height, num_frames=300, window_frames=cap + 8)
            )
        longer = check_request(GenerationRequest("i", "a", "p", width=width, height=height, num_frames=cap + 8))
        assert longer.num_frames == cap + 8  # longer than one window: runs in windows of at most `cap` frames
