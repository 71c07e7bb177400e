"""Read the hardware: every GPU through NVML (``pynvml``), and the CPU and RAM always.

NVML is optional at run time: no driver, no library or no device gives an empty GPU list plus a
``problems`` line that ``p2pnode status`` shows; it is never an error. The NVML module can be
injected (``nvml=``) so tests fake only the library, never the node.
"""

from __future__ import annotations

import functools
import os
import platform
from dataclasses import dataclass, field, replace
from types import ModuleType
from typing import Any

from p2pnode.wire.capacity_ad import CpuInfo, GpuInfo


@dataclass(frozen=True, slots=True)
class Hardware:
    cpu: CpuInfo
    gpus: tuple[GpuInfo, ...]
    problems: tuple[str, ...] = field(default=())


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


class HardwareProbe:
    """Holds one NVML session open between reads (``nvmlInit`` is slow); close it at shutdown."""

    def __init__(self, nvml: ModuleType | None = None, *, use_gpu: bool = True, gpus: tuple[int, ...] = (),
                 max_gpu_mem: int = 0, cpu_threads: int = 0) -> None:
        """``gpus``, ``max_gpu_mem``, ``cpu_threads``: what the operator shares (see :func:`offered`)."""
        self._nvml = nvml
        self._use_gpu = use_gpu
        self.gpus, self.max_gpu_mem, self.cpu_threads = gpus, max_gpu_mem, cpu_threads
        self._nvml_ok = False
        self._nvml_problem: str | None = None
        self._opened = False

    def open(self) -> None:
        if self._opened:
            return
        self._opened = True
        if not self._use_gpu:
            self._nvml_problem = "GPU use disabled by configuration"
            return
        try:
            if self._nvml is None:
                import pynvml

                self._nvml = pynvml
            self._nvml.nvmlInit()
            self._nvml_ok = True
        except Exception as exc:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...
            self._nvml_problem = f"no GPU driver or NVML library ({_text(exc) or type(exc).__name__})"

    @property
    def uses_nvml(self) -> bool:
        """Whether a reading calls NVML (which can block: read it off the trio thread)."""
        self.open()
        return self._nvml_ok

    def close(self) -> None:
        if self._nvml_ok and self._nvml is not None:
            try:
                self._nvml.nvmlShutdown()
            except Exception:  # noqa: BLE001 - shutting down; nothing to do about it
                pass
        self._nvml_ok = False
        self._opened = False

    def read(self) -> Hardware:
        self.open()
        problems: list[str] = []
        gpus: list[GpuInfo] = []
        if self._nvml_ok:
            try:
                gpus = self._read_gpus()
            except Exception as exc:  # a driver error mid-read: report, do not crash
                problems.append(f"NVML read failed: {_text(exc) or type(exc).__name__}")
            if not gpus and not problems:
                problems.append("NVML found no GPU")
        elif self._nvml_problem:
            problems.append(self._nvml_problem)
        return offered(Hardware(cpu=read_cpu(), gpus=tuple(gpus), problems=tuple(problems)),
                       gpus=self.gpus if self._use_gpu else (), max_gpu_mem=self.max_gpu_mem,
                       cpu_threads=self.cpu_threads)

    def _read_gpus(self) -> list[GpuInfo]:
        nv = self._nvml
        assert nv is not None
        driver = _text(nv.nvmlSystemGetDriverVersion())[:32]
        out = []
        for index in range(min(int(nv.nvmlDeviceGetCount()), 16)):
            handle = nv.nvmlDeviceGetHandleByIndex(index)
            memory = nv.nvmlDeviceGetMemoryInfo(handle)
            try:
                utilization = int(nv.nvmlDeviceGetUtilizationRates(handle).gpu)
            except Exception:  # not supported on some devices (MIG slices)
                utilization = 0
            try:
                major, minor = nv.nvmlDeviceGetCudaComputeCapability(handle)
                capability = f"{int(major)}.{int(minor)}"
            except Exception:
                capability = ""
            total = int(memory.total)
            out.append(
                GpuInfo(
                    index=index,
                    name=_text(nv.nvmlDeviceGetName(handle))[:64],
                    memory_total=total,
                    memory_free=min(int(memory.free), total),
                    utilization=max(0, min(100, utilization)),
                    compute_capability=capability,
                    driver=driver,
                )
            )
        return out


def offered(hw: Hardware, *, gpus: tuple[int, ...] = (), max_gpu_mem: int = 0, cpu_threads: int = 0) -> Hardware:
    """What this node shares of ``hw``: only the GPUs named in ``gpus`` (all when empty), each with
    at most ``max_gpu_mem`` bytes (0: all), and at most ``cpu_threads`` cores (0: all). A named GPU
    that is not there is a problem for ``status``."""
    found = {g.index for g in hw.gpus}
    problems = list(hw.problems)
    missing = [i for i in gpus if i not in found]
    if missing and hw.gpus:
        problems.append(f"GPU {', '.join(map(str, missing))} offered by configuration (gpus) but not found "
                        f"(found: {', '.join(str(i) for i in sorted(found))})")
    kept = [g for g in hw.gpus if not gpus or g.index in gpus]
    if max_gpu_mem:
        kept = [replace(g, memory_total=min(g.memory_total, max_gpu_mem), memory_free=min(g.memory_free, max_gpu_mem))
                for g in kept]
    cpu = replace(hw.cpu, cores=min(hw.cpu.cores, cpu_threads)) if cpu_threads else hw.cpu
    return Hardware(cpu=cpu, gpus=tuple(kept), problems=tuple(problems))


@functools.cache
def cpu_model() -> str:
    """The CPU's model name (read once: it does not change while the node runs)."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return model


def read_cpu() -> CpuInfo:
    """The CPU's model, cores and memory. Cheap (it reads the top of /proc/meminfo), so it runs on the
    trio thread every second."""
    model = cpu_model()
    meminfo: dict[str, int] = {}
    try:
        with open("/proc/meminfo", encoding="ascii", errors="replace") as f:
            for line in f:
                key, _, rest = line.partition(":")
                parts = rest.split()
                if parts and parts[0].isdigit():
                    meminfo[key] = int(parts[0]) * 1024
                if "MemTotal" in meminfo and "MemAvailable" in meminfo:
                    break
    except OSError:
        pass
    try:
        total = meminfo.get("MemTotal") or os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        free = meminfo.get("MemAvailable") or os.sysconf("SC_AVPHYS_PAGES") * os.sysconf(
            "SC_PAGE_SIZE"
        )
    except (ValueError, OSError):
        total, free = 0, 0
    return CpuInfo(
        model=model[:64] or "unknown",
        cores=os.cpu_count() or 1,
        memory_total=int(total),
        memory_free=int(min(free, total)),
    )
