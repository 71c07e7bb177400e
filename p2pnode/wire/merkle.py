"""A Merkle tree over the rows of a job's output: the provider's commitment (pure).

A provider signs the root in its result before it learns which rows will be checked, so it cannot
fake rows and answer checks honestly: every row it sent is bound to the root, and any row can be
shown to belong to it with ``ceil(log2 n)`` hashes (RFC 6962's tree, with its domain separation:
a leaf hashes ``0x00 ‖ data``, an inner node ``0x01 ‖ left ‖ right``).

A row's leaf data is, for every output array in name order, ``name | dtype | row shape |`` and the
row's bytes (C order), so the commitment covers names, types and shapes too.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence

import numpy as np

HASH_LEN = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def _node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def row_leaves(arrays: Mapping[str, np.ndarray]) -> list[bytes]:
    """The leaf hash of every row of ``arrays`` (all share their first dimension)."""
    names = sorted(arrays)
    if not names:
        return []
    n = len(arrays[names[0]])
    if any(arrays[k].ndim == 0 or len(arrays[k]) != n for k in names):
        raise ValueError("every output array needs the same number of rows")
    # one (n, width) byte matrix: 0x00, then per array its header and the row's bytes
    parts = [np.zeros((n, 1), np.uint8)]
    for k in names:
        a = np.ascontiguousarray(arrays[k])
        head = np.frombuffer(f"{k}|{a.dtype.str}|{a.shape[1:]}|".encode(), np.uint8)
        parts += [np.broadcast_to(head, (n, len(head))), a.reshape(n, -1).view(np.uint8)]
    rows = np.ascontiguousarray(np.concatenate(parts, axis=1))
    view, width = rows.data.cast("B"), rows.shape[1]
    sha = hashlib.sha256
    return [sha(view[i * width:(i + 1) * width]).digest() for i in range(n)]


def root(leaves: Sequence[bytes]) -> bytes:
    """RFC 6962's Merkle tree hash of the leaf hashes."""
    if not leaves:
        return EMPTY_ROOT
    level = list(leaves)
    while len(level) > 1:
        nxt = [_node(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])  # an odd node is promoted unchanged
        level = nxt
    return level[0]


def rows_root(arrays: Mapping[str, np.ndarray]) -> bytes:
    return root(row_leaves(arrays))


def proof(leaves: Sequence[bytes], index: int) -> list[bytes]:
    """The audit path of leaf ``index``: sibling hashes from the bottom up."""
    if not 0 <= index < len(leaves):
        raise IndexError(index)
    path: list[bytes] = []
    level, i = list(leaves), index
    while len(level) > 1:
        sibling = i ^ 1
        if sibling < len(level):
            path.append(level[sibling])
        nxt = [_node(level[j], level[j + 1]) for j in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        level, i = nxt, i // 2
    return path


def verify(root_hash: bytes, n: int, index: int, leaf: bytes, path: Sequence[bytes]) -> bool:
    """Does ``leaf`` sit at ``index`` of an ``n``-leaf tree with ``root_hash``?"""
    if not 0 <= index < n:
        return False
    h, i, size, steps = leaf, index, n, iter(path)
    while size > 1:
        if i % 2 == 1:
            sib = next(steps, None)
            if sib is None:
                return False
            h = _node(sib, h)
        elif i + 1 < size:
            sib = next(steps, None)
            if sib is None:
                return False
            h = _node(h, sib)
        i, size = i // 2, (size + 1) // 2
    return next(steps, None) is None and h == root_hash
