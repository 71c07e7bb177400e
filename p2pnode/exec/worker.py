"""A worker process: runs one job at a time for the executor, isolated from the node.

``python -m p2pnode.exec.worker`` reads request frames on stdin and writes progress and result
frames on stdout (:mod:`p2pnode.exec.frames`). A kernel that raises becomes a typed failure frame;
one that crashes the process (a driver fault, the OOM killer) is seen by the executor as a dead
worker. Either way the node goes on.

Requests: ``{"op": "calibrate", "budget": S, "gpu": bool}`` -> ``{"speeds": {name: GFLOP/s}}``;
``{"op": "hello"}`` -> ``{"backends": [...], "pid": PID, "gpu": the visible GPU or None,
"threads": the CPU thread cap or 0}``;
``{"op": "run", "wl": NAME, "params": {...}, "backend": NAME, "inputs": {...}, "mem_limit": BYTES}``
-> zero or more ``{"progress": fraction}`` then ``{"ok": true, "output": ..., "seconds": s}`` or
``{"ok": false, "code": CODE, "error": TEXT}``; ``{"op": "probe", "inputs": {...}, "spread": N,
"mem_limit": BYTES}`` -> ``{"ok": true, "probe": ...}`` (:func:`p2pnode.exec.model_jobs.probe`: a
requester's model tried on a few of its rows, here and never in the node). An input that carries a ``key`` is kept by that key
(``KEPT_INPUTS`` of them, the least recently used dropped first); the executor then sends the key
without the data. Every answer to a request with inputs names the keys the worker holds after it
(``"kept": [key, ...]``), so the executor's record is the worker's own; an input sent by key that
is no longer held is answered ``{"ok": false, "code": "not_held"}`` (the executor sends it again).
With ``mem_limit`` the job runs under that much more address space than the worker already uses.
"""

from __future__ import annotations

import signal

if __name__ == "__main__":
    # A Ctrl-C at a terminal reaches the node's whole process group, its workers too. Stopping
    # them is the node's business (it kills them as it shuts down), so a worker ignores SIGINT from
    # before its imports on: no KeyboardInterrupt traceback of its own in the node's log.
    signal.signal(signal.SIGINT, signal.SIG_IGN)

import contextlib
import os
import resource
import sys
import time
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any, BinaryIO

import numpy as np

from p2pnode.errors import WorkloadError
from p2pnode.exec import backends, frames, spool, workloads

KEPT_INPUTS = 4
NOT_HELD = "not_held"  # an input sent by key that this worker no longer holds


def _failure_code(exc: BaseException) -> str:
    if isinstance(exc, MemoryError):
        return "oom"
    name = type(exc).__name__
    text = str(exc)
    if name == "OutOfMemoryError" or "out of memory" in text.lower() or "failed to allocate" in text.lower() \
            or "bad_alloc" in text.lower():
        return "oom"
    if isinstance(exc, WorkloadError):
        return exc.code
    return "kernel_error"


def _throttled(send: Any) -> Any:
    """Progress at most ten times a second (and always the final 1.0)."""
    last = 0.0

    def progress(fraction: float) -> None:
        nonlocal last
        now = time.monotonic()
        if now - last >= 0.1 or fraction >= 1.0:
            last = now
            send({"progress": float(fraction)})

    return progress


def _vm_size() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


@contextlib.contextmanager
def _memory_limit(extra: int) -> Iterator[None]:
    """Cap the address space at what is in use now plus ``extra`` for the block (0: no cap)."""
    if extra <= 0:
        yield
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    cap = _vm_size() + extra
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def _inputs(wire: dict[str, Any], kept: OrderedDict[str, Any]) -> dict[str, Any]:
    """Input arrays: inline, mapped from the spool, or kept from an earlier job by content key."""
    out = {}
    for name, v in wire.items():
        key = v.get("key")
        if "file" in v:
            array = spool.load(v)
        elif "data" in v:
            array = workloads.Output.from_wire({"arrays": {name: v}}).arrays[name]
        elif key in kept:
            array = kept[key]
            kept.move_to_end(key)
        else:
            raise WorkloadError(f"input {name}: not held here any more", code=NOT_HELD)
        if key and key not in kept:
            kept[key] = np.array(array)  # a copy of our own: the spool file goes away
            while len(kept) > KEPT_INPUTS:
                kept.popitem(last=False)
        out[name] = array
    return out


def _output_wire(output: Any, folder: str) -> dict[str, Any]:
    """The output for the frame: big arrays left in the spool, small ones inline."""
    arrays: dict[str, Any] = {}
    for k, a in output.arrays.items():
        if folder and a.nbytes >= spool.SPOOL_MIN:
            arrays[k] = spool.dump(folder, a)
        else:
            arrays[k] = {"dtype": a.dtype.str, "shape": list(a.shape), "data": np.ascontiguousarray(a).tobytes()}
    return {"arrays": arrays, "extra": output.extra}


def serve(inp: BinaryIO, out: BinaryIO) -> None:
    ops_cache: dict[str, Any] = {}
    kept: OrderedDict[str, Any] = OrderedDict()

    def send(obj: Any) -> None:
        out.write(frames.pack(obj))
        out.flush()

    while True:
        request = frames.read_blocking(inp)
        if request is None:
            return
        if request.get("op") == "calibrate":
            from p2pnode.telemetry.calibrate import calibrate

            send({"speeds": calibrate(float(request.get("budget", 0.3)), use_gpu=bool(request.get("gpu", True)))})
            continue
        if request.get("op") == "hello":
            send({"backends": list(backends.available()), "pid": os.getpid(),
                  "gpu": os.environ.get("CUDA_VISIBLE_DEVICES"), "threads": backends.cpu_threads()})
            continue
        work = _probe if request.get("op") == "probe" else _run
        try:
            send({"ok": True, **work(request, kept, ops_cache, send), "kept": list(kept)})
        except Exception as exc:  # every kernel failure is a typed result, never a dead node
            first = (str(exc).strip().splitlines() or [""])[0]
            send({"ok": False, "code": _failure_code(exc), "error": f"{type(exc).__name__}: {first}"[:500],
                  "kept": list(kept)})


def _ops(name: str, cache: dict[str, Any]) -> Any:
    if name not in cache:
        cache[name] = backends.ops(name)
    return cache[name]


def _run(request: dict[str, Any], kept: OrderedDict[str, Any], ops_cache: dict[str, Any], send: Any) -> dict[str, Any]:
    """A job: its output (and the kernel's seconds)."""
    started = time.perf_counter()
    workload = workloads.get(request["wl"])
    params = workload.check(request["params"])
    ops = _ops(request["backend"], ops_cache)
    inputs = _inputs(request.get("inputs") or {}, kept)
    with _memory_limit(int(request.get("mem_limit") or 0)):
        output = workload.run(params, ops, _throttled(send), workloads.check_inputs(workload, params, inputs) or None)
    seconds = time.perf_counter() - started
    return {"output": _output_wire(output, str(request.get("spool") or "")), "seconds": seconds}


def _probe(request: dict[str, Any], kept: OrderedDict[str, Any], ops_cache: dict[str, Any], send: Any) -> dict[str, Any]:
    """A requester's model tried on a few rows of its dataset (:func:`model_jobs.probe`): input
    ``model`` (the container) and ``in.<name>`` (the rows, the first ``spread`` of them spread over
    the dataset)."""
    from p2pnode.exec import model_jobs

    inputs = _inputs(request.get("inputs") or {}, kept)
    model = inputs.pop("model", None)
    if model is None:
        raise WorkloadError("a probe needs the model")
    rows = {k[3:]: v for k, v in inputs.items() if k.startswith("in.")}
    with _memory_limit(int(request.get("mem_limit") or 0)):
        result = model_jobs.probe(np.ascontiguousarray(model).tobytes(), rows, int(request.get("spread") or 1),
                                  _ops("ort-cpu", ops_cache))
    return {"probe": result.to_wire()}


def main() -> None:
    out = sys.stdout.buffer
    sys.stdout = sys.stderr  # stray prints from libraries must not corrupt the frame stream
    serve(sys.stdin.buffer, out)


if __name__ == "__main__":
    main()
