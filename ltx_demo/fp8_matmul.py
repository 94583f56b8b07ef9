"""The fp8-scaled-mm linear: fp8 weights times fp8 activations on the GPU's fp8 tensor cores (torch._scaled_mm).

Per linear call: one Triton kernel quantizes the activation rows to float8_e4m3fn with a per-row scale
(amax(|row|) / 448, read once, written once), then one rowwise-scaled fp8 GEMM. The first version did the
quantization with ~9 separate torch elementwise kernels, which cost more than the halved weight traffic saved
(1.44x bf16's time per stage-1 call on an H200); `quantize_rows_reference` keeps that math as the tests' reference.
"""

from __future__ import annotations

import functools

import torch

FP8_MAX = 448.0  # largest finite float8_e4m3fn
# Hopper's fp8 tensor cores accumulating at their own precision instead of promoting partial sums to float32 (the
# `use_fast_accum` of torch._scaled_mm; torchao's float8 linears use it for their forward GEMM). Its cost is a row
# of the fidelity table (fp8_fast_accumulation); read at each call, so a fidelity row can switch it. cuBLAS has no
# fast-accumulation kernel for some shapes (on the H200, torch 2.11: a bias with K = 8192 and under 64 rows, or
# K = 16384 and under 32: the feed-forward's down projection on a short clip's audio tokens,
# docs/device/fast-accum-shapes-h200.json); those run with float32 sums (rowwise_scaled_mm).
FAST_ACCUMULATION = True
_FAST_REFUSED: set[tuple] = set()  # (rows, K, N, bias?) cuBLAS refused with fast accumulation
MIN_SCALE = 1e-12  # an all-zero row quantizes to zeros instead of dividing by zero


class ScaledMMCounter:
    """How many linears ran through torch._scaled_mm: proof that the fp8 kernel ran, not a fallback."""

    calls = 0


def quantize_rows_reference(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(fp8 rows, float32 per-row scales (M, 1)) with rows ~= fp8 * scale: plain torch, any device."""
    scale = (rows.abs().amax(dim=1, keepdim=True).float() / FP8_MAX).clamp_(min=MIN_SCALE)
    quantized = (rows.float() / scale).clamp_(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    return quantized, scale


@functools.cache
def _quantize_rows_kernel():
    """The Triton kernel, compiled on first use (Triton ships with CUDA builds of torch; CPU-only installs need
    neither it nor this)."""
    import triton
    import triton.language as tl

    @triton.jit
    def quantize_rows(x_ptr, out_ptr, scale_ptr, n_cols, x_row_stride, fp8_max, min_scale, BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        cols = tl.arange(0, BLOCK)
        mask = cols < n_cols
        x = tl.load(x_ptr + row * x_row_stride + cols, mask=mask, other=0.0).to(tl.float32)
        scale = tl.maximum(tl.max(tl.abs(x), axis=0) / fp8_max, min_scale)
        quantized = tl.clamp(x / scale, -fp8_max, fp8_max)
        tl.store(out_ptr + row * n_cols + cols, quantized.to(out_ptr.dtype.element_ty), mask=mask)
        tl.store(scale_ptr + row, scale)

    return quantize_rows


def quantize_rows(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """quantize_rows_reference in one fused Triton kernel (CUDA): one program per row, the row read once."""
    import triton

    if rows.stride(-1) != 1:
        rows = rows.contiguous()
    n_rows, n_cols = rows.shape
    quantized = torch.empty((n_rows, n_cols), device=rows.device, dtype=torch.float8_e4m3fn)
    scale = torch.empty((n_rows, 1), device=rows.device, dtype=torch.float32)
    block = triton.next_power_of_2(n_cols)
    num_warps = 4 if block <= 2048 else 8 if block <= 8192 else 16
    _quantize_rows_kernel()[(n_rows,)](
        rows, quantized, scale, n_cols, rows.stride(0), FP8_MAX, MIN_SCALE, BLOCK=block, num_warps=num_warps
    )
    return quantized, scale


@functools.cache
def _ones(n: int, device: torch.device) -> torch.Tensor:
    """scale_b: ltx-core's downcast stores W as plain fp8 (scale 1), one scale per output column."""
    return torch.ones((1, n), device=device, dtype=torch.float32)


def rowwise_scaled_mm(quantized, weight_t, scale_a, scale_b, bias, out_dtype: torch.dtype) -> torch.Tensor:
    """torch._scaled_mm with FAST_ACCUMULATION where cuBLAS has a kernel for the shape, float32 sums where it has
    none (its refusal is a status raised before any launch; the shape is remembered, so a CUDA-graph capture, which
    follows eager warm-ups, never meets it)."""
    key = (quantized.shape[0], *weight_t.shape, bias is not None)
    if FAST_ACCUMULATION and key not in _FAST_REFUSED:
        try:
            return torch._scaled_mm(quantized, weight_t, scale_a=scale_a, scale_b=scale_b, bias=bias,
                                    out_dtype=out_dtype, use_fast_accum=True)  # fmt: skip
        except RuntimeError as exc:
            if "CUBLAS_STATUS_NOT_SUPPORTED" not in str(exc):
                raise
            _FAST_REFUSED.add(key)
    return torch._scaled_mm(quantized, weight_t, scale_a=scale_a, scale_b=scale_b, bias=bias, out_dtype=out_dtype)


@torch.library.custom_op("ltx_demo::fp8_scaled_linear", mutates_args=())
def fp8_scaled_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """y = x W^T + b as one op (rows quantized, rowwise-scaled fp8 GEMM): what torch.compile'd blocks call, so
    Inductor fuses the elementwise work around the GEMM and never traces into the fp8 kernels (compiled_blocks)."""
    quantized, scale_a = quantize_rows(x.reshape(-1, x.shape[-1]))
    out = rowwise_scaled_mm(
        quantized,
        weight.t(),
        scale_a,
        _ones(weight.shape[0], weight.device),
        None if bias is None else bias.to(x.dtype),
        x.dtype,
    )
    ScaledMMCounter.calls += 1
    return out.reshape(*x.shape[:-1], weight.shape[0])


@fp8_scaled_linear.register_fake
def _(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return x.new_empty((*x.shape[:-1], weight.shape[0]))


def scaled_mm_forward(layer: torch.nn.Linear):
    """A forward for `layer`: y = x W^T + b with W kept in float8_e4m3fn; x quantized per row (one outlier token
    does not flatten the others). Weights are looked up at call time, so a state dict assigned later is used; what
    depends only on them (W^T's view, the bias upcast: ltx-core's downcast stores it in fp8 too) is made once per
    weight, not once per call (~1,300 linears a forward: per-call Python work shows at small row counts)."""
    prepared: list = [None]  # (weight, bias, dtype, weight_t, upcast bias)

    def forward(x: torch.Tensor, *_args, **_kwargs) -> torch.Tensor:
        weight, bias = layer.weight, layer.bias
        if torch.compiler.is_compiling() and weight.dtype == torch.float8_e4m3fn:
            return fp8_scaled_linear(x, weight, bias)
        entry = prepared[0]
        if entry is None or entry[0] is not weight or entry[1] is not bias or entry[2] != x.dtype:
            if weight.dtype != torch.float8_e4m3fn:  # a linear the downcast map does not cover
                return torch.nn.functional.linear(x, weight.to(x.dtype), None if bias is None else bias.to(x.dtype))
            entry = prepared[0] = (weight, bias, x.dtype, weight.t(), None if bias is None else bias.to(x.dtype))
        quantized, scale_a = quantize_rows(x.reshape(-1, x.shape[-1]))
        out = rowwise_scaled_mm(quantized, entry[3], scale_a, _ones(weight.shape[0], weight.device), entry[4], x.dtype)
        ScaledMMCounter.calls += 1
        return out.reshape(*x.shape[:-1], weight.shape[0])

    return forward


def fp8_scaled_mm_module_ops():
    """A ModuleOps (applied by ltx-core's builder to the meta model) that gives every block Linear the fp8 GEMM.

    Like ltx-core's UPCAST_DURING_INFERENCE it replaces the instance's forward; non-block linears stay bf16."""
    from ltx_core.loader.module_ops import ModuleOps
    from ltx_core.model.transformer.model import LTXModel

    def mutate(model: torch.nn.Module) -> torch.nn.Module:
        for name, module in model.named_modules():
            if name.startswith("transformer_blocks.") and isinstance(module, torch.nn.Linear):
                module.forward = scaled_mm_forward(module)
        return model

    return ModuleOps(name="fp8_scaled_mm_forward", matcher=lambda m: isinstance(m, LTXModel), mutator=mutate)
