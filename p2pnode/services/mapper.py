"""Dataset jobs: one model over every row of a dataset, in shards across several providers.

:meth:`MapService.run` cuts the rows into shards of ``shard_rows`` and runs them on up to
``providers`` providers at once, the best ranked first (each shard is a normal ``onnx`` job: row
checks, receipt, ledger). Each of those providers holds up to :data:`DEPTH` shards: while one
computes, the next one's rows are already crossing the network and wait in its executor's queue,
so moving the data hides behind the compute. A shard that ends without a verified result goes
back in the queue. What happens next depends on why:

* **an overrun** (its provider ran past its estimate with no progress, or its executor's own time
  limit stopped it, or the deadline came): no one's fault; the shard is priced again at twice the
  estimate, and that provider may take it again (``MAX_OVERRUNS`` times at most);
* **busy** (the provider declined for now): the shard waits ``BUSY_WAIT_S`` and goes back, and the
  provider is passed over for it after ``MAX_BUSY`` such answers;
* anything else (a failure, a rejected result, a decline for good): that provider is not given the
  shard again.

The dataset job fails only when a shard has no provider left in the market, naming the shard and
what its last attempt said: while an honest provider remains, the map goes on.

**Resumable.** Every verified shard's output is written, fsynced, under
``<state_dir>/<map id>/`` before the next is counted, where the map id is a digest of the model, the
data and the shard size. Run the same dataset job again (after a crash, a restart, a Ctrl-C) and the
finished shards are read back, not run or paid for again. The outputs are reassembled in row order.

Collaborators: ``submit`` and ``candidates`` (the requester's), ``now``, the state directory and
``on_saved``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import trio

from p2pnode.errors import LocalError
from p2pnode.exec.model_jobs import ModelJob
from p2pnode.services.ports import Now
from p2pnode.wire.jsonview import jsonable
from p2pnode.wire.peer_id import to_base58

log = logging.getLogger("p2pnode.map")
MAX_OVERRUNS = 3  # one provider, one shard: each time priced at twice the estimate
MAX_BUSY = 5  # "busy" answers from one provider for one shard before it is passed over
BUSY_WAIT_S = 1.0
DEPTH = 2  # shards in flight on one provider: one computing, one moving its rows
Submit = Callable[..., Awaitable[Any]]
Candidates = Callable[[str, int, int, str], list[Any]]
Event = Callable[[dict[str, Any]], None]


class MapError(LocalError):
    """A dataset job that could not finish (a shard failed everywhere, nobody offers the model)."""


@dataclass
class Shard:
    index: int
    start: int
    stop: int
    attempts: int = 0
    excluded: set[bytes] = field(default_factory=set)
    scale: float = 1.0  # its estimate is this many times the measured one (doubled at each overrun)
    setbacks: dict[tuple[bytes, str], int] = field(default_factory=dict)  # (provider, overrun|busy) -> count
    last: str = ""  # what its last attempt said

    @property
    def rows(self) -> int:
        return self.stop - self.start


@dataclass
class MapResult:
    map_id: str
    rows: int
    shards: int
    resumed: int  # shards read back from an earlier run
    outputs: dict[str, np.ndarray]
    seconds: float
    by_provider: dict[str, int]  # rows done per provider (this run)
    retries: int
    verify: str
    checked_rows: int
    jobs: list[str]

    def summary(self) -> dict[str, Any]:
        return {"map": self.map_id, "rows": self.rows, "shards": self.shards, "resumed": self.resumed,
                "seconds": round(self.seconds, 3), "rows_per_s": round(self.rows / self.seconds, 1) if self.seconds else 0,
                "by_provider": self.by_provider, "retries": self.retries, "verify": self.verify,
                "checked_rows": self.checked_rows, "jobs": self.jobs,
                "outputs": {k: {"shape": list(v.shape), "dtype": str(v.dtype)} for k, v in self.outputs.items()}}


def map_id(job: ModelJob, shard_rows: int) -> str:
    h = hashlib.sha256(job.blob)
    for name in sorted(job.arrays):
        a = job.arrays[name]
        h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
        h.update(hashlib.sha256(np.ascontiguousarray(a).data.cast("B")).digest())
    h.update(str(shard_rows).encode())
    return h.hexdigest()[:24]


class MapService:
    def __init__(self, *, submit: Submit, candidates: Candidates, now: Now, state_dir: Path,
                 on_saved: Callable[[], None] = lambda: None) -> None:
        """``on_saved``: called after each shard's output is on disk (the node wakes its waiters)."""
        self.submit, self.candidates, self.now, self.state_dir = submit, candidates, now, state_dir
        self.on_saved = on_saved
        self.shards_saved = 0  # shards whose output is on disk, in every dataset job since start

    async def run(self, job: ModelJob, *, shard_rows: int, providers: int, max_price: int, deadline_s: float,
                  on_event: Event | None = None, backend: str = "") -> MapResult:
        """Run ``job`` over all its rows. ``max_price`` is for the whole dataset (each shard gets its
        share); ``deadline_s`` is per shard."""
        if shard_rows < 1 or providers < 1:
            raise MapError("--shard-rows and --providers must be at least 1")
        if job.whole:  # a model that couples its rows gets all of them in one job, one batch
            shard_rows = job.rows
        started = self.now()
        emit = on_event or (lambda e: None)
        mid = map_id(job, shard_rows)
        folder = self.state_dir / mid
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        shards = [Shard(i, a, min(a + shard_rows, job.rows)) for i, a in enumerate(range(0, job.rows, shard_rows))]
        done: dict[int, dict[str, np.ndarray]] = {}
        state = self._load(folder)
        for i_str, meta in state.items():
            i = int(i_str)
            if i < len(shards):
                arrays = _read_shard(folder / meta["file"], shards[i].rows)
                if arrays is not None:
                    done[i] = arrays
        resumed = len(done)
        emit({"event": "map", "map": mid, "rows": job.rows, "shards": len(shards), "resumed": resumed,
              "verify": job.verify, "coupling": job.coupling})
        queue = [s for s in shards if s.index not in done]
        send, recv = trio.open_memory_channel[Shard](len(shards))
        for s in queue:
            send.send_nowait(s)
        remaining = len(queue)
        busy: dict[bytes, int] = {}  # shards in flight per provider
        by_provider: dict[str, int] = {}
        retries, checked, jobs = 0, 0, []
        price_per_row = max_price / job.rows
        failure: list[str] = []
        saving = trio.Lock()  # one writer of the state file at a time

        async def worker() -> None:
            nonlocal remaining, retries, checked
            async for shard in recv:
                params, inputs = job.shard(shard.start, shard.stop)
                params["gflop"] = round(params["gflop"] * shard.scale, 9)
                ads = [a for a in self.candidates("onnx", 0, 64, backend) if a.peer_id not in shard.excluded]
                if not ads:
                    failure.append(f"shard {shard.index}: no provider left that offers this model job"
                                   + (f" (last: {shard.last})" if shard.last else ""))
                    send.close()
                    return
                # up to ``providers`` providers at once, the best ranked (by price and speed) first,
                # each holding up to DEPTH shards; a shard that fails is retried elsewhere
                in_use = {p for p, n in busy.items() if n}
                idle = [a for a in ads if a.peer_id not in in_use]
                room = sorted((a for a in ads if a.peer_id in in_use and busy[a.peer_id] < DEPTH),
                              key=lambda a: busy[a.peer_id])
                chosen = (idle[0] if idle and len(in_use) < providers else (room or idle or ads)[0])
                shard.attempts += 1
                emit({"event": "shard", "shard": shard.index, "state": "start", "rows": shard.rows,
                      "attempt": shard.attempts})
                busy[chosen.peer_id] = busy.get(chosen.peer_id, 0) + 1
                try:
                    rec = await self.submit("onnx", params, inputs=inputs, only=[chosen], k=1,
                                            max_price=max(1, math.ceil(price_per_row * shard.rows)),
                                            deadline_s=deadline_s, verify=job.verify, backend=backend)
                finally:
                    busy[chosen.peer_id] -= 1
                peer = rec.peer
                if rec.state == "done" and rec.output is not None:
                    async with saving:
                        await trio.to_thread.run_sync(self._save, folder, state, shard, rec.output.arrays,
                                                      rec.job, peer)
                        self.shards_saved += 1
                        self.on_saved()
                    done[shard.index] = dict(rec.output.arrays)
                    by_provider[peer] = by_provider.get(peer, 0) + shard.rows
                    jobs.append(rec.job)
                    checked += _checked_rows(rec)
                    remaining -= 1
                    emit({"event": "shard", "shard": shard.index, "state": "done", "rows": shard.rows,
                          "provider": peer, "outcome": rec.outcome, "done": len(done), "shards": len(shards),
                          "rows_done": sum(shards[i].rows for i in done),
                          "rows_per_s": round(sum(by_provider.values()) / max(1e-9, self.now() - started), 1)})
                    if remaining == 0:
                        send.close()
                    continue
                retries += 1
                why = _setback(shard, chosen.peer_id, rec)
                emit({"event": "shard", "shard": shard.index, "state": "retry", "provider": peer, "why": why,
                      "outcome": shard.last, "attempt": shard.attempts})
                if why == "busy":
                    await trio.sleep(BUSY_WAIT_S)
                try:
                    send.send_nowait(shard)  # room for every shard: never blocks
                except trio.ClosedResourceError:
                    return  # another shard already failed the job

        if queue:
            async with trio.open_nursery() as nursery:
                for _ in range(min(DEPTH * providers, len(queue))):
                    nursery.start_soon(worker)
        if failure or len(done) < len(shards):
            raise MapError(failure[0] if failure else "the dataset job stopped before every shard was done")
        outputs = {k: np.concatenate([done[i][k] for i in range(len(shards))]) for k in done[0]}
        return MapResult(mid, job.rows, len(shards), resumed, outputs, self.now() - started, by_provider, retries,
                         job.verify, checked, jobs)

    # state on disk -------------------------------------------------------------------------
    @staticmethod
    def _load(folder: Path) -> dict[str, Any]:
        try:
            state = json.loads((folder / "state.json").read_text())
            return state if isinstance(state, dict) else {}
        except (OSError, ValueError):
            return {}

    def _save(self, folder: Path, state: dict[str, Any], shard: Shard, arrays: dict[str, np.ndarray], job: str,
              peer: str) -> None:
        """The shard's output, then the state that names it (each replaced atomically, fsynced)."""
        name = f"shard-{shard.index:06d}.npz"
        _atomic(folder / name, lambda f: np.savez(f, **arrays))  # type: ignore[arg-type]
        state[str(shard.index)] = {"file": name, "job": job, "provider": peer, "rows": shard.rows}
        _atomic(folder / "state.json", lambda f: f.write(json.dumps(jsonable(state)).encode()))


def _setback(shard: Shard, peer: bytes, rec: Any) -> str:
    """Why ``shard`` did not end on ``peer`` (``overrun``, ``busy`` or ``fault``), and what that
    changes: a larger estimate, a wait, or that provider passed over for this shard."""
    b58 = to_base58(peer)
    why = "overrun" if b58 in rec.overran or rec.state == "expired" else \
        "busy" if rec.declines.get(b58) == "busy" else "fault"
    shard.last = f"{rec.state}: {rec.outcome}"[:200]
    if why == "overrun":
        shard.scale *= 2
    if why == "fault":
        shard.excluded.add(peer)
    else:
        n = shard.setbacks[(peer, why)] = shard.setbacks.get((peer, why), 0) + 1
        if n >= (MAX_OVERRUNS if why == "overrun" else MAX_BUSY):
            shard.excluded.add(peer)
    return why


def _checked_rows(rec: Any) -> int:
    for e in rec.events:
        if e.get("event") == "sample":
            return int(e.get("rows", 0))
    return 0


def _atomic(path: Path, write: Callable[[Any], None]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_shard(path: Path, rows: int) -> dict[str, np.ndarray] | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError):
        return None
    if not arrays or any(len(a) != rows for a in arrays.values()):
        return None
    return arrays
