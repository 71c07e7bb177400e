"""Length bucketing of token rows: sorted by length, shards trimmed to their longest row, outputs
back in the documents' order."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from p2pnode.exec import buckets


def _tokens(lens: list[int]) -> dict[str, np.ndarray]:
    width = max(lens)
    mask = (np.arange(width)[None, :] < np.asarray(lens)[:, None]).astype(np.int64)
    ids = np.where(mask == 1, np.arange(1, len(lens) + 1)[:, None], 0).astype(np.int64)
    return {"input_ids": ids, "attention_mask": mask, "extra": np.arange(len(lens), dtype=np.float32)}


@given(st.lists(st.integers(1, 40), min_size=1, max_size=60), st.integers(1, 9))
def test_rows_go_in_order_of_length_and_come_back_in_the_documents_order(lens: list[int], shard: int) -> None:
    arrays = _tokens(lens)
    sorted_rows, order, got = buckets.by_length(arrays)
    assert order is not None and got is not None
    assert list(got) == sorted(lens)
    assert np.array_equal(sorted_rows["input_ids"], arrays["input_ids"][order])
    # shards cut from that order are each as long as their longest row
    seq = buckets.sequence_inputs(arrays)
    assert set(seq) == {"input_ids", "attention_mask"}
    parts = []
    for start in range(0, len(lens), shard):
        rows = {k: v[start:start + shard] for k, v in sorted_rows.items()}
        cut = buckets.trim(rows, seq, got[start:start + shard])
        assert cut["input_ids"].shape[1] == max(got[start:start + shard])
        assert int(cut["attention_mask"].sum()) == int(rows["attention_mask"].sum())  # only padding dropped
        parts.append(cut["input_ids"])
    back = buckets.restore({"ids": buckets.concat_padded(parts), "extra": sorted_rows["extra"]}, order)
    assert np.array_equal(back["extra"], arrays["extra"])
    assert np.array_equal(back["ids"], arrays["input_ids"])  # zero padding put back as it was


def test_rows_without_a_mask_are_left_as_they_are() -> None:
    x = {"x": np.ones((5, 3), np.float32)}
    same, order, lens = buckets.by_length(x)
    assert order is None and lens is None and same["x"] is x["x"]
    assert buckets.restore({"y": x["x"]}, None)["y"] is x["x"]
