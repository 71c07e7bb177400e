"""Models are data, never code: every refusal with a crafted hostile model, the limits the executor
puts on what checks cannot see, and the row rules of model jobs."""

from __future__ import annotations

import hashlib
import math
import os
import random
from pathlib import Path

import numpy as np
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from p2pnode import models
from p2pnode.errors import ExecFailure, FileRefused, WorkloadError
from p2pnode.exec import backends, model_jobs, onnx_model, workloads
from p2pnode.exec.executor import Executor
from p2pnode.exec.onnx_model import ModelError
from p2pnode.exec.onnx_workload import row_mismatches, rows_agree
from p2pnode.verify import rows
from p2pnode.wire import merkle

F = TensorProto.FLOAT


def _pack(nodes: list, inputs: list, outputs: list, inits: list | None = None, *, opsets: list | None = None,
          functions: list | None = None, check: bool = True) -> bytes:
    graph = helper.make_graph(nodes, "g", inputs, outputs, inits or [])
    model = helper.make_model(graph, opset_imports=opsets or [helper.make_opsetid("", 17)], functions=functions)
    model.ir_version = 8
    return onnx_model.pack(model.SerializeToString())


def _io(name: str, dims: list, dtype: int = F) -> object:
    return helper.make_tensor_value_info(name, dtype, dims)


def relu_model() -> bytes:
    return _pack([helper.make_node("Relu", ["x"], ["y"])], [_io("x", ["n", 4])], [_io("y", ["n", 4])])


def _external(location: str) -> tuple[object, bytes]:
    """A MatMul whose weight lives in external data at ``location``."""
    w = numpy_helper.from_array(np.eye(4, dtype=np.float32), "w")
    data = w.raw_data
    w.ClearField("raw_data")
    w.data_location = TensorProto.EXTERNAL
    for k, v in (("location", location), ("offset", "0"), ("length", str(len(data)))):
        w.external_data.add(key=k, value=v)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g", [_io("x", ["n", 4])],
                              [_io("y", ["n", 4])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model, data


# refusals -----------------------------------------------------------------------------------------

def test_a_plain_model_loads_and_describes_itself() -> None:
    info = onnx_model.check_model(onnx_model.load(relu_model()))
    assert [(s.name, s.dtype, s.shape) for s in info.inputs] == [("x", "float32", (None, 4))]
    assert info.nodes == 1 and info.flops_per_row >= 4


@pytest.mark.parametrize("blob", [b"", b"\xff" * 64, onnx_model.pack(b"\x08\x07garbage")])
def test_garbage_is_refused(blob: bytes) -> None:
    with pytest.raises(ModelError):
        onnx_model.load(blob)


def test_custom_operators_are_code_and_are_refused() -> None:
    blob = _pack([helper.make_node("Evil", ["x"], ["y"], domain="com.example.custom")], [_io("x", ["n", 4])],
                 [_io("y", ["n", 4])], opsets=[helper.make_opsetid("", 17), helper.make_opsetid("com.example.custom", 1)])
    with pytest.raises(ModelError, match="domain"):
        onnx_model.load(blob)
    contrib = _pack([helper.make_node("FastGelu", ["x"], ["y"], domain="com.microsoft")], [_io("x", ["n", 4])],
                    [_io("y", ["n", 4])], opsets=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    with pytest.raises(ModelError, match="standard"):
        onnx_model.load(contrib)


def test_a_local_function_of_standard_operators_is_data() -> None:
    fn = helper.make_function("local.fns", "Double", ["a"], ["b"], [helper.make_node("Add", ["a", "a"], ["b"])],
                              [helper.make_opsetid("", 17)])
    blob = _pack([helper.make_node("Double", ["x"], ["y"], domain="local.fns")], [_io("x", ["n", 4])],
                 [_io("y", ["n", 4])], opsets=[helper.make_opsetid("", 17), helper.make_opsetid("local.fns", 1)],
                 functions=[fn])
    sess, _ = backends.OrtOps("ort-cpu").session(blob)
    assert np.array_equal(sess.run(None, {"x": np.ones((2, 4), np.float32)})[0], 2 * np.ones((2, 4)))


@pytest.mark.parametrize("location", ["../../etc/passwd", "/etc/passwd", "sub/weights.bin", "..", "C:\\w.bin", ""])
def test_external_data_outside_the_container_is_refused(location: str) -> None:
    model, data = _external(location)
    blob = onnx_model.pack(model.SerializeToString(), {location: data} if location else {})
    with pytest.raises(ModelError, match="plain file name"):
        onnx_model.load(blob)


def test_external_data_packed_in_the_container_is_used_and_a_missing_file_refused() -> None:
    model, data = _external("weights.bin")
    blob = onnx_model.pack(model.SerializeToString(), {"weights.bin": data})
    sess, _ = backends.OrtOps("ort-cpu").session(blob)
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    assert np.array_equal(sess.run(None, {"x": x})[0], x)
    with pytest.raises(ModelError, match="not in the container"):
        onnx_model.load(onnx_model.pack(model.SerializeToString(), {"other.bin": data}))


def test_pack_file_takes_external_data_from_beside_the_model(tmp_path: object) -> None:
    from pathlib import Path

    folder = Path(str(tmp_path))
    model, data = _external("weights.bin")
    (folder / "m.onnx").write_bytes(model.SerializeToString())
    (folder / "weights.bin").write_bytes(data)
    onnx_model.load(onnx_model.pack_file(folder / "m.onnx"))
    evil, _ = _external("../secret.bin")
    (folder / "evil.onnx").write_bytes(evil.SerializeToString())
    with pytest.raises(ModelError, match="plain file name"):
        onnx_model.pack_file(folder / "evil.onnx")


@pytest.mark.parametrize("target", ["secret", "identity", "inside"])
def test_external_data_that_is_a_link_is_refused_not_packed(tmp_path: Path, target: str) -> None:
    """weights.bin -> ~/.ssh/id_ed25519, the node's own key, or even another file beside the model:
    a link is never followed for external data, so no local file's bytes can reach a stranger."""
    secret = b"-----BEGIN OPENSSH PRIVATE KEY----- not for strangers"
    model, data = _external("weights.bin")
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "m.onnx").write_bytes(model.SerializeToString())
    places = {"secret": tmp_path / "id_ed25519", "identity": tmp_path / "data" / "identity.key",
              "inside": folder / "real.bin"}
    places[target].parent.mkdir(exist_ok=True)
    places[target].write_bytes(secret if target != "inside" else data)
    (folder / "weights.bin").symlink_to(places[target])
    with pytest.raises(FileRefused, match="weights.bin is a symbolic link"):
        onnx_model.pack_file(folder / "m.onnx")


def test_a_model_file_that_is_a_link_is_followed_and_its_data_read_from_its_real_folder(tmp_path: Path) -> None:
    model, data = _external("weights.bin")
    real, elsewhere = tmp_path / "real", tmp_path / "elsewhere"
    real.mkdir()
    elsewhere.mkdir()
    (real / "m.onnx").write_bytes(model.SerializeToString())
    (real / "weights.bin").write_bytes(data)
    (elsewhere / "m.onnx").symlink_to(real / "m.onnx")
    (elsewhere / "weights.bin").write_bytes(b"\x00" * len(data))  # beside the link, not the model
    _, external = onnx_model.unpack(onnx_model.pack_file(elsewhere / "m.onnx"))
    assert external == {"weights.bin": data}
    (real / "weights.bin").unlink()  # not there: refused, never taken from beside the link
    with pytest.raises(FileRefused, match="weights.bin: no such file"):
        onnx_model.pack_file(elsewhere / "m.onnx")


@pytest.mark.parametrize("kind", ["folder", "fifo", "dev"])
def test_external_data_that_is_not_a_regular_file_is_refused(tmp_path: Path, kind: str) -> None:
    model, _ = _external("weights.bin")
    (tmp_path / "m.onnx").write_bytes(model.SerializeToString())
    if kind == "folder":
        (tmp_path / "weights.bin").mkdir()
    elif kind == "fifo":
        os.mkfifo(tmp_path / "weights.bin")
    else:
        (tmp_path / "weights.bin").symlink_to("/dev/zero")
    with pytest.raises(FileRefused, match="weights.bin (is a directory|is a FIFO|is a character device|is a symbolic link)"):
        onnx_model.pack_file(tmp_path / "m.onnx")


def test_size_and_node_count_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    chain = [helper.make_node("Relu", [f"t{i}"], [f"t{i + 1}"]) for i in range(20)]
    blob = _pack(chain, [_io("t0", ["n", 4])], [_io("t20", ["n", 4])])
    monkeypatch.setattr(onnx_model, "MAX_NODES", 10)
    with pytest.raises(ModelError, match="more than 10 nodes"):
        onnx_model.load(blob)
    monkeypatch.setattr(onnx_model, "MAX_MODEL_BYTES", 100)
    with pytest.raises(ModelError, match="exceeds"):
        onnx_model.pack(b"x" * 200)
    with pytest.raises(ModelError):
        onnx_model.unpack(blob)


def test_sequence_outputs_are_refused() -> None:
    blob = _pack([helper.make_node("SequenceConstruct", ["x"], ["s"])], [_io("x", ["n", 4])],
                 [helper.make_tensor_sequence_value_info("s", F, ["n", 4])])
    with pytest.raises(ModelError, match="only tensor"):
        onnx_model.load(blob)


# what only running can show ----------------------------------------------------------------

def memory_bomb() -> bytes:
    """Asks for 2^35 floats (128 GiB), whatever its input."""
    shape = numpy_helper.from_array(np.array([1 << 35], dtype=np.int64), "shape")
    nodes = [helper.make_node("ConstantOfShape", ["shape"], ["big"], value=helper.make_tensor("v", F, [1], [1.0])),
             helper.make_node("ReduceSum", ["big"], ["total"], keepdims=1),
             helper.make_node("Add", ["x", "total"], ["y"])]
    return _pack(nodes, [_io("x", ["n", 1])], [_io("y", ["n", 1])], [shape])


def endless_loop() -> bytes:
    """A Loop with a trip count of 2^62: it never ends in practice."""
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]), helper.make_node("Add", ["acc_in", "one"], ["acc_out"])],
        "body", [_io("i", [], TensorProto.INT64), _io("cond_in", [], TensorProto.BOOL), _io("acc_in", ["n", 1])],
        [_io("cond_out", [], TensorProto.BOOL), _io("acc_out", ["n", 1])],
        [numpy_helper.from_array(np.ones(1, np.float32), "one")])
    inits = [numpy_helper.from_array(np.array(1 << 62, dtype=np.int64), "trips"),
             numpy_helper.from_array(np.array(True), "cond")]
    return _pack([helper.make_node("Loop", ["trips", "cond", "x"], ["y"], body=body)], [_io("x", ["n", 1])],
                 [_io("y", ["n", 1])], inits)


def loop_heavy(trips: int = 2000, d: int = 64) -> bytes:
    """y = x after ``trips`` rounds of x·a + b in a Loop: its graph counts about 1 FLOP a row (the
    body is not counted), running it costs thousands of times more."""
    body = helper.make_graph(
        [helper.make_node("Identity", ["c"], ["c_out"]), helper.make_node("Mul", ["acc", "a"], ["t"]),
         helper.make_node("Add", ["t", "b"], ["acc_out"])],
        "body", [_io("i", [], TensorProto.INT64), _io("c", [], TensorProto.BOOL), _io("acc", ["n", d])],
        [_io("c_out", [], TensorProto.BOOL), _io("acc_out", ["n", d])],
        [numpy_helper.from_array(np.full(1, 0.999, np.float32), "a"),
         numpy_helper.from_array(np.full(1, 0.001, np.float32), "b")])
    inits = [numpy_helper.from_array(np.array(trips, dtype=np.int64), "trips"),
             numpy_helper.from_array(np.array(True), "cond")]
    return _pack([helper.make_node("Loop", ["trips", "cond", "x"], ["y"], body=body)], [_io("x", ["n", d])],
                 [_io("y", ["n", d])], inits)


def test_a_model_is_priced_by_what_its_rows_take_not_only_by_its_graph() -> None:
    x = np.random.default_rng(0).random((2000, 64), dtype=np.float32)
    job = model_jobs.prepare(loop_heavy(), {"": x})
    assert job.info.flops_per_row <= 64  # the graph alone: next to nothing
    assert job.cost_per_row() > 1e5 * job.info.flops_per_row  # 2000 rounds of 128 FLOP, and their overhead
    params, _ = job.shard(0, job.rows)
    assert params["gflop"] == pytest.approx(job.cost_per_row() * job.rows / 1e9, rel=1e-6)
    relu = model_jobs.prepare(relu_model(), {"": x[:, :4].copy()})
    assert relu.cost_per_row() >= relu.info.flops_per_row  # the graph's count is the floor


def _job(blob: bytes, x: np.ndarray, **over: object) -> tuple[dict[str, object], dict[str, np.ndarray]]:
    info = onnx_model.check_model(onnx_model.load(blob))
    params = {"model_bytes": len(blob), "rows": len(x), "out_row_bytes": 4, "inputs": "blob",
              "gflop": info.flops_per_row * len(x) / 1e9, "feeds": {info.inputs[0].name: ["float32", list(x.shape[1:])]}}
    params.update(over)
    return params, {"model": np.frombuffer(blob, np.uint8), f"in.{info.inputs[0].name}": x}


async def test_a_memory_bomb_kills_its_worker_not_the_executor() -> None:
    x = np.ones((2, 1), np.float32)
    async with Executor() as ex:
        params, inputs = _job(memory_bomb(), x, gflop=1e3)
        with pytest.raises(ExecFailure) as info:
            await ex.run("onnx", params, inputs=inputs)
        assert info.value.code in ("oom", "crashed")
        params, inputs = _job(relu_model(), np.ones((3, 4), np.float32))
        assert (await ex.run("onnx", params, inputs=inputs)).output.arrays["y"].shape == (3, 4)  # still works


async def test_an_endless_model_is_stopped_by_its_timeout() -> None:
    async with Executor() as ex:
        params, inputs = _job(endless_loop(), np.zeros((1, 1), np.float32), gflop=1e3)
        with trio.fail_after(30), pytest.raises(ExecFailure) as info:
            await ex.run("onnx", params, inputs=inputs, timeout=1.0)
        assert info.value.code == "timeout" and ex.running == 0


def scale_model(k: float) -> bytes:
    """y = k·x: a different model (and container) for every k."""
    return _pack([helper.make_node("Mul", ["x", "k"], ["y"])], [_io("x", ["n", 4])], [_io("y", ["n", 4])],
                 [numpy_helper.from_array(np.array([k], np.float32), "k")])


async def test_a_model_a_worker_dropped_is_sent_again_never_a_failure() -> None:
    """A worker keeps a few models; seven in turn, then the first again, all on one worker: every
    run succeeds, and what the executor believes the worker holds is what the worker says it holds."""
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    blobs = {k: scale_model(k) for k in range(1, 8)}
    async with Executor() as ex:
        for k in [*blobs, 1]:
            params, inputs = _job(blobs[k], x)
            r = await ex.run("onnx", params, inputs=inputs)
            assert np.array_equal(r.output.arrays["y"], x * k)
        (worker,) = ex._all
        keys = {k: hashlib.sha256(b).hexdigest() for k, b in blobs.items()}
        assert worker.cached == {keys[k] for k in (5, 6, 7, 1)}  # the four it used last
        # were the record ever wrong, the worker's "not held" brings the data, not a failure
        worker.cached.add(keys[2])
        params, inputs = _job(blobs[2], x)
        assert np.array_equal((await ex.run("onnx", params, inputs=inputs)).output.arrays["y"], x * 2)
        assert ex.failed == {} and ex._all == {worker} and keys[2] in worker.cached


async def test_an_underpriced_model_is_refused_before_it_runs() -> None:
    blob = models.cnn(channels=8)
    x = models.images(8)
    async with Executor() as ex:
        params, inputs = _job(blob, x, gflop=1e-9)
        with pytest.raises((WorkloadError, ExecFailure)) as info:
            await ex.run("onnx", params, inputs=inputs)
        assert info.value.code == "underpriced"


def test_job_parameters_are_bounded() -> None:
    wl = workloads.get("onnx")
    ok = {"model_bytes": 10, "rows": 4, "feeds": {"x": ["float32", [8]]}, "inputs": "blob"}
    assert wl.check(ok)["feeds"] == {"x": ["float32", [8]]}
    for bad in ({**ok, "rows": 0}, {**ok, "feeds": {}}, {**ok, "feeds": {"x": ["complex64", [8]]}},
                {**ok, "feeds": {"x": ["float32", [0]]}}, {**ok, "feeds": {"x": ["float32", [1 << 30]]}},
                {**ok, "inputs": "seed"}, {**ok, "model_bytes": 1 << 40}, {**ok, "rows": 10**6, "feeds": {"x": ["float32", [1024]]}},
                {**ok, "rtol": math.nan}, {**ok, "evil": 1}):
        with pytest.raises(WorkloadError):
            wl.check(bad)


# rows ------------------------------------------------------------------------------------------

def test_rows_agree_within_tolerance_and_integers_exactly() -> None:
    rng = np.random.default_rng(0)
    b = rng.standard_normal((50, 10)).astype(np.float32)
    assert rows_agree(b + b * 1e-6, b)
    bad = b.copy()
    bad[7] += np.abs(bad[7]).max() * 1e-2
    assert list(row_mismatches(bad, b)) == [7]
    assert rows_agree(b.astype(np.float16).astype(np.float32), b, rtol=2e-2)
    assert not rows_agree(b.astype(np.float16).astype(np.float32), b)  # fp16 rounding: past fp32's bound
    labels = rng.integers(0, 10, 50)
    other = labels.copy()
    other[3] = (other[3] + 1) % 10
    assert rows_agree(labels, labels) and list(row_mismatches(other, labels)) == [3]
    nan = b.copy()
    nan[0, 0] = np.nan
    assert rows_agree(nan, nan.copy()) and not rows_agree(nan, b)


@settings(max_examples=30)
@given(st.integers(1, 70), st.data())
def test_every_row_is_bound_to_the_root(n: int, data: st.DataObject) -> None:
    arrays = {"y": np.arange(n * 3, dtype=np.float32).reshape(n, 3), "label": np.arange(n)}
    leaves = merkle.row_leaves(arrays)
    root = merkle.root(leaves)
    i = data.draw(st.integers(0, n - 1))
    assert merkle.verify(root, n, i, leaves[i], merkle.proof(leaves, i))
    tampered = {k: v.copy() for k, v in arrays.items()}
    tampered["y"][i, 0] += 1
    assert merkle.rows_root(tampered) != root
    assert not merkle.verify(root, n, i, merkle.row_leaves(tampered)[i], merkle.proof(leaves, i))


def test_ninety_rows_catch_five_percent_faked_rows_99_times_in_100() -> None:
    assert rows.sample_size(0.99, 0.05) == 90
    for n in (90, 100, 1000, 9000, 10**6):
        faked = math.ceil(0.05 * n)
        assert rows.catch_probability(n, faked, 90) >= 0.99
        assert rows.miss_probability(n, faked, 90) <= (1 - faked / n) ** 90 + 1e-12
    assert rows.overhead(9000, 90) == 0.01
    # the draw matches the maths: 2000 simulated checks of a 1000-row job with 50 rows faked
    rng = random.Random(1)
    faked = set(rng.sample(range(1000), 50))
    caught = sum(bool(faked & set(rows.sample(1000, 90, rng))) for _ in range(2000))
    lo, hi = _wilson(caught, 2000)
    assert lo <= rows.catch_probability(1000, 50, 90) <= hi


def _wilson(k: int, n: int) -> tuple[float, float]:
    from p2pnode.verify.sampling import wilson_interval

    return wilson_interval(k, n)


def test_a_batch_coupled_model_is_detected_and_falls_back_to_reruns() -> None:
    centre = _pack([helper.make_node("ReduceMean", ["x"], ["m"], axes=[0], keepdims=1),
                    helper.make_node("Sub", ["x", "m"], ["y"])], [_io("x", ["n", 4])], [_io("y", ["n", 4])],
                   opsets=[helper.make_opsetid("", 17)])
    x = np.random.default_rng(0).standard_normal((20, 4))  # float64 data for a float32 model: cast
    job = model_jobs.prepare(centre, {"": x})
    assert not job.row_independent and job.verify == "rerun"
    assert job.arrays["x"].dtype == np.float32
    assert model_jobs.prepare(relu_model(), {"x": x.astype(np.float32)}).verify == "rows"
    with pytest.raises(ModelError, match="takes"):
        model_jobs.prepare(relu_model(), {"x": np.ones((3, 5), np.float32)})
    with pytest.raises(ModelError, match="inputs"):
        model_jobs.prepare(relu_model(), {"a": x, "b": x})


@pytest.mark.parametrize(("mode", "always"), [("garbage", True), ("replay", True), ("lowprec", True),
                                              ("skip:0.05", False), ("perturb", False)])
def test_every_cheating_mode_on_model_work_is_caught_as_the_maths_says(mode: str, always: bool) -> None:
    """Real outputs of a real model, tampered by the adversary, checked by the real sampling and row
    comparison: wholesale cheats every time; a provider faking 5 % of rows at least 99 % of the time;
    a single perturbed row when (and only when) the sample holds it."""
    from p2pnode.adversary import Adversary
    from p2pnode.exec.onnx_workload import take_rows

    job = model_jobs.prepare(models.cnn(channels=4), {"": models.images(400, seed=2)})
    params, inputs = job.shard(0, 400)
    wl = workloads.get("onnx")
    ort = backends.ops("ort-cpu")
    honest = wl.run(wl.check(params), ort, lambda f: None, inputs)
    adv = Adversary.parse(mode, seed=5)
    assert adv is not None
    other = job.shard(0, 400)  # an earlier job with other rows, for replay
    earlier = wl.run(wl.check(other[0]), ort, lambda f: None, {**other[1], "in.image": models.images(400, seed=99)})
    rng = random.Random(3)
    trials, caught = 300, 0
    for _ in range(trials):
        adv.tamper("onnx", params, earlier, False)  # the job before was another one
        p, cheat = adv.run_params("onnx", params)
        claimed = adv.tamper("onnx", p, honest, cheat)
        idx = rows.sample(400, rows.sample_size(), rng)
        sub, _, claimed_rows = take_rows(params, inputs, claimed, idx)
        _, _, truth = take_rows(params, inputs, honest, idx)
        caught += not wl.agree(sub, claimed_rows, truth)
    if always:
        assert caught == trials
    elif mode.startswith("skip"):
        assert caught / trials >= rows.catch_probability(400, 20, 90) - 0.03  # 99.5 % in theory
    else:  # one element of one row: caught when that row is among the 90 of 400
        lo, hi = _wilson(caught, trials)
        assert lo <= 90 / 400 <= hi
