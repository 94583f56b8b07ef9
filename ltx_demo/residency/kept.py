"""Models kept as built, and the host cache: what per-request modes keep so that a build need not read or cast again.

The state dict of a model in the form it runs in (fp8-cast transformer, nf4 text encoder, fp8 embeddings processor) is
taken once and rebuilt from: host-cached keeps it in pinned memory (HostKept), cold-start in files (DiskKept). The
other models' file states wait in host-cached's pinned registry (PinnedStateDictRegistry). docs/residency.md says why.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from ltx_core.loader.registry import StateDictRegistry

from ltx_demo import streamed_read
from ltx_demo.quantization import swap_in_linear4bit_
from ltx_demo.text_path import drop_unused_gemma_parts_
from ltx_demo.types import GIB

logger = logging.getLogger(__name__)


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
    builder, state: dict[str, torch.Tensor], device: torch.device, compute_dtype: torch.dtype, drop_parts: bool = True
) -> torch.nn.Module:
    """The nf4 text encoder from its kept state: ltx-core's meta model, the same parts dropped and the same linears
    swapped for Linear4bit as the first build, each tensor copied to `device` (nothing is quantized)."""
    import bitsandbytes as bnb

    model = builder.meta_model(builder.model_config(), builder.module_ops)
    if drop_parts:
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


# -- the stores the modes use ----------------------------------------------------------------------------------------
class HostKept:
    """host-cached: built models' states in pinned host memory (pageable without CUDA), one per model name."""

    def __init__(self, pin: bool) -> None:
        self.pin = pin
        self._states: dict[str, dict[str, torch.Tensor]] = {}

    def get(self, name: str) -> dict[str, torch.Tensor] | None:
        return self._states.get(name)

    def put(self, name: str, model: torch.nn.Module) -> None:
        self._states[name] = host_copy(model, pin=self.pin)

    def bytes(self) -> int:
        return sum(state_bytes(state) for state in self._states.values())

    def sizes(self) -> dict[str, int]:
        return {name: state_bytes(state) for name, state in self._states.items()}

    def all_pinned(self) -> bool:
        return all(t.is_pinned() for state in self._states.values() for t in state.values())

    def clear(self) -> None:
        self._states.clear()


KEEP_FREE_BYTES = 10 * GIB  # cold-start keeps a model only if the disk keeps this much free after it


class DiskKept:
    """cold-start and persistent (modes.KeptOnDisk): built models' states in files under `cache_dir`, one folder per
    model and recipe (state_folder).

    Writing never fails a request: a write error or too little free disk is logged, and after a write error
    nothing more is kept by this process (later starts build from the bundle)."""

    def __init__(self, cache_dir: Path | None) -> None:
        self.cache_dir = cache_dir  # None: keep nothing

    def folder(self, name: str, source_paths: list[str], recipe: dict) -> Path | None:
        return state_folder(self.cache_dir, name, source_paths, recipe) if self.cache_dir is not None else None

    def get(self, folder: Path, name: str, device: torch.device) -> dict[str, torch.Tensor] | None:
        if not is_kept(folder):
            return None
        try:
            return load_state(folder, device)
        except UnreadableState as exc:
            self.drop(folder, name, exc)
            return None

    def drop(self, folder: Path, name: str, why: Exception) -> None:
        """An unreadable state, or one that does not fit the model: deleted, so the next build writes a good one."""
        logger.warning("ignoring the unreadable kept %s in %s (%s); building it again", name, folder, why)
        shutil.rmtree(folder, ignore_errors=True)

    def put(self, folder: Path, name: str, model: torch.nn.Module, size: int, on_loading) -> None:
        """Write the built model's state (`size` bytes on the device) once, if the disk has room for it."""
        needed = size + KEEP_FREE_BYTES
        try:
            folder.parent.mkdir(parents=True, exist_ok=True)
            if dropped := drop_other_states(folder):
                logger.info("dropped the kept %s of another configuration: %s", name, ", ".join(dropped))
            free = shutil.disk_usage(folder.parent).free
            if free < needed:
                logger.warning(
                    "not keeping %s in %s: %.1f GiB free, %.1f GiB needed (its size + %.0f GiB kept free)",
                    name, folder.parent, free / GIB, needed / GIB, KEEP_FREE_BYTES / GIB,
                )  # fmt: skip
                return
            started = time.perf_counter()
            on_loading(f"{name} (keeping it as built for later starts)")
            written = save_model_state(model, folder)
        except Exception as exc:  # writing the cache must never fail the request
            logger.warning("could not keep %s in %s (%s); later starts build it from the bundle", name, folder, exc)
            self.cache_dir = None
            return
        logger.info(
            "kept %s as built in %s (%.2f GiB, %.1f s): later starts read it instead of the bundle's files",
            name, folder, written / GIB, time.perf_counter() - started,
        )  # fmt: skip


@dataclass
class PinnedStateDictRegistry(StateDictRegistry):
    """ltx-core's in-memory state-dict cache, with each tensor moved to pinned memory as it is added.

    ModelLedger(registry=...) routes every builder's load_sd through it, keyed by file and sd_ops, and its
    _target_device() then builds on the CPU and moves the model to the device after. So the cache holds exactly
    what fp8-cast's sd_ops produced (the fp8 downcast happens once, at the first load), and each request's build is
    a host-to-device copy. Pinning in add() replaces the loaded tensors inside the StateDict the builder is about to
    use, so even the first build copies from pinned memory, and the host never holds the unpinned and the pinned
    copy of more than one tensor at once.
    """

    pin: bool = False
    loads: Counter = field(default_factory=Counter)  # disk reads per sd_ops name (or file name)

    def add(self, paths: list[str], sd_ops, state_dict) -> str:
        if self.pin:
            pinned: dict[int, torch.Tensor] = {}  # one pinned copy per tensor, even where sd_ops aliased it
            for key, value in state_dict.sd.items():
                if id(value) not in pinned:
                    pinned[id(value)] = value.pin_memory()
                state_dict.sd[key] = pinned[id(value)]
        self.loads[sd_ops.name if sd_ops is not None else Path(paths[0]).name] += 1
        return super().add(paths, sd_ops, state_dict)

    def all_pinned(self) -> bool:
        with self._lock:
            return all(t.is_pinned() for sd in self._state_dicts.values() for t in sd.sd.values())

    def nbytes(self) -> int:
        with self._lock:
            seen = {}
            for state_dict in self._state_dicts.values():
                for value in state_dict.sd.values():
                    seen[value.data_ptr()] = value.nbytes
            return sum(seen.values())
