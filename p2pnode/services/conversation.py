"""One job's conversation with its providers, on the node: the trio driver of
:class:`~p2pnode.protocol.job_pipeline.RequesterPipeline`.

It opens a job stream to each provider the pipeline dials and sends it the request for bids,
reads what comes back (bounded: frame size and time, messages per second) and feeds it in, sends
what the pipeline says, has the verdict's questions answered, and carries out everything else it
returns. It decides nothing: the pipeline does, and the simulator drives the same pipeline.

What a provider sends that does not frame, decode or keep to the rate costs it a penalty and its
part in the job (its stream is reset and the pipeline told it was lost); a bug here ends that
provider's part, never the job. When the conversation is cancelled (by the user, or failing), the
providers are told at once, so their work stops.

Collaborators: ``now``, ``streams`` to reach providers, ``penalise``, ``answer`` (answers the
verdict's question, returning the pipeline's next actions) and ``carry`` (carries out an action
that is not about streams: ledger, gossip, charges).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import trio

from p2pnode.errors import PeerError
from p2pnode.market.rate_limit import TokenBuckets
from p2pnode.net.framing import FramedStream, StreamGone
from p2pnode.protocol.job_pipeline import RequesterPipeline
from p2pnode.protocol.requester_actions import (
    Action,
    Dial,
    OpenOutput,
    Penalise,
    Question,
    RunElsewhere,
    RunHere,
    Send,
)
from p2pnode.services.ports import Now, Streams, trio_deadline
from p2pnode.services.ports import Penalise as PenaliseFn
from p2pnode.wire import job as m
from p2pnode.wire.names import JOB_PROTOCOL
from p2pnode.wire.peer_id import to_base58

RECEIPT_SEND_S = 10.0  # how long a receipt may take to go out while its job is being stopped

log = logging.getLogger("p2pnode.jobs")
# A provider sends a bid, a result and progress every wire.job.HEARTBEAT_S: more than this is a flood.
PROVIDER_BURST, PROVIDER_RATE = 64, 10.0
Answer = Callable[[Question], Awaitable[list[Action]]]
Carry = Callable[[Action], Awaitable[Any]]


class Conversation:
    def __init__(self, pipe: RequesterPipeline, *, now: Now, streams: Streams, penalise: PenaliseFn,
                 answer: Answer, carry: Carry, name: str,
                 before_send: Callable[[Send], Awaitable[None]] | None = None) -> None:
        self.pipe, self.now, self.streams, self.penalise = pipe, now, streams, penalise
        self.answer, self.carry_other, self.name = answer, carry, name
        self.before_send = before_send  # awaited before each message goes out (the paying receipt's hook)
        self._streams: dict[bytes, FramedStream] = {}
        self._wake = trio.Event()
        self._nursery: trio.Nursery | None = None

    async def run(self, first: Sequence[Action], background: Sequence[Callable[[trio.Nursery], None]] = ()) -> None:
        """Carry ``first`` (the pipeline's start), then the conversation to its end; ``background``
        starts tasks that live as long as it, in the nursery it is given (work prepared for the
        verdict while providers compute)."""
        pipe = self.pipe
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                for start in background:
                    start(nursery)
                await self.carry(first)
                while not pipe.terminal:
                    question = pipe.pending
                    if question is not None:
                        await self.carry(await self.answer(question))
                        continue
                    with trio.move_on_at(trio_deadline(self.now, pipe.next_wakeup())):
                        await self._wake.wait()
                    self._wake = trio.Event()
                    await self.carry(pipe.tick(self.now()))
                nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                if not pipe.terminal:
                    with trio.move_on_after(2):
                        await self.carry(pipe.cancel("cancelled by the requester", self.now()))
                for fs in self._streams.values():
                    with trio.move_on_after(1):
                        await fs.close()

    async def carry(self, actions: Sequence[Action]) -> None:
        for action in actions:
            if isinstance(action, Send):
                if self.before_send is not None:
                    await self.before_send(action)
                fs = self._streams.get(action.peer)
                if fs is not None:
                    # a receipt goes out even as the job is being stopped: what it pays for may be kept
                    paying = isinstance(action.msg, m.Receipt)
                    with trio.CancelScope(shield=paying), trio.move_on_after(RECEIPT_SEND_S if paying else math.inf):
                        try:
                            await fs.send(action.msg.encode())
                        except StreamGone:
                            pass
            elif isinstance(action, Dial):
                assert self._nursery is not None
                self._nursery.start_soon(self._talk, action.ad)
            elif isinstance(action, Penalise):
                log.info("job %s: %s: %s", self.name, to_base58(action.peer), action.why)
                self.penalise(action.peer, action.code)
            elif not isinstance(action, (OpenOutput, RunElsewhere, RunHere)):  # questions: the loop answers them
                await self.carry_other(action)

    async def _feed(self, actions: list[Action]) -> None:
        self._wake.set()
        await self.carry(actions)

    async def _talk(self, ad: Any) -> None:
        peer = ad.peer_id
        try:
            stream = await self.streams.open(peer, JOB_PROTOCOL, ad.addrs)
        except Exception as exc:  # noqa: BLE001 - any dial failure: this provider is out
            await self._feed(self.pipe.dial_failed(peer, str(exc), self.now()))
            return
        fs = self._streams[peer] = FramedStream(stream, max_frame=m.MAX_MESSAGE, frame_timeout=m.FRAME_TIMEOUT_S)
        budget = TokenBuckets(burst=PROVIDER_BURST, rate=PROVIDER_RATE, max_keys=1)

        async def receive() -> m.Message:
            frame = await fs.receive()
            if not budget.take(b"", trio.current_time()):
                raise PeerError("more messages than a job conversation needs", code="flood")
            return m.decode(frame)

        try:
            sent = trio.current_time()
            await fs.send(self.pipe.job.rfb.encode())
            reply = await receive()
            rtt_ms = (trio.current_time() - sent) * 1000
            await self._feed(self.pipe.receive(peer, reply, self.now(), rtt_ms=rtt_ms))
            while True:
                await self._feed(self.pipe.receive(peer, await receive(), self.now()))
        except StreamGone:
            await self._feed(self.pipe.stream_lost(peer, "stream lost", self.now()))
        except (PeerError, trio.TooSlowError) as exc:
            code = exc.code if isinstance(exc, PeerError) else "idle_stream"
            log.info("job %s: %s broke the protocol (%s): %s", self.name, to_base58(peer), code, exc)
            self.penalise(peer, code)
            await fs.reset()
            await self._feed(self.pipe.stream_lost(peer, f"protocol error: {code}", self.now()))
        except Exception as exc:  # noqa: BLE001 - a bug here ends this provider's part, not the job
            log.error("job %s: talking to %s failed", self.name, to_base58(peer), exc_info=exc)
            await fs.reset()
            await self._feed(self.pipe.stream_lost(peer, f"internal error: {type(exc).__name__}", self.now()))
