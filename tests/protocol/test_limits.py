from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pnode.protocol.limits import NODE_FULL, PEER_CAP, SeenJobs, StreamLimits


def test_a_peer_over_its_cap_is_refused_and_others_are_not() -> None:
    lim = StreamLimits(per_peer=2, total=3)
    assert lim.acquire(b"a") is None and lim.acquire(b"a") is None
    assert lim.acquire(b"a") == PEER_CAP
    assert lim.acquire(b"b") is None
    assert lim.acquire(b"c") == NODE_FULL  # the node is full: not c's fault
    lim.release(b"a")
    assert lim.acquire(b"c") is None
    assert lim.open() == 3 and lim.open(b"a") == 1
    assert lim.refused == {PEER_CAP: 1, NODE_FULL: 1}
    with pytest.raises(ValueError):
        lim.release(b"zzz")


@given(st.lists(st.tuples(st.booleans(), st.sampled_from([b"a", b"b", b"c"])), max_size=200))
def test_counts_never_exceed_the_caps(ops: list[tuple[bool, bytes]]) -> None:
    lim = StreamLimits(per_peer=3, total=5)
    held: list[bytes] = []
    for take, peer in ops:
        if take:
            if lim.acquire(peer) is None:
                held.append(peer)
        elif peer in held:
            held.remove(peer)
            lim.release(peer)
        assert lim.open() == len(held) <= 5
        assert all(lim.open(p) == held.count(p) <= 3 for p in (b"a", b"b", b"c"))


def test_a_job_is_taken_once_until_its_deadline() -> None:
    seen = SeenJobs(grace_s=10)
    assert seen.add(b"r", b"j1", deadline=100.0, now=0.0)
    assert not seen.add(b"r", b"j1", deadline=100.0, now=50.0)  # a replay
    assert seen.add(b"other", b"j1", deadline=100.0, now=50.0)  # another requester's id space
    assert (b"r", b"j1") in seen
    assert seen.add(b"r", b"j1", deadline=100.0, now=111.0)  # long past: forgotten, memory freed


def test_memory_is_bounded() -> None:
    seen = SeenJobs(max_jobs=100)
    for i in range(1000):
        seen.add(b"r", i.to_bytes(4, "big"), deadline=float(i), now=0.0)
    assert len(seen) == 100
    assert (b"r", (999).to_bytes(4, "big")) in seen  # the ones expiring last are kept
