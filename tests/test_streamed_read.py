"""streamed_read.py: safetensors files read in chunks through staging buffers give exactly what safetensors reads,
whatever the chunk size; damaged files are refused. The CUDA path (pinned buffers, asynchronous copies) is the
gpu-marked test at the end."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from ltx_demo import streamed_read
from ltx_demo.residency import kept as built_states


def mixed_tensors() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {
        "weight.bf16": torch.randn(33, 17, generator=generator).to(torch.bfloat16),
        "weight.fp8": torch.randn(64, 48, generator=generator).to(torch.float8_e4m3fn),
        "absmax.f32": torch.randn(29, generator=generator),
        "packed.u8": torch.randint(0, 255, (301,), dtype=torch.uint8, generator=generator),
        "mask.bool": torch.rand(7, 3, generator=generator) > 0.5,
        "positions.i64": torch.arange(11),
        "scale": torch.tensor(0.125),
        "empty": torch.empty(0, 4),
    }


def same_tensors(read: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> bool:
    """Same keys, dtypes, shapes and bytes (bytes: fp8 has no equality of its own on the CPU)."""

    def as_bytes(tensor: torch.Tensor) -> torch.Tensor:
        return tensor.cpu().reshape(-1).view(torch.uint8)

    return read.keys() == expected.keys() and all(
        read[k].dtype == v.dtype and read[k].shape == v.shape and torch.equal(as_bytes(read[k]), as_bytes(v))
        for k, v in expected.items()
    )


@pytest.mark.parametrize("chunk_bytes", [7, 64, 1000, 1 << 20])
def test_chunked_reads_give_what_safetensors_reads(tmp_path, chunk_bytes):
    path = tmp_path / "mixed.safetensors"
    save_file(mixed_tensors(), str(path))
    read = streamed_read.read_file(path, torch.device("cpu"), chunk_bytes=chunk_bytes)
    assert same_tensors(read, load_file(str(path)))
    assert same_tensors(read, mixed_tensors())


def test_a_truncated_file_is_refused(tmp_path):
    path = tmp_path / "cut.safetensors"
    save_file(mixed_tensors(), str(path))
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(streamed_read.StreamedReadError, match=r"cut\.safetensors"):
        streamed_read.read_file(path, torch.device("cpu"))


@pytest.mark.parametrize(
    "content",
    [b"", b"\x05\x00\x00\x00\x00\x00\x00\x00{oops", b"\xff" * 8 + b"{}", b"\x02\x00\x00\x00\x00\x00\x00\x00{}xx"],
)
def test_a_malformed_file_is_refused(tmp_path, content):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(content)
    with pytest.raises(streamed_read.StreamedReadError, match=r"bad\.safetensors"):
        streamed_read.read_file(path, torch.device("cpu"))


def test_a_damaged_kept_shard_is_an_unreadable_state(tmp_path):
    model = torch.nn.Linear(32, 32)
    built_states.save_model_state(model, tmp_path / "m")
    shard = next((tmp_path / "m").glob("part-*.safetensors"))
    shard.write_bytes(shard.read_bytes()[:100])
    with pytest.raises(built_states.UnreadableState, match="m:"):
        built_states.load_state(tmp_path / "m", torch.device("cpu"))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_chunked_reads_onto_cuda(tmp_path):
    path = tmp_path / "mixed.safetensors"
    big = mixed_tensors() | {"big.bf16": torch.randn(1024, 1024).to(torch.bfloat16)}
    save_file(big, str(path))
    for chunk_bytes in (1000, 300_000, 1 << 24):  # tensors straddling chunks, both buffers reused many times
        read = streamed_read.read_file(path, torch.device("cuda"), chunk_bytes=chunk_bytes)
        assert all(t.device.type == "cuda" for t in read.values())
        assert same_tensors(read, big)
