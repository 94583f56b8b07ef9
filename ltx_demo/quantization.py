"""Quantization choices -> what ltx-core / bitsandbytes need, and whether a choice can run on this device.

The transformer: Quantization -> ltx-core QuantizationPolicy. The Gemma text encoder: bf16, or nf4 through
bitsandbytes Linear4bit swapped in after ltx-core's own builder has loaded it (ltx-core 1.0.0 has no 4-bit option).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, assert_never

from ltx_demo.types import Flow, LoraMode, Quantization, TextEncoderQuantization

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
            import ltx_core.loader
            from ltx_core.quantization import QuantizationPolicy

            return QuantizationPolicy.fp8_cast()
        case Quantization.FP8_SCALED_MM:
            import ltx_core.loader  # noqa: F401  (see above)
            from ltx_core.quantization import TRANSFORMER_LINEAR_DOWNCAST_MAP, QuantizationPolicy

            from ltx_demo.fp8_matmul import fp8_scaled_mm_module_ops

            # The same downcast as fp8-cast while the state dict streams in; only the forward differs.
            return QuantizationPolicy(sd_ops=TRANSFORMER_LINEAR_DOWNCAST_MAP, module_ops=(fp8_scaled_mm_module_ops(),))
        case _:
            assert_never(quantization)


def stores_fp8(quantization: Quantization) -> bool:
    """Transformer block weights (and with them the LoRA adapter) are kept in float8_e4m3fn."""
    return quantization in (Quantization.FP8_CAST, Quantization.FP8_SCALED_MM)


def unavailable_reason(
    quantization: Quantization, device: torch.device, lora_mode: LoraMode = LoraMode.ADAPTER
) -> str | None:
    """None when the choice runs here; otherwise why not (shown in the UI, raised by the engine)."""
    match quantization:
        case Quantization.FP8_SCALED_MM:
            import torch

            if device.type != "cuda":
                return f"fp8-scaled-mm multiplies in fp8 on GPU tensor cores; this engine runs on {device.type}"
            if torch.cuda.get_device_capability(device) < (8, 9):
                return "fp8-scaled-mm needs fp8 tensor cores (Ada or Hopper, sm_89+)"
            try:
                import triton  # noqa: F401
            except ImportError as exc:
                return f"fp8-scaled-mm quantizes activations with a Triton kernel; triton is not importable ({exc})"
            return None
        case Quantization.BF16 | Quantization.FP8_CAST:
            # fp8-cast stores weights in fp8 and computes in the activation dtype: it runs on any device.
            # Fusing the distilled LoRA into fp8 weights on CUDA uses a Triton kernel (Lightricks/LTX-2 #296);
            # the runtime adapter never touches the fp8 weights, so only the fused mode needs sm_89+.
            if quantization is Quantization.FP8_CAST and lora_mode is LoraMode.FUSED and device.type == "cuda":
                import torch

                if torch.cuda.get_device_capability(device) < (8, 9):
                    return "fp8-cast LoRA fusion needs an Ada/Hopper GPU (sm_89+) for its Triton kernel"
            return None
        case _:
            assert_never(quantization)


def default_quantization(device: torch.device, flow: Flow = Flow.FAST) -> Quantization:
    """What a request that names no quantization runs: fp8-scaled-mm where fp8 tensor cores run it (the fastest:
    0.80x bf16's forward on the H200, its cost in docs/fidelity.md's fp8_scaled_mm row), fp8-cast elsewhere; the
    reference flow always fp8-cast (A2VidPipelineTwoStage's policy)."""
    if flow is Flow.FAST and unavailable_reason(Quantization.FP8_SCALED_MM, device) is None:
        return Quantization.FP8_SCALED_MM
    return Quantization.FP8_CAST


def fp8_weight_names(model: torch.nn.Module) -> set[str]:
    """Names of parameters stored as float8_e4m3fn (what the fp8-cast policy downcast)."""
    import torch

    return {name for name, p in model.named_parameters() if p.dtype == torch.float8_e4m3fn}


# -- the text encoder ------------------------------------------------------------------------------------------------
# bitsandbytes' 4-bit blocks: 64 weights share one float32 absmax (before double quantization compresses it).
NF4_BYTES_PER_WEIGHT = 0.5 + 4 / 64


def default_text_encoder_quantization(device: torch.device) -> TextEncoderQuantization:
    """nf4 where it can run (CUDA), bf16 elsewhere; what ran is recorded in the result either way."""
    return TextEncoderQuantization.NF4 if device.type == "cuda" else TextEncoderQuantization.BF16


def text_encoder_unavailable_reason(quantization: TextEncoderQuantization, device: torch.device) -> str | None:
    match quantization:
        case TextEncoderQuantization.BF16:
            return None
        case TextEncoderQuantization.NF4:
            if device.type != "cuda":
                return (
                    f"bitsandbytes 4-bit (nf4) quantizes and runs its linears with CUDA kernels; this engine runs on "
                    f"{device.type}: use --text-encoder-quantization bf16"
                )
            try:
                import bitsandbytes  # noqa: F401
            except ImportError as exc:
                return f"bitsandbytes is not importable ({exc}): install it or use --text-encoder-quantization bf16"
            return None
        case _:
            assert_never(quantization)


def is_nf4_target(name: str) -> bool:
    """The Gemma decoder's attention and MLP projections (the lm_head is dropped: text_path).

    Embeddings and norms stay bf16: the embedding table is a lookup, not a matmul.
    """
    return ".language_model.layers." in name and name.rsplit(".", 1)[-1].endswith("_proj")


def swap_in_linear4bit_(text_encoder: torch.nn.Module, compute_dtype: torch.dtype) -> int:
    """Replace the text encoder's target nn.Linear layers with bitsandbytes nf4 Linear4bit, in place; returns how many.

    Call it on the model ltx-core's builder loaded onto the CPU: the bf16 weights are wrapped (not copied) in
    Params4bit, and bitsandbytes quantizes each one as the module moves to CUDA, so the device never holds the bf16
    copy. A ModuleOps on the meta model would not work: load_state_dict(assign=True) replaces Params4bit with a
    plain Parameter.
    """
    import bitsandbytes as bnb
    import torch

    targets = [(n, m) for n, m in text_encoder.named_modules() if isinstance(m, torch.nn.Linear) and is_nf4_target(n)]
    for name, linear in targets:
        parent_name, _, attr = name.rpartition(".")
        quantized = bnb.nn.Linear4bit(
            linear.in_features,
            linear.out_features,
            bias=linear.bias is not None,
            compute_dtype=compute_dtype,
            quant_type="nf4",
            device="meta",
        )
        quantized.weight = bnb.nn.Params4bit(
            linear.weight.data, requires_grad=False, quant_type="nf4", module=quantized
        )
        if linear.bias is not None:
            quantized.bias = torch.nn.Parameter(linear.bias.data.to(compute_dtype), requires_grad=False)
        setattr(text_encoder.get_submodule(parent_name), attr, quantized)
    return len(targets)
