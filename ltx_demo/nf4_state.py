"""The nf4 text encoder's quantized weights as a flat state dict: taken once, rebuilt from without quantizing again.

Building Gemma in nf4 the first time means ltx-core's builder materializing all of it in bf16 on the host (23 GiB
for Gemma-3-12B), then bitsandbytes quantizing each linear as the model moves to CUDA. The quantized model's state
dict, in bitsandbytes' own serialization (each Linear4bit's packed weight plus its quant-state tensors, from
`Linear4bit._save_to_state_dict`), is under a third of that. host-cached keeps it in pinned host memory; cold-start
keeps it in a safetensors file under the cache folder, named by a fingerprint of the Gemma files it came from. A
later build makes the model on the meta device through the same ltx-core builder (config, tokenizer, rope buffers),
swaps in the 4-bit linears and puts the saved tensors on the device (`Params4bit.from_prequantized` for the linears).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import torch

from ltx_demo.quantization import swap_in_linear4bit_
from ltx_demo.text_path import drop_unused_gemma_parts_

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1  # bump when what is saved (or how it is named) changes


def quantized_state(text_encoder: torch.nn.Module, pin: bool) -> dict[str, torch.Tensor]:
    """A host copy of the quantized text encoder's state dict (packed nf4 weights and their quant states)."""
    state = {}
    for key, value in text_encoder.state_dict().items():
        host = value.detach().to("cpu", copy=True)
        state[key] = host.pin_memory() if pin else host
    return state


def state_bytes(state: dict[str, torch.Tensor]) -> int:
    return sum(value.nbytes for value in state.values())


def build_from_quantized_state(
    builder, state: dict[str, torch.Tensor], device: torch.device, compute_dtype: torch.dtype
) -> torch.nn.Module:
    """The text encoder from a quantized_state() dict: ltx-core's meta model, the same parts dropped and the same
    linears swapped for Linear4bit as the first build, each tensor copied to `device` (nothing is quantized)."""
    import bitsandbytes as bnb

    model = builder.meta_model(builder.model_config(), builder.module_ops)
    drop_unused_gemma_parts_(model)
    swap_in_linear4bit_(model, compute_dtype)
    remaining = dict(state)
    for name, module in model.named_modules():
        if not isinstance(module, bnb.nn.Linear4bit):
            continue
        prefix = f"{name}.weight."
        stats = {key.removeprefix(prefix): remaining.pop(key) for key in list(remaining) if key.startswith(prefix)}
        if not stats:
            raise KeyError(f"{name}: the saved nf4 state has no quant state for it")
        module.weight = bnb.nn.Params4bit.from_prequantized(
            data=remaining.pop(f"{name}.weight"), quantized_stats=stats, device=device, module=module
        )
    on_device = {key: value.to(device, non_blocking=True) for key, value in remaining.items()}
    _, unexpected = model.load_state_dict(on_device, strict=False, assign=True)
    if unexpected:
        raise KeyError(f"the saved nf4 state has tensors this text encoder lacks: {', '.join(unexpected[:5])}")
    model = model.to(device)  # what module_ops made on the host (rope tables, embed scale, position ids)
    left_on_meta = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.device.type == "meta"]
    if left_on_meta:
        raise KeyError(f"the saved nf4 state lacks {len(left_on_meta)} tensors ({', '.join(left_on_meta[:5])})")
    return model.eval()


def cache_file(cache_dir: Path, weight_paths: list[str]) -> Path:
    """Where cold-start keeps the nf4 state of these Gemma files: a new name whenever a file (path, size, mtime),
    bitsandbytes' version or this format changes, so a stale file is never read."""
    import bitsandbytes

    identity = [FORMAT_VERSION, bitsandbytes.__version__]
    for path in sorted(weight_paths):
        stat = Path(path).stat()
        identity.append([str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns])
    digest = hashlib.sha256(json.dumps(identity).encode()).hexdigest()[:24]
    return cache_dir / f"gemma-nf4-{digest}.safetensors"


def save_state(state: dict[str, torch.Tensor], path: Path) -> None:
    """Written to a temporary name and renamed: a reader never sees a half-written file."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        save_file({key: value.contiguous() for key, value in state.items()}, str(partial))
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


class UnreadableState(ValueError):
    """A kept nf4 state that cannot be read (damaged, truncated, or not a safetensors file)."""


def load_state(path: Path, device: torch.device) -> dict[str, torch.Tensor]:
    """Read straight onto `device` (the host never holds the whole state on the way)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device=str(device))
    except SafetensorError as exc:
        raise UnreadableState(f"{path.name}: {exc}") from exc
