"""AutoNAT v1's server side: dial a peer back, within bounds any stranger cannot push past.

Any connected peer may ask a node to dial it back, and the answer costs the node a socket and a
Noise handshake per address tried. py-libp2p 0.8.1's server dials every address of a request that
matches the asker's IP, one after the other, with no limit on requests, addresses or sockets, and
goes on after the asker has left: 5 identities sending 250 requests of 100 addresses each (a
listener of theirs that accepts and never answers) took a node from 16 to ~960 file descriptors,
and it went on dialing for minutes after they disconnected. Here (:class:`DialBackServer`):

* a request is at most :data:`MAX_REQUEST_BYTES`; of its addresses, those on the asker's observed
  IP are dialed, each once, at most :data:`MAX_DIAL_ADDRS` of them (AutoNAT v2 dials one);
* requests are rate-limited (:class:`DialBackLimits`): :data:`PER_PEER_PER_WINDOW` per peer and
  :data:`ALL_PER_WINDOW` in all per :data:`WINDOW_S`, one at a time per peer and
  :data:`MAX_REQUESTS_IN_FLIGHT` in all; a request over a limit is answered at once with
  ``E_INTERNAL_ERROR`` ("busy"), which says nothing about the asker's reachability, and a peer
  over its own limits is penalised (``rate_limited``; a malformed request: ``malformed``), so
  one that keeps at it is banned and dropped;
* :data:`MAX_DIALS_IN_FLIGHT` dial-back sockets at once in all;
* a request's dials end after :data:`DIALS_TIMEOUT_S`, and a requester's dials are cancelled
  (their sockets closed) the moment its connection closes.

The dial-back itself opens a *new* TCP connection and runs the Noise handshake on it, which proves
the address reaches that peer (the library dials through the host, which reuses the connection the
asker opened, so everyone behind a NAT would read as public), then drops it.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from typing import Any

import multiaddr
import trio

log = logging.getLogger("p2pnode.net")

DIAL_BACK_TIMEOUT_S = 5.0  # one address: TCP connect and the Noise handshake
DIALS_TIMEOUT_S = 8.0  # all the dials of one request (waiting for a socket included): the
#                       asker gets its answer before it gives up (this node's client waits 10 s)
MAX_REQUEST_BYTES = 8 * 1024  # a request names the asker and its addresses: a few dozen fit
MAX_DIAL_ADDRS = 3  # addresses dialed per request (those on the asker's observed IP)
WINDOW_S = 60.0
PER_PEER_PER_WINDOW = 3  # requests a peer may make per window (a node asks each server once a minute)
ALL_PER_WINDOW = 60  # requests served per window from all peers
MAX_REQUESTS_IN_FLIGHT = 16
MAX_DIALS_IN_FLIGHT = 8  # dial-back sockets open at once
ONE_AT_A_TIME, PER_PEER = "one request at a time", "too many requests from this peer"
PEER_LIMITS = (ONE_AT_A_TIME, PER_PEER)  # refusals that are the asking peer's own doing


class DialBackLimits:
    """Which requests to serve: rate and concurrency, per peer and in all. Pure: time is passed in.

    Remembers at most the peers of the last window's admitted requests (:data:`ALL_PER_WINDOW`)."""

    def __init__(self, *, per_peer: int = PER_PEER_PER_WINDOW, in_all: int = ALL_PER_WINDOW,
                 window_s: float = WINDOW_S, max_in_flight: int = MAX_REQUESTS_IN_FLIGHT) -> None:
        self.per_peer, self.in_all, self.window_s, self.max_in_flight = per_peer, in_all, window_s, max_in_flight
        self._all: deque[float] = deque()
        self._peers: dict[bytes, deque[float]] = {}
        self.in_flight: dict[bytes, int] = {}
        self.refused = 0

    def admit(self, peer: bytes, now: float) -> str | None:
        """None to serve the request (then :meth:`done` when it ends), else why not."""
        cutoff = now - self.window_s
        while self._all and self._all[0] <= cutoff:
            self._all.popleft()
        for key in [k for k, times in self._peers.items() if times[-1] <= cutoff]:
            del self._peers[key]
        times = self._peers.get(peer, deque())
        while times and times[0] <= cutoff:
            times.popleft()
        why = (ONE_AT_A_TIME if self.in_flight.get(peer, 0) else
               "too many requests in flight" if sum(self.in_flight.values()) >= self.max_in_flight else
               PER_PEER if len(times) >= self.per_peer else
               "too many requests" if len(self._all) >= self.in_all else None)
        if why is not None:
            self.refused += 1
            return why
        times.append(now)
        self._peers[peer] = times
        self._all.append(now)
        self.in_flight[peer] = 1
        return None

    def done(self, peer: bytes) -> None:
        self.in_flight.pop(peer, None)


def dialable(addrs: list[bytes], observed_ip: str | None) -> list[bytes]:
    """The addresses to dial back: on the asker's observed IP (nothing else: no third parties),
    each once, at most :data:`MAX_DIAL_ADDRS`, in the asker's order."""
    from libp2p.host.autonat.autonat import AutoNATService

    out = list(dict.fromkeys(AutoNATService._filter_by_observed_ip(addrs, observed_ip)))
    return out[:MAX_DIAL_ADDRS]


async def fresh_dial(host: Any, peer_id: Any, addr: multiaddr.Multiaddr) -> bool:
    """True if a new TCP connection to ``addr`` completes a Noise handshake with ``peer_id``. The
    socket is closed however this ends, cancellation included."""
    swarm = host.get_network()
    transport = swarm.transport_manager.transport_for_dialing(addr)
    if transport is None:
        return False
    raw = None
    try:
        with trio.fail_after(DIAL_BACK_TIMEOUT_S):
            raw = await transport.dial(addr)
            secured = await swarm.upgrader.upgrade_security(raw, True, peer_id)
        raw = None
        with trio.CancelScope(shield=True), trio.move_on_after(1.0):
            await secured.close()
        return True
    except Exception as exc:  # noqa: BLE001 - unreachable, refused, wrong peer: not reachable there
        log.debug("dial-back to %s failed: %s", addr, exc)
        return False
    finally:
        if raw is not None:
            with trio.CancelScope(shield=True), trio.move_on_after(1.0):
                try:
                    await raw.close()
                except Exception:  # noqa: BLE001 - already closed
                    pass


class DialBackServer:
    """Answers ``/libp2p/autonat/1.0.0`` requests (see the module's docstring); ``client`` is the
    library's AutoNAT service without its server, for this node's own questions."""

    def __init__(self, host: Any, *, now: Callable[[], float] = trio.current_time,
                 penalise: Callable[[bytes, str], None] = lambda peer, code: None) -> None:
        from libp2p.host.autonat.autonat import AUTONAT_PROTOCOL_ID, AutoNATService

        self.host = host
        self.now, self.penalise = now, penalise
        self.client = AutoNATService(host, serve=False)
        self.limits = DialBackLimits()
        self.dials = trio.CapacityLimiter(MAX_DIALS_IN_FLIGHT)
        self.dialed = 0  # dial-backs started
        self._requests: dict[Any, set[trio.CancelScope]] = {}  # requester -> its requests
        host.set_stream_handler(AUTONAT_PROTOCOL_ID, self.handle_stream)
        host.get_network().register_notifee(_on_disconnect(self.forget))

    def forget(self, peer: Any) -> None:
        """``peer`` left: end its requests now, and with them its dials."""
        for scope in self._requests.pop(peer, ()):
            scope.cancel()

    async def handle_stream(self, stream: Any) -> None:
        from libp2p.host.autonat.pb.autonat_pb2 import Message

        peer = stream.muxed_conn.peer_id
        why = self.limits.admit(peer.to_bytes(), self.now())
        if why is not None:
            log.debug("AutoNAT request from %s refused: %s", peer, why)
            if why in PEER_LIMITS:
                self.penalise(peer.to_bytes(), "rate_limited")
            await _reply(stream, Message.E_INTERNAL_ERROR, f"busy: {why}")
            return
        scope = trio.CancelScope()  # cancelled when the requester leaves
        self._requests.setdefault(peer, set()).add(scope)
        try:
            with scope:
                status, text, addr = await self._serve(stream, peer)
                if status == Message.E_BAD_REQUEST:
                    self.penalise(peer.to_bytes(), "malformed")
                await _reply(stream, status, text, addr)
        finally:
            self.limits.done(peer.to_bytes())
            scopes = self._requests.get(peer)
            if scopes is not None:
                scopes.discard(scope)
                if not scopes:
                    del self._requests[peer]
        if scope.cancelled_caught:
            with trio.CancelScope(shield=True), trio.move_on_after(1.0):
                try:
                    await stream.reset()
                except Exception:  # noqa: BLE001 - the peer is gone
                    pass

    async def _serve(self, stream: Any, peer: Any) -> tuple[int, str, bytes | None]:
        """(status, text, the address reached) for one request read from ``stream``."""
        from libp2p.host.autonat.autonat import AutoNATService, _is_relayed_stream
        from libp2p.host.autonat.pb.autonat_pb2 import Message
        from libp2p.utils.varint import read_varint_prefixed_bytes_limited

        try:
            message = Message()
            with trio.fail_after(DIAL_BACK_TIMEOUT_S):  # a request comes at once
                message.ParseFromString(await read_varint_prefixed_bytes_limited(stream, MAX_REQUEST_BYTES))
        except Exception as exc:  # noqa: BLE001 - too large, cut short, too slow, not protobuf
            return Message.E_BAD_REQUEST, f"bad request: {type(exc).__name__}", None
        if message.type != Message.DIAL or message.dial.peer.id != peer.to_bytes():
            return Message.E_BAD_REQUEST, "a dial request names the peer that sends it", None
        if _is_relayed_stream(stream):
            return Message.E_DIAL_REFUSED, "dial requests over relayed connections are refused", None
        addrs = dialable([bytes(a) for a in message.dial.peer.addrs], AutoNATService._observed_ip(stream))
        if not addrs:
            return Message.E_DIAL_REFUSED, "no advertised address matches the observed IP", None
        with trio.move_on_after(DIALS_TIMEOUT_S):
            for raw in addrs:
                async with self.dials:
                    self.dialed += 1
                    if await fresh_dial(self.host, peer, multiaddr.Multiaddr(raw)):
                        return Message.OK, "", raw
        return Message.E_DIAL_ERROR, "all dials failed", None


async def _reply(stream: Any, status: int, text: str, addr: bytes | None = None) -> None:
    from libp2p.host.autonat.pb.autonat_pb2 import Message
    from libp2p.utils.varint import encode_varint_prefixed

    response = Message()
    response.type = Message.DIAL_RESPONSE
    response.dialResponse.status = status  # type: ignore[assignment]
    response.dialResponse.statusText = text
    if addr is not None:
        response.dialResponse.addr = addr
    try:
        await stream.write(encode_varint_prefixed(response.SerializeToString()))
        await stream.close()
    except Exception as exc:  # noqa: BLE001 - the asker is gone
        log.debug("AutoNAT answer not sent: %s", exc)


def _on_disconnect(gone: Callable[[Any], None]) -> Any:
    """A libp2p network notifee that calls ``gone(peer)`` when a peer's last connection closes
    (the swarm forgets a connection before it tells its notifees)."""
    from libp2p.abc import INotifee

    class _OnDisconnect(INotifee):
        async def disconnected(self, network: Any, conn: Any) -> None:
            try:
                peer = conn.muxed_conn.peer_id
            except Exception:  # noqa: BLE001 - not a peer connection
                return
            if not network.connections.get(peer):
                gone(peer)

        async def connected(self, network: Any, conn: Any) -> None:
            pass

        async def opened_stream(self, network: Any, stream: Any) -> None:
            pass

        async def closed_stream(self, network: Any, stream: Any) -> None:
            pass

        async def listen(self, network: Any, multiaddr: Any) -> None:
            pass

        async def listen_close(self, network: Any, multiaddr: Any) -> None:
            pass

    return _OnDisconnect()
