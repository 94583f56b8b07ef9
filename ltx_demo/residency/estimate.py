"""Memory estimates for residency auto: each model's device bytes from the bundle's headers as a config stores them,
the activations from the token count, each mode's peak (modes.py), and the fastest mode that fits a budget."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ltx_demo.checkpoints import Bundle, gemma_architecture
from ltx_demo.quantization import NF4_BYTES_PER_WEIGHT, is_nf4_target, policy_for, stores_fp8
from ltx_demo.residency.modes import CONCRETE_MODES, MODES
from ltx_demo.residency.specs import ModelConfig, flow_models, make_ledger
from ltx_demo.streamed_read import SAFETENSORS_DTYPES
from ltx_demo.text_path import is_dropped_gemma_key
from ltx_demo.types import GIB, Flow, LoraMode, Quantization, Residency, TextEncoderQuantization

# Transient bytes of stage 2's transformer pass per video token and per unit of model width (in compute-dtype
# elements): the 4x FF hidden (in and out), q/k/v/out, the residual stream and norms, with slack for the
# allocator. A rough constant, not a fit: a measured peak for the same config and shape replaces the estimate.
ACTIVATION_ELEMENTS_PER_TOKEN_WIDTH = 64
HEADROOM = 1.10  # an estimate must fit the budget with 10% to spare; a measured peak must simply fit


@dataclass(frozen=True, slots=True)
class MemoryEstimate:
    """Device bytes per component as this config would hold them, the activations, and the host cache size."""

    components: dict[str, int]
    activations: int
    host_cache: int

    def peak(self, mode: Residency, lora_mode: LoraMode) -> int:
        return MODES[mode].peak(self.components, self.activations, lora_mode)


@dataclass(frozen=True, slots=True)
class ResidencyPlan:
    mode: Residency
    reason: str
    peaks: dict[str, int]  # mode value -> the peak used for the decision (measured or estimated)
    measured: tuple[str, ...]  # the modes whose peak was measured, not estimated


def _header_tensors(paths: list[str], sd_ops) -> list[tuple[str, int, torch.dtype]]:
    """(key, elements, dtype after sd_ops) for each tensor a builder would load, from the safetensors headers only."""
    import math

    import safetensors

    out = []
    for path in paths:
        with safetensors.safe_open(path, framework="pt") as f:
            for key in f.keys():
                name = key if sd_ops is None else sd_ops.apply_to_key(key)
                if name is None:
                    continue
                tensor_slice = f.get_slice(key)
                shape, dtype = (
                    tensor_slice.get_shape(),
                    SAFETENSORS_DTYPES.get(tensor_slice.get_dtype(), torch.bfloat16),
                )
                results = [(name, torch.empty(shape, dtype=dtype, device="meta"))]
                if sd_ops is not None:
                    results = sd_ops.apply_to_key_value(name, results[0][1])
                out.extend((new_key, math.prod(value.shape), value.dtype) for new_key, value in results)
    return out


def estimate_memory(
    bundle: Bundle, config: ModelConfig, shape: tuple[int, int, int], compute_dtype: torch.dtype
) -> MemoryEstimate:
    """Weights from the bundle's headers as this config stores them; activations from the stage-2 token count."""
    components, host, width = _weight_bytes(
        bundle, config.quantization, config.text_encoder_quantization, compute_dtype, config.flow, config.whole_gemma
    )
    itemsize = torch.empty((), dtype=compute_dtype).element_size()
    w, h, frames = shape
    tokens = (w // 32) * (h // 32) * ((frames - 1) // 8 + 1)
    activations = ACTIVATION_ELEMENTS_PER_TOKEN_WIDTH * tokens * width * itemsize
    return MemoryEstimate(dict(components), activations, host)


@functools.lru_cache(maxsize=8)
def _weight_bytes(
    bundle: Bundle,
    quantization: Quantization,
    text_encoder: TextEncoderQuantization,
    compute_dtype: torch.dtype,
    flow: Flow = Flow.FAST,
    whole_gemma: bool = False,
) -> tuple[tuple[tuple[str, int], ...], int, int]:
    """((component, device bytes), ...), host-cache bytes, transformer width: headers and meta models only.

    Device bytes count only what the model keeps (the checkpoint's transformer prefix also matches the embeddings
    connectors, which the transformer drops); the host cache holds whatever each builder's sd_ops loaded.
    """

    ledger = make_ledger(bundle, compute_dtype, torch.device("cpu"))
    itemsize = torch.empty((), dtype=compute_dtype).element_size()
    policy = policy_for(quantization)
    config = ModelConfig(
        quantization,
        Residency.HOST_CACHED,
        1.0,
        text_encoder_quantization=text_encoder,
        flow=flow,
        whole_gemma=whole_gemma,
    )

    def size(dtype: torch.dtype) -> int:
        return torch.empty((), dtype=dtype).element_size()

    def weigh(builder, device_bytes: Callable[[str, int, torch.dtype], float]) -> tuple[int, int]:
        paths = list(builder.model_path) if isinstance(builder.model_path, tuple) else [builder.model_path]
        with gemma_architecture(bundle):
            meta = builder.meta_model(builder.model_config(), builder.module_ops)
        kept = {name for name, _ in [*meta.named_parameters(), *meta.named_buffers()]}
        linear_weights.update(f"{n}.weight" for n, m in meta.named_modules() if isinstance(m, torch.nn.Linear))
        device = host = 0
        for key, elements, dtype in _header_tensors(paths, builder.model_sd_ops):
            host += elements * size(dtype)
            if key in kept:
                device += int(device_bytes(key, elements, dtype))
        return device, host

    linear_weights: set[str] = set()

    def fp8_or_compute(key: str, elements: int, dtype: torch.dtype) -> int:
        if policy is not None and policy.sd_ops is not None:
            dtype = policy.sd_ops.apply_to_key_value(key, torch.empty(0, dtype=dtype, device="meta"))[0][1].dtype
        return elements * (1 if dtype in (torch.float8_e4m3fn, torch.float8_e5m2) else itemsize)

    def text_encoder_bytes(key: str, elements: int, _dtype: torch.dtype) -> float:
        if is_dropped_gemma_key(key) and config.drops_gemma_parts:
            return 0
        nf4 = text_encoder is TextEncoderQuantization.NF4 and key.endswith(".weight")
        return elements * (NF4_BYTES_PER_WEIGHT if nf4 and is_nf4_target(key.removesuffix(".weight")) else itemsize)

    def processor_bytes(key: str, elements: int, _dtype: torch.dtype) -> int:
        return elements * (1 if config.fp8_processor and key in linear_weights else itemsize)

    device_bytes = {
        "text_encoder": text_encoder_bytes,
        "embeddings_processor": processor_bytes,
        "transformer": fp8_or_compute,
    }
    components, host = {}, 0
    for model_spec in flow_models(LoraMode.ADAPTER):
        name = model_spec.name
        builder = getattr(ledger, model_spec.builder)
        components[name], stored = weigh(builder, device_bytes.get(name, lambda _k, elements, _d: elements * itemsize))
        # host-cached keeps some models as built (specs): the host then holds what the device holds
        host += components[name] if model_spec.kept_as_built(config) else stored
    components["transformer_stage_2"] = components["transformer"]
    components |= _lora_bytes(bundle, quantization, itemsize)
    host += components["lora_pairs"]
    return tuple(components.items()), host, _transformer_width(bundle)


def _lora_bytes(bundle: Bundle, quantization: Quantization, itemsize: int) -> dict[str, int]:
    """The distilled LoRA as an adapter on the device (fp8 configs keep it in fp8, plus one scale per row, < 0.3% at
    rank 384: not counted) and as the pairs read to fuse it."""
    from ltx_core.loader import LTXV_LORA_COMFY_RENAMING_MAP

    lora = _header_tensors([str(bundle.distilled_lora)], LTXV_LORA_COMFY_RENAMING_MAP)
    adapter = sum(elements for _, elements, _ in lora) * (1 if stores_fp8(quantization) else itemsize)
    pairs = sum(elements * torch.empty((), dtype=dtype).element_size() for _, elements, dtype in lora)
    return {"lora_adapter": adapter, "lora_pairs": pairs}


def _transformer_width(bundle: Bundle) -> int:
    """Heads x head dim from the checkpoint's config metadata (LTX-2.3's 32 x 128 when it says nothing)."""
    import json

    import safetensors

    with safetensors.safe_open(str(bundle.checkpoint), framework="pt") as f:
        transformer_config = json.loads((f.metadata() or {}).get("config", "{}")).get("transformer", {})
    return transformer_config.get("num_attention_heads", 32) * transformer_config.get("attention_head_dim", 128)


def plan_residency(
    estimate: MemoryEstimate,
    *,
    budget_bytes: int,
    budget_source: str,
    host_available_bytes: int,
    measured: dict[Residency, int],
    lora_mode: LoraMode = LoraMode.ADAPTER,
) -> ResidencyPlan:
    """The fastest mode whose peak fits the budget: persistent, then host-cached (if the host can hold the cache),
    then cold-start. Raises ValueError naming the smallest need when none fits (the engine turns it into
    InvalidRequest): running a mode that is expected not to fit would be a silent fallback."""
    peaks = {mode: measured.get(mode, estimate.peak(mode, lora_mode)) for mode in CONCRETE_MODES}
    need = {mode: peaks[mode] if mode in measured else int(peaks[mode] * HEADROOM) for mode in CONCRETE_MODES}
    skipped = []
    for mode in CONCRETE_MODES:
        how = "measured" if mode in measured else "estimated"
        if need[mode] > budget_bytes:
            skipped.append(f"{mode.value} needs ~{need[mode] / GIB:.1f} GiB ({how})")
            continue
        if mode is Residency.HOST_CACHED and estimate.host_cache > host_available_bytes:
            skipped.append(
                f"host-cached needs {estimate.host_cache / GIB:.1f} GiB of host memory, "
                f"{host_available_bytes / GIB:.1f} GiB free"
            )
            continue
        reason = (
            f"{mode.value}: peak ~{peaks[mode] / GIB:.2f} GiB ({how}) fits the {budget_bytes / GIB:.1f} GiB "
            f"budget ({budget_source})"
        )
        if skipped:
            reason += "; faster modes do not fit: " + "; ".join(skipped)
        return ResidencyPlan(mode, reason, {m.value: p for m, p in peaks.items()}, tuple(m.value for m in measured))
    raise ValueError(
        f"no residency mode fits the {budget_bytes / GIB:.1f} GiB budget ({budget_source}): " + "; ".join(skipped)
    )
