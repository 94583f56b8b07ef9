"""ltx-pipelines' own A2VidPipelineTwoStage, run as its CLI runs it (on the CPU too), with its stage latents and
decoded frames captured: the ground truth the reference flow is checked against (tests/test_fidelity.py).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from ltx_demo.checkpoints import Bundle, gemma_architecture
from ltx_demo.types import Quantization


@dataclass(frozen=True, slots=True)
class StockRun:
    frames: torch.Tensor  # uint8 (frames, height, width, 3) on the CPU
    stage_latents: tuple[torch.Tensor, ...]  # the video latent after stage 1 and after stage 2 (on the CPU)
    audio: torch.Tensor  # what it returns as the clip's audio: float32 (channels, samples)
    sample_rate: int


@contextlib.contextmanager
def _captured_stage_latents(device: torch.device) -> Iterator[list[torch.Tensor]]:
    """Record what each denoise_video_only call returns (stage 1, then stage 2); on the CPU, make the pipeline's
    unconditional torch.cuda.synchronize() a no-op. Patches module attributes: one run at a time."""
    import ltx_pipelines.a2vid_two_stage as a2vid

    latents: list[torch.Tensor] = []
    denoise, synchronize = a2vid.denoise_video_only, torch.cuda.synchronize

    def recording(*args, **kwargs):
        state = denoise(*args, **kwargs)
        latents.append(state.latent.to("cpu", copy=True))
        return state

    a2vid.denoise_video_only = recording
    if device.type != "cuda":
        torch.cuda.synchronize = lambda *_args, **_kwargs: None
    try:
        yield latents
    finally:
        a2vid.denoise_video_only, torch.cuda.synchronize = denoise, synchronize


def run_stock_a2v(
    bundle: Bundle,
    *,
    image: str | Path,
    audio: str | Path,
    prompt: str,
    width: int,
    height: int,
    num_frames: int,
    steps: int,
    seed: int,
    frame_rate: int = 24,
    quantization: Quantization = Quantization.BF16,
    negative_prompt: str | None = None,
    audio_start: float = 0.0,
    distilled_lora_strength: float = 1.0,
    tiled_decode: bool = True,
    device: torch.device | None = None,
) -> StockRun:
    """One A2VidPipelineTwoStage call as ltx-pipelines' a2vid CLI makes it: the distilled LoRA with
    LTXV_LORA_COMFY_RENAMING_MAP, LTX_2_3_PARAMS' video guider, DEFAULT_NEGATIVE_PROMPT unless given, the default
    tiling (tiled_decode False: __call__'s own default, no tiling), the audio's max duration the video's; the bundle's
    Gemma size patched in while it builds (synthetic)."""
    from ltx_core.loader import LTXV_LORA_COMFY_RENAMING_MAP, LoraPathStrengthAndSDOps
    from ltx_core.model.video_vae import TilingConfig
    from ltx_pipelines.a2vid_two_stage import A2VidPipelineTwoStage
    from ltx_pipelines.utils.args import ImageConditioningInput
    from ltx_pipelines.utils.constants import DEFAULT_NEGATIVE_PROMPT, LTX_2_3_PARAMS

    from ltx_demo.quantization import policy_for

    if quantization is Quantization.FP8_SCALED_MM:
        raise ValueError("fp8-scaled-mm is the project's own kernel, not a policy A2VidPipelineTwoStage is run with")
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    lora = LoraPathStrengthAndSDOps(str(bundle.distilled_lora), distilled_lora_strength, LTXV_LORA_COMFY_RENAMING_MAP)
    with _captured_stage_latents(device) as latents, gemma_architecture(bundle), torch.inference_mode():
        pipeline = A2VidPipelineTwoStage(
            checkpoint_path=str(bundle.checkpoint),
            distilled_lora=[lora],
            spatial_upsampler_path=str(bundle.spatial_upsampler),
            gemma_root=str(bundle.gemma_root),
            loras=[],
            device=device,
            quantization=policy_for(quantization),
        )
        video, clip_audio = pipeline(
            prompt=prompt,
            negative_prompt=DEFAULT_NEGATIVE_PROMPT if negative_prompt is None else negative_prompt,
            seed=seed,
            height=height,
            width=width,
            num_frames=num_frames,
            frame_rate=float(frame_rate),
            num_inference_steps=steps,
            video_guider_params=LTX_2_3_PARAMS.video_guider_params,
            images=[ImageConditioningInput(str(image), 0, 1.0)],
            audio_path=str(audio),
            audio_start_time=audio_start,
            audio_max_duration=num_frames / frame_rate,
            tiling_config=TilingConfig.default() if tiled_decode else None,
        )
        frames = torch.cat([chunk.to("cpu") for chunk in video])  # the decoder yields lazily, in inference mode
    return StockRun(frames, tuple(latents), clip_audio.waveform.to("cpu"), clip_audio.sampling_rate)
