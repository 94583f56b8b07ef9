"""Read a safetensors file onto a device fast: parallel reads into pinned staging buffers, each buffer's copy to the
device running while the next one is read.

safetensors' own load_file(device="cuda") copies each tensor out of the mapped file into pageable host memory and
then to the device, one synchronous copy at a time (~5 GB/s for cold-start's kept 19 GB transformer on an H100, from
the page cache). Here the file's data section is read in chunks by a few threads (os.preadv releases the GIL, so the
reads run side by side, from the page cache or the disk) into one of two pinned buffers, and the chunk goes to the
device with asynchronous copies while the other buffer is filled. On the CPU the same chunks are copied into the
tensors directly (no pinning), which is what the CPU tests exercise.

The file format is safetensors' published one: an 8-byte little-endian header size, a JSON header naming each
tensor's dtype, shape and byte range in the data section, then the data. Names of dtypes are safetensors' own
(safetensors.torch._TYPES). Anything that does not add up (a truncated file, ranges out of bounds or overlapping, an
unknown dtype) raises StreamedReadError, never a partial state.
"""

from __future__ import annotations

import json
import os
import struct
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import _TYPES as SAFETENSORS_DTYPES

CHUNK_BYTES = 256 * 1024**2  # per staging buffer; two of them are pinned while a file is read
READ_THREADS = 4
HEADER_LIMIT = 100 * 1024**2  # safetensors' own limit on the JSON header


class StreamedReadError(ValueError):
    """A safetensors file that cannot be read as one (truncated, malformed header, unknown dtype)."""


@dataclass(frozen=True)
class TensorRange:
    key: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    begin: int  # byte range in the data section
    end: int


def layout(path: Path) -> tuple[int, list[TensorRange]]:
    """Where the data section starts and each tensor's byte range in it, in file order, checked against the file."""
    size = path.stat().st_size
    with path.open("rb") as file:
        raw = file.read(8)
        if len(raw) < 8:
            raise StreamedReadError(f"{path.name}: {size} bytes, too short for a safetensors file")
        (header_size,) = struct.unpack("<Q", raw)
        if header_size > min(HEADER_LIMIT, size - 8):
            raise StreamedReadError(f"{path.name}: header of {header_size} bytes in a {size}-byte file")
        try:
            header = json.loads(file.read(header_size))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise StreamedReadError(f"{path.name}: unreadable header ({exc})") from exc
    data_start = 8 + header_size
    ranges = []
    try:
        for key, entry in header.items():
            if key == "__metadata__":
                continue
            dtype = SAFETENSORS_DTYPES[entry["dtype"]]
            begin, end = (int(offset) for offset in entry["data_offsets"])
            shape = tuple(int(n) for n in entry["shape"])
            ranges.append(TensorRange(key, dtype, shape, begin, end))
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise StreamedReadError(f"{path.name}: malformed header entry ({exc!r})") from exc
    ranges.sort(key=lambda r: r.begin)
    position = 0
    for r in ranges:
        expected = torch.Size(r.shape).numel() * r.dtype.itemsize
        if r.begin != position or r.end - r.begin != expected:
            raise StreamedReadError(
                f"{path.name}: {r.key} has bytes {r.begin}..{r.end}, expected {expected} at {position}"
            )
        position = r.end
    if data_start + position != size:
        raise StreamedReadError(f"{path.name}: {size} bytes, its header describes {data_start + position}")
    return data_start, ranges


def _read_exactly(fd: int, into: memoryview, offset: int) -> None:
    done = 0
    while done < len(into):
        got = os.preadv(fd, [into[done:]], offset + done)
        if got <= 0:
            raise StreamedReadError(f"the file ended {len(into) - done} bytes early")
        done += got


def read_file(path: Path, device: torch.device, chunk_bytes: int = CHUNK_BYTES) -> dict[str, torch.Tensor]:
    """Every tensor of the safetensors file at `path`, on `device`."""
    data_start, ranges = layout(path)
    tensors = {r.key: torch.empty(r.shape, dtype=r.dtype, device=device) for r in ranges}
    total = ranges[-1].end if ranges else 0
    if total == 0:
        return tensors
    as_bytes = [(r, tensors[r.key].reshape(-1).view(torch.uint8)) for r in ranges if r.end > r.begin]
    on_cuda = device.type == "cuda"
    chunk_bytes = min(chunk_bytes, total)
    buffers = [torch.empty(chunk_bytes, dtype=torch.uint8, pin_memory=on_cuda) for _ in range(2 if on_cuda else 1)]
    copied = [torch.cuda.Event() if on_cuda else None for _ in buffers]
    fd = os.open(path, os.O_RDONLY)
    try:
        with ThreadPoolExecutor(READ_THREADS) as readers:
            next_tensor = 0
            for number, chunk_start in enumerate(range(0, total, chunk_bytes)):
                chunk_end = min(chunk_start + chunk_bytes, total)
                slot = number % len(buffers)
                if copied[slot] is not None:
                    copied[slot].synchronize()  # its previous chunk has reached the device
                view = memoryview(buffers[slot].numpy())[: chunk_end - chunk_start]
                part = -(-len(view) // READ_THREADS)
                reads = [
                    readers.submit(_read_exactly, fd, view[i : i + part], data_start + chunk_start + i)
                    for i in range(0, len(view), part)
                ]
                for read in reads:
                    read.result()
                # every tensor overlapping [chunk_start, chunk_end) gets its part of the chunk
                index = next_tensor
                while index < len(as_bytes) and as_bytes[index][0].begin < chunk_end:
                    r, target = as_bytes[index]
                    lo, hi = max(r.begin, chunk_start), min(r.end, chunk_end)
                    target[lo - r.begin : hi - r.begin].copy_(
                        buffers[slot][lo - chunk_start : hi - chunk_start], non_blocking=on_cuda
                    )
                    if r.end <= chunk_end:
                        next_tensor = index + 1
                    index += 1
                if copied[slot] is not None:
                    copied[slot].record()
        for event in copied:
            if event is not None:
                event.synchronize()  # the buffers go back to the pinned pool only once nothing reads them
    finally:
        os.close(fd)
    return tensors
