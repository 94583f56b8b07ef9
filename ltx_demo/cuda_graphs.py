"""CUDA graphs around the stage transformer's blocks: captured once per input signature, replayed every call.

A single-pass forward at stage 1's 1248 tokens is host-bound: ~1,300 linears plus norms, attention and
modulation each pay Python and launch time (bf16 runs 163 ms on an H100 for ~90 ms of GPU work), and the fp8
path's extra launch per linear (its row quantization) shows there. Replaying a captured graph of the 48 blocks
removes that cost for every weight format. The preprocessing before the blocks (positional embeddings through
numpy, a data-dependent mask branch) and the output head stay eager; they are a few kernels.

Opt-in (`--cuda-graphs`): each captured signature keeps its activations in a private memory pool (shared by
all graphs of one transformer), which adds to what persistent holds between requests. Anything that changes
what the blocks run, other than weight values changed in place, must call `invalidate()` (the residency
manager does on adapter attach/detach and release).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Callable, Hashable
from dataclasses import dataclass

import torch

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class _Leaf:
    """A tensor's place in a flattened structure: its index among the tensors."""

    index: int


def flatten(value) -> tuple[object, list[torch.Tensor]]:
    """(structure with tensors replaced by _Leaf, the tensors) for tensors nested in dataclasses, tuples, lists."""
    tensors: list[torch.Tensor] = []

    def walk(item):
        if isinstance(item, torch.Tensor):
            tensors.append(item)
            return _Leaf(len(tensors) - 1)
        if dataclasses.is_dataclass(item) and not isinstance(item, type):
            return (type(item), tuple((f.name, walk(getattr(item, f.name))) for f in dataclasses.fields(item)))
        if isinstance(item, tuple | list):
            return (type(item), tuple(walk(x) for x in item))
        return item

    return walk(value), tensors


def unflatten(structure, tensors: list[torch.Tensor]):
    def build(item):
        if isinstance(item, _Leaf):
            return tensors[item.index]
        if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], type):
            kind, children = item
            if dataclasses.is_dataclass(kind):
                return kind(**{name: build(child) for name, child in children})
            return kind(build(child) for child in children)
        return item

    return build(structure)


def _signature(structure, tensors: list[torch.Tensor]) -> Hashable:
    return structure, tuple((tuple(t.shape), t.dtype, t.device) for t in tensors)


def _mask_caching(perturbations):
    """The same BatchedPerturbationConfig, its masks made once and kept. ltx-core builds a partial mask with
    `mask[i] = 0`, a host-to-device scalar copy a capture may not contain; the warm-ups (not captured) fill the
    cache, the capture then reads it, and the captured graph keeps those tensors alive."""
    if perturbations is None:  # stage 2 calls without any
        return None
    return _masks_cached_type()(perturbations=perturbations.perturbations)


@functools.cache
def _masks_cached_type() -> type:
    """One class for every capture (torch.compile'd blocks guard on the type of what they are given: a class made per
    capture would recompile them at each). Inside a compiled block the mask is traced as ltx-core makes it: the
    compiled graph makes it on the device, so there is nothing to cache, and the cache is never read there (a
    guard on its contents recompiled every block, 66 times in one H200 run)."""
    from ltx_core.guidance.perturbations import BatchedPerturbationConfig

    class CachedMasks(BatchedPerturbationConfig):
        def __init__(self, perturbations) -> None:
            super().__init__(perturbations=perturbations)
            object.__setattr__(self, "_cache", {})  # the dataclass is frozen

        def mask(self, perturbation_type, block, device, dtype):
            if torch.compiler.is_compiling():
                return BatchedPerturbationConfig.mask(self, perturbation_type, block, device, dtype)
            key = (perturbation_type, block, str(device), dtype)
            if key not in self._cache:
                self._cache[key] = BatchedPerturbationConfig.mask(self, perturbation_type, block, device, dtype)
            return self._cache[key]

    return CachedMasks


@dataclass(slots=True)
class _Captured:
    graph: torch.cuda.CUDAGraph
    inputs: list[torch.Tensor]
    output_structure: object
    outputs: list[torch.Tensor]
    output_is_input: dict[int, int]  # output leaf -> input leaf, where the blocks passed an input through
    perturbations: object  # with the masks the graph reads


class GraphedBlocks:
    """Replaces `velocity_model._process_transformer_blocks` with capture-once, replay-after."""

    def __init__(self, velocity_model: torch.nn.Module, extra_key: Callable[[], Hashable] = lambda: None) -> None:
        self._model = velocity_model
        self._eager = velocity_model._process_transformer_blocks
        self._extra_key = extra_key
        self._graphs: dict[Hashable, _Captured] = {}
        self._pool = None
        self.captures = 0
        self.replays = 0
        self.eager_runs = 0  # blocks run in Python (warm-ups and captures): where per-call counters still count
        velocity_model._process_transformer_blocks = self

    def __call__(self, video, audio, perturbations):
        structure, tensors = flatten((video, audio))
        key = (_signature(structure, tensors), repr(perturbations), self._extra_key())
        captured = self._graphs.get(key)
        if captured is None:
            captured = self._graphs[key] = self._capture(structure, tensors, perturbations)
        for static, value in zip(captured.inputs, tensors, strict=True):
            static.copy_(value)
        captured.graph.replay()
        self.replays += 1
        outputs = [
            tensors[captured.output_is_input[i]] if i in captured.output_is_input else out.clone()
            for i, out in enumerate(captured.outputs)
        ]
        return unflatten(captured.output_structure, outputs)

    def _capture(self, structure, tensors: list[torch.Tensor], perturbations) -> _Captured:
        static_inputs = [t.clone() for t in tensors]
        video, audio = unflatten(structure, static_inputs)
        perturbations = _mask_caching(perturbations)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm up off the capture: cuBLAS handles, Triton compiles, allocator
            for _ in range(2):
                self._eager(video, audio, perturbations)
                self.eager_runs += 1
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            result = self._eager(video, audio, perturbations)
        self.eager_runs += 1
        self._pool = graph.pool()
        output_structure, outputs = flatten(result)
        by_address = {t.data_ptr(): i for i, t in enumerate(static_inputs)}
        passthrough = {
            i: by_address[t.data_ptr()]
            for i, t in enumerate(outputs)
            if t.data_ptr() in by_address and t.shape == static_inputs[by_address[t.data_ptr()]].shape
        }
        self.captures += 1
        logger.info("captured the transformer blocks for a new input signature (%d so far)", self.captures)
        return _Captured(graph, static_inputs, output_structure, outputs, passthrough, perturbations)

    def invalidate(self) -> None:
        """Drop every captured graph (and with them their pool)."""
        self._graphs.clear()
        self._pool = None

    def remove(self) -> None:
        """Put the eager method back."""
        self.invalidate()
        if self._model.__dict__.get("_process_transformer_blocks") is self:
            del self._model._process_transformer_blocks
