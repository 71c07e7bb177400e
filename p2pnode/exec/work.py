"""What every workload is made of (pure): its :class:`Output`, the :class:`Workload` interface, and
the checks of its parameters. Below ``workloads.py`` and each workload module, which import it."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from p2pnode.errors import WorkloadError

Progress = Callable[[float], None]


@dataclass(frozen=True)
class Output:
    """A workload's result: named arrays plus a digest over their exact bytes."""

    arrays: dict[str, np.ndarray]
    extra: dict[str, Any]

    @property
    def digest(self) -> bytes:
        h = hashlib.sha256()
        for name in sorted(self.arrays):
            a = self.arrays[name]  # its own shape: ascontiguousarray makes a 0-d array 1-d
            h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
            h.update(np.ascontiguousarray(a).data)  # the bytes in place, not a copy
        return h.digest()

    def to_wire(self) -> dict[str, Any]:
        return {
            "arrays": {k: {"dtype": v.dtype.str, "shape": list(v.shape), "data": np.ascontiguousarray(v).tobytes()}
                       for k, v in self.arrays.items()},
            "extra": self.extra,
        }

    @classmethod
    def from_wire(cls, m: Mapping[str, Any]) -> Output:
        arrays = {}
        for k, v in m["arrays"].items():
            dtype = np.dtype(v["dtype"])
            if dtype.kind not in "iufb":
                raise WorkloadError(f"output array {k!r} has dtype {dtype}")
            shape = tuple(int(s) for s in v["shape"])
            if int(np.prod(shape)) * dtype.itemsize != len(v["data"]):
                raise WorkloadError(f"output array {k!r}: data does not match its shape")
            arrays[k] = np.frombuffer(v["data"], dtype=dtype).reshape(shape)
        return cls(arrays, dict(m.get("extra", {})))


class Workload(Protocol):
    name: str

    def check(self, params: Mapping[str, Any]) -> dict[str, Any]: ...
    def flops(self, p: Mapping[str, Any]) -> float: ...
    def memory(self, p: Mapping[str, Any]) -> int: ...
    def comparison(self, p: Mapping[str, Any]) -> str: ...
    def output_bytes(self, p: Mapping[str, Any]) -> int: ...
    def input_spec(self, p: Mapping[str, Any]) -> dict[str, tuple[tuple[int, ...], str]]: ...
    def run(self, p: Mapping[str, Any], ops: Any, progress: Progress,
            inputs: Mapping[str, np.ndarray] | None = None) -> Output: ...
    def agree(self, p: Mapping[str, Any], a: Output, b: Output) -> bool: ...


def int_param(params: Mapping[str, Any], key: str, lo: int, hi: int, default: int | None = None) -> int:
    value = params.get(key, default)
    if value is None:
        raise WorkloadError(f"missing parameter {key}")
    try:
        number = int(value)
    except (TypeError, ValueError, OverflowError):  # OverflowError: int(inf)
        raise WorkloadError(f"parameter {key}={value!r} is not an integer") from None
    if isinstance(value, bool) or (isinstance(value, float) and value != number) or not lo <= number <= hi:
        raise WorkloadError(f"parameter {key}={value!r} must be an integer in {lo}..{hi}")
    return number


def float_param(params: Mapping[str, Any], key: str, lo: float, hi: float, default: float) -> float:
    value = params.get(key, default)
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise WorkloadError(f"parameter {key}={value!r} is not a number") from None
    if isinstance(value, bool) or not lo <= number <= hi:  # also refuses nan
        raise WorkloadError(f"parameter {key}={value!r} must be in {lo}..{hi}")
    return number


def refuse_unknown(params: Mapping[str, Any], known: set[str] | frozenset[str]) -> None:
    extra = set(params) - known
    if extra:
        raise WorkloadError(f"unknown parameter(s): {', '.join(sorted(map(str, extra)))}")
