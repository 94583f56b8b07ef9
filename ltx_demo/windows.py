"""Long recordings: how a request longer than one window splits into consecutive windows (torch-free arithmetic).

Windows are planned in latent frames (1 + (frames - 1) / 8 per clip): each window after the first starts with the
last `overlap` latent frames of the one before, which ltx-core's VideoConditionByLatentIndex keeps clean while the
rest is denoised; the stitched latent drops those repeats, so the video has exactly one latent frame per 8 frames.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

FRAMES_PER_LATENT = 8  # the video VAE's temporal compression (ltx-core SpatioTemporalScaleFactors.default().time)


def latent_frames(frames: int) -> int:
    """Latent frames of a clip of `frames` (8k+1) frames."""
    return (frames - 1) // FRAMES_PER_LATENT + 1


def pixel_frames(latents: int) -> int:
    """Frames a latent of `latents` frames decodes to (the first latent frame is one frame, the others eight)."""
    return FRAMES_PER_LATENT * (latents - 1) + 1


@dataclass(frozen=True, slots=True)
class Window:
    index: int  # 0-based
    start_latent: int  # where its first latent frame sits in the stitched latent
    latent_frames: int
    overlap_latent: int  # its first latent frames, continued (clean) from the window before; 0 for the first
    seed: int

    @property
    def frames(self) -> int:
        return pixel_frames(self.latent_frames)

    @property
    def audio_start_frame(self) -> int:
        """The stitched video's frame that the window's own frame 0 stands for, in time: its audio starts there.

        Inside a window latent frame j >= 1 covers frames 8(j-1)+1 .. 8j; in the stitched latent the same frame is
        start_latent + j, covering 8(start_latent + j - 1)+1 ..: the same times shifted by 8 * start_latent frames.
        (The window's frame 0 is a repeat of the window before, denoised by no one, so it needs no audio of its own.)
        """
        return FRAMES_PER_LATENT * self.start_latent

    def describe(self) -> dict:
        """What the provenance records for each window."""
        return {
            "index": self.index,
            "frames": self.frames,
            "latent_frames": self.latent_frames,
            "start_latent": self.start_latent,
            "overlap_frames": FRAMES_PER_LATENT * self.overlap_latent,
            "audio_start_frame": self.audio_start_frame,
            "seed": self.seed,
        }


@dataclass(frozen=True, slots=True)
class WindowPlan:
    windows: tuple[Window, ...]
    num_frames: int  # the video as asked (what is published)
    generated_frames: int  # the stitched latent decoded: the next 8k+1 at or above num_frames (the rest is dropped)

    @property
    def overlap_latent(self) -> int:
        return max((w.overlap_latent for w in self.windows), default=0)

    def describe(self) -> list[dict]:
        return [w.describe() for w in self.windows]


def plan_windows(num_frames: int, window_frames: int, overlap_frames: int, seed: int) -> WindowPlan:
    """The fewest windows of at most `window_frames` that cover `num_frames`, of even lengths (the first windows a
    latent frame longer where they cannot all be equal), window i seeded with seed + i.

    Needs window_frames 8k+1 and overlap_frames a multiple of 8 with window_frames - overlap_frames >= 9 (so every
    window adds at least one latent frame of its own): requests.check_request refuses anything else."""
    total = latent_frames(num_frames) + (1 if (num_frames - 1) % FRAMES_PER_LATENT else 0)
    per_window, overlap = latent_frames(window_frames), overlap_frames // FRAMES_PER_LATENT
    if total <= per_window:
        return WindowPlan((Window(0, 0, total, 0, seed),), num_frames, pixel_frames(total))
    assert per_window - overlap >= 2, (window_frames, overlap_frames)
    count = math.ceil((total - overlap) / (per_window - overlap))
    summed = total + (count - 1) * overlap  # each window's latent frames, the repeats counted twice
    lengths = [summed // count + (1 if i < summed % count else 0) for i in range(count)]
    windows, start = [], 0
    for i, length in enumerate(lengths):
        windows.append(Window(i, start, length, overlap if i else 0, seed + i))
        start += length - overlap
    assert start + overlap == total and all(overlap < n <= per_window for n in lengths), (lengths, total)
    return WindowPlan(tuple(windows), num_frames, pixel_frames(total))
