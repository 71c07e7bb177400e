"""The training kernel and the ``train`` workload: gradients that match finite differences for every
layer (a tiny transformer's too), loss and optimiser, steps that repeat bit for bit and can be re-run one at a time, every bound
of a model from a peer, and the user's model and data files refused in one clear line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from p2pnode.errors import P2PNodeError, WorkloadError
from p2pnode.exec import train_blocks as tb
from p2pnode.exec import train_model as tm
from p2pnode.exec import workloads
from p2pnode.exec.train_workload import commit
from p2pnode.protocol import rounds

LAYERS = [["dense", 7], ["layernorm"], ["gelu"], ["dense", 5], ["relu"], ["dense", 3]]
TRANSFORMER = {"inputs": 5, "vocab": 11, "optimizer": "adamw",
               "layers": [["embed", 8], ["attention", 2], ["mlp", 12], ["layernorm"], ["last"], ["dense", 11]]}


@pytest.mark.parametrize("loss", ["xent", "mse"])
def test_gradients_match_finite_differences(loss: str) -> None:
    spec = tm.parse({"inputs": 4, "layers": LAYERS, "loss": loss})
    g = np.random.default_rng(0)
    x = g.standard_normal((9, 4)).astype(np.float32)
    y = g.integers(0, 3, 9) if loss == "xent" else g.standard_normal((9, 3)).astype(np.float32)
    w = tm.init_weights(spec, 2)
    _, grad = tm.loss_and_grads(spec, w, x, y)
    w64 = w.astype(np.float64)
    for i in g.choice(spec.params, 12, replace=False):
        e = np.zeros_like(w64)
        e[i] = 1e-2
        up = tm.loss_and_grads(spec, (w64 + e).astype(np.float32), x, y)[0]
        down = tm.loss_and_grads(spec, (w64 - e).astype(np.float32), x, y)[0]
        assert grad[i] == pytest.approx((up - down) / 2e-2, abs=2e-3, rel=5e-2)


def test_a_tiny_transformers_gradients_match_finite_differences_in_every_parameter() -> None:
    """Embedding, causal attention, MLP, layer norms and the last position: each parameter's
    gradient against a central difference of the loss computed in float64."""
    spec = tm.parse(TRANSFORMER)
    g = np.random.default_rng(0)
    x, y = g.integers(0, 11, (7, 5)).astype(np.float32), g.integers(0, 11, 7)
    # gains and biases moved off 1 and 0, so that every term of the backward pass counts
    w = tm.init_weights(spec, 2) + g.standard_normal(spec.params).astype(np.float32) * np.float32(0.3)
    _, grad = tm.loss_and_grads(spec, w, x, y)
    w64 = w.astype(np.float64)
    fd = np.empty(spec.params)
    for i in range(spec.params):
        e = np.zeros_like(w64)
        e[i] = 1e-5
        fd[i] = (tm.loss_and_grads(spec, w64 + e, x, y)[0] - tm.loss_and_grads(spec, w64 - e, x, y)[0]) / 2e-5
    at = 0
    for name, shape in spec.shapes():
        n = int(np.prod(shape))
        mine, theirs = grad[at:at + n], fd[at:at + n]
        at += n
        assert np.linalg.norm(theirs) > 1e-3, name  # the parameter matters to the loss
        assert np.linalg.norm(mine - theirs) <= 1e-5 * np.linalg.norm(theirs), name
    # a later position never changes an earlier one's attention: the mask is causal
    moved = x.copy()
    moved[:, -1] = (moved[:, -1] + 1) % 11
    p = tm.unflatten(spec, w)
    block = [p[f"1.{m}"] for m in ("g", "b", "q", "k", "v", "o")]
    a, _ = tb.attention(tb.embed(x.astype(np.int64), p["0.e"], p["0.p"]), block, 2, np.matmul)
    b, _ = tb.attention(tb.embed(moved.astype(np.int64), p["0.e"], p["0.p"]), block, 2, np.matmul)
    assert np.array_equal(a[:, :-1], b[:, :-1]) and not np.array_equal(a[:, -1], b[:, -1])


def test_a_tiny_transformers_steps_repeat_bit_for_bit_and_its_data_are_token_ids() -> None:
    spec = tm.parse(TRANSFORMER)
    g = np.random.default_rng(1)
    x, y = g.integers(0, 11, (30, 5)).astype(np.float32), g.integers(0, 11, 30)
    state = tm.fresh_state(spec, tm.init_weights(spec, 0))
    kw = {"batch": 8, "seed": 4, "lr": 0.01, "wd": 0.0}
    states, losses = tm.run(spec, state, x, y, first=1, steps=6, **kw)
    again, _ = tm.run(spec, state, x, y, first=1, steps=6, **kw)
    one, _ = tm.run(spec, states[2], x, y, first=4, steps=1, **kw)
    assert np.array_equal(states, again) and np.array_equal(one[0], states[3]) and losses[-1] < losses[0]
    plan = rounds.Plan(spec, rounds=1, local_steps=2, shards=1, batch=8)
    wl = workloads.get("train")
    p = wl.check(plan.params(0, 0, 30))
    assert wl.memory(p) > 4 * spec.state_len * 6 and wl.flops(p) > 6 * spec.params
    for bad in (x + np.float32(0.5), x + np.float32(11), -x - 1):
        with pytest.raises(WorkloadError, match="token ids"):
            wl.run(p, None, lambda f: None, {"state": state, "x": bad, "y": y})


def test_text_becomes_windows_of_character_ids_and_the_next_character(tmp_path: Path) -> None:
    from p2pnode import train_io

    x, y = train_io.text_windows("abc\tdé\nfg", 3)  # the tab and é are dropped
    chars = train_io.TEXT_CHARS
    assert "".join(chars[int(i)] for i in x[0]) == "abc" and chars[y[0]] == "d"
    assert x.shape == (4, 3) and "".join(chars[int(i)] for i in x[-1]) == "d\nf" and chars[y[-1]] == "g"
    assert len(chars) == 96 and x.dtype == np.float32 and y.dtype == np.int64
    with pytest.raises(P2PNodeError, match="fewer than a window"):
        train_io.text_windows("ab", 3)
    spec = tm.parse({"inputs": 3, "vocab": 96, "layers": [["embed", 4], ["last"], ["dense", 96]]})
    np.savez(tmp_path / "text.npz", x=x, y=y)
    assert np.array_equal(train_io.read_data(str(tmp_path / "text.npz"), spec)[0], x)
    np.savez(tmp_path / "bad.npz", x=x + np.float32(96), y=y)
    with pytest.raises(P2PNodeError, match="token ids, integers in 0..95"):
        train_io.read_data(str(tmp_path / "bad.npz"), spec)


@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "adamw"])
def test_steps_repeat_bit_for_bit_and_any_one_reruns_alone(optimizer: str) -> None:
    spec = tm.parse({"inputs": 4, "layers": LAYERS, "optimizer": optimizer})
    g = np.random.default_rng(1)
    x, y = g.standard_normal((30, 4)).astype(np.float32), g.integers(0, 3, 30)
    state = tm.fresh_state(spec, tm.init_weights(spec, 0))
    kw = {"batch": 8, "seed": 4, "lr": 0.05, "wd": 0.01}
    states, losses = tm.run(spec, state, x, y, first=11, steps=6, **kw)
    again, _ = tm.run(spec, state, x, y, first=11, steps=6, **kw)
    assert np.array_equal(states, again) and states.shape == (6, spec.state_len)
    one, _ = tm.run(spec, states[2], x, y, first=14, steps=1, **kw)  # step 4 of 6 from the state after 3
    assert np.array_equal(one[0], states[3])
    other, _ = tm.run(spec, states[2], x, y, first=15, steps=1, **kw)  # another step's batch: another state
    assert not np.array_equal(other[0], states[3])
    assert len({commit(s) for s in states}) == 6 and losses[-1] < losses[0]


def test_the_workload_commits_to_every_state_and_returns_the_last_weights() -> None:
    spec = tm.parse({"inputs": 4, "layers": [["dense", 3]], "optimizer": "momentum"})
    plan = rounds.Plan(spec, rounds=1, local_steps=5, shards=1, batch=4)
    wl = workloads.get("train")
    p = wl.check(plan.params(0, 0, 12))
    x, y = np.ones((12, 4), np.float32), np.zeros(12, np.int64)
    state = tm.fresh_state(spec, tm.init_weights(spec, 0))
    out = wl.run(p, None, lambda f: None, {"state": state, "x": x, "y": y})
    assert out.extra["c0"] == commit(state) and len(out.extra["commits"]) == 5
    assert out.extra["commits"][-1] == commit(out.arrays["states"][-1])
    assert np.array_equal(out.arrays["weights"], out.arrays["states"][-1][:spec.params])
    assert wl.agree(p, out, out) and wl.comparison(p) == "exact"
    assert set(wl.input_spec(p)) == {"state", "x", "y"} and wl.memory(p) > 0 < wl.flops(p)
    with pytest.raises(WorkloadError, match="labels"):
        wl.run(p, None, lambda f: None, {"state": state, "x": x, "y": np.full(12, 3, np.int64)})


@pytest.mark.parametrize("model, why", [
    ("dense", "a map"),
    ({"inputs": 4, "layers": [["conv", 3]]}, "kind one of"),
    ({"inputs": 4, "layers": [["dense", 0]]}, "width in"),
    ({"inputs": 4, "layers": [["relu", 2], ["dense", 2]]}, "takes no arguments"),
    ({"inputs": 4, "layers": [["relu"]]}, "at least one dense"),
    ({"inputs": 4, "layers": [["dense", 2]], "loss": "hinge"}, "loss must be"),
    ({"inputs": 4, "layers": [["dense", 2]], "optimizer": "lion"}, "optimizer must be"),
    ({"inputs": 4, "layers": [["dense", 4096]] * 3}, "over the limit"),
    ({"inputs": 4, "layers": [["dense", 2]] * 33}, "1..32 layers"),
    ({"inputs": True, "layers": [["dense", 2]]}, "inputs must be"),
    ({"inputs": 4, "layers": [["dense", 2]], "code": "import os"}, "a map of"),
    ({"inputs": 4, "layers": [["attention", 2], ["dense", 2]]}, "need a model of token ids"),
    ({"inputs": 4, "vocab": 9, "layers": [["dense", 2]]}, "starts with one embed"),
    ({"inputs": 4, "vocab": 9, "layers": [["embed", 8], ["dense", 2]]}, "one last layer"),
    ({"inputs": 4, "vocab": 9, "layers": [["embed", 8], ["relu"], ["last"], ["dense", 2]]}, "only attention"),
    ({"inputs": 4, "vocab": 9, "layers": [["embed", 8], ["last"], ["mlp", 4], ["dense", 2]]}, "none of the first"),
    ({"inputs": 4, "vocab": 9, "layers": [["embed", 8], ["attention", 3], ["last"], ["dense", 2]]}, "divide"),
    ({"inputs": 4, "vocab": 9, "layers": [["embed", 8], ["attention", 65], ["last"], ["dense", 2]]}, "heads in"),
    ({"inputs": 2048, "vocab": 9, "layers": [["embed", 8], ["last"], ["dense", 2]]}, "at most 1024 positions"),
    ({"inputs": 4, "vocab": 1 << 17, "layers": [["embed", 8], ["last"], ["dense", 2]]}, "vocab must be"),
])
def test_a_model_from_a_peer_is_refused_outside_every_bound(model: object, why: str) -> None:
    with pytest.raises(WorkloadError, match=why):
        workloads.get("train").check({"model": model, "steps": 1, "rows": 1})


def test_run_parameters_are_bounded() -> None:
    wl = workloads.get("train")
    model = {"inputs": 4, "layers": [["dense", 2]]}
    with pytest.raises(WorkloadError, match="steps"):
        wl.check({"model": model, "steps": 0, "rows": 1})
    with pytest.raises(WorkloadError, match="unknown parameter"):
        wl.check({"model": model, "steps": 1, "rows": 1, "path": "/etc/passwd"})
    big = {"inputs": 1024, "layers": [["dense", 1024]] * 4, "optimizer": "adamw"}
    with pytest.raises(WorkloadError, match="fewer local steps"):
        wl.check({"model": big, "steps": 10_000, "rows": 1})


def test_the_users_files_are_checked_and_refused_in_one_line(tmp_path: Path) -> None:
    from p2pnode import train_io

    model = tmp_path / "m.json"
    train_io.example_model(model)
    spec, w = train_io.read_model(str(model), 5)
    assert spec.params == 64 * 32 + 32 + 32 * 10 + 10 and np.array_equal(w, tm.init_weights(spec, 5))
    saved = tmp_path / "out.npz"
    train_io.save_model(str(saved), spec, w + 1, [0.5])
    spec2, w2 = train_io.read_model(str(saved), 0)
    assert spec2 == spec and np.array_equal(w2, w + 1)
    np.savez(tmp_path / "d.npz", x=np.zeros((5, 64)), y=np.arange(5))
    x, y = train_io.read_data(str(tmp_path / "d.npz"), spec)
    assert x.dtype == np.float32 and y.dtype == np.int64
    cases = {"x.npz": ({"x": np.zeros((5, 63)), "y": np.arange(5)}, "shape \\[rows, 64\\]"),
             "y.npz": ({"x": np.zeros((5, 64)), "y": np.arange(5) + 6}, "labels in 0..9"),
             "n.npz": ({"x": np.full((5, 64), np.nan), "y": np.arange(5)}, "NaN"),
             "k.npz": ({"features": np.zeros((5, 64))}, "needs arrays x and y")}
    for name, (arrays, why) in cases.items():
        np.savez(tmp_path / name, **arrays)  # type: ignore[arg-type]
        with pytest.raises(P2PNodeError, match=why):
            train_io.read_data(str(tmp_path / name), spec)
    (tmp_path / "code.json").write_text("__import__('os')")
    with pytest.raises(P2PNodeError, match="not JSON"):
        train_io.read_model(str(tmp_path / "code.json"), 0)
    np.savez(tmp_path / "w.npz", model=np.frombuffer(json.dumps(spec.to_json()).encode(), np.uint8),
             weights=np.zeros(3, np.float32))
    with pytest.raises(P2PNodeError, match="finite floats"):
        train_io.read_model(str(tmp_path / "w.npz"), 0)
    with pytest.raises(P2PNodeError, match="saved as a .npz"):
        train_io.check_output(str(tmp_path / "out.npy"))


def test_the_outer_step_averages_or_takes_nesterov_momentum() -> None:
    spec = tm.parse({"inputs": 2, "layers": [["dense", 1]]})
    w = np.zeros(3, np.float32)
    returned = [np.full(3, 1, np.float32), np.full(3, 3, np.float32)]
    avg, m = rounds.outer_step(rounds.Plan(spec, 1, 1, 2), w, returned, np.zeros(3, np.float32))
    assert np.array_equal(avg, np.full(3, 2, np.float32)) and not m.any()
    nest, m = rounds.outer_step(rounds.Plan(spec, 1, 1, 2, outer="nesterov", outer_lr=0.5, outer_momentum=0.5),
                                w, returned, np.zeros(3, np.float32))
    # g = -2, m = -2, w - 0.5 * (g + 0.5 * m) = 1.5
    assert np.array_equal(m, np.full(3, -2, np.float32)) and np.array_equal(nest, np.full(3, 1.5, np.float32))
    assert rounds.shard_bounds(10, 3) == [(0, 4), (4, 7), (7, 10)]
    assert rounds.shard_seed(1, 0, 0) != rounds.shard_seed(1, 0, 1) != rounds.shard_seed(1, 1, 0)
