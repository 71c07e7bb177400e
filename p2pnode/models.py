"""Real models built on this machine, for the demo, tests and benchmarks (no model hub is reachable).

* :func:`digits` trains a scikit-learn MLP classifier on the handwritten digits dataset that
  scikit-learn ships, and converts it with skl2onnx (both optional: ``pip install 'p2pnode[demo]'``);
* :func:`cnn` builds a small convolutional network, and :func:`attention` a self-attention block,
  with ``onnx.helper`` and seeded weights.

Each returns the model as a container (:func:`p2pnode.exec.onnx_model.pack`), ready to submit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from p2pnode.errors import LocalError
from p2pnode.exec.onnx_model import pack

OPSET = 17


@dataclass(frozen=True)
class Dataset:
    model: bytes  # container
    x: np.ndarray  # rows to classify
    y: np.ndarray  # their true labels
    accuracy: float  # of the trained model on x, by scikit-learn itself


def digits(seed: int = 0) -> Dataset:
    """An MLP trained on 3/4 of scikit-learn's 8×8 digits; ``x``/``y`` are the held-out quarter."""
    try:
        from skl2onnx import to_onnx
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
        from sklearn.neural_network import MLPClassifier
    except ImportError as exc:
        raise LocalError("the digits model needs scikit-learn and skl2onnx: pip install 'p2pnode[demo]'") from exc
    data = load_digits()
    x = (data.data / 16.0).astype(np.float32)
    x_train, x_test, y_train, y_test = train_test_split(x, data.target, test_size=0.25, random_state=seed)
    clf = MLPClassifier(hidden_layer_sizes=(64,), max_iter=400, random_state=seed).fit(x_train, y_train)
    onx = to_onnx(clf, x_train[:1], options={id(clf): {"zipmap": False}}, target_opset={"": OPSET, "ai.onnx.ml": 3})
    return Dataset(pack(onx.SerializeToString()), x_test, y_test.astype(np.int64), float(clf.score(x_test, y_test)))


def _init(rng: np.random.Generator, name: str, shape: tuple[int, ...], scale: float) -> Any:
    from onnx import numpy_helper

    return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)


def _model(graph: Any) -> bytes:
    from onnx import checker, helper

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="p2pnode")
    model.ir_version = 8
    checker.check_model(model)
    return pack(model.SerializeToString())


def cnn(seed: int = 0, *, size: int = 28, channels: int = 16, classes: int = 10) -> bytes:
    """Images ``[rows, 1, size, size]`` → class probabilities ``[rows, classes]``."""
    from onnx import TensorProto, helper

    rng = np.random.default_rng(seed)
    c2 = 2 * channels
    inits = [_init(rng, "w1", (channels, 1, 3, 3), 1 / 3), _init(rng, "b1", (channels,), 0.01),
             _init(rng, "w2", (c2, channels, 3, 3), (1 / (9 * channels)) ** 0.5), _init(rng, "b2", (c2,), 0.01),
             _init(rng, "w3", (c2, classes), (1 / c2) ** 0.5), _init(rng, "b3", (classes,), 0.01)]
    nodes = [
        helper.make_node("Conv", ["image", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("GlobalAveragePool", ["r2"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Gemm", ["f", "w3", "b3"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
    ]
    graph = helper.make_graph(
        nodes, "cnn",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["rows", 1, size, size])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["rows", classes])], inits)
    return _model(graph)


def attention(seed: int = 0, *, tokens: int = 16, dim: int = 32) -> bytes:
    """One self-attention block with a residual: ``[rows, tokens, dim]`` → same shape."""
    from onnx import TensorProto, helper

    rng = np.random.default_rng(seed)
    s = (1 / dim) ** 0.5
    inits = [_init(rng, n, (dim, dim), s) for n in ("wq", "wk", "wv", "wo")]
    from onnx import numpy_helper

    inits.append(numpy_helper.from_array(np.array([s], dtype=np.float32), "scale"))
    nodes = [
        helper.make_node("MatMul", ["x", "wq"], ["q"]),
        helper.make_node("MatMul", ["x", "wk"], ["k"]),
        helper.make_node("MatMul", ["x", "wv"], ["v"]),
        helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 2, 1]),
        helper.make_node("MatMul", ["q", "kt"], ["qk"]),
        helper.make_node("Mul", ["qk", "scale"], ["scores"]),
        helper.make_node("Softmax", ["scores"], ["attn"], axis=-1),
        helper.make_node("MatMul", ["attn", "v"], ["ctx"]),
        helper.make_node("MatMul", ["ctx", "wo"], ["proj"]),
        helper.make_node("Add", ["x", "proj"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "attention",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["rows", tokens, dim])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["rows", tokens, dim])], inits)
    return _model(graph)


def images(rows: int, size: int = 28, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((rows, 1, size, size), dtype=np.float32)
