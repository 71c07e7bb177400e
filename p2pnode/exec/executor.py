"""The async executor: a trio front end over a pool of isolated worker processes.

Promises:

* **admission** -- a job starts only when its memory estimate fits: free GPU memory (NVML) for GPU
  backends, available RAM for NumPy, less what running jobs reserved. A job that could never fit
  fails at once with ``no_capacity``; others wait their turn;
* **concurrency and placement** -- ``slots`` jobs at a time on each GPU offered (or on the CPU
  without GPUs), at most ``max_jobs`` in all, one worker process each; a worker sees only its own
  GPU (``CUDA_VISIBLE_DEVICES``), and jobs go to the least busy, least recently used GPU;
* **isolation** -- kernels run in worker processes, never on the trio thread; an exception in a
  kernel is a typed :class:`~p2pnode.errors.ExecFailure`, a crashed worker too;
* **cancellation and timeouts really stop the work** -- the worker running it is killed (and a
  fresh one started for the next job), so a runaway kernel holds no CPU, GPU or memory after;
* **bounded memory for models** -- a model job on ONNX Runtime's CPU provider runs under an address
  space limit (``MODEL_MEMORY_FACTOR`` times its estimate, plus headroom), so a model that asks for
  more fails as ``oom`` in its worker instead of starving the machine;
* **a model crosses the pipe once per worker** -- large, reused inputs (``CACHED_INPUTS``) are sent
  to a worker once and named by content afterwards, for as long as the worker keeps them: each of
  its answers says which it holds, and one it no longer holds is sent again, never a failure;
* **big arrays do not cross the pipe at all** -- inputs and outputs of ``spool.SPOOL_MIN`` bytes or
  more go through files in shared memory (:mod:`p2pnode.exec.spool`), mapped by the worker.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import cbor2
import trio

from p2pnode.errors import ExecFailure, WorkloadError
from p2pnode.exec import frames, workloads
from p2pnode.exec.spool import SPOOL_MIN, Spool
from p2pnode.exec.worker import NOT_HELD
from p2pnode.exec.workloads import Output

if TYPE_CHECKING:
    import numpy as np

ProgressFn = Callable[[float], None]
CACHED_INPUTS = workloads.REUSED_INPUTS
MODEL_MEMORY_FACTOR = 4
MODEL_MEMORY_HEADROOM = 2 << 30  # thread stacks and allocator arenas of a loaded runtime
CPU_BACKENDS = frozenset({"numpy", "ort-cpu"})  # their memory is RAM, shared by every slot


RAM = "ram"


def _pool(backend: str, device: int | None) -> int | None | str:
    """Whose memory a job on ``backend`` uses: its device's, or the machine's RAM."""
    return RAM if backend in CPU_BACKENDS else device


class _NoDevice:
    """No device can take the job now."""


NO_DEVICE = _NoDevice()


@dataclass(frozen=True)
class ExecResult:
    output: Output
    seconds: float  # kernel time inside the worker
    wall_seconds: float  # including queueing and transfer
    backend: str
    device: int | None = None  # the GPU its worker saw (None: no GPU offered)

    @property
    def digest(self) -> bytes:
        return self.output.digest


class _Worker:
    def __init__(self, proc: trio.Process) -> None:
        self.proc = proc
        self._buf = bytearray()
        self.cached: set[str] = set()  # content keys of inputs this worker holds

    async def send(self, obj: Any) -> None:
        assert self.proc.stdin is not None
        await self.proc.stdin.send_all(frames.pack(obj))

    async def receive(self) -> Any:
        assert self.proc.stdout is not None
        while True:
            if len(self._buf) >= 4:
                size = int.from_bytes(self._buf[:4], "big")
                if size > frames.MAX_FRAME:
                    raise ExecFailure("worker sent an oversized frame", code="crashed")
                if len(self._buf) >= 4 + size:
                    body = bytes(self._buf[4:4 + size])
                    del self._buf[:4 + size]
                    return cbor2.loads(body)
            chunk = await self.proc.stdout.receive_some(1 << 20)
            if not chunk:
                await self.proc.wait()
                raise ExecFailure(f"worker process died ({_describe_exit(self.proc.returncode)})", code="crashed")
            self._buf += chunk

    def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()


def _describe_exit(code: int | None) -> str:
    if code is not None and code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exit code {code}"


class Executor:
    """``devices``: the GPUs offered (NVML indexes); each has ``slots`` job slots and its workers see
    only that GPU (``CUDA_VISIBLE_DEVICES``). Without devices there are ``slots`` CPU slots.
    ``max_jobs`` caps the jobs at once in all (0: slots times devices). ``gpu_memory(index)``: free
    memory of that GPU, or None when unknown. ``cpu_threads``: threads one job may use (0: all)."""

    def __init__(self, *, slots: int = 1, memory_limit: int | None = None,
                 gpu_memory: Callable[[int], int | None] | None = None, devices: tuple[int, ...] = (),
                 max_jobs: int = 0, cpu_threads: int = 0) -> None:
        if slots < 1:
            raise ValueError("slots must be at least 1")
        if len(set(devices)) != len(devices):
            raise ValueError("a device is named twice")
        self.devices: tuple[int | None, ...] = devices or (None,)
        self.slots_per_device = slots
        self.slots = min(max_jobs, slots * len(self.devices)) if max_jobs > 0 else slots * len(self.devices)
        self.cpu_threads = cpu_threads
        self._memory_limit = memory_limit
        self._gpu_memory = gpu_memory
        self._idle: dict[int | None, list[_Worker]] = {d: [] for d in self.devices}
        self._all: set[_Worker] = set()
        self.busy: dict[int | None, int] = {d: 0 for d in self.devices}  # jobs running on each device
        # bytes promised to running jobs: GPU memory per device, and RAM (shared by every slot)
        self._reserved: dict[int | None | str, int] = {d: 0 for d in self.devices} | {RAM: 0}
        self._last_used: dict[int | None, int] = {d: 0 for d in self.devices}
        self._placements = 0
        self._admission = trio.Condition()
        self.backends: tuple[str, ...] = ()
        self.running = 0
        self.completed = 0
        self.failed: dict[str, int] = {}
        self._spool: Spool | None = None

    async def __aenter__(self) -> Executor:
        self._spool = Spool()
        worker = await self._spawn(self.devices[0])
        await worker.send({"op": "hello"})
        self.backends = tuple((await worker.receive())["backends"])
        self._idle[self.devices[0]].append(worker)
        return self

    async def __aexit__(self, *exc: object) -> None:
        with trio.CancelScope(shield=True):
            for w in list(self._all):
                w.kill()
                with trio.move_on_after(5):
                    await w.proc.wait()
        self._all.clear()
        for idle in self._idle.values():
            idle.clear()
        if self._spool is not None:
            self._spool.close()

    async def calibrate(self, budget_s: float, use_gpu: bool = True) -> dict[str, float]:
        """The start-up speed measurement (:mod:`p2pnode.telemetry.calibrate`), run in a worker:
        where jobs run, with their GPU and thread limits, so the ad claims what a job gets."""
        device = self.devices[0]
        idle = self._idle[device]
        worker = idle.pop() if idle else await self._spawn(device)
        try:
            await worker.send({"op": "calibrate", "budget": float(budget_s), "gpu": bool(use_gpu)})
            speeds = (await worker.receive())["speeds"]
        except BaseException:
            self._discard(worker)
            raise
        idle.append(worker)
        return {str(k): float(v) for k, v in speeds.items()}

    @property
    def load(self) -> float:
        return self.running / self.slots

    def worker_env(self, device: int | None) -> dict[str, str]:
        """The environment of a worker for ``device``: only its GPU visible, threads capped."""
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        if device is not None:
            env["CUDA_VISIBLE_DEVICES"] = str(device)
        if self.cpu_threads:
            for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "P2PNODE_CPU_THREADS"):
                env[name] = str(self.cpu_threads)
        return env

    async def _spawn(self, device: int | None) -> _Worker:
        proc = await trio.lowlevel.open_process(
            [sys.executable, "-m", "p2pnode.exec.worker"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=self.worker_env(device),
        )
        worker = _Worker(proc)
        self._all.add(worker)
        return worker

    def _discard(self, worker: _Worker) -> None:
        worker.kill()
        self._all.discard(worker)

    def _capacity(self, backend: str, device: int | None = None) -> int:
        """Bytes a job on ``backend`` may use: GPU memory of ``device`` (the most free of all when
        None) for GPU backends, RAM for the others."""
        if self._memory_limit is not None:
            return self._memory_limit
        if backend not in CPU_BACKENDS and self._gpu_memory is not None:
            gpus = [d for d in self.devices if d is not None] if device is None else [device]
            frees = [f for f in (self._gpu_memory(d) for d in gpus) if f is not None]
            if frees:
                return max(frees)
        try:
            with open("/proc/meminfo") as f:
                for line in f:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024 * 8 // 10
        except OSError:
            pass
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2

    def choose_backend(self, requested: str | None, workload: str = "") -> str:
        from p2pnode.exec.backends import for_workload

        usable = for_workload(workload, self.backends) if workload else self.backends
        if not requested:
            if not usable:
                raise ExecFailure(f"no backend here runs {workload}", code="backend_unavailable")
            return usable[0]
        if requested not in usable:
            raise ExecFailure(f"backend {requested!r} is not available here for {workload or 'this job'} "
                              f"(have: {', '.join(usable)})", code="backend_unavailable")
        return requested

    async def run(self, workload: str, params: dict[str, Any], *, backend: str | None = None,
                  timeout: float | None = None, on_progress: ProgressFn | None = None,
                  inputs: dict[str, Any] | None = None) -> ExecResult:
        """Run one job; raise ``WorkloadError`` for bad input, ``ExecFailure`` for anything else."""
        wl = workloads.get(workload)
        checked = wl.check(params)
        arrays = workloads.check_inputs(wl, checked, inputs)
        wire_inputs: dict[str, Any] = {k: {"dtype": v.dtype.str, "shape": list(v.shape), "array": v}
                                       for k, v in arrays.items()}
        for k in CACHED_INPUTS & set(wire_inputs):
            wire_inputs[k]["key"] = hashlib.sha256(arrays[k].data.cast("B")).hexdigest()
        chosen = self.choose_backend(backend, workload)
        need = wl.memory(checked)
        if need > self._capacity(chosen):
            raise ExecFailure(f"job needs {need} bytes, more than this node has free", code="no_capacity")
        started = time.perf_counter()
        try:
            with trio.fail_after(timeout) if timeout else contextlib.nullcontext():
                device = await self._place(need, chosen)
                try:
                    limit = need * MODEL_MEMORY_FACTOR + MODEL_MEMORY_HEADROOM if chosen == "ort-cpu" else 0
                    return await self._execute(workload, checked, chosen, on_progress, started, wire_inputs,
                                               limit, device)
                finally:
                    with trio.CancelScope(shield=True):
                        await self._release(device, need, chosen)
        except trio.TooSlowError:
            self._count("timeout")
            raise ExecFailure(f"job exceeded its {timeout:g} s timeout", code="timeout") from None
        except trio.Cancelled:
            self._count("cancelled")
            raise

    def input_buffer(self, dtype: Any, shape: tuple[int, ...]) -> np.ndarray:
        """A writable array for an input of a job to come (:meth:`Spool.buffer`: one of
        ``SPOOL_MIN`` bytes or more is a file the worker maps as it is, no copy on the way in)."""
        if self._spool is None:
            import numpy as np  # noqa: F811 - at run time (the module imports it for types only)

            return np.empty(shape, dtype)
        return self._spool.buffer(dtype, shape)

    async def probe_model(self, blob: bytes, rows: dict[str, Any], spread: int, *, timeout: float) -> dict[str, Any]:
        """A requester's model tried on ``rows`` of its dataset in a worker (the answer of
        :func:`p2pnode.exec.model_jobs.probe`, as a dict), under the memory limit a provider's job of
        these rows gets and within ``timeout``: a model that loops or asks for too much memory fails
        here (``timeout``, ``oom``), its worker killed, never the node."""
        import numpy as np

        chosen = self.choose_backend("ort-cpu", "onnx")
        arrays = {"model": np.frombuffer(blob, dtype=np.uint8), **{f"in.{k}": np.asarray(v) for k, v in rows.items()}}
        inputs: dict[str, Any] = {k: {"dtype": v.dtype.str, "shape": list(v.shape), "array": v} for k, v in arrays.items()}
        inputs["model"]["key"] = hashlib.sha256(blob).hexdigest()
        need = 4 * len(blob) + 2 * sum(v.nbytes for k, v in arrays.items() if k != "model") + (64 << 20)
        try:
            with trio.fail_after(timeout):
                device = await self._place(need, chosen)
                try:
                    request = {"op": "probe", "spread": int(spread),
                               "mem_limit": need * MODEL_MEMORY_FACTOR + MODEL_MEMORY_HEADROOM}
                    frame = await self._ask(device, request, inputs, None)
                finally:
                    with trio.CancelScope(shield=True):
                        await self._release(device, need, chosen)
        except trio.TooSlowError:
            self._count("timeout")
            raise ExecFailure(f"the model ran past {timeout:g} s on a few rows", code="timeout") from None
        if not frame.get("ok"):
            code = str(frame.get("code", "kernel_error"))
            self._count(code)
            if code in ("bad_params", "bad_model"):
                raise WorkloadError(str(frame.get("error")), code=code)
            raise ExecFailure(str(frame.get("error", "the probe failed")), code=code)
        probe = frame.get("probe")
        if not isinstance(probe, dict):
            raise ExecFailure("the worker's probe answer is malformed", code="crashed")
        return probe

    def _pick(self, need: int, backend: str) -> int | None | _NoDevice:
        """A device with a free slot whose memory takes ``need`` now: the least busy, then the
        least recently used (jobs spread over the GPUs); ``NO_DEVICE`` when none."""
        if self.running >= self.slots:
            return NO_DEVICE
        for d in sorted(self.devices, key=lambda d: (self.busy[d], self._last_used[d])):
            reserved = self._reserved[_pool(backend, d)]
            if self.busy[d] < self.slots_per_device and not (reserved and reserved + need > self._capacity(backend, d)):
                return d
        return NO_DEVICE

    async def _place(self, need: int, backend: str) -> int | None:
        async with self._admission:
            while isinstance(device := self._pick(need, backend), _NoDevice):
                await self._admission.wait()
            self.running += 1
            self.busy[device] += 1
            self._placements += 1
            self._last_used[device] = self._placements
            self._reserved[_pool(backend, device)] += need
            return device

    async def _release(self, device: int | None, need: int, backend: str) -> None:
        async with self._admission:
            self.running -= 1
            self.busy[device] -= 1
            self._reserved[_pool(backend, device)] -= need
            self._admission.notify_all()

    async def _execute(self, workload: str, params: dict[str, Any], backend: str, on_progress: ProgressFn | None,
                       started: float, inputs: dict[str, Any], mem_limit: int = 0,
                       device: int | None = None) -> ExecResult:
        request = {"op": "run", "wl": workload, "params": params, "backend": backend, "mem_limit": mem_limit}
        frame = await self._ask(device, request, inputs, on_progress)
        if not frame.get("ok"):
            code = str(frame.get("code", "kernel_error"))
            self._count(code)
            if code in ("bad_params", "unknown_workload", "bad_model", "underpriced"):
                raise WorkloadError(str(frame.get("error")), code=code)
            raise ExecFailure(str(frame.get("error", "kernel failed")), code=code)
        wire = frame["output"]
        spooled_out = {k: v for k, v in wire.get("arrays", {}).items() if "file" in v}
        try:
            arrays = {k: self._spool.take(v) for k, v in spooled_out.items()}  # type: ignore[union-attr]
        except (OSError, ValueError) as exc:
            raise ExecFailure(f"worker left a bad output: {exc}", code="crashed") from exc
        out = Output.from_wire({"arrays": {k: v for k, v in wire.get("arrays", {}).items() if k not in spooled_out},
                                "extra": wire.get("extra", {})})
        self.completed += 1
        return ExecResult(Output({**out.arrays, **arrays}, out.extra), float(frame["seconds"]),
                          time.perf_counter() - started, backend, device)

    async def _ask(self, device: int | None, request: dict[str, Any], inputs: dict[str, Any],
                   on_progress: ProgressFn | None) -> dict[str, Any]:
        """Send ``request`` with ``inputs`` to an idle worker of ``device`` (or a new one) and return
        its final answer. Inputs the worker holds go by key only; the worker's answer says what it
        holds afterwards, and that is what is remembered. A worker that no longer holds one (it
        cannot happen while the two agree) gets the request again with the data: never a failure."""
        idle = self._idle[device]
        worker = idle.pop() if idle else await self._spawn(device)
        done = False
        try:
            for by_key in (True, False):
                frame = await self._exchange(worker, request, inputs, on_progress, by_key)
                if frame.get("code") != NOT_HELD:
                    break
            done = True
        except ExecFailure as exc:
            self._count(exc.code)
            raise
        finally:
            if done:
                idle.append(worker)
            else:  # cancelled, timed out or crashed mid-job: the work must stop now
                self._discard(worker)
        return frame

    async def _exchange(self, worker: _Worker, request: dict[str, Any], inputs: dict[str, Any],
                        on_progress: ProgressFn | None, by_key: bool) -> dict[str, Any]:
        spooled: list[str] = []
        try:
            sent = {}
            for k, v in inputs.items():
                entry = {kk: vv for kk, vv in v.items() if kk != "array"}
                array = v["array"]
                if by_key and v.get("key") in worker.cached:
                    pass  # the worker holds it
                elif self._spool is not None and (own := self._spool.file_of(array)) is not None:
                    entry["file"] = own  # written into the spool by the node itself: no copy, kept
                elif array.nbytes >= SPOOL_MIN and self._spool is not None:  # off the trio thread (MBs)
                    entry["file"] = await trio.to_thread.run_sync(self._spool.put, array)
                    spooled.append(entry["file"])
                else:
                    entry["data"] = array.tobytes()
                sent[k] = entry
            await worker.send({**request, "inputs": sent, "spool": str(self._spool.dir) if self._spool else ""})
            while True:
                frame = await worker.receive()
                if "progress" in frame:
                    if on_progress is not None:
                        on_progress(float(frame["progress"]))
                    continue
                break
        finally:
            for path in spooled:  # the worker mapped them: the mapping outlives the file
                self._spool.discard(path)  # type: ignore[union-attr]
        kept = frame.get("kept")
        worker.cached = {k for k in kept if isinstance(k, str)} if isinstance(kept, list) else set()
        return dict(frame)

    def _count(self, code: str) -> None:
        self.failed[code] = self.failed.get(code, 0) + 1
