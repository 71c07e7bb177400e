"""A short calibration run at start: measured speed goes into the capacity ad.

It times real matrix products (not a sleep, not a claim): NumPy fp32 always, ONNX Runtime's CPU
provider (and CUDA provider, with onnxruntime-gpu and a GPU) on a MatMul model, and torch on CUDA
when torch and a GPU are present. Names are ``<kernel>_<dtype>_<backend>``. Each benchmark runs a warm-up, then repeats until
``budget_s`` is spent, and reports the best rate in GFLOP/s. It blocks: call it off the trio
thread.

A machine measured once can share the result: :func:`read_calibration_file` reads the speeds
from a JSON file (``calibration_file``; a swarm's nodes share one) within the bounds of an ad.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from p2pnode.errors import ConfigError
from p2pnode.files import read_small_file
from p2pnode.wire.capacity_ad import MAX_GFLOPS, MAX_SHORT, MAX_SPEEDS

MAX_CALIBRATION_FILE = 64 * 1024  # bytes: an ad carries 16 speeds of 32-byte names


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
    speeds.update(_calibrate_ort(a, b, budget_s, use_gpu=use_gpu))
    if use_gpu:
        speeds.update(_calibrate_torch_cuda(budget_s))
    return speeds


def speed_for(speeds: Mapping[str, float], backend: str) -> float:
    """The measured speed of ``backend`` (the best of its kernels), 0 when none was measured."""
    return max((v for k, v in speeds.items() if k.endswith("_" + backend)), default=0.0)


def ort_cpu_speed(budget_s: float = 0.2, size: int = 512) -> float:
    """GFLOP/s of ONNX Runtime's CPU provider on the calibration MatMul, as a provider measures
    it for its ad (``onnx_f32_ort-cpu``); 0 without ONNX Runtime."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size), dtype=np.float32)
    b = rng.standard_normal((size, size), dtype=np.float32)
    return _calibrate_ort(a, b, budget_s * 2, use_gpu=False).get("onnx_f32_ort-cpu", 0.0)


def _calibrate_ort(a: np.ndarray, b: np.ndarray, budget_s: float, *, use_gpu: bool) -> dict[str, float]:
    try:
        import onnxruntime
        from onnx import TensorProto, helper

        from p2pnode.exec.backends import available
    except ImportError:
        return {}
    n = a.shape[0]
    graph = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["c"])], "calibrate",
                              [helper.make_tensor_value_info("a", TensorProto.FLOAT, [n, n]),
                               helper.make_tensor_value_info("b", TensorProto.FLOAT, [n, n])],
                              [helper.make_tensor_value_info("c", TensorProto.FLOAT, [n, n])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    out: dict[str, float] = {}
    backends = [bk for bk in available() if bk.startswith("ort-") and (use_gpu or bk == "ort-cpu")]
    for backend in backends:
        try:
            providers = ["CUDAExecutionProvider"] if backend == "ort-cuda" else ["CPUExecutionProvider"]
            so = onnxruntime.SessionOptions()
            so.log_severity_level = 3
            sess = onnxruntime.InferenceSession(model.SerializeToString(), so, providers=providers)
            out[f"onnx_f32_{backend}"] = round(
                _best_rate(lambda s=sess: s.run(None, {"a": a, "b": b}), 2.0 * n**3, budget_s / 2), 2)
        except Exception:  # noqa: BLE001 - a broken provider is just not offered
            continue
    return out


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


def read_calibration_file(path: str | Path) -> dict[str, float]:
    """``{name: GFLOP/s}`` from ``path``: a regular JSON file of at most 64 KiB (never a FIFO or a
    device, which would hang the start), holding what an ad can carry (at most 16 names of at
    most 32 bytes, finite speeds from 0 to 10^9); anything else is a one-line ``ConfigError``."""
    raw = read_small_file(path, limit=MAX_CALIBRATION_FILE, what="calibration_file", error=ConfigError)
    where = f"calibration_file {path}"

    def no_constant(name: str) -> None:
        raise ValueError(f"{name} is not a speed")

    try:
        speeds = json.loads(raw.decode("utf-8"), parse_constant=no_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ConfigError(f"{where}: not JSON: {exc}") from None
    if not isinstance(speeds, dict) or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                               for v in speeds.values()):
        raise ConfigError(f"{where}: expected {{name: GFLOP/s}}")
    if len(speeds) > MAX_SPEEDS:
        raise ConfigError(f"{where}: more than {MAX_SPEEDS} speeds (an ad carries {MAX_SPEEDS})")
    for name, value in speeds.items():
        if len(name.encode("utf-8", "surrogatepass")) > MAX_SHORT:
            raise ConfigError(f"{where}: the name {name[:40]!r} is longer than {MAX_SHORT} bytes")
        if not (math.isfinite(value) and 0 <= value <= MAX_GFLOPS):
            raise ConfigError(f"{where}: {name}: {value!r} is not a speed from 0 to {MAX_GFLOPS:g} GFLOP/s")
    return {k: float(v) for k, v in speeds.items()}
