"""The provider side of one job negotiation, as a pure state machine (h11 style).

Everything that affects the state lives in ``_TRANSITIONS``: (state, event) -> next state. Methods
check guards, move along the table and return the messages to send; the trio shell carries them,
runs the executor and calls :meth:`ProviderJob.tick` with the time. Any event the table does not
allow raises ``LocalProtocolError`` (our bug) or ``RemoteProtocolError`` (the peer's), and a remote
one also moves the job to ``ERROR``, a terminal state. Every non-terminal state has a deadline, so
``tick`` always ends a job: no job stays open after its deadline.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from nacl.signing import SigningKey

from p2pnode.errors import LocalProtocolError, PeerError, RemoteProtocolError
from p2pnode.wire import codec, sealing
from p2pnode.wire import job as m


class P(Enum):
    OFFERED = "offered"  # got a request for bids, deciding
    BID_SENT = "bid_sent"
    AWARDED = "awarded"  # waiting for inputs
    RUNNING = "running"
    RESULT_SENT = "result_sent"  # waiting for the receipt
    # terminal
    DONE = "done"  # receipt received
    UNCONFIRMED = "unconfirmed"  # result sent, no receipt before the deadline
    DECLINED = "declined"
    NOT_AWARDED = "not_awarded"  # our bid expired
    CANCELLED = "cancelled"
    FAILED = "failed"
    EXPIRED = "expired"
    ERROR = "error"


TERMINAL = frozenset({P.DONE, P.UNCONFIRMED, P.DECLINED, P.NOT_AWARDED, P.CANCELLED, P.FAILED, P.EXPIRED, P.ERROR})

_TRANSITIONS: dict[tuple[P, str], P] = {
    (P.OFFERED, "bid"): P.BID_SENT,
    (P.OFFERED, "decline"): P.DECLINED,
    (P.BID_SENT, "recv_award"): P.AWARDED,
    (P.AWARDED, "recv_inputs"): P.RUNNING,
    (P.RUNNING, "progress"): P.RUNNING,
    (P.RUNNING, "done"): P.RESULT_SENT,
    (P.RUNNING, "failed"): P.FAILED,
    (P.RESULT_SENT, "recv_receipt"): P.DONE,
}
for _s in P:
    if _s not in TERMINAL:
        _TRANSITIONS[(_s, "recv_cancel")] = P.CANCELLED
        _TRANSITIONS[(_s, "cancel")] = P.CANCELLED
        _TRANSITIONS[(_s, "abort")] = P.ERROR  # the shell saw the peer break the stream's rules

# How long a state may last (seconds) before tick() ends the job, unless a deadline below is
# earlier: bids live until their expiry; awards and running jobs until the job's deadline.
INPUT_TIMEOUT_S = 30.0
RECEIPT_TIMEOUT_S = 60.0


@dataclass
class ProviderJob:
    """One job on the provider's side. With ``key`` (this provider's identity key) it opens the
    sealed private parameters when the inputs arrive (:attr:`params`, :attr:`input_blobs`) and
    signs the result (:meth:`finish`); the requester's signed receipt is kept in :attr:`receipt`."""

    me: bytes
    rfb: m.RequestForBids
    now: float
    key: SigningKey | None = None
    state: P = P.OFFERED
    price: int = 0
    bid_expires: float = 0.0
    award: m.Award | None = None
    until: float = 0.0  # when the current state times out
    reason: str = ""
    params: dict[str, Any] = field(default_factory=dict)  # public, plus the private ones once opened
    input_blobs: tuple[bytes, ...] = ()
    receipt: m.Receipt | None = None

    def __post_init__(self) -> None:
        self.until = min(self.rfb.deadline_ms / 1000.0, self.now + INPUT_TIMEOUT_S)
        self.params = dict(self.rfb.params)

    @property
    def job(self) -> bytes:
        return self.rfb.job

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL

    def _move(self, event: str, *, remote: bool) -> None:
        nxt = _TRANSITIONS.get((self.state, event))
        if nxt is None:
            if remote:
                self.state, self.reason = P.ERROR, f"{event} in state {self.state.value}"
                raise RemoteProtocolError(f"peer sent {event} while the job was {self.reason.split()[-1]}")
            raise LocalProtocolError(f"cannot {event} in state {self.state.value}")
        self.state = nxt

    # local decisions -------------------------------------------------------------------------
    def bid(self, price: int, estimate_ms: int, expires: float, backend: str) -> m.Bid:
        self._move("bid", remote=False)
        self.price, self.bid_expires = price, expires
        self.until = min(expires, self.rfb.deadline_ms / 1000.0)
        return m.Bid(self.job, price, estimate_ms, int(expires * 1000), backend)

    def decline(self, code: str, reason: str = "") -> m.Decline:
        self._move("decline", remote=False)
        self.reason = code
        return m.Decline(self.job, code, reason)

    def progress(self, fraction: float) -> m.Progress:
        self._move("progress", remote=False)
        return m.Progress(self.job, max(0.0, min(1.0, fraction)))

    def done(self, result: m.Result, now: float) -> m.Result:
        self._move("done", remote=False)
        self.until = now + RECEIPT_TIMEOUT_S
        return result

    def finish(self, *, digest: bytes, output: bytes, kernel_ms: int, backend: str, blob: bytes,
               now: float, root: bytes = b"") -> m.Result:
        """Sign the result (the output already sealed to the requester, inline or as a blob id;
        ``root`` the commitment to its rows, for row jobs)."""
        if self.key is None:
            raise LocalProtocolError("a provider job without a key cannot sign its result")
        result = m.make_result(self.job, self.key, requester=self.rfb.requester, provider=self.me,
                               nonce=self.rfb.nonce, digest=digest, output=output, kernel_ms=kernel_ms,
                               backend=backend, blob=blob, root=root)
        return self.done(result, now)

    def failed(self, code: str, reason: str) -> m.Failed:
        self._move("failed", remote=False)
        self.reason = code
        return m.Failed(self.job, code, reason[:256])

    def cancel(self, reason: str) -> m.Cancel:
        self._move("cancel", remote=False)
        self.reason = reason
        return m.Cancel(self.job, reason[:256])

    def abort(self, reason: str) -> None:
        """End the job because the requester broke the protocol below this machine (garbage on
        the stream, a flood); nothing is sent, the stream is reset. No-op once terminal."""
        if not self.terminal:
            self._move("abort", remote=False)
            self.reason = reason

    # messages from the requester -------------------------------------------------------------
    def receive(self, msg: m.Message, now: float) -> None:
        """Apply a message from the requester; ``RemoteProtocolError`` if it does not fit."""
        if msg.job != self.job:
            raise RemoteProtocolError("message for another job on this stream")
        if self._duplicate(msg):
            return  # the same signed award, inputs or receipt again: already applied
        if isinstance(msg, m.Award):
            self._check_award(msg, now)
            self._move("recv_award", remote=True)
            self.award = msg
            self.until = min(msg.body["deadline"] / 1000.0, now + INPUT_TIMEOUT_S)
        elif isinstance(msg, m.Inputs):
            self._move("recv_inputs", remote=True)
            self.until = self.award.body["deadline"] / 1000.0 if self.award else now
            self.input_blobs = msg.blobs
            try:
                self.params = self._open(msg)
            except PeerError:
                self.state, self.reason = P.ERROR, "inputs that do not open"
                raise
        elif isinstance(msg, m.Receipt):
            self._move("recv_receipt", remote=True)
            if msg.body["provider"] != self.me or msg.body["requester"] != self.rfb.requester:
                self.state = P.ERROR
                raise RemoteProtocolError("receipt names other peers")
            self.receipt = msg
        elif isinstance(msg, m.Cancel):
            self._move("recv_cancel", remote=True)
            self.reason = msg.reason or "cancelled by the requester"
        else:
            self._move(f"recv_{msg.TYPE}", remote=True)

    # Messages after the end are not errors: a terminal job ignores what is still in flight.

    def _open(self, inputs: m.Inputs) -> dict[str, Any]:
        """The public parameters merged with the sealed private ones (``seed``, input ``keys``)."""
        if self.key is None or not inputs.sealed:
            return dict(self.rfb.params)
        private = codec.decode(sealing.unseal(inputs.sealed, self.key), max_size=m.MAX_PARAMS_BYTES)
        if not isinstance(private, dict) or not set(private) <= set(m.PRIVATE_PARAMS):
            raise RemoteProtocolError("sealed inputs hold something other than private parameters")
        keys = private.get("keys", {})
        if not isinstance(keys, dict) or not all(isinstance(k, str) and isinstance(v, bytes) and len(v) == 32
                                                 for k, v in keys.items()):
            raise RemoteProtocolError("sealed input keys must map names to 32-byte keys")
        return {**dict(self.rfb.params), **private}

    def _duplicate(self, msg: m.Message) -> bool:
        if isinstance(msg, m.Award):
            return self.award is not None and msg.raw == self.award.raw
        if isinstance(msg, m.Inputs):
            return self.state in (P.RUNNING, P.RESULT_SENT, P.DONE, P.FAILED, P.UNCONFIRMED)
        if isinstance(msg, m.Receipt):
            return self.state is P.DONE
        if isinstance(msg, m.Cancel):
            return self.terminal
        return False

    def _check_award(self, award: m.Award, now: float) -> None:
        b = award.body
        problems = []
        if b["provider"] != self.me:
            problems.append("names another provider")
        if b["requester"] != self.rfb.requester or b["nonce"] != self.rfb.nonce:
            problems.append("does not match the request")
        if self.state is P.BID_SENT and b["price"] != self.price:
            problems.append(f"price {b['price']} is not our bid of {self.price}")
        if self.state is P.BID_SENT and now > self.bid_expires:
            problems.append("came after our bid expired")
        if problems:
            if self.state is P.BID_SENT:
                self.state = P.ERROR
            raise RemoteProtocolError("award " + ", ".join(problems))

    # time ------------------------------------------------------------------------------------
    def tick(self, now: float) -> m.Message | None:
        """End the job if its current state ran out of time; return a message to send, if any."""
        if self.terminal or now < self.until:
            return None
        before = self.state
        if before is P.BID_SENT:
            self.state = P.NOT_AWARDED
            return None
        if before is P.RESULT_SENT:
            self.state = P.UNCONFIRMED
            return None
        self.state, self.reason = P.EXPIRED, f"deadline passed in state {before.value}"
        return m.Cancel(self.job, self.reason) if before in (P.AWARDED, P.RUNNING) else None
