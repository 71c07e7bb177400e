from __future__ import annotations

import numpy as np
import pytest

from p2pnode.adversary import Adversary
from p2pnode.errors import ConfigError
from p2pnode.exec import backends, workloads
from p2pnode.verify.check import compare

NP = backends.ops("numpy")


def run(name: str, **params: object):
    wl = workloads.get(name)
    p = wl.check(params)
    return p, wl.run(p, NP, lambda f: None)


@pytest.mark.parametrize("spec", ["nope", "garbage:2", "perturb:x", "overclaim:0.5"])
def test_bad_specs_are_refused(spec: str) -> None:
    with pytest.raises(ConfigError):
        Adversary.parse(spec)


def test_defaults_and_speed_factor() -> None:
    assert Adversary.parse("") is None
    assert Adversary.parse("overclaim").speed_factor == 10.0
    assert Adversary.parse("garbage").x == 1.0
    assert Adversary.parse("stall").stalls


def test_fraction_is_respected_over_many_jobs() -> None:
    adv = Adversary.parse("garbage:0.25", seed=3)
    cheats = sum(adv.run_params("infer", {})[1] for _ in range(4000))
    assert 900 < cheats < 1100


def test_replay_returns_an_earlier_jobs_output_that_a_rerun_rejects() -> None:
    adv = Adversary("replay", 1.0)
    p1, o1 = run("infer", batch=4, d_in=8, d_hidden=8, d_out=4, layers=2, seed=1)
    p2, o2 = run("infer", batch=4, d_in=8, d_hidden=8, d_out=4, layers=2, seed=2)
    adv.tamper("infer", p1, o1, cheat=False)
    replayed = adv.tamper("infer", p2, o2, cheat=True)
    assert replayed.digest == o1.digest
    assert not compare("infer", p2, replayed, o2)[0]


def test_lowprec_runs_fp32_as_fp16_and_is_caught() -> None:
    adv = Adversary("lowprec", 1.0)
    p, honest = run("matmul", m=64, n=64, k=64, dtype="fp32", seed=1)
    run_params, cheat = adv.run_params("matmul", p)
    assert cheat and run_params["dtype"] == "fp16"
    low = adv.tamper("matmul", p, run("matmul", **run_params)[1], cheat)
    assert low.arrays["c"].dtype == np.float32
    assert not compare("matmul", p, low, honest)[0]


@pytest.mark.parametrize("mode", ["othermodel", "fewerlayers", "halfprec", "prompt", "fabricate", "truncate", "scale",
                                  "stale"])
def test_a_mode_of_one_kind_of_work_leaves_other_work_honest(mode: str) -> None:
    """A provider told to cheat on generation (or training) answers other jobs as it computed them."""
    adv = Adversary.parse(mode)
    assert adv is not None
    p, honest = run("matmul", m=16, n=16, k=16, dtype="fp32", seed=3)
    run_params, cheat = adv.run_params("matmul", p)
    out = adv.tamper("matmul", p, run("matmul", **run_params)[1], cheat)
    assert out.digest == honest.digest and compare("matmul", p, out, honest)[0]
