"""The requester's side of ``/p2pnode/job/1``: the shell around :class:`RequesterJob`.

:meth:`JobRequester.submit` picks up to K providers from the capacity table, runs the auction,
re-awards on failure, verifies the result (digest, Freivalds for matmul, re-runs by independent
checkers, see :mod:`p2pnode.services.checks`) and signs the receipt. Providers that send malformed
or out-of-order messages are penalised; what one provider does wrong ends its part, never the job.

Collaborators: this node's identity, ``now``, the capacity table, ``is_banned``, the
:class:`~p2pnode.services.ports.Judge` (reputation, check policy, ledger, gossip), the blob service
(inputs out, large outputs in), ``streams`` to reach providers, ``penalise`` and the job book. It
owns its bid scorer and its :class:`~p2pnode.services.checks.Checks`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

import numpy as np
import trio

from p2pnode.errors import LocalError, PeerError
from p2pnode.exec import workloads
from p2pnode.exec.workloads import Output
from p2pnode.identity import Identity
from p2pnode.market import selection
from p2pnode.market.capacity_table import CapacityTable
from p2pnode.market.rate_limit import TokenBuckets
from p2pnode.market.scoring import ObservedScorer
from p2pnode.market.standing import Standing
from p2pnode.net.framing import FramedStream, StreamGone
from p2pnode.protocol.job_requester import R, RequesterJob, Step
from p2pnode.services import operations
from p2pnode.services.blobs import BlobService
from p2pnode.services.checks import Checks
from p2pnode.services.ports import IsBanned, Judge, Now, Penalise, Streams, trio_deadline
from p2pnode.services.records import JobRecord, JobRecords, event_item, remember_receipt
from p2pnode.telemetry.calibrate import speed_for
from p2pnode.verify.check import freivalds_check
from p2pnode.wire import codec, merkle, sealing
from p2pnode.wire import job as m
from p2pnode.wire.blob import MAX_BLOB, BlobError, BlobUnavailable
from p2pnode.wire.names import JOB_PROTOCOL
from p2pnode.wire.peer_id import to_base58

log = logging.getLogger("p2pnode.jobs")
OVERDUE_GRACE_S = 10.0
MAX_LOCKED = 4096
# A provider sends a bid, a result and progress every wire.job.HEARTBEAT_S: more than this is a flood.
PROVIDER_BURST, PROVIDER_RATE = 64, 10.0
RESERVES = 2  # candidates held in reserve, in batches of K, for when the first K do not answer


class JobError(LocalError):
    """A job could not be submitted or did not complete (no provider, deadline, ...)."""


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

    def _lock(self, array: np.ndarray) -> tuple[bytes, bytes]:
        """(key, blob id) of an input array, encrypted into the blob store (off the trio thread).
        The same data is encrypted once while its blob is held: a dataset's model, rows sent again."""
        key = sealing.blob_key(np.ascontiguousarray(array).data.cast("B"), self._secret)
        known = self._locked.get(key)
        if known is not None and known in self.blobs.store:
            return key, known
        blob_id = self.blobs.store.put(sealing.lock_with(array.tobytes(), key))
        self._locked[key] = blob_id
        while len(self._locked) > MAX_LOCKED:
            self._locked.pop(next(iter(self._locked)))
        return key, blob_id

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
                     purpose: str = "job", hangup: operations.Hangup | None = None) -> JobRecord:
        """Run a job on the network. ``only`` restricts the auction to these ads (checks and
        calibration); ``purpose`` other than ``job`` marks such internal jobs, which are not
        themselves re-checked.

        A job asked for on its own (not a part of a map, a check or a calibration, which are
        charged to what they are part of) is a run: ``p2pnode cancel`` or ``hangup`` stops it, its
        provider is told at once, and the record says ``cancelled``. Its record's ``paid`` holds
        what it cost in all: its price, its checks, the calibration of providers met for it."""
        job_id = os.urandom(16)
        kw: dict[str, Any] = {"max_price": max_price, "deadline_s": deadline_s, "k": k, "backend": backend,
                              "verify": verify, "bid_window_s": bid_window_s, "on_event": on_event, "inputs": inputs,
                              "only": only, "purpose": purpose}
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
                      only: list[Any] | None, purpose: str) -> JobRecord:
        wl = workloads.get(workload)
        checked = wl.check(params)
        arrays = workloads.check_inputs(wl, checked, inputs)
        if deadline_s <= 0:
            raise JobError("the deadline is already past")
        if max_price <= 0:
            raise JobError("--max-price must be at least 1 µcr: every provider charges at least 1 for a job")
        if self.budget and self.spent() + max_price > self.budget:
            raise JobError(f"over budget: {self.spent()} of {self.budget} µcredits spent, and this job may cost "
                           f"up to {max_price} (raise --budget, or lower --max-price)")
        early: list[dict[str, Any]] = []
        if only is None:
            ads = self.candidates(workload, wl.memory(checked), k, backend, reserves=RESERVES * k)
            fresh = [ad for ad in ads[:k] if self.checks.needs_calibration(ad)]
            if fresh and purpose == "job":
                def early_event(what: str, data: dict[str, object]) -> None:
                    item = event_item(what, data)
                    early.append(item)
                    if on_event is not None:
                        on_event(item)
                async with trio.open_nursery() as nursery:  # all at once: the slowest sets the wait
                    for ad in fresh:  # each costs at most what this job may cost, or is not done
                        nursery.start_soon(self.checks.calibrate, ad, early_event, max_price)
                ads = self.candidates(workload, wl.memory(checked), k, backend, reserves=RESERVES * k)
        else:
            ads = [ad for ad in only if ad.peer_id != self.identity.peer_id]
        first = ads[:k] if only is None else ads
        for ad in ads:
            backends = [o.backend for o in ad.offers if o.workload == workload]
            self.scorer.advertised[ad.peer_id] = (speed_for(dict(ad.speed), backends[0]) if backends else 0.0) \
                or max((v for _, v in ad.speed), default=0.0)
        if not ads:
            raise JobError(f"no provider in the market offers {workload}" + (f" on {backend}" if backend else ""))
        nonce = os.urandom(16)
        policy = self.judge.verify_method(workload) if verify == "auto" else verify
        public = {k: v for k, v in checked.items() if k not in m.PRIVATE_PARAMS}
        private: dict[str, Any] = {k: v for k, v in checked.items() if k in m.PRIVATE_PARAMS}
        blob_ids: list[bytes] = []
        if arrays:  # inputs travel as encrypted blobs that the awarded provider fetches from us
            private["keys"] = {}
            for name in sorted(arrays):
                key, blob_id = await trio.to_thread.run_sync(self._lock, arrays[name])
                blob_ids.append(blob_id)
                private["keys"][name] = key
        started = self.now()
        rfb = m.RequestForBids(job_id, workload, public, self.identity.peer_id, nonce, max_price,
                               int((started + deadline_s) * 1000), 0, backend, policy)
        rec = self.records.add(JobRecord(job_id.hex(), "requester", workload, checked, started=started,
                                         purpose=purpose))
        operations.started(rec.job)
        rec.events.extend(early)

        def event(what: str, data: dict[str, object]) -> None:
            item = event_item(what, data, t=round(self.now() - rec.started, 3))
            rec.events.append(item)
            if on_event is not None:
                on_event(item)

        machine = RequesterJob(self.identity.peer_id, self.identity.signing_key, rfb, [a.peer_id for a in first],
                               started, reserves=[a.peer_id for a in ads[len(first):]], bid_window_s=bid_window_s,
                               stall_s=max(15.0, 3 * m.HEARTBEAT_S), overdue_grace_s=OVERDUE_GRACE_S, on_event=event, private_params=private,
                               input_blobs=tuple(blob_ids), scorer=self.scorer,
                               input_bytes=sum(int(a.nbytes) for a in (arrays or {}).values()))
        streams: dict[bytes, FramedStream] = {}
        wake = trio.Event()
        by_peer = {ad.peer_id: ad for ad in ads}
        answered: set[bytes] = set()
        event("request", {"candidates": [to_base58(a.peer_id) for a in first], "max_price": max_price})
        if blob_ids:
            event("upload", {"blobs": len(blob_ids), "bytes": sum(int(a.nbytes) for a in arrays.values())})

        async def carry(step: Step) -> None:
            if step.violation is not None:
                peer, why = step.violation
                log.info("job %s: %s: %s", rec.job[:8], to_base58(peer), why)
                self.penalise(peer, "protocol_violation")
            for peer, msg in step.send:
                fs = streams.get(peer)
                if fs is None:
                    continue
                try:
                    await fs.send(msg.encode())
                except StreamGone:
                    pass
            for peer in step.ask:  # reserves: nobody acceptable answered the first ones
                nursery.start_soon(talk, by_peer[peer])

        def feed(peer: bytes, msg: m.Message) -> Step:
            step = machine.receive(peer, msg, self.now())
            wake.set()
            return step

        async def talk(ad: Any) -> None:
            peer = ad.peer_id
            try:
                stream = await self.streams.open(peer, JOB_PROTOCOL, ad.addrs)
            except Exception as exc:  # noqa: BLE001 - any dial failure: this provider is out
                self.table.standing.set_aside(peer, self.now(), ad.addrs)
                await carry(feed(peer, m.Decline(job_id, "busy", f"unreachable: {exc}")))
                return
            fs = streams[peer] = FramedStream(stream, max_frame=m.MAX_MESSAGE, frame_timeout=m.FRAME_TIMEOUT_S)
            budget = TokenBuckets(burst=PROVIDER_BURST, rate=PROVIDER_RATE, max_keys=1)

            async def receive() -> m.Message:
                frame = await fs.receive()
                if not budget.take(b"", trio.current_time()):
                    raise PeerError("more messages than a job conversation needs", code="flood")
                return m.decode(frame)

            async def lost(why: str) -> None:
                if machine.provider == peer and machine.state is R.RUNNING:
                    await carry(feed(peer, m.Failed(job_id, "crashed", why)))
                elif machine.state is R.COLLECTING and peer not in machine.bids and peer not in machine.declines:
                    await carry(feed(peer, m.Decline(job_id, "busy", why)))

            try:
                sent = trio.current_time()
                await fs.send(rfb.encode())
                reply = await receive()
                self.scorer.observe_latency(peer, (trio.current_time() - sent) * 1000)
                answered.add(peer)
                self.table.standing.answered(peer, self.now())
                await carry(feed(peer, reply))
                while True:
                    await carry(feed(peer, await receive()))
            except StreamGone:
                await lost("stream lost")
            except (PeerError, trio.TooSlowError) as exc:
                code = exc.code if isinstance(exc, PeerError) else "idle_stream"
                log.info("job %s: %s broke the protocol (%s): %s", rec.job[:8], to_base58(peer), code, exc)
                self.penalise(peer, code)
                await fs.reset()
                await lost(f"protocol error: {code}")
            except Exception as exc:  # noqa: BLE001 - a bug here ends this provider's part, not the job
                log.error("job %s: talking to %s failed", rec.job[:8], to_base58(peer), exc_info=exc)
                await fs.reset()
                await lost(f"internal error: {type(exc).__name__}")

        # Freivalds' check needs A and B: a seeded job's are made while providers bid and compute
        prepared = _Prepared()
        try:
            async with trio.open_nursery() as nursery:
                if policy == "freivalds" and workload == "matmul" and not arrays:
                    prepared.start(nursery, lambda: dict(zip("ab", workloads.matmul_inputs(checked))))
                for ad in ads:
                    nursery.start_soon(talk, ad)
                while not machine.terminal:
                    with trio.move_on_at(trio_deadline(self.now, machine.next_wakeup())):
                        await wake.wait()
                    wake = trio.Event()
                    await carry(machine.tick(self.now()))
                    if machine.state is R.VERIFYING and machine.result is not None:
                        result = machine.result
                        try:
                            ok, outcome, output, rec.checked = await self._verify(
                                result, rfb, checked, policy, arrays or await prepared.get(), event)
                        except BlobUnavailable as exc:  # its provider is gone: re-award, pay nothing
                            await carry(machine.output_unavailable(f"output unavailable: {exc}", self.now()))
                            continue
                        provider_ad = next(a for a in ads if a.peer_id == result.body["provider"])
                        if ok and output is not None and policy == "rows" and purpose == "job":
                            check = await self.checks.check_rows(rec, provider_ad, result.raw, output, checked,
                                                                 arrays, max_price, backend, event)
                            ok, outcome = check.passed, check.detail
                            rec.checked = "rows" if check.settled else ""
                        elif ok and output is not None and policy == "rerun" and purpose == "job" and \
                                self.checks.should_rerun(workload, provider_ad.peer_id):
                            check = await self.checks.rerun(rec, provider_ad, result.raw, output, checked, arrays,
                                                            max_price, backend, event)
                            ok, outcome = check.passed, check.detail
                            rec.checked = "rerun" if check.ran and check.settled else ""
                        if ok:
                            self.scorer.observe_speed(result.body["provider"], wl.flops(checked),
                                                      result.body["kernel_ms"] / 1000)
                        rec.output, rec.result_raw = output, result.raw
                        rec.outcome = outcome
                        await carry(machine.verified(ok, outcome))
                nursery.cancel_scope.cancel()
        finally:
            # Cancelled by the user, or failing: tell the providers, so their work stops now.
            with trio.CancelScope(shield=True):
                if not machine.terminal:
                    with trio.move_on_after(2):
                        await carry(machine.cancel("cancelled by the requester"))
                for fs in streams.values():
                    with trio.move_on_after(1):
                        await fs.close()
                rec.state, rec.ended = machine.state.value, self.now()
        rec.state, rec.ended = machine.state.value, self.now()
        rec.overran = [to_base58(p) for p in machine.overran]
        rec.declines = {to_base58(p): code for p, code in machine.declines.items()}
        for peer in machine.candidates:  # asked and never answered: set aside for a while
            if peer not in answered and not self.table.standing.is_aside(peer, self.now()):
                self.table.standing.set_aside(peer, self.now())
        verdict = rec.outcome  # the check's verdict in full, when a result was checked
        rec.outcome = machine.reason or machine.state.value
        if machine.provider is not None:
            rec.peer = to_base58(machine.provider)
            rec.price = machine.bids[machine.provider].price if machine.provider in machine.bids else 0
        if machine.result is not None:
            rec.kernel_ms, rec.backend = machine.result.body["kernel_ms"], machine.result.body["backend"]
        if machine.state in (R.DONE, R.REJECTED):
            rec.outcome = verdict or (machine.receipt.body["outcome"] if machine.receipt else machine.state.value)
        await self._remember(machine, rec)
        log.info("job %s: %s as requester of %s%s on %s: %s (price %d)", rec.job[:8], rec.state, rec.workload,
                 f" ({rec.purpose})" if rec.purpose != "job" else "", rec.peer or "-", rec.outcome, rec.price)
        self.on_end(rec)
        return rec

    async def _remember(self, machine: RequesterJob, rec: JobRecord) -> None:
        """Write what this job taught us to the ledger: failures, the check, the receipt."""
        trust = self.judge
        job = machine.job
        with trio.CancelScope(shield=True):
            for peer, why in machine.failed.items():  # an overrun is remembered, but no evidence against it
                data = {"job": job, "reason": why[:250]} | ({"overrun": True} if peer in machine.overran else {})
                await trust.record("failure", data, peer=peer)
            provider = machine.provider
            if provider is None or machine.receipt is None:
                return
            if rec.checked:
                await trust.record("verification", {"job": job, "method": rec.checked,
                                                    "passed": machine.state is R.DONE,
                                                    "detail": rec.outcome[:250]}, peer=provider)
            await remember_receipt(trust, machine.receipt, "requester", rec.workload, provider)
            operations.charge(rec.purpose, int(machine.receipt.body["paid"]))
            if rec.checked in ("rerun", "freivalds", "rows") and rec.purpose == "job":
                await trust.publish_opinion(provider)

    async def _verify(self, result: m.Result, rfb: m.RequestForBids, params: dict[str, Any],
                      policy: str, arrays: dict[str, np.ndarray],
                      event: Callable[[str, dict[str, object]], None]) -> tuple[bool, str, Output | None, str]:
        """Open and check a result: (accepted, outcome, output, method of the check that ran)."""
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
        if policy == "freivalds" and rfb.workload == "matmul":
            rounds = self.judge.freivalds_rounds
            ok, detail = await trio.to_thread.run_sync(lambda: freivalds_check(
                params, output, rounds=rounds, rng=np.random.default_rng(), inputs=arrays or None))
            return ok, detail, output, "freivalds"
        if policy == "rows":  # the signed commitment must cover exactly the rows we were sent
            try:
                root = await trio.to_thread.run_sync(merkle.rows_root, output.arrays)
            except ValueError:
                return False, "output is not one row per input row", output, "rows"
            rows = params.get("rows")
            if result.body["root"] != root or any(len(a) != rows for a in output.arrays.values()):
                return False, "the signed row commitment does not match the rows sent", output, "rows"
        return True, "accepted (unchecked)", output, ""


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
