"""Preparing someone's model and dataset for the market (the requester's side, before any network).

:func:`prepare` checks the model exactly as a provider will (:mod:`p2pnode.exec.onnx_model`), matches
the arrays to the model's inputs (casting within a kind, float64 data for a float32 model), runs a
few rows here with ONNX Runtime to learn the output per row, and probes whether rows are independent:
the first rows run as one batch and one by one must agree. Row-independent models are checked by
sampling rows (``verify/rows.py``); a model that couples its rows (a batch statistic, an op across
the batch axis) falls back to re-runs of whole jobs, and says so.

:meth:`ModelJob.shard` gives the parameters and input arrays of any row range, for ``submit``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from p2pnode.exec import onnx_model
from p2pnode.exec.onnx_model import ModelError, ModelInfo
from p2pnode.exec.onnx_workload import input_name, rows_agree

PROBE_ROWS = 4


@dataclass(frozen=True)
class ModelJob:
    blob: bytes  # the model container
    info: ModelInfo
    arrays: dict[str, np.ndarray]  # by model input name, cast to its dtype
    rows: int
    out_row_bytes: int
    row_independent: bool

    @property
    def verify(self) -> str:
        return "rows" if self.row_independent else "rerun"

    def shard(self, start: int, stop: int) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """(params, inputs) of rows ``start:stop`` as an ``onnx`` job."""
        n = stop - start
        params = {
            "model_bytes": len(self.blob), "rows": n, "out_row_bytes": self.out_row_bytes, "inputs": "blob",
            "gflop": round(self.info.flops_per_row * n / 1e9, 9),
            "feeds": {name: [a.dtype.name, list(a.shape[1:])] for name, a in self.arrays.items()},
        }
        inputs = {"model": np.frombuffer(self.blob, dtype=np.uint8)}
        inputs.update({input_name(name): np.ascontiguousarray(a[start:stop]) for name, a in self.arrays.items()})
        return params, inputs

    def gflop(self) -> float:
        return self.info.flops_per_row * self.rows / 1e9


def name_arrays(info: ModelInfo, arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Arrays by model input name: a single unnamed array (``.npy``) goes to a single-input model."""
    names = [s.name for s in info.inputs]
    if len(arrays) == 1 and len(names) == 1 and names[0] not in arrays:
        return {names[0]: next(iter(arrays.values()))}
    if set(arrays) != set(names):
        raise ModelError(f"the model takes inputs {names}; got arrays {sorted(arrays)}")
    return dict(arrays)


def prepare(blob: bytes, arrays: Mapping[str, np.ndarray]) -> ModelJob:
    from p2pnode.exec.backends import OrtOps

    model = onnx_model.load(blob)
    info = onnx_model.check_model(model)
    named = name_arrays(info, arrays)
    cast: dict[str, np.ndarray] = {}
    rows = None
    for spec in info.inputs:
        a = np.asarray(named[spec.name])
        want = np.dtype(spec.dtype)
        if a.ndim == 0:
            raise ModelError(f"input {spec.name}: a dataset needs a row axis")
        if a.dtype != want:
            if a.dtype.kind != want.kind and not (a.dtype.kind in "iu" and want.kind in "iu"):
                raise ModelError(f"input {spec.name}: the model takes {want}, the data is {a.dtype}")
            a = a.astype(want)
        if len(a.shape) != len(spec.shape) or any(
                w is not None and w != g for w, g in zip(spec.shape[1:], a.shape[1:], strict=True)):
            raise ModelError(f"input {spec.name}: the model takes {list(spec.shape)}, the data is {list(a.shape)}")
        if rows is not None and len(a) != rows:
            raise ModelError("every input needs the same number of rows")
        rows = len(a)
        cast[spec.name] = np.ascontiguousarray(a)
    if not rows:
        raise ModelError("the dataset has no rows")
    sess, _ = OrtOps("ort-cpu").session(blob)
    k = min(PROBE_ROWS, rows)
    batch = sess.run(None, {n: a[:k] for n, a in cast.items()})
    out_row_bytes = 0
    for spec, out in zip(info.outputs, batch, strict=True):
        out = np.asarray(out)
        if out.ndim == 0 or out.shape[0] != k:
            raise ModelError(f"output {spec.name} is not one row per input row")
        out_row_bytes += math.prod(out.shape[1:]) * out.dtype.itemsize
    independent = True
    for i in range(k):
        single = sess.run(None, {n: a[i:i + 1] for n, a in cast.items()})
        independent &= all(rows_agree(np.asarray(s), np.asarray(b)[i:i + 1]) for s, b in zip(single, batch, strict=True))
    return ModelJob(blob, info, cast, rows, int(out_row_bytes), bool(independent))
