"""AutoNAT dial-back against hostile askers on loopback: the bounds hold, and a leaver's dials end.

The "third party" is a :class:`Tarpit` of the test's own: listeners on 127.0.0.1 (the hostile
peers' observed IP, so the server's IP rule lets the addresses through) that count the victim's
connections. A tarpit that holds connections shows the sockets the victim keeps open; one that
closes them at once lets every address of a request be tried in a moment.
"""

from __future__ import annotations

from contextlib import AsyncExitStack

import pytest
import trio
from libp2p.host.autonat.pb.autonat_pb2 import Message

from p2pnode.net import autonat
from p2pnode.net.autonat import DialBackLimits
from tests.integration.hostile import Hostile, Tarpit, hostile_peer
from tests.integration.swarm import node_config, start_node

BUSY = Message.E_INTERNAL_ERROR


async def test_one_request_dials_a_few_addresses_and_a_peer_a_few_requests_a_minute() -> None:
    async with trio.open_nursery() as nursery:
        victim = (await start_node(nursery, node_config(provide=False))).node
        tarpit = await nursery.start(Tarpit(hold=False).serve, 20)
        addrs = tarpit.addrs(copies=30)  # 600 addresses (6 KB), all on the asker's IP
        async with hostile_peer(victim) as peer:
            answers = [await peer.autonat_request(addrs, timeout=30) for _ in range(10)]
            pushing = victim.penalties.score(peer.peer_id, victim.now())
        served = answers[:autonat.PER_PEER_PER_WINDOW]
        assert all(status == Message.E_DIAL_ERROR for status, _ in served), answers
        assert all(status == BUSY and text.startswith("busy") for status, text in
                   answers[autonat.PER_PEER_PER_WINDOW:]), answers
        # each served request dialed three distinct addresses, no more
        assert tarpit.accepted == autonat.PER_PEER_PER_WINDOW * autonat.MAX_DIAL_ADDRS
        assert pushing > 0  # asking past its limits counts against the peer (a little each time)
        nursery.cancel_scope.cancel()


async def test_a_flood_holds_a_few_sockets_and_they_close_when_the_askers_leave(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """12 identities, 20 requests each at once, 100 addresses a request, at a tarpit that never
    answers: one request per identity is served, the others are told "busy" at once; 8 sockets are
    open at the peak; when the askers disconnect, the sockets close at once (not after the dial
    timeout, made long here) and the node holds nothing of theirs."""
    monkeypatch.setattr(autonat, "DIAL_BACK_TIMEOUT_S", 60.0)
    monkeypatch.setattr(autonat, "DIALS_TIMEOUT_S", 120.0)
    async with trio.open_nursery() as nursery:
        victim = (await start_node(nursery, node_config(provide=False))).node
        assert victim.relaying is not None
        server = victim.relaying.dial_back
        tarpit = await nursery.start(Tarpit(hold=True).serve, 20)
        answers: list[int] = []

        async def ask(peer: Hostile) -> None:
            try:
                status, _ = await peer.autonat_request(tarpit.addrs(copies=5), timeout=120)
                answers.append(status)
            except Exception:  # noqa: BLE001 - the served request ends with the asker
                pass

        async with trio.open_nursery() as askers:
            async with AsyncExitStack() as stack:
                peers = [await stack.enter_async_context(hostile_peer(victim)) for _ in range(12)]
                for peer in peers:
                    for _ in range(20):
                        askers.start_soon(ask, peer)
                await tarpit.wait(lambda t: t.open == autonat.MAX_DIALS_IN_FLIGHT, timeout=30)
                with trio.fail_after(30):
                    while len(answers) < 12 * 19:
                        await trio.sleep(0.05)
                assert answers.count(BUSY) == 12 * 19  # one served request per asker
                assert server.dials.borrowed_tokens == autonat.MAX_DIALS_IN_FLIGHT
                assert sum(server.limits.in_flight.values()) == 12  # 4 of them wait for a socket
                left_at = trio.current_time()
            # the askers have left (their hosts stopped) with their requests unanswered
            askers.cancel_scope.cancel()
        await tarpit.wait(lambda t: t.open == 0, timeout=10)
        assert trio.current_time() - left_at < 10  # far within the 60 s a dial may take
        await victim.wait_until(lambda: not server.limits.in_flight and not server._requests, timeout=10)
        assert tarpit.peak == autonat.MAX_DIALS_IN_FLIGHT
        assert tarpit.accepted <= 12 * autonat.MAX_DIAL_ADDRS
        nursery.cancel_scope.cancel()


async def test_a_request_naming_another_peer_or_too_large_is_refused_without_a_dial() -> None:
    async with trio.open_nursery() as nursery:
        victim = (await start_node(nursery, node_config(provide=False))).node
        tarpit = await nursery.start(Tarpit(hold=False).serve, 1)
        async with hostile_peer(victim) as peer, hostile_peer(victim) as other:
            status, _ = await peer.autonat_request(tarpit.addrs(), peer_id=other.peer_id)
            assert status == Message.E_BAD_REQUEST
            assert victim.penalties.score(peer.peer_id, victim.now()) > 0
        async with hostile_peer(victim) as peer:
            status, _ = await peer.autonat_request(tarpit.addrs(copies=1000))  # 10 KB: over the bound
            assert status == Message.E_BAD_REQUEST
        async with hostile_peer(victim) as peer:  # a third party's address is never dialed
            status, _ = await peer.autonat_request([f"/ip4/127.0.0.77/tcp/{tarpit.ports[0]}"])
            assert status == Message.E_DIAL_REFUSED
        assert tarpit.accepted == 0
        nursery.cancel_scope.cancel()


def test_requests_are_limited_per_peer_in_all_and_at_a_time() -> None:
    limits = DialBackLimits(per_peer=3, in_all=10, window_s=60.0, max_in_flight=4)
    a, b = b"a", b"b"
    assert limits.admit(a, 0.0) is None
    assert limits.admit(a, 0.1) == "one request at a time"
    limits.done(a)
    assert limits.admit(a, 1.0) is None
    limits.done(a)
    assert limits.admit(a, 2.0) is None
    limits.done(a)
    assert limits.admit(a, 3.0) == "too many requests from this peer"
    assert limits.admit(a, 60.5) is None  # the first one left the window
    limits.done(a)
    peers = [bytes([i]) for i in range(20)]
    admitted = 0
    for i, p in enumerate(peers):
        if limits.admit(p, 61.0 + i / 100) is None:
            admitted += 1
            limits.done(p)
    assert admitted == 10 - 2  # a's requests at 2.0 and 60.5 are still in the window
    for p in peers[10:14]:  # in flight, in all
        limits.admit(p, 200.0)
    assert limits.admit(b, 200.0) == "too many requests in flight"
    # a window later nothing is remembered but what is in flight
    assert set(limits._peers) == set(peers[10:14])
