"""mDNS discovery between two nodes, inside a network namespace this test creates, so the
multicast traffic stays on this machine (the namespace has only its own loopback)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("mdns_pair.py")
SETUP = "ip link set lo up && ip link set lo multicast on && ip route add 224.0.0.0/4 dev lo"


def _netns_available() -> str | None:
    if not shutil.which("unshare") or not shutil.which("ip"):
        return "needs unshare and ip (util-linux, iproute2)"
    probe = subprocess.run(["unshare", "-n", "sh", "-c", SETUP], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"cannot create a private network namespace: {probe.stderr.strip()[:200]}"
    return None


@pytest.mark.netns
def test_two_nodes_find_each_other_by_mdns() -> None:
    reason = _netns_available()
    if reason:
        pytest.skip(reason)
    out = subprocess.run(
        ["unshare", "-n", "sh", "-c", f"{SETUP} && exec {sys.executable} {SCRIPT}"],
        capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["found"], result
    assert result["peers"] == [1, 1]
