"""Freivalds' check of C = A·B in O(n²) per round instead of O(n³).

Each round draws r uniformly from {-1, 1}^n and compares A·(B·r) with C·r. If C ≠ A·B, some row
of C − A·B is non-zero, and a random ±1 combination of its entries is zero with probability at most
1/2; so a wrong C passes ``rounds`` independent rounds with probability at most 2^-rounds.

* int8 jobs (int32 results) are checked **exactly** (float64 holds every partial sum exactly for
  the workload's size limits): no false alarms, ever.
* floating-point jobs are checked in float32 (the matrices are read once, at BLAS speed) within a
  bound on the rounding of the computation and of the check: for row i, ``8 · u · |A_i|₂ · |B|_F``
  with u the dtype's unit roundoff (2^-24, 2^-11, 2^-8) plus twice float32's for the check's own
  products. Honest results were measured at most 1.15 times the unit, 3.6 with the float32 check
  (see ``SAFETY``); an error larger than the rounding noise fails.
"""

from __future__ import annotations

import numpy as np

UNIT_ROUNDOFF = {"fp32": 2.0**-24, "fp16": 2.0**-11, "bf16": 2.0**-8}
# Honest results measured at most 1.15 u·|A_i|·|B|_F (NumPy/OpenBLAS, fp32/fp16/bf16, n = 64..1024,
# 25 random vectors each; torch and CuPy agree with NumPy within their tolerance): 8 leaves ~7x room.
SAFETY = 8.0
# The check's own float32 products (B·R, A·(B·R), C·R) round too: measured at most 2.5 units of
# float32 beyond the float64 check's error on seeded inputs (n = 64..2048, tools/bench/verify.py),
# counted as 2 more units of the dtype's bound (so fp32 results get 3 units of room, fp16 and bf16
# the same as before: their unit dwarfs float32's).
CHECK_ROUNDING = 2.0
BLOCK_BYTES = 512 << 10  # a float64 row block that stays in a core's cache while it is used


def check(a: np.ndarray, b: np.ndarray, c: np.ndarray, *, dtype: str, rounds: int = 10,
          rng: np.random.Generator | None = None) -> bool:
    """True if ``c`` passes ``rounds`` Freivalds rounds as the product of ``a`` and ``b``.

    All rounds run at once: R holds one ±1 vector per column, so the check is three products with
    ``rounds`` columns (BLAS-3, each matrix read once) instead of 3·rounds matrix-vector products.
    Floating-point results are checked in float32 (the bound counts the check's own rounding);
    int8 results exactly, in float64 row blocks converted inside the cache.
    """
    rng = rng or np.random.default_rng()
    m, k = a.shape
    if b.shape[0] != k or c.shape != (m, b.shape[1]):
        return False
    n = b.shape[1]
    signs = rng.integers(0, 2, size=(n, rounds)) * 2 - 1
    if dtype == "int8":
        return _exact(a, b, c, signs.astype(np.float64))
    r = signs.astype(np.float32)
    a32, b32, c32 = (np.asarray(x, dtype=np.float32) for x in (a, b, c))
    with np.errstate(over="ignore", invalid="ignore"):
        lhs, rhs = a32 @ (b32 @ r), c32 @ r
    if not np.isfinite(rhs).all():  # an inf or nan anywhere in C shows in its row of C·R
        return False
    u = UNIT_ROUNDOFF[dtype] + CHECK_ROUNDING * UNIT_ROUNDOFF["fp32"]
    # Row i of C·r may differ from A·(B·r) by rounding of the order u·|A_i|·|B|_F: the
    # provider's (its dtype's u) and this check's own (float32).
    a_norm = np.sqrt(np.einsum("ij,ij->i", a32, a32).astype(np.float64))
    b_norm = np.sqrt(np.einsum("ij,ij->i", b32, b32).sum(dtype=np.float64))
    bound = SAFETY * u * a_norm * b_norm + 1e-30
    return bool((np.abs(lhs.astype(np.float64) - rhs) <= bound[:, None]).all())


def _exact(a: np.ndarray, b: np.ndarray, c: np.ndarray, r: np.ndarray) -> bool:
    """Exact check of an int8 product: |entries| <= 127, k <= 16384, so every partial sum of
    A·(B·R) and C·R stays below 127 * 16384 * 127 * 16384 < 2^53, where float64 represents
    integers exactly. Each matrix is read once, a float64 row block at a time."""
    m, k = a.shape
    n, rounds = r.shape
    br, lhs, rhs = np.empty((k, rounds)), np.empty((m, rounds)), np.empty((m, rounds))
    step = _rows(max(k, n))
    buf = np.empty(step * max(k, n))  # one float64 block, reused: no allocation per block
    for s in range(0, k, step):
        np.matmul(_as_f64(b[s:s + step], buf), r, out=br[s:s + step])
    for s in range(0, m, step):
        np.matmul(_as_f64(a[s:s + step], buf), br, out=lhs[s:s + step])
        np.matmul(_as_f64(c[s:s + step], buf), r, out=rhs[s:s + step])
    return bool(np.isfinite(rhs).all() and np.array_equal(lhs, rhs))


def _as_f64(block: np.ndarray, buf: np.ndarray) -> np.ndarray:
    out = buf[:block.size].reshape(block.shape)
    np.copyto(out, block, casting="unsafe")
    return out


def _rows(columns: int) -> int:
    """Rows per block: a float64 block of about BLOCK_BYTES."""
    return max(1, BLOCK_BYTES // (8 * max(columns, 1)))
