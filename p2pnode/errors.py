"""The package's error tree.

One root, :class:`P2PNodeError`. Below it two families, as in h11:

* :class:`LocalError` -- this node's own user, file or configuration is wrong (a bad flag, a corrupt
  key file, a port in use). The CLI prints its message as one line and exits non-zero.
* :class:`PeerError` -- a remote peer sent something we refuse. Anything decoded from a peer can only
  raise a ``PeerError`` subclass, never ``KeyError`` or ``ValueError``. Each carries a short
  machine-readable ``code`` that is also the penalty reason and the metrics label.
"""

from __future__ import annotations


class P2PNodeError(Exception):
    """Root of every error p2pnode raises on purpose."""


class LocalError(P2PNodeError):
    """The local user, configuration or environment is at fault."""


class ConfigError(LocalError):
    """A configuration file, environment variable or flag is invalid."""


class IdentityError(LocalError):
    """The node's key file is missing, corrupt, foreign or unsafe."""


class NetworkSetupError(LocalError):
    """The host could not start: a bad multiaddr, a port in use, ..."""


class FileRefused(LocalError):
    """A file the user named cannot be used as it is: missing, not a regular file (a device, a
    FIFO, a folder), over its size limit, or a symbolic link where only a file itself is read."""


class ControlError(LocalError):
    """The local control API could not be reached or answered an error."""


class PeerError(P2PNodeError):
    """A remote peer sent something invalid. ``code`` names the reason."""

    code: str = "peer_error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code


class CodecError(PeerError):
    """Bytes are not a well-formed, bounded CBOR value of the expected shape."""

    code = "malformed"


class OversizedError(CodecError):
    """Bytes exceed the size limit of what they claim to be."""

    code = "oversized"


class SignatureError(PeerError):
    """A signature is missing, malformed or does not verify."""

    code = "bad_signature"


class AdRejected(PeerError):
    """A well-formed, correctly signed capacity ad was refused by policy.

    ``code`` is one of: ``expired``, ``future``, ``ttl_too_long``, ``stale``, ``rate_limited``,
    ``table_full``, ``wrong_origin``.
    """

    code = "rejected"


class WorkloadError(P2PNodeError):
    """An unknown workload or bad parameters. ``code``: ``unknown_workload`` or ``bad_params``.

    Raised for the local user (the CLI prints it) and, on the wire, turned into a decline with the
    same code.
    """

    def __init__(self, message: str, *, code: str = "bad_params") -> None:
        super().__init__(message)
        self.code = code


class ExecFailure(P2PNodeError):
    """A job failed in the executor. ``code``: ``timeout``, ``cancelled``, ``oom``, ``crashed``,
    ``kernel_error``, ``no_capacity``, ``backend_unavailable``. The node itself is unaffected."""

    def __init__(self, message: str, *, code: str) -> None:
        super().__init__(message)
        self.code = code


class ProtocolError(P2PNodeError):
    """A job-protocol state machine got an event that does not fit its state."""


class ReplayError(PeerError):
    """A peer sent again what this node has already acted on (a job id it already took)."""

    code = "replay"


class LocalProtocolError(ProtocolError):
    """This node's own code misused a state machine (a bug here, not the peer's fault)."""


class RemoteProtocolError(ProtocolError, PeerError):
    """A peer sent a message that does not fit the conversation; the peer is penalised."""

    code = "protocol_violation"


def unwrap_group(exc: BaseException, *, first: bool = False) -> BaseException:
    """The single error inside (nested) exception groups, or ``exc`` itself; with ``first``, the
    first leaf even when a group holds several.

    trio's nurseries wrap errors in groups; a user should see the ``JobError`` inside, not a
    group with one member."""
    while isinstance(exc, BaseExceptionGroup) and (first or len(exc.exceptions) == 1):
        exc = exc.exceptions[0]
    return exc


class LedgerError(LocalError):
    """The ledger cannot be opened or written (a local fault: disk, permissions, a foreign file)."""


class ChainError(CodecError):
    """A ledger record or chain does not verify: bad encoding, broken link or bad signature.

    ``seq`` is the sequence number of the first entry found wrong (-1 before any entry).
    """

    code = "bad_chain"

    def __init__(self, message: str, *, seq: int = -1) -> None:
        super().__init__(f"entry {seq}: {message}" if seq >= 0 else message)
        self.seq = seq
