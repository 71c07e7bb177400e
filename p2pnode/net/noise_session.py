"""A Noise session that moves bulk data in fewer reads, writes and copies (same bytes on the wire).

Upstream: py-libp2p 0.8.1's ``SecureSession`` over ``NoiseTransportReadWriter`` reads every Noise
message with two socket reads at least (its 2-byte length, then its body, a read per piece the
kernel hands over), copies the plaintext into a ``BytesIO`` and out again, and writes every message
of a write with its own locked socket write: a 1 MiB yamux write became 17 socket writes and about
40 socket reads on the other side. Here:

* a write encrypts every message of it (at most 65,519 bytes of plaintext each, as go-libp2p) and
  hands them to the socket in one write;
* a read takes whatever the socket holds (up to :data:`READ_SIZE`), decrypts every whole message
  in it, and serves reads from the plaintext pieces, up to the size asked for;
* a message that does not authenticate ends the connection (``RawConnError``; upstream raised an
  error the muxer logged and then read on past).

The framing is go-libp2p's and the spec's (``noise-libp2p``: a 2-byte big-endian length, then the
message): a peer cannot tell the difference. :func:`buffered_noise_transport` wraps py-libp2p's
Noise transport so that every session it makes is one of these; the handshake is upstream's.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import trio

MAX_MESSAGE = 65535  # the 2-byte length's limit
TAG = 16
MAX_PLAINTEXT = MAX_MESSAGE - TAG  # go-libp2p's MaxPlaintextLength
READ_SIZE = 1 << 20  # bytes asked of the socket at a time


def _session_base() -> type:
    from libp2p.security.secure_session import SecureSession

    return SecureSession


class BufferedNoiseSession(_session_base()):  # type: ignore[misc]
    """A finished Noise session (upstream's ``SecureSession``), with its transport read/writer
    replaced by buffered reads and batched writes over the same raw connection and cipher states."""

    def __init__(self, session: Any) -> None:
        rw = session.conn  # NoiseTransportReadWriter: its raw connection and finished noise state
        super().__init__(local_peer=session.local_peer, local_private_key=session.local_private_key,
                         remote_peer=session.remote_peer, remote_permanent_pubkey=session.remote_permanent_pubkey,
                         is_initiator=session.is_initiator, conn=rw)
        self._raw = rw.read_writer.read_write_closer
        protocol = rw.noise_state.noise_protocol
        self._encrypt = protocol.cipher_state_encrypt.encrypt_with_ad
        self._decrypt = protocol.cipher_state_decrypt.decrypt_with_ad
        self._cipher = bytearray()  # received, not yet decrypted (less than one whole message)
        self._plain: deque[bytes] = deque()  # decrypted, not yet read
        self._offset = 0  # into self._plain[0]
        self._buffered = 0  # plaintext bytes held
        self._write_lock = trio.Lock()  # encrypt and send in one order: the nonces count messages

    # writing -------------------------------------------------------------------------------------
    async def write(self, data: bytes) -> None:
        view = memoryview(data)
        parts: list[bytes] = []
        async with self._write_lock:
            for start in range(0, max(len(view), 1), MAX_PLAINTEXT):
                sealed = self._encrypt(None, view[start:start + MAX_PLAINTEXT])
                parts.append(len(sealed).to_bytes(2, "big"))
                parts.append(sealed)
            await self._raw.write(parts[0] + parts[1] if len(parts) == 2 else b"".join(parts))

    # reading -------------------------------------------------------------------------------------
    async def read(self, n: int | None = None) -> bytes:
        """Up to ``n`` bytes (all that is decrypted with ``None``), waiting only while none is."""
        if n == 0:
            return b""
        while not self._buffered:
            await self._fill()
        want = self._buffered if n is None or n < 0 else min(n, self._buffered)
        return self._take(want)

    def _take(self, n: int) -> bytes:
        first = self._plain[0]
        if self._offset == 0 and len(first) == n:  # the common case: a whole piece, no copy
            self._plain.popleft()
            self._buffered -= n
            return first
        out: list[bytes] = []
        need = n
        while need:
            piece = self._plain[0]
            end = min(len(piece), self._offset + need)
            out.append(piece[self._offset:end])
            need -= end - self._offset
            if end == len(piece):
                self._plain.popleft()
                self._offset = 0
            else:
                self._offset = end
        self._buffered -= n
        return out[0] if len(out) == 1 else b"".join(out)

    async def _fill(self) -> None:
        from libp2p.io.exceptions import IncompleteReadError

        chunk = await self._raw.read(READ_SIZE)
        if not chunk:
            raise IncompleteReadError("connection closed", expected_bytes=2, received_bytes=len(self._cipher))
        buf = self._cipher
        buf += chunk
        pos, end = 0, len(buf)
        with memoryview(buf) as view:
            while end - pos >= 2:
                length = int.from_bytes(view[pos:pos + 2], "big")
                if end - pos - 2 < length:
                    break
                self._plain_append(self._open(view[pos + 2:pos + 2 + length]))
                pos += 2 + length
        if pos:
            del buf[:pos]

    def _open(self, message: memoryview) -> bytes:
        from cryptography.exceptions import InvalidTag
        from libp2p.network.connection.exceptions import RawConnError
        from noise.exceptions import NoiseMaxNonceError

        try:
            return bytes(self._decrypt(None, message))
        except (InvalidTag, ValueError, NoiseMaxNonceError) as exc:
            raise RawConnError("noise: a message failed authentication") from exc

    def _plain_append(self, piece: bytes) -> None:
        if piece:
            self._plain.append(piece)
            self._buffered += len(piece)


def buffered_noise_transport(key_pair: Any, noise_privkey: Any) -> Any:
    """py-libp2p's Noise transport (XX handshake, unchanged) whose sessions are
    :class:`BufferedNoiseSession`."""
    from libp2p.security.noise.transport import Transport

    class BufferedNoiseTransport(Transport):
        async def secure_inbound(self, conn: Any) -> Any:
            return BufferedNoiseSession(await super().secure_inbound(conn))

        async def secure_outbound(self, conn: Any, peer_id: Any) -> Any:
            return BufferedNoiseSession(await super().secure_outbound(conn, peer_id))

    return BufferedNoiseTransport(libp2p_keypair=key_pair, noise_privkey=noise_privkey)
