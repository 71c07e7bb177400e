"""A short calibration run at start: measured speed goes into the capacity ad.

It times real matrix products (not a sleep, not a claim): NumPy fp32 always, and torch on CUDA
when torch and a GPU are present. Each benchmark runs a warm-up, then repeats until
``budget_s`` is spent, and reports the best rate in GFLOP/s. It blocks: call it off the trio
thread.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np


def _best_rate(run_once: object, flops: float, budget_s: float) -> float:
    assert callable(run_once)
    run_once()  # warm-up: allocations, BLAS thread start, kernel compile
    best = float("inf")
    deadline = time.perf_counter() + budget_s
    runs = 0
    while runs < 3 or (time.perf_counter() < deadline and runs < 1000):
        t0 = time.perf_counter()
        run_once()
        best = min(best, time.perf_counter() - t0)
        runs += 1
    return flops / best / 1e9


def calibrate(budget_s: float = 0.3, size: int = 512, use_gpu: bool = True) -> dict[str, float]:
    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size), dtype=np.float32)
    b = rng.standard_normal((size, size), dtype=np.float32)
    flops = 2.0 * size**3
    speeds = {"matmul_f32_numpy": round(_best_rate(lambda: a @ b, flops, budget_s), 2)}
    if use_gpu:
        speeds.update(_calibrate_torch_cuda(budget_s))
    return speeds


def _calibrate_torch_cuda(budget_s: float, size: int = 4096) -> dict[str, float]:
    try:
        import torch
    except ImportError:
        return {}
    try:
        if not torch.cuda.is_available():
            return {}
        out: dict[str, float] = {}
        for name, dtype in (("matmul_f32_cuda", torch.float32), ("matmul_bf16_cuda", torch.bfloat16)):
            a = torch.randn(size, size, device="cuda", dtype=dtype)
            b = torch.randn(size, size, device="cuda", dtype=dtype)

            def run(a: Any = a, b: Any = b) -> None:
                (a @ b).sum().item()  # .item() synchronizes, so the time is the kernel's

            out[name] = round(_best_rate(run, 2.0 * size**3, budget_s / 2), 2)
        return out
    except Exception:  # a broken driver must not stop the node from starting
        return {}
