"""Models kept as built: the state dict of a model in the form it runs in (fp8-cast transformer, nf4 text encoder,
fp8 embeddings processor), taken once and rebuilt from without reading the original files or casting again.

A per-request build pays for more than the bytes the device ends up holding. fp8-cast reads the transformer's bf16
weights (40 GiB for LTX-2.3) to keep 1-byte ones; nf4 builds all of Gemma in bf16 on the host (23 GiB) before
bitsandbytes quantizes it on the way to the device; the fp8 processor reads 5.9 GiB to keep 3. The built model's
own state dict (for nf4, bitsandbytes' serialization: each Linear4bit's packed weight plus its quant-state
tensors, from `Linear4bit._save_to_state_dict`) is what is worth keeping:

- host-cached keeps the nf4 text encoder's in pinned host memory (host_copy); the other models' casts already
  happen once there (ltx-core's StateDictRegistry holds what fp8-cast's sd_ops produced).
- cold-start keeps them in safetensors files under a cache folder (save_model_state / load_state), one folder per
  model, named from the source files' identity and the recipe, written in ~2 GiB shards so the host holds one
  shard at a time, and renamed into place only when complete.

A rebuild makes the model on the meta device through the same ltx-core builder (config, module ops such as the
fp8 forward or the tokenizer) and assigns the kept tensors on the device; nf4 linears get them through
`Params4bit.from_prequantized`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import torch

from ltx_demo import streamed_read
from ltx_demo.quantization import swap_in_linear4bit_
from ltx_demo.text_path import drop_unused_gemma_parts_

FORMAT_VERSION = 2  # bump when what is saved (or how it is named) changes
SHARD_BYTES = 2 * 1024**3
COMPLETE = "complete.json"  # written last: a folder without it is never read


class UnreadableState(ValueError):
    """A kept state that cannot be read (damaged, truncated, incomplete, or not safetensors)."""


# -- in memory -------------------------------------------------------------------------------------------------------
def host_copy(model: torch.nn.Module, pin: bool) -> dict[str, torch.Tensor]:
    """A host copy of the model's state dict (for nf4: packed weights and their quant states)."""
    state = {}
    for key, value in model.state_dict().items():
        if pin:  # one copy, straight into pinned memory
            state[key] = torch.empty(value.shape, dtype=value.dtype, pin_memory=True).copy_(value.detach())
        else:
            state[key] = value.detach().to("cpu", copy=True)
    return state


def state_bytes(state: dict[str, torch.Tensor]) -> int:
    return sum(value.nbytes for value in state.values())


# -- rebuilding ------------------------------------------------------------------------------------------------------
def _assert_complete(model: torch.nn.Module, what: str) -> None:
    left_on_meta = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.device.type == "meta"]
    if left_on_meta:
        raise UnreadableState(
            f"{what}: the kept state lacks {len(left_on_meta)} tensors ({', '.join(left_on_meta[:5])})"
        )


def build_with_state(
    meta_model: Callable[[], torch.nn.Module], state: dict[str, torch.Tensor], device: torch.device, what: str
) -> torch.nn.Module:
    """meta_model() (ltx-core's builder on the meta device) with the kept tensors assigned, on `device`."""
    model = meta_model()
    try:
        model.load_state_dict({k: v.to(device, non_blocking=True) for k, v in state.items()}, strict=True, assign=True)
    except RuntimeError as exc:  # missing or unexpected keys, wrong shapes: not this model's state
        raise UnreadableState(f"{what}: {exc}") from exc
    model = model.to(device)  # what module ops made on the host
    _assert_complete(model, what)
    return model.eval()


def build_nf4_text_encoder(
    builder, state: dict[str, torch.Tensor], device: torch.device, compute_dtype: torch.dtype
) -> torch.nn.Module:
    """The nf4 text encoder from its kept state: ltx-core's meta model, the same parts dropped and the same linears
    swapped for Linear4bit as the first build, each tensor copied to `device` (nothing is quantized)."""
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
        if not stats or f"{name}.weight" not in remaining:
            raise UnreadableState(f"text encoder: the kept nf4 state has no quantized weight for {name}")
        module.weight = bnb.nn.Params4bit.from_prequantized(
            data=remaining.pop(f"{name}.weight"), quantized_stats=stats, device=device, module=module
        )
    on_device = {key: value.to(device, non_blocking=True) for key, value in remaining.items()}
    _, unexpected = model.load_state_dict(on_device, strict=False, assign=True)
    if unexpected:
        raise UnreadableState(f"text encoder: the kept state has tensors it lacks ({', '.join(unexpected[:5])})")
    model = model.to(device)  # what module_ops made on the host (rope tables, embed scale, position ids)
    _assert_complete(model, "text encoder")
    return model.eval()


# -- on disk ---------------------------------------------------------------------------------------------------------
def state_folder(cache_dir: Path, name: str, source_paths: list[str], recipe: dict) -> Path:
    """Where a model built from these files by this recipe is kept: a new name whenever a source file (path, size,
    mtime), the recipe or this format changes, so a stale state is never read."""
    identity: list = [FORMAT_VERSION, name, recipe]
    for path in sorted(source_paths):
        stat = Path(path).stat()
        identity.append([str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns])
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:24]
    return cache_dir / f"{name}-{digest}"


def is_kept(folder: Path) -> bool:
    return (folder / COMPLETE).is_file()


def drop_other_states(folder: Path) -> list[str]:
    """Delete the other kept states of the same model (another checkpoint, recipe or library version): at most one
    per model stays, so the folder never grows past one set (~33 GB for LTX-2.3). Returns what was deleted."""
    name = folder.name.rsplit("-", 1)[0]
    dropped = []
    for other in folder.parent.glob(f"{name}-*"):
        if other != folder and other.is_dir() and other.name.rsplit("-", 1)[0] == name:
            shutil.rmtree(other, ignore_errors=True)
            dropped.append(other.name)
    return dropped


def kept_bytes(folder: Path) -> int:
    """What a complete kept state holds, as written (0 if its record cannot be read)."""
    try:
        return int(json.loads((folder / COMPLETE).read_text())["bytes"])
    except (OSError, KeyError, ValueError):
        return 0


def save_model_state(model: torch.nn.Module, folder: Path) -> int:
    """The model's state dict into `folder` in shards of ~2 GiB (the host holds one shard at a time), written
    under a temporary name and renamed into place complete. Returns the bytes written."""
    from safetensors.torch import save_file

    folder.parent.mkdir(parents=True, exist_ok=True)
    partial = folder.with_name(f".{folder.name}.{os.getpid()}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    shard: dict[str, torch.Tensor] = {}
    written = shard_bytes = 0
    shards: list[str] = []

    def flush() -> None:
        nonlocal shard, shard_bytes
        if shard:
            shards.append(f"part-{len(shards):04d}.safetensors")
            save_file(shard, str(partial / shards[-1]))
        shard, shard_bytes = {}, 0

    try:
        for key, value in model.state_dict().items():
            shard[key] = value.detach().to("cpu", copy=True).contiguous()  # a copy: no two keys share storage
            shard_bytes += shard[key].nbytes
            written += shard[key].nbytes
            if shard_bytes >= SHARD_BYTES:
                flush()
        flush()
        (partial / COMPLETE).write_text(json.dumps({"shards": shards, "bytes": written}) + "\n")
        shutil.rmtree(folder, ignore_errors=True)  # an incomplete one left by a killed process
        os.replace(partial, folder)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return written


def load_state(folder: Path, device: torch.device) -> dict[str, torch.Tensor]:
    """Every shard read straight onto `device` (streamed_read: parallel reads, pinned staging, copies overlapping
    the reads; the host never holds the whole state on the way)."""
    try:
        shards = json.loads((folder / COMPLETE).read_text())["shards"]
        state: dict[str, torch.Tensor] = {}
        for shard in shards:
            state.update(streamed_read.read_file(folder / shard, device))
        return state
    except (streamed_read.StreamedReadError, OSError, KeyError, TypeError, json.JSONDecodeError) as exc:
        raise UnreadableState(f"{folder.name}: {exc}") from exc
