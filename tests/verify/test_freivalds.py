from __future__ import annotations

import numpy as np
import pytest

from p2pnode.exec import backends, workloads
from p2pnode.verify.freivalds import check

NP = backends.ops("numpy")


def product(dtype: str, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    wl = workloads.get("matmul")
    p = wl.check({"m": n, "n": n, "k": n, "dtype": dtype, "seed": seed})
    a, b = workloads.matmul_inputs(p)
    return a, b, wl.run(p, NP, lambda f: None).arrays["c"]


@pytest.mark.parametrize("dtype", ["int8", "fp32", "fp16", "bf16"])
def test_honest_products_always_pass(dtype: str) -> None:
    for seed in range(10):
        a, b, c = product(dtype, 64, seed)
        assert check(a, b, c, dtype=dtype, rounds=20, rng=np.random.default_rng(seed))


def test_freivalds_catches_a_single_altered_element_of_a_1024_product() -> None:
    a, b, c = product("int8", 1024, 7)
    bad = c.copy()
    bad[517, 33] += 1  # the smallest possible lie
    assert check(a, b, c, dtype="int8", rounds=10)
    assert not check(a, b, bad, dtype="int8", rounds=10, rng=np.random.default_rng(1))


def test_float_perturbation_just_above_rounding_is_caught() -> None:
    a, b, c = product("fp32", 256, 3)
    bad = c.copy()
    bad[10, 20] += 1e-2 * max(1.0, abs(float(c[10, 20])))
    assert not check(a, b, bad, dtype="fp32", rounds=10, rng=np.random.default_rng(2))


def test_wrong_shapes_and_nan_fail() -> None:
    a, b, c = product("fp32", 16)
    assert not check(a, b, c[:, :-1], dtype="fp32")
    bad = c.copy()
    bad[0, 0] = np.nan
    assert not check(a, b, bad, dtype="fp32")
