from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from p2pnode.errors import WorkloadError
from p2pnode.exec import backends, workloads

NP = backends.ops("numpy")


def run(name: str, **params: object) -> tuple[dict[str, object], workloads.Output]:
    wl = workloads.get(name)
    p = wl.check(params)
    return p, wl.run(p, NP, lambda f: None)


def test_int8_matmul_is_exact_int32() -> None:
    p, out = run("matmul", m=33, n=17, k=65, dtype="int8", seed=5)
    a, b = workloads.matmul_inputs(p)
    expected = a.astype(np.int64) @ b.astype(np.int64)
    assert out.arrays["c"].dtype == np.int32
    assert np.array_equal(out.arrays["c"], expected)


@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16"])
def test_float_matmul_matches_float64_within_its_tolerance(dtype: str) -> None:
    p, out = run("matmul", m=64, n=48, k=96, dtype=dtype, seed=1)
    a, b = workloads.matmul_inputs(p)
    exact = a.astype(np.float64) @ b.astype(np.float64)
    got = out.arrays["c"].astype(np.float64)
    rel = np.linalg.norm(got - exact) / np.linalg.norm(exact)
    assert rel <= workloads.TOLERANCE[dtype]
    if dtype != "fp32":
        assert rel > 1e-7  # reduced precision really is reduced


def test_bf16_rounding_is_round_to_nearest_even() -> None:
    x = np.array([1.0, 1.0 + 2**-8, 1.0 + 3 * 2**-8, -2.5, 3.0e38], dtype=np.float32)
    r = backends.round_to_bf16(x)
    assert r[0] == 1.0 and r[1] == 1.0 and r[2] == 1.0 + 2**-6 and r[3] == -2.5
    assert (r.view(np.uint32) & 0xFFFF).max() == 0


def test_infer_matches_a_direct_forward_pass() -> None:
    p, out = run("infer", batch=8, d_in=16, d_hidden=32, d_out=4, layers=3, seed=2)
    weights = workloads._mlp_weights(NP, 2, [16, 32, 32, 4])
    h = NP.uniform(2, 1000, (8, 16))
    for i, (w, b) in enumerate(weights):
        h = h @ w + b
        h = np.maximum(h, 0) if i < 2 else h
    assert np.allclose(out.arrays["y"], h, rtol=1e-5, atol=1e-6)


def test_train_step_learns_and_is_deterministic() -> None:
    _, a = run("train_step", steps=60, lr=0.05, seed=9)
    _, b = run("train_step", steps=60, lr=0.05, seed=9)
    _, c = run("train_step", steps=60, lr=0.05, seed=10)
    loss = a.extra["loss"]
    assert len(loss) == 60 and loss[-1] < 0.3 * loss[0]
    assert a.digest == b.digest and a.digest != c.digest


def test_outputs_round_trip_through_the_wire_form() -> None:
    _, out = run("matmul", m=5, n=7, k=3, dtype="fp16")
    back = workloads.Output.from_wire(out.to_wire())
    assert back.digest == out.digest


@pytest.mark.parametrize(
    ("name", "params", "code", "message"),
    [
        ("nope", {}, "unknown_workload", "unknown workload 'nope'"),
        ("matmul", {"m": 0, "n": 1, "k": 1}, "bad_params", "m=0"),
        ("matmul", {"m": 1, "n": 1, "k": 1, "dtype": "fp64"}, "bad_params", "dtype"),
        ("matmul", {"m": 16384, "n": 16384, "k": 16384, "x": 1}, "bad_params", "unknown parameter"),
        ("matmul", {"m": "many", "n": 1, "k": 1}, "bad_params", "not an integer"),
        ("matmul", {"m": 1.5, "n": 1, "k": 1}, "bad_params", "integer"),
        ("infer", {"layers": 17}, "bad_params", "layers"),
        ("train_step", {"lr": 5}, "bad_params", "lr"),
    ],
)
def test_bad_input_is_a_typed_error(name: str, params: dict[str, object], code: str, message: str) -> None:
    with pytest.raises(WorkloadError, match=message) as info:
        workloads.get(name).check(params)
    assert info.value.code == code


@settings(max_examples=200)
@example({"m": math.inf})  # int(inf) raises OverflowError, not ValueError
@example({"m": -math.inf, "n": math.nan, "k": 1e300})
@example({"seed": math.nan})
@given(st.dictionaries(st.sampled_from(["m", "n", "k", "dtype", "seed", "zz"]),
                       st.one_of(st.integers(-5, 70000), st.text(max_size=5), st.floats(), st.none(), st.booleans())))
def test_any_params_check_or_raise_workload_error(params: dict[str, object]) -> None:
    try:
        p = workloads.get("matmul").check(params)
    except WorkloadError:
        return
    assert 1 <= p["m"] <= workloads.MAX_DIM and p["dtype"] in workloads.DTYPES


def test_seeded_inputs_follow_the_spec() -> None:
    from p2pnode.exec import seeded

    words = seeded.words(np, 7, 1, 5)
    key = seeded.stream_key(7, 1)
    assert [int(w) for w in words] == [seeded.mix_int(key + i * seeded.GOLDEN) for i in range(5)]
    u = seeded.uniform(np, 1, 0, (200_000,))
    assert u.dtype == np.float32 and -1.0 <= u.min() and u.max() < 1.0
    assert abs(float(u.mean())) < 0.01 and abs(float(u.std()) - (1 / 3) ** 0.5) < 0.01
    i8 = seeded.int8(np, 1, 0, (200_000,))
    assert i8.min() == -128 and i8.max() == 127
    assert not np.array_equal(seeded.uniform(np, 1, 0, (9,)), seeded.uniform(np, 1, 1, (9,)))


@pytest.mark.parametrize("array", [np.arange(12, dtype=np.float32).reshape(3, 4).T, np.zeros((0, 3), np.float32),
                                   np.array(2.5), np.array([True, False, True]), np.arange(-4, 4, dtype=np.int8)],
                         ids=["transposed", "empty", "0-d", "bool", "int8"])
def test_the_digest_is_the_one_the_spec_defines(array: np.ndarray) -> None:
    """SHA-256 over ``name|dtype|shape|`` and the C-order bytes, for each array in name order."""
    import hashlib

    out = workloads.Output({"z": array, "a": np.ones(2, np.float32)}, {})
    h = hashlib.sha256()
    for name, a in (("a", np.ones(2, np.float32)), ("z", array)):
        h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode() + np.ascontiguousarray(a).tobytes())
    assert out.digest == h.digest()
