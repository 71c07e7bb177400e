"""Naming a network: bootstrap list files, and /dnsaddr resolved with a stand-in for DNS (tests
reach no DNS server), bounded however the records are laid out."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from p2pnode.errors import ConfigError, NetworkSetupError
from p2pnode.identity import Identity
from p2pnode.net import network
from p2pnode.net.discovery import PeerKeeper
from p2pnode.net.host import build_host, parse_multiaddr
from p2pnode.net.network import network_entries, parse_list, resolve

A = Identity(bytes(32)).peer_id_b58  # fixed: the same test names in every process
B = Identity(bytes([1]) * 32).peer_id_b58
LOOPBACK = "/ip4/127.0.0.1/tcp/0"


def fake_dns(zone: dict[str, list[str]], asked: list[str] | None = None) -> network.TxtLookup:
    async def lookup(name: str) -> list[str]:
        if asked is not None:
            asked.append(name)
        await trio.lowlevel.checkpoint()
        return list(zone.get(name, []))

    return lookup


def test_a_bootstrap_list_has_one_address_a_line_and_comments() -> None:
    text = f"""# the example network
/ip4/192.0.2.1/tcp/4001/p2p/{A}   # first
\n/dnsaddr/market.example.org
/ip4/192.0.2.1/tcp/4001/p2p/{A}
/dnsaddr/market.example.org/p2p/{B}
"""
    assert parse_list(text, "list") == [f"/ip4/192.0.2.1/tcp/4001/p2p/{A}", "/dnsaddr/market.example.org",
                                        f"/dnsaddr/market.example.org/p2p/{B}"]


@pytest.mark.parametrize(("text", "says"), [
    ("/ip4/192.0.2.1/tcp/4001", "list:1: '/ip4/192.0.2.1/tcp/4001' needs /tcp/ and /p2p/"),
    (f"# fine\n/ip4/192.0.2.1/tcp/4001/p2p/{A}\nhello", "list:3: not a multiaddr: 'hello'"),
    ("/dnsaddr/example.org/tcp/4001", "list:1: '/dnsaddr/example.org/tcp/4001': a /dnsaddr/ bootstrap entry"),
    ("# nothing but comments\n\n", "list: no bootstrap address in it"),
])
def test_a_bad_bootstrap_list_is_refused_naming_the_line(text: str, says: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_list(text, "list")
    assert str(caught.value).startswith(says) and "\n" not in str(caught.value)


def test_a_network_is_a_file_a_name_or_a_domain(tmp_path: Path) -> None:
    listing = tmp_path / "market.txt"
    listing.write_text(f"/ip4/192.0.2.1/tcp/4001/p2p/{A}\n")
    assert network_entries(str(listing), tmp_path) == [f"/ip4/192.0.2.1/tcp/4001/p2p/{A}"]
    (tmp_path / "networks").mkdir()
    (tmp_path / "networks" / "testnet").write_text(f"/dnsaddr/testnet.example.org/p2p/{B}\n")
    assert network_entries("testnet", tmp_path) == [f"/dnsaddr/testnet.example.org/p2p/{B}"]
    assert network_entries("market.example.org", tmp_path) == ["/dnsaddr/market.example.org"]
    with pytest.raises(ConfigError, match=r"network 'mainnet': no such file, nor .*networks/mainnet"):
        network_entries("mainnet", tmp_path)
    with pytest.raises(ConfigError, match="no such file"):
        network_entries(str(tmp_path / "gone" / "list"), tmp_path)
    listing.write_bytes(b"#" * (network.MAX_LIST_BYTES + 1))
    with pytest.raises(ConfigError, match="over 64 KiB"):
        network_entries(str(listing), tmp_path)
    listing.write_bytes(b"\xff\xfe")
    with pytest.raises(ConfigError, match="not UTF-8"):
        network_entries(str(listing), tmp_path)


async def test_dnsaddr_is_resolved_recursively_keeping_the_named_peer() -> None:
    zone = {
        "_dnsaddr.market.example.org": [f"dnsaddr=/dnsaddr/eu.market.example.org/p2p/{A}",
                                        f"dnsaddr=/dnsaddr/us.market.example.org/p2p/{B}",
                                        "v=spf1 -all", "dnsaddr=not a multiaddr"],
        "_dnsaddr.eu.market.example.org": [f"dnsaddr=/ip4/192.0.2.1/tcp/4001/p2p/{A}",
                                           f"dnsaddr=/ip4/192.0.2.9/tcp/4001/p2p/{B}"],  # not eu's peer
        "_dnsaddr.us.market.example.org": [f"dnsaddr=/ip6/2001:db8::1/tcp/4001/p2p/{B}"],
    }
    assert await resolve("/dnsaddr/market.example.org", fake_dns(zone)) == [
        f"/ip4/192.0.2.1/tcp/4001/p2p/{A}", f"/ip6/2001:db8::1/tcp/4001/p2p/{B}"]
    assert await resolve(f"/dnsaddr/market.example.org/p2p/{B}", fake_dns(zone)) == [
        f"/ip6/2001:db8::1/tcp/4001/p2p/{B}"]


async def test_dnsaddr_resolution_is_bounded_in_depth_lookups_and_addresses() -> None:
    chain = {f"_dnsaddr.{i}.example.org": [f"dnsaddr=/dnsaddr/{i + 1}.example.org"] for i in range(50)}
    chain["_dnsaddr.3.example.org"].append(f"dnsaddr=/ip4/192.0.2.3/tcp/4001/p2p/{A}")
    chain["_dnsaddr.9.example.org"].append(f"dnsaddr=/ip4/192.0.2.9/tcp/4001/p2p/{A}")
    asked: list[str] = []
    assert await resolve("/dnsaddr/0.example.org", fake_dns(chain, asked)) == [
        f"/ip4/192.0.2.3/tcp/4001/p2p/{A}"]  # 9 is too deep
    assert len(asked) == network.MAX_DEPTH
    # ten children a level: the lookups stop at the budget; a loop ends too
    tree = {f"_dnsaddr.{name}.example.org": [f"dnsaddr=/dnsaddr/{name}{i}.example.org" for i in range(10)]
            for name in ["r", *[f"r{i}" for i in range(10)], *[f"r{i}{j}" for i in range(10) for j in range(10)]]}
    tree["_dnsaddr.r00.example.org"] = [f"dnsaddr=/ip4/192.0.2.1/tcp/4001/p2p/{A}", "dnsaddr=/dnsaddr/r.example.org"]
    asked.clear()
    assert await resolve("/dnsaddr/r.example.org", fake_dns(tree, asked)) == [f"/ip4/192.0.2.1/tcp/4001/p2p/{A}"]
    assert len(asked) == network.MAX_LOOKUPS
    many = {"_dnsaddr.big.example.org": [f"dnsaddr=/ip4/192.0.2.{i % 250}/tcp/{1000 + i}/p2p/{A}"
                                         for i in range(5000)]}
    assert len(await resolve("/dnsaddr/big.example.org", fake_dns(many))) == network.MAX_ADDRS


async def test_dnsaddr_that_names_nothing_or_hangs_is_an_error_and_a_failing_branch_is_skipped(
        autojump_clock: trio.abc.Clock) -> None:
    with pytest.raises(NetworkSetupError, match="names no address"):
        await resolve("/dnsaddr/empty.example.org", fake_dns({}))

    async def hangs(name: str) -> list[str]:
        if name == "_dnsaddr.top.example.org":
            return ["dnsaddr=/dnsaddr/slow.example.org", f"dnsaddr=/ip4/192.0.2.1/tcp/4001/p2p/{A}"]
        await trio.sleep_forever()
        raise AssertionError

    assert await resolve("/dnsaddr/top.example.org", hangs) == [f"/ip4/192.0.2.1/tcp/4001/p2p/{A}"]
    with pytest.raises(NetworkSetupError, match="timed out"):
        await resolve("/dnsaddr/slow.example.org", hangs)


async def test_the_keeper_joins_the_peers_a_dnsaddr_names_and_reports_one_that_names_none() -> None:
    target = Identity.generate()
    server = build_host(target, [parse_multiaddr(LOOPBACK)])
    async with server.run([parse_multiaddr(LOOPBACK)]):
        addr = str(server.get_addrs()[0])  # with its /p2p/ id
        assert addr.endswith(f"/p2p/{target.peer_id_b58}")
        zone = {"_dnsaddr.market.test": [f"dnsaddr={addr}", f"dnsaddr=/ip4/127.0.0.77/tcp/1/p2p/{A}"]}
        host = build_host(Identity.generate(), [parse_multiaddr(LOOPBACK)])
        async with host.run([parse_multiaddr(LOOPBACK)]), trio.open_nursery() as nursery:
            keeper = PeerKeeper(host, [], dnsaddrs=["/dnsaddr/market.test", "/dnsaddr/nothing.test"],
                                lookup=fake_dns(zone))
            nursery.start_soon(keeper.run, False)
            with trio.fail_after(20):
                while not keeper.is_connected(server.get_id()) or "/dnsaddr/nothing.test" not in keeper.unreachable:
                    await trio.sleep(0.05)
            assert "names no address" in keeper.unreachable["/dnsaddr/nothing.test"]
            nursery.cancel_scope.cancel()


async def test_the_default_lookup_turns_dns_failures_into_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import dns.asyncresolver
    import dns.exception
    import dns.resolver

    async def fails(name: str, rdtype: str, lifetime: float) -> object:
        raise {"_dnsaddr.none.test": dns.resolver.NXDOMAIN(), "_dnsaddr.empty.test": dns.resolver.NoAnswer()}.get(
            name, dns.exception.Timeout())

    monkeypatch.setattr(dns.asyncresolver, "resolve", fails)
    assert await network.dns_txt("_dnsaddr.none.test") == []
    assert await network.dns_txt("_dnsaddr.empty.test") == []
    with pytest.raises(NetworkSetupError, match="DNS lookup of _dnsaddr.slow.test failed"):
        await network.dns_txt("_dnsaddr.slow.test")
