"""Stage 1's guidance: the guider parameters per flow, and the guidance passes batched into one transformer call (or
split into groups, one call each, run by one process or by one rank each: --parallel guidance)."""

from __future__ import annotations

from dataclasses import replace
from functools import partial

import torch

from ltx_demo.types import Flow, GenerationRequest, InvalidRequest


def _stg_blocks(transformer: torch.nn.Module, wanted: list[int]) -> list[int]:
    """LTX-2.3 perturbs block 28; a smaller (synthetic) transformer has fewer blocks, so use its last one."""
    count = len(transformer.velocity_model.transformer_blocks)
    return [b if b < count else count - 1 for b in wanted]


def stage_1_guidance(request: GenerationRequest, transformer: torch.nn.Module):
    """Stage 1's video guider parameters and denoising function for this request's flow.

    The reference flow passes LTX-2.3's parameters as A2VidPipelineTwoStage is given them (STG on block 28 even where
    a synthetic transformer has fewer blocks: there the perturbed pass equals the positive one) and runs ltx-pipelines'
    own sequential passes; the fast flow moves STG onto an existing block and may batch the passes.
    """
    from ltx_pipelines.utils.constants import LTX_2_3_PARAMS
    from ltx_pipelines.utils.helpers import multi_modal_guider_denoising_func

    params = LTX_2_3_PARAMS.video_guider_params
    reference = request.flow is Flow.REFERENCE
    params = replace(
        params,
        cfg_scale=request.guidance.cfg_scale,
        stg_scale=request.guidance.stg_scale,
        rescale_scale=request.guidance.rescale_scale,
        modality_scale=request.guidance.modality_scale,
        stg_blocks=params.stg_blocks if reference else _stg_blocks(transformer, params.stg_blocks),
    )
    if request.batch_guidance and not reference:
        return params, partial(batched_guider_denoising_func, groups=request.guidance_split)
    return params, multi_modal_guider_denoising_func


def batched_modality(modalities: list) -> object:
    """One Modality holding several along the batch axis (same sigma: one denoising step)."""
    from dataclasses import replace as with_fields

    first = modalities[0]
    return with_fields(
        first,
        latent=torch.cat([m.latent for m in modalities]),
        sigma=torch.cat([m.sigma.reshape(1) for m in modalities]),  # (B,): the prompt AdaLN embeds it per item
        timesteps=torch.cat([m.timesteps for m in modalities]),
        positions=torch.cat([m.positions for m in modalities]),
        context=torch.cat([m.context for m in modalities]),
        attention_mask=None if first.attention_mask is None else torch.cat([m.attention_mask for m in modalities]),
    )


PASS_ORDER = ("positive", "negative", "perturbed", "isolated")  # ltx-pipelines' order; the groups keep it


def split_passes(names: tuple[str, ...], groups: int) -> tuple[tuple[str, ...], ...]:
    """`names` (in PASS_ORDER) cut into `groups` contiguous groups, sizes as equal as possible, the first ones larger:
    4 passes in 2 groups -> (positive, negative), (perturbed, isolated); in 4 -> one each. A group may be empty."""
    base, extra = divmod(len(names), groups)
    cut, start = [], 0
    for index in range(groups):
        size = base + (1 if index < extra else 0)
        cut.append(tuple(names[start : start + size]))
        start += size
    return tuple(cut)


class PassExchange:
    """Who runs which group of guidance passes, and how each group's predictions reach every process.

    One process (no torch.distributed process group): it runs every group, one transformer call each, in order.
    Under a process group (ltx_demo.guidance_parallel starts one, gloo on CPU, NCCL on GPUs) of as many ranks as
    groups: rank r runs group r only, then each group is broadcast from its rank, so every rank holds every pass's
    prediction, bit for bit what its owner computed, and combines them as the one process does."""

    def __init__(self, groups: int) -> None:
        import torch.distributed as dist

        self.groups = groups
        self.rank: int | None = None  # None: this process runs every group
        if dist.is_available() and dist.is_initialized():
            world = dist.get_world_size()
            if world != groups:
                raise InvalidRequest(
                    f"guidance split {groups} under a process group of {world}: each rank runs one group, so the "
                    f"split must equal the number of processes ({world})"
                )
            self.rank = dist.get_rank()

    def runs(self, group: int) -> bool:
        return self.rank is None or self.rank == group

    def share(self, outputs: dict[int, torch.Tensor | None], like: torch.Tensor, sizes: list[int]) -> None:
        """Fill in `outputs` (group -> predictions of its passes, stacked) with every other rank's groups."""
        if self.rank is None:
            return
        import torch.distributed as dist

        for group, size in enumerate(sizes):
            if not size:
                continue
            mine = outputs.get(group)
            if group == self.rank and mine is not None:
                tensor = mine.contiguous()
            else:
                tensor = torch.empty((size, *like.shape[1:]), dtype=like.dtype, device=like.device)
            dist.broadcast(tensor, src=group)
            outputs[group] = tensor


def batched_guider_denoising_func(video_guider, audio_guider, v_context, a_context, transformer, groups: int = 1):
    """ltx-pipelines' multi_modal_guider_denoising_func with its up to four passes (positive, CFG negative,
    STG-perturbed, isolated modality) run as ONE batched transformer call per step instead of one after another, or,
    with `groups` > 1, as that many batched calls of contiguous passes (split_passes), each run by its own rank when
    a process group of `groups` ranks is up (PassExchange), else one after another here.

    ltx-core's perturbations are per batch item (BatchedPerturbationConfig), so each pass keeps its own. At stage 1's
    1248 tokens (768x512x97) one pass leaves a GPU far from full; four in a batch cost little more than one. The
    guiders' arithmetic is ltx-core's own (MultiModalGuider.calculate).
    """
    from ltx_core.guidance.perturbations import (
        BatchedPerturbationConfig,
        Perturbation,
        PerturbationConfig,
        PerturbationType,
    )
    from ltx_pipelines.utils.helpers import modality_from_latent_state

    last: dict[str, torch.Tensor | None] = {"video": None, "audio": None}
    exchange = PassExchange(groups)

    def step(video_state, audio_state, sigmas, step_index):
        skip_video, skip_audio = video_guider.should_skip_step(step_index), audio_guider.should_skip_step(step_index)
        if skip_video and skip_audio:
            return last["video"], last["audio"]
        sigma = sigmas[step_index]
        pos_video = modality_from_latent_state(video_state, v_context, sigma, enabled=not skip_video)
        pos_audio = modality_from_latent_state(audio_state, a_context, sigma, enabled=not skip_audio)
        passes = {"positive": (pos_video, pos_audio, PerturbationConfig.empty())}
        if video_guider.do_unconditional_generation() or audio_guider.do_unconditional_generation():
            negative_video = video_guider.negative_context if video_guider.negative_context is not None else v_context
            negative_audio = audio_guider.negative_context if audio_guider.negative_context is not None else a_context
            passes["negative"] = (
                modality_from_latent_state(video_state, negative_video, sigma, enabled=not skip_video),
                modality_from_latent_state(audio_state, negative_audio, sigma, enabled=not skip_audio),
                PerturbationConfig.empty(),
            )
        if video_guider.do_perturbed_generation() or audio_guider.do_perturbed_generation():
            perturbations = []
            if video_guider.do_perturbed_generation():
                perturbations.append(
                    Perturbation(type=PerturbationType.SKIP_VIDEO_SELF_ATTN, blocks=video_guider.params.stg_blocks)
                )
            if audio_guider.do_perturbed_generation():
                perturbations.append(
                    Perturbation(type=PerturbationType.SKIP_AUDIO_SELF_ATTN, blocks=audio_guider.params.stg_blocks)
                )
            passes["perturbed"] = (pos_video, pos_audio, PerturbationConfig(perturbations=perturbations))
        if video_guider.do_isolated_modality_generation() or audio_guider.do_isolated_modality_generation():
            isolated = [
                Perturbation(type=PerturbationType.SKIP_A2V_CROSS_ATTN, blocks=None),
                Perturbation(type=PerturbationType.SKIP_V2A_CROSS_ATTN, blocks=None),
            ]
            passes["isolated"] = (pos_video, pos_audio, PerturbationConfig(perturbations=isolated))

        cut = split_passes(tuple(passes), groups)
        videos: dict[int, torch.Tensor | None] = {}
        audios: dict[int, torch.Tensor | None] = {}
        for index, group in enumerate(cut):  # this process's groups first, all of them, before any exchange
            if group and exchange.runs(index):
                group_video, group_audio, configs = zip(*(passes[name] for name in group), strict=True)
                videos[index], audios[index] = transformer(
                    video=batched_modality(list(group_video)),
                    audio=batched_modality(list(group_audio)),
                    perturbations=BatchedPerturbationConfig(perturbations=list(configs)),
                )
        sizes = [len(group) for group in cut]
        exchange.share(videos, pos_video.latent, sizes)
        exchange.share(audios, pos_audio.latent, sizes)
        outputs = {
            name: (videos[index][i : i + 1], audios[index][i : i + 1])
            for index, group in enumerate(cut)
            for i, name in enumerate(group)
        }
        none = (0.0, 0.0)
        denoised_video, denoised_audio = outputs["positive"]
        parts = [outputs.get(name, none) for name in ("negative", "perturbed", "isolated")]
        if not skip_video:
            last["video"] = video_guider.calculate(denoised_video, *(p[0] for p in parts))
        if not skip_audio:
            last["audio"] = audio_guider.calculate(denoised_audio, *(p[1] for p in parts))
        return last["video"], last["audio"]

    return step
