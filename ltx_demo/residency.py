"""Model lifetimes per residency mode: the one place that builds, keeps, uploads and frees models.

Everything else asks for a model inside a `with residency.use(name)` (or `stage_transformer(stage)`) block, inside
one `with residency.request()` per generation. One stage transformer serves both stages (the distilled LoRA is a
runtime adapter for stage 2); `auto` picks a mode per request from a VRAM budget (plan_residency).
"""

from __future__ import annotations

import contextlib
import functools
import gc
import importlib.metadata
import logging
import shutil
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import assert_never

import torch
from ltx_core.loader.registry import StateDictRegistry

from ltx_demo import built_states
from ltx_demo.checkpoints import Bundle, BundleError, gemma_architecture
from ltx_demo.cuda_graphs import GraphedBlocks
from ltx_demo.lora_adapter import LoraTargetError, LowRankAdapter, fuse_in_place_, load_lora_pairs
from ltx_demo.quantization import (
    NF4_BYTES_PER_WEIGHT,
    is_nf4_target,
    policy_for,
    stores_fp8,
    swap_in_linear4bit_,
)
from ltx_demo.settings import LoraMode, Quantization, Residency, TextEncoderQuantization
from ltx_demo.streamed_read import SAFETENSORS_DTYPES
from ltx_demo.text_path import drop_unused_gemma_parts_, is_dropped_gemma_key, store_linears_in_fp8_

logger = logging.getLogger(__name__)

MODEL_NAMES = (
    "text_encoder",
    "embeddings_processor",
    "audio_encoder",
    "video_encoder",
    "transformer",  # both stages in adapter mode; stage 1 only in fused mode
    "spatial_upsampler",
    "transformer_stage_2",  # fused mode only: the second copy with the LoRA fused in (what the seed does)
    "video_decoder",
)
# The shared transformer was called transformer_stage_1 before it served both stages; old callers still work.
LEGACY_NAMES = {"transformer_stage_1": "transformer"}
GEMMA_PARTS = ("text_encoder", "embeddings_processor")  # built at the bundle's Gemma size (gemma_architecture)
ADAPTER = "lora_adapter"  # a build phase and a build count, not a model of its own: it lives on the transformer
CONCRETE_MODES = (Residency.PERSISTENT, Residency.HOST_CACHED, Residency.COLD_START)  # fastest first


def canonical(name: str) -> str:
    return LEGACY_NAMES.get(name, name)


class BuildCounts(Counter):
    """Builds per model name (a host-cached upload counts as a build); legacy names read the shared transformer."""

    def __missing__(self, key: str) -> int:
        return self[LEGACY_NAMES[key]] if key in LEGACY_NAMES else 0


@dataclass(frozen=True, slots=True)
class ModelConfig:
    """What the held models were built for; a request with another config releases them first."""

    quantization: Quantization
    residency: Residency  # concrete: auto is resolved before (plan_residency)
    distilled_lora_strength: float
    lora_mode: LoraMode = LoraMode.ADAPTER
    text_encoder_quantization: TextEncoderQuantization = TextEncoderQuantization.BF16


KEEP_FREE_BYTES = 10 * 1024**3  # cold-start keeps a model only if the disk keeps this much free after it


@functools.cache
def _library_versions() -> dict[str, str]:
    """What a kept state depends on besides its source files (built_states.state_folder)."""
    versions = {}
    for name in ("torch", "ltx-core", "bitsandbytes"):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "absent"
    return versions


def free_device_memory(device: torch.device, collect: bool = True) -> None:
    """Give what the caching allocator holds back to the device; `collect` first runs a full gc pass (~0.2 s in
    the app's process) for models nobody dismantled (error paths)."""
    if collect:
        gc.collect()  # fp8-cast's and the adapter's forward patches make each Linear a reference cycle
    if device.type == "cuda":
        torch.cuda.empty_cache()


def release_pinned_host_memory() -> None:
    """Give back to the OS the pinned blocks torch's caching host allocator keeps after their tensors are freed.

    Without it, host-cached's pinned cache (~39 GB for LTX-2.3) stayed reserved in the process after a switch to
    another mode: a cold start in the same process then found too little memory left for the page cache to hold
    its kept states, and read them from disk (measured on the H100, docs/residency.md). torch exposes the call only
    as a private binding; without it this is a no-op."""
    empty_host_cache = getattr(torch._C, "_host_emptyCache", None)
    if torch.cuda.is_available() and empty_host_cache is not None:
        empty_host_cache()


def dismantle_(model: torch.nn.Module) -> None:
    """Drop every parameter, buffer, CUDA graph and forward patch of a model that is being released, so its memory
    is free the moment release() returns, without a gc pass. Without this, fp8-cast's and the adapter's forward
    patches (each patched Linear refers to itself) kept the transformer's tensors until the next gc pass, and a
    caller's frame still naming the model kept them alive through release() (stage 2's transformer stayed
    allocated through decode)."""
    for module in model.modules():
        graphed = module.__dict__.get("_process_transformer_blocks")
        if isinstance(graphed, GraphedBlocks):
            graphed.invalidate()
            graphed.remove()
        module.__dict__.pop("forward", None)
        module._parameters.clear()
        module._buffers.clear()


@dataclass
class PinnedStateDictRegistry(StateDictRegistry):
    """ltx-core's in-memory state-dict cache, with each tensor moved to pinned memory as it is added.

    Why build on StateDictRegistry: ModelLedger(registry=...) routes every builder's load_sd through it, keyed by
    file and sd_ops, and its _target_device() then builds on the CPU and moves the model to the device after. So
    the cache holds exactly what fp8-cast's sd_ops produced (the fp8 downcast happens once, at the first load),
    and each request's build is a host-to-device copy. Pinning in add() replaces the loaded tensors inside the
    StateDict the builder is about to use, so even the first build copies from pinned memory, and the host never
    holds the unpinned and the pinned copy of more than one tensor at once.
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

    def nbytes(self) -> int:
        with self._lock:
            seen = {}
            for state_dict in self._state_dicts.values():
                for value in state_dict.sd.values():
                    seen[value.data_ptr()] = value.nbytes
            return sum(seen.values())


def _assert_materialized(name: str, model: torch.nn.Module, bundle: Bundle) -> None:
    """ltx-core's builder only logs a warning for missing keys and returns a model still on meta: refuse it."""
    missing = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.device.type == "meta"]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise BundleError(f"{name}: the bundle lacks {len(missing)} weights ({shown}); check {bundle.checkpoint}")


def _explain_build_failure(name: str, bundle: Bundle, exc: Exception) -> str:
    """Name the missing or misshapen tensors (ltx-core's own error is about meta tensors, not about the file)."""
    from ltx_demo.checkpoints import check_bundle

    component = "transformer" if name.startswith("transformer") else name
    problems = [p for c in check_bundle(bundle) if c.name == component for p in c.problems]
    detail = "; ".join(problems) if problems else str(exc)
    return f"{name}: cannot build it from {bundle.checkpoint.name} ({detail}); run check-bundle for the full list"


def _cast_unquantized_(model: torch.nn.Module, dtype: torch.dtype) -> None:
    """Bring the weights fp8-cast left in the checkpoint's dtype to the compute dtype (float32 on CPU).

    ModelLedger builds a quantized transformer without a dtype (a dtype would upcast the fp8 weights again),
    so its other weights stay bf16; fp8 weights stay fp8 and are upcast to the input dtype in each forward.
    """
    for tensor in [*model.parameters(), *model.buffers()]:
        if tensor.is_floating_point() and tensor.dtype not in (dtype, torch.float8_e4m3fn):
            tensor.data = tensor.data.to(dtype)


def module_bytes(model: torch.nn.Module) -> int:
    """Bytes of a model's parameters and buffers, each storage once (bitsandbytes' packed 4-bit data included)."""
    seen = {t.data_ptr(): t.nbytes for t in [*model.parameters(), *model.buffers()] if t.device.type != "meta"}
    return sum(seen.values())


class ModelResidency:
    """Builds models through ltx-pipelines' ModelLedger and owns how long they live."""

    def __init__(
        self,
        bundle: Bundle,
        device: torch.device,
        compute_dtype: torch.dtype,
        on_loading: Callable[[str | None], None] | None = None,
        cuda_graphs: bool = False,
        cold_start_cache_dir: Path | None = None,
    ) -> None:
        self.bundle = bundle
        # cold-start keeps the fp8 transformer and processor and the nf4 text encoder here as built (built_states)
        self.cold_start_cache_dir = cold_start_cache_dir
        self.cuda_graphs = cuda_graphs and device.type == "cuda"  # replay the transformer blocks (cuda_graphs.py)
        self.device = device
        self.compute_dtype = compute_dtype
        self.build_counts: Counter[str] = BuildCounts()
        self.disk_reads: Counter[str] = Counter()  # builds that read their weights from disk (not the host cache)
        self.kept_builds: Counter[str] = Counter()  # builds from a kept state (built_states), not the bundle's files
        self.uploaded_ahead: Counter[str] = Counter()  # host-cached: LoRA pairs uploaded during stage 1, then used
        self._on_loading = on_loading or (lambda _name: None)
        self._held: dict[str, torch.nn.Module] = {}
        self._adapters: dict[str, LowRankAdapter] = {}
        self._kept: set[str] = set()  # held past their block until the request ends (the shared transformer)
        self._config: ModelConfig | None = None
        self._ledgers = None
        self._registry: PinnedStateDictRegistry | None = None
        # host-cached: the models kept as built in pinned memory instead of their files' state (nf4 Gemma, fp8
        # processor); the rest of the host cache is the registry
        self._host_states: dict[str, dict[str, torch.Tensor]] = {}
        self._measured_peaks: dict[tuple, int] = {}
        self._fused: set[int] = set()  # id() of held transformers whose LoRA is fused in place
        self.stage_2_lora: str | None = None  # how the last stage 2 applied the distilled LoRA
        self._lock = threading.RLock()
        # host-cached: the LoRA pairs on the device before stage 2 needs them, with the event their copies record
        self._ahead: tuple[dict, torch.cuda.Event | None] | None = None
        # Pay ltx-pipelines' import (seconds: it pulls in transformers) at construction, not in the first request.
        import ltx_pipelines.utils.model_ledger  # noqa: F401

    @property
    def config(self) -> ModelConfig | None:
        return self._config

    # -- configuration -------------------------------------------------------------------------------------------
    def configure(self, config: ModelConfig) -> None:
        """Switch quantization/residency/LoRA; what the old config held is released before anything new is built."""
        assert config.residency in CONCRETE_MODES, f"resolve {config.residency} first (plan_residency)"
        with self._lock:
            old = self._config
            if config == old:
                return
            if (
                old is not None
                and config.lora_mode is LoraMode.ADAPTER
                and old
                == ModelConfig(
                    config.quantization,
                    config.residency,
                    old.distilled_lora_strength,
                    config.lora_mode,
                    config.text_encoder_quantization,
                )
            ):
                # Only the adapter's strength changed: drop the adapter, keep the transformer and the host cache.
                self._drop_adapters()
                self._config = config
                self._ledgers = self._make_ledgers(config)
                return
            self.release_all()
            self._drop_host_cache()
            self._config = config
            if config.residency is Residency.HOST_CACHED:
                self._registry = PinnedStateDictRegistry(pin=torch.cuda.is_available())
            self._ledgers = self._make_ledgers(config)

    def _make_ledgers(self, config: ModelConfig, past_the_host_cache: bool = False):
        """ltx-pipelines' ModelLedger for stage 1 and its LoRA-fused variant for stage 2, reading through the host
        cache (if any) unless `past_the_host_cache`."""
        from ltx_core.loader import LTXV_LORA_COMFY_RENAMING_MAP, LoraPathStrengthAndSDOps
        from ltx_pipelines.utils.model_ledger import ModelLedger

        stage_1 = ModelLedger(
            dtype=self.compute_dtype,
            device=self.device,
            checkpoint_path=str(self.bundle.checkpoint),
            gemma_root_path=str(self.bundle.gemma_root),
            spatial_upsampler_path=str(self.bundle.spatial_upsampler),
            registry=None if past_the_host_cache else self._registry,
            quantization=policy_for(config.quantization),
        )
        distilled = LoraPathStrengthAndSDOps(
            str(self.bundle.distilled_lora), config.distilled_lora_strength, LTXV_LORA_COMFY_RENAMING_MAP
        )
        return stage_1, stage_1.with_additional_loras((distilled,))

    # -- lifetimes -----------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def request(self) -> Iterator[None]:
        """One generation. Modes other than persistent leave nothing on the device after it, error or not."""
        self.stage_2_lora = None
        try:
            yield
        finally:
            with self._lock:
                self._drop_uploaded_ahead()
                self._kept.clear()
                if self._config is not None and self._config.residency is not Residency.PERSISTENT:
                    self.release_all()

    def use(self, name: str, on_build: Callable[[str], contextlib.AbstractContextManager] | None = None):
        """Yield model `name`, building (or uploading) it if it is not held; non-persistent modes free it after."""
        return self._use(canonical(name), on_build, label=name)

    @contextlib.contextmanager
    def _use(self, name: str, on_build, label: str) -> Iterator:
        assert self._config is not None, "configure() first"
        with self._lock:
            model = self._held.get(name)
            if model is None:
                build_scope = on_build(name) if on_build else contextlib.nullcontext()
                with build_scope:
                    model = self._build(name, label)
                self._held[name] = model
                self._upload_lora_ahead(name)
        try:
            yield model
        finally:
            del model
            match self._config.residency:
                case Residency.COLD_START | Residency.HOST_CACHED:
                    if name not in self._kept:
                        self.release(name)
                case Residency.PERSISTENT:
                    pass
                case Residency.AUTO:
                    raise AssertionError("configure() refuses auto")
                case _:
                    assert_never(self._config.residency)

    @contextlib.contextmanager
    def stage_transformer(self, stage: int, on_build=None) -> Iterator[torch.nn.Module]:
        """The transformer for stage 1 or 2: in adapter mode one model, the LoRA adapter off for 1 and on for 2.

        Cold-start and host-cached keep it from stage 1 to stage 2 (it is read or uploaded once per request) and
        free it when stage 2 ends; the upsampler and video encoder run beside it in between (small next to it).
        In fused mode stage 2 gets its own fused copy, built the way ltx-pipelines does (for comparison).
        """
        assert stage in (1, 2), stage
        label = f"transformer_stage_{stage}"
        match self._config.lora_mode:
            case LoraMode.FUSED:
                with self._use("transformer" if stage == 1 else "transformer_stage_2", on_build, label) as model:
                    if stage == 2:
                        self.stage_2_lora = "fused copy"
                    yield model
            case LoraMode.ADAPTER:
                with self._lock:
                    (self._kept.add if stage == 1 else self._kept.discard)("transformer")
                with self._use("transformer", on_build, label) as model:
                    if stage == 2 and self.fuses_in_place():
                        self._fuse_for_stage_2(model, on_build)
                        yield model
                        return
                    adapter = self._adapter_for(model, on_build) if stage == 2 else self._adapters.get("transformer")
                    if stage == 2:
                        self.stage_2_lora = "adapter" if adapter else "none (strength 0)"
                    with adapter.active(stage == 2) if adapter else contextlib.nullcontext():
                        yield model
            case _:
                assert_never(self._config.lora_mode)

    def fuses_in_place(self) -> bool:
        """Stage 2 of a per-request mode on CUDA fuses the LoRA into the transformer it is about to free anyway:
        its peak is then the transformer alone, not transformer + adapter (3.1 GiB fp8 for LTX-2.3). fp8 weights
        fuse with ltx-core's Triton kernel (sm_89+); older GPUs keep the adapter. Elsewhere (CPU) there is no VRAM
        peak to lower, and the adapter keeps every mode's output identical to persistent's."""
        config = self._config
        if (
            config is None
            or config.residency not in (Residency.COLD_START, Residency.HOST_CACHED)
            or config.distilled_lora_strength == 0
            or self.device.type != "cuda"
        ):
            return False
        return not stores_fp8(config.quantization) or torch.cuda.get_device_capability(self.device) >= (8, 9)

    def _fuse_for_stage_2(self, model: torch.nn.Module, on_build) -> None:
        """Read the LoRA (through the host cache when there is one) and fuse it in place, once per build."""
        if id(model) in self._fused:
            return
        with self._lora_pairs(on_build) as pairs, torch.inference_mode(False), torch.no_grad():
            fused = fuse_in_place_(model, pairs, self._config.distilled_lora_strength)
        logger.info("distilled LoRA fused in place into %d linears for stage 2", fused)
        self._fused.add(id(model))
        self.build_counts[ADAPTER] += 1
        self.stage_2_lora = "fused in place"

    @contextlib.contextmanager
    def _lora_pairs(self, on_build) -> Iterator[dict]:
        """The distilled LoRA's (A, B) pairs, read with ltx-core's own loader (builder.load_sd: through the host cache
        when there is one; host-cached has uploaded them during stage 1), as the `lora_adapter` build phase; a LoRA
        that does not fit the transformer is a BundleError naming the file."""
        scope = on_build(ADAPTER) if on_build else contextlib.nullcontext()
        self._on_loading(ADAPTER)
        try:
            with scope:
                pairs = self._take_uploaded_ahead()
                yield self._read_lora_pairs() if pairs is None else pairs
        except LoraTargetError as exc:
            raise BundleError(f"{self.bundle.distilled_lora.name}: {exc}; run check-bundle") from exc
        finally:
            self._on_loading(None)

    def _read_lora_pairs(self) -> dict:
        stage_1, _ = self._ledgers
        builder = stage_1.transformer_builder
        return load_lora_pairs(
            str(self.bundle.distilled_lora),
            lambda paths, sd_ops: builder.load_sd(paths, builder.registry, torch.device("cpu"), sd_ops),
        )

    # -- host-cached: the LoRA pairs uploaded during stage 1 -------------------------------------------------------
    def _upload_lora_ahead(self, name: str) -> None:
        """host-cached: once the stage transformer is on the device, start uploading the distilled LoRA's pairs
        (pinned in the host cache: ~6 GB of bf16 for LTX-2.3) on a side CUDA stream, so the copies run during stage
        1 and stage 2 only fuses them. Stage 1's peak grows by the pairs (~25 GiB in all, under persistent's).

        The copies are issued from this thread (asynchronous, a few ms of Python). Doing more ahead on a helper
        thread (the transformer's upload during prompt encoding, cold-start's LoRA read during stage 1) was
        measured slower: the helper's Python held the GIL against the main thread's kernel launches.
        """
        config = self._config
        if (
            name != "transformer"
            or config.residency is not Residency.HOST_CACHED
            or config.lora_mode is not LoraMode.ADAPTER
            or not config.distilled_lora_strength
            or self._ahead is not None
        ):
            return
        stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
            pairs = {
                stem: (a.to(self.device, non_blocking=True), b.to(self.device, non_blocking=True))
                for stem, (a, b) in self._read_lora_pairs().items()
            }
        ready = None
        if stream is not None:
            ready = torch.cuda.Event()
            ready.record(stream)
        self._ahead = (pairs, ready)

    def _take_uploaded_ahead(self) -> dict | None:
        """The pairs uploaded ahead, usable on this stream (None if there are none)."""
        if self._ahead is None:
            return None
        (pairs, ready), self._ahead = self._ahead, None
        self.uploaded_ahead[ADAPTER] += 1
        if ready is not None:
            current = torch.cuda.current_stream(self.device)
            current.wait_event(ready)
            for tensor in (t for pair in pairs.values() for t in pair):
                tensor.record_stream(current)  # allocated on the side stream, used (and freed) on this one
        return pairs

    def _drop_uploaded_ahead(self) -> None:
        """At the end of a request stopped before stage 2: free the pairs once their copies are done."""
        if self._ahead is not None:
            _, ready = self._ahead
            if ready is not None:
                ready.synchronize()
            self._ahead = None

    def _adapter_state(self) -> tuple:
        """What of the adapter changes the blocks' code path: a graph captured with it on cannot replay it off."""
        adapter = self._adapters.get("transformer")
        return (id(adapter), adapter.enabled) if adapter else (None, False)

    def _invalidate_graphs(self) -> None:
        for model in self._held.values():
            graphed = getattr(model, "velocity_model", model).__dict__.get("_process_transformer_blocks")
            if isinstance(graphed, GraphedBlocks):
                graphed.invalidate()

    def adapter(self, name: str = "transformer") -> LowRankAdapter | None:
        return self._adapters.get(name)

    def _adapter_for(self, model: torch.nn.Module, on_build) -> LowRankAdapter | None:
        """Attach the distilled LoRA to the held transformer at its first stage-2 use (stage 1's peak never has it)."""
        strength = self._config.distilled_lora_strength
        with self._lock:
            adapter = self._adapters.get("transformer")
            if adapter is not None or strength == 0:
                return adapter  # strength 0: stage 2 runs the base weights, as ltx-core's fusion does
            with self._lora_pairs(on_build) as pairs:
                adapter = LowRankAdapter(
                    model, pairs, strength, self.compute_dtype, store_fp8=stores_fp8(self._config.quantization)
                )
            self._adapters["transformer"] = adapter
            self._invalidate_graphs()  # the linears' forwards changed
            self.build_counts[ADAPTER] += 1
            return adapter

    def _build(self, name: str, label: str) -> torch.nn.Module:
        stage_1, stage_2 = self._ledgers
        loads_before = sum(self._registry.loads.values()) if self._registry is not None else None
        if self._registry is not None and self._kept_as_built(name) and name not in self._host_states:
            # host-cached keeps it as built: its first build reads the files past the registry, which would
            # otherwise hold their bf16 state as well
            stage_1, _ = self._make_ledgers(self._config, past_the_host_cache=True)
            self._registry.loads[f"{name} (as built)"] += 1
        factories = {
            "text_encoder": lambda: self._build_text_encoder(stage_1),
            "embeddings_processor": lambda: self._build_embeddings_processor(stage_1),
            "audio_encoder": stage_1.audio_encoder,
            "video_encoder": stage_1.video_encoder,
            "transformer": stage_1.transformer,
            "spatial_upsampler": stage_1.spatial_upsampler,
            "transformer_stage_2": stage_2.transformer,
            "video_decoder": stage_1.video_decoder,
        }
        if name not in factories:
            raise KeyError(f"unknown model {name!r}: one of {', '.join(MODEL_NAMES)}")
        self._on_loading(name)
        logger.info("building %s (%s)", name, self._config)
        # Only the Gemma parts are built at the bundle's Gemma size (gemma_architecture patches ltx-core's config)
        gemma = gemma_architecture(self.bundle) if name in GEMMA_PARTS else contextlib.nullcontext()
        try:
            with gemma, torch.inference_mode(False):
                model = self._build_kept_or_new(name, factories[name])
        except (ValueError, KeyError, RuntimeError, NotImplementedError) as exc:
            if isinstance(exc, torch.OutOfMemoryError):
                raise
            raise BundleError(_explain_build_failure(label, self.bundle, exc)) from exc
        finally:
            self._on_loading(None)
        _assert_materialized(label, model, self.bundle)
        if name.startswith("transformer"):
            _cast_unquantized_(model, self.compute_dtype)
            if self.cuda_graphs:
                GraphedBlocks(model.velocity_model, extra_key=self._adapter_state)
        model.requires_grad_(False)
        self.build_counts[name] += 1
        if loads_before is None or sum(self._registry.loads.values()) > loads_before:
            self.disk_reads[name] += 1
        return model

    def _build_text_encoder(self, ledger):
        """bf16 through ModelLedger.text_encoder(); nf4: ltx-core's builder onto the CPU in bf16, 4-bit linears swapped
        in, then the move to the device, which is where bitsandbytes quantizes (the device never sees bf16 linears).
        Either way the parts a text prompt never runs are dropped (text_path)."""
        match self._config.text_encoder_quantization:
            case TextEncoderQuantization.BF16:
                text_encoder = ledger.text_encoder()
                logger.info("text encoder: dropped %s", drop_unused_gemma_parts_(text_encoder))
                return text_encoder
            case TextEncoderQuantization.NF4:
                text_encoder = ledger.text_encoder_builder.build(device=torch.device("cpu"), dtype=torch.bfloat16)
                logger.info("text encoder: dropped %s", drop_unused_gemma_parts_(text_encoder))
                swapped = swap_in_linear4bit_(text_encoder, self.compute_dtype)
                logger.info("text encoder: %d linears in nf4", swapped)
                return text_encoder.to(self.device).eval()
            case _:
                assert_never(self._config.text_encoder_quantization)

    # -- models kept as built (built_states) ----------------------------------------------------------------------
    def _kept_as_built(self, name: str) -> bool:
        """Whether this config keeps `name` as built: the builds that read and cast more than they hold (fp8
        transformer and processor: bf16 files; nf4 text encoder: the bf16 Gemma). host-cached keeps them in pinned
        memory, cold-start in files under cold_start_cache_dir."""
        config = self._config
        per_request = config.residency is Residency.HOST_CACHED or (
            config.residency is Residency.COLD_START and self.cold_start_cache_dir is not None
        )
        kept = {
            "transformer": stores_fp8(config.quantization),
            "embeddings_processor": stores_fp8(config.quantization),
            "text_encoder": config.text_encoder_quantization is TextEncoderQuantization.NF4,
        }
        return per_request and kept.get(name, False)

    def _kept_folder(self, name: str) -> Path | None:
        """cold-start: where `name` is kept as built; None when it is not (other modes, other models)."""
        config = self._config
        if config.residency is not Residency.COLD_START or not self._kept_as_built(name):
            return None
        stage_1, _ = self._ledgers
        paths = (
            list(stage_1.text_encoder_builder.model_path) if name == "text_encoder" else [str(self.bundle.checkpoint)]
        )
        recipe = {
            "quantization": config.quantization.value,
            "text_encoder": config.text_encoder_quantization.value,
            "dtype": str(self.compute_dtype),
            "versions": _library_versions(),
        }
        return built_states.state_folder(self.cold_start_cache_dir, name, paths, recipe)

    def _build_kept_or_new(self, name: str, build: Callable[[], torch.nn.Module]) -> torch.nn.Module:
        if name in self._host_states:
            self.kept_builds[name] += 1
            return self._rebuild(name, self._host_states[name])
        if self._config.residency is Residency.HOST_CACHED and self._kept_as_built(name):
            model = build()
            self._host_states[name] = built_states.host_copy(model, pin=torch.cuda.is_available())
            return model
        folder = self._kept_folder(name)
        if folder is not None and built_states.is_kept(folder):
            try:
                model = self._rebuild(name, built_states.load_state(folder, self.device))
                self.kept_builds[name] += 1
                return model
            except built_states.UnreadableState as exc:
                logger.warning("ignoring the unreadable kept %s in %s (%s); building it again", name, folder, exc)
                shutil.rmtree(folder, ignore_errors=True)
        model = build()
        if folder is not None:
            self._keep(name, model, folder)
        return model

    def _rebuild(self, name: str, state: dict[str, torch.Tensor]) -> torch.nn.Module:
        """`name` from its kept state: the meta model its ModelLedger builder makes, the kept tensors assigned."""
        stage_1, _ = self._ledgers
        match name:
            case "text_encoder":
                builder = stage_1.text_encoder_builder
                return built_states.build_nf4_text_encoder(builder, state, self.device, self.compute_dtype)
            case "transformer":
                from ltx_core.model.transformer.model import X0Model

                builder = stage_1.transformer_builder
                policy = policy_for(self._config.quantization)
                module_ops = (*builder.module_ops, *policy.module_ops)  # as ModelLedger.transformer() composes them
                return built_states.build_with_state(
                    lambda: X0Model(builder.meta_model(builder.model_config(), module_ops)), state, self.device, name
                )
            case "embeddings_processor":
                builder = stage_1.embeddings_processor_builder
                processor = built_states.build_with_state(
                    lambda: builder.meta_model(builder.model_config(), builder.module_ops), state, self.device, name
                )
                store_linears_in_fp8_(processor)  # the weights are fp8 already; this puts the upcasting forward on
                return processor
            case _:
                raise AssertionError(f"{name} is never kept")

    def _keep(self, name: str, model: torch.nn.Module, folder: Path) -> None:
        """Write the built model's state once. A failure (disk full, read-only folder) or too little free space is
        logged and never fails the request; later cold starts then build from the bundle."""
        needed = module_bytes(model) + KEEP_FREE_BYTES
        try:
            folder.parent.mkdir(parents=True, exist_ok=True)
            if dropped := built_states.drop_other_states(folder):
                logger.info("dropped the kept %s of another configuration: %s", name, ", ".join(dropped))
            free = shutil.disk_usage(folder.parent).free
            if free < needed:
                logger.warning(
                    "not keeping %s in %s: %.1f GiB free, %.1f GiB needed (its size + %.0f GiB kept free)",
                    name, folder.parent, free / GIB, needed / GIB, KEEP_FREE_BYTES / GIB,
                )  # fmt: skip
                return
            started = time.perf_counter()
            self._on_loading(f"{name} (keeping it as built for later cold starts)")
            written = built_states.save_model_state(model, folder)
        except Exception as exc:  # writing the cache must never fail the request
            logger.warning("could not keep %s in %s (%s); cold starts build it from the bundle", name, folder, exc)
            self.cold_start_cache_dir = None
            return
        logger.info(
            "kept %s as built in %s (%.2f GiB, %.1f s): later cold starts read it instead of the bundle's files",
            name, folder, written / GIB, time.perf_counter() - started,
        )  # fmt: skip

    def _build_embeddings_processor(self, ledger):
        """ModelLedger's processor; with an fp8 quantization built on the CPU, its linears stored in fp8, then moved
        (the device never holds its bf16 weights)."""
        if not stores_fp8(self._config.quantization):
            return ledger.gemma_embeddings_processor()
        processor = ledger.embeddings_processor_builder.build(device=torch.device("cpu"), dtype=self.compute_dtype)
        logger.info("embeddings processor: %d linears in fp8", store_linears_in_fp8_(processor))
        return processor.to(self.device).eval()

    def release(self, name: str) -> None:
        name = canonical(name)
        with self._lock:
            adapter = self._adapters.pop(name, None)
            if adapter is not None:
                adapter.detach()
            model = self._held.pop(name, None)
            if model is not None:
                self._fused.discard(id(model))
                dismantle_(model)
                del model
                free_device_memory(self.device, collect=False)

    def release_all(self) -> None:
        """Free every model held on the device (the host cache, if any, stays)."""
        with self._lock:
            self._drop_adapters()
            self._fused.clear()
            if self._held:
                for model in self._held.values():
                    dismantle_(model)
                self._held.clear()
                free_device_memory(self.device, collect=False)

    def _drop_adapters(self) -> None:
        for adapter in self._adapters.values():
            adapter.detach()
        if self._adapters:
            self._adapters.clear()
            self._invalidate_graphs()

    def _drop_host_cache(self) -> None:
        had_cache = bool(self._host_states) or self._registry is not None
        self._host_states.clear()
        if self._registry is not None:
            self._registry.clear()
            self._registry = None
            self._ledgers = None
            gc.collect()
        if had_cache:
            release_pinned_host_memory()

    # -- what is held ----------------------------------------------------------------------------------------------
    def resident(self) -> tuple[str, ...]:
        """Names of the models held on the device right now, in flow order."""
        return tuple(name for name in MODEL_NAMES if name in self._held)

    def held(self, name: str) -> torch.nn.Module | None:
        return self._held.get(canonical(name))

    def host_cache_bytes(self) -> int:
        as_built = sum(built_states.state_bytes(state) for state in self._host_states.values())
        return (self._registry.nbytes() if self._registry is not None else 0) + as_built

    def host_cache_loads(self) -> Counter:
        """Disk reads into the host cache per sd_ops name (each should be 1 however many requests ran)."""
        return Counter(self._registry.loads) if self._registry is not None else Counter()

    def describe(self) -> dict:
        """What is resident where, for the UI and the status endpoint (bytes)."""
        with self._lock:
            config = self._config
            adapter = self._adapters.get("transformer")
            adapter_bytes = adapter.summary.bytes if adapter else 0
            return {
                "mode": config.residency.value if config else None,
                "lora_mode": config.lora_mode.value if config else None,
                "text_encoder_quantization": config.text_encoder_quantization.value if config else None,
                # The adapter's A and B are buffers on the transformer's linears: counted once, as lora_adapter.
                "device_models": {
                    name: module_bytes(self._held[name]) - (adapter_bytes if name == "transformer" else 0)
                    for name in self.resident()
                },
                "lora_adapter": adapter_bytes or None,
                "host_cache_bytes": self.host_cache_bytes(),
                "kept_as_built": self.kept_as_built(),
            }

    def kept_as_built(self) -> dict[str, int]:
        """cold-start: the models of the current config kept on disk as built, with their bytes (built_states)."""
        if self._config is None or self._ledgers is None:
            return {}
        kept = {}
        for name in ("text_encoder", "embeddings_processor", "transformer"):
            try:
                folder = self._kept_folder(name)
            except OSError:  # a bundle file gone: the status still answers (the next build says what is wrong)
                return {}
            if folder is not None and built_states.is_kept(folder):
                kept[name] = built_states.kept_bytes(folder)
        return kept

    def preload(self) -> None:
        """Build every model the current config keeps (persistent), the stage transformer and its adapter too."""
        for name in (
            "text_encoder",
            "embeddings_processor",
            "audio_encoder",
            "video_encoder",
            "spatial_upsampler",
            "video_decoder",
        ):
            with self.use(name):
                pass
        for stage in (1, 2):
            with self.stage_transformer(stage):
                pass

    # -- auto -------------------------------------------------------------------------------------------------------
    def record_peak(self, config: ModelConfig, shape: tuple[int, int, int], peak_bytes: int | None) -> None:
        """A finished request's measured device peak; plan_residency prefers it to the estimate for that shape."""
        if peak_bytes is not None:
            self._measured_peaks[(config, shape)] = peak_bytes

    def plan(
        self,
        config: ModelConfig,
        shape: tuple[int, int, int],
        budget_bytes: int,
        budget_source: str,
        host_available_bytes: int,
    ) -> ResidencyPlan:
        """Resolve `auto` for this request (config.residency is ignored)."""
        estimate = estimate_memory(self.bundle, config, shape, self.compute_dtype)
        measured = {}
        for mode in CONCRETE_MODES:
            key = (
                ModelConfig(
                    config.quantization,
                    mode,
                    config.distilled_lora_strength,
                    config.lora_mode,
                    config.text_encoder_quantization,
                ),
                shape,
            )
            if key in self._measured_peaks:
                measured[mode] = self._measured_peaks[key]
        cached = self.host_cache_bytes() if self._config and self._config.residency is Residency.HOST_CACHED else 0
        return plan_residency(
            estimate,
            budget_bytes=budget_bytes,
            budget_source=budget_source,
            host_available_bytes=host_available_bytes + cached,
            measured=measured,
            lora_mode=config.lora_mode,
        )


# -- the estimator behind auto ---------------------------------------------------------------------------------------
GIB = 1024**3
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
        c = self.components
        second = c["lora_adapter"] if lora_mode is LoraMode.ADAPTER else c["transformer_stage_2"]
        if mode is Residency.PERSISTENT:
            flow = (
                "text_encoder",
                "embeddings_processor",
                "audio_encoder",
                "video_encoder",
                "transformer",
                "spatial_upsampler",
                "video_decoder",
            )
            return sum(c[name] for name in flow) + second + self.activations
        # Built and freed per block (DESIGN.md flow); the transformer is kept from stage 1 through stage 2.
        kept = c["transformer"] if lora_mode is LoraMode.ADAPTER else 0
        # host-cached uploads the LoRA pairs it fuses for stage 2 during stage 1 (ModelResidency._upload_lora_ahead)
        ahead = c.get("lora_pairs", 0) if mode is Residency.HOST_CACHED and lora_mode is LoraMode.ADAPTER else 0
        return max(
            c["text_encoder"],
            c["embeddings_processor"],
            c["audio_encoder"],
            c["transformer"] + self.activations + ahead,
            kept + c["video_encoder"] + c["spatial_upsampler"],
            (c["transformer"] if lora_mode is LoraMode.ADAPTER else 0) + second + self.activations,
            c["video_decoder"] + self.activations,
        )


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
        bundle, config.quantization, config.text_encoder_quantization, compute_dtype
    )
    itemsize = torch.empty((), dtype=compute_dtype).element_size()
    w, h, frames = shape
    tokens = (w // 32) * (h // 32) * ((frames - 1) // 8 + 1)
    activations = ACTIVATION_ELEMENTS_PER_TOKEN_WIDTH * tokens * width * itemsize
    return MemoryEstimate(dict(components), activations, host)


@functools.lru_cache(maxsize=8)
def _weight_bytes(
    bundle: Bundle, quantization: Quantization, text_encoder: TextEncoderQuantization, compute_dtype: torch.dtype
) -> tuple[tuple[tuple[str, int], ...], int, int]:
    """((component, device bytes), ...), host-cache bytes, transformer width: headers and meta models only.

    Device bytes count only what the model keeps (the checkpoint's transformer prefix also matches the embeddings
    connectors, which the transformer drops); the host cache holds whatever each builder's sd_ops loaded.
    """
    import json

    import safetensors
    from ltx_core.loader import LTXV_LORA_COMFY_RENAMING_MAP
    from ltx_pipelines.utils.model_ledger import ModelLedger

    ledger = ModelLedger(
        dtype=compute_dtype,
        device=torch.device("cpu"),
        checkpoint_path=str(bundle.checkpoint),
        gemma_root_path=str(bundle.gemma_root),
        spatial_upsampler_path=str(bundle.spatial_upsampler),
    )
    itemsize = torch.empty((), dtype=compute_dtype).element_size()
    policy = policy_for(quantization)

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
        if is_dropped_gemma_key(key):
            return 0
        nf4 = text_encoder is TextEncoderQuantization.NF4 and key.endswith(".weight")
        return elements * (NF4_BYTES_PER_WEIGHT if nf4 and is_nf4_target(key.removesuffix(".weight")) else itemsize)

    def processor_bytes(key: str, elements: int, _dtype: torch.dtype) -> int:
        return elements * (1 if stores_fp8(quantization) and key in linear_weights else itemsize)

    components, host = {}, 0
    for name, builder, device_bytes in (
        ("text_encoder", ledger.text_encoder_builder, text_encoder_bytes),
        ("embeddings_processor", ledger.embeddings_processor_builder, processor_bytes),
        ("audio_encoder", ledger.audio_encoder_builder, None),
        ("video_encoder", ledger.vae_encoder_builder, None),
        ("transformer", ledger.transformer_builder, fp8_or_compute),
        ("spatial_upsampler", ledger.upsampler_builder, None),
        ("video_decoder", ledger.vae_decoder_builder, None),
    ):
        components[name], stored = weigh(builder, device_bytes or (lambda _k, elements, _d: elements * itemsize))
        # host-cached keeps the nf4 text encoder, the fp8 processor and transformer as built (what the device holds)
        as_built = (name == "text_encoder" and text_encoder is TextEncoderQuantization.NF4) or (
            name in ("embeddings_processor", "transformer") and stores_fp8(quantization)
        )
        host += components[name] if as_built else stored
    components["transformer_stage_2"] = components["transformer"]
    lora = _header_tensors([str(bundle.distilled_lora)], LTXV_LORA_COMFY_RENAMING_MAP)
    # fp8 configs keep the adapter in fp8 (plus one scale per row, < 0.3% at rank 384: not counted).
    components["lora_adapter"] = sum(elements for _, elements, _ in lora) * (
        1 if stores_fp8(quantization) else itemsize
    )
    components["lora_pairs"] = sum(elements * size(dtype) for _, elements, dtype in lora)  # as read, to fuse
    host += components["lora_pairs"]
    with safetensors.safe_open(str(bundle.checkpoint), framework="pt") as f:
        transformer_config = json.loads((f.metadata() or {}).get("config", "{}")).get("transformer", {})
    width = transformer_config.get("num_attention_heads", 32) * transformer_config.get("attention_head_dim", 128)
    return tuple(components.items()), host, width


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
