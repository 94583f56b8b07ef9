"""The two-stage LTX-2 audio-to-video flow, composed from ltx-core / ltx-pipelines 1.0.0 building blocks.

Why not call A2VidPipelineTwoStage: it builds and frees its own models (no residency), calls
torch.cuda.synchronize() unconditionally (dies on CPU), hard-codes bf16, and has no progress, cancel or per-phase
timing. So this module runs the same steps in the same order, through the same library functions.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Protocol

import torch

from ltx_demo.guidance import stage_1_guidance
from ltx_demo.media import PreparedInputs
from ltx_demo.prompt_cache import PromptCache, TextContexts
from ltx_demo.residency import ModelManager, Stage2Lora
from ltx_demo.telemetry import RunTelemetry
from ltx_demo.types import DecodeTiling, Flow, GenerationCancelled, GenerationRequest, InvalidRequest, Progress

logger = logging.getLogger(__name__)

# The A2V audio latent: 8 channels x 16 mel bins (A2VidPipelineTwoStage hard-codes the same shape).
AUDIO_LATENT_CHANNELS, AUDIO_LATENT_MEL_BINS = 8, 16


def default_negative_prompt() -> str:
    from ltx_pipelines.utils.constants import DEFAULT_NEGATIVE_PROMPT

    return DEFAULT_NEGATIVE_PROMPT


@dataclass(frozen=True, slots=True)
class WindowLatents:
    """One window's video latents on the CPU (for the joins' checks): after stage 1 and after stage 2."""

    stage_1: torch.Tensor
    stage_2: torch.Tensor


@dataclass(frozen=True, slots=True)
class DecodedClip:
    frames: torch.Tensor  # uint8 (frames, height, width, 3) on the CPU
    audio: torch.Tensor  # float32 (2, samples): the ORIGINAL input audio segment, not a VAE round trip
    sample_rate: int
    stage_2_lora: Stage2Lora | None  # how stage 2 applied the distilled LoRA
    audio_note: str | None = None  # how the flow read the audio, where not as media.prepare_audio said
    stage_latents: tuple[torch.Tensor, ...] = ()  # the video latent after stage 1 and after stage 2, on the CPU
    prompt_used: str | None = None  # the enhanced prompt, when the request asked for enhancement
    windows: tuple[WindowLatents, ...] = ()  # a long recording's windows' latents (stage_latents: the stitched one)


@dataclass(frozen=True, slots=True)
class ClipHead:
    """What a clip's mp4 takes before its frames, known once the prompt and the audio are encoded: the prompt that
    ran (the provenance in the container's header says it) and the audio muxed (DecodedClip's)."""

    prompt_used: str | None  # the enhanced prompt, when the request asked for enhancement
    audio: torch.Tensor  # float32 (2, samples): the ORIGINAL input audio segment
    sample_rate: int


class FrameSink(Protocol):
    """Where the decoded video goes while the decoder runs (the engine's mp4, which encodes meanwhile)."""

    def open(self, head: ClipHead) -> None:
        """Called once, as the decode begins (inside its phase), before the first frames."""

    def put(self, frames: torch.Tensor) -> None:
        """The video's next frames as each decoder chunk comes: uint8 (n, h, w, 3) on the CPU, in order, only those
        the video keeps (num_frames in all). Not to be changed: DecodedClip.frames holds them too."""


class StepReporter:
    """Wraps a denoising function: reports step i/n and stops between steps when cancel is set."""

    def __init__(
        self,
        phase: str,
        total: int,
        on_progress: Callable[[Progress], None],
        cancelled: Callable[[], bool],
        on_step_done: Callable[[], None] | None = None,
    ):
        self.phase, self.total, self.on_progress, self.cancelled = phase, total, on_progress, cancelled
        self.on_step_done = on_step_done or (lambda: None)

    def wrap(self, denoise_fn):
        def step(video_state, audio_state, sigmas, step_index):
            if self.cancelled():
                raise GenerationCancelled(f"cancelled at {self.phase} step {step_index}/{self.total}")
            self.on_progress(Progress(self.phase, step_index, self.total))
            out = denoise_fn(video_state, audio_state, sigmas, step_index)
            self.on_step_done()
            self.on_progress(Progress(self.phase, step_index + 1, self.total))
            return out

        return step


@contextlib.contextmanager
def counting_calls(transformer: torch.nn.Module, telemetry: RunTelemetry, name: str) -> Iterator[None]:
    """Count the transformer's forward calls (per-forward time = phase seconds / calls, in the benchmarks)."""
    handle = transformer.register_forward_pre_hook(lambda *_: telemetry.increment(name))
    try:
        yield
    finally:
        handle.remove()


def reference_audio(request: GenerationRequest, device: torch.device) -> tuple[torch.Tensor, int, str]:
    """The audio as A2VidPipelineTwoStage decodes it: ltx-pipelines' PyAV reader at the file's own rate and channels,
    [audio_start, audio_start + clip duration). Returns (float32 (channels, n), rate, note).

    Where the stock pipeline cannot run at all, the fast flow's two fixes, said in the note: mono is duplicated to
    both channels (the audio VAE takes stereo) and a clip shorter than the video is padded with silence (the stock
    pipeline refuses a latent shorter than the video). Nothing is resampled: the audio VAE resamples itself.
    """
    from ltx_pipelines.utils.media_io import decode_audio_from_file

    duration = request.num_frames / request.frame_rate
    window = min(duration, request.audio_max_duration or duration)
    decoded = decode_audio_from_file(request.audio_path, device, request.audio_start, window)
    if decoded is None:
        raise InvalidRequest("ltx-pipelines' audio reader found no audio in the clip's window: try another file")
    waveform, rate, notes = decoded.waveform.squeeze(0).float(), decoded.sampling_rate, []
    if waveform.shape[0] == 1:
        waveform = waveform.expand(2, -1).contiguous()
        notes.append("upmixed mono to stereo")
    elif waveform.shape[0] > 2:
        notes.append(f"kept the first 2 of {waveform.shape[0]} channels")
        waveform = waveform[:2]
    missing = round(duration * rate) - waveform.shape[1]
    if missing > 0:
        waveform = torch.nn.functional.pad(waveform, (0, missing))
        notes.append(f"padded {missing / rate:.2f} s of silence at the end")
    return waveform, rate, "; ".join(notes) or f"decoded as ltx-pipelines does ({rate} Hz)"


def decode_tiling(request: GenerationRequest):
    """The VAE decoder's TilingConfig for `request` (tiling_config)."""
    return tiling_config(
        request.decode_tiling, request.width, request.height, request.decode_tile_pixels, request.decode_tile_frames
    )


def tiling_config(tiling: DecodeTiling, width: int, height: int, tile_pixels: int | None = None,
                  tile_frames: int | None = None):  # fmt: skip
    """ltx-core's TilingConfig.default() with its tile sizes replaceable; FRAME: its spatial tile as large as the
    frame's longer side, or the default's where that is larger (one spatial tile either way: ltx-core scales the
    tile to each axis by the aspect ratio, so its 512 px tiles cut a 768x512 frame into 4 overlapping tiles and a
    1280x768 one into 9), its temporal tiles kept; OFF: None (one pass)."""
    from ltx_core.model.video_vae import TilingConfig
    from ltx_core.model.video_vae.tiling import SpatialTilingConfig, TemporalTilingConfig

    if tiling is DecodeTiling.OFF:
        return None
    default = TilingConfig.default()
    spatial, temporal = default.spatial_config, default.temporal_config
    if tiling is DecodeTiling.FRAME:
        tile_pixels = max(-(-max(width, height) // 32) * 32, spatial.tile_size_in_pixels)
    if tile_pixels is not None:
        spatial = SpatialTilingConfig(tile_pixels, spatial.tile_overlap_in_pixels)
    if tile_frames is not None:
        temporal = TemporalTilingConfig(tile_frames, temporal.tile_overlap_in_frames)
    return TilingConfig(spatial_config=spatial, temporal_config=temporal)


def decode_chunk_count(video_latent: torch.Tensor, decoder, tiling) -> int:
    """How many chunks ltx-core's decode_video yields for this latent: one per temporal tile (its own split of the
    latent's frames), or one without temporal tiling. The decode's progress counts them."""
    from ltx_core.model.video_vae.video_vae import split_temporal_latents

    if tiling is None or tiling.temporal_config is None:
        return 1
    scale, config = decoder.video_downscale_factors.time, tiling.temporal_config
    split = split_temporal_latents(config.tile_size_in_frames // scale, config.tile_overlap_in_frames // scale)
    return len(split(video_latent.shape[2]).starts)


def host_frames(chunk: torch.Tensor) -> torch.Tensor:
    """A chunk of ltx-core's decode_video on the CPU, uint8 (n, h, w, 3). decode_video yields a channels-last view of
    channels-first memory; on a GPU the chunk is made contiguous there (one transpose kernel) before the copy, so the
    mp4's put moves whole rows instead of gathering every byte three planes apart (the put of the view cost 0.215 s
    at 768x512x97 against 0.011 s for contiguous frames on the 2-core CPU). On the CPU the view is kept: making it
    contiguous there costs more (0.29 s) than the put's gather. Either way the frames' values are the same."""
    if chunk.device.type == "cpu":
        return chunk
    return chunk.contiguous().to("cpu")


def run_two_stage(
    request: GenerationRequest,
    inputs: PreparedInputs,
    models: ModelManager,
    telemetry: RunTelemetry,
    on_progress: Callable[[Progress], None],
    cancelled: Callable[[], bool],
    sink: FrameSink | None = None,
    prompt_cache: PromptCache | None = None,
) -> DecodedClip:
    """Steps 3-8 of a request (1-2 are the engine's): prompt, audio, stage 1, upsample, stage 2, decode (into `sink`
    too, chunk by chunk, when given)."""
    flow = TwoStageFlow(request, inputs, models, telemetry, on_progress, cancelled, prompt_cache)
    contexts = flow.encode_prompt()
    audio, sample_rate, audio_note = flow.clip_audio()
    audio_latent = flow.encode_audio(audio, sample_rate)
    stage_1_latent = flow.stage_1(contexts, audio_latent)
    latents = [stage_1_latent.to("cpu", copy=True)]  # for fidelity measurements (small: latent space)
    upscaled, conditionings = flow.upsample(stage_1_latent)
    final_latent, stage_2_lora = flow.stage_2(contexts, audio_latent, upscaled, conditionings)
    latents.append(final_latent.to("cpu", copy=True))
    frames = flow.decode(final_latent, sink, ClipHead(contexts.prompt_used, audio, sample_rate))
    return DecodedClip(frames, audio, sample_rate, stage_2_lora, audio_note, tuple(latents), contexts.prompt_used)


@dataclass(frozen=True, slots=True)
class PromptContexts:
    video: torch.Tensor
    audio: torch.Tensor
    video_negative: torch.Tensor
    prompt_used: str | None  # the enhanced prompt, if enhancement was asked


class TwoStageFlow:
    """One request's run of the flow: each step a method, in the order run_two_stage calls them (the seeded
    generator is drawn from in that order: stage 1's noise, stage 2's noise, the decoder's)."""

    def __init__(
        self,
        request,
        inputs,
        models: ModelManager,
        telemetry: RunTelemetry,
        on_progress,
        cancelled,
        prompt_cache: PromptCache | None = None,
    ):
        from ltx_core.components.diffusion_steps import EulerDiffusionStep
        from ltx_core.components.noisers import GaussianNoiser
        from ltx_pipelines.utils.args import ImageConditioningInput
        from ltx_pipelines.utils.types import PipelineComponents

        self.request, self.inputs, self.models, self.telemetry = request, inputs, models, telemetry
        self.on_progress, self.cancelled = on_progress, cancelled
        self.prompt_cache = prompt_cache  # None: every text encoded (the reference flow, --prompt-cache 0)
        self.device, self.dtype = models.device, models.compute_dtype
        self.generator = torch.Generator(device=self.device).manual_seed(request.seed)
        self.noiser = GaussianNoiser(generator=self.generator)
        self.stepper = EulerDiffusionStep()
        self.components = PipelineComponents(dtype=self.dtype, device=self.device)
        self.image = [ImageConditioningInput(path=str(inputs.image_path), frame_idx=0, strength=1.0)]
        self.on_step_done: Callable[[], None] | None = None  # the windowed flow's clock (ETA)

    # -- helpers ---------------------------------------------------------------------------------------------------
    def _load_scope(self, name: str):
        self.on_progress(Progress(f"load:{name}", message=f"loading {name}"))
        return self.telemetry.phase(f"load:{name}")

    def _use(self, name: str):
        return self.models.use(name, on_build=self._load_scope)

    def _begin(self, phase: str) -> None:
        self.on_progress(Progress(phase))
        if self.cancelled():
            raise GenerationCancelled(f"cancelled before {phase}")

    def _shape(self, scale: int, frames: int | None = None):
        from ltx_core.types import VideoPixelShape

        r = self.request
        return VideoPixelShape(
            batch=1,
            frames=frames or r.num_frames,
            width=r.width // scale,
            height=r.height // scale,
            fps=float(r.frame_rate),
        )

    def _conditionings(self, video_encoder, shape):
        from ltx_pipelines.utils.helpers import combined_image_conditionings

        return combined_image_conditionings(
            images=self.image,
            height=shape.height,
            width=shape.width,
            video_encoder=video_encoder,
            dtype=self.dtype,
            device=self.device,
        )

    def _denoise(self, phase: str, denoise, shape, conditionings, sigmas, transformer, noiser=None, **initial):
        from ltx_pipelines.utils.helpers import denoise_video_only
        from ltx_pipelines.utils.samplers import euler_denoising_loop

        reporter = StepReporter(phase, len(sigmas) - 1, self.on_progress, self.cancelled, self.on_step_done)
        with counting_calls(transformer, self.telemetry, f"{phase}_transformer_calls"):
            return denoise_video_only(
                output_shape=shape,
                conditionings=conditionings,
                noiser=noiser or self.noiser,
                sigmas=sigmas,
                stepper=self.stepper,
                components=self.components,
                dtype=self.dtype,
                device=self.device,
                denoising_loop_fn=partial(euler_denoising_loop, denoise_fn=reporter.wrap(denoise)),
                **initial,
            )

    # -- the steps -------------------------------------------------------------------------------------------------
    def encode_prompt(self) -> PromptContexts:
        """3. Prompt -> video/audio contexts. (helpers.encode_prompts rebuilds both models from a ledger each call
        and calls torch.cuda.synchronize() unconditionally, so the two halves are composed here.) A text in the
        prompt cache skips both models; with both texts there, neither is built."""
        self._begin("prompt_encode")
        negative_prompt = self.request.negative_prompt or default_negative_prompt()
        with self.telemetry.phase("prompt_encode"):
            prompt, enhanced, contexts = self._encoded_texts(self.request.prompt, negative_prompt)
        positive, negative = contexts[prompt], contexts[negative_prompt]
        return PromptContexts(positive.video, positive.audio, negative.video, enhanced)

    def _encoded_texts(self, prompt: str, negative_prompt: str) -> tuple[str, str | None, dict[str, TextContexts]]:
        """(the prompt that runs, the enhanced prompt or None, each text's contexts): from the cache, else Gemma
        then the embeddings processor, each model used only when some text needs it."""
        from ltx_pipelines.utils.helpers import generate_enhanced_prompt

        config = self.models.config
        encoder = (config.text_encoder_quantization.value, config.fp8_processor, str(self.device), str(self.dtype))
        cache = self.prompt_cache
        contexts: dict[str, TextContexts] = {}

        def look_up(texts) -> list[str]:
            """Each text not yet in `contexts` taken from the cache if it is there; the rest, once each."""
            missing = []
            for text in dict.fromkeys(texts):
                kept = None if text in contexts or cache is None else cache.get(text, encoder, self.device)
                if kept is not None:
                    contexts[text] = kept
                    self.telemetry.increment("prompt_texts_from_cache")
                elif text not in contexts:
                    missing.append(text)
            return missing

        enhanced = None
        missing = [] if self.request.enhance_prompt else look_up((prompt, negative_prompt))
        if self.request.enhance_prompt or missing:
            with self._use("text_encoder") as text_encoder:
                if self.request.enhance_prompt:  # as encode_prompts does: the portrait as uploaded, its seed 42
                    prompt = enhanced = generate_enhanced_prompt(text_encoder, prompt, self.request.image_path, seed=42)
                    missing = look_up((prompt, negative_prompt))
                hidden = {text: text_encoder.encode(text) for text in missing}
        if missing:
            with self._use("embeddings_processor") as processor:
                for text, (states, mask) in hidden.items():
                    encoded = processor.process_hidden_states(states, mask)
                    contexts[text] = TextContexts(encoded.video_encoding, encoded.audio_encoding)
                    self.telemetry.increment("prompt_texts_encoded")
                    if cache is not None:
                        cache.put(text, encoder, contexts[text])
        return prompt, enhanced, contexts

    def clip_audio(self) -> tuple[torch.Tensor, int, str | None]:
        """The clip's audio, float32 (2, samples), its rate, and a note where the flow read it itself: the fast
        flow's is media.prepare_audio's (48 kHz); the reference flow's is read as A2VidPipelineTwoStage reads it."""
        if self.request.flow is Flow.REFERENCE:
            return reference_audio(self.request, torch.device("cpu"))
        return torch.from_numpy(self.inputs.audio), self.inputs.sample_rate, None

    def encode_audio(self, audio: torch.Tensor, sample_rate: int) -> torch.Tensor:
        """4. Audio -> latent, cut to the video's duration."""
        self._begin("audio_encode")
        with self.telemetry.phase("audio_encode"):
            with self._use("audio_encoder") as audio_encoder:
                return self._audio_latent(audio_encoder, audio, sample_rate, self.request.num_frames)

    def _audio_latent(self, audio_encoder, audio: torch.Tensor, sample_rate: int, frames: int) -> torch.Tensor:
        """The audio VAE's latent of `audio`, cut to the duration of `frames` video frames."""
        from ltx_core.model.audio_vae import encode_audio as vae_encode_audio
        from ltx_core.types import Audio, AudioLatentShape

        waveform = audio.unsqueeze(0).to(device=self.device, dtype=torch.float32)
        audio_latent = vae_encode_audio(Audio(waveform=waveform, sampling_rate=sample_rate), audio_encoder)
        audio_shape = AudioLatentShape.from_duration(
            batch=1,
            duration=frames / self.request.frame_rate,
            channels=AUDIO_LATENT_CHANNELS,
            mel_bins=AUDIO_LATENT_MEL_BINS,
        )
        return audio_latent[:, :, : audio_shape.frames]

    def stage_1(self, contexts: PromptContexts, audio_latent: torch.Tensor) -> torch.Tensor:
        """5. Half resolution, guided, video only; the audio latent is frozen (denoise mask 0)."""
        self._begin("stage_1")
        with self.telemetry.phase("stage_1"):
            shape = self._shape(scale=2)
            with self._use("video_encoder") as video_encoder:
                conditionings = self._conditionings(video_encoder, shape)
            sigmas = self._stage_1_sigmas()
            with self.models.stage_transformer(1, on_build=self._load_scope) as stage:  # adapter mode: adapter off
                return self._stage_1_denoise(stage.model, contexts, audio_latent, shape, conditionings, sigmas)

    def _stage_1_sigmas(self) -> torch.Tensor:
        from ltx_core.components.schedulers import LTX2Scheduler

        return LTX2Scheduler().execute(steps=self.request.steps).to(dtype=torch.float32, device=self.device)

    def _stage_1_denoise(self, transformer, contexts, audio_latent, shape, conditionings, sigmas, noiser=None):
        from ltx_core.components.guiders import MultiModalGuider, MultiModalGuiderParams

        params, guider_func = stage_1_guidance(self.request, transformer)
        denoise = guider_func(
            video_guider=MultiModalGuider(params=params, negative_context=contexts.video_negative),
            audio_guider=MultiModalGuider(params=MultiModalGuiderParams()),
            v_context=contexts.video,
            a_context=contexts.audio,
            transformer=transformer,
        )
        state = self._denoise(
            "stage_1", denoise, shape, conditionings, sigmas, transformer, noiser, initial_audio_latent=audio_latent
        )
        return state.latent

    def upsample(self, video_latent: torch.Tensor):
        """6. The video latent x2 (normalised with the video encoder's statistics), and stage 2's conditionings."""
        from ltx_core.model.upsampler import upsample_video

        self._begin("upsample")
        with self.telemetry.phase("upsample"):
            with self._use("video_encoder") as video_encoder:
                with self._use("spatial_upsampler") as upsampler:
                    upscaled = upsample_video(latent=video_latent[:1], video_encoder=video_encoder, upsampler=upsampler)
                conditionings = self._conditionings(video_encoder, self._shape(scale=1))
        return upscaled, conditionings

    def stage_2(self, contexts: PromptContexts, audio_latent, upscaled, conditionings):
        """7. Full resolution, distilled LoRA, the distilled sigmas, no guidance."""
        self._begin("stage_2")
        with self.telemetry.phase("stage_2"):
            sigmas = self._stage_2_sigmas()
            with self.models.stage_transformer(2, on_build=self._load_scope) as stage:  # adapter mode: adapter on
                latent = self._stage_2_denoise(
                    stage.model, contexts, audio_latent, upscaled, self._shape(scale=1), conditionings, sigmas
                )
        return latent, stage.lora

    def _stage_2_sigmas(self) -> torch.Tensor:
        from ltx_pipelines.utils.constants import STAGE_2_DISTILLED_SIGMA_VALUES

        return torch.tensor(STAGE_2_DISTILLED_SIGMA_VALUES, dtype=torch.float32, device=self.device)

    def _stage_2_denoise(
        self, transformer, contexts, audio_latent, upscaled, shape, conditionings, sigmas, noiser=None
    ):
        from ltx_pipelines.utils.helpers import simple_denoising_func

        denoise = simple_denoising_func(
            video_context=contexts.video, audio_context=contexts.audio, transformer=transformer
        )
        state = self._denoise(
            "stage_2", denoise, shape, conditionings, sigmas, transformer, noiser,
            noise_scale=sigmas[0], initial_video_latent=upscaled, initial_audio_latent=audio_latent,
        )  # fmt: skip
        return state.latent

    def decode(
        self, video_latent: torch.Tensor, sink: FrameSink | None = None, head: ClipHead | None = None
    ) -> torch.Tensor:
        """8. Decode (tiled unless asked not to) to uint8 frames, consumed here: the decoder yields lazily. The video
        keeps the first num_frames (a long recording's stitched latent decodes to a few more). A sink is opened with
        `head` and gets each chunk's kept frames as it comes, so the mp4 encodes while the decoder runs."""
        from ltx_core.model.video_vae import decode_video as vae_decode_video

        self._begin("decode")
        with self.telemetry.phase("decode"):
            if sink is not None:
                sink.open(head)
            with self._use("video_decoder") as decoder:
                tiling = decode_tiling(self.request)
                total = decode_chunk_count(video_latent, decoder, tiling)
                self.on_progress(Progress("decode", 0, total, unit="chunk"))
                chunks, kept = [], 0
                for chunk in vae_decode_video(video_latent, decoder, tiling, self.generator):
                    frames = host_frames(chunk)[: self.request.num_frames - kept]  # the frames the video keeps
                    chunks.append(frames)
                    kept += len(frames)
                    if sink is not None and len(frames):
                        sink.put(frames)
                    self.on_progress(Progress("decode", len(chunks), max(total, len(chunks)), unit="chunk"))
                    if len(chunks) < total and self.cancelled():
                        raise GenerationCancelled(f"cancelled at decode chunk {len(chunks)}/{total}")
            return torch.cat(chunks, dim=0)
