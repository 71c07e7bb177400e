"""What the requester's pure machines ask their drivers to do (pure; in the manner of h11's events).

:class:`~p2pnode.protocol.job_pipeline.RequesterPipeline` and the
:class:`~p2pnode.protocol.verdict.Verdict` inside it return lists of these. A driver carries each
one out and nothing else: the node's trio services (``services/conversation.py``,
``services/checks.py``) and the simulator (``sim/ask.py``) are two such drivers.

Four of them are **questions** (:data:`Question`): the machine waits for the answer before it
goes on (``RequesterPipeline.opened`` / ``unavailable`` / ``ran`` / ``ran_here`` / ``state_opened``). The others are
effects the driver carries out in order and forgets.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from p2pnode.wire import job as m


@dataclass(frozen=True)
class Send:
    """Send ``msg`` on the stream to ``peer`` (dropped when that stream is gone)."""

    peer: bytes
    msg: m.Message


@dataclass(frozen=True)
class Dial:
    """Open a job stream to ``ad``'s provider and send it the request for bids. A dial that fails
    is told back (``dial_failed``); its replies are fed to ``receive``, the first with its round trip."""

    ad: Any


@dataclass(frozen=True)
class Penalise:
    """``peer`` broke the job protocol: count an offence (``code``) against it."""

    peer: bytes
    why: str
    code: str = "protocol_violation"


@dataclass(frozen=True)
class Record:
    """Append an entry to this node's ledger (and fold it into the reputation)."""

    kind: str
    data: dict[str, Any]
    peer: bytes = b""


@dataclass(frozen=True)
class PublishCheat:
    """Gossip a ``cheat`` report on ``subject`` carrying three signed results as evidence."""

    subject: bytes
    job: bytes
    results: tuple[bytes, bytes, bytes]


@dataclass(frozen=True)
class PublishOpinion:
    """Gossip this node's opinion of ``subject`` (after a checked job)."""

    subject: bytes


@dataclass(frozen=True)
class Charge:
    """Charge ``amount`` µcredits, paid for ``purpose`` (job, check, calibration), to the request."""

    purpose: str
    amount: int


# questions ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class OpenOutput:
    """Fetch ``result``'s output (inline, or a blob from its provider), open it and compare its
    digest with the signed one; then, by ``check``, run Freivalds' product check (``freivalds``) or
    the signed row commitment's (``rows``). Answer ``opened(ok, detail, output, method)``, or
    ``unavailable(why)`` when the output cannot be fetched because its provider is gone."""

    result: m.Result
    check: str = ""  # "", "freivalds", "rows" or "tokens"


@dataclass(frozen=True)
class RunElsewhere:
    """Run the work (``params``, ``inputs``) as a job of ``purpose`` ``check`` on ``ad``'s provider
    alone, with no checks of its own, within ``deadline_s``. Answer ``ran(Ran(...))``, or
    ``ran(None)`` when it did not complete. ``role``: ``checker`` or ``referee``."""

    ad: Any
    params: dict[str, Any]
    inputs: Any
    role: str
    deadline_s: float


@dataclass(frozen=True)
class RunHere:
    """Run the work on this node's own runtime. Answer
    ``ran_here(output, why)``: ``output`` None, with a reason, when it could not run here."""

    params: dict[str, Any]
    inputs: Any


@dataclass(frozen=True)
class OpenState:
    """Fetch the state that ``peer`` committed to (the blob ``blob``: a training step's state,
    which its provider keeps). Answer ``state_opened(data, "")``, or ``state_opened(None, why)``
    when it cannot be had."""

    peer: bytes
    blob: bytes


Question = OpenOutput | RunElsewhere | RunHere | OpenState
Action = Send | Dial | Penalise | Record | PublishCheat | PublishOpinion | Charge | OpenOutput | RunElsewhere | \
    RunHere | OpenState


@dataclass(frozen=True)
class Ran:
    """What a run elsewhere gave back: its output (opaque to the machines: the driver's
    ``Outputs`` compares them), its signed result and its job id, for the evidence."""

    output: Any
    result_raw: bytes
    job: bytes


@dataclass(frozen=True)
class Settle:
    """The verdict on a result: accepted or not, the outcome to say, and the method whose verdict
    it is (``checked``: empty when no check settled anything, so nobody is marked)."""

    accepted: bool
    outcome: str
    checked: str = ""



def receipt_records(receipt: m.Receipt, role: str, workload: str, peer: bytes) -> list[Record]:
    """What a signed receipt leaves in the ledger, on either side: the receipt, and the credits it
    moved (earned as provider, spent as requester)."""
    body = receipt.body
    out = [Record("receipt", {"role": role, "job": receipt.job, "receipt": receipt.raw, "workload": workload,
                              "accepted": body["accepted"], "paid": body["paid"]}, peer)]
    if body["paid"]:
        amount = body["paid"] if role == "provider" else -body["paid"]
        out.append(Record("credit", {"job": receipt.job, "amount": amount}, peer))
    return out
