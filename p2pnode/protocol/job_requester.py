"""The requester side of one job, across all its candidate providers: a pure state machine.

Flow: ``start`` sends a request for bids to up to K candidates; bids and declines are collected until
the bid window closes or everyone answered; the best bid by :class:`Scorer` wins the award (inputs
follow at once); progress and the result come back; the shell verifies the result and calls
``verified``, which signs the receipt. If the awarded provider fails, cancels, goes quiet for
longer than the stall timeout, or breaks the protocol, the job is **re-awarded** to the next bid
that has not expired, with no action from the user. When no acceptable bid is left and the job
has **reserves** (more candidates, in the requester's order), the next batch of them is asked
(``Step.ask``) with a fresh bid window, as long as the deadline leaves one: candidates that do not
answer (unreachable, silent, made up) cost a job a bid window, not the job. When the window closes
with no acceptable bid and no reserves, but some asked providers have not answered yet (a busy
machine answers late), the job waits for them, a window at a time until the deadline, and the
first acceptable bid wins.

An **overrun** (three times the bid's estimate plus a grace period since the award, plus the time
the inputs take to cross a slow link, ``TRANSFER_FLOOR_BPS``: the estimate is of the compute) is not evidence
of cheating: the estimate came from the requester's own measurement, and the provider may simply be
slower. While the provider's progress moves, the allowance is granted again; a provider whose
progress has not moved since the last allowance (or whose executor stopped the job at its own time
limit, ``timeout``) is re-awarded like a failed one, but named in ``overran``: the shell records no
reputation loss for it, and a caller may try again with a larger estimate. The job deadline ends
everything.

Transitions live in ``_TRANSITIONS``. Methods return a :class:`Step`: messages to send and, when a
peer broke the protocol, a ``violation`` for the shell to penalise. Misuse by our own code raises
``LocalProtocolError``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum

from nacl.signing import SigningKey

from p2pnode.errors import LocalProtocolError
from p2pnode.wire import codec, sealing
from p2pnode.wire import job as m

TRANSFER_FLOOR_BPS = 1 << 20  # the slowest link an award's inputs are given time to cross (bytes/s)


class R(Enum):
    COLLECTING = "collecting"
    RUNNING = "running"
    VERIFYING = "verifying"
    # terminal
    DONE = "done"  # result accepted, receipt sent
    REJECTED = "rejected"  # result failed verification, rejecting receipt sent
    NO_PROVIDER = "no_provider"  # nobody bid acceptably, or every awarded provider failed
    CANCELLED = "cancelled"
    EXPIRED = "expired"


TERMINAL = frozenset({R.DONE, R.REJECTED, R.NO_PROVIDER, R.CANCELLED, R.EXPIRED})

_TRANSITIONS: dict[tuple[R, str], frozenset[R]] = {
    (R.COLLECTING, "bid"): frozenset({R.COLLECTING, R.RUNNING, R.NO_PROVIDER}),
    (R.COLLECTING, "close"): frozenset({R.COLLECTING, R.RUNNING, R.NO_PROVIDER}),  # collecting: reserves asked
    (R.RUNNING, "progress"): frozenset({R.RUNNING}),
    (R.RUNNING, "result"): frozenset({R.VERIFYING}),
    # failed, cancelled, stalled: re-award, or ask the reserves
    (R.RUNNING, "lost"): frozenset({R.RUNNING, R.COLLECTING, R.NO_PROVIDER}),
    (R.VERIFYING, "verified"): frozenset({R.DONE, R.REJECTED}),
    (R.VERIFYING, "lost"): frozenset({R.RUNNING, R.COLLECTING, R.NO_PROVIDER}),  # its output cannot be fetched
}
for _s in R:
    if _s not in TERMINAL:
        _TRANSITIONS[(_s, "cancel")] = frozenset({R.CANCELLED})
        _TRANSITIONS[(_s, "deadline")] = frozenset({R.EXPIRED})


class Scorer:
    """Ranks bids, lower is better. Neutral: price share of the budget plus time share of the
    deadline. Reputation plugs in by overriding :meth:`adjust` (1.0 = no opinion)."""

    def score(self, peer: bytes, bid: m.Bid, budget: int, window_ms: float) -> float:
        base = bid.price / max(budget, 1) + bid.estimate_ms / max(window_ms, 1.0)
        return base * self.adjust(peer)

    def adjust(self, peer: bytes) -> float:
        return 1.0

    def awarded(self, peer: bytes) -> None:
        """A job was awarded to ``peer`` (a scorer that spreads work counts it)."""


@dataclass
class Step:
    send: list[tuple[bytes, m.Message]] = field(default_factory=list)
    violation: tuple[bytes, str] | None = None
    ask: list[bytes] = field(default_factory=list)  # reserves now asked: the shell opens streams to them


@dataclass
class RequesterJob:
    me: bytes
    key: SigningKey
    rfb: m.RequestForBids
    candidates: list[bytes]
    now: float
    bid_window_s: float = 2.0
    stall_s: float = 15.0
    overdue_grace_s: float = 10.0  # an awarded job overruns at 3 x its bid's estimate plus this
    scorer: Scorer = field(default_factory=Scorer)
    private_params: dict[str, object] = field(default_factory=dict)  # sealed to each awarded provider
    input_blobs: tuple[bytes, ...] = ()  # ids of the (encrypted) input blobs, in input-name order
    reserves: list[bytes] = field(default_factory=list)  # asked, a batch at a time, when nobody bids
    input_bytes: int = 0  # their size: the first allowance gives them time to cross
    state: R = R.COLLECTING
    bids: dict[bytes, m.Bid] = field(default_factory=dict)
    declines: dict[bytes, str] = field(default_factory=dict)
    failed: dict[bytes, str] = field(default_factory=dict)  # awarded providers that let us down
    overran: set[bytes] = field(default_factory=set)  # of those, the ones that only took longer than estimated
    provider: bytes | None = None
    award: m.Award | None = None
    result: m.Result | None = None
    receipt: m.Receipt | None = None
    progress: float = 0.0
    reason: str = ""
    _window_ends: float = 0.0
    _heard_at: float = 0.0
    _due: float = float("inf")
    _batch: int = 0
    _overtime: bool = False  # the bid window closed with nobody acceptable yet: the first bid wins
    _allowance: float = 0.0  # seconds an award may run before it is overdue (granted again while progress moves)
    _due_progress: float = 0.0  # the provider's progress when the current allowance began
    on_event: Callable[[str, dict[str, object]], None] | None = None

    def __post_init__(self) -> None:
        if not self.candidates:
            raise LocalProtocolError("a job needs at least one candidate provider")
        self.candidates = list(self.candidates)
        self.reserves = [p for p in dict.fromkeys(self.reserves) if p not in self.candidates]
        self._batch = len(self.candidates)
        self._window_ends = self.now + self.bid_window_s

    @property
    def job(self) -> bytes:
        return self.rfb.job

    @property
    def deadline(self) -> float:
        return self.rfb.deadline_ms / 1000.0

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL

    def _move(self, event: str, to: R) -> None:
        allowed = _TRANSITIONS.get((self.state, event))
        if allowed is None or to not in allowed:
            raise LocalProtocolError(f"cannot {event} in state {self.state.value}")
        self.state = to

    def _emit(self, what: str, **data: object) -> None:
        if self.on_event is not None:
            self.on_event(what, data)

    def start(self) -> Step:
        return Step(send=[(peer, self.rfb) for peer in self.candidates])

    # from providers ------------------------------------------------------------------------
    def receive(self, peer: bytes, msg: m.Message, now: float) -> Step:
        if self.terminal or msg.job != self.job:
            return Step(violation=None if self.terminal else (peer, "message for another job"))
        if peer not in self.candidates:
            return Step(violation=(peer, f"{msg.TYPE} from a peer that was not asked"))
        if isinstance(msg, (m.Bid, m.Decline)):
            return self._on_answer(peer, msg, now)
        if peer != self.provider:
            return Step(violation=(peer, f"{msg.TYPE} from a provider that holds no award"))
        self._heard_at = now
        if isinstance(msg, m.Progress) and self.state is R.RUNNING:
            self._move("progress", R.RUNNING)
            self.progress = msg.fraction
            self._emit("progress", fraction=msg.fraction)
            return Step()
        if isinstance(msg, m.Result) and self.state is R.RUNNING:
            if msg.body["requester"] != self.me or msg.body["provider"] != peer or msg.body["nonce"] != self.rfb.nonce:
                return self._lose(peer, "result names other peers or another request", now, violation=True)
            self._move("result", R.VERIFYING)
            self.result = msg
            self._emit("result", provider=peer)
            return Step()
        if isinstance(msg, (m.Failed, m.Cancel)) and self.state is R.RUNNING:
            code = msg.code if isinstance(msg, m.Failed) else "cancelled"
            if code == "timeout":  # its executor stopped the job at its own limit: it ran long, no more
                self.overran.add(peer)
            return self._lose(peer, f"{code}: {msg.reason}", now)
        if self.state is R.VERIFYING:
            if isinstance(msg, m.Result) and self.result is not None and msg.raw == self.result.raw:
                return Step()  # the same result again
            if isinstance(msg, m.Progress):
                return Step()  # progress that was overtaken by the result
            return Step(violation=(peer, f"{msg.TYPE} after the result"))
        return self._lose(peer, f"unexpected {msg.TYPE} while {self.state.value}", now, violation=True)

    def _on_answer(self, peer: bytes, msg: m.Bid | m.Decline, now: float) -> Step:
        if self.state is not R.COLLECTING or peer in self.bids or peer in self.declines:
            return Step()  # late or repeated answers are harmless
        violation = None
        if isinstance(msg, m.Decline):
            self.declines[peer] = msg.code
            self._emit("decline", peer=peer, code=msg.code)
        elif msg.price > self.rfb.max_price:
            self.declines[peer] = "price"
            violation = (peer, f"bid {msg.price} above the maximum {self.rfb.max_price}")
        else:
            self.bids[peer] = msg
            self._emit("bid", peer=peer, price=msg.price)
        step = Step()
        if len(self.bids) + len(self.declines) == len(self.candidates) or (self._overtime and peer in self.bids):
            step = self._close(now, "bid")
        step.violation = violation
        return step

    # decisions -----------------------------------------------------------------------------
    def _ranked(self, now: float) -> list[bytes]:
        window_ms = max(1.0, (self.deadline - now) * 1000)
        live = [p for p, b in self.bids.items() if p not in self.failed and b.expires_ms / 1000.0 > now]
        # equal scores: an order drawn from the job id, so ties do not always go to the same peer
        return sorted(live, key=lambda p: (self.scorer.score(p, self.bids[p], self.rfb.max_price, window_ms),
                                           hashlib.blake2b(self.job + p, digest_size=8).digest()))

    def _close(self, now: float, event: str) -> Step:
        ranked = self._ranked(now)
        if not ranked and self.reserves and now + self.bid_window_s < self.deadline:
            return self._ask_reserves(now, event)
        if not ranked and event == "close" and now + self.bid_window_s < self.deadline and \
                any(p not in self.bids and p not in self.declines for p in self.candidates):
            # asked, not answered yet (a busy machine answers late): wait for the first bid
            self._move(event, R.COLLECTING)
            self._overtime, self._window_ends = True, now + self.bid_window_s
            return Step()
        if not ranked:
            self._move(event, R.NO_PROVIDER)
            self.reason = "no acceptable bid" if not self.failed else "every awarded provider failed"
            self._emit("no_provider", declines=dict(self.declines), failed=dict(self.failed))
            return Step()
        self._move(event, R.RUNNING)
        winner = ranked[0]
        self.scorer.awarded(winner)
        self.provider, self.progress, self._heard_at = winner, 0.0, now
        bid = self.bids[winner]
        self._allowance = 3 * bid.estimate_ms / 1000.0 + self.overdue_grace_s
        self._due = now + self._allowance + self.input_bytes / TRANSFER_FLOOR_BPS
        self._due_progress = 0.0
        self.award = m.make_award(self.job, self.key, requester=self.me, provider=winner, nonce=self.rfb.nonce,
                                  price=bid.price, deadline_ms=self.rfb.deadline_ms)
        self._emit("award", provider=winner, price=bid.price, attempt=len(self.failed) + 1)
        sealed = sealing.seal(codec.encode(self.private_params), winner)
        return Step(send=[(winner, self.award), (winner, m.Inputs(self.job, self.input_blobs, sealed))])

    def _ask_reserves(self, now: float, event: str) -> Step:
        """No acceptable bid left: ask the next batch of reserves, with a fresh bid window."""
        self._move(event, R.COLLECTING)
        batch, self.reserves = self.reserves[:self._batch], self.reserves[self._batch:]
        self.candidates.extend(batch)
        self.provider, self.award = None, None
        self._window_ends = now + self.bid_window_s
        self._emit("reserves", peers=list(batch))
        return Step(send=[(p, self.rfb) for p in batch], ask=list(batch))

    def _lose(self, peer: bytes, why: str, now: float, *, violation: bool = False) -> Step:
        """The awarded provider is out: re-award to the next live bid, or give up."""
        self.failed[peer] = why
        self._emit("lost", provider=peer, reason=why)
        step = self._close(now, "lost")
        step.send.insert(0, (peer, m.Cancel(self.job, why[:256])))
        if violation:
            step.violation = (peer, why)
        return step

    def output_unavailable(self, why: str, now: float) -> Step:
        """The result's output could not be fetched (its provider died after sending the result,
        or no longer holds it). That proves nothing against it, but the job is not done: it is
        re-awarded to the next live bid, as if the provider had failed, and nothing is paid."""
        if self.state is not R.VERIFYING or self.provider is None:
            raise LocalProtocolError(f"no result to give up on in state {self.state.value}")
        self.result = None
        return self._lose(self.provider, why, now)

    def verified(self, accepted: bool, outcome: str) -> Step:
        """The shell checked the result; sign and send the receipt."""
        if self.state is not R.VERIFYING or self.provider is None:
            raise LocalProtocolError(f"nothing to verify in state {self.state.value}")
        self._move("verified", R.DONE if accepted else R.REJECTED)
        price = self.bids[self.provider].price if accepted else 0
        self.receipt = m.make_receipt(self.job, self.key, requester=self.me, provider=self.provider,
                                      nonce=self.rfb.nonce, accepted=accepted, outcome=outcome, paid=price)
        self._emit("done", accepted=accepted, outcome=outcome)
        return Step(send=[(self.provider, self.receipt)])

    def cancel(self, reason: str) -> Step:
        if self.terminal:
            return Step()
        self._move("cancel", R.CANCELLED)
        self.reason = reason
        targets = [self.provider] if self.provider else [p for p in self.candidates if p not in self.declines]
        return Step(send=[(p, m.Cancel(self.job, reason[:256])) for p in targets])

    def tick(self, now: float) -> Step:
        if self.terminal:
            return Step()
        if now >= self.deadline:
            self._move("deadline", R.EXPIRED)
            self.reason = "deadline passed"
            return Step(send=[(self.provider, m.Cancel(self.job, "deadline passed"))] if self.provider else [])
        if self.state is R.COLLECTING and now >= self._window_ends:
            return self._close(now, "close")
        if self.state is R.RUNNING and self.provider is not None and now - self._heard_at >= self.stall_s:
            return self._lose(self.provider, f"no word for {self.stall_s:g} s", now)
        if self.state is R.RUNNING and self.provider is not None and now >= self._due:
            if self.progress > self._due_progress:  # slower than estimated, but working: more time
                self._due, self._due_progress = now + self._allowance, self.progress
                self._emit("overrun", provider=self.provider, progress=self.progress)
                return Step()
            # no progress since the last allowance: accept-and-never-finish, or far too slow
            self.overran.add(self.provider)
            return self._lose(self.provider, "overran three times its estimate", now)
        return Step()

    def next_wakeup(self) -> float:
        """When ``tick`` next has something to do (for the shell's timer)."""
        if self.terminal:
            return float("inf")
        times = [self.deadline]
        if self.state is R.COLLECTING:
            times.append(self._window_ends)
        if self.state is R.RUNNING:
            times.extend((self._heard_at + self.stall_s, self._due))
        return min(times)
