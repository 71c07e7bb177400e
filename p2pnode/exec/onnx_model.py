"""ONNX models as data, never code: the container they travel in, the checks that make a stranger's
model safe to load, what a model takes and gives, and what it costs.

**Container.** A model travels as one blob, the restricted-CBOR map
``{"format": "onnx/1", "model": bstr, "external": {name: bstr}}``: the ``ModelProto`` bytes and the
files its tensors' external data lives in (large models), by plain file name. :func:`pack_file`
builds it from a ``.onnx`` file and the data files beside it; :func:`load` opens it, checks it, and
returns the model with every tensor's data inline (nothing is ever read from a path).

**Checks** (:func:`check_model`), all before ONNX Runtime sees a byte, each a typed
:class:`ModelError` (code ``bad_model``):

* the container and the model are at most ``MAX_MODEL_BYTES``; the ``ModelProto`` parses and passes
  ``onnx.checker``;
* operators come from the standard domains only (``ai.onnx``, ``ai.onnx.ml``, or functions the
  model itself defines from them): no custom-op libraries, no contrib kernels;
* at most ``MAX_NODES`` nodes, counting every subgraph (``If``, ``Loop``, ``Scan``) and function;
* external data only by a plain name present in the container: an absolute path, a ``..``, a path
  separator or a missing file is refused;
* inputs and outputs are tensors (no sequences or maps), at most ``MAX_IO`` of each.

What the checks cannot bound (a graph that asks for a huge tensor, a loop that never ends) the
executor bounds: the worker runs under a memory limit and the job under a timeout, and either kills
the worker, never the node.
"""

from __future__ import annotations

import hashlib
import math
import os
import posixpath
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from p2pnode.errors import WorkloadError
from p2pnode.wire import codec

FORMAT = "onnx/1"
MAX_MODEL_BYTES = 512 << 20
MAX_NODES = 100_000
MAX_IO = 16
MAX_EXTERNAL_FILES = 256
STANDARD_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml"})


class ModelError(WorkloadError):
    """A model that is not one this node will load (malformed, non-standard, too large, unsafe)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code="bad_model")


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # NumPy dtype name
    shape: tuple[int | None, ...]  # None: dynamic


@dataclass(frozen=True)
class ModelInfo:
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    nodes: int
    opsets: dict[str, int]
    flops_per_row: float  # estimate (MACs of MatMul, Gemm and Conv, x2, plus elements touched)


# the container ----------------------------------------------------------------------------------

def pack(model: bytes, external: Mapping[str, bytes] | None = None) -> bytes:
    blob = codec.encode({"format": FORMAT, "model": model, "external": dict(external or {})})
    if len(blob) > MAX_MODEL_BYTES:
        raise ModelError(f"model of {len(blob)} bytes exceeds {MAX_MODEL_BYTES}")
    return blob


def pack_file(path: Path) -> bytes:
    """Pack a ``.onnx`` file and the external data files it names, read from beside it.

    The model file the user named may be a symbolic link: it is followed, and "beside it" means
    the folder of the file it resolves to. Its external data files must be regular files in that
    folder, named by plain names: a link (to ``~/.ssh/id_ed25519``, to the node's key) is refused,
    never read and packed. Types and sizes are checked before reading, and reads are bounded
    (:mod:`p2pnode.local_files`): the whole container at most ``MAX_MODEL_BYTES``."""
    from p2pnode.local_files import folder, read_regular

    real = os.path.realpath(path)
    where, name = os.path.split(real)
    with folder(where or ".", what=f"the folder of model {path}") as dir_fd:
        raw = read_regular(name, what="model", limit=MAX_MODEL_BYTES, dir_fd=dir_fd, follow=False)
        model = _parse(raw)
        external: dict[str, bytes] = {}
        total = len(raw)
        for tensor in _tensors(model):
            if _is_external(tensor):
                location = _safe_location(_external_info(tensor).get("location", ""))
                if location not in external:
                    external[location] = read_regular(location, what=f"external data of {path}:", dir_fd=dir_fd,
                                                      limit=max(0, MAX_MODEL_BYTES - total), follow=False)
                    total += len(external[location])
    return pack(raw, external)


def unpack(blob: bytes) -> tuple[bytes, dict[str, bytes]]:
    try:
        f = codec.Fields(codec.decode(blob, max_size=MAX_MODEL_BYTES + 4096, max_depth=3), "model")
        if f.text("format", max_len=16) != FORMAT:
            raise ModelError("not an onnx/1 model container")
        model = f.blob("model", max_len=MAX_MODEL_BYTES)
        ext = f.require_sub("external")
        external = {}
        for name, data in ext.items():
            if not isinstance(name, str) or not isinstance(data, bytes):
                raise ModelError("external data must map names to bytes")
            external[name] = data
    except ModelError:
        raise
    except Exception as exc:  # CodecError and friends: it is simply not a container
        raise ModelError(f"not a model container: {exc}") from exc
    if len(external) > MAX_EXTERNAL_FILES:
        raise ModelError(f"more than {MAX_EXTERNAL_FILES} external data files")
    return model, external


def model_id(blob: bytes) -> str:
    return hashlib.sha256(blob).hexdigest()


# checking ---------------------------------------------------------------------------------------

def load(blob: bytes) -> Any:
    """The checked ``ModelProto`` of a container, all tensor data inline."""
    raw, external = unpack(blob)
    model = _parse(raw)
    _inline_external(model, external)
    check_model(model)
    return model


def check_model(model: Any) -> ModelInfo:
    import onnx

    try:
        onnx.checker.check_model(model)
    except Exception as exc:  # onnx.checker.ValidationError and protobuf errors
        raise ModelError(f"not a valid ONNX model: {str(exc).splitlines()[0][:200]}") from exc
    local = {f.domain for f in model.functions}
    allowed = STANDARD_DOMAINS | local
    for opset in model.opset_import:
        if opset.domain not in allowed:
            raise ModelError(f"operator domain {opset.domain!r} is not a standard one (custom operators are code)")
    nodes = 0
    for node in _nodes(model):
        nodes += 1
        if node.domain not in allowed:
            raise ModelError(f"operator {node.domain}.{node.op_type} is not in a standard domain")
        if nodes > MAX_NODES:
            raise ModelError(f"more than {MAX_NODES} nodes")
    for fn in model.functions:
        for node in fn.node:
            if node.domain not in allowed:
                raise ModelError(f"function {fn.name} uses {node.domain}.{node.op_type}")
    for tensor in _tensors(model):
        if _is_external(tensor):
            raise ModelError("external data must be packed into the model container")
    return describe(model, nodes)


def describe(model: Any, nodes: int | None = None) -> ModelInfo:
    init = {t.name for t in model.graph.initializer}
    inputs = tuple(_spec(v) for v in model.graph.input if v.name not in init)
    outputs = tuple(_spec(v) for v in model.graph.output)
    if not inputs or not outputs:
        raise ModelError("a model needs at least one input and one output")
    if len(inputs) > MAX_IO or len(outputs) > MAX_IO:
        raise ModelError(f"at most {MAX_IO} inputs and {MAX_IO} outputs")
    opsets = {o.domain or "ai.onnx": int(o.version) for o in model.opset_import}
    return ModelInfo(inputs, outputs, nodes if nodes is not None else sum(1 for _ in _nodes(model)), opsets,
                     _flops_per_row(model, inputs))


def _spec(value: Any) -> TensorSpec:
    from onnx import helper

    t = value.type
    if t.WhichOneof("value") != "tensor_type":
        raise ModelError(f"{value.name}: only tensor inputs and outputs are supported (got {t.WhichOneof('value')})")
    try:
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(t.tensor_type.elem_type)).name
    except Exception as exc:  # noqa: BLE001 - an element type NumPy has no name for
        raise ModelError(f"{value.name}: unsupported element type {t.tensor_type.elem_type}") from exc
    shape = tuple(d.dim_value if d.HasField("dim_value") else None for d in t.tensor_type.shape.dim)
    return TensorSpec(value.name, dtype, shape)


def _parse(raw: bytes) -> Any:
    import onnx

    try:
        return onnx.load_model_from_string(raw)
    except Exception as exc:  # DecodeError: garbage
        raise ModelError(f"not an ONNX model: {type(exc).__name__}") from exc


def _graphs(graph: Any) -> Iterator[Any]:
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("g"):
                yield from _graphs(attr.g)
            for g in attr.graphs:
                yield from _graphs(g)


def _nodes(model: Any) -> Iterator[Any]:
    for g in _graphs(model.graph):
        yield from g.node
    for fn in model.functions:
        yield from fn.node


def _tensors(model: Any) -> Iterator[Any]:
    for g in _graphs(model.graph):
        yield from g.initializer
        for sp in g.sparse_initializer:
            yield sp.values
            yield sp.indices
        for node in g.node:
            for attr in node.attribute:
                if attr.HasField("t"):
                    yield attr.t
                yield from attr.tensors


def _is_external(tensor: Any) -> bool:
    from onnx import TensorProto

    return bool(tensor.HasField("data_location") and tensor.data_location == TensorProto.EXTERNAL)


def _external_info(tensor: Any) -> dict[str, str]:
    return {e.key: e.value for e in tensor.external_data}


def _safe_location(location: str) -> str:
    """A plain file name, or ``ModelError``: no absolute path, no ``..``, no directory."""
    if (not location or location.startswith(("/", "\\")) or "\\" in location or "/" in location
            or location in (".", "..") or posixpath.isabs(location) or ":" in location or "\x00" in location):
        raise ModelError(f"external data location {location!r} is not a plain file name in the container")
    return location


def _inline_external(model: Any, external: Mapping[str, bytes]) -> None:
    from onnx import TensorProto

    for tensor in _tensors(model):
        if not _is_external(tensor):
            continue
        info = _external_info(tensor)
        name = _safe_location(info.get("location", ""))
        if name not in external:
            raise ModelError(f"external data {name!r} is not in the container")
        data = external[name]
        try:
            offset = int(info.get("offset", 0))
            length = int(info["length"]) if "length" in info else len(data) - offset
        except ValueError as exc:
            raise ModelError(f"external data {name!r}: bad offset or length") from exc
        if offset < 0 or length < 0 or offset + length > len(data):
            raise ModelError(f"external data {name!r}: offset and length outside the file")
        tensor.raw_data = data[offset:offset + length]
        del tensor.external_data[:]
        tensor.data_location = TensorProto.DEFAULT


# cost ------------------------------------------------------------------------------------------

def _flops_per_row(model: Any, inputs: tuple[TensorSpec, ...]) -> float:
    """FLOPs per input row: shape inference with one row, then 2 x MACs of MatMul, Gemm and Conv,
    and the output elements of every other node (a floor for elementwise work); tree ensembles count
    their nodes. An estimate for pricing, not a promise."""
    import onnx
    from onnx import shape_inference

    m = onnx.ModelProto()
    m.CopyFrom(model)
    for v in m.graph.input:
        dims = v.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].dim_value = 1
    try:
        m = shape_inference.infer_shapes(m, data_prop=True)
    except Exception:  # noqa: BLE001 - a model shape inference cannot follow: count what we can
        pass
    shapes: dict[str, tuple[int, ...]] = {}
    for v in list(m.graph.input) + list(m.graph.value_info) + list(m.graph.output):
        if v.type.WhichOneof("value") == "tensor_type":
            dims = v.type.tensor_type.shape.dim
            if all(d.HasField("dim_value") for d in dims):
                shapes[v.name] = tuple(int(d.dim_value) for d in dims)
    for t in m.graph.initializer:
        shapes[t.name] = tuple(int(d) for d in t.dims)
    total = 0.0
    for node in m.graph.node:
        outs = [shapes.get(o) for o in node.output]
        out_elems = sum(math.prod(s) for s in outs if s is not None)
        op = node.op_type
        ins = [shapes.get(i) for i in node.input]
        if op in ("MatMul", "Gemm") and len(ins) >= 2 and ins[0] and ins[1]:
            k = ins[0][-1] if op == "MatMul" else max(ins[0])
            total += 2.0 * out_elems * k
        elif op == "Conv" and len(ins) >= 2 and ins[1]:
            w = ins[1]
            total += 2.0 * out_elems * math.prod(w[1:])
        elif op.startswith("TreeEnsemble"):
            total += sum(len(a.ints) for a in node.attribute if a.name == "nodes_nodeids") or 1.0
        else:
            total += out_elems
    return max(total, 1.0)
