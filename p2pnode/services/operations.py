"""What one request of the node's user pays, and how it is stopped.

* :class:`Spending`: the credits one request (a job, a map) paid, by purpose (``job``, ``check``,
  ``calibration``), and the jobs it started. The requester charges each receipt it pays to the
  spending of the task it runs in (a context variable, which the tasks a request starts inherit):
  a map's shards, a job's checks and the calibration of a provider met for it are charged to that
  job or map, so it can say what it paid, in all, when it ends or is stopped.
* :class:`Runs`: the requests of one kind running now, by id, each in its own cancel scope, so
  that ``p2pnode cancel ID`` or a client that goes away (:class:`Hangup`) stops it: its jobs are
  cancelled at their providers (the requester's own clean-up), and it ends saying what it paid.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import trio

from p2pnode.errors import LocalError

MAX_JOBS_NOTED = 100_000  # job ids one request remembers (a map of that many shards is huge)


class AlreadyRunning(LocalError):
    """A request with this id (the same map) is running already."""


@dataclass
class Spending:
    paid: dict[str, int] = field(default_factory=dict)  # µcredits by purpose
    jobs: list[str] = field(default_factory=list)  # job ids started, hex
    parent: Spending | None = None

    @property
    def total(self) -> int:
        return sum(self.paid.values())

    def charge(self, purpose: str, amount: int) -> None:
        if amount:
            self.paid[purpose] = self.paid.get(purpose, 0) + amount
        if self.parent is not None:
            self.parent.charge(purpose, amount)

    def started(self, job: str) -> None:
        if len(self.jobs) < MAX_JOBS_NOTED:
            self.jobs.append(job)
        if self.parent is not None:
            self.parent.started(job)

    def to_json(self) -> dict[str, int]:
        return {**self.paid, "total": self.total}

    def describe(self) -> str:
        return describe_paid(self.to_json())


def describe_paid(paid: dict[str, int]) -> str:
    """``paid 219 µcr (calibration 215, job 4)`` for a :meth:`Spending.to_json`, or ``paid nothing``."""
    total = paid.get("total", 0)
    if not total:
        return "paid nothing"
    parts = ", ".join(f"{k} {v}" for k, v in sorted(paid.items()) if k != "total" and v)
    return f"paid {total} µcr ({parts})"


_current: contextvars.ContextVar[Spending | None] = contextvars.ContextVar("p2pnode_spending", default=None)


def current() -> Spending | None:
    return _current.get()


@contextmanager
def spending() -> Iterator[Spending]:
    """A new account for what the code in the block (and the tasks it starts) pays, within the
    current one, if any."""
    account = Spending(parent=_current.get())
    token = _current.set(account)
    try:
        yield account
    finally:
        _current.reset(token)


def charge(purpose: str, amount: int) -> None:
    account = _current.get()
    if account is not None:
        account.charge(purpose, amount)


def started(job: str) -> None:
    account = _current.get()
    if account is not None:
        account.started(job)


@dataclass
class Run:
    kind: str  # "job" or "map"
    id: str
    spending: Spending
    started_at: float
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    ended: trio.Event = field(default_factory=trio.Event)
    reason: str = ""  # why it was cancelled
    progress: dict[str, Any] = field(default_factory=dict)  # what the run says of itself (shards done)

    @property
    def cancelled(self) -> bool:
        return bool(self.reason)

    def cancel(self, reason: str) -> None:
        if not self.reason:
            self.reason = reason
        self.scope.cancel()


class Hangup:
    """Set when the client that asked for a request goes away (the control connection closed, as
    Ctrl-C closes it): the runs it watches are cancelled then."""

    def __init__(self) -> None:
        self.gone = False
        self._runs: list[Run] = []

    def watch(self, run: Run) -> None:
        self._runs.append(run)
        if self.gone:
            run.cancel(HANGUP_REASON)

    def set(self) -> None:
        self.gone = True
        for run in self._runs:
            run.cancel(HANGUP_REASON)


HANGUP_REASON = "its client went away"


class Runs:
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.live: dict[str, Run] = {}

    @contextmanager
    def open(self, run_id: str, account: Spending, now: float, hangup: Hangup | None = None) -> Iterator[Run]:
        """Register the run for the block, which runs in its cancel scope: cancelled by
        :meth:`Run.cancel`, or when ``hangup`` is set. Cancelled, the block ends quietly; the
        caller looks at ``run.cancelled``."""
        if run_id in self.live:
            raise AlreadyRunning(f"{self.kind} {run_id} is already running")
        run = Run(self.kind, run_id, account, now)
        self.live[run_id] = run
        try:
            if hangup is not None:
                hangup.watch(run)
            with run.scope:
                yield run
        finally:
            del self.live[run_id]
            run.ended.set()

    def find(self, prefix: str) -> Run | None:
        """The run whose id starts with ``prefix``, or that started a job whose id does."""
        if not prefix:
            return None
        for run in self.live.values():
            if run.id.startswith(prefix):
                return run
        for run in self.live.values():
            if any(job.startswith(prefix) for job in run.spending.jobs):
                return run
        return None
