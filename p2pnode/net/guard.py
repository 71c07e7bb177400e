"""The boundary between one peer's misbehaviour and the node: stream handlers and gossip validators
that a peer cannot turn against the node.

py-libp2p runs a stream handler inside the connection's nursery, which lives inside the swarm's,
which lives inside the node's: an exception that leaves a handler cancels the whole node. trio wraps
errors raised in a handler's own nurseries in exception groups, so ``except PeerError`` at the top of
a handler is not enough either. :func:`guard_stream_handler` is the one place every inbound stream
passes through:

* a **banned** peer's stream is reset before a byte is read;
* **caps**: a stream over the peer's own concurrent-stream cap is refused and the peer penalised
  (``stream_cap``); over the node's total cap, refused at no cost to the peer;
* a :class:`~p2pnode.errors.PeerError` anywhere in the handler, even deep inside exception groups,
  penalises the peer with the error's code and resets the stream; a ``TooSlowError`` (the peer let a
  stream sit idle past its timeout) counts as ``idle_stream``; the end of a stream is no error;
* any other exception is a bug here: it is logged with its traceback and ends that stream only.

Cancellation is never caught: stopping the node still stops every handler.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import trio

from p2pnode.errors import PeerError
from p2pnode.net.framing import StreamGone
from p2pnode.protocol.limits import PEER_CAP, StreamLimits
from p2pnode.wire.peer_id import to_base58

log = logging.getLogger("p2pnode.guard")
IDLE = "idle_stream"

PeerHandler = Callable[[Any, bytes], Awaitable[None]]


@dataclass(frozen=True)
class PeerGate:
    """What the boundary asks of the node: is a peer banned, and count an offence against one."""

    is_banned: Callable[[bytes], bool]
    penalise: Callable[[bytes, str], None]


def first_leaf(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


async def reset(stream: Any) -> None:
    try:
        await stream.reset()
    except Exception:  # noqa: BLE001 - resetting a dead stream is fine
        pass


async def contain(name: str, peer: bytes, body: Callable[[], Awaitable[None]], gate: PeerGate,
                  stream: Any = None) -> None:
    """Run ``body``; whatever ``peer`` makes it raise ends here (see the module's rules)."""
    try:
        await body()
    except* PeerError as group:
        exc = first_leaf(group)
        log.info("%s: %s sent something invalid (%s): %s", name, to_base58(peer), getattr(exc, "code", "?"), exc)
        gate.penalise(peer, getattr(exc, "code", "protocol_violation"))
        if stream is not None:
            await reset(stream)
    except* trio.TooSlowError:
        log.info("%s: %s let a stream sit idle", name, to_base58(peer))
        gate.penalise(peer, IDLE)
        if stream is not None:
            await reset(stream)
    except* StreamGone:
        pass
    except* Exception as group:
        exc = first_leaf(group)
        log.error("%s: handling a stream from %s failed", name, to_base58(peer), exc_info=exc)
        if stream is not None:
            await reset(stream)


def guard_stream_handler(name: str, handler: PeerHandler, gate: PeerGate,
                         limits: StreamLimits) -> Callable[[Any], Awaitable[None]]:
    """Wrap ``handler(stream, peer)`` for ``host.set_stream_handler``."""

    async def handle(stream: Any) -> None:
        try:
            peer = stream.muxed_conn.peer_id.to_bytes()
        except Exception:  # noqa: BLE001 - a stream without a known peer is not served
            await reset(stream)
            return
        if gate.is_banned(peer):
            await reset(stream)
            return
        refused = limits.acquire(peer)
        if refused is not None:
            if refused == PEER_CAP:
                gate.penalise(peer, PEER_CAP)
            await reset(stream)
            return
        try:
            await contain(name, peer, lambda: handler(stream, peer), gate, stream)
        finally:
            limits.release(peer)

    return handle


Validator = Callable[[Any, Any], bool]


def guard_validator(name: str, validator: Validator) -> Validator:
    """A gossipsub validator that rejects, rather than raises, on a bug: a message that makes our
    code fail is not forwarded, and the pubsub service goes on."""

    def validate(forwarder: Any, msg: Any) -> bool:
        try:
            return validator(forwarder, msg)
        except Exception:  # noqa: BLE001 - logged; the message is dropped, the node goes on
            log.exception("%s validator failed; message dropped", name)
            return False

    return validate


def ban_gate(is_banned: Callable[[bytes], bool], drop: Callable[[bytes], None]) -> Any:
    """A libp2p network notifee that drops a banned peer's connection the moment it is made.

    py-libp2p's own connection gate filters by IP only; a ban is by peer id, known once the Noise
    handshake is done, so the check sits on the ``connected`` event. ``drop`` must not block (it
    schedules the disconnect). Handlers check the ban too, so no stream slips in meanwhile."""
    from libp2p.abc import INotifee

    class _BanGate(INotifee):
        async def connected(self, network: Any, conn: Any) -> None:
            try:
                peer = conn.muxed_conn.peer_id.to_bytes()
            except Exception:  # noqa: BLE001 - not a peer connection
                return
            if is_banned(peer):
                log.info("refusing a connection from banned peer %s", to_base58(peer))
                drop(peer)

        async def disconnected(self, network: Any, conn: Any) -> None:
            pass

        async def opened_stream(self, network: Any, stream: Any) -> None:
            pass

        async def closed_stream(self, network: Any, stream: Any) -> None:
            pass

        async def listen(self, network: Any, multiaddr: Any) -> None:
            pass

        async def listen_close(self, network: Any, multiaddr: Any) -> None:
            pass

    return _BanGate()
