"""The fidelity command's switches: each turns ONE fast-flow change on inside the reference flow, for one row, by
patching the flow's own function (one run at a time: a command, never the app's engine)."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import torch

from ltx_demo import media, requests
from ltx_demo import pipeline as flow_module
from ltx_demo.attention import use_attention_
from ltx_demo.engine import Engine
from ltx_demo.quantization import stores_fp8
from ltx_demo.residency import ModelConfig, ModelManager
from ltx_demo.residency.builds import ModelBuilder
from ltx_demo.residency.modes import PerRequest
from ltx_demo.residency.specs import spec
from ltx_demo.types import AttentionBackend, DecodeTiling, Flow, GenerationRequest, LoraMode, TextEncoderQuantization

if TYPE_CHECKING:
    from ltx_demo.fidelity import Setup


# -- the switches: one fast-flow change inside the reference flow -------------------------------------------------
@contextlib.contextmanager
def patched(owner, name: str, value) -> Iterator[None]:
    saved = getattr(owner, name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, saved)


def _config_with(**fields) -> contextlib.AbstractContextManager:
    """The reference's ModelConfig with some fields as the fast flow sets them (LoRA mode, Gemma quantization)."""
    model_config = Engine._model_config

    def changed(self, request):
        config, reason = model_config(self, request)
        return dataclasses.replace(config, **fields), reason

    return patched(Engine, "_model_config", changed)


def _guidance_with(change: Callable) -> contextlib.AbstractContextManager:
    guidance = flow_module.stage_1_guidance

    def changed(request, transformer):
        return change(transformer, *guidance(request, transformer))

    return patched(flow_module, "stage_1_guidance", changed)


def batched_guidance(_setup: Setup, _notes: list[str]) -> contextlib.AbstractContextManager:
    from ltx_demo.guidance import batched_guider_denoising_func

    return _guidance_with(lambda _t, params, _func: (params, batched_guider_denoising_func))


def stg_on_existing_block(_setup: Setup, notes: list[str]) -> contextlib.AbstractContextManager:
    """STG on the transformer's last block where LTX-2.3's block 28 does not exist (a synthetic transformer)."""
    from ltx_demo.guidance import _stg_blocks

    def move(transformer, params, func):
        blocks = _stg_blocks(transformer, params.stg_blocks)
        note = f"STG blocks {params.stg_blocks} -> {blocks}" if blocks != params.stg_blocks else (
            f"block {params.stg_blocks} exists in this transformer: the fast flow perturbs the same block"
        )  # fmt: skip
        if note not in notes:
            notes.append(note)
        return dataclasses.replace(params, stg_blocks=blocks), func

    return _guidance_with(move)


def gemma_dropped_parts(_setup: Setup, _notes: list[str]) -> contextlib.AbstractContextManager:
    from ltx_demo.text_path import drop_unused_gemma_parts_

    build = ModelBuilder._text_encoder

    def dropping(self, ledger):
        text_encoder = build(self, ledger)
        drop_unused_gemma_parts_(text_encoder)
        return text_encoder

    return patched(ModelBuilder, "_text_encoder", dropping)


def nf4_gemma(_setup: Setup, _notes: list[str]) -> contextlib.AbstractContextManager:
    return _config_with(text_encoder_quantization=TextEncoderQuantization.NF4)


def fp8_processor(_setup: Setup, _notes: list[str]) -> contextlib.AbstractContextManager:
    return patched(ModelConfig, "fp8_processor", property(lambda self: stores_fp8(self.quantization)))


def prompt_cache(_setup: Setup, _notes: list[str]) -> contextlib.AbstractContextManager:
    """The reference flow reads and fills the prompt cache: its warm run encodes the texts, the timed runs read them."""
    return patched(Engine, "_prompt_cache_for", lambda engine, _request: engine.prompt_cache)


def lora_adapter(_setup: Setup, _notes: list[str]) -> contextlib.AbstractContextManager:
    return _config_with(lora_mode=LoraMode.ADAPTER)


@contextlib.contextmanager
def lora_fused_in_place(setup: Setup, notes: list[str]) -> Iterator[None]:
    """What cold-start and host-cached do on CUDA: the LoRA fused into the one transformer after stage 1. On CUDA the
    mode decides (sm_89+ for fp8 weights); elsewhere it is forced, the way the CUDA default runs it."""
    with contextlib.ExitStack() as stack:
        stack.enter_context(lora_adapter(setup, notes))
        if setup.device.type != "cuda":
            notes.append("forced on this CPU (the modes fuse in place on CUDA only)")
            stack.enter_context(patched(PerRequest, "fuses_in_place", lambda self: True))
        yield


@contextlib.contextmanager
def fp8_scaled_mm(_setup: Setup, notes: list[str], fast_accumulation: bool = False) -> Iterator[None]:
    """fp8-cast's fp8 weights multiplied in fp8 (torch._scaled_mm, partial sums in float32) instead of upcast per
    forward; the reference flow refuses the project's kernel, so its check is lifted for this row."""
    from ltx_demo import fp8_matmul

    notes.append("--quantization fp8-scaled-mm, the reference's refusal of it lifted for this row")
    with patched(requests, "_check_reference", lambda _request: None):
        with patched(fp8_matmul, "FAST_ACCUMULATION", fast_accumulation):
            yield


def fp8_fast_accumulation(setup: Setup, notes: list[str]) -> contextlib.AbstractContextManager:
    """fp8-scaled-mm with the tensor cores' fast accumulation (fp8_matmul.FAST_ACCUMULATION, the default there)."""
    notes.append("fast accumulation on")
    return fp8_scaled_mm(setup, notes, fast_accumulation=True)


@contextlib.contextmanager
def cuda_graphs(_setup: Setup, _notes: list[str]) -> Iterator[None]:
    """The transformer blocks replayed as CUDA graphs (the engine's cuda_graphs, which only the fast flow applies)."""
    from ltx_demo.cuda_graphs import GraphedBlocks

    build = ModelBuilder.build

    def graphed(self, name, label, obtain, past_registry=False):
        model = build(self, name, label, obtain, past_registry)
        if spec(name).is_transformer and self._graph_key is not None and self.config.flow is Flow.REFERENCE:
            GraphedBlocks(model.velocity_model, extra_key=self._graph_key)
        return model

    with patched(ModelBuilder, "build", graphed), patched(ModelManager, "graphs_for", _graphs_on_cuda):
        yield


@contextlib.contextmanager
def compiled_blocks(_setup: Setup, notes: list[str]) -> Iterator[None]:
    """The transformer blocks torch.compile'd (the engine's --compile-blocks, which only the fast flow applies)."""
    from ltx_demo.compiled_blocks import CompiledBlocks

    build = ModelBuilder.build

    def compiled(self, name, label, obtain, past_registry=False):
        model = build(self, name, label, obtain, past_registry)
        if spec(name).is_transformer and self.config.flow is Flow.REFERENCE:
            CompiledBlocks(model.velocity_model, on_failure=lambda reason: notes.append(f"compile failed: {reason}"))
        return model

    with patched(ModelBuilder, "build", compiled):
        yield


def _graphs_on_cuda(manager: ModelManager, _config) -> bool:
    return manager.device.type == "cuda"


def attention_kernel(backend: AttentionBackend) -> Callable[[Setup, list[str]], contextlib.AbstractContextManager]:
    """A switch: the reference's transformer attention on `backend` (what --attention sets in the fast flow)."""

    def switch(_setup: Setup, notes: list[str]) -> contextlib.AbstractContextManager:
        build = ModelBuilder.build

        def with_attention(self, name, label, obtain, past_registry=False):
            model = build(self, name, label, obtain, past_registry)
            if spec(name).is_transformer and self.config.flow is Flow.REFERENCE:
                notes.append(f"{use_attention_(model, backend)} attention modules on {backend}")
            return model

        return patched(ModelBuilder, "build", with_attention)

    return switch


def frame_wide_tiles(_setup: Setup, _notes: list[str]) -> contextlib.AbstractContextManager:
    """The decoder's spatial tile as large as the frame (--decode-tiling frame), its temporal tiles kept."""
    decode_tiling = flow_module.decode_tiling
    return patched(
        flow_module,
        "decode_tiling",
        lambda request: decode_tiling(dataclasses.replace(request, decode_tiling=DecodeTiling.FRAME)),
    )


def soundfile_audio(_setup: Setup, _notes: list[str]) -> contextlib.AbstractContextManager:
    """media.prepare_audio's segment (soundfile, resampled to 48 kHz) instead of ltx-pipelines' PyAV reader."""

    def read(request: GenerationRequest, _device):
        audio, note = media.prepare_audio(
            request.audio_path, request.audio_start, request.num_frames / request.frame_rate
        )
        return torch.from_numpy(audio), media.OUTPUT_SAMPLE_RATE, note

    return patched(flow_module, "reference_audio", read)


def lanczos_portrait(_setup: Setup, _notes: list[str]) -> contextlib.AbstractContextManager:
    """The portrait fitted to W x H with LANCZOS first (the stock's bilinear crop/resize then only halves it)."""
    prepare = media.prepare_image

    def prepare_fitted(path, width, height, fit, out_path):
        return prepare(path, width, height, media.ImageFit.CROP if fit is None else fit, out_path)

    return patched(media, "prepare_image", prepare_fitted)
