"""Checking one result against its job (pure, NumPy): Freivalds for matmul, comparison by the
workload's own rule against an independent re-run otherwise."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from p2pnode.exec import workloads
from p2pnode.exec.onnx_workload import take_rows
from p2pnode.exec.workloads import Output
from p2pnode.verify import freivalds


def freivalds_check(params: Mapping[str, Any], output: Output, *, rounds: int, rng: np.random.Generator,
                    inputs: Mapping[str, np.ndarray] | None = None) -> tuple[bool, str]:
    a, b = workloads.matmul_inputs(params, inputs=inputs or None)
    c = output.arrays.get("c")
    if c is None or not freivalds.check(a, b, c, dtype=params["dtype"], rounds=rounds, rng=rng):
        return False, f"failed Freivalds' check ({rounds} rounds)"
    return True, f"verified (Freivalds, {rounds} rounds)"


def compare(workload: str, params: Mapping[str, Any], output: Output, reference: Output) -> tuple[bool, str]:
    """Does ``output`` agree with an independent ``reference`` run, by the workload's rule?"""
    wl = workloads.get(workload)
    try:
        same = wl.agree(params, output, reference)
    except (KeyError, ValueError):  # missing arrays, mismatched shapes: they do not agree
        same = False
    rule = wl.comparison(params)
    return (True, f"agrees with an independent run ({rule})") if same else \
        (False, f"disagrees with an independent run ({rule})")


class Comparison:
    """The node's outputs for the verdict machine (``protocol/verdict.py``'s ``Outputs``): arrays,
    compared by ``workload``'s rule, a row job's sliced to sampled rows."""

    def __init__(self, workload: str) -> None:
        self.workload = workload

    def same(self, params: dict[str, Any], a: Any, b: Any) -> tuple[bool, str]:
        return compare(self.workload, params, a, b)

    def rows(self, params: dict[str, Any], inputs: Any, output: Any,
             idx: Sequence[int]) -> tuple[dict[str, Any], Any, Any]:
        return take_rows(params, inputs or {}, output, idx)

    def teacher(self, params: dict[str, Any], inputs: Any, output: Any,
                idx: Sequence[int]) -> tuple[dict[str, Any], Any, Any]:
        from p2pnode.exec.generate_workload import teacher_work

        return teacher_work(params, inputs or {}, output, idx)
