"""Two homes behind NAT and one public relay, in network namespaces this test creates (root,
iproute2 and nftables; skipped otherwise, saying why):

    h1 (10.1.0.2) -- r1 [masquerade] 198.51.100.2 --+-- pub 198.51.100.1 / .5 (relay node)
    h2 (10.2.0.2) -- r2 [masquerade] 198.51.100.6 --+

The provider in h1 and the requester in h2 know only the relay. The provider finds out it is
private (AutoNAT: the relay cannot dial it back), reserves a slot on the relay (which found out
it is public and serves), and advertises the relayed address; the requester's job reaches it
through the relay and comes back verified; then the two punch a hole through both NATs (DCUtR)
and talk directly. The routers drop unsolicited inbound connections, as home routers do.

A third home's router offers UPnP (miniupnpd, where installed):

    h3 (10.3.0.2) -- r3 [masquerade, miniupnpd] 11.0.0.2 --+-- pub 11.0.0.1

A router refuses to forward ports behind a private or reserved WAN address (double NAT), and so
does the node's UPnP client, so r3's WAN address lies outside the reserved ranges. The namespaces
have no link to the host or anything beyond them: nothing sent to that address leaves them.
"""

from __future__ import annotations

import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from p2pnode.control.client import call
from tests.integration.test_cli import ENV

NEEDS = [("root", os.geteuid() == 0), ("ip (iproute2)", shutil.which("ip") is not None),
         ("nft (nftables)", shutil.which("nft") is not None)]
pytestmark = pytest.mark.skipif(not all(ok for _, ok in NEEDS),
                                reason="NAT test needs " + ", ".join(n for n, ok in NEEDS if not ok))


PREFIX = "p2pnat-"


def _clean_stale() -> None:
    """Namespaces left by a run that was killed (its pid is gone)."""
    listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    for name in (line.split()[0] for line in listing.splitlines() if line.startswith(PREFIX)):
        try:
            os.kill(int(name[len(PREFIX):].split("-")[0]), 0)
        except ProcessLookupError:
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
        except ValueError:
            continue


def sh(*cmd: str) -> None:
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, f"{' '.join(cmd)}: {r.stderr}"


class Lab:
    """The namespaces and links above; all deleted on close."""

    def __init__(self) -> None:
        _clean_stale()
        self.ns = {n: f"{PREFIX}{os.getpid()}-{n}" for n in ("pub", "r1", "h1", "r2", "h2", "r3", "h3")}
        for name in self.ns.values():
            sh("ip", "netns", "add", name)
            self.run(name, "ip", "link", "set", "lo", "up")
        n = self.ns
        self.link(n["pub"], "198.51.100.1/30", n["r1"], "198.51.100.2/30", "w1")
        self.link(n["pub"], "198.51.100.5/30", n["r2"], "198.51.100.6/30", "w2")
        self.link(n["r1"], "10.1.0.1/24", n["h1"], "10.1.0.2/24", "l1")
        self.link(n["r2"], "10.2.0.1/24", n["h2"], "10.2.0.2/24", "l2")
        self.link(n["pub"], "11.0.0.1/30", n["r3"], "11.0.0.2/30", "w3")
        self.link(n["r3"], "10.3.0.1/24", n["h3"], "10.3.0.2/24", "l3")
        for router, wan_gw, wan in (("r1", "198.51.100.1", "w1b"), ("r2", "198.51.100.5", "w2b"),
                                    ("r3", "11.0.0.1", "w3b")):
            self.run(n[router], "ip", "route", "add", "default", "via", wan_gw)
            self.run(n[router], "sysctl", "-qw", "net.ipv4.ip_forward=1")
            # a home router: masquerade out, and drop (not refuse) what nobody inside asked for
            self.run(n[router], "nft", f"add table ip nat; add chain ip nat post {{ type nat hook postrouting "
                                       f"priority 100 ; }}; add rule ip nat post oifname {wan} masquerade; "
                                       f"add table inet fw; add chain inet fw inbound {{ type filter hook input "
                                       f"priority 0 ; }}; add rule inet fw inbound iifname {wan} ct state new drop; "
                                       f"add chain inet fw through {{ type filter hook forward priority 0 ; }}; "
                                       f"add rule inet fw through iifname {wan} ct state new ct status ! dnat drop")
        self.run(n["pub"], "sysctl", "-qw", "net.ipv4.ip_forward=1")
        self.run(n["h1"], "ip", "route", "add", "default", "via", "10.1.0.1")
        self.run(n["h2"], "ip", "route", "add", "default", "via", "10.2.0.1")
        self.run(n["h3"], "ip", "route", "add", "default", "via", "10.3.0.1")
        self.upnpd: subprocess.Popen[str] | None = None

    def start_upnp(self, router: str, wan: str, lan: str, lan_net: str) -> None:
        """miniupnpd on ``router``: it forwards the ports its LAN asks for, in its own nftables chains
        (ports above 1023, to the asking host only)."""
        ns = self.ns[router]
        self.run(ns, "nft", "add table inet upnp; "
                 "add chain inet upnp forward { type filter hook forward priority 0 ; }; "
                 "add chain inet upnp miniupnpd; add rule inet upnp forward jump miniupnpd; "
                 "add chain inet upnp prerouting { type nat hook prerouting priority -100 ; }; "
                 "add chain inet upnp prerouting_miniupnpd; add rule inet upnp prerouting jump prerouting_miniupnpd; "
                 "add chain inet upnp postrouting { type nat hook postrouting priority 100 ; }; "
                 "add chain inet upnp postrouting_miniupnpd; "
                 "add rule inet upnp postrouting jump postrouting_miniupnpd")
        folder = Path(tempfile.mkdtemp(prefix="p2pnat-upnp-", dir="/tmp"))
        conf = folder / "miniupnpd.conf"
        conf.write_text(f"ext_ifname={wan}\nlistening_ip={lan}\nport=0\nenable_natpmp=no\nenable_upnp=yes\n"
                        "secure_mode=yes\nsystem_uptime=yes\nuuid=3d3cec3a-8cf0-11e0-98ee-001a6bd2d07b\n"
                        "upnp_table_name=upnp\nupnp_nat_table_name=upnp\n"
                        f"allow 1024-65535 {lan_net} 1024-65535\ndeny 0-65535 0.0.0.0/0 0-65535\n")
        self.upnpd = subprocess.Popen(["ip", "netns", "exec", ns, "miniupnpd", "-d", "-f", str(conf),
                                       "-P", str(folder / "pid")], stdout=subprocess.DEVNULL,
                                      stderr=subprocess.PIPE, text=True)

    def link(self, a: str, a_ip: str, b: str, b_ip: str, name: str) -> None:
        sh("ip", "link", "add", f"{name}a", "netns", a, "type", "veth", "peer", "name", f"{name}b", "netns", b)
        self.run(a, "ip", "addr", "add", a_ip, "dev", f"{name}a")
        self.run(b, "ip", "addr", "add", b_ip, "dev", f"{name}b")
        self.run(a, "ip", "link", "set", f"{name}a", "up")
        self.run(b, "ip", "link", "set", f"{name}b", "up")

    def run(self, ns: str, *cmd: str) -> None:
        sh("ip", "netns", "exec", ns, *cmd)

    def close(self) -> None:
        if self.upnpd is not None:
            self.upnpd.terminate()
            try:
                self.upnpd.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.upnpd.kill()
        for name in self.ns.values():
            subprocess.run(["ip", "netns", "del", name], capture_output=True)


@pytest.fixture
def lab() -> Iterator[Lab]:
    lab = Lab()
    try:
        yield lab
    finally:
        lab.close()


class Node:
    """A node process in one of the lab's namespaces, driven through its control socket (which
    crosses namespaces: it is a file)."""

    def __init__(self, lab: Lab, ns: str, *args: str) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="p2pnat-", dir="/tmp"))
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", lab.ns[ns], sys.executable, "-m", "p2pnode", "run", "--data-dir", str(self.dir),
             "--listen", "/ip4/0.0.0.0/tcp/4001", "--no-mdns", "--metrics", "", "--ad-interval", "5",
             "--ad-ttl", "30", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV)
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()
        self.sock = self.dir / "control.sock"

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.seen.append(line)
            self.lines.put(line)

    def call(self, cmd: str, timeout: float = 30.0, **args: object) -> object:
        return call(self.sock, cmd, timeout=timeout, **args)

    def ready(self, timeout: float = 60.0) -> dict[str, object]:
        """Block until the node prints its peer id (it is then listening and its socket is up)."""
        while True:
            try:
                line = self.lines.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError(self.output()) from None
            if line.startswith("p2pnode ") and " peer " in line:
                return self.call("id")  # type: ignore[return-value]

    def output(self) -> str:
        return "".join(self.seen)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


@contextmanager
def relay_provider_requester(lab: Lab, home: str) -> Iterator[tuple[Node, Node, Node, str, str]]:
    """A relay in the public namespace, a provider in ``home`` and a requester in h2, both of which
    know only the relay: (relay, provider, requester, relay id, provider id), all started. Their
    output is printed when the test fails; all are stopped after it."""
    nodes: list[Node] = []
    try:
        relay = Node(lab, "pub", "--no-provide")
        nodes.append(relay)
        rid = relay.ready()["peer"]
        boot = f"/ip4/198.51.100.1/tcp/4001/p2p/{rid}"
        provider = Node(lab, home, "--bootstrap", boot)
        requester = Node(lab, "h2", "--bootstrap", boot, "--no-provide")
        nodes += [provider, requester]
        pid = provider.ready()["peer"]
        requester.ready()
        yield relay, provider, requester, rid, pid  # type: ignore[misc]
    except BaseException:
        for n in nodes:
            print(f"--- {n.dir}\n{n.output()[-3000:]}")
        if lab.upnpd is not None and lab.upnpd.poll() is not None and lab.upnpd.stderr is not None:
            print("miniupnpd:", lab.upnpd.stderr.read())
        raise
    finally:
        for n in nodes:
            n.stop()


def _job(requester: Node, seed: int) -> dict[str, Any]:
    requester.call("wait", what="offers", count=1, timeout_s=60, timeout=70)
    rec = requester.call("submit", timeout=120, workload="matmul", params={"m": 32, "n": 32, "k": 32,
                         "dtype": "int8", "seed": seed}, max_price=10**9, deadline=60, k=1)
    assert isinstance(rec, dict), rec
    return rec


def test_a_job_crosses_two_nats_through_a_relay(lab: Lab) -> None:
    with relay_provider_requester(lab, "h1") as (relay, provider, requester, rid, pid):
        provider.call("wait", what="relays", count=1, timeout_s=60, timeout=70)
        status = provider.call("status")
        assert status["reachability"]["reachability"] == "private", status  # type: ignore[index]
        assert all("/p2p-circuit" in a and rid in a for a in status["addrs"]), status  # type: ignore[index]
        assert relay.call("status")["reachability"]["relay_service"]  # type: ignore[index]
        rec = _job(requester, 4)
        assert rec["state"] == "done" and rec["peer"] == pid, rec
        assert rec["outcome"].startswith("verified")
        # then a hole punch (DCUtR over the relayed connection) gives a direct one: the relay and
        # the provider, through the provider's router's public address
        requester.call("wait", what="direct", count=2, timeout_s=30, timeout=40)
        via = next(p["addrs"] for p in requester.call("peers") if p["peer"] == pid)  # type: ignore[union-attr]
        assert any(a.startswith("/ip4/198.51.100.2/tcp/") for a in via), via


@pytest.mark.skipif(shutil.which("miniupnpd") is None, reason="UPnP test needs miniupnpd (apt-get install "
                    "miniupnpd-nftables)")
def test_a_node_behind_a_upnp_router_is_reached_directly_through_its_forwarded_port(lab: Lab) -> None:
    lab.start_upnp("r3", "w3b", "l3a", "10.3.0.0/24")
    with relay_provider_requester(lab, "h3") as (_, provider, requester, _, pid):
        # the router forwards the provider's port; dialled back there, the provider is public
        provider.call("wait", what="public", count=1, timeout_s=60, timeout=70)
        status = provider.call("status")
        assert status["upnp"]["state"] == "mapped", status  # type: ignore[index]
        assert status["upnp"]["external"] == ["/ip4/11.0.0.2/tcp/4001"], status  # type: ignore[index]
        assert status["addrs"][0].startswith("/ip4/11.0.0.2/tcp/4001/p2p/"), status  # type: ignore[index]
        assert not any("/p2p-circuit" in a for a in status["addrs"])  # type: ignore[union-attr]
        assert any("UPnP" in n for n in status["notes"]), status  # type: ignore[index]
        # a requester behind another NAT reaches it directly, at the router's address, no relay
        rec = _job(requester, 5)
        assert rec["state"] == "done" and rec["peer"] == pid, rec
        via = next(p["addrs"] for p in requester.call("peers") if p["peer"] == pid)  # type: ignore[union-attr]
        assert any(a.startswith("/ip4/11.0.0.2/tcp/4001") for a in via), via
        assert not any("/p2p-circuit" in a for a in via), via
        assert "dport 4001" in _forwards(lab), _forwards(lab)  # the router's rule
    assert "dport 4001" not in _forwards(lab)  # gone with the node that asked for it


def _forwards(lab: Lab) -> str:
    return subprocess.run(["ip", "netns", "exec", lab.ns["r3"], "nft", "list", "chain", "inet", "upnp",
                           "prerouting_miniupnpd"], capture_output=True, text=True).stdout
