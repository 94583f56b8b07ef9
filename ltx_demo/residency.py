"""Model lifetimes per residency mode: the one place that builds, keeps and frees models.

Everything else asks for a model inside a `with residency.use(name)` block. Persistent keeps what it built on the
device between requests; cold-start frees each model when its block ends, so idle device memory returns to ~0.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import assert_never

import torch

from ltx_demo.checkpoints import Bundle, BundleError, gemma_architecture
from ltx_demo.quantization import policy_for
from ltx_demo.settings import Quantization, Residency

logger = logging.getLogger(__name__)

MODEL_NAMES = (
    "text_encoder",
    "embeddings_processor",
    "audio_encoder",
    "video_encoder",
    "transformer_stage_1",
    "spatial_upsampler",
    "transformer_stage_2",
    "video_decoder",
)


@dataclass(frozen=True, slots=True)
class ModelConfig:
    """What the held models were built for; a request with another config releases them first."""

    quantization: Quantization
    residency: Residency
    distilled_lora_strength: float


def free_device_memory(device: torch.device) -> None:
    gc.collect()  # fp8-cast's forward patch makes each Linear a reference cycle: refcounting alone frees nothing
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _assert_materialized(name: str, model: torch.nn.Module, bundle: Bundle) -> None:
    """ltx-core's builder only logs a warning for missing keys and returns a model still on meta: refuse it."""
    missing = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.device.type == "meta"]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise BundleError(f"{name}: the bundle lacks {len(missing)} weights ({shown}); check {bundle.checkpoint}")


def _explain_build_failure(name: str, bundle: Bundle, exc: Exception) -> str:
    """Name the missing or misshapen tensors (ltx-core's own error is about meta tensors, not about the file)."""
    from ltx_demo.checkpoints import check_bundle  # noqa: PLC0415

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


class ModelResidency:
    """Builds models through ltx-pipelines' ModelLedger and owns how long they live."""

    def __init__(
        self,
        bundle: Bundle,
        device: torch.device,
        compute_dtype: torch.dtype,
        on_loading: Callable[[str | None], None] | None = None,
    ) -> None:
        self.bundle = bundle
        self.device = device
        self.compute_dtype = compute_dtype
        self.build_counts: Counter[str] = Counter()
        self._on_loading = on_loading or (lambda _name: None)
        self._held: dict[str, torch.nn.Module] = {}
        self._config: ModelConfig | None = None
        self._ledgers = None
        self._lock = threading.RLock()
        # Pay ltx-pipelines' import (seconds: it pulls in transformers) at construction, not in the first request.
        import ltx_pipelines.utils.model_ledger  # noqa: F401, PLC0415

    # -- configuration -------------------------------------------------------------------------------------------
    def configure(self, config: ModelConfig) -> None:
        """Switch quantization/residency/LoRA strength; what the old config held is released before anything new."""
        with self._lock:
            if config == self._config:
                return
            self.release_all()
            self._config = config
            self._ledgers = self._make_ledgers(config)

    def _make_ledgers(self, config: ModelConfig):  # noqa: ANN202
        from ltx_core.loader import LTXV_LORA_COMFY_RENAMING_MAP, LoraPathStrengthAndSDOps  # noqa: PLC0415
        from ltx_pipelines.utils.model_ledger import ModelLedger  # noqa: PLC0415

        stage_1 = ModelLedger(
            dtype=self.compute_dtype,
            device=self.device,
            checkpoint_path=str(self.bundle.checkpoint),
            gemma_root_path=str(self.bundle.gemma_root),
            spatial_upsampler_path=str(self.bundle.spatial_upsampler),
            quantization=policy_for(config.quantization),
        )
        distilled = LoraPathStrengthAndSDOps(
            str(self.bundle.distilled_lora), config.distilled_lora_strength, LTXV_LORA_COMFY_RENAMING_MAP
        )
        return stage_1, stage_1.with_additional_loras((distilled,))

    # -- lifetimes -----------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def use(self, name: str, on_build: Callable[[str], contextlib.AbstractContextManager] | None = None) -> Iterator:
        """Yield model `name`, building it if it is not held; cold-start frees it when the block ends."""
        assert self._config is not None, "configure() first"
        with self._lock:
            model = self._held.get(name)
            if model is None:
                build_scope = on_build(name) if on_build else contextlib.nullcontext()
                with build_scope:
                    model = self._build(name)
                self._held[name] = model
        try:
            yield model
        finally:
            del model
            match self._config.residency:
                case Residency.COLD_START:
                    self.release(name)
                case Residency.PERSISTENT:
                    pass
                case _:
                    assert_never(self._config.residency)

    def _build(self, name: str) -> torch.nn.Module:
        stage_1, stage_2 = self._ledgers
        factories = {
            "text_encoder": stage_1.text_encoder,
            "embeddings_processor": stage_1.gemma_embeddings_processor,
            "audio_encoder": stage_1.audio_encoder,
            "video_encoder": stage_1.video_encoder,
            "transformer_stage_1": stage_1.transformer,
            "spatial_upsampler": stage_1.spatial_upsampler,
            "transformer_stage_2": stage_2.transformer,
            "video_decoder": stage_1.video_decoder,
        }
        self._on_loading(name)
        logger.info("building %s (%s)", name, self._config)
        try:
            with gemma_architecture(self.bundle), torch.inference_mode(False):
                model = factories[name]()
        except (ValueError, KeyError, RuntimeError, NotImplementedError) as exc:
            if isinstance(exc, torch.OutOfMemoryError):
                raise
            raise BundleError(_explain_build_failure(name, self.bundle, exc)) from exc
        finally:
            self._on_loading(None)
        _assert_materialized(name, model, self.bundle)
        if name.startswith("transformer"):
            _cast_unquantized_(model, self.compute_dtype)
        model.requires_grad_(False)
        self.build_counts[name] += 1
        return model

    def release(self, name: str) -> None:
        with self._lock:
            if self._held.pop(name, None) is not None:
                free_device_memory(self.device)

    def release_all(self) -> None:
        with self._lock:
            if self._held:
                self._held.clear()
                free_device_memory(self.device)

    def resident(self) -> tuple[str, ...]:
        """Names of the models held right now, in flow order."""
        return tuple(name for name in MODEL_NAMES if name in self._held)

    def held(self, name: str) -> torch.nn.Module | None:
        return self._held.get(name)
