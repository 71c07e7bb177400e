"""What makes a provider publish an ad before its interval: coarse changes against its last ad."""

from __future__ import annotations

from dataclasses import replace

from p2pnode.services.market import _moved
from p2pnode.telemetry.probe import Hardware
from p2pnode.wire.capacity_ad import CpuInfo, GpuInfo

GIB = 1 << 30


def hw(free_ram: float, gpu_free: float = 40, util: int = 10) -> Hardware:
    return Hardware(CpuInfo("cpu", 8, 64 * GIB, int(free_ram * GIB)),
                    (GpuInfo(0, "GPU", 80 * GIB, int(gpu_free * GIB), util, "9.0", "580"),))


def test_a_value_hovering_at_a_boundary_is_not_a_change() -> None:
    last = hw(23.9)
    # 23.9 -> 24.1 GiB crosses a 4 GiB boundary, but moved 0.2 GiB: no ad (it used to be one, every
    # time the free RAM of a busy machine wobbled across 24 GiB)
    assert not _moved(hw(24.1), last) and not _moved(hw(23.7), last)
    assert _moved(hw(28.0), last) and _moved(hw(19.8), last)


def test_gpu_memory_utilisation_and_the_gpu_set() -> None:
    last = hw(30)
    assert not _moved(hw(30, gpu_free=40.5, util=19), last)
    assert _moved(hw(30, gpu_free=38.9), last) and _moved(hw(30, util=20), last)
    assert _moved(replace(last, gpus=()), last)
    assert _moved(last, None) and not _moved(None, None)
