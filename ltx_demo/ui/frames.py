"""How long the video is, on the form: the frames "Match audio length" asks for (one clip, or the whole audio in
windows of the chosen length), how many windows a length makes, and the notes that say so. No gradio, no torch."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ltx_demo import media
from ltx_demo.requests import check_request, max_frames_at, overlap_leaves_frames, whole_number
from ltx_demo.types import GenerationRequest, InvalidRequest
from ltx_demo.windows import plan_windows

DEFAULT_OVERLAP = GenerationRequest.__dataclass_fields__["window_overlap_frames"].default
DEFAULT_MAX_VIDEO_SECONDS = GenerationRequest.__dataclass_fields__["max_video_seconds"].default
LAST_PACE: dict[str, Any] = {}  # the last finished run's seconds per frame (this process), for the match note


def record_pace(result: Any) -> None:
    """Keep the finished run's seconds per frame (its size and steps too): the match note's rough time."""
    request = result.request
    if request.num_frames > 0 and result.elapsed_seconds > 0:
        LAST_PACE.update(
            seconds_per_frame=result.elapsed_seconds / request.num_frames,
            size=f"{request.width}×{request.height}",
            steps=request.steps,
        )


@dataclass(frozen=True, slots=True)
class WindowChoice:
    """The long-recording controls, typed: the window length (None: the frame cap at the size), the overlap, and
    the longest video a request may ask for."""

    window_frames: int | None = None
    overlap_frames: int = DEFAULT_OVERLAP
    max_video_seconds: float = DEFAULT_MAX_VIDEO_SECONDS

    @classmethod
    def from_form(cls, window_frames: Any, overlap_frames: Any, max_video_seconds: Any) -> WindowChoice:
        """From the controls (the browser sends 97.0; an empty or 0 window length: the cap); a value that is not a
        number raises InvalidRequest naming the field."""
        window = whole_number(window_frames, "window length") if window_frames else None
        overlap = DEFAULT_OVERLAP if overlap_frames is None else whole_number(overlap_frames, "window overlap")
        try:
            seconds = DEFAULT_MAX_VIDEO_SECONDS if max_video_seconds is None else float(max_video_seconds)
        except (TypeError, ValueError):
            raise InvalidRequest(f"max video length {max_video_seconds!r} is not a number of seconds") from None
        return cls(window, overlap, seconds)

    def window_at(self, width: int, height: int) -> int:
        """The most frames one window holds at this size."""
        return self.window_frames or max_frames_at(width, height)

    def count(self, frames: int, width: int, height: int) -> int:
        """How many windows a video of `frames` runs in (1: one clip, or while the fields are not legal: check says
        why, this only counts)."""
        window, overlap = self.window_at(width, height), self.overlap_frames
        legal = (window - 1) % 8 == 0 and overlap_leaves_frames(window, overlap)
        return len(plan_windows(frames, window, overlap, 0).windows) if frames > window and legal else 1

    def check(self, frames: int, frame_rate: int, width: int, height: int) -> None:
        """check_request's own checks of these fields for a video of `frames` at this size (InvalidRequest)."""
        check_request(
            GenerationRequest(
                "",
                "",
                "frames",
                width=width,
                height=height,
                num_frames=frames,
                frame_rate=frame_rate,
                window_frames=self.window_frames,
                window_overlap_frames=self.overlap_frames,
                max_video_seconds=self.max_video_seconds,
            )
        )


def matched_frames(
    audio_path: str,
    audio_start: float,
    frame_rate: int,
    width: int,
    height: int,
    max_video_seconds: float = DEFAULT_MAX_VIDEO_SECONDS,
    window_frames: int | None = None,
) -> tuple[int, float]:
    """'Match audio length': the frames the audio from the offset covers, and that audio's length. Up to one window
    (window_frames, else the frame cap at the size) the largest legal clip (8k+1); longer, the whole audio
    (media.frames_for_audio, as the CLI's --whole-audio), run in windows, cut to max_video_seconds."""
    total = media.audio_duration(audio_path)
    if total <= 0:
        raise InvalidRequest("the audio clip is empty (zero length): upload one with speech")
    remaining = total - float(audio_start or 0)
    if remaining <= 0:
        raise InvalidRequest(f"audio start {audio_start} s is at or past the clip's end: lower the start offset")
    window = window_frames or max_frames_at(width, height)
    frames = media.frames_for_audio(remaining, frame_rate, window)
    most = math.floor(max_video_seconds * frame_rate)
    if frames > window and most < frames:  # cut to the longest video allowed: one clip when that fits in one
        frames = most if most > window else media.frames_for_audio(most / frame_rate, frame_rate, window)
    return frames, remaining


def long_match_note(
    frames: int, covered: float, frame_rate: int, width: int, height: int, choice: WindowChoice = WindowChoice()
) -> str:
    """The match note for audio longer than one window: frames, windows, any cut, and a rough time."""
    window, count = choice.window_at(width, height), choice.count(frames, width, height)
    note = f"{covered:.1f} s of audio → {frames} frames in {count} windows of up to {window} frames"
    if covered * frame_rate > frames + 0.5:
        note += f" · ⚠ cut to the first {frames / frame_rate:.1f} s (at most {choice.max_video_seconds:g} s of video)"
    if LAST_PACE:
        seconds = LAST_PACE["seconds_per_frame"] * frames
        note += (
            f" · roughly {seconds:.0f} s at the last run's pace ({LAST_PACE['seconds_per_frame']:.2f} s per frame "
            f"at {LAST_PACE['size']}, {LAST_PACE['steps']} steps)"
        )
    else:
        note += " · no time estimate yet (one comes after the first run)"
    return note + " · the slider shows one window"


def length_note(frames: int, frame_rate: int, windows: int = 1) -> str:
    """The bold line under the slider: the video the request asks for (the slider shows at most one window)."""
    note = f"**{frames} frames = {frames / int(frame_rate):.2f} s** at {frame_rate} fps"
    return note + (f" · {windows} windows" if windows > 1 else "")
