"""Arrays a requester prepares for its check while the job runs."""

from __future__ import annotations

import numpy as np
import trio

from p2pnode.services.requester import _Prepared


async def test_prepared_arrays_are_handed_over_once_made() -> None:
    prepared = _Prepared()
    async with trio.open_nursery() as nursery:
        prepared.start(nursery, lambda: {"a": np.ones(3)})
        got = await prepared.get()
    assert list(got) == ["a"] and got["a"].sum() == 3


async def test_a_failed_preparation_hands_over_nothing_and_the_check_makes_its_own() -> None:
    def broken() -> dict[str, np.ndarray]:
        raise MemoryError("no room")

    prepared = _Prepared()
    async with trio.open_nursery() as nursery:
        prepared.start(nursery, broken)
        assert await prepared.get() == {}


async def test_nothing_prepared_is_nothing_to_wait_for() -> None:
    with trio.fail_after(1):
        assert await _Prepared().get() == {}
