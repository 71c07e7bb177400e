"""A new ``bytes`` object filled in place: a fetched blob lands once, where it is kept.

A blob is received chunk by chunk into memory nobody else can see yet, and is then kept and handed
on as ``bytes`` (what every reader of it, libsodium's bindings included, takes). Receiving into a
``bytearray`` and copying it into ``bytes`` at the end costs the copy *and* a second round of fresh
memory, whose page faults cost more than the transfer itself (0.45–4 s per GB on the virtual
machine measured, where the bulk channel's records cost 0.3). So the blob is received straight into
the ``bytes`` object it will be, created without contents, as a C extension does with
``PyBytes_FromStringAndSize(NULL, n)``.

The promise that makes this safe: the object is written only through the view :func:`fresh_bytes`
returns, only before the object is given to anyone, and a half-written one is dropped, never
returned (:class:`~p2pnode.protocol.blob_fetch.BlobFetch` gives out its blob when every chunk is
checked). The view holds the object alive, so a thread still hashing a chunk never reads freed
memory. Elsewhere than CPython, a ``bytearray`` and one copy at the end.

Fresh memory still costs its page faults when first written. :func:`fault_in` takes them ahead of time, in
whatever thread calls it, so that a receiver can have them taken beside its socket reads instead of
inside them.
"""

from __future__ import annotations

import ctypes
import sys
from collections.abc import Callable

PAGE = 4096
SMALL = 4096  # smaller: a bytearray and a copy cost nothing worth a trick
_MADV_POPULATE_WRITE = 23  # Linux 5.14: fault pages in writable, without writing to them

_CPYTHON = sys.implementation.name == "cpython"
if _CPYTHON:
    _new = ctypes.pythonapi.PyBytes_FromStringAndSize
    _new.restype, _new.argtypes = ctypes.py_object, (ctypes.c_void_p, ctypes.c_ssize_t)
    _address = ctypes.pythonapi.PyBytes_AsString
    _address.restype, _address.argtypes = ctypes.c_void_p, (ctypes.py_object,)
_madvise: Callable[[int, int, int], int] | None = None
if sys.platform == "linux":
    try:
        _madvise = ctypes.CDLL(None, use_errno=True).madvise
        _madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    except (OSError, AttributeError):  # no libc to ask: the first writes take the faults
        _madvise = None


def fresh_bytes(n: int) -> tuple[memoryview, Callable[[], bytes]]:
    """(a writable view of ``n`` bytes, a function that returns them as ``bytes`` once written).

    The view's contents are undefined until written (fresh memory: nothing is zeroed first)."""
    if n <= 0:
        return memoryview(bytearray(0)), lambda: b""
    if not _CPYTHON or n < SMALL:  # (CPython shares its one-byte bytes objects: never write those)
        buf = bytearray(n)
        return memoryview(buf), lambda: bytes(buf)
    obj: bytes = _new(None, n)
    window = (ctypes.c_char * n).from_address(_address(obj))
    window.owner = obj  # type: ignore[attr-defined]  # the view keeps the object alive
    return memoryview(window).cast("B"), lambda: obj



def fault_in(view: memoryview) -> None:
    """Take the page faults of the memory under a writable ``view`` now (blocking, without the
    GIL: meant for a worker thread), leaving its contents as they are. Where the kernel cannot
    (not Linux, or older than 5.14), the first writes take them, as without this call."""
    if _madvise is None or view.readonly or not view.nbytes:
        return
    address = ctypes.addressof(ctypes.c_char.from_buffer(view))
    start = -(-address // PAGE) * PAGE  # whole pages inside the view only
    end = (address + view.nbytes) // PAGE * PAGE
    if end > start:
        _madvise(start, end - start, _MADV_POPULATE_WRITE)
