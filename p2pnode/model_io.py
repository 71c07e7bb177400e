"""A user's files on the requester's side, checked before anything is submitted or paid for.

* **Data** (:func:`read_dataset`, :func:`read_array`): ``.npy`` (one array, memory-mapped) or
  ``.npz`` (named arrays), never pickles. A file that is not what its name says is refused as
  such ("not a NumPy .npy file"), never with advice to allow pickles.
* **Output paths** (:func:`check_output`): a ``.npy`` or ``.npz`` file whose folder exists and can
  be written, and that is not a folder itself: checked before the job is sent, not after it ran and
  was paid for.
* **Conversions** (:func:`conversions`): data of another type than the model takes follows one
  rule (README, "Your model on your data"). Floating point goes to the model's floating type, and
  a narrowing (float64 data, float32 model) is said, since it rounds; integers go to the model's
  integer type when every value fits, else the input is refused; any other change of kind (floats
  for an integer input, booleans) is refused.
* **scikit-learn's ZipMap** (:func:`drop_zipmap`): skl2onnx's default conversion of a classifier
  ends in a ``ZipMap`` whose output is a sequence of per-row dicts, which no row check can compare.
  It is replaced by the probability tensor it was made from (``[rows, classes]``, columns in the
  order of the class labels), and said.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from p2pnode import local_files
from p2pnode.errors import FileRefused
from p2pnode.wire.blob import MAX_BLOB

NPY_MAGIC = b"\x93NUMPY"
OUTPUT_SUFFIXES = (".npy", ".npz")


class DataError(FileRefused):
    """A data file, an output path or a model's inputs that this node will not use as they are."""


# data ---------------------------------------------------------------------------------------------

def read_dataset(path: str) -> dict[str, np.ndarray]:
    """A ``.npz`` (its named arrays) or any other file as one ``.npy`` array (name ``""``,
    memory-mapped); its type and size checked before anything is read (:mod:`p2pnode.local_files`)."""
    _expect(path, zip_file=path.endswith(".npz"))
    return _load(path, "the dataset", local_files.MAX_DATASET_BYTES)


def read_array(path: str, what: str) -> np.ndarray:
    """One array from a ``.npy`` file of at most a blob's size; ``what`` names it in errors."""
    _expect(path, zip_file=False)
    return np.array(next(iter(_load(path, what, MAX_BLOB).values())))


def _load(path: str, what: str, limit: int) -> dict[str, np.ndarray]:
    try:
        return local_files.load_arrays(path, what=what, limit=limit)
    except FileRefused as exc:
        raise DataError(f"cannot read {what} {path}: {exc}" if str(exc).startswith("it holds") else str(exc)) from None


def _expect(path: str, *, zip_file: bool) -> None:
    with local_files.opened(path, what="data file", limit=local_files.MAX_DATASET_BYTES) as (f, _):
        head = f.read(len(NPY_MAGIC))
    if zip_file and not head.startswith(b"PK"):
        raise DataError(f"{path} is not a NumPy .npz file (save arrays with numpy.savez)")
    if not zip_file and head != NPY_MAGIC:
        raise DataError(f"{path} is not a NumPy .npy file (it does not start as one; save an array with "
                        "numpy.save, or name a .npz of arrays)")


def _why(exc: BaseException) -> str:
    """NumPy's reason, less its advice to load pickles (which this node never does)."""
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if "pickle" in text.lower():
        return "it holds Python objects (a pickle), which this node never loads; save a numeric array"
    return text


# outputs ------------------------------------------------------------------------------------------

def check_output(path: str) -> None:
    """An output path a result can be saved to, or :class:`DataError` saying why not."""
    if not path.endswith(OUTPUT_SUFFIXES):
        raise DataError(f"--output {path}: name a .npy or .npz file")
    p = Path(path)
    if p.is_dir():
        raise DataError(f"--output {path} is a folder: name a .npy or .npz file in it")
    parent = p.parent
    if not parent.is_dir():
        raise DataError(f"--output {path}: the folder {parent} does not exist")
    if p.exists() and not os.access(p, os.W_OK):
        raise DataError(f"--output {path}: the file cannot be written (permissions)")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise DataError(f"--output {path}: the folder {parent} cannot be written to (permissions)")
    local_files.check_output(path, what="--output")  # an existing file there is a regular one


def save_outputs(path: str, outputs: Mapping[str, np.ndarray], order: list[str]) -> dict[str, Any]:
    """All outputs into a ``.npz``; into a ``.npy`` the first of ``order`` (the others named)."""
    try:
        if path.endswith(".npz"):
            np.savez(path, **outputs)  # type: ignore[arg-type]
            return {"path": path, "outputs": list(order), "skipped": []}
        first = order[0]
        np.save(path, outputs[first], allow_pickle=False)
        return {"path": path, "outputs": [first], "skipped": order[1:]}
    except OSError as exc:
        raise DataError(f"cannot write {path}: {exc.strerror}") from None


# conversions --------------------------------------------------------------------------------------

def conversions(given: Mapping[str, np.ndarray], cast: Mapping[str, np.ndarray]) -> list[str]:
    """What was done to the user's arrays (``given``, by model input name) to make ``cast`` (what
    the model takes), one line each; :class:`DataError` when an integer does not fit."""
    notes = []
    for name, a in given.items():
        b = cast[name]
        if a.dtype == b.dtype:
            continue
        if a.dtype.kind in "iu" and b.dtype.kind in "iu":
            lo, hi = np.iinfo(b.dtype).min, np.iinfo(b.dtype).max
            if a.size and (int(a.min()) < lo or int(a.max()) > hi):
                raise DataError(f"input {name or 'data'}: the model takes {b.dtype}, and the data ({a.dtype}) holds "
                                f"values outside {lo}..{hi}")
            notes.append(f"input {name}: {a.dtype} data converted to the model's {b.dtype} (every value fits)")
        elif a.dtype.kind == "f" and b.dtype.kind == "f" and b.dtype.itemsize < a.dtype.itemsize:
            notes.append(f"input {name}: {a.dtype} data rounded to the model's {b.dtype} (less precise)")
        else:
            notes.append(f"input {name}: {a.dtype} data converted to the model's {b.dtype}")
    return notes


# scikit-learn's ZipMap ----------------------------------------------------------------------------

def drop_zipmap(raw: bytes) -> tuple[bytes, list[str]]:
    """``raw`` with each graph output made by a ``ZipMap`` given as the tensor it zips instead,
    and a line for each; ``raw`` itself when there is none (or it does not parse: the model's
    checks say why)."""
    import onnx
    from onnx import TensorProto, helper

    try:
        model = onnx.load_model_from_string(raw)
    except Exception:  # noqa: BLE001 - not a model: its own checks refuse it, with the reason
        return raw, []
    outputs = {o.name: o for o in model.graph.output}
    notes = []
    for i, node in enumerate(model.graph.node):
        if node.op_type != "ZipMap" or node.domain != "ai.onnx.ml" or node.output[0] not in outputs:
            continue
        labels: list[Any] = []
        for attr in node.attribute:
            labels = list(attr.ints) or [s.decode() for s in attr.strings] or labels
        out = outputs[node.output[0]]
        model.graph.node[i].CopyFrom(helper.make_node("Identity", [node.input[0]], [out.name], name=node.name))
        out.type.CopyFrom(helper.make_tensor_type_proto(TensorProto.FLOAT, [None, len(labels) or None]))
        shown = ", ".join(map(str, labels[:10])) + (", ..." if len(labels) > 10 else "")
        notes.append(f"output {out.name}: scikit-learn's ZipMap (a dict per row) is given as the probability tensor "
                     f"[rows, {len(labels)}] instead, columns in class order ({shown})")
    if not notes:
        return raw, []
    if not any(o.domain in ("", "ai.onnx") for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("", 13))  # Identity's domain
    return model.SerializeToString(), notes
