"""The settings a node runs with, from ``p2pnode run``'s flags: the flags themselves, and the
:class:`~p2pnode.config.Config` they give. Below the command line (``cli.py``) and the in-process
swarm (``swarm/inproc.py``), which both build nodes from these flags."""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from p2pnode.config import Config, load


def finite(text: str) -> float:
    """An argparse type: a finite number (``nan`` and ``inf`` parse as floats but mean nothing here)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


class Parser(argparse.ArgumentParser):
    """Usage errors print one line too (``p2pnode: error: ...``), with exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"p2pnode: error: {message} (see `{self.prog} --help`)\n")


def add_common(parser: argparse.ArgumentParser) -> None:
    """``--data-dir`` and ``--config``: where a node's files are."""
    parser.add_argument("--data-dir", type=Path, help="node data directory (default ~/.local/share/p2pnode)")
    parser.add_argument("--config", type=Path, help="config file (default <data-dir>/config.toml)")


def add_run_flags(run: argparse.ArgumentParser) -> None:
    """The flags of ``p2pnode run``: each overrides its setting in the config file."""
    run.add_argument("--listen", action="append", metavar="MULTIADDR", help="listen address (repeatable)")
    run.add_argument("--announce", action="append", metavar="MULTIADDR",
                     help="address to advertise instead of the listen addresses (repeatable)")
    run.add_argument("--bootstrap", action="append", metavar="MULTIADDR", help="bootstrap peer (repeatable)")
    run.add_argument("--network", metavar="FILE|NAME|DOMAIN",
                     help="join this network: its bootstrap list file, a name under <data-dir>/networks/, "
                          "or its /dnsaddr domain")
    run.add_argument("--mdns", dest="mdns", action="store_true", default=None, help="find peers with mDNS")
    run.add_argument("--no-mdns", dest="mdns", action="store_false", help="do not use mDNS")
    run.add_argument("--no-dht", dest="dht", action="store_false", default=None,
                     help="do not use the DHT to find peers and providers")
    run.add_argument("--no-upnp", dest="upnp", action="store_false", default=None,
                     help="do not ask the router to forward this node's port (UPnP)")
    run.add_argument("--no-bulk", dest="bulk", action="store_false", default=None,
                     help="move blobs over the libp2p stream only (no bulk channel)")
    run.add_argument("--bulk-port", type=int, metavar="PORT", help="TCP port of the bulk channel (0: any)")
    run.add_argument("--perf", dest="perf", action="store_true", default=None,
                     help="serve libp2p's perf protocol (/perf/1.0.0) to connected peers")
    run.add_argument("--provide", dest="provide", action="store_true", default=None, help="offer capacity")
    run.add_argument("--no-provide", dest="provide", action="store_false", help="do not offer capacity")
    run.add_argument("--no-gpu", dest="use_gpu", action="store_false", default=None, help="use the CPU only")
    run.add_argument("--reachability", choices=("auto", "public", "private"),
                     help="whether others can dial this node (auto: ask peers, AutoNAT)")
    run.add_argument("--relay-service", choices=("auto", "on", "off"), help="relay for nodes behind NAT")
    run.add_argument("--relay", dest="relays", action="append", metavar="MULTIADDR",
                     help="a relay to reserve a slot on when private (repeatable)")
    run.add_argument("--gpus", metavar="I,J", help="offer only these GPUs (NVML indexes), e.g. 0,2")
    run.add_argument("--slots", type=int, metavar="N", help="jobs at once on each GPU offered (or on the CPU)")
    run.add_argument("--max-jobs", type=int, metavar="N", help="most jobs at once in all")
    run.add_argument("--max-gpu-mem", metavar="SIZE", help="most memory jobs may use on each GPU, e.g. 20G")
    run.add_argument("--cpu-threads", type=int, metavar="N", help="threads one job may use on the CPU")
    run.add_argument("--schedule", action="append", metavar="WINDOW",
                     help="take jobs only in these local-time windows, e.g. 'mon-fri 19:00-07:00' (repeatable)")
    run.add_argument("--metrics", metavar="HOST:PORT", help="Prometheus endpoint ('' disables)")
    run.add_argument("--ui", metavar="HOST:PORT", help="the web dashboard's address (`p2pnode ui` prints it)")
    run.add_argument("--no-ui", dest="ui", action="store_const", const="", help="no web dashboard")
    run.add_argument("--price", type=int, help="price in micro-credits per unit of work")
    run.add_argument("--ad-interval", type=finite, help="seconds between periodic ads")
    run.add_argument("--ad-ttl", type=finite, help="seconds an ad stays valid")
    run.add_argument("--log-level", help="debug, info, warning, error")
    run.add_argument("--log-format", choices=("text", "json"), help="one line per event: text, or JSON objects")
    run.add_argument("--checker", dest="checker", action="store_true", default=None,
                     help="volunteer to re-run others' work as a checker, for credits")
    run.add_argument("--budget", type=int, metavar="MICROCREDITS", help="most this node spends on jobs in all")
    run.add_argument("--reciprocity", type=finite, metavar="W",
                     help="most price discount for requesters that gave this node compute back (0 disables)")
    run.add_argument("--check-rate-min", type=finite, metavar="P",
                     help="lowest probability of re-running a trusted provider's result (1: check everything)")
    run.add_argument("--adversary", metavar="MODE[:X]", help="misbehave as a provider (tests and scenarios)")
    run.add_argument("--calibration-file", metavar="JSON", help="read measured speeds from this file (swarms)")
    run.add_argument("--impair", metavar="SPEC", help="for scenarios: delay_ms=,jitter_ms=,drop= on job streams")



RUN_FLAGS = ("listen", "announce", "bootstrap", "network", "mdns", "provide", "use_gpu", "metrics", "ui", "price",
              "ad_interval", "ad_ttl", "log_level", "log_format", "checker", "check_rate_min", "budget",
              "reciprocity", "adversary", "calibration_file", "impair", "gpus", "slots", "max_jobs", "max_gpu_mem",
              "cpu_threads", "schedule", "reachability", "relay_service", "relays", "dht", "upnp",
              "bulk", "bulk_port", "perf")


def config_from(args: argparse.Namespace) -> Config:
    """The settings ``run``'s parsed flags give (over the config file, over the defaults)."""
    flags = {k: getattr(args, k, None) for k in RUN_FLAGS}
    return load(args.data_dir, config_file=args.config, flags=flags)


def config_from_run_flags(args: Sequence[str]) -> Config:
    """The settings ``p2pnode run ARGS`` would run a node with."""
    run = Parser(prog="p2pnode run")
    add_common(run)
    add_run_flags(run)
    return config_from(run.parse_args(list(args)))
