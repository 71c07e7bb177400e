"""Data-parallel training rounds (pure): who trains which rows, with which seed, from which step,
and the outer step that merges what they return (``specs/training.md``).

A training job of R rounds over K shards: in round r every shard i is trained for H local steps
(global steps r·H+1 .. r·H+H, batches seeded by :func:`shard_seed`) from the round's weights, with
a fresh optimiser state; the requester then takes the **outer step** over the K weights returned:

* ``avg``: the new weights are their mean (federated averaging);
* ``nesterov``: DiLoCo's outer optimiser: the pseudo-gradient g = w − mean(w_i), a momentum
  buffer m ← μ·m + g, and w ← w − η·(g + μ·m) (η ``outer_lr``, μ ``outer_momentum``).

The mean is summed in shard order in float32, so the same returns give the same weights bit for
bit. :func:`train_locally` runs the same rounds in this process: the reference a swarm's result
is compared with.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from p2pnode.exec import seeded
from p2pnode.exec import train_model as tm

OUTER = ("avg", "nesterov")


@dataclass(frozen=True)
class Plan:
    spec: tm.Spec
    rounds: int
    local_steps: int
    shards: int
    lr: float = 0.01
    wd: float = 0.0
    batch: int = 32
    seed: int = 0
    outer: str = "avg"
    outer_lr: float = 0.7
    outer_momentum: float = 0.9

    def params(self, r: int, i: int, rows: int) -> dict[str, object]:
        """The ``train`` job of shard ``i`` in round ``r`` (0-based)."""
        return {"model": self.spec.to_json(), "lr": self.lr, "wd": self.wd, "steps": self.local_steps,
                "first": r * self.local_steps + 1, "batch": self.batch, "seed": shard_seed(self.seed, r, i),
                "rows": rows, "inputs": "blob"}


def shard_seed(seed: int, r: int, i: int) -> int:
    """The batch seed of shard ``i`` in round ``r``: a 63-bit mix of the three."""
    return seeded.mix_int(seeded.stream_key(seed, (r << 20) | i)) >> 1


def shard_bounds(rows: int, shards: int) -> list[tuple[int, int]]:
    """``shards`` contiguous row ranges as equal as can be (the first ones one row longer)."""
    base, extra = divmod(rows, shards)
    out, at = [], 0
    for i in range(shards):
        n = base + (1 if i < extra else 0)
        out.append((at, at + n))
        at += n
    return out


def outer_step(plan: Plan, weights: np.ndarray, returned: Sequence[np.ndarray],
               momentum: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(the next weights, the next momentum buffer) from the K weights returned, in shard order."""
    acc = np.zeros_like(weights, dtype=np.float32)
    for w in returned:
        acc += w.astype(np.float32)
    mean = (acc / np.float32(len(returned))).astype(np.float32)
    if plan.outer == "avg":
        return mean, momentum
    g = weights.astype(np.float32) - mean
    mu, lr = np.float32(plan.outer_momentum), np.float32(plan.outer_lr)
    m = (mu * momentum + g).astype(np.float32)
    return (weights - lr * (g + mu * m)).astype(np.float32), m


def job_id(plan: Plan, weights: np.ndarray, x: np.ndarray, y: np.ndarray) -> str:
    """What names a training job: the model, its start, the data and every setting of its rounds."""
    h = hashlib.sha256(plan.spec.canonical())
    h.update(repr((plan.rounds, plan.local_steps, plan.shards, plan.lr, plan.wd, plan.batch, plan.seed, plan.outer,
                   plan.outer_lr, plan.outer_momentum)).encode())
    for a in (weights, x, y):
        h.update(f"{a.dtype.str}|{a.shape}|".encode())
        h.update(hashlib.sha256(np.ascontiguousarray(a).data.cast("B")).digest())
    return h.hexdigest()[:24]


def train_shard(plan: Plan, weights: np.ndarray, x: np.ndarray, y: np.ndarray, r: int, i: int) -> np.ndarray:
    """What an honest provider returns for shard ``i`` of round ``r`` (its rows ``x``, ``y``)."""
    states, _ = tm.run(plan.spec, tm.fresh_state(plan.spec, weights), x, y, first=r * plan.local_steps + 1,
                       steps=plan.local_steps, batch=plan.batch, seed=shard_seed(plan.seed, r, i), lr=plan.lr, wd=plan.wd)
    return np.array(states[-1][:plan.spec.params])


def train_locally(plan: Plan, weights: np.ndarray, x: np.ndarray, y: np.ndarray,
                  on_round: Callable[[int, np.ndarray], None] | None = None) -> np.ndarray:
    """Every round on this machine, shard after shard: the weights a swarm of honest providers
    gives, bit for bit on the same NumPy and BLAS."""
    bounds = shard_bounds(len(x), plan.shards)
    momentum = np.zeros_like(weights, dtype=np.float32)
    w = weights.astype(np.float32)
    for r in range(plan.rounds):
        returned = [train_shard(plan, w, x[a:b], y[a:b], r, i) for i, (a, b) in enumerate(bounds)]
        w, momentum = outer_step(plan, w, returned, momentum)
        if on_round is not None:
            on_round(r, w)
    return w
