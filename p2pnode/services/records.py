"""The node's book of jobs, live and past, on both sides of the job protocol (``p2pnode jobs``)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import trio

from p2pnode.exec.workloads import Output
from p2pnode.services.ports import Recorder
from p2pnode.wire import job as m
from p2pnode.wire.jsonview import jsonable

MAX_RECORDS = 500
MAX_EVENTS_SHOWN = 50


@dataclass
class JobRecord:
    job: str
    role: str  # "requester" or "provider"
    workload: str
    params: dict[str, Any]
    started: float
    peer: str = ""  # provider (for a requester) or requester (for a provider)
    state: str = "starting"
    price: int = 0
    ended: float = 0.0
    outcome: str = ""
    events: list[dict[str, Any]] = field(default_factory=list)
    output: Output | None = None
    kernel_ms: int = 0
    backend: str = ""
    purpose: str = "job"  # job, check (a re-run for a check) or calibration
    checked: str = ""  # how the result was checked
    result_raw: bytes = b""  # the provider's signed result
    paid: dict[str, int] = field(default_factory=dict)  # a job or map on its own: what it paid in all, by purpose
    overran: list[str] = field(default_factory=list)  # awarded providers lost only for running past their estimate
    declines: dict[str, str] = field(default_factory=dict)  # provider -> the code it declined with

    def to_json(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k not in ("output", "events", "result_raw")}
        out["events"] = self.events[-MAX_EVENTS_SHOWN:]
        if self.output is not None:
            out["digest"] = self.output.digest.hex()
            out["output"] = {k: {"shape": list(v.shape), "dtype": str(v.dtype),
                                 "sample": [x if isinstance(x, int) else float(f"{x:.4g}")
                                            for x in v.reshape(-1)[:6].tolist()]}
                             for k, v in self.output.arrays.items()}
            if "loss" in self.output.extra:
                out["loss"] = self.output.extra["loss"]
        return out


class JobRecords:
    """The last ``MAX_RECORDS`` jobs, oldest first."""

    def __init__(self, limit: int = MAX_RECORDS) -> None:
        self.limit = limit
        self._records: list[JobRecord] = []

    def add(self, rec: JobRecord) -> JobRecord:
        self._records.append(rec)
        del self._records[:-self.limit]
        return rec

    def find(self, job: str) -> JobRecord | None:
        """The newest record of ``job`` (hex id), if still kept."""
        return next((r for r in reversed(self._records) if r.job == job), None)

    def __iter__(self) -> Iterator[JobRecord]:
        return iter(self._records)

    def __len__(self) -> int:
        return len(self._records)

    def __getitem__(self, i: int) -> JobRecord:
        return self._records[i]

    def __reversed__(self) -> Iterator[JobRecord]:
        return reversed(self._records)


def event_item(what: str, data: dict[str, object], **extra: object) -> dict[str, Any]:
    """One job event as the control API streams it and ``p2pnode jobs`` shows it."""
    return {"event": what, **extra, **{k: jsonable(v) for k, v in data.items()}}


async def remember_receipt(recorder: Recorder, receipt: m.Receipt, role: str, workload: str, peer: bytes) -> None:
    """Write a signed receipt to the ledger, and the credits it moved (earned as provider, spent as
    requester). Shielded: a receipt once given or received is always remembered."""
    body = receipt.body
    with trio.CancelScope(shield=True):
        await recorder.record("receipt", {"role": role, "job": receipt.job, "receipt": receipt.raw,
                                          "workload": workload, "accepted": body["accepted"],
                                          "paid": body["paid"]}, peer=peer)
        if body["paid"]:
            amount = body["paid"] if role == "provider" else -body["paid"]
            await recorder.record("credit", {"job": receipt.job, "amount": amount}, peer=peer)
