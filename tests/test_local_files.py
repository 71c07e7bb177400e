"""Files a user or a control request names are checked (type, size, links) before a byte is read:
sparse giants, /dev/zero, FIFOs and links to secrets are refused at once with one clear line."""

from __future__ import annotations

import os
import resource
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from p2pnode import local_files
from p2pnode.control import work
from p2pnode.errors import FileRefused
from p2pnode.exec import onnx_model
from tests.exec.test_onnx_models import relu_model


def _sparse(path: Path, size: int) -> Path:
    with open(path, "wb") as f:
        f.truncate(size)  # no disk blocks: a hole
    return path


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


async def _map(**request: Any) -> Any:
    async def emit(item: Any) -> None:
        pass

    return await work.run_map(None, None, {"max_price": 1, **request}, emit)  # refused before any is needed


async def test_a_sparse_model_or_dataset_over_the_limit_is_refused_unread(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(onnx_model, "MAX_MODEL_BYTES", 1 << 20)
    model = _sparse(tmp_path / "big.onnx", 1 << 30)
    data = _sparse(tmp_path / "big.npy", 1 << 40)
    np.save(tmp_path / "x.npy", np.ones((4, 4), np.float32))
    before = _peak_rss()
    with pytest.raises(FileRefused, match=r"model .*big.onnx is 1.0 GiB, over the limit of 1.0 MiB"):
        onnx_model.pack_file(model)
    with pytest.raises(FileRefused, match=r"dataset .*big.npy is 1024.0 GiB, over the limit"):
        local_files.load_arrays(str(data), what="dataset")
    with pytest.raises(FileRefused, match="over the limit"):
        await _map(model=str(model), input=str(tmp_path / "x.npy"))
    assert _peak_rss() - before < 256 << 20  # nothing the size of the file was read


@pytest.mark.parametrize("where", ["model", "input"])
async def test_dev_zero_a_fifo_and_a_folder_are_refused_at_once(tmp_path: Path, where: str) -> None:
    fifo = tmp_path / "pipe.npy"
    os.mkfifo(fifo)  # nobody writes: an open that waited would wait forever
    np.save(tmp_path / "x.npy", np.ones((4, 4), np.float32))
    raw, _ = onnx_model.unpack(relu_model())
    (tmp_path / "m.onnx").write_bytes(raw)
    ok = {"model": str(tmp_path / "m.onnx"), "input": str(tmp_path / "x.npy")}
    folder = "is a folder without a model.onnx in it" if where == "model" else "is a directory, not a regular file"
    for path, said in (("/dev/zero", "is a character device, not a regular file"),
                       (str(fifo), "is a FIFO, not a regular file"), (str(tmp_path), folder)):
        with pytest.raises(FileRefused, match=said):
            await _map(**{**ok, where: path})


def test_input_arrays_of_a_job_are_checked_too(tmp_path: Path) -> None:
    from p2pnode.model_io import read_array

    np.save(tmp_path / "a.npy", np.arange(6, dtype=np.int64))
    assert read_array(str(tmp_path / "a.npy"), "input a").tolist() == list(range(6))
    with pytest.raises(FileRefused, match="not a regular file"):
        read_array("/dev/zero", "input a")
    (tmp_path / "pickled.npy").write_bytes(b"\x93NUMPY\x01\x00v\x00{'descr': '|O', 'fortran_order': False, "
                                           b"'shape': (1,), }" + b" " * 70 + b"\n")
    with pytest.raises(FileRefused, match="Python objects"):
        read_array(str(tmp_path / "pickled.npy"), "input a")


def test_a_compressed_npz_that_unpacks_past_the_limit_is_refused_unread(tmp_path: Path) -> None:
    path = tmp_path / "bomb.npz"
    np.savez_compressed(path, x=np.zeros(64 << 20, np.uint8))  # 64 MiB of zeros, a few KiB on disk
    assert path.stat().st_size < 1 << 20
    with pytest.raises(FileRefused, match="unpacks to 64.0 MiB, over the limit of 1.0 MiB"):
        local_files.load_arrays(str(path), what="dataset", limit=1 << 20)
    assert local_files.load_arrays(str(path), what="dataset")["x"].nbytes == 64 << 20


def test_an_npy_whose_header_promises_more_than_the_file_holds_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "short.npy"
    np.save(path, np.ones((100, 4), np.float32))
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size - 8)
    with pytest.raises(FileRefused, match="header promises"):
        local_files.load_arrays(str(path), what="dataset")


@pytest.mark.parametrize("bad", ["/dev/null", "no/such/folder/out.npy", "fifo"])
def test_an_output_path_must_be_a_file_in_a_folder(tmp_path: Path, bad: str) -> None:
    if bad == "fifo":
        os.mkfifo(tmp_path / "fifo.npy")
        bad = str(tmp_path / "fifo.npy")
    elif not bad.startswith("/"):
        bad = str(tmp_path / bad)
    with pytest.raises(FileRefused):
        local_files.check_output(bad)
    local_files.check_output(str(tmp_path / "fine.npy"))
