"""Media in and out: the portrait and the audio read, checked and normalised (requests.py has checked the request's
fields first), and the mp4 writer (fed chunk by chunk while the decoder runs; it encodes in a process of its own)."""

from __future__ import annotations

import logging
import math
import mmap
import os
import re
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import soundfile
from PIL import Image, ImageOps, UnidentifiedImageError
from scipy.signal import resample_poly

from ltx_demo import mp4_encoder
from ltx_demo.requests import MAX_FRAMES
from ltx_demo.types import Flow, GenerationRequest, ImageFit, InvalidRequest

logger = logging.getLogger(__name__)

OUTPUT_SAMPLE_RATE = 48_000  # what the mp4 carries; the audio VAE resamples to its own 16 kHz internally
MAX_IMAGE_PIXELS = 64_000_000


@dataclass(frozen=True, slots=True)
class PreparedInputs:
    image_path: Path  # RGB PNG at exactly width x height (reference flow, crop: at the upload's own size)
    audio: np.ndarray  # float32 (2, samples) at OUTPUT_SAMPLE_RATE, exactly the clip's duration
    sample_rate: int
    audio_note: str
    image_note: str


def frames_for_duration(seconds: float, frame_rate: int) -> int:
    """The largest 8k+1 frame count whose clip the audio covers (at least 9)."""
    k = max(1, math.floor((seconds * frame_rate - 1) / 8))
    return min(8 * k + 1, MAX_FRAMES)


def frames_for_audio(seconds: float, frame_rate: int, window_frames: int = MAX_FRAMES) -> int:
    """The video length for the whole of `seconds` of audio: round(seconds x fps) frames (within half a frame of the
    audio) when that is longer than one window, so it runs in windows; else one clip (frames_for_duration)."""
    whole = round(seconds * frame_rate)
    return whole if whole > window_frames else min(frames_for_duration(seconds, frame_rate), window_frames)


STOCK_IMAGE_MODES = ("RGB", "RGBA")  # what ltx-pipelines' decode_image (np.array(image)[..., :3]) reads as RGB
EXIF_ORIENTATION = 0x0112


def prepare_image(path: str, width: int, height: int, fit: ImageFit | None, out_path: Path) -> str:
    """Open, flatten to RGB and fit the portrait to exactly width x height (crop or pad); returns a note.

    fit None (the reference flow): at its own size, as ltx-pipelines' decode_image reads it (the first three channels
    of an RGB or RGBA image, EXIF orientation not applied); it crops and resizes it itself, bilinearly. Modes it
    cannot read (grey, palette, 16-bit, CMYK) are flattened to RGB here instead, with a note."""
    if not path or not Path(path).is_file():
        raise InvalidRequest("no portrait image: upload a PNG or JPEG")
    if Path(path).stat().st_size == 0:
        raise InvalidRequest("the portrait file is empty (0 bytes): upload a PNG or JPEG")
    too_big = f"resize it to at most {MAX_IMAGE_PIXELS // 1_000_000} megapixels (e.g. 4096x4096) and upload it again"
    notes = []
    try:
        with Image.open(path) as image:
            if image.width * image.height > MAX_IMAGE_PIXELS:
                raise InvalidRequest(f"the portrait is {image.width}x{image.height} pixels: {too_big}")
            if getattr(image, "is_animated", False):
                notes.append(f"animated image ({image.n_frames} frames): used its first frame")
                image.seek(0)
            image.load()
            as_stock_reads = None
            if fit is None and image.mode in STOCK_IMAGE_MODES:
                as_stock_reads = Image.fromarray(np.asarray(image)[..., :3])
                if image.mode == "RGBA" or image.getexif().get(EXIF_ORIENTATION, 1) != 1:
                    notes.append("read as ltx-pipelines reads it (alpha and EXIF orientation ignored)")
            elif fit is None:
                notes.append(f"ltx-pipelines cannot read a {image.mode} image: converted to RGB first")
            if image.mode not in ("RGB", "L") and as_stock_reads is None:
                notes.append(f"converted {image.mode} to RGB")
            image = ImageOps.exif_transpose(image)
            rgb = _to_rgb(image)
    except InvalidRequest:
        raise
    except Image.DecompressionBombError as exc:  # PIL refuses to open it at all (over ~179 megapixels)
        pixels = re.search(r"\((\d+) pixels\)", str(exc))
        size = f"{int(pixels.group(1)) / 1e6:.0f} megapixels" if pixels else "too many pixels"
        raise InvalidRequest(f"the portrait has {size}: {too_big}") from None
    except UnidentifiedImageError:
        message = "the portrait is not a readable image (no format PIL knows): upload a PNG or JPEG"
        raise InvalidRequest(message) from None
    except (OSError, ValueError, SyntaxError) as exc:  # truncated or corrupt data inside a known format
        raise InvalidRequest(
            f"the portrait file is damaged or cut short ({exc}): export it again as PNG or JPEG"
        ) from None
    match fit:
        case None:
            fitted = rgb if as_stock_reads is None else as_stock_reads
        case ImageFit.CROP:
            fitted = ImageOps.fit(rgb, (width, height), Image.Resampling.LANCZOS)
        case ImageFit.PAD:
            fitted = ImageOps.pad(rgb, (width, height), Image.Resampling.LANCZOS, color=(0, 0, 0))
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fitted.save(out_path)
    return "; ".join(notes)


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode.startswith("I"):  # 16-bit (I;16*) or 32-bit integer grey: map the sample range onto 8 bits
        array = np.asarray(image, dtype=np.float64)
        top = array.max(initial=0)
        scale = 1.0 if top <= 255 else 257.0 if top <= 65535 else top / 255  # 65535 / 257 = 255: not a stretch
        image = Image.fromarray(np.clip(np.round(array / scale), 0, 255).astype(np.uint8))
    if image.mode in ("RGBA", "LA", "P", "PA"):
        background = Image.new("RGB", image.size, (0, 0, 0))
        converted = image.convert("RGBA")
        background.paste(converted, mask=converted.getchannel("A"))
        return background
    return image.convert("RGB")


AUDIO_FORMATS = "WAV, MP3, FLAC, OGG or M4A"
# Native samples read past each end of the wanted window, so resampling the window gives exactly the samples that
# resampling the whole file would (resample_poly's filter reaches 10 input samples either side).
RESAMPLE_MARGIN = 64


@dataclass(frozen=True, slots=True)
class AudioWindow:
    """Part of a decoded audio file at its own rate: float32 (channels, n) starting at sample `offset` of the file."""

    samples: np.ndarray
    rate: int
    offset: int
    total: int | None  # the file's length in samples; None when decoding stopped after the window
    reaches_end: bool  # the window runs to the end of the file


def check_audio_file(path: str) -> None:
    """What can be said before decoding: missing, empty, or a WAV whose header promises more than the file holds."""
    if not path or not Path(path).is_file():
        raise InvalidRequest(f"no audio clip: upload a {AUDIO_FORMATS} file")
    size = Path(path).stat().st_size
    if size == 0:
        raise InvalidRequest(f"the audio file is empty (0 bytes): upload a {AUDIO_FORMATS} file with speech")
    with open(path, "rb") as f:
        head = f.read(12)
        if head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return
        byte_rate, position = 0, 12
        while position + 8 <= size:
            f.seek(position)
            chunk, length = f.read(4), int.from_bytes(f.read(4), "little")
            if chunk == b"fmt ":
                byte_rate = int.from_bytes(f.read(12)[8:12], "little")  # after format, channels, sample rate
            if chunk == b"data":
                available = size - position - 8
                # 0 and 0xFFFFFFFF: written by streaming recorders that never went back to fill in the length.
                if length not in (0, 0xFFFFFFFF) and length > available and byte_rate:
                    raise InvalidRequest(
                        f"the WAV file is cut short: its header promises {length / byte_rate:.2f} s, the file holds "
                        f"{available / byte_rate:.2f} s (an interrupted upload or recording?): upload the whole file"
                    )
                return
            position += 8 + length + (length & 1)


def _window_bounds(rate: int, start: float, seconds: float | None) -> tuple[int, int | None]:
    """[lo, hi) in native samples: the window plus margins, lo on the resampling grid (see RESAMPLE_MARGIN)."""
    step = rate // math.gcd(rate, OUTPUT_SAMPLE_RATE)
    lo = max(0, round(start * rate) - RESAMPLE_MARGIN) // step * step
    hi = None if seconds is None else math.ceil((start + seconds) * rate) + RESAMPLE_MARGIN
    return lo, hi


def read_audio(path: str, start: float = 0.0, seconds: float | None = None, keep: bool = True) -> AudioWindow:
    """Decode `seconds` from `start` (to the end when None) of any common audio file, at its own rate, streaming:
    a long file is never held whole. keep=False only counts samples (for the file's duration)."""
    check_audio_file(path)
    try:
        with soundfile.SoundFile(path) as f:
            rate, total = int(f.samplerate), int(f.frames)
            lo, hi = _window_bounds(rate, start, seconds)
            end = total if hi is None else min(hi, total)
            data = np.zeros((0, f.channels), np.float32)
            if keep and lo < end:
                f.seek(lo)
                data = f.read(end - lo, dtype="float32", always_2d=True)
            return AudioWindow(np.ascontiguousarray(data.T), rate, lo, total, end == total)
    except (soundfile.LibsndfileError, RuntimeError, TypeError):
        pass  # not a format libsndfile reads (m4a/aac, video containers): try FFmpeg through PyAV
    try:
        with av.open(path) as container:
            stream = next((s for s in container.streams if s.type == "audio"), None)
            if stream is None:
                raise InvalidRequest(f"the file has no audio stream: upload a {AUDIO_FORMATS} file with speech")
            rate = int(stream.rate or 0)
            if rate <= 0:
                raise InvalidRequest(f"the audio stream has no sample rate: upload a {AUDIO_FORMATS} file")
            lo, hi = _window_bounds(rate, start, seconds)
            to_float = av.AudioResampler(format="fltp")  # planar float32, same layout and rate
            chunks, position, stopped = [], 0, False
            for frame in _frames_then_flush(container, stream):
                if not keep:
                    position += frame.samples if frame is not None else 0
                    continue
                for converted in to_float.resample(frame):
                    n = converted.samples
                    if position + n > lo and (hi is None or position < hi):
                        part = converted.to_ndarray()[:, max(0, lo - position) : None if hi is None else hi - position]
                        chunks.append(part)
                    position += n
                if hi is not None and position >= hi:
                    stopped = True  # the rest of the file is not needed, and not decoded
                    break
    except InvalidRequest:
        raise
    except (av.error.FFmpegError, StopIteration, ValueError, OSError) as exc:
        why = getattr(exc, "strerror", None) or type(exc).__name__
        raise InvalidRequest(f"the file is not readable audio ({why}): upload a {AUDIO_FORMATS} file") from None
    channels = chunks[0].shape[0] if chunks else 2
    data = np.concatenate(chunks, axis=1).astype(np.float32) if chunks else np.zeros((channels, 0), np.float32)
    return AudioWindow(data, rate, min(lo, position), None if stopped else position, not stopped)


def _frames_then_flush(container, stream):
    yield from container.decode(stream)
    yield None  # flushes the resampler


def prepare_audio(path: str, start: float, duration: float, max_seconds: float | None = None) -> tuple[np.ndarray, str]:
    """Stereo, OUTPUT_SAMPLE_RATE, exactly `duration` seconds from `start`: trimmed or padded with silence; with
    `max_seconds` under the duration, only that much of the audio is used and the rest is silence."""
    window = read_audio(path, start, duration)
    samples, rate = window.samples, window.rate
    notes = []
    if window.total == 0 or rate <= 0:
        raise InvalidRequest("the audio clip is empty (zero length): upload one with speech")
    if window.total is not None and round(start * rate) >= window.total:
        raise InvalidRequest(
            f"audio start {start:.2f} s is past the clip's end ({window.total / rate:.2f} s): lower the start offset"
        )
    if not np.isfinite(samples).all():
        raise InvalidRequest("the audio has NaN or infinite samples (a broken float WAV?): export it as 16-bit PCM")
    if samples.shape[0] == 1:
        samples = np.repeat(samples, 2, axis=0)
        notes.append("upmixed mono to stereo")
    elif samples.shape[0] > 2:
        notes.append(f"kept the first 2 of {samples.shape[0]} channels")
        samples = samples[:2]
    if rate != OUTPUT_SAMPLE_RATE:
        ratio = Fraction(OUTPUT_SAMPLE_RATE, rate)
        samples = resample_poly(samples, ratio.numerator, ratio.denominator, axis=1).astype(np.float32)
        notes.append(f"resampled {rate} Hz to {OUTPUT_SAMPLE_RATE} Hz")
    # window.offset is on the resampling grid, so this is the same sample as in the whole file resampled.
    first = round(start * OUTPUT_SAMPLE_RATE) - window.offset * OUTPUT_SAMPLE_RATE // rate
    wanted = round(duration * OUTPUT_SAMPLE_RATE)
    used = wanted if max_seconds is None else min(wanted, round(max_seconds * OUTPUT_SAMPLE_RATE))
    segment = samples[:, first : first + used]
    if used < wanted:
        notes.append(f"used {used / OUTPUT_SAMPLE_RATE:.2f} s of audio (the max duration asked)")
    if start > 0:
        notes.append(f"started at {start:.2f} s")
    if segment.shape[1] < wanted:
        missing = wanted - segment.shape[1]
        covered = segment.shape[1] / OUTPUT_SAMPLE_RATE
        segment = np.pad(segment, ((0, 0), (0, missing)))
        notes.append(
            f"padded {missing / OUTPUT_SAMPLE_RATE:.2f} s of silence at the end (the audio covers {covered:.2f} s of "
            f"the {duration:.2f} s clip)"
        )
    elif not window.reaches_end or samples.shape[1] - first > wanted:
        notes.append(f"trimmed to {duration:.2f} s")
    peak = float(np.abs(segment).max()) if segment.size else 0.0
    if peak > 1.0:
        segment = segment / peak
        notes.append("scaled down to avoid clipping")
    if peak == 0.0:
        notes.append("the audio is silent here: expect no lip motion")
    return np.ascontiguousarray(segment, dtype=np.float32), "; ".join(notes) or "used as is"


def audio_duration(path: str) -> float:
    """Seconds of audio in the file (counted by decoding where the header cannot say; nothing is kept)."""
    window = read_audio(path, keep=False)
    return (window.total or 0) / window.rate


def prepare_inputs(request: GenerationRequest, work_dir: Path) -> PreparedInputs:
    """The checks and conversions of a checked request's files (requests.check first); raises InvalidRequest naming
    what to fix."""
    fit: ImageFit | None = request.image_fit
    if request.flow is Flow.REFERENCE and fit is ImageFit.CROP:
        fit = None  # the stock pipeline's own crop and resize (ltx-pipelines' load_image_conditioning)
    image_note = prepare_image(request.image_path, request.width, request.height, fit, work_dir / "portrait.png")
    duration = request.num_frames / request.frame_rate
    audio, audio_note = prepare_audio(request.audio_path, request.audio_start, duration, request.audio_max_duration)
    return PreparedInputs(work_dir / "portrait.png", audio, OUTPUT_SAMPLE_RATE, audio_note, image_note)


# x264 options for the mp4: crf 18 keeps lip detail for review; rc-lookahead=0 because with the lookahead (mb-tree)
# on, identical frames encoded in the engine came out as different bitstreams in about half of the runs, even
# with threads=1 (measured here, 64x64 clips); without it 12 of 12 encodes were identical. Preset veryfast: a third
# of medium's time for ~0.7 dB (docs/benchmarks.md, "Writing the mp4"). sliced-threads=0: x264's frame threads, not
# PyAV's default slice threads: decode + mp4 tail 1.03 s instead of 1.22 s at 768x512x97 on an H100's 16 cores, the
# bytes still the same run to run (docs/device/decode-mp4-768x512-h100.json); the bytes depend on the core count,
# as they did with slice threads.
X264_OPTIONS = {"crf": "18", "preset": "veryfast", "x264-params": "rc-lookahead=0:sliced-threads=0"}
MP4_PROGRESS_STEPS = 20  # encoding progress reports per file (the CLI prints a line for each)


ENCODER_EXIT_SECONDS = 10  # how long abort waits for the encoder process to stop before killing it


class Mp4Stream:
    """An mp4 written while its frames arrive: H.264 (yuv420p, X264_OPTIONS) + AAC stereo through PyAV, encoded in a
    process of its own (ltx_demo.mp4_encoder; there x264 never waits for this process's interpreter lock, which the
    decoder's Python holds most of the time): the audio first (it is known before the frames), then each chunk of
    frames as it is put; on close the video is flushed and the audio's packets muxed after it. The file's bytes are
    the same however the frames are chunked (the encoders get the same input in the same order, x264 numbers the pts
    itself, and the packets reach the muxer in the same order as when all was encoded at once).

    put(frames) copies the frames into memory the encoder maps and returns at once; close() waits for the encoder and
    reports progress. What the encoder raises comes out of the next put or of close. Leaving the `with` block
    without a successful close aborts: the encoder stops at its next frame and the file is removed, so nothing
    half-written stays behind."""

    def __init__(
        self,
        path: Path,
        total_frames: int,
        frame_rate: int,
        audio: np.ndarray,
        sample_rate: int,
        metadata: dict[str, str] | None = None,
        on_frames: Callable[[int, int], None] | None = None,
        frame_size: tuple[int, int] | None = None,
    ) -> None:
        """Starts the encoder process and hands it the audio. total_frames: how many frames the put calls will bring
        (the progress counts against it, and close checks it); audio: float32 (2, samples) at sample_rate;
        metadata: container tags (e.g. the provenance JSON under "comment"); on_frames(done, total): see close;
        frame_size: (height, width) when known before the first put (the engine knows it from the request): the
        frames' shared memory is then mapped now and its pages faulted in on a thread while the decoder still runs,
        so the puts only copy (the two puts of 768x512x97: 0.175 -> 0.015 s on the 2-core CPU,
        scripts/mp4_put_bench.py). A first chunk of another size is still taken: the memory is mapped again for it."""
        self.path, self.total, self.sample_rate = Path(path), total_frames, sample_rate
        self._report = on_frames or (lambda _done, _total: None)
        self._state = "open"  # open -> closed, or -> aborted
        self._error: BaseException | None = None
        self._frames_put = self._frames_encoded = 0
        self._size: tuple[int, int] | None = None  # (height, width), from the first chunk
        self._frames_memory: np.ndarray | None = None  # (total, h, w, 3) view of the memfd, from the first chunk
        self._mapped: mmap.mmap | None = None
        self._faulting_in: threading.Thread | None = None  # touches each page of a mapping made before the first put
        self.path.parent.stat()  # a missing folder is said here, as opening the file here used to
        audio = np.ascontiguousarray(audio, dtype=np.float32)
        if audio.ndim != 2 or audio.shape[0] != 2:
            raise ValueError(f"the mp4's audio is float32 (2, samples), got {audio.shape}")
        self._memfd = os.memfd_create("ltx-demo-mp4")
        self._audio_bytes = audio.nbytes
        os.ftruncate(self._memfd, mp4_encoder.frames_offset(self._audio_bytes))
        os.pwrite(self._memfd, audio.tobytes(), 0)
        replies, reply_end = os.pipe()
        self._replies = replies
        try:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "ltx_demo.mp4_encoder", str(self._memfd), str(reply_end)],
                stdin=subprocess.PIPE,
                pass_fds=(self._memfd, reply_end),
                cwd=Path(__file__).resolve().parent.parent,  # where `ltx_demo` imports from, whatever the cwd
            )
        finally:
            os.close(reply_end)
        self._commands = self._process.stdin.fileno()
        every = max(1, math.ceil(total_frames / MP4_PROGRESS_STEPS))
        self._send(("open", os.path.abspath(self.path), frame_rate, sample_rate, audio.shape[1], metadata or {},
                    X264_OPTIONS, total_frames, every))  # fmt: skip
        if frame_size is not None:
            self._map_frames(*frame_size)
            # A byte per page (the frames start on a page boundary); numpy lets go of the interpreter lock for the
            # strided write, so the decoder's thread keeps launching.
            pages = self._frames_memory.reshape(-1)[:: mmap.PAGESIZE]
            self._faulting_in = threading.Thread(target=pages.fill, args=(0,), daemon=True)
            self._faulting_in.start()

    def __enter__(self) -> Mp4Stream:
        return self

    def __exit__(self, *_exc) -> None:
        self.abort()  # nothing when close() succeeded

    def put(self, frames) -> None:
        """Copy the video's next frames, uint8 (n, h, w, 3) (numpy or a CPU tensor), to the encoder; returns at once."""
        self._read_replies(block=False)
        self._raise_if_failed()
        if self._state != "open":
            raise RuntimeError(f"frames put into an mp4 stream that is {self._state}")
        frames = np.asarray(frames)
        if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[3] != 3:
            raise ValueError(f"mp4 frames are uint8 (n, h, w, 3), got {frames.dtype} {frames.shape}")
        if self._frames_put + len(frames) > self.total:
            raise ValueError(f"the mp4 was opened for {self.total} frames; {self._frames_put + len(frames)} were put")
        if self._size is None:
            self._size = frames.shape[1], frames.shape[2]
            self._wait_faulted_in()
            if self._frames_memory is None or self._frames_memory.shape[1:3] != self._size:
                self._map_frames(*self._size)
        elif frames.shape[1:3] != self._size:
            raise ValueError(f"mp4 frames of {frames.shape[1:3]} after frames of {self._size}")
        if not len(frames):
            return
        start = self._frames_put
        self._frames_memory[start : start + len(frames)] = frames
        self._frames_put += len(frames)
        self._send(("frames", *self._size, start, len(frames)))

    def close(self) -> None:
        """Encode what is still queued, mux the audio and close the file.

        on_frames(done, total) is called here, on the caller's thread: once at the start with the frames encoded so
        far (0 when the frames were all just put), at most MP4_PROGRESS_STEPS times more as the rest encode, and once
        more when the file is closed (done == total)."""
        self._read_replies(block=False)
        self._raise_if_failed()
        if self._state != "open":
            raise RuntimeError(f"close() of an mp4 stream that is {self._state}")
        if self._frames_put != self.total:
            raise ValueError(f"the mp4 was opened for {self.total} frames; {self._frames_put} were put")
        self._send(("finish",))
        reported = self._frames_encoded  # what encoded during the put calls: reported once, not step by step
        self._report(reported, self.total)
        while self._state == "open" and self._error is None:
            self._read_replies(block=True)
            if self._frames_encoded > reported:
                reported = self._frames_encoded
                self._report(reported, self.total)
        self._raise_if_failed()
        self._release()
        self._report(self.total, self.total)

    def abort(self) -> None:
        """Stop the encoder (at its next frame), wait for it and remove the file; nothing once closed."""
        if self._state == "closed":
            return
        if self._state == "open":
            self._state = "aborted"
            self._send(("abort",), quietly=True)
        self._release()
        self.path.unlink(missing_ok=True)

    def frames_encoded(self) -> int:
        """How many frames the encoder has said it encoded (it says so every MP4_PROGRESS_STEPS-th of the total)."""
        self._read_replies(block=False)
        return self._frames_encoded

    # -- the wire to the encoder process ---------------------------------------------------------------------------
    def _map_frames(self, height: int, width: int) -> None:
        """Size the memfd for total frames of (height, width) after the audio and map it (again, if it was)."""
        self._unmap_frames()
        offset = mp4_encoder.frames_offset(self._audio_bytes)
        length = offset + self.total * height * width * 3
        os.ftruncate(self._memfd, length)
        self._mapped = mmap.mmap(self._memfd, length)
        self._frames_memory = np.frombuffer(self._mapped, dtype=np.uint8, offset=offset).reshape(
            self.total, height, width, 3
        )

    def _wait_faulted_in(self) -> None:
        if self._faulting_in is not None:
            self._faulting_in.join()
            self._faulting_in = None

    def _unmap_frames(self) -> None:
        self._wait_faulted_in()
        self._frames_memory = None
        if self._mapped is not None:
            self._mapped.close()
            self._mapped = None

    def _send(self, message: tuple, quietly: bool = False) -> None:
        try:
            mp4_encoder.send(self._commands, message)
        except (BrokenPipeError, OSError):  # the encoder has ended: its reply (or its exit) says why
            if not quietly:
                self._read_replies(block=True)
                self._raise_if_failed()
                raise

    def _read_replies(self, block: bool) -> None:
        """Take in what the encoder said: progress, the close, or its failure (an unexplained exit is one too)."""
        if self._replies is None:
            return
        while block or mp4_encoder.readable(self._replies):
            reply = mp4_encoder.receive(self._replies)
            if reply is None:
                self._process.wait()
                if self._error is None and self._state == "open":
                    code = self._process.returncode
                    self._error = RuntimeError(f"the mp4 encoder process ended without closing the file (exit {code})")
                return
            if reply[0] == "encoded":
                self._frames_encoded = reply[1]
            elif reply[0] == "closed":
                self._state = "closed"
                return
            elif reply[0] == "failed":
                self._error = reply[1]
                return
            if block:
                return

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error

    def _release(self) -> None:
        """The encoder process waited for (killed when it does not stop), the pipes and the shared memory freed."""
        if self._replies is None:
            return
        self._process.stdin.close()
        try:
            self._process.wait(ENCODER_EXIT_SECONDS)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        os.close(self._replies)
        self._replies = None
        self._unmap_frames()
        os.close(self._memfd)


def write_mp4(
    frames: np.ndarray,
    audio: np.ndarray,
    sample_rate: int,
    frame_rate: int,
    path: Path,
    metadata: dict[str, str] | None = None,
    on_frames: Callable[[int, int], None] | None = None,
) -> None:
    """All the frames at once through Mp4Stream: uint8 (n, h, w, 3) frames, float32 (2, samples) audio, metadata and
    on_frames as Mp4Stream takes them. A failure leaves no file."""
    with Mp4Stream(path, len(frames), frame_rate, audio, sample_rate, metadata, on_frames) as stream:
        stream.put(frames)
        stream.close()
