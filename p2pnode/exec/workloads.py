"""Workloads: real kernels with bounded parameters and a declared way to compare results.

* ``matmul`` -- C = A·B with A (m×k) and B (k×n) drawn from a seed. dtypes: ``int8`` (int32
  accumulation, compared **exactly**), ``fp16``, ``bf16``, ``fp32`` (compared within a relative
  tolerance, and checkable **algebraically** with Freivalds).
* ``infer`` -- a forward pass of a seeded MLP (ReLU between layers) over a seeded batch; fp32,
  compared within a relative tolerance.
* ``train_step`` -- N steps of SGD on a seeded MLP regression task; returns the new weights, their
  digest and the loss curve; compared within a tolerance.
* ``onnx`` -- someone's own ONNX model on their own rows (:mod:`p2pnode.exec.onnx_workload`); the
  model and the rows are input blobs; compared row by row.
* ``train`` -- local steps of someone's own model (a declared architecture, its weights and an
  optimiser) on their shard of data (:mod:`p2pnode.exec.train_workload`); commits to the state
  after every step; compared exactly.

The seeded workloads are deterministic given their parameters, so a checker reproduces them from a
few bytes; a model job is reproduced from the same model and rows.
Third-party workloads register under the entry-point group ``p2pnode.workloads`` (an object with
this module's :class:`Workload` interface).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from importlib.metadata import entry_points
from typing import Any

import numpy as np

from p2pnode.errors import WorkloadError
from p2pnode.exec.generate_workload import GenerateWorkload
from p2pnode.exec.onnx_workload import OnnxWorkload
from p2pnode.exec.train_workload import TrainWorkload
from p2pnode.exec.work import Output, Progress, Workload
from p2pnode.exec.work import float_param as _float
from p2pnode.exec.work import int_param as _int
from p2pnode.exec.work import refuse_unknown as _unknown

__all__ = ["Output", "Progress", "Workload", "check_inputs", "get", "matmul_inputs", "registry"]

MAX_DIM = 16384
MAX_ELEMENTS = 1 << 28  # per matrix: 1 GiB of fp32
DTYPES = ("int8", "fp16", "bf16", "fp32")
TOLERANCE = {"fp32": 1e-4, "fp16": 2e-2, "bf16": 5e-2}  # relative, on the Frobenius norm


# Inputs that jobs share (a map's model, in every shard): a worker keeps them between jobs, and a
# provider keeps their blobs; other inputs (a dataset's shard) are used once.
REUSED_INPUTS = frozenset({"model"})

def _inputs_mode(params: Mapping[str, Any]) -> str:
    mode = params.get("inputs", "seed")
    if mode not in ("seed", "blob"):
        raise WorkloadError(f"inputs={mode!r} must be 'seed' or 'blob'")
    return str(mode)


def check_inputs(wl: Workload, p: Mapping[str, Any], inputs: Mapping[str, np.ndarray] | None) -> dict[str, np.ndarray]:
    """Supplied input arrays, checked against the workload's spec (names, shapes, dtypes)."""
    spec = wl.input_spec(p)
    if not spec:
        if inputs:
            raise WorkloadError("this job takes no input arrays (set inputs=blob to supply them)")
        return {}
    if inputs is None or set(inputs) != set(spec):
        raise WorkloadError(f"inputs=blob needs arrays {sorted(spec)}, got {sorted(inputs or {})}")
    out = {}
    for name, (shape, dtype) in spec.items():
        arr = np.asarray(inputs[name])
        if arr.shape != shape or arr.dtype != np.dtype(dtype):
            raise WorkloadError(f"input {name}: expected {dtype}{list(shape)}, got {arr.dtype}{list(arr.shape)}")
        out[name] = np.ascontiguousarray(arr)
    return out


def _close(a: np.ndarray, b: np.ndarray, rel: float) -> bool:
    if a.shape != b.shape:
        return False
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    if not (np.isfinite(a64).all() and np.isfinite(b64).all()):
        return False
    scale = max(np.linalg.norm(b64), 1e-30)
    return bool(np.linalg.norm(a64 - b64) <= rel * scale)


def matmul_inputs(p: Mapping[str, Any], ops: Any = None,
                  inputs: Mapping[str, np.ndarray] | None = None) -> tuple[Any, Any]:
    """A (stream 0) and B (stream 1) of a matmul job, on ``ops``' device (NumPy by default);
    the supplied arrays instead when the job has ``inputs=blob``."""
    if ops is None:
        from p2pnode.exec.backends import NumpyOps

        ops = NumpyOps()
    if inputs:
        return ops.asarray(inputs["a"]), ops.asarray(inputs["b"])
    m, n, k = p["m"], p["n"], p["k"]
    gen = ops.int8 if p["dtype"] == "int8" else ops.uniform
    return gen(p["seed"], 0, (m, k)), gen(p["seed"], 1, (k, n))


class Matmul:
    name = "matmul"

    def check(self, params: Mapping[str, Any]) -> dict[str, Any]:
        _unknown(params, {"m", "n", "k", "dtype", "seed", "inputs"})
        p = {key: _int(params, key, 1, MAX_DIM) for key in ("m", "n", "k")}
        for a, b in (("m", "k"), ("k", "n"), ("m", "n")):
            if p[a] * p[b] > MAX_ELEMENTS:
                raise WorkloadError(f"a {p[a]}x{p[b]} matrix exceeds {MAX_ELEMENTS} elements")
        dtype = params.get("dtype", "fp32")
        if dtype not in DTYPES:
            raise WorkloadError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}")
        return p | {"dtype": dtype, "seed": _int(params, "seed", 0, 2**63 - 1, 0), "inputs": _inputs_mode(params)}

    def input_spec(self, p: Mapping[str, Any]) -> dict[str, tuple[tuple[int, ...], str]]:
        if p["inputs"] != "blob":
            return {}
        dt = "int8" if p["dtype"] == "int8" else "float32"
        return {"a": ((p["m"], p["k"]), dt), "b": ((p["k"], p["n"]), dt)}

    def flops(self, p: Mapping[str, Any]) -> float:
        return 2.0 * p["m"] * p["n"] * p["k"]

    def memory(self, p: Mapping[str, Any]) -> int:
        return 4 * (p["m"] * p["k"] + p["k"] * p["n"] + 2 * p["m"] * p["n"])

    def comparison(self, p: Mapping[str, Any]) -> str:
        return "exact" if p["dtype"] == "int8" else "tolerance"

    def output_bytes(self, p: Mapping[str, Any]) -> int:
        return p["m"] * p["n"] * (2 if p["dtype"] in ("fp16",) else 4)

    def run(self, p: Mapping[str, Any], ops: Any, progress: Progress,
            inputs: Mapping[str, np.ndarray] | None = None) -> Output:
        a, b = matmul_inputs(p, ops, inputs)
        progress(0.1)
        c = ops.matmul(a, b, p["dtype"])
        ops.sync()
        progress(1.0)
        return Output({"c": c}, {})

    def agree(self, p: Mapping[str, Any], x: Output, y: Output) -> bool:
        if p["dtype"] == "int8":
            return x.digest == y.digest
        return _close(x.arrays["c"], y.arrays["c"], TOLERANCE[p["dtype"]])


def _mlp_weights(ops: Any, seed: int, dims: list[int]) -> list[tuple[Any, Any]]:
    """Layer l: weights from stream 2l scaled to unit output variance, bias from stream 2l+1."""
    return [(ops.uniform(seed, 2 * n, (i, o)) * float(np.sqrt(3.0 / i)),
             ops.uniform(seed, 2 * n + 1, (o,)) * 0.01) for n, (i, o) in enumerate(zip(dims, dims[1:], strict=False))]


class Infer:
    name = "infer"
    KEYS = {"batch", "d_in", "d_hidden", "d_out", "layers", "seed", "inputs"}

    def check(self, params: Mapping[str, Any]) -> dict[str, Any]:
        _unknown(params, self.KEYS)
        p = {
            "batch": _int(params, "batch", 1, 65536, 64), "d_in": _int(params, "d_in", 1, 8192, 256),
            "d_hidden": _int(params, "d_hidden", 1, 8192, 512), "d_out": _int(params, "d_out", 1, 8192, 64),
            "layers": _int(params, "layers", 1, 16, 3), "seed": _int(params, "seed", 0, 2**63 - 1, 0),
            "inputs": _inputs_mode(params),
        }
        if self.memory(p) > 4 << 30:
            raise WorkloadError("infer parameters need more than 4 GiB")
        return p

    def _dims(self, p: Mapping[str, Any]) -> list[int]:
        return [p["d_in"]] + [p["d_hidden"]] * (p["layers"] - 1) + [p["d_out"]]

    def flops(self, p: Mapping[str, Any]) -> float:
        d = self._dims(p)
        return 2.0 * p["batch"] * sum(i * o for i, o in zip(d, d[1:], strict=False))

    def memory(self, p: Mapping[str, Any]) -> int:
        d = self._dims(p)
        return 4 * (sum(i * o + o for i, o in zip(d, d[1:], strict=False)) + 2 * p["batch"] * max(d))

    def comparison(self, p: Mapping[str, Any]) -> str:
        return "tolerance"

    def output_bytes(self, p: Mapping[str, Any]) -> int:
        return 4 * p["batch"] * p["d_out"]

    def input_spec(self, p: Mapping[str, Any]) -> dict[str, tuple[tuple[int, ...], str]]:
        """With inputs=blob: the batch ``x`` and every layer's weights ``w<l>`` and bias ``b<l>``."""
        if p["inputs"] != "blob":
            return {}
        d = self._dims(p)
        spec: dict[str, tuple[tuple[int, ...], str]] = {"x": ((p["batch"], p["d_in"]), "float32")}
        for n, (i, o) in enumerate(zip(d, d[1:], strict=False)):
            spec[f"w{n}"], spec[f"b{n}"] = ((i, o), "float32"), ((o,), "float32")
        return spec

    def run(self, p: Mapping[str, Any], ops: Any, progress: Progress,
            inputs: Mapping[str, np.ndarray] | None = None) -> Output:
        if inputs:
            layers = len(self._dims(p)) - 1
            weights = [(ops.asarray(inputs[f"w{n}"]), ops.asarray(inputs[f"b{n}"])) for n in range(layers)]
            x = ops.asarray(inputs["x"])
        else:
            weights = _mlp_weights(ops, p["seed"], self._dims(p))
            x = ops.uniform(p["seed"], 1000, (p["batch"], p["d_in"]))  # stream 1000: the batch
        progress(0.2)
        y = ops.mlp(x, weights)
        ops.sync()
        progress(1.0)
        return Output({"y": y.astype(np.float32)}, {})

    def agree(self, p: Mapping[str, Any], x: Output, y: Output) -> bool:
        return _close(x.arrays["y"], y.arrays["y"], 1e-4)


class TrainStep:
    """SGD on a 2-layer MLP regressing a seeded random linear target; fp32 NumPy on every backend."""

    name = "train_step"
    KEYS = {"steps", "batch", "d_in", "d_hidden", "lr", "seed"}

    def check(self, params: Mapping[str, Any]) -> dict[str, Any]:
        _unknown(params, self.KEYS)
        return {
            "steps": _int(params, "steps", 1, 10_000, 10), "batch": _int(params, "batch", 1, 4096, 64),
            "d_in": _int(params, "d_in", 1, 4096, 32), "d_hidden": _int(params, "d_hidden", 1, 4096, 64),
            "lr": _float(params, "lr", 1e-6, 1.0, 0.01), "seed": _int(params, "seed", 0, 2**63 - 1, 0),
        }

    def flops(self, p: Mapping[str, Any]) -> float:
        return 6.0 * p["steps"] * p["batch"] * (p["d_in"] * p["d_hidden"] + p["d_hidden"])

    def memory(self, p: Mapping[str, Any]) -> int:
        return 4 * (3 * (p["d_in"] * p["d_hidden"] + p["d_hidden"]) + 4 * p["batch"] * max(p["d_in"], p["d_hidden"]))

    def comparison(self, p: Mapping[str, Any]) -> str:
        return "tolerance"

    def output_bytes(self, p: Mapping[str, Any]) -> int:
        return 4 * (p["d_in"] * p["d_hidden"] + 2 * p["d_hidden"] + 1) + 8 * p["steps"]

    def input_spec(self, p: Mapping[str, Any]) -> dict[str, tuple[tuple[int, ...], str]]:
        return {}  # seeded data only

    def run(self, p: Mapping[str, Any], ops: Any, progress: Progress,
            inputs: Mapping[str, np.ndarray] | None = None) -> Output:
        # The update rule runs in NumPy on every backend: SGD steps are small, sequential kernels
        # where a GPU brings launch overhead, and one implementation keeps results comparable.
        from p2pnode.exec.backends import NumpyOps

        host = NumpyOps()
        seed = p["seed"]
        (w1, b1), (w2, b2) = _mlp_weights(host, seed, [p["d_in"], p["d_hidden"], 1])
        target = host.uniform(seed, 1999, (p["d_in"], 1))  # stream 1999: the target map
        lr = np.float32(p["lr"])
        losses = []
        for step in range(p["steps"]):
            x = host.uniform(seed, 2000 + step, (p["batch"], p["d_in"]))  # stream 2000+t: batch t
            y = x @ target
            h = np.maximum(x @ w1 + b1, 0)
            pred = h @ w2 + b2
            err = pred - y
            losses.append(float(np.mean(err * err)))
            g_pred = (2.0 / p["batch"]) * err
            g_w2, g_b2 = h.T @ g_pred, g_pred.sum(0)
            g_h = (g_pred @ w2.T) * (h > 0)
            g_w1, g_b1 = x.T @ g_h, g_h.sum(0)
            w1, b1, w2, b2 = w1 - lr * g_w1, b1 - lr * g_b1, w2 - lr * g_w2, b2 - lr * g_b2
            progress((step + 1) / p["steps"])
        return Output({"w1": w1, "b1": b1, "w2": w2, "b2": b2}, {"loss": losses})

    def agree(self, p: Mapping[str, Any], x: Output, y: Output) -> bool:
        return all(_close(x.arrays[k], y.arrays[k], 1e-4) for k in ("w1", "b1", "w2", "b2"))


_BUILTIN: dict[str, Workload] = {w.name: w for w in (Matmul(), Infer(), TrainStep(), OnnxWorkload(),
                                                      GenerateWorkload(), TrainWorkload())}


def registry() -> dict[str, Workload]:
    """Built-in workloads plus those registered under the ``p2pnode.workloads`` entry points."""
    return dict(_registered())


@functools.cache
def _registered() -> dict[str, Workload]:
    """Read once per process: a scan of the installed packages' metadata takes about 13 ms, and a
    job looks its workload up several times (bid, run, check)."""
    out = dict(_BUILTIN)
    for ep in entry_points(group="p2pnode.workloads"):
        try:
            out.setdefault(ep.name, ep.load())
        except Exception:  # noqa: BLE001 - a broken plugin must not break the node
            continue
    return out


def get(name: str) -> Workload:
    workloads = _registered()
    if name not in workloads:
        raise WorkloadError(f"unknown workload {name!r} (known: {', '.join(sorted(workloads))})",
                            code="unknown_workload")
    return workloads[name]
