"""Bounds that hold against one peer: stream caps, bans at the door, no job run twice, bad reports and
lying blob holders refused; real hosts on loopback."""

from __future__ import annotations

import os
from typing import Any

import pytest
import trio

from p2pnode.net.framing import FramedStream
from p2pnode.services.blobs import MAX_STREAMS_PER_PEER as BLOB_CAP
from p2pnode.services.provider import MAX_STREAMS_PER_PEER as JOB_CAP
from p2pnode.wire import codec
from p2pnode.wire import job as m
from p2pnode.wire.blob import BlobError, manifest_for
from p2pnode.wire.names import BLOB_PROTOCOL, JOB_PROTOCOL, REPORTS_TOPIC
from tests.integration.hostile import hostile_peer
from tests.integration.swarm import all_list_all, node_config, start_node, swarm, wait_connected
from tests.integration.test_bad_ads import attacker_connected_to
from tests.integration.test_hostile import eventually, ledger_verifies, status

TRICKLERS = 300


@pytest.mark.parametrize(("protocol", "cap"), [(JOB_PROTOCOL, JOB_CAP), (BLOB_PROTOCOL, BLOB_CAP)])
async def test_one_peer_cannot_hog_the_streams(protocol: str, cap: int) -> None:
    async with trio.open_nursery() as nursery:
        provider = (await start_node(nursery, node_config())).node
        limits = provider.jobs.limits if protocol == JOB_PROTOCOL else provider.blobs.limits
        async with hostile_peer(provider) as peer:
            held, most, tried = [], 0, 0
            for tried in range(1, TRICKLERS + 1):  # each stream begins a frame, then trickles nothing
                try:
                    stream = await peer.stream(protocol)
                    await stream.write(b"\x40")
                    held.append(stream)
                except Exception:  # noqa: BLE001 - refused (over the cap), or banned and disconnected
                    if peer.host.get_id() not in provider.host.get_network().connections:
                        break
                most = max(most, limits.open(peer.peer_id))
                assert (await status(provider))["state"] != "error"  # answering all along
            assert 0 < most <= cap
            assert limits.refused.get("stream_cap", 0) >= 1
            await eventually(lambda: provider.penalties.is_banned(peer.peer_id, provider._clock()),
                             "the hog to be banned")
            assert tried < TRICKLERS  # cut off long before it got them all
            await eventually(lambda: peer.host.get_id() not in provider.host.get_network().connections,
                             "the hog to be disconnected")
        await eventually(lambda: limits.open() == 0, "every stream of the hog closed")
        await ledger_verifies(provider)
        nursery.cancel_scope.cancel()


async def test_a_banned_peer_that_comes_back_gets_nothing() -> None:
    async with trio.open_nursery() as nursery:
        provider = (await start_node(nursery, node_config())).node
        async with attacker_connected_to(provider.addrs()[0]) as evil:
            await wait_connected(provider, evil.host.get_id())
            with trio.fail_after(15):
                while provider.host.get_id() not in evil.pubsub.peer_topics.get("p2pnode/capacity/1", ()):
                    await trio.sleep(0.05)
            for i in range(12):
                await evil.publish(b"garbage %d" % i)  # malformed ads: banned
            await eventually(lambda: evil.host.get_id() not in provider.host.get_network().connections,
                             "the banned peer to be disconnected")
            # it comes straight back and asks for a bid
            from libp2p.peer.id import ID
            from libp2p.peer.peerinfo import PeerInfo

            from p2pnode.net.host import parse_multiaddr

            target = ID(provider.identity.peer_id)
            evil.host.get_network().unblock_peer(target)
            asked = False
            try:
                with trio.fail_after(10):
                    await evil.host.connect(PeerInfo(target, [parse_multiaddr(provider.addrs()[0].split("/p2p/")[0])]))
                    stream = await evil.host.new_stream(target, [JOB_PROTOCOL])
                    fs = FramedStream(stream, max_frame=m.MAX_MESSAGE)
                    rfb = m.RequestForBids(os.urandom(16), "matmul", {"m": 8, "n": 8, "k": 8}, evil.identity.peer_id,
                                           os.urandom(16), 10**9, 2**42, 0, "", "none")
                    await fs.send(rfb.encode())
                    asked = True
                    reply = m.decode(await fs.receive())
                    raise AssertionError(f"a banned peer got an answer: {reply}")
            except AssertionError:
                raise
            except Exception:  # noqa: BLE001 - refused at the door or reset: what we want
                pass
            assert not any(r.role == "provider" for r in provider.jobs.records), "a banned peer's job was taken"
            await eventually(lambda: evil.host.get_id() not in provider.host.get_network().connections,
                             f"the banned peer to be dropped again (asked={asked})")
        nursery.cancel_scope.cancel()


async def test_a_replayed_job_does_not_run_twice() -> None:
    async with trio.open_nursery() as nursery:
        provider = (await start_node(nursery, node_config())).node
        async with hostile_peer(provider) as peer:
            conv = await peer.job()
            bid = await conv.receive()
            assert isinstance(bid, m.Bid)
            award, inputs = conv.award(bid.price), conv.inputs()
            await conv.send(award)
            await conv.send(inputs)
            assert isinstance(await conv.receive_until(m.Result), m.Result)
            await conv.send(conv.receipt())
            await eventually(lambda: provider.jobs.records[-1].state == "done", "the first run to finish")
            ran = provider.executor.completed
            # the same request, award and inputs again, on a new stream
            again = await peer.job(conv.rfb)
            for msg in (award, inputs):
                try:
                    await again.send(msg)
                except Exception:  # noqa: BLE001 - already reset
                    break
            assert await again.ends()
            await eventually(lambda: provider.penalties.score(peer.peer_id, provider._clock()) > 0,
                             "a penalty for the replay")
            assert provider.executor.completed == ran
            assert [r.job for r in provider.jobs.records].count(conv.rfb.job.hex()) == 1
        nursery.cancel_scope.cancel()


async def test_bad_reports_are_dropped_and_their_forwarder_penalised() -> None:
    async with swarm(2, line=False) as nodes:
        await nodes[0].node.wait_until(lambda: all_list_all(nodes), timeout=30)
        honest, evil = nodes[0].node, nodes[1].node
        with trio.fail_after(15):  # the evil node must know the honest one reads the topic
            while honest.host.get_id() not in evil.pubsub.peer_topics.get(REPORTS_TOPIC, ()):
                await trio.sleep(0.05)
        evil.pubsub.set_topic_validator(REPORTS_TOPIC, lambda *_: True, False)  # it checks nothing
        for payload in (b"\xff\xff", codec.encode({"t": "report", "v": 9}), b"\x00" * 70000):
            await evil.pubsub.publish(REPORTS_TOPIC, payload)
        await eventually(lambda: honest.penalties.score(evil.identity.peer_id, honest._clock()) > 0,
                         "a penalty for the forwarder of bad reports")
        assert honest.trust.reports_received == 0
        assert (await status(honest))["state"] != "error"
        await ledger_verifies(honest)


async def test_a_lying_blob_holder_is_refused_and_penalised() -> None:
    async with swarm(2, line=False) as nodes:
        await nodes[0].node.wait_until(lambda: all_list_all(nodes), timeout=30)
        reader, liar = nodes[0].node, nodes[1].node
        data = os.urandom(3 * (1 << 20))
        good = manifest_for(data)
        other = manifest_for(os.urandom(100))

        def liar_serves(frames: list[bytes]) -> Any:
            async def handler(stream: Any) -> None:
                fs = FramedStream(stream, max_frame=(1 << 20) + 1024)
                await fs.receive()
                try:
                    for f in frames:
                        await fs.send(f)
                    await trio.sleep_forever()  # and never ends the stream
                except Exception:  # noqa: BLE001
                    pass

            return handler

        cases = {
            "a manifest for another blob": [codec.encode({"t": "manifest", "m": other.raw})],
            "manifests without end": [codec.encode({"t": "manifest", "m": good.raw})] * 50,
            "a chunk out of order": [codec.encode({"t": "manifest", "m": good.raw}),
                                     codec.encode({"t": "chunk", "i": 1, "data": data[1 << 20: 2 << 20]})],
            "a chunk before the manifest": [codec.encode({"t": "chunk", "i": 0, "data": data[: 1 << 20]})],
        }
        for what, frames in cases.items():
            liar.host.set_stream_handler(BLOB_PROTOCOL, liar_serves(frames))
            before = reader.penalties.score(liar.identity.peer_id, reader._clock())
            with pytest.raises(BlobError), trio.fail_after(20):
                await reader.blobs.fetch(liar.identity.peer_id, good.id)
            assert reader.penalties.score(liar.identity.peer_id, reader._clock()) > before, what
            assert good.id not in reader.blobs.store
