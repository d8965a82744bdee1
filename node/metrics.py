"""Accelerator readings from NVML (nvidia-ml-py). A host without NVML says so, and still works."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GpuReading:
    """One GPU's figures at one moment."""

    name: str
    memory_total_bytes: int
    memory_used_bytes: int
    utilization_percent: float | None
    temperature_c: float | None
    power_w: float | None


class Nvml:
    """Reads one GPU by index. ``available`` is False (with ``note`` saying why) where NVML is not."""

    def __init__(self, gpu_index: int | None) -> None:
        self.gpu_index = gpu_index
        self.available = False
        self.note = "cpu node: no accelerator assigned"
        self._handle = None
        if gpu_index is None:
            return
        try:
            import pynvml

            pynvml.nvmlInit()
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(gpu_index)
            self.available, self.note = True, ""
        except Exception as err:  # NVMLError_LibraryNotFound and friends: report, do not fail
            self.note = f"NVML not available: {err}"

    def read(self) -> GpuReading | None:
        if not self.available:
            return None
        import pynvml

        h = self._handle
        mem = pynvml.nvmlDeviceGetMemoryInfo(h)
        name = pynvml.nvmlDeviceGetName(h)
        return GpuReading(
            name=name.decode() if isinstance(name, bytes) else name,
            memory_total_bytes=int(mem.total),
            memory_used_bytes=int(mem.used),
            utilization_percent=_optional(lambda: float(pynvml.nvmlDeviceGetUtilizationRates(h).gpu)),
            temperature_c=_optional(lambda: float(pynvml.nvmlDeviceGetTemperature(h, 0))),
            power_w=_optional(lambda: pynvml.nvmlDeviceGetPowerUsage(h) / 1000.0),
        )


def _optional(read):  # some boards do not report every figure
    try:
        return read()
    except Exception:
        return None
