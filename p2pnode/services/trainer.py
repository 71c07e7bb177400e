"""Training jobs: someone's own model trained across providers in data-parallel rounds
(``specs/training.md``).

:meth:`TrainService.run` cuts the rows into K shards. Each round it sends the round's weights
(sealed blobs, which a provider that took the shard before keeps by content id, like the rows) to
K providers, one shard each; each runs H local steps (the ``train`` workload) and returns its
weights with a commitment to its state after every step. Every result is checked as the ``steps``
policy says (:mod:`p2pnode.protocol.step_checks`, inside the verdict machine): sampled steps are
re-run by an independent checker from the provider's own committed states, a disagreement is
bisected to one step that a referee re-runs, and a provider caught is not paid, goes to the
ledger and reputation like any cheater, and its shard is trained again by another provider in
the same round. A provider that fails or stalls is replaced the same way. Then the requester takes
the outer step (:mod:`p2pnode.protocol.rounds`) and writes a checkpoint.

**Resumable.** Under ``<state_dir>/<train id>/`` each shard's verified weights are written
(fsynced, atomically) as soon as they are in, and the checkpoint after every round; the train id
is a digest of the model, its start, the data and every setting. Run the same command again after
a crash or a Ctrl-C and it goes on from the last checkpoint and the shards of the round under way
that were done: nothing is run or paid for twice. ``fresh`` starts again from round 1.

Collaborators: ``submit`` and ``candidates`` (the requester's), ``now``, the state directory and
the job book.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import trio

from p2pnode.errors import LocalError, unwrap_group
from p2pnode.exec import train_model as tm
from p2pnode.protocol import rounds
from p2pnode.services import operations
from p2pnode.services.mapper import _atomic
from p2pnode.services.operations import AlreadyRunning, Hangup, Run, Spending
from p2pnode.services.ports import Now
from p2pnode.services.records import JobRecord, JobRecords
from p2pnode.wire.peer_id import to_base58

log = logging.getLogger("p2pnode.train")
Submit = Callable[..., Awaitable[Any]]
Candidates = Callable[[str, int, int, str], list[Any]]
Event = Callable[[dict[str, Any]], None]


class TrainError(LocalError):
    """A training job that could not go on (a shard that no provider left could train)."""


class TrainCancelled(TrainError):
    """A training job stopped by ``p2pnode cancel`` or by its client going away."""


@dataclass
class TrainResult:
    train_id: str
    weights: np.ndarray
    rounds: int
    resumed_from: int  # rounds done by an earlier run
    losses: list[float]  # the loss over all rows after each round (every round so far)
    seconds: float
    by_provider: dict[str, int] = field(default_factory=dict)  # shard-rounds trained per provider (this run)
    retries: int = 0
    caught: list[str] = field(default_factory=list)  # providers whose result a check refused
    jobs: list[str] = field(default_factory=list)
    paid: dict[str, int] = field(default_factory=dict)
    folder: str = ""

    def summary(self) -> dict[str, Any]:
        return {"train": self.train_id, "rounds": self.rounds, "resumed_from": self.resumed_from,
                "losses": [round(v, 6) for v in self.losses], "loss": round(self.losses[-1], 6) if self.losses else None,
                "seconds": round(self.seconds, 3), "by_provider": self.by_provider, "retries": self.retries,
                "caught": self.caught, "jobs": self.jobs, "paid": self.paid, "state_dir": self.folder}


class TrainService:
    def __init__(self, *, submit: Submit, candidates: Candidates, now: Now, state_dir: Path,
                 records: JobRecords | None = None, on_saved: Callable[[], None] = lambda: None) -> None:
        """``on_saved``: called after each round's checkpoint is on disk (the node wakes its waiters)."""
        self.submit, self.candidates, self.now, self.state_dir = submit, candidates, now, state_dir
        self.records = records if records is not None else JobRecords()
        self.runs = operations.Runs("train")
        self.on_saved = on_saved
        self.rounds_saved = 0  # checkpoints written, in every training job since start

    async def run(self, plan: rounds.Plan, weights: np.ndarray, x: np.ndarray, y: np.ndarray, *, max_price: int,
                  deadline_s: float, on_event: Event | None = None, fresh: bool = False,
                  hangup: Hangup | None = None) -> TrainResult:
        """Train ``weights`` on ``x``, ``y`` as ``plan`` says. ``max_price`` is for the whole job:
        each shard of each round may pay its share; ``deadline_s`` is per shard-round."""
        share = max_price // (plan.rounds * plan.shards)
        if share < 1:
            raise TrainError(f"--max-price {max_price} leaves less than 1 µcr for each of {plan.rounds} rounds × "
                             f"{plan.shards} providers")
        if len(x) < plan.shards:
            raise TrainError(f"{len(x)} rows cannot be cut into {plan.shards} shards")
        tid = rounds.job_id(plan, weights, x, y)
        folder = self.state_dir / tid
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(folder / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise AlreadyRunning(f"training {tid} is already running: wait for it, or stop it with "
                                     f"`p2pnode cancel {tid}`") from None
            with operations.spending() as account:
                return await self._run_locked(plan, weights, x, y, tid, folder, share=share, deadline_s=deadline_s,
                                              emit=on_event or (lambda e: None), fresh=fresh, hangup=hangup,
                                              account=account)
        finally:
            os.close(fd)

    async def _run_locked(self, plan: rounds.Plan, weights: np.ndarray, x: np.ndarray, y: np.ndarray, tid: str,
                          folder: Path, *, share: int, deadline_s: float, emit: Event, fresh: bool,
                          hangup: Hangup | None, account: Spending) -> TrainResult:
        if fresh:
            await trio.to_thread.run_sync(_forget, folder)
        ck = await trio.to_thread.run_sync(_read_checkpoint, folder, weights.shape)
        started = self.now()
        rec = self.records.add(JobRecord(tid, "requester", "train", {"rounds": plan.rounds, "shards": plan.shards,
                                                                      "local_steps": plan.local_steps},
                                         started=started, state="running"))
        res = TrainResult(tid, ck.weights if ck else weights.astype(np.float32), plan.rounds,
                          ck.round if ck else 0, list(ck.losses) if ck else [], 0.0, folder=str(folder))
        momentum = ck.momentum if ck else np.zeros_like(weights, dtype=np.float32)
        emit({"event": "train", "train": tid, "rounds": plan.rounds, "resumed_from": res.resumed_from,
              "shards": plan.shards, "local_steps": plan.local_steps, "params": plan.spec.params})
        run: Run | None = None
        try:
            with self.runs.open(tid, account, started, hangup) as run:
                for r in range(res.resumed_from, plan.rounds):
                    res.weights, momentum = await self._round(plan, res, momentum, x, y, r, folder, share=share,
                                                              deadline_s=deadline_s, emit=emit)
        except TrainError as exc:
            rec.state, rec.outcome = "failed", str(exc)[:250]
            raise
        finally:
            rec.ended, rec.price, rec.paid = self.now(), account.total, account.to_json()
            res.paid, res.seconds = account.to_json(), self.now() - started
        if run is not None and run.cancelled:
            rec.state, rec.outcome = "cancelled", f"cancelled ({run.reason})"
            done = len(res.losses)
            raise TrainCancelled(f"training {tid} cancelled ({run.reason}) after round {done} of {plan.rounds}; "
                                 f"{account.describe()}; the same command resumes it")
        rec.state, rec.outcome = "done", f"{plan.rounds} rounds, loss {res.losses[-1]:.4g}; {account.describe()}"
        return res

    async def _round(self, plan: rounds.Plan, res: TrainResult, momentum: np.ndarray, x: np.ndarray, y: np.ndarray,
                     r: int, folder: Path, *, share: int, deadline_s: float,
                     emit: Event) -> tuple[np.ndarray, np.ndarray]:
        """One round: every shard trained and checked (those an earlier run finished read back),
        the outer step, the checkpoint."""
        t0 = self.now()
        bounds = rounds.shard_bounds(len(x), plan.shards)
        done = await trio.to_thread.run_sync(_read_shards, folder, r, plan.shards, res.weights.shape)
        state0 = tm.fresh_state(plan.spec, res.weights)
        busy: set[bytes] = set()
        losses: dict[int, float] = {}

        async def shard(i: int) -> None:
            a, b = bounds[i]
            done[i], losses[i] = await self._shard(plan, res, state0, x[a:b], y[a:b], r, i, folder, busy,
                                                   share=share, deadline_s=deadline_s, emit=emit)

        try:
            async with trio.open_nursery() as nursery:
                for i in range(plan.shards):
                    if i not in done:
                        nursery.start_soon(shard, i)
        except BaseExceptionGroup as group:  # a shard nobody could train: that error, not a group
            raise unwrap_group(group, first=True) from None
        weights, momentum = rounds.outer_step(plan, res.weights, [done[i] for i in range(plan.shards)], momentum)
        loss = await trio.to_thread.run_sync(tm.evaluate, plan.spec, weights, x, y)
        res.losses.append(loss)
        await trio.to_thread.run_sync(_write_checkpoint, folder, r + 1, weights, momentum, res.losses)
        self.rounds_saved += 1
        self.on_saved()
        seconds = max(1e-9, self.now() - t0)
        emit({"event": "round", "round": r + 1, "rounds": plan.rounds, "loss": round(loss, 6),
              "rows_per_s": round(plan.shards * plan.local_steps * plan.batch / seconds, 1),
              "step_loss": {str(i): round(v, 6) for i, v in sorted(losses.items())}, "seconds": round(seconds, 3)})
        return weights, momentum

    async def _shard(self, plan: rounds.Plan, res: TrainResult, state0: np.ndarray, x: np.ndarray, y: np.ndarray,
                     r: int, i: int, folder: Path, busy: set[bytes], *, share: int, deadline_s: float,
                     emit: Event) -> tuple[np.ndarray, float]:
        """Shard ``i`` of round ``r`` on one provider after another until a result passes its check."""
        params = plan.params(r, i, len(x))
        inputs = {"state": state0, "x": x, "y": y}
        tried: set[bytes] = set()
        while True:
            ads = [ad for ad in self.candidates("train", 0, 64, "") if ad.peer_id not in tried
                   and to_base58(ad.peer_id) not in res.caught]
            if not ads:
                raise TrainError(f"round {r + 1}, shard {i + 1}: no provider left to train it "
                                 f"({len(tried)} tried)")
            ad = next((a for a in ads if a.peer_id not in busy), ads[0])
            busy.add(ad.peer_id)
            tried.add(ad.peer_id)
            emit({"event": "shard", "round": r + 1, "shard": i, "state": "start", "provider": to_base58(ad.peer_id)})
            kept: list[np.ndarray] = []

            async def keep(rec: JobRecord) -> None:  # on disk before its receipt pays for it
                w = _weights(rec, res.weights.shape)
                if w is not None:
                    await trio.to_thread.run_sync(_write_shard, folder, r, i, w)
                    kept.append(w)

            try:
                t0 = self.now()
                rec = await self.submit("train", dict(params), inputs=inputs, only=[ad], k=1, verify="steps",
                                        max_price=share, deadline_s=deadline_s, keep=keep)
            finally:
                busy.discard(ad.peer_id)
            w = kept[0] if kept else _weights(rec, res.weights.shape)
            if w is not None:
                if not kept:
                    with trio.CancelScope(shield=True):  # paid for: on disk even when the run is being stopped
                        await trio.to_thread.run_sync(_write_shard, folder, r, i, w)
                res.by_provider[rec.peer] = res.by_provider.get(rec.peer, 0) + 1
                res.jobs.append(rec.job)
                step_losses = rec.output.extra.get("loss") or [float("nan")]
                emit({"event": "shard", "round": r + 1, "shard": i, "state": "done", "provider": rec.peer,
                      "checked": rec.checked, "outcome": rec.outcome, "loss": round(float(step_losses[-1]), 6),
                      "rows_per_s": round(plan.local_steps * plan.batch / max(1e-9, self.now() - t0), 1)})
                return w, float(step_losses[-1])
            res.retries += 1
            caught = rec.checked == "steps" and rec.state != "done"  # a result a step check refused
            if caught and rec.peer and rec.peer not in res.caught:
                res.caught.append(rec.peer)
            emit({"event": "shard", "round": r + 1, "shard": i, "state": "caught" if caught else "retry",
                  "provider": rec.peer or to_base58(ad.peer_id), "outcome": rec.outcome, "job": rec.job})


def _weights(rec: JobRecord, shape: tuple[int, ...]) -> np.ndarray | None:
    """A done result's weights, if they are weights of this model (a result accepted unchecked,
    for want of a checker, may hold anything)."""
    w = rec.output.arrays.get("weights") if rec.state == "done" and rec.output is not None else None
    if w is None or w.shape != shape or w.dtype != np.float32:
        return None
    return np.asarray(w)


@dataclass
class _Checkpoint:
    round: int
    weights: np.ndarray
    momentum: np.ndarray
    losses: np.ndarray


def _write_checkpoint(folder: Path, r: int, weights: np.ndarray, momentum: np.ndarray, losses: list[float]) -> None:
    """The state after round ``r`` (atomically), then the shards of that round are dropped."""
    _atomic(folder / "checkpoint.npz", lambda f: np.savez(
        f, round=np.int64(r), weights=weights, momentum=momentum, losses=np.asarray(losses, np.float64)))
    for path in folder.glob(f"round-{r - 1:06d}-*.npy"):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _read_checkpoint(folder: Path, shape: tuple[int, ...]) -> _Checkpoint | None:
    try:
        with np.load(folder / "checkpoint.npz", allow_pickle=False) as z:
            ck = _Checkpoint(int(z["round"]), z["weights"], z["momentum"], z["losses"])
    except (OSError, ValueError, KeyError):
        return None
    if ck.weights.shape != shape or ck.momentum.shape != shape or len(ck.losses) != ck.round:
        return None
    return ck


def _write_shard(folder: Path, r: int, i: int, weights: np.ndarray) -> None:
    _atomic(folder / f"round-{r:06d}-{i:04d}.npy", lambda f: np.save(f, weights))


def _read_shards(folder: Path, r: int, shards: int, shape: tuple[int, ...]) -> dict[int, np.ndarray]:
    """The shards of round ``r`` an earlier run finished (and that read back whole)."""
    out = {}
    for i in range(shards):
        try:
            w = np.load(folder / f"round-{r:06d}-{i:04d}.npy", allow_pickle=False)
        except (OSError, ValueError):
            continue
        if w.shape == shape and w.dtype == np.float32:
            out[i] = w
    return out


def _forget(folder: Path) -> None:
    for path in [folder / "checkpoint.npz", *folder.glob("round-*.npy")]:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
