"""Media in and out: input validation and normalisation (image, audio, sizes, prompt), done in one place before
any model is built, and the mp4 writer."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import soundfile
from PIL import Image, ImageOps, UnidentifiedImageError
from scipy.signal import resample_poly

from ltx_demo.settings import FRAME_RATES, ImageFit, Quantization, Residency
from ltx_demo.types import GenerationRequest, InvalidRequest

logger = logging.getLogger(__name__)

OUTPUT_SAMPLE_RATE = 48_000  # what the mp4 carries; the audio VAE resamples to its own 16 kHz internally
MIN_SIDE, MAX_SIDE = 64, 2048
MAX_FRAMES = 257
MAX_PIXEL_FRAMES = 1280 * 768 * 257  # a sane cap on width x height x frames (memory grows with it)
MAX_IMAGE_PIXELS = 64_000_000
MAX_PROMPT_CHARS = 2000
MAX_STEPS = 100
MAX_SEED = 2**32 - 1


@dataclass(frozen=True, slots=True)
class PreparedInputs:
    image_path: Path  # RGB PNG at exactly width x height
    audio: np.ndarray  # float32 (2, samples) at OUTPUT_SAMPLE_RATE, exactly the clip's duration
    sample_rate: int
    audio_note: str
    image_note: str


def legal_frame_counts(max_frames: int = MAX_FRAMES) -> list[int]:
    return list(range(9, max_frames + 1, 8))


def frames_for_duration(seconds: float, frame_rate: int) -> int:
    """The largest 8k+1 frame count whose clip the audio covers (at least 9)."""
    k = max(1, math.floor((seconds * frame_rate - 1) / 8))
    return min(8 * k + 1, MAX_FRAMES)


def check_request(request: GenerationRequest) -> None:
    """Every check on the request's numbers and strings; files are checked when they are read."""
    if not request.prompt or not request.prompt.strip():
        raise InvalidRequest("prompt is empty: describe the person and the scene")
    if len(request.prompt) > MAX_PROMPT_CHARS:
        raise InvalidRequest(f"prompt is {len(request.prompt)} characters: keep it under {MAX_PROMPT_CHARS}")
    for name, value in (("width", request.width), ("height", request.height)):
        if not isinstance(value, int) or value % 64 or not MIN_SIDE <= value <= MAX_SIDE:
            raise InvalidRequest(f"{name} {value} is not a multiple of 64 between {MIN_SIDE} and {MAX_SIDE}")
    n = request.num_frames
    if not isinstance(n, int) or n < 9 or (n - 1) % 8:
        raise InvalidRequest(f"frame count {n} is not 8k+1 (9, 17, 25, ... {MAX_FRAMES})")
    if n > MAX_FRAMES or request.width * request.height * n > MAX_PIXEL_FRAMES:
        raise InvalidRequest(
            f"{request.width}x{request.height}x{n} frames is over the cap: use at most "
            f"{min(MAX_FRAMES, frames_for_duration(MAX_PIXEL_FRAMES / (request.width * request.height) / 24, 24))}"
            " frames at this resolution"
        )
    if request.frame_rate not in FRAME_RATES:
        raise InvalidRequest(f"frame rate {request.frame_rate} is not one of {', '.join(map(str, FRAME_RATES))}")
    if not isinstance(request.steps, int) or not 1 <= request.steps <= MAX_STEPS:
        raise InvalidRequest(f"steps {request.steps} must be between 1 and {MAX_STEPS}")
    if not isinstance(request.seed, int) or not 0 <= request.seed <= MAX_SEED:
        raise InvalidRequest(f"seed {request.seed} must be between 0 and {MAX_SEED}")
    for value, enum in (
        (request.quantization, Quantization),
        (request.residency, Residency),
        (request.image_fit, ImageFit),
    ):
        if value not in {e.value for e in enum}:
            raise InvalidRequest(f"unknown {enum.__name__.lower()} {value!r}: use one of {[e.value for e in enum]}")
    if request.audio_start < 0:
        raise InvalidRequest(f"audio start {request.audio_start} s is negative")


def prepare_image(path: str, width: int, height: int, fit: ImageFit, out_path: Path) -> str:
    """Open, flatten to RGB and fit the portrait to exactly width x height (crop or pad); returns a note."""
    if not path or not Path(path).is_file():
        raise InvalidRequest("no portrait image: upload a PNG or JPEG")
    notes = []
    try:
        with Image.open(path) as image:
            if image.width * image.height > MAX_IMAGE_PIXELS:
                raise InvalidRequest(
                    f"image is {image.width}x{image.height}: use one under {MAX_IMAGE_PIXELS // 1_000_000} megapixels"
                )
            if getattr(image, "is_animated", False):
                notes.append("animated image: used its first frame")
                image.seek(0)
            image.load()
            if image.mode not in ("RGB", "L"):
                notes.append(f"converted {image.mode} to RGB")
            image = ImageOps.exif_transpose(image)
            rgb = _to_rgb(image)
    except InvalidRequest:
        raise
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise InvalidRequest(
            f"the portrait is not a readable image ({type(exc).__name__}): upload a PNG or JPEG"
        ) from exc
    match fit:
        case ImageFit.CROP:
            fitted = ImageOps.fit(rgb, (width, height), Image.Resampling.LANCZOS)
        case ImageFit.PAD:
            fitted = ImageOps.pad(rgb, (width, height), Image.Resampling.LANCZOS, color=(0, 0, 0))
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fitted.save(out_path)
    return "; ".join(notes)


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.float64)
        image = Image.fromarray((array / max(array.max(), 1) * 255).astype(np.uint8))
    if image.mode in ("RGBA", "LA", "P", "PA"):
        background = Image.new("RGB", image.size, (0, 0, 0))
        converted = image.convert("RGBA")
        background.paste(converted, mask=converted.getchannel("A"))
        return background
    return image.convert("RGB")


def read_audio(path: str) -> tuple[np.ndarray, int]:
    """Decode any common audio file to float32 (channels, samples) and its sample rate."""
    if not path or not Path(path).is_file():
        raise InvalidRequest("no audio clip: upload a WAV, MP3, FLAC, OGG or M4A file")
    try:
        data, rate = soundfile.read(path, dtype="float32", always_2d=True)
        return np.ascontiguousarray(data.T), int(rate)
    except (soundfile.LibsndfileError, RuntimeError, TypeError):
        pass  # not a format libsndfile reads (m4a/aac, video containers): try FFmpeg through PyAV
    try:
        with av.open(path) as container:
            stream = next((s for s in container.streams if s.type == "audio"), None)
            if stream is None:
                raise InvalidRequest("the audio file has no audio stream: upload a speech clip")
            to_float = av.AudioResampler(format="fltp")  # planar float32, same layout and rate
            chunks, rate = [], stream.rate
            for frame in container.decode(stream):
                chunks.extend(f.to_ndarray() for f in to_float.resample(frame))
            chunks.extend(f.to_ndarray() for f in to_float.resample(None))
    except InvalidRequest:
        raise
    except (av.error.FFmpegError, StopIteration, ValueError, OSError) as exc:
        raise InvalidRequest(f"the audio file is not readable ({type(exc).__name__}): upload a WAV or MP3") from exc
    if not chunks:
        raise InvalidRequest("the audio clip is empty: upload one with speech")
    return np.concatenate(chunks, axis=1).astype(np.float32), int(rate)


def prepare_audio(path: str, start: float, duration: float) -> tuple[np.ndarray, str]:
    """Stereo, OUTPUT_SAMPLE_RATE, exactly `duration` seconds from `start`: trimmed or padded with silence."""
    samples, rate = read_audio(path)
    notes = []
    if samples.shape[1] == 0 or rate <= 0:
        raise InvalidRequest("the audio clip is empty (zero length): upload one with speech")
    total = samples.shape[1] / rate
    if start >= total:
        raise InvalidRequest(f"audio start {start:.2f} s is past the clip's end ({total:.2f} s)")
    if samples.shape[0] == 1:
        samples = np.repeat(samples, 2, axis=0)
        notes.append("upmixed mono to stereo")
    elif samples.shape[0] > 2:
        samples = samples[:2]
        notes.append(f"kept the first 2 of {samples.shape[0]} channels")
    if rate != OUTPUT_SAMPLE_RATE:
        ratio = Fraction(OUTPUT_SAMPLE_RATE, rate)
        samples = resample_poly(samples, ratio.numerator, ratio.denominator, axis=1).astype(np.float32)
        notes.append(f"resampled {rate} Hz to {OUTPUT_SAMPLE_RATE} Hz")
    first = round(start * OUTPUT_SAMPLE_RATE)
    wanted = round(duration * OUTPUT_SAMPLE_RATE)
    segment = samples[:, first : first + wanted]
    if start > 0:
        notes.append(f"started at {start:.2f} s")
    if segment.shape[1] < wanted:
        missing = wanted - segment.shape[1]
        segment = np.pad(segment, ((0, 0), (0, missing)))
        notes.append(f"padded {missing / OUTPUT_SAMPLE_RATE:.2f} s of silence at the end")
    elif samples.shape[1] - first > wanted:
        notes.append(f"trimmed to {duration:.2f} s")
    peak = float(np.abs(segment).max()) if segment.size else 0.0
    if peak > 1.0:
        segment = segment / peak
        notes.append("scaled down to avoid clipping")
    return np.ascontiguousarray(segment, dtype=np.float32), "; ".join(notes) or "used as is"


def audio_duration(path: str) -> float:
    samples, rate = read_audio(path)
    return samples.shape[1] / rate


def prepare_inputs(request: GenerationRequest, work_dir: Path) -> PreparedInputs:
    """All checks and conversions for one request; raises InvalidRequest naming what to fix."""
    check_request(request)
    image_note = prepare_image(
        request.image_path, request.width, request.height, ImageFit(request.image_fit), work_dir / "portrait.png"
    )
    audio, audio_note = prepare_audio(request.audio_path, request.audio_start, request.num_frames / request.frame_rate)
    return PreparedInputs(work_dir / "portrait.png", audio, OUTPUT_SAMPLE_RATE, audio_note, image_note)


# x264 options for the mp4: crf 18 keeps lip detail for review; rc-lookahead=0 because with the lookahead (mb-tree)
# on, identical frames encoded in the engine came out as different bitstreams in about half of the runs, even
# with threads=1 (measured here, 64x64 clips); without it 12 of 12 encodes were identical.
X264_OPTIONS = {"crf": "18", "x264-params": "rc-lookahead=0"}


def write_mp4(
    frames: np.ndarray,
    audio: np.ndarray,
    sample_rate: int,
    frame_rate: int,
    path: Path,
    metadata: dict[str, str] | None = None,
) -> None:
    """H.264 (yuv420p) + AAC stereo mp4 through PyAV. frames: uint8 (n, h, w, 3); audio: float32 (2, samples);
    metadata: container tags (e.g. the provenance JSON under "comment")."""
    with av.open(str(path), mode="w") as container:
        container.metadata.update(metadata or {})
        video = container.add_stream("libx264", rate=frame_rate, options=X264_OPTIONS)
        video.width, video.height, video.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        sound = container.add_stream("aac", rate=sample_rate, layout="stereo")
        for frame in frames:
            container.mux(video.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")))
        container.mux(video.encode())
        pcm = av.AudioFrame.from_ndarray(np.ascontiguousarray(audio, dtype=np.float32), format="fltp", layout="stereo")
        pcm.sample_rate = sample_rate
        # With a pts the encoder stamps its 1024 priming samples negative and the muxer writes an edit list that
        # skips them; without one they played before the speech, 21 ms late against the video.
        pcm.pts, pcm.time_base = 0, Fraction(1, sample_rate)
        container.mux(sound.encode(pcm))
        container.mux(sound.encode(None))
