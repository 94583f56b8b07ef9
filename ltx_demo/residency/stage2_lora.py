"""Stage 2's distilled LoRA on the one stage transformer: a runtime adapter, or fused in place; each says what it did.

(Fused mode's second, LoRA-fused transformer is built by ltx-pipelines' ledger like any other model: specs.py.)
"""

from __future__ import annotations

import contextlib
import enum
import logging
from collections import Counter
from collections.abc import Callable, Iterator

import torch

from ltx_demo.checkpoints import BundleError
from ltx_demo.residency.lora_adapter import LoraTargetError, LowRankAdapter, fuse_in_place_
from ltx_demo.residency.specs import ADAPTER

logger = logging.getLogger(__name__)


class Stage2Lora(enum.StrEnum):
    """How stage 2 applied the distilled LoRA (recorded in the result)."""

    ADAPTER = "adapter"
    FUSED_IN_PLACE = "fused in place"
    FUSED_COPY = "fused copy"
    NONE = "none (strength 0)"


class DistilledLora:
    """The LoRA's state on the held transformer: its adapter, which transformer it is fused into, and host-cached's
    pairs uploaded ahead. The pairs are read with ltx-core's own loader (`read_pairs`, through the host cache when
    there is one)."""

    def __init__(
        self,
        lora_file: str,
        on_loading: Callable[[str | None], None],
        on_adapter_change: Callable[[], None],
        build_counts: Counter,
        uploaded_ahead: Counter,
    ) -> None:
        self.lora_file = lora_file
        self.adapter: LowRankAdapter | None = None
        self._on_loading = on_loading
        self._on_adapter_change = on_adapter_change  # e.g. CUDA graphs captured with the old forwards are stale
        self._build_counts = build_counts
        self._uploaded_ahead = uploaded_ahead
        self._fused_into: set[int] = set()  # id() of transformers whose LoRA is fused in place
        self._ahead: tuple[dict, torch.cuda.Event | None, torch.device] | None = None

    def graph_key(self) -> tuple:
        """What of the adapter changes the blocks' code path: a graph captured with it on cannot replay it off."""
        return (id(self.adapter), self.adapter.enabled) if self.adapter else (None, False)

    @contextlib.contextmanager
    def pairs(self, read_pairs: Callable[[], dict], on_build) -> Iterator[dict]:
        """The (A, B) pairs, uploaded ahead or read now, as the `lora_adapter` build phase; a LoRA that does not fit
        the transformer is a BundleError naming the file."""
        scope = on_build(ADAPTER) if on_build else contextlib.nullcontext()
        self._on_loading(ADAPTER)
        try:
            with scope:
                pairs = self._take_ahead()
                yield read_pairs() if pairs is None else pairs
        except LoraTargetError as exc:
            raise BundleError(f"{self.lora_file}: {exc}; run check-bundle") from exc
        finally:
            self._on_loading(None)

    def fuse_in_place(self, model: torch.nn.Module, strength: float, read_pairs, on_build) -> Stage2Lora:
        """Fuse into the transformer that is freed after stage 2 anyway, once per build: its peak is then the
        transformer alone, not transformer + adapter."""
        if id(model) not in self._fused_into:
            with self.pairs(read_pairs, on_build) as pairs, torch.inference_mode(False), torch.no_grad():
                fused = fuse_in_place_(model, pairs, strength)
            logger.info("distilled LoRA fused in place into %d linears for stage 2", fused)
            self._fused_into.add(id(model))
            self._build_counts[ADAPTER] += 1
        return Stage2Lora.FUSED_IN_PLACE

    def adapter_for(
        self, model: torch.nn.Module, strength: float, dtype: torch.dtype, store_fp8: bool, read_pairs, on_build
    ) -> LowRankAdapter | None:
        """The adapter on the held transformer, attached at its first use (persistent: before the first stage 1, so
        every stage 1 runs the same forwards; per-request modes: at stage 2, so their stage 1's peak never has it);
        None at strength 0 (stage 2 then runs the base weights, as ltx-core's fusion does)."""
        if self.adapter is not None or strength == 0:
            return self.adapter
        with self.pairs(read_pairs, on_build) as pairs:
            self.adapter = LowRankAdapter(model, pairs, strength, dtype, store_fp8=store_fp8)
        self._on_adapter_change()
        self._build_counts[ADAPTER] += 1
        return self.adapter

    def forget(self, model: torch.nn.Module) -> None:
        """`model` is being released: its adapter (the only one) and its fused mark go with it."""
        self.detach()
        self._fused_into.discard(id(model))

    def detach(self) -> None:
        if self.adapter is not None:
            self.adapter.detach()
            self.adapter = None
            self._on_adapter_change()

    def reset(self) -> None:
        self.detach()
        self._fused_into.clear()

    # -- host-cached: the pairs uploaded during stage 1 ------------------------------------------------------------
    def upload_ahead(self, read_pairs: Callable[[], dict], device: torch.device) -> None:
        """Start copying the pairs (pinned in the host cache) to the device on a side CUDA stream, so the copies run
        during stage 1 and stage 2 only fuses them. Issued from this thread: the copies are asynchronous."""
        if self._ahead is not None:
            return
        stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
            pairs = {
                stem: (a.to(device, non_blocking=True), b.to(device, non_blocking=True))
                for stem, (a, b) in read_pairs().items()
            }
        ready = None
        if stream is not None:
            ready = torch.cuda.Event()
            ready.record(stream)
        self._ahead = (pairs, ready, device)

    def has_ahead(self) -> bool:
        return self._ahead is not None

    def _take_ahead(self) -> dict | None:
        """The pairs uploaded ahead, usable on the current stream (None if there are none)."""
        if self._ahead is None:
            return None
        (pairs, ready, device), self._ahead = self._ahead, None
        self._uploaded_ahead[ADAPTER] += 1
        if ready is not None:
            current = torch.cuda.current_stream(device)
            current.wait_event(ready)
            for tensor in (t for pair in pairs.values() for t in pair):
                tensor.record_stream(current)  # allocated on the side stream, used (and freed) on this one
        return pairs

    def drop_ahead(self) -> None:
        """A request stopped before stage 2: free the pairs once their copies are done."""
        if self._ahead is not None:
            _, ready, _ = self._ahead
            if ready is not None:
                ready.synchronize()
            self._ahead = None
