"""The job protocol ``/p2pnode/job/1`` over libp2p streams: the shell around the pure machines.

One stream per (job, provider). The provider side (:meth:`JobService.handle_stream`) decides, bids,
runs the awarded job on the executor, streams progress (at least every ``HEARTBEAT_S``) and sends a
signed result; a requester that cancels, breaks the protocol or vanishes stops the work at once.
The requester side (:meth:`JobService.submit`) picks up to K providers from the capacity table,
runs the auction, re-awards on failure, verifies the result (digest, and Freivalds for matmul) and
signs the receipt. Peers that send malformed or out-of-order messages are penalised.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import trio

from p2pnode.checks import Checks
from p2pnode.errors import ExecFailure, LocalError, PeerError, RemoteProtocolError, ReplayError, WorkloadError
from p2pnode.exec import workloads
from p2pnode.exec.workloads import Output
from p2pnode.market.bidding import Capacity, decide
from p2pnode.market.rate_limit import TokenBuckets
from p2pnode.market.scoring import ObservedScorer
from p2pnode.net.framing import FramedStream, StreamGone
from p2pnode.protocol.job_provider import P, ProviderJob
from p2pnode.protocol.job_requester import R, RequesterJob, Step
from p2pnode.protocol.limits import SeenJobs, StreamLimits
from p2pnode.verify.check import freivalds_check
from p2pnode.wire import codec, sealing
from p2pnode.wire import job as m
from p2pnode.wire.blob import MAX_BLOB, BlobError, BlobUnavailable
from p2pnode.wire.peer_id import to_base58

if TYPE_CHECKING:
    from p2pnode.node import Node

log = logging.getLogger("p2pnode.jobs")
JOB_PROTOCOL = "/p2pnode/job/1"
HEARTBEAT_S = 2.0
BID_TTL_S = 30.0
OPEN_TIMEOUT_S = 5.0
OVERDUE_GRACE_S = 10.0
FIRST_MESSAGE_TIMEOUT_S = 10.0  # a job stream must open with its request for bids within this
FRAME_TIMEOUT_S = 10.0  # a message, once begun, must arrive whole within this
# A requester sends a handful of messages per job (request, award, inputs, receipt, cancel); a
# provider a bid, a result and progress every HEARTBEAT_S. More than this is a flood.
REQUESTER_BURST, REQUESTER_RATE = 16, 1.0
PROVIDER_BURST, PROVIDER_RATE = 64, 10.0
MAX_STREAMS_PER_PEER, MAX_STREAMS = 16, 256


class JobError(LocalError):
    """A job could not be submitted or did not complete (no provider, deadline, ...)."""


@dataclass
class JobRecord:
    job: str
    role: str  # "requester" or "provider"
    workload: str
    params: dict[str, Any]
    peer: str = ""  # provider (for a requester) or requester (for a provider)
    state: str = "starting"
    price: int = 0
    started: float = field(default_factory=time.time)
    ended: float = 0.0
    outcome: str = ""
    events: list[dict[str, Any]] = field(default_factory=list)
    output: Output | None = None
    kernel_ms: int = 0
    backend: str = ""
    purpose: str = "job"  # job, check (a re-run for a check) or calibration
    checked: str = ""  # how the result was checked
    result_raw: bytes = b""  # the provider's signed result

    def to_json(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k not in ("output", "events", "result_raw")}
        out["events"] = self.events[-50:]
        if self.output is not None:
            out["digest"] = self.output.digest.hex()
            out["output"] = {k: {"shape": list(v.shape), "dtype": str(v.dtype),
                                 "sample": [float(f"{x:.4g}") for x in v.reshape(-1)[:6].tolist()]} for k, v in self.output.arrays.items()}
            if "loss" in self.output.extra:
                out["loss"] = self.output.extra["loss"]
        return out


@dataclass
class _Provided:
    """What a provider's side of one job holds while it runs."""

    params: dict[str, Any]
    blobs: tuple[bytes, ...] = ()
    progress: float = 0.0
    receipt: m.Receipt | None = None

    def set_progress(self, fraction: float) -> None:
        self.progress = fraction


def _trio_deadline(unix: float) -> float:
    return trio.current_time() + (unix - time.time())


class JobService:
    def __init__(self, node: Node) -> None:
        self.node = node
        self.records: list[JobRecord] = []
        self.scorer = ObservedScorer(reputation=lambda peer: node.trust.adjust(peer))
        self.checks = Checks(self)
        self.seen = SeenJobs()
        self.limits = StreamLimits(per_peer=MAX_STREAMS_PER_PEER, total=MAX_STREAMS)

    def _record(self, rec: JobRecord) -> JobRecord:
        self.records.append(rec)
        del self.records[:-500]
        return rec

    def _penalise(self, peer: bytes, code: str) -> None:
        self.node.penalise(peer, code)

    # provider ------------------------------------------------------------------------------
    def capacity(self) -> Capacity:
        node = self.node
        ex = node.executor
        speeds = node.speed
        gflops = max(speeds.values()) if speeds else 1.0
        backends = ex.backends if ex else ()
        hw = node.hardware
        gpu_backend = bool(backends) and backends[0] != "numpy"
        free = (hw.gpus[0].memory_free if gpu_backend and hw.gpus else hw.cpu.memory_free) if hw else 0
        return Capacity(backends=backends, free_memory=int(free * 0.8), gflops=gflops,
                        price_per_gflop=node.config.price, busy=ex is None or ex.running >= 2 * ex.slots,
                        offered=tuple(node.config.workloads) if node.config.provide else ())

    async def handle_stream(self, stream: Any, peer: bytes) -> None:
        """Serve one request for bids on ``stream`` from ``peer``.

        Whatever the peer does wrong raises a :class:`PeerError` out of here, after the job has
        ended and its work has stopped; :func:`p2pnode.net.guard.guard_stream_handler` penalises
        the peer and resets the stream. A job id this node has already taken is a replay."""
        fs = FramedStream(stream, max_frame=m.MAX_MESSAGE, frame_timeout=FRAME_TIMEOUT_S)
        with trio.fail_after(FIRST_MESSAGE_TIMEOUT_S):
            first = m.decode(await fs.receive())
        if not isinstance(first, m.RequestForBids) or first.requester != peer:
            raise RemoteProtocolError("a job stream must open with the sender's own request for bids")
        now = time.time()
        if not self.seen.add(peer, first.job, first.deadline_ms / 1000.0, now):
            raise ReplayError(f"job {first.job.hex()[:12]} was already requested")
        prov = ProviderJob(self.node.identity.peer_id, first, now)
        decision = decide(first, self.capacity(), now)
        if not decision.bid:
            await fs.send(prov.decline(decision.code, decision.reason).encode())
            await fs.close()
            return
        await fs.send(prov.bid(decision.price, decision.estimate_ms, time.time() + BID_TTL_S,
                               decision.backend).encode())
        rec = self._record(JobRecord(first.job.hex(), "provider", first.workload, dict(first.params),
                                     peer=to_base58(peer), state=prov.state.value, price=decision.price,
                                     backend=decision.backend))
        try:
            await self._provide(fs, prov, rec, decision.backend)
        finally:
            rec.ended = time.time()
            rec.state = prov.state.value
        await fs.close()

    async def _provide(self, fs: FramedStream, prov: ProviderJob, rec: JobRecord, backend: str) -> None:
        """Drive ``prov`` from the bid to its end. Raises the requester's offence, if any, once the
        job is over (never from inside the nursery, so it reaches the guard as itself)."""
        inbox_send, inbox = trio.open_memory_channel[Any](16)
        exec_scope = trio.CancelScope()
        state = _Provided(params=dict(rec.params))
        done_event = trio.Event()
        budget = TokenBuckets(burst=REQUESTER_BURST, rate=REQUESTER_RATE, max_keys=1)
        offence: PeerError | None = None

        async def reader() -> None:
            try:
                while True:
                    frame = await fs.receive()
                    if not budget.take(b"", trio.current_time()):
                        raise PeerError("more messages than a job conversation needs", code="flood")
                    await inbox_send.send(m.decode(frame))
            except (StreamGone, PeerError, trio.TooSlowError) as exc:
                await inbox_send.send(exc)

        async def execute() -> None:
            ex = self.node.executor
            assert ex is not None
            with exec_scope:
                try:
                    run_params = {k: v for k, v in state.params.items() if k != "keys"}
                    arrays = await self._fetch_inputs(prov, run_params, state.params.get("keys") or {}, state.blobs)
                    adv, cheat = self.node.adversary, False
                    if adv is not None:
                        if adv.stalls:
                            await trio.sleep_forever()  # progress goes on, the result never comes
                        run_params, cheat = adv.run_params(rec.workload, run_params)
                    r = await ex.run(rec.workload, run_params, backend=backend, inputs=arrays,
                                     on_progress=state.set_progress)
                    if adv is not None:
                        r = replace(r, output=adv.tamper(rec.workload, run_params, r.output, cheat))
                    output = sealing.seal(codec.encode(r.output.to_wire()), prov.rfb.requester)
                    blob = b""
                    if len(output) > m.MAX_INLINE_OUTPUT:  # large: fetched by the requester as a blob
                        blob, output = self.node.blobs.store.put(output), b""
                    result = m.make_result(prov.job, self.node.identity.signing_key, requester=prov.rfb.requester,
                                           provider=prov.me, nonce=prov.rfb.nonce, digest=r.digest, output=output,
                                           kernel_ms=int(r.seconds * 1000), backend=r.backend, blob=blob)
                    rec.kernel_ms, rec.output = int(r.seconds * 1000), r.output
                    await fs.send(prov.done(result, time.time()).encode())
                except (ExecFailure, WorkloadError, BlobUnavailable) as exc:
                    await fs.send(prov.failed(exc.code, str(exc)).encode())
                except PeerError as exc:  # inputs the requester got wrong: a bad key, a bad blob
                    self._penalise(prov.rfb.requester, exc.code)
                    await fs.send(prov.failed(exc.code, str(exc)).encode())
                rec.state = prov.state.value
            done_event.set()

        async def execute_or_lose_stream() -> None:
            try:
                await execute()
            except StreamGone:
                done_event.set()  # the reader sees the end of the stream and ends the job

        async def heartbeat() -> None:
            try:
                while not done_event.is_set() and prov.state is P.RUNNING:
                    await fs.send(prov.progress(state.progress).encode())
                    with trio.move_on_after(HEARTBEAT_S):
                        await done_event.wait()
            except StreamGone:
                pass

        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader)
            started = False
            while not prov.terminal:
                item: Any = None
                with trio.move_on_at(_trio_deadline(prov.until)):
                    item = await inbox.receive()
                try:
                    if item is None:
                        out = prov.tick(time.time())
                        if out is not None:
                            await fs.send(out.encode())
                    elif isinstance(item, StreamGone):
                        if prov.state is P.BID_SENT:  # the requester chose another bid
                            prov.tick(prov.until)
                        elif not prov.terminal:  # the requester vanished: free what it held
                            prov.cancel("requester gone")
                    elif isinstance(item, (PeerError, trio.TooSlowError)):
                        raise item
                    else:
                        prov.receive(item, time.time())
                        if isinstance(item, m.Receipt) and prov.state is P.DONE:
                            state.receipt = item
                        if isinstance(item, m.Inputs) and prov.state is P.RUNNING and not started:
                            state.params, state.blobs = self._private(prov, item), item.blobs
                except StreamGone:
                    if not prov.terminal:
                        prov.cancel("requester gone")
                except (PeerError, trio.TooSlowError) as exc:
                    offence = exc if isinstance(exc, PeerError) else PeerError(
                        "a frame took too long to arrive", code="idle_stream")
                    prov.abort(f"requester broke the protocol: {offence.code}")
                if prov.state is P.RUNNING and not started:
                    started = True
                    nursery.start_soon(execute_or_lose_stream)
                    nursery.start_soon(heartbeat)
                rec.state = prov.state.value
            if prov.state in (P.CANCELLED, P.EXPIRED, P.ERROR):
                exec_scope.cancel()
            rec.outcome = prov.reason or prov.state.value
            nursery.cancel_scope.cancel()
        if state.receipt is not None:
            await self._record_receipt(state.receipt, "provider", rec.workload, prov.rfb.requester)
        if offence is not None:
            raise offence

    def _private(self, prov: ProviderJob, inputs: m.Inputs) -> dict[str, Any]:
        """Open the sealed private parameters and merge them into the public ones."""
        private = codec.decode(sealing.unseal(inputs.sealed, self.node.identity.signing_key),
                               max_size=m.MAX_PARAMS_BYTES) if inputs.sealed else {}
        if not isinstance(private, dict) or not set(private) <= set(m.PRIVATE_PARAMS):
            raise RemoteProtocolError("sealed inputs hold something other than private parameters")
        keys = private.get("keys", {})
        if not isinstance(keys, dict) or not all(isinstance(k, str) and isinstance(v, bytes) and len(v) == 32
                                                 for k, v in keys.items()):
            raise RemoteProtocolError("sealed input keys must map names to 32-byte keys")
        return {**dict(prov.rfb.params), **private}

    async def _fetch_inputs(self, prov: ProviderJob, params: dict[str, Any], keys: dict[str, bytes],
                            blob_ids: tuple[bytes, ...]) -> dict[str, np.ndarray] | None:
        """Fetch and open the input blobs (from our cache when we already hold them)."""
        wl = workloads.get(prov.rfb.workload)
        spec = wl.input_spec(wl.check(params))
        if not spec:
            return None
        if len(blob_ids) != len(spec) or set(keys) != set(spec):
            raise WorkloadError("inputs=blob: the blobs or keys do not match the workload's inputs")
        arrays = {}
        for name, blob_id in zip(sorted(spec), blob_ids, strict=True):
            shape, dtype = spec[name]
            data = sealing.unlock(await self.node.blobs.fetch(prov.rfb.requester, blob_id), keys[name])
            if len(data) != int(np.prod(shape)) * np.dtype(dtype).itemsize:
                raise WorkloadError(f"input {name}: blob has the wrong size")
            arrays[name] = np.frombuffer(data, dtype=dtype).reshape(shape)
        return arrays

    # requester -----------------------------------------------------------------------------
    def candidates(self, workload: str, need: int, k: int, backend: str) -> list[Any]:
        now = time.time()
        me = self.node.identity.peer_id
        out = []
        for e in self.node.table.entries(now):
            ad = e.ad
            if ad.peer_id == me or self.node.penalties.is_banned(ad.peer_id, now) or \
                    self.node.trust.distrusted(ad.peer_id):
                continue
            offers = [o for o in ad.offers if o.workload == workload and (not backend or o.backend == backend)]
            if not offers or not ad.addrs:
                continue
            free = max([g.memory_free for g in ad.gpus], default=ad.cpu.memory_free)
            if free < need:
                continue
            speed = max((v for _, v in ad.speed), default=1.0)
            out.append((offers[0].price / max(speed, 1e-3) * (1.0 + ad.load), ad))
        out.sort(key=lambda x: x[0])
        return [ad for _, ad in out[:k]]

    async def submit(self, workload: str, params: dict[str, Any], *, max_price: int, deadline_s: float,
                     k: int = 3, backend: str = "", verify: str = "auto", bid_window_s: float = 2.0,
                     on_event: Callable[[dict[str, Any]], None] | None = None,
                     inputs: dict[str, np.ndarray] | None = None, only: list[Any] | None = None,
                     purpose: str = "job") -> JobRecord:
        """Run a job on the network. ``only`` restricts the auction to these ads (checks and
        calibration); ``purpose`` other than ``job`` marks such internal jobs, which are not
        themselves re-checked."""
        wl = workloads.get(workload)
        checked = wl.check(params)
        arrays = workloads.check_inputs(wl, checked, inputs)
        if deadline_s <= 0:
            raise JobError("the deadline is already past")
        if max_price <= 0:
            raise JobError("--max-price must be positive")
        early: list[dict[str, Any]] = []
        if only is None:
            ads = self.candidates(workload, wl.memory(checked), k, backend)
            fresh = [ad for ad in ads if self.checks.needs_calibration(ad)]
            if fresh and purpose == "job":
                def early_event(what: str, data: dict[str, object]) -> None:
                    item = _event_item(what, data)
                    early.append(item)
                    if on_event is not None:
                        on_event(item)
                for ad in fresh:
                    await self.checks.calibrate(ad, early_event)
                ads = self.candidates(workload, wl.memory(checked), k, backend)
        else:
            ads = [ad for ad in only if ad.peer_id != self.node.identity.peer_id]
        for ad in ads:
            self.scorer.advertised[ad.peer_id] = max((v for _, v in ad.speed), default=0.0)
        if not ads:
            raise JobError(f"no provider in the market offers {workload}" + (f" on {backend}" if backend else ""))
        node = self.node
        job_id, nonce = os.urandom(16), os.urandom(16)
        policy = self.node.trust.policy.method(workload) if verify == "auto" else verify
        public = {k: v for k, v in checked.items() if k not in m.PRIVATE_PARAMS}
        private: dict[str, Any] = {k: v for k, v in checked.items() if k in m.PRIVATE_PARAMS}
        blob_ids: list[bytes] = []
        if arrays:  # inputs travel as encrypted blobs that the awarded provider fetches from us
            secret = sealing.blob_secret(node.identity.seed)
            private["keys"] = {}
            for name in sorted(arrays):
                key, ciphertext = sealing.lock(arrays[name].tobytes(), secret)
                blob_ids.append(node.blobs.store.put(ciphertext))
                private["keys"][name] = key
        rfb = m.RequestForBids(job_id, workload, public, node.identity.peer_id, nonce, max_price,
                               int((time.time() + deadline_s) * 1000), 0, backend, policy)
        rec = self._record(JobRecord(job_id.hex(), "requester", workload, checked, purpose=purpose))
        rec.events.extend(early)

        def event(what: str, data: dict[str, object]) -> None:
            item = _event_item(what, data, t=round(time.time() - rec.started, 3))
            rec.events.append(item)
            if on_event is not None:
                on_event(item)

        machine = RequesterJob(node.identity.peer_id, node.identity.signing_key, rfb, [a.peer_id for a in ads],
                               time.time(), bid_window_s=bid_window_s,
                               stall_s=max(15.0, 3 * HEARTBEAT_S), overdue_grace_s=OVERDUE_GRACE_S, on_event=event, private_params=private,
                               input_blobs=tuple(blob_ids), scorer=self.scorer)
        streams: dict[bytes, FramedStream] = {}
        wake = trio.Event()
        event("request", {"candidates": [to_base58(a.peer_id) for a in ads], "max_price": max_price})
        if blob_ids:
            event("upload", {"blobs": len(blob_ids), "bytes": sum(int(a.nbytes) for a in arrays.values())})

        async def carry(step: Step) -> None:
            if step.violation is not None:
                peer, why = step.violation
                log.info("job %s: %s: %s", rec.job[:8], to_base58(peer), why)
                self._penalise(peer, "protocol_violation")
            for peer, msg in step.send:
                fs = streams.get(peer)
                if fs is None:
                    continue
                try:
                    await fs.send(msg.encode())
                except StreamGone:
                    pass

        def feed(peer: bytes, msg: m.Message) -> Step:
            step = machine.receive(peer, msg, time.time())
            wake.set()
            return step

        async def talk(ad: Any) -> None:
            peer = ad.peer_id
            try:
                stream = await self._open(ad)
            except Exception as exc:  # noqa: BLE001 - any dial failure: this provider is out
                await carry(feed(peer, m.Decline(job_id, "busy", f"unreachable: {exc}")))
                return
            fs = streams[peer] = FramedStream(stream, max_frame=m.MAX_MESSAGE, frame_timeout=FRAME_TIMEOUT_S)
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
                sent = time.perf_counter()
                await fs.send(rfb.encode())
                first = await receive()
                self.scorer.observe_latency(peer, (time.perf_counter() - sent) * 1000)
                await carry(feed(peer, first))
                while True:
                    await carry(feed(peer, await receive()))
            except StreamGone:
                await lost("stream lost")
            except (PeerError, trio.TooSlowError) as exc:
                code = exc.code if isinstance(exc, PeerError) else "idle_stream"
                log.info("job %s: %s broke the protocol (%s): %s", rec.job[:8], to_base58(peer), code, exc)
                self._penalise(peer, code)
                await fs.reset()
                await lost(f"protocol error: {code}")
            except Exception as exc:  # noqa: BLE001 - a bug here ends this provider's part, not the job
                log.error("job %s: talking to %s failed", rec.job[:8], to_base58(peer), exc_info=exc)
                await fs.reset()
                await lost(f"internal error: {type(exc).__name__}")

        try:
            async with trio.open_nursery() as nursery:
                for ad in ads:
                    nursery.start_soon(talk, ad)
                while not machine.terminal:
                    with trio.move_on_at(_trio_deadline(machine.next_wakeup())):
                        await wake.wait()
                    wake = trio.Event()
                    await carry(machine.tick(time.time()))
                    if machine.state is R.VERIFYING and machine.result is not None:
                        result = machine.result
                        try:
                            ok, outcome, output, rec.checked = await self._verify(result, rfb, checked, policy,
                                                                                  arrays, event)
                        except BlobUnavailable as exc:  # its provider is gone: re-award, pay nothing
                            await carry(machine.output_unavailable(f"output unavailable: {exc}", time.time()))
                            continue
                        provider_ad = next(a for a in ads if a.peer_id == result.body["provider"])
                        if ok and output is not None and policy == "rerun" and purpose == "job" and \
                                self.checks.should_rerun(workload, provider_ad.peer_id):
                            check = await self.checks.rerun(rec, provider_ad, result.raw, output, checked, arrays,
                                                            max_price, backend, event)
                            ok, outcome = check.passed, check.detail
                            rec.checked = "rerun" if check.ran else ""
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
                rec.state, rec.ended = machine.state.value, time.time()
        rec.state, rec.ended = machine.state.value, time.time()
        rec.outcome = machine.reason or machine.state.value
        if machine.provider is not None:
            rec.peer = to_base58(machine.provider)
            rec.price = machine.bids[machine.provider].price if machine.provider in machine.bids else 0
        if machine.result is not None:
            rec.kernel_ms, rec.backend = machine.result.body["kernel_ms"], machine.result.body["backend"]
        if machine.state is R.DONE:
            rec.outcome = machine.receipt.body["outcome"] if machine.receipt else "done"
        await self._remember(machine, rec)
        return rec

    async def _remember(self, machine: RequesterJob, rec: JobRecord) -> None:
        """Write what this job taught us to the ledger: failures, the check, the receipt."""
        trust = self.node.trust
        job = machine.job
        with trio.CancelScope(shield=True):
            for peer, why in machine.failed.items():
                await trust.record("failure", {"job": job, "reason": why[:250]}, peer=peer)
            provider = machine.provider
            if provider is None or machine.receipt is None:
                return
            if rec.checked:
                await trust.record("verification", {"job": job, "method": rec.checked,
                                                    "passed": machine.state is R.DONE,
                                                    "detail": rec.outcome[:250]}, peer=provider)
            await self._record_receipt(machine.receipt, "requester", rec.workload, provider)
            if rec.checked in ("rerun", "freivalds") and rec.purpose == "job":
                await trust.publish_opinion(provider)

    async def _record_receipt(self, receipt: m.Receipt, role: str, workload: str, peer: bytes) -> None:
        body = receipt.body
        trust = self.node.trust
        with trio.CancelScope(shield=True):
            await trust.record("receipt", {"role": role, "job": receipt.job, "receipt": receipt.raw,
                                           "workload": workload, "accepted": body["accepted"],
                                           "paid": body["paid"]}, peer=peer)
            if body["paid"]:
                amount = body["paid"] if role == "provider" else -body["paid"]
                await trust.record("credit", {"job": receipt.job, "amount": amount}, peer=peer)

    async def _open(self, ad: Any) -> Any:
        from libp2p.peer.id import ID
        from libp2p.peer.peerinfo import PeerInfo

        from p2pnode.net.host import parse_multiaddr

        pid = ID(ad.peer_id)
        host = self.node.host
        if pid not in host.get_network().connections:
            addrs = [parse_multiaddr(a.split("/p2p/")[0]) for a in ad.addrs]
            with trio.fail_after(OPEN_TIMEOUT_S):
                await host.connect(PeerInfo(pid, addrs))
        with trio.fail_after(OPEN_TIMEOUT_S):
            return await host.new_stream(pid, [JOB_PROTOCOL])

    async def _verify(self, result: m.Result, rfb: m.RequestForBids, params: dict[str, Any],
                      policy: str, arrays: dict[str, np.ndarray],
                      event: Callable[[str, dict[str, object]], None]) -> tuple[bool, str, Output | None, str]:
        """Open and check a result: (accepted, outcome, output, method of the check that ran)."""
        sealed = result.body["output"]
        if result.body["blob"]:
            try:
                t0 = time.perf_counter()
                sealed = await self.node.blobs.fetch(result.body["provider"], result.body["blob"])
                event("download", {"bytes": len(sealed), "seconds": round(time.perf_counter() - t0, 3)})
            except BlobError as exc:  # a bad manifest or chunk: the provider's fault (penalised)
                return False, f"output blob: {exc}", None, ""
        try:
            plain = sealing.unseal(sealed, self.node.identity.signing_key)
            output = Output.from_wire(codec.decode(plain, max_size=MAX_BLOB))
        except Exception as exc:  # noqa: BLE001 - anything unreadable is a rejected result
            return False, f"unreadable output: {type(exc).__name__}", None, "digest"
        if output.digest != result.body["digest"]:
            return False, "digest does not match the output", output, "digest"
        if policy == "freivalds" and rfb.workload == "matmul":
            rounds = self.node.trust.policy.freivalds_rounds
            ok, detail = await trio.to_thread.run_sync(lambda: freivalds_check(
                params, output, rounds=rounds, rng=np.random.default_rng(), inputs=arrays or None))
            return ok, detail, output, "freivalds"
        return True, "accepted (unchecked)", output, ""


def _event_item(what: str, data: dict[str, object], **extra: object) -> dict[str, Any]:
    return {"event": what, **extra, **{k: _jsonable(v) for k, v in data.items()}}


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return to_base58(value) if len(value) == 38 else value.hex()
    if isinstance(value, dict):
        return {(_jsonable(k) if isinstance(k, bytes) else k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value
