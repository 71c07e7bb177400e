"""The teacher-forced check of generated text (``verify/tokens.py``): choices every node
reproduces, margins that bound what rounding may change, no honest prompt refused, and each
generation adversary caught -- on a tiny decoder built here, run directly (no network)."""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import pytest

from p2pnode import transformer_models as tm
from p2pnode.adversary import Adversary
from p2pnode.exec import backends, generation_jobs
from p2pnode.exec.generate_workload import GenerateWorkload, teacher_work
from p2pnode.exec.work import Output
from p2pnode.verify import tokens as tk

WL = GenerateWorkload()
MAX_NEW = 64


@functools.cache
def model() -> bytes:
    return tm.decoder(tm.Config(seed=5))


@functools.cache
def ops() -> Any:
    return backends.OrtOps("ort-cpu")


def prompts(n: int, seed: int = 0) -> list[list[int]]:
    g = np.random.default_rng(seed)
    return [[int(t) for t in g.integers(3, 384, size=int(k))] for k in g.integers(1, 24, size=n)]


@functools.cache
def half_model() -> bytes:
    """The same decoder in float16: weights, activations, cache and logits."""
    return tm.decoder(tm.Config(seed=5), dtype="float16")


def run(n: int, temperature: float, adversary: str = "", seed: int = 0, raw: bytes = b"",
        max_new: int = MAX_NEW) -> tuple[dict[str, Any], dict[str, Any], Output, Output]:
    """(params, inputs, what the provider committed, a teacher-forced pass over all of it)."""
    job = generation_jobs.prepare(raw or model(), {}, prompts(n, seed), max_new=max_new, eos=0, batch=16,
                                  temperature=temperature, seed=7)
    params, inputs = job.shard(0, job.rows)
    params = WL.check(params)
    adv, cheat, given = Adversary.parse(adversary, seed=1), False, inputs
    if adv is not None:
        params, cheat = adv.run_params("generate", params)
        given = adv.run_inputs("generate", params, inputs, cheat)
    out = WL.run(params, ops(), lambda f: None, given)
    if adv is not None:
        out = adv.tamper("generate", params, out, cheat)
    sub, sub_inputs, rows = teacher_work(params, inputs, out, range(job.rows))
    return params, inputs, rows, WL.run(WL.check(sub), ops(), lambda f: None, sub_inputs)


def test_draws_are_reproducible_and_follow_the_softmax() -> None:
    index, position = np.repeat(np.arange(50), 400), np.tile(np.arange(400), 50)
    u = tk.uniform(11, index, position)
    assert np.array_equal(u, tk.uniform(11, index, position)) and not np.array_equal(u, tk.uniform(12, index, position))
    assert 0 <= u.min() and u.max() < 1 and abs(u.mean() - 0.5) < 0.01
    logits = np.tile(np.log(np.array([0.5, 0.3, 0.2])), (len(u), 1))
    tok, _ = tk.choose(logits, 1.0, 11, index, position)
    assert np.allclose(np.bincount(tok, minlength=3) / len(tok), [0.5, 0.3, 0.2], atol=0.01)


@pytest.mark.parametrize("temperature", [0.0, 0.7])
def test_a_change_of_the_logits_within_the_margin_never_changes_the_choice(temperature: float) -> None:
    g = np.random.default_rng(3)
    logits = g.standard_normal((2000, 50)) * 3
    index, position = np.arange(2000), np.zeros(2000, np.int64)
    tok, margin = tk.choose(logits, temperature, 5, index, position)
    scale = np.maximum(1.0, np.abs(logits).max(axis=1, keepdims=True))
    moved = logits + g.uniform(-1, 1, logits.shape) * 0.99 * margin[:, None] * scale
    assert np.array_equal(tk.choose(moved, temperature, 5, index, position)[0], tok)


@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_no_honest_prompt_is_refused_in_a_thousand(temperature: float) -> None:
    params, _, committed, reference = run(1000, temperature)
    assert tk.structure(committed.arrays, 1000, MAX_NEW, 384, 0, params["fp_k"]) == ""
    assert int(committed.arrays["length"].sum()) > 1000 * MAX_NEW // 2
    assert tk.mismatches(committed.arrays, reference.arrays, tk.TOLERANCE["float32"]) == []


@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_no_honest_prompt_of_a_float16_decoder_is_refused(temperature: float) -> None:
    """Rounding in float16 moves fingerprints by a unit or two of its roundoff (measured at most
    9.6·10⁻⁴ of the largest entry over 300 prompts) against a slack of 4·τ = 1.6·10⁻²."""
    params, _, committed, reference = run(300, temperature, raw=half_model(), max_new=48)
    assert params["kv"][4] == "float16"
    assert tk.structure(committed.arrays, 300, 48, 384, 0, params["fp_k"]) == ""
    assert int(committed.arrays["length"].sum()) > 300 * 48 // 2
    assert tk.mismatches(committed.arrays, reference.arrays, tk.TOLERANCE["float16"]) == []


def test_a_bfloat16_decoder_is_refused_by_onnx_runtimes_cpu_provider_as_a_bad_model() -> None:
    """ONNX Runtime's CPU provider has no bfloat16 kernel for Add, Mul, MatMul, Softmax or Erf:
    such a decoder is a clear ``bad_model`` there (it needs a provider on CUDA)."""
    from p2pnode.exec.onnx_model import ModelError

    job = generation_jobs.prepare(tm.decoder(tm.Config(seed=5), dtype="bfloat16"), {}, prompts(2), max_new=4, eos=0)
    assert job.spec.dtype == "bfloat16"
    params, inputs = job.shard(0, job.rows)
    with pytest.raises(ModelError, match="Could not find an implementation") as caught:
        WL.run(WL.check(params), ops(), lambda f: None, inputs)
    assert caught.value.code == "bad_model"


@pytest.mark.parametrize("mode", ["othermodel:1", "fewerlayers:1", "lowprec:1", "halfprec:1", "prompt:0.1",
                                  "fabricate:0.1", "truncate:0.1"])
def test_each_generation_adversary_is_caught(mode: str) -> None:
    params, _, committed, reference = run(40, 0.0, mode)
    assert tk.structure(committed.arrays, 40, MAX_NEW, 384, 0, params["fp_k"]) == ""  # well formed: only a check sees it
    caught = tk.mismatches(committed.arrays, reference.arrays, tk.TOLERANCE["float32"])
    assert len(caught) >= (4 if mode.endswith(":0.1") else 30), caught
    if mode == "halfprec:1":  # float16 keeps the tokens: the fingerprints tell
        assert (committed.arrays["tokens"] != reference.arrays["tokens"]).mean() < 0.01
        assert all(why.startswith("fingerprint") for _, why in caught), caught


def test_rows_that_are_not_a_generation_are_malformed() -> None:
    params, _, committed, _ = run(8, 0.0)
    good = committed.arrays
    assert tk.structure(dict(good, tokens=good["tokens"] + 1000), 8, MAX_NEW, 384, 0, params["fp_k"])
    short = {k: np.array(v, copy=True) for k, v in good.items()}
    short["length"][0] -= 1  # ends early without the end-of-text token
    assert "-1 after the end" in tk.structure(short, 8, MAX_NEW, 384, 0, params["fp_k"])
