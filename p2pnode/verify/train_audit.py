"""The verdict machine's check of one ``train`` result, driven in this process (tests and
benchmarks): the provider's kept states served from its output, checkers and referees that re-run
steps with the ``train`` workload here (or a checker that lies, or one whose kernels round
otherwise) and serve the states they commit to."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import numpy as np

from p2pnode.exec import train_model as tm
from p2pnode.exec import workloads
from p2pnode.exec.train_blocks import MatMul
from p2pnode.exec.train_workload import commit, finish
from p2pnode.exec.work import Output
from p2pnode.protocol.requester_actions import OpenOutput, OpenState, Ran, RunElsewhere
from p2pnode.protocol.verdict import Verdict
from p2pnode.verify.check import Comparison

T0 = 1_800_000_000.0


@dataclass(frozen=True)
class Ad:
    peer_id: bytes
    addrs: tuple[str, ...]
    offers: tuple[Any, ...] = ()


@dataclass(frozen=True)
class _Result:
    raw: bytes
    body: dict[str, Any]


class _Market:
    def __init__(self, ads: list[Ad]) -> None:
        self.ads = ads

    def pool(self) -> list[Ad]:
        return list(self.ads)

    def score(self, peer: bytes) -> float:
        return 0.5

    def check_probability(self, peer: bytes) -> float:
        return 1.0


def ad(i: int) -> Ad:
    return Ad(bytes([i]) * 8, (f"/ip4/10.0.0.{i}/tcp/4001",))


def run(params: dict[str, Any], inputs: dict[str, np.ndarray]) -> Output:
    return workloads.get("train").run(params, None, lambda f: None, inputs)


def f64_products(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """A matrix product summed in float64 and rounded once: kernels of other hardware, whose
    float32 products differ from this BLAS's by rounding."""
    return (a.astype(np.float64) @ b.astype(np.float64)).astype(np.float32)


def run_on(params: dict[str, Any], inputs: dict[str, np.ndarray], matmul: MatMul = f64_products,
           kernels: str = "float64-accumulated products") -> Output:
    """An honest ``train`` run on other kernels (``matmul``), named ``kernels`` in its output."""
    spec = tm.parse(params["model"])
    state = np.asarray(inputs["state"])
    states, losses = tm.run(spec, state, inputs["x"], inputs["y"], first=params["first"], steps=params["steps"],
                            batch=params["batch"], seed=params["seed"], lr=params["lr"], wd=params["wd"], matmul=matmul)
    return finish(spec, state, states, losses, kernels)


def _served(out: Output) -> tuple[dict[bytes, bytes], Output]:
    """(the states a runner keeps, by commitment; the output it sends without them)."""
    kept = {commit(s): np.ascontiguousarray(s, dtype="<f4").tobytes() for s in out.arrays.get("states", [])}
    return kept, Output({k: a for k, a in out.arrays.items() if k != "states"}, out.extra)


@dataclass
class Audit:
    verdict: Verdict
    actions: list[Any]
    asked: list[RunElsewhere]  # the runs elsewhere asked for, in order

    @property
    def refused(self) -> bool:
        return self.verdict.settled is not None and not self.verdict.settled.accepted


def audit(params: dict[str, Any], inputs: dict[str, np.ndarray], output: Output, *, span: int = 1, seed: int = 3,
          lying_checker: str = "", other_kernels: tuple[str, ...] = ()) -> Audit:
    """Check ``output`` (with its ``states``, as the provider's node keeps them) of the job
    ``params``/``inputs`` the way a requester does. ``lying_checker``: ``noise`` (it returns noise
    it commits to) or ``empty`` (an output with nothing in it). ``other_kernels``: the roles
    (``checker``, ``referee``) that run on other kernels (:func:`run_on`) than this machine's."""
    from p2pnode.adversary import Adversary

    provider, checker, referee = ad(1), ad(2), ad(3)
    v = Verdict(b"me", b"J" * 16, "train", "steps", "job", provider, _Result(b"provider", {}),  # type: ignore[arg-type]
                params, inputs, _Market([provider, checker, referee]), Comparison("train"), random.Random(seed))
    v.step_span = span
    kept: dict[bytes, dict[bytes, bytes]] = {}
    kept[provider.peer_id], sent = _served(output)
    actions: list[Any] = list(v.start())
    asked: list[RunElsewhere] = []
    liar = Adversary.parse("garbage")
    while not v.final and v.pending is not None:
        q = v.pending
        if isinstance(q, OpenOutput):
            actions += v.opened(True, "", sent, "", T0)
        elif isinstance(q, OpenState):
            actions += v.state_opened(kept.get(q.peer, {}).get(q.blob), "not kept", T0)
        else:
            assert isinstance(q, RunElsewhere)
            asked.append(q)
            out = run_on(q.params, q.inputs) if q.role in other_kernels else run(q.params, q.inputs)
            if lying_checker == "noise" and q.role == "checker" and liar is not None:
                out = liar.tamper("train", q.params, out, True, inputs=q.inputs)
            elif lying_checker == "empty" and q.role == "checker":
                out = Output({}, {})
            served, out = _served(out)
            kept.setdefault(q.ad.peer_id, {}).update(served)
            actions += v.ran(Ran(out, q.role.encode(), b"j"), T0)
    return Audit(v, actions, asked)
