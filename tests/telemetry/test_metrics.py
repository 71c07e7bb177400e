"""What a volunteer's Prometheus sees: jobs by role and outcome, durations, credits, GPUs, build
and process metrics, and no ``_created`` series."""

from __future__ import annotations

from types import SimpleNamespace

from p2pnode.telemetry.metrics import NodeMetrics
from p2pnode.wire.capacity_ad import GpuInfo


def test_jobs_credits_gpus_build_and_process_metrics_are_exposed() -> None:
    m = NodeMetrics()
    gpu = GpuInfo(0, "H100", 80 << 30, 60 << 30, 25, "9.0", "550")
    m.watch(credits=lambda: (1200, 300), gpus=lambda: (gpu,))
    m.job_ended(SimpleNamespace(role="provider", state="done", started=10.0, ended=12.5))
    m.job_ended(SimpleNamespace(role="requester", state="rejected", started=10.0, ended=10.2))
    text = m.text()
    assert 'p2pnode_jobs_total{role="provider",state="done"} 1.0' in text
    assert 'p2pnode_jobs_total{role="requester",state="rejected"} 1.0' in text
    assert 'p2pnode_job_seconds_bucket{le="5.0",role="provider"} 1.0' in text
    assert 'p2pnode_credits{direction="given"} 1200.0' in text
    assert 'p2pnode_credits{direction="received"} 300.0' in text
    (free,) = [ln for ln in text.splitlines() if ln.startswith('p2pnode_gpu_memory_free_bytes{gpu="0"}')]
    assert float(free.split()[-1]) == 60 << 30
    assert 'p2pnode_gpu_utilisation_ratio{gpu="0"} 0.25' in text
    assert "p2pnode_build_info{" in text and "process_resident_memory_bytes" in text
    assert "_created" not in text
