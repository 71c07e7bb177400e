"""p2pnode: a node of a decentralized GPU compute market on libp2p."""

__version__ = "0.1.0"
