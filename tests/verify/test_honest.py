"""No honest provider is ever taken for a cheater: honest results that differ only in rounding
(another backend, or more precise accumulation) pass every check, over many seeds."""

from __future__ import annotations

import numpy as np
import pytest

from p2pnode.exec import backends, workloads
from p2pnode.exec.workloads import Output
from p2pnode.verify.check import compare, freivalds_check

SEEDS = range(40)
OTHERS = [b for b in backends.for_workload("matmul", backends.available()) if b != "numpy"]
NP = backends.ops("numpy")
CASES = [
    ("matmul", {"m": 96, "n": 80, "k": 128, "dtype": "fp32"}),
    ("matmul", {"m": 96, "n": 80, "k": 128, "dtype": "fp16"}),
    ("matmul", {"m": 96, "n": 80, "k": 128, "dtype": "bf16"}),
    ("matmul", {"m": 64, "n": 64, "k": 256, "dtype": "int8"}),
    ("infer", {"batch": 32, "d_in": 64, "d_hidden": 128, "d_out": 16, "layers": 3}),
    ("train_step", {"steps": 10, "batch": 32, "d_in": 32, "d_hidden": 32}),
]


def _run(ops: object, name: str, params: dict[str, object]) -> tuple[dict[str, object], Output]:
    wl = workloads.get(name)
    p = wl.check(params)
    return p, wl.run(p, ops, lambda f: None)


def _fp64_matmul(p: dict[str, object]) -> Output:
    """An honest provider that accumulates in float64 and rounds once at the end."""
    a, b = workloads.matmul_inputs(p)
    c = a.astype(np.float64) @ b.astype(np.float64)
    out_dtype = np.int32 if p["dtype"] == "int8" else np.float16 if p["dtype"] == "fp16" else np.float32
    if p["dtype"] == "bf16":
        c = backends.round_to_bf16(c.astype(np.float32))
    return Output({"c": c.astype(out_dtype)}, {})


@pytest.mark.parametrize(("name", "params"), CASES, ids=lambda x: x if isinstance(x, str) else x.get("dtype", ""))
def test_honest_variants_pass_every_check_over_many_seeds(name: str, params: dict[str, object]) -> None:
    rng = np.random.default_rng(0)
    for seed in SEEDS:
        p, reference = _run(NP, name, {**params, "seed": seed})
        variants = [_run(backends.ops(b), name, {**params, "seed": seed})[1] for b in OTHERS]
        if name == "matmul":
            variants.append(_fp64_matmul(p))
        for out in [reference, *variants]:
            assert compare(name, p, out, reference)[0], (name, seed)
            if name == "matmul":
                assert freivalds_check(p, out, rounds=20, rng=rng)[0], (name, seed)
    assert name != "matmul" or variants  # the fp64 variant always exists for matmul
