"""Several devices: the --gpus flag (which devices, one process each) and the environment every process the project
starts runs with (NVLink multicast off, the one GPU a child may see). Torch-free: the parent reads it before spawning.
"""

from __future__ import annotations

import logging
import os
from collections.abc import MutableMapping
from dataclasses import dataclass

logger = logging.getLogger(__name__)

# NVLink multicast (NVLS) stays off on the several-GPU machines: NCCL's NVLS algorithms, torch's symmetric-memory
# multicast and NVSHMEM's. Set in the parent at startup and in every child before it imports torch.
MULTICAST_OFF = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}
CPU_PREFIX = "cpu:"


def disable_nvlink_multicast(environ: MutableMapping[str, str] | None = None) -> None:
    """Set the three NVLink-multicast switches in `environ` (default: this process's), overriding other values."""
    environ = os.environ if environ is None else environ
    for name, value in MULTICAST_OFF.items():
        if environ.get(name, value) != value:
            logger.warning("%s=%s overridden to %s: NVLink multicast stays off", name, environ[name], value)
        environ[name] = value


def visible_gpu_ids() -> tuple[str, ...]:
    """The GPUs this process may use: CUDA_VISIBLE_DEVICES when set, else every GPU NVML counts (none: ())."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return tuple(part.strip() for part in visible.split(",") if part.strip() and part.strip() != "-1")
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            return tuple(str(i) for i in range(pynvml.nvmlDeviceGetCount()))
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # no driver, no NVML: no GPU
        return ()


@dataclass(frozen=True, slots=True)
class ProcessDevices:
    """One process per entry of `gpus` (CUDA device ids as this machine names them), or `cpu_processes` CPU ones."""

    gpus: tuple[str, ...] = ()
    cpu_processes: int = 0

    @classmethod
    def parse(cls, flag: str) -> ProcessDevices:
        """--gpus: 'all' (every visible GPU), '0,1' (those GPUs), or 'cpu:N' (N processes on the CPU)."""
        text = flag.strip().lower()
        if text.startswith(CPU_PREFIX):
            count = text.removeprefix(CPU_PREFIX)
            if not count.isdigit() or int(count) < 1:
                raise ValueError(f"--gpus {flag}: 'cpu:N' needs a whole number of processes, 1 or more")
            return cls(cpu_processes=int(count))
        if text == "all":
            gpus = visible_gpu_ids()
            if not gpus:
                raise ValueError("--gpus all: no GPU is visible here (on a CPU machine use --gpus cpu:N)")
            return cls(gpus=gpus)
        gpus = tuple(part.strip() for part in text.split(","))
        if not all(g.isdigit() for g in gpus) or len(set(gpus)) != len(gpus):
            raise ValueError(f"--gpus {flag}: expected 'all', distinct GPU ids such as '0,1', or 'cpu:N'")
        return cls(gpus=gpus)

    @property
    def count(self) -> int:
        return len(self.gpus) or self.cpu_processes

    @property
    def cuda(self) -> bool:
        return bool(self.gpus)

    def device(self, index: int) -> str:
        """The device process `index` passes to its Engine (each child sees only its own GPU, as cuda:0)."""
        return "cuda" if self.cuda else "cpu"

    def label(self, index: int) -> str:
        return f"GPU {self.gpus[index]}" if self.cuda else f"CPU process {index}"

    def child_environment(self, index: int) -> dict[str, str]:
        """What process `index` sets before it imports torch: its one GPU (or none; then its share of the cores) and
        NVLink multicast off."""
        env = dict(MULTICAST_OFF)
        env["CUDA_VISIBLE_DEVICES"] = self.gpus[index] if self.cuda else ""
        if not self.cuda and "OMP_NUM_THREADS" not in os.environ:  # CPU processes share the cores, not each all
            env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // self.cpu_processes))
        return env

    def describe(self) -> str:
        return f"GPUs {','.join(self.gpus)}" if self.cuda else f"{self.cpu_processes} CPU process(es)"


def enter_child(environment: dict[str, str]) -> None:
    """First thing a spawned child does, before torch is imported: its device and the multicast switches."""
    os.environ.update(environment)
    disable_nvlink_multicast()
