"""The probe against a fake NVML *library* (the module), never a fake node."""

from __future__ import annotations

import types
from typing import Any

from p2pnode.telemetry.calibrate import calibrate
from p2pnode.telemetry.probe import HardwareProbe


class NVMLError(Exception):
    pass


def fake_nvml(devices: list[dict[str, Any]], *, init_error: str | None = None) -> types.ModuleType:
    m = types.ModuleType("pynvml")
    calls: list[str] = []
    m.calls = calls  # type: ignore[attr-defined]

    def nvmlInit() -> None:
        calls.append("init")
        if init_error:
            raise NVMLError(init_error)

    m.nvmlInit = nvmlInit  # type: ignore[attr-defined]
    m.nvmlShutdown = lambda: calls.append("shutdown")  # type: ignore[attr-defined]
    m.nvmlSystemGetDriverVersion = lambda: b"580.159.04"  # type: ignore[attr-defined]
    m.nvmlDeviceGetCount = lambda: len(devices)  # type: ignore[attr-defined]
    m.nvmlDeviceGetHandleByIndex = lambda i: devices[i]  # type: ignore[attr-defined]
    m.nvmlDeviceGetName = lambda h: h["name"]  # type: ignore[attr-defined]
    m.nvmlDeviceGetMemoryInfo = lambda h: types.SimpleNamespace(total=h["total"], free=h["free"], used=0)  # type: ignore[attr-defined]

    def util(h: dict[str, Any]) -> Any:
        if h.get("util") is None:
            raise NVMLError("Not Supported")
        return types.SimpleNamespace(gpu=h["util"], memory=0)

    m.nvmlDeviceGetUtilizationRates = util  # type: ignore[attr-defined]
    m.nvmlDeviceGetCudaComputeCapability = lambda h: h["cc"]  # type: ignore[attr-defined]
    return m


H100 = {"name": "NVIDIA H100 80GB HBM3", "total": 85520809984, "free": 84000000000, "util": 37, "cc": (9, 0)}


def test_gpu_fields_come_from_nvml() -> None:
    nv = fake_nvml([H100, dict(H100, name=b"NVIDIA A100", util=None, cc=(8, 0))])
    probe = HardwareProbe(nv)
    hw = probe.read()
    probe.close()
    assert [g.name for g in hw.gpus] == ["NVIDIA H100 80GB HBM3", "NVIDIA A100"]
    g = hw.gpus[0]
    assert (g.index, g.memory_total, g.memory_free, g.utilization, g.compute_capability, g.driver) == (
        0, 85520809984, 84000000000, 37, "9.0", "580.159.04")
    assert hw.gpus[1].utilization == 0 and hw.gpus[1].compute_capability == "8.0"
    assert hw.problems == ()
    assert nv.calls == ["init", "shutdown"]  # type: ignore[attr-defined]


def test_cpu_fallback_when_nvml_is_missing() -> None:
    hw = HardwareProbe(fake_nvml([], init_error="NVML Shared Library Not Found")).read()
    assert hw.gpus == ()
    assert "NVML Shared Library Not Found" in hw.problems[0]
    assert hw.cpu.cores >= 1 and hw.cpu.memory_total > 0
    assert 0 < hw.cpu.memory_free <= hw.cpu.memory_total


def test_driver_error_mid_read_is_a_problem_not_a_crash() -> None:
    nv = fake_nvml([H100])

    def broken(_h: Any) -> Any:
        raise NVMLError("GPU is lost")

    nv.nvmlDeviceGetMemoryInfo = broken  # type: ignore[attr-defined]
    hw = HardwareProbe(nv).read()
    assert hw.gpus == () and "GPU is lost" in hw.problems[0]


def test_gpu_use_can_be_disabled() -> None:
    nv = fake_nvml([H100])
    hw = HardwareProbe(nv, use_gpu=False).read()
    assert hw.gpus == () and nv.calls == []  # type: ignore[attr-defined]


def test_calibration_measures_real_work() -> None:
    speeds = calibrate(budget_s=0.05, size=128, use_gpu=False)
    assert speeds["matmul_f32_numpy"] > 0.01
