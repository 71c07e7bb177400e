"""The node's own files, read safely: regular files only, and never more than a bound.

A setting or a data-dir entry can name anything: a directory, a FIFO (whose ``open`` blocks until
a writer comes), a device (``/dev/zero`` never ends), a file of many gigabytes. What the node reads
at start is checked first and read within a bound, so each such mistake is one clear error, never
a hang, a memory blow-up or a traceback.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from p2pnode.errors import FileRefused, LocalError
from p2pnode.local_files import kind_of, read_regular

# What each entry of a data dir must be when it is there (absent is always fine: it is created).
DATA_DIR_ENTRIES: dict[str, str] = {
    "identity.key": "file",
    "ledger.sqlite": "file",
    "ledger.sqlite-wal": "file",
    "ledger.sqlite-shm": "file",
    "ledger.sqlite-journal": "file",
    "config.toml": "file",
    "ui.token": "file",
    "control.sock": "socket",
    "maps": "directory",
}
_KINDS = {"file": stat.S_ISREG, "socket": stat.S_ISSOCK, "directory": stat.S_ISDIR}


def read_small_file(path: Path | str, *, limit: int, what: str, error: type[LocalError] = LocalError,
                    follow_symlinks: bool = True) -> bytes:
    """The bytes of the regular file ``path``, at most ``limit`` of them; anything else (missing,
    not a regular file, unreadable, larger) is ``error`` with one line naming ``what``
    (:func:`p2pnode.local_files.read_regular`: a FIFO or a device is never waited on)."""
    try:
        return read_regular(path, what=what, limit=limit, follow=follow_symlinks)
    except FileRefused as exc:
        raise error(str(exc)) from None


def check_data_dir(data_dir: Path) -> None:
    """Refuse a data dir whose known entries are of the wrong kind (a directory named
    ``identity.key``, a FIFO named ``ledger.sqlite``, a regular file named ``control.sock``), with
    one line that says what to do. Nothing is opened; a symbolic link is judged by its target (the
    key file refuses links itself)."""
    if not data_dir.exists():
        return
    if not data_dir.is_dir():
        raise LocalError(f"data dir {data_dir} is {_kind_at(data_dir)}, not a directory")
    for name, want in DATA_DIR_ENTRIES.items():
        path = data_dir / name
        try:
            mode = os.stat(path).st_mode
        except FileNotFoundError:  # absent, or a dangling link: made when needed
            continue
        except OSError as exc:
            raise LocalError(f"{path}: cannot look at it: {exc.strerror}") from None
        if not _KINDS[want](mode):
            raise LocalError(f"{path} is {kind_of(mode)} where the node keeps a {want}: move it out of the "
                             "data dir")


def _kind_at(path: Path) -> str:
    try:
        return kind_of(os.stat(path).st_mode)
    except OSError:
        return "unreadable"
