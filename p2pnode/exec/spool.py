"""Big arrays between the executor and its workers: through files in shared memory, not the pipe.

An array of ``SPOOL_MIN`` bytes or more is written once into a file in the executor's spool folder
(``/dev/shm`` where it exists: RAM, never a disk) and the worker maps it read-only, so the data is
not encoded, piped and decoded on the way in; a large output comes back the same way. An input
the node writes itself (a provider opening a fetched blob) can be written straight into a spool
file (:meth:`Spool.buffer`): the worker then maps the very pages the node wrote, with no copy.
Small arrays keep travelling inline in the frame. The folder is private (0700), named after the executor's
process, emptied after each job, removed when the executor stops, and a folder left by a process
that no longer exists is removed by the next executor that starts.
"""

from __future__ import annotations

import mmap
import os
import shutil
import tempfile
import uuid
import weakref
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
        self._files: dict[int, str] = {}  # id of a buffer's mapping -> its file

    def buffer(self, dtype: Any, shape: tuple[int, ...]) -> np.ndarray:
        """A writable array for a worker's input: of ``SPOOL_MIN`` bytes or more, in a new spool
        file, so that what is written there reaches the worker without a copy (:meth:`file_of`);
        the file goes when the array (and every view of it) is gone. Smaller: plain memory.
        Blocking (it allocates the pages): call it off the trio thread."""
        dtype = np.dtype(dtype)
        size = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if size < SPOOL_MIN:
            return np.empty(shape, dtype)
        path = self.dir / f"in-{uuid.uuid4().hex}.bin"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            # its pages allocated now: a full /dev/shm says so here, not with a SIGBUS when the
            # mapping is first written
            os.posix_fallocate(fd, 0, size)
            mm = mmap.mmap(fd, size)
        except OSError:  # no room in the spool: plain memory, sent the usual way
            path.unlink(missing_ok=True)
            return np.empty(shape, dtype)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        finally:
            os.close(fd)
        self._files[id(mm)] = str(path)
        weakref.finalize(mm, self._drop, id(mm), str(path))
        return np.frombuffer(mm, dtype=dtype).reshape(shape)

    def _drop(self, key: int, path: str) -> None:
        self._files.pop(key, None)
        Path(path).unlink(missing_ok=True)

    def file_of(self, array: np.ndarray) -> str | None:
        """The spool file that is the whole of ``array``'s memory (an array of :meth:`buffer`), or None."""
        base: Any = array
        while isinstance(base, np.ndarray):
            base = base.base
        if isinstance(base, memoryview):  # np.frombuffer's base: a view of the mapping
            base = base.obj
        if not isinstance(base, mmap.mmap) or id(base) not in self._files or base.closed:
            return None
        if not array.flags.c_contiguous or array.nbytes != len(base):
            return None
        return self._files[id(base)]

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
