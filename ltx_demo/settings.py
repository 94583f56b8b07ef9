"""The str Enums whose values are CLI flags and UI labels, and fixed settings (frame rates, output folder)."""

from __future__ import annotations

import enum
from pathlib import Path


class Quantization(enum.StrEnum):
    BF16 = "bf16"
    FP8_CAST = "fp8-cast"
    FP8_SCALED_MM = "fp8-scaled-mm"  # fp8 weights multiplied in fp8 (torch._scaled_mm); Ada/Hopper GPUs only


class Residency(enum.StrEnum):
    PERSISTENT = "persistent"
    COLD_START = "cold-start"
    HOST_CACHED = "host-cached"
    AUTO = "auto"  # resolved per request to one of the above from --vram-budget-gib (residency.plan_residency)


class LoraMode(enum.StrEnum):
    """How stage 2 gets the distilled LoRA: a runtime low-rank adapter on the one transformer, or a fused copy."""

    ADAPTER = "adapter"
    FUSED = "fused"


class TextEncoderQuantization(enum.StrEnum):
    BF16 = "bf16"
    NF4 = "nf4"  # bitsandbytes 4-bit linears; CUDA only


class ImageFit(enum.StrEnum):
    CROP = "crop"
    PAD = "pad"


FRAME_RATES = (24, 25, 30)
DEFAULT_OUTPUT_DIR = Path("outputs")
