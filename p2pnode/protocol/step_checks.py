"""Checking local training steps (pure): which steps, the work that re-runs one, and the bisection
of a disagreement over a span of steps to one step (``specs/training.md``).

A ``train`` result commits to the state after each of its steps (the blob ids in
``extra["commits"]``) and to the state it started from (``c0``). Its check:

1. **Sound** (free): one commitment per step, ``c0`` the commitment of the state it was sent.
2. **Sampled steps** (:func:`checks`: 5 % of them, at least four): the first and the last always (a provider that started from stale weights,
   or returned other weights than it reached, is caught there), and ``n - 2`` more drawn after the
   result is in, so the provider could not know them when it committed. Each is re-run by an
   independent checker from the provider's own committed state before it (a blob the provider
   must serve: it keeps every state of a run), and the checker's commitment must equal the
   provider's; at the last step the weights returned must equal the checker's too.
3. **Dispute**: a checker that re-ran a span of steps and disagrees is bisected against the
   provider's commitments to the first step where they part (:func:`first_divergence`); a referee
   re-runs that one step from the state both agree on, and sides with one of them.

A provider that fakes a fraction f of its steps passes ``n`` uniformly sampled step checks with
probability (1 - f)^n; ``specs/training.md`` gives the numbers for a whole job.

**Other kernels.** Commitments are compared bit for bit, which holds between machines whose
kernels round alike. A result names its kernels (``extra["kernels"]``); when the provider's and
the checker's differ (:func:`tolerant`) and their commitments after a sampled span part, the
states they commit to are opened and compared within :func:`tolerance`, a rounding-level bound
(:func:`state_error`): within it the step passes; beyond it the referee re-runs the span and its
state is compared with each side's the same way.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from p2pnode.exec.train_workload import commit
from p2pnode.exec.work import Output

TOLERANCE_ULPS = 10.0  # per step: this many times √k units of float32 rounding, relative
CHECK_SHARE = 0.05  # steps re-run per result, as a share of its steps ...
MIN_CHECKS = 4  # ... and at least this many (the first, the last, two drawn), or all of them


def checks(steps: int) -> int:
    """How many of a result's ``steps`` are re-run."""
    return min(steps, max(MIN_CHECKS, math.ceil(CHECK_SHARE * steps)))


def plan(steps: int, n: int, rng: random.Random) -> list[int]:
    """The steps (1-based, within the run) to check: 1 and ``steps``, then ``n - 2`` drawn."""
    chosen = {1, steps}
    rest = [t for t in range(2, steps) if t not in chosen]
    chosen.update(rng.sample(rest, min(len(rest), max(0, n - len(chosen)))))
    return sorted(chosen)


def unsound(params: Mapping[str, Any], inputs: Mapping[str, Any], output: Output) -> str:
    """Why a train result cannot be right as it stands ("" when it is sound)."""
    commits, c0 = output.extra.get("commits"), output.extra.get("c0")
    if not isinstance(commits, list) or len(commits) != params["steps"] or \
            not all(isinstance(c, bytes) and len(c) == 32 for c in commits):
        return f"it does not commit to each of its {params['steps']} steps"
    if c0 != commit(np.asarray(inputs["state"])):
        return "its commitments do not start from the state it was sent"
    if "weights" not in output.arrays:
        return "it returned no weights"
    return ""


def step_work(params: Mapping[str, Any], inputs: Mapping[str, Any], output: Output, t: int,
              state: np.ndarray, span: int = 1) -> tuple[dict[str, Any], dict[str, Any], Output]:
    """Re-running steps ``t`` .. ``t + span - 1`` of a result (1-based) from ``state``, the state
    before ``t``: the parameters, the inputs, and what the provider's result says they give."""
    span = max(1, min(span, params["steps"] - t + 1))
    p = dict(params, first=params["first"] + t - 1, steps=span)
    expected: dict[str, Any] = {"commits": list(output.extra["commits"][t - 1:t - 1 + span])}
    arrays = {"weights": output.arrays["weights"]} if t + span - 1 == params["steps"] else {}
    return p, dict(inputs, state=state), Output(arrays, expected)


def state_of(params: Mapping[str, Any], data: bytes) -> np.ndarray:
    """A committed state's bytes as a state of the job's model (``ValueError`` if they are not)."""
    from p2pnode.exec import train_model

    n = train_model.parse(params["model"]).state_len
    if len(data) != 4 * n:
        raise ValueError(f"a committed state is {len(data)} bytes, not the {4 * n} of this model's state")
    return np.frombuffer(data, dtype="<f4").astype(np.float32)


def first_divergence(a: Sequence[bytes], b: Sequence[bytes]) -> tuple[int, int]:
    """(the first index where ``a`` and ``b`` differ, the comparisons it took): a bisection, as
    the dispute game plays it. Honest runs that part once never meet again (a commitment fixes
    the whole state), so agreement at ``i`` means agreement before ``i``. Both must differ
    somewhere; a pair that agree throughout gives ``len``."""
    lo, hi, probes = 0, min(len(a), len(b)), 0  # a[:lo] == b[:lo]; they differ at or before hi - 1
    if hi and a[hi - 1] == b[hi - 1]:
        return hi, 1
    while lo < hi - 1:
        mid = (lo + hi - 1) // 2
        probes += 1
        if a[mid] == b[mid]:
            lo = mid + 1
        else:
            hi = mid + 1
    return lo, probes + 1


def one_step(out: Output, i: int, last: bool) -> Output:
    """Step ``i`` of a span's output, as a one-step result (its weights only if it is the last).
    A checker's output is a peer's: one without that commitment stands for no commitment at all."""
    arrays = {"weights": out.arrays["weights"]} if last and "weights" in out.arrays else {}
    commits = out.extra.get("commits")
    mine = commits[i] if isinstance(commits, list) and 0 <= i < len(commits) else b""
    return Output(arrays, {"commits": [mine]})



def kernels(output: Any) -> str:
    """The kernels a ``train`` output says it ran on ("" when it does not say)."""
    extra = getattr(output, "extra", None)
    named = extra.get("kernels") if isinstance(extra, Mapping) else None
    return named if isinstance(named, str) else ""


def tolerant(a: Any, b: Any) -> bool:
    """Whether two runs of a step are compared within :func:`tolerance` rather than bit for bit:
    both name their kernels, and not the same ones."""
    ka, kb = kernels(a), kernels(b)
    return bool(ka and kb and ka != kb)


def tolerance(params: Mapping[str, Any], span: int = 1) -> float:
    """The relative error allowed between two honest runs of ``span`` steps on other kernels:
    ``TOLERANCE_ULPS``·√k·2⁻²⁴ a step, k the largest inner size of the step's matrix products (the
    widest layer's input, or the rows a weight gradient sums over: the batch, times the positions
    of a sequence)."""
    from p2pnode.exec import train_model

    k = train_model.parse(params["model"]).inner(int(params["batch"]))
    return TOLERANCE_ULPS * math.sqrt(k) * 2.0 ** -24 * max(1, span)


def state_error(params: Mapping[str, Any], a: np.ndarray, b: np.ndarray) -> float:
    """How far state ``a`` is from state ``b``: the largest relative error (in the Frobenius norm)
    over their parts, the parameters and then each optimiser buffer, so that a small buffer (AdamW's
    second moment) counts as much as the weights. Infinite where either holds NaN or infinities
    (unless both are the same bytes)."""
    from p2pnode.exec import train_model

    n = train_model.parse(params["model"]).params
    if a.shape != b.shape or len(a) % n:
        return math.inf
    if np.array_equal(a, b):
        return 0.0
    worst = 0.0
    for at in range(0, len(a), n):
        pa, pb = a[at:at + n].astype(np.float64), b[at:at + n].astype(np.float64)
        if not (np.isfinite(pa).all() and np.isfinite(pb).all()):
            return math.inf
        diff, scale = float(np.linalg.norm(pa - pb)), float(np.linalg.norm(pb))
        if diff:
            worst = max(worst, diff / scale if scale else math.inf)
    return worst
