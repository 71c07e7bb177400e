"""The sampling policy and the detection maths, checked against real checks on real outputs."""

from __future__ import annotations

import random

import numpy as np
import pytest

from p2pnode.adversary import Adversary
from p2pnode.exec import backends, workloads
from p2pnode.verify.check import compare, freivalds_check
from p2pnode.verify.sampling import (
    SamplingPolicy,
    caught_within,
    jobs_until_caught,
    wilson_interval,
)

NP = backends.ops("numpy")


def test_policy_checks_new_peers_always_and_trusted_ones_less() -> None:
    p = SamplingPolicy(p_min=0.1, half_streak=4)
    assert p.probability("infer", streak=0, score=0.5) == 1.0
    assert p.probability("infer", streak=4, score=0.9) == pytest.approx(0.5)
    assert p.probability("infer", streak=8, score=0.9) == pytest.approx(0.25)
    assert p.probability("infer", streak=100, score=0.99) == 0.1
    assert p.probability("infer", streak=100, score=0.3) == 1.0  # a low score overrides the streak
    assert p.probability("matmul", streak=100, score=0.99) == 1.0  # Freivalds is cheap: always


def test_detection_formulas() -> None:
    assert caught_within(1, 1.0, 1.0) == 1.0
    assert caught_within(10, 0.1, 0.5) == pytest.approx(1 - 0.95 ** 10)
    assert jobs_until_caught(0.2, 0.25) == pytest.approx(20.0)
    lo, hi = wilson_interval(50, 100)
    assert lo < 0.5 < hi and hi - lo < 0.35


def _run(name: str, **params: object):
    wl = workloads.get(name)
    p = wl.check(params)
    return p, wl.run(p, NP, lambda f: None)


@pytest.mark.parametrize("workload, params, mode", [
    ("matmul", {"m": 48, "n": 40, "k": 56, "dtype": "int8"}, "perturb"),
    ("matmul", {"m": 48, "n": 40, "k": 56, "dtype": "fp32"}, "garbage"),
    ("infer", {"batch": 8, "d_in": 32, "d_hidden": 64, "d_out": 8, "layers": 2}, "perturb"),
])
def test_catch_rate_matches_f_times_p_within_a_999_percent_interval(workload, params, mode) -> None:
    """A provider cheats on a fraction f of jobs; each result is checked with probability p by the
    real check (Freivalds, or re-run and compare). Caught cheats / jobs must estimate f·p·d."""
    f, p, n = 0.3, 0.5, 400
    adv = Adversary(mode, f, seed=11)
    policy = SamplingPolicy(fixed_rate=p)
    rng = random.Random(5)
    nprng = np.random.default_rng(7)
    caught = 0
    for i in range(n):
        prm, honest = _run(workload, **params, seed=1000 + i)
        run_params, cheat = adv.run_params(workload, prm)
        returned = adv.tamper(workload, prm, honest, cheat)
        if not policy.should_check(workload, streak=0, score=0.5, u=rng.random()):
            continue
        if workload == "matmul":
            ok, _ = freivalds_check(prm, returned, rounds=policy.freivalds_rounds, rng=nprng)
        else:
            _, reference = _run(workload, **params, seed=1000 + i)
            ok, _ = compare(workload, prm, returned, reference)
        assert ok or cheat  # an honest result never fails a check
        caught += not ok
    expected = f * p * policy.detection(workload)
    lo, hi = wilson_interval(caught, n)
    assert lo <= expected <= hi, (caught / n, expected, (lo, hi))
    assert adv.tampered > 0


def test_freivalds_catches_the_subtlest_perturbation_of_a_1024_product() -> None:
    prm, honest = _run("matmul", m=1024, n=1024, k=1024, dtype="fp32", seed=3)
    adv = Adversary("perturb", 1.0, seed=1)
    bad = adv.tamper("matmul", prm, honest, cheat=True)
    assert int((bad.arrays["c"] != honest.arrays["c"]).sum()) == 1
    assert compare("matmul", prm, bad, honest)[0] is False  # just past the comparison tolerance
    ok, _ = freivalds_check(prm, bad, rounds=20, rng=np.random.default_rng(0))
    assert not ok
    assert freivalds_check(prm, honest, rounds=20, rng=np.random.default_rng(0))[0]
