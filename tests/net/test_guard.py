"""The boundary every inbound stream passes: peer errors (even inside exception groups) penalise and
reset; bugs are logged and end the stream only; cancellation still stops everything."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import trio

from p2pnode.errors import CodecError, RemoteProtocolError
from p2pnode.net.framing import StreamGone
from p2pnode.net.guard import PeerGate, guard_stream_handler, guard_validator
from p2pnode.protocol.limits import StreamLimits


class FakeStream:
    def __init__(self, peer: bytes) -> None:
        class _Id:
            def to_bytes(self) -> bytes:
                return peer

        class _Conn:
            peer_id = _Id()

        self.muxed_conn = _Conn()
        self.was_reset = False

    async def reset(self) -> None:
        self.was_reset = True


class Gate:
    def __init__(self, banned: set[bytes] | None = None) -> None:
        self.banned = banned or set()
        self.offences: list[tuple[bytes, str]] = []
        self.gate = PeerGate(is_banned=lambda p: p in self.banned, penalise=lambda p, c: self.offences.append((p, c)))


async def _nested_peer_error(stream: Any, peer: bytes) -> None:
    async with trio.open_nursery() as outer:
        async def inner() -> None:
            async with trio.open_nursery() as n:
                n.start_soon(trio.sleep_forever)
                raise RemoteProtocolError("peer sent recv_rfb while the job was bid_sent")

        outer.start_soon(inner)


@pytest.mark.parametrize(("body", "code"), [
    (_nested_peer_error, "protocol_violation"),
    (lambda s, p: _raise(CodecError("invalid CBOR")), "malformed"),
    (lambda s, p: _raise(trio.TooSlowError()), "idle_stream"),
])
async def test_peer_errors_penalise_and_reset_even_inside_groups(body: Any, code: str) -> None:
    g, lim = Gate(), StreamLimits(per_peer=2, total=4)
    stream = FakeStream(b"peer")
    await guard_stream_handler("job", body, g.gate, lim)(stream)
    assert g.offences == [(b"peer", code)] and stream.was_reset and lim.open() == 0


async def _raise(exc: BaseException) -> None:
    raise exc


async def test_a_bug_is_logged_and_ends_only_its_stream(caplog: pytest.LogCaptureFixture) -> None:
    g, lim = Gate(), StreamLimits(per_peer=2, total=4)
    stream = FakeStream(b"peer")
    with caplog.at_level(logging.ERROR, logger="p2pnode.guard"):
        await guard_stream_handler("job", lambda s, p: _raise(KeyError("oops")), g.gate, lim)(stream)
    assert g.offences == [] and stream.was_reset and lim.open() == 0
    assert any("KeyError" in (r.exc_text or "") for r in caplog.records)


async def test_the_end_of_a_stream_is_no_offence() -> None:
    g, lim = Gate(), StreamLimits(per_peer=2, total=4)
    stream = FakeStream(b"peer")
    await guard_stream_handler("job", lambda s, p: _raise(StreamGone("end")), g.gate, lim)(stream)
    assert g.offences == [] and not stream.was_reset


async def test_banned_peers_and_hogs_are_turned_away_before_the_handler() -> None:
    g, lim = Gate(banned={b"bad"}), StreamLimits(per_peer=1, total=4)
    ran: list[bytes] = []
    release = trio.Event()

    async def handler(stream: Any, peer: bytes) -> None:
        ran.append(peer)
        await release.wait()

    handle = guard_stream_handler("job", handler, g.gate, lim)
    banned = FakeStream(b"bad")
    await handle(banned)
    assert banned.was_reset and ran == [] and g.offences == []
    async with trio.open_nursery() as n:
        n.start_soon(handle, FakeStream(b"hog"))
        await trio.testing.wait_all_tasks_blocked()
        second = FakeStream(b"hog")
        await handle(second)  # over its cap of one
        assert second.was_reset and g.offences == [(b"hog", "stream_cap")]
        release.set()
    assert ran == [b"hog"] and lim.open() == 0


async def test_cancellation_is_never_swallowed() -> None:
    g, lim = Gate(), StreamLimits(per_peer=2, total=4)
    with trio.move_on_after(0.05) as scope:
        await guard_stream_handler("job", lambda s, p: trio.sleep_forever(), g.gate, lim)(FakeStream(b"p"))
    assert scope.cancelled_caught and lim.open() == 0


def test_a_validator_bug_rejects_the_message() -> None:
    def broken(forwarder: object, msg: object) -> bool:
        raise AttributeError("no such field")

    assert guard_validator("capacity", broken)(None, None) is False
    assert guard_validator("capacity", lambda f, m: True)(None, None) is True
