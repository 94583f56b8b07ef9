"""The residency manager: the one owner of model lifetimes. Configure it, then inside one `with request()` per
generation ask for each model in a `with use(name)` (or `stage_transformer(stage)`) block; `status()` is a snapshot
that never waits for a build."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ltx_demo.checkpoints import Bundle
from ltx_demo.cuda_graphs import GraphedBlocks
from ltx_demo.quantization import stores_fp8
from ltx_demo.residency import estimate
from ltx_demo.residency.builds import BuildCounts, dismantle_, free_device_memory, module_bytes
from ltx_demo.residency.kept import DiskKept
from ltx_demo.residency.modes import CONCRETE_MODES, MODES, Mode
from ltx_demo.residency.specs import MODEL_NAMES, ModelConfig, flow_models, spec
from ltx_demo.residency.stage2_lora import DistilledLora, Stage2Lora
from ltx_demo.types import AttentionBackend, CompileBlocks, CudaGraphs, Flow, LoraMode, Residency

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class StageTransformer:
    model: torch.nn.Module
    lora: Stage2Lora | None  # stage 2: how the distilled LoRA was applied; stage 1: None


@dataclass(frozen=True, slots=True)
class ResidencyStatus:
    """What is held and being built, as of the last change (bytes)."""

    resident: tuple[str, ...] = ()  # flow order
    loading: str | None = None
    details: dict = field(default_factory=dict)  # mode, device_models, lora_adapter, host cache, kept as built


class ModelManager:
    """Builds models through ltx-pipelines' ModelLedger (via the current mode) and owns how long they live."""

    def __init__(
        self,
        bundle: Bundle,
        device: torch.device,
        compute_dtype: torch.dtype,
        cuda_graphs: CudaGraphs | bool = CudaGraphs.AUTO,
        cold_start_cache_dir: Path | None = None,
        attention: AttentionBackend = AttentionBackend.AUTO,
        compile_blocks: CompileBlocks | bool = CompileBlocks.AUTO,
    ) -> None:
        from ltx_demo import attention as attention_kernels

        self.bundle = bundle
        self.device = device
        self.compute_dtype = compute_dtype
        if isinstance(cuda_graphs, bool):
            cuda_graphs = CudaGraphs.ON if cuda_graphs else CudaGraphs.OFF
        self.cuda_graphs_setting = cuda_graphs  # replay the transformer blocks (cuda_graphs.py); graphs_for decides
        self.attention = attention_kernels.resolve(attention, device)  # the fast flow's transformer attention
        if isinstance(compile_blocks, bool):
            compile_blocks = CompileBlocks.ON if compile_blocks else CompileBlocks.OFF
        self.compile_blocks_setting = compile_blocks  # torch.compile each transformer block; compile_for decides
        self.counts = BuildCounts()
        self._disk = DiskKept(cold_start_cache_dir)
        self._loading_listeners: list[Callable[[str | None], None]] = []
        self._built_listeners: list[Callable[[str, torch.nn.Module], None]] = []
        self._lora = DistilledLora(
            bundle.distilled_lora.name,
            self._set_loading,
            self._invalidate_graphs,
            self.counts.builds,
            self.counts.uploaded_ahead,
        )
        self._mode: Mode | None = None
        self._held: dict[str, torch.nn.Module] = {}
        self._keep: set[str] = set()  # held past their block until the request ends (the stage transformer)
        self._measured_peaks: dict[tuple, int] = {}
        self._lock = threading.RLock()  # the job's thread; status() never takes it
        self._status = ResidencyStatus()
        # Pay ltx-pipelines' import (seconds: it pulls in transformers) at construction, not in the first request.
        import ltx_pipelines.utils.model_ledger  # noqa: F401

    # -- what the rest of the engine reads -------------------------------------------------------------------------
    @property
    def config(self) -> ModelConfig | None:
        return self._mode.config if self._mode else None

    @property
    def cold_start_cache_dir(self) -> Path | None:
        return self._disk.cache_dir

    @property
    def build_counts(self):
        return self.counts.builds

    @property
    def disk_reads(self):
        return self.counts.disk_reads

    @property
    def kept_builds(self):
        return self.counts.kept_builds

    @property
    def uploaded_ahead(self):
        return self.counts.uploaded_ahead

    def status(self) -> ResidencyStatus:
        """The last snapshot: an attribute read, never a lock (a build can take many seconds)."""
        return self._status

    def on_loading(self, listener: Callable[[str | None], None]) -> None:
        """Call `listener(name)` when a build starts and `listener(None)` when it ends."""
        self._loading_listeners.append(listener)

    def on_built(self, listener: Callable[[str, torch.nn.Module], None]) -> None:
        """Call `listener(name, model)` after each build (an upload or a rebuild from a kept state too)."""
        self._built_listeners.append(listener)

    def resident(self) -> tuple[str, ...]:
        """Names of the models held on the device right now, in flow order."""
        return tuple(name for name in MODEL_NAMES if name in self._held)

    def held(self, name: str) -> torch.nn.Module | None:
        return self._held.get(name)

    def adapter(self):
        return self._lora.adapter

    def fuses_in_place(self) -> bool:
        return self._mode is not None and self._mode.fuses_in_place()

    def lora_uploaded_ahead(self) -> bool:
        return self._lora.has_ahead()

    def host_cache_bytes(self) -> int:
        return self._mode.host_cache_bytes() if self._mode else 0

    def host_kept_as_built(self) -> dict[str, int]:
        """host-cached: the models its host cache holds as built, with their bytes."""
        return self._mode.kept_in_memory() if self._mode else {}

    def host_cache_pinned(self) -> bool:
        """Whether every tensor of the host cache is in pinned memory (each upload is then a DMA copy)."""
        return self._mode is not None and self._mode.host_cache_pinned()

    def host_cache_loads(self):
        """Disk reads into the host cache per sd_ops name (each should be 1 however many requests ran)."""
        return self._mode.host_cache_loads() if self._mode else {}

    def graphs_for(self, config: ModelConfig) -> bool:
        """Whether the fast flow's transformer replays CUDA graphs under `config`: auto turns them on for persistent
        residency (the models and their graphs stay; per-request modes would capture again for every request)."""
        if self.device.type != "cuda" or config.flow is not Flow.FAST:
            return False
        match self.cuda_graphs_setting:
            case CudaGraphs.ON:
                return True
            case CudaGraphs.OFF:
                return False
            case CudaGraphs.AUTO:
                return config.residency is Residency.PERSISTENT

    def compile_for(self, config: ModelConfig) -> bool:
        """Whether the fast flow's transformer blocks are torch.compile'd under `config`: on compiles on any device;
        auto compiles for persistent residency on CUDA, the configuration measured on the GPU (types.CompileBlocks;
        per-request modes reuse the graphs across their rebuilds on CPU, tests/test_compiled_blocks.py, but their
        compiled speed on a GPU is not measured yet)."""
        if config.flow is not Flow.FAST:
            return False
        match self.compile_blocks_setting:
            case CompileBlocks.ON:
                return True
            case CompileBlocks.OFF:
                return False
            case CompileBlocks.AUTO:
                return self.device.type == "cuda" and config.residency is Residency.PERSISTENT

    @property
    def compiled_blocks(self) -> bool:
        """Whether the current config compiles the blocks (a compile that failed falls back: compile_failures)."""
        return self.config is not None and self.compile_for(self.config)

    @property
    def compile_failures(self) -> list[str]:
        """Why compiled blocks fell back to eager, every time one did (CompiledBlocks; each build compiles anew)."""
        return self.counts.compile_failures

    @property
    def cuda_graphs(self) -> bool:
        """Whether the current config replays graphs (before any config: whether --cuda-graphs on was asked)."""
        config = self.config
        if config is None:
            return self.device.type == "cuda" and self.cuda_graphs_setting is CudaGraphs.ON
        return self.graphs_for(config)

    # -- configuration ---------------------------------------------------------------------------------------------
    def configure(self, config: ModelConfig) -> None:
        """Switch quantization/residency/LoRA; what the old config held is released before anything new is built."""
        assert config.residency in CONCRETE_MODES, f"resolve {config.residency} first (estimate.plan_residency)"
        with self._lock:
            old = self.config
            if config == old:
                return
            same_but_strength = (
                old is not None
                and dataclasses.replace(config, distilled_lora_strength=old.distilled_lora_strength) == old
            )
            if same_but_strength and config.lora_mode is LoraMode.ADAPTER:
                self._lora.detach()  # keep the transformer and the host cache
                self._mode.retarget(config)
            else:
                self.release_all()
                if self._mode is not None:
                    self._mode.close()
                builder_args = {
                    "bundle": self.bundle,
                    "device": self.device,
                    "dtype": self.compute_dtype,
                    "counts": self.counts,
                    "on_loading": self._set_loading,
                    "graph_key": self._lora.graph_key if self.graphs_for(config) else None,
                    "attention": self.attention,
                    "compile_blocks": self.compile_for(config),
                }
                self._mode = MODES[config.residency](config, builder_args, self._disk)
            self._refresh_status()

    # -- lifetimes -------------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def request(self) -> Iterator[None]:
        """One generation. Per-request modes leave nothing on the device after it, error or not."""
        try:
            yield
        finally:
            with self._lock:
                self._lora.drop_ahead()
                self._keep.clear()
                if self._mode is not None and self._mode.per_request:
                    self.release_all()
                self._refresh_status()

    @contextlib.contextmanager
    def use(self, name: str, on_build=None, label: str | None = None) -> Iterator[torch.nn.Module]:
        """Model `name`, built (or uploaded) if it is not held, inside `on_build(name)` if given; per-request modes
        free it when the block ends (its memory is free then, whoever still names it: dismantle_)."""
        assert self._mode is not None, "configure() first"
        spec(name)
        with self._lock:
            model = self._held.get(name)
            if model is None:
                with on_build(name) if on_build else contextlib.nullcontext():
                    model = self._mode.build(name, label or name)
                self._held[name] = model
                self._mode.after_build(name, self._lora)
                for listener in self._built_listeners:
                    listener(name, model)
                self._refresh_status()
        try:
            yield model
        finally:
            if self._mode.frees_after_use(name) and name not in self._keep:
                self.release(name)

    @contextlib.contextmanager
    def stage_transformer(self, stage: int, on_build=None) -> Iterator[StageTransformer]:
        """The transformer for stage 1 or 2. Adapter mode: one model, the LoRA adapter off for 1 and on for 2 (or,
        where the mode fuses in place, fused for 2); per-request modes keep it from stage 1 to stage 2 and free it
        when stage 2 ends. Fused mode: stage 2 gets its own fused copy, built the way ltx-pipelines does."""
        assert stage in (1, 2), stage
        label = f"transformer_stage_{stage}"
        config = self._mode.config
        if config.lora_mode is LoraMode.FUSED:
            with self.use("transformer" if stage == 1 else "transformer_stage_2", on_build, label) as model:
                yield StageTransformer(model, Stage2Lora.FUSED_COPY if stage == 2 else None)
            return
        with self._lock:
            (self._keep.add if stage == 1 else self._keep.discard)("transformer")
        read_pairs = self._mode.builder.read_lora_pairs
        with self.use("transformer", on_build, label) as model:
            if stage == 1:
                adapter = self._lora.adapter
                if adapter is None and not self._mode.per_request:  # (only per-request modes fuse in place)
                    # Kept across requests, the adapter is attached before the first stage 1, not at the first
                    # stage 2: every stage 1 then runs the same linear forwards, so the blocks compiled (Dynamo
                    # guards on each forward's code) and the graphs captured by the first request serve the next.
                    adapter = self._attach_adapter(model, config, read_pairs, on_build)
                with adapter.active(False) if adapter else contextlib.nullcontext():
                    yield StageTransformer(model, None)
            elif self._mode.fuses_in_place():
                applied = self._lora.fuse_in_place(model, config.distilled_lora_strength, read_pairs, on_build)
                yield StageTransformer(model, applied)
            else:
                adapter = self._attach_adapter(model, config, read_pairs, on_build)
                with adapter.active(True) if adapter else contextlib.nullcontext():
                    yield StageTransformer(model, Stage2Lora.ADAPTER if adapter else Stage2Lora.NONE)

    def _attach_adapter(self, model, config: ModelConfig, read_pairs, on_build):
        """The LoRA adapter on the held transformer (attached now if it is not yet; None at strength 0)."""
        adapter = self._lora.adapter_for(
            model, config.distilled_lora_strength, self.compute_dtype, stores_fp8(config.quantization),
            read_pairs, on_build,
        )  # fmt: skip
        self._refresh_status()
        return adapter

    def release(self, name: str) -> None:
        with self._lock:
            model = self._held.pop(name, None)
            if model is not None:
                if name == "transformer":
                    self._lora.forget(model)
                dismantle_(model)
                del model
                free_device_memory(self.device, collect=False)
            self._refresh_status()

    def release_all(self) -> None:
        """Free every model held on the device (the host cache, if any, stays)."""
        with self._lock:
            self._lora.reset()
            if self._held:
                for model in self._held.values():
                    dismantle_(model)
                self._held.clear()
                free_device_memory(self.device, collect=False)
            self._refresh_status()

    def preload(self) -> None:
        """Build every model the current config keeps (persistent), the stage transformer and its adapter too."""
        for model_spec in flow_models(LoraMode.ADAPTER):
            if not model_spec.is_transformer:
                with self.use(model_spec.name):
                    pass
        for stage in (1, 2):
            with self.stage_transformer(stage):
                pass

    # -- auto ------------------------------------------------------------------------------------------------------
    def record_peak(self, config: ModelConfig, shape: tuple[int, int, int], peak_bytes: int | None) -> None:
        """A finished request's measured device peak; plan() prefers it to the estimate for that shape. The highest
        one is kept: a request whose texts came from the prompt cache built no Gemma, and peaked lower than the next
        request of that shape with a new prompt may."""
        if peak_bytes is not None:
            key = (config, shape)
            self._measured_peaks[key] = max(peak_bytes, self._measured_peaks.get(key, 0))

    def plan(self, config, shape, budget_bytes: int, budget_source: str, host_available_bytes: int):
        """Resolve `auto` for this request (config.residency is ignored)."""
        measured = {}
        for mode in CONCRETE_MODES:
            key = (dataclasses.replace(config, residency=mode), shape)
            if key in self._measured_peaks:
                measured[mode] = self._measured_peaks[key]
        return estimate.plan_residency(
            estimate.estimate_memory(self.bundle, config, shape, self.compute_dtype),
            budget_bytes=budget_bytes,
            budget_source=budget_source,
            host_available_bytes=host_available_bytes + self.host_cache_bytes(),  # ours to give back
            measured=measured,
            lora_mode=config.lora_mode,
        )

    # -- internals -------------------------------------------------------------------------------------------------
    def _set_loading(self, name: str | None) -> None:
        self._status = dataclasses.replace(self._status, loading=name)
        for listener in self._loading_listeners:
            listener(name)

    def _invalidate_graphs(self) -> None:
        """The linears' forwards changed (adapter attached or detached): graphs captured before are stale."""
        for model in self._held.values():
            graphed = getattr(model, "velocity_model", model).__dict__.get("_process_transformer_blocks")
            if isinstance(graphed, GraphedBlocks):
                graphed.invalidate()

    def _refresh_status(self) -> None:
        config = self.config
        adapter = self._lora.adapter
        adapter_bytes = adapter.summary.bytes if adapter else 0
        resident = self.resident()
        details = {
            "mode": config.residency.value if config else None,
            "lora_mode": config.lora_mode.value if config else None,
            "text_encoder_quantization": config.text_encoder_quantization.value if config else None,
            "text_models": config.text_models.value if config else None,
            # The adapter's A and B are buffers on the transformer's linears: counted once, as lora_adapter.
            "device_models": {
                name: module_bytes(self._held[name]) - (adapter_bytes if name == "transformer" else 0)
                for name in resident
            },
            "lora_adapter": adapter_bytes or None,
            "host_cache_bytes": self.host_cache_bytes(),
            "kept_as_built": self._mode.kept_on_disk() if self._mode else {},
        }
        self._status = ResidencyStatus(resident, self._status.loading, details)
