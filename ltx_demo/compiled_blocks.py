"""torch.compile of the stage transformer's blocks (`--compile-blocks`), falling back to eager if it cannot run.

About half of a graphed stage-1 forward's GPU time is outside the matmuls (an H200 profile, fp8-scaled-mm:
~150 ms of ~290 ms): ltx-core's block runs each RMSNorm, AdaLN modulation `x * (1 + scale) + shift`, gate,
residual add, q/k norm and RoPE as its own memory-bound kernel over the whole activation. Inductor fuses those
runs of elementwise work; the fp8 GEMM stays one opaque op (fp8_matmul.fp8_scaled_linear), so what Inductor
generates never touches fp8 (an earlier try that let Inductor trace the Triton quantization failed inside Triton:
"PassManager::run failed").

The 48 blocks share one forward. Dynamo would specialise on each block's `idx` (ltx-core asks the perturbation
config "is block idx perturbed?") and trace 48 times; with module ints allowed to be symbolic, the second block
recompiles with `idx` symbolic and that graph serves every block a guidance pass leaves alone (a guard such as
`idx != 29`), the perturbed block gets its own. A new shape (stage 2, another resolution) recompiles once with
dynamic sizes (Dynamo's automatic dynamic shapes). Measured on the tiny bundle with 6 blocks, STG on one: 4 graphs
for stage 1 and stage 2 together, not 12.

If compiling fails (no C++/Triton toolchain, an Inductor error), every block goes back to eager for good, the
error is logged and kept in `failure`; an out-of-memory error is not a compile failure and is raised.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

import torch

logger = logging.getLogger(__name__)

RECOMPILE_LIMIT = 256  # graphs per block forward: (perturbed or not) x stage shapes, many resolutions


def describe_failure(exc: BaseException) -> str:
    """The error that made the compile fail, in one line: Dynamo wraps a backend's error (BackendCompilerFailed
    says only which backend), so the innermost cause is named too."""
    root = getattr(exc, "inner_exception", None) or exc
    while root.__cause__ is not None:
        root = root.__cause__
    lines = [line for line in str(root).splitlines() if line.strip()]
    words = f"{type(root).__name__}: {lines[0] if lines else ''}"
    return words if root is exc else f"{type(exc).__name__} ({words})"


class CompiledBlocks:
    """Compiles each block of `velocity_model.transformer_blocks` on first call; `failure` says why it fell back."""

    def __init__(
        self,
        velocity_model: torch.nn.Module,
        on_failure: Callable[[str], None] = lambda _reason: None,
        backend: str | Callable = "inductor",
    ) -> None:
        import torch._dynamo.config as dynamo_config

        from ltx_demo.checkpoints import cache_dir

        # Inductor's compiled kernels and FX graphs kept with the project's other caches: a restarted server
        # finds them instead of compiling again (unless the environment points Inductor elsewhere).
        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache_dir() / "inductor"))

        import torch._inductor.config as inductor_config

        # Pointwise kernel configs chosen from the shapes, not by timing candidates at first launch (Inductor turns
        # that off itself under deterministic algorithms). It did not make a restarted process render the same
        # frames on the H200: reductions still pick their RBLOCK by timing (docs/benchmarks.md, the notes; Inductor's
        # deterministic mode, torch >= 2.10, is the candidate fix, not yet measured for its speed).
        inductor_config.triton.autotune_pointwise = False
        dynamo_config.allow_unspec_int_on_nn_module = True  # block.idx symbolic: one graph for the unperturbed blocks
        dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, RECOMPILE_LIMIT)
        dynamo_config.accumulated_recompile_limit = max(dynamo_config.accumulated_recompile_limit, RECOMPILE_LIMIT)
        from ltx_demo.attention import traceable_attention_

        self.blocks = list(velocity_model.transformer_blocks)
        traceable_attention_(velocity_model)
        self.failure: str | None = None
        self._on_failure = on_failure
        for block in self.blocks:
            compiled = torch.compile(block._call_impl, backend=backend)
            block._compiled_call_impl = self._guarded(block, compiled)

    def _guarded(self, block: torch.nn.Module, compiled):
        def call(*args, **kwargs):
            if self.failure is not None:
                return block._call_impl(*args, **kwargs)
            try:
                return compiled(*args, **kwargs)
            except torch.OutOfMemoryError:
                raise
            except Exception as exc:  # any compile failure: run eager from now on
                self._fall_back(describe_failure(exc))
                return block._call_impl(*args, **kwargs)

        return call

    def _fall_back(self, reason: str) -> None:
        self.failure = reason
        for block in self.blocks:
            block._compiled_call_impl = None
        logger.warning("torch.compile of the transformer blocks failed; running them eager: %s", reason)
        self._on_failure(reason)

    @property
    def active(self) -> bool:
        return self.failure is None


def use_deterministic_kernels() -> None:
    """Inductor's deterministic mode for this process (`--inductor-deterministic`): no kernel config picked by timing
    candidates, so every process compiles the same kernels; the candidate fix for the restarted process rendering
    other frames (docs/benchmarks.md, the notes). Inductor's config is per process, so the switch is too. Refused,
    with the reason, on a torch without it (it came with torch 2.10)."""
    import torch._inductor.config as inductor_config

    if not hasattr(inductor_config, "deterministic"):
        raise ValueError(
            f"--inductor-deterministic needs torch._inductor.config.deterministic (torch >= 2.10); this is torch "
            f"{torch.__version__}: leave the flag off"
        )
    inductor_config.deterministic = True


def deterministic_kernels() -> bool:
    """Whether this process compiles in Inductor's deterministic mode."""
    import torch._inductor.config as inductor_config

    return bool(getattr(inductor_config, "deterministic", False))


def compile_stats() -> dict:
    """What Dynamo and Inductor did so far in this process: graphs compiled, graph breaks, seconds spent compiling
    (Dynamo's own counters; a bench record carries them so a slow first request can be read)."""
    from torch._dynamo.utils import compilation_time_metrics, counters

    stats = counters["stats"]
    seconds = sum(compilation_time_metrics.get("_compile.compile_inner", ()))
    return {
        "unique_graphs": int(stats.get("unique_graphs", 0)),
        "graph_breaks": int(sum(counters["graph_break"].values())),
        "compile_seconds": round(seconds, 2),
    }
