"""A swarm's own network: a network namespace, and partitions inside it (root only).

As root, a swarm gets a fresh network namespace of its own; each node listens on its own loopback
address there, and a **partition** is a set of ``prohibit`` policy-routing rules between the
addresses of its groups (the namespace's ``local`` lookup moved after them), which cut new and
established connections alike; **heal** removes them. Nothing outside the namespace is touched, and
the namespace is deleted when the swarm stops (or by the next swarm, if its launcher was killed).
The nodes are driven through their Unix control sockets, which cross namespaces.

Latency and loss would be ``tc netem``; kernels without it (such as the one this was built on) get
the node-level impairment of :mod:`p2pnode.net.impair` instead. Without root a swarm runs on the
host's loopback, and partitions are reported as not applied.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from p2pnode.errors import LocalError

PREFIX = "p2pswarm-"
RULE_PREF = 100


def can_isolate() -> tuple[bool, str]:
    if os.geteuid() != 0:
        return False, "not root: the swarm shares the host's loopback, and partitions are not applied"
    if shutil.which("ip") is None:
        return False, "no `ip` command (iproute2): the swarm shares the host's loopback"
    return True, ""


def _ip(*args: str, stdin: str | None = None) -> None:
    r = subprocess.run(["ip", *args], input=stdin, capture_output=True, text=True)
    if r.returncode != 0:
        raise LocalError(f"ip {' '.join(args)}: {r.stderr.strip()}")


def clean_stale() -> None:
    """Delete namespaces left by swarms whose launcher is gone."""
    for path in Path("/run/netns").glob(PREFIX + "*") if Path("/run/netns").is_dir() else []:
        try:
            os.kill(int(path.name[len(PREFIX):]), 0)
        except ProcessLookupError:
            subprocess.run(["ip", "netns", "del", path.name], capture_output=True)
        except (ValueError, PermissionError):
            continue


class SwarmNetwork:
    def __init__(self) -> None:
        clean_stale()
        self.name = f"{PREFIX}{os.getpid()}"
        _ip("netns", "add", self.name)
        try:
            self.run("link", "set", "lo", "up")
            # our prohibit rules must come before the local table, which sits at 0 by default
            self.run("rule", "add", "from", "all", "lookup", "local", "pref", "1000")
            self.run("rule", "del", "pref", "0")
        except LocalError:
            self.close()
            raise
        self.rules: list[tuple[str, str]] = []

    @property
    def wrap(self) -> list[str]:
        return ["ip", "netns", "exec", self.name]

    def run(self, *args: str, stdin: str | None = None) -> None:
        _ip("-n", self.name, *args, stdin=stdin)

    def partition(self, groups: Sequence[Sequence[str]]) -> int:
        """Cut every address of each group off from every address of the others; the number of rules."""
        lines = []
        for i, a in enumerate(groups):
            for b in groups[i + 1:]:
                for x in set(a):
                    for y in set(b):
                        if x != y:
                            self.rules += [(x, y), (y, x)]
                            lines += [f"rule add from {x} to {y} prohibit pref {RULE_PREF}",
                                      f"rule add from {y} to {x} prohibit pref {RULE_PREF}"]
        if lines:
            self.run("-batch", "-", stdin="\n".join(lines) + "\n")
        return len(lines)

    def heal(self) -> None:
        if self.rules:
            lines = [f"rule del from {x} to {y} prohibit pref {RULE_PREF}" for x, y in self.rules]
            with contextlib.suppress(LocalError):
                self.run("-force", "-batch", "-", stdin="\n".join(lines) + "\n")
        self.rules = []

    def close(self) -> None:
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True)
