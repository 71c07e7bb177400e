"""A hostile peer for tests: a bare libp2p host (Noise, Yamux, like any node) with a fresh identity,
which speaks the job, blob, AutoNAT and DHT protocols by hand so it can send anything at any point.

Each :func:`hostile_peer` is a new identity, so one test's offences do not ban the next one's peer.
:class:`Tarpit` is the "third party" of amplification attacks: loopback listeners the test owns,
which count the connections a victim opens to them.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import trio
from nacl.signing import SigningKey

from p2pnode.identity import Identity
from p2pnode.net.framing import FramedStream, StreamGone, encode_frame
from p2pnode.net.host import build_host, parse_multiaddr
from p2pnode.node import Node
from p2pnode.wire import codec, sealing
from p2pnode.wire import job as m
from p2pnode.wire.blob import MAX_FRAME
from p2pnode.wire.names import BLOB_PROTOCOL, JOB_PROTOCOL

LOOPBACK = "/ip4/127.0.0.1/tcp/0"
SMALL = {"m": 8, "n": 8, "k": 8, "dtype": "int8"}


@dataclass
class Conversation:
    """One job stream opened by the hostile peer, with the honest messages it would send."""

    peer: Hostile
    fs: FramedStream
    rfb: m.RequestForBids

    async def send(self, msg: m.Message) -> None:
        await self.fs.send(msg.encode())

    async def send_raw(self, payload: bytes) -> None:
        await self.fs.send(payload)

    async def write(self, data: bytes) -> None:
        await self.fs.stream.write(data)

    async def receive(self, timeout: float = 10.0) -> m.Message:
        with trio.fail_after(timeout):
            return m.decode(await self.fs.receive())

    async def receive_until(self, kind: type[m.Message], timeout: float = 30.0) -> m.Message:
        with trio.fail_after(timeout):
            while True:
                msg = m.decode(await self.fs.receive())
                if isinstance(msg, kind):
                    return msg

    def award(self, price: int, *, key: SigningKey | None = None, job: bytes | None = None) -> m.Award:
        return m.make_award(job or self.rfb.job, key or self.peer.identity.signing_key,
                            requester=self.peer.identity.peer_id, provider=self.peer.target_id,
                            nonce=self.rfb.nonce, price=price, deadline_ms=self.rfb.deadline_ms)

    def inputs(self, private: dict[str, Any] | None = None) -> m.Inputs:
        sealed = sealing.seal(codec.encode(private if private is not None else {"seed": 7}), self.peer.target_id)
        return m.Inputs(self.rfb.job, (), sealed)

    def receipt(self, *, key: SigningKey | None = None) -> m.Receipt:
        return m.make_receipt(self.rfb.job, key or self.peer.identity.signing_key,
                              requester=self.peer.identity.peer_id, provider=self.peer.target_id,
                              nonce=self.rfb.nonce, accepted=True, outcome="ok", paid=1)

    async def ends(self, timeout: float = 15.0) -> bool:
        """True once the other side closes or resets the stream (what it sent before is skipped)."""
        with trio.move_on_after(timeout):
            try:
                while True:
                    await self.fs.receive()
            except (StreamGone, Exception):  # noqa: BLE001 - any end will do
                return True
        return False


@dataclass
class Hostile:
    identity: Identity
    host: Any
    target_id: bytes
    target_addrs: list[str]

    @property
    def peer_id(self) -> bytes:
        return self.identity.peer_id

    async def leave(self) -> None:
        await _leave(self)

    async def connect(self) -> None:
        from libp2p.peer.id import ID
        from libp2p.peer.peerinfo import PeerInfo

        addrs = [parse_multiaddr(a.split("/p2p/")[0]) for a in self.target_addrs]
        self.host.get_network().unblock_peer(ID(self.target_id))
        with trio.fail_after(10):
            await self.host.connect(PeerInfo(ID(self.target_id), addrs))

    async def stream(self, protocol: str) -> Any:
        from libp2p.peer.id import ID

        with trio.fail_after(10):
            return await self.host.new_stream(ID(self.target_id), [protocol])

    def rfb(self, params: dict[str, Any] | None = None, *, workload: str = "matmul", deadline_s: float = 60.0,
            job: bytes | None = None) -> m.RequestForBids:
        return m.RequestForBids(job or os.urandom(16), workload, dict(params or SMALL), self.peer_id, os.urandom(16),
                                10**12, int((time.time() + deadline_s) * 1000), 0, "", "none")

    async def job(self, rfb: m.RequestForBids | None = None) -> Conversation:
        """Open a job stream and send a request for bids (not yet answered)."""
        fs = FramedStream(await self.stream(JOB_PROTOCOL), max_frame=m.MAX_MESSAGE)
        conv = Conversation(self, fs, rfb or self.rfb())
        await conv.send(conv.rfb)
        return conv

    async def blob_stream(self) -> FramedStream:
        return FramedStream(await self.stream(BLOB_PROTOCOL), max_frame=MAX_FRAME)

    async def autonat_request(self, addrs: list[str], *, peer_id: bytes | None = None,
                              timeout: float = 60.0) -> tuple[int, str]:
        """Ask the target to dial this peer back at ``addrs`` (AutoNAT v1): (status, text)."""
        from libp2p.host.autonat.pb.autonat_pb2 import Message
        from libp2p.utils.varint import encode_varint_prefixed, read_varint_prefixed_bytes_limited
        from multiaddr import Multiaddr

        request = Message()
        request.type = Message.DIAL
        request.dial.peer.id = peer_id or self.peer_id
        request.dial.peer.addrs.extend(Multiaddr(a).to_bytes() for a in addrs)
        stream = await self.stream("/libp2p/autonat/1.0.0")
        try:
            with trio.fail_after(timeout):
                await stream.write(encode_varint_prefixed(request.SerializeToString()))
                response = Message()
                response.ParseFromString(await read_varint_prefixed_bytes_limited(stream, 1 << 16))
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                await stream.close()
        return int(response.dialResponse.status), response.dialResponse.statusText

    def provider_record(self, key: bytes, addrs: list[str], *, signed_record: bytes = b"") -> Any:
        """An ADD_PROVIDER message: this peer provides ``key`` at ``addrs`` (any addresses)."""
        from libp2p.kad_dht.pb.kademlia_pb2 import Message
        from libp2p.peer.id import ID
        from multiaddr import Multiaddr

        message = Message()
        message.type = Message.MessageType.ADD_PROVIDER
        message.key = key
        provider = message.providerPeers.add()
        provider.id = ID(self.peer_id).to_bytes()
        provider.addrs.extend(Multiaddr(a).to_bytes() for a in addrs)
        if signed_record:
            provider.signedRecord = signed_record
        return message

    def signed_record(self, addrs: list[str]) -> bytes:
        """This peer's signed peer record (a self-certified address list) naming ``addrs``, with a
        sequence number that beats the one identify sends."""
        from libp2p.peer.envelope import seal_record
        from libp2p.peer.peer_record import PeerRecord
        from multiaddr import Multiaddr

        record = PeerRecord(self.host.get_id(), [Multiaddr(a) for a in addrs], seq=time.time_ns() + 10**15)
        return bytes(seal_record(record, self.host.get_private_key()).marshal_envelope())

    async def dht_request(self, message: Any, *, timeout: float = 30.0) -> tuple[Any, int]:
        """Send one message on the market's DHT protocol: (the answer, its size in bytes)."""
        from libp2p.kad_dht.pb.kademlia_pb2 import Message
        from libp2p.utils.varint import encode_varint_prefixed, read_varint_prefixed_bytes_limited

        from p2pnode.net.workarounds import MARKET_DHT_PROTOCOL

        stream = await self.stream(MARKET_DHT_PROTOCOL)
        try:
            with trio.fail_after(timeout):
                await stream.write(encode_varint_prefixed(message.SerializeToString()))
                raw = await read_varint_prefixed_bytes_limited(stream, 16 << 20)
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                await stream.close()
        answer = Message()
        answer.ParseFromString(raw)
        return answer, len(raw)

    async def get_providers(self, key: bytes) -> tuple[Any, int]:
        """Ask for ``key``'s providers: (the answer, its size in bytes)."""
        from libp2p.kad_dht.pb.kademlia_pb2 import Message

        message = Message()
        message.type = Message.MessageType.GET_PROVIDERS
        message.key = key
        return await self.dht_request(message)


class Tarpit:
    """Loopback listeners that take every connection and never answer (``hold``: the connection
    stays open until the dialer closes it) or close it at once. ``accepted``, ``open`` and
    ``peak`` (most open at once) count what dialers did to them."""

    def __init__(self, *, hold: bool = True) -> None:
        self.hold = hold
        self.ports: list[int] = []
        self.accepted = self.open = self.peak = 0
        self._changed = trio.Event()

    def addrs(self, copies: int = 1) -> list[str]:
        return [f"/ip4/127.0.0.1/tcp/{port}" for port in self.ports] * copies

    async def serve(self, n_ports: int, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        listeners = [(await trio.open_tcp_listeners(0, host="127.0.0.1"))[0] for _ in range(n_ports)]
        self.ports = [listener.socket.getsockname()[1] for listener in listeners]
        task_status.started(self)
        await trio.serve_listeners(self._take, listeners)

    async def wait(self, predicate: Callable[[Tarpit], bool], timeout: float) -> None:
        with trio.fail_after(timeout):
            while not predicate(self):
                await self._changed.wait()

    def _count(self, opened: int) -> None:
        self.open += opened
        self.accepted += max(opened, 0)
        self.peak = max(self.peak, self.open)
        self._changed.set()
        self._changed = trio.Event()

    async def _take(self, stream: trio.SocketStream) -> None:
        self._count(1)
        try:
            while self.hold and await stream.receive_some(4096):
                pass  # the dialer's hello: never answered
        except trio.BrokenResourceError:
            pass
        finally:
            self._count(-1)
            await stream.aclose()


@asynccontextmanager
async def hostile_peer(target: Node | str) -> AsyncIterator[Hostile]:
    """A new identity connected to ``target``: a node in this process, or a ``/p2p/`` multiaddr."""
    from p2pnode.wire.peer_id import from_base58

    if isinstance(target, Node):
        target_id, addrs = target.identity.peer_id, target.addrs()
    else:
        target_id, addrs = from_base58(target.split("/p2p/")[1]), [target]
    identity = Identity.generate()
    host = build_host(identity, [parse_multiaddr(LOOPBACK)])
    async with host.run([parse_multiaddr(LOOPBACK)]):
        peer = Hostile(identity, host, target_id, addrs)
        await peer.connect()
        try:
            yield peer
        finally:
            await peer.leave()


async def _leave(peer: Hostile) -> None:
    """Close the connection to the target, as a peer that goes away does (a host that stops
    running leaves its connections open)."""
    from libp2p.peer.id import ID

    with trio.CancelScope(shield=True), trio.move_on_after(5):
        try:
            await peer.host.disconnect(ID(peer.target_id))
        except Exception:  # noqa: BLE001 - already gone
            pass


def frame(payload: bytes) -> bytes:
    return encode_frame(payload)
