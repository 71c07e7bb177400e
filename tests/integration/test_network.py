"""Joining a network by naming it: real nodes on loopback, given a bootstrap list file."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from p2pnode.errors import ConfigError
from tests.integration.swarm import node_config, start_node, wait_connected


async def test_a_node_given_a_network_file_or_name_joins_the_peers_it_lists(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        first = (await start_node(nursery, node_config(provide=False))).node
        listing = tmp_path / "loopback-net"
        listing.write_text(f"# a network of one node, on this machine\n{first.addrs()[0]}  # the first\n")
        joiner = (await start_node(nursery, node_config(provide=False, network=str(listing)))).node
        await wait_connected(joiner, first.host.get_id(), timeout=15)
        status = joiner.status_view()
        assert not any(r.startswith("no peers") for r in status["reasons"])
        # by name: the file <data-dir>/networks/<name>
        named_dir = Path(joiner.config.data_dir).parent / f"{joiner.config.data_dir.name}-named"
        (named_dir / "networks").mkdir(parents=True)
        (named_dir / "networks" / "loopback").write_text(listing.read_text())
        by_name = (await start_node(nursery, node_config(named_dir, provide=False, network="loopback"))).node
        await wait_connected(by_name, first.host.get_id(), timeout=15)
        nursery.cancel_scope.cancel()


def test_a_network_that_is_not_there_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="network 'mainnet': no such file"):
        node_config(tmp_path, network="mainnet")
    bad = tmp_path / "list"
    bad.write_text("/ip4/127.0.0.1/tcp/4001\n")
    with pytest.raises(ConfigError, match=r"list:1: .* needs /tcp/ and /p2p/"):
        node_config(tmp_path, network=str(bad))
