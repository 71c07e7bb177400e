"""The requester's side of ``/p2pnode/job/1`` on the node: the driver of one
:class:`~p2pnode.protocol.job_pipeline.RequesterPipeline` per job.

:meth:`JobRequester.submit` checks the job, picks up to K providers (and reserves) from the
capacity table, calibrates those met for the first time, seals the inputs into blobs, and then
drives the pipeline: the conversation with the providers over streams
(:class:`~p2pnode.services.conversation.Conversation`), the verdict's questions (the output
opened here, checks run by :class:`~p2pnode.services.checks.Checks`), and what the job leaves in
the ledger. Every decision on the way (whom to ask, award, re-award, check, blame, pay) is the
pipeline's, the same the simulator drives.

Collaborators: this node's identity, ``now``, the capacity table, ``is_banned``, the
:class:`~p2pnode.services.ports.Judge` (reputation, check policy, ledger, gossip), the blob service
(inputs out, large outputs in), ``streams`` to reach providers, ``penalise`` and the job book. It
owns its bid scorer and its :class:`~p2pnode.services.checks.Checks`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable, Mapping
from functools import partial
from typing import Any

import numpy as np
import trio

from p2pnode.errors import LocalError
from p2pnode.exec import workloads
from p2pnode.exec.workloads import Output
from p2pnode.identity import Identity
from p2pnode.market import selection
from p2pnode.market.capacity_table import CapacityTable
from p2pnode.market.scoring import ObservedScorer
from p2pnode.market.standing import Standing
from p2pnode.protocol import calibration
from p2pnode.protocol.job_pipeline import Order, RequesterPipeline
from p2pnode.protocol.requester_actions import Action, Charge, OpenOutput, OpenState, Question, Send
from p2pnode.services import operations
from p2pnode.services.blobs import BlobService
from p2pnode.services.checks import Checks, carry_out
from p2pnode.services.conversation import Conversation
from p2pnode.services.ports import IsBanned, Judge, Now, Penalise, Streams
from p2pnode.services.records import JobRecord, JobRecords, event_item
from p2pnode.verify import tokens
from p2pnode.verify.check import Comparison, freivalds_check
from p2pnode.wire import codec, merkle, sealing
from p2pnode.wire import job as m
from p2pnode.wire.blob import MAX_BLOB, BlobError, BlobUnavailable, Manifest, manifest_for
from p2pnode.wire.peer_id import to_base58

log = logging.getLogger("p2pnode.jobs")
OVERDUE_GRACE_S = 10.0  # an award overruns at three times its bid's estimate plus this
MAX_LOCKED = 4096
Sealed = tuple[bytes, Manifest]  # an encrypted input blob and its manifest
RESERVES = 2  # candidates held in reserve, in batches of K, for when the first K do not answer


class JobError(LocalError):
    """A job could not be submitted or did not complete (no provider, deadline, ...)."""



def _encrypt(array: np.ndarray, key: bytes) -> Sealed:
    """An input array encrypted under its blob key, with its manifest (blocking)."""
    data = sealing.lock_with(np.ascontiguousarray(array).data.cast("B"), key)  # from where it is: no copy
    return data, manifest_for(data)

class JobRequester:
    def __init__(self, *, identity: Identity, now: Now, table: CapacityTable, is_banned: IsBanned, judge: Judge,
                 blobs: BlobService, streams: Streams, penalise: Penalise, records: JobRecords,
                 calibrate_providers: bool = True, spent: Callable[[], int] = lambda: 0, budget: int = 0,
                 on_end: Callable[[JobRecord], None] = lambda rec: None) -> None:
        """``budget``: the most this node spends on jobs in all (µcredits; 0: no cap), against
        ``spent`` (what its receipts say it paid so far)."""
        self.spent, self.budget, self.on_end = spent, budget, on_end
        self.identity, self.now, self.table, self.is_banned = identity, now, table, is_banned
        self.judge, self.blobs, self.streams, self.penalise, self.records = judge, blobs, streams, penalise, records
        self.scorer = ObservedScorer(reputation=judge.adjust)
        self._salt = identity.peer_id  # orders equal-cost candidates differently on each node
        self._draws = 0
        self._secret = sealing.blob_secret(identity.seed)
        self._locked: dict[bytes, bytes] = {}  # blob key -> blob id, for data encrypted before
        self.runs = operations.Runs("job")  # jobs asked for on their own, running now
        self.checks = Checks(me=identity.peer_id, now=now, judge=judge, candidates=self.candidates,
                             submit=self.submit, latency_ms=self._latency_ms,
                             calibrate_providers=calibrate_providers)

    def _seal(self, array: np.ndarray, digest: bytes | None = None) -> tuple[bytes, bytes | None, Sealed | None]:
        """(key, the blob id when this data is encrypted and kept already, else the new blob and
        its manifest): an input array encrypted (blocking: off the trio thread; the store is
        touched on the trio thread only). The same data is encrypted once while its blob is held:
        a dataset's model, rows sent again. ``digest``: the array's SHA-256, where the caller has
        it (a map's model, hashed once for all its shards), so it is not hashed again."""
        memory = np.ascontiguousarray(array).data.cast("B")  # encrypted from where it is: no copy
        key = sealing.blob_key_for(digest, self._secret) if digest is not None \
            else sealing.blob_key(memory, self._secret)
        known = self._locked.get(key)
        if known is not None and known in self.blobs.store:
            return key, known, None
        return key, None, _encrypt(array, key)

    async def _lock(self, array: np.ndarray, digest: bytes | None = None, *,
                    transient: bool = False) -> tuple[bytes, bytes]:
        """(key, blob id) of an input array, encrypted into the blob store and held there until
        :meth:`_unlock` (the job's provider has yet to fetch it). ``transient``: no later job is
        known to reuse it (a dataset's shard): once released, it is kept within the store's
        transient budget only."""
        key, blob_id, sealed = await trio.to_thread.run_sync(self._seal, array, digest)
        if blob_id is not None and blob_id in self.blobs.store:  # kept already (not dropped meanwhile)
            self.blobs.store.hold(blob_id)
            return key, blob_id
        if sealed is None:  # it was dropped while we looked: encrypted again
            sealed = await trio.to_thread.run_sync(_encrypt, array, key)
        blob_id = self.blobs.store.put(*sealed, transient=transient, hold=True)
        self._locked[key] = blob_id
        while len(self._locked) > MAX_LOCKED:
            self._locked.pop(next(iter(self._locked)))
        return key, blob_id

    def _unlock(self, blob_ids: list[bytes]) -> None:
        for blob_id in blob_ids:
            self.blobs.store.release(blob_id)

    def _latency_ms(self, peer: bytes) -> float:
        seen = self.scorer.seen.get(peer)
        return seen.latency_ms if seen else 0.0

    def candidates(self, workload: str, need: int, k: int, backend: str, reserves: int = 0) -> list[Any]:
        """Up to ``k`` ads to ask for bids on ``workload`` (on ``backend``) with ``need`` bytes free,
        then up to ``reserves`` more to ask if those do not answer (``market.selection``); never
        this node, a banned peer or a distrusted one."""
        me, now = self.identity.peer_id, self.now()
        ads = [e.ad for e in self.table.entries(now) if e.ad.peer_id != me and not self.is_banned(e.ad.peer_id)
               and not self.judge.distrusted(e.ad.peer_id)]
        standing = self.table.standing

        def aside(ad: Any) -> bool:
            return standing.is_aside(ad.peer_id, now) or (
                self.table.standing_of(ad.peer_id) is Standing.UNPROVEN and standing.addresses_dead(ad.addrs, now))

        ranked = selection.rank(ads, selection.Want(workload, need, backend), standing=self.table.standing_of,
                                aside=aside, salt=self._salt, source=self.table.source_of)
        self._draws += 1
        return selection.pick(ranked, k, aside=aside, draw=self._salt + self._draws.to_bytes(8, "big"),
                              reserves=reserves)

    async def submit(self, workload: str, params: dict[str, Any], *, max_price: int, deadline_s: float,
                     k: int = 3, backend: str = "", verify: str = "auto", bid_window_s: float = 2.0,
                     on_event: Callable[[dict[str, Any]], None] | None = None,
                     inputs: dict[str, np.ndarray] | None = None, only: list[Any] | None = None,
                     purpose: str = "job", hangup: operations.Hangup | None = None,
                     keep: Callable[[JobRecord], Awaitable[None]] | None = None,
                     digests: Mapping[str, bytes] | None = None) -> JobRecord:
        """Run a job on the network. ``only`` restricts the auction to these ads (checks and
        calibration); ``purpose`` other than ``job`` marks such internal jobs, which are not
        themselves re-checked. ``keep`` is awaited (shielded) with the job's record, its output
        accepted, before the provider is sent the receipt that pays it: what it writes to disk is
        there before anything is paid, so a requester killed at any moment never pays twice for
        one output (a map's or a training's shard). ``digests``: the SHA-256 of some inputs, where
        the caller has it (a map's model, the same in every shard), so they are not hashed again.

        A job asked for on its own (not a part of a map, a check or a calibration, which are
        charged to what they are part of) is a run: ``p2pnode cancel`` or ``hangup`` stops it, its
        provider is told at once, and the record says ``cancelled``. Its record's ``paid`` holds
        what it cost in all: its price, its checks, the calibration of providers met for it."""
        job_id = os.urandom(16)
        kw: dict[str, Any] = {"max_price": max_price, "deadline_s": deadline_s, "k": k, "backend": backend,
                              "verify": verify, "bid_window_s": bid_window_s, "on_event": on_event, "inputs": inputs,
                              "only": only, "purpose": purpose, "keep": keep, "digests": digests}
        if operations.current() is not None:  # a part of a larger request, which pays for it
            return await self._submit(job_id, workload, params, **kw)
        rec: JobRecord | None = None
        with operations.spending() as account, self.runs.open(job_id.hex(), account, self.now(), hangup) as run:
            rec = await self._submit(job_id, workload, params, **kw)
        rec = rec or self.records.find(job_id.hex())
        if rec is None:
            raise JobError(f"job {job_id.hex()[:16]} cancelled ({run.reason}) before it was sent to a provider; "
                           f"{account.describe()}")
        rec.paid = account.to_json()
        if run.cancelled and rec.state == "cancelled":
            rec.outcome, rec.ended = f"cancelled: {run.reason}", self.now()
            log.info("job %s: cancelled as requester of %s (%s); %s", rec.job[:8], rec.workload, run.reason,
                     account.describe())
            self.on_end(rec)
        return rec

    async def _submit(self, job_id: bytes, workload: str, params: dict[str, Any], *, max_price: int,
                      deadline_s: float, k: int, backend: str, verify: str, bid_window_s: float,
                      on_event: Callable[[dict[str, Any]], None] | None, inputs: dict[str, np.ndarray] | None,
                      only: list[Any] | None, purpose: str,
                      keep: Callable[[JobRecord], Awaitable[None]] | None = None,
                      digests: Mapping[str, bytes] | None = None) -> JobRecord:
        """The driver of one job's :class:`RequesterPipeline`: the order, whom to ask, the
        conversation, and what the job leaves (every decision is the pipeline's)."""
        wl = workloads.get(workload)
        checked = wl.check(params)
        arrays = workloads.check_inputs(wl, checked, inputs)
        self._refuse(deadline_s, max_price)
        early: list[dict[str, Any]] = []
        asked, reserves = await self._whom(workload, wl.memory(checked), k, backend, only, purpose, max_price,
                                           _Events(early, on_event))
        keys, blob_ids = await self._lock_inputs(arrays, digests or {})
        try:
            order = Order(workload, checked, max_price, deadline_s, backend,
                          self.judge.verify_method(workload) if verify == "auto" else verify, purpose,
                          wl.flops(checked), arrays, keys, tuple(blob_ids),
                          sum(int(a.nbytes) for a in arrays.values()), bid_window_s, overdue_grace_s=OVERDUE_GRACE_S)
            started = self.now()
            rec = self.records.add(JobRecord(job_id.hex(), "requester", workload, checked, started=started,
                                             purpose=purpose))
            operations.started(rec.job)
            rec.events.extend(early)
            event = _Events(rec.events, on_event, lambda: round(self.now() - rec.started, 3))
            pipe = RequesterPipeline(me=self.identity.peer_id, key=self.identity.signing_key, order=order, asked=asked,
                                     reserves=reserves, job_id=job_id, nonce=os.urandom(16), now=started,
                                     scorer=self.scorer, standing=self.table.standing,
                                     checkers=self.checks.checkers(workload, backend), outputs=Comparison(workload),
                                     rng=self.checks.rng, on_event=event)
            first = pipe.start(started)
            if blob_ids:
                event("upload", {"blobs": len(blob_ids), "bytes": order.input_bytes})
            prepared = _Prepared()  # Freivalds' check needs A and B: a seeded job's are made while providers work
            background = [partial(prepared.start, make=lambda: dict(zip("ab", workloads.matmul_inputs(checked))))] \
                if order.policy == "freivalds" and workload == "matmul" and not arrays else []
            kept = False

            async def before_send(action: Send) -> None:
                nonlocal kept
                if keep is None or kept or not isinstance(action.msg, m.Receipt) or not action.msg.body["accepted"]:
                    return
                rec.state = pipe.state
                _ended(rec, pipe)
                if rec.output is not None:
                    kept = True
                    with trio.CancelScope(shield=True):
                        await keep(rec)

            talk = Conversation(pipe, now=self.now, streams=self.streams, penalise=self.penalise, name=rec.job[:8],
                                answer=partial(self._answer, pipe, order, prepared, event), carry=self._carry,
                                before_send=before_send)
            closed = False
            try:
                await talk.run(first, background)
            finally:
                rec.state, rec.ended = pipe.state, self.now()
                if kept and pipe.terminal:  # an output kept is paid for and remembered, even as the run stops
                    closed = True
                    _ended(rec, pipe)
                    with trio.CancelScope(shield=True):
                        await talk.carry(pipe.close(self.now()))
            if not closed:
                _ended(rec, pipe)
                with trio.CancelScope(shield=True):
                    await talk.carry(pipe.close(self.now()))
            log.info("job %s: %s as requester of %s%s on %s: %s (price %d)", rec.job[:8], rec.state, rec.workload,
                     f" ({rec.purpose})" if rec.purpose != "job" else "", rec.peer or "-", rec.outcome, rec.price)
            self.on_end(rec)
            return rec
        finally:
            self._unlock(blob_ids)  # the job is over: its inputs may go (within the transient budget)

    def _refuse(self, deadline_s: float, max_price: int) -> None:
        """A job that cannot run, refused before anything is sent."""
        if deadline_s <= 0:
            raise JobError("the deadline is already past")
        if max_price <= 0:
            raise JobError("--max-price must be at least 1 µcr: every provider charges at least 1 for a job")
        if self.budget and self.spent() + max_price > self.budget:
            raise JobError(f"over budget: {self.spent()} of {self.budget} µcredits spent, and this job may cost "
                           f"up to {max_price} (raise --budget, or lower --max-price)")

    async def _whom(self, workload: str, need: int, k: int, backend: str, only: list[Any] | None, purpose: str,
                    max_price: int, event: _Events) -> tuple[list[Any], list[Any]]:
        """(the candidates asked first, the reserves): from the market, after calibrating the
        providers met for the first time (all at once: the slowest sets the wait; each may cost
        what this job may cost, or is left for a larger job); or the ads in ``only``."""
        if only is not None:
            ads = [ad for ad in only if ad.peer_id != self.identity.peer_id]
            first = len(ads)
        else:
            ads = self.candidates(workload, need, k, backend, reserves=RESERVES * k)
            fresh = calibration.first_contact(ads, k, purpose, self.checks.needs_calibration)
            if fresh:
                async with trio.open_nursery() as nursery:
                    for ad in fresh:
                        nursery.start_soon(self.checks.calibrate, ad, event, max_price)
                ads = self.candidates(workload, need, k, backend, reserves=RESERVES * k)
            first = k
        if not ads:
            raise JobError(f"no provider in the market offers {workload}" + (f" on {backend}" if backend else ""))
        return ads[:first], ads[first:]

    async def _lock_inputs(self, arrays: dict[str, np.ndarray],
                           digests: Mapping[str, bytes]) -> tuple[dict[str, bytes], list[bytes]]:
        """(each input's key, the blob ids in input-name order): inputs travel as encrypted blobs
        that the awarded provider fetches from this node, held until the job ends (``_unlock``)."""
        keys: dict[str, bytes] = {}
        blob_ids: list[bytes] = []
        try:
            for name in sorted(arrays):
                key, blob_id = await self._lock(arrays[name], digests.get(name),
                                                transient=name not in workloads.REUSED_INPUTS)
                blob_ids.append(blob_id)
                keys[name] = key
        except BaseException:
            self._unlock(blob_ids)
            raise
        return keys, blob_ids

    async def _answer(self, pipe: RequesterPipeline, order: Order, prepared: _Prepared, event: _Events,
                      question: Question) -> list[Action]:
        """Answer the verdict's question: open the output (or a committed state) here, or run a
        check elsewhere or here."""
        if isinstance(question, OpenState):  # the blob id is checked chunk by chunk on the way
            try:
                data = await self.blobs.fetch(question.peer, question.blob, max_size=MAX_BLOB)
            except (BlobUnavailable, BlobError) as exc:
                return pipe.state_opened(None, str(exc), self.now())
            return pipe.state_opened(data, "", self.now())
        if not isinstance(question, OpenOutput):
            return await self.checks.answer(pipe, question, workload=order.workload, backend=order.backend,
                                            max_price=order.max_price)
        try:
            ok, detail, output, method = await self._open(question, order, order.inputs or await prepared.get(), event)
        except BlobUnavailable as exc:  # its provider is gone: re-award, pay nothing
            return pipe.unavailable(f"output unavailable: {exc}", self.now())
        return pipe.opened(ok, detail, output, method, self.now())

    async def _carry(self, action: Action) -> None:
        if isinstance(action, Charge):
            operations.charge(action.purpose, action.amount)
        else:
            await carry_out(self.judge, action)

    async def _open(self, question: OpenOutput, order: Order, arrays: dict[str, np.ndarray],
                    event: _Events) -> tuple[bool, str, Output | None, str]:
        """Open and check a result: (accepted, outcome, output, method of the check that ran)."""
        result, params = question.result, order.params
        sealed = result.body["output"]
        if result.body["blob"]:
            try:
                t0 = trio.current_time()
                sealed = await self.blobs.fetch(result.body["provider"], result.body["blob"])
                event("download", {"bytes": len(sealed), "seconds": round(trio.current_time() - t0, 3)})
            except BlobError as exc:  # a bad manifest or chunk: the provider's fault (penalised)
                return False, f"output blob: {exc}", None, ""
        key = self.identity.signing_key

        def open_output() -> tuple[Output, bytes]:  # in a thread: 16 MiB take ~50 ms, the node goes on
            output = Output.from_wire(codec.decode(sealing.unseal(sealed, key), max_size=MAX_BLOB))
            return output, output.digest

        try:
            output, digest = await trio.to_thread.run_sync(open_output)
        except Exception as exc:  # noqa: BLE001 - anything unreadable is a rejected result
            return False, f"unreadable output: {type(exc).__name__}", None, "digest"
        if digest != result.body["digest"]:
            return False, "digest does not match the output", output, "digest"
        if question.check == "freivalds":
            rounds = self.judge.freivalds_rounds
            ok, detail = await trio.to_thread.run_sync(lambda: freivalds_check(
                params, output, rounds=rounds, rng=np.random.default_rng(), inputs=arrays or None))
            return ok, detail, output, "freivalds"
        if question.check in ("rows", "tokens"):  # the signed commitment must cover exactly the rows sent
            check = question.check
            try:
                root = await trio.to_thread.run_sync(merkle.rows_root, output.arrays)
            except ValueError:
                return False, "output is not one row per input row", output, check
            rows = params.get("rows", params.get("prompts"))
            if result.body["root"] != root or any(len(a) != rows for a in output.arrays.values()):
                return False, "the signed row commitment does not match the rows sent", output, check
            if check == "tokens":  # each prompt's row well formed before any is sampled
                why = tokens.structure(output.arrays, params["prompts"], params["max_new"], params["kv"][3],
                                       params["eos"], params["fp_k"])
                if why:
                    return False, f"malformed generation: {why}", output, check
        return True, "accepted (unchecked)", output, ""


def _ended(rec: JobRecord, pipe: RequesterPipeline) -> None:
    """What the job's record says once it is over."""
    job = pipe.job
    rec.overran = [to_base58(p) for p in job.overran]
    rec.declines = {to_base58(p): code for p, code in job.declines.items()}
    rec.outcome, rec.price, rec.checked = pipe.outcome, pipe.price, pipe.checked
    if job.provider is not None:
        rec.peer = to_base58(job.provider)
    if job.result is not None:
        rec.kernel_ms, rec.backend = job.result.body["kernel_ms"], job.result.body["backend"]
    if pipe.verdict is not None and pipe.verdict.settled is not None:
        rec.output, rec.result_raw = pipe.output, job.result.raw if job.result is not None else b""


class _Events:
    """A job's events: kept (``p2pnode jobs`` shows them) and passed on to the caller's
    ``on_event``, timed from the job's start when ``t`` is given."""

    def __init__(self, kept: list[dict[str, Any]], on_event: Callable[[dict[str, Any]], None] | None,
                 t: Callable[[], float] | None = None) -> None:
        self.kept, self.on_event, self.t = kept, on_event, t

    def __call__(self, what: str, data: dict[str, object]) -> None:
        item = event_item(what, data, **({"t": self.t()} if self.t is not None else {}))
        self.kept.append(item)
        if self.on_event is not None:
            self.on_event(item)


class _Prepared:
    """Arrays made in a worker thread while the job runs; empty if making them failed (the check
    then makes its own) or none was asked for."""

    def __init__(self) -> None:
        self._done: trio.Event | None = None
        self._value: dict[str, np.ndarray] = {}

    def start(self, nursery: trio.Nursery, make: Callable[[], dict[str, np.ndarray]]) -> None:
        self._done = trio.Event()
        nursery.start_soon(self._run, make, self._done)

    async def _run(self, make: Callable[[], dict[str, np.ndarray]], done: trio.Event) -> None:
        try:
            self._value = await trio.to_thread.run_sync(make)
        except Exception as exc:  # noqa: BLE001 - a preparation, not the check: it runs again there
            log.info("preparing the check's inputs failed: %s", exc)
        finally:
            done.set()

    async def get(self) -> dict[str, np.ndarray]:
        if self._done is not None:
            await self._done.wait()
        return self._value
