"""Arbitrary sequences of valid and invalid messages on one job stream, and on one blob stream,
against a real provider process: whatever hypothesis draws, the node stays up, keeps answering,
frees its executor and keeps a ledger that verifies.

Each example is a new hostile identity (so the node's bans of earlier examples do not shield it),
connected over loopback to one ``p2pnode run`` process that lives for the whole test.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey

from p2pnode.control.client import call
from p2pnode.net import bulk
from p2pnode.net.framing import StreamGone
from p2pnode.wire import blob as wb
from p2pnode.wire import codec
from p2pnode.wire import job as m
from tests.integration.hostile import Conversation, hostile_peer
from tests.integration.test_cli import ENV, NodeProcess

NAMED = ["rfb", "rfb", "award", "inputs", "receipt", "cancel", "read", "read", "wrong_key_award", "other_job_award",
         "truncated", "oversized", "bid", "progress", "bad_inputs", "reset"]
OPS = st.lists(st.one_of(st.sampled_from(NAMED), st.binary(max_size=40).map(lambda b: ("bytes", b))),
               min_size=1, max_size=10)
BLOB_OPS = st.lists(st.one_of(
    st.sampled_from(["get_known", "get_unknown", "get_far", "read", "read", "reset", "garbage_get", "get_bulk",
                     "dial_bulk"]),
    st.binary(max_size=40).map(lambda b: ("bytes", b))), min_size=1, max_size=6)


@pytest.fixture(scope="module")
def provider() -> Iterator[NodeProcess]:
    data_dir = Path(f"/tmp/p2pn-fuzz-{os.getpid()}")
    node = NodeProcess(data_dir)
    try:
        yield node
    finally:
        node.proc.terminate()
        node.proc.wait(timeout=30)
        subprocess.run(["rm", "-rf", str(data_dir)], check=False)


async def _play(target: str, ops: list[Any]) -> None:
    async with hostile_peer(target) as peer:
        conv: Conversation | None = None
        bid: m.Bid | None = None
        try:
            for op in ops:
                if conv is None:  # every op needs the stream; "rfb" opens it the honest way
                    if op == "rfb":
                        conv = await peer.job()
                        continue
                    from p2pnode.net.framing import FramedStream
                    from p2pnode.wire.names import JOB_PROTOCOL

                    conv = Conversation(peer, FramedStream(await peer.stream(JOB_PROTOCOL),
                                                           max_frame=m.MAX_MESSAGE), peer.rfb())
                if op == "rfb":
                    await conv.send(conv.rfb)
                elif op == "award":
                    await conv.send(conv.award(bid.price if bid else 1))
                elif op == "inputs":
                    await conv.send(conv.inputs())
                elif op == "bad_inputs":
                    await conv.send(conv.inputs({"seed": "x", "keys": {"a": b"k"}}))
                elif op == "receipt":
                    await conv.send(conv.receipt())
                elif op == "cancel":
                    await conv.send(m.Cancel(conv.rfb.job, "changed my mind"))
                elif op == "read":
                    with trio.move_on_after(0.3):
                        got = await conv.receive()
                        bid = got if isinstance(got, m.Bid) else bid
                elif op == "wrong_key_award":
                    await conv.send(conv.award(1, key=SigningKey.generate()))
                elif op == "other_job_award":
                    await conv.send(conv.award(1, job=os.urandom(16)))
                elif op == "truncated":
                    await conv.send_raw(conv.rfb.encode()[:7])
                elif op == "oversized":
                    await conv.write(bytes([0xFF, 0xFF, 0x7F]))
                elif op == "bid":
                    await conv.send(m.Bid(conv.rfb.job, 1, 1, conv.rfb.deadline_ms, "numpy"))
                elif op == "progress":
                    await conv.send(m.Progress(conv.rfb.job, 0.5))
                elif op == "reset":
                    await conv.fs.reset()
                    return
                else:
                    await conv.send_raw(op[1])
        except (StreamGone, trio.TooSlowError, Exception):  # noqa: BLE001 - the node hung up on us
            pass
        finally:
            if conv is not None:
                await conv.fs.reset()


async def _play_blob(target: str, known: bytes, ops: list[Any]) -> None:
    async with hostile_peer(target) as peer:
        fs = await peer.blob_stream()
        try:
            for op in ops:
                if op == "get_known":
                    await fs.send(codec.encode({"t": "get", "id": known, "from": 0}))
                elif op == "get_unknown":
                    await fs.send(codec.encode({"t": "get", "id": os.urandom(32), "from": 0}))
                elif op == "get_far":
                    await fs.send(codec.encode({"t": "get", "id": known, "from": 1 << 20}))
                elif op == "garbage_get":
                    await fs.send(codec.encode({"t": "get", "id": "not bytes", "from": -1}))
                elif op == "get_bulk":
                    await fs.send(codec.encode({"t": "get", "id": known, "from": 0, "bulk": True}))
                elif op == "dial_bulk":  # take an offer if one came, and ask over the channel for anything
                    with trio.move_on_after(0.3):
                        reply = wb.decode_reply(await fs.receive())
                        if reply.offer is not None:
                            conn = await bulk.dial("127.0.0.1", reply.offer, peer.peer_id, peer.target_id,
                                                   codec.encode({"t": "get", "id": os.urandom(32), "from": 0}))
                            await conn.aclose()
                elif op == "read":
                    with trio.move_on_after(0.3):
                        await fs.receive()
                elif op == "reset":
                    break
                else:
                    await fs.send(op[1])
        except Exception:  # noqa: BLE001 - the node hung up on us
            pass
        finally:
            await fs.reset()


def _alive(node: NodeProcess) -> dict[str, Any]:
    assert node.proc.poll() is None, "the provider process exited:\n" + "".join(node.output[-40:])
    return call(node.data_dir / "control.sock", "status")  # type: ignore[no-any-return]


@settings(max_examples=40)
@given(ops=OPS)
def test_any_sequence_on_a_job_stream(provider: NodeProcess, ops: list[Any]) -> None:
    trio.run(_play, provider.addrs[0], ops)
    assert _alive(provider)["state"] != "error"


@settings(max_examples=25)
@given(ops=BLOB_OPS)
def test_any_sequence_on_a_blob_stream(provider: NodeProcess, ops: list[Any]) -> None:
    known = _known_blob(provider)
    trio.run(_play_blob, provider.addrs[0], known, ops)
    assert _alive(provider)["state"] != "error"


_KNOWN: dict[int, bytes] = {}


def _known_blob(provider: NodeProcess) -> bytes:
    """A blob the provider holds: the output of one honest job it ran for us (a big one: a blob)."""
    if id(provider) not in _KNOWN:
        async def honest() -> bytes:
            async with hostile_peer(provider.addrs[0]) as peer:
                conv = await peer.job(peer.rfb({"m": 256, "n": 256, "k": 16, "dtype": "fp32"}))
                bid = await conv.receive()
                assert isinstance(bid, m.Bid)
                await conv.send(conv.award(bid.price))
                await conv.send(conv.inputs())
                result = await conv.receive_until(m.Result)
                assert isinstance(result, m.Result) and result.body["blob"]
                await conv.send(conv.receipt())
                return bytes(result.body["blob"])

        _KNOWN[id(provider)] = trio.run(honest)
    return _KNOWN[id(provider)]


def test_after_the_fuzzing_the_node_is_whole(provider: NodeProcess) -> None:
    """Runs after the sequences above (file order): work freed, ledger intact, still serving jobs."""
    _alive(provider)
    drained = call(provider.data_dir / "control.sock", "wait", timeout=40, what="busy", count=0, timeout_s=30)
    assert drained == {"busy": 0}  # no work or stream left over
    st_ = _alive(provider)
    assert st_["executor"]["running"] == 0 and st_["streams"] == {"job": 0, "blob": 0}, st_
    verify = subprocess.run([sys.executable, "-m", "p2pnode", "ledger", "verify", "--data-dir",
                             str(provider.data_dir), "--json"], capture_output=True, text=True, env=ENV, timeout=60)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert "penalty" in verify.stdout  # the offences were recorded

    async def one_honest_job() -> bool:
        async with hostile_peer(provider.addrs[0]) as peer:
            conv = await peer.job()
            bid = await conv.receive()
            await conv.send(conv.award(bid.price))  # type: ignore[attr-defined]
            await conv.send(conv.inputs())
            return isinstance(await conv.receive_until(m.Result), m.Result)

    assert trio.run(one_honest_job)
