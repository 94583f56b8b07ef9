"""A/B pairs of results, without torch: whether two can be compared, their waveform and decoded difference, the
video-only proxies the synced player shows, and the pair exported side by side as one mp4."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ltx_demo import results
from ltx_demo.media import X264_OPTIONS
from ltx_demo.review import HistoryEntry, mp4_metadata
from ltx_demo.types import InvalidRequest

PAIR_SCHEMA = "ltx-demo/side-by-side-1"
PAIR_GAP, PAIR_LABEL_HEIGHT = 8, 28  # pixels between the two videos; the caption strip above them


def video_only(video: str | Path) -> Path:
    """The mp4's video stream alone (packets copied, nothing re-encoded) in folder/proxies, made once. The A/B player
    shows these and plays the sound from one audio element: a page then has one clock, and two silent videos that
    follow it the same way (a video with its own audio track keeps time by its audio output, which stalls alone)."""
    video = Path(video)
    target = results.proxy_path(video)
    if target.is_file() and target.stat().st_mtime >= video.stat().st_mtime:
        return target
    with results.atomic_write(target) as staged, av.open(str(video)) as source, av.open(str(staged), "w") as container:
        stream = source.streams.video[0]
        copy_packets(source, stream, container, container.add_stream_from_template(stream))
    return target


def copy_packets(source, stream, container, into) -> None:
    """Every packet of `stream` (demuxed from `source`) muxed into `container` as `into`, without re-encoding."""
    for packet in source.demux(stream):
        if packet.dts is None:  # the demuxer's end-of-stream marker
            continue
        packet.stream = into
        container.mux(packet)


# -- A/B: what can be compared, and the pieces of the comparison ---------------------------------------------------
@dataclass(frozen=True, slots=True)
class VideoInfo:
    """What the comparison needs from an mp4, read from the file itself (not from its sidecar)."""

    path: Path
    width: int
    height: int
    num_frames: int
    frame_rate: Fraction
    has_audio: bool

    @property
    def fps(self) -> float:
        return float(self.frame_rate)

    @property
    def duration(self) -> float:
        return self.num_frames / self.fps

    @classmethod
    def probe(cls, path: str | Path) -> VideoInfo:
        try:
            with av.open(str(path)) as container:
                if not container.streams.video:
                    raise InvalidRequest(f"{Path(path).name} has no video stream")
                stream = container.streams.video[0]
                frames = stream.frames or sum(1 for _ in container.decode(stream))
                rate = stream.average_rate or stream.guessed_rate or Fraction(24)
                return cls(
                    Path(path), stream.width, stream.height, frames, Fraction(rate), bool(container.streams.audio)
                )
        except (av.error.FFmpegError, OSError) as exc:
            raise InvalidRequest(f"{Path(path).name} is not a readable video ({type(exc).__name__})") from exc


def why_not_comparable(a: VideoInfo, b: VideoInfo) -> str | None:
    """None when A and B can share one timeline (same frame count and rate); else the reason, naming both."""
    if a.path.resolve() == b.path.resolve():
        return "A and B are the same result: pick two different ones"
    if a.frame_rate != b.frame_rate:
        return f"A runs at {a.fps:g} fps and B at {b.fps:g} fps: compare results made at the same frame rate"
    if a.num_frames != b.num_frames:
        return f"A has {a.num_frames} frames and B has {b.num_frames}: compare results with the same frame count"
    return None


def decode_audio(path: str | Path) -> tuple[np.ndarray, int]:
    """The mp4's audio as float32 (channels, samples) and its rate (empty when there is no audio)."""
    with av.open(str(path)) as container:
        if not container.streams.audio:
            return np.zeros((1, 0), np.float32), 0
        stream = container.streams.audio[0]
        to_float = av.AudioResampler(format="fltp")
        chunks = [f.to_ndarray() for frame in container.decode(stream) for f in to_float.resample(frame)]
        chunks.extend(f.to_ndarray() for f in to_float.resample(None))
        rate = stream.rate
    if not chunks:
        return np.zeros((1, 0), np.float32), rate
    return np.concatenate(chunks, axis=1).astype(np.float32), rate


def waveform(path: str | Path, duration: float, bins: int = 480) -> list[tuple[float, float]]:
    """(min, max) of the mono mix in `bins` equal slices of the first `duration` seconds: the drawn waveform."""
    audio, rate = decode_audio(path)
    if audio.shape[1] == 0 or rate <= 0:
        return []
    mono = audio.mean(axis=0)[: max(1, round(duration * rate))]
    edges = np.linspace(0, len(mono), bins + 1).astype(int)
    return [
        (float(mono[lo:hi].min()), float(mono[lo:hi].max())) if hi > lo else (0.0, 0.0)
        for lo, hi in itertools.pairwise(edges)
    ]


def decoded_difference(a: str | Path, b: str | Path) -> dict:
    """Whether two mp4s decode to the same frames and the same audio samples (how "reproduce" is judged); frames are
    compared one pair at a time, so long clips never sit in memory whole."""
    counts, max_pixel, same_frames = [0, 0], 0, True
    with av.open(str(a)) as container_a, av.open(str(b)) as container_b:
        pairs = itertools.zip_longest(container_a.decode(video=0), container_b.decode(video=0))
        for frame_a, frame_b in pairs:
            counts[0] += frame_a is not None
            counts[1] += frame_b is not None
            if frame_a is None or frame_b is None:
                same_frames = False
                continue
            x, y = frame_a.to_ndarray(format="rgb24"), frame_b.to_ndarray(format="rgb24")
            if x.shape != y.shape:
                same_frames, max_pixel = False, None
                continue
            if max_pixel is not None:
                max_pixel = max(max_pixel, int(np.abs(x.astype(np.int16) - y.astype(np.int16)).max()))
    (audio_a, rate_a), (audio_b, rate_b) = decode_audio(a), decode_audio(b)
    same_audio_shape = audio_a.shape == audio_b.shape and rate_a == rate_b
    return {
        "frames_identical": bool(same_frames and max_pixel == 0),
        "audio_identical": bool(same_audio_shape and np.array_equal(audio_a, audio_b)),
        "max_pixel_difference": max_pixel,
        "max_audio_difference": (float(np.abs(audio_a - audio_b).max()) if same_audio_shape and audio_a.size else None),
        "frames": counts,
    }


# -- export: the A/B pair as one mp4 -------------------------------------------------------------------------------
def _even(value: float) -> int:
    return max(2, round(value / 2) * 2)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def render_side_by_side(
    a: str | Path, b: str | Path, out: str | Path, labels: tuple[str, str] = ("A", "B"), record: dict | None = None
) -> Path:
    """A and B next to each other in one H.264 mp4 (scaled to the taller one's height, captions above), with A's
    audio copied packet for packet (no re-encode, so no new AAC delay). Refuses pairs that cannot share a timeline."""
    info_a, info_b = VideoInfo.probe(a), VideoInfo.probe(b)
    reason = why_not_comparable(info_a, info_b)
    if reason:
        raise InvalidRequest(reason)
    height = _even(max(info_a.height, info_b.height))
    width_a = _even(info_a.width * height / info_a.height)
    width_b = _even(info_b.width * height / info_b.height)
    size = (width_a + PAIR_GAP + width_b, height + PAIR_LABEL_HEIGHT)
    base = Image.new("RGB", size, (17, 17, 17))
    draw = ImageDraw.Draw(base)
    font = _font(max(10, PAIR_LABEL_HEIGHT // 2))
    for x, text in ((4, labels[0]), (width_a + PAIR_GAP + 4, labels[1])):
        draw.text((x, PAIR_LABEL_HEIGHT // 2), text, fill=(240, 240, 240), font=font, anchor="lm")
    out = Path(out)
    with (
        results.atomic_write(out) as staged,
        av.open(str(a)) as video_a,
        av.open(str(b)) as video_b,
        av.open(str(a)) as sound_a,
        av.open(str(staged), mode="w") as container,
    ):
        if record is not None:
            container.metadata.update(mp4_metadata(record))
        video = container.add_stream("libx264", rate=info_a.frame_rate, options=X264_OPTIONS)
        video.width, video.height, video.pix_fmt = size[0], size[1], "yuv420p"
        audio_in = sound_a.streams.audio[0] if sound_a.streams.audio else None
        audio_out = container.add_stream_from_template(audio_in) if audio_in is not None else None
        frames = zip(video_a.decode(video=0), video_b.decode(video=0), strict=False)
        for frame_a, frame_b in frames:
            canvas = base.copy()
            for frame, (width, x) in ((frame_a, (width_a, 0)), (frame_b, (width_b, width_a + PAIR_GAP))):
                image = frame.to_image()
                if image.size != (width, height):
                    image = image.resize((width, height), Image.Resampling.LANCZOS)
                canvas.paste(image, (x, PAIR_LABEL_HEIGHT))
            container.mux(video.encode(av.VideoFrame.from_image(canvas)))
        container.mux(video.encode())
        if audio_in is not None:
            copy_packets(sound_a, audio_in, container, audio_out)
    return out


def pair_record(a: HistoryEntry | None, b: HistoryEntry | None, audio_from: str = "A") -> dict:
    """The side-by-side mp4's metadata: both results' provenance and which one's audio it carries."""
    return {
        "schema": PAIR_SCHEMA,
        "audio_from": audio_from,
        "a": {"video": a.video.name, **a.provenance} if a else None,
        "b": {"video": b.video.name, **b.provenance} if b else None,
    }
