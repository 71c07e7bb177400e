"""Array backends: torch on CUDA, CuPy, NumPy (always). Chosen per job, imported lazily.

Each backend turns NumPy inputs into its own arrays, runs the same kernels, and hands results
back as NumPy, so workloads are written once. bf16 has no NumPy dtype: the NumPy backend emulates
it by rounding inputs to bf16 precision (round-to-nearest-even on the fp32 bits) and accumulating in
fp32, which is what GPU bf16 matrix units do.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import numpy as np

BACKENDS = ("cuda", "cupy", "numpy")


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
    return tuple(out)


class NumpyOps:
    name = "numpy"

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

    def _t(self, a: np.ndarray, dtype: Any) -> Any:
        return self.torch.from_numpy(np.ascontiguousarray(a)).to("cuda").to(dtype)

    def matmul(self, a: np.ndarray, b: np.ndarray, dtype: str) -> np.ndarray:
        t = self.torch
        if dtype == "int8":
            # int8 x int8 -> int32 exactly; _int_mm needs m > 16 and k, n multiples of 8
            m, k = a.shape
            n = b.shape[1]
            if m > 16 and k % 8 == 0 and n % 8 == 0:
                out = t._int_mm(self._t(a, t.int8), self._t(b, t.int8))
            else:
                out = self._t(a, t.int64) @ self._t(b, t.int64)  # exact, slower
            return out.to(t.int32).cpu().numpy()
        tdtype = {"fp16": t.float16, "bf16": t.bfloat16, "fp32": t.float32}[dtype]
        out = self._t(a, t.float32).to(tdtype) @ self._t(b, t.float32).to(tdtype)
        if dtype == "bf16":
            return out.float().cpu().numpy()
        return out.cpu().numpy()

    def mlp(self, x: np.ndarray, weights: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
        t = self.torch
        h = self._t(x, t.float32)
        for i, (w, b) in enumerate(weights):
            h = h @ self._t(w, t.float32) + self._t(b, t.float32)
            if i < len(weights) - 1:
                h = t.relu(h)
        return h.cpu().numpy()

    def sync(self) -> None:
        self.torch.cuda.synchronize()


class CupyOps:
    name = "cupy"

    def __init__(self) -> None:
        import cupy

        self.cp = cupy

    def matmul(self, a: np.ndarray, b: np.ndarray, dtype: str) -> np.ndarray:
        cp = self.cp
        if dtype == "int8":
            return cp.asnumpy(cp.asarray(a, dtype=cp.int32) @ cp.asarray(b, dtype=cp.int32))
        if dtype == "bf16":  # CuPy has no bf16: same emulation as NumPy, on the GPU
            return round_to_bf16(cp.asnumpy(cp.asarray(round_to_bf16(a)) @ cp.asarray(round_to_bf16(b))))
        dt = cp.float16 if dtype == "fp16" else cp.float32
        return cp.asnumpy(cp.asarray(a, dtype=dt) @ cp.asarray(b, dtype=dt))

    def mlp(self, x: np.ndarray, weights: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
        cp = self.cp
        h = cp.asarray(x, dtype=cp.float32)
        for i, (w, b) in enumerate(weights):
            h = h @ cp.asarray(w) + cp.asarray(b)
            if i < len(weights) - 1:
                h = cp.maximum(h, 0)
        return cp.asnumpy(h)

    def sync(self) -> None:
        self.cp.cuda.Device().synchronize()


def ops(name: str) -> Any:
    if name == "numpy":
        return NumpyOps()
    if name == "cuda":
        return TorchOps()
    if name == "cupy":
        return CupyOps()
    raise ValueError(f"unknown backend {name!r}")
