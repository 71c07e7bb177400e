"""The provider's side of ``/p2pnode/job/1``: the shell around :class:`ProviderJob`.

One stream per job, opened by the requester. :meth:`JobProvider.handle_stream` decides on the
request, bids, and once awarded fetches the inputs, runs the job on the executor, streams progress
(at least every ``wire.job.HEARTBEAT_S``) and sends the signed result; a requester that cancels, breaks the
protocol or vanishes stops the work at once. A job id it has already taken is refused (a replay).

Collaborators: this node's identity, ``now``, the executor, ``capacity`` (what it can offer right
now), the blob service (inputs in, large outputs out), a ledger ``recorder`` (receipts and
credits), ``penalise``, the job book, and an optional adversary (tests and scenarios).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

import numpy as np
import trio

from p2pnode.adversary import Adversary
from p2pnode.errors import ExecFailure, PeerError, RemoteProtocolError, ReplayError, WorkloadError
from p2pnode.exec import workloads
from p2pnode.identity import Identity
from p2pnode.market.bidding import Capacity, decide
from p2pnode.market.rate_limit import TokenBuckets
from p2pnode.net.framing import FramedStream, StreamGone
from p2pnode.protocol.job_provider import P, ProviderJob
from p2pnode.protocol.limits import SeenJobs, StreamLimits
from p2pnode.services.blobs import BlobService
from p2pnode.services.ports import Now, Penalise, Recorder, Runner, trio_deadline
from p2pnode.services.records import JobRecord, JobRecords, remember_receipt
from p2pnode.wire import codec, merkle, sealing
from p2pnode.wire import job as m
from p2pnode.wire.blob import BlobUnavailable
from p2pnode.wire.peer_id import to_base58

log = logging.getLogger("p2pnode.jobs")
BID_TTL_S = 30.0
# A job may run this many times its own estimate (and at least MIN_RUN_S) before the executor kills
# it: a model that loops or crawls costs its provider a bounded amount, whatever it claimed.
RUN_TIMEOUT_FACTOR, MIN_RUN_S = 10.0, 60.0
# A requester sends a handful of messages per job (request, award, inputs, receipt, cancel).
REQUESTER_BURST, REQUESTER_RATE = 16, 1.0
MAX_STREAMS_PER_PEER, MAX_STREAMS = 16, 256


@dataclass
class _Running:
    """What the shell holds while a job runs: the latest progress, and whether it has finished."""

    progress: float = 0.0
    finished: trio.Event | None = None

    def set_progress(self, fraction: float) -> None:
        self.progress = fraction


class JobProvider:
    def __init__(self, *, identity: Identity, now: Now, executor: Runner | None,
                 capacity: Callable[[], Capacity], blobs: BlobService, recorder: Recorder, penalise: Penalise,
                 records: JobRecords, adversary: Adversary | None = None,
                 discount: Callable[[bytes], float] = lambda requester: 0.0,
                 on_end: Callable[[JobRecord], None] = lambda rec: None) -> None:
        """``discount``: the share taken off the price for a requester (reciprocity: one that gave
        this node compute back pays less); 0 by default."""
        self.identity = identity
        self.discount, self.on_end = discount, on_end
        self.now = now
        self.executor = executor
        self.capacity = capacity
        self.blobs = blobs
        self.recorder = recorder
        self.penalise = penalise
        self.records = records
        self.adversary = adversary
        self.seen = SeenJobs()
        self.limits = StreamLimits(per_peer=MAX_STREAMS_PER_PEER, total=MAX_STREAMS)

    async def handle_stream(self, stream: Any, peer: bytes) -> None:
        """Serve one request for bids on ``stream`` from ``peer``.

        Whatever the peer does wrong raises a :class:`PeerError` out of here, after the job has
        ended and its work has stopped; :func:`p2pnode.net.guard.guard_stream_handler` penalises
        the peer and resets the stream."""
        fs = FramedStream(stream, max_frame=m.MAX_MESSAGE, frame_timeout=m.FRAME_TIMEOUT_S)
        with trio.fail_after(m.FIRST_MESSAGE_TIMEOUT_S):
            first = m.decode(await fs.receive())
        if not isinstance(first, m.RequestForBids) or first.requester != peer:
            raise RemoteProtocolError("a job stream must open with the sender's own request for bids")
        now = self.now()
        if not self.seen.add(peer, first.job, first.deadline_ms / 1000.0, now):
            raise ReplayError(f"job {first.job.hex()[:12]} was already requested")
        prov = ProviderJob(self.identity.peer_id, first, now, key=self.identity.signing_key)
        decision = decide(first, self.capacity(), now)
        off = min(0.9, max(0.0, self.discount(peer))) if decision.bid else 0.0
        if off:
            decision = replace(decision, price=max(1, math.ceil(decision.price * (1.0 - off))))
        if not decision.bid:
            await fs.send(prov.decline(decision.code, decision.reason).encode())
            await fs.close()
            return
        await fs.send(prov.bid(decision.price, decision.estimate_ms, self.now() + BID_TTL_S,
                               decision.backend).encode())
        rec = self.records.add(JobRecord(first.job.hex(), "provider", first.workload, dict(first.params),
                                         started=now, peer=to_base58(peer), state=prov.state.value,
                                         price=decision.price, backend=decision.backend))
        log.info("job %s: bid %d on %s for %s", rec.job[:8], decision.price, rec.workload, rec.peer)
        timeout = max(MIN_RUN_S, RUN_TIMEOUT_FACTOR * decision.estimate_ms / 1000.0)
        try:
            await self._provide(fs, prov, rec, decision.backend, timeout)
        finally:
            rec.ended = self.now()
            rec.state = prov.state.value
            if prov.state is not P.BID_SENT:  # an award came: say how it ended
                paid = prov.receipt.body["paid"] if prov.receipt is not None else 0
                log.info("job %s: %s as provider for %s: %s (kernel %d ms, paid %d)", rec.job[:8], rec.state,
                         rec.peer, rec.outcome or rec.state, rec.kernel_ms, paid)
                self.on_end(rec)
        await fs.close()

    async def _provide(self, fs: FramedStream, prov: ProviderJob, rec: JobRecord, backend: str,
                       timeout: float) -> None:
        """Drive ``prov`` from the bid to its end. Raises the requester's offence, if any, once the
        job is over (never from inside the nursery, so it reaches the guard as itself)."""
        inbox_send, inbox = trio.open_memory_channel[Any](16)
        exec_scope = trio.CancelScope()
        running = _Running(finished=trio.Event())
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
            try:
                with exec_scope:
                    await self._execute(fs, prov, rec, backend, timeout, running)
            except StreamGone:
                pass  # the reader sees the end of the stream and ends the job
            finally:
                assert running.finished is not None
                running.finished.set()

        async def heartbeat() -> None:
            assert running.finished is not None
            try:
                while not running.finished.is_set() and prov.state is P.RUNNING:
                    await fs.send(prov.progress(running.progress).encode())
                    with trio.move_on_after(m.HEARTBEAT_S):
                        await running.finished.wait()
            except StreamGone:
                pass

        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader)
            started = False
            while not prov.terminal:
                item: Any = None
                with trio.move_on_at(trio_deadline(self.now, prov.until)):
                    item = await inbox.receive()
                try:
                    if item is None:
                        out = prov.tick(self.now())
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
                        prov.receive(item, self.now())
                except StreamGone:
                    if not prov.terminal:
                        prov.cancel("requester gone")
                except (PeerError, trio.TooSlowError) as exc:
                    offence = exc if isinstance(exc, PeerError) else PeerError(
                        "a frame took too long to arrive", code="idle_stream")
                    prov.abort(f"requester broke the protocol: {offence.code}")
                if prov.state is P.RUNNING and not started:
                    started = True
                    nursery.start_soon(execute)
                    nursery.start_soon(heartbeat)
                rec.state = prov.state.value
            if prov.state in (P.CANCELLED, P.EXPIRED, P.ERROR):
                exec_scope.cancel()
            rec.outcome = prov.reason or prov.state.value
            nursery.cancel_scope.cancel()
        if prov.receipt is not None:
            await remember_receipt(self.recorder, prov.receipt, "provider", rec.workload, prov.rfb.requester)
        if offence is not None:
            raise offence

    async def _execute(self, fs: FramedStream, prov: ProviderJob, rec: JobRecord, backend: str, timeout: float,
                       running: _Running) -> None:
        """Fetch the inputs, run the job, send the signed result (or a failure)."""
        async def answer(make: Callable[[], m.Message]) -> None:
            if prov.state is P.RUNNING:  # not cancelled or expired while the work went on
                await fs.send(make().encode())

        ex = self.executor
        if ex is None:
            await answer(lambda: prov.failed("not_providing", "this node runs no executor"))
            return
        try:
            run_params = {k: v for k, v in prov.params.items() if k != "keys"}
            arrays = await self._fetch_inputs(prov, run_params)
            adv, cheat = self.adversary, False
            if adv is not None:
                if adv.stalls:
                    await trio.sleep_forever()  # progress goes on, the result never comes
                run_params, cheat = adv.run_params(rec.workload, run_params)
                arrays = adv.run_inputs(rec.workload, run_params, arrays, cheat)
            r = await ex.run(rec.workload, run_params, backend=backend, inputs=arrays,
                             on_progress=running.set_progress, timeout=timeout)
            if adv is not None:
                r = replace(r, output=await trio.to_thread.run_sync(
                    partial(adv.tamper, rec.workload, run_params, r.output, cheat, inputs=arrays)))
            if "states" in r.output.arrays and rec.workload == "train":
                r = replace(r, output=await trio.to_thread.run_sync(self._keep_states, r.output))
            out = r.output

            def package() -> tuple[bytes, bytes, bytes]:  # in a thread: ~50 ms for 16 MiB
                # a row job commits to every row before anyone picks rows to check
                root = merkle.rows_root(out.arrays) if prov.rfb.verify in ("rows", "tokens") else b""
                return root, sealing.seal(codec.encode(out.to_wire()), prov.rfb.requester), out.digest

            root, output, digest = await trio.to_thread.run_sync(package)
            blob = b""
            if len(output) > m.MAX_INLINE_OUTPUT:  # large: fetched by the requester as a blob
                blob, output = await trio.to_thread.run_sync(self.blobs.store.put, output), b""
            rec.kernel_ms, rec.output = int(r.seconds * 1000), out
            await answer(lambda: prov.finish(digest=digest, output=output, kernel_ms=int(r.seconds * 1000),
                                             backend=r.backend, blob=blob, now=self.now(), root=root))
        except (ExecFailure, WorkloadError, BlobUnavailable) as exc:
            await answer(partial(prov.failed, exc.code, str(exc)))
        except PeerError as exc:  # inputs the requester got wrong: a bad key, a bad blob
            self.penalise(prov.rfb.requester, exc.code)
            await answer(partial(prov.failed, exc.code, str(exc)))
        rec.state = prov.state.value

    def _keep_states(self, out: workloads.Output) -> workloads.Output:
        """A train job's states after each step go into the blob store, where a checker's requester
        fetches the ones it picks by the ids the result commits to; they are never sent."""
        for state in out.arrays["states"]:
            self.blobs.store.put(np.ascontiguousarray(state, dtype="<f4").tobytes())
        return workloads.Output({k: v for k, v in out.arrays.items() if k != "states"}, out.extra)

    def _open_input(self, sealed: bytes, key: bytes, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
        """An input blob opened straight into what the worker will read (a spool file it maps, where
        the executor has one): one pass over the data, no plaintext of its own (blocking)."""
        out = self.executor.input_buffer(dtype, shape) if self.executor else np.empty(shape, dtype)
        sealing.unlock_into(sealed, key, out.reshape(-1).view(np.uint8).data)
        return out

    async def _fetch_inputs(self, prov: ProviderJob, params: dict[str, Any]) -> dict[str, np.ndarray] | None:
        """Fetch and open the input blobs (from our cache when we already hold them)."""
        wl = workloads.get(prov.rfb.workload)
        spec = wl.input_spec(wl.check(params))
        if not spec:
            return None
        keys = prov.params.get("keys") or {}
        if len(prov.input_blobs) != len(spec) or set(keys) != set(spec):
            raise WorkloadError("inputs=blob: the blobs or keys do not match the workload's inputs")
        arrays = {}
        for name, blob_id in zip(sorted(spec), prov.input_blobs, strict=True):
            shape, dtype = spec[name]
            # a shard of a dataset is used once: not kept past the store's transient budget
            sealed = await self.blobs.fetch(prov.rfb.requester, blob_id,
                                            transient=name not in workloads.REUSED_INPUTS)
            plain = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
            if len(sealed) != plain + sealing.LOCK_OVERHEAD:
                raise WorkloadError(f"input {name}: blob has the wrong size")
            arrays[name] = await trio.to_thread.run_sync(self._open_input, sealed, keys[name], dtype, shape)
        return arrays
