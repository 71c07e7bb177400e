"""Preparing someone's model and dataset for the market (the requester's side, before any network).

In two halves, so that the model never runs in the node:

* :func:`probe` runs in an executor worker, under the memory limit and timeout a provider's job
  gets (:meth:`p2pnode.exec.executor.Executor.probe_model`): it checks the model exactly as a
  provider will (:mod:`p2pnode.exec.onnx_model`), matches a sample of the dataset's rows to the
  model's inputs, runs them, and returns a :class:`Probe`: the model's description, its output
  bytes per row, whether it couples its rows and why, and what a row costs;
* :func:`assemble` runs in the node: it casts the whole dataset as the probe found right (within a
  kind, float64 data for a float32 model) and gives the :class:`ModelJob`.

:func:`prepare` does both in this process, for tests and tools.

**Row independence.** :mod:`p2pnode.exec.row_coupling` looks at the graph; then the sample's first
rows (spread over the dataset, distinct where the dataset has distinct rows) run as one batch, one
by one, in reverse order and twice over, and every row's output must agree each time. A model that
couples its rows (a statistic over the batch, an operator across the row axis) runs **whole**: one
job, all rows in one batch, so its answer is the one ONNX Runtime gives on the whole dataset; it is
checked by re-running that job (``verify = "rerun"``), since rows checked alone prove nothing.

**Cost.** The static count of :func:`onnx_model.describe` is a floor. The probe times batches of the
sample's rows (doubling up to ``CHUNK_ROWS`` rows, until a batch takes ``TIMING_S``) and scales the
seconds a row takes by this machine's measured ONNX Runtime speed (the calibration MatMul's GFLOP/s,
the unit providers advertise). A provider's estimate is then this machine's time scaled by its speed
against ours, whatever the model is made of (tree ensembles, loops, lookups).
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from p2pnode.exec import buckets, onnx_model
from p2pnode.exec.onnx_model import ModelError, ModelInfo, TensorSpec
from p2pnode.exec.onnx_workload import CHUNK_ROWS, MAX_ROWS, input_name, rows_agree

SPREAD_ROWS = 8  # rows run as one batch and one by one
PROBE_BYTES = 32 << 20  # of the dataset's rows sent to the probe, at most (at least a row of each kind)
TIMING_S = 0.05  # a timed batch grows until it takes this long (or is run again until the runs do)
MAX_TIMED_RUNS = 200
PROBE_TIMEOUT_S = 60.0  # as a provider's shortest job timeout
SPEED_BUDGET_S = 0.2
JOB_MAX_BYTES = 1 << 30  # a job's input (onnx_workload's rule)
_speed: list[float] = []  # this process's measured ONNX Runtime speed, once


@dataclass(frozen=True)
class Probe:
    """What a few rows run in a worker showed."""

    info: ModelInfo
    out_row_bytes: int
    coupling: str  # why the model couples its rows; "" when they are independent
    seconds_per_row: float
    speed: float  # GFLOP/s of ONNX Runtime's CPU provider on the calibration MatMul, same worker

    @property
    def flops_per_row(self) -> float:
        """The cost of a row: the measured time in calibration FLOPs, never under the static count."""
        return max(self.info.flops_per_row, self.seconds_per_row * self.speed * 1e9)

    def to_wire(self) -> dict[str, Any]:
        i = self.info
        return {"inputs": [_spec_wire(s) for s in i.inputs], "outputs": [_spec_wire(s) for s in i.outputs],
                "nodes": i.nodes, "opsets": dict(i.opsets), "flops_per_row": i.flops_per_row,
                "out_row_bytes": self.out_row_bytes, "coupling": self.coupling,
                "seconds_per_row": self.seconds_per_row, "speed": self.speed}

    @classmethod
    def from_wire(cls, w: Mapping[str, Any]) -> Probe:
        """From a worker's answer; ``ValueError`` when it is not one."""
        try:
            info = ModelInfo(tuple(_spec(s) for s in w["inputs"]), tuple(_spec(s) for s in w["outputs"]),
                             int(w["nodes"]), {str(k): int(v) for k, v in dict(w["opsets"]).items()},
                             float(w["flops_per_row"]))
            probe = cls(info, int(w["out_row_bytes"]), str(w["coupling"])[:300], float(w["seconds_per_row"]),
                        float(w["speed"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not a probe: {exc}") from exc
        if not all(math.isfinite(v) and v >= 0 for v in (probe.seconds_per_row, probe.speed,
                                                         info.flops_per_row)) or probe.out_row_bytes < 0:
            raise ValueError("not a probe: negative or non-finite figures")
        return probe


def _spec_wire(s: TensorSpec) -> list[Any]:
    return [s.name, s.dtype, list(s.shape)]


def _spec(w: Any) -> TensorSpec:
    name, dtype, shape = w
    np.dtype(str(dtype))
    return TensorSpec(str(name), str(dtype), tuple(None if d is None else int(d) for d in shape))


@dataclass(frozen=True)
class ModelJob:
    workload: ClassVar[str] = "onnx"
    blob: bytes  # the model container
    info: ModelInfo
    arrays: dict[str, np.ndarray]  # by model input name, cast to its dtype
    rows: int
    out_row_bytes: int
    coupling: str = ""  # why the rows are not independent ("" when they are)
    flops_per_row: float = 0.0  # the priced cost of a row (0: the static count)
    order: np.ndarray | None = None  # bucketed by length: row i of ``arrays`` is the user's row order[i]
    lengths: np.ndarray | None = None  # bucketed: each row's tokens, in the order of ``arrays``

    @property
    def row_independent(self) -> bool:
        return not self.coupling

    @property
    def whole(self) -> bool:
        """The model runs on all rows at once: one job, one batch."""
        return bool(self.coupling)

    @property
    def verify(self) -> str:
        return "rows" if self.row_independent else "rerun"

    def cost_per_row(self) -> float:
        return max(self.flops_per_row, self.info.flops_per_row)

    def shard(self, start: int, stop: int) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """(params, inputs) of rows ``start:stop`` as an ``onnx`` job (a row-coupled model: all rows)."""
        if self.whole and (start, stop) != (0, self.rows):
            raise ModelError(f"this model couples its rows ({self.coupling}): it runs on the whole dataset at once")
        n = stop - start
        rows = {name: a[start:stop] for name, a in self.arrays.items()}
        scale = 1.0
        if self.lengths is not None:  # bucketed: the shard is as long as its longest row, no longer
            full = self.arrays[buckets.MASK].shape[1]
            rows = buckets.trim(rows, buckets.sequence_inputs(self.arrays), self.lengths[start:stop])
            scale = rows[buckets.MASK].shape[1] / max(1, full)
        params: dict[str, Any] = {
            "model_bytes": len(self.blob), "rows": n, "out_row_bytes": self.out_row_bytes, "inputs": "blob",
            "gflop": round(self.cost_per_row() * n * scale / 1e9, 9),
            "feeds": {name: [a.dtype.name, list(a.shape[1:])] for name, a in rows.items()},
        }
        if self.whole:
            params["whole"] = True
        inputs = {"model": np.frombuffer(self.blob, dtype=np.uint8)}
        inputs.update({input_name(name): np.ascontiguousarray(a) for name, a in rows.items()})
        return params, inputs

    def restore(self, outputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Outputs of the rows in the order of ``arrays`` put back in the user's order."""
        return buckets.restore(outputs, self.order)

    def gflop(self) -> float:
        return self.cost_per_row() * self.rows / 1e9


# the node's half --------------------------------------------------------------------------------

def name_arrays(info: ModelInfo, arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Arrays by model input name: a single unnamed array (``.npy``) goes to a single-input model."""
    names = [s.name for s in info.inputs]
    if len(arrays) == 1 and len(names) == 1 and names[0] not in arrays:
        return {names[0]: next(iter(arrays.values()))}
    if set(arrays) != set(names):
        raise ModelError(f"the model takes inputs {names}; got arrays {sorted(arrays)}")
    return dict(arrays)


def cast_arrays(info: ModelInfo, arrays: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], int]:
    """(arrays by input name in the model's dtypes, rows): the shapes must fit the model's inputs."""
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
            raise ModelError(f"input {spec.name}: the model takes rows of {list(spec.shape[1:])}, the data's rows "
                             f"are {list(a.shape[1:])}")
        if rows is not None and len(a) != rows:
            raise ModelError("every input needs the same number of rows")
        rows = len(a)
        cast[spec.name] = np.ascontiguousarray(a)
    if not rows:
        raise ModelError("the dataset has no rows")
    return cast, rows


def sample(arrays: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], int]:
    """(rows for the probe, how many of them are the spread rows): up to ``SPREAD_ROWS`` rows
    spread over the dataset (distinct ones first), then the first rows for timing; at most
    ``PROBE_BYTES`` of each (but one row at least)."""
    if not arrays:
        raise ModelError("the dataset has no arrays")
    n = min(len(a) if np.ndim(a) else 0 for a in arrays.values())
    if n == 0:
        raise ModelError("the dataset has no rows")
    row_bytes = max(1, sum(math.prod(a.shape[1:]) * a.dtype.itemsize for a in arrays.values()))
    fit = max(1, PROBE_BYTES // row_bytes)
    spread = _distinct(arrays, np.unique(np.linspace(0, n - 1, min(n, 4 * SPREAD_ROWS)).astype(np.int64)),
                       min(SPREAD_ROWS, fit))
    idx = np.concatenate([spread, np.arange(min(n, fit, CHUNK_ROWS), dtype=np.int64)])
    return {k: np.ascontiguousarray(np.asarray(a)[idx]) for k, a in arrays.items()}, len(spread)


def _distinct(arrays: Mapping[str, np.ndarray], candidates: np.ndarray, k: int) -> np.ndarray:
    seen: set[bytes] = set()
    first: list[int] = []
    again: list[int] = []
    for i in candidates.tolist():
        h = hashlib.sha256()
        for a in arrays.values():
            h.update(np.ascontiguousarray(np.asarray(a)[i]).tobytes())
        (again if h.digest() in seen else first).append(i)
        seen.add(h.digest())
    return np.asarray((first + again)[:k], dtype=np.int64)


def assemble(blob: bytes, probe: Probe, arrays: Mapping[str, np.ndarray]) -> ModelJob:
    """The job of ``arrays`` through the model ``probe`` describes (no model code runs here).
    Token rows (an ``attention_mask`` among the inputs) of a model that keeps its rows apart are
    put in order of length, so that shards cut from them pad little (:mod:`buckets`)."""
    cast, rows = cast_arrays(probe.info, arrays)
    order = lengths = None
    if not probe.coupling:
        cast, order, lengths = buckets.by_length(cast)
    if probe.coupling:
        size = sum(a.nbytes for a in cast.values())
        if size > JOB_MAX_BYTES or rows > MAX_ROWS or probe.out_row_bytes * rows > JOB_MAX_BYTES:
            raise ModelError(f"this model couples its rows ({probe.coupling}), so it must run on the whole "
                             f"dataset at once, and {rows} rows ({size} bytes) are more than one job may carry "
                             f"(1 GiB in or out, {MAX_ROWS} rows)")
    return ModelJob(blob, probe.info, cast, rows, probe.out_row_bytes, probe.coupling, probe.flops_per_row, order,
                    lengths)


def prepare(blob: bytes, arrays: Mapping[str, np.ndarray]) -> ModelJob:
    """:func:`probe` and :func:`assemble` in this process (tests, tools; the node probes in a worker)."""
    rows, spread = sample(arrays)
    return assemble(blob, probe(blob, rows, spread), arrays)


# the worker's half ------------------------------------------------------------------------------

def probe(blob: bytes, rows: Mapping[str, np.ndarray], spread: int, ops: Any = None) -> Probe:
    """Check the model, run the sample's rows and time them (in a worker: this runs the model)."""
    from p2pnode.exec import backends, row_coupling

    ops = ops or backends.OrtOps("ort-cpu", backends.cpu_threads())
    model = onnx_model.load(blob)
    info = onnx_model.check_model(model)
    static = row_coupling.coupling(model)
    del model
    sess, _ = ops.session(blob)
    cast, _ = cast_arrays(info, rows)
    spread = max(1, min(spread, len(next(iter(cast.values())))))

    def run(feed: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        return [np.asarray(o) for o in sess.run(None, dict(feed))]

    batch = run({n: a[:spread] for n, a in cast.items()})
    out_row_bytes = 0
    for spec, out in zip(info.outputs, batch, strict=True):
        if out.ndim == 0 or out.shape[0] != spread:
            raise ModelError(f"output {spec.name} is not one row per input row")
        out_row_bytes += math.prod(out.shape[1:]) * out.dtype.itemsize
    coupling = static or _couples(run, {n: a[:spread] for n, a in cast.items()}, batch)
    timed = {n: a[spread:] if len(a) > spread else a for n, a in cast.items()}
    return Probe(info, int(out_row_bytes), coupling, _seconds_per_row(run, timed), _ort_speed())


def _couples(run: Callable[[Mapping[str, np.ndarray]], list[np.ndarray]], batch: Mapping[str, np.ndarray],
             outs: list[np.ndarray]) -> str:
    """Why running these rows in other batches changes their answers ("" when it does not)."""
    k = len(next(iter(batch.values())))

    def same(got: list[np.ndarray], want: list[np.ndarray]) -> bool:
        return all(rows_agree(g, w) for g, w in zip(got, want, strict=True))

    try:
        for i in range(k):
            if not same(run({n: a[i:i + 1] for n, a in batch.items()}), [o[i:i + 1] for o in outs]):
                return "a row alone gets another answer than in a batch"
        if k > 1 and not same([o[::-1] for o in run({n: a[::-1] for n, a in batch.items()})], outs):
            return "the order of the rows changes their answers"
        twice = run({n: np.concatenate([a, a]) for n, a in batch.items()})
        if not (same([t[:k] for t in twice], outs) and same([t[k:] for t in twice], outs)):
            return "the size of the batch changes the answers"
    except Exception as exc:  # noqa: BLE001 - a model that runs on one batch size only
        return f"it fails on other batch sizes ({type(exc).__name__})"
    return ""


def _seconds_per_row(run: Callable[[Mapping[str, np.ndarray]], list[np.ndarray]],
                     rows: Mapping[str, np.ndarray]) -> float:
    """Seconds a row takes in batches as large as the sample allows (up to ``CHUNK_ROWS``): the
    batch doubles until it takes ``TIMING_S``; a sample too quick for that is run again until the
    runs add up to it, and the quickest run counts (as the calibration counts its best)."""
    total = len(next(iter(rows.values())))
    n = min(total, 8)
    while True:
        t0 = time.perf_counter()
        run({k: a[:n] for k, a in rows.items()})
        took = time.perf_counter() - t0
        if took >= TIMING_S or n >= total:
            break
        n = min(total, 2 * n)
    best, spent = took, took
    batch = {k: a[:n] for k, a in rows.items()}
    for _ in range(MAX_TIMED_RUNS):
        if spent >= TIMING_S:
            break
        t0 = time.perf_counter()
        run(batch)
        took = time.perf_counter() - t0
        best, spent = min(best, took), spent + took
    return best / n


def _ort_speed() -> float:
    if not _speed:
        from p2pnode.telemetry.calibrate import ort_cpu_speed

        _speed.append(ort_cpu_speed(SPEED_BUDGET_S))
    return _speed[0]
