"""What a node agent reports about its hardware: the SKU from NVML's name and memory, NVML readings in base
units (through a fake GPU patched into the real nvidia-ml-py module), a host without NVML, and a CPU node's
RAM. No GPU is needed."""

from __future__ import annotations

import re
import sys

import pynvml
import pytest

import node.agent
from node.agent import NodeAgent
from node.metrics import Nvml, hardware_sku, host_memory

MIB = 2**20
GIB = 2**30

# (NVML name, total memory NVML reports in MiB as nvidia-smi shows it, SKU)
REAL_BOARDS = [
    ("NVIDIA H100 80GB HBM3", 81559, "gpu-nvidia-h100-80gb"),
    ("NVIDIA H100 PCIe", 81559, "gpu-nvidia-h100-80gb"),
    ("NVIDIA H100 NVL", 95830, "gpu-nvidia-h100-nvl-94gb"),
    ("NVIDIA H200", 143771, "gpu-nvidia-h200-141gb"),
    ("NVIDIA A100-SXM4-40GB", 40960, "gpu-nvidia-a100-40gb"),
    ("NVIDIA A100-PCIE-40GB", 40960, "gpu-nvidia-a100-40gb"),
    ("NVIDIA A100-SXM4-80GB", 81920, "gpu-nvidia-a100-80gb"),
    ("NVIDIA A100 80GB PCIe", 81920, "gpu-nvidia-a100-80gb"),
    ("NVIDIA GeForce RTX 4090", 24564, "gpu-nvidia-rtx-4090-24gb"),
    ("NVIDIA GeForce RTX 2080 Ti", 11264, "gpu-nvidia-rtx-2080-ti-11gb"),
    ("Tesla T4", 15360, "gpu-nvidia-t4-16gb"),
    ("Tesla V100-SXM2-16GB", 16160, "gpu-nvidia-v100-16gb"),
    ("Tesla K80", 11441, "gpu-nvidia-k80-12gb"),
    ("NVIDIA L4", 23034, "gpu-nvidia-l4-24gb"),
    ("NVIDIA A10G", 23028, "gpu-nvidia-a10g-24gb"),
    ("NVIDIA L40S", 46068, "gpu-nvidia-l40s-48gb"),
    ("NVIDIA RTX 6000 Ada Generation", 49140, "gpu-nvidia-rtx-6000-ada-48gb"),
    ("Quadro RTX 8000", 46080, "gpu-nvidia-rtx-8000-48gb"),
]


@pytest.mark.parametrize(("name", "total_mib", "sku"), REAL_BOARDS, ids=[b[0] for b in REAL_BOARDS])
def test_the_sku_of_real_boards_names_vendor_model_and_memory_as_sold(name, total_mib, sku):
    assert hardware_sku(name, total_mib * MIB) == sku
    assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", sku)


def test_memory_far_from_any_sold_size_rounds_to_whole_gib_and_unknown_memory_is_left_out():
    assert hardware_sku("NVIDIA Exotic X1", 13 * GIB) == "gpu-nvidia-exotic-x1-13gb"  # 16 is over 10% away
    assert hardware_sku("NVIDIA Exotic X1", 300 * GIB) == "gpu-nvidia-exotic-x1-300gb"  # above every size
    assert hardware_sku("Tesla T4", 0) == "gpu-nvidia-t4"
    assert hardware_sku("", 16 * GIB) == hardware_sku("NVIDIA", 16 * GIB) == "gpu-unknown"


def test_host_memory_is_total_and_total_less_available(tmp_path):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       65536000 kB\nMemFree:         1000000 kB\n"
                       "MemAvailable:   49152000 kB\nBuffers:          100 kB\n")
    assert host_memory(str(meminfo)) == (65536000 * 1024, (65536000 - 49152000) * 1024)


def test_host_memory_falls_back_to_sysconf_without_proc(tmp_path):
    total, used = host_memory(str(tmp_path / "absent"))
    assert total > 0 and 0 <= used <= total


class FakeGpu:
    """One board behind the nvidia-ml-py functions the agent calls; figures in NVML's own units."""

    def __init__(self) -> None:
        self.name: str | bytes = "NVIDIA H100 80GB HBM3"
        self.uuid: str | bytes = "GPU-5d2c0f0e-8a4b-4f6e-9c1d-0123456789ab"
        self.total, self.used = 81559 * MIB, 20 * GIB
        self.busy_percent, self.temp_c, self.power_mw = 87, 64, 412_345
        self.failing: dict[str, int] = {}  # function name -> NVML error code it raises
        self.init_error: int | None = None

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        # setattr raises if nvidia-ml-py has no such function, so the names the agent calls are checked.
        for fn in ("nvmlInit", "nvmlDeviceGetHandleByIndex", "nvmlDeviceGetName", "nvmlDeviceGetUUID",
                   "nvmlDeviceGetMemoryInfo", "nvmlDeviceGetUtilizationRates", "nvmlDeviceGetTemperature",
                   "nvmlDeviceGetPowerUsage"):
            monkeypatch.setattr(pynvml, fn, self._guarded(fn, getattr(self, fn)))

    def _guarded(self, fn, impl):
        def call(*args):
            if fn in self.failing:
                raise pynvml.NVMLError(self.failing[fn])
            return impl(*args)
        return call

    def nvmlInit(self):
        if self.init_error is not None:
            raise pynvml.NVMLError(self.init_error)

    def nvmlDeviceGetHandleByIndex(self, index):
        return ("handle", index)

    def nvmlDeviceGetName(self, handle):
        return self.name

    def nvmlDeviceGetUUID(self, handle):
        return self.uuid

    def nvmlDeviceGetMemoryInfo(self, handle):
        mem = pynvml.c_nvmlMemory_t()
        mem.total, mem.used, mem.free = self.total, self.used, self.total - self.used
        return mem

    def nvmlDeviceGetUtilizationRates(self, handle):
        util = pynvml.c_nvmlUtilization_t()
        util.gpu, util.memory = self.busy_percent, 40
        return util

    def nvmlDeviceGetTemperature(self, handle, sensor):
        assert sensor == pynvml.NVML_TEMPERATURE_GPU
        return self.temp_c

    def nvmlDeviceGetPowerUsage(self, handle):
        return self.power_mw


@pytest.fixture
def gpu(monkeypatch) -> FakeGpu:
    fake = FakeGpu()
    fake.install(monkeypatch)
    return fake


def test_a_reading_is_in_base_units(gpu):
    reading = Nvml(2).read()
    assert reading.index == 2 and reading.uuid == gpu.uuid and reading.name == "NVIDIA H100 80GB HBM3"
    assert (reading.memory_total_bytes, reading.memory_used_bytes) == (81559 * MIB, 20 * GIB)
    assert reading.utilization_percent == 87.0
    assert reading.temperature_c == 64.0
    assert reading.power_w == pytest.approx(412.345)  # NVML reports milliwatts
    assert reading.hardware == "gpu-nvidia-h100-80gb"


def test_bytes_names_from_older_nvidia_ml_py_are_decoded(gpu):
    gpu.name, gpu.uuid = b"Tesla T4", b"GPU-t4"
    reading = Nvml(0).read()
    assert (reading.name, reading.uuid) == ("Tesla T4", "GPU-t4")


def test_figures_a_board_does_not_report_are_none_and_the_rest_still_read(gpu):
    gpu.failing = {"nvmlDeviceGetTemperature": pynvml.NVML_ERROR_NOT_SUPPORTED,
                   "nvmlDeviceGetPowerUsage": pynvml.NVML_ERROR_NOT_SUPPORTED}
    nvml = Nvml(0)
    reading = nvml.read()
    assert (reading.temperature_c, reading.power_w) == (None, None)
    assert reading.utilization_percent == 87.0 and reading.memory_used_bytes == 20 * GIB
    assert nvml.note == ""


def test_without_the_nvml_library_the_agent_says_so(gpu):
    gpu.init_error = pynvml.NVML_ERROR_LIBRARY_NOT_FOUND
    nvml = Nvml(0)
    assert nvml.read() is None and not nvml.available
    assert nvml.note == "NVML not available: NVMLError_LibraryNotFound: NVML Shared Library Not Found"


def test_without_nvidia_ml_py_installed_the_agent_says_so(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml raises ImportError
    nvml = Nvml(0)
    assert nvml.read() is None and nvml.note.startswith("NVML not available: ModuleNotFoundError")


def test_a_gpu_lost_mid_run_degrades_to_the_note_and_recovers(gpu):
    nvml = Nvml(0)
    gpu.failing = {"nvmlDeviceGetMemoryInfo": pynvml.NVML_ERROR_GPU_IS_LOST}
    assert nvml.read() is None
    assert nvml.note == "NVML read failed: NVMLError_GpuIsLost: GPU is lost"
    gpu.failing = {}
    assert nvml.read().memory_used_bytes == 20 * GIB and nvml.note == ""


async def test_the_agent_reports_its_gpu(gpu):
    info = await NodeAgent("host1-gpu2", "ray1", "10.0.0.1", device="cuda:0", nvml_index=2).info()
    assert (info.hardware, info.accelerator) == ("gpu-nvidia-h100-80gb", "NVIDIA H100 80GB HBM3")
    assert (info.gpu_index, info.gpu_uuid) == (2, gpu.uuid)
    assert (info.memory_total_bytes, info.memory_used_bytes) == (81559 * MIB, 20 * GIB)
    assert (info.utilization_percent, info.temperature_c) == (87.0, 64.0)
    assert info.power_w == pytest.approx(412.345)
    assert info.metrics_note == ""


async def test_the_agent_of_a_gpu_nvml_cannot_read_offers_no_memory(gpu):
    agent = NodeAgent("host1-gpu2", device="cuda:0", nvml_index=2)
    gpu.failing = {"nvmlDeviceGetMemoryInfo": pynvml.NVML_ERROR_GPU_IS_LOST}
    info = await agent.info()
    assert (info.hardware, info.accelerator, info.gpu_index) == ("gpu-unknown", "gpu", 2)
    assert (info.memory_total_bytes, info.temperature_c, info.power_w) == (0, None, None)
    assert "GpuIsLost" in info.metrics_note


async def test_a_cpu_agent_reports_the_host_ram_and_no_nvml(monkeypatch):
    monkeypatch.setattr(node.agent, "host_memory", lambda: (64 * GIB, 9 * GIB))
    info = await NodeAgent("host2-cpu").info()
    assert (info.hardware, info.accelerator, info.gpu_index, info.gpu_uuid) == ("cpu", "cpu", None, "")
    assert (info.memory_total_bytes, info.memory_used_bytes) == (64 * GIB, 9 * GIB)
    assert (info.utilization_percent, info.temperature_c, info.power_w) == (None, None, None)
    assert "no accelerator" in info.metrics_note and "NVML" in info.metrics_note
