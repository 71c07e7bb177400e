"""The requester's own node never runs a user's model: ``submit infer|map`` tries it on a few rows in
an executor worker, under a provider's memory limit and timeout. A model that never ends or explodes
its memory fails the submit with one clear line; the node's memory and threads are untouched."""

from __future__ import annotations

import resource
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import trio
from onnx import helper, numpy_helper

from p2pnode.control import work
from p2pnode.exec import model_jobs, onnx_model
from p2pnode.exec.executor import Executor
from p2pnode.services.model_prep import ModelPrep, ModelPrepError
from tests.exec.test_onnx_models import _io, _pack, endless_loop, relu_model


def expand_bomb(gib: int = 3) -> bytes:
    """A few bytes of model that ask for ``gib`` GiB of floats, whatever the input."""
    shape = numpy_helper.from_array(np.array([gib << 28], dtype=np.int64), "shape")
    one = numpy_helper.from_array(np.ones(1, np.float32), "one")
    nodes = [helper.make_node("Expand", ["one", "shape"], ["big"]),
             helper.make_node("ReduceSum", ["big"], ["total"], keepdims=1),
             helper.make_node("Add", ["x", "total"], ["y"])]
    return _pack(nodes, [_io("x", ["n", 1])], [_io("y", ["n", 1])], [shape, one])


def _prep() -> ModelPrep:
    """A requester-only node's preparation: its own small executor, started at first use."""
    return ModelPrep(None, lambda: Executor(slots=1))


def _files(tmp_path: Path, blob: bytes, x: np.ndarray) -> dict[str, str]:
    raw, _ = onnx_model.unpack(blob)
    (tmp_path / "m.onnx").write_bytes(raw)
    np.save(tmp_path / "x.npy", x)
    return {"model": str(tmp_path / "m.onnx"), "input": str(tmp_path / "x.npy")}


def _in_a_model(frame: Any) -> bool:
    while frame is not None:
        name = frame.f_code.co_filename
        if "onnxruntime" in name or name.endswith("model_jobs.py"):
            return True
        frame = frame.f_back
    return False


def _threads_running_a_model() -> int:
    return sum(1 for f in sys._current_frames().values() if _in_a_model(f))


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


async def _submit(prep: ModelPrep, **request: Any) -> Any:
    async def emit(item: Any) -> None:
        pass

    return await work.run_map(None, prep, {"max_price": 1, **request}, emit)


async def test_an_endless_model_is_stopped_in_its_worker_and_the_submit_says_why(tmp_path: Path) -> None:
    prep = _prep()
    try:
        with trio.fail_after(60), pytest.raises(ModelPrepError, match="did not finish a few rows in 2 s"):
            await _submit(prep, **_files(tmp_path, endless_loop(), np.zeros((5, 1), np.float32)), deadline=2)
        assert _threads_running_a_model() == 0  # nothing of it goes on in the node
        assert isinstance(prep._own, Executor) and prep._own.running == 0 and prep._own.failed == {"timeout": 1}
        # the worker that looped was killed; the next model gets a fresh one
        job = await prep.prepare(relu_model(), {"": np.ones((3, 4), np.float32)})
        assert job.rows == 3 and job.row_independent
    finally:
        await prep.aclose()


async def test_a_memory_bomb_is_stopped_in_its_worker_and_the_node_stays_small(tmp_path: Path) -> None:
    prep = _prep()
    before = _peak_rss()
    try:
        with trio.fail_after(60), pytest.raises(ModelPrepError, match="more memory than a job of a few rows"):
            await _submit(prep, **_files(tmp_path, expand_bomb(), np.zeros((5, 1), np.float32)))
        assert _peak_rss() - before < 256 << 20  # the 3 GiB were asked for elsewhere
        assert _threads_running_a_model() == 0
    finally:
        await prep.aclose()


async def test_the_probe_tells_what_a_row_costs_and_the_own_worker_goes_with_the_node() -> None:
    prep = _prep()
    try:
        x = np.random.default_rng(0).standard_normal((200, 4)).astype(np.float32)
        job = await prep.prepare(relu_model(), {"": x})
        assert job.out_row_bytes == 16 and job.rows == 200 and job.cost_per_row() >= job.info.flops_per_row
        assert np.array_equal(job.arrays["x"], x)
        (worker,) = prep._own._all if isinstance(prep._own, Executor) else ()
        pid = worker.proc.pid
    finally:
        await prep.aclose()
    with trio.fail_after(10):
        while _alive(pid):
            await trio.sleep(0.02)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_a_model_error_found_in_the_worker_is_the_same_one_line(tmp_path: Path) -> None:
    blob = _pack([helper.make_node("Relu", ["x"], ["y"])], [_io("x", ["n", 4])], [_io("y", ["n", 4])])
    line = r"^input x: the model takes rows of \[4\], the data's rows are \[5\]$"
    with pytest.raises(onnx_model.ModelError, match=line):
        model_jobs.prepare(blob, {"": np.ones((3, 5), np.float32)})

    async def main() -> None:
        prep = _prep()
        try:
            with pytest.raises(onnx_model.ModelError, match=line):
                await prep.prepare(blob, {"": np.ones((3, 5), np.float32)})
        finally:
            await prep.aclose()

    trio.run(main)
