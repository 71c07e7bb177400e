"""Node configuration: defaults < ``<data-dir>/config.toml`` < ``P2PNODE_*`` environment < flags.

Every key is declared once in :data:`KEYS` (name, type, default, meaning); the README's table is
checked against it by a test. Unknown keys and wrong types are refused with a
:class:`~p2pnode.errors.ConfigError` naming the source, so a typo never passes silently.
"""

from __future__ import annotations

import math
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from p2pnode.config_rules import (
    MAX_LIST,
    MAX_TEXT,
    Between,
    Flag,
    Multiaddrs,
    OneOf,
    Rule,
    distinct,
    fmt,
)
from p2pnode.errors import ConfigError
from p2pnode.files import read_small_file
from p2pnode.sharing import Schedule, parse_size
from p2pnode.wire.capacity_ad import MAX_ADDRS, MAX_GPU_SLOTS, MAX_GPUS, MAX_PRICE, MAX_U63
from p2pnode.wire.peer_id import from_base58, public_key_from_peer_id

CONFIG_FILE = "config.toml"
# Peers accept a sustained 0.5 ads/s per provider (specs/capacity-ad.md); ads on change are spaced
# the same way (node.MIN_CHANGE_INTERVAL_S), so a node never exceeds what the network takes.
MIN_AD_INTERVAL_S = 2.0
MAX_AD_TTL_S = 300.0  # ads stretch it as the market grows (specs/capacity-ad.md)
MAX_CONFIG_FILE = 1 << 20  # bytes
ENV_PREFIX = "P2PNODE_"


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "p2pnode"


_FLAG = Flag()
_TIME_RANGE = re.compile(r"\d{1,2}:\d{2}\s*-\s*\d{1,2}:\d{2}")


def _by_commas(text: str) -> list[str]:
    return text.split(",")


def _windows(text: str) -> list[str]:
    """Schedule windows separated by commas, where a window's days may hold commas too: a piece
    without a time range is a day list, and joins the next (``"mon-fri 19:00-07:00,sat,sun
    00:00-24:00"`` is two windows, ``"sat,sun 00:00-24:00"`` one)."""
    out, days = [], ""
    for piece in text.split(","):
        days = f"{days},{piece.strip()}" if days else piece.strip()
        if _TIME_RANGE.search(piece):
            out.append(days)
            days = ""
    return [*out, days] if days else out  # a day list with no time: Schedule.parse says so


@dataclass(frozen=True)
class Key:
    name: str
    type: type
    default: Any
    doc: str
    accepts: Rule = _FLAG  # the range or format, checked at load; the README's "accepts" column
    split: Callable[[str], list[str]] = _by_commas  # a list given as one string, separated by commas


# Format rules: each takes the key's name and its value, and raises ConfigError ----------------
@fmt("up to 8 known workload names")
def _workloads(name: str, value: tuple[str, ...]) -> None:
    if len(value) > MAX_WORKLOADS:
        raise ConfigError(f"{name}: at most {MAX_WORKLOADS} (an ad offers {MAX_WORKLOADS})")
    distinct(name, value)
    unknown = [w for w in value if w not in _DEFAULT_WORKLOADS]
    if unknown:
        from p2pnode.exec.workloads import _registered

        known = _registered()
        for w in unknown:
            if w not in known:
                raise ConfigError(f"{name}: unknown workload {w!r} (known: {', '.join(sorted(known))})")


@fmt("up to 16 GPU indexes 0-255")
def _gpus(name: str, value: tuple[str, ...]) -> None:
    if len(value) > MAX_GPUS:
        raise ConfigError(f"{name}: at most {MAX_GPUS} GPUs (an ad carries {MAX_GPUS})")
    for g in value:
        if not g.isdigit() or int(g) > 255:
            raise ConfigError(f"{name}: {g!r} is not a GPU index (0..255)")
    distinct(name, [str(int(g)) for g in value])


@fmt("empty, or a size such as 20G")
def _size(name: str, value: str) -> None:
    if value:
        parse_size(value, what=name)


@fmt("up to 32 windows: [DAYS] HH:MM-HH:MM")
def _schedule(name: str, value: tuple[str, ...]) -> None:
    Schedule.parse(value)


@fmt("empty, or HOST:PORT (port 0-65535)")
def _metrics(name: str, value: str) -> None:
    if not value:
        return
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"{name}: {value!r} is not host:port (port 0..65535)")


@fmt("up to 256 peer ids")
def _peer_ids(name: str, value: tuple[str, ...]) -> None:
    for peer in value:
        try:
            public_key_from_peer_id(from_base58(peer))
        except Exception:  # noqa: BLE001 - any undecodable id
            raise ConfigError(f"{name}: {peer!r} is not a peer id") from None


@fmt("empty, or MODE[:X]")
def _adversary(name: str, value: str) -> None:
    if value:
        from p2pnode.adversary import Adversary

        Adversary.parse(value)


@fmt("empty, or a regular JSON file")
def _calibration_file(name: str, value: str) -> None:
    if value:
        from p2pnode.telemetry.calibrate import read_calibration_file

        read_calibration_file(value)


@fmt("empty, or delay_ms=,jitter_ms=,drop=")
def _impair(name: str, value: str) -> None:
    if value:
        from p2pnode.net.impair import Impairment

        Impairment.parse(value)


@fmt("empty, a bootstrap list file, a name or a domain")
def _network(name: str, value: str) -> None:
    if "\n" in value or "\0" in value:
        raise ConfigError(f"{name}: {value!r} is not a file, a name or a domain")  # read whole in _check


DEFAULT_METRICS = "127.0.0.1:9464"
DEFAULT_UI = "127.0.0.1:7464"
_DEFAULT_WORKLOADS = ("matmul", "infer", "train_step", "onnx", "generate", "train")
MAX_WORKLOADS = 8  # an ad's offers: each workload, once more as a check offer (16)
KEYS: tuple[Key, ...] = (
    Key("listen", list, ["/ip4/0.0.0.0/tcp/4001"], "Multiaddrs to listen on (TCP).", Multiaddrs(16, least=1)),
    Key("announce", list, [], "Multiaddrs to advertise instead of the listen addresses (a public IP, a "
        "forwarded port); without it, wildcard listen addresses are expanded to this machine's interfaces.",
        Multiaddrs(MAX_ADDRS, dialable=True)),
    Key("bootstrap", list, [], "Multiaddrs with /p2p/ id of peers to keep connected; redialed with backoff. "
        "/dnsaddr/DOMAIN entries are resolved (TXT records of _dnsaddr.DOMAIN).",
        Multiaddrs(MAX_LIST, peer_id=True, dnsaddr=True)),
    Key("network", str, "", "The network to join: its bootstrap list file (one multiaddr a line, # comments), "
        "a name (the file <data-dir>/networks/NAME) or its domain (resolved as /dnsaddr/DOMAIN); added to bootstrap.",
        _network),
    Key("mdns", bool, True, "Find peers on the local network with mDNS."),
    Key("dht", bool, True, "Find peers and providers beyond the direct connections with the market's Kademlia DHT."),
    Key("reachability", str, "auto", "Whether others can dial this node: auto (ask peers to dial back, AutoNAT), "
        "public (a forwarded port) or private (behind NAT: reachable through relays only).",
        OneOf(("auto", "public", "private"))),
    Key("upnp", bool, True, "Ask the home router to forward this node's TCP port (UPnP IGD), and advertise "
        "the router's external address; never for a node that listens on loopback only."),
    Key("relay_service", str, "auto", "Relay for nodes behind NAT, within bounds: auto (when public), on or off.",
        OneOf(("auto", "on", "off"))),
    Key("relays", list, [], "Multiaddrs with /p2p/ id of relays to reserve a slot on when private; empty: the "
        "connected peers that relay.", Multiaddrs(16, peer_id=True)),
    Key("bulk", bool, True, "Move blobs between directly connected peers over a bulk channel (TCP, AEAD records "
        "keyed through libp2p) beside the libp2p stream; false: over the libp2p stream only."),
    Key("bulk_port", int, 0, "TCP port of the bulk channel, on the listen addresses' IPs (0: any free port; "
        "forward it beside the libp2p port for peers behind a router).", Between(0, 65535)),
    Key("perf", bool, False, "Serve libp2p's perf protocol (/perf/1.0.0) to connected peers, bounded, "
        "to measure throughput against other libp2p implementations."),
    Key("provide", bool, True, "Offer this machine's capacity (publish capacity ads)."),
    Key("use_gpu", bool, True, "Probe GPUs with NVML and use them; false forces the CPU path."),
    Key("workloads", list, list(_DEFAULT_WORKLOADS), "Workloads offered in the capacity ad.", _workloads),
    Key("price", int, 100, "Price in micro-credits per unit of work (one GFLOP).",
        Between(0, MAX_PRICE, why="what a capacity ad carries")),
    Key("slots", int, 1, "Jobs this node runs at once on each device it offers: on each GPU, or on the CPU "
        "where it offers none (one worker process each).", Between(1, MAX_GPU_SLOTS)),
    Key("gpus", list, [], "GPU indexes (as NVML and nvidia-smi number them) this node offers, e.g. 0,2; "
        "empty: every GPU it finds. Each job's worker sees only its GPU.", _gpus),
    Key("max_jobs", int, 0, "Most jobs at once in all (0: slots times the devices offered).", Between(0, 256)),
    Key("max_gpu_mem", str, "", "Most memory jobs may use on each offered GPU, e.g. 20G; empty: all that is free.",
        _size),
    Key("cpu_threads", int, 0, "Threads one job may use on the CPU (BLAS, ONNX Runtime); 0: every core.",
        Between(0, 1024)),
    Key("schedule", list, [], "When this node takes jobs, in local time: windows such as 18:00-08:00 or "
        "mon-fri 19:00-07:00; outside them it is paused (running jobs finish). Empty: always.", _schedule,
        split=_windows),
    Key("ad_interval", float, 60.0, "Seconds between periodic capacity ads in a market of up to 120 providers; "
        "longer in a larger one, so the market publishes about 2 ads a second (also sent at start and on change; "
        "newcomers get the market by sync).", Between(MIN_AD_INTERVAL_S, MAX_AD_TTL_S, "s", hi_open=True,
                                                why="peers accept 30 ads a minute from one provider")),
    Key("ad_ttl", float, 180.0, "Seconds an ad stays valid, stretched with the interval; must exceed ad_interval.",
        Between(MIN_AD_INTERVAL_S, MAX_AD_TTL_S, "s", lo_open=True,
                                                why="ads stretch it as the market grows")),
    Key("market_v1", bool, True, "Also read capacity ads on the version-1 topic and serve version-1 market syncs, "
        "for nodes not yet upgraded."),
    Key("calibrate_seconds", float, 0.3, "Budget of the start-up calibration run.", Between(0.01, 30.0, "s")),
    # a lone idle node used 0.2 % of a core at 1 s, 0.3 % at 0.2 s and 55 % at 1e-9 s (20 s of /proc/PID/stat)
    Key("heartbeat", float, 1.0, "GossipSub heartbeat interval in seconds.",
        Between(0.2, 60.0, "s", why="a shorter one spins")),
    Key("metrics", str, DEFAULT_METRICS, "host:port of the Prometheus endpoint (loopback only; the default port "
        "falls back to a free one when another node holds it); empty disables it.", _metrics),
    Key("metrics_public", bool, False, "Allow a non-loopback metrics address, for a Prometheus server on another "
        "host (the endpoint has no authentication: firewall it)."),
    Key("ui", str, DEFAULT_UI, "host:port of the web dashboard (loopback only; the default port falls back to a "
        "free one when another node holds it; `p2pnode ui` prints its address with the login token); empty "
        "disables it.", _metrics),
    Key("ui_public", bool, False, "Allow a non-loopback dashboard address, to open it from another host (every "
        "request still needs the token; serve it behind TLS, e.g. an SSH tunnel or a reverse proxy)."),
    Key("max_peers", int, 1024, "Most providers kept in the capacity table.", Between(1, 100_000)),
    Key("log_level", str, "info", "Logging level: debug, info (one line per job event), warning, error.",
        OneOf(("debug", "info", "warning", "error"), fold_case=True)),
    Key("log_format", str, "text", "Log lines as text or json (one object per line, for log collectors).",
        OneOf(("text", "json"))),
    Key("reciprocity", float, 0.2, "Most price discount for requesters that gave this node more compute than "
        "they took from it (share of the work between you that came from them, times this); 0 disables.",
        Between(0.0, 0.9)),
    Key("budget", int, 0, "Most micro-credits this node spends on jobs in all, by its receipts (0: no cap).",
        Between(0, MAX_U63)),
    Key("checker", bool, False, "Volunteer to re-run others' work as a checker (paid in credits like any job)."),
    Key("pretrusted", list, [], "Peer ids trusted from the start; their reports anchor reputation (EigenTrust).",
        _peer_ids),
    Key("reputation_half_life", float, 7.0, "Days after which evidence about a peer counts half.",
        Between(0.01, 3650.0, "days")),
    Key("check_rate_min", float, 0.1, "Lowest probability of re-running a trusted provider's result.",
        Between(0.0, 1.0, lo_open=True)),
    Key("calibrate_providers", bool, True, "Send a calibration job to each provider at first contact."),
    Key("adversary", str, "", "Misbehave as a provider, for tests and scenarios: MODE[:X] (see README).", _adversary),
    Key("calibration_file", str, "", "Read the measured speeds from this JSON file instead of calibrating "
        "(swarms share one).", _calibration_file),
    Key("impair", str, "", "For scenarios: delay and break this node's job and blob streams, e.g. "
        "delay_ms=80,jitter_ms=40,drop=0.02.", _impair),
)
_BY_NAME = {k.name: k for k in KEYS}


@dataclass(frozen=True)
class Config:
    data_dir: Path
    listen: tuple[str, ...]
    announce: tuple[str, ...]
    bootstrap: tuple[str, ...]
    network: str
    mdns: bool
    dht: bool
    reachability: str
    upnp: bool
    relay_service: str
    relays: tuple[str, ...]
    bulk: bool
    bulk_port: int
    perf: bool
    provide: bool
    use_gpu: bool
    workloads: tuple[str, ...]
    price: int
    slots: int
    gpus: tuple[str, ...]
    max_jobs: int
    max_gpu_mem: str
    cpu_threads: int
    schedule: tuple[str, ...]
    ad_interval: float
    ad_ttl: float
    market_v1: bool
    calibrate_seconds: float
    heartbeat: float
    metrics: str
    metrics_public: bool
    ui: str
    ui_public: bool
    max_peers: int
    log_level: str
    log_format: str
    reciprocity: float
    budget: int
    checker: bool
    pretrusted: tuple[str, ...]
    reputation_half_life: float
    check_rate_min: float
    calibrate_providers: bool
    adversary: str
    calibration_file: str
    impair: str

    def with_(self, **changes: Any) -> Config:
        return replace(self, **changes)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            out[f.name] = list(v) if isinstance(v, tuple) else str(v) if isinstance(v, Path) else v
        return out

    @property
    def gpu_indexes(self) -> tuple[int, ...]:
        """The GPUs offered (empty: all found)."""
        out = []
        for g in self.gpus:
            if not g.isdigit() or int(g) > 255:
                raise ConfigError(f"gpus: {g!r} is not a GPU index (0..255)")
            out.append(int(g))
        return tuple(out)

    @property
    def gpu_memory_cap(self) -> int:
        """``max_gpu_mem`` in bytes (0: no cap)."""
        return parse_size(self.max_gpu_mem, what="max_gpu_mem") if self.max_gpu_mem else 0

    @property
    def control_socket(self) -> Path:
        return self.data_dir / "control.sock"


def _coerce(key: Key, value: Any, source: str) -> Any:
    where = f"{source}: {key.name}"
    if key.type is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
            return value.lower() in ("1", "true", "yes", "on")
        raise ConfigError(f"{where}: expected true or false, got {_short(value)}")
    if key.type in (int, float):
        accepted = (int,) if key.type is int else (int, float)
        number: int | float | None = None
        if isinstance(value, accepted) and not isinstance(value, bool):
            number = key.type(value)
        elif isinstance(value, str) and len(value) <= 64:
            try:
                number = key.type(value)
            except ValueError:
                pass
        kind = "an integer" if key.type is int else "a number"
        if number is None:
            raise ConfigError(f"{where}: expected {kind}, got {_short(value)}")
        if not math.isfinite(number):
            raise ConfigError(f"{where}: expected a finite number, got {value!r}")
        return number
    if key.type is list:
        if isinstance(value, str):
            value = _split(key, value, where)
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{where}: expected a list of strings, got {_short(value)}")
        if len(value) > MAX_LIST:
            raise ConfigError(f"{where}: more than {MAX_LIST} entries")
        if any(not v.strip() for v in value):
            raise ConfigError(f"{where}: an entry is empty")
        if any(len(v) > MAX_TEXT for v in value):
            raise ConfigError(f"{where}: an entry is longer than {MAX_TEXT} characters")
        return tuple(v.strip() for v in value)
    if key.type is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {_short(value)}")
        if len(value) > MAX_TEXT:
            raise ConfigError(f"{where}: longer than {MAX_TEXT} characters")
        return value
    raise AssertionError(key)


def _split(key: Key, text: str, where: str) -> list[str]:
    """A list given as one string (an environment variable, a flag): a TOML or JSON array when it
    starts with ``[``; else entries separated by ``;`` or newlines; else by commas, as the key
    reads them (schedule windows keep the commas of their day lists)."""
    text = text.strip()
    if text.startswith("["):
        try:
            doc = tomllib.loads("v = " + text)
        except (tomllib.TOMLDecodeError, RecursionError) as exc:
            raise ConfigError(f"{where}: not a TOML or JSON array of strings: {_first_line(exc)}") from None
        if set(doc) != {"v"}:
            raise ConfigError(f"{where}: not a TOML or JSON array of strings")
        value = doc["v"]
        return value if isinstance(value, list) else [value]
    parts = text.replace("\n", ";").split(";") if ";" in text or "\n" in text else key.split(text)
    return [p.strip() for p in parts if p.strip()]


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _first_line(exc: BaseException) -> str:
    return (str(exc) or type(exc).__name__).splitlines()[0]


def _read_file(path: Path, *, required: bool) -> dict[str, Any]:
    """The TOML file at ``path``; ``{}`` where it is absent and not ``required`` (the default file)."""
    if not required and not os.path.lexists(path):
        return {}
    raw = read_small_file(path, limit=MAX_CONFIG_FILE, what="config file", error=ConfigError)
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    except RecursionError:
        raise ConfigError(f"{path}: not valid TOML: nested too deep") from None


def load(
    data_dir: Path | None = None,
    *,
    config_file: Path | None = None,
    env: Mapping[str, str] | None = None,
    flags: Mapping[str, Any] | None = None,
) -> Config:
    """Merge the three sources over the defaults; ``flags`` holds only flags the user gave. A
    ``config_file`` named explicitly must exist; the default one (``<data-dir>/config.toml``) may not."""
    env = os.environ if env is None else env
    if data_dir is None:
        data_dir = Path(env[ENV_PREFIX + "DATA_DIR"]) if env.get(ENV_PREFIX + "DATA_DIR") else default_data_dir()
    data_dir = data_dir.expanduser()
    values: dict[str, Any] = {k.name: _coerce(k, k.default, "default") for k in KEYS}
    path = config_file.expanduser() if config_file is not None else data_dir / CONFIG_FILE
    for name, value in _read_file(path, required=config_file is not None).items():
        if name not in _BY_NAME:
            raise ConfigError(f"{path}: unknown key {name!r} (known: {', '.join(_BY_NAME)})")
        values[name] = _coerce(_BY_NAME[name], value, str(path))
    for key in KEYS:
        raw = env.get(ENV_PREFIX + key.name.upper())
        if raw is not None:
            values[key.name] = _coerce(key, raw, f"${ENV_PREFIX}{key.name.upper()}")
    for name, value in (flags or {}).items():
        if value is None:
            continue
        if name not in _BY_NAME:
            raise ConfigError(f"unknown option {name!r}")
        values[name] = _coerce(_BY_NAME[name], value, "--" + name.replace("_", "-"))
    config = Config(data_dir=data_dir, **values)
    _check(config)
    return config


# What the operator may change while the node runs (the dashboard's sharing panel, the control
# command ``sharing``): each is read afresh where it is used, and the next ad says it.
RUNTIME_KEYS = ("price", "workloads", "schedule", "max_gpu_mem", "checker")


def change(config: Config, values: Mapping[str, Any], source: str = "sharing") -> Config:
    """``config`` with ``values`` (keys of :data:`RUNTIME_KEYS` only), each coerced and checked by
    its key's rules and then all together, as at load; refused with one line otherwise."""
    unknown = [k for k in values if k not in RUNTIME_KEYS]
    if unknown:
        raise ConfigError(f"{source}: {', '.join(map(repr, unknown))} cannot change while the node runs "
                          f"(these can: {', '.join(RUNTIME_KEYS)})")
    new = config.with_(**{k: _coerce(_BY_NAME[k], v, source) for k, v in values.items()})
    _check(new)
    return new


def _check(c: Config) -> None:
    """Each key's own rule, then the rules between keys."""
    for key in KEYS:
        key.accepts.check(key.name, getattr(c, key.name))
    if c.ad_ttl <= c.ad_interval:
        raise ConfigError(f"ad_ttl ({c.ad_ttl}) must exceed ad_interval ({c.ad_interval})")
    if c.network:
        from p2pnode.net.network import network_entries

        network_entries(c.network, c.data_dir)  # readable, and every line a bootstrap address
    if c.metrics:
        host = c.metrics.rpartition(":")[0]
        if host not in ("127.0.0.1", "localhost", "::1", "[::1]") and not c.metrics_public:
            raise ConfigError(f"metrics: {host!r} is not a loopback address (set metrics_public = true to "
                              "serve a Prometheus server on another host)")
    if c.ui:
        host = c.ui.rpartition(":")[0]
        if host not in ("127.0.0.1", "localhost", "::1", "[::1]") and not c.ui_public:
            raise ConfigError(f"ui: {host!r} is not a loopback address (set ui_public = true to open the "
                              "dashboard to other hosts)")
