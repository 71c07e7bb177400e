"""Array backends: torch on CUDA, CuPy, NumPy (always); and ONNX Runtime for people's own models,
with its CUDA execution provider where onnxruntime-gpu and a GPU are present (``ort-cuda``) and its
CPU one everywhere (``ort-cpu``). Chosen per job, imported lazily.

Each backend generates seeded inputs on its own device (:mod:`p2pnode.exec.seeded`: the same bits
everywhere, no host-to-device copy), runs the kernels there, and hands results back as NumPy, so
workloads are written once. bf16 has no NumPy dtype: the NumPy backend emulates
it by rounding inputs to bf16 precision (round-to-nearest-even on the fp32 bits) and accumulating in
fp32, which is what GPU bf16 matrix units do.
"""

from __future__ import annotations

import os
from functools import cache
from typing import Any

import numpy as np

from p2pnode.exec import seeded

BACKENDS = ("cuda", "cupy", "numpy", "ort-cuda", "ort-cpu")
ORT_PREFIX = "ort-"
SESSION_CACHE = 4  # ONNX Runtime sessions a worker keeps, by model content


def round_to_bf16(x: np.ndarray) -> np.ndarray:
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return rounded.astype(np.uint32).view(np.float32)


@cache
def available() -> tuple[str, ...]:
    """Backends usable in this process, best first."""
    out = []
    try:
        import torch

        if torch.cuda.is_available():
            out.append("cuda")
    except Exception:  # noqa: BLE001 - a broken torch install is just "no torch"
        pass
    try:
        import cupy

        if cupy.cuda.runtime.getDeviceCount() > 0:
            out.append("cupy")
    except Exception:  # noqa: BLE001
        pass
    out.append("numpy")
    try:
        import onnxruntime

        if "CUDAExecutionProvider" in onnxruntime.get_available_providers() and _gpu_count() > 0:
            out.append("ort-cuda")
        out.append("ort-cpu")
    except Exception:  # noqa: BLE001 - no ONNX Runtime: no model jobs here
        pass
    return tuple(out)


def for_workload(workload: str, backends: tuple[str, ...]) -> tuple[str, ...]:
    """The backends that run ``workload``: ONNX Runtime's for model jobs, the array ones otherwise."""
    if workload in ("onnx", "generate"):
        return tuple(b for b in backends if b.startswith(ORT_PREFIX))
    return tuple(b for b in backends if not b.startswith(ORT_PREFIX))


def _gpu_count() -> int:
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            return int(pynvml.nvmlDeviceGetCount())
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # noqa: BLE001 - no driver, no GPU
        return 0


class NumpyOps:
    name = "numpy"

    def uniform(self, seed: int, stream: int, shape: tuple[int, ...]) -> np.ndarray:
        return seeded.uniform(np, seed, stream, shape)

    def int8(self, seed: int, stream: int, shape: tuple[int, ...]) -> np.ndarray:
        return seeded.int8(np, seed, stream, shape)

    def asarray(self, a: np.ndarray) -> np.ndarray:
        return a

    def matmul(self, a: np.ndarray, b: np.ndarray, dtype: str) -> np.ndarray:
        if dtype == "int8":
            return a.astype(np.int32) @ b.astype(np.int32)
        if dtype == "fp16":
            return (a.astype(np.float16).astype(np.float32) @ b.astype(np.float16).astype(np.float32)).astype(np.float16)
        if dtype == "bf16":
            return round_to_bf16(round_to_bf16(a) @ round_to_bf16(b))
        return a.astype(np.float32) @ b.astype(np.float32)

    def mlp(self, x: np.ndarray, weights: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
        h = x.astype(np.float32)
        for i, (w, b) in enumerate(weights):
            h = h @ w + b
            if i < len(weights) - 1:
                h = np.maximum(h, 0)
        return h

    def sync(self) -> None:
        pass


class TorchOps:
    name = "cuda"

    def __init__(self) -> None:
        import torch

        self.torch = torch
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32: results must be checkable
        torch.backends.cudnn.allow_tf32 = False

    def uniform(self, seed: int, stream: int, shape: tuple[int, ...]) -> Any:
        return seeded.uniform_torch(self.torch, seed, stream, shape, "cuda")

    def int8(self, seed: int, stream: int, shape: tuple[int, ...]) -> Any:
        return seeded.int8_torch(self.torch, seed, stream, shape, "cuda")

    def asarray(self, a: np.ndarray) -> Any:
        return self.torch.from_numpy(np.ascontiguousarray(a)).to("cuda")

    def matmul(self, a: Any, b: Any, dtype: str) -> np.ndarray:
        t = self.torch
        if dtype == "int8":
            # int8 x int8 -> int32 exactly; _int_mm needs m > 16 and k, n multiples of 8
            m, k = a.shape
            n = b.shape[1]
            if m > 16 and k % 8 == 0 and n % 8 == 0:
                out = t._int_mm(a, b)
            else:
                out = a.to(t.int64) @ b.to(t.int64)  # exact, slower
            return out.to(t.int32).cpu().numpy()
        tdtype = {"fp16": t.float16, "bf16": t.bfloat16, "fp32": t.float32}[dtype]
        out = a.to(tdtype) @ b.to(tdtype)
        if dtype == "bf16":
            return out.float().cpu().numpy()
        return out.cpu().numpy()

    def mlp(self, x: Any, weights: list[tuple[Any, Any]]) -> np.ndarray:
        h = x
        for i, (w, b) in enumerate(weights):
            h = h @ w + b
            if i < len(weights) - 1:
                h = self.torch.relu(h)
        return h.cpu().numpy()

    def sync(self) -> None:
        self.torch.cuda.synchronize()


class CupyOps:
    name = "cupy"

    def __init__(self) -> None:
        import cupy

        self.cp = cupy

    def uniform(self, seed: int, stream: int, shape: tuple[int, ...]) -> Any:
        return seeded.uniform(self.cp, seed, stream, shape)

    def int8(self, seed: int, stream: int, shape: tuple[int, ...]) -> Any:
        return seeded.int8(self.cp, seed, stream, shape)

    def asarray(self, a: np.ndarray) -> Any:
        return self.cp.asarray(a)

    def matmul(self, a: Any, b: Any, dtype: str) -> np.ndarray:
        cp = self.cp
        if dtype == "int8":
            return cp.asnumpy(a.astype(cp.int32) @ b.astype(cp.int32))
        if dtype == "bf16":  # CuPy has no bf16: the NumPy emulation, on the GPU
            return round_to_bf16(cp.asnumpy(_bf16_cupy(cp, a) @ _bf16_cupy(cp, b)))
        dt = cp.float16 if dtype == "fp16" else cp.float32
        return cp.asnumpy(a.astype(dt) @ b.astype(dt))

    def mlp(self, x: Any, weights: list[tuple[Any, Any]]) -> np.ndarray:
        cp = self.cp
        h = x
        for i, (w, b) in enumerate(weights):
            h = h @ w + b
            if i < len(weights) - 1:
                h = cp.maximum(h, 0)
        return cp.asnumpy(h)

    def sync(self) -> None:
        self.cp.cuda.Device().synchronize()


def _bf16_cupy(cp: Any, x: Any) -> Any:
    bits = cp.ascontiguousarray(x, dtype=cp.float32).view(cp.uint32)
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000).astype(cp.uint32).view(cp.float32)


class OrtOps:
    """ONNX Runtime sessions for checked models (:mod:`p2pnode.exec.onnx_model`), kept by the
    model's content id so a worker builds a session once per model, not once per job. No custom-op
    library is ever registered; fp32 stays fp32 on CUDA (no TF32), so results stay checkable."""

    def __init__(self, name: str, threads: int = 0) -> None:
        import onnxruntime

        self.name = name
        self.ort = onnxruntime
        onnxruntime.set_default_logger_severity(4)
        self.threads = threads
        if name == "ort-cuda":
            self.providers: list[Any] = [("CUDAExecutionProvider", {"use_tf32": 0}), "CPUExecutionProvider"]
        else:
            self.providers = ["CPUExecutionProvider"]
        self._sessions: dict[str, tuple[Any, Any]] = {}

    def session(self, blob: bytes) -> tuple[Any, Any]:
        """(session, ModelInfo) for a model container; checked and built on first use."""
        from p2pnode.exec import onnx_model

        key = onnx_model.model_id(blob)
        if key in self._sessions:
            self._sessions[key] = self._sessions.pop(key)  # most recently used last
            return self._sessions[key]
        model = onnx_model.load(blob)
        info = onnx_model.check_model(model)
        so = self.ort.SessionOptions()
        so.log_severity_level = 4  # failures surface as exceptions, typed by the worker
        so.intra_op_num_threads = self.threads
        so.inter_op_num_threads = 1
        # no busy-waiting threads: a provider shares its machine (its owner's work, other workers);
        # measured faster here too, alone and with two processes (tools/bench/models.py)
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            sess = self.ort.InferenceSession(model.SerializeToString(), so, providers=self.providers)
        except Exception as exc:  # ONNX Runtime refuses it: a model error, not a crash
            raise onnx_model.ModelError(f"ONNX Runtime cannot load the model: {str(exc).splitlines()[0][:200]}") \
                from exc
        self._sessions[key] = (sess, info)
        while len(self._sessions) > SESSION_CACHE:
            self._sessions.pop(next(iter(self._sessions)))
        return sess, info

    def sync(self) -> None:
        pass


def cpu_threads() -> int:
    """Threads one job may use on the CPU, as the executor set them for this worker (0: all)."""
    value = os.environ.get("P2PNODE_CPU_THREADS", "")
    return int(value) if value.isdigit() else 0


def ops(name: str) -> Any:
    if name == "numpy":
        return NumpyOps()
    if name.startswith(ORT_PREFIX) and name in BACKENDS:
        return OrtOps(name, cpu_threads())
    if name == "cuda":
        return TorchOps()
    if name == "cupy":
        return CupyOps()
    raise ValueError(f"unknown backend {name!r}")
