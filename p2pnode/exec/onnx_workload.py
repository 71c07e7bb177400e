"""The ``onnx`` workload: someone's ONNX model run on their rows of data (``specs/model-jobs.md``).

Parameters (public, in the request for bids; the data itself travels as encrypted blobs):

* ``model_bytes`` -- size of the model container; the model is the input array ``model`` (uint8);
* ``rows`` -- rows in this job (a shard of a dataset); every model input's first axis is the row;
* ``feeds`` -- ``{input name: [dtype, [dims after the row axis]]}``; input ``x`` travels as the
  input array ``in.x`` of shape ``(rows, *dims)``;
* ``out_row_bytes`` -- bytes of output per row (from one local row run), for memory and limits;
* ``gflop`` -- the requester's cost estimate (``onnx_model`` estimator); a provider that finds the
  model costs over 4 times that refuses it (``underpriced``) before running it;
* ``rtol`` -- optional relative tolerance per row (default by output dtype);
* ``whole`` -- optional, ``true``: every row in one batch (a model that couples its rows).

Rows are run in chunks of ``CHUNK_ROWS`` (a fixed rule, so every honest provider gives the same
answer), or all at once for a ``whole`` job: a model that couples its rows gets the answer ONNX
Runtime gives on all of them together, never one per chunk. Outputs are compared **row by row**: integers exactly, floats with
``‖a_i − b_i‖₂ ≤ rtol·‖b_i‖₂ + rtol·1e-6·maxⱼ‖b_j‖₂`` (NaN and infinities must match exactly).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from p2pnode.errors import WorkloadError
from p2pnode.exec.onnx_model import MAX_IO, MAX_MODEL_BYTES, ModelError
from p2pnode.exec.work import Output
from p2pnode.exec.work import float_param as _float
from p2pnode.exec.work import int_param as _int
from p2pnode.exec.work import refuse_unknown as _unknown

CHUNK_ROWS = 1024
MAX_ROWS = 10_000_000
MAX_ROW_BYTES = 64 << 20
MAX_DIMS = 8
MAX_NAME = 128
FEED_DTYPES = ("float32", "float16", "float64", "int64", "int32", "int16", "int8", "uint8", "bool")
# Honest execution providers and CPUs differ in how they order reductions; TF32 is off on CUDA.
RTOL = {"float32": 1e-4, "float16": 2e-2, "float64": 1e-9}
UNDERPRICED_FACTOR = 4.0


def input_name(feed: str) -> str:
    return "in." + feed


class OnnxWorkload:
    name = "onnx"
    KEYS = {"model_bytes", "rows", "feeds", "out_row_bytes", "gflop", "rtol", "inputs", "whole"}

    def check(self, params: Mapping[str, Any]) -> dict[str, Any]:
        _unknown(params, self.KEYS)
        if params.get("inputs", "blob") != "blob":
            raise WorkloadError("model jobs take their model and data as blobs (inputs=blob)")
        p: dict[str, Any] = {
            "model_bytes": _int(params, "model_bytes", 1, MAX_MODEL_BYTES),
            "rows": _int(params, "rows", 1, MAX_ROWS),
            "out_row_bytes": _int(params, "out_row_bytes", 0, MAX_ROW_BYTES, 0),
            "gflop": _float(params, "gflop", 0.0, 1e12, 0.0),
            "rtol": _float(params, "rtol", 0.0, 0.5, 0.0),
            "inputs": "blob",
        }
        whole = params.get("whole", False)
        if not isinstance(whole, bool):
            raise WorkloadError("whole must be true or false")
        if whole:  # only when set: a job without it reads as it always did
            p["whole"] = True
        feeds = params.get("feeds")
        if not isinstance(feeds, Mapping) or not 1 <= len(feeds) <= MAX_IO:
            raise WorkloadError(f"feeds must map 1..{MAX_IO} input names to [dtype, [dims]]")
        checked: dict[str, list[Any]] = {}
        row_bytes = 0
        for name, spec in feeds.items():
            if not isinstance(name, str) or not 0 < len(name) <= MAX_NAME:
                raise WorkloadError("feed names must be non-empty strings of at most 128 characters")
            if not isinstance(spec, Sequence) or len(spec) != 2 or spec[0] not in FEED_DTYPES \
                    or not isinstance(spec[1], Sequence) or len(spec[1]) > MAX_DIMS:
                raise WorkloadError(f"feed {name!r}: expected [dtype, [dims]] with dtype one of {FEED_DTYPES}")
            dims = [int(d) for d in spec[1] if isinstance(d, int) and not isinstance(d, bool) and 1 <= d <= 1 << 24]
            if len(dims) != len(spec[1]):
                raise WorkloadError(f"feed {name!r}: dims must be integers in 1..2^24")
            row_bytes += int(np.prod(dims, dtype=np.int64)) * np.dtype(spec[0]).itemsize
            checked[name] = [str(spec[0]), dims]
        if row_bytes > MAX_ROW_BYTES:
            raise WorkloadError(f"a row of input is {row_bytes} bytes, over {MAX_ROW_BYTES}")
        if row_bytes * p["rows"] > 1 << 30 or p["out_row_bytes"] * p["rows"] > 1 << 30:
            raise WorkloadError("a job's input or output is over 1 GiB: shard the dataset")
        p["feeds"] = checked
        return p

    def input_spec(self, p: Mapping[str, Any]) -> dict[str, tuple[tuple[int, ...], str]]:
        spec: dict[str, tuple[tuple[int, ...], str]] = {"model": ((p["model_bytes"],), "uint8")}
        for name, (dtype, dims) in p["feeds"].items():
            spec[input_name(name)] = ((p["rows"], *dims), dtype)
        return spec

    def flops(self, p: Mapping[str, Any]) -> float:
        return float(p["gflop"]) * 1e9

    def _input_bytes(self, p: Mapping[str, Any]) -> int:
        return sum(int(np.prod(dims, dtype=np.int64)) * np.dtype(dt).itemsize * p["rows"]
                   for dt, dims in p["feeds"].values())

    def memory(self, p: Mapping[str, Any]) -> int:
        return 4 * p["model_bytes"] + 2 * self._input_bytes(p) + 3 * p["rows"] * p["out_row_bytes"] + (64 << 20)

    def comparison(self, p: Mapping[str, Any]) -> str:
        return "rows"

    def output_bytes(self, p: Mapping[str, Any]) -> int:
        return int(p["rows"] * p["out_row_bytes"])

    def run(self, p: Mapping[str, Any], ops: Any, progress: Any,
            inputs: Mapping[str, np.ndarray] | None = None) -> Any:
        if inputs is None or not hasattr(ops, "session"):
            raise WorkloadError("model jobs run on an ONNX Runtime backend (ort-cpu, ort-cuda)",
                                code="backend_unavailable")
        sess, info = ops.session(np.ascontiguousarray(inputs["model"]).tobytes())
        feeds = p["feeds"]
        wanted = {s.name: s for s in info.inputs}
        if set(wanted) != set(feeds):
            raise ModelError(f"the model takes inputs {sorted(wanted)}, the job feeds {sorted(feeds)}")
        for name, (dtype, dims) in feeds.items():
            s = wanted[name]
            if s.dtype != dtype or len(s.shape) != len(dims) + 1 or any(
                    want is not None and want != got for want, got in zip(s.shape[1:], dims, strict=True)):
                raise ModelError(f"input {name}: the model takes {s.dtype}{list(s.shape)}, "
                                 f"the job feeds {dtype}[rows, {', '.join(map(str, dims))}]")
        estimate = info.flops_per_row * p["rows"] / 1e9
        if p["gflop"] * UNDERPRICED_FACTOR + 1e-3 < estimate:
            raise WorkloadError(f"the model costs about {estimate:.3g} GFLOP, not {p['gflop']:.3g}",
                                code="underpriced")
        rows = p["rows"]
        step = rows if p.get("whole") else CHUNK_ROWS
        chunks: dict[str, list[np.ndarray]] = {s.name: [] for s in info.outputs}
        for start in range(0, rows, step):
            feed = {n: inputs[input_name(n)][start:start + step] for n in feeds}
            results = sess.run(None, feed)
            for spec, r in zip(info.outputs, results, strict=True):
                chunks[spec.name].append(np.asarray(r))
            progress(min(1.0, (start + step) / rows))
        arrays = {}
        for name, parts in chunks.items():
            a = np.concatenate(parts) if len(parts) > 1 else parts[0]
            if a.ndim == 0 or a.shape[0] != rows:
                raise ModelError(f"output {name} is not one row per input row (shape {list(a.shape)})")
            if a.dtype.kind not in "iufb":
                raise ModelError(f"output {name} has dtype {a.dtype}")
            arrays[name] = a
        return Output(arrays, {})

    def agree(self, p: Mapping[str, Any], x: Any, y: Any) -> bool:
        if set(x.arrays) != set(y.arrays):
            return False
        return all(rows_agree(x.arrays[k], y.arrays[k], p.get("rtol") or 0.0) for k in x.arrays)


def rows_agree(a: np.ndarray, b: np.ndarray, rtol: float = 0.0) -> bool:
    """Every row of ``a`` within tolerance of the same row of ``b`` (integers: equal)."""
    return bool(row_mismatches(a, b, rtol).size == 0) if a.shape == b.shape else False


def row_mismatches(a: np.ndarray, b: np.ndarray, rtol: float = 0.0) -> np.ndarray:
    """Indices of the rows of ``a`` that do not agree with ``b`` (all rows when shapes differ)."""
    if a.shape != b.shape or a.ndim == 0:
        return np.arange(max(len(a) if a.ndim else 1, 1))
    n = len(a)
    if a.dtype.kind in "iub" and b.dtype.kind in "iub":
        return np.nonzero((a.reshape(n, -1) != b.reshape(n, -1)).any(axis=1))[0]
    tol = rtol or RTOL.get(b.dtype.name, RTOL["float32"])
    a64, b64 = a.astype(np.float64).reshape(n, -1), b.astype(np.float64).reshape(n, -1)
    finite = np.isfinite(a64) & np.isfinite(b64)
    odd = ~finite & ~((a64 == b64) | (np.isnan(a64) & np.isnan(b64)))
    a0, b0 = np.where(finite, a64, 0.0), np.where(finite, b64, 0.0)
    diff = np.linalg.norm(a0 - b0, axis=1)
    scale = np.linalg.norm(b0, axis=1)
    floor = tol * 1e-6 * (float(scale.max()) if n else 0.0) + 1e-30
    return np.nonzero((diff > tol * scale + floor) | odd.any(axis=1))[0]


def take_rows(params: Mapping[str, Any], inputs: Mapping[str, np.ndarray], output: Any,
              idx: Sequence[int]) -> tuple[dict[str, Any], dict[str, np.ndarray], Any]:
    """The job restricted to rows ``idx``: its parameters, inputs (the same model) and the output
    rows a provider claimed for them (for a checker to re-run just those)."""
    ix = np.asarray(idx, dtype=np.int64)
    sub = dict(params, rows=len(ix), gflop=float(params["gflop"]) * len(ix) / max(1, int(params["rows"])))
    sub_inputs = {k: (v if k == "model" else np.ascontiguousarray(v[ix])) for k, v in inputs.items()}
    return sub, sub_inputs, Output({k: np.ascontiguousarray(v[ix]) for k, v in output.arrays.items()}, {})
