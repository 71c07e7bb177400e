"""The buffered Noise session: the same bytes as upstream's, in fewer socket reads and writes."""

from __future__ import annotations

import os
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from p2pnode.identity import Identity
from p2pnode.net.host import build_host, parse_multiaddr
from p2pnode.net.noise_session import MAX_PLAINTEXT, BufferedNoiseSession


class Raw:
    """One end of an in-memory byte pipe with libp2p's raw-connection interface, counting calls."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.reads = self.writes = 0

    async def read(self, n: int | None = None) -> bytes:
        self.reads += 1
        try:
            return bytes(await self.stream.receive_some(n))
        except trio.ClosedResourceError:
            return b""

    async def write(self, data: bytes) -> None:
        self.writes += 1
        await self.stream.send_all(data)

    async def close(self) -> None:
        await self.stream.aclose()

    def get_remote_address(self) -> tuple[str, int] | None:
        return None


def _noise_pair() -> tuple[Any, Any]:
    from noise.connection import NoiseConnection

    a = NoiseConnection.from_name(b"Noise_NN_25519_ChaChaPoly_SHA256")
    b = NoiseConnection.from_name(b"Noise_NN_25519_ChaChaPoly_SHA256")
    a.set_as_initiator()
    b.set_as_responder()
    a.start_handshake()
    b.start_handshake()
    b.read_message(a.write_message())
    a.read_message(b.write_message())
    assert a.handshake_finished and b.handshake_finished
    return a, b


def _upstream(raw: Raw, state: Any, initiator: bool) -> Any:
    from libp2p.crypto.ed25519 import create_new_key_pair
    from libp2p.peer.id import ID
    from libp2p.security.noise.io import NoiseTransportReadWriter
    from libp2p.security.secure_session import SecureSession

    me, other = create_new_key_pair(), create_new_key_pair()
    return SecureSession(local_peer=ID.from_pubkey(me.public_key), local_private_key=me.private_key,
                         remote_peer=ID.from_pubkey(other.public_key), remote_permanent_pubkey=other.public_key,
                         is_initiator=initiator, conn=NoiseTransportReadWriter(raw, state))  # type: ignore[arg-type]


def sessions(buffered: tuple[bool, bool] = (True, True)) -> tuple[Any, Any, Raw, Raw]:
    """Two finished Noise sessions over an in-memory pipe: buffered ones, or upstream's."""
    left, right = trio.testing.memory_stream_pair()
    ra, rb = Raw(left), Raw(right)
    na, nb = _noise_pair()
    a, b = _upstream(ra, na, True), _upstream(rb, nb, False)
    return (BufferedNoiseSession(a) if buffered[0] else a, BufferedNoiseSession(b) if buffered[1] else b, ra, rb)


async def _read_all(session: Any, n: int, size: int | None = None) -> bytes:
    out = bytearray()
    while len(out) < n:
        out += await session.read(min(size or n, n - len(out)))
    return bytes(out)


async def test_a_megabyte_write_is_one_socket_write_and_its_reads_are_few() -> None:
    """Upstream: a 1 MiB write is 17 locked socket writes (one per Noise message), and reading it
    back takes two socket reads per message at least."""
    a, b, ra, rb = sessions()
    data = os.urandom(1 << 20)
    async with trio.open_nursery() as n:
        n.start_soon(a.write, data)
        assert await _read_all(b, len(data)) == data
    assert ra.writes == 1
    assert rb.reads < 17  # what arrived together was decrypted together


@pytest.mark.parametrize("size", [1, MAX_PLAINTEXT, MAX_PLAINTEXT + 1, 3 * MAX_PLAINTEXT + 5, (1 << 20) + 7])
@pytest.mark.parametrize("buffered", [(True, False), (False, True)], ids=["to upstream", "from upstream"])
async def test_the_bytes_on_the_wire_are_upstreams(size: int, buffered: tuple[bool, bool]) -> None:
    """Each side reads what the other writes, whichever of the two implementations it is."""
    a, b, _, _ = sessions(buffered)
    data = os.urandom(size)
    async with trio.open_nursery() as n:
        n.start_soon(a.write, data)
        assert await _read_all(b, size) == data
    async with trio.open_nursery() as n:  # and back
        n.start_soon(b.write, data[::-1])
        assert await _read_all(a, size) == data[::-1]


@given(st.lists(st.integers(1, 200_000), min_size=1, max_size=6), st.integers(1, 100_000))
def test_reads_of_any_size_give_back_the_writes_in_order(writes: list[int], read_size: int) -> None:
    async def main() -> None:
        a, b, _, _ = sessions()
        data = [os.urandom(k) for k in writes]
        async with trio.open_nursery() as n:
            async def write_all() -> None:
                for d in data:
                    await a.write(d)
            n.start_soon(write_all)
            assert await _read_all(b, sum(writes), read_size) == b"".join(data)

    trio.run(main)


async def test_a_tampered_message_ends_the_connection() -> None:
    """Upstream raised an error that yamux logged before reading on, out of step with the cipher."""
    from libp2p.network.connection.exceptions import RawConnError

    left, right = trio.testing.memory_stream_pair()
    na, nb = _noise_pair()
    b = BufferedNoiseSession(_upstream(Raw(right), nb, False))
    sealed = bytearray(na.encrypt(b"hello"))
    sealed[3] ^= 1
    await left.send_all(len(sealed).to_bytes(2, "big") + bytes(sealed))
    with pytest.raises(RawConnError, match="authentication"):
        await b.read(5)


async def test_the_end_of_the_connection_is_an_incomplete_read() -> None:
    """What yamux expects of a secure connection that closes: a clean close before any byte."""
    from libp2p.io.exceptions import IncompleteReadError

    a, b, ra, _ = sessions()
    await a.write(b"last")
    assert await b.read(4) == b"last"
    await ra.close()
    with pytest.raises(IncompleteReadError) as caught:
        await b.read(12)
    assert caught.value.is_clean_close


async def test_hosts_move_data_both_ways_on_concurrent_streams() -> None:
    """Real hosts on loopback: four streams at once, each echoing 3 MiB in odd-sized writes."""
    from libp2p.peer.peerinfo import info_from_p2p_addr

    listen = [parse_multiaddr("/ip4/127.0.0.1/tcp/0")]
    a, b = build_host(Identity.generate(), listen), build_host(Identity.generate(), listen)

    async def echo(stream: Any) -> None:
        from libp2p.network.stream.exceptions import StreamEOF

        try:
            while True:
                await stream.write(await stream.read(1 << 20))
        except StreamEOF:
            await stream.close()

    async with a.run(listen), b.run(listen):
        a.set_stream_handler("/test/echo/1", echo)
        await b.connect(info_from_p2p_addr(a.get_addrs()[0]))

        async def one(seed: int) -> None:
            data = os.urandom(3 << 20)
            stream = await b.new_stream(a.get_id(), ["/test/echo/1"])
            got = bytearray()
            async with trio.open_nursery() as n:
                async def send() -> None:
                    for i in range(0, len(data), 99_991 + seed):
                        await stream.write(data[i:i + 99_991 + seed])
                n.start_soon(send)
                while len(got) < len(data):
                    got += await stream.read(1 << 20)
            assert bytes(got) == data
            await stream.close()

        with trio.fail_after(60):
            async with trio.open_nursery() as n:
                for seed in range(4):
                    n.start_soon(one, seed)
