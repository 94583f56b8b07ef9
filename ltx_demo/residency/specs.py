"""The one table of models: their flow order, their ltx-pipelines builder, which are kept as built; the ledger factory.

Every other part of the residency package, the estimator, check-bundle and bench read these facts from here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ltx_demo.quantization import policy_for, stores_fp8
from ltx_demo.types import Flow, LoraMode, Quantization, Residency, TextEncoderQuantization, TextModels

if TYPE_CHECKING:
    import torch

    from ltx_demo.checkpoints import Bundle

ADAPTER = "lora_adapter"  # a build phase and a build count, not a model of its own: it lives on the transformer


@dataclass(frozen=True, slots=True)
class ModelConfig:
    """What the held models were built for; a request with another config releases them first."""

    quantization: Quantization
    residency: Residency  # concrete: auto is resolved before (estimate.plan_residency)
    distilled_lora_strength: float
    lora_mode: LoraMode = LoraMode.ADAPTER
    text_encoder_quantization: TextEncoderQuantization = TextEncoderQuantization.BF16
    flow: Flow = Flow.FAST  # reference: every model as ModelLedger builds it (whole Gemma, processor unquantized)
    whole_gemma: bool = False  # keep the vision tower and lm_head: the reference flow, and prompt enhancement
    text_models: TextModels = TextModels.ON_DEVICE  # persistent: where Gemma and the processor wait between prompts

    @property
    def drops_gemma_parts(self) -> bool:
        return not self.whole_gemma and self.flow is Flow.FAST

    @property
    def fp8_processor(self) -> bool:
        """The fast flow stores the embeddings processor's linears in fp8 beside an fp8 transformer; ltx-pipelines
        (the reference flow) builds it in the compute dtype whatever the transformer's quantization."""
        return stores_fp8(self.quantization) and self.flow is Flow.FAST


def _stores_fp8(config: ModelConfig) -> bool:
    return stores_fp8(config.quantization)


def _fp8_processor(config: ModelConfig) -> bool:
    return config.fp8_processor


def _nf4(config: ModelConfig) -> bool:
    return config.text_encoder_quantization is TextEncoderQuantization.NF4


def _never(_config: ModelConfig) -> bool:
    return False


@dataclass(frozen=True, slots=True)
class ModelSpec:
    name: str
    builder: str  # the ModelLedger attribute that builds it (also its headers and meta model)
    # Per-request modes keep it as built when its build reads and casts more than it holds: fp8 transformer and
    # processor (bf16 files), nf4 text encoder (the bf16 Gemma). host-cached in pinned memory, cold-start in files.
    kept_as_built: Callable[[ModelConfig], bool] = _never
    gemma_part: bool = False  # built at the bundle's Gemma size (checkpoints.gemma_architecture)
    fused_copy: bool = False  # stage 2's LoRA-fused second transformer: built in fused LoRA mode only

    @property
    def is_transformer(self) -> bool:
        return self.builder == "transformer_builder"


MODEL_SPECS = (  # flow order
    ModelSpec("text_encoder", "text_encoder_builder", kept_as_built=_nf4, gemma_part=True),
    ModelSpec("embeddings_processor", "embeddings_processor_builder", kept_as_built=_fp8_processor, gemma_part=True),
    ModelSpec("audio_encoder", "audio_encoder_builder"),
    ModelSpec("video_encoder", "vae_encoder_builder"),
    ModelSpec("transformer", "transformer_builder", kept_as_built=_stores_fp8),  # both stages in adapter mode
    ModelSpec("spatial_upsampler", "upsampler_builder"),
    ModelSpec("transformer_stage_2", "transformer_builder", fused_copy=True),  # fused mode: what ltx-pipelines does
    ModelSpec("video_decoder", "vae_decoder_builder"),
)
SPECS = {spec.name: spec for spec in MODEL_SPECS}
MODEL_NAMES = tuple(SPECS)


def spec(name: str) -> ModelSpec:
    if name not in SPECS:
        raise KeyError(f"unknown model {name!r}: one of {', '.join(MODEL_NAMES)}")
    return SPECS[name]


def flow_models(lora_mode: LoraMode) -> tuple[ModelSpec, ...]:
    """The models one request uses, in flow order."""
    return tuple(s for s in MODEL_SPECS if not s.fused_copy or lora_mode is LoraMode.FUSED)


def make_ledger(
    bundle: Bundle, dtype: torch.dtype, device: torch.device, quantization: Quantization | None = None, registry=None
):
    """ltx-pipelines' ModelLedger over the bundle's files (every model build and header read goes through one)."""
    from ltx_pipelines.utils.model_ledger import ModelLedger

    return ModelLedger(
        dtype=dtype,
        device=device,
        checkpoint_path=str(bundle.checkpoint),
        gemma_root_path=str(bundle.gemma_root),
        spatial_upsampler_path=str(bundle.spatial_upsampler),
        registry=registry,
        quantization=policy_for(quantization) if quantization is not None else None,
    )


def stage_ledgers(bundle: Bundle, config: ModelConfig, device: torch.device, dtype: torch.dtype, registry=None):
    """The ledger for stage 1 (and every other model) and its LoRA-fused variant for stage 2's fused copy."""
    from ltx_core.loader import LTXV_LORA_COMFY_RENAMING_MAP, LoraPathStrengthAndSDOps

    stage_1 = make_ledger(bundle, dtype, device, config.quantization, registry)
    distilled = LoraPathStrengthAndSDOps(
        str(bundle.distilled_lora), config.distilled_lora_strength, LTXV_LORA_COMFY_RENAMING_MAP
    )
    return stage_1, stage_1.with_additional_loras((distilled,))
