"""The node's own files are read safely: regular files only, within a bound, never a FIFO opened."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from p2pnode.errors import ConfigError, LocalError
from p2pnode.files import DATA_DIR_ENTRIES, check_data_dir, read_small_file
from tests.blocking import fails_after


def test_a_small_regular_file_is_read_through_a_link_too(data_dir: Path) -> None:
    (data_dir / "a.json").write_bytes(b"{}")
    (data_dir / "link.json").symlink_to(data_dir / "a.json")
    assert read_small_file(data_dir / "link.json", limit=2, what="x") == b"{}"


@pytest.mark.parametrize(("make", "message"), [
    (lambda p: None, "no such file"),
    (lambda p: p.mkdir(), "is a directory, not a regular file"),
    (lambda p: os.mkfifo(p), "is a FIFO, not a regular file"),
    (lambda p: p.symlink_to("/dev/null"), "is a character device, not a regular file"),
    (lambda p: p.write_bytes(b"x" * 11), "is 11 bytes, over the limit of 10 bytes"),
])
def test_anything_else_is_one_line_of_the_callers_error(
        data_dir: Path, make: Callable[[Path], object], message: str) -> None:
    path = data_dir / "f"
    make(path)
    with fails_after(10), pytest.raises(ConfigError, match=message) as caught:
        read_small_file(path, limit=10, what="calibration_file", error=ConfigError)
    assert str(caught.value).startswith(f"calibration_file {path}")


@pytest.mark.parametrize("name", sorted(DATA_DIR_ENTRIES))
def test_a_data_dir_entry_of_the_wrong_kind_is_refused(data_dir: Path, name: str) -> None:
    path = data_dir / name
    if DATA_DIR_ENTRIES[name] == "directory":
        path.write_bytes(b"")
    else:
        path.mkdir()
    with pytest.raises(LocalError, match=f"{path} is a .* where the node keeps a {DATA_DIR_ENTRIES[name]}"):
        check_data_dir(data_dir)


def test_a_data_dir_of_the_right_kinds_passes(data_dir: Path) -> None:
    import socket

    (data_dir / "identity.key").write_bytes(b"k")
    (data_dir / "maps").mkdir()
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(data_dir / "control.sock"))  # a stale socket: the node replaces it
        check_data_dir(data_dir)
    check_data_dir(data_dir / "not yet made")
    with pytest.raises(LocalError, match="not a directory"):
        check_data_dir(data_dir / "identity.key")
