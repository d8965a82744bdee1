"""What a node agent runs on and how busy it is: one GPU read through NVML (nvidia-ml-py), or the host's
memory where there is no GPU. A host without NVML says so in a note, and still works.

``hardware_sku`` turns what NVML reports into the SKU id that deployments ask for and placement matches
("gpu-nvidia-h100-80gb"); ``host_memory`` reads a CPU node's RAM.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

CPU = "cpu"  # the SKU of a node with no GPU
GPU_UNKNOWN = "gpu-unknown"  # the SKU of a GPU that NVML could not read

GIB = 2**30

# Memory sizes (GB, as sold) that cards are named by. NVML reports the memory left after ECC and firmware
# reservations (an H100 80GB shows 79.6 GiB, a T4 15.0, an L4 22.5, an H200 140.4), so plain rounding
# names a card by a size nobody sells; the SKU takes the smallest sold size at or just above the reading.
_SOLD_SIZES_GB = (1, 2, 3, 4, 5, 6, 8, 10, 11, 12, 16, 20, 24, 32, 40, 48, 64, 80, 94, 96, 141, 144, 180,
                  192, 288)
_SNAP_RATIO = 1.10  # a reading snaps to a sold size at most 10% above it, else rounds to whole GiB

# Words in an NVML name that are a brand (the vendor is known), a form factor or a memory type: the same
# card in another package is the same SKU for placement ("A100-SXM4-40GB" and "A100-PCIE-40GB").
_BRANDS = {"nvidia": "nvidia", "geforce": "nvidia", "tesla": "nvidia", "quadro": "nvidia"}
_DROPPED = {"sxm", "sxm2", "sxm3", "sxm4", "sxm5", "sxm6", "pcie", "hbm", "hbm2", "hbm2e", "hbm3", "hbm3e",
            "gddr6", "gddr6x", "gddr7", "generation"}
_SIZE_WORD = re.compile(r"\d+gb")


def hardware_sku(name: str, memory_total_bytes: int) -> str:
    """The SKU id of a GPU from its NVML name and memory: ``gpu-<vendor>-<model>-<size>gb``, lowercase.

    >>> hardware_sku("NVIDIA H100 80GB HBM3", 81559 * 2**20)
    'gpu-nvidia-h100-80gb'
    >>> hardware_sku("Tesla T4", 15360 * 2**20)
    'gpu-nvidia-t4-16gb'

    The size comes from the memory NVML reports (a size in the name is dropped, so the two cannot
    disagree); a memory of 0 (unknown) leaves the size out. NVML reads only NVIDIA devices, so a name
    with no vendor word is NVIDIA's.
    """
    words = [w for w in re.split(r"[^a-z0-9]+", name.lower()) if w]
    vendors = [_BRANDS[w] for w in words if w in _BRANDS]
    model = [w for w in words if w not in _BRANDS and w not in _DROPPED and not _SIZE_WORD.fullmatch(w)]
    if not model:
        return GPU_UNKNOWN
    size = [f"{_sold_size_gb(memory_total_bytes)}gb"] if memory_total_bytes > 0 else []
    return "-".join(["gpu", vendors[0] if vendors else "nvidia", *model, *size])


def _sold_size_gb(memory_total_bytes: int) -> int:
    gib = memory_total_bytes / GIB
    for size in _SOLD_SIZES_GB:
        if gib <= size + 0.05 and size <= gib * _SNAP_RATIO:
            return size
    return max(1, round(gib))


def host_memory(meminfo_path: str = "/proc/meminfo") -> tuple[int, int]:
    """The host's RAM as (total, used) bytes; used is total less what the kernel calls available.

    Reads ``/proc/meminfo`` (Linux); elsewhere falls back to ``os.sysconf``, whose free pages leave out
    reclaimable cache. (0, 0) where neither answers.
    """
    try:
        with open(meminfo_path) as f:
            kib = {k: int(v.split()[0]) for k, v in (line.split(":", 1) for line in f if ":" in line)}
        total, available = kib["MemTotal"] * 1024, kib["MemAvailable"] * 1024
        return total, total - available
    except (OSError, KeyError, ValueError, IndexError):
        pass
    try:
        page = os.sysconf("SC_PAGE_SIZE")
        total = os.sysconf("SC_PHYS_PAGES") * page
        return total, total - os.sysconf("SC_AVPHYS_PAGES") * page
    except (OSError, ValueError, AttributeError):
        return 0, 0


@dataclass(frozen=True)
class GpuReading:
    """One GPU's figures at one moment, in base units (bytes, percent, degrees Celsius, watts)."""

    index: int
    uuid: str
    name: str
    memory_total_bytes: int
    memory_used_bytes: int
    utilization_percent: float | None
    temperature_c: float | None
    power_w: float | None

    @property
    def hardware(self) -> str:
        return hardware_sku(self.name, self.memory_total_bytes)


class Nvml:
    """Reads one GPU by its NVML index. ``note`` says why there are no figures, when there are none.

    No NVML error escapes: a missing library or driver at start, or a GPU that stops answering later
    (``NVMLError_GpuIsLost``), makes ``read`` return None with the reason in ``note``.
    """

    def __init__(self, gpu_index: int | None) -> None:
        self.gpu_index = gpu_index
        self.note = "cpu node: no accelerator assigned, so no NVML figures; memory is the host's RAM"
        self._handle = None
        self._name = self._uuid = ""
        if gpu_index is None:
            return
        try:
            import pynvml

            pynvml.nvmlInit()
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(gpu_index)
            self._name = _text(pynvml.nvmlDeviceGetName(self._handle))  # fixed for the board: read once
            self._uuid = _text(pynvml.nvmlDeviceGetUUID(self._handle))
            self.note = ""
        except Exception as err:  # ImportError, NVMLError_LibraryNotFound, NVMLError_DriverNotLoaded...
            self._handle = None
            self.note = f"NVML not available: {_describe(err)}"

    @property
    def available(self) -> bool:
        return self._handle is not None

    def process_memory_bytes(self, pids: list[int]) -> int | None:
        """GPU memory these processes hold on this GPU (NVML's compute processes), or None where NVML
        cannot say."""
        if self._handle is None:
            return None
        try:
            import pynvml

            running = pynvml.nvmlDeviceGetComputeRunningProcesses(self._handle)
        except Exception as err:
            self.note = f"NVML process read failed: {_describe(err)}"
            return None
        wanted = set(pids)
        return sum(int(p.usedGpuMemory or 0) for p in running if p.pid in wanted)

    def read(self) -> GpuReading | None:
        """The GPU's figures now, or None (with ``note`` saying why) where NVML cannot give them."""
        if self._handle is None:
            return None
        try:
            import pynvml

            h = self._handle
            mem = pynvml.nvmlDeviceGetMemoryInfo(h)
            reading = GpuReading(
                index=self.gpu_index, uuid=self._uuid, name=self._name,
                memory_total_bytes=int(mem.total), memory_used_bytes=int(mem.used),
                utilization_percent=_optional(lambda: float(pynvml.nvmlDeviceGetUtilizationRates(h).gpu)),
                temperature_c=_optional(
                    lambda: float(pynvml.nvmlDeviceGetTemperature(h, pynvml.NVML_TEMPERATURE_GPU))),
                power_w=_optional(lambda: pynvml.nvmlDeviceGetPowerUsage(h) / 1000.0),  # NVML gives mW
            )
        except Exception as err:
            self.note = f"NVML read failed: {_describe(err)}"
            return None
        self.note = ""
        return reading


def process_tree(root: int, proc: str = "/proc") -> list[int]:
    """``root`` and its descendants (Linux /proc); only what still exists."""
    found, pending = [], [root]
    while pending:
        pid = pending.pop()
        try:
            children = Path(f"{proc}/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            continue
        found.append(pid)
        pending += [int(c) for c in children]
    return found


def rss_bytes(pids: list[int], proc: str = "/proc") -> int:
    """Resident memory of these processes, in bytes (0 for one that is gone)."""
    total = 0
    for pid in pids:
        try:
            status = Path(f"{proc}/{pid}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) * 1024
    return total


def _optional(read):  # some boards do not report every figure (NVMLError_NotSupported)
    try:
        return read()
    except Exception:
        return None


def _text(value: str | bytes) -> str:  # nvidia-ml-py before 11.515 returns bytes
    return value.decode() if isinstance(value, bytes) else value


def _describe(err: Exception) -> str:
    return f"{type(err).__name__}: {err}"
