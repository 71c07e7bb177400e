"""Dataset jobs: one model over every row of a dataset, in shards across several providers.

:meth:`MapService.run` cuts the rows into shards of ``shard_rows`` and runs them on up to
``providers`` providers at once, the best ranked first (each shard is a normal ``onnx`` job: row
checks, receipt, ledger). Each of those providers holds up to :data:`DEPTH` shards: while one
computes, the next one's rows are already crossing the network and wait in its executor's queue,
so moving the data hides behind the compute. A shard that ends without a verified result goes
back in the queue. What happens next depends on why (the decisions are pure, in
:mod:`p2pnode.protocol.shards`; this service carries them out):

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
A map whose every shard is done already is not run again: it says so (``already_done``), and
``fresh`` forgets its shards to compute it all again.

**One run at a time, stoppable.** A map runs once at a time (a second run of it is refused, naming
it), holding a lock file in its folder; each shard's output is written under a unique temporary
name and renamed, then named by one line appended to the map's state log (``shards.jsonl``): a
shard's save costs the same in a map of ten shards or of a hundred thousand. ``p2pnode cancel MAP`` or its client going away cancels it: its jobs in flight are
cancelled at their providers, the finished shards stay for the next run, and it ends with
:class:`MapCancelled`, saying what it paid. It is in the job book as a job of workload ``map``.

**Price.** ``max_price`` bounds what the whole dataset pays its providers: each shard may pay its
share, rounded down, and the shares add up to ``max_price`` exactly; a share under 1 µcr is
refused before anything is sent.

Collaborators: ``submit`` and ``candidates`` (the requester's), ``now``, the state directory,
``on_saved`` and the job book.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import trio

from p2pnode.errors import LocalError
from p2pnode.exec.buckets import concat_padded
from p2pnode.exec.generation_jobs import GenerationJob, map_key
from p2pnode.exec.model_jobs import ModelJob
from p2pnode.protocol.shards import (
    DEPTH,
    Shard,
    checked_rows,
    choose,
    cut,
    exhausted,
    price_shares,
    setback,
)
from p2pnode.services import operations
from p2pnode.services.operations import AlreadyRunning, Hangup, Run, Runs, Spending
from p2pnode.services.ports import Now
from p2pnode.services.records import JobRecord, JobRecords
from p2pnode.wire.jsonview import jsonable
from p2pnode.wire.peer_id import to_base58

log = logging.getLogger("p2pnode.map")
BUSY_WAIT_S = 1.0  # a shard its provider declined as busy waits this long before it goes back
STATE_LOG = "shards.jsonl"  # a line per shard kept: {"shard": i, "file", "job", "provider", "rows"}
LEGACY_STATE = "state.json"  # what earlier versions rewrote whole after each shard: still read
Submit = Callable[..., Awaitable[Any]]
Candidates = Callable[[str, int, int, str], list[Any]]
Event = Callable[[dict[str, Any]], None]


class MapError(LocalError):
    """A dataset job that could not finish (a shard failed everywhere, nobody offers the model)."""


class MapCancelled(MapError):
    """A dataset job stopped by ``p2pnode cancel`` or by its client going away."""


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
    verify: str  # rows, rerun or none
    checked_rows: int
    jobs: list[str]
    paid: dict[str, int] = field(default_factory=dict)  # this run, by purpose, and the total
    already_done: bool = False  # every shard was done by an earlier run: nothing ran now
    folder: str = ""  # where its shards are kept

    def summary(self) -> dict[str, Any]:
        return {"map": self.map_id, "rows": self.rows, "shards": self.shards, "resumed": self.resumed,
                "seconds": round(self.seconds, 3), "rows_per_s": round(self.rows / self.seconds, 1) if self.seconds else 0,
                "by_provider": self.by_provider, "retries": self.retries, "verify": self.verify,
                "checked_rows": self.checked_rows, "jobs": self.jobs, "paid": self.paid,
                "already_done": self.already_done, "state_dir": self.folder,
                "outputs": {k: {"shape": list(v.shape), "dtype": str(v.dtype)} for k, v in self.outputs.items()}}


def map_id(job: ModelJob | GenerationJob, shard_rows: int) -> str:
    return identity(job, shard_rows)[0]


def identity(job: ModelJob | GenerationJob, shard_rows: int) -> tuple[str, bytes]:
    """(the map's id, its model's SHA-256): one pass over the model and the rows, for both."""
    h = hashlib.sha256(job.blob)
    model_digest = h.copy().digest()
    for name in sorted(job.arrays):
        a = job.arrays[name]
        h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
        h.update(hashlib.sha256(np.ascontiguousarray(a).data.cast("B")).digest())
    h.update(str(shard_rows).encode())
    h.update(map_key(job))
    return h.hexdigest()[:24], model_digest


class MapService:
    def __init__(self, *, submit: Submit, candidates: Candidates, now: Now, state_dir: Path,
                 on_saved: Callable[[], None] = lambda: None, records: JobRecords | None = None) -> None:
        """``on_saved``: called after each shard's output is on disk (the node wakes its waiters).
        ``records``: the job book, where each map is a job of workload ``map``."""
        self.submit, self.candidates, self.now, self.state_dir = submit, candidates, now, state_dir
        self.on_saved = on_saved
        self.records = records if records is not None else JobRecords()
        self.shards_saved = 0  # shards whose output is on disk, in every dataset job since start
        self.runs = Runs("map")  # maps running now

    async def run(self, job: ModelJob | GenerationJob, *, shard_rows: int, providers: int, max_price: int, deadline_s: float,
                  on_event: Event | None = None, backend: str = "", verify: str = "auto", fresh: bool = False,
                  hangup: Hangup | None = None) -> MapResult:
        """Run ``job`` over all its rows. ``max_price`` is for the whole dataset (each shard gets its
        share); ``deadline_s`` is per shard. ``verify``: ``auto`` (the job's own check) or ``none``.
        ``fresh``: forget the shards an earlier run finished."""
        if shard_rows < 1 or providers < 1:
            raise MapError("--shard-rows and --providers must be at least 1")
        if job.whole:  # a model that couples its rows gets all of them in one job, one batch
            shard_rows = job.rows
        if verify not in ("auto", "none"):
            raise MapError(f"--verify {verify}: a model job is checked by re-running sampled rows or whole shards "
                           "(auto), or not at all (none); freivalds checks matrix products only")
        shards = cut(job.rows, shard_rows)
        shares = price_shares(max_price, job.rows, shards)
        if min(shares) < 1:
            raise MapError(f"--max-price {max_price} leaves less than 1 µcr for a shard ({len(shards)} shards of up "
                           f"to {shard_rows} rows): raise --max-price, or make shards larger (--shard-rows)")
        # hashes the model and every row: off the trio thread
        mid, model_digest = await trio.to_thread.run_sync(identity, job, shard_rows)
        folder = self.state_dir / mid
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        with self._exclusive(folder, mid), operations.spending() as account:
            return await self._run_once(job, mid, folder, shards, shares, providers=providers, deadline_s=deadline_s,
                                        on_event=on_event, backend=backend, verify=verify, fresh=fresh,
                                        hangup=hangup, account=account, model_digest=model_digest)

    @contextlib.contextmanager
    def _exclusive(self, folder: Path, mid: str) -> Any:
        """Hold the map's lock file (one run of a map at a time, in this node or any other)."""
        running = self.runs.live.get(mid)
        fd = os.open(folder / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                since = f", started {self.now() - running.started_at:.0f} s ago" if running else ""
                raise AlreadyRunning(f"map {mid} is already running{since}: wait for it, or stop it with "
                                     f"`p2pnode cancel {mid}`") from None
            yield
        finally:
            os.close(fd)

    async def _run_once(self, job: ModelJob | GenerationJob, mid: str, folder: Path, shards: list[Shard], shares: list[int], *,
                        providers: int, deadline_s: float, on_event: Event | None, backend: str, verify: str,
                        fresh: bool, hangup: Hangup | None, account: Spending, model_digest: bytes) -> MapResult:
        """The map under its lock: shards done before read back, the rest run as a cancellable run
        recorded in the job book."""
        started = self.now()
        if fresh:
            await trio.to_thread.run_sync(_forget, folder)
        done = await trio.to_thread.run_sync(_read_done, folder, shards)
        resumed = len(done)
        check = "none" if verify == "none" else job.verify
        if resumed == len(shards):  # the same map, finished before: nothing to run (``fresh`` runs it again)
            if on_event is not None:
                on_event({"event": "map", "map": mid, "rows": job.rows, "shards": len(shards), "resumed": resumed,
                          "verify": check, "already_done": True})
            return MapResult(mid, job.rows, len(shards), resumed, _assemble(job, done, shards), 0.0, {}, 0, check, 0,
                             [], account.to_json(), already_done=True, folder=str(folder))
        rec = self.records.add(JobRecord(mid, "requester", "map", {"rows": job.rows, "shards": len(shards),
                                                                    "resumed": resumed, "verify": check},
                                         started=started, state="running"))
        result: MapResult | None = None
        run: Run | None = None
        try:
            with self.runs.open(mid, account, started, hangup) as run:
                result = await self._run(job, mid, folder, shards, shares, done, providers=providers,
                                         deadline_s=deadline_s, on_event=on_event, backend=backend, verify=check,
                                         model_digest=model_digest)
        except MapError as exc:
            rec.state, rec.outcome = "failed", str(exc)[:250]
            raise
        finally:
            rec.ended, rec.price, rec.paid = self.now(), account.total, account.to_json()
            reason = run.reason if run is not None and run.reason else "the node stopped"
            if rec.state == "running":  # stopped: by a cancel, or by the node shutting down
                rec.state, rec.outcome = "cancelled", f"cancelled ({reason})"
        if result is None:
            kept = f"{len(done)} of {len(shards)} shards done and kept"
            rec.outcome += f": {kept}"
            log.info("map %s: %s; %s", mid, rec.outcome, account.describe())
            raise MapCancelled(f"map {mid} cancelled ({reason}): {kept}, {account.describe()}; "
                               "the same command resumes it")
        result.resumed, result.paid, result.folder = resumed, account.to_json(), str(folder)
        rec.state, rec.outcome = "done", f"{len(shards)} shards, {resumed} resumed; {account.describe()}"
        return result

    async def _run(self, job: ModelJob | GenerationJob, mid: str, folder: Path, shards: list[Shard], shares: list[int],
                   done: dict[int, dict[str, np.ndarray]], *, providers: int, deadline_s: float,
                   on_event: Event | None, backend: str, verify: str, model_digest: bytes) -> MapResult:
        emit = on_event or (lambda e: None)
        emit({"event": "map", "map": mid, "rows": job.rows, "shards": len(shards), "resumed": len(done),
              "verify": verify, "coupling": job.coupling})
        run = _Running(self, job, folder, shards, shares, done, self._load(folder), providers=providers,
                       deadline_s=deadline_s, emit=emit, backend=backend, verify=verify, model_digest=model_digest)
        queue = [s for s in shards if s.index not in done]
        if queue:
            async with trio.open_nursery() as nursery:
                for s in queue:
                    run.send.send_nowait(s)
                for _ in range(min(DEPTH * providers, len(queue))):
                    nursery.start_soon(run.worker)
        if run.failure or len(done) < len(shards):
            raise MapError(run.failure[0] if run.failure else "the dataset job stopped before every shard was done")
        return MapResult(mid, job.rows, len(shards), len(done) - len(queue), _assemble(job, done, shards),
                         self.now() - run.started, run.by_provider, run.retries, verify, run.checked, run.jobs)

    # state on disk -------------------------------------------------------------------------
    @staticmethod
    def _load(folder: Path) -> dict[str, Any]:
        """{shard index: what names its output}: the shards an earlier run kept, one line each in
        the state log (a torn last line, from a node killed as it wrote, is not a shard), after
        those of a ``state.json`` an earlier version of the node wrote."""
        state: dict[str, Any] = {}
        try:
            old = json.loads((folder / LEGACY_STATE).read_text())
            state.update(old if isinstance(old, dict) else {})
        except (OSError, ValueError):
            pass
        try:
            lines = (folder / STATE_LOG).read_bytes().split(b"\n")
        except OSError:
            return state
        for line in lines:
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict) and isinstance(entry.get("shard"), int):
                state[str(entry.pop("shard"))] = entry
        return state

    def _save(self, folder: Path, state: dict[str, Any], shard: Shard, arrays: dict[str, np.ndarray], job: str,
              peer: str) -> None:
        """The shard's output (replaced atomically, fsynced), then one line that names it appended
        to the state log (fsynced): a shard's save costs the same in a map of ten shards or of a
        hundred thousand (the state was once rewritten whole for each shard)."""
        name = f"shard-{shard.index:06d}.npz"
        _atomic(folder / name, lambda f: np.savez(f, **arrays))  # type: ignore[arg-type]
        entry = {"file": name, "job": job, "provider": peer, "rows": shard.rows}
        state[str(shard.index)] = entry
        _append_line(folder / STATE_LOG, json.dumps(jsonable({"shard": shard.index, **entry})).encode())


class _Running:
    """One run of a map: workers take shards from a queue, run each as a job on the provider the
    shard decisions choose (``protocol/shards.py``), save what is verified and put back the rest."""

    def __init__(self, service: MapService, job: ModelJob | GenerationJob, folder: Path, shards: list[Shard], shares: list[int],
                 done: dict[int, dict[str, np.ndarray]], state: dict[str, Any], *, providers: int, deadline_s: float,
                 emit: Event, backend: str, verify: str, model_digest: bytes) -> None:
        self.service, self.job, self.folder, self.shards, self.shares = service, job, folder, shards, shares
        self.digests = {"model": model_digest}  # the model is hashed once for all the shards
        self.done, self.state, self.providers, self.deadline_s = done, state, providers, deadline_s
        self.emit, self.backend, self.verify = emit, backend, verify
        self.started = service.now()
        self.send, self.recv = trio.open_memory_channel[Shard](len(shards))  # room for every shard: never blocks
        self.remaining = len(shards) - len(done)
        self.busy: dict[bytes, int] = {}  # shards in flight per provider
        self.by_provider: dict[str, int] = {}
        self.retries, self.checked = 0, 0
        self.jobs: list[str] = []
        self.failure: list[str] = []
        self.saving = trio.Lock()  # one writer of the state file at a time

    async def worker(self) -> None:
        async for shard in self.recv:
            workload = self.job.workload
            chosen = choose(self.service.candidates(workload, 0, 64, self.backend), shard, self.busy, self.providers)
            if chosen is None:
                self.failure.append(exhausted(shard))
                self.send.close()
                return
            shard.attempts += 1
            self.emit({"event": "shard", "shard": shard.index, "state": "start", "rows": shard.rows,
                       "attempt": shard.attempts})
            params, inputs = self.job.shard(shard.start, shard.stop)
            params["gflop"] = round(params["gflop"] * shard.scale, 9)
            self.busy[chosen.peer_id] = self.busy.get(chosen.peer_id, 0) + 1
            kept: list[JobRecord] = []

            async def keep(rec: JobRecord, shard: Shard = shard) -> None:  # before its receipt pays for it
                await self._done(shard, rec)
                kept.append(rec)

            try:
                rec = await self.service.submit(workload, params, inputs=inputs, only=[chosen], k=1,
                                                max_price=self.shares[shard.index], deadline_s=self.deadline_s,
                                                verify=self.verify, backend=self.backend, keep=keep,
                                                digests=self.digests)
            finally:
                self.busy[chosen.peer_id] -= 1
            if kept:
                continue
            if rec.state == "done" and rec.output is not None:
                with trio.CancelScope(shield=True):  # paid for: on disk even when the map is being stopped
                    await self._done(shard, rec)
                continue
            self.retries += 1
            b58 = to_base58(chosen.peer_id)
            why = setback(shard, chosen.peer_id, state=rec.state, outcome=rec.outcome, overran=b58 in rec.overran,
                          declined=rec.declines.get(b58, ""))
            self.emit({"event": "shard", "shard": shard.index, "state": "retry", "provider": rec.peer, "why": why,
                       "outcome": shard.last, "attempt": shard.attempts})
            if why == "busy":
                await trio.sleep(BUSY_WAIT_S)
            try:
                self.send.send_nowait(shard)
            except trio.ClosedResourceError:
                return  # another shard already failed the job

    async def _done(self, shard: Shard, rec: JobRecord) -> None:
        """A verified shard: on disk before it counts."""
        assert rec.output is not None
        service, peer = self.service, rec.peer
        async with self.saving:
            await trio.to_thread.run_sync(service._save, self.folder, self.state, shard, rec.output.arrays, rec.job, peer)
            service.shards_saved += 1
            service.on_saved()
        self.done[shard.index] = dict(rec.output.arrays)
        self.by_provider[peer] = self.by_provider.get(peer, 0) + shard.rows
        self.jobs.append(rec.job)
        self.checked += checked_rows(rec.events)
        self.remaining -= 1
        made = rec.output.arrays.get("length") if self.job.workload == "generate" else None
        extra = {} if made is None else {"tokens": int(made.sum()),  # this provider's speed on this shard
                                         "tokens_per_s": round(int(made.sum()) / max(1e-3, rec.kernel_ms / 1000), 1)}
        self.emit({"event": "shard", "shard": shard.index, "state": "done", "rows": shard.rows, "provider": peer, **extra,
                   "outcome": rec.outcome, "done": len(self.done), "shards": len(self.shards),
                   "rows_done": sum(self.shards[i].rows for i in self.done),
                   "rows_per_s": round(sum(self.by_provider.values()) / max(1e-9, service.now() - self.started), 1)})
        if self.remaining == 0:
            self.send.close()


def _assemble(job: ModelJob | GenerationJob, done: dict[int, dict[str, np.ndarray]], shards: list[Shard]) -> dict[str, np.ndarray]:
    """The shards' outputs as one, in the user's row order (a bucketed job's rows put back; an
    output with a token axis padded with zeros to the longest shard's)."""
    return job.restore({k: concat_padded([done[i][k] for i in range(len(shards))]) for k in done[0]})


def _read_done(folder: Path, shards: list[Shard]) -> dict[int, dict[str, np.ndarray]]:
    """The outputs of the shards an earlier run finished (and that read back whole)."""
    done: dict[int, dict[str, np.ndarray]] = {}
    for i_str, meta in MapService._load(folder).items():
        try:
            i, name = int(i_str), str(meta["file"])
        except (ValueError, TypeError, KeyError):
            continue
        if 0 <= i < len(shards) and "/" not in name:
            arrays = _read_shard(folder / name, shards[i].rows)
            if arrays is not None:
                done[i] = arrays
    return done


def _forget(folder: Path) -> None:
    """Drop what earlier runs of a map kept (``fresh``): its state first, then its shards."""
    for path in [folder / LEGACY_STATE, folder / STATE_LOG, *sorted(folder.glob("shard-*.npz"))]:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _append_line(path: Path, line: bytes) -> None:
    """Append ``line`` to ``path`` and fsync it (and the folder, when the file is new). A torn line
    left by a kill mid-write is ended first, so it never runs into the new one."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        size = os.fstat(fd).st_size
        torn = size > 0 and os.pread(fd, 1, size - 1) != b"\n"
        os.write(fd, (b"\n" if torn else b"") + line + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    if size == 0:
        _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic(path: Path, write: Callable[[Any], None]) -> None:
    """Write ``path`` whole or not at all: into a temporary file of a name of its own beside it,
    fsynced, then renamed over ``path``."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def _read_shard(path: Path, rows: int) -> dict[str, np.ndarray] | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError):
        return None
    if not arrays or any(len(a) != rows for a in arrays.values()):
        return None
    return arrays
