"""The residency modes, one class each: what a mode keeps, when it frees, where its models come from, whether stage 2
fuses the LoRA in place, and its device peak (for auto). The manager holds one mode at a time."""

from __future__ import annotations

import functools
import gc
import importlib.metadata
from collections import Counter
from collections.abc import Callable
from typing import ClassVar

import torch

from ltx_demo.quantization import stores_fp8
from ltx_demo.residency import kept
from ltx_demo.residency.builds import ModelBuilder, module_bytes, release_pinned_host_memory
from ltx_demo.residency.specs import MODEL_SPECS, ModelConfig, flow_models, spec
from ltx_demo.residency.stage2_lora import DistilledLora
from ltx_demo.types import LoraMode, Residency, TextModels


class Mode:
    """Persistent by default: every model stays on the device until the config changes."""

    residency: ClassVar[Residency] = Residency.PERSISTENT
    per_request: ClassVar[bool] = False  # frees each model after its block, and everything at the request's end

    def __init__(self, config: ModelConfig, builder_args: dict, disk: kept.DiskKept) -> None:
        self.config = config
        self._builder_args = builder_args  # bundle, device, dtype, counts, on_loading, graph_key
        self.builder = ModelBuilder(config=config, registry=self.registry, **builder_args)

    @property
    def registry(self) -> kept.PinnedStateDictRegistry | None:
        return None

    def retarget(self, config: ModelConfig) -> None:
        """Only the LoRA strength changed: new ledgers, the same host cache."""
        self.config = config
        self.builder = ModelBuilder(config=config, registry=self.registry, **self._builder_args)

    def build(self, name: str, label: str) -> torch.nn.Module:
        return self.builder.build(name, label, self.obtain(name))

    def obtain(self, name: str) -> Callable[[Callable[[], torch.nn.Module]], torch.nn.Module]:
        """Where a build of `name` gets its model (ModelBuilder.build's `obtain`): from the files, `fresh()`."""
        return lambda fresh: fresh()

    def _from_host_state(self, name: str, label: str, state: dict[str, torch.Tensor]) -> torch.nn.Module:
        """`name` uploaded from its state as built, kept in host memory (host-cached, persistent's text models)."""
        self.builder.counts.kept_builds[name] += 1
        return self.builder.build(name, label, lambda _fresh: self.builder.rebuild(name, state))

    def after_build(self, name: str, lora: DistilledLora) -> None:
        """Called once a model is held."""

    def frees_after_use(self, name: str) -> bool:
        """Whether `name` leaves the device when its `use` block ends (the manager's `keep` aside)."""
        return self.per_request

    def fuses_in_place(self) -> bool:
        return False

    def host_cache_bytes(self) -> int:
        return 0

    def host_cache_loads(self) -> Counter:
        return Counter()

    def kept_on_disk(self) -> dict[str, int]:
        return {}

    def kept_in_memory(self) -> dict[str, int]:
        return {}

    def host_cache_pinned(self) -> bool:
        return False

    def close(self) -> None:
        """The config is changing: drop what this mode keeps beyond the device (the manager released the models)."""

    @staticmethod
    def peak(components: dict[str, int], activations: int, lora_mode: LoraMode) -> int:
        """Every model of the flow at once, plus stage 2's LoRA (adapter or fused copy), plus the activations."""
        resident = sum(components[s.name] for s in flow_models(LoraMode.ADAPTER))
        return resident + _stage_2_extra(components, lora_mode) + activations


TEXT_MODELS = ("text_encoder", "embeddings_processor")  # what a prompt's encode uses, and nothing after it


def _stage_2_extra(components: dict[str, int], lora_mode: LoraMode) -> int:
    return components["lora_adapter"] if lora_mode is LoraMode.ADAPTER else components["transformer_stage_2"]


class KeptOnDisk:
    """For a mode over Mode: the models kept as built (specs) are written to files by their first build and read
    from them after (in any process, by any mode that keeps them: the folders are per config, not per mode), instead
    of being built from the bundle again. Cold-start reads them every request, persistent when the server starts."""

    def __init__(self, config: ModelConfig, builder_args: dict, disk: kept.DiskKept) -> None:
        self.disk = disk  # the manager's: a write failure stops keeping for every later config too
        super().__init__(config, builder_args, disk)

    def folder(self, name: str):
        """Where `name` is kept as built for this config; None when it is not kept."""
        if not spec(name).kept_as_built(self.config):
            return None
        recipe = {
            "quantization": self.config.quantization.value,
            "text_encoder": self.config.text_encoder_quantization.value,
            **({"whole_gemma": True} if self.config.whole_gemma else {}),  # absent: the names kept states had
            "dtype": str(self.builder.dtype),
            "versions": library_versions(),
        }
        return self.disk.folder(name, self.builder.source_paths(name), recipe)

    def obtain(self, name: str) -> Callable[[Callable[[], torch.nn.Module]], torch.nn.Module]:
        folder = self.folder(name)
        if folder is None:
            return super().obtain(name)

        def kept_or_fresh(fresh):
            state = self.disk.get(folder, name, self.builder.device)
            if state is not None:
                try:
                    model = self.builder.rebuild(name, state)
                    self.builder.counts.kept_builds[name] += 1
                    return model
                except kept.UnreadableState as exc:
                    self.disk.drop(folder, name, exc)
            model = fresh()
            self.disk.put(folder, name, model, module_bytes(model), self.builder.on_loading)
            return model

        return kept_or_fresh

    def kept_on_disk(self) -> dict[str, int]:
        out = {}
        for model_spec in MODEL_SPECS:
            try:
                folder = self.folder(model_spec.name)
            except OSError:  # a bundle file gone: the status still answers (the next build says what is wrong)
                return {}
            if folder is not None and kept.is_kept(folder):
                out[model_spec.name] = kept.kept_bytes(folder)
        return out


class Persistent(KeptOnDisk, Mode):
    """Every model stays on the device until the config changes; the first build after a start reads the models
    kept as built (KeptOnDisk), so a restarted server is ready sooner. With text_models on-host, Gemma and the
    embeddings processor (those of them kept as built) wait in host memory as built instead, as host-cached keeps
    them: uploaded when a text is not in the prompt cache, freed when its encode ends (auto's estimate still counts
    them on the device until a request of the shape has measured the peak)."""

    def __init__(self, config: ModelConfig, builder_args: dict, disk: kept.DiskKept) -> None:
        super().__init__(config, builder_args, disk)
        self._on_host = kept.HostKept(pin=torch.cuda.is_available())
        self.waits_on_host = frozenset(
            name
            for name in TEXT_MODELS
            if config.text_models is TextModels.ON_HOST and spec(name).kept_as_built(config)
        )

    def frees_after_use(self, name: str) -> bool:
        return name in self.waits_on_host

    def build(self, name: str, label: str) -> torch.nn.Module:
        if name not in self.waits_on_host:
            return super().build(name, label)
        state = self._on_host.get(name)
        if state is not None:
            return self._from_host_state(name, label, state)
        obtain = self.obtain(name)  # the first: from its file kept as built, or from the bundle

        def kept_on_host(fresh):
            model = obtain(fresh)
            self._on_host.put(name, model)
            return model

        return self.builder.build(name, label, kept_on_host)

    def host_cache_bytes(self) -> int:
        return self._on_host.bytes()

    def kept_in_memory(self) -> dict[str, int]:
        return self._on_host.sizes()

    def host_cache_pinned(self) -> bool:
        return self._on_host.all_pinned()

    def close(self) -> None:
        self._on_host.clear()
        release_pinned_host_memory()


def text_models_for(choice: TextModels, device: torch.device, prompt_cache_entries: int) -> TextModels:
    """Where persistent keeps the text models for this engine: what was asked, or for auto on the host on CUDA while
    the prompt cache is on (their ~10 GB off the device during the stages; a prompt asked again uploads nothing, a new
    one uploads them once), on the device otherwise (no cache: every request would upload them; CPU: the host is the
    device)."""
    if choice is not TextModels.AUTO:
        return choice
    return TextModels.ON_HOST if device.type == "cuda" and prompt_cache_entries > 0 else TextModels.ON_DEVICE


class PerRequest(Mode):
    """Build (or upload) each model when its block starts, free it when the block ends; the stage transformer is
    kept from stage 1 through stage 2 (the manager's `keep`)."""

    per_request = True
    lora_ahead: ClassVar[bool] = False  # the LoRA pairs go to the device during stage 1

    def fuses_in_place(self) -> bool:
        """On CUDA, stage 2 fuses the LoRA into the transformer it frees anyway: its peak is then the transformer
        alone, not transformer + adapter. fp8 weights fuse with ltx-core's Triton kernel (sm_89+); older GPUs keep
        the adapter. On CPU there is no VRAM peak to lower, and the adapter keeps every mode's output identical."""
        device = self.builder.device
        if self.config.distilled_lora_strength == 0 or device.type != "cuda":
            return False
        return not stores_fp8(self.config.quantization) or torch.cuda.get_device_capability(device) >= (8, 9)

    @classmethod
    def peak(cls, components: dict[str, int], activations: int, lora_mode: LoraMode) -> int:
        c = components
        kept_transformer = c["transformer"] if lora_mode is LoraMode.ADAPTER else 0
        ahead = c.get("lora_pairs", 0) if cls.lora_ahead and lora_mode is LoraMode.ADAPTER else 0
        return max(
            c["text_encoder"],
            c["embeddings_processor"],
            c["audio_encoder"],
            c["transformer"] + activations + ahead,
            kept_transformer + c["video_encoder"] + c["spatial_upsampler"],
            kept_transformer + _stage_2_extra(c, lora_mode) + activations,
            c["video_decoder"] + activations,
        )


class HostCached(PerRequest):
    """Weights wait in pinned host memory and are uploaded per request: the file states in ltx-core's registry, the
    models kept as built (specs) as their built states; the LoRA pairs are uploaded during stage 1."""

    residency = Residency.HOST_CACHED
    lora_ahead = True

    def __init__(self, config: ModelConfig, builder_args: dict, disk: kept.DiskKept) -> None:
        pin = torch.cuda.is_available()
        self._registry = kept.PinnedStateDictRegistry(pin=pin)
        self._built = kept.HostKept(pin=pin)
        super().__init__(config, builder_args, disk)

    @property
    def registry(self) -> kept.PinnedStateDictRegistry:
        return self._registry

    def build(self, name: str, label: str) -> torch.nn.Module:
        if not spec(name).kept_as_built(self.config):
            return super().build(name, label)
        state = self._built.get(name)
        if state is not None:
            return self._from_host_state(name, label, state)

        def first_build(fresh):
            self._registry.loads[f"{name} (as built)"] += 1  # read past the registry: a disk read all the same
            model = fresh()
            self._built.put(name, model)
            return model

        return self.builder.build(name, label, first_build, past_registry=True)

    def after_build(self, name: str, lora: DistilledLora) -> None:
        if name == "transformer" and self.config.lora_mode is LoraMode.ADAPTER and self.config.distilled_lora_strength:
            lora.upload_ahead(self.builder.read_lora_pairs, self.builder.device)

    def host_cache_bytes(self) -> int:
        return self._registry.nbytes() + self._built.bytes()

    def host_cache_loads(self) -> Counter:
        return Counter(self._registry.loads)

    def kept_in_memory(self) -> dict[str, int]:
        return self._built.sizes()

    def host_cache_pinned(self) -> bool:
        return self._registry.all_pinned() and self._built.all_pinned()

    def close(self) -> None:
        self._built.clear()
        self._registry.clear()
        gc.collect()  # the registry's StateDicts refer to their tensors through cycles
        release_pinned_host_memory()


class ColdStart(KeptOnDisk, PerRequest):
    """Build, run, free per request; the models kept as built (specs) are read from files after the first request."""

    residency = Residency.COLD_START


MODES: dict[Residency, type[Mode]] = {m.residency: m for m in (Persistent, HostCached, ColdStart)}
CONCRETE_MODES = (Residency.PERSISTENT, Residency.HOST_CACHED, Residency.COLD_START)  # fastest first


@functools.cache
def library_versions() -> dict[str, str]:
    """What a kept state depends on besides its source files (kept.state_folder)."""
    versions = {}
    for name in ("torch", "ltx-core", "bitsandbytes"):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "absent"
    return versions
