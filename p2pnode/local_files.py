"""Files that a user, or a control request, names: checked before a byte is read.

Every such file (a model, its external data, a dataset, a job's input arrays) is opened once, and
the open file is checked with ``fstat`` before anything is read from it: it must be a **regular
file** (not ``/dev/zero``, a FIFO, a socket or a directory) of at most the limit its use allows.
Reads are bounded by that limit even if the file grows meanwhile. Files that must stay inside a
folder (a model's external data) are opened relative to that folder's descriptor without following
a symbolic link (``O_NOFOLLOW``), so a link to ``~/.ssh/id_ed25519`` beside a model is refused, not
read. Output paths are checked before a job starts: the folder exists, and an existing file there is
a regular one.

Every refusal is a one-line :class:`~p2pnode.errors.FileRefused`.
"""

from __future__ import annotations

import errno
import os
import stat
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import BinaryIO

import numpy as np

from p2pnode.errors import FileRefused


def kind_of(mode: int) -> str:
    """What a file of ``mode`` is, in words."""
    for name, test in (("a directory", stat.S_ISDIR), ("a FIFO", stat.S_ISFIFO), ("a socket", stat.S_ISSOCK),
                       ("a character device", stat.S_ISCHR), ("a block device", stat.S_ISBLK),
                       ("a symbolic link", stat.S_ISLNK), ("a regular file", stat.S_ISREG)):
        if test(mode):
            return name
    return "not a regular file"

MAX_DATASET_BYTES = 64 << 30  # a dataset (.npy, memory-mapped; or .npz, loaded)
MAX_NPZ_ARRAYS = 64


def _size(n: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            return f"{n / (1 << shift):.1f} {unit}"
    return f"{n} bytes"


def open_regular(path: str | os.PathLike[str], *, what: str, limit: int, dir_fd: int | None = None,
                 follow: bool = True) -> tuple[int, int]:
    """(descriptor, size) of ``path``, a regular file of at most ``limit`` bytes. ``follow=False``:
    a symbolic link is refused. ``dir_fd``: ``path`` is relative to that folder. Opening never
    blocks (a FIFO without a writer is refused, not waited on)."""
    flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | (0 if follow else os.O_NOFOLLOW)
    try:
        fd = os.open(path, flags, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno == errno.ELOOP and not follow:
            raise FileRefused(f"{what} {os.fspath(path)} is a symbolic link: only a regular file is read "
                              "(copy the file itself there)") from None
        if exc.errno == errno.ENOENT:
            raise FileRefused(f"{what} {os.fspath(path)}: no such file") from None
        raise FileRefused(f"{what} {os.fspath(path)}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise FileRefused(f"{what} {os.fspath(path)} is {kind_of(st.st_mode)}, not a regular file")
        if st.st_size > limit:
            raise FileRefused(f"{what} {os.fspath(path)} is {_size(st.st_size)}, over the limit of {_size(limit)}")
    except BaseException:
        os.close(fd)
        raise
    return fd, st.st_size


@contextmanager
def opened(path: str | os.PathLike[str], *, what: str, limit: int, dir_fd: int | None = None,
           follow: bool = True) -> Iterator[tuple[BinaryIO, int]]:
    """:func:`open_regular` as a binary file object, closed after the block."""
    fd, size = open_regular(path, what=what, limit=limit, dir_fd=dir_fd, follow=follow)
    with os.fdopen(fd, "rb") as f:
        yield f, size


def read_regular(path: str | os.PathLike[str], *, what: str, limit: int, dir_fd: int | None = None,
                 follow: bool = True) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes (refused, not cut, if it grew)."""
    with opened(path, what=what, limit=limit, dir_fd=dir_fd, follow=follow) as (f, _):
        data = f.read(limit + 1)
    if len(data) > limit:
        raise FileRefused(f"{what} {os.fspath(path)} grew past the limit of {_size(limit)} while being read")
    return data


@contextmanager
def folder(path: str | os.PathLike[str], *, what: str) -> Iterator[int]:
    """A descriptor of the folder ``path`` (links in ``path`` itself are followed), for opening
    files inside it with ``dir_fd``."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise FileRefused(f"{what} {os.fspath(path)}: {exc.strerror}") from None
    try:
        yield fd
    finally:
        os.close(fd)


def load_arrays(path: str, *, what: str, limit: int = MAX_DATASET_BYTES) -> dict[str, np.ndarray]:
    """A ``.npz`` (named arrays, loaded) or ``.npy`` (one array, named ``""``, memory-mapped); no
    pickles, no object arrays. The file, and for a ``.npz`` every array's declared size, are checked
    against ``limit`` before any array is read."""
    with opened(path, what=what, limit=limit) as (f, size):
        try:
            if path.endswith(".npz"):
                return _load_npz(f, path, what=what, limit=limit)
            return {"": _map_npy(f, size)}
        except FileRefused:
            raise
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
            raise FileRefused(f"{what} {path}: not a readable {'.npz' if path.endswith('.npz') else '.npy'} "
                              f"file ({str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__})") from None


def _load_npz(f: BinaryIO, path: str, *, what: str, limit: int) -> dict[str, np.ndarray]:
    with zipfile.ZipFile(f) as z:
        infos = z.infolist()
        if len(infos) > MAX_NPZ_ARRAYS:
            raise FileRefused(f"{what} {path} holds {len(infos)} arrays, over {MAX_NPZ_ARRAYS}")
        declared = sum(i.file_size for i in infos)
        if declared > limit:  # compressed members: what they unpack to is what counts
            raise FileRefused(f"{what} {path} unpacks to {_size(declared)}, over the limit of {_size(limit)}")
    f.seek(0)
    with np.load(f, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def _map_npy(f: BinaryIO, size: int) -> np.ndarray:
    """The array of an open ``.npy`` file, memory-mapped read-only after its header is checked."""
    from numpy.lib import format as npy

    version = npy.read_magic(f)
    if version == (1, 0):
        shape, fortran, dtype = npy.read_array_header_1_0(f)
    elif version == (2, 0):
        shape, fortran, dtype = npy.read_array_header_2_0(f)
    else:
        raise ValueError(f".npy format version {version} is not supported")
    if dtype.hasobject:
        raise FileRefused("it holds Python objects (a pickle), which this node never loads; save a numeric array")
    if dtype.kind not in "biuf":
        raise ValueError(f"arrays of {dtype} are not supported (numbers and booleans only)")
    offset = f.tell()
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if offset + nbytes > size:
        raise ValueError(f"the file is {size} bytes, its header promises {offset + nbytes}")
    if nbytes == 0 or not shape:
        f.seek(offset)
        data = f.read(nbytes)
        return np.frombuffer(data, dtype=dtype).reshape(shape, order="F" if fortran else "C").copy()
    return np.memmap(f, dtype=dtype, mode="r", offset=offset, shape=shape, order="F" if fortran else "C")


def check_output(path: str, *, what: str = "output") -> None:
    """An output path can be written: its folder exists, and a file already there is a regular
    one (never a device or a FIFO, which would block or swallow the result)."""
    parent = os.path.dirname(os.path.abspath(path)) or "/"
    try:
        st = os.stat(parent)
    except OSError as exc:
        raise FileRefused(f"{what} {path}: its folder {parent}: {exc.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise FileRefused(f"{what} {path}: {parent} is not a folder")
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise FileRefused(f"{what} {path}: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise FileRefused(f"{what} {path} exists and is not a regular file")
