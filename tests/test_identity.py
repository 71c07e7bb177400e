from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import pytest

from p2pnode.errors import IdentityError
from p2pnode.identity import KEY_FILE, Identity, encode_key_file, load_or_create


def test_created_once_with_mode_0600_then_reused(data_dir: Path) -> None:
    first, created = load_or_create(data_dir)
    assert created
    mode = stat.S_IMODE(os.stat(data_dir / KEY_FILE).st_mode)
    assert mode == 0o600
    again, created_again = load_or_create(data_dir)
    assert not created_again
    assert again.peer_id == first.peer_id
    assert first.peer_id_b58.startswith("12D3KooW")


def test_matches_libp2p_peer_id(data_dir: Path) -> None:
    from libp2p.peer.id import ID

    identity, _ = load_or_create(data_dir)
    assert ID.from_pubkey(identity.libp2p_keypair().public_key).to_bytes() == identity.peer_id


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "not a libp2p private key"),
        (b"garbage garbage garbage", "not a libp2p private key"),
        (bytes([0x08, 0x00, 0x12, 0x04]) + b"\x00" * 4, "RSA key"),
        (bytes([0x08, 0x02, 0x12, 0x20]) + b"\x01" * 32, "Secp256k1 key"),
        (bytes([0x08, 0x01, 0x12, 0x20]) + b"\x01" * 31, "wrong length"),
        (bytes([0x08, 0x01, 0x12, 0x40]) + b"\x01" * 64, "does not match"),
    ],
)
def test_corrupt_or_foreign_key_is_refused_and_kept(data_dir: Path, content: bytes, message: str) -> None:
    path = data_dir / KEY_FILE
    path.write_bytes(content)
    path.chmod(0o600)
    with pytest.raises(IdentityError, match=message):
        load_or_create(data_dir)
    assert path.read_bytes() == content  # never overwritten


def test_key_readable_by_others_is_refused(data_dir: Path) -> None:
    path = data_dir / KEY_FILE
    path.write_bytes(encode_key_file(Identity.generate()))
    path.chmod(0o644)
    with pytest.raises(IdentityError, match="chmod 600"):
        load_or_create(data_dir)


def test_go_and_python_key_forms_both_load(data_dir: Path) -> None:
    identity = Identity.generate()
    path = data_dir / KEY_FILE
    path.write_bytes(bytes([0x08, 0x01, 0x12, 0x20]) + identity.seed)  # py-libp2p's 32-byte form
    path.chmod(0o600)
    assert load_or_create(data_dir)[0].peer_id == identity.peer_id


def _fifo_with_a_writer(path: Path) -> None:
    """A FIFO that a writer holds open: a reader that opens it blocking does not hang this test."""
    os.mkfifo(path, 0o600)
    reader = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    _held.extend([reader, os.open(path, os.O_WRONLY)])


_held: list[int] = []


@pytest.mark.parametrize(("make", "kind"), [
    (lambda p: p.mkdir(), "a directory"),
    (_fifo_with_a_writer, "a FIFO"),  # with no writer, opening it would wait for one for ever
    (lambda p: p.symlink_to("/dev/zero"), "a symbolic link"),
])
def test_a_key_path_that_is_no_regular_file_is_refused_without_opening_it(
        data_dir: Path, make: Any, kind: str) -> None:
    path = data_dir / KEY_FILE
    try:
        make(path)
        with pytest.raises(IdentityError, match=f"is {kind}, not a key file"):
            load_or_create(data_dir)
        assert os.path.lexists(path)  # left as it was
    finally:
        while _held:
            os.close(_held.pop())
