"""The streamed mp4 writer (media.Mp4Stream) on CPU: the same bytes as the one-shot writer it replaced, however the
frames are chunked; progress; what the encoder process raises reaches the caller; abort and failures leave no file
and no process."""

from __future__ import annotations

import errno
import hashlib
import math
import os
import threading
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from ltx_demo import media, review

FRAMES, HEIGHT, WIDTH, RATE, FPS = 41, 48, 80, 48_000, 24


def one_shot_write_mp4(frames, audio, sample_rate, frame_rate, path, metadata=None, on_frames=None) -> None:
    """media.write_mp4 as it was before Mp4Stream (commit a5bed8b), verbatim: the oracle for the bytes."""
    report = on_frames or (lambda _done, _total: None)
    total = len(frames)
    every = max(1, math.ceil(total / media.MP4_PROGRESS_STEPS))
    report(0, total)
    with av.open(str(path), mode="w") as container:
        container.metadata.update(metadata or {})
        video = container.add_stream("libx264", rate=frame_rate, options=media.X264_OPTIONS)
        video.width, video.height, video.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        sound = container.add_stream("aac", rate=sample_rate, layout="stereo")
        for done, frame in enumerate(frames, 1):
            container.mux(video.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")))
            if done % every == 0 and done < total:
                report(done, total)
        container.mux(video.encode())
        pcm = av.AudioFrame.from_ndarray(np.ascontiguousarray(audio, dtype=np.float32), format="fltp", layout="stereo")
        pcm.sample_rate = sample_rate
        pcm.pts, pcm.time_base = 0, Fraction(1, sample_rate)
        container.mux(sound.encode(pcm))
        container.mux(sound.encode(None))
    report(total, total)


@pytest.fixture(scope="module")
def clip():
    """41 frames that move (a drifting gradient with noise: P-frames with real motion) and 1.7 s of a chirp."""
    rng = np.random.default_rng(3)
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH]
    i = np.arange(FRAMES)[:, None, None]
    frames = np.stack([(x * 3 + 5 * i) % 256, (y * 4 + 3 * i) % 256, (x + y + 7 * i) % 256], axis=-1).astype(np.int16)
    frames = np.clip(frames + rng.integers(-12, 12, frames.shape), 0, 255).astype(np.uint8)
    t = np.arange(round(FRAMES / FPS * RATE)) / RATE
    chirp = 0.3 * np.sin(2 * np.pi * (200 * t + 1_500 * t**2))
    return frames, np.stack([chirp, 0.5 * chirp]).astype(np.float32)


RECORD = {"schema": "test", "prompt": "a woman speaks", "seed": 7}
METADATA = review.mp4_metadata(RECORD)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def streamed(path: Path, frames, audio, sizes, on_frames=None, as_tensors=False) -> None:
    with media.Mp4Stream(path, len(frames), FPS, audio, RATE, METADATA, on_frames) as stream:
        start = 0
        for size in sizes:
            chunk = frames[start : start + size]
            stream.put(torch.from_numpy(chunk) if as_tensors else chunk)
            start += size
        assert start == len(frames)
        stream.close()


def encoder_processes() -> list[int]:
    """The pids of this process's children that run ltx_demo.mp4_encoder (a real look at /proc)."""
    children = []
    for entry in Path("/proc").iterdir():
        try:
            if (
                not entry.name.isdigit()
                or int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) != os.getpid()
            ):
                continue
            command = (entry / "cmdline").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):  # it ended while we looked
            continue
        if b"ltx_demo.mp4_encoder" in command:
            children.append(int(entry.name))
    return children


# -- the bytes ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "sizes",
    [
        [FRAMES],  # all at once, as write_mp4 puts them
        [1, 7, 0, 13, 2, 18],  # uneven, one empty
        [1] * FRAMES,  # frame by frame
        [40, 1],
    ],
    ids=["one chunk", "uneven", "frame by frame", "all but one"],
)
def test_the_streamed_file_is_byte_identical_to_the_one_shot_writer(tmp_path, clip, sizes):
    frames, audio = clip
    one_shot_write_mp4(frames, audio, RATE, FPS, tmp_path / "one-shot.mp4", METADATA)
    streamed(tmp_path / "streamed.mp4", frames, audio, sizes)
    media.write_mp4(frames, audio, RATE, FPS, tmp_path / "write_mp4.mp4", METADATA)
    expected = sha256(tmp_path / "one-shot.mp4")
    assert sha256(tmp_path / "streamed.mp4") == expected
    assert sha256(tmp_path / "write_mp4.mp4") == expected
    assert review.read_mp4_record(tmp_path / "streamed.mp4") == RECORD
    with av.open(str(tmp_path / "streamed.mp4")) as container:
        decoded = [f.pts for f in container.decode(video=0)]
    assert len(decoded) == FRAMES and decoded == sorted(decoded)


def test_chunks_as_the_decoder_yields_them_give_the_same_bytes(tmp_path, clip):
    """CPU tensors, not contiguous (ltx-core's decode_video rearranges c f h w -> f h w c): the same file."""
    frames, audio = clip
    media.write_mp4(frames, audio, RATE, FPS, tmp_path / "array.mp4", METADATA)
    channels_first = torch.from_numpy(frames).permute(3, 0, 1, 2).contiguous()  # (c, f, h, w)
    as_decoded = channels_first.permute(1, 2, 3, 0)  # the decoder's view: (f, h, w, c), not contiguous
    assert not as_decoded.is_contiguous()
    with media.Mp4Stream(tmp_path / "tensors.mp4", FRAMES, FPS, audio, RATE, METADATA) as stream:
        for chunk in torch.split(as_decoded, [17, 16, 8]):
            stream.put(chunk)
        stream.close()
    assert sha256(tmp_path / "tensors.mp4") == sha256(tmp_path / "array.mp4")


def test_the_same_frames_twice_give_the_same_bytes(tmp_path, clip):
    frames, audio = clip
    for name in ("a.mp4", "b.mp4"):
        streamed(tmp_path / name, frames, audio, [5, 30, 6])
    assert sha256(tmp_path / "a.mp4") == sha256(tmp_path / "b.mp4")


def test_a_niceness_asked_for_lowers_the_encoder_and_keeps_the_bytes(tmp_path, clip, monkeypatch):
    """LTX_DEMO_MP4_ENCODER_NICENESS (scripts/decode_mp4_bench.py's variants): the encoder process runs that far below
    this one (read from /proc), and the file is the same as at the default."""
    frames, audio = clip
    streamed(tmp_path / "default.mp4", frames, audio, [FRAMES])
    monkeypatch.setenv("LTX_DEMO_MP4_ENCODER_NICENESS", "7")
    expected = os.nice(0) + 7
    with media.Mp4Stream(tmp_path / "nice.mp4", FRAMES, FPS, audio, RATE, METADATA) as stream:
        stat, deadline = Path(f"/proc/{stream._process.pid}/stat"), time.monotonic() + 10
        while (niceness := int(stat.read_text().rsplit(")", 1)[1].split()[16])) != expected:  # it starts at ours
            if time.monotonic() > deadline:
                break
            time.sleep(0.01)
        stream.put(frames)
        stream.close()
    assert niceness == expected
    assert sha256(tmp_path / "nice.mp4") == sha256(tmp_path / "default.mp4")


@pytest.mark.parametrize(
    "frame_size", [(HEIGHT, WIDTH), (HEIGHT + 16, WIDTH)], ids=["the frames' size", "another size"]
)
def test_memory_mapped_before_the_first_put_gives_the_same_bytes(tmp_path, clip, frame_size):
    """frame_size maps the shared memory at open and faults it in on a thread; a first chunk of another size is
    mapped again for. Either way the same file as the one-shot writer, and no thread is left behind."""
    frames, audio = clip
    media.write_mp4(frames, audio, RATE, FPS, tmp_path / "array.mp4", METADATA)
    threads_before = threading.active_count()
    with media.Mp4Stream(tmp_path / "sized.mp4", FRAMES, FPS, audio, RATE, METADATA, frame_size=frame_size) as stream:
        assert stream._mapped is not None  # mapped before any put
        for chunk in np.split(frames, [17, 33]):
            stream.put(chunk)
        stream.close()
    assert sha256(tmp_path / "sized.mp4") == sha256(tmp_path / "array.mp4")
    with media.Mp4Stream(tmp_path / "aborted.mp4", FRAMES, FPS, audio, RATE, frame_size=frame_size):
        pass  # left at once, while its pages may still be faulting in: aborted
    assert not (tmp_path / "aborted.mp4").exists()
    assert threading.active_count() == threads_before and not encoder_processes()


# -- progress ---------------------------------------------------------------------------------------------------------
def test_progress_comes_on_the_callers_thread_forward_and_bounded(tmp_path, clip):
    frames, audio = clip
    seen = []
    media.write_mp4(frames, audio, RATE, FPS, tmp_path / "out.mp4", on_frames=lambda *a: seen.append(a))
    streamed_seen = []

    def on_frames(done, total):
        assert threading.current_thread() is threading.main_thread()
        streamed_seen.append((done, total))

    streamed(tmp_path / "streamed.mp4", frames, audio, [20, 21], on_frames)
    for reports in (seen, streamed_seen):
        done = [d for d, _ in reports]
        assert all(t == FRAMES for _, t in reports) and reports[-1] == (FRAMES, FRAMES), reports
        assert done == sorted(done) and len(done) <= media.MP4_PROGRESS_STEPS + 2, reports
        assert done[-2] < FRAMES  # the close is said once, after the last frame's report


def test_what_encoded_before_close_is_reported_once_then_the_tail(tmp_path, clip):
    frames, audio = clip
    seen = []
    with media.Mp4Stream(tmp_path / "out.mp4", FRAMES, FPS, audio, RATE, on_frames=lambda *a: seen.append(a)) as stream:
        stream.put(frames[:30])
        while stream.frames_encoded() < 30:  # the decoder is still running here: the encoder works meanwhile
            threading.Event().wait(0.01)
        assert seen == []  # nothing is reported while frames are put (the decode's progress has the bar then)
        stream.put(frames[30:])
        stream.close()
    assert seen[0][0] >= 30 and seen[-1] == (FRAMES, FRAMES), seen
    assert all(done > 30 for done, _ in seen[1:]), seen


# -- failures, abort ---------------------------------------------------------------------------------------------------
def test_an_error_in_the_encoder_comes_out_of_put_or_close_and_leaves_no_file(tmp_path, clip):
    """x264 refuses yuv420p frames of an odd height when it opens, at the first frame: a real failure in the encoder
    process, said by the next put (or by close when everything was put at once)."""
    frames, audio = clip
    odd = np.ascontiguousarray(frames[:, :47])
    out = tmp_path / "out.mp4"
    with pytest.raises(RuntimeError, match=r"mp4 encoder: .*avcodec_open2"):
        with media.Mp4Stream(out, FRAMES, FPS, audio, RATE) as stream:
            stream.put(odd[:10])  # returns at once: the encoder has not opened yet
            while stream._error is None:
                stream.frames_encoded()
                threading.Event().wait(0.01)
            stream.put(odd[10:])  # raises here, the chunk after the failure
    assert not out.exists() and not encoder_processes()
    with pytest.raises(RuntimeError, match=r"mp4 encoder: .*avcodec_open2"):
        media.write_mp4(odd, audio, RATE, FPS, out)  # everything put at once: raises from close
    assert not out.exists() and not encoder_processes()


def test_an_encoder_that_dies_is_said_and_leaves_no_file(tmp_path, clip):
    frames, audio = clip
    out = tmp_path / "out.mp4"
    with pytest.raises(RuntimeError, match="ended without closing the file"):
        with media.Mp4Stream(out, FRAMES, FPS, audio, RATE) as stream:
            stream._process.kill()
            stream.put(frames)
            stream.close()
    assert not out.exists() and not encoder_processes()


def test_a_full_disk_raises_enospc_to_the_caller(tmp_path, clip):
    """/dev/full: every write fails with ENOSPC, in the encoder process (or at the close); the caller gets an OSError
    with its errno, as engine's disk-full handling expects."""
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full here")
    frames, audio = clip
    full = tmp_path / "full.mp4"
    full.symlink_to("/dev/full")
    with pytest.raises(OSError) as failed:
        streamed(full, np.repeat(frames, 4, axis=0), np.tile(audio, 4), [50, 50, 64])
    assert failed.value.errno == errno.ENOSPC
    assert not encoder_processes()


def test_abort_stops_the_encoder_and_removes_the_file(tmp_path, clip):
    frames, audio = clip
    out = tmp_path / "out.mp4"
    many = np.repeat(frames, 10, axis=0)
    with media.Mp4Stream(out, len(many), FPS, audio, RATE) as stream:
        stream.put(many)
        while stream.frames_encoded() < 20:  # the file is created at the first packet muxed
            threading.Event().wait(0.01)
        assert out.exists()
        stream.abort()
        assert stream.frames_encoded() < len(many), "abort waited for the whole queue"
        with pytest.raises(RuntimeError, match="aborted"):
            stream.put(frames[:1])
    assert not out.exists() and not encoder_processes()
    with media.Mp4Stream(out, FRAMES, FPS, audio, RATE) as stream:  # leaving the block without close() aborts too
        stream.put(frames[:9])
    assert not out.exists() and not encoder_processes()


def test_the_frame_count_is_checked(tmp_path, clip):
    frames, audio = clip
    with media.Mp4Stream(tmp_path / "out.mp4", FRAMES, FPS, audio, RATE) as stream:
        with pytest.raises(ValueError, match="opened for 41 frames; 42 were put"):
            stream.put(np.concatenate([frames, frames[:1]]))
        stream.put(frames[:40])
        with pytest.raises(ValueError, match="opened for 41 frames; 40 were put"):
            stream.close()
        with pytest.raises(ValueError, match="uint8"):
            stream.put(frames[:1].astype(np.float32))
        with pytest.raises(ValueError, match="after frames of"):
            stream.put(frames[:1, :, :40])
    assert not (tmp_path / "out.mp4").exists() and not encoder_processes()
