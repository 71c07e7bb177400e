"""Models that couple their rows are found before they run (by their graph, then by running a few
rows in other batches), and run whole: their answer is ONNX Runtime's on the whole dataset."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from p2pnode import models
from p2pnode.exec import backends, model_jobs, onnx_model, row_coupling, workloads
from tests.exec.test_onnx_models import _io, _pack, relu_model

F = TensorProto.FLOAT


def _c(name: str, values: list[int]) -> object:
    return numpy_helper.from_array(np.array(values, dtype=np.int64), name)


def _w(name: str, shape: tuple[int, ...]) -> object:
    return numpy_helper.from_array(np.random.default_rng(1).standard_normal(shape).astype(np.float32), name)


def centre() -> bytes:
    """y = x − mean(x over the rows): each row's answer depends on every other row."""
    return _pack([helper.make_node("ReduceMean", ["x"], ["m"], axes=[0], keepdims=1),
                  helper.make_node("Sub", ["x", "m"], ["y"])], [_io("x", ["n", 4])], [_io("y", ["n", 4])])


COUPLED = {
    "ReduceMean axes [0]": centre(),
    "ReduceSum axes input [0] (opset 13)": _pack(
        [helper.make_node("ReduceSum", ["x", "ax"], ["s"], keepdims=1), helper.make_node("Add", ["x", "s"], ["y"])],
        [_io("x", ["n", 4])], [_io("y", ["n", 4])], [_c("ax", [0])]),
    "ReduceMax over every axis": _pack(
        [helper.make_node("ReduceMax", ["x"], ["s"], keepdims=1), helper.make_node("Sub", ["x", "s"], ["y"])],
        [_io("x", ["n", 4])], [_io("y", ["n", 4])]),
    "Softmax axis 0": _pack([helper.make_node("Softmax", ["x"], ["y"], axis=0)], [_io("x", ["n", 4])],
                            [_io("y", ["n", 4])]),
    "LogSoftmax axis -2": _pack([helper.make_node("LogSoftmax", ["x"], ["y"], axis=-2)], [_io("x", ["n", 4])],
                                [_io("y", ["n", 4])]),
    "BatchNormalization in training mode": _pack(
        [helper.make_node("BatchNormalization", ["x", "s", "b", "mean", "var"], ["y", "rm", "rv"], training_mode=1)],
        [_io("x", ["n", 3, 2, 2])], [_io("y", ["n", 3, 2, 2])],
        [numpy_helper.from_array(np.ones(3, np.float32), n) for n in ("s", "b", "mean", "var")]),
    "MatMul with the rows as the inner dimension (xᵀ·x)": _pack(
        [helper.make_node("Transpose", ["x"], ["xt"]), helper.make_node("MatMul", ["xt", "x"], ["g"]),
         helper.make_node("MatMul", ["x", "g"], ["y"])], [_io("x", ["n", 4])], [_io("y", ["n", 4])]),
    "MatMul of weights by the rows": _pack(
        [helper.make_node("MatMul", ["w", "x"], ["g"]), helper.make_node("MatMul", ["x", "wt"], ["h"]),
         helper.make_node("Add", ["h", "g"], ["y"])],
        [_io("x", ["n", 4])], [_io("y", ["n", 4])], [_w("w", (4, 4)), _w("wt", (4, 4))]),
    "CumSum along the rows": _pack([helper.make_node("CumSum", ["x", "ax"], ["y"])], [_io("x", ["n", 4])],
                                   [_io("y", ["n", 4])], [_c("ax", [0])]),
    "MeanVarianceNormalization (default axes)": _pack(
        [helper.make_node("MeanVarianceNormalization", ["x"], ["y"])], [_io("x", ["n", 3, 2, 2])],
        [_io("y", ["n", 3, 2, 2])]),
    "LayerNormalization axis 0": _pack(
        [helper.make_node("LayerNormalization", ["x", "s"], ["y"], axis=0)], [_io("x", ["n", 4])],
        [_io("y", ["n", 4])], [numpy_helper.from_array(np.ones((1, 4), np.float32), "s")]),
    "Gemm with transA": _pack(
        [helper.make_node("Gemm", ["x", "x"], ["g"], transA=1), helper.make_node("MatMul", ["x", "g"], ["y"])],
        [_io("x", ["n", 4])], [_io("y", ["n", 4])]),
    "Einsum summing the rows": _pack(
        [helper.make_node("Einsum", ["x", "x"], ["g"], equation="ni,nj->ij"),
         helper.make_node("MatMul", ["x", "g"], ["y"])], [_io("x", ["n", 4])], [_io("y", ["n", 4])]),
    "Slice of the rows": _pack(
        [helper.make_node("Slice", ["x", "st", "en", "ax"], ["f"]), helper.make_node("Sub", ["x", "f"], ["y"])],
        [_io("x", ["n", 4])], [_io("y", ["n", 4])], [_c("st", [0]), _c("en", [1]), _c("ax", [0])]),
}


@pytest.mark.parametrize("name", list(COUPLED))
def test_a_model_that_mixes_its_rows_is_found_by_its_graph(name: str) -> None:
    model = onnx_model.load(COUPLED[name])
    assert row_coupling.coupling(model), name


@pytest.mark.parametrize("blob", [relu_model(), models.cnn(channels=4), models.attention(tokens=4, dim=8),
                                  _pack([helper.make_node("Gather", ["table", "ids"], ["y"], axis=0)],
                                        [_io("ids", ["n", 3], TensorProto.INT64)], [_io("y", ["n", 3, 4])],
                                        [_w("table", (10, 4))]),
                                  _pack([helper.make_node("Softmax", ["x"], ["y"], axis=1)], [_io("x", ["n", 4])],
                                        [_io("y", ["n", 4])])],
                         ids=["relu", "cnn", "attention", "embedding", "softmax-per-row"])
def test_row_independent_models_are_not_flagged(blob: bytes) -> None:
    assert row_coupling.coupling(onnx_model.load(blob)) == ""


def test_identical_first_rows_do_not_hide_a_coupling() -> None:
    x = np.ones((50, 4), np.float32)
    x[-1] = 3.0  # every probe row but the last equal: x - mean is 0 there, whatever the batch
    job = model_jobs.prepare(centre(), {"": x})
    assert job.whole and "ReduceMean" in job.coupling and job.verify == "rerun"


def test_a_coupling_inside_a_loop_is_found_by_running_rows_in_other_batches() -> None:
    """The graph pass does not look into a Loop's body; running the rows alone and together does."""
    body = helper.make_graph(
        [helper.make_node("Identity", ["c"], ["c_out"]),
         helper.make_node("ReduceSum", ["acc", "ax"], ["s"], keepdims=1),
         helper.make_node("Sub", ["acc", "s"], ["acc_out"])],
        "body", [_io("i", [], TensorProto.INT64), _io("c", [], TensorProto.BOOL), _io("acc", ["n", 4])],
        [_io("c_out", [], TensorProto.BOOL), _io("acc_out", ["n", 4])], [_c("ax", [0])])
    blob = _pack([helper.make_node("Loop", ["trips", "cond", "x"], ["y"], body=body)], [_io("x", ["n", 4])],
                 [_io("y", ["n", 4])], [numpy_helper.from_array(np.array(1, np.int64), "trips"),
                                        numpy_helper.from_array(np.array(True), "cond")])
    assert row_coupling.coupling(onnx_model.load(blob)) == ""
    job = model_jobs.prepare(blob, {"": np.random.default_rng(2).standard_normal((30, 4)).astype(np.float32)})
    assert job.whole and "batch" in job.coupling


def _direct(blob: bytes, x: np.ndarray) -> np.ndarray:
    sess, _ = backends.OrtOps("ort-cpu").session(blob)
    return np.asarray(sess.run(None, {"x": x})[0])


def test_a_row_coupled_job_runs_every_row_in_one_batch() -> None:
    x = np.random.default_rng(3).standard_normal((3000, 4)).astype(np.float32)  # three chunks' worth
    job = model_jobs.prepare(centre(), {"": x})
    params, inputs = job.shard(0, job.rows)
    assert params["whole"] is True
    wl = workloads.get("onnx")
    out = wl.run(wl.check(params), backends.ops("ort-cpu"), lambda f: None, inputs).arrays["y"]
    assert np.allclose(out, _direct(centre(), x), rtol=1e-5, atol=1e-6)
    chunked = wl.run(wl.check({**params, "whole": False}), backends.ops("ort-cpu"), lambda f: None, inputs)
    assert not np.allclose(chunked.arrays["y"], out, atol=1e-3)  # what 1024-row chunks would have given
    with pytest.raises(onnx_model.ModelError, match="couples its rows"):
        job.shard(0, 100)
    with pytest.raises(workloads.WorkloadError, match="whole"):
        wl.check({**params, "whole": 1})
