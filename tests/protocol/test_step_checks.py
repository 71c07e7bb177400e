"""Checking training steps in the verdict machine, driven with real ``train`` runs: every adversary
of training is refused, an honest result is accepted, a lying checker loses to the referee, and a
disagreement over a span of steps is bisected to the one step a referee re-runs."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from p2pnode.adversary import Adversary
from p2pnode.exec import train_model as tm
from p2pnode.exec import workloads
from p2pnode.exec.work import Output
from p2pnode.protocol import rounds, step_checks
from p2pnode.protocol.requester_actions import PublishCheat, Record, RunElsewhere
from p2pnode.protocol.verdict import Verdict
from p2pnode.verify.train_audit import ad, audit, run, run_on

SPEC = tm.parse({"inputs": 6, "layers": [["dense", 8], ["gelu"], ["layernorm"], ["dense", 3]], "loss": "xent",
                 "optimizer": "adamw"})


def _job(steps: int = 6) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    g = np.random.default_rng(5)
    x = g.standard_normal((40, 6)).astype(np.float32)
    y = g.integers(0, 3, 40).astype(np.int64)
    plan = rounds.Plan(SPEC, rounds=1, local_steps=steps, shards=1, lr=0.05, batch=8, seed=9)
    params = workloads.get("train").check(plan.params(1, 0, len(x)))
    return params, {"state": tm.fresh_state(SPEC, tm.init_weights(SPEC, 1)), "x": x, "y": y}


def _drive(params: dict[str, Any], inputs: dict[str, np.ndarray], output: Output, *, span: int = 1,
           checker_lies: bool = False) -> tuple[Verdict, list[Any], list[RunElsewhere]]:
    a = audit(params, inputs, output, span=span, lying_checker="noise" if checker_lies else "")
    assert a.verdict.final
    return a.verdict, a.actions, a.asked


def test_an_honest_result_passes_its_sampled_steps() -> None:
    params, inputs = _job()
    v, actions, asked = _drive(params, inputs, run(params, inputs))
    assert v.settled is not None and v.settled.accepted and v.settled.checked == "steps", v.settled
    firsts = sorted(q.params["first"] - params["first"] + 1 for q in asked)
    assert firsts[0] == 1 and firsts[-1] == params["steps"] and len(firsts) == step_checks.checks(6) == 4
    assert all(q.params["steps"] == 1 and q.role == "checker" for q in asked)
    assert not [a for a in actions if isinstance(a, PublishCheat)]


@pytest.mark.parametrize("mode", ["skip:0.3", "garbage", "scale:2", "stale", "lr:2", "lowprec", "replay"])
def test_every_training_adversary_is_refused(mode: str) -> None:
    params, inputs = _job(steps=4)  # four steps: every one of them is checked
    adv = Adversary.parse(mode, seed=1)
    assert adv is not None
    earlier = dict(inputs, state=tm.fresh_state(SPEC, tm.init_weights(SPEC, 2)))
    for state_in in (earlier, inputs):  # a job before, which stale and replay fall back on
        p, cheat = adv.run_params("train", params)
        honest = run(p, state_in)
        out = adv.tamper("train", p, honest, cheat, inputs=state_in)
    assert adv.tampered >= 1
    v, _, _ = _drive(params, inputs, out)
    assert v.settled is not None and not v.settled.accepted, (mode, v.settled)
    assert v.settled.checked == "steps" and v.settled.outcome.startswith("wrong"), v.settled


def test_a_lying_checker_loses_to_the_referee() -> None:
    params, inputs = _job()
    v, actions, asked = _drive(params, inputs, run(params, inputs), checker_lies=True)
    assert v.settled is not None and v.settled.accepted, v.settled
    assert "referee" in {q.role for q in asked}
    dispute = next(a for a in actions if isinstance(a, Record) and a.kind == "dispute")
    assert dispute.data["wrong"] == "checker"
    assert any(isinstance(a, PublishCheat) and a.subject == ad(2).peer_id for a in actions)


def test_a_checker_that_returns_no_commitments_is_refereed_not_obeyed() -> None:
    params, inputs = _job()
    a = audit(params, inputs, run(params, inputs), lying_checker="empty")
    assert a.verdict.settled is not None and a.verdict.settled.accepted, a.verdict.settled
    assert [q.role for q in a.asked] == ["checker", "referee"]
    dispute = next(x for x in a.actions if isinstance(x, Record) and x.kind == "dispute")
    assert dispute.data["wrong"] == "checker"


def test_a_span_that_disagrees_is_bisected_to_the_step_a_referee_reruns() -> None:
    params, inputs = _job(steps=8)
    adv = Adversary.parse("skip:0.1", seed=4)  # one step of eight skipped
    assert adv is not None
    out = adv.tamper("train", params, run(params, inputs), True, inputs=inputs)
    honest = run(params, inputs).extra["commits"]
    skipped = next(i for i, (a, b) in enumerate(zip(out.extra["commits"], honest, strict=True)) if a != b) + 1
    v, actions, asked = _drive(params, inputs, out, span=8)
    assert v.settled is not None and not v.settled.accepted
    referee = [q for q in asked if q.role == "referee"]
    assert len(referee) == 1 and referee[0].params["steps"] == 1
    assert referee[0].params["first"] - params["first"] + 1 == skipped  # the one step it parted at
    dispute = next(a for a in actions if isinstance(a, Record) and a.kind == "dispute")
    assert dispute.data["wrong"] == "provider"


def test_a_state_the_provider_does_not_serve_re_awards_without_blame() -> None:
    params, inputs = _job()
    out = run(params, inputs)
    gone = Output({"weights": out.arrays["weights"], "states": out.arrays["states"][:0]}, out.extra)
    v, actions, _ = _drive(params, inputs, gone)
    assert v.state.value == "unavailable" and v.settled is None
    assert not [a for a in actions if isinstance(a, Record)]


def test_first_divergence_finds_the_first_differing_index_by_bisection() -> None:
    for n in (1, 2, 7, 64, 1000):
        for d in {0, n // 3, n - 1}:
            a = [bytes([1]) * 4] * n
            b = a[:d] + [bytes([2]) * 4] * (n - d)
            i, probes = step_checks.first_divergence(a, b)
            assert i == d and probes <= max(1, n).bit_length() + 1
    assert step_checks.first_divergence([b"x"], [b"x"]) == (1, 1)


def test_unsound_results_are_named() -> None:
    params, inputs = _job()
    out = run(params, inputs)
    assert step_checks.unsound(params, inputs, out) == ""
    short = Output(out.arrays, dict(out.extra, commits=out.extra["commits"][:-1]))
    assert "each of its" in step_checks.unsound(params, inputs, short)
    other = dict(inputs, state=inputs["state"] + np.float32(1))
    assert "start from the state" in step_checks.unsound(params, other, out)


def test_an_honest_provider_on_other_kernels_passes_within_the_tolerance() -> None:
    params, inputs = _job(steps=8)
    theirs, mine = run_on(params, inputs), run(params, inputs)  # float64-accumulated products, and this BLAS
    # the same steps rounded otherwise: not one commitment in common, every state within rounding
    assert not set(theirs.extra["commits"]) & set(mine.extra["commits"])
    errors = [step_checks.state_error(params, a, b) for a, b in zip(theirs.arrays["states"], mine.arrays["states"],
                                                                      strict=True)]
    assert 0 < max(errors) < step_checks.tolerance(params) / 2
    a = audit(params, inputs, theirs)
    assert a.verdict.settled is not None and a.verdict.settled.accepted, a.verdict.settled
    assert a.verdict.settled.checked == "steps"
    assert f"{step_checks.checks(8)} on other kernels, within the tolerance" in a.verdict.settled.outcome
    assert [q.role for q in a.asked] == ["checker"] * step_checks.checks(8)  # no referee
    assert not [x for x in a.actions if isinstance(x, Record | PublishCheat)]


@pytest.mark.parametrize("referee_kernels", ["these", "other"])
@pytest.mark.parametrize("mode", ["scale:2", "lr:2", "skip:0.3", "lowprec", "stale"])
def test_a_cheater_that_names_other_kernels_is_still_refused(mode: str, referee_kernels: str) -> None:
    """It computes here but names other kernels, to be compared within the tolerance: what it
    faked is far beyond rounding, and the referee (on either kernels) sides with the checker."""
    params, inputs = _job(steps=4)
    adv = Adversary.parse(mode, seed=1)
    assert adv is not None
    earlier = dict(inputs, state=tm.fresh_state(SPEC, tm.init_weights(SPEC, 2)))
    for state_in in (earlier, inputs):
        p, cheat = adv.run_params("train", params)
        out = adv.tamper("train", p, run(p, state_in), cheat, inputs=state_in)
    out.extra["kernels"] = "float64-accumulated products"
    a = audit(params, inputs, out, other_kernels=("referee",) if referee_kernels == "other" else ())
    v = a.verdict
    assert v.settled is not None and not v.settled.accepted, (mode, v.settled)
    assert v.settled.outcome == "wrong: the checker and the referee agree against it", v.settled
    dispute = next(x for x in a.actions if isinstance(x, Record) and x.kind == "dispute")
    assert dispute.data["wrong"] == "provider"


def test_a_lying_checker_loses_to_a_referee_that_finds_the_provider_within_the_tolerance() -> None:
    params, inputs = _job()
    a = audit(params, inputs, run_on(params, inputs), lying_checker="noise")
    v = a.verdict
    assert v.settled is not None and v.settled.accepted, v.settled
    assert v.settled.outcome == "verified by a referee (the checker was wrong)"
    assert [q.role for q in a.asked][-1] == "referee"
    dispute = next(x for x in a.actions if isinstance(x, Record) and x.kind == "dispute")
    assert dispute.data["wrong"] == "checker"
    assert any(isinstance(x, PublishCheat) and x.subject == ad(2).peer_id for x in a.actions)


def test_state_error_weighs_each_part_of_the_state_and_refuses_non_finite_states() -> None:
    params, _ = _job()
    n = SPEC.params
    b = np.ones(SPEC.state_len, np.float32)
    a = b.copy()
    a[-1] += 1.0  # the second moment's last element: one part in its own norm, not in the whole state's
    assert step_checks.state_error(params, a, b) == pytest.approx(1 / np.sqrt(n))
    assert step_checks.state_error(params, b, b) == 0.0
    a[0] = np.nan
    assert step_checks.state_error(params, a, b) == np.inf
    assert step_checks.state_error(params, b[:n], b) == np.inf
