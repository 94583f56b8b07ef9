"""Quantization choice -> ltx-core QuantizationPolicy, and whether a choice can run on this device."""

from __future__ import annotations

from typing import TYPE_CHECKING, assert_never

from ltx_demo.settings import Quantization

if TYPE_CHECKING:
    import torch
    from ltx_core.quantization import QuantizationPolicy


def policy_for(quantization: Quantization) -> QuantizationPolicy | None:
    """fp8-cast: block linears stored as float8_e4m3fn while the state dict streams in, upcast in each forward."""
    match quantization:
        case Quantization.BF16:
            return None
        case Quantization.FP8_CAST:
            # Import ltx_core.loader first: importing ltx_core.quantization on its own hits a circular import
            # (quantization.fp8_cast -> loader -> loader.fuse_loras -> quantization.fp8_cast).
            import ltx_core.loader  # noqa: F401, PLC0415
            from ltx_core.quantization import QuantizationPolicy  # noqa: PLC0415

            return QuantizationPolicy.fp8_cast()
        case _:
            assert_never(quantization)


def unavailable_reason(quantization: Quantization, device: torch.device) -> str | None:
    """None when the choice runs here; otherwise why not (shown in the UI, raised by the engine)."""
    match quantization:
        case Quantization.BF16 | Quantization.FP8_CAST:
            # fp8-cast stores weights in fp8 and computes in the activation dtype: it runs on any device.
            # Fusing the distilled LoRA into fp8 weights on CUDA uses a Triton kernel (Lightricks/LTX-2 #296).
            if quantization is Quantization.FP8_CAST and device.type == "cuda":
                import torch  # noqa: PLC0415

                if torch.cuda.get_device_capability(device) < (8, 9):
                    return "fp8-cast LoRA fusion needs an Ada/Hopper GPU (sm_89+) for its Triton kernel"
            return None
        case _:
            assert_never(quantization)


def fp8_weight_names(model: torch.nn.Module) -> set[str]:
    """Names of parameters stored as float8_e4m3fn (what the fp8-cast policy downcast)."""
    import torch  # noqa: PLC0415

    return {name for name, p in model.named_parameters() if p.dtype == torch.float8_e4m3fn}
