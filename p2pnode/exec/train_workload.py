"""The ``train`` workload: local steps of someone's own model on their shard of data, committing to
the state after every step (``specs/training.md``).

Parameters (public, in the request for bids; the state and the data travel as sealed blobs):

* ``model`` -- the model map (:mod:`p2pnode.exec.train_model`: layers, loss, optimizer);
* ``lr``, ``wd`` -- the learning rate and (AdamW) weight decay;
* ``steps`` -- local steps to take; ``first`` -- the global index of the first (≥ 1), which draws
  its batch and, for AdamW, corrects its bias;
* ``batch``, ``seed`` -- rows per step and the seed of the batches;
* ``rows`` -- rows of the shard.

Inputs: ``state`` (float32 ``[state_len]``: weights then the optimiser's buffers), ``x`` (float32
``[rows, inputs]``) and ``y`` (int64 ``[rows]`` labels for ``xent``, float32 ``[rows, outputs]``
for ``mse``).

Output: ``weights`` (the parameters after the last step), ``states`` (every state after a step,
``[steps, state_len]``: the provider's node keeps them as blobs and never sends them) and, in
``extra``, ``commits`` (the blob id of each of those states, in order), ``c0`` (the blob id of the
state it started from), ``loss`` (each step's batch loss) and ``kernels`` (what decides how this
machine rounds: :func:`~p2pnode.exec.train_model.kernel_class`). A state's blob id is the id of its
bytes (float32, little-endian) under :mod:`p2pnode.wire.blob`, so a commitment is opened by
fetching the blob it names. Compared **exactly**: the commitments must be equal (a step check
between machines of other kernels compares the opened states within a tolerance instead:
:mod:`p2pnode.protocol.step_checks`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from p2pnode.errors import WorkloadError
from p2pnode.exec import train_model as tm
from p2pnode.exec.work import Output, Progress
from p2pnode.exec.work import float_param as _float
from p2pnode.exec.work import int_param as _int
from p2pnode.exec.work import refuse_unknown as _unknown
from p2pnode.wire import blob as wb

MAX_STEPS, MAX_BATCH, MAX_ROWS = 10_000, 65_536, 10_000_000
MAX_STATES_BYTES = 1 << 30  # every state of a run is kept by its provider until it is checked
KERNELS = tm.kernel_class()


def commit(state: np.ndarray) -> bytes:
    """The commitment to a state: the blob id of its float32 bytes."""
    return wb.manifest_for(np.ascontiguousarray(state, dtype="<f4").tobytes()).id


def state_from_blob(data: bytes, spec: tm.Spec) -> np.ndarray:
    if len(data) != 4 * spec.state_len:
        raise WorkloadError(f"a state of this model is {4 * spec.state_len} bytes, not {len(data)}")
    return np.frombuffer(data, dtype="<f4").astype(np.float32)


class TrainWorkload:
    name = "train"
    KEYS = frozenset({"model", "lr", "wd", "steps", "first", "batch", "seed", "rows", "inputs"})

    def check(self, params: Mapping[str, Any]) -> dict[str, Any]:
        _unknown(params, self.KEYS)
        if params.get("inputs", "blob") != "blob":
            raise WorkloadError("train jobs take their state and data as blobs (inputs=blob)")
        spec = tm.parse(params.get("model"))
        p = {"model": spec.to_json(), "lr": _float(params, "lr", 0.0, 10.0, 0.01),
             "wd": _float(params, "wd", 0.0, 1.0, 0.0), "steps": _int(params, "steps", 1, MAX_STEPS),
             "first": _int(params, "first", 1, 2**40, 1), "batch": _int(params, "batch", 1, MAX_BATCH, 32),
             "seed": _int(params, "seed", 0, 2**63 - 1, 0), "rows": _int(params, "rows", 1, MAX_ROWS), "inputs": "blob"}
        if 4 * spec.state_len * p["steps"] > MAX_STATES_BYTES:
            raise WorkloadError(f"{p['steps']} states of {4 * spec.state_len} bytes are over the limit of "
                                f"{MAX_STATES_BYTES} bytes a provider keeps: take fewer local steps")
        return p

    def input_spec(self, p: Mapping[str, Any]) -> dict[str, tuple[tuple[int, ...], str]]:
        spec = tm.parse(p["model"])
        y = ((p["rows"],), "int64") if spec.loss == "xent" else ((p["rows"], spec.outputs), "float32")
        return {"state": ((spec.state_len,), "float32"), "x": ((p["rows"], spec.inputs), "float32"), "y": y}

    def flops(self, p: Mapping[str, Any]) -> float:
        return tm.parse(p["model"]).flops_per_row() * p["batch"] * p["steps"]

    def memory(self, p: Mapping[str, Any]) -> int:
        spec = tm.parse(p["model"])
        data = 4 * p["rows"] * (spec.inputs + spec.outputs)
        return 4 * spec.state_len * (p["steps"] + 4) + data + 4 * spec.activations(p["batch"])

    def comparison(self, p: Mapping[str, Any]) -> str:
        return "exact"

    def output_bytes(self, p: Mapping[str, Any]) -> int:
        spec = tm.parse(p["model"])
        return 4 * spec.params + 48 * p["steps"] + 256

    def run(self, p: Mapping[str, Any], ops: Any, progress: Progress,
            inputs: Mapping[str, np.ndarray] | None = None) -> Output:
        # NumPy on every backend, like train_step: one implementation keeps honest runs bit-equal.
        spec = tm.parse(p["model"])
        if inputs is None:
            raise WorkloadError("a train job needs its state and data")
        state, x, y = (np.asarray(inputs[k]) for k in ("state", "x", "y"))
        if spec.loss == "xent" and (y.min(initial=0) < 0 or y.max(initial=0) >= spec.outputs):
            raise WorkloadError(f"labels must be in 0..{spec.outputs - 1} for this model's {spec.outputs} outputs")
        if not np.isfinite(x).all():  # a state may hold them (a run that diverged): it is re-run as it is
            raise WorkloadError("the data hold NaN or infinities")
        if spec.vocab and (x.min(initial=0) < 0 or x.max(initial=0) >= spec.vocab or (x != np.floor(x)).any()):
            raise WorkloadError(f"the data of a model of token ids are ids in 0..{spec.vocab - 1}")
        states, losses = tm.run(spec, state, x, y, first=p["first"], steps=p["steps"], batch=p["batch"],
                                seed=p["seed"], lr=p["lr"], wd=p["wd"], progress=progress)
        return finish(spec, state, states, losses)

    def agree(self, p: Mapping[str, Any], a: Output, b: Output) -> bool:
        """Commitments equal, and the weights too where both outputs have them."""
        if a.extra.get("commits") != b.extra.get("commits"):
            return False
        wa, wb = a.arrays.get("weights"), b.arrays.get("weights")
        return wa is None or wb is None or bool(np.array_equal(wa, wb))


def finish(spec: tm.Spec, start: np.ndarray, states: np.ndarray, losses: list[float],
           kernels: str = KERNELS) -> Output:
    """The output of a run from ``start`` through ``states`` on ``kernels``."""
    extra = {"commits": [commit(s) for s in states], "c0": commit(start), "loss": [float(v) for v in losses],
             "kernels": kernels[:128]}
    return Output({"weights": np.array(states[-1][:spec.params]), "states": states}, extra)
