"""Long recordings: consecutive windows of the two-stage flow in one request, each later window continuing from the
last latent frames of the one before (ltx-core's latent conditioning), stitched in latent space, decoded once."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import torch

from ltx_demo.media import PreparedInputs
from ltx_demo.pipeline import ClipHead, DecodedClip, FrameSink, PromptContexts, TwoStageFlow, WindowLatents
from ltx_demo.prompt_cache import PromptCache
from ltx_demo.residency import ModelManager
from ltx_demo.telemetry import RunTelemetry
from ltx_demo.types import GenerationRequest, Progress
from ltx_demo.windows import Window, WindowPlan, latent_frames

WINDOW_PHASES = ("audio_encode", "stage_1", "upsample", "stage_2")  # the steps run once per window


class WindowClock:
    """Window i/n and an ETA for the whole request on every progress message: the denoising steps left times the
    mean time of the steps done so far (the decode after the last window is not in it)."""

    def __init__(self, plan: WindowPlan, steps_per_window: int, on_progress: Callable[[Progress], None]):
        self.count, self.forward = len(plan.windows), on_progress
        self.total_steps = steps_per_window * self.count
        self.window, self.done, self.first_step_at = 0, 0, None

    def step_done(self) -> None:
        self.done += 1

    def eta_seconds(self) -> float | None:
        if not self.done:
            return None
        return (time.monotonic() - self.first_step_at) / self.done * (self.total_steps - self.done)

    def __call__(self, progress: Progress) -> None:
        if progress.step is None and progress.phase in WINDOW_PHASES:  # a step begins: over every window, from 1
            self.window = 0
        if self.first_step_at is None and progress.step is not None:  # the first denoising step starts now
            self.first_step_at = time.monotonic()
        eta = self.eta_seconds()
        window = self.window + 1 if progress.phase in WINDOW_PHASES else None
        where = f"window {window}/{self.count}" if window else f"{self.count} windows"
        message = where + (f" · about {eta:.0f} s left" if eta is not None else "")
        if progress.message:
            message = f"{progress.message} · {message}"
        self.forward(dataclasses.replace(progress, message=message, window=window, windows=self.count, eta_seconds=eta))


def run_windows(
    request: GenerationRequest,
    inputs: PreparedInputs,
    models: ModelManager,
    telemetry: RunTelemetry,
    on_progress: Callable[[Progress], None],
    cancelled: Callable[[], bool],
    plan: WindowPlan,
    sink: FrameSink | None = None,
    prompt_cache: PromptCache | None = None,
) -> DecodedClip:
    """A video longer than one window: the same steps, each over every window before the next step (so each model is
    used in one block and per-request residency modes build it once per request, with one window's peak), window i
    after the first continuing from the last latent frames of window i-1 (see WindowedFlow). The windows' stage-2
    latents are stitched with the repeated frames dropped and decoded once (into `sink` too, chunk by chunk, when
    given); the frames past num_frames go; the audio muxed is the one prepared track, not a concatenation of the
    windows' cuts."""
    flow = WindowedFlow(request, inputs, models, telemetry, on_progress, cancelled, plan, prompt_cache)
    contexts = flow.encode_prompt()  # every window uses the request's prompt: encoded once
    audio_latents = flow.encode_audio_windows()
    stage_1 = flow.stage_1_windows(contexts, audio_latents)
    upscaled, conditionings = flow.upsample_windows(stage_1)
    stage_2, stage_2_lora = flow.stage_2_windows(contexts, audio_latents, upscaled, conditionings)
    stitched = flow.stitch(stage_2)
    audio = torch.from_numpy(inputs.audio)
    frames = flow.decode(stitched, sink, ClipHead(contexts.prompt_used, audio, inputs.sample_rate))  # num_frames
    latents = tuple(
        WindowLatents(a.to("cpu", copy=True), b.to("cpu", copy=True)) for a, b in zip(stage_1, stage_2, strict=True)
    )
    return DecodedClip(
        frames,
        audio,
        inputs.sample_rate,
        stage_2_lora,
        None,
        (stitched.to("cpu", copy=True),),
        contexts.prompt_used,
        latents,
    )


class WindowedFlow(TwoStageFlow):
    """The two-stage flow over consecutive windows. Window 0 starts from the portrait (its image conditioning, as in
    one clip); window i >= 1 starts from the last `overlap` latent frames of window i-1 at latent index 0 through
    ltx-core's VideoConditionByLatentIndex at strength 1.0 (what ltx-pipelines' helpers use for a frame-0 image): the
    same clean tokens, denoise mask 0, so those frames come out identical to window i-1's. Stage 1 continues from
    window i-1's stage-1 latent, stage 2 from its stage-2 latent. Window i draws its noise from its own generator
    seeded with its plan's seed (seed + i); window 0's is the request's seed, and the decoder draws from it after,
    as in one clip."""

    def __init__(self, request, inputs, models, telemetry, on_progress, cancelled, plan: WindowPlan, prompt_cache=None):
        from ltx_core.components.noisers import GaussianNoiser

        self.clock = WindowClock(plan, request.steps + len(self._distilled_sigma_values()) - 1, on_progress)
        super().__init__(request, inputs, models, telemetry, self.clock, cancelled, prompt_cache)
        self.plan, self.on_step_done = plan, self.clock.step_done
        self.noisers = [self.noiser] + [
            GaussianNoiser(generator=torch.Generator(device=self.device).manual_seed(w.seed)) for w in plan.windows[1:]
        ]

    @staticmethod
    def _distilled_sigma_values():
        from ltx_pipelines.utils.constants import STAGE_2_DISTILLED_SIGMA_VALUES

        return STAGE_2_DISTILLED_SIGMA_VALUES

    def _continued(self, previous: torch.Tensor, window: Window) -> list:
        """Window `window` starts with the last latent frames of the window before, kept clean."""
        from ltx_core.conditioning import VideoConditionByLatentIndex

        tail = previous[:, :, -window.overlap_latent :]
        return [VideoConditionByLatentIndex(latent=tail, strength=1.0, latent_idx=0)]

    def encode_audio_windows(self) -> list[torch.Tensor]:
        """4. Each window's audio latent, from its cut of the one prepared track (silence past the track's end: at
        most 7 frames of the last window, dropped from the video)."""
        track, rate, fps = torch.from_numpy(self.inputs.audio), self.inputs.sample_rate, self.request.frame_rate
        self._begin("audio_encode")
        latents = []
        with self.telemetry.phase("audio_encode"):
            with self._use("audio_encoder") as audio_encoder:
                for window in self.plan.windows:
                    self.clock.window = window.index
                    start = window.audio_start_frame * rate // fps
                    cut = track[:, start : start + window.frames * rate // fps]
                    cut = torch.nn.functional.pad(cut, (0, window.frames * rate // fps - cut.shape[1]))
                    latents.append(self._audio_latent(audio_encoder, cut, rate, window.frames))
        return latents

    def stage_1_windows(self, contexts: PromptContexts, audio_latents: list[torch.Tensor]) -> list[torch.Tensor]:
        """5. Every window's stage 1, one stage transformer block for all."""
        self._begin("stage_1")
        latents: list[torch.Tensor] = []
        with self.telemetry.phase("stage_1"):
            first = self._shape(scale=2, frames=self.plan.windows[0].frames)
            with self._use("video_encoder") as video_encoder:
                portrait = self._conditionings(video_encoder, first)
            sigmas = self._stage_1_sigmas()
            with self.models.stage_transformer(1, on_build=self._load_scope) as stage:
                for window in self.plan.windows:
                    self.clock.window = window.index
                    shape = self._shape(scale=2, frames=window.frames)
                    conditionings = self._continued(latents[-1], window) if window.index else portrait
                    latents.append(
                        self._stage_1_denoise(
                            stage.model, contexts, audio_latents[window.index], shape, conditionings, sigmas,
                            self.noisers[window.index],
                        )
                    )  # fmt: skip
        return latents

    def upsample_windows(self, stage_1: list[torch.Tensor]):
        """6. Every window's latent x2; stage 2's portrait conditioning for window 0."""
        from ltx_core.model.upsampler import upsample_video

        self._begin("upsample")
        with self.telemetry.phase("upsample"):
            with self._use("video_encoder") as video_encoder:
                with self._use("spatial_upsampler") as upsampler:
                    upscaled = []
                    for window, latent in zip(self.plan.windows, stage_1, strict=True):
                        self.clock.window = window.index
                        upscaled.append(
                            upsample_video(latent=latent[:1], video_encoder=video_encoder, upsampler=upsampler)
                        )
                first = self._shape(scale=1, frames=self.plan.windows[0].frames)
                portrait = self._conditionings(video_encoder, first)
        return upscaled, portrait

    def stage_2_windows(self, contexts, audio_latents, upscaled, portrait):
        """7. Every window's stage 2, one stage transformer block for all."""
        self._begin("stage_2")
        latents: list[torch.Tensor] = []
        with self.telemetry.phase("stage_2"):
            sigmas = self._stage_2_sigmas()
            with self.models.stage_transformer(2, on_build=self._load_scope) as stage:
                for window in self.plan.windows:
                    self.clock.window = window.index
                    shape = self._shape(scale=1, frames=window.frames)
                    conditionings = self._continued(latents[-1], window) if window.index else portrait
                    latents.append(
                        self._stage_2_denoise(
                            stage.model, contexts, audio_latents[window.index], upscaled[window.index], shape,
                            conditionings, sigmas, self.noisers[window.index],
                        )
                    )  # fmt: skip
        return latents, stage.lora

    def stitch(self, latents: list[torch.Tensor]) -> torch.Tensor:
        """The whole video's latent: window 0, then each later window without the frames it continued from."""
        parts = [
            latent[:, :, window.overlap_latent :] for window, latent in zip(self.plan.windows, latents, strict=True)
        ]
        stitched = torch.cat(parts, dim=2)
        assert stitched.shape[2] == latent_frames(self.plan.generated_frames), stitched.shape
        return stitched
