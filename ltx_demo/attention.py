"""Which kernel the fast flow's transformer attention runs: ltx-core 1.0.0's own AttentionFunction (PyTorch SDPA,
xFormers, FlashAttention-3) set on every Attention module, or PyTorch SDPA with one of its backends put first.

ltx-core picks its attention per model from the checkpoint config ("attention_type", default: xFormers when it is
installed, else SDPA); this sets the module attribute it calls (`Attention.attention_function`) after the build.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

from ltx_demo.types import AttentionBackend

if TYPE_CHECKING:
    import torch

# auto on CUDA: plain SDPA. On the H200 (docs/device/forward-bench-*-h200.json) no pinned backend beat it: within 1%
# with CUDA graphs; eager, cuDNN first was up to 1.46x slower under fp8 and efficient first 1.1-1.6x slower.
AUTO_ON_CUDA = AttentionBackend.SDPA
SDPA_ORDER = ("FLASH_ATTENTION", "CUDNN_ATTENTION", "EFFICIENT_ATTENTION", "MATH")  # torch's own default order
PINNED = {
    AttentionBackend.SDPA_FLASH: "FLASH_ATTENTION",
    AttentionBackend.SDPA_CUDNN: "CUDNN_ATTENTION",
    AttentionBackend.SDPA_EFFICIENT: "EFFICIENT_ATTENTION",
}


class PreferredSdpa:
    """ltx-core's PytorchAttention with one SDPA backend tried first; a call it cannot run (a mask it does not
    take) goes to the next in torch's order, as SDPA itself would."""

    def __init__(self, backend: str) -> None:
        from torch.nn.attention import SDPBackend

        self.backend = backend
        self._order = [getattr(SDPBackend, name) for name in (backend, *(b for b in SDPA_ORDER if b != backend))]

    def __call__(self, q, k, v, heads: int, mask=None):
        from ltx_core.model.transformer.attention import AttentionFunction
        from torch.nn.attention import sdpa_kernel

        with sdpa_kernel(self._order, set_priority=True):
            return AttentionFunction.PYTORCH(q, k, v, heads, mask)

    def __repr__(self) -> str:
        return f"PreferredSdpa({self.backend})"


def unavailable_reason(backend: AttentionBackend, device: torch.device) -> str | None:
    """Why `backend` cannot run on `device` (None: it can)."""
    from ltx_core.model.transformer import attention

    match backend:
        case AttentionBackend.AUTO | AttentionBackend.SDPA:
            return None
        case AttentionBackend.SDPA_FLASH | AttentionBackend.SDPA_CUDNN | AttentionBackend.SDPA_EFFICIENT:
            if device.type != "cuda":
                return f"--attention {backend} is a CUDA kernel of PyTorch's SDPA; this engine runs on {device.type}"
            import torch

            if backend is AttentionBackend.SDPA_CUDNN and not torch.backends.cudnn.is_available():
                return "--attention sdpa-cudnn needs cuDNN, which this torch build does not have"
            return None
        case AttentionBackend.XFORMERS:
            if attention.memory_efficient_attention is None:
                return "--attention xformers needs the xformers package (pip install xformers for this torch)"
            return None if device.type == "cuda" else f"--attention xformers runs on CUDA; this is {device.type}"
        case AttentionBackend.FLASH_ATTENTION_3:
            if attention.flash_attn_interface is None:
                return (
                    "--attention flash-attention-3 needs flash_attn_interface (FlashAttention-3, built from source "
                    "for Hopper; ltx-core does not import it when xformers is installed)"
                )
            return None if device.type == "cuda" else f"--attention flash-attention-3 runs on CUDA, not {device.type}"


def resolve(backend: AttentionBackend, device: torch.device) -> AttentionBackend:
    """auto -> what runs here fastest; anything else stays (check unavailable_reason first)."""
    if backend is not AttentionBackend.AUTO:
        return backend
    if device.type == "cuda" and unavailable_reason(AUTO_ON_CUDA, device) is None:
        return AUTO_ON_CUDA
    return AttentionBackend.SDPA


def attention_callable(backend: AttentionBackend):
    """What Attention.attention_function is set to for a resolved backend."""
    from ltx_core.model.transformer.attention import AttentionFunction

    match backend:
        case AttentionBackend.SDPA:
            return AttentionFunction.PYTORCH
        case AttentionBackend.XFORMERS:
            return AttentionFunction.XFORMERS
        case AttentionBackend.FLASH_ATTENTION_3:
            return AttentionFunction.FLASH_ATTENTION_3
        case AttentionBackend.SDPA_FLASH | AttentionBackend.SDPA_CUDNN | AttentionBackend.SDPA_EFFICIENT:
            return PreferredSdpa(PINNED[backend])
        case AttentionBackend.AUTO:
            raise AssertionError("resolve() auto first")


def use_attention_(model: torch.nn.Module, backend: AttentionBackend) -> int:
    """Point every ltx-core Attention module of `model` at `backend` (resolved); returns how many it set."""
    from ltx_core.model.transformer.attention import Attention

    function = attention_callable(backend)
    modules = [m for m in model.modules() if isinstance(m, Attention)]
    for module in modules:
        module.attention_function = function
    return len(modules)


def traceable_attention_(model: torch.nn.Module) -> int:
    """Each Attention module that holds an AttentionFunction member gets the ltx-core class that member calls
    (PytorchAttention, XFormersAttention, FlashAttention3): the same kernel, but torch.compile can trace a call of
    a class instance and cannot trace a call of an Enum member (a graph break around every attention)."""
    from ltx_core.model.transformer import attention

    classes = {
        attention.AttentionFunction.PYTORCH: attention.PytorchAttention,
        attention.AttentionFunction.XFORMERS: attention.XFormersAttention,
        attention.AttentionFunction.FLASH_ATTENTION_3: attention.FlashAttention3,
        attention.AttentionFunction.DEFAULT: attention.XFormersAttention
        if attention.memory_efficient_attention is not None
        else attention.PytorchAttention,
    }
    changed = 0
    for module in model.modules():
        if isinstance(module, attention.Attention) and isinstance(
            module.attention_function, attention.AttentionFunction
        ):
            module.attention_function = classes[module.attention_function]()
            changed += 1
    return changed


@contextlib.contextmanager
def attention_of(model: torch.nn.Module, backend: AttentionBackend):
    """`model`'s attention switched to `backend` inside the block, put back after (forward-bench, fidelity)."""
    from ltx_core.model.transformer.attention import Attention

    before = {m: m.attention_function for m in model.modules() if isinstance(m, Attention)}
    use_attention_(model, backend)
    try:
        yield
    finally:
        for module, function in before.items():
            module.attention_function = function
