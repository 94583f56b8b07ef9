"""fp8_matmul.rowwise_scaled_mm's fallback: where cuBLAS has no fast-accumulation kernel for a shape (on the H200 a
bias with K = 8192 and under 64 rows, docs/device/fast-accum-shapes-h200.json) the GEMM runs with float32 sums, and
the shape is remembered. There is no fp8 GEMM without a GPU here, so torch._scaled_mm is replaced by a stand-in that
refuses exactly as cuBLAS does (its message) and computes in float32 otherwise; the GPU test is in test_gpu.py."""

from __future__ import annotations

import pytest
import torch

from ltx_demo import fp8_matmul

REFUSAL = "CUDA error: CUBLAS_STATUS_NOT_SUPPORTED when calling `cublasLtMatmulAlgoGetHeuristic( ltHandle, ...)`"


@pytest.fixture
def cublas(monkeypatch):
    """torch._scaled_mm as cuBLAS answers it: fast accumulation refused with a bias and under 64 rows."""
    calls = []

    def scaled_mm(a, b, scale_a, scale_b, bias=None, out_dtype=None, use_fast_accum=False):
        calls.append((a.shape[0], use_fast_accum))
        if use_fast_accum and bias is not None and a.shape[0] < 64:
            raise RuntimeError(REFUSAL)
        out = (a.float() * scale_a) @ (b.float() * scale_b)
        return (out if bias is None else out + bias.float()).to(out_dtype)

    monkeypatch.setattr(torch, "_scaled_mm", scaled_mm)
    monkeypatch.setattr(fp8_matmul, "_FAST_REFUSED", set())
    return calls


def _operands(rows: int, bias: bool):
    torch.manual_seed(rows)
    weight = torch.randn(32, 128)
    x = torch.randn(rows, 128)
    return (x, weight.t(), torch.ones(rows, 1), torch.ones(1, 32), torch.randn(32) if bias else None, torch.float32)


def test_a_refused_shape_runs_with_float32_sums_and_is_remembered(cublas):
    args = _operands(8, bias=True)
    first = fp8_matmul.rowwise_scaled_mm(*args)
    second = fp8_matmul.rowwise_scaled_mm(*args)
    assert torch.equal(first, second)
    assert torch.allclose(first, args[0] @ args[1] + args[4], atol=1e-4)
    assert cublas == [(8, True), (8, False), (8, False)]  # refused once, then not asked again
    assert fp8_matmul._FAST_REFUSED == {(8, 128, 32, True)}


def test_shapes_cublas_takes_keep_fast_accumulation(cublas):
    for rows, bias in ((8, False), (64, True), (4992, True)):
        fp8_matmul.rowwise_scaled_mm(*_operands(rows, bias))
    assert cublas == [(8, True), (64, True), (4992, True)] and not fp8_matmul._FAST_REFUSED


def test_fast_accumulation_off_never_asks_for_it(cublas, monkeypatch):
    monkeypatch.setattr(fp8_matmul, "FAST_ACCUMULATION", False)
    fp8_matmul.rowwise_scaled_mm(*_operands(8, bias=True))
    assert cublas == [(8, False)]


def test_other_gemm_errors_are_raised(monkeypatch):
    def broken(*_args, **_kwargs):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(torch, "_scaled_mm", broken)
    with pytest.raises(RuntimeError, match="illegal memory access"):
        fp8_matmul.rowwise_scaled_mm(*_operands(8, bias=True))
