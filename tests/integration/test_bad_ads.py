"""Bad ads from a real attacking libp2p host: rejected by the first honest node, never forwarded."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.tools.anyio_service import background_trio_service
from nacl.signing import SigningKey

from p2pnode.identity import Identity
from p2pnode.net.gossip import build_pubsub
from p2pnode.net.host import build_host, parse_multiaddr
from p2pnode.wire import capacity_ad as ca
from p2pnode.wire import codec, envelope
from p2pnode.wire.names import CAPACITY_TOPIC
from tests.integration.swarm import node_config, start_node, wait_connected


class Attacker:
    """A plain py-libp2p host with gossipsub and no validator: it publishes whatever it is told."""

    def __init__(self, identity: Identity, host: Any, pubsub: Any) -> None:
        self.identity, self.host, self.pubsub = identity, host, pubsub
        self.key: SigningKey = identity.signing_key

    def ad(self, seq: int, *, ttl: float = 30.0, issued: float | None = None) -> bytes:
        now = time.time() if issued is None else issued
        return ca.encode_ad(ca.CapacityAd(
            peer_id=self.identity.peer_id, seq=seq, issued_at_ms=int(now * 1000),
            expires_at_ms=int((now + ttl) * 1000), cpu=ca.CpuInfo("evil", 1, 1 << 30, 1 << 29),
        ), self.key)

    async def publish(self, data: bytes) -> None:
        await self.pubsub.publish(CAPACITY_TOPIC, data)


@asynccontextmanager
async def attacker_connected_to(target_addr: str) -> AsyncIterator[Attacker]:
    identity = Identity.generate()
    listen = [parse_multiaddr("/ip4/127.0.0.1/tcp/0")]
    host = build_host(identity, listen)
    pubsub, router = build_pubsub(host, heartbeat=0.5)
    async with host.run(listen), background_trio_service(pubsub), background_trio_service(router):
        await pubsub.wait_until_ready()
        subscription = await pubsub.subscribe(CAPACITY_TOPIC)
        await host.connect(info_from_p2p_addr(parse_multiaddr(target_addr)))
        attacker = Attacker(identity, host, pubsub)
        attacker.subscription = subscription  # type: ignore[attr-defined]
        yield attacker


async def test_bad_ads_are_rejected_and_not_forwarded() -> None:
    async with trio.open_nursery() as nursery:
        b = await start_node(nursery, node_config())
        c = await start_node(nursery, node_config(bootstrap=[b.node.addrs()[0]]))
        await b.node.wait_until(lambda: c.node.identity.peer_id in b.node.table, timeout=15)
        async with attacker_connected_to(b.node.addrs()[0]) as evil:
            # the attacker joins B's mesh, and captures C's genuine ad bytes off the topic
            with trio.fail_after(15):
                while True:
                    msg = await evil.subscription.get()  # type: ignore[attr-defined]
                    if bytes(msg.from_id) == c.node.identity.peer_id:
                        c_ad = bytes(msg.data)
                        break
            victim_body = codec.encode(ca.decode_ad(c_ad).ad.body_map())
            await evil.publish(b"\xff\x00 definitely not CBOR")  # malformed
            await evil.publish(b"\x00" * (ca.MAX_AD_BYTES + 1))  # oversized
            await evil.publish(envelope.seal(ca.DOMAIN, victim_body, evil.key))  # forged: claims C
            await evil.publish(c_ad)  # C's ad replayed under the attacker's origin
            await evil.publish(evil.ad(10))  # valid
            await evil.publish(evil.ad(9))  # replay of an older sequence: stale
            await evil.publish(evil.ad(11, issued=time.time() - 100, ttl=30))  # expired
            await evil.publish(evil.ad(20))  # sentinel: valid, sent last
            pid = evil.identity.peer_id
            await c.node.wait_until(
                lambda: (e := c.node.table.get(pid)) is not None and e.ad.seq == 20, timeout=15)
            assert evil.host.get_id() not in c.node.host.get_network().connections
        expected = {"malformed", "oversized", "bad_signature", "wrong_origin", "stale", "expired"}
        assert set(b.node.rejected) == expected
        assert c.node.rejected == {}  # nothing bad was forwarded to C
        # the C entry is still C's own, untouched by the forgery
        assert c.node.table.get(c.node.identity.peer_id) is not None
        assert b.node.penalties.score(pid, time.time()) > 30
        nursery.cancel_scope.cancel()


async def test_a_peer_sending_garbage_is_banned_and_disconnected() -> None:
    async with trio.open_nursery() as nursery:
        b = await start_node(nursery, node_config())
        async with attacker_connected_to(b.node.addrs()[0]) as evil:
            await wait_connected(b.node, evil.host.get_id())
            with trio.fail_after(15):  # the attacker must know B reads the topic
                while b.node.host.get_id() not in evil.pubsub.peer_topics.get(CAPACITY_TOPIC, ()):
                    await trio.sleep(0.05)
            for i in range(12):
                await evil.publish(b"garbage %d" % i)
            with trio.fail_after(15):
                while evil.host.get_id() not in b.node.pubsub.blacklisted_peers:
                    await trio.sleep(0.05)
            assert b.node.penalties.is_banned(evil.identity.peer_id, time.time())
            assert b.node.rejected["malformed"] >= 10
            with trio.fail_after(15):
                while evil.host.get_id() in b.node.host.get_network().connections:
                    await trio.sleep(0.05)
            assert any("banned" in r for r in b.node.status_view()["notes"])  # handled: a note, not a problem
        nursery.cancel_scope.cancel()
