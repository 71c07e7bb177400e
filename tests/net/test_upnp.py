"""The port mapping's bookkeeping with a stand-in for the router's UPnP client (the real router is
in tests/integration/test_nat.py): what is advertised, what is removed, what a refusal leaves."""

from __future__ import annotations

from typing import Any

import multiaddr
import trio
import trio.testing

from p2pnode.net.upnp import PortMapping, tcp_ports


class Gateway:
    def __init__(self, found: bool = True, refuse: frozenset[int] = frozenset()) -> None:
        self.found, self.refuse = found, refuse
        self.mapped: set[int] = set()

    async def discover(self) -> bool:
        return self.found

    def get_external_ip(self) -> str:
        return "11.0.0.2"

    async def add_port_mapping(self, port: int, protocol: str = "TCP") -> bool:
        if port in self.refuse:
            return False
        self.mapped.add(port)
        return True

    async def remove_port_mapping(self, port: int, protocol: str = "TCP") -> bool:
        self.mapped.discard(port)
        return True


async def _run(pm: PortMapping, until: Any) -> None:
    async with trio.open_nursery() as nursery:
        await nursery.start(pm.run)
        await until()
        nursery.cancel_scope.cancel()


async def test_forwarded_ports_are_advertised_and_removed_on_stop() -> None:
    gw, changes = Gateway(refuse=frozenset({4002})), []
    pm = PortMapping(lambda: [4001, 4002], manager=lambda: gw, on_change=lambda: changes.append(1))

    async def check() -> None:
        await trio.testing.wait_all_tasks_blocked()
        assert pm.status() == {"state": "mapped", "external": ["/ip4/11.0.0.2/tcp/4001"]}
        assert gw.mapped == {4001} and changes == [1]

    await _run(pm, check)
    assert gw.mapped == set() and pm.addrs() == []


async def test_no_gateway_and_a_refused_mapping_advertise_nothing() -> None:
    for gw, state in ((Gateway(found=False), "no_gateway"), (Gateway(refuse=frozenset({4001})), "failed")):
        pm = PortMapping(lambda: [4001], manager=lambda gw=gw: gw)

        async def check(pm: PortMapping = pm, state: str = state) -> None:
            await trio.testing.wait_all_tasks_blocked()
            assert pm.state == state and pm.addrs() == []

        await _run(pm, check)


def test_the_ports_to_forward_skip_loopback_and_relayed_addresses() -> None:
    addrs = [multiaddr.Multiaddr(a) for a in ("/ip4/0.0.0.0/tcp/4001", "/ip4/127.0.0.1/tcp/4009",
                                                "/ip4/10.0.0.2/tcp/4001", "/ip6/::/tcp/4002")]
    assert tcp_ports(addrs) == [4001, 4002]
