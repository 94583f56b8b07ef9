"""The distilled LoRA on the one stage transformer: a runtime low-rank adapter, y = base(x) + strength * (x @ A^T)
@ B^T switchable per stage, or (per-request modes on CUDA) fused into the weights in place before stage 2.

One stage transformer serves both stages: stage 1 runs with the adapter off, stage 2 with it on, instead of a
second copy with the LoRA fused into its weights (which for fp8 also needs ltx-core's Triton kernel on CUDA).

With fp8 transformer weights the adapter is stored in fp8 too, each row of A and B with its own scale
(amax/448): half the bytes of bf16 (3.1 GiB instead of 6.2 for LTX-2.3's rank-384 LoRA). The rounding is
fp8-sized on the low-rank term only, which is ~10% of W's norm, so the stage-2 weights stay closer to
W + s*B@A than fusion into fp8 (which re-rounds all of W) gets.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from ltx_demo.fp8_matmul import quantize_rows_reference

logger = logging.getLogger(__name__)

LORA_A_SUFFIX, LORA_B_SUFFIX = ".lora_A.weight", ".lora_B.weight"


class LoraTargetError(ValueError):
    """The LoRA names a layer the transformer does not have, or one that is not a Linear of a matching shape."""


def lora_pairs(lora_sd: dict[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{module path: (A, B)} from a LoRA state dict already renamed to the model's key space.

    The pairing is ltx-core's (fuse_loras._prepare_deltas): `<module>.lora_A.weight` and `<module>.lora_B.weight`
    modify `<module>.weight`.
    """
    pairs = {}
    for key, a in lora_sd.items():
        if not key.endswith(LORA_A_SUFFIX):
            continue
        stem = key.removesuffix(LORA_A_SUFFIX)
        b = lora_sd.get(stem + LORA_B_SUFFIX)
        if b is None:
            raise LoraTargetError(f"{stem}: lora_A without lora_B")
        pairs[stem] = (a, b)
    return pairs


def target_linear(velocity: torch.nn.Module, stem: str, a: torch.Tensor, b: torch.Tensor) -> torch.nn.Linear:
    """The Linear a LoRA pair modifies, checked: it exists, is a Linear, and B @ A has its weight's shape."""
    try:
        layer = velocity.get_submodule(stem)
    except AttributeError as exc:
        raise LoraTargetError(f"{stem}: the LoRA names a layer the transformer does not have") from exc
    if not isinstance(layer, torch.nn.Linear):
        raise LoraTargetError(f"{stem}: the LoRA targets a {type(layer).__name__}, not a Linear")
    if (
        a.ndim != 2
        or b.ndim != 2
        or a.shape[0] != b.shape[1]
        or (b.shape[0], a.shape[1]) != (layer.out_features, layer.in_features)
    ):
        raise LoraTargetError(
            f"{stem}: B{tuple(b.shape)} @ A{tuple(a.shape)} does not fit a {layer.in_features}->"
            f"{layer.out_features} Linear"
        )
    return layer


def fuse_in_place_(
    transformer: torch.nn.Module, pairs: dict[str, tuple[torch.Tensor, torch.Tensor]], strength: float
) -> int:
    """W <- W + strength * B @ A in each LoRA'd Linear, in place, through ltx-core's apply_loras (fp8 weights on
    CUDA: its Triton rounding kernel, sm_89+), one layer at a time so only one layer's delta exists at once.

    For the per-request modes: their transformer is freed after stage 2, so it never needs its base weights back,
    and stage 2's peak is the transformer alone instead of the transformer plus the adapter. Returns how many."""
    from ltx_core.loader.fuse_loras import apply_loras
    from ltx_core.loader.primitives import LoraStateDictWithStrength, StateDict

    velocity = getattr(transformer, "velocity_model", transformer)
    for stem, (a, b) in pairs.items():
        weight = target_linear(velocity, stem, a, b).weight
        key = f"{stem}.weight"
        lora = StateDict(
            {f"{stem}.lora_A.weight": a, f"{stem}.lora_B.weight": b}, a.device, a.nbytes + b.nbytes, {a.dtype}
        )
        base = StateDict({key: weight.data}, weight.device, weight.nbytes, {weight.dtype})
        fused = apply_loras(base, [LoraStateDictWithStrength(lora, strength)], dtype=weight.dtype)
        weight.data.copy_(fused.sd[key])
        del fused
    return len(pairs)


@dataclass(frozen=True, slots=True)
class AdapterSummary:
    layers: int
    rank: int  # the largest rank among the layers
    bytes: int  # A and B on the device


class LowRankAdapter:
    """Attaches (A, B) to the velocity model's Linears and wraps whatever `forward` each has.

    fp8-cast's UPCAST_DURING_INFERENCE replaces each Linear's `forward` with an instance attribute (an upcast +
    F.linear); the wrapper calls that, so the fp8 base weights stay fp8 and the low-rank term runs in the input's
    dtype. A and B live on the Linear as non-persistent buffers: they move with the model and are freed with it,
    and they stay out of its state_dict.
    """

    def __init__(
        self,
        transformer: torch.nn.Module,
        pairs: dict[str, tuple[torch.Tensor, torch.Tensor]],
        strength: float,
        dtype: torch.dtype,
        store_fp8: bool = False,
    ) -> None:
        self.strength = float(strength)
        self.enabled = False
        self._velocity = getattr(transformer, "velocity_model", transformer)
        self._layers: dict[str, torch.nn.Linear] = {}
        self._saved_forwards: dict[str, Callable | None] = {}
        device = next(self._velocity.parameters()).device
        ranks, total = [], 0
        try:
            for stem, (a, b) in pairs.items():
                layer = self._target(stem, a, b)
                for name, matrix in (("lora_A", a), ("lora_B", b)):
                    matrix = matrix.to(device=device)
                    if store_fp8:
                        quantized, scale = quantize_rows_reference(matrix)
                        layer.register_buffer(name, quantized, persistent=False)
                        layer.register_buffer(f"{name}_scale", scale.reshape(-1).to(dtype), persistent=False)
                    else:
                        layer.register_buffer(name, matrix.to(dtype), persistent=False)
                    total += sum(t.nbytes for n, t in layer.named_buffers() if n.startswith(name))
                saved = self._saved_forwards[stem] = layer.__dict__.get("forward")  # None: the class's own forward
                layer.forward = self._wrap(layer, saved)
                self._layers[stem] = layer
                ranks.append(a.shape[0])
        except BaseException:
            self.detach()
            raise
        self.summary = AdapterSummary(len(self._layers), max(ranks, default=0), total)
        logger.info(
            "low-rank adapter on %d linears, rank <= %d, %d bytes, strength %s",
            self.summary.layers,
            self.summary.rank,
            self.summary.bytes,
            self.strength,
        )

    def _target(self, stem: str, a: torch.Tensor, b: torch.Tensor) -> torch.nn.Linear:
        return target_linear(self._velocity, stem, a, b)

    def _wrap(self, layer: torch.nn.Linear, instance_forward: Callable | None) -> Callable:
        """The adapted forward. The class's own forward is called unbound (`type(layer).forward(layer, x)`), not
        as a bound method kept in the closure: torch.compile guards a closed-over bound method by its identity,
        which differs per layer, so every block would compile its own graph instead of sharing one."""
        adapter = self
        class_forward = type(layer).forward

        def forward(x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
            if instance_forward is None:
                out = class_forward(layer, x, *args, **kwargs)
            else:
                out = instance_forward(x, *args, **kwargs)
            if not adapter.enabled:
                return out
            a, b = layer.lora_A, layer.lora_B
            if a.dtype == torch.float8_e4m3fn:
                # x @ (diag(sA) A8)^T = (x @ A8^T) * sA; then (. @ B8^T) * sB, each upcast like fp8-cast's weights.
                low_rank = torch.nn.functional.linear(x, a.to(x.dtype)) * layer.lora_A_scale
                delta = torch.nn.functional.linear(low_rank, b.to(x.dtype))
                out.addcmul_(delta.to(out.dtype), layer.lora_B_scale, value=adapter.strength)
            else:
                delta = torch.nn.functional.linear(torch.nn.functional.linear(x.to(a.dtype), a), b)
                # out is F.linear's fresh result: adding in place saves an output-sized temporary per layer.
                out.add_(delta.to(out.dtype), alpha=adapter.strength)
            return out

        return forward

    @contextlib.contextmanager
    def active(self, enabled: bool) -> Iterator[None]:
        """On (stage 2) or off (stage 1) for the block; back to what it was after."""
        previous, self.enabled = self.enabled, enabled
        try:
            yield
        finally:
            self.enabled = previous

    def detach(self) -> None:
        """Put each Linear's forward back and drop A and B (the transformer is as built again)."""
        for stem, layer in self._layers.items():
            saved = self._saved_forwards.get(stem)
            if saved is None:
                del layer.forward
            else:
                layer.forward = saved
            for name in ("lora_A", "lora_B", "lora_A_scale", "lora_B_scale"):
                layer._buffers.pop(name, None)
        self._layers.clear()
        self._saved_forwards.clear()
        self.enabled = False


def load_lora_pairs(path: str, load_sd: Callable | None = None) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Read a LoRA file through ltx-core's loader and its ComfyUI renaming map (`diffusion_model.` prefix dropped).

    `load_sd(paths, sd_ops)` lets the caller route the read through a registry (the host cache); by default it is
    ltx-core's SafetensorsStateDictLoader onto the CPU.
    """
    from ltx_core.loader import LTXV_LORA_COMFY_RENAMING_MAP, SafetensorsStateDictLoader

    if load_sd is None:
        state_dict = SafetensorsStateDictLoader().load([path], sd_ops=LTXV_LORA_COMFY_RENAMING_MAP)
    else:
        state_dict = load_sd([path], LTXV_LORA_COMFY_RENAMING_MAP)
    return lora_pairs(state_dict.sd)
