"""A hostile peer against real nodes on loopback: whatever it sends, in whatever state, the node keeps
running and answering, the peer is penalised, the job ends on the honest side, the executor is
freed and the ledger still verifies.

Provider side: a bare libp2p host drives a real provider to each state of its machine, then sends
one bad thing. Requester side: a real provider node whose job handler is replaced by a script
answers a real requester badly at each state of the requester's machine.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio
from nacl.signing import SigningKey

from p2pnode.control.client import call
from p2pnode.ledger.store import FILE_NAME, Ledger
from p2pnode.net.framing import FramedStream
from p2pnode.node import Node
from p2pnode.protocol.job_provider import TERMINAL, P
from p2pnode.wire import job as jobs_module
from p2pnode.wire import job as m
from p2pnode.wire.names import JOB_PROTOCOL
from p2pnode.wire.peer_id import peer_id_from_public_key
from tests.integration.hostile import SMALL, Conversation, Hostile, hostile_peer
from tests.integration.swarm import all_list_all, node_config, start_node, swarm

LONG = {"steps": 4000, "batch": 4096, "d_in": 128, "d_hidden": 16}  # ~20 s of work
RICH = 10**9
PROVIDER_STATES = ["offered", "bid_sent", "awarded", "running", "result_sent"]
ATTACKS = ["garbage", "truncated", "oversized", "stalled", "wrong_key", "other_job", "wrong_for_state", "reset"]


async def status(node: Node) -> dict[str, Any]:
    """``status`` through the control socket, as the CLI asks it."""
    return await trio.to_thread.run_sync(lambda: call(node.config.control_socket, "status"))


async def ledger_verifies(node: Node) -> None:
    def verify() -> int:
        with Ledger.inspect(node.config.data_dir / FILE_NAME) as ledger:
            return ledger.verify().entries

    assert await trio.to_thread.run_sync(verify) >= 1


async def eventually(predicate: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    with trio.move_on_after(timeout):
        while not predicate():
            await trio.sleep(0.02)
        return
    raise AssertionError(f"timed out waiting for: {what}")


def penalty(node: Node, peer: bytes) -> float:
    return node.penalties.score(peer, node._clock())


async def reach(peer: Hostile, state: str) -> Conversation:
    """A job conversation with the provider in ``state``."""
    params, workload = (LONG, "train_step") if state == "running" else (SMALL, "matmul")
    conv = await peer.job(peer.rfb(params, workload=workload))
    bid = await conv.receive()
    assert isinstance(bid, m.Bid), bid
    if state == "bid_sent":
        return conv
    await conv.send(conv.award(bid.price))
    if state == "awarded":
        return conv
    await conv.send(conv.inputs())
    await conv.receive_until(m.Progress if state == "running" else m.Result)
    return conv


async def attack(conv: Conversation, state: str, how: str, taken: m.RequestForBids) -> None:
    """Send one bad thing on ``conv`` (for ``offered``: as the first message)."""
    stranger = SigningKey.generate()
    honest_first = conv.rfb.encode()
    if how == "garbage":
        await conv.send_raw(b"\xff\xff")
    elif how == "truncated":  # a whole frame holding half a message
        await conv.send_raw(honest_first[: len(honest_first) // 2])
    elif how == "oversized":  # a frame header announcing 1 MiB
        await conv.write(bytes([0x80, 0x80, 0x40]))
    elif how == "stalled":  # a frame of 64 bytes begun, then silence
        await conv.write(bytes([64]) + honest_first[:1])
    elif how == "wrong_key":
        if state == "offered":  # a request for bids on behalf of someone else
            other = m.RequestForBids(os.urandom(16), "matmul", SMALL, peer_id_from_public_key(bytes(stranger.verify_key)),
                                     os.urandom(16), RICH, taken.deadline_ms, 0, "", "none")
            await conv.send_raw(other.encode())
        elif state == "bid_sent":
            await conv.send(conv.award(1, key=stranger))
        else:
            await conv.send(conv.receipt(key=stranger))
    elif how == "other_job":
        if state == "offered":  # a job this provider already took
            await conv.send(taken)
        else:
            await conv.send(m.make_award(taken.job, conv.peer.identity.signing_key, requester=conv.peer.peer_id,
                                         provider=conv.peer.target_id, nonce=taken.nonce, price=1,
                                         deadline_ms=taken.deadline_ms))
    elif how == "wrong_for_state":
        wrong: dict[str, m.Message] = {"offered": conv.award(1), "bid_sent": conv.receipt(),
                                       "awarded": conv.receipt(), "running": conv.rfb, "result_sent": conv.rfb}
        await conv.send(wrong[state])
    elif how == "reset":
        await conv.fs.reset()
    else:
        raise AssertionError(how)


@pytest.mark.parametrize("state", PROVIDER_STATES)
async def test_a_hostile_requester_cannot_hurt_a_provider(state: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(jobs_module, "FRAME_TIMEOUT_S", 0.5)
    async with trio.open_nursery() as nursery:
        running = await start_node(nursery, node_config())
        provider = running.node
        for how in ATTACKS:
            async with hostile_peer(provider) as peer:
                taken = await reach(peer, "bid_sent")  # a job this provider has seen
                await taken.fs.reset()
                if state == "offered":
                    conv = Conversation(peer, FramedStream(await peer.stream(JOB_PROTOCOL), max_frame=m.MAX_MESSAGE),
                                        peer.rfb())
                else:
                    conv = await reach(peer, state)
                before = penalty(provider, peer.peer_id)
                await attack(conv, state, how, taken.rfb)
                where = f"{how} in state {state}"
                if how != "reset":
                    await eventually(lambda: penalty(provider, peer.peer_id) > before, f"a penalty for {where}")
                    assert await conv.ends(), f"the stream outlived {where}"
                if state != "offered":
                    rec = next(r for r in provider.jobs.records if r.job == conv.rfb.job.hex())
                    await eventually(lambda: P(rec.state) in TERMINAL, f"the job to end after {where}")
                    if how != "reset":
                        assert rec.state == "error", f"{where}: {rec.state} ({rec.outcome})"
                await eventually(lambda: provider.executor.running == 0, f"the executor freed after {where}")
                assert not running.stopped.is_set(), f"the provider stopped after {where}"
                await eventually(lambda: provider.jobs.limits.open() == 0, f"every job stream closed after {where}")
                st = await status(provider)
                assert st["state"] != "error" and st["executor"]["running"] == 0 and st["streams"]["job"] == 0
        if state == "offered":  # nothing was ever run for a hostile first message
            assert provider.executor.completed == 0
        await ledger_verifies(provider)
        nursery.cancel_scope.cancel()


REQUESTER_STATES = ["collecting", "running", "verifying"]
REQUESTER_ATTACKS = ["garbage", "truncated", "oversized", "stalled", "wrong_key", "other_job", "wrong_for_state",
                     "reset"]


async def provider_attack(fs: FramedStream, state: str, how: str, rfb: m.RequestForBids) -> None:
    """One bad thing from a provider to a requester whose job is in ``state``."""
    stranger = SigningKey.generate()
    me = peer_id_from_public_key(bytes(stranger.verify_key))
    if how == "garbage":
        await fs.send(b"\xff\xff")
    elif how == "truncated":
        honest = m.Bid(rfb.job, 1, 1, rfb.deadline_ms, "numpy").encode()
        await fs.send(honest[: len(honest) // 2])
    elif how == "oversized":
        await fs.stream.write(bytes([0x80, 0x80, 0x40]))
    elif how == "stalled":
        await fs.stream.write(bytes([64, 0xA1]))
    elif how == "wrong_key":  # a result for this job made by someone else
        await fs.send(m.make_result(rfb.job, stranger, requester=rfb.requester, provider=me, nonce=rfb.nonce,
                                    digest=b"d" * 32, output=b"", kernel_ms=1, backend="numpy").encode())
    elif how == "other_job":
        await fs.send(m.Progress(os.urandom(16), 0.5).encode())
    elif how == "wrong_for_state":
        await fs.send((m.Progress(rfb.job, 0.5) if state == "collecting" else rfb).encode())
    elif how == "reset":
        await fs.reset()
    else:
        raise AssertionError(how)


def script(hostile: Node, state: str, how: str, attacked: trio.Event) -> Callable[[Any], Awaitable[None]]:
    """A provider's job handler that answers honestly up to ``state``, then attacks."""
    from p2pnode.exec import backends, workloads
    from p2pnode.wire import codec, sealing

    async def handler(stream: Any) -> None:
        try:
            await conversation(stream)
        except Exception:  # noqa: BLE001 - the requester hung up on us: that is the point
            attacked.set()

    async def conversation(stream: Any) -> None:
        fs = FramedStream(stream, max_frame=m.MAX_MESSAGE)
        rfb = m.decode(await fs.receive())
        assert isinstance(rfb, m.RequestForBids)
        if state != "collecting":
            await fs.send(m.Bid(rfb.job, 1, 1, rfb.deadline_ms, "numpy").encode())  # the best bid
            m.decode(await fs.receive())  # the award
            inputs = m.decode(await fs.receive())
            assert isinstance(inputs, m.Inputs)
            if state == "running":
                await fs.send(m.Progress(rfb.job, 0.1).encode())
            else:  # a correct result, whose output blob is served only after the attack
                private = codec.decode(sealing.unseal(inputs.sealed, hostile.identity.signing_key), max_size=4096)
                wl = workloads.get(rfb.workload)
                p = wl.check({**rfb.params, **private})
                out = wl.run(p, backends.ops("numpy"), lambda f: None)
                blob = hostile.blobs.store.put(sealing.seal(codec.encode(out.to_wire()), rfb.requester))
                await fs.send(m.make_result(rfb.job, hostile.identity.signing_key, requester=rfb.requester,
                                            provider=hostile.identity.peer_id, nonce=rfb.nonce, digest=out.digest,
                                            output=b"", kernel_ms=0, backend="numpy", blob=blob).encode())
        await provider_attack(fs, state, how, rfb)
        attacked.set()
        with trio.move_on_after(30):
            try:
                while True:
                    await fs.receive()
            except Exception:  # noqa: BLE001 - the requester closed or reset: done
                pass

    return handler


@pytest.mark.parametrize("state", REQUESTER_STATES)
async def test_a_hostile_provider_cannot_hurt_a_requester(state: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from p2pnode.wire.names import BLOB_PROTOCOL

    monkeypatch.setattr(jobs_module, "FRAME_TIMEOUT_S", 0.5)
    async with swarm(3, line=False) as nodes:  # requester, honest provider, hostile provider
        await nodes[0].node.wait_until(lambda: all_list_all(nodes), timeout=30)
        requester, honest, hostile = (r.node for r in nodes)
        bad = hostile.identity.peer_id
        for how in REQUESTER_ATTACKS:
            attacked, serve = trio.Event(), trio.Event()
            hostile.host.set_stream_handler(JOB_PROTOCOL, script(hostile, state, how, attacked))

            async def held_blob(stream: Any) -> None:
                await serve.wait()  # the requester stays in VERIFYING until the attack is in
                await hostile.blobs.handle_stream(stream, stream.muxed_conn.peer_id.to_bytes())

            hostile.host.set_stream_handler(BLOB_PROTOCOL, held_blob)
            before = penalty(requester, bad)
            where = f"{how} in state {state}"
            async with trio.open_nursery() as inner:
                result: list[Any] = []

                # Both providers are in every auction: after its first offences the hostile one would
                # no longer be asked (distrusted), and the point is to attack in each state.
                ads = [e.ad for e in requester.table.entries(requester._clock())
                       if e.ad.peer_id in (bad, honest.identity.peer_id)]

                async def submit() -> None:
                    result.append(await requester.jobs.submit("matmul", SMALL, max_price=RICH, deadline_s=30, k=2,
                                                              only=ads))

                inner.start_soon(submit)
                await attacked.wait()
                if how != "reset":
                    await eventually(lambda: penalty(requester, bad) > before,
                                     f"a penalty for {where}: {requester.jobs.records[-1].events}")
                else:
                    await trio.sleep(0.2)
                serve.set()
            rec = result[0]
            assert rec.state == "done", f"{where}: the job ended {rec.state} ({rec.outcome})"
            assert rec.output is not None and rec.outcome.startswith("verified (Freivalds"), where
            if state != "verifying":  # the hostile was dropped; the honest provider did the work
                assert rec.peer == honest.peer_id, where
            assert not nodes[0].stopped.is_set(), f"the requester stopped after {where}"
            assert (await status(requester))["state"] != "error"
        await ledger_verifies(requester)
