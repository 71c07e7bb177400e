"""Both sides of ``/p2pnode/job/1`` over one job book: what the node, the control API and the CLI
see as "the jobs". It composes :class:`JobProvider` and :class:`JobRequester` and adds nothing."""

from __future__ import annotations

from typing import Any

from p2pnode.services.provider import JobProvider
from p2pnode.services.records import JobRecords
from p2pnode.services.requester import JobRequester


class JobService:
    def __init__(self, provider: JobProvider, requester: JobRequester, records: JobRecords) -> None:
        self.provider, self.requester, self.records = provider, requester, records
        self.submit = requester.submit
        self.candidates = requester.candidates
        self.handle_stream = provider.handle_stream
        self.runs = requester.runs  # jobs asked for on their own, running now

    @property
    def scorer(self) -> Any:
        return self.requester.scorer

    @property
    def checks(self) -> Any:
        return self.requester.checks

    @property
    def limits(self) -> Any:
        return self.provider.limits
