"""The requester's preparation of a model job: the model is tried in a worker, never in the node.

``submit infer|map`` needs to know what a user's model gives per row, whether it couples its rows
and what a row costs (:mod:`p2pnode.exec.model_jobs`). Finding out means running the model, and a
model can loop forever or ask for all the memory there is: the requester's own node is no sandbox
exception. :meth:`ModelPrep.prepare` runs the probe in an executor worker under the memory limit
and timeout a provider's job of those rows gets; the node only casts the dataset afterwards. A
providing node uses its own executor; a requester-only node starts one small executor (one slot,
one worker) at its first model job and keeps it until the node stops.

Collaborators: the node's executor as a ``Prober`` (or none), and how to start a small one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import AbstractAsyncContextManager
from typing import Any

import numpy as np
import trio

from p2pnode.errors import ExecFailure, LocalError, WorkloadError
from p2pnode.exec import model_jobs
from p2pnode.exec.model_jobs import ModelJob, Probe
from p2pnode.exec.onnx_model import ModelError
from p2pnode.services.ports import Prober


class ModelPrepError(LocalError):
    """The user's model could not be tried on their rows (it loops, it is too big, it failed)."""


class ModelPrep:
    def __init__(self, executor: Prober | None,
                 start_own: Callable[[], AbstractAsyncContextManager[Any]]) -> None:
        """``start_own``: a small executor for a node without one (entered at first use)."""
        self._shared = executor
        self._start_own = start_own
        self._own: AbstractAsyncContextManager[Any] | None = None
        self._prober: Prober | None = executor
        self._starting = trio.Lock()

    async def _executor(self) -> Prober:
        async with self._starting:
            if self._prober is None:
                own = self._start_own()
                self._prober = await own.__aenter__()
                self._own = own
        assert self._prober is not None
        return self._prober

    async def prepare(self, blob: bytes, arrays: Mapping[str, np.ndarray], *,
                      timeout: float = model_jobs.PROBE_TIMEOUT_S) -> ModelJob:
        """The job of ``arrays`` through the model ``blob``; ``ModelError`` for a model or data that
        do not fit, :class:`ModelPrepError` for a model that could not be tried."""
        rows, spread = await trio.to_thread.run_sync(model_jobs.sample, arrays)
        ex = await self._executor()
        try:
            wire = await ex.probe_model(blob, rows, spread, timeout=timeout)
        except ExecFailure as exc:
            raise ModelPrepError(_explain(exc, timeout)) from None
        except WorkloadError as exc:  # the model or the data do not fit: the worker's one line
            raise ModelError(str(exc).removeprefix("ModelError: ")) from None
        try:
            probe = Probe.from_wire(wire)
        except ValueError as exc:
            raise ModelPrepError(f"trying the model on a few rows: {exc}") from None
        return await trio.to_thread.run_sync(model_jobs.assemble, blob, probe, arrays)

    async def aclose(self) -> None:
        if self._own is not None:
            own, self._own, self._prober = self._own, None, self._shared
            with trio.CancelScope(shield=True):
                await own.__aexit__(None, None, None)


def _explain(exc: ExecFailure, timeout: float) -> str:
    if exc.code == "timeout":
        return (f"the model did not finish a few rows in {timeout:g} s here (a loop that never ends?); "
                "it was stopped in its worker")
    if exc.code == "oom":
        return ("the model asked for more memory than a job of a few rows may use (a tensor far larger than "
                "its data?); it was stopped in its worker")
    if exc.code == "backend_unavailable":
        return f"model jobs need ONNX Runtime here: {exc}"
    return f"trying the model on a few rows failed: {exc}"
