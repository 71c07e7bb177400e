"""The verdict machine driven by hypothesis: any result, any policy, any checker, referee and
local answers, failures among them, at any pace. Whatever the draw:

* a result the check refuted is never accepted (a failed open, a referee on the checker's side,
  sampled rows that disagree here); an accepted result that a checker disputed was sided with by
  a referee;
* nobody is blamed without a referee's run that says so, and a provider whose output was merely
  unavailable is not blamed at all;
* a referee's verdict decides: the first one that sides with a run settles the dispute at once;
* every path ends, within the check's time budget, asking only peers independent of everyone asked
  before; an answer to a question that was not asked raises and changes nothing.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pnode.errors import LocalProtocolError
from p2pnode.market.selection import hosts
from p2pnode.protocol.requester_actions import (
    Action,
    OpenOutput,
    PublishCheat,
    Ran,
    Record,
    RunElsewhere,
    RunHere,
)
from p2pnode.protocol.verdict import CHECK_DEADLINE_S, MAX_REFEREES, MIN_CHECK_S, V, Verdict
from p2pnode.wire.capacity_ad import Offer

ME = b"requester"
JOB = b"J" * 16
T0 = 1_800_000_000.0
RIGHT = 0  # the honest output; any other number is a wrong one


@dataclass(frozen=True)
class Ad:
    peer_id: bytes
    addrs: tuple[str, ...]
    offers: tuple[Offer, ...] = ()


@dataclass(frozen=True)
class Result:
    raw: bytes
    body: dict[str, Any]


class Market:
    def __init__(self, pool: Sequence[Any], probability: float) -> None:
        self.ads, self.probability = pool, probability

    def pool(self) -> list[Any]:
        return list(self.ads)

    def score(self, peer: bytes) -> float:
        return 0.5

    def check_probability(self, peer: bytes) -> float:
        return self.probability


class Tokens:
    """Outputs are numbers; a row sample keeps the number (a wrong output is wrong in its rows)."""

    def same(self, params: dict[str, Any], a: Any, b: Any) -> tuple[bool, str]:
        return a == b, "equal"

    def rows(self, params: dict[str, Any], inputs: Any, output: Any, idx: Any) -> tuple[dict[str, Any], Any, Any]:
        return dict(params, rows=len(idx)), inputs, output

    def teacher(self, params: dict[str, Any], inputs: Any, output: Any,
                idx: Any) -> tuple[dict[str, Any], Any, Any]:
        return dict(params, prompts=len(idx), mode="score"), inputs, output


def ad(i: int, host: int, volunteer: bool = False) -> Ad:
    offers = (Offer("infer", "numpy", 1, "check"),) if volunteer else ()
    return Ad(bytes([i]) * 8, (f"/ip4/10.0.0.{host}/tcp/4001",), offers)


pools = st.lists(st.tuples(st.integers(1, 6), st.booleans()), max_size=7).map(
    lambda xs: [ad(10 + i, host, vol) for i, (host, vol) in enumerate(xs)])
answers = st.sampled_from([None, RIGHT, RIGHT, 1, 2, 3])  # a run that failed, or the output it gave


def _wrong_answers(v: Verdict) -> list[Any]:
    """Every answer that the machine did not ask for, as calls."""
    calls = {OpenOutput: lambda: v.opened(True, "", RIGHT, "", T0),
             RunElsewhere: lambda: v.ran(None, T0), RunHere: lambda: v.ran_here(None, "", T0)}
    asked = type(v.pending) if v.pending is not None else None
    out = [call for kind, call in calls.items() if kind is not asked]
    return out if asked is OpenOutput else [*out, lambda: v.unavailable("gone", T0)]


@settings(max_examples=400)
@given(data=st.data(), policy=st.sampled_from(["rerun", "rerun", "rows", "rows", "tokens", "freivalds", "none"]),
       purpose=st.sampled_from(["job", "job", "job", "check"]), provider_out=st.sampled_from([RIGHT, RIGHT, 1, 2]),
       provider_host=st.integers(1, 6), pool=pools, probability=st.sampled_from([0.0, 0.5, 1.0, 1.0]),
       seed=st.integers(0, 2**32))
def test_the_verdict_never_accepts_what_a_check_refuted_and_always_ends(
        data: st.DataObject, policy: str, purpose: str, provider_out: int, provider_host: int, pool: list[Ad],
        probability: float, seed: int) -> None:
    provider = ad(1, provider_host)
    result = Result(b"provider's result", {"provider": provider.peer_id})
    params = {"rows": 1000} if policy == "rows" else {"prompts": 1000} if policy == "tokens" else {"seed": 1}
    v = Verdict(ME, JOB, "infer", policy, purpose, provider, result, params, None,  # type: ignore[arg-type]
                Market([provider, *pool], probability), Tokens(), random.Random(seed))
    now = T0
    actions: list[Action] = list(v.start())
    runs: list[tuple[RunElsewhere, Any, float]] = []  # each run elsewhere asked, its answer, when asked
    here: list[Any] = []
    opened_ok: bool | None = None
    check_started: float | None = None
    for _ in range(4 + MAX_REFEREES):
        if v.final:
            break
        q = v.pending
        assert q is not None, f"{v.state} waits on nothing"
        for wrong in _wrong_answers(v):  # h2's rule: an answer nobody asked for raises, changes nothing
            before = (v.state, v.pending)
            with pytest.raises(LocalProtocolError):
                wrong()
            assert (v.state, v.pending) == before
        asked_at = now  # the question was asked when the last answer came
        now += data.draw(st.sampled_from([0.0, 1.0, 15.0, 39.0]), label="delay")
        if isinstance(q, OpenOutput):
            if data.draw(st.sampled_from([True, True, True, False]), label="available"):
                opened_ok = data.draw(st.sampled_from([True, True, True, False]), label="ok")
                actions += v.opened(opened_ok, "opened", provider_out, "digest" if not opened_ok else "", now)
                check_started = now
            else:
                actions += v.unavailable("gone", now)
        elif isinstance(q, RunElsewhere):
            answer = data.draw(answers, label=q.role)
            runs.append((q, answer, asked_at))
            actions += v.ran(None if answer is None else Ran(answer, b"result of " + q.ad.peer_id, q.ad.peer_id), now)
        else:
            assert isinstance(q, RunHere)
            answer = data.draw(answers, label="here")
            here.append(answer)
            actions += v.ran_here(answer, "no runtime", now)
    # every path ends, with nothing left to answer
    assert v.final and v.pending is None, v.state
    questions = [a for a in actions if isinstance(a, (OpenOutput, RunElsewhere, RunHere))]
    assert len(questions) == 1 + len(runs) + len(here)
    disputes = [a.data for a in actions if isinstance(a, Record) and a.kind == "dispute"]
    cheats = [a for a in actions if isinstance(a, PublishCheat)]
    if v.state is V.UNAVAILABLE:  # merely unavailable: nobody blamed, nothing settled
        assert v.settled is None and not disputes and not cheats and opened_ok is None
        return
    s = v.settled
    assert s is not None
    checker_out = runs[0][1] if runs and runs[0][0].role == "checker" else None
    # a refuted result is never accepted
    if opened_ok is False:
        assert not s.accepted and not runs and not here
    if checker_out is not None and checker_out != provider_out:
        assert not s.accepted or (disputes and disputes[-1]["wrong"] == "checker")
    if here and here[-1] is not None and here[-1] != provider_out:
        assert not s.accepted
    # a referee's verdict decides: the first that sides with a run settles it, and nothing follows
    for i, d in enumerate(disputes):
        if d["wrong"] != "inconclusive":
            assert i == len(disputes) - 1 and s.accepted == (d["wrong"] == "checker") and s.checked
    # blame only on a referee's run that agrees with the checker against the provider
    referee_outs = [answer for q, answer, _ in runs if q.role == "referee"]
    for c in cheats:
        if c.subject == provider.peer_id:
            assert any(r is not None and r == checker_out != provider_out for r in referee_outs)
            assert not s.accepted
        else:
            assert c.subject == runs[0][0].ad.peer_id and s.accepted
    # without a decided dispute, a failed open or rows that disagree here, nobody is marked
    if not s.accepted and s.checked:
        assert opened_ok is False or (disputes and disputes[-1]["wrong"] == "provider") or \
            (here and here[-1] is not None)
    # runs are asked of independent peers, within the check's time
    asked = [provider]
    for q, _, at in runs:
        assert q.ad.peer_id not in {a.peer_id for a in asked} | {ME}
        assert not hosts(q.ad) & set().union(*(hosts(a) for a in asked))  # type: ignore[arg-type]
        assert check_started is not None and MIN_CHECK_S <= q.deadline_s
        assert at - check_started + q.deadline_s <= CHECK_DEADLINE_S + 1e-9
        asked.append(q.ad)
    assert len([q for q, _, _ in runs if q.role == "referee"]) <= MAX_REFEREES
    # only a job's result is checked by others, and only by the policies that check
    if runs or here:
        assert purpose == "job" and policy in ("rerun", "rows", "tokens")


def test_a_dispute_with_less_than_the_least_time_left_asks_no_referee() -> None:
    provider, checker, referee = ad(1, 1), ad(2, 2), ad(3, 3)
    result = Result(b"provider's result", {"provider": provider.peer_id})
    v = Verdict(ME, JOB, "infer", "rerun", "job", provider, result, {"seed": 1}, None,  # type: ignore[arg-type]
                Market([provider, checker, referee], 1.0), Tokens(), random.Random(1))
    v.start()
    (q,) = v.opened(True, "opened", RIGHT, "", T0)
    assert isinstance(q, RunElsewhere) and q.ad == checker and q.deadline_s == CHECK_DEADLINE_S
    late = T0 + CHECK_DEADLINE_S - MIN_CHECK_S + 0.5  # the checker disagrees with 1.5 s left
    assert v.ran(Ran(1, b"checker's result", b"K" * 16), late) == []
    assert v.settled is not None and not v.settled.accepted and not v.settled.checked  # nobody marked


def test_a_generation_waits_for_a_teacher_forced_pass_and_a_referee_decides_against_it() -> None:
    provider, checker, referee = ad(1, 1), ad(2, 2), ad(3, 3)
    result = Result(b"provider's result", {"provider": provider.peer_id})
    v = Verdict(ME, JOB, "generate", "tokens", "job", provider, result, {"prompts": 500, "mode": "generate"},
                None, Market([provider, checker, referee], 1.0), Tokens(), random.Random(1))  # type: ignore[arg-type]
    assert v.start() == [OpenOutput(result, "tokens")]  # type: ignore[arg-type]
    [q] = v.opened(True, "opened", 7, "", T0)
    assert v.state is V.FORCING and isinstance(q, RunElsewhere) and q.ad is checker
    assert q.params == {"prompts": 90, "mode": "score"}  # sampled prompts, one forward pass each
    [r] = v.ran(Ran(RIGHT, b"checker's result", b"c"), T0 + 1)
    assert v.state is V.REFEREEING and isinstance(r, RunElsewhere) and r.ad is referee and r.params == q.params
    actions = v.ran(Ran(RIGHT, b"referee's result", b"r"), T0 + 2)
    assert v.settled is not None and not v.settled.accepted and v.settled.checked == "tokens"
    assert any(isinstance(a, PublishCheat) and a.subject == provider.peer_id for a in actions)
