"""Length bucketing of token rows (pure NumPy): padding must not cost compute.

A tokenized dataset is padded to its longest document, and a transformer's cost grows with the
padded length. So the rows are put in order of length (:func:`by_length`), shards are cut from
that order, and each shard is trimmed to its own longest row (:func:`trim`): rows of similar
length travel and run together. The outputs come back in that order and are put back in the
documents' order (:func:`restore`); an output with a token axis is padded with zeros to the
longest shard's length first (:func:`concat_padded`).

The sequence inputs are those laid out as ``attention_mask`` is (2-D, same shape): its row sums
are the lengths. Trimming removes only columns that are padding in every row of the shard, so a
model that honours its attention mask gives every row the answer it gives at any padding.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

MASK = "attention_mask"


def sequence_inputs(arrays: Mapping[str, np.ndarray]) -> tuple[str, ...]:
    """The inputs with a token axis: those shaped as a 2-D ``attention_mask`` (none without one)."""
    mask = arrays.get(MASK)
    if mask is None or mask.ndim != 2 or mask.dtype.kind not in "iub":
        return ()
    return tuple(n for n, a in arrays.items() if a.ndim == 2 and a.shape == mask.shape)


def lengths(arrays: Mapping[str, np.ndarray]) -> np.ndarray | None:
    """Each row's length (the last attended position + 1), or None when the rows have no mask."""
    if not sequence_inputs(arrays):
        return None
    mask = np.asarray(arrays[MASK]) != 0
    width = mask.shape[1]
    last = width - np.argmax(mask[:, ::-1], axis=1)
    return np.where(mask.any(axis=1), last, 1).astype(np.int64)


def by_length(arrays: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], np.ndarray | None, np.ndarray | None]:
    """(the rows in order of length, ``order``: for each of those rows its index in ``arrays``,
    their lengths); the arrays as they are, and None, None, when the rows have no mask."""
    lens = lengths(arrays)
    if lens is None:
        return dict(arrays), None, None
    order = np.argsort(lens, kind="stable")
    return {n: np.ascontiguousarray(np.asarray(a)[order]) for n, a in arrays.items()}, order, lens[order]


def trim(arrays: Mapping[str, np.ndarray], seq: Sequence[str], lens: np.ndarray) -> dict[str, np.ndarray]:
    """The rows' sequence inputs cut to their longest row (at least one column)."""
    width = max(1, int(lens.max())) if len(lens) else 1
    return {n: (np.ascontiguousarray(a[:, :width]) if n in seq else a) for n, a in arrays.items()}


def concat_padded(parts: Sequence[np.ndarray]) -> np.ndarray:
    """Row-wise concatenation; parts whose other axes are shorter are padded with zeros."""
    if len({p.shape[1:] for p in parts}) <= 1:
        return np.concatenate(parts) if len(parts) > 1 else parts[0]
    shape = tuple(max(s) for s in zip(*(p.shape[1:] for p in parts), strict=True))
    out = np.zeros((sum(len(p) for p in parts), *shape), dtype=parts[0].dtype)
    row = 0
    for p in parts:
        out[(slice(row, row + len(p)), *(slice(0, s) for s in p.shape[1:]))] = p
        row += len(p)
    return out


def restore(outputs: Mapping[str, np.ndarray], order: np.ndarray | None) -> dict[str, np.ndarray]:
    """Outputs in the documents' order (``order`` as :func:`by_length` gave it)."""
    if order is None:
        return dict(outputs)
    inverse = np.empty_like(order)
    inverse[order] = np.arange(len(order))
    return {k: np.ascontiguousarray(v[inverse]) for k, v in outputs.items()}
