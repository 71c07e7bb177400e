"""The node's ed25519 identity, kept in ``<data-dir>/identity.key``.

The file holds a libp2p protobuf ``PrivateKey`` (``KeyType=Ed25519``), the same format go-libp2p
and kubo use: ``Data`` is the 32-byte seed followed by the 32-byte public key (a 32-byte seed alone
is accepted too). It is created on first start with mode 0600 and never overwritten: a corrupt
file, a key of another type, or a file that other users can read is refused with a clear error.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from nacl.signing import SigningKey

from p2pnode.errors import IdentityError
from p2pnode.local_files import kind_of
from p2pnode.wire.peer_id import peer_id_from_public_key, to_base58

KEY_FILE = "identity.key"
_KEY_TYPES = {0: "RSA", 1: "Ed25519", 2: "Secp256k1", 3: "ECDSA"}


@dataclass(frozen=True)
class Identity:
    seed: bytes = field(repr=False)

    # Derived once: deriving a key pair costs ~40 µs, and the peer id is read on every hot path.
    @cached_property
    def signing_key(self) -> SigningKey:
        return SigningKey(self.seed)

    @cached_property
    def public_key(self) -> bytes:
        return bytes(self.signing_key.verify_key)

    @cached_property
    def peer_id(self) -> bytes:
        return peer_id_from_public_key(self.public_key)

    @cached_property
    def peer_id_b58(self) -> str:
        return to_base58(self.peer_id)

    def libp2p_keypair(self) -> Any:
        from libp2p.crypto.ed25519 import create_new_key_pair

        return create_new_key_pair(self.seed)

    @classmethod
    def generate(cls) -> Identity:
        return cls(bytes(SigningKey.generate()))


def encode_key_file(identity: Identity) -> bytes:
    data = identity.seed + identity.public_key
    return bytes([0x08, 0x01, 0x12, len(data)]) + data


def decode_key_file(raw: bytes, where: str = KEY_FILE) -> Identity:
    if len(raw) < 4 or raw[0] != 0x08 or raw[2] != 0x12:
        raise IdentityError(f"{where}: not a libp2p private key file (corrupt?)")
    key_type = raw[1]
    if key_type != 1:
        name = _KEY_TYPES.get(key_type, f"type {key_type}")
        raise IdentityError(f"{where}: holds a {name} key; p2pnode needs an Ed25519 key")
    length = raw[3]
    data = raw[4:]
    if length != len(data) or length not in (32, 64):
        raise IdentityError(f"{where}: Ed25519 key data has the wrong length (corrupt?)")
    identity = Identity(data[:32])
    if length == 64 and data[32:] != identity.public_key:
        raise IdentityError(f"{where}: public key does not match the private key (corrupt?)")
    return identity


def load_or_create(data_dir: Path) -> tuple[Identity, bool]:
    """Return the node's identity and whether it was created just now."""
    try:
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise IdentityError(f"cannot create data dir {data_dir}: {exc.strerror}") from exc
    path = data_dir / KEY_FILE
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return _create(path), True
    except OSError as exc:
        raise IdentityError(f"{path}: cannot look at it: {exc.strerror}") from exc
    if not stat.S_ISREG(mode):  # never open a FIFO (it blocks) or a device
        raise IdentityError(f"{path}: is {kind_of(mode)}, not a key file; move it out of the data dir")
    try:  # non-blocking, in case a FIFO took the file's place since: it is then refused below
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY)
    except OSError as exc:
        raise IdentityError(f"{path}: cannot open: {exc.strerror}") from exc
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise IdentityError(f"{path}: is {kind_of(mode)}, not a key file; move it out of the data dir")
    with os.fdopen(fd, "rb") as f:
        if mode & 0o077:
            raise IdentityError(
                f"{path}: permissions {oct(mode & 0o777)} let other users read the key; "
                f"run: chmod 600 {path}"
            )
        raw = f.read(256)
    return decode_key_file(raw, str(path)), False


def _create(path: Path) -> Identity:
    identity = Identity.generate()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError as exc:  # another process won the race: never overwrite
        raise IdentityError(f"{path}: appeared while creating it; start again") from exc
    except OSError as exc:
        raise IdentityError(f"{path}: cannot create: {exc.strerror}") from exc
    with os.fdopen(fd, "wb") as f:
        f.write(encode_key_file(identity))
        f.flush()
        os.fsync(f.fileno())
    return identity
