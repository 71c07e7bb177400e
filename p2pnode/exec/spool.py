"""Big arrays between the executor and its workers: through files in shared memory, not the pipe.

An array of ``SPOOL_MIN`` bytes or more is written once into a file in the executor's spool folder
(``/dev/shm`` where it exists: RAM, never a disk) and the worker maps it read-only, so the data is
not encoded, piped and decoded on the way in; a large output comes back the same way. Small arrays
keep travelling inline in the frame. The folder is private (0700), named after the executor's
process, emptied after each job, removed when the executor stops, and a folder left by a process
that no longer exists is removed by the next executor that starts.
"""

from __future__ import annotations

import mmap
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any

import numpy as np

SPOOL_MIN = 1 << 20
PREFIX = "p2pnode-spool-"


def _root() -> str:
    shm = "/dev/shm"
    return shm if os.path.isdir(shm) and os.access(shm, os.W_OK) else tempfile.gettempdir()


def clean_stale() -> None:
    """Remove spool folders whose executor process is gone (after a crash or SIGKILL)."""
    for path in Path(_root()).glob(PREFIX + "*"):
        try:
            pid = int(path.name[len(PREFIX):].split("-")[0])
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
        except (ValueError, PermissionError, OSError):
            continue


class Spool:
    def __init__(self) -> None:
        clean_stale()
        self.dir = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-", dir=_root()))
        os.chmod(self.dir, 0o700)

    def put(self, array: np.ndarray) -> str:
        path = self.dir / f"in-{uuid.uuid4().hex}.bin"
        with open(path, "wb") as f:
            f.write(np.ascontiguousarray(array).data.cast("B"))
        return str(path)

    def take(self, entry: dict[str, Any]) -> np.ndarray:
        """An output a worker left in the spool, read into memory; the file is removed."""
        path = Path(entry["file"])
        if path.parent != self.dir:
            raise ValueError("a spooled array outside this executor's spool")
        try:
            dtype = np.dtype(entry["dtype"])
            shape = tuple(int(s) for s in entry["shape"])
            if path.stat().st_size != int(np.prod(shape)) * dtype.itemsize:
                raise ValueError("spooled array does not match its shape")
            return np.fromfile(path, dtype=dtype).reshape(shape)
        finally:
            path.unlink(missing_ok=True)

    def discard(self, path: str) -> None:
        Path(path).unlink(missing_ok=True)

    def close(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


# the worker's side ---------------------------------------------------------------------------------

def load(entry: dict[str, Any]) -> np.ndarray:
    """A spooled input, mapped read-only (the mapping outlives the file's removal)."""
    dtype = np.dtype(entry["dtype"])
    shape = tuple(int(s) for s in entry["shape"])
    size = int(np.prod(shape)) * dtype.itemsize
    with open(entry["file"], "rb") as f:
        if size == 0:
            return np.empty(shape, dtype)
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    if len(mm) != size:
        raise ValueError("spooled input does not match its shape")
    return np.frombuffer(mm, dtype=dtype).reshape(shape)


def dump(folder: str, array: np.ndarray) -> dict[str, Any]:
    a = np.ascontiguousarray(array)
    path = Path(folder) / f"out-{uuid.uuid4().hex}.bin"
    with open(path, "wb") as f:
        f.write(a.data.cast("B") if a.size else b"")
    return {"dtype": a.dtype.str, "shape": list(a.shape), "file": str(path)}
