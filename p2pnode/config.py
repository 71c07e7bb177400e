"""Node configuration: defaults < ``<data-dir>/config.toml`` < ``P2PNODE_*`` environment < flags.

Every key is declared once in :data:`KEYS` (name, type, default, meaning); the README's table is
checked against it by a test. Unknown keys and wrong types are refused with a
:class:`~p2pnode.errors.ConfigError` naming the source, so a typo never passes silently.
"""

from __future__ import annotations

import math
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from p2pnode.errors import ConfigError
from p2pnode.sharing import Schedule, parse_size
from p2pnode.wire.peer_id import from_base58, public_key_from_peer_id

CONFIG_FILE = "config.toml"
# Peers accept a sustained 0.5 ads/s per provider (specs/capacity-ad.md); ads on change are spaced
# the same way (node.MIN_CHANGE_INTERVAL_S), so a node never exceeds what the network takes.
MIN_AD_INTERVAL_S = 2.0
ENV_PREFIX = "P2PNODE_"


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "p2pnode"


@dataclass(frozen=True)
class Key:
    name: str
    type: type
    default: Any
    doc: str


DEFAULT_METRICS = "127.0.0.1:9464"
KEYS: tuple[Key, ...] = (
    Key("listen", list, ["/ip4/0.0.0.0/tcp/4001"], "Multiaddrs to listen on (TCP)."),
    Key("announce", list, [], "Multiaddrs to advertise instead of the listen addresses (a public IP, a "
        "forwarded port); without it, wildcard listen addresses are expanded to this machine's interfaces."),
    Key("bootstrap", list, [], "Multiaddrs with /p2p/ id of peers to keep connected; redialed with backoff. "
        "/dnsaddr/DOMAIN entries are resolved (TXT records of _dnsaddr.DOMAIN)."),
    Key("network", str, "", "The network to join: its bootstrap list file (one multiaddr a line, # comments), "
        "a name (the file <data-dir>/networks/NAME) or its domain (resolved as /dnsaddr/DOMAIN); added to bootstrap."),
    Key("mdns", bool, True, "Find peers on the local network with mDNS."),
    Key("dht", bool, True, "Find peers and providers beyond the direct connections with the market's Kademlia DHT."),
    Key("reachability", str, "auto", "Whether others can dial this node: auto (ask peers to dial back, AutoNAT), "
        "public (a forwarded port) or private (behind NAT: reachable through relays only)."),
    Key("upnp", bool, True, "Ask the home router to forward this node's TCP port (UPnP IGD), and advertise "
        "the router's external address; never for a node that listens on loopback only."),
    Key("relay_service", str, "auto", "Relay for nodes behind NAT, within bounds: auto (when public), on or off."),
    Key("relays", list, [], "Multiaddrs with /p2p/ id of relays to reserve a slot on when private; empty: the "
        "connected peers that relay."),
    Key("provide", bool, True, "Offer this machine's capacity (publish capacity ads)."),
    Key("use_gpu", bool, True, "Probe GPUs with NVML and use them; false forces the CPU path."),
    Key("workloads", list, ["matmul", "infer", "train_step", "onnx"], "Workloads offered in the capacity ad."),
    Key("price", int, 100, "Price in micro-credits per unit of work (one GFLOP)."),
    Key("slots", int, 1, "Jobs this node runs at once on each device it offers: on each GPU, or on the CPU "
        "where it offers none (one worker process each)."),
    Key("gpus", list, [], "GPU indexes (as NVML and nvidia-smi number them) this node offers, e.g. 0,2; "
        "empty: every GPU it finds. Each job's worker sees only its GPU."),
    Key("max_jobs", int, 0, "Most jobs at once in all (0: slots times the devices offered)."),
    Key("max_gpu_mem", str, "", "Most memory jobs may use on each offered GPU, e.g. 20G; empty: all that is free."),
    Key("cpu_threads", int, 0, "Threads one job may use on the CPU (BLAS, ONNX Runtime); 0: every core."),
    Key("schedule", list, [], "When this node takes jobs, in local time: windows such as 18:00-08:00 or "
        "mon-fri 19:00-07:00; outside them it is paused (running jobs finish). Empty: always."),
    Key("ad_interval", float, 60.0, "Seconds between periodic capacity ads in a market of up to 120 providers; "
        "longer in a larger one, so the market publishes about 2 ads a second (also sent at start and on change; "
        "newcomers get the market by sync)."),
    Key("ad_ttl", float, 180.0, "Seconds an ad stays valid, stretched with the interval; must exceed ad_interval."),
    Key("market_v1", bool, True, "Also read capacity ads on the version-1 topic and serve version-1 market syncs, "
        "for nodes not yet upgraded."),
    Key("calibrate_seconds", float, 0.3, "Budget of the start-up calibration run."),
    Key("heartbeat", float, 1.0, "GossipSub heartbeat interval in seconds."),
    Key("metrics", str, DEFAULT_METRICS, "host:port of the Prometheus endpoint (loopback only; the default port "
        "falls back to a free one when another node holds it); empty disables it."),
    Key("metrics_public", bool, False, "Allow a non-loopback metrics address, for a Prometheus server on another "
        "host (the endpoint has no authentication: firewall it)."),
    Key("max_peers", int, 1024, "Most providers kept in the capacity table."),
    Key("log_level", str, "info", "Logging level: debug, info (one line per job event), warning, error."),
    Key("log_format", str, "text", "Log lines as text or json (one object per line, for log collectors)."),
    Key("reciprocity", float, 0.2, "Most price discount for requesters that gave this node more compute than "
        "they took from it (share of the work between you that came from them, times this); 0 disables."),
    Key("budget", int, 0, "Most micro-credits this node spends on jobs in all, by its receipts (0: no cap)."),
    Key("checker", bool, False, "Volunteer to re-run others' work as a checker (paid in credits like any job)."),
    Key("pretrusted", list, [], "Peer ids trusted from the start; their reports anchor reputation (EigenTrust)."),
    Key("reputation_half_life", float, 7.0, "Days after which evidence about a peer counts half."),
    Key("check_rate_min", float, 0.1, "Lowest probability of re-running a trusted provider's result."),
    Key("calibrate_providers", bool, True, "Send a calibration job to each provider at first contact."),
    Key("adversary", str, "", "Misbehave as a provider, for tests and scenarios: MODE[:X] (see README)."),
    Key("calibration_file", str, "", "Read the measured speeds from this JSON file instead of calibrating (swarms share one)."),
    Key("impair", str, "", "For scenarios: delay and break this node's job and blob streams, e.g. delay_ms=80,jitter_ms=40,drop=0.02."),
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
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if key.type in (int, float):
        accepted = (int,) if key.type is int else (int, float)
        number: int | float | None = None
        if isinstance(value, accepted) and not isinstance(value, bool):
            number = key.type(value)
        elif isinstance(value, str):
            try:
                number = key.type(value)
            except ValueError:
                pass
        kind = "an integer" if key.type is int else "a number"
        if number is None:
            raise ConfigError(f"{where}: expected {kind}, got {value!r}")
        if not math.isfinite(number):
            raise ConfigError(f"{where}: expected a finite number, got {value!r}")
        return number
    if key.type is list:
        if isinstance(value, str):
            return tuple(v.strip() for v in value.split(",") if v.strip())
        if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
            return tuple(value)
        raise ConfigError(f"{where}: expected a list of strings, got {value!r}")
    if key.type is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    raise AssertionError(key)


def _read_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from exc
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc


def load(
    data_dir: Path | None = None,
    *,
    config_file: Path | None = None,
    env: Mapping[str, str] | None = None,
    flags: Mapping[str, Any] | None = None,
) -> Config:
    """Merge the three sources over the defaults; ``flags`` holds only flags the user gave."""
    env = os.environ if env is None else env
    if data_dir is None:
        data_dir = Path(env[ENV_PREFIX + "DATA_DIR"]) if env.get(ENV_PREFIX + "DATA_DIR") else default_data_dir()
    data_dir = data_dir.expanduser()
    values: dict[str, Any] = {k.name: _coerce(k, k.default, "default") for k in KEYS}
    path = config_file or data_dir / CONFIG_FILE
    for name, value in _read_file(path).items():
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


def _check(c: Config) -> None:
    if c.ad_ttl <= c.ad_interval:
        raise ConfigError(f"ad_ttl ({c.ad_ttl}) must exceed ad_interval ({c.ad_interval})")
    if c.ad_ttl > 300:
        raise ConfigError("ad_ttl must be at most 300 seconds (ads stretch it as the market grows)")
    if c.ad_interval < MIN_AD_INTERVAL_S:
        raise ConfigError(
            f"ad_interval must be at least {MIN_AD_INTERVAL_S:g} s: peers accept 30 ads a minute from one provider"
        )
    if not 0 <= c.reciprocity <= 0.9:
        raise ConfigError("reciprocity must be within [0, 0.9]")
    if c.budget < 0:
        raise ConfigError("budget must not be negative (0: no cap)")
    if c.price < 0:
        raise ConfigError("price must not be negative")
    if c.heartbeat <= 0 or c.heartbeat > 60:
        raise ConfigError("heartbeat must be within (0, 60] seconds")
    if not 1 <= c.slots <= 64:
        raise ConfigError("slots must be between 1 and 64")
    if c.reachability not in ("auto", "public", "private"):
        raise ConfigError(f"reachability: {c.reachability!r} is not auto, public or private")
    if c.relay_service not in ("auto", "on", "off"):
        raise ConfigError(f"relay_service: {c.relay_service!r} is not auto, on or off")
    if c.network:
        from p2pnode.net.network import network_entries

        network_entries(c.network, c.data_dir)  # readable, and every line a bootstrap address
    for relay in c.relays:
        if "/p2p/" not in relay:
            raise ConfigError(f"relays: {relay!r} lacks the relay's /p2p/ id")
    if not 0 <= c.max_jobs <= 256:
        raise ConfigError("max_jobs must be between 0 (slots times devices) and 256")
    if not 0 <= c.cpu_threads <= 1024:
        raise ConfigError("cpu_threads must be between 0 (every core) and 1024")
    gpu_indexes = c.gpu_indexes  # checks them
    if len(set(gpu_indexes)) != len(gpu_indexes):
        raise ConfigError("gpus: an index is named twice")
    if c.max_gpu_mem:
        parse_size(c.max_gpu_mem, what="max_gpu_mem")
    Schedule.parse(c.schedule)
    if c.max_peers < 1:
        raise ConfigError("max_peers must be at least 1")
    if not 0 < c.check_rate_min <= 1:
        raise ConfigError("check_rate_min must be within (0, 1]")
    if c.reputation_half_life <= 0:
        raise ConfigError("reputation_half_life must be positive (days)")
    for peer in c.pretrusted:
        try:
            public_key_from_peer_id(from_base58(peer))
        except Exception:  # noqa: BLE001 - any undecodable id
            raise ConfigError(f"pretrusted: {peer!r} is not a peer id") from None
    if c.adversary:
        from p2pnode.adversary import Adversary

        Adversary.parse(c.adversary)
    if c.impair:
        from p2pnode.net.impair import Impairment

        Impairment.parse(c.impair)
    if c.log_format not in ("text", "json"):
        raise ConfigError(f"log_format: {c.log_format!r} is not text or json")
    if c.log_level.lower() not in ("debug", "info", "warning", "error"):
        raise ConfigError(f"log_level: {c.log_level!r} is not debug, info, warning or error")
    if c.metrics:
        host, sep, port = c.metrics.rpartition(":")
        if not sep or not port.isdigit() or int(port) > 65535:
            raise ConfigError(f"metrics: {c.metrics!r} is not host:port")
        if host not in ("127.0.0.1", "localhost", "::1", "[::1]") and not c.metrics_public:
            raise ConfigError(f"metrics: {host!r} is not a loopback address (set metrics_public = true to "
                              "serve a Prometheus server on another host)")
