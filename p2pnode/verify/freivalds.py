"""Freivalds' check of C = A·B in O(n²) per round instead of O(n³).

Each round draws r uniformly from {-1, 1}^n and compares A·(B·r) with C·r. If C ≠ A·B, some row
of C − A·B is non-zero, and a random ±1 combination of its entries is zero with probability at most
1/2; so a wrong C passes ``rounds`` independent rounds with probability at most 2^-rounds.

* int8 jobs (int32 results) are checked **exactly** (float64 holds every partial sum exactly for
  the workload's size limits): no false alarms, ever.
* floating-point jobs compare in float64 within a bound on the rounding of the computation: for
  row i, ``8 · u · |A_i|₂ · |B|_F`` with u the dtype's unit roundoff (2^-24, 2^-11, 2^-8). Honest
  results were measured at most 1.15 times the unit (see ``SAFETY``); an error larger than the
  rounding noise fails.
"""

from __future__ import annotations

import numpy as np

UNIT_ROUNDOFF = {"fp32": 2.0**-24, "fp16": 2.0**-11, "bf16": 2.0**-8}
# Honest results measured at most 1.15 u·|A_i|·|B|_F (NumPy/OpenBLAS, fp32/fp16/bf16, n = 64..1024,
# 25 random vectors each; torch and CuPy agree with NumPy within their tolerance): 8 leaves ~7x room.
SAFETY = 8.0


def check(a: np.ndarray, b: np.ndarray, c: np.ndarray, *, dtype: str, rounds: int = 10,
          rng: np.random.Generator | None = None) -> bool:
    """True if ``c`` passes ``rounds`` Freivalds rounds as the product of ``a`` and ``b``.

    All rounds run at once: R holds one ±1 vector per column, so the check is three float64
    products with ``rounds`` columns (BLAS-3, each matrix read once) instead of 3·rounds
    matrix-vector products.
    """
    rng = rng or np.random.default_rng()
    m, k = a.shape
    if b.shape[0] != k or c.shape != (m, b.shape[1]):
        return False
    n = b.shape[1]
    r = (rng.integers(0, 2, size=(n, rounds)) * 2 - 1).astype(np.float64)
    af, bf, cf = (x.astype(np.float64) for x in (a, b, c))
    if not np.isfinite(cf).all():
        return False
    lhs, rhs = af @ (bf @ r), cf @ r
    if dtype == "int8":
        # Exact: |entries| <= 127, k <= 16384, so every partial sum of A·(B·R) and C·R stays below
        # 127 * 16384 * 127 * 16384 < 2^53, where float64 represents integers exactly.
        return bool(np.array_equal(lhs, rhs))
    u = UNIT_ROUNDOFF[dtype]
    # Row i of C·r may differ from A·(B·r) by rounding of the order u·|A_i|·|B|_F.
    bound = SAFETY * u * np.linalg.norm(af, axis=1) * np.linalg.norm(bf) + 1e-30
    return bool((np.abs(lhs - rhs) <= bound[:, None]).all())
