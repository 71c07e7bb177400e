"""A user's training files on the requester's side, checked before anything is sent or paid for.

* **The model** (:func:`read_model`): a ``.json`` file holding the model map
  (:mod:`p2pnode.exec.train_model`: layers, loss, optimizer), whose weights start from ``--seed``;
  or a ``.npz`` holding ``model`` (the map as UTF-8 JSON bytes, uint8) and ``weights`` (float32,
  one vector in the model's parameter order): what ``--output`` writes, so a trained model trains
  on. Never code, never a pickle.
* **The data** (:func:`read_data`): a ``.npz`` with ``x`` (rows × the model's inputs, converted
  to float32; token ids for a model with a ``vocab``) and ``y`` (labels, integers 0..outputs-1,
  for ``xent``; targets, rows × outputs, for ``mse``). :func:`text_windows` makes the data of a
  character-level language model from any text.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from p2pnode import local_files, model_io
from p2pnode.errors import FileRefused, WorkloadError
from p2pnode.exec import train_model as tm

MAX_MODEL_JSON = 64 * 1024
TEXT_CHARS = "\n" + "".join(chr(c) for c in range(32, 127))  # a character model's 96 token ids


class TrainFileError(FileRefused):
    """A model or data file for training that this node will not use as it is."""


def read_model(path: str, seed: int) -> tuple[tm.Spec, np.ndarray]:
    """(the model, its starting weights) from a ``.json`` model map or a ``.npz`` model."""
    if path.endswith(".npz"):
        arrays = model_io.read_dataset(path)
        if "model" not in arrays or "weights" not in arrays:
            raise TrainFileError(f"{path}: a model .npz holds `model` (its JSON map) and `weights`")
        raw = np.asarray(arrays["model"])
        if raw.dtype != np.uint8 or raw.ndim != 1 or raw.size > MAX_MODEL_JSON:
            raise TrainFileError(f"{path}: `model` must be the model's JSON as bytes (uint8)")
        spec = _spec(raw.tobytes(), path)
        weights = np.asarray(arrays["weights"])
        if weights.shape != (spec.params,) or weights.dtype.kind != "f" or not np.isfinite(weights).all():
            raise TrainFileError(f"{path}: `weights` must be {spec.params} finite floats for this model, "
                                 f"not {weights.dtype}{list(weights.shape)}")
        return spec, weights.astype(np.float32)
    with local_files.opened(path, what="model file", limit=MAX_MODEL_JSON) as (f, _):
        raw_json = f.read(MAX_MODEL_JSON + 1)
    spec = _spec(raw_json, path)
    return spec, tm.init_weights(spec, seed)


def _spec(raw: bytes, path: str) -> tm.Spec:
    try:
        return tm.parse(json.loads(raw.decode()))
    except (UnicodeDecodeError, ValueError) as exc:
        raise TrainFileError(f"{path}: the model is not JSON ({exc})") from None
    except WorkloadError as exc:
        raise TrainFileError(f"{path}: {exc}") from None


def read_data(path: str, spec: tm.Spec) -> tuple[np.ndarray, np.ndarray]:
    """(x as float32, y) from a ``.npz`` with ``x`` and ``y``, checked against the model."""
    if not path.endswith(".npz"):
        raise TrainFileError(f"{path}: training data is a .npz with arrays x and y")
    arrays = model_io.read_dataset(path)
    if "x" not in arrays or "y" not in arrays:
        raise TrainFileError(f"{path}: training data needs arrays x and y (it has {', '.join(sorted(arrays))})")
    x, y = np.asarray(arrays["x"]), np.asarray(arrays["y"])
    if x.ndim != 2 or x.shape[1] != spec.inputs or x.dtype.kind not in "fiu":
        raise TrainFileError(f"{path}: x must be numbers of shape [rows, {spec.inputs}], not "
                             f"{x.dtype}{list(x.shape)}")
    x = x.astype(np.float32)
    if not np.isfinite(x).all():
        raise TrainFileError(f"{path}: x holds NaN or infinities")
    if spec.vocab and (x.min(initial=0) < 0 or x.max(initial=0) >= spec.vocab or (x != np.floor(x)).any()):
        raise TrainFileError(f"{path}: x must hold token ids, integers in 0..{spec.vocab - 1}, for this model")
    if spec.loss == "xent":
        if y.shape != (len(x),) or y.dtype.kind not in "iu" or y.min() < 0 or y.max() >= spec.outputs:
            raise TrainFileError(f"{path}: y must be {len(x)} integer labels in 0..{spec.outputs - 1}")
        return x, y.astype(np.int64)
    if y.shape != (len(x), spec.outputs) or y.dtype.kind != "f" or not np.isfinite(y).all():
        raise TrainFileError(f"{path}: y must be finite floats of shape [{len(x)}, {spec.outputs}]")
    return x, y.astype(np.float32)


def check_output(path: str) -> None:
    if not path.endswith(".npz"):
        raise TrainFileError(f"--output {path}: a trained model is saved as a .npz")
    model_io.check_output(path)


def save_model(path: str, spec: tm.Spec, weights: np.ndarray, losses: list[float]) -> dict[str, Any]:
    """The model as ``read_model`` reads it (and the loss after each round)."""
    try:
        np.savez(path, model=np.frombuffer(spec.canonical(), dtype=np.uint8), weights=weights.astype(np.float32),
                 losses=np.asarray(losses, np.float64))
    except OSError as exc:
        raise TrainFileError(f"cannot write {path}: {exc.strerror}") from None
    return {"path": path, "params": spec.params}


def example_model(path: Path) -> None:
    """Write the digits model of the README (64 inputs, 10 classes) as a ``.json``."""
    path.write_text(json.dumps({"inputs": 64, "layers": [["dense", 32], ["relu"], ["dense", 10]],
                                "loss": "xent", "optimizer": "adamw"}))


def text_windows(text: str, context: int, stride: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """A character-level language model's data: every ``stride``-th run of ``context`` characters
    of ``text`` as token ids (the index in ``TEXT_CHARS``; other characters are dropped), and the
    character after it as its label. For a model ``{"inputs": context, "vocab": 96, ...}``."""
    index = {c: i for i, c in enumerate(TEXT_CHARS)}
    ids = np.array([index[c] for c in text if c in index], dtype=np.int64)
    if len(ids) <= context:
        raise TrainFileError(f"the text has {len(ids)} usable characters: fewer than a window of {context} and its label")
    starts = np.arange(0, len(ids) - context, stride)
    x = ids[starts[:, None] + np.arange(context)[None, :]]
    return x.astype(np.float32), ids[starts + context]
