"""A user's files on the requester's side: datasets, output paths, conversions to what the model
takes, and scikit-learn's ZipMap; all checked before anything is submitted."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from p2pnode import model_io
from p2pnode.control import work
from p2pnode.exec import backends, model_jobs, onnx_model, workloads
from p2pnode.model_io import DataError


def _prepare(model: Path, data: str) -> tuple[Any, list[str]]:
    """The model job as the node makes it (its probe here, not in a worker), and the notes."""
    blob, arrays, notes = work._read(model, data)
    job = model_jobs.prepare(blob, arrays)
    return job, notes + work._conversions(job, arrays)


def _run_here(job: model_jobs.ModelJob) -> dict[str, np.ndarray]:
    params, inputs = job.shard(0, job.rows)
    wl = workloads.get("onnx")
    return wl.run(wl.check(params), backends.ops("ort-cpu"), lambda f: None, inputs).arrays


def test_sklearns_default_conversion_with_zipmap_runs_as_its_probability_tensor(tmp_path: Path) -> None:
    pytest.importorskip("skl2onnx")
    from skl2onnx import to_onnx
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    x, y = load_iris(return_X_y=True)
    x = x.astype(np.float32)
    clf = LogisticRegression(max_iter=500).fit(x, y)
    (tmp_path / "clf.onnx").write_bytes(to_onnx(clf, x[:1]).SerializeToString())  # the default: with ZipMap
    np.save(tmp_path / "x.npy", x)
    with pytest.raises(onnx_model.ModelError, match="sequence_type"):  # as it is, no row check can compare it
        model_jobs.prepare(onnx_model.pack_file(tmp_path / "clf.onnx"), {"": x})
    job, notes = _prepare(tmp_path / "clf.onnx", str(tmp_path / "x.npy"))
    assert [s.name for s in job.info.outputs] == ["output_label", "output_probability"]
    assert len(notes) == 1 and "output output_probability: scikit-learn's ZipMap" in notes[0]
    assert "probability tensor [rows, 3] instead, columns in class order (0, 1, 2)" in notes[0]
    out = _run_here(job)
    assert np.array_equal(out["output_label"], clf.predict(x))
    assert np.allclose(out["output_probability"], clf.predict_proba(x), rtol=1e-4, atol=1e-5)
    assert job.row_independent  # checked by sampled rows, as any row model


def _int32_model() -> bytes:
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Cast", ["x"], ["y"], to=TensorProto.FLOAT)], "cast",
                              [helper.make_tensor_value_info("x", TensorProto.INT32, ["rows", 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["rows", 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def test_data_of_another_type_follows_the_rule_and_says_so(tmp_path: Path) -> None:
    from p2pnode import models

    (tmp_path / "cnn.onnx").write_bytes(onnx_model.unpack(models.cnn(channels=2))[0])
    np.save(tmp_path / "x64.npy", models.images(6).astype(np.float64))
    job, notes = _prepare(tmp_path / "cnn.onnx", str(tmp_path / "x64.npy"))
    assert job.arrays["image"].dtype == np.float32
    assert notes == ["input image: float64 data rounded to the model's float32 (less precise)"]
    (tmp_path / "int.onnx").write_bytes(_int32_model())
    np.save(tmp_path / "small.npy", np.arange(12, dtype=np.int64).reshape(4, 3))
    job, notes = _prepare(tmp_path / "int.onnx", str(tmp_path / "small.npy"))
    assert notes == ["input x: int64 data converted to the model's int32 (every value fits)"]
    np.save(tmp_path / "big.npy", np.array([[1, 2, 2**40]], dtype=np.int64))  # would wrap around in int32
    with pytest.raises(DataError, match="input x: the model takes int32, and the data \\(int64\\) holds values "
                                        "outside -2147483648..2147483647"):
        _prepare(tmp_path / "int.onnx", str(tmp_path / "big.npy"))
    np.save(tmp_path / "floats.npy", np.ones((2, 3), dtype=np.float32))
    with pytest.raises(onnx_model.ModelError, match="the model takes int32, the data is float32"):
        _prepare(tmp_path / "int.onnx", str(tmp_path / "floats.npy"))


def test_a_file_that_is_not_what_its_name_says_is_called_so_never_a_pickle(tmp_path: Path) -> None:
    text = tmp_path / "data.npy"
    text.write_text("1,2,3\n4,5,6\n")
    with pytest.raises(DataError) as refused:
        model_io.read_dataset(str(text))
    assert str(refused.value).startswith(f"{text} is not a NumPy .npy file")
    objects = tmp_path / "objects.npy"
    np.save(objects, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match="holds Python objects \\(a pickle\\), which this node never loads") as caught:
        model_io.read_array(str(objects), "input a")
    zipped = tmp_path / "data.npz"
    zipped.write_bytes(b"not a zip")
    with pytest.raises(DataError, match="is not a NumPy .npz file") as not_zip:
        model_io.read_dataset(str(zipped))
    for error in (refused.value, caught.value, not_zip.value):
        assert "allow_pickle" not in str(error)


def test_output_paths_are_checked_before_anything_is_sent(tmp_path: Path) -> None:
    model_io.check_output(str(tmp_path / "out.npy"))
    model_io.check_output(str(tmp_path / "out.npz"))
    with pytest.raises(DataError, match=f"the folder {tmp_path / 'nowhere'} does not exist"):
        model_io.check_output(str(tmp_path / "nowhere" / "out.npy"))
    (tmp_path / "dir.npy").mkdir()
    with pytest.raises(DataError, match="is a folder"):
        model_io.check_output(str(tmp_path / "dir.npy"))
    with pytest.raises(DataError, match="name a .npy or .npz file"):
        model_io.check_output(str(tmp_path / "out.csv"))
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(DataError, match="cannot be written to"):
            model_io.check_output(str(locked / "out.npy"))


async def test_the_node_refuses_a_bad_output_path_before_it_reads_or_runs_anything(tmp_path: Path) -> None:
    class NoMaps:
        async def run(self, *args: Any, **kw: Any) -> Any:
            raise AssertionError("nothing may run")

    events: list[dict[str, Any]] = []

    async def emit(e: dict[str, Any]) -> None:
        events.append(e)

    request = {"model": str(tmp_path / "m.onnx"), "input": str(tmp_path / "x.npy"), "max_price": 10,
               "output": str(tmp_path / "gone" / "y.npy")}
    with pytest.raises(DataError, match="does not exist"):
        await work.run_map(NoMaps(), None, request, emit)
    with pytest.raises(DataError, match="does not exist"):
        await work.submit_job(NoMaps(), {"workload": "matmul", "max_price": 10, "output": request["output"]}, emit)
    assert events == []
