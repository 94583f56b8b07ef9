"""Building one model: through ltx-pipelines' ModelLedger (nf4 Gemma and the fp8 processor on top), or from a state
kept as built; checking it is complete; and taking a released model apart so its memory is free at once."""

from __future__ import annotations

import contextlib
import gc
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import assert_never

import torch

from ltx_demo.attention import use_attention_
from ltx_demo.checkpoints import Bundle, BundleError, gemma_architecture
from ltx_demo.compiled_blocks import CompiledBlocks
from ltx_demo.cuda_graphs import GraphedBlocks
from ltx_demo.quantization import policy_for, swap_in_linear4bit_
from ltx_demo.residency import kept
from ltx_demo.residency.lora_adapter import load_lora_pairs
from ltx_demo.residency.specs import ModelConfig, spec, stage_ledgers
from ltx_demo.text_path import drop_unused_gemma_parts_, store_linears_in_fp8_
from ltx_demo.types import AttentionBackend, Flow, TextEncoderQuantization

logger = logging.getLogger(__name__)


@dataclass
class BuildCounts:
    """What the builds did, per model name: builds (a host-cached upload counts), builds that read the weights from
    disk (not the host cache), builds from a kept state, host-cached LoRA pairs uploaded ahead and then used."""

    builds: Counter = field(default_factory=Counter)
    disk_reads: Counter = field(default_factory=Counter)
    kept_builds: Counter = field(default_factory=Counter)
    uploaded_ahead: Counter = field(default_factory=Counter)
    compile_failures: list = field(default_factory=list)  # why compiled blocks fell back to eager, in order


def free_device_memory(device: torch.device, collect: bool = True) -> None:
    """Give what the caching allocator holds back to the device; `collect` first runs a full gc pass for models
    nobody dismantled (error paths: fp8-cast's and the adapter's forward patches make each Linear a cycle)."""
    if collect:
        gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def release_pinned_host_memory() -> None:
    """Give back to the OS the pinned blocks torch's caching host allocator keeps after their tensors are freed, so
    another mode finds that memory (as page cache for its kept states, say). torch exposes this only as a private
    binding; without it this is a no-op."""
    empty_host_cache = getattr(torch._C, "_host_emptyCache", None)
    if torch.cuda.is_available() and empty_host_cache is not None:
        empty_host_cache()


def dismantle_(model: torch.nn.Module) -> None:
    """Drop every parameter, buffer, CUDA graph and forward patch of a model being released, so its memory is free
    when release() returns, without a gc pass and whoever still names the model (patched Linears refer to
    themselves; a caller's frame may still hold it)."""
    for module in model.modules():
        graphed = module.__dict__.get("_process_transformer_blocks")
        if isinstance(graphed, GraphedBlocks):
            graphed.invalidate()
            graphed.remove()
        module.__dict__.pop("forward", None)
        module._parameters.clear()
        module._buffers.clear()


def module_bytes(model: torch.nn.Module) -> int:
    """Bytes of a model's parameters and buffers, each storage once (bitsandbytes' packed 4-bit data included)."""
    seen = {t.data_ptr(): t.nbytes for t in [*model.parameters(), *model.buffers()] if t.device.type != "meta"}
    return sum(seen.values())


def _assert_materialized(label: str, model: torch.nn.Module, bundle: Bundle) -> None:
    """ltx-core's builder only logs a warning for missing keys and returns a model still on meta: refuse it."""
    missing = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.device.type == "meta"]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise BundleError(f"{label}: the bundle lacks {len(missing)} weights ({shown}); check {bundle.checkpoint}")


def _explain_build_failure(label: str, bundle: Bundle, exc: Exception) -> str:
    """Name the missing or misshapen tensors (ltx-core's own error is about meta tensors, not about the file)."""
    from ltx_demo.checkpoints import check_bundle

    component = "transformer" if label.startswith("transformer") else label
    problems = [p for c in check_bundle(bundle) if c.name == component for p in c.problems]
    detail = "; ".join(problems) if problems else str(exc)
    return f"{label}: cannot build it from {bundle.checkpoint.name} ({detail}); run check-bundle for the full list"


def _cast_unquantized_(model: torch.nn.Module, dtype: torch.dtype) -> None:
    """Bring the weights fp8-cast left in the checkpoint's dtype to the compute dtype (float32 on CPU): ModelLedger
    builds a quantized transformer without a dtype (a dtype would upcast the fp8 weights again)."""
    for tensor in [*model.parameters(), *model.buffers()]:
        if tensor.is_floating_point() and tensor.dtype not in (dtype, torch.float8_e4m3fn):
            tensor.data = tensor.data.to(dtype)


class ModelBuilder:
    """Builds the models of one config. `build(name, obtain)` wraps what every build shares (the loading line, the
    Gemma size, failures explained, the completeness check, the transformer's dtype and graphs, the counts);
    `obtain(fresh)` is the mode's say in where the model comes from: `fresh()` from the files, or `rebuild()`."""

    def __init__(
        self,
        bundle: Bundle,
        config: ModelConfig,
        device: torch.device,
        dtype: torch.dtype,
        counts: BuildCounts,
        on_loading: Callable[[str | None], None],
        graph_key: Callable[[], tuple] | None = None,  # None: no CUDA graphs
        registry: kept.PinnedStateDictRegistry | None = None,
        attention: AttentionBackend = AttentionBackend.SDPA,  # resolved (attention.resolve)
        compile_blocks: bool = False,
    ) -> None:
        self.bundle, self.config, self.device, self.dtype = bundle, config, device, dtype
        self.counts = counts
        self.registry = registry
        self.on_loading = on_loading
        self._graph_key = graph_key
        self._attention = attention
        self._compile_blocks = compile_blocks
        self.ledgers = stage_ledgers(bundle, config, device, dtype, registry)

    def build(self, name: str, label: str, obtain: Callable[[Callable[[], torch.nn.Module]], torch.nn.Module],
              past_registry: bool = False) -> torch.nn.Module:  # fmt: skip
        """`past_registry`: read the files directly, not through the host cache (which would keep their state)."""
        model_spec = spec(name)
        loads_before = sum(self.registry.loads.values()) if self.registry is not None else None
        stage_1, stage_2 = self.ledgers
        if past_registry:
            stage_1, _ = stage_ledgers(self.bundle, self.config, self.device, self.dtype, None)
        self.on_loading(name)
        logger.info("building %s (%s)", name, self.config)
        gemma = gemma_architecture(self.bundle) if model_spec.gemma_part else contextlib.nullcontext()
        try:
            with gemma, torch.inference_mode(False):
                model = obtain(lambda: self._fresh(name, stage_2 if model_spec.fused_copy else stage_1))
        except (ValueError, KeyError, RuntimeError, NotImplementedError) as exc:
            if isinstance(exc, torch.OutOfMemoryError):
                raise
            raise BundleError(_explain_build_failure(label, self.bundle, exc)) from exc
        finally:
            self.on_loading(None)
        _assert_materialized(label, model, self.bundle)
        if model_spec.is_transformer:
            # the reference in bf16 keeps what ModelLedger built (a quantized build leaves the checkpoint's dtypes)
            if self.config.flow is Flow.FAST or self.dtype != torch.bfloat16:
                _cast_unquantized_(model, self.dtype)
            if self.config.flow is Flow.FAST:  # the reference keeps ltx-core's forward and attention
                self._speed_up_transformer(model)
        model.requires_grad_(False)
        self.counts.builds[name] += 1
        if loads_before is None or sum(self.registry.loads.values()) > loads_before:
            self.counts.disk_reads[name] += 1
        return model

    def _speed_up_transformer(self, model: torch.nn.Module) -> None:
        """The fast flow's kernels: the attention backend, compiled blocks, CUDA graphs around the blocks."""
        if self._attention is not AttentionBackend.SDPA:
            logger.info("transformer: %d attention modules on %s", use_attention_(model, self._attention),
                        self._attention)  # fmt: skip
        if self._compile_blocks:
            CompiledBlocks(model.velocity_model, on_failure=self.counts.compile_failures.append)
        if self._graph_key is not None:
            GraphedBlocks(model.velocity_model, extra_key=self._graph_key)

    def _fresh(self, name: str, ledger) -> torch.nn.Module:
        match name:
            case "text_encoder":
                return self._text_encoder(ledger)
            case "embeddings_processor":
                return self._embeddings_processor(ledger)
            case "audio_encoder":
                return ledger.audio_encoder()
            case "video_encoder":
                return ledger.video_encoder()
            case "transformer" | "transformer_stage_2":
                return ledger.transformer()
            case "spatial_upsampler":
                return ledger.spatial_upsampler()
            case "video_decoder":
                return ledger.video_decoder()
            case _:
                raise AssertionError(name)

    def _text_encoder(self, ledger) -> torch.nn.Module:
        """bf16 through ModelLedger.text_encoder(); nf4: ltx-core's builder onto the CPU in bf16, 4-bit linears
        swapped in, then the move to the device, where bitsandbytes quantizes (the device never sees bf16 linears).
        Either way the parts a text prompt never runs are dropped (text_path), except in the reference flow."""
        match self.config.text_encoder_quantization:
            case TextEncoderQuantization.BF16:
                text_encoder = ledger.text_encoder()
                if self.config.drops_gemma_parts:  # the reference and the enhancer keep them, as ltx-pipelines does
                    logger.info("text encoder: dropped %s", drop_unused_gemma_parts_(text_encoder))
                return text_encoder
            case TextEncoderQuantization.NF4:
                text_encoder = ledger.text_encoder_builder.build(device=torch.device("cpu"), dtype=torch.bfloat16)
                if self.config.drops_gemma_parts:
                    logger.info("text encoder: dropped %s", drop_unused_gemma_parts_(text_encoder))
                logger.info("text encoder: %d linears in nf4", swap_in_linear4bit_(text_encoder, self.dtype))
                return text_encoder.to(self.device).eval()
            case _:
                assert_never(self.config.text_encoder_quantization)

    def _embeddings_processor(self, ledger) -> torch.nn.Module:
        """ModelLedger's processor; with an fp8 quantization (fast flow) built on the CPU, its linears stored in fp8,
        then moved (the device never holds its bf16 weights)."""
        if not self.config.fp8_processor:
            return ledger.gemma_embeddings_processor()
        processor = ledger.embeddings_processor_builder.build(device=torch.device("cpu"), dtype=self.dtype)
        logger.info("embeddings processor: %d linears in fp8", store_linears_in_fp8_(processor))
        return processor.to(self.device).eval()

    def rebuild(self, name: str, state: dict[str, torch.Tensor]) -> torch.nn.Module:
        """`name` from its kept state: the meta model its ModelLedger builder makes, the kept tensors assigned."""
        stage_1, _ = self.ledgers
        builder = getattr(stage_1, spec(name).builder)
        match name:
            case "text_encoder":
                drop = self.config.drops_gemma_parts
                return kept.build_nf4_text_encoder(builder, state, self.device, self.dtype, drop_parts=drop)
            case "transformer":
                from ltx_core.model.transformer.model import X0Model

                module_ops = (*builder.module_ops, *policy_for(self.config.quantization).module_ops)  # as ModelLedger
                return kept.build_with_state(
                    lambda: X0Model(builder.meta_model(builder.model_config(), module_ops)), state, self.device, name
                )
            case "embeddings_processor":
                processor = kept.build_with_state(
                    lambda: builder.meta_model(builder.model_config(), builder.module_ops), state, self.device, name
                )
                store_linears_in_fp8_(processor)  # the weights are fp8 already; this puts the upcasting forward on
                return processor
            case _:
                raise AssertionError(f"{name} is never kept")

    def read_lora_pairs(self) -> dict:
        """The distilled LoRA's (A, B) pairs on the host, read by ltx-core's loader (through the host cache if any)."""
        stage_1, _ = self.ledgers
        builder = stage_1.transformer_builder
        return load_lora_pairs(
            str(self.bundle.distilled_lora),
            lambda paths, sd_ops: builder.load_sd(paths, builder.registry, torch.device("cpu"), sd_ops),
        )

    def source_paths(self, name: str) -> list[str]:
        """The files a model is built from (what a kept state's name depends on)."""
        stage_1, _ = self.ledgers
        if name == "text_encoder":
            return list(stage_1.text_encoder_builder.model_path)
        return [str(self.bundle.checkpoint)]
