"""The mp4 encoder process: H.264 (yuv420p) + AAC stereo through PyAV, in a process of its own, fed by media.Mp4Stream.

Why a process: x264 returns to Python once or more per frame, and each return needs the interpreter lock. On a
thread of the process that runs the model, the decoder's Python (kernel launches) held that lock, so the encoder
waited at every frame and almost nothing encoded until the decode had ended (bench: 768x512x97, decode 0.56 s then
a 0.84 s tail). Here nothing else wants this process's lock.

The wire, all little messages (length-prefixed pickles): commands on stdin, replies on the fd named in argv. The
audio samples and the frames travel through a memfd named in argv that both processes map: the audio at offset 0,
the frames after it at FRAMES_OFFSET(audio bytes), each written once by the parent before the message naming it.

Run as: python -m ltx_demo.mp4_encoder MEMFD REPLY_FD   (media.Mp4Stream starts it; nothing else should)."""

from __future__ import annotations

import mmap
import os
import pickle
import select
import struct
import sys
from collections import deque
from fractions import Fraction

_LENGTH = struct.Struct("<I")
# How far below the model's process the encoder runs: 0, since nice 10 measured the same (decode + mp4 tail 1.05 vs
# 1.03 s at 768x512x97, 2.55 s both at 1280x768 on an H100: docs/device/decode-mp4-*-h100.json); the decode's
# slowdown beside the encoder (0.58 -> 0.78 s) is not the scheduler's. scripts/decode_mp4_bench.py sets other values.
ENCODER_NICENESS = int(os.environ.get("LTX_DEMO_MP4_ENCODER_NICENESS", "0"))

# Commands (parent -> encoder), as tuples: ("open", path, frame_rate, sample_rate, audio_samples, metadata, options,
# total, every), ("frames", height, width, start, count), ("finish",), ("abort",).
# Replies (encoder -> parent): ("encoded", frames so far), ("closed",), ("failed", exception).


def frames_offset(audio_bytes: int) -> int:
    """Where the frames start in the memfd: after the audio, on a page boundary."""
    return -(-audio_bytes // mmap.PAGESIZE) * mmap.PAGESIZE


def send(fd: int, message: tuple) -> None:
    """One message, whole (a blocking write of a few hundred bytes at most)."""
    payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    data = memoryview(_LENGTH.pack(len(payload)) + payload)
    while data:
        data = data[os.write(fd, data) :]


def receive(fd: int) -> tuple | None:
    """The next message, waiting for it; None when the other end has closed."""
    header = _read_exactly(fd, _LENGTH.size)
    if header is None:
        return None
    payload = _read_exactly(fd, _LENGTH.unpack(header)[0])
    if payload is None:
        return None
    return pickle.loads(payload)


def readable(fd: int) -> bool:
    return bool(select.select([fd], [], [], 0)[0])


def _read_exactly(fd: int, size: int) -> bytes | None:
    chunks, left = [], size
    while left:
        chunk = os.read(fd, left)
        if not chunk:
            return None
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def portable(exc: BaseException) -> Exception:
    """What the parent can rebuild of an exception: OSErrors keep errno and filename (the engine reads ENOSPC from
    them), ValueErrors their message; anything else (PyAV's own) becomes a RuntimeError naming its type."""
    if isinstance(exc, OSError):
        return OSError(exc.errno, exc.strerror or str(exc), exc.filename)
    if isinstance(exc, ValueError):
        return ValueError(str(exc))
    return RuntimeError(f"mp4 encoder: {type(exc).__name__}: {exc}")


class Encoder:
    """The encoder's side of one file: the audio first, then each frame as its message comes, then the close."""

    def __init__(self, memfd: int, commands: int, replies: int) -> None:
        import av  # here, not at the module's top: the parent imports this module for its wire helpers only
        import numpy as np

        self.av, self.np = av, np
        self.memfd, self.commands, self.replies = memfd, commands, replies
        self.pending: deque = deque()  # commands read while frames were encoding
        self.mapped: mmap.mmap | None = None
        self.container = None
        self.encoded = 0

    def run(self) -> None:
        """Serve one file; the process ends when it is closed, aborted or failed (or the parent went away)."""
        try:
            opening = self._next(block=True)
            if opening is None or opening[0] != "open":
                return
            self._open(*opening[1:])
            while (command := self._next(block=True)) is not None:
                if command[0] == "abort":
                    return
                if command[0] == "finish":
                    self._finish()
                    send(self.replies, ("closed",))
                    return
                if not self._encode_frames(*command[1:]):
                    return  # aborted between frames
        except BaseException as exc:
            send(self.replies, ("failed", portable(exc)))
        finally:
            if self.container is not None:
                try:
                    self.container.close()
                except Exception:
                    pass
            if self.mapped is not None:
                self.mapped.close()

    def _next(self, block: bool) -> tuple | None:
        """The next command: one read ahead while frames encoded, else from the pipe (None: none yet, or the end)."""
        self._read_available()
        if self.pending:
            return self.pending.popleft()
        return receive(self.commands) if block else None

    def _read_available(self) -> None:
        while readable(self.commands):
            message = receive(self.commands)
            self.pending.append(message if message is not None else ("abort",))
            if message is None:
                return

    def _aborted(self) -> bool:
        self._read_available()
        return any(command[0] == "abort" for command in self.pending)

    def _open(self, path, frame_rate, sample_rate, audio_samples, metadata, options, total, every) -> None:
        av, np = self.av, self.np
        self.total, self.every = total, every
        audio_bytes = 2 * audio_samples * 4
        self.offset = frames_offset(audio_bytes)
        audio = np.frombuffer(os.pread(self.memfd, audio_bytes, 0), dtype=np.float32).reshape(2, audio_samples)
        self.container = av.open(str(path), mode="w")
        self.container.metadata.update(metadata or {})
        self.video = self.container.add_stream("libx264", rate=frame_rate, options=options)
        self.video.pix_fmt = "yuv420p"
        sound = self.container.add_stream("aac", rate=sample_rate, layout="stereo")
        pcm = av.AudioFrame.from_ndarray(np.ascontiguousarray(audio), format="fltp", layout="stereo")
        pcm.sample_rate = sample_rate
        # With a pts the encoder stamps its 1024 priming samples negative and the muxer writes an edit list that
        # skips them; without one they played before the speech, 21 ms late against the video.
        pcm.pts, pcm.time_base = 0, Fraction(1, sample_rate)
        self.audio_packets = [*sound.encode(pcm), *sound.encode(None)]  # muxed after the video's, on finish

    def _encode_frames(self, height: int, width: int, start: int, count: int) -> bool:
        """Encode frames start..start+count from the memfd; False when an abort came between two of them."""
        frame_bytes = height * width * 3
        end = self.offset + (start + count) * frame_bytes
        if self.mapped is None or len(self.mapped) < end:
            if self.mapped is not None:
                self.mapped.close()
            self.mapped = mmap.mmap(self.memfd, os.fstat(self.memfd).st_size, prot=mmap.PROT_READ)
            self.video.height, self.video.width = height, width
        for index in range(start, start + count):
            if self._aborted():
                return False
            at = self.offset + index * frame_bytes
            frame = self.np.frombuffer(self.mapped, dtype=self.np.uint8, count=frame_bytes, offset=at)
            picture = self.av.VideoFrame.from_ndarray(frame.reshape(height, width, 3), format="rgb24")
            self.container.mux(self.video.encode(picture))
            self.encoded += 1
            if self.encoded % self.every == 0 and self.encoded < self.total:
                send(self.replies, ("encoded", self.encoded))
        return True

    def _finish(self) -> None:
        self.container.mux(self.video.encode())
        self.container.mux(self.audio_packets)  # after the video's, as when everything was encoded at the end
        self.container.close()
        self.container = None


def main() -> None:
    memfd, replies = int(sys.argv[1]), int(sys.argv[2])
    os.dup2(2, 1)  # nothing this process prints may reach the parent's pipes
    if ENCODER_NICENESS:
        os.nice(ENCODER_NICENESS)
    Encoder(memfd, sys.stdin.fileno(), replies).run()


if __name__ == "__main__":
    main()
