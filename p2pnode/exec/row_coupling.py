"""Does a model couple its rows? A look at the graph before any row runs.

A model job's rows are cut into shards and chunks, and sampled rows are checked on their own: both
are sound only when each output row depends on its own input row alone. A model that takes a mean,
a sum, a softmax or a batch statistic over the row axis, contracts it in a product (``Xᵀ·X``),
sorts, gathers, slices or splits along it, answers differently for different cuts of the same
rows. :func:`coupling` names the first such operator it finds, or returns ``""``.

Method: ONNX shape inference with every graph input's first axis named ``ROWS``. A tensor computed
from the inputs (not from their shapes alone) carries the rows; where its inferred shape is known,
the rows must stay its first axis (anywhere else: coupled). Each operator applied to such a tensor
is judged by what it does along axis 0: reductions, normalisations over the batch (``Softmax``,
``LayerNormalization``, ``MeanVarianceNormalization``, ``BatchNormalization`` in training mode),
``ArgMax``/``TopK``/``CumSum``, gathers, slices, splits and concatenations along it, and products
that contract it (``MatMul``, ``Gemm``, ``Einsum``). The pass only reports what it can see; the
bodies of ``Loop``/``Scan``/``If`` and shapes inference cannot follow are left to the probe that
runs rows as one batch and one by one (:func:`p2pnode.exec.model_jobs.probe`).

Pure: ``onnx`` only, no runtime.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

ROWS = "__p2pnode_rows__"
_NO_ROWS = frozenset({"Shape", "Size"})  # what they give depends on how many rows, not on their values
_REDUCE = frozenset({"ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
                     "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare"})
# operator -> (attribute, default) of the one axis it works along
_AXIS_OPS: dict[str, tuple[str, int | None]] = {
    "ArgMax": ("axis", 0), "ArgMin": ("axis", 0), "TopK": ("axis", -1), "LpNormalization": ("axis", -1),
    "Gather": ("axis", 0), "GatherElements": ("axis", 0), "ScatterElements": ("axis", 0),
    "Split": ("axis", 0), "Concat": ("axis", None), "LayerNormalization": ("axis", -1),
    "Compress": ("axis", None), "Unique": ("axis", None), "Flatten": ("axis", 1),
}
_SOFTMAX = frozenset({"Softmax", "LogSoftmax", "Hardmax"})
_ALWAYS = {"NonZero": "indexes across every row", "GatherND": "indexes along the row axis",
           "ScatterND": "indexes along the row axis"}

Shape = tuple[int | str | None, ...] | None


def coupling(model: Any) -> str:
    """Why ``model`` (a checked ``ModelProto``) couples its rows, or ``""`` when nothing shows it."""
    shapes, consts, opset = _infer(model)
    if shapes is None:
        return ""
    init = {t.name for t in model.graph.initializer}
    carries = {v.name for v in model.graph.input if v.name not in init}  # tensors that carry the rows
    for node in model.graph.node:
        ins = [i for i in node.input if i in carries]
        if not ins or node.op_type in _NO_ROWS:
            continue
        carries.update(o for o in node.output if o)
        why = _judge(node, ins, shapes, consts, opset)
        if not why:
            for out in node.output:
                s = shapes.get(out)
                if s is not None and ROWS in s[1:]:
                    why = "moves the row axis away from the first"
                    break
        if why:
            return f"{node.op_type} {_label(node)}{why}"
    return ""


def _label(node: Any) -> str:
    return f"({node.name}) " if node.name else f"(-> {node.output[0]}) " if node.output else ""


def _infer(model: Any) -> tuple[dict[str, Shape] | None, dict[str, list[int]], int]:
    """Inferred shapes (dims: int, a name, or None), constant integer inputs, the default opset."""
    import onnx
    from onnx import numpy_helper, shape_inference

    m = onnx.ModelProto()
    m.CopyFrom(model)
    init = {t.name for t in m.graph.initializer}
    for v in m.graph.input:
        dims = v.type.tensor_type.shape.dim
        if v.name not in init and v.type.HasField("tensor_type") and len(dims):
            dims[0].Clear()
            dims[0].dim_param = ROWS
    try:
        m = shape_inference.infer_shapes(m, strict_mode=False, data_prop=True)
    except Exception:  # noqa: BLE001 - a graph inference cannot follow: the probe decides
        return None, {}, 0
    shapes: dict[str, Shape] = {}
    for v in [*m.graph.input, *m.graph.value_info, *m.graph.output]:
        if v.type.HasField("tensor_type") and v.type.tensor_type.HasField("shape"):
            shapes[v.name] = tuple(d.dim_value if d.HasField("dim_value") else d.dim_param or None
                                   for d in v.type.tensor_type.shape.dim)
    consts: dict[str, list[int]] = {}
    tensors = list(m.graph.initializer)
    tensors += [a.t for n in m.graph.node if n.op_type == "Constant" for a in n.attribute if a.name == "value"]
    names = [t.name for t in m.graph.initializer]
    names += [n.output[0] for n in m.graph.node if n.op_type == "Constant" for a in n.attribute if a.name == "value"]
    for name, t in zip(names, tensors, strict=True):
        if t.data_type in (onnx.TensorProto.INT64, onnx.TensorProto.INT32) and len(t.dims) <= 1:
            with contextlib.suppress(Exception):  # an odd constant: not one we need
                consts[name] = [int(x) for x in numpy_helper.to_array(t).reshape(-1)[:64]]
    opset = next((int(o.version) for o in m.opset_import if o.domain in ("", "ai.onnx")), 0)
    return shapes, consts, opset


def _attr(node: Any, name: str, default: Any = None) -> Any:
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _rank(shapes: dict[str, Shape], name: str) -> int | None:
    s = shapes.get(name)
    return len(s) if s is not None else None


def _rows_first(shapes: dict[str, Shape], name: str) -> bool:
    """The rows are (as far as we know) the first axis of ``name``."""
    s = shapes.get(name)
    return s is None or (len(s) > 0 and s[0] == ROWS)


def _hits_zero(axes: Sequence[int] | None, rank: int | None) -> bool:
    """Whether ``axes`` (possibly negative) include axis 0 (None: all axes)."""
    if axes is None:
        return True
    return any(a == 0 or (rank is not None and a + rank == 0) for a in axes)


def _judge(node: Any, ins: list[str], shapes: dict[str, Shape], consts: dict[str, list[int]], opset: int) -> str:
    op = node.op_type
    x = node.input[0] if node.input else ""
    rank = _rank(shapes, x)
    on_rows = x in ins and _rows_first(shapes, x)
    if op in _ALWAYS and x in ins:
        return _ALWAYS[op]
    if op in _REDUCE and on_rows:
        axes = _attr(node, "axes")
        if axes is None and len(node.input) > 1 and node.input[1]:
            axes = consts.get(node.input[1])
            if axes is None:
                return "reduces over axes computed at run time"
        if not axes:
            return "" if _attr(node, "noop_with_empty_axes", 0) else "reduces over every axis, the rows too"
        return "reduces over the row axis" if _hits_zero(list(axes), rank) else ""
    if op in _SOFTMAX and on_rows:  # before opset 13, 2-D at ``axis``: at 0, every row is one
        axis = _attr(node, "axis", -1 if opset >= 13 else 1)
        return "normalises over the row axis" if _hits_zero([axis], rank) else ""
    if op == "CumSum" and on_rows:
        axis = consts.get(node.input[1]) if len(node.input) > 1 else None
        return "runs along the row axis" if axis is None or _hits_zero(axis, rank) else ""
    if op == "Slice" and on_rows:
        axes = consts.get(node.input[3]) if len(node.input) > 3 and node.input[3] else None
        if axes is None and len(node.input) > 3 and node.input[3]:
            return "slices along axes computed at run time"
        return "slices along the row axis" if _hits_zero(axes, rank) else ""
    if op in _AXIS_OPS:
        attr, default = _AXIS_OPS[op]
        axis = _attr(node, attr, default)
        hit = [i for i in ins if _rows_first(shapes, i)] if op == "Concat" else ([x] if on_rows else [])
        if hit and (axis is None or _hits_zero([axis], _rank(shapes, hit[0]))):
            return "works along the row axis"
        return ""
    if op == "Transpose" and on_rows:
        perm = _attr(node, "perm")
        return "moves the row axis away from the first" if not perm or perm[0] != 0 else ""
    if op == "BatchNormalization" and on_rows:
        if opset >= 14:
            training = bool(_attr(node, "training_mode", 0))
        elif opset <= 6:
            training = not _attr(node, "is_test", 0)
        else:  # opsets 7-13: training mode is the one with the running statistics as outputs
            training = any(node.output[1:])
        return "normalises with the statistics of the batch (training mode)" if training else ""
    if op == "MeanVarianceNormalization" and on_rows:
        return "normalises over the row axis" if _hits_zero(_attr(node, "axes", [0, 2, 3]), rank) else ""
    return _products(node, ins, shapes)


def _products(node: Any, ins: list[str], shapes: dict[str, Shape]) -> str:
    """Products that sum over the rows: the row axis as the contracted dimension."""
    op = node.op_type
    if op == "MatMul" and len(node.input) >= 2:
        a, b = node.input[0], node.input[1]
        if a in ins and _rank(shapes, a) == 1:
            return "contracts the row axis"
        if b in ins and _rank(shapes, b) in (1, 2):
            return "contracts the row axis (the rows are its second operand)"
    if op == "Gemm" and len(node.input) >= 2:
        if node.input[0] in ins and _attr(node, "transA", 0):
            return "contracts the row axis (transA)"
        if node.input[1] in ins:
            return "contracts the row axis (the rows are its second operand)"
    if op == "Einsum":
        equation = _attr(node, "equation", b"")
        equation = equation.decode("ascii", "replace") if isinstance(equation, bytes) else str(equation)
        lhs, _, out = equation.replace(" ", "").partition("->")
        terms = lhs.split(",")
        for name, term in zip(node.input, terms, strict=False):
            if name in ins and term and not term.startswith("...") and not out.startswith(term[0]):
                return "sums or moves the row axis"
    return ""
