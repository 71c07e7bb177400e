"""Which network to join: a bootstrap list, and ``/dnsaddr`` names resolved as IPFS does.

* **A network** (``network`` in the config, ``--network``) is a bootstrap list file (one multiaddr
  a line; ``#`` starts a comment), a name (the file ``<data-dir>/networks/<name>``), or a domain
  (``market.example.org``: the entry ``/dnsaddr/market.example.org``, as IPFS names its bootstrap
  peers ``/dnsaddr/bootstrap.libp2p.io``). Its entries are kept like ``bootstrap`` peers.
* **/dnsaddr/<domain>[/p2p/<id>]** stands for the multiaddrs in the TXT records of
  ``_dnsaddr.<domain>``, written ``dnsaddr=<multiaddr>``; those that are ``/dnsaddr`` again are
  resolved in turn. With a ``/p2p/<id>`` suffix only addresses ending in it count (the libp2p
  dnsaddr spec). Bounds: :data:`MAX_DEPTH` levels, :data:`MAX_LOOKUPS` TXT queries and
  :data:`MAX_ADDRS` addresses per resolution, :data:`LOOKUP_TIMEOUT_S` per query: a domain's owner
  cannot make a node query without end. The TXT lookup is injectable (tests have no DNS); the
  default asks the system's resolvers through dnspython.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from pathlib import Path

import multiaddr

from p2pnode.errors import ConfigError, NetworkSetupError

log = logging.getLogger("p2pnode.discovery")

MAX_LIST_BYTES = 64 * 1024
MAX_LIST_ENTRIES = 256
MAX_DEPTH = 4
MAX_LOOKUPS = 16
MAX_ADDRS = 32
LOOKUP_TIMEOUT_S = 5.0
PREFIX = "dnsaddr="
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
_DOMAIN = re.compile(r"^(?=.{1,253}$)([A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}\.?$")

TxtLookup = Callable[[str], Awaitable[list[str]]]  # a name -> its TXT records, each as one string


def is_dnsaddr(entry: str) -> bool:
    return entry.startswith("/dnsaddr/")


def check_dnsaddr(entry: str) -> str:
    """``entry`` if it is a well-formed ``/dnsaddr/<domain>[/p2p/<id>]``, else one clear error."""
    try:
        names = [p.name for p in multiaddr.Multiaddr(entry).protocols()]
    except Exception as exc:  # noqa: BLE001 - the multiaddr package raises several types
        raise NetworkSetupError(f"bad multiaddr {entry!r}: {exc}") from None
    if names not in (["dnsaddr"], ["dnsaddr", "p2p"]):
        raise NetworkSetupError(f"{entry!r}: a /dnsaddr/ bootstrap entry is /dnsaddr/<domain>[/p2p/<peer-id>]")
    return entry


def parse_list(text: str, source: str) -> list[str]:
    """The entries of a bootstrap list: one multiaddr a line, blank lines and ``#`` comments
    skipped. A line that is no multiaddr, or a direct address without ``/p2p/<id>``, is an
    error naming the line."""
    entries: list[str] = []
    for number, line in enumerate(text.splitlines(), 1):
        entry = line.split("#", 1)[0].strip()
        if not entry:
            continue
        try:
            addr = multiaddr.Multiaddr(entry)
        except Exception as exc:  # noqa: BLE001 - the multiaddr package raises several types
            raise ConfigError(f"{source}:{number}: not a multiaddr: {entry!r} ({exc})") from None
        names = [p.name for p in addr.protocols()]
        if is_dnsaddr(entry):
            try:
                check_dnsaddr(entry)
            except NetworkSetupError as exc:
                raise ConfigError(f"{source}:{number}: {exc}") from None
        elif "p2p" not in names or "tcp" not in names:
            raise ConfigError(f"{source}:{number}: {entry!r} needs /tcp/ and /p2p/<peer-id> (or is /dnsaddr/...)")
        entries.append(entry)
        if len(entries) > MAX_LIST_ENTRIES:
            raise ConfigError(f"{source}: more than {MAX_LIST_ENTRIES} entries")
    if not entries:
        raise ConfigError(f"{source}: no bootstrap address in it")
    return list(dict.fromkeys(entries))


def network_entries(network: str, data_dir: Path) -> list[str]:
    """The bootstrap entries of ``network``: a file, a name under ``<data-dir>/networks/``, or
    a domain (see the module's docstring). Raises :class:`ConfigError` in one line."""
    path = Path(network).expanduser()
    named = not path.is_file() and bool(_NAME.match(network))  # a name: no dot, no slash
    if named:
        path = data_dir / "networks" / network
    if not path.is_file():
        if _DOMAIN.match(network):
            return [f"/dnsaddr/{network.rstrip('.')}"]
        raise ConfigError(f"network {network!r}: no such file" + (f", nor {path}" if named else ""))
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_LIST_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"network {network!r}: cannot read {path}: {exc.strerror}") from None
    if len(raw) > MAX_LIST_BYTES:
        raise ConfigError(f"network {network!r}: {path} is over {MAX_LIST_BYTES // 1024} KiB")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"network {network!r}: {path} is not UTF-8 text") from None
    return parse_list(text, str(path))


async def dns_txt(name: str) -> list[str]:
    """``name``'s TXT records from the system's resolvers (dnspython; runs on trio)."""
    import dns.asyncresolver
    import dns.exception
    import dns.resolver

    try:
        answer = await dns.asyncresolver.resolve(name, "TXT", lifetime=LOOKUP_TIMEOUT_S)
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return []
    except dns.exception.DNSException as exc:
        raise NetworkSetupError(f"DNS lookup of {name} failed: {exc}") from None
    return [b"".join(record.strings).decode("utf-8", "replace") for record in answer]


async def resolve(entry: str, lookup: TxtLookup = dns_txt) -> list[str]:
    """The multiaddrs ``/dnsaddr/<domain>[/p2p/<id>]`` stands for, none of them ``/dnsaddr``.

    Raises :class:`NetworkSetupError` when the top domain cannot be looked up or names nothing
    usable; a nested domain that fails is skipped (and logged)."""
    import trio

    domain, _, rest = entry[len("/dnsaddr/"):].partition("/")
    peer = rest[len("p2p/"):] if rest.startswith("p2p/") else ""
    budget = [MAX_LOOKUPS]
    out: list[str] = []

    async def walk(domain: str, peer: str, depth: int) -> None:
        if budget[0] <= 0 or len(out) >= MAX_ADDRS:
            return
        budget[0] -= 1
        with trio.fail_after(LOOKUP_TIMEOUT_S):
            records = await lookup(f"_dnsaddr.{domain}")
        for record in records[:MAX_ADDRS * 4]:
            value = record.strip()
            if not value.startswith(PREFIX):
                continue
            value = value[len(PREFIX):].strip()
            if peer and not value.rstrip("/").endswith(f"/p2p/{peer}"):
                continue
            try:
                multiaddr.Multiaddr(value)
            except Exception:  # noqa: BLE001 - a record that is no multiaddr: skipped
                log.debug("%s: not a multiaddr: %r", domain, value)
                continue
            if not is_dnsaddr(value):
                if value not in out and len(out) < MAX_ADDRS:
                    out.append(value)
                continue
            if depth >= MAX_DEPTH:
                log.debug("%s: %s is nested too deep", entry, value)
                continue
            sub, _, sub_rest = value[len("/dnsaddr/"):].partition("/")
            try:
                await walk(sub, sub_rest[len("p2p/"):] if sub_rest.startswith("p2p/") else peer, depth + 1)
            except (NetworkSetupError, trio.TooSlowError) as exc:
                log.info("%s: %s skipped: %s", entry, value, exc)

    try:
        await walk(domain, peer, 1)
    except trio.TooSlowError:
        raise NetworkSetupError(f"DNS lookup of _dnsaddr.{domain} timed out") from None
    if not out:
        raise NetworkSetupError(f"{entry} names no address (TXT records of _dnsaddr.{domain})")
    return out
