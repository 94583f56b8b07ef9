"""Demo settings (bundle, output folder, device) and the str Enums whose values are CLI flags and UI labels."""

from __future__ import annotations

import enum
from dataclasses import dataclass
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


@dataclass(frozen=True, slots=True)
class DemoSettings:
    bundle_dir: str | None = None
    checkpoint_path: str | None = None
    distilled_lora_path: str | None = None
    spatial_upsampler_path: str | None = None
    gemma_root: str | None = None
    output_dir: Path = DEFAULT_OUTPUT_DIR
    device: str | None = None  # None: cuda if available, else cpu

    @classmethod
    def from_args(cls, args) -> DemoSettings:
        return cls(
            bundle_dir=args.bundle,
            checkpoint_path=args.checkpoint_path,
            distilled_lora_path=args.distilled_lora_path,
            spatial_upsampler_path=args.spatial_upsampler_path,
            gemma_root=args.gemma_root,
            output_dir=Path(args.output_dir),
            device=args.device,
        )
