"""The requester's verdict on one result: a pure state machine (``specs/verification.md``).

Once the awarded provider's signed result is in, everything the requester decides about it is
here, and nowhere else: the node's services and the simulator both drive this machine, carrying
out the :mod:`~p2pnode.protocol.requester_actions` it returns and telling it what came back.

==============  ================================================================================
state           waiting for
==============  ================================================================================
``OPENING``     the output fetched and opened (:class:`OpenOutput`): its digest against the signed
                one and, by the job's policy, Freivalds' product check or the row commitment
``CHECKING``    an independent checker's run of the job, or of a sample of its rows
                (:class:`RunElsewhere`, role ``checker``)
``FORCING``     an independent checker's teacher-forced pass over sampled prompts of a generation
                and the tokens the provider committed (:class:`RunElsewhere`, role ``checker``)
``HERE``        sampled rows or prompts and no checker (or none that completed): this node's own
                run of them (:class:`RunHere`)
``STATE``       a training result's step check: the provider's committed state before the step
                to re-run (:class:`OpenState`), for the checker or, after a bisection, the referee;
                between runs on other kernels, the states each side committed to after the span,
                to compare within the tolerance (``protocol/step_checks.py``)
``REFEREEING``  the checker disagreed: a referee's run, independent of everyone asked before; one
                that agrees with neither run, or fails, makes way for the next (``MAX_REFEREES``)
``SETTLED``     final: :attr:`Verdict.settled` says accepted or not, what to say, what was checked
``UNAVAILABLE`` final: the output could not be fetched (its provider is gone): that proves nothing
                against the provider; the job is re-awarded and nothing is paid
==============  ================================================================================

The rules that make it safe to trust, each a property its tests check with hypothesis:

* a result the check refuted is never accepted: a failed digest, product or commitment check, a
  referee that sides with the checker, sampled rows that disagree with this node's own run;
* a referee's verdict decides: it sides with one run against the other, or, agreeing with
  neither, hands over to the next referee; when none is left the dispute is **inconclusive**:
  not paid, but with nothing checked (``checked`` empty) nobody is marked, so a lying checker and
  a lying referee cannot frame an honest provider;
* an output that is merely unavailable blames nobody;
* every path ends, within ``CHECK_DEADLINE_S`` of the check's start: nobody more is asked with
  less than ``MIN_CHECK_S`` left.

**A new kind of check is a new entry of** ``_CHECKS`` (the policy that starts it) and, when it
waits on something new, a new state with its rows in ``_TRANSITIONS`` and one answering method:
the teacher-forced check of generated text (policy ``tokens``) samples prompts as ``_rows``
samples rows, and waits in ``FORCING`` for a checker's one forward pass over the prompts and the
provider's committed tokens (``Outputs.teacher`` makes that work; ``Outputs.same`` compares the
tokens and activation fingerprints, ``verify/tokens.py``); a bisection over training steps is a
state after ``REFEREEING`` whose every answer halves the disputed range of steps until a referee
re-runs one step. Written once here, they run on the node and in the simulator alike.

Misuse by our own code (an answer to a question that was not asked) raises
:class:`~p2pnode.errors.LocalProtocolError` and changes nothing.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Any, Protocol

from p2pnode.errors import LocalProtocolError
from p2pnode.market.selection import independent
from p2pnode.protocol import step_checks
from p2pnode.protocol.requester_actions import (
    Action,
    OpenOutput,
    OpenState,
    PublishCheat,
    Question,
    Ran,
    Record,
    RunElsewhere,
    RunHere,
    Settle,
)
from p2pnode.verify import rows
from p2pnode.wire import job as m
from p2pnode.wire.peer_id import to_base58

CHECK_DEADLINE_S = 40.0  # a whole check, referees included: within the provider's receipt timeout (60 s)
MIN_CHECK_S = 2.0  # less time than this left: ask no one more
MAX_REFEREES = 2  # referees asked, one after another, while none agrees with either run


class V(Enum):
    OPENING = "opening"
    CHECKING = "checking"
    FORCING = "forcing"
    HERE = "here"
    REFEREEING = "refereeing"
    STATE = "state"
    # final
    SETTLED = "settled"
    UNAVAILABLE = "unavailable"


FINAL = frozenset({V.SETTLED, V.UNAVAILABLE})

_TRANSITIONS: dict[tuple[V, str], frozenset[V]] = {
    (V.OPENING, "opened"): frozenset({V.SETTLED, V.CHECKING, V.HERE, V.STATE}),  # HERE: rows, no checker at all
    (V.OPENING, "unavailable"): frozenset({V.UNAVAILABLE}),
    (V.OPENING, "forced"): frozenset({V.FORCING, V.HERE}),
    (V.CHECKING, "ran"): frozenset({V.SETTLED, V.HERE, V.REFEREEING, V.STATE}),
    (V.FORCING, "ran"): frozenset({V.SETTLED, V.HERE, V.REFEREEING}),
    (V.STATE, "state_opened"): frozenset({V.CHECKING, V.REFEREEING, V.SETTLED, V.UNAVAILABLE, V.STATE}),
    (V.REFEREEING, "ran"): frozenset({V.SETTLED, V.REFEREEING, V.STATE}),
    (V.HERE, "ran_here"): frozenset({V.SETTLED}),
}

_ASKED_BY = {"opened": OpenOutput, "forced": OpenOutput, "unavailable": OpenOutput, "ran": RunElsewhere,
             "ran_here": RunHere, "state_opened": OpenState}


class Outputs(Protocol):
    """How the driver's outputs compare (opaque to the machine): the node's are arrays, compared
    by the workload's rule (``verify/check.py``); the simulator's are digests."""

    def same(self, params: dict[str, Any], a: Any, b: Any) -> tuple[bool, str]:
        """Whether ``a`` and ``b`` agree as outputs of ``params``, and by which rule."""

    def rows(self, params: dict[str, Any], inputs: Any, output: Any,
             idx: Sequence[int]) -> tuple[dict[str, Any], Any, Any]:
        """The job restricted to rows ``idx``: its parameters, inputs and the provider's output rows."""

    def teacher(self, params: dict[str, Any], inputs: Any, output: Any,
                idx: Sequence[int]) -> tuple[dict[str, Any], Any, Any]:
        """A teacher-forced pass over prompts ``idx`` of a generation and the tokens the provider
        committed for them: its parameters, inputs, and the provider's rows of those prompts."""


class Checkers(Protocol):
    """Who may check: the requester's view of the market for the job's workload (pure lookups)."""

    def pool(self) -> Sequence[Any]:
        """Ads of providers of the workload, in the requester's order."""

    def score(self, peer: bytes) -> float:
        """The requester's reputation score of ``peer``."""

    def check_probability(self, peer: bytes) -> float:
        """The probability of re-running a result of ``peer`` (``verify/sampling.py``)."""


@dataclass(frozen=True)
class Work:
    """What a check runs again: the job's parameters and inputs (a row check: its sample's) and
    the provider's output for them."""

    params: dict[str, Any]
    inputs: Any
    output: Any


@dataclass
class Verdict:
    me: bytes
    job: bytes
    workload: str
    policy: str  # freivalds, rows, rerun or none (``verify/sampling.py``)
    purpose: str  # job, check or calibration: only a job's result is checked by others
    provider: Any  # the provider's capacity ad
    result: m.Result
    params: dict[str, Any]
    inputs: Any
    checkers: Checkers
    outputs: Outputs
    rng: random.Random
    on_event: Callable[[str, dict[str, object]], None] | None = None
    state: V = V.OPENING
    pending: Question | None = None  # the question the machine waits on
    settled: Settle | None = None
    reason: str = ""  # why the output was unavailable
    output: Any = None  # the provider's output, once opened
    _opened: tuple[str, str] = ("", "")  # what opening it found: (detail, method)
    _method: str = ""  # the check under way: rerun or rows
    _work: Work | None = None
    _until: float = 0.0
    _checker: Any = None
    _checked: Ran | None = None  # the checker's run, when it disagreed
    _asked: list[Any] = field(default_factory=list)
    _referees: int = 0
    step_span: int = 1  # a train result: steps re-run from each sampled one (a longer span is bisected)
    _steps: list[int] = field(default_factory=list)  # steps still to check (a train result)
    _disputed: Work | None = None  # the one step a bisection found, waiting for its state
    _opening: str = ""  # other kernels: whose state after the span is being opened (provider, checker, referee)
    _after: dict[str, Any] = field(default_factory=dict)  # ... and those opened, by whose
    _ran: Ran | None = None  # the run (checker's or referee's) whose state is being opened
    _tolerated: int = 0  # sampled spans that passed within the tolerance

    @property
    def final(self) -> bool:
        return self.state in FINAL

    def start(self) -> list[Action]:
        check = "freivalds" if self.policy == "freivalds" and self.workload == "matmul" else \
            self.policy if self.policy in ("rows", "tokens") else ""
        self.pending = OpenOutput(self.result, check)
        return [self.pending]

    # answers -------------------------------------------------------------------------------
    def opened(self, ok: bool, detail: str, output: Any, method: str, now: float) -> list[Action]:
        """The output is open: ``ok`` and ``detail`` from the digest and the check named in the
        question; ``method`` names the check whose verdict ``ok`` is."""
        self._expect("opened")
        self.output, self._opened = output, (detail, method)
        if not ok or output is None or self.purpose != "job":
            return self._settle("opened", ok and output is not None, detail, method)
        start = _CHECKS.get(self.policy)
        return start(self, now) if start is not None else self._settle("opened", True, detail, method)

    def unavailable(self, why: str, now: float) -> list[Action]:
        """The output could not be fetched: the result is given up, its provider not blamed."""
        self._expect("unavailable")
        self._move("unavailable", V.UNAVAILABLE)
        self.reason, self.pending = why, None
        return []

    def ran(self, run: Ran | None, now: float) -> list[Action]:
        """The checker or referee asked ran the work (``None``: it did not complete)."""
        self._expect("ran")
        if self.state is V.CHECKING and self._method == "steps":
            return self._step_ran(run, now)
        if self.state in (V.CHECKING, V.FORCING):
            return self._checker_ran(run, now)
        return self._referee_ran(run, now)

    def ran_here(self, output: Any, why: str, now: float) -> list[Action]:
        """This node's own run of the sampled rows (``None``, with ``why``: it could not run)."""
        self._expect("ran_here")
        work = self._work
        assert work is not None
        n = _count(work.params)
        if output is None:
            return self._settle("ran_here", True, f"accepted (could not check here: {why})", self._method)
        what = _sampled(self._method)
        if self.outputs.same(work.params, work.output, output)[0]:
            return self._settle("ran_here", True, f"verified: {n} sampled {what} agree with a "
                                f"{_pass(self._method)} here", self._method)
        return self._settle("ran_here", False, f"wrong: sampled {what} disagree with a {_pass(self._method)} here",
                            self._method)

    # checks --------------------------------------------------------------------------------
    def _rerun(self, now: float) -> list[Action]:
        """Re-run the whole job on an independent checker, with the probability the provider's
        record earns it."""
        if self.rng.random() >= self.checkers.check_probability(self.provider.peer_id):
            return self._settle("opened", True, *self._opened)
        return self._check("rerun", Work(self.params, self.inputs, self.output), now)

    def _rows(self, now: float) -> list[Action]:
        """Re-run a sample of the rows that the provider could not predict: it signed its row
        commitment before the sample was drawn (``verify/rows.py`` has the maths)."""
        n = int(self.params["rows"])
        idx = rows.sample(n, rows.sample_size(), self.rng)
        params, inputs, output = self.outputs.rows(self.params, self.inputs, self.output, idx)
        self._emit("sample", rows=len(idx), of=n)
        return self._check("rows", Work(params, inputs, output), now)

    def _tokens(self, now: float) -> list[Action]:
        """Check a generation by sampled prompts: the provider signed its rows (each prompt's
        tokens and activation fingerprints) before the sample was drawn, and a checker's one
        teacher-forced pass over each sampled prompt and its committed tokens must agree
        (``verify/tokens.py`` has the rule, ``specs/verification.md`` the maths)."""
        n = int(self.params["prompts"])
        idx = rows.sample(n, rows.sample_size(), self.rng)
        params, inputs, output = self.outputs.teacher(self.params, self.inputs, self.output, idx)
        self._emit("sample", rows=len(idx), of=n)
        return self._check("tokens", Work(params, inputs, output), now, event="forced", state=V.FORCING)

    def _check(self, method: str, work: Work, now: float, *, event: str = "opened",
               state: V = V.CHECKING) -> list[Action]:
        self._method, self._work, self._until = method, work, now + CHECK_DEADLINE_S
        checker = self._independent([self.provider])
        if checker is None:
            if method in ("rows", "tokens"):
                return self._ask(event, V.HERE, RunHere(work.params, work.inputs))
            return self._settle("opened", True, "accepted (no independent checker)", "")
        self._checker = checker
        self._emit("check", checker=checker.peer_id, method=method)
        return self._ask(event, state, RunElsewhere(checker, work.params, work.inputs, "checker", self._until - now))

    def _checker_ran(self, run: Ran | None, now: float) -> list[Action]:
        work = self._work
        assert work is not None
        if run is None:
            if self._method in ("rows", "tokens"):
                return self._ask("ran", V.HERE, RunHere(work.params, work.inputs))
            return self._settle("ran", True, "accepted (the check did not complete)", "")
        same, how = self.outputs.same(work.params, work.output, run.output)
        if same:
            by = to_base58(self._checker.peer_id)[-6:]
            text = f"verified: {_count(work.params)} sampled {_sampled(self._method)} agree with {by}'s " \
                f"{_pass(self._method)}" if self._method in ("rows", "tokens") else f"verified: {how} by {by}"
            return self._settle("ran", True, text, self._method)
        self._checked, self._asked = run, [self.provider, self._checker]
        return self._next_referee(now)

    def _next_referee(self, now: float, event: str = "ran") -> list[Action]:
        work = self._work
        assert work is not None
        while self._referees < MAX_REFEREES:
            referee = self._independent(self._asked)
            self._emit("dispute", checker=self._checker.peer_id, referee=referee.peer_id if referee else b"")
            if referee is None:
                break
            self._referees += 1
            self._asked.append(referee)
            if self._until - now >= MIN_CHECK_S:
                return self._ask(event, V.REFEREEING, RunElsewhere(referee, work.params, work.inputs, "referee",
                                                                   self._until - now))
        # Nobody settled it: not paid, but nobody is marked either, since a checker and a referee
        # that both lie (or both fail) must not be able to frame an honest provider.
        return self._settle(event, False, "disputed: no referee agrees with either run", "")

    def _referee_ran(self, run: Ran | None, now: float) -> list[Action]:
        work, c = self._work, self._checked
        assert work is not None and c is not None
        if run is None:
            return self._next_referee(now)
        provider_right = self.outputs.same(work.params, work.output, run.output)[0]
        checker_right = self.outputs.same(work.params, c.output, run.output)[0]
        theirs = run.output.extra.get("commits") if self._method == "steps" else None
        if not (provider_right or checker_right) and "provider" in self._after and isinstance(theirs, list) \
                and theirs and isinstance(theirs[-1], bytes):  # other kernels: compare its state after the span
            self._ran = run
            return self._open_after("ran", "referee", self._asked[-1].peer_id, theirs[-1])
        return self._referee_decides("ran", provider_right, checker_right, run, now)

    def _referee_decides(self, event: str, provider_right: bool, checker_right: bool, run: Ran,
                         now: float) -> list[Action]:
        c = self._checked
        assert c is not None
        wrong = "provider" if checker_right and not provider_right else \
            "checker" if provider_right and not checker_right else "inconclusive"
        evidence = (self.result.raw, c.result_raw, run.result_raw)
        out: list[Action] = [Record("dispute", {"job": self.job, "checker": self._checker.peer_id,
                                                "referee": self._asked[-1].peer_id, "wrong": wrong,
                                                "results": list(evidence)}, self.provider.peer_id)]
        self._emit("settled", wrong=wrong)
        if wrong == "provider":
            out.append(PublishCheat(self.provider.peer_id, self.job, evidence))
            return out + self._settle(event, False, "wrong: the checker and the referee agree against it",
                                      self._method)
        if wrong == "checker":
            out.append(PublishCheat(self._checker.peer_id, c.job, (c.result_raw, self.result.raw, run.result_raw)))
            return out + self._settle(event, True, "verified by a referee (the checker was wrong)", self._method)
        return out + self._next_referee(now, event)

    # training steps (``protocol/step_checks.py``) -------------------------------------------
    def state_opened(self, data: bytes | None, why: str, now: float) -> list[Action]:
        """The provider's committed state asked for (``None``, with ``why``: it could not be had)."""
        self._expect("state_opened")
        if self._opening:
            return self._after_opened(data, why, now)
        if data is None:  # like an unavailable output: re-awarded, nobody blamed
            self._move("state_opened", V.UNAVAILABLE)
            self.reason, self.pending = f"a committed state is unavailable: {why}", None
            return []
        try:
            state = step_checks.state_of(self.params, data)
        except ValueError as exc:
            return self._settle("state_opened", False, f"wrong: {exc}", "steps")
        if self._disputed is not None:  # the state both agree on, before the disputed step
            self._work = replace(self._disputed, inputs=dict(self._disputed.inputs, state=state))
            return self._next_referee(now, "state_opened")
        return self._run_step("state_opened", state, now)

    def _check_steps(self, now: float) -> list[Action]:
        """A train result: sound, then sampled steps re-run by one independent checker."""
        why = step_checks.unsound(self.params, self.inputs, self.output)
        if why:
            return self._settle("opened", False, f"wrong: {why}", "steps")
        self._method, self._until = "steps", now + CHECK_DEADLINE_S
        checker = self._independent([self.provider])
        if checker is None:
            return self._settle("opened", True, "accepted (no independent checker)", "")
        self._checker = checker
        steps = int(self.params["steps"])
        self._steps = step_checks.plan(steps, step_checks.checks(steps), self.rng)
        self._emit("check", checker=checker.peer_id, method="steps", steps=list(self._steps))
        return self._next_step("opened", now)

    def _next_step(self, event: str, now: float) -> list[Action]:
        if not self._steps:
            by = to_base58(self._checker.peer_id)[-6:]
            within = f" ({self._tolerated} on other kernels, within the tolerance)" if self._tolerated else ""
            return self._settle(event, True, f"verified: sampled steps agree with {by}'s re-runs{within}", "steps")
        if self._until - now < MIN_CHECK_S:
            return self._settle(event, True, "accepted (the check ran out of time)", "")
        t = self._steps[0]
        if t == 1:
            return self._run_step(event, self.inputs["state"], now)
        return self._ask(event, V.STATE, OpenState(self.provider.peer_id, self.output.extra["commits"][t - 2]))

    def _run_step(self, event: str, state: Any, now: float) -> list[Action]:
        params, inputs, expected = step_checks.step_work(self.params, self.inputs, self.output, self._steps[0], state,
                                                         self.step_span)
        self._work = Work(params, inputs, expected)
        return self._ask(event, V.CHECKING, RunElsewhere(self._checker, params, inputs, "checker", self._until - now))

    def _step_ran(self, run: Ran | None, now: float) -> list[Action]:
        work = self._work
        assert work is not None
        if run is None:
            return self._settle("ran", True, "accepted (the check did not complete)", "")
        if self.outputs.same(work.params, work.output, run.output)[0]:
            self._steps.pop(0)
            return self._next_step("ran", now)
        mine = work.output.extra["commits"]
        theirs = run.output.extra.get("commits")
        self._after = {}
        if step_checks.tolerant(self.output, run.output) and isinstance(theirs, list) and len(theirs) == len(mine) \
                and isinstance(theirs[-1], bytes):  # other kernels: compare the states after the span
            self._ran = run
            return self._open_after("ran", "provider", self.provider.peer_id, mine[-1])
        return self._step_disputed("ran", run, now)

    def _step_disputed(self, event: str, run: Ran, now: float) -> list[Action]:
        """The checker's run of the sampled span parts from the provider's: a referee decides."""
        work = self._work
        assert work is not None
        if "provider" in self._after:  # other kernels part at every step: the referee re-runs the whole span
            self._checked, self._asked = run, [self.provider, self._checker]
            return self._next_referee(now, event)
        # they part: bisect the span to the first step where they do, which a referee re-runs
        mine = work.output.extra["commits"]
        theirs = run.output.extra.get("commits")
        d, probes = step_checks.first_divergence(mine, theirs if isinstance(theirs, list) else [])
        d = min(d, len(mine) - 1)  # the same commitments, other weights: the last step
        t, last = self._steps[0] + d, d == len(mine) - 1 and "weights" in work.output.arrays
        self._emit("bisect", step=t, probes=probes)
        one = dict(work.params, first=int(self.params["first"]) + t - 1, steps=1)
        self._checked = Ran(step_checks.one_step(run.output, d, last), run.result_raw, run.job)
        self._asked = [self.provider, self._checker]
        disputed = Work(one, work.inputs, step_checks.one_step(work.output, d, last))
        if d == 0:
            self._work = disputed
            return self._next_referee(now, event)
        self._disputed = disputed
        return self._ask(event, V.STATE, OpenState(self.provider.peer_id, self.output.extra["commits"][t - 2]))

    # other kernels: states compared within the tolerance -----------------------------------
    def _open_after(self, event: str, whose: str, peer: bytes, blob: bytes) -> list[Action]:
        self._opening = whose
        return self._ask(event, V.STATE, OpenState(peer, blob))

    def _after_opened(self, data: bytes | None, why: str, now: float) -> list[Action]:
        """A state after the sampled span, opened: the provider's, then the checker's, compared
        within the tolerance; or, in a dispute, the referee's, compared with each side's."""
        whose, self._opening = self._opening, ""
        work, ran = self._work, self._ran
        assert work is not None and ran is not None
        state = None
        if data is not None:
            try:
                state = step_checks.state_of(self.params, data)
            except ValueError:
                state = None
        if whose == "provider":
            if data is None:  # like an unavailable output: re-awarded, nobody blamed
                self._move("state_opened", V.UNAVAILABLE)
                self.reason, self.pending = f"a committed state is unavailable: {why}", None
                return []
            if state is None:
                return self._settle("state_opened", False, "wrong: a committed state is not one of this model's",
                                    "steps")
            self._after["provider"] = state
            return self._open_after("state_opened", "checker", self._checker.peer_id,
                                    ran.output.extra["commits"][-1])
        span = int(work.params["steps"])
        tol = step_checks.tolerance(self.params, span)
        if whose == "checker":
            if state is None:  # a checker that does not serve what it committed to decides nothing
                return self._step_disputed("state_opened", ran, now)
            self._after["checker"] = state
            err = step_checks.state_error(self.params, self._after["provider"], state)
            if err <= tol:
                self._tolerated += 1
                self._emit("tolerated", step=self._steps[0], error=err, tolerance=tol)
                self._steps.pop(0)
                return self._next_step("state_opened", now)
            self._emit("beyond_tolerance", step=self._steps[0], error=err, tolerance=tol)
            return self._step_disputed("state_opened", ran, now)
        # the referee's: it sides with whichever state is within the tolerance of its own
        if state is None:
            return self._next_referee(now, "state_opened")
        c = self._checked
        assert c is not None
        provider_right = self._agrees(self.output, ran, state, self._after["provider"], tol)
        checker_right = self._agrees(c.output, ran, state, self._after.get("checker"), tol)
        return self._referee_decides("state_opened", provider_right, checker_right, ran, now)

    def _agrees(self, side: Any, referee: Ran, state: Any, theirs: Any, tol: float) -> bool:
        """A side's state after the span agrees with the referee's: bit for bit, or within the
        tolerance where their kernels differ."""
        if theirs is None:
            return False
        if not step_checks.tolerant(side, referee.output):
            return bool(step_checks.state_error(self.params, theirs, state) == 0.0)
        return step_checks.state_error(self.params, theirs, state) <= tol

    # moves ---------------------------------------------------------------------------------
    def _independent(self, exclude: Sequence[Any]) -> Any | None:
        return independent(self.checkers.pool(), self.workload, exclude, self.me, self.checkers.score)

    def _expect(self, answer: str) -> None:
        if not isinstance(self.pending, _ASKED_BY[answer]):
            asked = type(self.pending).__name__ if self.pending is not None else "nothing"
            raise LocalProtocolError(f"cannot take {answer} in state {self.state.value} (asked: {asked})")

    def _move(self, event: str, to: V) -> None:
        allowed = _TRANSITIONS.get((self.state, event))
        if allowed is None or to not in allowed:
            raise LocalProtocolError(f"cannot {event} in state {self.state.value}")
        self.state = to

    def _ask(self, event: str, to: V, question: Question) -> list[Action]:
        self._move(event, to)
        self.pending = question
        return [question]

    def _settle(self, event: str, accepted: bool, outcome: str, checked: str) -> list[Action]:
        self._move(event, V.SETTLED)
        self.settled, self.pending = Settle(accepted, outcome, checked), None
        return []

    def _emit(self, what: str, **data: object) -> None:
        if self.on_event is not None:
            self.on_event(what, data)


def _count(params: dict[str, Any]) -> int:
    return int(params.get("rows", params.get("prompts", 0)))


def _sampled(method: str) -> str:
    return "prompts" if method == "tokens" else "rows"


def _pass(method: str) -> str:
    return "teacher-forced pass" if method == "tokens" else "re-run"


_CHECKS: dict[str, Callable[[Verdict, float], list[Action]]] = {
    "rerun": Verdict._rerun,
    "rows": Verdict._rows,
    "tokens": Verdict._tokens,
    "steps": Verdict._check_steps,
}
"""Policy -> how the check of an opened, sound output starts. A policy not here (freivalds, none)
settles on what opening the output found."""
